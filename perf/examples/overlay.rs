//! Inter-node vs intra-node through weir, VXLAN and Geneve, in one run:
//! 64-byte UDP pps and 1-byte TCP request/response latency (the tunnel's
//! numbers). Two nodes, pods a and b on n1 and c on n2; a → b is
//! intra-node, a → c crosses the underlay. Load pinned to core 0, both
//! nodes' workers to core 1 (adaptive polling, so two dataplanes can share
//! it). Ratios are against intra-node in the same cluster.
//!
//! `cargo run --release -p weir-perf --example overlay [-- --short]`
//! (needs root and `target/release/weir`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use weir_perf::rr::{self, RrParams};
use weir_perf::udp::{self, UdpParams};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.252.0.0/24]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.252.1.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: perf}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: perf}
spec: {nodeName: n1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: perf}
spec: {nodeName: n1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: perf}
spec: {nodeName: n2, containers: [{name: c}]}
"#;

struct Down(String, String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(&self.0)
            .args(["--cluster", &self.1, "down"])
            .output();
    }
}

fn main() -> anyhow::Result<()> {
    let short = std::env::args().any(|a| a == "--short");
    let weir = std::env::var("WEIR_BIN").unwrap_or_else(|_| "target/release/weir".into());
    let dir = std::env::temp_dir().join(format!("weir-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("overlay.yaml");
    std::fs::write(&file, MANIFESTS)?;
    let udp_p = UdpParams {
        payload: 18,
        batch: 64,
        warmup: Duration::from_millis(if short { 200 } else { 1000 }),
        window: Duration::from_secs(if short { 1 } else { 5 }),
        load_core: 0,
    };
    let rr_p = RrParams {
        count: if short { 2_000 } else { 20_000 },
        warmup: 500,
        load_core: 0,
        timeout: Duration::from_secs(5),
    };
    println!("| encap | path | UDP 64B received Mpps | × intra | RR p50 µs | p99 µs | p50 × intra | p99 × intra |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for encap in ["vxlan", "geneve"] {
        let name = format!("ov{}{}", std::process::id() % 10000, &encap[..1]);
        let out = Command::new(&weir)
            .args(["--cluster", &name, "up", "-f"])
            .arg(&file)
            .args(["--encap", encap, "--cores", "1", "--poll", "adaptive"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "weir up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _down = Down(weir.clone(), name.clone());
        let c = weir_topo::Cluster::load(&std::path::PathBuf::from(format!(
            "/run/weir/{name}/cluster.json"
        )))?;
        let pod = |n: &str| c.pod("perf", n).expect("pod").clone();
        let (a, b, cc) = (pod("a"), pod("b"), pod("c"));
        let mut rows = Vec::new();
        for (label, dst) in [("intra-node", &b), ("inter-node", &cc)] {
            let ip = dst.ipv4.expect("ipv4");
            let u = udp::run(
                &a.netns,
                &dst.netns,
                std::net::SocketAddrV4::new(ip, 9000),
                &udp_p,
            )?;
            let r = rr::run(
                &a.netns,
                &dst.netns,
                SocketAddr::new(ip.into(), 9001),
                &rr_p,
            )?;
            rows.push((label, u.received_pps / 1e6, r.p50_us, r.p99_us));
        }
        let (_, ipps, ip50, ip99) = rows[0];
        for (label, pps, p50, p99) in &rows {
            println!(
                "| {encap} | {label} | {pps:.3} | {:.2} | {p50:.1} | {p99:.1} | {:.2} | {:.2} |",
                pps / ipps,
                p50 / ip50,
                p99 / ip99
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
