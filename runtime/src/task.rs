//! Submitting tasks: per-call options, argument conversion, and the glue the `#[remote]` macro
//! expands to (re-exported in `__private`).
//!
//! Owns how a call becomes a `TaskSpec` in the caller and how a `Run` becomes a call in the
//! worker. It must not talk to the scheduler except through `Backend`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{self, BackendRef};
use crate::object_ref::ObjectRef;
use crate::protocol::{Arg, Outcome, Payload, TaskOpts, TaskSpec};
use crate::registry::Invocation;
use crate::{Error, Result, codec};

/// Options of one task call: `f::options().max_retries(1).num_cpus(0.5).remote(..)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    pub(crate) opts: TaskOpts,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            opts: TaskOpts {
                name: None,
                num_cpus: 1.0,
                max_retries: 3,
                retry_exceptions: false,
                retry_if_contains: Vec::new(),
            },
        }
    }
}

impl TaskOptions {
    /// How many times a task whose worker process dies is retried (default 3, as Ray; 0
    /// disables retries).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.opts.max_retries = n;
        self
    }

    /// CPUs the task holds while it runs (default 1; fractions let small tasks share a CPU).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.opts.num_cpus = n;
        self
    }

    /// The task's name in errors and traces (default: the function's path).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// Also retry (within `max_retries`) when the task returns `Err` or panics: every such
    /// error with `true`. See [`retry_exceptions_matching`](Self::retry_exceptions_matching) to
    /// retry only some.
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.opts.retry_exceptions = yes;
        if !yes {
            self.opts.retry_if_contains.clear();
        }
        self
    }

    /// Retry (within `max_retries`) an `Err` or a panic only when its message (the `Err`'s
    /// `Display` text, or the panic payload) contains one of `patterns`; other errors fail at
    /// once.
    ///
    /// The predicate is a list of substrings rather than a closure because it travels with the
    /// task: a task submitted from inside another task is decided by the scheduler in the
    /// driver, which cannot call code from a worker's address space. The patterns are matched
    /// case-sensitively; an empty list retries nothing.
    ///
    /// ```no_run
    /// #[rayfork::remote]
    /// fn fetch(url: String) -> Result<String, String> {
    ///     Err(format!("connection reset while fetching {url}"))
    /// }
    ///
    /// fn main() -> rayfork::Result<()> {
    ///     let _rt = rayfork::Runtime::builder().start()?;
    ///     let r = fetch::options()
    ///         .max_retries(2)
    ///         .retry_exceptions_matching(["connection reset", "timed out"])
    ///         .remote("http://example.com".to_string());
    ///     assert!(rayfork::get(&r).is_err()); // tried 3 times
    ///     Ok(())
    /// }
    /// ```
    pub fn retry_exceptions_matching<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        self.opts.retry_exceptions = !patterns.is_empty();
        self.opts.retry_if_contains = patterns;
        self
    }
}

/// True if a task with these options retries after `e` (attempts permitting): application
/// errors only, and only those `retry_exceptions` selects.
pub(crate) fn retries_error(opts: &TaskOpts, e: &Error) -> bool {
    let message = match e {
        Error::TaskFailed { message, .. } | Error::TaskPanicked { message, .. } => message,
        _ => return false,
    };
    opts.retry_exceptions
        && (opts.retry_if_contains.is_empty()
            || opts
                .retry_if_contains
                .iter()
                .any(|p| message.contains(p.as_str())))
}

/// A value, or a ref to one, accepted where a task takes a `T`.
///
/// Implemented for `T` itself (sent by value, or through the store when large), and for
/// `ObjectRef<T>` and `&ObjectRef<T>` (the task waits for the object and receives its value).
pub trait IntoArg<T> {
    #[doc(hidden)]
    fn into_arg(self, cx: &SubmitCx) -> Result<ArgSpec>;
}

/// The runtime a call is being submitted to (opaque).
#[doc(hidden)]
#[derive(Debug)]
pub struct SubmitCx {
    pub(crate) b: BackendRef,
}

/// An argument ready to submit (opaque).
#[doc(hidden)]
#[derive(Debug)]
pub struct ArgSpec(pub(crate) Arg);

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self, cx: &SubmitCx) -> Result<ArgSpec> {
        let b = &cx.b;
        let (bytes, contained) = client::encode_with_refs(b, &self)?;
        if bytes.len() <= b.inline_max() {
            return Ok(ArgSpec(Arg::Value { bytes, contained }));
        }
        // Large: through the store, as Ray does.
        let id = b.new_id();
        crate::object_ref::store_bytes(b, id, &bytes, contained)?;
        // The store object's reference moves to the task.
        Ok(ArgSpec(Arg::Ref(id)))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self, cx: &SubmitCx) -> Result<ArgSpec> {
        IntoArg::<T>::into_arg(&self, cx)
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self, cx: &SubmitCx) -> Result<ArgSpec> {
        let b = &cx.b;
        self.backend()?;
        // The task's own reference (rule 4 in protocol.rs).
        b.ref_op(self.raw_id(), 1);
        Ok(ArgSpec(Arg::Ref(self.raw_id())))
    }
}

