//! Entry points of the load balancer's kernel programs; the work lives in the modules below.
#![no_std]
#![no_main]

mod conntrack;
mod hook;
mod lb;
mod maps;
mod parse;
mod reject;
mod stats;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// XDP on node devices: packets from the wire, full checksums.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    hook::run(&hook::Xdp::<false>(&ctx))
}

/// XDP on the host side of pod interfaces (`--pod-hook xdp`): may see CHECKSUM_PARTIAL seeds.
#[xdp]
pub fn lb_xdp_pod(ctx: XdpContext) -> u32 {
    hook::run(&hook::Xdp::<true>(&ctx))
}

/// tcx ingress on the host side of pod interfaces (the default pod hook).
#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    hook::run(&hook::Tc(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
