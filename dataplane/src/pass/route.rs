//! Stages 3 and 4: the source check and the route.

use core::ops::ControlFlow::{self, Continue};
use std::net::IpAddr;

use super::{drop, Parsed, Pass, Sender};
use crate::snapshot::PortId;
use crate::wire::ethernet::Mac;
use crate::wire::ipv6;
use crate::{DropReason, Verdict};

/// Where the route stage sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the destination endpoint in the snapshot.
    pub endpoint: u32,
    /// The port the destination pod sits behind.
    pub port: PortId,
    /// Destination MAC: the pod's own.
    pub dst_mac: Mac,
    /// Source MAC: the node-side end of the destination port.
    pub src_mac: Mac,
    /// MTU of the destination link (IP packet size).
    pub mtu: u16,
}

/// Where a packet goes after the `route` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A pod on this node.
    Local(Route),
    /// The node itself, through the host port (the route's `endpoint` is
    /// unused: no pod sits there).
    Host(Route),
    /// A pod behind a peer node (index in the tunnel spec's peers), through
    /// the tunnel whose inner MTU is `inner_mtu`.
    Remote { peer: u32, inner_mtu: u16 },
    /// The world, through the node's uplink (an IPv4 address outside every
    /// cluster range; docs/egress.md).
    Uplink { mtu: u16 },
}

impl Pass<'_> {
    /// Stage 3: a pod's frame came from a managed pod and carries its own
    /// address (returns the source endpoint's index); a peer's frame
    /// carries an address of that peer's pod CIDRs (no local endpoint).
    pub(super) fn check_source(
        &self,
        pkt: &Parsed,
        sender: Sender,
    ) -> ControlFlow<Verdict, Option<u32>> {
        let snap = self.snap;
        if let Sender::Peer { peer, .. } = sender {
            let from_peer = snap.tunnel().and_then(|(_, t)| t.peer_for(pkt.key.src));
            if from_peer != Some(peer) {
                return drop(DropReason::SourceSpoofed);
            }
            return Continue(None);
        }
        if let Sender::Host = sender {
            return match pkt.key.src {
                IpAddr::V6(a) if ipv6::is_link_local(a) => drop(DropReason::ToNode),
                a if snap.is_host_addr(a) => Continue(None),
                _ => drop(DropReason::SourceSpoofed),
            };
        }
        if let Sender::World = sender {
            // Reverse-SNATed already: only replies of SNAT flows get here.
            return Continue(None);
        }
        if let Sender::Outside = sender {
            // A raw frame on the underlay cannot speak for the node, a
            // local pod or a peer's pods (their traffic comes through the
            // tunnel, with its identity): host rules with pod peers must
            // not be met by a forged address.
            let src = pkt.key.src;
            let pod_like = snap.is_host_addr(src)
                || match src {
                    IpAddr::V4(a) => snap.endpoint_by_v4(a).is_some(),
                    IpAddr::V6(a) => snap.endpoint_by_v6(a).is_some(),
                }
                || snap
                    .tunnel()
                    .is_some_and(|(_, t)| t.peer_for(src).is_some());
            return match pod_like {
                true => drop(DropReason::SourceSpoofed),
                false => Continue(None),
            };
        }
        let Some((idx, ep)) = snap.endpoint_on_port(self.ingress) else {
            return drop(DropReason::UnknownIngress);
        };
        let own = match pkt.key.src {
            IpAddr::V4(a) => ep.ipv4 == Some(a),
            IpAddr::V6(a) if ipv6::is_link_local(a) => return drop(DropReason::ToNode),
            IpAddr::V6(a) => ep.ipv6 == Some(a),
        };
        if !own {
            return drop(DropReason::SourceSpoofed);
        }
        Continue(Some(idx))
    }

    /// Stage 4: multicast and node-bound traffic stop here; a local pod's
    /// address routes to its port, a remote pod CIDR's to its peer node, a
    /// node address to the host port (when the node has one).
    pub(super) fn route(&self, pkt: &Parsed) -> ControlFlow<Verdict, Next> {
        let snap = self.snap;
        if let Some(h) = snap.host() {
            if h.addrs.contains(&pkt.key.dst) {
                let Some(port) = snap.port(h.port) else {
                    return drop(DropReason::NoRoute);
                };
                return Continue(Next::Host(Route {
                    endpoint: u32::MAX,
                    port: h.port,
                    dst_mac: h.node_mac,
                    src_mac: port.mac,
                    mtu: port.mtu,
                }));
            }
        }
        let found = match pkt.key.dst {
            IpAddr::V4(a) => {
                if a.is_multicast() || a.is_broadcast() {
                    return drop(DropReason::Multicast);
                }
                if Some(a) == snap.spec.node_ipv4 || a.is_link_local() {
                    return drop(DropReason::ToNode);
                }
                snap.endpoint_by_v4(a)
            }
            IpAddr::V6(a) => {
                if a.is_multicast() {
                    return drop(DropReason::Multicast);
                }
                if Some(a) == snap.spec.node_ipv6 || ipv6::is_link_local(a) {
                    return drop(DropReason::ToNode);
                }
                snap.endpoint_by_v6(a)
            }
        };
        let Some((endpoint, ep)) = found else {
            if let Some((_, t)) = snap.tunnel() {
                if let Some(peer) = t.peer_for(pkt.key.dst) {
                    return Continue(Next::Remote {
                        peer,
                        inner_mtu: t.inner_mtu,
                    });
                }
            }
            if let (Some(u), IpAddr::V4(a)) = (snap.uplink(), pkt.key.dst) {
                // A node-port reply (source: the node's underlay address,
                // which no pod can send from) goes back to its client
                // wherever it is; so does an external address's reply
                // (`external.rs`; no pod sends from one either).
                if !u.cluster.contains(a)
                    || pkt.key.src == IpAddr::V4(u.node_ipv4)
                    || snap.services().is_external(pkt.key.src)
                {
                    return Continue(Next::Uplink { mtu: u.mtu });
                }
            }
            // IPv6 to the world: only with the node's IPv6 underlay address
            // to masquerade on (docs/egress.md).
            if let (Some(u), IpAddr::V6(a)) = (snap.uplink(), pkt.key.dst) {
                if let Some(node6) = u.node_ipv6 {
                    if !u.cluster6.contains(a)
                        || pkt.key.src == IpAddr::V6(node6)
                        || snap.services().is_external(pkt.key.src)
                    {
                        return Continue(Next::Uplink { mtu: u.mtu });
                    }
                }
            }
            return drop(DropReason::NoRoute);
        };
        let Some(port) = snap.port(ep.port) else {
            return drop(DropReason::NoRoute);
        };
        Continue(Next::Local(Route {
            endpoint,
            port: ep.port,
            dst_mac: ep.mac,
            src_mac: port.mac,
            mtu: port.mtu,
        }))
    }
}
