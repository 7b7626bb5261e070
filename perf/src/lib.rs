//! weir-perf: the benchmark harness. Every scenario runs the same workload
//! through weir and through its peers in the same run, and reports absolute
//! numbers together with ratios against the peers (the machine is shared
//! and noisy: ratios are the headline).
//!
//! The load tools are the project's own (this machine has no pktgen and
//! Debian's xdp-tools do not run on its kernel): `sendmmsg`/`recvmmsg` UDP
//! ([`udp`]) and a TCP ping-pong timed into an HDR histogram ([`rr`]), run
//! inside the pods' namespaces and pinned to a core of their own.
//!
//! Scenarios: [`services`] (ClusterIP vs pod IP, kube-proxy nftables peer),
//! [`fastpath`] (one node, pod to pod: kernel routing vs weir in
//! each polling mode).
#![deny(unsafe_code)]

pub mod connrate;
pub mod cpu;
pub mod encap_ab;
pub mod fastpath;
pub mod flows;
pub mod grpc;
pub mod hostpolicy;
pub mod http;
pub mod idle;
pub mod kernel;
// sendmmsg/recvmmsg and AF_PACKET through libc; every block says why it holds.
#[allow(unsafe_code)]
mod mmsg;
pub mod paper;
pub mod peers;
pub mod percore;
pub mod pin;
pub mod plot;
pub mod report;
pub mod rounds;
pub mod rr;
pub mod rrbreak;
pub mod scale;
pub mod services;
pub mod stop;
pub mod tools;
pub mod udp;
pub mod wake;
pub mod weir;
pub mod wireguard;
