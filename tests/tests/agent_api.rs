//! The agent against an API server: the real `lb-agent` binary in a node's network namespace,
//! watching a [`FakeApi`] (the real list/watch protocol over HTTP on the node's own 127.0.0.1)
//! through a kubeconfig, programming real BPF maps that carry real traffic between pod
//! namespaces. Needs root. Run after `cargo build --release -p lb-agent` (or set LB_AGENT_BIN).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use lb_tests::fakeapi::{
    endpoint_slice, load_balancer_local, node, ready, service, tcp_port, FakeApi, Port, Resource,
};
use lb_tests::{
    agent_bin, BpffsGuard, Child, Client, NetNs, Node, TcpServer, TempDir, POD_IFACE_GLOB,
};
use serde_json::Value;

const NODE: &str = "node-a";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const TARGET: u16 = 8080;
/// Any wait for the agent to converge.
const WAIT: Duration = Duration::from_secs(15);
const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";

fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 10 + i)
}

fn http_port() -> Port {
    tcp_port("http", 80, TARGET)
}

/// The `echo` Service (10.96.0.10:80 -> 8080) and its slice with backends `ids` on this node.
fn echo(api: &FakeApi, ids: &[u8]) {
    api.apply(service("default", "echo", "10.96.0.10", &[http_port()]))
        .unwrap();
    set_endpoints(api, ids);
}

fn set_endpoints(api: &FakeApi, ids: &[u8]) {
    let eps: Vec<_> = ids.iter().map(|i| ready(backend_ip(*i), NODE)).collect();
    api.apply(endpoint_slice(
        "default",
        "echo",
        "abcde",
        &[http_port()],
        &eps,
    ))
    .unwrap();
}

fn vip() -> SocketAddr {
    "10.96.0.10:80".parse().unwrap()
}

/// A node with a client pod and backend pods b1..=bN (TCP servers answering with their
/// name), a bpffs, a fake API server in the node's namespace holding the Node, a kubeconfig.
struct ApiLab {
    agents: Vec<Child>,
    _servers: Vec<TcpServer>,
    api: FakeApi,
    node: Node,
    bpffs: BpffsGuard,
    dir: TempDir,
}

impl ApiLab {
    fn new(tag: &str, backends: u8) -> ApiLab {
        let mut node = Node::new(tag).expect("node");
        node.add_pod("client", CLIENT_IP).expect("client pod");
        let mut servers = Vec::new();
        for i in 1..=backends {
            let pod = node.add_pod(&format!("b{i}"), backend_ip(i)).expect("pod");
            servers.push(pod.tcp_server(TARGET).expect("server"));
        }
        let api = FakeApi::start(node.ns()).expect("fake API server");
        api.apply(node_obj()).unwrap();
        let dir = TempDir::new(tag).expect("temp dir");
        api.write_kubeconfig(&dir.path().join("kubeconfig"))
            .expect("kubeconfig");
        ApiLab {
            agents: Vec::new(),
            _servers: servers,
            api,
            bpffs: BpffsGuard::new(tag).expect("bpffs"),
            node,
            dir,
        }
    }

    fn client_ns(&self) -> &NetNs {
        self.node.pod("client").ns()
    }

