//! HTTP/1 inspection on the client→server stream: smuggling and evasion
//! cases (each its own test), segmentation, the hold/release contract, the
//! 403 and RST frames (checked with etherparse), and properties.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use proptest::prelude::*;
use weir_dataplane::l7::reply::{build_403_frame, build_rst_frame, DeniedFlow, TcpEnd};
use weir_dataplane::l7::{
    Feed, HttpInspector, HttpRuleSet, HttpRuleSetSpec, InspectorPool, L7Reason, L7Verdict, Limits,
};

const ISN: u32 = 1000;

/// The paper's scenario: to app1 on TCP 80, only GET on paths under /public.
fn paper_rules() -> HttpRuleSet {
    let spec: HttpRuleSetSpec =
        serde_json::from_str(r#"{"rules":[{"method":"GET","path":{"prefix":"/public"}}]}"#)
            .unwrap();
    HttpRuleSet::compile(&spec).unwrap()
}

/// Feeds segments (offset from ISN, bytes) at t=0 and records every judged
/// request as "METHOD path".
struct Run {
    insp: HttpInspector,
    rules: HttpRuleSet,
    judged: Vec<String>,
}

impl Run {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }
    fn with_limits(l: Limits) -> Self {
        let mut insp = HttpInspector::new(l);
        insp.start(ISN);
        Run {
            insp,
            rules: paper_rules(),
            judged: Vec::new(),
        }
    }
    /// Any method on paths under /public.
    fn any_method() -> Self {
        let mut r = Run::new();
        let spec: HttpRuleSetSpec =
            serde_json::from_str(r#"{"rules":[{"path":{"prefix":"/public"}}]}"#).unwrap();
        r.rules = HttpRuleSet::compile(&spec).unwrap();
        r
    }
    fn feed_at(&mut self, off: u32, bytes: &[u8], now: u64) -> Feed {
        let rules = &self.rules;
        let judged = &mut self.judged;
        self.insp.feed(ISN.wrapping_add(off), bytes, now, |h| {
            judged.push(format!("{} {}", h.method(), h.path()));
            if rules.judge(h).is_some() {
                L7Verdict::Allow
            } else {
                L7Verdict::Deny
            }
        })
    }
    fn feed(&mut self, off: u32, bytes: &[u8]) -> Feed {
        self.feed_at(off, bytes, 0)
    }
    /// Feeds a segment with its TCP flags known (`fin`): the pass's call.
    fn tcp(&mut self, off: u32, bytes: &[u8], fin: bool) -> Feed {
        let rules = &self.rules;
        let judged = &mut self.judged;
        self.insp
            .feed_segment(ISN.wrapping_add(off), bytes, fin, 0, |h| {
                judged.push(format!("{} {}", h.method(), h.path()));
                if rules.judge(h).is_some() {
                    L7Verdict::Allow
                } else {
                    L7Verdict::Deny
                }
            })
    }
    /// A segment without FIN.
    fn seg(&mut self, off: u32, bytes: &[u8]) -> Feed {
        self.tcp(off, bytes, false)
    }
    /// Feeds `s` (stream offset `base`) cut into `n`-byte segments without
    /// FIN; returns every answer.
    fn segs(&mut self, base: u32, s: &[u8], n: usize) -> Vec<Feed> {
        s.chunks(n)
            .enumerate()
            .map(|(k, c)| self.seg(base + (k * n) as u32, c))
            .collect()
    }
    /// The sequence number the RST toward the server would carry.
    fn released(&self) -> u32 {
        self.insp.released_seq().wrapping_sub(ISN)
    }
    /// Feeds the whole stream as one segment.
    fn one(bytes: &[u8]) -> (Feed, Vec<String>) {
        let mut r = Run::new();
        let f = r.feed(0, bytes);
        (f, r.judged)
    }
}

const GET_PUBLIC: &[u8] = b"GET /public/index.html HTTP/1.1\r\nHost: app1\r\n\r\n";

#[test]
fn allowed_get_releases() {
    let (f, judged) = Run::one(GET_PUBLIC);
    assert_eq!(f, Feed::Release);
    assert_eq!(judged, ["GET /public/index.html"]);
}

#[test]
fn denied_get_by_policy() {
    let (f, _) = Run::one(b"GET /private HTTP/1.1\r\nHost: app1\r\n\r\n");
    assert_eq!(f, Feed::Deny(L7Reason::Policy));
    let (f, _) = Run::one(b"POST /public HTTP/1.1\r\nHost: app1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(f, Feed::Deny(L7Reason::Policy));
}

#[test]
fn smuggling_cl_and_te_denied() {
    let (f, judged) = Run::one(
        b"GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(f, Feed::Deny(L7Reason::ContentLengthAndTransferEncoding));
    assert!(judged.is_empty(), "never judged, never passed");
}

#[test]
fn smuggling_duplicate_content_length_denied() {
    let (f, _) = Run::one(
        b"GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n",
    );
    assert_eq!(f, Feed::Deny(L7Reason::DuplicateContentLength));
    // Equal duplicates too: strict.
    let (f, _) = Run::one(
        b"GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(f, Feed::Deny(L7Reason::DuplicateContentLength));
}

#[test]
fn smuggling_transfer_encoding_not_exactly_chunked_denied() {
    for te in ["chunked, identity", "gzip", "xchunked", "chunked\x0b"] {
        let req = format!("GET /public HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: {te}\r\n\r\n");
        let (f, _) = Run::one(req.as_bytes());
        assert!(
            matches!(
                f,
                Feed::Deny(L7Reason::BadTransferEncoding | L7Reason::ControlByte)
            ),
            "{te}: {f:?}"
        );
    }
}

#[test]
fn obs_fold_denied() {
    let (f, _) = Run::one(
        b"GET /public HTTP/1.1\r\nHost: app1\r\nX-A: 1\r\n\tTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(f, Feed::Deny(L7Reason::ObsFold));
}

#[test]
fn bare_lf_denied_before_the_head_ends() {
    let mut r = Run::new();
    // The bare LF is refused as soon as it arrives, head incomplete.
    assert_eq!(
        r.feed(0, b"GET /public HTTP/1.1\n"),
        Feed::Deny(L7Reason::BareLf)
    );
    let (f, _) = Run::one(b"GET /public HTTP/1.1\r\nHost: app1\n\n");
    assert_eq!(f, Feed::Deny(L7Reason::BareLf));
}

#[test]
fn nul_byte_denied() {
    let (f, _) = Run::one(b"GET /public HTTP/1.1\r\nHost: app1\r\nX-A: a\x00b\r\n\r\n");
    assert_eq!(f, Feed::Deny(L7Reason::ControlByte));
    let (f, _) = Run::one(b"GET /public\x00/../admin HTTP/1.1\r\nHost: app1\r\n\r\n");
    assert_eq!(f, Feed::Deny(L7Reason::ControlByte));
}

#[test]
fn whitespace_before_colon_denied() {
    let (f, _) = Run::one(b"GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length : 5\r\n\r\n");
    assert_eq!(f, Feed::Deny(L7Reason::WhitespaceBeforeColon));
}

#[test]
fn overlong_head_denied() {
    let mut r = Run::new();
    let mut off = 0;
    assert_eq!(
        r.feed(off, b"GET /public HTTP/1.1\r\nHost: app1\r\n"),
        Feed::Hold
    );
    off += 34;
    let filler = [b'a'; 1000];
    let mut last = Feed::Hold;
    for _ in 0..9 {
        let mut line = Vec::from(&b"X-Filler: "[..]);
        line.extend_from_slice(&filler[..988]);
        line.extend_from_slice(b"\r\n");
        last = r.feed(off, &line);
        off += line.len() as u32;
        if last != Feed::Hold {
            break;
        }
    }
    assert_eq!(last, Feed::Deny(L7Reason::HeadTooLong));
    assert!(r.judged.is_empty());
    // Sticky.
    assert_eq!(r.feed(off, b"\r\n"), Feed::Deny(L7Reason::HeadTooLong));
}

#[test]
fn overlapping_segment_with_different_bytes_denied() {
    let mut r = Run::new();
    assert_eq!(r.feed(0, b"GET /public/a HTTP/1.1\r\nHo"), Feed::Hold);
    // A "retransmission" of the same sequence range saying something else.
    assert_eq!(
        r.feed(0, b"GET /admin/aa HTTP/1.1\r\nHo"),
        Feed::Deny(L7Reason::OverlapMismatch)
    );
    // Partial overlap that changes an old byte and adds new ones.
    let mut r = Run::new();
    assert_eq!(r.feed(0, b"GET /public/a HTTP/1.1\r\nHo"), Feed::Hold);
    assert_eq!(
        r.feed(19, b"1.0\r\nHost: app1\r\n\r\n"),
        Feed::Deny(L7Reason::OverlapMismatch)
    );
}

#[test]
fn overlap_with_same_bytes_is_fine() {
    let mut r = Run::new();
    assert_eq!(r.feed(0, b"GET /public/a HTTP/1.1\r\nHo"), Feed::Hold);
    // Old bytes equal to the held ones plus new bytes that complete the head.
    assert_eq!(r.feed(19, b"1.1\r\nHost: app1\r\n\r\n"), Feed::Release);
    assert_eq!(r.judged, ["GET /public/a"]);
}

#[test]
fn request_hidden_in_content_length_body_stays_body() {
    let hidden = b"GET /admin HTTP/1.1\r\nHost: app1\r\n\r\n";
    let mut s = format!(
        "GET /public/upload HTTP/1.1\r\nHost: app1\r\nContent-Length: {}\r\n\r\n",
        hidden.len()
    )
    .into_bytes();
    s.extend_from_slice(hidden);
    let (f, judged) = Run::one(&s);
    assert_eq!(f, Feed::Release);
    assert_eq!(judged, ["GET /public/upload"], "the body is not a request");
    // And what follows the body is judged.
    s.extend_from_slice(b"GET /admin HTTP/1.1\r\nHost: app1\r\n\r\n");
    let (f, judged) = Run::one(&s);
    assert_eq!(f, Feed::Deny(L7Reason::Policy));
    assert_eq!(judged, ["GET /public/upload", "GET /admin"]);
}

#[test]
fn request_hidden_in_chunked_body_stays_body() {
    let s = b"GET /public/up HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: chunked\r\n\r\n\
23\r\nGET /admin HTTP/1.1\r\nHost: app1\r\n\r\n\r\n\
0\r\n\r\n";
    let (f, judged) = Run::one(s);
    assert_eq!(f, Feed::Release);
    assert_eq!(judged, ["GET /public/up"]);
}

#[test]
fn chunked_with_extensions_and_trailers_then_next_request_judged() {
    let s = b"GET /public/a HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\n\
A ; x\r\n0123456789\r\n\
0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n\
GET /public/b HTTP/1.1\r\nHost: app1\r\n\r\n\
GET /secret HTTP/1.1\r\nHost: app1\r\n\r\n";
    let (f, judged) = Run::one(s);
    assert_eq!(f, Feed::Deny(L7Reason::Policy));
    assert_eq!(judged, ["GET /public/a", "GET /public/b", "GET /secret"]);
}

#[test]
fn invalid_chunk_framing_denied() {
    let head = "GET /public HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        "5\nhello\r\n0\r\n\r\n",  // bare LF after size
        "5\r\nhelloXX0\r\n\r\n",  // no CRLF after data
        "g\r\n",                  // not hex
        "\r\n",                   // empty size
        "-1\r\n",                 // sign
        "1111111111111111\r\n",   // 16 hex digits: too large
        "5 \r\nhello\r\n",        // whitespace not followed by ';'
        "0\r\nX-T: a\nb\r\n\r\n", // bare LF in trailer
        "0\r\n X-T: a\r\n\r\n",   // folded trailer
        "0\r\nX-T: a\r\n\r\r",    // bad final line
    ] {
        let (f, _) = Run::one(format!("{head}{body}").as_bytes());
        assert_eq!(f, Feed::Deny(L7Reason::BadChunk), "{body:?}");
    }
}

#[test]
fn pipelined_requests_each_judged() {
    let s = b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\n\
GET /public/2 HTTP/1.1\r\nHost: app1\r\n\r\n\
GET /public/3 HTTP/1.1\r\nHost: app1\r\n\r\n";
    let (f, judged) = Run::one(s);
    assert_eq!(f, Feed::Release);
    assert_eq!(judged, ["GET /public/1", "GET /public/2", "GET /public/3"]);
    // One denied request in the pipeline denies the frame carrying it.
    let s = b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\nDELETE /public/1 HTTP/1.1\r\nHost: app1\r\n\r\n";
    let (f, judged) = Run::one(s);
    assert_eq!(f, Feed::Deny(L7Reason::Policy));
    assert_eq!(judged.len(), 2);
}

#[test]
fn pipelined_second_head_incomplete_holds_the_frame() {
    let mut r = Run::new();
    let a = b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\nGET /adm";
    assert_eq!(r.feed(0, a), Feed::Hold);
    assert_eq!(r.insp.released_seq(), ISN, "the whole frame is held");
    assert_eq!(
        r.feed(a.len() as u32, b"in HTTP/1.1\r\nHost: app1\r\n\r\n"),
        Feed::Deny(L7Reason::Policy)
    );
    assert_eq!(r.judged, ["GET /public/1", "GET /admin"]);
    assert_eq!(
        r.insp.released_seq(),
        ISN,
        "the RST starts where the server stopped"
    );
}

#[test]
fn http10_request() {
    let (f, judged) = Run::one(b"GET /public/x HTTP/1.0\r\n\r\n");
    assert_eq!(f, Feed::Release);
    assert_eq!(judged, ["GET /public/x"]);
    let (f, _) = Run::one(b"GET /public/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(f, Feed::Deny(L7Reason::BadTransferEncoding));
}

#[test]
fn http11_without_host_denied() {
    let (f, _) = Run::one(b"GET /public/x HTTP/1.1\r\n\r\n");
    assert_eq!(f, Feed::Deny(L7Reason::MissingHost));
}

#[test]
fn dot_segments_cannot_leave_an_allowed_prefix() {
    for t in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/..;/admin",
        "/public%2f..%2fadmin",
    ] {
        let (f, _) = Run::one(format!("GET {t} HTTP/1.1\r\nHost: app1\r\n\r\n").as_bytes());
        assert_eq!(f, Feed::Deny(L7Reason::PathNotNormal), "{t}");
    }
}

#[test]
fn head_split_into_one_byte_segments() {
    let mut r = Run::new();
    for (i, b) in GET_PUBLIC.iter().enumerate() {
        let f = r.feed(i as u32, &[*b]);
        if i + 1 < GET_PUBLIC.len() {
            assert_eq!(f, Feed::Hold, "byte {i}");
        } else {
            assert_eq!(f, Feed::Release);
        }
    }
    assert_eq!(r.judged, ["GET /public/index.html"]);
}

#[test]
fn too_many_segments_denied() {
    let mut r = Run::with_limits(Limits {
        held_segments_max: 8,
        ..Limits::default()
    });
    let mut last = Feed::Hold;
    for (i, b) in GET_PUBLIC.iter().enumerate().take(20) {
        last = r.feed(i as u32, &[*b]);
        if last != Feed::Hold {
            assert_eq!(i, 8);
            break;
        }
    }
    assert_eq!(last, Feed::Deny(L7Reason::TooManySegments));
}

#[test]
fn reordered_segments_gap_dropped_then_retransmitted() {
    let (a, b) = GET_PUBLIC.split_at(20);
    let mut r = Run::new();
    // The second segment arrives first: dropped, nothing buffered.
    assert_eq!(r.feed(20, b), Feed::Drop);
    assert_eq!(r.feed(0, a), Feed::Hold);
    // The client retransmits the dropped one.
    assert_eq!(r.feed(20, b), Feed::Release);
    assert_eq!(r.judged, ["GET /public/index.html"]);
}

#[test]
fn retransmissions() {
    let (a, b) = GET_PUBLIC.split_at(20);
    let mut r = Run::new();
    assert_eq!(r.feed(0, a), Feed::Hold);
    // A copy of held bytes: dropped (the held copy goes out on release).
    assert_eq!(r.feed(0, a), Feed::Drop);
    assert_eq!(r.feed(5, &a[5..10]), Feed::Drop);
    assert_eq!(r.feed(20, b), Feed::Release);
    // A copy of released bytes: forwarded as is (the server may need it).
    assert_eq!(r.feed(0, GET_PUBLIC), Feed::Forward);
    assert_eq!(r.judged.len(), 1, "judged once");
}

#[test]
fn empty_segments_forward_without_releasing() {
    let mut r = Run::new();
    assert_eq!(r.feed(0, b"GET /pub"), Feed::Hold);
    assert_eq!(r.feed(8, b""), Feed::Forward);
}

#[test]
fn hold_times_out() {
    let mut r = Run::new();
    assert_eq!(r.feed_at(0, b"GET /pub", 10), Feed::Hold);
    let deadline = r.insp.hold_deadline().unwrap();
    assert_eq!(deadline, 10 + Limits::default().hold_ns);
    assert_eq!(r.insp.expire(deadline), None);
    assert_eq!(r.insp.expire(deadline + 1), Some(L7Reason::HoldTimeout));
    assert_eq!(
        r.feed_at(8, b"lic HTTP/1.1\r\n", deadline + 2),
        Feed::Deny(L7Reason::HoldTimeout)
    );
    // Or noticed on the next segment.
    let mut r = Run::new();
    assert_eq!(r.feed_at(0, b"GET /pub", 0), Feed::Hold);
    assert_eq!(
        r.feed_at(8, b"lic HTTP/1.1\r\n", 3_000_000_000),
        Feed::Deny(L7Reason::HoldTimeout)
    );
}

#[test]
fn sequence_numbers_wrap() {
    let mut insp = HttpInspector::new(Limits::default());
    let start = u32::MAX - 10;
    insp.start(start);
    let (a, b) = GET_PUBLIC.split_at(20);
    assert_eq!(insp.feed(start, a, 0, |_| L7Verdict::Allow), Feed::Hold);
    assert_eq!(
        insp.feed(start.wrapping_add(20), b, 0, |_| L7Verdict::Allow),
        Feed::Release
    );
    assert_eq!(insp.next_seq(), start.wrapping_add(GET_PUBLIC.len() as u32));
}

#[test]
fn first_segment_fixes_the_start_without_start_call() {
    let mut insp = HttpInspector::new(Limits::default());
    assert_eq!(
        insp.feed(777, GET_PUBLIC, 0, |_| L7Verdict::Allow),
        Feed::Release
    );
    assert_eq!(insp.requests(), 1);
}

#[test]
fn body_split_across_segments_is_skipped() {
    let mut r = Run::new();
    let head = b"GET /public/p HTTP/1.1\r\nHost: app1\r\nContent-Length: 10\r\n\r\n01234";
    assert_eq!(r.feed(0, head), Feed::Release);
    let mut off = head.len() as u32;
    assert_eq!(r.feed(off, b"56789GET /x HT"), Feed::Hold);
    off += 14;
    assert_eq!(
        r.feed(off, b"TP/1.1\r\nHost: app1\r\n\r\n"),
        Feed::Deny(L7Reason::Policy)
    );
    assert_eq!(r.judged, ["GET /public/p", "GET /x"]);
}

#[test]
fn pool_preallocates_and_reuses() {
    let mut pool = InspectorPool::new(2, Limits::default());
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert!(pool.acquire().is_none(), "full: the pass refuses the flow");
    pool.get(a).unwrap().start(1);
    let f = pool.feed_segment(a, 1, b"GET /x", false, 0, true, |_| L7Verdict::Allow);
    assert_eq!(f, Feed::Forward);
    assert_eq!(pool.buffers_in_use(), 1, "an open head keeps a buffer");
    pool.release(a);
    pool.release(a); // double release: ignored
    assert!(pool.get(a).is_none());
    assert_eq!(pool.in_use(), 1);
    assert_eq!(pool.buffers_in_use(), 0, "released with its flow");
    let c = pool.acquire().unwrap();
    assert_eq!(c, a);
    assert_eq!(pool.get(c).unwrap().requests(), 0);
    assert_eq!(pool.get(c).unwrap().hold_deadline(), None, "reset");
    pool.release(b);
    pool.release(c);
    assert_eq!(pool.in_use(), 0);
}

const GET: &[u8] = b"GET /public/a HTTP/1.1\r\nHost: app1\r\n\r\n";

fn allow_public(h: &weir_dataplane::l7::RequestHead<'_>) -> L7Verdict {
    if h.path().starts_with("/public") {
        L7Verdict::Allow
    } else {
        L7Verdict::Deny
    }
}

/// Heads that arrive whole need no buffer: many flows share few buffers;
/// a head open across segments takes one until it completes.
#[test]
fn pool_lends_head_buffers_only_while_a_head_is_open() {
    let mut pool = InspectorPool::with_buffers(3, 1, Limits::default());
    let ids: Vec<_> = (0..3).map(|_| pool.acquire().unwrap()).collect();
    for &id in &ids {
        pool.get(id).unwrap().start(1);
        let f = pool.feed_segment(id, 1, GET, false, 0, true, allow_public);
        assert_eq!(f, Feed::Release, "whole head: judged at once");
    }
    assert_eq!(pool.buffers_in_use(), 0);
    let next = 1 + GET.len() as u32;
    // Flow 0 opens a head across segments: it takes the only buffer.
    let part = b"GET /public/b HTTP/1.1\r\nHo";
    let f = pool.feed_segment(ids[0], next, part, false, 0, true, allow_public);
    assert_eq!(f, Feed::Forward);
    assert_eq!(pool.buffers_in_use(), 1);
    // Flow 1 would need one too: busy, and its state did not move.
    let f = pool.feed_segment(ids[1], next, b"GET /priv", false, 0, true, allow_public);
    assert_eq!(f, Feed::Busy);
    assert_eq!(pool.get(ids[1]).unwrap().next_seq(), next, "unchanged");
    // A whole head on flow 2 still works without a buffer.
    let f = pool.feed_segment(ids[2], next, GET, false, 0, true, allow_public);
    assert_eq!(f, Feed::Release);
    // Flow 0's head completes from the kept bytes: the buffer goes back.
    let rest = b"st: app1\r\n\r\n";
    let at = next + part.len() as u32;
    let f = pool.feed_segment(ids[0], at, rest, false, 0, true, allow_public);
    assert_eq!(f, Feed::Release);
    assert_eq!(pool.get(ids[0]).unwrap().requests(), 2);
    assert_eq!(pool.buffers_in_use(), 0);
    // The retransmission of flow 1's segment is judged afresh now.
    let f = pool.feed_segment(ids[1], next, b"GET /priv", false, 0, true, allow_public);
    assert_eq!(f, Feed::Forward);
    let f = pool.feed_segment(
        ids[1],
        next + 9,
        b"ate HTTP/1.1\r\nHost: app1\r\n\r\n",
        false,
        0,
        true,
        allow_public,
    );
    assert_eq!(
        f,
        Feed::Deny(L7Reason::Policy),
        "judged from the kept bytes"
    );
    assert_eq!(pool.buffers_in_use(), 0, "a denied flow keeps no buffer");
}

/// A retransmission compared with the kept head goes through the lent
/// buffer too.
#[test]
fn pool_compares_retransmissions_with_the_kept_head() {
    let mut pool = InspectorPool::with_buffers(1, 1, Limits::default());
    let id = pool.acquire().unwrap();
    pool.get(id).unwrap().start(1);
    let f = pool.feed_segment(
        id,
        1,
        b"GET /public/a HTTP/1.1\r\n",
        false,
        0,
        true,
        allow_public,
    );
    assert_eq!(f, Feed::Forward);
    let f = pool.feed_segment(
        id,
        1,
        b"GET /private HTTP/1.1\r\n",
        false,
        0,
        true,
        allow_public,
    );
    assert_eq!(f, Feed::Deny(L7Reason::OverlapMismatch));
}

/// `may_hold: false` (the worker's held-frame budget is spent): the frame
/// that would be held is dropped and nothing moved.
#[test]
fn pool_refuses_a_hold_without_room() {
    let mut pool = InspectorPool::with_buffers(1, 1, Limits::default());
    let id = pool.acquire().unwrap();
    pool.get(id).unwrap().start(1);
    let upto_cr = &GET[..GET.len() - 1];
    let f = pool.feed_segment(id, 1, upto_cr, false, 0, false, allow_public);
    assert_eq!(f, Feed::Busy);
    assert_eq!(pool.get(id).unwrap().next_seq(), 1);
    assert_eq!(pool.buffers_in_use(), 0);
    let f = pool.feed_segment(id, 1, upto_cr, false, 0, true, allow_public);
    assert_eq!(f, Feed::Hold);
    let f = pool.feed_segment(id, GET.len() as u32, b"\n", false, 0, true, allow_public);
    assert_eq!(f, Feed::Release);
}

/// The client's FIN between requests finishes the stream: retransmitted
/// FINs and ACKs are forwarded, new bytes after it are dropped.
#[test]
fn fin_between_requests_finishes_the_stream() {
    let mut i = HttpInspector::new(Limits::default());
    i.start(1);
    assert_eq!(
        i.feed_segment(1, GET, false, 0, allow_public),
        Feed::Release
    );
    assert!(!i.finished());
    let end = 1 + GET.len() as u32;
    assert_eq!(
        i.feed_segment(end, b"", true, 0, allow_public),
        Feed::Forward
    );
    assert!(i.finished());
    assert_eq!(
        i.feed_segment(end, b"", true, 0, allow_public),
        Feed::Forward,
        "again"
    );
    assert_eq!(
        i.feed_segment(end + 1, b"", false, 0, allow_public),
        Feed::Forward
    );
    assert_eq!(
        i.feed_segment(end, b"GET /private", false, 0, allow_public),
        Feed::Drop,
        "no bytes after the FIN"
    );
    assert_eq!(i.requests(), 1);
    // A request and FIN in one segment: judged, then finished.
    let mut i = HttpInspector::new(Limits::default());
    i.start(1);
    assert_eq!(i.feed_segment(1, GET, true, 0, allow_public), Feed::Release);
    assert!(i.finished());
}

/// A RST: between requests nothing is pending; inside a head (forwarded or
/// held bytes) the flow is denied so the server gets weir's exact RST.
#[test]
fn abort_denies_only_an_open_head() {
    let mut i = HttpInspector::new(Limits::default());
    i.start(1);
    assert_eq!(
        i.feed_segment(1, GET, false, 0, allow_public),
        Feed::Release
    );
    assert_eq!(i.abort(), None);
    let mut i = HttpInspector::new(Limits::default());
    i.start(1);
    assert_eq!(
        i.feed_segment(1, b"GET /public", false, 0, allow_public),
        Feed::Forward
    );
    assert_eq!(i.abort(), Some(L7Reason::IncompleteHead));
    assert_eq!(
        i.released_seq(),
        12,
        "the RST comes right after the forwarded bytes"
    );
    let mut i = HttpInspector::new(Limits::default());
    i.start(1);
    let upto_cr = &GET[..GET.len() - 1];
    assert_eq!(
        i.feed_segment(1, upto_cr, false, 0, allow_public),
        Feed::Hold
    );
    assert_eq!(i.abort(), Some(L7Reason::IncompleteHead));
}

/// The per-flow state is small: an idle keep-alive connection costs this,
/// not a head buffer.
#[test]
fn stream_state_is_small() {
    let n = std::mem::size_of::<weir_dataplane::l7::StreamState>();
    assert!(n <= 160, "StreamState is {n} bytes");
}

fn flow(v6: bool) -> DeniedFlow {
    let (c, s) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
        )
    };
    DeniedFlow {
        client: TcpEnd {
            mac: [2, 0, 0, 0, 0, 2],
            ip: c,
            port: 40000,
        },
        server: TcpEnd {
            mac: [2, 0, 0, 0, 0, 3],
            ip: s,
            port: 80,
        },
        client_next_seq: 5000,
        server_expects_seq: 4900,
        server_next_seq: 9000,
    }
}

/// Parses with etherparse and checks both checksums; returns (src port,
/// dst port, seq, ack, fin, psh, rst, ack flag, payload).
fn referee(frame: &[u8]) -> (u16, u16, u32, u32, [bool; 4], Vec<u8>, [u8; 6]) {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses it");
    let Some(TransportHeader::Tcp(tcp)) = h.transport else {
        panic!("not tcp")
    };
    let payload = h.payload.slice().to_vec();
    let sum = match h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 checksum"
            );
            assert_eq!(ip.time_to_live, 64);
            tcp.calc_checksum_ipv4(&ip, &payload).unwrap()
        }
        Some(NetHeaders::Ipv6(ip, _)) => tcp.calc_checksum_ipv6(&ip, &payload).unwrap(),
        _ => panic!("not ip"),
    };
    assert_eq!(tcp.checksum, sum, "TCP checksum");
    let dst_mac: [u8; 6] = frame[0..6].try_into().unwrap();
    (
        tcp.source_port,
        tcp.destination_port,
        tcp.sequence_number,
        tcp.acknowledgment_number,
        [tcp.fin, tcp.psh, tcp.rst, tcp.ack],
        payload,
        dst_mac,
    )
}

