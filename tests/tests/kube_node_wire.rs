//! The source identity rides the tunnel header between node agents
//! (`--encap vxlan`, the default, and `--encap geneve`): two
//! nodes of a cluster weir did not build (a REAL kube-apiserver, an agent
//! each, pods attached by the test kubelet through weir-cni) joined through
//! an underlay namespace of the test's own (a bridge, one veth port per
//! node). tcpdump on node a's port of that bridge captures the tunnel frames
//! of a cross-node probe; tshark decodes the VXLAN-GBP header (Group Policy
//! ID) or the Geneve header (weir's identity option, class 0xFFF1 type 1),
//! which must carry the identity weir assigned to the inner source pod (as
//! node a's published snapshot numbers it), for a's requests and for b's
//! replies; a relabelled with kubectl gets a new identity, and the wire
//! follows it. Needs root, Go, tcpdump and tshark (scripts/setup.sh).

use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::k8s::ControlPlane;
use weir_tests::kubelet::*;
use weir_tests::unique_name;

/// b admits TCP 80 and UDP 53 from every pod of namespace kn (a policy in
/// force: a node carries identities once one is loaded).
const NETPOL_B_FROM_KN: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: b-from-kn, namespace: kn}\n\
spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n\
\x20 ingress:\n  - from: [{podSelector: {}}]\n    ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 53}]\n";

/// A tcpdump of the test's; `Drop` stops it.
struct Capture(Option<Child>);

