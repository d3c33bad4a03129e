//! lb-agent: the node agent of the XDP Service load balancer.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lb_agent::{
    dataplane::{self, HookKind, MapSizes},
    host::{DeviceFilter, HostConfig, NodePortAddresses},
    links::{Acceleration, Selector},
    run::{RunConfig, SourceConfig},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "eBPF/XDP Kubernetes Service load balancer: node agent"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The program for pod interfaces.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum PodHook {
    /// tcx ingress (default): exact checksums through the kernel's helpers, and the faster one
    /// here (see docs/ARCHITECTURE.md).
    Tc,
    /// Native XDP on the host side of each veth.
    Xdp,
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at startup; boxing Run's flags would buy nothing"
)]
enum Cmd {
    /// Program the dataplane from the Kubernetes API (or manifests) and keep it in sync until
    /// SIGINT/SIGTERM.
    Run {
        /// Directory of Service, EndpointSlice and Node manifests (YAML as kubectl prints it)
        /// instead of the Kubernetes API.
        #[arg(long, conflicts_with = "kubeconfig")]
        manifests: Option<PathBuf>,
        /// kubeconfig for the API server; without it (and without --manifests), the
        /// in-cluster service account, as kube-proxy.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// /healthz and /livez (kube-proxy's meaning) on this address; empty to disable.
        #[arg(long, default_value = "0.0.0.0:10256", value_parser = bind_address)]
        healthz_bind_address: BindAddress,
        /// /metrics (Prometheus) on this address; empty to disable.
        #[arg(long, default_value = "127.0.0.1:10249", value_parser = bind_address)]
        metrics_bind_address: BindAddress,
        /// This node's name (as its Node object).
        #[arg(long, alias = "hostname-override", env = "NODE_NAME")]
        node: String,
        /// Node devices (NICs, overlays) that get the node-device programs (tc, and XDP as
        /// --lb-acceleration says): names and globs, comma-separated, e.g. 'eth0,bond*'.
        /// Without it, detected: devices with a default route, the Node object's addresses or a
        /// global route of their own (veths only with the first two), and overlays (vxlan,
        /// geneve, wireguard ...); never loopback, pod interfaces, bridges or bridge and bond
        /// ports. Followed as links, addresses and routes change.
        #[arg(long, value_delimiter = ',', value_parser = glob_pattern)]
        devices: Vec<glob::Pattern>,
        /// Where NodePorts answer, kube-proxy's --nodeport-addresses: CIDRs of either family,
        /// comma-separated (every address of this node inside one; a family without CIDRs:
        /// all of its addresses), or 'primary' (the Node object's first InternalIP per family).
        /// Default: every address of every node device. Loopback addresses never. Followed as
        /// addresses change.
        #[arg(long, default_value = "", hide_default_value = true)]
        nodeport_addresses: NodePortAddresses,
        /// Globs of pod interface names (host side), comma-separated, e.g. 'lxc*,cali*'.
        #[arg(long, value_delimiter = ',', value_parser = glob_pattern)]
        pod_interfaces: Vec<glob::Pattern>,
        /// Program for pod interfaces.
        #[arg(long, value_enum, default_value = "tc")]
        pod_hook: PodHook,
        /// XDP on node devices, in front of their tc program: native XDP on devices that are
        /// not veths and accept it (best-effort), on every device (native), or none.
        #[arg(long, value_enum, default_value = "best-effort")]
        lb_acceleration: Acceleration,
        /// bpffs directory for pins; a bpffs is mounted there if none is.
        #[arg(long, default_value = "/sys/fs/bpf/xdplb")]
        bpffs: PathBuf,
        /// Capacity of the conntrack map (entries; two per flow).
        #[arg(long, default_value_t = MapSizes::default().conntrack)]
        conntrack_size: u32,
        /// Capacity of the frontend map.
        #[arg(long, default_value_t = MapSizes::default().frontends)]
        max_frontends: u32,
        /// Changes closer together than this are applied in one sync (kube-proxy's
        /// --min-sync-period), e.g. 10ms.
        #[arg(long, default_value = "10ms", value_parser = humantime_ms)]
        min_sync_period: Duration,
        /// Full resync against the kernel's maps this often, e.g. 60s.
        #[arg(long, default_value = "60s", value_parser = humantime_ms)]
        resync_period: Duration,
        /// Enforce a Service's loadBalancerSourceRanges on its NodePorts too, not only on its
        /// load-balancer IPs.
        #[arg(long)]
        nodeport_source_ranges: bool,
    },
    /// Print what kube-proxy would program for a node, as JSON.
    Plan {
        #[arg(long)]
        manifests: PathBuf,
        #[arg(long, alias = "hostname-override", env = "NODE_NAME")]
        node: String,
    },
    /// Show frontends, backends, counters, conntrack and links from the pinned maps.
    Inspect {
        #[arg(long, default_value = "/sys/fs/bpf/xdplb")]
        bpffs: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Show at most this many conntrack entries (text output).
        #[arg(long)]
        conntrack_limit: Option<usize>,
    },
    /// Remove every program, link, pin and map the agent created under --bpffs.
    Cleanup {
        #[arg(long, default_value = "/sys/fs/bpf/xdplb")]
        bpffs: PathBuf,
    },
}

