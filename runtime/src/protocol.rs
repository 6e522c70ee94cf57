//! The wire protocol: every message between the driver, the fork server and the workers.
//!
//! Owns the message enums and nothing else; `ipc` frames and moves them, the scheduler and the
//! worker loop act on them. No other module builds a message by hand.
//!
//! Rules of the worker channel (cited elsewhere as "rule N in protocol.rs"):
//! 1. A worker sends one `Hello` first, then any number of messages. Requests that expect an
//!    answer (`Get`, `Wait`, `Create`, `Cancel`) block the worker until the answer arrives; every
//!    other message is one-way.
//! 2. The driver sends `Run` only to a worker that is idle or blocked in `Get`/`Wait`; a blocked
//!    worker runs it nested on its stack and answers with `Done` before its own answer arrives.
//!    An answer (`GetReply`, `WaitReply`) is only sent to the task on top of the worker's stack.
//! 3. Object ids are made by the client that names them (`IdGen`), so submits and puts are
//!    one-way. The scheduler refuses an id that already exists.
//! 4. Reference counting: every live handle (an `ObjectRef` or `Array`) and every id mentioned in
//!    a message body (`contained`) owns one reference. `RefOps` ride in front of the message
//!    that follows them and are applied, in order, before it.

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
    /// With `retry_exceptions`: retry only errors whose message contains one of these (all
    /// errors when empty).
    pub retry_if_contains: Vec<String>,
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
}

/// Driver -> worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run a task with its arguments resolved.
    Run {
        task: Id,
        func: String,
        name: String,
        args: Vec<Payload>,
    },
    /// The answer to `Get`: one entry per id, in order.
    GetReply(Result<Vec<Resolved>, Error>),
    /// The answer to `Wait`: one readiness flag per id.
    WaitReply(Vec<bool>),
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
    /// First message: who I am.
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
    /// Drop an unsealed object this worker created (one-way).
    Abort { id: Id },
    /// The task on top of the stack finished.
    Done { task: Id, outcome: Outcome },
    /// Cancel the task that produces `id` (rule 6 in scheduler.rs); answered with
    /// `CancelReply`. `grace_ms: None` means the runtime's `Config::cancel_grace`.
    Cancel {
        id: Id,
        force: bool,
        recursive: bool,
        grace_ms: Option<u64>,
    },
}
