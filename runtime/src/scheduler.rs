//! The scheduler: one thread in the driver that owns the task table, the object directory, the
//! worker table, CPU accounting and the plasma store.
//!
//! Driver threads talk to it through `Event`s (and ring its `Doorbell`); it polls the workers'
//! sockets and the fork server's control socket itself, on the same thread, so a message from
//! a worker costs no extra thread hop. It runs no user code.
//!
//! Task states: queued (waiting for deps or a CPU) -> running on a worker -> finished or failed;
//! a task whose worker dies goes back to the front of the queue while attempts remain; a
//! cancelled task is removed if queued, or resolves to `TaskCancelled` once it stops (rule 9).
//! Worker states: starting -> idle <-> busy (a stack of frames: running, or blocked in `get`)
//! -> dead.
//!
//! Rules (cited as "rule N in scheduler.rs"):
//! 1. At most `num_cpus` CPUs are held by running frames. A frame blocked in `get`/`wait` gives
//!    its CPUs back; it takes them back before it resumes, ahead of any queued task. GPUs and
//!    custom resources are held by a frame from its start until it leaves the stack, blocked
//!    or not (as in Ray: a blocked task keeps its device and its license); GPUs are given as
//!    devices (gpus.rs: a fraction shares one, more take whole ones). A task starts only
//!    when all its resources are free; queued tasks wait in order for CPUs, but one waiting
//!    only for a GPU or custom resource is passed by the tasks behind it (so a holder blocked
//!    on a child never starves that child). A task that asks for more than a total fails at
//!    submission with `Error::Unschedulable`.
//! 2. A queued task goes to an idle worker; if none, a new worker is forked while fewer than
//!    `max_workers` exist; if that is not allowed, a blocked worker runs it nested on its stack
//!    (rule 2 in protocol.rs). So a nested workload never deadlocks for lack of processes.
//! 3. An object lives while its reference count is positive (rule 4 in protocol.rs). Refs are
//!    held by handles in processes, by tasks for their arguments, and by objects that mention
//!    them. A worker's handles are counted per worker and dropped when it dies.
//! 4. A worker's death fails or retries every task on its stack (retries go to the front of the
//!    queue), aborts its unsealed objects and drops its references. Children of a crashed task
//!    lose their refs with it: queued ones are dropped, running ones finish unobserved, and the
//!    retry submits them again.
//! 5. A message a worker has no right to send (an unknown task, another worker's object, a
//!    malformed request, a `Done` with the wrong number of return values) kills that worker,
//!    never the driver.
//! 6. A task's return objects (rule 5 in protocol.rs) resolve together: all from one `Done`, or
//!    all to the same error. The task is dropped unstarted only once every one of them is freed.
//! 7. `max_calls`: a worker that has run `max_calls` tasks of one function (with that option
//!    set) takes no more work and is sent `Exit` once its stack is empty; its exit is a
//!    retirement, not a crash, and the pool is refilled as after a death.
//! 8. Actors. An actor's constructor is a task whose id is the actor's id; it and every method
//!    call run on a worker of the actor's own (outside the pool: never given pool tasks, not
//!    counted in `max_workers`), one at a time, in submission order, holding no CPU. A method
//!    call's first argument is a ref to the actor, so calls wait for the constructor and keep
//!    the actor alive; when the actor's object is freed, its worker is told to exit. When the
//!    worker dies, the call it was running fails with `ActorDied` (or, with restarts left
//!    and `max_task_retries` not used up, goes back to the front of the calls); with restarts
//!    left a new
//!    worker re-runs the constructor (with the arguments it first got, kept alive meanwhile)
//!    and the queued calls run there; without, queued and later calls fail with `ActorDied`.
//!    Actor calls run even when nobody holds their result (made for their effect). A loop turn
//!    looks only at the actors something happened to (`mark_actor`), and at all of them every
//!    `ACTOR_SWEEP` while it turns; it does not sleep while marks wait.
//! 9. Cancelling a task that has not started (queued, waiting for its arguments or for a retry)
//!    removes it: it resolves to `TaskCancelled` at once and never runs. A running task is
//!    marked cancelled and the flag of its own frame is raised (shared_flags.rs); whatever it
//!    returns then, it resolves to `TaskCancelled`. If it still runs when the grace period ends
//!    (at once with `force`) its worker is killed. A cancelled task lost with its worker resolves
//!    to `TaskCancelled` and is never retried (rule 4 does not apply to it); the other frames of
//!    a worker killed for a cancel are resubmitted at the front of the queue without using one
//!    of their attempts. A recursive cancel applies the same to every unfinished task whose
//!    `parent` chain leads to the cancelled one. A running actor call (or constructor) only
//!    gets the cooperative request, never a kill: its process is the actor's. Cancelling a task that has finished (or any
//!    id that is not an unfinished task) does nothing and says `AlreadyFinished`.
//! 10. Generators. A task with `streaming` set yields items: each is an object its worker put,
//!     whose reference `Yield` moves to the task's stream. The caller takes items in order with
//!     `NextItem` (a request like `get`: a blocked frame gives its CPUs back), each answer
//!     moving the stream's reference to the caller. When more than the back-pressure bound of
//!     items wait untaken, the generator's `Yield` is answered only once the caller catches up,
//!     and its frame counts as blocked meanwhile (rule 1). The end of the task ends the stream
//!     (its count, or its error after the items yielded before it); a generator is never
//!     retried. The stream and its untaken items are freed with the task's object.
//! 11. Pipelining. When no idle worker can take a queued task and no blocked frame waits to
//!     resume, a plain task (no GPUs, custom resources, `max_calls` or streaming) may be
//!     queued on a pool worker that runs one plain frame with the same CPUs, up to
//!     `Config::pipeline_depth` per worker; an actor's next calls may be queued on its worker the
//!     same way. A queued task holds nothing and has not started: it starts (takes the CPUs
//!     of the frame it follows, uses an attempt) on the `Done` that empties the worker's stack,
//!     in the order it was sent (rule 6 in protocol.rs). The scheduler takes queued tasks back
//!     through their claim cells (shared_flags.rs), and those the worker has not claimed go
//!     back to the front of the queue: all of them when the frame blocks (so a task can wait
//!     for one queued behind it) or when a frame waits to resume (rule 1); the newest ones,
//!     from the busiest workers, while CPUs are free for them and rule 2 can place them (an
//!     idle worker, a new one, a blocked one); one that is cancelled, or that nobody waits for
//!     any more. When the worker dies they go back too, with no attempt used, and so does a
//!     task it was to start next but had not claimed.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::MsgFlags;
use nix::sys::time::TimeSpec;

use rayfork_plasma::{ClientId, ObjectId, ShmArena, Store};

use crate::config::Config;
use crate::gpus::Gpus;
use crate::idmap::IdMap;
use crate::ipc::{FrameReader, FrameWriter};
use crate::protocol::{
    ActorCall, Arg, ExitCause, ForkReply, ForkRequest, FromWorker, Id, Outcome, Payload, Resolved,
    RunTask, TaskOpts, TaskSpec, ToWorker,
};
use crate::shared_flags::{self, SharedFlags};
use crate::timeline::{self, Events, TaskSummary};
use crate::{CancelOutcome, Error, fork_server, ipc};

/// What driver threads ask of the scheduler thread (workers and the fork server speak on
/// their sockets, which the scheduler polls itself).
// Nearly every event is `Driver`; boxing it would cost an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Event {
    /// A request from the driver; `reply` receives the answer to requests that have one.
    Driver {
        msg: FromWorker,
        reply: Option<Sender<ToWorker>>,
    },
    /// A snapshot of the runtime's counters.
    Stats(Sender<RuntimeStats>),
    /// The task runs kept for the timeline (timeline.rs).
    Timeline(Sender<Vec<timeline::Run>>),
    /// Tasks by function and state.
    Summary(Sender<TaskSummary>),
    /// Stop: kill the workers and the fork server and end the thread.
    Shutdown,
}

/// Wakes the scheduler thread when it sleeps in `poll`: an eventfd it polls beside the
/// sockets, rung by senders of `Event`s only while the scheduler says it sleeps.
///
/// The scheduler stores `sleeping = true` and then looks at its channel once more before it
/// polls; a sender puts its event in the channel and then reads `sleeping`. A SeqCst fence
/// on each side between the write and the read orders them, so either the scheduler sees the
/// event or the sender sees `sleeping` and rings: no wake-up is lost.
#[derive(Debug)]
pub(crate) struct Doorbell {
    sleeping: AtomicBool,
    fd: EventFd,
}

impl Doorbell {
    pub(crate) fn new() -> crate::Result<Doorbell> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::os("eventfd", std::io::Error::from(e)))?;
        Ok(Doorbell {
            sleeping: AtomicBool::new(false),
            fd,
        })
    }

    /// Called after an event was sent: wakes the scheduler if it sleeps.
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.fd.write(1);
        }
    }

    fn drain(&self) {
        let _ = self.fd.read();
    }
}

/// Counters of a running runtime (see `Runtime::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RuntimeStats {
    /// The object store's accounting.
    pub store: rayfork_plasma::Stats,
    /// Objects known to the scheduler (inline or stored, pending or ready).
    pub objects: usize,
    /// Tasks not yet finished.
    pub tasks: usize,
    /// Worker processes alive (or starting).
    pub workers: usize,
    /// Worker processes forked since the start, replacements included.
    pub workers_started: u64,
    /// Workers lost to crashes or kills.
    pub workers_died: u64,
    /// Tasks that ran nested on a blocked worker's stack.
    pub nested_inline: u64,
    /// The largest number of worker processes alive at once.
    pub peak_workers: usize,
    /// Workers retired after reaching a task's `max_calls` (rule 7).
    pub workers_retired: u64,
    /// Tasks sent to wait on a busy worker (rule 11): each was started from there
    /// (`pipelined`), taken back (`taken_back`), is still there, or went back to the queue
    /// when its worker died.
    pub queued: u64,
    /// Tasks started from a busy worker's queue, without a round trip (rule 11).
    pub pipelined: u64,
    /// Queued tasks taken back from a worker before it started them (rule 11).
    pub taken_back: u64,
}

enum Client {
    Driver(Option<Sender<ToWorker>>),
    Worker(u32),
}

enum ObjState {
    Pending,
    Ready(Payload),
    Failed(Error),
}

struct Object {
    refs: i64,
    state: ObjState,
    /// Ids this object's bytes mention; each holds a ref (rule 3).
    contained: Vec<Id>,
    /// The object has store memory (sealed or not).
    stored: bool,
    sealed: bool,
    /// The worker that created its store memory and has not sealed it yet.
    creator: Option<u32>,
    waiters: Vec<Waiting>,
}

