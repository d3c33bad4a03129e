//! `bench sync-latency`: how long an EndpointSlice change at the API takes to reach the BPF
//! maps. The real agent runs in a node namespace against the fake API server (the real
//! list/watch protocol over HTTP on the node's 127.0.0.1) with N Services of 2 endpoints each;
//! one slice at a time flips between 2 and 3 endpoints, and the bench reads the pinned
//! `LB_FRONTENDS` map directly until the frontend's slot count shows the change. Each change
//! waits for the previous one to land and for --min-sync-period to pass, so it measures the
//! latency of one change, not a batch.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use lb_common::maps::{FrontendKey, PROTO_TCP};
use lb_tests::{
    fakeapi::FakeApi,
    objects::{node, ready, tcp_port, Service},
    Node,
};
use serde_json::Value;

use crate::{
    agent::{stop, ApiAgent},
    output::write_results,
    stats::percentile,
};

const NODE: &str = "node-a";
const MIN_SYNC: Duration = Duration::from_millis(10);

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn endpoint_ip(i: usize, k: usize) -> Ipv4Addr {
    let n = i * 3 + k;
    Ipv4Addr::new(10, 244, (n / 250) as u8, (n % 250 + 2) as u8)
}

/// Service `bench/svc-i`: port 80 to 8080.
fn service(i: usize) -> Service {
    Service::new(&format!("svc-{i}"), cluster_ip(i))
        .namespace("bench")
        .with_port(tcp_port("http", 80, 8080))
}

/// Service i's EndpointSlice with `endpoints` ready endpoints.
fn slice(i: usize, endpoints: usize) -> Value {
    let eps: Vec<_> = (0..endpoints)
        .map(|k| ready(endpoint_ip(i, k), NODE))
        .collect();
    service(i).slice(&eps)
}

fn key(i: usize) -> FrontendKey {
    FrontendKey {
        addr_be: u32::from_ne_bytes(cluster_ip(i).octets()),
        port_be: 80u16.to_be(),
        proto: PROTO_TCP,
        scope: 0,
    }
}

/// One run at `services` Services; returns the sorted latencies.
fn run_one(services: usize, changes: usize) -> Result<Vec<Duration>> {
    let node_ns = Node::new("bench-sync")?;
    let api = FakeApi::start(node_ns.ns())?;
    api.apply(node(NODE, Some("172.18.0.10")))?;
    let started = Instant::now();
    for i in 0..services {
        api.apply(service(i).object())?;
        api.apply(slice(i, 2))?;
    }
    let mut agent_run = ApiAgent::new(&api, NODE, "bench-sync")?;
    agent_run
        .run
        .flag("--min-sync-period", format!("{}ms", MIN_SYNC.as_millis()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut agent, frontends) = agent_run.spawn(node_ns.ns(), deadline)?;
    let slots = |i: usize| frontends.get(&key(i), 0).ok().map(|f| f.slot_count);
    // Initial sync: the last Service is programmed.
    while slots(services - 1) != Some(2) {
        if Instant::now() > deadline || !agent.is_running() {
            bail!("initial sync did not finish\n{}", agent.logs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "{services} services: created, listed and programmed in {:.2?}",
        started.elapsed()
    );

    let mut state = vec![2usize; services];
    let mut latencies = Vec::with_capacity(changes);
    // A cheap deterministic spread over the services (LCG).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..changes {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let i = (x >> 33) as usize % services;
        let want = if state[i] == 2 { 3 } else { 2 };
        let obj = slice(i, want);
        std::thread::sleep(MIN_SYNC + Duration::from_millis(5));
        let t0 = Instant::now();
        api.apply(obj)?;
        loop {
            if slots(i) == Some(want as u32) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change {i} did not land within 30 s\n{}", agent.logs());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        latencies.push(t0.elapsed());
        state[i] = want;
    }
    // The agent's own view of the same syncs: replanning, and replanning + map writes.
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = line.split(&format!(" {name}=")).nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    let log = agent.stderr();
    let mut plan_us = Vec::new();
    let mut sync_us = Vec::new();
    for line in log.lines().filter(|l| l.contains("reason=\"API changes\"")) {
        plan_us.extend(field(line, "plan_us"));
        sync_us.extend(field(line, "elapsed_us"));
    }
    plan_us.sort_unstable();
    sync_us.sort_unstable();
    if !sync_us.is_empty() {
        println!(
            "{services} services: in the agent, per sync: replan p50 {} us, replan + maps p50 {} us, p99 {} us ({} syncs)",
            plan_us[plan_us.len() / 2],
            sync_us[sync_us.len() / 2],
            sync_us[(sync_us.len() - 1) * 99 / 100],
            sync_us.len()
        );
    }
    stop(agent, node_ns.ns(), agent_run.bpffs())?;
    latencies.sort();
    Ok(latencies)
}

/// Runs the benchmark at each size and prints p50, p99 and max.
pub fn sync_latency(sizes: &[usize], changes: usize) -> Result<()> {
    let mut rows = Vec::new();
    for &n in sizes {
        if n == 0 || n > 60_000 {
            bail!("--services {n}: want 1..=60000");
        }
        let l = run_one(n, changes)?;
        let (p50, p99, max) = (percentile(&l, 0.5), percentile(&l, 0.99), l[l.len() - 1]);
        println!("{n} services: {changes} changes: p50 {p50:.2?} p99 {p99:.2?} max {max:.2?}");
        rows.push((n, p50, p99, max));
    }
    println!(
        "\nEndpointSlice change at the API -> LB_FRONTENDS entry updated ({changes} changes each):"
    );
    println!(
        "{:>10} {:>12} {:>12} {:>12}",
        "services", "p50", "p99", "max"
    );
    let mut json = String::from("{\"benchmark\":\"sync-latency\",\"results\":[");
    for (k, (n, p50, p99, max)) in rows.iter().enumerate() {
        println!("{n:>10} {p50:>12.2?} {p99:>12.2?} {max:>12.2?}");
        json.push_str(&format!(
            "{}{{\"services\":{n},\"changes\":{changes},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            if k > 0 { "," } else { "" },
            p50.as_micros(),
            p99.as_micros(),
            max.as_micros()
        ));
    }
    json.push_str("]}\n");
    write_results("sync-latency.json", &json)
}
