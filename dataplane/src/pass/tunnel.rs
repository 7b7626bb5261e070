//! Stages 1 and 11: the overlay. Frames from the underlay are unwrapped
//! before they are parsed; frames for a pod behind a peer node are
//! rewritten as for a local hop (inner MACs: our VTEP → the peer's VTEP,
//! TTL − 1), then wrapped. See `encap` and docs/tunnel.md.

use core::ops::ControlFlow::{self, Continue};
use core::ops::Range;
use std::net::Ipv4Addr;

use super::{Parsed, Pass, Sender, WorkerState};
use crate::encap;
use crate::snapshot::{PortId, Snapshot, TunnelPeer, TunnelSpec};
use crate::wire::ethernet::{self, Frame};
use crate::wire::{ip_proto, ipv4, udp};
use crate::wireguard::{self, Opened, Sealed, WgPeer};
use crate::{DropReason, Verdict};

impl Pass<'_> {
    /// Stage 1: a frame that came in on the underlay port is checked and
    /// decapsulated (its inner frame moves to the start of the buffer);
    /// ICMP errors are not sent back through the tunnel (TTL expiry and
    /// oversize drop). Returns the length of the frame to parse and who
    /// sent it.
    pub(super) fn tunnel_in(&mut self, len: usize) -> ControlFlow<Verdict, (usize, Sender)> {
        // Set by the worker for this frame only: WireGuard already opened
        // it (`open_deferred`).
        let opened = core::mem::take(&mut self.st.wg_opened);
        let Some((t, tables)) = self.snap.tunnel() else {
            return Continue((len, Sender::Pod));
        };
        if self.ingress != tables.port {
            return Continue((len, Sender::Pod));
        }
        let len = match opened {
            true => len,
            false => {
                // A reply from the world to a SNAT port (docs/egress.md).
                if from_world(self.buf.get(..len).unwrap_or_default(), self.snap) {
                    return Continue((len, Sender::World));
                }
                // A flow opening to the node itself under host policy.
                if super::host_in::is_host_in(
                    self.buf.get(..len).unwrap_or_default(),
                    self.snap,
                    t.udp_port,
                ) {
                    return Continue((len, Sender::Outside));
                }
                // WireGuard (docs/encryption.md): every frame on the
                // tunnel's port is a WireGuard message; only what it
                // decrypts to is unwrapped.
                match self.st.wg.is_some() {
                    true => wg_open(self.buf, self.st, len, t, tables.port)?,
                    false => len,
                }
            }
        };
        let d = match self.front {
            // The frame's start may move: past the outer headers.
            Some(_) => {
                let (start, d) = encap::unwrap_in_place(self.buf, len, t, tables)?;
                self.advance(start);
                d
            }
            None => encap::decapsulate(self.buf, len, t, tables)?,
        };
        Continue((
            d.inner_len,
            Sender::Peer {
                peer: d.peer,
                identity: d.identity,
            },
        ))
    }

    /// Stage 11 (with the rewrite of stage 10): toward peer `peer`.
    pub(super) fn tunnel_out(&mut self, pkt: &Parsed, peer: u32) -> Verdict {
        let snap = self.snap;
        let Some((t, tables)) = snap.tunnel() else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let Some(p) = t.peers.get(peer as usize) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let len = match self.rewrite_frame(pkt, p.vtep_mac, t.vtep_mac) {
            Ok(len) => len,
            Err(v) => return v,
        };
        let identity = snap.policy().identity_if_known(pkt.key.src);
        let sport = encap::flow_sport(&pkt.key);
        // The outer headers go in the room in front of the frame, when it
        // has some and stays in clear (WireGuard seals the whole frame,
        // from its start: its path keeps the memmove).
        if let (Some(front), None) = (self.front.as_deref_mut(), &self.st.wg) {
            if let Some(hdr) = encap::encapsulate_front(front, len, t, p, identity, sport) {
                self.moved -= hdr as isize;
                return Verdict::Tx {
                    port: tables.port,
                    len: hdr + len,
                };
            }
        }
        match encap::encapsulate(self.buf, len, t, p, identity, sport)
            .map(|len| wg_seal_or_defer(self.buf, self.st, len, t, p, sport))
        {
            Some(Ok(len)) => Verdict::Tx {
                port: tables.port,
                len,
            },
            Some(Err(r)) => Verdict::Drop(r),
            None => Verdict::Drop(DropReason::TooBig),
        }
    }

    /// Moves the frame's start `n` bytes forward (`process_at` only): the
    /// bytes passed over become the room in front of it.
    fn advance(&mut self, n: usize) {
        let buf = core::mem::take(&mut self.buf);
        let n = n.min(buf.len());
        let (passed, rest) = buf.split_at_mut(n);
        self.buf = rest;
        self.front = Some(passed);
        self.moved += n as isize;
    }

    /// The MTU toward a peer: the tunnel's inner MTU, less WireGuard's
    /// overhead when it is on.
    pub(super) fn peer_mtu(&self, inner_mtu: u16) -> u16 {
        match self.st.wg {
            Some(_) => inner_mtu.saturating_sub(wireguard::FRAME_OVERHEAD as u16),
            None => inner_mtu,
        }
    }
}

