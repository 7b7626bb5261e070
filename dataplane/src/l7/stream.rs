//! Per-flow HTTP/1.x inspection of the client→server byte stream.
//!
//! One [`HttpInspector`] per TCP connection whose admitted rule carries HTTP
//! rules, taken from a per-worker [`InspectorPool`] allocated once at start
//! (each slot owns a fixed buffer of [`Limits::buffer`] bytes; nothing is
//! allocated per packet or per flow afterwards).
//!
//! # The hold/release contract
//!
//! The pass calls [`HttpInspector::feed`] with every client→server TCP
//! segment of the flow (sequence number and payload, also when the payload
//! is empty) and a judge closure; the answer says what to do with *this
//! frame* and with the frames the worker holds for the flow:
//!
//! | [`Feed`] | this frame | frames held for the flow |
//! | --- | --- | --- |
//! | `Release` | forward, after the held ones | forward all now, in arrival order |
//! | `Forward` | forward | stay held |
//! | `Hold` | hold (append to the held list) | stay held |
//! | `Drop` | drop (TCP will send it again) | stay held |
//! | `Deny(r)` | drop | drop all; send the 403 to the client and a RST to the server |
//!
//! `Hold` is answered exactly when the stream ends inside a request head
//! that is not complete yet; the judge closure is called once per complete
//! head, in stream order (several times for one segment with pipelined
//! requests), and any `Deny` of the closure denies the frame that completes
//! that head. So no byte of a request reaches the server before its head was
//! judged, and bodies are skipped by their framing, never parsed as heads.
//!
//! Sequence numbers:
//! - the first segment fed fixes the stream start (feed the first data
//!   segment after the handshake, or call [`HttpInspector::start`] with
//!   ISN+1 from the SYN);
//! - a segment that starts beyond the next expected byte (a gap) is answered
//!   `Drop`: nothing is buffered out of order, the client retransmits it
//!   after the missing segment arrives;
//! - bytes below the next expected byte are compared with the held copy
//!   where one is held (different bytes → `Deny(OverlapMismatch)`); a
//!   segment made only of old bytes is `Forward`ed when all of them were
//!   already released (the server ignores or needs it) and `Drop`ped when
//!   some are held (the held copy goes out first);
//! - a segment with old and new bytes is judged on its new bytes; since held
//!   frames are always released before it, the receiver sees the judged
//!   copy first (receivers keep the first copy of a byte).
//!
//! Bounds: a head longer than [`Limits::head_max`] bytes, more than
//! [`Limits::held_segments_max`] frames held, a hold older than
//! [`Limits::hold_ns`], or held bytes beyond [`Limits::buffer`] all deny.
//! A denied inspector stays denied (every later segment: `Deny`).
#![forbid(unsafe_code)]

use super::http::{parse_head, BodyFraming, RequestHead};
use super::L7Reason;

/// The judge's answer for one complete request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Verdict {
    Allow,
    Deny,
}

/// What to do with a frame (see the module docs for the full contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Forward the held frames (in order), then this one.
    Release,
    /// Forward this frame; held frames stay held.
    Forward,
    /// Hold this frame: a request head is not complete yet.
    Hold,
    /// Drop this frame only (a gap before it, or a copy of held bytes).
    Drop,
    /// Drop this frame and the held ones; close the connection.
    Deny(L7Reason),
}

/// Bounds of one inspector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head, in bytes (request line to empty line).
    pub head_max: usize,
    /// Bytes a slot can hold across held frames (≥ `head_max`).
    pub buffer: usize,
    /// Most frames held at once for one flow.
    pub held_segments_max: u16,
    /// Longest time frames stay held, in nanoseconds.
    pub hold_ns: u64,
    /// Longest chunk extension, and longest trailer section, in bytes.
    pub chunk_meta_max: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_max: 8192,
            buffer: 16384,
            held_segments_max: 128,
            hold_ns: 2_000_000_000,
            chunk_meta_max: 4096,
        }
    }
}

