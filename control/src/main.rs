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
use weir_control::{daemon, demo, node_dataplane, status};
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
    #[arg(long, default_value = "adaptive")]
    poll: String,
    /// Connections under HTTP rules each worker inspects at once; a new one beyond it is
    /// refused (`l7-no-slot`). See docs/l7.md for the memory this costs.
    #[arg(long, default_value_t = weir_dataplane::pass::DEFAULT_L7_MAX_FLOWS)]
    l7_max_flows: usize,
}

impl DataplaneFlags {
    fn args(&self) -> anyhow::Result<Vec<String>> {
        node_dataplane::parse_poll(&self.poll)?;
        node_dataplane::check_l7_max_flows(self.l7_max_flows)?;
        let mut v = vec![
            "--poll".to_string(),
            self.poll.clone(),
            "--l7-max-flows".to_string(),
            self.l7_max_flows.to_string(),
        ];
        if let Some(c) = &self.cores {
            node_dataplane::parse_cores(c)?;
            v.extend(["--cores".to_string(), c.clone()]);
        }
        Ok(v)
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

#[derive(Subcommand)]
enum Cmd {
    /// Build a local cluster from manifests (Node, Namespace, Pod), start weir on it.
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
        /// Encapsulation between nodes: vxlan or geneve.
        #[arg(long, default_value = "vxlan")]
        encap: String,
        /// RX/TX queues per pod interface.
        #[arg(long, default_value_t = 2)]
        queues: u32,
    },
    /// Stop weir and remove the local cluster completely.
    Down,
    /// List nodes, namespaces or pods.
    Get {
        /// nodes | namespaces | pods
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// json | wide
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Per-worker counters, rates, drops by reason and latency percentiles.
    Status {
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
        #[arg(long)]
        to: Option<String>,
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
    Explain {
        /// NS/POD
        #[arg(long)]
        from: String,
        /// NS/POD
        #[arg(long)]
        to: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: String,
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
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// New flows and drops, with verdict, drop reason and the deciding rules.
    Flows {
        /// Keep printing new records.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only records after this sequence number (per node).
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Create or change pods, namespaces (labels) and policies on the running cluster.
    Apply {
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        validation: ValidationFlags,
    },
    /// Delete pods and policies from the running cluster.
    Delete {
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        validation: ValidationFlags,
    },
    /// Bring up the built-in sample cluster, probe it, show status, take it down.
    Demo {
        /// Leave the cluster up afterwards.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        dp: DataplaneFlags,
    },
    /// Watch a Kubernetes API server and enforce its policies on this cluster.
    Agent {
        /// Kubeconfig of the API server to watch.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
    },
    /// A node's dataplane process: run it (done by the supervisor), or stop/start it.
    Dataplane {
        #[command(subcommand)]
        action: Option<DpAction>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        cores: Option<String>,
        #[arg(long, default_value = "adaptive")]
        poll: String,
        #[arg(long, default_value_t = weir_dataplane::pass::DEFAULT_L7_MAX_FLOWS)]
        l7_max_flows: usize,
    },
    /// Print the CNI network configuration list a container runtime on NODE
    /// uses (plugin `weir-cni`; put it in /etc/cni/net.d/).
    CniConfig {
        #[arg(long)]
        node: String,
    },
    /// The cluster supervisor (started by `weir up`).
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        cores: Option<String>,
        #[arg(long, default_value = "adaptive")]
        poll: String,
        #[arg(long, default_value_t = weir_dataplane::pass::DEFAULT_L7_MAX_FLOWS)]
        l7_max_flows: usize,
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
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("weir: {e:#}");
        std::process::exit(1);
    }
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
            queues,
            encap,
        } => {
            let encap = match encap.as_str() {
                "vxlan" => weir_topo::Encap::Vxlan,
                "geneve" => weir_topo::Encap::Geneve,
                other => anyhow::bail!("--encap: {other:?} is not vxlan or geneve"),
            };
            let mode = validation.mode()?;
            let m = manifests::read_files(&files, mode)?;
            warn_ignored(mode, m.ignored.iter().map(String::as_str));
            let spec = m.cluster.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
            let policies = m.policies.into_iter().map(|(_, s)| s).collect();
            let opts = BuildOptions {
                queues,
                mtu,
                encap,
                ..Default::default()
            };
            up(&state, &spec, &policies, &dp, opts)
        }
        Cmd::Down => down(&state),
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
        Cmd::Agent { kubeconfig } => {
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
                other => anyhow::bail!("get: unknown kind {other:?} (nodes, namespaces, pods)"),
            };
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Cmd::Status { output } => {
            let v = daemon_call(&state, &Request::Status)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                _ => print!("{}", status::render(&v)),
            }
            Ok(())
        }
        Cmd::Probe {
            port,
            protocol,
            from,
            to,
            family,
            timeout_ms,
            attempts,
            output,
        } => {
            anyhow::ensure!(port != 0, "--port: 0 is not a port (1-65535)");
            let c = load(&state)?;
            let from = probe::select(&c, from.as_deref())?;
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
                _ => print!("{}", probe::render(&m)),
            }
            Ok(())
        }
        Cmd::Apply { files, validation } => {
            let field_validation = validation.mode()?;
            let (text, source) = read_texts(&files)?;
            let v = daemon_call(
                &state,
                &Request::Apply {
                    manifests: text,
                    source,
                    field_validation,
                },
            )?;
            warn_ignored(field_validation, ignored_of(&v));
            print_changed(&v);
            wait_ready(&state, Duration::from_secs(30))?;
            Ok(())
        }
        Cmd::Delete { files, validation } => {
            let field_validation = validation.mode()?;
            let (text, source) = read_texts(&files)?;
            let v = daemon_call(
                &state,
                &Request::Delete {
                    manifests: text,
                    source,
                    field_validation,
                },
            )?;
            warn_ignored(field_validation, ignored_of(&v));
            for p in v["deleted"].as_array().into_iter().flatten() {
                println!("{} deleted", p.as_str().unwrap_or("?"));
            }
            wait_ready(&state, Duration::from_secs(30))?;
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
            output,
        } => {
            anyhow::ensure!(
                dns.is_none() || http.is_none(),
                "--dns and --http: give one of them"
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
            let input = policy_input(&state, &load(&state)?)?;
            let (fns, fname) = split_pod(&from, "--from")?;
            let (tns, tname) = split_pod(&to, "--to")?;
            let protocol = match protocol.to_ascii_uppercase().as_str() {
                "TCP" => weir_topo::Protocol::Tcp,
                "UDP" => weir_topo::Protocol::Udp,
                "SCTP" => weir_topo::Protocol::Sctp,
                other => anyhow::bail!("--protocol: {other:?} is not TCP, UDP or SCTP"),
            };
            anyhow::ensure!(port != 0, "--port: 0 is not a port (1-65535)");
            let e = match (&request, &dns) {
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
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
                _ => println!("{e}"),
            }
            Ok(())
        }
        Cmd::Flows {
            follow,
            output,
            since,
        } => flows_cmd(&state, follow, output, since),
        Cmd::Demo { keep, dp } => run_demo(&state, &dp, keep),
        Cmd::Dataplane {
            action,
            node,
            cores,
            poll,
            l7_max_flows,
        } => {
            match action {
                Some(DpAction::Stop { node }) => {
                    daemon_call(&state, &Request::StopDataplane { node: node.clone() })?;
                    println!("dataplane of node {node} stopped: its pods' interfaces now drop all traffic");
                    Ok(())
                }
                Some(DpAction::Start { node }) => {
                    daemon_call(&state, &Request::StartDataplane { node: node.clone() })?;
                    wait_ready(&state, Duration::from_secs(30))?;
                    println!("dataplane of node {node} running");
                    Ok(())
                }
                None => {
                    let node = node.context("dataplane: --node is required")?;
                    let cores = match cores {
                        Some(c) => node_dataplane::parse_cores(&c)?,
                        None => node_dataplane::default_cores(),
                    };
                    node_dataplane::run(node_dataplane::Options {
                        cluster: cli.cluster.clone(),
                        node,
                        cores,
                        poll: node_dataplane::parse_poll(&poll)?,
                        l7_max_flows: node_dataplane::check_l7_max_flows(l7_max_flows)?,
                    })
                }
            }
        }
        Cmd::Daemon {
            cores,
            poll,
            l7_max_flows,
        } => {
            let mut args = vec![
                "--poll".to_string(),
                poll,
                "--l7-max-flows".to_string(),
                l7_max_flows.to_string(),
            ];
            if let Some(c) = cores {
                args.extend(["--cores".to_string(), c]);
            }
            daemon::run(daemon::Options {
                cluster: cli.cluster.clone(),
                dataplane_args: args,
            })
        }
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
    Cluster::load(&state.cluster_file())
        .map_err(|e| anyhow::anyhow!("{}: {e}", state.cluster_file().display()))
}

fn daemon_call(state: &StateDir, req: &Request) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        state.exists(),
        "cluster {}: not up (run `weir up -f FILE` first)",
        state.cluster
    );
    Ok(ipc::call(
        &state.daemon_sock(),
        req,
        Duration::from_secs(60),
    )?)
}

