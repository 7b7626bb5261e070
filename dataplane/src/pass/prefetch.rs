//! Stage 0, once per batch before any frame of it is judged: conntrack
//! prefetch. At 1M flows the table (~140 MB) is far out of cache and each
//! lookup waits for memory (its bucket's tag-and-lock line, then the
//! entry's line). Judged one by one, a batch pays those waits in series;
//! this stage puts the whole batch's loads in flight first: per frame,
//! [`prefetch`] parses it (stage 2's own parser) and starts loading its
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
//! The hash of each frame's key is kept ([`prefetch_hint`]): the worker
//! hands it to the pass ([`WorkerState::set_ct_hint`]) and the conntrack
//! lookup of stage 5 uses it instead of hashing the key again (when the
//! key it looks up is the one hashed here).
use super::{parse, FlowKey, Fragment, WorkerState};
use crate::conntrack::CtHint;
use std::ops::ControlFlow::Continue;

/// Stage 0 for one received frame (`frame` = the received bytes); returns
/// the key whose conntrack lines it started loading, if any.
pub fn prefetch(frame: &[u8], st: &WorkerState) -> Option<FlowKey> {
    prefetch_hint(frame, st).map(|h| *h.key())
}

/// [`prefetch`], returning the key with its hash, for the pass.
pub fn prefetch_hint(frame: &[u8], st: &WorkerState) -> Option<CtHint> {
    let Continue(p) = parse(frame) else {
        return None;
    };
    if p.icmp_error || p.fragment == Fragment::Later {
        return None;
    }
    Some(st.ct.prefetch_hint(&p.key))
}
