//! The wire protocol: every message between the driver, the fork server and the workers.
//!
//! Owns the message enums and nothing else; `ipc` frames and moves them, the scheduler and the
//! worker loop act on them. No other module builds a message by hand.
//!
//! Rules of the worker channel (cited elsewhere as "rule N in protocol.rs"):
//! 1. A worker sends one `Hello` first, then any number of messages. Requests that expect an
//!    answer (`Get`, `Wait`, `Create`, `Cancel`, `NextItem`, `Yield`) block the worker until the
//!    answer arrives; every other message is one-way.
//! 2. The driver sends `Run` only to a worker that is idle or blocked in `Get`/`Wait`; a blocked
//!    worker runs it nested on its stack and answers with `Done` before its own answer arrives.
//!    An answer (`GetReply`, `WaitReply`) is only sent to the task on top of the worker's stack.
//! 3. Object ids are made by the client that names them (`IdGen`), so submits and puts are
//!    one-way. The scheduler refuses an id that already exists.
//! 4. Reference counting: every live handle (an `ObjectRef` or `Array`) and every id mentioned in
//!    a message body (`contained`) owns one reference. `RefOps` ride in front of the message
//!    that follows them and are applied, in order, before it.
//! 5. A task with `num_returns = N` has N return objects: `TaskSpec::ret` (also the task's id)
//!    and the N - 1 ids of `TaskSpec::extra`, all made by the submitter (rule 3), each owning
//!    one reference held by the submitter's handle. Its `Done` carries `Outcome::Many` with
//!    exactly N values, in order; value i is inline or was written to the store under return
//!    id i. An `Err` outcome (or a crash) fails all N objects.
//! 6. Queued tasks. The driver may send `Queue` to a worker that runs a task, to start when its
//!    stack is empty. The worker keeps queued tasks in arrival order, with any `Run` that comes
//!    while it holds some (a `Run` received blocked in a request is a nested run, rule 2, and
//!    runs at once). Each time its stack is empty it takes the first: a `Run` runs; a `Queue`
//!    runs only if the worker wins its claim cell (`SharedFlags::take`, shared_flags.rs), and
//!    is dropped unanswered otherwise: the driver took it back. So the tasks that run start in
//!    the order they were sent, one after each `Done` that empties the stack.

use serde::{Deserialize, Serialize};

use crate::{CancelOutcome, Error};

/// An object id on the wire (a `rayfork_plasma::ObjectId` as an integer).
pub type Id = u128;

/// Driver -> fork server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForkRequest {
    /// Fork a worker with this slot number; the driver end of its socket comes back.
    Spawn { worker: u32 },
    /// Kill this worker (SIGKILL); its exit is reported as usual.
    Kill { pid: i32 },
}

/// Fork server -> driver.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForkReply {
    /// The worker runs; the driver end of its socket is attached to this message.
    Spawned { worker: u32, pid: i32 },
    /// Forking failed.
    SpawnFailed { worker: u32, message: String },
    /// The last lines a worker wrote to stderr, sent just before its `Exited` (rule 5 in
    /// fork_server.rs).
    StderrTail { pid: i32, lines: Vec<String> },
    /// A worker was reaped.
    Exited { pid: i32, cause: ExitCause },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ExitCause {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl std::fmt::Display for ExitCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitCause::Code(c) => write!(f, "worker exited with code {c}"),
            ExitCause::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "worker killed by signal {s} ({name})")
            }
        }
    }
}

/// Per-task options that travel with the task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskOpts {
    pub name: Option<String>,
    pub num_cpus: f64,
    pub max_retries: u32,
    pub retry_exceptions: bool,
    /// May run again after a crash while it held a writable window (scheduler rule 12).
    pub restartable: bool,
    /// Recorded in the timeline and the summary (timeline.rs).
    pub task_events: bool,
    /// GPUs held from start to finish (also while blocked in `get`).
    pub num_gpus: f64,
    /// Custom resources held from start to finish, by name (also while blocked in `get`).
    pub resources: Vec<(String, f64)>,
    /// Retire the worker after it has run this many tasks with `max_calls` set (0: never).
    pub max_calls: u32,
    /// With `retry_exceptions`: retry only errors whose message contains one of these (all
    /// errors when empty).
    pub retry_if_contains: Vec<String>,
    /// A generator task (scheduler rule 10) and its back-pressure: at most this many
    /// yielded items not yet taken by the caller (0: no limit).
    pub streaming: Option<u32>,
}

