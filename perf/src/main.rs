//! The `weir-perf` command.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weir_perf::fastpath::{self, Options};

#[derive(Parser)]
#[command(
    name = "weir-perf",
    version,
    about = "weir's benchmark harness (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Set the guest's halt polling (cpuidle-haltpoll's
    /// guest_halt_poll_ns) to this many ns for the run, and back after
    /// (docs/performance.md, "Waking an idle core").
    #[arg(long, global = true)]
    halt_poll_ns: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// One node, pod a → pod b: 64-byte UDP pps and TCP request/response
    /// latency, kernel forwarding vs weir in each polling mode.
    Fastpath {
        /// 1 s windows and 2k round trips instead of 5 s and 20k.
        #[arg(long)]
        short: bool,
        /// Where fastpath.json and fastpath.md go.
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling modes to measure (comma-separated: busy, adaptive, wakeup).
        #[arg(long, default_value = "busy,adaptive", value_delimiter = ',')]
        modes: Vec<String>,
        /// Core for the load (generator, receiver, RR client and server).
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        /// Core for weir's worker.
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        /// The weir binary (default: $WEIR_BIN, next to weir-perf, target/{release,debug}, $PATH).
        #[arg(long)]
        weir: Option<PathBuf>,
        /// Measure only the kernel path (no weir needed).
        #[arg(long)]
        kernel_only: bool,
        /// Override the measurement window (milliseconds).
        #[arg(long)]
        window_ms: Option<u64>,
        /// Override the number of request/response round trips.
        #[arg(long)]
        rr_count: Option<u64>,
        /// Datagrams per sendmmsg.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// TCP request/response latency: the kernel path and weir in each
    /// polling mode, interleaved rounds; `--breakdown` adds weir with
    /// `--latency-breakdown` and prints its per-batch stages (RX wait,
    /// pass, TX kick) beside the RR numbers. Writes rr.{md,json}.
    Rr {
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling modes (comma-separated: busy, adaptive, wakeup).
        #[arg(long, default_value = "busy,adaptive", value_delimiter = ',')]
        modes: Vec<String>,
        /// Rounds, interleaved (kernel, weir-<mode>…, then again).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Round trips per round (a tenth more as warm-up).
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        #[arg(long)]
        weir: Option<PathBuf>,
        /// Only the kernel path.
        #[arg(long)]
        kernel_only: bool,
        /// Also run weir with `weir up --latency-breakdown` and print the stages.
        #[arg(long)]
        breakdown: bool,
        /// Also run weir with `weir up --busy-poll` (SO_PREFER_BUSY_POLL and
        /// friends) as its own configuration, `weir-<mode>+busypoll`.
        #[arg(long)]
        busy_poll: bool,
        /// More `weir up` arguments for every weir configuration (one per flag).
        #[arg(long = "weir-arg", allow_hyphen_values = true)]
        weir_args: Vec<String>,
        /// Also run weir with `weir up --pod-rx-cpus CPUS` (RPS on the pods'
        /// eth0) as `weir-<mode>+rps` (and `+rps+breakdown`); the other weir
        /// configurations then run with `--pod-rx-cpus off`.
        #[arg(long, value_name = "CPUS")]
        pod_rx_cpus: Option<String>,
    },
    /// The worker scaling curve, 1 → 2 workers: the same multi-flow 64-byte
    /// UDP load through weir with one worker and with two (pod veths with
    /// two queues), interleaved rounds, beside the generator's ceiling, the
    /// cores consumed and the per-queue XDP counters. Writes scale.{md,json}.
    Scale {
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// Rounds, interleaved (≥ 3 for ranges).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Generator sockets, each its own source port (flows to spread).
        #[arg(long, default_value_t = 32)]
        flows: usize,
        /// Measurement window (milliseconds).
        #[arg(long, default_value_t = 3000)]
        window_ms: u64,
        #[arg(long, default_value_t = 500)]
        warmup_ms: u64,
        /// Datagrams per sendmmsg.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        /// Cores of the workers (the 1-worker configuration uses the first).
        #[arg(long, default_value = "1,0", value_delimiter = ',')]
        worker_cores: Vec<usize>,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        #[arg(long)]
        weir: Option<PathBuf>,
        /// More `weir up` arguments (one per flag).
        #[arg(long = "weir-arg", allow_hyphen_values = true)]
        weir_args: Vec<String>,
        /// Also one worker with `weir up --pod-rx-cpus CPUS` (RPS on the
        /// pods' eth0), `weir-1w+rps`; the others then run with `off`.
        #[arg(long, value_name = "CPUS")]
        pod_rx_cpus: Option<String>,
    },
    /// pps per consumed core, builds against each other: the paper's UDP
    /// placement (one flow, load on one core, one worker on another), the
    /// kernel path and every `--variant` in every round, interleaved; per
    /// sample pps, cores consumed, the worker's CPU and busy time per frame,
    /// coalescing sleeps, and TCP RR p50/p99 on the same cluster. Writes
    /// percore.{md,json}.
    Percore {
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// A weir build and its `weir up` arguments: `LABEL=PATH[,ARG...]`
        /// (repeat; the first is the base of the ratios).
        #[arg(long = "variant", required = true)]
        variants: Vec<String>,
        #[arg(long, default_value_t = 3000)]
        window_ms: u64,
        #[arg(long, default_value_t = 500)]
        warmup_ms: u64,
        /// Datagrams per sendmmsg.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        /// Round trips per RR run (a tenth more as warm-up).
        #[arg(long, default_value_t = 10_000)]
        rr_count: u64,
        /// Seconds of wrk (HTTP keep-alive, 8 connections) per sample; 0: none.
        #[arg(long, default_value_t = 5)]
        http_secs: u64,
        /// Seconds of iperf3 (TCP bulk, one stream) per sample; 0: none.
        #[arg(long, default_value_t = 4)]
        bulk_secs: u64,
    },
    /// The whole path at many flows: 64-byte UDP through one worker, every
    /// frame the next flow of a cycle of N, for each `--flows` N and each
    /// `--variant` (default: the weir found with `--ct-prefetch auto`,
    /// `off` and `on`), interleaved rounds; per sample delivered pps, the
    /// worker's busy and CPU time per frame, stage 0 and the census, the
    /// live conntrack entries. Writes flows.{md,json}.
    Flows {
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Flow counts (comma-separated, at most 4128768).
        #[arg(long, default_value = "1,1024,65536,1048576", value_delimiter = ',')]
        flows: Vec<usize>,
        /// A weir build and its `weir up` arguments: `LABEL=PATH[,ARG...]`
        /// (repeat; the first is the base of the ratios).
        #[arg(long = "variant")]
        variants: Vec<String>,
        /// The weir of the default variants.
        #[arg(long)]
        weir: Option<PathBuf>,
        #[arg(long, default_value_t = 3000)]
        window_ms: u64,
        /// Least warm-up per flow count (it also lasts until every flow was
        /// sent twice).
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        /// `weir up --conntrack-size` (default: twice the largest flow count,
        /// at least weir's default 262144); the peers' tables get as much.
        #[arg(long)]
        conntrack_size: Option<usize>,
        /// Without the kernel path + nftables peer.
        #[arg(long)]
        no_kernel: bool,
        /// Without the Open vSwitch AF_XDP + conntrack peer.
        #[arg(long)]
        no_ovs: bool,
    },
    /// Adaptive polling's idle handback: two nodes whose workers share one
    /// core, weir with each `--idle-spin-us`/`--idle-yield` variant and the
    /// kernel's vxlan overlay, interleaved rounds: inter-node RR, intra-node
    /// RR and UDP pps, cores used. Writes idle.{md,json}.
    Idle {
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// weir settings: SPIN µs, with `:noyield` for a plain spin
        /// (50:noyield is the spin before the handback change).
        #[arg(long, default_value = "50:noyield,50,20,10", value_delimiter = ',')]
        variants: Vec<String>,
        /// Round trips per RR run (a tenth more as warm-up).
        #[arg(long, default_value_t = 5000)]
        count: u64,
        /// UDP window (milliseconds).
        #[arg(long, default_value_t = 2000)]
        window_ms: u64,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        #[arg(long)]
        weir: Option<PathBuf>,
        /// Skip the kernel vxlan reference.
        #[arg(long)]
        no_kernel: bool,
    },
    /// The paper's Fig. 5 scenarios: kernel, kernel+nftables,
    /// kernel+haproxy L7 detour, OVS AF_XDP+conntrack, weir with and without
    /// the L3/L4 policy; UDP pps + CPU, TCP bulk, TCP RR, HTTP, rule scaling,
    /// XDP_DROP reference, conntrack_bench. Writes paper.{md,json} and SVG plots.
    Paper {
        /// CI mode: sub-second windows, 2 rule counts, no conntrack_bench (< 2 min).
        #[arg(long)]
        short: bool,
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling modes, each measured in every round (comma-separated:
        /// busy, adaptive, wakeup); the last one also runs the L7 wrk
        /// comparison, the rule sweep, XDP_DROP and inter-node.
        #[arg(
            long,
            alias = "mode",
            default_value = "busy,adaptive",
            value_delimiter = ','
        )]
        modes: Vec<String>,
        /// Rounds of every headline configuration, interleaved (≥ 3 for ranges).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        #[arg(long)]
        weir: Option<PathBuf>,
        /// Only the kernel-side configurations.
        #[arg(long)]
        kernel_only: bool,
        /// Rule counts of the scaling test (comma-separated).
        #[arg(long, value_delimiter = ',')]
        rules: Option<Vec<usize>>,
        #[arg(long)]
        no_ovs: bool,
        #[arg(long)]
        no_haproxy: bool,
        /// Skip (or, in short mode, force) weir-dataplane's conntrack_bench.
        #[arg(long)]
        conntrack_bench: Option<bool>,
        /// Override the UDP window (milliseconds).
        #[arg(long)]
        window_ms: Option<u64>,
        /// Rounds of the rule-scaling sweep, interleaved (default: full 3, short 1).
        #[arg(long)]
        scale_reps: Option<usize>,
        /// Rounds of the L7 wrk comparison, interleaved (default: full 3, short 1).
        #[arg(long)]
        issue5_reps: Option<usize>,
        /// Run (or skip) the inter-node scenarios (default: full yes, short no).
        #[arg(long)]
        inter_node: Option<bool>,
        /// `weir up --pod-rx-cpus CPUS` for every weir cluster (default:
        /// weir's own, `auto`; `off` gives weir the placement of the OVS
        /// configuration, whose pods have no RPS).
        #[arg(long, value_name = "CPUS")]
        pod_rx_cpus: Option<String>,
    },
    /// ClusterIP Services: UDP 64B pps and TCP RR to a ClusterIP vs to the
    /// pod IP, through weir and through kube-proxy-style nftables rules;
    /// new connections/s with 10, 1k, 10k Services (weir, nftables verdict
    /// map, linear chains). Writes services.{md,json}.
    Services {
        /// CI mode: sub-second windows, 10 and 100 Services, one round.
        #[arg(long)]
        short: bool,
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        #[arg(long)]
        weir: Option<PathBuf>,
        /// Only the kernel peers (no weir needed).
        #[arg(long)]
        kernel_only: bool,
        /// Service counts of the connection-rate sweep (comma-separated).
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<usize>>,
        /// Rounds, interleaved (default: full 3, short 1).
        #[arg(long)]
        reps: Option<usize>,
        /// Override the UDP window (milliseconds).
        #[arg(long)]
        window_ms: Option<u64>,
        /// Override the connection-rate window (milliseconds).
        #[arg(long)]
        conn_window_ms: Option<u64>,
        /// Override the number of request/response round trips.
        #[arg(long)]
        rr_count: Option<u64>,
        /// Skip the linear-chain (iptables-mode shape) peer.
        #[arg(long)]
        no_linear: bool,
    },
    /// gRPC unary calls/s over h2c (h2load → nghttpd) through weir with
    /// `grpc:` rules ÷ without policy, and beside kernel + haproxy h2,
    /// rounds interleaved. Writes grpc.{md,json}.
    Grpc {
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        /// Core of h2load and nghttpd.
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long)]
        weir: Option<PathBuf>,
        /// Seconds per measurement (whole seconds: h2load -D).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Rounds, interleaved.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// h2load connections (-c).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// h2load concurrent streams per connection (-m).
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// Skip the kernel path and its haproxy h2 detour.
        #[arg(long)]
        no_kernel: bool,
    },
    /// Encryption between nodes (issue 16): inter-node 64-byte UDP pps, TCP
    /// bulk and TCP RR p50/p99 through weir plain and `weir up --encrypt
    /// wireguard`, beside a veth and wireguard-go over it (two namespaces),
    /// rounds interleaved, ratios per round. Writes wireguard.{md,json}.
    Wireguard {
        /// Short windows, 500 round trips, 1 s bulk, one round.
        #[arg(long)]
        short: bool,
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        /// Rounds, interleaved (default: full 3, short 1).
        #[arg(long)]
        reps: Option<usize>,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        /// Core of weir's workers and of both wireguard-go processes.
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        #[arg(long)]
        weir: Option<PathBuf>,
        /// The wireguard-go binary (default: built by scripts/wireguard-go.sh).
        #[arg(long)]
        wireguard_go: Option<PathBuf>,
        /// Only veth and wireguard-go (no weir needed).
        #[arg(long)]
        no_weir: bool,
        /// Override the UDP window (milliseconds).
        #[arg(long)]
        window_ms: Option<u64>,
        /// Override the number of request/response round trips.
        #[arg(long)]
        rr_count: Option<u64>,
        /// Override the iperf3 seconds.
        #[arg(long)]
        bulk_secs: Option<u64>,
    },
    /// Two weir binaries A and B across two nodes (`--encap`), rounds
    /// interleaved: inter-node 64-byte UDP pps, TCP bulk, TCP RR p50/p99,
    /// B ÷ A per round (issue 22, part 4). Writes encap-ab.{md,json}.
    EncapAb {
        /// The binary measured first (e.g. the build before a change).
        #[arg(long)]
        weir_a: PathBuf,
        /// The binary compared with it.
        #[arg(long)]
        weir_b: PathBuf,
        /// `weir up --encap` (vxlan or geneve).
        #[arg(long, default_value = "vxlan")]
        encap: String,
        /// `inter`: app2 on n1 → app1 on n2 (the overlay); `intra`: app3 →
        /// app2, both on n1.
        #[arg(long, default_value = "inter")]
        path: weir_perf::encap_ab::AbPath,
        /// Short windows, 500 round trips, 1 s bulk.
        #[arg(long)]
        short: bool,
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        /// Rounds (default 3).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        /// Override the UDP window (milliseconds).
        #[arg(long)]
        window_ms: Option<u64>,
        /// Override the number of request/response round trips.
        #[arg(long)]
        rr_count: Option<u64>,
        /// Override the iperf3 seconds.
        #[arg(long)]
        bulk_secs: Option<u64>,
    },
    /// What host endpoint policy costs a server of the node for clients
    /// outside it: TCP RR and bulk from the world host to n1's underlay
    /// address without and with a host policy selecting n1 (every segment
    /// then crosses the worker). Writes host-policy.{md,json}.
    HostPolicy {
        #[arg(long, default_value = "target/perf")]
        out: PathBuf,
        /// weir polling mode (busy, adaptive, wakeup).
        #[arg(long, default_value = "adaptive")]
        mode: String,
        /// Rounds, both configurations in each.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Bulk seconds per sample (and 2500 RR round trips per second).
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Override the number of RR round trips.
        #[arg(long)]
        rr_count: Option<u64>,
        #[arg(long, default_value_t = 0)]
        load_core: usize,
        #[arg(long, default_value_t = 1)]
        worker_core: usize,
        #[arg(long)]
        weir: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("weir-perf: {e:#}");
        std::process::exit(1);
    }
}

