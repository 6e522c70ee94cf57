//! The public error type: what went wrong with a task, an object or the runtime, and what to do.
//!
//! Owns [`Error`] and the conversions into it. It must not hold anything that cannot cross a
//! process boundary: errors travel from workers to the driver over the wire (see `protocol`).

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in rayfork, as one enum.
///
/// Task errors (`TaskFailed`, `TaskPanicked`, `WorkerCrashed`, `TaskCancelled`) are values: they
/// are stored as the task's result and every `get` of its ref returns them. The worker that ran
/// the task survives `TaskFailed` and `TaskPanicked`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The task returned `Err(e)`; `message` is `e`'s `Display` text.
    #[error("task {task} failed: {message}")]
    TaskFailed {
        /// The task's name (the function's path unless `options().name(..)` set one).
        task: String,
        /// The error's text, with its chain of causes when it has one (`{:#}`).
        message: String,
        /// The error itself, encoded, when its type is `Serialize`: get it back with
        /// [`Error::downcast`].
        value: Option<ErrorValue>,
    },
    /// The task panicked; the panic was caught in the worker, which lives on.
    #[error("task {task} panicked: {message}")]
    TaskPanicked {
        /// The task's name.
        task: String,
        /// The panic payload's text.
        message: String,
    },
    /// The worker process running the task died on every attempt.
    #[error(
        "task {task} lost its worker process on all {attempts} attempt(s): {cause}; \
         raise max_retries if the crash is transient"
    )]
    WorkerCrashed {
        /// The task's name.
        task: String,
        /// How many times the task was started.
        attempts: u32,
        /// The signal name or exit code of the last crash.
        cause: String,
    },
    /// The task was cancelled with [`cancel`](crate::cancel) before it produced a result (or
    /// while it ran: whatever it returned is dropped). Cancelled tasks are never retried.
    #[error("task {task} was cancelled")]
    TaskCancelled {
        /// The task's name.
        task: String,
    },
    /// An actor method could not run, or was running, when its actor's process ended (killed,
    /// crashed with no restarts left, or dropped).
    #[error("actor {actor} died: {reason}; create a new actor (or set max_restarts)")]
    ActorDied {
        /// The actor's name.
        actor: String,
        /// Why its process ended.
        reason: String,
    },
    /// The object store has no room for an object even after evicting what it could.
    #[error(
        "object store full: {requested} bytes requested, capacity {capacity}, {used} in use; \
         drop object refs you no longer need or raise Config::store_capacity"
    )]
    StoreFull {
        /// Bytes asked for.
        requested: u64,
        /// The store's capacity in bytes.
        capacity: u64,
        /// Bytes in use when the request failed.
        used: u64,
    },
    /// No function is registered under this name in the worker program.
    #[error(
        "no remote function named `{name}` in the worker program; mark it #[rayfork::remote] \
         and link it into the worker binary"
    )]
    UnknownFunction {
        /// The name looked up.
        name: String,
    },
    /// A value could not be encoded or decoded (a type mismatch between caller and task, or a
    /// corrupt payload).
    #[error("could not {op} a value of type {type_name}: {message}")]
    Codec {
        /// `encode` or `decode`.
        op: String,
        /// The Rust type involved.
        type_name: String,
        /// The codec's message.
        message: String,
    },
    /// `get` or `wait` gave up after its timeout; the task keeps running (unless
    /// [`cancel_on_timeout`](crate::cancel_on_timeout) cancelled it).
    #[error(
        "timed out after {millis} ms waiting for an object (a timeout alone does not cancel \
         the task; see rayfork::cancel_on_timeout)"
    )]
    Timeout {
        /// The timeout that elapsed.
        millis: u64,
    },
    /// A task asked for more of a resource than the runtime has in total: it can never run.
    #[error(
        "task {task} needs {requested} {resource} but the runtime has {total} in total; \
         lower the request or raise the runtime's total"
    )]
    Unschedulable {
        /// The task's name.
        task: String,
        /// The resource's name (`CPU`, `GPU` or a custom one).
        resource: String,
        /// The amount asked for.
        requested: String,
        /// The runtime's total.
        total: String,
    },
    /// There is no runtime to talk to: none was started in this process, or it has shut down.
    #[error(
        "no rayfork runtime: none runs in this process (start one with \
         Runtime::builder().start(), and keep the Runtime alive while tasks are submitted)"
    )]
    NoRuntime,
    /// An object a call names is not in this runtime: its last reference was dropped (a ref
    /// kept outside its handle), or it belongs to another runtime of this process (a ref works
    /// only in the runtime that made it).
    #[error("object {id} is not in this runtime: {reason}")]
    ObjectNotFound {
        /// The object's id.
        id: String,
        /// Why, as far as the runtime can tell.
        reason: String,
    },
    /// No worker process could be started for a task, and none of the runtime's workers can
    /// take it: the OS refused to fork (the message says why, e.g. too many open files or
    /// processes). Raise the limit it names (`ulimit -n`, `ulimit -u`, the cgroup's
    /// `pids.max` or memory) or lower `num_cpus`/`max_workers`.
    #[error(
        "no worker process could be started for task {task}: {message}; raise the limit this \
         names (ulimit -n for open files, ulimit -u or pids.max for processes) or lower \
         num_cpus/max_workers"
    )]
    WorkerStartFailed {
        /// The task's name.
        task: String,
        /// What the OS said when the fork server tried.
        message: String,
    },
    /// This runtime can no longer run tasks (its fork server died, so no worker can be
    /// started): start a new runtime.
    #[error("this runtime can no longer run tasks ({reason}): start a new runtime")]
    RuntimeStopped {
        /// What stopped it.
        reason: String,
    },
    /// A call was given something it cannot work with (the message says what).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The object holds a writable [`Window`](crate::Window) and was already taken: a window
    /// is given out once (by one `get`, or as one task's argument), so that no two places
    /// can write it at once.
    #[error(
        "object {id:032x} holds a writable window and was already taken by {taker}; a window \
         is given out once: pass its ref to one task or get it once"
    )]
    WindowTaken {
        /// The object.
        id: u128,
        /// Who took it: `the driver` or `task <name>`.
        taker: String,
    },
    /// The task held a writable [`Window`](crate::Window) when its worker process died. What
    /// it had written is unspecified (part of the window may be old, part new), so it is not
    /// run again unless it was declared restartable (`options().restartable(true)`).
    #[error(
        "task {task} held a writable window when its worker died ({cause}); the window's \
         contents are unspecified and the task was not retried (declare it \
         `restartable(true)` if it can start over from any contents)"
    )]
    WindowLost {
        /// The task's name.
        task: String,
        /// The signal name or exit code of the crash.
        cause: String,
    },
    /// The runtime's scheduler thread panicked: a bug in rayfork, not in a task (tasks run in
    /// worker processes). The runtime has stopped its workers and its fork server; every
    /// call that was waiting and every later call on it returns this error. Start a new
    /// runtime, and please report the message.
    #[error(
        "the rayfork scheduler thread panicked (a bug in rayfork, please report it): {message}; \
         this runtime has stopped: start a new one"
    )]
    SchedulerPanicked {
        /// The panic's message.
        message: String,
    },
    /// Starting or running the runtime failed at the OS level.
    #[error("runtime error: {0}")]
    Runtime(String),
    /// A worker or the driver broke the wire protocol (a bug, or a corrupt message).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A zero-copy view could not be made (wrong length or alignment for the element type).
    #[error("invalid array view: {0}")]
    View(String),
}

