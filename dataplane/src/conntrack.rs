//! Connection tracking: the one table written per packet (see
//! docs/conntrack.md for the design and its measurements).
//!
//! One table per node, shared by all workers (`Arc<Conntrack>`), because the
//! two directions of a flow arrive on different interfaces and so on queues
//! that may belong to different workers. The table is a fixed array of
//! buckets allocated once at start (no allocation afterwards); each bucket
//! holds [`WAYS`] entries and its own small lock. A packet's key is made
//! direction-free (the lower (address, port) end first), hashed with a
//! per-table random seed, and mapped to exactly one bucket: both directions
//! of a flow meet in the same bucket, whichever worker sees them.
//!
//! Locking: one `Mutex` per bucket (a futex word; uncontended it is one
//! compare-and-swap to take and one swap to release, no syscall). A critical
//! section scans 16 tags (one cache line), compares at most a few keys and updates one entry:
//! tens of nanoseconds. Nothing in it allocates, calls out (policy is judged
//! outside the lock) or can panic. With ≥32k buckets and a handful of
//! workers, two workers meet on the same bucket only when they handle the
//! same flow at the same instant.
//!
//! Time is a parameter (`now`, nanoseconds of CLOCK_MONOTONIC in the
//! dataplane, anything monotonic in tests): this module never reads a clock.
//! Expiry is lazy: an entry past its deadline counts as free and is reused
//! by the next insert into its bucket; no sweeper thread.
//!
//! Eviction under pressure stays inside the bucket: an insert takes a free or
//! expired way, else evicts the closing entry (FIN/RST/TIME-WAIT) that
//! expires first, else the new/unreplied one that expires first. Established
//! TCP and replied UDP/ICMP entries are never evicted: when a bucket holds
//! only those, the new flow is refused ([`Insert::Full`]) and the pass drops
//! it (`ct-table-full`).
#![forbid(unsafe_code)]

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::flow_key::FlowKey;
use crate::frag::FragTable;
use crate::policy::RuleId;
use crate::stats::Counter;
use crate::table_mem::{Pages, TableMem};
use crate::wire::ip_proto;
use crate::wire::tcp::flags as tcpf;

/// Entries per bucket.
pub const WAYS: usize = 16;

/// Default number of entries of a node's table.
pub const DEFAULT_SIZE: usize = 262_144;

const SEC: u64 = 1_000_000_000;

/// How long an idle entry lives in each state, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    pub tcp_syn_sent: u64,
    pub tcp_syn_recv: u64,
    pub tcp_established: u64,
    pub tcp_fin_wait: u64,
    pub tcp_last_ack: u64,
    pub tcp_time_wait: u64,
    pub tcp_close: u64,
    pub udp_unreplied: u64,
    pub udp_replied: u64,
    pub icmp: u64,
    pub other_unreplied: u64,
    pub other_replied: u64,
}

impl Default for Timeouts {
    /// Linux's nf_conntrack defaults, except established TCP (6 h, as
    /// Cilium, instead of 5 days).
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120 * SEC,
            tcp_syn_recv: 60 * SEC,
            tcp_established: 6 * 3600 * SEC,
            tcp_fin_wait: 120 * SEC,
            tcp_last_ack: 30 * SEC,
            tcp_time_wait: 120 * SEC,
            tcp_close: 10 * SEC,
            udp_unreplied: 30 * SEC,
            udp_replied: 120 * SEC,
            icmp: 30 * SEC,
            other_unreplied: 60 * SEC,
            other_replied: 600 * SEC,
        }
    }
}

/// State of a tracked flow.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// TCP: SYN seen from the originator.
    #[default]
    SynSent,
    /// TCP: SYN-ACK seen from the responder.
    SynRecv,
    /// TCP: handshake complete (or picked up mid-stream).
    Established,
    /// TCP: one side sent FIN.
    FinWait,
    /// TCP: both sides sent FIN; waiting for the last ACK.
    LastAck,
    /// TCP: closed after both FINs were acknowledged.
    TimeWait,
    /// TCP: reset.
    Close,
    /// UDP, ICMP echo, other protocols: packets seen one way only.
    Unreplied,
    /// UDP, ICMP echo, other protocols: both ways seen.
    Replied,
    /// Revoked by policy: a tombstone that drops both directions, so that a
    /// revoked flow cannot come back as a mid-stream pickup of its other
    /// direction. It lives `tcp_time_wait` after the flow's last packet;
    /// under a new policy generation the flow is judged again in its
    /// original direction (allowed: revived).
    Denied,
}

impl State {
    /// The state of its `repr(u8)` value (a checkpoint record).
    fn from_u8(v: u8) -> Option<State> {
        const ALL: [State; 10] = [
            State::SynSent,
            State::SynRecv,
            State::Established,
            State::FinWait,
            State::LastAck,
            State::TimeWait,
            State::Close,
            State::Unreplied,
            State::Replied,
            State::Denied,
        ];
        ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// Eviction class: lower goes first; [`PROTECTED`] is never evicted.
    fn class(self) -> u8 {
        match self {
            State::FinWait | State::LastAck | State::TimeWait | State::Close | State::Denied => 1,
            State::SynSent | State::SynRecv | State::Unreplied => 2,
            State::Established | State::Replied => PROTECTED,
        }
    }
}

const PROTECTED: u8 = 3;

/// Which way a packet goes relative to the packet that created its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dir {
    Orig,
    Reply,
}

/// What policy said when the flow was admitted; kept in the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Policy generation the flow was judged under (low 32 bits).
    pub generation: u32,
    pub egress_rule: RuleId,
    pub ingress_rule: RuleId,
    /// A would-drop (audit) rule let it pass.
    pub audit: bool,
}

/// A packet's key in the table: direction-free, plus which end sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CtKey {
    lo: [u8; 16],
    hi: [u8; 16],
    lo_port: u16,
    hi_port: u16,
    proto: u8,
    v6: bool,
}

impl CtKey {
    /// The key of `k` and whether its source is the `lo` end. ICMP echo uses
    /// the identifier on both ends (request and reply share it; their
    /// types differ); other ICMP has no ports.
    pub fn of(k: &FlowKey) -> (CtKey, bool) {
        let (sport, dport) = match k.proto {
            ip_proto::ICMP | ip_proto::ICMPV6 => (k.sport, k.sport),
            _ => (k.sport, k.dport),
        };
        // As u128s (big-endian: they order as the bytes do), built and
        // compared in registers: built byte by byte (`addr_bytes`), this
        // function was ~17 % of the pass's time at 1k flows (perf,
        // docs/performance.md).
        let (s, v6) = addr_u128(k.src);
        let (d, _) = addr_u128(k.dst);
        let src_lo = (s, sport) <= (d, dport);
        let (lo, hi, lo_port, hi_port) = if src_lo {
            (s, d, sport, dport)
        } else {
            (d, s, dport, sport)
        };
        let key = CtKey {
            lo: lo.to_be_bytes(),
            hi: hi.to_be_bytes(),
            lo_port,
            hi_port,
            proto: k.proto,
            v6,
        };
        (key, src_lo)
    }

    fn hash(&self, seed: u64) -> u64 {
        let last = u64::from(self.lo_port)
            | u64::from(self.hi_port) << 16
            | u64::from(self.proto) << 32
            | u64::from(self.v6) << 40;
        hash_addrs(seed, &self.lo, &self.hi, last)
    }

    fn ip(&self, lo: bool) -> IpAddr {
        let b = if lo { self.lo } else { self.hi };
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
        }
    }
}

