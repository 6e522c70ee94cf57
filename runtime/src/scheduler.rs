//! The scheduler: one thread in the driver that owns the task table, the object directory, the
//! worker table, CPU accounting and the plasma store.
//!
//! Every other thread talks to it through `Event`s; it talks to workers through their sockets
//! and to the fork server through its control socket. It runs no user code.
//!
//! Task states: queued (waiting for deps or a CPU) -> running on a worker -> finished or failed;
//! a task whose worker dies goes back to the front of the queue while attempts remain; a
//! cancelled task is removed if queued, or resolves to `TaskCancelled` once it stops (rule 6).
//! Worker states: starting -> idle <-> busy (a stack of frames: running, or blocked in `get`)
//! -> dead.
//!
//! Rules (cited as "rule N in scheduler.rs"):
//! 1. At most `num_cpus` CPUs are held by running frames. A frame blocked in `get`/`wait` gives
//!    its CPUs back; it takes them back before it resumes, ahead of any queued task.
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
//!    malformed request) kills that worker, never the driver.
//! 6. Cancelling a task that has not started (queued, waiting for its arguments or for a retry)
//!    removes it: it resolves to `TaskCancelled` at once and never runs. A running task is
//!    marked cancelled and the flag of its own frame is raised (cancel_flags.rs); whatever it
//!    returns then, it resolves to `TaskCancelled`. If it still runs when the grace period ends
//!    (at once with `force`) its worker is killed. A cancelled task lost with its worker resolves
//!    to `TaskCancelled` and is never retried (rule 4 does not apply to it); the other frames of
//!    a worker killed for a cancel are resubmitted at the front of the queue without using one
//!    of their attempts. A recursive cancel applies the same to every unfinished task whose
//!    `parent` chain leads to the cancelled one. Cancelling a task that has finished (or any
//!    id that is not an unfinished task) does nothing and says `AlreadyFinished`.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rayfork_plasma::{ClientId, ObjectId, ShmArena, Store};

use crate::cancel_flags::CancelFlags;
use crate::config::Config;
use crate::protocol::{
    Arg, ExitCause, ForkReply, ForkRequest, FromWorker, Id, Outcome, Payload, Resolved, TaskSpec,
    ToWorker,
};
use crate::{CancelOutcome, Error, fork_server, ipc};

/// Inputs of the scheduler thread.
pub(crate) enum Event {
    /// A request from the driver; `reply` receives the answer to requests that have one.
    Driver {
        msg: FromWorker,
        reply: Option<Sender<ToWorker>>,
    },
    /// A message read from a worker's socket.
    Worker { slot: u32, msg: FromWorker },
    /// A worker's socket closed or broke.
    Hangup { slot: u32 },
    /// A message from the fork server.
    Fork(ForkReply, Vec<OwnedFd>),
    /// The fork server's socket closed.
    ForkServerGone,
    /// A snapshot of the runtime's counters.
    Stats(Sender<RuntimeStats>),
    /// Stop: kill the workers and the fork server and end the thread.
    Shutdown,
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
    worker: Option<u32>,
    parent: Option<Id>,
}

enum RequestKind {
    Get,
    Wait { need: usize },
}

struct Request {
    client: ClientKey,
    ids: Vec<Id>,
    kind: RequestKind,
    missing: usize,
}

#[derive(Clone)]
enum ClientKey {
    Driver(Sender<ToWorker>),
    Worker(u32),
}

struct Frame {
    task: Id,
    cpus: f64,
    /// Blocked in this request.
    blocked: Option<u64>,
    /// The answer to its request, held until the frame is on top and has CPUs (rule 1).
    pending: Option<ToWorker>,
}

struct Worker {
    pid: i32,
    stream: Option<UnixStream>,
    ready: bool,
    stack: Vec<Frame>,
    /// Net references held by this worker's handles (rule 3).
    held: HashMap<Id, i64>,
    hung_up: bool,
}

