//! Clients in a namespace: one-off TCP and UDP requests, connections that carry many requests,
//! and batches of new flows counted into a [`Spread`].

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::sys::time::TimeVal;

use super::spread::{check_reply, Spread};
use super::wire::{check_msg, parse_reply, Reply, DEFAULT_TIMEOUT, MAX_LINE};
use crate::netns::NetNs;

/// Time limit of a whole batch ([`Client::tcp_spread`], [`Client::udp_spread`]) unless told otherwise.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// A client in a namespace, with its timeouts. Cheap to build: `Client::new(pod.ns())`, or
/// [`crate::Pod::client`] (which also checks that servers see the pod's real address).
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    ns: &'a NetNs,
    timeout: Duration,
    budget: Duration,
    bind: Option<SocketAddr>,
    seen_as: Option<Ipv4Addr>,
}

impl<'a> Client<'a> {
    /// A client in `ns` with [`DEFAULT_TIMEOUT`] per operation and [`DEFAULT_BUDGET`] per batch.
    pub fn new(ns: &'a NetNs) -> Client<'a> {
        Client {
            ns,
            timeout: DEFAULT_TIMEOUT,
            budget: DEFAULT_BUDGET,
            bind: None,
            seen_as: None,
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

    /// In batches, count an answer only if the server saw the client at `ip` (and the client
    /// socket's port): no source NAT on the way. See [`check_reply`].
    pub fn seen_as(mut self, ip: Ipv4Addr) -> Client<'a> {
        self.seen_as = Some(ip);
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

    /// `n` requests, each on a new TCP connection, to `addr`; counts which server answered. An
    /// answer counts only if it passes [`check_reply`]: from `addr`, the message echoed, and the
    /// client's address as set by [`Client::seen_as`].
    pub fn tcp_spread(&self, addr: SocketAddr, n: usize) -> Spread {
        self.batch(addr, n, |msg| self.tcp_here(addr, msg))
    }

    /// `n` requests, each from a new UDP socket (a new flow), to `addr`; counts which server
    /// answered, checked as in [`Client::tcp_spread`].
    pub fn udp_spread(&self, addr: SocketAddr, n: usize) -> Spread {
        self.batch(addr, n, |msg| self.udp_socket_here()?.request(addr, msg))
    }

    fn batch(
        &self,
        addr: SocketAddr,
        n: usize,
        one: impl Fn(&str) -> Result<Reply> + Send + Sync,
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
                let msg = format!("req-{i}");
                spread.record(check_reply(addr, self.seen_as, &msg, one(&msg)));
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
