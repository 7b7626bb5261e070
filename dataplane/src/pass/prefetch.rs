//! Stage 0, once per batch before any frame of it is judged: conntrack
//! prefetch. At 1M flows the table (~140 MB) is far out of cache and each
//! lookup waits for memory (its bucket's tag-and-lock line, then the
//! entry's line). Judged one by one, a batch pays those waits in series;
//! this stage puts the loads in flight ahead of the frames that need them:
//! per frame, [`stage0`] parses it (stage 2's own parser) and hashes its
//! flow key, and the loads of its flow's bucket line and home-way entry
//! line ([`crate::conntrack::Conntrack::prefetch_lines`]) start
//! [`STAGE0_LEAD`](super::STAGE0_LEAD) frames before it is judged: for the
//! batch's first frames while stage 0 parses them, for each later one
//! while the pass judges the frame that many before it
//! ([`WorkerState::stage0_for`]). (Loading the whole batch's lines up front,
//! as this stage first did, asked for 128 lines at once, more than the
//! core keeps in flight: stage 0's parse stalled behind them, 0.92× the
//! pipelined rate at 1M flows.) Then the pass runs per frame as before
//! and finds those lines in cache (or on their way).
//!
//! Nothing here changes any state, counts or drops: a frame that does not
//! parse, an ICMP error (its flow is the inner packet's) or a later
//! fragment (no ports) is simply not prefetched, and the pass judges every
//! frame exactly as without this stage. Frames from the underlay are
//! prefetched under their outer key (a wasted prefetch, not a wrong
//! verdict): the inner frame is only reached by stage 1.
//!
//! What the stage learned is handed to the pass with the frame
//! ([`Stage0`], [`WorkerState::set_stage0`]), so that a frame is parsed
//! and hashed once, not twice: the conntrack lookup of stage 5 uses the
//! hash when the key it looks up is the one hashed here, and stage 2 uses
//! the parse when the frame it is about to parse is byte for byte the one
//! parsed here ([`Stage0::parsed_for`]: same length, same [`HEAD`] bytes
//! after the MAC addresses, which hold every byte the parse read). A frame
//! rewritten after stage 0 (or unwrapped by stage 1), or another frame's
//! hint, fails that check and is parsed from its own bytes: the hint saves
//! work, it never decides. Stage 0 writes all this in place, into the
//! worker's slot for the frame ([`WorkerState::stage0_push`]; the parse
//! too, [`super::parse::parse_into`]): returned and copied by value, it
//! stalled on store forwarding.
//!
//! A second step runs during the pass, [`STAGE0_AHEAD`] frames ahead of the
//! frame being judged ([`WorkerState::stage0_for`]), when the bucket line
//! the first step asked for has arrived: if the flow's tag sits on a way
//! other than its home way, that way's entry line is loaded too
//! ([`crate::conntrack::Conntrack::prefetch_entry`]).
//!
//! Whether a batch runs stage 0 at all is the worker's [`FlowCensus`]
//! (`--ct-prefetch auto`, the default): the stage pays only when the flows
//! in use no longer fit in cache (it measured 0.96× the pass without it
//! at 1k flows, 1.12× at 10k, 1.53× at 100k and 2.18× at 1M:
//! docs/performance.md, "Conntrack prefetch by a flow census"), and how
//! many flows a worker sees is a property of its traffic, not of the
//! table's size.
use weir_model::status::{CtPrefetch, CtPrefetchStatus};

use super::parse::parse_into;
use super::{FlowKey, Fragment, Parsed, WorkerState};
use crate::conntrack::{Conntrack, CtHint};

