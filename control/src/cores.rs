//! `weir cores`: where the dataplane's workers run, how their time is spent,
//! and advice on `--cores` / `--poll` (rules in docs/observability.md).
//!
//! Two samples a window apart of: every node's status (the workers' time
//! accounting, `WorkerTime`), `/proc/stat` (each CPU's busy jiffies) and
//! `/proc/softirqs` (NET_RX per CPU: where the kernel's packet work for the
//! veths and NICs lands). Everything is computed from the deltas by
//! [`analyse`], a pure function the unit tests drive with made-up samples.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use weir_model::ipc::ClusterStatus;
use weir_model::status::{PollMode, WorkerStatus};

/// A worker spinning in empty rounds at least this share of its time in
/// busy-poll mode is told to use adaptive.
pub const SPIN_IDLE_PCT: f64 = 50.0;
/// Work on a worker's core that is not a weir worker's, from this share of
/// the core, makes the core "shared"...
pub const SHARED_OTHER_PCT: f64 = 30.0;
/// ...when a core without a worker is busy at least this much less.
pub const MOVE_MARGIN_PCT: f64 = 20.0;
/// A worker's core taking at least this share of the host's NET_RX softirqs
/// (with at least [`NET_RX_MIN_RATE`] per second) shares it with the load.
pub const NET_RX_SHARE_PCT: f64 = 75.0;
pub const NET_RX_MIN_RATE: f64 = 1000.0;
/// A worker busy this share of its time, or taking whole batches in this
/// share of its busy rounds, is saturated.
pub const SATURATED_BUSY_PCT: f64 = 80.0;
pub const SATURATED_FULL_PCT: f64 = 50.0;
/// A core without a worker busy less than this has room for one.
pub const SPARE_CORE_BUSY_PCT: f64 = 50.0;

/// Per CPU: (busy jiffies, total jiffies) from `/proc/stat`.
pub type CpuTimes = BTreeMap<usize, (u64, u64)>;

/// One sample of everything `weir cores` compares.
#[derive(Debug, Clone)]
pub struct Sample {
    pub status: ClusterStatus,
    pub cpus: CpuTimes,
    /// NET_RX softirqs per CPU.
    pub net_rx: BTreeMap<usize, u64>,
}

impl Sample {
    /// Reads the host's counters and the cluster's status now.
    pub fn take(status: ClusterStatus) -> anyhow::Result<Sample> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let soft = std::fs::read_to_string("/proc/softirqs")?;
        Ok(Sample {
            status,
            cpus: parse_proc_stat(&stat),
            net_rx: parse_net_rx(&soft),
        })
    }
}

/// Takes a sample, waits `window`, takes another, and analyses them.
pub fn measure(
    get: impl Fn() -> anyhow::Result<ClusterStatus>,
    window: Duration,
    node: Option<&str>,
) -> anyhow::Result<Report> {
    let a = Sample::take(get()?)?;
    std::thread::sleep(window);
    let b = Sample::take(get()?)?;
    Ok(analyse(&a, &b, node))
}

/// `cpuN user nice system idle iowait irq softirq steal ...` lines: busy is
/// everything but idle and iowait.
pub fn parse_proc_stat(text: &str) -> CpuTimes {
    let mut out = CpuTimes::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(cpu) = name.strip_prefix("cpu").and_then(|n| n.parse().ok()) else {
            continue;
        };
        // guest and guest_nice are already inside user and nice.
        let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 5 {
            continue;
        }
        let total: u64 = v.iter().sum();
        let idle = v[3] + v[4];
        out.insert(cpu, (total - idle, total));
    }
    out
}

/// The `NET_RX:` line of `/proc/softirqs`, per CPU (columns from the
/// `CPU0 CPU1 ...` header).
pub fn parse_net_rx(text: &str) -> BTreeMap<usize, u64> {
    let mut lines = text.lines();
    let cpus: Vec<usize> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|c| c.strip_prefix("CPU").and_then(|n| n.parse().ok()))
        .collect();
    for line in lines {
        let mut f = line.split_whitespace();
        if f.next() != Some("NET_RX:") {
            continue;
        }
        return cpus
            .iter()
            .copied()
            .zip(f.filter_map(|x| x.parse::<u64>().ok()))
            .collect();
    }
    BTreeMap::new()
}

