//! The worker pool: worker processes, their stacks of frames, death (scheduler rule 4) and
//! retirement (scheduler rule 7). Must not decide retries: it asks the task table.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::unix::net::UnixStream;

use rayfork_plasma::ClientId;

use crate::idmap::{IdMap, IdSet};
use crate::ipc::{FrameReader, FrameWriter, MAX_WORKER_FRAME};
use crate::protocol::{ExitCause, Id, ToWorker};
use crate::{shared_flags, timeline};

use super::Scheduler;
use super::pipeline::Queued;
use super::resources::{EPS, Held};
use super::tasks::{AfterLoss, TaskState};

pub(super) struct Frame {
    pub(super) task: Id,
    pub(super) cpus: f64,
    /// GPUs and custom resources, held until the frame leaves the stack (scheduler rule 1).
    pub(super) other: Held,
    /// Blocked in this request.
    pub(super) blocked: Option<u64>,
    /// The answer to its request, held until the frame is on top and has CPUs (scheduler rule 1).
    pub(super) pending: Option<ToWorker>,
    /// For a frame at the bottom of the stack: the sequence number of the last task queued on the
    /// worker before this frame's task was sent (scheduler rule 11). When it is done, every queued
    /// task up to that one is settled on the worker's side.
    pub(super) mark: u64,
    /// For a task started from the worker's queue: its claim cell and ticket (scheduler rule 11).
    pub(super) claim: Option<(u32, u64)>,
}

impl Frame {
    pub(super) fn new(task: Id, cpus: f64, other: Held, mark: u64) -> Frame {
        Frame {
            task,
            cpus,
            other,
            blocked: None,
            pending: None,
            mark,
            claim: None,
        }
    }
}

/// Where a worker's socket stands.
pub(super) enum Link {
    /// Asked of the fork server; no socket yet (and no pid).
    Forking,
    /// The driver's end of its socket, non-blocking, in the epoll set.
    Open(UnixStream),
    /// Hung up, killed or unreachable: nothing more is read or sent; its exit comes from the
    /// fork server (scheduler rule 4).
    Closed,
}

/// How far a worker is in its life. Whether it is idle, running or blocked is its stack's
/// business (`Worker::stack`); its death ends it in `on_worker_death` whatever its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Forked (or being forked), has not said `Hello`.
    Starting,
    /// Said `Hello`: takes work.
    Ready,
    /// Reached a `max_calls`: takes no more work (scheduler rule 7).
    Retiring,
    /// Sent `Exit`: its end is a retirement, not a crash (scheduler rule 7).
    Exiting,
}

pub(super) struct Worker {
    /// Its pid, from the fork server; 0 while `Forking`.
    pub(super) pid: i32,
    /// The actor this worker belongs to (scheduler rule 8); `None` for a pool worker.
    pub(super) actor: Option<Id>,
    pub(super) link: Link,
    phase: Phase,
    pub(super) reader: FrameReader,
    pub(super) out: FrameWriter,
    pub(super) stack: Vec<Frame>,
    /// Net references held by this worker's handles (scheduler rule 3).
    pub(super) held: IdMap<Id, i64>,
    /// Ids this worker was given while its stack is not empty (arguments, `get` and `next`
    /// answers, and the ids their values mention): the only ones it may take a first
    /// reference to (scheduler rule 5).
    pub(super) given: IdSet<Id>,
    /// Tasks run per function, counted for functions called with `max_calls` (scheduler rule 7).
    pub(super) calls: HashMap<String, u32>,
    /// Its socket is in the epoll set for writability too (output is waiting for room).
    pub(super) out_armed: bool,
    /// A check of its partial frame is armed (io.rs, `watch_partial_frame`).
    pub(super) stall_watched: bool,
    /// Its lane of claim cells, if one was free when it was forked (scheduler rule 11).
    pub(super) lane: Option<u32>,
    /// Tasks queued on it, in the order sent (scheduler rule 11).
    pub(super) queued: VecDeque<Queued>,
    /// The sequence number of the last task queued on it.
    pub(super) last_seq: u64,
    /// Every task queued on it up to this sequence number is settled on its side (claimed or
    /// dropped), so their claim cells may be armed again.
    pub(super) settled: u64,
}

