//! Driving the `weir` command: a cluster brought up with `weir up` (the
//! dataplane pinned to the worker core, in one polling mode), its worker
//! counters from `weir status -o json`, and `weir down` when dropped.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_topo::Cluster;

/// Finds the `weir` binary: `explicit`, else `$WEIR_BIN`, else next to the
/// running executable (target/<profile>/), else the workspace's
/// target/release and target/debug, else `weir` on `$PATH`.
pub fn find_weir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--weir {}: no such file", p.display());
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("weir"));
            // Test binaries live in target/<profile>/deps.
            if let Some(up) = dir.parent() {
                candidates.push(up.join("weir"));
            }
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    candidates.push(ws.join("target/release/weir"));
    candidates.push(ws.join("target/debug/weir"));
    if let Some(p) = candidates.into_iter().find(|p| p.is_file()) {
        return Ok(p);
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v weir"]).output() {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !s.is_empty() {
            return Ok(PathBuf::from(s));
        }
    }
    anyhow::bail!(
        "no weir binary found: build it (cargo build --release -p weir) or pass --weir PATH"
    )
}

/// Where weir keeps a cluster's state (`$WEIR_STATE_DIR`, default /run/weir).
pub fn state_dir(cluster: &str) -> PathBuf {
    std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"))
        .join(cluster)
}

/// A cluster run by weir; `weir down` (and a topology teardown as a
/// backstop) when dropped.
pub struct WeirCluster {
    pub bin: PathBuf,
    pub name: String,
    pub cluster: Cluster,
    _down: DownGuard,
}

/// Runs `weir down` when dropped.
struct DownGuard {
    bin: PathBuf,
    name: String,
}

impl WeirCluster {
    /// `weir --cluster NAME up -f MANIFEST --cores CORES --poll POLL`.
    pub fn up(
        bin: &Path,
        name: &str,
        manifest: &Path,
        cores: &str,
        poll: &str,
    ) -> anyhow::Result<WeirCluster> {
        Self::up_with(bin, name, manifest, cores, poll, &[])
    }

    /// [`up`](Self::up) with more `weir up` arguments (e.g. `--encap geneve`).
    pub fn up_with(
        bin: &Path,
        name: &str,
        manifest: &Path,
        cores: &str,
        poll: &str,
        extra: &[&str],
    ) -> anyhow::Result<WeirCluster> {
        // Armed before `up`: a half-built cluster is removed too.
        let down = DownGuard {
            bin: bin.to_path_buf(),
            name: name.to_string(),
        };
        let out = Command::new(bin)
            // No metrics endpoint unless asked for (`--metrics-addr` in
            // `extra` wins): the default address is one per machine, and
            // harness runs (and the smoke tests, in parallel) bring up
            // several clusters at once.
            .env("WEIR_METRICS_ADDR", "off")
            .args(["--cluster", name, "up", "-f"])
            .arg(manifest)
            .args(["--cores", cores, "--poll", poll])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", bin.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "weir up (--cores {cores} --poll {poll} {}): {}",
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let file = state_dir(name).join("cluster.json");
        let cluster = Cluster::load(&file).with_context(|| format!("read {}", file.display()))?;
        Ok(WeirCluster {
            bin: bin.to_path_buf(),
            name: name.to_string(),
            cluster,
            _down: down,
        })
    }

    /// `weir status -o json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.bin)
            .args(["--cluster", &self.name, "status", "-o", "json"])
            .stdin(Stdio::null())
            .output()
            .context("run weir status")?;
        anyhow::ensure!(
            out.status.success(),
            "weir status: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        serde_json::from_slice(&out.stdout).context("weir status -o json: not JSON")
    }

    /// Worker counters summed over nodes and workers.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        Ok(Counters::from_status(&self.status()?))
    }
}

impl Drop for DownGuard {
    fn drop(&mut self) {
        let r = Command::new(&self.bin)
            .args(["--cluster", &self.name, "down"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output();
        match r {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "weir-perf: weir down {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("weir-perf: weir down {}: {e}", self.name),
        }
        // Backstop: the namespaces go even if `weir down` could not run.
        let _ = weir_topo::teardown_by_name(&self.name);
    }
}

/// weir's worker counters (sums over every worker of every node), and the
/// cores its workers run on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub drops: u64,
    pub worker_cores: Vec<u64>,
    pub poll: Option<String>,
}

impl Counters {
    /// Reads `nodes[].status.dataplane.workers[].{rx_packets,tx_packets,drops,core}`
    /// (`drops` a number or an object of per-reason counts).
    pub fn from_status(v: &serde_json::Value) -> Counters {
        let mut c = Counters::default();
        for n in v["nodes"].as_array().into_iter().flatten() {
            let dp = &n["status"]["dataplane"];
            if c.poll.is_none() {
                c.poll = dp["poll"].as_str().map(str::to_string);
            }
            for w in dp["workers"].as_array().into_iter().flatten() {
                c.rx_packets += w["rx_packets"].as_u64().unwrap_or(0);
                c.tx_packets += w["tx_packets"].as_u64().unwrap_or(0);
                c.drops += match &w["drops"] {
                    serde_json::Value::Object(m) => m.values().filter_map(|x| x.as_u64()).sum(),
                    x => x.as_u64().unwrap_or(0),
                };
                if let Some(core) = w["core"].as_u64() {
                    c.worker_cores.push(core);
                }
            }
        }
        c
    }

    /// `self - before` (the cores and mode of `self`).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            drops: self.drops.saturating_sub(before.drops),
            worker_cores: self.worker_cores.clone(),
            poll: self.poll.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_status() {
        let v = serde_json::json!({"nodes": [{"status": {"dataplane": {"poll": "busy", "workers": [
            {"core": 1, "rx_packets": 10, "tx_packets": 9, "drops": {"no_route": 1, "ttl": 0}},
            {"core": 0, "rx_packets": 5, "tx_packets": 5, "drops": 2}
        ]}}}]});
        let c = Counters::from_status(&v);
        assert_eq!((c.rx_packets, c.tx_packets, c.drops), (15, 14, 3));
        assert_eq!(c.worker_cores, vec![1, 0]);
        assert_eq!(c.poll.as_deref(), Some("busy"));
        let d = c.since(&Counters {
            rx_packets: 5,
            tx_packets: 4,
            drops: 1,
            ..Default::default()
        });
        assert_eq!((d.rx_packets, d.tx_packets, d.drops), (10, 10, 2));
    }
}
