//! WireGuard between weir nodes (`weir up --encrypt wireguard`,
//! docs/encryption.md), with real traffic: pods on two nodes reach each
//! other (TCP and UDP, IPv4 and IPv6) through the workers' WireGuard; a
//! marker string sent between them is never in a capture of the underlay
//! bridge, while it is without `--encrypt`; each node's status shows the
//! session with the other (handshake age, WireGuard bytes both ways), so
//! the traffic provably crossed weir's WireGuard. Needs root and tcpdump (scripts/setup.sh).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{all_connected, netpol, two_node_cluster, Peer, Reachability, TestCluster};

const MARKER: &str = "weir-wg-marker-6c1d0e";

fn cluster(tag: &str, encrypt: bool) -> TestCluster {
    let manifests = two_node_cluster("x", &[("a", "n1"), ("b", "n2"), ("c", "n1")], false);
    match encrypt {
        true => TestCluster::up_with(tag, &manifests, &["--encrypt", "wireguard"]),
        false => TestCluster::up(tag, &manifests),
    }
}

/// tcpdump on the underlay bridge into `file`, every packet written as it
/// arrives.
fn capture(c: &TestCluster, file: &Path) -> Child {
    let _ = std::fs::remove_file(file);
    let child = Command::new("ip")
        .args(["netns", "exec", &c.underlay_netns(), "tcpdump", "-U"])
        .args(["--immediate-mode", "-n", "-i", "br0", "-w"])
        .arg(file)
        .arg("udp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    let t0 = Instant::now();
    while !file.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    child
}

fn stop_capture(mut child: Child) {
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends the marker from x/a to x/b in 3 UDP datagrams, captures the
/// underlay meanwhile, and returns (UDP frames captured, marker seen).
fn marker_on_the_wire(c: &TestCluster) -> (usize, bool) {
    let topo = c.topology();
    let b = topo.pod("x", "b").expect("x/b");
    let b_ip = b.ipv4.expect("b's IPv4").to_string();
    let file = c.dir.join("underlay.pcap");
    let cap = capture(c, &file);
    for _ in 0..3 {
        c.pod_exec(
            "x",
            "a",
            &[
                "sh",
                "-c",
                &format!("echo {MARKER} | nc -u -w1 -q1 {b_ip} 9999"),
            ],
        );
    }
    stop_capture(cap);
    let bytes = std::fs::read(&file).expect("pcap");
    let frames = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&file)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    let seen = bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
    (frames, seen)
}

#[test]
fn pods_on_two_nodes_talk_through_wireguard_and_the_marker_stays_hidden() {
    let c = cluster("wge", true);
    // The first packet toward a peer starts the handshake; it is held
    // and sent when the session is up (not lost).
    let m = c.probe(80, "TCP", &["--from", "x/a", "--to", "x/b"]);
    assert!(all_connected(&m), "first connection through WireGuard: {m}");
    for (port, proto, family) in [
        ("80", "TCP", "ipv4"),
        ("81", "UDP", "ipv4"),
        ("80", "TCP", "ipv6"),
        ("81", "UDP", "ipv6"),
    ] {
        let m = c.probe(port.parse().unwrap(), proto, &["--family", family]);
        assert!(all_connected(&m), "{proto} {port} {family}: {m}");
    }
    // What the dataplanes counted: the frames sent during the handshake
    // were held (`wireguard-queued`), none lost for want of a session.
    {
        let st = c.status();
        for n in st["nodes"].as_array().into_iter().flatten() {
            for w in n["status"]["dataplane"]["workers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                eprintln!("drops on {}: {}", n["node"], w["drops"]);
            }
        }
    }
    for r in [
        "wireguard-auth-failed",
        "wireguard-replay",
        "wireguard-no-peer",
        "wireguard-malformed",
        "wireguard-no-session",
    ] {
        assert_eq!(
            c.node_drops("n1", r) + c.node_drops("n2", r),
            0,
            "{r}: {}",
            c.status()
        );
    }
    let (frames, seen) = marker_on_the_wire(&c);
    assert!(
        frames >= 3,
        "only {frames} UDP frames captured on the underlay"
    );
    assert!(!seen, "the marker crossed the underlay in clear");
    // `weir status`: each node has the other as its peer, with a session
    // and bytes both ways.
    let st = c.status();
    for (me, other) in [("n1", "n2"), ("n2", "n1")] {
        let p = &weir_tests::node_status(&st, me)["wireguard"][0];
        assert_eq!(p["node"], other, "{me}: {p}");
        assert_eq!(p["state"], "up", "{me}: {p}");
        assert!(p["handshake_age_ms"].as_u64().is_some(), "{me}: {p}");
        assert!(p["tx_bytes"].as_u64() > Some(0), "{me}: {p}");
        assert!(p["rx_bytes"].as_u64() > Some(0), "{me}: {p}");
    }
    let text = c.weir(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("wireguard peer n2 ("), "{text}");
    // Policy across nodes, encrypted: b (n2) admits c (n1) only, by pod
    // label — judged on n2 by the identity that travelled inside the
    // WireGuard message.
    c.apply(
        "p.yaml",
        &netpol(
            "x",
            "b-from-c",
            "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}",
        ),
    );
    let mut want = Reachability::new(&["x/a", "x/b", "x/c"], true);
    want.expect_peer(Peer::ANY, Peer::pod("x", "b"), false);
    want.expect_peer(Peer::pod("x", "c"), Peer::pod("x", "b"), true);
    for (port, proto) in [(80, "TCP"), (81, "UDP")] {
        if let Err(e) = c.check_reachability("b admits c only", port, proto, &want) {
            panic!("{e}");
        }
    }
    assert!(c.node_drops("n2", "policy-denied") > 0, "{}", c.status());
    // The private keys are the nodes' own, mode 0600.
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into())
        .join(&c.name)
        .join("wireguard");
    for n in ["n1", "n2"] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(state.join(n).join("wireguard.key")).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{n}");
        assert!(
            state.join(format!("{n}.pub")).exists(),
            "{n}'s public key published"
        );
    }
}