impl Worker {
    fn new(actor: Option<Id>, lane: Option<u32>) -> Worker {
        Worker {
            pid: 0,
            actor,
            link: Link::Forking,
            phase: Phase::Starting,
            reader: FrameReader::with_limit(MAX_WORKER_FRAME),
            out: FrameWriter::default(),
            stack: Vec::new(),
            held: IdMap::default(),
            given: IdSet::default(),
            calls: HashMap::new(),
            out_armed: false,
            stall_watched: false,
            lane,
            queued: VecDeque::new(),
            last_seq: 0,
            settled: 0,
        }
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// True while messages can be read from it and sent to it.
    pub(super) fn is_open(&self) -> bool {
        matches!(self.link, Link::Open(_))
    }

    /// Closes its link; the socket, if it was open, is returned to be taken out of the epoll
    /// set.
    pub(super) fn close(&mut self) -> Option<UnixStream> {
        match std::mem::replace(&mut self.link, Link::Closed) {
            Link::Open(s) => Some(s),
            Link::Forking | Link::Closed => None,
        }
    }

    /// True if `task` is its running (not blocked) top frame: the one frame that may send
    /// `Done` or `Yield` (rule 2 in protocol.rs).
    pub(super) fn runs_on_top(&self, task: Id) -> bool {
        self.stack
            .last()
            .is_some_and(|f| f.task == task && f.blocked.is_none())
    }

    /// True if it said `Hello` and its socket is open: it can be sent a task (an actor's
    /// worker even while retiring).
    pub(super) fn is_up(&self) -> bool {
        self.phase != Phase::Starting && self.is_open()
    }

    /// True for a pool worker that is up, connected and takes work (not an actor's, not
    /// retiring: scheduler rules 7, 8).
    pub(super) fn takes_pool_work(&self) -> bool {
        self.actor.is_none() && self.phase == Phase::Ready && self.is_open()
    }

    /// True if a task needing `cpus` can be queued behind its running frame, with at most
    /// `depth` tasks queued (scheduler rule 11).
    pub(super) fn can_queue(&self, cpus: f64, depth: usize) -> bool {
        self.lane.is_some()
            && self.phase == Phase::Ready
            && self.is_open()
            && self.stack.len() == 1
            && self.stack[0].blocked.is_none()
            && (self.stack[0].cpus - cpus).abs() < EPS
            && self.queued.len() < depth
            && self.last_seq + 1 - self.settled <= shared_flags::RING
    }
}

/// Every worker process (the pool's and the actors'), by slot, and the pool's own view.
pub(super) struct Pool {
    pub(super) workers: IdMap<u32, Worker>,
    /// The slots of the pool's workers (not actors'), so that looking for a worker to run a
    /// task costs the pool, not every process.
    slots: BTreeSet<u32>,
    /// Slots by pid, for the fork server's reports.
    pub(super) pids: IdMap<i32, u32>,
    next_slot: u32,
    /// Pool workers in `Phase::Starting`, kept by `add`, `hello` and `remove` only.
    starting: usize,
}

impl Pool {
    pub(super) fn new() -> Pool {
        Pool {
            workers: IdMap::default(),
            slots: BTreeSet::new(),
            pids: IdMap::default(),
            next_slot: 1,
            starting: 0,
        }
    }

    /// The slot the next worker gets.
    pub(super) fn next_slot(&mut self) -> u32 {
        let slot = self.next_slot;
        self.next_slot += 1;
        slot
    }

    /// Adds a worker being forked into `slot`.
    pub(super) fn add(&mut self, slot: u32, actor: Option<Id>, lane: Option<u32>) {
        if actor.is_none() {
            self.starting += 1;
            self.slots.insert(slot);
        }
        self.workers.insert(slot, Worker::new(actor, lane));
    }

    /// Worker `slot` said `Hello`: it takes work from now on.
    pub(super) fn hello(&mut self, slot: u32) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        if w.phase == Phase::Starting {
            w.phase = Phase::Ready;
            if w.actor.is_none() {
                debug_assert!(self.starting > 0, "pool worker count drift");
                self.starting -= 1;
            }
        }
    }

    /// Worker `slot` reached a `max_calls` (scheduler rule 7).
    pub(super) fn retire(&mut self, slot: u32) {
        if let Some(w) = self.workers.get_mut(&slot) {
            if w.phase == Phase::Ready {
                w.phase = Phase::Retiring;
            }
        }
    }

    /// Removes a dead (or never forked) worker.
    pub(super) fn remove(&mut self, slot: u32) -> Option<Worker> {
        let w = self.workers.remove(&slot)?;
        if w.actor.is_none() {
            self.slots.remove(&slot);
            if w.phase == Phase::Starting {
                debug_assert!(self.starting > 0, "pool worker count drift");
                self.starting -= 1;
            }
        }
        Some(w)
    }

    /// Pool workers being forked or started, that have not said `Hello`.
    pub(super) fn starting(&self) -> usize {
        debug_assert_eq!(
            self.starting,
            self.members()
                .filter(|(_, w)| w.phase == Phase::Starting)
                .count(),
            "pool worker count drift"
        );
        self.starting
    }

