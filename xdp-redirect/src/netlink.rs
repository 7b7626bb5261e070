//! Attaching and removing XDP programs with rtnetlink (`RTM_SETLINK` +
//! `IFLA_XDP`), the "legacy" attach path.
//!
//! Why not a bpf_link (aya's default on kernels ≥ 5.9): a link lives as long as
//! its fd (or a bpffs pin). weir needs the opposite lifetime: the program must
//! stay on the interface when the dataplane process exits or crashes, so that
//! its AF_XDP sockets vanish from the XSKMAP and every frame is dropped (fail
//! closed). A netlink attachment is owned by the interface itself: it survives
//! the process, needs no bpffs mount or pin path (which would have to be keyed
//! by netns and ifindex and cleaned up), a second attach replaces it atomically
//! (same mode), and `ip link set dev X xdp off` removes it for an operator.
//!
//! The messages are built by hand (52 bytes); the socket is nix's, so this
//! module has no `unsafe`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;

/// `XDP_FLAGS_SKB_MODE`: generic XDP.
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native (driver) XDP.
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const MSG_LEN: usize = NLMSG_HDRLEN + IFINFOMSG_LEN + 4 + 8 + 8;

/// Failure of one netlink step: which call, and the errno.
#[derive(Debug)]
pub(crate) struct NlError {
    pub call: &'static str,
    pub errno: Errno,
}

fn err(call: &'static str) -> impl FnOnce(Errno) -> NlError {
    move |errno| NlError { call, errno }
}

/// Sets the XDP program of `ifindex` in the mode `mode_flags` to `prog_fd`
/// (`-1` removes it). Replaces an earlier program of the same mode atomically.
pub(crate) fn set_xdp_fd(ifindex: u32, prog_fd: RawFd, mode_flags: u32) -> Result<(), NlError> {
    let sock: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
    setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))
        .map_err(err("setsockopt(SO_RCVTIMEO)"))?;
    bind(sock.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(err("bind(AF_NETLINK)"))?;

    let seq = 1;
    let msg = setlink_xdp_msg(seq, ifindex, prog_fd, mode_flags);
    sendto(
        sock.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(err("sendto(RTM_SETLINK IFLA_XDP)"))?;

    let mut buf = vec![0u8; 8192];
    loop {
        let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(err("recv(RTM_SETLINK ack)"))?;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32_at(&buf, off) as usize;
            let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            let rseq = u32_at(&buf, off + 8);
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(NlError {
                    call: "recv(RTM_SETLINK ack): truncated message",
                    errno: Errno::EBADMSG,
                });
            }
            if ty == NLMSG_ERROR && rseq == seq && len >= NLMSG_HDRLEN + 4 {
                let code = i32::from_ne_bytes(
                    buf[off + NLMSG_HDRLEN..off + NLMSG_HDRLEN + 4]
                        .try_into()
                        .expect("4 bytes"),
                );
                return if code == 0 {
                    Ok(())
                } else {
                    Err(NlError {
                        call: "RTM_SETLINK IFLA_XDP",
                        errno: Errno::from_raw(-code),
                    })
                };
            }
            off += (len + 3) & !3;
        }
    }
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

/// `nlmsghdr` + `ifinfomsg` + `IFLA_XDP { IFLA_XDP_FD, IFLA_XDP_FLAGS }`.
fn setlink_xdp_msg(seq: u32, ifindex: u32, prog_fd: RawFd, flags: u32) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    let mut w = Writer {
        buf: &mut m,
        off: 0,
    };
    // nlmsghdr
    w.u32(MSG_LEN as u32);
    w.u16(RTM_SETLINK);
    w.u16(NLM_F_REQUEST | NLM_F_ACK);
    w.u32(seq);
    w.u32(0); // port id: the kernel fills ours in
              // ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change
    w.u8(0);
    w.u8(0);
    w.u16(0);
    w.u32(ifindex);
    w.u32(0);
    w.u32(0);
    // IFLA_XDP (nested)
    w.u16(4 + 8 + 8);
    w.u16(IFLA_XDP | NLA_F_NESTED);
    w.u16(8);
    w.u16(IFLA_XDP_FD);
    w.u32(prog_fd as u32);
    w.u16(8);
    w.u16(IFLA_XDP_FLAGS);
    w.u32(flags);
    debug_assert_eq!(w.off, MSG_LEN);
    m
}

struct Writer<'a> {
    buf: &'a mut [u8],
    off: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.off..self.off + b.len()].copy_from_slice(b);
        self.off += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_ne_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let m = setlink_xdp_msg(7, 3, -1, XDP_FLAGS_DRV_MODE);
        assert_eq!(u32_at(&m, 0) as usize, MSG_LEN);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(u32_at(&m, 20), 3); // ifi_index
        assert_eq!(&m[32..36], &[20, 0, 43, 0x80]); // IFLA_XDP | NESTED, len 20
        assert_eq!(u32_at(&m, 40), u32::MAX); // fd -1
        assert_eq!(u32_at(&m, 48), XDP_FLAGS_DRV_MODE);
    }
}
