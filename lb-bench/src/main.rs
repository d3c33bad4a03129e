//! `lb-bench`: xdplb's benchmarks against kube-proxy's rule layouts and the floors, run through
//! `cargo xtask bench` (which builds the eBPF object and the release agent first). Each writes
//! target/bench/<benchmark>.json; `report` gathers them into bench/.

mod agent;
mod control_plane;
mod e2e;
mod load_rules;
mod loadgen;
mod output;
mod packet;
mod pod_hook;
mod report;
mod services;
mod stats;
mod sync_latency;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    bin_name = "cargo xtask bench",
    about = "The benchmarks of the XDP load balancer (lb-bench); results in target/bench/<benchmark>.json",
    after_help = "`cargo xtask bench` builds the eBPF object and the release agent first, unless --no-build \
                  (anywhere on its command line)."
)]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

/// The benchmarks.
#[derive(Subcommand)]
enum Which {
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
    Packet(packet::PacketOpts),
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
        load: e2e::Load,
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

/// Runs a benchmark.
fn bench(which: &Which) -> Result<()> {
    match *which {
        Which::PodHook {
            rounds,
            connections,
            requests,
        } => pod_hook::pod_hook(rounds, connections, requests),
        Which::Packet(ref o) => packet::packet(o),
        Which::ControlPlane {
            ref services,
            rounds,
            changes,
        } => control_plane::control_plane(services, rounds, changes),
        Which::E2e {
            ref services,
            rounds,
            ref load,
        } => e2e::e2e(services, rounds, load),
        Which::Report => report::report(),
        Which::All => {
            packet::packet(&packet::PacketOpts {
                services: vec![1, 1000, 10_000, 100_000],
                flows: 1_000_000,
                repeat: 200_000,
                runs: 9,
                calls: 20_000,
            })?;
            control_plane::control_plane(&[100, 1000, 10_000], 1, 4)?;
            e2e::e2e(
                &[100, 1000, 10_000],
                3,
                &e2e::Load {
                    contenders: ["ours", "iptables", "nftables", "floor"]
                        .map(String::from)
                        .into(),
                    concurrency: 32,
                    seconds: 3.0,
                    threads: 2,
                },
            )?;
            report::report()
        }
        Which::SyncLatency {
            ref services,
            changes,
        } => sync_latency::sync_latency(services, changes),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match bench(&cli.which) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Test that the command line is well formed (clap's own consistency checks).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Test that each benchmark takes the options BENCHMARKS.md and the README name.
    #[test]
    fn the_documented_command_lines_parse() {
        for line in [
            "packet --services 1,1000,10000,100000 --flows 1000000 --repeat 200000 --runs 9 --calls 20000",
            "control-plane --services 100,1000,10000 --rounds 1 --changes 4",
            "e2e --services 100,1000,10000 --rounds 3 --concurrency 32 --seconds 3 --threads 2 --contenders ours,iptables,nftables,floor",
            "sync-latency --services 10,10000 --changes 300",
            "pod-hook --rounds 5 --connections 2000 --requests 5000",
            "report",
            "all",
        ] {
            let args = std::iter::once("lb-bench").chain(line.split(' '));
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{line}: {e}");
            }
        }
    }
}