/// Where the byte stream is, between or inside requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head.
    Head,
    /// Skipping this many Content-Length body bytes.
    Length(u64),
    /// Walking a chunked body.
    Chunk(Chunk),
    Denied(L7Reason),
}

/// The chunked-body walker (RFC 9112 §7.1), byte by byte except for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` read so far.
    Size {
        digits: u8,
        size: u64,
    },
    /// Whitespace after the size: only `;` (an extension) may follow.
    SizeWs {
        size: u64,
    },
    /// Inside extensions, up to CR.
    Ext {
        size: u64,
        len: u16,
    },
    /// CR of the size line seen; LF must follow.
    SizeLf {
        size: u64,
    },
    /// Chunk data left.
    Data {
        left: u64,
    },
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final empty line.
    TrailerStart {
        total: u16,
    },
    TrailerName {
        total: u16,
    },
    TrailerValue {
        total: u16,
    },
    TrailerLf {
        total: u16,
    },
    /// CR of the final empty line seen; LF ends the body.
    FinalLf,
}

/// What [`Core::run`] found at the end of the bytes.
enum Run {
    /// The bytes end at a request boundary or inside a body.
    Done,
    /// The bytes end inside the request head starting at this index.
    HeadOpen(usize),
    Deny(L7Reason),
}

#[derive(Debug, Clone)]
struct Core {
    phase: Phase,
    limits: Limits,
    requests: u64,
}

