//! The service stage through the whole pass: frames to a ClusterIP are sent
//! to a backend (Maglev), replies come back from the ClusterIP, flows keep
//! their backend, hairpin, and frontends without endpoints are refused
//! (RST / ICMP port unreachable, counted). Output frames are checked with
//! etherparse, checksums recomputed by it.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use weir_dataplane::pass::{process, WorkerState, HAIRPIN_V4};
use weir_dataplane::snapshot::{ServiceBackend, ServiceFrontend};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const UMEM: usize = 2048;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, p]
}
fn pod4(n: u8) -> IpAddr {
    IpAddr::from([10, 1, 0, n])
}
fn pod6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n))
}
fn vip4() -> IpAddr {
    "10.96.0.10".parse().unwrap()
}
fn vip6() -> IpAddr {
    "fd00:96::a".parse().unwrap()
}

fn backend(i: u8, v6: bool) -> ServiceBackend {
    ServiceBackend {
        pod: format!("default/{}", ["a", "b", "c"][usize::from(i)]),
        ip: if v6 {
            pod6(u16::from(i) + 1)
        } else {
            pod4(i + 1)
        },
        port: 8080,
        active: true,
    }
}

fn front(ip: IpAddr, proto: u8, port: u16, backends: Vec<ServiceBackend>) -> ServiceFrontend {
    ServiceFrontend {
        service: "default/web".into(),
        port_name: None,
        ip,
        proto,
        port,
        backends,
        affinity_timeout_s: None,
        node_port: None,
        external_local: false,
        internal_local: false,
        external: false,
    }
}

/// Pods a, b, c behind ports 0, 1, 2; frontends given.
fn snap(services: Vec<ServiceFrontend>) -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu: 1500,
    };
    let ep = |i: u8, name: &str| Endpoint {
        name: format!("default/{name}"),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: match pod4(i + 1) {
            IpAddr::V4(a) => Some(a),
            _ => None,
        },
        ipv6: match pod6(u16::from(i) + 1) {
            IpAddr::V6(a) => Some(a),
            _ => None,
        },
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some([10, 0, 0, 10].into()),
        node_ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10)),
        ports: vec![port(0), port(1), port(2)],
        endpoints: vec![ep(0, "a"), ep(1, "b"), ep(2, "c")],
        services,
        ..Default::default()
    })
    .unwrap()
}

fn frame(
    from: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    tcp: Option<(bool, bool)>,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(pod_mac(from), port_mac(from));
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!(),
    };
    let mut out = Vec::new();
    match tcp {
        Some((syn, ack)) => {
            let mut t = b.tcp(sport, dport, 1000, 65535);
            if syn {
                t = t.syn();
            }
            if ack {
                t = t.ack(5000);
            }
            t.write(&mut out, b"").unwrap();
        }
        None => b.udp(sport, dport).write(&mut out, b"ping").unwrap(),
    }
    out
}

struct Out {
    verdict: Verdict,
    bytes: Vec<u8>,
}

fn run(st: &mut WorkerState, snap: &Snapshot, f: &[u8], ingress: u16) -> Out {
    let mut buf = vec![0u8; UMEM];
    buf[..f.len()].copy_from_slice(f);
    let verdict = process(&mut buf, f.len(), ingress, snap, st);
    let len = match verdict {
        Verdict::Tx { len, .. } => len,
        _ => 0,
    };
    buf.truncate(len);
    Out {
        verdict,
        bytes: buf,
    }
}

