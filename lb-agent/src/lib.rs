//! The node agent: reads Kubernetes objects, plans what kube-proxy would program, and keeps the
//! eBPF maps equal to that plan.
//!
//! Pipeline: `source` (manifests) or `kube_source` (API watch) -> `model::Snapshot` -> `plan` (pure, kube-proxy semantics)
//! -> `entries` (pure: desired map entries, diff) -> `dataplane` (aya: load, attach, pin, apply).
//! Beside them, `host` follows the node's network namespace (devices, NodePort addresses) and
//! `links` says which interface gets which program.

pub mod cli_plan;
pub mod dataplane;
pub mod entries;
pub mod host;
pub mod http;
pub mod inspect;
pub mod kube_source;
pub mod links;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod run;
pub mod source;