impl Core {
    /// Runs the stream machine over `b[pos..]`; a head in progress starts at
    /// `head_start` (≤ `pos`).
    fn run<F>(&mut self, b: &[u8], mut pos: usize, mut head_start: usize, judge: &mut F) -> Run
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        loop {
            match self.phase {
                Phase::Denied(r) => return Run::Deny(r),
                Phase::Head => {
                    if pos >= b.len() {
                        return if head_start < b.len() {
                            Run::HeadOpen(head_start)
                        } else {
                            Run::Done
                        };
                    }
                    let mut end = None;
                    let mut i = pos.saturating_sub(3).max(head_start);
                    while i < b.len() {
                        if b[i] == b'\n' {
                            if i == head_start || b[i - 1] != b'\r' {
                                return self.deny(L7Reason::BareLf);
                            }
                            if i >= head_start + 3 && &b[i - 3..i] == b"\r\n\r" {
                                end = Some(i + 1);
                                break;
                            }
                        }
                        i += 1;
                    }
                    let Some(end) = end else {
                        if b.len() - head_start > self.limits.head_max {
                            return self.deny(L7Reason::HeadTooLong);
                        }
                        return Run::HeadOpen(head_start);
                    };
                    if end - head_start > self.limits.head_max {
                        return self.deny(L7Reason::HeadTooLong);
                    }
                    let head = match parse_head(&b[head_start..end]) {
                        Ok(h) => h,
                        Err(r) => return self.deny(r),
                    };
                    let framing = head.body();
                    if judge(&head) == L7Verdict::Deny {
                        return self.deny(L7Reason::Policy);
                    }
                    self.requests += 1;
                    pos = end;
                    head_start = end;
                    self.phase = match framing {
                        BodyFraming::None => Phase::Head,
                        BodyFraming::Length(n) => Phase::Length(n),
                        BodyFraming::Chunked => Phase::Chunk(Chunk::Size { digits: 0, size: 0 }),
                    };
                }
                Phase::Length(n) => {
                    let avail = (b.len() - pos) as u64;
                    if avail < n {
                        self.phase = Phase::Length(n - avail);
                        return Run::Done;
                    }
                    pos += n as usize;
                    head_start = pos;
                    self.phase = Phase::Head;
                }
                Phase::Chunk(c) => {
                    if pos >= b.len() {
                        return Run::Done;
                    }
                    if let Chunk::Data { left } = c {
                        let avail = (b.len() - pos) as u64;
                        if avail < left {
                            self.phase = Phase::Chunk(Chunk::Data { left: left - avail });
                            return Run::Done;
                        }
                        pos += left as usize;
                        self.phase = Phase::Chunk(Chunk::DataCr);
                        continue;
                    }
                    match self.chunk_step(c, b[pos]) {
                        Ok(Some(next)) => self.phase = Phase::Chunk(next),
                        Ok(None) => {
                            self.phase = Phase::Head;
                            head_start = pos + 1;
                        }
                        Err(r) => return self.deny(r),
                    }
                    pos += 1;
                }
            }
        }
    }

    fn deny(&mut self, r: L7Reason) -> Run {
        self.phase = Phase::Denied(r);
        Run::Deny(r)
    }

    /// One byte of chunked framing; `Ok(None)` when the body ended.
    fn chunk_step(&self, c: Chunk, x: u8) -> Result<Option<Chunk>, L7Reason> {
        let meta_max = self.limits.chunk_meta_max;
        let bad = Err(L7Reason::BadChunk);
        let next = match c {
            Chunk::Size { digits, size } => match (x, hex(x)) {
                (_, Some(v)) => {
                    if digits >= 15 {
                        return bad;
                    }
                    Chunk::Size {
                        digits: digits + 1,
                        size: size << 4 | u64::from(v),
                    }
                }
                _ if digits == 0 => return bad,
                (b'\r', _) => Chunk::SizeLf { size },
                (b';', _) => Chunk::Ext { size, len: 0 },
                (b' ' | b'\t', _) => Chunk::SizeWs { size },
                _ => return bad,
            },
            Chunk::SizeWs { size } => match x {
                b' ' | b'\t' => Chunk::SizeWs { size },
                b';' => Chunk::Ext { size, len: 0 },
                _ => return bad,
            },
            Chunk::Ext { size, len } => match x {
                b'\r' => Chunk::SizeLf { size },
                _ if len >= meta_max => return bad,
                b'\t' | 0x20..=0x7e | 0x80..=0xff => Chunk::Ext { size, len: len + 1 },
                _ => return bad,
            },
            Chunk::SizeLf { size } => match x {
                b'\n' if size == 0 => Chunk::TrailerStart { total: 0 },
                b'\n' => Chunk::Data { left: size },
                _ => return bad,
            },
            // Data is skipped in bulk by the caller.
            Chunk::Data { .. } => return bad,
            Chunk::DataCr => match x {
                b'\r' => Chunk::DataLf,
                _ => return bad,
            },
            Chunk::DataLf => match x {
                b'\n' => Chunk::Size { digits: 0, size: 0 },
                _ => return bad,
            },
            Chunk::TrailerStart { total } => match x {
                b'\r' => Chunk::FinalLf,
                _ if super::http::is_tchar(x) => Chunk::TrailerName { total: total + 1 },
                _ => return bad,
            },
            Chunk::TrailerName { total } => match x {
                _ if total >= meta_max => return bad,
                b':' => Chunk::TrailerValue { total: total + 1 },
                _ if super::http::is_tchar(x) => Chunk::TrailerName { total: total + 1 },
                _ => return bad,
            },
            Chunk::TrailerValue { total } => match x {
                b'\r' => Chunk::TrailerLf { total },
                _ if total >= meta_max => return bad,
                b'\t' | 0x20..=0x7e | 0x80..=0xff => Chunk::TrailerValue { total: total + 1 },
                _ => return bad,
            },
            Chunk::TrailerLf { total } => match x {
                b'\n' => Chunk::TrailerStart { total },
                _ => return bad,
            },
            Chunk::FinalLf => match x {
                b'\n' => return Ok(None),
                _ => return bad,
            },
        };
        Ok(Some(next))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The inspection state of one flow's client→server stream.
#[derive(Debug, Clone)]
pub struct HttpInspector {
    core: Core,
    /// Bytes of the frames held by the worker: `buf[..len]` are the stream
    /// bytes `[next - len, next)`.
    buf: Box<[u8]>,
    len: usize,
    /// Where the open request head starts in `buf` (when holding).
    head_off: usize,
    started: bool,
    /// Next expected sequence number.
    next: u32,
    held_segments: u16,
    held_since: u64,
    /// First byte the server has not been sent (valid once denied).
    denied_at: u32,
}

impl HttpInspector {
    /// A fresh inspector; allocates its buffer (do this at start, in a pool).
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            buffer: limits.buffer.max(limits.head_max),
            ..limits
        };
        HttpInspector {
            core: Core {
                phase: Phase::Head,
                limits,
                requests: 0,
            },
            buf: vec![0u8; limits.buffer].into_boxed_slice(),
            len: 0,
            head_off: 0,
            started: false,
            next: 0,
            held_segments: 0,
            held_since: 0,
            denied_at: 0,
        }
    }

    /// Forgets the flow (the buffer is kept).
    pub fn reset(&mut self) {
        self.core.phase = Phase::Head;
        self.core.requests = 0;
        self.len = 0;
        self.head_off = 0;
        self.started = false;
        self.next = 0;
        self.held_segments = 0;
        self.held_since = 0;
        self.denied_at = 0;
    }

    /// Fixes the stream start: `first_seq` is the client's ISN + 1.
    pub fn start(&mut self, first_seq: u32) {
        self.started = true;
        self.next = first_seq;
    }

    /// Requests judged and allowed so far.
    pub fn requests(&self) -> u64 {
        self.core.requests
    }

    /// The next sequence number expected from the client (after every byte
    /// fed): the acknowledgment number for the 403 sent to the client.
    pub fn next_seq(&self) -> u32 {
        self.next
    }

    /// The first client byte the server has not been sent: while holding,
    /// the start of the held bytes; once denied, the start of the dropped
    /// bytes (the sequence number for the RST sent to the server).
    pub fn released_seq(&self) -> u32 {
        match self.core.phase {
            Phase::Denied(_) => self.denied_at,
            _ => self.next.wrapping_sub(self.len as u32),
        }
    }

    /// Whether frames are held, and until when (`held_since + hold_ns`): the
    /// worker denies the flow with [`Self::expire`] once this passed, even
    /// if no segment arrives.
    pub fn hold_deadline(&self) -> Option<u64> {
        (self.held_segments > 0).then(|| self.held_since.saturating_add(self.core.limits.hold_ns))
    }

    /// Denies the flow if frames are held past the hold limit.
    pub fn expire(&mut self, now: u64) -> Option<L7Reason> {
        match self.hold_deadline() {
            Some(d) if now > d => Some(self.deny(L7Reason::HoldTimeout)),
            _ => None,
        }
    }

    /// The reason, once denied.
    pub fn denied(&self) -> Option<L7Reason> {
        match self.core.phase {
            Phase::Denied(r) => Some(r),
            _ => None,
        }
    }

    fn deny(&mut self, r: L7Reason) -> L7Reason {
        if self.denied().is_none() {
            self.denied_at = self.released_seq();
            self.core.phase = Phase::Denied(r);
        }
        self.len = 0;
        self.held_segments = 0;
        r
    }

    /// Feeds one client→server TCP segment; see the module docs for the
    /// contract. `judge` is called once per complete request head.
    pub fn feed<F>(&mut self, seq: u32, payload: &[u8], now: u64, mut judge: F) -> Feed
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        if let Some(r) = self.denied() {
            return Feed::Deny(r);
        }
        if let Some(r) = self.expire(now) {
            return Feed::Deny(r);
        }
        if payload.is_empty() {
            return Feed::Forward;
        }
        if !self.started {
            self.start(seq);
        }
        let off = seq.wrapping_sub(self.next) as i32;
        if off > 0 {
            return Feed::Drop;
        }
        let mut data = payload;
        if off < 0 {
            let old = usize::try_from(-i64::from(off)).unwrap_or(usize::MAX);
            let old_n = old.min(payload.len());
            // Held bytes are the stream bytes [held_start, next).
            let held_start = self.next.wrapping_sub(self.len as u32);
            let d = i64::from(seq.wrapping_sub(held_start) as i32);
            let s_idx = usize::try_from((-d).max(0)).unwrap_or(usize::MAX);
            let b_idx = usize::try_from(d.max(0)).unwrap_or(usize::MAX);
            if s_idx < old_n {
                let n = old_n - s_idx;
                let held = self.buf.get(b_idx..b_idx.saturating_add(n));
                let seen = payload.get(s_idx..old_n);
                if held.is_none() || held != seen {
                    return Feed::Deny(self.deny(L7Reason::OverlapMismatch));
                }
            }
            if old_n == payload.len() {
                return if s_idx >= old_n {
                    Feed::Forward
                } else {
                    Feed::Drop
                };
            }
            data = &payload[old_n..];
        }

        let from_seq = self.next;
        let run = if self.len > 0 {
            let pos = self.len;
            let Some(dst) = self.buf.get_mut(pos..pos + data.len()) else {
                return Feed::Deny(self.deny(L7Reason::HoldOverflow));
            };
            dst.copy_from_slice(data);
            self.len += data.len();
            self.next = self.next.wrapping_add(data.len() as u32);
            self.core
                .run(&self.buf[..self.len], pos, self.head_off, &mut judge)
        } else {
            self.next = self.next.wrapping_add(data.len() as u32);
            self.core.run(data, 0, 0, &mut judge)
        };
        match run {
            Run::Done => {
                self.len = 0;
                self.head_off = 0;
                self.held_segments = 0;
                Feed::Release
            }
            Run::HeadOpen(head_start) => {
                if self.len == 0 {
                    let Some(dst) = self.buf.get_mut(..data.len()) else {
                        self.denied_at = from_seq;
                        self.core.phase = Phase::Denied(L7Reason::HoldOverflow);
                        return Feed::Deny(L7Reason::HoldOverflow);
                    };
                    dst.copy_from_slice(data);
                    self.len = data.len();
                }
                self.head_off = head_start;
                if self.held_segments == 0 {
                    self.held_since = now;
                }
                self.held_segments += 1;
                if self.held_segments > self.core.limits.held_segments_max {
                    return Feed::Deny(self.deny(L7Reason::TooManySegments));
                }
                Feed::Hold
            }
            Run::Deny(r) => {
                // The frame is dropped with whatever was held before it.
                let held_before = self
                    .len
                    .saturating_sub(self.next.wrapping_sub(from_seq) as usize);
                self.denied_at = from_seq.wrapping_sub(held_before as u32);
                self.len = 0;
                self.held_segments = 0;
                Feed::Deny(r)
            }
        }
    }
}

