//! Real traffic through a running dataplane: a "node" network namespace with
//! pod namespaces behind veths, XDP attached on the node side, one worker.
//!
//! Needs root (namespaces, XDP, AF_XDP); skipped otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use weir_dataplane::runtime::{Dataplane, DataplaneConfig, DataplaneStatus, PollMode};
use weir_dataplane::{Endpoint, Port, Snapshot, SnapshotSpec};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn run(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        mac[i] = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

struct Pod {
    ns: String,
    veth: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    mac: [u8; 6],
    node_mac: [u8; 6],
}

/// The namespaces of one test; deleted on drop (veths go with them).
struct Topo {
    node: String,
    tag: String,
    pods: Vec<Pod>,
    namespaces: Vec<String>,
}

impl Topo {
    fn new() -> Topo {
        let tag = format!(
            "{}{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let node = format!("wdt-{tag}-node");
        let mut t = Topo {
            node: node.clone(),
            tag,
            pods: Vec::new(),
            namespaces: Vec::new(),
        };
        run(&["ip", "netns", "add", &node]);
        t.namespaces.push(node.clone());
        run(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            "169.254.1.1/32",
            "dev",
            "lo",
        ]);
        t
    }

    fn add_pod(&mut self) -> usize {
        let i = self.pods.len() + 1;
        let ns = format!("wdt-{}-p{i}", self.tag);
        let veth = format!("wv{}p{i}", self.tag);
        assert!(veth.len() <= 15, "{veth}");
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        let n = self.node.as_str();
        run(&[
            "ip",
            "-n",
            n,
            "link",
            "add",
            &veth,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
        ]);
        run(&["ip", "-n", n, "link", "set", &veth, "up"]);
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "fe80::1/64",
            "dev",
            &veth,
            "nodad",
        ]);
        let v4 = Ipv4Addr::new(10, 77, 0, i as u8);
        let v6: Ipv6Addr = format!("fd77::{i}").parse().unwrap();
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{v4}/32"),
            "dev",
            "eth0",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        run(&[
            "ip", "-n", &ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ]);
        run(&[
            "ip", "netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off",
        ]);
        let mac = parse_mac(&run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "cat",
            "/sys/class/net/eth0/address",
        ]));
        let node_mac = parse_mac(&run(&[
            "ip",
            "netns",
            "exec",
            n,
            "cat",
            &format!("/sys/class/net/{veth}/address"),
        ]));
        self.pods.push(Pod {
            ns,
            veth,
            v4,
            v6,
            mac,
            node_mac,
        });
        i - 1
    }

    fn snapshot(&self, generation: u64) -> Snapshot {
        let spec = SnapshotSpec {
            generation,
            node: "wdt".into(),
            node_ipv4: Some(Ipv4Addr::new(169, 254, 1, 1)),
            node_ipv6: None,
            ports: self
                .pods
                .iter()
                .map(|p| Port {
                    name: p.veth.clone(),
                    mac: p.node_mac,
                    mtu: 1500,
                })
                .collect(),
            endpoints: self
                .pods
                .iter()
                .enumerate()
                .map(|(i, p)| Endpoint {
                    name: format!("default/{}", p.ns),
                    port: i as u16,
                    mac: p.mac,
                    ipv4: Some(p.v4),
                    ipv6: Some(p.v6),
                })
                .collect(),
            ..Default::default()
        };
        Snapshot::build(spec).unwrap()
    }

    fn ping(&self, from: usize, to: IpAddr, count: u32) -> bool {
        let c = count.to_string();
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.pods[from].ns,
            "ping",
            "-n",
            "-q",
            "-c",
            &c,
            "-i",
            "0.2",
            "-W",
            "1",
            &to.to_string(),
        ])
        .status
        .success()
    }

    /// Pings until one reply comes back (a new port may take a round or two).
    fn ping_eventually(&self, from: usize, to: IpAddr) -> bool {
        (0..10).any(|_| self.ping(from, to, 1))
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// Runs `f` on a new thread inside network namespace `ns`.
fn in_ns<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
}

