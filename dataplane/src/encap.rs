//! The overlay's two pure stages: [`encapsulate`] a routed frame toward a
//! peer node, and [`decapsulate`] a frame that arrived on the underlay.
//! `pass` calls them; nothing here reads a clock, allocates or panics.
//!
//! Frame growth: the outer headers go IN FRONT of the inner frame, into
//! the room the UMEM frame has before the packet (the XDP headroom, 256
//! bytes for a frame received in copy mode), and the TX descriptor starts
//! there: [`encapsulate_front`] writes only the 50/58 bytes of outer
//! headers and the inner frame does not move; decapsulation
//! ([`unwrap_in_place`]) moves the descriptor's start forward past the
//! outer headers. The worker gets that room and moves the descriptor with
//! `xsk::WorkerUmem::with_frame_room` and `pass::process_at`.
//!
//! Which way, and why: xsk-rs 0.11 (the newest on crates.io) gives a
//! descriptor's address no setter and alone makes descriptors, so weir
//! carries xsk-rs 0.11.0 under third_party/xsk-rs with one patch,
//! `Umem::head_room` and `Umem::adjust_head` (as `bpf_xdp_adjust_head`),
//! wired by `[patch.crates-io]`, the patch ready to offer upstream
//! (third_party/xsk-rs/PATCH.md). A patch of a dozen lines rather than
//! the project's own rings: xsk-rs keeps the ring and UMEM code that works
//! (libxdp's rings, socket setup, shared UMEMs), and the patch can go away
//! once upstream takes it. The kernel takes a TX descriptor anywhere in
//! its chunk as long as the packet does not cross the chunk's end
//! (`xp_aligned_validate_desc`); the completion ring hands the moved
//! address back and the frame ledger finds the frame by masking it, then
//! files it under the address xsk-rs made (`xsk::Frames`).
//!
//! The memmove stays as the fallback, same bytes out: [`encapsulate`]
//! moves the inner frame forward in place (`copy_within`) and writes the
//! headers before it, [`decapsulate`] moves it back to the start. It runs
//! where the frame's start cannot move or the room is too small:
//! multi-buffer packets (the per-worker linear buffer, `multibuf.rs`), the
//! frames WireGuard seals (the seal works on the frame from its start),
//! the 403 that L7 sends back through the tunnel, and `pass::process`
//! (the table tests). Cost of that memmove, measured by `memmove_cost`
//! below: see docs/tunnel.md and docs/performance.md.
//!
//! Outer headers (RFC 7348 §5, RFC 8926 §3.3): Ethernet from our underlay
//! MAC to the peer's; IPv4 from our underlay address to the peer's, TTL 64,
//! DF set (the inner MTU is lowered instead: PMTUD works on the inner path),
//! ID 0, header checksum; UDP from a source port hashed from the inner flow
//! into 49152–65535 (stable per flow: ECMP entropy without reordering), to
//! the tunnel's port, checksum 0 (allowed for IPv4).
#![forbid(unsafe_code)]

use core::ops::ControlFlow::{self, Break, Continue};
use std::net::IpAddr;

use crate::flow_key::FlowKey;
use crate::policy::Identity;
use crate::snapshot::{Encap, TunnelPeer, TunnelSpec, TunnelTables};
use crate::wire::ethernet::{self, ethertype, Frame};
use crate::wire::{geneve, ip_proto, ipv4, udp, vxlan};
use crate::{DropReason, Verdict};

/// Outer Ethernet + IPv4 + UDP.
const OUTER_L4: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
/// TTL of the outer header.
pub const OUTER_TTL: u8 = 64;
/// First port of the ephemeral range the UDP source port is drawn from.
pub const SPORT_BASE: u16 = 49152;

/// Bytes added in front of the inner frame.
pub const fn overhead(encap: Encap, identity: bool) -> usize {
    OUTER_L4
        + match encap {
            Encap::Vxlan => vxlan::HEADER_LEN,
            Encap::Geneve => geneve::emit_len(identity),
        }
}

/// The largest overhead of an encapsulation: what the inner MTU is lowered
/// by (50 for VXLAN, 58 for Geneve with the identity option). Counted in IP
/// bytes it is the same number: outer IP+UDP+tunnel header + inner Ethernet.
pub const fn max_overhead(encap: Encap) -> usize {
    overhead(encap, true)
}