pub(crate) struct Scheduler {
    cfg: Config,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    store: Store<ShmArena>,
    objects: HashMap<Id, Object>,
    tasks: HashMap<Id, Task>,
    queue: VecDeque<Id>,
    resume: VecDeque<u32>,
    workers: HashMap<u32, Worker>,
    pids: HashMap<i32, u32>,
    next_slot: u32,
    spawning: usize,
    cpus_used: f64,
    requests: HashMap<u64, Request>,
    next_request: u64,
    deadlines: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    fork: OwnedFd,
    fork_child: Child,
    stats: RuntimeStats,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Cancellation's state (rule 6).
    cancel: Cancels,
    /// The last stderr lines of workers that just exited, by pid, until their death is handled.
    stderr_tails: HashMap<i32, Vec<String>>,
}

/// What the scheduler keeps for cancellation (rule 6).
struct Cancels {
    /// The shared flags that `rayfork::is_cancelled()` reads.
    flags: CancelFlags,
    /// Tasks cancelled while running: they resolve to `TaskCancelled` when they stop.
    running: HashSet<Id>,
    /// Kill timers: deadline key (from `next_request`, in `deadlines`) -> (worker, task).
    timers: HashMap<u64, (u32, Id)>,
    /// Workers killed to stop a cancelled task, until their death is handled.
    killed: HashSet<u32>,
}

impl Cancels {
    fn new(flags: CancelFlags) -> Self {
        Cancels {
            flags,
            running: HashSet::new(),
            timers: HashMap::new(),
            killed: HashSet::new(),
        }
    }
}

const EPS: f64 = 1e-9;

