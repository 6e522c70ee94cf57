//! Submitting tasks: per-call options (their setters, written once in
//! `__task_option_setters`, are also those of every `#[remote]` function's `Options`), argument
//! conversion, and the glue the `#[remote]` macro expands to (re-exported in `__private`).
//!
//! Owns how a call becomes a `TaskSpec` in the caller and how a `Run` becomes a call in the
//! worker. It must not talk to the scheduler except through `Backend`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{self, BackendRef};
use crate::error::ErrorValue;
use crate::object_ref::ObjectRef;
use crate::protocol::{ActorCall, Arg, Id, Outcome, Payload, ReturnValue, TaskOpts, TaskSpec};
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
                num_gpus: 0.0,
                resources: Vec::new(),
                max_calls: 0,
                retry_if_contains: Vec::new(),
                streaming: None,
                restartable: false,
                task_events: true,
            },
        }
    }
}

impl TaskOptions {
    crate::__task_option_setters!(impl);

    #[doc(hidden)]
    pub fn __streaming(mut self) -> Self {
        self.opts.streaming = Some(crate::config::DEFAULT_BACKPRESSURE);
        self
    }
}

/// The setters of [`TaskOptions`], written once: `__task_option_setters!(impl)` defines them on
/// `TaskOptions` (just above), and `__task_option_setters!(forward)` (as
/// `__private::task_option_setters`) in the `impl` of the options type that `#[remote]`
/// generates for each function (a tuple struct around a `TaskOptions`) defines each as
/// `Self(self.0.setter(..))`, with a doc that points here. A new option is a new item in the
/// list below and nothing else.
///
/// Each item is a method written as usual, taking `mut self` and returning `Self`, in the forms
/// the matcher knows: generic parameters as `<A: Bound, ..>`, a `where` clause as
/// `where A: Bound, ..`, each argument a plain name. An optional `#[forward_doc = ".."]` after
/// the docs is added to the forwarder's doc.
#[doc(hidden)]
#[macro_export]
macro_rules! __task_option_setters {
    ($mode:tt) => {
        $crate::__task_option_setters! { @each $mode
            /// For a generator (`#[remote(streaming)]`): at most `n` yielded items wait for the
            /// caller to take them; the generator blocks (giving its CPU back) until the caller
            /// catches up (default 16; 0: no limit). Ignored for other tasks.
            #[forward_doc = " (generators only)"]
            pub fn backpressure(mut self, n: u32) -> Self {
                if self.opts.streaming.is_some() {
                    self.opts.streaming = Some(n);
                }
                self
            }

            /// How many times a task whose worker process dies is retried (default 3, as Ray; 0
            /// disables retries).
            pub fn max_retries(mut self, n: u32) -> Self {
                self.opts.max_retries = n;
                self
            }

            /// Declares that the task may run again after its worker died while it held a
            /// writable [`Window`](crate::Window) (default `false`: such a task fails with
            /// [`Error::WindowLost`](crate::Error::WindowLost), since what it wrote is
            /// unspecified). Declare it only for a task that gives no window to another task
            /// and computes its result from any contents of its windows; it is then retried
            /// within `max_retries`.
            pub fn restartable(mut self, yes: bool) -> Self {
                self.opts.restartable = yes;
                self
            }

            /// Records the task's runs in the timeline and counts it in the summary (default
            /// `true`, as Ray's `enable_task_events`). `false` leaves no trace of it there, and
            /// saves the recording's cost for tiny tasks.
            pub fn enable_task_events(mut self, yes: bool) -> Self {
                self.opts.task_events = yes;
                self
            }

            /// CPUs the task holds while it runs (default 1; fractions let small tasks share a
            /// CPU).
            pub fn num_cpus(mut self, n: f64) -> Self {
                self.opts.num_cpus = n;
                self
            }

            /// The task's name in errors and traces (default: the function's path).
            pub fn name(mut self, name: impl Into<String>) -> Self {
                self.opts.name = Some(name.into());
                self
            }

            /// Also retry (within `max_retries`) when the task returns `Err` or panics: every
            /// such error with `true`. See
            /// [`retry_exceptions_matching`](Self::retry_exceptions_matching) to retry only
            /// some.
            pub fn retry_exceptions(mut self, yes: bool) -> Self {
                self.opts.retry_exceptions = yes;
                if !yes {
                    self.opts.retry_if_contains.clear();
                }
                self
            }

            /// GPUs the task holds while it runs (default 0; fractions allowed). Unlike CPUs
            /// they stay held while the task is blocked in `get`, as in Ray. The runtime's total
            /// is [`Config::num_gpus`](crate::Config::num_gpus). A fraction takes a share of one
            /// device, one or more take whole devices; the task learns which from
            /// [`gpu_ids`](crate::gpu_ids).
            pub fn num_gpus(mut self, n: f64) -> Self {
                self.opts.num_gpus = n;
                self
            }

            /// `amount` of the custom resource `name` that the task holds while it runs
            /// (replaces an earlier amount of the same name). Held while blocked in `get`, like
            /// GPUs. The runtime's totals are set with
            /// [`Config::resource`](crate::Config::resource).
            pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
                let name = name.into();
                self.opts.resources.retain(|(n, _)| *n != name);
                self.opts.resources.push((name, amount));
                self
            }

            /// Several custom resources at once: `resources([("db", 1.0), ("disk", 0.5)])`.
            pub fn resources<S: Into<String>>(
                mut self,
                list: impl IntoIterator<Item = (S, f64)>,
            ) -> Self {
                for (name, amount) in list {
                    self = self.resource(name, amount);
                }
                self
            }

            /// Retire the worker process after it has run `n` tasks with this option (default 0:
            /// never); `max_calls(1)` runs every call in a fresh process. For leaky or untrusted
            /// code.
            pub fn max_calls(mut self, n: u32) -> Self {
                self.opts.max_calls = n;
                self
            }

            /// Retry (within `max_retries`) an `Err` or a panic only when its message (the
            /// `Err`'s `Display` text, or the panic payload) contains one of `patterns`, or
            /// the `Err`'s type is one of them (`std::any::type_name::<E>()`, for an error type
            /// that is `Serialize`); other errors fail at once.
            ///
            /// The predicate is a list of substrings rather than a closure because it travels
            /// with the task: a task submitted from inside another task is decided by the
            /// scheduler in the driver, which cannot call code from a worker's address space.
            /// The patterns are matched case-sensitively; an empty list retries nothing.
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
    };
    (@each $mode:tt $(
        $(#[doc = $doc:literal])*
        $(#[forward_doc = $note:literal])?
        pub fn $name:ident $(<$($gen:ident $(: $gen_bound:path)?),* $(,)?>)?
            (mut $this:tt $(, $arg:ident : $arg_ty:ty)* $(,)?) -> Self
            $(where $($wc_ty:ty : $wc_bound:path),* $(,)?)?
            $body:block
    )*) => {
        $(
            $crate::__task_option_setters! { @one $mode
                [$(#[doc = $doc])*] [$($note)?] $name
                [$(<$($gen $(: $gen_bound)?),*>)?] [$this] [$($arg: $arg_ty),*]
                [$(where $($wc_ty: $wc_bound),*)?] $body
            }
        )*
    };
    (@one impl [$($doc:tt)*] [$($note:literal)?] $name:ident
        [$($generics:tt)*] [$this:tt] [$($arg:ident: $arg_ty:ty),*] [$($where:tt)*] $body:block
    ) => {
        $($doc)*
        pub fn $name $($generics)* (mut $this, $($arg: $arg_ty),*) -> Self $($where)* $body
    };
    (@one forward [$($doc:tt)*] [$($note:literal)?] $name:ident
        [$($generics:tt)*] [$this:tt] [$($arg:ident: $arg_ty:ty),*] [$($where:tt)*] $body:block
    ) => {
        #[doc = concat!("See [`rayfork::TaskOptions::", stringify!($name), "`]", $($note,)? ".")]
        pub fn $name $($generics)* ($this, $($arg: $arg_ty),*) -> Self $($where)* {
            Self($this.0.$name($($arg),*))
        }
    };
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
pub struct ArgSpec {
    arg: Option<Arg>,
    b: BackendRef,
}

impl ArgSpec {
    fn new(arg: Arg, b: &BackendRef) -> ArgSpec {
        ArgSpec {
            arg: Some(arg),
            b: b.clone(),
        }
    }

    /// The argument, for the task spec: its references now belong to the task.
    fn into_arg(mut self) -> Option<Arg> {
        self.arg.take()
    }
}

impl Drop for ArgSpec {
    /// An argument that never reached a task (a later one failed) gives its references back.
    fn drop(&mut self) {
        let ids = match self.arg.take() {
            Some(Arg::Ref(id)) => vec![id],
            Some(Arg::Value { contained, .. }) => contained,
            None => return,
        };
        for id in ids {
            self.b.ref_op(id, -1);
        }
    }
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self, cx: &SubmitCx) -> Result<ArgSpec> {
        let b = &cx.b;
        let (bytes, contained) = client::encode_moved_with_refs(b, &self)?;
        if bytes.len() <= b.inline_max() {
            return Ok(ArgSpec::new(Arg::Value { bytes, contained }, b));
        }
        // Large: through the store, as Ray does.
        let id = b.new_id();
        crate::object_ref::store_bytes(b, id, &bytes, contained)?;
        // The store object's reference moves to the task.
        Ok(ArgSpec::new(Arg::Ref(id), b))
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
        Ok(ArgSpec::new(Arg::Ref(self.raw_id()), b))
    }
}

/// Submits a call of the registered function `func`; the glue behind `f::remote`.
#[doc(hidden)]
pub fn submit<R>(
    func: &'static str,
    options: &TaskOptions,
    args: impl FnOnce(&SubmitCx) -> Result<Vec<ArgSpec>>,
) -> ObjectRef<R> {
    submit_call(func, &options.opts, None, args)
}

/// Submits a call: a task, an actor's constructor or an actor's method.
pub(crate) fn submit_call<R>(
    func: &'static str,
    opts: &TaskOpts,
    actor: Option<ActorCall>,
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
        args: args.into_iter().filter_map(ArgSpec::into_arg).collect(),
        opts: opts.clone(),
        extra: Vec::new(),
        actor,
    };
    match cx.b.submit(spec) {
        Ok(()) => ObjectRef::adopt(ret, cx.b),
        Err(e) => ObjectRef::failed(e),
    }
}

/// The refs of a call with several returns, taken one by one in order (opaque).
#[doc(hidden)]
#[derive(Debug)]
pub struct Returns {
    refs: std::vec::IntoIter<Result<(Id, BackendRef)>>,
}

impl Returns {
    /// The next return's ref (a failed ref if the call failed, or past the end).
    #[expect(clippy::should_implement_trait)]
    pub fn next<T>(&mut self) -> ObjectRef<T> {
        match self.refs.next() {
            Some(Ok((id, b))) => ObjectRef::adopt(id, b),
            Some(Err(e)) => ObjectRef::failed(e),
            None => ObjectRef::failed(Error::Protocol("no such return value".into())),
        }
    }
}

/// Submits a call with `n` return values (rule 5 in protocol.rs); the glue behind `f::remote`
/// of a `num_returns = n` function.
#[doc(hidden)]
pub fn submit_many(
    func: &'static str,
    options: &TaskOptions,
    n: usize,
    args: impl FnOnce(&SubmitCx) -> Result<Vec<ArgSpec>>,
) -> Returns {
    let failed = |e: Error| Returns {
        refs: vec![Err(e); n].into_iter(),
    };
    let b = match client::current() {
        Ok(b) => b,
        Err(e) => return failed(e),
    };
    let cx = SubmitCx { b };
    let args = match args(&cx) {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    let ids: Vec<Id> = (0..n.max(1)).map(|_| cx.b.new_id()).collect();
    let spec = TaskSpec {
        ret: ids[0],
        func: func.to_string(),
        args: args.into_iter().filter_map(ArgSpec::into_arg).collect(),
        opts: options.opts.clone(),
        extra: ids[1..].to_vec(),
        actor: None,
    };
    match cx.b.submit(spec) {
        // Each id's one reference goes to its handle (rule 5 in protocol.rs).
        Ok(()) => Returns {
            refs: ids
                .into_iter()
                .map(|id| Ok((id, cx.b.clone())))
                .collect::<Vec<_>>()
                .into_iter(),
        },
        Err(e) => failed(e),
    }
}

/// Decodes argument `i` of a call (in the worker).
#[doc(hidden)]
pub fn decode_arg<T: DeserializeOwned>(inv: &Invocation<'_>, i: usize) -> Result<T> {
    let bytes = inv
        .args
        .get(i)
        .ok_or_else(|| Error::Protocol(format!("task {} got too few arguments", inv.name)))?;
    let value = codec::decode_value(bytes);
    if i + 1 == inv.args.len() {
        // Every argument is decoded: the task's handles now hold what it needs.
        inv.release_moved();
    }
    value
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
    match client::encode_moved_with_refs(&b, &value) {
        Ok((bytes, contained)) => Outcome::Ok {
            payload: Payload::Inline(bytes),
            contained,
        },
        Err(e) => Outcome::Err(e),
    }
}

/// One encoded element of a multi-return result (in the worker): its bytes and the ids it
/// mentions, each of which owns a reference (rule 4 in protocol.rs).
#[doc(hidden)]
pub type Part = Result<(Vec<u8>, Vec<Id>)>;

/// Encodes one element of a multi-return result (in the worker).
#[doc(hidden)]
pub fn encode_part<T: Serialize>(value: &T) -> Part {
    let b = client::current()?;
    client::encode_moved_with_refs(&b, value)
}

/// Encodes the result of a `num_returns = N` task from its N encoded elements, or its error
/// (rule 5 in protocol.rs). If one element failed to encode, the references the others took
/// are given back and the task fails.
#[doc(hidden)]
pub fn finish_many<E: std::fmt::Display>(
    inv: &Invocation<'_>,
    r: std::result::Result<Vec<Part>, E>,
) -> Outcome {
    let parts = match r {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Err(Error::TaskFailed {
                task: inv.name.to_string(),
                message: format!("{e:#}"),
                value: None,
            });
        }
    };
    if let Some(e) = parts.iter().find_map(|p| p.as_ref().err().cloned()) {
        if let Ok(b) = client::current() {
            for (_, contained) in parts.iter().flatten() {
                for &c in contained {
                    b.ref_op(c, -1);
                }
            }
        }
        return Outcome::Err(e);
    }
    Outcome::Many(
        parts
            .into_iter()
            .flatten()
            .map(|(bytes, contained)| ReturnValue {
                payload: Payload::Inline(bytes),
                contained,
            })
            .collect(),
    )
}

/// Encodes a fallible task's result: `Err(e)` becomes `Error::TaskFailed` with `e`'s text.
#[doc(hidden)]
pub fn finish_result<T: Serialize, E>(
    inv: &Invocation<'_>,
    r: std::result::Result<T, E>,
    describe: impl FnOnce(&E) -> (String, Option<ErrorValue>),
) -> Outcome {
    match r {
        Ok(v) => finish(inv, v),
        Err(e) => {
            let (message, value) = describe(&e);
            Outcome::Err(Error::TaskFailed {
                task: inv.name.to_string(),
                message,
                value,
            })
        }
    }
}

/// A task's error, seen by the generated code (whose error type is concrete) through two
/// traits: `Serialize` errors travel as values (`ErrSerialize`, found first), the others as
/// text only (`ErrDisplay`, one auto-reference further).
#[doc(hidden)]
pub struct ErrWrap<'a, E>(pub &'a E);

/// The error's text and encoded value (for `Serialize` errors).
#[doc(hidden)]
pub trait ErrSerialize {
    fn describe(&self) -> (String, Option<ErrorValue>);
}

impl<E: Serialize + std::fmt::Display> ErrSerialize for ErrWrap<'_, E> {
    fn describe(&self) -> (String, Option<ErrorValue>) {
        // An error that holds refs or arrays travels as text only: its value would name
        // objects no reference keeps alive.
        let (bytes, ids) = client::collecting(|| crate::codec::encode_value(self.0));
        let value = bytes
            .ok()
            .filter(|_| ids.is_empty())
            .map(|bytes| ErrorValue {
                type_name: std::any::type_name::<E>().to_string(),
                bytes,
            });
        (format!("{:#}", self.0), value)
    }
}

/// The error's text only.
#[doc(hidden)]
pub trait ErrDisplay {
    fn describe(&self) -> (String, Option<ErrorValue>);
}

impl<E: std::fmt::Display> ErrDisplay for &ErrWrap<'_, E> {
    fn describe(&self) -> (String, Option<ErrorValue>) {
        (format!("{:#}", self.0), None)
    }
}

