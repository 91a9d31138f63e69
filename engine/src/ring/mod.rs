//! The only place that touches io_uring: ring setup, `user_data` tokens, the provided-buffer ring, multishot
//! accept and receive, sends, shutdown and close of direct descriptors, and the wake-up the shard sleeps on.
//!
//! Every buffer the kernel may read or write while an operation is in flight is owned here (send buffers,
//! socket-address buffers, the eventfd read buffer, the provided buffers), so the shard above never needs
//! `unsafe` and can never free memory the kernel still uses.

mod bufring;
mod sendbuf;
pub mod token;

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use io_uring::types::{Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{opcode, squeue, IoUring};

pub use bufring::BufRing;
pub use sendbuf::SendBuf;
pub use token::{Op, Token};

/// The provided-buffer group id used by every shard (each ring has its own group table).
const BUF_GROUP: u16 = 0;
/// The group of the large receive buffers (registered on first use, see `Ring::register_large`).
const BUF_GROUP_LARGE: u16 = 1;

/// SOCKET_URING_OP_GETSOCKOPT from include/uapi/linux/io_uring.h (since 6.7).
const SOCKET_URING_OP_GETSOCKOPT: u32 = 2;
/// SOCKET_URING_OP_SETSOCKOPT.
const SOCKET_URING_OP_SETSOCKOPT: u32 = 3;

/// RLIMIT_NOFILE soft limit: the most slots a ring's registered file table can have.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// A wake-up other threads use to rouse a sleeping shard: an eventfd the shard keeps a read armed on.
/// `pending` collapses many wakes between two reads into one write(2).
#[derive(Clone)]
pub struct Waker {
    inner: Arc<WakerInner>,
}

struct WakerInner {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory arguments; a non-negative result is a fresh fd we now own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a valid, open descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { inner: Arc::new(WakerInner { fd, pending: AtomicBool::new(false) }) })
    }

    pub fn wake(&self) {
        if !self.inner.pending.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(self.inner.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Called by the shard when the armed read completed, before it drains its inbox.
    pub fn reset(&self) {
        self.inner.pending.store(false, Ordering::Release);
    }

    fn raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }
}

/// A socket option value the ring keeps alive; see [`Ring::sockopt_value`].
#[derive(Clone, Copy, Debug)]
pub struct SockoptValue(usize);

/// A completion, copied out of the completion queue so the shard can act on the ring while handling it.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    pub fn more(&self) -> bool {
        io_uring::cqueue::more(self.flags)
    }
    /// The kernel keeps filling this completion's buffer (incremental consumption): do not recycle it yet.
    pub fn buffer_more(&self) -> bool {
        io_uring::cqueue::buffer_more(self.flags)
    }
    pub fn buffer_id(&self) -> Option<u16> {
        io_uring::cqueue::buffer_select(self.flags)
    }
}

/// Ring sizing, and its place among the rings of one thread.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    pub entries: u32,
    /// Registered file table size.
    pub slots: u32,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    /// This ring's place among the thread's `stride` rings. The thread numbers its slots across its rings
    /// in turn: descriptor `i` of ring `r` is the thread's slot `i * stride + r`. Every method takes the
    /// thread's slot numbers and every token carries them; the ring divides by `stride` for its own table.
    /// (In turn rather than in blocks, so that tables indexed by slot above the ring grow with the
    /// connections: the kernel hands out each ring's lowest free descriptors, so the thread's highest slot
    /// in use stays near the number open instead of jumping to the last ring's block.)
    pub position: u32,
    pub stride: u32,
    /// A second ring of the thread: it signals `notify` (an eventfd the thread's first ring reads) whenever
    /// it posts completions, so the thread can sleep on its first ring alone. It runs its task work the
    /// default way (a signal wakes the sleeping thread), not deferred: nobody waits on it directly.
    pub child: bool,
}

/// Socket-address storage for one slot: big enough for sockaddr_in6; read only after its completion.
type AddrBuf = MaybeUninit<libc::sockaddr_in6>;

