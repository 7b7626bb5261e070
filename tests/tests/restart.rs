//! Crash and restart (issue 15): a node's dataplane killed with SIGKILL
//! while TCP connections are open, then `weir dataplane start`: the same
//! connections carry data both ways again (the new process loads the
//! conntrack and Service NAT checkpoint the killed one wrote, and judges
//! each restored flow again in its original direction:
//! docs/conntrack.md "Restarts"), and a connection the policy denies can
//! neither be opened nor resumed, from either end. And the supervisor killed
//! with SIGKILL: forwarding goes on, the pods' servers (processes of their
//! own) keep answering, open connections to them included, and a new
//! supervisor adopts the running dataplane and servers. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use weir_tests::{netpol, simple_cluster, TestCluster};

/// An echo server in a pod's netns: every accepted connection's bytes are
/// sent back, and also reported on `seen` (so a test knows what arrived).
fn echo_server(netns: &str, addr: SocketAddr, seen: mpsc::Sender<Vec<u8>>) {
    let l = weir_topo::netns::run_in(netns, move || TcpListener::bind(addr))
        .expect("enter netns")
        .expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    let _ = seen.send(buf[..n].to_vec());
                }
            });
        }
    });
}

fn connect(netns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    weir_topo::netns::run_in(netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1500))
    })
    .expect("enter netns")
}

/// Reads exactly `want` back within `timeout`; false on timeout or mismatch.
fn read_back(s: &mut TcpStream, want: &[u8], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got == want
}

fn exchange(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> bool {
    s.write_all(msg).expect("write");
    read_back(s, msg, timeout)
}

fn dataplane_pid(c: &TestCluster) -> u32 {
    let p = dataplane_log_path(c).with_file_name("dataplane.pid");
    std::fs::read_to_string(&p)
        .expect("dataplane.pid")
        .trim()
        .parse()
        .expect("pid")
}

/// Where node-1's dataplane log is (its state directory holds the pid
/// file and the checkpoint beside it).
fn dataplane_log_path(c: &TestCluster) -> std::path::PathBuf {
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into());
    state.join(&c.name).join("nodes/node-1/dataplane.log")
}

/// The node's dataplane log (for failure messages).
fn dataplane_log(c: &TestCluster) -> String {
    std::fs::read_to_string(dataplane_log_path(c)).unwrap_or_default()
}