/// (src, dst, sport, dport) of a TCP/UDP frame whose checksums etherparse
/// recomputed and found right.
fn addrs(bytes: &[u8]) -> (IpAddr, IpAddr, u16, u16) {
    let p = SlicedPacket::from_ethernet(bytes).unwrap();
    let (src, dst, ph_ok): (IpAddr, IpAddr, _) = match p.net.as_ref().unwrap() {
        NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.calc_header_checksum(),
                h.header_checksum,
                "IPv4 header checksum"
            );
            (IpAddr::from(h.source), IpAddr::from(h.destination), Some(h))
        }
        NetSlice::Ipv6(ip) => (
            IpAddr::from(ip.header().source()),
            IpAddr::from(ip.header().destination()),
            None,
        ),
    };
    let v6h = match p.net.as_ref().unwrap() {
        NetSlice::Ipv6(ip) => Some(ip.header().to_header()),
        _ => None,
    };
    match p.transport.as_ref().unwrap() {
        TransportSlice::Tcp(t) => {
            let h = t.to_header();
            let c = match (&ph_ok, &v6h) {
                (Some(v4), _) => h.calc_checksum_ipv4(v4, t.payload()).unwrap(),
                (_, Some(v6)) => h.calc_checksum_ipv6(v6, t.payload()).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(c, h.checksum, "TCP checksum");
            (src, dst, h.source_port, h.destination_port)
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let c = match (&ph_ok, &v6h) {
                (Some(v4), _) => h.calc_checksum_ipv4(v4, u.payload()).unwrap(),
                (_, Some(v6)) => h.calc_checksum_ipv6(v6, u.payload()).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(c, h.checksum, "UDP checksum");
            (src, dst, h.source_port, h.destination_port)
        }
        _ => panic!("not TCP/UDP"),
    }
}

#[test]
fn dnat_spread_reverse_nat_v4_v6_tcp_udp() {
    for v6 in [false, true] {
        let (vip, client) = if v6 {
            (vip6(), pod6(1))
        } else {
            (vip4(), pod4(1))
        };
        let s = snap(vec![
            front(vip, 6, 80, vec![backend(1, v6), backend(2, v6)]),
            front(vip, 17, 53, vec![backend(1, v6), backend(2, v6)]),
        ]);
        for tcp in [true, false] {
            let mut st = WorkerState::new();
            let mut per_port: HashMap<u16, usize> = HashMap::new();
            let dport = if tcp { 80 } else { 53 };
            for sport in 20000..20300u16 {
                let syn = tcp.then_some((true, false));
                let out = run(&mut st, &s, &frame(0, client, vip, sport, dport, syn), 0);
                let Verdict::Tx { port, .. } = out.verdict else {
                    panic!("{:?}", out.verdict)
                };
                *per_port.entry(port).or_default() += 1;
                let (src, dst, sp, dp) = addrs(&out.bytes);
                let b = backend(port as u8, v6);
                assert_eq!((src, dst, sp, dp), (client, b.ip, sport, 8080));
                // The reply from that backend comes back from the ClusterIP.
                let reply = frame(
                    port as u8,
                    b.ip,
                    client,
                    8080,
                    sport,
                    tcp.then_some((true, true)),
                );
                let out = run(&mut st, &s, &reply, port);
                assert!(
                    matches!(out.verdict, Verdict::Tx { port: 0, .. }),
                    "{:?}",
                    out.verdict
                );
                assert_eq!(addrs(&out.bytes), (vip, client, dport, sport));
                // The next packet of the flow keeps its backend.
                let again = run(
                    &mut st,
                    &s,
                    &frame(0, client, vip, sport, dport, tcp.then_some((false, true))),
                    0,
                );
                assert!(
                    matches!(again.verdict, Verdict::Tx { port: p, .. } if p == port),
                    "{:?}",
                    again.verdict
                );
            }
            // 300 flows over 2 backends: binomial(300, 1/2) has sd 8.7;
            // 100..200 is more than 5 sd either side.
            for (p, n) in &per_port {
                assert!(
                    (100..=200).contains(n),
                    "v6={v6} tcp={tcp} port {p}: {n} flows"
                );
            }
        }
    }
}

#[test]
fn established_flows_keep_their_backend_when_the_set_changes() {
    let before = snap(vec![front(
        vip4(),
        6,
        80,
        vec![backend(1, false), backend(2, false)],
    )]);
    let mut st = WorkerState::new();
    let mut chosen = Vec::new();
    for sport in 30000..30100u16 {
        let out = run(
            &mut st,
            &before,
            &frame(0, pod4(1), vip4(), sport, 80, Some((true, false))),
            0,
        );
        let Verdict::Tx { port, .. } = out.verdict else {
            panic!()
        };
        chosen.push(port);
        let b = backend(port as u8, false);
        let reply = frame(port as u8, b.ip, pod4(1), 8080, sport, Some((true, true)));
        assert!(matches!(
            run(&mut st, &before, &reply, port).verdict,
            Verdict::Tx { port: 0, .. }
        ));
    }
    // Backend c (port 2) goes away; b's flows stay, c's move to b.
    let after = snap(vec![front(vip4(), 6, 80, vec![backend(1, false)])]);
    for (i, sport) in (30000..30100u16).enumerate() {
        let out = run(
            &mut st,
            &after,
            &frame(0, pod4(1), vip4(), sport, 80, Some((false, true))),
            0,
        );
        match out.verdict {
            Verdict::Tx { port, .. } => assert_eq!(port, 1, "flow {i}"),
            // A flow of the removed backend may end (no SYN: conntrack
            // sees a mid-stream packet to a new peer).
            Verdict::Drop(r) => assert_eq!(chosen[i], 2, "flow {i} of b dropped: {r:?}"),
            v => panic!("{v:?}"),
        }
    }
}

#[test]
fn no_endpoints_refused_and_counted() {
    let s = snap(vec![
        front(vip4(), 6, 80, vec![]),
        front(vip4(), 17, 53, vec![]),
        front(vip6(), 17, 53, vec![]),
    ]);
    let mut st = WorkerState::new();
    // TCP: RST|ACK from the ClusterIP.
    let out = run(
        &mut st,
        &s,
        &frame(0, pod4(1), vip4(), 40000, 80, Some((true, false))),
        0,
    );
    assert!(
        matches!(out.verdict, Verdict::Tx { port: 0, .. }),
        "{:?}",
        out.verdict
    );
    assert_eq!(st.take_reply_drop(), Some(DropReason::ServiceNoEndpoints));
    let p = SlicedPacket::from_ethernet(&out.bytes).unwrap();
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("no TCP")
    };
    assert!(t.rst() && t.ack());
    assert_eq!(t.acknowledgment_number(), 1001);
    assert_eq!(addrs(&out.bytes), (vip4(), pod4(1), 80, 40000));
    // A port the ClusterIP does not serve: refused the same way.
    let out = run(
        &mut st,
        &s,
        &frame(0, pod4(1), vip4(), 40000, 81, Some((true, false))),
        0,
    );
    assert!(matches!(out.verdict, Verdict::Tx { port: 0, .. }));
    assert_eq!(st.take_reply_drop(), Some(DropReason::ServiceNoEndpoints));
    // UDP: ICMP port unreachable, v4 and v6.
    for (client, vip, icmp_type, code) in [(pod4(1), vip4(), 3u8, 3u8), (pod6(1), vip6(), 1, 4)] {
        let out = run(&mut st, &s, &frame(0, client, vip, 40000, 53, None), 0);
        assert!(
            matches!(out.verdict, Verdict::Tx { port: 0, .. }),
            "{:?}",
            out.verdict
        );
        assert_eq!(st.take_reply_drop(), Some(DropReason::ServiceNoEndpoints));
        let p = SlicedPacket::from_ethernet(&out.bytes).unwrap();
        let (t, c) = match p.transport.unwrap() {
            TransportSlice::Icmpv4(i) => (i.type_u8(), i.code_u8()),
            TransportSlice::Icmpv6(i) => (i.type_u8(), i.code_u8()),
            _ => panic!("not ICMP"),
        };
        assert_eq!((t, c), (icmp_type, code));
    }
}

