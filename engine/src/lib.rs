//! Tether: a sharded io_uring WebSocket connection engine.
//!
//! One shard = one thread, one io_uring, one timing wheel, one slab of connections. The application plugs in
//! a [`Handler`] (called on the shard threads) and talks to connections from anywhere through an
//! [`EngineHandle`]. See ARCHITECTURE.md at the repository root for the shape of the crate.

pub mod engine;
pub mod metrics;
pub mod proto;
pub mod ring;
mod shard;
pub mod wheel;

pub use engine::{
    parse_optional_duration, parse_tcp_keepalive, parse_tcp_user_timeout, plan_capacity, Capacity, Closed, Config,
    ConnId, ConnectError, ConnectRequest, Ctx, Engine, EngineHandle, Handler, HttpResponse, Message, SendQueuePolicy,
    TcpKeepalive, Upgrade,
};
pub use metrics::{CloseReason, ShardMetrics, Stats};
pub use proto::{CloseInfo, Initiator, MessageKind};
