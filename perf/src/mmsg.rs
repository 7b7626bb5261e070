//! Batched UDP I/O with `sendmmsg(2)` / `recvmmsg(2)`: one syscall moves a
//! whole batch of datagrams, so the load generator spends its time in the
//! network stack rather than in syscall entry and exit.
//!
//! The only `unsafe` of the crate lives here: the message headers hold raw
//! pointers into buffers that this module owns and never moves (they are
//! heap allocations made once in `new`, kept alive by the same struct).

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;

/// A batch of identical datagrams to one IPv4 destination, sent with one
/// `sendmmsg` on an unconnected socket (so ICMP errors, e.g. when the node
/// drops with "host unreachable", never surface as send errors).
pub struct SendBatch {
    hdrs: Vec<libc::mmsghdr>,
    // Referenced by `hdrs`: kept alive and unmoved for the life of `self`.
    _iov: Box<libc::iovec>,
    _addr: Box<libc::sockaddr_in>,
    _payload: Box<[u8]>,
}

impl SendBatch {
    /// `batch` datagrams of `payload_len` bytes (filled with 0x5a) to `dst`.
    pub fn new(dst: SocketAddrV4, payload_len: usize, batch: usize) -> SendBatch {
        let mut payload = vec![0x5au8; payload_len].into_boxed_slice();
        let mut addr = Box::new(sockaddr_in(dst));
        let mut iov = Box::new(libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        });
        let iov_ptr: *mut libc::iovec = &mut *iov;
        let addr_ptr: *mut libc::sockaddr_in = &mut *addr;
        let hdrs = (0..batch.max(1))
            .map(|_| {
                // SAFETY: mmsghdr is a plain C struct of integers and raw
                // pointers, for which all-zero bytes are a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = addr_ptr.cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov_ptr;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        SendBatch {
            hdrs,
            _iov: iov,
            _addr: addr,
            _payload: payload,
        }
    }

