//! Task events: when each task was submitted, ran (on which worker process, at which depth of
//! its stack) and how each run ended; the source of `Runtime::timeline` (a Chrome trace) and
//! `Runtime::summary` (counts by function).
//!
//! Owns the records, the counters and the trace's JSON. The scheduler feeds it from its thread
//! (`submitted`, `started`, `ended`, `finished`) and nothing else writes it; the JSON is written
//! by the driver thread that asked, from a snapshot, so no file I/O ever runs on the scheduler
//! thread. Memory is bounded: the last `KEPT` runs are kept, the counters count every task.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::time::Instant;

use crate::Error;
use crate::idmap::IdMap;
use crate::protocol::Id;

/// Runs kept for the timeline (the oldest are dropped first).
pub(crate) const KEPT: usize = 100_000;

/// How a run of a task, or the task, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RunEnd {
    /// It returned a value.
    Finished,
    /// It returned an error or panicked (or, for a task, could not run: a failed argument, a
    /// request that can never fit).
    Failed,
    /// It was cancelled.
    Cancelled,
    /// Its worker process died under it (for a task: after its last attempt).
    Crashed,
}

impl RunEnd {
    /// The outcome of a result.
    pub(crate) fn of<T>(result: &Result<T, Error>) -> RunEnd {
        match result {
            Ok(_) => RunEnd::Finished,
            Err(Error::TaskCancelled { .. }) => RunEnd::Cancelled,
            Err(Error::WorkerCrashed { .. }) => RunEnd::Crashed,
            Err(_) => RunEnd::Failed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RunEnd::Finished => "finished",
            RunEnd::Failed => "failed",
            RunEnd::Cancelled => "cancelled",
            RunEnd::Crashed => "crashed",
        }
    }
}

/// One run of a task (one attempt), or a task that never ran.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    task: Id,
    name: String,
    attempt: u32,
    /// Microseconds since the runtime started.
    submitted: u64,
    started: Option<u64>,
    ended: u64,
    pid: i32,
    depth: usize,
    /// `None` for a run still in progress (in a snapshot).
    outcome: Option<RunEnd>,
}

/// A task not finished yet.
#[derive(Debug, Clone, Copy)]
struct Open {
    submitted: u64,
    /// The current run: start time, worker pid, stack depth.
    running: Option<(u64, i32, usize)>,
    attempts: u32,
}

impl Open {
    /// Its current run (if any) as it stands at `now`; `outcome: None` while in progress.
    fn run(&self, task: Id, name: String, now: u64, outcome: Option<RunEnd>) -> Option<Run> {
        let (started, pid, depth) = self.running?;
        Some(Run {
            task,
            name,
            attempt: self.attempts,
            submitted: self.submitted,
            started: Some(started),
            ended: now,
            pid,
            depth,
            outcome,
        })
    }
}

/// The counts of one function's tasks (see [`TaskSummary`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionSummary {
    /// Submitted and not started (or waiting for a retry).
    pub pending: u64,
    /// Running now (or blocked in `get` with a frame on a worker's stack).
    pub running: u64,
    /// Finished with a value.
    pub finished: u64,
    /// Finished with an error (its own, or one that kept it from running).
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Failed because their worker died on the last attempt.
    pub crashed: u64,
    /// Runs lost to a worker's death and retried.
    pub retried: u64,
    /// Dropped before they ran: nobody held their results any more.
    pub dropped: u64,
}

/// Tasks by function and state: `ray summary tasks` for rayfork. See `Runtime::summary`.
/// Functions are the registered `#[remote]` paths (a task's `name` option shows in the
/// timeline, not here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSummary {
    /// One entry per function (its task name), sorted by name.
    pub by_function: BTreeMap<String, FunctionSummary>,
}

impl TaskSummary {
    /// The counts of every function added together.
    pub fn total(&self) -> FunctionSummary {
        let mut t = FunctionSummary::default();
        for f in self.by_function.values() {
            t.pending += f.pending;
            t.running += f.running;
            t.finished += f.finished;
            t.failed += f.failed;
            t.cancelled += f.cancelled;
            t.crashed += f.crashed;
            t.retried += f.retried;
            t.dropped += f.dropped;
        }
        t
    }
}

