//! Real traffic: TCP and UDP servers that answer with their identity, and clients that record who
//! answered and from which address. Every socket operation has a timeout and every loop a bound.
//!
//! Wire format: the client sends one line `<msg>`; the server answers one line
//! `<identity> <client ip:port as the server saw it> <msg>` (one datagram for UDP). So a test learns
//! which backend answered, whether the backend saw the real client address, and (from the client
//! socket) which address the answer came from: for a Service it must be the VIP, not the backend.

mod client;
mod server;
mod spread;
mod wire;

pub use client::{
    tcp_request, tcp_spread, udp_request, udp_spread, Client, TcpConn, UdpConn, DEFAULT_BUDGET,
};
pub use server::{TcpMode, TcpServer, UdpServer};
pub use spread::{check_reply, Spread};
pub use wire::{Reply, DEFAULT_TIMEOUT};
