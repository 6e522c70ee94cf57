//! rayfork: Ray-style task parallelism for Rust on one machine.
//!
//! A driver program marks functions `#[remote]`, submits them as tasks and gets
//! [`ObjectRef`]s back. Tasks run in worker processes forked from a fork server; every process
//! maps the same shared-memory object store, so [`Array`]s move between processes without a
//! copy. A task whose worker process dies is retried; a task can be cancelled, and one that
//! does not stop is killed.
//!
//! ```no_run
//! use rayfork::{remote, Runtime};
//!
//! #[remote]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> rayfork::Result<()> {
//!     let rt = Runtime::builder().num_cpus(2).start()?;
//!     let refs: Vec<_> = (0..4).map(square::remote).collect();
//!     assert_eq!(rt.get_all(&refs)?, vec![0, 1, 4, 9]);
//!     Ok(())
//! }
//! ```
//!
//! # Tasks
//! `#[remote]` on a free function whose arguments and result are serde types generates
//! `f::remote(args..) -> ObjectRef<R>` and `f::options()...remote(args..)`. A function that
//! returns `Result<T, E>` gives an `ObjectRef<T>`, and `Err(e)` comes back from `get` as
//! [`Error::TaskFailed`] with `e`'s text; a panic as [`Error::TaskPanicked`]. The worker lives on.
//!
//! # Object refs
//! An [`ObjectRef<T>`] can be passed to another task where a `T` is expected: the task waits
//! for it and receives the value, and the driver never fetches it. [`get`], [`get_all`],
//! [`wait`] and [`put`] work in the driver and inside tasks. Objects are freed when the last
//! ref (in any process) is dropped. [`as_completed`] yields results in the order their tasks
//! finish, [`ObjectRef::is_ready`] polls one, [`get_all_timeout`] bounds a wait. A submitted
//! task runs whether or not its ref is kept (as
//! in Ray, `f::remote(..)` as a statement runs `f`); its result, if nobody holds it, is freed
//! when it ends. [`cancel`] is the way to not run a task.
//!
//! # Arrays
//! [`Array<T>`] is a sealed array of plain-old-data elements in shared memory; it derefs to
//! `&[T]` in every process and passes to tasks by id. [`ArrayMut<T>`] is an unsealed one that
//! the driver or a task fills in place and seals.
//!
//! # Windows: sorting in place across processes
//! [`ArrayMut::into_window`] turns an unsealed array into a [`Window<T>`]: exclusive write
//! access to a range of it. Split a window ([`Window::split_at`]), move the parts into tasks
//! (each writes its part in place, in its own process), take them back from the tasks'
//! results, [`join`](Window::join) them and [`seal`](Window::seal) the whole: no element is
//! copied. The rules that keep a window the only writer of its range:
//!
//! - a window is not `Clone`; splitting and joining consume what they are given;
//! - it leaves a process only by being moved: as an argument given by value, or in a task's
//!   result (`put` and other serializers refuse it);
//! - an object whose value holds a window is given out once: a second `get` (or a second
//!   task given the ref) gets [`Error::WindowTaken`];
//! - a task that dies while it holds a window is not retried (its ref gets
//!   [`Error::WindowLost`]; what it wrote is unspecified) unless declared
//!   [`restartable`](TaskOptions::restartable); the window is lost, so the array can no longer
//!   be sealed, and its memory is freed when the last window goes.
//!
//! ```no_run
//! use rayfork::{ArrayMut, Window};
//!
//! /// Sorts a window in place: partition, two nested tasks, join. Nothing is copied.
//! #[rayfork::remote]
//! fn sort(mut w: Window<i64>) -> rayfork::Result<Window<i64>> {
//!     if w.len() <= 100_000 {
//!         w.sort_unstable();
//!         return Ok(w);
//!     }
//!     // [< pivot | == pivot | > pivot]: the middle is in place, both sides are shorter.
//!     let pivot = w[w.len() / 2];
//!     let mut lt = 0;
//!     for i in 0..w.len() {
//!         if w[i] < pivot {
//!             w.swap(i, lt);
//!             lt += 1;
//!         }
//!     }
//!     let mut eq = lt;
//!     for i in lt..w.len() {
//!         if w[i] == pivot {
//!             w.swap(i, eq);
//!             eq += 1;
//!         }
//!     }
//!     let (left, rest) = w.split_at(lt);
//!     let (mid, right) = rest.split_at(eq - lt);
//!     let (l, r) = (sort::remote(left), sort::remote(right));
//!     let (l, r) = (rayfork::get(&l)?, rayfork::get(&r)?);
//!     l.join(mid).and_then(|w| w.join(r)).map_err(|e| e.to_error())
//! }
//!
//! fn main() -> rayfork::Result<()> {
//!     let rt = rayfork::Runtime::builder().start()?;
//!     let keys = ArrayMut::from_fn(1_000_000, |i| (i as i64 * 7919) % 1_000_003)?;
//!     let sorted = rt.get(&sort::remote(keys.into_window()?))?.seal()?;
//!     assert!(sorted.windows(2).all(|p| p[0] <= p[1]));
//!     Ok(())
//! }
//! ```
//!
//! # Nested tasks
//! A task may submit tasks and `get` their results. While it waits, its CPU goes back to the
//! scheduler, which runs queued tasks on idle workers, forks more workers (up to
//! [`Config::max_workers`]), or runs on the blocked worker, nested on its stack, a task it
//! waits for (never one that could wait for it): no deadlock.
//!
//! # Observability
//! [`Runtime::timeline`] writes a Chrome trace (open it in ui.perfetto.dev): a bar per run of
//! each task, on a track per worker process and stack depth, with its attempt and outcome.
//! [`Runtime::summary`] counts tasks by function and state (`ray summary tasks`);
//! [`Runtime::stats`] gives the store's accounting and the worker counters.
//!
//! # Pipelining
//! When every worker is busy, the scheduler sends a few more small tasks to each (up to 4) to
//! start as soon as the running one ends, with no round trip in between: a worker runs a stream
//! of tiny tasks back to back. A queued task has not started and holds no CPU; the scheduler
//! takes it back (one atomic swap in shared memory, no message) when another worker goes idle,
//! when the running task blocks in `get` (it may be waiting for that very task), or when it is
//! cancelled; if the worker dies it runs elsewhere without using a retry. Tasks with GPUs,
//! custom resources, `max_calls` or streaming are never queued this way. Actor calls are
//! queued on the actor's process the same way, in order. [`RuntimeStats`] counts them;
//! [`Config::pipeline_depth`] sets how many (0 turns it off).
//!
//! # Multiple returns
//! `#[remote(num_returns = 3)]` on a function returning a 3-tuple (or a `Result` of one) makes
//! `f::remote(..)` return three refs, one per element; each resolves on its own and can be passed
//! to other tasks alone. Without `num_returns` a tuple is one object. If the task fails, every
//! ref returns the error.
//!
//! ```no_run
//! #[rayfork::remote(num_returns = 2)]
//! fn header_and_body(n: usize) -> (String, Vec<u64>) {
//!     (format!("{n} numbers"), (0..n as u64).collect())
//! }
//!
//! fn main() -> rayfork::Result<()> {
//!     let rt = rayfork::Runtime::builder().start()?;
//!     let (header, body) = header_and_body::remote(1_000);
//!     assert_eq!(rt.get(&header)?, "1000 numbers"); // the body stays in the store
//!     drop(body);
//!     Ok(())
//! }
//! ```
//!
//! # Resources
//! A task holds `num_cpus` (default 1, fractions allowed), `num_gpus` (default 0) and custom
//! resources (`resources = [("db", 1.0)]`) while it runs; the runtime's totals come from
//! [`Config::num_cpus`], [`Config::num_gpus`] and [`Config::resource`]. A task starts only when
//! all it asks for is free; a task blocked in `get` gives its CPUs back but keeps its GPUs and
//! custom resources (as in Ray). A request larger than a total fails at once with
//! [`Error::Unschedulable`] naming the resource. Every attribute option can be overridden per
//! call: `f::options().num_cpus(0.5).resource("db", 1.0).max_calls(1).remote(..)`.
//!
//! `max_calls = n` retires a worker process after it ran `n` such tasks; `max_calls = 1` runs
//! every call in a fresh process (for leaky or untrusted code).
//!
//! # Map over chunks
//! [`map`] submits one task per chunk of items (Flyte's map task with chunking: tasks big enough
//! to be worth their overhead); [`map_each`] runs one task per item with a bounded number in
//! flight, fetching results in batches as they finish (so the store never fills with unfetched
//! results). Both take the generated `f::remote` and keep the items' order.
//!
//! # Actors
//! `#[rayfork::actor]` on an `impl` block with `fn new(..) -> Self`: `T::remote(args..)` starts
//! a worker process of the actor's own and returns an [`ActorHandle<T>`]; each `&self` or
//! `&mut self` method becomes a method of the handle (through the generated trait `TActor`)
//! that returns an `ObjectRef`. Calls run one at a time in submission order; handles pass to
//! tasks; `T::options().max_restarts(n)` restarts a crashed actor by re-running `new`
//! (`max_task_retries(n)` runs the call that was running again there);
//! [`ActorHandle::kill`] ends it; the process ends when no handle is left. See
//! [`ActorHandle`] and `examples/monte_carlo_pi.rs`.
//!
//! # Generators
//! `#[remote(streaming)]` on a function returning `impl Iterator<Item = T>`: `f::remote(..)`
//! gives an [`ObjectRefGenerator<T>`] that produces a ref per item as soon as the task yields
//! it. At most `f::options().backpressure(n)` items (default 16) wait untaken. A crashed
//! generator is retried like any task and its new attempt's first items, which the caller
//! already has, are skipped; a failure with no retry left gives the items yielded before it,
//! then the error. See
//! `examples/generators.rs`.
//!
//! # Retries
//! When a worker process dies (a signal, `abort`, `exit`, the OOM killer), its task is retried
//! on another worker up to `max_retries` times (default 3); then `get` returns
//! [`Error::WorkerCrashed`] with the signal or exit code. Application errors (`Err` or a panic)
//! are retried only with [`TaskOptions::retry_exceptions`] (all of them) or
//! [`TaskOptions::retry_exceptions_matching`] (those whose message contains a pattern).
//! A retry needs the task's arguments, so they are kept until the task ends; on its last
//! attempt (with `max_retries(0)`, on the first) the task holds them only through its own
//! handles, and dropping an argument (say an `Array` it has consumed) frees it at once.
//!
//! # Cancellation
//! [`cancel`] (or [`Runtime::cancel`] with a [`CancelMode`]) stops a task at the OS level. A
//! task that has not started is removed and never runs. A running task first sees
//! [`is_cancelled`] turn true (one atomic load of a flag in shared memory, cheap enough for an
//! inner loop); if it still runs after the grace period ([`Config::cancel_grace`], default
//! 100 ms), or at once with [`CancelMode::force`], its worker is killed with SIGKILL and
//! replaced, so a task stuck in a system call or a native loop stops too. Either way `get`
//! returns [`Error::TaskCancelled`] once the task has stopped; a cancelled task is never
//! retried, and the tasks it submitted are cancelled too (unless
//! [`CancelMode::recursive`]`(false)`). Other tasks that ran nested on a killed worker's stack
//! are resubmitted without using up a retry. Cancelling a finished task does nothing and
//! returns [`CancelOutcome::AlreadyFinished`]. A [`get_timeout`] that times out does not
//! cancel; [`cancel_on_timeout`] does.
//!
//! ```no_run
//! #[rayfork::remote]
//! fn search(limit: u64) -> Option<u64> {
//!     (0..limit).take_while(|_| !rayfork::is_cancelled()).find(|n| n % 1_000_003 == 999)
//! }
//!
//! fn main() -> rayfork::Result<()> {
//!     let rt = rayfork::Runtime::builder().start()?;
//!     let r = search::remote(u64::MAX);
//!     assert_eq!(rayfork::cancel(&r)?, rayfork::CancelOutcome::Cancelled);
//!     assert!(rt.get(&r).unwrap_err().is_cancelled());
//!     Ok(())
//! }
//! ```
//!
//! # Processes
//! `Runtime::start` exec's the driver's own binary as a single-threaded fork server (caught
//! before `main` by a hook in this crate); workers are forked from it. If the driver dies, even
//! by SIGKILL, the fork server and the workers die with it; dropping the [`Runtime`] kills and
//! reaps them all.
//!
//! Workers never run the driver's `main`. What they have: the binary's code and statics as
//! initialized (not as `main` changed them), the environment the driver had when it started
//! the runtime, std's defaults (SIGPIPE ignored: a write to a closed pipe is an error), the
//! functions registered with [`worker_init!`] (run once per worker, before its first task:
//! set up a logger or a subscriber there), and `RAYON_NUM_THREADS`/`OMP_NUM_THREADS` set to
//! the task's CPUs unless the driver set them. What they do not have: anything `main` did
//! (loggers, thread pools, open files, `set_var`), the driver's threads. A worker that ends
//! normally (retired after `max_calls`, or idle when the runtime stops) exits as a program does:
//! stdout is flushed and `atexit` handlers run (coverage data is written).

