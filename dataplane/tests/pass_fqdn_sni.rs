//! The server-name cross-check of FQDN egress through `process` (docs/l7.md,
//! "FQDN egress and the server name"; Cilium issue 31803): a pod whose
//! egress is allowed only by `toFQDNs` rules reaches a world address learned
//! for an allowed name, through the uplink (SNAT); its ClientHello must name
//! a server that its rules select AND that was learned for that address.
//! Another name on the same address is denied with a RST to each end: the
//! world server's RST is SNATed like the flow, the pod's built by the worker.
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use weir_dataplane::flows::FlowEvent;
use weir_dataplane::pass::{process, L7Capacity, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, FqdnRuleSpec, PolicySpec, RuleId, RuleInfo,
    Tier, IDENTITY_WORLD,
};
use weir_dataplane::snapshot::{Encap, TunnelSpec, Underlay, UplinkSpec};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const UMEM: usize = 2048;
const A: [u8; 4] = [10, 1, 0, 2]; // the client pod
/// Learned for api.example.com and x.cdn.example (and, unselected,
/// evil.example.org: the same CDN address).
const WORLD: [u8; 4] = [198, 51, 100, 1];
/// Learned for b.cdn.example only.
const WORLD2: [u8; 4] = [198, 51, 100, 2];
const UL_ME: [u8; 4] = [172, 30, 0, 1];
const UL_MAC_ME: [u8; 6] = [0x0a, 0, 172, 30, 0, 1];
const GW_MAC: [u8; 6] = [0x0a, 2, 172, 30, 0, 254];
const UNDERLAY: u16 = 1;
const ISN: u32 = 1000;
const SERVER_ISN: u32 = 5000;
const SPORT: u16 = 40000;

fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, p]
}
fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, p]
}

/// Pod a's egress: only `toFQDNs` (rule 0): `api.example.com` and
/// `*.cdn.example` on TCP 443, `api.example.com` on TCP 8443.
fn snap() -> Snapshot {
    let deny = Decision::deny(RuleId::IMPLICIT_DENY);
    let fq = |selector: u32, port: u16| FqdnRuleSpec {
        selector,
        rule: RuleId(0),
        proto: 6,
        first: port,
        last: port,
    };
    let policy = PolicySpec {
        generation: 1,
        rules: vec![RuleInfo {
            tier: Tier::Namespace,
            kind: "weirpolicies".into(),
            namespace: Some("default".into()),
            name: "fqdn".into(),
            direction: Direction::Egress,
            index: 0,
            action: "Allow".into(),
            priority: None,
        }],
        classes: vec![IDENTITY_WORLD, 256],
        addresses: vec![(A.into(), 1)],
        world_class: 0,
        cells: vec![CellSpec::uniform(deny)],
        tables: vec![vec![0, 0]],
        endpoints: vec![EndpointTables {
            ingress: None,
            egress: Some(0),
        }],
        fqdn_selectors: vec!["api.example.com".into(), "*.cdn.example".into()],
        fqdn_egress: vec![(0, vec![fq(0, 443), fq(1, 443), fq(0, 8443)])],
        ..Default::default()
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some([10, 1, 0, 1].into()),
        ports: vec![Port {
            name: "veth0".into(),
            mac: port_mac(0),
            mtu: 1450,
        }],
        endpoints: vec![Endpoint {
            name: "default/a".into(),
            port: 0,
            mac: pod_mac(0),
            ipv4: Some(A.into()),
            ipv6: None,
        }],
        policy,
        tunnel: Some(TunnelSpec {
            encap: Encap::Vxlan,
            vni: 1,
            udp_port: 4789,
            underlay: Underlay {
                name: "ul0".into(),
                mac: UL_MAC_ME,
                ipv4: UL_ME.into(),
                mtu: 1500,
            },
            vtep_mac: [0x0e, 0, 172, 30, 0, 1],
            peers: vec![],
        }),
        uplink: Some(UplinkSpec {
            gateway_ipv4: [172, 30, 0, 254].into(),
            gateway_mac: GW_MAC,
            cluster_cidrs: vec![([10, 0, 0, 0].into(), 8), ([172, 30, 0, 0].into(), 24)],
            non_masquerade: vec![],
            pod_cidr_v4: Some(([10, 1, 0, 0].into(), 24)),
            pod_cidr_v6: None,
            node_ipv6: None,
            gateway_ipv6: None,
            gateway_mac_v6: None,
        }),
        ..Default::default()
    })
    .unwrap()
}

