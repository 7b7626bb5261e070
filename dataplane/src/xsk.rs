//! UMEM, AF_XDP sockets and the frame ledger: the one module of the fast path
//! with `unsafe` (xsk-rs leaves the frame-ownership rules to its caller).
//!
//! Ownership rules xsk-rs asks us to keep, and how they are kept here:
//! - a frame handed to a fill ring or a TX ring is not touched until it comes
//!   back through an RX ring or a completion ring: the worker only ever has a
//!   frame as a [`HeldFrame`], a token that is neither `Copy` nor `Clone`,
//!   that only [`XskSocket::rx`] and [`Frames::take`] make and only
//!   [`XskSocket::tx`] and [`Frames::release`] consume (a frame transmitted
//!   twice, or used after its release, does not compile);
//! - a descriptor of one UMEM is never used with another UMEM: each worker
//!   owns its UMEM, its ledger and its sockets, and its tokens never leave it
//!   (the one rule left to the caller: [`WorkerUmem::with_frame`] and the
//!   socket functions take the tokens of their own worker only).
//!
//! Every frame of a worker's UMEM is recorded in that worker's [`Frames`]
//! ledger as either free, held by the worker (between RX and the verdict), or
//! lent to the kernel through one socket slot (its fill ring or its TX ring).
//! Moving a frame anywhere goes through the ledger, so a frame can only be
//! handed out once, and the frames lent to a socket that is being removed are
//! found again by scanning the ledger for that slot ([`Frames::reclaim`]).
//! Each worker owns its UMEM's descriptors and rings; only socket creation
//! (serialised on the UMEM by xsk-rs) happens on the control thread.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use weir_model::status::KERNEL_TX_BUDGET;

use crate::stats::KernelDrops;

/// Errors of UMEM and socket setup.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// invalid UMEM configuration: {0}
    #[error("invalid UMEM configuration: {0}")]
    Config(String),
    /// creating the UMEM failed: {0}
    #[error("creating the UMEM ({frames} frames of {frame_size} bytes) failed: {reason}")]
    Umem {
        frames: u32,
        frame_size: u32,
        reason: String,
    },
    /// creating the AF_XDP socket on {ifname} queue {queue} failed: {reason}
    #[error("creating the AF_XDP socket on {ifname} queue {queue} failed: {reason}")]
    Socket {
        ifname: String,
        queue: u32,
        reason: String,
    },
    /// setrlimit(RLIMIT_MEMLOCK) failed: {0}
    #[error("setrlimit(RLIMIT_MEMLOCK) failed: {0}")]
    Memlock(io::Error),
}

/// Raises `RLIMIT_MEMLOCK` to unlimited (UMEM is locked memory). Falls back to
/// raising only the soft limit to the hard limit when the hard limit cannot be
/// raised (no CAP_SYS_RESOURCE).
pub fn raise_memlock() -> Result<(), XskError> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass by reference; it lives for
    // the whole call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return Ok(());
    }
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } != 0 {
        return Err(XskError::Memlock(io::Error::last_os_error()));
    }
    cur.rlim_cur = cur.rlim_max;
    // SAFETY: as above, the struct outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur) } != 0 {
        return Err(XskError::Memlock(io::Error::last_os_error()));
    }
    Ok(())
}

