//! Stages 1 and 11: the overlay. Frames from the underlay are unwrapped
//! before they are parsed; frames for a pod behind a peer node are
//! rewritten as for a local hop (inner MACs: our VTEP → the peer's VTEP,
//! TTL − 1), then wrapped. See `encap` and docs/tunnel.md.

use core::ops::ControlFlow::{self, Continue};

use super::{Parsed, Pass, Sender, WorkerState};
use crate::encap;
use crate::snapshot::{PortId, TunnelPeer, TunnelSpec};
use crate::wire::ethernet::{self, Frame};
use crate::wire::{ip_proto, ipv4, udp};
use crate::wireguard::{self, Opened, Sealed};
use crate::{DropReason, Verdict};

impl Pass<'_> {
    /// Stage 1: a frame that came in on the underlay port is checked and
    /// decapsulated (its inner frame moves to the start of the buffer);
    /// ICMP errors are not sent back through the tunnel (TTL expiry and
    /// oversize drop). Returns the length of the frame to parse and who
    /// sent it.
    pub(super) fn tunnel_in(&mut self, len: usize) -> ControlFlow<Verdict, (usize, Sender)> {
        let Some((t, tables)) = self.snap.tunnel() else {
            return Continue((len, Sender::Pod));
        };
        if self.ingress != tables.port {
            return Continue((len, Sender::Pod));
        }
        // A reply from the world to a SNAT port (docs/egress.md).
        if let Some(u) = self.snap.uplink() {
            let frame = self.buf.get(..len).unwrap_or_default();
            if super::egress::is_from_uplink(frame, u.node_ipv4)
                || super::nat_icmp::is_snat_icmp(frame, u.node_ipv4)
                || u.routed_v4
                    .is_some_and(|r| super::egress::is_routed_to_pods(frame, r))
                || u.node_ipv6
                    .is_some_and(|n| super::egress::is_from_uplink6(frame, n))
                || u.node_ipv6
                    .is_some_and(|n| super::nat_icmp::is_snat_icmp6(frame, n))
                || u.routed_v6
                    .is_some_and(|r| super::egress::is_routed_to_pods6(frame, r))
            {
                return Continue((len, Sender::World));
            }
        }
        // A flow opening to the node itself under host policy.
        if super::host_in::is_host_in(
            self.buf.get(..len).unwrap_or_default(),
            self.snap,
            t.udp_port,
        ) {
            return Continue((len, Sender::Outside));
        }
        // WireGuard (docs/encryption.md): every frame on the tunnel's port
        // is a WireGuard message; only what it decrypts to is unwrapped.
        let len = match self.st.wg.is_some() {
            true => wg_open(self.buf, self.st, len, t, tables.port)?,
            false => len,
        };
        let d = encap::decapsulate(self.buf, len, t, tables)?;
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
        match encap::encapsulate(self.buf, len, t, p, identity, sport)
            .map(|len| wg_seal(self.buf, self.st, len, t, p, sport))
        {
            Some(Ok(len)) => Verdict::Tx {
                port: tables.port,
                len,
            },
            Some(Err(r)) => Verdict::Drop(r),
            None => Verdict::Drop(DropReason::TooBig),
        }
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

/// With WireGuard on, seals the overlay frame `buf[..len]` (its outer
/// IPv4 datagram is the plaintext) for `peer` and puts the message after
/// new outer IPv4 + UDP headers (same addresses and ports); the Ethernet
/// header stays. Returns the new length; with WireGuard off, `len`.
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
    let mut wp = wg.peer(peer.ipv4).ok_or(DropReason::WireguardNoPeer)?;
    let plain = buf
        .get(ethernet::HEADER_LEN..len)
        .ok_or(DropReason::TunnelMalformed)?;
    let (Sealed::Data(m) | Sealed::Handshake(m)) = wp.seal(plain, &mut st.wg_scratch)?;
    let total = OUTER + m.len();
    let out = buf.get_mut(..total).ok_or(DropReason::TooBig)?;
    out[OUTER..].copy_from_slice(m);
    write_outer(out, t.underlay.ipv4, peer.ipv4, sport, t.udp_port);
    Ok(total)
}

/// With WireGuard on, a frame from the underlay: its UDP payload is opened
/// by the peer at its outer source address. Data: the plaintext (the
/// peer's overlay datagram) replaces the outer IPv4 datagram and the
/// frame goes on to `decapsulate`. A handshake message is answered in place
/// (the reply goes back out of the underlay) or consumed.
fn wg_open(
    buf: &mut [u8],
    st: &mut WorkerState,
    len: usize,
    t: &TunnelSpec,
    port: PortId,
) -> ControlFlow<Verdict, usize> {
    use core::ops::ControlFlow::Break;
    let bad = |r| Break(Verdict::Drop(r));
    let Some(wg) = st.wg.as_deref() else {
        return Continue(len);
    };
    let frame = buf.get(..len).unwrap_or_default();
    let Ok(eth) = Frame::new_checked(frame) else {
        return bad(DropReason::FrameTooShort);
    };
    let Ok(ip) = ipv4::Packet::new_checked(eth.payload()) else {
        return bad(DropReason::WireguardMalformed);
    };
    if ip.version() != 4
        || ip.protocol() != ip_proto::UDP
        || ip.more_frags()
        || ip.frag_offset() != 0
        || ip.dst_addr() != t.underlay.ipv4
    {
        return bad(DropReason::WireguardMalformed);
    }
    let src = ip.src_addr();
    let Ok(u) = udp::Packet::new_checked(ip.payload()) else {
        return bad(DropReason::WireguardMalformed);
    };
    if u.dst_port() != t.udp_port {
        return bad(DropReason::WireguardMalformed);
    }
    let payload = u.payload();
    let Some(mut wp) = wg.peer(src) else {
        return bad(DropReason::WireguardNoPeer);
    };
    match wp.open(payload, &mut st.wg_scratch) {
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