/// A send in flight: the whole buffer, where the kernel was asked to start, and for a `sendmsg` the header
/// and iovecs the kernel reads (boxed so their addresses do not move with the table).
struct InFlightSend {
    buf: SendBuf,
    offset: usize,
    /// Read by the kernel, never by us: kept alive until the completion.
    _msg: Option<Box<MsgParts>>,
}

struct MsgParts {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
}

/// Pieces per sendmsg (the kernel's UIO_MAXIOV is 1024); a longer queue goes out in several sends.
const MAX_IOV: usize = 1024;

/// Register `bufs` as provided-buffer group `group` of `uring`, incrementally consumed where the kernel has it
/// (6.12+): small receives (pongs, upgrade requests) share a buffer instead of taking one each, so a burst
/// does not run the ring dry.
///
/// # Safety
/// `bufs`' memory must stay mapped for as long as `uring` can use the group (the caller keeps a
/// [`bufring::KeepAlive`] in the ring, dropped after it).
unsafe fn register_buf_ring(uring: &IoUring, bufs: &BufRing, group: u16) -> io::Result<()> {
    let submitter = uring.submitter();
    let (addr, entries) = (bufs.ring_addr(), bufs.entries());
    // SAFETY: as the caller promises.
    let incremental = unsafe {
        submitter.register_buf_ring_with_flags(addr, entries, group, io_uring::types::IOU_PBUF_RING_INC as u16)
    };
    if incremental.is_err() {
        // SAFETY: as above.
        unsafe { submitter.register_buf_ring_with_flags(addr, entries, group, 0)? };
    }
    Ok(())
}

pub struct Ring {
    // Field order matters: the ring is dropped (and its operations torn down) before the memory they use.
    uring: IoUring,
    /// The provided buffers' memory, kept mapped until the ring (dropped first) can no longer write to it.
    _buffers: bufring::KeepAlive,
    /// The same for the large receive buffers, once registered.
    _large: Option<bufring::KeepAlive>,
    sends: Vec<Option<InFlightSend>>,
    addrs: Vec<AddrBuf>,
    wake_buf: Box<u64>,
    /// Option values for `set_sockopt`: boxed so that their addresses survive the Vec growing.
    #[allow(clippy::vec_box)]
    sockopt_values: Vec<Box<i32>>,
    /// Completions reaped early because the submission queue was full (see `push`).
    backlog: Vec<Completion>,
    /// Whether DEFER_TASKRUN was accepted (otherwise COOP_TASKRUN or nothing).
    pub defer_taskrun: bool,
    /// This ring's place among the thread's rings, and their number (see `RingConfig::position`).
    position: u32,
    stride: u32,
    /// Read buffer for the children's eventfd (first ring only).
    child_wake_buf: Box<u64>,
    /// Scratch for building iovecs.
    pieces: Vec<(*const u8, usize)>,
    /// Descriptors being installed into the table (`install_fd`), by tag: the kernel reads each and writes
    /// the table index it chose back into it, so each is boxed to stay put until the completion.
    #[allow(clippy::vec_box)]
    installs: Vec<Option<Box<i32>>>,
}