/// Hashes two addresses (as 16 bytes each) and one word of the rest of a
/// key; shared by the conntrack and fragment tables.
pub(crate) fn hash_addrs(seed: u64, a: &[u8; 16], b: &[u8; 16], last: u64) -> u64 {
    let w = |b: &[u8; 16], i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(x)
    };
    let mut h = seed;
    for x in [w(a, 0), w(a, 8), w(b, 0), w(b, 8), last] {
        h = (h ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    // fmix64 (MurmurHash3's finaliser).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A key's tag in its bucket: 16 bits of its hash, never 0 (empty).
fn tag_of(hash: u64) -> u16 {
    (hash >> 48) as u16 | 1
}

/// The way a key's entry goes to when it is free at insert (4 bits of the
/// hash that neither the bucket index nor the tag uses), so that a batch
/// prefetch knows the entry's line without reading the tags first.
fn home_way(hash: u64) -> usize {
    (hash >> 32) as usize % WAYS
}

/// An address as 16 bytes (IPv4 mapped) and whether it is IPv6.
pub(crate) fn addr_bytes(a: IpAddr) -> ([u8; 16], bool) {
    let (x, v6) = addr_u128(a);
    (x.to_be_bytes(), v6)
}

/// An address as a big-endian u128 (IPv4 mapped: `::ffff:a.b.c.d`) and
/// whether it is IPv6.
fn addr_u128(a: IpAddr) -> (u128, bool) {
    match a {
        IpAddr::V4(a) => ((0xffff_u128 << 32) | u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

/// Entry flags.
const ORIG_IS_LO: u8 = 1;
const PICKUP: u8 = 2;
const FIN_ORIG: u8 = 4;
const FIN_REPLY: u8 = 8;
const AUDIT: u8 = 16;
/// Loaded from a checkpoint ([`crate::checkpoint`]) and not judged since:
/// the next packet of the flow finds it stale whatever the generation, so
/// the current policy judges it again in its original direction before
/// anything passes. Cleared by [`Conntrack::readmit`] and
/// [`Conntrack::revoke`].
const RESTORED: u8 = 32;
/// An FQDN flow's first client flight was judged and allowed (`pass/sni.rs`):
/// later segments skip the server-name check and need no L7 slot.
const HELLO_DONE: u8 = 64;

/// One entry: 64 bytes (see the `entry_is_a_cache_line` test).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    key: CtKey,
    /// Deadline (same clock as `now`); at or past it the entry is free.
    expires: u64,
    /// The [`Admission`], flattened (its `audit` is the `AUDIT` flag).
    generation: u32,
    egress_rule: u32,
    ingress_rule: u32,
    /// Destination port of the originating packet (for ICMP: type << 8 |
    /// code), so a stale flow is judged again exactly as it was admitted.
    orig_dport: u16,
    state: State,
    flags: u8,
}

impl Entry {
    fn adm(&self) -> Admission {
        Admission {
            generation: self.generation,
            egress_rule: RuleId(self.egress_rule),
            ingress_rule: RuleId(self.ingress_rule),
            audit: self.flags & AUDIT != 0,
        }
    }

    fn set_adm(&mut self, a: Admission) {
        self.generation = a.generation;
        self.egress_rule = a.egress_rule.0;
        self.ingress_rule = a.ingress_rule.0;
        self.flags = (self.flags & !AUDIT) | if a.audit { AUDIT } else { 0 };
    }

    fn dir(&self, src_lo: bool) -> Dir {
        if src_lo == (self.flags & ORIG_IS_LO != 0) {
            Dir::Orig
        } else {
            Dir::Reply
        }
    }

    fn orig_key(&self) -> FlowKey {
        let lo = self.flags & ORIG_IS_LO != 0;
        let (sport, dport) = match self.key.proto {
            ip_proto::ICMP | ip_proto::ICMPV6 => (self.key.lo_port, self.orig_dport),
            _ if lo => (self.key.lo_port, self.key.hi_port),
            _ => (self.key.hi_port, self.key.lo_port),
        };
        FlowKey {
            src: self.key.ip(lo),
            dst: self.key.ip(!lo),
            proto: self.key.proto,
            sport,
            dport,
        }
    }
}

/// One bucket in 17 cache lines: line 0 holds the tags and the lock
/// (`Mutex`'s 8-byte header lands at offset 56), lines 1–16 one entry each
/// (checked by the `bucket_layout` test). A lookup touches line 0 and the
/// line of the entry it finds, both of which the pass can prefetch for a
/// whole batch before judging it ([`Conntrack::prefetch`]: line 0 and the
/// key's home way, where an insert puts it when that way is free).
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Line {
    /// Per way: 0 = empty, else 16 bits of the key's hash (never 0).
    /// Written only under `lock`, so under the lock they are exact; read
    /// without it only as prefetch hints (atomics: a racing read is a stale
    /// hint, never undefined behaviour).
    tags: [AtomicU16; WAYS],
    _pad: [u8; 24],
    lock: Mutex<[Entry; WAYS]>,
}

impl Line {
    fn locked(&self) -> Locked<'_> {
        Locked {
            tags: &self.tags,
            // A worker never panics while holding the lock (nothing in a
            // critical section can), but if one did, the table stays usable.
            entries: self.lock.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// A bucket with its lock held.
struct Locked<'a> {
    tags: &'a [AtomicU16; WAYS],
    entries: MutexGuard<'a, [Entry; WAYS]>,
}

impl Locked<'_> {
    fn tag(&self, w: usize) -> u16 {
        self.tags[w].load(Relaxed)
    }

    fn set_tag(&self, w: usize, tag: u16) {
        self.tags[w].store(tag, Relaxed)
    }
}

/// One live entry as [`Conntrack::entries`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryView {
    /// The flow's original direction.
    pub key: FlowKey,
    pub state: State,
    pub adm: Admission,
    /// Time left before the entry expires.
    pub expires_in_ns: u64,
    /// A TCP flow picked up mid-stream.
    pub pickup: bool,
}

/// Bytes of one conntrack entry in a checkpoint ([`Conntrack::export`]).
pub const RECORD_LEN: usize = 62;

/// What [`Conntrack::import`] (and the NAT table's) did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Restored,
    /// Its deadline had passed.
    Expired,
    /// The entry was there already.
    Present,
    /// Its bucket was full.
    NoRoom,
}

/// A checkpoint record that cannot be an entry (bad state, flags, key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRecord;

/// What a packet tells the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// A TCP segment with these flags.
    Tcp(u8),
    /// Anything else (UDP, ICMP echo, other protocols).
    Other,
}

/// Outcome of [`Conntrack::track`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// No live entry.
    Miss,
    /// Known flow admitted under the current generation; state updated.
    Pass {
        dir: Dir,
        state: State,
        adm: Admission,
        pickup: bool,
        /// [`Conntrack::set_hello_done`] was called (and no SYN reopened
        /// the connection since).
        hello_done: bool,
    },
    /// Known flow, but the packet is invalid for its state (nothing changed).
    Invalid { dir: Dir, state: State },
    /// A flow revoked under the current generation ([`Conntrack::revoke`]).
    Denied,
    /// Known flow admitted under another generation: judge `orig` again,
    /// then [`Conntrack::readmit`] or [`Conntrack::remove`].
    Stale {
        dir: Dir,
        orig: FlowKey,
        adm: Admission,
    },
}

/// Outcome of [`Conntrack::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Inserted {
        evicted: bool,
    },
    /// Another worker inserted the flow first; track the packet again.
    Exists,
    /// The bucket holds only protected (established) entries.
    Full,
}

/// A flow's hash on one table, computed by the pass's stage 0
/// ([`Conntrack::prefetch_hint`]) and handed to the lookup
/// ([`Conntrack::track_hinted`]) so that a frame is hashed once. Only this
/// module makes one; the lookup uses it only if its key is the packet's
/// and its seed the table's (else it hashes as without), so a stale hint,
/// another frame's or another table's costs a hash, never a wrong bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtHint {
    key: FlowKey,
    hash: u64,
    seed: u64,
}

impl CtHint {
    /// A placeholder (an unwritten stage 0 slot): its seed is no table's
    /// in practice, and the pass never hands an unwritten slot's hint on.
    pub const NONE: CtHint = CtHint {
        key: FlowKey::UNSPECIFIED,
        hash: 0,
        seed: 0,
    };

    /// The key it was computed for (the packet's, either direction).
    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    /// The key's hash on its table (the same for both directions of a
    /// flow; the stage 0 flow census counts its top bits).
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// The node's connection-tracking table.
#[derive(Debug)]
pub struct Conntrack {
    /// On transparent huge pages when large enough ([`TableMem`]).
    buckets: TableMem<Line>,
    mask: u64,
    seed: u64,
    timeouts: Timeouts,
    /// What first fragments decided, for the later fragments of their
    /// datagrams (see [`crate::frag`]).
    frags: FragTable,
    /// What the service stage rewrote (see [`crate::svc_nat`]).
    nat: crate::svc_nat::NatTable,
    /// Where L7 flows' server streams end (see [`crate::l7::server_end`]).
    server_ends: crate::l7::server_end::ServerEnds,
}

/// Per-worker conntrack counters (single writer: the worker).
#[derive(Debug, Default)]
pub struct CtStats {
    pub inserts: Counter,
    pub evictions: Counter,
    pub table_full: Counter,
    pub invalid: Counter,
    pub revoked: Counter,
    pub rejudged: Counter,
    pub pickups: Counter,
    /// First fragments recorded in the fragment table.
    pub frag_datagrams: Counter,
    /// Live fragment-table entries evicted to make room (oldest first).
    pub frag_evictions: Counter,
    /// Later fragments that followed their first fragment through.
    pub frag_followed: Counter,
}

impl Conntrack {
    /// A table of at least `size` entries (rounded up to a power-of-two
    /// number of buckets of [`WAYS`] entries), allocated now.
    pub fn new(size: usize, timeouts: Timeouts) -> Self {
        Self::with_frag_table(size, timeouts, FragTable::default())
    }

    /// [`new`](Self::new) with this fragment table instead of a default one
    /// (`new(..).with_frags(..)` first builds the default, 8 192 entries: a
    /// fuzz target's fresh state per input spent half its time there).
    pub fn with_frag_table(size: usize, timeouts: Timeouts, frags: FragTable) -> Self {
        Self::build(size, timeouts, frags, true)
    }

    /// [`new`](Self::new), on 4 KiB pages if `!huge_pages` (the
    /// comparison of `conntrack_bench`; tests of the fallback).
    pub fn with_huge_pages(size: usize, timeouts: Timeouts, huge_pages: bool) -> Self {
        Self::build(size, timeouts, FragTable::default(), huge_pages)
    }

    /// The table is allocated and every page of it touched here, at start
    /// (no page fault under the first flood); on huge pages if asked and
    /// at least 2 MiB ([`TableMem`]).
    fn build(size: usize, timeouts: Timeouts, frags: FragTable, huge: bool) -> Self {
        let buckets = size.div_ceil(WAYS).max(1).next_power_of_two();
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Conntrack {
            buckets: TableMem::new(buckets, huge, Line::default),
            mask: buckets as u64 - 1,
            seed,
            timeouts,
            frags,
            // Two entries per Service flow; capped so a large conntrack
            // does not bring a large NAT table along (~100 bytes an entry).
            nat: crate::svc_nat::NatTable::new(size.min(1 << 16) * 2),
            server_ends: crate::l7::server_end::ServerEnds::new(),
        }
    }

