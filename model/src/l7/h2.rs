//! Inline HTTP/2 inspection with prior knowledge (h2c, RFC 9113) of the
//! client→server byte stream of one connection (see docs/l7.md, "HTTP/2").
//!
//! [`H2Inspector::feed_segment`] takes the TCP segments of the client in
//! order and answers with the same [`Feed`] as the HTTP/1 inspector:
//!
//! - the connection preface is checked byte by byte;
//! - frames are parsed with bounds ([`H2Limits`]): frame size, header
//!   block size, CONTINUATION frames per block; the frame rules that
//!   decide what a server takes as a request are enforced (a client's
//!   stream ids odd and increasing, CONTINUATION only right after its
//!   HEADERS, no PUSH_PROMISE from a client, fixed lengths of the control
//!   frames, padding shorter than its frame);
//! - each header block is HPACK-decoded ([`hpack::Decoder`], bounded
//!   table), checked (pseudo-headers, lowercase names, no connection
//!   fields, no CR/LF/NUL) and rewritten as the equivalent HTTP/1.1 head,
//!   which goes through the strict HTTP/1 parser ([`parse_head`]: path
//!   normalisation, Host) and then to the caller's `judge`, the same
//!   closure as for HTTP/1, so `http:` rules mean the same on both.
//!
//! A server acts on a request when its header block is complete (the
//! frame that carries END_HEADERS). So segments are forwarded until the
//! one carrying the last byte of a block, which is judged before it goes:
//! nothing is ever held. A request denied by policy whose `:method` is one
//! table-neutral HPACK byte in that segment is refused in place: the
//! inspector records a [`Rewrite`] of that byte into a `:status` one
//! ([`status_for_method`]), the pass applies it to every copy of the
//! segment it forwards, the server resets the stream and the connection
//! goes on. Any other denied request denies the connection (the pass
//! drops the segment, resets the server's side and answers the client,
//! see [`deny_reply`]). docs/l7.md, "A denied stream is refused in
//! place".
//!
//! Nothing here allocates after [`H2Inspector::new`], and nothing panics on
//! any input.
#![forbid(unsafe_code)]

pub mod hpack;
mod tables;

use super::http::parse_head;
use super::{Feed, L7Reason, L7Verdict, RequestHead};
use hpack::{Decoder, Field, HpackError};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds of one connection's inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Largest frame payload (the protocol default `SETTINGS_MAX_FRAME_SIZE`;
    /// a server that advertised more is not supported: larger frames deny).
    pub frame_max: usize,
    /// Largest header block (the HEADERS and CONTINUATION payloads).
    pub block_max: usize,
    /// Most CONTINUATION frames after one HEADERS.
    pub continuations_max: usize,
    /// Largest equivalent HTTP/1.1 head (decoded fields).
    pub head_max: usize,
    /// Most fields in one block.
    pub fields_max: usize,
    /// Most streams refused in place on one connection (the `:method`
    /// rewrite, docs/l7.md "A denied stream is refused"); a denial beyond
    /// them (or with 0) ends the connection. Each one is remembered so that
    /// a retransmission of its segment is rewritten the same way.
    pub stream_refusals_max: usize,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            frame_max: 16_384,
            block_max: 16_384,
            continuations_max: 16,
            head_max: 8 * 1024,
            fields_max: 100,
            stream_refusals_max: REFUSALS_MAX,
        }
    }
}

/// Frame types (RFC 9113 §6).
mod ty {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preface(u8),
    /// Reading a 9-byte frame header (`hdr_len` bytes so far).
    Header,
    /// Skipping `rest` payload bytes of a frame that is not a header block.
    Skip,
    /// Collecting a HEADERS/CONTINUATION payload into `block`.
    Block,
}

/// Most streams one connection can refuse in place (the size of the
/// inspector's rewrite table).
pub const REFUSALS_MAX: usize = 32;

/// Most frames of one header block whose position in the TCP stream is
/// remembered (a HEADERS and 16 CONTINUATIONs at the default bounds).
const BLOCK_FRAMES: usize = 17;

/// One byte weir rewrites in the client's stream to refuse a stream: at
/// sequence number `seq`, the `:method` representation becomes `byte`
/// (a `:status` one of the same length).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub seq: u32,
    pub byte: u8,
}

