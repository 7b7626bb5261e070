//! Crash and restart (issue 15): a node's dataplane killed with SIGKILL
//! while TCP connections are open, then `weir dataplane start`: the same
//! connections carry data both ways again (the new process re-learns them
//! from mid-stream segments, each judged by policy as a new flow in its own
//! direction: docs/conntrack.md "Restarts"), and a connection the policy
//! denies can neither be opened nor resumed. And the supervisor killed
//! with SIGKILL: forwarding goes on, a new supervisor adopts the running
//! dataplane. Needs root.

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
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into());
    let p = state.join(&c.name).join("nodes/node-1/dataplane.pid");
    std::fs::read_to_string(&p)
        .expect("dataplane.pid")
        .trim()
        .parse()
        .expect("pid")
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
    // The new process (its counters start at 0) re-learned both flows from
    // mid-stream segments.
    let pickups = conntrack(&c, "pickups");
    assert!(pickups >= 2, "only {pickups} mid-stream pickups");
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
    assert!(
        c.drops("policy-denied") > denied0,
        "c's retransmissions were not counted as policy-denied"
    );
    // Nor can c open a new one.
    assert!(
        connect(&cc.netns, b_addr).is_err(),
        "c→b:7000 connected under a policy that denies it"
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
    // Forwarding goes on without the supervisor.
    assert!(!dead(dp), "the dataplane died with the supervisor");
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
    // The pods' servers are back (they lived in the old supervisor).
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
}
