//! The demo: a node of network namespaces with a client pod and three backend pods, the agent
//! programming a ClusterIP Service from examples/manifests, real TCP and UDP traffic, what the
//! maps hold, a live change of the endpoints, and a clean exit.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use clap::Args;
use lb_tests::{
    agent::{self, AgentRun, PodHook},
    find_agent_bin,
    manifests::ManifestDir,
    objects::{Protocol, Service},
    tcp_spread, udp_spread, BpffsGuard, Client, Cluster, Node, Spread, POD_IFACE_GLOB,
};

use crate::build::{self, root};

/// Options of `demo`.
#[derive(Args, Default)]
pub struct DemoOpts {
    /// Connections (and UDP flows) per round.
    #[arg(long, default_value_t = 300)]
    pub connections: usize,
    /// Program for pod interfaces: tc or xdp.
    #[arg(long, default_value = "tc")]
    pub pod_hook: PodHook,
    /// Skip building (use the binaries already built).
    #[arg(long)]
    pub no_build: bool,
}

const TCP_VIP: &str = "10.96.0.10:80";
const UDP_VIP: &str = "10.96.0.10:53";

fn title(s: &str) {
    println!("\n=== {s}");
}

fn histogram(what: &str, s: &Spread) {
    let total: usize = s.counts.values().sum();
    println!("{what}: {total} answered, {} failed", s.failures);
    for (backend, n) in &s.counts {
        let pct = 100.0 * *n as f64 / total.max(1) as f64;
        println!(
            "  {backend:<8} {n:>5}  {pct:5.1}%  {}",
            "#".repeat((pct / 2.0) as usize)
        );
    }
}

/// How long an agent may take to say it is running.
const AGENT_START: Duration = Duration::from_secs(20);

