//! The hooks the decision runs on (XDP, tc), and how each rewrites a packet.
//!
//! XDP writes the packet directly and fixes checksums with RFC 1624 arithmetic. It cannot see
//! `skb->ip_summed`, so on pod interfaces (`lb_xdp_pod`), where packets from local sockets carry
//! only the pseudo-header seed (CHECKSUM_PARTIAL), it recognises a seed by value and updates it
//! as a seed. tc uses the kernel's checksum helpers, which know `ip_summed` and are exact.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{
        bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use lb_common::{
    csum,
    maps::PROTO_UDP,
    verdict::{Path, Reason},
};

use crate::{
    lb::{decide, Action, Nat},
    parse::{parse, ptr_at, Headers, Parsed, ETH_LEN},
    reject,
    stats::{count_path, count_verdict},
};

/// A program type the load balancer runs on.
pub trait Hook {
    type Verdict: Copy;
    /// Let the packet continue (to the next program or the stack).
    const PASS: Self::Verdict;
    const DROP: Self::Verdict;
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// Length of the whole packet.
    fn len(&self) -> u64;
    /// Makes the headers directly readable, where the hook needs that.
    fn prepare(&self) {}
    /// Rewrites the destination and/or source address and port of a parsed packet, with
    /// checksums.
    /// Returns whether the L4 checksum was a CHECKSUM_PARTIAL seed.
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<bool>;
    /// The address a new flow from `h` to `backend_addr` must take as its source, when the
    /// backend is reached back out of the device the packet came in on (another node).
    fn snat_source(&self, _h: &Headers, _backend_addr: u32) -> Option<u32> {
        None
    }
    /// The verdict for a rewritten packet: where it goes next.
    fn forward(&self, _h: &Headers, _nat: &Nat, _partial: bool) -> Self::Verdict {
        Self::PASS
    }
    /// Whether [`Hook::reject`] can send a reply from this hook.
    const CAN_REJECT: bool = true;
    /// Turns the packet into an ICMP port unreachable to its sender and returns the verdict
    /// that sends it back.
    fn reject(&self, h: &Headers) -> Option<Self::Verdict>;
}

/// Runs the load balancer on one packet and returns the verdict it counted.
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

/// The destination rewrite of `nat` (meaningful when `nat.dst`).
#[inline(always)]
fn dst_change(h: &Headers, nat: &Nat) -> Change {
    Change {
        addr_off: h.l3_off + 16,
        port_off: h.l4_off + 2,
        old_addr: h.daddr,
        new_addr: nat.dst_addr,
        old_port: h.dport,
        new_port: nat.dst_port,
    }
}

/// The source rewrite of `nat` (meaningful when `nat.src`).
#[inline(always)]
fn src_change(h: &Headers, nat: &Nat) -> Change {
    Change {
        addr_off: h.l3_off + 12,
        port_off: h.l4_off,
        old_addr: h.saddr,
        new_addr: nat.src_addr,
        old_port: h.sport,
        new_port: nat.src_port,
    }
}

/// One side's rewrite.
#[derive(Clone, Copy)]
struct Change {
    addr_off: usize,
    port_off: usize,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
}

/// Where an XDP program is attached.
pub mod at {
    /// A node device that is a physical NIC: every packet carries a full checksum.
    pub const NIC: u8 = 0;
    /// A node device that is a veth (nodes in containers, the test topology): packets may
    /// carry CHECKSUM_PARTIAL seeds, which XDP_TX would strip of their `ip_summed`, so such
    /// packets go to the stack after the rewrite.
    pub const VETH_NIC: u8 = 1;
    /// The host side of a pod's veth: seeds, and XDP_TX cannot reach the pod.
    pub const POD: u8 = 2;
}

/// XDP, attached at `AT` (one of [`at`]).
pub struct Xdp<'a, const AT: u8>(pub &'a XdpContext);

impl<const AT: u8> Xdp<'_, AT> {
    const POD: bool = AT == at::POD;
    /// Packets may carry CHECKSUM_PARTIAL seeds, recognised by value.
    const SEEDS: bool = AT != at::NIC;
}

