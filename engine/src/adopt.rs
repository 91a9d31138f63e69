//! Adopting sockets another HTTP stack accepted and upgraded (axum, hyper, actix): [`EngineHandle::adopt`]
//! hands an open WebSocket's TCP socket to a shard, which installs it into its ring's registered file table
//! and closes the process descriptor (adopted sockets do not count against the fd limit); from then on the
//! connection is like any accepted one (keepalive, frames, limits, the [`Handler`](crate::Handler) callbacks).
//!
//! The answer comes back through an [`Adoption`]: `.await` it from async code, or [`Adoption::wait`] from a
//! thread. Adopting never blocks on the shard: the call only queues the socket in the shard's inbox.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use crate::ids::ConnId;
use crate::proto::Role;

/// Why a socket was not adopted. The socket comes back in [`AdoptError::socket`] when the engine never took
/// it (the caller may answer or close it itself); otherwise it is closed.
pub struct AdoptError {
    /// Why.
    pub kind: AdoptErrorKind,
    /// The socket, untouched, when the engine did not take it.
    pub socket: Option<OwnedFd>,
}

/// Why [`EngineHandle::adopt`](crate::EngineHandle::adopt) did not take a socket. Every kind comes with the
/// socket in [`AdoptError::socket`], except `ShuttingDown` when the shard stopped while holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdoptErrorKind {
    /// `max_connections` connections are open already.
    AtCapacity,
    /// The shard's registered file tables are full.
    NoCapacity,
    /// The shard's inbox is full.
    InboxFull,
    /// The engine is shutting down (or stopped before it took the socket).
    ShuttingDown,
    /// The descriptor is not a connected TCP socket, or a socket option could not be set.
    Io(String),
}

impl fmt::Display for AdoptErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdoptErrorKind::AtCapacity => f.write_str("engine at capacity (max_connections)"),
            AdoptErrorKind::NoCapacity => f.write_str("shard's file table full"),
            AdoptErrorKind::InboxFull => f.write_str("shard inbox full"),
            AdoptErrorKind::ShuttingDown => f.write_str("engine shutting down"),
            AdoptErrorKind::Io(e) => write!(f, "{e}"),
        }
    }
}

impl fmt::Debug for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdoptError").field("kind", &self.kind).field("socket_returned", &self.socket.is_some()).finish()
    }
}

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket not adopted: {}", self.kind)
    }
}

impl std::error::Error for AdoptError {}

impl AdoptError {
    pub(crate) fn new(kind: AdoptErrorKind, socket: Option<OwnedFd>) -> AdoptError {
        AdoptError { kind, socket }
    }
}

/// The one-shot answer shared by the caller's [`Adoption`] and the shard's job.
struct Answer {
    value: Option<Result<ConnId, AdoptError>>,
    waker: Option<Waker>,
    /// The answer was taken (by `poll` or `wait`).
    taken: bool,
}

type Cell = Arc<(Mutex<Answer>, Condvar)>;

fn fulfil(cell: &Cell, value: Result<ConnId, AdoptError>) {
    let (lock, cv) = &**cell;
    let waker = {
        let mut a = lock.lock().unwrap_or_else(|e| e.into_inner());
        if a.value.is_some() || a.taken {
            return;
        }
        a.value = Some(value);
        a.waker.take()
    };
    cv.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
}

/// The pending answer to [`EngineHandle::adopt`](crate::EngineHandle::adopt): the connection's id once the
/// shard holds the socket (its `on_adopt` and `on_open` have run by then), or why not.
#[must_use = "an Adoption reports whether the socket was taken"]
pub struct Adoption {
    cell: Cell,
}

impl Adoption {
    pub(crate) fn pending() -> (Adoption, Reply) {
        let cell: Cell = Arc::new((Mutex::new(Answer { value: None, waker: None, taken: false }), Condvar::new()));
        (Adoption { cell: cell.clone() }, Reply { cell })
    }

    pub(crate) fn ready(value: Result<ConnId, AdoptError>) -> Adoption {
        let (adoption, reply) = Adoption::pending();
        reply.send(value);
        adoption
    }

    /// Block the calling thread until the shard answers (never call this on a shard thread).
    pub fn wait(self) -> Result<ConnId, AdoptError> {
        let (lock, cv) = &*self.cell;
        let mut a = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = a.value.take() {
                a.taken = true;
                return v;
            }
            a = cv.wait(a).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Future for Adoption {
    type Output = Result<ConnId, AdoptError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut a = self.cell.0.lock().unwrap_or_else(|e| e.into_inner());
        match a.value.take() {
            Some(v) => {
                a.taken = true;
                Poll::Ready(v)
            }
            None => {
                a.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The shard's end of an [`Adoption`]. Dropped unanswered (the shard stopped), it answers `ShuttingDown`.
pub(crate) struct Reply {
    cell: Cell,
}

impl Reply {
    pub(crate) fn send(self, value: Result<ConnId, AdoptError>) {
        fulfil(&self.cell, value);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        fulfil(&self.cell, Err(AdoptError::new(AdoptErrorKind::ShuttingDown, None)));
    }
}

/// A socket on its way to a shard.
pub(crate) struct AdoptJob {
    pub socket: OwnedFd,
    pub role: Role,
    pub leftover: Vec<u8>,
    pub peer: Option<SocketAddr>,
    /// Index of the connection's profile (checked against the shard's profiles there).
    pub profile: usize,
    /// permessage-deflate as the other stack negotiated it (default: none).
    pub deflate: crate::proto::deflate::PerConn,
    pub context: Box<dyn Any + Send>,
    pub reply: Reply,
}

impl AdoptJob {
    /// Answer with an error, handing the socket back.
    pub(crate) fn refuse(self, kind: AdoptErrorKind) {
        let AdoptJob { socket, reply, .. } = self;
        reply.send(Err(AdoptError::new(kind, Some(socket))));
    }
}

/// Prepare `socket` on the caller's thread: blocking mode (as accepted sockets are), TCP_NODELAY and the
/// engine's keepalive and TCP_USER_TIMEOUT (which accepted sockets inherit from the listener). Returns the
/// peer address.
pub(crate) fn prepare(socket: &OwnedFd, cfg: &AdoptSockopts) -> std::io::Result<Option<SocketAddr>> {
    let s = socket2::SockRef::from(socket);
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    set_tcp_timeouts(&s, cfg.keepalive, cfg.user_timeout)?;
    Ok(s.peer_addr()?.as_socket())
}

/// TCP keepalive (on with its timing, or off) and TCP_USER_TIMEOUT (when set): what listeners pass on to
/// accepted sockets and adopted sockets get directly.
pub(crate) fn set_tcp_timeouts(
    s: &socket2::Socket,
    keepalive: Option<crate::config::SocketKeepalive>,
    user_timeout: Option<std::time::Duration>,
) -> std::io::Result<()> {
    match keepalive {
        Some(ka) => {
            s.set_keepalive(true)?;
            let params =
                socket2::TcpKeepalive::new().with_time(ka.idle).with_interval(ka.interval).with_retries(ka.count);
            s.set_tcp_keepalive(&params)?;
        }
        None => s.set_keepalive(false)?,
    }
    if let Some(t) = user_timeout {
        s.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

/// The socket options every adopted socket gets (from the engine's config).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdoptSockopts {
    pub keepalive: Option<crate::config::SocketKeepalive>,
    pub user_timeout: Option<std::time::Duration>,
}