/// Turns an argument error into the task's outcome.
#[doc(hidden)]
pub fn arg_error(e: Error) -> Outcome {
    Outcome::Err(e)
}

/// The GPU devices given to the running task (numbered from 0 up to
/// [`Config::num_gpus`](crate::Config::num_gpus)); empty in the driver and in a task that asked
/// for none.
///
/// While a task with GPUs runs, its worker also sets `CUDA_VISIBLE_DEVICES` to this list (and
/// puts the old value back after), as Ray does, so CUDA libraries see only these devices. A
/// CUDA library reads it once per process, at its first use: give GPU tasks `max_calls = 1`
/// when different calls must see different devices. The variable is changed only while the
/// worker process has a single thread (changing the environment is unsound otherwise): once a
/// task leaves threads of its own running, that worker can no longer change it and says so
/// on stderr; tasks should then pass these ids to their library instead.
///
/// ```no_run
/// #[rayfork::remote(num_gpus = 1, max_calls = 1)]
/// fn train(epochs: u32) -> Vec<u32> {
///     let devices = rayfork::gpu_ids(); // e.g. [1]; CUDA_VISIBLE_DEVICES is "1"
///     # let _ = epochs;
///     devices
/// }
/// # fn main() {}
/// ```
pub fn gpu_ids() -> Vec<u32> {
    client::process_backend().map_or_else(Vec::new, |b| b.gpu_ids())
}

