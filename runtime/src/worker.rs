//! The worker loop: what a forked worker process does with its socket to the driver.
//!
//! Owns the worker's side of the protocol (rules 1-2 in protocol.rs): run tasks, answer with
//! their outcome, and serve the API (`get`, `remote`, `put`...) that tasks call, including
//! running a nested task while the current one is blocked. It must not fork or touch the
//! store's table; the arena is only read, or written at offsets the driver handed out.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use rayfork_plasma::ShmArena;

use crate::cancel_flags::{self, CancelFlags};
use crate::client::{Backend, IdGen, RefQueue};
use crate::protocol::{FromWorker, Id, Outcome, Payload, Resolved, TaskSpec, ToWorker};
use crate::{CancelMode, CancelOutcome, Error, Result, ipc, registry};

/// The entry point of an external worker program (see `Config::worker_program`).
///
/// A binary whose `main` calls this can be used as the worker program of a runtime whose
/// driver registers the same `#[remote]` functions. Run by hand, it explains itself and exits.
///
/// ```no_run
/// // src/main.rs of a worker program:
/// rayfork::worker::main()
/// ```
pub fn main() {
    crate::fork_server::run_role();
    eprintln!(
        "this is a rayfork worker program: a rayfork driver starts it \
         (Config::worker_program); it does nothing on its own"
    );
    std::process::exit(2);
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
}

/// The worker's connection to the scheduler, used by the API inside tasks.
pub(crate) struct WorkerBackend {
    slot: u32,
    conn: Mutex<Conn>,
    refs: RefQueue,
    ids: IdGen,
    arena: Arc<ShmArena>,
    inline_max: usize,
    thread: ThreadId,
    /// The shared cancel flags (see cancel_flags.rs).
    flags: Arc<CancelFlags>,
    /// How many frames are on this worker's stack: the running one is at `depth - 1`.
    depth: AtomicUsize,
    /// The cancel tag of the running frame's task.
    tag: AtomicU64,
}

static BACKEND: OnceLock<Arc<WorkerBackend>> = OnceLock::new();

/// The backend of this worker process, if this process is a worker.
pub(crate) fn backend() -> Option<Arc<WorkerBackend>> {
    BACKEND.get().cloned()
}

