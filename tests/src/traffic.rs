//! Real traffic: TCP and UDP servers that answer with their identity, and clients that record who
//! answered and from which address. Every socket operation has a timeout and every loop a bound.
//!
//! Wire format: the client sends one line `<msg>`; the server answers one line
//! `<identity> <client ip:port as the server saw it> <msg>` (one datagram for UDP). So a test learns
//! which backend answered, whether the backend saw the real client address, and (from the client
//! socket) which address the answer came from: for a Service it must be the VIP, not the backend.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::sys::time::TimeVal;

use crate::netns::NetNs;

/// Timeout of every single socket operation (connect, read, write) unless a [`Client`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time limit of a whole batch ([`Client::tcp_spread`], [`Client::udp_spread`]) unless told otherwise.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// Longest request line a server reads.
const MAX_LINE: u64 = 4096;

/// How often server threads look at their stop flag.
const TICK: Duration = Duration::from_millis(50);

/// One answer, with the addresses seen on both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The identity of the server that answered (a pod name for [`crate::Pod`] servers).
    pub identity: String,
    /// The client address as the server saw it (its `getpeername` / `recvfrom` address).
    pub client_seen: SocketAddr,
    /// The request message, echoed.
    pub echo: String,
    /// The address the client's socket saw the answer come from (TCP `getpeername`, UDP `recvfrom`).
    pub peer: SocketAddr,
    /// The client socket's own address.
    pub local: SocketAddr,
}

fn format_reply(identity: &str, client: SocketAddr, msg: &str) -> String {
    format!("{identity} {client} {msg}\n")
}

fn parse_reply(text: &str, peer: SocketAddr, local: SocketAddr) -> Result<Reply> {
    let text = text.trim_end_matches(['\r', '\n']);
    let mut parts = text.splitn(3, ' ');
    let (Some(identity), Some(client), echo) = (parts.next(), parts.next(), parts.next()) else {
        bail!("malformed reply {text:?} from {peer}");
    };
    let client_seen = client
        .parse()
        .with_context(|| format!("malformed client address in reply {text:?} from {peer}"))?;
    Ok(Reply {
        identity: identity.to_string(),
        client_seen,
        echo: echo.unwrap_or_default().to_string(),
        peer,
        local,
    })
}

fn check_msg(msg: &str) -> Result<()> {
    ensure!(
        !msg.contains(['\n', '\r']),
        "a request must be one line: {msg:?}"
    );
    ensure!(
        msg.len() < 1024,
        "a request must be shorter than 1024 bytes"
    );
    Ok(())
}

fn check_identity(identity: &str) -> Result<()> {
    ensure!(
        !identity.is_empty() && !identity.contains(char::is_whitespace),
        "a server identity must be one word: {identity:?}"
    );
    Ok(())
}

/// What a [`TcpServer`] does after answering a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// Answer every line until the client closes (serves one-shot and long-lived clients alike).
    KeepOpen,
    /// Answer the first line, then close (the server sends the first FIN).
    CloseAfterReply,
}

/// Open connections of a [`TcpServer`]: a clone of each socket (to shut it down) and its thread.
type Conns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    requests: AtomicUsize,
}

