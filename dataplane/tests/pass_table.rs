//! Table tests of the whole pass: frame + snapshot → verdict + output bytes.
//! Frames are built with etherparse (the referee), expected checksums are
//! computed independently of `weir_dataplane::wire::checksum`.

use etherparse::{IpHeaders, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::ControlFlow;
use weir_dataplane::pass::{self, process, WorkerState};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

// ------------------------------------------------------------ fixtures ----

const UMEM: usize = 2048;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, p]
}
fn pod4(n: u8) -> [u8; 4] {
    [10, 1, 0, n]
}
fn pod6(n: u16) -> [u8; 16] {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n).octets()
}
const NODE4: [u8; 4] = [10, 0, 0, 10];
fn node6() -> [u8; 16] {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10).octets()
}

/// Pods a, b, c behind ports 0, 1, 2 (c's link has MTU 1400); port 3 has no pod.
fn spec() -> SnapshotSpec {
    let port = |i: u8, mtu| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu,
    };
    let ep = |i: u8, name: &str| Endpoint {
        name: format!("default/{name}"),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: Some(pod4(i + 1).into()),
        ipv6: Some(pod6(u16::from(i) + 1).into()),
    };
    SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some(NODE4.into()),
        node_ipv6: Some(node6().into()),
        ports: vec![port(0, 1500), port(1, 1500), port(2, 1400), port(3, 1500)],
        endpoints: vec![ep(0, "a"), ep(1, "b"), ep(2, "c")],
        ..Default::default()
    }
}

fn snap() -> Snapshot {
    Snapshot::build(spec()).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp(u16, u16),
    Udp(u16, u16),
    Echo(u16, u16),
}

fn frame4(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    df: bool,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let hdr = Ipv4Header {
        source: src,
        destination: dst,
        time_to_live: ttl,
        dont_fragment: df,
        identification: 0x4242,
        ..Default::default()
    };
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ip(IpHeaders::Ipv4(hdr, Default::default()));
    let mut out = Vec::new();
    match l4 {
        L4::Tcp(s, d) => b.tcp(s, d, 1000, 64240).write(&mut out, payload),
        L4::Udp(s, d) => b.udp(s, d).write(&mut out, payload),
        L4::Echo(id, seq) => b.icmpv4_echo_request(id, seq).write(&mut out, payload),
    }
    .unwrap();
    out
}

fn frame6(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    hop: u8,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(src, dst, hop);
    let mut out = Vec::new();
    match l4 {
        L4::Tcp(s, d) => b.tcp(s, d, 1000, 64240).write(&mut out, payload),
        L4::Udp(s, d) => b.udp(s, d).write(&mut out, payload),
        L4::Echo(id, seq) => b.icmpv6_echo_request(id, seq).write(&mut out, payload),
    }
    .unwrap();
    out
}

/// A frame from pod a (port 0) as the pod sends it: to its port's MAC.
fn from_a() -> ([u8; 6], [u8; 6]) {
    (pod_mac(0), port_mac(0))
}

/// Runs the pass with the frame at the start of a UMEM-sized buffer.
fn run(frame: &[u8], ingress: u16) -> (Verdict, Vec<u8>, WorkerState) {
    run_in(frame, ingress, &snap(), UMEM)
}

fn run_in(
    frame: &[u8],
    ingress: u16,
    snap: &Snapshot,
    cap: usize,
) -> (Verdict, Vec<u8>, WorkerState) {
    let mut buf = vec![0u8; cap.max(frame.len())];
    buf[..frame.len()].copy_from_slice(frame);
    let mut st = WorkerState::new();
    let v = process(&mut buf, frame.len(), ingress, snap, &mut st);
    let out = match v {
        Verdict::Tx { len, .. } => buf[..len].to_vec(),
        // No L7 rules in these tables: Hold/Release/L7Deny do not occur.
        _ => Vec::new(),
    };
    (v, out, st)
}

