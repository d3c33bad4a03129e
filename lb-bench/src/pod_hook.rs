//! `bench pod-hook`: which program serves pod interfaces best, tcx or XDP, measured as new TCP
//! connections per second and requests per second on one established connection, from a client
//! pod to a ClusterIP, against the routing floor (client to backend pod IP, no program attached).
//! Contenders alternate within each round; medians are reported.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use lb_tests::{
    workspace_root, AgentRun, BpffsGuard, Client, Node, PodHook, TempDir, POD_IFACE_GLOB,
};

use crate::{agent::stop, output::write_results, stats::median};

#[derive(Clone, Copy, PartialEq)]
enum Contender {
    Direct,
    Tc,
    Xdp,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Direct => "no program, pod IP (floor)",
            Contender::Tc => "tcx on pod veths, ClusterIP",
            Contender::Xdp => "XDP on pod veths, ClusterIP",
        }
    }

    /// The agent's program on pod interfaces; none for the floor (no agent).
    fn hook(self) -> Option<PodHook> {
        match self {
            Contender::Direct => None,
            Contender::Tc => Some(PodHook::Tc),
            Contender::Xdp => Some(PodHook::Xdp),
        }
    }
}

/// Runs the pod-hook benchmark; results in target/bench/pod-hook.json.
pub fn pod_hook(rounds: usize, connections: usize, requests: usize) -> Result<()> {
    let mut node = Node::new("bench")?;
    node.add_pod("client", [10, 244, 0, 2])?;
    for i in 1..=3u8 {
        node.add_pod(&format!("echo-{i}"), [10, 244, 0, 10 + i])?;
    }
    let _servers = node.pods()[1..]
        .iter()
        .map(|p| p.tcp_server(8080))
        .collect::<Result<Vec<_>>>()?;
    let manifests = TempDir::new("bench-manifests")?;
    for f in ["node.yaml", "echo-service.yaml"] {
        std::fs::copy(
            workspace_root().join("examples/manifests").join(f),
            manifests.path().join(f),
        )?;
    }
    let vip: SocketAddr = "10.96.0.10:80".parse()?;
    let direct: SocketAddr = "10.244.0.11:8080".parse()?;
    let contenders = [Contender::Direct, Contender::Tc, Contender::Xdp];
    let mut conn_rates = vec![Vec::new(); 3];
    let mut req_rates = vec![Vec::new(); 3];
    for round in 0..rounds {
        for (i, c) in contenders.iter().enumerate() {
            let bpffs = BpffsGuard::new("bench")?;
            let child = match c.hook() {
                Some(hook) => {
                    // The Node of examples/manifests/node.yaml.
                    let mut run = AgentRun::new("node-a", bpffs.path());
                    run.manifests(manifests.path())
                        .pod_interfaces(POD_IFACE_GLOB)
                        .pod_hook(hook);
                    Some(run.start(node.ns(), Duration::from_secs(20))?)
                }
                None => None,
            };
            let target = if *c == Contender::Direct { direct } else { vip };
            let client = Client::new(node.pod("client").ns()).budget(Duration::from_secs(120));
            let start = Instant::now();
            let spread = client.tcp_spread(target, connections);
            let conn_rate = connections as f64 / start.elapsed().as_secs_f64();
            if spread.failures > 0 {
                bail!(
                    "{}: {} connections failed: {:?}",
                    c.name(),
                    spread.failures,
                    spread.errors
                );
            }
            let mut conn = client.tcp_conn(target)?;
            let start = Instant::now();
            for r in 0..requests {
                conn.request(&format!("r{r}"))?;
            }
            let req_rate = requests as f64 / start.elapsed().as_secs_f64();
            drop(conn);
            conn_rates[i].push(conn_rate);
            req_rates[i].push(req_rate);
            println!(
                "round {round}: {:<28} {conn_rate:>8.0} conn/s {req_rate:>8.0} req/s",
                c.name()
            );
            if let Some(ch) = child {
                stop(ch, node.ns(), bpffs.path())?;
            }
        }
    }
    let conn: Vec<f64> = conn_rates.iter_mut().map(|v| median(v)).collect();
    let req: Vec<f64> = req_rates.iter_mut().map(|v| median(v)).collect();
    println!("\nMedians of {rounds} rounds ({connections} connections, {requests} requests each):");
    println!(
        "{:<30} {:>10} {:>8} {:>10} {:>8}",
        "contender", "conn/s", "vs floor", "req/s", "vs floor"
    );
    let mut json = String::from("{\"benchmark\":\"pod-hook\",\"results\":[");
    for (i, c) in contenders.iter().enumerate() {
        println!(
            "{:<30} {:>10.0} {:>8.2} {:>10.0} {:>8.2}",
            c.name(),
            conn[i],
            conn[i] / conn[0],
            req[i],
            req[i] / req[0]
        );
        json.push_str(&format!(
            "{}{{\"contender\":\"{}\",\"conn_per_s\":{:.0},\"req_per_s\":{:.0}}}",
            if i > 0 { "," } else { "" },
            c.name(),
            conn[i],
            req[i]
        ));
    }
    json.push_str("]}\n");
    println!("tc vs XDP new connections: {:.2}x", conn[1] / conn[2]);
    write_results("pod-hook.json", &json)
}
