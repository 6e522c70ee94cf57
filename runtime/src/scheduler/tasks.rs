//! The task table: submission, results and retries, multiple returns (scheduler rules 4, 6).
//! Must not pick workers.

use rayfork_plasma::ObjectId;

use crate::protocol::{ActorCall, Arg, Id, Outcome, Payload, ReturnValue, TaskOpts, TaskSpec};
use crate::{Error, timeline};

use super::Scheduler;
use super::objects::{Mem, ObjState, Object, Waiting};
use super::streams::Stream;

/// Where an unfinished task stands. A finished, failed or cancelled task leaves the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskState {
    /// Waits for `missing` of its argument objects.
    WaitingArgs { missing: usize },
    /// Can start: in the queue, in its actor's calls, or waiting to be retried.
    Ready,
    /// Queued on busy worker `slot` (scheduler rule 11): not started, holds nothing.
    QueuedOn { slot: u32 },
    /// On worker `slot`'s stack, running or blocked; `cancel_requested` once it was asked to
    /// stop (scheduler rule 9): it then resolves to `TaskCancelled` whatever it returns.
    Running { slot: u32, cancel_requested: bool },
}

impl TaskState {
    /// The worker it is on (running or queued there), if any.
    pub(super) fn worker(self) -> Option<u32> {
        match self {
            TaskState::QueuedOn { slot } | TaskState::Running { slot, .. } => Some(slot),
            TaskState::WaitingArgs { .. } | TaskState::Ready => None,
        }
    }

    /// True if it has not started and is on no worker: it can be dropped or failed unrun.
    pub(super) fn is_unstarted(self) -> bool {
        self.worker().is_none()
    }

    /// True while it waits on a busy worker (scheduler rule 11).
    pub(super) fn is_queued(self) -> bool {
        matches!(self, TaskState::QueuedOn { .. })
    }

    /// True if it runs on worker `slot` and was asked to stop.
    pub(super) fn is_cancel_requested(self) -> bool {
        matches!(
            self,
            TaskState::Running {
                cancel_requested: true,
                ..
            }
        )
    }
}

/// A task of the table.
pub(super) struct Task {
    pub(super) spec: TaskSpec,
    /// Its name in errors and the timeline (`opts.name`, else the function's).
    pub(super) name: String,
    pub(super) state: TaskState,
    /// Attempts started, the current one included.
    pub(super) attempts: u32,
    /// Runs started, each counted once (an attempt given back is a new run): who took a
    /// read-once object, and when (scheduler rule 12).
    pub(super) runs: u32,
    /// The task on whose frame it was submitted, for a recursive cancel.
    pub(super) parent: Option<Id>,
    /// It was given a writable window: as an argument, or by a `get` (scheduler rule 12).
    pub(super) holds_window: bool,
    /// A task it submitted was given a window (scheduler rule 12): it is never run again.
    pub(super) gave_window: bool,
    /// Its arguments' references were moved to its worker (scheduler rule 13): it cannot run
    /// again, and its end releases nothing.
    pub(super) args_moved: bool,
}

impl Task {
    fn new(spec: TaskSpec, parent: Option<Id>, missing: usize) -> Task {
        let name = spec.opts.name.clone().unwrap_or_else(|| spec.func.clone());
        let state = match missing {
            0 => TaskState::Ready,
            missing => TaskState::WaitingArgs { missing },
        };
        Task {
            spec,
            name,
            state,
            attempts: 0,
            runs: 0,
            parent,
            holds_window: false,
            gave_window: false,
            args_moved: false,
        }
    }

    /// The error of this task once cancelled (scheduler rule 9).
    pub(super) fn cancelled_error(&self) -> Error {
        Error::TaskCancelled {
            task: self.name.clone(),
        }
    }

    /// True if a failed attempt may be tried again (scheduler rule 4): attempts remain, and no
    /// window forbids it (scheduler rule 12). A generator's retry skips the items its caller
    /// has (scheduler rule 10).
    pub(super) fn may_retry(&self) -> bool {
        self.attempts <= self.spec.opts.max_retries && self.may_run_again()
    }

    /// False if it held a writable window and may not run again (scheduler rule 12): it was
    /// not declared restartable, or it gave a window to a task of its own.
    pub(super) fn may_run_again(&self) -> bool {
        !self.holds_window || (self.spec.opts.restartable && !self.gave_window)
    }
}

