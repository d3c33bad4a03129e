//! The plan: what kube-proxy would program for a snapshot, as frontends with backend lists.
//!
//! [`plan`] is pure: a [`Snapshot`] and the node's name in, frontends and diagnostics out. The
//! rules are kube-proxy's (kubernetes/kubernetes pkg/proxy), ported rule by rule; docs/PLAN.md
//! lists each rule with the upstream file it comes from.
//!
//! Outline, as kube-proxy runs it once per IP family:
//! 1. Services the proxy ignores are dropped (`service_skip_reason`).
//! 2. Each ServicePort of each family becomes a `PortInfo` (`serviceport.go`).
//! 3. Its endpoints are gathered from the service's EndpointSlices (`endpointslicecache.go`).
//! 4. They are split into Cluster and Local sets (`topology.go` CategorizeEndpoints).
//! 5. Each frontend gets its set, or reject/drop when empty (`iptables|nftables/proxier.go`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use serde::{Deserialize, Serialize};

use crate::model::{Diagnostic, Snapshot};

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
    /// spec.loadBalancerSourceRanges of this frontend's family, on LoadBalancer and NodePort
    /// frontends (the dataplane enforces them on LoadBalancer frontends, and on NodePorts
    /// when asked). Not part of the plan's JSON interface.
    #[serde(skip)]
    pub source_ranges: Vec<SourceRange>,
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
    /// frontends by service, port, type, address), so equal plans compare and print equal.
    pub fn normalize(&mut self) {
        for frontend in &mut self.frontends {
            sort_backends(&mut frontend.backends);
        }
        self.frontends.sort_by(|a, b| {
            (&a.service, &a.port_name, a.protocol, a.kind, a.ip, a.port).cmp(&(
                &b.service,
                &b.port_name,
                b.protocol,
                b.kind,
                b.ip,
                b.port,
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

/// The two address families kube-proxy runs a proxier for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The Service spec.ipFamilies spelling.
    fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What the plan needs from this node's Node object.
struct NodeInfo {
    name: String,
    /// topology.kubernetes.io/zone, "" when unset.
    zone: String,
    /// status.addresses of type InternalIP, in order: the NodePort frontends' addresses.
    internal_ips: Vec<IpAddr>,
}

impl NodeInfo {
    fn find(nodes: &[Arc<Node>], node_name: &str, diagnostics: &mut Vec<Diagnostic>) -> NodeInfo {
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

/// The EndpointSlices kube-proxy would see, by the Service they belong to.
struct SliceIndex<'a> {
    /// (namespace, service name) -> slices by slice name (the last definition of a name wins).
    by_service: BTreeMap<(String, String), BTreeMap<String, &'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    fn build(
        slices: &'a [Arc<EndpointSlice>],
        diagnostics: &mut Vec<Diagnostic>,
    ) -> SliceIndex<'a> {
        let mut by_service: BTreeMap<(String, String), BTreeMap<String, &'a EndpointSlice>> =
            BTreeMap::new();
        for slice in slices {
            let labels = slice.metadata.labels.as_ref();
            let has_label = |label: &str| labels.is_some_and(|l| l.contains_key(label));
            // The informer's label selector: not ours, or a headless service's.
            if has_label(LABEL_SERVICE_PROXY_NAME) || has_label(LABEL_HEADLESS) {
                continue;
            }
            let namespace = namespace_of(&slice.metadata);
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            let Some(service_name) = labels
                .and_then(|l| l.get(LABEL_SERVICE_NAME))
                .filter(|s| !s.is_empty())
            else {
                // endpointSliceCacheKeys: no service-name label, not a Service's slice.
                continue;
            };
            if slice_name.is_empty() {
                diagnostics.push(Diagnostic::object(
                    "EndpointSlice",
                    format!("{namespace}/<no name>"),
                    "EndpointSlice has no metadata.name; skipped",
                ));
                continue;
            }
            by_service
                .entry((namespace, service_name.clone()))
                .or_default()
                .insert(slice_name, slice);
        }
        SliceIndex { by_service }
    }

    fn for_service(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + '_ {
        self.by_service
            .get(&(namespace.to_owned(), name.to_owned()))
            .into_iter()
            .flat_map(|m| m.values().copied())
    }
}

/// One endpoint of one ServicePort, with what CategorizeEndpoints looks at (endpoint.go).
#[derive(Clone, Debug)]
struct Ep {
    addr: SocketAddr,
    /// nodeName equals this node's name.
    is_local: bool,
    /// conditions.ready; unset means true.
    ready: bool,
    /// conditions.serving; unset means true.
    serving: bool,
    /// conditions.terminating; unset means false.
    terminating: bool,
    zone_hints: BTreeSet<String>,
    node_hints: BTreeSet<String>,
}

/// One ServicePort in one family, as serviceport.go's BaseServicePortInfo.
struct PortInfo {
    port_name: String,
    protocol: Protocol,
    port: u16,
    /// 0 when the port has no nodePort.
    node_port: u16,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    load_balancer_vips: Vec<IpAddr>,
    source_ranges: Vec<SourceRange>,
    affinity_timeout: Option<u32>,
    external_policy_local: bool,
    internal_policy_local: bool,
}

impl PortInfo {
    /// ExternallyAccessible: reachable other than through the ClusterIP.
    fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// UsesClusterEndpoints: internal traffic is Cluster, or external traffic exists at all
    /// (even with externalTrafficPolicy Local, for the short-circuit of pod traffic).
    fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// UsesLocalEndpoints.
    fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
}

/// The service-level facts every port shares.
struct ServiceInfo<'a> {
    key: &'a str,
    namespace: String,
    name: String,
    /// At most one clusterIP per family, as GetClusterIPByFamily picks them.
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    load_balancer_vips: Vec<IpAddr>,
    source_ranges: Vec<SourceRange>,
    affinity_timeout: Option<u32>,
    external_policy_local: bool,
    internal_policy_local: bool,
}

/// Why kube-proxy does not proxy this Service at all, or None if it does.
fn service_skip_reason(service: &Service) -> Option<&'static str> {
    let labels = service.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME)) {
        return Some("service-proxy-name label: another proxy owns it");
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Some("headless label");
    }
    let spec = service.spec.as_ref()?;
    // ShouldSkipService: ClusterIP "None" or "" (headless), then ExternalName.
    match effective_cluster_ip(service) {
        None => return Some("headless (no clusterIP)"),
        Some(ip) if ip == "None" => return Some("headless (clusterIP None)"),
        _ => {}
    }
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("type ExternalName");
    }
    None
}

