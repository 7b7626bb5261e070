//! weir's XDP program, attached to the node-side end of each pod veth and,
//! in "underlay mode", to the node's underlay interface.
//!
//! Underlay mode (`CONFIG[0]` = the tunnel's UDP port, set by the loader;
//! 0 = pod mode): ONLY untruncated, unfragmented IPv4 frames whose
//! destination is one of `LOCAL_V4` and that are UDP to that port (the
//! tunnel) or TCP/UDP to a port of weir's SNAT range `SNAT_FIRST..=SNAT_LAST`
//! (replies from the world, docs/egress.md) or of the NodePort range
//! (docs/services.md), and ICMP about SNAT flows (`snat_icmp`: echo
//! replies to a SNAT identifier, errors quoting a SNAT port), and IPv6
//! TCP/UDP to a SNAT port or ICMPv6 echo replies to a SNAT identifier on a
//! `LOCAL_V6` address (`underlay6`, SNAT66), and ICMPv6 errors quoting a
//! SNAT port, a node port or a SNAT identifier (`snat_icmp6_error`), and
//! whole IPv4 TCP/UDP datagrams to a Service's external address in
//! `EXTERNAL_V4` (any port; docs/services.md) go to the
//! AF_XDP socket at the
//! rx queue (dropped when none is bound); everything else (ARP,
//! node-to-node traffic, malformed frames) is `XDP_PASS`ed to the kernel.
//! With host endpoint policy (`CONFIG[12]` = 1, `host_in`), IPv4 frames that
//! open a flow to the node's own addresses go to the socket too (the
//! dataplane judges them and hands the allowed ones to the kernel through
//! the host port; docs/policy.md, "Host endpoint policy"), and so do IPv6
//! frames to the node's non-link-local addresses (`host_in6`).
//!
//! Pod mode, per frame, top to bottom:
//! 1. too short for its headers, or an invalid IPv4 version/IHL → counted
//!    `malformed` and redirected like everything else: the dataplane drops it
//!    under a precise reason (drop reasons live in one place, the dataplane);
//! 2. ARP → `XDP_PASS` (the kernel answers for the gateway 169.254.1.1);
//! 3. IPv6 NDP (ICMPv6 types 133–137 directly after the IPv6 header) and
//!    link-scope multicast destinations (ff02::/16) → `XDP_PASS`;
//! 4. IPv4/IPv6 destinations in `LOCAL_V4`/`LOCAL_V6` (the node's own
//!    addresses) → `XDP_PASS`; except with a host port (`CONFIG[1]` = 1,
//!    set by the loader): then only link-local ones (the pods' gateways
//!    169.254.1.1 and fe80::1) pass, and the rest go to the socket, so the
//!    dataplane judges pod → node traffic and delivers it through the host
//!    port (docs/datapath.md, "The host port");
//! 5. everything else → the AF_XDP socket in `XSKS` at the frame's rx queue.
//!    A missing socket makes `bpf_redirect_map` return `XDP_DROP` (its flags'
//!    low bits): weir fails closed, a managed interface never falls back to
//!    the kernel.
//!
//! Every packet read is bounds-checked against `data_end` (the verifier
//! insists); all header fields are read as byte arrays so no access is
//! misaligned.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};

/// Counter slots in `COUNTERS`; the loader reads the same indices.
const CNT_REDIRECTED: u32 = 0;
const CNT_PASSED: u32 = 1;
const CNT_DROPPED_NO_SOCKET: u32 = 2;
const CNT_MALFORMED: u32 = 3;
const CNT_SLOTS: u32 = 4;

/// AF_XDP sockets keyed by rx queue index. The loader resizes it to the
/// interface's queue count before loading.
#[map]
static XSKS: XskMap = XskMap::with_max_entries(64, 0);

/// The node's own IPv4 addresses (network byte order); value unused.
#[map]
static LOCAL_V4: HashMap<[u8; 4], u8> = HashMap::with_max_entries(64, 0);

