//! What each message from a worker or the driver does: validation and routing to the part
//! that owns it (scheduler rule 5). Owns no state.

use std::sync::mpsc::Sender;

use crate::protocol::{FromWorker, Payload, ToWorker};

use super::Scheduler;
use super::objects::{ObjState, Object};
use super::requests::RequestKind;

pub(super) enum Client {
    Driver(Option<Sender<ToWorker>>),
    Worker(u32),
}

#[derive(Clone)]
pub(super) enum ClientKey {
    Driver(Sender<ToWorker>),
    Worker(u32),
}

impl Scheduler {
    pub(super) fn on_message(&mut self, client: Client, msg: FromWorker) {
        let slot = match &client {
            Client::Worker(s) => Some(*s),
            Client::Driver(_) => None,
        };
        // Whatever an actor's worker says may free it for its next call.
        if let Some(a) = slot
            .and_then(|s| self.pool.workers.get(&s))
            .and_then(|w| w.actor)
        {
            self.mark_actor(a);
        }
        let key = |client: Client| -> Option<ClientKey> {
            match client {
                Client::Driver(Some(tx)) => Some(ClientKey::Driver(tx)),
                Client::Driver(None) => None,
                Client::Worker(s) => Some(ClientKey::Worker(s)),
            }
        };
        match msg {
            FromWorker::Hello { worker, pid } => {
                let Some(slot) = slot else { return };
                if worker != slot {
                    return self.kill_worker(slot, "hello from the wrong slot");
                }
                self.pool.hello(slot);
                if let Some(w) = self.pool.workers.get_mut(&slot) {
                    w.pid = pid;
                }
            }
            FromWorker::RefOps(ops) => {
                for (id, d) in ops {
                    self.own(slot, id, d as i64);
                    self.add_ref(id, d as i64);
                }
            }
            FromWorker::Submit(spec) => self.submit(slot, spec),
            FromWorker::Put {
                id,
                bytes,
                contained,
            } => {
                if self.objects.contains_key(&id) {
                    return self.bad(slot, "put of an id that exists");
                }
                for &c in &contained {
                    self.own(slot, c, -1);
                }
                self.objects.insert(
                    id,
                    Object {
                        state: ObjState::Ready(Payload::Inline(bytes)),
                        contained,
                        sealed: true,
                        ..Object::pending()
                    },
                );
                self.own(slot, id, 1);
            }
            FromWorker::Create { id, size } => {
                let Some(k) = key(client) else { return };
                let r = self.create(slot, id, size);
                self.reply(&k, ToWorker::Created(r));
            }
            FromWorker::Seal { id, contained } => self.seal(slot, id, contained),
            FromWorker::Abort { id } => self.abort(slot, id),
            FromWorker::Get { ids, timeout_ms } => {
                let Some(k) = key(client) else { return };
                self.request(k, ids, RequestKind::Get, timeout_ms);
            }
            FromWorker::Wait {
                ids,
                num_ready,
                timeout_ms,
            } => {
                let Some(k) = key(client) else { return };
                let need = num_ready.min(ids.len());
                self.request(k, ids, RequestKind::Wait { need }, timeout_ms);
            }
            FromWorker::Done { task, outcome } => {
                let Some(slot) = slot else { return };
                self.on_done(slot, task, outcome);
            }
            FromWorker::KillActor { actor } => self.kill_actor(actor, "killed by its owner"),
            FromWorker::Yield { task, item } => {
                let Some(slot) = slot else { return };
                self.on_yield(slot, task, item);
            }
            FromWorker::NextItem { stream, index } => {
                let Some(k) = key(client) else { return };
                self.request(k, vec![stream], RequestKind::Next { index }, None);
            }
            FromWorker::Cancel {
                id,
                force,
                recursive,
                grace_ms,
            } => {
                let Some(k) = key(client) else { return };
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
