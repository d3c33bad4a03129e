//! The agent against an API server: the real `lb-agent` binary in a node's network namespace,
//! watching a [`FakeApi`](lb_tests::fakeapi::FakeApi) (the real list/watch protocol over HTTP on
//! the node's own 127.0.0.1) through a kubeconfig, programming real BPF maps that carry real
//! traffic between pod namespaces ([`Lab::with_api`]). Needs root. Run after
//! `cargo build --release -p lb-agent` (or set LB_AGENT_BIN).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use lb_tests::fakeapi::{FakeApi, Resource};
use lb_tests::lab::{backend_ip, AGENT_WAIT, NODE, NODE_IP, TCP_TARGET};
use lb_tests::objects::{endpoint_slice, node, ready, tcp_port, Endpoint, Port, Protocol, Service};
use lb_tests::Lab;
use serde_json::Value;

const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";

fn http_port() -> Port {
    tcp_port("http", 80, TCP_TARGET)
}

/// The `echo` Service: 10.96.0.10:80 -> 8080.
fn echo() -> Service {
    Service::new("echo", [10, 96, 0, 10]).with_port(http_port())
}

/// A ready endpoint on this node for each backend in `ids`.
fn endpoints(ids: &[u8]) -> Vec<Endpoint> {
    ids.iter().map(|i| ready(backend_ip(*i), NODE)).collect()
}

/// The `echo` Service and its slice with backends `ids`.
fn set_echo(api: &FakeApi, ids: &[u8]) {
    api.apply(echo().object()).unwrap();
    set_endpoints(api, ids);
}

/// `echo`'s slice with backends `ids`.
fn set_endpoints(api: &FakeApi, ids: &[u8]) {
    api.apply(echo().slice(&endpoints(ids))).unwrap();
}

/// A Service and its slice with backends `ids`.
fn apply_service(api: &FakeApi, svc: &Service, ids: &[u8]) {
    for o in svc.objects(&endpoints(ids)) {
        api.apply(o).unwrap();
    }
}

fn vip() -> SocketAddr {
    echo().vip(80)
}

/// A lab whose agents watch a fake API server, resync every 2 s, serve health and metrics on the
/// node's loopback, and log at debug level.
fn api_lab(tag: &str, backends: u8) -> Lab {
    let mut lab = Lab::with_api(tag, backends);
    lab.run
        .flag("--resync-period", "2s")
        .flag("--healthz-bind-address", HEALTHZ)
        .flag("--metrics-bind-address", METRICS)
        .log_filter("info,lb_agent=debug,kube=info");
    lab
}

/// `n` new connections to `echo`, each answered (checked) by one of `names`, every one of them
/// answering. With k backends, one is missed by chance with P <= k (1 - 1/k)^n; each call
/// below states that bound.
#[track_caller]
fn assert_spread(lab: &Lab, n: usize, names: &[&str]) {
    lab.client().tcp_spread(vip(), n).assert_spread(names, 0.0);
}

/// Test that a Service and EndpointSlice created at the API after the agent started carry
/// traffic to every endpoint, and that scaling the slice up and down moves new connections to
/// exactly the endpoints listed, while connections to remaining endpoints keep working.
#[test]
fn service_from_the_api_carries_traffic_and_follows_endpoint_scaling() {
    let mut lab = api_lab("api-scale", 3);
    lab.start_agent();
    lab.wait_log_count("API caches synced", 1);
    set_echo(lab.api(), &[1, 2]);
    lab.wait_tcp_backends(vip(), &[1, 2]);
    // P(a backend missed by chance) <= 2 (1/2)^100 = 1.6e-30.
    assert_spread(&lab, 100, &["b1", "b2"]);

    // Scale up: the third endpoint joins.
    let mut conns: Vec<_> = (0..10)
        .map(|_| lab.client().tcp_conn(vip()).expect("connect"))
        .collect();
    set_endpoints(lab.api(), &[1, 2, 3]);
    lab.wait_tcp_backends(vip(), &[1, 2, 3]);
    // P <= 3 (2/3)^150 = 1.2e-26.
    assert_spread(&lab, 150, &["b1", "b2", "b3"]);
    for c in &mut conns {
        c.request("still there")
            .expect("an established connection survives a scale-up");
    }

    // Scale down to b3 only; then the Service goes away.
    set_endpoints(lab.api(), &[3]);
    lab.wait_tcp_backends(vip(), &[3]);
    // One backend: no chance involved.
    assert_spread(&lab, 50, &["b3"]);
    lab.api().delete("Service", "default", "echo").unwrap();
    lab.wait_no_frontend(vip());
}

