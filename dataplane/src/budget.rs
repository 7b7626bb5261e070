//! The frame budget of one worker's UMEM: how many frames it has, and how
//! many each of its sockets may keep on its fill ring.
//!
//! The kernel drops a frame (`fill_ring_empty`, `rx_dropped`) when the fill
//! ring of the socket it arrives on is empty, and a frame lent to a fill ring
//! comes back only when that socket receives: frames cannot be taken back
//! from an idle socket. So:
//!
//! - every live socket keeps a **floor** of frames on its fill ring, idle or
//!   not: by default 64, one NAPI poll's worth (veth and most drivers hand
//!   XDP at most 64 frames per poll, so a burst arriving while the worker is
//!   off the core still finds frames);
//! - a socket that drains half of what it had lent between two visits goes
//!   to the **hot** target at once (the whole ring), and is topped up right
//!   after its RX, before its batch is processed; a socket that received nothing for
//!   2 s (8 publish intervals) falls back to the floor (its extra frames come back as
//!   it receives, and are not replaced);
//! - top-ups above the floor stop while the free list is down to the
//!   **reserve**, so floors can always be restored.
//!
//! A UMEM is registered (pinned) whole when the worker starts and cannot
//! grow, so it is sized for the sockets the node may have: `max_pods` pods
//! (kubelet's default, 110) or the pods present at start if more, times the
//! queues the worker serves. More sockets than planned still work, with a
//! smaller floor each (`FrameStatus::fill_floor` shows it).
#![forbid(unsafe_code)]

use serde::Serialize;

/// Frames every socket keeps on its fill ring by default (one NAPI poll).
pub const DEFAULT_FILL_FLOOR: u32 = 64;

/// Pods a node is planned for by default (kubelet's `--max-pods` default).
pub const DEFAULT_MAX_PODS: u32 = 110;

/// Sockets that may run at the hot target at once within the plan (4 at
/// the full ring take the room 8 took at half of it, before the hot
/// target became the whole ring).
const HOT_SOCKETS: u32 = 4;

/// Sockets whose floors the reserve can restore at once.
const RESERVE_SOCKETS: u32 = 32;

/// One worker's frame budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FrameBudget {
    /// Frames of the UMEM.
    pub frames: u32,
    /// Sockets the UMEM was sized for (each with a full floor).
    pub planned_sockets: u32,
    /// Frames every socket keeps on its fill ring.
    pub floor: u32,
    /// Most frames a busy socket's fill ring is topped up to.
    pub hot: u32,
    /// Free frames that top-ups above the floor leave alone.
    pub reserve: u32,
}

impl FrameBudget {
    /// A UMEM sized for `sockets` sockets, each with `floor` frames
    /// (at most `ring_size`), plus room for [`HOT_SOCKETS`] busy sockets and
    /// the reserve.
    pub fn plan(sockets: u32, floor: u32, ring_size: u32) -> FrameBudget {
        let floor = floor.clamp(1, ring_size);
        let hot = ring_size;
        let reserve = RESERVE_SOCKETS * floor;
        FrameBudget {
            frames: sockets.max(1) * floor + HOT_SOCKETS * (hot - floor) + reserve,
            planned_sockets: sockets.max(1),
            floor,
            hot,
            reserve,
        }
    }

    /// A budget for a UMEM of `frames` frames given by configuration.
    pub fn fixed(frames: u32, floor: u32, ring_size: u32) -> FrameBudget {
        let floor = floor.clamp(1, ring_size);
        let hot = ring_size;
        let reserve = (RESERVE_SOCKETS * floor).min(frames / 8);
        FrameBudget {
            frames,
            planned_sockets: frames.saturating_sub(reserve) / floor,
            floor,
            hot,
            reserve,
        }
    }

    /// The floor each of `live` sockets gets: the planned floor while they
    /// fit beside the reserve, an equal share of the rest when more sockets
    /// than planned share the UMEM (at least one frame).
    pub fn floor_for(&self, live: usize) -> usize {
        let avail = self.frames.saturating_sub(self.reserve) as usize;
        (avail / live.max(1)).clamp(1, self.floor as usize)
    }

    /// A socket's fill target after a visit that received `n` of the
    /// `before` frames lent to its fill ring, and how many free frames to
    /// lend it now (of `free`, with `floor` the live sockets' floor).
    ///
    /// A socket that drained half of what it had lent since the last
    /// visit goes to the hot target at once: under TCP bulk the next burst
    /// (a kick's worth of ACKs releasing a window of segments, or a
    /// co-located node's worker sending while this one is off its core) is
    /// as large as the last, and doubling over visits met it with half a
    /// ring. Above the floor, top-ups leave the reserve alone.
    pub fn top_up(
        &self,
        target: usize,
        before: usize,
        n: usize,
        floor: usize,
        free: usize,
    ) -> (usize, usize) {
        let in_fill = before.saturating_sub(n);
        let target = match 2 * n >= before {
            true => (self.hot as usize).max(target),
            false => target,
        };
        let want = target.saturating_sub(in_fill);
        let above_floor = target.saturating_sub(floor.max(in_fill));
        let spare = free.saturating_sub(self.reserve as usize);
        // Down to the reserve: the floor only.
        (target, want - above_floor.saturating_sub(spare))
    }