/// Waits until `f` holds or `timeout` passes.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs the demo.
pub fn demo(opts: &DemoOpts) -> Result<()> {
    if !opts.no_build {
        crate::setup::debian_packages()?;
        build::build_all()?;
    }
    find_agent_bin()?;

    title("Topology: node netns, client pod 10.244.0.2, pods echo-1..3 at 10.244.0.11-13");
    let mut node = Node::new("demo")?;
    node.add_pod("client", [10, 244, 0, 2])?;
    for i in 1..=3u8 {
        node.add_pod(&format!("echo-{i}"), [10, 244, 0, 10 + i])?;
    }
    let mut servers = Vec::new();
    for pod in &node.pods()[1..] {
        servers.push((pod.tcp_server(8080)?, pod.udp_server(5353)?));
    }
    for pod in node.pods() {
        println!(
            "  {:<8} {:<12} host side {}",
            pod.name(),
            pod.ip(),
            pod.host_ifname()
        );
    }

    // The manifests are copied so the demo can change them while the agent runs.
    let dir = ManifestDir::new("demo-manifests")?;
    for f in ["node.yaml", "echo-service.yaml"] {
        std::fs::copy(root().join("examples/manifests").join(f), dir.file(f))?;
    }
    let bpffs = BpffsGuard::new("demo")?;

    title("Agent: lb-agent run (in the node netns)");
    let mut run = AgentRun::new("node-a", bpffs.path());
    run.manifests(dir.path())
        .pod_interfaces(POD_IFACE_GLOB)
        .pod_hook(opts.pod_hook)
        .name("agent");
    println!("  {}", run.command_line());
    let mut child = run.start(node.ns(), AGENT_START)?;

    let client = node.pod("client").ns();
    let tcp_vip: SocketAddr = TCP_VIP.parse()?;
    let udp_vip: SocketAddr = UDP_VIP.parse()?;
    title(&format!(
        "Traffic: {} new TCP connections from the client pod to {TCP_VIP}",
        opts.connections
    ));
    let s = tcp_spread(client, tcp_vip, opts.connections);
    histogram("TCP", &s);
    title(&format!(
        "Traffic: {} UDP flows to {UDP_VIP}",
        opts.connections
    ));
    let u = udp_spread(client, udp_vip, opts.connections);
    histogram("UDP", &u);

    title("lb-agent inspect (first 6 conntrack entries)");
    print!("{}", agent::inspect_text(node.ns(), bpffs.path(), Some(6))?);

    title("bpftool map dump pinned <bpffs>/maps/LB_FRONTENDS (BTF: fields by name)");
    let dump = node.ns().run(
        "bpftool",
        &[
            "map",
            "dump",
            "pinned",
            &format!("{}/maps/LB_FRONTENDS", bpffs.path().display()),
        ],
    )?;
    print!("{dump}");

    title("Endpoints change: echo-3 leaves the EndpointSlice (file renamed into the directory)");
    // The example's Service and slice (echo-abc12), rebuilt without echo-3's endpoint.
    let echo = Service::new("echo", [10, 96, 0, 10])
        .namespace("demo")
        .port("http", Protocol::Tcp, 80, 8080)
        .port("dns", Protocol::Udp, 53, 5353);
    dir.replace(
        "echo-service.yaml",
        &echo.with_endpoints(
            "node-a",
            &[[10, 244, 0, 11].into(), [10, 244, 0, 12].into()],
        ),
    )?;
    let synced = wait_until(Duration::from_secs(10), || {
        agent::inspect_text(node.ns(), bpffs.path(), Some(0))
            .map(|t| !t.contains("10.244.0.13:8080"))
            .unwrap_or(false)
    });
    if !synced {
        bail!("the agent did not apply the change:\n{}", child.logs());
    }
    let s2 = tcp_spread(client, tcp_vip, opts.connections / 3);
    histogram("TCP after the change", &s2);

    title("Exit: the agent leaves the dataplane in place; lb-agent cleanup removes it");
    child.stop()?;
    let after_exit = tcp_spread(client, tcp_vip, 20);
    println!(
        "  with the agent stopped: {} of 20 connections answered",
        after_exit.counts.values().sum::<usize>()
    );
    print!("{}", agent::cleanup(node.ns(), bpffs.path())?);
    let after_cleanup = tcp_spread(client, tcp_vip, 5);
    println!(
        "  after cleanup: {} of 5 connections answered (nothing serves the ClusterIP any more)",
        after_cleanup.counts.values().sum::<usize>()
    );
    drop(servers);
    if s.failures + u.failures + s2.failures > 0
        || s.counts.len() != 3
        || s2.counts.contains_key("echo-3")
    {
        bail!("the demo saw failures:\n{}", child.logs());
    }
    drop(node);
    two_nodes(opts)?;
    println!("\nDemo done: namespaces, pins and the bpffs mounts are removed on exit.");
    Ok(())
}
/// Part two: two nodes and an external client; NodePort traffic from outside on the node
/// devices' tc program (the nodes' NICs are veths on a bridge: no XDP under the default
/// best-effort acceleration).
fn two_nodes(opts: &DemoOpts) -> Result<()> {
    title("Two nodes: node-0 (web-1) and node-1 (web-2, web-3) on a fabric bridge, an external client 172.18.0.100");
    let mut cluster = Cluster::new("demo2", 2)?;
    cluster.node_mut(0).add_pod("web-1", [10, 244, 0, 11])?;
    cluster.node_mut(1).add_pod("web-2", [10, 244, 1, 11])?;
    cluster.node_mut(1).add_pod("web-3", [10, 244, 1, 12])?;
    let mut servers = Vec::new();
    for (node, pod) in [(0, "web-1"), (1, "web-2"), (1, "web-3")] {
        servers.push(cluster.node(node).pod(pod).tcp_server(8080)?);
    }
    let manifests = root().join("examples/two-nodes");
    let mut agents = Vec::new();
    let mut pins = Vec::new();
    for i in 0..2u8 {
        let fs = BpffsGuard::new(&format!("demo2-n{i}"))?;
        let mut run = AgentRun::new(&format!("node-{i}"), fs.path());
        run.manifests(&manifests)
            .devices("eth0")
            .pod_interfaces(POD_IFACE_GLOB)
            .pod_hook(opts.pod_hook)
            .without_http()
            .name(&format!("agent-{i}"));
        agents.push(run.start(cluster.node(i).ns(), AGENT_START)?);
        pins.push(fs);
    }
    println!("  lb-agent run --node node-N --devices eth0 --pod-interfaces 'lxc*' --manifests examples/two-nodes");

    let nodeport: SocketAddr = "172.18.0.10:30080".parse()?;
    title(&format!(
        "Traffic: {} new TCP connections from the external client to node-0's NodePort {nodeport}",
        opts.connections
    ));
    let client = Client::new(cluster.external()).timeout(Duration::from_secs(2));
    let s = client.tcp_spread(nodeport, opts.connections);
    histogram("NodePort", &s);
    let mut seen = std::collections::BTreeMap::new();
    // Source ports below the ephemeral range (32768-60999), where no connection above is left
    // in TIME_WAIT to make the bind fail.
    for port in 21000..21030u16 {
        let r = Client::new(cluster.external())
            .bind(SocketAddr::new([172, 18, 0, 100].into(), port))
            .tcp(nodeport, "who am I to you")?;
        seen.insert(r.identity, r.client_seen.ip());
    }
    for (backend, addr) in &seen {
        let why = if addr.to_string() == "172.18.0.100" {
            "the client itself: the backend is on node-0"
        } else {
            "node-0's address: SNAT, the backend is behind node-1"
        };
        println!("  {backend} saw the client as {addr} ({why})");
    }

    title("A NodePort without endpoints: rejected by tc on node-0's eth0 (ICMP port unreachable)");
    let started = Instant::now();
    let refused = client.tcp("172.18.0.10:30081".parse()?, "hello");
    println!(
        "  connect: {} after {:.2} ms",
        match &refused {
            Ok(_) => "answered?".to_owned(),
            Err(e) => format!("{}", e.root_cause()),
        },
        started.elapsed().as_secs_f64() * 1000.0
    );

    title("lb-agent inspect on node-0 (verdicts and paths)");
    let out = agent::inspect_text(cluster.node(0).ns(), pins[0].path(), Some(4))?;
    for line in out.lines().skip_while(|l| !l.starts_with("Verdicts")) {
        println!("{line}");
    }
    println!(
        "  (tc_redirect: tc sent every packet it rewrote out of the device its route names, the\n   \
         stack never saw them; xdp_*: these NICs are veths, which get no XDP under the default\n   \
         --lb-acceleration best-effort)"
    );
    let failed = s.failures > 0 || s.counts.len() != 3 || refused.is_ok();
    for (i, (mut a, fs)) in agents.into_iter().zip(&pins).enumerate() {
        a.stop()?;
        agent::cleanup(cluster.node(i as u8).ns(), fs.path())?;
    }
    drop(servers);
    if failed {
        bail!("the two-node demo saw failures");
    }
    Ok(())
}
