//! The whole desired entries for a plan: recomputed from scratch ([`desired`],
//! [`Desired::rebuild`]) or, Service by Service, only for the frontend keys a change touches
//! ([`Desired::update`]), with the same result.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::maps::{FrontendKey, SCOPE_ANY, SCOPE_PODS};

use super::{
    diff::diff,
    frontend::{build, frontend_key, Built, MaglevCache, MaglevTables},
    ids::{BackendIdent, Ids},
    Entries, MapOp, Skipped,
};
use crate::plan::{self, Plan};

/// The map entries for `plan`, assigning ids through `ids`. Frontends the dataplane cannot
/// serve yet are returned in the second value and get no entries. Two plan frontends with one
/// key: the first one (in plan order) that can be programmed wins.
pub fn desired(plan: &Plan, ids: &mut Ids) -> (Entries, Vec<Skipped>) {
    let mut model = Desired::default();
    let entries = model.rebuild(plan, ids);
    (entries, model.skipped())
}

/// Who asked for a frontend: a Service and the index among that Service's plan frontends.
/// Ordered as the plan is (frontends sorted by Service first), so the smallest claimant of a
/// key is the first one in the plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claimant {
    service: String,
    index: usize,
}

/// One plan frontend, and the key it asks for (or why it cannot have one).
#[derive(Clone, Debug)]
struct Claim {
    frontend: plan::Frontend,
    key: Result<FrontendKey, Skipped>,
}

/// The desired content of the service maps, kept per frontend key so that a change to a few
/// Services is recomputed, and diffed, in proportion to their entries ([`Desired::update`]);
/// [`Desired::rebuild`] recomputes everything from a whole plan (start, resync, Node changes).
/// Both give the same entries, ids and skipped frontends as [`desired`] for the same plan.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Every plan frontend by Service, in the plan's order.
    services: BTreeMap<String, Vec<Claim>>,
    /// The claimants of each key, first (winning) one first.
    claims: BTreeMap<FrontendKey, BTreeSet<Claimant>>,
    /// The entries of each key that has them.
    built: BTreeMap<FrontendKey, Built>,
    /// Why claimants got no entries.
    skipped: BTreeMap<Claimant, Skipped>,
    /// Keys a claimant of which ran out of ids: tried again at every sync, as a rebuild would.
    retry: BTreeSet<FrontendKey>,
    maglev: MaglevCache,
}

impl Desired {
    /// Recomputes everything from `plan` and returns the whole desired entries. Ids of
    /// frontends and backends not in `plan` (including ones adopted from pinned maps) are
    /// released.
    pub fn rebuild(&mut self, plan: &Plan, ids: &mut Ids) -> Entries {
        let warm = std::mem::take(&mut self.maglev.tables);
        *self = Desired::default();
        let services: BTreeSet<String> = plan.frontends.iter().map(|f| f.service.clone()).collect();
        self.set_services(&services, &plan.frontends);
        let keys: BTreeSet<FrontendKey> = self.claims.keys().copied().collect();
        self.build_keys(&keys, ids, &warm);
        // Drop every id nothing uses (a rebuild also forgets ids adopted for stale entries).
        let built = &self.built;
        ids.frontend_ids.retain(|k, id| {
            let keep = built.contains_key(k);
            if !keep {
                ids.frontends.release(*id);
            }
            keep
        });
        let live: BTreeSet<u32> = built
            .values()
            .flat_map(|b| b.backends.iter().map(|(id, _)| *id))
            .collect();
        ids.backend_ids.retain(|_, id| {
            let keep = live.contains(id);
            if !keep {
                ids.backends.release(*id);
            }
            keep
        });
        ids.frontends.end_sync();
        ids.backends.end_sync();
        self.entries()
    }

