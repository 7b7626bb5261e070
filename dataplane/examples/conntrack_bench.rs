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
//! - the pass in batches of 64 as the worker runs it, 1k / 10k / 30k / 100k / 1M flows,
//!   same-run comparisons in interleaved rounds (median [min–max]): with the
//!   conntrack prefetch stage ÷ without (and with the stage's hash handed
//!   to the lookup ÷ hashed again, and its parse handed to the pass's
//!   stage 2 ÷ parsed again), the table on huge pages ÷ on 4 KiB
//!   pages, an established flow under an L3/L4 policy (ingress: UDP ports
//!   53–68 from pod a) ÷ no policy loaded, and 1M flows ÷ 1k flows per
//!   round.
//!
//!   cargo run --release -p weir-dataplane --example conntrack_bench pass [rounds]
//!
//! runs only that comparison;
//!
//!   conntrack_bench mem [rounds]
//!
//! reads cache lines at random from a table of the 1M-flow table's size,
//! on huge and on 4 KiB pages (dependent reads: the latency of one line;
//! independent reads: what a batch's prefetch can overlap), beside the
//! same reads over 1k flows' worth of lines; and
//!
//!   conntrack_bench one FLOWS huge|small parse|handoff|prefetch|plain [seconds]
//!
//! runs one configuration of the pass for a while (for `perf stat` /
//! `perf record` of one configuration).
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use weir_dataplane::conntrack::{Admission, Conntrack, Insert, Seg, Timeouts, Track};
use weir_dataplane::pass::{prefetch_hint, process, FlowKey, WorkerState, STAGE0_LEAD};
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

/// `AnonHugePages` of the whole process (`/proc/self/smaps_rollup`), kB.
fn anon_huge_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
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

/// What runs before the batch is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage0 {
    Off,
    /// Prefetch, the lookup hashing the key again (before the handoff).
    Prefetch,
    /// Prefetch, its hash handed to the lookup (before the parse handoff).
    Handoff,
    /// Prefetch, its hash handed to the lookup and its parse to stage 2
    /// (what the worker runs: the lines loaded `STAGE0_LEAD` frames ahead).
    Parse,
    /// [`Stage0::Parse`] with the whole batch's lines loaded up front (as
    /// before stage 0 was pipelined).
    Upfront,
}

const STAGE0: [Stage0; 5] = [
    Stage0::Off,
    Stage0::Prefetch,
    Stage0::Handoff,
    Stage0::Parse,
    Stage0::Upfront,
];
/// Configurations of stage 0 per table.
const S0: usize = STAGE0.len();

impl Batched {
    fn new(flows: u32, size: usize, huge: bool, policy: PolicySpec) -> Self {
        let ct = Arc::new(Conntrack::with_huge_pages(size, Timeouts::default(), huge));
        let mut st = WorkerState::with_shared(ct, Arc::default(), Arc::default());
        st.set_now(NOW);
        let mut b = Batched {
            snap: snapshot_with(policy),
            st,
            ord: order(flows, 7),
            bufs: vec![vec![0u8; 2048]; BATCH],
        };
        // The first round creates the entries and is not timed.
        b.round(Stage0::Off);
        b
    }

