//! `bench packet`: per-packet cost through BPF_PROG_TEST_RUN (needs root).
//!
//! One set of maps, sized for the largest point, holds 1, then 1,000, 10,000 and 100,000
//! ClusterIP Services of 10 backends each (added incrementally through the agent's own map
//! writer) and a conntrack table filled from userspace with `--flows` established flows
//! (two entries each) before anything is measured.
//!
//! Two ways of timing, because BPF_PROG_TEST_RUN with `repeat` runs the program again and again
//! on the same buffer, rewritten in place:
//!
//! - `repeat`: the kernel's own average over `--repeat` runs of one packet. Only programs that
//!   leave the packet as they found it can be timed so: `lb_pass` (bare XDP_PASS),
//!   `lb_lookup1` (exactly one LB_FRONTENDS lookup), and our program for an established flow
//!   whose conntrack entry (written from userspace) DNATs the VIP to itself. That flow does the
//!   whole established path (frontend lookup, conntrack lookup, per-frontend counters, DNAT
//!   with checksum updates, verdict counters); the bytes it writes are the same ones.
//! - `single`: one run per syscall, each on a different packet, median of the kernel's
//!   per-call times (which include the test harness's own timer and bh/rcu entry, ~tens of ns,
//!   measured by `lb_pass` in the same mode). This is how the first packet of a new flow is
//!   timed (every call a fresh 5-tuple to a random Service), and established flows spread over
//!   random Services (caches not warmed by one key). It also times the node-device programs'
//!   established path, which forwards (and so rewrites the TTL and MACs, never the same packet
//!   twice): the XDP accelerator sending the flow back out of its device (`lb_xdp`, XDP_TX) and
//!   tc redirecting it (`lb_tc_nic`).
//!
//! Everything runs in a network namespace of its own, whose routes make the FIB lookups the
//! same everywhere: a node device `eth0` with the backends' range routed back out of it through
//! a permanent neighbour; the Services' range has no route, so the pod hooks' self-DNAT flow of
//! `repeat` mode goes to the stack untouched (tc: after its FIB lookup).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::HashMap,
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::PacketBuilder;
use lb_agent::{
    dataplane::{Dataplane, HookKind, MapSizes},
    entries::{self, Capacity, Entries, Ids},
    plan::{Frontend, FrontendKind, Plan, Protocol},
};
use lb_common::maps::{
    CtEntry, CtKey, Frontend as FeValue, FrontendKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, MAP_CT,
    MAP_FRONTENDS, PROTO_TCP,
};
use lb_tests::{ebpf_object, BpffsGuard, NetNs};

use crate::{output::write_results, stats::median};

const BACKENDS: usize = 10;
/// XDP_TX and TC_ACT_REDIRECT, as BPF_PROG_TEST_RUN reports them.
const XDP_TX: u32 = 3;
const TC_ACT_REDIRECT: u32 = 7;
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

/// Options of `packet`.
#[derive(clap::Args, Clone)]
pub struct PacketOpts {
    /// Numbers of Services (10 backends each), ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    pub services: Vec<usize>,
    /// Established flows in the conntrack table (two entries each).
    #[arg(long, default_value_t = 1_000_000)]
    pub flows: usize,
    /// Program runs per BPF_PROG_TEST_RUN call in `repeat` mode.
    #[arg(long, default_value_t = 200_000)]
    pub repeat: u32,
    /// Measurements per point (median taken); contenders alternate within each.
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
    /// Calls per contender in `single` mode (one packet per call).
    #[arg(long, default_value_t = 20_000)]
    pub calls: usize,
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32)
}

fn backend_ip(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * BACKENDS + k) as u32)
}

fn frontend(i: usize) -> Frontend {
    Frontend {
        service: format!("bench/svc-{i}"),
        port_name: "http".into(),
        kind: FrontendKind::ClusterIP,
        ip: IpAddr::V4(cluster_ip(i)),
        port: PORT,
        protocol: Protocol::Tcp,
        backends: (0..BACKENDS)
            .map(|k| SocketAddr::new(IpAddr::V4(backend_ip(i, k)), TARGET_PORT))
            .collect(),
        on_empty: None,
        affinity_timeout_seconds: None,
        scope: Default::default(),
        source_ranges: Vec::new(),
        local_backends: Vec::new(),
    }
}

fn tcp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xaa], [2, 0, 0, 0, 0, 0xbb])
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let payload = [0u8; 64];
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("packet");
    v
}

fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A cheap deterministic generator.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 16
    }
}