#[test]
fn forbidden_frame_toward_client_v4_and_v6() {
    for v6 in [false, true] {
        let f = flow(v6);
        let mut buf = [0xa5u8; 400];
        let n = build_403_frame(&mut buf, &f, "l7-policy").unwrap();
        assert_eq!(buf[n], 0xa5);
        let (sp, dp, seq, ack, fl, payload, dst) = referee(&buf[..n]);
        assert_eq!((sp, dp), (80, 40000));
        assert_eq!((seq, ack), (9000, 5000));
        assert_eq!(fl, [true, true, false, true], "FIN PSH ACK");
        assert_eq!(dst, f.client.mac);
        assert_eq!(
            payload,
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 39\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nAccess denied by weir policy l7-policy\n"
        );
        assert_eq!(build_403_frame(&mut buf[..n - 1], &f, "l7-policy"), None);
    }
}

#[test]
fn rst_frame_toward_server_v4_and_v6() {
    for v6 in [false, true] {
        let f = flow(v6);
        let mut buf = [0xa5u8; 100];
        let n = build_rst_frame(&mut buf, &f).unwrap();
        assert_eq!(n, if v6 { 74 } else { 54 });
        let (sp, dp, seq, ack, fl, payload, dst) = referee(&buf[..n]);
        assert_eq!((sp, dp), (40000, 80));
        assert_eq!((seq, ack), (4900, 9000));
        assert_eq!(fl, [false, false, true, true], "RST ACK");
        assert!(payload.is_empty());
        assert_eq!(dst, f.server.mac);
    }
}

