//! `bench e2e`: new connections/s (connect, request, response, close) and requests/s on
//! established connections, from a client pod to ClusterIPs, through the same node namespace and
//! the same N Services for every contender: our agent (tcx on pod veths, the default), kube-proxy's
//! iptables layout (iptables-restore) and its nftables layout (nft -f), loaded into the node's
//! namespace. Every Service has the same 10 endpoints (10 backend pods, port 8080): the rules
//! and maps still hold N x 10 endpoints (kube-proxy's SEP chains are per Service), only the pods
//! are shared. Each connection goes to a random Service, so rule walks are not all short.
//! The load is concurrent (loadgen.rs), so the CPUs are busy and each rate comes with the
//! machine's CPU time per connection or request. Contenders alternate within each round; each
//! is loaded fresh and removed after.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use lb_common::{
    maps::{Counter, MAP_VERDICTS},
    verdict::Reason,
};
use lb_tests::{
    kube_rules, manifests::ManifestDir, AgentRun, BpffsGuard, Node, TempDir, POD_IFACE_GLOB,
};

use crate::{
    agent::{frontends, stop},
    load_rules::{flush_iptables, load_iptables, load_nft},
    loadgen::{LoadGen, Rate},
    output::write_results,
    services::{fe_key, services, write_manifests, NODE},
    stats::median,
};

/// The contenders; `floor` is no service layer at all: the client connects straight to random
/// backend pods, so the CPU a layer adds per connection is its CPU per connection minus the
/// floor's.
const CONTENDERS: [&str; 4] = ["ours", "iptables", "nftables", "floor"];

/// How hard and how long `bench e2e` drives each contender.
#[derive(clap::Args, Clone)]
pub struct Load {
    /// Contenders to run, comma-separated (the summary's ratios need all four).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ours,iptables,nftables,floor"
    )]
    pub contenders: Vec<String>,
    /// Connection loops (new connections) and open connections (requests) at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured seconds per contender, round and kind (after half a second of warm-up).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Worker threads of the load generator (client and servers together).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Runs the end-to-end benchmark; results in target/bench/e2e.json.
