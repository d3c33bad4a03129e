//! Which addresses are NodePort addresses: `--nodeport-addresses` with kube-proxy's meaning
//! (`pkg/proxy/util/nodeport_addresses.go`; `primary` from `cmd/kube-proxy/app/server.go`), and
//! by default every address of every node device. Loopback addresses never (kube-proxy's
//! nftables mode: "localhost NodePorts are not supported").

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    str::FromStr,
};

use super::{HostView, RT_SCOPE_LINK};
use crate::plan::NodeAddresses;

/// An address prefix, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// A prefix of `addr`'s whole length (a /32 or a /128).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix_len }
    }

    /// Whether `ip` is inside (of the same family).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(*a) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(*a) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// "10.0.0.0/8" or "fd00::/64"; host bits are allowed and cleared (ParseCIDRSloppy).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let r = crate::plan::SourceRange::parse(s)
            .filter(|_| !s.trim().is_empty())
            .ok_or_else(|| format!("{s:?} is not a CIDR (want e.g. 10.0.0.0/8 or fd00::/64)"))?;
        Ok(Cidr {
            addr: r.addr,
            prefix_len: r.prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `--nodeport-addresses`: where NodePorts answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Unset: every address of every node device.
    #[default]
    Devices,
    /// `primary`: the Node object's node IPs (the first InternalIP of each family, else its
    /// first ExternalIP), where this node has them.
    Primary,
    /// CIDRs: every address of this node (on any interface) inside one of them; a family with
    /// none of them matches all of that family's addresses (as kube-proxy's per-family
    /// NodePortAddresses does).
    Cidrs(Vec<Cidr>),
}

impl FromStr for NodePortAddresses {
    type Err = String;

    /// "primary", or comma-separated CIDRs; "" is the default.
    fn from_str(s: &str) -> Result<Self, String> {
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        if s.trim().is_empty() {
            return Ok(NodePortAddresses::Devices);
        }
        if items.contains(&"primary") {
            if items.len() != 1 {
                return Err("can't use both 'primary' and CIDRs".into());
            }
            return Ok(NodePortAddresses::Primary);
        }
        items
            .iter()
            .map(|i| i.parse())
            .collect::<Result<_, _>>()
            .map(NodePortAddresses::Cidrs)
    }
}

/// The NodePort addresses in `view` (address -> the index of the interface holding it): with
/// `mode` unset, every address of the node devices `devices` (by index) of host or site scope;
/// else the addresses of any interface that `mode` admits. Loopback addresses never.
pub(super) fn select(
    mode: &NodePortAddresses,
    view: &HostView,
    devices: &BTreeSet<u32>,
    node: &NodeAddresses,
) -> BTreeMap<IpAddr, u32> {
    let cidrs = match mode {
        NodePortAddresses::Devices => None,
        NodePortAddresses::Primary => {
            Some((node.primary().into_iter().map(Cidr::host).collect(), false))
        }
        NodePortAddresses::Cidrs(list) => Some((list.clone(), true)),
    };
    let admitted = |ip: &IpAddr, index: u32, scope: u8| match &cidrs {
        None => devices.contains(&index) && scope < RT_SCOPE_LINK,
        Some((list, whole_family_by_default)) => {
            let of_family: Vec<&Cidr> = list
                .iter()
                .filter(|c| c.addr.is_ipv4() == ip.is_ipv4())
                .collect();
            if of_family.is_empty() {
                *whole_family_by_default
            } else {
                of_family.iter().any(|c| c.contains(ip))
            }
        }
    };
    view.addresses
        .iter()
        .filter(|a| !a.addr.is_loopback() && admitted(&a.addr, a.index, a.scope))
        .map(|a| (a.addr, a.index))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{
        devices::tests::{addr, kind_node},
        Address,
    };

    fn ips(m: &BTreeMap<IpAddr, u32>) -> Vec<String> {
        m.keys().map(ToString::to_string).collect()
    }

    fn view() -> HostView {
        let mut v = kind_node();
        v.addresses.push(addr(2, "172.18.0.50/24"));
        v.addresses.push(addr(2, "fd00:18::10/64"));
        v.addresses.push(Address {
            scope: RT_SCOPE_LINK,
            ..addr(2, "fe80::10/64")
        });
        v
    }

    /// Test that by default every address of the node devices is a NodePort address (both
    /// families, link-local and loopback addresses not), and nothing of other interfaces.
    #[test]
    fn by_default_every_address_of_the_node_devices() {
        let devices = BTreeSet::from([1, 2, 5]);
        let got = select(
            &NodePortAddresses::Devices,
            &view(),
            &devices,
            &NodeAddresses::default(),
        );
        assert_eq!(
            ips(&got),
            ["10.244.0.0", "172.18.0.10", "172.18.0.50", "fd00:18::10"]
        );
        assert_eq!(got[&"172.18.0.50".parse::<IpAddr>().unwrap()], 2);
    }

    /// Test that CIDRs admit the addresses of any interface inside them, that a family without
    /// CIDRs admits all of its addresses (kube-proxy's per-family default), and loopback never.
    #[test]
    fn cidrs_admit_any_interfaces_addresses_inside_them() {
        let mode: NodePortAddresses = "172.18.0.0/24, 10.10.0.0/16".parse().unwrap();
        let got = select(&mode, &view(), &BTreeSet::new(), &NodeAddresses::default());
        assert_eq!(
            ips(&got),
            [
                "10.10.0.10",
                "172.18.0.10",
                "172.18.0.50",
                "fd00:18::10",
                "fe80::10"
            ]
        );
        let mode: NodePortAddresses = "127.0.0.0/8,fd00:18::/64".parse().unwrap();
        let got = select(&mode, &view(), &BTreeSet::new(), &NodeAddresses::default());
        assert_eq!(ips(&got), ["fd00:18::10"]);
    }

    /// Test that `primary` admits the Node's first InternalIP per family where this node holds
    /// it, and nothing without a Node.
    #[test]
    fn primary_admits_the_node_ips() {
        let node = NodeAddresses {
            found: true,
            internal_ips: vec![
                "172.18.0.50".parse().unwrap(),
                "172.18.0.10".parse().unwrap(),
            ],
            external_ips: Vec::new(),
        };
        let mode = NodePortAddresses::Primary;
        let got = select(&mode, &view(), &BTreeSet::new(), &node);
        assert_eq!(ips(&got), ["172.18.0.50"]);
        let none = select(&mode, &view(), &BTreeSet::new(), &NodeAddresses::default());
        assert!(none.is_empty());
    }

    /// Test the flag's syntax: `primary` alone, CIDRs of either family with host bits
    /// cleared, "" for the default; anything else is an error.
    #[test]
    fn the_flag_parses_as_kube_proxy_validates_it() {
        assert_eq!("primary".parse(), Ok(NodePortAddresses::Primary));
        assert_eq!("".parse(), Ok(NodePortAddresses::Devices));
        let NodePortAddresses::Cidrs(c) = "10.1.2.3/8,fd00::1/64".parse().unwrap() else {
            panic!("CIDRs");
        };
        let shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "fd00::/64"]);
        for bad in [
            "primary,10.0.0.0/8",
            "10.0.0.1",
            "10.0.0.0/33",
            "eth0",
            "10.0.0.0/8,",
        ] {
            assert!(bad.parse::<NodePortAddresses>().is_err(), "{bad}");
        }
    }
}