/// What the inspector knows of the last request it judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastRequest {
    pub stream: u32,
    /// `content-type` starts with `application/grpc`.
    pub grpc: bool,
}

/// The state of one HTTP/2 connection's client→server stream.
#[derive(Debug, Clone)]
pub struct H2Inspector {
    limits: H2Limits,
    phase: Phase,
    next_seq: u32,
    denied: Option<L7Reason>,
    finished: bool,
    hdr: [u8; 9],
    hdr_len: usize,
    /// Payload bytes left in the current frame.
    rest: usize,
    /// The frame being read: type, flags, stream.
    frame: (u8, u8, u32),
    /// The header block being collected: raw payloads of HEADERS (padding
    /// and priority stripped when the frame is complete) and CONTINUATION.
    block: Vec<u8>,
    /// Where the current frame's payload starts in `block`.
    frame_at: usize,
    block_stream: u32,
    block_end_stream: bool,
    /// Collecting a block and its END_HEADERS has not come yet.
    in_block: bool,
    continuations: usize,
    /// Highest client stream id opened.
    last_stream: u32,
    requests: u64,
    last: LastRequest,
    decoder: Decoder,
    out: Vec<u8>,
    fields: Vec<Field>,
    head: Vec<u8>,
    /// Sequence number of the current frame's first payload byte.
    payload_seq: u32,
    /// The open block's frames: (offset in `block`, sequence number of
    /// that byte), `block_frames_n` of them.
    block_frames: [(u32, u32); BLOCK_FRAMES],
    block_frames_n: usize,
    /// The open block has more frames than `block_frames` holds.
    block_frames_lost: bool,
    /// The first byte of the segment being fed that was not seen before.
    feed_from: u32,
    /// Bytes rewritten to refuse streams (kept for the connection's life:
    /// a retransmission is rewritten the same way).
    rewrites: [Rewrite; REFUSALS_MAX],
    rewrites_n: usize,
    /// Streams refused in place by the segment being fed, and the last one.
    refused_now: usize,
    last_refused: LastRequest,
}

impl H2Inspector {
    /// Allocates every buffer of one connection once.
    pub fn new(limits: H2Limits) -> Self {
        H2Inspector {
            limits,
            phase: Phase::Preface(0),
            next_seq: 0,
            denied: None,
            finished: false,
            hdr: [0; 9],
            hdr_len: 0,
            rest: 0,
            frame: (0, 0, 0),
            block: vec![0; limits.block_max],
            frame_at: 0,
            block_stream: 0,
            block_end_stream: false,
            in_block: false,
            continuations: 0,
            last_stream: 0,
            requests: 0,
            last: LastRequest::default(),
            decoder: Decoder::new(),
            out: vec![0; limits.head_max],
            fields: vec![Field::default(); limits.fields_max],
            head: vec![0; limits.head_max],
            payload_seq: 0,
            block_frames: [(0, 0); BLOCK_FRAMES],
            block_frames_n: 0,
            block_frames_lost: false,
            feed_from: 0,
            rewrites: [Rewrite::default(); REFUSALS_MAX],
            rewrites_n: 0,
            refused_now: 0,
            last_refused: LastRequest::default(),
        }
    }

    /// Starts a new connection whose first client byte is `first_seq`
    /// (keeps the buffers).
    pub fn start(&mut self, first_seq: u32) {
        self.phase = Phase::Preface(0);
        self.next_seq = first_seq;
        self.denied = None;
        self.finished = false;
        self.hdr_len = 0;
        self.rest = 0;
        self.frame_at = 0;
        self.in_block = false;
        self.continuations = 0;
        self.last_stream = 0;
        self.requests = 0;
        self.last = LastRequest::default();
        self.decoder.reset();
        self.block_frames_n = 0;
        self.block_frames_lost = false;
        self.rewrites_n = 0;
        self.refused_now = 0;
        self.last_refused = LastRequest::default();
    }

    /// Streams refused in place (their `:method` rewritten) by the last
    /// segment fed, and the last of them.
    pub fn refused(&self) -> (usize, LastRequest) {
        (self.refused_now, self.last_refused)
    }

    /// Streams refused in place on this connection so far.
    pub fn refusals(&self) -> &[Rewrite] {
        &self.rewrites[..self.rewrites_n]
    }

