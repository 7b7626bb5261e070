//! weir's XDP program and its loader.
//!
//! The program (`ebpf/`, built by `build.rs` and embedded here) sits on the
//! node-side end of each pod veth and on the underlay. Underlay mode
//! ([`AttachOptions::underlay_udp_port`]): only the tunnel's IPv4/UDP frames
//! to a local address go to the sockets, everything else to the kernel. Pod
//! mode: ARP, IPv6 NDP,
//! link-scope multicast and frames for the node's own addresses go to the
//! kernel; every other frame goes to the AF_XDP socket bound at its rx queue in
//! the XSKMAP, and is dropped when none is bound (fail closed).
//!
//! Lifetime: [`Redirector::attach`] attaches through rtnetlink (see
//! `netlink.rs` for why not a bpf_link), so the program stays attached after
//! the [`Redirector`] is dropped or the process exits or crashes. Only
//! [`detach`] (or `ip link set dev X xdp off`) removes it; a later `attach`
//! replaces it.
//!
//! For the dataplane:
//! - `queues` must be ≥ the interface's rx queue count (a veth has one per
//!   CPU unless created with `numrxqueues`); frames on a queue without a
//!   socket are dropped.
//! - Create AF_XDP sockets with libxdp's `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`
//!   and empty XDP flags (libxdp must not attach its own program), bind them
//!   to (interface, queue), then [`Redirector::set_socket`] with their fd.
//! - A socket leaves the XSKMAP when its fd closes. With libxdp the first
//!   socket of a UMEM shares the UMEM's fd, so it stays until the UMEM goes
//!   too; for a clean hand-over call [`Redirector::clear_socket`].
//! - `attach`/`detach` act on the calling thread's network namespace.
//! - Needs CAP_BPF + CAP_NET_ADMIN (root here).
#![forbid(unsafe_code)]

mod netlink;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfError, EbpfLoader};
use nix::errno::Errno;

/// The embedded XDP object, built by `build.rs`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-xdp.bpf.o"));

/// The pods' gateway; it sits on the node's `lo`, so frames for it always go
/// to the kernel ([`AttachOptions::local_v4`] and
/// [`Redirector::set_local_addrs`] add it).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Capacity of each local-address map (as declared in the XDP program).
pub const MAX_LOCAL_ADDRS: usize = 64;
/// Capacity of the program's `EXTERNAL_V4` map (the Services' external
/// IPv4 addresses, [`Redirector::set_external_addrs`]).
pub const MAX_EXTERNAL_ADDRS: usize = 4096;
const MAP_EXTERNAL_V4: &str = "EXTERNAL_V4";

const PROG_NAME: &str = "weir_xdp";
const MAP_XSKS: &str = "XSKS";
const MAP_LOCAL_V4: &str = "LOCAL_V4";
const MAP_LOCAL_V6: &str = "LOCAL_V6";
const MAP_COUNTERS: &str = "COUNTERS";
const MAP_CONFIG: &str = "CONFIG";
// Counter slots: keep in step with ebpf/src/main.rs.
const CNT_REDIRECTED: u32 = 0;
const CNT_PASSED: u32 = 1;
const CNT_DROPPED_NO_SOCKET: u32 = 2;
const CNT_MALFORMED: u32 = 3;

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Driver mode (`XDP_FLAGS_DRV_MODE`); veth supports it.
    #[default]
    Native,
    /// Generic mode (`XDP_FLAGS_SKB_MODE`), for drivers without XDP.
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => netlink::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => netlink::XDP_FLAGS_SKB_MODE,
        }
    }
    fn other(self) -> XdpMode {
        match self {
            XdpMode::Native => XdpMode::Generic,
            XdpMode::Generic => XdpMode::Native,
        }
    }
}

