//! The worker loop: what a forked worker process does with its socket to the driver.
//!
//! Owns the worker's side of the protocol (rules 1-2 in protocol.rs): run tasks, answer with
//! their outcome, and serve the API (`get`, `remote`, `put`...) that tasks call, including
//! running a nested task while the current one is blocked. It must not fork or touch the
//! store's table; the arena is only read, or written at offsets the driver handed out. It does
//! not know the fork server, which calls `run` in each child it forks.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;

use nix::sys::socket::MsgFlags;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use rayfork_plasma::ShmArena;

use crate::TaskContext;
use crate::client::{self, Backend, BackendRef, IdGen, RefQueue};
use crate::error::panic_message;
use crate::ipc::{FrameReader, FrameWriter};
use crate::protocol::{FromWorker, Id, Outcome, Payload, ReturnValue, RunTask, TaskSpec, ToWorker};
use crate::shared_flags::{self, SharedFlags};
use crate::{Error, Result, ipc, registry};

struct Conn {
    sock: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
}

/// The worker's connection to the scheduler, used by the API inside tasks.
pub(crate) struct WorkerBackend {
    slot: u32,
    conn: Mutex<Conn>,
    /// `Run`s and `Queue`s to take once the stack is empty, in arrival order (rule 6 in
    /// protocol.rs).
    later: Mutex<VecDeque<ToWorker>>,
    refs: RefQueue,
    ids: IdGen,
    arena: Arc<ShmArena>,
    inline_max: usize,
    thread: ThreadId,
    /// The shared cancel flags (see shared_flags.rs).
    flags: Arc<SharedFlags>,
    /// How many frames are on this worker's stack: the running one is at `depth - 1`.
    depth: AtomicUsize,
    /// The cancel tag of the running frame's task.
    tag: AtomicU64,
    /// The GPU devices of the running frame's task (`rayfork::gpu_ids`).
    gpus: Mutex<Vec<u32>>,
    /// What `rayfork::context` says, one per frame of the stack.
    contexts: Mutex<Vec<TaskContext>>,
    /// The thread-pool variables the driver set itself (left alone).
    user_env: Vec<&'static str>,
    /// What this worker did to `CUDA_VISIBLE_DEVICES`.
    cuda_env: Mutex<CudaEnv>,
}

/// Runs the worker loop until the driver says `Exit` or hangs up; returns the exit code. Makes
/// its connection the process's backend (`client::install_process_backend`) first.
/// The variables thread pools size themselves from (rayon, OpenMP).
const THREAD_POOL_VARS: [&str; 2] = ["RAYON_NUM_THREADS", "OMP_NUM_THREADS"];

pub(crate) fn run(
    runtime: u32,
    slot: u32,
    sock: UnixStream,
    arena: Arc<ShmArena>,
    flags: Arc<SharedFlags>,
) -> i32 {
    let backend = Arc::new(WorkerBackend {
        slot,
        conn: Mutex::new(Conn {
            sock,
            reader: FrameReader::default(),
            writer: FrameWriter::default(),
        }),
        later: Mutex::new(VecDeque::new()),
        refs: RefQueue::default(),
        ids: IdGen::new(runtime, slot + 1),
        arena,
        inline_max: crate::config::DEFAULT_INLINE_MAX,
        thread: std::thread::current().id(),
        flags,
        depth: AtomicUsize::new(0),
        tag: AtomicU64::new(0),
        gpus: Mutex::new(Vec::new()),
        contexts: Mutex::new(Vec::new()),
        user_env: THREAD_POOL_VARS
            .into_iter()
            .filter(|k| std::env::var_os(k).is_some())
            .collect(),
        cuda_env: Mutex::new(CudaEnv {
            original: std::env::var_os(CUDA_VISIBLE_DEVICES),
            touched: false,
            warned: false,
        }),
    });
    if !client::install_process_backend(backend.clone()) {
        return 3;
    }
    // What `main` would have set up (the crate docs list what carries over).
    for init in crate::registry::WORKER_INITS.iter() {
        init();
    }
    let _ = THIS_WORKER.set(backend.clone());
    let hello = FromWorker::Hello {
        worker: slot,
        pid: std::process::id() as i32,
    };
    if backend.send(hello).is_err() {
        return 0;
    }
    loop {
        match backend.next_task() {
            Ok(Next::Run(run)) => {
                if backend.run_task(run).is_err() {
                    return 0;
                }
            }
            Ok(Next::Exit) | Err(_) => return 0,
            Ok(Next::Unexpected(other)) => {
                eprintln!("rayfork worker {slot}: unexpected message {other:?}");
                return 4;
            }
        }
    }
}

