//! The load balancer, written once over any [`Hook`]: `run` drives a packet through parse,
//! decision, action and count; `decide` is the decision itself (source ranges, frontend lookup
//! in `lookup_frontend`, conntrack, affinity, backend choice, SNAT and hairpin, which address and
//! port to rewrite).
//! It sees the hooks only through the trait, never a program type.

use aya_ebpf::{bindings::BPF_ANY, btf_maps::lpm_trie::Key};
use lb_common::{
    hash::{flow_hash, slot_of},
    maps::{
        Affinity, AffinityKey, Backend, Frontend, FrontendKey, NodeAddrKey, SlotKey, SrcRange,
        CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_CLOSING, CT_F_SNAT, FE_F_POD_SCOPE, FE_F_REJECT_EMPTY,
        FE_F_SOURCE_RANGES, HAIRPIN_ADDR, NODEPORT_ANY_ADDR, PROTO_TCP, SCOPE_ANY, SCOPE_PODS,
    },
    verdict::Reason,
};

use crate::{
    conntrack::{self, Created, NewFlow},
    hook::{Action, Hook, Nat},
    maps::{LB_AFFINITY, LB_BACKENDS, LB_CT, LB_FRONTENDS, LB_NODE_ADDRS, LB_SLOTS, LB_SRC_RANGES},
    parse::{parse, Headers, Parsed, TCP_ACK, TCP_SYN},
    stats::{count_frontend, count_verdict},
};

/// Runs the load balancer on one packet arriving on `hook`: parses it, decides, acts through
/// the hook and counts; returns the very verdict it counted.
#[inline(always)]
pub fn run<H: Hook>(hook: &H) -> H::Verdict {
    hook.prepare();
    let len = hook.len();
    let (reason, verdict) = match parse(hook.start(), hook.end()) {
        Parsed::NotIpv4 => (Reason::PassNotIpv4, H::PASS),
        Parsed::NotL4 => (Reason::PassNotL4, H::PASS),
        Parsed::Fragment => (Reason::PassFragment, H::PASS),
        Parsed::Malformed => (Reason::PassMalformed, H::PASS),
        Parsed::L4(h) => match decide(hook, &h, len) {
            (reason, Action::Pass) => (reason, H::PASS),
            (reason, Action::Drop) => (reason, H::DROP),
            (_, Action::Reject) if !H::CAN_REJECT => (Reason::RejectDropped, H::DROP),
            (reason, Action::Reject) => match hook.reject(&h) {
                Some(v) => (reason, v),
                None => (Reason::AbortRewrite, H::DROP),
            },
            (reason, Action::Rewrite(nat)) => match hook.rewrite(&h, &nat) {
                Some(partial) => (reason, hook.forward(&h, &nat, partial)),
                None => (Reason::AbortRewrite, H::DROP),
            },
        },
    };
    count_verdict(reason, len);
    verdict
}

/// Decides what happens to an IPv4 TCP/UDP packet of `len` bytes arriving on `hook`.
#[inline(always)]
pub fn decide<H: Hook>(hook: &H, h: &Headers, len: u64) -> (Reason, Action) {
    if let Some(fe) = lookup_frontend::<H>(h) {
        return to_frontend(hook, h, len, &fe);
    }
    if let Some(e) = LB_CT.get_ptr_mut(conntrack::key_of(h, CT_DIR_REPLY)) {
        let now = conntrack::now();
        // SAFETY: `e` points to a live LRU hash value; read as plain integers.
        let entry = unsafe { *e };
        if conntrack::is_live(&entry, h.proto, now) {
            conntrack::touch(e, h.tcp_flags, now);
            let mut nat = Nat::snat(entry.nat_addr_be, entry.nat_port_be);
            if entry.flags & CT_F_SNAT != 0 {
                nat = nat.with_dst(entry.rev_addr_be, entry.rev_port_be);
            }
            return (Reason::RevNat, Action::Rewrite(nat));
        }
    }
    (Reason::PassNoService, Action::Pass)
}

/// The frontend a packet is addressed to: the entry of its destination address, port and
/// protocol; failing that, when the destination is one of this node's NodePort addresses
/// (`LB_NODE_ADDRS`), the wildcard NodePort entry of its port and protocol. Either way, on a
/// hook that sees this node's pods, an entry flagged `FE_F_POD_SCOPE` yields to its
/// `SCOPE_PODS` variant (kube-proxy's externalTrafficPolicy Local short-circuit).
#[inline(always)]
fn lookup_frontend<H: Hook>(h: &Headers) -> Option<Frontend> {
    // 0.0.0.0 would find the wildcard entries by their own key.
    if h.daddr == NODEPORT_ANY_ADDR {
        return None;
    }
    let mut key = FrontendKey {
        addr_be: h.daddr,
        port_be: h.dport,
        proto: h.proto,
        scope: SCOPE_ANY,
    };
    // SAFETY (all three gets): values are copied out at once; the agent replaces entries whole.
    let fe = match unsafe { LB_FRONTENDS.get(key) } {
        Some(fe) => *fe,
        None => {
            let node_addr = NodeAddrKey { addr_be: h.daddr };
            // SAFETY: only tested for presence.
            unsafe { LB_NODE_ADDRS.get(node_addr) }?;
            key.addr_be = NODEPORT_ANY_ADDR;
            *unsafe { LB_FRONTENDS.get(key) }?
        }
    };
    if H::FROM_PODS && fe.flags & FE_F_POD_SCOPE != 0 {
        key.scope = SCOPE_PODS;
        if let Some(pods) = unsafe { LB_FRONTENDS.get(key) } {
            return Some(*pods);
        }
    }
    Some(fe)
}

