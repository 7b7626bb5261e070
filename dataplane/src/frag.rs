//! The fragment table: what the first fragment of a datagram decided, for
//! the fragments that follow it (see docs/conntrack.md, "Fragments").
//!
//! Only the first fragment of a fragmented datagram carries the transport
//! header, so only it can be judged on its ports. The pass judges it as any
//! packet (conntrack, policy) and records the outcome here, keyed by the
//! datagram: (source, destination, protocol, IP identification) for IPv4,
//! (source, destination, fragment identification) for IPv6 (RFC 791 and
//! RFC 8200 reassembly keys). Later fragments look their datagram up and
//! follow: they pass with the first fragment's flow key, or drop with the
//! first fragment's drop reason.
//!
//! Like conntrack, one table per node shared by the workers (the fragments
//! of one datagram may reach different workers), a fixed array of buckets
//! allocated once, each bucket behind its own small lock; nothing allocates
//! afterwards. An entry lives [`DEFAULT_TIMEOUT`] from its first fragment
//! (Linux keeps an incomplete datagram 30 s, `ipfrag_time`; a pod's
//! datagram crosses a node in microseconds, so the bound is shorter). When
//! a bucket is full of live entries the oldest is evicted (counted): a
//! flood of first fragments that never complete churns the table, never
//! grows it.
//!
//! Rules that keep a datagram's verdict whole:
//! - a later fragment without a live entry (it came before its first, or
//!   after the entry expired or was evicted) is dropped
//!   (`fragment-no-first`): weir does not hold frames for reassembly;
//! - a later fragment whose offset lies inside the first fragment's data
//!   could rewrite the transport header the verdict was taken on: it is
//!   dropped (`fragment-overlap`) and so is the rest of its datagram;
//! - every first fragment is judged on its own ports; a first fragment
//!   with other ports than the recorded one starts the entry over (a new
//!   datagram reusing the identification) — the destination can only ever
//!   receive first fragments that were allowed on their own ports.
//!
//! Time is a parameter (`now`), as in conntrack.
#![forbid(unsafe_code)]

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use crate::DropReason;

/// Entries per bucket.
pub const WAYS: usize = 8;

/// Default number of datagrams a node's table remembers.
pub const DEFAULT_SIZE: usize = 8192;

/// Default lifetime of an entry (from its first fragment), in nanoseconds.
pub const DEFAULT_TIMEOUT: u64 = 5_000_000_000;

/// A datagram's identity: the reassembly key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct FragKey {
    src: [u8; 16],
    dst: [u8; 16],
    ident: u32,
    /// IPv4: the protocol; IPv6: 0 (the fragment header's next header may
    /// name an extension header in later fragments).
    proto: u8,
    v6: bool,
}

impl FragKey {
    /// The key of a fragment from `src` to `dst`. `proto` is ignored for IPv6.
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, ident: u32) -> Self {
        let (s, v6) = crate::conntrack::addr_bytes(src);
        let (d, _) = crate::conntrack::addr_bytes(dst);
        FragKey {
            src: s,
            dst: d,
            ident,
            proto: if v6 { 0 } else { proto },
            v6,
        }
    }

    fn hash(&self, seed: u64) -> u64 {
        let last = u64::from(self.ident) | u64::from(self.proto) << 32 | u64::from(self.v6) << 40;
        crate::conntrack::hash_addrs(seed, &self.src, &self.dst, last)
    }
}

/// What the first fragment of a datagram brought and how it was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct First {
    /// The flow's ports (ICMP: as [`crate::flow_key::FlowKey`] has them) and
    /// upper-layer protocol.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Policy generation of the judgement (low 32 bits).
    pub generation: u32,
    /// `None`: allowed; else why the first fragment was dropped.
    pub verdict: Option<DropReason>,
    /// Bytes of fragment data the first fragment carried (the offset at
    /// which later fragments must start).
    pub end: u16,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    key: FragKey,
    expires: u64,
    sport: u16,
    dport: u16,
    proto: u8,
    generation: u32,
    verdict: Option<DropReason>,
    end: u16,
    live: bool,
}