/// A TCP server running on threads of the test process, its socket in a namespace. Stops on drop
/// (closing every open connection).
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    identity: String,
    shared: Arc<Shared>,
    conns: Conns,
    accept: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listen on `addr` inside `ns` and answer with `identity` (one word). Port 0 picks a free port;
    /// see [`TcpServer::addr`].
    pub fn start(ns: &NetNs, addr: SocketAddr, identity: &str, mode: TcpMode) -> Result<TcpServer> {
        check_identity(identity)?;
        let listener = ns
            .enter(|| TcpListener::bind(addr))
            .with_context(|| format!("listen on {addr} in {}", ns.name()))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let conns = Conns::default();
        let accept = {
            let (shared, conns, identity) = (shared.clone(), conns.clone(), identity.to_string());
            thread::Builder::new()
                .name(format!("tcp-{identity}"))
                .spawn(move || accept_loop(listener, identity, mode, shared, conns))?
        };
        Ok(TcpServer {
            addr,
            identity: identity.to_string(),
            shared,
            conns,
            accept: Some(accept),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity it answers with.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Lines answered so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

fn accept_loop(
    listener: TcpListener,
    identity: String,
    mode: TcpMode,
    shared: Arc<Shared>,
    conns: Conns,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, 50u16) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => {
                thread::sleep(TICK);
                continue;
            }
        }
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(_) => {
                thread::sleep(TICK);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(handle_stream) = stream.try_clone() else {
            continue;
        };
        let (identity, shared2) = (identity.clone(), shared.clone());
        let spawned = thread::Builder::new()
            .name(format!("conn-{identity}"))
            .spawn(move || serve_tcp(stream, peer, &identity, mode, &shared2));
        let mut conns = conns.lock().unwrap();
        conns.retain(|(_, h)| !h.is_finished());
        if let Ok(h) = spawned {
            conns.push((handle_stream, h));
        }
    }
}

fn serve_tcp(stream: TcpStream, peer: SocketAddr, identity: &str, mode: TcpMode, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(DEFAULT_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    serve_lines(&mut reader, &mut writer, peer, identity, mode, shared);
    // The accept loop holds a clone of this socket: close explicitly, sending FIN now.
    let _ = writer.shutdown(Shutdown::Both);
}

fn serve_lines(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    peer: SocketAddr,
    identity: &str,
    mode: TcpMode,
    shared: &Shared,
) {
    loop {
        let mut line = String::new();
        match reader.take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let msg = line.trim_end_matches(['\r', '\n']);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if writer
            .write_all(format_reply(identity, peer, msg).as_bytes())
            .is_err()
        {
            return;
        }
        if mode == TcpMode::CloseAfterReply {
            return;
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for (stream, _) in &conns {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, h) in conns {
            let _ = h.join();
        }
    }
}

/// A UDP server on a thread of the test process, its socket in a namespace: answers each datagram
/// from the address it is bound to. Stops on drop.
#[derive(Debug)]
pub struct UdpServer {
    addr: SocketAddr,
    identity: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    /// Bind `addr` inside `ns` (use a specific address, so answers leave from it) and answer with
    /// `identity` (one word). Port 0 picks a free port; see [`UdpServer::addr`].
    pub fn start(ns: &NetNs, addr: SocketAddr, identity: &str) -> Result<UdpServer> {
        check_identity(identity)?;
        let sock = ns
            .enter(|| UdpSocket::bind(addr))
            .with_context(|| format!("bind udp {addr} in {}", ns.name()))?;
        let addr = sock.local_addr()?;
        sock.set_read_timeout(Some(TICK))?;
        sock.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let (shared, identity) = (shared.clone(), identity.to_string());
            thread::Builder::new()
                .name(format!("udp-{identity}"))
                .spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !shared.stop.load(Ordering::Relaxed) {
                        let (n, from) = match sock.recv_from(&mut buf) {
                            Ok(x) => x,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) =>
                            {
                                continue
                            }
                            Err(_) => {
                                thread::sleep(TICK);
                                continue;
                            }
                        };
                        shared.requests.fetch_add(1, Ordering::Relaxed);
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let msg = text.trim_end_matches(['\r', '\n']);
                        let _ = sock.send_to(format_reply(&identity, from, msg).as_bytes(), from);
                    }
                })?
        };
        Ok(UdpServer {
            addr,
            identity: identity.to_string(),
            shared,
            thread: Some(thread),
        })
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity it answers with.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Datagrams answered so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// Which backends answered a batch of requests, and what failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spread {
    /// Successful answers per server identity.
    pub counts: BTreeMap<String, usize>,
    /// Requests without a valid answer from the expected address.
    pub failures: usize,
    /// The first few failure messages (at most 20).
    pub errors: Vec<String>,
}

impl Spread {
    /// Number of successful answers.
    pub fn ok(&self) -> usize {
        self.counts.values().sum()
    }

    /// Answers from `identity`.
    pub fn count(&self, identity: &str) -> usize {
        self.counts.get(identity).copied().unwrap_or(0)
    }

    /// Identities that answered at least once, sorted.
    pub fn backends(&self) -> Vec<&str> {
        self.counts.keys().map(String::as_str).collect()
    }

    fn fail(&mut self, msg: String) {
        self.failures += 1;
        if self.errors.len() < 20 {
            self.errors.push(msg);
        }
    }

    fn record(&mut self, target: SocketAddr, reply: Result<Reply>) {
        match reply {
            Ok(r) if r.peer == target => *self.counts.entry(r.identity).or_default() += 1,
            Ok(r) => self.fail(format!(
                "answer from {} ({}), expected {target}",
                r.peer, r.identity
            )),
            Err(e) => self.fail(format!("{e:#}")),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}, {} failures", self.counts, self.failures)?;
        if !self.errors.is_empty() {
            write!(f, " (first: {:?})", self.errors)?;
        }
        Ok(())
    }
}

/// A client in a namespace, with its timeouts. Cheap to build: `Client::new(pod.ns())`.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    ns: &'a NetNs,
    timeout: Duration,
    budget: Duration,
    bind: Option<SocketAddr>,
}

