//! A worker's own cache of the translations of its established Service
//! flows (client → ClusterIP:port → backend), so that most packets of such
//! a flow skip the frontend lookups, the shared NAT table (a hash and a
//! bucket lock) and the backend check (docs/services.md, "Fast path").
//!
//! Direct-mapped, allocated once with the worker state, no lock (one
//! writer: its worker), two ways per set. A slot holds what the full service stage decided
//! for one wire 5-tuple, with the snapshot it decided under
//! ([`crate::Snapshot::instance`]) and the ~1.07 s epoch it ran in. A hit
//! needs all three to match, so:
//! - a new snapshot (backend removed, drained, frontend changed, affinity
//!   changed) sends the flow's next packet through the full stage, which
//!   re-checks the backend exactly as before;
//! - the full stage runs at least once per epoch per flow, and it is what
//!   extends the shared forward entry's life and refreshes the reverse
//!   entry (at most once per epoch, as before): the shared entries of a
//!   flow end at most one epoch before they did with the per-packet
//!   refresh (idle timeouts are 30 s and more);
//! - a change another worker makes to the shared entries (a re-pick after
//!   an eviction) is seen at the next epoch at the latest.
//!
//! The caller keeps SYNs, fragments, ICMP errors and frames not as their
//! sender sent them out of it (they take the full stage). A collision just
//! overwrites the older slot of the pair (a miss later, never a wrong hit: the whole key is
//! compared).

use super::service::NatDeltas;
use crate::flow_key::FlowKey;
use crate::svc_nat::Nat;
use std::net::IpAddr;

/// Slots per worker (a power of two, in pairs: 2-way set-associative):
/// ~112 bytes each.
pub(super) const SLOTS: usize = 2048;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FlowKey,
    nat: Nat,
    /// What the translation adds to the checksums ([`super::service::NatDeltas`]).
    deltas: NatDeltas,
    /// The snapshot instance it was decided under; 0: empty.
    snap: u64,
    epoch: u64,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct ServiceCache {
    slots: Box<[Option<Slot>]>,
}

impl Default for ServiceCache {
    fn default() -> Self {
        ServiceCache {
            slots: vec![None; SLOTS].into_boxed_slice(),
        }
    }
}

/// The pair of slots `k` may sit in: a multiplicative (Fibonacci) hash of
/// the tuple, top bits (the cache is no security boundary: colliding flows
/// only fall back to the full stage).
fn pair_of(k: &FlowKey) -> usize {
    let fold = |a: IpAddr| -> u64 {
        match a {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let x = u128::from(a);
                (x as u64) ^ ((x >> 64) as u64).rotate_left(17)
            }
        }
    };
    let x = fold(k.src).rotate_left(32)
        ^ fold(k.dst)
        ^ (u64::from(k.sport) << 48 | u64::from(k.dport) << 32 | u64::from(k.proto) << 24);
    let h = (x ^ (x >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> (64 - PAIR_BITS)) as usize) << 1
}

/// Pairs of slots: 2^PAIR_BITS.
const PAIR_BITS: u32 = SLOTS.trailing_zeros() - 1;

impl ServiceCache {
    /// The translation of `k` decided under snapshot `snap` in `epoch`.
    pub(super) fn get(&self, k: &FlowKey, snap: u64, epoch: u64) -> Option<(Nat, NatDeltas)> {
        let i = pair_of(k);
        let pair = self.slots.get(i..i + 2)?;
        pair.iter().flatten().find_map(|s| {
            (s.snap == snap && s.epoch == epoch && s.key == *k).then_some((s.nat, s.deltas))
        })
    }

    /// Remembers what the full stage decided for `k`: in its own slot of
    /// the pair, else an empty one, else the one decided longer ago.
    pub(super) fn put(&mut self, k: &FlowKey, nat: Nat, deltas: NatDeltas, snap: u64, epoch: u64) {
        let i = pair_of(k);
        let Some(pair) = self.slots.get_mut(i..i + 2) else {
            return;
        };
        let age = |s: &Option<Slot>| match s {
            None => (0, 0),
            Some(s) if s.key == *k => (0, 0),
            Some(s) => (1 + u64::from(s.snap == snap), 1 + s.epoch),
        };
        let w = usize::from(age(&pair[1]) < age(&pair[0]));
        pair[w] = Some(Slot {
            key: *k,
            nat,
            deltas,
            snap,
            epoch,
        });
        // The key lives in one slot only.
        if pair[1 - w].is_some_and(|s| s.key == *k) {
            pair[1 - w] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: "10.244.0.2".parse().unwrap(),
            dst: "10.96.0.1".parse().unwrap(),
            proto: 6,
            sport,
            dport: 80,
        }
    }

    fn nat(port: u16) -> Nat {
        Nat {
            addr: "10.244.0.3".parse().unwrap(),
            port,
            other: None,
            frontend: 0,
            other_port: 0,
        }
    }

    const D: NatDeltas = NatDeltas { ip: 1, l4: 2 };

    #[test]
    fn hit_needs_key_snapshot_and_epoch() {
        let mut c = ServiceCache::default();
        assert_eq!(c.get(&key(1), 1, 0), None);
        c.put(&key(1), nat(8080), D, 1, 0);
        assert_eq!(c.get(&key(1), 1, 0), Some((nat(8080), D)));
        assert_eq!(c.get(&key(2), 1, 0), None);
        assert_eq!(c.get(&key(1), 2, 0), None, "another snapshot");
        assert_eq!(c.get(&key(1), 1, 1), None, "another epoch");
    }

    #[test]
    fn colliding_keys_never_hit_each_other() {
        let mut c = ServiceCache::default();
        // More keys than slots: many share a slot; each hit is its own.
        for p in 0..(SLOTS as u16 * 2) {
            c.put(&key(p), nat(p), D, 1, 0);
        }
        for p in 0..(SLOTS as u16 * 2) {
            if let Some((n, _)) = c.get(&key(p), 1, 0) {
                assert_eq!(n.port, p);
            }
        }
        // The last key written is there.
        let last = SLOTS as u16 * 2 - 1;
        assert_eq!(c.get(&key(last), 1, 0), Some((nat(last), D)));
    }
}