    /// One round over all flows; packets per second of this thread's CPU
    /// time (time the thread was descheduled does not count: on a shared
    /// machine wall-clock rates varied by ±30 % between neighbouring
    /// rounds; contention for the shared cache still counts).
    fn round(&mut self, stage0: Stage0) -> f64 {
        let pristine = frame();
        let t = thread_cpu_ns();
        let mut ok = 0u64;
        for chunk in self.ord.chunks(BATCH) {
            for (buf, &i) in self.bufs.iter_mut().zip(chunk) {
                buf[..64].copy_from_slice(&pristine);
                buf[34..36].copy_from_slice(&(i as u16).to_be_bytes());
                buf[36..38].copy_from_slice(&(53 + (i >> 16) as u16).to_be_bytes());
            }
            let batch = &mut self.bufs[..chunk.len()];
            if matches!(stage0, Stage0::Parse | Stage0::Upfront) {
                // As the worker runs it.
                self.st.set_stage0_lead(if stage0 == Stage0::Upfront {
                    BATCH
                } else {
                    STAGE0_LEAD
                });
                self.st.stage0_clear();
                for buf in batch.iter() {
                    self.st.stage0_push(&buf[..64]);
                }
                for (i, buf) in batch.iter_mut().enumerate() {
                    self.st.stage0_for(Some(i));
                    let v = process(buf, 64, 0, &self.snap, &mut self.st);
                    ok += u64::from(matches!(v, Verdict::Tx { .. }));
                }
                continue;
            }
            let mut hints = [None; BATCH];
            if stage0 != Stage0::Off {
                for (h, buf) in hints.iter_mut().zip(batch.iter()) {
                    *h = prefetch_hint(&buf[..64], &self.st);
                }
            }
            for (buf, h) in batch.iter_mut().zip(hints) {
                // Stage0::Prefetch: the lookup hashes again, as before
                // the handoff.
                self.st
                    .set_ct_hint(if stage0 == Stage0::Handoff { h } else { None });
                let v = process(buf, 64, 0, &self.snap, &mut self.st);
                ok += u64::from(matches!(v, Verdict::Tx { .. }));
            }
        }
        let secs = (thread_cpu_ns().saturating_sub(t)) as f64 / 1e9;
        if ok != self.ord.len() as u64 {
            println!("  (only {ok} of {} forwarded)", self.ord.len());
        }
        ok as f64 / secs.max(1e-9)
    }
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn stats(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!("{:.2} [{:.2}–{:.2}]", v[v.len() / 2], v[0], v[v.len() - 1])
}

/// The flow counts compared, and their table sizes: 1k, 10k and 100k
/// flows in the default table, 30k in a quarter of it, 1M in a 2M table.
/// The first is the "1k" and the last the "1M" of the ratios below. The
/// worker's flow census (`--ct-prefetch auto`) runs stage 0 from
/// `CENSUS_ON_FLOWS` distinct flows: not at 1k, at 10k and above.
const SIZES: [(u32, usize); 5] = [
    (1_000, 262_144),
    (10_000, 262_144),
    (30_000, 65_536),
    (100_000, 262_144),
    (1_000_000, 2_097_152),
];

/// Interleaved rounds: per flow count, (4 KiB pages, huge pages) × (no
/// policy, L3/L4 policy) × (the four [`Stage0`]s), all 48 in a rotating
/// order in each round, so that every ratio is taken within one round.
fn compare(rounds: usize) {
    println!(
        "pass in batches of 64 (UDP 64 B, conntrack hit), 1 core, {rounds} interleaved rounds, median [min–max], rates per second of the thread's CPU time:"
    );
    let before = anon_huge_kb();
    // cfg index: f * 4 + huge * 2 + policy; each run with the three stage 0s.
    // Built huge-page tables first, the largest first: they need free
    // 2 MiB blocks, which the small-page tables' faults would eat.
    let mut built: Vec<Option<Batched>> = (0..SIZES.len() * 4).map(|_| None).collect();
    for huge in [true, false] {
        for (f, &(flows, size)) in SIZES.iter().enumerate().rev() {
            for pol in [false, true] {
                let p = if pol {
                    l3l4_policy()
                } else {
                    PolicySpec::default()
                };
                built[f * 4 + usize::from(huge) * 2 + usize::from(pol)] =
                    Some(Batched::new(flows, size, huge, p));
            }
        }
    }
    let mut tables: Vec<Batched> = built.into_iter().flatten().collect();
    println!(
        "  AnonHugePages of the process: {} kB before the tables, {} kB with them",
        before.unwrap_or(0),
        anon_huge_kb().unwrap_or(0)
    );
    for (f, &(flows, size)) in SIZES.iter().enumerate() {
        for (huge, pol) in [(false, false), (true, false), (true, true)] {
            let ct = tables[f * 4 + usize::from(huge) * 2 + usize::from(pol)]
                .st
                .conntrack();
            println!(
                "  {flows} flows, {size}-entry table ({} MB), huge pages asked: {huge} (L3/L4 run: {pol}): {:?}, {} MB on huge pages",
                (ct.capacity() * Conntrack::bytes_per_entry()) >> 20,
                ct.table_pages(),
                ct.huge_page_bytes().unwrap_or(0) >> 20
            );
        }
    }
    // pps[round][table * S0 + stage 0]
    let n = tables.len() * S0;
    let mut pps: Vec<Vec<f64>> = Vec::new();
    for r in 0..rounds {
        let mut got = vec![0f64; n];
        for j in 0..n {
            let m = (j + r * 7) % n;
            let b = &mut tables[m / S0];
            // Repeat small tables so one sample is ≥ ~1M packets.
            let reps = (1_000_000 / b.ord.len()).max(1);
            let mut sum = 0.0;
            for _ in 0..reps {
                sum += b.round(STAGE0[m % S0]);
            }
            got[m] = sum / reps as f64;
        }
        pps.push(got);
    }
    // Measurement index of (flow count, huge, policy, stage 0: 0 off, 1
    // prefetch, 2 prefetch + hash handoff, 3 + parse handoff).
    let ix = |f: usize, huge: bool, pol: bool, s0: usize| {
        (f * 4 + usize::from(huge) * 2 + usize::from(pol)) * S0 + s0
    };
    let ratio = |a: usize, b: usize| -> Vec<f64> { pps.iter().map(|g| g[a] / g[b]).collect() };
    let mpps = |a: usize| -> Vec<f64> { pps.iter().map(|g| g[a] / 1e6).collect() };
    let pages = |huge: bool| if huge { "huge pages" } else { "4 KiB pages" };
    for (f, &(flows, _)) in SIZES.iter().enumerate() {
        println!("  {flows} flows:");
        for huge in [false, true] {
            for pol in [false, true] {
                println!(
                    "    Mpps, {}, {}: no stage 0 {} | prefetch {} | prefetch+handoff {} | +parse handoff {} | the same up front {}",
                    pages(huge),
                    if pol { "L3/L4" } else { "no policy" },
                    stats(&mut mpps(ix(f, huge, pol, 0))),
                    stats(&mut mpps(ix(f, huge, pol, 1))),
                    stats(&mut mpps(ix(f, huge, pol, 2))),
                    stats(&mut mpps(ix(f, huge, pol, 3))),
                    stats(&mut mpps(ix(f, huge, pol, 4)))
                );
            }
        }
        for huge in [false, true] {
            println!(
                "    {}, no policy: prefetch ÷ none {} | prefetch+handoff ÷ none {} | handoff ÷ prefetch {} | +parse handoff ÷ none {} | parse handoff ÷ hash handoff {}",
                pages(huge),
                stats(&mut ratio(ix(f, huge, false, 1), ix(f, huge, false, 0))),
                stats(&mut ratio(ix(f, huge, false, 2), ix(f, huge, false, 0))),
                stats(&mut ratio(ix(f, huge, false, 2), ix(f, huge, false, 1))),
                stats(&mut ratio(ix(f, huge, false, 3), ix(f, huge, false, 0))),
                stats(&mut ratio(ix(f, huge, false, 3), ix(f, huge, false, 2)))
            );
        }
        println!(
            "    pipelined (lines {STAGE0_LEAD} frames ahead) ÷ up front (the whole batch's), +parse handoff, no policy: 4 KiB pages {} | huge pages {}; pipelined ÷ none, huge pages {}",
            stats(&mut ratio(ix(f, false, false, 3), ix(f, false, false, 4))),
            stats(&mut ratio(ix(f, true, false, 3), ix(f, true, false, 4))),
            stats(&mut ratio(ix(f, true, false, 3), ix(f, true, false, 0)))
        );
        println!(
            "    huge ÷ 4 KiB pages, no policy: no stage 0 {} | prefetch {} | prefetch+handoff {}",
            stats(&mut ratio(ix(f, true, false, 0), ix(f, false, false, 0))),
            stats(&mut ratio(ix(f, true, false, 1), ix(f, false, false, 1))),
            stats(&mut ratio(ix(f, true, false, 2), ix(f, false, false, 2)))
        );
        println!(
            "    L3/L4 ÷ no policy, huge pages: no stage 0 {} | prefetch+handoff {} | +parse handoff {}",
            stats(&mut ratio(ix(f, true, true, 0), ix(f, true, false, 0))),
            stats(&mut ratio(ix(f, true, true, 2), ix(f, true, false, 2))),
            stats(&mut ratio(ix(f, true, true, 3), ix(f, true, false, 3)))
        );
    }
    let big = SIZES.len() - 1;
    println!("  1M flows ÷ 1k flows, per round:");
    for huge in [false, true] {
        println!(
            "    {}, same stage 0 both: none {} | prefetch {} | prefetch+handoff {} | +parse handoff {}",
            pages(huge),
            stats(&mut ratio(ix(big, huge, false, 0), ix(0, huge, false, 0))),
            stats(&mut ratio(ix(big, huge, false, 1), ix(0, huge, false, 1))),
            stats(&mut ratio(ix(big, huge, false, 2), ix(0, huge, false, 2))),
            stats(&mut ratio(ix(big, huge, false, 3), ix(0, huge, false, 3)))
        );
    }
    // As the worker runs it: stage 0 where its flow census turns it on
    // (uniform traffic over this many flows; huge pages).
    let pays = |f: usize| u64::from(SIZES[f].0) >= weir_dataplane::pass::CENSUS_ON_FLOWS;
    let s0 = |f: usize| if pays(f) { 3 } else { 0 };
    println!(
        "    as the worker runs it (--ct-prefetch auto: stage 0 at 1k flows {}, at 1M {}; huge pages): no policy {} | L3/L4 {}",
        pays(0),
        pays(big),
        stats(&mut ratio(ix(big, true, false, s0(big)), ix(0, true, false, s0(0)))),
        stats(&mut ratio(ix(big, true, true, s0(big)), ix(0, true, true, s0(0))))
    );
    // As the worker ran it before: stage 0 on the 1M table only (before
    // the parse handoff: hash handoff only).
    println!(
        "    1M with stage 0 ÷ 1k without (the worker with stage 0 on 1M tables only, and now by its flow census), huge pages: hash handoff no policy {} | L3/L4 {}; + parse handoff, up front: no policy {} | L3/L4 {}; pipelined: no policy {} | L3/L4 {}",
        stats(&mut ratio(ix(big, true, false, 2), ix(0, true, false, 0))),
        stats(&mut ratio(ix(big, true, true, 2), ix(0, true, true, 0))),
        stats(&mut ratio(ix(big, true, false, 4), ix(0, true, false, 0))),
        stats(&mut ratio(ix(big, true, true, 4), ix(0, true, true, 0))),
        stats(&mut ratio(ix(big, true, false, 3), ix(0, true, false, 0))),
        stats(&mut ratio(ix(big, true, true, 3), ix(0, true, true, 0)))
    );
    println!(
        "    if stage 0 (pipelined) ran on every table (1M ÷ 1k, both with it, huge pages): no policy {} | L3/L4 {}",
        stats(&mut ratio(ix(big, true, false, 3), ix(0, true, false, 3))),
        stats(&mut ratio(ix(big, true, true, 3), ix(0, true, true, 3)))
    );
}

/// Random cache-line reads over `lines` lines of a table (huge pages or
/// not), `n` of them: ns per line, dependent (each address from the
/// previous line) and independent (batches of 64 prefetched, then read).
fn mem_probe(lines: usize, huge: bool, n: usize) -> (f64, f64) {
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct L([u64; 8]);
    let mut t = weir_dataplane::table_mem::TableMem::new(lines, huge, || L([0; 8]));
    // One cycle through all lines in a random order, for the dependent chase.
    let ord = order(lines as u32, 11);
    for w in 0..lines {
        t[ord[w] as usize].0[0] = u64::from(ord[(w + 1) % lines]);
    }
    let t0 = Instant::now();
    let mut at = ord[0] as usize;
    for _ in 0..n {
        at = t[at].0[0] as usize;
    }
    let dep = t0.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(at);
    let idx = order(lines as u32, 13);
    let t0 = Instant::now();
    let mut sum = 0u64;
    let mut k = 0usize;
    for _ in 0..n / 64 {
        let batch = &idx[k..k + 64];
        k = (k + 64) % (lines - 64).max(1);
        for &i in batch {
            weir_dataplane::prefetch::prefetch_at(&t[i as usize], 0);
        }
        for &i in batch {
            sum = sum.wrapping_add(t[i as usize].0[1]);
        }
    }
    let ind = t0.elapsed().as_nanos() as f64 / (n / 64 * 64) as f64;
    std::hint::black_box(sum);
    (dep, ind)
}

fn mem(rounds: usize) {
    // The 1M-flow table's bytes, in lines; 1k flows touch ~2k lines.
    let big = 2_097_152 / 16 * 17;
    println!(
        "random cache-line reads, ns per line, median [min–max] of {rounds} interleaved rounds:"
    );
    let cfgs = [(2_000, false), (big, false), (big, true)];
    let mut got: Vec<[Vec<f64>; 2]> = vec![Default::default(); cfgs.len()];
    for r in 0..rounds {
        for j in 0..cfgs.len() {
            let c = (j + r) % cfgs.len();
            let (lines, huge) = cfgs[c];
            let (d, i) = mem_probe(lines, huge, 4_000_000);
            got[c][0].push(d);
            got[c][1].push(i);
        }
    }
    for (c, &(lines, huge)) in cfgs.iter().enumerate() {
        println!(
            "  {} MB, {}: dependent {} | 64 prefetched then read {}",
            (lines * 64) >> 20,
            if huge { "huge pages" } else { "4 KiB pages" },
            stats(&mut got[c][0]),
            stats(&mut got[c][1])
        );
    }
}

/// One configuration for `secs` seconds (for perf): prints packets and Mpps.
fn one(flows: u32, huge: bool, stage0: Stage0, secs: f64) {
    let size = SIZES
        .iter()
        .find(|&&(f, _)| f == flows)
        .map_or(2_097_152, |&(_, s)| s);
    let mut b = Batched::new(flows, size, huge, PolicySpec::default());
    let ct = b.st.conntrack();
    println!(
        "{flows} flows, {size}-entry table: {:?}, {} MB on huge pages; AnonHugePages {} kB",
        ct.table_pages(),
        ct.huge_page_bytes().unwrap_or(0) >> 20,
        anon_huge_kb().unwrap_or(0)
    );
    let t = Instant::now();
    let cpu = thread_cpu_ns();
    let mut packets = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        b.round(stage0);
        packets += u64::from(flows);
    }
    println!(
        "{packets} packets, {:.2} Mpps, {:.2} Mpps per CPU second",
        packets as f64 / t.elapsed().as_secs_f64() / 1e6,
        packets as f64 / ((thread_cpu_ns() - cpu) as f64 / 1e9) / 1e6
    );
}

fn main() {
    let first = std::env::args().nth(1);
    let arg = |i: usize| std::env::args().nth(i);
    if first.as_deref() == Some("mem") {
        mem(arg(2).and_then(|a| a.parse().ok()).unwrap_or(5));
        return;
    }
    if first.as_deref() == Some("one") {
        let flows = arg(2).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
        let huge = arg(3).as_deref() != Some("small");
        let stage0 = match arg(4).as_deref() {
            Some("plain") => Stage0::Off,
            Some("prefetch") => Stage0::Prefetch,
            Some("parse") => Stage0::Parse,
            Some("upfront") => Stage0::Upfront,
            Some("handoff") => Stage0::Handoff,
            _ => Stage0::Parse,
        };
        let secs = arg(5).and_then(|a| a.parse().ok()).unwrap_or(10.0);
        one(flows, huge, stage0, secs);
        return;
    }
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
