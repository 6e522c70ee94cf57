//! Pipelining (scheduler rule 11): tasks queued on busy workers and taken back through their
//! claim cells. Arms and takes cells only through `Scheduler::flags`.

use crate::protocol::{ActorCall, Id, ToWorker};
use crate::{shared_flags, timeline};

use super::Scheduler;
use super::pool::Frame;
use super::resources::Held;
use super::tasks::TaskState;

/// A task queued on a busy worker (scheduler rule 11).
#[derive(Clone, Copy)]
pub(super) struct Queued {
    pub(super) task: Id,
    /// Its place in the worker's sequence of queued tasks (from 1); picks its claim cell.
    pub(super) seq: u64,
    /// The value armed in the claim cell: unique over the runtime's life.
    pub(super) ticket: u64,
    /// The CPUs it takes when it starts (those of the frame it follows).
    pub(super) cpus: f64,
}

/// The claim-cell lanes of shared_flags.rs lent to workers, and the tasks queued on them.
pub(super) struct Lanes {
    /// Lanes not lent to a worker.
    free: Vec<u32>,
    /// The last ticket armed in a claim cell.
    last_ticket: u64,
    /// Tasks queued on workers now (the sum of their `queued`), so that `balance` costs
    /// nothing when there are none.
    queued: usize,
}

impl Lanes {
    pub(super) fn new() -> Lanes {
        Lanes {
            free: (0..shared_flags::LANES).rev().collect(),
            last_ticket: 0,
            queued: 0,
        }
    }

    /// A lane for a new worker, if one is free.
    pub(super) fn lend(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// A dead worker's lane.
    pub(super) fn give_back(&mut self, lane: u32) {
        self.free.push(lane);
    }

    /// A ticket no claim cell was armed with before.
    fn next_ticket(&mut self) -> u64 {
        self.last_ticket += 1;
        self.last_ticket
    }

    /// Tasks queued on workers now.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// `n` more tasks wait queued on workers.
    pub(super) fn add_queued(&mut self, n: usize) {
        self.queued += n;
    }

    /// `n` queued tasks started, were taken back or went back to the queue.
    pub(super) fn remove_queued(&mut self, n: usize) {
        debug_assert!(self.queued >= n, "queued task count drift");
        self.queued -= n;
    }
}

impl Scheduler {
    /// Queues plain tasks from the front of the queue on busy pool workers (scheduler rule 11),
    /// when no frame waits to resume and no worker is being forked for them.
    pub(super) fn pipeline(&mut self) {
        if !self.resume.is_empty() || self.pool.starting() > 0 {
            return;
        }
        while let Some(&task) = self.queue.front() {
            let Some(t) = self.tasks.get(&task) else {
                self.queue.pop_front();
                continue;
            };
            let o = &t.spec.opts;
            let plain = o.num_gpus == 0.0
                && o.resources.is_empty()
                && o.max_calls == 0
                && o.streaming.is_none()
                && t.spec.actor.is_none();
            if !plain {
                return;
            }
            let cpus = o.num_cpus;
            // Not behind a frame whose `max_calls` may retire the worker (scheduler rule 7).
            let target = self
                .pool
                .members()
                .filter(|(_, w)| {
                    w.can_queue(cpus, self.cfg.pipeline_depth)
                        && self
                            .tasks
                            .get(&w.stack[0].task)
                            .is_some_and(|t| t.spec.opts.max_calls == 0)
                })
                .min_by_key(|&(s, w)| (w.queued.len(), s))
                .map(|(s, _)| s);
            let Some(slot) = target else { return };
            self.queue.pop_front();
            self.queue_on(slot, task, cpus);
        }
    }

