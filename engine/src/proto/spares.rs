//! Spare byte buffers the readers of one shard share. A frame that spans receives is reassembled in a buffer
//! of its reader; when the frame has been delivered the buffer comes back here instead of being freed, so the
//! next large frame (of any connection on the shard) starts in a buffer that already has the room, instead
//! of being allocated and regrown (4 KiB, 8 KiB, 16 KiB ..., each step a copy) every time. An idle
//! connection still holds no buffer: only the shard keeps a few.

/// Kept buffers per shard, at most.
pub const SPARES: usize = 8;
/// The smallest capacity kept: smaller buffers are cheap to allocate.
pub const SPARE_MIN: usize = 4 << 10;
/// The largest capacity kept: larger ones would pin memory for rare messages.
pub const SPARE_MAX: usize = 256 << 10;

/// The kept buffers (at most [`SPARES`], each of [`SPARE_MIN`]..=[`SPARE_MAX`] bytes).
#[derive(Default)]
pub struct Spares {
    free: Vec<Vec<u8>>,
}

impl Spares {
    /// An empty buffer, with room when one was kept (the most recently returned: its memory is warm).
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    /// Give `buf` a kept buffer when it has no room of its own yet (a message or frame starting in it).
    pub fn lend_to(&mut self, buf: &mut Vec<u8>) {
        if buf.capacity() == 0 {
            *buf = self.take();
        }
    }

    /// A buffer whose bytes are no longer needed: kept when its capacity is worth keeping and there is
    /// room, freed otherwise.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if (SPARE_MIN..=SPARE_MAX).contains(&buf.capacity()) && self.free.len() < SPARES {
            buf.clear();
            self.free.push(buf);
        }
    }

    /// Bytes held by kept buffers.
    pub fn held_bytes(&self) -> usize {
        self.free.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_useful_sizes_and_a_bounded_count() {
        let mut s = Spares::default();
        s.give(Vec::with_capacity(100));
        s.give(Vec::with_capacity(SPARE_MAX * 2));
        assert_eq!(s.held_bytes(), 0, "tiny and huge buffers are freed");
        for _ in 0..SPARES + 3 {
            s.give(vec![7u8; 16 << 10]);
        }
        assert_eq!(s.held_bytes(), SPARES * (16 << 10));
        let b = s.take();
        assert!(b.is_empty() && b.capacity() >= 16 << 10, "a kept buffer comes back empty with its room");
        for _ in 0..SPARES {
            s.take();
        }
        assert_eq!(s.take().capacity(), 0, "an exhausted pool hands out a new empty buffer");
    }
}
