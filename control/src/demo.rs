//! `weir demo`: what weir is for, in one run of about two minutes.
//!
//! 1. two nodes joined by the overlay, pods spread over both, the
//!    reachability matrix;
//! 2. the founding paper's L7 scenario with real `curl` (200 / weir's 403 /
//!    refused at L4), `weir explain --http`, `weir flows`;
//! 3. a DNS rule: `dig` gets an answer for an allowed name, REFUSED from
//!    weir for another;
//! 4. precedence: a NetworkPolicy allow overridden by an Admin-tier deny;
//! 5. a revocation: a live TCP stream cut by a policy apply, timed;
//! 6. a rough side-by-side of HTTP requests/s (weir with and without the L7
//!    rule, the kernel path with an haproxy detour), with `wrk`;
//! 7. everything removed (also on failure and on Ctrl-C), unless `--keep`.
//!
//! Every step runs the real `weir` command it prints (this executable, with
//! `WEIR_CLUSTER` set), and the real client tools inside the pods' network
//! namespaces (`ip netns exec ...`), so the demo teaches the CLI. On a
//! cluster run by the Kubernetes API server (`--api-server`), policies go
//! in with `weir kubectl apply`; the demo then waits for their effect.
//! The servers the demo starts (app1's HTTP server, dnsmasq in the DNS pod,
//! y/a's tick stream) live as long as the demo process.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_topo::{Cluster, RealizedPod};

use crate::state::StateDir;

/// The demo's cluster: two nodes, x/y/z × a/b/c and the demo namespace
/// (also in docs/examples/demo.yaml).
pub const MANIFESTS: &str = include_str!("../../docs/examples/demo.yaml");
/// The precedence step (also in docs/examples/demo-policy.yaml).
pub const POLICY: &str = include_str!("../../docs/examples/demo-policy.yaml");
/// The paper's L7 rule (docs/examples/demo-l7.yaml).
pub const L7: &str = include_str!("../../docs/examples/demo-l7.yaml");
/// The same admission without the http: rule (docs/examples/demo-l4.yaml).
pub const L4: &str = include_str!("../../docs/examples/demo-l4.yaml");
/// The DNS rule (docs/examples/demo-dns.yaml).
pub const DNS: &str = include_str!("../../docs/examples/demo-dns.yaml");
/// The revocation step (docs/examples/demo-revoke.yaml).
pub const REVOKE: &str = include_str!("../../docs/examples/demo-revoke.yaml");
/// The kernel-path peer of the side-by-side (docs/examples/demo-kernel-peer.yaml).
pub const KERNEL_PEER: &str = include_str!("../../docs/examples/demo-kernel-peer.yaml");

/// HTTP port of app1 (the demo's server; nftables' detour in the peer).
const HTTP_PORT: u16 = 80;
/// haproxy's port in the kernel peer's node namespace.
const HAPROXY_PORT: u16 = 15080;
/// The tick stream of the revocation step, in y/a.
const TICK_PORT: u16 = 7000;
/// Seconds of wrk per configuration of the side-by-side.
const BENCH_SECS: u64 = 3;
/// Core of the load (wrk, the HTTP server); weir's worker takes the last.
const LOAD_CORE: usize = 0;

/// How `weir demo` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Leave the cluster up afterwards.
    pub keep: bool,
    /// On a real Kubernetes API server (`weir up --api-server`).
    pub api_server: bool,
    /// Extra arguments of `weir up` (dataplane flags, `--encap`).
    pub up_args: Vec<String>,
}

