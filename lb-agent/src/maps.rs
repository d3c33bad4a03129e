//! From a plan to map entries, and from current entries to the ordered writes that reach the
//! desired ones. Pure: no I/O; the dataplane applies the [`MapOp`]s this module computes.
//!
//! Ids: every frontend (address, port, protocol) and every backend (address, port, protocol)
//! gets a small integer id that stays the same for as long as it exists, so conntrack entries
//! keep pointing at the right backend and per-frontend counters stay with their frontend. An id
//! freed in one sync is reused only in a later one, after the writes that stop using it landed.
//!
//! Two ways to the writes: [`desired`] + [`diff`] recompute and compare everything (start,
//! resync, Node changes); [`Desired`] keeps the desired entries per frontend key, and
//! [`Desired::update`] recomputes only the keys the changed Services claim (now or before),
//! diffing their old entries against their new ones with the same [`diff`], so a change costs
//! in proportion to those Services' entries, and its writes are exactly the ones the full path
//! would emit, in the same order.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use lb_common::maps::{
    Backend, Frontend, FrontendKey, Slot, SlotKey, FE_F_REJECT_EMPTY, FE_F_SOURCE_RANGES,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    maglev,
    plan::{self, FrontendKind, OnEmpty, Plan, Protocol},
};

/// The content of the service maps: what the kernel holds, or should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SlotKey, Slot>,
    pub backends: BTreeMap<u32, Backend>,
    /// loadBalancerSourceRanges: (frontend id, prefix address (network order), prefix length).
    pub src_ranges: BTreeSet<(u32, u32, u8)>,
}

/// One map write. [`diff`] orders them so that no packet sees a half-built frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, Backend),
    PutSlot(SlotKey, Slot),
    /// Allow a source prefix (address network order, length) to frontend id.
    PutSrcRange(u32, u32, u8),
    /// Zero a frontend id's counters before the id is first used.
    ResetStats(u32),
    PutFrontend(FrontendKey, Frontend),
    DelFrontend(FrontendKey),
    DelSlot(SlotKey),
    DelBackend(u32),
    DelSrcRange(u32, u32, u8),
}

/// Why a plan frontend has no map entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("{service} {ip}:{port}/{protocol:?}: IPv6 is not handled by the dataplane yet")]
    Ipv6 {
        service: String,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    #[error("{service} {ip}:{port}/SCTP: SCTP is not handled by the dataplane yet")]
    Sctp {
        service: String,
        ip: IpAddr,
        port: u16,
    },
    #[error("{service}: backend {backend} is IPv6 while the frontend is IPv4")]
    FamilyMismatch {
        service: String,
        backend: SocketAddr,
    },
    #[error("{service} {ip}:{port}: no free frontend id (capacity {capacity})")]
    FrontendsFull {
        service: String,
        ip: IpAddr,
        port: u16,
        capacity: u32,
    },
    #[error("{service}: no free backend id for {backend} (capacity {capacity})")]
    BackendsFull {
        service: String,
        backend: SocketAddr,
        capacity: u32,
    },
}

/// Identity of a backend in `LB_BACKENDS`: (frontend id, address, port, protocol).
type BackendIdent = (u32, u32, u16, u8);

/// A pool of small ids, `1..=capacity`, with deferred reuse.
#[derive(Clone, Debug)]
struct IdPool {
    capacity: u32,
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

    fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next > self.capacity {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    fn release(&mut self, id: u32) {
        self.released.push(id);
    }

    fn end_sync(&mut self) {
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
    frontend_ids: BTreeMap<FrontendKey, u32>,
    backend_ids: BTreeMap<BackendIdent, u32>,
    frontends: IdPool,
    backends: IdPool,
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
            .map(|(id, b)| ((b.frontend_id, b.addr_be, b.port_be, b.proto), *id))
            .collect();
        ids.frontends.adopt(ids.frontend_ids.values().copied());
        ids.backends.adopt(ids.backend_ids.values().copied());
        ids
    }
}

/// The IP protocol number of a plan protocol.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => PROTO_SCTP,
    }
}

