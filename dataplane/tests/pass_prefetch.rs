//! Stage 0 (conntrack prefetch) on golden bytes: which frames it keys, and
//! that the pass judges a batch the same with and without it.
use std::sync::Arc;

use weir_dataplane::conntrack::{Conntrack, Timeouts};
use weir_dataplane::pass::{prefetch, prefetch_hint, process, FlowKey, WorkerState};
use weir_dataplane::{Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const A: [u8; 4] = [10, 1, 0, 1];
const B: [u8; 4] = [10, 2, 0, 2];

fn snapshot() -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: [2, 0xee, 0, 0, 0, i],
        mtu: 1500,
    };
    let ep = |i: u8, a: [u8; 4]| Endpoint {
        name: format!("default/p{i}"),
        port: u16::from(i),
        mac: [0x0a, 0x58, 0, 0, 0, i],
        ipv4: Some(a.into()),
        ipv6: None,
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "n".into(),
        ports: vec![port(0), port(1)],
        endpoints: vec![ep(0, A), ep(1, B)],
        ..SnapshotSpec::default()
    })
    .unwrap()
}

/// UDP A:sport → B:53 from port 0, 64 bytes (golden bytes, checksum 0).
fn udp(sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0xee, 0, 0, 0, 0]);
    f[6..12].copy_from_slice(&[0x0a, 0x58, 0, 0, 0, 0]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&A);
    ip[16..20].copy_from_slice(&B);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&53u16.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    f
}

fn key(sport: u16) -> FlowKey {
    FlowKey {
        src: A.into(),
        dst: B.into(),
        proto: 17,
        sport,
        dport: 53,
    }
}

fn state() -> WorkerState {
    let ct = Arc::new(Conntrack::new(4096, Timeouts::default()));
    let mut st = WorkerState::with_shared(ct, Arc::default(), Arc::default());
    st.set_now(1_000_000_000);
    st
}

#[test]
fn keys_the_frames_that_parse_and_skips_the_rest() {
    let st = state();
    let mut later_frag = udp(7);
    later_frag[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 128 B
    let mut not_ip = udp(8);
    not_ip[12..14].copy_from_slice(&[0x88, 0xcc]);
    let mut reply = udp(1);
    reply[26..30].copy_from_slice(&B);
    reply[30..34].copy_from_slice(&A);
    reply[34..36].copy_from_slice(&53u16.to_be_bytes());
    reply[36..38].copy_from_slice(&1u16.to_be_bytes());
    let rev = |k: FlowKey| FlowKey {
        src: k.dst,
        dst: k.src,
        proto: k.proto,
        sport: k.dport,
        dport: k.sport,
    };
    let table: Vec<(&str, Vec<u8>, Option<FlowKey>)> = vec![
        ("udp", udp(1), Some(key(1))),
        ("reply", reply, Some(rev(key(1)))),
        ("too short", udp(1)[..20].to_vec(), None),
        ("not IP", not_ip, None),
        ("later fragment", later_frag, None),
    ];
    for (name, frame, want) in &table {
        assert_eq!(prefetch(frame, &st), *want, "{name}");
    }
    // Both directions load the same lines.
    let ct = st.conntrack();
    assert_eq!(ct.prefetch(&key(1)), ct.prefetch(&rev(key(1))));
}

/// The same batch through the pass without the stage, with it, with its
/// hashes handed to the lookups, and with each frame handed the previous
/// frame's hint (a wrong key: ignored): the same verdicts, the same bytes
/// out, the same conntrack outcome.
#[test]
fn the_pass_judges_the_same_with_the_stage() {
    let snap = snapshot();
    let mut outs = Vec::new();
    for mode in ["without", "prefetch", "handoff", "wrong hints"] {
        let with = mode != "without";
        let mut st = state();
        let mut batch: Vec<Vec<u8>> = (0..40u16)
            .map(|i| {
                let mut f = udp(1000 + i % 20);
                f.resize(2048, 0);
                f
            })
            .collect();
        batch[5][14] = 0x46; // bad IHL: dropped by parse, either way
        let mut hints = Vec::new();
        if with {
            let keyed = batch.iter().filter_map(|f| prefetch(&f[..64], &st));
            assert_eq!(keyed.count(), 39);
            hints = batch.iter().map(|f| prefetch_hint(&f[..64], &st)).collect();
            assert_eq!(hints.iter().flatten().count(), 39);
        }
        let verdicts: Vec<Verdict> = batch
            .iter_mut()
            .enumerate()
            .map(|(i, f)| {
                let hint = match mode {
                    "handoff" => hints[i],
                    // Frame i - 1 has another source port (i % 20).
                    "wrong hints" => hints[(i + 39) % 40],
                    _ => None,
                };
                if let Some(h) = hint.filter(|_| mode == "wrong hints") {
                    assert_ne!(h.key().sport, 1000 + i as u16 % 20);
                }
                st.set_ct_hint(hint);
                process(f, 64, 0, &snap, &mut st)
            })
            .collect();
        assert!(matches!(verdicts[0], Verdict::Tx { .. }));
        assert!(matches!(verdicts[5], Verdict::Drop(_)));
        let live = st.conntrack().count(1_000_000_000);
        outs.push((verdicts, batch, live));
    }
    for (mode, out) in outs.iter().enumerate().skip(1) {
        assert_eq!(outs[0].0, out.0, "verdicts, mode {mode}");
        assert_eq!(outs[0].1, out.1, "bytes, mode {mode}");
    }
    assert!(outs.iter().all(|o| o.2 == 20));
}
