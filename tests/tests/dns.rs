//! DNS rules and FQDN egress with real traffic: a real dnsmasq in the DNS
//! pod's netns, `dig` in the client's. The client's WeirPolicy allows UDP 53
//! to the DNS pod for `allowed.example` and its subdomains only (weir
//! answers REFUSED for anything else), and TCP 80 to whatever
//! `allowed.example` resolved to (toFQDNs), nothing else. dnsmasq answers
//! with addresses of the cluster's own pods, so the FQDN rule is proven with
//! real connections. Needs root, dnsmasq and dig (scripts/setup.sh).

use std::process::{Child, Command, Stdio};
use weir_tests::TestCluster;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.253.0.0/24, "fd00:253::/64"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {id: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: demo, labels: {id: dns}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {id: web}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: demo, labels: {id: other}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
"#;

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: client-egress, namespace: demo}
spec:
  podSelector: {matchLabels: {id: client}}
  egress:
  - action: Allow
    to: [{podSelector: {matchLabels: {id: dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
    dns: [{pattern: "*.allowed.example"}, {name: allowed.example}]
  - action: Allow
    toFQDNs: [{matchName: allowed.example}, {matchName: tcp.allowed.example}]
    ports: [{protocol: TCP, port: 80}]
"#;

/// dnsmasq in a netns, killed on drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn dig(c: &TestCluster, server: &str, name: &str) -> String {
    let at = format!("@{server}");
    let out = c.pod_exec(
        "demo",
        "client",
        &["dig", &at, name, "A", "+time=2", "+tries=1", "+notcp"],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP connection from the client; what the server said (empty: failed).
fn connect(c: &TestCluster, ip: &str) -> String {
    let code = format!(
        "import socket\ntry:\n s=socket.create_connection(('{ip}',80),2)\n s.settimeout(2)\n print(s.recv(200).decode(errors='replace'))\nexcept Exception as e:\n print('')"
    );
    let out = c.pod_exec("demo", "client", &["python3", "-c", &code]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn dns_rules_refuse_and_fqdn_egress_follows_answers() {
    assert!(
        tool("dnsmasq") && tool("dig"),
        "dnsmasq and dig are needed: run scripts/setup.sh"
    );
    let c = TestCluster::up("ldns", CLUSTER);
    let topo = c.topology();
    let ip = |pod: &str| {
        topo.pod("demo", pod)
            .expect(pod)
            .ipv4
            .expect("ipv4")
            .to_string()
    };
    let (dns_ip, web_ip, other_ip) = (ip("dns"), ip("web"), ip("other"));
    let dns_pod = topo.pod("demo", "dns").unwrap().clone();
    let pid = c.file("dnsmasq.pid", "");
    let child = Command::new("ip")
        .args(["netns", "exec", &dns_pod.netns, "dnsmasq", "--no-daemon"])
        .args(["--no-resolv", "--no-hosts", "--bind-interfaces"])
        .arg(format!("--listen-address={dns_ip}"))
        .arg(format!("--address=/allowed.example/{web_ip}"))
        .arg(format!("--address=/blocked.example/{other_ip}"))
        .arg(format!("--address=/tcp.allowed.example/{other_ip}"))
        .arg(format!("--pid-file={pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    let _dnsmasq = Dnsmasq(child);
    std::thread::sleep(std::time::Duration::from_millis(500));

    let f = c.file("dns.yaml", POLICY);
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // explain --dns judges names with the workers' own parser and rule set.
    for (name, want) in [("www.allowed.example", true), ("blocked.example", false)] {
        let e = c.weir_json(&[
            "explain",
            "--from",
            "demo/client",
            "--to",
            "demo/dns",
            "--port",
            "53",
            "--protocol",
            "UDP",
            "--dns",
            name,
            "-o",
            "json",
        ]);
        assert_eq!(e["dns"]["allowed"], want, "explain --dns {name}: {e}");
    }

    // Not learned yet: the web pod is not reachable.
    assert_eq!(connect(&c, &web_ip), "", "web reachable before any answer");

    // A refused name: weir answers REFUSED itself.
    let blocked = dig(&c, &dns_ip, "blocked.example");
    assert!(blocked.contains("status: REFUSED"), "{blocked}");

    // An allowed name: dnsmasq's answer reaches the client and teaches weir.
    let allowed = dig(&c, &dns_ip, "allowed.example");
    assert!(allowed.contains("status: NOERROR"), "{allowed}");
    assert!(allowed.contains(&web_ip), "{allowed}");
    let sub = dig(&c, &dns_ip, "www.allowed.example");
    assert!(sub.contains("status: NOERROR"), "{sub}");

    // The answered address on TCP 80: allowed; the other pod: not learned.
    let said = connect(&c, &web_ip);
    assert!(said.contains("web"), "web said {said:?}");
    assert_eq!(connect(&c, &other_ip), "", "other pod reachable");

    // The flow log shows the refused query.
    let flows = c.weir_json(&["flows", "-o", "json"]);
    let refused = flows
        .as_array()
        .expect("records")
        .iter()
        .any(|r| r["reason"] == "dns-refused" && r["l7"]["path"] == "blocked.example");
    assert!(
        refused,
        "no dns-refused record for blocked.example: {flows}"
    );

    // DNS over TCP: the same rules, REFUSED (length-prefixed) from weir,
    // and an allowed answer over TCP teaches the FQDN table.
    let before = c.drops("dns-refused");
    let tcp = |name: &str| {
        let at = format!("@{dns_ip}");
        let out = c.pod_exec(
            "demo",
            "client",
            &["dig", &at, name, "A", "+time=2", "+tries=1", "+tcp"],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let blocked = tcp("blocked.example");
    assert!(blocked.contains("status: REFUSED"), "{blocked}");
    assert!(c.drops("dns-refused") > before);
    let allowed = tcp("tcp.allowed.example");
    assert!(allowed.contains("status: NOERROR"), "{allowed}");
    assert!(allowed.contains(&other_ip), "{allowed}");
    let said = connect(&c, &other_ip);
    assert!(
        said.contains("other"),
        "other said {said:?} after a TCP answer"
    );
}
