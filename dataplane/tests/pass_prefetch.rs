//! Stage 0 (conntrack prefetch) on golden bytes: which frames it keys, that
//! the pass judges a batch the same with and without it, and that its parse
//! is used only for the very bytes it parsed (a frame rewritten after it is
//! judged on its own bytes).
use std::sync::Arc;

use weir_dataplane::conntrack::{Conntrack, Timeouts};
use weir_dataplane::pass::{parse, prefetch, prefetch_hint, process, stage0, FlowKey, WorkerState};
use weir_dataplane::DropReason;
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
/// hashes handed to the lookups, with each frame handed the previous
/// frame's hint (a wrong key: ignored), with its hashes and parses handed
/// over as the worker does (lines loaded `STAGE0_LEAD` frames ahead, and
/// all up front), and with each frame handed the previous frame's parse
/// (other bytes: parsed again): the same verdicts, the same bytes out, the
/// same conntrack outcome.
#[test]
fn the_pass_judges_the_same_with_the_stage() {
    let snap = snapshot();
    let mut outs = Vec::new();
    let modes = [
        "without",
        "prefetch",
        "handoff",
        "wrong hints",
        "parse handoff",
        "parse handoff up front",
        "wrong parses",
    ];
    for mode in modes {
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
        // As the worker runs it: the whole batch first.
        if mode == "parse handoff up front" {
            st.set_stage0_lead(batch.len());
        }
        st.stage0_clear();
        if mode.starts_with("parse handoff") {
            for f in &batch {
                st.stage0_push(&f[..64]);
            }
        }
        let parses: Vec<_> = batch.iter().map(|f| stage0(&f[..64], &st)).collect();
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
                match mode {
                    "parse handoff" | "parse handoff up front" => st.stage0_for(Some(i)),
                    "wrong parses" => {
                        let other = parses[(i + 39) % 40];
                        if let Some(o) = &other {
                            assert_eq!(o.parsed_for(&f[..64]), None);
                        }
                        st.set_stage0(other)
                    }
                    _ => st.set_ct_hint(hint),
                }
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

/// TCP [2001:db8::1]:40000 → [2001:db8::2]:80 with these flags: 74 bytes,
/// the TCP flags at byte 67 (beyond the first part of the kept bytes).
fn tcp6(flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 74];
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&20u16.to_be_bytes());
    f[20] = 6;
    f[21] = 64;
    f[22..24].copy_from_slice(&[0x20, 0x01]);
    f[24..26].copy_from_slice(&[0x0d, 0xb8]);
    f[37] = 1;
    f[38..40].copy_from_slice(&[0x20, 0x01]);
    f[40..42].copy_from_slice(&[0x0d, 0xb8]);
    f[53] = 2;
    f[54..56].copy_from_slice(&40000u16.to_be_bytes());
    f[56..58].copy_from_slice(&80u16.to_be_bytes());
    f[66] = 0x50;
    f[67] = flags;
    f
}

/// Stage 0's parse is handed over only for the bytes it parsed: the same
/// frame gets exactly what `parse` gives; the same frame with any byte the
/// parse reads changed, or another length, gets nothing (parsed again).
/// Minimum-size, runt and IPv6 frames (whose parse reads past the first
/// part of the kept bytes) alike.
#[test]
fn a_parse_is_handed_over_for_the_same_bytes_only() {
    let st = state();
    let mut runt = udp(9)[..42].to_vec();
    runt[16..18].copy_from_slice(&28u16.to_be_bytes());
    runt[38..40].copy_from_slice(&8u16.to_be_bytes());
    let frames = [
        ("udp 64 B", udp(9)),
        ("runt 42 B", runt),
        ("tcp6", tcp6(0x02)),
    ];
    for (name, frame) in frames {
        let s = stage0(&frame, &st).expect(name);
        let std::ops::ControlFlow::Continue(want) = parse(&frame) else {
            panic!("{name}: parses");
        };
        assert_eq!(s.parsed_for(&frame), Some(want), "{name}");
        // Every byte from the EtherType to the end of the L4 header's
        // first 20 bytes (all the parse reads; the MAC addresses are not
        // parsed: changing them keeps it).
        for at in 12..frame.len().min(want.l4_offset + 20) {
            let mut other = frame.clone();
            other[at] ^= 0x20;
            assert_eq!(s.parsed_for(&other), None, "{name}: byte {at} changed");
        }
        let mut macs = frame.clone();
        macs[0] ^= 1;
        assert_eq!(s.parsed_for(&macs), Some(want), "{name}: MACs");
        assert_eq!(
            s.parsed_for(&frame[..frame.len() - 1]),
            None,
            "{name}: shorter"
        );
        let mut longer = frame.clone();
        longer.push(0);
        assert_eq!(s.parsed_for(&longer), None, "{name}: longer");
    }
    // The IPv6 frame's TCP flags are in the second part: a SYN's parse is
    // not handed to the ACK.
    let syn = stage0(&tcp6(0x02), &st).unwrap();
    assert_eq!(syn.parsed_for(&tcp6(0x10)), None);
}

/// A rewrite of a frame (returning the length to judge) and the verdict
/// its own bytes must get.
type Rewrite = (&'static str, fn(&mut [u8]) -> usize, fn(&Verdict) -> bool);

/// Frames rewritten between stage 0 and the pass (as a decapsulation, a
/// WireGuard open or any stage before parse could) are judged on their own
/// bytes, never on the stale parse: each verdict equals that of a pass
/// without stage 0 over the rewritten bytes, and differs from what the
/// stale parse would have given (forwarded to B).
#[test]
fn a_frame_rewritten_after_stage_0_is_judged_on_its_own_bytes() {
    let snap = snapshot();
    let rewrites: [Rewrite; 4] = [
        (
            "TTL 1: Time Exceeded",
            |f| {
                f[22] = 1;
                64
            },
            |v| {
                matches!(
                    v,
                    Verdict::Drop(DropReason::TtlExceeded) | Verdict::Tx { port: 0, .. }
                )
            },
        ),
        (
            "not IP any more",
            |f| {
                f[12..14].copy_from_slice(&[0x88, 0xcc]);
                64
            },
            |v| *v == Verdict::Drop(DropReason::UnsupportedEtherType),
        ),
        (
            "bad header length",
            |f| {
                f[14] = 0x4f;
                64
            },
            |v| matches!(v, Verdict::Drop(_)),
        ),
        (
            "shorter than its IP length",
            |_| 40,
            |v| matches!(v, Verdict::Drop(_)),
        ),
    ];
    for (name, rewrite, expected) in rewrites {
        // With stage 0 run on the frame as received, then the rewrite.
        let mut st = state();
        let mut f = udp(4242);
        f.resize(2048, 0);
        st.stage0_clear();
        st.stage0_push(&f[..64]);
        let len = rewrite(&mut f);
        st.stage0_for(Some(0));
        let with = process(&mut f, len, 0, &snap, &mut st);
        // Without: the same rewritten bytes, a fresh state.
        let mut st = state();
        let mut g = udp(4242);
        g.resize(2048, 0);
        let len = rewrite(&mut g);
        let without = process(&mut g, len, 0, &snap, &mut st);
        assert_eq!(with, without, "{name}");
        assert_eq!(f, g, "{name}: bytes");
        assert!(expected(&with), "{name}: {with:?}");
        assert!(!matches!(with, Verdict::Tx { port: 1, .. }), "{name}");
    }
}
