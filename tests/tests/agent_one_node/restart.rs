//! The dataplane outliving the agent: established connections across an agent restart (the new
//! agent adopting the pinned maps), and `lb-agent cleanup` removing every program and pin.

use std::time::{Duration, Instant};

use lb_tests::lab::{echo_service, CLIENT_IP, TCP_TARGET};
use lb_tests::{check_reply, Lab, PodHook, TcpConn};

/// Test that the dataplane outlives the agent: an established connection keeps working with the
/// agent stopped (SIGTERM, exit 0) and after a new agent adopts the pinned maps; then
/// `lb-agent cleanup` removes every pin, after which the VIP no longer answers and pod-to-pod
/// traffic still flows.
#[test]
fn established_connections_survive_an_agent_restart_and_cleanup_removes_everything() {
    let mut lab = Lab::with_echo("restart", 3, PodHook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let mut conn = lab.client().tcp_conn(vip).unwrap();
    let ask = |conn: &mut TcpConn, msg: &str| {
        check_reply(vip, Some(CLIENT_IP), msg, conn.request(msg)).unwrap_or_else(|e| panic!("{e}"))
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
    // New connections reach all three backends; one gets none of 60 by chance with
    // P <= 3 (2/3)^60 = 8e-11 (at 30 it was 1.6e-5).
    let n = 60;
    let all = ["b1", "b2", "b3"];
    lab.client().tcp_spread(vip, n).assert_spread(&all, 0.0);

    lab.start_agent();
    let log = lab.agent_log();
    assert!(
        log.contains("adopting"),
        "the new agent did not adopt the pinned maps:\n{log}"
    );
    for i in 0..20 {
        assert_eq!(ask(&mut conn, &format!("after restart {i}")), x);
    }
    lab.client().tcp_spread(vip, n).assert_spread(&all, 0.0);

    let status = lab.stop_agent();
    assert!(
        status.success(),
        "the second agent exited with {status} on SIGTERM"
    );
    let links = pinned_link_ids(&lab);
    assert_eq!(links.len(), 4, "links of the 4 pod interfaces: {links:?}");
    assert!(links.iter().all(|id| link_exists(&lab, *id)));
    let out = lab.cleanup();
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
    let mut lab = Lab::with_echo("cleanup", 3, PodHook::Tc, &[1, 2, 3]);
    let vip = echo_service().vip(80);
    let status = lab.stop_agent();
    assert!(
        status.success(),
        "the agent exited with {status} on SIGTERM"
    );
    lab.cleanup();
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