/// What [`Redirector::attach`] needs.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    pub mode: XdpMode,
    /// XSKMAP size: must be at least the interface's rx queue count, or frames
    /// on the higher queues are dropped.
    pub queues: u32,
    /// The node's own IPv4 addresses (frames to them go to the kernel);
    /// [`GATEWAY_V4`] is always added.
    pub local_v4: Vec<Ipv4Addr>,
    /// The node's own IPv6 addresses.
    pub local_v6: Vec<Ipv6Addr>,
    /// Underlay mode: only IPv4/UDP frames to this port and to one of
    /// `local_v4` go to the sockets; everything else (ARP, node-to-node
    /// traffic) passes to the kernel. `None`: pod mode.
    pub underlay_udp_port: Option<u16>,
    /// Pod mode with a host port: frames to the node's own addresses (but
    /// the link-local gateways) go to the sockets, not to the kernel; the
    /// dataplane delivers them through the host port.
    /// [`Redirector::set_host_port`] changes it later.
    pub host_port: bool,
}

/// The program's counters, summed over CPUs (plain data: defined in
/// `weir-model`, where status readers find it).
pub use weir_model::status::XdpCounters;

/// Errors of the loader; each names the interface and the failing call.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// interface {ifname}: if_nametoindex: {errno}
    #[error("interface {ifname}: if_nametoindex: {errno}")]
    NoSuchInterface { ifname: String, errno: Errno },
    /// interface {ifname}: loading the XDP object (bpf map/prog creation)
    #[error("interface {ifname}: loading the XDP object: {source}")]
    Load {
        ifname: String,
        #[source]
        source: Box<EbpfError>,
    },
    /// interface {ifname}: {what}
    #[error("interface {ifname}: {what}: {source}")]
    Program {
        ifname: String,
        what: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// interface {ifname}: the XDP object lacks {what}
    #[error("interface {ifname}: the embedded XDP object lacks {what}")]
    Missing { ifname: String, what: &'static str },
    /// interface {ifname}: netlink {call}: {errno}
    #[error("interface {ifname}: netlink {call} ({action}): {errno}")]
    Netlink {
        ifname: String,
        action: &'static str,
        call: &'static str,
        errno: Errno,
    },
    /// interface {ifname}: map {map}: {source}
    #[error("interface {ifname}: map {map}: {source}")]
    Map {
        ifname: String,
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// interface {ifname}: queue {queue} out of range (XSKMAP has {queues})
    #[error("interface {ifname}: queue {queue} out of range (XSKMAP has {queues} entries)")]
    QueueOutOfRange {
        ifname: String,
        queue: u32,
        queues: u32,
    },
    /// interface {ifname}: {count} local addresses, at most {max} per family
    #[error("interface {ifname}: {count} local {family} addresses, at most {max}")]
    TooManyLocalAddrs {
        ifname: String,
        family: &'static str,
        count: usize,
        max: usize,
    },
}

/// The XDP program attached to one interface, and handles on its maps.
///
/// Dropping it does not detach the program (see the crate docs).
pub struct Redirector {
    ifname: String,
    queues: u32,
    xsks: XskMap<MapData>,
    local_v4: BpfHashMap<MapData, [u8; 4], u8>,
    local_v6: BpfHashMap<MapData, [u8; 16], u8>,
    external_v4: BpfHashMap<MapData, [u8; 4], u8>,
    counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, u32>,
    /// Keeps the loaded program's fd for the Redirector's lifetime (the
    /// attachment itself holds its own reference in the kernel).
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("ifname", &self.ifname)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Redirector {
    /// Loads the embedded program and attaches it to `ifname` in the CURRENT
    /// network namespace, replacing any XDP program already attached there
    /// (e.g. by a previous weir process).
    ///
    /// Replacing in the same mode is atomic. Switching mode (a program in the
    /// other mode is attached) removes the old one first: a short window with
    /// no program.
    pub fn attach(ifname: &str, opts: &AttachOptions) -> Result<Redirector, XdpError> {
        let ifindex = ifindex(ifname)?;
        let queues = opts.queues.max(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_XSKS, queues)
            .load(PROGRAM)
            .map_err(|source| XdpError::Load {
                ifname: ifname.to_owned(),
                source: Box::new(source),
            })?;
        let missing = |what| XdpError::Missing {
            ifname: ifname.to_owned(),
            what,
        };
        let prog_err = |what| {
            move |source| XdpError::Program {
                ifname: ifname.to_owned(),
                what,
                source: Box::new(source),
            }
        };
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_NAME)
            .ok_or_else(|| missing("program weir_xdp"))?
            .try_into()
            .map_err(prog_err("program weir_xdp is not XDP"))?;
        prog.load().map_err(prog_err("bpf(BPF_PROG_LOAD)"))?;
        let prog_fd = prog
            .fd()
            .map_err(prog_err("program fd"))?
            .as_fd()
            .as_raw_fd();

        let map_err = |map| {
            move |source| XdpError::Map {
                ifname: ifname.to_owned(),
                map,
                source: Box::new(source),
            }
        };
        let xsks = XskMap::try_from(ebpf.take_map(MAP_XSKS).ok_or_else(|| missing(MAP_XSKS))?)
            .map_err(map_err(MAP_XSKS))?;
        let local_v4 = BpfHashMap::try_from(
            ebpf.take_map(MAP_LOCAL_V4)
                .ok_or_else(|| missing(MAP_LOCAL_V4))?,
        )
        .map_err(map_err(MAP_LOCAL_V4))?;
        let local_v6 = BpfHashMap::try_from(
            ebpf.take_map(MAP_LOCAL_V6)
                .ok_or_else(|| missing(MAP_LOCAL_V6))?,
        )
        .map_err(map_err(MAP_LOCAL_V6))?;
        let external_v4 = BpfHashMap::try_from(
            ebpf.take_map(MAP_EXTERNAL_V4)
                .ok_or_else(|| missing(MAP_EXTERNAL_V4))?,
        )
        .map_err(map_err(MAP_EXTERNAL_V4))?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(MAP_COUNTERS)
                .ok_or_else(|| missing(MAP_COUNTERS))?,
        )
        .map_err(map_err(MAP_COUNTERS))?;
        // The mode is set before the program sees traffic, once: a
        // Redirector serves one mode for its whole life.
        let mut config: Array<MapData, u32> = Array::try_from(
            ebpf.take_map(MAP_CONFIG)
                .ok_or_else(|| missing(MAP_CONFIG))?,
        )
        .map_err(map_err(MAP_CONFIG))?;
        config
            .set(0, u32::from(opts.underlay_udp_port.unwrap_or(0)), 0)
            .map_err(map_err(MAP_CONFIG))?;
        config
            .set(1, u32::from(opts.host_port), 0)
            .map_err(map_err(MAP_CONFIG))?;

        let mut r = Redirector {
            ifname: ifname.to_owned(),
            queues,
            xsks,
            local_v4,
            local_v6,
            external_v4,
            counters,
            config,
            _ebpf: ebpf,
        };
        // Fill the local addresses before the program sees traffic.
        r.set_local_addrs(&opts.local_v4, &opts.local_v6)?;

        let nl_err = |action| {
            move |e: netlink::NlError| XdpError::Netlink {
                ifname: ifname.to_owned(),
                action,
                call: e.call,
                errno: e.errno,
            }
        };
        match netlink::set_xdp_fd(ifindex, prog_fd, opts.mode.flags()) {
            Ok(()) => {}
            // "Native and generic XDP can't be active at the same time".
            Err(e) if e.errno == Errno::EEXIST => {
                log::warn!(
                    "{ifname}: an XDP program is attached in {:?} mode; replacing it (not atomic)",
                    opts.mode.other()
                );
                netlink::set_xdp_fd(ifindex, -1, opts.mode.other().flags())
                    .map_err(nl_err("remove program of the other mode"))?;
                netlink::set_xdp_fd(ifindex, prog_fd, opts.mode.flags())
                    .map_err(nl_err("attach"))?;
            }
            Err(e) => return Err(nl_err("attach")(e)),
        }
        log::info!(
            "{ifname}: XDP redirector attached ({:?} mode, {queues} queues{})",
            opts.mode,
            match opts.underlay_udp_port {
                Some(p) => format!(", underlay UDP {p}"),
                None => String::new(),
            }
        );
        Ok(r)
    }

    /// Binds the AF_XDP socket `fd` to rx queue `queue`. The socket must be
    /// bound to this interface and queue already (`bind(2)` on the XSK).
    pub fn set_socket(&mut self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        self.check_queue(queue)?;
        self.xsks
            .set(queue, fd, 0)
            .map_err(|source| self.map_err(MAP_XSKS, source))
    }

    /// Unbinds the socket of rx queue `queue`: its frames are dropped from now
    /// on. Ok if none was bound.
    pub fn clear_socket(&mut self, queue: u32) -> Result<(), XdpError> {
        self.check_queue(queue)?;
        match self.xsks.unset(queue) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc_enoent()) => {
                Ok(())
            }
            Err(source) => Err(self.map_err(MAP_XSKS, source)),
        }
    }

    /// Replaces the set of local addresses (frames to them go to the kernel).
    /// [`GATEWAY_V4`] is always included.
    pub fn set_local_addrs(&mut self, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> Result<(), XdpError> {
        let want_v4: HashSet<[u8; 4]> = v4
            .iter()
            .chain(std::iter::once(&GATEWAY_V4))
            .map(|a| a.octets())
            .collect();
        let want_v6: HashSet<[u8; 16]> = v6.iter().map(|a| a.octets()).collect();
        for (family, count) in [("IPv4", want_v4.len()), ("IPv6", want_v6.len())] {
            if count > MAX_LOCAL_ADDRS {
                return Err(XdpError::TooManyLocalAddrs {
                    ifname: self.ifname.clone(),
                    family,
                    count,
                    max: MAX_LOCAL_ADDRS,
                });
            }
        }
        let ifname = &self.ifname;
        let map_err = |map| {
            move |source| XdpError::Map {
                ifname: ifname.clone(),
                map,
                source: Box::new(source),
            }
        };
        sync_set(&mut self.local_v4, &want_v4).map_err(map_err(MAP_LOCAL_V4))?;
        sync_set(&mut self.local_v6, &want_v6).map_err(map_err(MAP_LOCAL_V6))?;
        Ok(())
    }

    /// Replaces the set of the Services' external IPv4 addresses
    /// (`spec.externalIPs`, load balancers'): in underlay mode, whole
    /// TCP/UDP datagrams to them (any port) go to the sockets
    /// (docs/services.md, LoadBalancer and external IPs).
    pub fn set_external_addrs(&mut self, v4: &[Ipv4Addr]) -> Result<(), XdpError> {
        let want: HashSet<[u8; 4]> = v4.iter().map(|a| a.octets()).collect();
        if want.len() > MAX_EXTERNAL_ADDRS {
            return Err(XdpError::TooManyLocalAddrs {
                ifname: self.ifname.clone(),
                family: "external IPv4",
                count: want.len(),
                max: MAX_EXTERNAL_ADDRS,
            });
        }
        sync_set(&mut self.external_v4, &want).map_err(|source| XdpError::Map {
            ifname: self.ifname.clone(),
            map: MAP_EXTERNAL_V4,
            source: Box::new(source),
        })
    }

    /// Turns the host-port redirect of node-address frames on or off (see
    /// [`AttachOptions::host_port`]).
    pub fn set_host_port(&mut self, on: bool) -> Result<(), XdpError> {
        self.config
            .set(1, u32::from(on), 0)
            .map_err(|source| self.map_err(MAP_CONFIG, source))
    }

    /// Underlay mode: IPv4 frames from the underlay whose destination
    /// masked by `mask` is `net` (this node's pod CIDR) go to the socket
    /// (the replies of non-masqueraded flows, docs/egress.md); `None` turns
    /// it off.
    pub fn set_routed_v4(&mut self, cidr: Option<(u32, u32)>) -> Result<(), XdpError> {
        let (net, mask) = cidr.unwrap_or((0, 0));
        self.config
            .set(2, net, 0)
            .and_then(|_| self.config.set(3, mask, 0))
            .map_err(|source| self.map_err(MAP_CONFIG, source))
    }

    /// Underlay mode: IPv6 frames from the underlay whose destination
    /// masked by `mask` is `net` (this node's IPv6 pod CIDR) go to the
    /// socket (the replies of non-masqueraded IPv6 flows, docs/egress.md);
    /// `None` turns it off.
    pub fn set_routed_v6(&mut self, cidr: Option<(u128, u128)>) -> Result<(), XdpError> {
        let (net, mask) = cidr.unwrap_or((0, 0));
        let word = |v: u128, i: u32| (v >> (96 - 32 * i)) as u32;
        // The mask's first word last: the program tests it first.
        for i in (0..4u32).rev() {
            self.config
                .set(4 + i, word(net, i), 0)
                .and_then(|_| self.config.set(8 + i, word(mask, i), 0))
                .map_err(|source| self.map_err(MAP_CONFIG, source))?;
        }
        Ok(())
    }

    /// Underlay mode: with host endpoint policy on, IPv4 frames that open a
    /// flow to the node's own addresses (TCP SYN, UDP outside the kernel's
    /// ephemeral ports, ICMP echo requests, other IP protocols) go to the
    /// socket to be judged (docs/policy.md, "Host endpoint policy"); off,
    /// they are the kernel's. Pod mode ignores it.
    pub fn set_host_firewall(&mut self, on: bool) -> Result<(), XdpError> {
        self.config
            .set(12, u32::from(on), 0)
            .map_err(|source| self.map_err(MAP_CONFIG, source))
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        let sum = |slot: u32| -> Result<u64, XdpError> {
            let values = self
                .counters
                .get(&slot, 0)
                .map_err(|source| self.map_err(MAP_COUNTERS, source))?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(XdpCounters {
            redirected: sum(CNT_REDIRECTED)?,
            passed: sum(CNT_PASSED)?,
            dropped_no_socket: sum(CNT_DROPPED_NO_SOCKET)?,
            malformed: sum(CNT_MALFORMED)?,
        })
    }

    /// The interface this program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// XSKMAP size (valid queue indices are `0..queues()`).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    fn check_queue(&self, queue: u32) -> Result<(), XdpError> {
        if queue >= self.queues {
            return Err(XdpError::QueueOutOfRange {
                ifname: self.ifname.clone(),
                queue,
                queues: self.queues,
            });
        }
        Ok(())
    }

    fn map_err(&self, map: &'static str, source: MapError) -> XdpError {
        XdpError::Map {
            ifname: self.ifname.clone(),
            map,
            source: Box::new(source),
        }
    }
}