#[test]
fn rst_frame_v4_golden_bytes() {
    let mut buf = [0xa5u8; 54];
    let n = build_rst_frame(&mut buf, &flow(false)).unwrap();
    #[rustfmt::skip]
    let want: [u8; 54] = [
        // Ethernet: dst server, src client, IPv4
        2, 0, 0, 0, 0, 3,  2, 0, 0, 0, 0, 2,  0x08, 0x00,
        // IPv4: 45 00 len=40 id=0 DF ttl=64 tcp csum 10.0.0.2 > 10.0.0.3
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0xcc,
        10, 0, 0, 2,  10, 0, 0, 3,
        // TCP: 40000 > 80 seq=4900 ack=9000 off=5 RST|ACK win=0 csum urg=0
        0x9c, 0x40, 0x00, 0x50,  0x00, 0x00, 0x13, 0x24,  0x00, 0x00, 0x23, 0x28,
        0x50, 0x14, 0x00, 0x00,  0xc8, 0xef, 0x00, 0x00,
    ];
    assert_eq!(&buf[..n], &want[..]);
}

#[test]
fn mixed_ip_versions_refused() {
    let mut f = flow(false);
    f.server.ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut buf = [0u8; 400];
    assert_eq!(build_rst_frame(&mut buf, &f), None);
    assert_eq!(build_403_frame(&mut buf, &f, "x"), None);
}

