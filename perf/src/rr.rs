//! TCP request/response: one connection, 1-byte ping-pong, client in one pod
//! and server in the other (both pinned to the load core), every round trip
//! timed into an HDR histogram.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{pin, stop};

/// How one request/response run goes.
#[derive(Clone, Debug)]
pub struct RrParams {
    /// Round trips recorded.
    pub count: u64,
    /// Round trips before recording starts.
    pub warmup: u64,
    pub load_core: usize,
    /// A round trip taking longer than this fails the run.
    pub timeout: Duration,
}

/// Round-trip latency percentiles, in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RrResult {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// Round trips per second over the recorded part.
    pub rate_per_s: f64,
}

/// Runs the server on `dst` in `dst_netns`, the client in `src_netns`.
pub fn run(
    src_netns: &str,
    dst_netns: &str,
    dst: SocketAddr,
    p: &RrParams,
) -> anyhow::Result<RrResult> {
    run_to(src_netns, dst_netns, dst, dst, p)
}

/// [`run`] with the server listening on `bind` (in `dst_netns`) and the
/// client connecting to `dst` (a Service's ClusterIP that leads there).
pub fn run_to(
    src_netns: &str,
    dst_netns: &str,
    bind: SocketAddr,
    dst: SocketAddr,
    p: &RrParams,
) -> anyhow::Result<RrResult> {
    let listener = weir_topo::netns::run_in(dst_netns, || TcpListener::bind(bind))?
        .with_context(|| format!("listen tcp {bind} in {dst_netns}"))?;
    // The handshake completes in the kernel against the listening socket:
    // connect first, accept after.
    let client = weir_topo::netns::run_in(src_netns, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(3))
    })?
    .with_context(|| format!("connect to tcp {dst} from {src_netns}"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let server = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    server.set_nonblocking(false)?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(p.timeout))?;
        s.set_write_timeout(Some(p.timeout))?;
    }

    std::thread::scope(|s| -> anyhow::Result<RrResult> {
        let server_thread = s.spawn(|| -> anyhow::Result<()> {
            pin::pin(p.load_core)?;
            let mut server = &server;
            let mut b = [0u8; 1];
            loop {
                match server.read(&mut b) {
                    Ok(0) => return Ok(()),
                    Ok(_) => server.write_all(&b).context("server write")?,
                    Err(e) if stop::requested() => return Err(e).context("server read"),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e).context("server read"),
                }
            }
        });
        // On a thread of its own: pinning the caller would pin every
        // process it starts later (weir inherits the affinity mask).
        let client_thread = s.spawn(|| -> anyhow::Result<RrResult> {
            pin::pin(p.load_core)?;
            let mut c = &client;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut b = [0u8; 1];
            let mut start = Instant::now();
            for i in 0..p.warmup + p.count {
                if i % 256 == 0 {
                    stop::check()?;
                }
                if i == p.warmup {
                    start = Instant::now();
                }
                let t = Instant::now();
                c.write_all(&[1]).context("client write")?;
                c.read_exact(&mut b)
                    .with_context(|| format!("round trip {i}: no answer within {:?}", p.timeout))?;
                if i >= p.warmup {
                    hist.record(t.elapsed().as_nanos().max(1) as u64)?;
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            Ok(RrResult {
                count: hist.len(),
                p50_us: us(0.50),
                p90_us: us(0.90),
                p99_us: us(0.99),
                p999_us: us(0.999),
                max_us: hist.max() as f64 / 1000.0,
                mean_us: hist.mean() / 1000.0,
                rate_per_s: p.count as f64 / secs,
            })
        });
        let result = client_thread
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))?;
        // Closing the client ends the server's loop.
        let _ = client.shutdown(std::net::Shutdown::Both);
        let served = server_thread
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))?;
        let r = result?;
        served?;
        Ok(r)
    })
}

/// Whether a fresh TCP connection from `src_netns` to `dst` (a listener the
/// call makes in `dst_netns`) completes within 2 s: the path still forwards.
pub fn reachable(src_netns: &str, dst_netns: &str, dst: SocketAddr) -> bool {
    let Ok(Ok(listener)) = weir_topo::netns::run_in(dst_netns, || TcpListener::bind(dst)) else {
        return false;
    };
    let ok = matches!(
        weir_topo::netns::run_in(src_netns, || TcpStream::connect_timeout(
            &dst,
            Duration::from_secs(2)
        )),
        Ok(Ok(_))
    );
    drop(listener);
    ok
}
