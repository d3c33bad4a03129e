//! The tc hook (tcx ingress): how a tc program reads, rewrites, forwards and rejects a packet.
//!
//! tc rewrites through `bpf_skb_store_bytes` and the kernel's checksum helpers, which know
//! `skb->ip_summed` and so are exact for CHECKSUM_PARTIAL packets from local sockets too.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_F_MARK_MANGLED_0,
        BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail},
    programs::TcContext,
};
use lb_common::maps::PROTO_UDP;

use crate::{
    fib,
    hook::{dst_change, src_change, Change, Hook, Nat},
    parse::{Headers, ETH_LEN},
    reject,
};

/// tc (tcx ingress).
pub struct Tc<'a>(pub &'a TcContext);

impl Tc<'_> {
    /// The interface the packet came in on.
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is this program's own context, valid while it runs; one field read.
        unsafe { (*self.0.skb.skb).ifindex }
    }

    /// Sends a reverse-NATed reply straight to its next hop. Its new source may be one of this
    /// node's addresses (a NodePort reply from a local backend): the stack would drop that as
    /// a martian on a pod interface, so the route is looked up here and the packet
    /// redirected, with the neighbour subsystem filling in the MACs.
    #[inline(always)]
    fn redirect_reply(&self, h: &Headers, nat: &Nat) -> Option<i32> {
        let ingress = self.ifindex();
        let tot_len = h.l4_len + (h.l4_off - h.l3_off) as u16;
        let (daddr, dport) = if nat.dst {
            (nat.dst_addr, nat.dst_port)
        } else {
            (h.daddr, h.dport)
        };
        let mut p = fib::params(
            h.proto,
            nat.src_port,
            dport,
            nat.src_addr,
            daddr,
            ingress,
            tot_len,
        );
        let r = fib::lookup(self.0, &mut p, BPF_FIB_LOOKUP_SKIP_NEIGH);
        if !r.found() || p.ifindex == ingress {
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
        // SAFETY: the helper only records the target for the TC_ACT_REDIRECT returned; a null
        // params lets it use the route.
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
    /// `lb_tc` is attached to pod interfaces only.
    const FROM_PODS: bool = true;

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
        let reply = reject::reply(self.start(), self.end(), h)?;
        ctx.adjust_room(reject::ADDED as i32, BPF_ADJ_ROOM_MAC, 0)
            .ok()?;
        // SAFETY: helper call on this program's own context, which it resizes; nothing here
        // holds a pointer into the packet across it.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, reply.len as u32, 0) } != 0 {
            return None;
        }
        ctx.store(0, &reply.eth, 0).ok()?;
        ctx.store(ETH_LEN, &reply.ip, 0).ok()?;
        ctx.store(ETH_LEN + 20, &reply.icmp, 0).ok()?;
        // Back out of the interface it came in on: towards the pod.
        // SAFETY: the helper only records the target for the TC_ACT_REDIRECT returned.
        let r = unsafe { bpf_redirect(self.ifindex(), 0) };
        (r == TC_ACT_REDIRECT as i64).then_some(TC_ACT_REDIRECT as _)
    }
}
