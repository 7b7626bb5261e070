//! What the fuzz targets share: a fixed node snapshot that reaches every
//! stage of the pass (IPv4 and IPv6 pods, HTTP rules, DNS rules, a learned
//! FQDN rule, a Geneve tunnel with one peer), and the input formats.
//!
//! Pass input: records `[ctl][len hi][len lo][frame…]` run in order on one
//! worker state (so conntrack, fragments and L7 see sequences). `ctl` bits
//! 0–1: the ingress port (0, 1, 2 pods; 3 the underlay); bit 2: another
//! port (one the snapshot lacks); bit 3: advance the clock one second;
//! bit 4: run the L7 upkeep after the frame. A short last record takes what
//! is left.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use weir_dataplane::l7::reply::build_rst_frame;
use weir_dataplane::l7::{HttpRuleSetSpec, HttpRuleSpec, PathMatchSpec};
use weir_dataplane::pass::{process, L7Capacity, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, FqdnRuleSpec, PolicySpec, RuleId, RuleInfo,
    Tier, IDENTITY_WORLD,
};
use weir_dataplane::snapshot::{Encap, TunnelPeer, TunnelSpec, Underlay};
use weir_dataplane::{Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

/// UMEM frame size the pass gets (as in the table tests).
pub const UMEM: usize = 2048;
pub const A: [u8; 4] = [10, 1, 0, 1];
pub const B: [u8; 4] = [10, 1, 0, 2];
pub const DNS: [u8; 4] = [10, 1, 0, 3];
/// A pod behind the peer node (identity 300).
pub const REMOTE: [u8; 4] = [10, 2, 0, 5];
pub const NODE: [u8; 4] = [10, 0, 0, 10];
pub const UL_ME: [u8; 4] = [192, 168, 0, 1];
pub const UL_PEER: [u8; 4] = [192, 168, 0, 2];
pub const VNI: u32 = 0x123;
pub const UNDERLAY_PORT: u16 = 3;

pub fn port_mac(p: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, p]
}
pub fn pod_mac(p: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, p]
}
pub fn pod6(n: u16) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n)
}

fn rule(index: usize, direction: Direction) -> RuleInfo {
    RuleInfo {
        tier: Tier::Namespace,
        kind: "weirpolicies".into(),
        namespace: Some("default".into()),
        name: "fuzz".into(),
        direction,
        index,
        action: "Allow".into(),
        priority: None,
    }
}