/// What becomes of a task whose worker died under it (scheduler rules 4 and 9), decided by
/// `Scheduler::loss_of` and carried out by `Scheduler::settle_loss`.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterLoss {
    /// It left the table already: nothing to do.
    Gone,
    /// It was asked to stop: it resolves to `TaskCancelled`, never retried (scheduler rule 9).
    Cancelled,
    /// An innocent frame of a worker killed for another task's cancel: it goes again, at the
    /// front of the queue, with its attempt given back (scheduler rule 9).
    Resubmit,
    /// A crash with attempts left: it goes again, at the front of the queue (scheduler rule 4).
    Retry,
    /// A crash with no attempt left (or a generator): `WorkerCrashed`.
    Fail,
    /// A crash (or a kill) while it held a writable window, and it may not run again:
    /// `WindowLost` (scheduler rule 12).
    WindowLost,
}

impl Scheduler {
    pub(super) fn submit(&mut self, slot: Option<u32>, spec: TaskSpec) {
        let id = spec.ret;
        if self.objects.contains_key(&id) || self.tasks.contains_key(&id) {
            return self.bad(slot, "submit of an id that exists");
        }
        if !self.extra_ids_fresh(&spec) {
            return self.bad(slot, "submit with a return id that exists or repeats");
        }
        if spec.opts.task_events {
            self.events.submitted(id);
        }
        // The references the spec mentions move from the submitter to the task (scheduler rule 4).
        for c in spec.arg_ids() {
            self.own(slot, c, -1);
        }
        self.objects.insert(id, Object::pending());
        self.own(slot, id, 1);
        self.add_extra_returns(slot, &spec);
        let parent = slot
            .and_then(|s| self.pool.workers.get(&s))
            .and_then(|w| w.stack.last())
            .map(|f| f.task);
        let name = spec.opts.name.as_deref().unwrap_or(&spec.func);
        let holds_window = spec.arg_ids().any(|c| self.is_window(c));
        let mut never = self.res.never_fits(name, &spec.opts);
        // A value that mentions an object this runtime does not have (an `Array` or `Window`
        // of another runtime, whose offsets mean nothing here) fails the task, as a ref would.
        let foreign = spec.args.iter().find_map(|a| match a {
            Arg::Value { contained, .. } => contained
                .iter()
                .copied()
                .find(|c| !self.objects.contains_key(c)),
            Arg::Ref(_) => None,
        });
        if let Some(c) = foreign {
            never = Some(self.not_found(c));
        }
        if holds_window && matches!(spec.actor, Some(ActorCall::Create { .. })) {
            never = Some(Error::InvalidArgument(format!(
                "actor {name} was given a writable window: an actor's constructor may run again \
                 (restarts), so it cannot hold one; pass windows to its methods or to tasks"
            )));
        }
        if let Some(err) = never {
            self.tasks.insert(id, Task::new(spec, parent, 0));
            return self.finish_task(id, Err(err));
        }
        if holds_window {
            if let Some(p) = parent.and_then(|p| self.tasks.get_mut(&p)) {
                p.gave_window = true;
            }
        }
        let mut missing = 0;
        for a in &spec.args {
            if let Arg::Ref(r) = a {
                match self.objects.get_mut(r) {
                    Some(o) if matches!(o.state, ObjState::Pending) => {
                        o.waiters.push(Waiting::Task(id));
                        missing += 1;
                    }
                    Some(_) => {}
                    None => {
                        let err = self.not_found(*r);
                        self.tasks.insert(id, Task::new(spec, parent, 0));
                        return self.finish_task(id, Err(err));
                    }
                }
            }
        }
        let actor = spec.actor;
        if let Some(bound) = spec.opts.streaming {
            self.streams.insert(
                id,
                Stream {
                    items: Vec::new(),
                    taken: 0,
                    bound,
                    waiting: Vec::new(),
                    abandoned: false,
                    this_attempt: 0,
                },
            );
        }
        let mut task = Task::new(spec, parent, missing);
        task.holds_window = holds_window;
        self.tasks.insert(id, task);
        if let Some(call) = actor {
            return self.actor_submitted(slot, id, call);
        }
        if missing == 0 {
            self.queue.push_back(id);
        }
    }

