//! Tether: a sharded io_uring WebSocket connection engine.
//!
//! One shard = one thread, its io_uring ring(s), one timing wheel, one slab of connections. The application
//! plugs in a [`Handler`] (one per shard, called on that shard's thread, never blocking) and talks to
//! connections from anywhere through an [`EngineHandle`]. ARCHITECTURE.md at the repository root describes
//! the shape of the crate.
#![deny(unsafe_code)]

pub mod capacity;
mod command;
pub mod config;
mod context;
mod handle;
mod handler;
mod ids;
pub mod metrics;
mod prepared;
pub mod proto;
#[allow(unsafe_code)]
mod ring;
mod shard;
pub mod wheel;

pub use capacity::{auto_recv_buffers, plan_capacity, Capacity};
pub use config::{
    parse_optional_duration, parse_tcp_keepalive, parse_tcp_user_timeout, Config, Profile, ProfileId, SendQueuePolicy,
    TcpKeepalive,
};
pub use context::Ctx;
pub use handle::{Engine, EngineHandle, Notifier, SendError};
pub use handler::{Accept, Closed, ConnectError, ConnectRequest, Handler, HttpResponse, Message, Upgrade};
pub use ids::ConnId;
pub use metrics::{ShardMetrics, Stats};
pub use prepared::Prepared;
pub use proto::handshake::{HttpError, HttpRequest, UpgradeRequest};
pub use proto::{CloseCause, CloseInfo, Initiator, MessageKind};
