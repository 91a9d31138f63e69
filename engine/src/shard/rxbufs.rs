//! The shard's provided receive buffers: per ring, the small pool every connection receives into, and the
//! large pool a connection is moved to once it sends frames larger than a small buffer.
//!
//! Why two: a 16 KiB frame spread over four 4 KiB buffers arrives as four completions and is copied into
//! the reader's reassembly buffer before the handler sees it; in one 64 KiB buffer it usually arrives whole
//! and reaches the handler in place. Making every buffer large instead multiplies the memory the buffers pin
//! (every one ends up resident: 256 x 32 KiB is 8 MiB per ring against 1 MiB, on each ring of a many-ring
//! thread); its effect on small messages was within the noise (BENCHMARKS.md, section 6). So a
//! plaintext connection starts on the small pool, and the first time more than one small buffer's worth of
//! a frame of it has arrived before the frame's end, the shard cancels its receive and re-arms it on the
//! large pool for the rest of its life.
//! The large pool of a ring is allocated and registered on first use; a shard with no large frames has none.
//! Each completion names its pool through its operation (`Op::Recv` or `Op::RecvLarge`), so a buffer always
//! goes back where it came from, also for a completion that outlived its connection.

use crate::ring::{BufRing, Ring};

pub(super) struct RecvBufs {
    small: Vec<BufRing>,
    large: Vec<Option<BufRing>>,
    /// Size and count of the large buffers; size 0: no large pool.
    large_size: u32,
    large_count: u16,
}

impl RecvBufs {
    pub fn new(small: Vec<BufRing>, large_size: u32, large_count: u16) -> RecvBufs {
        let large = small.iter().map(|_| None).collect();
        RecvBufs { small, large, large_size, large_count }
    }

    /// Ring `r`'s small pool, or its large one (which exists once a connection of the ring was moved to it:
    /// only such a connection's completions ask for it).
    pub fn pool(&mut self, r: usize, large: bool) -> &mut BufRing {
        match (large, self.large[r].as_mut()) {
            (true, Some(b)) => b,
            (_, _) => {
                debug_assert!(!large, "a large-pool completion on a ring without one");
                &mut self.small[r]
            }
        }
    }

    /// Whether a connection holding `assembling` bytes of an unfinished frame after a receive should move to
    /// the large pool: more than one small buffer's worth (frames of about two small buffers and more).
    pub fn wants_large(&self, assembling: usize) -> bool {
        self.large_size != 0 && assembling > self.small.first().map_or(usize::MAX, |b| b.buf_size() as usize)
    }

    /// Ring `r`'s large pool, allocated and registered with `ring` on first use. False if that failed (the
    /// connection stays on the small pool; logged once, then the shard does not try again).
    pub fn ensure_large(&mut self, r: usize, ring: &mut Ring) -> bool {
        if self.large[r].is_some() {
            return true;
        }
        if self.large_size == 0 {
            return false;
        }
        let made = BufRing::new(self.large_count, self.large_size).and_then(|b| ring.register_large(&b).map(|()| b));
        match made {
            Ok(b) => {
                self.large[r] = Some(b);
                true
            }
            Err(e) => {
                tracing::warn!(ring = r, error = %e, "large receive buffers unavailable; large frames are reassembled");
                self.large_size = 0;
                false
            }
        }
    }
}