    /// Where L7 flows' server streams end, shared by the node's workers.
    pub fn server_ends(&self) -> &crate::l7::server_end::ServerEnds {
        &self.server_ends
    }

    /// The node's Service NAT table.
    pub fn nat(&self) -> &crate::svc_nat::NatTable {
        &self.nat
    }

    /// The seed this table's hash uses, and its NAT table's: what a
    /// checkpoint keeps so that the restored tables put every entry in the
    /// bucket it had (see [`crate::checkpoint`]).
    pub fn seeds(&self) -> (u64, u64) {
        (self.seed, self.nat.seed())
    }

    /// Empties the table and its NAT table and hashes with `seeds` (see
    /// [`Conntrack::seeds`]) from now on. For a table no worker uses yet
    /// (`&mut`): the load of a checkpoint at start. With the writer's
    /// seeds, every saved entry goes back to the bucket it came from, so a
    /// table of the writer's size has room for all of them (with a new
    /// seed, entries that shared a full bucket's neighbours would collide
    /// anew and some be lost).
    pub fn reseed(&mut self, seeds: (u64, u64)) {
        self.seed = seeds.0;
        self.buckets.iter_mut().for_each(|l| *l = Line::default());
        self.nat.reseed(seeds.1);
    }

    /// Replaces the fragment table (sizing, tests).
    pub fn with_frags(mut self, frags: FragTable) -> Self {
        self.frags = frags;
        self
    }

    /// The node's fragment table.
    pub fn frags(&self) -> &FragTable {
        &self.frags
    }

    /// Entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Where the table's memory is (huge pages asked for or not).
    pub fn table_pages(&self) -> Pages {
        self.buckets.pages()
    }

    /// Bytes of the table on huge pages now (see
    /// [`TableMem::huge_bytes`]; `None` for a table on the heap, under
    /// 2 MiB). Reads `/proc/self/smaps`: for status, not per packet.
    pub fn huge_page_bytes(&self) -> Option<u64> {
        self.buckets.huge_bytes()
    }