/// The node's own IPv6 addresses; value unused.
#[map]
static LOCAL_V6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);

/// The Services' external IPv4 addresses (`spec.externalIPs`, load
/// balancers'; docs/services.md): underlay mode hands whole TCP/UDP
/// datagrams to them to the socket. Value unused.
#[map]
// BPF_F_NO_PREALLOC (1): the program (and so the map) is loaded on every
// pod veth too, where the map stays empty; preallocated it would cost
// kernel memory per interface.
static EXTERNAL_V4: HashMap<[u8; 4], u8> = HashMap::with_max_entries(4096, 1);

/// Slot 0: the tunnel's UDP port in underlay mode, 0 in pod mode.
/// Slot 1: 1 when the node has a host port (pod → node-address frames go to
/// the dataplane), 0 when they go to the kernel.
/// Slots 2, 3: network and mask of the node's IPv4 pod CIDR (underlay
/// mode, non-masqueraded destinations; mask 0: off).
/// Slots 4–7 and 8–11: network and mask of the node's IPv6 pod CIDR, as
/// four big-endian words each (non-masqueraded IPv6 destinations; mask 0:
/// off).
/// Slot 12: 1 when host endpoint policy selects the node (underlay mode:
/// flow openings to the node's addresses go to the dataplane, `host_in`).
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(13, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CNT_SLOTS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_TCP: u8 = 6;
/// The IPv6 fragment header.
const IPPROTO_FRAGMENT: u8 = 44;
/// weir's SNAT port range on the node's underlay address
/// (`weir_dataplane::snapshot::SNAT_PORT_FIRST`/`LAST`, docs/egress.md):
/// TCP/UDP to these ports on a local address is a reply from the world.
const SNAT_FIRST: u16 = 61000;
const SNAT_LAST: u16 = 65535;
/// The NodePort range (`weir_dataplane::snapshot::NODE_PORT_FIRST`/`LAST`):
/// TCP/UDP to these ports on a local address is for a NodePort Service.
const NODE_PORT_FIRST: u16 = 30000;
const NODE_PORT_LAST: u16 = 32767;
/// The kernel's default `ip_local_port_range` (32768–60999): UDP to these
/// ports of the node is a reply to the node's own flows, which never cross
/// the dataplane; host policy leaves them to the kernel (`host_in`).
const EPHEMERAL_FIRST: u16 = 32768;
const EPHEMERAL_LAST: u16 = 60999;
/// ICMPv6 echo reply.
const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMPv6 echo request.
const ICMPV6_ECHO_REQUEST: u8 = 128;
/// Destination Unreachable .. Parameter Problem: the ICMPv6 errors.
const ICMPV6_ERR_FIRST: u8 = 1;
const ICMPV6_ERR_LAST: u8 = 4;
/// Router Solicitation .. Redirect: NDP.
const NDP_FIRST: u8 = 133;
const NDP_LAST: u8 = 137;

#[xdp(frags)]
pub fn weir_xdp(ctx: XdpContext) -> u32 {
    let verdict = classify(&ctx);
    match verdict {
        Verdict::Pass => {
            count(CNT_PASSED);
            xdp_action::XDP_PASS
        }
        Verdict::Malformed | Verdict::Redirect => {
            if matches!(verdict, Verdict::Malformed) {
                // Still the dataplane's to judge: it drops the frame under a
                // precise reason (drop reasons are defined once, there).
                count(CNT_MALFORMED);
            }
            // SAFETY: `ctx.ctx` is the kernel's `xdp_md` for this invocation,
            // valid for the whole program run.
            let queue = unsafe { (*ctx.ctx).rx_queue_index };
            match XSKS.redirect(queue, u64::from(xdp_action::XDP_DROP)) {
                Ok(action) => {
                    count(CNT_REDIRECTED);
                    action
                }
                Err(action) => {
                    count(CNT_DROPPED_NO_SOCKET);
                    action
                }
            }
        }
    }
}

enum Verdict {
    Pass,
    Redirect,
    Malformed,
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Verdict {
    let tunnel_port = CONFIG.get(0).copied().unwrap_or(0);
    if tunnel_port != 0 {
        return underlay(ctx, tunnel_port as u16);
    }
    let Some(ethertype) = read::<2>(ctx, 12) else {
        return Verdict::Malformed;
    };
    if ethertype == ETH_P_ARP {
        return Verdict::Pass;
    }
    if ethertype == ETH_P_IP {
        return ipv4(ctx);
    }
    if ethertype == ETH_P_IPV6 {
        return ipv6(ctx);
    }
    Verdict::Redirect
}

#[inline(always)]
fn ipv4(ctx: &XdpContext) -> Verdict {
    let Some([ver_ihl]) = read::<1>(ctx, ETH_HLEN) else {
        return Verdict::Malformed;
    };
    if ver_ihl >> 4 != 4 || ((ver_ihl & 0x0f) as usize) * 4 < IPV4_MIN_HLEN {
        return Verdict::Malformed;
    }
    let Some(dst) = read::<4>(ctx, ETH_HLEN + 16) else {
        return Verdict::Malformed;
    };
    // SAFETY: a shared lookup in a BPF hash map; the value is not used past
    // this line, so no reference outlives a concurrent update.
    if unsafe { LOCAL_V4.get(&dst) }.is_some() {
        // With a host port only the link-local gateway stays the kernel's.
        if host_port() && !(dst[0] == 169 && dst[1] == 254) {
            return Verdict::Redirect;
        }
        return Verdict::Pass;
    }
    Verdict::Redirect
}

/// A host port exists: node-address traffic goes through the dataplane.
#[inline(always)]
fn host_port() -> bool {
    CONFIG.get(1).copied().unwrap_or(0) != 0
}

/// Underlay mode: our tunnel's frames to the socket, the rest to the kernel.
#[inline(always)]
fn underlay(ctx: &XdpContext, port: u16) -> Verdict {
    let ethertype = read::<2>(ctx, 12);
    if ethertype == Some(ETH_P_IPV6) {
        return underlay6(ctx);
    }
    if ethertype != Some(ETH_P_IP) {
        return Verdict::Pass;
    }
    let Some([ver_ihl]) = read::<1>(ctx, ETH_HLEN) else {
        return Verdict::Pass;
    };
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Verdict::Pass;
    }
    // To this node's pod CIDR (`CONFIG[2]` network, `CONFIG[3]` mask, set
    // only with non-masqueraded destinations): their replies and flows.
    let mask = CONFIG.get(3).copied().unwrap_or(0);
    if mask != 0 {
        if let Some(d) = read::<4>(ctx, ETH_HLEN + 16) {
            if u32::from_be_bytes(d) & mask == CONFIG.get(2).copied().unwrap_or(0) {
                return Verdict::Redirect;
            }
        }
    }
    let Some([proto]) = read::<1>(ctx, ETH_HLEN + 9) else {
        return Verdict::Pass;
    };
    let Some(frag) = read::<2>(ctx, ETH_HLEN + 6) else {
        return Verdict::Pass;
    };
    // ICMP about weir's SNAT (docs/egress.md): an echo reply to a SNAT
    // identifier, an error quoting a SNAT port or identifier.
    if proto == IPPROTO_ICMP && frag[0] & 0x3f == 0 && frag[1] == 0 {
        return match snat_icmp(ctx, ihl) {
            Verdict::Pass => host_in(ctx, proto, ihl, port),
            v => v,
        };
    }
    // MF set or a fragment offset: not a whole datagram; the kernel's.
    if frag[0] & 0x3f != 0 || frag[1] != 0 {
        return Verdict::Pass;
    }
    if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
        return host_in(ctx, proto, ihl, port);
    }
    let Some(dst) = read::<4>(ctx, ETH_HLEN + 16) else {
        return Verdict::Pass;
    };
    // SAFETY: as in `ipv4`: the value is not kept.
    if unsafe { LOCAL_V4.get(&dst) }.is_none() {
        // A Service's external address, any port (the dataplane's
        // `pass::external::is_to_external` peeks the same).
        // SAFETY: as in `ipv4`: the value is not kept.
        if unsafe { EXTERNAL_V4.get(&dst) }.is_some() {
            return Verdict::Redirect;
        }
        return Verdict::Pass;
    }
    let Some(dport) = read::<2>(ctx, ETH_HLEN + ihl + 2) else {
        return Verdict::Pass;
    };
    let dport = u16::from_be_bytes(dport);
    // Our tunnel, a reply from the world to a SNAT port, or a NodePort
    // (TCP or UDP).
    if (proto == IPPROTO_UDP && dport == port)
        || (SNAT_FIRST..=SNAT_LAST).contains(&dport)
        || (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&dport)
    {
        return Verdict::Redirect;
    }
    host_in(ctx, proto, ihl, port)
}

