//! [`FakeApi`]: a small Kubernetes API server for tests, speaking the real protocol over
//! HTTP/1.1 on 127.0.0.1 of a network namespace.
//!
//! It serves what a kube-proxy-like client uses: discovery (`/version`, `/api`, `/apis`, the
//! group versions), cluster-wide `list` of Services, EndpointSlices and Nodes with
//! `resourceVersion`, pagination (`limit`/`continue`), `labelSelector` (`k`, `!k`, `k=v`, `k!=v`)
//! and `fieldSelector` (`metadata.name`, `metadata.namespace`), and `watch` streams
//! (chunked JSON lines of ADDED / MODIFIED / DELETED / BOOKMARK / ERROR events) from a
//! resourceVersion, with `timeoutSeconds` and `allowWatchBookmarks`. A watch from a version
//! older than the last compaction gets the ERROR event with a 410 Gone Status, as the real
//! watch cache sends it.
//!
//! Faults a test can inject: [`FakeApi::drop_watches`] (every open watch connection is cut
//! without a terminating chunk), [`FakeApi::compact`] (older versions expire: re-watching from
//! them gets 410), [`FakeApi::set_down`] (the listening socket is closed and every connection
//! cut, so connects are refused, until it is set up again on the same port), and
//! [`FakeApi::fail_lists`] (lists of a resource answer 500).
//!
//! Why in the node's namespace: the agent runs inside the node's network namespace (as on a
//! real node), and a namespace's 127.0.0.1 is its own loopback. The server binds 127.0.0.1 in
//! the namespace it is started in (through [`NetNs::spawn_thread`]), which is how a node
//! reaches a local API server or proxy; no address outside loopback is used.

mod serve;
mod state;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::netns::NetNs;
use serve::accept_loop;
use state::{key_of, Event, Shared};
pub use state::{Requests, Resource};

/// The fake API server. Stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Arc<Mutex<bool>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl FakeApi {
    /// Starts a server on 127.0.0.1 (a free port) inside `ns`.
    pub fn start(ns: &NetNs) -> Result<FakeApi> {
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(Mutex::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s2, stop2) = (shared.clone(), stop.clone());
        let accept = ns.spawn_thread(move || {
            let listener = match TcpListener::bind("127.0.0.1:0") {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let addr = listener.local_addr().expect("bound");
            let _ = tx.send(Ok(addr));
            accept_loop(listener, addr, s2, stop2);
        })?;
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .context("fake API server did not start")?
            .context("bind 127.0.0.1:0 in the node namespace")?;
        Ok(FakeApi {
            shared,
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The server's address (127.0.0.1:port in the namespace it runs in).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n\
             current-context: fake\nusers:\n- name: agent\n  user:\n    token: fake-token\n",
            self.url()
        )
    }

    /// Writes [`FakeApi::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.kubeconfig()).with_context(|| format!("write {}", path.display()))
    }

    /// Creates or replaces an object (`kind`, `metadata.name` and, for namespaced kinds,
    /// `metadata.namespace` are read from it). Returns the new resourceVersion. Watchers see an
    /// ADDED or MODIFIED event.
    pub fn apply(&self, mut obj: Value) -> Result<u64> {
        let (res, key) = key_of(&obj)?;
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        let old = st.objects.get(&key).cloned();
        {
            let meta = obj
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .context("metadata")?;
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            let (uid, created) = match &old {
                Some(o) => (
                    o["metadata"]["uid"].clone(),
                    o["metadata"]["creationTimestamp"].clone(),
                ),
                None => {
                    st.uid += 1;
                    (
                        json!(format!("00000000-0000-4000-8000-{:012x}", st.uid)),
                        json!("2026-01-01T00:00:00Z"),
                    )
                }
            };
            meta.insert("uid".into(), uid);
            meta.insert("creationTimestamp".into(), created);
            let generation = old
                .as_ref()
                .and_then(|o| o["metadata"]["generation"].as_u64())
                .unwrap_or(0)
                + 1;
            meta.insert("generation".into(), json!(generation));
        }
        st.objects.insert(key, obj.clone());
        st.events.push(Event {
            rv,
            kind: if old.is_some() { "MODIFIED" } else { "ADDED" },
            res,
            old,
            new: obj,
        });
        drop(st);
        self.shared.changed.notify_all();
        Ok(rv)
    }

    /// Deletes an object; watchers see DELETED. Returns the new resourceVersion.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<u64> {
        let res = Resource::from_kind(kind).with_context(|| format!("unknown kind {kind}"))?;
        let ns = if res.namespaced() { namespace } else { "" };
        let mut st = self.shared.lock();
        let Some(mut obj) = st.objects.remove(&(res, ns.to_string(), name.to_string())) else {
            bail!("no {kind} {namespace}/{name}");
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.events.push(Event {
            rv,
            kind: "DELETED",
            res,
            old: Some(obj.clone()),
            new: obj,
        });
        drop(st);
        self.shared.changed.notify_all();
        Ok(rv)
    }

    /// Cuts every open watch connection (no terminating chunk: the client sees a broken
    /// stream and must watch again from its last version).
    pub fn drop_watches(&self) {
        self.shared.lock().generation += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the history: a watch from any version before now gets 410 Gone, so clients
    /// must list again. Open watches are cut too, as an API server restart would.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv + 1;
        st.events.clear();
        st.pages.clear();
        st.generation += 1;
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Takes the server down (listening socket closed, every connection cut: connects are
    /// refused) or brings it back up on the same address.
    pub fn set_down(&self, down: bool) {
        let mut st = self.shared.lock();
        st.down = down;
        st.generation += 1;
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Makes lists of `res` answer 500 Internal Server Error (or stop doing so).
    pub fn fail_lists(&self, res: Resource, fail: bool) {
        let mut st = self.shared.lock();
        if fail {
            st.failing.insert(res);
        } else {
            st.failing.remove(&res);
        }
    }

    /// Requests served so far for `res`.
    pub fn requests(&self, res: Resource) -> Requests {
        self.shared
            .lock()
            .requests
            .get(&res)
            .copied()
            .unwrap_or_default()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.set_down(true);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
