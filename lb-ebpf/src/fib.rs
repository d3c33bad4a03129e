//! The kernel's FIB lookup (`bpf_fib_lookup`) for an IPv4 flow, behind one safe function.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::bpf_fib_lookup,
    EbpfContext,
};

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
    /// A route and its next hop's MAC: `p.ifindex`, `p.smac`, `p.dmac` (and the source with
    /// `BPF_FIB_LOOKUP_SRC`, see [`source`]) are filled in.
    #[inline(always)]
    pub fn found(self) -> bool {
        self.0 == BPF_FIB_LKUP_RET_SUCCESS as i64
    }

    /// A route, but no neighbour entry for its next hop yet: `p.ifindex` is filled in.
    #[inline(always)]
    pub fn no_neigh(self) -> bool {
        self.0 == BPF_FIB_LKUP_RET_NO_NEIGH as i64
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

/// The source address a lookup with `BPF_FIB_LOOKUP_SRC` chose (raw).
#[inline(always)]
pub fn source(p: &bpf_fib_lookup) -> u32 {
    // SAFETY: a union of a u32 and a [u32; 4]: every bit pattern is a valid u32.
    unsafe { p.__bindgen_anon_3.ipv4_src }
}
