//! This node as the network namespace shows it: its links, addresses and routes (`netlink`),
//! which links are node devices (`devices`: `--devices`, or detected as Cilium does) and which
//! addresses are NodePort addresses (`nodeport`: `--nodeport-addresses` with kube-proxy's
//! meaning). [`evaluate`] is pure; [`Tracker`] rereads the namespace when netlink says it
//! changed and logs what the agent now uses.

mod devices;
mod netlink;
mod nodeport;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use tracing::{info, warn};

use crate::plan::NodeAddresses;

pub use devices::{reason_names, ChosenDevice, DeviceFilter};
pub use netlink::{read, watch};
pub use nodeport::{Cidr, NodePortAddresses};

/// `IFF_UP`.
pub const IFF_UP: u32 = 1;
/// `IFF_LOOPBACK`.
pub const IFF_LOOPBACK: u32 = 8;
/// `RTN_UNICAST`: a route to a destination (as opposed to local, broadcast, blackhole ...).
pub const RTN_UNICAST: u8 = 1;
/// `RT_SCOPE_LINK`: an address valid on its link only (IPv6 fe80::/10 and the like).
pub const RT_SCOPE_LINK: u8 = 253;
/// `RT_TABLE_LOCAL`: the kernel's table of this node's own addresses.
pub const RT_TABLE_LOCAL: u32 = 255;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// rtnetlink link kind (`veth`, `vxlan`, `bridge` ...); "" for a physical NIC.
    pub kind: String,
    /// ARPHRD_* hardware type.
    pub link_type: u16,
    /// IFF_* flags.
    pub flags: u32,
    /// The bridge, bond or VRF it is a port of; 0 for none.
    pub master: u32,
}

/// An address of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The interface's index.
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// RT_SCOPE_* (0 universe, 200 site, 253 link, 254 host).
    pub scope: u8,
}

/// A route, as far as device detection looks at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The interface it leaves through (one entry per next hop of a multipath route); 0 for
    /// none.
    pub index: u32,
    /// None: the default route of its family (with `dst_len` 0).
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub table: u32,
    /// RTN_* type.
    pub route_type: u8,
}

/// The links, addresses and routes of the namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
}

impl HostView {
    /// The link with index `index`.
    pub fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }
}

/// How the agent picks its devices and NodePort addresses (from its flags).
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// `--devices`.
    pub devices: DeviceFilter,
    /// `--pod-interfaces`: never node devices unless named by `--devices`.
    pub pod_patterns: Vec<glob::Pattern>,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
}

/// What the agent uses of the namespace: its node devices and its NodePort addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Node devices by name.
    pub devices: BTreeMap<String, ChosenDevice>,
    /// NodePort addresses -> the index of the interface holding them.
    pub nodeport_addresses: BTreeMap<IpAddr, u32>,
    /// Overlay devices `--devices` leaves out (warned about: replies arriving on them are not
    /// reverse-translated).
    pub overlays_left_out: Vec<String>,
}

impl Host {
    /// The node devices' names.
    pub fn device_names(&self) -> BTreeSet<String> {
        self.devices.keys().cloned().collect()
    }

    /// "eth0 (default route, node address), flannel.1 (overlay vxlan)", or "none".
    pub fn describe_devices(&self) -> String {
        let mut out = String::new();
        for (name, d) in &self.devices {
            let mut why = reason_names(d.reasons).join(", ");
            if !d.kind.is_empty() {
                let _ = write!(why, "; {}", d.kind);
            }
            let sep = if out.is_empty() { "" } else { ", " };
            let _ = write!(out, "{sep}{name} ({why})");
        }
        if out.is_empty() {
            out.push_str("none");
        }
        out
    }

    /// "172.18.0.10 (eth0), 172.18.0.50 (eth0)", or "none".
    pub fn describe_addresses(&self, view: &HostView) -> String {
        let list: Vec<String> = self
            .nodeport_addresses
            .iter()
            .map(|(a, i)| match view.link(*i) {
                Some(l) => format!("{a} ({})", l.name),
                None => a.to_string(),
            })
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }
}

