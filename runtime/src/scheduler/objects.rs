//! The object directory: objects, their references (scheduler rule 3), their store memory and
//! who waits for them. Must not place tasks.

use rayfork_plasma::{ClientId, ObjectId};

use crate::protocol::{ActorCall, Id, Payload, Resolved};
use crate::{Error, client, timeline};

use super::Scheduler;
use super::requests::RequestKind;
use super::tasks::TaskState;

pub(super) enum ObjState {
    Pending,
    Ready(Payload),
    Failed(Error),
}

pub(super) struct Object {
    pub(super) refs: i64,
    pub(super) state: ObjState,
    /// Ids this object's bytes mention; each holds a ref (scheduler rule 3).
    pub(super) contained: Vec<Id>,
    /// Its store memory, if it has some.
    pub(super) mem: Mem,
    /// Who may read its value (scheduler rule 12).
    pub(super) reads: Reads,
    pub(super) waiters: Vec<Waiting>,
}

/// An object's store memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mem {
    /// None: its value is inline (or not written yet).
    None,
    /// Being written by the process that created it (a worker slot; `None` is the driver):
    /// only it may seal or abort it (scheduler rule 5).
    Unsealed { creator: Option<u32> },
    /// Unsealed and shared as windows (window.rs): each holder writes only its own window;
    /// any process that holds a reference may seal it; freed when the last reference goes
    /// (scheduler rule 12).
    Windows,
    /// Sealed: immutable.
    Sealed,
}

/// Who may read an object's value (scheduler rule 12).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Reads {
    /// Anyone, any number of times.
    Many,
    /// Its value holds a writable window: it is given out once.
    Once { taken: Option<Taker> },
}

/// Who took a read-once object: a task (as an argument or by `get`, in an attempt), or the
/// driver (`None`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Taker {
    pub(super) task: Option<Id>,
    pub(super) attempt: u32,
}