mod actor;
mod array;
mod cancel;
mod client;
mod codec;
mod config;
mod error;
mod fork_server;
mod generator;
mod idmap;
mod ipc;
#[cfg(doctest)]
mod macro_checks;
mod map;
mod object_ref;
mod protocol;
mod registry;
mod runtime;
mod scheduler;
mod shared_flags;
mod stats;
mod task;
mod timeline;
mod window;
mod worker_loop;

/// Worker processes: [`main`](crate::worker::main) is the entry point of an external worker
/// program (see [`Config::worker_program`](crate::Config::worker_program)).
pub mod worker {
    pub use crate::fork_server::worker_program_main as main;
}

pub use actor::{ActorClass, ActorHandle, ActorOptions, get_actor};
pub use array::{Array, ArrayMut};
pub use cancel::{CancelMode, CancelOutcome, cancel, cancel_on_timeout, cancel_with, is_cancelled};
pub use config::Config;
pub use error::{Error, ErrorValue, Result};
pub use generator::ObjectRefGenerator;
#[allow(deprecated)]
pub use map::{map, map_batched, map_chunks, map_each};
pub use object_ref::{
    AsCompleted, ObjectRef, ReadyPending, as_completed, get, get_all, get_all_timeout, get_timeout,
    put, wait,
};
pub use rayfork_macros::{actor, remote};
pub use rayfork_plasma::{ObjectId, Pod};
pub use runtime::Runtime;
pub use stats::RuntimeStats;
pub use task::{IntoArg, TaskContext, TaskOptions, context, gpu_ids};
pub use timeline::{FunctionSummary, TaskSummary};
pub use window::{JoinError, Window};

