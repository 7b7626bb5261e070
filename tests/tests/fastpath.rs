//! The fast path on one node, with real traffic between real network
//! namespaces through the `weir` binary. Each test proves the traffic crossed
//! weir's workers (counters moved) and that without the dataplane it fails.
//! Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use weir_tests::{all_connected, pod_manifest, simple_cluster, TestCluster};

fn ping(c: &TestCluster, from: &str, to_ip: &str, extra: &[&str]) -> std::process::Output {
    let mut argv = vec!["ping", "-c", "3", "-i", "0.2", "-W", "2"];
    argv.extend_from_slice(extra);
    argv.push(to_ip);
    c.pod_exec("x", from, &argv)
}

#[test]
fn tcp_udp_icmp_ipv6_between_three_pods_cross_the_workers_and_fail_closed() {
    let c = TestCluster::up("fp", &simple_cluster("x", &["a", "b", "c"]));
    let topo = c.topology();
    let b = topo.pod("x", "b").expect("pod b");
    let b4 = b.ipv4.expect("b has IPv4").to_string();
    let b6 = b.ipv6.expect("b has IPv6").to_string();
    let rx0 = c.counter("rx_packets");
    let tx0 = c.counter("tx_packets");

    let m = c.probe(80, "TCP", &[]);
    assert!(all_connected(&m), "TCP 80: {m}");
    let m = c.probe(81, "UDP", &[]);
    assert!(all_connected(&m), "UDP 81: {m}");
    let m = c.probe(80, "TCP", &["--family", "ipv6"]);
    assert!(all_connected(&m), "TCP 80 over IPv6: {m}");
    let m = c.probe(81, "UDP", &["--family", "ipv6"]);
    assert!(all_connected(&m), "UDP 81 over IPv6: {m}");
    let out = ping(&c, "a", &b4, &[]);
    assert!(
        out.status.success(),
        "ping a→b: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = ping(&c, "a", &b6, &[]);
    assert!(
        out.status.success(),
        "ping -6 a→b: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // 6 cross-pod pairs × 4 probe kinds × ≥2 frames each, plus 6 echo frames
    // each way: the workers must have seen at least that much.
    let rx = c.counter("rx_packets") - rx0;
    let tx = c.counter("tx_packets") - tx0;
    assert!(rx >= 6 * 4 * 2 + 12, "workers received only {rx} frames");
    assert!(tx >= 6 * 4 * 2 + 12, "workers transmitted only {tx} frames");

    // Fail closed: with the dataplane stopped, the XDP program stays and drops.
    c.assert_fail_closed("node-1", "x/a", "x/b");
    let out = ping(&c, "a", &b4, &["-c", "1"]);
    assert!(
        !out.status.success(),
        "ping passed with the dataplane stopped"
    );

    // And it comes back.
    let out = c.weir(&["dataplane", "start", "--node", "node-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = c.probe(80, "TCP", &["--from", "x", "--to", "x"]);
    assert!(all_connected(&m), "after restart: {m}");
}

#[test]
fn multi_megabyte_tcp_transfer_arrives_intact() {
    let c = TestCluster::up("mb", &simple_cluster("x", &["a", "b"]));
    let topo = c.topology();
    let a = topo.pod("x", "a").expect("a").clone();
    let b = topo.pod("x", "b").expect("b").clone();
    let dst = SocketAddr::new(b.ipv4.expect("ipv4").into(), 5001);
    const LEN: usize = 16 << 20;
    let data: Vec<u8> = (0..LEN)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bytes0 = c.counter("rx_bytes");

    let listener = weir_topo::netns::run_in(&b.netns, move || TcpListener::bind(dst))
        .expect("enter b")
        .expect("bind in b");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).expect("read");
        got
    });
    let sent = data.clone();
    weir_topo::netns::run_in(&a.netns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(&sent).expect("write");
    })
    .expect("enter a");
    let got = server.join().expect("server");
    assert_eq!(got.len(), LEN, "received {} of {LEN} bytes", got.len());
    assert!(got == data, "bytes differ");
    let moved = c.counter("rx_bytes") - bytes0;
    assert!(
        moved >= LEN as u64,
        "workers saw {moved} bytes of a {LEN}-byte transfer"
    );
}

