//! Endpoints and their conditions: which EndpointSlices belong to a Service and how their
//! endpoints become one ServicePort's endpoint set (`pkg/proxy/endpointslicecache.go`,
//! `pkg/proxy/endpoint.go`; the informers' label selector of `cmd/kube-proxy/app/server.go`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};

use super::node::NodeInfo;
use super::service::{Family, PortInfo, ServiceInfo};
use super::{
    namespace_of, parse_ip_sloppy, Protocol, LABEL_HEADLESS, LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME, PREFER_SAME_TRAFFIC_DISTRIBUTION,
};
use crate::model::Diagnostic;

/// The EndpointSlices kube-proxy would see, by the Service they belong to.
pub(super) struct SliceIndex<'a> {
    /// (namespace, service name) -> slices by slice name (the last definition of a name wins).
    by_service: BTreeMap<(String, String), BTreeMap<String, &'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    pub(super) fn build(
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
pub(super) struct Ep {
    pub(super) addr: SocketAddr,
    /// nodeName equals this node's name.
    pub(super) is_local: bool,
    /// conditions.ready; unset means true.
    pub(super) ready: bool,
    /// conditions.serving; unset means true.
    pub(super) serving: bool,
    /// conditions.terminating; unset means false.
    pub(super) terminating: bool,
    pub(super) zone_hints: BTreeSet<String>,
    pub(super) node_hints: BTreeSet<String>,
}

/// The endpoints of one ServicePort in one family: every slice of the service with that
/// address type, ports matched by name and protocol, duplicates (same ip:port) merged
/// (endpointslicecache.go endpointInfoByServicePort / addEndpoints).
pub(super) fn collect_endpoints(
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

/// One slice endpoint as an [`Ep`] with backend port `port`; None if it has no address, and
/// (with a diagnostic) if its address is invalid or of the other family.
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