/// This process's worker connection, for the hostile-task hooks of `hostile`.
static THIS_WORKER: OnceLock<Arc<WorkerBackend>> = OnceLock::new();

/// What a hostile task does to its own connection, for the tests of the hardening rules
/// (tests/fault_hostile_task.rs). Re-exported as `__private::hostile`: not a public API. Each
/// returns false outside a worker or when the write fails.
pub mod hostile {
    use std::io::Write;

    use super::THIS_WORKER;
    use crate::client::Backend;
    use crate::protocol::FromWorker;

    /// Sends a second `Hello` that claims the process is `pid`.
    pub fn hello(pid: i32) -> bool {
        THIS_WORKER.get().is_some_and(|w| {
            let slot = w.slot;
            w.send(FromWorker::Hello { worker: slot, pid }).is_ok()
        })
    }

    /// Writes `bytes` to the socket as they are, outside any frame.
    pub fn raw(bytes: &[u8]) -> bool {
        THIS_WORKER.get().is_some_and(|w| {
            let mut conn = w.conn.lock().unwrap_or_else(|e| e.into_inner());
            (&conn.sock).write_all(bytes).is_ok() && { conn.sock.flush().is_ok() }
        })
    }

    /// Writes `value` into every claim cell of the shared table (every worker's).
    pub fn scribble_claims(value: u64) -> bool {
        THIS_WORKER.get().is_some_and(|w| {
            for cell in 0..crate::shared_flags::LANES * crate::shared_flags::RING as u32 {
                w.flags.arm(cell, value);
            }
            true
        })
    }

    /// Sends reference changes for ids (as `u128`) this worker may or may not hold.
    pub fn ref_ops(ops: &[(u128, i32)]) -> bool {
        THIS_WORKER
            .get()
            .is_some_and(|w| w.send(FromWorker::RefOps(ops.to_vec())).is_ok())
    }

    /// Asks for an object by its number (`u128`), whether or not this worker holds it; true
    /// if an answer came back.
    pub fn get_by_id(id: u128) -> bool {
        THIS_WORKER.get().is_some_and(|w| {
            w.request(FromWorker::Get {
                ids: vec![id],
                timeout_ms: None,
            })
            .is_ok()
        })
    }
}

/// What an idle worker does next.
enum Next {
    Run(RunTask),
    /// `Exit`, or the driver hung up.
    Exit,
    Unexpected(ToWorker),
}

/// The environment variable CUDA libraries read to choose their devices.
const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

/// `CUDA_VISIBLE_DEVICES` in a worker: the value it started with (what a frame without GPUs
/// sees), whether rayfork ever changed it, and whether it warned that it could not.
struct CudaEnv {
    original: Option<std::ffi::OsString>,
    touched: bool,
    warned: bool,
}

/// Sets (`Some`) or removes (`None`) an environment variable if this process has no thread but
/// the caller's; false, and nothing changed, otherwise.
fn set_env_alone(key: &str, value: Option<&std::ffi::OsStr>) -> bool {
    let alone = std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1);
    if !alone {
        return false;
    }
    // SAFETY: this process has exactly one thread, the caller's (counted just above, and only
    // this thread could have started another since), so no other thread reads or writes the
    // environment while it changes.
    unsafe {
        match value {
            Some(v) => std::env::set_var(key, v),
            None => std::env::remove_var(key),
        }
    }
    true
}

/// Drops a task's panic payload, a value of the user's type whose own `Drop` may panic: that
/// second panic is caught and its payload leaked, so that the worker lives on and the task is
/// reported as panicked.
fn drop_payload(p: Box<dyn std::any::Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(p))) {
        std::mem::forget(again);
    }
}

