//! Netfilter beside us: kube-proxy's iptables layout (what a node keeps when kube-proxy is
//! replaced without cleaning up), loaded into the node namespaces beside the agents, with its
//! `KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`, and a distro firewall's INVALID drop
//! in INPUT. Conntrack marks a packet INVALID when it sees only part of a flow (a SYN-ACK whose
//! SYN it never saw); the agents' tc programs send every packet they translate themselves, in
//! both directions, so netfilter sees neither and drops nothing. Pod -> ClusterIP (backend on
//! the other node, and on the same node) and external client -> NodePort (backends on both
//! nodes), TCP and UDP, new and established flows: all answered, from the frontend.
//!
//! Topology: lb_tests::Cluster on the default wire (nothing on the fabric's side, tc alone on the
//! node devices); c0 and a1 on node-0, b1 on node-1.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use lb_tests::{
    kube_rules::{self, Svc},
    manifests::ManifestDir,
    objects::{node, ready, tcp_port, to_yaml, udp_port, Service},
    topo::node_nic_ip,
    Client, Cluster, ClusterLab, NetNs, TcpServer, TempDir, UdpServer, Wire,
};
use serde_json::Value;

const REMOTE: [u8; 4] = [10, 96, 0, 60];
const LOCAL: [u8; 4] = [10, 96, 0, 61];
const NODEPORT: [u8; 4] = [10, 96, 0, 62];
const NODEPORT_TCP: u16 = 30090;
const NODEPORT_UDP: u16 = 30091;
const A1: [u8; 4] = [10, 244, 0, 11];
const B1: [u8; 4] = [10, 244, 1, 11];

/// The Services, as the agents read them and as kube-proxy had programmed them (TCP).
fn services() -> Vec<(Service, Vec<[u8; 4]>)> {
    let svc = |name: &str, ip: [u8; 4]| Service::new(name, ip).namespace("t");
    let ports = |s: Service| {
        s.with_port(tcp_port("http", 80, 8080))
            .with_port(udp_port("dns", 53, 5353))
    };
    vec![
        (ports(svc("remote", REMOTE)), vec![B1]),
        (ports(svc("local", LOCAL)), vec![A1]),
        (
            svc("np", NODEPORT)
                .spec("type", "NodePort")
                .with_port(tcp_port("http", 80, 8080).node_port(NODEPORT_TCP))
                .with_port(udp_port("dns", 53, 5353).node_port(NODEPORT_UDP)),
            vec![A1, B1],
        ),
    ]
}

