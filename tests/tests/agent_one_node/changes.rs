//! Endpoints changing under traffic: backends added and removed while a client connects without
//! pause, a long-lived connection keeping its backend, and new connections avoiding a removed
//! backend that a live flow still uses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lb_common::hash::{flow_hash, slot_of};
use lb_tests::inspect::{frontend, verdict};
use lb_tests::lab::{backend_ip, backend_names, echo_service, echo_yaml, CLIENT_IP, TCP_TARGET};
use lb_tests::objects::Protocol;
use lb_tests::{check_reply, Client, Lab, PodHook};

use crate::{MIN_SHARE, SPREAD_FLOWS};

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
                (Some(port), check_reply(vip, Some(CLIENT_IP), &msg, reply))
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
    let lab = Lab::with_echo("churn", 3, PodHook::Tc, &[1, 2]);
    let svc = echo_service();
    let vip = svc.vip(80);

    let (stop, done) = (AtomicBool::new(false), AtomicUsize::new(0));
    let lab = &lab;
    let (attempts, t_added, t_remove, t_removed, table) = thread::scope(|s| {
        let client = s.spawn(|| client_loop(lab.client(), vip, &stop, &done));
        let stop_on_panic = StopOnDrop(&stop);
        wait_progress(&done, 100);
        // Add b3: the new file is renamed into the directory.
        lab.manifests()
            .replace("echo.yaml", &echo_yaml(&[1, 2, 3]))
            .unwrap();
        lab.wait_echo(&[1, 2, 3]);
        let t_added = Instant::now();
        wait_progress(&done, 300);
        // Remove b2: the file is rewritten in place.
        let before = lab.inspect();
        let table = frontend(&before, vip, Protocol::Tcp).unwrap().clone();
        let t_remove = Instant::now();
        lab.manifests()
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
    // At least 299 connections start in each window. By chance, b3 gets under 30 of them with
    // P(Bin(299, 1/3) <= 29) = 9e-22, and b1 or b3 under 50 with P <= 2 P(Bin(299, 1/2) <= 49) = 1e-33.
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
    let lab = Lab::with_echo("keep", 4, PodHook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let mut conn = lab.client().tcp_conn(vip).unwrap();
    let first = conn.request("first").unwrap();
    let x: u8 = first.identity[1..].parse().unwrap();
    // Remove a backend other than this connection's, add b4.
    let removed = [1, 2, 3].into_iter().find(|b| *b != x).unwrap();
    let mut new_set: Vec<u8> = [1, 2, 3, 4].into_iter().filter(|b| *b != removed).collect();
    new_set.sort();
    lab.manifests()
        .replace("echo.yaml", &echo_yaml(&new_set))
        .unwrap();
    lab.wait_echo(&new_set);
    for i in 0..100 {
        let msg = format!("again-{i}");
        let who = check_reply(vip, Some(CLIENT_IP), &msg, conn.request(&msg)).unwrap();
        assert_eq!(
            who, first.identity,
            "request {i} on the long-lived connection"
        );
    }
    assert_eq!(conn.peer(), vip);
    // New connections use the new set; by chance with P <= 2.2e-8 (see SPREAD_FLOWS).
    lab.client()
        .tcp_spread(vip, SPREAD_FLOWS)
        .assert_spread(&backend_names(&new_set), MIN_SHARE);
}

/// Test that when the backend of a long-lived flow is removed, new connections never go to it.
///
/// What happens to the old flow (seen here, not asserted): its conntrack entry names a backend
/// that no longer exists, so its next packet is balanced anew like a first packet, reaches
/// another backend that has no such connection, and the client gets a reset (from the VIP).
#[test]
fn new_connections_avoid_a_removed_backend_that_a_live_flow_still_uses() {
    let mut lab = Lab::with_echo("gone", 3, PodHook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let mut conn = lab.client().tcp_conn(vip).unwrap();
    let x: u8 = conn.request("first").unwrap().identity[1..]
        .parse()
        .unwrap();
    let rest: Vec<u8> = [1, 2, 3].into_iter().filter(|b| *b != x).collect();
    lab.manifests()
        .write("echo.yaml", &echo_yaml(&rest))
        .unwrap();
    lab.wait_echo(&rest);
    let names = backend_names(&rest);
    // Two backends: a share under 15% by chance with P <= 3e-23 (see SPREAD_FLOWS).
    lab.client()
        .tcp_spread(vip, SPREAD_FLOWS)
        .assert_spread(&names, MIN_SHARE);
    let old = match conn.request("after removal") {
        Ok(r) => format!("answered by {} from {}", r.identity, r.peer),
        Err(e) => format!("{e:#}"),
    };
    println!("the old flow to removed backend b{x}, after the removal: {old}");
    assert!(lab.agent().is_running(), "the agent exited");
    // After the old flow's packet: every new connection is answered, and none by the removed
    // backend (not a spread: whether 10 flows reach both backends is chance, 1 in 512).
    lab.client().tcp_spread(vip, 10).assert_answered_by(&names);
}
