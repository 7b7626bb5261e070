//! AF_XDP multi-buffer (`XDP_USE_SG`, kernel >= 6.6): packets larger than
//! one UMEM frame (a pod MTU above ~3.8 KiB with 4 KiB frames) cross the
//! worker as chains of descriptors, `XDP_PKT_CONTD` on all but the last.
//!
//! Design (docs/performance.md, "Multi-buffer"): a chain is gathered into
//! the worker's one linear buffer (preallocated, 72 KiB: the largest IP
//! packet and room to grow), the pass runs on those bytes exactly as on a
//! single frame, and the result is scattered back into the chain's own
//! frames (a free frame more if it grew past them, the unused ones freed).
//! So every stage — policy, conntrack, NAT with its checksums, inline L7,
//! fragments, encapsulation — judges and rewrites the whole packet; no
//! stage knows about chains, and none passes bytes it did not see. The
//! price is two copies per multi-frame packet (measured in
//! docs/performance.md); packets that fit one frame take the usual path
//! untouched.
//!
//! The ledger: the chain's frames are tokens ([`HeldFrame`]) like any
//! other, so each is transmitted, held or released exactly once (the
//! compiler enforces it); a chain leaves on a TX ring whole or not at all
//! ([`XskSocket::tx`](crate::xsk::XskSocket::tx) never splits one).
//!
//! Not done here (counted drops, never passed unjudged): a chain on the
//! WireGuard tunnel (the open and the seal work on one frame:
//! `multi-buffer-unsupported`); a chain cut short or longer than
//! [`MAX_CHAIN`] (`multi-buffer-chain`).
//!
//! A child module of `worker` (it reaches the worker's fields); the file
//! sits beside it.

use std::collections::VecDeque;

use super::{push_tx, WgIn, Worker};
use crate::pass;
use crate::stats::WorkerStats;
use crate::xsk::{Frames, HeldFrame, MAX_CHAIN};
use crate::{DropReason, PortId, Verdict};

/// Bytes before the packet in a copy-mode RX frame (`XDP_PACKET_HEADROOM`).
pub const XDP_HEADROOM: u32 = 256;

/// Size of the worker's linear buffer: a whole chain.
pub const LINEAR: usize = MAX_CHAIN * 4096;

/// Whether ports of MTU `mtu` need multi-buffer sockets with UMEM frames
/// of `frame_size` bytes: their largest frame (Ethernet header and one
/// VLAN tag) does not fit the frame after the kernel's headroom.
pub fn needed(mtu: u32, frame_size: u32) -> bool {
    mtu + 14 + 4 > frame_size.saturating_sub(XDP_HEADROOM)
}

/// A worker's multi-buffer state: the chains of the current batch and the
/// linear buffer. Allocated once, when the worker's UMEM is multi-buffer.
pub(super) struct Chains {
    /// Per packet of the batch (its index in the worker's RX list after
    /// [`Chains::split`]): how many tail frames follow its first.
    tails_of: Vec<u8>,
    /// The tail frames of the batch's chains, in order.
    tails: VecDeque<HeldFrame>,
    /// Split's output, swapped with the RX list.
    keep: Vec<HeldFrame>,
    /// The chain being passed (first frame first).
    chain: Vec<HeldFrame>,
    linear: Box<[u8]>,
}

impl Chains {
    /// For RX lists of up to `rx_cap` frames.
    pub(super) fn new(rx_cap: usize) -> Box<Chains> {
        Box::new(Chains {
            tails_of: Vec::with_capacity(rx_cap),
            tails: VecDeque::with_capacity(rx_cap),
            keep: Vec::with_capacity(rx_cap),
            chain: Vec::with_capacity(MAX_CHAIN),
            linear: vec![0u8; LINEAR].into_boxed_slice(),
        })
    }

    /// Leaves in `rx` the first frame of every packet, the tails of the
    /// chains set aside in order (see [`Chains::tails`]). A chain cut
    /// short, or longer than [`MAX_CHAIN`], is released whole and counted
    /// (`multi-buffer-chain`). Returns the frames released so.
    pub(super) fn split(
        &mut self,
        rx: &mut Vec<HeldFrame>,
        frames: &mut Frames,
        stats: &WorkerStats,
    ) -> usize {
        self.tails_of.clear();
        debug_assert!(self.tails.is_empty() && self.keep.is_empty());
        if !rx.iter().any(HeldFrame::continues) {
            self.tails_of.resize(rx.len(), 0);
            return 0;
        }
        let mut dropped = 0;
        let mut it = rx.drain(..);
        while let Some(first) = it.next() {
            if !first.continues() {
                self.keep.push(first);
                self.tails_of.push(0);
                continue;
            }
            let mut n = 0usize;
            let mut complete = false;
            for t in it.by_ref() {
                let more = t.continues();
                self.tails.push_back(t);
                n += 1;
                if !more {
                    complete = true;
                    break;
                }
            }
            if complete && n < MAX_CHAIN {
                self.keep.push(first);
                self.tails_of.push(n as u8);
            } else {
                frames.release(first);
                for _ in 0..n {
                    if let Some(t) = self.tails.pop_back() {
                        frames.release(t);
                    }
                }
                stats.count_drop(DropReason::MultiBufferChain, 1);
                dropped += n + 1;
            }
        }
        drop(it);
        std::mem::swap(rx, &mut self.keep);
        dropped
    }