    /// Pool workers alive or starting, that will take work (actor workers are not counted,
    /// scheduler rule 8; nor retiring ones, scheduler rule 7: a replacement may be forked while one
    /// finishes).
    pub(super) fn size(&self) -> usize {
        self.members()
            .filter(|(_, w)| matches!(w.phase, Phase::Starting | Phase::Ready))
            .count()
    }

    /// The pool's workers, lowest slot first.
    pub(super) fn members(&self) -> impl Iterator<Item = (u32, &Worker)> + '_ {
        self.slots
            .iter()
            .filter_map(|&s| self.workers.get(&s).map(|w| (s, w)))
    }

    /// The lowest idle pool worker, if any.
    pub(super) fn idle(&self) -> Option<u32> {
        self.members()
            .find(|(_, w)| w.takes_pool_work() && w.stack.is_empty())
            .map(|(s, _)| s)
    }
}

impl Scheduler {
    /// Forks a pool worker, unless forks fail lately and back off (fork_link.rs).
    pub(super) fn spawn_worker(&mut self) {
        if self.fork.may_spawn() {
            self.spawn_worker_for(None);
        }
    }

    /// Forks a worker for the pool, or for `actor` (scheduler rule 8); its slot if the request went
    /// out.
    pub(super) fn spawn_worker_for(&mut self, actor: Option<Id>) -> Option<u32> {
        let slot = self.pool.next_slot();
        if !self.fork.spawn(slot) {
            return None;
        }
        let lane = self.lanes.lend();
        self.pool.add(slot, actor, lane);
        self.stats.workers_started += 1;
        self.stats.peak_workers = self.stats.peak_workers.max(self.pool.workers.len());
        Some(slot)
    }

    /// Worker `slot` said `Hello`: it takes work from now on. The pid it reports is never
    /// used: the fork server's is the one the runtime kills by (a worker naming another pid
    /// could get a sibling killed, or make itself unkillable). A second `Hello` is a message
    /// it has no right to send (rule 5).
    pub(super) fn on_hello(&mut self, slot: u32, worker: u32) {
        let starting = self
            .pool
            .workers
            .get(&slot)
            .is_some_and(|w| w.phase() == Phase::Starting);
        if worker != slot || !starting {
            return self.kill_worker(slot, "a hello from the wrong slot, or a second one");
        }
        self.pool.hello(slot);
    }