/// Pods a, b, dns behind ports 0, 1, 2 (both families); the underlay is
/// port 3 (Geneve, one peer with 10.2.0.0/24). Everyone may talk to
/// everyone except the world; TCP 80 into any pod is under HTTP rules
/// (`GET /public…`), UDP 53 out of any pod under DNS rules
/// (`*.allowed.example`), and a's TCP 443 to what `allowed.example`
/// resolves to is a learned FQDN rule.
pub fn snapshot_spec() -> SnapshotSpec {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: port_mac(i),
        mtu: if i == 2 { 1400 } else { 1500 },
    };
    let ep = |i: u8, name: &str, a: [u8; 4]| Endpoint {
        name: format!("default/{name}"),
        port: u16::from(i),
        mac: pod_mac(i),
        ipv4: Some(a.into()),
        ipv6: Some(pod6(u16::from(i) + 1)),
    };
    let deny = Decision::deny(RuleId::IMPLICIT_DENY);
    let allow = Decision::allow(RuleId(0));
    let http = Decision {
        l7: Some(0),
        ..Decision::allow(RuleId(3))
    };
    let dns = Decision {
        dns: Some(0),
        ..Decision::allow(RuleId(1))
    };
    let policy = PolicySpec {
        generation: 1,
        rules: vec![
            rule(0, Direction::Ingress),
            rule(0, Direction::Egress),
            rule(1, Direction::Egress),
            rule(1, Direction::Ingress),
        ],
        classes: vec![IDENTITY_WORLD, 256, 257, 258, 300],
        addresses: vec![
            (A.into(), 1),
            (B.into(), 2),
            (DNS.into(), 3),
            (REMOTE.into(), 4),
            (pod6(1).into(), 1),
            (pod6(2).into(), 2),
            (pod6(3).into(), 3),
        ],
        world_class: 0,
        cells: vec![
            CellSpec::uniform(deny),
            CellSpec {
                other: allow,
                tcp: vec![(0, allow), (80, http), (81, allow)],
                udp: vec![(0, allow), (53, dns), (54, allow)],
                sctp: vec![(0, allow)],
            },
        ],
        tables: vec![vec![0, 1, 1, 1, 1]],
        endpoints: vec![
            EndpointTables {
                ingress: Some(0),
                egress: Some(0),
            };
            3
        ],
        http: vec![HttpRuleSetSpec {
            rules: vec![HttpRuleSpec {
                method: Some("GET".into()),
                path: Some(PathMatchSpec::Prefix("/public".into())),
                ..HttpRuleSpec::default()
            }],
            tls: vec![],
        }],
        dns: vec![vec!["*.allowed.example".into(), "allowed.example".into()]],
        fqdn_selectors: vec!["allowed.example".into()],
        fqdn_egress: vec![(
            0,
            vec![FqdnRuleSpec {
                selector: 0,
                rule: RuleId(2),
                proto: 6,
                first: 443,
                last: 443,
            }],
        )],
        ..Default::default()
    };
    SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some(NODE.into()),
        node_ipv6: Some(pod6(0x10)),
        ports: vec![port(0), port(1), port(2)],
        endpoints: vec![ep(0, "a", A), ep(1, "b", B), ep(2, "dns", DNS)],
        policy,
        tunnel: Some(TunnelSpec {
            encap: Encap::Geneve,
            vni: VNI,
            udp_port: 6081,
            underlay: Underlay {
                name: "ul0".into(),
                mac: [0x02, 0xaa, 0, 0, 0, 1],
                ipv4: Ipv4Addr::from(UL_ME),
                mtu: 1500,
            },
            vtep_mac: [0x02, 0xbb, 0, 0, 0, 1],
            peers: vec![TunnelPeer {
                node: "node-2".into(),
                ipv4: UL_PEER.into(),
                mac: [0x02, 0xaa, 0, 0, 0, 2],
                vtep_mac: [0x02, 0xbb, 0, 0, 0, 2],
                pod_cidrs: vec![([10, 2, 0, 0].into(), 24)],
                identity_aware: true,
            }],
        }),
        services: Vec::new(),
        host: None,
        uplink: None,
    }
}

/// Once per process, before the first input: keeps freed memory in the
/// process. The pass and snapshot targets build a fresh worker state per
/// input (a few hundred KB: the Service cache, the L7 pool's buffers, the
/// HTTP/2 inspectors); with glibc's defaults each free gave the pages back
/// (`brk` shrinking) and the next input faulted them in again, 60 % of the
/// `pass` target's time. Nothing in the code under test changes.
pub fn init() {
    // SAFETY: `mallopt` only sets allocator parameters; it is called once,
    // from libFuzzer's initialisation, before any input runs (single
    // thread), with valid parameter numbers and values.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Conntrack (and fragment) entries and flow-log events of a fuzz worker
/// state: small, so that a fresh state per input costs microseconds, not
/// the milliseconds of the default tables, and so that the tables' full
/// paths (evictions, refusals) run too.
pub const FUZZ_TABLE: usize = 64;

/// A fresh worker state with small tables and `l7_flows` L7 slots.
pub fn fuzz_state(l7_flows: usize) -> WorkerState {
    WorkerState::standalone_sized(FUZZ_TABLE, FUZZ_TABLE, L7Capacity::for_flows(l7_flows))
}

/// The snapshot, built once.
pub fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| Snapshot::build(snapshot_spec()).expect("the fuzz snapshot builds"))
}