#[test]
fn hairpin_rewrites_the_source_and_back() {
    // b is the only backend; b connects to its own Service.
    let s = snap(vec![front(vip4(), 6, 80, vec![backend(1, false)])]);
    let mut st = WorkerState::new();
    let out = run(
        &mut st,
        &s,
        &frame(1, pod4(2), vip4(), 41000, 80, Some((true, false))),
        1,
    );
    assert!(
        matches!(out.verdict, Verdict::Tx { port: 1, .. }),
        "{:?}",
        out.verdict
    );
    assert_eq!(
        addrs(&out.bytes),
        (IpAddr::V4(HAIRPIN_V4), pod4(2), 41000, 8080)
    );
    let reply = frame(
        1,
        pod4(2),
        IpAddr::V4(HAIRPIN_V4),
        8080,
        41000,
        Some((true, true)),
    );
    let out = run(&mut st, &s, &reply, 1);
    assert!(
        matches!(out.verdict, Verdict::Tx { port: 1, .. }),
        "{:?}",
        out.verdict
    );
    assert_eq!(addrs(&out.bytes), (vip4(), pod4(2), 80, 41000));
}

#[test]
fn affinity_pins_a_client() {
    let mut f = front(vip4(), 6, 80, vec![backend(1, false), backend(2, false)]);
    f.affinity_timeout_s = Some(60);
    let s = snap(vec![f]);
    let mut st = WorkerState::new();
    let mut ports = std::collections::BTreeSet::new();
    for sport in 50000..50050u16 {
        let out = run(
            &mut st,
            &s,
            &frame(0, pod4(1), vip4(), sport, 80, Some((true, false))),
            0,
        );
        let Verdict::Tx { port, .. } = out.verdict else {
            panic!()
        };
        ports.insert(port);
    }
    assert_eq!(ports.len(), 1, "{ports:?}");
}

