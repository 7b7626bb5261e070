//! The overlay between weir nodes, with real traffic: pods on two nodes
//! joined by the underlay bridge (`weir-<cluster>-underlay`, `br0`), VXLAN
//! and Geneve encapsulated and decapsulated by weir's workers. Each test
//! proves the frames crossed the underlay through weir (XDP and worker
//! counters), that the wire format is what independent tools expect (tshark
//! dissects it, Scapy-built frames are accepted, malformed ones are counted
//! drops) and that policy is judged across nodes. Needs root, tshark and
//! Scapy (scripts/setup.sh installs them).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{
    all_connected, netpol, none_connected, two_node_cluster, xyz_cluster_two_nodes, Peer,
    Reachability, TestCluster,
};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(c: &TestCluster, args: &[&str]) {
    let out = c.weir(args);
    assert!(out.status.success(), "weir {args:?}: {}", text(&out));
}

/// x/a on n1; x/b and x/c on n2.
fn spread(tag: &str, encap: &str) -> TestCluster {
    match encap {
        "vxlan+wireguard" => spread_with(tag, ENCRYPTED),
        _ => spread_with(tag, &["--encap", encap]),
    }
}

/// `spread` with the given `weir up` arguments (e.g. `--encrypt wireguard`).
fn spread_with(tag: &str, up: &[&str]) -> TestCluster {
    TestCluster::up_with(
        tag,
        &two_node_cluster("x", &[("a", "n1"), ("b", "n2"), ("c", "n2")], false),
        up,
    )
}

/// The same overlay encrypted between the nodes (docs/encryption.md).
const ENCRYPTED: &[&str] = &["--encap", "vxlan", "--encrypt", "wireguard"];

fn inner_mtu(encap: &str) -> u32 {
    match encap {
        "vxlan" => 1450,
        // WireGuard's 60 bytes on top of VXLAN (docs/encryption.md).
        "vxlan+wireguard" => 1390,
        _ => 1442,
    }
}

// ---------------------------------------------------------------------------
// 1. Cross-node traffic, counters, fail closed.
// ---------------------------------------------------------------------------

fn cross_node_traffic(tag: &str, encap: &str) {
    let c = spread(tag, encap);
    cross_node_traffic_on(c, encap);
}

/// `encap` names the case in messages; `up` are `weir up`'s arguments.
fn cross_node_traffic_on(c: TestCluster, encap: &str) {
    let ul0 = |c: &TestCluster| {
        (
            c.port_xdp("n1", "ul0", "redirected"),
            c.port_xdp("n2", "ul0", "redirected"),
        )
    };
    let (u1, u2) = ul0(&c);
    let rx1 = c.node_counter("n1", "rx_packets");
    let rx2 = c.node_counter("n2", "rx_packets");

    for (port, proto, family) in [
        ("80", "TCP", "ipv4"),
        ("81", "UDP", "ipv4"),
        ("80", "TCP", "ipv6"),
        ("81", "UDP", "ipv6"),
    ] {
        let m = c.probe(port.parse().unwrap(), proto, &["--family", family]);
        assert!(all_connected(&m), "{encap}: {proto} {port} {family}: {m}");
    }
    // Cross-node pairs: a↔b, a↔c = 4 directed pairs × 4 probe kinds, each at
    // least one frame each way through each underlay.
    let (v1, v2) = ul0(&c);
    let cross = 4 * 4;
    assert!(
        v1 - u1 >= cross && v2 - u2 >= cross,
        "{encap}: ul0 redirected moved only n1 +{} n2 +{} (want ≥ {cross})",
        v1 - u1,
        v2 - u2
    );
    let d1 = c.node_counter("n1", "rx_packets") - rx1;
    let d2 = c.node_counter("n2", "rx_packets") - rx2;
    assert!(
        d1 >= 2 * cross && d2 >= 2 * cross,
        "{encap}: workers rx n1 +{d1} n2 +{d2}"
    );
    // WireGuard's handshake messages end in the dataplane, counted
    // `wireguard-control` (consumed), and a frame held while the handshake
    // runs is counted `wireguard-queued` (sent once it completes): neither
    // is lost. Nothing else may drop.
    let control = ["wireguard-control", "wireguard-queued"]
        .iter()
        .map(|r| c.node_drops("n1", r) + c.node_drops("n2", r))
        .sum::<u64>();
    assert_eq!(
        c.node_drops_total("n1") + c.node_drops_total("n2") - control,
        0,
        "{encap}: drops on a clean run: {}",
        c.status()
    );

    // Fail closed: n2's dataplane stopped → nothing crosses, either way.
    ok(&c, &["dataplane", "stop", "--node", "n2"]);
    let quick = ["--timeout-ms", "300", "--attempts", "1"];
    for (from, to) in [("x/a", "x/b"), ("x/b", "x/a")] {
        let mut args = vec!["--from", from, "--to", to];
        args.extend_from_slice(&quick);
        let m = c.probe(80, "TCP", &args);
        assert!(
            none_connected(&m),
            "{encap}: {from}→{to} with n2 stopped: {m}"
        );
        let m = c.probe(81, "UDP", &args);
        assert!(
            none_connected(&m),
            "{encap}: {from}→{to} UDP with n2 stopped: {m}"
        );
    }
    ok(&c, &["dataplane", "start", "--node", "n2"]);
    let m = c.probe(80, "TCP", &[]);
    assert!(all_connected(&m), "{encap}: after restart: {m}");
    let m = c.probe(81, "UDP", &["--family", "ipv6"]);
    assert!(all_connected(&m), "{encap}: after restart (UDP/IPv6): {m}");
}