/// `poll(2)` on a set of socket descriptors; returns how many are ready.
/// `EINTR` counts as a timeout.
pub fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    if fds.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
        return Ok(0);
    }
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()`
    // pollfd structs for the duration of the call.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(ret as usize)
}

/// One worker's UMEM. Cloning gives another handle on the same memory; the
/// control thread keeps one to create sockets for new ports.
#[derive(Clone, Debug)]
pub struct WorkerUmem {
    umem: Umem,
    ring_size: u32,
    /// Why zero-copy was refused to the UMEM's first socket (its errno):
    /// the sockets sharing the UMEM later inherit its copy mode, and this
    /// reason with it.
    zc_refused: std::sync::Arc<std::sync::OnceLock<String>>,
    /// Bind its sockets with `XDP_USE_SG` (multi-buffer: a packet larger
    /// than a frame arrives, and leaves, as a chain of descriptors;
    /// [`crate::multibuf`]).
    multi_buffer: bool,
}

impl WorkerUmem {
    /// Creates a UMEM of `frames` frames of `frame_size` bytes (a power of
    /// two, 2048..=4096 for aligned mode) whose fill and completion rings, and
    /// the RX/TX rings of its sockets, have `ring_size` entries. Returns the
    /// ledger holding every frame as free.
    pub fn new(frame_size: u32, frames: u32, ring_size: u32) -> Result<(Self, Frames), XskError> {
        let cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(frame_size).map_err(|e| XskError::Config(e.to_string()))?)
            .fill_queue_size(
                QueueSize::new(ring_size).map_err(|e| XskError::Config(e.to_string()))?,
            )
            .comp_queue_size(
                QueueSize::new(ring_size).map_err(|e| XskError::Config(e.to_string()))?,
            )
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let count = std::num::NonZeroU32::new(frames)
            .ok_or_else(|| XskError::Config("frames_per_worker must be > 0".into()))?;
        let (umem, descs) = Umem::new(cfg, count, false).map_err(|e| XskError::Umem {
            frames,
            frame_size,
            reason: error_chain(&e),
        })?;
        let ledger = Frames::new(descs, frame_size);
        Ok((
            WorkerUmem {
                umem,
                ring_size,
                zc_refused: Default::default(),
                multi_buffer: false,
            },
            ledger,
        ))
    }

    /// Binds the sockets opened from now on with `XDP_USE_SG` (multi-buffer,
    /// kernel >= 6.6; the kernel records it on the UMEM, so the sockets
    /// sharing it take it too). Off: a packet larger than a frame is
    /// dropped by the kernel (`rx_dropped`), as before.
    pub fn with_multi_buffer(mut self, on: bool) -> Self {
        self.multi_buffer = on;
        self
    }

    /// Whether this UMEM's sockets are bound multi-buffer.
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// Creates an AF_XDP socket on `ifname` queue `queue` sharing this UMEM
    /// (its own fill and completion rings). libxdp's program load is
    /// inhibited: weir attaches its own XDP program and fills the XSKMAP.
    /// With `zero_copy`, zero-copy is tried first and copy mode is the
    /// fallback (veth has no zero-copy). Only the first socket of a UMEM
    /// chooses the mode; the kernel gives the later (shared) ones the same.
    pub fn open_socket(
        &self,
        ifname: &str,
        queue: u32,
        zero_copy: bool,
    ) -> Result<XskSocket, XskError> {
        let err = |reason: String| XskError::Socket {
            ifname: ifname.to_string(),
            queue,
            reason,
        };
        let iface = ifname
            .parse()
            .map_err(|_| err("interface name contains NUL".into()))?;
        let ring = QueueSize::new(self.ring_size).map_err(|e| err(e.to_string()))?;
        let attempts: &[BindFlags] = if zero_copy {
            &[BindFlags::XDP_ZEROCOPY, BindFlags::XDP_COPY]
        } else {
            &[BindFlags::XDP_COPY]
        };
        let mut last = String::new();
        // Why the kernel refused zero-copy (its errno), when asked for.
        let mut zc_refused: Option<String> = None;
        let want_zero_copy = zero_copy;
        // A socket just closed on this queue (a restarted dataplane) releases
        // the queue from a kernel work item, shortly after close: until then
        // binding fails with EBUSY. Wait for it, on the control path only.
        let deadline = std::time::Instant::now() + BUSY_WAIT;
        let mut modes = attempts.iter().peekable();
        let sg = if self.multi_buffer {
            BindFlags::XDP_USE_SG
        } else {
            BindFlags::empty()
        };
        while let Some(mode) = modes.peek() {
            let cfg = SocketConfig::builder()
                .rx_queue_size(ring)
                .tx_queue_size(ring)
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .xdp_flags(XdpFlags::empty())
                .bind_flags(**mode | BindFlags::XDP_USE_NEED_WAKEUP | sg)
                .build();
            // SAFETY: program load is inhibited, as `Socket::new` requires
            // for a shared UMEM; and weir binds each (interface, queue) pair
            // at most once per UMEM (a worker owns its queues exclusively).
            match unsafe { Socket::new(cfg, &self.umem, &iface, queue) } {
                Ok((tx, rx, Some((fq, cq)))) => {
                    let fd = tx.fd().as_raw_fd();
                    // The mode the kernel chose, not the one asked for: a
                    // socket sharing the UMEM gets the UMEM's first socket's
                    // mode whatever its bind flags (libxdp sends none).
                    let zero_copy = match bound_zero_copy(fd) {
                        Ok(zc) => zc,
                        Err(_) => mode.contains(BindFlags::XDP_ZEROCOPY),
                    };
                    let tx_budget = if zero_copy {
                        None
                    } else {
                        Some(raise_tx_budget(fd, self.ring_size))
                    };
                    return Ok(XskSocket {
                        ifname: ifname.to_string(),
                        queue,
                        ring_size: self.ring_size,
                        fd,
                        zero_copy,
                        tx_budget,
                        sg: self.multi_buffer,
                        zc_refused: match (want_zero_copy, zero_copy) {
                            (true, false) => Some(zc_refused.unwrap_or_else(|| {
                                self.zc_refused
                                    .get()
                                    .cloned()
                                    .unwrap_or_else(|| "UMEM bound in copy mode".into())
                            })),
                            _ => None,
                        },
                        tx,
                        rx,
                        fq,
                        cq,
                        tx_scratch: vec![FrameDesc::default(); self.ring_size as usize],
                    });
                }
                Ok((_, _, None)) => {
                    return Err(err("queue already bound from this UMEM".into()));
                }
                Err(e) => {
                    last = error_chain(&e);
                    let busy = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .and_then(io::Error::raw_os_error)
                        == Some(libc::EBUSY);
                    if busy && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                    if mode.contains(BindFlags::XDP_ZEROCOPY) {
                        let why = errno_of(&e);
                        let _ = self
                            .zc_refused
                            .set(format!("{why} on {ifname}, the shared UMEM's first socket"));
                        zc_refused = Some(why);
                        log::info!(
                            "{ifname} queue {queue}: zero-copy refused ({last}); trying copy mode"
                        );
                    }
                    modes.next();
                }
            }
        }
        Err(err(last))
    }

    /// Runs `f` over a held frame: the whole writable area from the
    /// packet's first byte to the end of its UMEM frame, and the received
    /// length. `f` returns its result and the frame's new length (clamped to
    /// the area), which becomes the length transmitted.
    #[inline]
    pub fn with_frame<R>(
        &self,
        frame: &mut HeldFrame,
        f: impl FnOnce(&mut [u8], usize) -> (R, usize),
    ) -> R {
        let desc = &mut frame.0;
        let len = desc.lengths().data();
        // SAFETY: a `HeldFrame` exists only between RX (or `take`) and TX
        // (or `release`), which consume it: the frame is on no ring, so the
        // kernel does not touch it, and the `&mut` borrow of the token makes
        // this the only reference. It is a frame of this worker's UMEM (its
        // ledger made the token; tokens never leave their worker).
        let mut data = unsafe { self.umem.data_mut(desc) };
        let cap = open_to_end(&mut data);
        let (r, new_len) = f(data.contents_mut(), len.min(cap));
        data.cursor().set_pos(new_len.min(cap));
        r
    }

    /// Runs `f` over a held frame with the room in front of its packet:
    /// `f` gets the area from the end of the frame's user headroom (none
    /// in weir's UMEMs) to the end of the frame, the packet's offset in it
    /// (`head`: the XDP headroom, 256 bytes for a frame received in copy
    /// mode) and its length; it returns its result, the packet's new
    /// offset and its new length. The descriptor then points at the new
    /// start ([`xsk_rs::Umem::adjust_head`], patched in, see
    /// third_party/xsk-rs/PATCH.md): an encapsulation writes the outer
    /// headers in the room and moves the start back, a decapsulation
    /// moves it forward past them, and neither moves the packet. A new
    /// offset beyond the area is clamped to its last byte (the address
    /// must stay in its frame: the ledger finds the frame by it), a length
    /// to what follows the offset.
    ///
    /// The kernel takes a TX descriptor starting anywhere in its frame as
    /// long as the packet does not run past the frame's end
    /// (`xp_aligned_validate_desc`, aligned mode); the completion ring
    /// gives the address back as transmitted, and [`Frames`] finds the
    /// frame by masking it, then files the frame under the address xsk-rs
    /// made for it.
    #[inline]
    pub fn with_frame_room<R>(
        &self,
        frame: &mut HeldFrame,
        f: impl FnOnce(&mut [u8], usize, usize) -> (R, usize, usize),
    ) -> R {
        let desc = &mut frame.0;
        let len = desc.lengths().data();
        let head = self.umem.head_room(desc);
        // Cannot fail: `head` is the room `head_room` just measured.
        let grown = self.umem.adjust_head(desc, -(head as isize));
        let head = if grown { head } else { 0 };
        // SAFETY: as in `with_frame`: the frame is held (on no ring), the
        // `&mut` borrow of the token is the only reference, and it is a
        // frame of this worker's UMEM. `data_mut` stays inside the frame
        // whatever the descriptor's address (xsk-rs bounds it by the
        // frame's end, found by masking the address).
        let mut data = unsafe { self.umem.data_mut(desc) };
        let cap = open_to_end(&mut data);
        let (r, new_head, new_len) = f(data.contents_mut(), head, (head + len).min(cap) - head);
        // The start stays inside the frame (at its last byte at most):
        // the ledger finds the frame by it.
        let new_head = new_head.min(cap.saturating_sub(1));
        let new_len = new_len.min(cap - new_head);
        data.cursor().set_pos(new_head + new_len);
        // Cannot fail: `new_head` is within the data just set.
        let moved = self.umem.adjust_head(desc, new_head as isize);
        debug_assert!(moved, "adjust_head refused a start inside the packet");
        r
    }
}

/// Opens a frame's data area to the end of its frame (the cursor at the
/// frame's capacity, so the pass may grow the packet) and returns that
/// capacity; the caller sets the packet's real end afterwards.
#[inline]
fn open_to_end(data: &mut xsk_rs::umem::frame::DataMut<'_>) -> usize {
    let mut c = data.cursor();
    let cap = c.buf_len();
    c.set_pos(cap);
    cap
}

/// A frame the worker holds: received from an RX ring or taken from the
/// free list, and not yet on a TX ring or back in the free list. Not `Copy`
/// or `Clone`: [`XskSocket::tx`] and [`Frames::release`] consume it, so a
/// frame cannot be sent twice or touched after it went back. Dropping one
/// instead loses the frame until its worker stops (the ledger keeps it as
/// held), which `#[must_use]` warns about.
#[derive(Debug)]
#[must_use = "a held frame must be transmitted or released"]
pub struct HeldFrame(FrameDesc);