#[derive(Debug, Default)]
struct Bucket {
    entries: [Entry; WAYS],
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(Mutex<Bucket>);

/// Outcome of [`FragTable::first`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The verdict the first fragment must get: its own judgement, or
    /// `fragment-overlap` if its datagram was already poisoned.
    pub verdict: Option<DropReason>,
    /// A live entry of another datagram was evicted to make room.
    pub evicted: bool,
}

/// Outcome of [`FragTable::later`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Later {
    /// Follow the first fragment: the flow's ports and protocol, and the
    /// generation the first fragment was judged under.
    Pass {
        sport: u16,
        dport: u16,
        proto: u8,
        generation: u32,
    },
    /// Drop with this reason.
    Drop(DropReason),
}

/// The node's fragment table.
#[derive(Debug)]
pub struct FragTable {
    buckets: Box<[Line]>,
    mask: u64,
    seed: u64,
    timeout: u64,
}

impl Default for FragTable {
    fn default() -> Self {
        Self::new(DEFAULT_SIZE, DEFAULT_TIMEOUT)
    }
}

impl FragTable {
    /// A table of at least `size` entries (rounded up to a power-of-two
    /// number of buckets of [`WAYS`]), entries living `timeout` ns.
    pub fn new(size: usize, timeout: u64) -> Self {
        let buckets = size.div_ceil(WAYS).max(1).next_power_of_two();
        let seed = std::collections::hash_map::RandomState::new().hash_one(0xf4a9_u64);
        FragTable {
            buckets: (0..buckets).map(|_| Line::default()).collect(),
            mask: buckets as u64 - 1,
            seed,
            timeout,
        }
    }

    /// Entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes of table per entry (bucket with its lock / [`WAYS`]).
    pub const fn bytes_per_entry() -> usize {
        std::mem::size_of::<Line>() / WAYS
    }

    pub fn timeout(&self) -> u64 {
        self.timeout
    }

    fn bucket(&self, key: &FragKey) -> MutexGuard<'_, Bucket> {
        let line = &self.buckets[(key.hash(self.seed) & self.mask) as usize];
        // Nothing in a critical section can panic; stay usable if one did.
        line.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(b: &mut Bucket, key: &FragKey, now: u64) -> Option<usize> {
        let w = b.entries.iter().position(|e| e.live && e.key == *key)?;
        if b.entries[w].expires <= now {
            b.entries[w].live = false;
            return None;
        }
        Some(w)
    }

    /// Records a first fragment's judgement for its datagram.
    pub fn first(&self, key: &FragKey, f: First, now: u64) -> Recorded {
        let mut b = self.bucket(key);
        if let Some(w) = Self::find(&mut b, key, now) {
            let e = &mut b.entries[w];
            let same = (e.sport, e.dport, e.proto) == (f.sport, f.dport, f.proto);
            if same && e.verdict == Some(DropReason::FragmentOverlap) {
                // Poisoned: a duplicate first fragment does not revive it.
                return Recorded {
                    verdict: e.verdict,
                    evicted: false,
                };
            }
            let end = if same { e.end.max(f.end) } else { f.end };
            *e = Entry {
                key: *key,
                expires: e.expires,
                sport: f.sport,
                dport: f.dport,
                proto: f.proto,
                generation: f.generation,
                verdict: f.verdict,
                end,
                live: true,
            };
            return Recorded {
                verdict: f.verdict,
                evicted: false,
            };
        }
        // A free or expired way, else the oldest entry (earliest deadline:
        // every entry lives the same time from its first fragment).
        let mut pick = 0;
        let mut best = (true, u64::MAX);
        for (w, e) in b.entries.iter().enumerate() {
            let live = e.live && e.expires > now;
            let cand = (live, e.expires);
            if !live {
                pick = w;
                best = cand;
                break;
            }
            if cand < best {
                pick = w;
                best = cand;
            }
        }
        b.entries[pick] = Entry {
            key: *key,
            expires: now.saturating_add(self.timeout),
            sport: f.sport,
            dport: f.dport,
            proto: f.proto,
            generation: f.generation,
            verdict: f.verdict,
            end: f.end,
            live: true,
        };
        Recorded {
            verdict: f.verdict,
            evicted: best.0,
        }
    }