#[test]
fn cross_node_tcp_udp_ipv6_vxlan_and_fail_closed() {
    cross_node_traffic("ovx", "vxlan");
}

/// Every probe kind across nodes with WireGuard between them, and fail
/// closed with one node's dataplane stopped (issue 16: "every probe and
/// policy test passes encrypted").
#[test]
fn cross_node_tcp_udp_ipv6_encrypted_and_fail_closed() {
    cross_node_traffic("wgx", "vxlan+wireguard");
}

#[test]
fn cross_node_tcp_udp_ipv6_geneve_and_fail_closed() {
    cross_node_traffic("ovg", "geneve");
}

// ---------------------------------------------------------------------------
// 2. Large TCP transfer across nodes; 3. PMTUD.
// ---------------------------------------------------------------------------

/// Sends `len` bytes from pod `from` to `to`:`port` over IPv4 and returns
/// whether they arrived byte-exact (with a description otherwise).
fn transfer(c: &TestCluster, from: &str, to: &str, port: u16, len: usize) -> Result<(), String> {
    let topo = c.topology();
    let a = topo.pod("x", from).expect("from").clone();
    let b = topo.pod("x", to).expect("to").clone();
    let dst = SocketAddr::new(b.ipv4.expect("ipv4").into(), port);
    let data: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let listener = weir_topo::netns::run_in(&b.netns, move || TcpListener::bind(dst))
        .expect("enter to")
        .expect("bind");
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut got = Vec::with_capacity(len);
        s.read_to_end(&mut got)?;
        Ok(got)
    });
    let sent = data.clone();
    let client = weir_topo::netns::run_in(&a.netns, move || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(&sent)?;
        s.shutdown(std::net::Shutdown::Write)
    })
    .expect("enter from");
    if let Err(e) = client {
        // Unblock the server's accept before joining it.
        let _ = weir_topo::netns::run_in(&a.netns, move || {
            TcpStream::connect_timeout(&dst, Duration::from_millis(200))
        });
        return Err(format!("client: {e}"));
    }
    let got = server
        .join()
        .expect("server thread")
        .map_err(|e| format!("server: {e}"))?;
    if got.len() != len {
        return Err(format!("received {} of {len} bytes", got.len()));
    }
    if got != data {
        return Err("bytes differ".into());
    }
    Ok(())
}

fn large_transfer(tag: &str, encap: &str) {
    let c = spread(tag, encap);
    const LEN: usize = 16 << 20;
    let bytes0 = c.port_xdp("n2", "ul0", "redirected");
    let t0 = Instant::now();
    transfer(&c, "a", "b", 5001, LEN).unwrap_or_else(|e| panic!("{encap}: a→b: {e}"));
    eprintln!("{encap}: 16 MiB n1→n2 in {} ms", t0.elapsed().as_millis());
    // At least one frame per inner-MTU-sized segment came in over n2's ul0.
    let frames = c.port_xdp("n2", "ul0", "redirected") - bytes0;
    let min = (LEN / inner_mtu(encap) as usize) as u64;
    assert!(
        frames >= min,
        "{encap}: n2 ul0 redirected only {frames} frames (≥ {min})"
    );
    // And back the other way.
    transfer(&c, "c", "a", 5002, LEN).unwrap_or_else(|e| panic!("{encap}: c→a: {e}"));
}

#[test]
fn large_tcp_transfer_across_nodes_vxlan() {
    large_transfer("lgx", "vxlan");
}

#[test]
fn large_tcp_transfer_across_nodes_geneve() {
    large_transfer("lgg", "geneve");
}

