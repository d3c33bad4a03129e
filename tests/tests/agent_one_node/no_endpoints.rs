//! Services the agent cannot program as asked: a Service without endpoints (its connections
//! fail, refused at once, counted) and bad manifests (reported; every other Service still works).

use std::time::{Duration, Instant};

use lb_tests::inspect::{frontend, frontend_summary, verdict};
use lb_tests::lab::{
    backend_addrs_of, backend_ips, echo_service, echo_yaml, NODE, TCP_TARGET, UDP_TARGET,
};
use lb_tests::objects::{Protocol, Service};
use lb_tests::{Lab, PodHook};

use crate::{MIN_SHARE, SPREAD_FLOWS};

/// The Service without endpoints of the tests below: `empty`, 10.96.0.20, TCP 80 and UDP 53.
fn empty_service() -> Service {
    Service::new("empty", [10, 96, 0, 20])
        .port("http", Protocol::Tcp, 80, TCP_TARGET)
        .port("dns", Protocol::Udp, 53, UDP_TARGET)
}

/// A lab with `echo` on b1..b3 and `empty` without endpoints, the agent synced.
fn lab_with_an_empty_service(tag: &str) -> Lab {
    let mut lab = Lab::new(tag, 3, PodHook::Tc);
    let empty = empty_service();
    let m = lab.manifests();
    m.write("echo.yaml", &echo_yaml(&[1, 2, 3])).unwrap();
    m.write("empty.yaml", &empty.with_endpoints(NODE, &[]))
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
    // Each check fails by chance with P <= 2.2e-8 (see SPREAD_FLOWS).
    let all = ["b1", "b2", "b3"];
    lab.client()
        .tcp_spread(echo.vip(80), SPREAD_FLOWS)
        .assert_spread(&all, MIN_SHARE);
    lab.client()
        .udp_spread(echo.vip(53), SPREAD_FLOWS)
        .assert_spread(&all, MIN_SHARE);
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
    let mut lab = Lab::new("bad", 3, PodHook::Tc);
    let echo = echo_service();
    let other = Service::new("other", [10, 96, 0, 11]).port("web", Protocol::Tcp, 8000, TCP_TARGET);
    let bad_port =
        Service::new("badport", [10, 96, 0, 12]).port("web", Protocol::Tcp, 0, TCP_TARGET);
    let m = lab.manifests();
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
        // Six checks per run, each failing by chance with P <= 2.2e-8 (see SPREAD_FLOWS).
        let client = lab.client();
        let all = ["b1", "b2", "b3"];
        client
            .tcp_spread(echo.vip(80), SPREAD_FLOWS)
            .assert_spread(&all, MIN_SHARE);
        client
            .udp_spread(echo.vip(53), SPREAD_FLOWS)
            .assert_spread(&all, MIN_SHARE);
        client
            .tcp_spread(other.vip(8000), SPREAD_FLOWS)
            .assert_spread(&["b1", "b2"], MIN_SHARE);
    };
    check(&lab);
    // A broken file appearing while the agent runs: reported, nothing else changes.
    lab.manifests()
        .replace("late.yaml", "kind: EndpointSlice\n\tnot: [yaml\n")
        .unwrap();
    let log = lab.wait_log_count("late.yaml", 1);
    assert!(lab.agent().is_running(), "the agent exited:\n{log}");
    check(&lab);
    assert_eq!(frontend_summary(&lab.inspect()), frontend_summary(&v));
}