    /// The fate of `task`, which was on the stack of worker `slot` when it died.
    pub(super) fn loss_of(&self, slot: u32, task: Id) -> AfterLoss {
        let Some(t) = self.tasks.get(&task) else {
            return AfterLoss::Gone;
        };
        if t.state.is_cancel_requested() {
            AfterLoss::Cancelled
        } else if !t.may_run_again() {
            AfterLoss::WindowLost
        } else if self.cancel.killed.contains(&slot) {
            // Its arguments were moved to its worker (scheduler rule 13): it can run again
            // only if they all still exist (their refs are taken back before the worker's go).
            let args_gone =
                t.args_moved && !t.spec.arg_ids().all(|a| self.objects.contains_key(&a));
            if args_gone {
                AfterLoss::Fail
            } else {
                AfterLoss::Resubmit
            }
        } else if t.may_retry() {
            AfterLoss::Retry
        } else {
            AfterLoss::Fail
        }
    }

    /// Carries out `verdict` for `task`, lost with its worker; `crash` says how it died.
    pub(super) fn settle_loss(&mut self, task: Id, verdict: AfterLoss, crash: &str) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        t.state = TaskState::Ready;
        match verdict {
            AfterLoss::Gone => {}
            AfterLoss::Cancelled => {
                let err = t.cancelled_error();
                self.finish_task(task, Err(err));
            }
            AfterLoss::Resubmit | AfterLoss::Retry => {
                if std::mem::take(&mut t.args_moved) {
                    // The task's own references again (scheduler rule 13).
                    let args: Vec<Id> = t.spec.arg_ids().collect();
                    for a in args {
                        self.add_ref(a, 1);
                    }
                }
                let Some(t) = self.tasks.get_mut(&task) else {
                    return;
                };
                if verdict == AfterLoss::Resubmit {
                    debug_assert!(t.attempts > 0, "a started task with no attempt");
                    t.attempts = t.attempts.saturating_sub(1);
                } else {
                    self.events.retried(task, &t.spec.func);
                }
                self.reset_returns(task);
                self.queue.push_front(task);
            }
            AfterLoss::WindowLost => {
                let err = Error::WindowLost {
                    task: t.name.clone(),
                    cause: crash.to_string(),
                };
                self.finish_task(task, Err(err));
            }
            AfterLoss::Fail => {
                let err = Error::WorkerCrashed {
                    task: t.name.clone(),
                    attempts: t.attempts,
                    cause: crash.to_string(),
                };
                self.finish_task(task, Err(err));
            }
        }
    }

    /// Gives the task's argument references back (scheduler rule 3).
    pub(super) fn release_task_args(&mut self, id: Id) {
        let Some(t) = self.tasks.get(&id) else { return };
        if t.args_moved {
            return;
        }
        let ids: Vec<Id> = t.spec.arg_ids().collect();
        for r in ids {
            self.add_ref(r, -1);
        }
    }

    /// Stores a task's final result and wakes whoever waits for it. An error fails all its return
    /// objects (scheduler rule 6); values of extra returns are set by `finish_task_all` first.
    pub(super) fn finish_task(&mut self, id: Id, result: Result<ReturnValue, Error>) {
        let outcome = timeline::RunEnd::of(&result);
        self.finish_task_as(id, result, outcome);
    }

    /// `finish_task`, counted in the summary as `outcome` (a task whose argument failed is
    /// `Failed`, whatever error it passes on).
    pub(super) fn finish_task_as(
        &mut self,
        id: Id,
        result: Result<ReturnValue, Error>,
        outcome: timeline::RunEnd,
    ) {
        self.release_task_args(id);
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        self.events
            .finished(id, &task.spec.func, &task.name, Some(outcome));
        // A call that ends unrun (cancelled, a failed argument) may unblock the calls behind it.
        if let Some(ActorCall::Method { actor }) = task.spec.actor {
            self.mark_actor(actor);
        }
        for x in task.spec.extra {
            self.extra_of.remove(&x);
            if let Err(e) = &result {
                self.resolve_return(x, Err(e.clone()));
            }
        }
        // An actor whose constructor failed (also unrun: a failed argument, a cancel) is gone,
        // so that later calls fail instead of waiting for it (scheduler rule 8).
        let ctor_failed = match &result {
            Err(e)
                if self
                    .actors
                    .by_id
                    .get(&id)
                    .is_some_and(|a| a.dead().is_none()) =>
            {
                Some(e.clone())
            }
            _ => None,
        };
        self.resolve_return(id, result);
        if let Some(e) = ctor_failed {
            self.actor_gone(id, format!("its constructor failed: {e}"));
        }
    }

    /// Stores the value (or error) of one return object and wakes whoever waits for it.
    pub(super) fn resolve_return(&mut self, id: Id, result: Result<ReturnValue, Error>) {
        let reads = match &result {
            Ok(value) => self.reads_of(&value.contained),
            Err(_) => super::objects::Reads::Many,
        };
        let Some(o) = self.objects.get_mut(&id) else {
            // Nobody holds the result: drop what it mentions.
            if let Ok(value) = result {
                for c in value.contained {
                    self.add_ref(c, -1);
                }
            }
            return;
        };
        match result {
            Ok(value) => {
                o.state = ObjState::Ready(value.payload);
                o.contained = value.contained;
                o.reads = reads;
            }
            Err(e) => {
                o.state = ObjState::Failed(e);
                let mem = std::mem::replace(&mut o.mem, Mem::None);
                if mem != Mem::None {
                    self.release_memory(id, mem == Mem::Sealed);
                }
            }
        }
        self.notify(id);
        // Nobody held it while its task ran (scheduler rule 6): free it now.
        if self.objects.get(&id).is_some_and(|o| o.refs <= 0) {
            self.free(id);
        }
    }

    pub(super) fn on_done(&mut self, slot: u32, task: Id, outcome: Outcome) {
        let on_top = self
            .pool
            .workers
            .get(&slot)
            .is_some_and(|w| w.runs_on_top(task));
        if !on_top {
            return self.kill_worker(slot, "done for a task it was not running");
        }
        // Validate before touching any state, so a kill leaves the task on the worker's stack
        // for the death handler (scheduler rule 5).
        let result = match outcome {
            Outcome::Ok { payload, contained } => Ok(vec![ReturnValue { payload, contained }]),
            Outcome::Many(values) => Ok(values),
            Outcome::Err(e) => Err(e),
        };
        let result = match result {
            Ok(values) => match self.checked_returns(task, values) {
                Ok(values) => Ok(values),
                Err(why) => return self.kill_worker(slot, why),
            },
            Err(e) => Err(e),
        };
        if let Ok(values) = &result {
            for value in values {
                for &c in &value.contained {
                    self.own(Some(slot), c, -1);
                }
            }
        }
        let w = self.pool.workers.get_mut(&slot).expect("checked above");
        let frame = w.stack.pop().expect("checked above");
        if w.stack.is_empty() {
            // Every task queued before this one was sent is settled on the worker (scheduler rule
            // 11).
            w.settled = w.settled.max(frame.mark);
        }
        self.res.give_cpus(frame.cpus);
        let result = self.cancelled_result(task, result);
        self.res.release(&frame.other);
        self.count_call(slot, task);
        if self.pool.workers.get(&slot).and_then(|w| w.actor) == Some(task) {
            self.actor_constructed(task, result.as_ref().map(|_| ()));
        }
        if let Some(t) = self.tasks.get_mut(&task) {
            t.state = TaskState::Ready;
            self.events
                .ended(task, &t.name, timeline::RunEnd::of(&result));
            let retry =
                matches!(&result, Err(e) if retries_error(&t.spec.opts, e)) && t.may_retry();
            if retry {
                self.queue.push_front(task);
            } else {
                self.finish_task_all(task, result);
            }
        }
        self.after_pop(slot);
    }

    /// The task that returns object `id` (`id` itself unless it is an extra return).
    pub(super) fn task_of_return(&self, id: Id) -> Id {
        self.extra_of.get(&id).copied().unwrap_or(id)
    }

    /// True if `id` is a pending return object of a task that has not ended, started or not
    /// (scheduler rule 6).
    pub(super) fn is_live_return(&self, id: Id) -> bool {
        self.objects
            .get(&id)
            .is_some_and(|o| matches!(o.state, ObjState::Pending))
            && self.tasks.contains_key(&self.task_of_return(id))
    }

    /// True if the spec's extra return ids are new and distinct (rule 3 in protocol.rs).
    pub(super) fn extra_ids_fresh(&self, spec: &TaskSpec) -> bool {
        let mut seen = std::collections::HashSet::new();
        seen.insert(spec.ret);
        spec.extra.iter().all(|&x| {
            seen.insert(x) && !self.objects.contains_key(&x) && !self.tasks.contains_key(&x)
        })
    }

    /// Creates the pending extra return objects of a task, each owned by the submitter's
    /// handle (rule 5 in protocol.rs).
    pub(super) fn add_extra_returns(&mut self, slot: Option<u32>, spec: &TaskSpec) {
        for &x in &spec.extra {
            self.objects.insert(x, Object::pending());
            self.own(slot, x, 1);
            self.extra_of.insert(x, spec.ret);
        }
    }

    /// The return values of a `Done`, checked against the task (scheduler rules 5 and 6): one per
    /// return id, and each stored one sealed under its own id. Stored payloads are replaced by the
    /// store's own descriptor. The error says why the worker must be killed.
    pub(super) fn checked_returns(
        &self,
        task: Id,
        values: Vec<ReturnValue>,
    ) -> Result<Vec<ReturnValue>, &'static str> {
        let extra = self.tasks.get(&task).map_or(&[][..], |t| &t.spec.extra[..]);
        if values.len() != extra.len() + 1 {
            return Err("done with the wrong number of return values");
        }
        let ids = std::iter::once(task).chain(extra.iter().copied());
        ids.zip(values)
            .map(|(id, value)| match value.payload {
                Payload::Stored { .. } => {
                    let sealed = self.objects.get(&id).is_some_and(|o| o.mem == Mem::Sealed);
                    match self.store.descriptor(ObjectId::from_u128(id)) {
                        Some(d) if sealed => Ok(ReturnValue {
                            payload: Payload::Stored {
                                offset: d.offset,
                                len: d.len,
                            },
                            contained: value.contained,
                        }),
                        _ => Err("stored result not sealed"),
                    }
                }
                inline => Ok(ReturnValue {
                    payload: inline,
                    contained: value.contained,
                }),
            })
            .collect()
    }

    /// Finishes a task with all its return values, checked by `checked_returns` (scheduler rule 6).
    pub(super) fn finish_task_all(&mut self, task: Id, result: Result<Vec<ReturnValue>, Error>) {
        let mut values = match result {
            Ok(v) => v,
            Err(e) => return self.finish_task(task, Err(e)),
        };
        let rest = values.split_off(values.len().min(1));
        let extra = self
            .tasks
            .get(&task)
            .map(|t| t.spec.extra.clone())
            .unwrap_or_default();
        for (x, v) in extra.into_iter().zip(rest) {
            self.resolve_return(x, Ok(v));
        }
        match values.pop() {
            Some(first) => self.finish_task(task, Ok(first)),
            None => {
                let e = Error::Protocol("a task finished without a value".into());
                self.finish_task(task, Err(e))
            }
        }
    }

    /// Frees what a failed attempt stored under the task's return ids, so that its retry can
    /// write them again (scheduler rule 4).
    pub(super) fn reset_returns(&mut self, task: Id) {
        let mut ids = vec![task];
        if let Some(t) = self.tasks.get(&task) {
            ids.extend_from_slice(&t.spec.extra);
        }
        for id in ids {
            let Some(o) = self.objects.get_mut(&id) else {
                continue;
            };
            let mem = std::mem::replace(&mut o.mem, Mem::None);
            if mem != Mem::None {
                self.release_memory(id, mem == Mem::Sealed);
            }
        }
    }
}

