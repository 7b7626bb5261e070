//! Inline L7 inspection: the pure engines the pass calls for flows whose
//! admitted rule carries L7 parts (see docs/l7.md).
//!
//! - [`stream`]: per-flow HTTP/1.x inspection of the client→server byte
//!   stream: TCP reassembly of request heads (bounded, in preallocated
//!   buffers lent only while a head is open), the hold/release contract, body tracking (Content-Length and
//!   chunked) so that every pipelined request is judged.
//! - [`http`]: the strict request-head parser (RFC 9112).
//! - [`matcher`]: HTTP rule sets (method, path, host, headers),
//!   plain-data spec and compiled form, first match allows.
//! - the 403 response and the frames that end a denied connection are
//!   built by the dataplane (`weir_dataplane::l7::reply`): they write
//!   packets.
//! - [`dns`]: DNS query parsing, name patterns, REFUSED in place, and
//!   A/AAAA extraction from responses along the CNAME chain.
//!
//! Nothing here allocates per packet, reads a clock, or panics on any input.
#![forbid(unsafe_code)]

pub mod dns;
pub mod http;
pub mod matcher;
pub mod stream;

pub use http::{parse_head, BodyFraming, RequestHead, Version};
pub use matcher::{HttpRuleSet, HttpRuleSetSpec, HttpRuleSpec, PathMatchSpec};
pub use stream::{Feed, HttpInspector, InspectorPool, L7Verdict, Limits, SlotId, StreamState};

/// Why L7 inspection denied a flow. Every refusal is a deny: the flow is
/// answered with a 403 (when the client can read one) and closed.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L7Reason {
    /// A complete, valid request matched no allow rule.
    Policy = 0,
    /// LF not preceded by CR.
    BareLf,
    /// CR not followed by LF.
    BareCr,
    /// NUL or another control byte (other than HTAB) in the head.
    ControlByte,
    /// Header line starting with whitespace (obsolete line folding).
    ObsFold,
    /// Whitespace between a field name and its colon.
    WhitespaceBeforeColon,
    /// The request line is not `method SP target SP version`.
    BadRequestLine,
    BadMethod,
    /// The request target is not origin-, absolute- or asterisk-form, or has
    /// characters outside RFC 3986.
    BadTarget,
    /// Dot segments, or a percent-encoded `/`, `\`, `.` or NUL in the path.
    PathNotNormal,
    /// Not HTTP/1.0 or HTTP/1.1.
    BadVersion,
    /// A header line without colon or with a name that is not a token.
    BadHeader,
    TooManyHeaders,
    /// HTTP/1.1 without `Host`.
    MissingHost,
    DuplicateHost,
    /// `Host` differs from the authority of an absolute-form target.
    HostMismatch,
    BadHost,
    BadContentLength,
    /// More than one `Content-Length` field (even with equal values).
    DuplicateContentLength,
    ContentLengthAndTransferEncoding,
    /// A transfer coding other than exactly one `chunked` (or any in 1.0).
    BadTransferEncoding,
    /// Invalid chunked framing (size, extension, CRLF, trailer).
    BadChunk,
    /// `CONNECT` or `Upgrade`: the stream would stop being HTTP/1.
    Unsupported,
    /// The head is longer than the limit.
    HeadTooLong,
    /// A retransmitted segment carries bytes that differ from the bytes
    /// already seen at the same sequence numbers.
    OverlapMismatch,
    /// More frames held for a flow than allowed.
    TooManySegments,
    /// Frames stayed held longer than the hold limit (a head whose end
    /// never came).
    HoldTimeout,
    /// Held bytes would exceed the slot's buffer (not produced any more: the
    /// buffer keeps only the open head and always fits one; kept so logged
    /// names stay stable).
    HoldOverflow,
    /// A DNS query on a flow under DNS rules asked for a name no entry
    /// allows (UDP: answered REFUSED by weir; TCP: dropped).
    DnsRefused,
    /// The client ended its side (FIN) inside a request head: a server may
    /// act on whatever it has at end of stream, and part of the head was
    /// forwarded.
    IncompleteHead,
}

impl L7Reason {
    /// Short kebab-case name for flow logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            L7Reason::Policy => "l7-policy",
            L7Reason::BareLf => "http-bare-lf",
            L7Reason::BareCr => "http-bare-cr",
            L7Reason::ControlByte => "http-control-byte",
            L7Reason::ObsFold => "http-obs-fold",
            L7Reason::WhitespaceBeforeColon => "http-space-before-colon",
            L7Reason::BadRequestLine => "http-bad-request-line",
            L7Reason::BadMethod => "http-bad-method",
            L7Reason::BadTarget => "http-bad-target",
            L7Reason::PathNotNormal => "http-path-not-normal",
            L7Reason::BadVersion => "http-bad-version",
            L7Reason::BadHeader => "http-bad-header",
            L7Reason::TooManyHeaders => "http-too-many-headers",
            L7Reason::MissingHost => "http-missing-host",
            L7Reason::DuplicateHost => "http-duplicate-host",
            L7Reason::HostMismatch => "http-host-mismatch",
            L7Reason::BadHost => "http-bad-host",
            L7Reason::BadContentLength => "http-bad-content-length",
            L7Reason::DuplicateContentLength => "http-duplicate-content-length",
            L7Reason::ContentLengthAndTransferEncoding => "http-cl-and-te",
            L7Reason::BadTransferEncoding => "http-bad-transfer-encoding",
            L7Reason::BadChunk => "http-bad-chunk",
            L7Reason::Unsupported => "http-unsupported",
            L7Reason::HeadTooLong => "http-head-too-long",
            L7Reason::OverlapMismatch => "tcp-overlap-mismatch",
            L7Reason::TooManySegments => "http-too-many-segments",
            L7Reason::HoldTimeout => "http-hold-timeout",
            L7Reason::HoldOverflow => "http-hold-overflow",
            L7Reason::DnsRefused => "dns-refused",
            L7Reason::IncompleteHead => "http-incomplete-head",
        }
    }
}
