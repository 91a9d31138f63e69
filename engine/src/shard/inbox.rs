//! Work from other threads: typed [`Command`]s from the bounded inbox and the handler's notices, taken at the
//! top of each loop iteration (as many as were waiting then, so a producer that never stops cannot hold the
//! loop).

use super::send::Payload;
use super::{with_ctx, Core, Shard};
use crate::command::Command;
use crate::handler::Handler;
use crate::metrics::bump;
use crate::proto::CloseCause;

impl<H: Handler> Shard<H> {
    pub(super) fn drain_inbox(&mut self) {
        for _ in 0..self.inbox.len() {
            let Some(cmd) = self.inbox.try_recv() else { break };
            self.core.command(cmd);
        }
        for _ in 0..self.notices.len() {
            let Some(notice) = self.notices.try_recv() else { break };
            with_ctx!(self, |h, ctx| h.on_notice(&mut ctx, notice));
        }
    }
}

impl Core {
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send { conn, kind, data } => {
                if let Some(slot) = self.resolve(conn) {
                    let _ = self.write(slot, Payload::Bytes(kind, &data));
                }
            }
            Command::SendPrepared { conn, prepared } => {
                if let Some(slot) = self.resolve(conn) {
                    let _ = self.write(slot, Payload::Prepared(&prepared));
                }
            }
            Command::Publish { topic, prepared } => {
                self.publish_local(&topic, &prepared);
            }
            Command::Broadcast { prepared } => {
                for slot in 0..self.slots.len() as u32 {
                    if self.slots[slot as usize].phase == super::slot::Phase::Open {
                        let _ = self.write(slot, Payload::Prepared(&prepared));
                    }
                }
            }
            Command::Subscribe { conn, topic } => {
                if let Some(slot) = self.resolve(conn) {
                    self.topics.subscribe_arc(slot, &topic);
                    self.sync_topic_gauges();
                }
            }
            Command::Unsubscribe { conn, topic } => {
                if let Some(slot) = self.resolve(conn) {
                    self.topics.unsubscribe(slot, &topic);
                    self.sync_topic_gauges();
                }
            }
            Command::Close { conn, code, reason } => {
                if let Some(slot) = self.resolve(conn) {
                    self.close_conn(slot, code, &reason, CloseCause::LocalClose);
                }
            }
            Command::Ping { conn } => {
                if let Some(slot) = self.resolve(conn) {
                    self.ping_slot(slot);
                }
            }
            Command::Connect(request) => self.connect(request),
        }
    }

    /// Deliver a publication to this shard's subscribers of `topic`.
    pub(super) fn publish_local(&mut self, topic: &str, prepared: &crate::prepared::Prepared) -> usize {
        bump(&self.metrics.publications);
        let members = self.topics.members(topic).to_vec();
        let mut delivered = 0;
        for slot in members {
            if self.write(slot, Payload::Prepared(prepared)).is_ok() {
                delivered += 1;
            }
        }
        crate::metrics::add(&self.metrics.deliveries, delivered as u64);
        delivered
    }

    pub(super) fn ping_slot(&mut self, slot: u32) -> bool {
        if self.slots[slot as usize].phase != super::slot::Phase::Open {
            return false;
        }
        self.lend_out(slot);
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        let Some(w) = s.writer.as_mut() else { return false };
        if w.send_ping(s.out.bytes_mut(), now).is_err() {
            return false;
        }
        bump(&self.metrics.pings_sent);
        self.mark_dirty(slot);
        self.rearm(slot);
        true
    }

    pub(super) fn sync_topic_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.topics.store(self.topics.topic_count() as u64, Relaxed);
        self.metrics.subscriptions.store(self.topics.subscription_count() as u64, Relaxed);
    }
}
