//! Per-flow HTTP/1.x inspection of the client→server byte stream.
//!
//! One inspection state per TCP connection whose admitted rule carries HTTP
//! rules: in the worker, a small [`StreamState`] per flow in an
//! [`InspectorPool`] allocated once at start, with a head buffer lent from a
//! smaller shared pool only while a request head stays open across
//! segments; elsewhere an [`HttpInspector`] (state + its own buffer).
//! Nothing is allocated per packet or per flow afterwards.
//!
//! # The hold/release contract
//!
//! The pass calls [`HttpInspector::feed_segment`] with every client→server
//! TCP segment of the flow (sequence number, payload, also when the payload
//! is empty, and whether it carries FIN) and a judge closure; the answer
//! says what to do with *this frame* and with the frames the worker holds
//! for the flow:
//!
//! | [`Feed`] | this frame | frames held for the flow |
//! | --- | --- | --- |
//! | `Release` | forward, after the held ones | forward all now, in arrival order |
//! | `Forward` | forward | stay held |
//! | `Hold` | hold (append to the held list) | stay held |
//! | `Drop` | drop (TCP will send it again) | stay held |
//! | `Deny(r)` | drop | drop all; send the 403 to the client and a RST to the server |
//!
//! What may reach the server before a head is judged: an HTTP/1.x server
//! never acts on a request before the empty line that ends its head, so the
//! bytes of an incomplete head are *forwarded* (and copied into the slot's
//! buffer, to be parsed and to compare retransmissions with), except:
//!
//! - the request line is validated (HTTP/1.0 or HTTP/1.1, every target
//!   check) as soon as its CR arrives, before any later byte passes: the
//!   segment carrying an invalid one is denied (an HTTP/0.9 server would
//!   act on the request line alone);
//! - every byte of a head is checked as it arrives (bare CR, bare LF,
//!   control bytes, obsolete folding) and every header line as soon as its
//!   CR arrives (colon, token name, no whitespace before the colon), so no
//!   forwarded byte can end a head for a lenient server either;
//! - the segment carrying the CR of the empty line that ends the head is
//!   `Hold`: the next byte completes the head (or is a bare CR: deny), the
//!   head is judged, and the held frame is released with the frame that
//!   completed it, or dropped with it (the server then gets a RST: it saw an
//!   incomplete head it can never complete). A segment carrying the whole
//!   end of a head is judged at once: `Release` or `Deny`;
//! - the client's FIN inside a head (a server may act on what it has at end
//!   of stream) denies the flow (`IncompleteHead`); a FIN beyond the next
//!   expected byte, or before it, is `Drop`ped.
//!
//! The judge closure is called once per complete head, in stream order
//! (several times for one segment with pipelined requests), and any `Deny`
//! of the closure denies the frame that completes that head. So no request
//! can be acted upon by the server before its head was judged, and bodies
//! are skipped by their framing, never parsed as heads. Pipelined requests:
//! the same rules apply per request; a segment carrying the end of head N
//! and bytes of head N+1 is forwarded only if head N is allowed and the
//! bytes of N+1 are forwardable, held if they include N+1's final CR, and
//! denied with all it carries if N is denied. If N is allowed and N+1,
//! begun in this segment, is denied (nothing held), the deny is split:
//! [`StreamState::released_seq`] is N+1's first byte and
//! [`StreamState::deny_split`] says the bytes before it go on (docs/l7.md).
//!
//! [`HttpInspector::feed`] (no TCP flags, e.g. a request judged offline)
//! cannot tell whether a segment carries FIN, so it holds every segment that
//! ends inside a head (a head trickled in many small segments then stalls:
//! held bytes are never acknowledged).
//!
//! Sequence numbers:
//! - the first segment fed fixes the stream start (feed the first data
//!   segment after the handshake, or call [`HttpInspector::start`] with
//!   ISN+1 from the SYN);
//! - a segment that starts beyond the next expected byte (a gap) is answered
//!   `Drop`: nothing is buffered out of order, the client retransmits it
//!   after the missing segment arrives;
//! - bytes below the next expected byte are compared with the kept copy of
//!   the open head (different bytes → `Deny(OverlapMismatch)`); a segment
//!   made only of old bytes is `Forward`ed when none of them is held (the
//!   server ignores or needs it) and `Drop`ped when some are (the held copy
//!   goes out first);
//! - a segment with old and new bytes is judged on its new bytes; since held
//!   frames are always released before it, the receiver sees the judged
//!   copy first (receivers keep the first copy of a byte).
//!
//! Bounds: a head longer than [`Limits::head_max`] bytes, more than
//! [`Limits::held_segments_max`] frames held, or a hold older than
//! [`Limits::hold_ns`] deny. A denied inspector stays denied (every later
//! segment: `Deny`).
#![forbid(unsafe_code)]

