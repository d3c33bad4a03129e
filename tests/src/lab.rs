//! A one-node [`Lab`] for the agent tests: a client pod and backend pods with servers, a private
//! bpffs, the source the agents read (a manifests directory or a fake API server, holding the
//! Node object), the agents started so far through one [`AgentRun`], and the waits on
//! `lb-agent inspect` and on the agent's log that the tests share.
//!
//! Addresses: node `node-a` (pod CIDR 10.244.0.0/24), the client pod at 10.244.0.2, backend pod
//! `b<i>` at 10.244.0.(10 + i) with a TCP server on 8080 and a UDP server on 5353 that answer with
//! the pod's name; the `echo` Service at 10.96.0.10 (TCP 80 -> 8080, UDP 53 -> 5353).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{self, AgentRun, PodHook};
use crate::bpffs::BpffsGuard;
use crate::fakeapi::FakeApi;
use crate::inspect::{backend_addrs, frontend};
use crate::manifests::ManifestDir;
use crate::netns::NetNs;
use crate::objects::{self, node_yaml, Protocol, Service};
use crate::proc::Child;
use crate::scratch::TempDir;
use crate::topo::{Node, POD_IFACE_GLOB};
use crate::traffic::{Client, TcpServer, UdpServer};

/// The Node object every lab holds and every agent is started as.
pub const NODE: &str = "node-a";

/// The InternalIP of the Node object a lab with an API server holds.
pub const NODE_IP: &str = "172.18.0.10";

/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);

/// Port the backends' TCP servers listen on (the `http` target port).
pub const TCP_TARGET: u16 = 8080;

/// Port the backends' UDP servers listen on (the `dns` target port).
pub const UDP_TARGET: u16 = 5353;

/// How long any wait for the agent (start, sync, attach, a log line) may take.
pub const AGENT_WAIT: Duration = Duration::from_secs(15);

/// Backend pod `i` is named `b<i>` and has address 10.244.0.(10 + i).
pub fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 10 + i)
}

/// Addresses of backends `ids`.
pub fn backend_ips(ids: &[u8]) -> Vec<Ipv4Addr> {
    ids.iter().map(|i| backend_ip(*i)).collect()
}

/// Names of backends `ids`: `b<i>`.
pub fn backend_names(ids: &[u8]) -> Vec<String> {
    ids.iter().map(|i| format!("b{i}")).collect()
}

/// `ip:port` of each backend in `ids` on `port`.
pub fn backend_addrs_of(ids: &[u8], port: u16) -> Vec<SocketAddr> {
    ids.iter()
        .map(|i| SocketAddr::from((backend_ip(*i), port)))
        .collect()
}

/// The Service most tests use: `echo`, 10.96.0.10, `http` TCP 80 -> 8080, `dns` UDP 53 -> 5353.
pub fn echo_service() -> Service {
    Service::new("echo", [10, 96, 0, 10])
        .port("http", Protocol::Tcp, 80, TCP_TARGET)
        .port("dns", Protocol::Udp, 53, UDP_TARGET)
}

/// `echo` with a ready endpoint on each backend in `ids`, as one YAML file.
pub fn echo_yaml(ids: &[u8]) -> String {
    echo_service().with_endpoints(NODE, &backend_ips(ids))
}

/// Where a lab's agents read Services, EndpointSlices and the Node from.
enum Source {
    /// A manifests directory.
    Manifests(ManifestDir),
    /// A fake API server, and the directory holding its [`KUBECONFIG`].
    Api { api: FakeApi, dir: TempDir },
}

/// The kubeconfig's file name in [`Source::Api`]'s directory.
const KUBECONFIG: &str = "kubeconfig";

/// One node with a client pod, backend pods and their servers, a private bpffs, a source holding
/// the Node object, and the agents started so far. Everything is removed on drop, even on panic;
/// a panicking test also gets the agents' logs and an `inspect` dump on stderr.
pub struct Lab {
    /// Every agent started, oldest first (dropped first: stopped, logs printed on panic).
    pub agents: Vec<Child>,
    servers: Vec<(TcpServer, UdpServer)>,
    source: Source,
    /// The node and its pods.
    pub node: Node,
    /// The bpffs the agents pin into.
    pub bpffs: BpffsGuard,
    /// How [`Lab::start_agent`] runs the agent; change it before starting one.
    pub run: AgentRun,
}