/// Submits a call of the registered function `func`; the glue behind `f::remote`.
#[doc(hidden)]
pub fn submit<R>(
    func: &'static str,
    options: &TaskOptions,
    args: impl FnOnce(&SubmitCx) -> Result<Vec<ArgSpec>>,
) -> ObjectRef<R> {
    let b = match client::current() {
        Ok(b) => b,
        Err(e) => return ObjectRef::failed(e),
    };
    let cx = SubmitCx { b };
    let args = match args(&cx) {
        Ok(a) => a,
        Err(e) => return ObjectRef::failed(e),
    };
    let ret = cx.b.new_id();
    let spec = TaskSpec {
        ret,
        func: func.to_string(),
        args: args.into_iter().map(|a| a.0).collect(),
        opts: options.opts.clone(),
    };
    match cx.b.submit(spec) {
        Ok(()) => ObjectRef::adopt(ret, cx.b),
        Err(e) => ObjectRef::failed(e),
    }
}

/// Decodes argument `i` of a call (in the worker).
#[doc(hidden)]
pub fn decode_arg<T: DeserializeOwned>(inv: &Invocation<'_>, i: usize) -> Result<T> {
    let bytes = inv
        .args
        .get(i)
        .ok_or_else(|| Error::Protocol(format!("task {} got too few arguments", inv.name)))?;
    codec::decode_value(bytes)
}

/// Checks the argument count of a call (in the worker).
#[doc(hidden)]
pub fn check_arity(inv: &Invocation<'_>, n: usize) -> Result<()> {
    if inv.args.len() != n {
        return Err(Error::Protocol(format!(
            "task {} takes {n} arguments, got {}",
            inv.name,
            inv.args.len()
        )));
    }
    Ok(())
}

/// Encodes a task's return value (in the worker).
#[doc(hidden)]
pub fn finish<T: Serialize>(_inv: &Invocation<'_>, value: T) -> Outcome {
    let b = match client::current() {
        Ok(b) => b,
        Err(e) => return Outcome::Err(e),
    };
    match client::encode_with_refs(&b, &value) {
        Ok((bytes, contained)) => Outcome::Ok {
            payload: Payload::Inline(bytes),
            contained,
        },
        Err(e) => Outcome::Err(e),
    }
}

/// Encodes a fallible task's result: `Err(e)` becomes `Error::TaskFailed` with `e`'s text.
#[doc(hidden)]
pub fn finish_result<T: Serialize, E: std::fmt::Display>(
    inv: &Invocation<'_>,
    r: std::result::Result<T, E>,
) -> Outcome {
    match r {
        Ok(v) => finish(inv, v),
        Err(e) => Outcome::Err(Error::TaskFailed {
            task: inv.name.to_string(),
            message: e.to_string(),
        }),
    }
}

/// Turns an argument error into the task's outcome.
#[doc(hidden)]
pub fn arg_error(e: Error) -> Outcome {
    Outcome::Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(message: &str) -> Error {
        Error::TaskFailed {
            task: "t".into(),
            message: message.into(),
        }
    }

    #[test]
    fn retry_exceptions_selects_errors() {
        let none = TaskOptions::default().opts;
        let all = TaskOptions::default().retry_exceptions(true).opts;
        let some = TaskOptions::default()
            .retry_exceptions_matching(["reset", "busy"])
            .opts;
        let crash = Error::WorkerCrashed {
            task: "t".into(),
            attempts: 1,
            cause: "reset".into(),
        };
        assert!(!retries_error(&none, &failed("reset")));
        assert!(retries_error(&all, &failed("anything")));
        assert!(retries_error(&some, &failed("connection reset by peer")));
        assert!(!retries_error(&some, &failed("bad input")));
        // Only application errors: never a crash (rule 4) or a cancel (rule 6).
        assert!(!retries_error(&all, &crash));
        assert!(!retries_error(
            &all,
            &Error::TaskCancelled { task: "t".into() }
        ));
        let empty = TaskOptions::default().retry_exceptions_matching(Vec::<String>::new());
        assert!(!retries_error(&empty.opts, &failed("reset")));
    }
}