fn pipeline() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(GET_PUBLIC);
    s.extend_from_slice(b"POST /public/p HTTP/1.1\r\nHost: app1\r\nContent-Length: 5\r\n\r\nhello");
    s.extend_from_slice(
        b"PUT /public/q HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: x\r\n\r\n",
    );
    s.extend_from_slice(b"GET /public/z HTTP/1.0\r\n\r\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes in arbitrary segments at arbitrary sequence numbers
    /// never panic, and a denied inspector stays denied.
    #[test]
    fn arbitrary_segments_never_panic(
        segs in prop::collection::vec((0u32..4096, prop::collection::vec(any::<u8>(), 0..600)), 0..24),
        base in any::<u32>(),
    ) {
        let mut insp = HttpInspector::new(Limits { head_max: 1024, buffer: 2048, ..Limits::default() });
        let mut denied = false;
        for (off, bytes) in &segs {
            let f = insp.feed(base.wrapping_add(*off), bytes, 0, |h| {
                let _ = (h.method(), h.path(), h.host(), h.query(), h.headers().count());
                L7Verdict::Allow
            });
            if denied { prop_assert!(matches!(f, Feed::Deny(_))); }
            denied |= matches!(f, Feed::Deny(_));
        }
    }

    /// Arbitrary mutations of a valid pipeline never panic.
    #[test]
    fn mutated_pipeline_never_panics(flips in prop::collection::vec((0usize..400, any::<u8>()), 0..6), cut in 1usize..64) {
        let mut s = pipeline();
        for (i, b) in flips { if let Some(x) = s.get_mut(i) { *x = b; } }
        let mut insp = HttpInspector::new(Limits::default());
        insp.start(0);
        for (k, chunk) in s.chunks(cut).enumerate() {
            let _ = insp.feed((k * cut) as u32, chunk, 0, |_| L7Verdict::Allow);
        }
    }

    /// However a valid pipeline is cut into segments, the same requests are
    /// judged, in order, and the last segment releases everything.
    #[test]
    fn segmentation_does_not_change_what_is_judged(cuts in prop::collection::btree_set(1usize..300, 0..40)) {
        let s = pipeline();
        let want = {
            let mut r = Run::any_method();
            prop_assert_eq!(r.feed(0, &s), Feed::Release);
            r.judged
        };
        prop_assert_eq!(want.len(), 4);
        let mut r = Run::any_method();
        let mut at = 0usize;
        let mut last = Feed::Hold;
        for c in cuts.iter().copied().filter(|&c| c < s.len()).chain([s.len()]) {
            last = r.feed(at as u32, &s[at..c]);
            prop_assert!(matches!(last, Feed::Hold | Feed::Release), "{:?}", last);
            at = c;
        }
        prop_assert_eq!(last, Feed::Release);
        prop_assert_eq!(r.judged, want);
    }
}

