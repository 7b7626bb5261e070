//! `weir demo`: the embedded default cluster — three namespaces (x, y, z)
//! with pods a, b, c serving TCP and UDP on ports 80 and 81, the layout of
//! upstream's NetworkPolicy e2e suite.

/// The demo's manifests (also in docs/examples/demo.yaml).
pub const MANIFESTS: &str = include_str!("../../docs/examples/demo.yaml");

/// The demo's policy step (also in docs/examples/demo-policy.yaml).
pub const POLICY: &str = include_str!("../../docs/examples/demo-policy.yaml");
