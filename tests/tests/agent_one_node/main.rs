//! The agent on one node with real traffic: a client pod and backend pods in their own network
//! namespaces, the real `lb-agent` binary programming real BPF maps from a manifests directory
//! (the [`lb_tests::Lab`]). Needs root. Run after `cargo build --release -p lb-agent` (or set
//! LB_AGENT_BIN).
//!
//! One test binary, a module per concern: [`traffic`] (spread, new pods, inspect), [`changes`]
//! (endpoints changing under traffic), [`no_endpoints`] (empty Services, bad manifests),
//! [`restart`] (agent restart and cleanup) and [`checksums`] (rewritten packets' checksums).

mod changes;
mod checksums;
mod no_endpoints;
mod restart;
mod traffic;

/// New flows per spread check over the three backends of a Service. Each flow picks a backend
/// with probability 1/3, so the chance that one of the three gets under 15% of 180 by luck is
/// at most 3 P(Bin(180, 1/3) <= 26) = 2.2e-8 (at 90 it was 1.3e-4, at 45 6.3e-3); over two
/// backends 3e-23.
const SPREAD_FLOWS: usize = 180;

/// The share of [`SPREAD_FLOWS`] every backend must get.
const MIN_SHARE: f64 = 0.15;
