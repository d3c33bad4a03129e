//! Servers that answer with their identity: [`TcpServer`] (one thread per connection) and
//! [`UdpServer`], their sockets in a namespace, stopped on drop.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};

use super::wire::{check_identity, format_reply, DEFAULT_TIMEOUT, MAX_LINE};
use crate::netns::NetNs;

/// How often server threads look at their stop flag.
const TICK: Duration = Duration::from_millis(50);

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