    /// Bytes of table per entry (bucket with its lock and tags / [`WAYS`]).
    pub const fn bytes_per_entry() -> usize {
        std::mem::size_of::<Line>() / WAYS
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    fn bucket(&self, key: &CtKey) -> (Locked<'_>, u16) {
        let h = key.hash(self.seed);
        (self.line(h).locked(), tag_of(h))
    }

    fn line(&self, hash: u64) -> &Line {
        &self.buckets[(hash & self.mask) as usize]
    }

    /// Starts loading `k`'s bucket line (tags and lock) and its home way's
    /// entry line (see [`home_way`]) into the cache, without waiting: the
    /// conntrack prefetch of the pass's stage 0, run over a whole batch
    /// before it is judged. Either direction of a flow gives the same
    /// lines. Changes nothing; returns the key's hash (for tests). A wrong
    /// or stale key only wastes a prefetch; an entry off its home way
    /// still costs its lookup one memory wait.
    pub fn prefetch(&self, k: &FlowKey) -> u64 {
        self.prefetch_hint(k).hash
    }

    /// [`prefetch`](Self::prefetch), returning the hash as a hint for this
    /// packet's lookup ([`track_hinted`](Self::track_hinted)). Inlined:
    /// stage 0 writes the hint in place (returned by value it stalled on
    /// store forwarding when copied into the slot).
    #[inline(always)]
    pub fn prefetch_hint(&self, k: &FlowKey) -> CtHint {
        let hint = self.hint(k);
        self.prefetch_lines(&hint);
        hint
    }

    /// `k`'s hash on this table, as a hint for its lookup, without starting
    /// any load (stage 0 starts them later: [`prefetch_lines`]).
    ///
    /// [`prefetch_lines`]: Self::prefetch_lines
    #[inline(always)]
    pub fn hint(&self, k: &FlowKey) -> CtHint {
        CtHint {
            key: *k,
            hash: CtKey::of(k).0.hash(self.seed),
            seed: self.seed,
        }
    }

    /// Starts loading the hinted key's bucket line and home-way entry line
    /// (the loads of [`prefetch_hint`](Self::prefetch_hint)). A hint from
    /// another table is ignored.
    #[inline(always)]
    pub fn prefetch_lines(&self, hint: &CtHint) {
        if hint.seed != self.seed {
            return;
        }
        let line = self.line(hint.hash);
        crate::prefetch::prefetch_at(line, 0);
        // `lock`'s data starts on line 1: entry `w` is line w + 1.
        crate::prefetch::prefetch_at(line, 64 * (home_way(hint.hash) + 1));
    }

    /// The second step of stage 0, a few frames before the pass judges the
    /// hinted frame (when the bucket line [`prefetch_hint`] started loading
    /// has arrived): reads the bucket's tags without the lock and, if the
    /// key's tag is on a way other than its home way (an entry inserted
    /// when its home way was taken: ~1 in 4 in a half-full table), starts
    /// loading that way's entry line too. A hint only: tags read without
    /// the lock may be stale (a wasted or missing prefetch, never a wrong
    /// lookup). A hint from another table is ignored. Returns the ways
    /// whose lines it started loading, as a bit mask (for tests).
    ///
    /// [`prefetch_hint`]: Self::prefetch_hint
    #[inline]
    pub fn prefetch_entry(&self, hint: &CtHint) -> u16 {
        if hint.seed != self.seed {
            return 0;
        }
        let (line, tag, home) = (self.line(hint.hash), tag_of(hint.hash), home_way(hint.hash));
        if line.tags[home].load(Relaxed) == tag {
            return 0;
        }
        let mut ways = 0;
        for (w, t) in line.tags.iter().enumerate() {
            if t.load(Relaxed) == tag {
                crate::prefetch::prefetch_at(line, 64 * (w + 1));
                ways |= 1 << w;
            }
        }
        ways
    }

    /// Finds the live way of `key` in `b`, reclaiming it if expired.
    fn find(b: &mut Locked<'_>, key: &CtKey, tag: u16, now: u64) -> Option<usize> {
        for w in 0..WAYS {
            if b.tag(w) == tag && b.entries[w].key == *key {
                if b.entries[w].expires <= now {
                    b.set_tag(w, 0);
                    return None;
                }
                return Some(w);
            }
        }
        None
    }

    /// Looks the packet's flow up and, if it was admitted under
    /// `generation`, advances its state (one critical section).
    pub fn track(&self, k: &FlowKey, seg: Seg, generation: u64, now: u64) -> Track {
        self.visit(k, None, Some(seg), generation, now)
    }

    /// [`track`](Self::track) with the hash stage 0 computed for this
    /// packet, if any: used when its key is `k` (else `k` is hashed).
    pub fn track_hinted(
        &self,
        k: &FlowKey,
        hint: Option<&CtHint>,
        seg: Seg,
        generation: u64,
        now: u64,
    ) -> Track {
        self.visit(k, hint, Some(seg), generation, now)
    }

    /// Like [`track`](Self::track) but changes nothing (ICMP errors related
    /// to a flow do not move its state or extend its life).
    pub fn lookup(&self, k: &FlowKey, generation: u64, now: u64) -> Track {
        self.visit(k, None, None, generation, now)
    }

    fn visit(
        &self,
        k: &FlowKey,
        hint: Option<&CtHint>,
        seg: Option<Seg>,
        generation: u64,
        now: u64,
    ) -> Track {
        let (key, src_lo) = CtKey::of(k);
        let h = match hint {
            Some(hint) if hint.key == *k && hint.seed == self.seed => hint.hash,
            _ => key.hash(self.seed),
        };
        let (mut b, tag) = (self.line(h).locked(), tag_of(h));
        let Some(w) = Self::find(&mut b, &key, tag, now) else {
            return Track::Miss;
        };
        let e = &mut b.entries[w];
        let dir = e.dir(src_lo);
        let restored = e.flags & RESTORED != 0;
        if e.state == State::Denied {
            if e.generation == generation as u32 && !restored {
                // Every packet of a revoked flow keeps its tombstone alive:
                // a peer still retransmitting (TCP backs off to 120 s) must
                // not outlive it and come back as a mid-stream pickup of
                // the other direction.
                e.expires = now.saturating_add(self.timeouts.tcp_time_wait);
                return Track::Denied;
            }
            // Policy changed again: judge the flow again in its ORIGINAL
            // direction (the tombstone keeps it), never afresh in this
            // packet's direction — a server's segment judged as a new flow
            // server → client would re-admit a revoked client → server
            // connection. Allowed: `readmit` revives the entry.
            return Track::Stale {
                dir,
                orig: e.orig_key(),
                adm: e.adm(),
            };
        }
        if e.generation != generation as u32 || restored {
            return Track::Stale {
                dir,
                orig: e.orig_key(),
                adm: e.adm(),
            };
        }
        let Some(seg) = seg else {
            return Track::Pass {
                dir,
                state: e.state,
                adm: e.adm(),
                pickup: e.flags & PICKUP != 0,
                hello_done: e.flags & HELLO_DONE != 0,
            };
        };
        let fins = e.flags & (FIN_ORIG | FIN_REPLY);
        let Some((state, fins)) = next_state(e.state, dir, seg, fins) else {
            return Track::Invalid {
                dir,
                state: e.state,
            };
        };
        e.state = state;
        e.flags = (e.flags & !(FIN_ORIG | FIN_REPLY)) | fins;
        if state == State::SynSent && fins == 0 {
            // A reopened connection is not a pickup any more, and its
            // first flight is judged afresh.
            e.flags &= !(PICKUP | HELLO_DONE);
        }
        e.expires = now.saturating_add(self.timeout(state, key.proto));
        Track::Pass {
            dir,
            state,
            adm: e.adm(),
            pickup: e.flags & PICKUP != 0,
            hello_done: e.flags & HELLO_DONE != 0,
        }
    }

    /// Looks a flow up without changing it (ICMP errors, tests, explain).
    pub fn peek(&self, k: &FlowKey, now: u64) -> Option<(Dir, State, Admission)> {
        let (key, src_lo) = CtKey::of(k);
        let (mut b, tag) = self.bucket(&key);
        let w = Self::find(&mut b, &key, tag, now)?;
        let e = &b.entries[w];
        Some((e.dir(src_lo), e.state, e.adm()))
    }

    /// Creates the entry of a flow whose first packet (`k`, the originating
    /// direction) policy allowed. `seg` decides the first state: a TCP SYN
    /// starts at SYN-SENT; any other TCP segment is a mid-stream pickup
    /// (ESTABLISHED, or FIN-WAIT if it carries FIN).
    pub fn insert(&self, k: &FlowKey, seg: Seg, adm: Admission, now: u64) -> Insert {
        let (key, src_lo) = CtKey::of(k);
        let (state, mut flags) = match seg {
            Seg::Tcp(f) if f & tcpf::SYN != 0 && f & tcpf::ACK == 0 => (State::SynSent, 0),
            Seg::Tcp(f) if f & tcpf::FIN != 0 => (State::FinWait, PICKUP | FIN_ORIG),
            Seg::Tcp(_) => (State::Established, PICKUP),
            Seg::Other => (State::Unreplied, 0),
        };
        if src_lo {
            flags |= ORIG_IS_LO;
        }
        let h = key.hash(self.seed);
        let (mut b, tag) = (self.line(h).locked(), tag_of(h));
        if Self::find(&mut b, &key, tag, now).is_some() {
            return Insert::Exists;
        }
        // Free or expired way first (the key's home way if it is one:
        // what `prefetch` loads), else the cheapest victim by class, then
        // earliest deadline.
        let free = |w: usize| b.tag(w) == 0 || b.entries[w].expires <= now;
        let home = home_way(h);
        let mut pick: Option<(usize, u8, u64)> = None;
        for w in std::iter::once(home).chain(0..WAYS) {
            let class = if free(w) {
                0
            } else {
                b.entries[w].state.class()
            };
            if class >= PROTECTED {
                continue;
            }
            let exp = b.entries[w].expires;
            if pick.is_none_or(|(_, c, x)| (class, exp) < (c, x)) {
                pick = Some((w, class, exp));
            }
            if w == home && class == 0 {
                break;
            }
        }
        let Some((w, class, _)) = pick else {
            return Insert::Full;
        };
        b.set_tag(w, tag);
        let mut e = Entry {
            key,
            expires: now.saturating_add(self.timeout(state, key.proto)),
            orig_dport: k.dport,
            state,
            flags,
            ..Entry::default()
        };
        e.set_adm(adm);
        b.entries[w] = e;
        Insert::Inserted { evicted: class > 0 }
    }

    /// Records that the flow was judged again under a new generation and
    /// is still allowed. Returns false if the entry is gone.
    pub fn readmit(&self, k: &FlowKey, adm: Admission, now: u64) -> bool {
        let (key, _) = CtKey::of(k);
        let (mut b, tag) = self.bucket(&key);
        match Self::find(&mut b, &key, tag, now) {
            Some(w) => {
                let e = &mut b.entries[w];
                e.set_adm(adm);
                e.flags &= !RESTORED;
                if e.state == State::Denied {
                    // A revoked flow allowed again: it was established (or
                    // replied) when it was revoked; its handshake is not
                    // seen again.
                    e.state = if e.key.proto == ip_proto::TCP {
                        State::Established
                    } else {
                        State::Replied
                    };
                    e.expires = now.saturating_add(self.timeout(e.state, e.key.proto));
                }
                true
            }
            None => false,
        }
    }

    /// Records that the FQDN flow of `k` had its first client flight judged
    /// and allowed (`pass/sni.rs`): its later segments need no L7 slot.
    /// Returns false if the entry is gone.
    pub fn set_hello_done(&self, k: &FlowKey, now: u64) -> bool {
        let (key, _) = CtKey::of(k);
        let (mut b, tag) = self.bucket(&key);
        match Self::find(&mut b, &key, tag, now) {
            Some(w) => {
                b.entries[w].flags |= HELLO_DONE;
                true
            }
            None => false,
        }
    }

    /// Turns the flow of `k` into a tombstone ([`State::Denied`]) for
    /// `generation`. Returns whether it existed.
    pub fn revoke(&self, k: &FlowKey, generation: u64, now: u64) -> bool {
        let (key, _) = CtKey::of(k);
        let (mut b, tag) = self.bucket(&key);
        match Self::find(&mut b, &key, tag, now) {
            Some(w) => {
                let e = &mut b.entries[w];
                e.state = State::Denied;
                e.generation = generation as u32;
                e.flags &= !RESTORED;
                e.expires = now.saturating_add(self.timeouts.tcp_time_wait);
                true
            }
            None => false,
        }
    }

    /// Removes the flow of `k` (either direction). Returns whether it existed.
    pub fn remove(&self, k: &FlowKey, now: u64) -> bool {
        let (key, _) = CtKey::of(k);
        let (mut b, tag) = self.bucket(&key);
        match Self::find(&mut b, &key, tag, now) {
            Some(w) => {
                b.set_tag(w, 0);
                true
            }
            None => false,
        }
    }

    /// Live entries at `now` (takes every bucket's lock in turn: for status,
    /// not for the per-packet path).
    pub fn count(&self, now: u64) -> usize {
        self.buckets
            .iter()
            .map(|l| {
                let b = l.locked();
                (0..WAYS)
                    .filter(|&w| b.tag(w) != 0 && b.entries[w].expires > now)
                    .count()
            })
            .sum()
    }

    /// Read-only page of the live entries (for a dump: `weir policy diff`
    /// on a running cluster): visits whole buckets from bucket `start`,
    /// appending each live entry to `out`, and stops after the bucket where
    /// `out` reached `max` new entries. Returns the bucket to start the next
    /// page at, or `None` after the last bucket. Takes one bucket's lock at a
    /// time, never two (the workers go on forwarding; an entry that moves
    /// between pages may be missed or seen twice, as with any table dump).
    pub fn entries(
        &self,
        start: usize,
        max: usize,
        now: u64,
        out: &mut Vec<EntryView>,
    ) -> Option<usize> {
        let first = out.len();
        for (i, l) in self.buckets.iter().enumerate().skip(start) {
            {
                let b = l.locked();
                for w in 0..WAYS {
                    let e = &b.entries[w];
                    if b.tag(w) == 0 || e.expires <= now {
                        continue;
                    }
                    out.push(EntryView {
                        key: e.orig_key(),
                        state: e.state,
                        adm: e.adm(),
                        expires_in_ns: e.expires - now,
                        pickup: e.flags & PICKUP != 0,
                    });
                }
            }
            if out.len() - first >= max {
                return (i + 1 < self.buckets.len()).then_some(i + 1);
            }
        }
        None
    }

    /// Removes every entry with one of `addrs` at either end, live or not
    /// (their endpoint left the node: a later pod with the same address
    /// must not inherit its flows). Returns how many live entries went.
    /// Takes every bucket's lock in turn: for the control thread, never
    /// the per-packet path.
    pub fn flush_addrs(&self, addrs: &[IpAddr], now: u64) -> usize {
        if addrs.is_empty() {
            return 0;
        }
        let keys: Vec<([u8; 16], bool)> = addrs.iter().map(|&a| addr_bytes(a)).collect();
        let mut n = 0;
        for l in self.buckets.iter() {
            let b = l.locked();
            for w in 0..WAYS {
                if b.tag(w) == 0 {
                    continue;
                }
                let k = b.entries[w].key;
                if keys
                    .iter()
                    .any(|&(a, v6)| v6 == k.v6 && (a == k.lo || a == k.hi))
                {
                    n += usize::from(b.entries[w].expires > now);
                    b.set_tag(w, 0);
                }
            }
        }
        n
    }

    /// Live entries at `now` (the result), and those with `addrs[i]` at
    /// either end in `out[i]` (`out` is resized to `addrs`; an entry
    /// between two of them counts for both, an entry from an address to
    /// itself once). For status: takes every bucket's lock in turn. Each
    /// entry costs two lookups in a map of `addrs`, whatever their number
    /// (a full node's 250 pods against 1M entries was 500M comparisons).
    pub fn count_addrs(&self, addrs: &[IpAddr], now: u64, out: &mut Vec<usize>) -> usize {
        out.clear();
        out.resize(addrs.len(), 0);
        // Each distinct address's first index; the others copy its count.
        // The snapshot's map (foldhash): the keys are the node's own
        // endpoints, not chosen by a peer, and SipHash doubled the walk.
        let mut index = crate::snapshot::Map::default();
        for (i, &a) in addrs.iter().enumerate() {
            index.entry(addr_bytes(a)).or_insert(i);
        }
        let mut total = 0;
        for l in self.buckets.iter() {
            let b = l.locked();
            for w in 0..WAYS {
                if b.tag(w) == 0 || b.entries[w].expires <= now {
                    continue;
                }
                total += 1;
                let k = b.entries[w].key;
                if let Some(&i) = index.get(&(k.lo, k.v6)) {
                    out[i] += 1;
                }
                if k.hi != k.lo {
                    if let Some(&i) = index.get(&(k.hi, k.v6)) {
                        out[i] += 1;
                    }
                }
            }
        }
        for (i, &a) in addrs.iter().enumerate() {
            let first = index[&addr_bytes(a)];
            if first != i {
                out[i] = out[first];
            }
        }
        total
    }

    /// Appends every live entry at `now` to `out` as a checkpoint record
    /// of [`RECORD_LEN`] bytes ([`crate::checkpoint`]); returns how many.
    /// Takes every bucket's lock in turn, one at a time: for the control
    /// thread, never the per-packet path.
    pub fn export(&self, now: u64, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        for l in self.buckets.iter() {
            let b = l.locked();
            for w in 0..WAYS {
                let e = &b.entries[w];
                if b.tag(w) == 0 || e.expires <= now {
                    continue;
                }
                out.extend_from_slice(&e.key.lo);
                out.extend_from_slice(&e.key.hi);
                out.extend_from_slice(&e.key.lo_port.to_le_bytes());
                out.extend_from_slice(&e.key.hi_port.to_le_bytes());
                out.push(e.key.proto);
                out.push(u8::from(e.key.v6));
                out.extend_from_slice(&e.expires.to_le_bytes());
                out.extend_from_slice(&e.generation.to_le_bytes());
                out.extend_from_slice(&e.egress_rule.to_le_bytes());
                out.extend_from_slice(&e.ingress_rule.to_le_bytes());
                out.extend_from_slice(&e.orig_dport.to_le_bytes());
                out.push(e.state as u8);
                out.push(e.flags & !RESTORED);
                n += 1;
            }
        }
        n
    }

    /// Puts one checkpoint record back ([`export`](Self::export)'s format),
    /// marked restored: the flow's next packet has it judged again by the
    /// current policy in its original direction. A record past its deadline
    /// at `now`, already present, or whose bucket has no free way is
    /// skipped (nothing is evicted for it).
    pub fn import(&self, rec: &[u8], now: u64) -> Result<Imported, BadRecord> {
        let r: &[u8; RECORD_LEN] = rec.try_into().map_err(|_| BadRecord)?;
        let u16_at = |i: usize| u16::from_le_bytes([r[i], r[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
        let mut lo = [0u8; 16];
        let mut hi = [0u8; 16];
        lo.copy_from_slice(&r[0..16]);
        hi.copy_from_slice(&r[16..32]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&r[38..46]);
        let v6 = match r[37] {
            0 => false,
            1 => true,
            _ => return Err(BadRecord),
        };
        let key = CtKey {
            lo,
            hi,
            lo_port: u16_at(32),
            hi_port: u16_at(34),
            proto: r[36],
            v6,
        };
        let state = State::from_u8(r[60]).ok_or(BadRecord)?;
        let flags = r[61];
        let mapped = |a: &[u8; 16]| a[..10] == [0; 10] && a[10..12] == [0xff, 0xff];
        // An IPv4 key holds IPv4-mapped addresses.
        let family_ok = v6 || (mapped(&lo) && mapped(&hi));
        if flags & !(ORIG_IS_LO | PICKUP | FIN_ORIG | FIN_REPLY | AUDIT) != 0
            || (key.lo, key.lo_port) > (key.hi, key.hi_port)
            || !family_ok
        {
            return Err(BadRecord);
        }
        let expires = u64::from_le_bytes(exp);
        if expires <= now {
            return Ok(Imported::Expired);
        }
        let e = Entry {
            key,
            // Never longer than the state's own idle timeout from now.
            expires: expires.min(now.saturating_add(self.timeout(state, key.proto))),
            generation: u32_at(46),
            egress_rule: u32_at(50),
            ingress_rule: u32_at(54),
            orig_dport: u16_at(58),
            state,
            flags: flags | RESTORED,
        };
        let (mut b, tag) = self.bucket(&key);
        if Self::find(&mut b, &key, tag, now).is_some() {
            return Ok(Imported::Present);
        }
        let Some(w) = (0..WAYS).find(|&w| b.tag(w) == 0 || b.entries[w].expires <= now) else {
            return Ok(Imported::NoRoom);
        };
        b.set_tag(w, tag);
        b.entries[w] = e;
        Ok(Imported::Restored)
    }

    fn timeout(&self, s: State, proto: u8) -> u64 {
        let t = &self.timeouts;
        match (s, proto) {
            (State::SynSent, _) => t.tcp_syn_sent,
            (State::SynRecv, _) => t.tcp_syn_recv,
            (State::Established, _) => t.tcp_established,
            (State::FinWait, _) => t.tcp_fin_wait,
            (State::LastAck, _) => t.tcp_last_ack,
            (State::TimeWait, _) => t.tcp_time_wait,
            (State::Close, _) => t.tcp_close,
            (State::Denied, _) => t.tcp_time_wait,
            (_, ip_proto::ICMP | ip_proto::ICMPV6) => t.icmp,
            (State::Unreplied, ip_proto::UDP) => t.udp_unreplied,
            (State::Replied, ip_proto::UDP) => t.udp_replied,
            (State::Unreplied, _) => t.other_unreplied,
            (State::Replied, _) => t.other_replied,
        }
    }
}

/// SCTP through the TCP state machine (RFC 9260 §4): the first chunk of a
/// packet counts as the TCP flags of the same step. INIT = SYN, INIT-ACK =
/// SYN+ACK, SHUTDOWN and SHUTDOWN-ACK = FIN+ACK (one per side), ABORT = RST,
/// anything else (COOKIE-ECHO, COOKIE-ACK, DATA, SACK, HEARTBEAT,
/// SHUTDOWN-COMPLETE, ...) = ACK. So an association opens with INIT,
/// INIT-ACK, COOKIE-ECHO (established), closes with SHUTDOWN, SHUTDOWN-ACK,
/// SHUTDOWN-COMPLETE (time-wait), and keeps TCP's timeouts. Verification
/// tags are not checked.
pub fn sctp_as_tcp_flags(first_chunk: Option<u8>) -> u8 {
    use crate::wire::sctp::chunk;
    match first_chunk {
        Some(chunk::INIT) => tcpf::SYN,
        Some(chunk::INIT_ACK) => tcpf::SYN | tcpf::ACK,
        Some(chunk::SHUTDOWN | chunk::SHUTDOWN_ACK) => tcpf::FIN | tcpf::ACK,
        Some(chunk::ABORT) => tcpf::RST,
        _ => tcpf::ACK,
    }
}

/// The state machine: the state after a packet going `dir` with `seg`, and
/// the FIN bits seen, or `None` if the packet is invalid in `s`.
///
/// Deliberately loose where real stacks differ (no sequence-window check; a
/// RST is accepted in any state; a bare ACK in SYN-RECV from either side
/// completes the handshake, which covers simultaneous open); strict where
/// a packet cannot belong to the connection (a SYN inside an established
/// connection, SYN with RST or FIN, an ACK before the handshake).
pub fn next_state(s: State, dir: Dir, seg: Seg, fins: u8) -> Option<(State, u8)> {
    let f = match seg {
        Seg::Other => {
            return Some(match (s, dir) {
                (State::Unreplied, Dir::Reply) | (State::Replied, _) => (State::Replied, fins),
                _ => (State::Unreplied, fins),
            });
        }
        Seg::Tcp(f) => f,
    };
    let syn = f & tcpf::SYN != 0;
    let ack = f & tcpf::ACK != 0;
    let fin = f & tcpf::FIN != 0;
    let rst = f & tcpf::RST != 0;
    if syn && (rst || fin) {
        return None;
    }
    if rst {
        return Some((State::Close, fins));
    }
    let fin_bit = match dir {
        Dir::Orig => FIN_ORIG,
        Dir::Reply => FIN_REPLY,
    };
    match s {
        State::SynSent => match (dir, syn, ack) {
            (Dir::Orig, true, false) => Some((State::SynSent, 0)),
            // SYN-ACK, or a SYN crossing ours (simultaneous open).
            (Dir::Reply, true, _) => Some((State::SynRecv, 0)),
            _ => None,
        },
        State::SynRecv => match (dir, syn, ack) {
            (Dir::Orig, true, false) | (Dir::Reply, true, true) => Some((State::SynRecv, 0)),
            (_, false, true) if fin => Some((State::FinWait, fin_bit)),
            (_, false, true) => Some((State::Established, 0)),
            _ => None,
        },
        State::Established | State::FinWait | State::LastAck => {
            if syn {
                return None;
            }
            if fin {
                let fins = fins | fin_bit;
                let both = fins == FIN_ORIG | FIN_REPLY;
                return Some((if both { State::LastAck } else { State::FinWait }, fins));
            }
            if s == State::LastAck && ack {
                return Some((State::TimeWait, fins));
            }
            Some((s, fins))
        }
        State::TimeWait | State::Close => match (dir, syn, ack) {
            // The originator reuses the tuple: a new connection.
            (Dir::Orig, true, false) => Some((State::SynSent, 0)),
            (_, true, _) => None,
            _ => Some((s, fins)),
        },
        State::Unreplied | State::Replied | State::Denied => None,
    }
}

/// An ICMP error's quoted packet: the flow key of the packet that caused
/// it, as its sender sent it. `quote` is the ICMP payload (after the
/// 8-byte ICMP header). Only the first 8 bytes of the quoted L4 header are
/// read (all ICMPv4 guarantees). IPv6 extension headers in the quote are
/// not walked (the quote is then not matched).
pub fn quoted_key(quote: &[u8], v6: bool) -> Option<FlowKey> {
    let (src, dst, proto, l4) = if v6 {
        if quote.first()? >> 4 != 6 {
            return None;
        }
        let s: [u8; 16] = quote.get(8..24)?.try_into().ok()?;
        let d: [u8; 16] = quote.get(24..40)?.try_into().ok()?;
        (
            IpAddr::V6(s.into()),
            IpAddr::V6(d.into()),
            *quote.get(6)?,
            quote.get(40..)?,
        )
    } else {
        let v = *quote.first()?;
        let ihl = usize::from(v & 0x0f) * 4;
        if v >> 4 != 4 || ihl < 20 {
            return None;
        }
        // A quoted non-first fragment has no L4 header.
        let frag = u16::from_be_bytes([*quote.get(6)?, *quote.get(7)?]) & 0x1fff;
        if frag != 0 {
            return None;
        }
        let s: [u8; 4] = quote.get(12..16)?.try_into().ok()?;
        let d: [u8; 4] = quote.get(16..20)?.try_into().ok()?;
        (
            IpAddr::V4(s.into()),
            IpAddr::V4(d.into()),
            *quote.get(9)?,
            quote.get(ihl..)?,
        )
    };
    let be = |i: usize| Some(u16::from_be_bytes([*l4.get(i)?, *l4.get(i + 1)?]));
    let (sport, dport) = match proto {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => (be(0)?, be(2)?),
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            // Only echo can be quoted by an error (errors never answer errors).
            (be(4)?, be(0)?)
        }
        _ => (0, 0),
    };
    Some(FlowKey {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = tcpf::SYN;
    const SYNACK: u8 = tcpf::SYN | tcpf::ACK;
    const ACK: u8 = tcpf::ACK;
    const FINACK: u8 = tcpf::FIN | tcpf::ACK;
    const RST: u8 = tcpf::RST;

    fn k4(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: IpAddr::from(s),
            dst: IpAddr::from(d),
            proto,
            sport: sp,
            dport: dp,
        }
    }
    fn rev(k: &FlowKey) -> FlowKey {
        FlowKey {
            src: k.dst,
            dst: k.src,
            proto: k.proto,
            sport: k.dport,
            dport: k.sport,
        }
    }
    fn adm(g: u32) -> Admission {
        Admission {
            generation: g,
            egress_rule: RuleId(1),
            ingress_rule: RuleId(2),
            audit: false,
        }
    }
    fn tcp() -> FlowKey {
        k4([10, 1, 0, 2], 40000, [10, 1, 0, 1], 80, ip_proto::TCP)
    }
    fn state(ct: &Conntrack, k: &FlowKey, now: u64) -> Option<State> {
        ct.peek(k, now).map(|(_, s, _)| s)
    }
    fn pass(t: Track) -> (Dir, State) {
        match t {
            Track::Pass { dir, state, .. } => (dir, state),
            other => panic!("expected pass, got {other:?}"),
        }
    }

    #[test]
    fn flush_addrs_removes_both_directions_of_an_address_only() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let gone = k4([10, 1, 0, 2], 40000, [10, 1, 0, 1], 80, ip_proto::TCP);
        let to_gone = k4([10, 1, 0, 3], 40001, [10, 1, 0, 2], 53, ip_proto::UDP);
        let other = k4([10, 1, 0, 3], 40002, [10, 1, 0, 1], 80, ip_proto::TCP);
        let v6 = FlowKey {
            src: "fd00::2".parse().unwrap(),
            dst: "fd00::1".parse().unwrap(),
            proto: ip_proto::TCP,
            sport: 1,
            dport: 2,
        };
        for k in [&gone, &to_gone, &other, &v6] {
            assert!(matches!(
                ct.insert(k, Seg::Other, adm(1), 0),
                Insert::Inserted { .. }
            ));
        }
        let addrs: Vec<IpAddr> = vec![
            IpAddr::from([10, 1, 0, 2]),
            "fd00::2".parse().unwrap(),
            IpAddr::from([10, 9, 9, 9]),
        ];
        let mut per = Vec::new();
        assert_eq!(ct.count_addrs(&addrs, 1, &mut per), 4);
        assert_eq!(per, vec![2, 1, 0]);
        // An address given twice gets the same count at both places.
        let twice = [addrs[0], addrs[2], addrs[0]];
        assert_eq!(ct.count_addrs(&twice, 1, &mut per), 4);
        assert_eq!(per, vec![2, 0, 2]);
        assert_eq!(ct.flush_addrs(&addrs, 1), 3);
        assert!(ct.peek(&gone, 1).is_none());
        assert!(ct.peek(&rev(&to_gone), 1).is_none());
        assert!(ct.peek(&v6, 1).is_none());
        assert!(ct.peek(&other, 1).is_some(), "another pod's flow stays");
        assert_eq!(ct.count_addrs(&addrs, 1, &mut per), 1);
        assert_eq!(per, vec![0, 0, 0]);
        assert_eq!(ct.count(1), 1);
        // The IPv4 address as an IPv4-mapped IPv6 one is another address.
        let mapped: IpAddr = "::ffff:10.1.0.3".parse().unwrap();
        assert_eq!(ct.flush_addrs(&[mapped], 1), 0);
        assert_eq!(ct.count(1), 1);
    }

    #[test]
    fn entries_pages_through_live_entries_in_their_original_direction() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let mut keys = Vec::new();
        for i in 0..100u16 {
            let k = k4([10, 1, 0, 2], 40000 + i, [10, 1, 0, 1], 80, ip_proto::UDP);
            assert!(matches!(
                ct.insert(&k, Seg::Other, adm(1), 0),
                Insert::Inserted { .. }
            ));
            keys.push(k);
        }
        // A reply seen: the entry still reads in its original direction.
        ct.track(&rev(&keys[0]), Seg::Other, 1, 1);
        let mut out = Vec::new();
        let (mut at, mut pages) = (Some(0), 0);
        while let Some(start) = at {
            at = ct.entries(start, 7, 1, &mut out);
            pages += 1;
        }
        assert!(pages > 10, "{pages} pages");
        let mut got: Vec<FlowKey> = out.iter().map(|e| e.key).collect();
        got.sort_by_key(|k| k.sport);
        assert_eq!(got, keys);
        let first = out.iter().find(|e| e.key == keys[0]).unwrap();
        assert_eq!((first.state, first.adm), (State::Replied, adm(1)));
        // Expired entries are not listed.
        out.clear();
        assert_eq!(ct.entries(0, usize::MAX, u64::MAX, &mut out), None);
        assert!(out.is_empty());
    }

    #[test]
    fn entry_is_a_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        assert!(Conntrack::bytes_per_entry() <= 72);
    }

    /// Line 0: tags and the lock; entry `w` alone on line `w + 1` (what
    /// `prefetch` assumes, and one line per lookup, not two).
    #[test]
    fn bucket_layout() {
        let line = Line::default();
        let base = &line as *const Line as usize;
        assert_eq!(base % 64, 0);
        assert_eq!(std::mem::size_of::<Line>(), 64 * (WAYS + 1));
        let lock = &line.lock as *const _ as usize - base;
        assert!(lock + 8 <= 64, "lock header at {lock}");
        let b = line.locked();
        for w in 0..WAYS {
            let e = &b.entries[w] as *const Entry as usize - base;
            assert_eq!(e, 64 * (w + 1), "entry {w}");
        }
    }

    /// Prefetch loads the bucket and way where the lookup finds a flow,
    /// from either direction; an insert takes the home way while it is
    /// free, and any free way once it is not.
    #[test]
    fn prefetch_loads_the_home_way() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let k = tcp();
        let h = ct.prefetch(&k);
        assert_eq!(h, ct.prefetch(&rev(&k)));
        assert!(matches!(
            ct.insert(&k, Seg::Tcp(tcpf::SYN), adm(1), 0),
            Insert::Inserted { .. }
        ));
        let line = ct.line(h);
        let ways: Vec<usize> = (0..WAYS)
            .filter(|&w| line.tags[w].load(Relaxed) == tag_of(h))
            .collect();
        assert_eq!(ways, [home_way(h)]);
        assert!(ct.peek(&k, 1).is_some());
        // 200 flows in 64 buckets: many share a home way, and all still
        // find a free way (a bucket holds 16).
        let mut inserted = 1;
        for p in 0..200u16 {
            let k = k4([10, 1, 0, 3], 1000 + p, [10, 1, 0, 1], 80, ip_proto::UDP);
            if let Insert::Inserted { evicted } = ct.insert(&k, Seg::Other, adm(1), 0) {
                assert!(!evicted);
                inserted += 1;
            }
        }
        assert_eq!(inserted, 201);
        assert_eq!(ct.count(1), 201);
    }

