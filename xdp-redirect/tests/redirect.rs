//! Root-only integration tests: real namespaces, a real veth, real pings.
//!
//! Each test builds its own pair of namespaces (`wxt-<id>-n` for the node,
//! `wxt-<id>-p` for the pod) joined by a veth, attaches the program to the
//! node-side end from the test thread (after `setns` into the node namespace),
//! and pings from the pod to the node end's address. Nothing outside those
//! namespaces is touched; a guard deletes them even when a test fails.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use nix::sched::{setns, CloneFlags};
use weir_xdp::{detach, AttachOptions, Redirector, XdpMode};

const NODE_ADDR: &str = "10.77.0.1";
const POD_ADDR: &str = "10.77.0.2";
const CHILD_ENV: &str = "WEIR_XDP_TEST_CHILD_ATTACH";

/// libxdp creates AF_XDP sockets without `SOCK_CLOEXEC`: a child forked by
/// another test thread meanwhile would inherit the socket and keep it (and
/// its XSKMAP entry) alive. Spawns hold this for reading; socket creation
/// (until `FD_CLOEXEC` is set) holds it for writing.
static SPAWN: RwLock<()> = RwLock::new(());

fn spawn_guard() -> RwLockReadGuard<'static, ()> {
    SPAWN.read().unwrap_or_else(|e| e.into_inner())
}

/// Namespaces and veth of one test; removed on drop.
struct Topo {
    node_ns: String,
    pod_ns: String,
    /// The node-side veth end, where the program goes.
    host_if: String,
}

impl Topo {
    fn new() -> Topo {
        Topo::with_queues(None)
    }

