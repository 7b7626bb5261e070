//! DNS rules and FQDN egress through `process`: a query on a flow admitted
//! by an egress rule carrying a DNS rule set passes unchanged when its name
//! is allowed, else weir answers REFUSED itself; an allowed answer teaches
//! the node's learned table, which admits new flows of the client's
//! `toFQDNs` rule to the answered address until the TTL runs out.
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use weir_dataplane::flows::FlowEvent;
use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, FqdnRuleSpec, PolicySpec, RuleId, RuleInfo,
    Tier, IDENTITY_WORLD,
};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const C: [u8; 4] = [10, 1, 0, 1]; // client, egress-restricted
const D: [u8; 4] = [10, 1, 0, 2]; // DNS server (UDP 53)
const W: [u8; 4] = [10, 1, 0, 3]; // web, answered for allowed.example
const O: [u8; 4] = [10, 1, 0, 4]; // other, never answered
const SEC: u64 = 1_000_000_000;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0, 0, 0, 0, p]
}

fn rule(index: usize) -> RuleInfo {
    RuleInfo {
        tier: Tier::Namespace,
        kind: "weirpolicies".into(),
        namespace: Some("demo".into()),
        name: "client".into(),
        direction: Direction::Egress,
        index,
        action: "Allow".into(),
        priority: None,
    }
}

/// Client egress: UDP and TCP 53 to D with DNS rules (set 0); TCP 80 to what
/// `allowed.example` resolved to (toFQDNs); everything else implicit deny.
fn snap() -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu: 1500,
    };
    let ep = |i: u8, name: &str, a: [u8; 4]| Endpoint {
        name: name.into(),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: Some(a.into()),
        ipv6: None,
    };
    let deny = Decision::deny(RuleId::IMPLICIT_DENY);
    let dns_allow = Decision {
        dns: Some(0),
        ..Decision::allow(RuleId(0))
    };
    let policy = PolicySpec {
        generation: 1,
        rules: vec![rule(0), rule(1)],
        classes: vec![IDENTITY_WORLD, 256, 257, 258, 259],
        addresses: vec![(C.into(), 4), (D.into(), 1), (W.into(), 2), (O.into(), 3)],
        world_class: 0,
        cells: vec![
            CellSpec::uniform(deny),
            CellSpec {
                other: deny,
                tcp: vec![(0, deny), (53, dns_allow), (54, deny)],
                udp: vec![(0, deny), (53, dns_allow), (54, deny)],
                sctp: vec![(0, deny)],
            },
        ],
        tables: vec![vec![0, 1, 0, 0, 0]],
        endpoints: vec![
            EndpointTables {
                ingress: None,
                egress: Some(0),
            },
            EndpointTables::default(),
            EndpointTables::default(),
            EndpointTables::default(),
        ],
        dns: vec![vec!["*.allowed.example".into(), "allowed.example".into()]],
        fqdn_selectors: vec!["allowed.example".into()],
        fqdn_egress: vec![(
            0,
            vec![FqdnRuleSpec {
                selector: 0,
                rule: RuleId(1),
                proto: 6,
                first: 80,
                last: 80,
            }],
        )],
        ..Default::default()
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some([10, 0, 0, 10].into()),
        node_ipv6: None,
        ports: vec![port(0), port(1), port(2), port(3)],
        endpoints: vec![
            ep(0, "client", C),
            ep(1, "dns", D),
            ep(2, "web", W),
            ep(3, "other", O),
        ],
        policy,
        tunnel: None,
        services: Vec::new(),
        host: None,
        uplink: None,
    })
    .unwrap()
}

fn qname(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in name.split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend(qname(name));
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

/// A response for `name` → `addr` with `ttl`.
fn response(id: u16, name: &str, addr: [u8; 4], ttl: u32) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    m.extend(qname(name));
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    m.extend_from_slice(&ttl.to_be_bytes());
    m.extend_from_slice(&[0, 4]);
    m.extend_from_slice(&addr);
    m
}