impl WorkerBackend {
    fn send(&self, msg: FromWorker) -> io::Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Conn { sock, writer, .. } = &mut *conn;
        let ops = self.refs.take();
        if !ops.is_empty() {
            writer.push(&FromWorker::RefOps(ops))?;
        }
        writer.push(&msg)?;
        writer.flush(sock, MsgFlags::empty()).map(|_| ())
    }

    /// The next message from the scheduler; `Ok(None)` when it hung up. Spins briefly before
    /// sleeping in `recv` (see `ipc::spin`): the next task of a busy pool is usually close.
    fn recv(&self) -> io::Result<Option<ToWorker>> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Conn { sock, reader, .. } = &mut *conn;
        loop {
            if let Some(msg) = reader.next()? {
                return Ok(Some(msg));
            }
            let polled = ipc::spin(|| match reader.fill(sock, MsgFlags::MSG_DONTWAIT) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                other => Some(other),
            });
            let read = match polled {
                Some(r) => r,
                None => reader.fill(sock, MsgFlags::empty()),
            };
            match read {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next task to start with an empty stack (rule 6 in protocol.rs): the first of the
    /// tasks kept for later, else the next message. A queued task whose claim the scheduler won
    /// is dropped.
    fn next_task(&self) -> io::Result<Next> {
        loop {
            let kept = self
                .later
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let msg = match kept {
                Some(m) => m,
                None => match self.recv()? {
                    Some(m) => m,
                    None => return Ok(Next::Exit),
                },
            };
            match msg {
                ToWorker::Run(run) => return Ok(Next::Run(run)),
                ToWorker::Queue { run, cell, ticket } => {
                    if self.flags.take(cell, ticket) {
                        return Ok(Next::Run(run));
                    }
                    // Taken back by the scheduler, or the cell was overwritten: say so, so
                    // that a task the scheduler counts as started here goes elsewhere.
                    self.send(FromWorker::Unclaimed {
                        task: run.task,
                        ticket,
                    })?;
                }
                ToWorker::Exit => return Ok(Next::Exit),
                other => return Ok(Next::Unexpected(other)),
            }
        }
    }

    fn check_thread(&self) -> Result<()> {
        if std::thread::current().id() != self.thread {
            return Err(Error::Runtime(
                "rayfork calls inside a task must come from the task's own thread".into(),
            ));
        }
        Ok(())
    }

    /// Makes `RAYON_NUM_THREADS` and `OMP_NUM_THREADS` the task's CPUs (at least 1), unless the
    /// driver set them: so N workers do not start N x (all cores) threads. Pools read them at
    /// their start, so the first task that starts one sizes it; and the environment changes
    /// only while the process has one thread (`set_env_alone`).
    fn size_thread_pools(&self, cpus: f64) {
        let n = (cpus.ceil() as u64).max(1).to_string();
        for key in THREAD_POOL_VARS {
            if self.user_env.contains(&key) {
                continue;
            }
            if std::env::var(key).ok().as_deref() != Some(n.as_str()) {
                set_env_alone(key, Some(std::ffi::OsStr::new(&n)));
            }
        }
    }

    fn lock_contexts(&self) -> std::sync::MutexGuard<'_, Vec<TaskContext>> {
        self.contexts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run_task(&self, run: RunTask) -> io::Result<()> {
        let RunTask {
            task,
            func,
            name,
            args,
            extra,
            gpus,
            attempt,
            cpus,
            actor,
            moved,
        } = run;
        self.size_thread_pools(cpus);
        let context = TaskContext {
            task_id: rayfork_plasma::ObjectId::from_u128(task),
            function: func.clone(),
            name: name.clone(),
            attempt,
            actor_id: actor.map(rayfork_plasma::ObjectId::from_u128),
            gpu_ids: gpus.clone(),
            pid: std::process::id(),
        };
        self.lock_contexts().push(context);
        // This frame's place on the stack, as the scheduler counts it (scheduler rule 9).
        let depth = self.depth.fetch_add(1, Ordering::Relaxed);
        let outer = self.tag.swap(shared_flags::tag(task), Ordering::Relaxed);
        let outer_gpus = self.enter_gpus(gpus);
        let outcome = self.invoke(task, &func, &name, &args, moved);
        self.lock_contexts().pop();
        self.enter_gpus(outer_gpus);
        self.tag.store(outer, Ordering::Relaxed);
        self.depth.store(depth, Ordering::Relaxed);
        drop(args);
        let outcome = self.store_returns(task, &extra, outcome);
        self.send(FromWorker::Done { task, outcome })
    }

    fn invoke(
        &self,
        task: Id,
        func: &str,
        name: &str,
        args: &[Payload],
        moved: Vec<Id>,
    ) -> Outcome {
        // Moved references are dropped however the call ends (scheduler rule 13).
        let release = |moved: Vec<Id>| {
            for id in moved {
                self.ref_op(id, -1);
            }
        };
        let moved = std::rc::Rc::new(std::cell::RefCell::new(moved));
        let release = || release(std::mem::take(&mut *moved.borrow_mut()));
        let Some(f) = registry::lookup(func) else {
            release();
            return Outcome::Err(Error::UnknownFunction { name: func.into() });
        };
        let mut views = Vec::with_capacity(args.len());
        for a in args {
            match client::payload_bytes(&self.arena, a) {
                Ok(b) => views.push(b),
                Err(e) => {
                    release();
                    return Outcome::Err(e);
                }
            }
        }
        let inv = registry::Invocation {
            args: views,
            name,
            task,
            moved: moved.clone(),
        };
        let me: BackendRef = match client::process_backend() {
            Some(b) => b.clone(),
            None => {
                release();
                return Outcome::Err(Error::NoRuntime);
            }
        };
        let call = || client::with_decode_ctx(&me, || (f.call)(inv));
        let outcome = catch_unwind(AssertUnwindSafe(call));
        release();
        let outcome = match outcome {
            Ok(o) => o,
            Err(p) => {
                let message = panic_message(&*p);
                drop_payload(p);
                Outcome::Err(Error::TaskPanicked {
                    task: name.into(),
                    message,
                })
            }
        };
        match outcome {
            Outcome::Ok {
                payload: Payload::Inline(bytes),
                contained,
            } if bytes.len() > self.inline_max => match self.store_result(task, &bytes) {
                Ok(payload) => Outcome::Ok { payload, contained },
                Err(e) => {
                    // The result is lost: the references it held go back.
                    for c in contained {
                        self.ref_op(c, -1);
                    }
                    Outcome::Err(e)
                }
            },
            other => other,
        }
    }

    /// Makes `gpus` the running frame's devices and returns the previous frame's (entering a
    /// frame, and leaving it with the outer frame's devices).
    fn enter_gpus(&self, gpus: Vec<u32>) -> Vec<u32> {
        self.sync_cuda_env(&gpus);
        std::mem::replace(
            &mut *self.gpus.lock().unwrap_or_else(|e| e.into_inner()),
            gpus,
        )
    }

    /// Makes `CUDA_VISIBLE_DEVICES` list `devices`, or hold the worker's original value for a
    /// frame without GPUs. Once a task left threads running the environment cannot safely
    /// change (`set_env_alone`): the worker then says so on stderr, once, and tasks must rely
    /// on `gpu_ids()`.
    fn sync_cuda_env(&self, devices: &[u32]) {
        let mut env = self.cuda_env.lock().unwrap_or_else(|e| e.into_inner());
        if devices.is_empty() && !env.touched {
            return;
        }
        let want = if devices.is_empty() {
            env.original.clone()
        } else {
            let list: Vec<String> = devices.iter().map(u32::to_string).collect();
            Some(list.join(",").into())
        };
        if std::env::var_os(CUDA_VISIBLE_DEVICES) == want {
            return;
        }
        if set_env_alone(CUDA_VISIBLE_DEVICES, want.as_deref()) {
            env.touched = true;
        } else if !std::mem::replace(&mut env.warned, true) {
            eprintln!(
                "rayfork worker {}: CUDA_VISIBLE_DEVICES cannot be changed any more (a task left \
                 threads running in this process); tasks here must use rayfork::gpu_ids()",
                self.slot
            );
        }
    }

    /// Checks a multi-return outcome against the task's return ids and writes each large value
    /// into the store under its own return id (rule 5 in protocol.rs). On failure every value's
    /// references are given back and the task fails (the scheduler frees what was stored).
    fn store_returns(&self, task: Id, extra: &[Id], outcome: Outcome) -> Outcome {
        let values = match outcome {
            Outcome::Many(values) => values,
            Outcome::Ok { payload, contained } if !extra.is_empty() => {
                vec![ReturnValue { payload, contained }]
            }
            other => return other,
        };
        let fail = |values: Vec<ReturnValue>, e: Error| {
            for v in values {
                for c in v.contained {
                    self.ref_op(c, -1);
                }
            }
            Outcome::Err(e)
        };
        if values.len() != extra.len() + 1 {
            let e = Error::Protocol(format!(
                "task returned {} values but its caller expects {} (num_returns differs between \
                 the driver and the worker program)",
                values.len(),
                extra.len() + 1
            ));
            return fail(values, e);
        }
        let ids = std::iter::once(task).chain(extra.iter().copied());
        let mut out = Vec::with_capacity(values.len());
        let mut values = values.into_iter();
        for (id, v) in ids.zip(values.by_ref()) {
            let payload = match v.payload {
                Payload::Inline(bytes) if bytes.len() > self.inline_max => {
                    match self.store_result(id, &bytes) {
                        Ok(p) => p,
                        Err(e) => {
                            out.push(ReturnValue {
                                payload: Payload::Inline(Vec::new()),
                                contained: v.contained,
                            });
                            out.extend(values);
                            return fail(out, e);
                        }
                    }
                }
                p => p,
            };
            out.push(ReturnValue {
                payload,
                contained: v.contained,
            });
        }
        Outcome::Many(out)
    }

    /// Writes a large result into the store under one of the task's return ids.
    fn store_result(&self, task: Id, bytes: &[u8]) -> Result<Payload> {
        let (offset, len) = self.create(task, bytes.len() as u64)?;
        let d = rayfork_plasma::Descriptor { offset, len };
        // SAFETY: the scheduler allocated this range for this worker's `Create` of the task's
        // own id just now; no other process knows it until `Done` names it.
        let dst = unsafe { rayfork_plasma::Arena::bytes_mut(&*self.arena, d) }
            .map_err(|e| Error::View(e.to_string()))?;
        dst.copy_from_slice(bytes);
        self.seal(task, Vec::new())?;
        Ok(Payload::Stored { offset, len })
    }
}

