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
use super::parse::parse_into;
use super::{FlowKey, Fragment, Parsed, WorkerState};
use crate::conntrack::{Conntrack, CtHint};

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
