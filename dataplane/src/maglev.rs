//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI'16, §3.4): every backend fills a
//! lookup table of prime size M in the order of its own permutation
//! (`offset + j·skip mod M`), taking turns, so each backend owns ~M/N
//! entries and removing one backend reassigns mostly its own entries.
//!
//! Hand-written rather than the `maglev` crate (0.2.1, last released 2021):
//! that crate hashes with `DefaultHasher` (whose output Rust does not
//! promise to keep across releases: two weir builds on two nodes could pick
//! different backends for one flow) and stores `isize` entries (8 bytes);
//! this one uses a fixed FNV-1a hash and `u16` entries, built once per
//! snapshot on the control side, never per packet.
#![forbid(unsafe_code)]

/// Table sizes, smallest first (all prime, as Maglev needs so every
/// `skip` in 1..M generates a full permutation).
///
/// Why these sizes: the paper keeps M ≥ 100·N for at most ~1% imbalance
/// between N backends, so the table is the smallest of these primes at
/// least 100·N (capped at the largest). Entries are u16, so a Service
/// port with 3 backends costs 1021·2 = 2 KiB and 10k such Service ports
/// 20 MiB per snapshot, where one fixed 65521 size would cost 1.3 GB.
pub const SIZES: [usize; 5] = [251, 1021, 4093, 16381, 65521];

/// The table size for `n` backends (see [`SIZES`]).
pub fn size_for(n: usize) -> usize {
    let want = n.saturating_mul(100);
    SIZES
        .iter()
        .copied()
        .find(|&m| m >= want)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

/// 64-bit FNV-1a with a seed mixed in (two seeds give Maglev's two hashes).
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64's), so close names spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds the lookup table of size `m` (prime) for backends named by
/// `keys` (stable names: a backend keeps its key when others come and go).
/// Each entry is an index into `keys`; empty when there is no backend.
pub fn build(keys: &[&[u8]], m: usize) -> Vec<u16> {
    let n = keys.len().min(usize::from(u16::MAX));
    if n == 0 || m < 2 {
        return Vec::new();
    }
    let perm: Vec<(usize, usize)> = keys[..n]
        .iter()
        .map(|k| {
            let offset = (fnv1a(0x6d61_676c, k) % m as u64) as usize;
            let skip = (fnv1a(0x6576_3031, k) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![u16::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for i in 0..n {
            let (offset, skip) = perm[i];
            let mut c = (offset + next[i] * skip) % m;
            while table[c] != u16::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c] = i as u16;
            next[i] += 1;
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

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("default/web-{i}|10.244.0.{}:8080", i + 2).into_bytes())
            .collect()
    }

    #[test]
    fn sizes_are_prime() {
        for m in SIZES {
            assert!((2..m).take_while(|d| d * d <= m).all(|d| m % d != 0), "{m}");
        }
        assert_eq!(size_for(3), 1021);
        assert_eq!(size_for(1000), 65521);
    }

    #[test]
    fn balanced() {
        let keys = names(5);
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let t = build(&refs, 1021);
        let mut count = [0usize; 5];
        for e in &t {
            count[*e as usize] += 1;
        }
        // Maglev's turn-taking gives each backend floor or ceil of M/N.
        for c in count {
            assert!((204..=205).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn removal_moves_only_its_share() {
        for n in [2usize, 3, 5, 10, 30] {
            let keys = names(n);
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            let m = size_for(n);
            let before = build(&refs, m);
            let gone = n / 2;
            let mut after_refs = refs.clone();
            after_refs.remove(gone);
            let after = build(&after_refs, m);
            // Map the new indices back to the old backends.
            let old_index = |i: u16| if (i as usize) < gone { i } else { i + 1 };
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b as usize != gone && **b != old_index(**a))
                .count();
            let share = m / n;
            // Entries of the kept backends that moved: a small fraction of
            // the table (the paper measures a few percent), far below the
            // removed backend's own share which must move.
            assert!(
                moved * 100 <= m * 5 + 1,
                "n={n}: {moved} of {m} entries of kept backends moved (share {share})"
            );
            assert!(after.iter().all(|a| (*a as usize) < n - 1));
        }
    }

    #[test]
    fn empty() {
        assert!(build(&[], 251).is_empty());
    }
}