/// Underlay mode, a whole IPv4 datagram (header length `ihl`, protocol
/// `proto`) that none of the above took: with host endpoint policy
/// (`CONFIG[12]`), the frames that open a flow to one of the node's own
/// addresses go to the socket to be judged against the node's ingress
/// rules (the dataplane's `pass::host_in::is_host_in` peeks the same):
/// TCP with SYN and without ACK, every other TCP segment to a port outside
/// the kernel's ephemeral range, UDP to a port outside the kernel's
/// ephemeral range (and not the tunnel's), ICMP echo requests, and every
/// other IP protocol. The rest stays the kernel's: the node's own flows
/// leave through the kernel, never through the dataplane, so their
/// replies (TCP segments to an ephemeral port, UDP to one, ICMP echo
/// replies and errors) cannot be matched to a flow here, and ARP/ICMP
/// errors must never break.
#[inline(always)]
fn host_in(ctx: &XdpContext, proto: u8, ihl: usize, tunnel_port: u16) -> Verdict {
    if CONFIG.get(12).copied().unwrap_or(0) == 0 {
        return Verdict::Pass;
    }
    let Some(dst) = read::<4>(ctx, ETH_HLEN + 16) else {
        return Verdict::Pass;
    };
    // SAFETY: as in `ipv4`: the value is not kept.
    if unsafe { LOCAL_V4.get(&dst) }.is_none() {
        return Verdict::Pass;
    }
    let l4 = ETH_HLEN + ihl;
    if l4 > ETH_HLEN + 60 {
        return Verdict::Pass;
    }
    if proto == IPPROTO_TCP {
        // Byte 13: the flags (read two bytes at a time: see `snat_icmp`).
        // A SYN opens a flow to any port; every other segment to a server
        // port (outside the ephemeral range) goes too, so the dataplane's
        // one-way conntrack re-judges established flows on a policy change.
        return match (read::<2>(ctx, l4 + 2), read::<2>(ctx, l4 + 12)) {
            (_, Some([_, flags])) if flags & 0x12 == 0x02 => Verdict::Redirect,
            (Some(p), Some(_))
                if !(EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&u16::from_be_bytes(p)) =>
            {
                Verdict::Redirect
            }
            _ => Verdict::Pass,
        };
    }
    if proto == IPPROTO_UDP {
        return match read::<2>(ctx, l4 + 2) {
            Some(p) => {
                let p = u16::from_be_bytes(p);
                if p == tunnel_port || (EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&p) {
                    Verdict::Pass
                } else {
                    Verdict::Redirect
                }
            }
            None => Verdict::Pass,
        };
    }
    if proto == IPPROTO_ICMP {
        // Type 8: echo request.
        return match read::<2>(ctx, l4) {
            Some([8, _]) => Verdict::Redirect,
            _ => Verdict::Pass,
        };
    }
    Verdict::Redirect
}