/// What `weir cores` prints (`-o json` is this).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub window_ms: u64,
    pub workers: Vec<WorkerReport>,
    pub cores: Vec<CoreReport>,
    pub advice: Vec<Advice>,
    /// The nodes' interfaces: IRQ affinity and RPS masks ([`interfaces`]).
    pub interfaces: Vec<IfaceReport>,
    /// How idle cores wait here ([`IdleCores::read`]).
    pub idle: IdleCores,
}

pub use weir_model::status::{IdleCores, GUEST_HALT_POLL};

/// A worker sleeping at least this share of its time is woken often
/// enough for the idle advice ([`idle_advice`]).
pub const SLEEPING_PCT: f64 = 10.0;

/// On a VM guest whose idle vCPUs halt at once (cpuidle-haltpoll with
/// `guest_halt_poll_ns` 0), every wake-up of a sleeping worker's core, and
/// of the core the pods' receive work is steered to, is a VM exit: tens of
/// µs a request each way on the project's machines (docs/performance.md,
/// "Waking an idle core"). Advice when some worker sleeps; none on bare
/// metal, with halt polling on, or when every worker busy-polls.
pub fn idle_advice(workers: &[WorkerReport], idle: &IdleCores) -> Option<Advice> {
    if idle.cpuidle_driver.as_deref() != Some("haltpoll") || idle.guest_halt_poll_ns != Some(0) {
        return None;
    }
    let sleepers: Vec<String> = workers
        .iter()
        .filter(|w| w.poll != "busy" && w.sleep_pct >= SLEEPING_PCT)
        .map(|w| format!("{}/{}", w.node, w.worker))
        .collect();
    if sleepers.is_empty() {
        return None;
    }
    Some(Advice {
        kind: "idle".into(),
        text: format!(
            "idle cores halt without polling (cpuidle haltpoll, guest_halt_poll_ns 0: a VM guest), and worker(s) {} sleep: each wake-up of their cores is a VM exit, tens of µs per request and reply; for request/response latency let idle vCPUs poll first (echo 200000 > {GUEST_HALT_POLL}) or busy-poll (--poll busy)",
            sleepers.join(", ")
        ),
        ..Default::default()
    })
}

/// One interface the dataplane serves: where the kernel runs its receive
/// work — the IRQs of a device (none on a veth) and the RPS masks of its
/// receive queues.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IfaceReport {
    pub node: String,
    pub name: String,
    pub underlay: bool,
    /// No device behind it (veth, ...): it has no IRQs.
    pub virtual_device: bool,
    pub irqs: Vec<IrqReport>,
    pub rps: Vec<RpsReport>,
    /// Why nothing could be read, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IrqReport {
    pub irq: u32,
    /// `/proc/irq/N/smp_affinity_list` as the kernel writes it.
    pub affinity: String,
    pub cpus: Vec<usize>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RpsReport {
    /// `rx-0`, ...
    pub queue: String,
    /// `rps_cpus` as the kernel writes it (a hex mask, `0`: RPS off).
    pub mask: String,
    pub cpus: Vec<usize>,
}

/// The CPUs of a hex CPU mask (`rps_cpus`, `smp_affinity`: 32-bit groups
/// separated by commas, most significant first).
pub fn parse_cpu_mask(mask: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    let groups: Vec<&str> = mask.trim().split(',').collect();
    for (i, g) in groups.iter().rev().enumerate() {
        let v = u32::from_str_radix(g, 16).ok()?;
        for b in 0..32 {
            if v & (1 << b) != 0 {
                cpus.push(i * 32 + b);
            }
        }
    }
    cpus.sort_unstable();
    Some(cpus)
}

/// The CPUs of a CPU list (`smp_affinity_list`: `0-3,5`).
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// IRQ numbers of `/proc/interrupts` lines whose action names `dev`
/// (`eth0`, `eth0-TxRx-0`, ...).
pub fn irqs_named(interrupts: &str, dev: &str) -> Vec<u32> {
    interrupts
        .lines()
        .filter_map(|l| {
            let (n, rest) = l.trim_start().split_once(':')?;
            let n: u32 = n.parse().ok()?;
            let named = rest.split_whitespace().any(|w| {
                w.trim_end_matches(',') == dev
                    || w.strip_prefix(dev)
                        .is_some_and(|r| r.starts_with('-') || r.starts_with('@'))
            });
            named.then_some(n)
        })
        .collect()
}

