//! What each message from a worker or the driver does: validation and routing to the part
//! that owns it (scheduler rule 5). Owns no state.

use std::sync::mpsc::Sender;

use crate::protocol::{FromWorker, ToWorker};

use super::Scheduler;
use super::requests::RequestKind;

/// Who sent a message, and where its answer goes.
#[derive(Clone)]
pub(super) enum Requester {
    /// A driver thread: `Some` channel for a request that waits for its answer there.
    Driver(Option<Sender<ToWorker>>),
    /// The worker in this slot, answered on its socket.
    Worker(u32),
}

impl Requester {
    /// The worker's slot; `None` for the driver.
    pub(super) fn slot(&self) -> Option<u32> {
        match self {
            Requester::Worker(s) => Some(*s),
            Requester::Driver(_) => None,
        }
    }

    /// This requester, if it waits for an answer (a driver's one-way message does not).
    fn awaiting(self) -> Option<Requester> {
        match self {
            Requester::Driver(None) => None,
            r => Some(r),
        }
    }
}

impl Scheduler {
    pub(super) fn on_message(&mut self, client: Requester, msg: FromWorker) {
        let slot = client.slot();
        // Whatever an actor's worker says may free it for its next call.
        if let Some(a) = slot
            .and_then(|s| self.pool.workers.get(&s))
            .and_then(|w| w.actor)
        {
            self.mark_actor(a);
        }
        match msg {
            FromWorker::Hello { worker, pid: _ } => {
                let Some(slot) = slot else { return };
                self.on_hello(slot, worker);
            }
            FromWorker::RefOps(ops) => self.on_ref_ops(slot, ops),
            FromWorker::Submit(spec) => self.submit(slot, spec),
            FromWorker::Put {
                id,
                bytes,
                contained,
            } => self.put(slot, id, bytes, contained),
            FromWorker::Create { id, size } => {
                let Some(k) = client.awaiting() else { return };
                let r = self.create(slot, id, size);
                self.reply(&k, ToWorker::Created(r));
            }
            FromWorker::Seal { id, contained } => self.seal(slot, id, contained),
            FromWorker::Share { id } => self.share(slot, id),
            FromWorker::Watch { watch, ids } => {
                if self.names_only_what_it_holds(slot, &ids) {
                    self.watch(slot, watch, ids)
                }
            }
            FromWorker::Unwatch { watch } => self.unwatch(slot, watch),
            FromWorker::GetActor { name } => {
                let Some(k) = client.awaiting() else { return };
                let r = self.get_actor(slot, &name);
                self.reply(&k, ToWorker::ActorReply(r));
            }
            FromWorker::NextReady { watch, timeout_ms } => {
                let Some(k) = client.awaiting() else { return };
                self.next_ready(k, watch, timeout_ms);
            }
            FromWorker::Abort { id } => self.abort(slot, id),
            FromWorker::Get { ids, timeout_ms } => {
                let Some(k) = client.awaiting() else { return };
                if self.names_only_what_it_holds(slot, &ids) {
                    self.request(k, ids, RequestKind::Get, timeout_ms);
                }
            }
            FromWorker::Wait {
                ids,
                num_ready,
                timeout_ms,
            } => {
                let Some(k) = client.awaiting() else { return };
                if !self.names_only_what_it_holds(slot, &ids) {
                    return;
                }
                let need = num_ready.min(ids.len());
                self.request(k, ids, RequestKind::Wait { need }, timeout_ms);
            }
            FromWorker::Done { task, outcome } => {
                let Some(slot) = slot else { return };
                self.on_done(slot, task, outcome);
            }
            FromWorker::Unclaimed { task, ticket } => {
                let Some(slot) = slot else { return };
                self.on_unclaimed(slot, task, ticket);
            }
            FromWorker::KillActor { actor } => self.kill_actor(actor, "killed by its owner"),
            FromWorker::Yield { task, item } => {
                let Some(slot) = slot else { return };
                self.on_yield(slot, task, item);
            }
            FromWorker::NextItem { stream, index } => {
                let Some(k) = client.awaiting() else { return };
                if !self.names_only_what_it_holds(slot, &[stream]) {
                    return;
                }
                self.request(k, vec![stream], RequestKind::Next { index }, None);
            }
            FromWorker::Cancel {
                id,
                force,
                recursive,
                grace_ms,
            } => {
                let Some(k) = client.awaiting() else { return };
                let r = self.cancel(id, force, recursive, grace_ms);
                self.reply(&k, ToWorker::CancelReply(r));
            }
        }
    }

    pub(super) fn bad(&mut self, slot: Option<u32>, why: &str) {
        match slot {
            Some(s) => self.kill_worker(s, why),
            None => eprintln!("rayfork: driver protocol error: {why}"),
        }
    }
}