fn be32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// Conntrack entries of an established TCP flow client -> vip:PORT DNATed to nat.
fn ct_pair(
    client: (Ipv4Addr, u16),
    vip: Ipv4Addr,
    nat: (Ipv4Addr, u16),
    fe_id: u32,
    now: u64,
) -> [(CtKey, CtEntry); 2] {
    let orig = CtKey {
        saddr_be: be32(client.0),
        daddr_be: be32(vip),
        sport_be: client.1.to_be(),
        dport_be: PORT.to_be(),
        proto: PROTO_TCP,
        dir: CT_DIR_ORIGINAL,
        _pad: [0; 2],
    };
    let reply = CtKey {
        saddr_be: be32(nat.0),
        daddr_be: be32(client.0),
        sport_be: nat.1.to_be(),
        dport_be: client.1.to_be(),
        proto: PROTO_TCP,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let entry = |addr: Ipv4Addr, port: u16| CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_addr_be: be32(addr),
        nat_port_be: port.to_be(),
        flags: 0,
        backend_id: 1,
        frontend_id: fe_id,
        rev_addr_be: 0,
        rev_port_be: 0,
        _pad: 0,
    };
    [(orig, entry(nat.0, nat.1)), (reply, entry(vip, PORT))]
}

/// The floor programs, loaded from the object with the very maps the agent's programs use.
struct Floors {
    ebpf: Ebpf,
}

impl Floors {
    fn load(object: &[u8], bpffs: &std::path::Path, sizes: MapSizes) -> Result<Self> {
        let maps_dir = bpffs.join("maps");
        let mut loader = lb_agent::dataplane::loader(&maps_dir, sizes);
        let mut ebpf = loader.load(object).context("loading the object")?;
        for name in ["lb_pass", "lb_lookup1"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing: rebuild with cargo xtask build-ebpf"))?
                .try_into()?;
            prog.load()?;
        }
        Ok(Self { ebpf })
    }

    fn run(&mut self, name: &str, pkt: &[u8], out: &mut [u8], repeat: u32) -> Result<(u32, u64)> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .context(name.to_string())?
            .try_into()?;
        let r = prog.test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(out),
            repeat,
            ..TestRunOptions::new()
        })?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Prog {
    Pass,
    Lookup1,
    Ours(HookKind),
}

struct Bench {
    dp: Dataplane,
    floors: Floors,
    out: Vec<u8>,
    /// The node device's index in the benchmark's namespace.
    eth0: u32,
}

impl Bench {
    fn run(&mut self, p: Prog, pkt: &[u8], repeat: u32) -> Result<(u32, u64)> {
        match p {
            Prog::Pass => self.floors.run("lb_pass", pkt, &mut self.out, repeat),
            Prog::Lookup1 => self.floors.run("lb_lookup1", pkt, &mut self.out, repeat),
            Prog::Ours(h) => {
                let r = self.dp.test_run(h, pkt, &mut self.out, repeat)?;
                Ok((r.return_value, r.duration.as_nanos() as u64))
            }
        }
    }

    /// Runs node-device hook `h` once on `pkt` arriving on eth0.
    fn run_on_eth0(&mut self, h: HookKind, pkt: &[u8]) -> Result<(u32, u64)> {
        let words: Vec<u32> = if h == HookKind::Xdp {
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ...
            vec![0, pkt.len() as u32, 0, self.eth0, 0, 0]
        } else {
            // struct __sk_buff up to ifindex: ingress_ifindex and ifindex.
            let mut w = vec![0; 11];
            w[9] = self.eth0;
            w[10] = self.eth0;
            w
        };
        let ctx: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let r = self.dp.test_run_ctx(h, pkt, &mut self.out, 1, Some(&ctx))?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }
}

/// The benchmark's network namespace: node device `eth0` (a veth), the backends' range
/// (10.128.0.0/12: a million addresses, ten backends for each of up to 100,000 Services) routed
/// back out of it through a permanent neighbour.
fn bench_netns() -> Result<NetNs> {
    let ns = NetNs::new("bench-pkt")?;
    #[rustfmt::skip]
    let steps: &[&[&str]] = &[
        &["link", "add", "eth0", "type", "veth", "peer", "name", "wire"],
        &["link", "set", "eth0", "up"],
        &["link", "set", "wire", "up"],
        &["addr", "add", "172.18.0.10/24", "dev", "eth0"],
        &["neigh", "add", "172.18.0.11", "lladdr", "02:00:00:00:00:11", "dev", "eth0", "nud", "permanent"],
        &["route", "add", "10.128.0.0/12", "via", "172.18.0.11", "dev", "eth0"],
    ];
    for args in steps {
        ns.ip(args)?;
    }
    ns.set_sysctl("ipv4/ip_forward", "1")?;
    Ok(ns)
}