impl HeldFrame {
    /// Length of the frame's data (as received, or as last set).
    #[inline]
    pub fn data_len(&self) -> usize {
        self.0.lengths().data()
    }

    /// UMEM address of the frame's first byte, as it would be put on a
    /// TX ring (moved by [`WorkerUmem::with_frame_room`]).
    #[inline]
    pub fn addr(&self) -> usize {
        self.0.addr()
    }

    /// The packet goes on in the next descriptor (`XDP_PKT_CONTD`): as
    /// received from a multi-buffer socket, or as set for TX.
    #[inline]
    pub fn continues(&self) -> bool {
        self.0.options() & XDP_PKT_CONTD != 0
    }

    /// Marks (or unmarks) the frame as continued by the next descriptor of
    /// its chain, for TX.
    #[inline]
    pub fn set_continues(&mut self, on: bool) {
        let o = self.0.options() & !XDP_PKT_CONTD;
        self.0.set_options(if on { o | XDP_PKT_CONTD } else { o });
    }
}

/// `XDP_PKT_CONTD` (linux/if_xdp.h): the packet continues in the next
/// descriptor.
const XDP_PKT_CONTD: u32 = 1;

/// Most descriptors one packet may take: the kernel's own bound for a
/// copy-mode chain (`MAX_SKB_FRAGS` + 1 with the default 17 frags).
pub const MAX_CHAIN: usize = 18;

