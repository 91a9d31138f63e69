//! What a handler's [`Ctx`](crate::Ctx) can do on its shard: [`ShardOps`] for the core. Same-shard work
//! happens at once through the core's one write path; work for another shard goes to its inbox.

use std::net::SocketAddr;
use std::time::Instant;

use super::send::Payload;
use super::slot::flag;
use super::Core;
use crate::context::ShardOps;
use crate::handle::{EngineHandle, SendError};
use crate::handler::{ConnectRequest, Message};
use crate::ids::ConnId;
use crate::prepared::Prepared;
use crate::proto::CloseCause;

impl Core {
    /// The peer address kept in the ring's per-slot buffer, once known.
    pub(super) fn peer_addr(&self, slot: u32) -> Option<SocketAddr> {
        if self.slots[slot as usize].has(flag::PEER_KNOWN) {
            self.rings[self.ring_index(slot)].stored_addr(slot)
        } else {
            None
        }
    }

    fn local(&self, conn: ConnId) -> bool {
        conn.shard() == self.index as usize
    }
}

impl ShardOps for Core {
    fn index(&self) -> u16 {
        self.index
    }

    fn now(&self) -> Instant {
        self.now
    }

    fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    fn slot_of(&self, conn: ConnId) -> Option<u32> {
        self.resolve(conn)
    }

    fn send(&mut self, conn: ConnId, message: Message<'_>) -> Result<(), SendError> {
        if !self.local(conn) {
            return self.handle.send(conn, message.kind(), message.as_bytes().to_vec());
        }
        let slot = self.resolve(conn).ok_or(SendError::NotOpen)?;
        self.write(slot, Payload::Bytes(message.kind(), message.as_bytes()))
    }

    fn send_prepared(&mut self, conn: ConnId, prepared: &Prepared) -> Result<(), SendError> {
        if !self.local(conn) {
            return self.handle.send_prepared(conn, prepared);
        }
        let slot = self.resolve(conn).ok_or(SendError::NotOpen)?;
        self.write(slot, Payload::Prepared(prepared))
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        if !self.local(conn) {
            let _ = self.handle.close(conn, code, reason);
        } else if let Some(slot) = self.resolve(conn) {
            self.close_conn(slot, code, reason, CloseCause::LocalClose);
        }
    }

    fn ping(&mut self, conn: ConnId) -> Result<(), SendError> {
        if !self.local(conn) {
            return self.handle.ping(conn);
        }
        let slot = self.resolve(conn).ok_or(SendError::NotOpen)?;
        if self.ping_slot(slot) {
            Ok(())
        } else {
            Err(SendError::NotOpen)
        }
    }

    fn connect(&mut self, request: ConnectRequest) {
        Core::connect(self, Box::new(request));
    }

    fn subscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        let Some(slot) = self.resolve(conn) else { return false };
        let added = self.topics.subscribe(slot, topic);
        self.sync_topic_gauges();
        added
    }

    fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        let Some(slot) = self.resolve(conn) else { return false };
        let removed = self.topics.unsubscribe(slot, topic);
        self.sync_topic_gauges();
        removed
    }

    fn publish_local(&mut self, topic: &str, prepared: &Prepared) -> usize {
        Core::publish_local(self, topic, prepared)
    }

    fn set_timer(&mut self, conn: ConnId, at: Option<Instant>) -> bool {
        let Some(slot) = self.resolve(conn) else { return false };
        self.set_app_timer(slot, at);
        true
    }

    fn pause_receive(&mut self, conn: ConnId, until: Instant) -> bool {
        let Some(slot) = self.resolve(conn) else { return false };
        self.pause_recv(slot, until)
    }

    fn send_queue_room(&self, conn: ConnId) -> Option<usize> {
        self.send_queue_room(self.resolve(conn)?)
    }

    fn notify_writable(&mut self, conn: ConnId) -> bool {
        let Some(slot) = self.resolve(conn) else { return false };
        self.want_writable(slot)
    }

    fn defer_http(&mut self, conn: ConnId) -> bool {
        let Some(slot) = self.resolve(conn) else { return false };
        Core::defer_http(self, slot)
    }

    fn answer_http(&mut self, conn: ConnId, response: &crate::handler::HttpResponse) -> bool {
        let Some(slot) = self.resolve(conn) else { return false };
        if !self.slots[slot as usize].has(super::slot::flag::HTTP_DEFERRED) {
            return false;
        }
        self.answer_deferred(slot, response);
        true
    }

    fn peer(&self, conn: ConnId) -> Option<SocketAddr> {
        let slot = self.resolve(conn)?;
        if self.slots[slot as usize].has(flag::PEERNAME_PENDING) {
            return None;
        }
        self.peer_addr(slot)
    }
}
