//! Stages 1 and 11: the overlay. Frames from the underlay are unwrapped
//! before they are parsed; frames for a pod behind a peer node are
//! rewritten as for a local hop (inner MACs: our VTEP → the peer's VTEP,
//! TTL − 1), then wrapped. See `encap` and docs/tunnel.md.

use core::ops::ControlFlow::{self, Continue};

use super::{Parsed, Pass, Sender};
use crate::encap;
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
            {
                return Continue((len, Sender::World));
            }
        }
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
        match encap::encapsulate(self.buf, len, t, p, identity, sport) {
            Some(len) => Verdict::Tx {
                port: tables.port,
                len,
            },
            None => Verdict::Drop(DropReason::TooBig),
        }
    }
}
