//! The `weir` command. Every error is one line on stderr and a non-zero exit.
#![deny(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_control::get::{self, Output};
use weir_control::ipc::{self, Request};
use weir_control::manifests::{self, StoredPolicy};
use weir_control::probe::{self, Family, ProbeSpec, Protocol};
use weir_control::state::{StateDir, DEFAULT_CLUSTER};
use weir_control::{apiserver, daemon, demo, kubelet, node_dataplane, status};
use weir_dataplane::runtime::PollMode;
use weir_model::ipc::{ChangeReply, ClusterStatus, DeleteReply, Empty, FlowsReply, Readiness};
use weir_topo::fields::FieldValidation;
use weir_topo::{BuildOptions, Cluster};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: a container-networking dataplane on AF_XDP"
)]
struct Cli {
    /// Which local cluster (several can run side by side).
    #[arg(long, global = true, env = "WEIR_CLUSTER", default_value = DEFAULT_CLUSTER)]
    cluster: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct DataplaneFlags {
    /// Cores for the dataplane workers, one worker per core (e.g. `1`, `0,1`, `0-3`).
    /// Default: the last core.
    #[arg(long)]
    cores: Option<String>,
    /// Polling mode: busy (spin), wakeup (sleep on the rings), adaptive (spin while busy, sleep when idle).
    #[arg(long, value_enum, default_value_t = Poll::Adaptive)]
    poll: Poll,
    /// Connections under HTTP rules each worker inspects at once; a new one beyond it is
    /// refused (`l7-no-slot`). See docs/l7.md for the memory this costs.
    #[arg(long, default_value_t = weir_dataplane::pass::DEFAULT_L7_MAX_FLOWS)]
    l7_max_flows: usize,
    /// Conntrack entries per node (rounded up to a power of two, at least 16):
    /// the node's flow table, allocated once at start (68 bytes an entry).
    /// See docs/conntrack.md.
    #[arg(long, default_value_t = weir_dataplane::conntrack::DEFAULT_SIZE)]
    conntrack_size: usize,
    /// Where the cluster supervisor (`weir up`, `weir demo`) serves Prometheus
    /// metrics (/metrics) and the flow stream (/flows), in the host's network
    /// namespace; `off` serves nothing (docs/observability.md).
    #[arg(long, env = "WEIR_METRICS_ADDR", default_value = weir_control::metrics::DEFAULT_ADDR, value_name = "ADDR:PORT|off")]
    metrics_addr: String,
    /// Encryption of pod traffic between nodes: `wireguard` (docs/encryption.md) or `none`.
    #[arg(long, value_enum, default_value_t = Encrypt::None)]
    encrypt: Encrypt,
    /// Record where each batch's time goes (RX wait, pass, TX kick) in histograms shown
    /// by `weir status` and exported as weir_dataplane_stage_seconds (docs/observability.md).
    /// Off by default: three more clock reads per batch.
    #[arg(long)]
    latency_breakdown: bool,
    /// Bind the AF_XDP sockets zero-copy (XDP_ZEROCOPY) where the driver offers it, else
    /// copy mode; `weir status` shows the mode of each port (veth: always copy,
    /// "zero-copy refused: EOPNOTSUPP"). See docs/performance.md.
    #[arg(long)]
    zero_copy: bool,
    /// Socket busy polling: SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET on
    /// every AF_XDP socket; the worker drives the device's NAPI poll itself each round
    /// (docs/performance.md). Off by default.
    #[arg(long)]
    busy_poll: bool,
    /// Adaptive polling: how long a worker spins after its last frame before it sleeps in
    /// poll(), µs (0: sleep after the first empty round). See docs/performance.md.
    #[arg(long, default_value_t = weir_dataplane::runtime::ADAPTIVE_IDLE_AFTER.as_micros() as u64)]
    idle_spin_us: u64,
    /// Adaptive polling: yield the core (sched_yield) on every empty round while spinning,
    /// so a co-located node's worker or an application runs first (`--idle-yield false`:
    /// plain spin).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    idle_yield: bool,
    /// Adaptive polling under thin load: after a round that took fewer than half a batch,
    /// sleep (4 µs, doubling while rounds stay thin) up to this many µs so the next round
    /// finds a batch and the core is free meanwhile; an empty round ends it. 0: off
    /// (docs/performance.md, "Coalescing under thin load").
    #[arg(long, default_value_t = u64::from(weir_dataplane::runtime::DEFAULT_COALESCE_US), value_name = "US")]
    coalesce_us: u64,
    /// When workers run the conntrack prefetch (the pass's stage 0): auto (when a
    /// worker sees ~4096 distinct flows per 16384 packets or more: the flows outgrow the
    /// cache), on (every batch), off. `weir status` shows each worker's (docs/conntrack.md).
    #[arg(long, value_enum, default_value_t = CtPrefetchArg::Auto)]
    ct_prefetch: CtPrefetchArg,
}

/// `--ct-prefetch`: when workers run the conntrack prefetch.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CtPrefetchArg {
    Auto,
    On,
    Off,
}

impl CtPrefetchArg {
    fn mode(self) -> weir_model::status::CtPrefetch {
        use weir_model::status::CtPrefetch;
        match self {
            CtPrefetchArg::Auto => CtPrefetch::Auto,
            CtPrefetchArg::On => CtPrefetch::On,
            CtPrefetchArg::Off => CtPrefetch::Off,
        }
    }
}

/// `--encrypt`: encryption between nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Encrypt {
    None,
    Wireguard,
}

impl DataplaneFlags {
    fn args(&self) -> anyhow::Result<Vec<String>> {
        node_dataplane::check_l7_max_flows(self.l7_max_flows)?;
        let mut v = vec![
            "--poll".to_string(),
            self.poll.mode().as_str().to_string(),
            "--l7-max-flows".to_string(),
            self.l7_max_flows.to_string(),
        ];
        if self.conntrack_size != weir_dataplane::conntrack::DEFAULT_SIZE {
            node_dataplane::check_conntrack_size(self.conntrack_size)?;
            v.extend([
                "--conntrack-size".to_string(),
                self.conntrack_size.to_string(),
            ]);
        }
        if let Some(c) = &self.cores {
            node_dataplane::parse_cores(c)?;
            v.extend(["--cores".to_string(), c.clone()]);
        }
        if self.encrypt == Encrypt::Wireguard {
            v.extend(["--encrypt".to_string(), "wireguard".to_string()]);
        }
        if self.latency_breakdown {
            v.push("--latency-breakdown".to_string());
        }
        if self.zero_copy {
            v.push("--zero-copy".to_string());
        }
        if self.busy_poll {
            v.push("--busy-poll".to_string());
        }
        node_dataplane::check_idle_spin_us(self.idle_spin_us)?;
        if self.idle_spin_us != weir_dataplane::runtime::ADAPTIVE_IDLE_AFTER.as_micros() as u64 {
            v.extend(["--idle-spin-us".to_string(), self.idle_spin_us.to_string()]);
        }
        if !self.idle_yield {
            v.extend(["--idle-yield".to_string(), "false".to_string()]);
        }
        let coalesce = node_dataplane::check_coalesce_us(self.coalesce_us)?;
        if coalesce != weir_dataplane::runtime::DEFAULT_COALESCE_US {
            v.extend(["--coalesce-us".to_string(), coalesce.to_string()]);
        }
        if self.ct_prefetch != CtPrefetchArg::Auto {
            v.extend([
                "--ct-prefetch".to_string(),
                self.ct_prefetch.mode().as_str().to_string(),
            ]);
        }
        Ok(v)
    }
}

impl DataplaneFlags {
    /// `--pod-rx-cpus` resolved against these flags' worker cores.
    fn pod_rx_cpus(&self, p: &weir_control::pod_rx::PodRxCpus) -> anyhow::Result<Vec<usize>> {
        let workers = match &self.cores {
            Some(c) => node_dataplane::parse_cores(c)?,
            None => node_dataplane::default_cores(),
        };
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(p.resolve(&workers, n))
    }
}

/// `--poll`: how a worker waits for traffic.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Poll {
    Busy,
    Wakeup,
    Adaptive,
}