    fn client(&self) -> Client<'_> {
        Client::new(self.client_ns())
    }

    /// Starts an agent watching the fake API; waits until it says "running".
    fn start_agent(&mut self) {
        self.start_agent_with("10ms");
    }

    /// Starts an agent with `--min-sync-period min_sync`.
    fn start_agent_with(&mut self, min_sync: &str) {
        let kubeconfig = self.dir.path().join("kubeconfig");
        let mut cmd = Command::new(agent_bin());
        #[rustfmt::skip]
        cmd.args([
            "run", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node", NODE,
            "--pod-interfaces", POD_IFACE_GLOB, "--bpffs", self.bpffs.path().to_str().unwrap(),
            "--min-sync-period", min_sync, "--resync-period", "2s",
            "--healthz-bind-address", HEALTHZ, "--metrics-bind-address", METRICS,
        ])
        .env("RUST_LOG", "info,lb_agent=debug,kube=info")
        .env("NO_COLOR", "1");
        let name = format!("lb-agent-{}", self.agents.len() + 1);
        let child = self
            .node
            .ns()
            .spawn(&name, &cmd)
            .expect("spawn the agent")
            .with_grace(Duration::from_secs(5));
        self.agents.push(child);
        let agent = self.agents.last_mut().unwrap();
        agent
            .wait_for_output("running", WAIT)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn agent(&mut self) -> &mut Child {
        self.agents.last_mut().expect("an agent")
    }

    fn log(&self) -> String {
        self.agents.last().map(|a| a.stderr()).unwrap_or_default()
    }

    /// Waits until the newest agent's log has `needle` at least `count` times.
    fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= count {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "agent did not log {needle:?} {count} times within {WAIT:?}:\n{}",
            self.log()
        );
    }

    fn inspect(&self) -> Value {
        let bin = agent_bin();
        let out = self
            .node
            .ns()
            .run(
                bin.to_str().unwrap(),
                &[
                    "inspect",
                    "--json",
                    "--bpffs",
                    self.bpffs.path().to_str().unwrap(),
                ],
            )
            .expect("inspect");
        serde_json::from_str(&out).expect("inspect json")
    }

    /// The backends of frontend `vip` (TCP) in the pinned maps, sorted; None without it.
    fn backends(&self, vip: SocketAddr) -> Option<Vec<String>> {
        let v = self.inspect();
        let fe = v["frontends"]
            .as_array()?
            .iter()
            .find(|f| f["frontend"] == vip.to_string() && f["protocol"] == "TCP")?
            .clone();
        let mut b: Vec<String> = fe["backends"]
            .as_array()?
            .iter()
            .filter_map(|b| b["addr"].as_str().map(String::from))
            .collect();
        b.sort();
        b.dedup();
        Some(b)
    }

    /// Waits until frontend `vip` has exactly backends `ids` (on TARGET).
    fn wait_backends(&self, vip: SocketAddr, ids: &[u8]) {
        let mut want: Vec<String> = ids
            .iter()
            .map(|i| SocketAddr::from((backend_ip(*i), TARGET)).to_string())
            .collect();
        want.sort();
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.backends(vip);
            if last.as_ref() == Some(&want) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{vip} did not get backends {want:?} within {WAIT:?}; last {last:?}\n{}",
            self.log()
        );
    }

    /// Waits until frontend `vip` is gone from the maps.
    fn wait_no_frontend(&self, vip: SocketAddr) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.backends(vip).is_none() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("{vip} still programmed after {WAIT:?}\n{}", self.log());
    }

    /// An HTTP GET from inside the node's namespace: (status code, headers and body).
    fn get(&self, addr: &str, path: &str) -> (u16, String) {
        let addr: SocketAddr = addr.parse().unwrap();
        self.node.ns().enter(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let code = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (code, text)
        })
    }
}

fn node_obj() -> Value {
    node(NODE, Some("172.18.0.10"))
}

/// Spreads `n` new connections over the VIP; asserts all answered by exactly `names`.
fn assert_spread(lab: &ApiLab, n: usize, names: &[&str]) {
    let spread = lab.client().tcp_spread(vip(), n);
    assert_eq!(
        (spread.ok(), spread.backends()),
        (n, names.to_vec()),
        "{spread}\n{}",
        lab.log()
    );
}

