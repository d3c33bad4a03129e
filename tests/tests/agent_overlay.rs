//! Two nodes whose pod CIDRs are routed over a VXLAN overlay, as flannel's VXLAN backend lays
//! them out (issue 11: 0 of 60 NodePort connections to a backend behind the overlay were
//! answered): NodePort from outside to a backend on the other node (TCP and UDP, new and
//! established flows, replies from the NodePort, the backend seeing this node's overlay
//! address), NodePort to a local backend (the client's address kept), pod -> ClusterIP over the
//! overlay, the reject of a Service without endpoints, and full-size TCP segments through the
//! overlay's smaller MTU; with the devices the agents detect, and with those a user names.
//!
//! Topology (lb_tests::Cluster with PodNetwork::Vxlan): node-0 and node-1 (NICs `eth0`
//! 172.18.0.10 and .11 on the fabric bridge, the external client 172.18.0.100 there too) each
//! have `flannel.1` (VNI 1, UDP 8472, MTU 1450, address 10.244.N.0/32) and route the other's pod
//! CIDR via its VXLAN address on link; pods' veths have MTU 1450. Pods: c0 (client) and a1 on
//! node-0, b1 on node-1. Nothing runs on the fabric's side of the wires.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_tests::{
    inspect::{devices, path, verdict},
    manifests::ManifestDir,
    objects::{node, ready, tcp_port, to_yaml, udp_port, Service},
    topo::{node_nic_ip, vxlan_ip, EXTERNAL_IP, VXLAN_DEV, VXLAN_MTU},
    Agents, Client, Cluster, ClusterLab, Devices, PodNetwork, Shape, TcpServer, UdpServer,
};
use serde_json::Value;

const CIP: [u8; 4] = [10, 96, 0, 70];
const NODEPORT_REMOTE: u16 = 30100;
const NODEPORT_REMOTE_UDP: u16 = 30101;
const NODEPORT_LOCAL: u16 = 30102;
const NODEPORT_LOCAL_UDP: u16 = 30103;
const NODEPORT_EMPTY: u16 = 30104;
const A1: [u8; 4] = [10, 244, 0, 11];
const B1: [u8; 4] = [10, 244, 1, 11];

/// The nodes (their NICs' addresses as InternalIPs) and the Services, in namespace `t`: `remote`
/// (NodePorts, b1 on node-1), `local` (NodePorts, a1 on node-0), `cip` (ClusterIP, b1) and
/// `empty` (NodePorts, no endpoints).
fn write_manifests(dir: &ManifestDir) -> Result<()> {
    let nodes: Vec<Value> = (0..2u8)
        .map(|i| node(&format!("node-{i}"), Some(&node_nic_ip(i).to_string())))
        .collect();
    dir.write("nodes.yaml", &to_yaml(&nodes))?;
    let node_ports = |name: &str, last: u8, tcp: u16, udp: u16| {
        Service::new(name, [10, 96, 0, last])
            .namespace("t")
            .spec("type", "NodePort")
            .with_port(tcp_port("http", 80, 8080).node_port(tcp))
            .with_port(udp_port("dns", 53, 5353).node_port(udp))
    };
    let services = [
        (
            node_ports("remote", 71, NODEPORT_REMOTE, NODEPORT_REMOTE_UDP),
            vec![ready(B1, "node-1")],
        ),
        (
            node_ports("local", 72, NODEPORT_LOCAL, NODEPORT_LOCAL_UDP),
            vec![ready(A1, "node-0")],
        ),
        (
            Service::new("cip", CIP)
                .namespace("t")
                .with_port(tcp_port("http", 80, 8080))
                .with_port(udp_port("dns", 53, 5353)),
            vec![ready(B1, "node-1")],
        ),
        (
            node_ports("empty", 73, NODEPORT_EMPTY, NODEPORT_EMPTY),
            vec![],
        ),
    ];
    for (s, endpoints) in services {
        let file = format!("{}.yaml", s.name);
        dir.write(&file, &to_yaml(&s.objects(&endpoints)))?;
    }
    Ok(())
}

/// The overlay cluster, its servers and one agent per node.
struct Lab {
    lab: ClusterLab,
    _servers: Vec<(TcpServer, UdpServer)>,
    _manifests: ManifestDir,
}

impl Lab {
    /// The cluster, its agents given `devices`.
    fn new(tag: &str, devices: Devices) -> Result<Self> {
        let shape = Shape {
            pod_network: PodNetwork::Vxlan,
            ..Shape::default()
        };
        let mut cluster = Cluster::with_shape(tag, 2, shape)?;
        cluster.node_mut(0).add_pod("c0", [10, 244, 0, 2])?;
        cluster.node_mut(0).add_pod("a1", A1)?;
        cluster.node_mut(1).add_pod("b1", B1)?;
        let mut servers = Vec::new();
        for (n, pod) in [(0, "a1"), (1, "b1")] {
            let p = cluster.node(n).pod(pod);
            servers.push((p.tcp_server(8080)?, p.udp_server(5353)?));
        }
        let manifests = ManifestDir::new(tag)?;
        write_manifests(&manifests)?;
        let agents = Agents {
            devices,
            ..Agents::default()
        };
        let lab = ClusterLab::start_with(tag, cluster, manifests.path(), &agents)?;
        Ok(Lab {
            lab,
            _servers: servers,
            _manifests: manifests,
        })
    }