/// Runs the demo on cluster `state.cluster`.
pub fn run(state: &StateDir, o: &Options) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("the weir executable")?;
    let cleanup = Arc::new(Cleanup {
        exe: exe.clone(),
        cluster: state.cluster.clone(),
        kernel: kernel_cluster_name(&state.cluster),
        dir: std::env::temp_dir().join(format!("weir-demo-{}", state.cluster)),
        keep: AtomicBool::new(o.keep),
        interrupted: AtomicBool::new(false),
        dnsmasq: Mutex::new(None),
        done: Mutex::new(false),
    });
    std::fs::create_dir_all(&cleanup.dir)
        .with_context(|| format!("create {}", cleanup.dir.display()))?;
    watch_signals(cleanup.clone())?;
    let guard = Guard(cleanup.clone());
    let d = Demo {
        exe,
        cluster: state.cluster.clone(),
        api: o.api_server,
        cleanup: cleanup.clone(),
        t0: Instant::now(),
    };
    let result = d.steps(o);
    // A signal's cleanup removes what a running step uses (its files, the
    // cluster), so that step fails: the demo was interrupted, not broken.
    // The exit is the signal's (130), whichever thread gets there first.
    let interrupted = || cleanup.interrupted.load(Ordering::SeqCst);
    if interrupted() {
        drop(guard);
        std::process::exit(130);
    }
    if let Err(e) = &result {
        println!("\n== demo failed: {e:#}");
        if !o.keep {
            println!("== removing everything it built");
        }
    }
    drop(guard);
    if interrupted() {
        std::process::exit(130);
    }
    if result.is_ok() {
        println!(
            "\n== demo done in {:.0} s",
            d.t0.elapsed().as_secs_f64().round()
        );
    }
    result
}

/// The kernel peer's cluster name: the demo's name with a `k` (at most
/// 16 characters, as cluster names are).
fn kernel_cluster_name(cluster: &str) -> String {
    let mut k: String = cluster.chars().take(15).collect();
    k.push('k');
    k
}

/// What the demo built, removed once (at the end, on failure, on a signal).
struct Cleanup {
    exe: PathBuf,
    cluster: String,
    kernel: String,
    dir: PathBuf,
    keep: AtomicBool,
    /// A signal arrived: its thread removes everything and exits 130.
    interrupted: AtomicBool,
    dnsmasq: Mutex<Option<Child>>,
    done: Mutex<bool>,
}

impl Cleanup {
    fn run(&self) {
        // Held for the whole cleanup: a signal during it waits for it.
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        *done = true;
        if let Some(mut c) = self
            .dnsmasq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = weir_topo::teardown_by_name(&self.kernel);
        let _ = std::fs::remove_dir_all(&self.dir);
        if !self.keep.load(Ordering::Relaxed) {
            println!("\n=== 7/7 Everything removed\n$ weir down");
            let _ = std::io::stdout().flush();
            let _ = Command::new(&self.exe)
                .arg("down")
                .env("WEIR_CLUSTER", &self.cluster)
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// Runs the cleanup when dropped (the end of the demo, an error, a panic).
struct Guard(Arc<Cleanup>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.run();
    }
}

/// Ctrl-C, SIGTERM, SIGHUP: remove everything (even with `--keep`), exit 130.
fn watch_signals(c: Arc<Cleanup>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("\n== weir demo: signal {sig}: removing everything it built");
                c.interrupted.store(true, Ordering::SeqCst);
                c.keep.store(false, Ordering::Relaxed);
                c.run();
                std::process::exit(130);
            }
        })?;
    Ok(())
}

struct Demo {
    exe: PathBuf,
    cluster: String,
    api: bool,
    cleanup: Arc<Cleanup>,
    t0: Instant,
}

/// A curl answer: the status code (`000`: no connection) and the body.
struct Curl {
    code: String,
    body: String,
}

impl Demo {
    fn steps(&self, o: &Options) -> anyhow::Result<()> {
        if self.api {
            println!("== mode: on a real Kubernetes API server (etcd, kube-apiserver, kube-controller-manager {}); weir is the nodes' kubelet for networking, kubectl applies the policies", crate::apiserver::K8S_VERSION);
        } else {
            println!("== mode: manifest files (no API server: scripts/k8s-build.sh builds one, then the demo runs on it)");
        }
        println!(
            "== cluster {:?}: every `weir` command below runs with WEIR_CLUSTER={}",
            self.cluster, self.cluster
        );
        let c = self.step1(o)?;
        let pod = |ns: &str, name: &str| -> anyhow::Result<RealizedPod> {
            c.pod(ns, name)
                .cloned()
                .with_context(|| format!("pod {ns}/{name} is not in the cluster"))
        };
        let (app1, app2, app3, dns) = (
            pod("demo", "app1")?,
            pod("demo", "app2")?,
            pod("demo", "app3")?,
            pod("demo", "dns")?,
        );
        let app1_ip = app1.ipv4.context("demo/app1 has no IPv4 address")?;
        let server = weir_perf::http::HttpServer::start(
            &app1.netns,
            SocketAddr::from((app1_ip, HTTP_PORT)),
            LOAD_CORE,
        )?;
        self.step2(&app1, &app2, &app3)?;
        self.step3(&app1, &app2, &app3, &dns)?;
        self.step4()?;
        self.step5(&pod("y", "a")?, &pod("z", "b")?)?;
        self.step6(&app1, &app2)?;
        drop(server);
        if o.keep {
            self.explore(&app1, &app2);
        }
        Ok(())
    }