impl Ring {
    /// Must be called on the thread that will use the ring (SINGLE_ISSUER). Returns the ring and its provided
    /// receive buffers, kept apart so that a received buffer can be read while the ring takes new work; the
    /// owner must drop the `Ring` before the `BufRing` (the kernel writes into the buffers until the ring is
    /// gone).
    pub fn new(cfg: RingConfig) -> io::Result<(Ring, BufRing)> {
        // Room for a completion from every connection at once (a keepalive round, a broadcast) plus the
        // operations in flight, so bursts rarely spill into the kernel's overflow list. 16 bytes each.
        let cq = cfg.entries.saturating_mul(4).max(cfg.slots.saturating_mul(2)).clamp(1024, 65536);
        let (uring, defer_taskrun) = if cfg.child {
            match IoUring::builder().setup_single_issuer().setup_cqsize(cq).setup_submit_all().build(cfg.entries) {
                Ok(r) => (r, false),
                Err(_) => (IoUring::builder().setup_cqsize(cq).build(cfg.entries)?, false),
            }
        } else {
            match IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_cqsize(cq)
                .setup_submit_all()
                .build(cfg.entries)
            {
                Ok(r) => (r, true),
                Err(_) => match IoUring::builder().setup_coop_taskrun().setup_cqsize(cq).build(cfg.entries) {
                    Ok(r) => (r, false),
                    Err(_) => (IoUring::builder().setup_cqsize(cq).build(cfg.entries)?, false),
                },
            }
        };
        uring
            .submitter()
            .register_files_sparse(cfg.slots)
            .map_err(|e| io::Error::new(e.kind(), format!("registering a file table of {} slots: {e}", cfg.slots)))?;
        let bufs = BufRing::new(cfg.recv_buffers, cfg.recv_buffer_size)?;
        // SAFETY: the ring memory lives in `bufs`' mappings; the Ring keeps a reference to them (`_buffers`,
        // dropped after `uring`), so they outlive every operation whoever drops the BufRing first.
        unsafe { register_buf_ring(&uring, &bufs, BUF_GROUP)? };
        let slots = cfg.slots as usize;
        let mut sends = Vec::with_capacity(slots);
        sends.resize_with(slots, || None);
        let _buffers = bufs.keep_alive();
        let ring = Ring {
            uring,
            _buffers,
            _large: None,
            sends,
            addrs: vec![MaybeUninit::zeroed(); slots],
            wake_buf: Box::new(0),
            sockopt_values: Vec::new(),
            backlog: Vec::new(),
            defer_taskrun,
            position: cfg.position,
            stride: cfg.stride.max(1),
            child_wake_buf: Box::new(0),
            pieces: Vec::new(),
            installs: Vec::new(),
        };
        Ok((ring, bufs))
    }

    /// The ring's own descriptor index for the thread's `slot`.
    fn fx(&self, slot: u32) -> Fixed {
        Fixed(slot / self.stride)
    }

    fn index(&self, slot: u32) -> usize {
        (slot / self.stride) as usize
    }

    /// The thread's slot number for this ring's descriptor `index` (an accept's or socket's result).
    pub fn slot_of(&self, index: u32) -> u32 {
        index * self.stride + self.position
    }

    /// Submissions queued and not yet handed to the kernel.
    pub fn has_pending(&mut self) -> bool {
        !self.uring.submission().is_empty()
    }

    /// Have the kernel signal `eventfd` whenever this ring posts completions (a child ring).
    pub fn register_eventfd(&mut self, eventfd: &Waker) -> io::Result<()> {
        self.uring.submitter().register_eventfd(eventfd.raw_fd())
    }