impl<const AT: u8> Hook for Xdp<'_, AT> {
    type Verdict = u32;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    /// XDP_TX on the host side of a veth goes nowhere unless the pod's side runs NAPI (XDP or
    /// GRO there), which a pod's interface does not by default: pod hooks drop instead.
    const CAN_REJECT: bool = AT != at::POD;

    #[inline(always)]
    fn start(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        (self.0.data_end() - self.0.data()) as u64
    }

    #[inline(always)]
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<bool> {
        // Every access below goes through these pointers, checked against one load of the
        // packet bounds, so the verifier sees each write covered.
        let (s, e) = (self.start(), self.end());
        let ip = ptr_at::<[u8; 20]>(s, e, h.l3_off)?;
        let ports = ptr_at::<[u8; 4]>(s, e, h.l4_off)?;
        let check = ptr_at::<[u8; 2]>(s, e, h.l4_csum_off())?;
        // SAFETY: bounds-checked by ptr_at just above; the three do not overlap.
        let (ip, ports, check) = unsafe { (&mut *ip, &mut *ports, &mut *check) };
        let orig = u16::from_ne_bytes(*check);
        let seed = csum::pseudo_header_seed(h.saddr, h.daddr, h.proto, h.l4_len);
        let mut sums = Sums {
            ip: u16::from_ne_bytes([ip[10], ip[11]]),
            l4: orig,
            partial: Self::SEEDS && orig == seed,
            no_l4: h.proto == PROTO_UDP && orig == 0,
        };
        if nat.dst {
            let c = dst_change(h, nat);
            sums.fold(&c);
            ip[16..20].copy_from_slice(&c.new_addr.to_ne_bytes());
            ports[2..4].copy_from_slice(&c.new_port.to_ne_bytes());
        }
        if nat.src {
            let c = src_change(h, nat);
            sums.fold(&c);
            ip[12..16].copy_from_slice(&c.new_addr.to_ne_bytes());
            ports[0..2].copy_from_slice(&c.new_port.to_ne_bytes());
        }
        if h.proto == PROTO_UDP && !sums.partial && !sums.no_l4 && sums.l4 == 0 {
            sums.l4 = 0xffff;
        }
        ip[10..12].copy_from_slice(&sums.ip.to_ne_bytes());
        *check = sums.l4.to_ne_bytes();
        Some(sums.partial)
    }

    /// On node devices: a backend whose route leaves by the device the packet came in on is
    /// behind another node; the flow then takes the address the route would use as source.
    #[inline(always)]
    fn snat_source(&self, h: &Headers, backend_addr: u32) -> Option<u32> {
        if Self::POD {
            return None;
        }
        let ingress = self.0.ingress_ifindex() as u32;
        let mut p = fib_params(h.proto, h.sport, h.dport, 0, backend_addr, ingress, 0);
        let flags = BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
        // SAFETY: `p` is a valid, initialised bpf_fib_lookup on the stack.
        let r = unsafe {
            bpf_fib_lookup(
                self.0.ctx as *mut _,
                &mut p,
                core::mem::size_of::<bpf_fib_lookup>() as i32,
                flags,
            )
        };
        if r != BPF_FIB_LKUP_RET_SUCCESS as i64 || p.ifindex != ingress {
            return None;
        }
        // SAFETY: the kernel filled ipv4_src (BPF_FIB_LOOKUP_SRC).
        Some(unsafe { p.__bindgen_anon_3.ipv4_src })
    }

    /// On node devices: a packet routed back out of the device it came in on is sent from
    /// XDP (XDP_TX) with the FIB's MAC addresses and TTL decremented; anything else goes to
    /// the stack. Pod hooks always pass.
    #[inline(always)]
    fn forward(&self, h: &Headers, nat: &Nat, partial: bool) -> u32 {
        if Self::POD {
            return xdp_action::XDP_PASS;
        }
        // XDP_TX would hand the frame on without its CHECKSUM_PARTIAL mark, and the receiver
        // would then check the seed as a full checksum: the stack forwards such packets.
        let path = if partial {
            Path::PassPartial
        } else {
            self.fib_forward(h, nat)
        };
        count_path(path, self.len());
        if path == Path::Tx {
            xdp_action::XDP_TX
        } else {
            xdp_action::XDP_PASS
        }
    }

    #[inline(always)]
    fn reject(&self, h: &Headers) -> Option<u32> {
        let (ip, icmp, new_len) = reject::headers(self.start(), self.end(), h)?;
        let mut eth =
            *ptr_at::<[u8; ETH_LEN]>(self.start(), self.end(), 0).map(|p| unsafe { &*p })?;
        reject::swap_macs(&mut eth);
        let old_len = self.end() - self.start();
        let ctx = self.0.ctx;
        // Room for the new IP and ICMP headers in front of the quoted IP header.
        // SAFETY: helper calls on this program's own context.
        if unsafe { bpf_xdp_adjust_head(ctx, -(reject::ADDED as i32)) } != 0 {
            return None;
        }
        let delta = new_len as i32 - (old_len + reject::ADDED) as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx, delta) } != 0 {
            return None;
        }
        let (s, e) = (self.start(), self.end());
        let out = ptr_at::<[u8; ETH_LEN + reject::ADDED]>(s, e, 0)?;
        // SAFETY: bounds-checked by ptr_at; the packet pointers were re-read after the helpers.
        let out = unsafe { &mut *out };
        out[..ETH_LEN].copy_from_slice(&eth);
        out[ETH_LEN..ETH_LEN + 20].copy_from_slice(&ip);
        out[ETH_LEN + 20..].copy_from_slice(&icmp);
        Some(xdp_action::XDP_TX)
    }
}

