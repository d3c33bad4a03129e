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
//! joins several nodes and an external client through a bridge in a fabric namespace, shaped as
//! a [`Shape`] says: pod CIDRs routed directly or over a VXLAN overlay (flannel's layout), and
//! a second NIC on node 0 on a second network.

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
    /// The MTU of its pods' veths (both sides); None: the kernel's default.
    pod_mtu: Option<u32>,
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
            pod_mtu: None,
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
        if let Some(mtu) = self.pod_mtu {
            let mtu = mtu.to_string();
            ns.ip(&["link", "set", POD_IFNAME, "mtu", &mtu])?;
            node.ip(&["link", "set", &host_ifname, "mtu", &mtu])?;
        }
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

/// The second network of a [`Cluster`] built with [`Shape::second_nic`]: node 0's second NIC
/// and the second external client live on the fabric's second bridge.
pub const SECOND_FABRIC_CIDR: &str = "172.19.0.0/24";

/// Name of node 0's second NIC ([`Shape::second_nic`]).
pub const SECOND_NIC: &str = "eth1";

/// Address of node 0's second NIC ([`Shape::second_nic`]).
pub const SECOND_NIC_IP: Ipv4Addr = Ipv4Addr::new(172, 19, 0, 10);

/// Address of the second external client ([`Shape::second_nic`]), on the second network only.
pub const SECOND_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 19, 0, 100);

/// Name of the VXLAN device of a [`PodNetwork::Vxlan`] cluster, as flannel names it.
pub const VXLAN_DEV: &str = "flannel.1";

/// The MTU of the VXLAN device and of every pod's veth on a [`PodNetwork::Vxlan`] cluster: the
/// NIC's 1500 less VXLAN's 50 bytes (outer IPv4, UDP, VXLAN and inner Ethernet headers), as
/// flannel sets them.
pub const VXLAN_MTU: u32 = 1450;

/// The address of node `index`'s VXLAN device: 10.244.`index`.0/32, as flannel gives it (the
/// network address of the node's pod CIDR).
pub fn vxlan_ip(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, index, 0)
}

/// The MAC of node `index`'s VXLAN device (fixed, so every node can name the others').
fn vxlan_mac(index: u8) -> String {
    format!("0e:f1:00:00:00:{index:02x}")
}

/// How the nodes of a [`Cluster`] reach each other's pod CIDRs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodNetwork {
    /// Direct routing: each node routes the others' pod CIDRs via their NIC addresses.
    #[default]
    Direct,
    /// flannel's VXLAN backend: every node has a vxlan device [`VXLAN_DEV`] (VNI 1, UDP port
    /// 8472, no learning, MTU [`VXLAN_MTU`]) with address [`vxlan_ip`], and routes each other
    /// node's pod CIDR via that node's VXLAN address, on link, out of the vxlan device; a
    /// permanent neighbour entry gives that address the other device's MAC and a forwarding
    /// entry sends the MAC to the other node's NIC address. Pods' veths get MTU [`VXLAN_MTU`].
    Vxlan,
}

/// What a [`Cluster`] is built with besides its nodes and the fabric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// How pod CIDRs are routed between the nodes.
    pub pod_network: PodNetwork,
    /// Node 0 gets a second NIC, [`SECOND_NIC`] ([`SECOND_NIC_IP`]), on a second bridge of the
    /// fabric, where a second external client ([`SECOND_EXTERNAL_IP`]) lives; no route of the
    /// other nodes' pod CIDRs goes that way.
    pub second_nic: bool,
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
/// Node N owns pod CIDR 10.244.N.0/24; by default every node routes the other nodes' pod CIDRs
/// via their NIC addresses (direct routing, no encapsulation). The external client has only the
/// on-link route to the fabric network; tests add routes for external VIPs they need. A
/// [`Shape`] changes the default: pod CIDRs over a VXLAN overlay, a second NIC on node 0.
/// Nothing runs on the fabric's side of any wire unless [`Cluster::attach_wire_xdp`] is called.
#[derive(Debug)]
pub struct Cluster {
    // Drop order: nodes (with their pods), the external clients, then the fabric.
    nodes: Vec<Node>,
    external: NetNs,
    second_external: Option<NetNs>,
    fabric: NetNs,
    /// The fabric-side veth of every wire, for [`Cluster::attach_wire_xdp`].
    ports: Vec<String>,
}

impl Cluster {
    /// Build `nodes` nodes (at most 50), the fabric bridge and the external client, the pod
    /// CIDRs routed directly.
    pub fn new(tag: &str, nodes: u8) -> Result<Cluster> {
        Cluster::with_shape(tag, nodes, Shape::default())
    }

