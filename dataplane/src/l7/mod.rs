//! Inline L7 inspection. The engines (HTTP stream inspector, request-head
//! parser, HTTP and DNS rule sets, DNS parsing) are pure and shared with
//! `weir policy explain`: they live in [`weir_model::l7`] and are
//! re-exported here. This module adds what writes packets:
//! - [`reply`]: the 403 response and the frames that end a denied
//!   connection (403+FIN toward the client, RST toward the server).
//! - [`server_end`]: where each L7 flow's server stream ends, shared by
//!   the workers (the HTTP/2 answer goes after it).
#![forbid(unsafe_code)]

pub mod reply;
pub mod server_end;

pub use weir_model::l7::*;
