//! The frontends emitted for one ServicePort: which addresses (ClusterIP, externalIPs,
//! load-balancer IPs, NodePorts) get which endpoint set, and REJECT versus DROP when it is empty
//! (`pkg/proxy/nftables/proxier.go` and `iptables/proxier.go` syncProxyRules).

use std::net::{IpAddr, SocketAddr};

use super::endpoints::Ep;
use super::node::NodeInfo;
use super::service::{Family, PortInfo, ServiceInfo};
use super::topology::categorize;
use super::{sort_backends, Frontend, FrontendKind, OnEmpty};

/// Builds the frontends of one port in one family (proxier.go syncProxyRules: which chains the
/// service's addresses jump to, and REJECT versus DROP when there is nothing to jump to).
pub(super) fn emit_frontends(
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
    let on_this_node: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|ep| ep.is_local)
        .map(|ep| ep.addr)
        .collect();

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
        let mut local_backends: Vec<SocketAddr> = backends
            .iter()
            .filter(|b| on_this_node.contains(b))
            .copied()
            .collect();
        sort_backends(&mut local_backends);
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
            local_backends,
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