    /// Arms a claim cell for `id` and sends it to wait on busy worker `slot` (scheduler rule 11).
    pub(super) fn queue_on(&mut self, slot: u32, id: Id, cpus: f64) {
        let run = match self.run_message(id) {
            Ok(run) => run,
            Err(e) => return self.finish_task_as(id, Err(e), timeline::RunEnd::Failed),
        };
        self.give_args(slot, id);
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        let Some(lane) = w.lane else { return };
        w.last_seq += 1;
        let q = Queued {
            task: id,
            seq: w.last_seq,
            ticket: self.lanes.next_ticket(),
            cpus,
        };
        w.queued.push_back(q);
        self.lanes.add_queued(1);
        self.stats.queued += 1;
        let cell = shared_flags::cell(lane, q.seq);
        self.flags.arm(cell, q.ticket);
        if let Some(t) = self.tasks.get_mut(&id) {
            t.state = TaskState::QueuedOn { slot };
        }
        let msg = ToWorker::Queue {
            run,
            cell,
            ticket: q.ticket,
        };
        self.send_to(slot, &msg);
    }

    /// Starts the first task queued on `slot`, whose stack just emptied (scheduler rule 11). The
    /// worker claimed it or will: the scheduler took back every one it could not have claimed.
    pub(super) fn start_queued(&mut self, slot: u32) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        if !w.stack.is_empty() {
            return;
        }
        let Some(q) = w.queued.pop_front() else {
            return;
        };
        let claim = w
            .lane
            .map(|lane| (shared_flags::cell(lane, q.seq), q.ticket));
        w.stack.push(Frame {
            claim,
            ..Frame::new(q.task, q.cpus, Held::default(), q.seq)
        });
        self.events.started(q.task, w.pid, 0);
        self.res.take_cpus(q.cpus);
        self.lanes.remove_queued(1);
        self.stats.pipelined += 1;
        if let Some(t) = self.tasks.get_mut(&q.task) {
            t.attempts += 1;
            t.runs += 1;
            if let Some(st) = self.streams.get_mut(&q.task) {
                st.this_attempt = 0;
            }
            t.state = TaskState::Running {
                slot,
                cancel_requested: false,
            };
        }
        // Its arguments, given again: the set was cleared when the stack emptied.
        self.give_args(slot, q.task);
        if let Some((force, grace)) = self.cancel.on_start.remove(&q.task) {
            self.cancel_one(q.task, force, grace);
        }
    }