const OUTER: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;

/// A frame from the underlay that is the world's (a reply to a SNAT port,
/// docs/egress.md), not a peer's.
fn from_world(frame: &[u8], snap: &Snapshot) -> bool {
    let Some(u) = snap.uplink() else {
        return false;
    };
    super::egress::is_from_uplink(frame, u.node_ipv4)
        || super::external::is_to_external(frame, snap)
        || super::nat_icmp::is_snat_icmp(frame, u.node_ipv4)
        || u.routed_v4
            .is_some_and(|r| super::egress::is_routed_to_pods(frame, r))
        || u.node_ipv6
            .is_some_and(|n| super::egress::is_from_uplink6(frame, n))
        || u.node_ipv6
            .is_some_and(|n| super::nat_icmp::is_snat_icmp6(frame, n))
        || u.routed_v6
            .is_some_and(|r| super::egress::is_routed_to_pods6(frame, r))
}

/// A seal the pass left to its caller (`WorkerState::batch_wireguard`,
/// docs/encryption.md "one lock per peer and batch"): the frame holds the
/// overlay frame stage 11 built, in clear, and must not leave before
/// [`seal_deferred`] sealed it under its peer's lock, which the worker
/// takes once for all of a batch's frames to that peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealJob {
    /// The peer's underlay address (its key in the `WgTable`).
    pub peer: Ipv4Addr,
    src: Ipv4Addr,
    sport: u16,
    dport: u16,
}

impl SealJob {
    fn new(t: &TunnelSpec, peer: &TunnelPeer, sport: u16) -> Self {
        SealJob {
            peer: peer.ipv4,
            src: t.underlay.ipv4,
            sport,
            dport: t.udp_port,
        }
    }
}

/// With WireGuard on, seals the overlay frame `buf[..len]` (its outer
/// IPv4 datagram is the plaintext) for `peer` and puts the message after
/// new outer IPv4 + UDP headers (same addresses and ports); the Ethernet
/// header stays. Returns the new length; with WireGuard off, `len`. Takes
/// the peer's lock for this one frame (weir's own replies, e.g. a 403 to a
/// client behind a peer; stage 11 under a worker uses `wg_seal_or_defer`).
pub(super) fn wg_seal(
    buf: &mut [u8],
    st: &mut WorkerState,
    len: usize,
    t: &TunnelSpec,
    peer: &TunnelPeer,
    sport: u16,
) -> Result<usize, DropReason> {
    let Some(wg) = st.wg.as_deref() else {
        return Ok(len);
    };
    let scratch = &mut st.wg_scratch;
    wg.with_peer(peer.ipv4, |wp| {
        let wp = wp.ok_or(DropReason::WireguardNoPeer)?;
        seal_into(buf, len, wp, scratch, &SealJob::new(t, peer, sport))
    })
}

/// Stage 11's seal: left to the worker when it seals per batch (the job in
/// `WorkerState::take_wireguard_seal`), else done here.
fn wg_seal_or_defer(
    buf: &mut [u8],
    st: &mut WorkerState,
    len: usize,
    t: &TunnelSpec,
    peer: &TunnelPeer,
    sport: u16,
) -> Result<usize, DropReason> {
    if st.wg.is_some() && st.wg_batch {
        st.wg_seal = Some(SealJob::new(t, peer, sport));
        return Ok(len);
    }
    wg_seal(buf, st, len, t, peer, sport)
}

fn seal_into(
    buf: &mut [u8],
    len: usize,
    wp: &mut WgPeer,
    scratch: &mut [u8],
    job: &SealJob,
) -> Result<usize, DropReason> {
    let plain = buf
        .get(ethernet::HEADER_LEN..len)
        .ok_or(DropReason::TunnelMalformed)?;
    let (Sealed::Data(m) | Sealed::Handshake(m)) = wp.seal(plain, scratch)?;
    let total = OUTER + m.len();
    let out = buf.get_mut(..total).ok_or(DropReason::TooBig)?;
    out[OUTER..].copy_from_slice(m);
    write_outer(out, job.src, job.peer, job.sport, job.dport);
    Ok(total)
}