/// Underlay mode, ICMPv4 to a local address (whole datagram, header length
/// `ihl`): an echo reply whose identifier is in the SNAT range, or an error
/// (destination unreachable, source quench, redirect, time exceeded,
/// parameter problem) quoting a TCP/UDP packet from that address and a
/// SNAT port or a node port (or an echo request with a SNAT identifier)
/// goes to the
/// socket; the rest is the kernel's (the dataplane's
/// `pass::nat_icmp::is_snat_icmp` peeks the same).
#[inline(always)]
fn snat_icmp(ctx: &XdpContext, ihl: usize) -> Verdict {
    let Some(dst) = read::<4>(ctx, ETH_HLEN + 16) else {
        return Verdict::Pass;
    };
    // SAFETY: as in `ipv4`: the value is not kept.
    if unsafe { LOCAL_V4.get(&dst) }.is_none() {
        return Verdict::Pass;
    }
    let l4 = ETH_HLEN + ihl;
    if l4 > ETH_HLEN + 60 {
        return Verdict::Pass;
    }
    // Variable offsets are read two bytes at a time: for one byte LLVM
    // turns the bounds check into `p >= end`, which the verifier does not
    // accept at a variable offset.
    let Some([ty, _code]) = read::<2>(ctx, l4) else {
        return Verdict::Pass;
    };
    let snat = |p: [u8; 2]| (SNAT_FIRST..=SNAT_LAST).contains(&u16::from_be_bytes(p));
    if ty == 0 {
        return match read::<2>(ctx, l4 + 4) {
            Some(id) if snat(id) => Verdict::Redirect,
            _ => Verdict::Pass,
        };
    }
    if !matches!(ty, 3 | 4 | 5 | 11 | 12) {
        return Verdict::Pass;
    }
    // The quoted header: from this address, TCP/UDP from a SNAT port or
    // an echo request with a SNAT identifier.
    let q = l4 + 8;
    let (Some([q_ver_ihl, _]), Some([_, q_proto]), Some(q_src)) = (
        read::<2>(ctx, q),
        read::<2>(ctx, q + 8),
        read::<4>(ctx, q + 12),
    ) else {
        return Verdict::Pass;
    };
    let q_ihl = ((q_ver_ihl & 0x0f) as usize) * 4;
    if q_src != dst || q_ihl < IPV4_MIN_HLEN {
        return Verdict::Pass;
    }
    let (at, node_port) = match q_proto {
        IPPROTO_TCP | IPPROTO_UDP => (q + q_ihl, true),
        IPPROTO_ICMP => (q + q_ihl + 4, false),
        _ => return Verdict::Pass,
    };
    // Both header lengths are at most 60: an explicit bound keeps the
    // verifier's range of the offset small.
    if at > ETH_HLEN + 60 + 8 + 60 + 4 {
        return Verdict::Pass;
    }
    match read::<2>(ctx, at) {
        Some(p) if snat(p) => Verdict::Redirect,
        // A node port's reply (docs/services.md, NodePort).
        Some(p)
            if node_port && (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&u16::from_be_bytes(p)) =>
        {
            Verdict::Redirect
        }
        _ => Verdict::Pass,
    }
}

