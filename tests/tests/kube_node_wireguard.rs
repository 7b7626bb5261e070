//! WireGuard on the node-agent path (`weir agent --node N --encrypt
//! wireguard`, docs/encryption.md): two nodes of a cluster weir did not
//! build (a REAL kube-apiserver, an agent each, pods attached by the test
//! kubelet through weir-cni) joined through an underlay bridge of the
//! test's own, and a third Node object whose WireGuard annotation is
//! garbage (a namespace with an address on the bridge, no agent).
//!
//! - each agent publishes its public key on its Node
//!   (`weir.dev/wireguard-public-key`), the key file is 0600;
//! - node b's agent starts after node a's dataplane runs: a takes b as a
//!   peer live (same dataplane process), pods a ↔ b talk;
//! - a marker echoed between the pods over TCP is never in a capture of
//!   the underlay bridge, which did carry the tunnel's frames, and a's
//!   status shows the session with b (handshake age);
//! - traffic to the garbage node's pod is dropped `wireguard-no-peer` on a,
//!   and nothing reaches that node's port of the bridge; a warning and a
//!   Warning Event name the node;
//! - `weir wireguard rotate --node a` while a TCP stream runs a ↔ b: the
//!   annotation changes to the new key, the stream keeps going (same
//!   connection, every echo intact), a's session with b is younger than
//!   the rotation (a new handshake).
//!
//! Needs root, tcpdump (scripts/setup.sh).

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_tests::k8s::ControlPlane;
use weir_tests::kubelet::*;
use weir_tests::{unique_name, weir_bin};

const MARKER: &str = "weir-wg-node-marker-91be";
const ANNOTATION: &str = "weir.dev/wireguard-public-key";

/// A tcpdump of the test's; `Drop` stops it.
struct Capture(Option<Child>);

