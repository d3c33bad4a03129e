//! The hooks the decision runs on (XDP, tc), and how each rewrites a packet.
//!
//! XDP writes the packet directly and fixes checksums with RFC 1624 arithmetic. It cannot see
//! `skb->ip_summed`, so on pod interfaces (`lb_xdp_pod`), where packets from local sockets carry
//! only the pseudo-header seed (CHECKSUM_PARTIAL), it recognises a seed by value and updates it
//! as a seed. tc uses the kernel's checksum helpers, which know `ip_summed` and are exact.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};
use lb_common::{csum, maps::PROTO_UDP, verdict::Reason};

use crate::{
    lb::{decide, Action, Nat},
    parse::{parse, ptr_at, Headers, Parsed, ETH_LEN},
    reject,
    stats::count_verdict,
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
    /// Rewrites one side's address and port of a parsed packet, with checksums.
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<()>;
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
        Parsed::L4(h) => match decide(&h, len) {
            (reason, Action::Pass) => (reason, H::PASS),
            (reason, Action::Drop) => (reason, H::DROP),
            (_, Action::Reject) if !H::CAN_REJECT => (Reason::RejectDropped, H::DROP),
            (reason, Action::Reject) => match hook.reject(&h) {
                Some(v) => (reason, v),
                None => (Reason::AbortRewrite, H::DROP),
            },
            (reason, Action::Rewrite(nat)) => match hook.rewrite(&h, &nat) {
                Some(()) => (reason, H::PASS),
                None => (Reason::AbortRewrite, H::DROP),
            },
        },
    };
    count_verdict(reason, len);
    verdict
}

#[inline(always)]
fn field_offsets(h: &Headers, nat: &Nat) -> (usize, usize) {
    if nat.dst {
        (h.l3_off + 16, h.l4_off + 2)
    } else {
        (h.l3_off + 12, h.l4_off)
    }
}

/// XDP. `POD`: on the host side of pod interfaces, where packets from local sockets carry
/// CHECKSUM_PARTIAL seeds (recognised and updated as seeds) and XDP_TX cannot reach the pod.
/// Off on node devices, where every packet carries a full checksum.
pub struct Xdp<'a, const POD: bool>(pub &'a XdpContext);

impl<const POD: bool> Hook for Xdp<'_, POD> {
    type Verdict = u32;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    /// XDP_TX on the host side of a veth goes nowhere unless the pod's side runs NAPI (XDP or
    /// GRO there), which a pod's interface does not by default: pod hooks drop instead.
    const CAN_REJECT: bool = !POD;

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
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<()> {
        let (s, e) = (self.start(), self.end());
        let (addr_off, port_off) = field_offsets(h, nat);
        let ip_check = ptr_at::<u16>(s, e, h.l3_off + 10)?;
        let l4_check = ptr_at::<u16>(s, e, h.l4_csum_off())?;
        let addr = ptr_at::<u32>(s, e, addr_off)?;
        let port = ptr_at::<u16>(s, e, port_off)?;
        // SAFETY: every pointer was bounds-checked against the packet just above.
        unsafe {
            let c = core::ptr::read_unaligned(ip_check);
            core::ptr::write_unaligned(ip_check, csum::replace4(c, nat.old_addr, nat.new_addr));
            let c = core::ptr::read_unaligned(l4_check);
            let udp = h.proto == PROTO_UDP;
            if !(udp && c == 0) {
                let seed = csum::pseudo_header_seed(h.saddr, h.daddr, h.proto, h.l4_len);
                let c = if POD && c == seed {
                    csum::seed_replace4(c, nat.old_addr, nat.new_addr)
                } else {
                    let c = csum::replace4(c, nat.old_addr, nat.new_addr);
                    match csum::replace2(c, nat.old_port, nat.new_port) {
                        0 if udp => 0xffff,
                        c => c,
                    }
                };
                core::ptr::write_unaligned(l4_check, c);
            }
            core::ptr::write_unaligned(addr, nat.new_addr);
            core::ptr::write_unaligned(port, nat.new_port);
        }
        Some(())
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

/// tc (tcx ingress). Rewrites through `bpf_skb_store_bytes` and the checksum helpers.
pub struct Tc<'a>(pub &'a TcContext);

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
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<()> {
        let (addr_off, port_off) = field_offsets(h, nat);
        let mangled = if h.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let csum_off = h.l4_csum_off();
        let ctx = self.0;
        ctx.l4_csum_replace(
            csum_off,
            nat.old_addr as u64,
            nat.new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .ok()?;
        ctx.l4_csum_replace(
            csum_off,
            nat.old_port as u64,
            nat.new_port as u64,
            mangled | 2,
        )
        .ok()?;
        ctx.l3_csum_replace(h.l3_off + 10, nat.old_addr as u64, nat.new_addr as u64, 4)
            .ok()?;
        ctx.store(addr_off, &nat.new_addr, 0).ok()?;
        ctx.store(port_off, &nat.new_port, 0).ok()?;
        Some(())
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
        (r == TC_ACT_REDIRECT as i64).then_some(TC_ACT_REDIRECT as i32)
    }
}