/// Test that after a restart the agent programs nothing until both Services and EndpointSlices
/// are listed: while the EndpointSlice list fails, the pinned dataplane keeps serving new
/// connections with every backend, and once the list succeeds the agent converges (removing
/// what was deleted meanwhile) without flushing what still exists.
#[test]
fn restarted_agent_programs_nothing_until_services_and_slices_are_listed() {
    let mut lab = api_lab("api-gate", 2);
    set_echo(lab.api(), &[1, 2]);
    let gone = Service::new("gone", [10, 96, 0, 20]).with_port(http_port());
    let other = gone.vip(80);
    apply_service(lab.api(), &gone, &[1]);
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1, 2]);
    lab.wait_tcp_backends(other, &[1]);
    assert_eq!(lab.agent().stop().unwrap().code(), Some(0));

    // While no agent runs: "gone" is deleted, and EndpointSlice lists start failing.
    lab.api().delete("Service", "default", "gone").unwrap();
    lab.api().fail_lists(Resource::EndpointSlices, true);
    let lists_before = lab.api().requests(Resource::EndpointSlices).lists;
    lab.start_agent();
    // The agent has retried the failing list a few times, with Services already listed.
    let deadline = Instant::now() + AGENT_WAIT;
    while lab.api().requests(Resource::EndpointSlices).lists < lists_before + 3 {
        assert!(
            Instant::now() < deadline,
            "no list retries\n{}",
            lab.agent_log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.agent_log().contains("listed"), "{}", lab.agent_log());
    assert!(
        !lab.agent_log().contains("synced"),
        "synced too early:\n{}",
        lab.agent_log()
    );
    // Nothing was flushed: both frontends still serve from the pinned maps.
    assert_eq!(
        lab.backends(other, Protocol::Tcp),
        Some(vec!["10.244.0.11:8080".into()])
    );
    // P(a backend missed by chance) <= 2 (1/2)^60 = 1.7e-18, here and below.
    assert_spread(&lab, 60, &["b1", "b2"]);

    lab.api().fail_lists(Resource::EndpointSlices, false);
    lab.wait_log_count("API caches synced", 1);
    lab.wait_no_frontend(other);
    lab.wait_tcp_backends(vip(), &[1, 2]);
    assert_spread(&lab, 60, &["b1", "b2"]);
}

/// Test that dropped watch connections and expired resource versions (410 Gone, so the agent
/// must list again) still let the agent converge on every change made meanwhile.
#[test]
fn dropped_watches_and_expired_versions_still_converge() {
    let mut lab = api_lab("api-410", 3);
    set_echo(lab.api(), &[1]);
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1]);

    // Cut every watch, then change: the agent watches again from its last version.
    lab.api().drop_watches();
    set_endpoints(lab.api(), &[1, 2]);
    lab.wait_tcp_backends(vip(), &[1, 2]);

    // Expire every version (a compaction) and change: re-watching gets 410, the agent lists.
    let gone_before = lab.api().requests(Resource::EndpointSlices).gone;
    let lists_before = lab.api().requests(Resource::EndpointSlices).lists;
    lab.api().compact();
    set_endpoints(lab.api(), &[2, 3]);
    lab.wait_tcp_backends(vip(), &[2, 3]);
    let r = lab.api().requests(Resource::EndpointSlices);
    assert!(r.gone > gone_before, "no 410 was served: {r:?}");
    assert!(r.lists > lists_before, "no relist after 410: {r:?}");
    // P <= 2 (1/2)^100 = 1.6e-30.
    assert_spread(&lab, 100, &["b2", "b3"]);
    assert!(lab.agent_log().contains("410 Gone"), "{}", lab.agent_log());
}

