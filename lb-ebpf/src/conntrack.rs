//! Connection tracking: one entry per direction of a load-balanced flow in `LB_CT`.
//!
//! The original entry (client -> frontend) remembers the backend, and the source the flow
//! takes when it is SNATed; the reply entry (keyed by the reply as it arrives here) remembers
//! the frontend to rewrite the reply's source to and, for SNATed flows, the client to rewrite
//! its destination to. Entries expire by idle time (TCP 6 h, UDP 60 s, 10 s after FIN/RST);
//! the LRU map evicts the oldest first when full. `last_seen_ns` is written at most once a
//! second per entry.
//!
//! Timestamps are CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`): a tick's precision is
//! plenty for lifetimes of seconds, and reading it costs no clocksource access. Ages saturate,
//! so a timestamp a tick ahead (written from userspace with the fine clock) reads as fresh.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
};
use lb_common::maps::{
    Backend, CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_CLOSING, CT_F_SNAT,
    CT_LIFETIME_CLOSING_NS, CT_LIFETIME_TCP_NS, CT_LIFETIME_UDP_NS, CT_REFRESH_NS, PROTO_TCP,
    SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_TRIES,
};

use crate::{
    maps::LB_CT,
    parse::{Headers, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Now, on the conntrack clock (CLOCK_MONOTONIC_COARSE), ns.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper takes no arguments and has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

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
    now.saturating_sub(e.last_seen_ns) <= lifetime
}

/// Whether a new flow may take over the reply key held by `old`, another flow's reply entry:
/// when `old` is over, or when the new flow opens with a TCP SYN and `old`'s connection has
/// closed both ways, as the kernel's NAT reuses the tuples of connections in TIME_WAIT. Both
/// ways: the reply entry saw the backend's FIN or RST, its original entry the client's (or is
/// gone). A connection closed one way still has packets to deliver through the key.
#[inline(always)]
fn reusable(old: &CtEntry, h: &Headers, now: u64) -> bool {
    if !is_live(old, h.proto, now) {
        return true;
    }
    let syn = h.proto == PROTO_TCP && h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn || old.flags & CT_F_CLOSING == 0 {
        return false;
    }
    // A reply entry's original: from its client (rev_*) to its frontend (nat_*).
    let original = CtKey {
        saddr_be: old.rev_addr_be,
        daddr_be: old.nat_addr_be,
        sport_be: old.rev_port_be,
        dport_be: old.nat_port_be,
        proto: h.proto,
        dir: CT_DIR_ORIGINAL,
        _pad: [0; 2],
    };
    match LB_CT.get_ptr(original) {
        // SAFETY: a live LRU hash value; one integer read.
        Some(o) => unsafe { (*o).flags & CT_F_CLOSING != 0 },
        None => true,
    }
}

/// Inserts `value` at `key` unless a live entry of another flow holds it (see [`reusable`]);
/// `same` says whether an existing entry belongs to this same flow. Returns whether it wrote.
#[inline(always)]
fn claim(
    key: CtKey,
    value: &CtEntry,
    h: &Headers,
    now: u64,
    same: impl Fn(&CtEntry) -> bool,
) -> bool {
    if LB_CT.insert(key, *value, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    if let Some(old) = LB_CT.get_ptr(key) {
        // SAFETY: `old` points to a live LRU hash value; read as plain integers.
        let old = unsafe { *old };
        if !same(&old) && !reusable(&old, h, now) {
            return false;
        }
    }
    LB_CT.insert(key, *value, BPF_ANY as u64).is_ok()
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
        if closing || now.saturating_sub((*e).last_seen_ns) > CT_REFRESH_NS {
            (*e).last_seen_ns = now;
            return true;
        }
    }
    false
}

/// What creating a flow's entries came to.
pub enum Created {
    /// Both entries are in place.
    Tracked,
    /// The kernel refused an insert: the flow goes on untracked.
    Untracked,
    /// The reply key is held by another live flow: the backend already talks to this client
    /// address and port (two frontends sharing the backend, the client reusing its port).
    Clash,
}

/// A new flow: packet `h` to frontend `frontend_id`, sent to `backend`.
pub struct NewFlow<'a> {
    pub h: &'a Headers,
    pub frontend_id: u32,
    pub backend_id: u32,
    pub backend: &'a Backend,
    pub now: u64,
}