impl Lab {
    /// A node with pod `client` and backends `b1..=b<backends>`, a manifests directory holding the
    /// Node object; agents read the directory and use pod hook `hook`. No agent yet.
    pub fn new(tag: &str, backends: u8, hook: PodHook) -> Lab {
        let mut lab = Lab::build(tag, backends, |_| {
            let manifests = ManifestDir::new(tag).expect("create the manifests dir");
            manifests
                .write("node.yaml", &node_yaml(NODE))
                .expect("write the Node");
            Source::Manifests(manifests)
        });
        lab.run.pod_hook(hook);
        lab
    }

    /// A node with pod `client` and backends `b1..=b<backends>`, a fake API server holding the
    /// Node object in the node's namespace, and a kubeconfig for it; agents watch the server with
    /// the agent's default pod hook. No agent yet.
    pub fn with_api(tag: &str, backends: u8) -> Lab {
        Lab::build(tag, backends, |node| {
            let api = FakeApi::start(node.ns()).expect("start the fake API server");
            api.apply(objects::node(NODE, Some(NODE_IP)))
                .expect("apply the Node");
            let dir = TempDir::new(tag).expect("create a directory for the kubeconfig");
            api.write_kubeconfig(&dir.path().join(KUBECONFIG))
                .expect("write the kubeconfig");
            Source::Api { api, dir }
        })
    }

    /// The node, its client pod, a bpffs, the source `source` makes, then the backends.
    fn build(tag: &str, backends: u8, source: impl FnOnce(&Node) -> Source) -> Lab {
        let mut node = Node::new(tag).expect("create the node");
        node.add_pod("client", CLIENT_IP)
            .expect("add the client pod");
        let source = source(&node);
        let bpffs = BpffsGuard::new(tag).expect("mount a bpffs");
        let mut run = AgentRun::new(NODE, bpffs.path());
        match &source {
            Source::Manifests(m) => run.manifests(m.path()),
            Source::Api { dir, .. } => run.kubeconfig(&dir.path().join(KUBECONFIG)),
        };
        run.pod_interfaces(POD_IFACE_GLOB)
            .flag("--min-sync-period", "10ms");
        let mut lab = Lab {
            agents: Vec::new(),
            servers: Vec::new(),
            source,
            node,
            bpffs,
            run,
        };
        for i in 1..=backends {
            lab.add_backend(i);
        }
        lab
    }

    /// [`Lab::new`], then `echo` on backends `endpoints` (file `echo.yaml`), an agent started and
    /// both `echo` frontends synced.
    pub fn with_echo(tag: &str, backends: u8, hook: PodHook, endpoints: &[u8]) -> Lab {
        let mut lab = Lab::new(tag, backends, hook);
        lab.manifests()
            .write("echo.yaml", &echo_yaml(endpoints))
            .expect("write echo.yaml");
        lab.start_agent();
        lab.wait_echo(endpoints);
        lab
    }

    /// The manifests directory. Panics in a lab made by [`Lab::with_api`].
    pub fn manifests(&self) -> &ManifestDir {
        match &self.source {
            Source::Manifests(m) => m,
            Source::Api { .. } => panic!("a lab with an API server has no manifests directory"),
        }
    }

    /// The fake API server. Panics in a lab made by [`Lab::new`].
    pub fn api(&self) -> &FakeApi {
        match &self.source {
            Source::Api { api, .. } => api,
            Source::Manifests(_) => panic!("a lab with a manifests directory has no API server"),
        }
    }

    /// Add backend pod `b<i>` at [`backend_ip`]`(i)` with its servers.
    pub fn add_backend(&mut self, i: u8) {
        let pod = self
            .node
            .add_pod(&format!("b{i}"), backend_ip(i))
            .expect("add a backend pod");
        let tcp = pod.tcp_server(TCP_TARGET).expect("start a TCP server");
        let udp = pod.udp_server(UDP_TARGET).expect("start a UDP server");
        self.servers.push((tcp, udp));
    }

    /// The client pod's namespace.
    pub fn client_ns(&self) -> &NetNs {
        self.node.pod("client").ns()
    }

