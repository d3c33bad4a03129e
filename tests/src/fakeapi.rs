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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::netns::NetNs;

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
    const ALL: [Resource; 3] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    fn namespaced(self) -> bool {
        self != Resource::Nodes
    }

    fn from_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// `/api/v1` or `/apis/discovery.k8s.io/v1`.
    fn prefix(self) -> &'static str {
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

type Key = (Resource, String, String);

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    kind: &'static str,
    res: Resource,
    old: Option<Value>,
    new: Value,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<Event>,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    down: bool,
    /// Bumped to cut every open watch.
    generation: u64,
    /// Continue tokens: a consistent snapshot of a list, remaining items.
    pages: BTreeMap<u64, (u64, Vec<Value>)>,
    next_page: u64,
    failing: BTreeSet<Resource>,
    requests: BTreeMap<Resource, Requests>,
    uid: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server. Stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Arc<Mutex<bool>>,
    accept: Option<thread::JoinHandle<()>>,
}

/// How often an idle watch gets a BOOKMARK (when asked for them).
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

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

fn key_of(obj: &Value) -> Result<(Resource, Key)> {
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

fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<Mutex<bool>>,
) {
    let _ = listener.set_nonblocking(true);
    loop {
        if *stop.lock().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        if shared.lock().down {
            drop(listener);
            // Wait until up again (or stopped), then listen on the same address.
            loop {
                if *stop.lock().unwrap_or_else(|e| e.into_inner()) {
                    return;
                }
                let st = shared.lock();
                if !st.down {
                    break;
                }
                let _ = shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(20))
                    .map(|_| ());
            }
            listener = loop {
                match TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            };
            let _ = listener.set_nonblocking(true);
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                // Threads inherit the namespace of the thread that creates them.
                let _ = thread::Builder::new()
                    .name("fakeapi-conn".into())
                    .spawn(move || serve_conn(stream, shared));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One request per connection (`Connection: close`), as simple clients and proxies do.
fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(m), Some(t)) => (m.to_string(), t.to_string()),
        _ => return,
    };
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut stream = stream;
    if method != "GET" {
        let _ = respond(
            &mut stream,
            405,
            &status_json(405, "MethodNotAllowed", "only GET"),
        );
        return;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target.clone(), BTreeMap::new()),
    };
    route(&mut stream, &path, &query, &shared);
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        500 => "Internal Server Error",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

fn route(stream: &mut TcpStream, path: &str, query: &BTreeMap<String, String>, shared: &Shared) {
    let discovery = match path {
        "/version" => Some(
            json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-fake",
            "platform": "linux/amd64"}),
        ),
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        "/apis" => Some(
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": "discovery.k8s.io",
            "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]}),
        ),
        "/api/v1" => Some(resource_list("v1", &[Resource::Services, Resource::Nodes])),
        "/apis/discovery.k8s.io/v1" => Some(resource_list(
            "discovery.k8s.io/v1",
            &[Resource::EndpointSlices],
        )),
        _ => None,
    };
    if let Some(body) = discovery {
        let _ = respond(stream, 200, &body);
        return;
    }
    // /api/v1/services, /api/v1/namespaces/NS/services, /apis/discovery.k8s.io/v1/...
    let Some((res, namespace)) = Resource::ALL.into_iter().find_map(|r| {
        let rest = path.strip_prefix(r.prefix())?;
        if rest == format!("/{}", r.plural()) {
            return Some((r, None));
        }
        let rest = rest.strip_prefix("/namespaces/")?;
        let (ns, plural) = rest.split_once('/')?;
        (r.namespaced() && plural == r.plural()).then(|| (r, Some(ns.to_string())))
    }) else {
        let _ = respond(
            stream,
            404,
            &status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
        return;
    };
    let selector = Selector {
        labels: query.get("labelSelector").cloned().unwrap_or_default(),
        fields: query.get("fieldSelector").cloned().unwrap_or_default(),
        namespace,
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(stream, res, &selector, query, shared);
    } else {
        list(stream, res, &selector, query, shared);
    }
}

