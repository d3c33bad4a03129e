//! A node with a second NIC (issue 11: 0 of 60 connections to a NodePort on that NIC's address
//! were answered): NodePorts on the second NIC's address from a client on its network (TCP and
//! UDP, new and established flows, replies from that address), to a backend on the node (the
//! client's address kept) and to one on the other node, whose route leaves by the first NIC,
//! not the one the packet came in on (SNATed to the first NIC's address, the source of that
//! route); the reject on the second NIC; with the devices a user names and with those the
//! agent detects when the Node object lists the second NIC's address.
//!
//! Topology (lb_tests::Cluster with Shape::second_nic): node-0 and node-1 with their NICs `eth0`
//! (172.18.0.10 and .11) on the fabric's first bridge, pod CIDRs routed directly over it;
//! node-0 also has `eth1` (172.19.0.10) on a second bridge, where the second external client
//! (172.19.0.100, its only network) lives. So every answer the second client gets left node-0
//! by `eth1`. Pods: a1 on node-0, b1 on node-1. Nothing runs on the fabric's side of the wires.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_tests::{
    inspect::{devices, path, verdict},
    manifests::ManifestDir,
    objects::{node, ready, tcp_port, to_yaml, udp_port, Service},
    topo::{node_nic_ip, SECOND_EXTERNAL_IP, SECOND_NIC, SECOND_NIC_IP},
    Agents, Client, Cluster, ClusterLab, Devices, Shape, TcpServer, UdpServer,
};
use serde_json::{json, Value};

const NODEPORT_REMOTE: u16 = 30110;
const NODEPORT_REMOTE_UDP: u16 = 30111;
const NODEPORT_LOCAL: u16 = 30112;
const NODEPORT_LOCAL_UDP: u16 = 30113;
const NODEPORT_EMPTY: u16 = 30114;
const A1: [u8; 4] = [10, 244, 0, 11];
const B1: [u8; 4] = [10, 244, 1, 11];

/// The nodes (their first NICs' addresses as InternalIPs; with `external`, node-0's second
/// NIC's address as its ExternalIP) and the Services, in namespace `t`: `remote` (NodePorts, b1
/// on node-1), `local` (NodePorts, a1 on node-0) and `empty` (NodePorts, no endpoints).
fn write_manifests(dir: &ManifestDir, external: bool) -> Result<()> {
    let mut nodes: Vec<Value> = (0..2u8)
        .map(|i| node(&format!("node-{i}"), Some(&node_nic_ip(i).to_string())))
        .collect();
    if external {
        let address = json!({"type": "ExternalIP", "address": SECOND_NIC_IP});
        if let Some(a) = nodes[0]["status"]["addresses"].as_array_mut() {
            a.push(address);
        }
    }
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
            node_ports("remote", 81, NODEPORT_REMOTE, NODEPORT_REMOTE_UDP),
            vec![ready(B1, "node-1")],
        ),
        (
            node_ports("local", 82, NODEPORT_LOCAL, NODEPORT_LOCAL_UDP),
            vec![ready(A1, "node-0")],
        ),
        (
            node_ports("empty", 83, NODEPORT_EMPTY, NODEPORT_EMPTY),
            vec![],
        ),
    ];
    for (s, endpoints) in services {
        let file = format!("{}.yaml", s.name);
        dir.write(&file, &to_yaml(&s.objects(&endpoints)))?;
    }
    Ok(())
}

/// The cluster with node-0's second NIC, its servers and one agent per node.
struct Lab {
    lab: ClusterLab,
    _servers: Vec<(TcpServer, UdpServer)>,
    _manifests: ManifestDir,
}

impl Lab {
    /// The agents given `devices`; with `external`, the Node object of node-0 lists its second
    /// NIC's address as an ExternalIP.
    fn new(tag: &str, devices: Devices, external: bool) -> Result<Self> {
        let shape = Shape {
            second_nic: true,
            ..Shape::default()
        };
        let mut cluster = Cluster::with_shape(tag, 2, shape)?;
        cluster.node_mut(0).add_pod("a1", A1)?;
        cluster.node_mut(1).add_pod("b1", B1)?;
        let mut servers = Vec::new();
        for (n, pod) in [(0, "a1"), (1, "b1")] {
            let p = cluster.node(n).pod(pod);
            servers.push((p.tcp_server(8080)?, p.udp_server(5353)?));
        }
        let manifests = ManifestDir::new(tag)?;
        write_manifests(&manifests, external)?;
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

    fn logs(&self) -> String {
        self.lab.logs()
    }

    fn inspect(&self, i: u8) -> Value {
        self.lab.inspect(i).expect("inspect")
    }

    /// The client on the second network.
    fn client(&self) -> Client<'_> {
        Client::new(self.lab.cluster().second_external()).timeout(Duration::from_secs(2))
    }
}

