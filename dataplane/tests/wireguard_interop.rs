//! Interop of weir's WireGuard (`weir_dataplane::wireguard`, boringtun's
//! protocol state) with wireguard-go, the reference userspace WireGuard,
//! built from its Go module by scripts/wireguard-go.sh. Needs root.
//!
//! Two namespaces the test makes, joined by a veth (192.168.77.1/.2):
//! - "weir": a thread in it drives one `WgPeer` over a UDP socket on
//!   192.168.77.1:51871 and answers ICMP echo to its address 10.77.0.1;
//! - "wg": wireguard-go with its TUN device (10.77.0.2/24), configured
//!   through its UAPI socket with weir's public key as its peer.
//!
//! What it proves: weir as initiator (its echo request, sent again until a
//! session exists, is answered by the kernel behind wireguard-go),
//! weir as responder to data (ping from the wg namespace answered through
//! weir's side), and that a real data message of wireguard-go's replayed
//! or with one flipped byte is refused with `wireguard-replay` /
//! `wireguard-auth-failed`. Without weir's side answering, the pings fail.
//!
//! What it does not: this is the module over a socket, not the AF_XDP
//! worker pass (docs/encryption.md says what is not wired yet).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_dataplane::wireguard::{self, Opened, Sealed, WgPeer};
use weir_dataplane::DropReason;

const WEIR_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const WG_UNDERLAY: &str = "192.168.77.2";
const WEIR_INNER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const WG_INNER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const WG_PORT: u16 = 51820;
const MARKER: &[u8] = b"weir-interop-marker";

fn run(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed");
}

/// What the test made; dropped (even on a failed assertion) it stops
/// wireguard-go and deletes the namespaces (and so the veth and TUN).
struct Guard {
    netns: Vec<String>,
    wg: Option<Child>,
    sock: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.wg.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(&self.sock);
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 ICMP echo (request: type 8, reply: 0) with `payload`.
fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![ty, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&icmp);
    p
}

#[derive(Default)]
struct Seen {
    /// Echo replies to weir's own request (weir initiated).
    replies: u32,
    /// Echo requests from the wg side that weir answered.
    answered: u32,
    drops: HashMap<DropReason, u32>,
    /// The replay / tamper checks ran on a real wireguard-go data message.
    checked_wire: bool,
}

/// weir's side: one peer, a UDP socket, ICMP echo at 10.77.0.1.
fn weir_side(mut peer: WgPeer, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let sock = UdpSocket::bind((WEIR_UNDERLAY, wireguard::DEFAULT_PORT)).expect("bind 51871");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let to = format!("{WG_UNDERLAY}:{WG_PORT}");
    let mut out = vec![0u8; 2048];
    let mut plain = vec![0u8; 2048];
    let mut buf = vec![0u8; 2048];
    // weir initiates: its first echo request becomes the handshake
    // initiation; it sends one again on every tick until a reply came.
    let req = icmp_echo(WEIR_INNER, WG_INNER, 8, 0x77, 1, MARKER);
    let mut last_tick = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        if last_tick.elapsed() >= Duration::from_millis(250) {
            last_tick = Instant::now();
            if let Some(m) = peer.tick(&mut out) {
                sock.send_to(m, &to).unwrap();
            }
            if seen.lock().unwrap().replies == 0 {
                if let Ok(Sealed::Handshake(m) | Sealed::Data(m)) = peer.seal(&req, &mut out) {
                    sock.send_to(m, &to).unwrap();
                }
            }
        }
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(_) => continue,
        };
        let dgram = buf[..n].to_vec();
        // The first real data message of wireguard-go's (type 4, not a
        // keepalive): a copy with one flipped byte first (a counter not
        // seen yet: the tag decides), then the genuine one below, then
        // the genuine one again (the replay window decides).
        let check_wire = dgram[0] == 4 && n > 48 && !seen.lock().unwrap().checked_wire;
        if check_wire {
            let mut t = dgram.clone();
            let i = t.len() - 20;
            t[i] ^= 0x80;
            if let Err(r) = peer.open(&t, &mut out) {
                *seen.lock().unwrap().drops.entry(r).or_default() += 1;
            }
        }
        let res = peer.open(&dgram, &mut plain).map(|o| match o {
            Opened::Plain(p) => Some(p.to_vec()),
            Opened::Reply(m) => {
                sock.send_to(m, &to).unwrap();
                None
            }
            Opened::Nothing => None,
        });
        let mut s = seen.lock().unwrap();
        let p = match res {
            Err(r) => {
                *s.drops.entry(r).or_default() += 1;
                continue;
            }
            Ok(None) => continue,
            Ok(Some(p)) => p,
        };
        if check_wire {
            s.checked_wire = true;
            if let Err(r) = peer.open(&dgram, &mut out) {
                *s.drops.entry(r).or_default() += 1;
            }
        }
        if p.len() < 28 || p[9] != 1 || p[12..16] != WG_INNER.octets() {
            continue;
        }
        let hl = usize::from(p[0] & 0x0f) * 4;
        match p[hl] {
            0 if p[16..20] == WEIR_INNER.octets() => s.replies += 1,
            8 if p[16..20] == WEIR_INNER.octets() => {
                let id = u16::from_be_bytes([p[hl + 4], p[hl + 5]]);
                let seq = u16::from_be_bytes([p[hl + 6], p[hl + 7]]);
                let reply = icmp_echo(WEIR_INNER, WG_INNER, 0, id, seq, &p[hl + 8..]);
                if let Ok(Sealed::Data(m)) = peer.seal(&reply, &mut out) {
                    sock.send_to(m, &to).unwrap();
                    s.answered += 1;
                }
            }
            _ => {}
        }
    }
}

