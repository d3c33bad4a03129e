//! The flow hash: which slot of a frontend's table a new flow takes.
//!
//! Computed by the kernel for new flows and by the agent's reference model; both run this
//! very function, so they cannot drift. Deterministic, unseeded: every node picks the same slot
//! for the same flow, which a Maglev table (same on every node) turns into the same backend.
//! Inputs are raw header fields: network-order values loaded as native integers.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Murmur3-style 32-bit hash of an IPv4 5-tuple.
#[inline(always)]
pub const fn flow_hash(
    saddr_be: u32,
    daddr_be: u32,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
) -> u32 {
    let mut h = 0x9747_b28c;
    h = mix(h, saddr_be);
    h = mix(h, daddr_be);
    h = mix(h, ((sport_be as u32) << 16) | dport_be as u32);
    h = mix(h, proto as u32);
    finish(h ^ 13)
}

/// The slot a flow with hash `hash` takes in a table of `slot_count` slots (`slot_count > 0`).
#[inline(always)]
pub const fn slot_of(hash: u32, slot_count: u32) -> u32 {
    hash % slot_count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the hash is a pure function of the tuple and that every field moves it.
    #[test]
    fn hash_is_deterministic_and_uses_every_field() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_eq!(base, flow_hash(1, 2, 3, 4, 6));
        for other in [
            flow_hash(9, 2, 3, 4, 6),
            flow_hash(1, 9, 3, 4, 6),
            flow_hash(1, 2, 9, 4, 6),
            flow_hash(1, 2, 3, 9, 6),
            flow_hash(1, 2, 3, 4, 17),
        ] {
            assert_ne!(base, other);
        }
    }

    /// Test that consecutive client ports spread evenly over a small table.
    #[test]
    fn consecutive_source_ports_spread_evenly_over_slots() {
        let mut seen = [0u32; 7];
        for port in 0..70_000u32 {
            let port = (port % 65_536) as u16;
            let h = flow_hash(0x0a00_0001, 0x0a60_000a, port.to_be(), 80u16.to_be(), 6);
            seen[slot_of(h, 7) as usize] += 1;
        }
        for n in seen {
            assert!((9_000..11_000).contains(&n), "uneven spread: {seen:?}");
        }
    }
}