/// A task's error value as it crossed the process boundary: its type's name and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorValue {
    /// `std::any::type_name` of the error type.
    pub type_name: String,
    /// The encoded value.
    pub bytes: Vec<u8>,
}

/// `Result<T, rayfork::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for errors that are the task's own (it returned `Err` or panicked).
    pub fn is_application_error(&self) -> bool {
        matches!(self, Error::TaskFailed { .. } | Error::TaskPanicked { .. })
    }

    /// The error value a task returned (`Err(e)`), if its type is `E`: tasks whose error type
    /// is `Serialize` send it along, and the caller matches on it here.
    ///
    /// ```
    /// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// enum Refused {
    ///     TooBig(u64),
    /// }
    ///
    /// impl std::fmt::Display for Refused {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         write!(f, "refused: {self:?}")
    ///     }
    /// }
    ///
    /// #[rayfork::remote]
    /// fn check(n: u64) -> Result<u64, Refused> {
    ///     if n > 10 { Err(Refused::TooBig(n)) } else { Ok(n) }
    /// }
    ///
    /// fn main() -> rayfork::Result<()> {
    ///     let rt = rayfork::Runtime::builder().num_cpus(1).start()?;
    ///     let e = rt.get(&check::remote(99)).unwrap_err();
    ///     assert_eq!(e.downcast::<Refused>(), Some(Refused::TooBig(99)));
    ///     assert_eq!(e.downcast::<String>(), None);
    ///     Ok(())
    /// }
    /// ```
    pub fn downcast<E: serde::de::DeserializeOwned>(&self) -> Option<E> {
        let Error::TaskFailed { value: Some(v), .. } = self else {
            return None;
        };
        if v.type_name != std::any::type_name::<E>() {
            return None;
        }
        crate::codec::decode_value(&v.bytes).ok()
    }

    /// True if the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::TaskCancelled { .. })
    }

    pub(crate) fn os(what: &str, err: impl std::fmt::Display) -> Error {
        Error::Runtime(format!("{what}: {err}"))
    }
}

impl From<rayfork_plasma::StoreError> for Error {
    fn from(e: rayfork_plasma::StoreError) -> Self {
        match e {
            rayfork_plasma::StoreError::StoreFull {
                requested,
                capacity,
                used,
            } => Error::StoreFull {
                requested,
                capacity,
                used,
            },
            other => Error::Runtime(format!("object store: {other}")),
        }
    }
}

/// The text of a panic's payload (a `&str` or a `String`, as `panic!` makes).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        (None, None) => "a panic with a payload that is not text".to_string(),
    }
}