/// A task argument as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Arg {
    /// An encoded value, with the ids it mentions (rule 4).
    Value { bytes: Vec<u8>, contained: Vec<Id> },
    /// An object ref: the task waits for it and receives its value.
    Ref(Id),
}

/// A task as submitted by a driver or a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskSpec {
    /// The id of the object that will hold the result; also the task's id.
    pub ret: Id,
    /// The registered function name.
    pub func: String,
    pub args: Vec<Arg>,
    pub opts: TaskOpts,
    /// The ids of return values 2..=N of a `num_returns = N` task (rule 5); empty otherwise.
    pub extra: Vec<Id>,
    /// Set for the constructor and the method calls of an actor (scheduler rule 8).
    pub actor: Option<ActorCall>,
}

impl TaskSpec {
    /// Every id its arguments hold a reference to: the refs, and the ids values mention (rule 4).
    pub(crate) fn arg_ids(&self) -> impl Iterator<Item = Id> + '_ {
        self.args
            .iter()
            .flat_map(|a| match a {
                Arg::Ref(r) => std::slice::from_ref(r),
                Arg::Value { contained, .. } => &contained[..],
            })
            .copied()
    }
}

/// What an actor task is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ActorCall {
    /// Constructs an actor whose id is this task's id, on a worker of its own; a crash of that
    /// worker re-runs the constructor up to `max_restarts` times; a call running at a crash
    /// runs again on the restarted actor up to `max_task_retries` times.
    Create {
        max_restarts: u32,
        max_task_retries: u32,
    },
    /// A method call on `actor`; its first argument is a ref to the actor (its id).
    Method { actor: Id },
}

/// Where an object's bytes are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Payload {
    /// In the message.
    Inline(Vec<u8>),
    /// In the store, in the arena.
    Stored {
        /// Offset from the start of the arena.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// An object's value as a reader receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Resolved {
    Value(Payload),
    Error(Error),
    /// Not ready yet: the `get` of several objects was answered early, because another of
    /// them failed.
    Pending,
}

/// A task's outcome as the worker reports it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// The result bytes are inline, or were written to the store under the task's return id.
    Ok {
        /// The encoded result.
        payload: Payload,
        /// Ids the result mentions (rule 4).
        contained: Vec<Id>,
    },
    /// `Err` returned or panic caught.
    Err(Error),
    /// The values of a `num_returns = N` task, one per return id, in order (rule 5).
    Many(Vec<ReturnValue>),
}

/// One value of a task with several returns.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReturnValue {
    /// The encoded value: inline, or written to the store under its own return id.
    pub payload: Payload,
    /// Ids the value mentions (rule 4).
    pub contained: Vec<Id>,
}

/// A task to run, with its arguments resolved.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunTask {
    pub task: Id,
    pub func: String,
    pub name: String,
    pub args: Vec<Payload>,
    /// The task's extra return ids (rule 5), where large values are stored.
    pub extra: Vec<Id>,
    /// The GPU devices it was given (`rayfork::gpu_ids`).
    pub gpus: Vec<u32>,
    /// Which attempt this is, from 1 (`rayfork::context`).
    pub attempt: u32,
    /// The CPUs it holds (`num_cpus`): the size of the thread pools it should start.
    pub cpus: f64,
    /// The actor it runs for: its constructor or one of its methods.
    pub actor: Option<Id>,
    /// Argument ids whose references the scheduler moved to this worker (scheduler rule 13):
    /// the worker drops them once the arguments are decoded, so the task's own handles are
    /// all that keep those objects alive.
    pub moved: Vec<Id>,
}

