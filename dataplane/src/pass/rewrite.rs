//! Stage 10: the rewrite toward the destination link.

use std::net::IpAddr;

use super::parse::Parsed;
use super::route::Route;
use super::Pass;
use crate::wire::ethernet::{Frame, Mac};
use crate::wire::{ipv4, ipv6};
use crate::{DropReason, Verdict};

impl Pass<'_> {
    /// Stage 10: trim padding, TTL/hop limit − 1, MACs for the destination link.
    pub(super) fn rewrite(&mut self, pkt: &Parsed, route: &Route) -> Verdict {
        match self.rewrite_frame(pkt, route.dst_mac, route.src_mac) {
            Ok(len) => Verdict::Tx {
                port: route.port,
                len,
            },
            Err(v) => v,
        }
    }

    /// Trims padding, sets the MACs, decrements TTL / hop limit; returns the
    /// frame length.
    pub(super) fn rewrite_frame(
        &mut self,
        pkt: &Parsed,
        dst: Mac,
        src: Mac,
    ) -> Result<usize, Verdict> {
        let len = pkt.frame_len();
        let Some(frame) = self.buf.get_mut(..len) else {
            return Err(Verdict::Drop(DropReason::FrameTooShort));
        };
        let Ok(mut eth) = Frame::new_checked(frame) else {
            return Err(Verdict::Drop(DropReason::FrameTooShort));
        };
        eth.set_dst_addr(dst);
        eth.set_src_addr(src);
        match pkt.key.src {
            IpAddr::V4(_) => match ipv4::Packet::new_checked(eth.payload_mut()) {
                Ok(mut ip) => ip.decrement_ttl(),
                Err(_) => return Err(Verdict::Drop(DropReason::Ipv4Malformed)),
            },
            IpAddr::V6(_) => match ipv6::Packet::new_checked(eth.payload_mut()) {
                Ok(mut ip) => ip.set_hop_limit(pkt.ttl.saturating_sub(1)),
                Err(_) => return Err(Verdict::Drop(DropReason::Ipv6Malformed)),
            },
        }
        Ok(len)
    }
}
