//! The key of a flow, as conntrack, policy, the flow log and the tunnel's
//! outer source port see it. A leaf: it depends on nothing in the crate.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

/// The flow a packet belongs to, as conntrack and policy will key it.
///
/// Ports are zero for protocols without them and for non-first fragments.
/// ICMP/ICMPv6: `sport` is the echo identifier for echo request/reply (zero
/// for other types), `dport` is `type << 8 | code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl FlowKey {
    /// All zeros (0.0.0.0 both ways, no protocol): placeholders of slots
    /// not yet written (stage 0's), never a packet's key.
    pub const UNSPECIFIED: FlowKey = FlowKey {
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        proto: 0,
        sport: 0,
        dport: 0,
    };
}
