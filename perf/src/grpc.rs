//! gRPC unary calls/s through weir with `grpc:` rules ÷ without any policy,
//! and beside the kernel + haproxy (h2) detour (issue 17, part 5). One node,
//! pod a (client) → pod b (server).
//!
//! The load is `h2load` (nghttp2-client): h2c with prior knowledge, `-c`
//! connections × `-m` concurrent streams, each request a gRPC unary call
//! (`POST /pkg.Svc/Get`, `content-type: application/grpc`, `te: trailers`,
//! a 5-byte-framed message body). The server is `nghttpd` (nghttp2-server,
//! C, one thread) serving a framed reply from a file for the path: an
//! h2c server that is not the bottleneck, where the grpcio (Python)
//! server and client of `scripts/grpc_pair.py` capped the old numbers at
//! ~2–2.5 k calls/s. nghttpd does not send gRPC trailers (`grpc-status`);
//! h2load counts a call done on its `:status` 200, and weir's inspector
//! judges client→server bytes only, so the rules see the same requests a
//! real gRPC client sends (real grpcio against weir's `grpc:` rules is
//! tested in tests/tests/l7_h2.rs).
//!
//! Each round measures, interleaved: weir with no policy, weir with the
//! `grpc:` rule, the kernel path (plain forwarding) and the kernel path with
//! an nftables redirect to haproxy (`bind ... proto h2`, `server ... proto
//! h2`, only `POST /pkg.Svc/Get`). The generator's ceiling (same h2load
//! against nghttpd from inside pod b: no weir, no veth) is measured once per
//! round too. The report gives median [min–max] of calls/s and of the
//! per-round ratios.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::kernel::KernelPath;
use crate::peers::{self, Haproxy, Nft};
use crate::tools::{in_netns, ChildGuard};
use crate::weir::{Counters, WeirCluster};

const PORT: u16 = 50051;
const HAPROXY_PORT: u16 = 15051;

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

/// A gRPC message frame: not compressed, length 3, protobuf field 1 = "x".
const REQUEST: &[u8] = &[0, 0, 0, 0, 3, 0x0a, 1, b'x'];
/// The reply nghttpd serves for both methods (field 1 = "ok").
const REPLY: &[u8] = &[0, 0, 0, 0, 4, 0x0a, 2, b'o', b'k'];

/// Options of `weir-perf grpc`.
pub struct GrpcOptions {
    pub weir: PathBuf,
    pub out: PathBuf,
    pub mode: String,
    /// weir's worker and haproxy.
    pub worker_core: usize,
    /// h2load and nghttpd.
    pub load_core: usize,
    pub seconds: f64,
    pub reps: usize,
    /// h2load `-c` (connections) and `-m` (concurrent streams each).
    pub clients: usize,
    pub streams: usize,
    /// Skip the kernel path and its haproxy detour.
    pub no_kernel: bool,
}

/// One h2load run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct H2Load {
    /// Succeeded (2xx) requests per second of h2load's measured window.
    pub calls_per_s: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub status_4xx: u64,
}

/// One round: calls/s of each configuration (`None`: not measured or failed,
/// see `errors`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GrpcRound {
    pub rep: usize,
    pub ceiling_calls_per_s: Option<f64>,
    pub none_calls_per_s: f64,
    pub rules_calls_per_s: f64,
    pub ratio: f64,
    pub kernel_calls_per_s: Option<f64>,
    pub haproxy_calls_per_s: Option<f64>,
    /// weir with rules ÷ kernel + haproxy h2.
    pub rules_vs_haproxy: Option<f64>,
    /// Packets weir's workers received during the two weir measurements.
    pub weir_rx_packets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrpcReport {
    pub seconds: f64,
    pub clients: usize,
    pub streams: usize,
    pub load_core: usize,
    pub worker_core: usize,
    pub rounds: Vec<GrpcRound>,
    /// What the checks before timing saw.
    pub checks: Vec<String>,
    /// `l7-denied` drops counted by weir over the run (the check's denied
    /// call; 0 more while timing).
    pub l7_denied: u64,
    pub errors: Vec<String>,
}