pub fn e2e(sizes: &[usize], rounds: usize, load: &Load) -> Result<()> {
    if let Some(c) = load
        .contenders
        .iter()
        .find(|c| !CONTENDERS.contains(&c.as_str()))
    {
        bail!("--contenders: unknown {c:?}, want some of {CONTENDERS:?}");
    }
    let mut node = Node::new("e2e")?;
    node.add_pod("client", [10, 244, 0, 2])?;
    let pods: Vec<Ipv4Addr> = (0..10).map(|k| Ipv4Addr::new(10, 244, 0, 11 + k)).collect();
    for (k, ip) in pods.iter().enumerate() {
        node.add_pod(&format!("b{k}"), *ip)?;
    }
    let servers: Vec<_> = node.pods()[1..].iter().collect();
    let gen = LoadGen::start(node.pod("client").ns(), &servers, 8080, load.threads)?;
    let direct: Vec<SocketAddr> = pods
        .iter()
        .map(|ip| SocketAddr::from((*ip, 8080)))
        .collect();
    let warmup = Duration::from_millis(500);
    let window = Duration::from_secs_f64(load.seconds);
    let tmp = TempDir::new("e2e")?;
    let mut rows = Vec::new();
    for &n in sizes {
        if n == 0 || n > 60_000 {
            bail!("--services {n}: want 1..=60000");
        }
        let svcs = services(n, 10, |_, k| (pods[k], 8080));
        let vips: Vec<SocketAddr> = svcs
            .iter()
            .map(|s| SocketAddr::from((s.ip, s.port)))
            .collect();
        let mut conn: Vec<Vec<Rate>> = vec![Vec::new(); CONTENDERS.len()];
        let mut req: Vec<Vec<Rate>> = vec![Vec::new(); CONTENDERS.len()];
        for round in 0..rounds {
            for (c, name) in CONTENDERS.iter().enumerate() {
                if !load.contenders.iter().any(|x| x == name) {
                    continue;
                }
                let mut child = None;
                let mut bpffs = None;
                let mut dir = None;
                match *name {
                    "ours" => {
                        let d = ManifestDir::new("e2e")?;
                        write_manifests(&d, &svcs)?;
                        let b = BpffsGuard::new("e2e")?;
                        let mut run = AgentRun::new(NODE, b.path());
                        run.manifests(d.path())
                            .pod_interfaces(POD_IFACE_GLOB)
                            .without_http();
                        let ch = run.start(node.ns(), Duration::from_secs(60))?;
                        let fes = frontends(b.path())?;
                        let key = fe_key(&svcs[n - 1]);
                        let t = Instant::now();
                        while fes.get(&key, 0).map(|f| f.slot_count).ok() != Some(10) {
                            if t.elapsed() > Duration::from_secs(300) {
                                bail!("agent did not program\n{}", ch.logs());
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        child = Some(ch);
                        bpffs = Some(b);
                        dir = Some(d);
                    }
                    "iptables" => {
                        load_iptables(node.ns(), &svcs, tmp.path())?;
                    }
                    "floor" => {}
                    _ => {
                        let f = tmp.path().join("full.nft");
                        std::fs::write(&f, kube_rules::nft_full(&svcs))?;
                        load_nft(node.ns(), &f)?;
                    }
                }
                let to = if *name == "floor" { &direct } else { &vips };
                let r = gen
                    .connections(to, load.concurrency, warmup, window)
                    .and_then(|c| {
                        let r = gen.requests(to, load.concurrency, warmup, window)?;
                        Ok((c, r))
                    });
                if let Some(ch) = child {
                    let b = bpffs.take().context("bpffs")?;
                    // Packets the agent's programs dropped or could not rewrite, by reason.
                    let pin = b.path().join("maps").join(MAP_VERDICTS);
                    let verdicts: PerCpuArray<_, Counter> =
                        PerCpuArray::try_from(Map::from_map_data(MapData::from_pin(&pin)?)?)?;
                    for reason in Reason::ALL {
                        let n: u64 = verdicts
                            .get(&(reason as u32), 0)?
                            .iter()
                            .map(|c| c.packets)
                            .sum();
                        let name = reason.name();
                        if n > 0 && (name.starts_with("drop") || name.starts_with("abort")) {
                            println!("  ours: {n} packets {name}");
                        }
                    }
                    stop(ch, node.ns(), b.path())?;
                }
                drop(dir);
                node.ns().run("nft", &["flush", "ruleset"])?;
                flush_iptables(node.ns())?;
                // The rules layouts leave a conntrack entry per connection (120 s in TIME_WAIT):
                // tens of thousands a run, and the kernel's table (nf_conntrack_max, shared by
                // every namespace) would fill and drop SYNs in the next contender's run.
                node.ns().run("conntrack", &["-F"])?;
                let (cr, rr) = r.with_context(|| format!("{name} at {n} services"))?;
                println!(
                    "{n} services round {round}: {name:<9} {:>8.0} conn/s ({:>5.1} us CPU each, {} errors) {:>8.0} req/s ({:>5.1} us CPU each, {} errors)",
                    cr.per_s, cr.cpu_us, cr.errors, rr.per_s, rr.cpu_us, rr.errors
                );
                for e in [&cr.first_error, &rr.first_error].into_iter().flatten() {
                    println!("  first error: {e}");
                }
                conn[c].push(cr);
                req[c].push(rr);
            }
        }
        if conn.iter().any(|v| v.is_empty()) {
            continue;
        }
        let med =
            |v: &[Rate], f: fn(&Rate) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
        let cm: Vec<f64> = conn.iter().map(|v| med(v, |r| r.per_s)).collect();
        let cc: Vec<f64> = conn.iter().map(|v| med(v, |r| r.cpu_us)).collect();
        let rm: Vec<f64> = req.iter().map(|v| med(v, |r| r.per_s)).collect();
        let rc: Vec<f64> = req.iter().map(|v| med(v, |r| r.cpu_us)).collect();
        let errors: u64 = conn.iter().chain(&req).flatten().map(|r| r.errors).sum();
        let added = |c: usize| cc[c] - cc[3];
        println!(
            "{n} services: conn/s ours {:.0}, iptables {:.0} (ours {:.2}x), nftables {:.0} (ours {:.2}x), floor {:.0}; CPU us/conn {:.1} / {:.1} / {:.1} / floor {:.1} (added: ours {:.1}, iptables {:.1}, nftables {:.1}); req/s {:.0} / {:.0} / {:.0} / {:.0}; {errors} errors",
            cm[0], cm[1], cm[0] / cm[1], cm[2], cm[0] / cm[2], cm[3], cc[0], cc[1], cc[2], cc[3],
            added(0), added(1), added(2), rm[0], rm[1], rm[2], rm[3]
        );
        let three = |v: &[f64], digits: usize| {
            let fields: Vec<String> = CONTENDERS
                .iter()
                .zip(v)
                .map(|(c, x)| format!("\"{c}\":{x:.digits$}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        rows.push(format!(
            "{{\"services\":{n},\"conn_per_s\":{},\"cpu_us_per_conn\":{},\"req_per_s\":{},\"cpu_us_per_req\":{},\"errors\":{errors}}}",
            three(&cm, 0),
            three(&cc, 1),
            three(&rm, 0),
            three(&rc, 2)
        ));
    }
    let json = format!(
        "{{\"benchmark\":\"e2e\",\"rounds\":{rounds},\"concurrency\":{},\"seconds\":{},\"threads\":{},\"results\":[{}]}}\n",
        load.concurrency,
        load.seconds,
        load.threads,
        rows.join(",")
    );
    write_results("e2e.json", &json)
}