/// How long socket creation waits for a queue still being released.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a frame is.
const FREE: u16 = u16::MAX;
const HELD: u16 = u16::MAX - 1;
/// Highest socket slot number a ledger can record.
pub const MAX_SLOTS: usize = (u16::MAX - 2) as usize;

/// The frame ledger of one worker: the free list, and for every frame who has
/// it (free, the worker, or the kernel through a socket slot).
#[derive(Debug)]
pub struct Frames {
    free: Vec<FrameDesc>,
    owner: Vec<u16>,
    /// The descriptor xsk-rs made for each frame (xsk-rs alone can create
    /// descriptors); reclaimed frames are handed out as these.
    template: Vec<FrameDesc>,
    shift: u32,
}

impl Frames {
    fn new(descs: Vec<FrameDesc>, frame_size: u32) -> Self {
        let owner = vec![FREE; descs.len()];
        let mut free = Vec::with_capacity(descs.len());
        // Reverse so that pops hand out low addresses first (easier to read
        // in a debugger; no other reason).
        free.extend(descs.iter().rev().copied());
        Frames {
            free,
            owner,
            template: descs,
            shift: frame_size.trailing_zeros(),
        }
    }

    #[inline]
    fn index(&self, d: &FrameDesc) -> usize {
        d.addr() >> self.shift
    }

