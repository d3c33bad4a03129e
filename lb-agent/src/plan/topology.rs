//! Topology and traffic policies: which of a ServicePort's endpoints Cluster and Local traffic
//! may use, hints and the serving-and-terminating fallback included (`pkg/proxy/topology.go`
//! CategorizeEndpoints, topologyModeFromHints, availableForTopology).

use super::endpoints::Ep;
use super::node::NodeInfo;
use super::service::PortInfo;
use super::PREFER_SAME_TRAFFIC_DISTRIBUTION;

/// The topology mode kube-proxy derives from the endpoints' hints (topologyModeFromHints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    /// No topology: every ready endpoint.
    None,
    PreferSameZone,
    PreferSameNode,
}

/// topologyModeFromHints: node hints win if every ready endpoint has one and one names this
/// node; else zone hints if every ready endpoint has one and one names this node's zone; else
/// none. Only ready endpoints are looked at; with none ready, hints are ignored.
fn topology_mode(endpoints: &[Ep], node_name: &str, zone: &str) -> TopologyMode {
    let mut has_ready = false;
    let mut all_have_node_hints = true;
    let mut has_for_node = false;
    let mut all_have_zone_hints = true;
    let mut has_for_zone = false;
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        has_ready = true;
        if ep.node_hints.is_empty() {
            all_have_node_hints = false;
        } else if !node_name.is_empty() && ep.node_hints.contains(node_name) {
            has_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_have_zone_hints = false;
        } else if !zone.is_empty() && ep.zone_hints.contains(zone) {
            has_for_zone = true;
        }
    }
    if !has_ready {
        return TopologyMode::None;
    }
    if PREFER_SAME_TRAFFIC_DISTRIBUTION && all_have_node_hints && has_for_node {
        return TopologyMode::PreferSameNode;
    }
    if all_have_zone_hints && has_for_zone {
        return TopologyMode::PreferSameZone;
    }
    TopologyMode::None
}

/// availableForTopology: whether an endpoint is in the set `mode` narrows to.
fn available_for_topology(ep: &Ep, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.contains(node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.contains(zone),
    }
}

/// CategorizeEndpoints' result.
pub(super) struct Categorized {
    /// Endpoints for Cluster traffic policy (topology applied); None if the port never uses it.
    pub(super) cluster: Option<Vec<Ep>>,
    /// Endpoints for Local traffic policy; None if the port never uses it.
    pub(super) local: Option<Vec<Ep>>,
    /// Whether the service has usable endpoints anywhere in the cluster.
    pub(super) has_any: bool,
}