    /// Sends the batch once; returns how many datagrams the kernel took.
    pub fn send(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        // SAFETY: `hdrs` holds `hdrs.len()` initialised headers whose
        // pointers (name, iovec, payload) point into boxes owned by `self`,
        // alive and unmoved for the duration of the call; the kernel only
        // reads them (and writes `msg_len`, a field of `hdrs`).
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Receive buffers for up to `batch` datagrams per `recvmmsg`.
pub struct RecvBatch {
    hdrs: Vec<libc::mmsghdr>,
    // Referenced by `hdrs`: kept alive and unmoved for the life of `self`.
    _iovs: Vec<libc::iovec>,
    _bufs: Box<[u8]>,
}

impl RecvBatch {
    /// Room for `batch` datagrams of at most `size` bytes each (longer ones
    /// are truncated, which is fine for counting).
    pub fn new(batch: usize, size: usize) -> RecvBatch {
        let batch = batch.max(1);
        let mut bufs = vec![0u8; batch * size].into_boxed_slice();
        let base = bufs.as_mut_ptr();
        let mut iovs: Vec<libc::iovec> = (0..batch)
            .map(|i| libc::iovec {
                // In bounds: i * size < batch * size.
                iov_base: base.wrapping_add(i * size).cast(),
                iov_len: size,
            })
            .collect();
        let iov_base = iovs.as_mut_ptr();
        let hdrs = (0..batch)
            .map(|i| {
                // SAFETY: as in `SendBatch::new`, all-zero is a valid mmsghdr.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvBatch {
            hdrs,
            _iovs: iovs,
            _bufs: bufs,
        }
    }

    /// Waits for at least one datagram (or the socket's receive timeout)
    /// and takes as many as are queued, up to the batch size.
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        // SAFETY: every header points at its own iovec, and every iovec at
        // its own disjoint `size`-byte slice of `_bufs`; all are owned by
        // `self` and unmoved during the call. The kernel writes only into
        // those buffers and the headers' `msg_len`/`msg_flags`.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Sets `SO_RCVBUF` (best effort: the kernel caps it at `rmem_max`; with
/// root, `SO_RCVBUFFORCE` lifts the cap).
pub fn set_rcvbuf(sock: &impl AsRawFd, bytes: usize) {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `v` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// `SO_LINGER {on, 0}`: `close` sends RST and leaves no TIME_WAIT.
pub fn linger0(sock: &impl AsRawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` is a live linger struct and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An AF_PACKET blaster: `batch` copies of `frame` sent per `sendmmsg` on a
/// raw packet socket bound to interface `ifindex` (`PACKET_QDISC_BYPASS`);
/// each message has its own copy, which [`PacketBlaster::frame_mut`] may
/// rewrite between sends (e.g. one flow per message).
/// Must be created inside the namespace that holds the interface.
pub struct PacketBlaster {
    fd: std::os::fd::OwnedFd,
    hdrs: Vec<libc::mmsghdr>,
    _iov: Box<[libc::iovec]>,
    _addr: Box<libc::sockaddr_ll>,
    frames: Box<[u8]>,
    frame_len: usize,
}

impl PacketBlaster {
    pub fn new(ifindex: i32, frame: &[u8], batch: usize) -> io::Result<PacketBlaster> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live c_int and the length is its size.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: Box<libc::sockaddr_ll> = Box::new(unsafe { std::mem::zeroed() });
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let batch = batch.max(1);
        let mut frames: Box<[u8]> = frame.repeat(batch).into();
        let base = frames.as_mut_ptr();
        let mut iov: Box<[libc::iovec]> = (0..batch)
            .map(|i| libc::iovec {
                // In bounds: `frames` holds `batch` frames of this length.
                iov_base: base.wrapping_add(i * frame.len()).cast(),
                iov_len: frame.len(),
            })
            .collect();
        let addr_ptr: *mut libc::sockaddr_ll = &mut *addr;
        let hdrs = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: all-zero is a valid mmsghdr.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = addr_ptr.cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Ok(PacketBlaster {
            fd,
            hdrs,
            _iov: iov,
            _addr: addr,
            frames,
            frame_len: frame.len(),
        })
    }

    /// Messages per `sendmmsg`.
    pub fn batch(&self) -> usize {
        self.hdrs.len()
    }

    /// Message `i`'s frame, to rewrite before the next send (the buffer
    /// stays where the headers point: only its bytes change).
    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        let at = i * self.frame_len;
        &mut self.frames[at..at + self.frame_len]
    }

    /// One `sendmmsg`: how many frames the kernel took.
    pub fn send(&mut self) -> io::Result<usize> {
        // SAFETY: as in `SendBatch::send`: headers point into boxes owned
        // by `self`, alive and unmoved during the call.
        let n = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Sends from `b` until `done` is set, adding the frames the kernel took to
/// `sent`; `before` may rewrite `b`'s frames before each send. Frames the
/// kernel refuses are not re-sent. An error only when no frame was ever
/// taken (the last error then).
pub fn blast(
    b: &mut PacketBlaster,
    done: &std::sync::atomic::AtomicBool,
    sent: &std::sync::atomic::AtomicU64,
    mut before: impl FnMut(&mut PacketBlaster),
) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    let mut last_err = None;
    let mut took = 0u64;
    while !done.load(Ordering::Relaxed) {
        before(b);
        match b.send() {
            Ok(n) => {
                took += n as u64;
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (took, last_err) {
        (0, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `SO_TIMESTAMPNS` on: the kernel stamps received skbs (CLOCK_REALTIME,
/// where the frame enters the receiving device's stack: `netif_rx` /
/// `netif_receive_skb`) and `recv_stamped` returns the stamp of the data read.
pub fn enable_rx_timestamps(sock: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One `recvmsg` into `buf`: bytes read and the software RX stamp of the
/// data (ns since the epoch, CLOCK_REALTIME) when the kernel gave one
/// (`SCM_TIMESTAMPNS`; TCP gives the stamp of the last skb read).
pub fn recv_stamped(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // Room for one cmsg carrying a timespec, 8-aligned.
    let mut ctrl = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero bytes are valid.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctrl.as_mut_ptr().cast();
    m.msg_controllen = std::mem::size_of_val(&ctrl) as _;
    // SAFETY: `m` points at `iov` (into `buf`) and `ctrl`, both alive and
    // unmoved during the call; the kernel writes at most their lengths.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut m, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled
    // (bounded by `msg_controllen`, which it set); a SCM_TIMESTAMPNS cmsg
    // carries one timespec, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&m, c);
        }
    }
    Ok((n as usize, stamp))
}

/// `if_nametoindex(3)` in the calling thread's namespace (0: no such interface).
pub fn ifindex(name: &str) -> i32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: `c` is a valid NUL-terminated string alive for the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    #[test]
    fn batches_cross_loopback() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dst = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut send = SendBatch::new(dst, 18, 8);
        assert_eq!(send.send(&tx).unwrap(), 8);
        let mut recv = RecvBatch::new(16, 64);
        let mut got = 0;
        while got < 8 {
            got += recv.recv(&rx).unwrap();
        }
        assert_eq!(got, 8);
    }
}