impl<'a> Client<'a> {
    /// A client in `ns` with [`DEFAULT_TIMEOUT`] per operation and [`DEFAULT_BUDGET`] per batch.
    pub fn new(ns: &'a NetNs) -> Client<'a> {
        Client {
            ns,
            timeout: DEFAULT_TIMEOUT,
            budget: DEFAULT_BUDGET,
            bind: None,
        }
    }

    /// Set the timeout of each connect, read and write.
    pub fn timeout(mut self, timeout: Duration) -> Client<'a> {
        self.timeout = timeout;
        self
    }

    /// Set the time limit of a whole batch; requests not started in time count as failures.
    pub fn budget(mut self, budget: Duration) -> Client<'a> {
        self.budget = budget;
        self
    }

    /// Bind client sockets to this local address (e.g. a fixed source port) before connecting.
    pub fn bind(mut self, local: SocketAddr) -> Client<'a> {
        self.bind = Some(local);
        self
    }

    /// One request on a new TCP connection: connect, send `msg`, read the answer, close.
    pub fn tcp(&self, addr: SocketAddr, msg: &str) -> Result<Reply> {
        check_msg(msg)?;
        self.ns.enter(|| self.tcp_here(addr, msg))
    }

    /// One request in one UDP datagram from a new socket (so a new source port unless bound).
    pub fn udp(&self, addr: SocketAddr, msg: &str) -> Result<Reply> {
        check_msg(msg)?;
        self.ns.enter(|| self.udp_socket_here()?.request(addr, msg))
    }

    /// Open a TCP connection that can carry many requests.
    pub fn tcp_conn(&self, addr: SocketAddr) -> Result<TcpConn> {
        let stream = self.ns.enter(|| self.connect_here(addr))?;
        TcpConn::new(stream, self.timeout)
    }

    /// A UDP socket (one source port) that can send many requests, to one or more addresses.
    pub fn udp_socket(&self) -> Result<UdpConn> {
        self.ns.enter(|| self.udp_socket_here())
    }

    /// `n` requests, each on a new TCP connection, to `addr`; counts which server answered. An answer
    /// counts only if the connection's peer address is `addr`.
    pub fn tcp_spread(&self, addr: SocketAddr, n: usize) -> Spread {
        self.batch(addr, n, |i| self.tcp_here(addr, &format!("req-{i}")))
    }

    /// `n` requests, each from a new UDP socket (a new flow), to `addr`; counts which server answered.
    /// An answer counts only if it came from `addr`.
    pub fn udp_spread(&self, addr: SocketAddr, n: usize) -> Spread {
        self.batch(addr, n, |i| {
            self.udp_socket_here()?.request(addr, &format!("req-{i}"))
        })
    }

    fn batch(
        &self,
        addr: SocketAddr,
        n: usize,
        one: impl Fn(usize) -> Result<Reply> + Send + Sync,
    ) -> Spread {
        self.ns.enter(|| {
            let start = Instant::now();
            let mut spread = Spread::default();
            for i in 0..n {
                if start.elapsed() > self.budget {
                    for _ in i..n {
                        spread.fail(format!("budget of {:?} exhausted", self.budget));
                    }
                    break;
                }
                spread.record(addr, one(i));
            }
            spread
        })
    }

    fn tcp_here(&self, addr: SocketAddr, msg: &str) -> Result<Reply> {
        let stream = self.connect_here(addr)?;
        TcpConn::new(stream, self.timeout)?.request(msg)
    }

    fn connect_here(&self, addr: SocketAddr) -> Result<TcpStream> {
        let Some(local) = self.bind else {
            return TcpStream::connect_timeout(&addr, self.timeout)
                .with_context(|| format!("connect to {addr}"));
        };
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        let tv = TimeVal::new(
            self.timeout.as_secs() as _,
            self.timeout.subsec_micros() as _,
        );
        // Linux bounds a blocking connect by the send timeout.
        socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(local))
            .with_context(|| format!("bind {local}"))?;
        match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
            Ok(()) => Ok(TcpStream::from(fd)),
            Err(Errno::EINPROGRESS | Errno::EAGAIN) => bail!("connect {local} -> {addr} timed out"),
            Err(e) => Err(e).with_context(|| format!("connect {local} -> {addr}")),
        }
    }

    fn udp_socket_here(&self) -> Result<UdpConn> {
        let local = self
            .bind
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let sock = UdpSocket::bind(local).with_context(|| format!("bind udp {local}"))?;
        UdpConn::new(sock, self.timeout)
    }
}

