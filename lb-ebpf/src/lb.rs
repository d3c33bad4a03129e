//! The load balancer, written once over any [`Hook`]: `run` drives a packet through parse,
//! decision, action and count; `decide` is the decision itself (source ranges, frontend lookup
//! in `lookup_frontend`, conntrack, affinity, backend choice, SNAT and hairpin, which address and
//! port to rewrite).
//! It sees the hooks only through the trait, never a program type.
//!
//! The decision asks the hook where the rewritten packet would go ([`Hook::route`]) before it
//! writes anything (conntrack, affinity, counters): a hook that cannot finish the packet (the
//! XDP accelerator on a node device) leaves it untouched for the next program, which then
//! decides it afresh and finds the same backend (choice by hash and affinity read only).

use aya_ebpf::{bindings::BPF_ANY, btf_maps::lpm_trie::Key};
use lb_common::{
    hash::{flow_hash, slot_of},
    maps::{
        Affinity, AffinityKey, Backend, Frontend, FrontendKey, NodeAddrKey, SlotKey, SrcRange,
        BE_F_LOCAL, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_F_CLOSING, CT_F_SNAT, FE_F_POD_SCOPE,
        FE_F_REJECT_EMPTY, FE_F_SOURCE_RANGES, HAIRPIN_ADDR, NODEPORT_ANY_ADDR, PROTO_TCP,
        SCOPE_ANY, SCOPE_PODS,
    },
    verdict::Reason,
};

use crate::{
    conntrack::{self, Created, NewFlow},
    hook::{Action, Hook, Nat},
    maps::{LB_AFFINITY, LB_BACKENDS, LB_CT, LB_FRONTENDS, LB_NODE_ADDRS, LB_SLOTS, LB_SRC_RANGES},
    parse::{parse, Headers, Parsed, TCP_ACK, TCP_SYN},
    stats::{count_frontend, count_path, count_verdict},
};

/// Runs the load balancer on one packet arriving on `hook`: parses it, decides, acts through
/// the hook and counts; returns the very verdict it counted. An accelerator
/// ([`Hook::ACCELERATOR`]) counts no verdict for what it passes: the program behind it does.
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
            Action::Pass(reason) => (reason, H::PASS),
            Action::Drop(reason) => return counted(reason, len, H::DROP),
            Action::Leave(path) => {
                count_path(path, len);
                return H::PASS;
            }
            Action::Reject(_) if !H::CAN_REJECT => {
                return counted(Reason::RejectDropped, len, H::DROP)
            }
            Action::Reject(reason) => match hook.reject(&h) {
                Some(v) => return counted(reason, len, v),
                None => return counted(Reason::AbortRewrite, len, H::DROP),
            },
            Action::Rewrite(reason, nat, route) => match hook.rewrite(&h, &nat) {
                Some(()) => return counted(reason, len, hook.send(&h, &route)),
                None => return counted(Reason::AbortRewrite, len, H::DROP),
            },
        },
    };
    // Passed untouched: counted here unless the program behind counts it.
    if !H::ACCELERATOR {
        count_verdict(reason, len);
    }
    verdict
}

/// Counts a packet of `len` bytes under `reason` and returns `verdict`.
#[inline(always)]
fn counted<V>(reason: Reason, len: u64, verdict: V) -> V {
    count_verdict(reason, len);
    verdict
}

/// The route of a packet rewritten by `nat`, or else the [`Action::Leave`] to return.
macro_rules! route_or_leave {
    ($hook:expr, $h:expr, $nat:expr) => {
        match $hook.route($h, $nat) {
            Ok(route) => route,
            Err(path) => return Action::Leave(path),
        }
    };
}

