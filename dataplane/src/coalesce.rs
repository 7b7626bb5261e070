//! Load-based sleeping between rounds (`weir up --coalesce-us`): the
//! worker's interrupt moderation.
//!
//! An adaptive worker spins while frames flow. Under a steady flow that is
//! thinner than the worker (the usual case: the senders, not the worker,
//! are the limit), every round then takes one or two frames and the worker
//! burns its core between them. With coalescing on, a round that took some
//! frames but fewer than half a batch is followed by a short sleep (a timer,
//! not a wake-up from the kernel: the senders pay nothing for it), so the
//! next round finds a batch: the core is free while the frames gather, and
//! the per-round costs (ring bookkeeping, the TX kick, the receiver's IPI)
//! are shared by more frames. The sleep starts at [`FIRST_US`] once frames
//! come back to back (two non-empty rounds in a row, or one round of two
//! or more) and doubles while each sleep gathers more than one frame, up to
//! the configured maximum; a round with half a batch or more halves it (the
//! flow is thick enough to keep the worker busy). A lone frame after an
//! empty round, or a sleep that gathered only one frame, ends it, and so
//! does an empty round: a request/response (one frame, then nothing until
//! the answer) never sleeps, and idle time goes to the existing idle path
//! (spin, then `poll`).
//!
//! The same idea as Open vSwitch's `pmd-maxsleep` (its PMD sleeps when its
//! queues return less than half a batch), with the sleep ended by an empty
//! round instead of growing through idle time. The price is latency under
//! load: a frame may wait up to the current sleep, at most the maximum.
#![forbid(unsafe_code)]

use std::time::Duration;

/// The first sleep after a thin round, µs.
pub const FIRST_US: u32 = 4;

/// Largest accepted `--coalesce-us`: beyond a millisecond a full-rate burst
/// overruns a fill ring (1024 frames at ~1 Mpps) before the worker looks.
pub const MAX_COALESCE_US: u32 = 1000;

/// The sleep state of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coalesce {
    max_us: u32,
    cur_us: u32,
    /// Frames the previous round moved.
    last_moved: usize,
}

impl Coalesce {
    /// `max_us` 0: off (never sleeps).
    pub fn new(max_us: u32) -> Self {
        Coalesce {
            max_us: max_us.min(MAX_COALESCE_US),
            cur_us: 0,
            last_moved: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_us > 0
    }

    /// The current sleep, µs (0: none).
    pub fn current_us(&self) -> u32 {
        self.cur_us
    }

    /// After a round that moved `moved` frames with batches of `batch`: how
    /// long to sleep before the next round (`None`: go on at once).
    #[inline]
    pub fn after_round(&mut self, moved: usize, batch: usize) -> Option<Duration> {
        if self.max_us == 0 {
            return None;
        }
        let prev = std::mem::replace(&mut self.last_moved, moved);
        self.cur_us = match moved {
            0 => 0,
            n if 2 * n >= batch.max(2) => self.cur_us / 2,
            // A lone frame: after a sleep (the sleep gathered nothing more)
            // or after an empty round (a request/response waits for each
            // frame: sleeping would only delay the answer).
            1 if self.cur_us > 0 || prev == 0 => 0,
            // Frames back to back (a stream): try the first sleep...
            _ if self.cur_us == 0 => FIRST_US.min(self.max_us),
            // ...and double it while it gathers more than one frame.
            _ => self.cur_us.saturating_mul(2).min(self.max_us),
        };
        (self.cur_us > 0).then(|| Duration::from_micros(u64::from(self.cur_us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(d: Option<Duration>) -> u64 {
        d.map_or(0, |d| d.as_micros() as u64)
    }

    #[test]
    fn off_never_sleeps() {
        let mut c = Coalesce::new(0);
        assert!(!c.enabled());
        for n in [0, 1, 5, 31, 64] {
            assert_eq!(c.after_round(n, 64), None);
        }
    }

    #[test]
    fn thin_rounds_double_up_to_the_max() {
        let mut c = Coalesce::new(50);
        let got: Vec<u64> = (0..7).map(|_| us(c.after_round(3, 64))).collect();
        assert_eq!(got, [4, 8, 16, 32, 50, 50, 50]);
    }

    #[test]
    fn a_max_below_the_first_step_is_the_sleep() {
        let mut c = Coalesce::new(2);
        assert_eq!(us(c.after_round(2, 64)), 2);
        assert_eq!(us(c.after_round(2, 64)), 2);
    }

    #[test]
    fn a_request_response_never_sleeps() {
        // One frame, then nothing until the answer, then one frame...
        let mut c = Coalesce::new(50);
        for _ in 0..10 {
            assert_eq!(c.after_round(1, 64), None);
            assert_eq!(c.after_round(0, 64), None);
            assert_eq!(c.after_round(0, 64), None);
        }
    }

    #[test]
    fn an_empty_round_ends_the_sleep() {
        let mut c = Coalesce::new(50);
        assert_eq!(us(c.after_round(5, 64)), 4);
        assert_eq!(us(c.after_round(5, 64)), 8);
        assert_eq!(c.after_round(0, 64), None);
        assert_eq!(c.current_us(), 0);
        assert_eq!(us(c.after_round(5, 64)), 4);
    }

    #[test]
    fn frames_back_to_back_probe_and_a_lone_frame_after_a_sleep_ends_it() {
        let mut c = Coalesce::new(50);
        // A frame, and another in the very next round: a stream.
        assert_eq!(c.after_round(1, 64), None);
        assert_eq!(us(c.after_round(1, 64)), 4);
        // The sleep gathered two: go on doubling.
        assert_eq!(us(c.after_round(2, 64)), 8);
        // Only one in 8 µs: too thin to gather, back to spinning...
        assert_eq!(c.after_round(1, 64), None);
        // ...until frames come back to back again.
        assert_eq!(us(c.after_round(1, 64)), 4);
    }

    #[test]
    fn half_a_batch_halves_the_sleep() {
        let mut c = Coalesce::new(64);
        for _ in 0..6 {
            c.after_round(2, 64);
        }
        assert_eq!(c.current_us(), 64);
        assert_eq!(us(c.after_round(32, 64)), 32);
        assert_eq!(us(c.after_round(64, 64)), 16);
        // Thin again: back up.
        assert_eq!(us(c.after_round(10, 64)), 32);
        // Thick from the start: no sleep at all.
        let mut c = Coalesce::new(64);
        assert_eq!(c.after_round(40, 64), None);
        assert_eq!(c.current_us(), 0);
    }

    #[test]
    fn the_max_is_bounded() {
        let mut c = Coalesce::new(u32::MAX);
        for _ in 0..40 {
            c.after_round(2, 64);
        }
        assert_eq!(c.current_us(), MAX_COALESCE_US);
        // A batch of 1 (or 0) still counts one frame as half of it.
        let mut c = Coalesce::new(10);
        assert_eq!(c.after_round(1, 1), None);
        assert_eq!(c.after_round(1, 0), None);
    }
}
