//! ClusterIP vs pod IP through the pass (run with --release; prints, never
//! asserts):
//!
//!   cargo run --release -p weir-dataplane --example service_bench [rounds]
//!   ... service_bench ROUNDS pod-ip|cluster-ip   (one side only, to profile)
//!
//! One worker's pass on one core, UDP from pod a to pod b: straight to b's
//! address, and to a ClusterIP whose one backend is b (DNAT, NAT-table
//! lookups, checksum rewrite), over 256 established flows each, rounds
//! interleaved. Prints packets/s per round and the ratio ClusterIP ÷ pod IP
//! as median [min–max] (issue 12's goal: ≥ 0.95), per second of wall time
//! and per second of the thread's CPU time (the latter holds up on a
//! machine shared with builds).
use std::net::IpAddr;
use std::time::Instant;

use etherparse::PacketBuilder;
use weir_dataplane::pass::{process, WorkerState};
use weir_dataplane::snapshot::{ServiceBackend, ServiceFrontend};
use weir_dataplane::{Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const UMEM: usize = 2048;
const FLOWS: u16 = 256;
const PACKETS: u32 = 400_000;

fn snap() -> Snapshot {
    let port = |i: u8| Port {
        name: format!("veth{i}"),
        mac: [0x02, 0xee, 0, 0, 0, i],
        mtu: 1500,
    };
    let ep = |i: u8, name: &str| Endpoint {
        name: format!("default/{name}"),
        port: u16::from(i),
        mac: [0x0a, 0x58, 0, 0, 0, i],
        ipv4: Some([10, 1, 0, i + 1].into()),
        ipv6: None,
    };
    let front = ServiceFrontend {
        service: "default/web".into(),
        port_name: None,
        ip: "10.96.0.10".parse().unwrap(),
        proto: 17,
        port: 80,
        backends: vec![ServiceBackend {
            pod: "default/b".into(),
            ip: IpAddr::from([10, 1, 0, 2]),
            port: 8080,
            active: true,
        }],
        affinity_timeout_s: None,
        node_port: None,
        external_local: false,
        internal_local: false,
        external: false,
    };
    Snapshot::build(SnapshotSpec {
        generation: 1,
        node: "node-1".into(),
        node_ipv4: Some([10, 0, 0, 10].into()),
        ports: vec![port(0), port(1)],
        endpoints: vec![ep(0, "a"), ep(1, "b")],
        services: vec![front],
        ..Default::default()
    })
    .expect("snapshot")
}

fn frame(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([0x0a, 0x58, 0, 0, 0, 0], [0x02, 0xee, 0, 0, 0, 0])
        .ipv4([10, 1, 0, 1], dst, 64)
        .udp(sport, dport)
        .write(&mut out, &[0u8; 22])
        .expect("frame");
    out
}

/// This thread's CPU time (ns): what the pass used, whatever else the
/// machine runs (the wall clock counts the time this thread waited for its
/// core too).
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Packets per second of `frames` (cycled) through the pass: per second
/// of wall time and per second of this thread's CPU time. The pass's clock
/// advances per batch of 64, as the worker sets it.
fn rate(frames: &[Vec<u8>], s: &Snapshot, st: &mut WorkerState, epoch: Instant) -> (f64, f64) {
    let mut buf = vec![0u8; UMEM];
    let cpu = thread_cpu_ns();
    let t = Instant::now();
    for i in 0..PACKETS {
        if i % 64 == 0 {
            st.set_now(1_000_000_000 + epoch.elapsed().as_nanos() as u64);
        }
        let f = &frames[i as usize % frames.len()];
        buf[..f.len()].copy_from_slice(f);
        let v = process(&mut buf, f.len(), 0, s, st);
        assert!(matches!(v, Verdict::Tx { port: 1, .. }), "{v:?}");
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ns().saturating_sub(cpu)) as f64 / 1e9;
    (
        f64::from(PACKETS) / wall,
        f64::from(PACKETS) / cpu.max(1e-9),
    )
}

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let s = snap();
    let epoch = Instant::now();
    let mut st = WorkerState::new();
    let direct: Vec<_> = (0..FLOWS)
        .map(|i| frame([10, 1, 0, 2], 20000 + i, 8080))
        .collect();
    let cluster: Vec<_> = (0..FLOWS)
        .map(|i| frame([10, 96, 0, 10], 30000 + i, 80))
        .collect();
    // Warm up: every flow established (conntrack, NAT entries).
    rate(&direct, &s, &mut st, epoch);
    rate(&cluster, &s, &mut st, epoch);
    // `service_bench N pod-ip|cluster-ip`: one side only, N rounds (to
    // profile it alone: `perf stat` / `perf record`).
    if let Some(only) = std::env::args().nth(2) {
        let frames = match only.as_str() {
            "pod-ip" => &direct,
            "cluster-ip" => &cluster,
            _ => panic!("second argument: pod-ip or cluster-ip"),
        };
        for r in 0..rounds {
            let (w, c) = rate(frames, &s, &mut st, epoch);
            println!("round {r}: {only} {w:.0} pps ({c:.0} per CPU second)");
        }
        return;
    }
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let (d, c) = if r % 2 == 0 {
            let d = rate(&direct, &s, &mut st, epoch);
            (d, rate(&cluster, &s, &mut st, epoch))
        } else {
            let c = rate(&cluster, &s, &mut st, epoch);
            (rate(&direct, &s, &mut st, epoch), c)
        };
        println!(
            "round {r}: pod IP {:.0} pps, ClusterIP {:.0} pps, ratio {:.3}; per CPU second: {:.0} / {:.0}, ratio {:.3}",
            d.0,
            c.0,
            c.0 / d.0,
            d.1,
            c.1,
            c.1 / d.1
        );
        ratios.push(c.0 / d.0);
        cpu_ratios.push(c.1 / d.1);
    }
    let (m, lo, hi) = median_range(ratios);
    println!("ClusterIP ÷ pod IP through the pass: {m:.3} [{lo:.3}–{hi:.3}] over {rounds} rounds");
    let (m, lo, hi) = median_range(cpu_ratios);
    println!("ClusterIP ÷ pod IP per CPU second:    {m:.3} [{lo:.3}–{hi:.3}] over {rounds} rounds");
}