#[inline(always)]
fn to_frontend<H: Hook>(hook: &H, h: &Headers, len: u64, fe: &Frontend) -> (Reason, Action) {
    if fe.flags & FE_F_SOURCE_RANGES != 0 && !source_allowed(fe.id, h.saddr) {
        count_frontend(fe.id, len, false);
        return (Reason::DropSourceRange, Action::Drop);
    }
    let now = conntrack::now();
    let is_syn = h.proto == PROTO_TCP && h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(e) = LB_CT.get_ptr_mut(conntrack::key_of(h, CT_DIR_ORIGINAL)) {
        // SAFETY: `e` points to a live LRU hash value; read as plain integers.
        let entry = unsafe { *e };
        // A SYN on a closing flow is a new connection reusing the client port.
        let reused = is_syn && entry.flags & CT_F_CLOSING != 0;
        if !reused && entry.frontend_id == fe.id && conntrack::is_live(&entry, h.proto, now) {
            // As with kube-proxy, an established TCP connection stays with its backend even
            // after the backend left the frontend (a terminating pod finishes its requests).
            // A UDP flow stays only while its backend belongs to the frontend (kube-proxy
            // clears UDP conntrack entries of removed endpoints).
            let keep = h.proto == PROTO_TCP
                || backend_of(fe.id, entry.backend_id).is_some_and(|b| {
                    b.addr_be == entry.nat_addr_be && b.port_be == entry.nat_port_be
                });
            if keep {
                if conntrack::touch(e, h.tcp_flags, now) {
                    conntrack::refresh_reply(h, &entry, now);
                }
                count_frontend(fe.id, len, false);
                let mut nat = Nat::dnat(entry.nat_addr_be, entry.nat_port_be);
                if entry.flags & CT_F_SNAT != 0 {
                    nat = nat.with_src(entry.rev_addr_be, entry.rev_port_be);
                }
                return (Reason::DnatEstablished, Action::Rewrite(nat));
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
    let flow = NewFlow {
        h,
        frontend_id: fe.id,
        backend_id,
        backend: &b,
        now,
    };
    let dnat = Nat::dnat(b.addr_be, b.port_be);
    if b.addr_be == h.saddr {
        // Hairpin: a pod balanced to itself. From its own address the reply would never leave
        // the pod; from the hairpin address it comes back through this program.
        let hairpin = u32::from_ne_bytes(HAIRPIN_ADDR);
        let reason = if flow.create_with_src(hairpin, h.sport) {
            Reason::DnatNew
        } else {
            Reason::DnatNewUntracked
        };
        return (reason, Action::Rewrite(dnat.with_src(hairpin, h.sport)));
    }
    // The source the flow takes: a node address when the backend is behind another node (its
    // reply must come back through this node), else the client's own unless the backend already
    // talks to that client address and port for another flow (then a remapped port).
    let (snat_addr, reason) = match hook.snat_source(h, b.addr_be) {
        Some(addr) => (addr, Reason::DnatNew),
        None => match flow.create_plain() {
            Created::Tracked => return (Reason::DnatNew, Action::Rewrite(dnat)),
            Created::Untracked => return (Reason::DnatNewUntracked, Action::Rewrite(dnat)),
            Created::Clash => (h.saddr, Reason::DnatNewPortRemap),
        },
    };
    let hash = flow_hash(h.saddr, h.daddr, h.sport, h.dport, h.proto);
    match flow.create_snat(snat_addr, hash) {
        Some(port) => (reason, Action::Rewrite(dnat.with_src(snat_addr, port))),
        None => (Reason::DropSnatExhausted, Action::Drop),
    }
}

/// Whether `saddr` is in one of frontend `fe_id`'s source ranges.
#[inline(always)]
fn source_allowed(fe_id: u32, saddr: u32) -> bool {
    let key = Key::new(
        64,
        SrcRange {
            frontend_id_be: fe_id.to_be(),
            addr_be: saddr,
        },
    );
    LB_SRC_RANGES.get(&key).is_some()
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
            if now.saturating_sub(aff.last_seen_ns) <= timeout_ns {
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
