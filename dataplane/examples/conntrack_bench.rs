//! Conntrack micro-benchmark (run with --release; prints, never asserts):
//!
//!   cargo run --release -p weir-dataplane --example conntrack_bench [threads]
//!
//! - bytes per entry of the table;
//! - `track` (lookup + state update) per second per core, with 1k and 1M
//!   established flows, random order, on 1 and on `threads` cores sharing
//!   the table;
//! - inserts per second (new flows into an empty table);
//! - packets per second of the whole pass (parse → source → route → policy
//!   with conntrack → rewrite) on one core, with 1k and 1M flows;
//! - the pass in batches of 64 as the worker runs it, 1k / 100k / 1M flows,
//!   same-run comparisons in interleaved rounds (median [min–max]): with the
//!   conntrack prefetch stage ÷ without, and an established flow under an
//!   L3/L4 policy (ingress: UDP ports 53–68 from pod a) ÷ no policy loaded.
//!
//!   cargo run --release -p weir-dataplane --example conntrack_bench pass [rounds]
//!
//! runs only that comparison.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use weir_dataplane::conntrack::{Admission, Conntrack, Insert, Seg, Timeouts, Track};
use weir_dataplane::pass::{prefetch, process, FlowKey, WorkerState};
use weir_dataplane::policy::{
    CellSpec, Decision, Direction, EndpointTables, PolicySpec, RuleId, RuleInfo, Tier,
    IDENTITY_WORLD,
};
use weir_dataplane::{Endpoint, Port, Snapshot, SnapshotSpec, Verdict};

const NOW: u64 = 1_000_000_000;

fn key(i: u32) -> FlowKey {
    FlowKey {
        src: IpAddr::from([10, 1, (i >> 16) as u8, 1]),
        dst: IpAddr::from([10, 2, 0, 2]),
        proto: 17,
        sport: i as u16,
        dport: 53,
    }
}

fn rev(k: &FlowKey) -> FlowKey {
    FlowKey {
        src: k.dst,
        dst: k.src,
        proto: k.proto,
        sport: k.dport,
        dport: k.sport,
    }
}

fn adm() -> Admission {
    Admission {
        generation: 1,
        egress_rule: RuleId::DEFAULT_ALLOW,
        ingress_rule: RuleId::DEFAULT_ALLOW,
        audit: false,
    }
}

/// A random order over 0..n (xorshift shuffle; no dependency).
fn order(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn filled(flows: u32, size: usize) -> Conntrack {
    let ct = Conntrack::new(size, Timeouts::default());
    let mut full = 0;
    for i in 0..flows {
        let k = key(i);
        match ct.insert(&k, Seg::Other, adm(), NOW) {
            Insert::Inserted { .. } => {}
            _ => full += 1,
        }
        ct.track(&rev(&k), Seg::Other, 1, NOW);
    }
    if full > 0 {
        println!("  ({full} of {flows} flows refused: bucket full)");
    }
    ct
}

fn lookups(ct: &Conntrack, ord: &[u32], rounds: usize) -> f64 {
    let t = Instant::now();
    let mut hits = 0u64;
    for _ in 0..rounds {
        for &i in ord {
            if let Track::Pass { .. } = ct.track(&key(i), Seg::Other, 1, NOW + 1) {
                hits += 1;
            }
        }
    }
    let n = (rounds * ord.len()) as f64;
    std::hint::black_box(hits);
    n / t.elapsed().as_secs_f64()
}

/// Ingress policy on p1 (10.2.0.2): UDP 53–68 from p0 allowed, the rest denied.
fn l3l4_policy() -> PolicySpec {
    let deny = Decision::deny(RuleId::IMPLICIT_DENY);
    let allow = Decision::allow(RuleId(0));
    PolicySpec {
        generation: 1,
        rules: vec![RuleInfo {
            tier: Tier::Namespace,
            kind: "networkpolicies".into(),
            namespace: Some("default".into()),
            name: "dns-from-p0".into(),
            direction: Direction::Ingress,
            index: 0,
            action: "Allow".into(),
            priority: None,
        }],
        classes: vec![IDENTITY_WORLD, 256, 257],
        addresses: vec![([10, 1, 0, 1].into(), 1), ([10, 2, 0, 2].into(), 2)],
        prefixes: vec![],
        world_class: 0,
        cells: vec![
            CellSpec::uniform(deny),
            CellSpec {
                udp: vec![(0, deny), (53, allow), (69, deny)],
                ..CellSpec::uniform(deny)
            },
        ],
        tables: vec![vec![0, 1, 0]],
        endpoints: vec![
            EndpointTables::default(),
            EndpointTables {
                ingress: Some(0),
                egress: None,
            },
        ],
        ..Default::default()
    }
}

fn snapshot() -> Snapshot {
    snapshot_with(PolicySpec::default())
}

fn snapshot_with(policy: PolicySpec) -> Snapshot {
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
        policy,
        ..SnapshotSpec::default()
    })
    .unwrap()
}