    /// Tail frames of packet `i` of the batch (0: one frame).
    #[inline]
    pub(super) fn tails(&self, i: usize) -> usize {
        self.tails_of.get(i).copied().map_or(0, usize::from)
    }
}

impl Worker {
    /// The batch's chains: split off their tails (a no-op without
    /// multi-buffer).
    #[inline]
    pub(super) fn chains_split(&mut self, rx: &mut Vec<HeldFrame>) {
        if let Some(c) = self.chains.as_deref_mut() {
            c.split(rx, &mut self.frames, &self.stats);
        }
    }

    /// Tail frames of packet `i` of the batch.
    #[inline]
    pub(super) fn chain_tails(&self, i: usize) -> usize {
        self.chains.as_deref().map_or(0, |c| c.tails(i))
    }

    /// Runs packet `i` of the batch, `first` and its `n` tails, through the
    /// pass on the linear buffer and acts on the verdict.
    pub(super) fn chain_pass(
        &mut self,
        first: HeldFrame,
        n: usize,
        ingress: PortId,
        wg: Option<WgIn>,
    ) {
        let Some(mut c) = self.chains.take() else {
            self.frames.release(first);
            return;
        };
        c.chain.push(first);
        for _ in 0..n {
            if let Some(t) = c.tails.pop_front() {
                c.chain.push(t);
            }
        }
        let verdict = match wg {
            // Opened, or answered, as one frame: not this packet.
            Some(WgIn::Opened | WgIn::Done(_)) => Verdict::Drop(DropReason::MultiBufferUnsupported),
            Some(WgIn::Pass) | None => {
                let len = self.gather(&mut c);
                let v = pass::process(&mut c.linear, len, ingress, &self.cur, &mut self.state);
                match self.state.take_wireguard_seal() {
                    Some(_) => Verdict::Drop(DropReason::MultiBufferUnsupported),
                    None => v,
                }
            }
        };
        let out_len = match verdict {
            Verdict::Tx { len, .. } | Verdict::Hold { len, .. } | Verdict::Release { len, .. } => {
                Some(len)
            }
            Verdict::L7Deny { reply_len, .. } if reply_len > 0 => Some(reply_len),
            Verdict::Drop(_) | Verdict::L7Deny { .. } => None,
        };
        let verdict = match out_len.map(|l| self.scatter(&mut c, l)) {
            Some(Err(r)) => Verdict::Drop(r),
            _ => verdict,
        };
        if c.chain.len() == 1 || out_len.is_none() {
            // One frame (or none to send): the usual dispatch.
            let mut it = c.chain.drain(..);
            if let Some(f) = it.next() {
                self.dispatch(verdict, f);
            }
            for f in it {
                self.frames.release(f);
            }
        } else {
            self.dispatch_chain(verdict, &mut c.chain);
        }
        self.chains = Some(c);
        if let Some(r) = self.state.take_reply_drop() {
            self.stats.count_drop(r, 1);
        }
        self.drain_l7_flush();
    }

    /// Copies the chain's bytes into the linear buffer; returns the length.
    fn gather(&self, c: &mut Chains) -> usize {
        let Chains { chain, linear, .. } = c;
        let mut at = 0;
        for f in chain.iter_mut() {
            self.umem.with_frame(f, |buf, len| {
                // A chain never holds more than the buffer (MAX_CHAIN
                // frames); clamped all the same.
                let n = len.min(linear.len() - at);
                linear[at..at + n].copy_from_slice(&buf[..n]);
                at += n;
                ((), len)
            });
        }
        at
    }

    /// Writes the first `len` bytes of the linear buffer back over the
    /// chain's frames, taking a free frame when it grew beyond them and
    /// freeing those it no longer needs; marks all but the last continued.
    fn scatter(&mut self, c: &mut Chains, len: usize) -> Result<(), DropReason> {
        let Chains { chain, linear, .. } = c;
        let len = len.min(linear.len());
        let mut at = 0;
        let mut used = 0;
        while at < len || used == 0 {
            if used == chain.len() {
                if chain.len() == MAX_CHAIN {
                    return Err(DropReason::MultiBufferChain);
                }
                match self.frames.take() {
                    Some(f) => chain.push(f),
                    None => return Err(DropReason::NoFreeFrame),
                }
            }
            let src = &linear[at..len];
            at += self.umem.with_frame(&mut chain[used], |buf, _| {
                let n = src.len().min(buf.len());
                buf[..n].copy_from_slice(&src[..n]);
                (n, n)
            });
            used += 1;
        }
        while chain.len() > used {
            if let Some(f) = chain.pop() {
                self.frames.release(f);
            }
        }
        let last = chain.len() - 1;
        for (k, f) in chain.iter_mut().enumerate() {
            f.set_continues(k < last);
        }
        Ok(())
    }

