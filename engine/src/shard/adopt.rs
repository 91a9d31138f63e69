//! Adopted sockets: a connection another HTTP stack accepted and upgraded arrives through the inbox
//! ([`AdoptJob`]), goes into the emptiest ring's file table (IORING_OP_FILES_UPDATE picks the slot, as an
//! accept does), its process descriptor is closed, and it starts life `Open`, its leftover bytes handled as
//! the first received. From then on nothing tells it apart from an accepted connection.

use super::slot::{flag, Phase};
use super::{with_ctx, Core, Shard};
use crate::adopt::{AdoptErrorKind, AdoptJob};
use crate::handler::Handler;
use crate::metrics::bump;
use crate::proto::{CloseCause, Role};
use crate::ring::{self, Completion, Token};
use std::os::fd::AsRawFd;

impl Core {
    /// Queue an adopted socket's installation into the ring with the most free slots.
    pub(super) fn adopt(&mut self, job: Box<AdoptJob>) {
        if self.shutting_down {
            job.refuse(AdoptErrorKind::ShuttingDown);
            return;
        }
        let fd = job.socket.as_raw_fd();
        let index = super::park(&mut self.pending_adopts, job);
        let r = self.claim_emptiest_ring();
        self.rings[r].install_fd(fd, index);
    }
}

impl<H: Handler> Shard<H> {
    /// The adopted socket is in ring `r`'s table (or could not be put there).
    pub(super) fn on_install(&mut self, r: usize, token: Token, c: Completion) {
        let core = &mut self.core;
        core.ring_sockets[r] = core.ring_sockets[r].saturating_sub(1);
        let installed = core.rings[r].installed_slot(token.slot, c.result);
        let Some(job) = core.pending_adopts.get_mut(token.slot as usize).and_then(Option::take) else { return };
        let Some(slot) = installed else {
            let kind = if c.result >= 0 || -c.result == libc::ENFILE || -c.result == libc::EMFILE {
                AdoptErrorKind::NoCapacity
            } else {
                AdoptErrorKind::Io(format!("installing the socket: {}", ring::errno_str(c.result)))
            };
            job.refuse(kind);
            return;
        };
        let AdoptJob { socket, role, leftover, peer, profile, deflate, context, reply } = *job;
        let profile = core.profile_or_default(profile);
        // The table holds its own reference to the socket now: the process descriptor goes.
        drop(socket);
        core.take_slot(slot, role == Role::Client);
        if let Some(peer) = peer {
            core.ring(slot).set_peer(slot, peer);
            core.slots[slot as usize].set(flag::PEER_KNOWN);
        }
        // The other stack answered the upgrade, and told us what it agreed to (permessage-deflate or nothing).
        core.open_slot(slot, profile, role, deflate);
        *core.slots[slot as usize].reader.handshake_buf() = leftover;
        bump(&core.metrics.adopted);
        core.arm_recv(slot);
        let id = core.id(slot);
        with_ctx!(self, |h, ctx| h.on_adopt(&mut ctx, id, context));
        if self.core.slots[slot as usize].phase == Phase::Open {
            self.opened(slot, 0);
        } else {
            // The handler closed it in on_adopt: the leftover bytes are not wanted.
            self.core.slots[slot as usize].reader.handshake_buf().clear();
        }
        if self.core.shutting_down && self.core.slots[slot as usize].phase == Phase::Open {
            self.core.close_conn(slot, 1001, "server shutting down", CloseCause::Shutdown);
        }
        reply.send(Ok(id));
    }
}