#[test]
fn deleted_and_recreated_pod_is_served_again() {
    let c = TestCluster::up("rc", &simple_cluster("x", &["a", "b", "c"]));
    let pod_c = c.file("c.yaml", &pod_manifest("x", "c"));
    let out = c.weir(&["delete", "-f", &pod_c]);
    assert!(
        out.status.success(),
        "delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pods = c.weir_json(&["get", "pods", "-n", "x", "-o", "json"]);
    assert_eq!(pods.as_array().map(Vec::len), Some(2), "{pods}");
    let m = c.probe(80, "TCP", &["--from", "x", "--to", "x"]);
    assert!(all_connected(&m), "{m}");

    let out = c.weir(&["apply", "-f", &pod_c]);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = c.probe(80, "TCP", &["--from", "x", "--to", "x/c"]);
    assert!(all_connected(&m), "recreated pod not served: {m}");
    let m = c.probe(81, "UDP", &["--from", "x/c", "--to", "x"]);
    assert!(all_connected(&m), "recreated pod cannot send: {m}");
}

#[test]
fn ttl_expiring_in_weir_gets_icmp_time_exceeded() {
    let c = TestCluster::up("tt", &simple_cluster("x", &["a", "b"]));
    let topo = c.topology();
    let b = topo.pod("x", "b").expect("b");
    let out = ping(
        &c,
        "a",
        &b.ipv4.expect("v4").to_string(),
        &["-c", "1", "-t", "1"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Time to live exceeded"), "ping -t 1: {text}");
    let out = ping(
        &c,
        "a",
        &b.ipv6.expect("v6").to_string(),
        &["-c", "1", "-t", "1"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Time exceeded") || text.contains("exceeded"),
        "ping -6 -t 1: {text}"
    );
    // Workers publish their ICMP error count with their histograms (every 250 ms).
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        c.counter("icmp_errors_sent") >= 2,
        "workers sent no ICMP errors"
    );
}

/// Raw frames written from inside a pod with an AF_PACKET socket (Python's
/// standard library), addressed to the pod's gateway MAC.
fn send_raw(c: &TestCluster, pod: &str, frames: &[Vec<u8>]) {
    let hex: Vec<String> = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0',0))\n\
         for h in {hex:?}:\n    s.send(bytes.fromhex(h))\n"
    );
    let out = c.pod_exec("x", pod, &["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "raw send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn malformed_and_spoofed_frames_are_counted_drops() {
    let c = TestCluster::up("bad", &simple_cluster("x", &["a", "b"]));
    let topo = c.topology();
    let a = topo.pod("x", "a").expect("a");
    let b = topo.pod("x", "b").expect("b");
    let eth = |ty: [u8; 2]| {
        let mut f = Vec::new();
        f.extend_from_slice(&a.host_mac);
        f.extend_from_slice(&a.pod_mac);
        f.extend_from_slice(&ty);
        f
    };
    let ipv4 = |src: [u8; 4], proto: u8, ihl_byte: u8, total: u16, payload: &[u8]| {
        let mut f = eth([0x08, 0x00]);
        f.extend_from_slice(&[
            ihl_byte,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            proto,
            0,
            0,
        ]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&b.ipv4.expect("v4").octets());
        f.extend_from_slice(payload);
        while f.len() < 60 {
            f.push(0);
        }
        f
    };
    let a4 = a.ipv4.expect("v4").octets();
    let frames = vec![
        // IHL 3 (< 5): malformed IPv4.
        ipv4(a4, 17, 0x43, 28, &[0; 8]),
        // Total length far beyond the frame: malformed IPv4.
        ipv4(a4, 17, 0x45, 1400, &[0; 8]),
        // TCP whose header is cut after 4 bytes: truncated L4.
        ipv4(a4, 6, 0x45, 24, &[0x12, 0x34, 0x00, 0x50]),
        // Someone else's source address: spoofed.
        ipv4(
            [10, 99, 99, 99],
            17,
            0x45,
            28,
            &[0x12, 0x34, 0x00, 0x50, 0, 8, 0, 0],
        ),
        // An EtherType weir does not forward.
        {
            let mut f = eth([0x88, 0xb5]);
            f.resize(60, 0);
            f
        },
    ];
    let before = (
        c.drops("ipv4-malformed"),
        c.drops("l4-truncated"),
        c.drops("source-spoofed"),
        c.drops("unsupported-ethertype"),
    );
    send_raw(&c, "a", &frames);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.drops("ipv4-malformed") >= before.0 + 2,
        "ipv4-malformed not counted"
    );
    assert!(
        c.drops("l4-truncated") > before.1,
        "l4-truncated not counted"
    );
    assert!(
        c.drops("source-spoofed") > before.2,
        "source-spoofed not counted"
    );
    assert!(
        c.drops("unsupported-ethertype") > before.3,
        "unsupported-ethertype not counted"
    );
    // And the dataplane still forwards.
    let m = c.probe(80, "TCP", &["--from", "x/a", "--to", "x/b"]);
    assert!(all_connected(&m), "{m}");
}

/// The dataplane is a process of its own: when the supervisor (agent, pod
/// servers) dies, forwarding goes on; `weir down` still removes everything,
/// the orphaned dataplane included.
#[test]
fn forwarding_survives_the_supervisor_and_down_cleans_up() {
    let c = TestCluster::up("sup", &simple_cluster("x", &["a", "b"]));
    let topo = c.topology();
    let b4 = topo.pod("x", "b").expect("b").ipv4.expect("v4").to_string();
    let pgrep = |pat: &str| {
        let out = std::process::Command::new("pgrep")
            .args(["-f", pat])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let daemon = pgrep(&format!("weir --cluster {} daemon", c.name));
    assert_eq!(daemon.len(), 1, "supervisor pid: {daemon:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &daemon[0]])
        .status()
        .expect("kill");
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(300));
    let out = ping(&c, "a", &b4, &[]);
    assert!(
        out.status.success(),
        "forwarding stopped with the supervisor: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = c.weir(&["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(200));
    let left = pgrep(&format!("weir --cluster {} dataplane", c.name));
    assert!(left.is_empty(), "dataplane left running: {left:?}");
}