/// Test that a Service and EndpointSlice created at the API after the agent started carry
/// traffic to every endpoint, and that scaling the slice up and down moves new connections to
/// exactly the endpoints listed, while connections to remaining endpoints keep working.
#[test]
fn service_from_the_api_carries_traffic_and_follows_endpoint_scaling() {
    let mut lab = ApiLab::new("api-scale", 3);
    lab.start_agent();
    lab.wait_log("API caches synced", 1);
    echo(&lab.api, &[1, 2]);
    lab.wait_backends(vip(), &[1, 2]);
    assert_spread(&lab, 100, &["b1", "b2"]);

    // Scale up: the third endpoint joins.
    let mut conns: Vec<_> = (0..10)
        .map(|_| lab.client().tcp_conn(vip()).expect("connect"))
        .collect();
    set_endpoints(&lab.api, &[1, 2, 3]);
    lab.wait_backends(vip(), &[1, 2, 3]);
    assert_spread(&lab, 150, &["b1", "b2", "b3"]);
    for c in &mut conns {
        c.request("still there")
            .expect("an established connection survives a scale-up");
    }

    // Scale down to b3 only; then the Service goes away.
    set_endpoints(&lab.api, &[3]);
    lab.wait_backends(vip(), &[3]);
    assert_spread(&lab, 50, &["b3"]);
    lab.api.delete("Service", "default", "echo").unwrap();
    lab.wait_no_frontend(vip());
}

/// Test that after a restart the agent programs nothing until both Services and EndpointSlices
/// are listed: while the EndpointSlice list fails, the pinned dataplane keeps serving new
/// connections with every backend, and once the list succeeds the agent converges (removing
/// what was deleted meanwhile) without flushing what still exists.
#[test]
fn restarted_agent_programs_nothing_until_services_and_slices_are_listed() {
    let mut lab = ApiLab::new("api-gate", 2);
    echo(&lab.api, &[1, 2]);
    let other: SocketAddr = "10.96.0.20:80".parse().unwrap();
    lab.api
        .apply(service("default", "gone", "10.96.0.20", &[http_port()]))
        .unwrap();
    lab.api
        .apply(endpoint_slice(
            "default",
            "gone",
            "xyz12",
            &[http_port()],
            &[ready(backend_ip(1), NODE)],
        ))
        .unwrap();
    lab.start_agent();
    lab.wait_backends(vip(), &[1, 2]);
    lab.wait_backends(other, &[1]);
    assert_eq!(lab.agent().stop().unwrap().code(), Some(0));

    // While no agent runs: "gone" is deleted, and EndpointSlice lists start failing.
    lab.api.delete("Service", "default", "gone").unwrap();
    lab.api.fail_lists(Resource::EndpointSlices, true);
    let lists_before = lab.api.requests(Resource::EndpointSlices).lists;
    lab.start_agent();
    // The agent has retried the failing list a few times, with Services already listed.
    let deadline = Instant::now() + WAIT;
    while lab.api.requests(Resource::EndpointSlices).lists < lists_before + 3 {
        assert!(Instant::now() < deadline, "no list retries\n{}", lab.log());
        thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.log().contains("listed"), "{}", lab.log());
    assert!(
        !lab.log().contains("synced"),
        "synced too early:\n{}",
        lab.log()
    );
    // Nothing was flushed: both frontends still serve from the pinned maps.
    assert_eq!(lab.backends(other), Some(vec!["10.244.0.11:8080".into()]));
    assert_spread(&lab, 60, &["b1", "b2"]);

    lab.api.fail_lists(Resource::EndpointSlices, false);
    lab.wait_log("API caches synced", 1);
    lab.wait_no_frontend(other);
    lab.wait_backends(vip(), &[1, 2]);
    assert_spread(&lab, 60, &["b1", "b2"]);
}

