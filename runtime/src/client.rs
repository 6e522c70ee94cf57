//! The client side of the scheduler, shared by the driver and the workers: the `Backend` trait
//! that the public API calls, id generation, reference-count queues, the process-wide backend
//! slot that a worker process fills, and the thread-local contexts that let `ObjectRef` and
//! `Array` find their runtime while being (de)serialized.
//!
//! Owns no state of the scheduler; it only speaks to it. It must not name the backends that
//! implement `Backend` (the driver's in runtime.rs, the worker's in worker_loop.rs): they are
//! handed to it (`set_current`, `install_process_backend`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rayfork_plasma::{Arena, Descriptor, ShmArena};

use crate::protocol::{FromWorker, Id, Payload, Resolved, TaskSpec, ToWorker};
use crate::{CancelMode, CancelOutcome, Error, Result};

/// What the public API needs from a runtime, in a driver or in a worker.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Sends a request to the scheduler and waits for its answer (rule 1 in protocol.rs).
    fn request(&self, msg: FromWorker) -> Result<ToWorker>;
    /// Submits a task (one-way).
    fn submit(&self, spec: TaskSpec) -> Result<()>;
    /// Waits for every id and returns their values.
    fn get(&self, ids: &[Id], timeout_ms: Option<u64>) -> Result<Vec<Resolved>> {
        let ids = ids.to_vec();
        match self.request(FromWorker::Get { ids, timeout_ms })? {
            ToWorker::GetReply(r) => r,
            other => Err(unexpected("GetReply", other)),
        }
    }
    /// Waits until `num_ready` ids are ready; one flag per id.
    fn wait(&self, ids: &[Id], num_ready: usize, timeout_ms: Option<u64>) -> Result<Vec<bool>> {
        let ids = ids.to_vec();
        match self.request(FromWorker::Wait {
            ids,
            num_ready,
            timeout_ms,
        })? {
            ToWorker::WaitReply(r) => Ok(r),
            other => Err(unexpected("WaitReply", other)),
        }
    }
    /// Stores a small value under `id` (one-way).
    fn put_inline(&self, id: Id, bytes: Vec<u8>, contained: Vec<Id>) -> Result<()>;
    /// Creates an unsealed store object; returns (offset, len).
    fn create(&self, id: Id, size: u64) -> Result<(u64, u64)> {
        match self.request(FromWorker::Create { id, size })? {
            ToWorker::Created(r) => r,
            other => Err(unexpected("Created", other)),
        }
    }
    /// Seals an object created with `create`.
    fn seal(&self, id: Id, contained: Vec<Id>) -> Result<()>;
    /// Drops an unsealed object created with `create`.
    fn abort(&self, id: Id);
    /// Shares an unsealed object created with `create` as windows (scheduler rule 12).
    fn share(&self, id: Id) -> Result<()>;
    /// A reference count change (rule 4 in protocol.rs).
    fn ref_op(&self, id: Id, delta: i32);
    /// Yields an item of the running generator task (scheduler rule 10); blocks while
    /// the stream is full. False once nobody takes the items: the generator stops.
    fn yield_item(&self, task: Id, item: Id) -> Result<bool>;
    /// Sends a message that has no answer.
    fn tell(&self, msg: FromWorker) -> Result<()>;
    /// The running task's context (in a worker; `None` in the driver).
    fn context(&self) -> Option<crate::TaskContext> {
        None
    }
    /// Starts following `ids` as watch `watch` (watches.rs in the scheduler).
    fn watch(&self, watch: Id, ids: Vec<Id>) -> Result<()> {
        self.tell(FromWorker::Watch { watch, ids })
    }
    /// Stops following a watch.
    fn unwatch(&self, watch: Id) {
        let _ = self.tell(FromWorker::Unwatch { watch });
    }
    /// The indices of the watch's objects that became ready since the last call; blocks until
    /// there is one (or the timeout passes); empty once every one was handed out.
    fn next_ready(&self, watch: Id, timeout_ms: Option<u64>) -> Result<Vec<u32>> {
        match self.request(FromWorker::NextReady { watch, timeout_ms })? {
            ToWorker::ReadyReply(r) => r,
            other => Err(unexpected("ReadyReply", other)),
        }
    }
    /// The live actor named `name`: its id (with a reference that the caller now owns) and its
    /// constructor's function.
    fn get_actor(&self, name: &str) -> Result<(Id, String)> {
        match self.request(FromWorker::GetActor {
            name: name.to_string(),
        })? {
            ToWorker::ActorReply(r) => r,
            other => Err(unexpected("ActorReply", other)),
        }
    }
    /// The item at `index` of a generator's stream: `None` when it ended.
    fn next_item(&self, stream: Id, index: u64) -> Result<Option<Id>> {
        match self.request(FromWorker::NextItem { stream, index })? {
            ToWorker::NextItemReply(r) => r,
            other => Err(unexpected("NextItemReply", other)),
        }
    }
    /// Ends an actor's process (one-way).
    fn kill_actor(&self, actor: Id) -> Result<()>;
    /// Cancels the task that produces `id` (scheduler rule 9).
    fn cancel(&self, id: Id, mode: &CancelMode) -> Result<CancelOutcome> {
        match self.request(FromWorker::Cancel {
            id,
            force: mode.force,
            recursive: mode.recursive,
            grace_ms: mode.grace_ms(),
        })? {
            ToWorker::CancelReply(r) => r,
            other => Err(unexpected("CancelReply", other)),
        }
    }
    /// The shared arena.
    fn arena(&self) -> &Arc<ShmArena>;
    /// A fresh object id (rule 3 in protocol.rs).
    fn new_id(&self) -> Id;
    /// Values up to this size travel inline.
    fn inline_max(&self) -> usize;
    /// True if the task running on top of this backend's stack has been cancelled (see
    /// `rayfork::is_cancelled`); a backend that runs no tasks (the driver's) says false.
    fn is_cancelled(&self) -> bool {
        false
    }
    /// The GPU devices of the task running on top of this backend's stack (see
    /// `rayfork::gpu_ids`); a backend that runs no tasks (the driver's) has none.
    fn gpu_ids(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// The error for an answer of the wrong kind. A failed request (the runtime shutting down)
/// comes back as `GetReply(Err(e))` whatever was asked: that error is passed on.
fn unexpected(want: &str, got: ToWorker) -> Error {
    match got {
        ToWorker::GetReply(Err(e)) => e,
        other => Error::Protocol(format!("expected {want}, got {other:?}")),
    }
}

/// A shared handle to a backend.
pub(crate) type BackendRef = Arc<dyn Backend>;

/// Makes ids unique within a process: the runtime's number in the top 32 bits (so that two
/// runtimes of one process never name the same object), the client's (0 for the driver, a
/// worker's slot + 1) in the next 32, a counter below.
#[derive(Debug)]
pub(crate) struct IdGen {
    high: u128,
    next: AtomicU64,
}

/// The runtime that made id `id` (see `IdGen`).
pub(crate) fn runtime_of(id: u128) -> u32 {
    (id >> 96) as u32
}

impl IdGen {
    pub(crate) fn new(runtime: u32, client: u32) -> Self {
        IdGen {
            high: ((runtime as u128) << 96) | ((client as u128) << 64),
            next: AtomicU64::new(1),
        }
    }

    pub(crate) fn next(&self) -> Id {
        self.high | self.next.fetch_add(1, Ordering::Relaxed) as u128
    }
}

/// Reference count changes waiting to ride with the next message (workers only).
#[derive(Debug, Default)]
pub(crate) struct RefQueue(Mutex<Vec<(Id, i32)>>);

impl RefQueue {
    pub(crate) fn push(&self, id: Id, delta: i32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, delta));
    }

    /// Takes the queue, netted per id (changes that cancel out are dropped), with every
    /// increment before every decrement: a decrement applied first could free an object (and
    /// what it mentions) that a later increment in the same batch keeps alive.
    pub(crate) fn take(&self) -> Vec<(Id, i32)> {
        let ops = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if ops.len() < 2 {
            return ops;
        }
        let mut net: HashMap<Id, i32> = HashMap::with_capacity(ops.len());
        let mut order = Vec::new();
        for (id, d) in ops {
            let e = net.entry(id).or_insert_with(|| {
                order.push(id);
                0
            });
            *e += d;
        }
        let mut out: Vec<(Id, i32)> = order
            .into_iter()
            .filter_map(|id| match net[&id] {
                0 => None,
                d => Some((id, d)),
            })
            .collect();
        // Stable: increments first, each group in first-seen order.
        out.sort_by_key(|&(_, d)| d < 0);
        out
    }
}