    /// Build `nodes` nodes (at most 50), the fabric and the external client(s), as `shape` says.
    pub fn with_shape(tag: &str, nodes: u8, shape: Shape) -> Result<Cluster> {
        if nodes == 0 || nodes > 50 {
            bail!("a cluster has 1 to 50 nodes, not {nodes}");
        }
        let fabric = NetNs::new(&format!("fab-{tag}"))?;
        add_bridge(&fabric, "br0")?;
        let external = NetNs::new(&format!("ext-{tag}"))?;
        plug(&fabric, "br0", "ext", &external, NODE_NIC, EXTERNAL_IP)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            external,
            second_external: None,
            fabric,
            ports: vec!["ext".to_owned()],
        };
        for i in 0..nodes {
            let mut node = Node::with_index(tag, i)?;
            let (ip, port) = (node_nic_ip(i), format!("n{i}"));
            plug(&cluster.fabric, "br0", &port, node.ns(), NODE_NIC, ip)?;
            cluster.ports.push(port);
            node.ns()
                .set_sysctl(&format!("ipv4/conf/{NODE_NIC}/rp_filter"), "0")?;
            node.nic_ip = Some(ip);
            cluster.nodes.push(node);
        }
        match shape.pod_network {
            PodNetwork::Direct => cluster.route_directly()?,
            PodNetwork::Vxlan => cluster.route_over_vxlan()?,
        }
        if shape.second_nic {
            cluster.add_second_network(tag)?;
        }
        Ok(cluster)
    }

    /// Every node routes the other nodes' pod CIDRs via their NIC addresses.
    fn route_directly(&self) -> Result<()> {
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let via = node_nic_ip(other.index).to_string();
                #[rustfmt::skip]
                node.ns().ip(&["route", "add", &other.pod_cidr(), "via", &via, "dev", NODE_NIC])?;
            }
        }
        Ok(())
    }

    /// flannel's layout (see [`PodNetwork::Vxlan`]).
    fn route_over_vxlan(&mut self) -> Result<()> {
        let mtu = VXLAN_MTU.to_string();
        for node in &mut self.nodes {
            let (ns, i) = (&node.ns, node.index);
            let local = node_nic_ip(i).to_string();
            #[rustfmt::skip]
            ns.ip(&["link", "add", VXLAN_DEV, "address", &vxlan_mac(i), "mtu", &mtu, "type", "vxlan",
                "id", "1", "local", &local, "dev", NODE_NIC, "dstport", "8472", "nolearning"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/32", vxlan_ip(i)),
                "dev",
                VXLAN_DEV,
            ])?;
            ns.ip(&["link", "set", VXLAN_DEV, "up"])?;
            node.pod_mtu = Some(VXLAN_MTU);
        }
        for node in &self.nodes {
            let ns = node.ns();
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let (gw, mac) = (vxlan_ip(other.index).to_string(), vxlan_mac(other.index));
                let remote = node_nic_ip(other.index).to_string();
                #[rustfmt::skip]
                ns.ip(&["neigh", "add", &gw, "lladdr", &mac, "dev", VXLAN_DEV, "nud", "permanent"])?;
                ns.run(
                    "bridge",
                    &["fdb", "append", &mac, "dev", VXLAN_DEV, "dst", &remote],
                )?;
                #[rustfmt::skip]
                ns.ip(&["route", "add", &other.pod_cidr(), "via", &gw, "dev", VXLAN_DEV, "onlink"])?;
            }
        }
        Ok(())
    }

    /// Bridge `br1` for the second network, node 0's second NIC and the second external client
    /// on it.
    fn add_second_network(&mut self, tag: &str) -> Result<()> {
        add_bridge(&self.fabric, "br1")?;
        let client = NetNs::new(&format!("ext2-{tag}"))?;
        plug(
            &self.fabric,
            "br1",
            "ext2",
            &client,
            NODE_NIC,
            SECOND_EXTERNAL_IP,
        )?;
        self.ports.push("ext2".to_owned());
        self.second_external = Some(client);
        let node = &self.nodes[0];
        plug(
            &self.fabric,
            "br1",
            "n0b",
            node.ns(),
            SECOND_NIC,
            SECOND_NIC_IP,
        )?;
        self.ports.push("n0b".to_owned());
        node.ns()
            .set_sysctl(&format!("ipv4/conf/{SECOND_NIC}/rp_filter"), "0")
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

    /// The namespace of the second external client (on the second network only, reaching
    /// node 0 by its second NIC). Panics if the cluster has no second network ([`Shape`]).
    pub fn second_external(&self) -> &NetNs {
        self.second_external
            .as_ref()
            .expect("a cluster built with Shape::second_nic")
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
        for port in &self.ports {
            self.fabric
                .ip(&["link", "set", "dev", port, "xdpdrv", "pinned", pass])?;
        }
        Ok(())
    }
}

/// A bridge `name` in the fabric namespace, up.
fn add_bridge(fabric: &NetNs, name: &str) -> Result<()> {
    fabric.ip(&["link", "add", name, "type", "bridge"])?;
    fabric.ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// Join `ns` to the fabric's bridge `bridge`: a veth with `port` on the bridge and `ifname`
/// (address `ip`/24, up) in `ns`.
fn plug(
    fabric: &NetNs,
    bridge: &str,
    port: &str,
    ns: &NetNs,
    ifname: &str,
    ip: Ipv4Addr,
) -> Result<()> {
    #[rustfmt::skip]
    fabric.ip(&["link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns.name()])?;
    fabric.ip(&["link", "set", port, "master", bridge, "up"])?;
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname])?;
    ns.ip(&["link", "set", ifname, "up"])?;
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