impl Poll {
    fn mode(self) -> PollMode {
        match self {
            Poll::Busy => PollMode::Busy,
            Poll::Wakeup => PollMode::Wakeup,
            Poll::Adaptive => PollMode::Adaptive,
        }
    }
}

/// `--encap`: encapsulation between nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum EncapArg {
    Vxlan,
    Geneve,
}

/// `explain --protocol` (any case).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProtocolArg {
    #[value(name = "TCP")]
    Tcp,
    #[value(name = "UDP")]
    Udp,
    #[value(name = "SCTP")]
    Sctp,
}

impl From<ProtocolArg> for weir_model::Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => weir_model::Protocol::Tcp,
            ProtocolArg::Udp => weir_model::Protocol::Udp,
            ProtocolArg::Sctp => weir_model::Protocol::Sctp,
        }
    }
}

/// What to do with manifest fields the object's schema does not define.
#[derive(clap::Args, Clone)]
struct ValidationFlags {
    /// strict: refuse the files (one error line naming the object and the
    /// field path; nothing is applied); warn: drop unknown fields and print
    /// one line per field; ignore: drop them silently.
    #[arg(long = "field-validation", value_name = "strict|warn|ignore")]
    field_validation: Option<FieldValidation>,
    /// kubectl's older spelling: true = strict, false = ignore (or strict,
    /// warn, ignore).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    validate: Option<String>,
}

impl ValidationFlags {
    fn mode(&self) -> anyhow::Result<FieldValidation> {
        let from_validate = match self.validate.as_deref() {
            None => None,
            Some("true") => Some(FieldValidation::Strict),
            Some("false") => Some(FieldValidation::Ignore),
            Some(other) => Some(
                other
                    .parse::<FieldValidation>()
                    .map_err(|e| anyhow::anyhow!("--validate: {e} (or true, false)"))?,
            ),
        };
        match (self.field_validation, from_validate) {
            (Some(a), Some(b)) if a != b => anyhow::bail!(
                "--field-validation={a} and --validate={}: give one of them",
                self.validate.as_deref().unwrap_or_default()
            ),
            (Some(a), _) => Ok(a),
            (None, Some(b)) => Ok(b),
            (None, None) => Ok(FieldValidation::Strict),
        }
    }
}

/// Under `warn`, one line per dropped field on stderr.
fn warn_ignored<'a>(mode: FieldValidation, ignored: impl IntoIterator<Item = &'a str>) {
    if mode == FieldValidation::Warn {
        for f in ignored {
            eprintln!("weir: warning: {f}: unknown field ignored");
        }
    }
}

/// The filters of `weir flows` (the `/flows` stream takes the same names).
#[derive(clap::Args, Clone, Default)]
struct FlowFilterArgs {
    /// Source pod: NS/POD, every pod of a namespace NS/, or an address.
    #[arg(long, value_name = "NS/POD|NS/")]
    from: Option<String>,
    /// Destination pod: NS/POD, NS/, or an address.
    #[arg(long, value_name = "NS/POD|NS/")]
    to: Option<String>,
    /// allowed, denied or audit.
    #[arg(long, value_name = "allowed|denied|audit")]
    verdict: Option<String>,
    /// A drop reason (policy-denied, l7-denied, no-route, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
    /// A policy name the deciding egress or ingress rule names.
    #[arg(long)]
    policy: Option<String>,
}

