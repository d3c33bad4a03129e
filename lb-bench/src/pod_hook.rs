//! Benchmarks (`sync-latency` lives in bench_sync.rs). `pod-hook`: which program serves pod
//! interfaces best, tcx or XDP, measured as
//! new TCP connections per second and requests per second on one established connection,
//! from a client pod to a ClusterIP, against the routing floor (client to backend pod IP,
//! no program attached). Contenders alternate within each round; medians are reported.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use lb_tests::{BpffsGuard, Client, Node, TempDir, POD_IFACE_GLOB};

use crate::{
    bench_cp::median,
    build::{self, root},
};

/// Options of `bench`.
#[derive(Args)]
pub struct BenchOpts {
    #[command(subcommand)]
    pub which: Which,
    /// Skip building (use the binaries already built).
    #[arg(long, global = true)]
    pub no_build: bool,
}

/// The benchmarks.
#[derive(Subcommand)]
pub enum Which {
    /// tcx vs XDP on pod interfaces: new connections/s and requests/s through a ClusterIP.
    PodHook {
        /// Rounds; each runs every contender once.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// New connections per measurement.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// Requests on one established connection per measurement.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
    },
    /// Per-packet cost (BPF_PROG_TEST_RUN) against the floors, 1 to 100,000 Services, 1M flows.
    Packet(crate::bench_packet::PacketOpts),
    /// Start to programmed, one endpoint change, agent RSS: ours vs iptables-restore and nft -f.
    ControlPlane {
        /// Numbers of Services (10 endpoints each), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        services: Vec<usize>,
        /// Rounds; each runs every contender once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Endpoint changes per contender and round.
        #[arg(long, default_value_t = 6)]
        changes: usize,
    },
    /// New connections/s and requests/s through N ClusterIPs: ours vs kube-proxy's layouts.
    E2e {
        /// Numbers of Services (10 endpoints each), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        services: Vec<usize>,
        /// Rounds; each runs every contender once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[command(flatten)]
        load: crate::bench_e2e::Load,
    },
    /// Gather target/bench/*.json into bench/results.json and bench/*.svg; print the tables.
    Report,
    /// packet, control-plane and e2e at their default sizes, then report.
    All,
    /// EndpointSlice change at the (fake) API -> map entry updated: p50/p99 at each size.
    SyncLatency {
        /// Numbers of Services, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,10000")]
        services: Vec<usize>,
        /// Changes measured at each size.
        #[arg(long, default_value_t = 300)]
        changes: usize,
    },
}

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
}

/// Runs a benchmark.
pub fn bench(opts: &BenchOpts) -> Result<()> {
    if !opts.no_build {
        build::build_all()?;
    }
    match opts.which {
        Which::PodHook {
            rounds,
            connections,
            requests,
        } => pod_hook(rounds, connections, requests),
        Which::Packet(ref o) => crate::bench_packet::packet(o),
        Which::ControlPlane {
            ref services,
            rounds,
            changes,
        } => crate::bench_cp::control_plane(services, rounds, changes),
        Which::E2e {
            ref services,
            rounds,
            ref load,
        } => crate::bench_e2e::e2e(services, rounds, load),
        Which::Report => crate::bench_report::report(),
        Which::All => {
            crate::bench_packet::packet(&crate::bench_packet::PacketOpts {
                services: vec![1, 1000, 10_000, 100_000],
                flows: 1_000_000,
                repeat: 200_000,
                runs: 9,
                calls: 20_000,
            })?;
            crate::bench_cp::control_plane(&[100, 1000, 10_000], 1, 4)?;
            crate::bench_e2e::e2e(
                &[100, 1000, 10_000],
                3,
                &crate::bench_e2e::Load {
                    contenders: ["ours", "iptables", "nftables", "floor"]
                        .map(String::from)
                        .into(),
                    concurrency: 32,
                    seconds: 3.0,
                    threads: 2,
                },
            )?;
            crate::bench_report::report()
        }
        Which::SyncLatency {
            ref services,
            changes,
        } => crate::bench_sync::sync_latency(services, changes),
    }
}

fn pod_hook(rounds: usize, connections: usize, requests: usize) -> Result<()> {
    let agent = root().join("target/release/lb-agent");
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
            root().join("examples/manifests").join(f),
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
            let mut child = None;
            if *c != Contender::Direct {
                let hook = if *c == Contender::Tc { "tc" } else { "xdp" };
                let mut cmd = Command::new(&agent);
                cmd.args([
                    "run",
                    "--node",
                    "node-a",
                    "--pod-interfaces",
                    POD_IFACE_GLOB,
                ])
                .args(["--pod-hook", hook, "--manifests"])
                .arg(manifests.path())
                .arg("--bpffs")
                .arg(bpffs.path());
                let mut ch = node.ns().spawn("agent", &cmd)?;
                ch.wait_for_output("running", Duration::from_secs(20))
                    .with_context(|| ch.logs())?;
                child = Some(ch);
            }
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
            if let Some(mut ch) = child {
                ch.stop()?;
                let out = Command::new(&agent)
                    .args(["cleanup", "--bpffs"])
                    .arg(bpffs.path())
                    .output()?;
                if !out.status.success() {
                    bail!("cleanup failed: {}", String::from_utf8_lossy(&out.stderr));
                }
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
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("pod-hook.json"), json)?;
    println!("tc vs XDP new connections: {:.2}x", conn[1] / conn[2]);
    println!("results in {}", out.join("pod-hook.json").display());
    Ok(())
}
