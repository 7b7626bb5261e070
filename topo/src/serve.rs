//! Test servers in pods, like upstream's `agnhost serve-hostname`: for each
//! declared containerPort, a server bound in the pod's netns on `0.0.0.0`
//! and `[::]` that answers with `<podname>\n`.
//!
//! - TCP: writes the name, sends FIN, then reads and discards whatever the
//!   client sends until it closes (at most 5 s), so a client that sends
//!   first still gets the answer instead of a reset.
//! - UDP: answers every datagram with the name.
//! - SCTP: skipped (logged).
//!
//! Sockets are opened by a thread inside the pod's netns and keep that
//! netns; serving runs on one thread of its own. [`PodServers::stop`] (or
//! drop) stops it, and the ports are closed when it returns.
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::manifest::Protocol;
use crate::{netns, RealizedPod, TopoError};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The servers of one pod; stopped on drop.
#[derive(Debug)]
pub struct PodServers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

fn bind(protocol: Protocol, addr: SocketAddr) -> io::Result<Bound> {
    let domain = Domain::for_address(addr);
    let ty = match protocol {
        Protocol::Udp => Type::DGRAM,
        _ => Type::STREAM,
    };
    let sock = Socket::new(domain, ty, None)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(match protocol {
        Protocol::Udp => Bound::Udp(sock.into()),
        _ => {
            sock.listen(128)?;
            Bound::Tcp(sock.into())
        }
    })
}

impl PodServers {
    /// Starts a server for each declared port of `pod`; returns once all
    /// sockets are bound.
    pub fn start(pod: &RealizedPod) -> Result<PodServers, TopoError> {
        let object = format!("{}/{}", pod.namespace, pod.name);
        Self::start_in(&pod.netns, &object, &pod.name, &pod.ports, &[])
    }

    /// Servers for `ports` bound in `netns` on each of `addrs` (none: the
    /// unspecified address of each family), answering `<name>\n` (the
    /// world host's server, `crate::world`: a host of several addresses
    /// binds each, so a UDP answer leaves from the address asked);
    /// `object` names them in errors.
    pub fn start_in(
        netns: &str,
        object: &str,
        name: &str,
        ports: &[crate::manifest::ContainerPort],
        addrs: &[std::net::IpAddr],
    ) -> Result<PodServers, TopoError> {
        let object = object.to_string();
        let ports: Vec<_> = ports
            .iter()
            .filter(|p| {
                if p.protocol == Protocol::Sctp {
                    log::info!(
                        "pods/{object}: port {}/SCTP: not served (no SCTP server)",
                        p.port
                    );
                }
                p.protocol != Protocol::Sctp
            })
            .cloned()
            .collect();
        let bound = netns::run_in(netns, || -> Result<Vec<Bound>, TopoError> {
            let mut out = Vec::new();
            let v6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
            for p in &ports {
                let err = |error| TopoError::Serve {
                    pod: object.clone(),
                    port: p.port,
                    protocol: p.protocol,
                    error,
                };
                if !addrs.is_empty() {
                    for a in addrs.iter().filter(|a| v6 || a.is_ipv4()) {
                        out.push(bind(p.protocol, (*a, p.port).into()).map_err(err)?);
                    }
                    continue;
                }
                out.push(bind(p.protocol, (Ipv4Addr::UNSPECIFIED, p.port).into()).map_err(err)?);
                if v6 {
                    out.push(
                        bind(p.protocol, (Ipv6Addr::UNSPECIFIED, p.port).into()).map_err(err)?,
                    );
                }
            }
            Ok(out)
        })??;

        let reply: Arc<[u8]> = format!("{name}\n").into_bytes().into();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!(
                "serve-{}",
                name.chars().take(9).collect::<String>()
            ))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for b in bound {
                        let reply = reply.clone();
                        match b {
                            Bound::Tcp(l) => match tokio::net::TcpListener::from_std(l) {
                                Ok(l) => {
                                    tasks.spawn(serve_tcp(l, reply));
                                }
                                Err(e) => {
                                    let _ = ready_tx.send(Err(e));
                                    return;
                                }
                            },
                            Bound::Udp(s) => match tokio::net::UdpSocket::from_std(s) {
                                Ok(s) => {
                                    tasks.spawn(serve_udp(s, reply));
                                }
                                Err(e) => {
                                    let _ = ready_tx.send(Err(e));
                                    return;
                                }
                            },
                        }
                    }
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                    tasks.shutdown().await;
                });
            })
            .map_err(|error| TopoError::Netns {
                netns: netns.to_string(),
                op: "spawn server thread",
                error,
            })?;
        let mut servers = PodServers {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("server thread ended")));
        if let Err(error) = ready {
            servers.stop();
            return Err(TopoError::Netns {
                netns: netns.to_string(),
                op: "start servers",
                error,
            });
        }
        Ok(servers)
    }

    /// Stops every server; the ports are closed when this returns.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PodServers {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, reply: Arc<[u8]>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let reply = reply.clone();
                    conns.spawn(async move {
                        let (mut rd, mut wr) = stream.into_split();
                        if wr.write_all(&reply).await.is_err() {
                            return;
                        }
                        let _ = wr.shutdown().await;
                        let mut buf = [0u8; 4096];
                        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
                        })
                        .await;
                    });
                }
                Err(e) => {
                    log::warn!("serve: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_udp(socket: tokio::net::UdpSocket, reply: Arc<[u8]>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    log::warn!("serve: udp reply to {peer}: {e}");
                }
            }
            Err(e) => {
                log::warn!("serve: udp recv: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
