//! Kubernetes objects for tests, built once as the API server returns them (defaults, labels,
//! managedFields and all): a [`Service`], its EndpointSlice ([`endpoint_slice`]) and a [`node`],
//! as `serde_json::Value`s. The fake API server serves them as they are
//! ([`crate::fakeapi::FakeApi::apply`]); a manifests directory holds them as YAML ([`to_yaml`]),
//! as `kubectl get -o yaml` prints them.
//!
//! ```
//! use lb_tests::objects::{ready, tcp_port, to_yaml, Protocol, Service};
//! let svc = Service::new("echo", [10, 96, 0, 10])
//!     .port("http", Protocol::Tcp, 80, 8080)
//!     .with_port(tcp_port("web", 8000, 8080).node_port(30080))
//!     .spec("type", "NodePort");
//! let [service, slice] = svc.objects(&[ready([10, 244, 0, 11], "node-a")]);
//! assert_eq!(service["spec"]["ports"][1]["nodePort"], 30080);
//! assert_eq!(slice["endpoints"][0]["addresses"][0], "10.244.0.11");
//! assert!(to_yaml(&[service, slice]).contains("kind: EndpointSlice"));
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{json, Map, Value};

/// A port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The spelling in objects and in `lb-agent inspect`: `TCP`, `UDP`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// One Service port: `port` on the ClusterIP (and `node_port` on the nodes, if any) goes to
/// `target_port` on each endpoint; the EndpointSlice port of the same name carries the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name.
    pub name: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on every endpoint.
    pub target_port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
}

impl Port {
    /// Port `name`: `port` to `target_port`, no NodePort.
    pub fn new(name: &str, protocol: Protocol, port: u16, target_port: u16) -> Port {
        Port {
            name: name.to_string(),
            protocol,
            port,
            target_port,
            node_port: None,
        }
    }

    /// The same port with NodePort `node_port`.
    pub fn node_port(mut self, node_port: u16) -> Port {
        self.node_port = Some(node_port);
        self
    }
}

/// A TCP port.
pub fn tcp_port(name: &str, port: u16, target_port: u16) -> Port {
    Port::new(name, Protocol::Tcp, port, target_port)
}

/// A UDP port.
pub fn udp_port(name: &str, port: u16, target_port: u16) -> Port {
    Port::new(name, Protocol::Udp, port, target_port)
}

/// The suffix of a [`Service`]'s EndpointSlice name, as the EndpointSlice controller's
/// `generateName` adds one: `<service>-abc12`.
pub const SLICE_SUFFIX: &str = "abc12";

/// A Service (type ClusterIP unless [`Service::spec`] says otherwise; one IPv4 ClusterIP, any
/// number of ports) in namespace `default` unless told otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// `metadata.name`; also the prefix of its EndpointSlice's name.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.clusterIP`.
    pub cluster_ip: Ipv4Addr,
    /// `spec.ports`.
    pub ports: Vec<Port>,
    /// Further `spec` fields, set over the defaults.
    spec: Map<String, Value>,
    /// `status.loadBalancer.ingress` IPs.
    ingress: Vec<Ipv4Addr>,
}

impl Service {
    /// Service `name` in namespace `default` with ClusterIP `cluster_ip` and no ports yet.
    pub fn new(name: &str, cluster_ip: impl Into<Ipv4Addr>) -> Service {
        Service {
            name: name.to_string(),
            namespace: "default".to_string(),
            cluster_ip: cluster_ip.into(),
            ports: Vec::new(),
            spec: Map::new(),
            ingress: Vec::new(),
        }
    }

    /// The same Service in namespace `namespace`.
    pub fn namespace(mut self, namespace: &str) -> Service {
        self.namespace = namespace.to_string();
        self
    }

    /// Add a port: `port` on the ClusterIP to `target_port` on the endpoints.
    pub fn port(self, name: &str, protocol: Protocol, port: u16, target_port: u16) -> Service {
        self.with_port(Port::new(name, protocol, port, target_port))
    }

    /// Add `port`.
    pub fn with_port(mut self, port: Port) -> Service {
        self.ports.push(port);
        self
    }

