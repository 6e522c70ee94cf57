//! Actors: a value that lives in a worker process of its own, whose methods run as tasks on
//! that process, one at a time, in the order they were submitted (Ray's actors).
//!
//! Owns the handle type, actor options, the worker-side table of actor states, and the glue the
//! `#[rayfork::actor]` macro expands to. Placement, ordering, restarts and lifetime are the
//! scheduler's (scheduler rule 8); this module must not decide any of them.
//!
//! ```no_run
//! pub struct Counter {
//!     n: i64,
//! }
//!
//! #[rayfork::actor]
//! impl Counter {
//!     pub fn new(start: i64) -> Counter {
//!         Counter { n: start }
//!     }
//!     pub fn incr(&mut self, by: i64) -> i64 {
//!         self.n += by;
//!         self.n
//!     }
//! }
//!
//! fn main() -> rayfork::Result<()> {
//!     let rt = rayfork::Runtime::builder().start()?;
//!     let c = Counter::remote(10); // a worker process of its own runs Counter::new(10)
//!     let a = c.incr(1);           // method calls run in submission order
//!     let b = c.incr(2);
//!     assert_eq!(rt.get_all(&[a, b])?, vec![11, 13]);
//!     Ok(())
//! }
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::object_ref::ObjectRef;
use crate::protocol::{ActorCall, Id, Outcome, TaskOpts};
use crate::registry::Invocation;
use crate::task::{ArgSpec, SubmitCx, TaskOptions, submit_call};
use crate::{Error, IntoArg, Result};

/// A handle to an actor of type `A`: cheap to clone, and can be passed to tasks (it is
/// serializable), which can call its methods too.
///
/// The actor lives while any handle to it or any pending call exists, in any process; then its
/// process ends. [`kill`](Self::kill) ends it at once. The `#[rayfork::actor]` macro gives
/// `ActorHandle<A>` a method per method of `A` (through a generated extension trait,
/// `<A>Actor`, that the macro puts next to `A`).
pub struct ActorHandle<A> {
    r: ObjectRef<Id>,
    _a: PhantomData<fn() -> A>,
}

impl<A> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle {
            r: self.r.clone(),
            _a: PhantomData,
        }
    }
}

impl<A> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({:032x})", self.r.raw_id())
    }
}

impl<A> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.r.serialize(s)
    }
}

impl<'de, A> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(ActorHandle {
            r: ObjectRef::deserialize(d)?,
            _a: PhantomData,
        })
    }
}

impl<A> ActorHandle<A> {
    /// Ends the actor's process now (SIGKILL). It is not restarted; calls not yet finished
    /// resolve to [`Error::ActorDied`]. Killing a dead actor does nothing.
    pub fn kill(&self) -> Result<()> {
        self.r.backend()?.kill_actor(self.r.raw_id())
    }

    /// Waits until the constructor has run; its error if it failed.
    pub fn ready(&self) -> Result<()> {
        crate::get(&self.r).map(|_| ())
    }

    #[doc(hidden)]
    pub fn __call<R>(
        &self,
        func: &'static str,
        args: impl FnOnce(&SubmitCx) -> Result<Vec<ArgSpec>>,
    ) -> ObjectRef<R> {
        let opts = TaskOptions::default().num_cpus(0.0).max_retries(0);
        let actor = &self.r;
        // The first argument is the actor itself: the call holds it alive and waits for its
        // constructor (scheduler rule 8).
        let args = move |cx: &SubmitCx| {
            let mut v = vec![IntoArg::<Id>::into_arg(actor, cx)?];
            v.extend(args(cx)?);
            Ok(v)
        };
        submit_call(
            func,
            &opts.opts,
            Some(ActorCall::Method {
                actor: actor.raw_id(),
            }),
            args,
        )
    }
}

impl<A> IntoArg<ActorHandle<A>> for &ActorHandle<A> {
    fn into_arg(self, cx: &SubmitCx) -> Result<ArgSpec> {
        IntoArg::<ActorHandle<A>>::into_arg(self.clone(), cx)
    }
}

/// Options of an actor: `Counter::options().max_restarts(2).remote(..)`.
#[derive(Debug, Clone)]
pub struct ActorOptions {
    opts: TaskOpts,
    max_restarts: u32,
    max_task_retries: u32,
}

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions {
            opts: TaskOptions::default().max_retries(0).opts,
            max_restarts: 0,
            max_task_retries: 0,
        }
    }
}