/// topology.go CategorizeEndpoints: ready endpoints (narrowed by topology for Cluster policy),
/// falling back to serving-and-terminating ones, independently for Cluster and Local.
pub(super) fn categorize(endpoints: &[Ep], port: &PortInfo, node: &NodeInfo) -> Categorized {
    let mut result = Categorized {
        cluster: None,
        local: None,
        has_any: false,
    };
    if endpoints.is_empty() {
        return result;
    }
    let pick = |f: &dyn Fn(&Ep) -> bool| {
        endpoints
            .iter()
            .filter(|ep| f(ep))
            .cloned()
            .collect::<Vec<_>>()
    };

    if port.uses_cluster_endpoints() {
        let mode = topology_mode(endpoints, &node.name, &node.zone);
        let mut cluster =
            pick(&|ep| ep.ready && available_for_topology(ep, mode, &node.name, &node.zone));
        if cluster.is_empty() {
            // No ready endpoint anywhere (topology is only used when one exists for this
            // node or zone): fall back to serving-and-terminating ones, ignoring topology.
            cluster = pick(&|ep| ep.serving && ep.terminating);
        }
        result.has_any = !cluster.is_empty();
        result.cluster = Some(cluster);
    }

    if !port.uses_local_endpoints() {
        return result;
    }
    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for ep in endpoints {
        if ep.ready {
            result.has_any = true;
            has_local_ready |= ep.is_local;
        } else if ep.serving && ep.terminating {
            result.has_any = true;
            has_local_serving_terminating |= ep.is_local;
        }
    }
    // Local endpoints ignore topology hints.
    result.local = Some(if has_local_ready {
        pick(&|ep| ep.is_local && ep.ready)
    } else if has_local_serving_terminating {
        pick(&|ep| ep.is_local && ep.serving && ep.terminating)
    } else {
        Vec::new()
    });
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::plan::Protocol;

    fn ep(
        addr: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
        local: bool,
        zones: &[&str],
    ) -> Ep {
        Ep {
            addr: addr.parse().unwrap(),
            is_local: local,
            ready,
            serving,
            terminating,
            zone_hints: zones.iter().map(|z| z.to_string()).collect(),
            node_hints: BTreeSet::new(),
        }
    }

    /// Test that the topology mode needs hints on every ready endpoint and one for this zone.
    #[test]
    fn topology_mode_requires_complete_hints() {
        let eps = [
            ep("10.0.0.1:80", true, true, false, false, &["a"]),
            ep("10.0.0.2:80", true, true, false, false, &["b"]),
            ep("10.0.0.3:80", false, false, false, false, &[]),
        ];
        assert_eq!(topology_mode(&eps, "n", "a"), TopologyMode::PreferSameZone);
        assert_eq!(topology_mode(&eps, "n", "c"), TopologyMode::None);
        assert_eq!(topology_mode(&eps, "n", ""), TopologyMode::None);
        let eps = [
            ep("10.0.0.1:80", true, true, false, false, &["a"]),
            ep("10.0.0.2:80", true, true, false, false, &[]),
        ];
        assert_eq!(topology_mode(&eps, "n", "a"), TopologyMode::None);
    }

    /// A port for `categorize`: ClusterIP only, or with a nodePort (externally accessible).
    fn port(internal_local: bool, external_local: bool, node_port: u16) -> PortInfo {
        PortInfo {
            port_name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port,
            cluster_ip: "10.96.0.1".parse().unwrap(),
            external_ips: Vec::new(),
            load_balancer_vips: Vec::new(),
            source_ranges: Vec::new(),
            affinity_timeout: None,
            external_policy_local: external_local,
            internal_policy_local: internal_local,
        }
    }

    fn addrs(eps: &Option<Vec<Ep>>) -> Option<Vec<String>> {
        eps.as_ref()
            .map(|v| v.iter().map(|e| e.addr.to_string()).collect())
    }

    fn strings(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    /// Test that CategorizeEndpoints' traffic-policy cases come out as upstream's
    /// topology_test.go TestCategorizeEndpoints expects (terminating endpoints enabled, as GA).
    #[test]
    fn categorize_matches_upstream_traffic_policy_cases() {
        let node = NodeInfo {
            name: "node-a".into(),
            zone: String::new(),
            addresses: Default::default(),
        };
        // (name, port, endpoints, cluster, local, has_any)
        type Case = (
            &'static str,
            PortInfo,
            Vec<Ep>,
            Option<Vec<String>>,
            Option<Vec<String>>,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "internalTrafficPolicy: Local, with empty endpoints",
                port(true, false, 0),
                vec![],
                None,
                None,
                false,
            ),
            (
                "internalTrafficPolicy: Local, but all endpoints are remote",
                port(true, false, 0),
                vec![
                    ep("10.0.0.0:80", true, true, false, false, &[]),
                    ep("10.0.0.1:80", true, true, false, false, &[]),
                ],
                None,
                strings(&[]),
                true,
            ),
            (
                "internalTrafficPolicy: Local, some endpoints are local",
                port(true, false, 0),
                vec![
                    ep("10.0.0.0:80", true, true, false, true, &[]),
                    ep("10.0.0.1:80", true, true, false, false, &[]),
                ],
                None,
                strings(&["10.0.0.0:80"]),
                true,
            ),
            (
                "Cluster traffic policy, endpoints not Ready",
                port(false, false, 0),
                vec![
                    ep("10.0.0.0:80", false, false, false, false, &[]),
                    ep("10.0.0.1:80", false, false, false, false, &[]),
                ],
                strings(&[]),
                None,
                false,
            ),
            (
                "Cluster traffic policy, all endpoints are terminating",
                port(false, false, 0),
                vec![
                    ep("10.0.0.0:80", false, true, true, true, &[]),
                    ep("10.0.0.1:80", false, true, true, false, &[]),
                ],
                strings(&["10.0.0.0:80", "10.0.0.1:80"]),
                None,
                true,
            ),
            (
                "iTP: Local, eTP: Cluster, some endpoints local",
                port(true, false, 8080),
                vec![
                    ep("10.0.0.0:80", true, true, false, true, &[]),
                    ep("10.0.0.1:80", true, true, false, false, &[]),
                ],
                strings(&["10.0.0.0:80", "10.0.0.1:80"]),
                strings(&["10.0.0.0:80"]),
                true,
            ),
            (
                "iTP: Local, eTP: Local, all endpoints remote and terminating",
                port(true, true, 8080),
                vec![
                    ep("10.0.0.0:80", false, true, true, false, &[]),
                    ep("10.0.0.1:80", false, true, true, false, &[]),
                ],
                strings(&["10.0.0.0:80", "10.0.0.1:80"]),
                strings(&[]),
                true,
            ),
            (
                "iTP: Cluster, eTP: Local, with terminating endpoints",
                port(false, true, 8080),
                vec![
                    ep("10.0.0.0:80", true, true, false, false, &[]),
                    ep("10.0.0.1:80", false, false, false, true, &[]),
                    ep("10.0.0.2:80", false, true, true, true, &[]),
                    ep("10.0.0.3:80", false, true, true, false, &[]),
                ],
                strings(&["10.0.0.0:80"]),
                strings(&["10.0.0.2:80"]),
                true,
            ),
            (
                "no cluster endpoints for iTP:Local internal-only service",
                port(true, false, 0),
                vec![
                    ep("10.0.0.0:80", true, true, false, false, &[]),
                    ep("10.0.0.1:80", true, true, false, true, &[]),
                ],
                None,
                strings(&["10.0.0.1:80"]),
                true,
            ),
        ];
        for (name, port, endpoints, cluster, local, has_any) in cases {
            let got = categorize(&endpoints, &port, &node);
            assert_eq!(addrs(&got.cluster), cluster, "{name}: cluster endpoints");
            assert_eq!(addrs(&got.local), local, "{name}: local endpoints");
            assert_eq!(got.has_any, has_any, "{name}: hasAnyEndpoints");
        }
    }
}