/// Gone, or a zombie its parent (the supervisor) has not reaped yet.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn conntrack(c: &TestCluster, field: &str) -> u64 {
    let v = c.weir_json(&["status", "-o", "json"]);
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            n["status"]["dataplane"]["conntrack"][field]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn sigkilled_dataplane_restarts_and_open_connections_continue_but_denied_ones_do_not() {
    let c = TestCluster::up("rs", &simple_cluster("x", &["a", "b", "c"]));
    let topo = c.topology();
    let pod = |n: &str| topo.pod("x", n).expect("pod").clone();
    let (a, b, cc) = (pod("a"), pod("b"), pod("c"));
    let b_addr = SocketAddr::new(b.ipv4.expect("v4").into(), 7000);
    let c_addr = SocketAddr::new(cc.ipv4.expect("v4").into(), 7001);
    let (b_tx, b_seen) = mpsc::channel();
    let (c_tx, _c_seen) = mpsc::channel();
    echo_server(&b.netns, b_addr, b_tx);
    echo_server(&cc.netns, c_addr, c_tx);

    // Three connections while no policy applies: a→c (stays plain), a→b
    // (stays allowed under the policy), c→b (the policy will deny it).
    let mut plain = connect(&a.netns, c_addr).expect("a→c");
    let mut policed = connect(&a.netns, b_addr).expect("a→b");
    let mut revoked = connect(&cc.netns, b_addr).expect("c→b");
    for s in [&mut plain, &mut policed, &mut revoked] {
        assert!(
            exchange(s, b"hello\n", Duration::from_secs(5)),
            "first exchange"
        );
    }

    // b accepts TCP 7000 from a only: c→b is revoked at once.
    let pol = netpol(
        "x",
        "b-from-a",
        "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 7000, protocol: TCP}]}]}",
    );
    let f = c.file("policy.yaml", &pol);
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_applied(Duration::from_secs(20));
    assert!(exchange(&mut policed, b"allowed\n", Duration::from_secs(5)));
    while b_seen.try_recv().is_ok() {}
    revoked.write_all(b"revoked\n").expect("write");
    assert!(
        !read_back(&mut revoked, b"revoked\n", Duration::from_millis(800)),
        "c→b still passes after the policy"
    );

    // SIGKILL: no shutdown path runs.
    let pid = dataplane_pid(&c);
    let out = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill -9 {pid}");
    let t = Instant::now();
    while !dead(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "dataplane {pid} still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fail closed while it is down: nothing crosses.
    plain.write_all(b"gap\n").expect("write");
    assert!(
        !read_back(&mut plain, b"gap\n", Duration::from_millis(800)),
        "a→c echoed with the dataplane killed"
    );

    let out = c.weir(&["dataplane", "start", "--node", "node-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_applied(Duration::from_secs(30));
    assert_ne!(dataplane_pid(&c), pid, "a new dataplane process");
    let denied0 = c.drops("policy-denied");

    // The segment sent during the outage is retransmitted and echoed.
    assert!(
        read_back(&mut plain, b"gap\n", Duration::from_secs(20)),
        "a→c: the outage's segment never arrived after the restart"
    );
    for round in 0..5 {
        let msg = format!("round {round}\n");
        assert!(
            exchange(&mut plain, msg.as_bytes(), Duration::from_secs(10)),
            "a→c after the restart, round {round}"
        );
        assert!(
            exchange(&mut policed, msg.as_bytes(), Duration::from_secs(10)),
            "a→b (allowed by policy) after the restart, round {round}"
        );
    }
    // The new process (its counters start at 0) loaded both flows (and
    // c→b's tombstone) from the checkpoint the killed one wrote, each
    // judged again by the policy at its next packet.
    let restored = conntrack(&c, "restored");
    assert!(restored >= 3, "only {restored} entries restored");
    assert!(
        c.counter("rx_packets") >= 20,
        "the new workers saw the traffic"
    );

    // The revoked connection does not come back: c's retransmissions are
    // judged as c→b:7000 (denied) and dropped, counted.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        while let Ok(bytes) = b_seen.try_recv() {
            assert!(
                !bytes.windows(7).any(|w| w == b"revoked"),
                "b received c's bytes after the restart"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !read_back(&mut revoked, b"revoked\n", Duration::from_millis(500)),
        "c→b resumed after the restart"
    );
    // Nor can c open a new one.
    assert!(
        connect(&cc.netns, b_addr).is_err(),
        "c→b:7000 connected under a policy that denies it"
    );
    // c's segments (its retransmissions, when TCP's backoff brought one
    // in the window above, and its new SYNs) were counted.
    assert!(
        c.drops("policy-denied") > denied0,
        "c's segments were not counted as policy-denied"
    );
}

/// The pid of `weir --cluster NAME daemon`, from /proc.
fn supervisor_pid(cluster: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"--cluster" && w[1] == cluster.as_bytes())
            && args.iter().any(|a| *a == b"daemon");
        (ours && !dead(pid)).then_some(pid)
    })
}