/// What the running task knows about itself (Ray's runtime context).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskContext {
    /// The task's id (also the id of its result object).
    pub task_id: rayfork_plasma::ObjectId,
    /// The registered function: `module::path::name` (`Type::method` for an actor call).
    pub function: String,
    /// The task's name (`options().name(..)`, else the function's).
    pub name: String,
    /// Which attempt this is, from 1 (a retry after a crash is 2, ...).
    pub attempt: u32,
    /// The actor it runs for (its constructor or a method call), if any.
    pub actor_id: Option<rayfork_plasma::ObjectId>,
    /// The GPU devices it holds (as [`gpu_ids`]).
    pub gpu_ids: Vec<u32>,
    /// The worker process it runs in.
    pub pid: u32,
}

/// The context of the task this code runs in: `None` in the driver (outside any task).
///
/// ```
/// #[rayfork::remote]
/// fn who() -> (u32, String) {
///     let cx = rayfork::context().expect("inside a task");
///     (cx.attempt, cx.name)
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let rt = rayfork::Runtime::builder().num_cpus(1).start()?;
///     assert!(rayfork::context().is_none());
///     let (attempt, name) = rt.get(&who::options().name("asker").remote())?;
///     assert_eq!((attempt, name.as_str()), (1, "asker"));
///     Ok(())
/// }
/// ```
pub fn context() -> Option<TaskContext> {
    client::process_backend().and_then(|b| b.context())
}
