//! This node's Node object, as kube-proxy reads it: the topology.kubernetes.io/zone label its
//! topology hints are matched against (`pkg/proxy/topology.go`, the proxier's nodeLabels) and
//! the InternalIPs NodePorts are opened on (`pkg/proxy/util/nodeport_addresses.go`; ours: every
//! InternalIP of the Node).

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::{parse_ip_sloppy, LABEL_TOPOLOGY_ZONE};
use crate::model::Diagnostic;

/// What the plan needs from this node's Node object.
pub(super) struct NodeInfo {
    pub(super) name: String,
    /// topology.kubernetes.io/zone, "" when unset.
    pub(super) zone: String,
    /// status.addresses of type InternalIP, in order: the NodePort frontends' addresses.
    pub(super) internal_ips: Vec<IpAddr>,
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
            internal_ips: Vec::new(),
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
                "node not found in the snapshot: no NodePort frontends, no zone for topology hints",
            ));
            return info;
        };
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
        for address in addresses.iter().filter(|a| a.type_ == "InternalIP") {
            match parse_ip_sloppy(&address.address) {
                Some(ip) if !info.internal_ips.contains(&ip) => info.internal_ips.push(ip),
                Some(_) => {}
                None => diagnostics.push(Diagnostic::object(
                    "Node",
                    node_name,
                    format!(
                        "invalid InternalIP {:?}; no NodePort frontends on it",
                        address.address
                    ),
                )),
            }
        }
        info
    }
}
