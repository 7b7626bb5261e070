//! TLS server-name rules judged inline on the ClientHello (docs/l7.md, "TLS
//! server names"): a real TLS server (Python's `ssl`, certificate made by
//! `openssl`) in pod app1 logs the server name of every handshake it
//! completes; real clients in app2 (curl, and Python sending the hello in
//! pieces or crafted bytes). Allowed names complete the handshake and get an
//! answer; denied ones (another name, a wildcard too deep, no name, ECH,
//! garbage) are reset and never complete a handshake, counted under
//! `tls-sni-denied` / `tls-malformed`. Needs root, curl, openssl, python3.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_tests::TestCluster;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.254.0.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: demo, labels: {id: app1}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: demo, labels: {id: app2}}
spec: {containers: [{name: c}]}
"#;

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: app1-tls, namespace: demo}
spec:
  podSelector: {matchLabels: {id: app1}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {id: app2}}}]
    ports: [{protocol: TCP, port: 8443}]
    tls:
    - sni: api.example.com
    - sni: '*.svc.example'
"#;

/// The TLS server: logs `ready`, then `handshake <sni>` for each completed
/// handshake (before answering `served <sni>`), `error <name>` otherwise.
const SERVER: &str = r#"
import socket, ssl, sys, threading
ip, port, cert, key, log = sys.argv[1:6]
out = open(log, "a", buffering=1)
lock = threading.Lock()
def say(s):
    with lock:
        out.write(s + "\n")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def on_sni(sock, name, c):
    sock.weir_sni = name
ctx.sni_callback = on_sni
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((ip, int(port)))
ls.listen(64)
say("ready")
def handle(c):
    try:
        c.settimeout(5)
        s = ctx.wrap_socket(c, server_side=True)
        name = getattr(s, "weir_sni", None)
        say("handshake %s" % name)
        s.recv(4096)
        s.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nserved %s\n" % str(name).encode())
        s.close()
    except Exception as e:
        say("error %s" % type(e).__name__)
while True:
    c, _ = ls.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// A client that sends its ClientHello (for `sni`) in `chunk`-byte writes
/// (TCP_NODELAY, a pause between them), then completes the handshake and
/// prints the answer, or `reset` / `closed` if the connection ends first.
const SPLIT_CLIENT: &str = r#"
import socket, ssl, sys, time
ip, port, sni, chunk = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, outg, server_hostname=sni)
s = socket.create_connection((ip, port), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
try:
    first = True
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        data = outg.read()
        if first:
            for i in range(0, len(data), chunk):
                s.sendall(data[i:i + chunk])
                time.sleep(0.05)
            first = False
        elif data:
            s.sendall(data)
        got = s.recv(65536)
        if not got:
            print("closed"); sys.exit(0)
        inc.write(got)
    obj.write(b"GET / HTTP/1.0\r\n\r\n")
    s.sendall(outg.read())
    resp = b""
    while True:
        got = s.recv(65536)
        if not got:
            break
        inc.write(got)
        try:
            while True:
                resp += obj.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    print(resp.decode(errors="replace"))
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
"#;

/// Sends raw bytes (hex) as the first flight and reports how the
/// connection ended: `reset`, `closed`, `data`, or `timeout`.
const RAW_CLIENT: &str = r#"
import socket, sys
ip, port, hexdata = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((ip, port), timeout=3)
try:
    s.sendall(bytes.fromhex(hexdata))
    got = s.recv(65536)
    print("data" if got else "closed")
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
"#;

/// Kills the server process it owns (by its own child handle) on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0];
    d.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    d.push(0);
    d.extend_from_slice(&(name.len() as u16).to_be_bytes());
    d.extend_from_slice(name);
    d
}

