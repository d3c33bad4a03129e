//! Topologies built from namespaces: a [`Node`] with routed [`Pod`]s (Calico/Cilium style, no bridge).
//!
//! ```text
//!  pod netns "client"            node netns                          pod netns "b1"
//!  eth0 10.244.0.2/32  <-veth->  lxcclient 10.244.0.1/32    lxcb1  <-veth->  eth0 10.244.0.11/32
//!  10.244.0.1 dev eth0 scope link  route 10.244.0.2/32 dev lxcclient       default via 10.244.0.1
//!  default via 10.244.0.1          route 10.244.0.11/32 dev lxcb1
//!                                  ip_forward=1, rp_filter=0
//! ```
//! A pod's packets to a Service (10.96.0.0/16) follow its default route and enter the node on the
//! host-side veth (`lxc*`), where the dataplane's XDP/tc ingress program sees them before routing.
//! The node itself has no route for the Service range.
//!
//! A node has an index N and owns pod CIDR 10.244.N.0/24 with gateway 10.244.N.1. A [`Cluster`]
//! joins several nodes and an external client through a bridge in a fabric namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bpffs::BpffsGuard;
use crate::netns::NetNs;
use crate::traffic::{Client, TcpMode, TcpServer, UdpServer};

/// Glob matching every host-side pod interface a [`Node`] creates; give it to the agent.
pub const POD_IFACE_GLOB: &str = "lxc*";

/// Prefix of host-side pod interface names.
pub const POD_IFACE_PREFIX: &str = "lxc";

/// The Service (ClusterIP) range, as in a default Kubernetes cluster.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The interface name of every pod's side of its veth.
pub const POD_IFNAME: &str = "eth0";

/// A node: a network namespace with IP forwarding on, joined to its pods by veth pairs.
#[derive(Debug)]
pub struct Node {
    tag: String,
    index: u8,
    nic_ip: Option<Ipv4Addr>,
    // Declared before `ns`: pods go first on drop.
    pods: Vec<Pod>,
    ns: NetNs,
}

/// A pod: a network namespace whose `eth0` is a veth to its node, with one /32 address.
#[derive(Debug)]
pub struct Pod {
    name: String,
    ip: Ipv4Addr,
    host_ifname: String,
    host_ifindex: u32,
    ns: NetNs,
}

impl Node {
    /// Node 0: pod CIDR 10.244.0.0/24.
    pub fn new(tag: &str) -> Result<Node> {
        Node::with_index(tag, 0)
    }

    /// Node `index`: pod CIDR 10.244.`index`.0/24, gateway 10.244.`index`.1.
    pub fn with_index(tag: &str, index: u8) -> Result<Node> {
        let ns = NetNs::new(&format!("n{index}-{tag}"))?;
        // `default` first, so interfaces created later inherit it.
        for (key, value) in [
            ("ipv4/conf/default/rp_filter", "0"),
            ("ipv4/conf/all/rp_filter", "0"),
            ("ipv4/ip_forward", "1"),
        ] {
            ns.set_sysctl(key, value)?;
        }
        Ok(Node {
            nic_ip: None,
            tag: tag.to_string(),
            index,
            pods: Vec::new(),
            ns,
        })
    }

    /// The tag given at creation.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The node's index N (its pods live in 10.244.N.0/24).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The node's network namespace (where the agent runs and attaches its programs).
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The address of the node's NIC (`eth0`) in a [`Cluster`]; `None` for a lone node.
    pub fn nic_ip(&self) -> Option<Ipv4Addr> {
        self.nic_ip
    }

    /// The pod CIDR, e.g. `10.244.0.0/24`.
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// The address every host-side pod interface carries and every pod routes through: 10.244.N.1.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }

