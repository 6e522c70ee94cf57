//! Runtime configuration: the builder that `Runtime::builder()` returns.
//!
//! Owns the knobs and their defaults; it starts nothing itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Values up to this many encoded bytes travel inline in messages (as Ray does).
pub(crate) const DEFAULT_INLINE_MAX: usize = 64 * 1024;

/// How a runtime is set up. Build one with [`Runtime::builder`](crate::Runtime::builder).
///
/// ```no_run
/// let rt = rayfork::Runtime::builder()
///     .num_cpus(2)
///     .store_capacity(1 << 30)
///     .start()?;
/// # Ok::<(), rayfork::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) num_cpus: usize,
    pub(crate) num_gpus: f64,
    pub(crate) resources: BTreeMap<String, f64>,
    /// Set by `max_workers`; `None`: 4 x `num_cpus`, whatever `num_cpus` ends up being.
    max_workers: Option<usize>,
    pub(crate) store_capacity: u64,
    pub(crate) populate: bool,
    pub(crate) worker_program: Option<PathBuf>,
    pub(crate) cancel_grace: Duration,
    pub(crate) pipeline_depth: usize,
}

/// Tasks queued on one busy worker at most (see `Config::pipeline_depth`).
pub(crate) const DEFAULT_PIPELINE_DEPTH: usize = 4;
/// The largest `pipeline_depth`: a worker's claim cells (shared_flags.rs) bound it.
pub(crate) const MAX_PIPELINE_DEPTH: usize = crate::shared_flags::RING as usize;

/// The most GPUs a runtime declares (each is a device the scheduler keeps a share of).
pub(crate) const MAX_GPUS: f64 = 1024.0;

/// How long a cancelled running task has to stop on its own before its worker is killed.
pub(crate) const DEFAULT_CANCEL_GRACE: Duration = Duration::from_millis(100);

/// Items a generator may have yielded and its caller not yet taken, by default (see
/// `TaskOptions::backpressure`).
pub(crate) const DEFAULT_BACKPRESSURE: u32 = 16;

impl Default for Config {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            num_cpus: cpus,
            num_gpus: 0.0,
            resources: BTreeMap::new(),
            max_workers: None,
            store_capacity: default_capacity(),
            populate: false,
            worker_program: None,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            pipeline_depth: std::env::var("RAYFORK_PIPELINE_DEPTH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_PIPELINE_DEPTH)
                .min(MAX_PIPELINE_DEPTH),
        }
    }
}

/// A quarter of the machine's memory, at most 16 GiB and at least 64 MiB.
fn default_capacity() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024);
    (total / 4).clamp(64 << 20, 16 << 30)
}

impl Config {
    /// CPUs the scheduler hands out: at most this many tasks (of one CPU each) run at once.
    /// Defaults to the machine's. Also the number of workers forked at start.
    pub fn num_cpus(mut self, n: usize) -> Self {
        self.num_cpus = n.max(1);
        self
    }

    /// GPUs the scheduler hands out (default 0: a task asking for a GPU fails with
    /// [`Error::Unschedulable`](crate::Error::Unschedulable)), as devices numbered from 0
    /// (see [`gpu_ids`](crate::gpu_ids)); at most 1024. rayfork does not look at the hardware:
    /// declare what the machine has.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = if n.is_finite() {
            n.clamp(0.0, MAX_GPUS)
        } else {
            0.0
        };
        self
    }

    /// Declares `amount` of a custom resource `name` (a license, a database connection, a
    /// memory budget...): tasks asking for it with `resources = [("db", 1.0)]` or
    /// `options().resource("db", 1.0)` run only while that much is free. Calling it again
    /// with the same name replaces the amount.
    ///
    /// ```no_run
    /// let rt = rayfork::Runtime::builder().resource("db", 2.0).start()?;
    /// # Ok::<(), rayfork::Error>(())
    /// ```
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        let amount = if amount.is_finite() {
            amount.max(0.0)
        } else {
            0.0
        };
        self.resources.insert(name.into(), amount);
        self
    }

    /// The most worker processes alive at once. Extra workers are forked while tasks are
    /// blocked in `get`; past this bound a blocked worker runs queued tasks nested on its own
    /// stack instead. Defaults to 4 x `num_cpus`; never below `num_cpus`.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// The bound `max_workers` describes: as set (never below `num_cpus`), else 4 x `num_cpus`.
    pub(crate) fn worker_cap(&self) -> usize {
        self.max_workers
            .unwrap_or(4 * self.num_cpus)
            .max(self.num_cpus)
    }

    /// Bytes of shared memory for the object store. Defaults to a quarter of the machine's
    /// memory (64 MiB to 16 GiB). Start fails if the machine cannot back it.
    pub fn store_capacity(mut self, bytes: u64) -> Self {
        self.store_capacity = bytes;
        self
    }

    /// Backs the whole store with memory at start (`MADV_POPULATE_WRITE`) instead of page by
    /// page as objects first touch it (default `false`). Start then takes time in proportion
    /// to the store (about 1 GB/s) and fails at once if the machine cannot back it; later
    /// writes into fresh store memory no longer pay a page fault and a zeroing each (the first
    /// run of a large sort does). The store reuses freed memory before fresh memory either way.
    pub fn populate(mut self, yes: bool) -> Self {
        self.populate = yes;
        self
    }

    /// Runs workers from this executable instead of the driver's own binary. Its `main` must
    /// call [`rayfork::worker::main`](crate::worker::main), and it must link the same
    /// `#[remote]` functions as the driver.
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_program = Some(path.into());
        self
    }

    /// How long a cancelled task that is running has, after
    /// [`is_cancelled`](crate::is_cancelled) turns true, to return on its own before its worker
    /// process is killed with SIGKILL and replaced. Default 100 ms: enough for a task that polls
    /// the flag in its loop to stop cleanly, short enough that a task stuck in a system call or
    /// a native loop stops promptly. [`CancelMode::grace`](crate::CancelMode::grace) overrides
    /// it per call; [`CancelMode::force`](crate::CancelMode::force) skips it.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// How many small tasks may wait queued on each busy worker, to start as soon as its running
    /// task ends with no round trip to the scheduler (see "Pipelining" in the crate docs).
    /// Default 4 (or `RAYFORK_PIPELINE_DEPTH`), at most 16; 0 turns pipelining off: a task is
    /// then sent only to an idle worker.
    pub fn pipeline_depth(mut self, n: usize) -> Self {
        self.pipeline_depth = n.min(MAX_PIPELINE_DEPTH);
        self
    }

    /// Starts a runtime with this configuration.
    pub fn start(self) -> crate::Result<crate::Runtime> {
        crate::Runtime::start(self)
    }

    pub(crate) fn initial_workers(&self) -> usize {
        self.num_cpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_workers_defaults_to_four_times_num_cpus_whenever_it_is_set() {
        assert_eq!(Config::default().num_cpus(3).worker_cap(), 12);
        assert_eq!(Config::default().num_cpus(300).worker_cap(), 1200);
        assert_eq!(Config::default().max_workers(5).num_cpus(2).worker_cap(), 5);
        // Never below num_cpus, in either order.
        assert_eq!(Config::default().max_workers(1).num_cpus(4).worker_cap(), 4);
        assert_eq!(Config::default().num_cpus(4).max_workers(1).worker_cap(), 4);
    }
}
