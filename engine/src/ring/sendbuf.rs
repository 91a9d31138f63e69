//! What a connection has queued for the socket: its own encoded frames in one buffer, with frames shared by
//! many connections (a topic publication, one prepared message sent to many) spliced in by reference.
//!
//! A connection that only ever gets its own frames (an echo) holds one `Vec<u8>` and nothing else; the splice
//! list exists only while a shared frame is queued. The ring sends a `SendBuf` with one `send` when nothing is
//! spliced and with one `sendmsg` over an iovec per piece otherwise, so a shared frame is never copied per
//! connection.

use std::sync::Arc;

/// Frames queued for one connection, in order.
#[derive(Default, Debug)]
pub struct SendBuf {
    bytes: Vec<u8>,
    spliced: Option<Box<Spliced>>,
}

#[derive(Default, Debug)]
struct Spliced {
    /// (offset in `bytes` where the frame goes, the frame), offsets non-decreasing.
    frames: Vec<(usize, Arc<[u8]>)>,
    /// Sum of the frames' lengths.
    len: usize,
}

impl SendBuf {
    /// A buffer whose own-bytes part reuses `bytes` (cleared).
    pub fn with_bytes(mut bytes: Vec<u8>) -> SendBuf {
        bytes.clear();
        SendBuf { bytes, spliced: None }
    }

    /// A buffer that sends `bytes` as they are.
    pub fn from_vec(bytes: Vec<u8>) -> SendBuf {
        SendBuf { bytes, spliced: None }
    }

    /// Append every queued byte, in order, to `out` (TLS encrypts the queue as one piece).
    pub(crate) fn append_to(&self, out: &mut Vec<u8>) {
        let mut from = 0;
        if let Some(s) = &self.spliced {
            for (at, frame) in &s.frames {
                out.extend_from_slice(&self.bytes[from..*at]);
                out.extend_from_slice(frame);
                from = *at;
            }
        }
        out.extend_from_slice(&self.bytes[from..]);
    }

    /// Bytes queued in all.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.spliced.as_ref().map_or(0, |s| s.len)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.spliced.is_none()
    }

    /// Where the connection encodes its own frames (appended after everything queued so far).
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Heap capacity of the own-bytes buffer (0: it holds none).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Queue a frame shared with other connections, after everything queued so far.
    pub fn push_shared(&mut self, frame: Arc<[u8]>) {
        let s = self.spliced.get_or_insert_with(Default::default);
        s.len += frame.len();
        s.frames.push((self.bytes.len(), frame));
    }

    /// Drop everything queued; keeps the own-bytes allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spliced = None;
    }

    /// Take the own-bytes allocation out (for a pool), leaving an empty buffer.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        self.spliced = None;
        std::mem::take(&mut self.bytes)
    }

    /// The own bytes (all of it when nothing is spliced in).
    pub(crate) fn own_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether anything is spliced in (then the ring needs sendmsg).
    pub(crate) fn has_shared(&self) -> bool {
        self.spliced.is_some()
    }

    /// The pieces in order as (pointer, length), skipping the first `offset` bytes, at most `max` pieces.
    pub(crate) fn pieces(&self, mut offset: usize, max: usize, out: &mut Vec<(*const u8, usize)>) {
        out.clear();
        let mut push = |slice: &[u8], out: &mut Vec<(*const u8, usize)>| {
            if offset >= slice.len() {
                offset -= slice.len();
                return;
            }
            let rest = &slice[offset..];
            offset = 0;
            if out.len() < max {
                out.push((rest.as_ptr(), rest.len()));
            }
        };
        let mut from = 0;
        if let Some(s) = &self.spliced {
            for (at, frame) in &s.frames {
                push(&self.bytes[from..*at], out);
                push(frame, out);
                from = *at;
            }
        }
        push(&self.bytes[from..], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(buf: &SendBuf, offset: usize, max: usize) -> Vec<u8> {
        let mut pieces = Vec::new();
        buf.pieces(offset, max, &mut pieces);
        // SAFETY (test): every piece points into `buf`, alive for this call.
        pieces.iter().flat_map(|&(p, n)| unsafe { std::slice::from_raw_parts(p, n) }.to_vec()).collect()
    }

    #[test]
    fn own_and_shared_pieces_keep_their_order() {
        let mut b = SendBuf::default();
        b.bytes_mut().extend_from_slice(b"ab");
        b.push_shared(Arc::from(&b"XYZ"[..]));
        b.bytes_mut().extend_from_slice(b"cd");
        b.push_shared(Arc::from(&b"W"[..]));
        b.push_shared(Arc::from(&b"V"[..]));
        b.bytes_mut().extend_from_slice(b"e");
        assert_eq!(b.len(), 10);
        assert_eq!(flatten(&b, 0, 64), b"abXYZcdWVe");
        for offset in 0..=10 {
            assert_eq!(flatten(&b, offset, 64), &b"abXYZcdWVe"[offset..], "offset {offset}");
        }
        // At most `max` pieces: a partial sendmsg, the rest goes in the next one.
        assert_eq!(flatten(&b, 0, 2), b"abXYZ");
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
    }
}