// ---- Incomplete heads are forwarded (`feed_segment`, TCP flags known) ----

const GET_PRIVATE: &[u8] = b"GET /private HTTP/1.1\r\nHost: app1\r\n\r\n";

/// Index of the CR of the empty line that ends the (first) head in `s`.
fn final_cr(s: &[u8]) -> usize {
    s.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2
}

#[test]
fn allowed_head_in_segments_of_any_size_is_forwarded_but_its_end() {
    let cr = final_cr(GET_PUBLIC);
    for n in 1..=GET_PUBLIC.len() {
        let mut r = Run::new();
        let got = r.segs(0, GET_PUBLIC, n);
        let (k_cr, k_lf) = (cr / n, (cr + 1) / n);
        for (k, f) in got.iter().enumerate() {
            let want = if k < k_cr {
                Feed::Forward
            } else if k < k_lf {
                Feed::Hold
            } else {
                Feed::Release
            };
            assert_eq!(*f, want, "{n}-byte segments, segment {k}");
        }
        assert_eq!(r.judged, ["GET /public/index.html"], "{n}");
        assert_eq!(r.insp.hold_deadline(), None, "{n}: nothing left held");
    }
}

#[test]
fn a_long_head_in_one_byte_segments_needs_no_more_than_one_held_frame() {
    // 247 segments: far beyond held_segments_max and any congestion window.
    let head = format!(
        "GET /public/slow HTTP/1.1\r\nHost: app1\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(200)
    );
    let mut r = Run::with_limits(Limits {
        held_segments_max: 1,
        ..Limits::default()
    });
    let got = r.segs(0, head.as_bytes(), 1);
    let holds = got.iter().filter(|f| **f == Feed::Hold).count();
    assert_eq!(holds, 1);
    assert_eq!(got.last(), Some(&Feed::Release));
    assert_eq!(r.judged, ["GET /public/slow"]);
}