/// The bytes of a payload: inline, or a zero-copy view of the arena.
pub(crate) fn payload_bytes<'a>(arena: &'a ShmArena, p: &'a Payload) -> Result<&'a [u8]> {
    match p {
        Payload::Inline(b) => Ok(b),
        Payload::Stored { offset, len } => arena
            .bytes(Descriptor {
                offset: *offset,
                len: *len,
            })
            .map_err(|e| Error::View(e.to_string())),
    }
}

/// A resolved value as bytes, or its error.
pub(crate) fn resolved_bytes<'a>(arena: &'a ShmArena, r: &'a Resolved) -> Result<&'a [u8]> {
    match r {
        Resolved::Value(p) => payload_bytes(arena, p),
        Resolved::Error(e) => Err(e.clone()),
        Resolved::Pending => Err(Error::Protocol(
            "a get answered before its object was ready".into(),
        )),
    }
}

/// The backend of this whole process, set once when the process becomes a worker.
static PROCESS_BACKEND: OnceLock<BackendRef> = OnceLock::new();

/// Makes `b` the backend of this process: the one every free function (`rayfork::put`,
/// `f::remote`, `rayfork::is_cancelled`...) uses, from any thread, ahead of a thread's own
/// runtime. The worker loop installs its connection to the scheduler here once, at start.
/// Returns false, and changes nothing, if a backend was installed already.
pub(crate) fn install_process_backend(b: BackendRef) -> bool {
    PROCESS_BACKEND.set(b).is_ok()
}