    /// Looks a later fragment's datagram up: `offset` is the fragment's
    /// offset in bytes. A fragment overlapping the first fragment's data
    /// poisons the datagram.
    pub fn later(&self, key: &FragKey, offset: u16, now: u64) -> Later {
        let mut b = self.bucket(key);
        let Some(w) = Self::find(&mut b, key, now) else {
            return Later::Drop(DropReason::FragmentNoFirst);
        };
        let e = &mut b.entries[w];
        if let Some(r) = e.verdict {
            return Later::Drop(r);
        }
        if offset < e.end {
            e.verdict = Some(DropReason::FragmentOverlap);
            return Later::Drop(DropReason::FragmentOverlap);
        }
        Later::Pass {
            sport: e.sport,
            dport: e.dport,
            proto: e.proto,
            generation: e.generation,
        }
    }

    /// Sets a datagram's verdict after its flow was judged again under
    /// policy `generation` (a later fragment met a policy change). An entry
    /// poisoned by an overlap stays poisoned.
    pub fn rejudged(&self, key: &FragKey, generation: u32, verdict: Option<DropReason>, now: u64) {
        let mut b = self.bucket(key);
        if let Some(w) = Self::find(&mut b, key, now) {
            let e = &mut b.entries[w];
            if e.verdict != Some(DropReason::FragmentOverlap) {
                e.generation = generation;
                e.verdict = verdict;
            }
        }
    }

    /// Forgets every datagram from or to one of `addrs` (their endpoint
    /// left the node). Returns how many live entries went. Takes every
    /// bucket's lock in turn: for the control thread.
    pub fn flush_addrs(&self, addrs: &[IpAddr], now: u64) -> usize {
        if addrs.is_empty() {
            return 0;
        }
        let keys: Vec<([u8; 16], bool)> = addrs
            .iter()
            .map(|&a| crate::conntrack::addr_bytes(a))
            .collect();
        let mut n = 0;
        for l in self.buckets.iter() {
            let mut b = l.0.lock().unwrap_or_else(|e| e.into_inner());
            for e in b.entries.iter_mut().filter(|e| e.live) {
                let k = e.key;
                if keys
                    .iter()
                    .any(|&(a, v6)| v6 == k.v6 && (a == k.src || a == k.dst))
                {
                    n += usize::from(e.expires > now);
                    e.live = false;
                }
            }
        }
        n
    }