/// Lists, inside the node's network namespace (`ip netns exec`, which
/// mounts that namespace's sysfs), for each interface: `missing DEV`,
/// `virtual DEV` (no device: no IRQs), `msi DEV N` (the device's MSI IRQs)
/// and `rps DEV rx-Q MASK`.
const SYSFS_SCRIPT: &str = r#"for d in "$@"; do
  p=/sys/class/net/$d
  if [ ! -e "$p" ]; then echo "missing $d"; continue; fi
  if [ -e "$p/device" ]; then
    for m in "$p"/device/msi_irqs/* "$p"/device/../msi_irqs/*; do
      [ -e "$m" ] && echo "msi $d ${m##*/}"
    done
  else
    echo "virtual $d"
  fi
  for q in "$p"/queues/rx-*; do
    [ -e "$q/rps_cpus" ] && echo "rps $d ${q##*/} $(cat "$q/rps_cpus")"
  done
done"#;

fn iface_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// Reads the IRQ affinity and RPS masks of every interface the nodes'
/// dataplanes serve (`ports` of their status), `netns_of` giving each
/// node's network namespace. The IRQs of a device are its MSI IRQs and the
/// `/proc/interrupts` lines that name it; their affinity comes from
/// `/proc/irq/N/smp_affinity_list` (both are global, not per namespace).
pub fn interfaces(
    status: &ClusterStatus,
    node: Option<&str>,
    netns_of: impl Fn(&str) -> Option<String>,
) -> Vec<IfaceReport> {
    let interrupts = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let mut out = Vec::new();
    for n in &status.nodes {
        if node.is_some_and(|x| x != n.node) {
            continue;
        }
        let Some(dp) = n.status.as_ref().and_then(|s| s.dataplane.as_ref()) else {
            continue;
        };
        let ports: Vec<&weir_model::status::PortStatus> =
            dp.ports.iter().filter(|p| iface_name_ok(&p.name)).collect();
        if ports.is_empty() {
            continue;
        }
        let listing = match netns_of(&n.node) {
            Some(ns) => std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c", SYSFS_SCRIPT, "sh"])
                .args(ports.iter().map(|p| p.name.as_str()))
                .output()
                .map_err(|e| format!("ip netns exec {ns}: {e}"))
                .and_then(|o| {
                    if o.status.success() {
                        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                    } else {
                        Err(format!(
                            "ip netns exec {ns}: {}",
                            String::from_utf8_lossy(&o.stderr).trim()
                        ))
                    }
                }),
            None => Err("no network namespace known for the node".to_string()),
        };
        for p in ports {
            let mut r = IfaceReport {
                node: n.node.clone(),
                name: p.name.clone(),
                underlay: p.underlay,
                ..Default::default()
            };
            match &listing {
                Err(e) => r.error = Some(e.clone()),
                Ok(text) => {
                    let mut irqs = irqs_named(&interrupts, &p.name);
                    for l in text.lines() {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        match f.as_slice() {
                            ["missing", d] if *d == p.name => {
                                r.error = Some("not found in the node's namespace".into())
                            }
                            ["virtual", d] if *d == p.name => r.virtual_device = true,
                            ["msi", d, irq] if *d == p.name => {
                                irqs.extend(irq.parse::<u32>().ok());
                            }
                            ["rps", d, q, mask] if *d == p.name => r.rps.push(RpsReport {
                                queue: q.to_string(),
                                mask: mask.to_string(),
                                cpus: parse_cpu_mask(mask).unwrap_or_default(),
                            }),
                            _ => {}
                        }
                    }
                    irqs.sort_unstable();
                    irqs.dedup();
                    r.irqs = irqs
                        .into_iter()
                        .map(|irq| {
                            let affinity = std::fs::read_to_string(format!(
                                "/proc/irq/{irq}/smp_affinity_list"
                            ))
                            .map(|s| s.trim().to_string())
                            .unwrap_or_default();
                            IrqReport {
                                irq,
                                cpus: parse_cpu_list(&affinity).unwrap_or_default(),
                                affinity,
                            }
                        })
                        .collect();
                }
            }
            out.push(r);
        }
    }
    out
}

