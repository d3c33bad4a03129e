//! The plan: what kube-proxy (kubernetes/kubernetes `pkg/proxy`) would program for a snapshot,
//! as frontends with backend lists.
//!
//! [`plan`] is pure: a [`Snapshot`] and the node's name in, frontends and diagnostics out. The
//! rules are kube-proxy's, ported rule by rule; docs/PLAN.md lists each rule with the upstream
//! file it comes from and the file here that ports it.
//!
//! Outline, as kube-proxy runs it once per IP family, one file per stage:
//! 1. Services the proxy ignores are dropped (`service`: `util/utils.go` ShouldSkipService).
//! 2. Each ServicePort of each family becomes a `PortInfo` (`service`: `serviceport.go`).
//! 3. Its endpoints are gathered from the service's EndpointSlices (`endpoints`:
//!    `endpointslicecache.go`, `endpoint.go`).
//! 4. They are split into Cluster and Local sets (`topology`: `topology.go`
//!    CategorizeEndpoints).
//! 5. Each frontend gets its set, or reject/drop when empty (`emit`:
//!    `iptables|nftables/proxier.go`).
//!
//! Beside them, `node` reads this node's Node object (zone, addresses) and `health` computes
//! the health-check node ports (`healthcheck/service_health.go`). This file keeps the public
//! types, the shared helpers, and [`plan`], which runs the stages in order.

mod emit;
mod endpoints;
mod health;
mod node;
mod service;
mod topology;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};

use crate::model::{Diagnostic, Snapshot};

use self::emit::emit_frontends;
use self::endpoints::{collect_endpoints, SliceIndex};
use self::node::NodeInfo;
use self::service::{port_info, service_info, service_skip_reason, Family};

pub use self::health::{health_checks, HealthCheck};
pub use self::node::{node_addresses, NodeAddresses};

/// Everything the dataplane must serve, and nothing else. `lb-agent plan` prints it as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub frontends: Vec<Frontend>,
}

/// One address:port:protocol a Service answers on, and where new connections to it go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    /// "namespace/name".
    pub service: String,
    /// The ServicePort's name, "" if unnamed.
    pub port_name: String,
    #[serde(rename = "type")]
    pub kind: FrontendKind,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Sorted by their string form.
    pub backends: Vec<SocketAddr>,
    /// What to do when `backends` is empty; None when it is not.
    pub on_empty: Option<OnEmpty>,
    pub affinity_timeout_seconds: Option<u32>,
    /// Which traffic this frontend serves: any ([`Scope::Any`], left out of the JSON), or only
    /// this node's pods' ([`Scope::Pods`]: kube-proxy's externalTrafficPolicy Local
    /// short-circuit, which sends it to the Cluster set).
    #[serde(default, skip_serializing_if = "Scope::is_any")]
    pub scope: Scope,
    /// spec.loadBalancerSourceRanges of this frontend's family, on LoadBalancer and NodePort
    /// frontends (the dataplane enforces them on LoadBalancer frontends, and on NodePorts
    /// when asked). Not part of the plan's JSON interface.
    #[serde(skip)]
    pub source_ranges: Vec<SourceRange>,
    /// The backends on this node (their EndpointSlice endpoint's nodeName is this node,
    /// kube-proxy's IsLocal), sorted as `backends`: from node devices, flows to the others are
    /// SNATed. Not part of the plan's JSON interface.
    #[serde(skip)]
    pub local_backends: Vec<SocketAddr>,
}

/// A source prefix allowed by loadBalancerSourceRanges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl SourceRange {
    /// Parses "10.0.0.0/8" (surrounding spaces allowed; host bits are cleared).
    pub fn parse(text: &str) -> Option<SourceRange> {
        let (addr, len) = text.trim().split_once('/')?;
        let addr: IpAddr = addr.trim().parse().ok()?;
        let prefix_len: u8 = len.trim().parse().ok()?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > bits {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Some(SourceRange { addr, prefix_len })
    }
}

/// Which traffic a frontend serves.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Any traffic to the address (printed as nothing: the field is left out).
    #[default]
    Any,
    /// Traffic from this node's pods, which kube-proxy sends to every endpoint in the cluster
    /// when it goes to an external address (NodePort, externalIP, load-balancer IP) of a
    /// Service with `externalTrafficPolicy: Local`.
    Pods,
}