/// A client that reuses its port for a connection straight to the backend
/// (after its Service flow with that port closed) gets that backend's
/// SYN-ACK as the backend sent it, not rewritten to the ClusterIP: its SYN
/// ends the old flow's reverse entry.
#[test]
fn a_direct_connection_reusing_a_service_flows_port_is_not_reverse_natted() {
    let (vip, client) = (vip4(), pod4(1));
    let s = snap(vec![front(vip, 6, 80, vec![backend(1, false)])]);
    let mut st = WorkerState::new();
    let b = backend(1, false);
    let out = run(
        &mut st,
        &s,
        &frame(0, client, vip, 30000, 80, Some((true, false))),
        0,
    );
    assert!(
        matches!(out.verdict, Verdict::Tx { port: 1, .. }),
        "{:?}",
        out.verdict
    );
    let synack = frame(1, b.ip, client, 8080, 30000, Some((true, true)));
    let out = run(&mut st, &s, &synack, 1);
    assert_eq!(addrs(&out.bytes), (vip, client, 80, 30000));
    // The same client port, straight to the backend.
    let out = run(
        &mut st,
        &s,
        &frame(0, client, b.ip, 30000, 8080, Some((true, false))),
        0,
    );
    assert!(
        matches!(out.verdict, Verdict::Tx { port: 1, .. }),
        "{:?}",
        out.verdict
    );
    assert_eq!(addrs(&out.bytes), (client, b.ip, 30000, 8080));
    let out = run(&mut st, &s, &synack, 1);
    assert!(
        matches!(out.verdict, Verdict::Tx { port: 0, .. }),
        "{:?}",
        out.verdict
    );
    assert_eq!(addrs(&out.bytes), (b.ip, client, 8080, 30000));
}

/// A UDP datagram with TTL/hop limit `ttl`, as an IP packet (no Ethernet).
fn udp_ip(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), ttl),
        _ => unreachable!(),
    };
    let mut out = Vec::new();
    b.udp(sport, dport).write(&mut out, b"ping").unwrap();
    out
}

