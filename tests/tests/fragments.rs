//! Fragmented datagrams under policy, with real traffic: b's ingress allows
//! UDP 80 and 8080 from a only. Large datagrams (fragmented by a's kernel,
//! pod MTU 1500) to an allowed port get their answer over IPv4 and IPv6, to
//! a denied port they do not; Scapy-built out-of-order, overlapping and
//! tiny fragments never complete a datagram at b (b's own reassembly
//! counters say so) and are counted under their reasons. SCTP (the kernel
//! here has none, so no pod can serve it): Scapy-built INIT chunks from a,
//! seen or not by a raw socket in b, for the allowed and a denied port.
//! Needs root, python3 and Scapy (scripts/setup.sh).

use std::process::{Child, Command, Stdio};
use weir_tests::{netpol, node_status, simple_cluster, two_node_cluster, TestCluster};

const POLICY: &str = "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], \
    ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], \
    ports: [{protocol: UDP, port: 80}, {protocol: UDP, port: 8080}, {protocol: SCTP, port: 80}]}]}";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Sends one UDP datagram of `size` bytes from a to `ip`:`port`; returns
/// the size of the answer, 0 if none came within 2 s.
fn udp_size(c: &TestCluster, ip: &str, port: u16, size: usize) -> usize {
    let fam = if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let code = format!(
        "import socket\ns=socket.socket(socket.{fam},socket.SOCK_DGRAM)\ns.settimeout(2)\n\
         s.sendto(b'x'*{size},('{ip}',{port}))\ntry:\n print(len(s.recv(65535)))\nexcept Exception:\n print(0)"
    );
    let out = c.pod_exec("f", "a", &["python3", "-c", &code]);
    text(&out).trim().parse().unwrap_or(0)
}

/// A UDP echo server on `port` in b (answers each datagram with itself).
struct Echo(Child);

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo(c: &TestCluster, port: u16) -> Echo {
    let b = c.topology().pod("f", "b").expect("b").clone();
    let code = format!(
        "import socket,threading\n\
         def run(fam,addr):\n s=socket.socket(fam,socket.SOCK_DGRAM)\n \
         if fam==socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\n \
         s.bind((addr,{port}))\n \
         while True:\n  d,p=s.recvfrom(65535)\n  s.sendto(d,p)\n\
         threading.Thread(target=run,args=(socket.AF_INET6,'::'),daemon=True).start()\n\
         import socket as _s\nrun(_s.AF_INET,'0.0.0.0')"
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &b.netns, "python3", "-c", &code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 echo server");
    std::thread::sleep(std::time::Duration::from_millis(500));
    Echo(child)
}

fn fragments(c: &TestCluster, field: &str) -> u64 {
    node_fragments(c, "node-1", field)
}

fn node_fragments(c: &TestCluster, node: &str, field: &str) -> u64 {
    node_status(&c.status(), node)["conntrack"]["fragments"][field]
        .as_u64()
        .unwrap_or(0)
}

/// b's kernel counter (nstat, absolute): datagrams b reassembled.
fn reassembled(c: &TestCluster) -> u64 {
    let out = c.pod_exec("f", "b", &["nstat", "-az", "IpReasmOKs", "Ip6ReasmOKs"]);
    let t = text(&out);
    t.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            (name == "IpReasmOKs" || name == "Ip6ReasmOKs")
                .then(|| w.next().and_then(|n| n.parse::<u64>().ok()))?
        })
        .sum()
}

fn cluster(tag: &str) -> (TestCluster, String, String, String, String) {
    cluster_of(TestCluster::up(tag, &simple_cluster("f", &["a", "b"])))
}

fn cluster_of(c: TestCluster) -> (TestCluster, String, String, String, String) {
    c.apply("policy.yaml", &netpol("f", "b-udp", POLICY));
    let topo = c.topology();
    let a = topo.pod("f", "a").expect("a").clone();
    let b = topo.pod("f", "b").expect("b").clone();
    (
        c,
        a.ipv4.expect("a v4").to_string(),
        a.ipv6.expect("a v6").to_string(),
        b.ipv4.expect("b v4").to_string(),
        b.ipv6.expect("b v6").to_string(),
    )
}

