//! Internet checksum arithmetic (RFC 1071, RFC 1624) on raw header fields.
//!
//! Values are network-order header fields loaded as native integers; one's-complement sums are
//! byte-order independent, so no swapping is needed as long as every value is raw.
//!
//! Two kinds of L4 checksum field reach a DNAT:
//! - a full checksum (packets from the wire, forwarded packets): updated with RFC 1624,
//!   `HC' = ~(~HC + ~m + m')`, for every changed address and port;
//! - the pseudo-header seed of a `CHECKSUM_PARTIAL` packet from a local socket (the device or
//!   the stack completes it later): `seed' = seed + ~m + m'`, only for pseudo-header fields
//!   (addresses), never for ports. XDP cannot see `skb->ip_summed`, so where seeds occur (pod
//!   interfaces, veth node devices) it recognises a seed by value: a field equal to the
//!   packet's own pseudo-header sum (see [`pseudo_header_seed`]).

/// Folds a 32-bit accumulator of 16-bit words into 16 bits (end-around carry).
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
const fn add32(sum: u32, v: u32) -> u32 {
    sum + (v & 0xffff) + (v >> 16)
}

/// RFC 1624 update of a full checksum when a 32-bit field changes from `from` to `to`.
#[inline(always)]
pub const fn replace4(check: u16, from: u32, to: u32) -> u16 {
    !fold(add32(add32(!check as u32, !from), to))
}

/// RFC 1624 update of a full checksum when a 16-bit field changes from `from` to `to`.
#[inline(always)]
pub const fn replace2(check: u16, from: u16, to: u16) -> u16 {
    !fold(!check as u32 + !from as u32 + to as u32)
}

/// Update of a pseudo-header seed (`CHECKSUM_PARTIAL`) when an address changes.
#[inline(always)]
pub const fn seed_replace4(seed: u16, from: u32, to: u32) -> u16 {
    fold(add32(add32(seed as u32, !from), to))
}

/// The pseudo-header seed Linux writes into the L4 checksum field of a `CHECKSUM_PARTIAL`
/// packet: the folded, uncomplemented sum of source, destination, protocol and L4 length.
#[inline(always)]
pub const fn pseudo_header_seed(saddr_be: u32, daddr_be: u32, proto: u8, l4_len: u16) -> u16 {
    let proto_word = u16::from_ne_bytes([0, proto]) as u32;
    let len_word = l4_len.to_be() as u32;
    fold(add32(add32(proto_word + len_word, saddr_be), daddr_be))
}

/// RFC 1071 checksum over a byte slice with an initial sum: the kernel's reject reply header,
/// and a reference for tests and tools.
pub fn checksum(initial: u32, bytes: &[u8]) -> u16 {
    let mut sum = initial;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum = add32(sum, u16::from_ne_bytes([c[0], c[1]]) as u32);
        sum = fold(sum) as u32;
    }
    if let [last] = chunks.remainder() {
        sum = fold(sum + u16::from_ne_bytes([*last, 0]) as u32) as u32;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_checksum(src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> u16 {
        let seed = pseudo_header_seed(
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            6,
            segment.len() as u16,
        );
        checksum(seed as u32, segment)
    }

    fn segment(sport: u16, dport: u16, check: u16) -> [u8; 24] {
        let mut s = [0u8; 24];
        s[0..2].copy_from_slice(&sport.to_be_bytes());
        s[2..4].copy_from_slice(&dport.to_be_bytes());
        s[12] = 0x50;
        s[16..18].copy_from_slice(&check.to_ne_bytes());
        s[20..24].copy_from_slice(b"ping");
        s
    }

    /// Test that RFC 1624 updates of an address and a port equal a full recomputation.
    #[test]
    fn incremental_full_update_equals_recomputation() {
        let (src, vip, backend) = ([10, 244, 0, 5], [10, 96, 0, 10], [10, 244, 0, 7]);
        for (sport, dport, new_dport) in [(40000, 80, 8080), (1, 65535, 0), (65535, 0, 443)] {
            let before = tcp_checksum(src, vip, &segment(sport, dport, 0));
            let mut c = replace4(before, u32::from_ne_bytes(vip), u32::from_ne_bytes(backend));
            c = replace2(c, dport.to_be(), u16::to_be(new_dport));
            let after = tcp_checksum(src, backend, &segment(sport, new_dport, 0));
            assert_eq!(c, after, "ports {sport} {dport}->{new_dport}");
        }
    }

    /// Test that a checksum over data that includes a correct checksum verifies to zero.
    #[test]
    fn a_correct_checksum_verifies() {
        let (src, dst) = ([192, 168, 1, 1], [10, 0, 0, 1]);
        let c = tcp_checksum(src, dst, &segment(1234, 80, 0));
        assert_eq!(tcp_checksum(src, dst, &segment(1234, 80, c)), 0);
    }

    /// Test that updating a CHECKSUM_PARTIAL seed equals the seed Linux would write for the
    /// rewritten header.
    #[test]
    fn seed_update_equals_the_new_pseudo_header_seed() {
        let (src, vip, backend) = (0x0500_f40au32, 0x0a00_600au32, 0x0700_f40au32);
        let seed = pseudo_header_seed(src, vip, 6, 1480);
        assert_eq!(
            seed_replace4(seed, vip, backend),
            pseudo_header_seed(src, backend, 6, 1480)
        );
        assert_eq!(
            seed_replace4(seed, src, vip),
            pseudo_header_seed(vip, vip, 6, 1480)
        );
    }

    /// Test the IPv4 header example of RFC 1071 section 3 style: a known header checksum.
    #[test]
    fn ipv4_header_checksum_matches_a_known_value() {
        // 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7 (Wikipedia's example)
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(0, &hdr).to_ne_bytes(), [0xb8, 0x61]);
    }
}