/// Raises a pod's MTU to 1500 on both ends of its veth: the pod's `eth0`
/// by hand (as a misconfigured pod would be) and the node side too — the
/// kernel's veth silently drops frames larger than the receiving end's MTU
/// (`is_skb_forwardable`), before XDP and weir could answer them.
fn raise_mtu(c: &TestCluster, pod: &str) {
    let topo = c.topology();
    let p = topo.pod("x", pod).expect("pod");
    let node = topo.node(&p.node).expect("node");
    for (netns, ifname) in [(&p.netns, "eth0"), (&node.netns, p.host_ifname.as_str())] {
        let out = Command::new("ip")
            .args([
                "netns", "exec", netns, "ip", "link", "set", ifname, "mtu", "1500",
            ])
            .output()
            .expect("ip link");
        assert!(out.status.success(), "mtu {netns} {ifname}: {}", text(&out));
    }
}

fn pmtud(tag: &str, encap: &str) {
    let c = spread(tag, encap);
    let topo = c.topology();
    let b = topo.pod("x", "b").expect("b");
    let b4 = b.ipv4.expect("v4").to_string();
    let b6 = b.ipv6.expect("v6").to_string();
    let mtu = inner_mtu(encap);
    raise_mtu(&c, "a");
    raise_mtu(&c, "b");
    let icmp0 = c.node_counter("n1", "icmp_errors_sent");

    // IPv4: 1460 + 28 = 1488 > inner MTU, DF set.
    let out = c.pod_exec(
        "x",
        "a",
        &[
            "ping", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1460", &b4,
        ],
    );
    let t = text(&out);
    assert!(
        t.contains("Frag needed") && t.contains(&format!("mtu = {mtu}")),
        "{encap}: ping -M do -s 1460: {t}"
    );
    let out = c.pod_exec("x", "a", &["ip", "route", "get", &b4]);
    let t = text(&out);
    assert!(
        t.contains(&format!("mtu {mtu}")),
        "{encap}: ip route get: {t}"
    );

    // IPv6: 1420 + 48 = 1468 > inner MTU (and ≤ the pod's 1500).
    let out = c.pod_exec(
        "x",
        "a",
        &[
            "ping", "-6", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1420", &b6,
        ],
    );
    let t = text(&out);
    assert!(
        t.contains("Packet too big") && t.contains(&format!("mtu={mtu}")),
        "{encap}: ping -6 -M do -s 1420: {t}"
    );
    let out = c.pod_exec("x", "a", &["ip", "-6", "route", "get", &b6]);
    let t = text(&out);
    assert!(
        t.contains(&format!("mtu {mtu}")),
        "{encap}: ip -6 route get: {t}"
    );

    // TCP from the 1500-MTU pod (b advertises MSS 1460 too): the first
    // full-sized segments are answered with Frag needed and the transfer
    // completes. Forget the MTU learned by ping first.
    let out = c.pod_exec("x", "a", &["ip", "route", "flush", "cache"]);
    assert!(out.status.success(), "flush cache: {}", text(&out));
    transfer(&c, "a", "b", 5003, 4 << 20).unwrap_or_else(|e| panic!("{encap}: TCP a→b: {e}"));
    let out = c.pod_exec("x", "a", &["ip", "route", "get", &b4]);
    let t = text(&out);
    assert!(
        t.contains(&format!("mtu {mtu}")),
        "{encap}: TCP did not learn the MTU: {t}"
    );
    std::thread::sleep(Duration::from_millis(600));
    let sent = c.node_counter("n1", "icmp_errors_sent") - icmp0;
    assert!(sent >= 3, "{encap}: n1 sent only {sent} ICMP errors");
}

#[test]
fn large_tcp_transfer_across_nodes_encrypted() {
    large_transfer("ltwg", "vxlan+wireguard");
}

/// PMTUD with WireGuard: the pass answers with the encrypted path's MTU.
#[test]
fn pmtud_across_nodes_encrypted() {
    pmtud("pmwg", "vxlan+wireguard");
}

#[test]
fn pmtud_across_nodes_vxlan() {
    pmtud("pmx", "vxlan");
}

#[test]
fn pmtud_across_nodes_geneve() {
    pmtud("pmg", "geneve");
}

// ---------------------------------------------------------------------------
// 5. tshark dissects weir's Geneve and VXLAN-GBP.
// ---------------------------------------------------------------------------

/// tcpdump on the underlay bridge into `file`, every packet written as it
/// arrives (`--immediate-mode`: no TPACKET_V3 block timeout; `-U`).
fn capture(c: &TestCluster, file: &Path, filter: &str) -> Child {
    let _ = std::fs::remove_file(file);
    let ns = c.underlay_netns();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "tcpdump",
            "-U",
            "--immediate-mode",
            "-n",
            "-i",
            "br0",
            "-w",
        ])
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
    child
}