/// UDP source port of a flow's outer header: a hash of the inner flow key
/// folded into 49152–65535. Deterministic (same on every worker and after a
/// restart), so one flow keeps one underlay path.
pub fn flow_sport(k: &FlowKey) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |v: u64| {
        h = (h ^ v).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    };
    let addr = |a: IpAddr| -> u128 {
        match a {
            IpAddr::V4(a) => u32::from(a).into(),
            IpAddr::V6(a) => a.into(),
        }
    };
    let (s, d) = (addr(k.src), addr(k.dst));
    mix(s as u64);
    mix((s >> 64) as u64);
    mix(d as u64);
    mix((d >> 64) as u64);
    mix(u64::from(k.proto) << 32 | u64::from(k.sport) << 16 | u64::from(k.dport));
    // murmur3's fmix64: every input bit reaches the low bits we keep.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    SPORT_BASE + (h as u16 & 0x3fff)
}

/// Wraps the inner frame `buf[..inner_len]` for `peer`: moves it forward by
/// the overhead and writes the outer headers in front. `identity` is sent
/// only when the peer is identity-aware (and, for VXLAN-GBP, fits 16 bits).
/// Returns the new frame length, or `None` when `buf` cannot hold it.
/// The fallback of [`encapsulate_front`], for a frame with no room in
/// front (a multi-buffer packet's linear buffer) or one WireGuard seals.
pub fn encapsulate(
    buf: &mut [u8],
    inner_len: usize,
    t: &TunnelSpec,
    peer: &TunnelPeer,
    identity: Option<Identity>,
    sport: u16,
) -> Option<usize> {
    let (hdr, identity) = outer_for(t, peer, identity);
    let total = hdr + inner_len;
    let frame = buf.get_mut(..total)?;
    frame.copy_within(..inner_len, hdr);
    write_outer(frame.get_mut(..hdr)?, total, t, peer, identity, sport);
    Some(total)
}

/// Wraps the inner frame that starts right after `front` (the room in
/// front of it in its UMEM frame) without moving it: writes the outer
/// headers in the last bytes of `front`. Same bytes as [`encapsulate`].
/// Returns the length of the outer headers (the frame now starts that far
/// before the inner one), or `None` when `front` is too short for them.
pub fn encapsulate_front(
    front: &mut [u8],
    inner_len: usize,
    t: &TunnelSpec,
    peer: &TunnelPeer,
    identity: Option<Identity>,
    sport: u16,
) -> Option<usize> {
    let (hdr, identity) = outer_for(t, peer, identity);
    let at = front.len().checked_sub(hdr)?;
    write_outer(
        front.get_mut(at..)?,
        hdr + inner_len,
        t,
        peer,
        identity,
        sport,
    );
    Some(hdr)
}

/// The length of the outer headers toward `peer`, and the identity they
/// carry (only to an identity-aware peer).
fn outer_for(
    t: &TunnelSpec,
    peer: &TunnelPeer,
    identity: Option<Identity>,
) -> (usize, Option<Identity>) {
    let identity = identity.filter(|_| peer.identity_aware);
    let hdr = match t.encap {
        // Whether VXLAN-GBP carries the group does not change the length.
        Encap::Vxlan => overhead(Encap::Vxlan, false),
        Encap::Geneve => overhead(Encap::Geneve, identity.is_some()),
    };
    (hdr, identity)
}