    pub fn total(&self) -> usize {
        self.owner.len()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free frame for the worker to write a frame of its own into
    /// (L7 replies); it becomes held. `None` when none is free.
    #[inline]
    pub fn take(&mut self) -> Option<HeldFrame> {
        let mut d = self.free.pop()?;
        let i = self.index(&d);
        self.owner[i] = HELD;
        // A frame last received inside a chain keeps its CONTD flag in
        // the free list's copy: a frame of the worker's own starts clean.
        d.set_options(0);
        Some(HeldFrame(d))
    }

    /// Returns a held frame to the free list.
    #[inline]
    pub fn release(&mut self, frame: HeldFrame) {
        let d = frame.0;
        let i = self.index(&d);
        debug_assert_eq!(
            self.owner[i], HELD,
            "released a frame the worker does not hold"
        );
        self.owner[i] = FREE;
        // Filed as xsk-rs made it: its address may have moved inside the
        // frame (`with_frame_room`), and the options may mark a chain.
        self.free.push(self.template[i]);
    }

    /// Counts the ledger: frames (held by the worker, lent to the kernel
    /// through any socket slot). Visits every frame: for status, not per packet.
    pub fn census(&self) -> (usize, usize) {
        let mut held = 0;
        let mut lent = 0;
        for &o in &self.owner {
            match o {
                FREE => {}
                HELD => held += 1,
                _ => lent += 1,
            }
        }
        (held, lent)
    }

    /// Finds every frame lent through `slot` and frees it. Only valid once
    /// the socket of that slot has been deleted (the kernel forgot them).
    pub fn reclaim(&mut self, slot: usize) -> usize {
        let mut n = 0;
        for i in 0..self.owner.len() {
            if self.owner[i] as usize == slot {
                self.owner[i] = FREE;
                self.free.push(self.template[i]);
                n += 1;
            }
        }
        n
    }
}

/// One AF_XDP socket on one (interface, queue), with its own fill and
/// completion rings on the worker's shared UMEM.
#[derive(Debug)]
pub struct XskSocket {
    ifname: String,
    queue: u32,
    ring_size: u32,
    fd: RawFd,
    zero_copy: bool,
    /// Copy mode: the most frames one TX kick hands to the device
    /// ([`raise_tx_budget`]); `None` in zero-copy (the driver's NAPI sends).
    tx_budget: Option<u32>,
    /// Bound with `XDP_USE_SG`: RX may return chains (kept whole by
    /// [`XskSocket::rx`]) and TX takes them.
    sg: bool,
    zc_refused: Option<String>,
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    /// The descriptors of the frames [`XskSocket::tx`] produces (a copy
    /// of their tokens', as the ring takes a slice of descriptors).
    tx_scratch: Vec<FrameDesc>,
}

impl XskSocket {
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The socket's descriptor, for the XSKMAP and for `poll`.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Copy mode: the most frames one TX kick sends ([`raise_tx_budget`]).
    pub fn tx_budget(&self) -> Option<u32> {
        self.tx_budget
    }

    /// Bound multi-buffer (`XDP_USE_SG`).
    pub fn multi_buffer(&self) -> bool {
        self.sg
    }

    /// Zero-copy was asked for and this socket runs in copy mode: why (the
    /// errno of the refused zero-copy bind, e.g. `EOPNOTSUPP`; a socket
    /// sharing a copy-mode UMEM shows the refusal its first socket met, and
    /// that socket's interface: the kernel gives a shared socket the UMEM's
    /// mode, never tries zero-copy on its own interface).
    pub fn zero_copy_refused(&self) -> Option<&str> {
        self.zc_refused.as_deref()
    }