/// Independent one's-complement sum (RFC 1071), folded, over several parts
/// concatenated (each part must be even-length except the last).
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut s: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let hi = bytes[i] as u32;
        let lo = *bytes.get(i + 1).unwrap_or(&0) as u32;
        s += (hi << 8) | lo;
        s = (s & 0xffff) + (s >> 16);
        i += 2;
    }
    s as u16
}

fn ipv4_header_ok(out: &[u8]) -> Ipv4Header {
    let sliced = SlicedPacket::from_ethernet(out).expect("etherparse parses the output");
    let Some(NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not ipv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "IPv4 header checksum"
    );
    h
}

// ------------------------------------------------------------- forward ----

#[test]
fn ipv4_forward_tcp_udp_icmp() {
    for l4 in [L4::Tcp(40000, 80), L4::Udp(5353, 53), L4::Echo(0x77, 3)] {
        for (dst, port) in [(2u8, 1u16), (3, 2)] {
            let input = frame4(from_a(), pod4(1), pod4(dst), 64, true, l4, b"hello weir");
            let (v, out, st) = run(&input, 0);
            let dst_idx = dst - 1;
            let expected = frame4(
                (port_mac(dst_idx), pod_mac(dst_idx)),
                pod4(1),
                pod4(dst),
                63,
                true,
                l4,
                b"hello weir",
            );
            assert_eq!(
                v,
                Verdict::Tx {
                    port,
                    len: input.len()
                },
                "{l4:?}"
            );
            assert_eq!(out, expected, "{l4:?}");
            assert_eq!(ipv4_header_ok(&out).time_to_live, 63);
            assert_eq!(st.icmp_errors_sent(), 0);
        }
    }
}

#[test]
fn ipv6_forward_tcp_udp_icmp() {
    for l4 in [L4::Tcp(40000, 443), L4::Udp(5353, 53), L4::Echo(0x77, 3)] {
        let input = frame6(from_a(), pod6(1), pod6(2), 64, l4, b"hello weir");
        let (v, out, _) = run(&input, 0);
        let expected = frame6(
            (port_mac(1), pod_mac(1)),
            pod6(1),
            pod6(2),
            63,
            l4,
            b"hello weir",
        );
        assert_eq!(
            v,
            Verdict::Tx {
                port: 1,
                len: input.len()
            },
            "{l4:?}"
        );
        assert_eq!(out, expected, "{l4:?}");
    }
}

#[test]
fn hairpin_to_own_port_is_fine() {
    // Pod a talks to its own address: out of its own port, MACs rewritten.
    let input = frame4(from_a(), pod4(1), pod4(1), 64, true, L4::Udp(1, 2), b"x");
    let (v, out, _) = run(&input, 0);
    assert_eq!(
        v,
        Verdict::Tx {
            port: 0,
            len: input.len()
        }
    );
    assert_eq!(&out[..12], &[pod_mac(0), port_mac(0)].concat()[..]);
}

#[test]
fn trailing_padding_is_trimmed() {
    let input = frame4(from_a(), pod4(1), pod4(2), 64, true, L4::Udp(1, 2), b"pad");
    assert!(input.len() < 60);
    let mut padded = input.clone();
    padded.resize(60, 0);
    let (v, out, _) = run(&padded, 0);
    assert_eq!(
        v,
        Verdict::Tx {
            port: 1,
            len: input.len()
        }
    );
    assert_eq!(out.len(), input.len());
    let input6 = frame6(from_a(), pod6(1), pod6(2), 64, L4::Udp(1, 2), b"");
    let mut padded6 = input6.clone();
    padded6.extend_from_slice(&[0; 7]);
    let (v, _, _) = run(&padded6, 0);
    assert_eq!(
        v,
        Verdict::Tx {
            port: 1,
            len: input6.len()
        }
    );
}