    /// Worker `slot` says it did not start queued task `task` (sent with `ticket`): its claim
    /// failed. If the scheduler counted that very sending started there (the frame
    /// `start_queued` pushed, with the same ticket), it never ran: the
    /// frame goes, with its CPUs and attempt, and the task back to the front of the queue (or
    /// of its actor's calls); the shared table and the scheduler disagreed (a worker wrote
    /// it), and the task must still end (scheduler rule 11). Otherwise the scheduler had
    /// taken it back: nothing to do.
    pub(super) fn on_unclaimed(&mut self, slot: u32, task: Id, ticket: u64) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        let started_here = w.stack.len() == 1
            && w.stack[0].task == task
            && w.stack[0].claim.is_some_and(|(_, t)| t == ticket)
            && w.stack[0].blocked.is_none();
        if !started_here {
            return;
        }
        let Some(f) = w.stack.pop() else { return };
        w.settled = w.settled.max(f.mark);
        self.events.unstarted(task);
        self.stats.pipelined = self.stats.pipelined.saturating_sub(1);
        self.res.give_cpus(f.cpus);
        let Some(t) = self.tasks.get_mut(&task) else {
            return self.after_pop(slot);
        };
        // A cancel applied when it started (rule 9) ends it now: it never will start.
        let cancelled = t.state.is_cancel_requested().then(|| t.cancelled_error());
        t.attempts = t.attempts.saturating_sub(1);
        t.state = TaskState::Ready;
        match cancelled {
            Some(err) => self.finish_task(task, Err(err)),
            None => self.requeue_front(task),
        }
        self.after_pop(slot);
    }

    /// Takes back the task at `index` of `slot`'s queue if the worker has not claimed it; it
    /// then belongs to no worker (the caller says where it goes).
    pub(super) fn take_back_one(&mut self, slot: u32, index: usize) -> bool {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return false;
        };
        let (Some(lane), Some(&q)) = (w.lane, w.queued.get(index)) else {
            return false;
        };
        if !self.flags.take(shared_flags::cell(lane, q.seq), q.ticket) {
            return false;
        }
        w.queued.remove(index);
        if let Some(a) = w.actor {
            self.mark_actor(a);
        }
        self.lanes.remove_queued(1);
        self.stats.taken_back += 1;
        if let Some(t) = self.tasks.get_mut(&q.task) {
            t.state = TaskState::Ready;
        }
        true
    }

    /// Takes back `task`, queued on a busy worker, if the worker has not claimed it.
    pub(super) fn take_back_task(&mut self, task: Id) -> bool {
        let Some(slot) = self
            .tasks
            .get(&task)
            .filter(|t| t.state.is_queued())
            .and_then(|t| t.state.worker())
        else {
            return false;
        };
        let index = self
            .pool
            .workers
            .get(&slot)
            .and_then(|w| w.queued.iter().position(|q| q.task == task));
        index.is_some_and(|i| self.take_back_one(slot, i))
    }

    /// Takes back every task queued on `slot` that the worker has not claimed; they go back
    /// to the front of the queue (or of their actor's calls), in order. Returns how many stay
    /// (claimed: they start in order as the worker's stack empties).
    pub(super) fn take_back_all(&mut self, slot: u32) -> usize {
        let n = self.pool.workers.get(&slot).map_or(0, |w| w.queued.len());
        let mut back = Vec::new();
        for i in (0..n).rev() {
            let task = self.pool.workers[&slot].queued[i].task;
            if self.take_back_one(slot, i) {
                back.push(task);
            }
        }
        // Newest first: pushing each to the front leaves them in their order.
        for task in back {
            self.requeue_front(task);
        }
        self.pool.workers.get(&slot).map_or(0, |w| w.queued.len())
    }

    /// Puts an unstarted task back at the front of the queue, or of its actor's calls.
    pub(super) fn requeue_front(&mut self, task: Id) {
        match self.tasks.get(&task).and_then(|t| t.spec.actor) {
            Some(ActorCall::Method { actor }) => {
                if let Some(a) = self.actors.by_id.get_mut(&actor) {
                    a.calls.push_front(task);
                }
                self.mark_actor(actor);
            }
            _ => self.queue.push_front(task),
        }
    }

    /// Moves queued tasks back to the queue while CPUs are free for them and `dispatch_ready` can
    /// place them (an idle worker, one it may fork, a blocked one to nest on), then places them
    /// (scheduler rule 11): a task never waits behind a long one while it could run, and a blocked
    /// frame's CPUs serve the tasks queued on other workers as they would have served the queue.
    /// Newest first, from the busiest worker first. Not while a frame waits to resume (scheduler
    /// rule 1), nor while a task in the queue could start: that one goes first.
    pub(super) fn balance(&mut self) {
        while self.lanes.queued() > 0
            && self.resume.is_empty()
            && self.next_startable().is_none()
            && self.can_place()
        {
            let mut victims: Vec<(usize, u32)> = self
                .pool
                .members()
                .filter(|(_, w)| !w.queued.is_empty())
                .map(|(s, w)| (w.queued.len(), s))
                .collect();
            victims.sort_unstable_by_key(|&(n, s)| (std::cmp::Reverse(n), s));
            let moved = victims.into_iter().find_map(|(n, victim)| {
                let q = self.pool.workers[&victim].queued[n - 1];
                // A claimed one starts on its worker soon.
                (self.res.fits(q.cpus) && self.take_back_one(victim, n - 1)).then_some(q.task)
            });
            let Some(task) = moved else { return };
            self.queue.push_front(task);
            self.dispatch_ready();
        }
    }
}
