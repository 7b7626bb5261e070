//! `weir demo --mode files`, end to end: every step's evidence is in its
//! output (the paper's L7 scenario answered by weir, the DNS rule's
//! REFUSED, both rules of the precedence step, the revocation, the
//! side-by-side table), and nothing is left afterwards — also when the demo
//! is interrupted with Ctrl-C. Needs root, curl, dig, dnsmasq, wrk, haproxy
//! and nft (scripts/setup.sh).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{unique_name, weir_bin};

/// Network namespaces of the demo's cluster `name` and of its kernel peer.
fn leftover_netns(name: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let (a, b) = (format!("weir-{name}-"), format!("weir-{name}k-"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&a) || n.starts_with(&b))
        .map(str::to_string)
        .collect()
}

/// Processes whose command line names the cluster (the supervisor, the
/// dataplanes, dnsmasq's pid file, haproxy's configuration), other than
/// this test.
fn leftover_processes(name: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let names_it = words.iter().any(|w| {
            *w == name
                || w.contains(&format!("weir-{name}-"))
                || w.contains(&format!("weir-{name}k-"))
                || w.contains(&format!("weir-demo-{name}/"))
                || w.contains(&format!("weir-demo-{name}k"))
        });
        if names_it {
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

fn state_dir(name: &str) -> PathBuf {
    std::env::var_os("WEIR_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/weir"))
        .join(name)
}

fn assert_nothing_left(name: &str) {
    assert!(!state_dir(name).exists(), "demo left its state");
    let ns = leftover_netns(name);
    assert!(ns.is_empty(), "demo left network namespaces: {ns:?}");
    let procs = leftover_processes(name);
    assert!(procs.is_empty(), "demo left processes: {procs:?}");
    assert!(
        !std::env::temp_dir()
            .join(format!("weir-demo-{name}"))
            .exists(),
        "demo left its temporary directory"
    );
}

#[test]
fn demo_shows_each_step_and_leaves_nothing() {
    let name = unique_name("dm");
    let out = Command::new(weir_bin())
        .env("WEIR_METRICS_ADDR", "off")
        .args(["--cluster", &name, "demo", "--mode", "files"])
        .output()
        .expect("weir demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir demo: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |s: &str| {
        assert!(
            stdout.contains(s),
            "no {s:?} in the demo's output:\n{stdout}"
        );
    };
    // 1. Two nodes, every pod pair connected before any policy.
    has("== mode: manifest files");
    has("$ weir up -f ");
    has("node-2");
    has("169/169 connected");
    // 2. The paper's scenario: 200 from the server, weir's 403 twice, no
    // connection for app3; explain and flows name the request.
    has("public: hello\n  => HTTP 200");
    assert_eq!(
        stdout.matches("Access denied by weir").count(),
        2,
        "{stdout}"
    );
    assert_eq!(stdout.matches("=> HTTP 403").count(), 2, "{stdout}");
    has("=> HTTP 000");
    has("$ weir explain --from demo/app2 --to demo/app1 --port 80 --http 'GET /private'");
    has("request \"GET /private HTTP/1.1\": DENIED");
    has("reason=l7-denied");
    has("http: GET /private");
    has("http: POST /public/hello");
    // 3. DNS: answers for allowed names, REFUSED (by weir) for the other.
    has("status: NOERROR");
    has("allowed.example.\t0\tIN\tA\t");
    has("status: REFUSED");
    has("DNS: query blocked.example: DENIED");
    // 4. Precedence: both rules named.
    has("ingress of x/b: allow by networkpolicies/x/allow-from-y");
    has("ingress of x/b: deny by clusternetworkpolicies/quarantine-y-c");
    has("    overriding: allow by networkpolicies/x/allow-from-y ingress[0]");
    has("overridden-by-admin    networkpolicies/x/allow-from-y ingress[0]");
    // 5. The revocation, seen live and in the flow log.
    has("z/b ← y/a: tick");
    has("demo-revoke.yaml\n");
    has("revoked DENIED");
    has("== revoked: the last tick arrived");
    // 6. The side-by-side table.
    has("ROUGH INDICATION");
    has("weir + L7 rule");
    has("weir, L4 rule only");
    has("kernel + haproxy L7 detour");
    has("weir with ÷ without the L7 rule:");
    // 7. Removed.
    has("=== 7/7 Everything removed");
    has(&format!("cluster {name} removed"));
    assert_nothing_left(&name);
}

/// Ctrl-C in the middle of the demo removes everything it built.
#[test]
fn demo_interrupted_removes_everything() {
    let name = unique_name("dq");
    let mut child = Command::new(weir_bin())
        .env("WEIR_METRICS_ADDR", "off")
        .args(["--cluster", &name, "demo", "--mode", "files"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir demo");
    let stdout = child.stdout.take().expect("stdout");
    // Its error lines, for the message when it fails (read aside: a full
    // pipe must not stop the demo).
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut e);
        e
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        seen.push_str(&line);
        seen.push('\n');
        // dnsmasq is running and the cluster is up: interrupt here.
        if line.starts_with("$ weir apply -f") && line.contains("demo-dns.yaml") {
            let st = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(st.success());
        }
        assert!(Instant::now() < deadline, "the demo ran too long: {seen}");
    }
    let st = child.wait().expect("wait");
    let errors = errors.join().unwrap_or_default();
    assert_eq!(
        st.code(),
        Some(130),
        "exit after Ctrl-C: {st}\n{seen}\nstderr:\n{errors}"
    );
    assert!(seen.contains("$ weir down"), "{seen}");
    assert!(!seen.contains("=== 4/7"), "the demo went on: {seen}");
    assert_nothing_left(&name);
}