    fn cluster(&self) -> &Cluster {
        self.lab.cluster()
    }

    fn logs(&self) -> String {
        self.lab.logs()
    }

    fn inspect(&self, i: u8) -> Value {
        self.lab.inspect(i).expect("inspect")
    }

    fn external(&self) -> Client<'_> {
        Client::new(self.cluster().external()).timeout(Duration::from_secs(2))
    }
}

/// Node-0's NodePort `port`.
fn nodeport(port: u16) -> SocketAddr {
    SocketAddr::new(node_nic_ip(0).into(), port)
}

/// Asserts that `client` reaches `tcp` and `udp` with new flows (30 each) and established ones
/// (10 requests on one connection, on one socket), every answer from the frontend, by `backend`,
/// which saw the client as `seen_ip`.
fn assert_served(lab: &Lab, client: Client<'_>, tcp: SocketAddr, udp: SocketAddr, seen: Seen) {
    let (backend, seen_ip) = seen;
    for (target, spread) in [
        (tcp, client.tcp_spread(tcp, 30)),
        (udp, client.udp_spread(udp, 30)),
    ] {
        assert_eq!(
            (spread.ok(), spread.backends()),
            (30, vec![backend]),
            "{target}: {spread}\n{}",
            lab.logs()
        );
    }
    let mut conn = client
        .tcp_conn(tcp)
        .unwrap_or_else(|e| panic!("{tcp}: {e:#}\n{}", lab.logs()));
    let sock = client.udp_socket().unwrap();
    for i in 0..10 {
        let r = conn
            .request(&format!("tcp-{i}"))
            .unwrap_or_else(|e| panic!("{tcp}: {e:#}\n{}", lab.logs()));
        assert_eq!((r.peer, r.identity.as_str()), (tcp, backend), "{tcp}");
        assert_eq!(r.client_seen.ip(), seen_ip, "{tcp}: the backend saw");
        let r = sock
            .request(udp, &format!("udp-{i}"))
            .unwrap_or_else(|e| panic!("{udp}: {e:#}\n{}", lab.logs()));
        assert_eq!((r.peer, r.identity.as_str()), (udp, backend), "{udp}");
        assert_eq!(r.client_seen.ip(), seen_ip, "{udp}: the backend saw");
    }
}

/// Which backend answers, and the client address it sees.
type Seen = (&'static str, Ipv4Addr);

/// Asserts everything an overlay node serves: NodePorts from outside to the backend behind the
/// overlay (SNATed to node-0's VXLAN address, the source of the route to it) and to the local
/// one (the client's address kept), the ClusterIP from a pod to the backend behind the overlay
/// (no SNAT), and the reject of the Service without endpoints; then that node-0's tc sent
/// every rewritten packet itself, none to the stack.
fn assert_overlay_node_serves_everything(lab: &Lab) {
    let remote = ("b1", vxlan_ip(0));
    let local = ("a1", EXTERNAL_IP);
    #[rustfmt::skip]
    assert_served(lab, lab.external(), nodeport(NODEPORT_REMOTE), nodeport(NODEPORT_REMOTE_UDP), remote);
    #[rustfmt::skip]
    assert_served(lab, lab.external(), nodeport(NODEPORT_LOCAL), nodeport(NODEPORT_LOCAL_UDP), local);
    let c0 = lab.cluster().node(0).pod("c0");
    let cip = |port| SocketAddr::from((CIP, port));
    assert_served(lab, c0.client(), cip(80), cip(53), ("b1", c0.ip()));
    assert_refused_at_once(lab, nodeport(NODEPORT_EMPTY));
    let v = lab.inspect(0);
    println!("node-0 paths {}", v["paths"]);
    assert!(verdict(&v, "reverse_nat") > 0, "{v:#}");
    assert!(path(&v, "tc_redirect") > 0, "{:#}", v["paths"]);
    for p in ["tc_stack_not_fwded", "tc_stack_fib", "xdp_tx"] {
        assert_eq!(path(&v, p), 0, "{p}: {:#}", v["paths"]);
    }
}

/// Whether `err` is, somewhere in its chain, "connection refused".
fn refused(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Asserts that a TCP connect and a UDP datagram from outside to `target` (a NodePort without
/// endpoints) are refused at once (the ICMP port unreachable reached the client).
fn assert_refused_at_once(lab: &Lab, target: SocketAddr) {
    let started = Instant::now();
    let err = lab.external().tcp(target, "hi").expect_err("no endpoints");
    assert!(refused(&err), "{err:#}\n{}", lab.logs());
    let udp = lab.cluster().external().enter(|| -> std::io::Result<_> {
        let sock = UdpSocket::bind((EXTERNAL_IP, 0))?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.connect(target)?;
        sock.send(b"q\n")?;
        Ok(sock.recv(&mut [0u8; 64]).map_err(|e| e.kind()))
    });
    let kind = udp.expect("UDP socket").map(|_| ());
    assert_eq!(kind, Err(std::io::ErrorKind::ConnectionRefused), "UDP");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1800), "refused after {took:?}");
    let v = lab.inspect(0);
    assert!(verdict(&v, "reject_no_backend") >= 2, "{v:#}");
}

/// Test that with the devices the agents detect (no `--devices`: the NIC, which holds the
/// Node's address, and the VXLAN device, an overlay), an overlay node serves NodePorts to
/// backends behind the overlay and on the node, ClusterIPs over the overlay, and refuses a
/// Service without endpoints.
#[test]
fn with_detected_devices_an_overlay_node_serves_nodeports_cluster_ips_and_rejects() {
    let lab = Lab::new("vxdet", Devices::Detect).unwrap();
    for i in 0..2u8 {
        let v = lab.inspect(i);
        let names: Vec<String> = devices(&v).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["eth0", VXLAN_DEV], "node-{i}: {:#}", v["devices"]);
    }
    assert_overlay_node_serves_everything(&lab);
}

