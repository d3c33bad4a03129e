//! The N ClusterIP Services the control-plane and e2e benchmarks program, and how they reach our
//! agent: as objects (built with [`lb_tests::objects`]) for the fake API server or a manifests
//! directory, and the map key of each Service's frontend.

use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::maps::{FrontendKey, PROTO_TCP};
use lb_tests::{
    manifests::ManifestDir,
    objects::{node_yaml, ready, tcp_port, to_yaml, Endpoint, Service},
};
use serde_json::Value;

use lb_tests::kube_rules::Svc;

/// The node the agent runs as.
pub const NODE: &str = "node-a";
/// Endpoints per Service.
pub const ENDPOINTS: usize = 10;

/// ClusterIP of Service i (10.96.0.0/12).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 10 + i as u32)
}

/// The benchmark's Services: svc-i, port 80 -> endpoints:8080, `eps` endpoints for Service 0.
pub fn services(n: usize, eps0: usize, ep: impl Fn(usize, usize) -> (Ipv4Addr, u16)) -> Vec<Svc> {
    (0..n)
        .map(|i| Svc {
            namespace: "default".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            ip: cluster_ip(i),
            port: 80,
            endpoints: (0..if i == 0 { eps0 } else { ENDPOINTS })
                .map(|k| ep(i, k))
                .collect(),
        })
        .collect()
}

/// `s` as a Service object: its one TCP port to the first endpoint's port.
fn object(s: &Svc) -> Service {
    Service::new(&s.name, s.ip)
        .namespace(&s.namespace)
        .with_port(tcp_port(&s.port_name, s.port, s.endpoints[0].1))
}

/// `s`'s endpoints, ready, on [`NODE`].
fn endpoints(s: &Svc) -> Vec<Endpoint> {
    s.endpoints.iter().map(|e| ready(e.0, NODE)).collect()
}

/// The fake API server's objects of `s`: the Service and its EndpointSlice.
pub fn api_objects(s: &Svc) -> [Value; 2] {
    object(s).objects(&endpoints(s))
}

/// `s` and its EndpointSlice as one manifests file.
fn yaml(s: &Svc) -> String {
    to_yaml(&api_objects(s))
}

/// The key of `s`'s frontend in `LB_FRONTENDS`.
pub fn fe_key(s: &Svc) -> FrontendKey {
    FrontendKey {
        addr_be: u32::from_ne_bytes(s.ip.octets()),
        port_be: s.port.to_be(),
        proto: PROTO_TCP,
        scope: 0,
    }
}

/// Writes a manifests directory with `svcs` (Service 0 alone in svc-0.yaml, the rest in one file).
pub fn write_manifests(dir: &ManifestDir, svcs: &[Svc]) -> Result<()> {
    dir.write("node.yaml", &node_yaml(NODE))?;
    dir.write("svc-0.yaml", &yaml(&svcs[0]))?;
    let rest: Vec<String> = svcs[1..].iter().map(yaml).collect();
    if !rest.is_empty() {
        dir.write("services.yaml", &rest.join("---\n"))?;
    }
    Ok(())
}
