//! HTTP evasion attempts against weir's inline L7 enforcement, with real
//! traffic: the paper's policy (to id=app1 on TCP 8080, only id=app2, only
//! `GET /public...`), a client writing RAW bytes on a TCP socket opened in
//! app2's netns, and a deliberately lenient HTTP/1 server in app1's netns
//! (bare LF accepted, Transfer-Encoding preferred over Content-Length, end
//! of stream ends a head like Python's `http.server`) that records every
//! request line and body it sees. Each case asserts that the
//! forbidden request never reaches the server and the client gets weir's
//! 403 (or the connection closes). Needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_tests::TestCluster;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.254.0.0/24, "fd00:254::/64"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: demo, labels: {id: app1}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: demo, labels: {id: app2}}
spec: {containers: [{name: c}]}
"#;

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: WeirPolicy
metadata: {name: app1-l7, namespace: demo}
spec:
  podSelector: {matchLabels: {id: app1}}
  ingress:
  - action: Allow
    from: [{podSelector: {matchLabels: {id: app2}}}]
    ports: [{protocol: TCP, port: 8080}]
    http:
    - method: GET
      path: {prefix: /public}
"#;

/// What the server saw: one entry per request (request line without the
/// line end, and the body as framed by the server).
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Reads one line ending in LF (bare LF accepted: the lenient server), or
/// what is left before end of stream: `Ok(None)` at end of stream, `Err`
/// on a read error (a reset).
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, ()> {
    let mut l = String::new();
    match r.read_line(&mut l) {
        Err(_) => Err(()),
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(l.trim_end_matches(['\r', '\n']).to_string())),
    }
}

fn line(r: &mut impl BufRead) -> Option<String> {
    read_line(r).ok().flatten()
}

/// One request from the stream; `None` at EOF or on a framing error. Like
/// Python's `http.server`, end of stream ends the head: a request line
/// (even cut short, or HTTP/0.9) followed by end of stream is served.
fn read_request(r: &mut impl BufRead) -> Option<(Seen, bool)> {
    let first = line(r)?;
    let mut cl: Option<usize> = None;
    let mut chunked = false;
    // End of stream (`None`) ends the head: served with what came.
    while let Some(h) = read_line(r).ok()? {
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            let n = n.trim().to_ascii_lowercase();
            let v = v.trim().to_ascii_lowercase();
            if n == "content-length" && cl.is_none() {
                cl = v.parse().ok();
            }
            if n == "transfer-encoding" && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let size = line(r)?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                while !line(r)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0u8; size];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            line(r)?;
        }
    } else if let Some(n) = cl {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    }
    let close = first.ends_with("HTTP/1.0");
    Some((Seen { line: first, body }, close))
}

/// The lenient server in the pod's netns: answers every request with 200
/// and `served <request line>`, keeps the connection open (closes after an
/// HTTP/1.0 request), and logs what it saw. End of stream inside a head
/// ends the head (see [`read_request`]); a reset does not.
fn serve(netns: &str, addr: SocketAddr) -> Log {
    let listener = weir_topo::netns::run_in(netns, move || TcpListener::bind(addr))
        .expect("enter pod netns")
        .expect("bind");
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut out = conn;
                while let Some((req, close)) = read_request(&mut reader) {
                    let body = format!("served {}\n", req.line);
                    seen.lock().expect("log").push(req);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n{body}",
                        body.len(),
                        if close { "connection: close\r\n" } else { "" }
                    );
                    if out.write_all(resp.as_bytes()).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    log
}

/// Status codes of the complete responses in `buf`, in order.
fn statuses(buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let Some(code) = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
        else {
            break;
        };
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if rest.len() < end + 4 + len {
            break;
        }
        out.push(code);
        rest = &rest[end + 4 + len..];
    }
    out
}

/// The raw client: a TCP connection made from app2's netns.
struct Client {
    netns: String,
    server: SocketAddr,
}

