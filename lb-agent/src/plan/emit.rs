//! The frontends emitted for one ServicePort: which addresses (ClusterIP, externalIPs,
//! load-balancer IPs, NodePorts) get which endpoint set, the short-circuit of pod traffic to
//! the external addresses of an externalTrafficPolicy Local Service, and REJECT versus DROP
//! when a set is empty (`pkg/proxy/nftables/proxier.go` and `iptables/proxier.go`
//! syncProxyRules).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::endpoints::Ep;
use super::node::NodeInfo;
use super::service::{Family, PortInfo, ServiceInfo};
use super::topology::categorize;
use super::{sort_backends, Frontend, FrontendKind, OnEmpty, Scope};

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

    let frontend = |kind: FrontendKind,
                    ip: IpAddr,
                    number: u16,
                    backends: &Vec<SocketAddr>,
                    scope: Scope| {
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
            scope,
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
        Scope::Any,
    ));
    // The external addresses (KUBE-EXT-* in iptables/proxier.go). A NodePort answers on every
    // NodePort address of this node, which the agent tracks (`--nodeport-addresses`): the
    // frontend's address is the unspecified address of its family.
    let mut external_addrs: Vec<(FrontendKind, IpAddr, u16)> = Vec::new();
    for ip in &port.external_ips {
        external_addrs.push((FrontendKind::ExternalIP, *ip, port.port));
    }
    for ip in &port.load_balancer_vips {
        external_addrs.push((FrontendKind::LoadBalancer, *ip, port.port));
    }
    if port.node_port != 0 {
        let any = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        external_addrs.push((FrontendKind::NodePort, any, port.node_port));
    }
    for (kind, ip, number) in external_addrs {
        frontends.push(frontend(kind, ip, number, external, Scope::Any));
        // "Pod traffic for external destinations": under externalTrafficPolicy Local,
        // traffic from this node's pods skips the policy and goes to the Cluster set, as if
        // it had gone out to the load balancer and come back (KUBE-EXT-*: `<IfLocal> -j
        // KUBE-SVC-*`).
        if port.external_policy_local {
            frontends.push(frontend(kind, ip, number, &cluster, Scope::Pods));
        }
    }
}
