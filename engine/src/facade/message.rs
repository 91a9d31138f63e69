//! [`OwnedMessage`]: a whole message that owns its bytes, for the facade's two directions (what a program
//! sends, what [`Event::Message`](super::Event::Message) carries).

use crate::handler::Message;
use crate::proto::MessageKind;

/// A WebSocket message that owns its payload. Text stays a `String`: the engine checked the UTF-8 of what it
/// received once, so a program neither checks it again nor can send invalid text. Built from `String`,
/// `&str`, `Vec<u8>`, `&[u8]` or a borrowed [`Message`].
///
/// ```
/// use tether::{MessageKind, OwnedMessage};
/// let m = OwnedMessage::from("hello");
/// assert_eq!((m.kind(), m.as_bytes()), (MessageKind::Text, &b"hello"[..]));
/// assert_eq!(OwnedMessage::from(vec![1u8, 2]).kind(), MessageKind::Binary);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedMessage {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

impl OwnedMessage {
    /// Text or binary.
    pub fn kind(&self) -> MessageKind {
        match self {
            OwnedMessage::Text(_) => MessageKind::Text,
            OwnedMessage::Binary(_) => MessageKind::Binary,
        }
    }

    /// The payload.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            OwnedMessage::Text(s) => s.as_bytes(),
            OwnedMessage::Binary(b) => b,
        }
    }

    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload, taken out (a text's UTF-8 bytes).
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            OwnedMessage::Text(s) => s.into_bytes(),
            OwnedMessage::Binary(b) => b,
        }
    }

    /// Borrowed as the engine's [`Message`].
    pub fn as_message(&self) -> Message<'_> {
        match self {
            OwnedMessage::Text(s) => Message::Text(s),
            OwnedMessage::Binary(b) => Message::Binary(b),
        }
    }
}

impl From<String> for OwnedMessage {
    fn from(text: String) -> Self {
        OwnedMessage::Text(text)
    }
}

impl From<&str> for OwnedMessage {
    fn from(text: &str) -> Self {
        OwnedMessage::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for OwnedMessage {
    fn from(data: Vec<u8>) -> Self {
        OwnedMessage::Binary(data)
    }
}

impl From<&[u8]> for OwnedMessage {
    fn from(data: &[u8]) -> Self {
        OwnedMessage::Binary(data.to_vec())
    }
}

impl From<Message<'_>> for OwnedMessage {
    fn from(message: Message<'_>) -> Self {
        match message {
            Message::Text(s) => OwnedMessage::Text(s.to_owned()),
            Message::Binary(b) => OwnedMessage::Binary(b.to_vec()),
        }
    }
}
