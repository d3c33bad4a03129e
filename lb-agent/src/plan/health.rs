//! Health-check node ports: the per-Service health server kube-proxy runs for LoadBalancer
//! Services with externalTrafficPolicy Local, and the local endpoint count it reports
//! (`pkg/proxy/healthcheck/service_health.go`; `pkg/api/v1/service/util.go` NeedsHealthCheck).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

use super::endpoints::{collect_endpoints, SliceIndex};
use super::namespace_of;
use super::node::NodeInfo;
use super::service::{port_info, service_info, service_skip_reason, Family};
use crate::model::Snapshot;

/// A health-check node port kube-proxy would serve for a Service (`spec.healthCheckNodePort`
/// of a LoadBalancer Service with `externalTrafficPolicy: Local`, apiservice.NeedsHealthCheck),
/// with the count it reports: this node's ready endpoints summed over the Service's ports
/// (EndpointsMap.LocalReadyEndpoints). Kept apart from [`Plan`](super::Plan), whose JSON shape
/// is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// "namespace/name".
    pub service: String,
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub local_endpoints: usize,
}

/// The health-check node ports for node `node_name`, sorted by port. Pure, like
/// [`plan`](super::plan()); objects the plan reports as invalid are skipped silently here.
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
