//! A Service's external addresses reached from the world (docs/services.md,
//! LoadBalancer and external IPs): `spec.externalIPs` and a load balancer's
//! addresses, whose packets the load balancer (MetalLB L2/BGP, a cloud's
//! pass-through LB) delivers to a node with the address as destination.
//!
//! - **Peek** ([`is_to_external`], before parse, on the underlay port): a
//!   whole TCP/UDP datagram (IPv4: no MF, offset 0; IPv6: TCP/UDP directly
//!   after the header) to an external frontend's address, any port. The
//!   XDP program's underlay branch hands exactly the IPv4 ones to the
//!   dataplane (`EXTERNAL_V4`); IPv6 ones stay the kernel's there.
//! - **In** ([`Pass::external_in`], from `uplink_in`): the frontend of
//!   (address, protocol, port) is load balanced exactly as a node port
//!   (`nodeport.rs`, `balance_in`): `externalTrafficPolicy: Cluster` over
//!   every active backend, SNAT to this node's pod-CIDR gateway address
//!   for a backend on another node; `Local` over this node's backends
//!   only, the client's address kept. Replies leave the uplink from
//!   (external address, port). A port the Service does not have, or
//!   anything but TCP/UDP: `no-route`.

use core::ops::ControlFlow;
use std::net::IpAddr;

use super::parse::{Fragment, Parsed};
use super::{drop, Pass};
use crate::snapshot::Snapshot;
use crate::wire::{ethernet, ip_proto};
use crate::{DropReason, Verdict};

/// Whether `frame` (from the uplink) is a whole TCP/UDP datagram to one of
/// the Services' external addresses. A raw peek, before parse.
pub(super) fn is_to_external(frame: &[u8], snap: &Snapshot) -> bool {
    let svc = snap.services();
    let ip_at = ethernet::HEADER_LEN;
    if let Some((proto, dst, _)) = super::parse::peek_whole_v4(frame) {
        return matches!(proto, ip_proto::TCP | ip_proto::UDP)
            && svc.is_external(IpAddr::from(dst));
    }
    match frame.get(12..14) {
        Some([0x86, 0xdd]) => {
            let (Some(&ver), Some(&next), Some(dst)) = (
                frame.get(ip_at),
                frame.get(ip_at + 6),
                frame.get(ip_at + 24..ip_at + 40),
            ) else {
                return false;
            };
            let Ok(dst) = <[u8; 16]>::try_from(dst) else {
                return false;
            };
            ver >> 4 == 6
                && matches!(next, ip_proto::TCP | ip_proto::UDP)
                && svc.is_external(IpAddr::from(dst))
        }
        _ => false,
    }
}

impl Pass<'_> {
    /// A flow from the world to an external address (see the module doc).
    pub(super) fn external_in(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, ()> {
        if pkt.fragment != Fragment::Whole
            || pkt.icmp_error
            || !matches!(pkt.key.proto, ip_proto::TCP | ip_proto::UDP)
        {
            return drop(DropReason::NoRoute);
        }
        let snap = self.snap;
        let front = snap
            .services()
            .frontend(pkt.key.dst, pkt.key.proto, pkt.key.dport)
            .filter(|&i| snap.frontend(i).external);
        let Some(front) = front else {
            return drop(DropReason::NoRoute);
        };
        self.balance_in(pkt, front)
    }
}