#[test]
fn sigkilled_supervisor_restarts_and_adopts_the_running_dataplane() {
    let c = TestCluster::up("rsv", &simple_cluster("x", &["a", "c"]));
    let topo = c.topology();
    let (a, cc) = (
        topo.pod("x", "a").expect("a").clone(),
        topo.pod("x", "c").expect("c").clone(),
    );
    let c_addr = SocketAddr::new(cc.ipv4.expect("v4").into(), 7001);
    let (tx, _seen) = mpsc::channel();
    echo_server(&cc.netns, c_addr, tx);
    let mut stream = connect(&a.netns, c_addr).expect("a→c");
    assert!(exchange(&mut stream, b"before\n", Duration::from_secs(5)));
    let dp = dataplane_pid(&c);
    let servers = [server_pid(&c, "x_a"), server_pid(&c, "x_c")];
    // A connection to c's own server (TCP 80: it answers "c\n", closes its
    // side, then reads until the client closes, for up to 5 s).
    let c80 = SocketAddr::new(cc.ipv4.expect("v4").into(), 80);
    let mut to_server = connect(&a.netns, c80).expect("a→c:80");
    assert!(read_back(&mut to_server, b"c\n", Duration::from_secs(5)));
    let rx0 = c.counter("rx_packets");

    let sup = supervisor_pid(&c.name).expect("the supervisor runs");
    let out = std::process::Command::new("kill")
        .args(["-9", &sup.to_string()])
        .output()
        .expect("kill");
    assert!(out.status.success());
    let t = Instant::now();
    while !dead(sup) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "supervisor still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Forwarding goes on without the supervisor, and so do the pods'
    // servers (processes of their own): the open connection to c's server
    // still takes data (a dead server's socket would answer it with a
    // reset, failing the second write), and new connections are answered.
    assert!(!dead(dp), "the dataplane died with the supervisor");
    for pid in servers {
        assert!(!dead(pid), "pod server {pid} died with the supervisor");
    }
    for chunk in [&b"one"[..], b"two", b"three"] {
        to_server.write_all(chunk).expect("write to c's server");
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        to_server.take_error().expect("SO_ERROR").is_none(),
        "the connection to c's server was reset"
    );
    to_server
        .write_all(b"four")
        .expect("the connection to c's server was reset");
    drop(to_server);
    for port in [80, 81] {
        let to = SocketAddr::new(cc.ipv4.expect("v4").into(), port);
        let mut s = connect(&a.netns, to).expect("a→c: a new connection to c's server");
        assert!(
            read_back(&mut s, b"c\n", Duration::from_secs(5)),
            "c's server on TCP {port} without a supervisor"
        );
    }
    let udp = weir_topo::netns::run_in(&a.netns, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let answered = (0..3).any(|_| {
        udp.send_to(b"?", SocketAddr::new(cc.ipv4.expect("v4").into(), 81))
            .expect("send");
        matches!(udp.recv(&mut buf), Ok(n) if &buf[..n] == b"c\n")
    });
    assert!(answered, "c's UDP server without a supervisor");
    for i in 0..5 {
        let msg = format!("no supervisor {i}\n");
        assert!(
            exchange(&mut stream, msg.as_bytes(), Duration::from_secs(5)),
            "a→c without the supervisor"
        );
    }

    // A new supervisor adopts the running dataplane instead of starting one.
    let log = std::fs::File::create(c.dir.join("daemon2.log")).expect("log");
    let mut sup2 = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(weir_tests::weir_bin())
            .env("WEIR_METRICS_ADDR", "off")
            .args(["--cluster", &c.name, "daemon"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start the supervisor again")
    };
    let t = Instant::now();
    while !c.weir(&["status", "-o", "json"]).status.success() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the new supervisor never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait_applied(Duration::from_secs(30));
    assert_eq!(dataplane_pid(&c), dp, "the same dataplane process runs");
    assert!(!dead(dp));
    assert!(exchange(&mut stream, b"after\n", Duration::from_secs(5)));
    // Its counters were not reset: the same process forwarded throughout.
    assert!(c.counter("rx_packets") > rx0);
    // It adopted the pods' servers too: the same processes, answering.
    assert_eq!(
        [server_pid(&c, "x_a"), server_pid(&c, "x_c")],
        servers,
        "the pods' server processes were replaced"
    );
    let m = c.probe(80, "TCP", &["--from", "x", "--to", "x"]);
    assert!(
        weir_tests::all_connected(&m),
        "pod servers after the restart: {m}"
    );

    // And `weir down` stops the adopted dataplane.
    let out = c.weir(&["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while !dead(dp) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "adopted dataplane survived weir down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = sup2.wait();
    // Nothing of the cluster is left running (the adopted servers too).
    for pid in servers {
        assert!(dead(pid), "pod server {pid} survived weir down");
    }
    let left = cluster_processes(&c.name);
    assert!(left.is_empty(), "left running after weir down: {left:?}");
}

/// The pid in `servers/<id>.pid` (a pod's server process).
fn server_pid(c: &TestCluster, id: &str) -> u32 {
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into());
    let p = state.join(&c.name).join(format!("servers/{id}.pid"));
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .expect("pid")
}

/// Live processes whose command line has `--cluster NAME`.
fn cluster_processes(cluster: &str) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"--cluster" && w[1] == cluster.as_bytes());
            (ours && !dead(pid)).then(|| (pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect()
}

const SVC_L7: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.0.0/24, "fd00:10:244::/64"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {pod: client}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {pod: web}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: x}
spec:
  selector: {pod: web}
  ports: [{port: 7000, targetPort: 7000}]
---
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: web}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {pod: client}}}]
    ports: [{protocol: TCP, port: 7000}]
  - action: Allow
    from: [{podSelector: {matchLabels: {pod: client}}}]
    ports: [{protocol: TCP, port: 8080}]
    http:
    - method: GET
      path: {prefix: /public}