/// A listen address given as ADDRESS:PORT, or "" for "do not listen".
#[derive(Clone, Copy, Debug)]
struct BindAddress(Option<SocketAddr>);

/// Parses ADDRESS:PORT, or "" to disable the listener.
fn bind_address(s: &str) -> Result<BindAddress, String> {
    if s.is_empty() {
        return Ok(BindAddress(None));
    }
    s.parse().map(|addr| BindAddress(Some(addr))).map_err(|_| {
        "want ADDRESS:PORT (e.g. 0.0.0.0:10256 or [::]:10256), or empty to disable".into()
    })
}

/// Parses a glob of interface names, e.g. 'lxc*'.
fn glob_pattern(s: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(s).map_err(|e| format!("not a glob: {e}"))
}

/// Parses "10ms", "2s", "1m" or a bare number of milliseconds.
fn humantime_ms(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            manifests,
            kubeconfig,
            healthz_bind_address,
            metrics_bind_address,
            node,
            devices,
            nodeport_addresses,
            pod_interfaces,
            pod_hook,
            lb_acceleration,
            bpffs,
            conntrack_size,
            max_frontends,
            min_sync_period,
            resync_period,
            nodeport_source_ranges,
        } => {
            let cfg = RunConfig {
                source: match manifests {
                    Some(dir) => SourceConfig::Manifests(dir),
                    None => SourceConfig::Api { kubeconfig },
                },
                healthz_bind_address: healthz_bind_address.0,
                metrics_bind_address: metrics_bind_address.0,
                node,
                bpffs,
                host: HostConfig {
                    devices: DeviceFilter { patterns: devices },
                    pod_patterns: pod_interfaces.clone(),
                    nodeport_addresses,
                },
                selector: Selector {
                    devices: Default::default(),
                    acceleration: lb_acceleration,
                    pod_patterns: pod_interfaces,
                    pod_hook: match pod_hook {
                        PodHook::Tc => HookKind::Tc,
                        PodHook::Xdp => HookKind::XdpPod,
                    },
                },
                sizes: MapSizes {
                    conntrack: conntrack_size,
                    frontends: max_frontends,
                    ..MapSizes::default()
                },
                min_sync_period,
                resync_period,
                nodeport_source_ranges,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(lb_agent::run::run(cfg))
        }
        Cmd::Plan { manifests, node } => lb_agent::cli_plan::run_plan_command(&manifests, &node),
        Cmd::Inspect {
            bpffs,
            json,
            conntrack_limit,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&lb_agent::inspect::inspect_json(&bpffs)?)?
                );
            } else {
                print!(
                    "{}",
                    lb_agent::inspect::inspect_text(&bpffs, conntrack_limit)?
                );
            }
            Ok(())
        }
        Cmd::Cleanup { bpffs } => {
            let removed = dataplane::cleanup(&bpffs)
                .with_context(|| format!("cleaning up {}", bpffs.display()))?;
            for p in &removed {
                println!("removed {}", p.display());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bind addresses `lb-agent run` was given, parsed as clap parses them.
    fn bind_addresses(args: &[&str]) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let argv = ["lb-agent", "run", "--node", "n"].iter().chain(args);
        match Cli::try_parse_from(argv).expect("arguments parse").cmd {
            Cmd::Run {
                healthz_bind_address,
                metrics_bind_address,
                ..
            } => (healthz_bind_address.0, metrics_bind_address.0),
            _ => unreachable!("run was given"),
        }
    }

    /// Test that the bind addresses default to kube-proxy's ports and that an empty value
    /// disables the listener (the tests and benchmarks start agents that way).
    #[test]
    fn bind_addresses_default_and_empty_disables() {
        assert_eq!(
            bind_addresses(&[]),
            (
                Some("0.0.0.0:10256".parse().unwrap()),
                Some("127.0.0.1:10249".parse().unwrap())
            )
        );
        assert_eq!(
            bind_addresses(&[
                "--healthz-bind-address",
                "",
                "--metrics-bind-address",
                "[::1]:9"
            ]),
            (None, Some("[::1]:9".parse().unwrap()))
        );
    }
}
