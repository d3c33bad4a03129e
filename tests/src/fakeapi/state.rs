//! The fake API server's state: the objects by resource, their history of events, injected
//! faults and request counts, behind one lock with a condition variable for watchers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, MutexGuard};

use anyhow::{Context, Result};
use serde_json::Value;

/// The resources the fake server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// core/v1 services.
    Services,
    /// discovery.k8s.io/v1 endpointslices.
    EndpointSlices,
    /// core/v1 nodes (cluster-scoped).
    Nodes,
}

impl Resource {
    pub(super) const ALL: [Resource; 3] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    pub(super) fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    pub(super) fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    pub(super) fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    pub(super) fn namespaced(self) -> bool {
        self != Resource::Nodes
    }

    pub(super) fn from_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// `/api/v1` or `/apis/discovery.k8s.io/v1`.
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1",
            _ => "/api/v1",
        }
    }
}

/// Counts of requests served, by resource: what a test can check the client did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// List requests (each page counts).
    pub lists: usize,
    /// Watch requests.
    pub watches: usize,
    /// Watches answered with a 410 Gone ERROR event.
    pub gone: usize,
}

/// An object's key: resource, namespace (empty for Nodes), name.
pub(super) type Key = (Resource, String, String);

/// One change, as watchers see it: ADDED, MODIFIED or DELETED at resourceVersion `rv`.
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub(super) rv: u64,
    pub(super) kind: &'static str,
    pub(super) res: Resource,
    pub(super) old: Option<Value>,
    pub(super) new: Value,
}

/// Everything the server holds.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) rv: u64,
    pub(super) objects: BTreeMap<Key, Value>,
    pub(super) events: Vec<Event>,
    /// Watches from a version below this get 410 Gone.
    pub(super) compacted: u64,
    pub(super) down: bool,
    /// Bumped to cut every open watch.
    pub(super) generation: u64,
    /// Continue tokens: a consistent snapshot of a list, remaining items.
    pub(super) pages: BTreeMap<u64, (u64, Vec<Value>)>,
    pub(super) next_page: u64,
    pub(super) failing: BTreeSet<Resource>,
    pub(super) requests: BTreeMap<Resource, Requests>,
    pub(super) uid: u64,
}

/// The state, shared by the server's threads; `changed` wakes watchers.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
}

impl Shared {
    /// The state, even if a thread panicked holding it.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The resource and key of an object, from its `kind` and `metadata`.
pub(super) fn key_of(obj: &Value) -> Result<(Resource, Key)> {
    let kind = obj["kind"].as_str().context("object without kind")?;
    let res = Resource::from_kind(kind).with_context(|| format!("unknown kind {kind}"))?;
    let name = obj["metadata"]["name"]
        .as_str()
        .context("object without metadata.name")?;
    let ns = if res.namespaced() {
        obj["metadata"]["namespace"].as_str().unwrap_or("default")
    } else {
        ""
    };
    Ok((res, (res, ns.to_string(), name.to_string())))
}
