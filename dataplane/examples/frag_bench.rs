//! Fragment-path micro-benchmark (run with --release; prints, never asserts):
//!
//!   cargo run --release -p weir-dataplane --example frag_bench
//!
//! Packets per second of the whole pass on one core, 64-byte frames, for:
//! - whole UDP datagrams of one tracked flow (the baseline);
//! - later fragments of datagrams whose first was seen (fragment-table hit);
//! - first fragments of ever new datagrams (judged, conntrack hit,
//!   fragment-table insert, evicting the oldest once the table is full).
use std::time::Instant;

use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::{Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const NOW: u64 = 1_000_000_000;
const N: u32 = 2_000_000;

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
        endpoints: vec![ep(0, [10, 1, 0, 1]), ep(1, [10, 2, 0, 2])],
        ..SnapshotSpec::default()
    })
    .unwrap()
}

/// 10.1.0.1 → 10.2.0.2, 64 bytes: a UDP header to port 53 when `offset`
/// is 0; `more`: MF set.
fn frame(ident: u16, offset: u16, more: bool) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0xee, 0, 0, 0, 0]);
    f[6..12].copy_from_slice(&[0x0a, 0x58, 0, 0, 0, 0]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    let fl = (offset >> 3) | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&fl.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 1, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 2, 0, 2]);
    if offset == 0 {
        let udp = &mut f[34..42];
        udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        // A first fragment's UDP length covers the whole datagram.
        let len: u16 = if more { 1030 } else { 30 };
        udp[4..6].copy_from_slice(&len.to_be_bytes());
    }
    f
}

fn pps(st: &mut WorkerState, snap: &Snapshot, frames: impl Fn(u32) -> Vec<u8>) -> f64 {
    let mut buf = vec![0u8; 2048];
    let pre: Vec<Vec<u8>> = (0..1024).map(&frames).collect();
    let t = Instant::now();
    let mut ok = 0u64;
    for i in 0..N {
        let f = &pre[(i % 1024) as usize];
        buf[..64].copy_from_slice(f);
        ok += u64::from(matches!(
            process(&mut buf, 64, 0, snap, st),
            Verdict::Tx { .. }
        ));
    }
    let secs = t.elapsed().as_secs_f64();
    if ok != u64::from(N) {
        println!("  (only {ok} of {N} forwarded)");
    }
    ok as f64 / secs
}

fn main() {
    let snap = snapshot();
    let mut st = WorkerState::new();
    st.set_now(NOW);
    let whole = pps(&mut st, &snap, |_| frame(1, 0, false));
    println!("whole datagrams, tracked flow: {:.2} Mpps", whole / 1e6);

    // 1024 datagrams whose first fragment was seen; their later fragments.
    let mut st = WorkerState::new();
    st.set_now(NOW);
    let mut buf = vec![0u8; 2048];
    for id in 0..1024u16 {
        let f = frame(id, 0, true);
        buf[..64].copy_from_slice(&f);
        process(&mut buf, 64, 0, &snap, &mut st);
    }
    let later = pps(&mut st, &snap, |i| frame(i as u16, 1024, true));
    println!("later fragments (table hit): {:.2} Mpps", later / 1e6);

    // First fragments of new datagrams (identification cycles through
    // 65536 values: the 8192-entry table is full and evicts).
    let mut st = WorkerState::new();
    st.set_now(NOW);
    let mut buf = vec![0u8; 2048];
    let t = Instant::now();
    let mut ok = 0u64;
    let mut f = frame(0, 0, true);
    for i in 0..N {
        f[18..20].copy_from_slice(&(i as u16).to_be_bytes());
        buf[..64].copy_from_slice(&f);
        ok += u64::from(matches!(
            process(&mut buf, 64, 0, &snap, &mut st),
            Verdict::Tx { .. }
        ));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "first fragments of new datagrams: {:.2} Mpps ({ok} forwarded, {} evictions)",
        ok as f64 / secs / 1e6,
        st.ct_stats().frag_evictions.get()
    );
}