/// A UDP frame 10.1.0.1:sport → 10.2.0.2:53 from port 0, 64 bytes.
fn frame() -> Vec<u8> {
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
    ip[12..16].copy_from_slice(&[10, 1, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 2, 0, 2]);
    let udp = &mut f[34..42];
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&30u16.to_be_bytes());
    f
}

fn pass_pps(flows: u32, size: usize) -> f64 {
    let snap = snapshot();
    let ct = Arc::new(Conntrack::new(size, Timeouts::default()));
    let mut st = WorkerState::with_shared(ct, Arc::default(), Arc::default());
    st.set_now(NOW);
    let pristine = frame();
    let mut buf = vec![0u8; 2048];
    let ord = order(flows, 7);
    // Flow i: source port i, destination port 53 + i / 65536.
    let mut run = |i: u32| {
        buf[..64].copy_from_slice(&pristine);
        buf[34..36].copy_from_slice(&(i as u16).to_be_bytes());
        buf[36..38].copy_from_slice(&(53 + (i >> 16) as u16).to_be_bytes());
        matches!(process(&mut buf, 64, 0, &snap, &mut st), Verdict::Tx { .. })
    };
    // The first round creates the entries and is not timed.
    for &i in &ord {
        run(i);
    }
    let rounds = (4_000_000 / flows).max(3);
    let t = Instant::now();
    let mut ok = 0u64;
    for _ in 0..rounds {
        for &i in &ord {
            ok += u64::from(run(i));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if ok != u64::from(rounds) * u64::from(flows) {
        println!("  (only {ok} forwarded)");
    }
    ok as f64 / secs
}

/// The pass over `flows` established flows in batches of 64 frames, as the
/// worker runs it.
struct Batched {
    snap: Snapshot,
    st: WorkerState,
    ord: Vec<u32>,
    bufs: Vec<Vec<u8>>,
}

/// The worker's batch size.
const BATCH: usize = 64;

impl Batched {
    fn new(flows: u32, size: usize, policy: PolicySpec) -> Self {
        let ct = Arc::new(Conntrack::new(size, Timeouts::default()));
        let mut st = WorkerState::with_shared(ct, Arc::default(), Arc::default());
        st.set_now(NOW);
        let mut b = Batched {
            snap: snapshot_with(policy),
            st,
            ord: order(flows, 7),
            bufs: vec![vec![0u8; 2048]; BATCH],
        };
        // The first round creates the entries and is not timed.
        b.round(false);
        b
    }

    /// One round over all flows; packets per second.
    fn round(&mut self, with_prefetch: bool) -> f64 {
        let pristine = frame();
        let t = Instant::now();
        let mut ok = 0u64;
        for chunk in self.ord.chunks(BATCH) {
            for (buf, &i) in self.bufs.iter_mut().zip(chunk) {
                buf[..64].copy_from_slice(&pristine);
                buf[34..36].copy_from_slice(&(i as u16).to_be_bytes());
                buf[36..38].copy_from_slice(&(53 + (i >> 16) as u16).to_be_bytes());
            }
            let batch = &mut self.bufs[..chunk.len()];
            if with_prefetch {
                for buf in batch.iter() {
                    prefetch(&buf[..64], &self.st);
                }
            }
            for buf in batch.iter_mut() {
                let v = process(buf, 64, 0, &self.snap, &mut self.st);
                ok += u64::from(matches!(v, Verdict::Tx { .. }));
            }
        }
        let secs = t.elapsed().as_secs_f64();
        if ok != self.ord.len() as u64 {
            println!("  (only {ok} of {} forwarded)", self.ord.len());
        }
        ok as f64 / secs
    }
}

fn stats(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!("{:.2} [{:.2}–{:.2}]", v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Interleaved rounds: (no policy, policy) × (without, with prefetch),
/// in a rotating order, several rounds per flow count.
fn compare(rounds: usize) {
    println!(
        "pass in batches of 64 (UDP 64 B, conntrack hit), 1 core, {rounds} interleaved rounds, median [min–max]:"
    );
    for (flows, size) in [
        (1_000u32, 262_144usize),
        (100_000, 262_144),
        (1_000_000, 2_097_152),
    ] {
        let mut none = Batched::new(flows, size, PolicySpec::default());
        let mut l3l4 = Batched::new(flows, size, l3l4_policy());
        // Repeat small tables so one sample is ≥ ~1M packets.
        let reps = (1_000_000 / flows).max(1);
        let mut pps: Vec<[f64; 4]> = Vec::new();
        let mut s: [Vec<f64>; 4] = Default::default();
        for r in 0..rounds {
            let mut got = [0f64; 4];
            for j in 0..4 {
                let m = (j + r) % 4;
                let (b, pf) = match m {
                    0 => (&mut none, false),
                    1 => (&mut none, true),
                    2 => (&mut l3l4, false),
                    _ => (&mut l3l4, true),
                };
                let mut sum = 0.0;
                for _ in 0..reps {
                    sum += b.round(pf);
                }
                got[m] = sum / reps as f64;
            }
            for m in 0..4 {
                s[m].push(got[m]);
            }
            pps.push(got);
        }
        let ratio = |a: usize, b: usize| -> Vec<f64> { pps.iter().map(|g| g[a] / g[b]).collect() };
        let mpps = |v: &Vec<f64>| -> Vec<f64> { v.iter().map(|x| x / 1e6).collect() };
        println!("  {flows} flows:");
        println!(
            "    Mpps: no policy {} | +prefetch {} | L3/L4 {} | L3/L4+prefetch {}",
            stats(&mut mpps(&s[0])),
            stats(&mut mpps(&s[1])),
            stats(&mut mpps(&s[2])),
            stats(&mut mpps(&s[3]))
        );
        println!(
            "    prefetch ÷ without: no policy {} | L3/L4 {}",
            stats(&mut ratio(1, 0)),
            stats(&mut ratio(3, 2))
        );
        println!(
            "    L3/L4 ÷ no policy: without prefetch {} | with {}",
            stats(&mut ratio(2, 0)),
            stats(&mut ratio(3, 1))
        );
    }
}

fn main() {
    let first = std::env::args().nth(1);
    if first.as_deref() == Some("pass") {
        let rounds = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(5);
        compare(rounds);
        return;
    }
    let threads: usize = first.and_then(|a| a.parse().ok()).unwrap_or(2);
    println!(
        "bytes per entry: {} (64-byte entry + tags and lock per 16-entry bucket)",
        Conntrack::bytes_per_entry()
    );

    for (flows, size) in [(1_000u32, 262_144usize), (1_000_000, 2_097_152)] {
        let ct = Arc::new(filled(flows, size));
        let ord = order(flows, 42);
        let rounds = (5_000_000 / flows as usize).max(3);
        let one = lookups(&ct, &ord, rounds);
        println!(
            "track, {flows} flows in a {size}-entry table, 1 core: {:.1} M/s",
            one / 1e6
        );
        let per: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let ct = Arc::clone(&ct);
                    let ord = order(flows, 1000 + t as u64);
                    s.spawn(move || lookups(&ct, &ord, rounds))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        println!(
            "track, {flows} flows, {threads} cores on the shared table: {} M/s per core",
            per.iter()
                .map(|r| format!("{:.1}", r / 1e6))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }

    let ct = Conntrack::new(2_097_152, Timeouts::default());
    let t = Instant::now();
    for i in 0..1_000_000u32 {
        ct.insert(&key(i), Seg::Other, adm(), NOW);
    }
    println!(
        "insert, 1M new flows into a 2M-entry table: {:.1} M/s",
        1e6 / t.elapsed().as_secs_f64() / 1e6
    );

    for (flows, size) in [(1_000u32, 262_144usize), (1_000_000, 2_097_152)] {
        println!(
            "pass (UDP 64 B, policy: none loaded, conntrack hit), {flows} flows: {:.2} Mpps on 1 core",
            pass_pps(flows, size) / 1e6
        );
    }
    compare(3);
}