    /// Arm a read on the children's eventfd (token `Wake` with slot 1).
    pub fn arm_child_wake(&mut self, eventfd: &Waker) {
        let ptr = (&mut *self.child_wake_buf) as *mut u64 as *mut u8;
        let e = opcode::Read::new(Fd(eventfd.raw_fd()), ptr, 8).build().user_data(Token::new(Op::Wake, 1, 0).encode());
        self.push(e);
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built in this module points only at memory this Ring owns (send buffers,
            // address buffers, the wake buffer, socket option values, descriptors being installed) or at statics
            // or at nothing; that memory stays put until the completion.
            if unsafe { self.uring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Submission queue full: hand what we have to the kernel. When the completion queue is full too,
            // the kernel refuses new submissions (EBUSY) until completions are reaped, so move them to the
            // backlog first; otherwise this loop would spin forever in the middle of a burst.
            self.reap_to_backlog();
            let _ = self.uring.submit();
        }
    }

    fn reap_to_backlog(&mut self) {
        let backlog = &mut self.backlog;
        for cqe in self.uring.completion() {
            backlog.push(Completion { user_data: cqe.user_data(), result: cqe.result(), flags: cqe.flags() });
        }
    }

    /// Multishot accept on `listener` into auto-allocated direct descriptors.
    pub fn accept_multi(&mut self, listener: RawFd) {
        let e = opcode::AcceptMulti::new(Fd(listener))
            // No SOCK_CLOEXEC: direct descriptors are not in the fd table, and the kernel refuses the flag (EINVAL).
            .allocate_file_index(true)
            .build()
            .user_data(Token::new(Op::Accept, 0, 0).encode());
        self.push(e);
    }

    /// Cancel the multishot accept (on shutdown).
    pub fn cancel_accept(&mut self) {
        let e = opcode::AsyncCancel::new(Token::new(Op::Accept, 0, 0).encode())
            .build()
            .user_data(Token::new(Op::Ignore, 0, 0).encode());
        self.push(e);
    }

    /// Multishot receive on a direct descriptor into the shared provided buffers: the large ones (which
    /// must be registered, [`Ring::register_large`]) with `large`. Its completions carry [`Op::Recv`] or
    /// [`Op::RecvLarge`], so each buffer goes back to the group it came from.
    pub fn recv_multi(&mut self, slot: u32, generation: u32, large: bool) {
        let (group, op) = if large { (BUF_GROUP_LARGE, Op::RecvLarge) } else { (BUF_GROUP, Op::Recv) };
        let e =
            opcode::RecvMulti::new(self.fx(slot), group).build().user_data(Token::new(op, slot, generation).encode());
        self.push(e);
    }

    /// Register `bufs` as this ring's large receive buffers (once): incrementally consumed where the kernel
    /// can, so a small receive into them takes only its bytes.
    pub fn register_large(&mut self, bufs: &BufRing) -> io::Result<()> {
        // SAFETY: the ring memory lives in `bufs`' mappings, and the Ring keeps a reference to them
        // (`_large`, dropped after `uring`), so they outlive every operation.
        unsafe { register_buf_ring(&self.uring, bufs, BUF_GROUP_LARGE)? };
        self._large = Some(bufs.keep_alive());
        Ok(())
    }

    /// Send `buf` from byte `offset` on a direct descriptor: one `send` when it holds only the connection's
    /// own bytes, one `sendmsg` over its pieces when shared frames are spliced in. The ring keeps `buf` until
    /// [`Ring::take_send`].
    pub fn send(&mut self, slot: u32, generation: u32, buf: SendBuf, offset: usize) {
        let idx = self.index(slot);
        debug_assert!(self.sends[idx].is_none(), "one send in flight per slot");
        let token = Token::new(Op::Send, slot, generation).encode();
        if !buf.has_shared() {
            let bytes = buf.own_bytes();
            let len = bytes.len().saturating_sub(offset).min(u32::MAX as usize) as u32;
            // The Vec's heap block does not move when the SendBuf is moved into `sends`.
            let ptr = bytes[offset.min(bytes.len())..].as_ptr();
            self.sends[idx] = Some(InFlightSend { buf, offset, _msg: None });
            let e = opcode::Send::new(self.fx(slot), ptr, len).flags(libc::MSG_NOSIGNAL).build().user_data(token);
            self.push(e);
            return;
        }
        let mut pieces = std::mem::take(&mut self.pieces);
        buf.pieces(offset, MAX_IOV, &mut pieces);
        if let [(ptr, len)] = pieces[..] {
            // One piece (a shared frame alone, the common fan-out case): a plain `send`, no header to build.
            self.pieces = pieces;
            self.sends[idx] = Some(InFlightSend { buf, offset, _msg: None });
            let len = len.min(u32::MAX as usize) as u32;
            let e = opcode::Send::new(self.fx(slot), ptr, len).flags(libc::MSG_NOSIGNAL).build().user_data(token);
            self.push(e);
            return;
        }
        let iov: Vec<libc::iovec> =
            pieces.iter().map(|&(p, n)| libc::iovec { iov_base: p as *mut libc::c_void, iov_len: n }).collect();
        self.pieces = pieces;
        // SAFETY: msghdr is plain data; all-zero is a valid empty header (no name, no control data).
        let mut parts = Box::new(MsgParts { hdr: unsafe { std::mem::zeroed() }, iov });
        parts.hdr.msg_iov = parts.iov.as_mut_ptr();
        parts.hdr.msg_iovlen = parts.iov.len();
        let hdr = &parts.hdr as *const libc::msghdr;
        // The iovecs point into `buf`'s heap blocks (its Vec and the shared Arcs), which stay put while `buf`
        // sits in `sends`; the header and iovec array are boxed, so they do not move either.
        self.sends[idx] = Some(InFlightSend { buf, offset, _msg: Some(parts) });
        let e = opcode::SendMsg::new(self.fx(slot), hdr).flags(libc::MSG_NOSIGNAL as u32).build().user_data(token);
        self.push(e);
    }

    /// The buffer of the send that just completed on `slot`, and the offset it was sent from.
    pub fn take_send(&mut self, slot: u32) -> Option<(SendBuf, usize)> {
        let idx = self.index(slot);
        self.sends.get_mut(idx)?.take().map(|s| (s.buf, s.offset))
    }

    /// Cancel the operation `op` of `slot`'s current occupant, found by its token: the kernel looks the
    /// request up by `user_data` (a hash lookup for a polled request) and ends it inline. Cancelling by
    /// descriptor instead walks every pending request of the ring per call, which is quadratic when a
    /// hundred thousand connections end at once. A request that already finished is simply not found.
    pub fn cancel_op(&mut self, op: Op, slot: u32, generation: u32) {
        let e = opcode::AsyncCancel::new(Token::new(op, slot, generation).encode())
            .build()
            .user_data(Token::new(Op::Ignore, slot, 0).encode());
        self.push(e);
    }

    /// Close a direct descriptor; its table slot is free for the kernel to hand out again afterwards.
    pub fn close(&mut self, slot: u32, generation: u32) {
        let e = opcode::Close::new(self.fx(slot)).build().user_data(Token::new(Op::Close, slot, generation).encode());
        self.push(e);
    }

    /// Ask for the peer address of an accepted socket (multishot accept cannot report it):
    /// getsockopt(SOL_SOCKET, SO_PEERNAME) through the socket uring_cmd, no syscall.
    pub fn peer_name(&mut self, slot: u32, generation: u32, ipv6: bool) {
        let optlen: u32 = if ipv6 {
            std::mem::size_of::<libc::sockaddr_in6>() as u32
        } else {
            std::mem::size_of::<libc::sockaddr_in>() as u32
        };
        let idx = self.index(slot);
        let optval = self.addrs[idx].as_mut_ptr() as u64;
        let e =
            self.sockopt_entry(slot, SOCKET_URING_OP_GETSOCKOPT, libc::SOL_SOCKET, libc::SO_PEERNAME, optval, optlen);
        self.push(e.user_data(Token::new(Op::PeerName, slot, generation).encode()));
    }

    /// The address in the slot's buffer: the peer after a completed [`Ring::peer_name`] or an issued
    /// [`Ring::connect`] (the shard keeps no copy: 32 bytes per connection). Call only when no operation that
    /// writes the buffer is in flight; the family decides how much of it is read.
    pub fn stored_addr(&self, slot: u32) -> Option<SocketAddr> {
        let buf = self.addrs.get(self.index(slot))?;
        // SAFETY: no operation writes the buffer now (the caller's contract); it was zero-initialised, so
        // every byte is initialised whatever the kernel or `store_addr` wrote.
        let raw = unsafe { buf.assume_init_ref() };
        sockaddr_to_std(raw, std::mem::size_of::<libc::sockaddr_in6>())
    }

    fn sockopt_entry(
        &self,
        slot: u32,
        cmd_op: u32,
        level: i32,
        optname: i32,
        optval: u64,
        optlen: u32,
    ) -> squeue::Entry {
        let mut cmd = [0u8; 16];
        cmd[..8].copy_from_slice(&optval.to_ne_bytes());
        let level_optname = (level as u32 as u64) | ((optname as u32 as u64) << 32);
        let entry = opcode::UringCmd16::new(self.fx(slot), cmd_op).cmd(cmd).addr(Some(level_optname)).build();
        // The builder has no setter for `optlen`, which shares bytes 44..48 of the SQE with `file_index`.
        // SAFETY: squeue::Entry is a #[repr(C)] wrapper around the 64-byte, plain-data io_uring_sqe, so it can be
        // viewed as bytes and back; only the optlen field is changed.
        unsafe {
            let mut bytes: [u8; 64] = std::mem::transmute(entry);
            bytes[44..48].copy_from_slice(&optlen.to_ne_bytes());
            std::mem::transmute::<[u8; 64], squeue::Entry>(bytes)
        }
    }

    /// Turn a boolean socket option on for a direct descriptor (for sockets we create ourselves; accepted
    /// ones inherit the listener's options). With `link`, the next submission runs only if this succeeds.
    pub fn enable_sockopt(&mut self, slot: u32, generation: u32, level: i32, optname: i32, link: bool) {
        /// The kernel reads the option value when it issues the operation; a static never moves or changes.
        static ONE: i32 = 1;
        self.push_setsockopt(slot, generation, level, optname, &ONE as *const i32 as u64, link);
    }

    /// Set an integer socket option on a direct descriptor to `value`, one of the values registered with
    /// [`Ring::sockopt_value`] (they live as long as the ring). With `link`, as for `enable_sockopt`.
    pub fn set_sockopt(
        &mut self,
        slot: u32,
        generation: u32,
        level: i32,
        optname: i32,
        value: SockoptValue,
        link: bool,
    ) {
        // The Box is owned by this Ring and never freed or changed before the ring is dropped.
        let ptr = &*self.sockopt_values[value.0] as *const i32 as u64;
        self.push_setsockopt(slot, generation, level, optname, ptr, link);
    }

    /// Keeps `value` at a fixed address for the life of the ring (the kernel reads a linked setsockopt's value
    /// only when the operation before it completes) and returns a handle for [`Ring::set_sockopt`].
    pub fn sockopt_value(&mut self, value: i32) -> SockoptValue {
        if let Some(i) = self.sockopt_values.iter().position(|v| **v == value) {
            return SockoptValue(i);
        }
        self.sockopt_values.push(Box::new(value));
        SockoptValue(self.sockopt_values.len() - 1)
    }

    /// `value_ptr` points at an i32 that outlives the ring (a static, or one of `sockopt_values`).
    fn push_setsockopt(&mut self, slot: u32, generation: u32, level: i32, optname: i32, value_ptr: u64, link: bool) {
        let ptr = value_ptr;
        let e = self.sockopt_entry(slot, SOCKET_URING_OP_SETSOCKOPT, level, optname, ptr, 4);
        let mut e = e.user_data(Token::new(Op::Ignore, slot, generation).encode());
        if link {
            e = e.flags(squeue::Flags::IO_LINK);
        }
        self.push(e);
    }

    /// Create a TCP socket straight into a free direct-descriptor slot (result = the slot).
    pub fn socket(&mut self, ipv6: bool, tag: u32) {
        let domain = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        let e = opcode::Socket::new(domain, libc::SOCK_STREAM, 0)
            .file_index(Some(io_uring::types::DestinationSlot::auto_target()))
            .build()
            .user_data(Token::new(Op::Socket, tag, 0).encode());
        self.push(e);
    }

    /// Install the process descriptor `fd` into a free slot of the table (IORING_OP_FILES_UPDATE with
    /// IORING_FILE_INDEX_ALLOC), for an adopted socket. The table takes its own reference to the file, so the
    /// caller closes `fd` once this completes. Completion: `Op::Install` with `tag`; then
    /// [`Ring::installed_slot`] tells the slot.
    pub fn install_fd(&mut self, fd: RawFd, tag: u32) {
        let idx = tag as usize;
        if self.installs.len() <= idx {
            self.installs.resize_with(idx + 1, || None);
        }
        let cell = self.installs[idx].insert(Box::new(fd));
        let ptr = &mut **cell as *mut i32 as *const RawFd;
        // The kernel's update offset is 32 bits: -1 is IORING_FILE_INDEX_ALLOC.
        let e = opcode::FilesUpdate::new(ptr, 1).offset(-1).build().user_data(Token::new(Op::Install, tag, 0).encode());
        self.push(e);
    }

    /// After an `Op::Install` completion for `tag` with a positive result: the thread's slot the descriptor
    /// went into. Forgets the tag either way.
    pub fn installed_slot(&mut self, tag: u32, result: i32) -> Option<u32> {
        let cell = self.installs.get_mut(tag as usize)?.take()?;
        (result > 0 && *cell >= 0).then(|| self.slot_of(*cell as u32))
    }

    /// Keep `addr` as the slot's peer address (an adopted socket, whose peer the caller already knows), for
    /// [`Ring::stored_addr`].
    pub fn set_peer(&mut self, slot: u32, addr: SocketAddr) {
        self.store_addr(slot, addr);
    }

    /// bind(2) a direct descriptor; the address is kept in the slot's buffer until the completion.
    pub fn bind(&mut self, slot: u32, generation: u32, addr: SocketAddr) {
        let len = self.store_addr(slot, addr);
        let ptr = self.addrs[self.index(slot)].as_ptr() as *const libc::sockaddr;
        let e = opcode::Bind::new(self.fx(slot), ptr, len)
            .build()
            .user_data(Token::new(Op::Bind, slot, generation).encode());
        self.push(e);
    }

    /// connect(2) a direct descriptor; the address is kept in the slot's buffer until the completion.
    pub fn connect(&mut self, slot: u32, generation: u32, addr: SocketAddr) {
        let len = self.store_addr(slot, addr);
        let ptr = self.addrs[self.index(slot)].as_ptr() as *const libc::sockaddr;
        let e = opcode::Connect::new(self.fx(slot), ptr, len)
            .build()
            .user_data(Token::new(Op::Connect, slot, generation).encode());
        self.push(e);
    }

    fn store_addr(&mut self, slot: u32, addr: SocketAddr) -> libc::socklen_t {
        let idx = self.index(slot);
        let buf = self.addrs[idx].as_mut_ptr();
        // SAFETY: the buffer is ours and not in use by an in-flight operation (one address op per slot at a
        // time); sockaddr_in fits in sockaddr_in6 and both are plain data.
        unsafe {
            std::ptr::write_bytes(buf, 0, 1);
            match addr {
                SocketAddr::V4(a) => {
                    let sin = buf as *mut libc::sockaddr_in;
                    (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                    (*sin).sin_port = a.port().to_be();
                    (*sin).sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
                }
                SocketAddr::V6(a) => {
                    (*buf).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    (*buf).sin6_port = a.port().to_be();
                    (*buf).sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                    (*buf).sin6_flowinfo = a.flowinfo();
                    (*buf).sin6_scope_id = a.scope_id();
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
                }
            }
        }
    }

    /// Arm a read on the waker's eventfd; it completes when another thread calls [`Waker::wake`].
    pub fn arm_wake(&mut self, waker: &Waker) {
        let ptr = (&mut *self.wake_buf) as *mut u64 as *mut u8;
        let e = opcode::Read::new(Fd(waker.raw_fd()), ptr, 8).build().user_data(Token::new(Op::Wake, 0, 0).encode());
        self.push(e);
    }

    /// Submit everything queued and wait for at least one completion or `timeout`.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submit without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        match self.uring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Move every available completion into `out`, oldest first (those reaped while submitting come first).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.backlog);
        for cqe in self.uring.completion() {
            out.push(Completion { user_data: cqe.user_data(), result: cqe.result(), flags: cqe.flags() });
        }
    }
}

/// Reads a kernel sockaddr of `len` bytes.
fn sockaddr_to_std(raw: &libc::sockaddr_in6, len: usize) -> Option<SocketAddr> {
    match raw.sin6_family as i32 {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the bytes hold a sockaddr_in, which is smaller than sockaddr_in6 and has
            // no stricter alignment.
            let sin = unsafe { &*(raw as *const libc::sockaddr_in6 as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => Some(SocketAddr::V6(SocketAddrV6::new(
            raw.sin6_addr.s6_addr.into(),
            u16::from_be(raw.sin6_port),
            raw.sin6_flowinfo,
            raw.sin6_scope_id,
        ))),
        _ => None,
    }
}

/// A random u64 from getrandom(2) (seeds for masking keys and handshake nonces); the clock if that fails.
pub fn random_u64() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into the 8-byte buffer.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        u64::from_ne_bytes(seed)
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    }
}

/// Errno text for a negative completion result.
pub fn errno_str(result: i32) -> String {
    io::Error::from_raw_os_error(-result).to_string()
}