#[test]
fn denied_head_in_segments_of_any_size_never_passes_its_end() {
    let cr = final_cr(GET_PRIVATE);
    for n in 1..=GET_PRIVATE.len() {
        let mut r = Run::new();
        let got = r.segs(0, GET_PRIVATE, n);
        let (k_cr, k_lf) = (cr / n, (cr + 1) / n);
        assert_eq!(got[k_lf], Feed::Deny(L7Reason::Policy), "{n}");
        assert!(
            got[..k_cr].iter().all(|f| *f == Feed::Forward),
            "{n}: {got:?}"
        );
        if k_cr < k_lf {
            assert_eq!(got[k_cr], Feed::Hold, "{n}");
        }
        // The server got everything before the segment with the final CR,
        // nothing from it on: the RST starts there.
        assert_eq!(r.released(), (k_cr * n) as u32, "{n}");
        // Retransmissions, of the held final segment too: still denied.
        for (k, c) in GET_PRIVATE.chunks(n).enumerate() {
            assert_eq!(
                r.seg((k * n) as u32, c),
                Feed::Deny(L7Reason::Policy),
                "{n}: retransmitted segment {k}"
            );
        }
        assert_eq!(
            r.tcp(GET_PRIVATE.len() as u32, b"", true),
            Feed::Deny(L7Reason::Policy)
        );
        assert_eq!(r.judged, ["GET /private"], "{n}: judged once");
    }
}

#[test]
fn request_line_is_validated_at_its_cr_before_anything_after_it_passes() {
    // HTTP/0.9: a server would act on the request line alone.
    let mut r = Run::new();
    let got = r.segs(0, b"GET /public\r\n\r\n", 1);
    assert!(got[..11].iter().all(|f| *f == Feed::Forward), "{got:?}");
    assert_eq!(got[11], Feed::Deny(L7Reason::BadRequestLine));
    assert_eq!(r.released(), 11, "the CR never reached the server");
    for (line, reason) in [
        (&b"GET /public HTTP/2.0\r"[..], L7Reason::BadVersion),
        (b"GET /public HTTP/1.1 x\r", L7Reason::BadVersion),
        (b"GET /public/../admin HTTP/1.1\r", L7Reason::PathNotNormal),
        (b"GET /a%2fb HTTP/1.1\r", L7Reason::PathNotNormal),
        (b"CONNECT a:443 HTTP/1.1\r", L7Reason::Unsupported),
        (b"G(T / HTTP/1.1\r", L7Reason::BadMethod),
        (b"\r", L7Reason::BadRequestLine),
        (b"\n", L7Reason::BareLf),
        (b"GET / HTTP/1.1\n", L7Reason::BareLf),
    ] {
        let mut r = Run::new();
        let (body, cr) = line.split_at(line.len() - 1);
        if !body.is_empty() {
            assert_eq!(r.seg(0, body), Feed::Forward);
        }
        assert_eq!(r.seg(body.len() as u32, cr), Feed::Deny(reason), "{line:?}");
        assert_eq!(r.released(), body.len() as u32);
    }
    // A valid request line passes with its CR.
    let mut r = Run::new();
    assert_eq!(r.seg(0, b"GET /public HTTP/1.1\r"), Feed::Forward);
    assert_eq!(r.seg(21, b"\nHost: app1\r\n"), Feed::Forward);
    assert_eq!(r.seg(34, b"\r\n"), Feed::Release);
}

#[test]
fn header_lines_and_bytes_are_checked_as_they_arrive() {
    const LINE: &[u8] = b"GET /public HTTP/1.1\r\n";
    for (tail, forwarded, reason) in [
        (&b"X-A : b\r"[..], 7, L7Reason::WhitespaceBeforeColon),
        (b"NoColon\r", 7, L7Reason::BadHeader),
        (b"X(: b\r", 5, L7Reason::BadHeader),
        (b": b\r", 3, L7Reason::BadHeader),
        (b"Host: app1\r\n folded", 12, L7Reason::ObsFold),
        (b"Host: app1\r\n\tfolded", 12, L7Reason::ObsFold),
        (b"Host: app1\rX", 11, L7Reason::BareCr),
        (b"Host: app1\n", 10, L7Reason::BareLf),
        (b"Host: app1\r\n\n", 12, L7Reason::BareLf),
        (b"Host: app1\r\n\r\r", 13, L7Reason::BareCr),
        (b"X: a\x00", 4, L7Reason::ControlByte),
        (b"X: a\x7f", 4, L7Reason::ControlByte),
    ] {
        let mut r = Run::new();
        assert_eq!(r.seg(0, LINE), Feed::Forward);
        let (a, b) = tail.split_at(forwarded);
        let at = LINE.len() as u32;
        let f = r.seg(at, a);
        assert!(matches!(f, Feed::Forward | Feed::Hold), "{tail:?}: {f:?}");
        assert_eq!(
            r.seg(at + a.len() as u32, b),
            Feed::Deny(reason),
            "{tail:?}"
        );
        assert!(r.judged.is_empty());
    }
}

#[test]
fn retransmission_with_different_earlier_bytes_and_the_final_crlf_denied() {
    let head = b"GET /public/a HTTP/1.1\r\nHost: app1\r\n";
    let evil = b"GET /admin/aa HTTP/1.1\r\nHost: app1\r\n\r\n";
    // Earlier bytes were forwarded, nothing held.
    let mut r = Run::new();
    assert_eq!(r.seg(0, &head[..24]), Feed::Forward);
    assert_eq!(r.seg(24, &head[24..]), Feed::Forward);
    assert_eq!(r.seg(0, evil), Feed::Deny(L7Reason::OverlapMismatch));
    assert_eq!(r.released(), head.len() as u32);
    assert!(r.judged.is_empty());
    // The final CR held, then an overlapping segment with the final LF.
    let mut r = Run::new();
    assert_eq!(r.seg(0, head), Feed::Forward);
    assert_eq!(r.seg(head.len() as u32, b"\r"), Feed::Hold);
    assert_eq!(r.seg(0, evil), Feed::Deny(L7Reason::OverlapMismatch));
    assert_eq!(r.released(), head.len() as u32, "the held CR is dropped");
    assert_eq!(
        r.seg(head.len() as u32, b"\r\n"),
        Feed::Deny(L7Reason::OverlapMismatch)
    );
    // Only the last earlier byte differs.
    let mut r = Run::new();
    assert_eq!(r.seg(0, head), Feed::Forward);
    assert_eq!(r.seg(35, b"X\r\n"), Feed::Deny(L7Reason::OverlapMismatch));
}

