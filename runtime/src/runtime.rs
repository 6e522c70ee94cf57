//! The driver's `Runtime`: starts the arena, the scheduler thread (which starts the fork server
//! and the workers) and shuts them all down on drop.
//!
//! Owns the driver side of the `Backend` trait: requests go to the scheduler thread as events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use bytemuck::Pod;
use rayfork_plasma::ShmArena;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Backend, BackendRef, IdGen};
use crate::config::{Config, DEFAULT_INLINE_MAX};
use crate::object_ref::{self, ObjectRef};
use crate::protocol::{FromWorker, Id, TaskSpec, ToWorker};
use crate::scheduler::{Doorbell, Event, Health, Scheduler};
use crate::stats::RuntimeStats;
use crate::{Array, ArrayMut, CancelMode, CancelOutcome, Error, Result, TaskSummary};

pub(crate) struct DriverBackend {
    tx: Sender<Event>,
    bell: Arc<Doorbell>,
    /// Why the scheduler thread is gone, once it is.
    health: Arc<Health>,
    arena: Arc<ShmArena>,
    ids: IdGen,
}

impl std::fmt::Debug for DriverBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriverBackend")
    }
}

impl DriverBackend {
    fn send(&self, ev: Event) -> Result<()> {
        self.tx.send(ev).map_err(|_| self.health.gone())?;
        self.bell.ring();
        Ok(())
    }

    fn one_way(&self, msg: FromWorker) -> Result<()> {
        self.send(Event::Driver { msg, reply: None })
    }
}

impl Backend for DriverBackend {
    fn tell(&self, msg: FromWorker) -> Result<()> {
        self.one_way(msg)
    }

    fn request(&self, msg: FromWorker) -> Result<ToWorker> {
        let (tx, rx) = channel();
        self.send(Event::Driver {
            msg,
            reply: Some(tx),
        })?;
        // No spinning here: the scheduler thread and the workers spin (`ipc::spin`); a
        // spinning driver thread only took the CPU the fork server needed on 2 CPUs (a force
        // cancel took 2.1 ms instead of 0.6-0.9 ms) and did not shorten round trips.
        rx.recv().map_err(|_| self.health.gone())
    }

    fn submit(&self, spec: TaskSpec) -> Result<()> {
        self.one_way(FromWorker::Submit(spec))
    }

    fn put_inline(&self, id: Id, bytes: Vec<u8>, contained: Vec<Id>) -> Result<()> {
        self.one_way(FromWorker::Put {
            id,
            bytes,
            contained,
        })
    }

    fn seal(&self, id: Id, contained: Vec<Id>) -> Result<()> {
        self.one_way(FromWorker::Seal { id, contained })
    }

    fn abort(&self, id: Id) {
        let _ = self.one_way(FromWorker::Abort { id });
    }

    fn share(&self, id: Id) -> Result<()> {
        self.one_way(FromWorker::Share { id })
    }

    fn ref_op(&self, id: Id, delta: i32) {
        let _ = self.one_way(FromWorker::RefOps(vec![(id, delta)]));
    }

    fn yield_item(&self, _task: Id, _item: Id) -> Result<bool> {
        Err(Error::Runtime(
            "only a generator task yields items; the driver runs none".into(),
        ))
    }

    fn kill_actor(&self, actor: Id) -> Result<()> {
        self.one_way(FromWorker::KillActor { actor })
    }

    fn arena(&self) -> &Arc<ShmArena> {
        &self.arena
    }

    fn new_id(&self) -> Id {
        self.ids.next()
    }

    fn inline_max(&self) -> usize {
        DEFAULT_INLINE_MAX
    }
}

/// A running rayfork runtime: a fork server, a pool of worker processes, a scheduler thread and
/// a shared-memory object store. Dropping it kills and reaps every process it started.
///
/// ```no_run
/// #[rayfork::remote]
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// fn main() -> rayfork::Result<()> {
///     let rt = rayfork::Runtime::builder().num_cpus(2).start()?;
///     let sum = add::remote(1, 2);
///     assert_eq!(rt.get(&sum)?, 3);
///     Ok(())
/// }
/// ```
#[must_use = "dropping the Runtime stops its fork server and every worker at once"]
pub struct Runtime {
    backend: Arc<DriverBackend>,
    dyn_backend: BackendRef,
    scheduler: Option<JoinHandle<()>>,
    num_cpus: usize,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("num_cpus", &self.num_cpus)
            .finish()
    }
}

impl Runtime {
    /// A builder with the defaults (see [`Config`]).
    pub fn builder() -> Config {
        Config::default()
    }