use super::http::{parse_field_line, parse_head, parse_request_line, BodyFraming, RequestHead};
use super::L7Reason;

mod tls;

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
    /// Hold this frame: it carries the start of the empty line that ends a
    /// request head (or, from [`HttpInspector::feed`], any bytes of an
    /// incomplete head).
    Hold,
    /// Drop this frame only (a gap before it, or a copy of held bytes).
    Drop,
    /// Drop this frame and the held ones; close the connection.
    Deny(L7Reason),
    /// Drop this frame only: no room for it now (no free head buffer in an
    /// [`InspectorPool`], or no room to hold it); the flow's state is as
    /// before, the client's retransmission is judged afresh.
    Busy,
}

/// Bounds of one inspector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head, in bytes (request line to empty line).
    pub head_max: usize,
    /// Bytes of an [`HttpInspector`]'s own head buffer (raised to
    /// `head_max` + 1; an [`InspectorPool`]'s buffers are `head_max` + 1).
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
            buffer: 8193,
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

/// Scan state of the open request head (its bytes are in the buffer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HeadScan {
    /// Offset of the current line's first byte in the head.
    line_start: usize,
    /// The request line's CR arrived and the line was validated.
    request_line: bool,
}

#[derive(Debug, Clone, Copy)]
struct Core {
    phase: Phase,
    limits: Limits,
    requests: u64,
    scan: HeadScan,
    /// Where the open head began in the data of the current `run` (`None`:
    /// in an earlier segment, or no head open).
    fresh_head_at: Option<usize>,
}