#[test]
fn ipv4_options_are_forwarded() {
    let mut input = frame4(from_a(), pod4(1), pod4(2), 64, false, L4::Udp(1, 2), b"opt");
    // Insert 4 bytes of options (NOP NOP NOP EOL) after the 20-byte header.
    input.splice(34..34, [1, 1, 1, 0]);
    input[14] = 0x46;
    let total = u16::from_be_bytes([input[16], input[17]]) + 4;
    input[16..18].copy_from_slice(&total.to_be_bytes());
    input[24..26].copy_from_slice(&[0, 0]);
    let c = !ones_sum(&[&input[14..38]]);
    input[24..26].copy_from_slice(&c.to_be_bytes());
    let (v, out, _) = run(&input, 0);
    assert_eq!(
        v,
        Verdict::Tx {
            port: 1,
            len: input.len()
        }
    );
    let h = ipv4_header_ok(&out);
    assert_eq!(h.time_to_live, 63);
    assert_eq!(h.options.as_slice(), &[1, 1, 1, 0]);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    // hop-by-hop (8 bytes of PadN) then UDP.
    let inner = frame6(from_a(), pod6(1), pod6(2), 64, L4::Udp(1111, 2222), b"ext");
    let mut input = inner.clone();
    input[20] = 0; // next header: hop-by-hop
    input.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
    let plen = u16::from_be_bytes([input[18], input[19]]) + 8;
    input[18..20].copy_from_slice(&plen.to_be_bytes());
    let ControlFlow::Continue(p) = pass::parse(&input) else {
        panic!("parse")
    };
    assert_eq!((p.key.proto, p.key.sport, p.key.dport), (17, 1111, 2222));
    let (v, out, _) = run(&input, 0);
    assert_eq!(
        v,
        Verdict::Tx {
            port: 1,
            len: input.len()
        }
    );
    assert_eq!(out[21], 63);

    // A chain of 9 destination-options headers is beyond the walk.
    let mut long = inner.clone();
    long[20] = 60;
    let mut chain = Vec::new();
    for i in 0..9 {
        chain.extend_from_slice(&[if i == 8 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    long.splice(54..54, chain);
    let plen = u16::from_be_bytes([long[18], long[19]]) + 72;
    long[18..20].copy_from_slice(&plen.to_be_bytes());
    assert_eq!(run(&long, 0).0, Verdict::Drop(DropReason::Ipv6Unsupported));

    // Truncated extension header.
    let mut trunc = inner;
    trunc[20] = 0;
    trunc[54 + 1] = 200; // hop-by-hop claims 1608 bytes
    assert_eq!(run(&trunc, 0).0, Verdict::Drop(DropReason::Ipv6Malformed));
}

#[test]
fn ipv4_fragments_are_forwarded() {
    // A first fragment (MF, UDP header) then a non-first one (offset 24):
    // the non-first carries no ports; it follows its first fragment.
    let mut first = frame4(
        from_a(),
        pod4(1),
        pod4(2),
        64,
        false,
        L4::Udp(1, 2),
        b"0123456789abcdef",
    );
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
    let fix = |f: &mut Vec<u8>| {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !ones_sum(&[&f[14..34]]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    };
    fix(&mut first);
    let mut input = frame4(
        from_a(),
        pod4(1),
        pod4(2),
        64,
        false,
        L4::Udp(1, 2),
        b"frag",
    );
    input[20..22].copy_from_slice(&0x0003u16.to_be_bytes()); // offset 24 bytes
    fix(&mut input);
    let ControlFlow::Continue(p) = pass::parse(&input) else {
        panic!("parse")
    };
    assert_eq!(
        (p.key.sport, p.key.dport, p.fragment),
        (0, 0, pass::Fragment::Later)
    );
    let s = snap();
    let mut st = WorkerState::new();
    let go = |f: &[u8], st: &mut WorkerState| {
        let mut buf = vec![0u8; UMEM];
        buf[..f.len()].copy_from_slice(f);
        process(&mut buf, f.len(), 0, &s, st)
    };
    // Alone (its first never seen) it is dropped.
    assert_eq!(
        go(&input, &mut st),
        Verdict::Drop(DropReason::FragmentNoFirst)
    );
    assert_eq!(
        go(&first, &mut st),
        Verdict::Tx {
            port: 1,
            len: first.len()
        }
    );
    assert_eq!(
        go(&input, &mut st),
        Verdict::Tx {
            port: 1,
            len: input.len()
        }
    );
    // ...and with TTL 1 it is dropped without an ICMP error.
    input[22] = 1;
    fix(&mut input);
    assert_eq!(go(&input, &mut st), Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(st.icmp_errors_sent(), 0);
}

// --------------------------------------------------------------- drops ----

#[test]
fn drop_table() {
    use DropReason::*;
    let udp = L4::Udp(1000, 2000);
    let v4 = |src: [u8; 4], dst: [u8; 4]| frame4(from_a(), src, dst, 64, true, udp, b"x");
    let v6 =
        |src: Ipv6Addr, dst: Ipv6Addr| frame6(from_a(), src.octets(), dst.octets(), 64, udp, b"x");
    let p6 = |n| Ipv6Addr::from(pod6(n));
    let mut vlan = v4(pod4(1), pod4(2));
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let mut arp = v4(pod4(1), pod4(2));
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut bad_version = v4(pod4(1), pod4(2));
    bad_version[14] = 0x55;
    let mut bad_version6 = v6(p6(1), p6(2));
    bad_version6[14] = 0x40;
    let mut bad_udp_len = v4(pod4(1), pod4(2));
    bad_udp_len[38..40].copy_from_slice(&4u16.to_be_bytes());
    let mut bad_tcp_off = frame4(from_a(), pod4(1), pod4(2), 64, true, L4::Tcp(1, 2), b"");
    bad_tcp_off[46] = 0x40;

    let cases: Vec<(&str, Vec<u8>, u16, DropReason)> = vec![
        ("empty", vec![], 0, FrameTooShort),
        ("vlan", vlan, 0, UnsupportedEtherType),
        ("arp", arp, 0, UnsupportedEtherType),
        ("ipv4 version", bad_version, 0, Ipv4Malformed),
        ("ipv6 version", bad_version6, 0, Ipv6Malformed),
        ("udp length < 8", bad_udp_len, 0, L4Truncated),
        ("tcp data offset 4", bad_tcp_off, 0, L4Truncated),
        ("unmanaged port", v4(pod4(1), pod4(2)), 3, UnknownIngress),
        (
            "port out of range",
            v4(pod4(1), pod4(2)),
            99,
            UnknownIngress,
        ),
        (
            "v4 spoofed (b's address from a)",
            v4(pod4(2), pod4(3)),
            0,
            SourceSpoofed,
        ),
        (
            "v4 spoofed (foreign)",
            v4([192, 168, 0, 1], pod4(2)),
            0,
            SourceSpoofed,
        ),
        ("v6 spoofed", v6(p6(2), p6(3)), 0, SourceSpoofed),
        (
            "v6 link-local source",
            v6("fe80::1234".parse().unwrap(), p6(2)),
            0,
            ToNode,
        ),
        ("v4 no route", v4(pod4(1), [10, 9, 9, 9]), 0, NoRoute),
        ("v6 no route", v6(p6(1), p6(99)), 0, NoRoute),
        ("v4 multicast", v4(pod4(1), [224, 0, 0, 5]), 0, Multicast),
        (
            "v4 multicast high",
            v4(pod4(1), [239, 255, 255, 250]),
            0,
            Multicast,
        ),
        (
            "v4 broadcast",
            v4(pod4(1), [255, 255, 255, 255]),
            0,
            Multicast,
        ),
        (
            "v6 multicast",
            v6(p6(1), "ff02::1".parse().unwrap()),
            0,
            Multicast,
        ),
        ("v4 to node", v4(pod4(1), NODE4), 0, ToNode),
        ("v4 to gateway", v4(pod4(1), [169, 254, 1, 1]), 0, ToNode),
        ("v6 to node", v6(p6(1), node6().into()), 0, ToNode),
        (
            "v6 to gateway",
            v6(p6(1), "fe80::1".parse().unwrap()),
            0,
            ToNode,
        ),
    ];
    for (name, frame, ingress, reason) in cases {
        let (v, _, st) = run(&frame, ingress);
        assert_eq!(v, Verdict::Drop(reason), "{name}");
        assert_eq!(st.icmp_errors_sent(), 0, "{name}");
    }
}

#[test]
fn truncated_at_every_length_drops_sensibly() {
    use DropReason::*;
    let frames = [
        frame4(
            from_a(),
            pod4(1),
            pod4(2),
            64,
            true,
            L4::Tcp(1, 2),
            b"payload",
        ),
        frame4(
            from_a(),
            pod4(1),
            pod4(2),
            64,
            true,
            L4::Udp(1, 2),
            b"payload",
        ),
        frame4(
            from_a(),
            pod4(1),
            pod4(2),
            64,
            true,
            L4::Echo(1, 2),
            b"payload",
        ),
        frame6(from_a(), pod6(1), pod6(2), 64, L4::Tcp(1, 2), b"payload"),
        frame6(from_a(), pod6(1), pod6(2), 64, L4::Udp(1, 2), b"payload"),
        frame6(from_a(), pod6(1), pod6(2), 64, L4::Echo(1, 2), b"payload"),
    ];
    for full in &frames {
        for n in 0..full.len() {
            for cap in [n, UMEM] {
                let (v, _, _) = run_in(&full[..n], 0, &snap(), cap);
                let Verdict::Drop(r) = v else {
                    panic!("truncated frame of {n} bytes forwarded: {v:?}")
                };
                let expected: &[DropReason] = if n < 14 {
                    &[FrameTooShort]
                } else if full[12] == 0x08 {
                    &[Ipv4Malformed]
                } else {
                    &[Ipv6Malformed]
                };
                assert!(expected.contains(&r), "{n}: {r:?}");
            }
        }
        // Truncated L4 with a consistent IP length is L4Truncated.
        let mut short = full.clone();
        let is4 = full[12] == 0x08;
        let l3 = if is4 { 20 } else { 40 };
        short.truncate(14 + l3 + 4);
        if is4 {
            short[16..18].copy_from_slice(&((l3 + 4) as u16).to_be_bytes());
            short[24..26].copy_from_slice(&[0, 0]);
            let c = !ones_sum(&[&short[14..34]]);
            short[24..26].copy_from_slice(&c.to_be_bytes());
        } else {
            short[18..20].copy_from_slice(&4u16.to_be_bytes());
        }
        assert_eq!(run(&short, 0).0, Verdict::Drop(L4Truncated));
    }
}

// --------------------------------------------------------- ICMP errors ----

#[test]
fn ipv4_ttl_1_gets_time_exceeded() {
    for ttl in [1, 0] {
        let input = frame4(
            from_a(),
            pod4(1),
            pod4(2),
            ttl,
            true,
            L4::Udp(5000, 53),
            b"query!",
        );
        let (v, out, st) = run(&input, 0);
        let expected_len = 14 + 20 + 8 + 20 + 8;
        assert_eq!(
            v,
            Verdict::Tx {
                port: 0,
                len: expected_len
            }
        );
        assert_eq!(st.icmp_errors_sent(), 1);
        // Ethernet back to the sender, from the ingress port.
        assert_eq!(&out[0..6], &pod_mac(0));
        assert_eq!(&out[6..12], &port_mac(0));
        let h = ipv4_header_ok(&out);
        assert_eq!(h.source, NODE4);
        assert_eq!(h.destination, pod4(1));
        assert_eq!(h.protocol, etherparse::IpNumber::ICMP);
        assert_eq!(usize::from(h.total_len), expected_len - 14);
        let sliced = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
            panic!("not icmp")
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (11, 0));
        assert_eq!(icmp.bytes5to8(), [0; 4]);
        // Quote: original IP header + 8 bytes, as received.
        assert_eq!(icmp.payload(), &input[14..14 + 28]);
        // Checksum, computed independently, and by etherparse.
        let msg = &out[34..];
        assert_eq!(ones_sum(&[msg]), 0xffff);
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
    }
}

#[test]
fn ipv6_hop_limit_1_gets_time_exceeded() {
    let input = frame6(
        from_a(),
        pod6(1),
        pod6(2),
        1,
        L4::Tcp(40000, 80),
        b"segment",
    );
    let (v, out, st) = run(&input, 0);
    let expected_len = 14 + 40 + 8 + (input.len() - 14);
    assert_eq!(
        v,
        Verdict::Tx {
            port: 0,
            len: expected_len
        }
    );
    assert_eq!(st.icmp_errors_sent(), 1);
    assert_eq!(&out[0..12], &[pod_mac(0), port_mac(0)].concat()[..]);
    let sliced = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!("not ipv6")
    };
    assert_eq!(ip.header().source(), node6());
    assert_eq!(ip.header().destination(), pod6(1));
    assert_eq!(ip.header().next_header(), etherparse::IpNumber::IPV6_ICMP);
    let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("not icmpv6")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 0));
    assert_eq!(icmp.payload(), &input[14..]);
    assert!(icmp.is_checksum_valid(node6(), pod6(1)));
    let msg = &out[54..];
    let len = (msg.len() as u32).to_be_bytes();
    assert_eq!(
        ones_sum(&[&node6(), &pod6(1), &len, &[0, 0, 0, 58], msg]),
        0xffff
    );
}

#[test]
fn no_icmp_error_about_icmp_errors() {
    // A Time Exceeded from pod a (answering someone) with TTL 1.
    let mut input = frame4(
        from_a(),
        pod4(1),
        pod4(2),
        1,
        true,
        L4::Echo(0, 0),
        &[0; 28],
    );
    input[34] = 11; // type: time exceeded
    input[36..38].copy_from_slice(&[0, 0]);
    let c = !ones_sum(&[&input[34..]]);
    input[36..38].copy_from_slice(&c.to_be_bytes());
    // It quotes no tracked flow, so conntrack drops it before the hop
    // limit stage; either way no error answers it.
    let (v, _, st) = run(&input, 0);
    assert_eq!(v, Verdict::Drop(DropReason::CtInvalid));
    assert_eq!(st.icmp_errors_sent(), 0);

    let mut input6 = frame6(from_a(), pod6(1), pod6(2), 1, L4::Echo(0, 0), &[0; 48]);
    input6[54] = 1; // ICMPv6 destination unreachable
    let (v, _, st) = run(&input6, 0);
    assert_eq!(v, Verdict::Drop(DropReason::CtInvalid));
    assert_eq!(st.icmp_errors_sent(), 0);

    // Echo requests do get one.
    let echo = frame4(from_a(), pod4(1), pod4(2), 1, true, L4::Echo(1, 1), b"ping");
    assert!(matches!(run(&echo, 0).0, Verdict::Tx { port: 0, .. }));
}

#[test]
fn no_node_address_no_icmp_error() {
    let mut s = spec();
    s.node_ipv4 = None;
    s.node_ipv6 = None;
    let snap = Snapshot::build(s).unwrap();
    let input = frame4(from_a(), pod4(1), pod4(2), 1, true, L4::Udp(1, 2), b"x");
    assert_eq!(
        run_in(&input, 0, &snap, UMEM).0,
        Verdict::Drop(DropReason::TtlExceeded)
    );
    let input6 = frame6(from_a(), pod6(1), pod6(2), 1, L4::Udp(1, 2), b"x");
    assert_eq!(
        run_in(&input6, 0, &snap, UMEM).0,
        Verdict::Drop(DropReason::TtlExceeded)
    );
}

#[test]
fn icmp_error_that_does_not_fit_the_frame_is_a_drop() {
    // 60-byte buffer: the 70-byte ICMP error does not fit.
    let input = frame4(from_a(), pod4(1), pod4(2), 1, true, L4::Udp(1, 2), b"");
    let (v, _, st) = run_in(&input, 0, &snap(), 60);
    assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(st.icmp_errors_sent(), 0);
}

#[test]
fn ipv4_too_big_with_df_gets_frag_needed() {
    // Pod c's link has MTU 1400; a 1450-byte packet with DF.
    let payload = vec![0x5a; 1450 - 20 - 8];
    let input = frame4(
        from_a(),
        pod4(1),
        pod4(3),
        64,
        true,
        L4::Udp(1, 2),
        &payload,
    );
    let (v, out, st) = run(&input, 0);
    assert_eq!(
        v,
        Verdict::Tx {
            port: 0,
            len: 14 + 20 + 8 + 28
        }
    );
    assert_eq!(st.icmp_errors_sent(), 1);
    let h = ipv4_header_ok(&out);
    assert_eq!((h.source, h.destination), (NODE4, pod4(1)));
    let sliced = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!("not icmp")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 4));
    assert_eq!(icmp.bytes5to8(), [0, 0, 0x05, 0x78]); // next-hop MTU 1400
    assert_eq!(icmp.payload(), &input[14..42]);
    assert_eq!(ones_sum(&[&out[34..]]), 0xffff);

    // Exactly the MTU passes.
    let fits = frame4(
        from_a(),
        pod4(1),
        pod4(3),
        64,
        true,
        L4::Udp(1, 2),
        &payload[..1400 - 28],
    );
    assert_eq!(run(&fits, 0).0, Verdict::Tx { port: 2, len: 1414 });

    // Without DF: dropped, no error.
    let no_df = frame4(
        from_a(),
        pod4(1),
        pod4(3),
        64,
        false,
        L4::Udp(1, 2),
        &payload,
    );
    let (v, _, st) = run(&no_df, 0);
    assert_eq!(v, Verdict::Drop(DropReason::TooBig));
    assert_eq!(st.icmp_errors_sent(), 0);
}