impl fmt::Display for TaskSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .by_function
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(8);
        writeln!(
            f,
            "{:<w$} {:>8} {:>8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8}",
            "function",
            "pending",
            "running",
            "finished",
            "failed",
            "cancelled",
            "crashed",
            "retried",
            "dropped"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, s: &FunctionSummary| {
            writeln!(
                f,
                "{:<w$} {:>8} {:>8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8}",
                name,
                s.pending,
                s.running,
                s.finished,
                s.failed,
                s.cancelled,
                s.crashed,
                s.retried,
                s.dropped
            )
        };
        for (name, s) in &self.by_function {
            row(f, name, s)?;
        }
        row(f, "total", &self.total())
    }
}

/// The scheduler's record of task events.
pub(crate) struct Events {
    epoch: Instant,
    open: IdMap<Id, Open>,
    runs: VecDeque<Run>,
    counts: BTreeMap<String, FunctionSummary>,
}

impl Events {
    pub(crate) fn new() -> Events {
        Events {
            epoch: Instant::now(),
            open: IdMap::default(),
            runs: VecDeque::new(),
            counts: BTreeMap::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub(crate) fn submitted(&mut self, task: Id) {
        let submitted = self.now();
        self.open.insert(
            task,
            Open {
                submitted,
                running: None,
                attempts: 0,
            },
        );
    }

    /// A run starts on the worker process `pid`, at `depth` of its stack.
    pub(crate) fn started(&mut self, task: Id, pid: i32, depth: usize) {
        let now = self.now();
        if let Some(o) = self.open.get_mut(&task) {
            o.running = Some((now, pid, depth));
            o.attempts += 1;
        }
    }

    /// A run counted as started never began (its worker died before taking it).
    pub(crate) fn unstarted(&mut self, task: Id) {
        if let Some(o) = self.open.get_mut(&task) {
            if o.running.take().is_some() {
                o.attempts = o.attempts.saturating_sub(1);
            }
        }
    }

    /// A run ended.
    pub(crate) fn ended(&mut self, task: Id, name: &str, outcome: RunEnd) {
        let now = self.now();
        let Some(o) = self.open.get_mut(&task).filter(|o| o.running.is_some()) else {
            return;
        };
        let run = o.run(task, name.to_string(), now, Some(outcome));
        o.running = None;
        self.keep(run.expect("running, checked above"));
    }

    /// A run of `task` (of function `func`) was lost to a crash and the task goes back to the
    /// queue. Only tasks recorded since their submission count (`enable_task_events`).
    pub(crate) fn retried(&mut self, task: Id, func: &str) {
        if self.open.contains_key(&task) {
            self.counts_of(func).retried += 1;
        }
    }

    /// The counts of function `func` (a new key is allocated only the first time; functions
    /// are the registered ones, so the map stays small whatever the tasks are named).
    fn counts_of(&mut self, func: &str) -> &mut FunctionSummary {
        if !self.counts.contains_key(func) {
            self.counts
                .insert(func.to_string(), FunctionSummary::default());
        }
        self.counts.get_mut(func).expect("inserted above")
    }

    /// The task (a call of function `func`, named `name`) is done for good, or was dropped
    /// unstarted (`None`).
    pub(crate) fn finished(&mut self, task: Id, func: &str, name: &str, outcome: Option<RunEnd>) {
        let now = self.now();
        let Some(o) = self.open.remove(&task) else {
            return;
        };
        let c = self.counts_of(func);
        let Some(outcome) = outcome else {
            c.dropped += 1;
            return;
        };
        match outcome {
            RunEnd::Finished => c.finished += 1,
            RunEnd::Failed => c.failed += 1,
            RunEnd::Cancelled => c.cancelled += 1,
            RunEnd::Crashed => c.crashed += 1,
        }
        if o.attempts == 0 {
            // Never ran: a run of no length, so that the timeline shows it.
            self.keep(Run {
                task,
                name: name.to_string(),
                attempt: 0,
                submitted: o.submitted,
                started: None,
                ended: now,
                pid: 0,
                depth: 0,
                outcome: Some(outcome),
            });
        }
    }

    fn keep(&mut self, run: Run) {
        if self.runs.len() == KEPT {
            self.runs.pop_front();
        }
        self.runs.push_back(run);
    }

    /// The summary, with the pending and running counts taken from the open tasks (`name_of`
    /// gives their names).
    pub(crate) fn summary(&self, name_of: impl Fn(Id) -> Option<String>) -> TaskSummary {
        let mut by_function = self.counts.clone();
        for (&id, o) in &self.open {
            let Some(name) = name_of(id) else { continue };
            let c = by_function.entry(name).or_default();
            if o.running.is_some() {
                c.running += 1;
            } else {
                c.pending += 1;
            }
        }
        TaskSummary { by_function }
    }

    /// The kept runs, plus the runs in progress as if they ended now.
    pub(crate) fn snapshot(&self, name_of: impl Fn(Id) -> Option<String>) -> Vec<Run> {
        let now = self.now();
        let mut runs: Vec<Run> = self.runs.iter().cloned().collect();
        for (&id, o) in &self.open {
            if o.running.is_some() {
                let name = name_of(id).unwrap_or_default();
                runs.extend(o.run(id, name, now, None));
            }
        }
        runs
    }
}

/// Writes runs as a Chrome trace (the JSON object format, which Perfetto and chrome://tracing
/// open): one complete event per run, on a track per worker process and stack depth (its
/// `outcome` argument is `running` for a run in progress); tasks that never ran are instant
/// events on a "never ran" track. Returns how many events it wrote.
pub(crate) fn write_trace(runs: &[Run], out: &mut impl Write) -> io::Result<usize> {
    out.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
    let mut first = true;
    let mut sep = |out: &mut dyn Write| -> io::Result<()> {
        if !std::mem::take(&mut first) {
            out.write_all(b",\n")?;
        }
        Ok(())
    };
    let mut pids: Vec<i32> = runs.iter().map(|r| r.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        sep(out)?;
        let name = if pid == 0 {
            "never ran".to_string()
        } else {
            format!("worker {pid}")
        };
        write!(
            out,
            "{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{pid},\"tid\":0,\"args\":{{\"name\":{}}}}}",
            json_str(&name)
        )?;
    }
    for r in runs {
        sep(out)?;
        let common = format!(
            "\"name\":{},\"cat\":\"task\",\"pid\":{},\"tid\":{},\"args\":{{\"task\":\"{:x}\",\"attempt\":{},\"submitted_us\":{},\"outcome\":\"{}\"}}",
            json_str(&r.name),
            r.pid,
            r.depth,
            r.task,
            r.attempt,
            r.submitted,
            r.outcome.map_or("running", RunEnd::as_str),
        );
        match r.started {
            Some(start) => write!(
                out,
                "{{\"ph\":\"X\",\"ts\":{start},\"dur\":{},{common}}}",
                r.ended.saturating_sub(start)
            )?,
            None => write!(
                out,
                "{{\"ph\":\"i\",\"s\":\"t\",\"ts\":{},{common}}}",
                r.ended
            )?,
        }
    }
    out.write_all(b"\n]}\n")?;
    Ok(pids.len() + runs.len())
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_counts_follow_the_task() {
        let mut e = Events::new();
        e.submitted(1);
        e.started(1, 100, 0);
        e.ended(1, "f", RunEnd::Crashed);
        e.retried(1, "f");
        e.started(1, 101, 0);
        e.ended(1, "f", RunEnd::Finished);
        e.finished(1, "f", "f", Some(RunEnd::Finished));
        e.submitted(2);
        e.finished(2, "g", "g", Some(RunEnd::Cancelled));
        e.submitted(3);
        e.started(3, 100, 1);
        let s = e.summary(|id| (id == 3).then(|| "h".to_string()));
        let f = s.by_function["f"];
        assert_eq!((f.finished, f.retried, f.running), (1, 1, 0));
        assert_eq!(s.by_function["g"].cancelled, 1);
        assert_eq!(s.by_function["h"].running, 1);
        assert_eq!(s.total().finished, 1);
        let runs = e.snapshot(|id| (id == 3).then(|| "h".to_string()));
        let attempts: Vec<(Id, u32, Option<i32>)> = runs
            .iter()
            .map(|r| (r.task, r.attempt, r.started.map(|_| r.pid)))
            .collect();
        assert_eq!(
            attempts,
            vec![
                (1, 1, Some(100)),
                (1, 2, Some(101)),
                (2, 0, None),
                (3, 1, Some(100))
            ]
        );
        let mut json = Vec::new();
        let n = write_trace(&runs, &mut json).unwrap();
        // Three process names (never ran, 100, 101) and four runs.
        assert_eq!(n, 7);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains("\"outcome\":\"running\""), "{text}");
        assert!(text.contains("\"name\":\"never ran\""), "{text}");
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }

    #[test]
    fn the_kept_runs_are_bounded() {
        let mut e = Events::new();
        for id in 0..(KEPT as Id + 10) {
            e.submitted(id);
            e.finished(id, "f", "f", Some(RunEnd::Failed));
        }
        assert_eq!(e.runs.len(), KEPT);
        assert_eq!(e.runs.front().map(|r| r.task), Some(10));
        assert_eq!(
            e.summary(|_| None).by_function["f"].failed,
            KEPT as u64 + 10
        );
    }
}