/// Runs the worker loop until the driver says `Exit` or hangs up; returns the exit code.
pub(crate) fn run(
    slot: u32,
    sock: UnixStream,
    arena: Arc<ShmArena>,
    flags: Arc<CancelFlags>,
) -> i32 {
    let reader = match sock.try_clone() {
        Ok(r) => BufReader::with_capacity(64 * 1024, r),
        Err(_) => return 3,
    };
    let backend = Arc::new(WorkerBackend {
        slot,
        conn: Mutex::new(Conn {
            reader,
            writer: BufWriter::with_capacity(64 * 1024, sock),
        }),
        refs: RefQueue::default(),
        ids: IdGen::new(slot + 1),
        arena,
        inline_max: crate::config::DEFAULT_INLINE_MAX,
        thread: std::thread::current().id(),
        flags,
        depth: AtomicUsize::new(0),
        tag: AtomicU64::new(0),
    });
    if BACKEND.set(backend.clone()).is_err() {
        return 3;
    }
    let hello = FromWorker::Hello {
        worker: slot,
        pid: std::process::id() as i32,
    };
    if backend.send(hello).is_err() {
        return 0;
    }
    loop {
        match backend.recv() {
            Ok(Some(ToWorker::Run {
                task,
                func,
                name,
                args,
            })) => {
                if backend.run_task(task, &func, &name, args).is_err() {
                    return 0;
                }
            }
            Ok(Some(ToWorker::Exit)) | Ok(None) => return 0,
            Ok(Some(other)) => {
                eprintln!("rayfork worker {slot}: unexpected message {other:?}");
                return 4;
            }
            Err(_) => return 0,
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

impl WorkerBackend {
    fn send(&self, msg: FromWorker) -> std::io::Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let ops = self.refs.take();
        let w = &mut conn.writer;
        if !ops.is_empty() {
            ipc::send(w, &FromWorker::RefOps(ops))?;
        }
        ipc::send(w, &msg)?;
        w.flush()
    }

    fn recv(&self) -> std::io::Result<Option<ToWorker>> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        ipc::recv(&mut conn.reader)
    }

    fn check_thread(&self) -> Result<()> {
        if std::thread::current().id() != self.thread {
            return Err(Error::Runtime(
                "rayfork calls inside a task must come from the task's own thread".into(),
            ));
        }
        Ok(())
    }

    /// Sends a request and waits for its answer, running nested tasks the scheduler hands us
    /// meanwhile (rule 2 in protocol.rs).
    fn request(&self, msg: FromWorker) -> Result<ToWorker> {
        self.check_thread()?;
        self.send(msg)
            .map_err(|e| Error::os("send to scheduler", e))?;
        loop {
            match self.recv() {
                Ok(Some(ToWorker::Run {
                    task,
                    func,
                    name,
                    args,
                })) => self
                    .run_task(task, &func, &name, args)
                    .map_err(|e| Error::os("send to scheduler", e))?,
                Ok(Some(ToWorker::Exit)) | Ok(None) => {
                    // The driver is gone; nothing this task computes can be delivered.
                    std::process::exit(0)
                }
                Ok(Some(reply)) => return Ok(reply),
                Err(e) => return Err(Error::os("receive from scheduler", e)),
            }
        }
    }

    fn run_task(
        &self,
        task: Id,
        func: &str,
        name: &str,
        args: Vec<Payload>,
    ) -> std::io::Result<()> {
        // This frame's place on the stack, as the scheduler counts it (rule 6 in scheduler.rs).
        let depth = self.depth.fetch_add(1, Ordering::Relaxed);
        let outer = self.tag.swap(cancel_flags::tag(task), Ordering::Relaxed);
        let outcome = self.invoke(task, func, name, &args);
        self.tag.store(outer, Ordering::Relaxed);
        self.depth.store(depth, Ordering::Relaxed);
        drop(args);
        self.send(FromWorker::Done { task, outcome })
    }

    fn invoke(&self, task: Id, func: &str, name: &str, args: &[Payload]) -> Outcome {
        let Some(f) = registry::lookup(func) else {
            return Outcome::Err(Error::UnknownFunction { name: func.into() });
        };
        let mut views = Vec::with_capacity(args.len());
        for a in args {
            match crate::client::payload_bytes(&self.arena, a) {
                Ok(b) => views.push(b),
                Err(e) => return Outcome::Err(e),
            }
        }
        let inv = registry::Invocation {
            args: views,
            name,
            task,
        };
        let me: crate::client::BackendRef = match backend() {
            Some(b) => b,
            None => return Outcome::Err(Error::NoRuntime),
        };
        let call = || crate::client::with_decode_ctx(&me, || (f.call)(inv));
        let outcome = match catch_unwind(AssertUnwindSafe(call)) {
            Ok(o) => o,
            Err(p) => Outcome::Err(Error::TaskPanicked {
                task: name.into(),
                message: panic_message(&*p),
            }),
        };
        match outcome {
            Outcome::Ok {
                payload: Payload::Inline(bytes),
                contained,
            } if bytes.len() > self.inline_max => match self.store_result(task, &bytes) {
                Ok(payload) => Outcome::Ok { payload, contained },
                Err(e) => Outcome::Err(e),
            },
            other => other,
        }
    }

    /// True if the task running on top of this worker's stack has been cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        match self.depth.load(Ordering::Relaxed) {
            0 => false,
            d => self
                .flags
                .is_raised(self.slot, d - 1, self.tag.load(Ordering::Relaxed)),
        }
    }

    /// Writes a large result into the store under the task's own id.
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
    fn submit(&self, spec: TaskSpec) -> Result<()> {
        self.check_thread()?;
        self.send(FromWorker::Submit(spec))
            .map_err(|e| Error::os("send to scheduler", e))
    }

    fn get(&self, ids: &[Id], timeout_ms: Option<u64>) -> Result<Vec<Resolved>> {
        match self.request(FromWorker::Get {
            ids: ids.to_vec(),
            timeout_ms,
        })? {
            ToWorker::GetReply(r) => r,
            other => Err(Error::Protocol(format!("expected GetReply, got {other:?}"))),
        }
    }

    fn wait(&self, ids: &[Id], num_ready: usize, timeout_ms: Option<u64>) -> Result<Vec<bool>> {
        match self.request(FromWorker::Wait {
            ids: ids.to_vec(),
            num_ready,
            timeout_ms,
        })? {
            ToWorker::WaitReply(r) => Ok(r),
            other => Err(Error::Protocol(format!(
                "expected WaitReply, got {other:?}"
            ))),
        }
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

    fn create(&self, id: Id, size: u64) -> Result<(u64, u64)> {
        match self.request(FromWorker::Create { id, size })? {
            ToWorker::Created(r) => r,
            other => Err(Error::Protocol(format!("expected Created, got {other:?}"))),
        }
    }

    fn seal(&self, id: Id, contained: Vec<Id>) -> Result<()> {
        self.check_thread()?;
        self.send(FromWorker::Seal { id, contained })
            .map_err(|e| Error::os("send to scheduler", e))
    }

    fn abort(&self, id: Id) {
        let _ = self.send(FromWorker::Abort { id });
    }

    fn ref_op(&self, id: Id, delta: i32) {
        self.refs.push(id, delta);
    }

    fn cancel(&self, id: Id, mode: &CancelMode) -> Result<CancelOutcome> {
        match self.request(FromWorker::Cancel {
            id,
            force: mode.force,
            recursive: mode.recursive,
            grace_ms: mode.grace_ms(),
        })? {
            ToWorker::CancelReply(r) => r,
            other => Err(Error::Protocol(format!(
                "expected CancelReply, got {other:?}"
            ))),
        }
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
}

impl std::fmt::Debug for WorkerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerBackend(slot {})", self.slot)
    }
}