    /// Starts a runtime. Also makes it this thread's current runtime (for `f::remote` and
    /// [`put`](crate::put)).
    pub fn start(cfg: Config) -> Result<Runtime> {
        if crate::client::process_backend().is_some() {
            return Err(Error::Runtime(
                "a runtime cannot be started inside a task; use the caller's runtime".into(),
            ));
        }
        let arena = Arc::new(
            ShmArena::create(cfg.store_capacity).map_err(|e| Error::os("object store", e))?,
        );
        if cfg.populate {
            arena.populate().map_err(|e| Error::os("object store", e))?;
        }
        // Each runtime of the process names its objects in its own id space (`IdGen`).
        static NEXT_RUNTIME: AtomicU32 = AtomicU32::new(1);
        let runtime = NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        let bell = Arc::new(Doorbell::new()?);
        let num_cpus = cfg.num_cpus;
        let (ready_tx, ready_rx) = channel();
        let sched_arena = arena.clone();
        let sched_bell = bell.clone();
        let health = Arc::new(Health::default());
        let sched_health = health.clone();
        let handle = std::thread::Builder::new()
            .name("rayfork-scheduler".into())
            .spawn(
                move || match Scheduler::new(runtime, cfg, sched_arena, rx, sched_bell) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s.run(&sched_health);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            )
            .map_err(|e| Error::os("spawn scheduler thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(Error::Runtime("the scheduler thread died at start".into()));
            }
        }
        let backend = Arc::new(DriverBackend {
            tx,
            bell,
            health,
            arena,
            ids: IdGen::new(runtime, 0),
        });
        let dyn_backend: BackendRef = backend.clone();
        crate::client::set_current(&dyn_backend);
        crate::client::set_latest(&dyn_backend);
        Ok(Runtime {
            backend,
            dyn_backend,
            scheduler: Some(handle),
            num_cpus,
        })
    }

    /// Makes this runtime the current one of the calling thread (for `f::remote` and `put`).
    /// Only needed with two runtimes in one process: a driver thread that entered none uses
    /// the one most recently started.
    pub fn enter(&self) {
        crate::client::set_current(&self.dyn_backend);
    }

    /// The CPUs this runtime schedules.
    pub fn num_cpus(&self) -> usize {
        self.num_cpus
    }

    /// Waits for an object; see [`crate::get`].
    pub fn get<T: DeserializeOwned>(&self, r: &ObjectRef<T>) -> Result<T> {
        object_ref::get(r)
    }

    /// Waits for an object at most `timeout`; see [`crate::get_timeout`].
    pub fn get_timeout<T: DeserializeOwned>(
        &self,
        r: &ObjectRef<T>,
        timeout: Duration,
    ) -> Result<T> {
        object_ref::get_timeout(r, timeout)
    }

    /// Waits for all objects; see [`crate::get_all`].
    pub fn get_all<T: DeserializeOwned>(&self, refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
        object_ref::get_all(refs)
    }

