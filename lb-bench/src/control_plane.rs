//! `bench control-plane`: time from start to N Services x 10 endpoints programmed, time to
//! apply one endpoint change, and the agent's resident memory; for our agent (start to the
//! last Service's entry in the pinned LB_FRONTENDS, listing from the fake API server: the real
//! list/watch protocol, JSON; a change is an EndpointSlice update at that server) and for
//! kube-proxy's layouts of the same Services (wall time of `iptables-restore --noflush` and
//! `nft -f` inside a fresh network namespace). Contenders alternate within each round.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    fakeapi::FakeApi,
    kube_rules::{self, Svc},
    objects::node,
    NetNs, TempDir,
};

use crate::{
    agent::{stop, ApiAgent},
    load_rules::{load_iptables, load_nft, restore_iptables},
    output::write_results,
    services::{api_objects, fe_key, services, ENDPOINTS, NODE},
    stats::median,
};

/// How long a start may take.
const TIMEOUT: Duration = Duration::from_secs(900);

fn endpoint_ip(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 16 + k) as u32)
}

struct Ours {
    start_ms: f64,
    sync_ms: f64,
    change_ms: Vec<f64>,
    rss_kib: u64,
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// Our agent against the fake API server (the real list/watch protocol, JSON) holding `svcs`:
/// start to programmed, then `changes` EndpointSlice updates of Service 0 (`alt[0]` and back).
fn ours(svcs: &[Svc], alt: &[Svc], changes: usize) -> Result<Ours> {
    let ns = NetNs::new("cp-ours")?;
    let api = FakeApi::start(&ns)?;
    api.apply(node(NODE, Some("172.18.0.10")))?;
    for s in svcs {
        for o in api_objects(s) {
            api.apply(o)?;
        }
    }
    let agent = ApiAgent::new(&api, NODE, "cp-ours")?;
    let t0 = Instant::now();
    let (mut child, fes) = agent.spawn(&ns, t0 + TIMEOUT)?;
    let deadline = t0 + TIMEOUT;
    let slots = |s: &Svc| fes.get(&fe_key(s), 0).ok().map(|f| f.slot_count);
    let last = &svcs[svcs.len() - 1];
    while slots(last) != Some(ENDPOINTS as u32)
        || slots(&svcs[0]) != Some(svcs[0].endpoints.len() as u32)
    {
        if Instant::now() > deadline || !child.is_running() {
            bail!(
                "agent did not program {} services\n{}",
                svcs.len(),
                child.logs()
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss = rss_kib(child.pid())?;
    // The agent's own account of its first sync: plan and map writes, once the API caches
    // are listed (what iptables-restore and nft -f are timed for).
    child
        .wait_for_output("frontends=", Duration::from_secs(60))
        .with_context(|| child.logs())?;
    let logs = child.logs();
    let sync_ms = logs
        .lines()
        .find(|l| l.contains("frontends="))
        .and_then(|l| l.split("elapsed_us=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|us| us / 1e3)
        .with_context(|| format!("no elapsed_us in the agent's sync line\n{logs}"))?;
    let mut change_ms = Vec::new();
    for c in 0..changes {
        let s = if c % 2 == 0 { &alt[0] } else { &svcs[0] };
        std::thread::sleep(Duration::from_millis(30));
        let [_, slice] = api_objects(s);
        let t = Instant::now();
        api.apply(slice)?;
        while slots(s) != Some(s.endpoints.len() as u32) {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("endpoint change not applied\n{}", child.logs());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        change_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rss_kib = rss.max(rss_kib(child.pid())?);
    stop(child, &ns, agent.bpffs())?;
    Ok(Ours {
        start_ms,
        sync_ms,
        change_ms,
        rss_kib,
    })
}

fn iptables(svcs: &[Svc], alt: &[Svc], changes: usize) -> Result<(f64, Vec<f64>)> {
    let ns = NetNs::new("cp-ipt")?;
    let tmp = TempDir::new("cp-ipt")?;
    let start = load_iptables(&ns, svcs, tmp.path())?;
    let mut ch = Vec::new();
    for c in 0..changes {
        let (new, old) = if c % 2 == 0 { (alt, svcs) } else { (svcs, alt) };
        let gone: Vec<String> = kube_rules::sep_chains(&old[0])
            .into_iter()
            .filter(|x| !kube_rules::sep_chains(&new[0]).contains(x))
            .collect();
        let f = tmp.path().join(format!("change-{c}.iptables"));
        std::fs::write(&f, kube_rules::iptables_restore(new, Some(0), &gone))?;
        ch.push(restore_iptables(&ns, &f)?);
    }
    Ok((start, ch))
}

fn nft(svcs: &[Svc], alt: &[Svc], changes: usize) -> Result<(f64, Vec<f64>)> {
    let ns = NetNs::new("cp-nft")?;
    let tmp = TempDir::new("cp-nft")?;
    let f = tmp.path().join("full.nft");
    std::fs::write(&f, kube_rules::nft_full(svcs))?;
    let start = load_nft(&ns, &f)?;
    let mut ch = Vec::new();
    for c in 0..changes {
        let (new, old) = if c % 2 == 0 { (alt, svcs) } else { (svcs, alt) };
        let f = tmp.path().join(format!("change-{c}.nft"));
        std::fs::write(&f, kube_rules::nft_change(&new[0], &old[0]))?;
        ch.push(load_nft(&ns, &f)?);
    }
    Ok((start, ch))
}

/// Runs the control-plane benchmark; results in target/bench/control-plane.json.
pub fn control_plane(sizes: &[usize], rounds: usize, changes: usize) -> Result<()> {
    let ep = |i, k| (endpoint_ip(i, k), 8080);
    let mut rows = Vec::new();
    for &n in sizes {
        if n == 0 || n > 60_000 {
            bail!("--services {n}: want 1..=60000");
        }
        let svcs = services(n, ENDPOINTS, ep);
        let alt = services(1, ENDPOINTS + 1, ep);
        let mut alt_all = svcs.clone();
        alt_all[0] = alt[0].clone();
        let (mut os, mut oc, mut orss, mut osync) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut is, mut ic, mut ns_, mut nc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let o = ours(&svcs, &alt_all, changes)?;
            let (i_s, i_c) = iptables(&svcs, &alt_all, changes)?;
            let (n_s, n_c) = nft(&svcs, &alt_all, changes)?;
            println!(
                "{n} services round {r}: start: ours {:.0} ms (its sync {:.0} ms), iptables-restore {i_s:.0} ms, nft -f {n_s:.0} ms; \
                 one endpoint change (median): ours {:.1} ms, iptables {:.1} ms, nft {:.1} ms; agent RSS {} MiB",
                o.start_ms,
                o.sync_ms,
                median(&mut o.change_ms.clone()),
                median(&mut i_c.clone()),
                median(&mut n_c.clone()),
                o.rss_kib / 1024
            );
            os.push(o.start_ms);
            osync.push(o.sync_ms);
            oc.extend(o.change_ms);
            orss.push(o.rss_kib as f64);
            is.push(i_s);
            ic.extend(i_c);
            ns_.push(n_s);
            nc.extend(n_c);
        }
        let row = [
            median(&mut os),
            median(&mut is),
            median(&mut ns_),
            median(&mut oc),
            median(&mut ic),
            median(&mut nc),
            median(&mut orss),
            median(&mut osync),
        ];
        println!(
            "{n} services: start ours {:.0} ms (sync {:.0} ms), iptables {:.0} ms ({:.1}x ours' sync), nft {:.0} ms ({:.1}x ours' sync); change ours {:.2} ms, iptables {:.2} ms, nft {:.2} ms; RSS {:.0} MiB",
            row[0], row[7], row[1], row[1] / row[7], row[2], row[2] / row[7], row[3], row[4], row[5], row[6] / 1024.0
        );
        rows.push(format!(
            "{{\"services\":{n},\"endpoints_per_service\":{ENDPOINTS},\"sync_ms\":{{\"ours\":{:.2}}},\"start_ms\":{{\"ours\":{:.2},\"iptables\":{:.2},\"nftables\":{:.2}}},\"change_ms\":{{\"ours\":{:.3},\"iptables\":{:.3},\"nftables\":{:.3}}},\"agent_rss_kib\":{:.0}}}",
            row[7], row[0], row[1], row[2], row[3], row[4], row[5], row[6]
        ));
    }
    let json = format!(
        "{{\"benchmark\":\"control-plane\",\"rounds\":{rounds},\"changes\":{changes},\"results\":[{}]}}\n",
        rows.join(",")
    );
    write_results("control-plane.json", &json)
}
