//! Every reason weir drops a frame, defined once (Cilium's drop_reasons.h).
//! The same enum indexes per-worker counters and is shown by status, flows
//! and explain. Add new reasons at the end; never reuse a number.
//!
//! Inline L7 says more about why it refused a flow: each [`L7Reason`] is a
//! finer name under one drop reason ([`L7Reason::drop_reason`]: `l7-denied`
//! for HTTP, `dns-refused` for DNS), shown in the flow log's `l7` note. Both
//! tables are here so there is one vocabulary of reasons.
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
    /// frame for a port whose TX batch of this round was already full (more frames for one port in a round than its batch holds)
    TxBatchFull = 31 => "tx-batch-full",
    /// frame an HTTP-inspected flow had to hold found its hold queue full (the client retransmits it)
    L7HoldFull = 32 => "l7-hold-full",
    /// new flow to a Service frontend (ClusterIP and port) without a ready endpoint (TCP got an RST, UDP an ICMP port unreachable)
    ServiceNoEndpoints = 33 => "service-no-endpoints",
    /// new flow to the world found no free SNAT port on the node's address for its destination (this worker's share of the range is in use)
    SnatPortsExhausted = 34 => "snat-ports-exhausted",
    /// frame from the uplink to a SNAT port (or echo identifier) of the node, or an ICMP error quoting one, that no SNAT mapping knows (expired, or never made)
    SnatNoEntry = 35 => "snat-no-entry",
    /// packet to the world weir cannot masquerade (neither TCP, UDP nor ICMP echo, e.g. an ICMP timestamp request)
    SnatUnsupported = 36 => "snat-unsupported",
    /// new flow to a NodePort with externalTrafficPolicy Local on a node without a ready local endpoint
    NodePortNoLocalEndpoint = 37 => "nodeport-no-local-endpoint",
    /// TLS connection under server-name rules refused: the ClientHello's server name (SNI) matched no rule, was missing, or was hidden by ECH (both ends got an RST)
    TlsSniDenied = 38 => "tls-sni-denied",
    /// TLS connection under server-name rules refused: the first flight is not one valid ClientHello (bad records, fields, duplicate extensions, bad name, FIN inside it, too long; both ends got an RST)
    TlsMalformed = 39 => "tls-malformed",
    /// WireGuard packet whose authentication failed (AEAD tag or handshake MAC wrong: tampered, or sealed with another key)
    WireguardAuthFailed = 40 => "wireguard-auth-failed",
    /// WireGuard data packet whose counter was already seen or is behind the replay window (replayed)
    WireguardReplay = 41 => "wireguard-replay",
    /// WireGuard packet to or from a peer node without a valid public key, or for a session index no peer holds (never sent in clear)
    WireguardNoPeer = 42 => "wireguard-no-peer",
    /// WireGuard packet malformed (length, message type, or a plaintext that is not an IP packet)
    WireguardMalformed = 43 => "wireguard-malformed",
    /// frame toward a peer node dropped while the WireGuard handshake with it was in progress and its 4 handshake buffers were full, or the frame too long to hold (no session yet)
    WireguardNoSession = 44 => "wireguard-no-session",
    /// WireGuard keepalive or handshake message consumed by the node itself (not a loss: counted so that every frame has an outcome)
    WireguardControl = 45 => "wireguard-control",
    /// frame toward a peer node held while the WireGuard handshake with it is under way (sent when the session is up; not a loss)
    WireguardQueued = 46 => "wireguard-queued",
    /// packet of several AF_XDP frames (a multi-buffer jumbo frame) on a path that needs it whole in one frame: held for inline L7 inspection or sealed/opened by WireGuard (docs/performance.md, multi-buffer)
    MultiBufferUnsupported = 47 => "multi-buffer-unsupported",
    /// multi-buffer packet whose descriptor chain was cut short or longer than the worker's linear buffer (never judged, never sent)
    MultiBufferChain = 48 => "multi-buffer-chain",
}