#[test]
fn large_udp_is_judged_by_its_first_fragment_both_families() {
    let (c, _, _, b4, b6) = cluster("frg");
    let _echo = echo(&c, 8080);
    let followed0 = fragments(&c, "followed");
    let denied0 = c.drops("policy-denied");
    for b in [&b4, &b6] {
        // Small and large to the allowed port: b's server answers.
        assert!(udp_size(&c, b, 80, 100) > 0, "small UDP 80 to {b}");
        assert!(udp_size(&c, b, 80, 3000) > 0, "3000-byte UDP 80 to {b}");
        // A large answer comes back fragmented, as replies of the flow.
        assert_eq!(udp_size(&c, b, 8080, 5000), 5000, "UDP echo 5000 {b}");
        // The denied port stays denied, small or large.
        assert_eq!(udp_size(&c, b, 81, 100), 0, "small UDP 81 to {b}");
        assert_eq!(udp_size(&c, b, 81, 3000), 0, "large UDP 81 to {b}");
    }
    // Per family: 2 later fragments (3000 B), 3 each way (5000 B echoed).
    let followed = fragments(&c, "followed") - followed0;
    assert!(followed >= 16, "later fragments followed: {followed}");
    // Denied: per family the small datagram and all 3 fragments of the large.
    let denied = c.drops("policy-denied") - denied0;
    assert!(denied >= 8, "policy-denied: {denied}");
    assert_eq!(c.drops("fragment-no-first"), 0);
    assert!(fragments(&c, "datagrams") >= 6);

    // The flow log shows the allowed flow and the denied one, ports known.
    let flows = c.weir_json(&["flows", "-o", "json"]);
    let recs = flows.as_array().expect("records");
    let has = |dport: u64, allowed: bool| {
        recs.iter()
            .any(|r| r["dport"] == dport && (r["verdict"] == "allowed") == allowed)
    };
    assert!(
        has(80, true) && has(8080, true) && has(81, false),
        "{flows}"
    );
}

const SCAPY: &str = r#"
import sys
from scapy.all import Ether, IP, IPv6, IPv6ExtHdrFragment, UDP, TCP, Raw, sendp, getmacbyip, fragment, fragment6, conf
conf.verb = 0
a4, a6, b4, b6, case = sys.argv[1:]
gw = getmacbyip("169.254.1.1")
sent = 0
def send(pkts):
    global sent
    sent += len(pkts)
    sendp([Ether(dst=gw)/p for p in pkts], iface="eth0")
def v4(dport, ident, n):
    return fragment(IP(src=a4, dst=b4, id=ident)/UDP(sport=40000, dport=dport)/Raw(b"y"*n), fragsize=1000)
def v6(dport, ident, n):
    return fragment6(IPv6(src=a6, dst=b6)/IPv6ExtHdrFragment(id=ident)/UDP(sport=40000, dport=dport)/Raw(b"y"*n), 1000)
if case == "in-order":
    send(v4(80, 0x101, 2000)); send(v6(80, 0x102, 2000))
elif case == "out-of-order":
    # Two fragments each: the later one goes first.
    for f in (v4(80, 0x201, 1500), v6(80, 0x202, 1500)):
        assert len(f) == 2
        send([f[1], f[0]])
elif case == "overlap":
    # A later fragment at offset 8 overlaps the first fragment's data.
    f = v4(80, 0x301, 2000)
    evil = IP(src=a4, dst=b4, id=0x301, proto=17, frag=1, flags="MF")/Raw(b"z"*64)
    send([f[0], evil] + f[1:])
    f = v6(80, 0x302, 2000)
    evil = IPv6(src=a6, dst=b6)/IPv6ExtHdrFragment(id=0x302, offset=1, m=1, nh=17)/Raw(b"z"*64)
    send([f[0], evil] + f[1:])