/// Underlay mode, IPv6 (SNAT66, docs/egress.md): to a local address,
/// TCP/UDP directly after the IPv6 header to a SNAT port or a node port
/// (docs/services.md), an ICMPv6
/// echo reply with a SNAT identifier, or an ICMPv6 error about one of those
/// flows (`snat_icmp6_error`), goes to the socket; everything else
/// (NDP, extension headers, fragments, the node's own traffic) is the
/// kernel's (the dataplane's `pass::egress::is_from_uplink6` peeks the
/// same). Fixed offsets only.
#[inline(always)]
fn underlay6(ctx: &XdpContext) -> Verdict {
    // The farther read first: LLVM knows it implies the nearer one and
    // drops that check, which the verifier cannot follow the other way.
    let Some(dst) = read::<16>(ctx, ETH_HLEN + 24) else {
        return Verdict::Pass;
    };
    let Some([next_header]) = read::<1>(ctx, ETH_HLEN + 6) else {
        return Verdict::Pass;
    };
    // To this node's IPv6 pod CIDR (set only with non-masqueraded IPv6
    // destinations): their replies and flows.
    if CONFIG.get(8).copied().unwrap_or(0) != 0 && routed_v6(&dst) {
        return Verdict::Redirect;
    }
    // SAFETY: as in `ipv4`: the value is not kept.
    if unsafe { LOCAL_V6.get(&dst) }.is_none() {
        return Verdict::Pass;
    }
    let l4 = ETH_HLEN + IPV6_HLEN;
    // One read per branch, each returning at once: straight paths the
    // verifier follows.
    if next_header == IPPROTO_TCP || next_header == IPPROTO_UDP {
        return match read::<2>(ctx, l4 + 2) {
            Some(p)
                if (SNAT_FIRST..=SNAT_LAST).contains(&u16::from_be_bytes(p))
                    || (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&u16::from_be_bytes(p)) =>
            {
                Verdict::Redirect
            }
            _ => host_in6(ctx, next_header, &dst),
        };
    }
    if next_header != IPPROTO_ICMPV6 {
        return host_in6(ctx, next_header, &dst);
    }
    let Some([ty, _code]) = read::<2>(ctx, l4) else {
        return Verdict::Pass;
    };
    if (ICMPV6_ERR_FIRST..=ICMPV6_ERR_LAST).contains(&ty) {
        return snat_icmp6_error(ctx, dst);
    }
    if ty == ICMPV6_ECHO_REQUEST {
        return host_in6(ctx, next_header, &dst);
    }
    if ty != ICMPV6_ECHO_REPLY {
        return Verdict::Pass;
    }
    match read::<2>(ctx, l4 + 4) {
        Some(id) if (SNAT_FIRST..=SNAT_LAST).contains(&u16::from_be_bytes(id)) => Verdict::Redirect,
        _ => Verdict::Pass,
    }
}