/// Test that dropped watch connections and expired resource versions (410 Gone, so the agent
/// must list again) still let the agent converge on every change made meanwhile.
#[test]
fn dropped_watches_and_expired_versions_still_converge() {
    let mut lab = ApiLab::new("api-410", 3);
    echo(&lab.api, &[1]);
    lab.start_agent();
    lab.wait_backends(vip(), &[1]);

    // Cut every watch, then change: the agent watches again from its last version.
    lab.api.drop_watches();
    set_endpoints(&lab.api, &[1, 2]);
    lab.wait_backends(vip(), &[1, 2]);

    // Expire every version (a compaction) and change: re-watching gets 410, the agent lists.
    let gone_before = lab.api.requests(Resource::EndpointSlices).gone;
    let lists_before = lab.api.requests(Resource::EndpointSlices).lists;
    lab.api.compact();
    set_endpoints(&lab.api, &[2, 3]);
    lab.wait_backends(vip(), &[2, 3]);
    let r = lab.api.requests(Resource::EndpointSlices);
    assert!(r.gone > gone_before, "no 410 was served: {r:?}");
    assert!(r.lists > lists_before, "no relist after 410: {r:?}");
    assert_spread(&lab, 100, &["b2", "b3"]);
    assert!(lab.log().contains("410 Gone"), "{}", lab.log());
}

/// Test that an API server outage while traffic runs fails no connection, new or established,
/// and that the agent reconnects and converges when the API server is back.
#[test]
fn api_server_outage_fails_no_connection_and_the_agent_reconverges() {
    let mut lab = ApiLab::new("api-down", 3);
    echo(&lab.api, &[1, 2]);
    lab.start_agent();
    lab.wait_backends(vip(), &[1, 2]);
    let mut conns: Vec<_> = (0..10)
        .map(|_| lab.client().tcp_conn(vip()).expect("connect"))
        .collect();

    lab.api.set_down(true);
    lab.wait_log("watch failed", 1);
    // Traffic during the outage, new connections and the established ones, until the agent
    // has failed to reconnect three more times per resource (backoff: about 2 s).
    let deadline = Instant::now() + WAIT;
    while lab.log().matches("watch still failing").count() < 9 {
        assert!(
            Instant::now() < deadline,
            "no reconnect attempts\n{}",
            lab.log()
        );
        assert_spread(&lab, 20, &["b1", "b2"]);
        for c in &mut conns {
            c.request("during the outage")
                .expect("established connection");
        }
    }
    lab.api.set_down(false);
    set_endpoints(&lab.api, &[3]);
    lab.wait_backends(vip(), &[3]);
    lab.wait_log("watch reconnected", 1);
    assert_spread(&lab, 50, &["b3"]);
}

/// Test that killing the agent (SIGKILL) and starting another breaks no established connection
/// and flushes nothing: the new agent adopts the pinned maps with their ids and only deletes
/// what the API no longer has.
#[test]
fn killed_and_restarted_agent_breaks_no_connection_and_flushes_nothing() {
    let mut lab = ApiLab::new("api-restart", 3);
    echo(&lab.api, &[1, 2, 3]);
    lab.start_agent();
    lab.wait_backends(vip(), &[1, 2, 3]);
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
    lab.agent().wait_timeout(WAIT).unwrap().expect("killed");
    for c in &mut conns {
        c.request("no agent").expect("with no agent running");
    }
    lab.start_agent();
    lab.wait_log("adopting the pinned dataplane", 1);
    lab.wait_log("synced", 1);
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
    assert_spread(&lab, 60, &["b1", "b2", "b3"]);
}

/// Test that /healthz and /livez answer 200 with kube-proxy's JSON once synced, and that
/// /metrics has kube-proxy's sync metrics, network programming latency and the per-service
/// and verdict counters from the kernel.
#[test]
fn healthz_livez_and_metrics_answer() {
    let mut lab = ApiLab::new("api-http", 2);
    echo(&lab.api, &[1, 2]);
    lab.start_agent();
    lab.wait_backends(vip(), &[1, 2]);
    assert_spread(&lab, 20, &["b1", "b2"]);
    let (code, text) = lab.get(HEALTHZ, "/healthz");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"nodeEligible\": true"), "{text}");
    assert!(text.contains("application/json"), "{text}");
    let (code, text) = lab.get(HEALTHZ, "/livez");
    assert_eq!(code, 200, "{text}");
    // A change, so a network programming duration is observed.
    set_endpoints(&lab.api, &[1]);
    lab.wait_backends(vip(), &[1]);
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let (code, text) = lab.get(METRICS, "/metrics");
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
        "xdplb_service_new_flows_total{service=\"default/echo\",port_name=\"http\",frontend=\"10.96.0.10:80\",protocol=\"TCP\"} 20",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    let (code, _) = lab.get(METRICS, "/nothing");
    assert_eq!(code, 404);
}

