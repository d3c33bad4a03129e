//! Shared by the agent tests: the agent binary, a one-node [`Lab`] (client pod, backend pods with
//! servers, bpffs, manifests directory, agent processes), `inspect` and wait helpers, and a packet
//! [`Capture`] for checksum checks.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use lb_tests::manifests::{node_yaml, ManifestDir, Protocol, Service};
use lb_tests::{BpffsGuard, Child, Client, NetNs, Node, TcpServer, UdpServer, POD_IFACE_GLOB};
use serde_json::Value;

/// The Node object every lab writes and every agent is started as.
pub const NODE: &str = "node-a";

/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);

/// Port the backends' TCP servers listen on (the `http` target port).
pub const TCP_TARGET: u16 = 8080;

/// Port the backends' UDP servers listen on (the `dns` target port).
pub const UDP_TARGET: u16 = 5353;

/// How long any wait for the agent (start, sync, attach) may take.
pub const AGENT_WAIT: Duration = Duration::from_secs(10);

pub use lb_tests::agent_bin;

/// The program the agent attaches to pod interfaces (`--pod-hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tcx ingress.
    Tc,
    /// Native XDP on the host-side veth.
    Xdp,
}

impl Hook {
    /// The `--pod-hook` value.
    pub fn arg(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::Xdp => "xdp",
        }
    }
}

/// Backend pod `i` is named `b<i>` and has address 10.244.0.(10 + i).
pub fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 10 + i)
}

/// Addresses of backends `ids`.
pub fn backend_ips(ids: &[u8]) -> Vec<Ipv4Addr> {
    ids.iter().map(|i| backend_ip(*i)).collect()
}

/// The Service most tests use: `echo`, 10.96.0.10, `http` TCP 80 -> 8080, `dns` UDP 53 -> 5353.
pub fn echo_service() -> Service {
    Service::new("echo", [10, 96, 0, 10])
        .port("http", Protocol::Tcp, 80, TCP_TARGET)
        .port("dns", Protocol::Udp, 53, UDP_TARGET)
}

/// `echo` with a ready endpoint on each backend in `ids`, as one file (Service and EndpointSlice).
pub fn echo_yaml(ids: &[u8]) -> String {
    echo_service().with_endpoints(NODE, &backend_ips(ids))
}

/// Names of backends `ids`: `b<i>`.
pub fn backend_names(ids: &[u8]) -> Vec<String> {
    ids.iter().map(|i| format!("b{i}")).collect()
}

/// One node with a client pod and backend pods (each running a TCP server on 8080 and a UDP server
/// on 5353 that answer with the pod's name), a private bpffs, a manifests directory holding the
/// Node object, and the agents started so far. Everything is removed on drop, even on panic; a
/// panicking test also gets the agents' logs and an `inspect` dump on stderr.
pub struct Lab {
    /// Every agent started, oldest first (dropped first: stopped, logs printed on panic).
    pub agents: Vec<Child>,
    tcp: Vec<TcpServer>,
    udp: Vec<UdpServer>,
    /// The node and its pods.
    pub node: Node,
    /// The bpffs the agents pin into.
    pub bpffs: BpffsGuard,
    /// The directory the agents read.
    pub manifests: ManifestDir,
    /// The pod hook agents are started with.
    pub hook: Hook,
}

impl Lab {
    /// A node with pod `client` (10.244.0.2) and backends `b1..=b<backends>`; no agent yet.
    pub fn new(tag: &str, backends: u8, hook: Hook) -> Lab {
        let mut node = Node::new(tag).expect("create the node");
        node.add_pod("client", CLIENT_IP)
            .expect("add the client pod");
        let manifests = ManifestDir::new(tag).expect("create the manifests dir");
        manifests
            .write("node.yaml", &node_yaml(NODE))
            .expect("write the Node");
        let mut lab = Lab {
            agents: Vec::new(),
            tcp: Vec::new(),
            udp: Vec::new(),
            node,
            bpffs: BpffsGuard::new(tag).expect("mount a bpffs"),
            manifests,
            hook,
        };
        for i in 1..=backends {
            lab.add_backend(i);
        }
        lab
    }

