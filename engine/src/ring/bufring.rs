//! The provided-buffer ring: receive buffers the kernel picks from when a multishot receive has data, so an
//! idle connection holds no user-space read buffer at all.

use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// Anonymous, page-aligned memory from mmap (the kernel requires the ring itself to be page aligned).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Holds the mappings alive for as long as the ring that uses them.
pub struct KeepAlive {
    _ring: Rc<Mapping>,
    _bufs: Rc<Mapping>,
}

pub struct BufRing {
    ring: Rc<Mapping>,
    bufs: Rc<Mapping>,
    entries: u16,
    buf_size: u32,
    /// Our copy of the tail; published to the kernel by [`BufRing::publish`].
    tail: u16,
    published: u16,
    /// Per buffer: how far completions have consumed it. With incremental consumption (IOU_PBUF_RING_INC) the
    /// kernel fills one buffer from several receives, each after the last; a completion's bytes start here.
    offsets: Vec<u32>,
}

impl BufRing {
    /// What the kernel accepts as a buffer ring's size: a power of two up to 32768 (`setting` names the
    /// config field in the error).
    pub fn check_entries(entries: u16, setting: &str) -> io::Result<()> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{setting} must be a power of two up to 32768, got {entries}"),
            ));
        }
        Ok(())
    }

    pub fn new(entries: u16, buf_size: u32) -> io::Result<BufRing> {
        Self::check_entries(entries, "recv_buffers")?;
        if buf_size < 256 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "recv_buffer_size must be at least 256"));
        }
        let ring = Rc::new(Mapping::new(entries as usize * std::mem::size_of::<BufRingEntry>())?);
        let bufs = Rc::new(Mapping::new(entries as usize * buf_size as usize)?);
        let mut br =
            BufRing { ring, bufs, entries, buf_size, tail: 0, published: 0, offsets: vec![0; entries as usize] };
        for bid in 0..entries {
            br.put(bid);
        }
        br.publish();
        Ok(br)
    }

    /// A reference that keeps the memory mapped (for the ring the buffers are registered with).
    pub fn keep_alive(&self) -> KeepAlive {
        KeepAlive { _ring: self.ring.clone(), _bufs: self.bufs.clone() }
    }

    pub fn ring_addr(&self) -> u64 {
        self.ring.ptr as u64
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Bytes in each buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Put buffer `bid` back and make it visible to the kernel at once (a release store: cheap, and a ring
    /// that is handling a burst gets its buffers back while the burst lasts).
    fn recycle(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    /// Put buffer `bid` back at the tail (visible to the kernel after the next publish).
    fn put(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: idx < entries, so the entry lies inside the ring mapping; the kernel only reads entries
        // between its head and the published tail, and this one is past the published tail.
        unsafe {
            let entry = &mut *(self.ring.ptr as *mut BufRingEntry).add(idx);
            entry.set_addr(self.bufs.ptr.add(bid as usize * self.buf_size as usize) as u64);
            entry.set_len(self.buf_size);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make recycled buffers visible to the kernel.
    fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail field overlays the `resv` of entry 0 inside the ring mapping; the kernel reads it
        // with acquire semantics, so a release store orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr as *const BufRingEntry) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }

    /// The `len` bytes a completion delivered in buffer `bid` (after what earlier completions of the same buffer
    /// delivered). Call once per completion that carries the buffer, then [`BufRing::release`].
    pub fn take(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(bid < self.entries, "buffer id out of range");
        let start = (self.offsets[bid as usize] as usize).min(self.buf_size as usize);
        let len = len.min(self.buf_size as usize - start);
        self.offsets[bid as usize] = (start + len) as u32;
        // SAFETY: bid < entries and start + len <= buf_size, so the range lies inside the buffer mapping; the
        // kernel delivered these bytes with the completion and writes only past them (or nothing) until the
        // buffer is recycled; &mut self makes the slice unique.
        unsafe {
            let base = self.bufs.ptr.add(bid as usize * self.buf_size as usize + start);
            std::slice::from_raw_parts_mut(base, len)
        }
    }

    /// A completion that carried buffer `bid` is handled: unless the kernel keeps filling it (`more`, the CQE's
    /// BUF_MORE flag), it goes back to the ring.
    pub fn release(&mut self, bid: u16, more: bool) {
        if more || bid >= self.entries {
            return;
        }
        self.offsets[bid as usize] = 0;
        self.recycle(bid);
    }
}