/// Underlay mode, IPv6 to the local address `dst` with `next_header`
/// directly after the fixed header, that none of `underlay6` took: with
/// host endpoint policy (`CONFIG[12]`), `host_in`'s choice for IPv6 (the
/// dataplane's `pass::host_in::is_host_in6` peeks the same): not to a
/// link-local address (fe80::/10: NDP, the kernel's link traffic); TCP
/// with SYN and without ACK, or any TCP segment to a port outside the
/// ephemeral range; UDP to a port outside it; an ICMPv6 echo request
/// (the caller checked the type); not a fragment header (the kernel's, as
/// IPv4 fragments); any other next header (extension headers: the
/// dataplane walks them and judges what follows, or another protocol).
/// Fixed offsets only.
#[inline(always)]
fn host_in6(ctx: &XdpContext, next_header: u8, dst: &[u8; 16]) -> Verdict {
    if CONFIG.get(12).copied().unwrap_or(0) == 0 || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) {
        return Verdict::Pass;
    }
    let l4 = ETH_HLEN + IPV6_HLEN;
    match next_header {
        IPPROTO_TCP => match (read::<2>(ctx, l4 + 2), read::<2>(ctx, l4 + 12)) {
            (_, Some([_, flags])) if flags & 0x12 == 0x02 => Verdict::Redirect,
            (Some(p), Some(_))
                if !(EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&u16::from_be_bytes(p)) =>
            {
                Verdict::Redirect
            }
            _ => Verdict::Pass,
        },
        IPPROTO_UDP => match read::<2>(ctx, l4 + 2) {
            Some(p) if !(EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&u16::from_be_bytes(p)) => {
                Verdict::Redirect
            }
            _ => Verdict::Pass,
        },
        IPPROTO_ICMPV6 => Verdict::Redirect,
        IPPROTO_FRAGMENT => Verdict::Pass,
        _ => Verdict::Redirect,
    }
}

