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
    pool.get(a)
        .unwrap()
        .feed(1, b"GET /x", 0, |_| L7Verdict::Allow);
    pool.release(a);
    pool.release(a); // double release: ignored
    assert!(pool.get(a).is_none());
    assert_eq!(pool.in_use(), 1);
    let c = pool.acquire().unwrap();
    assert_eq!(c, a);
    assert_eq!(pool.get(c).unwrap().requests(), 0);
    assert_eq!(pool.get(c).unwrap().hold_deadline(), None, "reset");
    pool.release(b);
    pool.release(c);
    assert_eq!(pool.in_use(), 0);
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
