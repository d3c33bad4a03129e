//! This node's Node object, as kube-proxy reads it: the topology.kubernetes.io/zone label its
//! topology hints are matched against (`pkg/proxy/topology.go`, the proxier's nodeLabels), and
//! its addresses: the node IPs kube-proxy detects (`component-helpers/node/util/ips.go`
//! GetNodeHostIPs, which `--nodeport-addresses primary` stands for) and, for the agent's device
//! detection, every InternalIP and ExternalIP.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::{parse_ip_sloppy, LABEL_TOPOLOGY_ZONE};
use crate::model::{Diagnostic, Snapshot};

/// What the plan needs from this node's Node object.
pub(super) struct NodeInfo {
    pub(super) name: String,
    /// topology.kubernetes.io/zone, "" when unset.
    pub(super) zone: String,
    /// Its addresses (none when the Node is missing).
    pub(super) addresses: NodeAddresses,
}

/// The addresses of this node's Node object (`status.addresses`), each list in order and
/// without duplicates; unparsable ones are reported and left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    /// Whether the snapshot has the Node at all.
    pub found: bool,
    /// Addresses of type InternalIP.
    pub internal_ips: Vec<IpAddr>,
    /// Addresses of type ExternalIP.
    pub external_ips: Vec<IpAddr>,
}

impl NodeAddresses {
    /// The node IPs kube-proxy detects from the Node object, one per family at most
    /// (GetNodeHostIPs): the first InternalIP of the family, else its first ExternalIP.
    /// `--nodeport-addresses primary` means these.
    pub fn primary(&self) -> Vec<IpAddr> {
        let first = |v4: bool| {
            self.internal_ips
                .iter()
                .chain(&self.external_ips)
                .find(|ip| ip.is_ipv4() == v4)
                .copied()
        };
        [first(true), first(false)].into_iter().flatten().collect()
    }

    /// Every InternalIP and ExternalIP.
    pub fn all(&self) -> impl Iterator<Item = &IpAddr> {
        self.internal_ips.iter().chain(&self.external_ips)
    }
}

/// The addresses of node `node_name`'s Node object in `snapshot` (the last definition wins).
/// Pure, like [`plan`](super::plan()); invalid addresses are skipped silently here (the plan
/// reports them).
pub fn node_addresses(snapshot: &Snapshot, node_name: &str) -> NodeAddresses {
    NodeInfo::find(&snapshot.nodes, node_name, &mut Vec::new()).addresses
}

impl NodeInfo {
    pub(super) fn find(
        nodes: &[Arc<Node>],
        node_name: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> NodeInfo {
        let mut info = NodeInfo {
            name: node_name.to_owned(),
            zone: String::new(),
            addresses: NodeAddresses::default(),
        };
        // The last definition wins, as for every other object.
        let Some(node) = nodes
            .iter()
            .rev()
            .find(|n| n.metadata.name.as_deref() == Some(node_name))
        else {
            diagnostics.push(Diagnostic::object(
                "Node",
                node_name,
                "node not found in the snapshot: no zone for topology hints, no node IPs \
                 (--nodeport-addresses primary serves none)",
            ));
            return info;
        };
        info.addresses.found = true;
        info.zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
            .cloned()
            .unwrap_or_default();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        for address in addresses {
            let list = match address.type_.as_str() {
                "InternalIP" => &mut info.addresses.internal_ips,
                "ExternalIP" => &mut info.addresses.external_ips,
                _ => continue,
            };
            match parse_ip_sloppy(&address.address) {
                Some(ip) if !list.contains(&ip) => list.push(ip),
                Some(_) => {}
                None => diagnostics.push(Diagnostic::object(
                    "Node",
                    node_name,
                    format!("invalid {} {:?}; ignored", address.type_, address.address),
                )),
            }
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the primary node IPs are the first InternalIP per family, else the first
    /// ExternalIP of the family, as GetNodeHostIPs picks them.
    #[test]
    fn primary_node_ips_prefer_internal_ips_per_family() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = NodeAddresses {
            found: true,
            internal_ips: vec![ip("10.0.0.2"), ip("10.0.0.3")],
            external_ips: vec![ip("203.0.113.2"), ip("2001:db8::2"), ip("2001:db8::3")],
        };
        assert_eq!(a.primary(), [ip("10.0.0.2"), ip("2001:db8::2")]);
        assert_eq!(NodeAddresses::default().primary(), Vec::<IpAddr>::new());
        assert_eq!(a.all().count(), 5);
    }
}