/// A ClientHello record with these raw extension bytes.
fn hello(exts: &[u8]) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[0x5a; 32]);
    b.push(0);
    b.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    b.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    b.extend_from_slice(exts);
    let mut m = vec![1];
    m.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&b);
    let mut r = vec![22, 3, 1];
    r.extend_from_slice(&(m.len() as u16).to_be_bytes());
    r.extend_from_slice(&m);
    r
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(c: &TestCluster, argv: &[&str]) -> String {
    let out = c.pod_exec("demo", "app2", argv);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn curl(c: &TestCluster, name: &str, ip: &str) -> (String, String) {
    let resolve = format!("{name}:8443:{ip}");
    let url = format!("https://{name}:8443/");
    let out = c.pod_exec(
        "demo",
        "app2",
        &[
            "curl",
            "-sk",
            "-m",
            "3",
            "--resolve",
            &resolve,
            "-w",
            " %{http_code}",
            &url,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text.rsplit(' ').next().unwrap_or("").trim().to_string();
    (code, text)
}

#[test]
fn tls_server_names_judged_on_the_client_hello() {
    let c = TestCluster::up("ltls", CLUSTER);
    let topo = c.topology();
    let app1 = topo.pod("demo", "app1").expect("app1").clone();
    let ip = app1.ipv4.expect("ipv4").to_string();
    let (cert, key) = (c.dir.join("cert.pem"), c.dir.join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=api.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    let log = c.dir.join("server.log");
    let _server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &app1.netns,
                "python3",
                "-c",
                SERVER,
                &ip,
                "8443",
            ])
            .arg(&cert)
            .arg(&key)
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("server"),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = Instant::now();
    while !read_log().contains("ready") {
        assert!(t0.elapsed() < Duration::from_secs(10), "server not ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Without policy: any name, and no name, completes a handshake.
    let (code, text) = curl(&c, "evil.example.com", &ip);
    assert_eq!(code, "200", "{text}");
    assert!(read_log().contains("handshake evil.example.com"));

    let f = c.file("tls.yaml", POLICY);
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let denied_before = c.drops("tls-sni-denied");
    for (name, want) in [("api.example.com", true), ("evil.example.com", false)] {
        let e = c.weir_json(&[
            "explain",
            "--from",
            "demo/app2",
            "--to",
            "demo/app1",
            "--port",
            "8443",
            "--protocol",
            "TCP",
            "--sni",
            name,
            "-o",
            "json",
        ]);
        assert_eq!(e["tls"]["allowed"], want, "explain --sni {name}: {e}");
    }

    // Allowed: exact name and one-label wildcard, case-insensitive.
    for name in ["api.example.com", "x.svc.example", "API.Example.com"] {
        let (code, text) = curl(&c, name, &ip);
        assert_eq!(code, "200", "{name}: {text}");
        assert!(
            text.contains(&format!("served {}", name.to_ascii_lowercase())),
            "{name}: {text}"
        );
    }
    // Denied: another name, a wildcard two labels deep; no handshake
    // reaches the server.
    for name in ["evil.example.com", "a.b.svc.example"] {
        let before = read_log().matches("handshake").count();
        let (code, text) = curl(&c, name, &ip);
        assert_eq!(code, "000", "{name}: {text}");
        assert_eq!(read_log().matches("handshake").count(), before, "{name}");
    }
    // No name: curl sends no SNI to an IP literal.
    let out = c.pod_exec(
        "demo",
        "app2",
        &[
            "curl",
            "-sk",
            "-m",
            "3",
            "-w",
            " %{http_code}",
            &format!("https://{ip}:8443/"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(" 000"));
    assert!(!read_log().contains("handshake None"));

    // The hello in 40-byte and in 7-byte writes: reassembled, judged once.
    for chunk in ["40", "7"] {
        let got = run(
            &c,
            &[
                "python3",
                "-c",
                SPLIT_CLIENT,
                &ip,
                "8443",
                "api.example.com",
                chunk,
            ],
        );
        assert!(
            got.contains("served api.example.com"),
            "chunk {chunk}: {got}"
        );
        let got = run(
            &c,
            &[
                "python3",
                "-c",
                SPLIT_CLIENT,
                &ip,
                "8443",
                "evil.example.com",
                chunk,
            ],
        );
        assert!(got == "reset" || got == "closed", "chunk {chunk}: {got}");
    }

    // Crafted first flights: ECH beside an allowed name, a duplicated
    // server_name, plain HTTP: reset by weir, the server sees no handshake.
    let malformed_before = c.drops("tls-malformed");
    let mut ech = sni_ext(b"api.example.com");
    ech.extend_from_slice(&[0xfe, 0x0d, 0, 4, 0, 1, 2, 3]);
    let mut dup = sni_ext(b"api.example.com");
    dup.extend_from_slice(&sni_ext(b"api.example.com"));
    for (what, bytes) in [
        ("ech", hello(&ech)),
        ("duplicate sni", hello(&dup)),
        (
            "http",
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
        ),
    ] {
        let got = run(
            &c,
            &["python3", "-c", RAW_CLIENT, &ip, "8443", &hex(&bytes)],
        );
        assert!(got == "reset" || got == "closed", "{what}: {got}");
    }
    assert_eq!(read_log().matches("handshake evil.example.com").count(), 1);

    // Counted and logged, with the name.
    assert!(c.drops("tls-sni-denied") >= denied_before + 6);
    assert!(c.drops("tls-malformed") >= malformed_before + 2);
    let flows = c.weir_json(&["flows", "-o", "json"]);
    let denied = flows
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["reason"] == "tls-sni-denied")
        .map(|r| (r["l7"]["reason"].clone(), r["l7"]["path"].clone()))
        .collect::<Vec<_>>();
    assert!(
        denied
            .iter()
            .any(|(r, p)| r == "tls-sni-denied" && p == "evil.example.com"),
        "{denied:?}"
    );
    assert!(denied.iter().any(|(r, _)| r == "tls-no-sni"), "{denied:?}");
    assert!(denied.iter().any(|(r, _)| r == "tls-ech"), "{denied:?}");

    // Deleting the policy lifts the restriction.
    let out = c.weir(&["delete", "-f", &f]);
    assert!(out.status.success());
    let (code, text) = curl(&c, "other.example.com", &ip);
    assert_eq!(code, "200", "{text}");
}