/// Bits of the flow census's bitmap (2 KiB: stays in L1 beside the pass).
pub const CENSUS_BITS: usize = 1 << 14;
/// Packets per census window.
pub const CENSUS_WINDOW: u32 = 1 << 14;
/// `--ct-prefetch auto` turns stage 0 on when a window saw at least this
/// many distinct flows...
pub const CENSUS_ON_FLOWS: u64 = 4096;
/// ...and off again when one saw fewer than this many (hysteresis: a
/// worker near the threshold does not flap).
pub const CENSUS_OFF_FLOWS: u64 = 2048;
/// While stage 0 is off, it (and so the census) runs on one batch in this
/// many: the census keeps counting at 1/16 of the stage's cost.
pub const CENSUS_SAMPLE_EVERY: u32 = 16;
/// Set bits of the bitmap that mean [`CENSUS_ON_FLOWS`] distinct flows:
/// with n distinct hashes in m bits, m·(1 − e^(−n/m)) bits are expected
/// set (16 384 × (1 − e^(−1/4)) = 3624.1); the unit test checks it.
const CENSUS_ON_BITS: u32 = 3624;
/// The same for [`CENSUS_OFF_FLOWS`]: 16 384 × (1 − e^(−1/8)) = 1925.2.
const CENSUS_OFF_BITS: u32 = 1925;

/// How many distinct flows a worker sees: linear counting (Whang, Vander-
/// Zanden, Taylor, 1990) over the top bits of the conntrack hashes stage 0
/// computes anyway: one bit set per packet, and once a window (of
/// [`CENSUS_WINDOW`] packets) a count of the set bits decides whether the
/// next batches run stage 0. Written by hand: a HyperLogLog crate would
/// hash again and allocate per sketch, and this needs one decision, not an
/// accurate count (a flow's hash is already uniform).
#[derive(Debug, Clone)]
pub struct FlowCensus {
    bits: Box<[u64; CENSUS_BITS / 64]>,
    /// Packets recorded in this window.
    seen: u32,
    /// Bits set in this window (kept as they are set: a window may close
    /// early on it).
    set: u32,
    /// Batches asked about (the sampling while off).
    batches: u32,
    mode: CtPrefetch,
    on: bool,
    last: CtPrefetchStatus,
}

impl FlowCensus {
    pub fn new(mode: CtPrefetch) -> Self {
        FlowCensus {
            bits: Box::new([0; CENSUS_BITS / 64]),
            seen: 0,
            set: 0,
            batches: 0,
            mode,
            on: mode == CtPrefetch::On,
            last: CtPrefetchStatus::default(),
        }
    }

    /// Counts one packet's flow (its conntrack hash).
    #[inline]
    pub fn record(&mut self, hash: u64) {
        let b = (hash >> (64 - CENSUS_BITS.trailing_zeros())) as usize;
        if let Some(w) = self.bits.get_mut(b / 64) {
            let bit = 1 << (b % 64);
            self.set += u32::from(*w & bit == 0);
            *w |= bit;
        }
        self.seen = self.seen.saturating_add(1);
    }

    /// Once per batch, before stage 0: whether it runs on this batch.
    /// Closes the window first when it is full, or, while stage 0 is off,
    /// as soon as it has seen enough flows to turn it on (bits are only
    /// ever added in a window, so the full window would decide the same):
    /// with 1M flows, after ~4600 packets counted instead of 16 384.
    #[inline]
    pub fn wanted(&mut self) -> bool {
        let early = !self.on && self.mode == CtPrefetch::Auto && self.set >= CENSUS_ON_BITS;
        if self.seen >= CENSUS_WINDOW || early {
            self.close();
        }
        match self.mode {
            CtPrefetch::On => true,
            CtPrefetch::Off => false,
            CtPrefetch::Auto => {
                let n = self.batches;
                self.batches = n.wrapping_add(1);
                self.on || n.is_multiple_of(CENSUS_SAMPLE_EVERY)
            }
        }
    }

    fn close(&mut self) {
        let set = self.set;
        debug_assert_eq!(set, self.bits.iter().map(|w| w.count_ones()).sum::<u32>());
        let was = self.on;
        if self.mode == CtPrefetch::Auto {
            self.on = match self.on {
                true => set >= CENSUS_OFF_BITS,
                false => set >= CENSUS_ON_BITS,
            };
        }
        self.last = CtPrefetchStatus {
            on: self.on,
            flows: estimate(set),
            window: u64::from(self.seen),
            switches: self.last.switches + u64::from(was != self.on),
        };
        self.bits.fill(0);
        self.seen = 0;
        self.set = 0;
    }