macro_rules! l7_reasons {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal => $slug:literal under $drop:ident, )*) => {
        /// Why L7 inspection denied a flow (a finer name under a
        /// [`DropReason`]). Every refusal is a deny: the flow is answered
        /// with a 403 (when the client can read one) and closed.
        #[repr(u8)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum L7Reason {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl L7Reason {
            /// All L7 reasons, in numeric order.
            pub const ALL: &'static [L7Reason] = &[$(L7Reason::$name,)*];

            /// Short kebab-case name for flow logs and metrics.
            pub const fn as_str(self) -> &'static str {
                match self { $(L7Reason::$name => $slug,)* }
            }

            /// The drop reason a frame refused for this reason counts under.
            pub const fn drop_reason(self) -> DropReason {
                match self { $(L7Reason::$name => DropReason::$drop,)* }
            }
        }
    };
}

l7_reasons! {
    /// A complete, valid request matched no allow rule.
    Policy = 0 => "l7-policy" under L7Denied,
    /// LF not preceded by CR.
    BareLf = 1 => "http-bare-lf" under L7Denied,
    /// CR not followed by LF.
    BareCr = 2 => "http-bare-cr" under L7Denied,
    /// NUL or another control byte (other than HTAB) in the head.
    ControlByte = 3 => "http-control-byte" under L7Denied,
    /// Header line starting with whitespace (obsolete line folding).
    ObsFold = 4 => "http-obs-fold" under L7Denied,
    /// Whitespace between a field name and its colon.
    WhitespaceBeforeColon = 5 => "http-space-before-colon" under L7Denied,
    /// The request line is not `method SP target SP version`.
    BadRequestLine = 6 => "http-bad-request-line" under L7Denied,
    /// The method is not a token.
    BadMethod = 7 => "http-bad-method" under L7Denied,
    /// The request target is not origin-, absolute- or asterisk-form, or has
    /// characters outside RFC 3986.
    BadTarget = 8 => "http-bad-target" under L7Denied,
    /// Dot segments, or a percent-encoded `/`, `\`, `.` or NUL in the path.
    PathNotNormal = 9 => "http-path-not-normal" under L7Denied,
    /// Not HTTP/1.0 or HTTP/1.1.
    BadVersion = 10 => "http-bad-version" under L7Denied,
    /// A header line without colon or with a name that is not a token.
    BadHeader = 11 => "http-bad-header" under L7Denied,
    /// More header lines than the limit.
    TooManyHeaders = 12 => "http-too-many-headers" under L7Denied,
    /// HTTP/1.1 without `Host`.
    MissingHost = 13 => "http-missing-host" under L7Denied,
    /// More than one `Host` field.
    DuplicateHost = 14 => "http-duplicate-host" under L7Denied,
    /// `Host` differs from the authority of an absolute-form target.
    HostMismatch = 15 => "http-host-mismatch" under L7Denied,
    /// `Host` is not a valid authority.
    BadHost = 16 => "http-bad-host" under L7Denied,
    /// `Content-Length` is not a decimal number that fits.
    BadContentLength = 17 => "http-bad-content-length" under L7Denied,
    /// More than one `Content-Length` field (even with equal values).
    DuplicateContentLength = 18 => "http-duplicate-content-length" under L7Denied,
    /// Both `Content-Length` and `Transfer-Encoding`.
    ContentLengthAndTransferEncoding = 19 => "http-cl-and-te" under L7Denied,
    /// A transfer coding other than exactly one `chunked` (or any in 1.0).
    BadTransferEncoding = 20 => "http-bad-transfer-encoding" under L7Denied,
    /// Invalid chunked framing (size, extension, CRLF, trailer).
    BadChunk = 21 => "http-bad-chunk" under L7Denied,
    /// `CONNECT` or `Upgrade`: the stream would stop being HTTP/1.
    Unsupported = 22 => "http-unsupported" under L7Denied,
    /// The head is longer than the limit.
    HeadTooLong = 23 => "http-head-too-long" under L7Denied,
    /// A retransmitted segment carries bytes that differ from the bytes
    /// already seen at the same sequence numbers.
    OverlapMismatch = 24 => "tcp-overlap-mismatch" under L7Denied,
    /// More frames held for a flow than allowed.
    TooManySegments = 25 => "http-too-many-segments" under L7Denied,
    /// Frames stayed held longer than the hold limit (a head whose end
    /// never came).
    HoldTimeout = 26 => "http-hold-timeout" under L7Denied,
    /// Held bytes would exceed the slot's buffer (not produced any more: the
    /// buffer keeps only the open head and always fits one; kept so logged
    /// names stay stable).
    HoldOverflow = 27 => "http-hold-overflow" under L7Denied,
    /// A DNS query on a flow under DNS rules asked for a name no entry
    /// allows (UDP: answered REFUSED by weir; TCP: dropped).
    DnsRefused = 28 => "dns-refused" under DnsRefused,
    /// The client ended its side (FIN) inside a request head: a server may
    /// act on whatever it has at end of stream, and part of the head was
    /// forwarded.
    IncompleteHead = 29 => "http-incomplete-head" under L7Denied,
    /// The ClientHello's server name matched no TLS rule.
    TlsSniDenied = 30 => "tls-sni-denied" under TlsSniDenied,
    /// The ClientHello has no server name (nothing to judge).
    TlsNoSni = 31 => "tls-no-sni" under TlsSniDenied,
    /// The ClientHello carries `encrypted_client_hello` (or draft ESNI):
    /// the real server name is hidden.
    TlsEch = 32 => "tls-ech" under TlsSniDenied,
    /// The first flight is not one valid ClientHello (or ended inside it).
    TlsMalformed = 33 => "tls-malformed" under TlsMalformed,
    /// The ClientHello is longer than the head limit.
    TlsHelloTooLong = 34 => "tls-hello-too-long" under TlsMalformed,
    /// HTTP/2: a bad connection preface, or a frame that breaks the frame
    /// rules a server relies on (stream ids, CONTINUATION order, lengths,
    /// padding, PUSH_PROMISE from a client).
    H2Protocol = 35 => "h2-protocol" under L7Denied,
    /// HTTP/2: a frame, header block or CONTINUATION run beyond the bounds.
    H2TooLarge = 36 => "h2-too-large" under L7Denied,
    /// HTTP/2: a header block HPACK cannot decode (bad index, integer,
    /// string, Huffman code or table size update).
    H2Hpack = 37 => "h2-hpack" under L7Denied,
    /// HTTP/2: a malformed request (pseudo-headers missing, repeated,
    /// unknown or after regular fields; uppercase or invalid names;
    /// connection-specific fields; CR, LF, NUL in values).
    H2Malformed = 38 => "h2-malformed" under L7Denied,
    /// FQDN egress: the ClientHello names a server that no `toFQDNs` rule
    /// of the client allows on this address (not learned for it from an
    /// allowed DNS answer): another name sharing the address (Cilium issue
    /// 31803).
    FqdnSniMismatch = 39 => "fqdn-sni-mismatch" under TlsSniDenied,
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

    #[test]
    fn l7_reasons_are_dense_and_named_once() {
        for (i, r) in L7Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u8 as usize, i, "{r:?}");
            let dup = L7Reason::ALL.iter().filter(|o| o.as_str() == r.as_str());
            assert_eq!(dup.count(), 1, "{r:?}");
            assert!(matches!(
                r.drop_reason(),
                DropReason::L7Denied
                    | DropReason::DnsRefused
                    | DropReason::TlsSniDenied
                    | DropReason::TlsMalformed
            ));
        }
        // The one L7 name that is also a drop reason names the same thing.
        assert_eq!(L7Reason::DnsRefused.as_str(), DropReason::DnsRefused.slug());
        assert_eq!(L7Reason::DnsRefused.drop_reason(), DropReason::DnsRefused);
        assert_eq!(
            L7Reason::TlsSniDenied.as_str(),
            DropReason::TlsSniDenied.slug()
        );
        assert_eq!(
            L7Reason::TlsMalformed.as_str(),
            DropReason::TlsMalformed.slug()
        );
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