    /// A hint is used only for its own key on its own table: the other
    /// direction's, another flow's, another table's or a hint from before a
    /// reseed still finds the flow (hashed again).
    #[test]
    fn a_hint_finds_its_flow_and_a_wrong_one_is_ignored() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let other = Conntrack::new(1024, Timeouts::default());
        let k = tcp();
        ct.insert(&k, Seg::Tcp(tcpf::SYN), adm(1), 0);
        let mine = ct.prefetch_hint(&k);
        // The hash alone (stage 0 loads the lines later): the same hint.
        assert_eq!(ct.hint(&k), mine);
        assert_eq!(mine.key(), &k);
        assert_eq!(mine.hash, ct.prefetch(&k));
        let udp = k4([10, 1, 0, 3], 1, [10, 1, 0, 1], 80, ip_proto::UDP);
        let hints = [
            Some(mine),
            Some(ct.prefetch_hint(&rev(&k))),
            Some(ct.prefetch_hint(&udp)),
            Some(other.prefetch_hint(&k)),
            None,
        ];
        for (i, hint) in hints.into_iter().enumerate() {
            // A fresh look at the same flow each time: a retransmitted SYN.
            let t = ct.track_hinted(&k, hint.as_ref(), Seg::Tcp(tcpf::SYN), 1, 1);
            assert!(
                matches!(
                    t,
                    Track::Pass {
                        state: State::SynSent,
                        ..
                    }
                ),
                "hint {i}: {t:?}"
            );
        }
        assert_ne!(other.prefetch(&k), mine.hash);
        let mut ct = ct;
        ct.reseed((7, 8));
        ct.insert(&k, Seg::Tcp(tcpf::SYN), adm(1), 0);
        let t = ct.track_hinted(&k, Some(&mine), Seg::Tcp(tcpf::SYN), 1, 1);
        assert!(matches!(t, Track::Pass { .. }), "{t:?}");
    }