impl Scheduler {
    /// Starts the fork server (on this thread, rule 3 in fork_server.rs) and the initial workers.
    pub(crate) fn new(
        cfg: Config,
        arena: Arc<ShmArena>,
        tx: Sender<Event>,
        rx: Receiver<Event>,
    ) -> crate::Result<Scheduler> {
        let program = match &cfg.worker_program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| Error::os("find own executable", e))?,
        };
        let flags = CancelFlags::create()?;
        let (fork_child, fork) =
            fork_server::spawn(&program, arena.fd().as_raw_fd(), flags.fd().as_raw_fd())?;
        let reader_fd = fork
            .try_clone()
            .map_err(|e| Error::os("dup fork socket", e))?;
        let fork_tx = tx.clone();
        let reader = std::thread::Builder::new()
            .name("rayfork-forkserver".into())
            .spawn(move || {
                loop {
                    match ipc::recv_packet::<ForkReply>(&reader_fd) {
                        Ok(Some((msg, fds))) => {
                            if fork_tx.send(Event::Fork(msg, fds)).is_err() {
                                return;
                            }
                        }
                        _ => {
                            let _ = fork_tx.send(Event::ForkServerGone);
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Error::os("spawn thread", e))?;
        let mut s = Scheduler {
            store: Store::new(arena),
            cfg,
            tx,
            rx,
            objects: HashMap::new(),
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            resume: VecDeque::new(),
            workers: HashMap::new(),
            pids: HashMap::new(),
            next_slot: 1,
            spawning: 0,
            cpus_used: 0.0,
            requests: HashMap::new(),
            next_request: 1,
            deadlines: BinaryHeap::new(),
            fork,
            fork_child,
            stats: RuntimeStats::default(),
            readers: vec![reader],
            cancel: Cancels::new(flags),
            stderr_tails: HashMap::new(),
        };
        for _ in 0..s.cfg.initial_workers() {
            s.spawn_worker();
        }
        Ok(s)
    }

    /// The scheduler thread's loop.
    pub(crate) fn run(mut self) {
        loop {
            let ev = match self.next_deadline() {
                Some(d) => match self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => break,
                },
            };
            if let Some(ev) = ev {
                if !self.handle(ev) {
                    break;
                }
                // Take whatever else is waiting before dispatching: one dispatch per batch.
                let mut stop = false;
                while let Ok(ev) = self.rx.try_recv() {
                    if !self.handle(ev) {
                        stop = true;
                        break;
                    }
                }
                if stop {
                    break;
                }
            }
            self.expire_deadlines();
            self.dispatch();
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
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
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
            Event::Worker { slot, msg } => {
                if self.workers.contains_key(&slot) {
                    self.on_message(Client::Worker(slot), msg)
                }
            }
            Event::Hangup { slot } => self.on_hangup(slot),
            Event::Fork(msg, fds) => self.on_fork(msg, fds),
            Event::ForkServerGone => self.on_fork_server_gone(),
            Event::Stats(tx) => {
                let mut s = self.stats;
                s.store = self.store.stats();
                s.objects = self.objects.len();
                s.tasks = self.tasks.len();
                s.workers = self.workers.len();
                let _ = tx.send(s);
            }
            Event::Shutdown => return false,
        }
        true
    }

    // ---- workers and the fork server ----

    fn spawn_worker(&mut self) {
        let slot = self.next_slot;
        self.next_slot += 1;
        if ipc::send_packet(&self.fork, &ForkRequest::Spawn { worker: slot }, &[]).is_ok() {
            self.spawning += 1;
            self.workers.insert(
                slot,
                Worker {
                    pid: 0,
                    stream: None,
                    ready: false,
                    stack: Vec::new(),
                    held: HashMap::new(),
                    hung_up: false,
                },
            );
            self.stats.workers_started += 1;
            self.stats.peak_workers = self.stats.peak_workers.max(self.workers.len());
        }
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
                let reader = match stream.try_clone() {
                    Ok(r) => r,
                    Err(_) => return,
                };
                w.stream = Some(stream);
                let tx = self.tx.clone();
                let h = std::thread::Builder::new()
                    .name(format!("rayfork-worker-{worker}"))
                    .spawn(move || {
                        let mut r = std::io::BufReader::with_capacity(64 * 1024, reader);
                        loop {
                            match ipc::recv::<FromWorker>(&mut r) {
                                Ok(Some(msg)) => {
                                    if tx.send(Event::Worker { slot: worker, msg }).is_err() {
                                        return;
                                    }
                                }
                                _ => {
                                    let _ = tx.send(Event::Hangup { slot: worker });
                                    return;
                                }
                            }
                        }
                    });
                if let Ok(h) = h {
                    self.readers.retain(|h| !h.is_finished());
                    self.readers.push(h);
                }
            }
            ForkReply::SpawnFailed { worker, message } => {
                eprintln!("rayfork: forking worker {worker} failed: {message}");
                self.workers.remove(&worker);
                self.spawning = self.spawning.saturating_sub(1);
            }
            ForkReply::StderrTail { pid, lines } => self.on_stderr_tail(pid, lines),
            ForkReply::Exited { pid, cause } => {
                if let Some(slot) = self.pids.remove(&pid) {
                    self.on_worker_death(slot, cause);
                }
            }
        }
    }

    fn on_fork_server_gone(&mut self) {
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
        w.stream = None;
        let pid = w.pid;
        // Make sure it is dead; its exit (with the cause) comes from the fork server.
        let _ = ipc::send_packet(&self.fork, &ForkRequest::Kill { pid }, &[]);
    }

    fn kill_worker(&mut self, slot: u32, why: &str) {
        eprintln!("rayfork: killing worker {slot}: {why}");
        self.on_hangup(slot);
    }

    fn on_worker_death(&mut self, slot: u32, cause: ExitCause) {
        let Some(w) = self.workers.remove(&slot) else {
            return;
        };
        self.stats.workers_died += 1;
        if !w.ready {
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
        let crash = self.crash_cause(w.pid, cause);
        // Rule 4: retry or fail every task on its stack.
        for f in w.stack.iter().rev() {
            if self.cancel_on_death(slot, f.task) {
                continue;
            }
            let Some(t) = self.tasks.get_mut(&f.task) else {
                continue;
            };
            t.worker = None;
            if t.attempts <= t.spec.opts.max_retries {
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
        let alive = self.workers.len();
        if alive < self.cfg.initial_workers() {
            self.spawn_worker();
        }
    }

    fn send_to(&mut self, slot: u32, msg: &ToWorker) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        let Some(stream) = w.stream.as_mut() else {
            return;
        };
        if ipc::send(stream, msg).and_then(|_| stream.flush()).is_err() {
            self.on_hangup(slot);
        }
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
                        self.spawning = self.spawning.saturating_sub(1);
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
                        refs: 1,
                        state: ObjState::Ready(Payload::Inline(bytes)),
                        contained,
                        stored: false,
                        sealed: true,
                        creator: None,
                        waiters: Vec::new(),
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
            let Some(o) = self.objects.remove(&id) else {
                continue;
            };
            if o.stored {
                let oid = ObjectId::from_u128(id);
                let _ = if o.sealed {
                    self.store.delete(oid)
                } else {
                    self.store.abort(oid)
                };
            }
            for c in o.contained {
                if let Some(co) = self.objects.get_mut(&c) {
                    co.refs -= 1;
                    if co.refs <= 0 {
                        stack.push(c);
                    }
                }
            }
            // A task nobody waits for any more: drop it if it has not started (rule 4).
            if let ObjState::Pending = o.state {
                if let Some(t) = self.tasks.get(&id) {
                    if t.worker.is_none() {
                        self.queue.retain(|&q| q != id);
                        self.release_task_args(id);
                        self.tasks.remove(&id);
                    }
                }
            }
        }
    }

    fn create(&mut self, slot: Option<u32>, id: Id, size: u64) -> Result<(u64, u64), Error> {
        let client = ClientId(slot.unwrap_or(0));
        let oid = ObjectId::from_u128(id);
        // A large task result is written under the task's own id by the worker running it.
        if let Some(o) = self.objects.get(&id) {
            let runs_it = self
                .tasks
                .get(&id)
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
        let d = self.store.create(oid, size, client)?;
        self.objects.insert(
            id,
            Object {
                refs: 1,
                state: ObjState::Pending,
                contained: Vec::new(),
                stored: true,
                sealed: false,
                creator: slot,
                waiters: Vec::new(),
            },
        );
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
        let is_task_result = self.tasks.contains_key(&id);
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
        if self.tasks.contains_key(&id) {
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
        let name = spec.opts.name.clone().unwrap_or_else(|| spec.func.clone());
        // The references the spec mentions move from the submitter to the task (rule 4).
        for a in &spec.args {
            match a {
                Arg::Ref(r) => self.own(slot, *r, -1),
                Arg::Value { contained, .. } => {
                    for &c in contained {
                        self.own(slot, c, -1);
                    }
                }
            }
        }
        self.objects.insert(
            id,
            Object {
                refs: 1,
                state: ObjState::Pending,
                contained: Vec::new(),
                stored: false,
                sealed: false,
                creator: None,
                waiters: Vec::new(),
            },
        );
        self.own(slot, id, 1);
        let parent = slot
            .and_then(|s| self.workers.get(&s))
            .and_then(|w| w.stack.last())
            .map(|f| f.task);
        let total = self.cfg.num_cpus as f64;
        if spec.opts.num_cpus > total + EPS || spec.opts.num_cpus < 0.0 {
            let err = Error::Unschedulable {
                task: name.clone(),
                resource: "CPU".into(),
                requested: spec.opts.num_cpus.to_string(),
                total: total.to_string(),
            };
            self.tasks.insert(
                id,
                Task {
                    spec,
                    name,
                    missing: 0,
                    attempts: 0,
                    worker: None,
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
                                parent,
                            },
                        );
                        return self.finish_task(id, Err(err));
                    }
                }
            }
        }
        self.tasks.insert(
            id,
            Task {
                spec,
                name,
                missing,
                attempts: 0,
                worker: None,
                parent,
            },
        );
        if missing == 0 {
            self.queue.push_back(id);
        }
    }

    /// Gives the task's argument references back (rule 3).
    fn release_task_args(&mut self, id: Id) {
        let Some(t) = self.tasks.get(&id) else { return };
        let mut ids = Vec::new();
        for a in &t.spec.args {
            match a {
                Arg::Ref(r) => ids.push(*r),
                Arg::Value { contained, .. } => ids.extend_from_slice(contained),
            }
        }
        for r in ids {
            self.add_ref(r, -1);
        }
    }

    /// Stores a task's final result and wakes whoever waits for it.
    fn finish_task(&mut self, id: Id, result: Result<(Payload, Vec<Id>), Error>) {
        self.release_task_args(id);
        let Some(_task) = self.tasks.remove(&id) else {
            return;
        };
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
                    let stored_sealed = o.sealed;
                    o.stored = false;
                    let oid = ObjectId::from_u128(id);
                    let _ = if stored_sealed {
                        self.store.delete(oid)
                    } else {
                        self.store.abort(oid)
                    };
                }
            }
        }
        self.notify(id);
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
            Outcome::Ok {
                payload: Payload::Stored { .. },
                contained,
            } => {
                let d = self.store.descriptor(ObjectId::from_u128(task));
                let sealed = self
                    .objects
                    .get(&task)
                    .is_some_and(|o| o.stored && o.sealed);
                match d {
                    Some(d) if sealed => Ok((
                        Payload::Stored {
                            offset: d.offset,
                            len: d.len,
                        },
                        contained,
                    )),
                    _ => return self.kill_worker(slot, "stored result not sealed"),
                }
            }
            Outcome::Ok { payload, contained } => Ok((payload, contained)),
            Outcome::Err(e) => Err(e),
        };
        if let Ok((_, contained)) = &result {
            for &c in contained {
                self.own(Some(slot), c, -1);
            }
        }
        let frame = self
            .workers
            .get_mut(&slot)
            .and_then(|w| w.stack.pop())
            .expect("checked above");
        self.cpus_used -= frame.cpus;
        if self.cpus_used < EPS {
            self.cpus_used = 0.0;
        }
        let result = self.cancelled_result(task, result);
        if let Some(t) = self.tasks.get_mut(&task) {
            t.worker = None;
            let retry = matches!(&result, Err(e) if crate::task::retries_error(&t.spec.opts, e))
                && t.attempts <= t.spec.opts.max_retries;
            if retry {
                self.queue.push_front(task);
            } else {
                self.finish_task(task, result);
            }
        }
        self.after_pop(slot);
    }

    /// After a frame left a worker: resume the frame below, or mark the worker idle.
    fn after_pop(&mut self, slot: u32) {
        let Some(w) = self.workers.get(&slot) else {
            return;
        };
        if let Some(f) = w.stack.last() {
            if f.pending.is_some() && !self.resume.contains(&slot) {
                self.resume.push_back(slot);
            }
        }
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
                            self.finish_task(t, Err(err.clone()));
                        }
                        continue;
                    }
                    if let Some(task) = self.tasks.get_mut(&t) {
                        task.missing = task.missing.saturating_sub(1);
                        if task.missing == 0 {
                            self.queue.push_back(t);
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
        };
        if satisfied {
            // Answered at once: the frame never blocks and keeps its CPUs.
            let answer = self.answer(&ids, &kind, None);
            return self.reply(&client, answer);
        }
        let rid = self.next_request;
        self.next_request += 1;
        let worker = match client {
            ClientKey::Worker(s) => Some(s),
            ClientKey::Driver(_) => None,
        };
        self.requests.insert(
            rid,
            Request {
                client,
                ids,
                kind,
                missing,
            },
        );
        let ids = self.requests[&rid].ids.clone();
        for id in ids {
            if let Some(o) = self.objects.get_mut(&id) {
                if matches!(o.state, ObjState::Pending) {
                    o.waiters.push(Waiting::Request(rid));
                }
            }
        }
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
            f.blocked = Some(rid);
            self.cpus_used -= f.cpus;
            if self.cpus_used < EPS {
                self.cpus_used = 0.0;
            }
        }
    }

    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(std::cmp::Reverse((t, rid))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            self.on_cancel_timer(rid);
            if self.requests.contains_key(&rid) {
                let ms = 0;
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
        }
    }

    /// Answers a waiting request; `timed_out` is set when its deadline passed first.
    fn complete_request(&mut self, rid: u64, timed_out: Option<u64>) {
        let Some(req) = self.requests.remove(&rid) else {
            return;
        };
        let answer = self.answer(&req.ids, &req.kind, timed_out);
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
        }
        while let Some(&task) = self.queue.front() {
            if !self.tasks.contains_key(&task) {
                self.queue.pop_front();
                continue;
            }
            let cpus = self.task_cpus(task);
            if !self.fits(cpus) {
                return;
            }
            // Rule 2: an idle worker, else a new one, else a blocked one.
            let idle = self
                .workers
                .iter()
                .filter(|(_, w)| w.ready && w.stream.is_some() && w.stack.is_empty())
                .map(|(&s, _)| s)
                .min();
            let slot = match idle {
                Some(s) => s,
                None => {
                    if self.spawning > 0 {
                        return;
                    }
                    if self.workers.len() < self.cfg.max_workers {
                        self.spawn_worker();
                        return;
                    }
                    let blocked = self
                        .workers
                        .iter()
                        .filter(|(_, w)| {
                            w.ready
                                && w.stream.is_some()
                                && w.stack
                                    .last()
                                    .is_some_and(|f| f.blocked.is_some() && f.pending.is_none())
                        })
                        .map(|(&s, _)| s)
                        .min();
                    match blocked {
                        Some(s) => {
                            self.stats.nested_inline += 1;
                            s
                        }
                        None => return,
                    }
                }
            };
            self.queue.pop_front();
            self.start_task(slot, task, cpus);
        }
    }

    fn start_task(&mut self, slot: u32, id: Id, cpus: f64) {
        let mut args = Vec::new();
        let mut failed = None;
        let Some(t) = self.tasks.get(&id) else { return };
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
            return self.finish_task(id, Err(e));
        }
        let t = self.tasks.get_mut(&id).expect("checked above");
        t.attempts += 1;
        t.worker = Some(slot);
        let msg = ToWorker::Run {
            task: id,
            func: t.spec.func.clone(),
            name: t.name.clone(),
            args,
        };
        let _ = t.parent;
        if let Some(w) = self.workers.get_mut(&slot) {
            w.stack.push(Frame {
                task: id,
                cpus,
                blocked: None,
                pending: None,
            });
        }
        self.cpus_used += cpus;
        self.send_to(slot, &msg);
    }

    // ---- cancellation (rule 6) ----

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
        self.cancel.running.insert(id);
        // The cooperative request: raise the flag of the task's own frame.
        if let Some(depth) = self
            .workers
            .get(&slot)
            .and_then(|w| w.stack.iter().position(|f| f.task == id))
        {
            self.cancel.flags.raise(slot, depth, id);
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
            self.queue.push_front(task);
        }
        true
    }

    /// The result of a task that returned: `TaskCancelled` if it was cancelled meanwhile,
    /// whatever it returned (dropping the references its value held).
    fn cancelled_result(
        &mut self,
        task: Id,
        result: Result<(Payload, Vec<Id>), Error>,
    ) -> Result<(Payload, Vec<Id>), Error> {
        if !self.cancel.running.remove(&task) {
            return result;
        }
        if let Ok((_, contained)) = result {
            for c in contained {
                self.add_ref(c, -1);
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
