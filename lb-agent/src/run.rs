//! `lb-agent run`: program the dataplane from a source (a manifests directory or the Kubernetes
//! API) and keep it in sync with the source and with the interfaces of this network namespace
//! until SIGINT or SIGTERM.

use std::{
    collections::{BTreeMap, BTreeSet},
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
    entries::{self, Capacity, Desired, Entries, Ids},
    host::{self, HostConfig, Tracker},
    http::{self, HealthCheckServers},
    kube_source::{self, ApiSource, Change, Scope},
    links::{Selector, XdpDeclined},
    metrics::Telemetry,
    model::{Diagnostic, Snapshot},
    plan::{self, Frontend, HealthCheck, Plan},
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
    /// Which interfaces are node devices and which addresses NodePort addresses.
    pub host: HostConfig,
    /// Which interfaces get which programs (node devices: their `devices` follow `host`;
    /// acceleration; pod interfaces).
    pub selector: Selector,
    pub sizes: MapSizes,
    /// Syncs are at least this far apart (kube-proxy's --min-sync-period); changes in between
    /// are applied together.
    pub min_sync_period: Duration,
    /// A full resync against what the kernel holds, this often.
    pub resync_period: Duration,
    /// Enforce loadBalancerSourceRanges on NodePort frontends too.
    pub nodeport_source_ranges: bool,
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
    /// The desired entries per frontend, so a change recomputes only the Services it touches.
    desired: Desired,
    /// The next sync recomputes and diffs everything (at start, after a failed write).
    full_next: bool,
    telemetry: Arc<Telemetry>,
    health_checks: HealthCheckServers,
    /// Warnings already logged, so each is logged once, not at every sync.
    warned: BTreeSet<String>,
    warned_skipped: BTreeSet<String>,
    /// The plan per Service (API source), so a change replans only what it touches.
    cache: PlanCache,
    /// Node devices that refused native XDP under best-effort acceleration.
    xdp_declined: XdpDeclined,
    /// The node devices and NodePort addresses, followed through netlink.
    host: Tracker,
}

/// The plan kept between syncs, so a change replans only the Services it touches: the whole
/// plan (its frontends sorted by Service first, as the plan's canonical order has them), the
/// health checks by Service, and which Service each EndpointSlice belonged to at the last sync
/// (to replan its old owner too).
#[derive(Default)]
struct PlanCache {
    plan: Plan,
    checks: BTreeMap<String, HealthCheck>,
    slice_owner: BTreeMap<String, String>,
    /// The reverse of `slice_owner`: Service -> its slices.
    owner_slices: BTreeMap<String, BTreeSet<String>>,
}

impl PlanCache {
    /// Records that `slice` now belongs to `owner` (None: to no Service); returns the Service
    /// it belonged to before.
    fn set_owner(&mut self, slice: &str, owner: Option<&str>) -> Option<String> {
        let old = match owner {
            Some(o) => self.slice_owner.insert(slice.to_owned(), o.to_owned()),
            None => self.slice_owner.remove(slice),
        };
        if let Some(old) = &old {
            if let Some(set) = self.owner_slices.get_mut(old) {
                set.remove(slice);
                if set.is_empty() {
                    self.owner_slices.remove(old);
                }
            }
        }
        if let Some(o) = owner {
            self.owner_slices
                .entry(o.to_owned())
                .or_default()
                .insert(slice.to_owned());
        }
        old
    }

    /// Where the frontends of `service` are (an empty range where they would go).
    fn range(&self, service: &str) -> std::ops::Range<usize> {
        let f = &self.plan.frontends;
        let start = f.partition_point(|fe| fe.service.as_str() < service);
        let len = f[start..].partition_point(|fe| fe.service == service);
        start..start + len
    }

