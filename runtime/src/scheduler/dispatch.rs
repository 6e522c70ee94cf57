//! Placing ready tasks on workers (scheduler rules 1, 2). Owns no state of its own.

use std::collections::HashSet;

use crate::protocol::{ActorCall, Arg, Id, Payload, RunTask, ToWorker};
use crate::{Error, timeline};

use super::Scheduler;
use super::objects::{ObjState, Taker};
use super::pool::Frame;
use super::requests::RequestKind;
use super::tasks::TaskState;

/// Tasks `ready_dependency` looks at, at most, for one blocked worker.
const NEST_SEARCH: usize = 4096;

impl Scheduler {
    /// Starts queued tasks on idle workers (scheduler rules 1, 2).
    pub(super) fn dispatch_ready(&mut self) {
        if !self.fork.is_alive() && !self.queue.is_empty() {
            // Nothing can run any more (the fork server's death failed what was queued then).
            self.fail_queue_no_fork_server();
        }
        self.dispatch_actors();
        // Rule 1: resumptions first.
        while let Some(&slot) = self.resume.front() {
            let Some(f) = self.pool.workers.get(&slot).and_then(|w| w.stack.last()) else {
                self.resume.pop_front();
                continue;
            };
            if f.pending.is_none() {
                self.resume.pop_front();
                continue;
            }
            let cpus = f.cpus;
            if !self.res.fits(cpus) {
                return;
            }
            self.resume.pop_front();
            let f = self
                .pool
                .workers
                .get_mut(&slot)
                .and_then(|w| w.stack.last_mut())
                .expect("checked above");
            let msg = f.pending.take().expect("checked above");
            f.blocked = None;
            self.res.take_cpus(cpus);
            self.send_to(slot, &msg);
            if let Some(a) = self.pool.workers.get(&slot).and_then(|w| w.actor) {
                self.mark_actor(a);
            }
        }
        while let Some(pos) = self.next_startable() {
            let task = self.queue[pos];
            let cpus = self.task_cpus(task);
            // Rule 2: an idle worker, else a new one, else a blocked one.
            let slot = match self.pool.idle() {
                Some(s) => s,
                None => {
                    // Fork as many workers as the queued tasks could use now (free CPUs,
                    // `max_workers`), all at once; the tasks wait for them.
                    let free_cpus = self.res.free_cpus_at_least_one();
                    let want = self
                        .queue
                        .len()
                        .min(free_cpus)
                        .min(self.cfg.worker_cap().saturating_sub(self.pool.size()));
                    // While forks fail and back off, a blocked worker takes the task nested,
                    // as at the cap (rule 2).
                    let starting = self.pool.starting();
                    let may_spawn = self.fork.may_spawn();
                    if starting > 0 || (want > 0 && may_spawn) {
                        if may_spawn {
                            for _ in starting..want {
                                self.spawn_worker();
                            }
                        }
                        return;
                    }
                    // Rule 2: nested on a blocked worker, a task its top frame waits for.
                    let Some((slot, nested)) = self.pick_nested() else {
                        return;
                    };
                    self.stats.nested_inline += 1;
                    self.queue.retain(|&q| q != nested);
                    let cpus = self.task_cpus(nested);
                    self.start_task(slot, nested, cpus);
                    continue;
                }
            };
            self.queue.remove(pos);
            self.start_task(slot, task, cpus);
        }
    }

    /// A blocked pool worker and a queued task to run nested on its stack (scheduler rule 2),
    /// if one fits now. Only a task the worker's top frame waits for, directly or through the
    /// arguments of what it waits for, is nested: such a task cannot wait for a frame below
    /// it on that stack (each frame there waits for the one above it, so that would be a
    /// cycle), while any other task might, and would then wait for ever under a frame that
    /// cannot resume before it ends.
    pub(super) fn pick_nested(&self) -> Option<(u32, Id)> {
        self.pool
            .members()
            .filter(|(_, w)| w.takes_pool_work())
            .find_map(|(slot, w)| {
                let top = w.stack.last()?;
                let rid = top.blocked.filter(|_| top.pending.is_none())?;
                let req = self.requests.get(&rid)?;
                let task = match req.kind {
                    // A frame in `as_completed` waits for the watch's objects not ready yet.
                    RequestKind::Ready { watch } => {
                        self.ready_dependency(&self.watch_pending(watch))
                    }
                    _ => self.ready_dependency(&req.ids),
                };
                task.map(|task| (slot, task))
            })
    }