/// Test that an API server outage while traffic runs fails no connection, new or established,
/// and that the agent reconnects and converges when the API server is back.
#[test]
fn api_server_outage_fails_no_connection_and_the_agent_reconverges() {
    let mut lab = api_lab("api-down", 3);
    set_echo(lab.api(), &[1, 2]);
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1, 2]);
    let mut conns: Vec<_> = (0..10)
        .map(|_| lab.client().tcp_conn(vip()).expect("connect"))
        .collect();

    lab.api().set_down(true);
    lab.wait_log_count("watch failed", 1);
    // Traffic during the outage, new connections and the established ones, until the agent
    // has failed to reconnect three more times per resource (backoff: about 2 s). Every new
    // connection is answered by b1 or b2; that both answer is checked over the whole outage,
    // not per batch (the loop runs tens of batches: at 2 (1/2)^20 per batch, one of them would
    // miss a backend by chance about once in 10,000 runs).
    let mut answered = BTreeSet::new();
    let deadline = Instant::now() + AGENT_WAIT;
    while lab.agent_log().matches("watch still failing").count() < 9 {
        assert!(
            Instant::now() < deadline,
            "no reconnect attempts\n{}",
            lab.agent_log()
        );
        let spread = lab.client().tcp_spread(vip(), 25);
        spread.assert_answered_by(&["b1", "b2"]);
        answered.extend(spread.counts.into_keys());
        for c in &mut conns {
            c.request("during the outage")
                .expect("established connection");
        }
    }
    // At least one batch of 25 ran: both answered, unless by chance with P <= 2 (1/2)^25 = 6e-8.
    assert_eq!(
        answered,
        BTreeSet::from(["b1".to_string(), "b2".to_string()])
    );
    lab.api().set_down(false);
    set_endpoints(lab.api(), &[3]);
    lab.wait_tcp_backends(vip(), &[3]);
    lab.wait_log_count("watch reconnected", 1);
    // One backend: no chance involved.
    assert_spread(&lab, 50, &["b3"]);
}

/// Test that killing the agent (SIGKILL) and starting another breaks no established connection
/// and flushes nothing: the new agent adopts the pinned maps with their ids and only deletes
/// what the API no longer has.
#[test]
fn killed_and_restarted_agent_breaks_no_connection_and_flushes_nothing() {
    let mut lab = api_lab("api-restart", 3);
    set_echo(lab.api(), &[1, 2, 3]);
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1, 2, 3]);
    let ids_before = lab.inspect()["frontends"].clone();
    let mut conns: Vec<_> = (0..20)
        .map(|_| lab.client().tcp_conn(vip()).expect("connect"))
        .collect();
    for c in &mut conns {
        c.request("before").expect("before the restart");
    }
    lab.agent()
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    lab.agent()
        .wait_timeout(AGENT_WAIT)
        .unwrap()
        .expect("killed");
    for c in &mut conns {
        c.request("no agent").expect("with no agent running");
    }
    lab.start_agent();
    lab.wait_log_count("adopting the pinned dataplane", 1);
    lab.wait_log_count("synced", 1);
    let after = lab.inspect()["frontends"].clone();
    let ids = |v: &Value| -> Vec<(String, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|f| (f["frontend"].to_string(), f["id"].clone()))
            .collect()
    };
    assert_eq!(ids(&ids_before), ids(&after), "frontend ids changed");
    for c in &mut conns {
        c.request("after").expect("after the restart");
    }
    // P <= 3 (2/3)^60 = 8e-11.
    assert_spread(&lab, 60, &["b1", "b2", "b3"]);
}

/// Test that /healthz and /livez answer 200 with kube-proxy's JSON once synced, and that
/// /metrics has kube-proxy's sync metrics, network programming latency and the per-service
/// and verdict counters from the kernel.
#[test]
fn healthz_livez_and_metrics_answer() {
    let mut lab = api_lab("api-http", 2);
    set_echo(lab.api(), &[1, 2]);
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1, 2]);
    // 30 flows, counted below: a backend missed by chance with P <= 2 (1/2)^30 = 1.9e-9 (at 20
    // it was 1.9e-6).
    assert_spread(&lab, 30, &["b1", "b2"]);
    let (code, text) = lab.http_get(HEALTHZ, "/healthz");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"nodeEligible\": true"), "{text}");
    assert!(text.contains("application/json"), "{text}");
    let (code, text) = lab.http_get(HEALTHZ, "/livez");
    assert_eq!(code, 200, "{text}");
    // A change, so a network programming duration is observed.
    set_endpoints(lab.api(), &[1]);
    lab.wait_tcp_backends(vip(), &[1]);
    let deadline = Instant::now() + AGENT_WAIT;
    let text = loop {
        let (code, text) = lab.http_get(METRICS, "/metrics");
        assert_eq!(code, 200, "{text}");
        if text.contains("kubeproxy_network_programming_duration_seconds_count 1")
            || Instant::now() > deadline
        {
            break text;
        }
        thread::sleep(Duration::from_millis(50));
    };
    for needle in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "xdplb_full_resyncs_total",
        "xdplb_map_capacity{map=\"LB_FRONTENDS\"}",
        "xdplb_map_entries{map=\"LB_FRONTENDS\"} 1",
        "xdplb_verdict_packets_total{reason=\"dnat_new_flow\"}",
        "xdplb_map_capacity{map=\"LB_NODE_ADDRS\"}",
        "xdplb_map_entries{map=\"LB_DEVICES\"} 0",
        "xdplb_service_new_flows_total{service=\"default/echo\",port_name=\"http\",frontend=\"10.96.0.10:80\",protocol=\"TCP\",scope=\"any\"} 30",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    let (code, _) = lab.http_get(METRICS, "/nothing");
    assert_eq!(code, 404);
}