/// Index of a slot in an [`InspectorPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

/// A worker's preallocated inspectors: every buffer is allocated by
/// [`InspectorPool::new`]; acquiring and releasing never allocate.
#[derive(Debug)]
pub struct InspectorPool {
    slots: Vec<HttpInspector>,
    in_use: Vec<bool>,
    free: Vec<u32>,
}

impl InspectorPool {
    pub fn new(slots: usize, limits: Limits) -> Self {
        let n = u32::try_from(slots).unwrap_or(u32::MAX) as usize;
        InspectorPool {
            slots: (0..n).map(|_| HttpInspector::new(limits)).collect(),
            in_use: vec![false; n],
            free: (0..n as u32).rev().collect(),
        }
    }

    /// A reset inspector for a new flow, or `None` when all are in use (the
    /// pass then refuses the flow: fail closed).
    pub fn acquire(&mut self) -> Option<SlotId> {
        let i = self.free.pop()?;
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.reset();
        }
        if let Some(u) = self.in_use.get_mut(i as usize) {
            *u = true;
        }
        Some(SlotId(i))
    }

    pub fn get(&mut self, id: SlotId) -> Option<&mut HttpInspector> {
        if *self.in_use.get(id.0 as usize)? {
            self.slots.get_mut(id.0 as usize)
        } else {
            None
        }
    }

    /// Gives a slot back (releasing a free or unknown slot does nothing).
    pub fn release(&mut self, id: SlotId) {
        if let Some(u) = self.in_use.get_mut(id.0 as usize) {
            if *u {
                *u = false;
                self.free.push(id.0);
            }
        }
    }

    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}