/// Node-0's NodePort `port` on its second NIC's address.
fn on_eth1(port: u16) -> SocketAddr {
    SocketAddr::new(SECOND_NIC_IP.into(), port)
}

/// Asserts that the second client reaches `tcp` and `udp` with new flows (30 each) and
/// established ones (10 requests on one connection, on one socket), every answer from the
/// frontend, by `backend`, which saw the client as `seen_ip`.
fn assert_served(lab: &Lab, tcp: SocketAddr, udp: SocketAddr, backend: &str, seen_ip: Ipv4Addr) {
    let client = lab.client();
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

/// Whether `err` is, somewhere in its chain, "connection refused".
fn refused(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Asserts everything node-0 serves on its second NIC: the NodePorts to the backend on the
/// other node (SNATed to `eth0`'s address: the route to the backend leaves by `eth0`) and to
/// the local one (the second client's address kept), and the reject of the Service without
/// endpoints, over TCP and UDP, at once; and that node-0's tc sent every rewritten packet
/// itself.
fn assert_second_nic_serves_everything(lab: &Lab) {
    let (remote, local) = (
        (NODEPORT_REMOTE, NODEPORT_REMOTE_UDP),
        (NODEPORT_LOCAL, NODEPORT_LOCAL_UDP),
    );
    #[rustfmt::skip]
    assert_served(lab, on_eth1(remote.0), on_eth1(remote.1), "b1", node_nic_ip(0));
    #[rustfmt::skip]
    assert_served(lab, on_eth1(local.0), on_eth1(local.1), "a1", SECOND_EXTERNAL_IP);
    let target = on_eth1(NODEPORT_EMPTY);
    let started = Instant::now();
    let err = lab.client().tcp(target, "hi").expect_err("no endpoints");
    assert!(refused(&err), "{err:#}\n{}", lab.logs());
    let udp = lab
        .lab
        .cluster()
        .second_external()
        .enter(|| -> std::io::Result<_> {
            let sock = UdpSocket::bind((SECOND_EXTERNAL_IP, 0))?;
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
    println!("node-0 paths {}", v["paths"]);
    assert!(verdict(&v, "reject_no_backend") >= 2, "{v:#}");
    assert!(verdict(&v, "reverse_nat") > 0, "{v:#}");
    for p in ["tc_stack_not_fwded", "tc_stack_fib", "xdp_tx"] {
        assert_eq!(path(&v, p), 0, "{p}: {:#}", v["paths"]);
    }
}

/// Test that with `--devices eth0,eth1` a node serves NodePorts on its second NIC's address:
/// to the local backend and to the one behind the other node, whose route leaves by the
/// other NIC; and refuses a Service without endpoints there.
#[test]
fn with_both_nics_named_nodeports_on_the_second_nic_are_served_and_rejected() {
    let named = Devices::Named(format!("eth0,{SECOND_NIC}"));
    let lab = Lab::new("nic2", named, false).unwrap();
    assert_second_nic_serves_everything(&lab);
}

/// Test that without `--devices` the agent detects the second NIC when the Node object lists
/// its address (as an ExternalIP), and then serves the NodePorts on it the same way.
#[test]
fn a_second_nic_holding_a_node_address_is_detected_and_serves_nodeports() {
    let lab = Lab::new("nic2det", Devices::Detect, true).unwrap();
    let got = devices(&lab.inspect(0));
    let want = [
        ("eth0".to_owned(), vec!["node address".to_owned()]),
        (SECOND_NIC.to_owned(), vec!["node address".to_owned()]),
    ];
    assert_eq!(got, want);
    assert_second_nic_serves_everything(&lab);
}
