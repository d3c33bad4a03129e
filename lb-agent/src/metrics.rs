//! What the agent tells the outside: Prometheus metrics and the health state behind /healthz.
//!
//! Metrics with kube-proxy's meaning carry kube-proxy's names (`kubeproxy_sync_proxy_rules_*`,
//! `kubeproxy_network_programming_duration_seconds`); the agent's own are `xdplb_*`. Kernel
//! counters (per-frontend packets and bytes, verdicts by reason) are read from the pinned maps
//! at scrape time.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{atomic::AtomicU64, Mutex},
    time::{Duration, Instant, SystemTime},
};

use lb_common::{
    maps::{FrontendKey, DEFAULT_MAX_DEVICES, DEFAULT_MAX_NODE_ADDRS, MAP_DEVICES, MAP_NODE_ADDRS},
    verdict::Reason,
};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{dataplane::MapSizes, plan::Frontend};

/// The map key and the metric labels of a plan frontend (IPv4 only, as the dataplane).
fn frontend_labels(fe: &Frontend) -> Option<(FrontendKey, FrontendLabels)> {
    let key = crate::entries::frontend_key(fe).ok()?;
    let labels = FrontendLabels {
        service: fe.service.clone(),
        port_name: fe.port_name.clone(),
        frontend: format!("{}:{}", fe.ip, fe.port),
        protocol: format!("{:?}", fe.protocol).to_uppercase(),
        scope: format!("{:?}", fe.scope).to_lowercase(),
    };
    Some((key, labels))
}

/// The labels of one frontend's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontendLabels {
    /// "namespace/name".
    pub service: String,
    pub port_name: String,
    /// "ip:port"; a NodePort's is "0.0.0.0:port": every NodePort address of this node.
    pub frontend: String,
    pub protocol: String,
    /// "any", or "pods" for the pods' side of an externalTrafficPolicy Local Service's external
    /// address (its own counters).
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

/// kube-proxy's health rules (pkg/proxy/healthcheck/proxy_health.go): unhealthy when an update
/// has been waiting longer than the timeout; /healthz also when the node is being deleted.
#[derive(Clone, Debug)]
pub struct Health {
    /// When the dataplane was last brought up to date.
    pub last_updated: Option<SystemTime>,
    /// The oldest change not yet applied (the initial sync counts as one).
    pub oldest_pending: Option<Instant>,
    /// False while the node is being deleted or drained by the cluster autoscaler.
    pub node_eligible: bool,
    pub timeout: Duration,
}

impl Health {
    /// Healthy while nothing waits longer than the timeout (kube-proxy's isHealthy).
    pub fn is_healthy(&self, now: Instant) -> bool {
        self.oldest_pending
            .is_none_or(|t| now.saturating_duration_since(t) < self.timeout)
    }
}