    /// Replaces the frontends of `services` with `frontends` (theirs alone, in plan order;
    /// a Service without frontends is gone) and returns the ordered writes from the previous
    /// desired entries to the new ones: what [`diff`] would return for the whole maps, computed
    /// from the touched keys alone. Valid while the kernel holds the previous desired entries.
    pub fn update(
        &mut self,
        services: &BTreeSet<String>,
        frontends: &[plan::Frontend],
        ids: &mut Ids,
    ) -> Vec<MapOp> {
        let mut services = services.clone();
        services.extend(frontends.iter().map(|f| f.service.clone()));
        let mut keys = self.set_services(&services, frontends);
        keys.extend(self.retry.iter().copied());
        let mut before = Entries::default();
        for k in &keys {
            if let Some(b) = self.built.get(k) {
                b.write_to(*k, &mut before);
            }
        }
        self.build_keys(&keys, ids, &HashMap::new());
        ids.frontends.end_sync();
        ids.backends.end_sync();
        let mut after = Entries::default();
        for k in &keys {
            if let Some(b) = self.built.get(k) {
                b.write_to(*k, &mut after);
            }
        }
        diff(&before, &after)
    }

    /// The whole desired entries.
    pub fn entries(&self) -> Entries {
        let mut out = Entries::default();
        for (k, b) in &self.built {
            b.write_to(*k, &mut out);
        }
        out
    }