/// The node devices and NodePort addresses `cfg` picks in `view` for a node whose Node object
/// has `node`'s addresses. Pure.
pub fn evaluate(cfg: &HostConfig, view: &HostView, node: &NodeAddresses) -> Host {
    let devices = devices::select(&cfg.devices, &cfg.pod_patterns, view, node);
    let indexes: BTreeSet<u32> = devices.values().map(|d| d.index).collect();
    let nodeport_addresses = nodeport::select(&cfg.nodeport_addresses, view, &indexes, node);
    let overlays_left_out =
        devices::overlays_left_out(&cfg.devices, &cfg.pod_patterns, view, &devices);
    Host {
        devices,
        nodeport_addresses,
        overlays_left_out,
    }
}

/// Follows the namespace: rereads it when asked, and logs when the node devices or NodePort
/// addresses change.
#[derive(Debug, Default)]
pub struct Tracker {
    cfg: HostConfig,
    /// The Node object's addresses, from the last full sync.
    node: NodeAddresses,
    /// Whether a sync has read the Node (or found none) yet: until then, device detection and
    /// `primary` may lack the Node's addresses, and the agent only adds.
    node_known: bool,
    host: Host,
    /// Whether the first evaluation was logged (it is, even when it chose nothing).
    logged: bool,
}

impl Tracker {
    pub fn new(cfg: HostConfig) -> Self {
        Tracker {
            cfg,
            ..Tracker::default()
        }
    }

    /// What the agent uses now.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Whether the Node object has been read: until then the agent attaches and adds, and
    /// removes nothing.
    pub fn node_known(&self) -> bool {
        self.node_known
    }

    /// Records the Node object's addresses; true if they are new (the namespace should then be
    /// evaluated again).
    pub fn set_node(&mut self, node: NodeAddresses) -> bool {
        let changed = !self.node_known || node != self.node;
        self.node = node;
        self.node_known = true;
        changed
    }

    /// Rereads the namespace and evaluates it; logs changes. On a netlink error the last
    /// state stays.
    pub fn refresh(&mut self) -> &Host {
        let view = match read() {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "reading links, addresses and routes failed; keeping the last state");
                return &self.host;
            }
        };
        let next = evaluate(&self.cfg, &view, &self.node);
        if next.devices != self.host.devices || !self.logged {
            let how = if self.cfg.devices.is_auto() {
                "detected"
            } else {
                "--devices"
            };
            info!(devices = %next.describe_devices(), how, "node devices");
        }
        if !next.overlays_left_out.is_empty()
            && (next.overlays_left_out != self.host.overlays_left_out || !self.logged)
        {
            warn!(
                overlays = %next.overlays_left_out.join(", "),
                "overlay devices not in --devices: replies of flows to backends behind them \
                 (Services from pods, NodePorts to other nodes) arrive there untranslated; \
                 name them in --devices"
            );
        }
        if next.nodeport_addresses != self.host.nodeport_addresses || !self.logged {
            info!(
                addresses = %next.describe_addresses(&view),
                "NodePort addresses"
            );
        }
        self.host = next;
        self.logged = true;
        &self.host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the descriptions name each device with its reasons and kind, and each
    /// address with its interface.
    #[test]
    fn descriptions_name_devices_reasons_and_interfaces() {
        let mut host = Host::default();
        assert_eq!(host.describe_devices(), "none");
        host.devices.insert(
            "eth0".into(),
            ChosenDevice {
                index: 2,
                kind: String::new(),
                reasons: lb_common::maps::DEV_R_DEFAULT_ROUTE | lb_common::maps::DEV_R_NODE_ADDR,
            },
        );
        host.devices.insert(
            "flannel.1".into(),
            ChosenDevice {
                index: 5,
                kind: "vxlan".into(),
                reasons: lb_common::maps::DEV_R_OVERLAY,
            },
        );
        assert_eq!(
            host.describe_devices(),
            "eth0 (default route, node address), flannel.1 (overlay; vxlan)"
        );
        host.nodeport_addresses
            .insert("172.18.0.10".parse().unwrap(), 2);
        let view = HostView {
            links: vec![Link {
                index: 2,
                name: "eth0".into(),
                kind: String::new(),
                link_type: 1,
                flags: IFF_UP,
                master: 0,
            }],
            ..HostView::default()
        };
        assert_eq!(host.describe_addresses(&view), "172.18.0.10 (eth0)");
    }
}
