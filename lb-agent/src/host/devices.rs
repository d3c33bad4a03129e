//! Which interfaces are node devices: those `--devices` names (names and globs), or, without
//! it, those detected as Cilium's agent detects them (`pkg/datapath/linux/devices_controller.go`
//! isSelectedDevice): the devices that carry a default route, hold one of the Node object's
//! addresses, are overlays, or (not veths) have a global address and route of their own; never
//! loopback, pod interfaces, bridges or their and bonds' ports, or devices that are down.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::maps::{
    DEV_R_DEFAULT_ROUTE, DEV_R_FLAG, DEV_R_GLOBAL_ROUTE, DEV_R_NODE_ADDR, DEV_R_OVERLAY,
};

use super::{HostView, Link, IFF_LOOPBACK, IFF_UP, RTN_UNICAST, RT_TABLE_LOCAL};
use crate::plan::NodeAddresses;

/// ARPHRD_LOOPBACK.
const ARPHRD_LOOPBACK: u16 = 772;

/// Link kinds of overlay devices: replies of flows to backends behind them come back on them.
const OVERLAY_KINDS: [&str; 10] = [
    "vxlan",
    "geneve",
    "wireguard",
    "ipip",
    "ip6tnl",
    "sit",
    "gre",
    "gretap",
    "ip6gre",
    "ip6gretap",
];

/// Link kinds that switch rather than route (Cilium: "bridge-like device").
const BRIDGE_KINDS: [&str; 2] = ["bridge", "openvswitch"];

/// `--devices`: interface names and globs; none means "detect".
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub patterns: Vec<glob::Pattern>,
}

impl DeviceFilter {
    /// Whether devices are detected (no `--devices`).
    pub fn is_auto(&self) -> bool {
        self.patterns.is_empty()
    }

    fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }
}

/// A node device and why it is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenDevice {
    pub index: u32,
    /// rtnetlink link kind; "" for a physical NIC.
    pub kind: String,
    /// `DEV_R_*` bits.
    pub reasons: u32,
}