fn resource_list(group_version: &str, res: &[Resource]) -> Value {
    let resources: Vec<Value> = res
        .iter()
        .map(|r| {
            json!({"name": r.plural(), "singularName": r.kind().to_lowercase(),
                   "namespaced": r.namespaced(), "kind": r.kind(),
                   "verbs": ["get", "list", "watch"]})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
           "resources": resources})
}

struct Selector {
    labels: String,
    fields: String,
    namespace: Option<String>,
}

impl Selector {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace {
            if meta["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        let labels = meta["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        for term in self
            .labels
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let ok = if let Some(k) = term.strip_prefix('!') {
                label(k).is_none()
            } else if let Some((k, v)) = term.split_once("!=") {
                label(k) != Some(v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                label(k) == Some(v)
            } else {
                label(term).is_some()
            };
            if !ok {
                return false;
            }
        }
        for term in self
            .fields
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (k, v, eq) = match term.split_once("!=") {
                Some((k, v)) => (k, v, false),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((k, v)) => (k, v, true),
                    None => return false,
                },
            };
            let actual = match k {
                "metadata.name" => meta["name"].as_str(),
                "metadata.namespace" => meta["namespace"].as_str(),
                _ => return false,
            };
            if (actual == Some(v)) != eq {
                return false;
            }
        }
        true
    }
}

fn list(
    stream: &mut TcpStream,
    res: Resource,
    selector: &Selector,
    query: &BTreeMap<String, String>,
    shared: &Shared,
) {
    let mut st = shared.lock();
    st.requests.entry(res).or_default().lists += 1;
    if st.failing.contains(&res) {
        drop(st);
        let _ = respond(
            stream,
            500,
            &status_json(500, "InternalError", "injected failure"),
        );
        return;
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (rv, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let page = token.parse::<u64>().ok().and_then(|t| st.pages.remove(&t));
            match page {
                Some(p) => p,
                None => {
                    drop(st);
                    let _ = respond(
                        stream,
                        410,
                        &status_json(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a \
                             consistent list result. You can start a new list without the \
                             continue parameter.",
                        ),
                    );
                    return;
                }
            }
        }
        None => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((r, _, _), o)| *r == res && selector.matches(o))
                .map(|(_, o)| o.clone())
                .collect();
            (st.rv, items)
        }
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit.filter(|l| *l < items.len()) {
        let rest = items.split_off(limit);
        st.next_page += 1;
        let token = st.next_page;
        meta["remainingItemCount"] = json!(rest.len());
        st.pages.insert(token, (rv, rest));
        meta["continue"] = json!(token.to_string());
    }
    drop(st);
    // List items carry no kind/apiVersion, as the real server's lists.
    for item in &mut items {
        if let Some(o) = item.as_object_mut() {
            o.remove("kind");
            o.remove("apiVersion");
        }
    }
    let body = json!({"kind": format!("{}List", res.kind()), "apiVersion": res.api_version(),
                      "metadata": meta, "items": items});
    let _ = respond(stream, 200, &body);
}

fn write_chunk(stream: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut text = v.to_string();
    text.push('\n');
    // One write per chunk (and TCP_NODELAY): no Nagle delay between the pieces of an event.
    let chunk = format!("{:x}\r\n{text}\r\n", text.len());
    stream.write_all(chunk.as_bytes())?;
    stream.flush()
}