fn wait_for(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn wireguard_go() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/wireguard-go.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("wireguard-go.sh");
    assert!(
        out.status.success(),
        "wireguard-go.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("wireguard-go")
}

#[test]
fn weir_wireguard_interoperates_with_wireguard_go() {
    let wg_bin = wireguard_go();
    let tag = format!("wgi{}", std::process::id() % 100_000);
    let (ns_a, ns_b) = (format!("{tag}-weir"), format!("{tag}-wg"));
    let tun = format!("{tag}t");
    let stop = Arc::new(AtomicBool::new(false));
    let mut g = Guard {
        netns: Vec::new(),
        wg: None,
        sock: PathBuf::from(format!("/var/run/wireguard/{tun}.sock")),
        stop: stop.clone(),
    };
    for n in [&ns_a, &ns_b] {
        run(&["ip", "netns", "add", n]);
        g.netns.push(n.clone());
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let (va, vb) = (format!("{tag}a"), format!("{tag}b"));
    run(&[
        "ip", "-n", &ns_a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &ns_b,
    ]);
    run(&[
        "ip",
        "-n",
        &ns_a,
        "addr",
        "add",
        "192.168.77.1/24",
        "dev",
        &va,
    ]);
    run(&[
        "ip",
        "-n",
        &ns_b,
        "addr",
        "add",
        "192.168.77.2/24",
        "dev",
        &vb,
    ]);
    run(&["ip", "-n", &ns_a, "link", "set", &va, "up"]);
    run(&["ip", "-n", &ns_b, "link", "set", &vb, "up"]);

    // Keys: weir's from its key file code, wireguard-go's made the same way.
    let dir = std::env::temp_dir().join(format!("{tag}-state"));
    let _ = fs::remove_dir_all(&dir);
    let weir_key = wireguard::load_or_create_private_key(&dir).expect("weir key");
    fs::remove_dir_all(&dir).unwrap();
    let wg_key = wireguard::generate_private_key().unwrap();

    // wireguard-go in its namespace, configured over its UAPI socket.
    let child = Command::new("ip")
        .args(["netns", "exec", &ns_b])
        .arg(&wg_bin)
        .args(["-f", &tun])
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wireguard-go");
    g.wg = Some(child);
    let sock = g.sock.clone();
    wait_for("the UAPI socket", Duration::from_secs(10), || sock.exists());
    let cfg = format!(
        "set=1\nprivate_key={}\nlisten_port={WG_PORT}\npublic_key={}\nendpoint={WEIR_UNDERLAY}:{}\nallowed_ip={WEIR_INNER}/32\n\n",
        hex(&wg_key),
        hex(&wireguard::public_key(&weir_key)),
        wireguard::DEFAULT_PORT,
    );
    let mut uapi = UnixStream::connect(&g.sock).expect("connect UAPI");
    uapi.write_all(cfg.as_bytes()).unwrap();
    let mut resp = [0u8; 64];
    let n = uapi.read(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp[..n]).to_string();
    assert!(resp.starts_with("errno=0"), "UAPI set: {resp:?}");
    run(&[
        "ip",
        "-n",
        &ns_b,
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        &tun,
    ]);
    run(&["ip", "-n", &ns_b, "link", "set", &tun, "up"]);

    // weir's side, in its namespace.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let peer = WgPeer::new(&weir_key, &wireguard::public_key(&wg_key), 1, None);
    let (s2, st2) = (seen.clone(), stop.clone());
    let ns_path = PathBuf::from("/run/netns").join(&ns_a);
    let weir = std::thread::spawn(move || {
        let f = fs::File::open(&ns_path).expect("open netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        weir_side(peer, st2, s2);
    });

    // 1. weir initiated: its queued echo request crossed, the reply came back.
    wait_for(
        "the echo reply to weir's first packet",
        Duration::from_secs(15),
        || seen.lock().unwrap().replies >= 1,
    );
    // 2. From wireguard-go's side, answered by weir.
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &ns_b, "ping", "-c", "3", "-i", "0.2", "-W", "3",
        ])
        .arg(WEIR_INNER.to_string())
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "ping through wireguard-go to weir: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    stop.store(true, Ordering::SeqCst);
    weir.join().expect("weir side");
    let s = seen.lock().unwrap();
    assert!(
        s.answered >= 3,
        "weir answered {} echo requests",
        s.answered
    );
    assert!(s.checked_wire);
    assert_eq!(
        s.drops.get(&DropReason::WireguardReplay),
        Some(&1),
        "{:?}",
        s.drops
    );
    assert_eq!(
        s.drops.get(&DropReason::WireguardAuthFailed),
        Some(&1),
        "{:?}",
        s.drops
    );
    drop(g);
}