fn state() -> WorkerState {
    learn(WorkerState::new())
}

/// `st` with the test's names learned.
fn learn(st: WorkerState) -> WorkerState {
    let t = st.fqdn();
    for (name, addr) in [
        ("api.example.com", WORLD),
        ("x.cdn.example", WORLD),
        ("evil.example.org", WORLD),
        ("b.cdn.example", WORLD2),
    ] {
        assert!(t.learn(name, addr.into(), 300, 0));
    }
    st
}

/// A TCP segment from the pod (to `dst`:`dport`) or, `reply`, from the
/// world to the node's SNAT port `snat`.
struct Flow {
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    snat: u16,
}

impl Flow {
    fn out(&self, seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(pod_mac(0), port_mac(0))
            .ipv4(A, self.dst, 64)
            .tcp(self.sport, self.dport, seq, 64240);
        build(b, ack, syn, payload)
    }
    fn back(&self, seq: u32, ack: u32, syn: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(GW_MAC, UL_MAC_ME)
            .ipv4(self.dst, UL_ME, 64)
            .tcp(self.dport, self.snat, seq, 64240);
        build(b, Some(ack), syn, b"")
    }
}

fn build(
    b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    ack: Option<u32>,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
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

fn run(s: &Snapshot, st: &mut WorkerState, frame: &[u8], ingress: u16) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; UMEM];
    buf[..frame.len()].copy_from_slice(frame);
    let v = process(&mut buf, frame.len(), ingress, s, st);
    let n = match v {
        Verdict::Tx { len, .. } => len,
        Verdict::L7Deny { reply_len, .. } => reply_len,
        _ => 0,
    };
    (v, buf[..n].to_vec())
}

struct Tcp {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    rst: bool,
    payload: Vec<u8>,
}

fn tcp(frame: &[u8]) -> Tcp {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let (src, dst) = match p.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => (ip.header().source(), ip.header().destination()),
        _ => panic!("not IPv4"),
    };
    match p.transport {
        Some(TransportSlice::Tcp(t)) => Tcp {
            src,
            dst,
            sport: t.source_port(),
            dport: t.destination_port(),
            seq: t.sequence_number(),
            ack: t.acknowledgment_number(),
            rst: t.rst(),
            payload: t.payload().to_vec(),
        },
        _ => panic!("not TCP"),
    }
}

/// Opens a → `dst`:`dport` through the uplink; returns the flow (its SNAT
/// port known).
fn open(s: &Snapshot, st: &mut WorkerState, dst: [u8; 4], dport: u16) -> Flow {
    open_from(s, st, dst, dport, SPORT)
}

/// [`open`] from the pod's source port `sport`.
fn open_from(s: &Snapshot, st: &mut WorkerState, dst: [u8; 4], dport: u16, sport: u16) -> Flow {
    let mut f = Flow {
        sport,
        dst,
        dport,
        snat: 0,
    };
    let (v, out) = run(s, st, &f.out(ISN, None, true, b""), 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let t = tcp(&out);
    assert_eq!((t.src, t.dst, t.dport), (UL_ME, dst, dport));
    f.snat = t.sport;
    let (v, _) = run(s, st, &f.back(SERVER_ISN, ISN + 1, true), UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: 0, .. }), "{v:?}");
    let (v, _) = run(s, st, &f.out(ISN + 1, Some(SERVER_ISN + 1), false, b""), 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    f
}

fn data(s: &Snapshot, st: &mut WorkerState, f: &Flow, seq: u32, p: &[u8]) -> (Verdict, Vec<u8>) {
    run(s, st, &f.out(seq, Some(SERVER_ISN + 1), false, p), 0)
}

fn events(st: &WorkerState) -> Vec<FlowEvent> {
    let mut v = Vec::new();
    st.flows().drain(&mut v);
    v.retain(|e| e.l7.is_some());
    v
}

fn sni_ext(name: &[u8]) -> (u16, Vec<u8>) {
    let mut d = Vec::new();
    d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    d.push(0);
    d.extend_from_slice(&(name.len() as u16).to_be_bytes());
    d.extend_from_slice(name);
    (0, d)
}