    /// Set `spec.<field>` (over the defaults), e.g. `("type", "NodePort")`,
    /// `("externalTrafficPolicy", "Local")` or `("externalIPs", json!(["172.18.0.200"]))`.
    pub fn spec(mut self, field: &str, value: impl Into<Value>) -> Service {
        self.spec.insert(field.to_string(), value.into());
        self
    }

    /// Add `ip` to `status.loadBalancer.ingress` (what a load-balancer controller writes).
    pub fn load_balancer_ingress(mut self, ip: impl Into<Ipv4Addr>) -> Service {
        self.ingress.push(ip.into());
        self
    }

    /// `ClusterIP:port`, the address clients connect to.
    pub fn vip(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.cluster_ip, port))
    }

    /// The name of the Service's EndpointSlice: `<service>-`[`SLICE_SUFFIX`].
    pub fn slice_name(&self) -> String {
        format!("{}-{SLICE_SUFFIX}", self.name)
    }

    /// The Service object.
    pub fn object(&self) -> Value {
        let mut svc = service(
            &self.namespace,
            &self.name,
            &self.cluster_ip.to_string(),
            &self.ports,
        );
        for (k, v) in &self.spec {
            svc["spec"][k] = v.clone();
        }
        if !self.ingress.is_empty() {
            let ingress: Vec<Value> = self.ingress.iter().map(|ip| json!({"ip": ip})).collect();
            svc["status"]["loadBalancer"]["ingress"] = json!(ingress);
        }
        svc
    }

    /// The Service's EndpointSlice ([`Service::slice_name`]) with `endpoints` and every target port.
    pub fn slice(&self, endpoints: &[Endpoint]) -> Value {
        endpoint_slice(
            &self.namespace,
            &self.name,
            SLICE_SUFFIX,
            &self.ports,
            endpoints,
        )
    }

    /// The Service and its EndpointSlice with `endpoints`.
    pub fn objects(&self, endpoints: &[Endpoint]) -> [Value; 2] {
        [self.object(), self.slice(endpoints)]
    }

    /// The Service and its EndpointSlice with a ready endpoint on `node` per address in `ips`
    /// (none: a slice without endpoints), as one YAML file.
    pub fn with_endpoints(&self, node: &str, ips: &[Ipv4Addr]) -> String {
        let eps: Vec<Endpoint> = ips.iter().map(|ip| ready(*ip, node)).collect();
        to_yaml(&self.objects(&eps))
    }
}

/// The Service object `namespace/name` with `cluster_ip` and `ports`, type ClusterIP, as the API
/// server returns it (defaults filled in, labels, annotations and managedFields as kubectl
/// leaves them).
pub fn service(namespace: &str, name: &str, cluster_ip: &str, ports: &[Port]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({"name": p.name, "protocol": p.protocol.name(), "port": p.port,
                               "targetPort": p.target_port});
            if let Some(np) = p.node_port {
                v["nodePort"] = json!(np);
            }
            v
        })
        .collect();
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace,
            "labels": {"app": name},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "ports": ports,
            "selector": {"app": name}, "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}
    })
}

/// An endpoint of an EndpointSlice: a pod at `ip` on `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's IP.
    pub ip: String,
    /// The node it runs on.
    pub node: String,
    /// `conditions.ready` (and `serving`; `terminating` is false).
    pub ready: bool,
}

/// A ready endpoint at `ip` on `node`.
pub fn ready(ip: impl Into<Ipv4Addr>, node: &str) -> Endpoint {
    Endpoint {
        ip: ip.into().to_string(),
        node: node.into(),
        ready: true,
    }
}

/// The EndpointSlice `<service>-<suffix>` of Service `namespace/service` with `endpoints` and
/// every port's target port, as the EndpointSlice controller writes it (owner reference,
/// targetRefs, last-change-trigger-time).
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    suffix: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": p.name, "protocol": p.protocol.name(), "port": p.target_port}))
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({"addresses": [e.ip],
                   "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
                   "nodeName": e.node,
                   "targetRef": {"kind": "Pod", "namespace": namespace,
                                 "name": format!("{service}-{i}"),
                                 "uid": format!("00000000-0000-4000-9000-{i:012x}")}})
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": format!("{service}-{suffix}"), "namespace": namespace,
            "generateName": format!("{service}-"),
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": rfc3339(now)},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                "uid": "00000000-0000-4000-a000-000000000000", "controller": true,
                "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports
    })
}