    /// Now: whether stage 0 runs, and the last window's count.
    pub fn status(&self) -> CtPrefetchStatus {
        CtPrefetchStatus {
            on: self.on,
            ..self.last
        }
    }
}

/// Linear counting's estimate from `set` bits of [`CENSUS_BITS`]:
/// −m·ln(1 − set/m); a full bitmap reads as m·ln(m) (≈ 159k, "at least").
fn estimate(set: u32) -> u64 {
    let m = CENSUS_BITS as f64;
    let zero = (m - f64::from(set)).max(1.0) / m;
    (-m * zero.ln()).round() as u64
}

/// Bytes a [`Stage0`] keeps to recognise the frame, from its EtherType on
/// ([`HEAD_AT`]; the MAC addresses are not parsed): an IPv4 header with up
/// to 22 bytes of options or an IPv6 header without extension headers, and
/// the first 20 bytes of the L4 header (all [`super::parse`] reads of it: ports,
/// TCP flags and data offset, UDP length, the first SCTP chunk's type,
/// ICMP type, code and echo identifier). Frames whose L4 header starts
/// later get the hash handoff only. Compared in two fixed-size parts: the
/// first [`HEAD_SHORT`] bytes (all of them for IPv4 with up to 6 bytes of
/// options: a minimum-size Ethernet frame of 60 bytes has them), the rest
/// only when the parse read there.
pub const HEAD: usize = 64;
/// See [`HEAD`].
pub const HEAD_SHORT: usize = 48;
/// Where the kept bytes start in the frame.
pub const HEAD_AT: usize = 12;

/// The most of the L4 header [`super::parse`] reads.
const L4_READ: usize = 20;

/// What stage 0 learned about one frame, for the pass. The worker keeps
/// one per frame of the batch in its state and stage 0 writes it there in
/// place ([`WorkerState::stage0_push`]): moved around by value it was ~200
/// bytes copied through the stack per frame (`stage0_push` 11 % of the 1k
/// pass's samples, docs/performance.md).
#[derive(Debug, Clone, Copy)]
pub struct Stage0 {
    /// Written by stage 0 for the frame of this slot (a slot of the
    /// worker's is reused batch after batch).
    valid: bool,
    /// All the parse read lies in `head`: `parsed` may be handed over.
    whole: bool,
    /// The parse read beyond the first [`HEAD_SHORT`] bytes of `head`.
    long: bool,
    ct: CtHint,
    parsed: Parsed,
    /// The frame it was parsed from: its length and bytes `HEAD_AT..`
    /// (zeros after the end of a shorter frame).
    len: usize,
    head: [u8; HEAD],
}

impl Stage0 {
    /// A slot nothing was written to.
    pub(super) const EMPTY: Stage0 = Stage0 {
        valid: false,
        whole: false,
        long: false,
        ct: CtHint::NONE,
        parsed: Parsed::NONE,
        len: 0,
        head: [0; HEAD],
    };

    /// This slot, if stage 0 wrote it.
    pub(super) fn get(&self) -> Option<&Stage0> {
        self.valid.then_some(self)
    }

    /// The conntrack hint (the key and its hash).
    pub fn ct_hint(&self) -> &CtHint {
        &self.ct
    }

    /// Stage 0's parse, if `frame` is the frame it parsed: same length and
    /// same bytes from the EtherType on (the parse is a function of those
    /// alone). Any other frame gets `None` and is parsed again.
    #[inline]
    pub fn parsed_for(&self, frame: &[u8]) -> Option<Parsed> {
        if !self.valid || !self.whole || frame.len() != self.len {
            return None;
        }
        let rest = frame.get(HEAD_AT..).unwrap_or_default();
        let (head, tail) = self.head.split_at(HEAD_SHORT);
        // Fixed-size compares in registers where the frame is long enough
        // (`==` on arrays this long is a call to libc's `bcmp`); else up
        // to the frame's end.
        let same = match (rest.split_first_chunk(), head.first_chunk()) {
            (Some((now, more)), Some(then)) => {
                same_bytes::<HEAD_SHORT>(now, then)
                    && (!self.long
                        || match (more.first_chunk(), tail.first_chunk()) {
                            (Some(more), Some(tail)) => {
                                same_bytes::<{ HEAD - HEAD_SHORT }>(more, tail)
                            }
                            _ => tail.get(..more.len()) == Some(more),
                        })
            }
            // A runt frame (below Ethernet's 60 bytes).
            _ => self.head.get(..rest.len()) == Some(rest),
        };
        same.then_some(self.parsed)
    }
}