impl FlowFilterArgs {
    fn filter(&self) -> anyhow::Result<weir_control::flows::FlowFilter> {
        weir_control::flows::FlowFilter::new(
            self.from.as_deref(),
            self.to.as_deref(),
            self.verdict.as_deref(),
            self.reason.as_deref(),
            self.port,
            self.policy.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("--{e}"))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a local cluster from manifests (Node, Namespace, Pod), start weir on it.
    #[command(after_help = "Examples:
  weir up -f cluster.yaml
  weir up -f cluster.yaml --cores 2,3 --poll busy
  weir up -f cluster.yaml --metrics-addr 127.0.0.1:9963   # /metrics and /flows there
  weir up -f cluster.yaml --api-server")]
    Up {
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        validation: ValidationFlags,
        #[command(flatten)]
        dp: DataplaneFlags,
        /// Pod MTU (default: the underlay MTU minus the encapsulation's overhead).
        #[arg(long, default_value_t = 0)]
        mtu: u32,
        /// MTU of the underlay links between nodes (default 1500). A pod MTU
        /// above 3822 (jumbo frames, e.g. `--underlay-mtu 9050 --mtu 9000`)
        /// turns on AF_XDP multi-buffer (docs/performance.md).
        #[arg(long, default_value_t = 1500)]
        underlay_mtu: u32,
        /// Encapsulation between nodes.
        #[arg(long, value_enum, default_value_t = EncapArg::Vxlan)]
        encap: EncapArg,
        /// RX/TX queues per pod interface.
        #[arg(long, default_value_t = 2)]
        queues: u32,
        /// Run the cluster on a real Kubernetes API server that weir starts
        /// (etcd, kube-apiserver, kube-controller-manager): pods, namespaces
        /// and policies of the files are created there, and weir acts as
        /// the nodes' kubelet for networking (see docs/kubernetes.md).
        #[arg(long)]
        api_server: bool,
        /// An IPv4 or IPv6 CIDR pods reach without SNAT (their own address stays the
        /// source; ip-masq-agent's nonMasqueradeCIDRs); repeatable. See
        /// docs/egress.md.
        #[arg(long = "non-masquerade", value_name = "CIDR")]
        non_masquerade: Vec<ipnet::IpNet>,
        #[command(flatten)]
        failsafe: FailsafeFlags,
        /// Where pods' receive path runs when weir's worker transmits to
        /// them: RPS on each pod's eth0 to these CPUs (`auto`: every CPU
        /// without a weir worker; `off`: inside the worker's TX kick, on its
        /// core). See docs/performance.md, "Pod RX steering".
        #[arg(long, value_name = "auto|off|LIST", default_value = weir_control::pod_rx::DEFAULT)]
        pod_rx_cpus: weir_control::pod_rx::PodRxCpus,
    },
    /// Stop weir and remove the local cluster completely.
    Down,
    /// Print the path of the admin kubeconfig of the cluster's API server
    /// (`weir up --api-server`).
    Kubeconfig,
    /// Print weir's CRDs (WeirPolicy, WeirClusterPolicy), generated from its
    /// Rust types; with --dir, write them there, one file each (deploy/crds).
    Crds {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Run kubectl (the version weir's API server is) against the cluster's
    /// API server: `weir kubectl get pods -A`.
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// weir as the nodes' kubelet for networking, and the policy agent
    /// (started by `weir up --api-server`).
    #[command(hide = true)]
    Kubelet {
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// List nodes, namespaces, pods or services.
    Get {
        /// nodes | namespaces | pods | services
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// json | yaml | wide
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Per-worker counters, rates, drops by reason and latency percentiles.
    #[command(after_help = "Examples:
  weir status
  weir status -o json | jq '.nodes[].status.dataplane.totals.drops'
  curl -s http://127.0.0.1:9962/metrics    # the same counters for Prometheus")]
    Status {
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Where the workers run and how busy they and their cores are, with
    /// advice on --cores and --poll (docs/observability.md, "Cores").
    #[command(after_help = "Examples:
  weir cores
  weir cores --node node-1 --window 5000 -o json | jq '.advice'")]
    Cores {
        /// Only this node's workers (the cores table is the host's).
        #[arg(long)]
        node: Option<String>,
        /// How long to measure, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        window: u64,
        /// json | yaml
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Connect from pods to pods for real and print the reachability matrix.
    Probe {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: Protocol,
        /// NS/POD, or NS for all pods of a namespace. Default: every pod.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, conflicts_with = "to_service")]
        to: Option<String>,
        /// NS/NAME of a Service: connect to its ClusterIP and report which
        /// backend pod answered each connection.
        #[arg(long)]
        to_service: Option<String>,
        /// Connections per source pod (with --to-service).
        #[arg(long, default_value_t = 10, requires = "to_service")]
        count: usize,
        #[arg(long, default_value = "ipv4")]
        family: Family,
        /// Per-attempt timeout in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Attempts before a pair counts as blocked.
        #[arg(long, default_value_t = 2)]
        attempts: u32,
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Why a flow is allowed or denied: the deciding policy and rule, by the workers' own lookup.
    #[command(after_help = "Examples:
  weir explain --from x/a --to y/b --port 80 --protocol TCP
  weir explain --from x/a --to y/b --port 80 --protocol TCP -o yaml")]
    Explain {
        /// NS/POD
        #[arg(long)]
        from: String,
        /// NS/POD
        #[arg(long)]
        to: String,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, ignore_case = true, default_value_t = ProtocolArg::Tcp)]
        protocol: ProtocolArg,
        /// Judge one HTTP request on the flow: 'METHOD /path' (optionally
        /// followed by the version, e.g. 'GET / HTTP/1.0'), with the workers'
        /// own HTTP parser and rule set.
        #[arg(long, value_name = "'METHOD /path'")]
        http: Option<String>,
        /// Host of the --http request (default: the destination's address:port).
        #[arg(long, requires = "http")]
        host: Option<String>,
        /// A header line of the --http request ('Name: value'); repeatable.
        #[arg(long = "header", value_name = "'Name: value'", requires = "http")]
        headers: Vec<String>,
        /// Judge a DNS query for NAME (DNS rules are not implemented yet).
        #[arg(long, value_name = "NAME")]
        dns: Option<String>,
        /// Judge a TLS connection whose ClientHello names NAME (TLS rules).
        #[arg(long, value_name = "NAME")]
        sni: Option<String>,
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Policy verification without traffic: `weir policy check`.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// New flows and drops, with verdict, drop reason and the deciding rules.
    #[command(after_help = "Examples:
  weir flows --verdict denied              # every drop, with the deciding rule
  weir flows -f --from x/ --to y/b --port 80
  weir flows --reason l7-denied -o json
  curl -N 'http://127.0.0.1:9962/flows?verdict=denied'   # the same filters, streamed")]
    Flows {
        /// Keep printing new records.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only records after this sequence number (per node).
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        filter: FlowFilterArgs,
        /// table | json | yaml
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Create or change pods, namespaces (labels) and policies on the running cluster.
    #[command(after_help = "Examples:
  weir apply -f policy.yaml
  weir apply -f pods.yaml -f policy.yaml --field-validation=warn")]
    Apply {
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        validation: ValidationFlags,
    },
    /// Delete pods and policies from the running cluster.
    #[command(after_help = "Examples:
  weir delete -f policy.yaml")]
    Delete {
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        validation: ValidationFlags,
    },
    /// What weir is for, in about two minutes: two nodes, L7 and DNS rules,
    /// precedence, a revocation, a rough side-by-side, then everything removed.
    Demo {
        /// Leave the cluster up afterwards.
        #[arg(long)]
        keep: bool,
        /// auto: on a real Kubernetes API server when its binaries are built
        /// (scripts/k8s-build.sh), else from manifest files; api-server; files.
        #[arg(long, default_value = "auto", value_name = "auto|api-server|files")]
        mode: String,
        /// Encapsulation between the two nodes.
        #[arg(long, value_enum, default_value_t = EncapArg::Vxlan)]
        encap: EncapArg,
        #[command(flatten)]
        dp: DataplaneFlags,
    },
    /// Watch a Kubernetes API server: with --node, be that node's agent
    /// (CNI endpoint, dataplane, snapshot from the API server); without,
    /// enforce its policies on the local cluster --cluster.
    Agent {
        /// Kubeconfig of the API server to watch (with --node it may be
        /// omitted inside a pod: the pod's ServiceAccount is used).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// The Node this agent serves (its Node object's name).
        #[arg(long)]
        node: Option<String>,
        /// The node's network namespace (NAME or /run/netns/NAME); default: the agent's own.
        #[arg(long, requires = "node")]
        netns: Option<String>,
        /// Where the node's state lives (default $WEIR_STATE_DIR or /run/weir).
        #[arg(long, requires = "node")]
        state_dir: Option<PathBuf>,
        /// Do not start the dataplane (another container runs `weir dataplane`).
        #[arg(long, requires = "node")]
        external_dataplane: bool,
        /// Also write the CNI conflist into DIR (the runtime's /etc/cni/net.d).
        #[arg(long, requires = "node")]
        cni_conf_dir: Option<PathBuf>,
        /// Encapsulation between nodes (every node agent of a cluster must
        /// use the same one).
        #[arg(long, requires = "node", value_enum, default_value_t = EncapArg::Vxlan)]
        encap: EncapArg,
        /// The node's uplink to the world (pod → world SNAT, node ports):
        /// `auto` (the IPv4 default route's interface; the default), `none`,
        /// or an interface name. It must be the underlay interface.
        #[arg(long, requires = "node", value_name = "auto|none|IFACE")]
        uplink: Option<weir_control::node_agent::UplinkChoice>,
        /// A destination pods reach with their own address (no SNAT);
        /// repeatable, IPv4 (ip-masq-agent's nonMasqueradeCIDRs).
        #[arg(long = "non-masquerade", value_name = "CIDR", requires = "node")]
        non_masquerade: Vec<ipnet::IpNet>,
        /// The cluster's Service range (the API server's
        /// --service-cluster-ip-range); repeatable; default weir's own,
        /// 10.96.0.0/16 and fd00:96::/112.
        #[arg(long = "service-cidr", value_name = "CIDR", requires = "node")]
        service_cidr: Vec<ipnet::IpNet>,
        #[command(flatten)]
        dp: DataplaneFlags,
        #[command(flatten)]
        failsafe: FailsafeFlags,
        /// With --node: where pods' receive path runs (RPS on each pod's
        /// interface; `auto`, `off` or a CPU list), as for `weir up`.
        #[arg(long, value_name = "auto|off|LIST", default_value = weir_control::pod_rx::DEFAULT)]
        pod_rx_cpus: weir_control::pod_rx::PodRxCpus,
    },
    /// A node's dataplane process: run it (done by the supervisor), or stop/start it.
    Dataplane {
        #[command(subcommand)]
        action: Option<DpAction>,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        dp: DataplaneFlags,
    },
    /// WireGuard between nodes (docs/encryption.md).
    Wireguard {
        #[command(subcommand)]
        action: WgAction,
    },
    /// Print the CNI network configuration list a container runtime on NODE
    /// uses (plugin `weir-cni`; put it in /etc/cni/net.d/).
    CniConfig {
        #[arg(long)]
        node: String,
    },
    /// Print a shell completion script: `weir completion bash > /etc/bash_completion.d/weir`.
    #[command(after_help = "Examples:
  source <(weir completion bash)
  weir completion zsh > \"${fpath[1]}/_weir\"
  weir completion fish > ~/.config/fish/completions/weir.fish")]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The cluster supervisor (started by `weir up`).
    #[command(hide = true)]
    Daemon {
        #[command(flatten)]
        dp: DataplaneFlags,
    },
    /// One pod's test servers (started by the supervisor; survives it).
    #[command(hide = true)]
    PodServer {
        /// `<namespace>/<name>`, or `world`.
        #[arg(long)]
        id: String,
        /// What to bind and answer (JSON, `pod_server::ServerSpec`).
        #[arg(long)]
        spec: String,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// The reachability matrix (every pod pair x declared port/protocol x
    /// family) from the workers' own judge, and findings about the policies.
    Check {
        /// Manifest files (Node, Namespace, Pod, policies); without, the
        /// running cluster --cluster.
        #[arg(short = 'f', long = "filename", num_args = 1..)]
        files: Vec<PathBuf>,
        /// Only these ports (PORT[/PROTOCOL], repeatable); default: every declared port.
        #[arg(long = "port", value_parser = weir_control::policy_cmd::parse_port)]
        ports: Vec<(u16, weir_model::Protocol)>,
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
        /// Exit 1 when a finding is at least this severe (info, warning, error).
        #[arg(long)]
        fail_on: Option<weir_policy::check::Severity>,
    },
    /// Which pairs/ports a policy change opens and closes; against the
    /// running cluster, also the admitted flows it would revoke.
    Diff {
        /// The new manifests (policies; optionally a topology).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The old manifests (topology and policies); without, the running cluster --cluster.
        #[arg(long = "old", num_args = 1..)]
        old: Vec<PathBuf>,
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Least-privilege NetworkPolicies admitting exactly the flows the
    /// running cluster admitted (its flow logs), one per workload.
    Suggest {
        /// Only workloads of this namespace (repeatable); default: all.
        #[arg(short = 'n', long = "namespace")]
        namespaces: Vec<String>,
        /// Only flows recorded within this long (`15m`, `2h`; ms, s, m, h, d).
        #[arg(long, value_parser = weir_control::policy_cmd::parse_duration)]
        since: Option<std::time::Duration>,
        /// WeirPolicy `http` rules from the HTTP methods and path prefixes seen.
        #[arg(long)]
        l7: bool,
        /// table (rules with flow counts), yaml (the manifests `weir apply`
        /// takes) or json (both, with the check).
        #[arg(short = 'o', long, default_value = "table")]
        output: weir_control::policy_cmd::SuggestOutput,
    },
}

#[derive(Subcommand)]
enum WgAction {
    /// A new WireGuard key pair for a node: of the local cluster `--cluster`
    /// (`weir up --encrypt wireguard`; its dataplane publishes the new public
    /// key in the cluster state), or of a node agent's node (`weir agent
    /// --node N --encrypt wireguard`; the agent publishes it on its Node). The
    /// dataplane and the peers switch to it (docs/encryption.md).
    Rotate {
        #[arg(long)]
        node: String,
        /// The agent's --state-dir (default $WEIR_STATE_DIR or /run/weir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DpAction {
    /// Stop a node's dataplane: its pod interfaces then drop everything (fail closed).
    Stop {
        #[arg(long)]
        node: String,
    },
    /// Start a node's dataplane again.
    Start {
        #[arg(long)]
        node: String,
    },
}

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("warn,netlink_packet_route=error,kube_client=off"),
    )
    .format_timestamp_millis()
    .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_on_flag_error(e),
    };
    if let Err(e) = run(cli) {
        eprintln!("weir: {e:#}");
        std::process::exit(1);
    }
}

/// Exits on a command-line error: with clap's status (2), except a bad
/// value of `--poll`, `--encap` or `--protocol`, which exit 1 as they did
/// when weir parsed them itself.
fn exit_on_flag_error(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let ours = e.kind() == ErrorKind::InvalidValue
        && matches!(
            e.get(ContextKind::InvalidArg),
            Some(ContextValue::String(a))
                if ["--poll", "--encap", "--protocol"].iter().any(|f| a.starts_with(f))
        );
    if ours {
        let _ = e.print();
        std::process::exit(1);
    }
    e.exit()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    validate_cluster_name(&cli.cluster)?;
    let state = StateDir::new(&cli.cluster);
    match cli.cmd {
        Cmd::Up {
            files,
            validation,
            dp,
            mtu,
            underlay_mtu,
            queues,
            encap,
            api_server,
            non_masquerade,
            failsafe,
            pod_rx_cpus,
        } => {
            let pod_rx_cpus = dp.pod_rx_cpus(&pod_rx_cpus)?;
            let encap = match encap {
                EncapArg::Vxlan => weir_topo::Encap::Vxlan,
                EncapArg::Geneve => weir_topo::Encap::Geneve,
            };
            let mode = validation.mode()?;
            let m = manifests::read_files(&files, mode)?;
            warn_ignored(mode, m.ignored.iter().map(String::as_str));
            let opts = BuildOptions {
                queues,
                mtu,
                underlay_mtu,
                encap,
                non_masquerade,
                host_failsafe: failsafe.ports()?,
                pod_rx_cpus,
                ..Default::default()
            };
            if api_server {
                let (text, source) = weir_control::policy_cmd::read_texts(&files)?;
                return up_api_server(&state, &text, &source, m, mode, &dp, opts);
            }
            let spec = m.cluster.finish()?;
            let policies = m.policies.into_iter().map(|(_, s)| s).collect();
            up(&state, &spec, &policies, &dp, opts)
        }
        Cmd::Down => down(&state),
        Cmd::Kubeconfig => {
            let kc = apiserver::kubeconfig(&state);
            anyhow::ensure!(
                kc.is_file(),
                "cluster {}: no API server (start it with `weir up --api-server -f FILE`)",
                cli.cluster
            );
            println!("{}", kc.display());
            Ok(())
        }
        Cmd::Crds { dir } => weir_control::crds::print_or_write(dir.as_deref()),
        Cmd::Kubectl { args } => {
            let err = apiserver::kubectl(&state)?.args(&args).exec();
            Err(anyhow::anyhow!("kubectl: {err}"))
        }
        Cmd::Kubelet { kubeconfig } => kubelet::run(kubelet::Options {
            kubeconfig,
            cluster: cli.cluster.clone(),
        }),
        Cmd::Wireguard {
            action: WgAction::Rotate { node, state_dir },
        } => {
            // A node of the local cluster `--cluster` (`weir up --encrypt
            // wireguard`): its dataplane published `<node>.pub` there.
            let local = weir_control::node_wireguard::dir(&state).join(format!("{node}.pub"));
            if state_dir.is_none() && local.exists() {
                anyhow::ensure!(
                    Cluster::load(&state.cluster_file()).is_ok_and(|c| c.node(&node).is_some()),
                    "nodes/{node}: not in cluster {}",
                    cli.cluster
                );
                let public = weir_control::node_wireguard::rotate(&state, &node)?;
                println!("nodes/{node}: new WireGuard public key {public}");
                return Ok(());
            }
            if let Some(d) = &state_dir {
                std::env::set_var("WEIR_STATE_DIR", d);
            }
            let st = weir_control::state::StateDir::new(weir_control::node_agent::CLUSTER);
            let key = weir_control::node_wireguard::dir(&st)
                .join(&node)
                .join(weir_dataplane::wireguard::KEY_FILE_NAME);
            anyhow::ensure!(
                key.exists(),
                "nodes/{node}: no WireGuard key at {} (is `weir agent --node {node} --encrypt wireguard` running with this state directory, or is `--cluster` a cluster up with `--encrypt wireguard`?)",
                key.display()
            );
            let public = weir_control::node_wireguard::rotate(&st, &node)?;
            println!("nodes/{node}: new WireGuard public key {public}");
            Ok(())
        }
        Cmd::CniConfig { node } => {
            let cluster = Cluster::load(&state.cluster_file())
                .with_context(|| format!("cluster {}: not up", cli.cluster))?;
            let n = cluster
                .node(&node)
                .ok_or_else(|| anyhow::anyhow!("nodes/{node}: not in cluster {}", cli.cluster))?;
            anyhow::ensure!(
                n.dataplane == weir_topo::NodeDataplane::Weir,
                "nodes/{node}: a kernel node (no weir dataplane)"
            );
            let conf = serde_json::json!({
                // Runtimes that know spec 1.1 pick the newest of
                // cniVersions; older ones read cniVersion.
                "cniVersion": "1.0.0",
                "cniVersions": weir_cni_versions(),
                "name": format!("weir-{}", cli.cluster),
                "plugins": [{
                    "type": "weir-cni",
                    "cluster": cli.cluster,
                    "node": node,
                    "socket": state.daemon_sock().display().to_string(),
                }],
            });
            println!("{}", serde_json::to_string_pretty(&conf)?);
            Ok(())
        }
        Cmd::Agent {
            kubeconfig,
            node: Some(node),
            netns,
            state_dir,
            external_dataplane,
            cni_conf_dir,
            encap,
            uplink,
            non_masquerade,
            service_cidr,
            dp,
            failsafe,
            pod_rx_cpus,
        } => {
            weir_control::node_agent::check_non_masquerade(&non_masquerade)?;
            let pod_rx_cpus = dp.pod_rx_cpus(&pod_rx_cpus)?;
            weir_control::node_agent::run(weir_control::node_agent::Options {
                host_failsafe: failsafe.ports()?,
                kubeconfig,
                node,
                netns,
                state_dir,
                spawn_dataplane: !external_dataplane,
                dataplane_args: dp.args()?,
                wireguard: dp.encrypt == Encrypt::Wireguard,
                cni_conf_dir,
                metrics_addr: dp.metrics_addr.clone(),
                encap: match encap {
                    EncapArg::Vxlan => weir_topo::Encap::Vxlan,
                    EncapArg::Geneve => weir_topo::Encap::Geneve,
                },
                uplink: uplink.unwrap_or_default(),
                non_masquerade,
                service_cidrs: service_cidr,
                pod_rx_cpus,
            })
        }
        Cmd::Agent { kubeconfig, .. } => {
            let kubeconfig =
                kubeconfig.context("--kubeconfig (or KUBECONFIG) is required without --node")?;
            weir_control::kube_agent::run(weir_control::kube_agent::Options {
                kubeconfig,
                cluster: cli.cluster.clone(),
            })
        }
        Cmd::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            let c = load(&state)?;
            let ns = if all_namespaces {
                None
            } else {
                namespace.as_deref()
            };
            let text = match kind.as_str() {
                "nodes" | "node" | "no" => get::nodes(&c, name.as_deref(), output)?,
                "namespaces" | "namespace" | "ns" => get::namespaces(&c, name.as_deref(), output)?,
                "pods" | "pod" | "po" => get::pods(&c, ns, name.as_deref(), output)?,
                "services" | "service" | "svc" => get::services(&c, ns, name.as_deref(), output)?,
                other => {
                    anyhow::bail!("get: unknown kind {other:?} (nodes, namespaces, pods, services)")
                }
            };
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Cmd::Cores {
            node,
            window,
            output,
        } => {
            let mut r = weir_control::cores::measure(
                || daemon_call(&state, &Request::Status),
                Duration::from_millis(window),
                node.as_deref(),
            )?;
            // Where the kernel's receive work for the nodes' interfaces
            // runs: IRQ affinity and RPS masks.
            let v: ClusterStatus = daemon_call(&state, &Request::Status)?;
            let cluster = weir_topo::Cluster::load(&state.cluster_file()).ok();
            r.interfaces = weir_control::cores::interfaces(&v, node.as_deref(), |n| {
                cluster
                    .as_ref()
                    .and_then(|c| c.node(n))
                    .map(|n| n.netns.clone())
            });
            let mut more = weir_control::cores::interface_advice(&r.workers, &r.interfaces);
            r.idle = weir_control::cores::IdleCores::read();
            more.extend(weir_control::cores::idle_advice(&r.workers, &r.idle));
            if !more.is_empty() {
                r.advice.retain(|a| a.kind != "ok");
                r.advice.extend(more);
            }
            anyhow::ensure!(
                !r.workers.is_empty(),
                "{}: no weir worker answered in both samples (weir status shows why)",
                node.as_deref().unwrap_or("cluster")
            );
            match output {
                Output::Json => println!("{}", json_text(&r, true)?),
                Output::Yaml => print!("{}", output.render(&r)?),
                _ => print!("{}", weir_control::cores::render(&r)),
            }
            Ok(())
        }
        Cmd::Status { output } => {
            let v: ClusterStatus = daemon_call(&state, &Request::Status)?;
            match output {
                Output::Json => println!("{}", json_text(&v, true)?),
                Output::Yaml => print!("{}", output.render(&v)?),
                _ => print!("{}", status::render(&v)),
            }
            Ok(())
        }
        Cmd::Probe {
            port,
            protocol,
            from,
            to,
            to_service,
            count,
            family,
            timeout_ms,
            attempts,
            output,
        } => {
            anyhow::ensure!(port != 0, "--port: 0 is not a port (1-65535)");
            let c = load(&state)?;
            let from = probe::select(&c, from.as_deref())?;
            if let Some(svc) = to_service {
                anyhow::ensure!(count > 0, "--count: must be at least 1");
                let p = probe::run_service(
                    &c,
                    &from,
                    &svc,
                    &ProbeSpec {
                        port,
                        protocol,
                        family,
                        timeout: Duration::from_millis(timeout_ms),
                        attempts,
                    },
                    count,
                )?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&p)?),
                    _ => print!("{}", probe::render_service(&p)),
                }
                return Ok(());
            }
            let to = probe::select(&c, to.as_deref())?;
            let m = probe::run(
                &from,
                &to,
                &ProbeSpec {
                    port,
                    protocol,
                    family,
                    timeout: Duration::from_millis(timeout_ms),
                    attempts,
                },
            );
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&m)?),
                Output::Yaml => print!("{}", output.render(&m)?),
                _ => print!("{}", probe::render(&m)),
            }
            Ok(())
        }
        Cmd::Apply { files, validation } => {
            refuse_on_api_server(&state, "apply")?;
            let field_validation = validation.mode()?;
            let (text, source) = weir_control::policy_cmd::read_texts(&files)?;
            let v: ChangeReply = daemon_call(
                &state,
                &Request::Apply {
                    manifests: text,
                    source,
                    field_validation,
                },
            )?;
            warn_ignored(
                field_validation,
                ignored_of(v.ignored.as_deref().unwrap_or_default()),
            );
            for w in &v.warnings {
                eprintln!("weir: warning: {w}");
            }
            print_changed(&v);
            wait_ready(&state, Duration::from_secs(30)).map_err(change_kept)?;
            Ok(())
        }
        Cmd::Delete { files, validation } => {
            refuse_on_api_server(&state, "delete")?;
            let field_validation = validation.mode()?;
            let (text, source) = weir_control::policy_cmd::read_texts(&files)?;
            let v: DeleteReply = daemon_call(
                &state,
                &Request::Delete {
                    manifests: text,
                    source,
                    field_validation,
                },
            )?;
            warn_ignored(field_validation, ignored_of(&v.ignored));
            for p in &v.deleted {
                println!("{p} deleted");
            }
            wait_ready(&state, Duration::from_secs(30)).map_err(change_kept)?;
            Ok(())
        }
        Cmd::Explain {
            from,
            to,
            port,
            protocol,
            http,
            host,
            headers,
            dns,
            sni,
            output,
        } => {
            anyhow::ensure!(
                [dns.is_some(), http.is_some(), sni.is_some()]
                    .iter()
                    .filter(|x| **x)
                    .count()
                    <= 1,
                "--dns, --http and --sni: give one of them"
            );
            let request = match http {
                None => None,
                Some(line) => {
                    let mut words = line.split_whitespace();
                    anyhow::ensure!(
                        words.next().is_some() && words.next().is_some(),
                        "--http: {line:?} is not 'METHOD /path' (e.g. 'GET /public')"
                    );
                    for h in &headers {
                        anyhow::ensure!(h.contains(':'), "--header: {h:?} is not 'Name: value'");
                    }
                    Some(weir_policy::explain::HttpRequest {
                        line,
                        host,
                        headers,
                    })
                }
            };
            let cluster = load(&state)?;
            let input = policy_input(&state, &cluster)?;
            if let Some(e) = explain_node(&cluster, &input, &from, &to, protocol, port)? {
                anyhow::ensure!(
                    request.is_none() && dns.is_none(),
                    "--http and --dns: not with a node (host endpoint policy has no L7 rules)"
                );
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
                    Output::Yaml => print!("{}", output.render(&e)?),
                    _ => println!("{e}"),
                }
                return Ok(());
            }
            let (fns, fname) = split_pod(&from, "--from")?;
            let (tns, tname) = split_pod(&to, "--to")?;
            let protocol = weir_model::Protocol::from(protocol);
            anyhow::ensure!(port != 0, "--port: 0 is not a port (1-65535)");
            let e = match (&request, &dns) {
                (None, None) if sni.is_some() => weir_policy::explain::explain_tls(
                    &input,
                    (fns, fname),
                    (tns, tname),
                    protocol,
                    port,
                    sni.as_deref().unwrap_or_default(),
                ),
                (None, Some(name)) => weir_policy::explain::explain_dns(
                    &input,
                    (fns, fname),
                    (tns, tname),
                    protocol,
                    port,
                    name,
                ),
                (None, None) => {
                    weir_policy::explain(&input, (fns, fname), (tns, tname), protocol, port)
                }
                (Some(r), _) => weir_policy::explain::explain_http(
                    &input,
                    (fns, fname),
                    (tns, tname),
                    protocol,
                    port,
                    r,
                ),
            }?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
                Output::Yaml => print!("{}", output.render(&e)?),
                _ => println!("{e}"),
            }
            Ok(())
        }
        Cmd::Policy {
            action:
                PolicyAction::Check {
                    files,
                    ports,
                    output,
                    fail_on,
                },
        } => {
            use weir_control::policy_cmd::{self, Source};
            let source = if files.is_empty() {
                Source::Cluster(&state)
            } else {
                Source::Files(&files)
            };
            let code = policy_cmd::check(source, &ports, output, fail_on)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Cmd::Policy {
            action: PolicyAction::Diff { files, old, output },
        } => weir_control::policy_cmd::diff(
            (!old.is_empty()).then_some(old.as_slice()),
            &state,
            &files,
            output,
        ),
        Cmd::Policy {
            action:
                PolicyAction::Suggest {
                    namespaces,
                    since,
                    l7,
                    output,
                },
        } => {
            let args = weir_control::policy_cmd::SuggestArgs {
                namespaces: &namespaces,
                since,
                l7,
                output,
            };
            let code = weir_control::policy_cmd::suggest(&state, &args)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Cmd::Flows {
            follow,
            output,
            since,
            filter,
        } => flows_cmd(&state, follow, output, since, &filter.filter()?),
        Cmd::Demo {
            keep,
            dp,
            mode,
            encap,
        } => {
            let api_server = match mode.as_str() {
                "auto" => apiserver::check_binaries().is_ok() && apiserver::script().is_ok(),
                "api-server" => true,
                "files" => false,
                other => anyhow::bail!("--mode: {other:?} is not auto, api-server or files"),
            };
            let mut up_args = dp.args()?;
            up_args.extend(["--metrics-addr".to_string(), dp.metrics_addr.clone()]);
            if let EncapArg::Geneve = encap {
                up_args.extend(["--encap".to_string(), "geneve".to_string()]);
            }
            demo::run(
                &state,
                &demo::Options {
                    keep,
                    api_server,
                    up_args,
                },
            )
        }
        Cmd::Dataplane { action, node, dp } => {
            match action {
                Some(DpAction::Stop { node }) => {
                    daemon_call::<Empty>(&state, &Request::StopDataplane { node: node.clone() })?;
                    println!("dataplane of node {node} stopped: its pods' interfaces now drop all traffic");
                    Ok(())
                }
                Some(DpAction::Start { node }) => {
                    daemon_call::<Empty>(&state, &Request::StartDataplane { node: node.clone() })?;
                    wait_ready(&state, Duration::from_secs(30))?;
                    println!("dataplane of node {node} running");
                    Ok(())
                }
                None => {
                    let node = node.context("dataplane: --node is required")?;
                    let cores = match &dp.cores {
                        Some(c) => node_dataplane::parse_cores(c)?,
                        None => node_dataplane::default_cores(),
                    };
                    node_dataplane::run(node_dataplane::Options {
                        cluster: cli.cluster.clone(),
                        node,
                        cores,
                        poll: dp.poll.mode(),
                        l7_max_flows: node_dataplane::check_l7_max_flows(dp.l7_max_flows)?,
                        conntrack_size: node_dataplane::check_conntrack_size(dp.conntrack_size)?,
                        wireguard: dp.encrypt == Encrypt::Wireguard,
                        latency_breakdown: dp.latency_breakdown,
                        zero_copy: dp.zero_copy,
                        busy_poll: dp.busy_poll,
                        idle_spin_us: node_dataplane::check_idle_spin_us(dp.idle_spin_us)?,
                        idle_yield: dp.idle_yield,
                        coalesce_us: node_dataplane::check_coalesce_us(dp.coalesce_us)?,
                        ct_prefetch: dp.ct_prefetch.mode(),
                    })
                }
            }
        }
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "weir", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Daemon { dp } => daemon::run(daemon::Options {
            cluster: cli.cluster.clone(),
            dataplane_args: dp.args()?,
            metrics_addr: dp.metrics_addr.clone(),
        }),
        Cmd::PodServer { id, spec } => weir_control::pod_server::run(&state, &id, &spec),
    }
}

fn validate_cluster_name(name: &str) -> anyhow::Result<()> {
    weir_topo::check_cluster_name(name).map_err(|e| anyhow::anyhow!("--cluster: {e}"))
}

fn load(state: &StateDir) -> anyhow::Result<Cluster> {
    anyhow::ensure!(
        state.exists(),
        "cluster {}: not up (run `weir up -f FILE` first)",
        state.cluster
    );
    Cluster::load(&state.cluster_file()).with_context(|| state.cluster_file().display().to_string())
}

/// One request to the supervisor, its reply read as `T` (a payload of
/// [`weir_model::ipc`]).
fn daemon_call<T: serde::de::DeserializeOwned>(
    state: &StateDir,
    req: &Request,
) -> anyhow::Result<T> {
    anyhow::ensure!(
        state.exists(),
        "cluster {}: not up (run `weir up -f FILE` first)",
        state.cluster
    );
    Ok(ipc::request(
        &state.daemon_sock(),
        req,
        Duration::from_secs(60),
    )?)
}

/// A reply as JSON text, keys sorted (as the wire's untyped JSON printed).
fn json_text<T: serde::Serialize>(v: &T, pretty: bool) -> anyhow::Result<String> {
    let v = serde_json::to_value(v)?;
    Ok(if pretty {
        serde_json::to_string_pretty(&v)?
    } else {
        serde_json::to_string(&v)?
    })
}

fn up(
    state: &StateDir,
    spec: &weir_topo::manifest::ClusterSpec,
    policies: &Vec<StoredPolicy>,
    dp: &DataplaneFlags,
    opts: BuildOptions,
) -> anyhow::Result<()> {
    let cluster = up_inner(state, spec, policies, dp, opts)?;
    println!(
        "cluster {} up: {} node(s), {} namespace(s), {} pod(s); weir forwarding",
        state.cluster,
        cluster.nodes.len(),
        cluster.namespaces.len(),
        spec.pods.len()
    );
    Ok(())
}

fn up_inner(
    state: &StateDir,
    spec: &weir_topo::manifest::ClusterSpec,
    policies: &Vec<StoredPolicy>,
    dp: &DataplaneFlags,
    opts: BuildOptions,
) -> anyhow::Result<Cluster> {
    let dp_args = dp.args()?;
    anyhow::ensure!(
        !state.exists(),
        "cluster {}: already up (run `weir down` first, or pick another --cluster)",
        state.cluster
    );
    // An address in use: one line now, before anything is built (the
    // supervisor binds it for good below).
    drop(weir_control::metrics::bind(&dp.metrics_addr)?);
    // Leftovers of a cluster of the same name that died without `weir down`.
    stop_kubelet(state);
    apiserver::stop(state);
    let _ = weir_topo::teardown_by_name(&state.cluster);
    let _ = std::fs::remove_dir_all(&state.root);
    // Every object is checked first; then topo builds the nodes (and the
    // pods of kernel nodes, which have no weir), and the supervisor
    // attaches the pods of weir nodes through weir-cni, as a node's
    // container runtime would (docs/cni.md).
    let mut spec = spec.clone();
    spec.apply_defaults();
    spec.validate()?;
    let on_weir = |p: &weir_topo::PodSpec| {
        spec.nodes
            .iter()
            .any(|n| n.name == p.node && n.dataplane == weir_topo::NodeDataplane::Weir)
    };
    let cni_pods: Vec<weir_topo::PodSpec> =
        spec.pods.iter().filter(|p| on_weir(p)).cloned().collect();
    let total_pods = spec.pods.len();
    spec.pods.retain(|p| !on_weir(p));
    for p in &cni_pods {
        let netns = weir_topo::pod_netns(&state.cluster, &p.namespace, &p.name);
        anyhow::ensure!(
            !weir_topo::netns::exists(&netns),
            "pods/{}/{}: netns {netns} exists already",
            p.namespace,
            p.name
        );
    }
    let cluster = Cluster::build(&state.cluster, &spec, &opts)?;
    std::fs::create_dir_all(&state.root)?;
    let saved = (|| -> anyhow::Result<()> {
        weir_control::agent::check(&weir_control::source::Manifests {
            cluster: &cluster,
            policies,
        })?;
        weir_control::state::write_atomic(
            &state.policies_file(),
            &serde_json::to_vec_pretty(policies)?,
        )?;
        weir_control::state::write_atomic(
            &state.pending_pods_file(),
            &serde_json::to_vec_pretty(&cni_pods)?,
        )?;
        cluster.save(&state.cluster_file())?;
        Ok(())
    })();
    if let Err(e) = saved {
        let _ = cluster.teardown();
        let _ = std::fs::remove_dir_all(&state.root);
        return Err(e);
    }
    let log = std::fs::File::create(state.daemon_log())?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--cluster")
        .arg(&state.cluster)
        .arg("daemon")
        .args(&dp_args)
        .arg("--metrics-addr")
        .arg(&dp.metrics_addr)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,netlink_packet_route=error");
    }
    cmd.spawn().context("start the cluster supervisor")?;
    // Each dataplane attaches XDP and opens sockets port by port (about a
    // quarter of a second per pod on a quiet machine): give big nodes time.
    let per_pod = Duration::from_millis(1000) * total_pods as u32;
    if let Err(e) = wait_ready(state, Duration::from_secs(60) + per_pod) {
        let tail = log_tail(state);
        let _ = down(state);
        anyhow::bail!("{e}{tail}");
    }
    Ok(cluster)
}

fn log_tail(state: &StateDir) -> String {
    let mut out = String::new();
    let mut files = vec![state.daemon_log()];
    if let Ok(c) = Cluster::load(&state.cluster_file()) {
        files.extend(c.nodes.iter().map(|n| state.dataplane_log(&n.name)));
    }
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            let lines: Vec<&str> = t.lines().rev().take(5).collect();
            for l in lines.into_iter().rev() {
                if l.contains("ERROR") || l.contains("weir:") {
                    out.push_str(&format!(" [{}] {}", f.display(), l.trim()));
                }
            }
        }
    }
    out
}