#[test]
fn ipv6_too_big_gets_packet_too_big() {
    let payload = vec![0xa5; 1450 - 40 - 8];
    let input = frame6(from_a(), pod6(1), pod6(3), 64, L4::Udp(1, 2), &payload);
    let (v, out, st) = run(&input, 0);
    // The error is capped at the IPv6 minimum MTU.
    assert_eq!(
        v,
        Verdict::Tx {
            port: 0,
            len: 14 + 1280
        }
    );
    assert_eq!(st.icmp_errors_sent(), 1);
    let sliced = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("not icmpv6")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (2, 0));
    assert_eq!(icmp.bytes5to8(), 1400u32.to_be_bytes());
    assert_eq!(icmp.payload(), &input[14..14 + 1232]);
    assert!(icmp.is_checksum_valid(node6(), pod6(1)));
    let msg = &out[54..];
    let len = (msg.len() as u32).to_be_bytes();
    assert_eq!(
        ones_sum(&[&node6(), &pod6(1), &len, &[0, 0, 0, 58], msg]),
        0xffff
    );
}

// ------------------------------------------------------------ proptest ----

fn l4_strategy() -> impl Strategy<Value = L4> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| L4::Tcp(s, d)),
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| L4::Udp(s, d)),
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| L4::Echo(s, d)),
    ]
}

