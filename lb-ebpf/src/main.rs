//! Entry points of the load balancer's kernel programs: each runs `lb::run` on its hook
//! (`xdp.rs`, `tc.rs`); the work lives in the modules below.
#![no_std]
#![no_main]

mod conntrack;
mod fib;
mod hook;
mod lb;
mod maps;
mod parse;
mod reject;
mod stats;
mod tc;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{tc::Tc, xdp::Xdp};

/// XDP on node devices (`--lb-acceleration`): the accelerator in front of `lb_tc_nic`, which
/// finishes what it can send back out of the device (XDP_TX) and leaves the rest untouched.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    lb::run(&Xdp::<{ xdp::at::NIC }>(&ctx))
}

/// XDP on the host side of pod interfaces (`--pod-hook xdp`): may see CHECKSUM_PARTIAL seeds.
#[xdp]
pub fn lb_xdp_pod(ctx: XdpContext) -> u32 {
    lb::run(&Xdp::<{ xdp::at::POD }>(&ctx))
}

/// Passes every packet: the floor the benchmarks compare against, and what the one test
/// topology with XDP on the wire attaches to the far side of a veth that plays a wire, so XDP_TX
/// into that veth is received (a veth only receives XDP frames when its peer runs NAPI, which an
/// XDP program turns on).
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Benchmark floor (`cargo xtask bench packet`): exactly one `LB_FRONTENDS` lookup, keyed by
/// the IPv4 destination address and the TCP destination port at fixed offsets of an untagged
/// Ethernet frame without IP options, then XDP_PASS whatever it finds. Never attached.
#[xdp]
pub fn lb_lookup1(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let (Some(daddr), Some(dport)) = (
        parse::ptr_at::<u32>(start, end, parse::ETH_LEN + 16),
        parse::ptr_at::<u16>(start, end, parse::ETH_LEN + 20 + 2),
    ) else {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    };
    // SAFETY: both pointers were bounds-checked against the packet by ptr_at.
    let key = unsafe {
        lb_common::maps::FrontendKey {
            addr_be: daddr.read_unaligned(),
            port_be: dport.read_unaligned(),
            proto: lb_common::maps::PROTO_TCP,
            scope: 0,
        }
    };
    // SAFETY: the value is only tested for presence, never read.
    let found = unsafe { maps::LB_FRONTENDS.get(key) }.is_some();
    core::hint::black_box(found);
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// tcx ingress on the host side of pod interfaces (the default pod hook).
#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    lb::run(&Tc::<{ tc::at::POD }>(&ctx))
}

/// tcx ingress on node devices: the complete path for traffic from outside and from other
/// nodes, whatever the device's peer runs.
#[classifier]
pub fn lb_tc_nic(ctx: TcContext) -> i32 {
    lb::run(&Tc::<{ tc::at::NIC }>(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