/// `weir apply`/`delete` store the change (the supervisor compiled and wrote
/// the snapshot) before waiting for the dataplanes: a node whose dataplane is
/// down or slow does not lose it, it runs the change when it starts. Say so,
/// so an operator does not apply the same manifests again or think the change
/// was refused.
fn change_kept(e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{e:#}; the change is stored: a node whose dataplane is down runs it when it \
         starts again (`weir dataplane start --node NODE`)"
    )
}

fn wait_ready(state: &StateDir, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("supervisor not answering");
    while Instant::now() < deadline {
        match ipc::request::<Readiness>(
            &state.daemon_sock(),
            &Request::Ping,
            Duration::from_secs(5),
        ) {
            Ok(v) if v.ready => return Ok(()),
            Ok(v) if !v.failed.is_empty() => {
                anyhow::bail!("cluster {}: {}", state.cluster, v.failed.join("; "))
            }
            Ok(v) => last = format!("not ready: {}", json_text(&v.nodes, false)?),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!(
        "cluster {}: not ready after {:?}: {last}",
        state.cluster,
        timeout
    )
}

fn down(state: &StateDir) -> anyhow::Result<()> {
    let had_state = state.exists();
    // The kubelet first, so it does not react to what goes away.
    stop_kubelet(state);
    if state.daemon_sock().exists() {
        let _ = ipc::call(
            &state.daemon_sock(),
            &Request::Shutdown,
            Duration::from_secs(30),
        );
    }
    // Pod servers whose supervisor died (a live one stopped them above).
    weir_control::pod_server::stop_all(state, &[]);
    if let Ok(c) = Cluster::load(&state.cluster_file()) {
        // Dataplanes whose supervisor died are not stopped by it: stop them.
        for n in &c.nodes {
            stop_orphan(&state.dataplane_pid(&n.name));
        }
        c.teardown()?;
    }
    weir_topo::teardown_by_name(&state.cluster)?;
    apiserver::stop(state);
    let _ = std::fs::remove_dir_all(&state.root);
    if had_state {
        println!("cluster {} removed", state.cluster);
    } else {
        println!("cluster {}: nothing to remove", state.cluster);
    }
    Ok(())
}

/// Stops the process whose id is in `pid_file`, if it is still a weir dataplane.
fn stop_orphan(pid_file: &std::path::Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_dataplane = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains("weir") && c.contains(" dataplane ")
        })
        .unwrap_or(false);
    if !is_dataplane {
        return;
    }
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    for _ in 0..100 {
        if kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Prints what `apply` created or changed, one object a line.
/// The `ignored` list of an apply/delete reply.
fn ignored_of(ignored: &[String]) -> impl Iterator<Item = &str> {
    ignored.iter().map(String::as_str)
}

fn print_changed(v: &ChangeReply) {
    for ch in &v.changed {
        println!("{} {}", ch.object, ch.action);
    }
}

/// The compiler's input for the running cluster: its pods and namespaces and
/// the policies the supervisor enforces.
fn policy_input(state: &StateDir, c: &Cluster) -> anyhow::Result<weir_policy::PolicyInput> {
    let policies = manifests::parse_all(&manifests::load_policies(&state.policies_file())?)?;
    Ok(weir_policy::PolicyInput::from_cluster(c, policies))
}

fn split_pod<'a>(s: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
        _ => anyhow::bail!("{flag}: {s:?} is not NAMESPACE/POD"),
    }
}

