//! NodePort Services (docs/services.md, NodePort): TCP/UDP from the uplink
//! to the node's underlay address (IPv4, or IPv6 for the Service's IPv6
//! frontends) at a Service's `nodePort`.
//!
//! - **In** (right after parse, frames the XDP program handed over from
//!   the underlay): the frontend of (protocol, nodePort); a flow already
//!   sent to a backend that still is one keeps it, else a backend is
//!   picked: `externalTrafficPolicy: Cluster` by Maglev over every active
//!   backend (as ClusterIP), `Local` among this node's active backends only
//!   (none: `nodeport-no-local-endpoint`). The destination becomes the
//!   backend.
//!   - A backend on this node: no SNAT, the client's address is preserved;
//!     the backend's reply (backend → client) finds the `Reverse` entry in
//!     the Service stage and leaves with the node's address and nodePort
//!     as source, out through the uplink.
//!   - A backend on another node (`Cluster` only): the source becomes this
//!     node's pod-CIDR gateway address of the flow's family
//!     (`SnapshotSpec::node_ipv4`, e.g. 10.244.0.1, or `node_ipv6`) and a port of this worker's SNAT share. That address is
//!     in this node's pod CIDR, so the peer's source check admits it and
//!     its reply routes back here through the tunnel, where
//!     [`Pass::node_port_reply`] restores (node address, nodePort) →
//!     client before the route, which sends it out the uplink.
//! - No frontend for the port: `no-route`.

use core::ops::ControlFlow::{self, Continue};
use std::net::IpAddr;

use super::parse::Parsed;
use super::service::{has_backend, tuple_hash};
use super::{drop, Pass};
use crate::flow_key::FlowKey;
use crate::snapshot::{SNAT_PORT_FIRST, SNAT_PORT_LAST};
use crate::svc_nat::{Kind, Nat};
use crate::wire::ip_proto;
use crate::DropReason;
use crate::Verdict;