    /// Acts on the verdict of a packet that leaves as a chain of several
    /// frames (`chain`, emptied).
    fn dispatch_chain(&mut self, verdict: Verdict, chain: &mut Vec<HeldFrame>) {
        match verdict {
            Verdict::Tx { port, .. } => self.push_chain(port, chain),
            Verdict::Release { port, slot, .. } => {
                if let Some(q) = self.held.get_mut(slot as usize) {
                    for (h, p) in q.drain(..) {
                        push_tx(
                            &self.port_slot,
                            &mut self.slots,
                            &mut self.touched,
                            &mut self.frames,
                            &self.stats,
                            h,
                            p,
                        );
                    }
                }
                self.push_chain(port, chain);
            }
            Verdict::Hold { port, slot, .. } => match self.held.get_mut(slot as usize) {
                // Held whole, in order, flagged: released as a chain.
                Some(q) if q.len() + chain.len() <= q.capacity() => {
                    q.extend(chain.drain(..).map(|f| (f, port)));
                }
                _ => self.release_chain(DropReason::L7HoldFull, chain),
            },
            Verdict::Drop(r) => self.release_chain(r, chain),
            // A reply longer than a frame: weir's replies never are.
            Verdict::L7Deny { slot, reason, .. } => {
                self.drop_held(slot);
                self.release_chain(reason, chain);
            }
        }
    }

    /// Queues a whole chain for `port`, or drops it whole.
    fn push_chain(&mut self, port: PortId, chain: &mut Vec<HeldFrame>) {
        let t = self
            .port_slot
            .get(port as usize)
            .copied()
            .unwrap_or(super::NO_SLOT);
        match self.slots.get_mut(t as usize).and_then(Option::as_mut) {
            Some(dst) if dst.tx.len() + chain.len() <= dst.tx.capacity() => {
                if dst.tx.is_empty() {
                    self.touched.push(t);
                }
                dst.tx.append(chain);
            }
            Some(_) => self.release_chain(DropReason::TxBatchFull, chain),
            None => self.release_chain(DropReason::NoRoute, chain),
        }
    }

    /// Releases every frame of `chain`, counting one drop.
    fn release_chain(&mut self, reason: DropReason, chain: &mut Vec<HeldFrame>) {
        self.stats.count_drop(reason, 1);
        for f in chain.drain(..) {
            self.frames.release(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xsk::WorkerUmem;

    #[test]
    fn needed_above_one_frame() {
        assert!(!needed(1500, 4096));
        assert!(!needed(3822, 4096));
        assert!(needed(3823, 4096));
        assert!(needed(9000, 4096));
        assert!(!needed(1500, 2048));
        assert!(needed(1800, 2048));
    }

    /// Split keeps one entry per packet, sets the tails aside in order,
    /// releases a chain cut short, and every frame is accounted for.
    /// Needs a UMEM (root, as the rest of the dataplane's tests).
    #[test]
    fn split_sets_tails_aside_and_releases_a_cut_chain() {
        let (_umem, mut frames) = WorkerUmem::new(4096, 16, 16).expect("UMEM");
        let stats = WorkerStats::new(0, None);
        // single, [head, tail, tail], single, [head ...cut]
        let contd = [false, true, true, false, false, true];
        let mut rx = Vec::with_capacity(8);
        for c in contd {
            let mut f = frames.take().expect("free frame");
            f.set_continues(c);
            rx.push(f);
        }
        let mut ch = Chains::new(8);
        let dropped = ch.split(&mut rx, &mut frames, &stats);
        assert_eq!(dropped, 1);
        assert_eq!(rx.len(), 3);
        assert_eq!((ch.tails(0), ch.tails(1), ch.tails(2)), (0, 2, 0));
        assert_eq!(ch.tails.len(), 2);
        assert!(ch.tails[0].continues() && !ch.tails[1].continues());
        assert_eq!(stats.drops[DropReason::MultiBufferChain.index()].get(), 1);
        assert_eq!(frames.census(), (5, 0));
        for f in rx.drain(..).chain(ch.tails.drain(..)) {
            frames.release(f);
        }
        assert_eq!(frames.census(), (0, 0));
        assert_eq!(frames.free_count(), frames.total());
        // A frame taken again starts without the CONTD flag.
        let f = frames.take().expect("free frame");
        assert!(!f.continues());
        frames.release(f);
    }
}