    /// [`Lab::new`], then `echo` on backends `endpoints` (file `echo.yaml`), an agent started and
    /// both `echo` frontends synced.
    pub fn with_echo(tag: &str, backends: u8, hook: Hook, endpoints: &[u8]) -> Lab {
        let mut lab = Lab::new(tag, backends, hook);
        lab.manifests
            .write("echo.yaml", &echo_yaml(endpoints))
            .expect("write echo.yaml");
        lab.start_agent();
        lab.wait_echo(endpoints);
        lab
    }

    /// Wait until both `echo` frontends (TCP 80, UDP 53) have exactly backends `ids`.
    pub fn wait_echo(&self, ids: &[u8]) {
        let svc = echo_service();
        self.wait_backends(
            svc.vip(80),
            Protocol::Tcp,
            &backend_addrs_of(ids, TCP_TARGET),
        );
        self.wait_backends(
            svc.vip(53),
            Protocol::Udp,
            &backend_addrs_of(ids, UDP_TARGET),
        );
    }

    /// Add backend pod `b<i>` at [`backend_ip`]`(i)` with its servers.
    pub fn add_backend(&mut self, i: u8) {
        let name = format!("b{i}");
        let pod = self
            .node
            .add_pod(&name, backend_ip(i))
            .expect("add a backend pod");
        self.tcp
            .push(pod.tcp_server(TCP_TARGET).expect("start a TCP server"));
        self.udp
            .push(pod.udp_server(UDP_TARGET).expect("start a UDP server"));
    }

    /// The client pod's namespace.
    pub fn client_ns(&self) -> &NetNs {
        self.node.pod("client").ns()
    }

