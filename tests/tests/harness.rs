//! Tests of the namespace harness itself: topology, traffic helpers, guards and cleanup.
//! Plain routing only, no load balancer. Needs root.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lb_tests::{
    tcp_request, udp_request, BpffsGuard, Client, Cluster, NetNs, Node, TcpMode, TcpServer,
    POD_IFACE_GLOB,
};

/// Names of every namespace `ip netns list` shows.
fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn two_pods(tag: &str) -> Node {
    let mut node = Node::new(tag).unwrap();
    node.add_pod("client", [10, 244, 0, 2]).unwrap();
    node.add_pod("server", [10, 244, 0, 11]).unwrap();
    node
}

/// Test that two pods on one node talk over TCP through the node, and both ends see real addresses.
#[test]
fn two_pods_talk_tcp_through_the_node() {
    let node = two_pods("tcp");
    let (client, server) = (node.pod("client"), node.pod("server"));
    let srv = server.tcp_server(8080).unwrap();
    let r = tcp_request(client.ns(), server.addr(8080), "hello there").unwrap();
    assert_eq!(r.identity, "server");
    assert_eq!(r.echo, "hello there");
    assert_eq!(r.peer, server.addr(8080));
    assert_eq!(r.client_seen.ip(), client.ip());
    assert_eq!(r.client_seen, r.local);
    assert_eq!((srv.accepted(), srv.requests()), (1, 1));
    // The packets crossed the node: in on the client's veth, out on the server's.
    let stats = node.ns().link_stats(client.host_ifname()).unwrap();
    assert!(stats.rx_packets >= 3, "{stats:?}");
}

/// Test that two pods on one node talk over UDP and the answer comes from the server's address.
#[test]
fn two_pods_talk_udp_through_the_node() {
    let node = two_pods("udp");
    let (client, server) = (node.pod("client"), node.pod("server"));
    let srv = server.udp_server(5353).unwrap();
    let r = udp_request(client.ns(), server.addr(5353), "ping").unwrap();
    assert_eq!((r.identity.as_str(), r.echo.as_str()), ("server", "ping"));
    assert_eq!(r.peer, server.addr(5353));
    assert_eq!(
        r.client_seen,
        SocketAddr::from((client.ip(), r.local.port()))
    );
    assert_eq!(srv.requests(), 1);
    // A fixed-port socket keeps its source port across requests.
    let sock = Client::new(client.ns()).udp_socket().unwrap();
    let a = sock.request(server.addr(5353), "one").unwrap();
    let b = sock.request(server.addr(5353), "two").unwrap();
    assert_eq!(a.client_seen, b.client_seen);
}

/// Test that a long-lived connection answers many lines, and that a one-shot server closes after one.
#[test]
fn long_lived_and_one_shot_connections_behave() {
    let node = two_pods("conn");
    let (client, server) = (node.pod("client"), node.pod("server"));
    let _srv = server.tcp_server(80).unwrap();
    let mut conn = Client::new(client.ns()).tcp_conn(server.addr(80)).unwrap();
    for i in 0..5 {
        let r = conn.request(&format!("line {i}")).unwrap();
        assert_eq!(
            (r.identity.as_str(), r.echo),
            ("server", format!("line {i}"))
        );
        assert_eq!(r.local, conn.local());
    }
    assert_eq!(conn.peer(), server.addr(80));

    let once = TcpServer::start(
        server.ns(),
        server.addr(81),
        "once",
        TcpMode::CloseAfterReply,
    )
    .unwrap();
    let mut conn = Client::new(client.ns()).tcp_conn(once.addr()).unwrap();
    assert_eq!(conn.request("a").unwrap().identity, "once");
    assert!(conn.closed_by_peer(Duration::from_secs(2)));
}