impl Client {
    /// Writes `writes` in order (with `gap` between them), then reads until
    /// `want` responses are complete, the peer closes, or 3 s passed.
    /// Returns the status codes and the raw response bytes.
    fn send(&self, writes: &[&[u8]], gap: Duration, want: usize) -> (Vec<u16>, String) {
        self.send_then(writes, gap, want, false)
    }

    /// [`Client::send`], then (if `fin`) shuts the write side down (FIN)
    /// before reading.
    fn send_then(
        &self,
        writes: &[&[u8]],
        gap: Duration,
        want: usize,
        fin: bool,
    ) -> (Vec<u16>, String) {
        let server = self.server;
        let mut s = weir_topo::netns::run_in(&self.netns, move || {
            TcpStream::connect_timeout(&server, Duration::from_secs(3))
        })
        .expect("enter app2 netns")
        .expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        for (i, w) in writes.iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                std::thread::sleep(gap);
            }
            if s.write_all(w).is_err() {
                break; // closed by weir's 403+FIN / reset: read what came
            }
        }
        if fin {
            let _ = s.shutdown(Shutdown::Write);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && statuses(&buf).len() < want {
            match s.read(&mut tmp) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        let _ = s.shutdown(Shutdown::Both);
        (statuses(&buf), String::from_utf8_lossy(&buf).into_owned())
    }
}

struct Case<'a> {
    name: &'a str,
    bytes: Vec<u8>,
}

fn req(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Runs one case that must be refused: the client gets weir's 403 (or the
/// connection closes without any 200), and the server sees no request of
/// the connection at all.
fn refused(c: &Client, log: &Log, case: &Case<'_>) -> Result<(), String> {
    let before = log.lock().expect("log").len();
    let (codes, text) = c.send(&[&case.bytes], Duration::ZERO, 1);
    std::thread::sleep(Duration::from_millis(50));
    let seen: Vec<Seen> = log.lock().expect("log")[before..].to_vec();
    let mut errs = Vec::new();
    if !seen.is_empty() {
        errs.push(format!(
            "server saw {:?}",
            seen.iter().map(|s| &s.line).collect::<Vec<_>>()
        ));
    }
    if codes.contains(&200) || !(codes == [403] || codes.is_empty()) {
        errs.push(format!("client got {codes:?}"));
    }
    if codes.is_empty() && !text.is_empty() {
        errs.push(format!("client got unparsed bytes {text:?}"));
    }
    if codes == [403] && !text.contains("weir") {
        errs.push(format!("403 not from weir: {text:?}"));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: sent {:?}: {}",
            case.name,
            String::from_utf8_lossy(&case.bytes),
            errs.join("; ")
        ))
    }
}

