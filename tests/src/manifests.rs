//! Kubernetes manifests for tests: a [`Service`] with its EndpointSlice, the [`node_yaml`] object,
//! and a [`ManifestDir`] the agent watches, changed the ways a real writer changes files.
//!
//! ```
//! use lb_tests::manifests::{Protocol, Service};
//! let svc = Service::new("echo", [10, 96, 0, 10])
//!     .port("http", Protocol::Tcp, 80, 8080)
//!     .port("dns", Protocol::Udp, 53, 5353);
//! let yaml = svc.with_endpoints("node-a", &[[10, 244, 0, 11].into()]);
//! assert!(yaml.contains("kind: EndpointSlice") && yaml.contains("- 10.244.0.11"));
//! ```

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::scratch::TempDir;

/// A Service port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The spelling in manifests and in `lb-agent inspect`: `TCP`, `UDP`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// One port of a [`Service`]: `port` on the ClusterIP goes to `target_port` on each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; the EndpointSlice port of the same name and protocol carries the target.
    pub name: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on every endpoint.
    pub target_port: u16,
}

/// A ClusterIP Service in namespace `default` (one IPv4 ClusterIP, any number of ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `metadata.name`; also the prefix of its EndpointSlice's name.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.clusterIP` (in 10.96.0.0/16).
    pub cluster_ip: Ipv4Addr,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// A Service `name` in namespace `default` with ClusterIP `cluster_ip` and no ports yet.
    pub fn new(name: &str, cluster_ip: impl Into<Ipv4Addr>) -> Service {
        Service {
            name: name.to_string(),
            namespace: "default".to_string(),
            cluster_ip: cluster_ip.into(),
            ports: Vec::new(),
        }
    }

    /// Add a port: `port` on the ClusterIP to `target_port` on the endpoints.
    pub fn port(mut self, name: &str, protocol: Protocol, port: u16, target_port: u16) -> Service {
        self.ports.push(ServicePort {
            name: name.to_string(),
            protocol,
            port,
            target_port,
        });
        self
    }

    /// `ClusterIP:port`, the address clients connect to.
    pub fn vip(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.cluster_ip, port))
    }

    /// The name of the Service's EndpointSlice: `<service>-slice`.
    pub fn slice_name(&self) -> String {
        format!("{}-slice", self.name)
    }

    /// The Service object as YAML.
    pub fn service_yaml(&self) -> String {
        let mut s = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\n\
             spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n\
             \x20 ipFamilies:\n  - IPv4\n  ipFamilyPolicy: SingleStack\n  ports:\n",
            self.name,
            self.namespace,
            ip = self.cluster_ip
        );
        for p in &self.ports {
            let _ = write!(
                s,
                "  - name: {}\n    protocol: {}\n    port: {}\n    targetPort: {}\n",
                p.name,
                p.protocol.name(),
                p.port,
                p.target_port
            );
        }
        s
    }

    /// The Service's EndpointSlice as YAML: one ready endpoint on node `node` per address in
    /// `endpoints` (none: a slice without endpoints), with every target port.
    pub fn slice_yaml(&self, node: &str, endpoints: &[Ipv4Addr]) -> String {
        let mut s = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}\n  \
             namespace: {}\n  labels:\n    kubernetes.io/service-name: {}\naddressType: IPv4\nports:\n",
            self.slice_name(),
            self.namespace,
            self.name
        );
        for p in &self.ports {
            let _ = write!(
                s,
                "- name: {}\n  protocol: {}\n  port: {}\n",
                p.name,
                p.protocol.name(),
                p.target_port
            );
        }
        if endpoints.is_empty() {
            s.push_str("endpoints: []\n");
            return s;
        }
        s.push_str("endpoints:\n");
        for ip in endpoints {
            let _ = write!(
                s,
                "- addresses:\n  - {ip}\n  conditions:\n    ready: true\n    serving: true\n    \
                 terminating: false\n  nodeName: {node}\n"
            );
        }
        s
    }

    /// The Service and its EndpointSlice, as one multi-document YAML file.
    pub fn with_endpoints(&self, node: &str, endpoints: &[Ipv4Addr]) -> String {
        format!(
            "{}---\n{}",
            self.service_yaml(),
            self.slice_yaml(node, endpoints)
        )
    }
}

/// A Node object named `name`, as YAML.
pub fn node_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
         kubernetes.io/hostname: {name}\nstatus:\n  addresses:\n  - type: Hostname\n    address: {name}\n"
    )
}

/// A scratch directory of manifests for `lb-agent run --manifests`, with a sibling staging
/// directory on the same filesystem for atomic replacement. Both are removed on drop.
#[derive(Debug)]
pub struct ManifestDir {
    dir: TempDir,
    staging: TempDir,
}

impl ManifestDir {
    /// Create an empty manifests directory (and its staging directory) under /tmp.
    pub fn new(tag: &str) -> Result<ManifestDir> {
        Ok(ManifestDir {
            dir: TempDir::new(&format!("m-{tag}"))?,
            staging: TempDir::new(&format!("s-{tag}"))?,
        })
    }

    /// The directory to give the agent.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of file `name` in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write file `name` in place (create or truncate, then write), as an editor without
    /// atomic saves does.
    pub fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.file(name);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// Replace file `name` atomically: write it in the staging directory, then rename it into
    /// the directory (as `kubectl`-driven tools and ConfigMap volume updates do).
    pub fn replace(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.staging.path().join(name);
        fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        let path = self.file(name);
        fs::rename(&tmp, &path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
    }

    /// Remove file `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.file(name);
        fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a Service with two ports renders every field the agent reads.
    #[test]
    fn service_and_slice_render_ports_and_endpoints() {
        let svc = Service::new("echo", [10, 96, 0, 10])
            .port("http", Protocol::Tcp, 80, 8080)
            .port("dns", Protocol::Udp, 53, 5353);
        let y = svc.service_yaml();
        assert!(y.contains("  clusterIP: 10.96.0.10\n"), "{y}");
        assert!(y.contains("  ipFamilies:\n  - IPv4\n"), "{y}");
        assert!(
            y.contains("  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: 5353\n"),
            "{y}"
        );
        let s = svc.slice_yaml("n1", &[[10, 244, 0, 11].into(), [10, 244, 0, 12].into()]);
        assert!(s.contains("    kubernetes.io/service-name: echo\n"), "{s}");
        assert!(
            s.contains("- name: http\n  protocol: TCP\n  port: 8080\n"),
            "{s}"
        );
        assert_eq!(s.matches("    ready: true\n").count(), 2, "{s}");
        assert!(s.contains("  - 10.244.0.12\n") && s.contains("  nodeName: n1\n"));
        assert!(svc.slice_yaml("n1", &[]).ends_with("endpoints: []\n"));
        assert_eq!(svc.vip(53), "10.96.0.10:53".parse().unwrap());
    }

    /// Test that an atomic replacement leaves exactly the new content and nothing in staging.
    #[test]
    fn replace_renames_into_the_directory() {
        let dir = ManifestDir::new("unit").unwrap();
        dir.write("a.yaml", "old").unwrap();
        dir.replace("a.yaml", "new").unwrap();
        assert_eq!(fs::read_to_string(dir.file("a.yaml")).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.staging.path()).unwrap().count(), 0);
        dir.remove("a.yaml").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
