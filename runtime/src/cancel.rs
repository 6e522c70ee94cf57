//! Cancelling tasks: the public API ([`cancel`], [`CancelMode`], [`CancelOutcome`],
//! [`is_cancelled`], [`cancel_on_timeout`]).
//!
//! Owns what a caller asks for and what a task sees; the scheduler does the work (scheduler
//! rule 9) and the shared flags live in `shared_flags`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::object_ref::{self, ObjectRef};
use crate::{Error, Result};

/// How [`Runtime::cancel`](crate::Runtime::cancel) and [`cancel_with`] stop a task.
///
/// The default is cooperative and recursive: a running task sees [`is_cancelled`] turn true,
/// and its worker is killed (SIGKILL) and replaced if it is still running after the grace
/// period ([`Config::cancel_grace`](crate::Config::cancel_grace) unless [`grace`] sets one);
/// every task it submitted is cancelled the same way.
///
/// ```
/// use std::time::Duration;
/// use rayfork::CancelMode;
///
/// let now = CancelMode::default().force();                 // SIGKILL at once
/// let this_one = CancelMode::default().recursive(false);   // leave its children alone
/// let patient = CancelMode::default().grace(Duration::from_secs(2));
/// # let _ = (now, this_one, patient);
/// ```
///
/// [`grace`]: CancelMode::grace
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelMode {
    pub(crate) force: bool,
    pub(crate) recursive: bool,
    pub(crate) grace: Option<Duration>,
}

impl Default for CancelMode {
    fn default() -> Self {
        CancelMode {
            force: false,
            recursive: true,
            grace: None,
        }
    }
}

impl CancelMode {
    /// Kill a running task's worker at once (SIGKILL), without a cooperative request first.
    /// Every other task on that worker's stack is resubmitted, as after a crash.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    /// Also cancel every task the cancelled task submitted, transitively (default true, as Ray).
    pub fn recursive(mut self, yes: bool) -> Self {
        self.recursive = yes;
        self
    }

    /// How long a running task has, after [`is_cancelled`] turns true, before its worker is
    /// killed. Defaults to the runtime's [`Config::cancel_grace`](crate::Config::cancel_grace).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    pub(crate) fn grace_ms(&self) -> Option<u64> {
        self.grace
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
    }
}

/// What [`cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// The task had not finished: its ref resolves to [`Error::TaskCancelled`] (at once if it
    /// had not started, else as soon as it stops).
    Cancelled,
    /// The object already had its value or error (or was never a task's result, as a
    /// [`put`](crate::put) object); nothing was done and the value stays gettable.
    AlreadyFinished,
}

/// Cancels the task that produces `r` with the default [`CancelMode`] (cooperative, then
/// SIGKILL after the grace period; recursive). Works in the driver and inside tasks.
///
/// - A task that has not started (queued, or waiting for its arguments) is dropped and never
///   runs.
/// - A running task sees [`is_cancelled`] turn true; if it is still running after the grace
///   period, its worker process is killed and replaced. Whatever it returns, its ref resolves
///   to [`Error::TaskCancelled`]. A cancelled task is never retried.
/// - Every task it submitted is cancelled too.
///
/// `get` returns [`Error::TaskCancelled`] once the task has stopped.
///
/// ```no_run
/// use std::time::Duration;
///
/// #[rayfork::remote]
/// fn blocking_operation() {
///     std::thread::sleep(Duration::from_secs(10_000_000));
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let rt = rayfork::Runtime::builder().start()?;
///     let r = blocking_operation::remote();
///     rayfork::cancel(&r)?;
///     assert!(rt.get(&r).unwrap_err().is_cancelled());
///     Ok(())
/// }
/// ```
pub fn cancel<T>(r: &ObjectRef<T>) -> Result<CancelOutcome> {
    cancel_with(r, CancelMode::default())
}

/// [`cancel`] with an explicit [`CancelMode`].
pub fn cancel_with<T>(r: &ObjectRef<T>, mode: CancelMode) -> Result<CancelOutcome> {
    r.backend()?.cancel(r.raw_id(), &mode)
}

/// True once the task calling it has been cancelled: poll it in long loops and return early.
///
/// One atomic load of a flag in shared memory (cheap enough for an inner loop). Always false
/// in the driver and outside tasks. A frame nested on the same worker (a task run while this
/// one waits in `get`) has its own flag.
///
/// ```no_run
/// #[rayfork::remote]
/// fn count_up(limit: u64) -> u64 {
///     let mut n = 0;
///     while n < limit && !rayfork::is_cancelled() {
///         n += 1;
///     }
///     n // ignored if cancelled: the ref resolves to Error::TaskCancelled
/// }
/// # fn main() {}
/// ```
pub fn is_cancelled() -> bool {
    crate::client::process_backend().is_some_and(|b| b.is_cancelled())
}

/// Waits for `r` at most `timeout`; on [`Error::Timeout`] cancels the task (default
/// [`CancelMode`]) and returns the timeout error.
///
/// Plain [`get_timeout`](crate::get_timeout) never cancels: the task goes on and a later `get`
/// can still fetch its value. Use this helper when a late result is worthless.
///
/// ```no_run
/// # use std::time::Duration;
/// #[rayfork::remote]
/// fn slow() -> u32 { std::thread::sleep(Duration::from_secs(60)); 1 }
///
/// fn main() -> rayfork::Result<()> {
///     let _rt = rayfork::Runtime::builder().start()?;
///     let r = slow::remote();
///     let e = rayfork::cancel_on_timeout(&r, Duration::from_millis(10)).unwrap_err();
///     assert!(matches!(e, rayfork::Error::Timeout { .. }));
///     assert!(rayfork::get(&r).unwrap_err().is_cancelled());
///     Ok(())
/// }
/// ```
pub fn cancel_on_timeout<T: DeserializeOwned>(r: &ObjectRef<T>, timeout: Duration) -> Result<T> {
    match object_ref::get_timeout(r, timeout) {
        Err(e @ Error::Timeout { .. }) => {
            // Whether it was still running or finished just now, the caller gave up on it.
            let _ = cancel(r);
            Err(e)
        }
        other => other,
    }
}