    /// Stage 0's second step loads the line of an entry off its home way,
    /// and nothing for one on it or for another table's hint; lookups are
    /// the same after it.
    #[test]
    fn the_second_step_loads_entries_off_their_home_way() {
        // One bucket of 16 ways: most of 16 flows end up off home.
        let ct = Conntrack::new(WAYS, Timeouts::default());
        let other = Conntrack::new(WAYS, Timeouts::default());
        let flows: Vec<FlowKey> = (0..WAYS as u16)
            .map(|p| k4([10, 1, 0, 3], 1000 + p, [10, 1, 0, 1], 80, ip_proto::TCP))
            .collect();
        for k in &flows {
            assert!(matches!(
                ct.insert(k, Seg::Tcp(tcpf::SYN), adm(1), 0),
                Insert::Inserted { .. }
            ));
        }
        let mut off_home = 0;
        for k in &flows {
            let hint = ct.prefetch_hint(k);
            let (key, _) = CtKey::of(k);
            let (mut b, tag) = ct.bucket(&key);
            let w = Conntrack::find(&mut b, &key, tag, 1).expect("inserted");
            drop(b);
            let ways = ct.prefetch_entry(&hint);
            if w == home_way(hint.hash) {
                assert_eq!(ways, 0, "{k:?} at home");
            } else {
                off_home += 1;
                assert_ne!(ways & (1 << w), 0, "{k:?} on way {w}: {ways:#x}");
            }
            assert_eq!(other.prefetch_entry(&hint), 0);
            let t = ct.track_hinted(k, Some(&hint), Seg::Tcp(tcpf::SYN), 1, 1);
            assert!(matches!(t, Track::Pass { .. }), "{t:?}");
        }
        assert!(off_home > 0);
    }