impl Backend for WorkerBackend {
    /// Sends a request and waits for its answer, running nested tasks the scheduler hands us
    /// meanwhile (rule 2 in protocol.rs).
    fn request(&self, msg: FromWorker) -> Result<ToWorker> {
        self.check_thread()?;
        self.send(msg)
            .map_err(|e| Error::os("send to scheduler", e))?;
        loop {
            match self.recv() {
                Ok(Some(ToWorker::Run(run))) => self
                    .run_task(run)
                    .map_err(|e| Error::os("send to scheduler", e))?,
                Ok(Some(queued @ ToWorker::Queue { .. })) => self
                    .later
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(queued),
                Ok(Some(ToWorker::Exit)) | Ok(None) => {
                    // The driver is gone; nothing this task computes can be delivered.
                    std::process::exit(0)
                }
                Ok(Some(reply)) => return Ok(reply),
                Err(e) => return Err(Error::os("receive from scheduler", e)),
            }
        }
    }

    fn submit(&self, spec: TaskSpec) -> Result<()> {
        self.check_thread()?;
        self.send(FromWorker::Submit(spec))
            .map_err(|e| Error::os("send to scheduler", e))
    }

    fn put_inline(&self, id: Id, bytes: Vec<u8>, contained: Vec<Id>) -> Result<()> {
        self.check_thread()?;
        self.send(FromWorker::Put {
            id,
            bytes,
            contained,
        })
        .map_err(|e| Error::os("send to scheduler", e))
    }

