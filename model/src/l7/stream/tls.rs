//! The TLS variant of the stream contract: a flow whose L7 set has TLS
//! server-name rules is fed here instead of the HTTP machine. Same slot,
//! same sequence tracking, same head buffers; the "head" is the client's
//! first flight (the ClientHello records, at most `head_max` bytes).
//!
//! - Bytes of an incomplete hello are checked as they arrive
//!   ([`hello_extent`]: record type, version, lengths, the handshake type)
//!   and `Forward`ed (a TLS server does nothing with part of a hello but
//!   wait: it cannot answer before the whole ClientHello), copied into the
//!   buffer to be parsed and to compare retransmissions with.
//! - The segment completing the hello is judged: ECH → `TlsEch`, no name →
//!   `TlsNoSni`, a name no pattern allows → `TlsSniDenied` (`Deny`, the
//!   server gets a RST at the first byte it was not sent), else `Forward`
//!   and every later byte of the connection passes unjudged (encrypted).
//! - A FIN inside the hello → `Deny(TlsMalformed)`; a hello longer than
//!   `head_max` → `Deny(TlsHelloTooLong)`; gaps → `Drop` (retransmitted);
//!   old bytes differing from the kept copy → `Deny(OverlapMismatch)`.
//! - Nothing is ever held.

use super::super::tls::{defragment, hello_extent, parse_client_hello, precheck};
use super::{Feed, HttpInspector, InspectorPool, L7Reason, L7Verdict, SlotId, StreamState};

impl StreamState {
    /// Whether the TLS first flight was judged and allowed: the rest of
    /// the connection passes.
    pub fn tls_allowed(&self) -> bool {
        self.core.requests > 0 && self.denied().is_none()
    }

    /// Feeds one client→server segment of a flow under TLS rules (see the
    /// module docs). `judge` gets the server name once the hello is
    /// complete and valid; `buf[..self.len]` is the kept part of the hello.
    pub(super) fn feed_tls_inner<F>(
        &mut self,
        buf: &mut [u8],
        seq: u32,
        payload: &[u8],
        fin: bool,
        judge: F,
    ) -> Feed
    where
        F: FnOnce(&str) -> L7Verdict,
    {
        if let Some(r) = self.denied() {
            return Feed::Deny(r);
        }
        if payload.is_empty() && !fin {
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
            // Kept bytes are the stream bytes [next - len, next).
            let kept_start = self.next.wrapping_sub(self.len as u32);
            let d = i64::from(seq.wrapping_sub(kept_start) as i32);
            let s_idx = usize::try_from((-d).max(0)).unwrap_or(usize::MAX);
            let b_idx = usize::try_from(d.max(0)).unwrap_or(usize::MAX);
            if s_idx < old_n && !self.tls_allowed() {
                let n = old_n - s_idx;
                let kept = buf
                    .get(..self.len)
                    .and_then(|k| k.get(b_idx..b_idx.saturating_add(n)));
                if kept.is_none() || kept != payload.get(s_idx..old_n) {
                    return Feed::Deny(self.deny(L7Reason::OverlapMismatch));
                }
            }
            if old_n == payload.len() {
                if fin && old != payload.len() {
                    return Feed::Drop;
                }
                if fin && self.len > 0 {
                    return Feed::Deny(self.deny(L7Reason::TlsMalformed));
                }
                self.finished |= fin;
                return Feed::Forward;
            }
            data = &payload[old_n..];
        }
        if self.finished && !data.is_empty() {
            return Feed::Drop;
        }
        if self.tls_allowed() {
            self.next = self.next.wrapping_add(data.len() as u32);
            self.finished |= fin;
            return Feed::Forward;
        }
        let from_seq = self.next;
        let old = self.len;
        let limit = self.core.limits.head_max;
        if old + data.len() > limit {
            return Feed::Deny(self.deny_at(L7Reason::TlsHelloTooLong, from_seq));
        }
        let Some(dst) = buf.get_mut(old..old + data.len()) else {
            return Feed::Deny(self.deny_at(L7Reason::TlsHelloTooLong, from_seq));
        };
        dst.copy_from_slice(data);
        self.next = self.next.wrapping_add(data.len() as u32);
        self.len = old + data.len();
        let end = match hello_extent(&buf[..self.len]) {
            Ok(Some(end)) => end,
            Ok(None) => {
                if fin {
                    return Feed::Deny(self.deny_at(L7Reason::TlsMalformed, from_seq));
                }
                return Feed::Forward;
            }
            Err(r) => return Feed::Deny(self.deny_at(r, from_seq)),
        };
        let hs_len = defragment(buf, end);
        let verdict = parse_client_hello(&buf[..hs_len]).and_then(|h| {
            let sni = precheck(&h)?;
            match judge(sni) {
                L7Verdict::Allow => Ok(()),
                L7Verdict::Deny => Err(L7Reason::TlsSniDenied),
            }
        });
        if let Err(r) = verdict {
            return Feed::Deny(self.deny_at(r, from_seq));
        }
        // Bytes after the hello in the same segment (none from real
        // clients' first flight) pass with it: they are past the judged
        // hello, encrypted or refused by the server.
        self.core.requests = 1;
        self.len = 0;
        self.finished |= fin;
        Feed::Forward
    }
}

impl HttpInspector {
    /// Feeds one client→server segment of a flow under TLS server-name
    /// rules (see [`StreamState::feed_tls_inner`]'s module docs).
    pub fn feed_tls_segment<F>(&mut self, seq: u32, payload: &[u8], fin: bool, judge: F) -> Feed
    where
        F: FnOnce(&str) -> L7Verdict,
    {
        self.st
            .feed_tls_inner(&mut self.buf, seq, payload, fin, judge)
    }

    /// See [`StreamState::tls_allowed`].
    pub fn tls_allowed(&self) -> bool {
        self.st.tls_allowed()
    }
}

impl InspectorPool {
    /// [`HttpInspector::feed_tls_segment`] for flow `id` (`Busy` as for
    /// [`InspectorPool::feed_segment`]; nothing is ever held).
    pub fn feed_tls_segment<F>(
        &mut self,
        id: SlotId,
        seq: u32,
        payload: &[u8],
        fin: bool,
        judge: F,
    ) -> Feed
    where
        F: FnOnce(&str) -> L7Verdict,
    {
        self.feed_with(id, true, |st, buf| {
            st.feed_tls_inner(buf, seq, payload, fin, judge)
        })
    }
}