    /// Bytes of locked memory the UMEM takes with `frame_size`-byte frames.
    pub fn bytes(&self, frame_size: u32) -> u64 {
        u64::from(self.frames) * u64::from(frame_size)
    }
}

/// Sockets worker `w` of `workers` serves with `ports` interfaces of
/// `queues` queues each (worker `w` serves queue `q` when `q % workers == w`).
pub fn sockets_of_worker(w: u32, workers: u32, ports: u32, queues: u32) -> u32 {
    let served = (0..queues).filter(|q| q % workers.max(1) == w).count() as u32;
    ports * served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_gives_every_planned_socket_its_floor() {
        // A full node: 110 pods, 2 queues, one worker: 220 sockets.
        let b = FrameBudget::plan(220, DEFAULT_FILL_FLOOR, 1024);
        assert_eq!(b.floor, 64);
        // The whole fill ring.
        assert_eq!(b.hot, 1024);
        assert_eq!(b.reserve, 32 * 64);
        assert_eq!(b.frames, 220 * 64 + 4 * (1024 - 64) + 32 * 64);
        assert_eq!(b.floor_for(220), 64);
        // 78 MiB of 4 KiB frames.
        assert_eq!(b.bytes(4096), 19_968 * 4096);
        // The frames left after every floor and the reserve are the hot room.
        let hot_room = b.frames - 220 * b.floor - b.reserve;
        assert_eq!(hot_room, 4 * (b.hot - b.floor));
    }

    #[test]
    fn more_sockets_than_planned_share_what_is_left() {
        let b = FrameBudget::plan(10, 64, 1024);
        assert_eq!(b.floor_for(10), 64);
        let avail = (b.frames - b.reserve) as usize;
        assert_eq!(b.floor_for(1000), avail / 1000);
        assert!(b.floor_for(1000) < 64);
        assert_eq!(b.floor_for(1_000_000), 1);
        assert_eq!(b.floor_for(0), 64);
    }

    #[test]
    fn fixed_budget_keeps_a_reserve_within_its_frames() {
        let b = FrameBudget::fixed(2048, 64, 1024);
        assert_eq!(b.reserve, 256);
        assert_eq!(b.planned_sockets, (2048 - 256) / 64);
        assert_eq!(b.floor_for(2), 64);
        let small = FrameBudget::fixed(256, 64, 128);
        assert_eq!(small.hot, 128);
        assert_eq!(small.floor_for(8), (256 - 32) / 8);
    }

    #[test]
    fn a_draining_socket_goes_hot_at_once() {
        let b = FrameBudget::plan(10, 64, 1024);
        let free = b.frames as usize;
        // A floor socket that received 40 of its 64: hot, topped up to the ring.
        assert_eq!(b.top_up(64, 64, 40, 64, free), (1024, 1024 - 24));
        // All of them (the ring ran dry): the same.
        assert_eq!(b.top_up(64, 64, 64, 64, free), (1024, 1024));
        // Less than half: the target stays, the received frames come back.
        assert_eq!(b.top_up(64, 64, 20, 64, free), (64, 20));
        assert_eq!(b.top_up(1024, 1024, 100, 64, free), (1024, 100));
        // Down to the reserve: back to the floor only.
        let r = b.reserve as usize;
        assert_eq!(b.top_up(64, 64, 64, 64, r), (1024, 64));
        // Some spare above the reserve: that much above the floor.
        assert_eq!(b.top_up(64, 64, 64, 64, r + 100), (1024, 164));
        // In between: in_fill above the floor keeps its frames.
        assert_eq!(b.top_up(1024, 1024, 600, 64, r), (1024, 0));
        // Never below what the socket had: a nonsense visit lends nothing.
        assert_eq!(b.top_up(64, 0, 0, 64, free).0, 1024);
    }

    #[test]
    fn workers_split_queues() {
        assert_eq!(sockets_of_worker(0, 1, 110, 2), 220);
        assert_eq!(sockets_of_worker(0, 2, 110, 2), 110);
        assert_eq!(sockets_of_worker(1, 2, 110, 3), 110);
        assert_eq!(sockets_of_worker(0, 2, 110, 3), 220);
    }
}
