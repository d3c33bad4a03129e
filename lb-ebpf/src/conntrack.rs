//! Connection tracking: one entry per direction of a load-balanced flow in `LB_CT`.
//!
//! The original entry (client -> frontend) remembers the backend; the reply entry
//! (backend -> client) remembers the frontend to rewrite the reply's source to. Entries expire
//! by idle time (TCP 6 h, UDP 60 s, 10 s after FIN/RST); the LRU map evicts the oldest first
//! when full. `last_seen_ns` is written at most once a second per entry.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::maps::{
    Backend, CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_CLOSING, CT_LIFETIME_CLOSING_NS,
    CT_LIFETIME_TCP_NS, CT_LIFETIME_UDP_NS, CT_REFRESH_NS, PROTO_TCP,
};

use crate::{
    maps::LB_CT,
    parse::{Headers, TCP_FIN, TCP_RST},
};

/// The key of a packet's own 5-tuple in direction `dir`.
#[inline(always)]
pub fn key_of(h: &Headers, dir: u8) -> CtKey {
    CtKey {
        saddr_be: h.saddr,
        daddr_be: h.daddr,
        sport_be: h.sport,
        dport_be: h.dport,
        proto: h.proto,
        dir,
        _pad: [0; 2],
    }
}

/// Whether an entry is still alive at `now`.
#[inline(always)]
pub fn is_live(e: &CtEntry, proto: u8, now: u64) -> bool {
    let lifetime = if e.flags & CT_F_CLOSING != 0 {
        CT_LIFETIME_CLOSING_NS
    } else if proto == PROTO_TCP {
        CT_LIFETIME_TCP_NS
    } else {
        CT_LIFETIME_UDP_NS
    };
    now.wrapping_sub(e.last_seen_ns) <= lifetime
}

/// Records that a packet of the entry's flow was seen: refreshes the timestamp when it is
/// older than [`CT_REFRESH_NS`], marks the flow closing on FIN or RST. Returns whether it wrote.
#[inline(always)]
pub fn touch(e: *mut CtEntry, tcp_flags: u8, now: u64) -> bool {
    // SAFETY: `e` points into an LRU hash value; fields are plain integers, and a racing write
    // of the same fields by another CPU is benign (last writer wins, both are current).
    unsafe {
        let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0 && (*e).flags & CT_F_CLOSING == 0;
        if closing {
            (*e).flags |= CT_F_CLOSING;
        }
        if closing || now.wrapping_sub((*e).last_seen_ns) > CT_REFRESH_NS {
            (*e).last_seen_ns = now;
            return true;
        }
    }
    false
}

/// Creates both entries of a new flow from packet `h` (to a frontend) sent to `backend`.
/// Returns false if the kernel refused either insert.
#[inline(always)]
pub fn create(h: &Headers, frontend_id: u32, backend_id: u32, backend: &Backend, now: u64) -> bool {
    let original = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_addr_be: backend.addr_be,
        nat_port_be: backend.port_be,
        flags: 0,
        backend_id,
        frontend_id,
    };
    if LB_CT
        .insert(key_of(h, CT_DIR_ORIGINAL), original, BPF_ANY as u64)
        .is_err()
    {
        return false;
    }
    refresh_reply(h, frontend_id, backend_id, backend, now)
}

/// (Re)writes the reply entry of a flow: the LRU may have evicted it while the original lives.
#[inline(always)]
pub fn refresh_reply(
    h: &Headers,
    frontend_id: u32,
    backend_id: u32,
    backend: &Backend,
    now: u64,
) -> bool {
    let key = CtKey {
        saddr_be: backend.addr_be,
        daddr_be: h.saddr,
        sport_be: backend.port_be,
        dport_be: h.sport,
        proto: h.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let reply = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_addr_be: h.daddr,
        nat_port_be: h.dport,
        flags: 0,
        backend_id,
        frontend_id,
    };
    LB_CT.insert(key, reply, BPF_ANY as u64).is_ok()
}