fn udp(from: u8, src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(from), port_mac(from))
        .ipv4(src, dst, 64)
        .udp(sp, dp)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn syn(dst: [u8; 4], dp: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
        .ipv4(C, dst, 64)
        .tcp(40000, dp, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn run(frame: &[u8], s: &Snapshot, st: &mut WorkerState) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let ingress = u16::from(frame[6 + 5]);
    let v = process(&mut buf, frame.len(), ingress, s, st);
    let n = match v {
        Verdict::Tx { len, .. } => len,
        _ => 0,
    };
    (v, buf[..n].to_vec())
}

fn events(st: &WorkerState) -> Vec<FlowEvent> {
    let mut v = Vec::new();
    st.flows().drain(&mut v);
    v
}

fn udp_of(frame: &[u8]) -> (Vec<u8>, u16, u16, [u8; 4], [u8; 4]) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let (src, dst) = match p.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => (ip.header().source(), ip.header().destination()),
        _ => panic!("not IPv4"),
    };
    match p.transport {
        Some(TransportSlice::Udp(u)) => (
            u.payload().to_vec(),
            u.source_port(),
            u.destination_port(),
            src,
            dst,
        ),
        _ => panic!("not UDP"),
    }
}

#[test]
fn allowed_query_passes_unchanged() {
    let s = snap();
    let mut st = WorkerState::new();
    for name in [
        "allowed.example",
        "www.allowed.example",
        "WWW.Allowed.Example",
    ] {
        let q = query(7, name);
        let (v, out) = run(&udp(0, C, D, 5353, 53, &q), &s, &mut st);
        assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{name}: {v:?}");
        assert_eq!(udp_of(&out).0, q);
    }
    assert_eq!(st.dns_refused(), 0);
}

#[test]
fn denied_query_gets_refused_from_weir() {
    let s = snap();
    let mut st = WorkerState::new();
    for (i, name) in ["blocked.example", "a.b.allowed.example", "xallowed.example"]
        .into_iter()
        .enumerate()
    {
        let q = query(0x4242, name);
        let frame = udp(0, C, D, 5353, 53, &q);
        let (v, out) = run(&frame, &s, &mut st);
        assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{name}: {v:?}");
        // Back to the client, from the server's address and port.
        assert_eq!(&out[0..6], &pod_mac(0));
        assert_eq!(&out[6..12], &port_mac(0));
        let (msg, sp, dp, src, dst) = udp_of(&out);
        assert_eq!((sp, dp, src, dst), (53, 5353, D, C));
        // id, QR=1 RD=1 RCODE=5, one question, no records, same question.
        let mut want = vec![0x42, 0x42, 0x81, 0x05, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend(qname(name));
        want.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(msg, want);
        // Checksums verified by etherparse's strict parse.
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).unwrap();
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
        let u = etherparse::UdpHeaderSlice::from_slice(&out[34..]).unwrap();
        assert_eq!(
            u.checksum(),
            u.to_header()
                .calc_checksum_ipv4(&ip.to_header(), &msg)
                .unwrap()
        );
        assert_eq!(st.dns_refused(), i as u64 + 1);
    }
    let ev = events(&st);
    let refused: Vec<_> = ev
        .iter()
        .filter(|e| e.reason == Some(DropReason::DnsRefused))
        .collect();
    assert_eq!(refused.len(), 3);
    let note = refused[0].l7.unwrap();
    assert_eq!(note.path(), "blocked.example");
    assert_eq!(note.reason.as_str(), "dns-refused");
    // Not a query at all: dropped.
    let (v, _) = run(&udp(0, C, D, 5353, 53, b"junk"), &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::DnsMalformed));
}