    // ---- steps ----------------------------------------------------------

    fn step1(&self, o: &Options) -> anyhow::Result<Cluster> {
        let encap = o
            .up_args
            .windows(2)
            .find(|w| w[0] == "--encap")
            .map_or("vxlan", |w| w[1].as_str())
            .to_uppercase();
        title(
            1,
            &format!(
                "Two nodes joined by the overlay ({encap}{}), pods spread over both",
                if encap == "VXLAN" {
                    "; `weir demo --encap geneve` for Geneve"
                } else {
                    ""
                }
            ),
        );
        let f = self.file("demo.yaml", MANIFESTS)?;
        let mut up: Vec<&str> = vec!["up"];
        if self.api {
            up.push("--api-server");
        }
        up.extend(["-f", &f]);
        up.extend(o.up_args.iter().map(String::as_str));
        self.weir(&up)?;
        self.weir(&["get", "nodes"])?;
        self.weir(&["get", "pods", "-o", "wide"])?;
        note("every pod serves TCP 81 (x, y, z: also 80, UDP 80/81); no policy yet, so all should connect:");
        let out = self.weir_out(&["probe", "--port", "81"])?;
        let blocked = out
            .lines()
            .skip(1)
            .map(|l| l.matches('X').count())
            .sum::<usize>();
        anyhow::ensure!(
            blocked == 0,
            "{blocked} pod pairs could not connect with no policy loaded"
        );
        let state = StateDir::new(&self.cluster);
        Cluster::load(&state.cluster_file())
            .with_context(|| state.cluster_file().display().to_string())
    }

    fn step2(
        &self,
        app1: &RealizedPod,
        app2: &RealizedPod,
        app3: &RealizedPod,
    ) -> anyhow::Result<()> {
        title(2, "The founding paper's L7 scenario: HTTP rules judged inline by weir's workers, no proxy");
        note("demo/app1 serves HTTP on port 80 (a small server the demo runs in its network namespace: GET /public... → 200, anything else → 404);");
        note("the rule: to app1 on TCP 80 only app2, and only GET /public...");
        let ip = app1.ipv4.context("demo/app1 has no IPv4 address")?;
        let url = |p: &str| format!("http://{ip}:{HTTP_PORT}{p}");
        let f = self.file("demo-l7.yaml", L7)?;
        self.apply(&f)?;
        self.wait_until("the L7 rule to be enforced", || {
            self.curl_quiet(app2, &["-X", "POST", &url("/public/hello")])
                .code
                == "403"
        })?;
        let ok = self.curl(app2, &[&url("/public/hello")])?;
        let post = self.curl(app2, &["-X", "POST", &url("/public/hello")])?;
        let private = self.curl(app2, &[&url("/private")])?;
        let l4 = self.curl(app3, &[&url("/public/hello")])?;
        anyhow::ensure!(
            ok.code == "200" && ok.body.contains("public: hello"),
            "GET /public/hello from app2: {} {}",
            ok.code,
            ok.body
        );
        anyhow::ensure!(post.code == "403", "POST from app2: {}", post.code);
        anyhow::ensure!(private.code == "403", "GET /private: {}", private.code);
        anyhow::ensure!(l4.code == "000", "app3 got an answer: {}", l4.code);
        note("200 from the server; both 403s are weir's (the server never saw those requests); app3 never got a connection (L4)");
        self.weir(&[
            "explain",
            "--from",
            "demo/app2",
            "--to",
            "demo/app1",
            "--port",
            "80",
            "--http",
            "GET /private",
        ])?;
        std::thread::sleep(Duration::from_millis(300));
        self.weir(&["flows", "--reason", "l7-denied"])?;
        Ok(())
    }

