//! Where the server's byte stream of an L7 flow ends, shared by the workers
//! of a node (it lives beside conntrack): the server→client direction of a
//! flow may be carried by another worker than the client→server one, which
//! judges the requests. An HTTP/2 server speaks first (SETTINGS), so
//! weir's answer to a denied HTTP/2 request must come after the server
//! bytes already forwarded, not at the client's last ACK (docs/l7.md).
//!
//! A fixed table of `AtomicU64` (tag of the flow's hash in the high 31
//! bits, a "closed" bit, sequence number in the low half): no lock, no
//! allocation after creation. Two flows sharing a slot overwrite each
//! other; a wrong answer sequence number only spoils weir's answer (the
//! client sees a broken connection instead of the 403): the request is
//! denied either way.
//!
//! **The answer and the server's bytes never overlap.** The worker that
//! denies a request [`ServerEnds::close`]s the flow's entry and takes the
//! end it held in one atomic step; a worker carrying a server→client
//! segment [`ServerEnds::note`]s it in one atomic step too, and drops it if
//! the entry was closed before and the segment reaches past the closed
//! end. So a server segment is either counted in the answer's sequence
//! number (the answer goes after it) or never forwarded — without this, a
//! server segment forwarded by another worker while the denying worker
//! built its answer (a worker preempted on the busy CI machine) reached the
//! client at the same sequence number as weir's answer: the client kept
//! the server's bytes and the rest of the answer as garbage, curl printed
//! "000" (the flaky tests/tests/l7_h2.rs failure).
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use std::hash::BuildHasher;

use crate::flow_key::FlowKey;

const SLOTS: usize = 4096;
/// Set in an entry once weir has answered the client (the flow is denied).
const CLOSED: u64 = 1 << 32;

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

/// `a` comes after `b` in sequence space.
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl ServerEnds {
    pub fn new() -> Self {
        ServerEnds {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The slot of the flow and its tag, already shifted into place (never
    /// 0: an empty slot).
    fn at(&self, orig: &FlowKey) -> (Option<&AtomicU64>, u64) {
        let h = self.hasher.hash_one(orig);
        let tag = ((h >> 33) | 1) << 33;
        (self.slots.get(h as usize % SLOTS), tag)
    }

    /// A server→client segment of the flow whose client→server key is
    /// `orig` ends at `end` (sequence number after its last byte, SYN, FIN);
    /// `syn`: it is a SYN-ACK (a new connection on the tuple: a closed
    /// entry opens again). Returns `false` if the segment must not be
    /// forwarded: weir has answered the client at an end this segment
    /// reaches past (its bytes would overlap the answer).
    pub fn note(&self, orig: &FlowKey, end: u32, syn: bool) -> bool {
        let (Some(s), tag) = self.at(orig) else {
            return true;
        };
        let mut cur = s.load(Ordering::Acquire);
        loop {
            let mine = cur & !(CLOSED | u64::from(u32::MAX)) == tag;
            let new = if mine && !syn && cur & CLOSED != 0 {
                return !after(end, cur as u32);
            } else if mine && !syn && !after(end, cur as u32) {
                return true;
            } else {
                tag | u64::from(end)
            };
            match s.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Where the flow's server stream ends, if a segment of it was seen.
    pub fn get(&self, orig: &FlowKey) -> Option<u32> {
        let (s, tag) = self.at(orig);
        let v = s?.load(Ordering::Acquire);
        (v & !(CLOSED | u64::from(u32::MAX)) == tag).then_some(v as u32)
    }

    /// Weir answers the client of the flow (a denied request): closes the
    /// entry and returns where the server's stream ends — the answer's
    /// sequence number — or `otherwise` (the client's ACK) if no server
    /// segment was seen. Server segments noted later that reach past it
    /// are refused by [`ServerEnds::note`].
    pub fn close(&self, orig: &FlowKey, otherwise: u32) -> u32 {
        let (Some(s), tag) = self.at(orig) else {
            return otherwise;
        };
        let mut cur = s.load(Ordering::Acquire);
        loop {
            let end = if cur & !(CLOSED | u64::from(u32::MAX)) == tag {
                cur as u32
            } else {
                otherwise
            };
            let new = tag | CLOSED | u64::from(end);
            match s.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return end,
                Err(now) => cur = now,
            }
        }
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
        assert!(t.note(&key(1), u32::MAX - 10, true));
        assert!(t.note(&key(1), 5, false)); // wrapped: later
        assert!(t.note(&key(1), u32::MAX - 20, false)); // a retransmission: earlier
        assert_eq!(t.get(&key(1)), Some(5));
    }

    #[test]
    fn a_closed_flow_refuses_server_bytes_past_the_answer() {
        let t = ServerEnds::new();
        // No server segment seen: the answer goes at the client's ACK.
        assert_eq!(t.close(&key(2), 1000), 1000);
        assert!(!t.note(&key(2), 1027, false), "past the answer");
        assert!(t.note(&key(2), 1000, false), "up to it: counted");
        assert_eq!(t.get(&key(2)), Some(1000));
        // Seen before the close: counted in the answer's sequence number.
        assert!(t.note(&key(3), 500, true));
        assert!(t.note(&key(3), 527, false));
        assert_eq!(t.close(&key(3), 501), 527);
        assert!(t.note(&key(3), 520, false), "a retransmission");
        assert!(!t.note(&key(3), 536, false));
        // A new connection on the tuple opens the entry again.
        assert!(t.note(&key(3), 9000, true));
        assert!(t.note(&key(3), 9100, false));
        assert_eq!(t.get(&key(3)), Some(9100));
    }

    #[test]
    fn concurrent_notes_and_a_close_never_overlap() {
        // Whatever the interleaving, every forwarded server segment ends at
        // or before the answer's sequence number.
        for round in 0..200u32 {
            let t = std::sync::Arc::new(ServerEnds::new());
            let k = key(4);
            assert!(t.note(&k, 100, true));
            let t2 = t.clone();
            let server = std::thread::spawn(move || {
                let mut forwarded = 100;
                for i in 1..=50u32 {
                    if t2.note(&k, 100 + i * 10, false) {
                        forwarded = 100 + i * 10;
                    }
                }
                forwarded
            });
            for _ in 0..round % 7 {
                std::thread::yield_now();
            }
            let answer = t.close(&k, 100);
            let forwarded = server.join().unwrap();
            assert!(forwarded <= answer, "{forwarded} > {answer}");
        }
    }
}
