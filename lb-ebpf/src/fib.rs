//! The kernel's FIB lookup (`bpf_fib_lookup`) for an IPv4 flow, behind one safe function, and
//! the one question both hooks ask it for a new flow: which source address the route to a
//! backend would use ([`source_for`]).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
    },
    helpers::bpf_fib_lookup,
    EbpfContext,
};

use crate::parse::Headers;

/// AF_INET.
const AF_INET: u8 = 2;

/// A FIB lookup request for an IPv4 flow (addresses and ports raw, `tot_len` host order).
#[inline(always)]
pub fn params(
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

/// The kernel's answer to a lookup (`BPF_FIB_LKUP_RET_*`).
#[derive(Clone, Copy)]
pub struct Answer(i64);

impl Answer {
    /// A route and its next hop's MAC: `p.ifindex`, `p.smac`, `p.dmac` and the next hop (see
    /// [`next_hop`]) are filled in; with `BPF_FIB_LOOKUP_SKIP_NEIGH` all but `p.dmac`.
    #[inline(always)]
    pub fn found(self) -> bool {
        self.0 == BPF_FIB_LKUP_RET_SUCCESS as i64
    }

    /// Not a route to forward along: the destination is this node's own (or broadcast, ...).
    #[inline(always)]
    pub fn not_forwarded(self) -> bool {
        self.0 == BPF_FIB_LKUP_RET_NOT_FWDED as i64
    }
}

/// Looks up the route of `p` (see [`params`]) from the program context `ctx`, with the
/// `BPF_FIB_LOOKUP_*` `flags`; the kernel writes the answer into `p`.
#[inline(always)]
pub fn lookup<C: EbpfContext>(ctx: &C, p: &mut bpf_fib_lookup, flags: u32) -> Answer {
    // SAFETY: `ctx` is this program's own context (an xdp_md or a __sk_buff, the two the
    // helper accepts), and `p` a valid, initialised bpf_fib_lookup of the size passed, which
    // the kernel writes only within.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr() as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    Answer(r)
}

/// The next hop a successful lookup found (raw): the gateway, or the destination itself on a
/// directly connected route.
#[inline(always)]
pub fn next_hop(p: &bpf_fib_lookup) -> u32 {
    // SAFETY: a union of a u32 and a [u32; 4]: every bit pattern is a valid u32.
    unsafe { p.__bindgen_anon_4.ipv4_dst }
}

/// The source address this node would use on its route to `daddr` for packet `h`, which came
/// in on `ifindex` (the route's preferred source, else the egress device's address, as
/// kube-proxy's MASQUERADE picks it): `BPF_FIB_LOOKUP_SRC`, Linux 6.7. None without a route.
#[inline(always)]
pub fn source_for<C: EbpfContext>(ctx: &C, h: &Headers, daddr: u32, ifindex: u32) -> Option<u32> {
    let mut p = params(h.proto, h.sport, h.dport, 0, daddr, ifindex, 0);
    let flags = BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
    if !lookup(ctx, &mut p, flags).found() {
        return None;
    }
    // SAFETY: a union of a u32 and a [u32; 4]: every bit pattern is a valid u32.
    Some(unsafe { p.__bindgen_anon_3.ipv4_src })
}
