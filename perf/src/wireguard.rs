//! `weir-perf wireguard`: the cost of `--encrypt wireguard` between two
//! nodes, beside another userspace WireGuard on the same machine (issue 16).
//!
//! Four configurations, interleaved in every round (same generators, same
//! cores, same windows):
//!
//! - `weir-plain`: `weir up` on the two-node topology of `paper`'s
//!   inter-node scenario (app2 on n1 → app1 on n2, VXLAN, no policy);
//! - `weir-wireguard`: the same with `weir up --encrypt wireguard`;
//! - `veth`: two namespaces joined by a veth, the kernel path wireguard-go
//!   runs over (its plain baseline);
//! - `wireguard-go`: the same two namespaces with wireguard-go
//!   (golang.zx2c4.com/wireguard, built by scripts/wireguard-go.sh) in each,
//!   its TUN devices the tunnel, both processes pinned to the worker core
//!   (as both weir nodes' workers are).
//!
//! Workloads: 64-byte UDP pps (received), TCP bulk (iperf3, one stream) and
//! TCP RR p50/p99. Every measurement of a tunnel proves the traffic crossed
//! it: weir's worker rx counters moved (and, encrypted, its WireGuard
//! peers' tx bytes), wireguard-go's peer tx bytes (UAPI `get=1`) moved;
//! otherwise the sample is an error, not a number.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::Host;
use crate::rounds::{cell, stats};
use crate::rr::{self, RrParams, RrResult};
use crate::stop;
use crate::tools::{self, BulkResult, ChildGuard};
use crate::udp::{self, UdpParams, UdpResult, PAYLOAD_64B_FRAME};
use crate::weir::{Counters, WeirCluster};

const UDP_PORT: u16 = 9000;
const RR_PORT: u16 = 9001;
/// wireguard-go's listen port (both namespaces).
const WG_PORT: u16 = 51820;

/// The configurations, in the order of a round.
pub const CONFIGS: [&str; 4] = ["weir-plain", "weir-wireguard", "veth", "wireguard-go"];

#[derive(Clone, Debug)]
pub struct WgOptions {
    pub short: bool,
    pub out: PathBuf,
    /// weir's polling mode.
    pub mode: String,
    pub reps: usize,
    pub load_core: usize,
    pub worker_core: usize,
    /// None: the weir configurations are skipped.
    pub weir: Option<PathBuf>,
    /// None: built/found by scripts/wireguard-go.sh.
    pub wireguard_go: Option<PathBuf>,
    pub window: Duration,
    pub warmup: Duration,
    pub rr_count: u64,
    pub bulk_secs: u64,
}

impl WgOptions {
    pub fn new(short: bool) -> WgOptions {
        WgOptions {
            short,
            out: PathBuf::from("target/perf"),
            mode: "adaptive".into(),
            reps: 3,
            load_core: 0,
            worker_core: 1,
            weir: None,
            wireguard_go: None,
            window: Duration::from_millis(if short { 500 } else { 3000 }),
            warmup: Duration::from_millis(if short { 200 } else { 1000 }),
            rr_count: if short { 500 } else { 10_000 },
            bulk_secs: if short { 1 } else { 4 },
        }
    }
}

/// One configuration in one round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WgSample {
    pub config: String,
    pub rep: usize,
    pub udp: Option<UdpResult>,
    pub rr: Option<RrResult>,
    pub bulk: Option<BulkResult>,
    /// weir's fill-ring counters over the bulk transfer alone (`encap-ab`).
    #[serde(default)]
    pub bulk_fill: Option<crate::weir::FillCounters>,
    /// What moved during the measurements (the proof the path was taken).
    pub proof: String,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WgReport {
    pub host_start: Option<Host>,
    pub short: bool,
    pub weir_poll: String,
    pub reps: usize,
    pub load_core: usize,
    pub worker_core: usize,
    pub window_s: f64,
    pub rr_count: u64,
    pub bulk_secs: u64,
    pub wireguard_go: String,
    pub samples: Vec<WgSample>,
    pub errors: Vec<String>,
}

/// The two-node manifests of `paper`'s inter-node scenario.
pub(crate) fn manifests() -> String {
    crate::paper::manifests_2n(false)
}

/// Finds wireguard-go: `explicit`, else the path scripts/wireguard-go.sh
/// prints (it builds it from the Go module the first time).
pub fn find_wireguard_go(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--wireguard-go {}: no such file", p.display());
        return Ok(p.to_path_buf());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/wireguard-go.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("wireguard-go");
    anyhow::ensure!(p.is_file(), "{}: no such file", p.display());
    Ok(p)
}