#[test]
fn answer_teaches_the_table_and_ttl_expires() {
    let s = snap();
    let mut st = WorkerState::new();
    st.set_now(100 * SEC);
    // Before any answer: web on 80 is denied.
    let (v, _) = run(&syn(W, 80), &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    let (v, _) = run(
        &udp(0, C, D, 5353, 53, &query(1, "allowed.example")),
        &s,
        &mut st,
    );
    assert!(matches!(v, Verdict::Tx { port: 1, .. }));
    let resp = response(1, "allowed.example", W, 30);
    let (v, out) = run(&udp(1, D, C, 53, 5353, &resp), &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(udp_of(&out).0, resp);
    assert_eq!(st.fqdn().entries().len(), 1);
    // The allowed query and its answer (rcode 0) are flow records (kind
    // `l7`): name, and the answer's direction.
    let l7: Vec<_> = events(&st)
        .into_iter()
        .filter(|e| e.kind == weir_dataplane::flows::FlowKind::L7)
        .collect();
    assert_eq!(l7.len(), 2, "{l7:?}");
    let (q, a) = (l7[0].l7.unwrap(), l7[1].l7.unwrap());
    assert_eq!((q.dns_name(), q.rcode), ("allowed.example", None));
    assert_eq!((a.dns_name(), a.rcode), ("allowed.example", Some(0)));
    assert!(l7[0].allowed && l7[0].reason.is_none());
    assert_eq!((l7[1].key.sport, l7[1].key.dport), (53, 5353));
    // Learned address on the rule's port: allowed by the toFQDNs rule.
    let (v, _) = run(&syn(W, 80), &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 2, .. }), "{v:?}");
    let ev = events(&st);
    let new = ev
        .iter()
        .rev()
        .find(|e| e.key.dst == std::net::IpAddr::from(W))
        .unwrap();
    assert_eq!(new.kind, weir_dataplane::flows::FlowKind::New);
    assert!(new.allowed);
    assert_eq!(new.egress_rule, RuleId(1));
    // Other port, or an address nobody answered: denied.
    let mut other_port = syn(W, 81);
    other_port[34 + 1] = 41; // another source port too
    let (v, _) = run(&other_port, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    let (v, _) = run(&syn(O, 80), &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    // After the TTL (30 s), a NEW flow is denied again.
    st.set_now(131 * SEC);
    let mut later = syn(W, 80);
    later[34 + 1] = 42;
    let (v, _) = run(&later, &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
}

#[test]
fn answers_for_refused_or_unwanted_names_teach_nothing() {
    let s = snap();
    let mut st = WorkerState::new();
    run(
        &udp(0, C, D, 5353, 53, &query(1, "www.allowed.example")),
        &s,
        &mut st,
    );
    // A name no toFQDNs selector wants (www.allowed.example ≠ allowed.example).
    let resp = response(1, "www.allowed.example", W, 30);
    let (v, _) = run(&udp(1, D, C, 53, 5353, &resp), &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }));
    // An unsolicited answer for a name the DNS rules do not allow.
    let resp = response(2, "blocked.example", O, 30);
    run(&udp(1, D, C, 53, 5353, &resp), &s, &mut st);
    assert!(st.fqdn().is_empty());
    // A tiny TTL is clamped up to 5 s.
    st.set_now(0);
    let resp = response(3, "allowed.example", W, 0);
    run(&udp(1, D, C, 53, 5353, &resp), &s, &mut st);
    assert_eq!(st.fqdn().entries()[0].2, 5 * SEC);
}

#[test]
fn a_fragmented_query_is_refused_in_every_fragment() {
    // A query of an allowed name cut in two fragments: the name cannot be
    // judged in pieces, so the first fragment and the later one both drop.
    let s = snap();
    let mut st = WorkerState::new();
    let mut q = query(9, "allowed.example");
    q.resize(40, 0);
    let whole = udp(0, C, D, 5353, 53, &q);
    let payload = whole[34..].to_vec();
    let cut = |off: usize, len: usize, more: bool| {
        let mut f = whole[..34].to_vec();
        f.extend_from_slice(&payload[off..off + len]);
        f[16..18].copy_from_slice(&((20 + len) as u16).to_be_bytes());
        let fl = (off as u16 >> 3) | if more { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&fl.to_be_bytes());
        f
    };
    let (first, later) = (cut(0, 24, true), cut(24, payload.len() - 24, false));
    assert_eq!(
        run(&first, &s, &mut st).0,
        Verdict::Drop(DropReason::DnsMalformed)
    );
    assert_eq!(
        run(&later, &s, &mut st).0,
        Verdict::Drop(DropReason::DnsMalformed)
    );
}

/// A TCP segment of the client C:40053 ↔ D:53 connection (`from` 0: the
/// client, 1: the server), ACK set unless `syn` without `ack`.
fn tcp53(from: u8, seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]) -> Vec<u8> {
    let (src, dst, sp, dp) = if from == 0 {
        (C, D, 40053, 53)
    } else {
        (D, C, 53, 40053)
    };
    let b = PacketBuilder::ethernet2(pod_mac(from), port_mac(from))
        .ipv4(src, dst, 64)
        .tcp(sp, dp, seq, 64240);
    let b = if syn { b.syn() } else { b };
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    let b = if payload.is_empty() { b } else { b.psh() };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn prefixed(m: &[u8]) -> Vec<u8> {
    let mut v = (m.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(m);
    v
}

/// Handshake C → D on TCP 53.
fn open53(s: &Snapshot, st: &mut WorkerState) {
    for f in [
        tcp53(0, 1000, None, true, b""),
        tcp53(1, 7000, Some(1001), true, b""),
        tcp53(0, 1001, Some(7001), false, b""),
    ] {
        let mut buf = vec![0u8; 2048];
        buf[..f.len()].copy_from_slice(&f);
        let v = process(&mut buf, f.len(), u16::from(f[11]), s, st);
        assert!(matches!(v, Verdict::Tx { .. }), "{v:?}");
    }
}

#[test]
fn tcp_query_refused_with_a_length_prefixed_answer_and_the_server_reset() {
    let s = snap();
    let mut st = WorkerState::new();
    open53(&s, &mut st);
    let q = prefixed(&query(0x4243, "blocked.example"));
    let f = tcp53(0, 1001, Some(7001), false, &q);
    let mut buf = vec![0u8; 2048];
    buf[..f.len()].copy_from_slice(&f);
    let v = process(&mut buf, f.len(), 0, &s, &mut st);
    let Verdict::L7Deny {
        reply_port,
        reply_len,
        rst_port,
        rst,
        reason,
        ..
    } = v
    else {
        panic!("expected L7Deny, got {v:?}");
    };
    assert_eq!(
        (reply_port, rst_port, reason),
        (0, 1, DropReason::DnsRefused)
    );
    let out = &buf[..reply_len];
    assert_eq!(&out[0..6], &pod_mac(0));
    let p = SlicedPacket::from_ethernet(out).unwrap();
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP");
    };
    assert_eq!((t.source_port(), t.destination_port()), (53, 40053));
    // From the server's next byte, acknowledging the query, with FIN.
    assert_eq!(t.sequence_number(), 7001);
    assert_eq!(t.acknowledgment_number(), 1001 + q.len() as u32);
    assert!(t.fin() && t.ack() && t.psh() && !t.rst());
    let mut want = vec![0x42, 0x43, 0x81, 0x05, 0, 1, 0, 0, 0, 0, 0, 0];
    want.extend(qname("blocked.example"));
    want.extend_from_slice(&[0, 1, 0, 1]);
    assert_eq!(t.payload(), prefixed(&want));
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).unwrap();
    assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
    assert_eq!(
        t.checksum(),
        t.to_header()
            .calc_checksum_ipv4(&ip.to_header(), t.payload())
            .unwrap()
    );
    // The server: a RST at the query's first byte (it never saw it).
    assert_eq!((rst.server_expects_seq, rst.server_next_seq), (1001, 7001));
    assert_eq!(st.dns_refused(), 1);
    // An allowed query on a new connection passes unchanged.
    let mut st = WorkerState::new();
    open53(&s, &mut st);
    let q = prefixed(&query(7, "www.allowed.example"));
    let f = tcp53(0, 1001, Some(7001), false, &q);
    let mut buf = vec![0u8; 2048];
    buf[..f.len()].copy_from_slice(&f);
    let v = process(&mut buf, f.len(), 0, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    assert_eq!(&buf[..f.len()][14 + 20 + 20..], &q[..]);
}

#[test]
fn tcp_answer_teaches_the_table() {
    let s = snap();
    let mut st = WorkerState::new();
    st.set_now(100 * SEC);
    let (v, _) = run(&syn(W, 80), &s, &mut st);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
    open53(&s, &mut st);
    let q = prefixed(&query(9, "allowed.example"));
    let (v, _) = run(&tcp53(0, 1001, Some(7001), false, &q), &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    let ack = 1001 + q.len() as u32;
    // A prefix that does not match the segment (answer in pieces): nothing
    // learned, the segment passes.
    let r = prefixed(&response(9, "allowed.example", W, 30));
    let (v, _) = run(&tcp53(1, 7001, Some(ack), false, &r[..20]), &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(st.fqdn().entries().len(), 0);
    let (v, _) = run(&tcp53(1, 7001, Some(ack), false, &r), &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    assert_eq!(st.fqdn().entries().len(), 1);
    let mut web = syn(W, 80);
    web[34 + 1] = 43;
    let (v, _) = run(&web, &s, &mut st);
    assert!(matches!(v, Verdict::Tx { port: 2, .. }), "{v:?}");
}