/// Test that the spread helper counts every answer and reports refused connections as failures.
#[test]
fn spread_counts_answers_and_failures() {
    let mut node = Node::new("spread").unwrap();
    node.add_pod("client", [10, 244, 0, 2]).unwrap();
    for i in 1..=3 {
        node.add_pod(&format!("b{i}"), [10, 244, 0, 10 + i])
            .unwrap();
    }
    let servers: Vec<_> = node.pods()[1..]
        .iter()
        .map(|p| p.tcp_server(80).unwrap())
        .collect();
    let client = Client::new(node.pod("client").ns());
    for s in &servers {
        let spread = client.tcp_spread(s.addr(), 20);
        assert_eq!(
            (spread.count(s.identity()), spread.failures),
            (20, 0),
            "{spread}"
        );
    }
    let udp = node.pod("b2").udp_server(53).unwrap();
    let spread = client.udp_spread(udp.addr(), 10);
    assert_eq!(spread.backends(), vec!["b2"], "{spread}");
    assert_eq!(spread.ok(), 10);
    // Nobody listens on port 81: refused at once, counted as failures.
    let start = Instant::now();
    let spread = client.tcp_spread(node.pod("b1").addr(81), 5);
    assert_eq!((spread.ok(), spread.failures), (0, 5), "{spread}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // Nobody answers UDP on port 54: each request times out, the batch stays within its budget.
    let spread = client
        .timeout(Duration::from_millis(200))
        .budget(Duration::from_millis(500))
        .udp_spread(node.pod("b1").addr(54), 100);
    assert_eq!(spread.failures, 100, "{spread}");
}

/// Test that a node is wired as promised: forwarding on, rp_filter off, /32 routes, lxc* names.
#[test]
fn node_is_routed_with_forwarding_and_no_rp_filter() {
    let node = two_pods("wiring");
    let ns = node.ns();
    assert_eq!(ns.sysctl("ipv4/ip_forward").unwrap(), "1");
    for p in node.pods() {
        assert!(p
            .host_ifname()
            .starts_with(POD_IFACE_GLOB.trim_end_matches('*')));
        assert_eq!(
            ns.sysctl(&format!("ipv4/conf/{}/rp_filter", p.host_ifname()))
                .unwrap(),
            "0"
        );
        assert_eq!(ns.ifindex(p.host_ifname()).unwrap(), p.host_ifindex());
        let route = ns.ip(&["route", "get", &p.ip().to_string()]).unwrap();
        assert!(
            route.contains(&format!("dev {}", p.host_ifname())),
            "{route}"
        );
        let pod_route = p.ns().ip(&["route", "show", "default"]).unwrap();
        assert!(pod_route.contains("via 10.244.0.1 dev eth0"), "{pod_route}");
    }
    assert_eq!(ns.sysctl("ipv4/conf/all/rp_filter").unwrap(), "0");
    // A server on the node's gateway address is reachable from every pod (host network).
    let gw = SocketAddr::from((node.gateway(), 9000));
    let _host = TcpServer::start(ns, gw, "node", TcpMode::KeepOpen).unwrap();
    for p in node.pods() {
        let r = tcp_request(p.ns(), gw, "hi").unwrap();
        assert_eq!(
            (r.identity.as_str(), r.client_seen.ip()),
            ("node", IpAddr::V4(p.ip()))
        );
    }
}

/// Test that a pod's packet to a Service IP reaches the host-side veth although the node has no route
/// for it (so a dataplane hook there sees it), and that the node answers "unreachable" without one.
#[test]
fn packets_to_a_service_ip_reach_the_host_veth() {
    let node = two_pods("svcip");
    let client = node.pod("client");
    let vip: SocketAddr = (Ipv4Addr::new(10, 96, 0, 10), 80).into();
    let before = node.ns().link_stats(client.host_ifname()).unwrap();
    let err = Client::new(client.ns())
        .timeout(Duration::from_secs(1))
        .tcp(vip, "x")
        .unwrap_err();
    let after = node.ns().link_stats(client.host_ifname()).unwrap();
    assert!(
        after.rx_packets > before.rx_packets,
        "{before:?} -> {after:?}"
    );
    // The node has no route: it answers with ICMP unreachable, the connect fails fast.
    assert!(format!("{err:#}").contains("unreachable"), "{err:#}");
}

/// Test that dropping a node deletes the node's and every pod's namespace.
#[test]
fn namespaces_are_gone_after_drop() {
    let node = two_pods("gone");
    let names: Vec<String> = std::iter::once(node.ns().name().to_string())
        .chain(node.pods().iter().map(|p| p.ns().name().to_string()))
        .collect();
    let listed = netns_list();
    assert!(
        names.iter().all(|n| listed.contains(n)),
        "{names:?} not in {listed:?}"
    );
    drop(node);
    let listed = netns_list();
    for n in &names {
        assert!(!listed.contains(n), "{n} still listed");
        assert!(!Path::new("/run/netns").join(n).exists());
    }
}

/// Test that a panic in the middle of a test still removes namespaces, processes and bpffs mounts.
#[test]
fn a_panicking_test_still_cleans_up() {
    let seen = Mutex::new(Vec::<String>::new());
    let pid = Mutex::new(0u32);
    let mount = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let node = two_pods("panic");
        let bpffs = BpffsGuard::new("panic").unwrap();
        let child = node
            .pod("server")
            .ns()
            .spawn("sleeper", Command::new("sleep").arg("600"))
            .unwrap();
        *pid.lock().unwrap() = child.pid();
        *mount.lock().unwrap() = Some(bpffs.path().to_path_buf());
        seen.lock()
            .unwrap()
            .extend(node.pods().iter().map(|p| p.ns().name().to_string()));
        seen.lock().unwrap().push(node.ns().name().to_string());
        let _srv = node.pod("server").tcp_server(80).unwrap();
        panic!("deliberate");
    }));
    assert!(result.is_err());
    let listed = netns_list();
    for n in seen.lock().unwrap().iter() {
        assert!(!listed.contains(n), "{n} survived the panic");
    }
    let pid = *pid.lock().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived"
    );
    let mount = mount.lock().unwrap().clone().unwrap();
    assert!(!mount.exists(), "{} survived", mount.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(mount.to_str().unwrap()));
}