    /// Replaces the frontends and health checks of `services` with `frontends` and `checks`
    /// (a plan of those Services alone, in canonical order). Returns the frontends replaced.
    fn replace(
        &mut self,
        services: &BTreeSet<String>,
        frontends: Vec<Frontend>,
        checks: Vec<HealthCheck>,
    ) -> Vec<Frontend> {
        let mut by_service: BTreeMap<String, Vec<Frontend>> = BTreeMap::new();
        for fe in frontends {
            by_service.entry(fe.service.clone()).or_default().push(fe);
        }
        let mut removed = Vec::new();
        for s in services {
            let range = self.range(s);
            let new = by_service.remove(s).unwrap_or_default();
            removed.extend(self.plan.frontends.splice(range, new));
            self.checks.remove(s);
        }
        for c in checks {
            self.checks.insert(c.service.clone(), c);
        }
        removed
    }
}

/// Which map entries a sync recomputes.
enum Maps<'a> {
    /// All of them, from the whole cached plan, diffed against what the kernel holds.
    Full,
    /// Those of these Services, whose frontends are now these.
    Services(&'a BTreeSet<String>, &'a [Frontend]),
}

/// What changed since the last sync.
#[derive(Default)]
struct Dirty {
    all: bool,
    services: BTreeSet<String>,
    /// (slice, the Service it belongs to now).
    slices: Vec<(String, Option<String>)>,
}

impl Dirty {
    fn add(&mut self, scope: &Scope) {
        match scope {
            Scope::All => self.all = true,
            Scope::Service(s) => {
                self.services.insert(s.clone());
            }
            Scope::Slice { slice, service } => self.slices.push((slice.clone(), service.clone())),
        }
    }
}

