//! Actors (scheduler rule 8): construction, ordered calls, restarts, the end. Must not start
//! pool tasks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Error;
use crate::idmap::IdMap;
use crate::protocol::{ActorCall, Arg, Id, Payload, RunTask, ToWorker};

use super::Scheduler;
use super::pool::Frame;
use super::resources::Held;
use super::tasks::TaskState;

/// Where an actor stands in its life (scheduler rule 8). Which worker it has is `Actor::slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ActorPhase {
    /// Its constructor has not finished on its current worker (the first one, or a restart).
    Constructing,
    /// Its constructor finished on its current worker: it takes calls.
    Constructed,
    /// Gone for good, for `reason`: no restart, every call fails with `ActorDied`.
    Dead { reason: String },
}

/// An actor (scheduler rule 8).
pub(super) struct Actor {
    pub(super) name: String,
    /// Its constructor's registered function: what `get_actor` checks the type against.
    pub(super) class: String,
    /// Its current worker.
    pub(super) slot: Option<u32>,
    /// The constructor's function and resolved arguments, kept for restarts once it started.
    pub(super) ctor: Option<(String, Vec<Payload>)>,
    /// Ids whose references the kept arguments hold.
    pub(super) ctor_refs: Vec<Id>,
    pub(super) phase: ActorPhase,
    /// Method calls not started yet, in submission order.
    pub(super) calls: VecDeque<Id>,
    pub(super) restarts_left: u32,
    /// Times a call running at a crash runs again after the restart.
    pub(super) max_task_retries: u32,
    /// Its object was freed: no handle or call can name it any more.
    pub(super) freed: bool,
    /// In `ActorTable::dirty`: something changed that may let it start or queue a call.
    pub(super) dirty: bool,
}

impl Actor {
    /// Why it is gone for good; `None` while it lives or will restart.
    pub(super) fn dead(&self) -> Option<&str> {
        match &self.phase {
            ActorPhase::Dead { reason } => Some(reason),
            ActorPhase::Constructing | ActorPhase::Constructed => None,
        }
    }

    fn is_constructed(&self) -> bool {
        self.phase == ActorPhase::Constructed
    }
}

/// How often `dispatch_actors` looks at every actor, beside the ones marked, while the loop
/// turns: a safety net for a change that went unmarked.
const ACTOR_SWEEP: Duration = Duration::from_millis(10);

/// The actors, and which of them `dispatch_actors` looks at next.
pub(super) struct ActorTable {
    pub(super) by_id: IdMap<Id, Actor>,
    /// Actors that may be able to start or queue a call (`mark_actor`): a loop turn looks at
    /// these, not at every actor.
    pub(super) dirty: Vec<Id>,
    /// When every actor was last looked at (`ACTOR_SWEEP`).
    swept: Instant,
    /// Actors started with a name, while they live (`get_actor`).
    pub(super) named: std::collections::HashMap<String, Id>,
}

impl ActorTable {
    pub(super) fn new() -> ActorTable {
        ActorTable {
            by_id: IdMap::default(),
            dirty: Vec::new(),
            swept: Instant::now(),
            named: std::collections::HashMap::new(),
        }
    }
}

