//! gRPC unary calls/s through weir with `grpc:` rules ÷ without any policy
//! (issue 17, part 5): one node, pod a (client) → pod b (server), the
//! grpcio pair of `scripts/grpc_pair.py` (no generated code), one channel,
//! sequential unary calls for a fixed window. Rounds interleave the two
//! configurations; the report gives median [min–max] of calls/s and of the
//! per-round ratio. The client is Python: it is the bottleneck on a small
//! machine, so the ratio measures what the rules cost at the client's
//! rate (not weir's ceiling).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use serde::Serialize;

use crate::weir::WeirCluster;

const PORT: u16 = 50051;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.253.0.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: perf}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: perf, labels: {id: a}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: perf, labels: {id: b}}
spec: {containers: [{name: c}]}
"#;

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: b-grpc, namespace: perf}
spec:
  podSelector: {matchLabels: {id: b}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {id: a}}}]
    ports: [{protocol: TCP, port: 50051}]
    grpc:
    - {service: pkg.Svc, method: Get}
"#;

/// Options of `weir-perf grpc`.
pub struct GrpcOptions {
    pub weir: PathBuf,
    pub out: PathBuf,
    pub mode: String,
    pub worker_core: usize,
    pub seconds: f64,
    pub reps: usize,
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct GrpcRound {
    pub rep: usize,
    pub none_calls_per_s: f64,
    pub rules_calls_per_s: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrpcReport {
    pub seconds: f64,
    pub rounds: Vec<GrpcRound>,
    /// Calls denied by weir during the check (Delete → PERMISSION_DENIED).
    pub denied_check: String,
    /// `l7-denied` drops counted by weir over the run.
    pub l7_denied: u64,
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/grpc_pair.py")
}

/// The gRPC server in a pod netns, killed by its pid when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_netns(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "python3"])
        .arg(scripts())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run grpc_pair.py")?;
    anyhow::ensure!(
        out.status.success(),
        "grpc_pair.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bench(netns: &str, target: &str, seconds: f64) -> anyhow::Result<f64> {
    let out = in_netns(netns, &["bench", target, "Get", &seconds.to_string()])?;
    // "calls N seconds S"
    let w: Vec<&str> = out.split_whitespace().collect();
    anyhow::ensure!(w.len() == 4 && w[0] == "calls", "bench output: {out}");
    let n: f64 = w[1].parse()?;
    let s: f64 = w[3].parse()?;
    Ok(n / s)
}

fn weir(w: &WeirCluster, verb: &str, file: &Path) -> anyhow::Result<()> {
    let out = Command::new(&w.bin)
        .args(["--cluster", &w.name, verb, "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "weir {verb}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `l7-denied` drops over every worker of the cluster.
fn l7_denied(w: &WeirCluster) -> anyhow::Result<u64> {
    let v = w.status()?;
    let sum = |ws: &serde_json::Value| -> u64 {
        ws.as_array()
            .into_iter()
            .flatten()
            .map(|x| x["drops"]["l7-denied"].as_u64().unwrap_or(0))
            .sum()
    };
    // `weir status` of one cluster: nodes[].status.dataplane.workers[].
    Ok(v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| sum(&n["status"]["dataplane"]["workers"]))
        .sum())
}

/// median [min–max].
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

pub fn run(o: &GrpcOptions) -> anyhow::Result<GrpcReport> {
    std::fs::create_dir_all(&o.out)?;
    let dir = o.out.join("grpc-work");
    std::fs::create_dir_all(&dir)?;
    let manifest = dir.join("cluster.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let name = format!("pg{}", std::process::id());
    let w = WeirCluster::up(
        &o.weir,
        &name,
        &manifest,
        &o.worker_core.to_string(),
        &o.mode,
    )?;
    let a = w.cluster.pod("perf", "a").context("pod perf/a")?.clone();
    let b = w.cluster.pod("perf", "b").context("pod perf/b")?.clone();
    let bip = b.ipv4.context("pod b has no IPv4")?.to_string();
    let target = format!("{bip}:{PORT}");
    let log = dir.join("server.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &b.netns, "python3"])
        .arg(scripts())
        .args(["serve", &bip, &PORT.to_string()])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the gRPC server")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let _srv = Server(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    anyhow::ensure!(line.trim() == "ready", "gRPC server did not start");

    let before = l7_denied(&w)?;
    // Check the rules do what they say before timing them.
    weir(&w, "apply", &policy)?;
    let denied_check = in_netns(&a.netns, &["call", &target, "Get", "Delete"])?;
    anyhow::ensure!(
        denied_check.contains("OK ok:x") && denied_check.contains("PERMISSION_DENIED"),
        "rules check: {denied_check}"
    );
    weir(&w, "delete", &policy)?;
    let mut rounds = Vec::new();
    for rep in 0..o.reps.max(1) {
        crate::stop::check()?;
        let none = bench(&a.netns, &target, o.seconds)?;
        weir(&w, "apply", &policy)?;
        let rules = bench(&a.netns, &target, o.seconds);
        weir(&w, "delete", &policy)?;
        let rules = rules?;
        rounds.push(GrpcRound {
            rep,
            none_calls_per_s: none,
            rules_calls_per_s: rules,
            ratio: rules / none,
        });
    }
    let after = l7_denied(&w)?;
    let rep = GrpcReport {
        seconds: o.seconds,
        rounds,
        denied_check: denied_check.trim().replace('\n', " | "),
        l7_denied: after.saturating_sub(before),
    };
    std::fs::write(o.out.join("grpc.json"), serde_json::to_string_pretty(&rep)?)?;
    std::fs::write(o.out.join("grpc.md"), rep.markdown())?;
    Ok(rep)
}

impl GrpcReport {
    pub fn markdown(&self) -> String {
        let col = |f: &dyn Fn(&GrpcRound) -> f64| {
            let v: Vec<f64> = self.rounds.iter().map(f).collect();
            spread(&v)
        };
        let (n, n0, n1) = col(&|r| r.none_calls_per_s);
        let (r, r0, r1) = col(&|r| r.rules_calls_per_s);
        let (q, q0, q1) = col(&|r| r.ratio);
        format!(
            "# gRPC unary calls/s (weir-perf grpc)\n\n\
             {} round(s) of {} s each, interleaved; median [min–max].\n\n\
             | configuration | calls/s |\n| --- | --- |\n\
             | weir, no policy | {n:.0} [{n0:.0}–{n1:.0}] |\n\
             | weir, `grpc: [{{service: pkg.Svc, method: Get}}]` | {r:.0} [{r0:.0}–{r1:.0}] |\n\
             | ratio rules ÷ none (per round) | {q:.3} [{q0:.3}–{q1:.3}] |\n\n\
             Check before timing: `{}`; l7-denied counted by weir: {}.\n",
            self.rounds.len(),
            self.seconds,
            self.denied_check,
            self.l7_denied
        )
    }
}