/// Loads kube-proxy's iptables layout of the Services' TCP ports into `ns` (the base-chain
/// jumps, then the restore of a full sync), and an INVALID drop in INPUT as distro firewalls
/// have.
fn load_kube_proxy_rules(ns: &NetNs, tmp: &TempDir) -> Result<()> {
    let svcs: Vec<Svc> = services()
        .into_iter()
        .map(|(s, endpoints)| Svc {
            namespace: "t".into(),
            name: s.name.clone(),
            port_name: "http".into(),
            ip: s.cluster_ip,
            port: 80,
            endpoints: endpoints.iter().map(|e| ((*e).into(), 8080)).collect(),
        })
        .collect();
    let (iptables, restore) = kube_rules::IPTABLES;
    for jump in kube_rules::iptables_jumps() {
        ns.run(iptables, &jump)?;
    }
    let file = tmp.path().join(format!("{}.iptables", ns.name()));
    std::fs::write(&file, kube_rules::iptables_restore(&svcs, None, &[]))?;
    let file = file.to_str().expect("a UTF-8 path");
    ns.run(restore, &["-w", "5", "--noflush", file])?;
    #[rustfmt::skip]
    ns.run(iptables, &["-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])?;
    Ok(())
}

/// The packets the INVALID drops of `ns` dropped: (KUBE-FORWARD, INPUT).
fn invalid_drops(ns: &NetNs) -> (u64, u64) {
    let (iptables, _) = kube_rules::IPTABLES;
    let count = |chain: &str| -> u64 {
        let out = ns
            .run(iptables, &["-w", "5", "-L", chain, "-v", "-n", "-x"])
            .unwrap_or_default();
        out.lines()
            .filter(|l| l.contains("INVALID") && l.contains("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    (count("KUBE-FORWARD"), count("INPUT"))
}

/// Test that with kube-proxy's iptables layout (and an INVALID drop in INPUT) on both nodes,
/// pod -> ClusterIP and outside -> NodePort, TCP and UDP, new and established flows, are all
/// answered from the frontend (issue 11: nothing was answered within 30 s).
#[test]
fn kube_proxys_leftover_rules_drop_nothing_of_ours() {
    let tag = "nf";
    let mut cluster = Cluster::new(tag, 2).unwrap();
    cluster.node_mut(0).add_pod("c0", [10, 244, 0, 2]).unwrap();
    cluster.node_mut(0).add_pod("a1", A1).unwrap();
    cluster.node_mut(1).add_pod("b1", B1).unwrap();
    let mut servers: Vec<(TcpServer, UdpServer)> = Vec::new();
    for (n, pod) in [(0, "a1"), (1, "b1")] {
        let p = cluster.node(n).pod(pod);
        servers.push((p.tcp_server(8080).unwrap(), p.udp_server(5353).unwrap()));
    }
    let tmp = TempDir::new(tag).unwrap();
    for n in cluster.nodes() {
        load_kube_proxy_rules(n.ns(), &tmp).unwrap();
    }
    let manifests = ManifestDir::new(tag).unwrap();
    let nodes: Vec<Value> = (0..2u8)
        .map(|i| node(&format!("node-{i}"), Some(&node_nic_ip(i).to_string())))
        .collect();
    manifests.write("nodes.yaml", &to_yaml(&nodes)).unwrap();
    for (s, endpoints) in services() {
        let node_of = |e: &[u8; 4]| format!("node-{}", e[2]);
        let eps: Vec<_> = endpoints.iter().map(|e| ready(*e, &node_of(e))).collect();
        let file = format!("{}.yaml", s.name);
        manifests.write(&file, &to_yaml(&s.objects(&eps))).unwrap();
    }
    let lab = ClusterLab::start(tag, cluster, manifests.path(), Wire::Plain, &[]).unwrap();
    let cluster = lab.cluster();

    let c0 = cluster.node(0).pod("c0");
    let external = Client::new(cluster.external()).timeout(Duration::from_secs(2));
    let at = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
    let mut cases: Vec<(Client<'_>, SocketAddr, SocketAddr)> = vec![
        (c0.client(), at(REMOTE, 80), at(REMOTE, 53)),
        (c0.client(), at(LOCAL, 80), at(LOCAL, 53)),
    ];
    for i in 0..2u8 {
        let ip = node_nic_ip(i).octets();
        cases.push((external, at(ip, NODEPORT_TCP), at(ip, NODEPORT_UDP)));
    }
    for (client, tcp, udp) in cases {
        let spread = client.tcp_spread(tcp, 30);
        assert_eq!(spread.failures, 0, "{tcp}: {spread}\n{}", lab.logs());
        let spread = client.udp_spread(udp, 30);
        assert_eq!(spread.failures, 0, "{udp}: {spread}\n{}", lab.logs());
        let mut conn = client
            .tcp_conn(tcp)
            .unwrap_or_else(|e| panic!("{tcp}: {e:#}\n{}", lab.logs()));
        let sock = client.udp_socket().unwrap();
        for i in 0..5 {
            let r = conn
                .request(&format!("tcp-{i}"))
                .unwrap_or_else(|e| panic!("{tcp}: {e:#}\n{}", lab.logs()));
            assert_eq!(r.peer, tcp);
            let r = sock
                .request(udp, &format!("udp-{i}"))
                .unwrap_or_else(|e| panic!("{udp}: {e:#}\n{}", lab.logs()));
            assert_eq!(r.peer, udp);
        }
    }
    for (i, n) in cluster.nodes().iter().enumerate() {
        let (forward, input) = invalid_drops(n.ns());
        println!("node-{i}: INVALID drops: KUBE-FORWARD {forward}, INPUT {input}");
    }
    drop(servers);
}
