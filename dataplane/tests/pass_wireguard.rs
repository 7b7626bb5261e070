//! Table tests of WireGuard between nodes in the pass (docs/encryption.md):
//! two nodes' passes run on each other's output bytes, so the handshake,
//! encryption, decryption and every `wireguard-*` drop are exercised on the
//! real stages with real keys. No root, no sockets. Inner frames are built
//! with etherparse (the referee).

use etherparse::{IpHeaders, Ipv4Header, PacketBuilder, SlicedPacket};
use std::net::Ipv4Addr;
use std::ops::ControlFlow::{Break, Continue};
use std::sync::Arc;
use weir_dataplane::pass::{
    open_deferred, process, seal_deferred, wg_source, SealJob, WorkerState,
};
use weir_dataplane::policy::{EndpointTables, PolicySpec, IDENTITY_WORLD};
use weir_dataplane::snapshot::{Encap, TunnelPeer, TunnelSpec, Underlay};
use weir_dataplane::wireguard::{self, PeerKey, WgTable};
use weir_dataplane::{DropReason, Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const UMEM: usize = 2048;
const MARKER: &[u8] = b"weir-wireguard-pass-marker";
/// Node n has pod 10.n.0.1 on port 0, underlay 192.168.0.n on port 1.
const POD: u16 = 0;
const UNDERLAY: u16 = 1;
const PORT_UDP: u16 = 4789;

fn pod_ip(n: u8) -> [u8; 4] {
    [10, n, 0, 1]
}
fn ul_ip(n: u8) -> [u8; 4] {
    [192, 168, 0, n]
}
fn ul_mac(n: u8) -> [u8; 6] {
    [0x02, 0xaa, 0, 0, 0, n]
}
fn vtep(n: u8) -> [u8; 6] {
    [0x02, 0xbb, 0, 0, 0, n]
}
fn port_mac(n: u8) -> [u8; 6] {
    [0x02, 0xee, 0, 0, 0, n]
}
fn pod_mac(n: u8) -> [u8; 6] {
    [0x0a, 0x58, 0, 0, 0, n]
}

/// Node `me`'s snapshot, with node `other` as its one peer; no policy
/// (everything allowed).
fn snap(me: u8, other: u8) -> Snapshot {
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: format!("node-{me}"),
        node_ipv4: Some([10, 0, 0, me].into()),
        node_ipv6: None,
        ports: vec![Port {
            name: "veth0".into(),
            mac: port_mac(me),
            mtu: 1500,
        }],
        endpoints: vec![Endpoint {
            name: "default/pod".into(),
            port: POD,
            mac: pod_mac(me),
            ipv4: Some(pod_ip(me).into()),
            ipv6: None,
        }],
        policy: PolicySpec {
            generation: 1,
            classes: vec![IDENTITY_WORLD],
            endpoints: vec![EndpointTables::default()],
            ..Default::default()
        },
        tunnel: Some(TunnelSpec {
            encap: Encap::Vxlan,
            vni: 1,
            udp_port: PORT_UDP,
            underlay: Underlay {
                name: "ul0".into(),
                mac: ul_mac(me),
                ipv4: ul_ip(me).into(),
                mtu: 1500,
            },
            vtep_mac: vtep(me),
            peers: vec![TunnelPeer {
                node: format!("node-{other}"),
                ipv4: ul_ip(other).into(),
                mac: ul_mac(other),
                vtep_mac: vtep(other),
                pod_cidrs: vec![([10, other, 0, 0].into(), 24)],
                identity_aware: true,
            }],
        }),
        services: Vec::new(),
        host: None,
        uplink: None,
    })
    .unwrap()
}

struct Node {
    snap: Snapshot,
    st: WorkerState,
}

/// Two nodes with WireGuard on, each knowing the other's public key.
fn pair() -> (Node, Node) {
    let k1 = wireguard::generate_private_key().unwrap();
    let k2 = wireguard::generate_private_key().unwrap();
    let table = |mine: &[u8; 32], other: u8, theirs: &[u8; 32]| {
        let text = wireguard::encode_key(&wireguard::public_key(theirs));
        Arc::new(WgTable::new(
            mine,
            [PeerKey {
                node: "peer",
                ipv4: ul_ip(other).into(),
                public_key: Some(&text),
            }],
        ))
    };
    (
        Node {
            snap: snap(1, 2),
            st: WorkerState::new().with_wireguard(table(&k1, 2, &k2)),
        },
        Node {
            snap: snap(2, 1),
            st: WorkerState::new().with_wireguard(table(&k2, 1, &k1)),
        },
    )
}