/// Runs the records of `data` through the pass on a fresh worker state and
/// checks what every verdict promises (lengths within the UMEM frame, an
/// RST that can be built for every L7 deny).
pub fn run_pass(data: &[u8]) {
    let snap = snapshot();
    let mut st = fuzz_state(4);
    let mut now = 1_000_000_000u64;
    let mut buf = vec![0u8; UMEM];
    let mut rst = vec![0u8; UMEM];
    let mut rest = data;
    while let [ctl, hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(n);
        rest = next;
        let ingress = if ctl & 0x04 != 0 {
            9
        } else {
            u16::from(ctl & 0x03)
        };
        if ctl & 0x08 != 0 {
            now += 1_000_000_000;
        }
        st.set_now(now);
        buf.fill(0);
        let len = frame.len().min(UMEM);
        buf[..len].copy_from_slice(&frame[..len]);
        let v = process(&mut buf, frame.len(), ingress, snap, &mut st);
        match v {
            Verdict::Tx { len, .. } | Verdict::Hold { len, .. } | Verdict::Release { len, .. } => {
                assert!(len <= UMEM, "{v:?}");
            }
            Verdict::L7Deny {
                reply_len, rst: r, ..
            } => {
                assert!(reply_len <= UMEM, "{v:?}");
                assert!(build_rst_frame(&mut rst, &r).is_some(), "{v:?}");
            }
            Verdict::Drop(_) => {}
        }
        if ctl & 0x10 != 0 {
            st.l7_maintain();
        }
        while st.l7_take_flush().is_some() {}
    }
}

/// HTTP input: records `[ctl][seq hi][seq lo][len][payload…]`, each a
/// client→server segment of flow `ctl & 1` at sequence number `start +
/// seq` (so gaps, overlaps and retransmissions all happen). `ctl` bit 1:
/// FIN; bit 2: the worker may not hold; bit 3: advance the clock half a
/// second and expire holds; bit 4: the client resets (abort); bit 5: a new
/// SYN (restart). Flow 0 is also fed to a standalone [`HttpInspector`]
/// with the same rules: while the pool may hold and has a head buffer for
/// every flow, both must answer alike.
pub fn run_http(data: &[u8]) {
    use weir_dataplane::l7::{HttpInspector, HttpRuleSet, InspectorPool, L7Verdict, Limits};
    static RULES: OnceLock<HttpRuleSet> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        HttpRuleSet::compile(&snapshot_spec().policy.http[0]).expect("the fuzz rules compile")
    });
    let limits = Limits {
        head_max: 512,
        held_segments_max: 4,
        ..Limits::default()
    };
    let mut pool = InspectorPool::with_buffers(2, 2, limits);
    let mut alone = HttpInspector::new(limits);
    const START: u32 = 0xffff_ff00; // wraps inside the stream
    let ids = [pool.acquire(), pool.acquire()];
    for id in ids.iter().flatten() {
        if let Some(i) = pool.get(*id) {
            i.start(START);
        }
    }
    alone.start(START);
    let mut now = 1_000_000_000u64;
    let judge = |head: &weir_dataplane::l7::RequestHead<'_>| {
        if rules.judge(head).is_some() {
            L7Verdict::Allow
        } else {
            L7Verdict::Deny
        }
    };
    let mut same = true;
    let mut rest = data;
    while let [ctl, hi, lo, n, tail @ ..] = rest {
        let n = usize::from(*n).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let flow = usize::from(ctl & 1);
        let Some(id) = ids[flow] else { return };
        let seq = START.wrapping_add(u32::from(u16::from_be_bytes([*hi, *lo])));
        let fin = ctl & 0x02 != 0;
        let may_hold = ctl & 0x04 == 0;
        if ctl & 0x08 != 0 {
            now += 500_000_000;
            let a = pool.expire(id, now);
            if flow == 0 {
                same &= a == alone.expire(now);
            }
        }
        if ctl & 0x20 != 0 {
            pool.restart(id, seq);
            if flow == 0 {
                alone.reset();
                alone.start(seq);
            }
            continue;
        }
        if ctl & 0x10 != 0 {
            let a = pool.abort(id);
            if flow == 0 {
                same &= a == alone.abort();
            }
            continue;
        }
        let f = pool.feed_segment(id, seq, payload, fin, now, may_hold, judge);
        if flow == 0 {
            let g = alone.feed_segment(seq, payload, fin, now, judge);
            same &= may_hold;
            if same {
                assert_eq!(f, g, "pool and standalone inspector disagree");
            }
        }
    }
}

