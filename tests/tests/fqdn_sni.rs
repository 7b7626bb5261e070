//! FQDN egress cross-checks the TLS server name (docs/l7.md, "FQDN egress
//! and the server name"; Cilium issue 31803), with real traffic through the
//! uplink: a real dnsmasq in the `dns` pod answers `api.sni.example` AND
//! `evil.sni.example` with the world host's 198.51.100.1, where a Python TLS
//! server (one self-signed certificate for both names) answers each
//! handshake with the name the client sent and the source it saw. The
//! client's WeirPolicy allows DNS for `api.sni.example` and TCP 443 to what
//! it resolved to (toFQDNs). curl and openssl s_client naming
//! `api.sni.example` get through (the server saw the node's SNAT address);
//! naming `evil.sni.example` on the same address they are reset by weir
//! (`tls-sni-denied` moves, the flow log names the SNI, the server never
//! completed a handshake for it). Needs root, dnsmasq, dig, curl, openssl,
//! python3 (scripts/setup.sh).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use weir_tests::{node_manifest, pod_on, TestCluster};

const WORLD: &str = "198.51.100.1";

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: client-egress, namespace: sni}
spec:
  podSelector: {matchLabels: {pod: client}}
  egress:
  - action: Allow
    to: [{podSelector: {matchLabels: {pod: dns}}}]
    ports: [{protocol: UDP, port: 53}]
    dns: [{name: api.sni.example}]
  - action: Allow
    toFQDNs: [{matchName: api.sni.example}]
    ports: [{protocol: TCP, port: 443}]
"#;

/// A child process of this test, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The TLS server in the world netns: prints `seen <sni> <source ip>` per
/// completed handshake.
struct TlsServer {
    _child: Killed,
    out: BufReader<ChildStdout>,
}