/// Test that a LoadBalancer Service with externalTrafficPolicy Local gets its health-check node
/// port: 200 with the count of this node's ready endpoints, 503 when none is on this node.
#[test]
fn health_check_node_port_reports_local_endpoints() {
    let mut lab = ApiLab::new("api-hc", 2);
    let svc = load_balancer_local(
        service("default", "lb", "10.96.0.30", &[http_port()]),
        &[30080],
        32123,
    );
    lab.api.apply(svc).unwrap();
    let eps = [ready(backend_ip(1), NODE), ready(backend_ip(2), NODE)];
    lab.api
        .apply(endpoint_slice(
            "default",
            "lb",
            "q1w2e",
            &[http_port()],
            &eps,
        ))
        .unwrap();
    lab.start_agent();
    lab.wait_log("health-check node port open", 1);
    let hc = "127.0.0.1:32123";
    let (code, text) = lab.get(hc, "/");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"localEndpoints\":2"), "{text}");
    assert!(
        text.contains("\"service\":{\"namespace\":\"default\",\"name\":\"lb\"}"),
        "{text}"
    );
    // The endpoints move to another node: this node must be skipped.
    let eps = [ready(backend_ip(1), "node-b")];
    lab.api
        .apply(endpoint_slice(
            "default",
            "lb",
            "q1w2e",
            &[http_port()],
            &eps,
        ))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, text) = lab.get(hc, "/");
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
    let mut lab = ApiLab::new("api-move", 2);
    let other: SocketAddr = "10.96.0.20:80".parse().unwrap();
    echo(&lab.api, &[1]);
    lab.api
        .apply(service("default", "other", "10.96.0.20", &[http_port()]))
        .unwrap();
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
    lab.api.apply(moving("echo")).unwrap();
    lab.start_agent();
    lab.wait_backends(vip(), &[1, 2]);
    lab.api.apply(moving("other")).unwrap();
    lab.wait_backends(vip(), &[1]);
    lab.wait_backends(other, &[2]);
    lab.api
        .delete("EndpointSlice", "default", "extra-m0v3d")
        .unwrap();
    lab.wait_backends(other, &[]);
    lab.wait_backends(vip(), &[1]);
}