/// Raw (network-order) form of an IPv4 address, as the kernel reads it from packets.
pub fn raw_v4(addr: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Raw (network-order) form of a port.
pub fn raw_port(port: u16) -> u16 {
    port.to_be()
}

/// The map entries for `plan`, assigning ids through `ids`. Frontends the dataplane cannot
/// serve yet are returned in the second value and get no entries. Two plan frontends with one
/// key: the first one (in plan order) that can be programmed wins.
pub fn desired(plan: &Plan, ids: &mut Ids) -> (Entries, Vec<Skipped>) {
    let mut model = Desired::default();
    let entries = model.rebuild(plan, ids);
    (entries, model.skipped())
}

/// Who asked for a frontend: (Service, index among that Service's plan frontends). Ordered
/// as the plan is (frontends sorted by Service first), so the smallest claimant of a key is
/// the first one in the plan.
type Claimant = (String, usize);

/// One plan frontend, and the key it asks for (or why it cannot have one).
#[derive(Clone, Debug)]
struct Claim {
    frontend: plan::Frontend,
    key: Result<FrontendKey, Skipped>,
}

/// The entries one frontend key contributes, as built from its winning claimant.
#[derive(Clone, Debug)]
struct Built {
    frontend: Frontend,
    /// Backend ids in the plan's order of the backends.
    backend_ids: Vec<u32>,
    backends: Vec<(u32, Backend)>,
    /// Maglev table (indices into `backend_ids`) and the backend list it was built for;
    /// None: the slots are `backend_ids` as they are.
    maglev: Option<(Vec<SocketAddr>, Arc<[u32]>)>,
    /// (prefix address, length).
    src_ranges: Vec<(u32, u8)>,
}

impl Built {
    fn write_to(&self, key: FrontendKey, out: &mut Entries) {
        let id = self.frontend.id;
        out.frontends.insert(key, self.frontend);
        for (bid, b) in &self.backends {
            out.backends.insert(*bid, *b);
        }
        let slot = |i: usize| match &self.maglev {
            Some((_, t)) => self.backend_ids[t[i] as usize],
            None => self.backend_ids[i],
        };
        for i in 0..self.frontend.slot_count as usize {
            out.slots.insert(
                SlotKey {
                    frontend_id: id,
                    slot: i as u32,
                },
                Slot {
                    backend_id: slot(i),
                },
            );
        }
        for (addr, len) in &self.src_ranges {
            out.src_ranges.insert((id, *addr, *len));
        }
    }
}

/// Maglev tables by backend list, shared by the frontends that use them (a Service's NodePort,
/// LoadBalancer and external IP frontends of one port have the same backends), with how many
/// built frontends use each.
#[derive(Clone, Debug, Default)]
struct MaglevCache {
    tables: HashMap<Vec<SocketAddr>, (Arc<[u32]>, usize)>,
}

impl MaglevCache {
    /// The table for `backends` (non-empty), built if no frontend uses it yet; `warm` holds
    /// tables from before a rebuild.
    fn take(
        &mut self,
        backends: &[SocketAddr],
        warm: &HashMap<Vec<SocketAddr>, (Arc<[u32]>, usize)>,
    ) -> Arc<[u32]> {
        if let Some((t, n)) = self.tables.get_mut(backends) {
            *n += 1;
            return t.clone();
        }
        let t = match warm.get(backends) {
            Some((t, _)) => t.clone(),
            None => {
                let names: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
                maglev::build(&names, maglev::table_size(names.len())).into()
            }
        };
        self.tables.insert(backends.to_vec(), (t.clone(), 1));
        t
    }

    fn release(&mut self, backends: &[SocketAddr]) {
        if let Some((_, n)) = self.tables.get_mut(backends) {
            *n -= 1;
            if *n == 0 {
                self.tables.remove(backends);
            }
        }
    }
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
                let who = (s.clone(), i);
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
            let who = (fe.service.clone(), list.len());
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
    fn build_keys(
        &mut self,
        keys: &BTreeSet<FrontendKey>,
        ids: &mut Ids,
        warm: &HashMap<Vec<SocketAddr>, (Arc<[u32]>, usize)>,
    ) {
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
            let fe = &self.services[&who.0][who.1].frontend;
            match build(fe, k, ids, &mut self.maglev, warm) {
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
            if let Some((backends, _)) = &b.maglev {
                self.maglev.release(backends);
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
                .range((fid, 0, 0, 0)..=(fid, u32::MAX, u16::MAX, u8::MAX))
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

/// The map key of a plan frontend, or why the dataplane cannot serve it.
fn frontend_key(fe: &plan::Frontend) -> Result<FrontendKey, Skipped> {
    let IpAddr::V4(ip) = fe.ip else {
        return Err(Skipped::Ipv6 {
            service: fe.service.clone(),
            ip: fe.ip,
            port: fe.port,
            protocol: fe.protocol,
        });
    };
    if fe.protocol == Protocol::Sctp {
        return Err(Skipped::Sctp {
            service: fe.service.clone(),
            ip: fe.ip,
            port: fe.port,
        });
    }
    Ok(FrontendKey {
        addr_be: raw_v4(ip),
        port_be: raw_port(fe.port),
        proto: proto_number(fe.protocol),
        scope: 0,
    })
}

/// The entries of `fe` under `key`, taking ids through `ids`. On failure nothing is built;
/// the ids taken stay assigned until the caller releases what no key uses.
fn build(
    fe: &plan::Frontend,
    key: FrontendKey,
    ids: &mut Ids,
    maglev_cache: &mut MaglevCache,
    warm: &HashMap<Vec<SocketAddr>, (Arc<[u32]>, usize)>,
) -> Result<Built, Skipped> {
    let proto = key.proto;
    let id = match ids.frontend_ids.get(&key) {
        Some(id) => *id,
        None => {
            let id = ids.frontends.take().ok_or_else(|| Skipped::FrontendsFull {
                service: fe.service.clone(),
                ip: fe.ip,
                port: fe.port,
                capacity: ids.frontends.capacity,
            })?;
            ids.frontend_ids.insert(key, id);
            id
        }
    };
    let mut backend_ids = Vec::with_capacity(fe.backends.len());
    let mut backends = Vec::with_capacity(fe.backends.len());
    for b in &fe.backends {
        let SocketAddr::V4(b4) = b else {
            return Err(Skipped::FamilyMismatch {
                service: fe.service.clone(),
                backend: *b,
            });
        };
        let ident = (id, raw_v4(*b4.ip()), raw_port(b4.port()), proto);
        let bid = match ids.backend_ids.get(&ident) {
            Some(id) => *id,
            None => {
                let bid = ids.backends.take().ok_or_else(|| Skipped::BackendsFull {
                    service: fe.service.clone(),
                    backend: *b,
                    capacity: ids.backends.capacity,
                })?;
                ids.backend_ids.insert(ident, bid);
                bid
            }
        };
        backends.push((
            bid,
            Backend {
                frontend_id: id,
                addr_be: ident.1,
                port_be: ident.2,
                proto,
                flags: 0,
            },
        ));
        backend_ids.push(bid);
    }
    // ClusterIP traffic is seen whole by the client's node, and conntrack keeps each flow on
    // its backend: a plain list of the backends is the table. Traffic from outside may reach
    // any node (an external load balancer spreads it): there every node must pick the same
    // backend for a flow, and a backend change must move few flows: a Maglev table.
    let maglev = if fe.kind == FrontendKind::ClusterIP || backend_ids.is_empty() {
        None
    } else {
        let table = maglev_cache.take(&fe.backends, warm);
        Some((fe.backends.clone(), table))
    };
    let slot_count = match &maglev {
        Some((_, t)) => t.len(),
        None => backend_ids.len(),
    } as u32;
    let mut flags = match fe.on_empty {
        Some(OnEmpty::Reject) => FE_F_REJECT_EMPTY,
        _ => 0,
    };
    let mut src_ranges = Vec::new();
    let enforce = fe.kind == FrontendKind::LoadBalancer
        || (fe.kind == FrontendKind::NodePort && ids.nodeport_source_ranges);
    if enforce && !fe.source_ranges.is_empty() {
        flags |= FE_F_SOURCE_RANGES;
        for r in &fe.source_ranges {
            if let IpAddr::V4(a) = r.addr {
                src_ranges.push((raw_v4(a), r.prefix_len));
            }
        }
    }
    Ok(Built {
        frontend: Frontend {
            id,
            slot_count,
            flags,
            affinity_timeout_s: fe.affinity_timeout_seconds.unwrap_or(0),
        },
        backend_ids,
        backends,
        maglev,
        src_ranges,
    })
}

/// The writes that turn `current` into `desired`, in an order that never shows a packet a
/// half-built frontend: backends, then slots and source ranges, then frontends are added or
/// changed; then frontends, slots, backends and source ranges are deleted. A frontend therefore only ever points at slots
/// and backends that exist.
pub fn diff(current: &Entries, desired: &Entries) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for (id, b) in &desired.backends {
        if current.backends.get(id) != Some(b) {
            ops.push(MapOp::PutBackend(*id, *b));
        }
    }
    for (k, s) in &desired.slots {
        if current.slots.get(k) != Some(s) {
            ops.push(MapOp::PutSlot(*k, *s));
        }
    }
    for (id, addr, len) in desired.src_ranges.difference(&current.src_ranges) {
        ops.push(MapOp::PutSrcRange(*id, *addr, *len));
    }
    let current_ids: BTreeSet<u32> = current.frontends.values().map(|f| f.id).collect();
    for (k, f) in &desired.frontends {
        if current.frontends.get(k) != Some(f) {
            if !current_ids.contains(&f.id) {
                ops.push(MapOp::ResetStats(f.id));
            }
            ops.push(MapOp::PutFrontend(*k, *f));
        }
    }
    for k in current.frontends.keys() {
        if !desired.frontends.contains_key(k) {
            ops.push(MapOp::DelFrontend(*k));
        }
    }
    for k in current.slots.keys() {
        if !desired.slots.contains_key(k) {
            ops.push(MapOp::DelSlot(*k));
        }
    }
    for id in current.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(MapOp::DelBackend(*id));
        }
    }
    for (id, addr, len) in current.src_ranges.difference(&desired.src_ranges) {
        ops.push(MapOp::DelSrcRange(*id, *addr, *len));
    }
    ops
}

/// Applies `ops` to an in-memory copy, as the kernel maps would change.
pub fn apply_in_memory(entries: &mut Entries, ops: &[MapOp]) {
    for op in ops {
        match op {
            MapOp::PutBackend(id, b) => {
                entries.backends.insert(*id, *b);
            }
            MapOp::PutSlot(k, s) => {
                entries.slots.insert(*k, *s);
            }
            MapOp::ResetStats(_) => {}
            MapOp::PutFrontend(k, f) => {
                entries.frontends.insert(*k, *f);
            }
            MapOp::DelFrontend(k) => {
                entries.frontends.remove(k);
            }
            MapOp::DelSlot(k) => {
                entries.slots.remove(k);
            }
            MapOp::DelBackend(id) => {
                entries.backends.remove(id);
            }
            MapOp::PutSrcRange(id, addr, len) => {
                entries.src_ranges.insert((*id, *addr, *len));
            }
            MapOp::DelSrcRange(id, addr, len) => {
                entries.src_ranges.remove(&(*id, *addr, *len));
            }
        }
    }
}

/// A sorted text dump of map entries, one line each: for golden tests and debugging.
/// Frontends sort by their text; slots and backends by id.
pub fn dump(e: &Entries) -> String {
    use std::fmt::Write as _;
    let addr = |a: u32, p: u16| {
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::from(a.to_ne_bytes()), u16::from_be(p))
    };
    let mut out = String::new();
    let mut lines = Vec::new();
    for (k, f) in &e.frontends {
        lines.push(format!(
            "frontend {}/{} id={} slots={} flags={} affinity={}",
            addr(k.addr_be, k.port_be),
            k.proto,
            f.id,
            f.slot_count,
            f.flags,
            f.affinity_timeout_s
        ));
    }
    lines.sort();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    for (k, s) in &e.slots {
        let _ = writeln!(out, "slot {}/{} -> {}", k.frontend_id, k.slot, s.backend_id);
    }
    for (id, b) in &e.backends {
        let _ = writeln!(
            out,
            "backend {id} {}/{}",
            addr(b.addr_be, b.port_be),
            b.proto
        );
    }
    for (id, a, len) in &e.src_ranges {
        let _ = writeln!(out, "source-range {id} {}/{len}", addr(*a, 0).ip());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Frontend as PlanFrontend;

    fn fe(ip: &str, port: u16, protocol: Protocol, backends: &[&str]) -> PlanFrontend {
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
            source_ranges: Vec::new(),
        }
    }

    fn plan(frontends: Vec<PlanFrontend>) -> Plan {
        Plan { frontends }
    }

    const CAP: Capacity = Capacity {
        frontends: 8,
        backends: 8,
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

    /// Test that the diff adds backends, slots, then frontends, and deletes in reverse.
    #[test]
    fn diff_orders_writes_so_no_frontend_points_at_missing_entries() {
        let mut ids = Ids::new(CAP);
        let (old, _) = desired(
            &plan(vec![fe(
                "10.96.0.1",
                80,
                Protocol::Tcp,
                &["10.244.0.1:80", "10.244.0.2:80"],
            )]),
            &mut ids,
        );
        let (new, _) = desired(
            &plan(vec![fe("10.96.0.2", 80, Protocol::Tcp, &["10.244.0.3:80"])]),
            &mut ids,
        );
        let ops = diff(&old, &new);
        let rank = |op: &MapOp| match op {
            MapOp::PutBackend(..) => 0,
            MapOp::PutSlot(..) => 1,
            MapOp::PutSrcRange(..) => 1,
            MapOp::ResetStats(_) => 2,
            MapOp::PutFrontend(..) => 3,
            MapOp::DelFrontend(_) => 4,
            MapOp::DelSlot(_) => 5,
            MapOp::DelBackend(_) => 6,
            MapOp::DelSrcRange(..) => 7,
        };
        assert!(
            ops.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "{ops:#?}"
        );
        let mut applied = old.clone();
        apply_in_memory(&mut applied, &ops);
        assert_eq!(applied, new);
        assert!(diff(&new, &new).is_empty());
    }

    /// Test that every prefix of the ordered writes leaves each frontend's slots and backends
    /// present (no packet sees a half-built frontend).
    #[test]
    fn every_prefix_of_the_writes_is_consistent() {
        let mut ids = Ids::new(CAP);
        let steps = [
            vec![fe(
                "10.96.0.1",
                80,
                Protocol::Tcp,
                &["10.244.0.1:80", "10.244.0.2:80", "10.244.0.3:80"],
            )],
            vec![fe("10.96.0.1", 80, Protocol::Tcp, &["10.244.0.2:80"])],
            vec![
                fe(
                    "10.96.0.1",
                    80,
                    Protocol::Tcp,
                    &["10.244.0.4:80", "10.244.0.5:80"],
                ),
                fe("10.96.0.2", 53, Protocol::Udp, &["10.244.0.4:53"]),
            ],
            vec![],
        ];
        let mut current = Entries::default();
        for step in steps {
            let (want, _) = desired(&plan(step), &mut ids);
            let ops = diff(&current, &want);
            for n in 0..=ops.len() {
                let mut e = current.clone();
                apply_in_memory(&mut e, &ops[..n]);
                for f in e.frontends.values() {
                    for slot in 0..f.slot_count {
                        let s = e.slots.get(&SlotKey {
                            frontend_id: f.id,
                            slot,
                        });
                        let s = s.unwrap_or_else(|| {
                            panic!("slot {slot} of {} missing after {n} ops", f.id)
                        });
                        assert!(e.backends.contains_key(&s.backend_id));
                    }
                }
            }
            current = want;
        }
        assert_eq!(current, Entries::default());
    }

    /// Test that frontends the dataplane cannot serve yet are reported, not programmed.
    #[test]
    fn ipv6_and_sctp_frontends_are_skipped_with_a_reason() {
        let mut ids = Ids::new(CAP);
        let (e, skipped) = desired(
            &plan(vec![
                fe("fd00::10", 80, Protocol::Tcp, &["[fd00::1]:80"]),
                fe("10.96.0.1", 80, Protocol::Sctp, &["10.244.0.1:80"]),
                fe("10.96.0.2", 80, Protocol::Tcp, &["10.244.0.1:80"]),
            ]),
            &mut ids,
        );
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].to_string().contains("IPv6"));
        assert!(skipped[1].to_string().contains("SCTP"));
        assert_eq!(e.frontends.len(), 1);
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

#[cfg(test)]
mod maglev_tests {
    use super::*;

    /// Test that external frontends get a Maglev table of prime size and ClusterIP frontends a
    /// plain list, both over the same backend ids.
    #[test]
    fn external_frontends_get_a_maglev_table_cluster_ips_a_list() {
        let backends: Vec<std::net::SocketAddr> =
            ["10.244.0.1:80", "10.244.1.1:80", "10.244.2.1:80"]
                .iter()
                .map(|b| b.parse().unwrap())
                .collect();
        let mk = |kind, ip: &str, port| plan::Frontend {
            service: "ns/svc".into(),
            port_name: String::new(),
            kind,
            ip: ip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            backends: backends.clone(),
            on_empty: None,
            affinity_timeout_seconds: None,
            source_ranges: Vec::new(),
        };
        let p = Plan {
            frontends: vec![
                mk(FrontendKind::ClusterIP, "10.96.0.1", 80),
                mk(FrontendKind::NodePort, "192.168.0.10", 30080),
            ],
        };
        let mut ids = Ids::new(Capacity {
            frontends: 8,
            backends: 8,
        });
        let (e, _) = desired(&p, &mut ids);
        let counts: Vec<u32> = e.frontends.values().map(|f| f.slot_count).collect();
        assert!(counts.contains(&3) && counts.contains(&509), "{counts:?}");
        let np = e.frontends.values().find(|f| f.slot_count == 509).unwrap();
        let mut share = BTreeMap::new();
        for slot in 0..509 {
            let s = e.slots[&SlotKey {
                frontend_id: np.id,
                slot,
            }];
            *share.entry(s.backend_id).or_insert(0) += 1;
        }
        assert_eq!(share.len(), 3);
        assert!(share.values().all(|n| (169..=170).contains(n)), "{share:?}");
    }
}

#[cfg(test)]
mod source_range_tests {
    use super::*;
    use crate::plan::SourceRange;

    /// Test that loadBalancerSourceRanges are programmed for LoadBalancer frontends only, and
    /// for NodePorts when asked, written before the frontend that needs them.
    #[test]
    fn source_ranges_guard_load_balancer_frontends_and_nodeports_on_request() {
        let mk = |kind, ip: &str| plan::Frontend {
            service: "ns/svc".into(),
            port_name: String::new(),
            kind,
            ip: ip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            backends: vec!["10.244.0.1:80".parse().unwrap()],
            on_empty: None,
            affinity_timeout_seconds: None,
            source_ranges: vec![SourceRange::parse("192.168.7.0/24").unwrap()],
        };
        let p = Plan {
            frontends: vec![
                mk(FrontendKind::LoadBalancer, "203.0.113.7"),
                mk(FrontendKind::NodePort, "172.18.0.10"),
            ],
        };
        let cap = Capacity {
            frontends: 8,
            backends: 8,
        };
        let flagged = |e: &Entries| {
            e.frontends
                .values()
                .filter(|f| f.flags & FE_F_SOURCE_RANGES != 0)
                .count()
        };
        let (e, _) = desired(&p, &mut Ids::new(cap));
        assert_eq!((flagged(&e), e.src_ranges.len()), (1, 1));
        assert!(
            dump(&e).contains("source-range 1 192.168.7.0/24"),
            "{}",
            dump(&e)
        );
        let mut ids = Ids::new(cap);
        ids.nodeport_source_ranges = true;
        let (e2, _) = desired(&p, &mut ids);
        assert_eq!((flagged(&e2), e2.src_ranges.len()), (2, 2));
        let ops = diff(&Entries::default(), &e2);
        let first_frontend = ops
            .iter()
            .position(|o| matches!(o, MapOp::PutFrontend(..)))
            .unwrap();
        let last_range = ops
            .iter()
            .rposition(|o| matches!(o, MapOp::PutSrcRange(..)))
            .unwrap();
        assert!(last_range < first_frontend, "{ops:?}");
    }
}

#[cfg(test)]
mod incremental_tests {
    use super::*;
    use crate::plan::SourceRange;

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
    /// and backend sets repeat; some IPv6 and SCTP.
    fn random_frontends(rng: &mut Rng, service: &str) -> Vec<plan::Frontend> {
        let kinds = [
            FrontendKind::ClusterIP,
            FrontendKind::NodePort,
            FrontendKind::LoadBalancer,
        ];
        (0..rng.below(4))
            .map(|_| {
                let ip = match rng.below(10) {
                    0 => "fd00::1".to_string(),
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
                    source_ranges,
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
            source_ranges: Vec::new(),
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
        assert!(model.maglev.tables.values().all(|(_, n)| *n == 2));
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
        assert_eq!(model.maglev.tables[&new[1].backends].1, 2);
        model.update(&set(&["ns/svc-007"]), &[], &mut ids);
        assert_eq!(model.maglev.tables.len(), 199);
    }
}