impl Agent {
    /// Plans the whole snapshot and applies the difference: only the entries that change are
    /// written, in an order that never shows a packet a half-built frontend (`entries::diff`).
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
        // A full sync forgets warnings about objects that are gone, and logs only new ones.
        let before = std::mem::take(&mut self.warned);
        for d in &diagnostics {
            let w = format!("skipped: {d}");
            if !before.contains(&w) {
                warn!("{w}");
            }
            self.warned.insert(w);
        }
        let checks = plan::health_checks(&snapshot, &self.cfg.node);
        self.cache = PlanCache::default();
        if matches!(self.source, Source::Api(_)) {
            for slice in &snapshot.endpoint_slices {
                if let Some(owner) = kube_source::slice_service(&slice.metadata) {
                    let key = format!(
                        "{}/{}",
                        slice.metadata.namespace.as_deref().unwrap_or_default(),
                        slice.metadata.name.as_deref().unwrap_or_default()
                    );
                    self.cache.set_owner(&key, Some(&owner));
                }
            }
        }
        self.cache.plan = output.plan;
        self.cache.checks = checks.into_iter().map(|c| (c.service.clone(), c)).collect();
        self.telemetry.set_frontends(&self.cache.plan.frontends);
        self.telemetry
            .set_node_eligible(node_eligible(&snapshot, &self.cfg.node));
        self.apply(reason, started, trigger_times, Maps::Full).await;
        // Device detection and `--nodeport-addresses primary` read the Node's addresses.
        if self
            .host
            .set_node(plan::node_addresses(&snapshot, &self.cfg.node))
        {
            // Logged where it happened; fatal only at start.
            let _ = self.refresh_host();
        }
    }

    /// Replans only the Services `dirty` touches (API source) and applies the difference.
    async fn sync_dirty(&mut self, dirty: Dirty, trigger_times: &[SystemTime]) {
        let Source::Api(api) = &self.source else {
            return self.sync("changes", trigger_times).await;
        };
        if dirty.all {
            return self.sync("API lists or Node changed", trigger_times).await;
        }
        let started = Instant::now();
        let mut services = dirty.services;
        for (slice, owner) in dirty.slices {
            services.extend(self.cache.set_owner(&slice, owner.as_deref()));
            services.extend(owner);
        }
        let slices = services
            .iter()
            .filter_map(|s| self.cache.owner_slices.get(s))
            .flatten();
        let snapshot = api.snapshot_of(&services, slices);
        let output = plan::plan(&snapshot, &self.cfg.node);
        self.warn(&output.diagnostics);
        let checks = plan::health_checks(&snapshot, &self.cfg.node);
        let added = output.plan.frontends.clone();
        let removed = self.cache.replace(&services, output.plan.frontends, checks);
        self.telemetry.update_frontends(&removed, &added);
        let maps = Maps::Services(&services, &added);
        self.apply("API changes", started, trigger_times, maps)
            .await;
    }

    /// Logs each diagnostic not logged before.
    fn warn(&mut self, diagnostics: &[Diagnostic]) {
        for d in diagnostics {
            let w = format!("skipped: {d}");
            if self.warned.insert(w.clone()) {
                warn!("{w}");
            }
        }
    }

    /// Turns the cached plan into map entries and writes the difference: of everything, or of
    /// the changed Services' frontends alone when the kernel holds the last desired entries.
    async fn apply(
        &mut self,
        reason: &str,
        started: Instant,
        trigger_times: &[SystemTime],
        maps: Maps<'_>,
    ) {
        let planned = started.elapsed();
        let (ops, full) = match maps {
            Maps::Services(services, frontends) if !self.full_next => (
                self.desired.update(services, frontends, &mut self.ids),
                None,
            ),
            _ => {
                let desired = self.desired.rebuild(&self.cache.plan, &mut self.ids);
                (entries::diff(&self.current, &desired), Some(desired))
            }
        };
        let skipped = self.desired.skipped();
        // `skipped` is always complete: log what is new since the last sync.
        let mut now = BTreeSet::new();
        for s in &skipped {
            let w = format!("frontend not programmed: {s}");
            if !self.warned_skipped.contains(&w) {
                warn!("{w}");
            }
            now.insert(w);
        }
        self.warned_skipped = now;
        let n = ops.len();
        match self.dp.apply(&ops) {
            Ok(()) => {
                match full {
                    Some(desired) => self.current = desired,
                    None => entries::apply_in_memory(&mut self.current, &ops),
                }
                self.full_next = false;
                self.telemetry.synced(
                    started,
                    [
                        self.current.frontends.len(),
                        self.current.slots.len(),
                        self.current.backends.len(),
                    ],
                    trigger_times,
                );
                info!(
                    reason,
                    frontends = self.current.frontends.len(),
                    backends = self.current.backends.len(),
                    writes = n,
                    plan_us = planned.as_micros() as u64,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "synced"
                );
            }
            Err(e) => {
                self.telemetry.sync_failed();
                self.full_next = true;
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
        self.health_checks
            .update(self.cache.checks.values().cloned().collect())
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
        // Also repairs the NodePort addresses and devices, should a netlink event be lost.
        let _ = self.refresh_host();
    }

    /// Rereads the namespace's links, addresses and routes: the node devices and NodePort
    /// addresses they give reach the maps and the links. Until the Node has been read, nothing
    /// is removed (a restarted agent keeps serving what the previous one chose). Fails as
    /// [`Agent::reconcile_links`] does.
    fn refresh_host(&mut self) -> Result<()> {
        let host = self.host.refresh();
        self.cfg.selector.devices = host.device_names();
        let remove = self.host.node_known();
        match self.dp.write_host(self.host.host(), remove) {
            Ok((addrs, devices)) => self.telemetry.set_host_entries(addrs, devices),
            Err(e) => error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "writing the NodePort addresses and devices failed"
            ),
        }
        self.reconcile_links()
    }

    /// Attaches to every wanted interface not yet attached, then unpins links of vanished
    /// interfaces and of hooks no longer wanted (in that order: no gap without a program).
    /// Until the Node has been read, nothing is unpinned. XDP that a device refuses under
    /// best-effort acceleration is skipped (logged once per interface); under native
    /// acceleration it is an error, returned (fatal at start).
    fn reconcile_links(&mut self) -> Result<()> {
        let prune = self.host.node_known();
        let refused = self
            .cfg
            .selector
            .reconcile(&mut self.dp, &mut self.xdp_declined, prune);
        if !refused.is_empty() {
            anyhow::bail!(
                "native XDP could not be attached to {} (--lb-acceleration native); \
                 best-effort skips such devices",
                refused.join(", ")
            );
        }
        Ok(())
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
    let dp = Dataplane::load(&cfg.bpffs, cfg.sizes)?;
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
    let mut ids = Ids::adopt(cap, &current);
    ids.nodeport_source_ranges = cfg.nodeport_source_ranges;
    for p in &cfg.host.devices.patterns {
        let found = nix::net::if_::if_nameindex()
            .is_ok_and(|l| l.iter().any(|i| p.matches(&i.name().to_string_lossy())));
        if !found {
            warn!(
                device = p.as_str(),
                "no such device yet; it will be attached when it appears"
            );
        }
    }
    let telemetry = Arc::new(Telemetry::new(
        cfg.bpffs.clone(),
        cfg.sizes,
        cfg.resync_period * 2,
    ));
    let _http = start_http(&cfg, &telemetry);

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
    let cfg_host = cfg.host.clone();
    let mut agent = Agent {
        health_checks: HealthCheckServers::new(telemetry.clone()),
        cfg,
        source,
        dp,
        ids,
        current,
        desired: Desired::default(),
        full_next: true,
        telemetry,
        warned: BTreeSet::new(),
        warned_skipped: BTreeSet::new(),
        cache: PlanCache::default(),
        xdp_declined: XdpDeclined::new(),
        host: Tracker::new(cfg_host),
    };
    // Maps first, then programs: a program never runs against maps older than the files.
    // From the API, nothing is programmed before the caches are full (below); until then the
    // programs serve the pinned maps a previous agent left, which are the last good state.
    if api.is_none() {
        agent.sync("start", &[]).await;
    }

    let (link_tx, mut link_rx) = mpsc::channel(1);
    let _link_task = host::watch(link_tx).context("watching links and addresses (netlink)")?;
    agent.refresh_host()?;

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
    let mut dirty = Dirty::default();
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
                drain(&mut api_rx, &agent.telemetry, &mut dirty, &mut trigger_times);
                dirty = Dirty::default();
                info!("API caches synced");
                agent.sync("initial sync from the API", &std::mem::take(&mut trigger_times)).await;
                pending = false;
                next_sync = tokio::time::Instant::now() + agent.cfg.min_sync_period;
            }
            Some(change) = api_rx.recv() => {
                record(&change, &agent.telemetry, &mut dirty, &mut trigger_times);
                pending = true;
            }
            () = tokio::time::sleep_until(next_sync), if pending && ready => {
                drain(&mut api_rx, &agent.telemetry, &mut dirty, &mut trigger_times);
                agent
                    .sync_dirty(std::mem::take(&mut dirty), &std::mem::take(&mut trigger_times))
                    .await;
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
            Some(()) = link_rx.recv() => {
                // Logged where it happened; a device added later does not stop the agent.
                let _ = agent.refresh_host();
            }
            _ = resync.tick(), if ready => agent.resync().await,
        }
    }
    Ok(())
}