    /// The rewrites that fall in a client segment of `len` payload bytes
    /// at `seq`: (offset in the payload, new byte). The caller applies
    /// them to every copy of those bytes it forwards (the first one and
    /// any retransmission) and fixes the checksum.
    pub fn rewrites_in(&self, seq: u32, len: usize) -> impl Iterator<Item = (usize, u8)> + '_ {
        self.refusals().iter().filter_map(move |r| {
            let off = r.seq.wrapping_sub(seq) as usize;
            (off < len).then_some((off, r.byte))
        })
    }

    /// Requests judged (allowed or denied) so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }
    /// The next client byte expected.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }
    pub fn denied(&self) -> Option<L7Reason> {
        self.denied
    }
    /// The client's FIN was accepted between frames.
    pub fn finished(&self) -> bool {
        self.finished
    }
    /// The last request judged (the denied one after a policy deny).
    pub fn last_request(&self) -> LastRequest {
        self.last
    }
    /// The highest client stream id the server was sent.
    pub fn last_stream(&self) -> u32 {
        self.last_stream
    }
    /// Entries and RFC size of the client's HPACK dynamic table.
    pub fn table(&self) -> (usize, usize) {
        self.decoder.table()
    }

    /// Feeds one client→server TCP segment (`fin`: its FIN flag). Bytes
    /// before `next_seq` were judged already (receivers keep the first
    /// copy): all-old segments are `Forward`; a segment after a gap is
    /// `Drop` (TCP resends it). `judge` runs once per request, in order.
    pub fn feed_segment<F>(&mut self, seq: u32, payload: &[u8], fin: bool, mut judge: F) -> Feed
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        self.refused_now = 0;
        if let Some(r) = self.denied {
            return Feed::Deny(r);
        }
        self.feed_from = self.next_seq;
        let ahead = seq.wrapping_sub(self.next_seq) as i32;
        if ahead > 0 {
            return Feed::Drop;
        }
        let skip = ahead.unsigned_abs() as usize;
        if skip >= payload.len() && !(fin && skip == payload.len()) {
            return Feed::Forward;
        }
        if self.finished {
            return if payload.len() > skip {
                Feed::Drop
            } else {
                Feed::Forward
            };
        }
        let new = &payload[skip.min(payload.len())..];
        for &b in new {
            if let Err(r) = self.byte(b, &mut judge) {
                self.denied = Some(r);
                return Feed::Deny(r);
            }
            self.next_seq = self.next_seq.wrapping_add(1);
        }
        if fin {
            if self.phase != Phase::Header || self.hdr_len != 0 || self.in_block {
                // End of stream inside a frame or a header block.
                self.denied = Some(L7Reason::IncompleteHead);
                return Feed::Deny(L7Reason::IncompleteHead);
            }
            self.finished = true;
            self.next_seq = self.next_seq.wrapping_add(1);
        }
        Feed::Forward
    }

    /// The client reset the connection: nothing can follow.
    pub fn abort(&mut self) -> Option<L7Reason> {
        self.finished = true;
        None
    }

    fn byte<F>(&mut self, b: u8, judge: &mut F) -> Result<(), L7Reason>
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        match self.phase {
            Phase::Preface(i) => {
                if PREFACE.get(usize::from(i)) != Some(&b) {
                    return Err(L7Reason::H2Protocol);
                }
                self.phase = if usize::from(i) + 1 == PREFACE.len() {
                    Phase::Header
                } else {
                    Phase::Preface(i + 1)
                };
                Ok(())
            }
            Phase::Header => {
                self.hdr[self.hdr_len] = b;
                self.hdr_len += 1;
                if self.hdr_len == 9 {
                    self.hdr_len = 0;
                    self.frame_header(judge)?;
                }
                Ok(())
            }
            Phase::Skip => {
                self.rest -= 1;
                if self.rest == 0 {
                    self.phase = Phase::Header;
                }
                Ok(())
            }
            Phase::Block => {
                let at = self.block.len().min(self.frame_at + self.collected());
                // frame_at + payload length <= block_max was checked.
                if let Some(slot) = self.block.get_mut(at) {
                    *slot = b;
                }
                self.rest -= 1;
                if self.rest == 0 {
                    self.block_frame_done(judge)?;
                }
                Ok(())
            }
        }
    }

    /// Payload bytes of the current block frame collected so far.
    fn collected(&self) -> usize {
        self.frame_len() - self.rest
    }

    fn frame_len(&self) -> usize {
        (usize::from(self.hdr[0]) << 16)
            | (usize::from(self.hdr[1]) << 8)
            | usize::from(self.hdr[2])
    }

    /// A CONTINUATION may come only while a block is open.
    fn in_block_before(&self) -> bool {
        self.in_block
    }

    /// A complete frame header: check it against the frame rules.
    fn frame_header<F>(&mut self, judge: &mut F) -> Result<(), L7Reason>
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        let len = self.frame_len();
        let (t, fl) = (self.hdr[3], self.hdr[4]);
        let stream =
            u32::from_be_bytes([self.hdr[5], self.hdr[6], self.hdr[7], self.hdr[8]]) & 0x7fff_ffff;
        self.frame = (t, fl, stream);
        // This header's last byte is at next_seq (counted after it).
        self.payload_seq = self.next_seq.wrapping_add(1);
        if len > self.limits.frame_max {
            return Err(L7Reason::H2TooLarge);
        }
        if self.in_block && (t != ty::CONTINUATION || stream != self.block_stream) {
            // Only CONTINUATION of the same stream may follow an open block.
            return Err(L7Reason::H2Protocol);
        }
        let ack = fl & flag::ACK != 0;
        // The frame rules a server checks before acting (RFC 9113 §6).
        let valid = match t {
            ty::HEADERS => !stream.is_multiple_of(2),
            ty::CONTINUATION => self.in_block_before(),
            ty::PUSH_PROMISE => false,
            ty::DATA => stream != 0,
            ty::PRIORITY => stream != 0 && len == 5,
            ty::RST_STREAM => stream != 0 && len == 4,
            ty::WINDOW_UPDATE => len == 4,
            ty::SETTINGS => stream == 0 && len.is_multiple_of(6) && !(ack && len != 0),
            ty::PING => stream == 0 && len == 8,
            ty::GOAWAY => stream == 0 && len >= 8,
            // Unknown types are ignored by receivers (§5.5).
            _ => true,
        };
        if !valid {
            return Err(L7Reason::H2Protocol);
        }
        match t {
            ty::HEADERS => {
                self.in_block = fl & flag::END_HEADERS == 0;
                self.block_stream = stream;
                self.block_end_stream = fl & flag::END_STREAM != 0;
                self.continuations = 0;
                self.frame_at = 0;
                self.block_frames_n = 0;
                self.block_frames_lost = false;
            }
            ty::CONTINUATION => {
                self.continuations += 1;
                if self.continuations > self.limits.continuations_max {
                    return Err(L7Reason::H2TooLarge);
                }
                self.in_block = fl & flag::END_HEADERS == 0;
            }
            _ => {}
        }
        if t == ty::HEADERS || t == ty::CONTINUATION {
            if self.frame_at + len > self.limits.block_max {
                return Err(L7Reason::H2TooLarge);
            }
            self.rest = len;
            if len == 0 {
                return self.block_frame_done(judge);
            }
            self.phase = Phase::Block;
        } else if len > 0 {
            self.rest = len;
            self.phase = Phase::Skip;
        } else {
            self.phase = Phase::Header;
        }
        Ok(())
    }

    /// The last payload byte of a HEADERS or CONTINUATION frame arrived.
    fn block_frame_done<F>(&mut self, judge: &mut F) -> Result<(), L7Reason>
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        self.phase = Phase::Header;
        let (t, fl, _) = self.frame;
        let len = self.frame_len();
        let (mut from, mut to) = (self.frame_at, self.frame_at + len);
        if t == ty::HEADERS {
            if fl & flag::PADDED != 0 {
                if from >= to {
                    return Err(L7Reason::H2Protocol);
                }
                let pad = usize::from(*self.block.get(from).ok_or(L7Reason::H2Protocol)?);
                from += 1;
                if from + pad > to {
                    return Err(L7Reason::H2Protocol);
                }
                to -= pad;
            }
            if fl & flag::PRIORITY != 0 {
                from += 5;
                if from > to {
                    return Err(L7Reason::H2Protocol);
                }
            }
            self.block.copy_within(from..to, self.frame_at);
        }
        // Where this frame's part of the block is in the TCP stream.
        // (A block of more frames than remembered, possible only with
        // `continuations_max` above 16, is never refused in place.)
        match self.block_frames.get_mut(self.block_frames_n) {
            Some(slot) => {
                let skipped = (from - self.frame_at) as u32;
                *slot = (self.frame_at as u32, self.payload_seq.wrapping_add(skipped));
                self.block_frames_n += 1;
            }
            None => self.block_frames_lost = true,
        }
        self.frame_at += to - from;
        if self.in_block {
            return Ok(());
        }
        let block_len = self.frame_at;
        self.frame_at = 0;
        self.header_block(block_len, judge)
    }

    /// A complete header block of `block[..len]`.
    fn header_block<F>(&mut self, len: usize, judge: &mut F) -> Result<(), L7Reason>
    where
        F: FnMut(&RequestHead<'_>) -> L7Verdict,
    {
        let n = self
            .decoder
            .decode(&self.block[..len], &mut self.out, &mut self.fields)
            .map_err(|e| match e {
                HpackError::Invalid => L7Reason::H2Hpack,
                HpackError::TooLarge => L7Reason::H2TooLarge,
            })?;
        let stream = self.block_stream;
        if stream <= self.last_stream {
            // HEADERS on a stream already opened: trailers. They must end
            // the stream and carry no pseudo-header (never a request). A
            // closed stream makes the server reset it.
            if !self.block_end_stream {
                return Err(L7Reason::H2Protocol);
            }
            for f in &self.fields[..n] {
                let name = slice(&self.out, f.name);
                if name.first() == Some(&b':') {
                    return Err(L7Reason::H2Malformed);
                }
                check_field(name, slice(&self.out, f.value))?;
            }
            return Ok(());
        }
        self.last_stream = stream;
        self.requests += 1;
        self.last = LastRequest {
            stream,
            grpc: false,
        };
        let head_len = self.http1_head(n)?;
        let head = parse_head(&self.head[..head_len])?;
        self.last.grpc = head
            .header("content-type")
            .is_some_and(|v| v.starts_with(b"application/grpc"));
        match judge(&head) {
            L7Verdict::Allow => Ok(()),
            L7Verdict::Deny if self.refuse_stream(n, len) => Ok(()),
            L7Verdict::Deny => Err(L7Reason::Policy),
        }
    }

    /// A request of `n` decoded fields in `block[..len]` was denied by
    /// policy: refuse only its stream if its `:method` can be rewritten in
    /// place into a `:status` of the same length with no HPACK table
    /// effect (docs/l7.md, "A denied stream is refused"), in the segment
    /// being fed (not forwarded yet). Not for gRPC calls (they keep the
    /// connection-level PERMISSION_DENIED answer).
    fn refuse_stream(&mut self, n: usize, len: usize) -> bool {
        if self.last.grpc
            || self.block_frames_lost
            || self.rewrites_n >= self.limits.stream_refusals_max.min(REFUSALS_MAX)
        {
            return false;
        }
        let Some(f) = self.fields[..n]
            .iter()
            .find(|f| slice(&self.out, f.name) == b":method")
        else {
            return false;
        };
        let at = f.rep as usize;
        if at >= len {
            return false;
        }
        let Some(byte) = status_for_method(self.block[at]) else {
            return false;
        };
        // The block offset → its sequence number, through the frame that
        // carries it.
        let Some(&(off, seq)) = self.block_frames[..self.block_frames_n]
            .iter()
            .rev()
            .find(|(off, _)| *off as usize <= at)
        else {
            return false;
        };
        let seq = seq.wrapping_add(at as u32 - off);
        // Only a byte of this segment not forwarded before: an earlier
        // segment already reached the server with the method in it.
        if (seq.wrapping_sub(self.feed_from) as i32) < 0
            || (seq.wrapping_sub(self.next_seq) as i32) > 0
        {
            return false;
        }
        self.rewrites[self.rewrites_n] = Rewrite { seq, byte };
        self.rewrites_n += 1;
        self.refused_now += 1;
        self.last_refused = self.last;
        true
    }

    /// Checks the decoded request fields and writes the equivalent HTTP/1.1
    /// head into `self.head`; returns its length.
    fn http1_head(&mut self, n: usize) -> Result<usize, L7Reason> {
        let mut method: Option<&[u8]> = None;
        let mut scheme: Option<&[u8]> = None;
        let mut path: Option<&[u8]> = None;
        let mut authority: Option<&[u8]> = None;
        let mut host = None;
        let mut regular = false;
        for f in &self.fields[..n] {
            let (name, value) = (slice(&self.out, f.name), slice(&self.out, f.value));
            if name.first() == Some(&b':') {
                if regular {
                    return Err(L7Reason::H2Malformed);
                }
                let slot = match name {
                    b":method" => &mut method,
                    b":scheme" => &mut scheme,
                    b":path" => &mut path,
                    b":authority" => &mut authority,
                    // :protocol (extended CONNECT), :status, unknown.
                    _ => return Err(L7Reason::H2Malformed),
                };
                if slot.replace(value).is_some() {
                    return Err(L7Reason::H2Malformed);
                }
                check_value(value)?;
                continue;
            }
            regular = true;
            check_field(name, value)?;
            if name == b"host" && host.replace(value).is_some() {
                return Err(L7Reason::DuplicateHost);
            }
        }
        let (Some(method), Some(_), Some(path)) = (method, scheme, path) else {
            // CONNECT (no :scheme/:path) is not supported either.
            return Err(L7Reason::H2Malformed);
        };
        let host = match (authority, host) {
            (Some(a), Some(h)) if a != h => return Err(L7Reason::HostMismatch),
            (Some(a), _) => a,
            (None, Some(h)) => h,
            (None, None) => return Err(L7Reason::MissingHost),
        };
        let mut w = Writer {
            buf: &mut self.head,
            at: 0,
        };
        w.put(method)?;
        w.put(b" ")?;
        w.put(path)?;
        w.put(b" HTTP/1.1\r\nhost: ")?;
        w.put(host)?;
        w.put(b"\r\n")?;
        for f in &self.fields[..n] {
            let (name, value) = (slice(&self.out, f.name), slice(&self.out, f.value));
            if name.first() == Some(&b':') || name == b"host" {
                continue;
            }
            w.put(name)?;
            w.put(b": ")?;
            w.put(value)?;
            w.put(b"\r\n")?;
        }
        w.put(b"\r\n")?;
        Ok(w.at)
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, s: &[u8]) -> Result<(), L7Reason> {
        let dst = self
            .buf
            .get_mut(self.at..self.at + s.len())
            .ok_or(L7Reason::HeadTooLong)?;
        dst.copy_from_slice(s);
        self.at += s.len();
        Ok(())
    }
}

