//! 64-byte frames UDP packets per second: a `sendmmsg` generator in one pod,
//! a `recvmmsg` receiver in the other, both pinned to the load core.
//!
//! An 18-byte payload makes 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 18 = 60
//! bytes, 64 on the wire with the FCS: the smallest Ethernet frame.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::mmsg::{set_rcvbuf, RecvBatch, SendBatch};
use crate::{pin, stop};

/// Payload that makes a 64-byte frame (with FCS) over IPv4.
pub const PAYLOAD_64B_FRAME: usize = 18;

/// How one UDP run goes.
#[derive(Clone, Debug)]
pub struct UdpParams {
    pub payload: usize,
    /// Datagrams per `sendmmsg`.
    pub batch: usize,
    /// Sending before the window opens (rings, caches, ARP settle).
    pub warmup: Duration,
    pub window: Duration,
    /// Core of the generator and of the receiver.
    pub load_core: usize,
}

/// What one UDP run measured (counts are over the window only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UdpResult {
    pub payload_bytes: usize,
    pub frame_bytes_on_wire: usize,
    pub batch: usize,
    pub window_s: f64,
    /// Datagrams the generator's `sendmmsg` calls handed to the kernel.
    pub sent: u64,
    /// Datagrams the receiver read with `recvmmsg`.
    pub received: u64,
    /// Datagrams that reached pod b's socket but found its buffer full
    /// (pod b's `Udp RcvbufErrors`): a receiver limit, not a path limit.
    pub rcvbuf_errors: u64,
    /// `sendmmsg` calls that failed (ENOBUFS and the like).
    pub send_errors: u64,
    pub offered_pps: f64,
    pub received_pps: f64,
    /// received / sent.
    pub delivered_ratio: f64,
}

/// Runs the generator in `src_netns` towards `dst` (an address of
/// `dst_netns`, where the receiver binds it).
pub fn run(
    src_netns: &str,
    dst_netns: &str,
    dst: SocketAddrV4,
    p: &UdpParams,
) -> anyhow::Result<UdpResult> {
    run_to(src_netns, dst_netns, dst, dst, p)
}

/// [`run`] with the receiver bound on `bind` (in `dst_netns`) and the
/// generator sending to `send_to` (a Service's ClusterIP that leads there).
pub fn run_to(
    src_netns: &str,
    dst_netns: &str,
    bind: SocketAddrV4,
    send_to: SocketAddrV4,
    p: &UdpParams,
) -> anyhow::Result<UdpResult> {
    run_flows_to(src_netns, dst_netns, bind, send_to, p, 1)
}

/// [`run_to`] with `flows` generator sockets (each its own source port, so
/// its own 5-tuple: a sender's TX queue pick and a NIC's RSS hash spread
/// them over queues); the generator sends one `sendmmsg` batch on each in
/// turn, from one thread.
pub fn run_flows_to(
    src_netns: &str,
    dst_netns: &str,
    bind: SocketAddrV4,
    send_to: SocketAddrV4,
    p: &UdpParams,
    flows: usize,
) -> anyhow::Result<UdpResult> {
    let dst = send_to;
    let rx = weir_topo::netns::run_in(dst_netns, || UdpSocket::bind(bind))?
        .with_context(|| format!("bind udp {bind} in {dst_netns}"))?;
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    set_rcvbuf(&rx, 32 << 20);
    let txs = weir_topo::netns::run_in(src_netns, || {
        (0..flows.max(1))
            .map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .collect::<std::io::Result<Vec<_>>>()
    })?
    .with_context(|| format!("bind udp socket in {src_netns}"))?;

    let sent = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let done = AtomicBool::new(false);

    let snap = || {
        (
            Instant::now(),
            sent.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
            rcvbuf_errors(dst_netns),
        )
    };

    let (a, b) = std::thread::scope(|s| -> anyhow::Result<_> {
        let receiver = s.spawn(|| -> anyhow::Result<()> {
            pin::pin(p.load_core)?;
            let mut batch = RecvBatch::new(64, 256);
            while !done.load(Ordering::Relaxed) {
                match batch.recv(&rx) {
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(anyhow::anyhow!("recvmmsg: {e}")),
                }
            }
            Ok(())
        });
        let generator = s.spawn(|| -> anyhow::Result<()> {
            pin::pin(p.load_core)?;
            let mut batch = SendBatch::new(dst, p.payload, p.batch);
            'gen: loop {
                for tx in &txs {
                    if done.load(Ordering::Relaxed) {
                        break 'gen;
                    }
                    match batch.send(tx) {
                        Ok(n) => {
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Ok(())
        });
        let measured = (|| -> anyhow::Result<_> {
            sleep_checked(p.warmup)?;
            let a = snap();
            sleep_checked(p.window)?;
            let b = snap();
            Ok((a, b))
        })();
        done.store(true, Ordering::Relaxed);
        let r1 = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
        let r2 = generator
            .join()
            .map_err(|_| anyhow::anyhow!("generator panicked"))?;
        r1?;
        r2?;
        measured
    })?;

    let secs = (b.0 - a.0).as_secs_f64();
    let sent = b.1 - a.1;
    let received = b.3 - a.3;
    Ok(UdpResult {
        payload_bytes: p.payload,
        frame_bytes_on_wire: 14 + 20 + 8 + p.payload.max(18) + 4,
        batch: p.batch,
        window_s: secs,
        sent,
        received,
        rcvbuf_errors: b.4.saturating_sub(a.4),
        send_errors: b.2 - a.2,
        offered_pps: sent as f64 / secs,
        received_pps: received as f64 / secs,
        delivered_ratio: if sent == 0 {
            0.0
        } else {
            received as f64 / sent as f64
        },
    })
}

/// Sleeps `d` in steps, returning early with an error on Ctrl-C.
pub fn sleep_checked(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        stop::check()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// `Udp: RcvbufErrors` of a namespace (0 when unreadable).
fn rcvbuf_errors(netns: &str) -> u64 {
    weir_topo::netns::run_in(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp")
    })
    .ok()
    .and_then(|r| r.ok())
    .and_then(|t| snmp_field(&t, "Udp:", "RcvbufErrors"))
    .unwrap_or(0)
}

/// A field of `/proc/net/snmp` (a header line then a value line per protocol).
pub fn snmp_field(text: &str, proto: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(proto));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_parse() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 2 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 3 7 3\n";
        assert_eq!(snmp_field(t, "Udp:", "RcvbufErrors"), Some(3));
        assert_eq!(snmp_field(t, "Udp:", "InDatagrams"), Some(10));
        assert_eq!(snmp_field(t, "Tcp:", "InSegs"), None);
    }
}