/// Whether two byte arrays are equal, compared as 8-byte words in
/// registers (no call, no branch per word).
#[inline(always)]
fn same_bytes<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let (wa, ra) = a.as_chunks::<8>();
    let (wb, rb) = b.as_chunks::<8>();
    let mut diff = 0u64;
    for (x, y) in wa.iter().zip(wb) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    diff == 0 && ra == rb
}

/// Stage 0 for one received frame (`frame` = the received bytes); returns
/// the key whose conntrack lines it started loading, if any.
pub fn prefetch(frame: &[u8], st: &WorkerState) -> Option<FlowKey> {
    prefetch_hint(frame, st).map(|h| *h.key())
}

/// [`prefetch`], returning the key with its hash, for the pass.
pub fn prefetch_hint(frame: &[u8], st: &WorkerState) -> Option<CtHint> {
    stage0(frame, st).map(|s| s.ct)
}

/// [`prefetch`], returning all the pass can reuse: the hash and the parse
/// (the worker writes it in place instead: [`WorkerState::stage0_push`]).
pub fn stage0(frame: &[u8], st: &WorkerState) -> Option<Stage0> {
    let mut s = Stage0::EMPTY;
    stage0_into(frame, &st.ct, &mut s, true);
    s.valid.then_some(s)
}

