//! New TCP connections per second: a client in one pod connects, and closes
//! with RST (`SO_LINGER` 0: no TIME_WAIT, no port exhaustion), over and over;
//! a listener in the other pod accepts and drops. Every connection is a new
//! flow, so it pays the full policy walk (nftables' linear chain, weir's
//! compiled lookup) once per connection.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::pin;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnResult {
    pub connects: u64,
    pub failures: u64,
    pub window_s: f64,
    pub per_s: f64,
}

/// Connects from `src_netns` to `dst` (listened on in `dst_netns`) for `window`.
pub fn run(
    src_netns: &str,
    dst_netns: &str,
    dst: SocketAddr,
    window: Duration,
    core: usize,
) -> anyhow::Result<ConnResult> {
    run_to(src_netns, dst_netns, dst, dst, window, core, false)
}

/// [`run`] with the listener on `bind` (in `dst_netns`) and the client
/// connecting to `dst` (a Service's ClusterIP that leads there).
///
/// `inline_accept`: the client also drains the accept queue after every
/// connection. On the kernel path a connect completes inside the client's
/// own system call, so on a loaded machine the client can fill the
/// listener's backlog (128) before the acceptor thread (same core) gets to
/// run; the next SYN is dropped and costs a 500 ms connect timeout.
pub fn run_to(
    src_netns: &str,
    dst_netns: &str,
    bind: SocketAddr,
    dst: SocketAddr,
    window: Duration,
    core: usize,
    inline_accept: bool,
) -> anyhow::Result<ConnResult> {
    let l = weir_topo::netns::run_in(dst_netns, || TcpListener::bind(bind))?
        .with_context(|| format!("listen {bind} in {dst_netns}"))?;
    l.set_nonblocking(true)?;
    let done = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let bad = AtomicU64::new(0);
    // Sockets are made in the source namespace once per connection: a
    // thread living in it makes them all.
    let secs = std::thread::scope(|s| -> anyhow::Result<f64> {
        let acceptor = s.spawn(|| {
            let _ = pin::pin(core);
            while !done.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        let r = weir_topo::netns::run_in(src_netns, || -> anyhow::Result<f64> {
            pin::pin(core)?;
            // Warm-up: neighbours, caches, the listener's first accepts.
            for _ in 0..20 {
                if let Ok(c) = TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                    let _ = set_linger0(&c);
                }
            }
            let start = Instant::now();
            while start.elapsed() < window && !crate::stop::requested() {
                match TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                    Ok(c) => {
                        let _ = set_linger0(&c);
                        ok.fetch_add(1, Ordering::Relaxed);
                        drop(c);
                        if inline_accept {
                            while let Ok((c, _)) = l.accept() {
                                drop(c);
                            }
                        }
                    }
                    Err(_) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(start.elapsed().as_secs_f64())
        });
        done.store(true, Ordering::Relaxed);
        let _ = acceptor.join();
        r?
    })?;
    let connects = ok.load(Ordering::Relaxed);
    Ok(ConnResult {
        connects,
        failures: bad.load(Ordering::Relaxed),
        window_s: secs,
        per_s: connects as f64 / secs,
    })
}

fn set_linger0(c: &TcpStream) -> std::io::Result<()> {
    crate::mmsg::linger0(c)
}