/// A ClientHello with these extensions, in one handshake record.
fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[0x5a; 32]);
    b.push(0);
    b.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    let mut e = Vec::new();
    for (t, d) in exts {
        e.extend_from_slice(&t.to_be_bytes());
        e.extend_from_slice(&(d.len() as u16).to_be_bytes());
        e.extend_from_slice(d);
    }
    b.extend_from_slice(&(e.len() as u16).to_be_bytes());
    b.extend_from_slice(&e);
    let mut m = vec![1];
    m.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&b);
    let mut r = vec![22, 3, 1];
    r.extend_from_slice(&(m.len() as u16).to_be_bytes());
    r.extend_from_slice(&m);
    r
}

fn hello_for(name: &str) -> Vec<u8> {
    hello(&[(10, vec![0, 2, 0, 29]), sni_ext(name.as_bytes())])
}

#[test]
fn a_name_learned_for_the_address_passes_snated_and_unchanged() {
    for (dst, name) in [
        (WORLD, "api.example.com"),
        (WORLD, "API.Example.com"),
        (WORLD, "x.cdn.example"),
        (WORLD2, "b.cdn.example"),
    ] {
        let s = snap();
        let mut st = state();
        let f = open(&s, &mut st, dst, 443);
        let h = hello_for(name);
        let (v, out) = data(&s, &mut st, &f, ISN + 1, &h);
        assert!(
            matches!(v, Verdict::Tx { port: UNDERLAY, .. }),
            "{name}: {v:?}"
        );
        let t = tcp(&out);
        assert_eq!((t.src, t.sport, t.payload), (UL_ME, f.snat, h.clone()));
        // The rest of the connection (encrypted records) passes unjudged.
        let app = [0x17, 3, 3, 0, 3, 1, 2, 3];
        let (v, _) = data(&s, &mut st, &f, ISN + 1 + h.len() as u32, &app);
        assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
        assert_eq!(st.l7_counts(), (0, 0));
        assert!(events(&st).is_empty());
    }
}

#[test]
fn a_hello_split_over_segments_is_judged_whole() {
    let s = snap();
    let mut st = state();
    let f = open(&s, &mut st, WORLD, 443);
    let h = hello_for("api.example.com");
    let (v, _) = data(&s, &mut st, &f, ISN + 1, &h[..7]);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let (v, _) = data(&s, &mut st, &f, ISN + 8, &h[7..]);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    // Split again, with another name on the same address: denied at the end.
    let mut st = state();
    let f = open(&s, &mut st, WORLD, 443);
    let h = hello_for("evil.example.org");
    let (v, _) = data(&s, &mut st, &f, ISN + 1, &h[..20]);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let (v, _) = data(&s, &mut st, &f, ISN + 21, &h[20..]);
    assert!(matches!(v, Verdict::L7Deny { .. }), "{v:?}");
}

#[test]
fn another_name_on_the_same_address_is_reset_both_ways_and_logged() {
    // evil.example.org: served on WORLD, not selected; b.cdn.example:
    // selected, but learned for WORLD2 only.
    for name in ["evil.example.org", "b.cdn.example"] {
        let s = snap();
        let mut st = state();
        let f = open(&s, &mut st, WORLD, 443);
        let _ = events(&st);
        let h = hello_for(name);
        let (v, out) = data(&s, &mut st, &f, ISN + 1, &h);
        let Verdict::L7Deny {
            reply_port,
            rst_port,
            rst,
            reason,
            ..
        } = v
        else {
            panic!("{name}: {v:?}");
        };
        assert_eq!(reason, DropReason::TlsSniDenied);
        // The frame's buffer: the world server's RST, SNATed, at the first
        // byte it was not sent (the hello's).
        assert_eq!(reply_port, UNDERLAY);
        let t = tcp(&out);
        assert_eq!(
            (t.src, t.sport, t.dst, t.dport, t.rst, t.seq, t.ack),
            (UL_ME, f.snat, WORLD, 443, true, ISN + 1, SERVER_ISN + 1)
        );
        assert!(t.payload.is_empty());
        assert_eq!(&out[0..6], &GW_MAC);
        // The worker's RST to the pod, as from the server, acknowledging
        // every byte of the hello.
        assert_eq!(rst_port, 0);
        assert_eq!(rst.client.ip, std::net::IpAddr::from(WORLD));
        assert_eq!(rst.server.ip, std::net::IpAddr::from(A));
        assert_eq!(rst.server.mac, pod_mac(0));
        assert_eq!(rst.server_expects_seq, SERVER_ISN + 1);
        assert_eq!(rst.server_next_seq, ISN + 1 + h.len() as u32);
        let ev = events(&st);
        assert_eq!(ev.len(), 1);
        let note = ev[0].l7.unwrap();
        assert_eq!(note.reason.as_str(), "fqdn-sni-mismatch");
        assert_eq!((note.method(), note.path()), ("TLS", name));
        assert_eq!(ev[0].egress_rule, RuleId(0));
        assert_eq!(ev[0].reason, Some(DropReason::TlsSniDenied));
        assert_eq!(st.l7_counts().0, 1);
        // Later data of the flow never passes.
        let (v, _) = data(
            &s,
            &mut st,
            &f,
            ISN + 1 + h.len() as u32,
            b"\x17\x03\x03\x00\x01x",
        );
        assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    }
}