    /// The first queued pool task that fits now among the tasks that produce `ids` and,
    /// transitively, the arguments of those still waiting for theirs (at most `NEST_SEARCH`
    /// tasks are looked at).
    fn ready_dependency(&self, ids: &[Id]) -> Option<Id> {
        let mut stack: Vec<Id> = ids.iter().rev().copied().collect();
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            let task = self.task_of_return(id);
            if seen.len() >= NEST_SEARCH || !seen.insert(task) {
                continue;
            }
            let Some(t) = self.tasks.get(&task) else {
                continue;
            };
            match t.state {
                TaskState::Ready => {
                    let fits =
                        self.res.fits(t.spec.opts.num_cpus) && self.res.fits_other(&t.spec.opts);
                    if t.spec.actor.is_none() && fits {
                        return Some(task);
                    }
                }
                TaskState::WaitingArgs { .. } => {
                    let pending = t.spec.args.iter().rev().filter_map(|a| match a {
                        Arg::Ref(r) if !self.is_ready(*r) => Some(*r),
                        _ => None,
                    });
                    stack.extend(pending);
                }
                // It runs, or will once the frame it waits behind ends: that worker's own
                // top frame is where a nested task for it is looked for.
                TaskState::QueuedOn { .. } | TaskState::Running { .. } => {}
            }
        }
        None
    }

    /// The queue position of the next task to start, if one fits now (scheduler rule 1): tasks wait
    /// in order for CPUs, but one that waits only for a GPU or custom resource is passed.
    pub(super) fn next_startable(&mut self) -> Option<usize> {
        let mut i = 0;
        while i < self.queue.len() {
            let Some(t) = self.tasks.get(&self.queue[i]) else {
                self.queue.remove(i);
                continue;
            };
            if !self.res.fits(t.spec.opts.num_cpus) {
                return None;
            }
            if self.res.fits_other(&t.spec.opts) {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    pub(super) fn task_cpus(&self, id: Id) -> f64 {
        self.tasks.get(&id).map_or(0.0, |t| t.spec.opts.num_cpus)
    }

    /// The task to run, with its arguments resolved; the error of an argument that failed.
    pub(super) fn run_message(&mut self, id: Id) -> Result<RunTask, Error> {
        let mut args = Vec::new();
        let mut failed = None;
        let Some(t) = self.tasks.get(&id) else {
            return Err(Error::Protocol(format!("task {id:x} is unknown")));
        };
        for a in &t.spec.args {
            match a {
                Arg::Value { bytes, .. } => args.push(Payload::Inline(bytes.clone())),
                Arg::Ref(r) => match self.objects.get(r).map(|o| &o.state) {
                    Some(ObjState::Ready(p)) => args.push(p.clone()),
                    Some(ObjState::Failed(e)) => failed = Some(e.clone()),
                    _ => {
                        failed = Some(Error::Protocol(format!(
                            "argument object {r:x} is not available"
                        )))
                    }
                },
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // Read-once arguments go to this task only, for the run about to start (scheduler
        // rule 12); checked after the failures, so a task that will not run takes nothing.
        let taker = Taker {
            task: Some(id),
            attempt: t.runs + 1,
        };
        let refs: Vec<Id> = t
            .spec
            .args
            .iter()
            .filter_map(|a| match a {
                Arg::Ref(r) => Some(*r),
                Arg::Value { .. } => None,
            })
            .collect();
        let run = RunTask {
            task: id,
            func: t.spec.func.clone(),
            name: t.name.clone(),
            args,
            extra: t.spec.extra.clone(),
            gpus: Vec::new(),
            attempt: t.attempts + 1,
            cpus: t.spec.opts.num_cpus,
            actor: match t.spec.actor {
                Some(ActorCall::Create { .. }) => Some(id),
                Some(ActorCall::Method { actor }) => Some(actor),
                None => None,
            },
            moved: Vec::new(),
        };
        let ctor = matches!(t.spec.actor, Some(ActorCall::Create { .. }));
        self.take(&refs, taker, true)?;
        if ctor {
            self.keep_ctor(id, &run.args);
        }
        Ok(run)
    }

    pub(super) fn start_task(&mut self, slot: u32, id: Id, cpus: f64) {
        let mut run = match self.run_message(id) {
            Ok(run) => run,
            Err(e) => return self.finish_task_as(id, Err(e), timeline::RunEnd::Failed),
        };
        self.give_args(slot, id);
        let t = self.tasks.get_mut(&id).expect("run_message found it");
        t.attempts += 1;
        t.runs += 1;
        if let Some(st) = self.streams.get_mut(&id) {
            // A generator's new attempt yields from its first item again (scheduler rule 10).
            st.this_attempt = 0;
        }
        let t = self.tasks.get_mut(&id).expect("run_message found it");
        // Its last attempt: the arguments' references move to the worker (scheduler rule 13).
        let moved: Vec<Id> = if t.attempts > t.spec.opts.max_retries && t.spec.actor.is_none() {
            t.args_moved = true;
            t.spec.arg_ids().collect()
        } else {
            Vec::new()
        };
        for &a in &moved {
            self.own(Some(slot), a, 1);
        }
        run.moved = moved;
        let t = self.tasks.get_mut(&id).expect("run_message found it");
        t.state = TaskState::Running {
            slot,
            cancel_requested: false,
        };
        let other = self.res.acquire(&t.spec.opts);
        run.gpus = other.gpus.iter().map(|&(d, _)| d).collect();
        if let Some(w) = self.pool.workers.get_mut(&slot) {
            w.stack.push(Frame::new(id, cpus, other, w.last_seq));
            self.events.started(id, w.pid, w.stack.len() - 1);
        }
        self.res.take_cpus(cpus);
        self.send_to(slot, &ToWorker::Run(run));
    }

    /// True if `dispatch_ready` can place a task that fits: on an idle pool worker, on one it
    /// may fork (scheduler rule 2), or nested on a blocked one.
    pub(super) fn can_place(&self) -> bool {
        self.pool.idle().is_some()
            || self.pool.size() < self.cfg.worker_cap()
            // Only a queued task can be nested: with none, no search of the blocked frames.
            || (!self.queue.is_empty() && self.pick_nested().is_some())
    }
}