elif case == "tiny":
    # TCP whose first fragment holds 8 bytes of the header (ports, no flags).
    whole = IP(src=a4, dst=b4, id=0x401)/TCP(sport=40000, dport=80, flags="S")/Raw(b"t"*64)
    send(fragment(whole, fragsize=8)[:1])
    # IPv6: the first fragment (offset 0, M) ends inside a 16-byte
    # destination-options header (RFC 7112).
    frag = bytes([60, 0, 0, 1, 0, 0, 4, 2])
    dest = bytes([17, 1, 1, 4, 0, 0, 0, 0])
    send([IPv6(src=a6, dst=b6, nh=44)/Raw(frag + dest)])
elif case == "denied":
    send(v4(81, 0x501, 2000)); send(v6(81, 0x502, 2000))
print(sent)
"#;

/// Runs one case of the Scapy script in a; returns the frames it sent.
fn scapy(c: &TestCluster, a: (&str, &str), b: (&str, &str), case: &str) -> u64 {
    let out = c.pod_exec(
        "f",
        "a",
        &["python3", "-c", SCAPY, a.0, a.1, b.0, b.1, case],
    );
    assert!(
        out.status.success(),
        "scapy {case} (scripts/setup.sh installs it): {}",
        text(&out)
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("scapy {case}: {}", text(&out)))
}

#[test]
fn scapy_fragments_never_complete_a_datagram_weir_would_not_judge() {
    let (c, a4, a6, b4, b6) = cluster("frs");
    let (a, b) = ((a4.as_str(), a6.as_str()), (b4.as_str(), b6.as_str()));
    // Control: in-order fragments to the allowed port reach b and are
    // reassembled there (one datagram per family).
    let r0 = reassembled(&c);
    let followed0 = fragments(&c, "followed");
    scapy(&c, a, b, "in-order");
    assert_eq!(
        reassembled(&c) - r0,
        2,
        "in-order datagrams reassembled at b"
    );
    assert!(fragments(&c, "followed") - followed0 >= 2);

    // Out of order: the later fragment came first, it is dropped; b never
    // completes the datagram.
    let r0 = reassembled(&c);
    scapy(&c, a, b, "out-of-order");
    assert_eq!(reassembled(&c), r0, "out-of-order datagram completed at b");
    assert_eq!(c.drops("fragment-no-first"), 2);

    // Overlapping the first fragment: dropped, and the rest of the datagram.
    let r0 = reassembled(&c);
    scapy(&c, a, b, "overlap");
    assert_eq!(reassembled(&c), r0, "overlapped datagram completed at b");
    assert!(c.drops("fragment-overlap") >= 4);

    // Tiny first fragment (TCP), IPv6 chain cut by the first fragment.
    scapy(&c, a, b, "tiny");
    assert_eq!(c.drops("fragment-invalid"), 2);

    // A denied port: every fragment dropped under policy.
    let r0 = reassembled(&c);
    let denied0 = c.drops("policy-denied");
    let sent = scapy(&c, a, b, "denied");
    assert_eq!(reassembled(&c), r0);
    assert_eq!(c.drops("policy-denied") - denied0, sent);

    // weir flows shows the fragment drops with their reasons.
    let flows = c.weir_json(&["flows", "-o", "json"]);
    for reason in ["fragment-no-first", "fragment-overlap"] {
        assert!(
            flows
                .as_array()
                .expect("records")
                .iter()
                .any(|r| r["reason"] == reason),
            "no {reason} record: {flows}"
        );
    }
    // And status has them among the drops.
    let out = c.weir(&["status"]);
    let s = text(&out);
    assert!(s.contains("fragment-no-first=2"), "{s}");
    assert!(s.contains("fragments: "), "{s}");
}