#[test]
fn no_name_ech_and_non_tls_on_443_are_denied() {
    let ech = hello(&[sni_ext(b"api.example.com"), (0xfe0d, vec![0; 8])]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (hello(&[(10, vec![0, 2, 0, 29])]), "tls-no-sni"),
        (ech, "tls-ech"),
        (
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
            "tls-malformed",
        ),
    ];
    for (first, why) in cases {
        let s = snap();
        let mut st = state();
        let f = open(&s, &mut st, WORLD, 443);
        let (v, _) = data(&s, &mut st, &f, ISN + 1, &first);
        assert!(matches!(v, Verdict::L7Deny { .. }), "{why}: {v:?}");
        let ev = events(&st);
        assert_eq!(ev[0].l7.unwrap().reason.as_str(), why);
    }
}

#[test]
fn other_ports_check_tls_first_flights_only() {
    // 8443: api.example.com only. A TLS hello is cross-checked ...
    let s = snap();
    let mut st = state();
    let f = open(&s, &mut st, WORLD, 8443);
    let (v, _) = data(&s, &mut st, &f, ISN + 1, &hello_for("x.cdn.example"));
    assert!(matches!(v, Verdict::L7Deny { .. }), "{v:?}");
    let mut st = state();
    let f = open(&s, &mut st, WORLD, 8443);
    let (v, _) = data(&s, &mut st, &f, ISN + 1, &hello_for("api.example.com"));
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    // ... another protocol is not (docs/l7.md: the limit).
    let mut st = state();
    let f = open(&s, &mut st, WORLD, 8443);
    let get = b"GET / HTTP/1.1\r\nHost: evil.example.org\r\n\r\n";
    let (v, _) = data(&s, &mut st, &f, ISN + 1, get);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let (v, _) = data(
        &s,
        &mut st,
        &f,
        ISN + 1 + get.len() as u32,
        &hello_for("evil.example.org"),
    );
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
}

#[test]
fn a_client_closing_without_a_byte_is_not_refused() {
    for port in [443, 8443] {
        let s = snap();
        let mut st = state();
        let f = open(&s, &mut st, WORLD, port);
        let mut fin = f.out(ISN + 1, Some(SERVER_ISN + 1), false, b"");
        // FIN|ACK: byte 13 of the TCP header (Ethernet 14 + IPv4 20).
        fin[14 + 20 + 13] |= 0x01;
        let (v, out) = run(&s, &mut st, &fin, 0);
        assert!(
            matches!(v, Verdict::Tx { port: UNDERLAY, .. }),
            "{port}: {v:?}"
        );
        assert!(!tcp(&out).rst);
        assert_eq!(st.l7_counts(), (0, 0));
    }
}

#[test]
fn an_address_nobody_resolved_stays_denied_at_the_syn() {
    let s = snap();
    let mut st = state();
    let f = Flow {
        sport: SPORT,
        dst: [198, 51, 100, 3],
        dport: 443,
        snat: 0,
    };
    let (v, _) = run(&s, &mut st, &f.out(ISN, None, true, b""), 0);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDenied));
}

