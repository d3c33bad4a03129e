//! `lb-agent run`: program the dataplane from a source (a manifests directory or the Kubernetes
//! API) and keep it in sync with the source and with the interfaces of this network namespace
//! until SIGINT or SIGTERM.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::{signal::unix::SignalKind, sync::mpsc, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    dataplane::{Dataplane, MapSizes},
    http::{self, HealthCheckServers},
    kube_source::{self, ApiSource, Change},
    links::{watch_links, Selector},
    maps::{self, Capacity, Entries, Ids},
    metrics::Telemetry,
    model::{Diagnostic, Snapshot},
    plan,
};

/// Where the objects come from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A directory of manifests, watched with inotify.
    Manifests(PathBuf),
    /// The Kubernetes API: this kubeconfig, or in-cluster / the usual places when None.
    Api { kubeconfig: Option<PathBuf> },
}

/// What `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub source: SourceConfig,
    pub node: String,
    pub bpffs: PathBuf,
    pub selector: Selector,
    pub sizes: MapSizes,
    pub xdp_mode: aya::programs::XdpMode,
    /// Syncs are at least this far apart (kube-proxy's --min-sync-period); changes in between
    /// are applied together.
    pub min_sync_period: Duration,
    /// A full resync against what the kernel holds, this often.
    pub resync_period: Duration,
    /// /healthz and /livez; None: not served.
    pub healthz_bind_address: Option<SocketAddr>,
    /// /metrics; None: not served.
    pub metrics_bind_address: Option<SocketAddr>,
}

/// A source the agent reads snapshots from.
enum Source {
    Manifests(PathBuf),
    Api(ApiSource),
}

impl Source {
    fn load(&self) -> Result<(Snapshot, Vec<Diagnostic>)> {
        match self {
            Source::Manifests(dir) => crate::source::load_dir(dir)
                .with_context(|| format!("loading manifests from {}", dir.display())),
            Source::Api(api) => Ok((api.snapshot(), Vec::new())),
        }
    }
}

/// The agent's state between syncs.
struct Agent {
    cfg: RunConfig,
    source: Source,
    dp: Dataplane,
    ids: Ids,
    /// What the kernel holds, as far as this agent knows.
    current: Entries,
    telemetry: Arc<Telemetry>,
    health_checks: HealthCheckServers,
    /// Warnings of the last sync, so each is logged once, not at every sync.
    warned: BTreeSet<String>,
}

