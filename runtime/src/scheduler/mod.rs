#![doc = include_str!("README.md")]

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use rayfork_plasma::{ShmArena, Store};

use crate::config::Config;
use crate::error::panic_message;
use crate::idmap::IdMap;
use crate::protocol::{Id, ToWorker};
use crate::shared_flags::SharedFlags;
use crate::stats::RuntimeStats;
use crate::timeline::Events;
use crate::{Error, ipc};

use self::actors::ActorTable;
use self::cancel::Cancels;
use self::fork_link::ForkLink;
use self::io::{Io, Sleep};
use self::messages::Requester;
use self::objects::Object;
use self::pipeline::Lanes;
use self::pool::Pool;
use self::requests::{Deadlines, Request};
use self::resources::Resources;
use self::streams::Stream;
use self::tasks::Task;

mod actors;
mod cancel;
mod dispatch;
mod event;
mod fork_link;
mod gpus;
mod io;
mod messages;
mod objects;
mod pipeline;
mod pool;
mod requests;
mod resources;
mod streams;
mod tasks;
mod watches;

pub(crate) use event::{Doorbell, Event, Health};

/// The scheduler thread's state: its parts, and the tables that several of them read.
pub(crate) struct Scheduler {
    /// This runtime's number in the process: the top bits of every id it makes (`IdGen`).
    runtime: u32,
    cfg: Config,
    // How events reach the loop, and how it reaches the processes.
    rx: Receiver<Event>,
    bell: Arc<Doorbell>,
    io: Io,
    fork: ForkLink,
    /// The shared flags: cancel words and claim cells (shared_flags.rs).
    flags: SharedFlags,

    // The tables.
    store: Store<ShmArena>,
    objects: IdMap<Id, Object>,
    tasks: IdMap<Id, Task>,
    /// The task of each extra return id (scheduler rule 6).
    extra_of: IdMap<Id, Id>,
    /// Generator tasks' streams, by task id (scheduler rule 10).
    streams: IdMap<Id, Stream>,
    /// Objects clients follow with `as_completed` (watches.rs).
    watches: IdMap<Id, watches::Watch>,
    requests: IdMap<u64, Request>,
    next_request: u64,
    /// Request timeouts and cancel grace periods.
    deadlines: Deadlines,

    // Placement.
    pool: Pool,
    actors: ActorTable,
    /// CPUs, GPUs and custom resources (scheduler rule 1).
    res: Resources,
    /// Ready pool tasks, in the order they start (scheduler rules 1, 2).
    queue: VecDeque<Id>,
    /// Workers whose blocked top frame has its answer and waits for its CPUs (scheduler rule 1).
    resume: VecDeque<u32>,
    /// Claim-cell lanes and the tasks queued on workers (scheduler rule 11).
    lanes: Lanes,
    /// Cancellation's state (scheduler rule 9).
    cancel: Cancels,

    // What the runtime reports.
    stats: RuntimeStats,
    /// Task events for the timeline and the summary.
    events: Events,
}