#[test]
fn fqdn_flows_give_their_l7_slot_back_once_the_hello_is_judged() {
    // Three times more FQDN flows than the worker has L7 slots, all open
    // at once: each first flight is judged (a hello on 443, a non-TLS
    // first flight on 8443 every third flow), then every flow goes on
    // without a slot.
    const SLOTS: usize = 4;
    let s = snap();
    let mut st = learn(WorkerState::standalone(L7Capacity::for_flows(SLOTS)));
    let app = [0x17, 3, 3, 0, 3, 1, 2, 3];
    let mut open_flows = Vec::new();
    for i in 0..3 * SLOTS {
        let port = if i % 3 == 2 { 8443 } else { 443 };
        let f = open_from(&s, &mut st, WORLD, port, 41000 + i as u16);
        assert_eq!(
            st.l7_usage().flows,
            1,
            "flow {i}: its slot while the hello is due"
        );
        let first = if port == 443 {
            hello_for("api.example.com")
        } else {
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec()
        };
        let (v, _) = data(&s, &mut st, &f, ISN + 1, &first);
        assert!(
            matches!(v, Verdict::Tx { port: UNDERLAY, .. }),
            "flow {i}: {v:?}"
        );
        assert_eq!(
            st.l7_usage().flows,
            0,
            "flow {i}: slot given back once judged"
        );
        open_flows.push((f, ISN + 1 + first.len() as u32));
    }
    // A denied flow beside them stays refused though slots are free.
    let bad = open_from(&s, &mut st, WORLD, 443, 42000);
    let h = hello_for("evil.example.org");
    let (v, _) = data(&s, &mut st, &bad, ISN + 1, &h);
    assert!(matches!(v, Verdict::L7Deny { .. }), "{v:?}");
    let (v, _) = data(&s, &mut st, &bad, ISN + 1 + h.len() as u32, &app);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let (v, _) = data(&s, &mut st, &bad, ISN + 1, &hello_for("api.example.com"));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    // Every judged flow goes on, twice, unjudged and without a slot;
    // its hello's retransmission passes too (those bytes were judged).
    for (f, seq) in &open_flows {
        for k in 0..2u32 {
            let (v, out) = data(&s, &mut st, f, seq + k * app.len() as u32, &app);
            assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
            assert_eq!(tcp(&out).payload, app);
        }
        if f.dport == 443 {
            let (v, _) = data(&s, &mut st, f, ISN + 1, &hello_for("api.example.com"));
            assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
        }
    }
    assert_eq!(st.l7_usage().flows, 0);
    // One denial, no flow refused for want of a slot.
    assert_eq!(st.l7_counts(), (1, 0));
    // The bound is on hellos in flight: SLOTS connections waiting for
    // their hello hold every slot, the next SYN is refused (fail closed).
    for i in 0..SLOTS {
        open_from(&s, &mut st, WORLD, 443, 43000 + i as u16);
    }
    let f = Flow {
        sport: 44000,
        dst: WORLD,
        dport: 443,
        snat: 0,
    };
    let (v, _) = run(&s, &mut st, &f.out(ISN, None, true, b""), 0);
    assert_eq!(v, Verdict::Drop(DropReason::L7NoSlot));
    assert_eq!(st.l7_counts(), (1, 1));
}

#[test]
fn a_reopened_connection_has_its_hello_judged_again() {
    // The same tuple after a judged hello and a RST: the new SYN clears
    // the mark, the new hello is judged (and this one denied).
    let s = snap();
    let mut st = state();
    let f = open(&s, &mut st, WORLD, 443);
    let h = hello_for("api.example.com");
    let (v, _) = data(&s, &mut st, &f, ISN + 1, &h);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let mut rst = f.out(ISN + 1 + h.len() as u32, Some(SERVER_ISN + 1), false, b"");
    // RST|ACK: byte 13 of the TCP header (Ethernet 14 + IPv4 20).
    rst[14 + 20 + 13] |= 0x04;
    let (v, _) = run(&s, &mut st, &rst, 0);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let f = open(&s, &mut st, WORLD, 443);
    let (v, _) = data(&s, &mut st, &f, ISN + 1, &hello_for("evil.example.org"));
    assert!(matches!(v, Verdict::L7Deny { .. }), "{v:?}");
}