/// A TCP connection (created in a namespace) carrying many request lines.
#[derive(Debug)]
pub struct TcpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
}

impl TcpConn {
    fn new(stream: TcpStream, timeout: Duration) -> Result<TcpConn> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let peer = stream.peer_addr().context("getpeername")?;
        let local = stream.local_addr()?;
        Ok(TcpConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            peer,
            local,
        })
    }

    /// Send one line and read the answer.
    pub fn request(&mut self, msg: &str) -> Result<Reply> {
        check_msg(msg)?;
        let (peer, local) = (self.peer, self.local);
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .with_context(|| format!("send to {peer}"))?;
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut line)
            .with_context(|| format!("read answer from {peer}"))?;
        if n == 0 || !line.ends_with('\n') {
            bail!("{peer} closed the connection without a full answer (got {line:?})");
        }
        parse_reply(&line, self.peer, self.local)
            .with_context(|| format!("connection {local} -> {peer}"))
    }

    /// The remote address as the socket sees it (getpeername): the VIP for a Service.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The local address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Whether the server closed the connection: true if a read sees end of stream within `timeout`
    /// (any data read meanwhile is discarded).
    pub fn closed_by_peer(&mut self, timeout: Duration) -> bool {
        let _ = self.writer.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

/// A UDP socket (created in a namespace) with a fixed source port, for many requests of one flow.
#[derive(Debug)]
pub struct UdpConn {
    sock: UdpSocket,
    local: SocketAddr,
    timeout: Duration,
}

impl UdpConn {
    fn new(sock: UdpSocket, timeout: Duration) -> Result<UdpConn> {
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let local = sock.local_addr()?;
        Ok(UdpConn {
            sock,
            local,
            timeout,
        })
    }

    /// Send `msg` to `addr` and wait for the next datagram (from any address: [`Reply::peer`] tells
    /// which; for a Service it must be the VIP).
    pub fn request(&self, addr: SocketAddr, msg: &str) -> Result<Reply> {
        check_msg(msg)?;
        self.sock
            .send_to(msg.as_bytes(), addr)
            .with_context(|| format!("send to {addr}"))?;
        let mut buf = vec![0u8; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                anyhow::anyhow!("no answer from {addr} within {:?}", self.timeout)
            }
            _ => anyhow::Error::new(e).context(format!("receive answer from {addr}")),
        })?;
        parse_reply(&String::from_utf8_lossy(&buf[..n]), from, self.local)
    }

    /// The local address (source port of every request).
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

/// One TCP request from namespace `ns` to `addr` on a new connection, with default timeouts.
pub fn tcp_request(ns: &NetNs, addr: SocketAddr, msg: &str) -> Result<Reply> {
    Client::new(ns).tcp(addr, msg)
}

/// One UDP request from namespace `ns` to `addr` from a new socket, with default timeouts.
pub fn udp_request(ns: &NetNs, addr: SocketAddr, msg: &str) -> Result<Reply> {
    Client::new(ns).udp(addr, msg)
}

/// `n` TCP requests on new connections from `ns` to `addr`: who answered, what failed.
pub fn tcp_spread(ns: &NetNs, addr: SocketAddr, n: usize) -> Spread {
    Client::new(ns).tcp_spread(addr, n)
}

/// `n` UDP requests from new sockets in `ns` to `addr`: who answered, what failed.
pub fn udp_spread(ns: &NetNs, addr: SocketAddr, n: usize) -> Spread {
    Client::new(ns).udp_spread(addr, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a formatted answer parses back into its parts.
    #[test]
    fn replies_round_trip() {
        let client: SocketAddr = "10.244.0.2:40000".parse().unwrap();
        let peer: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let r = parse_reply(&format_reply("b1", client, "hello world"), peer, client).unwrap();
        assert_eq!(
            (r.identity.as_str(), r.client_seen, r.echo.as_str()),
            ("b1", client, "hello world")
        );
        assert_eq!(r.peer, peer);
        assert!(parse_reply("garbage\n", peer, client).is_err());
    }

    /// Test that a spread counts only answers from the target address.
    #[test]
    fn spread_counts_only_answers_from_the_target() {
        let target: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let other: SocketAddr = "10.244.0.11:80".parse().unwrap();
        let mk = |peer| Reply {
            identity: "b1".into(),
            client_seen: target,
            echo: String::new(),
            peer,
            local: target,
        };
        let mut s = Spread::default();
        s.record(target, Ok(mk(target)));
        s.record(target, Ok(mk(other)));
        s.record(target, Err(anyhow::anyhow!("boom")));
        assert_eq!((s.ok(), s.count("b1"), s.failures), (1, 1, 2));
    }
}