fn flows_cmd(
    state: &StateDir,
    follow: bool,
    output: Output,
    since: u64,
    filter: &weir_control::flows::FlowFilter,
) -> anyhow::Result<()> {
    let c = load(state)?;
    let mut last: std::collections::BTreeMap<String, u64> =
        c.nodes.iter().map(|n| (n.name.clone(), since)).collect();
    let mut all = Vec::new();
    loop {
        let mut got = Vec::new();
        for n in weir_control::agent::weir_nodes(&c) {
            let since = last[&n.name];
            match ipc::request::<FlowsReply>(
                &state.dataplane_sock(&n.name),
                &Request::Flows { since },
                // A page of the flow log is tens of MB when the buffer is
                // full, and the dataplane's control socket serves one
                // request at a time (the metrics flow stream polls it too):
                // under a flood a debug build needed more than 5 s.
                Duration::from_secs(30),
            ) {
                Ok(v) => {
                    got.extend(v.records);
                    last.insert(n.name.clone(), v.last);
                }
                Err(e) if follow => eprintln!("weir: nodes/{}: {e}", n.name),
                Err(e) => return Err(anyhow::anyhow!("nodes/{}: dataplane: {e}", n.name)),
            }
        }
        got.retain(|r| filter.matches(r));
        got.sort_by_key(|r| r.time_unix_ns);
        if follow {
            for r in &got {
                match output {
                    Output::Json => println!("{}", json_text(r, false)?),
                    Output::Yaml => print!("---\n{}", output.render(r)?),
                    _ => println!("{}", weir_control::flows::line(r)),
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        all.extend(got);
        break;
    }
    match output {
        Output::Json => println!("{}", json_text(&all, true)?),
        Output::Yaml => print!("{}", output.render(&all)?),
        _ => {
            for r in &all {
                println!("{}", weir_control::flows::line(r));
            }
        }
    }
    Ok(())
}

/// The versions weir-cni speaks (the `cniVersions` of `weir cni-config`).
fn weir_cni_versions() -> Vec<&'static str> {
    vec!["0.4.0", "1.0.0", "1.1.0"]
}

/// `weir up --api-server`: the local cluster's nodes (and namespaces) are
/// built as by `weir up`; a real control plane starts under the state dir;
/// `weir kubelet` (the nodes' kubelet for networking and the policy agent)
/// starts beside the supervisor; every other object of the files
/// (namespaces, pods, policies) is created in the API server, the one source
/// of truth, and realised from there.
fn up_api_server(
    state: &StateDir,
    text: &str,
    source: &str,
    m: manifests::Manifests,
    mode: FieldValidation,
    dp: &DataplaneFlags,
    opts: BuildOptions,
) -> anyhow::Result<()> {
    apiserver::check_binaries()?;
    // The API objects: every document but the Nodes, namespaces first.
    let docs = weir_topo::manifest::split_documents_with(text, source, mode, &mut Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut namespaces = Vec::new();
    let mut objects = Vec::new();
    for d in docs.iter().filter(|d| d.kind != "Node") {
        let mut v = serde_json::to_value(&d.value)?;
        if d.kind == "Pod" {
            fill_images(&mut v);
        }
        if d.kind == "Namespace" {
            namespaces.push(v);
        } else {
            objects.push(v);
        }
    }
    let mut used_namespaces: std::collections::BTreeSet<String> = objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_string))
        .collect();
    if m.cluster.pods.iter().any(|p| p.namespace == "default") {
        used_namespaces.insert("default".into());
    }
    let pods: Vec<(String, String)> = m
        .cluster
        .pods
        .iter()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    let mut local = m.cluster;
    local.pods.clear();
    let spec = local.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Quiet: the summary is printed once the API server runs.
    up_quiet(state, &spec, dp, opts)?;
    let result = (|| -> anyhow::Result<()> {
        let kubeconfig = apiserver::start(state)?;
        // The namespaces before the kubelet: it removes a local namespace
        // the API server does not have.
        apiserver::apply(state, &namespaces)?;
        start_kubelet(state, &kubeconfig)?;
        for ns in &used_namespaces {
            apiserver::wait_default_service_account(state, ns)?;
        }
        apiserver::apply(state, &objects)?;
        // Every pod of the files realised and running on the dataplanes.
        let limit = Duration::from_secs(60 + pods.len() as u64);
        let deadline = Instant::now() + limit;
        loop {
            let c = load(state)?;
            let missing: Vec<String> = pods
                .iter()
                .filter(|(ns, n)| c.pod(ns, n).is_none())
                .map(|(ns, n)| format!("pods/{ns}/{n}"))
                .collect();
            if missing.is_empty() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not realised after {:?}: {} (see {})",
                limit,
                missing.join(", "),
                apiserver::kubelet_log(state).display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_ready(state, Duration::from_secs(60))
    })();
    if let Err(e) = result {
        let _ = down(state);
        return Err(e);
    }
    let c = load(state)?;
    println!(
        "cluster {} up on a Kubernetes API server: {} node(s), {} pod(s); weir forwarding",
        state.cluster,
        c.nodes.len(),
        c.pods.len()
    );
    println!(
        "kubeconfig: {} (or `weir kubectl ...`)",
        apiserver::kubeconfig(state).display()
    );
    Ok(())
}

fn up_quiet(
    state: &StateDir,
    spec: &weir_topo::manifest::ClusterSpec,
    dp: &DataplaneFlags,
    opts: BuildOptions,
) -> anyhow::Result<()> {
    up_inner(state, spec, &Vec::new(), dp, opts).map(|_| ())
}

/// Starts `weir kubelet` for the cluster (log and pid file in the state dir).
fn start_kubelet(state: &StateDir, kubeconfig: &std::path::Path) -> anyhow::Result<()> {
    let log = std::fs::File::create(apiserver::kubelet_log(state))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--cluster")
        .arg(&state.cluster)
        .arg("kubelet")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        // The process started here supervises the real kubelet (its child),
        // restarting it when it exits.
        .env(kubelet::SUPERVISE_ENV, "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env(
            "RUST_LOG",
            "info,kube_client=off,netlink_packet_route=error",
        );
    }
    let child = cmd.spawn().context("start weir kubelet")?;
    std::fs::write(apiserver::kubelet_pid(state), child.id().to_string())?;
    Ok(())
}

/// Stops the cluster's `weir kubelet`, if one runs.
fn stop_kubelet(state: &StateDir) {
    let f = apiserver::kubelet_pid(state);
    if let Some(pid) = apiserver::read_pid(&f) {
        if apiserver::cmdline(pid).is_some_and(|c| c.contains("weir") && c.contains(" kubelet ")) {
            // The supervising process first (so it restarts nothing), then
            // the kubelet it runs.
            let mut pids = vec![pid];
            pids.extend(apiserver::children(pid));
            apiserver::terminate_all(&pids, Duration::from_secs(5));
        }
    }
    let _ = std::fs::remove_file(&f);
}

/// The API server requires an image per container; weir's pods run none
/// (weir serves their containerPorts itself), so a pod written for `weir
/// up` without one gets [`apiserver::NO_IMAGE`].
fn fill_images(pod: &mut serde_json::Value) {
    for key in ["containers", "initContainers"] {
        if let Some(cs) = pod["spec"][key].as_array_mut() {
            for c in cs {
                if c.get("image").is_none() {
                    c["image"] = apiserver::NO_IMAGE.into();
                }
            }
        }
    }
}

/// On a cluster run by an API server, the API server is the one source of
/// truth: what `weir apply`/`delete` changed would be undone by `weir
/// kubelet` and the agent.
fn refuse_on_api_server(state: &StateDir, verb: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !apiserver::running(state),
        "cluster {} runs on a Kubernetes API server (weir up --api-server): use `weir kubectl {verb} -f FILE`",
        state.cluster
    );
    Ok(())
}