/// spec.clusterIP, or (as API defaulting would fill it) the first of spec.clusterIPs.
fn effective_cluster_ip(service: &Service) -> Option<String> {
    let spec = service.spec.as_ref()?;
    if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()) {
        return Some(ip.to_owned());
    }
    spec.cluster_ips
        .as_ref()?
        .first()
        .filter(|ip| !ip.is_empty())
        .cloned()
}

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

/// Reads and checks the service-level fields. None (with a diagnostic) if the Service is
/// invalid as a whole.
fn service_info<'a>(
    key: &'a str,
    service: &Service,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ServiceInfo<'a>> {
    let spec = service.spec.as_ref()?;
    let mut invalid = |reason: String| {
        diagnostics.push(Diagnostic::object("Service", key, reason));
    };

    // GetClusterIPByFamily: with spec.ipFamilies, clusterIPs[i] belongs to ipFamilies[i];
    // without it (version skew), the single clusterIP is used for its own family.
    let mut cluster_ip_strings: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if cluster_ip_strings.is_empty() {
        cluster_ip_strings.extend(effective_cluster_ip(service));
    }
    let mut cluster_ips = Vec::new();
    for (index, text) in cluster_ip_strings.iter().enumerate() {
        let Some(ip) = parse_ip_sloppy(text) else {
            invalid(format!("invalid clusterIP {text:?}; Service skipped"));
            return None;
        };
        let family = Family::of(&ip);
        if let Some(families) = spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
            match families.get(index) {
                Some(declared) if declared == family.k8s_name() => {}
                Some(declared) => {
                    invalid(format!(
                        "clusterIP {text} is not of ipFamilies[{index}] {declared}; Service skipped"
                    ));
                    return None;
                }
                // More clusterIPs than families: GetClusterIPByFamily never reaches it.
                None => continue,
            }
        }
        if cluster_ips.iter().any(|c| Family::of(c) == family) {
            // A second clusterIP of the same family is never looked up.
            continue;
        }
        cluster_ips.push(ip);
    }

    // MapIPsByIPFamily: invalid external IPs are skipped, the rest kept by family.
    let mut external_ips = Vec::new();
    for text in spec.external_ips.as_deref().unwrap_or_default() {
        match parse_ip_sloppy(text) {
            Some(ip) => external_ips.push(ip),
            None => invalid(format!("invalid externalIP {text:?}; that address skipped")),
        }
    }

    // Load-balancer ingress: only addresses in VIP mode (ipMode unset or "VIP"); ipMode Proxy
    // means the load balancer delivers to the node or pod itself (IsVIPMode).
    let mut load_balancer_vips = Vec::new();
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for entry in ingress {
        let Some(text) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue; // hostname-only ingress
        };
        if entry.ip_mode.as_deref().is_some_and(|mode| mode != "VIP") {
            continue;
        }
        match parse_ip_sloppy(text) {
            Some(ip) => load_balancer_vips.push(ip),
            None => invalid(format!(
                "invalid load-balancer ingress IP {text:?}; that address skipped"
            )),
        }
    }

    // Session affinity: ClientIP with its timeout (the API defaults it to 10800 seconds).
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        match timeout {
            None => Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS),
            Some(t) if t > 0 && t <= MAX_AFFINITY_TIMEOUT_SECONDS => u32::try_from(t).ok(),
            Some(t) => {
                invalid(format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1..={MAX_AFFINITY_TIMEOUT_SECONDS}; Service skipped"
                ));
                return None;
            }
        }
    } else {
        None
    };

    // apiservice.ExternalPolicyLocal: only for externally accessible service types.
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let externally_accessible_type = service_type == "LoadBalancer"
        || service_type == "NodePort"
        || (service_type == "ClusterIP"
            && !spec.external_ips.as_deref().unwrap_or_default().is_empty());
    let external_policy_local =
        externally_accessible_type && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    // spec.loadBalancerSourceRanges (serviceport.go: MapCIDRsByIPFamily skips what does not
    // parse; the annotation is for cloud providers and not read by kube-proxy).
    let mut source_ranges = Vec::new();
    for text in spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default()
    {
        match SourceRange::parse(text) {
            Some(r) => source_ranges.push(r),
            None => invalid(format!(
                "invalid loadBalancerSourceRanges entry {text:?}; that range skipped"
            )),
        }
    }

    Some(ServiceInfo {
        key,
        namespace: namespace_of(&service.metadata),
        name: service.metadata.name.clone().unwrap_or_default(),
        cluster_ips,
        external_ips,
        load_balancer_vips,
        source_ranges,
        affinity_timeout,
        external_policy_local,
        internal_policy_local,
    })
}

