//! Loading kube-proxy's rule layouts (kube_rules.rs) into a network namespace with
//! `iptables-restore` and `nft -f`, timed, and flushing them again.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::NetNs;

use lb_tests::kube_rules::{self, Svc};

/// How long one restore may take.
const TIMEOUT: Duration = Duration::from_secs(900);

/// Runs `program args` in `ns` and returns its wall time in ms.
fn timed(ns: &NetNs, program: &str, args: &[&str]) -> Result<f64> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let t = Instant::now();
    let out = ns.output(&cmd, TIMEOUT)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(ms)
}

/// The iptables commands: the legacy backend by default ([`kube_rules::IPTABLES`]), or Debian's
/// default nf_tables backend with `BENCH_IPTABLES=nft` (it takes over ten minutes to restore
/// 10,000 Services here).
pub fn iptables_cmds() -> (&'static str, &'static str) {
    match std::env::var("BENCH_IPTABLES").as_deref() {
        Ok("nft") => ("iptables-nft", "iptables-nft-restore"),
        _ => kube_rules::IPTABLES,
    }
}

/// Removes every iptables rule and chain from `ns` (`nft flush ruleset` does not reach the
/// legacy backend's tables).
pub fn flush_iptables(ns: &NetNs) -> Result<()> {
    let (iptables, _) = iptables_cmds();
    for table in ["nat", "filter", "mangle"] {
        ns.run(iptables, &["-w", "5", "-t", table, "-F"])?;
        ns.run(iptables, &["-w", "5", "-t", table, "-X"])?;
    }
    Ok(())
}

/// Restores the iptables input file `f` into `ns` (`--noflush`: a sync's delta, or the first
/// full sync after the jumps); returns its wall time in ms.
pub fn restore_iptables(ns: &NetNs, f: &Path) -> Result<f64> {
    timed(
        ns,
        iptables_cmds().1,
        &[
            "-w",
            "5",
            "--noflush",
            "--counters",
            f.to_str().context("path")?,
        ],
    )
}

/// Loads kube-proxy's iptables layout of `svcs` into `ns` (jumps first, then the restore).
pub fn load_iptables(ns: &NetNs, svcs: &[Svc], tmp: &Path) -> Result<f64> {
    let (iptables, _) = iptables_cmds();
    for j in kube_rules::iptables_jumps() {
        ns.run(iptables, &j)?;
    }
    let f = tmp.join("full.iptables");
    std::fs::write(&f, kube_rules::iptables_restore(svcs, None, &[]))?;
    restore_iptables(ns, &f)
}

/// Loads the `nft -f` transaction file `f` into `ns`; returns its wall time in ms.
pub fn load_nft(ns: &NetNs, f: &Path) -> Result<f64> {
    timed(ns, "nft", &["-f", f.to_str().context("path")?])
}