/// The nodes' failsafe ports: the node's own traffic on them is allowed
/// whatever host endpoint policy says (docs/policy.md, "Host endpoint
/// policy"). `PROTO:PORT` or `PROTO:FIRST-LAST`, comma-separated; `none`
/// for no such port.
#[derive(clap::Args, Debug, Clone)]
struct FailsafeFlags {
    /// To the node (from pods, from anywhere).
    #[arg(long, value_name = "PORTS", default_value = weir_model::policy::DEFAULT_FAILSAFE_INBOUND)]
    failsafe_inbound: String,
    /// From the node.
    #[arg(long, value_name = "PORTS", default_value = weir_model::policy::DEFAULT_FAILSAFE_OUTBOUND)]
    failsafe_outbound: String,
}

impl FailsafeFlags {
    fn ports(&self) -> anyhow::Result<weir_model::policy::FailsafePorts> {
        use weir_model::policy::FailsafePort;
        Ok(weir_model::policy::FailsafePorts {
            inbound: FailsafePort::parse_list(&self.failsafe_inbound)
                .map_err(|e| anyhow::anyhow!("--failsafe-inbound: {e}"))?,
            outbound: FailsafePort::parse_list(&self.failsafe_outbound)
                .map_err(|e| anyhow::anyhow!("--failsafe-outbound: {e}"))?,
        })
    }
}

