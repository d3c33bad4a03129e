//! The hooks the decision runs on (XDP, tc), and how each rewrites a packet.
//!
//! XDP writes the packet directly and fixes checksums with RFC 1624 arithmetic. It cannot see
//! `skb->ip_summed`, so on pod interfaces (`lb_xdp_pod`), where packets from local sockets carry
//! only the pseudo-header seed (CHECKSUM_PARTIAL), it recognises a seed by value and updates it
//! as a seed. tc uses the kernel's checksum helpers, which know `ip_summed` and are exact.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::{TcContext, XdpContext},
};
use lb_common::{csum, maps::PROTO_UDP, verdict::Reason};

use crate::{
    lb::{decide, Action, Nat},
    parse::{parse, ptr_at, Headers, Parsed, ETH_LEN},
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

/// XDP. `DETECT_PARTIAL`: recognise CHECKSUM_PARTIAL seeds (pod interfaces); off on node
/// devices, where every packet carries a full checksum.
pub struct Xdp<'a, const DETECT_PARTIAL: bool>(pub &'a XdpContext);

impl<const DETECT_PARTIAL: bool> Hook for Xdp<'_, DETECT_PARTIAL> {
    type Verdict = u32;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;

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
                let c = if DETECT_PARTIAL && c == seed {
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
}