/// Test that a child runs inside its namespace, its logs are captured, and drop stops it.
#[test]
fn child_runs_in_the_namespace_and_is_stopped_on_drop() {
    let ns = NetNs::new("child").unwrap();
    let mut child = ns
        .spawn(
            "talker",
            Command::new("sh").args([
                "-c",
                "echo hello; echo oops >&2; ip -o link; exec sleep 600",
            ]),
        )
        .unwrap();
    child
        .wait_for_output("oops", Duration::from_secs(5))
        .unwrap();
    child
        .wait_for_output("lo:", Duration::from_secs(5))
        .unwrap();
    assert!(child.stdout().contains("hello"));
    assert!(
        !child.stdout().contains("eth"),
        "sees only its namespace's links: {}",
        child.stdout()
    );
    assert!(child.logs().contains("oops"));
    assert!(child.is_running());
    assert!(ns.pids().unwrap().contains(&(child.pid() as i32)));
    let (pid, dir) = (child.pid(), child.log_dir().to_path_buf());
    drop(child);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

/// Test that a child ignoring SIGTERM is killed after its grace period, and stop reports a signal.
#[test]
fn child_ignoring_sigterm_is_killed_after_grace() {
    use std::os::unix::process::ExitStatusExt;
    let ns = NetNs::new("stubborn").unwrap();
    let mut child = ns
        .spawn(
            "stubborn",
            Command::new("sh").args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]),
        )
        .unwrap()
        .with_grace(Duration::from_millis(300));
    child
        .wait_for_output("ready", Duration::from_secs(5))
        .unwrap();
    let start = Instant::now();
    let status = child.stop().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        ns.pids().unwrap().is_empty(),
        "the sleep grandchild is gone too"
    );
}

/// Test that dropping a namespace kills processes still running in it, even if their guard lives on.
#[test]
fn dropping_a_namespace_kills_its_processes() {
    let ns = NetNs::new("owner").unwrap();
    let name = ns.name().to_string();
    let mut child = ns
        .spawn("orphan", Command::new("sleep").arg("600"))
        .unwrap();
    drop(ns);
    assert!(child
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .is_some());
    assert!(!netns_list().contains(&name));
}

/// Test that `enter` runs code in the namespace and that sockets stay there afterwards.
#[test]
fn enter_runs_code_inside_the_namespace() {
    let ns = NetNs::new("enter").unwrap();
    let links = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(links.contains("lo:") && !links.contains("eth"), "{links}");
    let srv = TcpServer::start(
        &ns,
        "127.0.0.1:0".parse().unwrap(),
        "inner",
        TcpMode::KeepOpen,
    )
    .unwrap();
    assert_eq!(
        tcp_request(&ns, srv.addr(), "hi").unwrap().identity,
        "inner"
    );
    // An address that exists only inside the namespace can be bound only there.
    ns.ip(&["addr", "add", "198.51.100.1/32", "dev", "lo"])
        .unwrap();
    let udp = lb_tests::UdpServer::start(&ns, "198.51.100.1:0".parse().unwrap(), "inner").unwrap();
    assert_eq!(udp_request(&ns, udp.addr(), "hi").unwrap().peer, udp.addr());
}