/// The names of the `DEV_R_*` bits in `reasons`, in bit order.
pub fn reason_names(reasons: u32) -> Vec<&'static str> {
    [
        (DEV_R_FLAG, "--devices"),
        (DEV_R_DEFAULT_ROUTE, "default route"),
        (DEV_R_NODE_ADDR, "node address"),
        (DEV_R_OVERLAY, "overlay"),
        (DEV_R_GLOBAL_ROUTE, "global route"),
    ]
    .into_iter()
    .filter(|(bit, _)| reasons & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// The node devices in `view`: every interface `filter` names (loopback never), or, with an
/// empty filter, the ones detected (see the module's doc), by name.
pub(super) fn select(
    filter: &DeviceFilter,
    pod_patterns: &[glob::Pattern],
    view: &HostView,
    node: &NodeAddresses,
) -> BTreeMap<String, ChosenDevice> {
    let mut out = BTreeMap::new();
    for link in &view.links {
        let loopback = link.flags & IFF_LOOPBACK != 0 || link.link_type == ARPHRD_LOOPBACK;
        let reasons = if loopback {
            0
        } else if !filter.is_auto() {
            if filter.matches(&link.name) {
                DEV_R_FLAG
            } else {
                0
            }
        } else {
            detect(link, pod_patterns, view, node)
        };
        if reasons != 0 {
            out.insert(
                link.name.clone(),
                ChosenDevice {
                    index: link.index,
                    kind: link.kind.clone(),
                    reasons,
                },
            );
        }
    }
    out
}

/// The overlay devices (up, not pod interfaces) that `--devices` leaves out of `chosen`, by name:
/// replies of flows to backends behind them arrive on them, and without the node-device
/// program there they reach clients untranslated. Empty when devices are detected (detection
/// takes every overlay).
pub(super) fn overlays_left_out(
    filter: &DeviceFilter,
    pod_patterns: &[glob::Pattern],
    view: &HostView,
    chosen: &BTreeMap<String, ChosenDevice>,
) -> Vec<String> {
    if filter.is_auto() {
        return Vec::new();
    }
    view.links
        .iter()
        .filter(|l| l.flags & IFF_UP != 0 && OVERLAY_KINDS.contains(&l.kind.as_str()))
        .filter(|l| !pod_patterns.iter().any(|p| p.matches(&l.name)))
        .filter(|l| !chosen.contains_key(&l.name))
        .map(|l| l.name.clone())
        .collect()
}

/// Why `link` is a node device (`DEV_R_*` bits), 0 if it is not one.
fn detect(
    link: &Link,
    pod_patterns: &[glob::Pattern],
    view: &HostView,
    node: &NodeAddresses,
) -> u32 {
    if link.flags & IFF_UP == 0
        || link.master != 0
        || pod_patterns.iter().any(|p| p.matches(&link.name))
        || BRIDGE_KINDS.contains(&link.kind.as_str())
    {
        return 0;
    }
    let mut reasons = 0;
    if OVERLAY_KINDS.contains(&link.kind.as_str()) {
        reasons |= DEV_R_OVERLAY;
    }
    let routes = || {
        view.routes.iter().filter(|r| {
            r.index == link.index && r.route_type == RTN_UNICAST && r.table != RT_TABLE_LOCAL
        })
    };
    if routes().any(|r| r.dst_len == 0) {
        reasons |= DEV_R_DEFAULT_ROUTE;
    }
    let addresses = || view.addresses.iter().filter(|a| a.index == link.index);
    if addresses().any(|a| node.all().any(|n| *n == a.addr)) {
        reasons |= DEV_R_NODE_ADDR;
    }
    // Any other device with a global address and a route of its own, but a veth: a veth
    // without a default route or the Node's address is taken for a pod's or a container's.
    let global_address = addresses().any(|a| a.scope == 0 && is_global_unicast(&a.addr));
    let global_route = routes().any(|r| r.dst.as_ref().is_none_or(is_global_unicast));
    if link.kind != "veth" && global_address && global_route {
        reasons |= DEV_R_GLOBAL_ROUTE;
    }
    reasons
}

/// Whether `ip` is a global unicast address (not loopback, link-local, multicast, broadcast or
/// unspecified).
fn is_global_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_unspecified())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_unicast_link_local())
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::host::{Address, Route};

    /// A link `name` with index `index`, kind `kind`, up.
    pub(crate) fn link(index: u32, name: &str, kind: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.into(),
            link_type: 1,
            flags: IFF_UP,
            master: 0,
        }
    }

    /// Address `cidr` ("10.0.0.1/24") of interface `index`, global scope.
    pub(crate) fn addr(index: u32, cidr: &str) -> Address {
        let (a, len) = cidr.split_once('/').unwrap();
        Address {
            index,
            addr: a.parse().unwrap(),
            prefix_len: len.parse().unwrap(),
            scope: 0,
        }
    }

    /// A unicast route to `dst` ("default" or a CIDR) through interface `index`, main table.
    pub(crate) fn route(index: u32, dst: &str) -> Route {
        let (dst, dst_len) = match dst.split_once('/') {
            None => (None, 0),
            Some((a, l)) => (Some(a.parse().unwrap()), l.parse().unwrap()),
        };
        Route {
            index,
            dst,
            dst_len,
            table: 254,
            route_type: RTN_UNICAST,
        }
    }

    /// A node as kind makes them, plus the devices detection must leave out: a veth NIC with
    /// the default route, a second veth with the Node's address, a VLAN with an address of its
    /// own, a vxlan overlay, pod veths, a bridge and its port, a bond's port, loopback, a
    /// device that is down and a veth with neither default route nor Node address.
    pub(crate) fn kind_node() -> HostView {
        let mut lo = link(1, "lo", "");
        lo.flags |= IFF_LOOPBACK;
        lo.link_type = ARPHRD_LOOPBACK;
        let mut port = link(8, "veth9", "veth");
        port.master = 7;
        let mut down = link(10, "eth9", "");
        down.flags = 0;
        let mut slave = link(12, "ens4", "");
        slave.master = 13;
        HostView {
            links: vec![
                lo,
                link(2, "eth0", "veth"),
                link(3, "eth1", "veth"),
                link(4, "eth0.10", "vlan"),
                link(5, "flannel.1", "vxlan"),
                link(6, "lxcabc", "veth"),
                link(7, "cni0", "bridge"),
                port,
                link(9, "veth-other", "veth"),
                down,
                slave,
            ],
            addresses: vec![
                addr(1, "127.0.0.1/8"),
                addr(2, "172.18.0.10/24"),
                addr(3, "192.168.9.10/24"),
                addr(4, "10.10.0.10/24"),
                addr(5, "10.244.0.0/32"),
                addr(6, "10.244.0.1/32"),
                addr(7, "10.244.0.1/24"),
                addr(9, "172.30.0.1/24"),
                addr(10, "192.168.99.1/24"),
            ],
            routes: vec![
                route(2, "default"),
                route(2, "172.18.0.0/24"),
                route(3, "192.168.9.0/24"),
                route(4, "10.10.0.0/24"),
                route(5, "10.244.1.0/24"),
                route(6, "10.244.0.5/32"),
                route(7, "10.244.0.0/24"),
                route(9, "172.30.0.0/24"),
                route(10, "192.168.99.0/24"),
            ],
        }
    }

    fn node_with(ip: &str) -> NodeAddresses {
        NodeAddresses {
            found: true,
            internal_ips: vec![ip.parse().unwrap()],
            external_ips: Vec::new(),
        }
    }

    /// Test that detection picks the default-route device, the device holding the Node's
    /// address, the overlay and the VLAN with a global route, and nothing else: not loopback,
    /// pod interfaces, bridges or bridge and bond ports, devices that are down, or veths with
    /// neither default route nor Node address.
    #[test]
    fn detection_picks_routed_devices_and_leaves_out_the_rest() {
        let pods = [glob::Pattern::new("lxc*").unwrap()];
        let got = select(
            &DeviceFilter::default(),
            &pods,
            &kind_node(),
            &node_with("192.168.9.10"),
        );
        let names: Vec<(&str, Vec<&str>)> = got
            .iter()
            .map(|(n, d)| (n.as_str(), reason_names(d.reasons)))
            .collect();
        assert_eq!(
            names,
            [
                ("eth0", vec!["default route"]),
                ("eth0.10", vec!["global route"]),
                ("eth1", vec!["node address"]),
                ("flannel.1", vec!["overlay", "global route"]),
            ]
        );
        assert_eq!(got["flannel.1"].kind, "vxlan");
    }

    /// Test that an overlay device `--devices` does not name is reported as left out, and
    /// nothing when the flag names it or devices are detected.
    #[test]
    fn overlays_the_flag_leaves_out_are_reported() {
        let pods = [glob::Pattern::new("lxc*").unwrap()];
        let view = kind_node();
        let node = NodeAddresses::default();
        let left_out = |patterns: &[&str]| {
            let filter = DeviceFilter {
                patterns: patterns
                    .iter()
                    .map(|p| glob::Pattern::new(p).unwrap())
                    .collect(),
            };
            let chosen = select(&filter, &pods, &view, &node);
            overlays_left_out(&filter, &pods, &view, &chosen)
        };
        assert_eq!(left_out(&["eth0"]), ["flannel.1"]);
        assert!(left_out(&["eth0", "flannel.*"]).is_empty());
        assert!(left_out(&[]).is_empty());
    }

    /// Test that `--devices` names and globs choose exactly the interfaces they match, down or
    /// not, pod pattern or not, but never loopback.
    #[test]
    fn the_flag_chooses_what_it_matches_except_loopback() {
        let filter = DeviceFilter {
            patterns: ["eth*", "lxcabc", "lo"]
                .iter()
                .map(|p| glob::Pattern::new(p).unwrap())
                .collect(),
        };
        let pods = [glob::Pattern::new("lxc*").unwrap()];
        let got = select(&filter, &pods, &kind_node(), &NodeAddresses::default());
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(names, ["eth0", "eth0.10", "eth1", "eth9", "lxcabc"]);
        assert!(got.values().all(|d| d.reasons == DEV_R_FLAG));
    }
}