fn slice(out: &[u8], (at, len): (u32, u32)) -> &[u8] {
    out.get(at as usize..(at + len) as usize)
        .unwrap_or_default()
}

/// A pseudo-header value: no CR, LF, NUL (or other control bytes), no
/// surrounding whitespace (RFC 9113 §8.2.1).
fn check_value(v: &[u8]) -> Result<(), L7Reason> {
    if v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(L7Reason::H2Malformed);
    }
    if matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t')) {
        return Err(L7Reason::H2Malformed);
    }
    Ok(())
}

/// A regular field: a lowercase token name, a clean value, and none of the
/// connection-specific fields HTTP/2 forbids (§8.2.2; `te` only as
/// `trailers`).
fn check_field(name: &[u8], value: &[u8]) -> Result<(), L7Reason> {
    if name.is_empty()
        || !name
            .iter()
            .all(|&b| super::http::is_tchar(b) && !b.is_ascii_uppercase())
    {
        return Err(L7Reason::H2Malformed);
    }
    check_value(value)?;
    match name {
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade" => {
            Err(L7Reason::H2Malformed)
        }
        b"te" if value != b"trailers" => Err(L7Reason::H2Malformed),
        _ => Ok(()),
    }
}

/// The same-length `:status` representation that replaces a `:method` one
/// with no HPACK table effect, or `None` when there is none:
/// - an indexed field in one byte (`1xxxxxxx`, index < 127: static 2 `GET`,
///   3 `POST`, or a dynamic entry) → `0x88` (static 8, `:status: 200`);
/// - a literal without indexing (`0000xxxx`) or never indexed
///   (`0001xxxx`) whose name is static index 2 (`:method`) in the 4-bit
///   prefix → the same kind with name index 8 (`:status`), the value
///   string unchanged.
///
/// A literal with incremental indexing (`01xxxxxx`) adds an entry to the
/// table: rewriting its name would make the server's table differ from the
/// client's encoder (and weir's decoder); a multi-byte index or a literal
/// name cannot be turned into `:status` in the same length.
pub fn status_for_method(b: u8) -> Option<u8> {
    if b & 0x80 != 0 {
        (b != 0xff).then_some(0x88)
    } else if b & 0xe0 == 0 && b & 0x0f == 2 {
        Some((b & 0xf0) | 8)
    } else {
        None
    }
}

/// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0;

/// Writes weir's answer to a denied HTTP/2 request into `out`: an empty
/// SETTINGS frame, a HEADERS frame on the denied stream with END_STREAM — `:status 403` with
/// `x-weir-reason: <reason>`, or for a gRPC call a trailers-only response
/// (`:status 200`, `content-type: application/grpc`, `grpc-status: 7`
/// PERMISSION_DENIED, `grpc-message: weir: <reason>`) — then GOAWAY
/// (NO_ERROR, last stream = the denied one minus 2: the client knows the
/// later streams were not processed and may retry them). Fields are
/// literals without indexing with static names or literal names, so the
/// client's HPACK table is untouched. Returns the length, or `None` when
/// `out` is too small.
///
/// The SETTINGS comes first because the server may not have spoken yet
/// when the request is judged: a client's first frames (preface, SETTINGS,
/// HEADERS) often travel in one segment right after the handshake, before
/// the server has sent its own preface (a server thread that has not run
/// yet). A client must see SETTINGS as the server's first frame (RFC 9113
/// §3.4; nghttp2, so curl, ends the connection otherwise: curl printed
/// "000", the flaky CI failure of tests/tests/l7_h2.rs). An empty SETTINGS
/// is valid at any point of a connection (§6.5), so it is always sent: the
/// answer never depends on whether weir has seen the server's preface.
pub fn deny_reply(req: LastRequest, reason: &str, out: &mut [u8]) -> Option<usize> {
    let mut block = [0u8; 160];
    let mut b = Writer {
        buf: &mut block,
        at: 0,
    };
    let reason = reason.as_bytes().get(..reason.len().min(64))?;
    if req.grpc {
        lit_static(&mut b, 8, b"200")?; // :status
        lit(&mut b, b"content-type", b"application/grpc")?;
        lit(&mut b, b"grpc-status", b"7")?;
        let mut msg = [0u8; 80];
        let mut m = Writer {
            buf: &mut msg,
            at: 0,
        };
        m.put(b"weir: ").ok()?;
        m.put(reason).ok()?;
        let ml = m.at;
        lit(&mut b, b"grpc-message", &msg[..ml])?;
    } else {
        lit_static(&mut b, 8, b"403")?;
        lit(&mut b, b"x-weir-reason", reason)?;
    }
    let bl = b.at;
    let mut w = Writer { buf: out, at: 0 };
    let f = |len: usize, t: u8, fl: u8, s: u32| {
        let l = (len as u32).to_be_bytes();
        let s = s.to_be_bytes();
        [l[1], l[2], l[3], t, fl, s[0], s[1], s[2], s[3]]
    };
    w.put(&f(0, ty::SETTINGS, 0, 0)).ok()?;
    w.put(&f(
        bl,
        ty::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        req.stream,
    ))
    .ok()?;
    w.put(&block[..bl]).ok()?;
    w.put(&f(8, ty::GOAWAY, 0, 0)).ok()?;
    w.put(&req.stream.saturating_sub(2).to_be_bytes()).ok()?;
    w.put(&NO_ERROR.to_be_bytes()).ok()?;
    Some(w.at)
}

/// `0000xxxx`: a literal without indexing, name from static index `idx`.
fn lit_static(w: &mut Writer<'_>, idx: u8, v: &[u8]) -> Option<()> {
    w.put(&[idx]).ok()?;
    w.put(&[u8::try_from(v.len()).ok().filter(|&n| n < 127)?])
        .ok()?;
    w.put(v).ok()
}

/// A literal without indexing with a literal name.
fn lit(w: &mut Writer<'_>, n: &[u8], v: &[u8]) -> Option<()> {
    w.put(&[0, u8::try_from(n.len()).ok().filter(|&l| l < 127)?])
        .ok()?;
    w.put(n).ok()?;
    w.put(&[u8::try_from(v.len()).ok().filter(|&l| l < 127)?])
        .ok()?;
    w.put(v).ok()
}