fn watch(
    stream: &mut TcpStream,
    res: Resource,
    selector: &Selector,
    query: &BTreeMap<String, String>,
    shared: &Shared,
) {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let deadline = Instant::now()
        + Duration::from_secs(
            query
                .get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .unwrap_or(1800),
        );
    let (generation, gone, mut initial) = {
        let mut st = shared.lock();
        let gone = from != 0 && from < st.compacted;
        let r = st.requests.entry(res).or_default();
        r.watches += 1;
        if gone {
            r.gone += 1;
        }
        // resourceVersion 0 or unset: the current state as ADDED events first.
        let initial: Vec<Value> = if from == 0 {
            st.objects
                .iter()
                .filter(|((r, _, _), o)| *r == res && selector.matches(o))
                .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                .collect()
        } else {
            Vec::new()
        };
        (st.generation, gone, initial)
    };
    if write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    if gone {
        let status = status_json(410, "Expired", &format!("too old resource version: {from}"));
        let _ = write_chunk(stream, &json!({"type": "ERROR", "object": status}));
        let _ = stream.write_all(b"0\r\n\r\n");
        return;
    }
    for ev in initial.drain(..) {
        if write_chunk(stream, &ev).is_err() {
            return;
        }
    }
    let mut sent = if from == 0 { shared.lock().rv } else { from };
    let mut last_write = Instant::now();
    loop {
        let mut out = Vec::new();
        {
            let mut st = shared.lock();
            loop {
                if st.generation != generation {
                    drop(st);
                    // Cut: no terminating chunk; RST rather than an orderly close.
                    cut(stream);
                    return;
                }
                let new: Vec<&Event> = st
                    .events
                    .iter()
                    .filter(|e| e.rv > sent && e.res == res)
                    .collect();
                if !new.is_empty() {
                    for e in new {
                        sent = e.rv;
                        let was = e.old.as_ref().is_some_and(|o| selector.matches(o));
                        let is = selector.matches(&e.new);
                        let kind = match (e.kind, was, is) {
                            ("DELETED", true, _) => "DELETED",
                            ("DELETED", false, _) => continue,
                            (_, true, true) => "MODIFIED",
                            (_, false, true) => "ADDED",
                            (_, true, false) => "DELETED",
                            (_, false, false) => continue,
                        };
                        out.push(json!({"type": kind, "object": e.new}));
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    drop(st);
                    let _ = stream.write_all(b"0\r\n\r\n");
                    return;
                }
                if bookmarks && last_write.elapsed() >= BOOKMARK_EVERY {
                    let rv = st.rv.max(sent);
                    let kind = res.kind();
                    let api_version = res.api_version();
                    out.push(json!({"type": "BOOKMARK", "object": {"kind": kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": rv.to_string()}}}));
                    sent = rv;
                    break;
                }
                st = shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        for ev in &out {
            if write_chunk(stream, ev).is_err() {
                return;
            }
        }
        last_write = Instant::now();
    }
}

/// Closes a connection abruptly (RST), as a crashed server or a broken network does.
fn cut(stream: &mut TcpStream) {
    let _ = socket_linger_zero(stream);
    let _ = stream.shutdown(Shutdown::Both);
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `l` only, for its size, on a socket this stream owns.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---- Objects in the API server's format ----

/// A Service port: name, protocol ("TCP"/"UDP"), port, targetPort.
#[derive(Debug, Clone)]
pub struct Port {
    /// The port's name (also the EndpointSlice port's name).
    pub name: String,
    /// "TCP" or "UDP".
    pub protocol: &'static str,
    /// The Service port.
    pub port: u16,
    /// The endpoints' port.
    pub target_port: u16,
}

/// A TCP port.
pub fn tcp_port(name: &str, port: u16, target_port: u16) -> Port {
    Port {
        name: name.into(),
        protocol: "TCP",
        port,
        target_port,
    }
}

/// A UDP port.
pub fn udp_port(name: &str, port: u16, target_port: u16) -> Port {
    Port {
        name: name.into(),
        protocol: "UDP",
        port,
        target_port,
    }
}

/// A ClusterIP Service as the API server returns it (defaults filled in).
pub fn service(namespace: &str, name: &str, cluster_ip: &str, ports: &[Port]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({"name": p.name, "protocol": p.protocol, "port": p.port,
                   "targetPort": p.target_port})
        })
        .collect();
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace,
            "labels": {"app": name},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "ports": ports,
            "selector": {"app": name}, "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}
    })
}

/// Makes `svc` a LoadBalancer Service with externalTrafficPolicy Local, the given node ports
/// (one per Service port, in order) and healthCheckNodePort.
pub fn load_balancer_local(
    mut svc: Value,
    node_ports: &[u16],
    health_check_node_port: u16,
) -> Value {
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["spec"]["healthCheckNodePort"] = json!(health_check_node_port);
    svc["spec"]["allocateLoadBalancerNodePorts"] = json!(true);
    if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
        for (p, np) in ports.iter_mut().zip(node_ports) {
            p["nodePort"] = json!(np);
        }
    }
    svc
}

/// An endpoint of an EndpointSlice: a ready pod `pod` at `ip` on `node`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The pod's IP.
    pub ip: String,
    /// The node it runs on.
    pub node: String,
    /// conditions.ready (serving follows it; terminating is its negation's absence).
    pub ready: bool,
}

/// A ready endpoint.
pub fn ready(ip: impl ToString, node: &str) -> Endpoint {
    Endpoint {
        ip: ip.to_string(),
        node: node.into(),
        ready: true,
    }
}

/// The EndpointSlice `<service>-<suffix>` of a Service, with every port's target port, as the
/// EndpointSlice controller writes it (including last-change-trigger-time).
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    suffix: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": p.name, "protocol": p.protocol, "port": p.target_port}))
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({"addresses": [e.ip],
                   "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
                   "nodeName": e.node,
                   "targetRef": {"kind": "Pod", "namespace": namespace,
                                 "name": format!("{service}-{i}"),
                                 "uid": format!("00000000-0000-4000-9000-{i:012x}")}})
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": format!("{service}-{suffix}"), "namespace": namespace,
            "generateName": format!("{service}-"),
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": rfc3339(now)},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                "uid": "00000000-0000-4000-a000-000000000000", "controller": true,
                "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports
    })
}

