//! A tiny keep-alive HTTP/1.1 server of the harness's own, run inside a pod's
//! namespace (the socket is made there; the threads are pinned to the load
//! core): `GET /public...` answers 200 with a small body, anything else 404.
//! Enough for wrk and for haproxy's L7 detour; not a general server.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::pin;

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\npublic: hello";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

/// A running server; stopped (and its threads joined) when dropped.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `addr` inside `netns`; connection threads pinned to `core`.
    pub fn start(netns: &str, addr: SocketAddr, core: usize) -> anyhow::Result<HttpServer> {
        let l = weir_topo::netns::run_in(netns, || TcpListener::bind(addr))?
            .with_context(|| format!("listen http {addr} in {netns}"))?;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || {
                let _ = pin::pin(core);
                let mut conns = Vec::new();
                while !s2.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((c, _)) => {
                            let s3 = s2.clone();
                            conns.push(std::thread::spawn(move || {
                                let _ = pin::pin(core);
                                serve(c, &s3);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                    conns.retain(|h: &JoinHandle<()>| !h.is_finished());
                }
                for h in conns {
                    let _ = h.join();
                }
            })?;
        Ok(HttpServer {
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Answers every complete request in the buffer (pipelining included).
fn serve(mut c: TcpStream, stop: &AtomicBool) {
    let _ = c.set_nodelay(true);
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        out.clear();
        let mut close = false;
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = &buf[..end];
            out.extend_from_slice(response(head));
            close |= contains_ci(head, b"connection: close")
                || (http10(head) && !contains_ci(head, b"keep-alive"));
            buf.drain(..end + 4);
        }
        if !out.is_empty() && c.write_all(&out).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// The answer to one request head.
pub fn response(head: &[u8]) -> &'static [u8] {
    if head.starts_with(b"GET /public") {
        OK
    } else {
        NOT_FOUND
    }
}

/// An HTTP/1.0 request (ApacheBench without `-k`): the server closes.
fn http10(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    line.ends_with(b"HTTP/1.0")
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn contains_ci(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// One request over a fresh connection from `netns`: the status code
/// (0 when the connection failed or no status line came back).
pub fn status_of(netns: &str, dst: SocketAddr, method: &str, path: &str) -> u16 {
    let Ok(Ok(mut c)) = weir_topo::netns::run_in(netns, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(2))
    }) else {
        return 0;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n");
    if c.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut b = [0u8; 64];
    let n = c.read(&mut b).unwrap_or(0);
    std::str::from_utf8(&b[..n])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(response(b"GET /public/x HTTP/1.1\r\nHost: a").starts_with(b"HTTP/1.1 200"));
        assert!(response(b"GET /private HTTP/1.1").starts_with(b"HTTP/1.1 404"));
        assert!(response(b"POST /public HTTP/1.1").starts_with(b"HTTP/1.1 404"));
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
        assert!(http10(b"GET /public HTTP/1.0\r\nHost: a"));
        assert!(!http10(b"GET /public HTTP/1.1\r\nHost: a"));
    }
}