/// Seals a frame whose seal the pass left to the caller: `buf[..len]` as
/// the pass left it, `job` from `WorkerState::take_wireguard_seal`, `peer`
/// the job's peer as `WgTable::grouped` hands it (`None`:
/// `wireguard-no-peer`). Returns the sealed frame's length; on an error
/// the frame must be dropped (it is in clear).
pub fn seal_deferred(
    buf: &mut [u8],
    len: usize,
    peer: Option<&mut WgPeer>,
    st: &mut WorkerState,
    job: &SealJob,
) -> Result<usize, DropReason> {
    let wp = peer.ok_or(DropReason::WireguardNoPeer)?;
    seal_into(buf, len, wp, &mut st.wg_scratch, job)
}

/// With WireGuard on: the peer (outer source address) whose WireGuard
/// message this frame from the underlay is, when stage 1 would open it. A
/// worker that batches opens such frames first, grouped by peer
/// ([`open_deferred`]), then runs the pass on what they decrypted to.
/// `None`: the pass takes the frame whole (not a tunnel frame, the world's,
/// or malformed: stage 1 drops it before any lock).
pub fn wg_source(
    buf: &[u8],
    len: usize,
    ingress: PortId,
    snap: &Snapshot,
    st: &WorkerState,
) -> Option<Ipv4Addr> {
    st.wg.as_ref()?;
    let (t, tables) = snap.tunnel()?;
    if ingress != tables.port {
        return None;
    }
    let frame = buf.get(..len)?;
    if from_world(frame, snap) {
        return None;
    }
    wg_message(frame, t).ok().map(|(src, _)| src)
}

/// Opens a frame from the underlay whose peer [`wg_source`] named (`src`),
/// under that peer's lock as `WgTable::grouped` hands it (`peer`).
/// `Continue(len)`: the frame now holds the peer's overlay datagram; run
/// the pass on it right after `WorkerState::wireguard_opened`. `Break`: the
/// frame's verdict (a handshake reply to send back, or a drop).
pub fn open_deferred(
    buf: &mut [u8],
    len: usize,
    src: Ipv4Addr,
    peer: Option<&mut WgPeer>,
    snap: &Snapshot,
    st: &mut WorkerState,
) -> ControlFlow<Verdict, usize> {
    use core::ops::ControlFlow::Break;
    let Some((t, tables)) = snap.tunnel() else {
        return Break(Verdict::Drop(DropReason::WireguardMalformed));
    };
    let range = match wg_message(buf.get(..len).unwrap_or_default(), t) {
        Ok((s, r)) if s == src => r,
        Ok(_) => return Break(Verdict::Drop(DropReason::WireguardNoPeer)),
        Err(r) => return Break(Verdict::Drop(r)),
    };
    open_into(buf, src, range, peer, &mut st.wg_scratch, t, tables.port)
}