/// DNS input: any bytes, as a UDP message, as a TCP stream chunk (2-byte
/// length first), and as a response. A query refused in place must parse
/// as the REFUSED response to it.
pub fn run_dns(data: &[u8]) {
    use weir_dataplane::l7::dns;
    let mut name = [0u8; dns::MAX_NAME];
    if let Ok(q) = dns::parse_query(data) {
        let _ = q.qname.write_dotted(&mut name);
        let mut msg = data.to_vec();
        let n = dns::refuse_in_place(&mut msg).expect("a parsed query can be refused");
        let r = dns::parse_response(&msg[..n]).expect("a refused query parses as a response");
        assert_eq!(
            (r.id, r.rcode, r.qtype),
            (q.id, dns::RCODE_REFUSED, q.qtype)
        );
        assert!(r.qname.eq_name(&q.qname));
        assert_eq!(r.addresses().count(), 0);
    }
    if let Ok(q) = dns::parse_query_tcp(data) {
        let _ = q.qname.write_dotted(&mut name);
        let mut msg = data.to_vec();
        let n = dns::refuse_in_place_tcp(&mut msg).expect("a parsed TCP query can be refused");
        assert!(n <= data.len());
    }
    if let Ok(r) = dns::parse_response(data) {
        let _ = r.qname.write_dotted(&mut name);
        for (addr, ttl) in r.addresses() {
            let _ = (addr, ttl);
        }
    }
}

/// Manifest input: any text (invalid UTF-8 replaced) to the topology
/// parsers and the policy parser. The text is split into YAML (or JSON)
/// documents once (`split_documents`, what both parsers start with), and
/// every document goes to the topology parser (`add_document`, stopping
/// at the first error as `parse_objects` does; then defaults and
/// validation, `finish`, as `parse_str` does) and to the policy parser
/// (`parse_document`, each document even after one failed). Calling
/// `parse_str`, `parse_objects` and the policy's `parse_str` on the text
/// ran the same code with the YAML parsed three times: 58 % of the
/// target's time.
pub fn run_manifest(data: &[u8]) {
    use weir_topo::manifest::{split_documents, ClusterSpec};
    let text = String::from_utf8_lossy(data);
    let Ok(docs) = split_documents(&text, "fuzz.yaml") else {
        return;
    };
    let mut spec = ClusterSpec::default();
    let mut topo_ok = true;
    for doc in &docs {
        topo_ok = topo_ok && spec.add_document(doc).is_ok();
        let _ = weir_policy::parse::parse_document(doc);
    }
    if topo_ok {
        let _ = spec.finish();
    }
}

/// Snapshot input: the bytes of a `snapshot.json`. Decoded and built as the
/// dataplane does; a snapshot that builds runs an IPv4 TCP SYN and an IPv4
/// UDP datagram in on each of its first four ports, to each of the IPv4
/// addresses of its first endpoints, a fixed remote pod and 8.8.8.8.
pub fn run_snapshot(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<SnapshotSpec>(data) else {
        return;
    };
    let v4: Vec<[u8; 4]> = spec
        .endpoints
        .iter()
        .filter_map(|e| e.ipv4.map(|a| a.octets()))
        .chain([REMOTE, [8, 8, 8, 8]])
        .take(4)
        .collect();
    let ports = spec.ports.len().min(4) as u16;
    let Ok(snap) = Snapshot::build(spec) else {
        return;
    };
    let mut st = fuzz_state(2);
    st.set_now(1_000_000_000);
    let mut buf = vec![0u8; UMEM];
    for port in 0..ports {
        for (i, dst) in v4.iter().enumerate() {
            let src = v4[(i + 1) % v4.len()];
            for proto in [6u8, 17] {
                let len = ipv4_frame(&mut buf, src, *dst, proto);
                let _ = process(&mut buf, len, port, &snap, &mut st);
            }
        }
    }
}

/// An Ethernet + IPv4 + (TCP SYN | UDP) frame to port 80, no payload;
/// checksums left zero (the pass must cope with wrong ones too).
fn ipv4_frame(buf: &mut [u8], src: [u8; 4], dst: [u8; 4], proto: u8) -> usize {
    buf.fill(0);
    buf[0..6].copy_from_slice(&port_mac(0));
    buf[6..12].copy_from_slice(&pod_mac(0));
    buf[12..14].copy_from_slice(&[0x08, 0x00]);
    let l4 = if proto == 6 { 20 } else { 8 };
    let total = 20 + l4;
    let ip = &mut buf[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let t = &mut buf[34..34 + l4];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    if proto == 6 {
        t[12] = 0x50;
        t[13] = 0x02;
        t[14] = 0xff;
    } else {
        t[4..6].copy_from_slice(&8u16.to_be_bytes());
    }
    14 + total
}