    /// A client in the client pod.
    pub fn client(&self) -> Client<'_> {
        Client::new(self.client_ns())
    }

    /// Start an agent in the node's namespace and wait until it says "running".
    pub fn start_agent(&mut self) -> &mut Child {
        let bpffs = self.bpffs.path().to_str().expect("utf-8 path").to_string();
        let manifests = self
            .manifests
            .path()
            .to_str()
            .expect("utf-8 path")
            .to_string();
        let mut cmd = Command::new(agent_bin());
        #[rustfmt::skip]
        cmd.args([
            "run", "--manifests", &manifests, "--node", NODE, "--pod-interfaces", POD_IFACE_GLOB,
            "--pod-hook", self.hook.arg(), "--bpffs", &bpffs, "--min-sync-period", "10ms",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
        let name = format!("lb-agent-{}", self.agents.len() + 1);
        let child = self
            .node
            .ns()
            .spawn(&name, &cmd)
            .expect("spawn the agent")
            .with_grace(Duration::from_secs(5));
        self.agents.push(child);
        let agent = self.agents.last_mut().expect("just pushed");
        agent
            .wait_for_output("running", AGENT_WAIT)
            .unwrap_or_else(|e| panic!("{e:#}"));
        agent
    }

    /// The newest agent.
    pub fn agent(&mut self) -> &mut Child {
        self.agents.last_mut().expect("no agent started")
    }

    /// The newest agent's stderr (its tracing log), without colour codes.
    pub fn agent_log(&self) -> String {
        strip_ansi(&self.agents.last().expect("no agent started").stderr())
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

    /// Run `lb-agent <args> --bpffs <bpffs>` in the node's namespace to completion; its stdout.
    pub fn agent_cmd(&self, args: &[&str]) -> String {
        let bin = agent_bin();
        let bpffs = self.bpffs.path().to_str().expect("utf-8 path");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--bpffs", bpffs]);
        self.node
            .ns()
            .run(bin.to_str().expect("utf-8 path"), &all)
            .unwrap_or_else(|e| panic!("lb-agent {all:?}: {e:#}"))
    }

    /// `lb-agent inspect --json`.
    pub fn inspect(&self) -> Value {
        let out = self.agent_cmd(&["inspect", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect --json: {e}: {out}"))
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
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() && self.bpffs.path().join("maps").exists() {
            let bin = agent_bin();
            let bpffs = self.bpffs.path().to_string_lossy().into_owned();
            match self
                .node
                .ns()
                .run(&bin.to_string_lossy(), &["inspect", "--bpffs", &bpffs])
            {
                Ok(out) => eprintln!(
                    "----- lb-agent inspect -----\n{}----- end of inspect -----",
                    shorten_conntrack(&out, 20)
                ),
                Err(e) => eprintln!("lb-agent inspect failed: {e:#}"),
            }
        }
    }
}

/// `inspect` text with at most `keep` conntrack lines.
fn shorten_conntrack(text: &str, keep: usize) -> String {
    let mut out = String::new();
    let mut in_ct = false;
    let mut shown = 0;
    for line in text.lines() {
        if line.starts_with("Conntrack") {
            in_ct = true;
        } else if !line.starts_with(' ') {
            in_ct = false;
        } else if in_ct {
            shown += 1;
            if shown > keep {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The frontend `vip` (`protocol`) in an `inspect --json` output.
pub fn frontend(inspect: &Value, vip: SocketAddr, protocol: Protocol) -> Option<&Value> {
    inspect["frontends"].as_array()?.iter().find(|f| {
        f["frontend"].as_str() == Some(&vip.to_string())
            && f["protocol"].as_str() == Some(protocol.name())
    })
}

/// Every frontend of an `inspect --json` output as `ip:port/PROTO -> [backends]`, sorted.
pub fn frontend_summary(inspect: &Value) -> Vec<String> {
    let mut v: Vec<String> = inspect["frontends"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    format!(
                        "{}/{} -> {:?}",
                        f["frontend"].as_str().unwrap_or("?"),
                        f["protocol"].as_str().unwrap_or("?"),
                        backend_addrs(f)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The backend addresses of an `inspect --json` frontend, sorted.
pub fn backend_addrs(frontend: &Value) -> Vec<String> {
    let mut v: Vec<String> = frontend["backends"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| b["addr"].as_str().unwrap_or("(missing)").to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A verdict counter (packets) from an `inspect --json` output.
pub fn verdict(inspect: &Value, reason: &str) -> u64 {
    inspect["verdicts"][reason]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no verdict {reason} in {inspect:#}"))
}

/// `ip:port` of each backend in `ids` on `port`.
pub fn backend_addrs_of(ids: &[u8], port: u16) -> Vec<SocketAddr> {
    ids.iter()
        .map(|i| SocketAddr::from((backend_ip(*i), port)))
        .collect()
}

/// Remove ANSI colour sequences (ESC [ ... letter) from a log.
pub fn strip_ansi(s: &str) -> String {
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

/// Who answered a batch of requests to a Service, with every check made on each answer.
#[derive(Debug, Default)]
pub struct Tally {
    /// Good answers per backend.
    pub counts: BTreeMap<String, usize>,
    /// Requests that failed or were answered wrongly, with why.
    pub errors: Vec<String>,
}

impl Tally {
    /// Number of good answers.
    pub fn ok(&self) -> usize {
        self.counts.values().sum()
    }

    /// Good answers from `backend`.
    pub fn count(&self, backend: &str) -> usize {
        self.counts.get(backend).copied().unwrap_or(0)
    }

    /// Record one answer to `vip` from a client at `client_ip`, checked with [`check_reply`].
    pub fn record(
        &mut self,
        vip: SocketAddr,
        client_ip: Ipv4Addr,
        msg: &str,
        reply: anyhow::Result<lb_tests::Reply>,
    ) {
        match check_reply(vip, client_ip, msg, reply) {
            Ok(who) => *self.counts.entry(who).or_default() += 1,
            Err(e) => self.errors.push(e),
        }
    }

    /// Assert that `n` requests all succeeded and every backend in `backends` got at least
    /// `min_share` of them (and nobody else answered).
    pub fn assert_spread<S: AsRef<str>>(&self, n: usize, backends: &[S], min_share: f64) {
        assert!(
            self.errors.is_empty(),
            "{} of {n} requests failed, first: {:?}",
            self.errors.len(),
            &self.errors[..self.errors.len().min(10)]
        );
        assert_eq!(self.ok(), n, "{self:?}");
        let who: Vec<&str> = self.counts.keys().map(String::as_str).collect();
        let want: Vec<&str> = backends.iter().map(AsRef::as_ref).collect();
        assert_eq!(who, want, "answered: {:?}", self.counts);
        for b in want {
            assert!(
                self.count(b) as f64 >= min_share * n as f64,
                "{b} got {} of {n} (< {:.0}%): {:?}",
                self.count(b),
                min_share * 100.0,
                self.counts
            );
        }
    }
}

/// Check one answer to request `msg` sent to `vip` by a client at `client_ip`: it came from the
/// VIP (not the backend), the backend saw the client's real address and port, and the message
/// came back. Returns the backend that answered, or what was wrong.
pub fn check_reply(
    vip: SocketAddr,
    client_ip: Ipv4Addr,
    msg: &str,
    reply: anyhow::Result<lb_tests::Reply>,
) -> Result<String, String> {
    match reply {
        Err(e) => Err(format!("{msg}: {e:#}")),
        Ok(r) if r.peer != vip => Err(format!("{msg}: answer from {} ({})", r.peer, r.identity)),
        // The client socket may be bound to 0.0.0.0 (UDP): compare the port only.
        Ok(r) if r.client_seen != SocketAddr::from((client_ip, r.local.port())) => Err(format!(
            "{msg}: {} saw the client as {}, the client is {client_ip} ({})",
            r.identity, r.client_seen, r.local
        )),
        Ok(r) if r.echo != msg => Err(format!("{msg}: echo {:?}", r.echo)),
        Ok(r) => Ok(r.identity),
    }
}

/// `n` TCP requests, each on a new connection, from `client` (at `client_ip`) to `vip`, checked.
pub fn tcp_tally(client: Client<'_>, client_ip: Ipv4Addr, vip: SocketAddr, n: usize) -> Tally {
    let mut t = Tally::default();
    for i in 0..n {
        let msg = format!("tcp-{i}");
        t.record(vip, client_ip, &msg, client.tcp(vip, &msg));
    }
    t
}

/// `n` UDP requests, each from a new socket (a new flow), from `client` (at `client_ip`) to
/// `vip`, checked.
pub fn udp_tally(client: Client<'_>, client_ip: Ipv4Addr, vip: SocketAddr, n: usize) -> Tally {
    let mut t = Tally::default();
    for i in 0..n {
        let msg = format!("udp-{i}");
        t.record(vip, client_ip, &msg, client.udp(vip, &msg));
    }
    t
}

/// One captured frame and what the kernel said about its checksum.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The Ethernet frame.
    pub data: Vec<u8>,
    /// `tpacket_auxdata.tp_status` (TP_STATUS_CSUMNOTREADY: CHECKSUM_PARTIAL).
    pub status: u32,
}

/// An AF_PACKET capture of the frames an interface receives (not those it sends), read on a
/// background thread until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Frame>>>,
}

impl Capture {
    /// Start capturing on `ifname` in `ns`.
    pub fn start(ns: &NetNs, ifname: &str) -> Capture {
        let ifindex = ns.ifindex(ifname).expect("interface index");
        let fd = ns
            .enter(|| packet_socket(ifindex))
            .expect("AF_PACKET socket");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || read_frames(fd, &stop))
        };
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop and return every frame received.
    pub fn stop(mut self) -> Vec<Frame> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn packet_socket(ifindex: u32) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscalls on a socket this function owns; every pointer is to a live local.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let rcvbuf: libc::c_int = 4 << 20;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        for (level, opt, ptr, len) in [
            (
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>(),
            ),
            (
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &rcvbuf as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>(),
            ),
            (
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>(),
            ),
        ] {
            if libc::setsockopt(fd.as_raw_fd(), level, opt, ptr, len as u32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(fd)
    }
}

fn read_frames(fd: OwnedFd, stop: &AtomicBool) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut cbuf = [0u64; 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recvmsg writes only into `buf`, `sll` and `cbuf`, all live and sized as told.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = &mut sll as *mut libc::sockaddr_ll as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&cbuf);
            let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                continue;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut status = 0;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const _);
                    status = aux.tp_status;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            frames.push(Frame {
                data: buf[..n as usize].to_vec(),
                status,
            });
        }
    }
    frames
}