/// True if a task with these options retries after `e` (attempts permitting): application
/// errors only, and only those `retry_exceptions` selects.
fn retries_error(opts: &TaskOpts, e: &Error) -> bool {
    let (message, type_name) = match e {
        Error::TaskFailed { message, value, .. } => {
            (message, value.as_ref().map(|v| v.type_name.as_str()))
        }
        Error::TaskPanicked { message, .. } => (message, None),
        _ => return false,
    };
    opts.retry_exceptions
        && (opts.retry_if_contains.is_empty()
            || opts
                .retry_if_contains
                .iter()
                .any(|p| message.contains(p.as_str()) || type_name == Some(p.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskOptions;

    fn failed(message: &str) -> Error {
        Error::TaskFailed {
            task: "t".into(),
            message: message.into(),
            value: None,
        }
    }

    #[test]
    fn retry_exceptions_selects_errors() {
        let none = TaskOptions::default().opts;
        let all = TaskOptions::default().retry_exceptions(true).opts;
        let some = TaskOptions::default()
            .retry_exceptions_matching(["reset", "busy"])
            .opts;
        let crash = Error::WorkerCrashed {
            task: "t".into(),
            attempts: 1,
            cause: "reset".into(),
        };
        assert!(!retries_error(&none, &failed("reset")));
        assert!(retries_error(&all, &failed("anything")));
        assert!(retries_error(&some, &failed("connection reset by peer")));
        assert!(!retries_error(&some, &failed("bad input")));
        // Only application errors: never a crash (scheduler rule 4) or a cancel (scheduler rule 9).
        assert!(!retries_error(&all, &crash));
        assert!(!retries_error(
            &all,
            &Error::TaskCancelled { task: "t".into() }
        ));
        let empty = TaskOptions::default().retry_exceptions_matching(Vec::<String>::new());
        assert!(!retries_error(&empty.opts, &failed("reset")));
    }
}