/// A directory with nghttpd's document root and h2load's request body.
fn write_docs(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = dir.join("docroot");
    std::fs::create_dir_all(root.join("pkg.Svc"))?;
    for m in ["Get", "Delete"] {
        std::fs::write(root.join("pkg.Svc").join(m), REPLY)?;
    }
    let req = dir.join("request.bin");
    std::fs::write(&req, REQUEST)?;
    Ok((root, req))
}

/// nghttpd (h2c, prior knowledge) in `netns` on `PORT`, pinned to `core`.
fn nghttpd(netns: &str, root: &Path, core: usize) -> anyhow::Result<ChildGuard> {
    let root_s = root.to_string_lossy().to_string();
    let g = ChildGuard::spawn(
        "nghttpd",
        in_netns(
            netns,
            core,
            "nghttpd",
            &["--no-tls", "-d", &root_s, &PORT.to_string()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null()),
    )?;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let ss = peers::sh(Some(netns), "ss", &["-ltn"], None).unwrap_or_default();
        if ss.contains(&format!(":{PORT} ")) {
            return Ok(g);
        }
        anyhow::ensure!(Instant::now() < end, "nghttpd did not listen on :{PORT}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses h2load's summary (`finished in 3.00s, ...` and `requests: ...`,
/// `status codes: ...`).
pub fn parse_h2load(out: &str) -> anyhow::Result<H2Load> {
    let mut h = H2Load::default();
    let mut secs = None;
    let num = |w: &str| -> u64 { w.trim_end_matches(',').parse().unwrap_or(0) };
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first() {
            Some(&"finished") if w.len() >= 3 => {
                // `3.00s`, `12.34ms` or `981us`, as h2load scales it.
                let t = w[2].trim_end_matches(',');
                secs = [("us", 1e-6), ("ms", 1e-3), ("s", 1.0)]
                    .iter()
                    .find_map(|(unit, k)| {
                        t.strip_suffix(unit)
                            .and_then(|n| n.parse::<f64>().ok())
                            .map(|n| n * k)
                    });
            }
            Some(&"requests:") => {
                for (i, x) in w.iter().enumerate().skip(1) {
                    let v = num(w[i - 1]);
                    match x.trim_end_matches(',') {
                        "succeeded" => h.succeeded = v,
                        "failed" => h.failed = v,
                        "errored" => h.errored = v,
                        _ => {}
                    }
                }
            }
            Some(&"status") => {
                for (i, x) in w.iter().enumerate().skip(2) {
                    if x.trim_end_matches(',') == "4xx" {
                        h.status_4xx = num(w[i - 1]);
                    }
                }
            }
            _ => {}
        }
    }
    let secs: f64 = secs.context("h2load: no `finished in` line")?;
    anyhow::ensure!(secs > 0.0, "h2load: window of {secs} s");
    h.calls_per_s = h.succeeded as f64 / secs;
    Ok(h)
}

/// h2load from `netns` to `dst` calling `method`: for `-D seconds` when
/// `count` is None, else `-n count` on one connection.
#[allow(clippy::too_many_arguments)]
fn h2load(
    o: &GrpcOptions,
    netns: &str,
    dst: Ipv4Addr,
    port: u16,
    method: &str,
    req: &Path,
    count: Option<usize>,
) -> anyhow::Result<H2Load> {
    let url = format!("http://{dst}:{port}/pkg.Svc/{method}");
    let req_s = req.to_string_lossy().to_string();
    let dur = format!("{}", o.seconds.ceil().max(1.0) as u64);
    let (c, m) = (o.clients.to_string(), o.streams.to_string());
    let mut args: Vec<&str> = vec![
        "-d",
        &req_s,
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ];
    let n;
    match count {
        Some(k) => {
            n = k.to_string();
            args.extend(["-n", &n, "-c", "1", "-m", "1"]);
        }
        None => args.extend(["-D", &dur, "-c", &c, "-m", &m]),
    }
    args.push(&url);
    let out = in_netns(netns, o.load_core, "h2load", &args)
        .stdin(Stdio::null())
        .output()
        .context("run h2load (apt nghttp2-client: scripts/setup.sh)")?;
    anyhow::ensure!(
        out.status.success(),
        "h2load {url}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_h2load(&String::from_utf8_lossy(&out.stdout))
}

/// A timed run that must have no failed call.
fn timed(
    o: &GrpcOptions,
    netns: &str,
    dst: Ipv4Addr,
    port: u16,
    req: &Path,
) -> anyhow::Result<f64> {
    let h = h2load(o, netns, dst, port, "Get", req, None)?;
    anyhow::ensure!(
        h.failed == 0 && h.errored == 0 && h.succeeded > 0,
        "h2load Get: {} succeeded, {} failed, {} errored",
        h.succeeded,
        h.failed,
        h.errored
    );
    Ok(h.calls_per_s)
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

fn v4(c: &weir_topo::Cluster, pod: &str) -> anyhow::Result<(String, Ipv4Addr)> {
    let p = c
        .pod("perf", pod)
        .with_context(|| format!("pod perf/{pod}"))?;
    Ok((p.netns.clone(), p.ipv4.context("pod has no IPv4")?))
}

/// The kernel side of a run: the same two pods, kernel forwarding.
struct Kernel {
    k: KernelPath,
    _srv: ChildGuard,
}

pub fn run(o: &GrpcOptions) -> anyhow::Result<GrpcReport> {
    anyhow::ensure!(
        crate::tools::have("h2load") && crate::tools::have("nghttpd"),
        "h2load and nghttpd are needed (apt nghttp2-client nghttp2-server: scripts/setup.sh)"
    );
    std::fs::create_dir_all(&o.out)?;
    let out = std::fs::canonicalize(&o.out)?;
    let dir = out.join("grpc-work");
    std::fs::create_dir_all(&dir)?;
    let (root, req) = write_docs(&dir)?;
    let manifest = dir.join("cluster.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let pid = std::process::id();
    let name = format!("pg{pid}");
    // No metrics listener: other clusters on the machine may hold the port.
    let w = WeirCluster::up_with(
        &o.weir,
        &name,
        &manifest,
        &o.worker_core.to_string(),
        &o.mode,
        &["--metrics-addr", "off"],
    )?;
    let (a_ns, _) = v4(&w.cluster, "a")?;
    let (b_ns, bip) = v4(&w.cluster, "b")?;
    let _srv = nghttpd(&b_ns, &root, o.load_core)?;
    let mut checks = Vec::new();
    let mut errors = Vec::new();

    // Check the rules do what they say before timing them: Get passes,
    // Delete is denied by weir (trailers-only PERMISSION_DENIED for a gRPC
    // call, which h2load counts as a 200; the counter tells).
    let before = l7_denied(&w)?;
    weir(&w, "apply", &policy)?;
    let get = h2load(o, &a_ns, bip, PORT, "Get", &req, Some(20))?;
    let d0 = l7_denied(&w)?;
    let del = h2load(o, &a_ns, bip, PORT, "Delete", &req, Some(1))?;
    let d1 = l7_denied(&w)?;
    weir(&w, "delete", &policy)?;
    anyhow::ensure!(
        get.succeeded == 20 && d0 == before && d1 == d0 + 1,
        "rules check: Get {get:?}, l7-denied {before} → {d0} → {d1} after Delete {del:?}"
    );
    checks.push(format!(
        "weir + rules: Get 20/20 answered 200 by nghttpd; Delete denied by weir (l7-denied +{})",
        d1 - d0
    ));

    let kernel = if o.no_kernel {
        None
    } else {
        let r = (|| -> anyhow::Result<Kernel> {
            let spec = weir_topo::manifest::parse_str(
                &MANIFEST.replace("10.253.0.0/24", "10.252.0.0/24"),
                "grpc-kernel.yaml",
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let k = KernelPath::build(&format!("pg{pid}k"), &spec)?;
            k.enable_forwarding()?;
            let (kb_ns, _) = v4(&k.cluster, "b")?;
            let srv = nghttpd(&kb_ns, &root, o.load_core)?;
            Ok(Kernel { k, _srv: srv })
        })();
        match r {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push(format!("kernel path: {e:#}"));
                None
            }
        }
    };
    let haproxy_up = |k: &Kernel, round: usize| -> anyhow::Result<(Nft, Haproxy)> {
        let (ka_ns, ka) = v4(&k.k.cluster, "a")?;
        let (_, kb) = v4(&k.k.cluster, "b")?;
        let _ = ka_ns;
        let node = &k.k.cluster.nodes[0];
        let node_ip = node.ipv4.context("node has no IPv4")?;
        let nft = Nft::load(
            &node.netns,
            &peers::nft_ruleset_port(ka, kb, 0, Some((node_ip, HAPROXY_PORT)), PORT),
        )?;
        let h = Haproxy::start_cfg(
            &node.netns,
            &dir.join(format!("haproxy-{round}")),
            HAPROXY_PORT,
            o.worker_core,
            &peers::haproxy_h2_cfg(HAPROXY_PORT),
        )?;
        Ok((nft, h))
    };
    if let Some(k) = &kernel {
        let r = (|| -> anyhow::Result<String> {
            let (ka_ns, _) = v4(&k.k.cluster, "a")?;
            let (_, kb) = v4(&k.k.cluster, "b")?;
            let _g = haproxy_up(k, 0)?;
            let get = h2load(o, &ka_ns, kb, PORT, "Get", &req, Some(20))?;
            let del = h2load(o, &ka_ns, kb, PORT, "Delete", &req, Some(1))?;
            anyhow::ensure!(
                get.succeeded == 20 && del.status_4xx == 1,
                "haproxy check: Get {get:?}, Delete {del:?}"
            );
            Ok("kernel + haproxy h2: Get 20/20 answered 200; Delete 403 from haproxy".into())
        })();
        match r {
            Ok(c) => checks.push(c),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }

    let mut rounds = Vec::new();
    for rep in 0..o.reps.max(1) {
        crate::stop::check()?;
        let mut r = GrpcRound {
            rep,
            ..Default::default()
        };
        match timed(o, &b_ns, bip, PORT, &req) {
            Ok(c) => r.ceiling_calls_per_s = Some(c),
            Err(e) => errors.push(format!("ceiling, round {}: {e:#}", rep + 1)),
        }
        let c0 = Counters::from_status(&w.status()?);
        r.none_calls_per_s = timed(o, &a_ns, bip, PORT, &req)?;
        weir(&w, "apply", &policy)?;
        let rules = timed(o, &a_ns, bip, PORT, &req);
        weir(&w, "delete", &policy)?;
        r.rules_calls_per_s = rules?;
        r.weir_rx_packets = Counters::from_status(&w.status()?).since(&c0).rx_packets;
        r.ratio = r.rules_calls_per_s / r.none_calls_per_s;
        if let Some(k) = &kernel {
            let (ka_ns, _) = v4(&k.k.cluster, "a")?;
            let (_, kb) = v4(&k.k.cluster, "b")?;
            match timed(o, &ka_ns, kb, PORT, &req) {
                Ok(c) => r.kernel_calls_per_s = Some(c),
                Err(e) => errors.push(format!("kernel, round {}: {e:#}", rep + 1)),
            }
            let hp = haproxy_up(k, rep).and_then(|_g| timed(o, &ka_ns, kb, PORT, &req));
            match hp {
                Ok(c) => {
                    r.haproxy_calls_per_s = Some(c);
                    r.rules_vs_haproxy = Some(r.rules_calls_per_s / c);
                }
                Err(e) => errors.push(format!("kernel+haproxy, round {}: {e:#}", rep + 1)),
            }
        }
        rounds.push(r);
    }
    let after = l7_denied(&w)?;
    let rep = GrpcReport {
        seconds: o.seconds.ceil().max(1.0),
        clients: o.clients,
        streams: o.streams,
        load_core: o.load_core,
        worker_core: o.worker_core,
        rounds,
        checks,
        l7_denied: after.saturating_sub(before),
        errors,
    };
    drop(kernel);
    std::fs::write(out.join("grpc.json"), serde_json::to_string_pretty(&rep)?)?;
    std::fs::write(out.join("grpc.md"), rep.markdown())?;
    Ok(rep)
}

impl GrpcReport {
    pub fn markdown(&self) -> String {
        let col = |f: &dyn Fn(&GrpcRound) -> Option<f64>| -> String {
            let v: Vec<f64> = self.rounds.iter().filter_map(f).collect();
            if v.is_empty() {
                return "—".into();
            }
            let (m, lo, hi) = spread(&v);
            if m < 10.0 {
                format!("{m:.3} [{lo:.3}–{hi:.3}]")
            } else {
                format!("{m:.0} [{lo:.0}–{hi:.0}]")
            }
        };
        let mut s = format!(
            "# gRPC unary calls/s over h2c (weir-perf grpc)\n\n\
             h2load -c {} -m {} for {} s per measurement, nghttpd server; {} round(s), \
             interleaved; median [min–max]. Load (h2load, nghttpd) on core {}, weir's \
             worker / haproxy on core {}.\n\n\
             | configuration | calls/s |\n| --- | --- |\n",
            self.clients,
            self.streams,
            self.seconds,
            self.rounds.len(),
            self.load_core,
            self.worker_core
        );
        s += &format!(
            "| generator ceiling (h2load → nghttpd inside pod b, no weir) | {} |\n",
            col(&|r| r.ceiling_calls_per_s)
        );
        s += &format!(
            "| weir, no policy | {} |\n",
            col(&|r| Some(r.none_calls_per_s))
        );
        s += &format!(
            "| weir, `grpc: [{{service: pkg.Svc, method: Get}}]` | {} |\n",
            col(&|r| Some(r.rules_calls_per_s))
        );
        s += &format!(
            "| kernel forwarding, no policy | {} |\n",
            col(&|r| r.kernel_calls_per_s)
        );
        s += &format!(
            "| kernel + nft redirect + haproxy h2 (POST /pkg.Svc/Get only) | {} |\n",
            col(&|r| r.haproxy_calls_per_s)
        );
        s += &format!(
            "| ratio weir rules ÷ weir none (per round) | {} |\n",
            col(&|r| Some(r.ratio))
        );
        s += &format!(
            "| ratio weir rules ÷ kernel+haproxy (per round) | {} |\n\n",
            col(&|r| r.rules_vs_haproxy)
        );
        s += "Per round (calls/s): ceiling, weir none, weir rules, kernel, kernel+haproxy; weir rx packets.\n\n";
        for r in &self.rounds {
            let o = |x: Option<f64>| x.map_or("—".into(), |v| format!("{v:.0}"));
            s += &format!(
                "- round {}: {}, {:.0}, {:.0}, {}, {}; {}\n",
                r.rep + 1,
                o(r.ceiling_calls_per_s),
                r.none_calls_per_s,
                r.rules_calls_per_s,
                o(r.kernel_calls_per_s),
                o(r.haproxy_calls_per_s),
                r.weir_rx_packets
            );
        }
        s += &format!(
            "\nChecks before timing: {}. l7-denied counted by weir over the run: {}.\n",
            self.checks.join("; "),
            self.l7_denied
        );
        for e in &self.errors {
            s += &format!("\nError: {e}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summary() {
        let out = "finished in 3.00s, 46154.67 req/s, 1.50MB/s\n\
requests: 138464 total, 138528 started, 138464 done, 138400 succeeded, 64 failed, 2 errored, 0 timeout\n\
status codes: 138400 2xx, 0 3xx, 64 4xx, 0 5xx\n";
        let h = parse_h2load(out).unwrap();
        assert_eq!(
            (h.succeeded, h.failed, h.errored, h.status_4xx),
            (138400, 64, 2, 64)
        );
        assert!((h.calls_per_s - 138400.0 / 3.0).abs() < 1e-6);
        assert!(parse_h2load("requests: 0 total").is_err());
        // Short runs are printed in ms or us (a `-n 20` check).
        for (t, secs) in [("981us", 981e-6), ("12.5ms", 12.5e-3)] {
            let out = format!("finished in {t}, 10193.68 req/s, 395.20KB/s\nrequests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout\n");
            let h = parse_h2load(&out).unwrap();
            assert!((h.calls_per_s - 10.0 / secs).abs() < 1e-3, "{t}");
        }
    }
}