/// newBaseServiceInfo for one port and family. None (with a diagnostic) for an invalid port.
fn port_info(
    info: &ServiceInfo<'_>,
    service_port: &k8s_openapi::api::core::v1::ServicePort,
    cluster_ip: IpAddr,
    family: Family,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<PortInfo> {
    let port_name = service_port.name.clone().unwrap_or_default();
    let label = if port_name.is_empty() {
        format!("port {}", service_port.port)
    } else {
        format!("port {port_name:?}")
    };
    let protocol_name = service_port.protocol.as_deref().unwrap_or("TCP");
    let Some(protocol) = Protocol::from_k8s(protocol_name) else {
        diagnostics.push(Diagnostic::object(
            "Service",
            info.key,
            format!("{label}: unknown protocol {protocol_name:?}; port skipped"),
        ));
        return None;
    };
    let Some(port) = u16::try_from(service_port.port).ok().filter(|p| *p != 0) else {
        diagnostics.push(Diagnostic::object(
            "Service",
            info.key,
            format!("{label}: invalid port {}; port skipped", service_port.port),
        ));
        return None;
    };
    let node_port = match service_port.node_port.unwrap_or(0) {
        0 => 0,
        n => match u16::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                diagnostics.push(Diagnostic::object(
                    "Service",
                    info.key,
                    format!("{label}: invalid nodePort {n}; port skipped"),
                ));
                return None;
            }
        },
    };
    Some(PortInfo {
        port_name,
        protocol,
        port,
        node_port,
        cluster_ip,
        external_ips: info
            .external_ips
            .iter()
            .copied()
            .filter(|ip| Family::of(ip) == family)
            .collect(),
        load_balancer_vips: info
            .load_balancer_vips
            .iter()
            .copied()
            .filter(|ip| Family::of(ip) == family)
            .collect(),
        source_ranges: info
            .source_ranges
            .iter()
            .copied()
            .filter(|r| Family::of(&r.addr) == family)
            .collect(),
        affinity_timeout: info.affinity_timeout,
        external_policy_local: info.external_policy_local,
        internal_policy_local: info.internal_policy_local,
    })
}