/// Test the same with the devices a user names (`--devices eth0,flannel.*`, a name and a glob).
#[test]
fn with_devices_named_by_the_user_an_overlay_node_serves_nodeports_cluster_ips_and_rejects() {
    let named = Devices::Named("eth0,flannel.*".into());
    let lab = Lab::new("vxnamed", named).unwrap();
    assert_overlay_node_serves_everything(&lab);
}

/// Sends `n` lines of `len` bytes on one connection in one write, then reads the `n` answers;
/// returns the connection's MSS (TCP_MAXSEG: the largest segment it sends).
fn bulk_exchange(target: SocketAddr, n: usize, len: usize) -> Result<usize> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let line = format!("{}\n", "x".repeat(len));
    let burst: String = (0..n).map(|_| line.as_str()).collect();
    (&stream).write_all(burst.as_bytes()).context("send")?;
    let mut reader = BufReader::new(&stream);
    for i in 0..n {
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .with_context(|| format!("answer {i} of {n}"))?;
        anyhow::ensure!(answer.ends_with(&line), "answer {i}: {answer:.60}");
    }
    let mss = nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::TcpMaxSeg)?;
    Ok(mss as usize)
}

/// Test that full-size TCP segments cross the overlay both ways: 200 KB each way on one
/// connection from outside through the NodePort to the backend behind the overlay, and from a
/// pod through the ClusterIP; the segments are as large as the pods' MTU (1450, the VXLAN
/// device's) allows, so each fits the VXLAN device once DNATed.
#[test]
fn full_size_tcp_segments_cross_the_overlay() {
    let lab = Lab::new("vxmtu", Devices::Detect).unwrap();
    let c0 = lab.cluster().node(0).pod("c0").ns();
    for (ns, target) in [
        (lab.cluster().external(), nodeport(NODEPORT_REMOTE)),
        (c0, SocketAddr::from((CIP, 80))),
    ] {
        let mss = ns
            .enter(|| bulk_exchange(target, 200, 1000))
            .unwrap_or_else(|e| panic!("{target}: {e:#}\n{}", lab.logs()));
        println!("{target}: MSS {mss}");
        // The pod's MTU less IPv4 and TCP headers, less TCP timestamps (12 bytes) if used.
        let full = VXLAN_MTU as usize - 40;
        assert!(
            (full - 12..=full).contains(&mss),
            "{target}: MSS {mss}, not a full-size segment of MTU {VXLAN_MTU}"
        );
    }
    let v = lab.inspect(0);
    println!("node-0 paths {}", v["paths"]);
    assert_eq!(path(&v, "tc_stack_fib"), 0, "{:#}", v["paths"]);
}

/// Test that an agent whose `--devices` names the NIC alone warns that it leaves the overlay
/// device out (replies arriving there would reach clients untranslated), naming it.
#[test]
fn devices_that_leave_the_overlay_out_are_warned_about() {
    let lab = Lab::new("vxnic", Devices::Nic).unwrap();
    let logs = lab.logs();
    for i in 0..2u8 {
        let names: Vec<String> = devices(&lab.inspect(i))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["eth0"], "node-{i}");
    }
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("overlay devices not in --devices"))
        .collect();
    assert_eq!(warnings.len(), 2, "one per agent:\n{logs}");
    assert!(
        warnings.iter().all(|w| w.contains("overlays=flannel.1")),
        "{logs}"
    );
}
