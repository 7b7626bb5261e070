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
//! - [`h2`]: HTTP/2 with prior knowledge (h2c): frames, HPACK, each
//!   request judged with the HTTP rules (and gRPC rules, which are HTTP
//!   rules on `POST /pkg.Service/Method`).
//! - [`dns`]: DNS query parsing, name patterns, REFUSED in place, and
//!   A/AAAA extraction from responses along the CNAME chain.
//!
//! - [`tls`]: TLS ClientHello reassembly limits, parsing (server name,
//!   ECH) and server-name rules, judged without terminating TLS.
//!
//! Nothing here allocates per packet, reads a clock, or panics on any input.
#![forbid(unsafe_code)]

pub mod dns;
pub mod h2;
pub mod http;
pub mod matcher;
pub mod stream;
pub mod tls;

pub use http::{parse_head, BodyFraming, RequestHead, Version};
pub use matcher::{HttpRuleSet, HttpRuleSetSpec, HttpRuleSpec, PathMatchSpec};
pub use stream::{Feed, HttpInspector, InspectorPool, L7Verdict, Limits, SlotId, StreamState};

/// Why L7 inspection denied a flow: defined with the drop reasons, under
/// the one it counts as.
pub use crate::drop_reason::L7Reason;