fn stop_capture(mut child: Child) {
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
}

fn tshark(file: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("tshark (scripts/setup.sh installs it)");
    assert!(out.status.success(), "tshark {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every frame dissects cleanly: no malformed frames, no expert errors.
fn assert_clean_dissection(file: &Path, what: &str) {
    let bad = tshark(
        file,
        &["-Y", "_ws.malformed || _ws.expert.severity >= error"],
    );
    assert!(bad.trim().is_empty(), "{what}: tshark finds errors:\n{bad}");
}

fn parse_num(s: &str) -> u64 {
    let s = s.trim();
    s.strip_prefix("0x")
        .map(|h| u64::from_str_radix(h, 16))
        .unwrap_or_else(|| s.parse())
        .unwrap_or_else(|e| panic!("not a number: {s:?}: {e}"))
}

#[test]
fn tshark_decodes_weirs_geneve_identity_option() {
    let c = spread("tsg", "geneve");
    let file = c.dir.join("geneve.pcap");
    let cap = capture(&c, &file, "udp port 6081");
    let m = c.probe(80, "TCP", &[]);
    assert!(all_connected(&m), "{m}");
    let m = c.probe(81, "UDP", &["--family", "ipv6"]);
    assert!(all_connected(&m), "{m}");
    stop_capture(cap);

    let rows = tshark(
        &file,
        &[
            "-T",
            "fields",
            "-e",
            "geneve.vni",
            "-e",
            "geneve.proto_type",
            "-e",
            "geneve.option.class",
            "-e",
            "geneve.option.type",
            "-e",
            "geneve.option.length",
            "-E",
            "occurrence=l",
        ],
    );
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    assert!(
        rows.len() >= 16,
        "only {} Geneve frames captured",
        rows.len()
    );
    for r in &rows {
        assert_eq!(r.len(), 5, "row {r:?}");
        assert_eq!(parse_num(r[0]), 1, "VNI: {r:?}");
        assert_eq!(parse_num(r[1]), 0x6558, "protocol: {r:?}");
        assert_eq!(parse_num(r[2]), 0xfff1, "option class: {r:?}");
        assert_eq!(parse_num(r[3]), 0x01, "option type: {r:?}");
        assert_eq!(parse_num(r[4]), 8, "option length (bytes): {r:?}");
    }
    assert_clean_dissection(&file, "geneve");
}

#[test]
fn tshark_decodes_weirs_vxlan_gbp() {
    let c = spread("tsv", "vxlan");
    let file = c.dir.join("vxlan.pcap");
    let cap = capture(&c, &file, "udp port 4789");
    let m = c.probe(80, "TCP", &[]);
    assert!(all_connected(&m), "{m}");
    stop_capture(cap);

    let rows = tshark(
        &file,
        &[
            "-T",
            "fields",
            "-e",
            "vxlan.flag_g",
            "-e",
            "vxlan.gbp",
            "-e",
            "vxlan.vni",
            "-e",
            "ip.src",
            "-E",
            "occurrence=l",
        ],
    );
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    assert!(rows.len() >= 8, "only {} VXLAN frames captured", rows.len());
    // inner source → group policy IDs seen
    let mut gbp: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r.len(), 4, "row {r:?}");
        assert!(
            matches!(r[0], "1" | "True" | "true"),
            "G flag not set: {r:?}"
        );
        assert_eq!(parse_num(r[2]), 1, "VNI: {r:?}");
        gbp.entry(r[3].to_string())
            .or_default()
            .push(parse_num(r[1]));
    }
    for (src, ids) in &gbp {
        assert!(
            ids.iter().all(|&i| i != 0 && i == ids[0]),
            "inner source {src}: group policy IDs {ids:?} (want one nonzero identity)"
        );
    }
    assert_clean_dissection(&file, "vxlan");
}

// ---------------------------------------------------------------------------
// 6. Frames built by Scapy: accepted when well-formed, counted drops when not.
// ---------------------------------------------------------------------------

const SCAPY_PRELUDE: &str = r#"
import struct, sys
from scapy.all import Ether, IP, UDP, ICMP, Raw, sendp
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.vxlan import VXLAN
A = sys.argv[1:]
N1_UL, N1_MAC, N2_UL, N1_VTEP, N2_VTEP, SRC, DST = A
def inner(ident, src=None, dst=None):
    return Ether(dst=N1_VTEP, src=N2_VTEP)/IP(src=src or SRC, dst=dst or DST)/ICMP(id=ident, seq=1)/Raw(b"scapy-weir")
