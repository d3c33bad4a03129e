//! Plan builders shared by the tests of this module.

use super::Capacity;
use crate::plan::{Frontend as PlanFrontend, FrontendKind, OnEmpty, Plan, Protocol, Scope};

/// A ClusterIP frontend of `ns/svc`.
pub(super) fn fe(ip: &str, port: u16, protocol: Protocol, backends: &[&str]) -> PlanFrontend {
    PlanFrontend {
        service: "ns/svc".into(),
        port_name: String::new(),
        kind: FrontendKind::ClusterIP,
        ip: ip.parse().unwrap(),
        port,
        protocol,
        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        on_empty: backends.is_empty().then_some(OnEmpty::Reject),
        affinity_timeout_seconds: None,
        scope: Scope::Any,
        source_ranges: Vec::new(),
        local_backends: Vec::new(),
    }
}

pub(super) fn plan(frontends: Vec<PlanFrontend>) -> Plan {
    Plan { frontends }
}

pub(super) const CAP: Capacity = Capacity {
    frontends: 8,
    backends: 8,
};