/// Advice from the interfaces: an RPS mask or an IRQ's affinity that puts
/// the kernel's receive work on a core where one of the node's workers
/// runs (they then share the core; docs/observability.md, "Cores").
pub fn interface_advice(workers: &[WorkerReport], ifaces: &[IfaceReport]) -> Vec<Advice> {
    let mut out = Vec::new();
    for i in ifaces {
        let cores: BTreeMap<usize, usize> = workers
            .iter()
            .filter(|w| w.node == i.node)
            .filter_map(|w| w.core.map(|c| (c, w.worker)))
            .collect();
        for q in &i.rps {
            for c in q.cpus.iter().filter(|c| cores.contains_key(c)) {
                let w = cores[c];
                out.push(Advice {
                    kind: "rps".into(),
                    node: Some(i.node.clone()),
                    worker: Some(w),
                    core: Some(*c),
                    flag: String::new(),
                    to: None,
                    text: format!(
                        "RPS steers {}'s {} receive work (rps_cpus {}) onto core {c}, where worker {}/{w} runs: leave core {c} out of /sys/class/net/{}/queues/{}/rps_cpus in the node's namespace (0 turns RPS off)",
                        i.name, q.queue, q.mask, i.node, i.name, q.queue
                    ),
                });
            }
        }
        for irq in &i.irqs {
            // An IRQ allowed on every CPU is not a placement.
            if irq.cpus.len() > 1 && irq.cpus.iter().all(|c| cores.contains_key(c)) {
                continue;
            }
            if let [c] = irq.cpus.as_slice() {
                if let Some(&w) = cores.get(c) {
                    out.push(Advice {
                        kind: "irq".into(),
                        node: Some(i.node.clone()),
                        worker: Some(w),
                        core: Some(*c),
                        flag: String::new(),
                        to: None,
                        text: format!(
                            "IRQ {} of {} is pinned to core {c}, where worker {}/{w} runs: move it (/proc/irq/{}/smp_affinity_list) or the worker",
                            irq.irq, i.name, i.node, irq.irq
                        ),
                    });
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    pub node: String,
    pub worker: usize,
    pub core: Option<usize>,
    pub poll: String,
    /// Queues (of every port) the worker serves: `q % workers == worker`.
    pub queues: Vec<u32>,
    /// Shares of the worker's wall time in the window (percent).
    pub busy_pct: f64,
    pub idle_pct: f64,
    pub sleep_pct: f64,
    /// Its thread's CPU time over the window (percent of one core).
    pub cpu_pct: f64,
    pub rx_pps: f64,
    /// Frames per second of busy time: what the worker can do when it works.
    pub packets_per_busy_second: f64,
    /// Frames per RX batch (one socket's RX ring read that found frames).
    pub frames_per_batch: f64,
    /// Of those batches, the ones that took a whole batch (`config.batch`
    /// frames: the ring held more than the worker took).
    pub full_batch_pct: f64,
    /// Frames on the worker's fill rings now (of `frames_total`).
    pub fill_frames: u64,
    pub frames_total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CoreReport {
    pub core: usize,
    /// Share of the core not idle over the window (percent).
    pub busy_pct: f64,
    /// The busy share not explained by weir workers pinned here.
    pub other_pct: f64,
    pub net_rx_per_s: f64,
    /// This core's share of the host's NET_RX softirqs (percent).
    pub net_rx_pct: f64,
    /// `node/worker` of the workers pinned here.
    pub workers: Vec<String>,
}

/// One recommendation.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Advice {
    /// `poll`, `move`, `add-core`, `rps`, `irq`, `idle` or `ok`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<usize>,
    /// The core the worker is on, and the core it should go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<usize>,
    /// The flag to use (`--poll adaptive`, `--cores 0`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub flag: String,
    pub text: String,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Workers of `st` by (node, id), with the poll mode, node config and the
/// sample's clock.
fn workers_of(
    st: &ClusterStatus,
    node: Option<&str>,
) -> Vec<(String, PollMode, u32, usize, u64, WorkerStatus)> {
    let mut out = Vec::new();
    for n in &st.nodes {
        if node.is_some_and(|want| want != n.node) {
            continue;
        }
        let Some(dp) = n.status.as_ref().and_then(|s| s.dataplane.as_ref()) else {
            continue;
        };
        for w in &dp.workers {
            out.push((
                n.node.clone(),
                dp.poll,
                dp.config.queues,
                dp.workers.len(),
                dp.monotonic_ns,
                w.clone(),
            ));
        }
    }
    out
}

/// The deltas between `a` and `b` and the advice the rules give
/// (docs/observability.md, "Cores").
pub fn analyse(a: &Sample, b: &Sample, node: Option<&str>) -> Report {
    let before: BTreeMap<(String, usize), (u64, WorkerStatus)> = workers_of(&a.status, None)
        .into_iter()
        .map(|(n, _, _, _, t, w)| ((n, w.id), (t, w)))
        .collect();
    // Every worker of the host (all nodes: their CPU time is on these cores),
    // then the ones asked about.
    let mut all = Vec::new();
    for (n, poll, queues, nworkers, t1, w1) in workers_of(&b.status, None) {
        let Some((t0, w0)) = before.get(&(n.clone(), w1.id)) else {
            continue;
        };
        let wall = t1.saturating_sub(*t0);
        let d = |f: fn(&WorkerStatus) -> u64| f(&w1).saturating_sub(f(w0));
        let busy = d(|w| w.time.busy_ns);
        let idle = d(|w| w.time.idle_ns);
        let sleep = d(|w| w.time.sleep_ns);
        let accounted = busy + idle + sleep;
        let rx = d(|w| w.rx_packets);
        let visits = d(|w| w.time.rx_visits);
        all.push(WorkerReport {
            node: n,
            worker: w1.id,
            core: w1.core,
            poll: poll.as_str().to_string(),
            queues: (0..queues)
                .filter(|q| nworkers > 0 && *q as usize % nworkers == w1.id)
                .collect(),
            busy_pct: round1(pct(busy, accounted)),
            idle_pct: round1(pct(idle, accounted)),
            sleep_pct: round1(pct(sleep, accounted)),
            cpu_pct: round1(pct(d(|w| w.time.cpu_ns), wall)),
            rx_pps: round1(if wall == 0 {
                0.0
            } else {
                rx as f64 * 1e9 / wall as f64
            }),
            packets_per_busy_second: round1(if busy == 0 {
                0.0
            } else {
                rx as f64 * 1e9 / busy as f64
            }),
            frames_per_batch: round1(if visits == 0 {
                0.0
            } else {
                rx as f64 / visits as f64
            }),
            full_batch_pct: round1(pct(d(|w| w.time.full_batches), visits)),
            fill_frames: w1.frames.fill,
            frames_total: w1.frames.total,
        });
    }

    let net_rx_total: u64 = b
        .net_rx
        .iter()
        .map(|(c, v)| v.saturating_sub(a.net_rx.get(c).copied().unwrap_or(*v)))
        .sum();
    let mut window_ms = 0;
    let mut cores = Vec::new();
    for (&c, &(busy1, total1)) in &b.cpus {
        let (busy0, total0) = a.cpus.get(&c).copied().unwrap_or((busy1, total1));
        let total = total1.saturating_sub(total0);
        let busy_pct = pct(busy1.saturating_sub(busy0), total);
        let here: Vec<&WorkerReport> = all.iter().filter(|w| w.core == Some(c)).collect();
        let workers_cpu: f64 = here.iter().map(|w| w.cpu_pct).sum();
        let nr = b
            .net_rx
            .get(&c)
            .copied()
            .unwrap_or(0)
            .saturating_sub(a.net_rx.get(&c).copied().unwrap_or(0));
        // /proc/stat counts in USER_HZ (100 per second on Linux).
        let secs = total as f64 / 100.0;
        window_ms = window_ms.max((secs * 1000.0) as u64);
        cores.push(CoreReport {
            core: c,
            busy_pct: round1(busy_pct),
            other_pct: round1((busy_pct - workers_cpu).max(0.0)),
            net_rx_per_s: round1(if secs > 0.0 { nr as f64 / secs } else { 0.0 }),
            net_rx_pct: round1(pct(nr, net_rx_total)),
            workers: here
                .iter()
                .map(|w| format!("{}/{}", w.node, w.worker))
                .collect(),
        });
    }

    let workers: Vec<WorkerReport> = all
        .into_iter()
        .filter(|w| node.is_none_or(|n| n == w.node))
        .collect();
    let advice = advise(&workers, &cores);
    Report {
        window_ms,
        workers,
        cores,
        advice,
        interfaces: Vec::new(),
        idle: IdleCores::default(),
    }
}

/// The rules, in order (docs/observability.md, "Cores").
pub fn advise(workers: &[WorkerReport], cores: &[CoreReport]) -> Vec<Advice> {
    let mut out = Vec::new();
    let taken: BTreeSet<usize> = cores
        .iter()
        .filter(|c| !c.workers.is_empty())
        .map(|c| c.core)
        .collect();
    // Cores without a worker, least loaded first.
    let mut free: Vec<&CoreReport> = cores.iter().filter(|c| !taken.contains(&c.core)).collect();
    free.sort_by(|x, y| {
        (x.busy_pct + x.net_rx_pct)
            .partial_cmp(&(y.busy_pct + y.net_rx_pct))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let node_cores = |node: &str| -> Vec<usize> {
        workers
            .iter()
            .filter(|w| w.node == node)
            .filter_map(|w| w.core)
            .collect()
    };
    let cores_flag = |node: &str, from: Option<usize>, to: usize, add: bool| -> String {
        let mut cs = node_cores(node);
        if add {
            cs.push(to);
        } else {
            for c in &mut cs {
                if Some(*c) == from {
                    *c = to;
                }
            }
        }
        let list: Vec<String> = cs.iter().map(|c| c.to_string()).collect();
        format!("--cores {}", list.join(","))
    };
    for w in workers {
        let base = Advice {
            node: Some(w.node.clone()),
            worker: Some(w.worker),
            core: w.core,
            ..Default::default()
        };
        // Rule 1: spinning on empty rings in busy mode.
        if w.poll == "busy" && w.idle_pct >= SPIN_IDLE_PCT {
            out.push(Advice {
                kind: "poll".into(),
                flag: "--poll adaptive".into(),
                text: format!(
                    "worker {} spins {:.0}% idle: use adaptive (--poll adaptive)",
                    w.worker, w.idle_pct
                ),
                ..base.clone()
            });
        }
        // Rule 2: the worker shares its core with the load.
        if let Some(c) = w.core.and_then(|c| cores.iter().find(|x| x.core == c)) {
            let net_rx_total: f64 = cores.iter().map(|x| x.net_rx_per_s).sum();
            let by_other = free
                .iter()
                .find(|f| f.busy_pct + MOVE_MARGIN_PCT <= c.other_pct)
                .filter(|_| c.other_pct >= SHARED_OTHER_PCT);
            let by_net_rx = free
                .iter()
                .find(|f| f.net_rx_pct < c.net_rx_pct)
                .filter(|_| c.net_rx_pct >= NET_RX_SHARE_PCT && net_rx_total >= NET_RX_MIN_RATE);
            if let Some(f) = by_other.or(by_net_rx) {
                out.push(Advice {
                    kind: "move".into(),
                    to: Some(f.core),
                    flag: cores_flag(&w.node, Some(c.core), f.core, false),
                    text: format!(
                        "the load and worker {} share core {} ({:.0}% of the core is other work, {:.0}% of the NET_RX softirqs land there): move the worker to core {} ({:.0}% busy)",
                        w.worker, c.core, c.other_pct, c.net_rx_pct, f.core, f.busy_pct
                    ),
                    ..base.clone()
                });
                continue;
            }
        }
        // Rule 3: a saturated worker, with a core to spare.
        if w.busy_pct >= SATURATED_BUSY_PCT || w.full_batch_pct >= SATURATED_FULL_PCT {
            if let Some(f) = free.first().filter(|f| f.busy_pct < SPARE_CORE_BUSY_PCT) {
                out.push(Advice {
                    kind: "add-core".into(),
                    to: Some(f.core),
                    flag: cores_flag(&w.node, None, f.core, true),
                    text: format!(
                        "worker {} is busy {:.0}% of its time ({:.0}% of its rounds took a whole batch): add a worker on core {}",
                        w.worker, w.busy_pct, w.full_batch_pct, f.core
                    ),
                    ..base.clone()
                });
            }
        }
    }
    if out.is_empty() {
        out.push(Advice {
            kind: "ok".into(),
            text: "nothing to change".into(),
            ..Default::default()
        });
    }
    out
}

/// The table `weir cores` prints.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "window {} ms", r.window_ms);
    let _ = writeln!(
        s,
        "{:<10} {:>6} {:>5} {:<9} {:<10} {:>6} {:>6} {:>6} {:>6} {:>10} {:>12} {:>6} {:>6}",
        "NODE",
        "WORKER",
        "CORE",
        "POLL",
        "QUEUES",
        "BUSY%",
        "IDLE%",
        "SLEEP%",
        "CPU%",
        "RX/S",
        "PKT/BUSY-S",
        "BATCH",
        "FULL%"
    );
    for w in &r.workers {
        let q: Vec<String> = w.queues.iter().map(|q| q.to_string()).collect();
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>5} {:<9} {:<10} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>10.0} {:>12.0} {:>6.1} {:>6.1}",
            w.node,
            w.worker,
            w.core.map_or("-".into(), |c| c.to_string()),
            w.poll,
            q.join(","),
            w.busy_pct,
            w.idle_pct,
            w.sleep_pct,
            w.cpu_pct,
            w.rx_pps,
            w.packets_per_busy_second,
            w.frames_per_batch,
            w.full_batch_pct
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<5} {:>6} {:>7} {:>10} {:>7}  WORKERS",
        "CORE", "BUSY%", "OTHER%", "NET_RX/S", "NET_RX%"
    );
    for c in &r.cores {
        let _ = writeln!(
            s,
            "{:<5} {:>6.1} {:>7.1} {:>10.0} {:>7.1}  {}",
            c.core,
            c.busy_pct,
            c.other_pct,
            c.net_rx_per_s,
            c.net_rx_pct,
            c.workers.join(" ")
        );
    }
    if !r.interfaces.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<10} {:<16} {:<28} RPS (rx queue: cpus)",
            "NODE", "INTERFACE", "IRQS (irq: cpus)"
        );
        for i in &r.interfaces {
            let irqs = if let Some(e) = &i.error {
                e.clone()
            } else if i.virtual_device {
                "none (virtual device)".to_string()
            } else if i.irqs.is_empty() {
                "none found".to_string()
            } else {
                i.irqs
                    .iter()
                    .map(|q| format!("{}: {}", q.irq, q.affinity))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let rps: Vec<String> = i
                .rps
                .iter()
                .map(|q| {
                    if q.cpus.is_empty() {
                        format!("{}: off", q.queue)
                    } else {
                        let c: Vec<String> = q.cpus.iter().map(|c| c.to_string()).collect();
                        format!("{}: {}", q.queue, c.join(","))
                    }
                })
                .collect();
            let _ = writeln!(
                s,
                "{:<10} {:<16} {:<28} {}",
                i.node,
                i.name,
                irqs,
                rps.join(" ")
            );
        }
    }
    let _ = writeln!(s);
    if r.idle != IdleCores::default() {
        let _ = writeln!(
            s,
            "idle cores: cpuidle {}, guest halt polling {}",
            r.idle.cpuidle_driver.as_deref().unwrap_or("unknown"),
            r.idle
                .guest_halt_poll_ns
                .map_or("none".to_string(), |n| format!("{n} ns"))
        );
    }
    for a in &r.advice {
        let _ = writeln!(s, "advice: {}", a.text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_lists_and_interrupt_names() {
        assert_eq!(parse_cpu_mask("0"), Some(vec![]));
        assert_eq!(parse_cpu_mask("6\n"), Some(vec![1, 2]));
        assert_eq!(parse_cpu_mask("00000001,80000000"), Some(vec![31, 32]));
        assert_eq!(parse_cpu_mask("xyz"), None);
        assert_eq!(parse_cpu_list("0-2,5\n"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        let interrupts = "           CPU0       CPU1
  24:    1  2  PCI-MSI 512000-edge      eth0-TxRx-0
  25:    1  2  PCI-MSI 512001-edge      eth0-TxRx-1
  26:    1  2  PCI-MSI 512002-edge      eth01
  27:    1  2  PCI-MSI 512003-edge      eth0
 NMI:    0  0  Non-maskable interrupts
";
        assert_eq!(irqs_named(interrupts, "eth0"), vec![24, 25, 27]);
        assert!(irqs_named(interrupts, "veth1").is_empty());
    }

    #[test]
    fn rps_on_a_worker_core_is_advice() {
        let w = worker(1, "adaptive", 10.0, 0.0, 10.0);
        let mut i = IfaceReport {
            node: w.node.clone(),
            name: "wp1".into(),
            virtual_device: true,
            rps: vec![RpsReport {
                queue: "rx-0".into(),
                mask: "2".into(),
                cpus: vec![1],
            }],
            ..Default::default()
        };
        let a = interface_advice(std::slice::from_ref(&w), std::slice::from_ref(&i));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!((a[0].kind.as_str(), a[0].core), ("rps", Some(1)));
        i.rps[0].cpus = vec![0];
        assert!(interface_advice(&[w], &[i]).is_empty());
    }

    #[test]
    fn halting_idle_vcpus_are_advice_when_a_worker_sleeps() {
        let mut w = worker(1, "adaptive", 10.0, 5.0, 10.0);
        w.sleep_pct = 80.0;
        let halts = IdleCores {
            cpuidle_driver: Some("haltpoll".into()),
            guest_halt_poll_ns: Some(0),
        };
        let a = idle_advice(std::slice::from_ref(&w), &halts).expect("advice");
        assert_eq!(a.kind, "idle");
        assert!(
            a.text.contains("node-1/0") && a.text.contains(GUEST_HALT_POLL),
            "{}",
            a.text
        );
        // Halt polling on, bare metal, or no haltpoll module: nothing.
        for other in [
            IdleCores {
                guest_halt_poll_ns: Some(200_000),
                ..halts.clone()
            },
            IdleCores {
                cpuidle_driver: Some("intel_idle".into()),
                guest_halt_poll_ns: None,
            },
            IdleCores::default(),
        ] {
            assert_eq!(
                idle_advice(std::slice::from_ref(&w), &other),
                None,
                "{other:?}"
            );
        }
        // A worker that does not sleep (busy polling, or always busy).
        w.sleep_pct = 2.0;
        assert_eq!(idle_advice(std::slice::from_ref(&w), &halts), None);
        let mut b = worker(1, "busy", 10.0, 90.0, 100.0);
        b.sleep_pct = 50.0;
        assert_eq!(idle_advice(&[b], &halts), None);
    }

    #[test]
    fn parses_proc_stat_and_softirqs() {
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 0 5 50 0 0 0 0 0 0\ncpu1 5 0 5 40 10 0 2 0 0 0\nintr 1 2\n";
        let c = parse_proc_stat(stat);
        assert_eq!(c.len(), 2);
        assert_eq!(c[&0], (10, 60));
        assert_eq!(c[&1], (12, 62));
        let soft = "                    CPU0       CPU1\n          HI:          0          0\n      NET_RX:        123       4567\n";
        let n = parse_net_rx(soft);
        assert_eq!(n[&0], 123);
        assert_eq!(n[&1], 4567);
    }

    fn worker(core: usize, poll: &str, busy: f64, idle: f64, cpu: f64) -> WorkerReport {
        WorkerReport {
            node: "node-1".into(),
            worker: 0,
            core: Some(core),
            poll: poll.into(),
            busy_pct: busy,
            idle_pct: idle,
            cpu_pct: cpu,
            ..Default::default()
        }
    }

    fn core(c: usize, busy: f64, other: f64, nr: f64, nr_pct: f64, w: bool) -> CoreReport {
        CoreReport {
            core: c,
            busy_pct: busy,
            other_pct: other,
            net_rx_per_s: nr,
            net_rx_pct: nr_pct,
            workers: if w { vec!["node-1/0".into()] } else { vec![] },
        }
    }

    #[test]
    fn the_rules() {
        // Spinning idle in busy mode: adaptive.
        let a = advise(
            &[worker(1, "busy", 5.0, 93.0, 100.0)],
            &[
                core(0, 10.0, 10.0, 0.0, 0.0, false),
                core(1, 100.0, 0.0, 0.0, 0.0, true),
            ],
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, "poll");
        assert!(a[0].text.contains("spins 93% idle"), "{}", a[0].text);
        // The load's softirqs on the worker's core: move to the free core.
        let a = advise(
            &[worker(1, "adaptive", 40.0, 60.0, 50.0)],
            &[
                core(0, 60.0, 60.0, 100.0, 5.0, false),
                core(1, 100.0, 50.0, 5000.0, 95.0, true),
            ],
        );
        assert_eq!(a[0].kind, "move");
        assert_eq!((a[0].core, a[0].to), (Some(1), Some(0)));
        assert_eq!(a[0].flag, "--cores 0");
        // The load on the other core: nothing to change.
        let a = advise(
            &[worker(0, "adaptive", 40.0, 60.0, 50.0)],
            &[
                core(0, 55.0, 5.0, 2500.0, 50.0, true),
                core(1, 100.0, 100.0, 2500.0, 50.0, false),
            ],
        );
        assert_eq!(a[0].kind, "ok", "{a:?}");
        // Saturated, a core to spare: add it.
        let a = advise(
            &[worker(1, "busy", 95.0, 5.0, 100.0)],
            &[
                core(0, 10.0, 10.0, 0.0, 0.0, false),
                core(1, 100.0, 0.0, 0.0, 0.0, true),
            ],
        );
        assert_eq!(a[0].kind, "add-core");
        assert_eq!(a[0].flag, "--cores 1,0");
        // ...but not onto a core that is busy already.
        let a = advise(
            &[worker(1, "busy", 95.0, 5.0, 100.0)],
            &[
                core(0, 90.0, 90.0, 0.0, 0.0, false),
                core(1, 100.0, 0.0, 0.0, 0.0, true),
            ],
        );
        assert_eq!(a[0].kind, "ok", "{a:?}");
    }
}