impl Pass<'_> {
    fn np_idle(&self, proto: u8) -> u64 {
        match proto {
            ip_proto::TCP => self.st.ct.timeouts().tcp_established,
            _ => self.st.ct.timeouts().udp_replied,
        }
    }

    /// A new or known flow to a node port (see the module doc).
    pub(super) fn node_port_in(&mut self, pkt: &mut Parsed) -> ControlFlow<Verdict, ()> {
        let snap = self.snap;
        let front = if pkt.key.dst.is_ipv6() {
            snap.services().node_port_v6(pkt.key.proto, pkt.key.dport)
        } else {
            snap.services().node_port(pkt.key.proto, pkt.key.dport)
        };
        let Some(front) = front else {
            return drop(DropReason::NoRoute);
        };
        self.balance_in(pkt, front)
    }

    /// A flow from the world to frontend `front` (a node port, or an
    /// external address: `external.rs`): the backend pick, NAT entries and
    /// rewrite described in the module doc. The address and port the
    /// client sent to are what its replies come from.
    pub(super) fn balance_in(&mut self, pkt: &mut Parsed, front: u32) -> ControlFlow<Verdict, ()> {
        let snap = self.snap;
        let f = snap.frontend(front);
        let now = self.st.now_ns;
        let until = now + self.np_idle(pkt.key.proto);
        let nat = self.st.ct.nat();
        let local = |a: IpAddr| match a {
            IpAddr::V4(a) => snap.endpoint_by_v4(a).is_some(),
            IpAddr::V6(a) => snap.endpoint_by_v6(a).is_some(),
        };
        let known = nat
            .get(&pkt.key, Kind::Forward, now, until)
            .filter(|n| has_backend(f, n.addr, n.port));
        let chosen = match known {
            Some(n) => n,
            None => {
                let hash = tuple_hash(pkt);
                let backend = if f.external_local {
                    let n = f
                        .backends
                        .iter()
                        .filter(|b| b.active && local(b.ip))
                        .count();
                    if n == 0 {
                        return drop(DropReason::NodePortNoLocalEndpoint);
                    }
                    f.backends
                        .iter()
                        .filter(|b| b.active && local(b.ip))
                        .nth((hash % n as u64) as usize)
                } else {
                    snap.services()
                        .pick(front, hash)
                        .and_then(|i| f.backends.get(usize::from(i)))
                };
                let Some(b) = backend else {
                    return drop(DropReason::ServiceNoEndpoints);
                };
                let (addr, port) = (b.ip, b.port);
                let mut chosen = Nat {
                    addr,
                    port,
                    other: None,
                    frontend: front,
                    other_port: 0,
                };
                if local(addr) {
                    // Reply: backend → client, restored to come from the
                    // node's address and nodePort.
                    let reply = FlowKey {
                        src: addr,
                        dst: pkt.key.src,
                        proto: pkt.key.proto,
                        sport: port,
                        dport: pkt.key.sport,
                    };
                    let back = Nat {
                        addr: pkt.key.dst,
                        port: pkt.key.dport,
                        other: None,
                        frontend: front,
                        other_port: 0,
                    };
                    nat.set(&reply, Kind::Reverse, back, now, until);
                } else {
                    let gw = match addr {
                        IpAddr::V4(_) => snap.spec.node_ipv4.map(IpAddr::V4),
                        IpAddr::V6(_) => snap.spec.node_ipv6.map(IpAddr::V6),
                    };
                    let Some(gw) = gw else {
                        return drop(DropReason::NoRoute);
                    };
                    let reply = |p| FlowKey {
                        src: addr,
                        dst: gw,
                        proto: pkt.key.proto,
                        sport: port,
                        dport: p,
                    };
                    let Some(sport) = self.free_snat_port(hash, reply) else {
                        return drop(DropReason::SnatPortsExhausted);
                    };
                    let back = Nat {
                        addr: pkt.key.src,
                        port: pkt.key.sport,
                        other: Some(pkt.key.dst),
                        frontend: front,
                        other_port: pkt.key.dport,
                    };
                    nat.set(&reply(sport), Kind::SnatIn, back, now, until);
                    chosen.other = Some(gw);
                    chosen.other_port = sport;
                }
                nat.set(&pkt.key, Kind::Forward, chosen, now, until);
                chosen
            }
        };
        let src = chosen.other.map(|a| (a, chosen.other_port));
        if super::service::rewrite(self.buf, pkt, src, Some((chosen.addr, chosen.port))).is_err() {
            return drop(DropReason::L4Truncated);
        }
        if let Some((a, p)) = src {
            pkt.key.src = a;
            pkt.key.sport = p;
        }
        pkt.key.dst = chosen.addr;
        pkt.key.dport = chosen.port;
        Continue(())
    }

    /// A remote backend's reply to a node-port flow this node SNATed (to
    /// its pod-CIDR gateway address and a SNAT port): restored to (node
    /// address, nodePort) → client. Returns the packet as routing must see
    /// it (conntrack and policy see it as it came), `None` when it is not
    /// one.
    pub(super) fn node_port_reply(&mut self, pkt: &Parsed) -> ControlFlow<Verdict, Option<Parsed>> {
        let to_gw = match pkt.key.dst {
            IpAddr::V4(d) => self.snap.spec.node_ipv4 == Some(d),
            IpAddr::V6(d) => self.snap.spec.node_ipv6 == Some(d),
        };
        if !to_gw
            || !matches!(pkt.key.proto, ip_proto::TCP | ip_proto::UDP)
            || !(SNAT_PORT_FIRST..=SNAT_PORT_LAST).contains(&pkt.key.dport)
            || pkt.icmp_error
        {
            return Continue(None);
        }
        let now = self.st.now_ns;
        let until = now + self.np_idle(pkt.key.proto);
        let Some(n) = self.st.ct.nat().get(&pkt.key, Kind::SnatIn, now, until) else {
            return drop(DropReason::SnatNoEntry);
        };
        let Some(node) = n.other else {
            return drop(DropReason::SnatNoEntry);
        };
        let src = (node, n.other_port);
        if super::service::rewrite(self.buf, pkt, Some(src), Some((n.addr, n.port))).is_err() {
            return drop(DropReason::L4Truncated);
        }
        let mut routed = *pkt;
        routed.key.src = node;
        routed.key.sport = n.other_port;
        routed.key.dst = n.addr;
        routed.key.dport = n.port;
        Continue(Some(routed))
    }
}