/// Checksums being updated through a rewrite.
struct Sums {
    ip: u16,
    l4: u16,
    /// The L4 field holds a CHECKSUM_PARTIAL seed.
    partial: bool,
    /// UDP without checksum.
    no_l4: bool,
}

impl Sums {
    /// Folds one side's address and port change into the checksums.
    #[inline(always)]
    fn fold(&mut self, c: &Change) {
        self.ip = csum::replace4(self.ip, c.old_addr, c.new_addr);
        if self.partial {
            // Ports are not part of the pseudo-header seed.
            self.l4 = csum::seed_replace4(self.l4, c.old_addr, c.new_addr);
        } else if !self.no_l4 {
            self.l4 = csum::replace4(self.l4, c.old_addr, c.new_addr);
            self.l4 = csum::replace2(self.l4, c.old_port, c.new_port);
        }
    }
}

impl<const AT: u8> Xdp<'_, AT> {
    /// Looks up the rewritten packet's next hop; on success out of the ingress device,
    /// rewrites the MACs and TTL for XDP_TX.
    #[inline(always)]
    fn fib_forward(&self, h: &Headers, nat: &Nat) -> Path {
        let (saddr, sport) = if nat.src {
            (nat.src_addr, nat.src_port)
        } else {
            (h.saddr, h.sport)
        };
        let (daddr, dport) = if nat.dst {
            (nat.dst_addr, nat.dst_port)
        } else {
            (h.daddr, h.dport)
        };
        let ingress = self.0.ingress_ifindex() as u32;
        let tot_len = h.l4_len + (h.l4_off - h.l3_off) as u16;
        let mut p = fib_params(h.proto, sport, dport, saddr, daddr, ingress, tot_len);
        // SAFETY: `p` is a valid, initialised bpf_fib_lookup on the stack.
        let r = unsafe {
            bpf_fib_lookup(
                self.0.ctx as *mut _,
                &mut p,
                core::mem::size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        };
        let found = r == BPF_FIB_LKUP_RET_SUCCESS as i64;
        let no_neigh = r == BPF_FIB_LKUP_RET_NO_NEIGH as i64;
        if (found || no_neigh) && p.ifindex != ingress {
            // Another interface of this node (a pod): the stack delivers it.
            return Path::PassLocal;
        }
        if no_neigh {
            return Path::PassNoNeigh;
        }
        if !found {
            return Path::PassFib;
        }
        let (s, e) = (self.start(), self.end());
        let (Some(eth), Some(ttl_proto), Some(ip_check)) = (
            ptr_at::<[u8; 12]>(s, e, 0),
            ptr_at::<[u8; 2]>(s, e, h.l3_off + 8),
            ptr_at::<u16>(s, e, h.l3_off + 10),
        ) else {
            return Path::PassFib;
        };
        // SAFETY: bounds-checked by ptr_at just above.
        unsafe {
            let old = *ttl_proto;
            if old[0] <= 1 {
                // The stack answers with time exceeded.
                return Path::PassFib;
            }
            let new = [old[0] - 1, old[1]];
            *ttl_proto = new;
            let c = core::ptr::read_unaligned(ip_check);
            let c = csum::replace2(c, u16::from_ne_bytes(old), u16::from_ne_bytes(new));
            core::ptr::write_unaligned(ip_check, c);
            let eth = &mut *eth;
            eth[0..6].copy_from_slice(&p.dmac);
            eth[6..12].copy_from_slice(&p.smac);
        }
        Path::Tx
    }
}

