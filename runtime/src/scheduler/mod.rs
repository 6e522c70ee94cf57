#![doc = include_str!("README.md")]

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use rayfork_plasma::{ShmArena, Store};

use crate::config::Config;
use crate::idmap::IdMap;
use crate::protocol::{Id, ToWorker};
use crate::shared_flags::{self, SharedFlags};
use crate::stats::RuntimeStats;
use crate::timeline::Events;
use crate::{Error, fork_server, ipc};

use self::actors::Actor;
use self::cancel::Cancels;
use self::gpus::Gpus;
use self::io::{BELL_TOKEN, FORK_TOKEN, READY_EVENTS};
use self::messages::{Client, ClientKey};
use self::objects::Object;
use self::pool::Worker;
use self::requests::Request;
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

pub(crate) use event::{Doorbell, Event};

pub(crate) struct Scheduler {
    cfg: Config,
    /// Generator tasks' streams, by task id (rule 10).
    streams: IdMap<Id, Stream>,
    actors: IdMap<Id, Actor>,
    rx: Receiver<Event>,
    bell: Arc<Doorbell>,
    store: Store<ShmArena>,
    objects: IdMap<Id, Object>,
    tasks: IdMap<Id, Task>,
    queue: VecDeque<Id>,
    resume: VecDeque<u32>,
    workers: IdMap<u32, Worker>,
    /// The slots of the pool's workers (not actors'), so that looking for a worker to run a
    /// task costs the pool, not every process.
    pool: std::collections::BTreeSet<u32>,
    pids: IdMap<i32, u32>,
    next_slot: u32,
    spawning: usize,
    cpus_used: f64,
    /// GPU devices and their free shares (rule 1, gpus.rs).
    gpus: Gpus,
    /// Custom resources held by frames, by name (rule 1).
    custom_used: HashMap<String, f64>,
    /// The task of each extra return id (rule 6).
    extra_of: IdMap<Id, Id>,
    requests: IdMap<u64, Request>,
    next_request: u64,
    deadlines: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    fork: OwnedFd,
    /// The fork server's socket is open (it is not polled after it closed).
    fork_alive: bool,
    /// No spinning before this: the fork server was just asked to fork or kill (`FORK_QUIET`).
    fork_quiet_until: Instant,
    fork_child: Child,
    stats: RuntimeStats,
    /// Workers with queued output, flushed once per turn of the loop.
    unflushed: Vec<u32>,
    /// Cancellation's state (rule 9).
    cancel: Cancels,
    /// The last stderr lines of workers that just exited, by pid, until their death is handled.
    stderr_tails: HashMap<i32, Vec<String>>,
    /// Lanes of claim cells not lent to a worker (rule 11).
    free_lanes: Vec<u32>,
    /// The last ticket armed in a claim cell.
    last_ticket: u64,
    /// Tasks queued on workers now (the sum of their `queued`), so that `balance` costs
    /// nothing when there are none.
    queued_now: usize,
    /// Every socket the scheduler reads (workers by slot, the fork server, the doorbell): a
    /// loop turn costs the sockets that have something, not one poll entry per worker.
    epoll: Epoll,
    /// The buffer `epoll` fills.
    ready: Vec<EpollEvent>,
    /// Actors that may be able to start or queue a call (`mark_actor`): a loop turn looks at
    /// these, not at every actor.
    dirty_actors: Vec<Id>,
    /// When every actor was last looked at (`ACTOR_SWEEP`).
    actors_swept: Instant,
    /// Task events for the timeline and the summary.
    events: Events,
}

impl Scheduler {
    /// Starts the fork server (on this thread, rule 3 in fork_server.rs) and the initial workers.
    pub(crate) fn new(
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
        let (fork_child, fork) =
            fork_server::spawn(&program, arena.fd().as_raw_fd(), flags.fd().as_raw_fd())?;
        let gpus = Gpus::new(cfg.num_gpus);
        let os = |what: &'static str| move |e: nix::Error| Error::os(what, std::io::Error::from(e));
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(os("epoll_create1"))?;
        epoll
            .add(&fork, EpollEvent::new(EpollFlags::EPOLLIN, FORK_TOKEN))
            .map_err(os("epoll_ctl"))?;
        epoll
            .add(
                bell.fd.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, BELL_TOKEN),
            )
            .map_err(os("epoll_ctl"))?;
        let mut s = Scheduler {
            store: Store::new(arena),
            cfg,
            streams: IdMap::default(),
            actors: IdMap::default(),
            rx,
            bell,
            objects: IdMap::default(),
            tasks: IdMap::default(),
            queue: VecDeque::new(),
            resume: VecDeque::new(),
            workers: IdMap::default(),
            pool: std::collections::BTreeSet::new(),
            pids: IdMap::default(),
            next_slot: 1,
            spawning: 0,
            cpus_used: 0.0,
            gpus,
            custom_used: HashMap::new(),
            extra_of: IdMap::default(),
            requests: IdMap::default(),
            next_request: 1,
            deadlines: BinaryHeap::new(),
            fork,
            fork_alive: true,
            fork_quiet_until: Instant::now(),
            fork_child,
            stats: RuntimeStats::default(),
            unflushed: Vec::new(),
            cancel: Cancels::new(flags),
            stderr_tails: HashMap::new(),
            free_lanes: (0..shared_flags::LANES).rev().collect(),
            last_ticket: 0,
            queued_now: 0,
            epoll,
            ready: vec![EpollEvent::empty(); READY_EVENTS],
            dirty_actors: Vec::new(),
            actors_swept: Instant::now(),
            events: Events::new(),
        };
        for _ in 0..s.cfg.initial_workers() {
            s.spawn_worker();
        }
        Ok(s)
    }

    /// The scheduler thread's loop: take driver events and socket input, dispatch, send; spin
    /// a little when there is nothing to do (`ipc::spin_budget`), then sleep in `poll`.
    pub(crate) fn run(mut self) {
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
            worked |= self.poll_sockets(None);
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
            if spin && Instant::now() >= self.fork_quiet_until {
                std::thread::yield_now();
                continue;
            }
            // Actors marked after this turn's dispatch (a resumed call) are seen to first.
            if !self.dirty_actors.is_empty() {
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
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            self.poll_sockets(Some(timeout));
            self.bell.sleeping.store(false, Ordering::SeqCst);
            self.bell.drain();
            last_work = Instant::now();
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Closing the control socket makes the fork server kill and reap every worker (rule 3
        // in fork_server.rs); then we reap the fork server.
        let _ = nix::sys::socket::shutdown(self.fork.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        for w in self.workers.values_mut() {
            if let Some(s) = w.stream.take() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = self.fork_child.wait();
        // Fail whatever still waits, so no driver thread blocks forever.
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for rid in ids {
            if let Some(req) = self.requests.remove(&rid) {
                if let ClientKey::Driver(tx) = req.client {
                    let _ = tx.send(ToWorker::GetReply(Err(Error::NoRuntime)));
                }
            }
        }
    }

    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Driver { msg, reply } => self.on_message(Client::Driver(reply), msg),
            Event::Stats(tx) => {
                let mut s = self.stats;
                s.store = self.store.stats();
                s.objects = self.objects.len();
                s.tasks = self.tasks.len();
                s.workers = self.workers.len();
                let _ = tx.send(s);
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
        }
        true
    }

    fn dispatch(&mut self) {
        self.dispatch_ready();
        self.balance();
        self.pipeline();
    }
}