/// Whether `dst` is in the IPv6 pod CIDR of `CONFIG[4..12]`.
#[inline(always)]
fn routed_v6(dst: &[u8; 16]) -> bool {
    for i in 0..4u32 {
        let at = (i * 4) as usize;
        let w = u32::from_be_bytes([dst[at], dst[at + 1], dst[at + 2], dst[at + 3]]);
        let net = CONFIG.get(4 + i).copied().unwrap_or(0);
        let mask = CONFIG.get(8 + i).copied().unwrap_or(0);
        if w & mask != net {
            return false;
        }
    }
    true
}

/// Underlay mode, an ICMPv6 error (Destination Unreachable, Packet Too
/// Big, Time Exceeded, Parameter Problem) directly after the IPv6 header to
/// the local address `dst`: to the socket when it quotes an IPv6 packet from
/// `dst` that is TCP/UDP (directly after its fixed header) from a SNAT port
/// or a node port, or an ICMPv6 echo request with a SNAT identifier
/// (docs/egress.md; the dataplane's `pass::nat_icmp::is_snat_icmp6` peeks
/// the same). Fixed offsets only.
#[inline(always)]
fn snat_icmp6_error(ctx: &XdpContext, dst: [u8; 16]) -> Verdict {
    let q = ETH_HLEN + IPV6_HLEN + 8;
    let q_l4 = q + IPV6_HLEN;
    // The farther read first (see `underlay6`).
    let Some([w0, w1, _, _, i0, i1]) = read::<6>(ctx, q_l4) else {
        return Verdict::Pass;
    };
    let (Some([q_ver]), Some([q_next]), Some(q_src)) = (
        read::<1>(ctx, q),
        read::<1>(ctx, q + 6),
        read::<16>(ctx, q + 8),
    ) else {
        return Verdict::Pass;
    };
    if q_ver >> 4 != 6 || q_src != dst {
        return Verdict::Pass;
    }
    let snat = |p: u16| (SNAT_FIRST..=SNAT_LAST).contains(&p);
    let port = u16::from_be_bytes([w0, w1]);
    let hit = match q_next {
        IPPROTO_TCP | IPPROTO_UDP => {
            snat(port) || (NODE_PORT_FIRST..=NODE_PORT_LAST).contains(&port)
        }
        IPPROTO_ICMPV6 => w0 == ICMPV6_ECHO_REQUEST && snat(u16::from_be_bytes([i0, i1])),
        _ => false,
    };
    if hit {
        Verdict::Redirect
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
fn ipv6(ctx: &XdpContext) -> Verdict {
    let Some([next_header]) = read::<1>(ctx, ETH_HLEN + 6) else {
        return Verdict::Malformed;
    };
    let Some(dst) = read::<16>(ctx, ETH_HLEN + 24) else {
        return Verdict::Malformed;
    };
    if next_header == IPPROTO_ICMPV6 {
        let Some([icmp_type]) = read::<1>(ctx, ETH_HLEN + IPV6_HLEN) else {
            return Verdict::Malformed;
        };
        if (NDP_FIRST..=NDP_LAST).contains(&icmp_type) {
            return Verdict::Pass;
        }
    }
    if dst[0] == 0xff && dst[1] == 0x02 {
        return Verdict::Pass;
    }
    // SAFETY: as in `ipv4`: the value is not kept.
    if unsafe { LOCAL_V6.get(&dst) }.is_some() {
        // fe80::/10 (the gateway fe80::1) stays the kernel's.
        if host_port() && !(dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) {
            return Verdict::Redirect;
        }
        return Verdict::Pass;
    }
    Verdict::Redirect
}

/// `N` bytes at `offset` into the frame, or `None` if the frame is shorter.
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: `[start + offset, start + offset + N)` lies inside the packet
    // (checked against `data_end` just above, which is what the verifier
    // tracks), and `[u8; N]` has alignment 1.
    Some(unsafe { *((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and XDP programs
        // are not preempted mid-run on one CPU.
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
