//! Sans-IO WebSocket protocol: handshake, frame codec, connection state machine.
//!
//! No syscalls and no clock reads: bytes and `now` in, events and bytes out.

pub mod conn;
pub mod frame;
pub mod handshake;

pub use conn::{CloseInfo, Connection, Event, Initiator, Input, MessageKind, ProtoConfig, Role, SendError};
pub use frame::ProtocolError;