/// The outer source address and where the UDP payload (the WireGuard
/// message) sits, of a frame from the underlay; every check stage 1 makes
/// before it opens one.
fn wg_message(frame: &[u8], t: &TunnelSpec) -> Result<(Ipv4Addr, Range<usize>), DropReason> {
    let Ok(eth) = Frame::new_checked(frame) else {
        return Err(DropReason::FrameTooShort);
    };
    let Ok(ip) = ipv4::Packet::new_checked(eth.payload()) else {
        return Err(DropReason::WireguardMalformed);
    };
    if ip.version() != 4
        || ip.protocol() != ip_proto::UDP
        || ip.more_frags()
        || ip.frag_offset() != 0
        || ip.dst_addr() != t.underlay.ipv4
    {
        return Err(DropReason::WireguardMalformed);
    }
    let Ok(u) = udp::Packet::new_checked(ip.payload()) else {
        return Err(DropReason::WireguardMalformed);
    };
    if u.dst_port() != t.udp_port {
        return Err(DropReason::WireguardMalformed);
    }
    let payload = u.payload();
    // The payload is a subslice of `frame`: its offset, from the addresses.
    let start = (payload.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    let range = start..start + payload.len();
    match frame.get(range.clone()) {
        Some(_) => Ok((ip.src_addr(), range)),
        None => Err(DropReason::WireguardMalformed),
    }
}

/// With WireGuard on, a frame from the underlay: its UDP payload is opened
/// by the peer at its outer source address. Data: the plaintext (the
/// peer's overlay datagram) replaces the outer IPv4 datagram and the
/// frame goes on to `decapsulate`. A handshake message is answered in place
/// (the reply goes back out of the underlay) or consumed. Takes the peer's
/// lock for this one frame (a worker that batches opens first, grouped by
/// peer: [`open_deferred`]).
fn wg_open(
    buf: &mut [u8],
    st: &mut WorkerState,
    len: usize,
    t: &TunnelSpec,
    port: PortId,
) -> ControlFlow<Verdict, usize> {
    use core::ops::ControlFlow::Break;
    let Some(wg) = st.wg.as_deref() else {
        return Continue(len);
    };
    let (src, range) = match wg_message(buf.get(..len).unwrap_or_default(), t) {
        Ok(m) => m,
        Err(r) => return Break(Verdict::Drop(r)),
    };
    let scratch = &mut st.wg_scratch;
    wg.with_peer(src, |wp| open_into(buf, src, range, wp, scratch, t, port))
}

/// Opens the WireGuard message at `buf[range]` from the peer at `src`.
fn open_into(
    buf: &mut [u8],
    src: Ipv4Addr,
    range: Range<usize>,
    wp: Option<&mut WgPeer>,
    scratch: &mut [u8],
    t: &TunnelSpec,
    port: PortId,
) -> ControlFlow<Verdict, usize> {
    use core::ops::ControlFlow::Break;
    let bad = |r| Break(Verdict::Drop(r));
    let Some(wp) = wp else {
        return bad(DropReason::WireguardNoPeer);
    };
    let payload = buf.get(range).unwrap_or_default();
    match wp.open(payload, scratch) {
        Err(r) => bad(r),
        Ok(Opened::Nothing) => bad(DropReason::WireguardControl),
        Ok(Opened::Plain(p)) => {
            // What a peer's key sealed must come from that peer.
            if p.get(12..16) != Some(&src.octets()[..]) {
                return bad(DropReason::TunnelUnknownPeer);
            }
            let n = ethernet::HEADER_LEN + p.len();
            match buf.get_mut(ethernet::HEADER_LEN..n) {
                Some(d) => d.copy_from_slice(p),
                None => return bad(DropReason::WireguardMalformed),
            }
            Continue(n)
        }
        Ok(Opened::Reply(m)) => {
            let total = OUTER + m.len();
            let Some(out) = buf.get_mut(..total) else {
                return bad(DropReason::TooBig);
            };
            out[OUTER..].copy_from_slice(m);
            let mut e = Frame::new_unchecked(&mut out[..ethernet::HEADER_LEN]);
            let (d, s) = (e.dst_addr(), e.src_addr());
            e.set_dst_addr(s);
            e.set_src_addr(d);
            // To the tunnel's port, not the sender's source port: that is
            // the one port a peer's XDP program hands to its dataplane.
            write_outer(out, t.underlay.ipv4, src, t.udp_port, t.udp_port);
            Break(Verdict::Tx { port, len: total })
        }
    }
}

/// Writes the outer IPv4 (TTL 64, DF, checksum) and UDP headers (checksum
/// 0, as the overlay's) of `frame`, whose payload follows them.
fn write_outer(
    frame: &mut [u8],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
) {
    let total = frame.len();
    let mut e = Frame::new_unchecked(&mut frame[..ethernet::HEADER_LEN]);
    e.set_ethertype(ethernet::ethertype::IPV4);
    let ip_b = &mut frame[ethernet::HEADER_LEN..ethernet::HEADER_LEN + ipv4::HEADER_LEN];
    let mut ip = ipv4::Packet::new_unchecked(ip_b);
    ip.set_version_and_header_len(ipv4::HEADER_LEN);
    ip.set_dscp_ecn(0);
    ip.set_total_len((total - ethernet::HEADER_LEN) as u16);
    ip.set_ident(0);
    ip.set_flags_and_offset(true, false, 0);
    ip.set_ttl(encap::OUTER_TTL);
    ip.set_protocol(ip_proto::UDP);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    let mut u =
        udp::Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN + ipv4::HEADER_LEN..OUTER]);
    u.set_src_port(sport);
    u.set_dst_port(dport);
    u.set_length((total - ethernet::HEADER_LEN - ipv4::HEADER_LEN) as u16);
    u.set_checksum(0);
}
