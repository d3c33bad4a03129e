//! `lb-agent run`: program the dataplane from a manifests directory and keep it in sync with
//! the files and with the interfaces of this network namespace until SIGINT or SIGTERM.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::{signal::unix::SignalKind, sync::mpsc};
use tracing::{error, info, warn};

use crate::{
    cli_plan::plan_dir,
    dataplane::{Dataplane, MapSizes},
    links::{watch_links, Selector},
    maps::{self, Capacity, Entries, Ids},
};

/// What `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub manifests: PathBuf,
    pub node: String,
    pub bpffs: PathBuf,
    pub selector: Selector,
    pub sizes: MapSizes,
    pub xdp_mode: aya::programs::XdpMode,
    /// Changes closer together than this are applied together.
    pub min_sync_period: Duration,
    /// A full resync against what the kernel holds, this often.
    pub resync_period: Duration,
}

/// The agent's state between syncs.
struct Agent {
    cfg: RunConfig,
    dp: Dataplane,
    ids: Ids,
    /// What the kernel holds, as far as this agent knows.
    current: Entries,
}

impl Agent {
    /// Plans the manifests and applies the difference. A directory that cannot be read keeps
    /// the last good state; bad objects are reported and skipped.
    fn sync(&mut self, reason: &str) {
        let started = Instant::now();
        let (plan, diagnostics) = match plan_dir(&self.cfg.manifests, &self.cfg.node) {
            Ok(p) => p,
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "reading manifests failed; keeping the current dataplane"
                );
                return;
            }
        };
        for d in &diagnostics {
            warn!(%d, "skipped");
        }
        let (desired, skipped) = maps::desired(&plan, &mut self.ids);
        for s in &skipped {
            warn!(%s, "frontend not programmed");
        }
        let ops = maps::diff(&self.current, &desired);
        let n = ops.len();
        match self.dp.apply(&ops) {
            Ok(()) => {
                self.current = desired;
                info!(
                    reason,
                    frontends = self.current.frontends.len(),
                    backends = self.current.backends.len(),
                    writes = n,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "synced"
                );
            }
            Err(e) => {
                error!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "applying map writes failed; will resync from the kernel"
                );
                match self.dp.read_entries() {
                    Ok(now) => self.current = now,
                    Err(e) => error!(error = %e, "reading the maps back failed"),
                }
            }
        }
    }

    /// Re-reads the kernel's entries (repairs drift) and syncs.
    fn resync(&mut self) {
        match self.dp.read_entries() {
            Ok(now) => {
                if now != self.current {
                    warn!("kernel maps drifted from the agent's view; repairing");
                }
                self.current = now;
            }
            Err(e) => error!(error = %e, "reading the maps back failed"),
        }
        self.sync("periodic resync");
    }

    /// Attaches to every wanted interface not yet attached, then unpins links of vanished
    /// interfaces and of hooks no longer wanted (in that order: no gap without a program).
    fn reconcile_links(&mut self) {
        let wanted = self.cfg.selector.wanted();
        for (ifname, hook) in &wanted {
            if self.dp.is_attached(*hook, ifname) {
                continue;
            }
            if let Err(e) = self.dp.attach(*hook, ifname) {
                error!(
                    ifname,
                    hook = hook.name(),
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "attach failed"
                );
            }
        }
        self.dp.prune_links(&wanted);
    }
}

/// Runs the agent until SIGINT or SIGTERM. On exit the dataplane stays as it is.
pub async fn run(cfg: RunConfig) -> Result<()> {
    let dp = Dataplane::load(&cfg.bpffs, cfg.sizes, cfg.xdp_mode)?;
    let current = dp.read_entries().context("reading pinned maps")?;
    if !current.frontends.is_empty() {
        info!(
            frontends = current.frontends.len(),
            "adopting the pinned dataplane"
        );
    }
    let cap = Capacity {
        frontends: cfg.sizes.frontends,
        backends: cfg.sizes.backends,
    };
    let ids = Ids::adopt(cap, &current);
    for d in &cfg.selector.devices {
        if crate::dataplane::ifindex(d).is_none() {
            warn!(
                device = d,
                "device not found; it will be attached when it appears"
            );
        }
    }
    let mut agent = Agent {
        cfg,
        dp,
        ids,
        current,
    };
    // Maps first, then programs: a program never runs against maps older than the files.
    agent.sync("start");

    let (link_tx, mut link_rx) = mpsc::channel(1);
    let _link_task = watch_links(link_tx).context("watching links (netlink)")?;
    agent.reconcile_links();

    let (file_tx, mut file_rx) = mpsc::channel(1);
    let _watcher = watch_dir(&agent.cfg.manifests, file_tx)?;

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(agent.cfg.resync_period);
    resync.tick().await;
    info!("running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: exiting, dataplane left in place"); break; }
            _ = sigint.recv() => { info!("SIGINT: exiting, dataplane left in place"); break; }
            Some(()) = file_rx.recv() => {
                // Let a burst of writes settle into one sync.
                tokio::time::sleep(agent.cfg.min_sync_period).await;
                while file_rx.try_recv().is_ok() {}
                agent.sync("manifests changed");
            }
            Some(()) = link_rx.recv() => agent.reconcile_links(),
            _ = resync.tick() => agent.resync(),
        }
    }
    Ok(())
}

/// Watches `dir` for files written, created, renamed in or out, or removed.
fn watch_dir(dir: &Path, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
    let mut watcher =
        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
            Ok(ev)
                if ev.kind.is_access()
                    && !matches!(
                        ev.kind,
                        notify::EventKind::Access(notify::event::AccessKind::Close(
                            notify::event::AccessMode::Write
                        ))
                    ) => {}
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(e) => {
                warn!(error = %e, "manifest watch error; resyncing");
                let _ = tx.try_send(());
            }
        })
        .context("creating the manifests watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(watcher)
}
