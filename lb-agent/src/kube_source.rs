//! Objects from the Kubernetes API: watchers and reflectors for Services, EndpointSlices and
//! this node's Node, as kube-proxy's informers (same label selector, cluster-wide).
//!
//! The stores keep the last good state whatever happens to the API connection: a watch error,
//! a dropped connection or an API server that is down leaves them as they are, and the watchers
//! reconnect with backoff (a 410 Gone makes them list again; the reflector swaps the new list in
//! atomically). Cached objects are trimmed to what the plan reads.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    api::Api,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, ObjectRef, Store},
        utils::Backoff,
        watcher, WatchStreamExt,
    },
    Client, Config,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::model::Snapshot;

/// kube-proxy's informer label selector: Services and EndpointSlices owned by another proxy,
/// and headless Services' slices, are not watched at all.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The EndpointSlice annotation the EndpointSlice controller sets to when the change that led
/// to this slice version happened (network_programming_duration_seconds starts there).
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Errors of the API source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no API configuration: not in a cluster and no kubeconfig found (use --kubeconfig)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("creating the API client")]
    Client(#[source] kube::Error),
}

/// Which watched kind an event was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    /// The resource name, for logs and metric labels.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }
}

/// A change seen on a watch (the store already holds it when this is received).
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: Kind,
    /// What changed: one object, or everything (a list replaced the store).
    pub scope: Scope,
    /// For EndpointSlices: the last-change-trigger-time annotation, if any.
    pub trigger_time: Option<SystemTime>,
}

/// What a change touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The store was replaced (initial list, relist after 410): anything may have changed.
    All,
    /// The Service "namespace/name" was added, changed or deleted.
    Service(String),
    /// The EndpointSlice "namespace/name" changed; `service` is the "namespace/name" of the
    /// Service it belongs to now, None if deleted or without the service-name label.
    Slice {
        slice: String,
        service: Option<String>,
    },
}

fn object_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The "namespace/name" of the Service an EndpointSlice belongs to, from its label.
pub fn slice_service(meta: &ObjectMeta) -> Option<String> {
    let service = meta
        .labels
        .as_ref()?
        .get(crate::plan::LABEL_SERVICE_NAME)
        .filter(|s| !s.is_empty())?;
    Some(format!(
        "{}/{service}",
        meta.namespace.as_deref().unwrap_or_default()
    ))
}

fn scope_of(kind: Kind, meta: &ObjectMeta, deleted: bool) -> Scope {
    match kind {
        Kind::Service => Scope::Service(object_key(meta)),
        Kind::EndpointSlice => Scope::Slice {
            slice: object_key(meta),
            service: if deleted { None } else { slice_service(meta) },
        },
        Kind::Node => Scope::All,
    }
}

/// The reflectors' stores.
#[derive(Clone)]
pub struct ApiSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

/// Builds a client as kube-proxy does: from `kubeconfig` when given, else in-cluster (the
/// service account), else the usual kubeconfig places.
pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeSourceError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer().await.map_err(KubeSourceError::Infer)?,
    };
    info!(server = %config.cluster_url, "API server");
    Client::try_from(config).map_err(KubeSourceError::Client)
}

/// The backoff between reconnects: 250 ms doubling to 10 s, reset by any good event. Shorter
/// than client-go's 30 s ceiling: one agent per node, and the API server is usually local.
struct ReconnectBackoff {
    next: Duration,
}

impl ReconnectBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);
    fn new() -> Self {
        Self { next: Self::MIN }
    }
}

impl Iterator for ReconnectBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(d)
    }
}

impl Backoff for ReconnectBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Starts the three watchers. Every change is announced on `tx` after the store holds it;
/// `errors` counts watch errors per kind (for metrics). The tasks run until the runtime stops.
pub fn start(
    client: Client,
    node: &str,
    tx: mpsc::UnboundedSender<Change>,
    on_error: Arc<dyn Fn(Kind) + Send + Sync>,
) -> ApiSource {
    let proxy_cfg = || watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        proxy_cfg(),
        Kind::Service,
        trim_service,
        tx.clone(),
        on_error.clone(),
    );
    let slices = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        proxy_cfg(),
        Kind::EndpointSlice,
        trim_slice,
        tx.clone(),
        on_error.clone(),
    );
    let nodes = spawn_reflector(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
        Kind::Node,
        trim_node,
        tx,
        on_error,
    );
    ApiSource {
        services,
        slices,
        nodes,
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    trim: fn(&mut K),
    tx: mpsc::UnboundedSender<Change>,
    on_error: Arc<dyn Fn(Kind) + Send + Sync>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .backoff(ReconnectBackoff::new())
        .modify(trim)
        .reflect(writer);
    tokio::spawn(drive(stream, kind, tx, on_error));
    reader
}