    /// The plan frontends that get no entries, and why, in plan order.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skipped.values().cloned().collect()
    }

    /// Replaces the claims of `services` with `frontends`; returns the keys they claimed
    /// before or claim now.
    fn set_services(
        &mut self,
        services: &BTreeSet<String>,
        frontends: &[plan::Frontend],
    ) -> BTreeSet<FrontendKey> {
        let mut keys = BTreeSet::new();
        for s in services {
            for (i, c) in self.services.remove(s).into_iter().flatten().enumerate() {
                let who = Claimant {
                    service: s.clone(),
                    index: i,
                };
                self.skipped.remove(&who);
                if let Ok(k) = c.key {
                    keys.insert(k);
                    if let Some(set) = self.claims.get_mut(&k) {
                        set.remove(&who);
                        if set.is_empty() {
                            self.claims.remove(&k);
                        }
                    }
                }
            }
        }
        for fe in frontends {
            let list = self.services.entry(fe.service.clone()).or_default();
            let who = Claimant {
                service: fe.service.clone(),
                index: list.len(),
            };
            let key = frontend_key(fe);
            match &key {
                Ok(k) => {
                    keys.insert(*k);
                    self.claims.entry(*k).or_default().insert(who);
                }
                Err(s) => {
                    self.skipped.insert(who, s.clone());
                }
            }
            list.push(Claim {
                frontend: fe.clone(),
                key,
            });
        }
        keys
    }

    /// Rebuilds the entries of `keys`: their claimants are tried in plan order, the first one
    /// that gets ids wins each key, later ones are not programmed. Then releases the ids the
    /// keys no longer use (reusable after `end_sync`).
    fn build_keys(&mut self, keys: &BTreeSet<FrontendKey>, ids: &mut Ids, warm: &MaglevTables) {
        let mut old = Vec::new();
        let mut order: Vec<(&Claimant, FrontendKey)> = Vec::new();
        for k in keys {
            old.extend(self.built.remove(k));
            self.retry.remove(k);
            for who in self.claims.get(k).into_iter().flatten() {
                order.push((who, *k));
            }
        }
        order.sort();
        let mut skipped = Vec::new();
        let mut unskipped = Vec::new();
        for (who, k) in order {
            if self.built.contains_key(&k) {
                unskipped.push(who.clone());
                continue;
            }
            let fe = &self.services[&who.service][who.index].frontend;
            // Every Service that claims a pods-scope key claims its any-scope sibling too (the
            // plan emits them in pairs), so a change to the one rebuilds the other.
            let pod_scope = k.scope == SCOPE_ANY
                && self.claims.contains_key(&FrontendKey {
                    scope: SCOPE_PODS,
                    ..k
                });
            match build(fe, k, pod_scope, ids, &mut self.maglev, warm) {
                Ok(b) => {
                    unskipped.push(who.clone());
                    self.built.insert(k, b);
                }
                Err(s) => {
                    if matches!(
                        s,
                        Skipped::FrontendsFull { .. } | Skipped::BackendsFull { .. }
                    ) {
                        self.retry.insert(k);
                    }
                    skipped.push((who.clone(), s));
                }
            }
        }
        for who in unskipped {
            self.skipped.remove(&who);
        }
        self.skipped.extend(skipped);
        for b in old {
            if let Some(m) = &b.maglev {
                self.maglev.release(&m.backends);
            }
        }
        // Ids the keys no longer use: a frontend id with its key, backend ids by frontend id
        // (a backend's identity starts with its frontend's id).
        for k in keys {
            let Some(fid) = ids.frontend_ids.get(k).copied() else {
                continue;
            };
            let live: BTreeSet<u32> = match self.built.get(k) {
                Some(b) => b.backend_ids.iter().copied().collect(),
                None => {
                    ids.frontend_ids.remove(k);
                    ids.frontends.release(fid);
                    BTreeSet::new()
                }
            };
            let stale: Vec<BackendIdent> = ids
                .backend_ids
                .range(BackendIdent::of_frontend(fid))
                .filter(|(_, id)| !live.contains(id))
                .map(|(ident, _)| *ident)
                .collect();
            for ident in stale {
                if let Some(id) = ids.backend_ids.remove(&ident) {
                    ids.backends.release(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        entries::{
            dump,
            testing::{fe, plan, CAP},
        },
        plan::Protocol,
    };

    /// Test that a plan becomes the expected entries (golden dump).
    #[test]
    fn plan_becomes_frontends_slots_and_backends() {
        let mut ids = Ids::new(CAP);
        let (e, skipped) = desired(
            &plan(vec![
                fe(
                    "10.96.0.10",
                    80,
                    Protocol::Tcp,
                    &["10.244.0.11:8080", "10.244.0.12:8080"],
                ),
                fe("10.96.0.10", 53, Protocol::Udp, &["10.244.0.11:53"]),
                fe("10.96.0.11", 80, Protocol::Tcp, &[]),
            ]),
            &mut ids,
        );
        assert!(skipped.is_empty());
        pretty_assertions::assert_eq!(
            dump(&e),
            "\
frontend 10.96.0.10:53/17 id=2 slots=1 flags=0 affinity=0
frontend 10.96.0.10:80/6 id=1 slots=2 flags=0 affinity=0
frontend 10.96.0.11:80/6 id=3 slots=0 flags=1 affinity=0
slot 1/0 -> 1
slot 1/1 -> 2
slot 2/0 -> 3
backend 1 10.244.0.11:8080/6
backend 2 10.244.0.12:8080/6
backend 3 10.244.0.11:53/17
"
        );
    }
}

#[cfg(test)]
mod incremental_tests {
    use std::net::SocketAddr;

    use lb_common::maps::SlotKey;

    use super::*;
    use crate::{
        entries::{apply_in_memory, Capacity},
        plan::{FrontendKind, OnEmpty, Protocol, Scope, SourceRange},
    };

    /// A small deterministic generator (64-bit LCG).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Random frontends for `service`, from small pools so that keys collide across Services
    /// and backend sets repeat; some IPv6 and SCTP, some NodePorts on every node address, and
    /// pods-scope twins of external frontends (as the plan emits them, in pairs).
    fn random_frontends(rng: &mut Rng, service: &str) -> Vec<plan::Frontend> {
        let mut out = random_any_scope(rng, service);
        let mut twins = Vec::new();
        for fe in &out {
            if fe.kind != FrontendKind::ClusterIP && rng.below(3) == 0 {
                let mut twin = fe.clone();
                twin.scope = Scope::Pods;
                twin.backends = vec!["10.244.0.9:8080".parse().unwrap()];
                twin.on_empty = None;
                twins.push(twin);
            }
        }
        out.extend(twins);
        out
    }

    /// The any-scope part of [`random_frontends`].
    fn random_any_scope(rng: &mut Rng, service: &str) -> Vec<plan::Frontend> {
        let kinds = [
            FrontendKind::ClusterIP,
            FrontendKind::NodePort,
            FrontendKind::LoadBalancer,
        ];
        (0..rng.below(4))
            .map(|_| {
                let ip = match rng.below(10) {
                    0 => "fd00::1".to_string(),
                    1 => "0.0.0.0".to_string(),
                    n => format!("10.96.0.{}", n % 4 + 1),
                };
                let protocol = match rng.below(8) {
                    0 => Protocol::Sctp,
                    1 | 2 => Protocol::Udp,
                    _ => Protocol::Tcp,
                };
                let mut backends: Vec<SocketAddr> = (0..rng.below(4))
                    .map(|_| {
                        format!("10.244.0.{}:8080", rng.below(5) + 1)
                            .parse()
                            .unwrap()
                    })
                    .collect();
                plan::sort_backends(&mut backends);
                let source_ranges = match rng.below(4) {
                    0 => vec![SourceRange::parse("192.168.7.0/24").unwrap()],
                    _ => Vec::new(),
                };
                let local_backends = backends
                    .iter()
                    .filter(|_| rng.below(2) == 0)
                    .copied()
                    .collect();
                plan::Frontend {
                    service: service.into(),
                    port_name: String::new(),
                    kind: kinds[rng.below(3) as usize],
                    ip: ip.parse().unwrap(),
                    port: [80, 443][rng.below(2) as usize],
                    protocol,
                    on_empty: backends.is_empty().then_some(OnEmpty::Reject),
                    backends,
                    affinity_timeout_seconds: (rng.below(4) == 0).then_some(10_800),
                    scope: Scope::Any,
                    source_ranges,
                    local_backends,
                }
            })
            .collect()
    }

    /// Every frontend points at slots and backends that exist.
    fn assert_consistent(e: &Entries, what: &str) {
        for f in e.frontends.values() {
            for slot in 0..f.slot_count {
                let s = e.slots.get(&SlotKey {
                    frontend_id: f.id,
                    slot,
                });
                let s = s.unwrap_or_else(|| panic!("{what}: slot {slot} of {} missing", f.id));
                assert!(e.backends.contains_key(&s.backend_id), "{what}");
            }
        }
    }

    /// Test that updating only the changed Services gives, at every step of a random sequence
    /// of changes (fixed seed), exactly what recomputing everything gives: the same entries,
    /// ids, skipped frontends and writes (so the same order), with every prefix of the writes
    /// consistent, no id reused within a sync, and a restart (adopting the maps) writing
    /// nothing. Roomy and tight capacities (ids running out and coming back).
    #[test]
    fn incremental_updates_equal_full_recomputation() {
        for (seed, cap) in [
            (1u64, CAP_ROOMY),
            (2, CAP_ROOMY),
            (3, CAP_TIGHT),
            (4, CAP_TIGHT),
        ] {
            let mut rng = Rng(seed);
            let services: Vec<String> = (0..8).map(|i| format!("ns{}/svc", i % 3 + i)).collect();
            let mut by_service: BTreeMap<String, Vec<plan::Frontend>> = BTreeMap::new();
            let mut ids_inc = Ids::new(cap);
            let mut ids_full = Ids::new(cap);
            ids_inc.nodeport_source_ranges = seed % 2 == 0;
            ids_full.nodeport_source_ranges = seed % 2 == 0;
            let mut model = Desired::default();
            let mut current = model.rebuild(&Plan::default(), &mut ids_inc);
            for step in 0..300 {
                let what = format!("seed {seed} step {step}");
                let mut changed = BTreeSet::new();
                for _ in 0..rng.below(3) + 1 {
                    let s = services[rng.below(services.len() as u64) as usize].clone();
                    let fes = match rng.below(5) {
                        0 => Vec::new(),
                        _ => random_frontends(&mut rng, &s),
                    };
                    by_service.insert(s.clone(), fes);
                    changed.insert(s);
                }
                let mut plan = Plan {
                    frontends: by_service.values().flatten().cloned().collect(),
                };
                plan.normalize();
                let new: Vec<plan::Frontend> = plan
                    .frontends
                    .iter()
                    .filter(|f| changed.contains(&f.service))
                    .cloned()
                    .collect();

                let ops = model.update(&changed, &new, &mut ids_inc);
                let (want, skipped) = desired(&plan, &mut ids_full);
                assert_eq!(ops, diff(&current, &want), "{what}");
                // Every prefix of a short list; where the kind of write changes in a long one.
                let mut e = current.clone();
                for n in 0..=ops.len() {
                    let boundary = n == 0
                        || n == ops.len()
                        || std::mem::discriminant(&ops[n - 1]) != std::mem::discriminant(&ops[n]);
                    if ops.len() <= 64 || boundary {
                        assert_consistent(&e, &format!("{what} after {n} writes"));
                    }
                    if n < ops.len() {
                        apply_in_memory(&mut e, &ops[n..n + 1]);
                    }
                }
                for op in &ops {
                    match op {
                        MapOp::PutFrontend(k, f) => assert!(
                            current
                                .frontends
                                .iter()
                                .all(|(k2, f2)| k2 == k || f2.id != f.id),
                            "{what}: frontend id {} reused in its sync",
                            f.id
                        ),
                        MapOp::PutBackend(id, b) => {
                            if let Some(old) = current.backends.get(id) {
                                assert_eq!(
                                    (old.frontend_id, old.addr_be, old.port_be, old.proto),
                                    (b.frontend_id, b.addr_be, b.port_be, b.proto),
                                    "{what}: backend id {id} reused in its sync"
                                );
                            }
                        }
                        _ => {}
                    }
                }
                apply_in_memory(&mut current, &ops);
                assert_eq!(current, want, "{what}");
                assert_eq!(model.entries(), want, "{what}");
                assert_eq!(model.skipped(), skipped, "{what}");
                assert_eq!(ids_inc.frontend_ids, ids_full.frontend_ids, "{what}");
                assert_eq!(ids_inc.backend_ids, ids_full.backend_ids, "{what}");

                if step % 37 == 36 {
                    // A restart: the new agent adopts the maps and rebuilds from the plan. It
                    // writes nothing, unless a frontend is waiting for ids freed by the last
                    // sync: then it writes what the next sync would have.
                    ids_inc = Ids::adopt(cap, &current);
                    ids_inc.nodeport_source_ranges = seed % 2 == 0;
                    model = Desired::default();
                    let again = model.rebuild(&plan, &mut ids_inc);
                    let (next, _) = desired(&plan, &mut ids_full);
                    assert_eq!(again, next, "{what}: restart");
                    let waiting = skipped.iter().any(|s| {
                        matches!(
                            s,
                            Skipped::FrontendsFull { .. } | Skipped::BackendsFull { .. }
                        )
                    });
                    assert!(waiting || again == current, "{what}: restart wrote");
                    current = again;
                }
            }
        }
    }

    const CAP_ROOMY: Capacity = Capacity {
        frontends: 64,
        backends: 64,
    };
    const CAP_TIGHT: Capacity = Capacity {
        frontends: 6,
        backends: 9,
    };

    fn fe(service: &str, kind: FrontendKind, ip: &str, backends: &[&str]) -> plan::Frontend {
        plan::Frontend {
            service: service.into(),
            port_name: String::new(),
            kind,
            ip: ip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            on_empty: backends.is_empty().then_some(OnEmpty::Reject),
            affinity_timeout_seconds: None,
            scope: Scope::Any,
            source_ranges: Vec::new(),
            local_backends: Vec::new(),
        }
    }

    fn set(services: &[&str]) -> BTreeSet<String> {
        services.iter().map(|s| s.to_string()).collect()
    }

    /// Test that of two Services with one frontend key the first (in plan order) wins, that
    /// changing the second writes nothing, and that the second takes over, under the same
    /// frontend id, when the first goes, and yields when it comes back.
    #[test]
    fn a_duplicate_key_goes_to_the_first_service_also_incrementally() {
        let mut ids = Ids::new(CAP_ROOMY);
        let a = fe(
            "a/x",
            FrontendKind::ClusterIP,
            "10.96.0.1",
            &["10.244.0.1:80"],
        );
        let b = fe(
            "b/y",
            FrontendKind::ClusterIP,
            "10.96.0.1",
            &["10.244.0.2:80"],
        );
        let mut model = Desired::default();
        let mut current = model.rebuild(
            &Plan {
                frontends: vec![a.clone(), b.clone()],
            },
            &mut ids,
        );
        let backend_addrs = |e: &Entries| -> Vec<u32> {
            e.backends
                .values()
                .map(|b| u32::from_be(b.addr_be) & 0xff)
                .collect()
        };
        assert_eq!(backend_addrs(&current), [1]);
        let fid = current.frontends.values().next().unwrap().id;
        let b2 = fe(
            "b/y",
            FrontendKind::ClusterIP,
            "10.96.0.1",
            &["10.244.0.3:80"],
        );
        assert!(model.update(&set(&["b/y"]), &[b2], &mut ids).is_empty());
        let ops = model.update(&set(&["a/x"]), &[], &mut ids);
        apply_in_memory(&mut current, &ops);
        assert_eq!(backend_addrs(&current), [3]);
        assert_eq!(current.frontends.values().next().unwrap().id, fid);
        let ops = model.update(&set(&["a/x"]), &[a], &mut ids);
        apply_in_memory(&mut current, &ops);
        assert_eq!(backend_addrs(&current), [1]);
        assert_eq!(current, model.entries());
    }

    /// Test that a change to one of many Services writes only that Service's entries, and
    /// that frontends with one backend list share one Maglev table, dropped with its last user.
    #[test]
    fn an_update_touches_only_the_changed_service_and_shares_maglev_tables() {
        let mut ids = Ids::new(Capacity {
            frontends: 1024,
            backends: 4096,
        });
        let mut frontends = Vec::new();
        for i in 0..200 {
            let s = format!("ns/svc-{i:03}");
            let b = format!("10.244.{}.{}:80", i / 200, i % 200 + 1);
            let ip = format!("10.96.{}.{}", i / 200, i % 200 + 1);
            frontends.push(fe(&s, FrontendKind::ClusterIP, &ip, &[&b]));
            let np = format!("172.18.{}.{}", i / 200, i % 200 + 1);
            frontends.push(fe(&s, FrontendKind::NodePort, &np, &[&b]));
            frontends.push(fe(
                &s,
                FrontendKind::LoadBalancer,
                &format!("203.0.{}.{}", i / 200, i % 200 + 1),
                &[&b],
            ));
        }
        let mut model = Desired::default();
        let mut current = model.rebuild(&Plan { frontends }, &mut ids);
        assert_eq!(model.maglev.tables.len(), 200);
        assert!(model.maglev.tables.values().all(|t| t.users == 2));
        let b = ["10.244.0.8:80", "10.244.9.9:80"];
        let new = vec![
            fe("ns/svc-007", FrontendKind::ClusterIP, "10.96.0.8", &b),
            fe("ns/svc-007", FrontendKind::NodePort, "172.18.0.8", &b),
            fe("ns/svc-007", FrontendKind::LoadBalancer, "203.0.0.8", &b),
        ];
        let ops = model.update(&set(&["ns/svc-007"]), &new, &mut ids);
        // One new backend for each frontend, the ClusterIP's second slot, the Maglev slots
        // that moved, three frontends (slot counts change).
        assert!(ops.len() < 3 + 1 + 2 * 509 + 3, "{}", ops.len());
        assert!(ops.iter().all(|op| match op {
            MapOp::PutFrontend(k, _) | MapOp::DelFrontend(k) =>
                u32::from_be(k.addr_be) & 0xffff == 8,
            _ => true,
        }));
        apply_in_memory(&mut current, &ops);
        assert_eq!(current, model.entries());
        assert_eq!(model.maglev.tables.len(), 200);
        assert_eq!(model.maglev.tables[&new[1].backends].users, 2);
        model.update(&set(&["ns/svc-007"]), &[], &mut ids);
        assert_eq!(model.maglev.tables.len(), 199);
    }
}
