//! Every reason weir drops a frame, defined once (Cilium's drop_reasons.h).
//! The same enum indexes per-worker counters and is shown by status, flows
//! and explain. Add new reasons at the end; never reuse a number.
#![forbid(unsafe_code)]

use serde::Serialize;

macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal => $slug:literal, )*) => {
        #[repr(u8)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum DropReason {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl DropReason {
            /// All reasons, in numeric order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];

            /// Short stable name used in status, flows, metrics and docs.
            pub const fn slug(self) -> &'static str {
                match self { $(DropReason::$name => $slug,)* }
            }

            /// One-line human description (the doc comment).
            pub const fn describe(self) -> &'static str {
                match self { $(DropReason::$name => concat!($($doc),*),)* }
            }
        }
    };
}

drop_reasons! {
    /// frame shorter than an Ethernet header
    FrameTooShort = 0 => "frame-too-short",
    /// EtherType weir does not forward (not IPv4 or IPv6)
    UnsupportedEtherType = 1 => "unsupported-ethertype",
    /// IPv4 header truncated or invalid (version, IHL, total length)
    Ipv4Malformed = 2 => "ipv4-malformed",
    /// IPv6 header truncated or invalid (version, payload length)
    Ipv6Malformed = 3 => "ipv6-malformed",
    /// transport header (TCP/UDP/SCTP/ICMP) truncated
    L4Truncated = 4 => "l4-truncated",
    /// frame arrived on an interface weir does not manage
    UnknownIngress = 5 => "unknown-ingress",
    /// source address is not the sending pod's own (anti-spoofing)
    SourceSpoofed = 6 => "source-spoofed",
    /// no route to the destination address
    NoRoute = 7 => "no-route",
    /// TTL or hop limit expired (an ICMP time-exceeded was sent when allowed)
    TtlExceeded = 8 => "ttl-exceeded",
    /// frame larger than the destination's MTU
    TooBig = 9 => "too-big",
    /// the transmit ring of the destination was full
    TxRingFull = 10 => "tx-ring-full",
    /// no free UMEM frame was available
    NoFreeFrame = 11 => "no-free-frame",
    /// multicast or broadcast destination that weir does not forward
    Multicast = 12 => "multicast",
    /// IPv6 extension headers weir does not forward (a routing header with segments left, a chain of more than 8 headers)
    Ipv6Unsupported = 13 => "ipv6-unsupported",
    /// destination is the node itself (handled by the kernel, not forwarded)
    ToNode = 14 => "to-node",
    /// denied by policy
    PolicyDenied = 15 => "policy-denied",
    /// packet invalid for its connection's state (TCP flags out of state, ICMP error quoting no tracked flow)
    CtInvalid = 16 => "ct-invalid",
    /// connection-tracking table full of established flows; new flow refused
    CtTableFull = 17 => "ct-table-full",
    /// tunnel frame malformed (outer lengths, VXLAN flags, Geneve version, protocol or options)
    TunnelMalformed = 18 => "tunnel-malformed",
    /// tunnel frame carries a VNI other than this node's
    TunnelBadVni = 19 => "tunnel-bad-vni",
    /// tunnel frame from an outer source address that is no known peer node
    TunnelUnknownPeer = 20 => "tunnel-unknown-peer",
    /// HTTP request denied by L7 rules or refused as ambiguous (the client got a 403, the server an RST)
    L7Denied = 21 => "l7-denied",
    /// segment of an HTTP-inspected flow beyond a gap, or repeating held bytes (TCP retransmits it)
    L7OutOfOrder = 22 => "l7-out-of-order",
    /// flow under HTTP rules without an inspector on this worker (limit of open flows reached, mid-stream pickup, or seen on another worker); refused
    L7NoSlot = 23 => "l7-no-slot",
    /// DNS query under DNS rules for a name no entry allows (UDP: weir answered REFUSED instead; TCP: dropped)
    DnsRefused = 24 => "dns-refused",
    /// message on a flow under DNS rules that is not exactly one parseable DNS query (or a fragment); refused
    DnsMalformed = 25 => "dns-malformed",
    /// segment of an HTTP-inspected flow dropped because the worker's head buffers or held-frame budget were all in use (TCP retransmits it)
    L7Busy = 26 => "l7-busy",
    /// data segment of an HTTP-inspected flow after its client closed it (FIN or RST) or weir denied it; refused
    L7AfterClose = 27 => "l7-after-close",
    /// non-first fragment whose first fragment weir has not seen (arrived out of order, or its entry expired or was evicted from the fragment table)
    FragmentNoFirst = 28 => "fragment-no-first",
    /// fragment overlapping its datagram's first fragment (it could rewrite the transport header); the rest of the datagram is dropped too
    FragmentOverlap = 29 => "fragment-overlap",
    /// first fragment without its whole transport header (tiny first fragment, or an IPv6 header chain that goes on past it, RFC 7112)
    FragmentInvalid = 30 => "fragment-invalid",
}

impl DropReason {
    /// Number of reasons; the length of per-worker counter arrays.
    pub const COUNT: usize = Self::ALL.len();

    pub const fn index(self) -> usize {
        self as u8 as usize
    }

    pub fn from_slug(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.slug() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_and_ordered() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
            assert!(!r.describe().is_empty());
            assert_eq!(DropReason::from_slug(r.slug()), Some(*r));
        }
    }
}

#[cfg(test)]
mod docs {
    use super::DropReason;

    /// docs/datapath.md lists every reason with its description.
    #[test]
    fn datapath_doc_lists_every_reason() {
        let doc = include_str!("../../docs/datapath.md");
        for r in DropReason::ALL {
            let row = format!("| `{}` | {} |", r.slug(), r.describe().trim());
            assert!(doc.contains(&row), "docs/datapath.md lacks the row: {row}");
        }
    }
}