/// Shared between the sync loop (writer) and the HTTP servers (readers).
pub struct Telemetry {
    registry: Registry,
    sync_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    last_queued: Gauge<f64, AtomicU64>,
    network_programming: Histogram,
    endpoint_changes: Counter,
    service_changes: Counter,
    full_resyncs: Counter,
    drift_repairs: Counter,
    sync_errors: Counter,
    watch_errors: Family<ResourceLabel, Counter>,
    labels: Mutex<BTreeMap<FrontendKey, FrontendLabels>>,
    occupancy: Mutex<[u64; 3]>,
    /// Entries the agent wrote to `LB_NODE_ADDRS` and `LB_DEVICES`.
    host_entries: Mutex<[u64; 2]>,
    health: Mutex<Health>,
    sizes: MapSizes,
    bpffs: PathBuf,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Telemetry {
    /// Registers every metric. `health_timeout` is kube-proxy's healthz timeout.
    pub fn new(bpffs: PathBuf, sizes: MapSizes, health_timeout: Duration) -> Self {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let network_programming = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let last_queued = Gauge::<f64, AtomicU64>::default();
        let endpoint_changes = Counter::default();
        let service_changes = Counter::default();
        let full_resyncs = Counter::default();
        let drift_repairs = Counter::default();
        let sync_errors = Counter::default();
        let watch_errors = Family::<ResourceLabel, Counter>::default();
        {
            let kp = registry.sub_registry_with_prefix("kubeproxy");
            kp.register(
                "sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds: planning and writing the BPF maps",
                sync_duration.clone(),
            );
            kp.register(
                "sync_proxy_rules_last_timestamp_seconds",
                "The last time the maps were successfully synced",
                last_sync.clone(),
            );
            kp.register(
                "sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of the maps was queued",
                last_queued.clone(),
            );
            kp.register(
                "network_programming_duration_seconds",
                "In-cluster network programming latency in seconds, from the EndpointSlice's \
                 last-change-trigger-time to the map write",
                network_programming.clone(),
            );
            kp.register(
                "sync_proxy_rules_endpoint_changes",
                "Cumulative EndpointSlice changes seen",
                endpoint_changes.clone(),
            );
            kp.register(
                "sync_proxy_rules_service_changes",
                "Cumulative Service changes seen",
                service_changes.clone(),
            );
        }
        {
            let ours = registry.sub_registry_with_prefix("xdplb");
            ours.register(
                "full_resyncs",
                "Periodic full resyncs against the kernel's maps",
                full_resyncs.clone(),
            );
            ours.register(
                "drift_repairs",
                "Full resyncs that found the kernel's maps differing from the agent's view",
                drift_repairs.clone(),
            );
            ours.register(
                "sync_errors",
                "Syncs whose map writes failed",
                sync_errors.clone(),
            );
            ours.register(
                "api_watch_errors",
                "Watch and list errors by resource",
                watch_errors.clone(),
            );
        }
        Self {
            registry,
            sync_duration,
            last_sync,
            last_queued,
            network_programming,
            endpoint_changes,
            service_changes,
            full_resyncs,
            drift_repairs,
            sync_errors,
            watch_errors,
            labels: Mutex::default(),
            occupancy: Mutex::new([0; 3]),
            host_entries: Mutex::new([0; 2]),
            health: Mutex::new(Health {
                last_updated: None,
                oldest_pending: Some(Instant::now()),
                node_eligible: true,
                timeout: health_timeout,
            }),
            sizes,
            bpffs,
        }
    }

    /// A change arrived from a watch or the manifests directory.
    pub fn queued(&self, endpoint_change: bool, service_change: bool) {
        if endpoint_change {
            self.endpoint_changes.inc();
        }
        if service_change {
            self.service_changes.inc();
        }
        self.last_queued.set(unix_seconds(SystemTime::now()));
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.oldest_pending.get_or_insert_with(Instant::now);
    }

    /// A sync finished: the maps hold `occupancy` entries in the frontend, slot and backend
    /// maps. `trigger_times` are the EndpointSlice changes this sync made visible.
    pub fn synced(&self, started: Instant, occupancy: [usize; 3], trigger_times: &[SystemTime]) {
        let now = SystemTime::now();
        self.sync_duration.observe(started.elapsed().as_secs_f64());
        self.last_sync.set(unix_seconds(now));
        for t in trigger_times {
            if let Ok(d) = now.duration_since(*t) {
                self.network_programming.observe(d.as_secs_f64());
            }
        }
        *self.occupancy.lock().unwrap_or_else(|e| e.into_inner()) = occupancy.map(|n| n as u64);
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.last_updated = Some(now);
        h.oldest_pending = None;
    }

    /// The labels of every planned frontend (after a full replan).
    pub fn set_frontends(&self, frontends: &[Frontend]) {
        let mut labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        labels.clear();
        for fe in frontends {
            if let Some((k, l)) = frontend_labels(fe) {
                labels.insert(k, l);
            }
        }
    }

    /// The labels after replanning some Services: `removed` were theirs, `added` are.
    pub fn update_frontends(&self, removed: &[Frontend], added: &[Frontend]) {
        let mut labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        for (k, _) in removed.iter().filter_map(frontend_labels) {
            labels.remove(&k);
        }
        for (k, l) in added.iter().filter_map(frontend_labels) {
            labels.insert(k, l);
        }
    }

    /// The agent wrote `node_addrs` NodePort addresses and `devices` devices.
    pub fn set_host_entries(&self, node_addrs: usize, devices: usize) {
        *self.host_entries.lock().unwrap_or_else(|e| e.into_inner()) =
            [node_addrs as u64, devices as u64];
    }

    pub fn sync_failed(&self) {
        self.sync_errors.inc();
    }

    pub fn full_resync(&self, drifted: bool) {
        self.full_resyncs.inc();
        if drifted {
            self.drift_repairs.inc();
        }
    }

    pub fn watch_error(&self, resource: &str) {
        self.watch_errors
            .get_or_create(&ResourceLabel {
                resource: resource.to_owned(),
            })
            .inc();
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .node_eligible = eligible;
    }

    /// The health state now.
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Prometheus text: the registered metrics, then the kernel's counters read now.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        // `encode` ends with "# EOF"; the kernel part is appended before it.
        let body = out
            .trim_end()
            .strip_suffix("# EOF")
            .unwrap_or(&out)
            .to_owned();
        let mut kernel = Registry::with_prefix("xdplb");
        self.kernel_metrics(&mut kernel);
        let mut k = String::new();
        let _ = encode(&mut k, &kernel);
        body + &k
    }