    /// Create pod `name` with address `ip` (in this node's pod CIDR, not the gateway) and wire it up.
    /// The host side is named `lxc<name>` (cut to 15 characters; names must stay distinct).
    pub fn add_pod(&mut self, name: &str, ip: impl Into<Ipv4Addr>) -> Result<&Pod> {
        let ip = ip.into();
        let [a, b, c, d] = ip.octets();
        if (a, b, c) != (10, 244, self.index) || d == 0 || d == 1 || d == 255 {
            bail!("pod IP {ip} is not a usable address of {}", self.pod_cidr());
        }
        if self.pods.iter().any(|p| p.ip == ip) {
            bail!("pod IP {ip} is already used on node {}", self.tag);
        }
        let host_ifname = host_ifname(name);
        if self
            .pods
            .iter()
            .any(|p| p.name == name || p.host_ifname == host_ifname)
        {
            bail!(
                "pod {name} (interface {host_ifname}) already exists on node {}",
                self.tag
            );
        }
        let ns = NetNs::new(name)?;
        let gw = self.gateway().to_string();
        let ip_s = ip.to_string();
        let node = &self.ns;
        // The peer is created directly in the pod namespace; nothing appears in the root namespace.
        #[rustfmt::skip]
        node.ip(&["link", "add", &host_ifname, "type", "veth", "peer", "name", POD_IFNAME, "netns", ns.name()])?;
        ns.ip(&["addr", "add", &format!("{ip_s}/32"), "dev", POD_IFNAME])?;
        ns.ip(&["link", "set", POD_IFNAME, "up"])?;
        ns.ip(&["route", "add", &gw, "dev", POD_IFNAME, "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", &gw, "dev", POD_IFNAME])?;
        node.set_sysctl(&format!("ipv4/conf/{host_ifname}/rp_filter"), "0")?;
        node.ip(&["addr", "add", &format!("{gw}/32"), "dev", &host_ifname])?;
        node.ip(&["link", "set", &host_ifname, "up"])?;
        node.ip(&["route", "add", &format!("{ip_s}/32"), "dev", &host_ifname])?;
        let host_ifindex = node.ifindex(&host_ifname)?;
        self.pods.push(Pod {
            name: name.to_string(),
            ip,
            host_ifname,
            host_ifindex,
            ns,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Delete pod `name`: its namespace and so its veth pair (the host side disappears from the node).
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name} on node {}", self.tag))?;
        self.pods.remove(i);
        Ok(())
    }

    /// Pod `name`. Panics if there is none (a bug in the test).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} on node {}", self.tag))
    }

    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
}

/// Node NIC addresses and the external client live in this network: the bridge of a [`Cluster`].
pub const FABRIC_CIDR: &str = "172.18.0.0/24";

/// Name of a node's NIC (its side of the veth to the fabric bridge), as on a real node.
pub const NODE_NIC: &str = "eth0";

/// Address of the external client in a [`Cluster`].
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);

/// Address of node `index`'s NIC in a [`Cluster`]: 172.18.0.(10 + index).
pub fn node_nic_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 18, 0, 10 + index)
}

/// Several nodes and an external client whose NICs are veths on one bridge, in a fabric namespace
/// that stands in for the physical network:
///
/// ```text
///  node 0 netns                fabric netns (br0)               node 1 netns
///  eth0 172.18.0.10/24 <-veth-> n0 ─┐                ┌─ n1 <-veth-> eth0 172.18.0.11/24
///  10.244.1.0/24 via .11            br0 ── ext       │              10.244.0.0/24 via .10
///                                        <-veth-> eth0 172.18.0.100/24  external client netns
/// ```
/// Node N owns pod CIDR 10.244.N.0/24; every node routes the other nodes' pod CIDRs via their NIC
/// addresses (direct routing, no encapsulation). The external client has only the on-link route to
/// the fabric network; tests add routes for external VIPs they need.
#[derive(Debug)]
pub struct Cluster {
    // Drop order: nodes (with their pods), the external client, then the fabric.
    nodes: Vec<Node>,
    external: NetNs,
    fabric: NetNs,
}