impl Scheduler {
    pub(super) fn actor_submitted(&mut self, slot: Option<u32>, id: Id, call: ActorCall) {
        if let ActorCall::Method { actor } = call {
            self.mark_actor(actor);
        }
        match call {
            ActorCall::Create {
                max_restarts,
                max_task_retries,
            } => {
                let (name, class, registered) = self
                    .tasks
                    .get(&id)
                    .map(|t| {
                        (
                            t.name.clone(),
                            t.spec.func.clone(),
                            t.spec.opts.name.clone(),
                        )
                    })
                    .unwrap_or_default();
                self.actors.by_id.insert(
                    id,
                    Actor {
                        name,
                        class,
                        slot: None,
                        ctor: None,
                        ctor_refs: Vec::new(),
                        phase: ActorPhase::Constructing,
                        calls: VecDeque::new(),
                        restarts_left: max_restarts,
                        max_task_retries,
                        freed: false,
                        dirty: false,
                    },
                );
                if let Some(n) = registered {
                    let taken = self.actors.named.get(&n).is_some_and(|other| {
                        self.actors
                            .by_id
                            .get(other)
                            .is_some_and(|a| a.dead().is_none())
                    });
                    if taken {
                        let why = format!("an actor named {n:?} lives already (names are unique)");
                        return self.actor_gone(id, why);
                    }
                    self.actors.named.insert(n, id);
                }
                match self.spawn_worker_for(Some(id)) {
                    Some(w) => {
                        if let Some(a) = self.actors.by_id.get_mut(&id) {
                            a.slot = Some(w);
                        }
                    }
                    None => self.actor_gone(id, "its process could not be forked".into()),
                }
            }
            ActorCall::Method { actor } => {
                let names_it = self.tasks.get(&id).is_some_and(
                    |t| matches!(t.spec.args.first(), Some(Arg::Ref(a)) if *a == actor),
                );
                if !names_it {
                    self.finish_task(
                        id,
                        Err(Error::Protocol(
                            "an actor call must name its actor first".into(),
                        )),
                    );
                    return self.bad(slot, "malformed actor call");
                }
                match self.actors.by_id.get_mut(&actor) {
                    Some(a) if a.dead().is_none() => a.calls.push_back(id),
                    Some(a) => {
                        let err = Error::ActorDied {
                            actor: a.name.clone(),
                            reason: a.dead().unwrap_or_default().to_string(),
                        };
                        self.finish_task(id, Err(err));
                    }
                    None => self.finish_task(
                        id,
                        Err(Error::Protocol(format!("object {actor:x} is not an actor"))),
                    ),
                }
            }
        }
    }

    /// Keeps the constructor's resolved arguments (and references to what they name) for
    /// restarts, the first time it starts.
    pub(super) fn keep_ctor(&mut self, id: Id, args: &[Payload]) {
        if self.actors.by_id.get(&id).is_none_or(|a| a.ctor.is_some()) {
            return;
        }
        let Some(t) = self.tasks.get(&id) else { return };
        let refs: Vec<Id> = t.spec.arg_ids().collect();
        let func = t.spec.func.clone();
        for &r in &refs {
            self.add_ref(r, 1);
        }
        if let Some(a) = self.actors.by_id.get_mut(&id) {
            a.ctor = Some((func, args.to_vec()));
            a.ctor_refs = refs;
        }
    }

    pub(super) fn actor_constructed(&mut self, id: Id, result: Result<(), &Error>) {
        match result {
            Ok(_) => {
                if let Some(a) = self.actors.by_id.get_mut(&id) {
                    if a.phase == ActorPhase::Constructing {
                        a.phase = ActorPhase::Constructed;
                    }
                }
            }
            Err(e) => self.actor_gone(id, format!("its constructor failed: {e}")),
        }
    }

    /// Notes that actor `id` may be able to start or queue a call (see `dispatch_actors`).
    pub(super) fn mark_actor(&mut self, id: Id) {
        if let Some(a) = self.actors.by_id.get_mut(&id) {
            if !std::mem::replace(&mut a.dirty, true) {
                self.actors.dirty.push(id);
            }
        }
    }

