//! `weir demo`: the embedded default cluster — three namespaces (x, y, z)
//! with pods a, b, c serving TCP and UDP on ports 80 and 81, the layout of
//! upstream's NetworkPolicy e2e suite.

/// The demo's manifests (also in docs/examples/demo.yaml).
pub const MANIFESTS: &str = include_str!("../../docs/examples/demo.yaml");
