//! The tc hook (tcx ingress): how a tc program reads, rewrites, forwards and rejects a packet,
//! on a pod's interface (`lb_tc`) or on a node device (`lb_tc_nic`).
//!
//! tc rewrites through `bpf_skb_store_bytes` and the kernel's checksum helpers, which know
//! `skb->ip_summed` and so are exact for CHECKSUM_PARTIAL packets from local sockets too.
//! It sends every packet it rewrites itself: the FIB names the device and next hop, the TTL
//! drops by one and `bpf_redirect_neigh` transmits with the neighbour subsystem's MACs, into
//! whatever that device is (a pod's veth, a NIC, a veth whose peer runs nothing, a VXLAN
//! device). So the stack, and with it netfilter's conntrack, sees neither direction of a
//! translated flow, and a packet from one of this node's own addresses (a NodePort reply, a
//! SNATed flow) never meets the stack's martian check. What the FIB does not forward (a
//! destination on this node itself, no route) or cannot (forwarding off, MTU, TTL 1) goes to
//! the stack, counted.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh, BPF_FIB_LOOKUP_SKIP_NEIGH,
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail},
    programs::TcContext,
};
use lb_common::{maps::PROTO_UDP, verdict::Path};

use crate::{
    fib,
    hook::{dst_change, src_change, Change, Hook, Nat},
    parse::{Headers, ETH_LEN},
    reject,
    stats::count_path,
};

/// Where a tc program is attached.
pub mod at {
    /// The host side of a pod's veth (`lb_tc`): pod traffic is never SNATed, except hairpin.
    pub const POD: u8 = 0;
    /// A node device (`lb_tc_nic`): NodePorts, external IPs and load-balancer IPs from
    /// outside, replies from other nodes; flows to backends on other nodes are SNATed.
    pub const NIC: u8 = 1;
}

/// AF_INET, for `bpf_redir_neigh`.
const AF_INET: u32 = 2;

/// tc (tcx ingress), attached at `AT` (one of [`at`]).
pub struct Tc<'a, const AT: u8>(pub &'a TcContext);

/// Where a rewritten packet goes: out of a device to a next hop, or to the stack.
#[derive(Clone, Copy)]
pub struct Route {
    /// [`Path::TcRedirect`], [`Path::TcStackNotForwarded`] or [`Path::TcStackFib`].
    path: Path,
    /// The device the route leaves by (with [`Path::TcRedirect`]).
    ifindex: u32,
    /// The next hop (raw): the gateway, or the destination on a connected route.
    next_hop: u32,
}

impl Route {
    #[inline(always)]
    fn stack(path: Path) -> Self {
        Route {
            path,
            ifindex: 0,
            next_hop: 0,
        }
    }
}

impl<const AT: u8> Tc<'_, AT> {
    /// The interface the packet came in on.
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is this program's own context, valid while it runs; one field read.
        unsafe { (*self.0.skb.skb).ifindex }
    }

    /// Decrements the TTL, with the IP checksum.
    #[inline(always)]
    fn decrement_ttl(&self, h: &Headers) -> Option<()> {
        let ttl_proto: [u8; 2] = self.0.load(h.l3_off + 8).ok()?;
        let new = [ttl_proto[0].wrapping_sub(1), ttl_proto[1]];
        let (old_w, new_w) = (
            u16::from_ne_bytes(ttl_proto) as u64,
            u16::from_ne_bytes(new) as u64,
        );
        self.0
            .l3_csum_replace(h.l3_off + 10, old_w, new_w, 2)
            .ok()?;
        self.0.store(h.l3_off + 8, &new, 0).ok()
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

impl<const AT: u8> Hook for Tc<'_, AT> {
    type Verdict = i32;
    type Route = Route;
    const PASS: i32 = TC_ACT_UNSPEC;
    const DROP: i32 = TC_ACT_SHOT as _;
    const NODE_DEVICE: bool = AT == at::NIC;
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

    /// The FIB's route for the rewritten addresses, looked up as the stack would forward the
    /// packet from the device it came in on. Without a length the kernel checks the MTU
    /// against the skb itself, which knows GSO (a pod's TCP sends 64 KB GSO packets).
    #[inline(always)]
    fn route(&self, h: &Headers, nat: &Nat) -> Result<Route, Path> {
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
        let mut p = fib::params(h.proto, sport, dport, saddr, daddr, self.ifindex(), 0);
        let r = fib::lookup(self.0, &mut p, BPF_FIB_LOOKUP_SKIP_NEIGH);
        if r.not_forwarded() {
            return Ok(Route::stack(Path::TcStackNotForwarded));
        }
        let ttl: u8 = match self.0.load(h.l3_off + 8) {
            Ok(t) => t,
            Err(_) => return Ok(Route::stack(Path::TcStackFib)),
        };
        // TTL 1: the stack answers with time exceeded.
        if !r.found() || ttl <= 1 {
            return Ok(Route::stack(Path::TcStackFib));
        }
        Ok(Route {
            path: Path::TcRedirect,
            ifindex: p.ifindex,
            next_hop: fib::next_hop(&p),
        })
    }

    #[inline(always)]
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<()> {
        if nat.dst {
            self.apply(h, &dst_change(h, nat))?;
        }
        if nat.src {
            self.apply(h, &src_change(h, nat))?;
        }
        Some(())
    }

    #[inline(always)]
    fn send(&self, h: &Headers, route: &Route) -> i32 {
        let len = self.len();
        if route.path != Path::TcRedirect || self.decrement_ttl(h).is_none() {
            let path = if route.path == Path::TcRedirect {
                Path::TcStackFib
            } else {
                route.path
            };
            count_path(path, len);
            return Self::PASS;
        }
        let mut nh = bpf_redir_neigh {
            nh_family: AF_INET,
            __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                ipv4_nh: route.next_hop,
            },
        };
        // SAFETY: the helper reads `nh` (of the size passed) during the call and records the
        // target for the TC_ACT_REDIRECT returned.
        let r = unsafe {
            bpf_redirect_neigh(
                route.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        };
        count_path(Path::TcRedirect, len);
        r as i32
    }

    #[inline(always)]
    fn snat_source(&self, h: &Headers, backend_addr: u32) -> Option<u32> {
        fib::source_for(self.0, h, backend_addr, self.ifindex())
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
        // Back out of the interface it came in on, to the sender's MAC: into the pod, or onto
        // the wire towards the client (whatever the device's peer runs).
        // SAFETY: the helper only records the target for the TC_ACT_REDIRECT returned.
        let r = unsafe { bpf_redirect(self.ifindex(), 0) };
        (r == TC_ACT_REDIRECT as i64).then_some(TC_ACT_REDIRECT as _)
    }
}