/// Removes any XDP program (native or generic) from `ifname` in the current
/// network namespace (used by teardown). Ok if none was attached.
pub fn detach(ifname: &str) -> Result<(), XdpError> {
    let ifindex = ifindex(ifname)?;
    for mode in [XdpMode::Native, XdpMode::Generic] {
        netlink::set_xdp_fd(ifindex, -1, mode.flags()).map_err(|e| XdpError::Netlink {
            ifname: ifname.to_owned(),
            action: match mode {
                XdpMode::Native => "detach native",
                XdpMode::Generic => "detach generic",
            },
            call: e.call,
            errno: e.errno,
        })?;
    }
    log::info!("{ifname}: XDP program detached");
    Ok(())
}

fn ifindex(ifname: &str) -> Result<u32, XdpError> {
    nix::net::if_::if_nametoindex(ifname).map_err(|errno| XdpError::NoSuchInterface {
        ifname: ifname.to_owned(),
        errno,
    })
}

fn libc_enoent() -> i32 {
    Errno::ENOENT as i32
}

/// Makes the keys of `map` equal `want`: inserts first, then removes the
/// stale ones, so an address in both the old and new set never misses.
fn sync_set<const N: usize>(
    map: &mut BpfHashMap<MapData, [u8; N], u8>,
    want: &HashSet<[u8; N]>,
) -> Result<(), MapError> {
    for k in want {
        map.insert(k, 1, 0)?;
    }
    let stale: Vec<[u8; N]> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains(k))
        .collect();
    for k in stale {
        map.remove(&k)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn redirector_is_send() {
        assert_send::<Redirector>();
    }

    #[test]
    fn object_is_embedded() {
        assert_eq!(&PROGRAM[..4], b"\x7fELF");
    }
}