/// The endpoints of one ServicePort in one family: every slice of the service with that
/// address type, ports matched by name and protocol, duplicates (same ip:port) merged
/// (endpointslicecache.go endpointInfoByServicePort / addEndpoints).
fn collect_endpoints(
    info: &ServiceInfo<'_>,
    port: &PortInfo,
    family: Family,
    slices: &SliceIndex<'_>,
    node: &NodeInfo,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Ep> {
    let mut set: BTreeMap<SocketAddr, Ep> = BTreeMap::new();
    for slice in slices.for_service(&info.namespace, &info.name) {
        // Slices go to the proxier of their addressType; FQDN slices to none.
        if slice.address_type != family.k8s_name() {
            continue;
        }
        for slice_port in slice.ports.as_deref().unwrap_or_default() {
            // The API server defaults a missing name to "" and a missing protocol to TCP
            // (discovery/v1 SetDefaults_EndpointPort), so kube-proxy's "nil name" case cannot
            // come from the API; a missing or zero port number is ignored, as upstream does.
            let name = slice_port.name.as_deref().unwrap_or("");
            let protocol = slice_port.protocol.as_deref().unwrap_or("TCP");
            if name != port.port_name || Protocol::from_k8s(protocol) != Some(port.protocol) {
                continue;
            }
            let Some(number) = slice_port
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let Some(ep) = endpoint_info(endpoint, number, family, node, slice, diagnostics)
                else {
                    continue;
                };
                // A duplicate ip:port is replaced unless the newcomer is terminating: a running
                // pod wins over a terminating one that had the same IP.
                match set.get(&ep.addr) {
                    Some(_) if ep.terminating => {}
                    _ => {
                        set.insert(ep.addr, ep);
                    }
                }
            }
        }
    }
    set.into_values().collect()
}