/// The backend installed with `install_process_backend`: `Some` exactly in a worker process.
pub(crate) fn process_backend() -> Option<&'static BackendRef> {
    PROCESS_BACKEND.get()
}

thread_local! {
    static DECODE_CTX: RefCell<Vec<BackendRef>> = const { RefCell::new(Vec::new()) };
    static COLLECT: RefCell<Vec<Vec<Id>>> = const { RefCell::new(Vec::new()) };
    static CURRENT: RefCell<Option<Weak<dyn Backend>>> = const { RefCell::new(None) };
    static MOVING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with `b` as the runtime that decoded handles attach to.
pub(crate) fn with_decode_ctx<R>(b: &BackendRef, f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            DECODE_CTX.with(|c| c.borrow_mut().pop());
        }
    }
    DECODE_CTX.with(|c| c.borrow_mut().push(b.clone()));
    let _pop = Pop;
    f()
}

/// The runtime a handle being decoded belongs to.
pub(crate) fn decode_ctx() -> Option<BackendRef> {
    DECODE_CTX.with(|c| c.borrow().last().cloned())
}

/// Runs `f` (an encode) and returns the ids that handles mentioned while it ran.
pub(crate) fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<Id>) {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            COLLECT.with(|c| c.borrow_mut().pop());
        }
    }
    COLLECT.with(|c| c.borrow_mut().push(Vec::new()));
    let pop = Pop;
    let r = f();
    let ids = COLLECT.with(|c| c.borrow_mut().last_mut().map(std::mem::take));
    drop(pop);
    (r, ids.unwrap_or_default())
}

/// Records that a handle with this id was serialized (rule 4 in protocol.rs).
pub(crate) fn mention(id: Id) {
    COLLECT.with(|c| {
        if let Some(v) = c.borrow_mut().last_mut() {
            v.push(id)
        }
    });
}

/// Encodes, like [`encode_with_refs`], a value the caller gives up: a task's argument or its
/// result. Only such an encode may carry a [`Window`](crate::Window) (window.rs), which leaves
/// its process with it.
pub(crate) fn encode_moved_with_refs<T: serde::Serialize + ?Sized>(
    b: &BackendRef,
    v: &T,
) -> Result<(Vec<u8>, Vec<Id>)> {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            MOVING.with(|m| m.set(m.get() - 1));
        }
    }
    MOVING.with(|m| m.set(m.get() + 1));
    let _pop = Pop;
    encode_with_refs(b, v)
}

/// True while [`encode_moved_with_refs`] runs on this thread.
pub(crate) fn moving() -> bool {
    MOVING.with(|m| m.get() > 0)
}

/// The runtime most recently started in this process, for threads that entered none.
static LATEST: Mutex<Option<Weak<dyn Backend>>> = Mutex::new(None);

/// Makes `b` the runtime that free functions (`rayfork::put`, `f::remote`) use in this thread.
pub(crate) fn set_current(b: &BackendRef) {
    CURRENT.with(|c| *c.borrow_mut() = Some(Arc::downgrade(b)));
}

/// Makes `b` the runtime of every driver thread that entered none (`Runtime::start`).
pub(crate) fn set_latest(b: &BackendRef) {
    *LATEST.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(b));
}

/// The runtime that free functions use: the worker's own in a worker; else the one this
/// thread entered (`Runtime::enter`, or started); else the one most recently started in the
/// process, if it still runs.
pub(crate) fn current() -> Result<BackendRef> {
    if let Some(w) = process_backend() {
        return Ok(w.clone());
    }
    if let Some(b) = DECODE_CTX.with(|c| c.borrow().last().cloned()) {
        return Ok(b);
    }
    if let Some(b) = CURRENT.with(|c| c.borrow().as_ref().and_then(Weak::upgrade)) {
        return Ok(b);
    }
    LATEST
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(Weak::upgrade)
        .ok_or(Error::NoRuntime)
}

/// Encodes a value for a message: inline bytes and the ids it mentions, each of which now owns
/// a reference (rule 4 in protocol.rs).
pub(crate) fn encode_with_refs<T: serde::Serialize + ?Sized>(
    b: &BackendRef,
    v: &T,
) -> Result<(Vec<u8>, Vec<Id>)> {
    let (bytes, ids) = collecting(|| crate::codec::encode_value(v));
    let bytes = bytes?;
    for &id in &ids {
        b.ref_op(id, 1);
    }
    Ok((bytes, ids))
}

#[cfg(test)]
mod tests {
    use super::RefQueue;

    #[test]
    fn increments_come_before_decrements() {
        let q = RefQueue::default();
        q.push(1, 1);
        q.push(2, 1);
        q.push(1, -2);
        q.push(3, 1);
        q.push(3, -1);
        assert_eq!(q.take(), vec![(2, 1), (1, -1)]);
        assert!(q.take().is_empty());
    }
}