def outer(dport, src=N2_UL):
    return Ether(dst=N1_MAC, src="02:5c:00:00:00:01")/IP(src=src, dst=N1_UL, flags="DF")/UDP(sport=50123, dport=dport)
def send(frames):
    sendp(frames, iface="br0", verbose=False)
"#;

fn scapy(c: &TestCluster, body: &str) {
    let topo = c.topology();
    let n1 = topo.node("n1").expect("n1");
    let n2 = topo.node("n2").expect("n2");
    let (u1, u2) = (
        n1.underlay.as_ref().expect("n1 underlay"),
        n2.underlay.as_ref().expect("n2 underlay"),
    );
    let a = topo.pod("x", "a").expect("a");
    let b = topo.pod("x", "b").expect("b");
    let mac = |m: &[u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let script = format!("{SCAPY_PRELUDE}\n{body}\n");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.underlay_netns(),
            "python3",
            "-c",
            &script,
        ])
        .arg(u1.ipv4.to_string())
        .arg(mac(&u1.mac))
        .arg(u2.ipv4.to_string())
        .arg(mac(&n1.vtep_mac))
        .arg(mac(&n2.vtep_mac))
        .arg(b.ipv4.expect("b v4").to_string())
        .arg(a.ipv4.expect("a v4").to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "scapy (scripts/setup.sh installs it): {}",
        text(&out)
    );
}

fn echos_in(c: &TestCluster, pod: &str) -> u64 {
    let out = c.pod_exec("x", pod, &["nstat", "-az", "IcmpInEchos"]);
    let t = text(&out);
    t.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("IcmpInEchos")).then(|| w.next().and_then(|n| n.parse().ok()))?
        })
        .unwrap_or_else(|| panic!("nstat: {t}"))
}

struct Bad {
    what: &'static str,
    reason: &'static str,
    python: &'static str,
}

fn scapy_frames(tag: &str, encap: &str, good: &str, bad: &[Bad]) {
    // Only n1 and its pod a matter; b on n2 is the claimed inner source.
    let c = TestCluster::up_with(
        tag,
        &two_node_cluster("x", &[("a", "n1"), ("b", "n2")], false),
        &["--encap", encap],
    );
    // Warm up the underlay's ARP/bridge state.
    let m = c.probe(80, "TCP", &[]);
    assert!(all_connected(&m), "{m}");
    std::thread::sleep(Duration::from_millis(300));

    let e0 = echos_in(&c, "a");
    let drops0 = c.node_drops_total("n1");
    let rx0 = c.port_xdp("n1", "ul0", "redirected");
    scapy(&c, good);
    std::thread::sleep(Duration::from_millis(600));
    let e1 = echos_in(&c, "a");
    assert!(
        e1 >= e0 + 2,
        "{encap}: pod a received {} of 2 Scapy-built echo requests; n1: {}",
        e1 - e0,
        weir_tests::node_status(&c.status(), "n1")["workers"]
    );
    assert!(c.port_xdp("n1", "ul0", "redirected") >= rx0 + 2);
    assert_eq!(
        c.node_drops_total("n1"),
        drops0,
        "{encap}: well-formed frames dropped: {}",
        weir_tests::node_status(&c.status(), "n1")["workers"]
    );

    let before: Vec<u64> = bad.iter().map(|b| c.node_drops("n1", b.reason)).collect();
    let body: String = bad.iter().map(|b| format!("{}\n", b.python)).collect();
    scapy(&c, &body);
    std::thread::sleep(Duration::from_millis(600));
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for b in bad {
        *want.entry(b.reason).or_default() += 1;
    }
    for (reason, n) in &want {
        let i = bad.iter().position(|b| b.reason == *reason).unwrap();
        let got = c.node_drops("n1", reason) - before[i];
        let whats: Vec<_> = bad
            .iter()
            .filter(|b| b.reason == *reason)
            .map(|b| b.what)
            .collect();
        assert!(
            got >= *n,
            "{encap}: {reason}: counted {got} of {n} ({whats:?}); n1 workers: {}",
            weir_tests::node_status(&c.status(), "n1")["workers"]
        );
    }
    assert_eq!(
        echos_in(&c, "a"),
        e1,
        "{encap}: a malformed frame reached pod a"
    );
}