    /// Waits for some objects; see [`crate::wait`].
    pub fn wait<T>(
        &self,
        refs: &[ObjectRef<T>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<crate::ReadyPending<T>> {
        object_ref::wait(refs, num_returns, timeout)
    }

    /// Cancels the task that produces `r`; see [`crate::cancel`] and [`CancelMode`].
    ///
    /// ```no_run
    /// #[rayfork::remote]
    /// fn spin() -> u64 {
    ///     let mut n = 0u64;
    ///     while !rayfork::is_cancelled() {
    ///         n = n.wrapping_add(1);
    ///     }
    ///     n
    /// }
    ///
    /// fn main() -> rayfork::Result<()> {
    ///     let rt = rayfork::Runtime::builder().start()?;
    ///     let r = spin::remote();
    ///     let mode = rayfork::CancelMode::default().force();
    ///     assert_eq!(rt.cancel(&r, mode)?, rayfork::CancelOutcome::Cancelled);
    ///     assert!(rt.get(&r).unwrap_err().is_cancelled());
    ///     Ok(())
    /// }
    /// ```
    pub fn cancel<T>(&self, r: &ObjectRef<T>, mode: CancelMode) -> Result<CancelOutcome> {
        crate::cancel::cancel_with(r, mode)
    }

    /// Stores a value in this runtime; see [`crate::put`].
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        object_ref::put_with(&self.dyn_backend, value)
    }

    /// Copies `data` into shared memory (one copy) as a sealed [`Array`].
    pub fn put_array<T: Pod>(&self, data: &[T]) -> Result<Array<T>> {
        let id = self.backend.new_id();
        let mut m = ArrayMut::with_len_in(&self.dyn_backend, id, data.len())?;
        m.copy_from_slice(data);
        m.seal()
    }

    /// A new unsealed array of `len` elements in this runtime (see [`ArrayMut::with_len`]).
    pub fn array_mut<T: Pod>(&self, len: usize) -> Result<ArrayMut<T>> {
        let id = self.backend.new_id();
        ArrayMut::with_len_in(&self.dyn_backend, id, len)
    }

    /// A snapshot of the runtime's counters: store accounting, objects, tasks, workers.
    pub fn stats(&self) -> Result<RuntimeStats> {
        self.stats_with(false)
    }

    /// [`stats`](Self::stats), then starts the peaks (`store.peak_used`, `peak_workers`)
    /// again from the current values: call it before a piece of work, and again after it, to
    /// get that work's peaks.
    ///
    /// ```no_run
    /// # let rt = rayfork::Runtime::builder().start()?;
    /// rt.take_peaks()?;
    /// let a = rt.put_array(&vec![0u64; 1 << 20])?;
    /// assert!(rt.take_peaks()?.store.peak_used >= 8 << 20);
    /// # Ok::<(), rayfork::Error>(())
    /// ```
    pub fn take_peaks(&self) -> Result<RuntimeStats> {
        self.stats_with(true)
    }

    fn stats_with(&self, reset_peaks: bool) -> Result<RuntimeStats> {
        let (reply, rx) = channel();
        self.backend.send(Event::Stats { reply, reset_peaks })?;
        rx.recv().map_err(|_| self.backend.health.gone())
    }

    /// Writes the runs of recent tasks to `path` as a Chrome trace (JSON), to open in Perfetto
    /// (ui.perfetto.dev) or chrome://tracing: one bar per run of a task, on a track per worker
    /// process and depth of its stack (depth 1 and more: nested runs while the task below was
    /// blocked in `get`), with its task id, attempt, submit time and outcome; runs in progress
    /// show as `running`; tasks that never ran (cancelled while queued, an argument failed)
    /// are marks on a "never ran" track. The last 100 000 runs are kept. Returns how many
    /// events it wrote. The file is written by the calling thread; the scheduler only hands
    /// over a copy of its records.
    ///
    /// ```no_run
    /// #[rayfork::remote]
    /// fn work(i: u32) -> u32 {
    ///     i
    /// }
    ///
    /// fn main() -> rayfork::Result<()> {
    ///     let rt = rayfork::Runtime::builder().start()?;
    ///     rt.get_all(&(0..100).map(work::remote).collect::<Vec<_>>())?;
    ///     rt.timeline("trace.json")?;
    ///     Ok(())
    /// }
    /// ```
    pub fn timeline(&self, path: impl AsRef<std::path::Path>) -> Result<usize> {
        let (tx, rx) = channel();
        self.backend.send(Event::Timeline(tx))?;
        let runs = rx.recv().map_err(|_| self.backend.health.gone())?;
        let path = path.as_ref();
        let write = || -> std::io::Result<usize> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            let n = crate::timeline::write_trace(&runs, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(n)
        };
        write().map_err(|e| Error::os(&format!("write the timeline to {}", path.display()), e))
    }

    /// Every task so far, counted by function and state (pending, running, finished, failed,
    /// cancelled, crashed, and runs retried after a crash); `Display` prints it as a table, as
    /// `ray summary tasks` does.
    ///
    /// ```no_run
    /// # let rt = rayfork::Runtime::builder().start()?;
    /// println!("{}", rt.summary()?);
    /// # Ok::<(), rayfork::Error>(())
    /// ```
    pub fn summary(&self) -> Result<TaskSummary> {
        let (tx, rx) = channel();
        self.backend.send(Event::Summary(tx))?;
        rx.recv().map_err(|_| self.backend.health.gone())
    }

    /// Makes the scheduler thread panic with `message`, to test the panic policy (a bug
    /// stand-in). Not a public API: reached through `__private::inject_scheduler_panic`.
    pub(crate) fn inject_scheduler_panic(&self, message: &str) -> Result<()> {
        self.backend.send(Event::InjectPanic(message.to_string()))
    }

    /// Stops every process of the runtime and waits for them. Also done on drop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(h) = self.scheduler.take() {
            let _ = self.backend.send(Event::Shutdown);
            let _ = h.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes `rt`'s scheduler thread panic (tests of the panic policy only).
#[doc(hidden)]
pub fn inject_scheduler_panic(rt: &Runtime, message: &str) -> Result<()> {
    rt.inject_scheduler_panic(message)
}
