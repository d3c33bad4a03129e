//! The agent on one node with real traffic: a client pod and backend pods in their own network
//! namespaces, the real `lb-agent` binary programming real BPF maps from a manifests directory.
//! Needs root. Run after `cargo build --release -p lb-agent` (or set LB_AGENT_BIN).

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use lb_common::csum::{checksum, pseudo_header_seed};
use lb_common::hash::{flow_hash, slot_of};
use lb_tests::Client;

/// Test body: 300 new TCP connections spread over 3 backends, answered from the VIP.
fn tcp_connections_spread(hook: Hook) {
    let lab = Lab::with_echo("tcp-spread", 3, hook, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let n = 300;
    tcp_tally(lab.client(), CLIENT_IP, vip, n).assert_spread(n, &["b1", "b2", "b3"], 0.15);
}

/// Test body: 300 UDP flows spread over 3 backends, answered from the VIP.
fn udp_flows_spread(hook: Hook) {
    let lab = Lab::with_echo("udp-spread", 3, hook, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(53);
    let n = 300;
    udp_tally(lab.client(), CLIENT_IP, vip, n).assert_spread(n, &["b1", "b2", "b3"], 0.15);
}

/// Test that with the tc pod hook, 300 new TCP connections to a ClusterIP spread over all 3
/// backends without a failure, each answered from the VIP and each backend seeing the client's
/// real address.
#[test]
fn tcp_connections_spread_over_all_backends_with_the_tc_hook() {
    tcp_connections_spread(Hook::Tc);
}

/// Test that with the XDP pod hook, 300 new TCP connections to a ClusterIP spread over all 3
/// backends without a failure, each answered from the VIP and each backend seeing the client's
/// real address.
#[test]
fn tcp_connections_spread_over_all_backends_with_the_xdp_hook() {
    tcp_connections_spread(Hook::Xdp);
}

/// Test that with the tc pod hook, 300 UDP flows to a ClusterIP spread over all 3 backends, each
/// answer coming from VIP:53 and each backend seeing the client's real address.
#[test]
fn udp_flows_spread_over_all_backends_with_the_tc_hook() {
    udp_flows_spread(Hook::Tc);
}

/// Test that with the XDP pod hook, 300 UDP flows to a ClusterIP spread over all 3 backends, each
/// answer coming from VIP:53 and each backend seeing the client's real address.
#[test]
fn udp_flows_spread_over_all_backends_with_the_xdp_hook() {
    udp_flows_spread(Hook::Xdp);
}

/// One connection of the client loop in [`endpoints_added_and_removed_under_traffic_take_effect_and_no_connection_fails`].
struct Attempt {
    start: Instant,
    end: Instant,
    /// The client port, once connected.
    port: Option<u16>,
    /// The backend that answered, or what went wrong.
    result: Result<String, String>,
}

/// Make connections to `vip` one after another (one request each) until `stop`.
fn client_loop(
    client: Client<'_>,
    vip: SocketAddr,
    stop: &AtomicBool,
    done: &AtomicUsize,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let msg = format!("loop-{i}");
        i += 1;
        let start = Instant::now();
        let (port, result) = match client.tcp_conn(vip) {
            Err(e) => (None, Err(format!("{msg}: {e:#}"))),
            Ok(mut conn) => {
                let port = conn.local().port();
                let reply = conn.request(&msg);
                (Some(port), check_reply(vip, CLIENT_IP, &msg, reply))
            }
        };
        attempts.push(Attempt {
            start,
            end: Instant::now(),
            port,
            result,
        });
        done.fetch_add(1, Ordering::Relaxed);
    }
    attempts
}

/// Wait until `done` has grown by `more` (the client loop made that many more connections).
fn wait_progress(done: &AtomicUsize, more: usize) {
    let target = done.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "the client loop made {} of {target} connections in 10 s",
            done.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The backend (address) a new TCP flow from the client's `port` to `vip` gets from a frontend's
/// slot table as `inspect --json` shows it: the kernel's own flow hash and slot choice.
fn slot_backend(frontend: &serde_json::Value, vip: SocketAddr, port: u16) -> String {
    let slots = frontend["backends"].as_array().expect("backends");
    let (SocketAddr::V4(v), n) = (vip, slots.len() as u32) else {
        unreachable!("IPv4 VIP")
    };
    let hash = flow_hash(
        u32::from_ne_bytes(CLIENT_IP.octets()),
        u32::from_ne_bytes(v.ip().octets()),
        port.to_be(),
        v.port().to_be(),
        6,
    );
    let slot = u64::from(slot_of(hash, n));
    slots
        .iter()
        .find(|s| s["slot"].as_u64() == Some(slot))
        .and_then(|s| s["addr"].as_str())
        .unwrap_or("(none)")
        .to_string()
}

/// Test that endpoints added (file renamed into the directory) and removed (file rewritten in
/// place) while a client makes connections without pause take effect: new connections reach the
/// added backend, none reaches the removed one after the sync, and no connection fails.
///
/// The one connection that may be in flight to the removed backend at the moment of removal (its
/// flow's backend is gone, so its next packet is balanced anew and gets a reset) is excused only
/// if the kernel's own flow hash over the pre-removal slot table says it went there.
#[test]
fn endpoints_added_and_removed_under_traffic_take_effect_and_no_connection_fails() {
    let lab = Lab::with_echo("churn", 3, Hook::Tc, &[1, 2]);
    let svc = echo_service();
    let vip = svc.vip(80);

    let (stop, done) = (AtomicBool::new(false), AtomicUsize::new(0));
    let lab = &lab;
    let (attempts, t_added, t_remove, t_removed, table) = thread::scope(|s| {
        let client = s.spawn(|| client_loop(lab.client(), vip, &stop, &done));
        let stop_on_panic = StopOnDrop(&stop);
        wait_progress(&done, 100);
        // Add b3: the new file is renamed into the directory.
        lab.manifests
            .replace("echo.yaml", &echo_yaml(&[1, 2, 3]))
            .unwrap();
        lab.wait_echo(&[1, 2, 3]);
        let t_added = Instant::now();
        wait_progress(&done, 300);
        // Remove b2: the file is rewritten in place.
        let before = lab.inspect();
        let table = frontend(&before, vip, Protocol::Tcp).unwrap().clone();
        let t_remove = Instant::now();
        lab.manifests
            .write("echo.yaml", &echo_yaml(&[1, 3]))
            .unwrap();
        lab.wait_echo(&[1, 3]);
        let t_removed = Instant::now();
        wait_progress(&done, 300);
        drop(stop_on_panic);
        (client.join().unwrap(), t_added, t_remove, t_removed, table)
    });

    // The attribution below relies on the kernel choosing backends with lb-common's flow hash over
    // the slot table inspect shows; check that on the connections made with that very table.
    let mispredicted: Vec<String> = attempts
        .iter()
        .filter(|a| a.start > t_added && a.end < t_remove)
        .filter_map(|a| {
            let (Some(port), Ok(who)) = (a.port, &a.result) else {
                return None;
            };
            let predicted = slot_backend(&table, vip, port);
            let actual = SocketAddr::from((lab.node.pod(who).ip(), TCP_TARGET)).to_string();
            (predicted != actual).then(|| format!("port {port}: {actual}, predicted {predicted}"))
        })
        .collect();
    assert!(
        mispredicted.is_empty(),
        "backend choice differs from lb-common's flow hash: {mispredicted:?}"
    );
    let b2 = SocketAddr::from((backend_ip(2), TCP_TARGET)).to_string();
    let mut excused = Vec::new();
    let mut failed = Vec::new();
    for a in &attempts {
        let Err(e) = &a.result else { continue };
        let in_flight = a.start < t_removed && a.end > t_remove;
        match a.port {
            Some(port) if in_flight && slot_backend(&table, vip, port) == b2 => excused.push(e),
            _ => failed.push(e),
        }
    }
    println!(
        "{} connections; excused (in flight to the removed backend): {excused:?}",
        attempts.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        attempts.len()
    );
    assert!(excused.len() <= 1, "{excused:?}");
    let answered = |from: Instant, to: Instant, who: &str| {
        attempts
            .iter()
            .filter(|a| a.start > from && a.start < to && a.result.as_deref() == Ok(who))
            .count()
    };
    let far = t_removed + Duration::from_secs(3600);
    let b3_added = answered(t_added, t_remove, "b3");
    assert!(
        b3_added >= 30,
        "b3 answered {b3_added} connections after it was added"
    );
    assert_eq!(
        answered(t_removed, far, "b2"),
        0,
        "b2 answered after its removal"
    );
    for b in ["b1", "b3"] {
        assert!(answered(t_removed, far, b) >= 50, "{b} after the removal");
    }
    let after = lab.inspect();
    for reason in [
        "drop_no_slot",
        "abort_rewrite",
        "drop_no_backend",
        "reject_no_backend",
    ] {
        assert_eq!(verdict(&after, reason), 0, "{reason}");
    }
}

/// Sets the flag when dropped, so a panicking test stops its client loop (and the scope ends).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Test that a long-lived TCP connection keeps its backend when the backend set changes (one
/// backend added, a different one removed): it answers from the same backend many times after.
#[test]
fn a_long_lived_connection_keeps_its_backend_when_the_backend_set_changes() {
    let lab = Lab::with_echo("keep", 4, Hook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let mut conn = lab.client().tcp_conn(vip).unwrap();
    let first = conn.request("first").unwrap();
    let x: u8 = first.identity[1..].parse().unwrap();
    // Remove a backend other than this connection's, add b4.
    let removed = [1, 2, 3].into_iter().find(|b| *b != x).unwrap();
    let mut new_set: Vec<u8> = [1, 2, 3, 4].into_iter().filter(|b| *b != removed).collect();
    new_set.sort();
    lab.manifests
        .replace("echo.yaml", &echo_yaml(&new_set))
        .unwrap();
    lab.wait_echo(&new_set);
    for i in 0..100 {
        let msg = format!("again-{i}");
        let who = check_reply(vip, CLIENT_IP, &msg, conn.request(&msg)).unwrap();
        assert_eq!(
            who, first.identity,
            "request {i} on the long-lived connection"
        );
    }
    assert_eq!(conn.peer(), vip);
    // New connections use the new set.
    let n = 90;
    tcp_tally(lab.client(), CLIENT_IP, vip, n).assert_spread(n, &backend_names(&new_set), 0.15);
}

/// Test that when the backend of a long-lived flow is removed, new connections never go to it.
///
/// What happens to the old flow (seen here, not asserted): its conntrack entry names a backend
/// that no longer exists, so its next packet is balanced anew like a first packet, reaches
/// another backend that has no such connection, and the client gets a reset (from the VIP).
#[test]
fn new_connections_avoid_a_removed_backend_that_a_live_flow_still_uses() {
    let mut lab = Lab::with_echo("gone", 3, Hook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let mut conn = lab.client().tcp_conn(vip).unwrap();
    let x: u8 = conn.request("first").unwrap().identity[1..]
        .parse()
        .unwrap();
    let rest: Vec<u8> = [1, 2, 3].into_iter().filter(|b| *b != x).collect();
    lab.manifests.write("echo.yaml", &echo_yaml(&rest)).unwrap();
    lab.wait_echo(&rest);
    let n = 90;
    let names = backend_names(&rest);
    tcp_tally(lab.client(), CLIENT_IP, vip, n).assert_spread(n, &names, 0.15);
    let old = match conn.request("after removal") {
        Ok(r) => format!("answered by {} from {}", r.identity, r.peer),
        Err(e) => format!("{e:#}"),
    };
    println!("the old flow to removed backend b{x}, after the removal: {old}");
    assert!(lab.agent().is_running(), "the agent exited");
    tcp_tally(lab.client(), CLIENT_IP, vip, 10).assert_spread(10, &names, 0.0);
}

/// The Service without endpoints of the tests below: `empty`, 10.96.0.20, TCP 80 and UDP 53.
fn empty_service() -> Service {
    Service::new("empty", [10, 96, 0, 20])
        .port("http", Protocol::Tcp, 80, TCP_TARGET)
        .port("dns", Protocol::Udp, 53, UDP_TARGET)
}

/// A lab with `echo` on b1..b3 and `empty` without endpoints, the agent synced.
fn lab_with_an_empty_service(tag: &str) -> Lab {
    let mut lab = Lab::new(tag, 3, Hook::Tc);
    let empty = empty_service();
    lab.manifests
        .write("echo.yaml", &echo_yaml(&[1, 2, 3]))
        .unwrap();
    lab.manifests
        .write("empty.yaml", &empty.with_endpoints(NODE, &[]))
        .unwrap();
    lab.start_agent();
    lab.wait_echo(&[1, 2, 3]);
    lab.wait_backends(empty.vip(80), Protocol::Tcp, &[]);
    lab.wait_backends(empty.vip(53), Protocol::Udp, &[]);
    lab
}

/// Test that connections to a Service without endpoints fail, counted as reject_no_backend (the
/// frontend is programmed with kube-proxy's REJECT policy) and creating no flow, while another
/// Service keeps working.
#[test]
fn a_service_without_endpoints_fails_its_connections_and_others_keep_working() {
    let lab = lab_with_an_empty_service("empty");
    let (echo, empty) = (echo_service(), empty_service());
    let before = lab.inspect();
    let no_backend = |v: &serde_json::Value| verdict(v, "reject_no_backend");
    let client = lab.client().timeout(Duration::from_millis(500));
    for i in 0..3 {
        let r = client.tcp(empty.vip(80), &format!("tcp-{i}"));
        assert!(
            r.is_err(),
            "TCP to a Service without endpoints answered: {r:?}"
        );
        let r = client.udp(empty.vip(53), &format!("udp-{i}"));
        assert!(
            r.is_err(),
            "UDP to a Service without endpoints answered: {r:?}"
        );
    }
    let after = lab.inspect();
    assert!(
        no_backend(&after) >= no_backend(&before) + 6,
        "no-backend verdicts before {} after {}",
        no_backend(&before),
        no_backend(&after)
    );
    let fe = frontend(&after, empty.vip(80), Protocol::Tcp).unwrap();
    assert_eq!(
        fe["on_empty"], "reject",
        "kube-proxy rejects when a Service has no endpoints"
    );
    assert_eq!(fe["new_flows"], 0);
    let n = 90;
    tcp_tally(lab.client(), CLIENT_IP, echo.vip(80), n).assert_spread(n, &["b1", "b2", "b3"], 0.15);
    udp_tally(lab.client(), CLIENT_IP, echo.vip(53), n).assert_spread(n, &["b1", "b2", "b3"], 0.15);
}

/// Test that with the tc pod hook a Service without endpoints refuses TCP connections and UDP
/// datagrams at once (kube-proxy REJECTs: the client gets ICMP port unreachable, so connect and a
/// connected UDP socket fail with ECONNREFUSED), instead of leaving them to time out. (With the
/// XDP pod hook the program cannot send into the pod and drops instead, counted as
/// reject_dropped; not tested here.)
#[test]
fn a_service_without_endpoints_refuses_connections_at_once() {
    let lab = lab_with_an_empty_service("refuse");
    let empty = empty_service();
    let is_refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
    let started = Instant::now();
    let err = lab
        .client()
        .timeout(Duration::from_secs(3))
        .tcp(empty.vip(80), "hello")
        .expect_err("a Service without endpoints answered TCP");
    let refused = err
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(is_refused);
    assert!(refused, "TCP not refused: {err:#}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "TCP refused after {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let udp = lab.client_ns().enter(|| -> std::io::Result<usize> {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        sock.connect(empty.vip(53))?;
        sock.send(b"hello")?;
        sock.recv(&mut [0u8; 512])
    });
    match udp {
        Err(e) if is_refused(&e) => {}
        other => panic!("UDP not refused: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "UDP refused after {:?}",
        started.elapsed()
    );
    let v = lab.inspect();
    assert!(verdict(&v, "reject_no_backend") >= 2, "{:#}", v["verdicts"]);
}

/// Test that bad manifests (a file that is not YAML, a Service with port 0) are reported
/// in the agent's log, at start and when one appears later, and every other Service still works.
#[test]
fn bad_manifests_are_reported_and_other_services_keep_working() {
    let mut lab = Lab::new("bad", 3, Hook::Tc);
    let echo = echo_service();
    let other = Service::new("other", [10, 96, 0, 11]).port("web", Protocol::Tcp, 8000, TCP_TARGET);
    let bad_port =
        Service::new("badport", [10, 96, 0, 12]).port("web", Protocol::Tcp, 0, TCP_TARGET);
    let m = &lab.manifests;
    m.write("echo.yaml", &echo_yaml(&[1, 2, 3])).unwrap();
    m.write(
        "other.yaml",
        &other.with_endpoints(NODE, &backend_ips(&[1, 2])),
    )
    .unwrap();
    m.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n",
    )
    .unwrap();
    m.write(
        "badport.yaml",
        &bad_port.with_endpoints(NODE, &backend_ips(&[3])),
    )
    .unwrap();
    lab.start_agent();
    lab.wait_echo(&[1, 2, 3]);
    lab.wait_backends(
        other.vip(8000),
        Protocol::Tcp,
        &backend_addrs_of(&[1, 2], TCP_TARGET),
    );
    let log = lab.agent_log();
    assert!(
        log.contains("broken.yaml"),
        "the broken file is not reported:\n{log}"
    );
    assert!(
        log.contains("default/badport") && log.contains("invalid port"),
        "the invalid port is not reported:\n{log}"
    );
    let v = lab.inspect();
    let frontends = frontend_summary(&v);
    assert!(
        !frontends.iter().any(|f| f.starts_with("10.96.0.12:")),
        "a frontend for the bad Service: {frontends:?}"
    );
    let check = |lab: &Lab| {
        // 90 flows: the chance that a backend of three gets under 15% by luck is 1 in 8,000
        // (at 45 it was 1 in 160 per tally, four three-way tallies per run).
        let n = 90;
        tcp_tally(lab.client(), CLIENT_IP, echo.vip(80), n).assert_spread(
            n,
            &["b1", "b2", "b3"],
            0.15,
        );
        udp_tally(lab.client(), CLIENT_IP, echo.vip(53), n).assert_spread(
            n,
            &["b1", "b2", "b3"],
            0.15,
        );
        tcp_tally(lab.client(), CLIENT_IP, other.vip(8000), n).assert_spread(
            n,
            &["b1", "b2"],
            0.15,
        );
    };
    check(&lab);
    // A broken file appearing while the agent runs: reported, nothing else changes.
    lab.manifests
        .replace("late.yaml", "kind: EndpointSlice\n\tnot: [yaml\n")
        .unwrap();
    let log = lab.wait_log_count("late.yaml", 1);
    assert!(lab.agent().is_running(), "the agent exited:\n{log}");
    check(&lab);
    assert_eq!(frontend_summary(&lab.inspect()), frontend_summary(&v));
}

/// Test that a pod interface created after the agent started gets the program: a new client pod
/// reaches the Service over TCP and UDP, answered from the VIP, backends seeing its address.
#[test]
fn a_pod_created_after_the_agent_started_reaches_the_service() {
    let mut lab = Lab::with_echo("late", 3, Hook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let late_ip = Ipv4Addr::new(10, 244, 0, 30);
    let ifname = lab
        .node
        .add_pod("late", late_ip)
        .unwrap()
        .host_ifname()
        .to_string();
    lab.wait_inspect(&format!("a link on {ifname}"), |v| {
        v["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["ifname"] == ifname.as_str()))
    });
    let late = Client::new(lab.node.pod("late").ns());
    let n = 90;
    tcp_tally(late, late_ip, svc.vip(80), n).assert_spread(n, &["b1", "b2", "b3"], 0.15);
    udp_tally(late, late_ip, svc.vip(53), n).assert_spread(n, &["b1", "b2", "b3"], 0.15);
}

/// Test that the dataplane outlives the agent: an established connection keeps working with the
/// agent stopped (SIGTERM, exit 0) and after a new agent adopts the pinned maps; then
/// `lb-agent cleanup` removes every pin, after which the VIP no longer answers and pod-to-pod
/// traffic still flows.
#[test]
fn established_connections_survive_an_agent_restart_and_cleanup_removes_everything() {
    let mut lab = Lab::with_echo("restart", 3, Hook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let mut conn = lab.client().tcp_conn(vip).unwrap();
    let ask = |conn: &mut lb_tests::TcpConn, msg: &str| {
        check_reply(vip, CLIENT_IP, msg, conn.request(msg)).unwrap_or_else(|e| panic!("{e}"))
    };
    let x = ask(&mut conn, "first");

    let status = lab.stop_agent();
    assert!(
        status.success(),
        "the agent exited with {status} on SIGTERM"
    );
    assert!(
        !lab.bpffs.pins().unwrap().is_empty(),
        "no pins left by the agent"
    );
    assert_eq!(
        ask(&mut conn, "no agent"),
        x,
        "the connection moved with no agent running"
    );
    let n = 30;
    tcp_tally(lab.client(), CLIENT_IP, vip, n).assert_spread(n, &["b1", "b2", "b3"], 0.0);

    lab.start_agent();
    let log = lab.agent_log();
    assert!(
        log.contains("adopting"),
        "the new agent did not adopt the pinned maps:\n{log}"
    );
    for i in 0..20 {
        assert_eq!(ask(&mut conn, &format!("after restart {i}")), x);
    }
    tcp_tally(lab.client(), CLIENT_IP, vip, n).assert_spread(n, &["b1", "b2", "b3"], 0.0);

    let status = lab.stop_agent();
    assert!(
        status.success(),
        "the second agent exited with {status} on SIGTERM"
    );
    let links = pinned_link_ids(&lab);
    assert_eq!(links.len(), 4, "links of the 4 pod interfaces: {links:?}");
    assert!(links.iter().all(|id| link_exists(&lab, *id)));
    let out = lab.agent_cmd(&["cleanup"]);
    let pins = lab.bpffs.pins().unwrap();
    assert!(
        pins.is_empty(),
        "pins left after cleanup: {pins:?}\ncleanup said:\n{out}"
    );
    let left: Vec<u64> = links
        .into_iter()
        .filter(|id| link_exists(&lab, *id))
        .collect();
    assert!(
        left.is_empty(),
        "links still in the kernel after cleanup: {left:?}"
    );
    // The kernel detaches a link whose last reference went away a little later (see
    // `cleanup_detaches_every_program_before_it_returns`): poll.
    let client = lab.client().timeout(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(2);
    while client.tcp(vip, "after cleanup").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the VIP still answers 2 s after cleanup"
        );
    }
    let r = client.udp(svc.vip(53), "after cleanup");
    assert!(r.is_err(), "the VIP answered UDP after cleanup: {r:?}");
    let b1 = lab.node.pod("b1").addr(TCP_TARGET);
    let r = client.tcp(b1, "direct").unwrap();
    assert_eq!((r.identity.as_str(), r.peer), ("b1", b1));
}

/// Test that when `lb-agent cleanup` returns, no program translates traffic any more: the very
/// next connections to the VIP fail.
#[test]
fn cleanup_detaches_every_program_before_it_returns() {
    let mut lab = Lab::with_echo("cleanup", 3, Hook::Tc, &[1, 2, 3]);
    let vip = echo_service().vip(80);
    let status = lab.stop_agent();
    assert!(
        status.success(),
        "the agent exited with {status} on SIGTERM"
    );
    lab.agent_cmd(&["cleanup"]);
    let client = lab.client().timeout(Duration::from_millis(200));
    let answered: Vec<String> = (0..20)
        .filter_map(|i| client.tcp(vip, &format!("after cleanup {i}")).ok())
        .map(|r| r.identity)
        .collect();
    assert!(
        answered.is_empty(),
        "answered after cleanup returned: {answered:?}"
    );
}

/// The kernel ids of the BPF links pinned under the lab's bpffs (`bpftool link show pinned`).
fn pinned_link_ids(lab: &Lab) -> Vec<u64> {
    let links = lab.bpffs.path().join("links");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&links).unwrap().flatten() {
        let path = entry.path();
        let out = lab
            .node
            .ns()
            .run(
                "bpftool",
                &["-j", "link", "show", "pinned", path.to_str().unwrap()],
            )
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        ids.push(
            v["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("no link id: {v}")),
        );
    }
    ids
}

/// Whether the kernel still has BPF link `id`.
fn link_exists(lab: &Lab, id: u64) -> bool {
    lab.node
        .ns()
        .run("bpftool", &["link", "show", "id", &id.to_string()])
        .is_ok()
}

/// Test that `lb-agent inspect --json` after traffic shows the frontend with its 3 backends,
/// exactly one new flow per connection made, dnat_new_flow and reverse_nat counts, and both
/// conntrack entries of every connection (client side to the VIP, backend side back).
#[test]
fn inspect_shows_backends_counters_and_conntrack_after_traffic() {
    let lab = Lab::with_echo("inspect", 3, Hook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let n = 30;
    let mut flows = Vec::new();
    for i in 0..n {
        let r = lab.client().tcp(vip, &format!("inspect-{i}")).unwrap();
        assert_eq!(r.peer, vip);
        let backend = lab.node.pod(&r.identity).addr(TCP_TARGET);
        flows.push((SocketAddr::from((CLIENT_IP, r.local.port())), backend));
    }
    // 10 flows over 3 backends miss one of them 5% of the time: the spread itself is checked by
    // the spread tests; here every flow must be answered, by a backend of the Service.
    let udp = 10;
    let tally = udp_tally(lab.client(), CLIENT_IP, svc.vip(53), udp);
    assert!(tally.errors.is_empty(), "{tally:?}");
    assert_eq!(tally.ok(), udp, "{tally:?}");
    assert!(
        tally
            .counts
            .keys()
            .all(|b| ["b1", "b2", "b3"].contains(&b.as_str())),
        "{tally:?}"
    );

    let v = lab.inspect();
    let fe = frontend(&v, vip, Protocol::Tcp).unwrap();
    assert_eq!(
        backend_addrs(fe),
        backend_addrs_of(&[1, 2, 3], TCP_TARGET)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert_eq!(fe["new_flows"], n, "{fe:#}");
    assert!(fe["packets"].as_u64().unwrap() >= 5 * n as u64, "{fe:#}");
    assert!(fe["bytes"].as_u64().unwrap() > 0, "{fe:#}");
    let fe_udp = frontend(&v, svc.vip(53), Protocol::Udp).unwrap();
    assert_eq!(fe_udp["new_flows"], udp, "{fe_udp:#}");
    assert!(verdict(&v, "dnat_new_flow") >= (n + udp) as u64);
    assert!(verdict(&v, "dnat_established") > 0);
    assert!(verdict(&v, "reverse_nat") > 0);
    let ct = v["conntrack"].as_array().unwrap();
    let has = |dir: &str, src: SocketAddr, dst: SocketAddr, nat: SocketAddr| {
        ct.iter().any(|e| {
            e["protocol"] == "TCP"
                && e["direction"] == dir
                && e["src"] == src.to_string().as_str()
                && e["dst"] == dst.to_string().as_str()
                && e["nat"] == nat.to_string().as_str()
        })
    };
    for (client, backend) in &flows {
        assert!(
            has("original", *client, vip, *backend),
            "no original entry {client} -> {vip} nat {backend}"
        );
        assert!(
            has("reply", *backend, *client, vip),
            "no reply entry {backend} -> {client} nat {vip}"
        );
    }
}

/// What a rewritten packet's L4 checksum field held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Csum {
    /// A correct full checksum over pseudo-header and segment.
    Full,
    /// Exactly the pseudo-header seed for the packet's own addresses and length
    /// (what a CHECKSUM_PARTIAL packet carries).
    Seed,
    /// Zero in a UDP header: no checksum.
    Zero,
    /// None of these.
    Wrong,
}

/// One class of checked packets: which capture, protocol, whether the kernel marked them
/// CHECKSUM_PARTIAL, what their L4 checksum field held, what it had to hold, and whether the
/// IPv4 header checksum was right.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CsumKey {
    side: &'static str,
    proto: u8,
    partial: bool,
    kind: Csum,
    want: Csum,
    ip_ok: bool,
}

/// Source ports of the UDP datagrams the checksum tests send without a checksum (field 0).
const NO_CSUM_PORTS: std::ops::Range<u16> = 40_500..40_600;

/// Classify the checksums of an IPv4 TCP/UDP frame for which `keep(src, dst, proto)` holds;
/// `None` for other frames. What the L4 field must hold: the seed in a CHECKSUM_PARTIAL packet
/// (the stack completes the sum from it), zero in a UDP datagram sent without a checksum, a full
/// checksum otherwise.
fn classify(
    side: &'static str,
    frame: &Frame,
    keep: &dyn Fn(SocketAddrV4, SocketAddrV4, u8) -> bool,
) -> Option<(CsumKey, String)> {
    let eth = etherparse::Ethernet2HeaderSlice::from_slice(&frame.data).ok()?;
    if eth.ether_type() != etherparse::EtherType::IPV4 {
        return None;
    }
    let l3 = &frame.data[eth.slice().len()..];
    let ip = etherparse::Ipv4HeaderSlice::from_slice(l3).ok()?;
    let proto = ip.protocol().0;
    let csum_at = match proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    let l4 = l3.get(ip.slice().len()..usize::from(ip.total_len()))?;
    if l4.len() < csum_at + 2 {
        return None;
    }
    let src = SocketAddrV4::new(ip.source_addr(), u16::from_be_bytes([l4[0], l4[1]]));
    let dst = SocketAddrV4::new(ip.destination_addr(), u16::from_be_bytes([l4[2], l4[3]]));
    if !keep(src, dst, proto) {
        return None;
    }
    let seed = pseudo_header_seed(
        u32::from_ne_bytes(src.ip().octets()),
        u32::from_ne_bytes(dst.ip().octets()),
        proto,
        l4.len() as u16,
    );
    let field = u16::from_ne_bytes([l4[csum_at], l4[csum_at + 1]]);
    let udp = proto == 17;
    let kind = if udp && field == 0 {
        Csum::Zero
    } else if checksum(u32::from(seed), l4) == 0 {
        Csum::Full
    } else if field == seed {
        Csum::Seed
    } else {
        Csum::Wrong
    };
    let partial = frame.status & libc::TP_STATUS_CSUMNOTREADY != 0;
    let want = if partial {
        Csum::Seed
    } else if udp && NO_CSUM_PORTS.contains(&src.port()) && side == "backend" {
        Csum::Zero
    } else {
        Csum::Full
    };
    let key = CsumKey {
        side,
        proto,
        partial,
        kind,
        want,
        ip_ok: checksum(0, ip.slice()) == 0,
    };
    let text = format!(
        "{side} proto {proto} {src} -> {dst} len {} field {:#06x} seed {:#06x} status {:#x}",
        l4.len(),
        u16::from_be(field),
        u16::from_be(seed),
        frame.status
    );
    Some((key, text))
}

/// Send raw IPv4 packets (header checksum and length filled in by the kernel) from `ns`: they
/// carry exactly the L4 checksum given, and the stack marks them CHECKSUM_NONE.
fn send_raw(ns: &lb_tests::NetNs, packets: &[(Ipv4Addr, Vec<u8>)]) {
    ns.enter(|| {
        // SAFETY: plain syscalls on a socket owned here; buffers are live for each call.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            );
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            for (dst, p) in packets {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
                let n = libc::sendto(
                    fd.as_raw_fd(),
                    p.as_ptr() as *const libc::c_void,
                    p.len(),
                    0,
                    &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                assert_eq!(
                    n,
                    p.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// An IPv4 packet `src -> dst` carrying `l4` (protocol `proto`, checksum field at `csum_at`),
/// with a full L4 checksum unless `no_csum`.
fn raw_packet(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    proto: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
    no_csum: bool,
) -> Vec<u8> {
    l4[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    if !no_csum {
        let seed = pseudo_header_seed(
            u32::from_ne_bytes(src.ip().octets()),
            u32::from_ne_bytes(dst.ip().octets()),
            proto,
            l4.len() as u16,
        );
        let c = match checksum(u32::from(seed), &l4) {
            0 if proto == 17 => 0xffff,
            c => c,
        };
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_ne_bytes());
    }
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&l4);
    p
}

/// UDP datagrams (full checksum, and none) and TCP SYNs with full checksums from the client pod
/// to the Service, sent on a raw socket: packets that are not CHECKSUM_PARTIAL.
fn raw_requests(svc: &Service) -> Vec<(Ipv4Addr, Vec<u8>)> {
    let (SocketAddr::V4(udp_vip), SocketAddr::V4(tcp_vip)) = (svc.vip(53), svc.vip(80)) else {
        unreachable!("IPv4 VIPs")
    };
    let mut out = Vec::new();
    for i in 0..10u16 {
        let payload = vec![b'r'; 1 + usize::from(i)];
        for (sport, no_csum) in [(40_000, false), (NO_CSUM_PORTS.start, true)] {
            let src = SocketAddrV4::new(CLIENT_IP, sport + i);
            let mut udp = Vec::new();
            udp.extend_from_slice(&src.port().to_be_bytes());
            udp.extend_from_slice(&udp_vip.port().to_be_bytes());
            udp.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&payload);
            out.push((*udp_vip.ip(), raw_packet(src, udp_vip, 17, udp, 6, no_csum)));
        }
        let src = SocketAddrV4::new(CLIENT_IP, 41_000 + i);
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&tcp_vip.port().to_be_bytes());
        tcp.extend_from_slice(&(0x1000_0000u32 + u32::from(i)).to_be_bytes()); // seq
        tcp.extend_from_slice(&[0, 0, 0, 0]); // ack
        tcp.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // 20 bytes, SYN, window
        out.push((*tcp_vip.ip(), raw_packet(src, tcp_vip, 6, tcp, 16, false)));
    }
    out
}

/// Test body: capture what arrives in the backend pods (DNATed) and in the client pod (reverse
/// NATed) during TCP and UDP traffic from sockets (CHECKSUM_PARTIAL) and from a raw socket
/// (complete checksums, and UDP without one), and check every checksum.
fn rewritten_packets_have_valid_checksums(hook: Hook) {
    let lab = Lab::with_echo("csum", 3, hook, &[1, 2, 3]);
    let svc = echo_service();
    let captures: Vec<(&'static str, Capture)> = ["b1", "b2", "b3", "client"]
        .into_iter()
        .map(|p| {
            let side = if p == "client" { "client" } else { "backend" };
            (side, Capture::start(lab.node.pod(p).ns(), "eth0"))
        })
        .collect();
    let (conns, lines) = (20, 3);
    for c in 0..conns {
        let mut conn = lab.client().tcp_conn(svc.vip(80)).unwrap();
        for l in 0..lines {
            // Odd and even lengths: the last byte of an odd segment is summed alone.
            let msg = "x".repeat(1 + c + l);
            check_reply(svc.vip(80), CLIENT_IP, &msg, conn.request(&msg)).unwrap();
        }
    }
    for i in 0..conns {
        let msg = "u".repeat(1 + i);
        let r = lab.client().udp(svc.vip(53), &msg);
        check_reply(svc.vip(53), CLIENT_IP, &msg, r).unwrap();
    }
    send_raw(lab.client_ns(), &raw_requests(&svc));
    // Let the answers to the raw packets and the last FIN/ACK exchanges land.
    thread::sleep(Duration::from_millis(200));
    let client_ip = CLIENT_IP;
    let vip_ip = match svc.vip(80) {
        SocketAddr::V4(v) => *v.ip(),
        SocketAddr::V6(_) => unreachable!(),
    };
    let dnated = move |src: SocketAddrV4, dst: SocketAddrV4, proto: u8| {
        *src.ip() == client_ip
            && dst.ip().octets()[..3] == [10, 244, 0]
            && dst.port() == if proto == 6 { TCP_TARGET } else { UDP_TARGET }
    };
    let reverse_nated = move |src: SocketAddrV4, dst: SocketAddrV4, _: u8| {
        *src.ip() == vip_ip && *dst.ip() == client_ip
    };
    let mut counts: BTreeMap<CsumKey, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for (side, cap) in captures {
        let keep: &dyn Fn(SocketAddrV4, SocketAddrV4, u8) -> bool = if side == "client" {
            &reverse_nated
        } else {
            &dnated
        };
        for frame in cap.stop() {
            let Some((key, text)) = classify(side, &frame, keep) else {
                continue;
            };
            if !key.ip_ok || key.kind != key.want {
                bad.push(format!("{key:?}: {text}"));
            }
            *counts.entry(key).or_default() += 1;
        }
    }
    println!("{hook:?} hook, checksums seen: {counts:#?}");
    let total = |side: &str, proto: u8, partial: bool, want: Csum| {
        counts
            .iter()
            .filter(|(k, _)| {
                k.side == side && k.proto == proto && k.partial == partial && k.want == want
            })
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    // From sockets, per TCP connection at least SYN, ACK, 3 requests and FIN reach the backend;
    // SYN-ACK, 3 answers and FIN reach the client.
    assert!(
        total("backend", 6, true, Csum::Seed) >= conns * 6,
        "{counts:#?}"
    );
    assert!(
        total("client", 6, true, Csum::Seed) >= conns * 5,
        "{counts:#?}"
    );
    assert!(
        total("backend", 17, true, Csum::Seed) >= conns,
        "{counts:#?}"
    );
    assert!(
        total("client", 17, true, Csum::Seed) >= conns,
        "{counts:#?}"
    );
    // From the raw socket: 10 SYNs, 10 UDP datagrams with a checksum and 10 without.
    assert!(total("backend", 6, false, Csum::Full) >= 10, "{counts:#?}");
    assert!(total("backend", 17, false, Csum::Full) >= 10, "{counts:#?}");
    assert!(total("backend", 17, false, Csum::Zero) >= 10, "{counts:#?}");
    assert!(
        bad.is_empty(),
        "{} packets with a wrong checksum (of {}): {:#?}",
        bad.len(),
        counts.values().sum::<usize>(),
        &bad[..bad.len().min(20)]
    );
}

/// Test that with the tc pod hook every DNATed and reverse-NATed TCP/UDP packet that arrives
/// in a pod has a correct IPv4 header checksum and the L4 checksum it must have: exactly the
/// pseudo-header seed of its own rewritten addresses when the kernel marks it CHECKSUM_PARTIAL
/// (packets from sockets), a complete and correct one otherwise (packets from a raw socket), and
/// zero in a UDP datagram sent without a checksum. Offloads stay at their defaults.
#[test]
fn rewritten_packets_carry_valid_checksums_with_the_tc_hook() {
    rewritten_packets_have_valid_checksums(Hook::Tc);
}

/// Test that with the XDP pod hook every DNATed and reverse-NATed TCP/UDP packet that arrives
/// in a pod has a correct IPv4 header checksum and the L4 checksum it must have: exactly the
/// pseudo-header seed of its own rewritten addresses when the kernel marks it CHECKSUM_PARTIAL
/// (packets from sockets), a complete and correct one otherwise (packets from a raw socket), and
/// zero in a UDP datagram sent without a checksum. Offloads stay at their defaults.
#[test]
fn rewritten_packets_carry_valid_checksums_with_the_xdp_hook() {
    rewritten_packets_have_valid_checksums(Hook::Xdp);
}

/// Test that the checksum classifier of the tests above tells a full checksum, a seed, a zero UDP
/// checksum and a wrong one apart, and what each packet must carry (no namespaces needed).
#[test]
fn the_checksum_classifier_tells_full_seed_zero_and_wrong_apart() {
    let dst = SocketAddrV4::new(backend_ip(1), UDP_TARGET);
    let udp = |src: SocketAddrV4| {
        let mut l4 = [&src.port().to_be_bytes()[..], &dst.port().to_be_bytes()].concat();
        l4.extend_from_slice(&11u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(b"abc");
        l4
    };
    // An Ethernet frame around a raw packet, with the IPv4 length and checksum the kernel fills.
    let frame = |src: SocketAddrV4, no_csum: bool, status: u32| {
        let mut ip = raw_packet(src, dst, 17, udp(src), 6, no_csum);
        let total = ip.len() as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = checksum(0, &ip[..20]);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut data = vec![0u8; 12];
        data.extend_from_slice(&[0x08, 0x00]);
        data.extend_from_slice(&ip);
        Frame { data, status }
    };
    let keep = |_: SocketAddrV4, _: SocketAddrV4, _: u8| true;
    let kinds = |f: &Frame| {
        let (k, _) = classify("backend", f, &keep).expect("a UDP frame");
        assert!(k.ip_ok);
        (k.kind, k.want)
    };
    let src = SocketAddrV4::new(CLIENT_IP, 40_000);
    let at = 14 + 20 + 6;
    let full = frame(src, false, 0);
    assert_eq!(kinds(&full), (Csum::Full, Csum::Full));
    let mut wrong = full.clone();
    wrong.data[at] ^= 1;
    assert_eq!(kinds(&wrong), (Csum::Wrong, Csum::Full));
    let partial = libc::TP_STATUS_CSUMNOTREADY;
    let mut seed = frame(src, true, partial);
    let s = pseudo_header_seed(
        u32::from_ne_bytes(src.ip().octets()),
        u32::from_ne_bytes(dst.ip().octets()),
        17,
        11,
    );
    seed.data[at..at + 2].copy_from_slice(&s.to_ne_bytes());
    assert_eq!(kinds(&seed), (Csum::Seed, Csum::Seed));
    // A CHECKSUM_PARTIAL packet must carry the seed: the stack adds the segment's sum to it.
    assert_eq!(
        kinds(&Frame {
            status: partial,
            ..full
        }),
        (Csum::Full, Csum::Seed)
    );
    assert_eq!(kinds(&frame(src, true, 0)), (Csum::Zero, Csum::Full));
    let no_csum_src = SocketAddrV4::new(CLIENT_IP, NO_CSUM_PORTS.start);
    assert_eq!(
        kinds(&frame(no_csum_src, true, 0)),
        (Csum::Zero, Csum::Zero)
    );
}