    /// Live entries at `now` (takes every bucket's lock in turn: for
    /// status, not for the per-packet path).
    pub fn count(&self, now: u64) -> usize {
        self.buckets
            .iter()
            .map(|l| {
                let b = l.0.lock().unwrap_or_else(|e| e.into_inner());
                b.entries
                    .iter()
                    .filter(|e| e.live && e.expires > now)
                    .count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SEC: u64 = 1_000_000_000;

    fn key(ident: u32) -> FragKey {
        FragKey::new(
            Ipv4Addr::new(10, 1, 0, 1).into(),
            Ipv4Addr::new(10, 1, 0, 2).into(),
            17,
            ident,
        )
    }

    fn first(dport: u16, verdict: Option<DropReason>) -> First {
        First {
            sport: 1000,
            dport,
            proto: 17,
            generation: 1,
            verdict,
            end: 1480,
        }
    }

    fn pass(dport: u16) -> Later {
        Later::Pass {
            sport: 1000,
            dport,
            proto: 17,
            generation: 1,
        }
    }

    #[test]
    fn flush_addrs_forgets_datagrams_of_an_address() {
        let t = FragTable::new(64, 5 * SEC);
        t.first(&key(1), first(53, None), 0);
        let other = FragKey::new(
            Ipv4Addr::new(10, 1, 0, 3).into(),
            Ipv4Addr::new(10, 1, 0, 4).into(),
            17,
            1,
        );
        t.first(&other, first(53, None), 0);
        assert_eq!(t.flush_addrs(&[Ipv4Addr::new(10, 1, 0, 2).into()], 1), 1);
        assert_eq!(
            t.later(&key(1), 1480, 1),
            Later::Drop(DropReason::FragmentNoFirst)
        );
        assert_eq!(t.later(&other, 1480, 1), pass(53));
        assert_eq!(t.count(1), 1);
    }

    #[test]
    fn later_follows_first() {
        let t = FragTable::new(64, 5 * SEC);
        assert_eq!(
            t.later(&key(1), 1480, 0),
            Later::Drop(DropReason::FragmentNoFirst)
        );
        let r = t.first(&key(1), first(80, None), 0);
        assert_eq!(r.verdict, None);
        assert_eq!(t.later(&key(1), 1480, SEC), pass(80));
        // Another datagram (identification) is unknown.
        assert_eq!(
            t.later(&key(2), 1480, SEC),
            Later::Drop(DropReason::FragmentNoFirst)
        );
        // Expired.
        assert_eq!(
            t.later(&key(1), 1480, 5 * SEC),
            Later::Drop(DropReason::FragmentNoFirst)
        );
        assert_eq!(t.count(5 * SEC), 0);
    }

    #[test]
    fn denied_first_denies_every_later() {
        let t = FragTable::new(64, 5 * SEC);
        t.first(&key(1), first(22, Some(DropReason::PolicyDenied)), 0);
        for off in [1480, 2960, 4440] {
            assert_eq!(
                t.later(&key(1), off, 1),
                Later::Drop(DropReason::PolicyDenied)
            );
        }
    }

    #[test]
    fn overlap_poisons_the_datagram() {
        let t = FragTable::new(64, 5 * SEC);
        t.first(&key(1), first(80, None), 0);
        assert_eq!(
            t.later(&key(1), 8, 1),
            Later::Drop(DropReason::FragmentOverlap)
        );
        // The rest of the datagram drops too, and a duplicate first
        // fragment does not revive it.
        assert_eq!(
            t.later(&key(1), 1480, 1),
            Later::Drop(DropReason::FragmentOverlap)
        );
        let r = t.first(&key(1), first(80, None), 2);
        assert_eq!(r.verdict, Some(DropReason::FragmentOverlap));
        t.rejudged(&key(1), 2, None, 3);
        assert_eq!(
            t.later(&key(1), 1480, 4),
            Later::Drop(DropReason::FragmentOverlap)
        );
    }

    #[test]
    fn a_first_with_other_ports_starts_over() {
        let t = FragTable::new(64, 5 * SEC);
        t.first(&key(1), first(22, Some(DropReason::PolicyDenied)), 0);
        t.first(&key(1), first(80, None), 1);
        assert_eq!(t.later(&key(1), 1480, 2), pass(80));
        t.first(&key(1), first(22, Some(DropReason::PolicyDenied)), 3);
        assert_eq!(
            t.later(&key(1), 1480, 4),
            Later::Drop(DropReason::PolicyDenied)
        );
    }

    #[test]
    fn a_flood_of_firsts_stays_within_the_bound_and_evicts_the_oldest() {
        let t = FragTable::new(64, 5 * SEC);
        let cap = t.capacity();
        let mut evicted = 0;
        for i in 0..10_000u32 {
            let r = t.first(&key(i), first(80, None), u64::from(i));
            evicted += u64::from(r.evicted);
        }
        assert_eq!(t.count(10_000), cap);
        assert_eq!(evicted, 10_000 - cap as u64);
        // The newest survive, the oldest went.
        assert_eq!(t.later(&key(9_999), 1480, 10_000), pass(80));
        assert_eq!(
            t.later(&key(0), 1480, 10_000),
            Later::Drop(DropReason::FragmentNoFirst)
        );
    }

    #[test]
    fn ipv6_key_ignores_the_protocol() {
        let s: IpAddr = "fd00::1".parse().unwrap();
        let d: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(FragKey::new(s, d, 17, 7), FragKey::new(s, d, 60, 7));
        let (s4, d4) = (
            IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::from(Ipv4Addr::new(10, 0, 0, 2)),
        );
        assert_ne!(FragKey::new(s4, d4, 17, 7), FragKey::new(s4, d4, 6, 7));
    }
}
