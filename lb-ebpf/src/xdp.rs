//! The XDP hook: how an XDP program reads, rewrites, forwards and rejects a packet.
//!
//! XDP writes the packet directly and fixes checksums with RFC 1624 arithmetic. It cannot see
//! `skb->ip_summed`: on pod interfaces (`lb_xdp_pod`), where packets from local sockets carry
//! only the pseudo-header seed (CHECKSUM_PARTIAL), it recognises a seed by value and updates it
//! as a seed, and hands every rewritten packet to the stack.
//!
//! On node devices (`lb_xdp`) XDP is an accelerator in front of the tc program (`lb_tc_nic`):
//! it finishes only what it can send itself, back out of the device it came in on (XDP_TX:
//! the FIB says so, and the packet carries no seed, which XDP_TX would hand on as a full
//! checksum), and the reject. Everything else it leaves untouched, before writing any state,
//! for tc to decide (`Path::XdpPassTc`, `Path::XdpPassPartial`).

use aya_ebpf::{
    bindings::xdp_action,
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
    /// A node device: the accelerator in front of tc.
    pub const NIC: u8 = 0;
    /// The host side of a pod's veth: seeds, and XDP_TX cannot reach the pod.
    pub const POD: u8 = 1;
}

/// XDP, attached at `AT` (one of [`at`]).
pub struct Xdp<'a, const AT: u8>(pub &'a XdpContext);

/// Where an accelerated packet goes: back out of its device, to these MACs (for pod hooks,
/// unused: the stack).
#[derive(Clone, Copy)]
pub struct Route {
    dmac: [u8; 6],
    smac: [u8; 6],
}

impl<const AT: u8> Xdp<'_, AT> {
    const POD: bool = AT == at::POD;
}

impl<const AT: u8> Hook for Xdp<'_, AT> {
    type Verdict = u32;
    type Route = Route;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const NODE_DEVICE: bool = !Self::POD;
    const ACCELERATOR: bool = !Self::POD;
    /// XDP_TX on the host side of a veth goes nowhere unless the pod's side runs NAPI (XDP or
    /// GRO there), which a pod's interface does not by default: pod hooks drop instead.
    const CAN_REJECT: bool = !Self::POD;
    const FROM_PODS: bool = Self::POD;

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

    /// Pod hooks: the stack. Node devices: XDP_TX when the FIB sends the rewritten packet back
    /// out of the device it came in on and it carries no seed; else left to tc.
    #[inline(always)]
    fn route(&self, h: &Headers, nat: &Nat) -> Result<Route, Path> {
        if Self::POD {
            return Ok(Route {
                dmac: [0; 6],
                smac: [0; 6],
            });
        }
        if self.carries_seed(h) {
            return Err(Path::XdpPassPartial);
        }
        self.fib_route(h, nat).ok_or(Path::XdpPassTc)
    }

    #[inline(always)]
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<()> {
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
        // Node devices route no seed here (see `route`).
        let mut sums = Sums {
            ip: u16::from_ne_bytes([ip[10], ip[11]]),
            l4: orig,
            partial: Self::POD && orig == seed,
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
        Some(())
    }

    /// Node devices: the FIB's MACs and TTL - 1, then XDP_TX. Pod hooks: the stack.
    #[inline(always)]
    fn send(&self, h: &Headers, route: &Route) -> u32 {
        if Self::POD {
            return xdp_action::XDP_PASS;
        }
        let (s, e) = (self.start(), self.end());
        let (Some(eth), Some(ttl_proto), Some(ip_check)) = (
            ptr_at::<[u8; 12]>(s, e, 0),
            ptr_at::<[u8; 2]>(s, e, h.l3_off + 8),
            ptr_at::<u16>(s, e, h.l3_off + 10),
        ) else {
            // Checked by `route` on the same packet: cannot happen.
            return xdp_action::XDP_DROP;
        };
        // SAFETY: bounds-checked by ptr_at just above.
        unsafe {
            let old = *ttl_proto;
            let new = [old[0].wrapping_sub(1), old[1]];
            *ttl_proto = new;
            let c = core::ptr::read_unaligned(ip_check);
            let c = csum::replace2(c, u16::from_ne_bytes(old), u16::from_ne_bytes(new));
            core::ptr::write_unaligned(ip_check, c);
            let eth = &mut *eth;
            eth[0..6].copy_from_slice(&route.dmac);
            eth[6..12].copy_from_slice(&route.smac);
        }
        count_path(Path::XdpTx, self.len());
        xdp_action::XDP_TX
    }

    /// On node devices: this node's address on the route to the backend.
    #[inline(always)]
    fn snat_source(&self, h: &Headers, backend_addr: u32) -> Option<u32> {
        if Self::POD {
            return None;
        }
        fib::source_for(self.0, h, backend_addr, self.0.ingress_ifindex() as u32)
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
    /// Whether the packet's L4 checksum field holds its own pseudo-header seed: a
    /// CHECKSUM_PARTIAL packet from a local socket (on a veth node device), or, once in 65,536,
    /// a full checksum of that value (tc then handles it, exactly).
    #[inline(always)]
    fn carries_seed(&self, h: &Headers) -> bool {
        let Some(check) = ptr_at::<[u8; 2]>(self.start(), self.end(), h.l4_csum_off()) else {
            return false;
        };
        // SAFETY: bounds-checked by ptr_at just above.
        let orig = u16::from_ne_bytes(unsafe { *check });
        let no_l4 = h.proto == PROTO_UDP && orig == 0;
        !no_l4 && orig == csum::pseudo_header_seed(h.saddr, h.daddr, h.proto, h.l4_len)
    }

    /// The route of the rewritten packet if it leaves back out of the ingress device with a
    /// known next hop and TTL to spare: the MACs to write for XDP_TX.
    #[inline(always)]
    fn fib_route(&self, h: &Headers, nat: &Nat) -> Option<Route> {
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
        if !fib::lookup(self.0, &mut p, 0).found() || p.ifindex != ingress {
            return None;
        }
        let ttl = ptr_at::<u8>(self.start(), self.end(), h.l3_off + 8)?;
        // SAFETY: bounds-checked by ptr_at just above.
        if unsafe { *ttl } <= 1 {
            // tc hands it to the stack, which answers with time exceeded.
            return None;
        }
        Some(Route {
            dmac: p.dmac,
            smac: p.smac,
        })
    }
}
