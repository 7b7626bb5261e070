//! Floods with real traffic (issue 15), on a node whose conntrack holds
//! 4096 entries (`weir up --conntrack-size 4096`): a SYN flood and a flood
//! of new UDP flows from one pod, 5× the table each (four rounds), sent with raw and UDP
//! sockets from pod a at pod b (whose own nftables drop them, so the
//! entries stay unreplied for their full timeout). Established connections
//! a→c keep working through both floods, evictions are counted, a new
//! connection afterwards gets an entry, the dataplane's RSS stays bounded,
//! and the workers' UMEM frame ledger balances once the floods are over.
//! The L7 slot pool's exhaustion is tests/tests/l7_scale.rs
//! (`at_the_configured_limit_new_connections_are_refused`). Needs root,
//! python3 and nft.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use weir_tests::{simple_cluster, TestCluster};

const TABLE: u64 = 4096;
const FLOOD: u64 = 5 * TABLE;

/// Raw-socket SYN flood (or UDP datagrams) from `src` to `dst`: `n` flows,
/// each a new source port / destination port pair.
const FLOODER: &str = r#"
import socket, struct, sys
kind, src, dst, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
sip, dip = socket.inet_aton(src), socket.inet_aton(dst)
if kind == "syn":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    for i in range(n):
        sport, dport = 1024 + i % 60000, 9000 + i // 60000
        h = struct.pack("!HHIIBBHHH", sport, dport, i, 0, 5 << 4, 0x02, 65535, 0, 0)
        c = csum(sip + dip + struct.pack("!BBH", 0, 6, len(h)) + h)
        h = h[:16] + struct.pack("!H", c) + h[18:]
        s.sendto(h, (dst, 0))
else:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for i in range(n):
        socks[i % 16].sendto(b"x", (dst, 20000 + (i // 16) % 40000))
"#;

fn echo_server(netns: &str, addr: SocketAddr) {
    let l = weir_topo::netns::run_in(netns, move || TcpListener::bind(addr))
        .expect("netns")
        .expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn exchange(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).is_ok() && got == msg
}

fn ct(status: &Value, field: &str) -> u64 {
    weir_tests::node_status(status, "node-1")["conntrack"][field]
        .as_u64()
        .unwrap_or(0)
}

/// The kernel's AF_XDP drops (`fill_ring_empty`, `rx_dropped`,
/// `rx_ring_full`) summed over the node's workers.
fn kernel_drops(status: &Value) -> [u64; 3] {
    let mut k = [0u64; 3];
    for w in weir_tests::node_status(status, "node-1")["workers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (i, f) in ["fill_ring_empty", "rx_dropped", "rx_ring_full"]
            .iter()
            .enumerate()
        {
            k[i] += w["kernel"][f].as_u64().unwrap_or(0);
        }
    }
    k
}

fn dataplane_rss_kib(c: &TestCluster) -> u64 {
    let state = std::env::var_os("WEIR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/weir".into());
    let pid = std::fs::read_to_string(state.join(&c.name).join("nodes/node-1/dataplane.pid"))
        .expect("pid");
    let st = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("status");
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn run_ok(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn syn_and_udp_floods_evict_counted_while_established_flows_and_the_frame_ledger_hold() {
    let conntrack_size = TABLE.to_string();
    let c = TestCluster::up_with(
        "fl",
        &simple_cluster("x", &["a", "b", "c"]),
        &["--conntrack-size", &conntrack_size],
    );
    let s0 = c.status();
    assert_eq!(
        ct(&s0, "size"),
        TABLE,
        "--conntrack-size reached the dataplane"
    );
    let topo = c.topology();
    let pod = |n: &str| topo.pod("x", n).expect("pod").clone();
    let (a, b, cc) = (pod("a"), pod("b"), pod("c"));
    let a4 = a.ipv4.expect("v4").to_string();
    let b4 = b.ipv4.expect("v4").to_string();
    // b drops the flood itself: weir sees no reply, the entries stay unreplied.
    let rules = c.file(
        "b.nft",
        "table inet flood {\n  chain in {\n    type filter hook input priority 0;\n    \
         tcp dport 9000-9999 drop\n    udp dport 20000-60000 drop\n  }\n}\n",
    );
    run_ok(
        "nft in b",
        Command::new("ip").args(["netns", "exec", &b.netns, "nft", "-f", &rules]),
    );
    let c_addr = SocketAddr::new(cc.ipv4.expect("v4").into(), 7001);
    echo_server(&cc.netns, c_addr);
    let mut established: Vec<TcpStream> = (0..4)
        .map(|_| {
            weir_topo::netns::run_in(&a.netns, || {
                TcpStream::connect_timeout(&c_addr, Duration::from_secs(3))
            })
            .expect("netns")
            .expect("a→c")
        })
        .collect();
    for s in &mut established {
        assert!(exchange(s, b"before\n"), "exchange before the flood");
    }
    let rss0 = dataplane_rss_kib(&c);
    let inserts0 = ct(&s0, "inserts");

    // Four rounds: the first ones touch what floods can touch (UMEM pages,
    // the flow-log ring filling up to its cap; measured: +9, +10, +2 MiB,
    // then +4 KiB, depending on how many frames the kernel dropped), the
    // last must add under 1 MiB, and the whole growth stays under the UMEM
    // plus 32 MiB.
    let mut rss = vec![rss0];
    for kind in ["syn", "udp", "syn", "udp", "syn", "udp", "syn", "udp"] {
        let before = c.status();
        run_ok(
            kind,
            Command::new("ip").args([
                "netns",
                "exec",
                &a.netns,
                "python3",
                "-c",
                FLOODER,
                kind,
                &a4,
                &b4,
                &FLOOD.to_string(),
            ]),
        );
        let after = c.status();
        let inserted = ct(&after, "inserts") - ct(&before, "inserts");
        let evicted = ct(&after, "evictions") - ct(&before, "evictions");
        let (k0, k1) = (kernel_drops(&before), kernel_drops(&after));
        eprintln!(
            "{kind} flood of {FLOOD} flows: {inserted} inserted, {evicted} evicted; kernel \
             fill-ring-empty/rx-dropped/rx-ring-full +{}/+{}/+{}",
            k1[0] - k0[0],
            k1[1] - k0[1],
            k1[2] - k0[2]
        );
        assert!(
            inserted > TABLE / 4,
            "{kind}: only {inserted} flows reached conntrack"
        );
        assert!(
            evicted > 0,
            "{kind}: a table 5× over its size evicted nothing"
        );
        for (i, s) in established.iter_mut().enumerate() {
            assert!(
                exchange(s, format!("after {kind} {i}\n").as_bytes()),
                "established a→c #{i} broke in the {kind} flood"
            );
        }
        // A new connection still gets an entry (it evicts an unreplied one).
        let mut fresh = weir_topo::netns::run_in(&a.netns, || {
            TcpStream::connect_timeout(&c_addr, Duration::from_secs(3))
        })
        .expect("netns")
        .unwrap_or_else(|e| panic!("a new a→c connection after the {kind} flood: {e}"));
        assert!(exchange(&mut fresh, b"fresh\n"));
        if kind == "udp" {
            rss.push(dataplane_rss_kib(&c));
        }
    }
    let s1 = c.status();
    // The flooded socket went to the hot target, the whole fill ring (1024,
    // the default ring size; docs/datapath.md, "The frame budget"), and
    // keeps frames above the floor after the flood.
    let w1 = &weir_tests::node_status(&s1, "node-1")["workers"][0]["frames"];
    assert_eq!(w1["fill_hot"], 1024, "fill_hot: {w1}");
    assert!(
        w1["sockets_hot"].as_u64().unwrap_or(0) >= 1,
        "no socket above the floor after the floods: {w1}"
    );
    assert!(ct(&s1, "inserts") - inserts0 > 4 * TABLE);
    assert!(ct(&s1, "entries") <= TABLE);
    // Memory is bounded: conntrack is allocated once at start, and later
    // rounds of floods find every page the first ones touched.
    eprintln!("dataplane RSS (KiB) before and after each round: {rss:?}");
    let umem_kib = weir_tests::node_status(&s0, "node-1")["config"]["umem_bytes"]
        .as_u64()
        .expect("umem_bytes")
        / 1024;
    assert!(
        rss[4] < rss[3] + 1024 && rss[4] < rss0 + umem_kib + 32 * 1024,
        "dataplane RSS kept growing: {rss:?} KiB (UMEM {umem_kib} KiB)"
    );

    // The UMEM frame ledger balances once the traffic is over (published
    // every 250 ms: wait for a quiet one).
    let mut settled = false;
    let mut last = Value::Null;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        last = c.status();
        let workers = weir_tests::node_status(&last, "node-1")["workers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        settled = !workers.is_empty()
            && workers.iter().all(|w| {
                let f = &w["frames"];
                let n = |k: &str| f[k].as_u64().unwrap_or(u64::MAX);
                n("held") == 0
                    && n("unaccounted") == 0
                    && n("free") + n("fill") + n("tx") == n("total")
            });
        if settled {
            break;
        }
    }
    assert!(
        settled,
        "frames not all accounted for after the floods: {}",
        weir_tests::node_status(&last, "node-1")["workers"]
    );
}