impl ActorOptions {
    /// How many times the actor's process is started again, with its constructor re-run, after
    /// it crashed (default 0, as Ray). Calls running at the crash fail with
    /// [`Error::ActorDied`]; calls still queued run on the restarted actor.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    /// How many times a call running when the actor's process crashed runs again on the
    /// restarted actor (default 0: it fails with [`Error::ActorDied`]). Only with
    /// `max_restarts`; the call must tolerate running twice.
    pub fn max_task_retries(mut self, n: u32) -> Self {
        self.max_task_retries = n;
        self
    }

    /// Names the actor: [`get_actor`] finds it by this name from any process while it lives,
    /// and errors name it so (default: no name; errors use the constructor's path). Names are
    /// unique among live actors: a second actor with a live one's name fails at once.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    #[doc(hidden)]
    pub fn __create<A>(
        &self,
        func: &'static str,
        args: impl FnOnce(&SubmitCx) -> Result<Vec<ArgSpec>>,
    ) -> ActorHandle<A> {
        let r = submit_call(
            func,
            &self.opts,
            Some(ActorCall::Create {
                max_restarts: self.max_restarts,
                max_task_retries: self.max_task_retries,
            }),
            args,
        );
        ActorHandle { r, _a: PhantomData }
    }
}

thread_local! {
    /// The states of the actors this worker process holds (one, in practice), by actor id.
    static STATES: RefCell<HashMap<Id, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

/// Stores a constructed actor state (in its worker); the constructor's result is the actor id.
#[doc(hidden)]
pub fn __store<A: 'static>(inv: &Invocation<'_>, state: A) -> Outcome {
    STATES.with(|s| s.borrow_mut().insert(inv.task, Box::new(state)));
    crate::task::finish(inv, inv.task)
}

/// Stores the state a fallible constructor made, or fails the constructor with its error's
/// message (in its worker).
#[doc(hidden)]
pub fn __store_result<A: 'static, E: std::fmt::Display>(
    inv: &Invocation<'_>,
    state: std::result::Result<A, E>,
) -> Outcome {
    match state {
        Ok(state) => __store(inv, state),
        Err(e) => Outcome::Err(Error::TaskFailed {
            task: inv.name.to_string(),
            message: format!("{e:#}"),
            value: None,
        }),
    }
}

/// Runs `f` on the state of the actor named by the call's first argument (in its worker).
#[doc(hidden)]
pub fn __with_state<A: 'static, R>(inv: &Invocation<'_>, f: impl FnOnce(&mut A) -> R) -> Result<R> {
    let id: Id = crate::task::decode_arg(inv, 0)?;
    // Taken out while the method runs, so a method that calls back into rayfork cannot alias it.
    let mut state =
        STATES
            .with(|s| s.borrow_mut().remove(&id))
            .ok_or_else(|| Error::ActorDied {
                actor: format!("{id:x}"),
                reason: "its state is not in this process".into(),
            })?;
    let Some(a) = state.downcast_mut::<A>() else {
        return Err(Error::Protocol(format!(
            "actor {id:x} is not a {}",
            std::any::type_name::<A>()
        )));
    };
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a)));
    STATES.with(|s| s.borrow_mut().insert(id, state));
    match out {
        Ok(v) => Ok(v),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A type made an actor by `#[rayfork::actor]` (the macro implements it): what [`get_actor`]
/// checks a named actor against.
pub trait ActorClass {
    /// The registered function of its constructor.
    const CLASS: &'static str;
}

/// The live actor named `name` (started with `T::options().name(name)`), from any process of
/// the runtime; an error if there is none, or if it is not an `A`.
///
/// ```
/// pub struct Counter(u64);
///
/// #[rayfork::actor]
/// impl Counter {
///     pub fn new() -> Self {
///         Counter(0)
///     }
///     pub fn incr(&mut self) -> u64 {
///         self.0 += 1;
///         self.0
///     }
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let rt = rayfork::Runtime::builder().num_cpus(1).start()?;
///     let c = Counter::options().name("hits").remote();
///     rt.get(&c.incr())?;
///     let same: rayfork::ActorHandle<Counter> = rayfork::get_actor("hits")?;
///     assert_eq!(rt.get(&same.incr())?, 2);
///     Ok(())
/// }
/// ```
pub fn get_actor<A: ActorClass>(name: &str) -> Result<ActorHandle<A>> {
    let b = crate::client::current()?;
    let (id, class) = b.get_actor(name)?;
    // The handle owns the reference the scheduler gave (dropped with it if the type is wrong).
    let handle = ActorHandle {
        r: ObjectRef::adopt(id, b),
        _a: PhantomData,
    };
    if class != A::CLASS {
        return Err(Error::InvalidArgument(format!(
            "the actor named {name:?} is made by {class}, not by {}",
            A::CLASS
        )));
    }
    Ok(handle)
}
