//! Sans-IO WebSocket protocol: handshake, frame codec, connection state machine.
//!
//! No syscalls and no clock reads: bytes and `now` in, events and bytes out.

pub mod close;
pub mod conn;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod spares;

pub use close::{CloseCause, CloseInfo, Initiator};
pub use conn::{Connection, Event, Input, MessageKind, PingMode, ProtoConfig, Reader, Role, SendError, Writer};
pub use deflate::{Codec, Deflate, PerConn};
pub use frame::ProtocolError;
pub use spares::Spares;
