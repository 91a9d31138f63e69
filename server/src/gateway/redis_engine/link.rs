//! One connection to Redis as the Redis thread uses it: a single instance (redis-rs `ConnectionManager`:
//! reconnects with backoff, resubscribes) or a Redis Cluster (redis-rs `ClusterConnection`: routes each
//! command to the master of its slot; sharded PUB/SUB). Both speak RESP3, so PUB/SUB pushes come back on the
//! connection that carries the channel's commands, in the order Redis executed them.

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    /// Connected once the cluster answered (the seed nodes may be down at start).
    Cluster(Arc<OnceCell<ClusterConnection>>),
}

fn not_connected() -> redis::RedisError {
    (redis::ErrorKind::Io, "Redis Cluster not connected yet").into()
}

impl Link {
    pub fn cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// The PUB/SUB publish command: sharded in a cluster (the channel lives on its slot's master).
    pub fn publish_command(&self) -> &'static str {
        if self.cluster() {
            "spublish"
        } else {
            "publish"
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Link::Single(c) => c.subscribe(channel).await,
            Link::Cluster(cell) => {
                let mut c = cell.get().cloned().ok_or_else(not_connected)?;
                c.ssubscribe(channel).await
            }
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Link::Single(c) => c.unsubscribe(channel).await,
            Link::Cluster(cell) => {
                let mut c = cell.get().cloned().ok_or_else(not_connected)?;
                c.sunsubscribe(channel).await
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(cell) => Box::pin(async move {
                let mut c = cell.get().cloned().ok_or_else(not_connected)?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cell) => Box::pin(async move {
                let mut c = cell.get().cloned().ok_or_else(not_connected)?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}