/// A FIB lookup request for an IPv4 flow (addresses and ports raw, `tot_len` host order).
#[inline(always)]
fn fib_params(
    proto: u8,
    sport: u16,
    dport: u16,
    saddr: u32,
    daddr: u32,
    ifindex: u32,
    tot_len: u16,
) -> bpf_fib_lookup {
    // SAFETY: bpf_fib_lookup is plain data; all zeroes is a valid value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = sport;
    p.dport = dport;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ifindex;
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    p
}

/// AF_INET.
const AF_INET: u8 = 2;

/// tc (tcx ingress). Rewrites through `bpf_skb_store_bytes` and the checksum helpers.
pub struct Tc<'a>(pub &'a TcContext);

impl Tc<'_> {
    /// Sends a reverse-NATed reply straight to its next hop. Its new source may be one of this
    /// node's addresses (a NodePort reply from a local backend): the stack would drop that as
    /// a martian on a pod interface, so the route is looked up here and the packet
    /// redirected, with the neighbour subsystem filling in the MACs.
    #[inline(always)]
    fn redirect_reply(&self, h: &Headers, nat: &Nat) -> Option<i32> {
        let skb = self.0.skb.skb;
        // SAFETY: reads the context's ingress ifindex.
        let ingress = unsafe { (*skb).ifindex };
        let tot_len = h.l4_len + (h.l4_off - h.l3_off) as u16;
        let (daddr, dport) = if nat.dst {
            (nat.dst_addr, nat.dst_port)
        } else {
            (h.daddr, h.dport)
        };
        let mut p = fib_params(
            h.proto,
            nat.src_port,
            dport,
            nat.src_addr,
            daddr,
            ingress,
            tot_len,
        );
        // SAFETY: `p` is a valid, initialised bpf_fib_lookup on the stack.
        let r = unsafe {
            bpf_fib_lookup(
                skb as *mut _,
                &mut p,
                core::mem::size_of::<bpf_fib_lookup>() as i32,
                BPF_FIB_LOOKUP_SKIP_NEIGH,
            )
        };
        if r != BPF_FIB_LKUP_RET_SUCCESS as i64 || p.ifindex == ingress {
            return None;
        }
        let ttl_proto: [u8; 2] = self.0.load(h.l3_off + 8).ok()?;
        if ttl_proto[0] <= 1 {
            return None;
        }
        let new = [ttl_proto[0] - 1, ttl_proto[1]];
        let (old_w, new_w) = (
            u16::from_ne_bytes(ttl_proto) as u64,
            u16::from_ne_bytes(new) as u64,
        );
        self.0
            .l3_csum_replace(h.l3_off + 10, old_w, new_w, 2)
            .ok()?;
        self.0.store(h.l3_off + 8, &new, 0).ok()?;
        // SAFETY: the helper only queues the redirect; a null params lets it use the route.
        let r = unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) };
        (r == TC_ACT_REDIRECT as i64).then_some(TC_ACT_REDIRECT as _)
    }

    /// Writes one side's new address and port with the kernel's checksum helpers.
    #[inline(always)]
    fn apply(&self, h: &Headers, c: &Change) -> Option<()> {
        let mangled = if h.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let csum_off = h.l4_csum_off();
        let ctx = self.0;
        let (old_a, new_a) = (c.old_addr as u64, c.new_addr as u64);
        let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled | 4;
        ctx.l4_csum_replace(csum_off, old_a, new_a, pseudo).ok()?;
        let (old_p, new_p) = (c.old_port as u64, c.new_port as u64);
        ctx.l4_csum_replace(csum_off, old_p, new_p, mangled | 2)
            .ok()?;
        ctx.l3_csum_replace(h.l3_off + 10, old_a, new_a, 4).ok()?;
        ctx.store(c.addr_off, &c.new_addr, 0).ok()?;
        ctx.store(c.port_off, &c.new_port, 0).ok()?;
        Some(())
    }
}