fn endpoint_info(
    endpoint: &SliceEndpoint,
    port: u16,
    family: Family,
    node: &NodeInfo,
    slice: &EndpointSlice,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Ep> {
    // Only the first address is used; an endpoint without addresses is ignored.
    let text = endpoint.addresses.first()?;
    let slice_key = || {
        format!(
            "{}/{}",
            namespace_of(&slice.metadata),
            slice.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let Some(ip) = parse_ip_sloppy(text) else {
        diagnostics.push(Diagnostic::object(
            "EndpointSlice",
            slice_key(),
            format!("invalid endpoint address {text:?}; endpoint skipped"),
        ));
        return None;
    };
    if Family::of(&ip) != family {
        diagnostics.push(Diagnostic::object(
            "EndpointSlice",
            slice_key(),
            format!(
                "endpoint address {text} is not of addressType {}; endpoint skipped",
                family.k8s_name()
            ),
        ));
        return None;
    }
    let conditions = endpoint.conditions.as_ref();
    let hints = endpoint.hints.as_ref();
    let zone_hints = hints
        .and_then(|h| h.for_zones.as_ref())
        .map(|z| z.iter().map(|z| z.name.clone()).collect())
        .unwrap_or_default();
    let node_hints = if PREFER_SAME_TRAFFIC_DISTRIBUTION {
        hints
            .and_then(|h| h.for_nodes.as_ref())
            .map(|n| n.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default()
    } else {
        BTreeSet::new()
    };
    Some(Ep {
        addr: SocketAddr::new(ip, port),
        is_local: !node.name.is_empty()
            && endpoint.node_name.as_deref() == Some(node.name.as_str()),
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        zone_hints,
        node_hints,
    })
}

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

fn available_for_topology(ep: &Ep, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.contains(node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.contains(zone),
    }
}

/// CategorizeEndpoints' result.
struct Categorized {
    /// Endpoints for Cluster traffic policy (topology applied); None if the port never uses it.
    cluster: Option<Vec<Ep>>,
    /// Endpoints for Local traffic policy; None if the port never uses it.
    local: Option<Vec<Ep>>,
    /// Whether the service has usable endpoints anywhere in the cluster.
    has_any: bool,
}

/// topology.go CategorizeEndpoints: ready endpoints (narrowed by topology for Cluster policy),
/// falling back to serving-and-terminating ones, independently for Cluster and Local.
fn categorize(endpoints: &[Ep], port: &PortInfo, node: &NodeInfo) -> Categorized {
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

/// Builds the frontends of one port in one family (proxier.go syncProxyRules: which chains the
/// service's addresses jump to, and REJECT versus DROP when there is nothing to jump to).
fn emit_frontends(
    info: &ServiceInfo<'_>,
    port: &PortInfo,
    endpoints: &[Ep],
    node: &NodeInfo,
    family: Family,
    frontends: &mut Vec<Frontend>,
) {
    let categorized = categorize(endpoints, port, node);
    let cluster: Vec<SocketAddr> = categorized
        .cluster
        .unwrap_or_default()
        .iter()
        .map(|ep| ep.addr)
        .collect();
    let local: Vec<SocketAddr> = categorized
        .local
        .unwrap_or_default()
        .iter()
        .map(|ep| ep.addr)
        .collect();
    let has_any = categorized.has_any;

    // Internal (ClusterIP) traffic: the Local set under internalTrafficPolicy Local.
    let internal = if port.internal_policy_local {
        &local
    } else {
        &cluster
    };
    // External (NodePort, externalIPs, load-balancer IPs) traffic: the Local set under
    // externalTrafficPolicy Local.
    let external = if port.external_policy_local {
        &local
    } else {
        &cluster
    };

    let frontend = |kind: FrontendKind, ip: IpAddr, number: u16, backends: &Vec<SocketAddr>| {
        let mut backends = if has_any {
            backends.clone()
        } else {
            Vec::new()
        };
        sort_backends(&mut backends);
        // No endpoints anywhere: REJECT. Endpoints elsewhere but none for this traffic
        // policy here: DROP.
        let on_empty = match (backends.is_empty(), has_any) {
            (false, _) => None,
            (true, false) => Some(OnEmpty::Reject),
            (true, true) => Some(OnEmpty::Drop),
        };
        Frontend {
            service: info.key.to_owned(),
            port_name: port.port_name.clone(),
            kind,
            ip,
            port: number,
            protocol: port.protocol,
            backends,
            on_empty,
            affinity_timeout_seconds: port.affinity_timeout,
            source_ranges: if matches!(kind, FrontendKind::LoadBalancer | FrontendKind::NodePort) {
                port.source_ranges.clone()
            } else {
                Vec::new()
            },
        }
    };

    frontends.push(frontend(
        FrontendKind::ClusterIP,
        port.cluster_ip,
        port.port,
        internal,
    ));
    for ip in &port.external_ips {
        frontends.push(frontend(FrontendKind::ExternalIP, *ip, port.port, external));
    }
    for ip in &port.load_balancer_vips {
        frontends.push(frontend(
            FrontendKind::LoadBalancer,
            *ip,
            port.port,
            external,
        ));
    }
    if port.node_port != 0 {
        for ip in node
            .internal_ips
            .iter()
            .filter(|ip| Family::of(ip) == family)
        {
            frontends.push(frontend(
                FrontendKind::NodePort,
                *ip,
                port.node_port,
                external,
            ));
        }
    }
}

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

/// A health-check node port kube-proxy would serve for a Service (`spec.healthCheckNodePort`
/// of a LoadBalancer Service with `externalTrafficPolicy: Local`, apiservice.NeedsHealthCheck),
/// with the count it reports: this node's ready endpoints summed over the Service's ports
/// (EndpointsMap.LocalReadyEndpoints). Kept apart from [`Plan`], whose JSON shape is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// "namespace/name".
    pub service: String,
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub local_endpoints: usize,
}

/// The health-check node ports for node `node_name`, sorted by port. Pure, like [`plan`];
/// objects the plan reports as invalid are skipped silently here.
pub fn health_checks(snapshot: &Snapshot, node_name: &str) -> Vec<HealthCheck> {
    let mut ignored = Vec::new();
    let node = NodeInfo::find(&snapshot.nodes, node_name, &mut ignored);
    let slices = SliceIndex::build(&snapshot.endpoint_slices, &mut ignored);
    let mut services: BTreeMap<String, &Service> = BTreeMap::new();
    for service in &snapshot.services {
        let Some(name) = service.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        services.insert(
            format!("{}/{name}", namespace_of(&service.metadata)),
            service,
        );
    }
    let mut out: BTreeMap<u16, HealthCheck> = BTreeMap::new();
    for (key, service) in &services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        if service_skip_reason(service).is_some()
            || spec.type_.as_deref() != Some("LoadBalancer")
            || spec.external_traffic_policy.as_deref() != Some("Local")
        {
            continue;
        }
        let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let Some(info) = service_info(key, service, &mut ignored) else {
            continue;
        };
        let mut local_endpoints = 0;
        for family in [Family::V4, Family::V6] {
            let Some(cluster_ip) = info
                .cluster_ips
                .iter()
                .copied()
                .find(|ip| Family::of(ip) == family)
            else {
                continue;
            };
            for service_port in spec.ports.as_deref().unwrap_or_default() {
                let Some(port) = port_info(&info, service_port, cluster_ip, family, &mut ignored)
                else {
                    continue;
                };
                local_endpoints +=
                    collect_endpoints(&info, &port, family, &slices, &node, &mut ignored)
                        .iter()
                        .filter(|ep| ep.is_local && ep.ready)
                        .count();
            }
        }
        out.insert(
            port,
            HealthCheck {
                service: key.clone(),
                namespace: info.namespace.clone(),
                name: info.name.clone(),
                port,
                local_endpoints,
            },
        );
    }
    out.into_values().collect()
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
            internal_ips: Vec::new(),
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

#[cfg(test)]
mod source_range_tests {
    use super::*;

    /// Test that spec.loadBalancerSourceRanges reach the LoadBalancer and NodePort frontends of
    /// their family (host bits cleared, spaces trimmed), not the ClusterIP, and that a bad
    /// entry is reported and skipped (serviceport.go, MapCIDRsByIPFamily).
    #[test]
    fn load_balancer_source_ranges_reach_external_frontends_of_their_family() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.9
  clusterIPs: [10.96.0.9]
  loadBalancerSourceRanges: [" 192.168.7.9/24", "fd00::/8", "nonsense"]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.7}]
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status:
  addresses: [{type: InternalIP, address: 172.18.0.10}]
"#;
        let mut snapshot = Snapshot::default();
        let mut diagnostics = Vec::new();
        crate::source::load_text(
            yaml,
            std::path::Path::new("t.yaml"),
            &mut snapshot,
            &mut diagnostics,
        );
        let out = plan(&snapshot, "n1");
        assert!(
            out.diagnostics
                .iter()
                .any(|d| d.reason.contains("nonsense")),
            "{:?}",
            out.diagnostics
        );
        let want = vec![SourceRange::parse("192.168.7.0/24").unwrap()];
        for f in &out.plan.frontends {
            match f.kind {
                FrontendKind::LoadBalancer | FrontendKind::NodePort => {
                    assert_eq!(f.source_ranges, want, "{f:?}")
                }
                _ => assert!(f.source_ranges.is_empty(), "{f:?}"),
            }
        }
        assert_eq!(out.plan.frontends.len(), 3);
    }
}