fn up(
    state: &StateDir,
    spec: &weir_topo::manifest::ClusterSpec,
    policies: &Vec<StoredPolicy>,
    dp: &DataplaneFlags,
    opts: BuildOptions,
) -> anyhow::Result<()> {
    let dp_args = dp.args()?;
    anyhow::ensure!(
        !state.exists(),
        "cluster {}: already up (run `weir down` first, or pick another --cluster)",
        state.cluster
    );
    // Leftovers of a cluster of the same name that died without `weir down`.
    let _ = weir_topo::teardown_by_name(&state.cluster);
    let _ = std::fs::remove_dir_all(&state.root);
    let cluster =
        Cluster::build(&state.cluster, spec, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&state.root)?;
    let saved = (|| -> anyhow::Result<()> {
        weir_control::agent::check(&cluster, &manifests::parse_all(policies)?)?;
        weir_control::state::write_atomic(
            &state.policies_file(),
            &serde_json::to_vec_pretty(policies)?,
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
    let per_pod = Duration::from_millis(1000) * cluster.pods.len() as u32;
    if let Err(e) = wait_ready(state, Duration::from_secs(60) + per_pod) {
        let tail = log_tail(state);
        let _ = down(state);
        anyhow::bail!("{e}{tail}");
    }
    println!(
        "cluster {} up: {} node(s), {} namespace(s), {} pod(s); weir forwarding",
        state.cluster,
        cluster.nodes.len(),
        cluster.namespaces.len(),
        cluster.pods.len()
    );
    Ok(())
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

fn wait_ready(state: &StateDir, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("supervisor not answering");
    while Instant::now() < deadline {
        match ipc::call(&state.daemon_sock(), &Request::Ping, Duration::from_secs(5)) {
            Ok(v) if v["ready"].as_bool() == Some(true) => return Ok(()),
            Ok(v) if v["failed"].as_array().is_some_and(|f| !f.is_empty()) => {
                let why: Vec<&str> = v["failed"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str())
                    .collect();
                anyhow::bail!("cluster {}: {}", state.cluster, why.join("; "))
            }
            Ok(v) => last = format!("not ready: {}", v["nodes"]),
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
    if state.daemon_sock().exists() {
        let _ = ipc::call(
            &state.daemon_sock(),
            &Request::Shutdown,
            Duration::from_secs(30),
        );
    }
    if let Ok(c) = Cluster::load(&state.cluster_file()) {
        // Dataplanes whose supervisor died are not stopped by it: stop them.
        for n in &c.nodes {
            stop_orphan(&state.dataplane_pid(&n.name));
        }
        c.teardown().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    weir_topo::teardown_by_name(&state.cluster).map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = std::fs::remove_dir_all(&state.root);
    if had_state {
        println!("cluster {} removed", state.cluster);
    } else {
        println!("cluster {}: nothing to remove", state.cluster);
    }
    Ok(())
}

fn run_demo(state: &StateDir, dp: &DataplaneFlags, keep: bool) -> anyhow::Result<()> {
    let spec = weir_topo::manifest::parse_str(demo::MANIFESTS, "demo.yaml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("== weir up (built-in demo: namespaces x, y, z; pods a, b, c; TCP/UDP 80, 81)");
    up(state, &spec, &Vec::new(), dp, BuildOptions::default())?;
    let result = (|| -> anyhow::Result<()> {
        let c = load(state)?;
        print!("{}", get::pods(&c, None, None, Output::Table)?);
        let all = probe::select(&c, None)?;
        for (protocol, family) in [
            (Protocol::Tcp, Family::Ipv4),
            (Protocol::Udp, Family::Ipv4),
            (Protocol::Tcp, Family::Ipv6),
        ] {
            println!("\n== weir probe --port 80 --protocol {protocol:?} --family {family:?}");
            let m = probe::run(
                &all,
                &all,
                &ProbeSpec {
                    port: 80,
                    protocol,
                    family,
                    timeout: Duration::from_millis(1000),
                    attempts: 2,
                },
            );
            print!("{}", probe::render(&m));
            let failed = m.probes.iter().filter(|p| !p.connected).count();
            anyhow::ensure!(
                failed == 0,
                "demo: {failed} probes failed (no policy is loaded, all should connect)"
            );
        }
        println!("\n== weir apply -f docs/examples/demo-policy.yaml  (x accepts only y on TCP 80; Admin tier denies y/c)");
        let v = daemon_call(
            state,
            &Request::Apply {
                manifests: demo::POLICY.to_string(),
                source: "demo-policy.yaml".into(),
                field_validation: FieldValidation::Strict,
            },
        )?;
        print_changed(&v);
        wait_ready(state, Duration::from_secs(30))?;
        let to_x = probe::select(&c, Some("x"))?;
        println!("\n== weir probe --port 80 --to x");
        let m = probe::run(
            &all,
            &to_x,
            &ProbeSpec {
                port: 80,
                protocol: Protocol::Tcp,
                family: Family::Ipv4,
                timeout: Duration::from_millis(300),
                attempts: 2,
            },
        );
        print!("{}", probe::render(&m));
        let input = policy_input(state, &c)?;
        for (from, to) in [
            (("y", "a"), ("x", "b")),
            (("y", "c"), ("x", "b")),
            (("z", "a"), ("x", "b")),
        ] {
            println!(
                "\n== weir explain --from {}/{} --to {}/{} --port 80",
                from.0, from.1, to.0, to.1
            );
            let e = weir_policy::explain(&input, from, to, weir_topo::Protocol::Tcp, 80)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{e}");
        }
        std::thread::sleep(Duration::from_millis(600));
        println!("\n== weir flows (last 3)");
        flows_cmd_tail(state, 3)?;
        println!("\n== weir status");
        print!("{}", status::render(&daemon_call(state, &Request::Status)?));
        Ok(())
    })();
    if !keep {
        println!("\n== weir down");
        down(state)?;
    }
    result
}

/// Prints the last `n` flow records of every node.
fn flows_cmd_tail(state: &StateDir, n: usize) -> anyhow::Result<()> {
    let c = load(state)?;
    let mut all = Vec::new();
    for node in weir_control::agent::weir_nodes(&c) {
        let v = ipc::call(
            &state.dataplane_sock(&node.name),
            &Request::Flows { since: 0 },
            Duration::from_secs(5),
        )?;
        all.extend(v["records"].as_array().cloned().unwrap_or_default());
    }
    all.sort_by_key(|r| r["time_unix_ns"].as_u64().unwrap_or(0));
    for r in all.iter().rev().take(n).rev() {
        println!("{}", weir_control::flows::line(r));
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
fn ignored_of(v: &serde_json::Value) -> impl Iterator<Item = &str> {
    v["ignored"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
}

fn print_changed(v: &serde_json::Value) {
    for ch in v["changed"].as_array().into_iter().flatten() {
        println!(
            "{} {}",
            ch["object"].as_str().unwrap_or("?"),
            ch["action"].as_str().unwrap_or("?")
        );
    }
}

/// The compiler's input for the running cluster: its pods and namespaces and
/// the policies the supervisor enforces.
fn policy_input(state: &StateDir, c: &Cluster) -> anyhow::Result<weir_policy::PolicyInput> {
    let policies = manifests::parse_all(&manifests::load_policies(&state.policies_file())?)?;
    Ok(weir_policy::PolicyInput::from_cluster(c, policies))
}

fn read_texts(files: &[PathBuf]) -> anyhow::Result<(String, String)> {
    let mut text = String::new();
    for f in files {
        let t = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        text.push_str("\n---\n");
        text.push_str(&t);
    }
    let source = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    Ok((text, source))
}

fn split_pod<'a>(s: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
        _ => anyhow::bail!("{flag}: {s:?} is not NAMESPACE/POD"),
    }
}

fn flows_cmd(state: &StateDir, follow: bool, output: Output, since: u64) -> anyhow::Result<()> {
    let c = load(state)?;
    let mut last: std::collections::BTreeMap<String, u64> =
        c.nodes.iter().map(|n| (n.name.clone(), since)).collect();
    let mut all = Vec::new();
    loop {
        let mut got = Vec::new();
        for n in weir_control::agent::weir_nodes(&c) {
            let since = last[&n.name];
            match ipc::call(
                &state.dataplane_sock(&n.name),
                &Request::Flows { since },
                Duration::from_secs(5),
            ) {
                Ok(v) => {
                    got.extend(v["records"].as_array().cloned().unwrap_or_default());
                    last.insert(n.name.clone(), v["last"].as_u64().unwrap_or(since));
                }
                Err(e) if follow => eprintln!("weir: nodes/{}: {e}", n.name),
                Err(e) => return Err(anyhow::anyhow!("nodes/{}: dataplane: {e}", n.name)),
            }
        }
        got.sort_by_key(|r| r["time_unix_ns"].as_u64().unwrap_or(0));
        if follow {
            for r in &got {
                match output {
                    Output::Json => println!("{}", serde_json::to_string(r)?),
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
        Output::Json => println!("{}", serde_json::to_string_pretty(&all)?),
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