/// The Node `name` with InternalIP `internal_ip` (if any), as the kubelet reports it.
pub fn node(name: &str, internal_ip: Option<&str>) -> Value {
    let mut addresses = vec![json!({"type": "Hostname", "address": name})];
    if let Some(ip) = internal_ip {
        addresses.insert(0, json!({"type": "InternalIP", "address": ip}));
    }
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {"addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}],
            "nodeInfo": {"kubeletVersion": "v1.35.0", "containerRuntimeVersion": "containerd://2.0",
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "Debian",
                "kernelVersion": "6.18", "kubeProxyVersion": "", "machineID": "m",
                "systemUUID": "s", "bootID": "b"}}
    })
}

/// The Node `name` without an InternalIP, as YAML.
pub fn node_yaml(name: &str) -> String {
    to_yaml(&[node(name, None)])
}

/// `objects` as one multi-document YAML file (block style, as `kubectl get -o yaml` prints).
pub fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        // A JSON value always serializes; JSON text is YAML too, should it not.
        .map(|o| serde_norway::to_string(o).unwrap_or_else(|_| format!("{o}\n")))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-01-01T00:00:00Z`).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the RFC 3339 formatter agrees with known dates.
    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    /// Test that a Service with two ports and its slice carry every field the agent reads, and
    /// that spec fields and load-balancer ingress are set over the defaults.
    #[test]
    fn service_and_slice_carry_ports_endpoints_and_spec() {
        let svc = Service::new("echo", [10, 96, 0, 10])
            .port("http", Protocol::Tcp, 80, 8080)
            .with_port(udp_port("dns", 53, 5353).node_port(30053))
            .spec("type", "LoadBalancer")
            .spec("externalIPs", json!(["172.18.0.200"]))
            .load_balancer_ingress([172, 18, 0, 201]);
        let [s, slice] =
            svc.objects(&[ready([10, 244, 0, 11], "n1"), ready([10, 244, 1, 12], "n2")]);
        assert_eq!(s["metadata"]["namespace"], "default");
        assert_eq!(s["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert_eq!(s["spec"]["type"], "LoadBalancer");
        assert_eq!(s["spec"]["externalIPs"][0], "172.18.0.200");
        assert_eq!(
            s["status"]["loadBalancer"]["ingress"][0]["ip"],
            "172.18.0.201"
        );
        assert_eq!(
            s["spec"]["ports"][1],
            json!({"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053})
        );
        assert_eq!(slice["metadata"]["name"], "echo-abc12");
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "echo"
        );
        assert_eq!(
            slice["ports"][0],
            json!({"name": "http", "protocol": "TCP", "port": 8080})
        );
        assert_eq!(slice["endpoints"][1]["addresses"][0], "10.244.1.12");
        assert_eq!(slice["endpoints"][1]["nodeName"], "n2");
        assert_eq!(svc.vip(53), "10.96.0.10:53".parse().unwrap());
    }

    /// Test that the YAML rendering reads back as the same objects, documents in order.
    #[test]
    fn yaml_reads_back_as_the_same_objects() {
        let svc = Service::new("echo", [10, 96, 0, 10]).port("http", Protocol::Tcp, 80, 8080);
        let objects = svc.objects(&[]);
        let yaml = to_yaml(&objects);
        let docs: Vec<&str> = yaml.split("---\n").collect();
        assert_eq!(docs.len(), 2, "{yaml}");
        for (doc, want) in docs.iter().zip(&objects) {
            let back: Value = serde_norway::from_str(doc).unwrap();
            assert_eq!(&back, want, "{doc}");
        }
        assert!(yaml.contains("  clusterIP: 10.96.0.10\n"), "{yaml}");
        assert!(yaml.contains("endpoints: []\n"), "{yaml}");
    }
}