#[test]
fn retransmissions_of_forwarded_and_held_head_bytes() {
    let head = b"GET /public/a HTTP/1.1\r\nHost: app1\r\n";
    let mut r = Run::new();
    assert_eq!(r.seg(0, head), Feed::Forward);
    // A copy of forwarded bytes: forwarded (the server may need it).
    assert_eq!(r.seg(0, head), Feed::Forward);
    assert_eq!(r.seg(4, &head[4..10]), Feed::Forward);
    assert_eq!(r.seg(head.len() as u32, b"\r"), Feed::Hold);
    // Copies that include the held CR: dropped (the held copy goes first).
    assert_eq!(r.seg(head.len() as u32, b"\r"), Feed::Drop);
    let mut with_cr = head.to_vec();
    with_cr.push(b'\r');
    assert_eq!(r.seg(0, &with_cr), Feed::Drop);
    // Same earlier bytes plus the final LF: judged, everything released.
    let mut all = with_cr.clone();
    all.push(b'\n');
    assert_eq!(r.seg(0, &all), Feed::Release);
    assert_eq!(r.judged, ["GET /public/a"]);
    assert_eq!(r.seg(0, &all), Feed::Forward, "all released: forwarded");
}

#[test]
fn end_of_head_n_and_start_of_head_n_plus_1_in_one_segment() {
    let one = b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\n";
    let n = one.len() as u32;
    // N allowed, N+1 partial: forwarded; N+1 denied later: the RST starts at
    // the segment that ends N+1.
    let mut r = Run::new();
    assert_eq!(r.seg(0, &one[..30]), Feed::Forward);
    let mut s = one[30..].to_vec();
    s.extend_from_slice(b"GET /priv");
    assert_eq!(r.seg(30, &s), Feed::Forward);
    assert_eq!(
        r.seg(n + 9, b"ate HTTP/1.1\r\nHost: app1\r\n"),
        Feed::Forward
    );
    let at = n + 9 + 26;
    assert_eq!(r.seg(at, b"\r\n"), Feed::Deny(L7Reason::Policy));
    assert_eq!(r.released(), at);
    assert_eq!(r.judged, ["GET /public/1", "GET /private"]);

    // N allowed, N+1 denied up to its final CR in the same segment: held,
    // then dropped with all it carries (N too: over-denial, never a bypass).
    let mut r = Run::new();
    assert_eq!(r.seg(0, &one[..30]), Feed::Forward);
    let mut s = one[30..].to_vec();
    s.extend_from_slice(&GET_PRIVATE[..GET_PRIVATE.len() - 1]);
    assert_eq!(r.seg(30, &s), Feed::Hold);
    assert_eq!(r.released(), 30);
    let end = n + GET_PRIVATE.len() as u32 - 1;
    assert_eq!(r.seg(end, b"\n"), Feed::Deny(L7Reason::Policy));
    assert_eq!(r.released(), 30);

    // Both allowed: held, then released.
    let mut r = Run::new();
    let two = b"GET /public/2 HTTP/1.1\r\nHost: app1\r\n\r\n";
    let mut s = one.to_vec();
    s.extend_from_slice(&two[..two.len() - 1]);
    assert_eq!(r.seg(0, &s), Feed::Hold);
    assert_eq!(r.seg(s.len() as u32, b"\n"), Feed::Release);
    assert_eq!(r.judged, ["GET /public/1", "GET /public/2"]);

    // N denied, N+1 starting in the same segment: all denied.
    let mut r = Run::new();
    let mut s = GET_PRIVATE.to_vec();
    s.extend_from_slice(b"GET /public/3 HT");
    assert_eq!(r.seg(0, &s), Feed::Deny(L7Reason::Policy));
    assert_eq!(r.released(), 0);

    // N's final CR held; its LF arrives with the start of N+1: released.
    let mut r = Run::new();
    assert_eq!(r.seg(0, &one[..one.len() - 1]), Feed::Hold);
    let mut s = b"\n".to_vec();
    s.extend_from_slice(b"GET /public/2 HTTP/1.1\r\n");
    assert_eq!(r.seg(n - 1, &s), Feed::Release);
    assert_eq!(r.seg(n + 24, b"Host: app1\r\n\r\n"), Feed::Release);
    assert_eq!(r.judged, ["GET /public/1", "GET /public/2"]);
}

#[test]
fn head_after_a_body_follows_the_same_rule() {
    let mut r = Run::new();
    let head = b"POST /public/p HTTP/1.1\r\nHost: app1\r\nContent-Length: 10\r\n\r\n01234";
    r.rules = Run::any_method().rules;
    assert_eq!(r.seg(0, head), Feed::Release);
    let mut off = head.len() as u32;
    assert_eq!(r.seg(off, b"56789GET /x HT"), Feed::Forward);
    off += 14;
    assert_eq!(r.seg(off, b"TP/1.1\r\nHost: app1\r\n\r"), Feed::Hold);
    off += 21;
    assert_eq!(r.seg(off, b"\n"), Feed::Deny(L7Reason::Policy));
    assert_eq!(r.released(), off - 21);
    assert_eq!(r.judged, ["POST /public/p", "GET /x"]);
}

#[test]
fn fin_inside_a_head_denies() {
    let head = b"GET /public/a HTTP/1.1\r\nHost: app1\r\n";
    let h = head.len() as u32;
    // Bare FIN after forwarded head bytes: the server would see end of
    // stream inside the head (some servers then serve what they have).
    let mut r = Run::new();
    assert_eq!(r.seg(0, head), Feed::Forward);
    assert_eq!(r.tcp(h, b"", true), Feed::Deny(L7Reason::IncompleteHead));
    assert_eq!(r.released(), h);
    // Data with FIN leaving the head open: that frame is dropped.
    let mut r = Run::new();
    assert_eq!(r.seg(0, b"GET /pub"), Feed::Forward);
    assert_eq!(r.tcp(8, b"lic", true), Feed::Deny(L7Reason::IncompleteHead));
    assert_eq!(r.released(), 8);
    // Only the request line, with FIN (HTTP/0.9-style at end of stream).
    let mut r = Run::new();
    assert_eq!(
        r.tcp(0, b"GET /public", true),
        Feed::Deny(L7Reason::IncompleteHead)
    );
    // FIN while the final CR is held.
    let mut r = Run::new();
    assert_eq!(r.seg(0, head), Feed::Forward);
    assert_eq!(r.seg(h, b"\r"), Feed::Hold);
    assert_eq!(
        r.tcp(h + 1, b"", true),
        Feed::Deny(L7Reason::IncompleteHead)
    );
    assert_eq!(r.released(), h, "the held CR is dropped");
    // A retransmission of forwarded bytes with FIN at the stream end.
    let mut r = Run::new();
    assert_eq!(r.seg(0, head), Feed::Forward);
    assert_eq!(
        r.tcp(4, &head[4..], true),
        Feed::Deny(L7Reason::IncompleteHead)
    );
}