impl NewFlow<'_> {
    /// The reply entry's key when the flow's source becomes `src`.
    #[inline(always)]
    fn reply_key(&self, src_addr: u32, src_port: u16) -> CtKey {
        CtKey {
            saddr_be: self.backend.addr_be,
            daddr_be: src_addr,
            sport_be: self.backend.port_be,
            dport_be: src_port,
            proto: self.h.proto,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    fn entry(&self, nat: (u32, u16), rev: (u32, u16), flags: u16) -> CtEntry {
        CtEntry {
            created_ns: self.now,
            last_seen_ns: self.now,
            nat_addr_be: nat.0,
            nat_port_be: nat.1,
            flags,
            backend_id: self.backend_id,
            frontend_id: self.frontend_id,
            rev_addr_be: rev.0,
            rev_port_be: rev.1,
            _pad: 0,
        }
    }

    /// The reply entry: rewrite the source back to the frontend; with SNAT, the destination
    /// back to the client.
    #[inline(always)]
    fn reply_entry(&self, snat: bool) -> CtEntry {
        let h = self.h;
        let flags = if snat { CT_F_SNAT } else { 0 };
        self.entry((h.daddr, h.dport), (h.saddr, h.sport), flags)
    }

    /// Creates both entries of a flow whose source becomes (`src_addr`, `src_port`), whoever
    /// held the reply key (the hairpin address is this flow's own). Returns false if the kernel
    /// refused an insert.
    #[inline(always)]
    pub fn create_with_src(&self, src_addr: u32, src_port: u16) -> bool {
        let reply = self.reply_entry(true);
        if LB_CT
            .insert(self.reply_key(src_addr, src_port), reply, BPF_ANY as u64)
            .is_err()
        {
            return false;
        }
        let original = self.entry(
            (self.backend.addr_be, self.backend.port_be),
            (src_addr, src_port),
            CT_F_SNAT,
        );
        LB_CT
            .insert(key_of(self.h, CT_DIR_ORIGINAL), original, BPF_ANY as u64)
            .is_ok()
    }

    /// Creates the entries of a flow whose source stays. The reply key may be held already: by
    /// an entry of this same flow (a retransmitted SYN, the client reusing its port to the same
    /// frontend) or of a flow that is over or closing (see [`reusable`]), which this one takes
    /// over; or by another live flow, which must keep it: then [`Created::Clash`], and nothing
    /// is written.
    #[inline(always)]
    pub fn create_plain(&self) -> Created {
        let h = self.h;
        let key = self.reply_key(h.saddr, h.sport);
        let reply = self.reply_entry(false);
        let same = |old: &CtEntry| old.nat_addr_be == h.daddr && old.nat_port_be == h.dport;
        if !claim(key, &reply, h, self.now, same) {
            // A failed insert into a key nobody holds also lands here; a remapped port is
            // as good an answer to that.
            return Created::Clash;
        }
        let original = self.entry(
            (self.backend.addr_be, self.backend.port_be),
            (h.saddr, h.sport),
            0,
        );
        if LB_CT
            .insert(key_of(h, CT_DIR_ORIGINAL), original, BPF_ANY as u64)
            .is_err()
        {
            return Created::Untracked;
        }
        Created::Tracked
    }

    /// Picks a free source port on `addr` for this flow (one no other live flow to the same
    /// backend uses; see [`reusable`]), claims it with the reply entry, and creates the
    /// original entry. Returns the port, or None when every port tried was taken.
    #[inline(always)]
    pub fn create_snat(&self, addr: u32, hash: u32) -> Option<u16> {
        let range = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
        let reply = self.reply_entry(true);
        let mut i = 0;
        while i < SNAT_TRIES {
            // Spread the tries over the range: a step coprime to it visits distinct ports.
            let port = SNAT_PORT_MIN + ((hash.wrapping_add(i * 2_654_435_761)) % range) as u16;
            let port_be = port.to_be();
            if claim(
                self.reply_key(addr, port_be),
                &reply,
                self.h,
                self.now,
                |_| false,
            ) {
                let original = self.entry(
                    (self.backend.addr_be, self.backend.port_be),
                    (addr, port_be),
                    CT_F_SNAT,
                );
                // Without the original entry the next packet takes another port: the flow
                // still works if its backend is chosen again, so this is not fatal.
                let _ = LB_CT.insert(key_of(self.h, CT_DIR_ORIGINAL), original, BPF_ANY as u64);
                return Some(port_be);
            }
            i += 1;
        }
        None
    }
}

/// (Re)writes the reply entry of an established flow from its original entry `e`: the LRU may
/// have evicted it while the original lives. An entry of this flow is refreshed in place; one
/// of another live flow (which took the key over meanwhile) is left alone; an expired one is
/// replaced.
#[inline(always)]
pub fn refresh_reply(h: &Headers, e: &CtEntry, now: u64) {
    let snat = e.flags & CT_F_SNAT != 0;
    let (src_addr, src_port) = if snat {
        (e.rev_addr_be, e.rev_port_be)
    } else {
        (h.saddr, h.sport)
    };
    let key = CtKey {
        saddr_be: e.nat_addr_be,
        daddr_be: src_addr,
        sport_be: e.nat_port_be,
        dport_be: src_port,
        proto: h.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    if let Some(r) = LB_CT.get_ptr_mut(key) {
        // SAFETY: `r` points to a live LRU hash value of plain integers; racing writes of the
        // timestamp are benign.
        unsafe {
            if (*r).nat_addr_be == h.daddr && (*r).nat_port_be == h.dport {
                (*r).last_seen_ns = now;
                return;
            }
            if is_live(&*r, h.proto, now) {
                return;
            }
        }
    }
    let reply = CtEntry {
        created_ns: e.created_ns,
        last_seen_ns: now,
        nat_addr_be: h.daddr,
        nat_port_be: h.dport,
        flags: e.flags & CT_F_SNAT,
        backend_id: e.backend_id,
        frontend_id: e.frontend_id,
        rev_addr_be: h.saddr,
        rev_port_be: h.sport,
        _pad: 0,
    };
    // Absent, or held by a flow that is over. Lost to a full map: the next refresh tries again.
    let _ = LB_CT.insert(key, reply, BPF_ANY as u64);
}