    pub(super) fn on_hangup(&mut self, slot: u32) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        if let Some(stream) = w.close() {
            self.io.forget(&stream);
        }
        // Make sure it is dead; its exit (with the cause) comes from the fork server. While it
        // is being forked it has no pid: `on_fork` ends it when it exists.
        if w.pid != 0 {
            self.fork.kill(w.pid);
        }
    }

    pub(super) fn kill_worker(&mut self, slot: u32, why: &str) {
        eprintln!("rayfork: killing worker {slot}: {why}");
        self.on_hangup(slot);
    }

    /// Worker `slot` is dead (its exit came from the fork server, or the fork server is gone):
    /// everything it held goes back and every task on it is settled (scheduler rule 4), in
    /// this order.
    pub(super) fn on_worker_death(&mut self, slot: u32, cause: ExitCause) {
        let Some(mut w) = self.pool.remove(slot) else {
            return;
        };
        // Out of the epoll set before its socket closes (see `Io::forget`).
        if let Some(stream) = w.close() {
            self.io.forget(&stream);
        }
        self.reclaim_unclaimed(&mut w);
        if w.phase() == Phase::Exiting {
            self.stats.workers_retired += 1;
        } else {
            self.stats.workers_died += 1;
        }
        self.release_stack(slot, &w);
        let crash = self.crash_cause(w.pid, cause);
        self.requeue_queued(&w);
        self.settle_stack(slot, &w, &crash);
        self.cancel.killed.remove(&slot);
        for (&id, &n) in w.held.iter() {
            if n != 0 {
                self.add_ref(id, -n);
            }
        }
        self.store.client_gone(ClientId(slot));
        self.drop_watches_of(slot);
        // Keep the pool at its size.
        if w.actor.is_none() && self.pool.size() < self.cfg.initial_workers() {
            self.spawn_worker();
        }
    }

    /// Rule 11: a task started from the dead worker's queue that it never claimed (it died
    /// between the `Done` before it and the claim) never ran: it goes back to the queued ones,
    /// with its attempt and CPUs given back.
    fn reclaim_unclaimed(&mut self, w: &mut Worker) {
        let unclaimed = w.stack.len() == 1
            && w.stack[0]
                .claim
                .is_some_and(|(cell, ticket)| self.flags.take(cell, ticket));
        if !unclaimed {
            return;
        }
        let Some(f) = w.stack.pop() else { return };
        self.events.unstarted(f.task);
        debug_assert!(self.stats.pipelined > 0, "pipelined count drift");
        self.stats.pipelined = self.stats.pipelined.saturating_sub(1);
        self.lanes.add_queued(1);
        self.res.give_cpus(f.cpus);
        if let Some(t) = self.tasks.get_mut(&f.task) {
            debug_assert!(t.attempts > 0, "a started task with no attempt");
            t.attempts = t.attempts.saturating_sub(1);
        }
        w.queued.push_front(Queued {
            task: f.task,
            seq: f.mark,
            ticket: 0,
            cpus: f.cpus,
        });
    }

    /// Gives back what the dead worker's frames held (scheduler rule 1: the CPUs of a running top
    /// frame, every frame's GPUs and custom resources), drops their requests, and ends their runs
    /// in the timeline.
    fn release_stack(&mut self, slot: u32, w: &Worker) {
        self.resume.retain(|&s| s != slot);
        for f in &w.stack {
            if let Some(rid) = f.blocked {
                self.requests.remove(&rid);
            }
        }
        if let Some(top) = w.stack.last() {
            if top.blocked.is_none() {
                self.res.give_cpus(top.cpus);
            }
        }
        for f in &w.stack {
            self.res.release(&f.other);
        }
        for f in &w.stack {
            let Some(t) = self.tasks.get(&f.task) else {
                self.events.ended(f.task, "", timeline::RunEnd::Crashed);
                continue;
            };
            let outcome = if t.state.is_cancel_requested() {
                timeline::RunEnd::Cancelled
            } else {
                timeline::RunEnd::Crashed
            };
            self.events.ended(f.task, &t.name, outcome);
        }
    }

    /// Rule 11: the dead worker's queued tasks never started; they go back in order, no
    /// attempt used (or resolve as cancelled if a cancel waited for them to start).
    fn requeue_queued(&mut self, w: &Worker) {
        if let Some(lane) = w.lane {
            self.lanes.give_back(lane);
        }
        self.lanes.remove_queued(w.queued.len());
        for q in w.queued.iter().rev() {
            let Some(t) = self.tasks.get_mut(&q.task) else {
                continue;
            };
            t.state = TaskState::Ready;
            if self.cancel.on_start.remove(&q.task).is_some() {
                let err = t.cancelled_error();
                self.finish_task(q.task, Err(err));
            } else {
                self.requeue_front(q.task);
            }
        }
    }

    /// Settles every task of the dead worker's stack: scheduler rule 4 (retry or fail, cancellation
    /// first) for a pool worker, scheduler rule 8 for an actor's.
    fn settle_stack(&mut self, slot: u32, w: &Worker, crash: &str) {
        let Some(actor) = w.actor else {
            for f in w.stack.iter().rev() {
                let verdict = self.loss_of(slot, f.task);
                self.settle_loss(f.task, verdict, crash);
            }
            return;
        };
        // A cancelled call resolves as cancelled (scheduler rule 9); the others die with the actor.
        for f in &w.stack {
            if let verdict @ AfterLoss::Cancelled = self.loss_of(slot, f.task) {
                self.settle_loss(f.task, verdict, crash);
            }
        }
        self.actor_worker_died(actor, &w.stack, crash);
    }

    /// After a frame left a worker: resume the frame below, or start its next queued task
    /// (scheduler rule 11), or mark the worker idle.
    pub(super) fn after_pop(&mut self, slot: u32) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        if w.stack.is_empty() {
            // What it was given is in its handles now, if anywhere (scheduler rule 5).
            w.given.clear();
        }
        let w = &self.pool.workers[&slot];
        if let Some(f) = w.stack.last() {
            if f.pending.is_some() && !self.resume.contains(&slot) {
                self.resume.push_back(slot);
            }
        } else if !w.queued.is_empty() {
            // Rule 1 first: a frame waiting to resume gets the CPUs its queued tasks would take.
            if w.actor.is_none() && !self.resume.is_empty() {
                self.take_back_all(slot);
            }
            self.start_queued(slot);
        }
        self.retire_if_done(slot);
    }

    /// Counts a finished task against its function's `max_calls` on this worker.
    pub(super) fn count_call(&mut self, slot: u32, task: Id) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let max = t.spec.opts.max_calls;
        if max == 0 {
            return;
        }
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        let n = w.calls.entry(t.spec.func.clone()).or_insert(0);
        *n += 1;
        if *n >= max {
            self.pool.retire(slot);
        }
    }

    /// Sends `Exit` to a retiring worker once its stack is empty (scheduler rule 7).
    pub(super) fn retire_if_done(&mut self, slot: u32) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        if w.phase != Phase::Retiring || !w.stack.is_empty() {
            return;
        }
        w.phase = Phase::Exiting;
        self.send_to(slot, &ToWorker::Exit);
    }
}