impl Scope {
    /// Whether this is the default, [`Scope::Any`].
    pub fn is_any(&self) -> bool {
        *self == Scope::Any
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name ("TCP", "UDP", "SCTP"); None for anything else.
    pub fn from_k8s(name: &str) -> Option<Protocol> {
        match name {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEmpty {
    /// The service has no usable endpoints anywhere: answer with ICMP unreachable / TCP RST.
    Reject,
    /// The service has endpoints, but a Local traffic policy leaves none for this node.
    Drop,
}

/// The result of [`plan`]: the plan, and what was skipped on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOutput {
    pub plan: Plan,
    pub diagnostics: Vec<Diagnostic>,
}

impl Plan {
    /// Puts frontends and their backends in the canonical order (backends by string form,
    /// frontends by service, port, type, address, port and scope), so equal plans compare and
    /// print equal.
    pub fn normalize(&mut self) {
        for frontend in &mut self.frontends {
            sort_backends(&mut frontend.backends);
            sort_backends(&mut frontend.local_backends);
        }
        self.frontends.sort_by(|a, b| {
            (
                &a.service,
                &a.port_name,
                a.protocol,
                a.kind,
                a.ip,
                a.port,
                a.scope,
            )
                .cmp(&(
                    &b.service,
                    &b.port_name,
                    b.protocol,
                    b.kind,
                    b.ip,
                    b.port,
                    b.scope,
                ))
        });
        self.frontends.dedup();
    }
}

/// Sorts backends by their string form ("10.0.0.10:80" < "10.0.0.9:80"), as the plan's JSON
/// contract requires, and removes duplicates.
pub fn sort_backends(backends: &mut Vec<SocketAddr>) {
    backends.sort_by_cached_key(|b| b.to_string());
    backends.dedup();
}

/// kube-proxy's service-proxy-name label: a Service (or EndpointSlice) carrying it belongs to
/// another proxy (cmd/kube-proxy/app/server.go informer label selector).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Set by the EndpointSlice controller on headless services' slices; filtered by the same
/// informer label selector (v1.IsHeadlessService).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// discovery.LabelServiceName: which Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// v1.LabelTopologyZone: the node's zone, matched against endpoint zone hints.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// The API server's default sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;
/// The API server's upper bound for sessionAffinityConfig.clientIP.timeoutSeconds (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86400;
/// Whether node hints (trafficDistribution PreferSameNode) are honoured: kube-proxy's
/// PreferSameTrafficDistribution feature gate, on by default since Kubernetes 1.34.
pub const PREFER_SAME_TRAFFIC_DISTRIBUTION: bool = true;

/// Plans every Service in `snapshot` as kube-proxy on node `node_name` would program it.
///
/// Pure: no I/O. Objects that cannot be planned are skipped (in whole or in part) and reported
/// in `diagnostics`; the rest is still planned.
pub fn plan(snapshot: &Snapshot, node_name: &str) -> PlanOutput {
    let mut diagnostics = Vec::new();
    let node = NodeInfo::find(&snapshot.nodes, node_name, &mut diagnostics);
    let slices = SliceIndex::build(&snapshot.endpoint_slices, &mut diagnostics);

    // Later objects with the same namespace/name replace earlier ones, as in the API.
    let mut services: BTreeMap<String, &Service> = BTreeMap::new();
    for service in &snapshot.services {
        let Some(name) = service.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            diagnostics.push(Diagnostic::object(
                "Service",
                format!("{}/<no name>", namespace_of(&service.metadata)),
                "Service has no metadata.name; skipped",
            ));
            continue;
        };
        let key = format!("{}/{name}", namespace_of(&service.metadata));
        if services.insert(key.clone(), service).is_some() {
            diagnostics.push(Diagnostic::object(
                "Service",
                key,
                "Service defined more than once; the last definition is used",
            ));
        }
    }

    let mut frontends = Vec::new();
    for (key, service) in services {
        plan_service(
            &key,
            service,
            &node,
            &slices,
            &mut frontends,
            &mut diagnostics,
        );
    }
    let mut plan = Plan { frontends };
    plan.normalize();
    PlanOutput { plan, diagnostics }
}

/// Plans one Service: every ServicePort in every family it has a clusterIP of, through the stages
/// in order.
fn plan_service(
    key: &str,
    service: &Service,
    node: &NodeInfo,
    slices: &SliceIndex<'_>,
    frontends: &mut Vec<Frontend>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if service.spec.is_none() || service_skip_reason(service).is_some() {
        return;
    }
    let Some(info) = service_info(key, service, diagnostics) else {
        return;
    };
    let Some(spec) = service.spec.as_ref() else {
        return;
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    for family in [Family::V4, Family::V6] {
        let Some(cluster_ip) = info
            .cluster_ips
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == family)
        else {
            continue;
        };
        for service_port in ports {
            let Some(port) = port_info(&info, service_port, cluster_ip, family, diagnostics) else {
                continue;
            };
            let endpoints = collect_endpoints(&info, &port, family, slices, node, diagnostics);
            emit_frontends(&info, &port, &endpoints, node, family, frontends);
        }
    }
}

/// The object's namespace, "default" when unset (as `kubectl apply` would fill it).
fn namespace_of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned()
}

/// Parses an IP address the way Kubernetes' ParseIPSloppy does: IPv4 octets may carry leading
/// zeros (read as decimal), and an IPv4-mapped IPv6 address is the IPv4 address.
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let octets: Vec<&str> = text.split('.').collect();
            if octets.len() != 4 {
                return None;
            }
            let mut bytes = [0u8; 4];
            for (byte, octet) in bytes.iter_mut().zip(&octets) {
                if octet.is_empty() || octet.len() > 3 || !octet.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                *byte = octet.parse().ok()?;
            }
            IpAddr::V4(Ipv4Addr::from(bytes))
        }
    };
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that addresses parse as Kubernetes parses them (leading zeros, IPv4-mapped IPv6).
    #[test]
    fn sloppy_ip_parsing_matches_kubernetes() {
        assert_eq!(
            parse_ip_sloppy("10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_ip_sloppy("010.000.000.001"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_ip_sloppy("::ffff:10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip_sloppy("fd00::1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(parse_ip_sloppy("10.0.0"), None);
        assert_eq!(parse_ip_sloppy("10.0.0.256"), None);
        assert_eq!(parse_ip_sloppy("example.com"), None);
    }

    /// Test that backends sort by their string form, not numerically, with IPv6 bracketed.
    #[test]
    fn backends_sort_as_strings() {
        let mut backends: Vec<SocketAddr> = [
            "10.0.0.9:80",
            "10.0.0.10:80",
            "[fd00::1]:80",
            "10.0.0.10:80",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        sort_backends(&mut backends);
        let strings: Vec<String> = backends.iter().map(ToString::to_string).collect();
        assert_eq!(strings, ["10.0.0.10:80", "10.0.0.9:80", "[fd00::1]:80"]);
    }
}