/// A valid frame from pod a (or from a random source) to a random pod.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        0u8..4,
        any::<u8>(),
        any::<bool>(),
        l4_strategy(),
        prop::collection::vec(any::<u8>(), 0..1600),
    )
        .prop_map(|(v6, dst, ttl, df, l4, payload)| {
            if v6 {
                frame6(
                    from_a(),
                    pod6(1),
                    pod6(u16::from(dst) + 1),
                    ttl,
                    l4,
                    &payload,
                )
            } else {
                frame4(from_a(), pod4(1), pod4(dst + 1), ttl, df, l4, &payload)
            }
        })
}

fn check_no_overflow(frame: &[u8], extra: usize, ingress: u16) {
    let snap = snap();
    let mut buf = frame.to_vec();
    buf.resize(frame.len() + extra, 0);
    let mut st = WorkerState::new();
    let v = process(&mut buf, frame.len(), ingress, &snap, &mut st);
    if let Verdict::Tx { port, len } = v {
        assert!(len <= buf.len(), "{v:?}");
        assert!(usize::from(port) < snap.spec.ports.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        extra in 0usize..200,
        ingress in 0u16..5,
    ) {
        check_no_overflow(&bytes, extra, ingress);
    }

    #[test]
    fn arbitrary_len_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..100), len in 0usize..300) {
        let snap = snap();
        let mut buf = bytes;
        let mut st = WorkerState::new();
        if let Verdict::Tx { len, .. } = process(&mut buf, len, 0, &snap, &mut st) {
            prop_assert!(len <= buf.len());
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        frame in valid_frame(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        extra in prop_oneof![Just(0usize), 0usize..2048],
    ) {
        let mut f = frame;
        for (i, b) in mutations {
            let i = i.index(f.len());
            f[i] = b;
        }
        let keep = f.len() - cut.index(f.len() / 4 + 1);
        f.truncate(keep);
        check_no_overflow(&f, extra, 0);
    }

    #[test]
    fn parse_agrees_with_etherparse(frame in valid_frame()) {
        let ControlFlow::Continue(p) = pass::parse(&frame) else {
            return Err(TestCaseError::fail("valid frame did not parse"));
        };
        let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
        let (src, dst, proto): (IpAddr, IpAddr, u8) = match sliced.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => (
                Ipv4Addr::from(ip.header().source()).into(),
                Ipv4Addr::from(ip.header().destination()).into(),
                ip.header().protocol().0,
            ),
            NetSlice::Ipv6(ip) => (
                Ipv6Addr::from(ip.header().source()).into(),
                Ipv6Addr::from(ip.header().destination()).into(),
                ip.payload().ip_number.0,
            ),
        };
        prop_assert_eq!((p.key.src, p.key.dst, p.key.proto), (src, dst, proto));
        prop_assert_eq!(p.frame_len(), frame.len());
        match sliced.transport.unwrap() {
            TransportSlice::Tcp(t) => {
                prop_assert_eq!((p.key.sport, p.key.dport), (t.source_port(), t.destination_port()))
            }
            TransportSlice::Udp(u) => {
                prop_assert_eq!((p.key.sport, p.key.dport), (u.source_port(), u.destination_port()))
            }
            TransportSlice::Icmpv4(i) => {
                let b = i.bytes5to8();
                prop_assert_eq!(p.key.sport, u16::from_be_bytes([b[0], b[1]]));
                prop_assert_eq!(p.key.dport, u16::from_be_bytes([i.type_u8(), i.code_u8()]));
            }
            TransportSlice::Icmpv6(i) => {
                let b = i.bytes5to8();
                prop_assert_eq!(p.key.sport, u16::from_be_bytes([b[0], b[1]]));
                prop_assert_eq!(p.key.dport, u16::from_be_bytes([i.type_u8(), i.code_u8()]));
            }
        }
    }

    #[test]
    fn forwarded_ipv4_header_checksum_stays_valid(frame in valid_frame()) {
        let (v, out, _) = run(&frame, 0);
        if let Verdict::Tx { port, .. } = v {
            if port != 0 && frame[12] == 0x08 {
                let h = ipv4_header_ok(&out);
                prop_assert_eq!(h.time_to_live, frame[22] - 1);
                prop_assert_eq!(ones_sum(&[&out[14..34]]), 0xffff);
            }
        }
    }
}
