//! Host policy on the node's OWN outbound traffic (issue 16, part 2;
//! docs/policy.md, "The node's own outbound traffic"): a WeirClusterPolicy
//! selecting node n1 with egress rules becomes an nftables table `inet
//! weir_host` in n1's netns (hook `output`). Real clients (curl, OpenBSD nc)
//! in the nodes' netns, real servers in the world host's netns (this test's
//! `nc -l` loops and the world's own UDP server). Each denial is counted by
//! the table (`weir status`: host egress denied; `/metrics`), IPv4 and
//! IPv6, and the same verdicts come
//! from `weir explain --from node/n1 --to ADDR`. Also: failsafe ports stay
//! open, n2 (not selected) is untouched, n1 → its pods is still judged by
//! the worker, a bad policy keeps the table, deleting the policy removes
//! it, `weir down` leaves none. Needs root, nft, curl and nc.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{node_manifest, pod_on, TestCluster};

const NS: &str = "he";
const WORLD: &str = "198.51.100.1";

/// n1's egress: TCP 80 to the world's 198.51.100.0/24, deny the rest.
const HOST_OUT: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: host-out}
spec:
  priority: 10
  subject:
    nodeSelector: {matchLabels: {role: worker}}
  egress:
  - name: web
    action: Allow
    to: [{ipBlock: {cidr: 198.51.100.0/24}}]
    ports: [{protocol: TCP, port: 80}]
  - {name: rest, action: Deny}
";

/// Not valid: a /33.
const BAD: &str = "\
apiVersion: weir.dev/v1alpha1
kind: WeirClusterPolicy
metadata: {name: host-out}
spec:
  priority: 10
  subject:
    nodeSelector: {matchLabels: {role: worker}}
  egress:
  - action: Allow
    to: [{ipBlock: {cidr: 198.51.100.0/33}}]
";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn exec(netns: &str, argv: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .output()
        .expect("ip netns exec")
}

