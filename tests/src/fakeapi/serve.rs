//! The fake API server's HTTP side: one request per connection, discovery, lists with pages and
//! selectors, and watch streams of chunked JSON events.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::state::{Event, Resource, Shared};

/// How often an idle watch gets a BOOKMARK (when asked for them).
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

pub(super) fn accept_loop(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{service, tcp_port};

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