/// Registers a function that every worker process runs once when it starts, before its
/// first task: what the driver set up in `main` (a logger, a tracing subscriber, a thread pool
/// size) does not exist in workers, which never run `main`.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// static SET_UP: AtomicBool = AtomicBool::new(false);
///
/// fn setup() {
///     // e.g. env_logger::init(), or a tracing subscriber
///     SET_UP.store(true, Ordering::Relaxed);
/// }
/// rayfork::worker_init!(setup);
///
/// #[rayfork::remote]
/// fn was_set_up() -> bool {
///     SET_UP.load(Ordering::Relaxed)
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let rt = rayfork::Runtime::builder().num_cpus(1).start()?;
///     assert!(rt.get(&was_set_up::remote())?);
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! worker_init {
    ($f:path) => {
        const _: () = {
            #[$crate::__private::linkme::distributed_slice($crate::__private::WORKER_INITS)]
            #[linkme(crate = $crate::__private::linkme)]
            static INIT: fn() = $f;
        };
    };
}

/// Items the `#[remote]` macro expands to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::__task_option_setters as task_option_setters;
    pub use crate::actor::{
        __store as actor_store, __store_result as actor_store_result, __with_state as actor_state,
    };
    pub use crate::generator::{finish_stream, submit_stream};
    pub use crate::protocol::Outcome;
    pub use crate::registry::{Invocation, REMOTE_FNS, RemoteFn, WORKER_INITS};
    pub use crate::runtime::inject_scheduler_panic;
    pub use crate::task::{
        ArgSpec, Returns, SubmitCx, arg_error, check_arity, decode_arg, encode_part, finish,
        finish_many, finish_result, submit, submit_many,
    };
    pub use crate::task::{ErrDisplay, ErrSerialize, ErrWrap};
    pub use crate::worker_loop::hostile;
    pub use linkme;
}