    /// Turns on socket busy polling (`--busy-poll`): `SO_PREFER_BUSY_POLL`,
    /// `SO_BUSY_POLL` (`usecs`) and `SO_BUSY_POLL_BUDGET` (`budget`). The
    /// kernel then runs the device's NAPI poll (for a veth: its XDP program
    /// and the copy into the UMEM) inside [`XskSocket::busy_poll`] and the TX
    /// kick, on the worker's core, instead of waiting for the softirq.
    /// Raising the budget above 8 needs CAP_NET_ADMIN.
    pub fn set_busy_poll(&self, usecs: u32, budget: u32) -> io::Result<()> {
        set_sockopt_int(self.fd, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)?;
        set_sockopt_int(
            self.fd,
            libc::SOL_SOCKET,
            SO_BUSY_POLL,
            usecs as libc::c_int,
        )?;
        set_sockopt_int(
            self.fd,
            libc::SOL_SOCKET,
            SO_BUSY_POLL_BUDGET,
            budget as libc::c_int,
        )
    }

    /// One busy-poll pass of this socket's NAPI context: a non-blocking
    /// `recvfrom` of nothing (the documented trigger for AF_XDP; the data
    /// itself arrives on the RX ring). With busy polling off it is only a
    /// syscall. Errors (EAGAIN, a device gone) are left to the rings.
    #[inline]
    pub fn busy_poll(&self) {
        // SAFETY: a zero-length receive into no buffer and no address; the
        // kernel writes nothing to user memory for AF_XDP.
        unsafe {
            libc::recvfrom(
                self.fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Moves completed TX frames of this socket to the free list; `scratch`
    /// bounds how many per call. Returns how many.
    #[inline]
    pub fn reap(&mut self, frames: &mut Frames, scratch: &mut [FrameDesc]) -> usize {
        // SAFETY: the completion ring of this socket only returns frames of
        // this worker's UMEM that were put on this socket's TX ring.
        let n = unsafe { self.cq.consume(scratch) };
        for d in &scratch[..n] {
            // The address as transmitted: maybe moved inside the frame
            // (`WorkerUmem::with_frame_room`); the index masks it, and the
            // frame is filed as xsk-rs made it.
            let i = frames.index(d);
            frames.owner[i] = FREE;
            frames.free.push(frames.template[i]);
        }
        n
    }

    /// Hands up to `want` free frames to this socket's fill ring, recording
    /// them as lent through `slot`. Returns how many.
    #[inline]
    pub fn refill(&mut self, slot: usize, frames: &mut Frames, want: usize) -> usize {
        let n = want.min(frames.free.len());
        if n == 0 {
            return 0;
        }
        let n = n.min(self.fq.nb_free(n as u32) as usize);
        if n == 0 {
            return 0;
        }
        let start = frames.free.len() - n;
        // SAFETY: the ledger lists these frames as free: no ring and no
        // reference holds them; they belong to this socket's UMEM.
        let done = unsafe { self.fq.produce(&frames.free[start..]) };
        for k in start..start + done {
            let i = frames.index(&frames.free[k]);
            frames.owner[i] = slot as u16;
        }
        frames.free.truncate(frames.free.len() - done);
        if done > 0 && self.fq.needs_wakeup() {
            // Zero-timeout poll: the documented way to wake the fill side.
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
        done
    }

    /// Takes received frames, at most `scratch.len()` and as many as `out`
    /// has spare capacity for (it never grows); they become held by the
    /// worker, as tokens pushed onto `out`. Returns how many.
    #[inline]
    pub fn rx(
        &mut self,
        frames: &mut Frames,
        scratch: &mut [FrameDesc],
        out: &mut Vec<HeldFrame>,
    ) -> usize {
        let room = scratch.len().min(out.capacity() - out.len());
        // A multi-buffer socket keeps MAX_CHAIN of the room to finish the
        // last chain (the kernel publishes a chain at once, but a batch may
        // end inside it): the worker passes whole packets only.
        let room = if self.sg {
            room.saturating_sub(MAX_CHAIN)
        } else {
            room
        };
        // SAFETY: the RX ring of this socket only returns frames of this
        // worker's UMEM (the ones its fill ring was given).
        let mut n = unsafe { self.rx.consume(&mut scratch[..room]) };
        for d in &scratch[..n] {
            let i = frames.index(d);
            frames.owner[i] = HELD;
            out.push(HeldFrame(*d));
        }
        while self.sg && out.last().is_some_and(HeldFrame::continues) && out.len() < out.capacity()
        {
            // SAFETY: as above, one descriptor.
            if unsafe { self.rx.consume(&mut scratch[..1]) } == 0 {
                break;
            }
            let d = scratch[0];
            let i = frames.index(&d);
            frames.owner[i] = HELD;
            out.push(HeldFrame(d));
            n += 1;
        }
        n
    }

    /// Puts held frames from the front of `held` on this socket's TX ring
    /// (no kick), recording them as lent through `slot`; the tokens of those
    /// that went are consumed. Returns how many; the ones that did not fit
    /// stay in `held` for the caller to release.
    #[inline]
    pub fn tx(&mut self, slot: usize, frames: &mut Frames, held: &mut Vec<HeldFrame>) -> usize {
        let mut n = held
            .len()
            .min(self.tx_scratch.len())
            .min(self.tx.nb_free(held.len() as u32) as usize);
        // Never part of a chain: the kernel would join its head to the
        // next packet. What does not fit waits whole.
        while n > 0 && held[n - 1].continues() {
            n -= 1;
        }
        if n == 0 {
            return 0;
        }
        for (dst, h) in self.tx_scratch.iter_mut().zip(&held[..n]) {
            *dst = h.0;
        }
        // SAFETY: these are the descriptors of held frames (tokens: on no
        // ring, no reference alive), of this worker's UMEM.
        let done = unsafe { self.tx.produce(&self.tx_scratch[..n]) };
        for h in held.drain(..done) {
            let i = frames.index(&h.0);
            debug_assert_eq!(frames.owner[i], HELD);
            frames.owner[i] = slot as u16;
        }
        done
    }

    /// Kicks the kernel to transmit what is on the TX ring; returns whether
    /// the ring is now empty. In copy mode the transmit work happens in the
    /// kick itself, and one kick sends at most [`XskSocket::tx_budget`]
    /// frames (the kernel then answers EAGAIN), so this kicks again while
    /// the ring keeps draining, up to `max_kicks` kicks and until about
    /// `max_frames` have gone (the round's bound: other sockets wait
    /// meanwhile). A ring left non-empty must be kicked again later:
    /// nothing else will send those frames in busy-poll mode.
    #[inline]
    pub fn kick(&mut self, max_kicks: u32, max_frames: u32) -> io::Result<bool> {
        let size = self.ring_size;
        let mut left = size - self.tx.nb_free_exact();
        let mut sent = 0;
        for _ in 0..max_kicks {
            if left == 0 || sent >= max_frames {
                break;
            }
            self.tx.wakeup()?;
            let now = size - self.tx.nb_free_exact();
            if now >= left {
                // No progress (device busy, out of memory): retry next round.
                return Ok(false);
            }
            sent += left - now;
            left = now;
        }
        Ok(left == 0)
    }

    /// The kernel's counters for this socket (a `getsockopt`; not for the
    /// per-packet path).
    pub fn kernel_stats(&self) -> io::Result<KernelDrops> {
        let st = self.rx.fd().xdp_statistics()?;
        Ok(KernelDrops {
            rx_dropped: st.rx_dropped(),
            rx_ring_full: st.rx_ring_full(),
            fill_ring_empty: st.rx_fill_ring_empty_descs(),
            rx_invalid: st.rx_invalid_descs(),
            tx_invalid: st.tx_invalid_descs(),
        })
    }

    /// A pollfd asking for readability of this socket's RX ring.
    pub fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        }
    }
}

/// `SO_PREFER_BUSY_POLL` and `SO_BUSY_POLL_BUDGET` (Linux 5.11,
/// asm-generic/socket.h; not in the libc crate for this target yet) and
/// `SO_BUSY_POLL`.
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

fn set_sockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int we own for the whole call, and
    // its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17, include/uapi/linux/if_xdp.h; not
/// in the libc crate yet).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// The most frames a worker's round hands to one socket's kicks: what it
/// was with the kernel's default budget (8 kicks of 32), now in one kick
/// where the kernel allows it ([`raise_tx_budget`]).
pub const TX_PER_ROUND: u32 = 256;

/// Lets one copy-mode TX kick (`sendto`) send up to [`TX_PER_ROUND`]
/// frames (at most the TX ring, `ring_size`) instead of the kernel's
/// default 32 (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17; allowed range
/// 32..=ring size): one syscall where there were up to eight. Returns the
/// budget in force, or [`KERNEL_TX_BUDGET`] on a kernel without the option
/// (`ENOPROTOOPT`), which only costs more kicks.
fn raise_tx_budget(fd: RawFd, ring_size: u32) -> u32 {
    let want = TX_PER_ROUND.min(ring_size);
    if want <= KERNEL_TX_BUDGET {
        return want;
    }
    match set_sockopt_int(
        fd,
        libc::SOL_XDP,
        XDP_MAX_TX_SKB_BUDGET,
        want as libc::c_int,
    ) {
        Ok(()) => want,
        Err(e) => {
            log::debug!("XDP_MAX_TX_SKB_BUDGET {want} refused ({e}); 32 frames per TX kick");
            KERNEL_TX_BUDGET
        }
    }
}

/// Whether the bound socket `fd` runs zero-copy (`XDP_OPTIONS`).
fn bound_zero_copy(fd: RawFd) -> io::Result<bool> {
    let mut opts = libc::xdp_options { flags: 0 };
    let mut len = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `opts`, which we
    // own for the whole call, and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            (&mut opts as *mut libc::xdp_options).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
}

/// The errno name of the OS error under `e` (e.g. `EOPNOTSUPP`), or its
/// text when it has none. Hand-written for the few errnos a bind gives:
/// the errno crates name them through `Debug` only, which is not stable.
fn errno_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(code) = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return match code {
                libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
                libc::EINVAL => "EINVAL".into(),
                libc::EBUSY => "EBUSY".into(),
                libc::EPERM => "EPERM".into(),
                libc::ENOMEM => "ENOMEM".into(),
                libc::ENODEV => "ENODEV".into(),
                n => format!("errno {n}"),
            };
        }
        cur = c.source();
    }
    e.to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `with_frame_room` hands out the XDP headroom in front of the packet,
    /// moves the descriptor's start to where the closure says (back into
    /// the room, or forward), keeps the bytes where they were written, and
    /// the ledger files the frame under its own address again whatever the
    /// address it comes back with. Needs a UMEM (root, as the rest of the
    /// dataplane's tests).
    #[test]
    fn room_in_front_moves_the_descriptor_and_the_ledger_files_it_back() {
        let (umem, mut frames) = WorkerUmem::new(2048, 8, 8).expect("UMEM");
        let mut f = frames.take().expect("free frame");
        let home = f.addr();
        assert_eq!(
            home % 2048,
            256,
            "xsk-rs puts the packet after the XDP headroom"
        );
        // A 100-byte packet, as received.
        umem.with_frame(&mut f, |buf, _| {
            buf[..100].fill(0xaa);
            ((), 100)
        });
        // Grow it by 50 bytes at the front.
        let head = umem.with_frame_room(&mut f, |buf, head, len| {
            assert_eq!((head, len), (256, 100));
            assert!(buf[head..head + len].iter().all(|&b| b == 0xaa));
            buf[head - 50..head].fill(0xbb);
            (head, head - 50, len + 50)
        });
        assert_eq!(head, 256);
        assert_eq!((f.addr(), f.data_len()), (home - 50, 150));
        umem.with_frame(&mut f, |buf, len| {
            assert_eq!(len, 150);
            assert!(buf[..50].iter().all(|&b| b == 0xbb));
            assert!(buf[50..150].iter().all(|&b| b == 0xaa));
            ((), len)
        });
        // The room left in front is what the start moved back by less.
        umem.with_frame_room(&mut f, |_, head, len| {
            assert_eq!((head, len), (206, 150));
            ((), head, len)
        });
        assert_eq!((f.addr(), f.data_len()), (home - 50, 150));
        // Shrink it past 58 bytes at the front (a decapsulation).
        umem.with_frame_room(&mut f, |_, head, len| ((), head + 58, len - 58));
        assert_eq!((f.addr(), f.data_len()), (home + 8, 92));
        // A start or a length beyond the frame is clamped to it.
        umem.with_frame_room(&mut f, |buf, _, _| ((), buf.len() + 9, 7));
        assert_eq!((f.addr() % 2048, f.data_len()), (2047, 1));
        assert_eq!(f.addr() / 2048, home / 2048, "still the same frame");
        // Back to the ledger: filed under the address xsk-rs made.
        let i = frames.index(&f.0);
        frames.release(f);
        assert_eq!(frames.free.last().map(FrameDesc::addr), Some(home));
        assert_eq!(frames.owner[i], FREE);
        assert_eq!(frames.census(), (0, 0));
        let again = frames.take().expect("free frame");
        assert_eq!((again.addr(), again.data_len()), (home, 0));
        frames.release(again);
    }
}