/// Writes the outer headers of a frame of `total` bytes into `hdr` (exactly
/// the outer headers' length, from [`outer_for`]).
fn write_outer(
    hdr: &mut [u8],
    total: usize,
    t: &TunnelSpec,
    peer: &TunnelPeer,
    identity: Option<Identity>,
    sport: u16,
) {
    let (eth_b, rest) = hdr.split_at_mut(ethernet::HEADER_LEN);
    let mut eth = Frame::new_unchecked(eth_b);
    eth.set_dst_addr(peer.mac);
    eth.set_src_addr(t.underlay.mac);
    eth.set_ethertype(ethertype::IPV4);

    let (ip_b, rest) = rest.split_at_mut(ipv4::HEADER_LEN);
    let mut ip = ipv4::Packet::new_unchecked(ip_b);
    ip.set_version_and_header_len(ipv4::HEADER_LEN);
    ip.set_dscp_ecn(0);
    ip.set_total_len((total - ethernet::HEADER_LEN) as u16);
    ip.set_ident(0);
    ip.set_flags_and_offset(true, false, 0);
    ip.set_ttl(OUTER_TTL);
    ip.set_protocol(ip_proto::UDP);
    ip.set_src_addr(t.underlay.ipv4);
    ip.set_dst_addr(peer.ipv4);
    ip.fill_checksum();

    let (udp_b, rest) = rest.split_at_mut(udp::HEADER_LEN);
    let mut u = udp::Packet::new_unchecked(udp_b);
    u.set_src_port(sport);
    u.set_dst_port(t.udp_port);
    u.set_length((total - ethernet::HEADER_LEN - ipv4::HEADER_LEN) as u16);
    u.set_checksum(0);

    match t.encap {
        Encap::Vxlan => {
            let group = identity.and_then(|i| u16::try_from(i).ok());
            vxlan::Packet::new_unchecked(rest).emit(t.vni, group)
        }
        Encap::Geneve => {
            geneve::Packet::new_unchecked(rest).emit(t.vni, identity);
        }
    }
}

/// What [`decapsulate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decapsulated {
    /// Length of the inner frame (at the start of the buffer after
    /// [`decapsulate`]).
    pub inner_len: usize,
    /// Index of the sending peer in the tunnel spec.
    pub peer: u32,
    /// The source identity the header carried (VXLAN-GBP group, Geneve
    /// identity option), if any.
    pub identity: Option<Identity>,
}

fn malformed<T>() -> ControlFlow<Verdict, T> {
    Break(Verdict::Drop(DropReason::TunnelMalformed))
}

/// Checks a frame that arrived on the underlay (outer Ethernet/IPv4/UDP to
/// our address and port; tunnel header, VNI, known peer) and moves its inner
/// frame to the start of `buf`. The fallback of [`unwrap_in_place`], for a
/// frame whose start cannot move.
pub fn decapsulate(
    buf: &mut [u8],
    len: usize,
    t: &TunnelSpec,
    tables: &TunnelTables,
) -> ControlFlow<Verdict, Decapsulated> {
    let (start, d) = unwrap_in_place(buf, len, t, tables)?;
    buf.copy_within(start..start + d.inner_len, 0);
    Continue(d)
}

