//! Where the agent serves, with real TCP and UDP traffic: NodePorts on every address of the node
//! devices, followed as addresses come and go; `--nodeport-addresses` restricting them; node
//! devices detected without `--devices` and shown by `inspect`; and the externalTrafficPolicy
//! Local short-circuit for pods (a pod reaches an eTP=Local NodePort or load-balancer IP whose
//! endpoints are all on the other node, which the same traffic from outside cannot).
//!
//! Topology (lb_tests::Cluster, nothing on the fabric's side of the wires): node-0 and node-1 with
//! NICs `eth0` (172.18.0.10 and .11, the Node objects' InternalIPs) on a fabric bridge with the
//! external client (172.18.0.100). Pods:
//! c0 (client) and a1 on node-0, b1 on node-1, each backend with TCP 8080 and UDP 5353 servers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_tests::{
    agent,
    inspect::{devices, nodeport_addresses, verdict},
    manifests::ManifestDir,
    objects::{node, ready, tcp_port, to_yaml, udp_port, Service},
    topo::{node_nic_ip, EXTERNAL_IP, NODE_NIC},
    AgentRun, BpffsGuard, Child, Client, Cluster, TcpServer, UdpServer, POD_IFACE_GLOB,
};
use serde_json::{json, Value};

/// The NodePort of `np` (a1 on node-0, b1 on node-1), TCP and UDP.
const NODEPORT: u16 = 30080;
const NODEPORT_UDP: u16 = 30053;
/// The NodePorts of `npl` (externalTrafficPolicy Local, b1 on node-1 only), TCP and UDP.
const NODEPORT_LOCAL: u16 = 30081;
const NODEPORT_LOCAL_UDP: u16 = 30054;
/// The load-balancer IP of `npl`.
const LB_LOCAL: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 210);
/// A second address for node-0's NIC, in the fabric network.
const SECOND_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 50);
/// How long an agent may take to start, sync and attach.
const AGENT_START: Duration = Duration::from_secs(20);
/// How long a change in the namespace may take to reach the maps before a test gives up.
const WAIT: Duration = Duration::from_secs(10);

/// The Nodes and the Services, in namespace `t`.
fn write_manifests(dir: &ManifestDir) -> Result<()> {
    let nodes: Vec<Value> = (0..2u8)
        .map(|i| node(&format!("node-{i}"), Some(&node_nic_ip(i).to_string())))
        .collect();
    dir.write("nodes.yaml", &to_yaml(&nodes))?;
    let a1 = ready([10, 244, 0, 11], "node-0");
    let b1 = ready([10, 244, 1, 11], "node-1");
    let np = Service::new("np", [10, 96, 0, 60])
        .namespace("t")
        .spec("type", "NodePort")
        .with_port(tcp_port("http", 80, 8080).node_port(NODEPORT))
        .with_port(udp_port("dns", 53, 5353).node_port(NODEPORT_UDP));
    dir.write("np.yaml", &to_yaml(&np.objects(&[a1])))?;
    let npl = Service::new("npl", [10, 96, 0, 61])
        .namespace("t")
        .spec("type", "LoadBalancer")
        .spec("externalTrafficPolicy", "Local")
        .with_port(tcp_port("http", 80, 8080).node_port(NODEPORT_LOCAL))
        .with_port(udp_port("dns", 53, 5353).node_port(NODEPORT_LOCAL_UDP))
        .load_balancer_ingress(LB_LOCAL);
    dir.write("npl.yaml", &to_yaml(&npl.objects(&[b1])))?;
    Ok(())
}

/// The cluster, its servers, and one agent per node started with `flags(node index)`.
struct Lab {
    agents: Vec<Child>,
    cluster: Cluster,
    _servers: Vec<(TcpServer, UdpServer)>,
    bpffs: Vec<BpffsGuard>,
    _manifests: ManifestDir,
}