/// An ICMP (v4: port unreachable; v6: packet too big) error frame from
/// `src` to `dst` quoting `quote`.
fn icmp_err(macs: ([u8; 6], [u8; 6]), src: IpAddr, dst: IpAddr, ttl: u8, quote: &[u8]) -> Vec<u8> {
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type};
    let b = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b
            .ipv4(s.octets(), d.octets(), ttl)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::Port,
            ))
            .write(&mut out, quote)
            .unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => b
            .ipv6(s.octets(), d.octets(), ttl)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, quote)
            .unwrap(),
        _ => unreachable!(),
    }
    out
}

/// A backend's ICMP error about a Service flow reaches the client from
/// the ClusterIP, quoting what the client sent (client → ClusterIP:port):
/// byte for byte as etherparse builds it (outer addresses, quoted
/// addresses and port, quoted IPv4 and UDP checksums, ICMP/ICMPv6
/// checksum), IPv4 port unreachable and IPv6 packet too big.
#[test]
fn a_backends_icmp_error_reaches_the_client_from_the_cluster_ip() {
    for v6 in [false, true] {
        let (vip, client, b) = if v6 {
            (vip6(), pod6(1), pod6(2))
        } else {
            (vip4(), pod4(1), pod4(2))
        };
        let s = snap(vec![front(vip, 17, 53, vec![backend(1, v6)])]);
        let mut st = WorkerState::new();
        let out = run(&mut st, &s, &frame(0, client, vip, 40000, 53, None), 0);
        assert!(
            matches!(out.verdict, Verdict::Tx { port: 1, .. }),
            "{:?}",
            out.verdict
        );
        assert_eq!(addrs(&out.bytes), (client, b, 40000, 8080));
        // b's kernel answers with an error quoting the datagram it got.
        let err = icmp_err((pod_mac(1), port_mac(1)), b, client, 64, &out.bytes[14..]);
        let back = run(&mut st, &s, &err, 1);
        assert!(
            matches!(back.verdict, Verdict::Tx { port: 0, .. }),
            "v6={v6}: {:?}",
            back.verdict
        );
        let as_sent = udp_ip(client, vip, 40000, 53, 63);
        assert_eq!(
            back.bytes,
            icmp_err((port_mac(0), pod_mac(0)), vip, client, 63, &as_sent),
            "v6={v6}"
        );
        // An error quoting a flow weir never translated stays as it is
        // (and without a tracked flow, is refused as before).
        let stray = udp_ip(client, b, 40001, 8080, 63);
        let err = icmp_err((pod_mac(1), port_mac(1)), b, client, 64, &stray);
        assert_eq!(
            run(&mut st, &s, &err, 1).verdict,
            Verdict::Drop(DropReason::CtInvalid)
        );
    }
}

/// An Ethernet + IPv4 frame cut into fragments of at most `mtu` IP bytes.
fn fragment(frame: &[u8], mtu: usize, ident: u16) -> Vec<Vec<u8>> {
    use etherparse::{IpFragOffset, Ipv4Header};
    let (h, payload) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let chunk = (mtu - h.header_len()) / 8 * 8;
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let end = (at + chunk).min(payload.len());
        let mut f = h.clone();
        f.identification = ident;
        f.dont_fragment = false;
        f.more_fragments = end < payload.len();
        f.fragment_offset = IpFragOffset::try_new((at / 8) as u16).unwrap();
        f.set_payload_len(end - at).unwrap();
        f.header_checksum = f.calc_header_checksum();
        let mut v = frame[..14].to_vec();
        v.extend_from_slice(&f.to_bytes());
        v.extend_from_slice(&payload[at..end]);
        out.push(v);
        at = end;
    }
    out
}

/// Reassembles IPv4 fragments (checking each header checksum and the
/// addresses): the datagram's IP payload.
fn reassemble(frags: &[Vec<u8>], src: IpAddr, dst: IpAddr) -> Vec<u8> {
    use etherparse::Ipv4Header;
    let mut data = Vec::new();
    for f in frags {
        let (h, payload) = Ipv4Header::from_slice(&f[14..]).unwrap();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert_eq!(
            (IpAddr::from(h.source), IpAddr::from(h.destination)),
            (src, dst)
        );
        let off = usize::from(h.fragment_offset.value()) * 8;
        data.resize(data.len().max(off + payload.len()), 0);
        data[off..off + payload.len()].copy_from_slice(payload);
    }
    data
}