/// Test that a LoadBalancer Service with externalTrafficPolicy Local gets its health-check node
/// port: 200 with the count of this node's ready endpoints, 503 when none is on this node.
#[test]
fn health_check_node_port_reports_local_endpoints() {
    let mut lab = api_lab("api-hc", 2);
    let svc = Service::new("lb", [10, 96, 0, 30])
        .with_port(http_port().node_port(30080))
        .spec("type", "LoadBalancer")
        .spec("externalTrafficPolicy", "Local")
        .spec("healthCheckNodePort", 32123)
        .spec("allocateLoadBalancerNodePorts", true);
    apply_service(lab.api(), &svc, &[1, 2]);
    lab.start_agent();
    lab.wait_log_count("health-check node port open", 1);
    let hc = "127.0.0.1:32123";
    let (code, text) = lab.http_get(hc, "/");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"localEndpoints\":2"), "{text}");
    assert!(
        text.contains("\"service\":{\"namespace\":\"default\",\"name\":\"lb\"}"),
        "{text}"
    );
    // The endpoints move to another node: this node must be skipped.
    lab.api()
        .apply(svc.slice(&[ready(backend_ip(1), "node-b")]))
        .unwrap();
    let deadline = Instant::now() + AGENT_WAIT;
    loop {
        let (code, text) = lab.http_get(hc, "/");
        if code == 503 {
            assert!(text.contains("\"localEndpoints\":0"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "still {code}: {text}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Test that an EndpointSlice relabelled from one Service to another moves its endpoints: the
/// Service it left loses them and the one it joined gets them (both are replanned).
#[test]
fn a_slice_moving_to_another_service_moves_its_endpoints() {
    let mut lab = api_lab("api-move", 2);
    let other_svc = Service::new("other", [10, 96, 0, 20]).with_port(http_port());
    let other = other_svc.vip(80);
    set_echo(lab.api(), &[1]);
    lab.api().apply(other_svc.object()).unwrap();
    let moving = |owner: &str| {
        let mut s = endpoint_slice(
            "default",
            "extra",
            "m0v3d",
            &[http_port()],
            &[ready(backend_ip(2), NODE)],
        );
        s["metadata"]["labels"]["kubernetes.io/service-name"] = owner.into();
        s
    };
    lab.api().apply(moving("echo")).unwrap();
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1, 2]);
    lab.api().apply(moving("other")).unwrap();
    lab.wait_tcp_backends(vip(), &[1]);
    lab.wait_tcp_backends(other, &[2]);
    lab.api()
        .delete("EndpointSlice", "default", "extra-m0v3d")
        .unwrap();
    lab.wait_tcp_backends(other, &[]);
    lab.wait_tcp_backends(vip(), &[1]);
}

/// Test that the periodic full resync repairs an entry deleted behind the agent's back, and
/// counts the repair in its metrics.
#[test]
fn periodic_resync_repairs_drift_and_counts_it() {
    let mut lab = api_lab("api-drift", 2);
    set_echo(lab.api(), &[1, 2]);
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1, 2]);
    // LB_FRONTENDS key of 10.96.0.10:80/TCP: address and port in network order, proto, scope.
    let map = lab.bpffs.path().join("maps/LB_FRONTENDS");
    #[rustfmt::skip]
    lab.node.ns().run("bpftool", &[
        "map", "delete", "pinned", map.to_str().unwrap(),
        "key", "10", "96", "0", "10", "0", "80", "6", "0",
    ])
    .expect("bpftool map delete");
    assert_eq!(lab.backends(vip(), Protocol::Tcp), None);
    // --resync-period is 2 s in these tests.
    lab.wait_tcp_backends(vip(), &[1, 2]);
    // P(a backend missed by chance) <= 2 (1/2)^40 = 1.8e-12.
    assert_spread(&lab, 40, &["b1", "b2"]);
    let (_, text) = lab.http_get(METRICS, "/metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("xdplb_drift_repairs_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(lab.agent_log().contains("drifted"), "{}", lab.agent_log());
}

/// Test that a list larger than a page (the client asks for 500 at a time) is read through
/// its continue tokens and every Service of it is programmed.
#[test]
fn services_listed_over_several_pages_are_all_programmed() {
    let mut lab = api_lab("api-pages", 1);
    let n = 1200;
    let services: Vec<Service> = (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 96, 10 + (i / 200) as u8, (i % 200 + 1) as u8);
            Service::new(&format!("s{i}"), ip).with_port(http_port())
        })
        .collect();
    for svc in &services {
        apply_service(lab.api(), svc, &[1]);
    }
    lab.start_agent();
    lab.wait_log_count("API caches synced", 1);
    lab.wait_log_count("synced reason", 1);
    let frontends = lab.inspect()["frontends"].as_array().unwrap().len();
    assert_eq!(frontends, n, "{}", lab.agent_log());
    let r = lab.api().requests(Resource::Services);
    assert!(
        r.lists >= 3,
        "1200 Services in pages of 500 need 3 lists: {r:?}"
    );
    // The last Service of the last page carries traffic (one backend: no chance involved).
    let last = services[n - 1].vip(80);
    lab.client()
        .tcp_spread(last, 10)
        .assert_spread(&["b1"], 0.0);
}