impl Lab {
    /// The cluster with its pods and servers; `prepare` runs before the agents start, which
    /// get `--pod-interfaces` and whatever `flags` adds.
    fn new(tag: &str, prepare: impl FnOnce(&Cluster), flags: impl Fn(&mut AgentRun)) -> Self {
        let mut cluster = Cluster::new(tag, 2).expect("cluster");
        cluster.node_mut(0).add_pod("c0", [10, 244, 0, 2]).unwrap();
        cluster.node_mut(0).add_pod("a1", [10, 244, 0, 11]).unwrap();
        cluster.node_mut(1).add_pod("b1", [10, 244, 1, 11]).unwrap();
        let mut servers = Vec::new();
        for (node, pod) in [(0, "a1"), (1, "b1")] {
            let p = cluster.node(node).pod(pod);
            servers.push((p.tcp_server(8080).unwrap(), p.udp_server(5353).unwrap()));
        }
        // Nothing on the fabric's side of the wires (kind-like nodes): tc alone on the NICs.
        let manifests = ManifestDir::new(tag).unwrap();
        write_manifests(&manifests).unwrap();
        prepare(&cluster);
        let mut agents = Vec::new();
        let mut bpffs = Vec::new();
        for i in 0..2u8 {
            let fs = BpffsGuard::new(&format!("{tag}-n{i}")).unwrap();
            let mut run = AgentRun::new(&format!("node-{i}"), fs.path());
            run.manifests(manifests.path())
                .pod_interfaces(POD_IFACE_GLOB)
                .name(&format!("agent{i}"));
            flags(&mut run);
            agents.push(
                run.start(cluster.node(i).ns(), AGENT_START)
                    .unwrap_or_else(|e| panic!("{e:#}")),
            );
            bpffs.push(fs);
        }
        Lab {
            agents,
            cluster,
            _servers: servers,
            bpffs,
            _manifests: manifests,
        }
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| a.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `lb-agent inspect --json` of node `i`.
    fn inspect(&self, i: u8) -> Value {
        agent::inspect_json(self.cluster.node(i).ns(), self.bpffs[usize::from(i)].path())
            .expect("inspect")
    }

    /// Waits until node `i`'s `inspect` satisfies `ready`; returns that output.
    fn wait_inspect(&self, i: u8, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.inspect(i);
            if ready(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "not within {WAIT:?}: {what}\n{v:#}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn external(&self) -> Client<'_> {
        Client::new(self.cluster.external()).timeout(Duration::from_secs(2))
    }
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// The MAC address of `ifname` in `ns`, as `ip -br link` prints it.
fn mac_of(ns: &lb_tests::NetNs, ifname: &str) -> String {
    let out = ns.ip(&["-br", "link", "show", "dev", ifname]).unwrap();
    out.split_whitespace().nth(2).expect("a MAC").to_owned()
}

/// Whether `err` is a refused connection (a TCP RST or an ICMP port unreachable).
fn refused(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Test that a NodePort is served on an address added to the node device after the agent
/// started, TCP and UDP, within milliseconds of the address appearing (the time is printed),
/// and no longer once the address is removed.
#[test]
fn nodeport_follows_an_address_added_to_the_node_device_and_removed_again() {
    let lab = Lab::new(
        "addr",
        |_| {},
        |run| {
            run.devices(NODE_NIC);
        },
    );
    let node0 = lab.cluster.node(0).ns();
    let ext = lab.cluster.external();
    // The client knows where 172.18.0.50 lives beforehand, so the time below is the agent's
    // and not ARP's.
    let mac = mac_of(node0, NODE_NIC);
    ext.ip(&[
        "neigh",
        "replace",
        &SECOND_IP.to_string(),
        "lladdr",
        &mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let target = at(SECOND_IP, NODEPORT);
    let quick = lab.external().timeout(Duration::from_millis(200));
    assert!(
        quick.tcp(target, "before").is_err(),
        "served before the address exists"
    );

    // From before the address is added (the `ip` command's own time included) until the first
    // connection served: until the map has the address, the node's stack answers a SYN to it
    // with a RST at once, so this loop sees the first connection the NodePort serves.
    let added = Instant::now();
    node0
        .ip(&["addr", "add", &format!("{SECOND_IP}/24"), "dev", NODE_NIC])
        .unwrap();
    let ip_took = added.elapsed();
    let mut attempts = 0;
    let reply = loop {
        attempts += 1;
        match quick.tcp(target, "hi") {
            Ok(r) => break r,
            Err(e) => assert!(
                added.elapsed() < WAIT,
                "not served within {WAIT:?} ({attempts} attempts): {e:#}\n{}",
                lab.logs()
            ),
        }
    };
    let latency = added.elapsed();
    println!(
        "NodePort served on an added address {latency:?} after `ip addr add` started \
         (which took {ip_took:?}), at attempt {attempts}"
    );
    assert!(
        latency < Duration::from_secs(1),
        "the NodePort address took {latency:?} to reach the map"
    );
    assert_eq!((reply.identity.as_str(), reply.peer), ("a1", target));
    assert_eq!(reply.client_seen.ip(), IpAddr::V4(EXTERNAL_IP));
    let r = lab
        .external()
        .udp(at(SECOND_IP, NODEPORT_UDP), "q")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(
        (r.identity.as_str(), r.peer),
        ("a1", at(SECOND_IP, NODEPORT_UDP))
    );
    let v = lab.inspect(0);
    assert_eq!(
        nodeport_addresses(&v),
        ["172.18.0.10", "172.18.0.50"],
        "{:#}",
        v["nodeport_addresses"]
    );

    node0
        .ip(&["addr", "del", &format!("{SECOND_IP}/24"), "dev", NODE_NIC])
        .unwrap();
    lab.wait_inspect(0, "172.18.0.50 no longer a NodePort address", |v| {
        nodeport_addresses(v) == ["172.18.0.10"]
    });
    let slow = lab.external().timeout(Duration::from_millis(500));
    assert!(slow.tcp(target, "after").is_err(), "TCP still served");
    assert!(
        slow.udp(at(SECOND_IP, NODEPORT_UDP), "after").is_err(),
        "UDP still served"
    );
    // The node's own address still serves.
    let r = lab
        .external()
        .tcp(at(node_nic_ip(0), NODEPORT), "hi")
        .unwrap();
    assert_eq!(r.identity, "a1");
}

/// Test that `--nodeport-addresses` with one CIDR serves NodePorts only on the node's
/// addresses inside it: a second address of the node device, in another network, is refused
/// (TCP) and not answered (UDP), while the address inside serves both.
#[test]
fn nodeport_addresses_restrict_node_ports_to_their_cidr() {
    let lab = Lab::new(
        "npaddr",
        |cluster| {
            let node0 = cluster.node(0).ns();
            node0
                .ip(&["addr", "add", "172.19.0.10/24", "dev", NODE_NIC])
                .unwrap();
            cluster
                .external()
                .ip(&["addr", "add", "172.19.0.100/24", "dev", "eth0"])
                .unwrap();
        },
        |run| {
            run.devices(NODE_NIC)
                .flag("--nodeport-addresses", "172.18.0.0/24");
        },
    );
    let v = lab.wait_inspect(0, "the NodePort addresses", |v| {
        !nodeport_addresses(v).is_empty()
    });
    assert_eq!(nodeport_addresses(&v), ["172.18.0.10"]);
    let inside = at(node_nic_ip(0), NODEPORT);
    let r = lab
        .external()
        .tcp(inside, "hi")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!((r.identity.as_str(), r.peer), ("a1", inside));
    let r = lab
        .external()
        .udp(at(node_nic_ip(0), NODEPORT_UDP), "q")
        .unwrap();
    assert_eq!(r.identity, "a1");

    let outside = at(Ipv4Addr::new(172, 19, 0, 10), NODEPORT);
    let err = lab
        .external()
        .tcp(outside, "hi")
        .expect_err("a NodePort on an address outside --nodeport-addresses");
    assert!(refused(&err), "the node's stack refuses it: {err:#}");
    let udp = lab
        .external()
        .timeout(Duration::from_millis(500))
        .udp(at(Ipv4Addr::new(172, 19, 0, 10), NODEPORT_UDP), "q");
    assert!(udp.is_err(), "UDP answered outside the CIDR: {udp:?}");
}

/// Test that without `--devices` the agent detects the node's NIC (it holds the Node object's
/// InternalIP; the pods' interfaces and loopback are not devices), attaches to it, says so in
/// its log and in `inspect` (JSON and text), and serves NodePorts on it, TCP and UDP.
#[test]
fn devices_are_detected_without_the_flag_and_shown_by_inspect() {
    let lab = Lab::new("detect", |_| {}, |_| {});
    let v = lab.wait_inspect(0, "eth0 detected", |v| !devices(v).is_empty());
    assert_eq!(
        devices(&v),
        [("eth0".to_string(), vec!["node address".to_string()])],
        "{:#}",
        v["devices"]
    );
    assert_eq!(nodeport_addresses(&v), ["172.18.0.10"]);
    let links: Vec<&str> = v["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert!(links.contains(&"eth0"), "no program on eth0: {links:?}");
    let log = lab.agents[0].logs();
    assert!(
        log.contains("node devices") && log.contains("eth0 (node address"),
        "the log does not name the devices:\n{log}"
    );
    let text = agent::inspect_text(lab.cluster.node(0).ns(), lab.bpffs[0].path(), Some(0)).unwrap();
    assert!(
        text.contains("Node devices:\n  eth0 (ifindex") && text.contains("node address"),
        "{text}"
    );
    for node in 0..2u8 {
        let r = lab
            .external()
            .tcp(at(node_nic_ip(node), NODEPORT), "hi")
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
        assert_eq!(r.peer, at(node_nic_ip(node), NODEPORT));
        let r = lab
            .external()
            .udp(at(node_nic_ip(node), NODEPORT_UDP), "q")
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
        assert_eq!(r.peer, at(node_nic_ip(node), NODEPORT_UDP));
    }
}

/// Test kube-proxy's short-circuit for externalTrafficPolicy Local: a pod on node-0 reaches
/// the NodePort (on its own node's address) and the load-balancer IP of a Service whose only
/// endpoint is on node-1, TCP and UDP, answered from the address it used; the same from
/// outside through node-0 is dropped (no local endpoint), and through node-1 served.
#[test]
fn a_pod_reaches_a_local_policy_service_whose_endpoints_are_on_the_other_node() {
    let lab = Lab::new(
        "short",
        |_| {},
        |run| {
            run.devices(NODE_NIC);
        },
    );
    let c0 = lab.cluster.node(0).pod("c0");
    let targets = [
        (
            at(node_nic_ip(0), NODEPORT_LOCAL),
            at(node_nic_ip(0), NODEPORT_LOCAL_UDP),
        ),
        (at(LB_LOCAL, 80), at(LB_LOCAL, 53)),
    ];
    for (tcp, udp) in targets {
        for _ in 0..3 {
            let r = c0
                .client()
                .tcp(tcp, "hi")
                .unwrap_or_else(|e| panic!("{tcp}: {e:#}\n{}", lab.logs()));
            assert_eq!((r.identity.as_str(), r.peer), ("b1", tcp));
            let r = c0
                .client()
                .udp(udp, "q")
                .unwrap_or_else(|e| panic!("{udp}: {e:#}\n{}", lab.logs()));
            assert_eq!((r.identity.as_str(), r.peer), ("b1", udp));
        }
    }
    let ext = lab.cluster.external();
    let quick = lab.external().timeout(Duration::from_millis(500));
    ext.ip(&[
        "route",
        "replace",
        &format!("{LB_LOCAL}/32"),
        "via",
        &node_nic_ip(0).to_string(),
    ])
    .unwrap();
    for (tcp, udp) in targets {
        assert!(quick.tcp(tcp, "hi").is_err(), "{tcp} served from outside");
        assert!(quick.udp(udp, "q").is_err(), "{udp} served from outside");
    }
    let v = lab.inspect(0);
    assert!(verdict(&v, "drop_no_backend") >= 4, "{:#}", v["verdicts"]);
    let pods_scope = v["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["scope"] == json!("pods"))
        .count();
    assert_eq!(pods_scope, 4, "TCP and UDP, NodePort and LB IP");
    // Node-1 has the endpoint: outside traffic it gets is served there.
    let r = lab
        .external()
        .tcp(at(node_nic_ip(1), NODEPORT_LOCAL), "hi")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(
        (r.identity.as_str(), r.client_seen.ip()),
        ("b1", IpAddr::V4(EXTERNAL_IP))
    );
}