/// Runs the per-packet benchmark with the object `cargo xtask build-ebpf` wrote, in a network
/// namespace of its own (see the module's doc); results in target/bench/packet.json.
pub fn packet(opts: &PacketOpts) -> Result<()> {
    let ns = bench_netns()?;
    let eth0 = ns.ifindex("eth0")?;
    ns.enter(|| packet_in_netns(opts, eth0))
}

fn packet_in_netns(opts: &PacketOpts, eth0: u32) -> Result<()> {
    if opts.services.is_empty() || opts.services.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--services: ascending sizes");
    }
    let max = *opts.services.last().expect("nonempty");
    let object_path = ebpf_object();
    let object = std::fs::read(&object_path)
        .with_context(|| format!("reading the eBPF object {}", object_path.display()))?;
    let bpffs = BpffsGuard::new("bench-pkt")?;
    let sizes = MapSizes {
        frontends: (max as u32 + 1).next_power_of_two().max(1024),
        slots: ((max * BACKENDS) as u32 + 1).next_power_of_two().max(1024),
        backends: ((max * BACKENDS) as u32 + 1).next_power_of_two().max(1024),
        conntrack: (2 * opts.flows as u32 + (1 << 18)).next_power_of_two(),
    };
    eprintln!("map sizes: {sizes:?}");
    let dp = Dataplane::load(bpffs.path(), sizes)?;
    let floors = Floors::load(&object, bpffs.path(), sizes)?;
    let mut b = Bench {
        dp,
        floors,
        out: vec![0u8; 4096],
        eth0,
    };
    let mut ids = Ids::new(Capacity {
        frontends: sizes.frontends,
        backends: sizes.backends,
    });
    let mut current = Entries::default();

    // Conntrack: --flows established flows from random clients to random Services.
    let t0 = Instant::now();
    let now = now_ns();
    let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
    {
        let mut ct: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(b.floors.ebpf.map_mut(MAP_CT).context("LB_CT")?)?;
        for _ in 0..opts.flows {
            let r = rng.next();
            let client = (
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (r as u32 & 0xffff)),
                1024 + ((r >> 20) % 60_000) as u16,
            );
            let svc = (r >> 40) as usize % max;
            let k = (r >> 8) as usize % BACKENDS;
            for (key, e) in ct_pair(
                client,
                cluster_ip(svc),
                (backend_ip(svc, k), TARGET_PORT),
                svc as u32 + 1,
                now,
            ) {
                ct.insert(key, e, 0)?;
            }
        }
    }
    eprintln!(
        "conntrack: {} flows ({} entries) written in {:.1?}",
        opts.flows,
        2 * opts.flows,
        t0.elapsed()
    );

    let mut rows = Vec::new();
    for &n in &opts.services {
        let t0 = Instant::now();
        let plan = Plan {
            frontends: (0..n).map(frontend).collect(),
        };
        let (desired, skipped) = entries::desired(&plan, &mut ids);
        if !skipped.is_empty() {
            bail!("{} frontends skipped: {:?}", skipped.len(), skipped.first());
        }
        let ops = entries::diff(&current, &desired);
        b.dp.apply(&ops)?;
        current = desired;
        eprintln!(
            "{n} services: {} map writes in {:.1?}",
            ops.len(),
            t0.elapsed()
        );

        // Frontend ids as programmed.
        let fe_ids: Vec<u32> = {
            let fes: HashMap<_, FrontendKey, FeValue> =
                HashMap::try_from(b.floors.ebpf.map(MAP_FRONTENDS).context("LB_FRONTENDS")?)?;
            (0..n)
                .map(|i| {
                    let key = FrontendKey {
                        addr_be: be32(cluster_ip(i)),
                        port_be: PORT.to_be(),
                        proto: PROTO_TCP,
                        scope: 0,
                    };
                    fes.get(&key, 0).map(|f| f.id)
                })
                .collect::<Result<_, _>>()?
        };

        // `repeat` mode: the self-DNAT flow to Service n/2 (not the first inserted).
        let svc = n / 2;
        let client = (Ipv4Addr::new(10, 244, 200, 2), 40_000u16);
        let now = now_ns();
        let mut flows = vec![(client, svc)];
        let mut fresh = Lcg(n as u64 * 7 + 1);
        for j in 0..2000u32 {
            let r = fresh.next();
            let c = (
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 0)) + j),
                1024 + (r % 60_000) as u16,
            );
            flows.push((c, (r >> 20) as usize % n));
        }
        {
            let mut ct: HashMap<_, CtKey, CtEntry> =
                HashMap::try_from(b.floors.ebpf.map_mut(MAP_CT).context("LB_CT")?)?;
            for (k, &(c, s)) in flows.iter().enumerate() {
                let nat = if k == 0 {
                    (cluster_ip(s), PORT)
                } else {
                    (backend_ip(s, 0), TARGET_PORT)
                };
                for (key, e) in ct_pair(c, cluster_ip(s), nat, fe_ids[s], now) {
                    ct.insert(key, e, 0)?;
                }
            }
        }
        let est = tcp_packet(client.0, client.1, cluster_ip(svc), PORT, false);
        let contenders = [
            ("pass", Prog::Pass),
            ("lookup1", Prog::Lookup1),
            ("established_xdp", Prog::Ours(HookKind::XdpPod)),
            ("established_tc", Prog::Ours(HookKind::Tc)),
        ];
        let mut samples = vec![Vec::new(); contenders.len()];
        for _ in 0..opts.runs {
            for (c, (name, p)) in contenders.iter().enumerate() {
                let (ret, ns) = b.run(*p, &est, opts.repeat)?;
                if b.out[..est.len()] != est[..] {
                    bail!("{name}: the packet changed under repeat (ret {ret})");
                }
                samples[c].push(ns as f64);
            }
        }
        let repeat: Vec<f64> = samples.iter_mut().map(|v| median(v)).collect();

        // `single` mode: a different packet per call.
        let mut single: Vec<Vec<f64>> = (0..5).map(|_| Vec::with_capacity(opts.calls)).collect();
        let mut rng = Lcg(n as u64 * 13 + 5);
        let mut new_port = 0u32;
        let deadline = Instant::now() + Duration::from_secs(120);
        for call in 0..opts.calls {
            if Instant::now() > deadline {
                bail!("single mode over its time budget");
            }
            let (c, s) = flows[1 + call % (flows.len() - 1)];
            let est = tcp_packet(c.0, c.1, cluster_ip(s), PORT, false);
            new_port += 1;
            let r = rng.next();
            let src = Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 246, 0, 0))
                    + (n as u32 % 16) * 65_536
                    + new_port / 60_000,
            );
            let syn = tcp_packet(
                src,
                1024 + (new_port % 60_000) as u16,
                cluster_ip(r as usize % n),
                PORT,
                true,
            );
            let (_, p) = b.run(Prog::Pass, &est, 1)?;
            let (_, e) = b.run(Prog::Ours(HookKind::XdpPod), &est, 1)?;
            let before = b.out[30..34].to_vec();
            let (_, nf) = b.run(Prog::Ours(HookKind::XdpPod), &syn, 1)?;
            if b.out[30..34] == syn[30..34] || before == est[30..34] {
                bail!("a single-mode packet was not DNATed");
            }
            // The node devices' established path: sent back out of eth0 by XDP, redirected
            // by tc (the backends' range is routed back out of it).
            let (v, x) = b.run_on_eth0(HookKind::Xdp, &est)?;
            if v != XDP_TX || b.out[30..34] == est[30..34] {
                bail!("the XDP accelerator did not send an established flow (verdict {v})");
            }
            let (v, t) = b.run_on_eth0(HookKind::TcNic, &est)?;
            if v != TC_ACT_REDIRECT || b.out[30..34] == est[30..34] {
                bail!("tc on eth0 did not redirect an established flow (verdict {v})");
            }
            single[0].push(p as f64);
            single[1].push(e as f64);
            single[2].push(nf as f64);
            single[3].push(x as f64);
            single[4].push(t as f64);
        }
        let single: Vec<f64> = single.iter_mut().map(|v| median(v)).collect();
        println!(
            "{n:>7} services: repeat: pass {:.1} ns, lookup1 {:.1} ns, established xdp {:.1} ns ({:.2}x lookup1), tc {:.1} ns | single: pass {:.0} ns, established {:.0} ns, new flow {:.0} ns, established on a node device: xdp_tx {:.0} ns, tc redirect {:.0} ns",
            repeat[0], repeat[1], repeat[2], repeat[2] / repeat[1], repeat[3], single[0], single[1], single[2], single[3], single[4]
        );
        rows.push(format!(
            "{{\"services\":{n},\"backends_per_service\":{BACKENDS},\"ct_flows\":{},\"repeat_ns\":{{\"pass\":{:.2},\"lookup1\":{:.2},\"established_xdp\":{:.2},\"established_tc\":{:.2}}},\"single_ns\":{{\"pass\":{:.0},\"established_xdp\":{:.0},\"new_flow_xdp\":{:.0},\"established_xdp_nic\":{:.0},\"established_tc_nic\":{:.0}}}}}",
            opts.flows, repeat[0], repeat[1], repeat[2], repeat[3], single[0], single[1], single[2], single[3], single[4]
        ));
    }
    let json = format!(
        "{{\"benchmark\":\"packet\",\"repeat\":{},\"runs\":{},\"calls\":{},\"results\":[{}]}}\n",
        opts.repeat,
        opts.runs,
        opts.calls,
        rows.join(",")
    );
    write_results("packet.json", &json)
}