/// A Node `name` with InternalIP `internal_ip` (if any), as the kubelet reports it.
pub fn node(name: &str, internal_ip: Option<&str>) -> Value {
    let mut addresses = vec![json!({"type": "Hostname", "address": name})];
    if let Some(ip) = internal_ip {
        addresses.insert(0, json!({"type": "InternalIP", "address": ip}));
    }
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {"addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}],
            "nodeInfo": {"kubeletVersion": "v1.35.0", "containerRuntimeVersion": "containerd://2.0",
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "Debian",
                "kernelVersion": "6.18", "kubeProxyVersion": "", "machineID": "m",
                "systemUUID": "s", "bootID": "b"}}
    })
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-01-01T00:00:00Z`).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the RFC 3339 formatter agrees with known dates.
    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    /// Test that label and field selectors follow the API's syntax.
    #[test]
    fn selectors_match_as_the_api_does() {
        let svc = service("default", "web", "10.96.0.1", &[tcp_port("http", 80, 8080)]);
        let sel = |labels: &str, fields: &str| Selector {
            labels: labels.into(),
            fields: fields.into(),
            namespace: None,
        };
        assert!(sel("!service.kubernetes.io/headless,!x", "").matches(&svc));
        assert!(sel("app=web", "metadata.name=web").matches(&svc));
        assert!(!sel("app!=web", "").matches(&svc));
        assert!(!sel("", "metadata.name=other").matches(&svc));
        assert!(!sel("!app", "").matches(&svc));
    }

    /// Test that percent-encoded query values decode.
    #[test]
    fn query_values_are_percent_decoded() {
        let q = parse_query("labelSelector=%21a%2C%21b&watch=true&x");
        assert_eq!(q["labelSelector"], "!a,!b");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "");
    }
}