impl Core {
    /// Runs the stream machine over the new bytes `data`; the open head's
    /// bytes so far are `head[..*len]`, and head bytes are appended there as
    /// they are scanned. Returns whether a head was completed (and judged).
    fn run<F>(
        &mut self,
        head: &mut [u8],
        len: &mut usize,
        data: &[u8],
        judge: &mut F,
    ) -> Result<bool, L7Reason>
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        let mut pos = 0;
        let mut completed = false;
        self.fresh_head_at = None;
        loop {
            match self.phase {
                Phase::Denied(r) => return Err(r),
                Phase::Head => {
                    if pos >= data.len() {
                        return Ok(completed);
                    }
                    let old = *len;
                    if old == 0 && self.fresh_head_at.is_none() {
                        self.fresh_head_at = Some(pos);
                    }
                    let room = (self.limits.head_max + 1).saturating_sub(old);
                    let n = (data.len() - pos).min(room);
                    let (Some(dst), Some(src)) =
                        (head.get_mut(old..old + n), data.get(pos..pos + n))
                    else {
                        return self.deny(L7Reason::HeadTooLong);
                    };
                    dst.copy_from_slice(src);
                    let end = match self.scan_head(&head[..old + n], old) {
                        Ok(end) => end,
                        Err(r) => return self.deny(r),
                    };
                    let new_len = end.unwrap_or(old + n);
                    if new_len > self.limits.head_max {
                        return self.deny(L7Reason::HeadTooLong);
                    }
                    pos += new_len - old;
                    *len = new_len;
                    let Some(end) = end else {
                        return Ok(completed);
                    };
                    let parsed = match parse_head(&head[..end]) {
                        Ok(h) => h,
                        Err(r) => return self.deny(r),
                    };
                    let framing = parsed.body();
                    if judge(&parsed) == L7Verdict::Deny {
                        return self.deny(L7Reason::Policy);
                    }
                    self.requests += 1;
                    completed = true;
                    self.fresh_head_at = None;
                    *len = 0;
                    self.scan = HeadScan::default();
                    self.phase = match framing {
                        BodyFraming::None => Phase::Head,
                        BodyFraming::Length(n) => Phase::Length(n),
                        BodyFraming::Chunked => Phase::Chunk(Chunk::Size { digits: 0, size: 0 }),
                    };
                }
                Phase::Length(n) => {
                    let avail = (data.len() - pos) as u64;
                    if avail < n {
                        self.phase = Phase::Length(n - avail);
                        return Ok(completed);
                    }
                    pos += n as usize;
                    self.phase = Phase::Head;
                }
                Phase::Chunk(c) => {
                    if pos >= data.len() {
                        return Ok(completed);
                    }
                    if let Chunk::Data { left } = c {
                        let avail = (data.len() - pos) as u64;
                        if avail < left {
                            self.phase = Phase::Chunk(Chunk::Data { left: left - avail });
                            return Ok(completed);
                        }
                        pos += left as usize;
                        self.phase = Phase::Chunk(Chunk::DataCr);
                        continue;
                    }
                    match self.chunk_step(c, data[pos]) {
                        Ok(Some(next)) => self.phase = Phase::Chunk(next),
                        Ok(None) => self.phase = Phase::Head,
                        Err(r) => return self.deny(r),
                    }
                    pos += 1;
                }
            }
        }
    }

    /// Checks the head bytes `head[from..]` one by one, as they arrive:
    /// bare CR, bare LF, control bytes and obsolete folding at once, the
    /// request line at its CR, each header line at its CR. Returns the
    /// head's length if its final LF is among them (bytes after it are not
    /// looked at).
    fn scan_head(&mut self, head: &[u8], from: usize) -> Result<Option<usize>, L7Reason> {
        let sc = &mut self.scan;
        for h in from..head.len() {
            let x = head[h];
            let prev = h.checked_sub(1).map(|p| head[p]);
            if prev == Some(b'\r') && x != b'\n' {
                return Err(L7Reason::BareCr);
            }
            match x {
                b'\n' => {
                    if prev != Some(b'\r') {
                        return Err(L7Reason::BareLf);
                    }
                    if sc.request_line && h == sc.line_start + 1 {
                        // The empty line: the head ends here.
                        return Ok(Some(h + 1));
                    }
                    sc.line_start = h + 1;
                }
                b'\r' => {
                    if !sc.request_line {
                        // Also an empty request line (leading CRLF): refused.
                        parse_request_line(&head[..h])?;
                        sc.request_line = true;
                    } else if h > sc.line_start {
                        parse_field_line(&head[sc.line_start..h])?;
                    }
                }
                b' ' | b'\t' if sc.request_line && h == sc.line_start => {
                    return Err(L7Reason::ObsFold);
                }
                b'\t' => {}
                0..=0x1f | 0x7f => return Err(L7Reason::ControlByte),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Whether the open head `head` ends with the CR of its empty line (the
    /// next byte ends the head).
    fn at_final_cr(&self, head: &[u8]) -> bool {
        self.phase == Phase::Head
            && self.scan.request_line
            && !head.is_empty()
            && self.scan.line_start + 1 == head.len()
            && head.last() == Some(&b'\r')
    }

    fn deny(&mut self, r: L7Reason) -> Result<bool, L7Reason> {
        self.phase = Phase::Denied(r);
        Err(r)
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

/// The inspection state of one flow's client→server stream, without the
/// bytes of its open request head: those live in a buffer lent to each
/// call that needs them ([`HttpInspector`] owns one; [`InspectorPool`]
/// lends one from a shared, smaller pool only while a head stays open
/// across segments). A flow between requests (an idle keep-alive
/// connection) needs only this.
#[derive(Debug, Clone, Copy)]
pub struct StreamState {
    core: Core,
    /// Bytes of the open request head kept in the buffer: `buf[..len]` are
    /// the stream bytes `[next - len, next)` (forwarded or held).
    len: usize,
    started: bool,
    /// The client's FIN was accepted: no request can follow.
    finished: bool,
    /// Next expected sequence number.
    next: u32,
    /// First byte of the first held frame (while frames are held).
    held_from: u32,
    held_segments: u16,
    held_since: u64,
    /// First byte the server has not been sent (valid once denied).
    denied_at: u32,
    /// Denied with bytes of allowed requests before the denied head in the
    /// denying segment: those bytes go to the server (see
    /// [`StreamState::deny_split`]).
    split: bool,
}

impl StreamState {
    /// A fresh stream state (head buffers are `limits.head_max + 1` bytes).
    pub fn new(limits: Limits) -> Self {
        StreamState {
            core: Core {
                phase: Phase::Head,
                limits,
                requests: 0,
                scan: HeadScan::default(),
                fresh_head_at: None,
            },
            len: 0,
            started: false,
            finished: false,
            next: 0,
            held_from: 0,
            held_segments: 0,
            held_since: 0,
            denied_at: 0,
            split: false,
        }
    }

    /// Forgets the flow.
    fn reset(&mut self) {
        *self = StreamState::new(self.core.limits);
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
            _ if self.held_segments > 0 => self.held_from,
            _ => self.next,
        }
    }

    /// Whether frames are held, and until when (`held_since + hold_ns`): the
    /// worker denies the flow with `expire` once this passed, even if no
    /// segment arrives.
    pub fn hold_deadline(&self) -> Option<u64> {
        (self.held_segments > 0).then(|| self.held_since.saturating_add(self.core.limits.hold_ns))
    }

    /// Denies the flow if frames are held past the hold limit.
    fn expire(&mut self, now: u64) -> Option<L7Reason> {
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

    /// Whether the client's FIN was accepted (at the next expected byte,
    /// outside a head): the stream is complete, no request can follow, and
    /// any later byte beyond it is `Drop`ped.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The deny was split (pipelining): the denying segment began with
    /// bytes of allowed requests, up to [`StreamState::released_seq`]; the
    /// caller forwards those (the frame cut there) and ends the connection
    /// at the client's next segment, with a RST to the client instead of
    /// the 403 (the server's answer to the allowed requests may still be on
    /// its way: a 403 then would land inside it).
    pub fn deny_split(&self) -> bool {
        self.split && self.denied().is_some()
    }

    /// Whether the stream ends inside a request head (some of its bytes
    /// were forwarded or are held).
    pub fn head_open(&self) -> bool {
        self.core.phase == Phase::Head && self.len > 0
    }

    /// The client reset the connection. A RST's sequence number is not
    /// checked by weir (the server ignores one outside its window), so a
    /// head left open would let a later FIN end it: the flow is denied
    /// (`IncompleteHead`; the server gets weir's own RST at the exact
    /// sequence number). Between requests nothing is pending: `None`.
    pub fn abort(&mut self) -> Option<L7Reason> {
        if let Some(r) = self.denied() {
            return Some(r);
        }
        (self.head_open() || self.held_segments > 0).then(|| self.deny(L7Reason::IncompleteHead))
    }

    /// Denies the flow: nothing from `released_seq()` on reaches the server.
    fn deny(&mut self, r: L7Reason) -> L7Reason {
        let at = self.released_seq();
        self.deny_at(r, at)
    }

    /// Denies the flow; the server was sent every byte before `at`.
    fn deny_at(&mut self, r: L7Reason, at: u32) -> L7Reason {
        if self.denied().is_none() {
            self.denied_at = at;
            self.core.phase = Phase::Denied(r);
        }
        self.len = 0;
        self.held_segments = 0;
        r
    }

    /// The contract of [`HttpInspector::feed_segment`] (`fin: None`: flags
    /// unknown); `buf` keeps the open head (`buf[..self.len]` on entry), at
    /// least `head_max + 1` bytes.
    fn feed_inner<F>(
        &mut self,
        buf: &mut [u8],
        seq: u32,
        payload: &[u8],
        fin: Option<bool>,
        now: u64,
        mut judge: F,
    ) -> Feed
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        if let Some(r) = self.denied() {
            return Feed::Deny(r);
        }
        if let Some(r) = self.expire(now) {
            return Feed::Deny(r);
        }
        let flags_known = fin.is_some();
        let fin = fin == Some(true);
        if payload.is_empty() && !fin {
            return Feed::Forward;
        }
        if !self.started {
            self.start(seq);
        }
        let off = seq.wrapping_sub(self.next) as i32;
        if off > 0 {
            // A gap before it (also a FIN beyond the next expected byte: the
            // server would buffer it and end the stream once the gap is
            // filled with bytes not yet judged).
            return Feed::Drop;
        }
        let mut data = payload;
        if off < 0 {
            let old = usize::try_from(-i64::from(off)).unwrap_or(usize::MAX);
            let old_n = old.min(payload.len());
            // The kept head bytes are the stream bytes [next - len, next).
            let kept_start = self.next.wrapping_sub(self.len as u32);
            let d = i64::from(seq.wrapping_sub(kept_start) as i32);
            let s_idx = usize::try_from((-d).max(0)).unwrap_or(usize::MAX);
            let b_idx = usize::try_from(d.max(0)).unwrap_or(usize::MAX);
            if s_idx < old_n {
                let n = old_n - s_idx;
                let kept = buf
                    .get(..self.len)
                    .and_then(|k| k.get(b_idx..b_idx.saturating_add(n)));
                let seen = payload.get(s_idx..old_n);
                if kept.is_none() || kept != seen {
                    return Feed::Deny(self.deny(L7Reason::OverlapMismatch));
                }
            }
            if old_n == payload.len() {
                if fin && old != payload.len() {
                    // A FIN before the end of the stream: not a real one,
                    // but the server would end the stream there.
                    return Feed::Drop;
                }
                if fin && self.head_open() {
                    return Feed::Deny(self.deny(L7Reason::IncompleteHead));
                }
                // Some held byte in it: the held copy goes out first.
                let end = seq.wrapping_add(payload.len() as u32);
                let some_held =
                    self.held_segments > 0 && end.wrapping_sub(self.held_from) as i32 > 0;
                if some_held {
                    return Feed::Drop;
                }
                self.finished |= fin;
                return Feed::Forward;
            }
            data = &payload[old_n..];
        }
        if self.finished && !data.is_empty() {
            // Bytes after the client's FIN: no stack sends them.
            return Feed::Drop;
        }

        let from_seq = self.next;
        let was_held = self.held_segments > 0;
        self.next = self.next.wrapping_add(data.len() as u32);
        let completed = match self.core.run(buf, &mut self.len, data, &mut judge) {
            Ok(c) => c,
            Err(r) => {
                // The frame is dropped with whatever was held before it (the
                // core already switched to `Denied`); or, when the denied
                // head began inside this frame after bytes of allowed
                // requests (pipelining) and nothing is held, those bytes
                // still go to the server (`deny_split`).
                let split = match self.core.fresh_head_at {
                    Some(k) if k > 0 && !was_held => u32::try_from(k).ok(),
                    _ => None,
                };
                self.split = split.is_some();
                self.denied_at = match split {
                    Some(k) => from_seq.wrapping_add(k),
                    None if was_held => self.held_from,
                    None => from_seq,
                };
                self.len = 0;
                self.held_segments = 0;
                return Feed::Deny(r);
            }
        };
        let open = self.head_open();
        if fin && open {
            let at = if was_held { self.held_from } else { from_seq };
            return Feed::Deny(self.deny_at(L7Reason::IncompleteHead, at));
        }
        self.finished |= fin;
        if payload.is_empty() {
            return Feed::Forward;
        }
        // Hold: the frame carries the final CR of a head (the next byte ends
        // it); or flags are unknown (it may carry FIN); or frames are held
        // for a head still open (cannot happen with flags: the byte after a
        // final CR completes the head or is refused).
        let hold = open
            && (self
                .core
                .at_final_cr(buf.get(..self.len).unwrap_or_default())
                || !flags_known
                || (was_held && !completed));
        if hold {
            if !was_held {
                self.held_from = from_seq;
                self.held_since = now;
            }
            self.held_segments += 1;
            if self.held_segments > self.core.limits.held_segments_max {
                return Feed::Deny(self.deny(L7Reason::TooManySegments));
            }
            return Feed::Hold;
        }
        self.held_segments = 0;
        if open && !was_held {
            Feed::Forward
        } else {
            Feed::Release
        }
    }
}

/// The inspection state of one flow's client→server stream, with a head
/// buffer of its own (one flow at a time: `weir explain`, tests, the
/// benchmark; the worker uses an [`InspectorPool`]).
#[derive(Debug, Clone)]
pub struct HttpInspector {
    st: StreamState,
    buf: Box<[u8]>,
}

impl HttpInspector {
    /// A fresh inspector; allocates its buffer (`limits.buffer`, at least
    /// `head_max + 1` bytes).
    pub fn new(limits: Limits) -> Self {
        let len = limits.buffer.max(limits.head_max.saturating_add(1));
        HttpInspector {
            st: StreamState::new(limits),
            buf: vec![0u8; len].into_boxed_slice(),
        }
    }

    /// Forgets the flow (the buffer is kept).
    pub fn reset(&mut self) {
        self.st.reset();
    }

    /// Fixes the stream start: `first_seq` is the client's ISN + 1.
    pub fn start(&mut self, first_seq: u32) {
        self.st.start(first_seq);
    }

    /// Requests judged and allowed so far.
    pub fn requests(&self) -> u64 {
        self.st.requests()
    }

    /// See [`StreamState::next_seq`].
    pub fn next_seq(&self) -> u32 {
        self.st.next_seq()
    }

    /// See [`StreamState::released_seq`].
    pub fn released_seq(&self) -> u32 {
        self.st.released_seq()
    }

    /// See [`StreamState::hold_deadline`].
    pub fn hold_deadline(&self) -> Option<u64> {
        self.st.hold_deadline()
    }

    /// See [`StreamState::deny_split`].
    pub fn deny_split(&self) -> bool {
        self.st.deny_split()
    }

    /// Denies the flow if frames are held past the hold limit.
    pub fn expire(&mut self, now: u64) -> Option<L7Reason> {
        self.st.expire(now)
    }

    /// The reason, once denied.
    pub fn denied(&self) -> Option<L7Reason> {
        self.st.denied()
    }

    /// See [`StreamState::finished`].
    pub fn finished(&self) -> bool {
        self.st.finished()
    }

    /// See [`StreamState::abort`].
    pub fn abort(&mut self) -> Option<L7Reason> {
        self.st.abort()
    }

    /// Feeds one client→server TCP segment whose flags are unknown; see the
    /// module docs. Since any segment might carry FIN, every segment that
    /// ends inside a request head is `Hold` (nothing of an incomplete head
    /// is forwarded). `judge` is called once per complete request head.
    pub fn feed<F>(&mut self, seq: u32, payload: &[u8], now: u64, judge: F) -> Feed
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        self.st
            .feed_inner(&mut self.buf, seq, payload, None, now, judge)
    }

    /// Feeds one client→server TCP segment (`fin`: its FIN flag); see the
    /// module docs for the contract. `judge` is called once per complete
    /// request head.
    pub fn feed_segment<F>(
        &mut self,
        seq: u32,
        payload: &[u8],
        fin: bool,
        now: u64,
        judge: F,
    ) -> Feed
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        self.st
            .feed_inner(&mut self.buf, seq, payload, Some(fin), now, judge)
    }
}

/// Index of a flow in an [`InspectorPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

const NO_BUFFER: u32 = u32::MAX;

/// A worker's preallocated inspection state: `flows` small per-flow
/// [`StreamState`]s, and `buffers` head buffers of `head_max + 1` bytes
/// that a flow holds only while one of its request heads stays open
/// across segments (a head that arrives whole in one segment is parsed in
/// a scratch buffer). Everything is allocated by [`InspectorPool::new`];
/// acquiring, feeding and releasing never allocate.
///
/// No free head buffer when a head stays open (or the caller may not hold
/// a frame now) → [`Feed::Busy`]: the segment is dropped and the flow's
/// state is left as it was, so the client's retransmission is judged
/// afresh.
#[derive(Debug)]
pub struct InspectorPool {
    flows: Vec<StreamState>,
    in_use: Vec<bool>,
    free: Vec<u32>,
    /// Per flow: the head buffer it holds, or `NO_BUFFER`.
    buffer_of: Vec<u32>,
    buffers: Box<[u8]>,
    buffer_len: usize,
    buffers_free: Vec<u32>,
    /// Where every segment is scanned (the flow's kept head is copied in
    /// first, and back out if the head stays open).
    scratch: Box<[u8]>,
}

impl InspectorPool {
    /// `flows` flows with a head buffer each.
    pub fn new(flows: usize, limits: Limits) -> Self {
        Self::with_buffers(flows, flows, limits)
    }

    /// `flows` flows sharing `buffers` head buffers.
    pub fn with_buffers(flows: usize, buffers: usize, limits: Limits) -> Self {
        let n = u32::try_from(flows).unwrap_or(u32::MAX - 1) as usize;
        let nb = u32::try_from(buffers).unwrap_or(u32::MAX - 1) as usize;
        let buffer_len = limits.head_max.saturating_add(1);
        InspectorPool {
            flows: vec![StreamState::new(limits); n],
            in_use: vec![false; n],
            free: (0..n as u32).rev().collect(),
            buffer_of: vec![NO_BUFFER; n],
            buffers: vec![0u8; nb.saturating_mul(buffer_len)].into_boxed_slice(),
            buffer_len,
            buffers_free: (0..nb as u32).rev().collect(),
            scratch: vec![0u8; buffer_len].into_boxed_slice(),
        }
    }

    /// A reset inspector for a new flow, or `None` when all are in use (the
    /// pass then refuses the flow: fail closed).
    pub fn acquire(&mut self) -> Option<SlotId> {
        let i = self.free.pop()?;
        if let Some(s) = self.flows.get_mut(i as usize) {
            s.reset();
        }
        if let Some(u) = self.in_use.get_mut(i as usize) {
            *u = true;
        }
        Some(SlotId(i))
    }

    /// The state of a flow in use.
    pub fn get(&mut self, id: SlotId) -> Option<&mut StreamState> {
        if *self.in_use.get(id.0 as usize)? {
            self.flows.get_mut(id.0 as usize)
        } else {
            None
        }
    }

    /// Starts a flow over (a reopened connection) at `first_seq`.
    pub fn restart(&mut self, id: SlotId, first_seq: u32) {
        self.drop_buffer(id);
        if let Some(s) = self.get(id) {
            s.reset();
            s.start(first_seq);
        }
    }

    /// Denies the flow if frames are held past the hold limit.
    pub fn expire(&mut self, id: SlotId, now: u64) -> Option<L7Reason> {
        let r = self.get(id)?.expire(now);
        if r.is_some() {
            self.drop_buffer(id);
        }
        r
    }

    /// See [`StreamState::abort`].
    pub fn abort(&mut self, id: SlotId) -> Option<L7Reason> {
        let r = self.get(id)?.abort();
        self.drop_buffer(id);
        r
    }

    fn drop_buffer(&mut self, id: SlotId) {
        if let Some(b) = self.buffer_of.get_mut(id.0 as usize) {
            if *b != NO_BUFFER {
                self.buffers_free.push(*b);
                *b = NO_BUFFER;
            }
        }
    }

    /// [`HttpInspector::feed_segment`] for flow `id`, plus: `Feed::Busy`
    /// (state unchanged) when the head stays open and no head buffer is
    /// free, or when the answer would be `Hold` and `may_hold` is false.
    /// A flow not in use gets `Busy`.
    #[allow(clippy::too_many_arguments)]
    pub fn feed_segment<F>(
        &mut self,
        id: SlotId,
        seq: u32,
        payload: &[u8],
        fin: bool,
        now: u64,
        may_hold: bool,
        judge: F,
    ) -> Feed
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        self.feed_with(id, may_hold, |st, buf| {
            st.feed_inner(buf, seq, payload, Some(fin), now, judge)
        })
    }

    /// Runs `feed` on flow `id`'s state with the scratch buffer holding its
    /// kept bytes (see [`InspectorPool::feed_segment`] for `Busy`).
    fn feed_with(
        &mut self,
        id: SlotId,
        may_hold: bool,
        feed: impl FnOnce(&mut StreamState, &mut [u8]) -> Feed,
    ) -> Feed {
        let i = id.0 as usize;
        let blen = self.buffer_len;
        let (Some(&true), Some(&b), Some(st)) = (
            self.in_use.get(i),
            self.buffer_of.get(i),
            self.flows.get_mut(i),
        ) else {
            return Feed::Busy;
        };
        let saved = *st;
        if b != NO_BUFFER && st.len > 0 {
            let from = (b as usize) * blen;
            let (Some(src), Some(dst)) = (
                self.buffers.get(from..from + st.len),
                self.scratch.get_mut(..st.len),
            ) else {
                return Feed::Busy;
            };
            dst.copy_from_slice(src);
        }
        let f = feed(st, &mut self.scratch);
        if f == Feed::Hold && !may_hold {
            *st = saved;
            return Feed::Busy;
        }
        let len = st.len;
        if len == 0 {
            self.drop_buffer(id);
            return f;
        }
        let b = if b != NO_BUFFER {
            b
        } else if let Some(nb) = self.buffers_free.pop() {
            if let Some(x) = self.buffer_of.get_mut(i) {
                *x = nb;
            }
            nb
        } else {
            if let Some(st) = self.flows.get_mut(i) {
                *st = saved;
            }
            return Feed::Busy;
        };
        let from = (b as usize) * blen;
        if let (Some(dst), Some(src)) = (
            self.buffers.get_mut(from..from + len),
            self.scratch.get(..len),
        ) {
            dst.copy_from_slice(src);
        }
        f
    }

    /// Gives a flow back, with its head buffer (releasing a free or unknown
    /// flow does nothing).
    pub fn release(&mut self, id: SlotId) {
        if let Some(u) = self.in_use.get_mut(id.0 as usize) {
            if *u {
                *u = false;
                self.free.push(id.0);
                self.drop_buffer(id);
            }
        }
    }

    /// Flows in use.
    pub fn in_use(&self) -> usize {
        self.flows.len() - self.free.len()
    }

    /// Flows (the most open at once).
    pub fn capacity(&self) -> usize {
        self.flows.len()
    }

    /// Head buffers held by flows with an open head.
    pub fn buffers_in_use(&self) -> usize {
        self.buffer_count() - self.buffers_free.len()
    }

    /// Head buffers.
    pub fn buffer_count(&self) -> usize {
        self.buffers.len() / self.buffer_len.max(1)
    }

    /// Bytes of one head buffer.
    pub fn buffer_len(&self) -> usize {
        self.buffer_len
    }
}
