//! Rejecting a connection to a frontend without backends, as kube-proxy does: an ICMP
//! destination-unreachable (port unreachable) back to the client, built in the program, so the
//! client fails at once (TCP: ECONNREFUSED) instead of timing out.
//!
//! The reply quotes the client's IP header and the start of its TCP/UDP header, as received;
//! the client's stack matches the error to its socket by that quote. RFC 792 asks for 8 bytes
//! of the L4 header; for TCP the whole 20-byte header is quoted, because a tc program cannot
//! shrink a CHECKSUM_PARTIAL packet from a local socket below its checksum field (the kernel
//! refuses `bpf_skb_change_tail` there), and RFC 1812 allows quoting more.
//! Layout: Ethernet (addresses swapped) | IPv4 (20) | ICMP (8) | quoted IP header | L4 quote.

use lb_common::{csum, maps::PROTO_TCP};

use crate::parse::{ptr_at, Headers, ETH_LEN};

/// Bytes the reply adds in front of the quoted IP header.
pub const ADDED: usize = 20 + 8;
/// Longest quoted IP header.
const MAX_IHL: usize = 60;
/// Most bytes of the L4 header quoted.
const MAX_L4_QUOTE: usize = 20;

/// The reply to a packet, computed before the packet is changed: what each hook writes over
/// the front of the packet once it has made room ([`ADDED`] bytes more in front, the tail cut
/// to `len`).
pub struct Reply {
    /// The packet's Ethernet header with source and destination swapped.
    pub eth: [u8; ETH_LEN],
    pub ip: [u8; 20],
    pub icmp: [u8; 8],
    /// The reply's total length from the Ethernet header on.
    pub len: usize,
}

/// The reply to packet `h`, read from the packet in `[start, end)`: the one prologue of every
/// hook's reject.
#[inline(always)]
pub fn reply(start: usize, end: usize, h: &Headers) -> Option<Reply> {
    let (ip, icmp, len) = headers(start, end, h)?;
    let eth = ptr_at::<[u8; ETH_LEN]>(start, end, 0)?;
    // SAFETY: bounds-checked by ptr_at; copied out at once.
    let mut eth = unsafe { *eth };
    swap_macs(&mut eth);
    Some(Reply { eth, ip, icmp, len })
}

/// The reply's IPv4 and ICMP headers for packet `h`, from the packet in `[start, end)` before it
/// is changed. Returns the headers and the reply's total length from the Ethernet header on.
#[inline(always)]
fn headers(start: usize, end: usize, h: &Headers) -> Option<([u8; 20], [u8; 8], usize)> {
    let ihl = h.l4_off - h.l3_off;
    let quoted = ihl + if h.proto == PROTO_TCP { 20 } else { 8 };
    // One's-complement sum of the quoted bytes, read before the packet is rewritten.
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < (MAX_IHL + MAX_L4_QUOTE) / 2 {
        if i * 2 >= quoted {
            break;
        }
        let w = ptr_at::<[u8; 2]>(start, end, h.l3_off + i * 2)?;
        // SAFETY: bounds-checked by ptr_at.
        let w = unsafe { *w };
        sum += u16::from_ne_bytes(w) as u32;
        i += 1;
    }
    let mut icmp = [3u8, 3, 0, 0, 0, 0, 0, 0];
    let check = !csum::fold(sum + u16::from_ne_bytes([3, 3]) as u32);
    icmp[2..4].copy_from_slice(&check.to_ne_bytes());

    let ip_len = 20 + 8 + quoted;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 1; // ICMP

    // From the frontend the client tried, to the client.
    ip[12..16].copy_from_slice(&h.daddr.to_ne_bytes());
    ip[16..20].copy_from_slice(&h.saddr.to_ne_bytes());
    let check = csum::checksum(0, &ip);
    ip[10..12].copy_from_slice(&check.to_ne_bytes());
    Some((ip, icmp, ETH_LEN + ip_len))
}

/// Swaps the Ethernet source and destination of `eth` in place.
#[inline(always)]
fn swap_macs(eth: &mut [u8; ETH_LEN]) {
    let mut tmp = [0u8; 6];
    tmp.copy_from_slice(&eth[0..6]);
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&tmp);
}