    /// The table on huge pages, on 4 KiB pages, and under 2 MiB on the heap:
    /// empty at start, the same lookups, and a reseed empties it.
    #[test]
    fn every_table_memory_tracks_alike() {
        for (size, huge, pages) in [
            (DEFAULT_SIZE, true, None),
            (
                DEFAULT_SIZE,
                false,
                Some(Pages::Small {
                    advice_refused: false,
                }),
            ),
            (1024, true, Some(Pages::Heap)),
        ] {
            let mut ct = Conntrack::with_huge_pages(size, Timeouts::default(), huge);
            if let Some(p) = pages {
                assert_eq!(ct.table_pages(), p);
            } else {
                // THP compiled out: the advice is refused, small pages.
                assert!(matches!(
                    ct.table_pages(),
                    Pages::Advised
                        | Pages::Small {
                            advice_refused: true
                        }
                ));
            }
            assert_eq!(ct.huge_page_bytes().is_some(), size == DEFAULT_SIZE);
            assert_eq!(ct.count(0), 0);
            // 200 flows: no bucket of the 1024-entry table gets 16.
            for p in 0..200u16 {
                let k = k4([10, 1, 0, 3], p, [10, 1, 0, 1], 80, ip_proto::UDP);
                assert!(matches!(
                    ct.insert(&k, Seg::Other, adm(1), 0),
                    Insert::Inserted { evicted: false }
                ));
                let t = ct.track(&rev(&k), Seg::Other, 1, 1);
                assert!(matches!(
                    t,
                    Track::Pass {
                        state: State::Replied,
                        ..
                    }
                ));
            }
            assert_eq!(ct.count(1), 200);
            ct.reseed((1, 2));
            assert_eq!(ct.count(1), 0);
        }
    }

    /// The u128 form of an address is its IPv4-mapped (or IPv6) bytes.
    #[test]
    fn addresses_as_bytes() {
        let v4: IpAddr = [10, 1, 2, 3].into();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            addr_bytes(v4),
            (Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets(), false)
        );
        assert_eq!(
            addr_bytes(v6),
            ("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(), true)
        );
    }