#[test]
fn without_encrypt_the_marker_is_on_the_wire() {
    // The control of the test above: the same capture sees the marker when
    // the overlay is plain, so its absence above is WireGuard's doing.
    let c = cluster("wgp", false);
    let m = c.probe(80, "TCP", &["--from", "x/a", "--to", "x/b"]);
    assert!(all_connected(&m), "{m}");
    let (frames, seen) = marker_on_the_wire(&c);
    assert!(
        frames >= 3,
        "only {frames} UDP frames captured on the underlay"
    );
    assert!(seen, "the marker should be in clear without --encrypt");
}

/// A captured WireGuard data message of n1's, re-injected on the underlay
/// bridge with Scapy: once with one ciphertext byte and the counter's top
/// byte flipped (a counter n2 has not seen, so the tag decides) → counted
/// `wireguard-auth-failed`; once unchanged (already delivered) → counted
/// `wireguard-replay`. Neither reaches a pod.
#[test]
fn tampered_and_replayed_packets_on_the_underlay_are_dropped_and_counted() {
    let c = cluster("wgt", true);
    let m = c.probe(80, "TCP", &["--from", "x/a", "--to", "x/b"]);
    assert!(all_connected(&m), "{m}");
    let topo = c.topology();
    let n2 = topo.node("n2").expect("n2");
    let u2 = n2.underlay.as_ref().expect("n2 underlay").ipv4.to_string();
    let file = c.dir.join("wg.pcap");
    let cap = Command::new("ip")
        .args(["netns", "exec", &c.underlay_netns(), "tcpdump", "-U"])
        .args(["--immediate-mode", "-n", "-i", "br0", "-w"])
        .arg(&file)
        .arg(format!("udp and dst host {u2}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    let t0 = Instant::now();
    while !file.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let m = c.probe(80, "TCP", &["--from", "x/a", "--to", "x/b"]);
    assert!(all_connected(&m), "{m}");
    stop_capture(cap);

    let before = |r: &str| c.node_drops("n2", r);
    let (auth0, replay0) = (before("wireguard-auth-failed"), before("wireguard-replay"));
    let script = r#"
import sys
from scapy.all import rdpcap, sendp, UDP
data = [p for p in rdpcap(sys.argv[1])
        if UDP in p and bytes(p[UDP].payload)[:1] == b"\x04" and len(bytes(p[UDP].payload)) > 64]
assert data, "no WireGuard data message captured"
frame = bytes(data[-1])
t = bytearray(frame)
t[42 + 15] ^= 0x80   # the counter's top byte: a counter never seen
t[-5] ^= 0x01        # one byte of the sealed overlay datagram
sendp(bytes(t), iface="br0", verbose=False)
sendp(frame, iface="br0", verbose=False)
print(len(data))
"#;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.underlay_netns(),
            "python3",
            "-c",
            script,
        ])
        .arg(&file)
        .output()
        .expect("python3 (Scapy: scripts/setup.sh)");
    assert!(
        out.status.success(),
        "scapy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    loop {
        let auth = before("wireguard-auth-failed") - auth0;
        let replay = before("wireguard-replay") - replay0;
        if auth == 1 && replay == 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "auth-failed +{auth}, replay +{replay} (want +1 each): {}",
            c.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `weir wireguard rotate --node n1` on a `weir up --encrypt wireguard`
/// cluster while one TCP connection x/a (n1) → x/b (n2) keeps echoing: the
/// published public key changes to the printed one, the connection goes on
/// (every echo intact, ≥ 20 after the rotation), both nodes hold a
/// session younger than the rotation, and n1's dataplane was not
/// restarted.
#[test]
fn rotation_on_a_local_cluster_keeps_an_open_connection() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let c = cluster("wgr", true);
    let topo = c.topology();
    let (a, b) = (
        topo.pod("x", "a").expect("x/a"),
        topo.pod("x", "b").expect("x/b"),
    );
    let b_ip = b.ipv4.expect("b's IPv4");
    // An echo server of the test's in x/b (the pods' own servers answer
    // their name and close).
    let listener = weir_topo::netns::run_in(&b.netns, || TcpListener::bind((b_ip, 7071)))
        .expect("b's netns")
        .expect("bind in x/b");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let mut s = weir_topo::netns::run_in(&a.netns, || {
        // The first SYN starts the handshake (held until the session is up).
        TcpStream::connect_timeout(&SocketAddr::from((b_ip, 7071)), Duration::from_secs(10))
    })
    .expect("a's netns")
    .expect("connect x/a → x/b:7071");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let longest = Arc::new(AtomicU64::new(0));
    let stream = {
        let (stop, echoes, longest) = (stop.clone(), echoes.clone(), longest.clone());
        std::thread::spawn(move || -> Result<(), String> {
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
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what}: timed out; {}",
                c.status()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the stream running", &|| {
        echoes.load(Ordering::Relaxed) >= 10
    });
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into())
        .join(&c.name)
        .join("wireguard");
    let published = || std::fs::read_to_string(state.join("n1.pub")).unwrap_or_default();
    let key_before = published();
    // n1's dataplane process (`<state>/nodes/n1/dataplane.pid`).
    let pid =
        || std::fs::read_to_string(state.join("../nodes/n1/dataplane.pid")).unwrap_or_default();
    let pid_before = pid();
    let rotated_at = Instant::now();
    let out = c.weir(&["wireguard", "rotate", "--node", "n1"]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "rotate: {printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_after = printed
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_ne!(
        key_after,
        key_before.trim(),
        "the rotation printed the old key"
    );
    wait("n1's new key published", &|| {
        published().trim() == key_after
    });
    let at_rotation = echoes.load(Ordering::Relaxed);
    wait("the stream going on after the rotation", &|| {
        stream.is_finished() || echoes.load(Ordering::Relaxed) >= at_rotation + 20
    });
    stop.store(true, Ordering::Relaxed);
    let r = stream.join().expect("stream thread");
    assert_eq!(r, Ok(()), "the connection across the rotation");
    assert!(
        !pid_before.trim().is_empty(),
        "no pid file for n1's dataplane"
    );
    assert_eq!(pid(), pid_before, "n1's dataplane was restarted");
    // Both nodes' peers are up again, with a handshake made since the
    // rotation (the session each holds is younger than it).
    let st = c.status();
    for me in ["n1", "n2"] {
        let p = &weir_tests::node_status(&st, me)["wireguard"][0];
        assert_eq!(p["state"], "up", "{me}: {p}");
        let age = p["handshake_age_ms"].as_u64();
        assert!(
            age.is_some_and(|ms| u128::from(ms) < rotated_at.elapsed().as_millis()),
            "{me}: no new handshake after the rotation: {p}, rotated {:?} ago",
            rotated_at.elapsed()
        );
    }
    // A node of no cluster: a clear error.
    let out = c.weir(&["wireguard", "rotate", "--node", "n9"]);
    assert!(!out.status.success(), "rotate of an unknown node succeeded");
    eprintln!(
        "rotation: {} echoes on one connection, {at_rotation} before the new key was published; longest echo {} ms",
        echoes.load(Ordering::Relaxed),
        longest.load(Ordering::Relaxed)
    );
}