    /// A client in the client pod, checking that backends see its real address.
    pub fn client(&self) -> Client<'_> {
        self.node.pod("client").client()
    }

    /// Start an agent as [`Lab::run`] says in the node's namespace and wait until it says
    /// "running".
    pub fn start_agent(&mut self) -> &mut Child {
        let name = format!("lb-agent-{}", self.agents.len() + 1);
        let child = self
            .run
            .clone()
            .name(&name)
            .start(self.node.ns(), AGENT_WAIT)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.agents.push(child);
        self.agents.last_mut().expect("just pushed")
    }

    /// The newest agent.
    pub fn agent(&mut self) -> &mut Child {
        self.agents.last_mut().expect("no agent started")
    }

    /// The newest agent's stderr (its tracing log), without colour codes.
    pub fn agent_log(&self) -> String {
        self.agents
            .last()
            .map(|a| strip_ansi(&a.stderr()))
            .unwrap_or_default()
    }

    /// Send SIGTERM to the newest agent and wait for it to exit; returns its status.
    pub fn stop_agent(&mut self) -> ExitStatus {
        let agent = self.agent();
        agent
            .signal(nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM the agent");
        agent
            .wait_timeout(AGENT_WAIT)
            .expect("wait for the agent")
            .unwrap_or_else(|| panic!("the agent did not exit within {AGENT_WAIT:?} of SIGTERM"))
    }

    /// `lb-agent inspect --json`.
    pub fn inspect(&self) -> Value {
        agent::inspect_json(self.node.ns(), self.bpffs.path()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `lb-agent cleanup`; its output.
    pub fn cleanup(&self) -> String {
        agent::cleanup(self.node.ns(), self.bpffs.path()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The backends of frontend `vip` (`protocol`) in the pinned maps, sorted; `None` without
    /// such a frontend.
    pub fn backends(&self, vip: SocketAddr, protocol: Protocol) -> Option<Vec<String>> {
        frontend(&self.inspect(), vip, protocol).map(backend_addrs)
    }

    /// Wait until `inspect --json` satisfies `ready` (described by `what`); returns that output.
    pub fn wait_inspect(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + AGENT_WAIT;
        loop {
            let v = self.inspect();
            if ready(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "not within {AGENT_WAIT:?}: {what}; last inspect:\n{v:#}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the pinned maps hold frontend `vip` (`protocol`) with exactly the backends
    /// `expected` (any order); returns the `inspect --json` output that showed it.
    pub fn wait_backends(
        &self,
        vip: SocketAddr,
        protocol: Protocol,
        expected: &[SocketAddr],
    ) -> Value {
        let mut want: Vec<String> = expected.iter().map(ToString::to_string).collect();
        want.sort();
        let what = format!("frontend {} {vip} with backends {want:?}", protocol.name());
        self.wait_inspect(&what, |v| {
            frontend(v, vip, protocol).is_some_and(|fe| backend_addrs(fe) == want)
        })
    }

    /// Wait until TCP frontend `vip` has exactly backends `ids` (on [`TCP_TARGET`]).
    pub fn wait_tcp_backends(&self, vip: SocketAddr, ids: &[u8]) -> Value {
        self.wait_backends(vip, Protocol::Tcp, &backend_addrs_of(ids, TCP_TARGET))
    }

    /// Wait until both `echo` frontends (TCP 80, UDP 53) have exactly backends `ids`.
    pub fn wait_echo(&self, ids: &[u8]) {
        let svc = echo_service();
        self.wait_tcp_backends(svc.vip(80), ids);
        self.wait_backends(
            svc.vip(53),
            Protocol::Udp,
            &backend_addrs_of(ids, UDP_TARGET),
        );
    }

    /// Wait until TCP frontend `vip` is gone from the pinned maps.
    pub fn wait_no_frontend(&self, vip: SocketAddr) {
        self.wait_inspect(&format!("no frontend TCP {vip}"), |v| {
            frontend(v, vip, Protocol::Tcp).is_none()
        });
    }

    /// Wait until the newest agent's log has `needle` at least `count` times; returns the log.
    pub fn wait_log_count(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + AGENT_WAIT;
        loop {
            let log = self.agent_log();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not log {needle:?} {count} times within {AGENT_WAIT:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// An HTTP GET of `path` from inside the node's namespace to `addr` (e.g. the agent's
    /// /healthz): status code, and headers and body.
    pub fn http_get(&self, addr: &str, path: &str) -> (u16, String) {
        let addr: SocketAddr = addr.parse().expect("an ip:port");
        self.node.ns().enter(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let code = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (code, text)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() && self.bpffs.path().join("maps").exists() {
            match agent::inspect_text(self.node.ns(), self.bpffs.path(), Some(20)) {
                Ok(out) => {
                    eprintln!("----- lb-agent inspect -----\n{out}----- end of inspect -----")
                }
                Err(e) => eprintln!("lb-agent inspect failed: {e:#}"),
            }
        }
    }
}

/// Remove ANSI colour sequences (ESC [ ... letter) from a log.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
