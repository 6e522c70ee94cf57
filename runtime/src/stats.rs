//! `RuntimeStats`: a snapshot of a running runtime's counters. Plain data; computes nothing.

/// Counters of a running runtime (see `Runtime::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RuntimeStats {
    /// The object store's accounting.
    pub store: rayfork_plasma::Stats,
    /// Objects known to the scheduler (inline or stored, pending or ready).
    pub objects: usize,
    /// Tasks not yet finished.
    pub tasks: usize,
    /// `as_completed` iterators the scheduler follows objects for.
    pub watches: usize,
    /// Worker processes alive (or starting).
    pub workers: usize,
    /// Worker processes forked since the start, replacements included.
    pub workers_started: u64,
    /// Workers lost to crashes or kills.
    pub workers_died: u64,
    /// Tasks that ran nested on a blocked worker's stack.
    pub nested_inline: u64,
    /// The largest number of worker processes alive at once.
    pub peak_workers: usize,
    /// Workers retired after reaching a task's `max_calls` (`max_calls`).
    pub workers_retired: u64,
    /// Tasks sent to wait on a busy worker (pipelining): each was started from there
    /// (`pipelined`), taken back (`taken_back`), is still there, or went back to the queue
    /// when its worker died.
    pub queued: u64,
    /// Tasks started from a busy worker's queue, without a round trip (pipelining).
    pub pipelined: u64,
    /// Queued tasks taken back from a worker before it started them (pipelining).
    pub taken_back: u64,
}
