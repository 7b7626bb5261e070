//! The one ethtool knob topologies set: TX checksum offload off
//! (`ethtool -K <if> tx off`), through the legacy `SIOCETHTOOL` ioctl with
//! `ETHTOOL_STXCSUM`. The only `unsafe` of this crate lives here.

use std::io;
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};

/// `ETHTOOL_STXCSUM` from `linux/ethtool.h`.
const ETHTOOL_STXCSUM: u32 = 0x0000_0017;
/// `ETHTOOL_GTXCSUM` from `linux/ethtool.h`.
const ETHTOOL_GTXCSUM: u32 = 0x0000_0016;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on LP64).
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    if ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: `req` is a properly laid out `struct ifreq` (NUL-terminated
    // name, `ifr_data` pointing at a live `ethtool_value`), both outlive the
    // call, and SIOCETHTOOL with (S|G)TXCSUM reads/writes only those.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCETHTOOL as _,
            &mut req as *mut IfReqData,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns TX checksum offload off on `ifname` in the calling thread's namespace.
pub(crate) fn tx_checksum_off(ifname: &str) -> io::Result<()> {
    ethtool_value(ifname, ETHTOOL_STXCSUM, 0).map(|_| ())
}

/// Whether TX checksum offload is on for `ifname` (calling thread's namespace).
pub fn tx_checksum_enabled(ifname: &str) -> io::Result<bool> {
    ethtool_value(ifname, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}