    fn seal(&self, id: Id, contained: Vec<Id>) -> Result<()> {
        self.check_thread()?;
        self.send(FromWorker::Seal { id, contained })
            .map_err(|e| Error::os("send to scheduler", e))
    }

    fn abort(&self, id: Id) {
        let _ = self.send(FromWorker::Abort { id });
    }

    fn share(&self, id: Id) -> Result<()> {
        self.tell(FromWorker::Share { id })
    }

    fn context(&self) -> Option<TaskContext> {
        self.lock_contexts().last().cloned()
    }

    fn tell(&self, msg: FromWorker) -> Result<()> {
        self.check_thread()?;
        self.send(msg)
            .map_err(|e| Error::os("send to scheduler", e))
    }

    fn ref_op(&self, id: Id, delta: i32) {
        self.refs.push(id, delta);
    }

    fn yield_item(&self, task: Id, item: Id) -> Result<bool> {
        // The stream's own reference, moved by `Yield` (rule 4 in protocol.rs).
        self.refs.push(item, 1);
        match self.request(FromWorker::Yield { task, item })? {
            ToWorker::YieldAck => Ok(true),
            ToWorker::YieldStop => Ok(false),
            ToWorker::GetReply(Err(e)) => Err(e),
            other => Err(Error::Protocol(format!("expected YieldAck, got {other:?}"))),
        }
    }

    fn kill_actor(&self, actor: Id) -> Result<()> {
        self.check_thread()?;
        self.send(FromWorker::KillActor { actor })
            .map_err(|e| Error::os("send to scheduler", e))
    }

    fn arena(&self) -> &Arc<ShmArena> {
        &self.arena
    }

    fn new_id(&self) -> Id {
        self.ids.next()
    }

    fn inline_max(&self) -> usize {
        self.inline_max
    }

    /// True if the task running on top of this worker's stack has been cancelled: one atomic
    /// load of its flag in shared memory.
    fn is_cancelled(&self) -> bool {
        match self.depth.load(Ordering::Relaxed) {
            0 => false,
            d => self
                .flags
                .is_raised(self.slot, d - 1, self.tag.load(Ordering::Relaxed)),
        }
    }

    /// The GPU devices of the running frame's task.
    fn gpu_ids(&self) -> Vec<u32> {
        self.gpus.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl std::fmt::Debug for WorkerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerBackend(slot {})", self.slot)
    }
}