/// Counts a change for the metrics, marks what it touches, and keeps its trigger time for
/// the next sync.
fn record(
    change: &Change,
    telemetry: &Telemetry,
    dirty: &mut Dirty,
    trigger_times: &mut Vec<SystemTime>,
) {
    telemetry.queued(
        change.kind == kube_source::Kind::EndpointSlice,
        change.kind == kube_source::Kind::Service,
    );
    dirty.add(&change.scope);
    trigger_times.extend(change.trigger_time);
}

/// Takes every change already queued, so one sync covers them all.
fn drain(
    rx: &mut mpsc::UnboundedReceiver<Change>,
    telemetry: &Telemetry,
    dirty: &mut Dirty,
    trigger_times: &mut Vec<SystemTime>,
) {
    while let Ok(change) = rx.try_recv() {
        record(&change, telemetry, dirty, trigger_times);
    }
}

/// Starts /healthz + /livez and /metrics (each keeps trying while its address is taken).
fn start_http(cfg: &RunConfig, telemetry: &Arc<Telemetry>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(addr) = cfg.healthz_bind_address {
        let h = http::health_handler(telemetry.clone());
        tasks.push(http::serve_retrying(addr, "/healthz and /livez", h));
    }
    if let Some(addr) = cfg.metrics_bind_address {
        let h = http::metrics_handler(telemetry.clone());
        tasks.push(http::serve_retrying(addr, "/metrics", h));
    }
    tasks
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