/// Pod `from` → pod on node `to`: UDP with `len` bytes of payload ending
/// in the marker.
fn pod_frame(from: u8, to: u8, len: usize) -> Vec<u8> {
    let hdr = Ipv4Header {
        source: pod_ip(from),
        destination: pod_ip(to),
        time_to_live: 64,
        dont_fragment: true,
        ..Default::default()
    };
    let mut payload = vec![0x5a; len.saturating_sub(MARKER.len())];
    payload.extend_from_slice(MARKER);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(from), port_mac(from))
        .ip(IpHeaders::Ipv4(hdr, Default::default()))
        .udp(40000, 7)
        .write(&mut out, &payload)
        .unwrap();
    out
}

fn run(n: &mut Node, frame: &[u8], ingress: u16) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; UMEM];
    buf[..frame.len()].copy_from_slice(frame);
    let v = process(&mut buf, frame.len(), ingress, &n.snap, &mut n.st);
    let out = match v {
        Verdict::Tx { len, .. } => buf[..len].to_vec(),
        _ => Vec::new(),
    };
    (v, out)
}

fn has_marker(f: &[u8]) -> bool {
    f.windows(MARKER.len()).any(|w| w == MARKER)
}

/// The WireGuard message in an underlay frame, after checking its outer
/// headers: `from` → `to`, UDP to the tunnel's port.
fn wg_message(f: &[u8], from: u8, to: u8) -> Vec<u8> {
    let p = SlicedPacket::from_ethernet(f).expect("outer headers");
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("outer IPv4")
    };
    assert_eq!(ip.header().source(), ul_ip(from));
    assert_eq!(ip.header().destination(), ul_ip(to));
    assert_eq!(ip.header().ttl(), 64);
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("outer UDP")
    };
    assert_eq!(u.destination_port(), PORT_UDP);
    assert_eq!(&f[..6], &ul_mac(to));
    u.payload().to_vec()
}

/// The packets node `from` held for a handshake, as its timers' run sends
/// them (`WgTable::tick`, from the control loop's UDP socket to the peer's
/// tunnel port), each in an underlay frame as the kernel would build it.
fn flushed(n: &Node, from: u8, to: u8) -> Vec<Vec<u8>> {
    let wg = n.st.wireguard().cloned().expect("WireGuard on");
    let mut out = vec![0u8; wireguard::PENDING_MAX + wireguard::DATA_OVERHEAD];
    let mut frames = Vec::new();
    wg.tick(&mut out, |peer, m| {
        assert_eq!(peer, Ipv4Addr::from(ul_ip(to)));
        // Data with a payload (not a timer's keepalive).
        if m[0] == 4 && m.len() > wireguard::DATA_OVERHEAD {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(ul_mac(from), ul_mac(to))
                .ipv4(ul_ip(from), ul_ip(to), 64)
                .udp(40001, PORT_UDP)
                .write(&mut f, m)
                .unwrap();
            frames.push(f);
        }
    });
    frames
}