    fn kernel_metrics(&self, reg: &mut Registry) {
        let entries = Family::<MapLabel, Gauge>::default();
        let capacity = Family::<MapLabel, Gauge>::default();
        let occupancy = *self.occupancy.lock().unwrap_or_else(|e| e.into_inner());
        let caps = [self.sizes.frontends, self.sizes.slots, self.sizes.backends];
        for (i, name) in ["LB_FRONTENDS", "LB_SLOTS", "LB_BACKENDS"]
            .iter()
            .enumerate()
        {
            let l = MapLabel {
                map: (*name).to_owned(),
            };
            entries.get_or_create(&l).set(occupancy[i] as i64);
            capacity.get_or_create(&l).set(caps[i] as i64);
        }
        let host = *self.host_entries.lock().unwrap_or_else(|e| e.into_inner());
        for (name, n, cap) in [
            (MAP_NODE_ADDRS, host[0], DEFAULT_MAX_NODE_ADDRS),
            (MAP_DEVICES, host[1], DEFAULT_MAX_DEVICES),
        ] {
            let l = MapLabel {
                map: name.to_owned(),
            };
            entries.get_or_create(&l).set(n as i64);
            capacity.get_or_create(&l).set(i64::from(cap));
        }
        capacity
            .get_or_create(&MapLabel {
                map: "LB_CT".to_owned(),
            })
            .set(self.sizes.conntrack as i64);
        reg.register(
            "map_entries",
            "Entries the agent wrote to each map it programs (service maps, NodePort addresses, devices)",
            entries,
        );
        reg.register("map_capacity", "Capacity of each map", capacity);

        let Ok(pinned) = crate::dataplane::Pinned::open(&self.bpffs) else {
            return;
        };
        let packets = Family::<FrontendLabels, Counter>::default();
        let bytes = Family::<FrontendLabels, Counter>::default();
        let flows = Family::<FrontendLabels, Counter>::default();
        // Frontend id -> labels, through the ids the kernel's frontend map holds.
        let mut frontends = BTreeMap::new();
        if let Ok(entries) = pinned.entries() {
            let labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
            for (k, f) in &entries.frontends {
                if let Some(l) = labels.get(k) {
                    frontends.insert(f.id, l.clone());
                }
            }
        }
        for (id, labels) in &frontends {
            if let Ok(s) = pinned.frontend_stats(*id) {
                packets.get_or_create(labels).inc_by(s.packets);
                bytes.get_or_create(labels).inc_by(s.bytes);
                flows.get_or_create(labels).inc_by(s.new_flows);
            }
        }
        reg.register(
            "service_packets",
            "Packets to each frontend of a Service",
            packets,
        );
        reg.register(
            "service_bytes",
            "Bytes to each frontend of a Service",
            bytes,
        );
        reg.register(
            "service_new_flows",
            "New flows balanced by each frontend of a Service",
            flows,
        );
        let vp = Family::<ReasonLabel, Counter>::default();
        let vb = Family::<ReasonLabel, Counter>::default();
        if let Ok(verdicts) = pinned.verdicts() {
            for (c, r) in verdicts.iter().zip(Reason::ALL) {
                let l = ReasonLabel {
                    reason: r.name().to_owned(),
                };
                vp.get_or_create(&l).inc_by(c.packets);
                vb.get_or_create(&l).inc_by(c.bytes);
            }
        }
        reg.register(
            "verdict_packets",
            "Packets seen by the programs, by verdict reason",
            vp,
        );
        reg.register(
            "verdict_bytes",
            "Bytes seen by the programs, by verdict reason",
            vb,
        );
    }
}