fn enter(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

type Job = Box<dyn FnOnce(&mut Option<Dataplane>) + Send>;

/// A thread in the node namespace that owns the dataplane (its workers are
/// spawned from it, so they run in that namespace too).
struct NodeThread {
    tx: Option<mpsc::Sender<Job>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl NodeThread {
    fn new(ns: &str) -> NodeThread {
        let (tx, rx) = mpsc::channel::<Job>();
        let join = in_ns(ns, move || {
            let mut dp: Option<Dataplane> = None;
            while let Ok(job) = rx.recv() {
                job(&mut dp);
            }
            drop(dp);
        });
        NodeThread {
            tx: Some(tx),
            join: Some(join),
        }
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<Dataplane>) -> R + Send + 'static,
    ) -> R {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send(Box::new(move |dp| {
                let _ = rtx.send(f(dp));
            }))
            .unwrap();
        rrx.recv().expect("node thread died")
    }

    fn status(&self) -> DataplaneStatus {
        self.call(|dp| dp.as_ref().expect("running").status())
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn udp_roundtrip(t: &Topo, from: usize, to: usize, v6: bool) {
    let (dst_ip, src_ip): (IpAddr, IpAddr) = if v6 {
        (t.pods[to].v6.into(), t.pods[from].v6.into())
    } else {
        (t.pods[to].v4.into(), t.pods[from].v4.into())
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(&t.pods[to].ns, move || {
        let s = UdpSocket::bind(SocketAddr::new(dst_ip, 5353)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = 0;
        for _ in 0..20 {
            let Ok((n, peer)) = s.recv_from(&mut buf) else {
                break;
            };
            s.send_to(&buf[..n], peer).unwrap();
            got += 1;
        }
        got
    });
    ready_rx.recv().unwrap();
    let client = in_ns(&t.pods[from].ns, move || {
        let s = UdpSocket::bind(SocketAddr::new(src_ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut echoed = 0;
        for i in 0..20u32 {
            let msg = [i as u8; 1000];
            s.send_to(&msg, SocketAddr::new(dst_ip, 5353)).unwrap();
            let mut buf = [0u8; 2048];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if n == 1000 && buf[0] == i as u8 {
                    echoed += 1;
                }
            }
        }
        echoed
    });
    let echoed = client.join().unwrap();
    let _ = server.join();
    assert!(echoed >= 18, "UDP v6={v6}: only {echoed}/20 echoed");
}

fn tcp_transfer(t: &Topo, from: usize, to: usize, bytes: usize) -> Duration {
    try_tcp_transfer(t, from, to, bytes).unwrap()
}

fn try_tcp_transfer(t: &Topo, from: usize, to: usize, bytes: usize) -> Result<Duration, String> {
    let dst: IpAddr = t.pods[to].v4.into();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(&t.pods[to].ns, move || {
        let l = TcpListener::bind(SocketAddr::new(dst, 5001)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        let mut sum = 0u64;
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sum = buf[..n].iter().fold(sum, |s, &b| s.wrapping_add(b as u64));
            total += n;
        }
        c.write_all(&(total as u64).to_be_bytes()).unwrap();
        c.write_all(&sum.to_be_bytes()).unwrap();
        (total, sum)
    });
    ready_rx.recv().unwrap();
    let client = in_ns(&t.pods[from].ns, move || {
        let start = std::time::Instant::now();
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(dst, 5001), Duration::from_secs(5))
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut sent = 0usize;
        let mut sum = 0u64;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            c.write_all(&chunk[..n]).unwrap();
            sum = chunk[..n]
                .iter()
                .fold(sum, |s, &b| s.wrapping_add(b as u64));
            sent += n;
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = [0u8; 16];
        c.read_exact(&mut reply).unwrap();
        let total = u64::from_be_bytes(reply[..8].try_into().unwrap());
        let rsum = u64::from_be_bytes(reply[8..].try_into().unwrap());
        assert_eq!(total as usize, bytes, "server got a different byte count");
        assert_eq!(rsum, sum, "payload checksum differs");
        start.elapsed()
    });
    let took = client.join().map_err(|_| "TCP client failed".to_string())?;
    let (total, _) = server.join().map_err(|_| "TCP server failed".to_string())?;
    assert_eq!(total, bytes);
    Ok(took)
}

/// Round trips of one byte over TCP; returns (p50, p99).
fn tcp_rr(t: &Topo, from: usize, to: usize, n: usize) -> (Duration, Duration) {
    let dst: IpAddr = t.pods[to].v4.into();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(&t.pods[to].ns, move || {
        let l = TcpListener::bind(SocketAddr::new(dst, 5002)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while c.read_exact(&mut b).is_ok() {
            c.write_all(&b).unwrap();
        }
    });
    ready_rx.recv().unwrap();
    let client = in_ns(&t.pods[from].ns, move || {
        let mut c = TcpStream::connect(SocketAddr::new(dst, 5002)).unwrap();
        c.set_nodelay(true).unwrap();
        let mut rtts = Vec::with_capacity(n);
        let mut b = [7u8; 1];
        for _ in 0..n {
            let s = std::time::Instant::now();
            c.write_all(&b).unwrap();
            c.read_exact(&mut b).unwrap();
            rtts.push(s.elapsed());
        }
        rtts.sort();
        (rtts[n / 2], rtts[n * 99 / 100])
    });
    let r = client.join().unwrap();
    let _ = server.join();
    r
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn test_config() -> DataplaneConfig {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    DataplaneConfig {
        cores: vec![ncpu.min(2) - 1],
        queues: 2,
        poll: PollMode::Adaptive,
        ..DataplaneConfig::default()
    }
}

#[test]
fn pods_talk_through_weir_and_fail_closed_after_stop() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut topo = Topo::new();
    topo.add_pod();
    topo.add_pod();
    let node = NodeThread::new(&topo.node);
    let snap = topo.snapshot(1);
    node.call(move |dp| {
        *dp = Some(Dataplane::start(test_config(), snap).expect("start"));
    });
    let before = node.status();
    assert_eq!(before.workers.len(), 1);

    let (p1v4, p1v6) = (topo.pods[1].v4.into(), topo.pods[1].v6.into());
    assert!(topo.ping_eventually(0, p1v4), "first IPv4 ping failed");
    assert!(topo.ping(0, p1v4, 5), "IPv4 ping");
    assert!(topo.ping_eventually(0, p1v6), "first IPv6 ping failed");
    assert!(topo.ping(0, p1v6, 5), "IPv6 ping");
    udp_roundtrip(&topo, 0, 1, false);
    udp_roundtrip(&topo, 1, 0, true);
    let bytes = 8 << 20;
    let took = tcp_transfer(&topo, 0, 1, bytes);
    eprintln!(
        "TCP {} MiB in {:?} ({:.2} Gb/s)",
        bytes >> 20,
        took,
        bytes as f64 * 8.0 / took.as_secs_f64() / 1e9
    );

    let after = node.status();
    let w = &after.workers[0];
    eprintln!("{}", serde_json::to_string_pretty(&after).unwrap());
    // Pings: 2×(1+5) requests and their replies; UDP: 2×20 each way; TCP:
    // at least the payload in full-size frames one way.
    let min_frames = 24 + 80 + (bytes / 1500) as u64;
    assert!(
        w.rx_packets - before.workers[0].rx_packets >= min_frames,
        "rx_packets {} < {min_frames}",
        w.rx_packets
    );
    assert!(w.tx_packets - before.workers[0].tx_packets >= min_frames);
    assert!(w.rx_bytes >= bytes as u64);
    assert_eq!(w.generation, 1);
    assert!(w.latency_ns.count > 0);
    let xdp = after.ports[0].xdp.expect("port counters");
    assert!(xdp.redirected > 0);

    // A pod added while running.
    let p3 = topo.add_pod();
    let snap = topo.snapshot(2);
    node.call(move |dp| dp.as_mut().unwrap().apply(snap).expect("apply"));
    let p3v4: IpAddr = topo.pods[p3].v4.into();
    assert!(topo.ping_eventually(0, p3v4), "new pod not served");
    assert!(topo.ping(p3, p1v4, 3), "new pod cannot reach pod 2");
    assert!(
        topo.ping_eventually(p3, topo.pods[0].v6.into()),
        "new pod IPv6"
    );
    let st = node.status();
    assert_eq!(st.workers[0].generation, 2);
    assert_eq!(st.workers[0].sockets, 6);

    // Stop: XDP stays attached, no socket bound: the pods' traffic is dropped.
    node.call(|dp| dp.take().unwrap().stop());
    assert!(!topo.ping(0, p1v4, 2), "traffic still flows after stop");
    let link = run(&["ip", "-n", &topo.node, "link", "show", &topo.pods[0].veth]);
    assert!(link.contains("xdp"), "XDP detached after stop: {link}");
}

#[test]
fn removing_a_port_reclaims_its_frames() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut topo = Topo::new();
    topo.add_pod();
    topo.add_pod();
    let node = NodeThread::new(&topo.node);
    let snap = topo.snapshot(1);
    let cfg = DataplaneConfig {
        frames_per_worker: Some(2048),
        ..test_config()
    };
    let total = 2048u64;
    node.call(move |dp| *dp = Some(Dataplane::start(cfg, snap).expect("start")));
    assert!(topo.ping_eventually(0, topo.pods[1].v4.into()));

    // Drop pod 2's port from the snapshot.
    let mut spec = topo.snapshot(2).spec;
    spec.ports.truncate(1);
    spec.endpoints.truncate(1);
    let snap = Snapshot::build(spec).unwrap();
    node.call(move |dp| dp.as_mut().unwrap().apply(snap).expect("apply"));
    // The worker publishes its free-frame count every 250 ms.
    let mut ok = false;
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let st = node.status();
        let w = &st.workers[0];
        // Two sockets left, each with at least its fill floor on its fill
        // ring; every other frame is free, on a TX ring or held, and the
        // ledger agrees with the sockets' counts: none leaked, including
        // those the removed sockets' rings held.
        last = format!("{w:?}");
        let f = &w.frames;
        let sums = f.free + f.fill + f.tx + f.held + f.unaccounted == f.total;
        if w.sockets == 2
            && w.generation == 2
            && f.total == total
            && sums
            && f.unaccounted == 0
            && f.fill >= 2 * f.fill_floor
            && f.fill_floor == 64
            && w.free_frames == f.free
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "frames not reclaimed after port removal: {last}");
    assert!(
        !topo.ping(0, topo.pods[1].v4.into(), 2),
        "removed pod still reachable"
    );
    node.call(|dp| dp.take().unwrap().stop());
}

/// The topology's snapshot without pod 0 (its port and endpoint; the
/// others' port ids renumbered).
fn without_first_pod(topo: &Topo, generation: u64) -> Snapshot {
    let mut spec = topo.snapshot(generation).spec;
    spec.ports.remove(0);
    spec.endpoints.remove(0);
    for (i, e) in spec.endpoints.iter_mut().enumerate() {
        e.port = i as u16;
    }
    Snapshot::build(spec).unwrap()
}

/// The first socket a worker's UMEM got is special to libxdp (it is the
/// UMEM's own descriptor, which stays open and bound to its interface and
/// queue for the UMEM's life). A port removed from the snapshot and added
/// back on the same interface (the underlay when the last peer leaves and
/// one comes back; any port whose mode changes) must bind again.
#[test]
fn a_port_removed_and_added_back_binds_again() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut topo = Topo::new();
    topo.add_pod();
    topo.add_pod();
    let node = NodeThread::new(&topo.node);
    let snap = topo.snapshot(1);
    node.call(move |dp| *dp = Some(Dataplane::start(test_config(), snap).expect("start")));
    assert!(topo.ping_eventually(1, topo.pods[0].v4.into()));
    // Pod 0's port (the UMEM's first socket) leaves the snapshot...
    let snap = without_first_pod(&topo, 2);
    node.call(move |dp| {
        dp.as_mut()
            .unwrap()
            .apply(snap)
            .expect("apply without pod 0")
    });
    assert!(
        !topo.ping(1, topo.pods[0].v4.into(), 1),
        "removed pod reachable"
    );
    // ...and comes back on the same veth.
    let snap = topo.snapshot(3);
    let res = node.call(move |dp| dp.as_mut().unwrap().apply(snap).map_err(|e| e.to_string()));
    assert_eq!(res, Ok(()), "re-adding the first port");
    assert!(
        topo.ping_eventually(1, topo.pods[0].v4.into()),
        "pod 0 not reachable after its port came back"
    );
    node.call(|dp| dp.take().unwrap().stop());
}

/// Pods come and go on a node with no other port (a single node without
/// peers): the pod whose socket came first is deleted (its veth too), and
/// a new pod must still attach.
#[test]
fn a_new_port_binds_after_the_first_ports_interface_is_gone() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut topo = Topo::new();
    topo.add_pod();
    topo.add_pod();
    let node = NodeThread::new(&topo.node);
    let snap = topo.snapshot(1);
    node.call(move |dp| *dp = Some(Dataplane::start(test_config(), snap).expect("start")));
    assert!(topo.ping_eventually(1, topo.pods[0].v4.into()));
    // Pod 0 is deleted: out of the snapshot, then its veth is gone.
    let snap = without_first_pod(&topo, 2);
    node.call(move |dp| {
        dp.as_mut()
            .unwrap()
            .apply(snap)
            .expect("apply without pod 0")
    });
    run(&["ip", "-n", &topo.node, "link", "del", &topo.pods[0].veth]);
    // A new pod arrives.
    topo.add_pod();
    let snap = without_first_pod(&topo, 3);
    let res = node.call(move |dp| dp.as_mut().unwrap().apply(snap).map_err(|e| e.to_string()));
    assert_eq!(
        res,
        Ok(()),
        "attaching a pod after the first one's interface went"
    );
    assert!(
        topo.ping_eventually(1, topo.pods[2].v4.into()),
        "new pod not reachable"
    );
    node.call(|dp| dp.take().unwrap().stop());
}

#[test]
fn every_poll_mode_forwards() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut topo = Topo::new();
    topo.add_pod();
    topo.add_pod();
    let node = NodeThread::new(&topo.node);
    for (g, poll) in [PollMode::Busy, PollMode::Wakeup, PollMode::Adaptive]
        .into_iter()
        .enumerate()
    {
        let snap = topo.snapshot(g as u64 + 1);
        let cfg = DataplaneConfig {
            poll,
            ..test_config()
        };
        node.call(move |dp| *dp = Some(Dataplane::start(cfg, snap).expect("start")));
        assert!(
            topo.ping_eventually(0, topo.pods[1].v4.into()),
            "{poll:?}: ping"
        );
        assert!(topo.ping(1, topo.pods[0].v6.into(), 2), "{poll:?}: ping6");
        eprintln!("{poll:?}: TCP");
        if let Err(e) = try_tcp_transfer(&topo, 1, 0, 2 << 20) {
            let st = node.status();
            panic!(
                "{poll:?}: {e}\n{}",
                serde_json::to_string_pretty(&st).unwrap()
            );
        }
        let st = node.status();
        assert_eq!(st.poll, poll);
        assert!(st.workers[0].tx_packets > 1000, "{poll:?}");
        if poll == PollMode::Busy {
            assert_eq!(st.workers[0].sleeps, 0, "busy polling slept");
        }
        node.call(|dp| dp.take().unwrap().stop());
    }
}

/// Rough numbers, not a test of behaviour: `cargo test --release -p
/// weir-dataplane --test dp_traffic -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_iperf3_and_rr() {
    if !is_root() {
        return;
    }
    let mut topo = Topo::new();
    topo.add_pod();
    topo.add_pod();
    let node = NodeThread::new(&topo.node);
    let poll = match std::env::var("WEIR_POLL").as_deref() {
        Ok("busy") => PollMode::Busy,
        Ok("wakeup") => PollMode::Wakeup,
        _ => PollMode::Adaptive,
    };
    let snap = topo.snapshot(1);
    let cfg = DataplaneConfig {
        poll,
        ..test_config()
    };
    node.call(move |dp| *dp = Some(Dataplane::start(cfg, snap).expect("start")));
    assert!(topo.ping_eventually(0, topo.pods[1].v4.into()));
    let server = topo.pods[1].ns.clone();
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &server, "iperf3", "-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let dst = topo.pods[1].v4.to_string();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &topo.pods[0].ns,
        "taskset",
        "-c",
        "0",
        "iperf3",
        "-c",
        &dst,
        "-t",
        "3",
        "-p",
        "5201",
    ]);
    let _ = srv.wait();
    for l in out
        .lines()
        .filter(|l| l.contains("sender") || l.contains("receiver"))
    {
        eprintln!("iperf3 TCP: {l}");
    }
    let a = node.status();
    // UDP 64-byte flood for pps.
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &server, "iperf3", "-s", "-1", "-p", "5202"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &topo.pods[0].ns,
        "taskset",
        "-c",
        "0",
        "iperf3",
        "-c",
        &dst,
        "-u",
        "-b",
        "0",
        "-l",
        "22",
        "-t",
        "3",
        "-p",
        "5202",
    ]);
    let _ = srv.wait();
    let b = node.status();
    for l in out
        .lines()
        .filter(|l| l.contains("sender") || l.contains("receiver"))
    {
        eprintln!("iperf3 UDP 64B: {l}");
    }
    let secs = (b.monotonic_ns - a.monotonic_ns) as f64 / 1e9;
    eprintln!(
        "dataplane during UDP: {:.0} pps rx, {:.0} pps tx, drops {:?}",
        (b.totals.rx_packets - a.totals.rx_packets) as f64 / secs,
        (b.totals.tx_packets - a.totals.tx_packets) as f64 / secs,
        b.totals.drops
    );
    eprintln!("latency (ns): {:?}", b.workers[0].latency_ns);
    let (p50, p99) = tcp_rr(&topo, 0, 1, 5000);
    eprintln!("TCP RR 1 byte: p50 {p50:?} p99 {p99:?}");
    for (ns, dev) in [
        (topo.pods[0].ns.as_str(), "eth0"),
        (topo.node.as_str(), topo.pods[0].veth.as_str()),
        (topo.node.as_str(), topo.pods[1].veth.as_str()),
        (topo.pods[1].ns.as_str(), "eth0"),
    ] {
        let out = sh(&["ip", "netns", "exec", ns, "ethtool", "-S", dev]);
        let drops: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("drop") || l.contains("full"))
            .filter(|l| !l.trim_end().ends_with(": 0"))
            .map(|l| l.trim().to_string())
            .collect();
        eprintln!("{ns}/{dev} nonzero drop stats: {drops:?}");
    }
    eprintln!(
        "kernel drops: {:?}; xdp: {:?}",
        b.workers[0].kernel, b.ports[1].xdp
    );
    node.call(|dp| dp.take().unwrap().stop());
}