/// Runs the handshake that a's first frame starts; returns the nodes with
/// a session both ways. No frame is lost: the ones sent while the
/// handshake is under way are held and delivered once it completes.
fn handshaken() -> (Node, Node) {
    let (mut n1, mut n2) = pair();
    // 1. No session: the frame becomes a handshake initiation (the frame
    // itself is held).
    let first = pod_frame(1, 2, 100);
    let (v, init) = run(&mut n1, &first, POD);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let m = wg_message(&init, 1, 2);
    assert_eq!((m[0], m.len()), (1, 148), "handshake initiation");
    assert!(!has_marker(&init));
    // More frames while it is under way are held (counted, not a loss).
    let second = pod_frame(1, 2, 120);
    let (v, _) = run(&mut n1, &second, POD);
    assert_eq!(v, Verdict::Drop(DropReason::WireguardQueued));
    // 2. n2 answers on the underlay.
    let (v, resp) = run(&mut n2, &init, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    let m = wg_message(&resp, 2, 1);
    assert_eq!((m[0], m.len()), (2, 92), "handshake response");
    // 3. n1 completes and sends the first held frame in place of the
    // keepalive; n2 delivers it (and its session is confirmed).
    let (v, data) = run(&mut n1, &resp, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert!(!has_marker(&data));
    let m = wg_message(&data, 1, 2);
    assert_eq!(m[0], 4, "data message");
    assert_eq!(m.len(), 20 + 8 + 8 + first.len() + wireguard::DATA_OVERHEAD);
    let (v, got) = run(&mut n2, &data, UNDERLAY);
    assert_eq!(
        v,
        Verdict::Tx {
            port: POD,
            len: first.len()
        },
        "the first frame delivered"
    );
    assert_eq!(got[14 + 20 + 8..], first[14 + 20 + 8..]);
    // 4. The second held frame leaves at n1's timers' run.
    let rest = flushed(&n1, 1, 2);
    assert_eq!(rest.len(), 1, "one more held frame");
    let (v, got) = run(&mut n2, &rest[0], UNDERLAY);
    assert_eq!(
        v,
        Verdict::Tx {
            port: POD,
            len: second.len()
        },
        "the second frame delivered"
    );
    assert_eq!(got[14 + 20 + 8..], second[14 + 20 + 8..]);
    assert!(flushed(&n1, 1, 2).is_empty(), "sent once");
    (n1, n2)
}

#[test]
fn pods_on_two_nodes_talk_encrypted_both_ways() {
    let (mut n1, mut n2) = handshaken();
    one_way(1, 2, &mut n1, &mut n2);
    one_way(2, 1, &mut n2, &mut n1);
}

fn one_way(a: u8, b: u8, na: &mut Node, nb: &mut Node) {
    let sent = pod_frame(a, b, 300);
    let (v, wire) = run(na, &sent, POD);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert!(!has_marker(&wire), "marker in clear on the underlay");
    let m = wg_message(&wire, a, b);
    assert_eq!(m[0], 4, "data message");
    // The plaintext is the overlay datagram: outer IPv4 + UDP + VXLAN
    // (8) + the inner frame, + WireGuard's 32.
    assert_eq!(m.len(), 20 + 8 + 8 + sent.len() + wireguard::DATA_OVERHEAD);
    let (v, got) = run(nb, &wire, UNDERLAY);
    assert_eq!(
        v,
        Verdict::Tx {
            port: POD,
            len: sent.len()
        }
    );
    // Delivered as the overlay delivers: MACs of the last hop, TTL − 1 on
    // each node.
    assert_eq!(&got[..6], &pod_mac(b));
    assert_eq!(&got[6..12], &port_mac(b));
    assert_eq!(got[14 + 8], 62);
    assert_eq!(got[14 + 20 + 8..], sent[14 + 20 + 8..], "payload intact");
    assert!(has_marker(&got));
}

#[test]
fn tampered_replayed_and_clear_frames_are_dropped() {
    let (mut n1, mut n2) = handshaken();
    let (_, wire) = run(&mut n1, &pod_frame(1, 2, 200), POD);
    // One flipped bit of the ciphertext, of the tag, of the counter.
    for i in [wire.len() / 2, wire.len() - 1, 42 + 12] {
        let mut t = wire.clone();
        t[i] ^= 0x01;
        let (v, _) = run(&mut n2, &t, UNDERLAY);
        assert_eq!(
            v,
            Verdict::Drop(DropReason::WireguardAuthFailed),
            "byte {i}"
        );
    }
    // The genuine frame still passes, once; again it is a replay.
    let (v, _) = run(&mut n2, &wire, UNDERLAY);
    assert!(matches!(v, Verdict::Tx { port: POD, .. }), "{v:?}");
    let (v, _) = run(&mut n2, &wire, UNDERLAY);
    assert_eq!(v, Verdict::Drop(DropReason::WireguardReplay));
    // Plain VXLAN from node 1 (its WireGuard off): the marker is on the
    // wire, and node 2 refuses it.
    let mut clear = Node {
        snap: snap(1, 2),
        st: WorkerState::new(),
    };
    let (v, plain) = run(&mut clear, &pod_frame(1, 2, 200), POD);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert!(
        has_marker(&plain),
        "without WireGuard the marker is in clear"
    );
    let (v, _) = run(&mut n2, &plain, UNDERLAY);
    assert_eq!(v, Verdict::Drop(DropReason::WireguardMalformed));
    // A stranger's frame (outer source no peer has).
    let mut t = wire.clone();
    t[14 + 12..14 + 16].copy_from_slice(&[192, 168, 0, 9]);
    let c = etherparse::Ipv4Header::from_slice(&t[14..34])
        .unwrap()
        .0
        .calc_header_checksum();
    t[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let (v, _) = run(&mut n2, &t, UNDERLAY);
    assert_eq!(v, Verdict::Drop(DropReason::WireguardNoPeer));
}

#[test]
fn a_peer_without_a_valid_key_gets_nothing_in_clear() {
    let k1 = wireguard::generate_private_key().unwrap();
    for bad in [
        None,
        Some("not-a-key"),
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ] {
        let t = WgTable::new(
            &k1,
            [PeerKey {
                node: "node-2",
                ipv4: ul_ip(2).into(),
                public_key: bad,
            }],
        );
        let mut n1 = Node {
            snap: snap(1, 2),
            st: WorkerState::new().with_wireguard(Arc::new(t)),
        };
        let (v, _) = run(&mut n1, &pod_frame(1, 2, 100), POD);
        assert_eq!(v, Verdict::Drop(DropReason::WireguardNoPeer), "{bad:?}");
    }
}

#[test]
fn the_inner_mtu_is_lowered_by_wireguards_overhead() {
    // VXLAN's inner MTU on a 1500 underlay is 1450; WireGuard takes 60
    // more: a 1420-byte DF packet fits plain VXLAN but not WireGuard.
    let (mut n1, _) = handshaken();
    let big = pod_frame(1, 2, 1420 - 28);
    let (v, _) = run(&mut n1, &big, POD);
    assert!(
        matches!(v, Verdict::Tx { port: POD, .. }),
        "ICMP frag needed back: {v:?}"
    );
    let mut clear = Node {
        snap: snap(1, 2),
        st: WorkerState::new(),
    };
    let (v, _) = run(&mut clear, &big, POD);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    // And 1390 fits WireGuard.
    let (v, _) = run(&mut n1, &pod_frame(1, 2, 1390 - 28), POD);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
}

/// A worker's batch, as `worker.rs` runs it under
/// `WorkerState::batch_wireguard` (docs/encryption.md): frames from the
/// underlay are opened first, grouped by peer (`WgTable::grouped`: one
/// lock per peer and batch); then the pass runs on each frame; the seals
/// stage 11 left are done last, grouped by peer. Buffers allocated once.
struct Batch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    addrs: Vec<Option<Ipv4Addr>>,
    pre: Vec<Option<std::ops::ControlFlow<Verdict, usize>>>,
    jobs: Vec<Option<SealJob>>,
    out: Vec<Verdict>,
}

impl Batch {
    fn new(n: usize) -> Self {
        Batch {
            bufs: vec![vec![0u8; UMEM]; n],
            lens: vec![0; n],
            addrs: Vec::with_capacity(n),
            pre: Vec::with_capacity(n),
            jobs: Vec::with_capacity(n),
            out: Vec::with_capacity(n),
        }
    }

    fn load<'a>(&mut self, frames: impl IntoIterator<Item = &'a [u8]>) {
        for (i, f) in frames.into_iter().enumerate() {
            self.bufs[i][..f.len()].copy_from_slice(f);
            self.lens[i] = f.len();
        }
    }

    /// Runs the first `n` loaded frames; `out[i]` is frame i's verdict and
    /// `bufs[i]` its bytes.
    fn run(&mut self, node: &mut Node, n: usize, ingress: u16) {
        let wg = node.st.wireguard().cloned().expect("WireGuard on");
        let (snap, st) = (&node.snap, &mut node.st);
        self.addrs.clear();
        self.pre.clear();
        for i in 0..n {
            self.addrs
                .push(wg_source(&self.bufs[i], self.lens[i], ingress, snap, st));
            self.pre.push(None);
        }
        let (bufs, lens, addrs, pre) = (&mut self.bufs, &self.lens, &self.addrs, &mut self.pre);
        wg.grouped(addrs, |i, peer| {
            pre[i] = Some(open_deferred(
                &mut bufs[i],
                lens[i],
                addrs[i].unwrap(),
                peer,
                snap,
                st,
            ));
        });
        self.out.clear();
        self.jobs.clear();
        for i in 0..n {
            let v = match self.pre[i] {
                Some(Break(v)) => v,
                Some(Continue(len)) => {
                    st.wireguard_opened();
                    process(&mut self.bufs[i], len, ingress, snap, st)
                }
                None => process(&mut self.bufs[i], self.lens[i], ingress, snap, st),
            };
            let job = st.take_wireguard_seal();
            if job.is_some() {
                // In clear until sealed.
                assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
            }
            self.jobs.push(job);
            self.out.push(v);
        }
        self.addrs.clear();
        self.addrs
            .extend(self.jobs.iter().map(|j| j.map(|j| j.peer)));
        let (bufs, jobs, out) = (&mut self.bufs, &self.jobs, &mut self.out);
        wg.grouped(&self.addrs, |i, peer| {
            let (Verdict::Tx { port, len }, Some(job)) = (out[i], jobs[i]) else {
                unreachable!()
            };
            out[i] = match seal_deferred(&mut bufs[i], len, peer, st, &job) {
                Ok(len) => Verdict::Tx { port, len },
                Err(r) => Verdict::Drop(r),
            };
        });
    }

    fn frame(&self, i: usize) -> &[u8] {
        match self.out[i] {
            Verdict::Tx { len, .. } => &self.bufs[i][..len],
            _ => &[],
        }
    }
}

fn batch_pair() -> (Node, Node) {
    let (mut n1, mut n2) = pair();
    n1.st = n1.st.batch_wireguard();
    n2.st = n2.st.batch_wireguard();
    (n1, n2)
}

#[test]
fn the_workers_batch_path_seals_and_opens_grouped_by_peer() {
    let (mut n1, mut n2) = batch_pair();
    let mut b = Batch::new(8);
    // Under `batch_wireguard` the pass alone leaves stage 11's frame in
    // clear, with its seal for the caller (the worker never sends such a
    // frame: it seals it or drops it).
    let (v, clear) = run(&mut n1, &pod_frame(1, 2, 100), POD);
    assert!(matches!(v, Verdict::Tx { port: UNDERLAY, .. }), "{v:?}");
    assert!(has_marker(&clear));
    let job = n1
        .st
        .take_wireguard_seal()
        .expect("seal left to the caller");
    assert_eq!(job.peer, Ipv4Addr::from(ul_ip(2)));
    // A batch of 8 with no session: the first becomes the handshake
    // initiation; it and the next 3 are held (PENDING), the 4 others are
    // lost (dropped, counted).
    let f = pod_frame(1, 2, 100);
    b.load((0..8).map(|_| &f[..]));
    b.run(&mut n1, 8, POD);
    let init = b.frame(0).to_vec();
    assert_eq!(wg_message(&init, 1, 2)[0], 1, "handshake initiation");
    for i in 1..8 {
        let want = match i < wireguard::PENDING {
            true => DropReason::WireguardQueued,
            false => DropReason::WireguardNoSession,
        };
        assert_eq!(b.out[i], Verdict::Drop(want), "frame {i}");
    }
    b.load([&init[..]]);
    b.run(&mut n2, 1, UNDERLAY);
    let resp = b.frame(0).to_vec();
    assert_eq!(wg_message(&resp, 2, 1)[0], 2, "handshake response");
    b.load([&resp[..]]);
    b.run(&mut n1, 1, UNDERLAY);
    let data = b.frame(0).to_vec();
    assert_eq!(wg_message(&data, 1, 2)[0], 4, "data: the first held frame");
    let mut held = vec![data];
    held.extend(flushed(&n1, 1, 2));
    assert_eq!(held.len(), wireguard::PENDING);
    b.load(held.iter().map(|f| &f[..]));
    b.run(&mut n2, held.len(), UNDERLAY);
    for i in 0..held.len() {
        assert_eq!(
            b.out[i],
            Verdict::Tx {
                port: POD,
                len: f.len()
            },
            "held frame {i}"
        );
    }
    // Both ways, 8 frames a batch, of different sizes (their order kept).
    for (a, z) in [(1, 2), (2, 1)] {
        let (na, nz) = match a {
            1 => (&mut n1, &mut n2),
            _ => (&mut n2, &mut n1),
        };
        let sent: Vec<Vec<u8>> = (0..8).map(|i| pod_frame(a, z, 100 + 10 * i)).collect();
        b.load(sent.iter().map(|f| &f[..]));
        b.run(na, 8, POD);
        let wire: Vec<Vec<u8>> = (0..8).map(|i| b.frame(i).to_vec()).collect();
        for w in &wire {
            assert!(!has_marker(w), "marker in clear on the underlay");
            assert_eq!(wg_message(w, a, z)[0], 4, "data message");
        }
        // One tampered frame in the batch: only it is refused.
        let mut wire2 = wire.clone();
        let mid = wire2[3].len() / 2;
        wire2[3][mid] ^= 1;
        b.load(wire2.iter().map(|f| &f[..]));
        b.run(nz, 8, UNDERLAY);
        for (i, sent) in sent.iter().enumerate() {
            if i == 3 {
                assert_eq!(b.out[i], Verdict::Drop(DropReason::WireguardAuthFailed));
                continue;
            }
            assert_eq!(
                b.out[i],
                Verdict::Tx {
                    port: POD,
                    len: sent.len()
                },
                "frame {i}"
            );
            let got = b.frame(i);
            assert_eq!(got[14 + 20 + 8..], sent[14 + 20 + 8..], "payload intact");
        }
        // The same batch again: every frame a replay.
        b.load(wire.iter().map(|f| &f[..]));
        b.run(nz, 8, UNDERLAY);
        for i in 0..8 {
            let want = match i {
                3 => Verdict::Tx {
                    port: POD,
                    len: sent[3].len(),
                },
                _ => Verdict::Drop(DropReason::WireguardReplay),
            };
            assert_eq!(b.out[i], want, "frame {i}");
        }
    }
    // Plain VXLAN in a batch: refused before any lock, as stage 1 does.
    let mut clear = Node {
        snap: snap(1, 2),
        st: WorkerState::new(),
    };
    let (_, plain) = run(&mut clear, &pod_frame(1, 2, 200), POD);
    b.load([&plain[..]]);
    b.run(&mut n2, 1, UNDERLAY);
    assert_eq!(b.out[0], Verdict::Drop(DropReason::WireguardMalformed));
}

/// Prints the cost of WireGuard in the pass: a pod frame of 1000 bytes
/// through node 1's pass (route, policy, encapsulation[, seal]) and node
/// 2's ([open,] decapsulation, policy, delivery), per frame, with and
/// without WireGuard, and the ratio — both measured in the same run.
/// `cargo test --release -p weir-dataplane --test pass_wireguard pass_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn pass_cost_encrypted_vs_plain() {
    let frame = pod_frame(1, 2, 1000);
    let n = 200_000u32;
    let mut buf = vec![0u8; UMEM];
    let mut time = |n1: &mut Node, n2: &mut Node| {
        let t = std::time::Instant::now();
        for _ in 0..n {
            buf[..frame.len()].copy_from_slice(&frame);
            let Verdict::Tx { len, .. } = process(&mut buf, frame.len(), POD, &n1.snap, &mut n1.st)
            else {
                panic!("not sent")
            };
            let v = process(&mut buf, len, UNDERLAY, &n2.snap, &mut n2.st);
            assert!(matches!(v, Verdict::Tx { port: POD, .. }), "{v:?}");
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let (mut p1, mut p2) = (
        Node {
            snap: snap(1, 2),
            st: WorkerState::new(),
        },
        Node {
            snap: snap(2, 1),
            st: WorkerState::new(),
        },
    );
    let (mut w1, mut w2) = handshaken();
    // The workers' path: batches of 64, one lock per peer and batch.
    let (mut b1, mut b2) = handshaken();
    b1.st = b1.st.batch_wireguard();
    b2.st = b2.st.batch_wireguard();
    let (mut batch, mut mid) = (Batch::new(64), vec![vec![0u8; UMEM]; 64]);
    let mut time_batched = |n1: &mut Node, n2: &mut Node| {
        let t = std::time::Instant::now();
        for _ in 0..n / 64 {
            batch.load((0..64).map(|_| &frame[..]));
            batch.run(n1, 64, POD);
            for (i, m) in mid.iter_mut().enumerate() {
                let f = batch.frame(i);
                m[..f.len()].copy_from_slice(f);
                batch.lens[i] = f.len();
            }
            std::mem::swap(&mut batch.bufs, &mut mid);
            batch.run(n2, 64, UNDERLAY);
            assert!(matches!(batch.out[63], Verdict::Tx { port: POD, .. }));
        }
        t.elapsed().as_nanos() as f64 / f64::from(n / 64 * 64)
    };
    // Warm up all, then alternate to share the machine's noise.
    time(&mut p1, &mut p2);
    time(&mut w1, &mut w2);
    time_batched(&mut b1, &mut b2);
    let (mut plain, mut wg, mut wgb) = (0.0, 0.0, 0.0);
    for _ in 0..3 {
        plain += time(&mut p1, &mut p2) / 3.0;
        wg += time(&mut w1, &mut w2) / 3.0;
        wgb += time_batched(&mut b1, &mut b2) / 3.0;
    }
    println!(
        "1042-byte pod frame, node 1 pass + node 2 pass: plain {plain:.0} ns, WireGuard per-packet lock {wg:.0} ns (ratio {:.2}), WireGuard per-batch lock (64) {wgb:.0} ns (ratio {:.2}); batched / per-packet {:.3}",
        wg / plain,
        wgb / plain,
        wgb / wg
    );
}
