//! Work from other threads: typed [`Command`]s from the bounded inbox and the handler's notices, taken at the
//! top of each loop iteration (as many as were waiting then, so a producer that never stops cannot hold the
//! loop).

use super::send::Payload;
use super::{with_ctx, Core, Shard};
use crate::command::Command;
use crate::handler::Handler;
use crate::metrics::bump;
use crate::proto::CloseCause;

/// Writes of one fan-out between two looks at the rings: a publication to a large topic goes out in chunks
/// of this many subscribers, one per loop iteration, so that the shard's other connections (a pong, a
/// handshake, an API request) are not held back behind tens of thousands of sends.
pub(super) const FANOUT_CHUNK: usize = 2048;

/// Publications being delivered in chunks: their frames (several when publications to the same members
/// queued up while an earlier fan-out was going out: each member then gets them in one send), the topic's
/// membership key, the members (slot, generation, taken when the first was dequeued), and how far it got.
/// Queued fan-outs keep their order, and any publication that arrives while one is queued waits behind it,
/// so each subscriber still gets a topic's publications in the order they were published.
pub(crate) struct Fanout {
    frames: Vec<crate::prepared::Prepared>,
    key: (u32, u64),
    members: Vec<(u32, u32)>,
    next: usize,
}

impl<H: Handler> Shard<H> {
    pub(super) fn drain_inbox(&mut self) {
        for _ in 0..self.inbox.len() {
            let Some(cmd) = self.inbox.try_recv() else { break };
            match cmd {
                Command::Notice(any) => match any.downcast::<H::Notice>() {
                    Ok(notice) => with_ctx!(self, |h, ctx| h.on_notice(&mut ctx, *notice)),
                    Err(_) => tracing::error!("notify_in_order: a notice of another type than the handler's; dropped"),
                },
                cmd => self.core.command(cmd),
            }
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
            Command::Adopt(job) => self.adopt(job),
            Command::HttpAnswer { conn, response } => {
                if let Some(slot) = self.resolve(conn) {
                    self.answer_deferred(slot, &response);
                }
            }
            Command::Notice(_) => unreachable!("notices are taken in drain_inbox"),
        }
    }

    /// Deliver a publication to this shard's subscribers of `topic`.
    /// Delivers a publication to this shard's subscribers of `topic`: at once when it is small and nothing
    /// is waiting, else queued behind the fan-outs in progress (see [`Fanout`]). Returns the subscribers it
    /// was delivered or queued to.
    pub(super) fn publish_local(&mut self, topic: &str, prepared: &crate::prepared::Prepared) -> usize {
        bump(&self.metrics.publications);
        let Some((members, key)) = self.topics.members_keyed(topic) else { return 0 };
        let n = members.len();
        if self.fanout.is_empty() && n <= FANOUT_CHUNK {
            let members = members.to_vec();
            let mut delivered = 0;
            for slot in members {
                if self.write(slot, Payload::Prepared(prepared)).is_ok() {
                    delivered += 1;
                }
            }
            crate::metrics::add(&self.metrics.deliveries, delivered as u64);
            return delivered;
        }
        // Queued behind a fan-out that has not started and goes to exactly these members: ride along, so
        // that each member gets both in one send.
        if let Some(last) = self.fanout.back_mut().filter(|f| f.next == 0 && f.key == key) {
            last.frames.push(prepared.clone());
            return n;
        }
        // The subscribers as they are now, each with its generation: whoever subscribes after this point
        // (a later command) does not get it, a slot reused meanwhile by another connection does not either.
        let members: Vec<(u32, u32)> =
            members.iter().map(|&slot| (slot, self.slots[slot as usize].generation)).collect();
        self.fanout.push_back(Fanout { frames: vec![prepared.clone()], key, members, next: 0 });
        n
    }

    /// Delivers the queued fan-outs to up to [`FANOUT_CHUNK`] members, oldest first.
    pub(super) fn fanout_step(&mut self) {
        let mut budget = FANOUT_CHUNK;
        while budget > 0 {
            let Some(mut f) = self.fanout.pop_front() else { return };
            let end = (f.next + budget).min(f.members.len());
            let mut delivered = 0u64;
            for &(slot, generation) in &f.members[f.next..end] {
                if self.slots[slot as usize].generation != generation {
                    continue;
                }
                for frame in &f.frames {
                    if self.write(slot, Payload::Prepared(frame)).is_ok() {
                        delivered += 1;
                    }
                }
            }
            crate::metrics::add(&self.metrics.deliveries, delivered);
            budget -= end - f.next;
            f.next = end;
            if f.next < f.members.len() {
                self.fanout.push_front(f);
                return;
            }
        }
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