/// Test that a private bpffs is visible inside `ip netns exec`, and its pins are removed on drop.
#[test]
fn bpffs_is_private_visible_in_netns_and_cleaned() {
    let bpffs = BpffsGuard::new("pins").unwrap();
    let ns = NetNs::new("pins").unwrap();
    let dir = bpffs.path().join("lb");
    std::fs::create_dir(&dir).unwrap();
    let pin = dir.join("test_map");
    let pin_s = pin.to_str().unwrap();
    #[rustfmt::skip]
    ns.run("bpftool", &["map", "create", pin_s, "type", "hash", "key", "4", "value", "4", "entries", "8", "name", "lbt_test"]).unwrap();
    assert_eq!(bpffs.pins().unwrap(), vec![pin.clone()]);
    let shown = ns
        .run("bpftool", &["map", "show", "pinned", pin_s])
        .unwrap();
    assert!(shown.contains("lbt_test"), "{shown}");
    let other = BpffsGuard::new("other").unwrap();
    assert!(other.pins().unwrap().is_empty());
    let path = bpffs.path().to_path_buf();
    drop(bpffs);
    assert!(!path.exists());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(path.to_str().unwrap()));
}

/// Test that removing a pod deletes its host-side interface from the node.
#[test]
fn removing_a_pod_removes_its_host_interface() {
    let mut node = two_pods("rmpod");
    let ifname = node.pod("server").host_ifname().to_string();
    assert!(node.ns().ifindex(&ifname).is_ok());
    node.remove_pod("server").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.ns().ifindex(&ifname).is_ok() {
        assert!(Instant::now() < deadline, "{ifname} still present");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        node.add_pod("client", [10, 244, 0, 3]).is_err(),
        "duplicate name"
    );
    assert!(
        node.add_pod("x", [10, 244, 1, 3]).is_err(),
        "outside the pod CIDR"
    );
}

/// Test that in a two-node cluster pods talk across nodes over the fabric, without NAT, and the
/// external client reaches each node's NIC address.
#[test]
fn two_node_cluster_routes_pods_across_nodes() {
    let mut cluster = Cluster::new("two", 2).unwrap();
    cluster.node_mut(0).add_pod("a", [10, 244, 0, 5]).unwrap();
    cluster.node_mut(1).add_pod("b", [10, 244, 1, 5]).unwrap();
    let (a, b) = (cluster.node(0).pod("a"), cluster.node(1).pod("b"));
    let _tcp = b.tcp_server(80).unwrap();
    let _udp = b.udp_server(53).unwrap();
    let r = tcp_request(a.ns(), b.addr(80), "across").unwrap();
    assert_eq!((r.identity.as_str(), r.peer), ("b", b.addr(80)));
    assert_eq!(r.client_seen.ip(), IpAddr::V4(a.ip()));
    let r = udp_request(a.ns(), b.addr(53), "across").unwrap();
    assert_eq!((r.identity.as_str(), r.peer), ("b", b.addr(53)));
    // The packets left node 0 on its NIC.
    assert!(cluster.node(0).ns().link_stats("eth0").unwrap().tx_packets > 0);
    for node in cluster.nodes() {
        let nic = SocketAddr::from((node.nic_ip().unwrap(), 30080));
        let _srv = TcpServer::start(node.ns(), nic, "host", TcpMode::KeepOpen).unwrap();
        let r = tcp_request(cluster.external(), nic, "hi").unwrap();
        assert_eq!(r.client_seen.ip(), IpAddr::V4(lb_tests::topo::EXTERNAL_IP));
    }
    let names: Vec<String> = [cluster.fabric(), cluster.external()]
        .into_iter()
        .chain(cluster.nodes().iter().map(|n| n.ns()))
        .map(|ns| ns.name().to_string())
        .collect();
    drop(cluster);
    let listed = netns_list();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "{names:?} in {listed:?}"
    );
}