    fn step3(
        &self,
        app1: &RealizedPod,
        app2: &RealizedPod,
        app3: &RealizedPod,
        dns: &RealizedPod,
    ) -> anyhow::Result<()> {
        title(
            3,
            "A DNS rule: app3 may ask the DNS pod only for allowed.example and *.allowed.example",
        );
        let dns_ip = dns.ipv4.context("demo/dns has no IPv4 address")?;
        let ip = |p: &RealizedPod| p.ipv4.map(|a| a.to_string()).unwrap_or_default();
        let args = vec![
            "netns".to_string(),
            "exec".into(),
            dns.netns.clone(),
            "dnsmasq".into(),
            "--no-daemon".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={dns_ip}"),
            format!("--address=/allowed.example/{}", ip(app1)),
            format!("--address=/blocked.example/{}", ip(app2)),
            format!(
                "--pid-file={}",
                self.cleanup.dir.join("dnsmasq.pid").display()
            ),
        ];
        println!("$ ip {} &", args.join(" "));
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start dnsmasq (scripts/setup.sh installs it)")?;
        *self
            .cleanup
            .dnsmasq
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(child);
        let f = self.file("demo-dns.yaml", DNS)?;
        self.apply(&f)?;
        let at = format!("@{dns_ip}");
        let dig = |name: &str| -> Vec<String> {
            vec![
                "dig".into(),
                at.clone(),
                name.into(),
                "A".into(),
                "+time=2".into(),
                "+tries=1".into(),
                "+notcp".into(),
                "+noall".into(),
                "+comments".into(),
                "+answer".into(),
            ]
        };
        self.wait_until("the DNS rule to be enforced and dnsmasq to answer", || {
            let a = self.pod_run(app3, &dig("blocked.example"), false);
            let b = self.pod_run(app3, &dig("allowed.example"), false);
            a.contains("status: REFUSED") && b.contains("status: NOERROR")
        })?;
        for (name, want) in [
            ("allowed.example", "status: NOERROR"),
            ("www.allowed.example", "status: NOERROR"),
            ("blocked.example", "status: REFUSED"),
        ] {
            let out = self.pod_run(app3, &dig(name), true);
            anyhow::ensure!(out.contains(want), "dig {name}: want {want}: {out}");
        }
        note("the two allowed names were answered by dnsmasq; blocked.example was answered REFUSED by weir (dnsmasq never saw it)");
        self.weir(&[
            "explain",
            "--from",
            "demo/app3",
            "--to",
            "demo/dns",
            "--port",
            "53",
            "--protocol",
            "UDP",
            "--dns",
            "blocked.example",
        ])?;
        Ok(())
    }

