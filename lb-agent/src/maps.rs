//! From a plan to map entries, and from current entries to the ordered writes that reach the
//! desired ones. Pure: no I/O; the dataplane applies the [`MapOp`]s this module computes.
//!
//! Ids: every frontend (address, port, protocol) and every backend (address, port, protocol)
//! gets a small integer id that stays the same for as long as it exists, so conntrack entries
//! keep pointing at the right backend and per-frontend counters stay with their frontend. An id
//! freed in one sync is reused only in a later one, after the writes that stop using it landed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use lb_common::maps::{
    Backend, Frontend, FrontendKey, Slot, SlotKey, FE_F_REJECT_EMPTY, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

use crate::plan::{self, OnEmpty, Plan, Protocol};

/// The content of the service maps: what the kernel holds, or should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SlotKey, Slot>,
    pub backends: BTreeMap<u32, Backend>,
}

/// One map write. [`diff`] orders them so that no packet sees a half-built frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, Backend),
    PutSlot(SlotKey, Slot),
    /// Zero a frontend id's counters before the id is first used.
    ResetStats(u32),
    PutFrontend(FrontendKey, Frontend),
    DelFrontend(FrontendKey),
    DelSlot(SlotKey),
    DelBackend(u32),
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

/// Identity of a backend in `LB_BACKENDS`.
type BackendIdent = (u32, u16, u8);

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
            .map(|(id, b)| ((b.addr_be, b.port_be, b.proto), *id))
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
/// serve yet are returned in the second value and get no entries.
pub fn desired(plan: &Plan, ids: &mut Ids) -> (Entries, Vec<Skipped>) {
    let mut out = Entries::default();
    let mut skipped = Vec::new();
    let mut live_frontends = BTreeSet::new();
    let mut live_backends = BTreeSet::new();
    for fe in &plan.frontends {
        match frontend_entries(fe, ids, &mut out, &mut live_backends) {
            Ok(key) => {
                live_frontends.insert(key);
            }
            Err(s) => skipped.push(s),
        }
    }
    ids.frontend_ids.retain(|k, id| {
        let keep = live_frontends.contains(k);
        if !keep {
            ids.frontends.release(*id);
        }
        keep
    });
    ids.backend_ids.retain(|k, id| {
        let keep = live_backends.contains(k);
        if !keep {
            ids.backends.release(*id);
        }
        keep
    });
    ids.frontends.end_sync();
    ids.backends.end_sync();
    (out, skipped)
}

fn frontend_entries(
    fe: &plan::Frontend,
    ids: &mut Ids,
    out: &mut Entries,
    live_backends: &mut BTreeSet<BackendIdent>,
) -> Result<FrontendKey, Skipped> {
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
    let proto = proto_number(fe.protocol);
    let key = FrontendKey {
        addr_be: raw_v4(ip),
        port_be: raw_port(fe.port),
        proto,
        scope: 0,
    };
    // Two plan frontends with one key (a duplicate in the input): the first one wins.
    if out.frontends.contains_key(&key) {
        return Ok(key);
    }
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
    for b in &fe.backends {
        let SocketAddr::V4(b4) = b else {
            return Err(Skipped::FamilyMismatch {
                service: fe.service.clone(),
                backend: *b,
            });
        };
        let ident = (raw_v4(*b4.ip()), raw_port(b4.port()), proto);
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
        live_backends.insert(ident);
        out.backends.insert(
            bid,
            Backend {
                addr_be: ident.0,
                port_be: ident.1,
                proto,
                flags: 0,
            },
        );
        backend_ids.push(bid);
    }
    for (slot, backend_id) in backend_ids.iter().enumerate() {
        out.slots.insert(
            SlotKey {
                frontend_id: id,
                slot: slot as u32,
            },
            Slot {
                backend_id: *backend_id,
            },
        );
    }
    let flags = match fe.on_empty {
        Some(OnEmpty::Reject) => FE_F_REJECT_EMPTY,
        _ => 0,
    };
    out.frontends.insert(
        key,
        Frontend {
            id,
            slot_count: backend_ids.len() as u32,
            flags,
            affinity_timeout_s: fe.affinity_timeout_seconds.unwrap_or(0),
        },
    );
    Ok(key)
}

/// The writes that turn `current` into `desired`, in an order that never shows a packet a
/// half-built frontend: backends, then slots, then frontends are added or changed; then
/// frontends, slots and backends are deleted. A frontend therefore only ever points at slots
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
        }
    }
}