impl Scheduler {
    /// Starts the fork server (on this thread, rule 3 in fork_server.rs) and the initial workers.
    pub(crate) fn new(
        runtime: u32,
        cfg: Config,
        arena: Arc<ShmArena>,
        rx: Receiver<Event>,
        bell: Arc<Doorbell>,
    ) -> crate::Result<Scheduler> {
        let program = match &cfg.worker_program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| Error::os("find own executable", e))?,
        };
        let flags = SharedFlags::create()?;
        let (arena_fd, flags_fd) = (arena.fd().as_raw_fd(), flags.fd().as_raw_fd());
        let fork = ForkLink::start(&program, arena_fd, flags_fd, runtime)?;
        let io = Io::new(fork.fd(), bell.fd.as_fd())?;
        let mut s = Scheduler {
            runtime,
            res: Resources::new(&cfg),
            cfg,
            rx,
            bell,
            io,
            fork,
            flags,
            store: Store::new(arena),
            objects: IdMap::default(),
            tasks: IdMap::default(),
            extra_of: IdMap::default(),
            streams: IdMap::default(),
            watches: IdMap::default(),
            requests: IdMap::default(),
            next_request: 1,
            deadlines: Deadlines::default(),
            pool: Pool::new(),
            actors: ActorTable::new(),
            queue: VecDeque::new(),
            resume: VecDeque::new(),
            lanes: Lanes::new(),
            cancel: Cancels::default(),
            stats: RuntimeStats::default(),
            events: Events::new(),
        };
        for _ in 0..s.cfg.initial_workers() {
            s.spawn_worker();
        }
        Ok(s)
    }

    /// Runs the loop until the runtime stops, with the panic policy of README.md ("The
    /// runtime's own bugs"): a panic here is a bug in rayfork. It is reported once, recorded
    /// in `health` so that every waiting and later call returns `Error::SchedulerPanicked`,
    /// and the fork server and workers are stopped; nothing else of the (possibly half
    /// updated) state is used.
    pub(crate) fn run(mut self, health: &Health) {
        match panic::catch_unwind(AssertUnwindSafe(|| self.serve())) {
            Ok(()) => self.shutdown(),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                eprintln!(
                    "rayfork: the scheduler thread panicked, a bug in rayfork (please report \
                     it): {message}. This runtime stops; its calls fail with \
                     Error::SchedulerPanicked."
                );
                health.set_panicked(message);
                // Closing the control socket makes the fork server kill and reap every
                // worker; a second panic must not keep the waiters below from waking.
                let _ = panic::catch_unwind(AssertUnwindSafe(|| self.fork.shutdown()));
                // Dropping the scheduler drops the reply channels of every waiting request
                // and of every event still queued: their callers wake with `health.gone()`.
            }
        }
    }

    /// The scheduler thread's loop: take driver events and socket input, dispatch, send; spin
    /// a little when there is nothing to do (`ipc::spin_budget`), then sleep in `poll`.
    fn serve(&mut self) {
        let mut last_work = Instant::now();
        'run: loop {
            let mut worked = false;
            loop {
                match self.rx.try_recv() {
                    Ok(ev) => {
                        worked = true;
                        if !self.handle(ev) {
                            break 'run;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'run,
                }
            }
            worked |= self.poll_sockets(Sleep::No);
            self.expire_deadlines();
            self.dispatch();
            self.flush();
            if worked {
                last_work = Instant::now();
                continue;
            }
            // No spinning while the fork server has work (a fork, a kill, a reap to report):
            // it needs the CPU this thread would hold, and its answer wakes us anyway.
            let spin = last_work.elapsed() < ipc::spin_budget();
            if spin && !self.fork.is_busy() {
                std::thread::yield_now();
                continue;
            }
            // Actors marked after this turn's dispatch (a resumed call) are seen to first.
            if !self.actors.dirty.is_empty() {
                continue;
            }
            // Sleep until a socket, the doorbell or the next deadline (see `Doorbell`).
            self.bell.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            match self.rx.try_recv() {
                Ok(ev) => {
                    self.bell.sleeping.store(false, Ordering::SeqCst);
                    if !self.handle(ev) {
                        break 'run;
                    }
                    last_work = Instant::now();
                    continue;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => break 'run,
            }
            // To the microsecond (ppoll): a cancel's grace period ends on time.
            let timeout = self
                .deadlines
                .next()
                .map(|d| d.saturating_duration_since(Instant::now()));
            self.poll_sockets(Sleep::Until(timeout));
            self.bell.sleeping.store(false, Ordering::SeqCst);
            self.bell.drain();
            last_work = Instant::now();
        }
    }

    fn shutdown(&mut self) {
        for w in self.pool.workers.values_mut() {
            if let Some(s) = w.close() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        self.fork.shutdown();
        // Fail whatever still waits, so no driver thread blocks forever.
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for rid in ids {
            if let Some(req) = self.requests.remove(&rid) {
                if let Requester::Driver(Some(tx)) = req.client {
                    let _ = tx.send(ToWorker::GetReply(Err(Error::NoRuntime)));
                }
            }
        }
    }

    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Driver { msg, reply } => self.on_message(Requester::Driver(reply), msg),
            Event::Stats { reply, reset_peaks } => {
                let mut s = self.stats;
                s.store = self.store.stats();
                s.objects = self.objects.len();
                s.tasks = self.tasks.len();
                s.watches = self.watches.len();
                s.workers = self.pool.workers.len();
                let _ = reply.send(s);
                if reset_peaks {
                    self.store.reset_peak();
                    self.stats.peak_workers = self.pool.workers.len();
                }
            }
            Event::Timeline(tx) => {
                let _ = tx.send(
                    self.events
                        .snapshot(|id| self.tasks.get(&id).map(|t| t.name.clone())),
                );
            }
            Event::Summary(tx) => {
                let _ = tx.send(
                    self.events
                        .summary(|id| self.tasks.get(&id).map(|t| t.spec.func.clone())),
                );
            }
            Event::Shutdown => return false,
            Event::InjectPanic(message) => panic!("{message}"),
        }
        true
    }

    fn dispatch(&mut self) {
        self.dispatch_ready();
        self.balance();
        self.pipeline();
    }
}