fn big_udp(
    macs: ([u8; 6], [u8; 6]),
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    ttl: u8,
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        unreachable!()
    };
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(s.octets(), d.octets(), ttl)
        .udp(ports.0, ports.1)
        .write(&mut out, &data)
        .unwrap();
    out
}

/// A UDP datagram larger than the MTU through a ClusterIP: its later
/// fragments (addressed to the ClusterIP, without ports) follow the first
/// one to its backend, and the backend's fragmented reply comes back from
/// the ClusterIP; reassembled, each end gets exactly etherparse's datagram.
#[test]
fn fragments_through_a_cluster_ip_follow_their_first() {
    let (vip, client, b) = (vip4(), pod4(1), pod4(2));
    let s = snap(vec![front(vip, 17, 53, vec![backend(1, false)])]);
    let mut st = WorkerState::new();
    let whole = big_udp((pod_mac(0), port_mac(0)), client, vip, (40000, 53), 64);
    let mut got = Vec::new();
    for f in fragment(&whole, 1400, 0x4242) {
        let out = run(&mut st, &s, &f, 0);
        assert!(
            matches!(out.verdict, Verdict::Tx { port: 1, .. }),
            "{:?}",
            out.verdict
        );
        got.push(out.bytes);
    }
    assert_eq!(got.len(), 3);
    let expect = big_udp((port_mac(1), pod_mac(1)), client, b, (40000, 8080), 63);
    assert_eq!(reassemble(&got, client, b), expect[34..].to_vec());
    // The reply, as big.
    let reply = big_udp((pod_mac(1), port_mac(1)), b, client, (8080, 40000), 64);
    let mut got = Vec::new();
    for f in fragment(&reply, 1400, 0x0707) {
        let out = run(&mut st, &s, &f, 1);
        assert!(
            matches!(out.verdict, Verdict::Tx { port: 0, .. }),
            "{:?}",
            out.verdict
        );
        got.push(out.bytes);
    }
    let expect = big_udp((port_mac(0), pod_mac(0)), vip, client, (53, 40000), 63);
    assert_eq!(reassemble(&got, vip, client), expect[34..].to_vec());
}

/// Later packets of an established flow take the worker's fast path
/// (`pass/service_cache.rs`: the translation and its checksum sums
/// remembered): they leave with the same bytes as the packet that took the
/// full stage (checksums checked by etherparse), TCP and UDP, v4 and v6,
/// and hairpin (the client its own backend).
#[test]
fn established_packets_leave_as_the_full_stage_sends_them() {
    for v6 in [false, true] {
        let (vip, client) = if v6 {
            (vip6(), pod6(1))
        } else {
            (vip4(), pod4(1))
        };
        for tcp in [false, true] {
            let proto = if tcp { 6 } else { 17 };
            // b alone, then a alone (a is the client: hairpin).
            for hairpin in [false, true] {
                let b = if hairpin { 0 } else { 1 };
                let s = snap(vec![front(vip, proto, 80, vec![backend(b, v6)])]);
                let mut st = WorkerState::new();
                let sport = 41000;
                let seg = tcp.then_some((false, true));
                if tcp {
                    // The handshake, with the backend's SYN-ACK to the
                    // address it saw (the client or the hairpin one).
                    let syn = frame(0, client, vip, sport, 80, Some((true, false)));
                    let out = run(&mut st, &s, &syn, 0);
                    assert!(matches!(out.verdict, Verdict::Tx { .. }));
                    let (seen, ..) = addrs(&out.bytes);
                    let bip = backend(b, v6).ip;
                    let synack = frame(b, bip, seen, 8080, sport, Some((true, true)));
                    assert!(matches!(
                        run(&mut st, &s, &synack, u16::from(b)).verdict,
                        Verdict::Tx { port: 0, .. }
                    ));
                }
                let f = frame(0, client, vip, sport, 80, seg);
                let first = run(&mut st, &s, &f, 0);
                assert_eq!(
                    first.verdict,
                    Verdict::Tx {
                        port: u16::from(b),
                        len: first.bytes.len()
                    },
                    "v6={v6} tcp={tcp} hairpin={hairpin}"
                );
                let (src, dst, sp, dp) = addrs(&first.bytes);
                assert_eq!((dst, sp, dp), (backend(b, v6).ip, sport, 8080));
                if hairpin && !v6 {
                    assert_eq!(src, IpAddr::V4(HAIRPIN_V4));
                }
                for _ in 0..3 {
                    let again = run(&mut st, &s, &f, 0);
                    assert_eq!(again.verdict, first.verdict);
                    assert_eq!(
                        again.bytes, first.bytes,
                        "v6={v6} tcp={tcp} hairpin={hairpin}"
                    );
                }
            }
        }
    }
}