"#;

/// A keep-alive HTTP/1.1 server: answers each request `200` with body
/// `served <path>` and reports the request line on `seen`.
fn http_server(netns: &str, addr: SocketAddr, seen: mpsc::Sender<String>) {
    use std::io::BufRead;
    let l = weir_topo::netns::run_in(netns, move || TcpListener::bind(addr))
        .expect("enter netns")
        .expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut rd = std::io::BufReader::new(s.try_clone().expect("clone"));
                let mut wr = s;
                loop {
                    let mut line = String::new();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if rd.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let path = line.split(' ').nth(1).unwrap_or("?").to_string();
                    let _ = seen.send(line.trim().to_string());
                    let body = format!("served {path}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if wr.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Sends one GET on `s`; the status code and body of the answer (`None`:
/// no answer within `timeout`, or the connection closed or was reset).
fn get(s: &mut TcpStream, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                let code = head.split(' ').nth(1)?.parse().ok()?;
                return Some((code, body[..len].to_string()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn sigkilled_dataplane_with_service_and_l7_connections_open() {
    let c = TestCluster::up("rsl", SVC_L7);
    c.wait_applied(Duration::from_secs(30));
    let topo = c.topology();
    let client = topo.pod("x", "client").expect("client").clone();
    let web = topo.pod("x", "web").expect("web").clone();
    let web4 = web.ipv4.expect("v4");
    let vip = topo
        .services
        .iter()
        .find(|s| s.name == "echo")
        .expect("service echo")
        .cluster_ips
        .iter()
        .copied()
        .find(|a| a.is_ipv4())
        .expect("an IPv4 ClusterIP");
    let (tx, _seen) = mpsc::channel();
    echo_server(&web.netns, SocketAddr::new(web4.into(), 7000), tx);
    let (http_tx, http_seen) = mpsc::channel();
    http_server(&web.netns, SocketAddr::new(web4.into(), 8080), http_tx);

    // (a) a TCP connection to the ClusterIP; (b) a keep-alive HTTP
    // connection under the http rule.
    let mut svc = connect(&client.netns, SocketAddr::new(vip, 7000)).expect("client→ClusterIP");
    assert!(exchange(&mut svc, b"hello\n", Duration::from_secs(5)));
    let mut http = connect(&client.netns, SocketAddr::new(web4.into(), 8080)).expect("client→web");
    assert_eq!(
        get(&mut http, "/public/1", Duration::from_secs(5)),
        Some((200, "served /public/1".into()))
    );
    assert_eq!(
        get(&mut http, "/public/2", Duration::from_secs(5)),
        Some((200, "served /public/2".into())),
        "keep-alive"
    );
    while http_seen.try_recv().is_ok() {}
    // One checkpoint (every 250 ms) holds both connections.
    std::thread::sleep(Duration::from_millis(700));

    let pid = dataplane_pid(&c);
    let out = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill -9 {pid}");
    let t = Instant::now();
    while !dead(pid) {
        assert!(t.elapsed() < Duration::from_secs(5), "dataplane alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.weir(&["dataplane", "start", "--node", "node-1"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dataplane_log(&c)
    );
    c.wait_applied(Duration::from_secs(30));
    assert_ne!(dataplane_pid(&c), pid, "a new dataplane process");

    // (a) The ClusterIP connection continues: its conntrack entry and its
    // forward and reverse NAT entries come back from the checkpoint.
    for round in 0..5 {
        let msg = format!("svc round {round}\n");
        assert!(
            exchange(&mut svc, msg.as_bytes(), Duration::from_secs(20)),
            "client→ClusterIP after the restart, round {round}"
        );
    }
    assert!(conntrack(&c, "restored") >= 2, "entries not restored");
    assert!(
        conntrack(&c, "restored_nat") >= 2,
        "NAT entries not restored"
    );

    // (b) The keep-alive connection under the http rule is cut: its entry
    // is restored, but the new process has no inspector state for it
    // (not kept, on purpose), so its segments drop as
    // `l7-no-slot`; a denied request on it never reaches the server, and
    // neither does an allowed one.
    let no_slot0 = c.drops("l7-no-slot");
    let denied = get(&mut http, "/private/after", Duration::from_secs(3));
    assert!(
        denied.as_ref().is_none_or(|(code, _)| *code == 403),
        "a denied request on the old connection was answered {denied:?}"
    );
    let allowed = get(&mut http, "/public/after", Duration::from_secs(3));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let reached: Vec<String> = http_seen.try_iter().collect();
    assert!(
        !reached.iter().any(|l| l.contains("/private")),
        "a denied request reached the server after the restart: {reached:?}"
    );
    eprintln!(
        "after the restart, on the old keep-alive connection: denied → {denied:?}, allowed → {allowed:?}, server saw {reached:?}, l7-no-slot {} → {}",
        no_slot0,
        c.drops("l7-no-slot")
    );
    assert_eq!(allowed, None, "the old keep-alive connection was not cut");
    assert!(reached.is_empty(), "the server saw {reached:?}");
    assert!(
        c.drops("l7-no-slot") > no_slot0,
        "the cut connection's segments were not counted l7-no-slot"
    );

    // A new connection is inspected under the rule as before (the denied
    // request gets weir's 403, which ends that connection).
    let mut fresh = connect(&client.netns, SocketAddr::new(web4.into(), 8080)).expect("new");
    assert_eq!(
        get(&mut fresh, "/public/3", Duration::from_secs(5)),
        Some((200, "served /public/3".into()))
    );
    assert_eq!(
        get(&mut fresh, "/private", Duration::from_secs(5)).map(|(c, _)| c),
        Some(403)
    );
    let reached: Vec<String> = http_seen.try_iter().collect();
    assert_eq!(reached, vec!["GET /public/3 HTTP/1.1".to_string()]);
}

/// The generation of node-1's snapshot file (written by the agent).
fn snapshot_generation(c: &TestCluster) -> u64 {
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into());
    let p = state.join(&c.name).join("nodes/node-1/snapshot.json");
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0)
}

/// Accepts connections on `addr` in `netns` and hands each server-side
/// stream to the test (so the test can make the server send first).
fn holding_server(netns: &str, addr: SocketAddr) -> mpsc::Receiver<TcpStream> {
    let l = weir_topo::netns::run_in(netns, move || TcpListener::bind(addr))
        .expect("enter netns")
        .expect("bind");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads whatever arrives within `timeout` (empty: nothing did).
fn read_any(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let mut buf = [0u8; 256];
    s.set_read_timeout(Some(timeout)).expect("timeout");
    match s.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// SIGKILL of node-1's dataplane (after one checkpoint interval has
/// passed, so the open connections are in it), waits for it to die.
fn kill_dataplane(c: &TestCluster) -> u32 {
    // The checkpoint is written every 250 ms.
    std::thread::sleep(Duration::from_millis(700));
    let pid = dataplane_pid(c);
    let out = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill -9 {pid}");
    let t = Instant::now();
    while !dead(pid) {
        assert!(t.elapsed() < Duration::from_secs(5), "dataplane alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    pid
}

fn start_dataplane(c: &TestCluster, old: u32) {
    let out = c.weir(&["dataplane", "start", "--node", "node-1"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dataplane_log(c)
    );
    c.wait_applied(Duration::from_secs(30));
    assert_ne!(dataplane_pid(c), old, "a new dataplane process");
}

/// client → the `echo` Service's IPv4 ClusterIP :7000, its backend web
/// holding the server side; "hi" has crossed. (client, server) streams.
fn cluster_ip_connection(c: &TestCluster) -> (TcpStream, TcpStream) {
    c.wait_applied(Duration::from_secs(30));
    let topo = c.topology();
    let client = topo.pod("x", "client").expect("client").clone();
    let web = topo.pod("x", "web").expect("web").clone();
    let vip = topo
        .services
        .iter()
        .find(|s| s.name == "echo")
        .expect("service echo")
        .cluster_ips
        .iter()
        .copied()
        .find(|a| a.is_ipv4())
        .expect("an IPv4 ClusterIP");
    let accepted = holding_server(
        &web.netns,
        SocketAddr::new(web.ipv4.expect("v4").into(), 7000),
    );
    let mut cl = connect(&client.netns, SocketAddr::new(vip, 7000)).expect("client→ClusterIP");
    let mut srv = accepted
        .recv_timeout(Duration::from_secs(5))
        .expect("the backend accepted");
    cl.write_all(b"hi\n").expect("write");
    assert!(read_back(&mut srv, b"hi\n", Duration::from_secs(5)));
    (cl, srv)
}

/// After a restart the backend sends first: its segment reaches the
/// client only if the restored reverse NAT entry gives it the ClusterIP as
/// source again.
fn backend_speaks_first(c: &TestCluster, srv: &mut TcpStream, cl: &mut TcpStream) {
    srv.write_all(b"backend first\n").expect("write");
    assert!(
        read_back(cl, b"backend first\n", Duration::from_secs(10)),
        "the backend's segment after the restart never reached the client\n{}",
        dataplane_log(c)
    );
}

/// A ClusterIP connection whose *backend* sends first after the restart:
/// without the checkpoint the new process has no reverse NAT entry, the
/// backend's segment leaves with the backend's address as source and the
/// client (connected to the ClusterIP) never takes it.
#[test]
fn sigkilled_dataplane_cluster_ip_connection_continues_when_the_backend_sends_first() {
    let c = TestCluster::up("rsb", SVC_L7);
    let (mut cl, mut srv) = cluster_ip_connection(&c);
    srv.write_all(b"ho\n").expect("write");
    assert!(read_back(&mut cl, b"ho\n", Duration::from_secs(5)));

    let pid = kill_dataplane(&c);
    start_dataplane(&c, pid);
    let rx0 = c.counter("rx_packets");

    // The backend speaks first: the restored reverse entry gives its
    // segment the ClusterIP as source again.
    backend_speaks_first(&c, &mut srv, &mut cl);
    for round in 0..3 {
        let msg = format!("round {round}\n");
        cl.write_all(msg.as_bytes()).expect("write");
        assert!(read_back(&mut srv, msg.as_bytes(), Duration::from_secs(10)));
        srv.write_all(msg.as_bytes()).expect("write");
        assert!(read_back(&mut cl, msg.as_bytes(), Duration::from_secs(10)));
    }
    // The new process carried it, from restored state.
    assert!(c.counter("rx_packets") > rx0, "the new workers saw nothing");
    let restored = conntrack(&c, "restored");
    let nat = conntrack(&c, "restored_nat");
    assert!(restored >= 1, "no conntrack entry restored");
    assert!(
        nat >= 2,
        "only {nat} NAT entries restored (forward + reverse)"
    );
    let log = dataplane_log(&c);
    assert!(
        log.contains("restored") && log.contains("conntrack.ckpt"),
        "no restore line in the dataplane's log:\n{log}"
    );
}

/// A graceful stop (`weir dataplane stop`) writes one last checkpoint after
/// the workers stopped: a connection made after the last periodic write is
/// in it. The test removes the file right before the stop, so what the new
/// process restores came from the stopping process's last write (or a
/// periodic one in between, which holds the connection too); the backend
/// speaks first, which only a restored reverse NAT entry carries back to
/// the client as the ClusterIP.
#[test]
fn gracefully_stopped_dataplane_writes_a_last_checkpoint_and_the_connection_continues() {
    let c = TestCluster::up("rsg", SVC_L7);
    let (mut cl, mut srv) = cluster_ip_connection(&c);

    let ckpt = dataplane_log_path(&c).with_file_name("conntrack.ckpt");
    let pid = dataplane_pid(&c);
    let _ = std::fs::remove_file(&ckpt);
    let out = c.weir(&["dataplane", "stop", "--node", "node-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dead(pid), "the dataplane still runs after stop");
    assert!(
        ckpt.exists(),
        "no checkpoint after a graceful stop\n{}",
        dataplane_log(&c)
    );
    start_dataplane(&c, pid);
    let rx0 = c.counter("rx_packets");
    backend_speaks_first(&c, &mut srv, &mut cl);
    cl.write_all(b"and back\n").expect("write");
    assert!(read_back(&mut srv, b"and back\n", Duration::from_secs(10)));
    assert!(c.counter("rx_packets") > rx0, "the new workers saw nothing");
    assert!(
        conntrack(&c, "restored") >= 1,
        "no conntrack entry restored"
    );
    assert!(conntrack(&c, "restored_nat") >= 2, "no NAT pair restored");
}

/// A policy that denies an open connection, applied while the dataplane
/// is down (frozen, then killed): the restored entry is judged again at its first packet, in
/// its original direction, so neither end gets through — not the client's
/// segments, and not the server's (without the checkpoint, a server's
/// segment was judged as a new flow server → client, allowed here).
#[test]
fn sigkilled_dataplane_policy_changed_while_down_denies_restored_flows_both_ways() {
    let c = TestCluster::up("rsp", &simple_cluster("x", &["a", "b", "c"]));
    let topo = c.topology();
    let pod = |n: &str| topo.pod("x", n).expect("pod").clone();
    let (a, b, cc) = (pod("a"), pod("b"), pod("c"));
    let b_addr = SocketAddr::new(b.ipv4.expect("v4").into(), 7000);
    let c_addr = SocketAddr::new(cc.ipv4.expect("v4").into(), 7001);
    let accepted = holding_server(&b.netns, b_addr);
    let (c_tx, _c_seen) = mpsc::channel();
    echo_server(&cc.netns, c_addr, c_tx);
    let mut ab = connect(&a.netns, b_addr).expect("a→b");
    let mut srv = accepted
        .recv_timeout(Duration::from_secs(5))
        .expect("b accepted");
    let mut ac = connect(&a.netns, c_addr).expect("a→c");
    ab.write_all(b"hi\n").expect("write");
    assert!(read_back(&mut srv, b"hi\n", Duration::from_secs(5)));
    srv.write_all(b"ho\n").expect("write");
    assert!(read_back(&mut ab, b"ho\n", Duration::from_secs(5)));
    assert!(exchange(&mut ac, b"hello\n", Duration::from_secs(5)));

    // The dataplane frozen (SIGSTOP: it forwards nothing, writes no
    // checkpoint, reads no snapshot; `weir apply` refuses a node whose
    // dataplane exited), the policy changed, then SIGKILL: the process
    // dies without ever seeing the new policy.
    std::thread::sleep(Duration::from_millis(700));
    let pid = dataplane_pid(&c);
    let sig = |s: &str| {
        let out = std::process::Command::new("kill")
            .args([s, &pid.to_string()])
            .output()
            .expect("kill");
        assert!(out.status.success(), "kill {s} {pid}");
    };
    sig("-STOP");
    // While it is down: b accepts TCP 7000 from c only.
    let pol = netpol(
        "x",
        "b-from-c",
        "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 7000, protocol: TCP}]}]}",
    );
    let f = c.file("policy.yaml", &pol);
    let gen0 = snapshot_generation(&c);
    // `weir apply` writes the snapshot, then waits for the (frozen) node:
    // run it aside and go on once the new snapshot is written.
    let mut apply = std::process::Command::new(weir_tests::weir_bin())
        .env("WEIR_METRICS_ADDR", "off")
        .args(["--cluster", &c.name, "apply", "-f", &f])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("weir apply");
    let t = Instant::now();
    while snapshot_generation(&c) == gen0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no new snapshot written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sig("-KILL");
    // It fails (the node's dataplane exited) or succeeds later: either way.
    let _ = apply.wait();
    let t = Instant::now();
    while !dead(pid) {
        assert!(t.elapsed() < Duration::from_secs(5), "dataplane alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    start_dataplane(&c, pid);
    let denied0 = c.drops("policy-denied");

    // The allowed connection continues (restored, judged again, allowed).
    for round in 0..3 {
        let msg = format!("round {round}\n");
        assert!(
            exchange(&mut ac, msg.as_bytes(), Duration::from_secs(10)),
            "a→c after the restart, round {round}"
        );
    }
    // The server's side first: b's segment must not reach a.
    srv.write_all(b"from b\n").expect("write");
    let got = read_any(&mut ab, Duration::from_millis(1500));
    assert!(
        got.is_empty(),
        "b's segment reached a after a policy denying a→b: {got:?}"
    );
    // Nor the client's.
    ab.write_all(b"from a\n").expect("write");
    let got = read_any(&mut srv, Duration::from_millis(1500));
    assert!(got.is_empty(), "a's segment reached b: {got:?}");
    let restored = conntrack(&c, "restored");
    assert!(restored >= 2, "only {restored} entries restored");
    assert!(
        conntrack(&c, "revoked") >= 1,
        "the restored a→b flow was not revoked"
    );
    assert!(
        c.drops("policy-denied") > denied0,
        "the denied segments were not counted"
    );
}