    /// Starts the constructor or starts or queues the next calls of the actors marked since the
    /// last turn (and, every `ACTOR_SWEEP` while the loop turns, of every actor): a turn costs
    /// the actors something happened to. The loop does not sleep while marks wait.
    pub(super) fn dispatch_actors(&mut self) {
        if self.actors.by_id.is_empty() {
            self.actors.dirty.clear();
            return;
        }
        let mut ids = std::mem::take(&mut self.actors.dirty);
        if self.actors.swept.elapsed() >= ACTOR_SWEEP {
            self.actors.swept = Instant::now();
            ids = self.actors.by_id.keys().copied().collect();
        }
        for &id in &ids {
            if let Some(a) = self.actors.by_id.get_mut(&id) {
                a.dirty = false;
            }
        }
        for id in ids {
            if self
                .actors
                .by_id
                .get(&id)
                .is_none_or(|a| a.dead().is_some())
            {
                continue;
            }
            let Some(slot) = self.actors.by_id.get(&id).and_then(|a| a.slot) else {
                continue;
            };
            let Some(w) = self.pool.workers.get(&slot) else {
                continue;
            };
            let idle = w.is_up() && w.stack.is_empty();
            let a = &self.actors.by_id[&id];
            // Rule 11: the next calls may wait on the worker behind the running one.
            let queue = a.is_constructed() && w.can_queue(0.0, self.cfg.pipeline_depth);
            if !(idle || queue) {
                continue;
            }
            if !a.is_constructed() {
                if let Some(t) = self.tasks.get(&id).filter(|t| t.state.is_unstarted()) {
                    // The first run (or a rerun after a crash before it finished).
                    if t.state == TaskState::Ready {
                        self.start_task(slot, id, 0.0);
                    }
                } else if let Some((func, args)) = a.ctor.clone() {
                    // A restart: the constructor again, on the new worker.
                    let name = a.name.clone();
                    let refs = a.ctor_refs.clone();
                    self.give(Some(slot), refs);
                    if let Some(w) = self.pool.workers.get_mut(&slot) {
                        w.stack
                            .push(Frame::new(id, 0.0, Held::default(), w.last_seq));
                    }
                    let run = RunTask {
                        task: id,
                        func,
                        name,
                        args,
                        extra: Vec::new(),
                        gpus: Vec::new(),
                        attempt: 1,
                        cpus: 1.0,
                        actor: Some(id),
                        moved: Vec::new(),
                    };
                    self.send_to(slot, &ToWorker::Run(run));
                }
                continue;
            }
            while let Some(&call) = self.actors.by_id.get(&id).and_then(|a| a.calls.front()) {
                match self.tasks.get(&call).map(|t| t.state) {
                    // Finished already (an argument failed): drop it.
                    None => {}
                    Some(TaskState::Ready) => {
                        self.actors.by_id.get_mut(&id).map(|a| a.calls.pop_front());
                        let Some(w) = self.pool.workers.get(&slot) else {
                            break;
                        };
                        if w.stack.is_empty() {
                            // It may fail at once (a failed argument): then take the next.
                            self.start_task(slot, call, 0.0);
                        } else {
                            self.queue_on(slot, call, 0.0);
                        }
                        if self.pool.workers.get(&slot).is_some_and(|w| {
                            w.stack.is_empty() || w.can_queue(0.0, self.cfg.pipeline_depth)
                        }) {
                            continue;
                        }
                        break;
                    }
                    // Submission order: later calls wait for this one's arguments.
                    Some(_) => break,
                }
                self.actors.by_id.get_mut(&id).map(|a| a.calls.pop_front());
            }
        }
    }

    /// The actor's worker died: fail the call it ran, then restart or give up.
    pub(super) fn actor_worker_died(&mut self, id: Id, stack: &[Frame], cause: &str) {
        let Some(a) = self.actors.by_id.get_mut(&id) else {
            return;
        };
        a.slot = None;
        if a.phase == ActorPhase::Constructed {
            a.phase = ActorPhase::Constructing;
        }
        let name = a.name.clone();
        let will_restart = a.dead().is_none() && !a.freed && a.restarts_left > 0;
        let retries = a.max_task_retries;
        // Calls to run again go back to the front, in their order (scheduler rule 8).
        let mut again = Vec::new();
        for f in stack.iter().filter(|f| f.task != id) {
            let call = self.tasks.get(&f.task);
            if call.is_some_and(|t| !t.may_run_again()) {
                // It held a writable window: what it wrote is unspecified (scheduler rule 12).
                let err = Error::WindowLost {
                    task: call.map(|t| t.name.clone()).unwrap_or_default(),
                    cause: cause.to_string(),
                };
                self.finish_task(f.task, Err(err));
                continue;
            }
            let retry = will_restart && call.is_some_and(|t| t.attempts <= retries);
            if retry {
                if let Some(t) = self.tasks.get_mut(&f.task) {
                    t.state = TaskState::Ready;
                    self.events.retried(f.task, &t.spec.func);
                }
                again.push(f.task);
                continue;
            }
            let err = Error::ActorDied {
                actor: name.clone(),
                reason: cause.to_string(),
            };
            self.finish_task(f.task, Err(err));
        }
        if let Some(a) = self.actors.by_id.get_mut(&id) {
            for t in again.into_iter().rev() {
                a.calls.push_front(t);
            }
        }
        if let Some(t) = self.tasks.get_mut(&id) {
            t.state = TaskState::Ready;
        }
        let Some(a) = self.actors.by_id.get_mut(&id) else {
            return;
        };
        if a.freed {
            self.actors.by_id.remove(&id);
            return;
        }
        if a.dead().is_none() && a.restarts_left > 0 {
            a.restarts_left -= 1;
            match self.spawn_worker_for(Some(id)) {
                Some(w) => {
                    if let Some(a) = self.actors.by_id.get_mut(&id) {
                        a.slot = Some(w);
                    }
                }
                None => self.actor_gone(id, "its process could not be forked again".into()),
            }
        } else {
            let reason = a.dead().unwrap_or(cause).to_string();
            self.actor_gone(id, reason);
        }
    }

