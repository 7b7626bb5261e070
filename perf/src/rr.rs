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

/// Percentiles of one leg of the round trip, µs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Leg {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Leg {
    fn of(h: &Histogram<u64>) -> Leg {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Leg {
            p50_us: us(0.5),
            p99_us: us(0.99),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// A round trip split at the receivers' software RX stamps
/// (`SO_TIMESTAMPNS`, CLOCK_REALTIME, taken where the frame enters the
/// receiving pod's stack) against CLOCK_REALTIME reads in the client and
/// server: `to_peer_rx` = from the sender's `write` to that stamp (request:
/// client write → server's RX; reply: server's read return → client's RX,
/// its `write` included), two samples per round trip; `rx_to_app` = from
/// the stamp to the receiver's `recvmsg` returning (the pod's softirq,
/// TCP, the wake-up), two per round trip. Mean round trip = 2 × mean of
/// each, exactly (the same clock throughout).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerRx {
    /// Round trips with both stamps (of those recorded).
    pub stamped: u64,
    pub to_peer_rx: Leg,
    pub rx_to_app: Leg,
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// [`run`] with every read stamped (see [`PeerRx`]): the same ping-pong,
/// but `recvmsg` with `SO_TIMESTAMPNS` instead of `read`, and two clock
/// reads more per side and round trip.
pub fn run_stamped(
    src_netns: &str,
    dst_netns: &str,
    dst: SocketAddr,
    p: &RrParams,
) -> anyhow::Result<(RrResult, PeerRx)> {
    let listener = weir_topo::netns::run_in(dst_netns, || TcpListener::bind(dst))?
        .with_context(|| format!("listen tcp {dst} in {dst_netns}"))?;
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
        crate::mmsg::enable_rx_timestamps(s).context("SO_TIMESTAMPNS")?;
    }
    let total = (p.warmup + p.count) as usize;

    std::thread::scope(|s| -> anyhow::Result<(RrResult, PeerRx)> {
        // (RX stamp, read return) per request, in order.
        let server_thread = s.spawn(|| -> anyhow::Result<Vec<(u64, u64)>> {
            pin::pin(p.load_core)?;
            let mut stamps = Vec::with_capacity(total);
            let mut b = [0u8; 1];
            loop {
                match crate::mmsg::recv_stamped(&server, &mut b) {
                    Ok((0, _)) => return Ok(stamps),
                    Ok((_, ts)) => {
                        let t = realtime_ns();
                        (&server).write_all(&b).context("server write")?;
                        stamps.push((ts.unwrap_or(0), t));
                    }
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
        // (write, RX stamp, read return) per round trip, and the RR result.
        type ClientOut = (RrResult, Vec<(u64, u64, u64)>);
        let client_thread = s.spawn(|| -> anyhow::Result<ClientOut> {
            pin::pin(p.load_core)?;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut stamps = Vec::with_capacity(total);
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
                let sent = realtime_ns();
                (&client).write_all(&[1]).context("client write")?;
                let (n, ts) = crate::mmsg::recv_stamped(&client, &mut b)
                    .with_context(|| format!("round trip {i}: no answer within {:?}", p.timeout))?;
                let read = realtime_ns();
                anyhow::ensure!(n == 1, "round trip {i}: the server closed");
                if i >= p.warmup {
                    hist.record(t.elapsed().as_nanos().max(1) as u64)?;
                }
                stamps.push((sent, ts.unwrap_or(0), read));
            }
            let secs = start.elapsed().as_secs_f64();
            let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            Ok((
                RrResult {
                    count: hist.len(),
                    p50_us: us(0.50),
                    p90_us: us(0.90),
                    p99_us: us(0.99),
                    p999_us: us(0.999),
                    max_us: hist.max() as f64 / 1000.0,
                    mean_us: hist.mean() / 1000.0,
                    rate_per_s: p.count as f64 / secs,
                },
                stamps,
            ))
        });
        let result = client_thread
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))?;
        let _ = client.shutdown(std::net::Shutdown::Both);
        let served = server_thread
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))?;
        let (r, cli) = result?;
        let srv = served?;
        Ok((r, split(&cli, &srv, p.warmup as usize)?))
    })
}

/// The legs of [`PeerRx`] from the client's (write, RX stamp, read) and the
/// server's (RX stamp, read) per round trip, after `warmup` of them.
fn split(cli: &[(u64, u64, u64)], srv: &[(u64, u64)], warmup: usize) -> anyhow::Result<PeerRx> {
    let mut to_rx = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut to_app = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut stamped = 0;
    for (&(sent, crx, cread), &(srx, sread)) in cli.iter().zip(srv).skip(warmup) {
        if crx == 0 || srx == 0 {
            continue;
        }
        stamped += 1;
        for v in [
            srx.saturating_sub(sent),
            crx.saturating_sub(sread),
            sread.saturating_sub(srx),
            cread.saturating_sub(crx),
        ]
        .iter()
        .enumerate()
        {
            let h = if v.0 < 2 { &mut to_rx } else { &mut to_app };
            h.record((*v.1).max(1))?;
        }
    }
    anyhow::ensure!(
        stamped > 0,
        "no round trip got both RX stamps (SO_TIMESTAMPNS gave none)"
    );
    Ok(PeerRx {
        stamped,
        to_peer_rx: Leg::of(&to_rx),
        rx_to_app: Leg::of(&to_app),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_add_up_to_the_round_trip() {
        // write 0, server RX 4000, server read 6000, client RX 10000, read 11000.
        let cli = vec![(0, 0, 1), (0, 10_000, 11_000), (100_000, 110_000, 111_000)];
        let srv = vec![(0, 0), (4_000, 6_000), (104_000, 106_000)];
        let s = split(&cli, &srv, 1).unwrap();
        assert_eq!(s.stamped, 2);
        // to peer RX: 4000 and 4000 (10000 − 6000); RX to app: 2000 and 1000.
        assert!((s.to_peer_rx.p50_us - 4.0).abs() < 0.01, "{s:?}");
        assert!((s.rx_to_app.mean_us - 1.5).abs() < 0.01, "{s:?}");
        // 2 × (4 + 1.5) = 11 µs, the round trip.
        assert!(split(&cli[..1], &srv[..1], 0).is_err());
    }
}
