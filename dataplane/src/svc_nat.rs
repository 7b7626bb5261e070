//! The node's Service NAT table: what the service stage rewrote, so later
//! packets of a flow keep their backend and replies get the reverse NAT,
//! whichever worker they land on. Shared by the workers like conntrack
//! (it lives in [`crate::conntrack::Conntrack`]), built the same way: a
//! fixed array of buckets of [`WAYS`] entries, each bucket behind its own
//! lock, allocated once; a full bucket evicts its entry closest to expiry.
//! Nothing is allocated per packet.
//!
//! A flow to a ClusterIP makes two entries, keyed by the tuple as it is on
//! the wire:
//! - forward (client → ClusterIP:port): the backend, and the hairpin source
//!   when the client is its own backend;
//! - reverse (backend → client, or → the hairpin address): the ClusterIP
//!   and port to put back as source, and the client to put back as
//!   destination for a hairpin flow.
//!
//! `sessionAffinity: ClientIP` keeps a third kind: (client, ClusterIP,
//! port) → backend, refreshed by every new flow of the client.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use crate::conntrack::{addr_bytes, hash_addrs, BadRecord, Imported};
use crate::flow_key::FlowKey;

/// Entries per bucket.
pub const WAYS: usize = 4;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[repr(u8)]
pub enum Kind {
    #[default]
    Forward = 1,
    Reverse = 2,
    Affinity = 3,
    /// SNAT toward the world, keyed by the pod's tuple: the node's
    /// address and port it leaves with.
    SnatOut = 4,
    /// SNAT reply, keyed by (world → node address:port): the pod's
    /// address and port to restore as destination.
    SnatIn = 5,
}

/// The rewrite an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat {
    /// Forward: the backend. Reverse: the frontend (new source).
    /// Affinity: the backend.
    pub addr: IpAddr,
    pub port: u16,
    /// Forward: the hairpin source (new source address). Reverse: the
    /// client to restore as destination (hairpin). None otherwise.
    pub other: Option<IpAddr>,
    /// Index of the frontend in the snapshot that made it (informative:
    /// snapshots change, the addresses are what count).
    pub frontend: u32,
    /// The port that goes with `other`: NodePort forward, the SNAT source
    /// port toward a remote backend; NodePort `SnatIn`, the node port to
    /// restore as source. 0 otherwise.
    pub other_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Key {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
    v6: bool,
    kind: Kind,
}

impl Key {
    fn of(k: &FlowKey, kind: Kind) -> Key {
        let (src, v6) = addr_bytes(k.src);
        let (dst, _) = addr_bytes(k.dst);
        Key {
            src,
            dst,
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            v6,
            kind,
        }
    }

    fn hash(&self, seed: u64) -> u64 {
        let last = u64::from(self.sport)
            | u64::from(self.dport) << 16
            | u64::from(self.proto) << 32
            | u64::from(self.v6) << 40
            | u64::from(self.kind as u8) << 48;
        hash_addrs(seed, &self.src, &self.dst, last)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    expires: u64,
    nat: Nat,
    /// Its life was set by [`NatTable::set_life`] (a closing TCP flow's
    /// SNAT mapping): hits no longer extend it.
    closing: bool,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            key: Key::default(),
            expires: 0,
            closing: false,
            nat: Nat {
                addr: IpAddr::from([0, 0, 0, 0]),
                port: 0,
                other: None,
                frontend: 0,
                other_port: 0,
            },
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    entries: [Entry; WAYS],
}

/// The node's Service NAT table (see the module doc).
#[derive(Debug)]
pub struct NatTable {
    /// On transparent huge pages when large enough (as conntrack's).
    buckets: crate::table_mem::TableMem<Mutex<Bucket>>,
    mask: u64,
    seed: u64,
}

impl Default for NatTable {
    fn default() -> Self {
        NatTable::new(1 << 12)
    }
}

impl NatTable {
    /// A table of at least `size` entries (a power-of-two number of
    /// buckets), allocated now and every page touched.
    pub fn new(size: usize) -> Self {
        let buckets = size.div_ceil(WAYS).max(1).next_power_of_two();
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0x5e7_u64,
        );
        NatTable {
            buckets: crate::table_mem::TableMem::new(buckets, true, Mutex::default),
            mask: buckets as u64 - 1,
            seed,
        }
    }