#[test]
fn fin_outside_a_head_passes_and_misplaced_fin_is_dropped() {
    // Data with FIN completing the head: judged, released.
    let mut r = Run::new();
    assert_eq!(r.tcp(0, GET_PUBLIC, true), Feed::Release);
    let end = GET_PUBLIC.len() as u32;
    assert_eq!(r.tcp(end, b"", true), Feed::Forward, "FIN retransmitted");
    assert_eq!(
        r.tcp(0, GET_PUBLIC, true),
        Feed::Forward,
        "all old, at the end"
    );
    // A FIN before the stream end: the server would end the stream early.
    assert_eq!(r.tcp(end - 2, b"", true), Feed::Drop);
    assert_eq!(r.tcp(0, &GET_PUBLIC[..10], true), Feed::Drop);
    // FIN in a body: the head was judged, the body passes.
    let mut r = Run::any_method();
    let head = b"POST /public/p HTTP/1.1\r\nHost: app1\r\nContent-Length: 10\r\n\r\n01234";
    assert_eq!(r.tcp(0, head, true), Feed::Release);
    // A FIN beyond a gap: dropped (the server would buffer it and end the
    // stream once the gap is filled with bytes not judged yet).
    let mut r = Run::new();
    assert_eq!(r.seg(0, b"GET /pub"), Feed::Forward);
    assert_eq!(r.tcp(20, b"", true), Feed::Drop);
    assert_eq!(r.tcp(20, b"x", true), Feed::Drop);
    assert_eq!(
        r.seg(8, b"lic HTTP/1.1\r\nHost: app1\r\n\r\n"),
        Feed::Release
    );
    // A pure ACK (no FIN) inside a head, also while holding: forwarded.
    let mut r = Run::new();
    assert_eq!(r.seg(0, b"GET /pub"), Feed::Forward);
    assert_eq!(r.seg(8, b""), Feed::Forward);
    assert_eq!(r.seg(8, b"lic HTTP/1.1\r\nHost: app1\r\n\r"), Feed::Hold);
    assert_eq!(r.seg(8, b""), Feed::Forward);
    assert_eq!(r.seg(35, b"\n"), Feed::Release);
}

#[test]
fn held_final_cr_times_out() {
    let mut r = Run::new();
    let rules = r.rules.clone();
    let mut judge = |h: &weir_dataplane::l7::RequestHead<'_>| {
        if rules.judge(h).is_some() {
            L7Verdict::Allow
        } else {
            L7Verdict::Deny
        }
    };
    let head = b"GET /public/a HTTP/1.1\r\nHost: app1\r\n\r";
    assert_eq!(
        r.insp.feed_segment(ISN, head, false, 5, &mut judge),
        Feed::Hold
    );
    let deadline = r.insp.hold_deadline().unwrap();
    assert_eq!(deadline, 5 + Limits::default().hold_ns);
    assert_eq!(r.insp.expire(deadline + 1), Some(L7Reason::HoldTimeout));
    assert_eq!(r.released(), 0);
    let next = ISN + head.len() as u32;
    assert_eq!(
        r.insp
            .feed_segment(next, b"\n", false, deadline + 2, &mut judge),
        Feed::Deny(L7Reason::HoldTimeout)
    );
}

#[test]
fn overlong_forwarded_head_denied() {
    let mut r = Run::new();
    let mut off = 0;
    assert_eq!(
        r.seg(off, b"GET /public HTTP/1.1\r\nHost: app1\r\n"),
        Feed::Forward
    );
    off += 34;
    let mut last = Feed::Forward;
    for _ in 0..9 {
        let mut line = b"X-Filler: ".to_vec();
        line.extend_from_slice(&[b'a'; 988]);
        line.extend_from_slice(b"\r\n");
        last = r.seg(off, &line);
        if last != Feed::Forward {
            break;
        }
        off += line.len() as u32;
    }
    assert_eq!(last, Feed::Deny(L7Reason::HeadTooLong));
    assert_eq!(r.released(), off, "the server never got the limit's byte");
    assert!(r.judged.is_empty());
}

/// What the server is sent, following the worker's rules for each answer:
/// (delivered byte ranges in order, denied).
fn server_view(r: &mut Run, segs: &[(u32, Vec<u8>, bool)]) -> (Vec<(u32, u32)>, bool) {
    let mut held: Vec<(u32, u32)> = Vec::new();
    let mut sent = Vec::new();
    for (off, bytes, fin) in segs {
        let range = (*off, *off + bytes.len() as u32);
        match r.tcp(*off, bytes, *fin) {
            Feed::Forward => sent.push(range),
            Feed::Release => {
                sent.append(&mut held);
                sent.push(range);
            }
            Feed::Hold => held.push(range),
            Feed::Drop | Feed::Busy => {}
            Feed::Deny(_) => return (sent, true),
        }
    }
    (sent, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// However a pipeline ending in a denied head is cut, re-sent and
    /// overlapped (with the same bytes), the server is never sent the denied
    /// head's final CR or LF, everything before the denied head that was
    /// judged is the only thing it can act on, and at most one frame is held.
    #[test]
    fn a_denied_heads_end_never_reaches_the_server(
        cuts in prop::collection::btree_set(1usize..330, 0..60),
        dups in prop::collection::vec((any::<prop::sample::Index>(), 0usize..8), 0..10),
    ) {
        let mut s = pipeline();
        let denied_at = s.len();
        s.extend_from_slice(b"DELETE /public/x HTTP/1.1\r\nHost: app1\r\n\r\n");
        let cr = (denied_at + final_cr(&s[denied_at..])) as u32;
        let mut orig = Vec::new();
        let mut at = 0usize;
        for c in cuts.iter().copied().filter(|&c| c < s.len()).chain([s.len()]) {
            orig.push((at, c));
            at = c;
        }
        // Retransmissions of earlier segments (same bytes), some extended
        // backwards into the previous segment, right after the original.
        let mut segs = Vec::new();
        for (k, &(a, b)) in orig.iter().enumerate() {
            segs.push((a as u32, s[a..b].to_vec(), false));
            for (i, back) in &dups {
                if i.index(orig.len()) == k {
                    let start = a.saturating_sub(*back);
                    segs.push((start as u32, s[start..b].to_vec(), false));
                }
            }
        }
        let mut r = Run::new();
        r.rules = HttpRuleSet::compile(
            &serde_json::from_str(r#"{"rules":[{"method":"GET","path":{"prefix":"/public"}},{"method":"POST","path":{"prefix":"/public"}},{"method":"PUT","path":{"prefix":"/public"}}]}"#).unwrap(),
        ).unwrap();
        let (sent, denied) = server_view(&mut r, &segs);
        prop_assert!(denied);
        for (a, b) in &sent {
            prop_assert!(*b <= cr, "sent [{}, {}) past the final CR at {}", a, b, cr);
        }
        prop_assert!(r.insp.released_seq().wrapping_sub(ISN) <= cr);
    }

    /// With flags known, however a valid pipeline is cut, the same requests
    /// are judged, nothing is denied, and a frame is held only when it ends
    /// on a head's final CR (so frames are held back to back only when
    /// consecutive cuts each fall between a head's final CR and LF).
    #[test]
    fn forwarding_segmentation_judges_the_same(cuts in prop::collection::btree_set(1usize..300, 0..80)) {
        let s = pipeline();
        let mut r = Run::any_method();
        let mut at = 0usize;
        let mut held = 0;
        let mut last = Feed::Hold;
        for c in cuts.iter().copied().filter(|&c| c < s.len()).chain([s.len()]) {
            last = r.seg(at as u32, &s[at..c]);
            match last {
                Feed::Hold => held += 1,
                Feed::Release => held = 0,
                Feed::Forward => prop_assert_eq!(held, 0),
                other => prop_assert!(false, "{:?}", other),
            }
            if last == Feed::Hold {
                prop_assert_eq!(s[c - 1], b'\r', "held a frame not ending on a final CR");
            }
            at = c;
        }
        prop_assert_eq!(last, Feed::Release);
        prop_assert_eq!(r.judged.len(), 4);
    }
}
