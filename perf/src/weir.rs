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

/// The fill ring's story over a measurement, from `weir status`: the
/// kernel's AF_XDP drops (`workers[].kernel`), the visits that found the
/// RX ring holding a full batch or more (`workers[].time`), and the fill
/// targets (`workers[].frames`), summed over every node's workers (the
/// targets: the largest). `fill_ring_empty` counts frames the kernel
/// dropped because a socket's fill ring had no frame when they arrived.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillCounters {
    pub fill_ring_empty: u64,
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_visits: u64,
    pub full_batches: u64,
    /// The hot target and the floor (not differences: the current values).
    pub fill_hot: u64,
    pub fill_floor: u64,
    /// Frames on fill rings now, and sockets above the floor now.
    pub frames_fill: u64,
    pub sockets_hot: u64,
}

impl FillCounters {
    pub fn from_status(v: &serde_json::Value) -> FillCounters {
        let mut c = FillCounters::default();
        for n in v["nodes"].as_array().into_iter().flatten() {
            for w in n["status"]["dataplane"]["workers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let g = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
                let k = &w["kernel"];
                c.fill_ring_empty += g(&k["fill_ring_empty"]);
                c.rx_dropped += g(&k["rx_dropped"]);
                c.rx_ring_full += g(&k["rx_ring_full"]);
                c.rx_visits += g(&w["time"]["rx_visits"]);
                c.full_batches += g(&w["time"]["full_batches"]);
                let f = &w["frames"];
                c.fill_hot = c.fill_hot.max(g(&f["fill_hot"]));
                c.fill_floor = c.fill_floor.max(g(&f["fill_floor"]));
                c.frames_fill += g(&f["fill"]);
                c.sockets_hot += g(&f["sockets_hot"]);
            }
        }
        c
    }

    /// The counters of `self - before`; the targets and gauges of `self`.
    pub fn since(&self, before: &FillCounters) -> FillCounters {
        FillCounters {
            fill_ring_empty: self.fill_ring_empty.saturating_sub(before.fill_ring_empty),
            rx_dropped: self.rx_dropped.saturating_sub(before.rx_dropped),
            rx_ring_full: self.rx_ring_full.saturating_sub(before.rx_ring_full),
            rx_visits: self.rx_visits.saturating_sub(before.rx_visits),
            full_batches: self.full_batches.saturating_sub(before.full_batches),
            ..self.clone()
        }
    }

    /// One line for a report.
    pub fn line(&self) -> String {
        format!(
            "kernel fill_ring_empty {} rx_dropped {} rx_ring_full {}; RX visits {} ({} full batches); fill_hot {} floor {}, {} frames on fill rings, {} sockets hot at the end",
            self.fill_ring_empty,
            self.rx_dropped,
            self.rx_ring_full,
            self.rx_visits,
            self.full_batches,
            self.fill_hot,
            self.fill_floor,
            self.frames_fill,
            self.sockets_hot
        )
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

    #[test]
    fn fill_counters_from_status() {
        let w = |fre: u64, visits: u64, hot: u64| {
            serde_json::json!({"kernel": {"fill_ring_empty": fre, "rx_dropped": fre + 1, "rx_ring_full": 2},
                "time": {"rx_visits": visits, "full_batches": visits / 2},
                "frames": {"fill_hot": hot, "fill_floor": 64, "fill": 100, "sockets_hot": 1}})
        };
        let v = serde_json::json!({"nodes": [
            {"status": {"dataplane": {"workers": [w(10, 100, 512)]}}},
            {"status": {"dataplane": {"workers": [w(5, 50, 1024)]}}}]});
        let c = FillCounters::from_status(&v);
        assert_eq!(
            (c.fill_ring_empty, c.rx_dropped, c.rx_ring_full),
            (15, 17, 4)
        );
        assert_eq!((c.rx_visits, c.full_batches), (150, 75));
        assert_eq!(
            (c.fill_hot, c.fill_floor, c.frames_fill, c.sockets_hot),
            (1024, 64, 200, 2)
        );
        let d = c.since(&FillCounters {
            fill_ring_empty: 5,
            rx_visits: 100,
            ..Default::default()
        });
        assert_eq!((d.fill_ring_empty, d.rx_visits, d.fill_hot), (10, 50, 1024));
    }
}