/// Stage 0 for `frame`, written into `s` (`s.valid`: whether it keyed
/// the frame; else the rest of `s` is stale and unused).
#[inline]
pub(super) fn stage0_into(frame: &[u8], ct: &Conntrack, s: &mut Stage0, load: bool) {
    s.valid = false;
    if parse_into(frame, &mut s.parsed).is_break() {
        return;
    }
    let p = &s.parsed;
    if p.icmp_error || p.fragment == Fragment::Later {
        return;
    }
    s.whole = p.l4_offset + L4_READ <= HEAD_AT + HEAD;
    s.long = p.l4_offset + L4_READ > HEAD_AT + HEAD_SHORT;
    s.ct = ct.hint(&s.parsed.key);
    if load {
        ct.prefetch_lines(&s.ct);
    }
    let rest = frame.get(HEAD_AT..).unwrap_or_default();
    match rest.first_chunk::<HEAD>() {
        Some(h) => s.head = *h,
        None => {
            s.head = [0; HEAD];
            if let Some(to) = s.head.get_mut(..rest.len()) {
                to.copy_from_slice(rest);
            }
        }
    }
    s.len = frame.len();
    s.valid = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uniform 64-bit hash of `i` (splitmix64's finaliser), as a flow's
    /// conntrack hash would be.
    fn h(i: u64) -> u64 {
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Runs `windows` full windows of packets cycling over `flows` flows
    /// (batches of 64, as the worker asks once per batch); returns how
    /// many batches ran stage 0.
    fn feed(c: &mut FlowCensus, flows: u64, windows: u32, from: &mut u64) -> u32 {
        let mut ran = 0;
        let batches = windows * CENSUS_WINDOW / 64;
        for _ in 0..batches {
            if c.wanted() {
                ran += 1;
                for _ in 0..64 {
                    c.record(h(*from % flows));
                    *from += 1;
                }
            } else {
                *from += 64;
            }
        }
        ran
    }

    #[test]
    fn thresholds_are_the_expected_set_bits() {
        let m = CENSUS_BITS as f64;
        for (flows, bits) in [
            (CENSUS_ON_FLOWS, CENSUS_ON_BITS),
            (CENSUS_OFF_FLOWS, CENSUS_OFF_BITS),
        ] {
            let want = m * (1.0 - (-(flows as f64) / m).exp());
            assert_eq!(bits, want.floor() as u32, "{flows} flows");
            assert!(estimate(bits).abs_diff(flows) <= 1, "{}", estimate(bits));
        }
        assert_eq!(estimate(0), 0);
        assert!(estimate(CENSUS_BITS as u32) > 150_000);
    }

    #[test]
    fn few_flows_keep_it_off_and_sampled() {
        let mut c = FlowCensus::new(CtPrefetch::Auto);
        let mut at = 0;
        // Off, it runs on one batch in CENSUS_SAMPLE_EVERY (the first
        // included): windows close after that many more batches.
        let batches = 40 * CENSUS_WINDOW / 64;
        let ran = feed(&mut c, 1000, 40, &mut at);
        assert_eq!(ran, batches.div_ceil(CENSUS_SAMPLE_EVERY));
        let s = c.status();
        assert!(!s.on);
        assert_eq!(s.switches, 0);
        assert_eq!(s.window, u64::from(CENSUS_WINDOW));
        assert!(s.flows.abs_diff(1000) < 50, "estimate {}", s.flows);
    }

    #[test]
    fn many_flows_turn_it_on_and_few_again_off() {
        let mut c = FlowCensus::new(CtPrefetch::Auto);
        let mut at = 0;
        // Off, a window would fill after CENSUS_SAMPLE_EVERY windows'
        // worth of batches; it closes as soon as it counted enough flows
        // (~4100 packets over 1M flows: one in 16 of ~66k).
        let mut windows = 0;
        while !c.status().on && windows < CENSUS_SAMPLE_EVERY {
            feed(&mut c, 1_000_000, 1, &mut at);
            windows += 1;
        }
        assert!(windows <= 5, "on after {windows} windows' worth");
        let s = c.status();
        assert!(s.on, "{s:?}");
        assert_eq!(s.switches, 1);
        assert!(s.window < u64::from(CENSUS_WINDOW) / 2, "{s:?}");
        assert!(s.flows >= CENSUS_ON_FLOWS, "{s:?}");
        // On, its windows are whole: 16 384 packets over 1M flows, nearly
        // all distinct.
        feed(&mut c, 1_000_000, 2, &mut at);
        let s = c.status();
        assert!(s.on, "{s:?}");
        assert_eq!(s.window, u64::from(CENSUS_WINDOW));
        assert!(s.flows > 15_000, "{s:?}");
        // On: every batch runs it.
        let batches = 2 * CENSUS_WINDOW / 64;
        assert_eq!(feed(&mut c, 1_000_000, 2, &mut at), batches);
        // Between the two thresholds: stays on (no flapping).
        feed(&mut c, 3000, 3, &mut at);
        assert!(c.status().on, "{:?}", c.status());
        assert!(c.status().flows.abs_diff(3000) < 150);
        // Below the lower one: off again.
        feed(&mut c, 1000, 2, &mut at);
        let s = c.status();
        assert!(!s.on, "{s:?}");
        assert_eq!(s.switches, 2);
        // Between the two from off: stays off.
        feed(&mut c, 3000, 3 * CENSUS_SAMPLE_EVERY, &mut at);
        assert!(!c.status().on);
    }

    #[test]
    fn on_and_off_do_not_follow_the_census() {
        let mut on = FlowCensus::new(CtPrefetch::On);
        let mut at = 0;
        let batches = 3 * CENSUS_WINDOW / 64;
        assert_eq!(feed(&mut on, 10, 3, &mut at), batches);
        let s = on.status();
        assert!(s.on);
        assert_eq!(s.switches, 0);
        // It still counts, for status.
        assert_eq!(s.flows, 10);
        let mut off = FlowCensus::new(CtPrefetch::Off);
        assert_eq!(feed(&mut off, 1_000_000, 3, &mut at), 0);
        assert!(!off.status().on);
    }
}