impl Capture {
    fn start(netns: &str, iface: &str, file: &Path, filter: &str) -> Capture {
        let _ = std::fs::remove_file(file);
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-U", "--immediate-mode"])
            .args(["-n", "-i", iface, "-w"])
            .arg(file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        let t0 = Instant::now();
        while !file.exists() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        Capture(Some(child))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (identity header present, identity, VNI, inner IPv4 source) of every
/// tunnel frame: VXLAN-GBP's G flag and Group Policy ID, or Geneve's
/// options (weir's: class 0xFFF1, type 1, the 32-bit identity).
fn tunnel_rows(file: &Path, encap: &str) -> Vec<(bool, u64, u64, String)> {
    let fields: &[&str] = if encap == "geneve" {
        &["geneve.options", "geneve.vni"]
    } else {
        &["vxlan.flag_g", "vxlan.gbp", "vxlan.vni"]
    };
    let mut c = Command::new("tshark");
    c.arg("-r").arg(file).args(["-T", "fields"]);
    for f in fields.iter().chain(&["ip.src"]) {
        c.args(["-e", f]);
    }
    let out = c
        .args(["-E", "occurrence=l"])
        .output()
        .expect("tshark (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let num = |s: &str| {
        let s = s.trim();
        s.strip_prefix("0x")
            .map(|h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|| s.parse())
            .unwrap_or_else(|e| panic!("not a number: {s:?}: {e}"))
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let r: Vec<&str> = l.split('\t').collect();
            assert_eq!(r.len(), fields.len() + 1, "row {r:?}");
            let src = r[r.len() - 1].to_string();
            if encap == "geneve" {
                // One 8-byte option: class(2) type(1) length(1) identity(4).
                let hex: String = r[0].chars().filter(|c| c.is_ascii_hexdigit()).collect();
                let ours = hex.len() == 16 && hex[..6].eq_ignore_ascii_case("fff101");
                let id = if ours {
                    num(&format!("0x{}", &hex[8..]))
                } else {
                    0
                };
                (ours, id, num(r[1]), src)
            } else {
                (
                    matches!(r[0], "1" | "True" | "true"),
                    num(r[1]),
                    num(r[2]),
                    src,
                )
            }
        })
        .collect()
}

/// The identity node's published snapshot gives `ip` (its policy's address
/// → class → identity tables).
fn snapshot_identity(node: &NodeUnderTest, ip: Ipv4Addr) -> Option<u64> {
    let path = node
        .state
        .join(format!("kube/nodes/{}/snapshot.json", node.name));
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    fn find(v: &Value) -> Option<&Value> {
        if v.get("classes").is_some() && v.get("addresses").is_some() {
            return Some(v);
        }
        match v {
            Value::Object(m) => m.values().find_map(find),
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    let policy = find(&v)?;
    let class = policy["addresses"]
        .as_array()?
        .iter()
        .find(|e| e[0].as_str() == Some(ip.to_string().as_str()))?[1]
        .as_u64()?;
    policy["classes"][class as usize].as_u64()
}

#[test]
fn the_source_identity_rides_the_vxlan_gbp_header() {
    identity_on_the_wire("kwv", "vxlan");
}

#[test]
fn the_source_identity_rides_weirs_geneve_option() {
    identity_on_the_wire("kwg", "geneve");
}

fn identity_on_the_wire(prefix: &str, encap: &str) {
    let cp = ControlPlane::start(prefix);
    let tag = unique_name(prefix);
    let mut netns = Netns(Vec::new());
    let (ns_a, ns_b, ns_u) = (format!("wa{tag}"), format!("wb{tag}"), format!("wu{tag}"));
    netns.add(&ns_u);
    netns.add(&ns_a);
    netns.add(&ns_b);
    let ip = |ns: &str, args: &[&str]| {
        let ok = Command::new("ip")
            .args(["-n", ns])
            .args(args)
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip -n {ns} {args:?}");
    };
    // The underlay: a bridge in its own netns, a veth port per node (two
    // queues on the node's end).
    ip(&ns_u, &["link", "add", "br0", "type", "bridge"]);
    ip(&ns_u, &["link", "set", "br0", "up"]);
    for (ns, port, addr) in [
        (&ns_a, "ua", "192.168.79.1/24"),
        (&ns_b, "ub", "192.168.79.2/24"),
    ] {
        ip(
            ns,
            &[
                "link",
                "add",
                "ul0",
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &ns_u,
            ],
        );
        ip(&ns_u, &["link", "set", port, "master", "br0", "up"]);
        ip(ns, &["addr", "add", addr, "dev", "ul0"]);
        ip(ns, &["link", "set", "ul0", "up"]);
        ip(ns, &["link", "set", "lo", "up"]);
    }
    let mut a = node_under_test(&cp, &format!("a-{tag}"), &ns_a, &tag);
    let mut b = node_under_test(&cp, &format!("b-{tag}"), &ns_b, &tag);
    register_node(&cp, &a.name, "10.217.1.0/24", Some("192.168.79.1"));
    register_node(&cp, &b.name, "10.217.2.0/24", Some("192.168.79.2"));
    a.start_agent_with(&["--encap", encap]);
    b.start_agent_with(&["--encap", encap]);
    create_namespace(&cp, &a, "kn");
    let mut pods = Vec::new();
    for (name, n) in [("a", &a), ("b", &b)] {
        let p = attach(
            &cp,
            n,
            &mut netns,
            &format!("w{tag}-{name}"),
            "kn",
            name,
            &pod_yaml("kn", name, &n.name),
        );
        start_servers(&p.netns_path);
        write_status(&cp, &p);
        pods.push(p);
    }
    let (pa, pb) = (&pods[0], &pods[1]);
    let (ip_a, ip_b) = (pa.ip.unwrap(), pb.ip.unwrap());
    cp.kubectl_ok(&["apply", "-f", "-"], Some(NETPOL_B_FROM_KN));
    wait_until(&a, "a → b across the nodes with the policy", || {
        tcp_ok(&pa.netns_path, ip_b) && udp_ok(&pa.netns_path, ip_b)
    });

    let file = a.state.join("underlay.pcap");
    let probe_and_decode = |what: &str| {
        let port = if encap == "geneve" { 6081 } else { 4789 };
        let mut cap = Capture::start(&ns_u, "ua", &file, &format!("udp port {port}"));
        for _ in 0..3 {
            assert!(tcp_ok(&pa.netns_path, ip_b), "{what}: a → b TCP");
            assert!(udp_ok(&pa.netns_path, ip_b), "{what}: a → b UDP");
        }
        cap.stop();
        tunnel_rows(&file, encap)
    };
    let check = |what: &str, rows: &[(bool, u64, u64, String)], want_a: u64, want_b: u64| {
        let from_a: Vec<_> = rows.iter().filter(|r| r.3 == ip_a.to_string()).collect();
        let from_b: Vec<_> = rows.iter().filter(|r| r.3 == ip_b.to_string()).collect();
        assert!(
            from_a.len() >= 6 && from_b.len() >= 6,
            "{what}: {} frames from a, {} from b captured: {rows:?}",
            from_a.len(),
            from_b.len()
        );
        for (rs, want, who) in [(&from_a, want_a, "a"), (&from_b, want_b, "b")] {
            for r in rs {
                assert!(
                    r.0,
                    "{what}: no identity header on a frame from {who}: {r:?}"
                );
                assert_eq!(r.2, 1, "{what}: VNI of a frame from {who}: {r:?}");
                assert_eq!(
                    r.1, want,
                    "{what}: identity on a frame from pod {who}: {r:?}"
                );
            }
        }
    };

    let id_a = snapshot_identity(&a, ip_a).expect("a's identity in node a's snapshot");
    let id_b = snapshot_identity(&b, ip_b).expect("b's identity in node b's snapshot");
    assert_ne!(id_a, 0, "identity 0 means none");
    assert_eq!(
        snapshot_identity(&b, ip_a),
        Some(id_a),
        "the two agents number a alike"
    );
    let rows = probe_and_decode("before the relabel");
    check("before the relabel", &rows, id_a, id_b);

    // a relabelled: a new identity, on both nodes and on the wire.
    // (Identities are numbered over the sorted (namespace, labels) groups:
    // app=z sorts after b's app=b, so the two pods' numbers change.)
    cp.kubectl_ok(
        &["label", "pod", "-n", "kn", "a", "app=z", "--overwrite"],
        None,
    );
    wait_until(&a, "a's new identity on both nodes", || {
        let (x, y) = (snapshot_identity(&a, ip_a), snapshot_identity(&b, ip_a));
        x.is_some() && x != Some(id_a) && x == y
    });
    let id_a2 = snapshot_identity(&a, ip_a).unwrap();
    let id_b2 = snapshot_identity(&b, ip_b).expect("b's identity");
    wait_until(&a, "a → b after the relabel", || {
        tcp_ok(&pa.netns_path, ip_b)
    });
    let rows = probe_and_decode("after the relabel");
    check("after the relabel", &rows, id_a2, id_b2);
    eprintln!("{encap}: identities: a {id_a} → {id_a2}, b {id_b} → {id_b2} after the relabel");
    drop(a);
    drop(b);
    drop(netns);
}
