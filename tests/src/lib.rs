//! Test harness: network namespaces, topologies, real servers and clients, and the agent under
//! test with what it reads.
//!
//! Everything here is created inside namespaces the harness owns and removed by RAII guards, even
//! when a test panics: [`NetNs`] (a named network namespace), [`BpffsGuard`] (a private bpffs mount),
//! [`Child`] (a process in a namespace), [`Node`]/[`Pod`]/[`Cluster`] (routed topologies) and the
//! servers and clients of [`traffic`]. Names carry the pid and a counter, so tests run in parallel.
//! Nothing is added to the root network namespace and no traffic leaves the harness's namespaces.
//! Needs root.
//!
//! The agent: [`AgentRun`] is the one launcher of `lb-agent run` ([`agent`] also runs `inspect`
//! and `cleanup`); [`objects`] builds the Kubernetes objects it reads, from a
//! [`manifests::ManifestDir`] or a [`fakeapi::FakeApi`]; [`Lab`] puts a node, pods, servers, a
//! bpffs, a source and agents together for the one-node tests, [`ClusterLab`] one agent per node
//! of a [`Cluster`].
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use lb_tests::{tcp_spread, Node};
//! let mut node = Node::new("svc")?;
//! node.add_pod("client", [10, 244, 0, 2])?;
//! for i in 1..=3 {
//!     node.add_pod(&format!("b{i}"), [10, 244, 0, 10 + i])?;
//! }
//! let _servers = node.pods()[1..].iter().map(|p| p.tcp_server(8080)).collect::<anyhow::Result<Vec<_>>>()?;
//! // ... start the agent in node.ns() with a Service 10.96.0.10:80 -> b1..b3:8080 ...
//! let spread = tcp_spread(node.pod("client").ns(), "10.96.0.10:80".parse()?, 100);
//! assert_eq!((spread.ok(), spread.backends()), (100, vec!["b1", "b2", "b3"]), "{spread}");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod agent;
pub mod bpffs;
pub mod capture;
pub mod cluster_lab;
pub mod cmd;
pub mod fakeapi;
pub mod inspect;
pub mod kube_rules;
pub mod lab;
pub mod manifests;
pub mod names;
pub mod netns;
pub mod objects;
pub mod paths;
pub mod proc;
pub mod scratch;
pub mod stale;
pub mod topo;
pub mod traffic;

pub use agent::{AgentRun, PodHook};
pub use bpffs::BpffsGuard;
pub use cluster_lab::{Agents, ClusterLab, Devices, Wire};
pub use lab::Lab;
pub use netns::{LinkStats, NetNs};
pub use paths::{ebpf_object, find_agent_bin, workspace_root};
pub use proc::Child;
pub use scratch::TempDir;
pub use stale::cleanup_stale;
pub use topo::{Cluster, Node, Pod, PodNetwork, Shape, POD_IFACE_GLOB, SERVICE_CIDR};
pub use traffic::{
    check_reply, tcp_request, tcp_spread, udp_request, udp_spread, Client, Reply, Spread, TcpConn,
    TcpMode, TcpServer, UdpConn, UdpServer,
};