impl Object {
    /// A pending object with the one reference of the handle that names it.
    pub(super) fn pending() -> Object {
        Object {
            refs: 1,
            state: ObjState::Pending,
            contained: Vec::new(),
            mem: Mem::None,
            reads: Reads::Many,
            waiters: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Waiting {
    Request(u64),
    Task(Id),
    /// Index `1` of watch `0` (watches.rs).
    Watch(Id, u32),
}

impl Scheduler {
    /// Applies reference changes from a worker (or the driver), in order (rule 4 in
    /// protocol.rs). A worker may drop only references it holds: a drop below what its
    /// handles account for would free an object others still read, so it is a message the
    /// worker has no right to send (scheduler rule 5), and the worker is killed.
    pub(super) fn on_ref_ops(&mut self, slot: Option<u32>, ops: Vec<(Id, i32)>) {
        for (id, d) in ops {
            let d = i64::from(d);
            if let Some(s) = slot {
                let (held, given) = self.pool.workers.get(&s).map_or((0, false), |w| {
                    (w.held.get(&id).copied().unwrap_or(0), w.given.contains(&id))
                });
                if held + d < 0 {
                    let why = format!("it dropped {} references to {id:x} but holds {held}", -d);
                    return self.kill_worker(s, &why);
                }
                if d > 0 && held == 0 && !given {
                    let why = format!("it took a reference to {id:x}, which it was never given");
                    return self.kill_worker(s, &why);
                }
            }
            self.own(slot, id, d);
            self.add_ref(id, d);
        }
    }

    /// Records that worker `slot` holds `d` more references to `id` (scheduler rule 3).
    pub(super) fn own(&mut self, slot: Option<u32>, id: Id, d: i64) {
        if let Some(w) = slot.and_then(|s| self.pool.workers.get_mut(&s)) {
            let e = w.held.entry(id).or_insert(0);
            *e += d;
            if *e == 0 {
                w.held.remove(&id);
            }
        }
    }

    pub(super) fn add_ref(&mut self, id: Id, d: i64) {
        let Some(o) = self.objects.get_mut(&id) else {
            return;
        };
        o.refs += d;
        if o.refs <= 0 {
            self.free(id);
        }
    }

    pub(super) fn free(&mut self, id: Id) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if self.is_live_return(id) {
                // Kept (with no refs) until its task ends: the task runs whether or not anyone
                // holds its result, and its worker may write it; it is freed when it resolves
                // (scheduler rule 6). A generator's stream is abandoned now: nobody can take
                // its items (scheduler rule 10).
                self.abandon_stream(id);
                continue;
            }
            let Some(o) = self.objects.remove(&id) else {
                continue;
            };
            if self.actors.by_id.contains_key(&id) {
                self.actor_freed(id);
            }
            if let Some(st) = self.streams.remove(&id) {
                for item in st.items.into_iter().flatten() {
                    self.add_ref(item, -1);
                }
            }
            if o.mem != Mem::None {
                self.release_memory(id, o.mem == Mem::Sealed);
            }
            for c in o.contained {
                if let Some(co) = self.objects.get_mut(&c) {
                    co.refs -= 1;
                    if co.refs <= 0 {
                        stack.push(c);
                    }
                }
            }
        }
    }

    /// Gives an object's store memory back: deleted if sealed (freed once unpinned), aborted
    /// if its writer never sealed it.
    pub(super) fn release_memory(&mut self, id: Id, sealed: bool) {
        let oid = ObjectId::from_u128(id);
        let released = if sealed {
            self.store.delete(oid)
        } else {
            self.store.abort(oid)
        };
        // The directory says the store holds it: a refusal is a divergence, a bug.
        debug_assert!(
            released.is_ok(),
            "the store refused to release {id:x} (sealed: {sealed}): {released:?}"
        );
    }

    /// A small value put inline (`rayfork::put`, or a large argument's bytes): ready at once,
    /// owned by its putter's handle.
    pub(super) fn put(&mut self, slot: Option<u32>, id: Id, bytes: Vec<u8>, contained: Vec<Id>) {
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
                reads: self.reads_of(&contained),
                contained,
                ..Object::pending()
            },
        );
        self.own(slot, id, 1);
    }

    pub(super) fn create(
        &mut self,
        slot: Option<u32>,
        id: Id,
        size: u64,
    ) -> Result<(u64, u64), Error> {
        let client = ClientId(slot.unwrap_or(0));
        let oid = ObjectId::from_u128(id);
        // A large task result is written under the task's own id by the worker running it.
        if let Some(o) = self.objects.get(&id) {
            let runs_it = self
                .tasks
                .get(&self.task_of_return(id))
                .is_some_and(|t| slot.is_some() && t.state.worker() == slot);
            if !(runs_it && matches!(o.state, ObjState::Pending) && o.mem == Mem::None) {
                return Err(Error::Protocol(format!(
                    "create of an existing object {id:x}"
                )));
            }
            let d = self.store.create(oid, size, client)?;
            let o = self.objects.get_mut(&id).expect("checked above");
            o.mem = Mem::Unsealed { creator: slot };
            return Ok((d.offset, d.len));
        }
        // A result of a task this worker runs whose refs were all dropped before it started:
        // written with no ref, and freed when it resolves (scheduler rule 6).
        let orphan = self
            .tasks
            .get(&self.task_of_return(id))
            .is_some_and(|t| slot.is_some() && t.state.worker() == slot);
        let d = self.store.create(oid, size, client)?;
        let created = Object {
            mem: Mem::Unsealed { creator: slot },
            ..Object::pending()
        };
        if orphan {
            self.objects.insert(id, Object { refs: 0, ..created });
            return Ok((d.offset, d.len));
        }
        self.objects.insert(id, created);
        self.own(slot, id, 1);
        Ok((d.offset, d.len))
    }

    /// True if `id` has store memory that `slot` (the driver for `None`) created and has not
    /// sealed: only then may it abort it, or share it as windows (scheduler rule 5).
    fn is_unsealed_of(&self, slot: Option<u32>, id: Id) -> bool {
        self.objects
            .get(&id)
            .is_some_and(|o| o.mem == Mem::Unsealed { creator: slot })
    }

    /// True if `slot` may seal `id`: it created it, or `id` is shared as windows and `slot`
    /// holds a reference to it (scheduler rules 5, 12).
    fn may_seal(&self, slot: Option<u32>, id: Id) -> bool {
        let windows = self.objects.get(&id).is_some_and(|o| o.mem == Mem::Windows);
        self.is_unsealed_of(slot, id) || (windows && self.holds(slot, id))
    }

    /// True if `slot` holds a reference to `id` (the driver is trusted: always).
    /// True if worker `slot` names only objects it holds a reference to or was given (the
    /// driver is trusted); else it is killed (scheduler rule 5): a worker that could read any
    /// object by its number would be given it, and could then take references to it.
    pub(super) fn names_only_what_it_holds(&mut self, slot: Option<u32>, ids: &[Id]) -> bool {
        let Some(s) = slot else { return true };
        let Some(w) = self.pool.workers.get(&s) else {
            return false;
        };
        let stranger = ids
            .iter()
            .find(|id| !w.given.contains(id) && w.held.get(id).is_none_or(|&n| n <= 0));
        if let Some(id) = stranger {
            let why = format!("it asked for {id:x}, which it neither holds nor was given");
            self.kill_worker(s, &why);
            return false;
        }
        true
    }

    fn holds(&self, slot: Option<u32>, id: Id) -> bool {
        slot.is_none_or(|s| {
            self.pool
                .workers
                .get(&s)
                .is_some_and(|w| w.held.get(&id).is_some_and(|&n| n > 0))
        })
    }

    /// Makes an unsealed object `slot` created shared as windows (scheduler rule 12): from
    /// now on it lives while anyone holds a reference, whoever made it.
    pub(super) fn share(&mut self, slot: Option<u32>, id: Id) {
        if !self.is_unsealed_of(slot, id) || self.tasks.contains_key(&self.task_of_return(id)) {
            return self.bad(slot, "share of an object it did not create");
        }
        let client = ClientId(slot.unwrap_or(0));
        if self.store.share(ObjectId::from_u128(id), client).is_err() {
            return self.bad(slot, "share refused by the store");
        }
        if let Some(o) = self.objects.get_mut(&id) {
            o.mem = Mem::Windows;
        }
    }

    /// How an object whose bytes mention `contained` may be read: once if it holds a window
    /// (it mentions an object shared as windows), else freely (scheduler rule 12).
    pub(super) fn reads_of(&self, contained: &[Id]) -> Reads {
        let window = contained
            .iter()
            .any(|c| self.objects.get(c).is_some_and(|o| o.mem == Mem::Windows));
        if window {
            Reads::Once { taken: None }
        } else {
            Reads::Many
        }
    }

    /// True if `id` is (or its value holds) a writable window (scheduler rule 12).
    pub(super) fn is_window(&self, id: Id) -> bool {
        self.objects
            .get(&id)
            .is_some_and(|o| o.mem == Mem::Windows || o.reads != Reads::Many)
    }

    /// Gives the values of `ids` to `taker` if their reads allow, all or none (scheduler rule
    /// 12): a read-once object goes to one taker; the same task may take it again as an
    /// argument (`as_arg`: it is re-sent when the task is re-dispatched) or by `get` in a
    /// later run. An id named twice is refused if read-once (two windows over one range).
    pub(super) fn take(&mut self, ids: &[Id], taker: Taker, as_arg: bool) -> Result<(), Error> {
        let once: Vec<Id> = ids
            .iter()
            .copied()
            .filter(|id| self.objects.get(id).is_some_and(|o| o.reads != Reads::Many))
            .collect();
        if once.is_empty() {
            return Ok(());
        }
        for (i, &id) in once.iter().enumerate() {
            if once[..i].contains(&id) {
                return Err(Error::WindowTaken {
                    id,
                    taker: "the same call (it names the object twice)".to_string(),
                });
            }
            let Some(Reads::Once { taken: Some(t) }) = self.objects.get(&id).map(|o| o.reads)
            else {
                continue;
            };
            let again =
                t.task.is_some() && t.task == taker.task && (as_arg || t.attempt < taker.attempt);
            if !again {
                let taker = match t.task.and_then(|task| self.tasks.get(&task)) {
                    Some(task) => format!("task {}", task.name),
                    None if t.task.is_some() => "a task that has ended".to_string(),
                    None => "the driver".to_string(),
                };
                return Err(Error::WindowTaken { id, taker });
            }
        }
        for id in once {
            if let Some(o) = self.objects.get_mut(&id) {
                o.reads = Reads::Once { taken: Some(taker) };
            }
        }
        if let Some(t) = taker.task.and_then(|task| self.tasks.get_mut(&task)) {
            t.holds_window = true;
        }
        Ok(())
    }

    /// Records that worker `slot` was given `ids` and whatever their values mention: it may
    /// take references to them (scheduler rule 5).
    pub(super) fn give(&mut self, slot: Option<u32>, ids: impl IntoIterator<Item = Id>) {
        let Some(s) = slot else { return };
        let mut all = Vec::new();
        for id in ids {
            all.push(id);
            if let Some(o) = self.objects.get(&id) {
                all.extend_from_slice(&o.contained);
            }
        }
        if let Some(w) = self.pool.workers.get_mut(&s) {
            w.given.extend(all);
        }
    }

    /// `give` of a task's arguments to the worker `slot` that runs it (or will).
    pub(super) fn give_args(&mut self, slot: u32, task: Id) {
        let args: Vec<Id> = self
            .tasks
            .get(&task)
            .map(|t| t.spec.arg_ids().collect())
            .unwrap_or_default();
        self.give(Some(slot), args);
    }

    /// Who a request of `slot` takes for: the task on top of its stack in its current attempt,
    /// or the driver.
    pub(super) fn taker_of(&self, slot: Option<u32>) -> Taker {
        let task = slot
            .and_then(|s| self.pool.workers.get(&s))
            .and_then(|w| w.stack.last())
            .map(|f| f.task);
        let attempt = task.and_then(|t| self.tasks.get(&t)).map_or(0, |t| t.runs);
        Taker { task, attempt }
    }

    pub(super) fn seal(&mut self, slot: Option<u32>, id: Id, contained: Vec<Id>) {
        let sealed = self.objects.get(&id).is_some_and(|o| o.mem == Mem::Sealed);
        if sealed && contained.is_empty() && self.holds(slot, id) {
            // A second "whole" window of an empty array sealed it already: nothing to do.
            return;
        }
        if !self.may_seal(slot, id) {
            return self.bad(slot, "seal of an object it did not create");
        }
        if self.store.seal(ObjectId::from_u128(id)).is_err() {
            return self.bad(slot, "seal refused by the store");
        }
        for &c in &contained {
            self.own(slot, c, -1);
        }
        let d = self.store.descriptor(ObjectId::from_u128(id));
        let is_task_result = self.tasks.contains_key(&self.task_of_return(id));
        let reads = self.reads_of(&contained);
        let o = self.objects.get_mut(&id).expect("checked above");
        o.mem = Mem::Sealed;
        o.reads = reads;
        o.contained = contained;
        if !is_task_result {
            if let Some(d) = d {
                o.state = ObjState::Ready(Payload::Stored {
                    offset: d.offset,
                    len: d.len,
                });
                self.notify(id);
            }
        }
    }

    pub(super) fn abort(&mut self, slot: Option<u32>, id: Id) {
        if !self.is_unsealed_of(slot, id) {
            return self.bad(slot, "abort of an object it did not create");
        }
        let _ = self.store.abort(ObjectId::from_u128(id));
        if self.tasks.contains_key(&self.task_of_return(id)) {
            if let Some(o) = self.objects.get_mut(&id) {
                o.mem = Mem::None;
            }
        } else {
            self.own(slot, id, -1);
            if let Some(o) = self.objects.remove(&id) {
                for c in o.contained {
                    self.add_ref(c, -1);
                }
            }
        }
    }

    pub(super) fn notify(&mut self, id: Id) {
        let waiters = match self.objects.get_mut(&id) {
            Some(o) => std::mem::take(&mut o.waiters),
            None => return,
        };
        let failed = match self.objects.get(&id).map(|o| &o.state) {
            Some(ObjState::Failed(e)) => Some(e.clone()),
            _ => None,
        };
        for w in waiters {
            match w {
                Waiting::Task(t) => {
                    if let Some(err) = &failed {
                        // A task whose argument failed fails with that error, unrun.
                        if self.tasks.get(&t).is_some_and(|t| t.state.is_unstarted()) {
                            self.queue.retain(|&q| q != t);
                            self.finish_task_as(t, Err(err.clone()), timeline::RunEnd::Failed);
                        }
                        continue;
                    }
                    if let Some(task) = self.tasks.get_mut(&t) {
                        let TaskState::WaitingArgs { missing } = task.state else {
                            debug_assert!(false, "an argument of a task that waits for none");
                            continue;
                        };
                        task.state = match missing {
                            0 | 1 => TaskState::Ready,
                            _ => TaskState::WaitingArgs {
                                missing: missing - 1,
                            },
                        };
                        if task.state == TaskState::Ready {
                            match task.spec.actor {
                                None => self.queue.push_back(t),
                                Some(ActorCall::Method { actor }) => self.mark_actor(actor),
                                Some(ActorCall::Create { .. }) => self.mark_actor(t),
                            }
                        }
                    }
                }
                Waiting::Request(rid) => {
                    let done = match self.requests.get_mut(&rid) {
                        Some(r) => {
                            r.missing = r.missing.saturating_sub(1);
                            match r.kind {
                                // As soon as one fails (as Ray's `get` of a list).
                                RequestKind::Get => r.missing == 0 || failed.is_some(),
                                RequestKind::Wait { need } => r.ids.len() - r.missing >= need,
                                // The stream ended (scheduler rule 10).
                                RequestKind::Next { .. } => r.missing == 0,
                                // Only the caller taking items makes room.
                                RequestKind::YieldRoom => false,
                                // Registered on no object: its watch wakes it.
                                RequestKind::Ready { .. } => false,
                            }
                        }
                        None => false,
                    };
                    if done {
                        self.complete_request(rid, None);
                    }
                }
                Waiting::Watch(watch, index) => self.watched_ready(watch, index),
            }
        }
    }

    pub(super) fn is_ready(&self, id: Id) -> bool {
        self.objects
            .get(&id)
            .is_none_or(|o| !matches!(o.state, ObjState::Pending))
    }

    /// True if reading `id` gives an error now: it failed, or there is no such object.
    pub(super) fn is_failed(&self, id: Id) -> bool {
        self.objects
            .get(&id)
            .is_none_or(|o| matches!(o.state, ObjState::Failed(_)))
    }

    pub(super) fn resolve(&self, id: Id) -> Resolved {
        match self.objects.get(&id).map(|o| &o.state) {
            Some(ObjState::Ready(p)) => Resolved::Value(p.clone()),
            Some(ObjState::Failed(e)) => Resolved::Error(e.clone()),
            Some(ObjState::Pending) => Resolved::Pending,
            None => Resolved::Error(self.not_found(id)),
        }
    }

    /// The error for an id this runtime has no object for: one of another runtime of the
    /// process (its top bits say which, `IdGen`), or one whose last reference was dropped.
    pub(super) fn not_found(&self, id: Id) -> Error {
        let owner = client::runtime_of(id);
        let reason = if owner != self.runtime {
            format!(
                "it belongs to runtime {owner} of this process, not to this one ({}); a ref \
                 works only in the runtime that made it",
                self.runtime
            )
        } else {
            "its last reference was dropped (or it was never created)".to_string()
        };
        Error::ObjectNotFound {
            id: format!("{id:032x}"),
            reason,
        }
    }
}
