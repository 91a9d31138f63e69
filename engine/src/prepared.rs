//! [`Prepared`]: a message encoded once as a server frame, shared by every connection it is sent to.

use std::sync::{Arc, OnceLock};

use crate::proto::frame::write_frame;
use crate::proto::{Codec, MessageKind};

/// A message encoded once into an unmasked frame. Sending it to many connections (a topic publication,
/// [`Ctx::send_prepared`](crate::Ctx::send_prepared), [`EngineHandle::broadcast`](crate::EngineHandle::broadcast))
/// queues the same bytes to each of them, shared, not copied. Client-role connections mask every frame, so
/// they get their own copy of the payload instead. Connections that negotiated permessage-deflate (shared
/// mode) get a compressed form instead, made once, by the first shard that needs it, and shared the same way.
/// Cheap to clone.
///
/// ```
/// use tether::{MessageKind, Prepared};
/// let p = Prepared::new(MessageKind::Text, b"hello");
/// assert_eq!(p.payload(), b"hello");
/// assert_eq!(p.frame_len(), 7); // 2-byte header + payload
/// ```
#[derive(Clone, Debug)]
pub struct Prepared {
    frame: Arc<[u8]>,
    header_len: u8,
    kind: MessageKind,
    /// The compressed frame (RSV1 set); `None` inside when compressing does not pay (below the threshold,
    /// or no smaller).
    deflated: Arc<OnceLock<Option<Arc<[u8]>>>>,
}

impl Prepared {
    /// Encodes `payload` as one final, unmasked frame of `kind` (a 2-byte header up to 125 bytes of payload,
    /// 4 bytes up to 65535, 10 beyond). The payload is copied once, here.
    ///
    /// The payload of a `Text` frame is not checked: it must be valid UTF-8, or every peer that receives it
    /// fails its connection with 1007. [`Prepared::text`] takes a `&str` and cannot get this wrong. Nothing
    /// bounds the size either: a peer that accepts less closes with 1009.
    pub fn new(kind: MessageKind, payload: &[u8]) -> Prepared {
        let mut frame = Vec::with_capacity(payload.len() + 10);
        write_frame(&mut frame, true, kind.opcode(), None, payload);
        let header_len = (frame.len() - payload.len()) as u8;
        Prepared { frame: frame.into(), header_len, kind, deflated: Arc::default() }
    }

    /// A Text message.
    ///
    /// ```no_run
    /// use tether::{ConnId, EngineHandle, Prepared};
    ///
    /// fn tell(handle: &EngineHandle, conns: &[ConnId]) {
    ///     let tick = Prepared::text(r#"{"type":"tick"}"#); // encoded once
    ///     for &conn in conns {
    ///         let _ = handle.send_prepared(conn, &tick); // the same bytes, shared, in each queue
    ///     }
    /// }
    /// ```
    pub fn text(text: &str) -> Prepared {
        Prepared::new(MessageKind::Text, text.as_bytes())
    }

    /// A Binary message.
    pub fn binary(data: &[u8]) -> Prepared {
        Prepared::new(MessageKind::Binary, data)
    }

    /// Text or Binary.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The message's bytes, without the frame header.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.header_len as usize..]
    }

    /// Bytes on the wire (header and payload), as a server-role connection sends them.
    pub fn frame_len(&self) -> usize {
        self.frame.len()
    }

    pub(crate) fn frame(&self) -> &Arc<[u8]> {
        &self.frame
    }

    /// The frame for a connection that compresses with the shard's default compressor: compressed once (by
    /// `codec`, on whichever shard asks first), or the plain frame when compressing does not pay.
    pub(crate) fn deflated_frame(&self, codec: &mut Codec) -> Arc<[u8]> {
        let deflated = self.deflated.get_or_init(|| {
            codec.compress_shared(self.payload()).map(|c| {
                let mut frame = Vec::with_capacity(c.len() + 10);
                write_frame(&mut frame, true, self.kind.opcode(), None, c);
                frame[0] |= 0x40; // RSV1: compressed
                frame.into()
            })
        });
        deflated.clone().unwrap_or_else(|| self.frame.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_once_for_every_shard_and_subscriber() {
        let text = r#"{"push":{"channel":"news","pub":{"data":{"text":"hello hello hello hello"}}}}"#.repeat(4);
        let p = Prepared::text(&text);
        let (mut shard_a, mut shard_b) = (Codec::new(64), Codec::new(64));
        let a = p.deflated_frame(&mut shard_a);
        let b = p.clone().deflated_frame(&mut shard_b);
        assert!(Arc::ptr_eq(&a, &b), "compressed twice");
        assert_eq!(a[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, Text");
        assert!(a.len() < p.frame_len() / 4, "{} vs {}", a.len(), p.frame_len());
        // Below the threshold, the plain frame itself.
        let small = Prepared::text("hi");
        assert!(Arc::ptr_eq(&small.deflated_frame(&mut shard_a), small.frame()));
    }
}