/// Driver -> worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run a task now: on an idle worker, or nested on a blocked one (rule 2).
    Run(RunTask),
    /// Run a task once the stack is empty, if the claim cell `cell` still holds `ticket`
    /// (rule 6).
    Queue {
        run: RunTask,
        cell: u32,
        ticket: u64,
    },
    /// The answer to `Get`: one entry per id, in order.
    GetReply(Result<Vec<Resolved>, Error>),
    /// The answer to `Wait`: one readiness flag per id.
    WaitReply(Vec<bool>),
    /// The answer to `Yield`: the stream has room, go on.
    YieldAck,
    /// The answer to `Yield` once nobody can take the items any more (the caller dropped the
    /// generator): stop yielding and end the task (scheduler rule 10).
    YieldStop,
    /// The answer to `NextItem`: the item's id (with a reference for the asker), `None` when
    /// the stream ended, or the generator's error.
    NextItemReply(Result<Option<Id>, Error>),
    /// The indices of a watch's objects that became ready since the last answer.
    ReadyReply(Result<Vec<u32>, Error>),
    /// A named actor's id (with a reference for the asker) and its constructor's function.
    ActorReply(Result<(Id, String), Error>),
    /// The answer to `Create`.
    Created(Result<(u64, u64), Error>),
    /// The answer to `Cancel`.
    CancelReply(Result<CancelOutcome, Error>),
    /// Leave the worker loop and exit.
    Exit,
}

/// Worker -> driver.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// First message, and only once: who I am. `pid` is for diagnostics; the scheduler kills by
    /// the pid the fork server reported, never this one.
    Hello { worker: u32, pid: i32 },
    /// Reference count changes (rule 4), applied in order before the next message.
    RefOps(Vec<(Id, i32)>),
    /// Submit a nested task (one-way, rule 3).
    Submit(TaskSpec),
    /// Block until every id is ready (or the timeout passes), then answer with `GetReply`.
    Get {
        ids: Vec<Id>,
        timeout_ms: Option<u64>,
    },
    /// Block until `num_ready` ids are ready (or the timeout passes), then `WaitReply`.
    Wait {
        ids: Vec<Id>,
        num_ready: usize,
        timeout_ms: Option<u64>,
    },
    /// Store a small value inline (one-way).
    Put {
        id: Id,
        bytes: Vec<u8>,
        contained: Vec<Id>,
    },
    /// Create an unsealed store object of `size` bytes; answered with `Created`.
    Create { id: Id, size: u64 },
    /// Seal an object this worker created (one-way), with the ids its bytes mention.
    Seal { id: Id, contained: Vec<Id> },
    /// Share an unsealed object this worker created as windows (one-way; scheduler rule 12).
    Share { id: Id },
    /// Start following `ids` under the new id `watch` (one-way; watches.rs).
    Watch { watch: Id, ids: Vec<Id> },
    /// Block until some followed objects are ready (or the timeout passes), then
    /// `ReadyReply` with their indices, each handed out once.
    NextReady { watch: Id, timeout_ms: Option<u64> },
    /// Stop following (one-way).
    Unwatch { watch: Id },
    /// The live actor with this name (`ActorReply`).
    GetActor { name: String },
    /// Drop an unsealed object this worker created (one-way).
    Abort { id: Id },
    /// The task on top of the stack finished.
    Done { task: Id, outcome: Outcome },
    /// A queued task (rule 6) this worker did not start: its claim cell did not hold its
    /// `ticket` (taken back, or overwritten). One-way.
    Unclaimed { task: Id, ticket: u64 },
    /// A generator task yields `item` (a value this worker put); its reference moves to the
    /// stream. Answered with `YieldAck` once the stream has room (scheduler rule 10).
    Yield { task: Id, item: Id },
    /// The item at `index` of the stream of generator task `stream`; answered with
    /// `NextItemReply` once it exists or the stream ended.
    NextItem { stream: Id, index: u64 },
    /// End an actor's process now; it is not restarted and its pending calls fail.
    KillActor { actor: Id },
    /// Cancel the task that produces `id` (scheduler rule 9); answered with
    /// `CancelReply`. `grace_ms: None` means the runtime's `Config::cancel_grace`.
    Cancel {
        id: Id,
        force: bool,
        recursive: bool,
        grace_ms: Option<u64>,
    },
}