/// Test that /healthz turns 503 with nodeEligible false while the Node is being deleted (as
/// kube-proxy's, so load balancers drain the node), while /livez stays 200.
#[test]
fn healthz_fails_while_the_node_is_being_deleted_and_livez_does_not() {
    let mut lab = api_lab("api-drain", 1);
    set_echo(lab.api(), &[1]);
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1]);
    assert_eq!(lab.http_get(HEALTHZ, "/healthz").0, 200);
    let mut n = node(NODE, Some(NODE_IP));
    n["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    lab.api().apply(n).unwrap();
    let deadline = Instant::now() + AGENT_WAIT;
    loop {
        let (code, text) = lab.http_get(HEALTHZ, "/healthz");
        if code == 503 {
            assert!(text.contains("\"nodeEligible\": false"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "still {code}: {text}");
        thread::sleep(Duration::from_millis(20));
    }
    let (code, text) = lab.http_get(HEALTHZ, "/livez");
    assert_eq!(code, 200, "{text}");
    // Traffic is not affected (one backend: no chance involved).
    assert_spread(&lab, 20, &["b1"]);
}

/// Test that a burst of EndpointSlice changes is applied in few syncs, at most one per
/// --min-sync-period, and ends in the last state.
#[test]
fn a_burst_of_changes_is_batched_by_the_min_sync_period() {
    let mut lab = api_lab("api-burst", 3);
    set_echo(lab.api(), &[1]);
    lab.run.flag("--min-sync-period", "1s");
    lab.start_agent();
    lab.wait_tcp_backends(vip(), &[1]);
    let changes = 30;
    let burst = Instant::now();
    for i in 0..changes {
        set_endpoints(lab.api(), if i % 2 == 0 { &[1, 2] } else { &[2, 3] });
    }
    // Every change reached the agent (counted), and the last one is programmed.
    let deadline = Instant::now() + AGENT_WAIT;
    loop {
        let (_, text) = lab.http_get(METRICS, "/metrics");
        let seen: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_endpoint_changes_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if seen >= changes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} endpoint changes counted\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    lab.wait_tcp_backends(vip(), &[2, 3]);
    // At most one sync per second since the burst began (plus the one it starts at once).
    let syncs = lab.agent_log().matches("reason=\"API changes\"").count();
    let allowed = 2 + burst.elapsed().as_secs() as usize;
    assert!(
        (1..=allowed).contains(&syncs),
        "{changes} changes took {syncs} syncs in {:?}\n{}",
        burst.elapsed(),
        lab.agent_log()
    );
    // P(a backend missed by chance) <= 2 (1/2)^40 = 1.8e-12.
    assert_spread(&lab, 40, &["b2", "b3"]);
}
