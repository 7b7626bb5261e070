//! External load tools from Debian (iperf3, wrk), run inside the pods'
//! namespaces with `ip netns exec` and pinned with `taskset`, and a guard
//! that kills a child process by its pid when dropped.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A child process killed (SIGTERM, then SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    pub what: String,
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(what: &str, cmd: &mut Command) -> anyhow::Result<ChildGuard> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start {what}"))?;
        Ok(ChildGuard {
            what: what.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ip netns exec NETNS taskset -c CORE PROG ARGS...`
pub fn in_netns(netns: &str, core: usize, prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        netns,
        "taskset",
        "-c",
        &core.to_string(),
        prog,
    ])
    .args(args);
    c
}

/// Whether `prog` is on `$PATH`.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BulkResult {
    pub gbit_per_s: f64,
    pub retransmits: u64,
    pub seconds: f64,
}

/// iperf3: server in `dst_netns` on `dst:5201`, client in `src_netns`, one
/// stream, `secs` seconds; both pinned to `core`.
pub fn iperf3(
    src_netns: &str,
    dst_netns: &str,
    dst: Ipv4Addr,
    secs: u64,
    core: usize,
) -> anyhow::Result<BulkResult> {
    let _server = ChildGuard::spawn(
        "iperf3 -s",
        in_netns(
            dst_netns,
            core,
            "iperf3",
            &["-s", "-1", "-B", &dst.to_string()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null()),
    )?;
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let out = in_netns(
            src_netns,
            core,
            "iperf3",
            &["-c", &dst.to_string(), "-t", &secs.to_string(), "-J"],
        )
        .output()
        .context("run iperf3 -c")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(BulkResult {
                gbit_per_s: bps / 1e9,
                retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
                seconds: v["end"]["sum_received"]["seconds"].as_f64().unwrap_or(0.0),
            });
        }
        last = v["error"].as_str().unwrap_or("no JSON").to_string();
        if !last.contains("connect") {
            break;
        }
    }
    anyhow::bail!("iperf3: {last}")
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HttpResult {
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    /// Non-2xx/3xx answers and socket errors wrk counted.
    pub errors: u64,
    pub connections: u32,
}

/// wrk: `connections` keep-alive connections on one thread from
/// `src_netns`, GET `url` for `secs` seconds.
pub fn wrk(
    src_netns: &str,
    url: &str,
    secs: u64,
    connections: u32,
    core: usize,
) -> anyhow::Result<HttpResult> {
    wrk_with(src_netns, url, secs, connections, core, &[])
}

/// wrk with `Connection: close`: every request on a new connection (the
/// server closes first), so requests/s is new connections/s.
pub fn wrk_close(
    src_netns: &str,
    url: &str,
    secs: u64,
    connections: u32,
    core: usize,
) -> anyhow::Result<HttpResult> {
    wrk_with(
        src_netns,
        url,
        secs,
        connections,
        core,
        &["-H", "Connection: close"],
    )
}

fn wrk_with(
    src_netns: &str,
    url: &str,
    secs: u64,
    connections: u32,
    core: usize,
    extra: &[&str],
) -> anyhow::Result<HttpResult> {
    let c = format!("-c{connections}");
    let d = format!("-d{secs}s");
    let mut args = vec!["-t1", &c, &d, "--latency", "--timeout", "2s"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = in_netns(src_netns, core, "wrk", &args)
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "wrk: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = parse_wrk(&text).with_context(|| format!("wrk output:\n{text}"))?;
    r.connections = connections;
    Ok(r)
}

/// Reads wrk's text report.
pub fn parse_wrk(text: &str) -> Option<HttpResult> {
    let mut r = HttpResult::default();
    let mut rps = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = dur_us(v.trim())?;
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = dur_us(v.trim())?;
        } else if t.contains("requests in") {
            r.requests = t.split_whitespace().next()?.parse().ok()?;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    r.requests_per_s = rps?;
    Some(r)
}

fn dur_us(s: &str) -> Option<f64> {
    let i = s.find(|c: char| c.is_ascii_alphabetic())?;
    let v: f64 = s[..i].parse().ok()?;
    Some(match &s[i..] {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_report() {
        let t = "Running 1s test @ http://10.0.0.2/public/x\n  1 threads and 4 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    50.00us   10.00us   1.00ms   90.00%\n  Latency Distribution\n     50%   45.00us\n     75%   60.00us\n     90%   80.00us\n     99%    1.20ms\n  10000 requests in 1.00s, 1.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\nRequests/sec:  10000.50\nTransfer/sec:      1.00MB\n";
        let r = super::parse_wrk(t).unwrap();
        assert_eq!(r.requests, 10000);
        assert!((r.requests_per_s - 10000.5).abs() < 1e-9);
        assert!((r.p50_us - 45.0).abs() < 1e-9);
        assert!((r.p99_us - 1200.0).abs() < 1e-9);
        assert_eq!(r.errors, 3);
    }
}

/// What ApacheBench reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AbResult {
    /// Requests per second; without `-k` each is a new connection.
    pub requests_per_s: f64,
    pub complete: u64,
    pub failed: u64,
    pub non_2xx: u64,
    pub concurrency: u32,
}

/// ApacheBench without `-k` (HTTP/1.0, a new connection per request, the
/// server closes first): `concurrency` clients for `secs` seconds.
pub fn ab(
    src_netns: &str,
    url: &str,
    secs: u64,
    concurrency: u32,
    core: usize,
) -> anyhow::Result<AbResult> {
    let out = in_netns(
        src_netns,
        core,
        "ab",
        &[
            "-q",
            "-r",
            "-s",
            "5",
            "-t",
            &secs.max(1).to_string(),
            "-n",
            "10000000",
            "-c",
            &concurrency.to_string(),
            url,
        ],
    )
    .output()
    .context("run ab")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "ab: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = parse_ab(&text).with_context(|| format!("ab output:\n{text}"))?;
    r.concurrency = concurrency;
    Ok(r)
}

/// Reads ab's text report.
pub fn parse_ab(text: &str) -> Option<AbResult> {
    let mut r = AbResult::default();
    let mut rps = None;
    let num =
        |l: &str| -> Option<f64> { l.split(':').nth(1)?.split_whitespace().next()?.parse().ok() };
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Requests per second:") {
            rps = num(t);
        } else if t.starts_with("Complete requests:") {
            r.complete = num(t)? as u64;
        } else if t.starts_with("Failed requests:") {
            r.failed = num(t)? as u64;
        } else if t.starts_with("Non-2xx responses:") {
            r.non_2xx = num(t)? as u64;
        }
    }
    r.requests_per_s = rps?;
    Some(r)
}

#[cfg(test)]
mod ab_tests {
    use super::*;

    #[test]
    fn parses_ab() {
        let text = "Concurrency Level:      8\nTime taken for tests:   5.000 seconds\nComplete requests:      12345\nFailed requests:        2\nNon-2xx responses:      3\nRequests per second:    2469.00 [#/sec] (mean)\n";
        let r = parse_ab(text).unwrap();
        assert_eq!((r.complete, r.failed, r.non_2xx), (12345, 2, 3));
        assert!((r.requests_per_s - 2469.0).abs() < 1e-9);
        assert!(parse_ab("nothing").is_none());
    }
}