/// The greeting of a TCP server at `addr:port`, from `netns` ("" when the
/// connection fails).
fn tcp_reads(netns: &str, addr: &str, port: u16) -> String {
    let port = port.to_string();
    let out = exec(netns, &["timeout", "5", "nc", "-w", "2", addr, &port]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// [`tcp_reads`] of a port that should answer: a second try if the
/// server's loop was between two `nc -l` (a refused connect, no drop).
fn tcp_reads_open(netns: &str, addr: &str, port: u16) -> String {
    let got = tcp_reads(netns, addr, port);
    if !got.is_empty() {
        return got;
    }
    std::thread::sleep(Duration::from_millis(200));
    tcp_reads(netns, addr, port)
}

/// TCP servers in `netns` that write `world-PORT` to each client (one
/// `nc -lk` loop per port, in a process group of this test); killed on
/// drop.
struct Servers(Vec<Child>);

impl Servers {
    /// `family`: "-4" or "-6".
    fn start(netns: &str, family: &str, ports: &[u16]) -> Servers {
        let mut servers = Servers(Vec::new());
        for &port in ports {
            let script = format!(
                "while true; do echo world-{port} | nc {family} -l -q0 -p {port} >/dev/null 2>&1 || exit 1; done"
            );
            let child = Command::new("ip")
                .args(["netns", "exec", netns, "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("nc -l");
            servers.0.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for &port in ports {
            let filter = format!("sport = :{port}");
            loop {
                let out = exec(netns, &["ss", family, "-ltnH", &filter]);
                if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "nc -l {port} not listening");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        servers
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// n1's table as nftables prints it without counters (`None`: no table).
fn table(netns: &str) -> Option<String> {
    let out = exec(netns, &["nft", "-s", "list", "table", "inet", "weir_host"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `weir status`'s host egress counters of `node` (denied, allowed).
fn host_egress(c: &TestCluster, node: &str) -> (u64, u64) {
    let st = c.status();
    let n = st["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"] == node)
        .cloned()
        .unwrap_or_default();
    let h = &n["host_egress"];
    (
        h["denied_packets"].as_u64().unwrap_or(0),
        h["allowed_packets"].as_u64().unwrap_or(0),
    )
}

#[test]
fn host_policy_judges_the_nodes_own_outbound_traffic_in_nftables() {
    // n1 labelled role=worker with pod a; n2 unlabelled. UDP 8080 (the
    // world server's) is a failsafe outbound port of this cluster.
    let mut m = node_manifest(0, false).replace(
        "labels: {kubernetes.io/hostname: n1}",
        "labels: {kubernetes.io/hostname: n1, role: worker}",
    );
    assert!(m.contains("role: worker"), "{m}");
    m.push_str(&node_manifest(1, false));
    m.push_str(&format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
    ));
    m.push_str(&pod_on(NS, "a", "n1"));
    // A free loopback port for the metrics endpoint.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let c = TestCluster::up_with(
        "hostout",
        &m,
        &[
            "--failsafe-outbound",
            "udp:53,tcp:53,tcp:6443,udp:8080",
            "--metrics-addr",
            &metrics,
        ],
    );
    let topo = c.topology();
    let n1 = topo.node("n1").expect("n1").netns.clone();
    let n2 = topo.node("n2").expect("n2").netns.clone();
    let world = topo.world.clone().expect("world host");
    let w_ul = world.ipv4.to_string();
    let a4 = topo
        .pod(NS, "a")
        .and_then(|p| p.ipv4)
        .expect("a")
        .to_string();
    // n1 has no route to the world's own address: the test adds one (gone
    // with the netns).
    let out = exec(
        &n1,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.1/32",
            "via",
            &w_ul,
            "dev",
            "ul0",
        ],
    );
    assert!(out.status.success(), "route to the world: {}", text(&out));
    let _servers = Servers::start(&world.netns, "-4", &[53, 80, 81]);
    let _servers6 = Servers::start(&world.netns, "-6", &[82]);
    let node_curl_a = || {
        let url = format!("http://{a4}:80/");
        let out = exec(&n1, &["curl", "-sS", "--http0.9", "--max-time", "3", &url]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let udp_world = |netns: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c"])
            .arg(format!(
                "echo hi | timeout 5 nc -u -w 2 {WORLD} {}",
                weir_topo::world::WORLD_PORT
            ))
            .output()
            .expect("nc -u");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // The world's IPv6 underlay address (this test's server on 82).
    let w6 = world.ipv6.expect("the world's IPv6 address").to_string();

    // 0. No host policy: no table, everything answers.
    assert_eq!(table(&n1), None, "a table before any host policy");
    // (The first IPv6 exchange may wait for the underlay's neighbours.)
    let got = tcp_reads_open(&n1, &w6, 82);
    let got = if got.is_empty() {
        tcp_reads_open(&n1, &w6, 82)
    } else {
        got
    };
    assert_eq!(got, "world-82", "n1 → [{w6}]:82 before");
    assert_eq!(
        tcp_reads_open(&n1, WORLD, 81),
        "world-81",
        "n1 → world:81 before"
    );
    assert_eq!(node_curl_a(), "a", "n1 → a before");

    // 1. The policy: n1's table appears, in force when `weir apply` returns.
    c.apply("host-out.yaml", HOST_OUT);
    let t = table(&n1).expect("n1's table inet weir_host");
    assert!(t.contains("hook output"), "{t}");
    assert!(t.contains("host-out egress[1] (Deny)"), "{t}");
    assert_eq!(table(&n2), None, "n2 is not selected: no table");

    // 2. The allowed port answers; a denied port and a denied address do
    //    not, and the table counts them.
    assert_eq!(tcp_reads_open(&n1, WORLD, 80), "world-80", "n1 → world:80");
    let (denied0, allowed0) = host_egress(&c, "n1");
    assert!(allowed0 >= 1, "the allowed SYN not counted");
    assert_eq!(
        tcp_reads(&n1, WORLD, 81),
        "",
        "n1 → world:81 under the policy"
    );
    let (denied1, _) = host_egress(&c, "n1");
    assert!(
        denied1 > denied0,
        "n1 → world:81 not counted ({denied0} → {denied1})"
    );
    assert_eq!(
        tcp_reads(&n1, &w_ul, 80),
        "",
        "n1 → the world's underlay:80 (not in the ipBlock)"
    );
    let (denied2, _) = host_egress(&c, "n1");
    assert!(denied2 > denied1, "n1 → {w_ul}:80 not counted");
    // IPv6 too (the table's `ip6 daddr` side, the world class).
    assert_eq!(
        tcp_reads(&n1, &w6, 82),
        "",
        "n1 → [{w6}]:82 under the policy"
    );
    let (denied2, _) = {
        let (d, a) = host_egress(&c, "n1");
        assert!(d > denied2, "n1 → [{w6}]:82 not counted");
        (d, a)
    };
    let status = c.weir(&["status"]);
    let status = text(&status);
    assert!(
        status.contains("host egress (nftables inet weir_host): denied")
            && status.contains("drop weirclusterpolicies/host-out egress[1] (Deny)"),
        "{status}"
    );

    // ... and so does /metrics.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{metrics}/metrics"),
        ])
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&out.stdout);
    let denied_metric = page
        .lines()
        .find(|l| {
            l.starts_with("weir_host_egress_packets_total{")
                && l.contains("node=\"n1\"")
                && l.contains("verdict=\"denied\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        denied_metric.is_some_and(|v| v >= denied2),
        "weir_host_egress_packets_total denied: {denied_metric:?}\n{page}"
    );

    // 3. `weir explain` gives the table's verdicts.
    let e = c.explain("node/n1", WORLD, 80, "TCP");
    assert_eq!(e["allowed"], true, "{e}");
    let e = c.explain("node/n1", WORLD, 81, "TCP");
    assert_eq!(e["allowed"], false, "{e}");
    assert!(e.to_string().contains("host-out"), "{e}");
    let e = c.explain("node/n1", WORLD, 8080, "UDP");
    assert_eq!(e["allowed"], true, "failsafe: {e}");
    let out = c.weir(&["explain", "--from", "node/n1", "--to", &a4, "--port", "80"]);
    assert!(
        !out.status.success() && text(&out).contains(&format!("use --to {NS}/a")),
        "explain to a pod's address: {}",
        text(&out)
    );

    // 4. Failsafe ports stay open: TCP 53 (this test's server) and UDP 8080
    //    (the world's server, `--failsafe-outbound`).
    assert_eq!(tcp_reads_open(&n1, WORLD, 53), "world-53", "n1 → world:53");
    assert_eq!(udp_world(&n1), "world", "n1 → world udp:8080");

    // 5. n2 is not selected: the same destination answers.
    assert_eq!(tcp_reads_open(&n2, &w_ul, 81), "world-81", "n2 → world:81");

    // 6. n1 → its pod: not the table's (its host port is accepted), the
    //    worker's: the closing Deny drops it there, counted as policy-denied.
    let (denied3, _) = host_egress(&c, "n1");
    let worker_denied = c.node_drops("n1", "policy-denied");
    assert_eq!(node_curl_a(), "", "n1 → a under the closing Deny");
    assert!(
        c.node_drops("n1", "policy-denied") > worker_denied,
        "n1 → a not denied by the worker"
    );
    assert_eq!(
        host_egress(&c, "n1").0,
        denied3,
        "n1 → a counted by the table"
    );

    // 7. Bad input: one error line, the table in force unchanged.
    let before = table(&n1).expect("table");
    let out = c.apply_text("bad.yaml", BAD);
    assert!(!out.status.success(), "a /33 applied");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("198.51.100.0/33"), "{err}");
    assert_eq!(
        table(&n1).as_deref(),
        Some(before.as_str()),
        "table changed"
    );

    // 8. Policy deleted: the table is gone, everything answers again.
    c.delete("host-out.yaml", HOST_OUT);
    assert_eq!(table(&n1), None, "the table after the policy's deletion");
    assert_eq!(
        tcp_reads_open(&n1, WORLD, 81),
        "world-81",
        "n1 → world:81 after"
    );

    // 9. `weir down` (with the table in place again) leaves none behind:
    //    it lived in n1's netns, which is gone.
    c.apply("host-out.yaml", HOST_OUT);
    assert!(table(&n1).is_some(), "the table again");
    // A table lost behind weir's back (`nft flush ruleset`) comes back at
    // the next compile, even an unchanged one.
    let out = exec(&n1, &["nft", "delete", "table", "inet", "weir_host"]);
    assert!(out.status.success(), "{}", text(&out));
    c.apply("host-out.yaml", HOST_OUT);
    assert!(table(&n1).is_some(), "the lost table not made again");
    let out = c.weir(&["down"]);
    assert!(out.status.success(), "weir down: {}", text(&out));
    let ls = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains(&n1),
        "n1's netns left after weir down"
    );
    let root = Command::new("nft")
        .args(["list", "table", "inet", "weir_host"])
        .output()
        .expect("nft");
    assert!(
        !root.status.success(),
        "a weir_host table in the root netns"
    );
}