/// Test that the periodic full resync repairs an entry deleted behind the agent's back, and
/// counts the repair in its metrics.
#[test]
fn periodic_resync_repairs_drift_and_counts_it() {
    let mut lab = ApiLab::new("api-drift", 2);
    echo(&lab.api, &[1, 2]);
    lab.start_agent();
    lab.wait_backends(vip(), &[1, 2]);
    // LB_FRONTENDS key of 10.96.0.10:80/TCP: address and port in network order, proto, scope.
    let map = lab.bpffs.path().join("maps/LB_FRONTENDS");
    #[rustfmt::skip]
    lab.node.ns().run("bpftool", &[
        "map", "delete", "pinned", map.to_str().unwrap(),
        "key", "10", "96", "0", "10", "0", "80", "6", "0",
    ])
    .expect("bpftool map delete");
    assert_eq!(lab.backends(vip()), None);
    // --resync-period is 2 s in these tests.
    lab.wait_backends(vip(), &[1, 2]);
    assert_spread(&lab, 40, &["b1", "b2"]);
    let (_, text) = lab.get(METRICS, "/metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("xdplb_drift_repairs_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(lab.log().contains("drifted"), "{}", lab.log());
}

/// Test that a list larger than a page (the client asks for 500 at a time) is read through
/// its continue tokens and every Service of it is programmed.
#[test]
fn services_listed_over_several_pages_are_all_programmed() {
    let mut lab = ApiLab::new("api-pages", 1);
    let n = 1200;
    for i in 0..n {
        let ip = format!("10.96.{}.{}", 10 + i / 200, i % 200 + 1);
        lab.api
            .apply(service("default", &format!("s{i}"), &ip, &[http_port()]))
            .unwrap();
        lab.api
            .apply(endpoint_slice(
                "default",
                &format!("s{i}"),
                "p4g3s",
                &[http_port()],
                &[ready(backend_ip(1), NODE)],
            ))
            .unwrap();
    }
    lab.start_agent();
    lab.wait_log("API caches synced", 1);
    lab.wait_log("synced reason", 1);
    let frontends = lab.inspect()["frontends"].as_array().unwrap().len();
    assert_eq!(frontends, n, "{}", lab.log());
    let r = lab.api.requests(Resource::Services);
    assert!(
        r.lists >= 3,
        "1200 Services in pages of 500 need 3 lists: {r:?}"
    );
    // The last Service of the last page carries traffic.
    let last: SocketAddr = format!("10.96.{}.{}:80", 10 + (n - 1) / 200, (n - 1) % 200 + 1)
        .parse()
        .unwrap();
    let spread = lab.client().tcp_spread(last, 10);
    assert_eq!(
        (spread.ok(), spread.backends()),
        (10, vec!["b1"]),
        "{spread}"
    );
}

/// Test that /healthz turns 503 with nodeEligible false while the Node is being deleted (as
/// kube-proxy's, so load balancers drain the node), while /livez stays 200.
#[test]
fn healthz_fails_while_the_node_is_being_deleted_and_livez_does_not() {
    let mut lab = ApiLab::new("api-drain", 1);
    echo(&lab.api, &[1]);
    lab.start_agent();
    lab.wait_backends(vip(), &[1]);
    assert_eq!(lab.get(HEALTHZ, "/healthz").0, 200);
    let mut n = node_obj();
    n["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    lab.api.apply(n).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, text) = lab.get(HEALTHZ, "/healthz");
        if code == 503 {
            assert!(text.contains("\"nodeEligible\": false"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "still {code}: {text}");
        thread::sleep(Duration::from_millis(20));
    }
    let (code, text) = lab.get(HEALTHZ, "/livez");
    assert_eq!(code, 200, "{text}");
    // Traffic is not affected.
    assert_spread(&lab, 20, &["b1"]);
}

/// Test that a burst of EndpointSlice changes is applied in few syncs, at most one per
/// --min-sync-period, and ends in the last state.
#[test]
fn a_burst_of_changes_is_batched_by_the_min_sync_period() {
    let mut lab = ApiLab::new("api-burst", 3);
    echo(&lab.api, &[1]);
    lab.start_agent_with("1s");
    lab.wait_backends(vip(), &[1]);
    let changes = 30;
    let burst = Instant::now();
    for i in 0..changes {
        set_endpoints(&lab.api, if i % 2 == 0 { &[1, 2] } else { &[2, 3] });
    }
    // Every change reached the agent (counted), and the last one is programmed.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = lab.get(METRICS, "/metrics");
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
    lab.wait_backends(vip(), &[2, 3]);
    // At most one sync per second since the burst began (plus the one it starts at once).
    let syncs = lab.log().matches("reason=\"API changes\"").count();
    let allowed = 2 + burst.elapsed().as_secs() as usize;
    assert!(
        (1..=allowed).contains(&syncs),
        "{changes} changes took {syncs} syncs in {:?}\n{}",
        burst.elapsed(),
        lab.log()
    );
    assert_spread(&lab, 40, &["b2", "b3"]);
}