#[test]
fn scapy_geneve_frames_accepted_and_malformed_ones_dropped() {
    let good = r#"
send([
  outer(6081)/GENEVE(vni=1, proto=0x6558)/inner(101),
  outer(6081)/GENEVE(vni=1, proto=0x6558, options=[GeneveOptions(classid=0xfff1, type=0x01, length=1, data=struct.pack("!I", 4242))])/inner(102),
])"#;
    let bad = [
        Bad {
            what: "version 1",
            reason: "tunnel-malformed",
            python: "send(outer(6081)/GENEVE(version=1, vni=1, proto=0x6558)/inner(201))",
        },
        Bad {
            what: "options length beyond the packet",
            reason: "tunnel-malformed",
            python: "send(outer(6081)/GENEVE(optionlen=63, vni=1, proto=0x6558)/Raw(bytes(inner(202))[:20]))",
        },
        Bad {
            what: "option longer than the options area",
            reason: "tunnel-malformed",
            python: "send(outer(6081)/GENEVE(optionlen=2, vni=1, proto=0x6558)/Raw(struct.pack('!HBB', 0xfff1, 0x01, 5) + b'\\0\\0\\0\\x01')/inner(203))",
        },
        Bad {
            what: "unknown critical option",
            reason: "tunnel-malformed",
            python: "send(outer(6081)/GENEVE(vni=1, proto=0x6558, options=[GeneveOptions(classid=0x0102, type=0x80, length=1, data=b'\\0\\0\\0\\x07')])/inner(204))",
        },
        Bad {
            what: "protocol not Ethernet",
            reason: "tunnel-malformed",
            python: "send(outer(6081)/GENEVE(vni=1, proto=0x0800)/Raw(bytes(inner(205))[14:]))",
        },
        Bad {
            what: "wrong VNI",
            reason: "tunnel-bad-vni",
            python: "send(outer(6081)/GENEVE(vni=2, proto=0x6558)/inner(206))",
        },
        Bad {
            what: "unknown outer source",
            reason: "tunnel-unknown-peer",
            python: "send(outer(6081, src='172.30.0.99')/GENEVE(vni=1, proto=0x6558)/inner(207))",
        },
        Bad {
            what: "OAM frame",
            reason: "tunnel-malformed",
            python: "send(outer(6081)/GENEVE(oam=1, vni=1, proto=0x6558)/inner(208))",
        },
        Bad {
            what: "outer UDP length beyond the packet",
            reason: "tunnel-malformed",
            python: "f = outer(6081)/GENEVE(vni=1, proto=0x6558)/inner(209); f[UDP].len = len(f[UDP]) + 40; send(f)",
        },
        Bad {
            what: "inner source outside the peer's pod CIDRs",
            reason: "source-spoofed",
            python: "send(outer(6081)/GENEVE(vni=1, proto=0x6558)/inner(210, src='10.244.0.77'))",
        },
        Bad {
            what: "inner destination not local (transit)",
            reason: "no-route",
            python: "send(outer(6081)/GENEVE(vni=1, proto=0x6558)/inner(211, dst=SRC))",
        },
    ];
    scapy_frames("scg", "geneve", good, &bad);
}

#[test]
fn scapy_vxlan_frames_accepted_and_malformed_ones_dropped() {
    let good = r#"
send([
  outer(4789)/VXLAN(flags=0x08, vni=1)/inner(101),
  outer(4789)/VXLAN(flags=0x88, gpid=4242, vni=1)/inner(102),
])"#;
    let bad = [
        Bad {
            what: "I flag clear",
            reason: "tunnel-malformed",
            python: "send(outer(4789)/VXLAN(flags=0x00, vni=1)/inner(201))",
        },
        Bad {
            what: "VXLAN header cut short",
            reason: "tunnel-malformed",
            python: "send(outer(4789)/Raw(b'\\x08\\0\\0\\0'))",
        },
        Bad {
            what: "wrong VNI",
            reason: "tunnel-bad-vni",
            python: "send(outer(4789)/VXLAN(flags=0x08, vni=2)/inner(203))",
        },
        Bad {
            what: "unknown outer source",
            reason: "tunnel-unknown-peer",
            python: "send(outer(4789, src='172.30.0.99')/VXLAN(flags=0x08, vni=1)/inner(204))",
        },
        Bad {
            what: "inner source outside the peer's pod CIDRs",
            reason: "source-spoofed",
            python: "send(outer(4789)/VXLAN(flags=0x08, vni=1)/inner(205, src='10.244.0.77'))",
        },
    ];
    scapy_frames("scv", "vxlan", good, &bad);
}

// ---------------------------------------------------------------------------
// 7. Policy across nodes: ingress judged on the destination node.
// ---------------------------------------------------------------------------

#[test]
fn policy_across_nodes_matches_reachability_explain_and_flows() {
    policy_across_nodes("pol", &["--encap", "geneve"]);
}

