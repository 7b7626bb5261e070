//! Stage 0, once per batch before any frame of it is judged: conntrack
//! prefetch. At 1M flows the table (~140 MB) is far out of cache and each
//! lookup waits for memory (its bucket's tag-and-lock line, then the
//! entry's line). Judged one by one, a batch pays those waits in series;
//! this stage puts the whole batch's loads in flight first: per frame,
//! [`stage0`] parses it (stage 2's own parser) and starts loading its
//! flow's bucket line and home-way entry line
//! ([`crate::conntrack::Conntrack::prefetch`]). Then the pass runs per
//! frame as before and finds those lines in cache (or on their way).
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
//! work, it never decides.
use super::{parse, FlowKey, Fragment, Parsed, WorkerState};
use crate::conntrack::CtHint;
use std::ops::ControlFlow::Continue;

/// Bytes a [`Stage0`] keeps to recognise the frame, from its EtherType on
/// ([`HEAD_AT`]; the MAC addresses are not parsed): an IPv4 header with up
/// to 22 bytes of options or an IPv6 header without extension headers, and
/// the first 20 bytes of the L4 header (all [`parse`] reads of it: ports,
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

/// The most of the L4 header [`parse`] reads.
const L4_READ: usize = 20;

/// What stage 0 learned about one frame, for the pass.
#[derive(Debug, Clone, Copy)]
pub struct Stage0 {
    ct: CtHint,
    /// The parse, when all it read lies in `head`.
    parsed: Option<Parsed>,
    /// The frame it was parsed from: its length and bytes `HEAD_AT..`
    /// (zeros after the end of a shorter frame), and whether the parse
    /// read beyond the first [`HEAD_SHORT`] of them.
    len: usize,
    head: [u8; HEAD_SHORT],
    tail: [u8; HEAD - HEAD_SHORT],
    long: bool,
}

impl Stage0 {
    /// The conntrack hint (the key and its hash).
    pub fn ct_hint(&self) -> CtHint {
        self.ct
    }

    /// Stage 0's parse, if `frame` is the frame it parsed: same length and
    /// same bytes from the EtherType on (the parse is a function of those
    /// alone). Any other frame gets `None` and is parsed again.
    pub fn parsed_for(&self, frame: &[u8]) -> Option<Parsed> {
        let parsed = self.parsed.as_ref()?;
        if frame.len() != self.len {
            return None;
        }
        let rest = frame.get(HEAD_AT..).unwrap_or_default();
        // Fixed-size compares where the frame is long enough (a few vector
        // compares, no call); else up to the frame's end.
        let same = match rest.split_first_chunk::<HEAD_SHORT>() {
            Some((head, more)) => {
                *head == self.head
                    && (!self.long
                        || match more.first_chunk::<{ HEAD - HEAD_SHORT }>() {
                            Some(more) => *more == self.tail,
                            None => self.tail.get(..more.len()) == Some(more),
                        })
            }
            // A runt frame (below Ethernet's 60 bytes).
            None => self.head.get(..rest.len()) == Some(rest),
        };
        same.then_some(*parsed)
    }
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
/// ([`WorkerState::stage0_push`]).
#[inline]
pub fn stage0(frame: &[u8], st: &WorkerState) -> Option<Stage0> {
    let Continue(p) = parse(frame) else {
        return None;
    };
    if p.icmp_error || p.fragment == Fragment::Later {
        return None;
    }
    let ct = st.ct.prefetch_hint(&p.key);
    let mut head = [0u8; HEAD_SHORT];
    let mut tail = [0u8; HEAD - HEAD_SHORT];
    let rest = frame.get(HEAD_AT..).unwrap_or_default();
    let (a, b) = rest.split_at(rest.len().min(HEAD_SHORT));
    head[..a.len()].copy_from_slice(a);
    let b = &b[..b.len().min(tail.len())];
    tail[..b.len()].copy_from_slice(b);
    Some(Stage0 {
        ct,
        parsed: (p.l4_offset + L4_READ <= HEAD_AT + HEAD).then_some(p),
        len: frame.len(),
        head,
        tail,
        long: p.l4_offset + L4_READ > HEAD_AT + HEAD_SHORT,
    })
}