/// Checks a frame from the underlay as [`decapsulate`] does, without moving
/// anything: returns where its inner frame starts in `buf` (the frame's
/// new start, past the outer headers) and what was found.
pub fn unwrap_in_place(
    buf: &[u8],
    len: usize,
    t: &TunnelSpec,
    tables: &TunnelTables,
) -> ControlFlow<Verdict, (usize, Decapsulated)> {
    let frame = buf.get(..len).unwrap_or_default();
    let Ok(eth) = Frame::new_checked(frame) else {
        return Break(Verdict::Drop(DropReason::FrameTooShort));
    };
    if eth.ethertype() != ethertype::IPV4 {
        return malformed();
    }
    let Ok(ip) = ipv4::Packet::new_checked(eth.payload()) else {
        return malformed();
    };
    if ip.version() != 4
        || ip.protocol() != ip_proto::UDP
        || ip.more_frags()
        || ip.frag_offset() != 0
        || ip.dst_addr() != t.underlay.ipv4
    {
        return malformed();
    }
    let Ok(u) = udp::Packet::new_checked(ip.payload()) else {
        return malformed();
    };
    if u.dst_port() != t.udp_port {
        return malformed();
    }
    let payload = u.payload();
    let (vni, identity, hdr_len) = match t.encap {
        Encap::Vxlan => {
            let Ok(v) = vxlan::Packet::new_checked(payload) else {
                return malformed();
            };
            if !v.vni_valid() {
                return malformed();
            }
            let id = (v.has_group() && v.group() != 0).then(|| Identity::from(v.group()));
            (v.vni(), id, vxlan::HEADER_LEN)
        }
        Encap::Geneve => {
            let Ok(g) = geneve::Packet::new_checked(payload) else {
                return malformed();
            };
            if g.version() != 0
                || g.protocol() != geneve::PROTO_ETHERNET
                || g.flags() & geneve::flags::O != 0
            {
                return malformed();
            }
            // Every option must be well formed; a critical one that is not
            // ours cannot be understood, so the frame must be dropped
            // (RFC 8926 §3.5.1).
            let mut id = None;
            for o in g.options() {
                let Ok(o) = o else { return malformed() };
                let ours = o.class == geneve::WEIR_OPTION_CLASS
                    && o.opt_type & !geneve::OPT_TYPE_CRITICAL == geneve::WEIR_OPT_IDENTITY;
                if ours {
                    let Ok(d) = <[u8; 4]>::try_from(o.data) else {
                        return malformed();
                    };
                    id = id.or(Some(u32::from_be_bytes(d)));
                } else if o.opt_type & geneve::OPT_TYPE_CRITICAL != 0 {
                    return malformed();
                }
            }
            (g.vni(), id.filter(|&i| i != 0), g.header_len())
        }
    };
    if vni != t.vni {
        return Break(Verdict::Drop(DropReason::TunnelBadVni));
    }
    let Some(peer) = tables.peer_by_ip(ip.src_addr()) else {
        return Break(Verdict::Drop(DropReason::TunnelUnknownPeer));
    };
    let inner_len = payload.len() - hdr_len;
    if inner_len < ethernet::HEADER_LEN {
        return malformed();
    }
    let start = OUTER_L4 + (ip.header_len() - ipv4::HEADER_LEN) + hdr_len;
    Continue((
        start,
        Decapsulated {
            inner_len,
            peer,
            identity,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::new(10, 1, 0, 2).into(),
            dst: Ipv4Addr::new(10, 2, 0, 2).into(),
            proto: 6,
            sport,
            dport: 80,
        }
    }

    #[test]
    fn sport_is_stable_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for p in 1000..3000 {
            let s = flow_sport(&key(p));
            assert!(s >= SPORT_BASE);
            assert_eq!(s, flow_sport(&key(p)));
            seen.insert(s);
        }
        // Spread: 2000 flows land on many ports.
        assert!(seen.len() > 1800, "{}", seen.len());
    }

    #[test]
    fn overheads() {
        assert_eq!(overhead(Encap::Vxlan, true), 50);
        assert_eq!(overhead(Encap::Geneve, false), 50);
        assert_eq!(max_overhead(Encap::Geneve), 58);
    }

    fn spec() -> (TunnelSpec, TunnelPeer) {
        let peer = TunnelPeer {
            node: "n2".into(),
            ipv4: Ipv4Addr::new(192, 168, 0, 2),
            mac: [2, 0, 0, 0, 0, 2],
            vtep_mac: [2, 1, 0, 0, 0, 2],
            pod_cidrs: vec![],
            identity_aware: true,
        };
        let t = TunnelSpec {
            encap: Encap::Vxlan,
            vni: 1,
            udp_port: 4789,
            underlay: crate::snapshot::Underlay {
                name: "ul0".into(),
                mac: [2, 0, 0, 0, 0, 1],
                ipv4: Ipv4Addr::new(192, 168, 0, 1),
                mtu: 1500,
            },
            vtep_mac: [2, 1, 0, 0, 0, 1],
            peers: vec![peer.clone()],
        };
        (t, peer)
    }

    /// Writing the outer headers in front gives the frame `encapsulate`
    /// gives, byte for byte, for both encapsulations, with and without
    /// the identity; too little room is `None`, not a panic.
    #[test]
    fn front_and_memmove_write_the_same_frame() {
        let (mut t, peer) = spec();
        let inner: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for encap in [Encap::Vxlan, Encap::Geneve] {
            t.encap = encap;
            for id in [None, Some(300), Some(70_000)] {
                let mut a = vec![0u8; 2048];
                a[..inner.len()].copy_from_slice(&inner);
                let n = encapsulate(&mut a, inner.len(), &t, &peer, id, 50_000).unwrap();
                let mut b = vec![0u8; 2048];
                b[256..256 + inner.len()].copy_from_slice(&inner);
                let (front, _) = b.split_at_mut(256);
                let hdr = encapsulate_front(front, inner.len(), &t, &peer, id, 50_000).unwrap();
                assert_eq!(hdr + inner.len(), n, "{encap:?} {id:?}");
                assert_eq!(a[..n], b[256 - hdr..256 + inner.len()], "{encap:?} {id:?}");
                let mut short = [0u8; 49];
                assert_eq!(
                    encapsulate_front(&mut short, inner.len(), &t, &peer, id, 50_000),
                    None
                );
            }
        }
    }

    /// Prints the cost per frame of the two ways of wrapping a frame:
    /// writing the outer headers in front (`encapsulate_front`, the
    /// worker's path) and the memmove fallback (`encapsulate`), then
    /// unwrapping it in place and with the memmove. In-process, release:
    /// `cargo test --release -p weir-dataplane encap_paths_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn encap_paths_cost() {
        let (t, peer) = spec();
        for (len, n) in [(64usize, 5_000_000u32), (1514, 5_000_000)] {
            let mut buf = vec![0u8; 2048];
            let time = |f: &mut dyn FnMut(&mut [u8])| {
                let mut buf = vec![0u8; 2048];
                let t0 = std::time::Instant::now();
                for _ in 0..n {
                    f(&mut buf);
                    std::hint::black_box(&mut buf);
                }
                t0.elapsed().as_nanos() as f64 / f64::from(n)
            };
            let front = time(&mut |b| {
                let (f, _) = b.split_at_mut(256);
                std::hint::black_box(encapsulate_front(f, len, &t, &peer, Some(300), 50_000));
            });
            let memmove = time(&mut |b| {
                std::hint::black_box(encapsulate(
                    &mut b[256..],
                    len,
                    &t,
                    &peer,
                    Some(300),
                    50_000,
                ));
            });
            // A real VXLAN frame to unwrap.
            let wire = encapsulate(&mut buf, len, &t, &peer, Some(300), 50_000).unwrap();
            let (me, from) = (t.underlay.ipv4, peer.ipv4);
            // Seen from the peer: swap the addresses.
            buf[26..30].copy_from_slice(&me.octets());
            buf[30..34].copy_from_slice(&from.octets());
            let mut t2 = t.clone();
            t2.underlay.ipv4 = from;
            t2.peers[0].ipv4 = me;
            let snap = crate::Snapshot::build(crate::SnapshotSpec {
                tunnel: Some(t2),
                ..Default::default()
            })
            .expect("snapshot");
            let (t2, tables2) = snap.tunnel().expect("tunnel");
            let frame = buf.clone();
            // `decapsulate` changes the frame: each round restores it
            // first, and the restore alone is timed to be taken off.
            let restore = time(&mut |b| {
                b[..wire].copy_from_slice(&frame[..wire]);
            });
            let unwrap = time(&mut |b| {
                b[..wire].copy_from_slice(&frame[..wire]);
                std::hint::black_box(unwrap_in_place(b, wire, t2, tables2).is_continue());
            }) - restore;
            let decap = time(&mut |b| {
                b[..wire].copy_from_slice(&frame[..wire]);
                std::hint::black_box(decapsulate(b, wire, t2, tables2).is_continue());
            }) - restore;
            assert!(decapsulate(&mut buf, wire, t2, tables2).is_continue());
            println!(
                "{len}-byte inner frame: encapsulate_front {front:.1} ns, encapsulate (memmove) {memmove:.1} ns; \
                 unwrap_in_place {unwrap:.1} ns, decapsulate (memmove) {decap:.1} ns \
                 (less {restore:.1} ns of restoring the {wire}-byte frame each round)"
            );
        }
    }

    /// Prints the cost of the memmove that grows a frame at the front.
    /// `cargo test --release -p weir-dataplane memmove_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn memmove_cost() {
        let mut buf = vec![0u8; 3840];
        for (len, n) in [(64usize, 10_000_000u32), (1514, 5_000_000)] {
            let t = std::time::Instant::now();
            for i in 0..n {
                let shift = 50 + (i as usize & 7);
                buf.copy_within(..len, shift);
                std::hint::black_box(&mut buf);
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
            println!("memmove of {len} bytes: {ns:.1} ns");
        }
    }
}
