//! The load-balancing decision, independent of the hook: frontend lookup, backend choice,
//! conntrack, and which address and port to rewrite.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use lb_common::{
    hash::{flow_hash, slot_of},
    maps::{
        Affinity, AffinityKey, Backend, Frontend, FrontendKey, SlotKey, CT_DIR_ORIGINAL,
        CT_DIR_REPLY, CT_F_CLOSING, FE_F_REJECT_EMPTY, PROTO_TCP,
    },
    verdict::Reason,
};

use crate::{
    conntrack,
    maps::{LB_AFFINITY, LB_BACKENDS, LB_CT, LB_FRONTENDS, LB_SLOTS},
    parse::{Headers, TCP_ACK, TCP_SYN},
    stats::count_frontend,
};

/// An address and port rewrite of one side of the packet; checksums follow.
#[derive(Clone, Copy)]
pub struct Nat {
    /// true: rewrite the destination (DNAT); false: the source (reverse NAT).
    pub dst: bool,
    pub old_addr: u32,
    pub new_addr: u32,
    pub old_port: u16,
    pub new_port: u16,
}

/// What the hook must do with the packet.
pub enum Action {
    Pass,
    Drop,
    /// Answer with ICMP port unreachable.
    Reject,
    Rewrite(Nat),
}

/// Decides what happens to an IPv4 TCP/UDP packet of `len` bytes.
#[inline(always)]
pub fn decide(h: &Headers, len: u64) -> (Reason, Action) {
    let fkey = FrontendKey {
        addr_be: h.daddr,
        port_be: h.dport,
        proto: h.proto,
        scope: 0,
    };
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    if let Some(fe) = unsafe { LB_FRONTENDS.get(fkey) } {
        let fe: Frontend = *fe;
        return to_frontend(h, len, &fe);
    }
    if let Some(e) = LB_CT.get_ptr_mut(conntrack::key_of(h, CT_DIR_REPLY)) {
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: `e` points to a live LRU hash value; read as plain integers.
        let entry = unsafe { *e };
        if conntrack::is_live(&entry, h.proto, now) {
            conntrack::touch(e, h.tcp_flags, now);
            return (
                Reason::RevNat,
                Action::Rewrite(Nat {
                    dst: false,
                    old_addr: h.saddr,
                    new_addr: entry.nat_addr_be,
                    old_port: h.sport,
                    new_port: entry.nat_port_be,
                }),
            );
        }
    }
    (Reason::PassNoService, Action::Pass)
}

#[inline(always)]
fn dnat(h: &Headers, addr: u32, port: u16) -> Action {
    Action::Rewrite(Nat {
        dst: true,
        old_addr: h.daddr,
        new_addr: addr,
        old_port: h.dport,
        new_port: port,
    })
}

#[inline(always)]
fn to_frontend(h: &Headers, len: u64, fe: &Frontend) -> (Reason, Action) {
    let now = unsafe { bpf_ktime_get_ns() };
    let is_syn = h.proto == PROTO_TCP && h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(e) = LB_CT.get_ptr_mut(conntrack::key_of(h, CT_DIR_ORIGINAL)) {
        // SAFETY: `e` points to a live LRU hash value; read as plain integers.
        let entry = unsafe { *e };
        // A SYN on a closing flow is a new connection reusing the client port.
        let reused = is_syn && entry.flags & CT_F_CLOSING != 0;
        if !reused && entry.frontend_id == fe.id && conntrack::is_live(&entry, h.proto, now) {
            // The flow keeps its backend as long as that backend belongs to the frontend.
            if let Some(b) = backend_of(fe.id, entry.backend_id) {
                if b.addr_be == entry.nat_addr_be && b.port_be == entry.nat_port_be {
                    if conntrack::touch(e, h.tcp_flags, now) {
                        conntrack::refresh_reply(h, fe.id, entry.backend_id, &b, now);
                    }
                    count_frontend(fe.id, len, false);
                    return (Reason::DnatEstablished, dnat(h, b.addr_be, b.port_be));
                }
            }
        }
    }
    if fe.slot_count == 0 {
        count_frontend(fe.id, len, false);
        return if fe.flags & FE_F_REJECT_EMPTY != 0 {
            (Reason::RejectNoBackend, Action::Reject)
        } else {
            (Reason::DropNoBackend, Action::Drop)
        };
    }
    let Some((backend_id, b)) = choose(h, fe, now) else {
        count_frontend(fe.id, len, false);
        return (Reason::DropNoSlot, Action::Drop);
    };
    count_frontend(fe.id, len, true);
    let reason = if conntrack::create(h, fe.id, backend_id, &b, now) {
        Reason::DnatNew
    } else {
        Reason::DnatNewUntracked
    };
    (reason, dnat(h, b.addr_be, b.port_be))
}

/// The backend `id` if it (still) belongs to frontend `fe_id`.
#[inline(always)]
fn backend_of(fe_id: u32, id: u32) -> Option<Backend> {
    // SAFETY: copied out at once; the agent replaces entries whole.
    let b = unsafe { LB_BACKENDS.get(id) }?;
    (b.frontend_id == fe_id).then_some(*b)
}

/// Chooses the backend of a new flow: the client's affinity while it lasts, else the slot of
/// the flow's hash (which then becomes the client's affinity).
#[inline(always)]
fn choose(h: &Headers, fe: &Frontend, now: u64) -> Option<(u32, Backend)> {
    let akey = AffinityKey {
        frontend_id: fe.id,
        client_addr_be: h.saddr,
    };
    let timeout_ns = fe.affinity_timeout_s as u64 * 1_000_000_000;
    if timeout_ns != 0 {
        if let Some(a) = LB_AFFINITY.get_ptr_mut(akey) {
            // SAFETY: `a` points to a live LRU hash value of plain integers.
            let aff = unsafe { *a };
            if now.wrapping_sub(aff.last_seen_ns) <= timeout_ns {
                if let Some(b) = backend_of(fe.id, aff.backend_id) {
                    // SAFETY: as above; a racing write of the same field is benign.
                    unsafe { (*a).last_seen_ns = now };
                    return Some((aff.backend_id, b));
                }
            }
        }
    }
    let hash = flow_hash(h.saddr, h.daddr, h.sport, h.dport, h.proto);
    let skey = SlotKey {
        frontend_id: fe.id,
        slot: slot_of(hash, fe.slot_count),
    };
    // SAFETY: copied out at once.
    let backend_id = unsafe { LB_SLOTS.get(skey) }?.backend_id;
    let b = backend_of(fe.id, backend_id)?;
    if timeout_ns != 0 {
        let aff = Affinity {
            last_seen_ns: now,
            backend_id,
            _pad: 0,
        };
        // Without an entry the client merely loses its affinity: nothing to count.
        let _ = LB_AFFINITY.insert(akey, aff, BPF_ANY as u64);
    }
    Some((backend_id, b))
}