/// The same policy cases with WireGuard between the nodes: the identity
/// travels inside the encrypted overlay datagram.
#[test]
fn policy_across_nodes_encrypted() {
    policy_across_nodes("polwg", ENCRYPTED);
}

fn policy_across_nodes(tag: &str, up: &[&str]) {
    // a on n1; b and c on n2 (in every namespace).
    let c = TestCluster::up_with(
        tag,
        &xyz_cluster_two_nodes(|p| if p == "a" { "n1" } else { "n2" }),
        up,
    );
    let mut failures = Vec::new();
    let mut check =
        |c: &TestCluster, case: &str, port: u16, proto: &str, family: &str, want: &Reachability| {
            if let Err(e) = c.check_reachability_family(case, port, proto, family, want) {
                eprintln!("FAIL {e}");
                failures.push(e);
            }
        };
    let t0 = Instant::now();

    // Deny all ingress in x.
    let deny = netpol(
        "x",
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    c.apply("p.yaml", &deny);
    let mut want = Reachability::all();
    want.expect_peer(Peer::ANY, Peer::ns("x"), false);
    check(&c, "deny all ingress in x", 80, "TCP", "ipv4", &want);
    // The drop of y/a (n1) → x/b (n2) is recorded on n2 by its ingress rule.
    let flows = c.weir_json(&["flows", "-o", "json"]);
    let topo = c.topology();
    let ya = topo
        .pod("y", "a")
        .expect("y/a")
        .ipv4
        .expect("v4")
        .to_string();
    let drop = flows
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["kind"] == "drop" && r["src_addr"] == ya.as_str() && r["dst"] == "x/b");
    let drop = drop.unwrap_or_else(|| panic!("no drop y/a → x/b in flows: {flows}"));
    assert_eq!(drop["node"], "n2", "{drop}");
    assert_eq!(drop["reason"], "policy-denied", "{drop}");
    assert!(
        drop["ingress_rule"]
            .as_str()
            .is_some_and(|r| r != "-" && !r.is_empty()),
        "no deciding ingress rule: {drop}"
    );
    // ... and n1 let it out (egress only is judged at the source).
    assert!(
        flows
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["kind"] == "new"
                && r["node"] == "n1"
                && r["src"] == "y/a"
                && r["dst_addr"] == drop["dst_addr"]),
        "n1 did not admit y/a → x/b on egress: {flows}"
    );
    c.delete("p.yaml", &deny);

    // Allow ingress to x only from namespace y (namespaceSelector).
    let from_y = netpol(
        "x",
        "allow-from-y",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    );
    c.apply("p.yaml", &from_y);
    let mut want = Reachability::all();
    want.expect_peer(Peer::ANY, Peer::ns("x"), false);
    want.expect_peer(Peer::ns("y"), Peer::ns("x"), true);
    check(&c, "allow from namespace y", 80, "TCP", "ipv4", &want);
    check(&c, "allow from namespace y", 81, "UDP", "ipv6", &want);
    // The deciding rule of a cross-node allow names the policy.
    let e = c.explain("y/a", "x/b", 80, "TCP");
    assert!(
        e["allowed"] == true && e["ingress"]["text"].to_string().contains("allow-from-y"),
        "explain y/a → x/b: {e}"
    );
    c.delete("p.yaml", &from_y);

    // Allow x/a's ingress only from x/b (podSelector within x; b is on the
    // other node, so the identity comes over the tunnel).
    let by_pod = netpol(
        "x",
        "a-from-b",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    c.apply("p.yaml", &by_pod);
    let mut want = Reachability::all();
    want.expect_all_ingress("x/a", false);
    want.expect("x/b", "x/a", true);
    check(
        &c,
        "allow x/a from x/b by podSelector",
        80,
        "TCP",
        "ipv4",
        &want,
    );
    c.delete("p.yaml", &by_pod);

    // Deny all egress from x.
    let egress = netpol(
        "x",
        "deny-egress",
        "{podSelector: {}, policyTypes: [Egress]}",
    );
    c.apply("p.yaml", &egress);
    let mut want = Reachability::all();
    want.expect_peer(Peer::ns("x"), Peer::ANY, false);
    check(&c, "deny all egress from x", 80, "TCP", "ipv4", &want);
    c.delete("p.yaml", &egress);

    eprintln!("policy across nodes: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Ingress on the destination node is judged on the identity the tunnel
/// header carries: x/a admits only pod b; a frame from b's address whose
/// header claims an identity no pod has is judged as `world` and dropped by
/// policy, the same frame without an identity is judged by its address and
/// admitted.
fn wire_identity_decides(tag: &str, encap: &str, forged: &str, plain: &str) {
    let c = TestCluster::up_with(
        tag,
        &two_node_cluster("x", &[("a", "n1"), ("b", "n2")], false),
        &["--encap", encap],
    );
    c.apply(
        "p.yaml",
        &netpol(
            "x",
            "a-from-b",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
        ),
    );
    let m = c.probe(80, "TCP", &["--from", "x/b", "--to", "x/a"]);
    assert!(
        all_connected(&m),
        "{encap}: b → a with its real identity: {m}"
    );
    std::thread::sleep(Duration::from_millis(300));

    let e0 = echos_in(&c, "a");
    let denied0 = c.node_drops("n1", "policy-denied");
    scapy(&c, forged);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        echos_in(&c, "a"),
        e0,
        "{encap}: a frame with a forged identity reached x/a"
    );
    assert!(
        c.node_drops("n1", "policy-denied") > denied0,
        "{encap}: forged identity not a policy drop: {}",
        weir_tests::node_status(&c.status(), "n1")["workers"]
    );
    scapy(&c, plain);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        echos_in(&c, "a") > e0,
        "{encap}: a frame without identity from b's address did not reach x/a"
    );
}