/// Ethernet + the longest IPv4 header + a TCP header: what must be linear for direct reads.
const TC_PULL_LEN: usize = ETH_LEN + 60 + 20;

impl Hook for Tc<'_> {
    type Verdict = i32;
    const PASS: i32 = TC_ACT_UNSPEC;
    const DROP: i32 = TC_ACT_SHOT as _;

    #[inline(always)]
    fn start(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    #[inline(always)]
    fn prepare(&self) {
        let linear = self.0.data_end() - self.0.data();
        let total = self.0.len() as usize;
        if linear < TC_PULL_LEN && total > linear {
            let want = if total < TC_PULL_LEN {
                total
            } else {
                TC_PULL_LEN
            };
            // On failure the parser sees what is linear and passes the packet as malformed.
            let _ = self.0.pull_data(want as u32);
        }
    }

    #[inline(always)]
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<bool> {
        if nat.dst {
            self.apply(h, &dst_change(h, nat))?;
        }
        if nat.src {
            self.apply(h, &src_change(h, nat))?;
        }
        // The helpers keep CHECKSUM_PARTIAL packets right; nothing to report.
        Some(false)
    }

    #[inline(always)]
    fn forward(&self, h: &Headers, nat: &Nat, _partial: bool) -> i32 {
        if !nat.reply {
            return Self::PASS;
        }
        self.redirect_reply(h, nat).unwrap_or(Self::PASS)
    }

    #[inline(always)]
    fn reject(&self, h: &Headers) -> Option<i32> {
        let ctx = self.0;
        let (ip, icmp, new_len) = reject::headers(self.start(), self.end(), h)?;
        let mut eth =
            *ptr_at::<[u8; ETH_LEN]>(self.start(), self.end(), 0).map(|p| unsafe { &*p })?;
        reject::swap_macs(&mut eth);
        ctx.adjust_room(reject::ADDED as i32, BPF_ADJ_ROOM_MAC, 0)
            .ok()?;
        let skb = ctx.skb.skb;
        // SAFETY: helper call on this program's own context.
        if unsafe { bpf_skb_change_tail(skb, new_len as u32, 0) } != 0 {
            return None;
        }
        ctx.store(0, &eth, 0).ok()?;
        ctx.store(ETH_LEN, &ip, 0).ok()?;
        ctx.store(ETH_LEN + 20, &icmp, 0).ok()?;
        // Back out of the interface it came in on: towards the pod.
        // SAFETY: reads the context's ifindex; the helper only queues the redirect.
        let ifindex = unsafe { (*skb).ifindex };
        let r = unsafe { bpf_redirect(ifindex, 0) };
        (r == TC_ACT_REDIRECT as i64).then_some(TC_ACT_REDIRECT as _)
    }
}