    /// Ends an actor at once: SIGKILL its worker; no restart.
    pub(super) fn kill_actor(&mut self, id: Id, reason: &str) {
        let slot = self.actors.by_id.get(&id).and_then(|a| a.slot);
        self.actor_gone(id, reason.into());
        if let Some(slot) = slot {
            self.on_hangup(slot);
        }
    }

    /// No handle or call names the actor any more: its worker exits.
    pub(super) fn actor_freed(&mut self, id: Id) {
        if let Some(a) = self.actors.by_id.get_mut(&id) {
            a.freed = true;
        }
        self.actor_gone(id, "no handle to it is left".into());
    }

    /// The actor is gone for good: its queued calls (and an unfinished constructor) fail, its
    /// worker is told to exit, the constructor's kept arguments are released.
    pub(super) fn actor_gone(&mut self, id: Id, reason: String) {
        // Calls queued on its worker and not claimed fail with the others (scheduler rule 11).
        if let Some(slot) = self.actors.by_id.get(&id).and_then(|a| a.slot) {
            self.take_back_all(slot);
        }
        let Some(a) = self.actors.by_id.get_mut(&id) else {
            return;
        };
        let reason = match &a.phase {
            ActorPhase::Dead { reason } => reason.clone(),
            ActorPhase::Constructing | ActorPhase::Constructed => {
                a.phase = ActorPhase::Dead {
                    reason: reason.clone(),
                };
                reason
            }
        };
        a.restarts_left = 0;
        let calls: Vec<Id> = a.calls.drain(..).collect();
        let refs = std::mem::take(&mut a.ctor_refs);
        let (name, slot, freed) = (a.name.clone(), a.slot, a.freed);
        if self.actors.named.get(&name) == Some(&id) {
            self.actors.named.remove(&name);
        }
        let died = || Error::ActorDied {
            actor: name.clone(),
            reason: reason.clone(),
        };
        for c in calls {
            self.finish_task(c, Err(died()));
        }
        if self.tasks.get(&id).is_some_and(|t| t.state.is_unstarted()) {
            self.queue.retain(|&q| q != id);
            self.finish_task(id, Err(died()));
        }
        for r in refs {
            self.add_ref(r, -1);
        }
        match slot {
            Some(slot) => self.send_to(slot, &ToWorker::Exit),
            None if freed => {
                self.actors.by_id.remove(&id);
            }
            None => {}
        }
    }
}

impl Scheduler {
    /// The live actor named `name` and its constructor's function, for `get_actor`: the asker
    /// gets a reference to it (the new handle's).
    pub(super) fn get_actor(
        &mut self,
        slot: Option<u32>,
        name: &str,
    ) -> Result<(Id, String), Error> {
        let found = self
            .actors
            .named
            .get(name)
            .and_then(|id| self.actors.by_id.get(id).map(|a| (*id, a)))
            .filter(|(_, a)| a.dead().is_none() && !a.freed)
            .map(|(id, a)| (id, a.class.clone()));
        let Some((id, class)) = found else {
            return Err(Error::InvalidArgument(format!(
                "no live actor is named {name:?} (start one with T::options().name(..).remote(..))"
            )));
        };
        self.own(slot, id, 1);
        self.add_ref(id, 1);
        Ok((id, class))
    }
}
