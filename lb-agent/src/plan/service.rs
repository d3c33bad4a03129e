//! Which Services and ports kube-proxy proxies, and what each ServicePort means in each family:
//! `pkg/proxy/util/utils.go` ShouldSkipService and GetClusterIPByFamily, `pkg/proxy/serviceport.go`
//! newBaseServiceInfo (external IPs, load-balancer ingress, source ranges, session affinity,
//! traffic policies).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::{
    namespace_of, parse_ip_sloppy, Protocol, SourceRange, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, MAX_AFFINITY_TIMEOUT_SECONDS,
};
use crate::model::Diagnostic;

/// The two address families kube-proxy runs a proxier for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The Service spec.ipFamilies spelling.
    pub(super) fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// One ServicePort in one family, as serviceport.go's BaseServicePortInfo.
pub(super) struct PortInfo {
    pub(super) port_name: String,
    pub(super) protocol: Protocol,
    pub(super) port: u16,
    /// 0 when the port has no nodePort.
    pub(super) node_port: u16,
    pub(super) cluster_ip: IpAddr,
    pub(super) external_ips: Vec<IpAddr>,
    pub(super) load_balancer_vips: Vec<IpAddr>,
    pub(super) source_ranges: Vec<SourceRange>,
    pub(super) affinity_timeout: Option<u32>,
    pub(super) external_policy_local: bool,
    pub(super) internal_policy_local: bool,
}

impl PortInfo {
    /// ExternallyAccessible: reachable other than through the ClusterIP.
    fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// UsesClusterEndpoints: internal traffic is Cluster, or external traffic exists at all
    /// (even with externalTrafficPolicy Local, for the short-circuit of pod traffic).
    pub(super) fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// UsesLocalEndpoints.
    pub(super) fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
}

/// The service-level facts every port shares.
pub(super) struct ServiceInfo<'a> {
    pub(super) key: &'a str,
    pub(super) namespace: String,
    pub(super) name: String,
    /// At most one clusterIP per family, as GetClusterIPByFamily picks them.
    pub(super) cluster_ips: Vec<IpAddr>,
    pub(super) external_ips: Vec<IpAddr>,
    pub(super) load_balancer_vips: Vec<IpAddr>,
    pub(super) source_ranges: Vec<SourceRange>,
    pub(super) affinity_timeout: Option<u32>,
    pub(super) external_policy_local: bool,
    pub(super) internal_policy_local: bool,
}

/// Why kube-proxy does not proxy this Service at all, or None if it does.
pub(super) fn service_skip_reason(service: &Service) -> Option<&'static str> {
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

/// Reads and checks the service-level fields. None (with a diagnostic) if the Service is
/// invalid as a whole.
pub(super) fn service_info<'a>(
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
pub(super) fn port_info(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;
    use crate::plan::{plan, FrontendKind};

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
