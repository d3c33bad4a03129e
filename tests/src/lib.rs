//! Test harness: network namespaces, topologies, real servers and clients.
//!
//! Everything here is created inside namespaces the harness owns and removed by RAII guards, even
//! when a test panics: [`NetNs`] (a named network namespace), [`BpffsGuard`] (a private bpffs mount),
//! [`Child`] (a process in a namespace), [`Node`]/[`Pod`]/[`Cluster`] (routed topologies) and the
//! servers and clients of [`traffic`]. Names carry the pid and a counter, so tests run in parallel.
//! Nothing is added to the root network namespace and no traffic leaves the harness's namespaces.
//! Needs root.

#![warn(missing_docs)]

pub mod bpffs;
pub mod netns;
pub mod proc;
pub mod scratch;
pub mod topo;
pub mod traffic;

pub use bpffs::BpffsGuard;
pub use netns::{LinkStats, NetNs};
pub use proc::Child;
pub use scratch::{cleanup_stale, TempDir};
pub use topo::{Cluster, Node, Pod, POD_IFACE_GLOB, SERVICE_CIDR};
pub use traffic::{
    tcp_request, tcp_spread, udp_request, udp_spread, Client, Reply, Spread, TcpConn, TcpMode,
    TcpServer, UdpConn, UdpServer,
};