    /// `queues`: rx/tx queue count of both veth ends (kernel default: one per CPU).
    fn with_queues(queues: Option<u32>) -> Topo {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!(
            "{:06x}",
            (std::process::id() ^ nanos ^ (SEQ.fetch_add(1, Ordering::Relaxed) << 20)) & 0xff_ffff
        );
        let t = Topo {
            node_ns: format!("wxt-{id}-n"),
            pod_ns: format!("wxt-{id}-p"),
            host_if: format!("wxt-{id}h"),
        };
        let pod_if = format!("wxt-{id}p");
        ip(&["netns", "add", &t.node_ns]);
        ip(&["netns", "add", &t.pod_ns]);
        let q = queues.map(|q| q.to_string());
        let qargs: Vec<&str> = match &q {
            Some(q) => vec!["numrxqueues", q, "numtxqueues", q],
            None => vec![],
        };
        let mut args = vec!["-n", &t.node_ns, "link", "add", &t.host_if];
        args.extend(&qargs);
        args.extend(["type", "veth", "peer", "name", &pod_if]);
        args.extend(&qargs);
        args.extend(["netns", &t.pod_ns]);
        ip(&args);
        for (ns, dev, addr) in [
            (&t.node_ns, &t.host_if, NODE_ADDR),
            (&t.pod_ns, &pod_if, POD_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        t
    }

    /// Moves the calling thread into the node namespace (where `attach` and
    /// `detach` then act).
    fn enter_node(&self) {
        enter_netns(&self.node_ns);
    }

    /// One ping round from the pod to the node end: did any reply come back?
    fn ping(&self) -> bool {
        let _g = spawn_guard();
        Command::new("ip")
            .args(["netns", "exec", &self.pod_ns])
            .args(["ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", NODE_ADDR])
            .output()
            .expect("run ping")
            .status
            .success()
    }

    /// The pod's neighbour entry for the node end has a MAC (ARP resolved).
    fn arp_resolved(&self) -> bool {
        let out = ip_out(&["-n", &self.pod_ns, "neigh", "show", NODE_ADDR]);
        out.contains("lladdr")
    }

    /// The XDP program id on the node end, if any (`prog/xdp id N`).
    fn xdp_prog_id(&self) -> Option<u32> {
        let out = ip_out(&["-n", &self.node_ns, "-d", "link", "show", &self.host_if]);
        let rest = &out[out.find("prog/xdp id ")? + "prog/xdp id ".len()..];
        rest.split_whitespace().next()?.parse().ok()
    }

    fn flush_neigh(&self) {
        ip(&["-n", &self.pod_ns, "neigh", "flush", "all"]);
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let _g = spawn_guard();
        for ns in [&self.pod_ns, &self.node_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn enter_netns(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).expect("open netns");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

fn ip(args: &[&str]) {
    let _g = spawn_guard();
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(args: &[&str]) -> String {
    let _g = spawn_guard();
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn opts(mode: XdpMode) -> AttachOptions {
    AttachOptions {
        mode,
        queues: 4,
        local_v4: vec![],
        local_v6: vec![],
        underlay_udp_port: None,
        host_port: false,
    }
}

/// Sends one UDP datagram from the pod to the node end's `port`.
fn send_udp(t: &Topo, port: u16) {
    let _g = spawn_guard();
    let ok = Command::new("ip")
        .args(["netns", "exec", &t.pod_ns, "bash", "-c"])
        .arg(format!("echo weir > /dev/udp/{NODE_ADDR}/{port}"))
        .status()
        .expect("run bash")
        .success();
    assert!(ok, "sending UDP to {port}");
}

#[test]
fn underlay_mode_takes_only_the_tunnel_port() {
    let t = Topo::new();
    t.enter_node();
    let o = AttachOptions {
        local_v4: vec![NODE_ADDR.parse().unwrap()],
        underlay_udp_port: Some(4789),
        ..opts(XdpMode::Native)
    };
    let r = Redirector::attach(&t.host_if, &o).expect("attach");
    t.flush_neigh();
    // ARP and ICMP are the kernel's: ping works.
    assert!(t.ping(), "underlay mode passes non-tunnel traffic");
    let before = r.counters().unwrap();
    assert_eq!(
        before.redirected + before.dropped_no_socket,
        0,
        "{before:?}"
    );
    // UDP to another port passes to the kernel.
    send_udp(&t, 5000);
    let c = r.counters().unwrap();
    assert_eq!(c.dropped_no_socket, 0, "{c:?}");
    assert!(c.passed > before.passed, "{c:?}");
    // UDP to the tunnel port is ours: no socket bound, so dropped.
    send_udp(&t, 4789);
    let c2 = r.counters().unwrap();
    // (`passed` is not compared: the kernel's own ARP/NDP between the two
    // sends passes too, and made an exact count flaky.)
    assert_eq!(c2.dropped_no_socket, 1, "{c2:?}");
    assert_eq!(c2.redirected, 0, "{c2:?}");
    detach(&t.host_if).expect("detach");
}

#[test]
fn no_socket_drops_ip_but_passes_arp_and_detach_restores() {
    let t = Topo::new();
    t.enter_node();
    assert!(t.ping(), "baseline: ping must work without XDP");

    let mut r = Redirector::attach(&t.host_if, &opts(XdpMode::Native)).expect("attach");
    assert_eq!(r.ifname(), t.host_if);
    assert!(t.xdp_prog_id().is_some(), "ip link shows the program");
    t.flush_neigh();
    assert!(!t.ping(), "fail closed: no socket bound, ping must fail");
    assert!(
        t.arp_resolved(),
        "ARP must still resolve through the kernel"
    );
    let c = r.counters().expect("counters");
    assert!(c.dropped_no_socket >= 3, "{c:?}");
    assert!(c.passed >= 1, "{c:?}");
    assert_eq!(c.redirected, 0, "{c:?}");

    // The node's own address: frames for it go to the kernel.
    r.set_local_addrs(&[NODE_ADDR.parse::<Ipv4Addr>().unwrap()], &[])
        .expect("set_local_addrs");
    assert!(t.ping(), "local address must pass to the kernel");
    r.set_local_addrs(&[], &[]).expect("set_local_addrs");
    assert!(!t.ping(), "removed local address must be ours again");

    // Clearing a queue with no socket is fine; out of range is an error.
    r.clear_socket(0).expect("clear_socket on empty queue");
    assert!(r.clear_socket(99).is_err());

    drop(r);
    assert!(
        t.xdp_prog_id().is_some(),
        "dropping the Redirector must not detach"
    );
    assert!(!t.ping());

    detach(&t.host_if).expect("detach");
    assert_eq!(t.xdp_prog_id(), None);
    assert!(t.ping(), "after detach ping works");
    detach(&t.host_if).expect("detach with nothing attached is ok");
}

/// Not a test on its own: with `CHILD_ENV=<netns>:<ifname>` set, attaches and
/// exits (the parent test checks what outlives the process).
#[test]
fn host_port_mode_takes_frames_to_the_nodes_addresses() {
    let t = Topo::new();
    t.enter_node();
    let o = AttachOptions {
        local_v4: vec![NODE_ADDR.parse().unwrap()],
        host_port: true,
        ..opts(XdpMode::Native)
    };
    let mut r = Redirector::attach(&t.host_if, &o).expect("attach");
    t.flush_neigh();
    // The node's address is the dataplane's now: no socket, dropped.
    assert!(!t.ping(), "host port: frames to the node go to the socket");
    assert!(t.arp_resolved(), "ARP still resolves through the kernel");
    let c = r.counters().unwrap();
    assert!(c.dropped_no_socket >= 3, "{c:?}");
    // Switched off at run time: the kernel's again.
    r.set_host_port(false).expect("set_host_port");
    assert!(t.ping(), "without a host port the node's address passes");
    r.set_host_port(true).expect("set_host_port");
    assert!(!t.ping(), "switched on again");
    detach(&t.host_if).expect("detach");
}

#[test]
fn child_attach_helper() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (ns, ifname) = spec.split_once(':').expect("netns:ifname");
    enter_netns(ns);
    let r = Redirector::attach(ifname, &opts(XdpMode::Native)).expect("child attach");
    // Exit without running any destructor: as a crash would.
    std::mem::forget(r);
    std::process::exit(0);
}

#[test]
fn attachment_outlives_the_process_and_reattach_replaces() {
    let t = Topo::new();
    t.enter_node();

    let _g = spawn_guard();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_attach_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, format!("{}:{}", t.node_ns, t.host_if))
        .status()
        .expect("spawn child");
    assert!(status.success(), "child attach failed: {status}");
    drop(_g);

    let first = t
        .xdp_prog_id()
        .expect("program still attached after the process exited");
    assert!(!t.ping(), "fail closed after the attaching process exited");

    // A new process (here: this one) replaces it, atomically in the same mode.
    let r = Redirector::attach(&t.host_if, &opts(XdpMode::Native)).expect("re-attach");
    let second = t.xdp_prog_id().expect("attached");
    assert_ne!(first, second, "re-attach must replace the program");
    assert!(!t.ping());
    assert!(r.counters().unwrap().dropped_no_socket >= 3);

    // Switching mode replaces too.
    let g = Redirector::attach(&t.host_if, &opts(XdpMode::Generic)).expect("attach generic");
    let third = t.xdp_prog_id().expect("attached");
    assert_ne!(second, third);
    let out = ip_out(&["-n", &t.node_ns, "link", "show", &t.host_if]);
    assert!(out.contains("xdpgeneric"), "{out}");
    assert!(!t.ping());
    assert!(g.counters().unwrap().dropped_no_socket >= 3);

    detach(&t.host_if).expect("detach");
    assert_eq!(t.xdp_prog_id(), None);
    assert!(t.ping(), "after detach ping works");
}

/// A bound AF_XDP socket receives the pod's frames (`redirected` counts);
/// closing it makes the kernel drop it from the XSKMAP and frames drop again.
#[test]
fn bound_socket_receives_and_closing_it_fails_closed() {
    use std::num::NonZeroU32;
    use std::os::fd::AsRawFd;
    use xsk_rs::config::{BindFlags, LibxdpFlags, SocketConfig, UmemConfig, XdpFlags};
    use xsk_rs::{Socket, Umem};

    let t = Topo::with_queues(Some(1));
    t.enter_node();
    let mut r = Redirector::attach(&t.host_if, &opts(XdpMode::Native)).expect("attach");

    let (umem, mut frames) =
        Umem::new(UmemConfig::default(), NonZeroU32::new(64).unwrap(), false).expect("umem");
    let cfg = SocketConfig::builder()
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .xdp_flags(XdpFlags::empty())
        .bind_flags(BindFlags::XDP_COPY)
        .build();
    let iface = t.host_if.parse().expect("interface name");
    let no_spawns = SPAWN.write().unwrap_or_else(|e| e.into_inner());
    // SAFETY: one socket on this UMEM and (interface, queue), libxdp's own
    // program load inhibited (weir's program is attached).
    let (tx, mut rx, rings) = unsafe { Socket::new(cfg, &umem, &iface, 0) }.expect("xsk socket");
    nix::fcntl::fcntl(
        rx.fd().as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .expect("FD_CLOEXEC on the xsk socket");
    drop(no_spawns);
    let (mut fq, cq) = rings.expect("fill/completion rings of the first socket");
    let (fill, rest) = frames.split_at_mut(32);
    // SAFETY: these descriptors belong to `umem` and are handed to the kernel
    // once; none is read until the RX ring returns it.
    assert_eq!(unsafe { fq.produce(fill) }, 32);
    r.set_socket(0, rx.fd().as_raw_fd()).expect("set_socket");

    assert!(!t.ping(), "nobody answers from userspace");
    // SAFETY: `rest` holds descriptors of `umem` that are not in any ring;
    // consume overwrites them with received ones.
    let n = unsafe { rx.poll_and_consume(&mut rest[..16], 1000) }.expect("poll");
    assert!(n >= 1, "no frame reached the socket");
    let echo_requests = rest[..n]
        .iter()
        .filter(|d| {
            // SAFETY: `d` came from this UMEM's RX ring and is not in any ring now.
            let data = unsafe { umem.data(d) };
            let f = data.contents();
            f.len() >= 34
                && f[12..14] == [0x08, 0x00]
                && f[23] == 1
                && f[30..34] == NODE_ADDR.parse::<Ipv4Addr>().unwrap().octets()
        })
        .count();
    assert!(
        echo_requests >= 1,
        "the ICMP echo requests arrive in the socket"
    );
    let c = r.counters().unwrap();
    assert!(c.redirected >= 3, "{c:?}");
    assert_eq!(c.dropped_no_socket, 0, "{c:?}");

    // The dataplane dies: its socket closes and leaves the XSKMAP. (With
    // libxdp the first socket of a UMEM shares the UMEM's fd: the socket is
    // closed only when the UMEM goes too.)
    drop((tx, rx, fq, cq));
    drop(frames);
    drop(umem);
    assert!(!t.ping());
    let after = r.counters().unwrap();
    assert_eq!(after.redirected, c.redirected, "{after:?}");
    assert!(after.dropped_no_socket >= 3, "{after:?}");
    detach(&t.host_if).expect("detach");
    assert!(t.ping());
}

/// Multi-buffer (issue 22 part 4): with the program in `xdp.frags`, the
/// node end of a veth at MTU 9000 takes the program, and an 8000-byte UDP
/// datagram reaches a socket bound with `XDP_USE_SG` as a chain of
/// descriptors (`XDP_PKT_CONTD` on all but the last), the headers in the
/// first frame and the chain's lengths adding up to the frame's.
#[test]
fn jumbo_frame_arrives_as_a_descriptor_chain() {
    use std::num::NonZeroU32;
    use std::os::fd::AsRawFd;
    use xsk_rs::config::{BindFlags, LibxdpFlags, SocketConfig, UmemConfig, XdpFlags};
    use xsk_rs::{Socket, Umem};

    let t = Topo::with_queues(Some(1));
    let pod_if = format!("{}p", &t.host_if[..t.host_if.len() - 1]);
    ip(&["-n", &t.node_ns, "link", "set", &t.host_if, "mtu", "9000"]);
    ip(&["-n", &t.pod_ns, "link", "set", &pod_if, "mtu", "9000"]);
    t.enter_node();
    let mut r = Redirector::attach(&t.host_if, &opts(XdpMode::Native))
        .expect("attach on a veth at MTU 9000 (xdp.frags)");

    let (umem, mut frames) =
        Umem::new(UmemConfig::default(), NonZeroU32::new(64).unwrap(), false).expect("umem");
    let cfg = SocketConfig::builder()
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .xdp_flags(XdpFlags::empty())
        .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_SG)
        .build();
    let iface = t.host_if.parse().expect("interface name");
    let no_spawns = SPAWN.write().unwrap_or_else(|e| e.into_inner());
    // SAFETY: one socket on this UMEM and (interface, queue), libxdp's own
    // program load inhibited (weir's program is attached).
    let (tx, mut rx, rings) =
        unsafe { Socket::new(cfg, &umem, &iface, 0) }.expect("xsk socket with XDP_USE_SG");
    nix::fcntl::fcntl(
        rx.fd().as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .expect("FD_CLOEXEC on the xsk socket");
    drop(no_spawns);
    let (mut fq, cq) = rings.expect("fill/completion rings of the first socket");
    let (fill, rest) = frames.split_at_mut(32);
    // SAFETY: these descriptors belong to `umem` and are handed to the kernel
    // once; none is read until the RX ring returns it.
    assert_eq!(unsafe { fq.produce(fill) }, 32);
    r.set_socket(0, rx.fd().as_raw_fd()).expect("set_socket");
    // A static neighbour: no ARP needed (the socket takes everything IP).
    ip(&[
        "-n",
        &t.pod_ns,
        "neigh",
        "replace",
        NODE_ADDR,
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        &pod_if,
    ]);
    {
        let _g = spawn_guard();
        let ok = Command::new("ip")
            .args(["netns", "exec", &t.pod_ns, "python3", "-c"])
            .arg(format!(
                "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                 s.setsockopt(socket.IPPROTO_IP, 10, 0); s.sendto(b'j'*8000, ('{NODE_ADDR}', 7000))"
            ))
            .status()
            .expect("run python3")
            .success();
        assert!(ok, "sending the jumbo datagram");
    }
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        // SAFETY: `rest` holds descriptors of `umem` that are not in any
        // ring; consume overwrites them with received ones.
        let n = unsafe { rx.poll_and_consume(&mut rest[got.len()..], 200) }.expect("poll");
        got.extend(
            rest[got.len()..got.len() + n]
                .iter()
                .map(|d| (d.lengths().data(), d.options())),
        );
        if got.iter().any(|&(_, o)| o & 1 == 0) {
            break;
        }
    }
    eprintln!("descriptors: {got:?}");
    assert!(got.len() >= 2, "a chain, not one frame: {got:?}");
    let total: usize = got.iter().map(|&(l, _)| l).sum();
    assert_eq!(total, 14 + 20 + 8 + 8000, "{got:?}");
    let (last, head) = got.split_last().unwrap();
    assert!(head.iter().all(|&(_, o)| o & 1 == 1), "{got:?}");
    assert_eq!(last.1 & 1, 0, "{got:?}");
    drop((tx, rx, fq, cq));
    drop(frames);
    drop(umem);
}
