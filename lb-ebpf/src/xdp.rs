//! The XDP hook: how an XDP program reads, rewrites, forwards and rejects a packet.
//!
//! XDP writes the packet directly and fixes checksums with RFC 1624 arithmetic. It cannot see
//! `skb->ip_summed`, so on pod interfaces (`lb_xdp_pod`), where packets from local sockets carry
//! only the pseudo-header seed (CHECKSUM_PARTIAL), it recognises a seed by value and updates it
//! as a seed. On node devices it forwards what the FIB sends back out of the same device itself
//! (XDP_TX).

use aya_ebpf::{
    bindings::{xdp_action, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{csum, maps::PROTO_UDP, verdict::Path};

use crate::{
    fib,
    hook::{dst_change, src_change, Change, Hook, Nat},
    parse::{ptr_at, Headers, ETH_LEN},
    reject,
    stats::count_path,
};

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
    const FROM_PODS: bool = AT == at::POD;

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
        let mut p = fib::params(h.proto, h.sport, h.dport, 0, backend_addr, ingress, 0);
        let flags = BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
        if !fib::lookup(self.0, &mut p, flags).found() || p.ifindex != ingress {
            return None;
        }
        Some(fib::source(&p))
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
        let reply = reject::reply(self.start(), self.end(), h)?;
        let old_len = self.end() - self.start();
        let ctx = self.0.ctx;
        // Room for the new IP and ICMP headers in front of the quoted IP header.
        // SAFETY: helper call on this program's own context; it moves only the packet's
        // start, and every pointer into the packet is taken again below.
        if unsafe { bpf_xdp_adjust_head(ctx, -(reject::ADDED as i32)) } != 0 {
            return None;
        }
        let delta = reply.len as i32 - (old_len + reject::ADDED) as i32;
        // SAFETY: as above, for the packet's end.
        if unsafe { bpf_xdp_adjust_tail(ctx, delta) } != 0 {
            return None;
        }
        let (s, e) = (self.start(), self.end());
        let out = ptr_at::<[u8; ETH_LEN + reject::ADDED]>(s, e, 0)?;
        // SAFETY: bounds-checked by ptr_at; the packet pointers were re-read after the helpers.
        let out = unsafe { &mut *out };
        out[..ETH_LEN].copy_from_slice(&reply.eth);
        out[ETH_LEN..ETH_LEN + 20].copy_from_slice(&reply.ip);
        out[ETH_LEN + 20..].copy_from_slice(&reply.icmp);
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
        let mut p = fib::params(h.proto, sport, dport, saddr, daddr, ingress, tot_len);
        let r = fib::lookup(self.0, &mut p, 0);
        let (found, no_neigh) = (r.found(), r.no_neigh());
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
