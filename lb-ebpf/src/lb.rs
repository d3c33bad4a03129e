//! The load-balancing decision, independent of the hook: frontend lookup, backend choice,
//! conntrack, and which address and port to rewrite.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    hash::{flow_hash, slot_of},
    maps::{
        Backend, FrontendKey, SlotKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_CLOSING,
        FE_F_REJECT_EMPTY, PROTO_TCP,
    },
    verdict::Reason,
};

use crate::{
    conntrack,
    maps::{LB_BACKENDS, LB_CT, LB_FRONTENDS, LB_SLOTS},
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
        let (id, slot_count, flags) = (fe.id, fe.slot_count, fe.flags);
        return to_frontend(h, len, id, slot_count, flags);
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
fn to_frontend(
    h: &Headers,
    len: u64,
    fe_id: u32,
    slot_count: u32,
    fe_flags: u32,
) -> (Reason, Action) {
    let now = unsafe { bpf_ktime_get_ns() };
    let is_syn = h.proto == PROTO_TCP && h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(e) = LB_CT.get_ptr_mut(conntrack::key_of(h, CT_DIR_ORIGINAL)) {
        // SAFETY: `e` points to a live LRU hash value; read as plain integers.
        let entry = unsafe { *e };
        // A SYN on a closing flow is a new connection reusing the client port.
        let reused = is_syn && entry.flags & CT_F_CLOSING != 0;
        if !reused && entry.frontend_id == fe_id && conntrack::is_live(&entry, h.proto, now) {
            // The flow keeps its backend as long as that backend exists.
            if let Some(b) = unsafe { LB_BACKENDS.get(entry.backend_id) } {
                if b.addr_be == entry.nat_addr_be && b.port_be == entry.nat_port_be {
                    let b: Backend = *b;
                    if conntrack::touch(e, h.tcp_flags, now) {
                        conntrack::refresh_reply(h, fe_id, entry.backend_id, &b, now);
                    }
                    count_frontend(fe_id, len, false);
                    return (Reason::DnatEstablished, dnat(h, b.addr_be, b.port_be));
                }
            }
        }
    }
    if slot_count == 0 {
        count_frontend(fe_id, len, false);
        return if fe_flags & FE_F_REJECT_EMPTY != 0 {
            (Reason::RejectNoBackend, Action::Drop)
        } else {
            (Reason::DropNoBackend, Action::Drop)
        };
    }
    let hash = flow_hash(h.saddr, h.daddr, h.sport, h.dport, h.proto);
    let skey = SlotKey {
        frontend_id: fe_id,
        slot: slot_of(hash, slot_count),
    };
    let Some(slot) = (unsafe { LB_SLOTS.get(skey) }) else {
        count_frontend(fe_id, len, false);
        return (Reason::DropNoSlot, Action::Drop);
    };
    let backend_id = slot.backend_id;
    let Some(b) = (unsafe { LB_BACKENDS.get(backend_id) }) else {
        count_frontend(fe_id, len, false);
        return (Reason::DropNoSlot, Action::Drop);
    };
    let b: Backend = *b;
    count_frontend(fe_id, len, true);
    let reason = if conntrack::create(h, fe_id, backend_id, &b, now) {
        Reason::DnatNew
    } else {
        Reason::DnatNewUntracked
    };
    (reason, dnat(h, b.addr_be, b.port_be))
}