    fn step4(&self) -> anyhow::Result<()> {
        title(
            4,
            "Precedence: a NetworkPolicy allow overridden by an Admin-tier deny",
        );
        note("allow-from-y: namespace x accepts only namespace y on TCP 80 (NetworkPolicy);");
        note("quarantine-y-c: an Admin-tier ClusterNetworkPolicy denies pod y/c, whatever x's policies allow");
        let f = self.file("demo-policy.yaml", POLICY)?;
        self.apply(&f)?;
        self.wait_until("the policies to be enforced", || {
            let c = Cluster::load(&StateDir::new(&self.cluster).cluster_file());
            let Ok(c) = c else { return false };
            match (c.pod("y", "c"), c.pod("x", "b")) {
                (Some(from), Some(to)) => !connects(from, to, 80),
                _ => false,
            }
        })?;
        self.weir(&["probe", "--port", "80", "--to", "x"])?;
        self.weir(&["explain", "--from", "y/a", "--to", "x/b", "--port", "80"])?;
        self.weir(&["explain", "--from", "y/c", "--to", "x/b", "--port", "80"])?;
        note("y/c matches allow-from-y as y/a does, but the Admin tier is judged first: quarantine-y-c's deny wins, and explain names the allow it overrides; the offline checker finds the same:");
        println!("$ weir policy check | grep overridden-by-admin");
        let out = self
            .command(&["policy", "check"])
            .output()
            .context("run weir policy check")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let found: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("overridden-by-admin"))
            .collect();
        anyhow::ensure!(
            !found.is_empty(),
            "weir policy check reported no overridden-by-admin finding"
        );
        for l in found {
            println!("{l}");
        }
        Ok(())
    }

    fn step5(&self, server: &RealizedPod, client: &RealizedPod) -> anyhow::Result<()> {
        title(
            5,
            "A revocation: an open connection cut by a policy apply, live",
        );
        let ip = server.ipv4.context("y/a has no IPv4 address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let listener = weir_topo::netns::run_in(&server.netns, move || {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, TICK_PORT)))
        })
        .context("enter y/a's netns")?
        .context("listen in y/a")?;
        listener.set_nonblocking(true)?;
        let s2 = stop.clone();
        let srv = std::thread::spawn(move || tick_server(listener, &s2));
        note(&format!(
            "y/a (node-1) writes a tick every 100 ms to whoever connects on TCP {TICK_PORT}; z/b (node-2) connects and prints what arrives:"
        ));
        let addr = SocketAddr::from((ip, TICK_PORT));
        println!("$ ip netns exec {} nc {ip} {TICK_PORT}", client.netns);
        let mut attempt = 0;
        let stream = loop {
            attempt += 1;
            let r = weir_topo::netns::run_in(&client.netns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            })
            .context("enter z/b's netns")?;
            match r {
                Ok(s) => break s,
                Err(e) if attempt < 3 => println!("  (connect: {e}; again)"),
                Err(e) => return Err(e).context("z/b → y/a: connect"),
            }
        };
        let last = Arc::new(Mutex::new(None::<Instant>));
        let l2 = last.clone();
        let s3 = stop.clone();
        let reader = std::thread::spawn(move || read_ticks(stream, &l2, &s3));
        std::thread::sleep(Duration::from_millis(700));
        let f = self.file("demo-revoke.yaml", REVOKE)?;
        let t = Instant::now();
        self.apply(&f)?;
        let applied = t.elapsed();
        std::thread::sleep(Duration::from_millis(1500));
        self.weir(&["flows", "--to", "y/a", "--port", &TICK_PORT.to_string()])?;
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        let _ = srv.join();
        let last = *last.lock().unwrap_or_else(|e| e.into_inner());
        let last = last.context("no tick arrived before the apply")?;
        let quiet = last.elapsed();
        anyhow::ensure!(
            quiet >= Duration::from_millis(1000),
            "ticks still arrived {:?} ago: the connection was not cut",
            quiet
        );
        let cut = last.saturating_duration_since(t);
        println!(
            "== revoked: the last tick arrived {} ms after the apply began; the apply returned after {} ms; no tick in the {:.1} s since",
            cut.as_millis(),
            applied.as_millis(),
            quiet.as_secs_f64()
        );
        note("the open connection was judged again on its next packet under the new policy and dropped (the `revoked` record above)");
        Ok(())
    }

    fn step6(&self, app1: &RealizedPod, app2: &RealizedPod) -> anyhow::Result<()> {
        title(6, &format!("Side by side: HTTP requests/s — a ROUGH INDICATION on this machine, not a benchmark (wrk, 1 thread, 8 keep-alive connections, {BENCH_SECS} s each, GET /public/x)"));
        let ip = app1.ipv4.context("demo/app1 has no IPv4 address")?;
        let url = format!("http://{ip}:{HTTP_PORT}/public/x");
        let wrk_args =
            |url: &str| format!("wrk -t1 -c8 -d{BENCH_SECS}s --latency --timeout 2s {url}");
        note("weir with the L7 rule (demo-l7.yaml: every request judged inline):");
        println!("$ ip netns exec {} {}", app2.netns, wrk_args(&url));
        let l7 = weir_perf::tools::wrk(&app2.netns, &url, BENCH_SECS, 8, LOAD_CORE)?;
        println!("  {:.0} requests/s", l7.requests_per_s);
        note("weir without the L7 rule (demo-l4.yaml: the same admission at L4 only):");
        let f7 = self.file("demo-l7.yaml", L7)?;
        let f4 = self.file("demo-l4.yaml", L4)?;
        self.delete(&f7)?;
        self.apply(&f4)?;
        self.wait_until("the L4-only rule to be enforced", || {
            weir_perf::http::status_of(
                &app2.netns,
                SocketAddr::from((ip, HTTP_PORT)),
                "POST",
                "/public/x",
            ) == 404
        })?;
        println!("$ ip netns exec {} {}", app2.netns, wrk_args(&url));
        let l4 = weir_perf::tools::wrk(&app2.netns, &url, BENCH_SECS, 8, LOAD_CORE)?;
        println!("  {:.0} requests/s", l4.requests_per_s);
        note("the kernel path with an haproxy L7 detour, as a proxy-based CNI does it (a cluster without weir, docs/examples/demo-kernel-peer.yaml: the node netns routes, nftables sends app2 → app1 TCP 80 to haproxy, mode http, GET /public only):");
        let k = self.kernel_peer(&wrk_args)?;
        let rows = [
            ("weir + L7 rule", l7.requests_per_s),
            ("weir, L4 rule only", l4.requests_per_s),
            ("kernel + haproxy L7 detour", k),
        ];
        println!("\n  a rough indication on this machine (2 shared vCPUs, {BENCH_SECS} s each, one run):");
        println!(
            "  {:<28} {:>12} {:>22}",
            "path", "requests/s", "÷ kernel+haproxy"
        );
        for (name, v) in rows {
            println!(
                "  {:<28} {:>12.0} {:>22}",
                name,
                v,
                if k > 0.0 {
                    format!("{:.2}×", v / k)
                } else {
                    "-".into()
                }
            );
        }
        if l4.requests_per_s > 0.0 {
            println!(
                "  weir with ÷ without the L7 rule: {:.2}×",
                l7.requests_per_s / l4.requests_per_s
            );
        }
        // Back to the paper's rule for whoever explores with --keep.
        self.delete(&f4)?;
        self.apply(&f7)?;
        Ok(())
    }

    /// The kernel peer: build, detour, measure, remove; requests/s.
    fn kernel_peer(&self, wrk_args: &dyn Fn(&str) -> String) -> anyhow::Result<f64> {
        use weir_perf::peers::{nft_ruleset, Haproxy, Nft};
        anyhow::ensure!(
            weir_perf::tools::have("haproxy") && weir_perf::tools::have("wrk"),
            "haproxy and wrk are needed: run scripts/setup.sh"
        );
        let spec = weir_topo::manifest::parse_str(KERNEL_PEER, "demo-kernel-peer.yaml")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let k = weir_perf::kernel::KernelPath::build(&self.cleanup.kernel, &spec)?;
        k.enable_forwarding()?;
        let node = k.cluster.nodes.first().context("kernel peer: no node")?;
        let node_ip = node.ipv4.context("kernel peer: node has no IPv4")?;
        let p = |n: &str| {
            k.cluster
                .pod("demo", n)
                .cloned()
                .with_context(|| format!("kernel peer: no pod demo/{n}"))
        };
        let (app1, app2) = (p("app1")?, p("app2")?);
        let (ip1, ip2) = (
            app1.ipv4.context("kernel peer: app1 has no IPv4")?,
            app2.ipv4.context("kernel peer: app2 has no IPv4")?,
        );
        let _nft = Nft::load(
            &node.netns,
            &nft_ruleset(ip2, ip1, 0, Some((node_ip, HAPROXY_PORT))),
        )?;
        let _h = Haproxy::start(
            &node.netns,
            &self.cleanup.dir.join("haproxy"),
            HAPROXY_PORT,
            1,
        )?;
        let a = SocketAddr::from((ip1, HTTP_PORT));
        let _srv = weir_perf::http::HttpServer::start(&app1.netns, a, LOAD_CORE)?;
        let (public, private) = (
            weir_perf::http::status_of(&app2.netns, a, "GET", "/public/x"),
            weir_perf::http::status_of(&app2.netns, a, "GET", "/private"),
        );
        anyhow::ensure!(
            public == 200 && private == 403,
            "kernel peer: GET /public/x → {public}, GET /private → {private} (want 200, 403 from haproxy)"
        );
        let url = format!("http://{ip1}:{HTTP_PORT}/public/x");
        println!("$ ip netns exec {} {}", app2.netns, wrk_args(&url));
        let r = weir_perf::tools::wrk(&app2.netns, &url, BENCH_SECS, 8, LOAD_CORE)?;
        println!("  {:.0} requests/s", r.requests_per_s);
        Ok(r.requests_per_s)
    }

    /// `--keep`: what to try next.
    fn explore(&self, app1: &RealizedPod, app2: &RealizedPod) {
        let ip = app1.ipv4.map(|a| a.to_string()).unwrap_or_default();
        self.cleanup.keep.store(true, Ordering::Relaxed);
        println!("\n=== 7/7 The cluster stays up (--keep). Explore it:");
        println!("  export WEIR_CLUSTER={}", self.cluster);
        println!("  weir get pods -o wide");
        println!("  weir probe --port 80 --to x");
        println!(
            "  weir explain --from demo/app2 --to demo/app1 --port 80 --http 'POST /public/a'"
        );
        println!("  weir flows -f                      # follow new flows and drops");
        println!("  weir status");
        if self.api {
            println!(
                "  weir kubectl get pods -A           # the API server is the source of truth"
            );
            println!("  weir kubectl delete -f docs/examples/demo-l7.yaml");
        } else {
            println!("  weir delete -f docs/examples/demo-l7.yaml");
        }
        println!(
            "  ip netns exec {} curl -s http://{ip}:81   # app1's test server answers its name",
            app2.netns
        );
        println!(
            "  (app1's HTTP server on :80 and dnsmasq ran inside the demo and stopped with it)"
        );
        println!("  weir down                          # remove everything");
    }

    // ---- helpers --------------------------------------------------------

    /// A manifest file for a printed command: docs/examples/NAME when the
    /// demo runs from the repository (same text), else a copy in the
    /// demo's temporary directory.
    fn file(&self, name: &str, text: &str) -> anyhow::Result<String> {
        let docs = Path::new("docs/examples").join(name);
        if std::fs::read_to_string(&docs).is_ok_and(|t| t == text) {
            return Ok(docs.display().to_string());
        }
        let p = self.cleanup.dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        Ok(p.display().to_string())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env("WEIR_CLUSTER", &self.cluster)
            .stdin(Stdio::null());
        c
    }

    /// Prints and runs `weir ARGS` (its output goes to ours).
    fn weir(&self, args: &[&str]) -> anyhow::Result<()> {
        println!("$ weir {}", shell_words(args));
        let _ = std::io::stdout().flush();
        let st = self.command(args).status().context("run weir")?;
        anyhow::ensure!(st.success(), "weir {} failed ({st})", shell_words(args));
        Ok(())
    }

    /// Prints and runs `weir ARGS`, printing and returning its output.
    fn weir_out(&self, args: &[&str]) -> anyhow::Result<String> {
        println!("$ weir {}", shell_words(args));
        let out = self.command(args).output().context("run weir")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        anyhow::ensure!(
            out.status.success(),
            "weir {} failed: {}",
            shell_words(args),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(text)
    }

    /// `weir apply -f F` (files) or `weir kubectl apply -f F` (API server).
    fn apply(&self, f: &str) -> anyhow::Result<()> {
        if self.api {
            self.weir(&["kubectl", "apply", "-f", f])
        } else {
            self.weir(&["apply", "-f", f])
        }
    }

    fn delete(&self, f: &str) -> anyhow::Result<()> {
        if self.api {
            self.weir(&["kubectl", "delete", "-f", f])
        } else {
            self.weir(&["delete", "-f", f])
        }
    }

    /// Polls `ok` (every 200 ms, 60 s at most). `weir apply` returns when
    /// the dataplanes run the change; through the API server, the agent
    /// brings it there a moment after `kubectl apply` returns.
    fn wait_until(&self, what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        let t = Instant::now();
        let mut said = false;
        loop {
            if ok() {
                if said {
                    println!("  ({:.1} s)", t.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
            if !said && t.elapsed() > Duration::from_millis(500) {
                println!("  (waiting for {what})");
                said = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ip netns exec NETNS ARGV...` in `pod`: stdout (printed when `show`).
    fn pod_run(&self, pod: &RealizedPod, argv: &[String], show: bool) -> String {
        if show {
            println!(
                "$ ip netns exec {} {}",
                pod.netns,
                shell_words(&argv.iter().map(String::as_str).collect::<Vec<_>>())
            );
        }
        let out: Option<Output> = Command::new("ip")
            .args(["netns", "exec", &pod.netns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .ok();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if show {
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                println!("  {l}");
            }
        }
        text
    }

    fn curl_argv(args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["curl", "-s", "-m", "2", "-w", "\\n=> HTTP %{http_code}\\n"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    fn parse_curl(text: &str) -> Curl {
        let code = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("=> HTTP "))
            .unwrap_or("000")
            .trim()
            .to_string();
        let body = text
            .lines()
            .filter(|l| !l.starts_with("=> HTTP "))
            .collect::<Vec<_>>()
            .join("\n");
        Curl { code, body }
    }

    /// Prints and runs curl in `pod`.
    fn curl(&self, pod: &RealizedPod, args: &[&str]) -> anyhow::Result<Curl> {
        let text = self.pod_run(pod, &Self::curl_argv(args), true);
        let c = Self::parse_curl(&text);
        if c.code == "000" {
            println!("  (no connection: curl timed out)");
        }
        Ok(c)
    }

    fn curl_quiet(&self, pod: &RealizedPod, args: &[&str]) -> Curl {
        Self::parse_curl(&self.pod_run(pod, &Self::curl_argv(args), false))
    }
}

/// Whether `from` connects to `to`:`port` (TCP, IPv4, 300 ms).
fn connects(from: &RealizedPod, to: &RealizedPod, port: u16) -> bool {
    let Some(ip) = to.ipv4 else { return false };
    let a = SocketAddr::from((ip, port));
    matches!(
        weir_topo::netns::run_in(&from.netns, move || {
            TcpStream::connect_timeout(&a, Duration::from_millis(300))
        }),
        Ok(Ok(_))
    )
}

/// Writes `tick N` every 100 ms to each accepted connection until `stop`.
fn tick_server(l: TcpListener, stop: &AtomicBool) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut n = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((c, _)) = l.accept() {
            let _ = c.set_nonblocking(true);
            conns.push(c);
        }
        if Instant::now() >= next {
            n += 1;
            let line = format!("tick {n}\n");
            // A full send buffer (the peer no longer acknowledges) is not
            // an error here: the tick is simply not sent.
            conns.retain_mut(|c| match c.write(line.as_bytes()) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            });
            next += Duration::from_millis(100);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Prints the ticks as they arrive (one in two, with the time), records
/// the arrival of the last, until `stop`.
fn read_ticks(s: TcpStream, last: &Mutex<Option<Instant>>, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let t0 = Instant::now();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => {
                println!("  [{:6.2} s] connection closed", t0.elapsed().as_secs_f64());
                return;
            }
            Ok(_) if line.ends_with('\n') => {
                n += 1;
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                if n % 2 == 1 {
                    println!(
                        "  [{:6.2} s] z/b ← y/a: {}",
                        t0.elapsed().as_secs_f64(),
                        line.trim()
                    );
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                println!(
                    "  [{:6.2} s] connection error: {e}",
                    t0.elapsed().as_secs_f64()
                );
                return;
            }
        }
    }
}

fn title(n: usize, what: &str) {
    println!("\n=== {n}/7 {what}");
}

fn note(what: &str) {
    println!("# {what}");
}

/// Arguments as a shell would need them quoted (for the printed commands).
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,%".contains(c))
            {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
