//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M in
//! which every backend owns about M/N slots, such that adding or removing one of N backends
//! moves only about 1/N of the slots. Pure and deterministic: every node builds the same table
//! for the same backends, so a flow arriving at any node picks the same backend.

/// Table sizes: primes, each about twice the last. A frontend with N backends gets the
/// smallest one that is at least `100 * N` (imbalance under 1%, as the paper advises), up to
/// the largest.
pub const TABLE_SIZES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// The table size for `n` backends.
pub fn table_size(n: usize) -> u32 {
    let want = (n as u64).saturating_mul(100);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|m| u64::from(*m) >= want)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// FNV-1a, 64 bits, from a given basis: a stable hash (std's hashers are randomly seeded).
fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds the table: `m` entries, each an index into `names`. `names` identify the backends
/// (e.g. "10.244.1.5:8080"); their order does not matter. `m` must be prime and `names`
/// non-empty.
pub fn build(names: &[String], m: u32) -> Vec<u32> {
    assert!(!names.is_empty() && m > 1);
    // Order by name so the table depends only on the set.
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|a, b| names[*a].cmp(&names[*b]));
    let m64 = u64::from(m);
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|i| {
            let b = names[*i].as_bytes();
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, b) % m64;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, b) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (k, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[k] * skip) % m64;
            while table[c as usize] != u32::MAX {
                next[k] += 1;
                c = (offset + next[k] * skip) % m64;
            }
            table[c as usize] = order[k] as u32;
            next[k] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 1))
            .collect()
    }

    fn owners(names: &[String], table: &[u32]) -> Vec<String> {
        table.iter().map(|i| names[*i as usize].clone()).collect()
    }

    /// Test that every backend owns about M/N slots.
    #[test]
    fn every_backend_owns_about_an_equal_share() {
        for n in [1, 2, 3, 10, 57, 100] {
            let ns = names(n);
            let m = table_size(n);
            let t = build(&ns, m);
            let mut count = vec![0u32; n];
            for i in &t {
                count[*i as usize] += 1;
            }
            let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
            assert!(hi - lo <= 1 + m / n as u32 / 50, "n={n} m={m} {lo}..{hi}");
        }
    }

    /// Test that the table depends on the set of backends, not their order.
    #[test]
    fn table_is_independent_of_backend_order() {
        let ns = names(7);
        let mut rev = ns.clone();
        rev.reverse();
        let m = table_size(7);
        assert_eq!(owners(&ns, &build(&ns, m)), owners(&rev, &build(&rev, m)));
    }

    /// Test the Maglev bound: removing or adding one of N backends moves about 1/N of the
    /// slots (at most 1.3/N here), and removal moves only the removed backend's slots plus few.
    #[test]
    fn one_backend_change_moves_about_one_nth_of_slots() {
        for n in [5usize, 10, 20] {
            let m = 4093; // the same table size before and after
            let before = names(n);
            let t0 = owners(&before, &build(&before, m));
            let removed = before[n / 2].clone();
            let after: Vec<String> = before.iter().filter(|b| **b != removed).cloned().collect();
            let t1 = owners(&after, &build(&after, m));
            let moved = t0.iter().zip(&t1).filter(|(a, b)| a != b).count() as f64 / m as f64;
            println!(
                "n={n}: removing one backend moved {moved:.4} of slots (1/n = {:.4})",
                1.0 / n as f64
            );
            assert!(moved <= 1.3 / n as f64, "remove: n={n} moved {moved:.4}");
            let mut added = before.clone();
            added.push("10.250.0.1:8080".into());
            let t2 = owners(&added, &build(&added, m));
            let moved = t0.iter().zip(&t2).filter(|(a, b)| a != b).count() as f64 / m as f64;
            println!(
                "n={n}: adding one backend moved {moved:.4} of slots (1/(n+1) = {:.4})",
                1.0 / (n + 1) as f64
            );
            assert!(moved <= 1.3 / (n + 1) as f64, "add: n={n} moved {moved:.4}");
        }
    }

    /// Test the table size ladder.
    #[test]
    fn table_size_is_the_smallest_prime_of_at_least_100_n() {
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(3), 509);
        assert_eq!(table_size(10), 1021);
        assert_eq!(table_size(100), 16381);
        assert_eq!(table_size(10_000), 65521);
    }
}
