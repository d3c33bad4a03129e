//! Ids: the small integer each frontend and backend keeps for as long as it exists, and the
//! pools they come from (freed ids are reused only from the next sync on).

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::RangeInclusive,
};

use lb_common::maps::FrontendKey;

use super::Entries;

/// Identity of a backend in `LB_BACKENDS`: a backend address of one frontend. Ordered by
/// frontend id first, so one frontend's backends are a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct BackendIdent {
    pub(super) frontend_id: u32,
    /// Network order.
    pub(super) addr_be: u32,
    /// Network order.
    pub(super) port_be: u16,
    pub(super) proto: u8,
}

impl BackendIdent {
    /// Every identity under frontend `frontend_id`.
    pub(super) fn of_frontend(frontend_id: u32) -> RangeInclusive<BackendIdent> {
        let ident = |addr_be, port_be, proto| BackendIdent {
            frontend_id,
            addr_be,
            port_be,
            proto,
        };
        ident(0, 0, 0)..=ident(u32::MAX, u16::MAX, u8::MAX)
    }
}

/// A pool of small ids, `1..=capacity`, with deferred reuse.
#[derive(Clone, Debug)]
pub(super) struct IdPool {
    pub(super) capacity: u32,
    next: u32,
    free: BTreeSet<u32>,
    /// Freed in the current sync: reusable from the next one.
    released: Vec<u32>,
}

impl IdPool {
    fn new(capacity: u32) -> Self {
        Self {
            capacity,
            next: 1,
            free: BTreeSet::new(),
            released: Vec::new(),
        }
    }

    pub(super) fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next > self.capacity {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    pub(super) fn release(&mut self, id: u32) {
        self.released.push(id);
    }

    pub(super) fn end_sync(&mut self) {
        self.free.extend(self.released.drain(..));
    }

    /// Marks the ids in `used` as taken: everything below the largest is free.
    fn adopt(&mut self, used: impl IntoIterator<Item = u32>) {
        let used: BTreeSet<u32> = used.into_iter().collect();
        self.next = used.last().map_or(1, |m| m + 1);
        self.free = (1..self.next).filter(|i| !used.contains(i)).collect();
    }
}

/// Id assignments kept across syncs.
#[derive(Clone, Debug)]
pub struct Ids {
    /// Enforce loadBalancerSourceRanges on NodePort frontends too (not only LoadBalancer).
    pub nodeport_source_ranges: bool,
    pub(super) frontend_ids: BTreeMap<FrontendKey, u32>,
    pub(super) backend_ids: BTreeMap<BackendIdent, u32>,
    pub(super) frontends: IdPool,
    pub(super) backends: IdPool,
}

/// Capacities the ids must fit in (the maps' sizes).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub frontends: u32,
    pub backends: u32,
}

impl Ids {
    /// No ids assigned yet.
    pub fn new(cap: Capacity) -> Self {
        Self {
            nodeport_source_ranges: false,
            frontend_ids: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            frontends: IdPool::new(cap.frontends),
            backends: IdPool::new(cap.backends),
        }
    }

    /// The ids already in use in `current` (read back from pinned maps after a restart).
    pub fn adopt(cap: Capacity, current: &Entries) -> Self {
        let mut ids = Self::new(cap);
        ids.frontend_ids = current.frontends.iter().map(|(k, v)| (*k, v.id)).collect();
        ids.backend_ids = current
            .backends
            .iter()
            .map(|(id, b)| {
                let ident = BackendIdent {
                    frontend_id: b.frontend_id,
                    addr_be: b.addr_be,
                    port_be: b.port_be,
                    proto: b.proto,
                };
                (ident, *id)
            })
            .collect();
        ids.frontends.adopt(ids.frontend_ids.values().copied());
        ids.backends.adopt(ids.backend_ids.values().copied());
        ids
    }
}

#[cfg(test)]
mod tests {
    use lb_common::maps::PROTO_TCP;

    use super::*;
    use crate::{
        entries::{
            desired, diff, raw_port, raw_v4,
            testing::{fe, plan, CAP},
            Skipped,
        },
        plan::Protocol,
    };

    /// Test that ids stay with their frontend and backend across syncs, and that a freed id
    /// is reused only in a later sync.
    #[test]
    fn ids_are_stable_and_reused_only_after_a_sync() {
        let mut ids = Ids::new(CAP);
        let a = fe("10.96.0.1", 80, Protocol::Tcp, &["10.244.0.1:80"]);
        let b = fe("10.96.0.2", 80, Protocol::Tcp, &["10.244.0.2:80"]);
        let c = fe("10.96.0.3", 80, Protocol::Tcp, &["10.244.0.3:80"]);
        let (e1, _) = desired(&plan(vec![a.clone(), b.clone()]), &mut ids);
        // b goes, c comes in the same sync: c must not take b's id yet.
        let (e2, _) = desired(&plan(vec![a.clone(), c.clone()]), &mut ids);
        let id = |e: &Entries, ip: &str| {
            let k = FrontendKey {
                addr_be: raw_v4(ip.parse().unwrap()),
                port_be: raw_port(80),
                proto: PROTO_TCP,
                scope: 0,
            };
            e.frontends[&k].id
        };
        assert_eq!(id(&e1, "10.96.0.1"), id(&e2, "10.96.0.1"));
        assert_ne!(id(&e2, "10.96.0.3"), id(&e1, "10.96.0.2"));
        assert!(
            !e2.backends.contains_key(&2),
            "b's backend id 2 is not reused yet"
        );
        // Next sync: a new frontend may take the freed id.
        let d = fe("10.96.0.4", 80, Protocol::Tcp, &["10.244.0.4:80"]);
        let (e3, _) = desired(&plan(vec![a, c, d]), &mut ids);
        assert_eq!(id(&e3, "10.96.0.4"), id(&e1, "10.96.0.2"));
    }

    /// Test that ids are adopted from pinned entries after a restart: same ids, no diff.
    #[test]
    fn a_restarted_agent_adopts_the_pinned_ids() {
        let p = plan(vec![
            fe(
                "10.96.0.1",
                80,
                Protocol::Tcp,
                &["10.244.0.1:80", "10.244.0.2:80"],
            ),
            fe("10.96.0.2", 80, Protocol::Tcp, &["10.244.0.2:80"]),
        ]);
        let (pinned, _) = desired(&p, &mut Ids::new(CAP));
        let mut ids = Ids::adopt(CAP, &pinned);
        let (again, _) = desired(&p, &mut ids);
        assert!(diff(&pinned, &again).is_empty());
    }

    /// Test that running out of frontend ids is reported and the rest still programmed.
    #[test]
    fn capacity_exhaustion_is_reported() {
        let mut ids = Ids::new(Capacity {
            frontends: 1,
            backends: 8,
        });
        let (e, skipped) = desired(
            &plan(vec![
                fe("10.96.0.1", 80, Protocol::Tcp, &["10.244.0.1:80"]),
                fe("10.96.0.2", 80, Protocol::Tcp, &["10.244.0.1:80"]),
            ]),
            &mut ids,
        );
        assert_eq!(e.frontends.len(), 1);
        assert!(matches!(skipped[..], [Skipped::FrontendsFull { .. }]));
    }
}