impl Object {
    /// A pending object with the one reference of the handle that names it.
    fn pending() -> Object {
        Object {
            refs: 1,
            state: ObjState::Pending,
            contained: Vec::new(),
            stored: false,
            sealed: false,
            creator: None,
            waiters: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
enum Waiting {
    Request(u64),
    Task(Id),
}

struct Task {
    spec: TaskSpec,
    name: String,
    missing: usize,
    attempts: u32,
    /// The worker it runs on, or is queued on (rule 11).
    worker: Option<u32>,
    /// Queued on `worker`, not started (rule 11).
    queued: bool,
    parent: Option<Id>,
}

enum RequestKind {
    Get,
    Wait {
        need: usize,
    },
    /// Item `index` of the stream of the task `ids[0]` (rule 10).
    Next {
        index: u64,
    },
    /// A generator waits for room in its stream `ids[0]` (rule 10).
    YieldRoom,
}

/// The items of a generator task (rule 10).
struct Stream {
    /// Items yielded so far; the stream holds one reference to each until the caller takes it
    /// (then `None`: the reference moved to the caller).
    items: Vec<Option<Id>>,
    /// Items taken by the caller (the highest index asked for, plus one).
    taken: u64,
    /// At most this many items wait untaken (0: no limit).
    bound: u32,
    /// Requests waiting on this stream: `Next`s, and the generator's `YieldRoom`.
    waiting: Vec<u64>,
}

impl Stream {
    fn has_room(&self) -> bool {
        self.bound == 0 || (self.items.len() as u64).saturating_sub(self.taken) < self.bound as u64
    }
}

struct Request {
    client: ClientKey,
    ids: Vec<Id>,
    kind: RequestKind,
    missing: usize,
    /// Its timeout, for the `Timeout` error.
    timeout_ms: Option<u64>,
}

#[derive(Clone)]
enum ClientKey {
    Driver(Sender<ToWorker>),
    Worker(u32),
}

struct Frame {
    task: Id,
    cpus: f64,
    /// GPUs and custom resources, held until the frame leaves the stack (rule 1).
    other: Held,
    /// Blocked in this request.
    blocked: Option<u64>,
    /// The answer to its request, held until the frame is on top and has CPUs (rule 1).
    pending: Option<ToWorker>,
    /// For a frame at the bottom of the stack: the sequence number of the last task queued on
    /// the worker before this frame's task was sent (rule 11). When it is done, every queued
    /// task up to that one is settled on the worker's side.
    mark: u64,
    /// For a task started from the worker's queue: its claim cell and ticket (rule 11).
    claim: Option<(u32, u64)>,
}

impl Frame {
    fn new(task: Id, cpus: f64, other: Held, mark: u64) -> Frame {
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

/// A task queued on a busy worker (rule 11).
#[derive(Clone, Copy)]
struct Queued {
    task: Id,
    /// Its place in the worker's sequence of queued tasks (from 1); picks its claim cell.
    seq: u64,
    /// The value armed in the claim cell: unique over the runtime's life.
    ticket: u64,
    /// The CPUs it takes when it starts (those of the frame it follows).
    cpus: f64,
}

struct Worker {
    pid: i32,
    /// The actor this worker belongs to (rule 8); `None` for a pool worker.
    actor: Option<Id>,
    /// The driver's end of its socket, non-blocking; `None` once it hung up.
    stream: Option<UnixStream>,
    reader: FrameReader,
    out: FrameWriter,
    ready: bool,
    stack: Vec<Frame>,
    /// Net references held by this worker's handles (rule 3).
    held: IdMap<Id, i64>,
    hung_up: bool,
    /// Tasks run per function, counted for functions called with `max_calls` (rule 7).
    calls: HashMap<String, u32>,
    /// Reached a `max_calls`: takes no more work (rule 7).
    retiring: bool,
    /// Sent `Exit`: its end is a retirement (rule 7).
    retired: bool,
    /// Its socket is in the epoll set for writability too (output is waiting for room).
    out_armed: bool,
    /// Its lane of claim cells, if one was free when it was forked (rule 11).
    lane: Option<u32>,
    /// Tasks queued on it, in the order sent (rule 11).
    queued: VecDeque<Queued>,
    /// The sequence number of the last task queued on it.
    last_seq: u64,
    /// Every task queued on it up to this sequence number is settled on its side (claimed or
    /// dropped), so their claim cells may be armed again.
    settled: u64,
}

impl Worker {
    /// True for a pool worker that is up, connected and takes work (not an actor's, not
    /// retiring: rules 7, 8).
    fn takes_pool_work(&self) -> bool {
        self.actor.is_none() && self.ready && self.stream.is_some() && !self.retiring
    }

    /// True if a task needing `cpus` can be queued behind its running frame, with at most
    /// `depth` tasks queued (rule 11).
    fn can_queue(&self, cpus: f64, depth: usize) -> bool {
        self.lane.is_some()
            && self.ready
            && self.stream.is_some()
            && !self.retiring
            && self.stack.len() == 1
            && self.stack[0].blocked.is_none()
            && (self.stack[0].cpus - cpus).abs() < EPS
            && self.queued.len() < depth
            && self.last_seq + 1 - self.settled <= shared_flags::RING
    }
}

/// GPUs and custom resources of a task (rule 1).
#[derive(Debug, Clone, Default)]
struct Held {
    /// GPU devices and the share of each (gpus.rs).
    gpus: Vec<(u32, f64)>,
    custom: Vec<(String, f64)>,
}

/// An actor (rule 8).
struct Actor {
    name: String,
    /// Its current worker.
    slot: Option<u32>,
    /// The constructor's function and resolved arguments, kept for restarts once it started.
    ctor: Option<(String, Vec<Payload>)>,
    /// Ids whose references the kept arguments hold.
    ctor_refs: Vec<Id>,
    /// The constructor ran on the current worker.
    constructed: bool,
    /// Method calls not started yet, in submission order.
    calls: VecDeque<Id>,
    restarts_left: u32,
    /// Times a call running at a crash runs again after the restart.
    max_task_retries: u32,
    /// Why it is gone for good; `None` while it lives or will restart.
    dead: Option<String>,
    /// Its object was freed: no handle or call can name it any more.
    freed: bool,
    /// In `dirty_actors`: something changed that may let it start or queue a call.
    dirty: bool,
}

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

/// What the scheduler keeps for cancellation (rule 9).
struct Cancels {
    /// The shared flags that `rayfork::is_cancelled()` reads.
    flags: SharedFlags,
    /// Tasks cancelled while running: they resolve to `TaskCancelled` when they stop.
    running: HashSet<Id>,
    /// Kill timers: deadline key (from `next_request`, in `deadlines`) -> (worker, task).
    timers: HashMap<u64, (u32, Id)>,
    /// Queued tasks cancelled after their worker claimed them: (force, grace), applied when
    /// they start (rule 11).
    on_start: HashMap<Id, (bool, Duration)>,
    /// Workers killed to stop a cancelled task, until their death is handled.
    killed: HashSet<u32>,
}

impl Cancels {
    fn new(flags: SharedFlags) -> Self {
        Cancels {
            flags,
            running: HashSet::new(),
            timers: HashMap::new(),
            on_start: HashMap::new(),
            killed: HashSet::new(),
        }
    }
}

const EPS: f64 = 1e-9;

/// The epoll tokens of the fork server's socket and the doorbell; a worker's is its slot.
const FORK_TOKEN: u64 = u64::MAX;
const BELL_TOKEN: u64 = u64::MAX - 1;
/// Events taken from epoll per call.
const READY_EVENTS: usize = 64;
/// How often `dispatch_actors` looks at every actor, beside the ones marked, while the loop
/// turns: a safety net for a change that went unmarked.
const ACTOR_SWEEP: Duration = Duration::from_millis(10);

/// How long the scheduler does not spin after asking the fork server for a fork or a kill: the
/// fork server needs a CPU to do it (and to reap and report), and on 2 CPUs a spinning
/// scheduler and driver held it back by milliseconds (force cancel 2.2 ms median against
/// 0.66 ms without spinning, microbenchmark faults section).
const FORK_QUIET: Duration = Duration::from_millis(5);

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

    /// Handles what arrived on the sockets (and marks the workers whose socket has room for
    /// their waiting output). With `sleep`, first sleeps until something arrives or the timeout
    /// (`None`: none) passes. True if anything happened.
    fn poll_sockets(&mut self, sleep: Option<Option<Duration>>) -> bool {
        if let Some(timeout) = sleep {
            // To the microsecond: ppoll on the epoll fd, readable when any of its fds is.
            let mut fds = [PollFd::new(self.epoll.0.as_fd(), PollFlags::POLLIN)];
            let _ = ppoll(&mut fds, timeout.map(TimeSpec::from_duration), None);
        }
        let mut ready = std::mem::take(&mut self.ready);
        let n = self.epoll.wait(&mut ready, 0u8).unwrap_or(0);
        let mut worked = false;
        for ev in &ready[..n] {
            let flags = ev.events();
            match ev.data() {
                BELL_TOKEN => self.bell.drain(),
                FORK_TOKEN => {
                    worked = true;
                    self.read_fork_server();
                }
                slot => {
                    let slot = slot as u32;
                    if !self.workers.contains_key(&slot) {
                        continue;
                    }
                    worked = true;
                    if flags.contains(EpollFlags::EPOLLOUT) {
                        self.unflushed.push(slot);
                    }
                    let readable =
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                    if flags.intersects(readable) {
                        self.read_worker(slot);
                    }
                }
            }
        }
        self.ready = ready;
        worked
    }

    /// Reads what worker `slot` sent (one buffer's worth) and handles each whole message. True
    /// if it read something and the socket is still open.
    fn read_worker(&mut self, slot: u32) -> bool {
        let Some(w) = self.workers.get_mut(&slot) else {
            return false;
        };
        let Some(stream) = &w.stream else {
            return false;
        };
        let (read, closed) = match w.reader.fill(stream, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => (false, true),
            Ok(_) => (true, false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => (false, false),
            Err(_) => (false, true),
        };
        loop {
            let Some(w) = self.workers.get_mut(&slot) else {
                return false;
            };
            if w.stream.is_none() {
                return false;
            }
            match w.reader.next::<FromWorker>() {
                Ok(Some(msg)) => self.on_message(Client::Worker(slot), msg),
                Ok(None) => break,
                Err(e) => {
                    self.kill_worker(slot, &format!("unreadable message: {e}"));
                    return false;
                }
            }
        }
        if closed {
            self.on_hangup(slot);
        }
        read
    }

    fn read_fork_server(&mut self) {
        match ipc::recv_packet::<ForkReply>(&self.fork) {
            Ok(Some((msg, fds))) => self.on_fork(msg, fds),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => self.on_fork_server_gone(),
        }
    }

    /// Sends what every worker has queued, as far as its socket takes it without blocking.
    fn flush(&mut self) {
        let mut slots = std::mem::take(&mut self.unflushed);
        slots.sort_unstable();
        slots.dedup();
        for &slot in &slots {
            let Some(w) = self.workers.get_mut(&slot) else {
                continue;
            };
            let Some(stream) = &w.stream else { continue };
            // A full socket keeps the rest until epoll says it has room (see `poll_sockets`).
            if w.out.flush(stream, MsgFlags::MSG_DONTWAIT).is_err() {
                self.on_hangup(slot);
                continue;
            }
            let waiting = !w.out.is_empty();
            if waiting != w.out_armed {
                let mut interest = EpollFlags::EPOLLIN;
                if waiting {
                    interest |= EpollFlags::EPOLLOUT;
                }
                let mut ev = EpollEvent::new(interest, u64::from(slot));
                if self.epoll.modify(stream, &mut ev).is_ok() {
                    w.out_armed = waiting;
                }
            }
        }
        slots.clear();
        self.unflushed = slots;
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

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|r| r.0.0)
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

    // ---- workers and the fork server ----

    fn spawn_worker(&mut self) {
        self.spawn_worker_for(None);
    }

    /// Forks a worker for the pool, or for `actor` (rule 8); its slot if the request went out.
    fn spawn_worker_for(&mut self, actor: Option<Id>) -> Option<u32> {
        let slot = self.next_slot;
        self.next_slot += 1;
        if ipc::send_packet(&self.fork, &ForkRequest::Spawn { worker: slot }, &[]).is_err() {
            return None;
        }
        self.fork_quiet_until = Instant::now() + FORK_QUIET;
        {
            if actor.is_none() {
                self.spawning += 1;
                self.pool.insert(slot);
            }
            self.workers.insert(
                slot,
                Worker {
                    pid: 0,
                    actor,
                    stream: None,
                    reader: FrameReader::default(),
                    out: FrameWriter::default(),
                    ready: false,
                    stack: Vec::new(),
                    held: IdMap::default(),
                    hung_up: false,
                    calls: HashMap::new(),
                    retiring: false,
                    retired: false,
                    out_armed: false,
                    lane: self.free_lanes.pop(),
                    queued: VecDeque::new(),
                    last_seq: 0,
                    settled: 0,
                },
            );
            self.stats.workers_started += 1;
            self.stats.peak_workers = self.stats.peak_workers.max(self.workers.len());
        }
        Some(slot)
    }

    /// Pool workers alive or starting, that will take work (actor workers are not counted,
    /// rule 8; nor retiring ones, rule 7: a replacement may be forked while one finishes).
    fn pool_len(&self) -> usize {
        self.pool_workers().filter(|(_, w)| !w.retiring).count()
    }

    /// The pool's workers, lowest slot first.
    fn pool_workers(&self) -> impl Iterator<Item = (u32, &Worker)> + '_ {
        self.pool
            .iter()
            .filter_map(|&s| self.workers.get(&s).map(|w| (s, w)))
    }

    fn on_fork(&mut self, msg: ForkReply, mut fds: Vec<OwnedFd>) {
        match msg {
            ForkReply::Spawned { worker, pid } => {
                let Some(fd) = fds.pop() else { return };
                let stream = UnixStream::from(fd);
                let Some(w) = self.workers.get_mut(&worker) else {
                    return;
                };
                w.pid = pid;
                self.pids.insert(pid, worker);
                let interest = EpollEvent::new(EpollFlags::EPOLLIN, u64::from(worker));
                if stream.set_nonblocking(true).is_ok() && self.epoll.add(&stream, interest).is_ok()
                {
                    w.stream = Some(stream);
                } else {
                    // Unreachable for the scheduler: end it now (its exit is reported as usual).
                    w.hung_up = true;
                }
                if let Some(a) = w.actor {
                    self.mark_actor(a);
                }
                let Some(w) = self.workers.get(&worker) else {
                    return;
                };
                // Killed, or its actor gone, before it existed: end it now that it does.
                let unwanted = w.hung_up
                    || w.actor
                        .is_some_and(|a| self.actors.get(&a).is_none_or(|a| a.dead.is_some()));
                if unwanted {
                    self.on_hangup(worker);
                }
            }
            ForkReply::SpawnFailed { worker, message } => {
                eprintln!("rayfork: forking worker {worker} failed: {message}");
                let gone = self.workers.remove(&worker);
                self.pool.remove(&worker);
                if let Some(lane) = gone.as_ref().and_then(|w| w.lane) {
                    self.free_lanes.push(lane);
                }
                match gone.and_then(|w| w.actor) {
                    Some(a) => {
                        if let Some(actor) = self.actors.get_mut(&a) {
                            actor.slot = None;
                        }
                        self.actor_gone(a, format!("its process could not start: {message}"))
                    }
                    None => self.spawning = self.spawning.saturating_sub(1),
                }
            }
            ForkReply::StderrTail { pid, lines } => self.on_stderr_tail(pid, lines),
            ForkReply::Exited { pid, cause } => {
                if let Some(slot) = self.pids.remove(&pid) {
                    // What it sent before it died counts: a `Done` still unread would charge
                    // its crash to the task that finished (and spare the one that crashed).
                    while self.read_worker(slot) {}
                    self.on_worker_death(slot, cause);
                }
            }
        }
    }

    fn on_fork_server_gone(&mut self) {
        self.fork_alive = false;
        // A closed socket is always readable: out of the set.
        let _ = self.epoll.delete(&self.fork);
        let slots: Vec<u32> = self.workers.keys().copied().collect();
        for slot in slots {
            self.on_worker_death(slot, ExitCause::Signal(libc::SIGKILL));
        }
        // Nothing can run any more: fail what is queued.
        let queued: Vec<Id> = self.queue.drain(..).collect();
        for t in queued {
            self.finish_task(t, Err(Error::Runtime("the fork server died".into())));
        }
    }

    fn on_hangup(&mut self, slot: u32) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        w.hung_up = true;
        if let Some(stream) = w.stream.take() {
            let _ = self.epoll.delete(&stream);
        }
        let pid = w.pid;
        // Make sure it is dead; its exit (with the cause) comes from the fork server.
        let _ = ipc::send_packet(&self.fork, &ForkRequest::Kill { pid }, &[]);
        self.fork_quiet_until = Instant::now() + FORK_QUIET;
    }

    fn kill_worker(&mut self, slot: u32, why: &str) {
        eprintln!("rayfork: killing worker {slot}: {why}");
        self.on_hangup(slot);
    }

    fn on_worker_death(&mut self, slot: u32, cause: ExitCause) {
        let Some(mut w) = self.workers.remove(&slot) else {
            return;
        };
        self.pool.remove(&slot);
        // Out of the epoll set before its socket closes: a copy of the fd (a fork in the
        // driver) would otherwise keep a registration no one can remove.
        if let Some(stream) = w.stream.take() {
            let _ = self.epoll.delete(&stream);
        }
        // Rule 11: a task started from its queue that it never claimed (it died between the
        // `Done` before it and the claim) never ran: it goes back with the queued ones.
        let unclaimed = w.stack.len() == 1
            && w.stack[0]
                .claim
                .is_some_and(|(cell, ticket)| self.cancel.flags.take(cell, ticket));
        if unclaimed {
            let f = w.stack.pop().expect("one frame");
            self.events.unstarted(f.task);
            self.stats.pipelined = self.stats.pipelined.saturating_sub(1);
            self.queued_now += 1;
            self.cpus_used -= f.cpus;
            if let Some(t) = self.tasks.get_mut(&f.task) {
                t.attempts = t.attempts.saturating_sub(1);
            }
            w.queued.push_front(Queued {
                task: f.task,
                seq: f.mark,
                ticket: 0,
                cpus: f.cpus,
            });
        }
        if w.retired {
            self.stats.workers_retired += 1;
        } else {
            self.stats.workers_died += 1;
        }
        if !w.ready && w.actor.is_none() {
            self.spawning = self.spawning.saturating_sub(1);
        }
        self.resume.retain(|&s| s != slot);
        for f in &w.stack {
            if let Some(rid) = f.blocked {
                self.requests.remove(&rid);
            }
        }
        // Only a running top frame holds CPUs (rule 1).
        if let Some(top) = w.stack.last() {
            if top.blocked.is_none() {
                self.cpus_used -= top.cpus;
            }
        }
        if self.cpus_used < EPS {
            self.cpus_used = 0.0;
        }
        // Every frame holds its GPUs and custom resources (rule 1).
        for f in &w.stack {
            self.release_other(&f.other);
        }
        let crash = self.crash_cause(w.pid, cause);
        for f in &w.stack {
            let name = self.tasks.get(&f.task).map_or("", |t| t.name.as_str());
            let outcome = if self.cancel.running.contains(&f.task) {
                timeline::Outcome::Cancelled
            } else {
                timeline::Outcome::Crashed
            };
            self.events.ended(f.task, name, outcome);
        }
        if let Some(lane) = w.lane {
            self.free_lanes.push(lane);
        }
        // Rule 11: its queued tasks never started; they go back in order, no attempt used.
        self.queued_now = self.queued_now.saturating_sub(w.queued.len());
        for q in w.queued.iter().rev() {
            let Some(t) = self.tasks.get_mut(&q.task) else {
                continue;
            };
            t.worker = None;
            t.queued = false;
            let cancelled = self.cancel.on_start.remove(&q.task).is_some()
                | self.cancel.running.remove(&q.task);
            if cancelled {
                let err = Error::TaskCancelled {
                    task: t.name.clone(),
                };
                self.finish_task(q.task, Err(err));
            } else {
                self.requeue_front(q.task);
            }
        }
        if let Some(actor) = w.actor {
            // A cancelled call resolves as cancelled (rule 9); the others die with the actor.
            for f in &w.stack {
                if self.cancel.running.contains(&f.task) {
                    self.cancel_on_death(slot, f.task);
                }
            }
            self.actor_worker_died(actor, &w.stack, &crash);
        }
        // Rule 4: retry or fail every task on its stack.
        for f in w.stack.iter().rev().filter(|_| w.actor.is_none()) {
            if self.cancel_on_death(slot, f.task) {
                continue;
            }
            let Some(t) = self.tasks.get_mut(&f.task) else {
                continue;
            };
            t.worker = None;
            if t.attempts <= t.spec.opts.max_retries && t.spec.opts.streaming.is_none() {
                self.events.retried(&t.spec.func);
                self.reset_returns(f.task);
                self.queue.push_front(f.task);
            } else {
                let err = Error::WorkerCrashed {
                    task: t.name.clone(),
                    attempts: t.attempts,
                    cause: crash.clone(),
                };
                self.finish_task(f.task, Err(err));
            }
        }
        self.cancel.killed.remove(&slot);
        for (id, n) in w.held {
            if n != 0 {
                self.add_ref(id, -n);
            }
        }
        self.store.client_gone(ClientId(slot));
        // Keep the pool at its size.
        if w.actor.is_none() && self.pool_len() < self.cfg.initial_workers() {
            self.spawn_worker();
        }
    }

    fn send_to(&mut self, slot: u32, msg: &ToWorker) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        if w.stream.is_none() {
            return;
        }
        if w.out.push(msg).is_err() {
            return self.kill_worker(slot, "a message to it could not be encoded");
        }
        self.unflushed.push(slot);
    }

    fn reply(&mut self, client: &ClientKey, msg: ToWorker) {
        match client {
            ClientKey::Driver(tx) => {
                let _ = tx.send(msg);
            }
            ClientKey::Worker(slot) => self.send_to(*slot, &msg),
        }
    }

    // ---- messages ----

    fn on_message(&mut self, client: Client, msg: FromWorker) {
        let slot = match &client {
            Client::Worker(s) => Some(*s),
            Client::Driver(_) => None,
        };
        // Whatever an actor's worker says may free it for its next call.
        if let Some(a) = slot
            .and_then(|s| self.workers.get(&s))
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
                if let Some(w) = self.workers.get_mut(&slot) {
                    if !w.ready {
                        w.ready = true;
                        if w.actor.is_none() {
                            self.spawning = self.spawning.saturating_sub(1);
                        }
                    }
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

    fn bad(&mut self, slot: Option<u32>, why: &str) {
        match slot {
            Some(s) => self.kill_worker(s, why),
            None => eprintln!("rayfork: driver protocol error: {why}"),
        }
    }

    /// Records that worker `slot` holds `d` more references to `id` (rule 3).
    fn own(&mut self, slot: Option<u32>, id: Id, d: i64) {
        if let Some(w) = slot.and_then(|s| self.workers.get_mut(&s)) {
            let e = w.held.entry(id).or_insert(0);
            *e += d;
            if *e == 0 {
                w.held.remove(&id);
            }
        }
    }

    fn add_ref(&mut self, id: Id, d: i64) {
        let Some(o) = self.objects.get_mut(&id) else {
            return;
        };
        o.refs += d;
        if o.refs <= 0 {
            self.free(id);
        }
    }

    fn free(&mut self, id: Id) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if self.is_running_return(id) && !self.take_back_unwanted(id) {
                // Kept (with no refs) until its task ends: the worker may still write it; it is
                // freed when it resolves (rule 6).
                continue;
            }
            let Some(o) = self.objects.remove(&id) else {
                continue;
            };
            if self.actors.contains_key(&id) {
                self.actor_freed(id);
            }
            if let Some(st) = self.streams.remove(&id) {
                for item in st.items.into_iter().flatten() {
                    self.add_ref(item, -1);
                }
            }
            if o.stored {
                self.release_memory(id, o.sealed);
            }
            for c in o.contained {
                if let Some(co) = self.objects.get_mut(&c) {
                    co.refs -= 1;
                    if co.refs <= 0 {
                        stack.push(c);
                    }
                }
            }
            // A task nobody waits for any more: drop it if it has not started (rules 4, 6). An
            // actor call runs anyway: it is made for its effect on the actor (rule 8).
            if let ObjState::Pending = o.state {
                let task = self.task_of_return(id);
                let unstarted = self
                    .tasks
                    .get(&task)
                    .is_some_and(|t| t.worker.is_none() && t.spec.actor.is_none());
                if unstarted && !self.any_return_alive(task) {
                    self.queue.retain(|&q| q != task);
                    self.release_task_args(task);
                    // Its other returns may have been kept with no refs while it was queued on
                    // a worker (rule 11): with the task gone, they go too.
                    let rets: Vec<Id> = std::iter::once(task)
                        .chain(
                            self.tasks
                                .get(&task)
                                .map_or(&[][..], |t| &t.spec.extra[..])
                                .iter()
                                .copied(),
                        )
                        .collect();
                    self.forget_task(task);
                    stack.extend(
                        rets.into_iter()
                            .filter(|r| self.objects.get(r).is_some_and(|o| o.refs <= 0)),
                    );
                }
            }
        }
    }

    /// Gives an object's store memory back: deleted if sealed (freed once unpinned), aborted
    /// if its writer never sealed it.
    fn release_memory(&mut self, id: Id, sealed: bool) {
        let oid = ObjectId::from_u128(id);
        let _ = if sealed {
            self.store.delete(oid)
        } else {
            self.store.abort(oid)
        };
    }

    fn create(&mut self, slot: Option<u32>, id: Id, size: u64) -> Result<(u64, u64), Error> {
        let client = ClientId(slot.unwrap_or(0));
        let oid = ObjectId::from_u128(id);
        // A large task result is written under the task's own id by the worker running it.
        if let Some(o) = self.objects.get(&id) {
            let runs_it = self
                .tasks
                .get(&self.task_of_return(id))
                .is_some_and(|t| t.worker.is_some() && t.worker == slot);
            if !(runs_it && matches!(o.state, ObjState::Pending) && !o.stored) {
                return Err(Error::Protocol(format!(
                    "create of an existing object {id:x}"
                )));
            }
            let d = self.store.create(oid, size, client)?;
            let o = self.objects.get_mut(&id).expect("checked above");
            o.stored = true;
            o.creator = slot;
            return Ok((d.offset, d.len));
        }
        // A result of a task this worker runs whose refs were all dropped before it started:
        // written with no ref, and freed when it resolves (rule 6).
        let orphan = self
            .tasks
            .get(&self.task_of_return(id))
            .is_some_and(|t| t.worker.is_some() && t.worker == slot);
        let d = self.store.create(oid, size, client)?;
        let created = Object {
            stored: true,
            creator: slot,
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

    fn seal(&mut self, slot: Option<u32>, id: Id, contained: Vec<Id>) {
        let ok = self
            .objects
            .get(&id)
            .is_some_and(|o| o.stored && !o.sealed && o.creator == slot);
        if !ok {
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
        let o = self.objects.get_mut(&id).expect("checked above");
        o.sealed = true;
        o.creator = None;
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

    fn abort(&mut self, slot: Option<u32>, id: Id) {
        let ok = self
            .objects
            .get(&id)
            .is_some_and(|o| o.stored && !o.sealed && o.creator == slot);
        if !ok {
            return self.bad(slot, "abort of an object it did not create");
        }
        let _ = self.store.abort(ObjectId::from_u128(id));
        if self.tasks.contains_key(&self.task_of_return(id)) {
            if let Some(o) = self.objects.get_mut(&id) {
                o.stored = false;
                o.creator = None;
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

    // ---- tasks ----

    fn submit(&mut self, slot: Option<u32>, spec: TaskSpec) {
        let id = spec.ret;
        if self.objects.contains_key(&id) || self.tasks.contains_key(&id) {
            return self.bad(slot, "submit of an id that exists");
        }
        if !self.extra_ids_fresh(&spec) {
            return self.bad(slot, "submit with a return id that exists or repeats");
        }
        let name = spec.opts.name.clone().unwrap_or_else(|| spec.func.clone());
        self.events.submitted(id);
        // The references the spec mentions move from the submitter to the task (rule 4).
        for c in spec.arg_ids() {
            self.own(slot, c, -1);
        }
        self.objects.insert(id, Object::pending());
        self.own(slot, id, 1);
        self.add_extra_returns(slot, &spec);
        let parent = slot
            .and_then(|s| self.workers.get(&s))
            .and_then(|w| w.stack.last())
            .map(|f| f.task);
        if let Some(err) = self.never_fits(&name, &spec.opts) {
            self.tasks.insert(
                id,
                Task {
                    spec,
                    name,
                    missing: 0,
                    attempts: 0,
                    worker: None,
                    queued: false,
                    parent,
                },
            );
            return self.finish_task(id, Err(err));
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
                        let err = Error::Protocol(format!(
                            "argument object {r:x} no longer exists (its last ref was dropped)"
                        ));
                        self.tasks.insert(
                            id,
                            Task {
                                spec,
                                name,
                                missing: 0,
                                attempts: 0,
                                worker: None,
                                queued: false,
                                parent,
                            },
                        );
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
                },
            );
        }
        self.tasks.insert(
            id,
            Task {
                spec,
                name,
                missing,
                attempts: 0,
                worker: None,
                queued: false,
                parent,
            },
        );
        if let Some(call) = actor {
            return self.actor_submitted(slot, id, call);
        }
        if missing == 0 {
            self.queue.push_back(id);
        }
    }

    /// Gives the task's argument references back (rule 3).
    fn release_task_args(&mut self, id: Id) {
        let Some(t) = self.tasks.get(&id) else { return };
        let ids: Vec<Id> = t.spec.arg_ids().collect();
        for r in ids {
            self.add_ref(r, -1);
        }
    }

    /// Stores a task's final result and wakes whoever waits for it. An error fails all its
    /// return objects (rule 6); values of extra returns are set by `finish_task_all` first.
    fn finish_task(&mut self, id: Id, result: Result<(Payload, Vec<Id>), Error>) {
        let outcome = timeline::Outcome::of(&result);
        self.finish_task_as(id, result, outcome);
    }

    /// `finish_task`, counted in the summary as `outcome` (a task whose argument failed is
    /// `Failed`, whatever error it passes on).
    fn finish_task_as(
        &mut self,
        id: Id,
        result: Result<(Payload, Vec<Id>), Error>,
        outcome: timeline::Outcome,
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
        // so that later calls fail instead of waiting for it (rule 8).
        let ctor_failed = match &result {
            Err(e) if self.actors.get(&id).is_some_and(|a| a.dead.is_none()) => Some(e.clone()),
            _ => None,
        };
        self.resolve_return(id, result);
        if let Some(e) = ctor_failed {
            self.actor_gone(id, format!("its constructor failed: {e}"));
        }
    }

    /// Stores the value (or error) of one return object and wakes whoever waits for it.
    fn resolve_return(&mut self, id: Id, result: Result<(Payload, Vec<Id>), Error>) {
        let Some(o) = self.objects.get_mut(&id) else {
            // Nobody holds the result: drop what it mentions.
            if let Ok((_, contained)) = result {
                for c in contained {
                    self.add_ref(c, -1);
                }
            }
            return;
        };
        match result {
            Ok((payload, contained)) => {
                o.state = ObjState::Ready(payload);
                o.contained = contained;
            }
            Err(e) => {
                o.state = ObjState::Failed(e);
                if o.stored {
                    let sealed = o.sealed;
                    o.stored = false;
                    self.release_memory(id, sealed);
                }
            }
        }
        self.notify(id);
        // Nobody held it while its task ran (rule 6): free it now.
        if self.objects.get(&id).is_some_and(|o| o.refs <= 0) {
            self.free(id);
        }
    }

    fn on_done(&mut self, slot: u32, task: Id, outcome: Outcome) {
        let on_top = self
            .workers
            .get(&slot)
            .and_then(|w| w.stack.last())
            .is_some_and(|f| f.task == task && f.blocked.is_none());
        if !on_top {
            return self.kill_worker(slot, "done for a task it was not running");
        }
        // Validate before touching any state, so a kill leaves the task on the worker's stack
        // for the death handler (rule 5).
        let result = match outcome {
            Outcome::Ok { payload, contained } => Ok(vec![(payload, contained)]),
            Outcome::Many(values) => Ok(values
                .into_iter()
                .map(|v| (v.payload, v.contained))
                .collect()),
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
            for (_, contained) in values {
                for &c in contained {
                    self.own(Some(slot), c, -1);
                }
            }
        }
        let w = self.workers.get_mut(&slot).expect("checked above");
        let frame = w.stack.pop().expect("checked above");
        if w.stack.is_empty() {
            // Every task queued before this one was sent is settled on the worker (rule 11).
            w.settled = w.settled.max(frame.mark);
        }
        self.cpus_used -= frame.cpus;
        if self.cpus_used < EPS {
            self.cpus_used = 0.0;
        }
        let result = self.cancelled_result(task, result);
        self.release_other(&frame.other);
        self.count_call(slot, task);
        if self.workers.get(&slot).and_then(|w| w.actor) == Some(task) {
            self.actor_constructed(task, result.as_ref().map(|_| ()));
        }
        if let Some(t) = self.tasks.get_mut(&task) {
            t.worker = None;
            self.events
                .ended(task, &t.name, timeline::Outcome::of(&result));
            let retry = matches!(&result, Err(e) if crate::task::retries_error(&t.spec.opts, e))
                && t.attempts <= t.spec.opts.max_retries
                && t.spec.opts.streaming.is_none();
            if retry {
                self.queue.push_front(task);
            } else {
                self.finish_task_all(task, result);
            }
        }
        self.after_pop(slot);
    }

    /// After a frame left a worker: resume the frame below, or start its next queued task
    /// (rule 11), or mark the worker idle.
    fn after_pop(&mut self, slot: u32) {
        let Some(w) = self.workers.get(&slot) else {
            return;
        };
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

    fn notify(&mut self, id: Id) {
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
                        if self.tasks.get(&t).is_some_and(|t| t.worker.is_none()) {
                            self.queue.retain(|&q| q != t);
                            self.finish_task_as(t, Err(err.clone()), timeline::Outcome::Failed);
                        }
                        continue;
                    }
                    if let Some(task) = self.tasks.get_mut(&t) {
                        task.missing = task.missing.saturating_sub(1);
                        if task.missing == 0 {
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
                                RequestKind::Get => r.missing == 0,
                                RequestKind::Wait { need } => r.ids.len() - r.missing >= need,
                                // The stream ended (rule 10).
                                RequestKind::Next { .. } => r.missing == 0,
                                // Only the caller taking items makes room.
                                RequestKind::YieldRoom => false,
                            }
                        }
                        None => false,
                    };
                    if done {
                        self.complete_request(rid, None);
                    }
                }
            }
        }
    }

    fn is_ready(&self, id: Id) -> bool {
        self.objects
            .get(&id)
            .is_none_or(|o| !matches!(o.state, ObjState::Pending))
    }

    fn resolve(&self, id: Id) -> Resolved {
        match self.objects.get(&id).map(|o| &o.state) {
            Some(ObjState::Ready(p)) => Resolved::Value(p.clone()),
            Some(ObjState::Failed(e)) => Resolved::Error(e.clone()),
            Some(ObjState::Pending) => Resolved::Error(Error::Protocol("not ready".into())),
            None => Resolved::Error(Error::Protocol(format!(
                "object {id:x} does not exist (freed, or never created)"
            ))),
        }
    }

    fn request(
        &mut self,
        client: ClientKey,
        ids: Vec<Id>,
        kind: RequestKind,
        timeout_ms: Option<u64>,
    ) {
        let missing = ids.iter().filter(|&&i| !self.is_ready(i)).count();
        let satisfied = match kind {
            RequestKind::Get => missing == 0,
            RequestKind::Wait { need } => ids.len() - missing >= need,
            RequestKind::Next { index } => missing == 0 || self.has_item(ids[0], index),
            RequestKind::YieldRoom => self.streams.get(&ids[0]).is_none_or(Stream::has_room),
        };
        if satisfied {
            // Answered at once: the frame never blocks and keeps its CPUs.
            let answer = self.answer_to(&client, &ids, &kind, None);
            return self.reply(&client, answer);
        }
        let rid = self.next_request;
        self.next_request += 1;
        let worker = match client {
            ClientKey::Worker(s) => Some(s),
            ClientKey::Driver(_) => None,
        };
        if matches!(kind, RequestKind::Next { .. } | RequestKind::YieldRoom) {
            if let Some(st) = self.streams.get_mut(&ids[0]) {
                st.waiting.push(rid);
            }
        }
        for id in &ids {
            if let Some(o) = self.objects.get_mut(id) {
                if matches!(o.state, ObjState::Pending) {
                    o.waiters.push(Waiting::Request(rid));
                }
            }
        }
        self.requests.insert(
            rid,
            Request {
                client,
                ids,
                kind,
                missing,
                timeout_ms,
            },
        );
        if let Some(ms) = timeout_ms {
            self.deadlines.push(std::cmp::Reverse((
                Instant::now() + Duration::from_millis(ms),
                rid,
            )));
        }
        // Rule 1: a blocked frame gives its CPUs back.
        if let Some(slot) = worker {
            let Some(f) = self.workers.get_mut(&slot).and_then(|w| w.stack.last_mut()) else {
                self.requests.remove(&rid);
                return self.kill_worker(slot, "get outside a task");
            };
            if f.blocked.is_some() {
                self.requests.remove(&rid);
                return self.kill_worker(slot, "a second request while blocked in one");
            }
            f.blocked = Some(rid);
            self.cpus_used -= f.cpus;
            if self.cpus_used < EPS {
                self.cpus_used = 0.0;
            }
            // Rule 11: a blocked frame may wait for a task queued behind it; none of them can
            // have been claimed, the worker's stack is not empty.
            if self.take_back_all(slot) > 0 {
                self.kill_worker(slot, "claimed a queued task while a frame was on its stack");
            }
        }
    }

    /// Acts on the deadlines that passed.
    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(std::cmp::Reverse((t, rid))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            self.on_cancel_timer(rid);
            if let Some(ms) = self.requests.get(&rid).and_then(|r| r.timeout_ms) {
                self.complete_request(rid, Some(ms));
            }
        }
    }

    /// The answer to a request over `ids`; `timed_out` is set when its deadline passed first.
    fn answer(&self, ids: &[Id], kind: &RequestKind, timed_out: Option<u64>) -> ToWorker {
        match kind {
            RequestKind::Get if timed_out.is_some() => ToWorker::GetReply(Err(Error::Timeout {
                millis: timed_out.unwrap_or(0),
            })),
            RequestKind::Get => {
                ToWorker::GetReply(Ok(ids.iter().map(|&i| self.resolve(i)).collect()))
            }
            RequestKind::Wait { .. } => {
                ToWorker::WaitReply(ids.iter().map(|&i| self.is_ready(i)).collect())
            }
            RequestKind::Next { index } => {
                ToWorker::NextItemReply(self.stream_item(ids[0], *index))
            }
            RequestKind::YieldRoom => ToWorker::YieldAck,
        }
    }

    /// `answer`, plus what answering a `Next` does: the stream's reference to the item moves
    /// to the asker, and the generator may get room (rule 10).
    fn answer_to(
        &mut self,
        client: &ClientKey,
        ids: &[Id],
        kind: &RequestKind,
        timed_out: Option<u64>,
    ) -> ToWorker {
        let answer = self.answer(ids, kind, timed_out);
        if let (RequestKind::Next { index }, ToWorker::NextItemReply(Ok(Some(item)))) =
            (kind, &answer)
        {
            let slot = match client {
                ClientKey::Worker(s) => Some(*s),
                ClientKey::Driver(_) => None,
            };
            // The stream's reference moves to the asker.
            self.own(slot, *item, 1);
            self.item_taken(ids[0], *index);
        }
        answer
    }

    /// Answers a waiting request; `timed_out` is set when its deadline passed first.
    fn complete_request(&mut self, rid: u64, timed_out: Option<u64>) {
        let Some(req) = self.requests.remove(&rid) else {
            return;
        };
        let answer = self.answer_to(&req.client, &req.ids, &req.kind, timed_out);
        match req.client {
            ClientKey::Driver(tx) => {
                let _ = tx.send(answer);
            }
            ClientKey::Worker(slot) => {
                // Rule 1: hold the answer until the frame is on top and has its CPUs back.
                let Some(w) = self.workers.get_mut(&slot) else {
                    return;
                };
                let Some(f) = w.stack.iter_mut().find(|f| f.blocked == Some(rid)) else {
                    return;
                };
                f.pending = Some(answer);
                let on_top = w.stack.last().is_some_and(|f| f.blocked == Some(rid));
                if on_top && !self.resume.contains(&slot) {
                    self.resume.push_back(slot);
                }
            }
        }
    }

    // ---- dispatch ----

    fn task_cpus(&self, id: Id) -> f64 {
        self.tasks.get(&id).map_or(0.0, |t| t.spec.opts.num_cpus)
    }

    fn fits(&self, cpus: f64) -> bool {
        self.cpus_used + cpus <= self.cfg.num_cpus as f64 + EPS
    }

    fn dispatch(&mut self) {
        self.dispatch_ready();
        self.balance();
        self.pipeline();
    }

    /// Starts queued tasks on idle workers (rules 1, 2).
    fn dispatch_ready(&mut self) {
        if !self.fork_alive && !self.queue.is_empty() {
            // Nothing can run any more (the fork server's death failed what was queued then).
            for t in std::mem::take(&mut self.queue) {
                self.finish_task(t, Err(Error::Runtime("the fork server died".into())));
            }
        }
        self.dispatch_actors();
        // Rule 1: resumptions first.
        while let Some(&slot) = self.resume.front() {
            let Some(f) = self.workers.get(&slot).and_then(|w| w.stack.last()) else {
                self.resume.pop_front();
                continue;
            };
            if f.pending.is_none() {
                self.resume.pop_front();
                continue;
            }
            let cpus = f.cpus;
            if !self.fits(cpus) {
                return;
            }
            self.resume.pop_front();
            let f = self
                .workers
                .get_mut(&slot)
                .and_then(|w| w.stack.last_mut())
                .expect("checked above");
            let msg = f.pending.take().expect("checked above");
            f.blocked = None;
            self.cpus_used += cpus;
            self.send_to(slot, &msg);
            if let Some(a) = self.workers.get(&slot).and_then(|w| w.actor) {
                self.mark_actor(a);
            }
        }
        while let Some(pos) = self.next_startable() {
            let task = self.queue[pos];
            let cpus = self.task_cpus(task);
            // Rule 2: an idle worker, else a new one, else a blocked one.
            let slot = match self.idle_worker() {
                Some(s) => s,
                None => {
                    // Fork as many workers as the queued tasks could use now (free CPUs,
                    // `max_workers`), all at once; the tasks wait for them.
                    let free_cpus = (self.cfg.num_cpus as f64 - self.cpus_used).max(1.0).ceil();
                    let want = self
                        .queue
                        .len()
                        .min(free_cpus as usize)
                        .min(self.cfg.max_workers.saturating_sub(self.pool_len()));
                    if self.spawning > 0 || want > 0 {
                        for _ in self.spawning..want {
                            self.spawn_worker();
                        }
                        return;
                    }
                    match self.blocked_worker() {
                        Some(s) => {
                            self.stats.nested_inline += 1;
                            s
                        }
                        None => return,
                    }
                }
            };
            self.queue.remove(pos);
            self.start_task(slot, task, cpus);
        }
    }

    /// The lowest idle pool worker, if any.
    fn idle_worker(&self) -> Option<u32> {
        self.pool_workers()
            .find(|(_, w)| w.takes_pool_work() && w.stack.is_empty())
            .map(|(s, _)| s)
    }

    /// The task to run, with its arguments resolved; the error of an argument that failed.
    fn run_message(&mut self, id: Id) -> Result<RunTask, Error> {
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
        let run = RunTask {
            task: id,
            func: t.spec.func.clone(),
            name: t.name.clone(),
            args,
            extra: t.spec.extra.clone(),
            gpus: Vec::new(),
        };
        if matches!(t.spec.actor, Some(ActorCall::Create { .. })) {
            self.keep_ctor(id, &run.args);
        }
        Ok(run)
    }

    fn start_task(&mut self, slot: u32, id: Id, cpus: f64) {
        let mut run = match self.run_message(id) {
            Ok(run) => run,
            Err(e) => return self.finish_task_as(id, Err(e), timeline::Outcome::Failed),
        };
        let t = self.tasks.get_mut(&id).expect("run_message found it");
        t.attempts += 1;
        t.worker = Some(slot);
        t.queued = false;
        // Pool tasks start only when their GPUs fit (`fits_other`); an actor takes what is free.
        let other = Held {
            gpus: self.gpus.pick(t.spec.opts.num_gpus).unwrap_or_default(),
            custom: t.spec.opts.resources.clone(),
        };
        run.gpus = other.gpus.iter().map(|&(d, _)| d).collect();
        self.acquire_other(&other);
        if let Some(w) = self.workers.get_mut(&slot) {
            w.stack.push(Frame::new(id, cpus, other, w.last_seq));
            self.events.started(id, w.pid, w.stack.len() - 1);
        }
        self.cpus_used += cpus;
        self.send_to(slot, &ToWorker::Run(run));
    }

    // ---- pipelining (rule 11) ----

    /// Queues plain tasks from the front of the queue on busy pool workers (rule 11), when no
    /// frame waits to resume and no worker is being forked for them.
    fn pipeline(&mut self) {
        if !self.resume.is_empty() || self.spawning > 0 {
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
            // Not behind a frame whose `max_calls` may retire the worker (rule 7).
            let target = self
                .pool_workers()
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

    /// Arms a claim cell for `id` and sends it to wait on busy worker `slot` (rule 11).
    fn queue_on(&mut self, slot: u32, id: Id, cpus: f64) {
        let run = match self.run_message(id) {
            Ok(run) => run,
            Err(e) => return self.finish_task_as(id, Err(e), timeline::Outcome::Failed),
        };
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        let Some(lane) = w.lane else { return };
        w.last_seq += 1;
        self.last_ticket += 1;
        let q = Queued {
            task: id,
            seq: w.last_seq,
            ticket: self.last_ticket,
            cpus,
        };
        w.queued.push_back(q);
        self.queued_now += 1;
        self.stats.queued += 1;
        let cell = shared_flags::cell(lane, q.seq);
        self.cancel.flags.arm(cell, q.ticket);
        if let Some(t) = self.tasks.get_mut(&id) {
            t.worker = Some(slot);
            t.queued = true;
        }
        let msg = ToWorker::Queue {
            run,
            cell,
            ticket: q.ticket,
        };
        self.send_to(slot, &msg);
    }

    /// Starts the first task queued on `slot`, whose stack just emptied (rule 11). The worker
    /// claimed it or will: the scheduler took back every one it could not have claimed.
    fn start_queued(&mut self, slot: u32) {
        let Some(w) = self.workers.get_mut(&slot) else {
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
        self.cpus_used += q.cpus;
        self.queued_now = self.queued_now.saturating_sub(1);
        self.stats.pipelined += 1;
        if let Some(t) = self.tasks.get_mut(&q.task) {
            t.attempts += 1;
            t.queued = false;
        }
        if let Some((force, grace)) = self.cancel.on_start.remove(&q.task) {
            self.cancel_one(q.task, force, grace);
        }
    }

    /// Takes back the task at `index` of `slot`'s queue if the worker has not claimed it; it
    /// then belongs to no worker (the caller says where it goes).
    fn take_back_one(&mut self, slot: u32, index: usize) -> bool {
        let Some(w) = self.workers.get_mut(&slot) else {
            return false;
        };
        let (Some(lane), Some(&q)) = (w.lane, w.queued.get(index)) else {
            return false;
        };
        if !self
            .cancel
            .flags
            .take(shared_flags::cell(lane, q.seq), q.ticket)
        {
            return false;
        }
        w.queued.remove(index);
        if let Some(a) = w.actor {
            self.mark_actor(a);
        }
        self.queued_now = self.queued_now.saturating_sub(1);
        self.stats.taken_back += 1;
        if let Some(t) = self.tasks.get_mut(&q.task) {
            t.worker = None;
            t.queued = false;
        }
        true
    }

    /// Takes back `task`, queued on a busy worker, if the worker has not claimed it.
    fn take_back_task(&mut self, task: Id) -> bool {
        let Some(slot) = self
            .tasks
            .get(&task)
            .filter(|t| t.queued)
            .and_then(|t| t.worker)
        else {
            return false;
        };
        let index = self
            .workers
            .get(&slot)
            .and_then(|w| w.queued.iter().position(|q| q.task == task));
        index.is_some_and(|i| self.take_back_one(slot, i))
    }

    /// Return object `id` lost its last reference: if its task is a pool task still queued
    /// on a worker and none of its returns is wanted, takes it back (rules 6, 11); true if it
    /// did (the task is then unstarted and can be dropped).
    fn take_back_unwanted(&mut self, id: Id) -> bool {
        let task = self.task_of_return(id);
        let queued = self
            .tasks
            .get(&task)
            .is_some_and(|t| t.queued && t.spec.actor.is_none());
        queued && !self.any_return_alive(task) && self.take_back_task(task)
    }

    /// Takes back every task queued on `slot` that the worker has not claimed; they go back
    /// to the front of the queue (or of their actor's calls), in order. Returns how many stay
    /// (claimed: they start in order as the worker's stack empties).
    fn take_back_all(&mut self, slot: u32) -> usize {
        let n = self.workers.get(&slot).map_or(0, |w| w.queued.len());
        let mut back = Vec::new();
        for i in (0..n).rev() {
            let task = self.workers[&slot].queued[i].task;
            if self.take_back_one(slot, i) {
                back.push(task);
            }
        }
        // Newest first: pushing each to the front leaves them in their order.
        for task in back {
            self.requeue_front(task);
        }
        self.workers.get(&slot).map_or(0, |w| w.queued.len())
    }

    /// Puts an unstarted task back at the front of the queue, or of its actor's calls.
    fn requeue_front(&mut self, task: Id) {
        match self.tasks.get(&task).and_then(|t| t.spec.actor) {
            Some(ActorCall::Method { actor }) => {
                if let Some(a) = self.actors.get_mut(&actor) {
                    a.calls.push_front(task);
                }
                self.mark_actor(actor);
            }
            _ => self.queue.push_front(task),
        }
    }

    /// Moves queued tasks back to the queue while CPUs are free for them and `dispatch_ready`
    /// can place them (an idle worker, one it may fork, a blocked one to nest on), then places
    /// them (rule 11): a task never waits behind a long one while it could run, and a blocked
    /// frame's CPUs serve the tasks queued on other workers as they would have served the queue.
    /// Newest first, from the busiest worker first. Not while a frame waits to resume (rule 1),
    /// nor while a task in the queue could start: that one goes first.
    fn balance(&mut self) {
        while self.queued_now > 0
            && self.resume.is_empty()
            && self.next_startable().is_none()
            && self.can_place()
        {
            let mut victims: Vec<(usize, u32)> = self
                .pool_workers()
                .filter(|(_, w)| !w.queued.is_empty())
                .map(|(s, w)| (w.queued.len(), s))
                .collect();
            victims.sort_unstable_by_key(|&(n, s)| (std::cmp::Reverse(n), s));
            let moved = victims.into_iter().find_map(|(n, victim)| {
                let q = self.workers[&victim].queued[n - 1];
                // A claimed one starts on its worker soon.
                (self.fits(q.cpus) && self.take_back_one(victim, n - 1)).then_some(q.task)
            });
            let Some(task) = moved else { return };
            self.queue.push_front(task);
            self.dispatch_ready();
        }
    }

    /// True if `dispatch_ready` can place a task that fits: on an idle pool worker, on one it
    /// may fork (rule 2), or nested on a blocked one.
    fn can_place(&self) -> bool {
        self.idle_worker().is_some()
            || self.pool_len() < self.cfg.max_workers
            || self.blocked_worker().is_some()
    }

    /// The lowest pool worker whose top frame is blocked with no answer waiting: it can run a
    /// task nested (rule 2).
    fn blocked_worker(&self) -> Option<u32> {
        self.pool_workers()
            .find(|(_, w)| {
                w.takes_pool_work()
                    && w.stack
                        .last()
                        .is_some_and(|f| f.blocked.is_some() && f.pending.is_none())
            })
            .map(|(s, _)| s)
    }

    // ---- resources (rule 1) ----

    /// Why a task with these options can never run here, if it cannot (rule 1).
    fn never_fits(&self, name: &str, opts: &TaskOpts) -> Option<Error> {
        let over = |resource: &str, requested: f64, total: f64| {
            // Written so that NaN never fits.
            let fits = requested >= 0.0 && requested <= total + EPS;
            (!fits).then(|| Error::Unschedulable {
                task: name.to_string(),
                resource: resource.to_string(),
                requested: requested.to_string(),
                total: total.to_string(),
            })
        };
        over("CPU", opts.num_cpus, self.cfg.num_cpus as f64)
            .or_else(|| {
                over("GPU", opts.num_gpus, self.cfg.num_gpus).or_else(|| {
                    // Within the total, but more than one GPU comes in whole devices.
                    (!self.gpus.could_fit(opts.num_gpus)).then(|| Error::Unschedulable {
                        task: name.to_string(),
                        resource: "GPU (whole devices)".to_string(),
                        requested: opts.num_gpus.to_string(),
                        total: self.cfg.num_gpus.to_string(),
                    })
                })
            })
            .or_else(|| {
                opts.resources.iter().find_map(|(r, amount)| {
                    let total = self.cfg.resources.get(r).copied().unwrap_or(0.0);
                    over(r, *amount, total)
                })
            })
    }

    /// True if the task's GPUs and custom resources are free now (rule 1).
    fn fits_other(&self, opts: &TaskOpts) -> bool {
        self.gpus.pick(opts.num_gpus).is_some()
            && opts.resources.iter().all(|(r, amount)| {
                let used = self.custom_used.get(r).copied().unwrap_or(0.0);
                let total = self.cfg.resources.get(r).copied().unwrap_or(0.0);
                used + amount <= total + EPS
            })
    }

    /// The queue position of the next task to start, if one fits now (rule 1): tasks wait in
    /// order for CPUs, but one that waits only for a GPU or custom resource is passed.
    fn next_startable(&mut self) -> Option<usize> {
        let mut i = 0;
        while i < self.queue.len() {
            let Some(t) = self.tasks.get(&self.queue[i]) else {
                self.queue.remove(i);
                continue;
            };
            if !self.fits(t.spec.opts.num_cpus) {
                return None;
            }
            if self.fits_other(&t.spec.opts) {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    fn acquire_other(&mut self, h: &Held) {
        self.gpus.take(&h.gpus);
        for (r, amount) in &h.custom {
            *self.custom_used.entry(r.clone()).or_insert(0.0) += amount;
        }
    }

    fn release_other(&mut self, h: &Held) {
        self.gpus.give_back(&h.gpus);
        for (r, amount) in &h.custom {
            if let Some(used) = self.custom_used.get_mut(r) {
                *used -= amount;
                if *used < EPS {
                    self.custom_used.remove(r);
                }
            }
        }
    }

    // ---- multiple returns (rule 6) ----

    /// The task that returns object `id` (`id` itself unless it is an extra return).
    fn task_of_return(&self, id: Id) -> Id {
        self.extra_of.get(&id).copied().unwrap_or(id)
    }

    /// True while any return object of `task` is referenced.
    fn any_return_alive(&self, task: Id) -> bool {
        let alive = |id: &Id| self.objects.get(id).is_some_and(|o| o.refs > 0);
        alive(&task)
            || self
                .tasks
                .get(&task)
                .is_some_and(|t| t.spec.extra.iter().any(alive))
    }

    /// True if `id` is a pending return object of a task that is running (rule 6).
    fn is_running_return(&self, id: Id) -> bool {
        self.objects
            .get(&id)
            .is_some_and(|o| matches!(o.state, ObjState::Pending))
            && self
                .tasks
                .get(&self.task_of_return(id))
                .is_some_and(|t| t.worker.is_some())
    }

    /// Removes a task that will not run from the task table.
    fn forget_task(&mut self, task: Id) {
        if let Some(t) = self.tasks.remove(&task) {
            self.events.finished(task, &t.spec.func, &t.name, None);
            for x in t.spec.extra {
                self.extra_of.remove(&x);
            }
        }
    }

    /// True if the spec's extra return ids are new and distinct (rule 3 in protocol.rs).
    fn extra_ids_fresh(&self, spec: &TaskSpec) -> bool {
        let mut seen = std::collections::HashSet::new();
        seen.insert(spec.ret);
        spec.extra.iter().all(|&x| {
            seen.insert(x) && !self.objects.contains_key(&x) && !self.tasks.contains_key(&x)
        })
    }

    /// Creates the pending extra return objects of a task, each owned by the submitter's
    /// handle (rule 5 in protocol.rs).
    fn add_extra_returns(&mut self, slot: Option<u32>, spec: &TaskSpec) {
        for &x in &spec.extra {
            self.objects.insert(x, Object::pending());
            self.own(slot, x, 1);
            self.extra_of.insert(x, spec.ret);
        }
    }

    /// The return values of a `Done`, checked against the task (rules 5 and 6): one per return
    /// id, and each stored one sealed under its own id. Stored payloads are replaced by the
    /// store's own descriptor. The error says why the worker must be killed.
    #[allow(clippy::type_complexity)]
    fn checked_returns(
        &self,
        task: Id,
        values: Vec<(Payload, Vec<Id>)>,
    ) -> Result<Vec<(Payload, Vec<Id>)>, &'static str> {
        let extra = self.tasks.get(&task).map_or(&[][..], |t| &t.spec.extra[..]);
        if values.len() != extra.len() + 1 {
            return Err("done with the wrong number of return values");
        }
        let ids = std::iter::once(task).chain(extra.iter().copied());
        ids.zip(values)
            .map(|(id, (payload, contained))| match payload {
                Payload::Stored { .. } => {
                    let sealed = self.objects.get(&id).is_some_and(|o| o.stored && o.sealed);
                    match self.store.descriptor(ObjectId::from_u128(id)) {
                        Some(d) if sealed => Ok((
                            Payload::Stored {
                                offset: d.offset,
                                len: d.len,
                            },
                            contained,
                        )),
                        _ => Err("stored result not sealed"),
                    }
                }
                inline => Ok((inline, contained)),
            })
            .collect()
    }

    /// Finishes a task with all its return values, checked by `checked_returns` (rule 6).
    fn finish_task_all(&mut self, task: Id, result: Result<Vec<(Payload, Vec<Id>)>, Error>) {
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
    /// write them again (rule 4).
    fn reset_returns(&mut self, task: Id) {
        let mut ids = vec![task];
        if let Some(t) = self.tasks.get(&task) {
            ids.extend_from_slice(&t.spec.extra);
        }
        for id in ids {
            let Some(o) = self.objects.get_mut(&id) else {
                continue;
            };
            if !o.stored {
                continue;
            }
            let sealed = o.sealed;
            o.stored = false;
            o.sealed = false;
            o.creator = None;
            self.release_memory(id, sealed);
        }
    }

    // ---- max_calls (rule 7) ----

    /// Counts a finished task against its function's `max_calls` on this worker.
    fn count_call(&mut self, slot: u32, task: Id) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let max = t.spec.opts.max_calls;
        if max == 0 {
            return;
        }
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        let n = w.calls.entry(t.spec.func.clone()).or_insert(0);
        *n += 1;
        if *n >= max {
            w.retiring = true;
        }
    }

    /// Sends `Exit` to a retiring worker once its stack is empty (rule 7).
    fn retire_if_done(&mut self, slot: u32) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        if !w.retiring || w.retired || !w.stack.is_empty() {
            return;
        }
        w.retired = true;
        self.send_to(slot, &ToWorker::Exit);
    }
    // ---- cancellation (rule 9) ----

    /// Cancels the task that produces `id` and, if `recursive`, every task it submitted,
    /// transitively. Says `AlreadyFinished` (and does nothing) when `id` is not an unfinished
    /// task.
    fn cancel(
        &mut self,
        id: Id,
        force: bool,
        recursive: bool,
        grace_ms: Option<u64>,
    ) -> Result<CancelOutcome, Error> {
        if !self.tasks.contains_key(&id) {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        // The whole tree first: cancelling a task can remove it from the table.
        let mut tree = vec![id];
        if recursive {
            let mut seen: HashSet<Id> = HashSet::from([id]);
            let mut i = 0;
            while i < tree.len() {
                let p = tree[i];
                let kids: Vec<Id> = self
                    .tasks
                    .iter()
                    .filter(|(c, t)| t.parent == Some(p) && !seen.contains(c))
                    .map(|(&c, _)| c)
                    .collect();
                seen.extend(kids.iter().copied());
                tree.extend(kids);
                i += 1;
            }
        }
        let grace = grace_ms.map_or(self.cfg.cancel_grace, Duration::from_millis);
        for t in tree {
            self.cancel_one(t, force, grace);
        }
        Ok(CancelOutcome::Cancelled)
    }

    fn cancel_one(&mut self, id: Id, force: bool, grace: Duration) {
        let Some(t) = self.tasks.get(&id) else {
            return;
        };
        let err = Error::TaskCancelled {
            task: t.name.clone(),
        };
        let Some(slot) = t.worker else {
            // Not started (queued, waiting for its arguments, or waiting for a retry): it never
            // runs, and whoever waits for it learns at once.
            self.queue.retain(|&q| q != id);
            return self.finish_task(id, Err(err));
        };
        if t.queued {
            // Queued on a busy worker (rule 11): taken back, it never runs; claimed, it is
            // cancelled when it starts.
            if self.take_back_task(id) {
                return self.finish_task(id, Err(err));
            }
            self.cancel.on_start.insert(id, (force, grace));
            return;
        }
        self.cancel.running.insert(id);
        // The cooperative request: raise the flag of the task's own frame.
        if let Some(depth) = self
            .workers
            .get(&slot)
            .and_then(|w| w.stack.iter().position(|f| f.task == id))
        {
            self.cancel.flags.raise(slot, depth, id);
        }
        // An actor call is only asked to stop: killing the process would end the actor.
        if self.workers.get(&slot).is_some_and(|w| w.actor.is_some()) {
            return;
        }
        if force || grace.is_zero() {
            return self.kill_for_cancel(slot);
        }
        let key = self.next_request;
        self.next_request += 1;
        self.cancel.timers.insert(key, (slot, id));
        self.deadlines
            .push(std::cmp::Reverse((Instant::now() + grace, key)));
    }

    /// A grace period ended: kill the worker if the cancelled task still runs on it.
    fn on_cancel_timer(&mut self, key: u64) {
        let Some((slot, task)) = self.cancel.timers.remove(&key) else {
            return;
        };
        let still_running = self.cancel.running.contains(&task)
            && self
                .tasks
                .get(&task)
                .is_some_and(|t| t.worker == Some(slot));
        if still_running {
            self.kill_for_cancel(slot);
        }
    }

    fn kill_for_cancel(&mut self, slot: u32) {
        if !self.workers.contains_key(&slot) || !self.cancel.killed.insert(slot) {
            return;
        }
        // No more work goes to it; the fork server kills it and reports its exit (rule 4).
        self.on_hangup(slot);
    }

    /// Decides the fate of `task`, lost with worker `slot`, when cancellation is involved; false
    /// leaves it to the crash rule (rule 4).
    fn cancel_on_death(&mut self, slot: u32, task: Id) -> bool {
        let cancelled = self.cancel.running.remove(&task);
        let killed = self.cancel.killed.contains(&slot);
        if !cancelled && !killed {
            return false;
        }
        let Some(t) = self.tasks.get_mut(&task) else {
            return true;
        };
        t.worker = None;
        if cancelled {
            let err = Error::TaskCancelled {
                task: t.name.clone(),
            };
            self.finish_task(task, Err(err));
        } else {
            // An innocent frame on a worker killed for another task's cancel: resubmitted as
            // after a crash, without using up one of its attempts.
            t.attempts = t.attempts.saturating_sub(1);
            self.reset_returns(task);
            self.queue.push_front(task);
        }
        true
    }

    /// The result of a task that returned: `TaskCancelled` if it was cancelled meanwhile,
    /// whatever it returned (dropping the references its value held).
    #[allow(clippy::type_complexity)]
    fn cancelled_result(
        &mut self,
        task: Id,
        result: Result<Vec<(Payload, Vec<Id>)>, Error>,
    ) -> Result<Vec<(Payload, Vec<Id>)>, Error> {
        if !self.cancel.running.remove(&task) {
            return result;
        }
        if let Ok(values) = result {
            for (_, contained) in values {
                for c in contained {
                    self.add_ref(c, -1);
                }
            }
        }
        let name = self
            .tasks
            .get(&task)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        Err(Error::TaskCancelled { task: name })
    }

    // ---- crash reports ----

    fn on_stderr_tail(&mut self, pid: i32, lines: Vec<String>) {
        if self.pids.contains_key(&pid) {
            self.stderr_tails.insert(pid, lines);
        }
    }

    /// A crash's cause: how the worker ended, and the last lines it wrote to stderr.
    fn crash_cause(&mut self, pid: i32, cause: ExitCause) -> String {
        let mut text = cause.to_string();
        if let Some(lines) = self.stderr_tails.remove(&pid) {
            text.push_str("; its last stderr lines:");
            for l in lines {
                text.push_str("\n  | ");
                text.push_str(&l);
            }
        }
        text
    }
}

// ---- actors (rule 8) ----
impl Scheduler {
    fn actor_submitted(&mut self, slot: Option<u32>, id: Id, call: ActorCall) {
        if let ActorCall::Method { actor } = call {
            self.mark_actor(actor);
        }
        match call {
            ActorCall::Create {
                max_restarts,
                max_task_retries,
            } => {
                let name = self
                    .tasks
                    .get(&id)
                    .map(|t| t.name.clone())
                    .unwrap_or_default();
                self.actors.insert(
                    id,
                    Actor {
                        name,
                        slot: None,
                        ctor: None,
                        ctor_refs: Vec::new(),
                        constructed: false,
                        calls: VecDeque::new(),
                        restarts_left: max_restarts,
                        max_task_retries,
                        dead: None,
                        freed: false,
                        dirty: false,
                    },
                );
                match self.spawn_worker_for(Some(id)) {
                    Some(w) => {
                        if let Some(a) = self.actors.get_mut(&id) {
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
                match self.actors.get_mut(&actor) {
                    Some(a) if a.dead.is_none() => a.calls.push_back(id),
                    Some(a) => {
                        let err = Error::ActorDied {
                            actor: a.name.clone(),
                            reason: a.dead.clone().unwrap_or_default(),
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
    fn keep_ctor(&mut self, id: Id, args: &[Payload]) {
        if self.actors.get(&id).is_none_or(|a| a.ctor.is_some()) {
            return;
        }
        let Some(t) = self.tasks.get(&id) else { return };
        let refs: Vec<Id> = t.spec.arg_ids().collect();
        let func = t.spec.func.clone();
        for &r in &refs {
            self.add_ref(r, 1);
        }
        if let Some(a) = self.actors.get_mut(&id) {
            a.ctor = Some((func, args.to_vec()));
            a.ctor_refs = refs;
        }
    }

    fn actor_constructed(&mut self, id: Id, result: Result<(), &Error>) {
        match result {
            Ok(_) => {
                if let Some(a) = self.actors.get_mut(&id) {
                    a.constructed = true;
                }
            }
            Err(e) => self.actor_gone(id, format!("its constructor failed: {e}")),
        }
    }

    /// Notes that actor `id` may be able to start or queue a call (see `dispatch_actors`).
    fn mark_actor(&mut self, id: Id) {
        if let Some(a) = self.actors.get_mut(&id) {
            if !std::mem::replace(&mut a.dirty, true) {
                self.dirty_actors.push(id);
            }
        }
    }

    /// Starts the constructor or starts or queues the next calls of the actors marked since the
    /// last turn (and, every `ACTOR_SWEEP` while the loop turns, of every actor): a turn costs
    /// the actors something happened to. The loop does not sleep while marks wait.
    fn dispatch_actors(&mut self) {
        if self.actors.is_empty() {
            self.dirty_actors.clear();
            return;
        }
        let mut ids = std::mem::take(&mut self.dirty_actors);
        if self.actors_swept.elapsed() >= ACTOR_SWEEP {
            self.actors_swept = Instant::now();
            ids = self.actors.keys().copied().collect();
        }
        for &id in &ids {
            if let Some(a) = self.actors.get_mut(&id) {
                a.dirty = false;
            }
        }
        for id in ids {
            if self.actors.get(&id).is_none_or(|a| a.dead.is_some()) {
                continue;
            }
            let Some(slot) = self.actors.get(&id).and_then(|a| a.slot) else {
                continue;
            };
            let Some(w) = self.workers.get(&slot) else {
                continue;
            };
            let idle = w.ready && w.stream.is_some() && w.stack.is_empty();
            let a = &self.actors[&id];
            // Rule 11: the next calls may wait on the worker behind the running one.
            let queue = a.constructed && w.can_queue(0.0, self.cfg.pipeline_depth);
            if !(idle || queue) {
                continue;
            }
            if !a.constructed {
                if self.tasks.get(&id).is_some_and(|t| t.worker.is_none()) {
                    // The first run (or a rerun after a crash before it finished).
                    if self.tasks[&id].missing == 0 {
                        self.start_task(slot, id, 0.0);
                    }
                } else if let Some((func, args)) = a.ctor.clone() {
                    // A restart: the constructor again, on the new worker.
                    let name = a.name.clone();
                    if let Some(w) = self.workers.get_mut(&slot) {
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
                    };
                    self.send_to(slot, &ToWorker::Run(run));
                }
                continue;
            }
            while let Some(&call) = self.actors.get(&id).and_then(|a| a.calls.front()) {
                match self.tasks.get(&call).map(|t| t.missing) {
                    // Finished already (an argument failed): drop it.
                    None => {}
                    Some(0) => {
                        self.actors.get_mut(&id).map(|a| a.calls.pop_front());
                        let Some(w) = self.workers.get(&slot) else {
                            break;
                        };
                        if w.stack.is_empty() {
                            // It may fail at once (a failed argument): then take the next.
                            self.start_task(slot, call, 0.0);
                        } else {
                            self.queue_on(slot, call, 0.0);
                        }
                        if self.workers.get(&slot).is_some_and(|w| {
                            w.stack.is_empty()
                                || (w.stream.is_some() && w.can_queue(0.0, self.cfg.pipeline_depth))
                        }) {
                            continue;
                        }
                        break;
                    }
                    // Submission order: later calls wait for this one's arguments.
                    Some(_) => break,
                }
                self.actors.get_mut(&id).map(|a| a.calls.pop_front());
            }
        }
    }

    /// The actor's worker died: fail the call it ran, then restart or give up.
    fn actor_worker_died(&mut self, id: Id, stack: &[Frame], cause: &str) {
        let Some(a) = self.actors.get_mut(&id) else {
            return;
        };
        a.slot = None;
        a.constructed = false;
        let name = a.name.clone();
        let will_restart = a.dead.is_none() && !a.freed && a.restarts_left > 0;
        let retries = a.max_task_retries;
        // Calls to run again go back to the front, in their order (rule 8).
        let mut again = Vec::new();
        for f in stack.iter().filter(|f| f.task != id) {
            let retry = will_restart
                && self
                    .tasks
                    .get(&f.task)
                    .is_some_and(|t| t.attempts <= retries);
            if retry {
                if let Some(t) = self.tasks.get_mut(&f.task) {
                    t.worker = None;
                    self.events.retried(&t.spec.func);
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
        if let Some(a) = self.actors.get_mut(&id) {
            for t in again.into_iter().rev() {
                a.calls.push_front(t);
            }
        }
        if let Some(t) = self.tasks.get_mut(&id) {
            t.worker = None;
        }
        let Some(a) = self.actors.get_mut(&id) else {
            return;
        };
        if a.freed {
            self.actors.remove(&id);
            return;
        }
        if a.dead.is_none() && a.restarts_left > 0 {
            a.restarts_left -= 1;
            match self.spawn_worker_for(Some(id)) {
                Some(w) => {
                    if let Some(a) = self.actors.get_mut(&id) {
                        a.slot = Some(w);
                    }
                }
                None => self.actor_gone(id, "its process could not be forked again".into()),
            }
        } else {
            let reason = a.dead.clone().unwrap_or_else(|| cause.to_string());
            self.actor_gone(id, reason);
        }
    }

    /// Ends an actor at once: SIGKILL its worker; no restart.
    fn kill_actor(&mut self, id: Id, reason: &str) {
        let slot = self.actors.get(&id).and_then(|a| a.slot);
        self.actor_gone(id, reason.into());
        if let Some(slot) = slot {
            self.on_hangup(slot);
        }
    }

    /// No handle or call names the actor any more: its worker exits.
    fn actor_freed(&mut self, id: Id) {
        if let Some(a) = self.actors.get_mut(&id) {
            a.freed = true;
        }
        self.actor_gone(id, "no handle to it is left".into());
    }

    /// The actor is gone for good: its queued calls (and an unfinished constructor) fail, its
    /// worker is told to exit, the constructor's kept arguments are released.
    fn actor_gone(&mut self, id: Id, reason: String) {
        // Calls queued on its worker and not claimed fail with the others (rule 11).
        if let Some(slot) = self.actors.get(&id).and_then(|a| a.slot) {
            self.take_back_all(slot);
        }
        let Some(a) = self.actors.get_mut(&id) else {
            return;
        };
        let reason = a.dead.get_or_insert(reason).clone();
        a.restarts_left = 0;
        let calls: Vec<Id> = a.calls.drain(..).collect();
        let refs = std::mem::take(&mut a.ctor_refs);
        let (name, slot, freed) = (a.name.clone(), a.slot, a.freed);
        let died = || Error::ActorDied {
            actor: name.clone(),
            reason: reason.clone(),
        };
        for c in calls {
            self.finish_task(c, Err(died()));
        }
        if self.tasks.get(&id).is_some_and(|t| t.worker.is_none()) {
            self.queue.retain(|&q| q != id);
            self.finish_task(id, Err(died()));
        }
        for r in refs {
            self.add_ref(r, -1);
        }
        match slot {
            Some(slot) => self.send_to(slot, &ToWorker::Exit),
            None if freed => {
                self.actors.remove(&id);
            }
            None => {}
        }
    }
}

// ---- generators (rule 10) ----
impl Scheduler {
    fn has_item(&self, stream: Id, index: u64) -> bool {
        self.streams
            .get(&stream)
            .is_some_and(|st| index < st.items.len() as u64)
    }

    /// Item `index` of a stream, or its end: `None` after a task that finished, its error
    /// after one that failed.
    fn stream_item(&self, stream: Id, index: u64) -> Result<Option<Id>, Error> {
        let Some(st) = self.streams.get(&stream) else {
            return Err(Error::Protocol(format!(
                "object {stream:x} is not a generator's (or it was freed)"
            )));
        };
        match st.items.get(index as usize) {
            Some(Some(item)) => return Ok(Some(*item)),
            Some(None) => {
                return Err(Error::Protocol(format!(
                    "item {index} of generator {stream:x} was already taken"
                )));
            }
            None => {}
        }
        match self.objects.get(&stream).map(|o| &o.state) {
            Some(ObjState::Failed(e)) => Err(e.clone()),
            _ => Ok(None),
        }
    }

    /// The caller took item `index`: the generator may have room again.
    fn item_taken(&mut self, stream: Id, index: u64) {
        let Some(st) = self.streams.get_mut(&stream) else {
            return;
        };
        if let Some(i) = st.items.get_mut(index as usize) {
            *i = None;
        }
        st.taken = st.taken.max(index + 1);
        if !st.has_room() {
            return;
        }
        let room: Vec<u64> = st
            .waiting
            .iter()
            .copied()
            .filter(|rid| {
                self.requests
                    .get(rid)
                    .is_some_and(|r| matches!(r.kind, RequestKind::YieldRoom))
            })
            .collect();
        st.waiting.retain(|rid| !room.contains(rid));
        for rid in room {
            self.complete_request(rid, None);
        }
    }

    /// A generator yielded `item` (rule 10): checked, moved to its stream, handed to waiting
    /// callers; the generator goes on at once if the stream has room.
    fn on_yield(&mut self, slot: u32, task: Id, item: Id) {
        let on_top = self
            .workers
            .get(&slot)
            .and_then(|w| w.stack.last())
            .is_some_and(|f| f.task == task && f.blocked.is_none());
        let held = self
            .workers
            .get(&slot)
            .is_some_and(|w| w.held.get(&item).is_some_and(|&n| n > 0));
        if !on_top || !held || !self.streams.contains_key(&task) || !self.is_ready(item) {
            return self.kill_worker(
                slot,
                "yield of an item it does not hold, or not from a generator",
            );
        }
        self.own(Some(slot), item, -1);
        let st = self.streams.get_mut(&task).expect("checked above");
        st.items.push(Some(item));
        let len = st.items.len() as u64;
        let ready: Vec<u64> = st
            .waiting
            .iter()
            .copied()
            .filter(|rid| {
                self.requests
                    .get(rid)
                    .is_some_and(|r| matches!(r.kind, RequestKind::Next { index } if index < len))
            })
            .collect();
        st.waiting.retain(|rid| !ready.contains(rid));
        for rid in ready {
            self.complete_request(rid, None);
        }
        self.request(
            ClientKey::Worker(slot),
            vec![task],
            RequestKind::YieldRoom,
            None,
        );
    }
}