impl TlsServer {
    fn start(netns: &str, cert: &str, key: &str) -> TlsServer {
        let code = format!(
            "import socket,ssl\n\
             ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             ctx.load_cert_chain('{cert}','{key}')\n\
             last=[None]\n\
             ctx.sni_callback=lambda s,n,c: last.__setitem__(0,n)\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{WORLD}', 443)); s.listen(16)\n\
             print('ready', flush=True)\n\
             while True:\n\
             \x20k,a=s.accept(); k.settimeout(3); last[0]=None\n\
             \x20try:\n\
             \x20\x20t=ctx.wrap_socket(k, server_side=True)\n\
             \x20except Exception as e:\n\
             \x20\x20print('failed', last[0], a[0], flush=True); k.close(); continue\n\
             \x20print('seen', last[0], a[0], flush=True)\n\
             \x20t.settimeout(1)\n\
             \x20try: t.recv(4096)\n\
             \x20except Exception: pass\n\
             \x20body=('hello %s from %s\\n' % (last[0], a[0])).encode()\n\
             \x20try:\n\
             \x20\x20t.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body); t.close()\n\
             \x20except Exception: pass\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-u", "-c", &code])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the TLS server");
        let out = child.stdout.take().expect("stdout");
        let mut s = TlsServer {
            _child: Killed(child),
            out: BufReader::new(out),
        };
        assert_eq!(s.line(), "ready");
        s
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).expect("server line");
        l.trim().to_string()
    }
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// curl from the client to `https://<name>/` at the world address: (exit
/// code, body).
fn curl(c: &TestCluster, name: &str) -> (i32, String) {
    let resolve = format!("{name}:443:{WORLD}");
    let url = format!("https://{name}/");
    let out = c.pod_exec(
        "sni",
        "client",
        &[
            "curl",
            "-sk",
            "--max-time",
            "5",
            "--resolve",
            &resolve,
            &url,
        ],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// openssl s_client from the client, naming `name`: its whole output.
fn s_client(c: &TestCluster, name: &str) -> String {
    let connect = format!("{WORLD}:443");
    let out = c.pod_exec(
        "sni",
        "client",
        &[
            "timeout",
            "8",
            "openssl",
            "s_client",
            "-connect",
            &connect,
            "-servername",
            name,
            "-ign_eof",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fqdn_egress_refuses_another_name_on_the_same_address() {
    for t in ["dnsmasq", "dig", "curl", "openssl", "python3"] {
        assert!(tool(t), "{t} is needed: run scripts/setup.sh");
    }
    let mut m = node_manifest(0, false);
    m.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: sni}\n");
    for p in ["client", "dns"] {
        m.push_str(&pod_on("sni", p, "n1"));
    }
    let c = TestCluster::up("fsni", &m);
    c.wait_applied(Duration::from_secs(30));
    let topo = c.topology();
    let world = topo.world.clone().expect("the cluster has a world host");
    let node_ul = topo
        .node("n1")
        .and_then(|n| n.underlay.as_ref().map(|u| u.ipv4))
        .expect("n1's underlay address");
    let dns = topo.pod("sni", "dns").expect("dns pod").clone();
    let dns_ip = dns.ipv4.expect("dns ipv4").to_string();

    // dnsmasq: both names on the world address.
    let pid = c.file("dnsmasq.pid", "");
    let dnsmasq = Command::new("ip")
        .args(["netns", "exec", &dns.netns, "dnsmasq", "--no-daemon"])
        .args(["--no-resolv", "--no-hosts", "--bind-interfaces"])
        .arg(format!("--listen-address={dns_ip}"))
        .arg(format!("--address=/api.sni.example/{WORLD}"))
        .arg(format!("--address=/evil.sni.example/{WORLD}"))
        .arg(format!("--pid-file={pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    let _dnsmasq = Killed(dnsmasq);

    // The TLS server: one certificate for both names.
    let key = c.file("key.pem", "");
    let cert = c.file("cert.pem", "");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            "/CN=api.sni.example",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:api.sni.example,DNS:evil.sni.example",
        ])
        .output()
        .expect("openssl req");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut server = TlsServer::start(&world.netns, &cert, &key);
    std::thread::sleep(Duration::from_millis(300));

    let f = c.file("policy.yaml", POLICY);
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_applied(Duration::from_secs(30));

    // Nothing learned yet: the world address is not reachable.
    assert_ne!(curl(&c, "api.sni.example").0, 0, "reachable before DNS");

    // The allowed name resolves (through weir's DNS rules) and teaches weir.
    let at = format!("@{dns_ip}");
    let dig = c.pod_exec(
        "sni",
        "client",
        &[
            "dig",
            &at,
            "api.sni.example",
            "A",
            "+time=2",
            "+tries=1",
            "+notcp",
        ],
    );
    let dig = String::from_utf8_lossy(&dig.stdout).into_owned();
    assert!(
        dig.contains("status: NOERROR") && dig.contains(WORLD),
        "{dig}"
    );

    // The allowed name passes: curl and openssl s_client; the server saw the
    // node's SNAT address (the connection crossed weir's uplink).
    let want = format!("hello api.sni.example from {node_ul}");
    assert_eq!(curl(&c, "api.sni.example"), (0, want.clone()));
    assert_eq!(server.line(), format!("seen api.sni.example {node_ul}"));
    let s = s_client(&c, "api.sni.example");
    assert!(s.contains(&want), "s_client api.sni.example: {s}");
    assert_eq!(server.line(), format!("seen api.sni.example {node_ul}"));

    // Another name on the same address: reset by weir, counted, logged.
    let before = c.drops("tls-sni-denied");
    let (code, body) = curl(&c, "evil.sni.example");
    assert!(code != 0 && body.is_empty(), "curl evil: {code} {body:?}");
    let s = s_client(&c, "evil.sni.example");
    assert!(!s.contains("hello "), "s_client evil.sni.example: {s}");
    let after = c.drops("tls-sni-denied");
    assert!(after >= before + 2, "tls-sni-denied {before} -> {after}");
    let flows = c.weir_json(&["flows", "-o", "json"]);
    let logged = flows.as_array().expect("records").iter().any(|r| {
        r["reason"] == "tls-sni-denied"
            && r["l7"]["path"] == "evil.sni.example"
            && r["l7"]["reason"] == "fqdn-sni-mismatch"
    });
    assert!(
        logged,
        "no fqdn-sni-mismatch record for evil.sni.example: {flows}"
    );

    // The server never completed a handshake for the other name; the
    // allowed name still works afterwards.
    assert_eq!(curl(&c, "api.sni.example"), (0, want));
    loop {
        let l = server.line();
        if l == format!("failed None {node_ul}") {
            // A refused connection: the TCP handshake reached the server,
            // the ClientHello never did.
            continue;
        }
        assert_eq!(
            l,
            format!("seen api.sni.example {node_ul}"),
            "evil.sni.example must never get through"
        );
        break;
    }
}