impl Cluster {
    /// Build `nodes` nodes (at most 50), the fabric bridge and the external client.
    pub fn new(tag: &str, nodes: u8) -> Result<Cluster> {
        if nodes == 0 || nodes > 50 {
            bail!("a cluster has 1 to 50 nodes, not {nodes}");
        }
        let fabric = NetNs::new(&format!("fab-{tag}"))?;
        fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "br0", "up"])?;
        let external = NetNs::new(&format!("ext-{tag}"))?;
        plug(&fabric, "ext", &external, EXTERNAL_IP)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            external,
            fabric,
        };
        for i in 0..nodes {
            let mut node = Node::with_index(tag, i)?;
            let ip = node_nic_ip(i);
            plug(&cluster.fabric, &format!("n{i}"), node.ns(), ip)?;
            node.ns()
                .set_sysctl(&format!("ipv4/conf/{NODE_NIC}/rp_filter"), "0")?;
            node.nic_ip = Some(ip);
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            for other in cluster.nodes.iter().filter(|o| o.index != node.index) {
                let via = node_nic_ip(other.index).to_string();
                node.ns().ip(&[
                    "route",
                    "add",
                    &other.pod_cidr(),
                    "via",
                    &via,
                    "dev",
                    NODE_NIC,
                ])?;
            }
        }
        Ok(cluster)
    }

    /// Node `index`. Panics if there is none (a bug in the test).
    pub fn node(&self, index: u8) -> &Node {
        self.nodes
            .get(usize::from(index))
            .unwrap_or_else(|| panic!("no node {index} in the cluster"))
    }

    /// Node `index`, to add or remove pods. Panics if there is none.
    pub fn node_mut(&mut self, index: u8) -> &mut Node {
        self.nodes
            .get_mut(usize::from(index))
            .unwrap_or_else(|| panic!("no node {index} in the cluster"))
    }

    /// All nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The namespace of the external client (outside every node, on the fabric network).
    pub fn external(&self) -> &NetNs {
        &self.external
    }

    /// The fabric namespace holding the bridge `br0` (for captures, or to break links).
    pub fn fabric(&self) -> &NetNs {
        &self.fabric
    }

    /// Makes the fabric's ports behave as a wire for XDP: attaches the pass-through program
    /// `lb_pass` of the eBPF `object` (loaded into `bpffs`) to every fabric-side veth.
    ///
    /// A veth receives what its peer transmits with XDP_TX only when it runs NAPI, which an XDP
    /// program turns on; a real NIC's link partner needs nothing. Without this, a node's XDP_TX
    /// into its NIC (a veth here) would be lost. By default nothing is attached (as on kind or
    /// docker nodes, whose bridge ports run nothing); the one topology that covers XDP_TX
    /// calls this (see [`crate::ClusterLab`]).
    pub fn attach_wire_xdp(&self, object: &Path, bpffs: &BpffsGuard) -> Result<()> {
        let progs = bpffs.path().join("wire");
        let out = Command::new("bpftool")
            .args(["prog", "loadall"])
            .arg(object)
            .arg(&progs)
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            bail!(
                "bpftool prog loadall: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pass = progs.join("lb_pass");
        let pass = pass.to_str().context("bpffs path is not UTF-8")?;
        let mut ports = vec!["ext".to_owned()];
        ports.extend((0..self.nodes.len()).map(|i| format!("n{i}")));
        for port in &ports {
            self.fabric
                .ip(&["link", "set", "dev", port, "xdpdrv", "pinned", pass])?;
        }
        Ok(())
    }
}

/// Join `ns` to the fabric bridge: a veth with `port` on the bridge and `eth0` (address `ip`/24) in `ns`.
fn plug(fabric: &NetNs, port: &str, ns: &NetNs, ip: Ipv4Addr) -> Result<()> {
    #[rustfmt::skip]
    fabric.ip(&["link", "add", port, "type", "veth", "peer", "name", NODE_NIC, "netns", ns.name()])?;
    fabric.ip(&["link", "set", port, "master", "br0", "up"])?;
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", NODE_NIC])?;
    ns.ip(&["link", "set", NODE_NIC, "up"])?;
    Ok(())
}

/// `lxc<name>` reduced to the characters and length (15) an interface name allows.
fn host_ifname(pod: &str) -> String {
    let clean: String = pod
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    format!("{POD_IFACE_PREFIX}{clean}")
        .chars()
        .take(15)
        .collect()
}

impl Pod {
    /// The pod's name (also the identity its servers answer with).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `ip:port` of this pod.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// The pod's network namespace.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// Name of the host-side veth, in the node namespace (matches [`POD_IFACE_GLOB`]).
    pub fn host_ifname(&self) -> &str {
        &self.host_ifname
    }

    /// Index of the host-side veth in the node namespace.
    pub fn host_ifindex(&self) -> u32 {
        self.host_ifindex
    }

    /// A client in this pod whose batches also check that servers see the pod's own address
    /// ([`Client::seen_as`]).
    pub fn client(&self) -> Client<'_> {
        Client::new(&self.ns).seen_as(self.ip)
    }

    /// Start a TCP server on `<pod ip>:port` answering with the pod's name, one reply per line, keeping
    /// connections open until the client closes.
    pub fn tcp_server(&self, port: u16) -> Result<TcpServer> {
        TcpServer::start(&self.ns, self.addr(port), &self.name, TcpMode::KeepOpen)
    }

    /// Start a UDP server on `<pod ip>:port` answering each datagram with the pod's name.
    pub fn udp_server(&self, port: u16) -> Result<UdpServer> {
        UdpServer::start(&self.ns, self.addr(port), &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that host-side names start with the glob prefix and fit in 15 characters.
    #[test]
    fn host_ifnames_fit_and_match_the_glob() {
        assert_eq!(host_ifname("b1"), "lxcb1");
        assert_eq!(host_ifname("a-very-long-pod-name"), "lxca-very-long-");
        assert_eq!(host_ifname("x.y"), "lxcxy");
    }
}