impl Agent {
    /// Plans the snapshot and applies the difference: only the entries that change are
    /// written, in an order that never shows a packet a half-built frontend (`maps::diff`).
    /// A source that cannot be read keeps the last good state; bad objects are reported and
    /// skipped.
    async fn sync(&mut self, reason: &str, trigger_times: &[SystemTime]) {
        let started = Instant::now();
        let (snapshot, mut diagnostics) = match self.source.load() {
            Ok(s) => s,
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "reading the source failed; keeping the current dataplane"
                );
                return;
            }
        };
        let output = plan::plan(&snapshot, &self.cfg.node);
        diagnostics.extend(output.diagnostics);
        let plan = output.plan;
        let (desired, skipped) = maps::desired(&plan, &mut self.ids);
        let mut warned = BTreeSet::new();
        for w in diagnostics.iter().map(|d| format!("skipped: {d}")).chain(
            skipped
                .iter()
                .map(|s| format!("frontend not programmed: {s}")),
        ) {
            if !self.warned.contains(&w) {
                warn!("{w}");
            }
            warned.insert(w);
        }
        self.warned = warned;
        let ops = maps::diff(&self.current, &desired);
        let n = ops.len();
        match self.dp.apply(&ops) {
            Ok(()) => {
                self.current = desired;
                self.telemetry
                    .synced(started, &plan, &self.current, trigger_times);
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
                self.telemetry.sync_failed();
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
        self.telemetry
            .set_node_eligible(node_eligible(&snapshot, &self.cfg.node));
        self.health_checks
            .update(plan::health_checks(&snapshot, &self.cfg.node))
            .await;
    }

    /// Re-reads the kernel's entries (repairs drift) and syncs.
    async fn resync(&mut self) {
        let mut drifted = false;
        match self.dp.read_entries() {
            Ok(now) => {
                if now != self.current {
                    warn!("kernel maps drifted from the agent's view; repairing");
                    drifted = true;
                }
                self.current = now;
            }
            Err(e) => error!(error = %e, "reading the maps back failed"),
        }
        self.telemetry.full_resync(drifted);
        self.sync("periodic resync", &[]).await;
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

/// kube-proxy's nodeEligible: false while this node is being deleted or the cluster autoscaler
/// is removing it, so load balancers stop sending new connections here.
fn node_eligible(snapshot: &Snapshot, node: &str) -> bool {
    let Some(n) = snapshot
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
    else {
        return true;
    };
    let deleting = n.metadata.deletion_timestamp.is_some();
    let draining = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"));
    !deleting && !draining
}

/// Runs the agent until SIGINT or SIGTERM. On exit the dataplane stays as it is.
pub async fn run(cfg: RunConfig) -> Result<()> {
    let dp = Dataplane::load(&cfg.bpffs, cfg.sizes, cfg.xdp_mode)?;
    let current = dp.read_entries().context("reading pinned maps")?;
    if !current.frontends.is_empty() {
        info!(
            frontends = current.frontends.len(),
            backends = current.backends.len(),
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
    let telemetry = Arc::new(Telemetry::new(
        cfg.bpffs.clone(),
        cfg.sizes,
        cfg.resync_period * 2,
    ));
    let _http = start_http(&cfg, &telemetry).await?;

    let (api_tx, mut api_rx) = mpsc::unbounded_channel();
    let source = match &cfg.source {
        SourceConfig::Manifests(dir) => Source::Manifests(dir.clone()),
        SourceConfig::Api { kubeconfig } => {
            let client = kube_source::client(kubeconfig.as_ref()).await?;
            let t = telemetry.clone();
            let on_error = Arc::new(move |k: kube_source::Kind| t.watch_error(k.resource()));
            Source::Api(kube_source::start(client, &cfg.node, api_tx, on_error))
        }
    };
    let api = match &source {
        Source::Api(api) => Some(api.clone()),
        Source::Manifests(_) => None,
    };
    let mut agent = Agent {
        health_checks: HealthCheckServers::new(telemetry.clone()),
        cfg,
        source,
        dp,
        ids,
        current,
        telemetry,
        warned: BTreeSet::new(),
    };
    // Maps first, then programs: a program never runs against maps older than the files.
    // From the API, nothing is programmed before the caches are full (below); until then the
    // programs serve the pinned maps a previous agent left, which are the last good state.
    if api.is_none() {
        agent.sync("start", &[]).await;
    }

    let (link_tx, mut link_rx) = mpsc::channel(1);
    let _link_task = watch_links(link_tx).context("watching links (netlink)")?;
    agent.reconcile_links();

    let (file_tx, mut file_rx) = mpsc::channel(1);
    let _watcher = match &agent.cfg.source {
        SourceConfig::Manifests(dir) => Some(watch_dir(dir, file_tx)?),
        SourceConfig::Api { .. } => None,
    };

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(agent.cfg.resync_period);
    resync.tick().await;
    let mut ready = api.is_none();
    let caches_ready = async {
        match &api {
            Some(api) => api.wait_until_ready().await,
            None => std::future::pending().await,
        }
    };
    let mut caches_ready = std::pin::pin!(caches_ready);
    if !ready {
        info!("waiting for the API caches (Services, EndpointSlices, Node) before programming");
    }
    let mut pending = false;
    let mut trigger_times = Vec::new();
    let mut next_sync = tokio::time::Instant::now();
    info!("running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: exiting, dataplane left in place"); break; }
            _ = sigint.recv() => { info!("SIGINT: exiting, dataplane left in place"); break; }
            () = &mut caches_ready, if !ready => {
                ready = true;
                drain(&mut api_rx, &agent.telemetry, &mut trigger_times);
                info!("API caches synced");
                agent.sync("initial sync from the API", &std::mem::take(&mut trigger_times)).await;
                pending = false;
                next_sync = tokio::time::Instant::now() + agent.cfg.min_sync_period;
            }
            Some(change) = api_rx.recv() => {
                record(&change, &agent.telemetry, &mut trigger_times);
                pending = true;
            }
            () = tokio::time::sleep_until(next_sync), if pending && ready => {
                drain(&mut api_rx, &agent.telemetry, &mut trigger_times);
                agent.sync("API changes", &std::mem::take(&mut trigger_times)).await;
                pending = false;
                next_sync = tokio::time::Instant::now() + agent.cfg.min_sync_period;
            }
            Some(()) = file_rx.recv() => {
                agent.telemetry.queued(true, true);
                // Let a burst of writes settle into one sync.
                tokio::time::sleep(agent.cfg.min_sync_period).await;
                while file_rx.try_recv().is_ok() {}
                agent.sync("manifests changed", &[]).await;
            }
            Some(()) = link_rx.recv() => agent.reconcile_links(),
            _ = resync.tick(), if ready => agent.resync().await,
        }
    }
    Ok(())
}

/// Counts a change for the metrics and keeps its trigger time for the next sync.
fn record(change: &Change, telemetry: &Telemetry, trigger_times: &mut Vec<SystemTime>) {
    telemetry.queued(
        change.kind == kube_source::Kind::EndpointSlice,
        change.kind == kube_source::Kind::Service,
    );
    trigger_times.extend(change.trigger_time);
}

/// Takes every change already queued, so one sync covers them all.
fn drain(
    rx: &mut mpsc::UnboundedReceiver<Change>,
    telemetry: &Telemetry,
    trigger_times: &mut Vec<SystemTime>,
) {
    while let Ok(change) = rx.try_recv() {
        record(&change, telemetry, trigger_times);
    }
}

/// Starts /healthz + /livez and /metrics.
async fn start_http(cfg: &RunConfig, telemetry: &Arc<Telemetry>) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if let Some(addr) = cfg.healthz_bind_address {
        tasks.push(
            http::serve(addr, http::health_handler(telemetry.clone()))
                .await
                .context("--healthz-bind-address")?,
        );
        info!(%addr, "serving /healthz and /livez");
    }
    if let Some(addr) = cfg.metrics_bind_address {
        tasks.push(
            http::serve(addr, http::metrics_handler(telemetry.clone()))
                .await
                .context("--metrics-bind-address")?,
        );
        info!(%addr, "serving /metrics");
    }
    Ok(tasks)
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