/// The fast path remembers a translation per snapshot: a new snapshot
/// (same generation number, as a rebuilt one may have) that removes a
/// backend sends that backend's established flows through the full stage,
/// which picks again; one that drains it (terminating) keeps them there.
#[test]
fn fast_path_follows_backend_removal_and_draining() {
    let both = || vec![backend(1, false), backend(2, false)];
    let before = snap(vec![front(vip4(), 17, 80, both())]);
    let mut st = WorkerState::new();
    let mut chosen = Vec::new();
    for sport in 30000..30100u16 {
        let f = frame(0, pod4(1), vip4(), sport, 80, None);
        // Twice: the second packet takes the fast path.
        let port = run(&mut st, &before, &f, 0).verdict;
        assert_eq!(run(&mut st, &before, &f, 0).verdict, port);
        let Verdict::Tx { port, .. } = port else {
            panic!("{port:?}")
        };
        chosen.push(port);
    }
    assert!(chosen.contains(&1) && chosen.contains(&2), "{chosen:?}");
    // c (port 2) drained: its flows stay on it.
    let mut drained = both();
    drained[1].active = false;
    let drained = snap(vec![front(vip4(), 17, 80, drained)]);
    for (i, sport) in (30000..30100u16).enumerate() {
        let f = frame(0, pod4(1), vip4(), sport, 80, None);
        for _ in 0..2 {
            match run(&mut st, &drained, &f, 0).verdict {
                Verdict::Tx { port, .. } => assert_eq!(port, chosen[i], "flow {i}"),
                v => panic!("{v:?}"),
            }
        }
    }
    // c removed: every flow goes to b now.
    let after = snap(vec![front(vip4(), 17, 80, vec![backend(1, false)])]);
    for (i, sport) in (30000..30100u16).enumerate() {
        let f = frame(0, pod4(1), vip4(), sport, 80, None);
        for _ in 0..2 {
            match run(&mut st, &after, &f, 0).verdict {
                Verdict::Tx { port, .. } => assert_eq!(port, 1, "flow {i}"),
                v => panic!("{v:?}"),
            }
        }
    }
}

