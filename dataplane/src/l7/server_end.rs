//! Where the server's byte stream of an L7 flow ends, shared by the workers
//! of a node (it lives beside conntrack): the server→client direction of a
//! flow may be carried by another worker than the client→server one, which
//! judges the requests. An HTTP/2 server speaks first (SETTINGS), so
//! weir's answer to a denied HTTP/2 request must come after the server
//! bytes already forwarded, not at the client's last ACK (docs/l7.md).
//!
//! A fixed table of `AtomicU64` (tag of the flow's hash in the high half,
//! sequence number in the low half): no lock, no allocation after
//! creation. Two flows sharing a slot overwrite each other; a wrong answer
//! sequence number only spoils weir's answer (the client sees a broken
//! connection instead of the 403): the request is denied either way.
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use std::hash::BuildHasher;

use crate::flow_key::FlowKey;

const SLOTS: usize = 4096;

/// The table (see the module documentation).
#[derive(Debug)]
pub struct ServerEnds {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for ServerEnds {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerEnds {
    pub fn new() -> Self {
        ServerEnds {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn at(&self, orig: &FlowKey) -> (usize, u64) {
        let h = self.hasher.hash_one(orig);
        // Tag: never 0 (an empty slot).
        (h as usize % SLOTS, (h >> 32) | 1)
    }

    /// A server→client segment of the flow whose client→server key is
    /// `orig` ends at `end` (sequence number after its last byte, SYN, FIN).
    pub fn note(&self, orig: &FlowKey, end: u32) {
        let (i, tag) = self.at(orig);
        let Some(s) = self.slots.get(i) else { return };
        let cur = s.load(Ordering::Relaxed);
        if cur >> 32 == tag && (end.wrapping_sub(cur as u32) as i32) <= 0 {
            return;
        }
        s.store(tag << 32 | u64::from(end), Ordering::Relaxed);
    }

    /// Where the flow's server stream ends, if a segment of it was seen.
    pub fn get(&self, orig: &FlowKey) -> Option<u32> {
        let (i, tag) = self.at(orig);
        let v = self.slots.get(i)?.load(Ordering::Relaxed);
        (v >> 32 == tag).then_some(v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: [10, 0, 0, 1].into(),
            dst: [10, 0, 0, 2].into(),
            proto: 6,
            sport,
            dport: 80,
        }
    }

    #[test]
    fn keeps_the_furthest_end_across_wraparound() {
        let t = ServerEnds::new();
        assert_eq!(t.get(&key(1)), None);
        t.note(&key(1), u32::MAX - 10);
        t.note(&key(1), 5); // wrapped: later
        t.note(&key(1), u32::MAX - 20); // a retransmission: earlier
        assert_eq!(t.get(&key(1)), Some(5));
    }
}