impl Capture {
    fn start(netns: &str, iface: &str, file: &Path, filter: &str) -> Capture {
        let _ = std::fs::remove_file(file);
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-U", "--immediate-mode"])
            .args(["-n", "-i", iface, "-w"])
            .arg(file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        let t0 = Instant::now();
        while !file.exists() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        Capture(Some(child))
    }

    /// Stops the capture: (frames, the marker seen in them).
    fn stop(&mut self, file: &Path) -> (usize, bool) {
        if let Some(mut c) = self.0.take() {
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.kill();
            let _ = c.wait();
        }
        let bytes = std::fs::read(file).unwrap_or_default();
        let frames = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(file)
            .output()
            .map(|o| {
                // One line per frame starts with its time (tcpdump may add
                // lines of its own decoding).
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                    .count()
            })
            .unwrap_or(0);
        let seen = bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
        (frames, seen)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn annotation(cp: &ControlPlane, node: &str) -> String {
    cp.kubectl(
        &[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.metadata.annotations.weir\\.dev/wireguard-public-key}",
        ],
        None,
    )
    .stdout
    .iter()
    .map(|&b| b as char)
    .collect::<String>()
    .trim()
    .to_string()
}

fn dataplane_pid(n: &NodeUnderTest) -> String {
    std::fs::read_to_string(n.state.join(format!("kube/nodes/{}/dataplane.pid", n.name)))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The node's WireGuard peers in `weir status -o json`.
fn wg_peers(n: &NodeUnderTest) -> Vec<Value> {
    n.status()["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            n["status"]["dataplane"]["wireguard"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The marker echoed over one TCP connection from `from` to `to`:80.
fn tcp_marker(from: &Path, to: Ipv4Addr) -> bool {
    weir_topo::netns::run_in_path(from, || {
        let Ok(mut s) =
            TcpStream::connect_timeout(&SocketAddr::from((to, 80)), Duration::from_secs(1))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = vec![0u8; MARKER.len()];
        s.write_all(MARKER.as_bytes()).is_ok()
            && s.read_exact(&mut buf).is_ok()
            && buf == MARKER.as_bytes()
    })
    .unwrap_or(false)
}

#[test]
fn node_agents_encrypt_publish_keys_follow_peers_and_rotate() {
    let cp = ControlPlane::start("kwgn");
    let tag = unique_name("kwgn");
    let mut netns = Netns(Vec::new());
    let (ns_a, ns_b, ns_c, ns_u) = (
        format!("wa{tag}"),
        format!("wb{tag}"),
        format!("wc{tag}"),
        format!("wu{tag}"),
    );
    for n in [&ns_u, &ns_a, &ns_b, &ns_c] {
        netns.add(n);
    }
    let ip = |ns: &str, args: &[&str]| {
        let ok = Command::new("ip")
            .args(["-n", ns])
            .args(args)
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip -n {ns} {args:?}");
    };
    ip(&ns_u, &["link", "add", "br0", "type", "bridge"]);
    ip(&ns_u, &["link", "set", "br0", "up"]);
    for (ns, port, addr) in [
        (&ns_a, "ua", "192.168.81.1/24"),
        (&ns_b, "ub", "192.168.81.2/24"),
        (&ns_c, "uc", "192.168.81.3/24"),
    ] {
        ip(
            ns,
            &[
                "link",
                "add",
                "ul0",
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &ns_u,
            ],
        );
        ip(&ns_u, &["link", "set", port, "master", "br0", "up"]);
        ip(ns, &["addr", "add", addr, "dev", "ul0"]);
        ip(ns, &["link", "set", "ul0", "up"]);
        ip(ns, &["link", "set", "lo", "up"]);
    }
    let mut a = node_under_test(&cp, &format!("a-{tag}"), &ns_a, &tag);
    let mut b = node_under_test(&cp, &format!("b-{tag}"), &ns_b, &tag);
    let c_name = format!("c-{tag}");
    register_node(&cp, &a.name, "10.218.1.0/24", Some("192.168.81.1"));
    register_node(&cp, &b.name, "10.218.2.0/24", Some("192.168.81.2"));
    register_node(&cp, &c_name, "10.218.3.0/24", Some("192.168.81.3"));
    cp.kubectl_ok(
        &[
            "annotate",
            "node",
            &c_name,
            &format!("{ANNOTATION}=not-a-key"),
        ],
        None,
    );
    let wg = ["--encrypt", "wireguard"];
    a.start_agent_with(&wg);
    create_namespace(&cp, &a, "kn");
    let pa = attach(
        &cp,
        &a,
        &mut netns,
        &format!("w{tag}-a"),
        "kn",
        "a",
        &pod_yaml("kn", "a", &a.name),
    );
    start_servers(&pa.netns_path);
    write_status(&cp, &pa);
    // A pod on the garbage node (no runtime there: only its Pod object and
    // status, as the API server would have them).
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&pod_yaml("kn", "c", &c_name)));
    let ip_c = Ipv4Addr::new(10, 218, 3, 5);
    write_status(
        &cp,
        &Pod {
            namespace: "kn".into(),
            name: "c".into(),
            netns_path: "/nonexistent".into(),
            ip: Some(ip_c),
        },
    );

    // a's key: 0600, published on its Node, as its log says.
    wait_until(&a, "a's annotation", || {
        !annotation(&cp, &a.name).is_empty()
    });
    let key_a = annotation(&cp, &a.name);
    assert!(
        a.log().contains(&format!("public key {key_a}")),
        "a's annotation {key_a} is not the key its agent loaded:\n{}",
        a.log()
    );
    let key_file = a
        .state
        .join(format!("kube/wireguard/{}/wireguard.key", a.name));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("a's key file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    wait_until(&a, "a's dataplane running", || dataplane_generation(&a) > 0);
    let pid_a = dataplane_pid(&a);

    // b joins later: a takes it as a peer live.
    b.start_agent_with(&wg);
    let pb = attach(
        &cp,
        &b,
        &mut netns,
        &format!("w{tag}-b"),
        "kn",
        "b",
        &pod_yaml("kn", "b", &b.name),
    );
    start_servers(&pb.netns_path);
    write_status(&cp, &pb);
    let ip_b = pb.ip.unwrap();
    wait_until(&b, "b's annotation", || {
        !annotation(&cp, &b.name).is_empty()
    });
    wait_until(&a, "a → b through WireGuard", || {
        tcp_ok(&pa.netns_path, ip_b)
    });
    assert_eq!(dataplane_pid(&a), pid_a, "a's dataplane was not restarted");
    // The handshake ran in the dataplanes: a's peer b has a session.
    assert!(
        wg_peers(&a)
            .iter()
            .any(|p| p["node"] == b.name.as_str() && p["handshake_age_ms"].is_u64()),
        "no WireGuard handshake with b in a's status: {:?}",
        wg_peers(&a)
    );

    // The marker between the pods never crosses the underlay in clear.
    let file = a.state.join("underlay.pcap");
    let mut cap = Capture::start(&ns_u, "ua", &file, "udp port 4789");
    for _ in 0..3 {
        assert!(tcp_marker(&pa.netns_path, ip_b), "a → b marker echoed");
        assert!(tcp_marker(&pb.netns_path, pa.ip.unwrap()), "b → a marker");
    }
    let (frames, seen) = cap.stop(&file);
    assert!(frames >= 12, "{frames} underlay frames captured");
    assert!(!seen, "the marker crossed the underlay in clear");
    eprintln!("{frames} underlay frames, no marker");
    for n in [&a, &b] {
        let peers = wg_peers(n);
        assert!(
            peers
                .iter()
                .any(|p| p["state"] == "up" && p["rx_bytes"].as_u64() > Some(0)),
            "{}: WireGuard peers {peers:?}",
            n.name
        );
        for r in ["wireguard-auth-failed", "wireguard-malformed"] {
            assert_eq!(n.drops(r), 0, "{}: {r}", n.name);
        }
    }

    // The garbage node: its pod's traffic dropped and counted, nothing on
    // its port of the bridge; a warning and an Event name it.
    let file_c = a.state.join("underlay-c.pcap");
    let mut cap = Capture::start(&ns_u, "uc", &file_c, "udp");
    let before = a.drops("wireguard-no-peer");
    for _ in 0..3 {
        assert!(!tcp_marker(&pa.netns_path, ip_c), "a → c must not connect");
    }
    let (frames_c, seen_c) = cap.stop(&file_c);
    let counted = a.drops("wireguard-no-peer") - before;
    assert!(counted >= 3, "a counted {counted} wireguard-no-peer drops");
    assert_eq!(frames_c, 0, "UDP toward the garbage node");
    assert!(!seen_c);
    let warned = a
        .log()
        .lines()
        .filter(|l| l.contains(&format!("nodes/{c_name}: annotation {ANNOTATION}")))
        .count();
    assert_eq!(warned, 1, "one warning naming {c_name}:\n{}", a.log());
    let events = cp.kubectl_ok(&["get", "events", "-A", "-o", "json"], None);
    assert!(
        events.contains("WeirWireguardKey") && events.contains(&c_name),
        "no Warning Event on nodes/{c_name}"
    );

    // Rotation under a live TCP stream a → b.
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    // The longest wait for one echo (ms): the stream's pause across the
    // rotation, reported, not asserted (the machine is noisy).
    let longest = Arc::new(AtomicU64::new(0));
    let stream = {
        let (stop, echoes, longest) = (stop.clone(), echoes.clone(), longest.clone());
        let from = pa.netns_path.clone();
        std::thread::spawn(move || -> Result<(), String> {
            weir_topo::netns::run_in_path(&from, || {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((ip_b, 80)),
                    Duration::from_secs(2),
                )
                .map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(|e| e.to_string())?;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("{MARKER}-{i:08}");
                    let t = Instant::now();
                    s.write_all(msg.as_bytes())
                        .map_err(|e| format!("write {i}: {e}"))?;
                    let mut buf = vec![0u8; msg.len()];
                    s.read_exact(&mut buf)
                        .map_err(|e| format!("read {i}: {e}"))?;
                    if buf != msg.as_bytes() {
                        return Err(format!("echo {i} differs"));
                    }
                    i += 1;
                    echoes.store(i, Ordering::Relaxed);
                    longest.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?
        })
    };
    wait_until(&a, "the stream running", || {
        echoes.load(Ordering::Relaxed) >= 10
    });
    let rotated_at = Instant::now();
    let out = Command::new(weir_bin())
        .args(["wireguard", "rotate", "--node", &a.name, "--state-dir"])
        .arg(&a.state)
        .output()
        .expect("weir wireguard rotate");
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "rotate: {printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_a2 = printed
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_ne!(key_a2, key_a);
    wait_until(&a, "a's new key on its Node", || {
        annotation(&cp, &a.name) == key_a2
    });
    let at_rotation = echoes.load(Ordering::Relaxed);
    wait_until(&a, "the stream going on after the rotation", || {
        echoes.load(Ordering::Relaxed) >= at_rotation + 20
    });
    stop.store(true, Ordering::Relaxed);
    let r = stream.join().expect("stream thread");
    assert_eq!(r, Ok(()), "the stream across the rotation");
    // A new handshake since the rotation: a's session with b is younger.
    let age = wg_peers(&a)
        .iter()
        .find(|p| p["node"] == b.name.as_str())
        .and_then(|p| p["handshake_age_ms"].as_u64());
    assert!(
        age.is_some_and(|ms| u128::from(ms) < rotated_at.elapsed().as_millis()),
        "no new handshake after a's rotation: age {age:?} ms, rotated {:?} ago",
        rotated_at.elapsed()
    );
    assert_eq!(dataplane_pid(&a), pid_a, "a's dataplane was not restarted");
    eprintln!(
        "rotation: {} echoes on one connection, {at_rotation} before the new key was published; longest echo {} ms",
        echoes.load(Ordering::Relaxed),
        longest.load(Ordering::Relaxed)
    );
    drop(a);
    drop(b);
    drop(netns);
}