    /// Entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// The seed of this table's hash (kept in the checkpoint).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Empties the table and hashes with `seed` from now on (see
    /// [`crate::conntrack::Conntrack::reseed`]).
    pub fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        self.buckets.iter_mut().for_each(|b| *b = Mutex::default());
    }

    fn bucket(&self, key: &Key) -> MutexGuard<'_, Bucket> {
        let h = key.hash(self.seed);
        // Nothing in a critical section can panic; a poisoned lock is
        // still usable.
        self.buckets[(h & self.mask) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The live entry of `k` (of `kind`); its life is extended to `until`
    /// (unless it is closing, see [`set_life`](Self::set_life)).
    pub fn get(&self, k: &FlowKey, kind: Kind, now: u64, until: u64) -> Option<Nat> {
        let key = Key::of(k, kind);
        let mut b = self.bucket(&key);
        let e = b
            .entries
            .iter_mut()
            .find(|e| e.key == key && e.expires > now)?;
        if !e.closing {
            e.expires = e.expires.max(until);
        }
        Some(e.nat)
    }

    /// As [`get`](Self::get), with the entry's deadline as it was before
    /// this call extended it (the flow's last packet + its idle timeout).
    pub fn get_aged(&self, k: &FlowKey, kind: Kind, now: u64, until: u64) -> Option<(Nat, u64)> {
        let key = Key::of(k, kind);
        let mut b = self.bucket(&key);
        let e = b
            .entries
            .iter_mut()
            .find(|e| e.key == key && e.expires > now)?;
        let before = e.expires;
        if !e.closing {
            e.expires = e.expires.max(until);
        }
        Some((e.nat, before))
    }

    /// Sets the entry of `k` (replacing it, or a free or expired way, or
    /// the way closest to expiry).
    pub fn set(&self, k: &FlowKey, kind: Kind, nat: Nat, now: u64, until: u64) {
        let key = Key::of(k, kind);
        let mut b = self.bucket(&key);
        let w = match b.entries.iter().position(|e| e.key == key) {
            Some(w) => w,
            None => match b.entries.iter().position(|e| e.expires <= now) {
                Some(w) => w,
                None => {
                    let mut w = 0;
                    for i in 1..WAYS {
                        if b.entries[i].expires < b.entries[w].expires {
                            w = i;
                        }
                    }
                    w
                }
            },
        };
        b.entries[w] = Entry {
            key,
            expires: until,
            nat,
            closing: false,
        };
    }

    /// Whether `k` has a live entry of `kind` (its life is not extended).
    pub fn contains(&self, k: &FlowKey, kind: Kind, now: u64) -> bool {
        let key = Key::of(k, kind);
        let b = self.bucket(&key);
        b.entries.iter().any(|e| e.key == key && e.expires > now)
    }

    /// Sets the life of `k`'s live entry (of `kind`) to end at `until`,
    /// shorter or longer, and stops [`get`](Self::get) from extending it (a
    /// closing TCP flow's SNAT mapping); nothing when there is none.
    pub fn set_life(&self, k: &FlowKey, kind: Kind, now: u64, until: u64) {
        let key = Key::of(k, kind);
        let mut b = self.bucket(&key);
        if let Some(e) = b
            .entries
            .iter_mut()
            .find(|e| e.key == key && e.expires > now)
        {
            e.expires = until;
            e.closing = true;
        }
    }

    /// Removes the entry of `k`.
    pub fn remove(&self, k: &FlowKey, kind: Kind) {
        let key = Key::of(k, kind);
        let mut b = self.bucket(&key);
        if let Some(e) = b.entries.iter_mut().find(|e| e.key == key) {
            e.expires = 0;
        }
    }

    /// Appends every live entry at `now` to `out` as a checkpoint record of
    /// [`RECORD_LEN`] bytes ([`crate::checkpoint`]); returns how many. Takes
    /// every bucket's lock in turn: for the control thread only.
    pub fn export(&self, now: u64, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        for l in self.buckets.iter() {
            let b = l.lock().unwrap_or_else(|e| e.into_inner());
            for e in b.entries.iter().filter(|e| e.expires > now) {
                out.extend_from_slice(&e.key.src);
                out.extend_from_slice(&e.key.dst);
                out.extend_from_slice(&e.key.sport.to_le_bytes());
                out.extend_from_slice(&e.key.dport.to_le_bytes());
                out.push(e.key.proto);
                out.push(u8::from(e.key.v6));
                out.push(e.key.kind as u8);
                out.extend_from_slice(&e.expires.to_le_bytes());
                put_addr(out, Some(e.nat.addr));
                out.extend_from_slice(&e.nat.port.to_le_bytes());
                put_addr(out, e.nat.other);
                out.extend_from_slice(&e.nat.frontend.to_le_bytes());
                out.extend_from_slice(&e.nat.other_port.to_le_bytes());
                out.push(u8::from(e.closing));
                n += 1;
            }
        }
        n
    }

    /// Puts one checkpoint record back ([`export`](Self::export)'s format).
    /// Past its deadline, already present, or no free way in its bucket:
    /// skipped (nothing is evicted for it).
    pub fn import(&self, rec: &[u8], now: u64) -> Result<Imported, BadRecord> {
        let r: &[u8; RECORD_LEN] = rec.try_into().map_err(|_| BadRecord)?;
        let u16_at = |i: usize| u16::from_le_bytes([r[i], r[i + 1]]);
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&r[0..16]);
        dst.copy_from_slice(&r[16..32]);
        let v6 = match r[37] {
            0 => false,
            1 => true,
            _ => return Err(BadRecord),
        };
        let kind = [
            Kind::Forward,
            Kind::Reverse,
            Kind::Affinity,
            Kind::SnatOut,
            Kind::SnatIn,
        ]
        .into_iter()
        .find(|k| *k as u8 == r[38])
        .ok_or(BadRecord)?;
        let key = Key {
            src,
            dst,
            sport: u16_at(32),
            dport: u16_at(34),
            proto: r[36],
            v6,
            kind,
        };
        // An IPv4 key holds IPv4-mapped addresses.
        let family_ok = v6 || (is_mapped(&src) && is_mapped(&dst));
        if !family_ok {
            return Err(BadRecord);
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&r[39..47]);
        let expires = u64::from_le_bytes(exp);
        let mut fr = [0u8; 4];
        fr.copy_from_slice(&r[83..87]);
        let nat = Nat {
            addr: get_addr(&r[47..64])?.ok_or(BadRecord)?,
            port: u16_at(64),
            other: get_addr(&r[66..83])?,
            frontend: u32::from_le_bytes(fr),
            other_port: u16_at(87),
        };
        let closing = match r[89] {
            0 => false,
            1 => true,
            _ => return Err(BadRecord),
        };
        if expires <= now {
            return Ok(Imported::Expired);
        }
        let mut b = self.bucket(&key);
        if b.entries.iter().any(|e| e.key == key && e.expires > now) {
            return Ok(Imported::Present);
        }
        let Some(e) = b.entries.iter_mut().find(|e| e.expires <= now) else {
            return Ok(Imported::NoRoom);
        };
        *e = Entry {
            key,
            expires,
            nat,
            closing,
        };
        Ok(Imported::Restored)
    }
}