/// Decides what happens to an IPv4 TCP/UDP packet of `len` bytes arriving on `hook`.
#[inline(always)]
pub fn decide<H: Hook>(hook: &H, h: &Headers, len: u64) -> Action<H::Route> {
    if let Some(fe) = lookup_frontend::<H>(h) {
        return to_frontend(hook, h, len, &fe);
    }
    reply(hook, h)
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

/// A packet to no frontend: the reply of a tracked flow is reverse-NATed, anything else passes.
#[inline(always)]
fn reply<H: Hook>(hook: &H, h: &Headers) -> Action<H::Route> {
    if let Some(e) = LB_CT.get_ptr_mut(conntrack::key_of(h, CT_DIR_REPLY)) {
        let now = conntrack::now();
        // SAFETY: `e` points to a live LRU hash value; read as plain integers.
        let entry = unsafe { *e };
        if conntrack::is_live(&entry, h.proto, now) {
            let mut nat = Nat::snat(entry.nat_addr_be, entry.nat_port_be);
            if entry.flags & CT_F_SNAT != 0 {
                nat = nat.with_dst(entry.rev_addr_be, entry.rev_port_be);
            }
            let route = route_or_leave!(hook, h, &nat);
            conntrack::touch(e, h.tcp_flags, now);
            return Action::Rewrite(Reason::RevNat, nat, route);
        }
    }
    Action::Pass(Reason::PassNoService)
}

#[inline(always)]
fn to_frontend<H: Hook>(hook: &H, h: &Headers, len: u64, fe: &Frontend) -> Action<H::Route> {
    if fe.flags & FE_F_SOURCE_RANGES != 0 && !source_allowed(fe.id, h.saddr) {
        count_frontend(fe.id, len, false);
        return Action::Drop(Reason::DropSourceRange);
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
                let mut nat = Nat::dnat(entry.nat_addr_be, entry.nat_port_be);
                if entry.flags & CT_F_SNAT != 0 {
                    nat = nat.with_src(entry.rev_addr_be, entry.rev_port_be);
                }
                let route = route_or_leave!(hook, h, &nat);
                if conntrack::touch(e, h.tcp_flags, now) {
                    conntrack::refresh_reply(h, &entry, now);
                }
                count_frontend(fe.id, len, false);
                return Action::Rewrite(Reason::DnatEstablished, nat, route);
            }
        }
    }
    if fe.slot_count == 0 {
        count_frontend(fe.id, len, false);
        return if fe.flags & FE_F_REJECT_EMPTY != 0 {
            Action::Reject(Reason::RejectNoBackend)
        } else {
            Action::Drop(Reason::DropNoBackend)
        };
    }
    let Some(choice) = choose(h, fe, now) else {
        count_frontend(fe.id, len, false);
        return Action::Drop(Reason::DropNoSlot);
    };
    let b = choice.backend;
    let dnat = Nat::dnat(b.addr_be, b.port_be);
    if !H::NODE_DEVICE && b.addr_be == h.saddr {
        // Hairpin: a pod balanced to itself. From its own address the reply would never leave
        // the pod; from the hairpin address it comes back through this program.
        let hairpin = u32::from_ne_bytes(HAIRPIN_ADDR);
        let nat = dnat.with_src(hairpin, h.sport);
        let route = route_or_leave!(hook, h, &nat);
        let flow = new_flow(h, fe, &choice, len, now);
        let reason = if flow.create_with_src(hairpin, h.sport) {
            Reason::DnatNew
        } else {
            Reason::DnatNewUntracked
        };
        return Action::Rewrite(reason, nat, route);
    }
    // From a node device, a flow to a backend on another node takes this node's address on
    // the route to the backend, so the backend's reply comes back here to be reverse-NATed
    // (and so does one whose client is the backend itself). Pod traffic keeps its source.
    let snat = if H::NODE_DEVICE && (b.flags & BE_F_LOCAL == 0 || b.addr_be == h.saddr) {
        hook.snat_source(h, b.addr_be)
    } else {
        None
    };
    // The port is chosen below, once the packet is known to be this hook's: the route does
    // not depend on it.
    let provisional = match snat {
        Some(addr) => dnat.with_src(addr, h.sport),
        None => dnat,
    };
    let route = route_or_leave!(hook, h, &provisional);
    let flow = new_flow(h, fe, &choice, len, now);
    // The source the flow takes: the SNAT address, else the client's own unless the backend
    // already talks to that client address and port for another flow (then a remapped port).
    let (snat_addr, reason) = match snat {
        Some(addr) => (addr, Reason::DnatNew),
        None => match flow.create_plain() {
            Created::Tracked => return Action::Rewrite(Reason::DnatNew, dnat, route),
            Created::Untracked => return Action::Rewrite(Reason::DnatNewUntracked, dnat, route),
            Created::Clash => (h.saddr, Reason::DnatNewPortRemap),
        },
    };
    match flow.create_snat(snat_addr, choice.hash) {
        Some(port) => Action::Rewrite(reason, dnat.with_src(snat_addr, port), route),
        None => Action::Drop(Reason::DropSnatExhausted),
    }
}

/// Commits to a new flow once its packet is known to be this hook's: the client's affinity
/// (with a timeout), the frontend's new-flow count; returns the flow, whose conntrack entries
/// the caller creates.
#[inline(always)]
fn new_flow<'a>(
    h: &'a Headers,
    fe: &Frontend,
    choice: &'a Choice,
    len: u64,
    now: u64,
) -> NewFlow<'a> {
    if fe.affinity_timeout_s != 0 {
        let akey = AffinityKey {
            frontend_id: fe.id,
            client_addr_be: h.saddr,
        };
        let aff = Affinity {
            last_seen_ns: now,
            backend_id: choice.backend_id,
            _pad: 0,
        };
        // Without an entry the client merely loses its affinity: nothing to count.
        let _ = LB_AFFINITY.insert(akey, aff, BPF_ANY as u64);
    }
    count_frontend(fe.id, len, true);
    NewFlow {
        h,
        frontend_id: fe.id,
        backend_id: choice.backend_id,
        backend: &choice.backend,
        now,
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

/// The backend chosen for a new flow, and the flow's hash.
struct Choice {
    backend_id: u32,
    backend: Backend,
    hash: u32,
}

/// Chooses the backend of a new flow: the client's affinity while it lasts, else the slot of
/// the flow's hash. Writes nothing: [`new_flow`] records the choice as the client's affinity
/// once the packet is the hook's to send.
#[inline(always)]
fn choose(h: &Headers, fe: &Frontend, now: u64) -> Option<Choice> {
    let hash = flow_hash(h.saddr, h.daddr, h.sport, h.dport, h.proto);
    let timeout_ns = fe.affinity_timeout_s as u64 * 1_000_000_000;
    if timeout_ns != 0 {
        let akey = AffinityKey {
            frontend_id: fe.id,
            client_addr_be: h.saddr,
        };
        // SAFETY: copied out at once.
        if let Some(aff) = unsafe { LB_AFFINITY.get(akey) }.copied() {
            if now.saturating_sub(aff.last_seen_ns) <= timeout_ns {
                if let Some(backend) = backend_of(fe.id, aff.backend_id) {
                    return Some(Choice {
                        backend_id: aff.backend_id,
                        backend,
                        hash,
                    });
                }
            }
        }
    }
    let skey = SlotKey {
        frontend_id: fe.id,
        slot: slot_of(hash, fe.slot_count),
    };
    // SAFETY: copied out at once.
    let backend_id = unsafe { LB_SLOTS.get(skey) }?.backend_id;
    let backend = backend_of(fe.id, backend_id)?;
    Some(Choice {
        backend_id,
        backend,
        hash,
    })
}
