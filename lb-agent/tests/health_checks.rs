//! `plan::health_checks`: which Services get a health-check node port and what it reports,
//! as kube-proxy's service health server (pkg/proxy/healthcheck, apiservice.NeedsHealthCheck,
//! EndpointsMap.LocalReadyEndpoints). Pure: no kernel needed.

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use lb_agent::{
    model::Snapshot,
    plan::{health_checks, HealthCheck},
};
use serde_json::{json, Value};

const NODE: &str = "node-a";

fn service(name: &str, type_: &str, policy: &str, hc_port: Option<u16>, labels: Value) -> Value {
    let mut spec = json!({
        "type": type_, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ipFamilies": ["IPv4"], "externalTrafficPolicy": policy,
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080},
                  {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053}]
    });
    if let Some(p) = hc_port {
        spec["healthCheckNodePort"] = json!(p);
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "ns", "labels": labels}, "spec": spec})
}

/// A slice of `service` with both ports and endpoints (address, node, ready).
fn slice(service: &str, endpoints: &[(&str, &str, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node, ready)| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": ready, "serving": true, "terminating": !ready}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-1"), "namespace": "ns",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "protocol": "TCP", "port": 8080},
                     {"name": "dns", "protocol": "UDP", "port": 5353}],
           "endpoints": eps})
}

fn snapshot(services: Vec<Value>, slices: Vec<Value>) -> Snapshot {
    Snapshot {
        services: services
            .into_iter()
            .map(|v| serde_json::from_value::<Service>(v).unwrap().into())
            .collect(),
        endpoint_slices: slices
            .into_iter()
            .map(|v| serde_json::from_value::<EndpointSlice>(v).unwrap().into())
            .collect(),
        nodes: vec![
            serde_json::from_value::<Node>(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE}}))
            .unwrap()
            .into(),
        ],
    }
}

/// Test that a LoadBalancer Service with externalTrafficPolicy Local reports this node's ready
/// endpoints summed over its ports, leaving out other nodes' and terminating ones.
#[test]
fn local_load_balancer_counts_this_nodes_ready_endpoints_per_port() {
    let s = snapshot(
        vec![service(
            "web",
            "LoadBalancer",
            "Local",
            Some(32000),
            json!({}),
        )],
        vec![slice(
            "web",
            &[
                ("10.244.0.11", NODE, true),
                ("10.244.0.12", NODE, false),
                ("10.244.1.11", "node-b", true),
            ],
        )],
    );
    assert_eq!(
        health_checks(&s, NODE),
        vec![HealthCheck {
            service: "ns/web".into(),
            namespace: "ns".into(),
            name: "web".into(),
            port: 32000,
            // One ready local endpoint, counted for each of the two ports.
            local_endpoints: 2,
        }]
    );
}

/// Test that a Local LoadBalancer Service without endpoints on this node reports zero.
#[test]
fn no_local_endpoint_reports_zero() {
    let s = snapshot(
        vec![service(
            "web",
            "LoadBalancer",
            "Local",
            Some(32000),
            json!({}),
        )],
        vec![slice("web", &[("10.244.1.11", "node-b", true)])],
    );
    assert_eq!(health_checks(&s, NODE)[0].local_endpoints, 0);
}

/// Test that only LoadBalancer Services with externalTrafficPolicy Local and a
/// healthCheckNodePort get one, and that Services kube-proxy ignores get none.
#[test]
fn only_local_load_balancers_with_a_port_get_a_health_check() {
    let s = snapshot(
        vec![
            service(
                "cluster-policy",
                "LoadBalancer",
                "Cluster",
                Some(32001),
                json!({}),
            ),
            service("node-port", "NodePort", "Local", Some(32002), json!({})),
            service("no-port", "LoadBalancer", "Local", None, json!({})),
            service(
                "other-proxy",
                "LoadBalancer",
                "Local",
                Some(32003),
                json!({"service.kubernetes.io/service-proxy-name": "x"}),
            ),
        ],
        vec![],
    );
    assert_eq!(health_checks(&s, NODE), vec![]);
}