/// Polls a reflector stream forever, announcing changes and logging trouble once per episode.
async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    kind: Kind,
    tx: mpsc::UnboundedSender<Change>,
    on_error: Arc<dyn Fn(Kind) + Send + Sync>,
) where
    K: kube::Resource + 'static,
{
    let failing = AtomicBool::new(false);
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if failing.swap(false, Ordering::Relaxed) {
                    info!(resource = kind.resource(), "watch reconnected");
                }
                let (scope, trigger_time) = match &event {
                    watcher::Event::Apply(o) => {
                        (scope_of(kind, o.meta(), false), trigger_time(o.meta()))
                    }
                    watcher::Event::Delete(o) => {
                        (scope_of(kind, o.meta(), true), trigger_time(o.meta()))
                    }
                    watcher::Event::InitDone => {
                        info!(resource = kind.resource(), "listed");
                        (Scope::All, None)
                    }
                    // Pages of a list: the store changes only at InitDone.
                    watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                };
                let _ = tx.send(Change {
                    kind,
                    scope,
                    trigger_time,
                });
            }
            Err(e) => {
                on_error(kind);
                let gone = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
                if gone {
                    info!(
                        resource = kind.resource(),
                        "watch expired (410 Gone): listing again; serving the last good state meanwhile"
                    );
                } else if !failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        resource = kind.resource(),
                        error = %e,
                        "watch failed: serving the last good state, reconnecting with backoff"
                    );
                } else {
                    debug!(resource = kind.resource(), error = %e, "watch still failing");
                }
            }
        }
    }
}

fn trigger_time(meta: &ObjectMeta) -> Option<SystemTime> {
    let text = meta.annotations.as_ref()?.get(LAST_CHANGE_TRIGGER_TIME)?;
    let ts: Timestamp = text.parse().ok()?;
    Some(SystemTime::from(ts))
}

/// Drops what the plan never reads: managed fields and annotations.
fn trim_meta(meta: &mut ObjectMeta, keep_annotation: Option<&str>) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.annotations = match (meta.annotations.take(), keep_annotation) {
        (Some(mut a), Some(keep)) => {
            a.retain(|k, _| k == keep);
            Some(a).filter(|a| !a.is_empty())
        }
        _ => None,
    };
}

fn trim_service(s: &mut Service) {
    trim_meta(&mut s.metadata, None);
    if let Some(status) = &mut s.status {
        status.conditions = None;
    }
}

fn trim_slice(s: &mut EndpointSlice) {
    trim_meta(&mut s.metadata, Some(LAST_CHANGE_TRIGGER_TIME));
    for ep in &mut s.endpoints {
        ep.target_ref = None;
        ep.hostname = None;
        ep.deprecated_topology = None;
    }
}

fn trim_node(n: &mut Node) {
    trim_meta(&mut n.metadata, None);
    n.spec = n.spec.take().map(|mut spec| {
        spec.config_source = None;
        spec
    });
    if let Some(status) = &mut n.status {
        status.images = None;
        status.conditions = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.node_info = None;
        status.capacity = None;
        status.allocatable = None;
        status.config = None;
        status.daemon_endpoints = None;
    }
}

impl ApiSource {
    /// Waits until the initial lists of Services, EndpointSlices and the Node are in the
    /// stores. Until then nothing may be programmed: an empty cache is not an empty cluster.
    pub async fn wait_until_ready(&self) {
        // A writer is dropped only with the runtime; then there is nothing to wait for.
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }

    /// What the stores hold now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            endpoint_slices: self.slices.state(),
            nodes: self.nodes.state(),
        }
    }

    /// The Services `keys` and the EndpointSlices `slices` ("namespace/name" each; those that
    /// are gone are left out), and the Node: all the plan needs to plan those Services alone.
    /// Lookups by key: nothing scans the stores.
    pub fn snapshot_of<'a>(
        &self,
        keys: &BTreeSet<String>,
        slices: impl IntoIterator<Item = &'a String>,
    ) -> Snapshot {
        fn lookup<K>(store: &Store<K>, key: &str) -> Option<Arc<K>>
        where
            K: kube::Resource<DynamicType = ()> + Clone,
        {
            let (ns, name) = key.split_once('/')?;
            store.get(&ObjectRef::new(name).within(ns))
        }
        let services = keys
            .iter()
            .filter_map(|k| lookup(&self.services, k))
            .collect();
        let endpoint_slices = slices
            .into_iter()
            .filter_map(|k| lookup(&self.slices, k))
            .collect();
        Snapshot {
            services,
            endpoint_slices,
            nodes: self.nodes.state(),
        }
    }
}