pub fn run(o: &WgOptions) -> anyhow::Result<WgReport> {
    std::fs::create_dir_all(&o.out)?;
    let wg_go = find_wireguard_go(o.wireguard_go.as_deref())?;
    let mut rep = WgReport {
        host_start: Some(Host::now()),
        short: o.short,
        weir_poll: o.mode.clone(),
        reps: o.reps,
        load_core: o.load_core,
        worker_core: o.worker_core,
        window_s: o.window.as_secs_f64(),
        rr_count: o.rr_count,
        bulk_secs: o.bulk_secs,
        wireguard_go: wg_go.display().to_string(),
        ..Default::default()
    };
    let file = o.out.join("wireguard-2n.yaml");
    std::fs::write(&file, manifests())?;
    for round in 0..o.reps {
        for cfg in CONFIGS {
            stop::check()?;
            if cfg.starts_with("weir") && o.weir.is_none() {
                continue;
            }
            eprintln!("weir-perf wireguard: round {}/{}: {cfg}", round + 1, o.reps);
            let r = match cfg {
                "weir-plain" | "weir-wireguard" => match o.weir.as_deref() {
                    Some(bin) => weir_sample(o, bin, &file, cfg == "weir-wireguard"),
                    None => continue,
                },
                _ => wg_go_sample(o, &wg_go, cfg == "wireguard-go"),
            };
            match r {
                Ok(mut s) => {
                    s.config = cfg.into();
                    s.rep = round;
                    rep.samples.push(s);
                }
                Err(e) => rep
                    .errors
                    .push(format!("{cfg}, round {}: {e:#}", round + 1)),
            }
        }
    }
    std::fs::write(
        o.out.join("wireguard.json"),
        serde_json::to_vec_pretty(&rep)?,
    )?;
    std::fs::write(o.out.join("wireguard.md"), rep.markdown())?;
    Ok(rep)
}

/// RR, bulk, then UDP from `src_ns` to `dst` in `dst_ns`.
pub(crate) fn measure(o: &WgOptions, src_ns: &str, dst_ns: &str, dst: Ipv4Addr, s: &mut WgSample) {
    measure_rr(o, src_ns, dst_ns, dst, s);
    if stop::check().is_err() {
        return;
    }
    measure_bulk(o, src_ns, dst_ns, dst, s);
    if stop::check().is_err() {
        return;
    }
    measure_udp(o, src_ns, dst_ns, dst, s);
}

/// TCP RR from `src_ns` to `dst` (`RR_PORT`) into `s.rr`.
pub(crate) fn measure_rr(
    o: &WgOptions,
    src_ns: &str,
    dst_ns: &str,
    dst: Ipv4Addr,
    s: &mut WgSample,
) {
    let rp = RrParams {
        count: o.rr_count,
        warmup: (o.rr_count / 10).max(1),
        load_core: o.load_core,
        timeout: Duration::from_secs(5),
    };
    match rr::run(src_ns, dst_ns, SocketAddr::from((dst, RR_PORT)), &rp) {
        Ok(r) => s.rr = Some(r),
        Err(e) => s.errors.push(format!("rr: {e:#}")),
    }
}

/// TCP bulk (iperf3, one stream) from `src_ns` to `dst` into `s.bulk`.
pub(crate) fn measure_bulk(
    o: &WgOptions,
    src_ns: &str,
    dst_ns: &str,
    dst: Ipv4Addr,
    s: &mut WgSample,
) {
    match tools::iperf3(src_ns, dst_ns, dst, o.bulk_secs, o.load_core) {
        Ok(r) => s.bulk = Some(r),
        Err(e) => s.errors.push(format!("iperf3: {e:#}")),
    }
}

/// 64-byte UDP from `src_ns` to `dst` (`UDP_PORT`) into `s.udp`.
pub(crate) fn measure_udp(
    o: &WgOptions,
    src_ns: &str,
    dst_ns: &str,
    dst: Ipv4Addr,
    s: &mut WgSample,
) {
    let up = UdpParams {
        payload: PAYLOAD_64B_FRAME,
        batch: 64,
        warmup: o.warmup,
        window: o.window,
        load_core: o.load_core,
    };
    match udp::run(src_ns, dst_ns, SocketAddrV4::new(dst, UDP_PORT), &up) {
        Ok(r) => s.udp = Some(r),
        Err(e) => s.errors.push(format!("udp: {e:#}")),
    }
}