/// Bytes of one NAT entry in a checkpoint ([`NatTable::export`]).
pub const RECORD_LEN: usize = 90;

fn is_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10..12] == [0xff, 0xff]
}

/// An optional address as 17 bytes: 0 (none), 4 or 6, then 16 bytes.
fn put_addr(out: &mut Vec<u8>, a: Option<IpAddr>) {
    match a {
        None => out.extend_from_slice(&[0; 17]),
        Some(a) => {
            let (b, v6) = addr_bytes(a);
            out.push(if v6 { 6 } else { 4 });
            out.extend_from_slice(&b);
        }
    }
}

fn get_addr(b: &[u8]) -> Result<Option<IpAddr>, BadRecord> {
    let mut a = [0u8; 16];
    a.copy_from_slice(b.get(1..17).ok_or(BadRecord)?);
    match b[0] {
        0 => Ok(None),
        6 => Ok(Some(IpAddr::from(a))),
        4 if is_mapped(&a) => Ok(Some(IpAddr::from([a[12], a[13], a[14], a[15]]))),
        _ => Err(BadRecord),
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

    #[test]
    fn set_get_expire() {
        let t = NatTable::new(64);
        let nat = Nat {
            addr: "10.244.0.3".parse().unwrap(),
            port: 8080,
            other: None,
            frontend: 0,
            other_port: 0,
        };
        t.set(&key(1000), Kind::Forward, nat, 0, 100);
        assert_eq!(t.get(&key(1000), Kind::Forward, 50, 150), Some(nat));
        assert_eq!(t.get(&key(1000), Kind::Reverse, 50, 150), None);
        assert_eq!(t.get(&key(1001), Kind::Forward, 50, 150), None);
        // Extended to 150 by the hit.
        assert_eq!(t.get(&key(1000), Kind::Forward, 120, 120), Some(nat));
        assert_eq!(t.get(&key(1000), Kind::Forward, 150, 200), None);
        t.set(&key(1000), Kind::Forward, nat, 0, 100);
        t.remove(&key(1000), Kind::Forward);
        assert_eq!(t.get(&key(1000), Kind::Forward, 1, 1), None);
    }

    #[test]
    fn full_bucket_evicts() {
        let t = NatTable::new(4);
        let nat = Nat {
            addr: "10.244.0.3".parse().unwrap(),
            port: 8080,
            other: None,
            frontend: 0,
            other_port: 0,
        };
        for p in 0..10 {
            t.set(&key(p), Kind::Forward, nat, 0, 100 + u64::from(p));
        }
        assert!(t.get(&key(9), Kind::Forward, 0, 0).is_some());
        assert!(t.get(&key(0), Kind::Forward, 0, 0).is_none());
    }
}