/// A client that uses one source port toward two ClusterIPs sharing a
/// backend: the second flow's reply tuple (backend → client:port) is the
/// first's, so the backend would take both for one connection (a SYN
/// meeting the other's TIME_WAIT is refused) and replies would go back
/// from the wrong ClusterIP. The second flow leaves with a port of the
/// SNAT range instead (as Linux's NAT remaps a clashing source port), its
/// packets keep it, its replies come back to the client's own port from
/// its own ClusterIP, and the first flow is untouched. The same ClusterIP
/// again (the client reusing its own tuple) keeps the port.
#[test]
fn a_client_port_used_toward_two_cluster_ips_is_remapped_not_merged() {
    for (v6, tcp) in [(false, true), (true, true), (false, false), (true, false)] {
        let (vip_a, client) = if v6 {
            (vip6(), pod6(1))
        } else {
            (vip4(), pod4(1))
        };
        let vip_b: IpAddr = if v6 {
            "fd00:96::b".parse().unwrap()
        } else {
            "10.96.0.11".parse().unwrap()
        };
        let proto = if tcp { 6 } else { 17 };
        let s = snap(vec![
            front(vip_a, proto, 80, vec![backend(1, v6)]),
            front(vip_b, proto, 80, vec![backend(1, v6)]),
        ]);
        let mut st = WorkerState::new();
        let b = backend(1, v6).ip;
        let syn = if tcp { Some((true, false)) } else { None };
        let ack = if tcp { Some((false, true)) } else { None };
        let reply_flags = if tcp { Some((true, true)) } else { None };
        let case = format!("v6={v6} tcp={tcp}");
        // Flow A: client:30000 → vip_a:80 → b:8080, port kept.
        let out = run(&mut st, &s, &frame(0, client, vip_a, 30000, 80, syn), 0);
        assert_eq!(addrs(&out.bytes), (client, b, 30000, 8080), "{case}");
        // Flow B: the same client port → vip_b:80: remapped.
        let out = run(&mut st, &s, &frame(0, client, vip_b, 30000, 80, syn), 0);
        let (src, dst, p, dport) = addrs(&out.bytes);
        assert_eq!((src, dst, dport), (client, b, 8080), "{case}");
        assert!((61000..=65535).contains(&p), "{case}: remapped to {p}");
        assert_eq!(st.nat_port_remaps(), 1, "{case}: the remap is counted");
        // B's reply: from vip_b:80 to the client's own port.
        let out = run(&mut st, &s, &frame(1, b, client, 8080, p, reply_flags), 1);
        assert!(
            matches!(out.verdict, Verdict::Tx { port: 0, .. }),
            "{case}: {:?}",
            out.verdict
        );
        assert_eq!(addrs(&out.bytes), (vip_b, client, 80, 30000), "{case}");
        // B's later packets keep the remapped port.
        for _ in 0..3 {
            let out = run(&mut st, &s, &frame(0, client, vip_b, 30000, 80, ack), 0);
            assert_eq!(addrs(&out.bytes), (client, b, p, 8080), "{case}");
        }
        // A's reply: still from vip_a:80.
        let out = run(
            &mut st,
            &s,
            &frame(1, b, client, 8080, 30000, reply_flags),
            1,
        );
        assert_eq!(addrs(&out.bytes), (vip_a, client, 80, 30000), "{case}");
        // A's own tuple again (the client reusing it): not remapped.
        let out = run(&mut st, &s, &frame(0, client, vip_a, 30000, 80, syn), 0);
        assert_eq!(addrs(&out.bytes), (client, b, 30000, 8080), "{case}");
        // A third ClusterIP flow on another client port: untouched.
        let out = run(&mut st, &s, &frame(0, client, vip_b, 30001, 80, syn), 0);
        assert_eq!(addrs(&out.bytes), (client, b, 30001, 8080), "{case}");
        // Only B's first packet was a remap.
        assert_eq!(st.nat_port_remaps(), 1, "{case}");
        if tcp {
            continue;
        }
        // The backend's ICMP error about B quotes client:p → b:8080; the
        // client gets it from vip_b quoting what it sent (client:30000 →
        // vip_b:80), byte for byte as etherparse builds it.
        let quote = udp_ip(client, b, p, 8080, 63);
        let err = icmp_err((pod_mac(1), port_mac(1)), b, client, 64, &quote);
        let back = run(&mut st, &s, &err, 1);
        assert!(
            matches!(back.verdict, Verdict::Tx { port: 0, .. }),
            "{case}: {:?}",
            back.verdict
        );
        let as_sent = udp_ip(client, vip_b, 30000, 80, 63);
        assert_eq!(
            back.bytes,
            icmp_err((port_mac(0), pod_mac(0)), vip_b, client, 63, &as_sent),
            "{case}"
        );
    }
}