#[test]
fn geneve_wire_identity_decides_ingress_on_decap() {
    wire_identity_decides(
        "wig",
        "geneve",
        "send(outer(6081)/GENEVE(vni=1, proto=0x6558, options=[GeneveOptions(classid=0xfff1, type=0x01, length=1, data=struct.pack('!I', 0x7eadbeef))])/inner(301))",
        "send(outer(6081)/GENEVE(vni=1, proto=0x6558)/inner(302))",
    );
}

#[test]
fn vxlan_gbp_decides_ingress_on_decap() {
    wire_identity_decides(
        "wiv",
        "vxlan",
        "send(outer(4789)/VXLAN(flags=0x88, gpid=0xbeef, vni=1)/inner(301))",
        "send(outer(4789)/VXLAN(flags=0x08, vni=1)/inner(302))",
    );
}

/// An established TCP connection from a pod on n2 to a pod on n1 is cut
/// when a policy revokes it: the destination node judges the flow again on
/// its next decapsulated packet.
#[test]
fn policy_change_revokes_established_cross_node_flow() {
    policy_change_revokes("rev", &["--encap", "geneve"]);
}

#[test]
fn policy_change_revokes_established_cross_node_flow_encrypted() {
    policy_change_revokes("revwg", ENCRYPTED);
}

fn policy_change_revokes(tag: &str, up: &[&str]) {
    let c = spread_with(tag, up);
    let topo = c.topology();
    let a = topo.pod("x", "a").expect("a").clone();
    let b = topo.pod("x", "b").expect("b").clone();
    let dst = SocketAddr::new(a.ipv4.expect("v4").into(), 6000);
    let listener = weir_topo::netns::run_in(&a.netns, move || TcpListener::bind(dst))
        .expect("enter a")
        .expect("bind");
    // Echo server: one connection, echoes until EOF or error.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut s = weir_topo::netns::run_in(&b.netns, move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(3))
    })
    .expect("enter b")
    .expect("connect b → a");
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let mut buf = [0u8; 5];
    s.write_all(b"hello").expect("write");
    s.read_exact(&mut buf).expect("echo before the policy");
    assert_eq!(&buf, b"hello");

    c.apply(
        "p.yaml",
        &netpol(
            "x",
            "deny-a",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
        ),
    );
    s.write_all(b"again").expect("write after the policy");
    let r = s.read(&mut buf);
    assert!(
        !matches!(r, Ok(n) if n > 0),
        "the established flow b → a still works after a deny: {r:?}"
    );
    let flows = c.weir_json(&["flows", "-o", "json"]);
    assert!(
        flows
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["node"] == "n1"
                && (r["kind"] == "revoked" || r["kind"] == "drop")
                && r["dport"] == 6000),
        "no revoked/drop record on n1: {flows}"
    );
    drop(s);
    let _ = server.join();
}

/// `weir up --queues 1`: pod veths and the underlay get one queue, and the
/// dataplane must open its sockets on that one queue only.
#[test]
fn one_queue_per_interface_across_nodes() {
    let c = TestCluster::up_with(
        "q1",
        &two_node_cluster("x", &[("a", "n1"), ("b", "n2")], false),
        &["--encap", "geneve", "--queues", "1"],
    );
    let m = c.probe(80, "TCP", &[]);
    assert!(all_connected(&m), "{m}");
    let m = c.probe(81, "UDP", &["--family", "ipv6"]);
    assert!(all_connected(&m), "{m}");
}
