//! Header parsing with bounds checks: Ethernet, IPv4 (with options), TCP and UDP.
//!
//! Decisions: only untagged IPv4 is ours. IP options are skipped by IHL (the DNAT touches no
//! option). Fragments, first or not, are passed untouched: a non-first fragment has no ports to
//! look up, and DNATing the first alone would split the datagram (docs/ARCHITECTURE.md).

use lb_common::maps::{PROTO_TCP, PROTO_UDP};

/// Length of an Ethernet header without VLAN tags.
pub const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_MIN_LEN: usize = 20;
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// IP flags MF and fragment offset.
const IP_FRAG_MASK: u16 = 0x3fff;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Returns a pointer to a `T` at `offset` if it lies entirely within `[start, end)`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    let at = start + offset;
    if at + core::mem::size_of::<T>() > end {
        return None;
    }
    Some(at as *mut T)
}

/// The fields of an IPv4 TCP/UDP packet the load balancer needs. Addresses and ports are raw
/// (network order loaded as native integers).
#[derive(Clone, Copy)]
pub struct Headers {
    /// Offset of the IPv4 header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// Length of the L4 header and payload, from the IP total length.
    pub l4_len: u16,
    pub proto: u8,
    /// TCP flags, 0 for UDP.
    pub tcp_flags: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Headers {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off + if self.proto == PROTO_TCP { 16 } else { 6 }
    }
}

/// What a packet is, as far as the load balancer cares.
pub enum Parsed {
    NotIpv4,
    NotL4,
    Fragment,
    Malformed,
    L4(Headers),
}

#[inline(always)]
fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Parses the packet in `[start, end)`.
///
/// Every field is read through the pointer that was bounds-checked for its header, so the
/// verifier sees each access covered by a check on the same register.
#[inline(always)]
pub fn parse(start: usize, end: usize) -> Parsed {
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(start, end, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { &*eth };
    if u16::from_be(u16_at(eth, 12)) != ETH_P_IP {
        return Parsed::NotIpv4;
    }
    let l3 = ETH_LEN;
    let Some(ip) = ptr_at::<[u8; IP_MIN_LEN]>(start, end, l3) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ihl < IP_MIN_LEN {
        return Parsed::Malformed;
    }
    let tot_len = u16::from_be(u16_at(ip, 2)) as usize;
    let frag = u16::from_be(u16_at(ip, 6));
    let proto = ip[9];
    let saddr = u32_at(ip, 12);
    let daddr = u32_at(ip, 16);
    if tot_len < ihl {
        return Parsed::Malformed;
    }
    if frag & IP_FRAG_MASK != 0 {
        return Parsed::Fragment;
    }
    let l4 = l3 + ihl;
    let l4_len = tot_len - ihl;
    let (sport, dport, tcp_flags) = match proto {
        PROTO_TCP => {
            let Some(tcp) = ptr_at::<[u8; TCP_MIN_LEN]>(start, end, l4) else {
                return Parsed::Malformed;
            };
            // SAFETY: bounds-checked by ptr_at.
            let tcp = unsafe { &*tcp };
            (u16_at(tcp, 0), u16_at(tcp, 2), tcp[13])
        }
        PROTO_UDP => {
            let Some(udp) = ptr_at::<[u8; UDP_LEN]>(start, end, l4) else {
                return Parsed::Malformed;
            };
            // SAFETY: bounds-checked by ptr_at.
            let udp = unsafe { &*udp };
            (u16_at(udp, 0), u16_at(udp, 2), 0)
        }
        _ => return Parsed::NotL4,
    };
    let min_l4 = if proto == PROTO_TCP {
        TCP_MIN_LEN
    } else {
        UDP_LEN
    };
    if l4_len < min_l4 {
        return Parsed::Malformed;
    }
    Parsed::L4(Headers {
        l3_off: l3,
        l4_off: l4,
        l4_len: l4_len as u16,
        proto,
        tcp_flags,
        saddr,
        daddr,
        sport,
        dport,
    })
}