/// One cluster with the policy applied, the lenient server in app1 and the
/// raw client in app2.
fn setup(tag: &str) -> (TestCluster, Client, Log) {
    let c = TestCluster::up(tag, CLUSTER);
    let topo = c.topology();
    let app1 = topo.pod("demo", "app1").expect("app1").clone();
    let app2 = topo.pod("demo", "app2").expect("app2").clone();
    let ip = app1.ipv4.expect("ipv4");
    let server = SocketAddr::new(ip.into(), 8080);
    let log = serve(&app1.netns, server);
    let client = Client {
        netns: app2.netns.clone(),
        server,
    };
    let f = c.file("l7.yaml", POLICY);
    let out = c.weir(&["apply", "-f", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (c, client, log)
}

fn lines(log: &Log, from: usize) -> Vec<String> {
    log.lock().expect("log")[from..]
        .iter()
        .map(|s| s.line.clone())
        .collect()
}

/// Every smuggling, framing, normalisation and segmentation trick is
/// refused: the forbidden request never reaches the server.
#[test]
fn evasions_never_reach_the_server() {
    let (_c, client, log) = setup("l7ev");
    let mut failures = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{name}: {detail}"));
        }
    };

    // Baseline: the allowed request works on a raw socket.
    let n = log.lock().expect("log").len();
    let (codes, text) = client.send(
        &[b"GET /public/a HTTP/1.1\r\nHost: app1\r\n\r\n"],
        Duration::ZERO,
        1,
    );
    check(
        "baseline",
        codes == [200] && lines(&log, n) == ["GET /public/a HTTP/1.1"],
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    // A second request hidden in a Content-Length body stays body.
    let hidden = "GET /private HTTP/1.1\r\nHost: app1\r\n\r\n";
    let n = log.lock().expect("log").len();
    let bytes = format!(
        "GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let (codes, text) = client.send(&[bytes.as_bytes()], Duration::ZERO, 2);
    let seen: Vec<Seen> = log.lock().expect("log")[n..].to_vec();
    check(
        "cl-body-hides-request",
        codes == [200]
            && seen.len() == 1
            && seen[0].line == "GET /public HTTP/1.1"
            && seen[0].body == hidden.as_bytes(),
        format!("{codes:?} {text:?} server {seen:?}"),
    );

    // A request hidden in a chunked body stays body.
    let n = log.lock().expect("log").len();
    let bytes = format!(
        "GET /public HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
        hidden.len()
    );
    let (codes, text) = client.send(&[bytes.as_bytes()], Duration::ZERO, 2);
    let seen: Vec<Seen> = log.lock().expect("log")[n..].to_vec();
    check(
        "chunked-body-hides-request",
        codes == [200]
            && seen.len() == 1
            && seen[0].line == "GET /public HTTP/1.1"
            && seen[0].body == hidden.as_bytes(),
        format!("{codes:?} {text:?} server {seen:?}"),
    );

    // Pipelined allowed + denied in one write: whatever happens to the
    // first, the second never reaches the server.
    let n = log.lock().expect("log").len();
    let (codes, text) = client.send(
        &[b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\nGET /private HTTP/1.1\r\nHost: app1\r\n\r\n"],
        Duration::ZERO,
        2,
    );
    check(
        "pipelined (security)",
        codes.len() <= 1 && !lines(&log, n).iter().any(|l| l.contains("private")),
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    // A denied head split into 1-, 2-, 3-byte writes (head bytes are
    // forwarded, the segment with the final CR is held, the one with the
    // final LF is judged) is still denied; so is HTTP/0.9 (judged at the
    // request line's CR) in 1-byte writes, and a denied head trailing an
    // allowed one in 1-byte writes (here only: /private never reaches the
    // server; the allowed one's 200 is checked in allowed_shapes_still_work).
    let private = "GET /private HTTP/1.1\r\nHost: app1\r\n\r\n";
    let after_public = format!("GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\n{private}");
    for (name, head, n, want) in [
        ("1-byte-writes /private", private, 1, 1),
        ("2-byte-writes /private", private, 2, 1),
        ("3-byte-writes /private", private, 3, 1),
        ("1-byte-writes http/0.9", "GET /public\r\n\r\n", 1, 1),
        ("1-byte-writes /public/1 then /private", &after_public, 1, 2),
    ] {
        let n0 = log.lock().expect("log").len();
        let writes: Vec<&[u8]> = head.as_bytes().chunks(n).collect();
        let (codes, text) = client.send(&writes, Duration::from_millis(2), want);
        let seen = lines(&log, n0);
        let ok = if want == 2 {
            codes.last() == Some(&403) && !seen.iter().any(|l| l.contains("private"))
        } else {
            (codes == [403] || codes.is_empty()) && seen.is_empty()
        };
        check(name, ok, format!("{codes:?} {text:?} server {seen:?}"));
    }

    // The client closes its side (FIN) inside a head whose bytes were
    // forwarded: the lenient server serves what it has at end of stream
    // (like Python's http.server). Denied, the server sees no request.
    for (name, writes) in [
        (
            "fin-after-final-cr",
            vec![&b"GET /private HTTP/1.1\r\nHost: app1\r\n"[..], b"\r"],
        ),
        (
            "fin-after-headers",
            vec![&b"GET /private HTTP/1.1\r\n"[..], b"Host: app1\r\n"],
        ),
        (
            "fin-after-request-line",
            vec![&b"GET /private HTTP/1.1"[..]],
        ),
    ] {
        let n0 = log.lock().expect("log").len();
        let (codes, text) = client.send_then(&writes, Duration::from_millis(20), 1, true);
        let seen = lines(&log, n0);
        check(
            name,
            (codes == [403] || codes.is_empty()) && seen.is_empty(),
            format!("{codes:?} {text:?} server {seen:?}"),
        );
    }

    let smuggled = "GET /private HTTP/1.1\r\nHost: app1\r\n\r\n";
    let cases = [
        Case {
            name: "denied-path",
            bytes: req("GET /private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "cl-te-conflict",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )),
        },
        Case {
            name: "te-cl-conflict",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            )),
        },
        Case {
            name: "duplicate-content-length",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            )),
        },
        Case {
            name: "te-not-chunked",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )),
        },
        Case {
            name: "te-space-before-colon",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            )),
        },
        Case {
            name: "chunk-size-bare-lf",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nTransfer-Encoding: chunked\r\n\r\n0\n\n{smuggled}"
            )),
        },
        Case {
            name: "obs-fold",
            bytes: req("GET /public HTTP/1.1\r\nHost: app1\r\nX-A: a\r\n b\r\n\r\n"),
        },
        Case {
            name: "obs-fold-hides-te",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )),
        },
        Case {
            name: "bare-lf",
            bytes: req("GET /public HTTP/1.1\nHost: app1\n\nGET /private HTTP/1.1\nHost: app1\n\n"),
        },
        Case {
            name: "bare-lf-second-request",
            bytes: req("GET /public HTTP/1.1\r\nHost: app1\r\n\nGET /private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "nul-in-header",
            bytes: req("GET /public HTTP/1.1\r\nHost: app1\r\nX-A: a\0b\r\n\r\n"),
        },
        Case {
            name: "overlong-head",
            bytes: req(&format!(
                "GET /public HTTP/1.1\r\nHost: app1\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(9000)
            )),
        },
        Case {
            name: "dot-dot",
            bytes: req("GET /public/../private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "encoded-dot-dot",
            bytes: req("GET /public/%2e%2e/private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "encoded-dot-dot-upper",
            bytes: req("GET /public/%2E%2E/private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "encoded-slash",
            bytes: req("GET /public%2f..%2fprivate HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "backslash",
            bytes: req("GET /public\\..\\private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "dot-dot-params",
            bytes: req("GET /public/..;/private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "absolute-form",
            bytes: req("GET http://app1/private HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "leading-crlf",
            bytes: req("\r\nGET /public HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "lowercase-method",
            bytes: req("get /public HTTP/1.1\r\nHost: app1\r\n\r\n"),
        },
        Case {
            name: "http/0.9",
            bytes: req("GET /public\r\n\r\n"),
        },
        Case {
            name: "upgrade-h2c",
            bytes: req("GET /public HTTP/1.1\r\nHost: app1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
        },
        Case {
            name: "te-in-http/1.0",
            bytes: req(&format!(
                "GET /public HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )),
        },
    ];
    for case in &cases {
        let r = refused(&client, &log, case);
        check(case.name, r.is_ok(), r.err().unwrap_or_default());
    }

    // Nothing denied ever reached the server.
    let all = lines(&log, 0);
    check(
        "server never saw /private",
        !all.iter().any(|l| l.contains("private")),
        format!("{all:?}"),
    );
    // The connection still works after all of it.
    let (codes, _) = client.send(
        &[b"GET /public/end HTTP/1.1\r\nHost: app1\r\n\r\n"],
        Duration::ZERO,
        1,
    );
    check("after", codes == [200], format!("{codes:?}"));
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Allowed traffic in unusual but legal shapes still works under
/// inspection: HTTP/1.0, pipelining (allowed then denied: 200 then 403 when
/// they are in separate segments; one segment: both denied, a known
/// limitation), heads written 1, 2, 3 bytes at a time.
#[test]
fn allowed_shapes_still_work() {
    let (_c, client, log) = setup("l7ok");
    let mut failures = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{name}: {detail}"));
        }
    };

    // Baseline: the allowed request works on a raw socket.
    let n = log.lock().expect("log").len();
    let (codes, text) = client.send(
        &[b"GET /public/a HTTP/1.1\r\nHost: app1\r\n\r\n"],
        Duration::ZERO,
        1,
    );
    check(
        "baseline",
        codes == [200] && lines(&log, n) == ["GET /public/a HTTP/1.1"],
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    // HTTP/1.0 (no Host needed) works.
    let n = log.lock().expect("log").len();
    let (codes, text) = client.send(&[b"GET /public/old HTTP/1.0\r\n\r\n"], Duration::ZERO, 1);
    check(
        "http/1.0",
        codes == [200] && lines(&log, n) == ["GET /public/old HTTP/1.0"],
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    // Pipelined allowed + denied in ONE segment: the frame is cut before
    // the denied head, the allowed request reaches the server and its 200
    // the client; then the connection is reset (no 403: docs/l7.md,
    // "Pipelined requests in one segment").
    let n = log.lock().expect("log").len();
    let (codes, text) = client.send(
        &[b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\nGET /private HTTP/1.1\r\nHost: app1\r\n\r\n"],
        Duration::ZERO,
        2,
    );
    check(
        "pipelined in one segment (200, then reset)",
        codes == [200] && !text.contains("weir") && lines(&log, n) == ["GET /public/1 HTTP/1.1"],
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    // Pipelined allowed + denied in separate writes: 200 then 403, the
    // server sees only the first.
    let n = log.lock().expect("log").len();
    let (codes, text) = client.send(
        &[
            b"GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\n",
            b"GET /private HTTP/1.1\r\nHost: app1\r\n\r\n",
        ],
        Duration::from_millis(50),
        2,
    );
    check(
        "pipelined in two segments",
        codes == [200, 403] && lines(&log, n) == ["GET /public/1 HTTP/1.1"],
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    // An allowed head split into 1-, 2-, 3-byte writes (41, 21, 14
    // segments, each written 2 ms after the previous one: more than the
    // client's initial congestion window) and in one 41-byte write works.
    let head = "GET /public/slow HTTP/1.1\r\nHost: app1\r\n\r\n";
    for size in [1, 2, 3, head.len()] {
        let n = log.lock().expect("log").len();
        let writes: Vec<&[u8]> = head.as_bytes().chunks(size).collect();
        let t = Instant::now();
        let (codes, text) = client.send(&writes, Duration::from_millis(2), 1);
        check(
            &format!("{size}-byte-writes /public/slow"),
            codes == [200] && lines(&log, n) == ["GET /public/slow HTTP/1.1"],
            format!(
                "{} writes in {:?}: {codes:?} {text:?} server {:?}",
                writes.len(),
                t.elapsed(),
                lines(&log, n)
            ),
        );
    }

    // Allowed then denied, in 1-byte writes: 200 then 403.
    let n = log.lock().expect("log").len();
    let both =
        "GET /public/1 HTTP/1.1\r\nHost: app1\r\n\r\nGET /private HTTP/1.1\r\nHost: app1\r\n\r\n";
    let writes: Vec<&[u8]> = both.as_bytes().chunks(1).collect();
    let (codes, text) = client.send(&writes, Duration::from_millis(1), 2);
    check(
        "1-byte-writes /public/1 then /private",
        codes == [200, 403] && lines(&log, n) == ["GET /public/1 HTTP/1.1"],
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    // Two allowed requests, each in 1-byte writes, on one connection.
    let n = log.lock().expect("log").len();
    let two =
        "GET /public/a HTTP/1.1\r\nHost: app1\r\n\r\nGET /public/b HTTP/1.1\r\nHost: app1\r\n\r\n";
    let writes: Vec<&[u8]> = two.as_bytes().chunks(1).collect();
    let (codes, text) = client.send(&writes, Duration::from_millis(1), 2);
    check(
        "1-byte-writes two requests",
        codes == [200, 200]
            && lines(&log, n) == ["GET /public/a HTTP/1.1", "GET /public/b HTTP/1.1"],
        format!("{codes:?} {text:?} server {:?}", lines(&log, n)),
    );

    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