/// The two-node runs' common options (`wireguard` and `encap-ab` measure
/// the same workloads across the underlay).
fn two_node_options(
    short: bool,
    out: PathBuf,
    mode: String,
    (load_core, worker_core): (usize, usize),
    window_ms: Option<u64>,
    rr_count: Option<u64>,
    bulk_secs: Option<u64>,
) -> weir_perf::wireguard::WgOptions {
    let mut o = weir_perf::wireguard::WgOptions::new(short);
    o.out = out;
    o.mode = mode;
    o.load_core = load_core;
    o.worker_core = worker_core;
    if let Some(ms) = window_ms {
        o.window = Duration::from_millis(ms);
    }
    if let Some(n) = rr_count {
        o.rr_count = n;
    }
    if let Some(n) = bulk_secs {
        o.bulk_secs = n;
    }
    o
}

fn run(cli: Cli) -> anyhow::Result<()> {
    weir_perf::stop::install()?;
    // Held for the whole command: the old value goes back when it ends.
    let _halt_poll = cli
        .halt_poll_ns
        .map(weir_perf::wake::HaltPoll::set)
        .transpose()?;
    match cli.cmd {
        Cmd::EncapAb {
            weir_a,
            weir_b,
            encap,
            path,
            short,
            out,
            mode,
            reps,
            load_core,
            worker_core,
            window_ms,
            rr_count,
            bulk_secs,
        } => {
            let mut w = two_node_options(
                short,
                out,
                mode,
                (load_core, worker_core),
                window_ms,
                rr_count,
                bulk_secs,
            );
            w.reps = reps;
            let o = weir_perf::encap_ab::AbOptions {
                wg: w,
                a: weir_a,
                b: weir_b,
                encap,
                path,
            };
            let rep = weir_perf::encap_ab::run(&o)?;
            print!("{}", weir_perf::encap_ab::markdown(&o, &rep));
            println!("\nwritten: {}", o.wg.out.join("encap-ab.md").display());
            Ok(())
        }
        Cmd::Wireguard {
            short,
            out,
            mode,
            reps,
            load_core,
            worker_core,
            weir,
            wireguard_go,
            no_weir,
            window_ms,
            rr_count,
            bulk_secs,
        } => {
            let mut o = two_node_options(
                short,
                out,
                mode,
                (load_core, worker_core),
                window_ms,
                rr_count,
                bulk_secs,
            );
            o.reps = reps.unwrap_or(if short { 1 } else { 3 });
            o.wireguard_go = wireguard_go;
            o.weir = if no_weir {
                None
            } else {
                Some(weir_perf::weir::find_weir(weir.as_deref())?)
            };
            let rep = weir_perf::wireguard::run(&o)?;
            print!("{}", rep.markdown());
            println!(
                "\nwritten: {} and {}",
                o.out.join("wireguard.md").display(),
                o.out.join("wireguard.json").display()
            );
            Ok(())
        }
        Cmd::Grpc {
            out,
            mode,
            worker_core,
            load_core,
            weir,
            seconds,
            reps,
            clients,
            streams,
            no_kernel,
        } => {
            let o = weir_perf::grpc::GrpcOptions {
                weir: weir_perf::weir::find_weir(weir.as_deref())?,
                out,
                mode,
                worker_core,
                load_core,
                seconds,
                reps,
                clients,
                streams,
                no_kernel,
            };
            let report = weir_perf::grpc::run(&o)?;
            print!("{}", report.markdown());
            Ok(())
        }
        Cmd::Fastpath {
            short,
            out,
            modes,
            load_core,
            worker_core,
            weir,
            kernel_only,
            window_ms,
            rr_count,
            batch,
        } => {
            let mut o = Options::new(short);
            o.out = out;
            o.modes = modes;
            o.load_core = load_core;
            o.worker_core = worker_core;
            o.udp_batch = batch;
            if let Some(ms) = window_ms {
                o.window = Duration::from_millis(ms);
            }
            if let Some(n) = rr_count {
                o.rr_count = n;
                o.rr_warmup = (n / 10).max(1);
            }
            o.weir = if kernel_only {
                None
            } else {
                Some(fastpath::weir_binary(weir.as_deref())?)
            };
            let report = fastpath::run(&o)?;
            print!("{}", report.markdown());
            println!(
                "\nwritten: {} and {}",
                o.out.join("fastpath.md").display(),
                o.out.join("fastpath.json").display()
            );
            Ok(())
        }
        Cmd::Rr {
            out,
            modes,
            reps,
            count,
            load_core,
            worker_core,
            weir,
            kernel_only,
            breakdown,
            busy_poll,
            weir_args,
            pod_rx_cpus,
        } => {
            let o = weir_perf::rrbreak::RrOptions {
                out,
                modes,
                reps,
                count,
                load_core,
                worker_core,
                weir: if kernel_only {
                    None
                } else {
                    Some(fastpath::weir_binary(weir.as_deref())?)
                },
                breakdown,
                busy_poll,
                weir_args,
                pod_rx_cpus,
            };
            let rep = weir_perf::rrbreak::run(&o)?;
            print!("{}", rep.markdown());
            println!("\nwritten: {}", o.out.join("rr.md").display());
            Ok(())
        }
        Cmd::Percore {
            out,
            reps,
            variants,
            window_ms,
            warmup_ms,
            batch,
            load_core,
            worker_core,
            mode,
            rr_count,
            http_secs,
            bulk_secs,
        } => {
            let o = weir_perf::percore::PercoreOptions {
                out,
                reps,
                window: Duration::from_millis(window_ms),
                warmup: Duration::from_millis(warmup_ms),
                batch,
                load_core,
                worker_core,
                mode,
                rr_count,
                http_secs,
                bulk_secs,
                variants: variants
                    .iter()
                    .map(|v| weir_perf::percore::Variant::parse(v))
                    .collect::<anyhow::Result<_>>()?,
            };
            let rep = weir_perf::percore::run(&o)?;
            print!("{}", rep.markdown());
            println!("\nwritten: {}", o.out.join("percore.md").display());
            Ok(())
        }
        Cmd::Scale {
            out,
            reps,
            flows,
            window_ms,
            warmup_ms,
            batch,
            load_core,
            worker_cores,
            mode,
            weir,
            weir_args,
            pod_rx_cpus,
        } => {
            let o = weir_perf::scale::ScaleOptions {
                out,
                reps,
                flows,
                window: Duration::from_millis(window_ms),
                warmup: Duration::from_millis(warmup_ms),
                batch,
                load_core,
                worker_cores,
                mode,
                weir: fastpath::weir_binary(weir.as_deref())?,
                weir_args,
                pod_rx_cpus,
            };
            let rep = weir_perf::scale::run(&o)?;
            print!("{}", rep.markdown());
            println!("\nwritten: {}", o.out.join("scale.md").display());
            Ok(())
        }
        Cmd::Flows {
            out,
            reps,
            flows,
            variants,
            weir,
            window_ms,
            warmup_ms,
            load_core,
            worker_core,
            mode,
            conntrack_size,
            no_kernel,
            no_ovs,
        } => {
            let mut variants = variants
                .iter()
                .map(|v| weir_perf::percore::Variant::parse(v))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if variants.is_empty() {
                let bin = fastpath::weir_binary(weir.as_deref())?;
                for m in ["auto", "off", "on"] {
                    variants.push(weir_perf::percore::Variant {
                        label: m.to_string(),
                        bin: bin.clone(),
                        args: vec!["--ct-prefetch".into(), m.into()],
                    });
                }
            }
            let most = flows.iter().copied().max().unwrap_or(1);
            let o = weir_perf::flows::FlowsOptions {
                out,
                reps,
                flows,
                window: Duration::from_millis(window_ms),
                warmup: Duration::from_millis(warmup_ms),
                load_core,
                worker_core,
                mode,
                conntrack_size: conntrack_size
                    .unwrap_or_else(|| (2 * most).next_power_of_two().max(262_144)),
                variants,
                kernel: !no_kernel,
                ovs: !no_ovs,
            };
            let rep = weir_perf::flows::run(&o)?;
            print!("{}", rep.markdown());
            println!("\nwritten: {}", o.out.join("flows.md").display());
            Ok(())
        }
        Cmd::Idle {
            out,
            reps,
            variants,
            count,
            window_ms,
            load_core,
            worker_core,
            weir,
            no_kernel,
        } => {
            let o = weir_perf::idle::IdleOptions {
                out,
                reps,
                variants: variants
                    .iter()
                    .map(|v| weir_perf::idle::Variant::parse(v))
                    .collect::<anyhow::Result<_>>()?,
                count,
                window: Duration::from_millis(window_ms),
                load_core,
                worker_core,
                weir: fastpath::weir_binary(weir.as_deref())?,
                no_kernel,
            };
            let rep = weir_perf::idle::run(&o)?;
            print!("{}", rep.markdown());
            println!("\nwritten: {}", o.out.join("idle.md").display());
            Ok(())
        }
        Cmd::Paper {
            short,
            out,
            modes,
            reps,
            load_core,
            worker_core,
            weir,
            kernel_only,
            rules,
            no_ovs,
            no_haproxy,
            conntrack_bench,
            window_ms,
            scale_reps,
            issue5_reps,
            inter_node,
            pod_rx_cpus,
        } => {
            let mut o = weir_perf::paper::PaperOptions::new(short);
            o.pod_rx_cpus = pod_rx_cpus;
            o.out = out;
            o.mode = modes.last().cloned().unwrap_or_default();
            o.modes = modes;
            o.reps = reps;
            o.load_core = load_core;
            o.worker_core = worker_core;
            o.ovs = !no_ovs;
            o.haproxy = !no_haproxy;
            if let Some(r) = rules {
                o.rules = r;
            }
            if let Some(c) = conntrack_bench {
                o.conntrack_bench = c;
            }
            if let Some(ms) = window_ms {
                o.window = Duration::from_millis(ms);
            }
            if let Some(n) = scale_reps {
                o.scale_reps = n;
            }
            if let Some(n) = issue5_reps {
                o.issue5_reps = n;
            }
            if let Some(b) = inter_node {
                o.inter_node = b;
            }
            o.weir = if kernel_only {
                None
            } else {
                Some(fastpath::weir_binary(weir.as_deref())?)
            };
            let rep = weir_perf::paper::run(&o)?;
            print!("{}", rep.markdown());
            println!(
                "\nwritten: {} and {}, plots paper-*.svg there",
                o.out.join("paper.md").display(),
                o.out.join("paper.json").display()
            );
            Ok(())
        }
        Cmd::Services {
            short,
            out,
            mode,
            load_core,
            worker_core,
            weir,
            kernel_only,
            services,
            reps,
            window_ms,
            conn_window_ms,
            rr_count,
            no_linear,
        } => {
            let mut o = weir_perf::services::SvcOptions::new(short);
            o.out = out;
            o.mode = mode;
            o.load_core = load_core;
            o.worker_core = worker_core;
            o.linear = !no_linear;
            if let Some(n) = services {
                o.services = n;
            }
            if let Some(n) = reps {
                o.reps = n;
            }
            if let Some(ms) = window_ms {
                o.window = Duration::from_millis(ms);
            }
            if let Some(ms) = conn_window_ms {
                o.conn_window = Duration::from_millis(ms);
            }
            if let Some(n) = rr_count {
                o.rr_count = n;
                o.rr_warmup = (n / 10).max(1);
            }
            o.weir = if kernel_only {
                None
            } else {
                Some(fastpath::weir_binary(weir.as_deref())?)
            };
            let rep = weir_perf::services::run(&o)?;
            print!("{}", rep.markdown());
            println!(
                "\nwritten: {} and {}",
                o.out.join("services.md").display(),
                o.out.join("services.json").display()
            );
            Ok(())
        }
        Cmd::HostPolicy {
            out,
            mode,
            reps,
            seconds,
            rr_count,
            load_core,
            worker_core,
            weir,
        } => {
            let mut o = weir_perf::hostpolicy::HpOptions::new(
                weir_perf::weir::find_weir(weir.as_deref())?,
                seconds,
            );
            o.out = out;
            o.mode = mode;
            o.reps = reps;
            o.load_core = load_core;
            o.worker_core = worker_core;
            if let Some(n) = rr_count {
                o.rr_count = n;
            }
            let rep = weir_perf::hostpolicy::run(&o)?;
            print!("{}", rep.markdown());
            println!(
                "\nwritten: {} and {}",
                o.out.join("host-policy.md").display(),
                o.out.join("host-policy.json").display()
            );
            Ok(())
        }
    }
}
