//! End to end, short: `weir-perf fastpath` (and `paper`, `services`, `scale`, `flows`, `idle`, `rr --breakdown`) with
//! tiny windows must produce a number for every configuration, and weir's
//! worker counters must move.
//! No timing assertions (the machine is shared): only that it all ran.
//!
//! Needs root (namespaces, XDP) and the `weir` binary (built here with
//! `cargo build -p weir` when it is not next to weir-perf). Skipped, with a
//! message, when not root.

use std::path::PathBuf;
use std::process::Command;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// weir next to weir-perf (target/<profile>/weir), built if missing (with
/// weir-cni, through which the local cluster attaches its pods).
fn weir_bin() -> PathBuf {
    let perf = PathBuf::from(env!("CARGO_BIN_EXE_weir-perf"));
    let bin = perf.with_file_name("weir");
    if !bin.is_file() || !perf.with_file_name("weir-cni").is_file() {
        let release = perf
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "weir", "-p", "weir-cni"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build -p weir -p weir-cni");
        assert!(st.success(), "cargo build -p weir -p weir-cni failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

#[test]
fn fastpath_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-smoke-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "fastpath",
            "--short",
            "--window-ms",
            "400",
            "--rr-count",
            "300",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .output()
        .expect("run weir-perf");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "weir-perf failed:\n{stdout}\n{stderr}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("fastpath.json")).expect("fastpath.json"))
            .expect("JSON");
    assert!(std::fs::read_to_string(out.join("fastpath.md"))
        .expect("fastpath.md")
        .contains("| kernel |"));
    assert!(
        json["generator_ceiling"]["sent"].as_u64().unwrap_or(0) > 0,
        "ceiling sent nothing"
    );
    let configs = json["configs"].as_array().expect("configs");
    let names: Vec<&str> = configs.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["kernel", "weir-busy", "weir-adaptive"]);
    for c in configs {
        let name = c["name"].as_str().unwrap_or("?");
        assert!(
            c["udp"]["received"].as_u64().unwrap_or(0) > 0,
            "{name}: no UDP datagram received: {c}"
        );
        assert!(
            c["rr"]["count"].as_u64().unwrap_or(0) == 300,
            "{name}: RR did not complete: {c}"
        );
        assert!(
            c["rr"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: no RR latency"
        );
        if c["poll"].is_string() {
            for run in ["weir_udp", "weir_rr"] {
                let w = &c[run];
                assert!(
                    w["rx_packets"].as_u64().unwrap_or(0) > 0,
                    "{name}: weir's rx counter did not move in {run}: {w}"
                );
                assert!(
                    w["tx_packets"].as_u64().unwrap_or(0) > 0,
                    "{name}: weir's tx counter did not move in {run}: {w}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    // Nothing left behind: no namespace of the run's clusters.
    let clusters: Vec<String> = json["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    assert!(!clusters.is_empty());
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    clusters
                        .iter()
                        .any(|c| n.starts_with(&format!("weir-{c}-")))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// `weir-perf paper --short`: every configuration ran (or says why not),
/// weir's L7 row passed its checks and was measured, the L7 wrk rounds ran,
/// the policy configurations refused app3, plots were written, nothing is
/// left behind. No timings. (Inter-node is off in short mode.)
#[test]
fn paper_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-paper-smoke-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args(["paper", "--short", "--rules", "10,100", "--out"])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .output()
        .expect("run weir-perf paper");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "weir-perf paper failed:\n{stdout}\n{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("paper.json")).expect("paper.json"))
            .expect("JSON");
    let rows = json["rows"].as_array().expect("rows");
    let find = |n: &str| rows.iter().find(|r| r["name"] == n);
    for n in [
        "kernel",
        "kernel+nft",
        "weir-adaptive",
        "weir-adaptive+L3L4",
    ] {
        let r = find(n).unwrap_or_else(|| panic!("row {n} missing: {json}"));
        assert!(
            r["udp"]["received"].as_u64().unwrap_or(0) > 0,
            "{n}: no UDP received: {r}"
        );
        assert!(
            r["rr"]["count"].as_u64().unwrap_or(0) > 0,
            "{n}: no RR: {r}"
        );
        assert!(
            r["bulk"]["gbit_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{n}: no iperf3: {r}"
        );
        assert!(
            r["http"]["requests"].as_u64().unwrap_or(0) > 0,
            "{n}: no HTTP: {r}"
        );
    }
    for n in ["kernel+nft", "weir-adaptive+L3L4"] {
        assert_eq!(
            find(n).unwrap()["app3_blocked"],
            true,
            "{n}: app3 reached app1"
        );
    }
    // weir's L7 row: checked (200 from the server, 403 from weir, app3
    // refused) and measured.
    let l7 = find("weir-adaptive+L7").expect("L7 row");
    assert_eq!(l7["l7_public"], 200, "{l7}");
    assert_eq!(l7["l7_private"], 403, "{l7}");
    assert_eq!(l7["app3_blocked"], true, "{l7}");
    assert!(
        l7["http"]["requests"].as_u64().unwrap_or(0) > 0,
        "L7: no HTTP: {l7}"
    );
    // Issue #5's rounds: none, L3/L4, L7, each with wrk numbers.
    let i5 = json["issue5"].as_array().expect("issue5");
    for pol in ["none", "L3L4", "L7"] {
        assert!(
            i5.iter()
                .any(|x| x["policy"] == pol && x["http"]["requests"].as_u64().unwrap_or(0) > 0),
            "issue5 {pol}: {i5:?}"
        );
    }
    let scaling = json["scaling"].as_array().expect("scaling");
    assert_eq!(
        scaling.len(),
        4,
        "2 rule counts × (nftables, weir): {scaling:?}"
    );
    for p in scaling {
        assert!(
            p["conn"]["connects"].as_u64().unwrap_or(0) > 0,
            "no connection: {p}"
        );
    }
    assert!(out.join("paper-udp-pps.svg").is_file());
    assert!(out.join("paper-rules-connects.svg").is_file());
    let clusters: Vec<String> = json["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    clusters
                        .iter()
                        .any(|c| n.starts_with(&format!("weir-{c}-")))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `weir-perf services --short`: every path (kernel with kube-proxy-style
/// nftables, weir; pod IP and ClusterIP) produced pps and RR numbers, weir's
/// counters moved on both of its targets, every connection-rate point
/// connected, IPVS is reported either way, nothing is left behind. No
/// timings.
#[test]
fn services_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-svc-smoke-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "services",
            "--short",
            "--window-ms",
            "300",
            "--rr-count",
            "200",
            "--services",
            "10,100",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .output()
        .expect("run weir-perf services");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "weir-perf services failed:\n{stdout}\n{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("services.json")).expect("services.json"))
            .expect("JSON");
    let ipvs = json["ipvs"].as_str().expect("ipvs");
    assert!(
        ipvs.starts_with("ok: ") || ipvs.starts_with("not available: "),
        "{ipvs}"
    );
    let paths = json["paths"].as_array().expect("paths");
    for peer in ["kernel+kube-proxy-nft", "weir-adaptive"] {
        for target in ["pod-ip", "cluster-ip"] {
            let p = paths
                .iter()
                .find(|p| p["peer"] == peer && p["target"] == target)
                .unwrap_or_else(|| panic!("{peer} {target} missing: {json}"));
            assert!(
                p["udp"]["received"].as_u64().unwrap_or(0) > 0,
                "{peer} {target}: no UDP received: {p}"
            );
            assert_eq!(p["rr"]["count"], 200, "{peer} {target}: RR: {p}");
            if peer.starts_with("weir") {
                for run in ["weir_rr", "weir_udp"] {
                    assert!(
                        p[run]["rx_packets"].as_u64().unwrap_or(0) > 0
                            && p[run]["tx_packets"].as_u64().unwrap_or(0) > 0,
                        "{peer} {target}: weir's counters did not move in {run}: {p}"
                    );
                }
            }
        }
    }
    let conns = json["conns"].as_array().expect("conns");
    for peer in ["weir-adaptive", "nft-kube-proxy", "nft-linear"] {
        for n in [10, 100] {
            let c = conns
                .iter()
                .find(|c| c["peer"] == peer && c["services"] == n)
                .unwrap_or_else(|| panic!("{peer} with {n} Services missing: {json}"));
            for t in ["cluster_ip", "pod_ip"] {
                assert!(
                    c[t]["connects"].as_u64().unwrap_or(0) > 0,
                    "{peer} {n} {t}: no connection: {c}"
                );
            }
            if peer.starts_with("weir") {
                assert!(
                    c["weir"]["rx_packets"].as_u64().unwrap_or(0) > 0,
                    "{peer} {n}: weir's counters did not move: {c}"
                );
            }
        }
    }
    assert!(std::fs::read_to_string(out.join("services.md"))
        .expect("services.md")
        .contains("| weir-adaptive | cluster-ip |"));
    let clusters: Vec<String> = json["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    assert_eq!(clusters.len(), 2);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    clusters
                        .iter()
                        .any(|c| n.starts_with(&format!("weir-{c}-")))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `weir-perf wireguard --short`: weir plain, weir `--encrypt wireguard`,
/// veth and wireguard-go each produced numbers and proved their path (the
/// harness turns a tunnel whose counters did not move into an error), and
/// no namespace is left behind.
#[test]
fn wireguard_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-wg-smoke-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "wireguard",
            "--short",
            "--window-ms",
            "300",
            "--rr-count",
            "200",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir-perf wireguard");
    let pid = child.id();
    let run = child.wait_with_output().expect("weir-perf wireguard");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "weir-perf wireguard failed:\n{stdout}\n{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("wireguard.json")).expect("wireguard.json"))
            .expect("JSON");
    assert_eq!(json["errors"], serde_json::json!([]), "{json}");
    let samples = json["samples"].as_array().expect("samples");
    for cfg in ["weir-plain", "weir-wireguard", "veth", "wireguard-go"] {
        let s = samples
            .iter()
            .find(|s| s["config"] == cfg)
            .unwrap_or_else(|| panic!("{cfg} missing: {json}"));
        assert_eq!(s["errors"], serde_json::json!([]), "{cfg}: {s}");
        assert!(s["udp"]["received"].as_u64().unwrap_or(0) > 0, "{cfg}: {s}");
        assert_eq!(s["rr"]["count"], 200, "{cfg}: {s}");
        assert!(
            s["bulk"]["gbit_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{cfg}: {s}"
        );
    }
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    let tag = format!("wgp{}", pid % 100_000);
    assert!(!ns.contains(&tag), "namespaces left behind: {ns}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Whether a namespace whose name contains `tag` is left.
fn netns_left(tag: &str) -> bool {
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&ns.stdout).contains(tag)
}

#[test]
fn scale_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-scale-smoke-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "scale",
            "--reps",
            "1",
            "--window-ms",
            "300",
            // While stage 0 is off the census sees one batch in 16: turning
            // it on at 8192 flows takes ~80k frames, which a debug build
            // beside another smoke test may not pass in less.
            "--warmup-ms",
            "1000",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir-perf scale");
    let pid = child.id();
    let run = child.wait_with_output().expect("weir-perf scale");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "weir-perf scale failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("scale.json")).expect("scale.json"))
            .expect("JSON");
    let samples = json["samples"].as_array().expect("samples");
    for (cfg, workers) in [("weir-1w", 1), ("weir-2w", 2)] {
        let s = samples
            .iter()
            .find(|s| s["config"] == cfg)
            .unwrap_or_else(|| panic!("{cfg} missing: {json}"));
        assert_eq!(s["error"], serde_json::Value::Null, "{cfg}: {s}");
        assert!(s["udp"]["received"].as_u64().unwrap_or(0) > 0, "{cfg}: {s}");
        let w = s["per_worker"].as_array().expect("per_worker");
        assert_eq!(w.len(), workers, "{cfg}: {s}");
        // 32 flows over two queues: both queues' XDP counters moved, and
        // with two workers both received frames (one queue each).
        let q = s["queue_xdp_packets"].as_array().expect("queues");
        assert!(
            q.len() == 2 && q.iter().all(|n| n.as_u64().unwrap_or(0) > 0),
            "{cfg}: {s}"
        );
        assert!(
            w.iter().all(|w| w["rx_packets"].as_u64().unwrap_or(0) > 0),
            "{cfg}: {s}"
        );
    }
    assert!(!netns_left(&format!("psc{pid}")), "namespaces left behind");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn flows_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let nf_max = || std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").ok();
    let nf_max0 = nf_max();
    let out = std::env::temp_dir().join(format!("weir-perf-flows-smoke-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "flows",
            "--reps",
            "1",
            "--flows",
            "1,8192",
            "--window-ms",
            "300",
            // While stage 0 is off the census sees one batch in 16: turning
            // it on at 8192 flows takes ~80k frames, which a debug build
            // beside another smoke test may not pass in less.
            "--warmup-ms",
            "1000",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir-perf flows");
    let pid = child.id();
    let run = child.wait_with_output().expect("weir-perf flows");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "weir-perf flows failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("flows.json")).expect("flows.json"))
            .expect("JSON");
    let samples = json["samples"].as_array().expect("samples");
    for cfg in ["auto", "off", "on"] {
        for flows in [1u64, 8192] {
            let s = samples
                .iter()
                .find(|s| s["config"] == cfg && s["flows"] == flows)
                .unwrap_or_else(|| panic!("{cfg} at {flows} missing: {json}"));
            // weir-perf itself refuses a sample whose worker did not take
            // the frames or whose table does not hold the flows.
            assert_eq!(s["error"], serde_json::Value::Null, "{cfg}: {s}");
            assert!(s["delivered"].as_u64().unwrap_or(0) > 0, "{cfg}: {s}");
            assert!(
                s["conntrack_entries"].as_u64().unwrap_or(0) >= flows * 9 / 10,
                "{cfg}: {s}"
            );
            // Stage 0: forced either way, or by the census (8192 flows
            // cycling turn it on, one flow leaves it off).
            let on = s["stage0_on"].as_bool().expect("stage0_on");
            let want = match cfg {
                "on" => true,
                "off" => false,
                _ => flows > 1,
            };
            assert_eq!(on, want, "{cfg} at {flows}: {s}");
        }
    }
    // The peers carried the same flows through their own tables (the
    // kernel's conntrack; OVS's when installed).
    let peers = json["peers"].as_array().expect("peers");
    assert!(peers.iter().any(|p| p == "kernel+nft"), "{json}");
    for p in peers {
        for flows in [1u64, 8192] {
            let s = samples
                .iter()
                .find(|s| &s["config"] == p && s["flows"] == flows)
                .unwrap_or_else(|| panic!("{p} at {flows} missing: {json}"));
            assert_eq!(s["error"], serde_json::Value::Null, "{p}: {s}");
            assert!(s["delivered"].as_u64().unwrap_or(0) > 0, "{p}: {s}");
            assert!(
                s["conntrack_entries"].as_u64().unwrap_or(0) >= flows * 9 / 10,
                "{p}: {s}"
            );
            assert!(s["cores"].as_f64().unwrap_or(0.0) > 0.0, "{p}: {s}");
        }
    }
    // The kernel's table size is given back.
    assert_eq!(nf_max(), nf_max0, "nf_conntrack_max not restored");
    let md = std::fs::read_to_string(out.join("flows.md")).expect("flows.md");
    assert!(md.contains("÷ same at 1 flows"), "{md}");
    assert!(md.contains("÷ kernel+nft pps/core"), "{md}");
    assert!(!netns_left(&format!("pfl{pid}")), "namespaces left behind");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn idle_and_rr_breakdown_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-idle-smoke-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "idle",
            "--reps",
            "1",
            "--variants",
            "10",
            "--no-kernel",
            "--count",
            "200",
            "--window-ms",
            "300",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir-perf idle");
    let pid = child.id();
    let run = child.wait_with_output().expect("weir-perf idle");
    assert!(
        run.status.success(),
        "weir-perf idle failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("idle.json")).expect("idle.json"))
            .expect("JSON");
    let s = &json["samples"][0];
    assert_eq!(s["config"], "weir-spin10+yield", "{json}");
    assert_eq!(s["error"], serde_json::Value::Null, "{s}");
    assert_eq!(s["inter_rr"]["count"], 200, "{s}");
    assert!(s["weir_rx"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(!netns_left(&format!("pil{pid}")), "namespaces left behind");

    // rr --breakdown: every configuration's round trip split at the RX stamps.
    let child = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "rr",
            "--breakdown",
            "--modes",
            "adaptive",
            "--reps",
            "1",
            "--count",
            "200",
            "--pod-rx-cpus",
            "0",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir-perf rr");
    let pid = child.id();
    let run = child.wait_with_output().expect("weir-perf rr");
    assert!(
        run.status.success(),
        "weir-perf rr failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("rr.json")).expect("rr.json"))
            .expect("JSON");
    let configs: Vec<&str> = json["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter_map(|s| s["config"].as_str())
        .collect();
    // --pod-rx-cpus adds the RPS configurations beside the others.
    for c in ["weir-adaptive+rps", "weir-adaptive+rps+breakdown"] {
        assert!(configs.contains(&c), "no {c} in {configs:?}");
    }
    for s in json["samples"].as_array().expect("samples") {
        assert_eq!(s["error"], serde_json::Value::Null, "{s}");
        assert_eq!(s["peer_rx"]["stamped"], 200, "{s}");
        assert!(
            s["peer_rx"]["to_peer_rx"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0,
            "{s}"
        );
    }
    assert!(!netns_left(&format!("prr{pid}")), "namespaces left behind");
    let _ = std::fs::remove_dir_all(&out);
}

/// `weir-perf host-policy --seconds 1 --reps 1`: RR and bulk from the world
/// host to n1 without and with a host policy each produced numbers and
/// proved their path (with the policy the request segments reached the
/// worker through `ul0`'s XDP redirect, without it none did; the harness
/// makes a failed proof an error), and no namespace is left behind.
#[test]
fn host_policy_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-hp-smoke-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args([
            "host-policy",
            "--seconds",
            "1",
            "--reps",
            "1",
            "--rr-count",
            "300",
            "--out",
        ])
        .arg(&out)
        .arg("--weir")
        .arg(&weir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir-perf host-policy");
    let pid = child.id();
    let run = child.wait_with_output().expect("weir-perf host-policy");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "weir-perf host-policy failed:\n{stdout}\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("host-policy.json")).expect("host-policy.json"),
    )
    .expect("JSON");
    assert_eq!(json["errors"], serde_json::json!([]), "{json}");
    let samples = json["samples"].as_array().expect("samples");
    for cfg in ["none", "host-policy"] {
        let s = samples
            .iter()
            .find(|s| s["config"] == cfg)
            .unwrap_or_else(|| panic!("{cfg} missing: {json}"));
        assert_eq!(s["errors"], serde_json::json!([]), "{cfg}: {s}");
        assert_eq!(s["rr"]["count"], 300, "{cfg}: {s}");
        assert!(
            s["bulk"]["gbit_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{cfg}: {s}"
        );
    }
    let with = samples
        .iter()
        .find(|s| s["config"] == "host-policy")
        .unwrap();
    assert!(with["rr_redirected"].as_u64().unwrap_or(0) >= 300, "{with}");
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    let tag = format!("hpp{}", pid % 100_000);
    assert!(!ns.contains(&tag), "namespaces left behind: {ns}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `encap-ab` with the same binary as A and B, one short round: both
/// samples cross weir (its workers' rx counters moved, no error), the
/// table has its B ÷ A column, nothing is left behind.
#[test]
fn encap_ab_short_end_to_end() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let weir = weir_bin();
    let out = std::env::temp_dir().join(format!("weir-perf-eab-smoke-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_weir-perf"))
        .args(["encap-ab", "--short", "--reps", "1", "--encap", "geneve"])
        .arg("--weir-a")
        .arg(&weir)
        .arg("--weir-b")
        .arg(&weir)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir-perf encap-ab");
    let pid = child.id();
    let run = child.wait_with_output().expect("weir-perf encap-ab");
    assert!(
        run.status.success(),
        "weir-perf encap-ab failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("encap-ab.json")).expect("encap-ab.json"))
            .expect("JSON");
    let samples = json["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 2, "{json}");
    for s in samples {
        assert_eq!(s["errors"], serde_json::json!([]), "{s}");
        assert!(s["proof"].as_str().unwrap_or("").contains("rx "), "{s}");
        assert!(
            s["udp"]["received_pps"].as_f64().unwrap_or(0.0) > 0.0,
            "{s}"
        );
    }
    let md = std::fs::read_to_string(out.join("encap-ab.md")).expect("encap-ab.md");
    assert!(
        md.contains("| B ÷ A |") && md.contains("--encap geneve"),
        "{md}"
    );
    assert!(
        !netns_left(&format!("eab{}", pid % 100_000)),
        "namespaces left behind"
    );
    let _ = std::fs::remove_dir_all(&out);
}