#[test]
fn large_udp_across_nodes_both_families() {
    // a on n1, b on n2: fragments cross the tunnel (pod MTU = underlay MTU
    // minus the encapsulation); b's node judges the first fragment's ports
    // and the later fragments follow it there.
    let manifests = two_node_cluster("f", &[("a", "n1"), ("b", "n2")], false);
    let (c, _, _, b4, b6) = cluster_of(TestCluster::up("frx", &manifests));
    let _echo = echo(&c, 8080);
    for b in [&b4, &b6] {
        assert!(udp_size(&c, b, 80, 3000) > 0, "3000-byte UDP 80 to {b}");
        assert_eq!(udp_size(&c, b, 8080, 5000), 5000, "UDP echo 5000 {b}");
        assert_eq!(udp_size(&c, b, 81, 3000), 0, "large UDP 81 to {b}");
    }
    // Both nodes saw first fragments and let later ones follow: n2 for
    // a's datagrams (ingress of b), n1 for b's echoed answers.
    for node in ["n1", "n2"] {
        let followed = node_fragments(&c, node, "followed");
        assert!(followed >= 4, "{node}: later fragments followed {followed}");
    }
    assert!(c.node_drops("n2", "policy-denied") >= 6);
    assert_eq!(c.drops("fragment-no-first"), 0);
}

/// Listens in b for SCTP (raw sockets, both families) until it saw port
/// 80 in both families, or for `secs` seconds; prints the family and
/// destination port of every packet seen. (The sender sends port 81 first,
/// so a leaked 81 would be seen before the listener stops.)
const SCTP_SEEN: &str = r#"
import socket, select, struct, sys, time
s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 132)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
seen = set()
while time.time() < end and not {("v4", 80), ("v6", 80)} <= seen:
    r, _, _ = select.select([s4, s6], [], [], 0.1)
    for s in r:
        d = s.recv(65535)
        if s is s4:
            d = d[(d[0] & 15) * 4:]
        fam, port = "v4" if s is s4 else "v6", struct.unpack("!H", d[2:4])[0]
        seen.add((fam, port))
        print(fam, port, flush=True)
"#;

const SCTP_SEND: &str = r#"
import sys
from scapy.all import Ether, IP, IPv6, sendp, getmacbyip, conf
from scapy.layers.sctp import SCTP, SCTPChunkInit
conf.verb = 0
a4, a6, b4, b6 = sys.argv[1:]
gw = getmacbyip("169.254.1.1")
for dport in (81, 80):
    for ip in (IP(src=a4, dst=b4), IPv6(src=a6, dst=b6)):
        sendp(Ether(dst=gw)/ip/SCTP(sport=5000, dport=dport)/SCTPChunkInit(init_tag=7), iface="eth0")
"#;

#[test]
fn sctp_ports_enforced_seen_at_the_destination() {
    use std::io::{BufRead, BufReader};
    let (c, a4, a6, b4, b6) = cluster("fsc");
    let b = c.topology().pod("f", "b").expect("b").clone();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &b.netns, "python3", "-c", SCTP_SEEN, "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 listener");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("listener ready");
    assert_eq!(line.trim(), "ready");
    let denied0 = c.drops("policy-denied");
    let sent = c.pod_exec("f", "a", &["python3", "-c", SCTP_SEND, &a4, &a6, &b4, &b6]);
    assert!(sent.status.success(), "scapy SCTP: {}", text(&sent));
    let mut seen = String::new();
    for l in out.lines() {
        seen.push_str(&l.expect("listener output"));
        seen.push('\n');
    }
    let _ = child.wait();
    let seen: Vec<&str> = seen.lines().collect();
    assert!(
        seen.contains(&"v4 80") && seen.contains(&"v6 80"),
        "{seen:?} {}",
        node_status(&c.status(), "node-1")["workers"]
    );
    assert!(!seen.iter().any(|l| l.ends_with(" 81")), "{seen:?}");
    assert_eq!(c.drops("policy-denied") - denied0, 2);
    let flows = c.weir_json(&["flows", "-o", "json"]);
    let sctp81 = flows
        .as_array()
        .expect("records")
        .iter()
        .any(|r| r["protocol"] == "SCTP" && r["dport"] == 81 && r["verdict"] == "denied");
    assert!(sctp81, "{flows}");
}