/// Bytes sent to WireGuard peers (`nodes[].status.dataplane.wireguard[].tx_bytes`),
/// summed over the nodes of `weir status`.
fn weir_wg_tx(st: &serde_json::Value) -> u64 {
    st["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            n["status"]["dataplane"]["wireguard"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|p| p["tx_bytes"].as_u64())
        .sum()
}

fn weir_sample(o: &WgOptions, bin: &Path, file: &Path, encrypt: bool) -> anyhow::Result<WgSample> {
    let name = format!(
        "wgp{}{}",
        std::process::id() % 100_000,
        if encrypt { "e" } else { "p" }
    );
    let extra: &[&str] = if encrypt {
        &["--encrypt", "wireguard"]
    } else {
        &[]
    };
    let w = WeirCluster::up_with(bin, &name, file, &o.worker_core.to_string(), &o.mode, extra)?;
    let g = |n: &str| {
        w.cluster
            .pod("paper", n)
            .with_context(|| format!("pod paper/{n} missing"))
    };
    let (src, dst) = (g("app2")?, g("app1")?);
    let dst_ip = dst.ipv4.context("app1 has no IPv4")?;
    let st0 = w.status()?;
    let (c0, wg0) = (Counters::from_status(&st0), weir_wg_tx(&st0));
    let mut s = WgSample::default();
    measure(o, &src.netns, &dst.netns, dst_ip, &mut s);
    let st1 = w.status()?;
    let (c, wg) = (
        Counters::from_status(&st1).since(&c0),
        weir_wg_tx(&st1).saturating_sub(wg0),
    );
    s.proof = format!(
        "weir workers rx {} tx {} packets, drops {}{}",
        c.rx_packets,
        c.tx_packets,
        c.drops,
        if encrypt {
            format!(", WireGuard tx {wg} bytes")
        } else {
            String::new()
        }
    );
    if c.rx_packets == 0 {
        s.errors
            .push("weir's workers received nothing: the traffic did not cross weir".into());
    }
    if encrypt && wg == 0 {
        s.errors
            .push("weir's WireGuard peers sent nothing: the traffic was not encrypted".into());
    }
    drop(w);
    Ok(s)
}

/// Two namespaces joined by a veth (192.168.79.1 ↔ .2); `tunnel`: with
/// wireguard-go in each (10.79.0.1 ↔ .2 over its TUN devices). Removed
/// (wireguard-go stopped, sockets and namespaces deleted) when dropped.
struct WgGoPair {
    netns: Vec<String>,
    children: Vec<ChildGuard>,
    socks: Vec<PathBuf>,
}

impl Drop for WgGoPair {
    fn drop(&mut self) {
        self.children.clear();
        for s in &self.socks {
            let _ = std::fs::remove_file(s);
        }
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A Curve25519 private key (clamped, as `wg genkey` prints it).
fn private_key() -> anyhow::Result<[u8; 32]> {
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut k)?;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    Ok(k)
}

fn public_key(k: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*k)).to_bytes()
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// One UAPI request on `sock`; the reply (up to the blank line).
fn uapi(sock: &Path, req: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(sock).with_context(|| format!("connect {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\n\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `tx_bytes` of wireguard-go's peers (UAPI `get=1`).
fn uapi_tx_bytes(sock: &Path) -> anyhow::Result<u64> {
    let r = uapi(sock, "get=1\n\n")?;
    anyhow::ensure!(r.contains("errno=0"), "UAPI get: {r:?}");
    Ok(tx_bytes(&r))
}

/// The sum of the `tx_bytes=` lines of a UAPI `get` reply.
fn tx_bytes(reply: &str) -> u64 {
    reply
        .lines()
        .filter_map(|l| l.strip_prefix("tx_bytes="))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

fn wait_for(what: &str, timeout: Duration, f: impl Fn() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("timed out waiting for {what}")
}

fn wg_go_sample(o: &WgOptions, wg_bin: &Path, tunnel: bool) -> anyhow::Result<WgSample> {
    let tag = format!(
        "wgp{}{}",
        std::process::id() % 100_000,
        if tunnel { "g" } else { "v" }
    );
    let (na, nb) = (format!("{tag}a"), format!("{tag}b"));
    let mut pair = WgGoPair {
        netns: Vec::new(),
        children: Vec::new(),
        socks: Vec::new(),
    };
    for n in [&na, &nb] {
        ip(&["netns", "add", n])?;
        pair.netns.push(n.clone());
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    let (va, vb) = (format!("{tag}x"), format!("{tag}y"));
    ip(&[
        "-n", &na, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &nb,
    ])?;
    for (n, v, a) in [(&na, &va, "192.168.79.1/24"), (&nb, &vb, "192.168.79.2/24")] {
        ip(&["-n", n, "addr", "add", a, "dev", v])?;
        ip(&["-n", n, "link", "set", v, "up"])?;
    }
    let mut s = WgSample::default();
    if !tunnel {
        measure(o, &na, &nb, Ipv4Addr::new(192, 168, 79, 2), &mut s);
        s.proof = "kernel veth (no tunnel)".into();
        return Ok(s);
    }
    let keys = [private_key()?, private_key()?];
    let ends = [
        (&na, format!("{tag}ta"), "10.79.0.1/24", "192.168.79.2"),
        (&nb, format!("{tag}tb"), "10.79.0.2/24", "192.168.79.1"),
    ];
    for (n, tun, _, _) in &ends {
        let sock = PathBuf::from(format!("/var/run/wireguard/{tun}.sock"));
        pair.socks.push(sock.clone());
        let mut cmd = tools::in_netns(
            n,
            o.worker_core,
            &wg_bin.display().to_string(),
            &["-f", tun],
        );
        cmd.env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pair.children
            .push(ChildGuard::spawn(&format!("wireguard-go {tun}"), &mut cmd)?);
        wait_for(
            &format!("wireguard-go's UAPI socket {}", sock.display()),
            Duration::from_secs(10),
            || sock.exists(),
        )?;
    }
    for (i, (n, tun, addr, peer)) in ends.iter().enumerate() {
        let cfg = format!(
            "set=1\nprivate_key={}\nlisten_port={WG_PORT}\npublic_key={}\nendpoint={peer}:{WG_PORT}\nallowed_ip=10.79.0.0/24\n\n",
            hex(&keys[i]),
            hex(&public_key(&keys[1 - i])),
        );
        let r = uapi(&pair.socks[i], &cfg)?;
        anyhow::ensure!(r.starts_with("errno=0"), "UAPI set on {tun}: {r:?}");
        ip(&["-n", n, "addr", "add", addr, "dev", tun])?;
        ip(&["-n", n, "link", "set", tun, "up"])?;
    }
    let dst = Ipv4Addr::new(10, 79, 0, 2);
    let tx0 = uapi_tx_bytes(&pair.socks[0])? + uapi_tx_bytes(&pair.socks[1])?;
    measure(o, &na, &nb, dst, &mut s);
    let tx = (uapi_tx_bytes(&pair.socks[0])? + uapi_tx_bytes(&pair.socks[1])?).saturating_sub(tx0);
    s.proof = format!("wireguard-go peers tx {tx} bytes");
    if tx == 0 {
        s.errors
            .push("wireguard-go sent nothing: the traffic did not cross the tunnel".into());
    }
    drop(pair);
    Ok(s)
}

pub(crate) type Getter = fn(&WgSample) -> Option<f64>;

fn pps(s: &WgSample) -> Option<f64> {
    s.udp.as_ref().map(|u| u.received_pps)
}
fn gbps(s: &WgSample) -> Option<f64> {
    s.bulk.as_ref().map(|b| b.gbit_per_s)
}
fn p50(s: &WgSample) -> Option<f64> {
    s.rr.as_ref().map(|r| r.p50_us)
}
fn p99(s: &WgSample) -> Option<f64> {
    s.rr.as_ref().map(|r| r.p99_us)
}

/// (label, getter, decimals)
pub(crate) const METRICS: [(&str, Getter, usize); 4] = [
    ("UDP 64 B received pps", pps, 0),
    ("TCP bulk Gbit/s", gbps, 2),
    ("TCP RR p50 µs", p50, 1),
    ("TCP RR p99 µs", p99, 1),
];

impl WgReport {
    /// One line per sample (its proof and errors), then the run's errors:
    /// the tail of every two-node report (`wireguard`, `encap-ab`).
    pub fn proof_and_errors(&self, s: &mut String) {
        for x in &self.samples {
            let _ = writeln!(
                s,
                "- round {} {}: {}{}",
                x.rep + 1,
                x.config,
                x.proof,
                if x.errors.is_empty() {
                    String::new()
                } else {
                    format!(" — errors: {}", x.errors.join("; "))
                }
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nErrors:\n");
            for e in &self.errors {
                let _ = writeln!(s, "- {e}");
            }
        }
    }

    /// A sample's value only when the sample proved its path (no errors).
    fn val(&self, cfg: &str, rep: usize, g: Getter) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.config == cfg && s.rep == rep && s.errors.is_empty())
            .and_then(g)
    }

    pub(crate) fn agg(&self, cfg: &str, g: Getter) -> Option<(f64, f64, f64)> {
        stats((0..self.reps).filter_map(|r| self.val(cfg, r, g)))
    }

    /// `a ÷ b` per round, summarised.
    pub(crate) fn ratio(&self, a: &str, b: &str, g: Getter) -> Option<(f64, f64, f64)> {
        stats((0..self.reps).filter_map(|r| Some(self.val(a, r, g)? / self.val(b, r, g)?)))
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# weir-perf wireguard\n");
        let _ = writeln!(
            s,
            "Two nodes, app2 (n1) → app1 (n2), no policy: `weir up` (VXLAN) vs `weir up --encrypt wireguard`, workers in `{}` mode on core {}; beside them two namespaces joined by a veth, plain (`veth`) and with wireguard-go in each as the tunnel (`wireguard-go`, both pinned to core {}). Generators on core {}. {} round(s) interleaved; cells median [min–max]; ratios per round. A sample whose tunnel counters did not move is an error, not a number. UDP window {:.1} s, {} RR round trips, bulk {} s.\n",
            self.weir_poll,
            self.worker_core,
            self.worker_core,
            self.load_core,
            self.reps,
            self.window_s,
            self.rr_count,
            self.bulk_secs,
        );
        let _ = writeln!(
            s,
            "| metric | weir-plain | weir-wireguard | weir wg ÷ plain | veth | wireguard-go | wireguard-go ÷ veth | weir wg ÷ wireguard-go |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for (label, g, d) in METRICS {
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                cell(self.agg("weir-plain", g), d),
                cell(self.agg("weir-wireguard", g), d),
                cell(self.ratio("weir-wireguard", "weir-plain", g), 2),
                cell(self.agg("veth", g), d),
                cell(self.agg("wireguard-go", g), d),
                cell(self.ratio("wireguard-go", "veth", g), 2),
                cell(self.ratio("weir-wireguard", "wireguard-go", g), 2),
            );
        }
        let _ = writeln!(
            s,
            "\nProof per sample (what moved while it was measured):\n"
        );
        self.proof_and_errors(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cfg: &str, rep: usize, pps: f64, err: bool) -> WgSample {
        WgSample {
            config: cfg.into(),
            rep,
            udp: Some(UdpResult {
                payload_bytes: 18,
                frame_bytes_on_wire: 64,
                batch: 64,
                window_s: 1.0,
                sent: pps as u64,
                received: pps as u64,
                rcvbuf_errors: 0,
                send_errors: 0,
                offered_pps: pps,
                received_pps: pps,
                delivered_ratio: 1.0,
            }),
            errors: if err { vec!["x".into()] } else { vec![] },
            ..Default::default()
        }
    }

    #[test]
    fn ratios_per_round_and_unproven_samples_left_out() {
        let rep = WgReport {
            reps: 3,
            samples: vec![
                sample("weir-plain", 0, 100.0, false),
                sample("weir-wireguard", 0, 50.0, false),
                sample("weir-plain", 1, 200.0, false),
                sample("weir-wireguard", 1, 50.0, false),
                sample("weir-plain", 2, 100.0, false),
                // Not proven (its counters did not move): no number.
                sample("weir-wireguard", 2, 100.0, true),
            ],
            ..Default::default()
        };
        assert_eq!(
            rep.ratio("weir-wireguard", "weir-plain", pps),
            Some((0.25, 0.375, 0.5))
        );
        assert_eq!(rep.agg("weir-wireguard", pps), Some((50.0, 50.0, 50.0)));
        let md = rep.markdown();
        assert!(
            md.contains("| UDP 64 B received pps | 100 [100–200] | 50 | 0.38 [0.25–0.50] |"),
            "{md}"
        );
        assert!(md.contains("errors: x"), "{md}");
    }

    #[test]
    fn uapi_tx_bytes_sums_peers() {
        let r = "private_key=00\npublic_key=aa\ntx_bytes=10\nrx_bytes=3\npublic_key=bb\ntx_bytes=5\nerrno=0\n\n";
        assert_eq!(tx_bytes(r), 15);
        let v = serde_json::json!({"nodes": [
            {"status": {"dataplane": {"wireguard": [{"tx_bytes": 7}]}}},
            {"status": {"dataplane": {"wireguard": [{"tx_bytes": 8}, {"rx_bytes": 1}]}}}
        ]});
        assert_eq!(weir_wg_tx(&v), 15);
    }
}