/// `weir explain` with `node/NAME` on one side (host endpoint policy):
/// `None` when neither side is a node.
fn explain_node(
    cluster: &Cluster,
    input: &weir_policy::PolicyInput,
    from: &str,
    to: &str,
    protocol: ProtocolArg,
    port: u16,
) -> anyhow::Result<Option<weir_policy::Explanation>> {
    use weir_policy::explain::FlowEnd;
    let node_name = |s: &str| s.strip_prefix("node/").map(str::to_string);
    let (fnode, tnode) = (node_name(from), node_name(to));
    let Some(name) = fnode.clone().or(tnode.clone()) else {
        return Ok(None);
    };
    anyhow::ensure!(port != 0, "--port: 0 is not a port (1-65535)");
    let Some(n) = cluster.node(&name) else {
        // A namespace named `node`: its pods, not a node.
        if input.pods.iter().any(|p| p.namespace == "node") {
            return Ok(None);
        }
        anyhow::bail!("nodes/{name}: not in the cluster");
    };
    let host = weir_control::agent::host_endpoint(cluster, n).ok_or_else(|| {
        anyhow::anyhow!("nodes/{name}: has no host port (its traffic does not cross weir)")
    })?;
    fn end<'a>(s: &'a str, flag: &str) -> anyhow::Result<FlowEnd<'a>> {
        Ok(match s.strip_prefix("node/") {
            Some(n) => FlowEnd::Node(n),
            // The node's own outbound traffic to an address (its nftables
            // table): `--from node/NAME --to 198.51.100.1`.
            None if flag == "--to" && s.parse::<std::net::IpAddr>().is_ok() => {
                FlowEnd::Addr(s.parse()?)
            }
            None => {
                let (ns, p) = split_pod(s, flag)?;
                FlowEnd::Pod(ns, p)
            }
        })
    }
    let e = weir_policy::explain::explain_host(
        input,
        &host,
        end(from, "--from")?,
        end(to, "--to")?,
        weir_model::Protocol::from(protocol),
        port,
    )?;
    Ok(Some(e))
}