    #[test]
    fn tcp_handshake_data_and_close() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let k = tcp();
        let r = rev(&k);
        assert_eq!(ct.track(&k, Seg::Tcp(SYN), 1, 0), Track::Miss);
        assert!(matches!(
            ct.insert(&k, Seg::Tcp(SYN), adm(1), 0),
            Insert::Inserted { evicted: false }
        ));
        assert_eq!(ct.insert(&k, Seg::Tcp(SYN), adm(1), 0), Insert::Exists);
        assert_eq!(state(&ct, &k, 1), Some(State::SynSent));
        assert_eq!(
            pass(ct.track(&k, Seg::Tcp(SYN), 1, 1)),
            (Dir::Orig, State::SynSent)
        );
        assert_eq!(
            pass(ct.track(&r, Seg::Tcp(SYNACK), 1, 2)),
            (Dir::Reply, State::SynRecv)
        );
        assert_eq!(
            pass(ct.track(&k, Seg::Tcp(ACK), 1, 3)),
            (Dir::Orig, State::Established)
        );
        assert_eq!(
            pass(ct.track(&r, Seg::Tcp(ACK), 1, 4)),
            (Dir::Reply, State::Established)
        );
        assert_eq!(
            pass(ct.track(&k, Seg::Tcp(FINACK), 1, 5)),
            (Dir::Orig, State::FinWait)
        );
        // The same side's FIN retransmitted stays in FIN-WAIT.
        assert_eq!(
            pass(ct.track(&k, Seg::Tcp(FINACK), 1, 5)),
            (Dir::Orig, State::FinWait)
        );
        assert_eq!(
            pass(ct.track(&r, Seg::Tcp(FINACK), 1, 6)),
            (Dir::Reply, State::LastAck)
        );
        assert_eq!(
            pass(ct.track(&k, Seg::Tcp(ACK), 1, 7)),
            (Dir::Orig, State::TimeWait)
        );
        // Port reuse after TIME-WAIT: a new SYN reopens.
        assert_eq!(
            pass(ct.track(&k, Seg::Tcp(SYN), 1, 8)),
            (Dir::Orig, State::SynSent)
        );
    }

    #[test]
    fn tcp_invalid_segments() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let k = tcp();
        let r = rev(&k);
        ct.insert(&k, Seg::Tcp(SYN), adm(1), 0);
        // ACK from the client before any SYN-ACK; SYN-ACK from the client.
        assert!(matches!(
            ct.track(&k, Seg::Tcp(ACK), 1, 1),
            Track::Invalid { .. }
        ));
        assert!(matches!(
            ct.track(&k, Seg::Tcp(SYNACK), 1, 1),
            Track::Invalid { .. }
        ));
        // Data from the server before its SYN-ACK.
        assert!(matches!(
            ct.track(&r, Seg::Tcp(ACK), 1, 1),
            Track::Invalid { .. }
        ));
        // SYN+RST is never valid; nothing changed.
        assert!(matches!(
            ct.track(&k, Seg::Tcp(SYN | RST), 1, 1),
            Track::Invalid { .. }
        ));
        assert_eq!(state(&ct, &k, 1), Some(State::SynSent));
        ct.track(&r, Seg::Tcp(SYNACK), 1, 2);
        ct.track(&k, Seg::Tcp(ACK), 1, 3);
        // A SYN inside an established connection.
        assert!(matches!(
            ct.track(&k, Seg::Tcp(SYN), 1, 4),
            Track::Invalid {
                state: State::Established,
                ..
            }
        ));
        // RST from either side closes.
        assert_eq!(
            pass(ct.track(&r, Seg::Tcp(RST), 1, 5)),
            (Dir::Reply, State::Close)
        );
        assert!(matches!(
            ct.track(&r, Seg::Tcp(SYNACK), 1, 6),
            Track::Invalid { .. }
        ));
    }

    #[test]
    fn per_state_timeouts() {
        let t = Timeouts::default();
        let ct = Conntrack::new(1024, t);
        let k = tcp();
        let r = rev(&k);
        ct.insert(&k, Seg::Tcp(SYN), adm(1), 0);
        assert!(ct.peek(&k, t.tcp_syn_sent - 1).is_some());
        assert!(ct.peek(&k, t.tcp_syn_sent).is_none());
        // Expired: the next SYN is a miss and a fresh insert.
        let now = t.tcp_syn_sent + 5;
        assert_eq!(ct.track(&k, Seg::Tcp(SYN), 1, now), Track::Miss);
        ct.insert(&k, Seg::Tcp(SYN), adm(1), now);
        ct.track(&r, Seg::Tcp(SYNACK), 1, now);
        ct.track(&k, Seg::Tcp(ACK), 1, now);
        // Established lives 6 h from its last packet.
        let later = now + t.tcp_established - 1;
        assert_eq!(state(&ct, &k, later), Some(State::Established));
        ct.track(&r, Seg::Tcp(ACK), 1, later);
        assert!(ct.peek(&k, later + t.tcp_established - 1).is_some());
        assert!(ct.peek(&k, later + t.tcp_established).is_none());
        // RST: the entry is gone after tcp_close.
        let k2 = k4([10, 1, 0, 2], 40001, [10, 1, 0, 1], 80, ip_proto::TCP);
        ct.insert(&k2, Seg::Tcp(SYN), adm(1), 0);
        ct.track(&rev(&k2), Seg::Tcp(RST), 1, 10);
        assert!(ct.peek(&k2, 10 + t.tcp_close - 1).is_some());
        assert!(ct.peek(&k2, 10 + t.tcp_close).is_none());
        // UDP: unreplied 30 s, replied 120 s.
        let u = k4([10, 1, 0, 2], 5353, [10, 1, 0, 1], 53, ip_proto::UDP);
        ct.insert(&u, Seg::Other, adm(1), 0);
        assert!(ct.peek(&u, t.udp_unreplied).is_none());
        ct.insert(&u, Seg::Other, adm(1), 100);
        assert_eq!(
            pass(ct.track(&rev(&u), Seg::Other, 1, 101)),
            (Dir::Reply, State::Replied)
        );
        assert!(ct.peek(&u, 101 + t.udp_replied - 1).is_some());
        assert!(ct.peek(&u, 101 + t.udp_replied).is_none());
    }

    #[test]
    fn mid_stream_pickup() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let k = tcp();
        ct.insert(&k, Seg::Tcp(ACK), adm(1), 0);
        match ct.track(&rev(&k), Seg::Tcp(ACK), 1, 1) {
            Track::Pass {
                dir: Dir::Reply,
                state: State::Established,
                pickup: true,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_directions_and_ipv6() {
        let ct = Conntrack::new(64, Timeouts::default());
        let a: IpAddr = "fd00::2".parse().unwrap();
        let b: IpAddr = "fd00::1".parse().unwrap();
        let k = FlowKey {
            src: a,
            dst: b,
            proto: ip_proto::UDP,
            sport: 9,
            dport: 7,
        };
        ct.insert(&k, Seg::Other, adm(3), 0);
        assert_eq!(ct.peek(&k, 1).unwrap().0, Dir::Orig);
        assert_eq!(ct.peek(&rev(&k), 1).unwrap().0, Dir::Reply);
        // Same addresses, other family or other ports: other flows.
        let mut other = k;
        other.dport = 8;
        assert!(ct.peek(&other, 1).is_none());
        let v4 = k4([0, 0, 0, 2], 9, [0, 0, 0, 1], 7, ip_proto::UDP);
        assert!(ct.peek(&v4, 1).is_none());
        // Stale generation: the original direction comes back for judging.
        match ct.track(&rev(&k), Seg::Other, 4, 2) {
            Track::Stale { dir, orig, adm } => {
                assert_eq!(dir, Dir::Reply);
                assert_eq!(orig, k);
                assert_eq!(adm.generation, 3);
            }
            t => panic!("{t:?}"),
        }
        assert!(ct.readmit(&rev(&k), adm(4), 3));
        assert!(matches!(
            ct.track(&rev(&k), Seg::Other, 4, 4),
            Track::Pass { .. }
        ));
        assert!(ct.remove(&rev(&k), 5));
        assert!(ct.peek(&k, 5).is_none());
    }

    #[test]
    fn icmp_echo_request_and_reply_share_an_entry() {
        let ct = Conntrack::new(64, Timeouts::default());
        let req = k4([10, 1, 0, 1], 77, [10, 1, 0, 2], 8 << 8, ip_proto::ICMP);
        let reply = k4([10, 1, 0, 2], 77, [10, 1, 0, 1], 0, ip_proto::ICMP);
        ct.insert(&req, Seg::Other, adm(1), 0);
        assert_eq!(ct.peek(&reply, 1).unwrap().0, Dir::Reply);
        match ct.track(&reply, Seg::Other, 2, 1) {
            Track::Stale { orig, .. } => assert_eq!(orig, req),
            t => panic!("{t:?}"),
        }
        let other_id = k4([10, 1, 0, 2], 78, [10, 1, 0, 1], 0, ip_proto::ICMP);
        assert!(ct.peek(&other_id, 1).is_none());
    }

    /// Fills one bucket (a 1-bucket table) and checks the eviction order.
    #[test]
    fn eviction_protects_established() {
        let ct = Conntrack::new(WAYS, Timeouts::default());
        assert_eq!(ct.capacity(), WAYS);
        let key = |i: u16| k4([10, 1, 0, 2], 1000 + i, [10, 1, 0, 1], 80, ip_proto::TCP);
        // WAYS-2 established, 1 closing, 1 SYN-SENT.
        let closing = WAYS as u16 - 2;
        let syn = WAYS as u16 - 1;
        for i in 0..WAYS as u16 {
            let k = key(i);
            ct.insert(&k, Seg::Tcp(SYN), adm(1), 0);
            if i <= closing {
                ct.track(&rev(&k), Seg::Tcp(SYNACK), 1, 0);
                ct.track(&k, Seg::Tcp(ACK), 1, 0);
            }
            if i == closing {
                ct.track(&k, Seg::Tcp(FINACK), 1, 0);
            }
        }
        // The closing one goes first, then the new one, then nothing.
        let n1 = key(100);
        assert_eq!(
            ct.insert(&n1, Seg::Tcp(SYN), adm(1), 1),
            Insert::Inserted { evicted: true }
        );
        assert!(ct.peek(&key(closing), 1).is_none());
        assert!(ct.peek(&key(syn), 1).is_some());
        let n2 = key(101);
        assert_eq!(
            ct.insert(&n2, Seg::Tcp(SYN), adm(1), 2),
            Insert::Inserted { evicted: true }
        );
        assert!(ct.peek(&key(syn), 2).is_none());
        // Now a new SYN evicts the oldest SYN-SENT (n1), never established.
        let n3 = key(102);
        assert_eq!(
            ct.insert(&n3, Seg::Tcp(SYN), adm(1), 3),
            Insert::Inserted { evicted: true }
        );
        assert!(ct.peek(&n1, 3).is_none());
        assert!(ct.peek(&n2, 3).is_some());
        // Established everywhere: full.
        for k in [n2, n3] {
            ct.track(&rev(&k), Seg::Tcp(SYNACK), 1, 4);
            ct.track(&k, Seg::Tcp(ACK), 1, 4);
        }
        assert_eq!(ct.insert(&key(103), Seg::Tcp(SYN), adm(1), 5), Insert::Full);
        for i in 0..closing {
            assert_eq!(state(&ct, &key(i), 5), Some(State::Established));
        }
        assert_eq!(ct.count(5), WAYS);
        // Once they expire, the ways are free again.
        let t = ct.timeouts().tcp_established;
        assert_eq!(ct.count(5 + t), 0);
        assert!(matches!(
            ct.insert(&key(103), Seg::Tcp(SYN), adm(1), 5 + t),
            Insert::Inserted { evicted: false }
        ));
    }

    /// ICMPv4 port unreachable from 10.1.0.1 quoting a UDP datagram
    /// 10.1.0.2:40000 -> 10.1.0.1:53 (golden bytes: IP header + 8 bytes).
    #[test]
    fn icmp_error_quote_matches_its_flow() {
        #[rustfmt::skip]
        let icmp: [u8; 36] = [
            // ICMP: type 3 code 3, checksum, unused
            0x03, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // quoted IPv4 header: v4 ihl5, tos, len 40, id, DF, ttl 64, UDP
            0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
            10, 1, 0, 2, // src
            10, 1, 0, 1, // dst
            // quoted UDP: 40000 -> 53, len 20, checksum
            0x9c, 0x40, 0x00, 0x35, 0x00, 0x14, 0xab, 0xcd,
        ];
        let inner = quoted_key(&icmp[8..], false).unwrap();
        let flow = k4([10, 1, 0, 2], 40000, [10, 1, 0, 1], 53, ip_proto::UDP);
        assert_eq!(inner, flow);
        let ct = Conntrack::new(64, Timeouts::default());
        ct.insert(&flow, Seg::Other, adm(1), 0);
        // The error travels like a reply: the quote reversed is its direction.
        assert_eq!(ct.peek(&inner, 1).unwrap().0, Dir::Orig);
        assert_eq!(ct.peek(&rev(&inner), 1).unwrap().0, Dir::Reply);
        // Truncated or non-IP quotes are not matched.
        assert!(quoted_key(&icmp[8..30], false).is_none());
        assert!(quoted_key(&icmp[9..], false).is_none());
        assert!(quoted_key(&icmp[8..], true).is_none());
    }

    #[test]
    fn icmpv6_error_quote() {
        let mut q = vec![0u8; 48];
        q[0] = 0x60;
        q[6] = ip_proto::TCP;
        q[8..24].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        q[24..40].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        q[40..44].copy_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
        let k = quoted_key(&q, true).unwrap();
        assert_eq!(k.src, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!((k.proto, k.sport, k.dport), (ip_proto::TCP, 40000, 80));
    }
}
