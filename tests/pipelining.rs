//! Pipelining (scheduler rule 11, rule 6 in protocol.rs): when no idle worker can take a
//! ready task, a plain task waits queued on a busy worker and starts on the `Done` that empties
//! its stack; the scheduler takes queued tasks back (the frame blocked, another worker idles,
//! the task was cancelled) and requeues them when the worker dies, with no attempt used. Actor
//! calls queue the same way behind the running call.
//!
//! Real runtimes and processes. The tests never wait with a sleep: tasks wait for files that the
//! driver writes once `Runtime::stats` shows the state it needs (a task queued, a task taken
//! back), and every wait has a deadline so that a broken runtime fails a test instead of hanging
//! it; the watchdog is the last safety net.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayfork::{CancelMode, CancelOutcome, Error, ObjectRef, Runtime, RuntimeStats, remote};
use rayfork_tests::{eventually, note_run, runs, watchdog};

const LIMIT: Duration = Duration::from_secs(180);
/// A safety net for every wait (driver or task): generous, because the machine may be loaded.
const PATIENCE: Duration = Duration::from_secs(60);
/// A grace period no test waits out: the polling tasks stop cooperatively, no worker is killed.
const FOREVER: Duration = Duration::from_secs(3600);

/// A fresh directory of one test, removed when the test ends (even when it fails).
struct TestDir(PathBuf);

impl TestDir {
    fn new(test: &str) -> TestDir {
        let dir =
            std::env::temp_dir().join(format!("rayfork-pipelining-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        TestDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates the file `path` (the signal the tasks wait for).
fn touch(path: &str) {
    std::fs::write(path, b"go").expect("write a signal file");
}

/// In a task: waits until `path` exists, spinning politely; panics after `PATIENCE` (so a test
/// whose driver never signals fails instead of hanging).
fn await_file(path: &str) {
    let end = Instant::now() + PATIENCE;
    while !Path::new(path).exists() {
        assert!(Instant::now() < end, "{path} never appeared");
        std::thread::yield_now();
    }
}

/// Polls the runtime's counters until `cond` holds; fails the test after `PATIENCE`.
fn until_stats(rt: &Runtime, what: &str, cond: impl Fn(&RuntimeStats) -> bool) {
    assert!(
        eventually(PATIENCE, || cond(&rt.stats().unwrap())),
        "never saw {what}: {:?}",
        rt.stats().unwrap()
    );
}

fn runtime(cpus: usize) -> Runtime {
    Runtime::builder()
        .num_cpus(cpus)
        .store_capacity(64 << 20)
        .cancel_grace(FOREVER)
        .start()
        .expect("start a runtime")
}

fn expect_cancelled<T: std::fmt::Debug>(r: rayfork::Result<T>) {
    match r {
        Err(Error::TaskCancelled { .. }) => {}
        other => panic!("expected TaskCancelled, got {other:?}"),
    }
}

/// The value every small task computes from its argument.
fn f(x: u64) -> u64 {
    x.wrapping_mul(x).wrapping_add(7)
}

#[remote]
fn small(x: u64) -> u64 {
    f(x)
}

/// Announces itself (creates `started`), then spins until it is cancelled.
#[remote]
fn until_cancelled(started: String) -> u64 {
    touch(&started);
    let mut polls = 0u64;
    while !rayfork::is_cancelled() {
        polls += 1;
        std::thread::yield_now();
    }
    polls
}

/// Starts `until_cancelled` and waits until it runs (it announces itself in `dir`'s file
/// `name`): from then on it holds a CPU and its worker until it is cancelled.
fn start_long(dir: &TestDir, name: &str) -> ObjectRef<u64> {
    let started = dir.path(name);
    let long = until_cancelled::remote(started.clone());
    assert!(
        eventually(PATIENCE, || Path::new(&started).exists()),
        "the long task never started"
    );
    long
}

/// Waits for `go`, then `f(x)`.
#[remote]
fn gated(go: String, x: u64) -> u64 {
    await_file(&go);
    f(x)
}

/// Submits `n` small children (which can only be queued on this task's own worker when it is
/// the only busy one), waits for `go`, then `get`s them: the get must take them back.
#[remote]
fn parent_of_queued(go: String, n: u64) -> rayfork::Result<u64> {
    let kids: Vec<ObjectRef<u64>> = (0..n).map(small::remote).collect();
    await_file(&go);
    Ok(rayfork::get_all(&kids)?.into_iter().sum())
}

/// Leaves a mark when it runs.
#[remote]
fn leaves_a_mark(mark: String) -> u64 {
    touch(&mark);
    1
}

/// Announces itself, waits for `go`, then kills its own process.
#[remote]
fn crash_on_go(started: String, go: String) -> u64 {
    touch(&started);
    await_file(&go);
    std::process::abort()
}

/// Notes each run in `runs_file`, then `f(x)`.
#[remote]
fn counted(runs_file: String, x: u64) -> u64 {
    note_run(&runs_file);
    f(x)
}

/// A node of a recursive workload: submits `FANOUT` child nodes and `LEAVES` small tasks, and
/// `get`s them (children first, then the small ones with `wait`, then one `get_all`).
#[remote]
fn node(id: u64, depth: u32) -> rayfork::Result<u64> {
    if depth == 0 {
        return Ok(f(id));
    }
    let kids: Vec<ObjectRef<u64>> = (0..FANOUT)
        .map(|k| node::remote(id * FANOUT + k + 1, depth - 1))
        .collect();
    let leaves: Vec<ObjectRef<u64>> = (0..LEAVES).map(|k| small::remote(id * 1000 + k)).collect();
    let mut sum: u64 = 0;
    for k in &kids {
        sum = sum.wrapping_add(rayfork::get(k)?);
    }
    // A `wait` blocks the frame too (a second take-back path), then the values.
    rayfork::wait(&leaves, leaves.len(), None)?;
    for v in rayfork::get_all(&leaves)? {
        sum = sum.wrapping_add(v);
    }
    Ok(sum)
}

const FANOUT: u64 = 3;
const LEAVES: u64 = 6;

/// What `node(id, depth)` returns, computed here.
fn node_value(id: u64, depth: u32) -> u64 {
    if depth == 0 {
        return f(id);
    }
    let kids = (0..FANOUT).fold(0u64, |s, k| {
        s.wrapping_add(node_value(id * FANOUT + k + 1, depth - 1))
    });
    (0..LEAVES).fold(kids, |s, k| s.wrapping_add(f(id * 1000 + k)))
}

/// A counter actor whose calls return the count they leave.
pub struct Tally {
    n: u64,
}

#[rayfork::actor]
impl Tally {
    /// Starts at `n`.
    pub fn new(n: u64) -> Tally {
        Tally { n }
    }

    /// Adds one; the new count.
    pub fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }

    /// Waits for `go` (holding the actor, so later calls queue behind it); the count.
    pub fn hold(&self, go: String) -> u64 {
        await_file(&go);
        self.n
    }

    /// Waits for `go`, then blocks in `get` on `refs[0]` (a task's result) and adds it; the
    /// new count.
    pub fn add_result(&mut self, go: String, refs: Vec<ObjectRef<u64>>) -> rayfork::Result<u64> {
        await_file(&go);
        self.n += rayfork::get(&refs[0])?;
        Ok(self.n)
    }
}

/// A burst of tiny tasks on 2 CPUs: with both workers busy the tasks behind them are queued on
/// the workers and started from there (`queued`, `pipelined`), every one returns its own value,
/// and nothing is left afterwards (no task, no object, no store memory).
#[test]
fn a_burst_of_tiny_tasks_is_pipelined_and_every_result_is_right() {
    let _w = watchdog(
        "a_burst_of_tiny_tasks_is_pipelined_and_every_result_is_right",
        LIMIT,
    );
    let rt = runtime(2);
    const N: u64 = 2000;
    let refs: Vec<ObjectRef<u64>> = (0..N).map(small::remote).collect();
    let got = rt.get_all(&refs).unwrap();
    assert_eq!(got, (0..N).map(f).collect::<Vec<_>>());
    let s = rt.stats().unwrap();
    assert!(s.queued > 0, "no task was queued on a busy worker: {s:?}");
    assert!(
        s.pipelined > 0,
        "no task started from a worker's queue: {s:?}"
    );
    // Every queued task either started there or was taken back to run elsewhere.
    assert_eq!(s.pipelined + s.taken_back, s.queued, "{s:?}");
    assert_eq!(s.workers_died, 0, "{s:?}");
    assert_eq!(s.tasks, 0, "{s:?}");
    drop(refs);
    // The driver's drops reach the scheduler before this request (one channel, in order).
    let s = rt.stats().unwrap();
    assert_eq!(
        (s.tasks, s.objects, s.store.used, s.store.live_objects),
        (0, 0, 0, 0),
        "{s:?}"
    );
}

/// A task that `get`s children queued behind it on its own worker does not deadlock: blocking
/// takes them back (`taken_back`), and they run on another worker (a new one is forked) or,
/// with `max_workers = 1`, nested on the blocked worker itself.
#[test]
fn a_task_waiting_for_tasks_queued_behind_it_takes_them_back() {
    let _w = watchdog(
        "a_task_waiting_for_tasks_queued_behind_it_takes_them_back",
        LIMIT,
    );
    for max_workers in [None, Some(1)] {
        let dir = TestDir::new(&format!("behind-{max_workers:?}"));
        let mut cfg = Runtime::builder().num_cpus(1).store_capacity(64 << 20);
        if let Some(m) = max_workers {
            cfg = cfg.max_workers(m);
        }
        let rt = cfg.start().unwrap();
        const KIDS: u64 = 10;
        let go = dir.path("go");
        let parent = parent_of_queued::remote(go.clone(), KIDS);
        // One CPU, held by the parent: its first child can only wait queued on its worker.
        until_stats(&rt, "a child queued behind its parent", |s| s.queued >= 1);
        touch(&go);
        let got = rt.get_timeout(&parent, PATIENCE);
        assert_eq!(
            got.unwrap(),
            (0..KIDS).map(f).sum::<u64>(),
            "{max_workers:?}"
        );
        let s = rt.stats().unwrap();
        assert!(s.taken_back >= 1, "{max_workers:?}: {s:?}");
        assert_eq!(s.workers_died, 0, "{max_workers:?}: {s:?}");
        if max_workers == Some(1) {
            assert_eq!(s.workers_started, 1, "{s:?}");
            assert!(s.nested_inline >= 1, "{s:?}");
        }
        drop(parent);
        let s = rt.stats().unwrap();
        assert_eq!((s.tasks, s.objects, s.store.used), (0, 0, 0), "{s:?}");
    }
}

/// Balance: on 2 CPUs, a task queued behind a long-running task is taken back and run by the
/// other worker as soon as that one idles, so every short task finishes while the long one
/// still runs.
#[test]
fn a_task_queued_behind_a_long_one_moves_to_an_idle_worker() {
    let _w = watchdog(
        "a_task_queued_behind_a_long_one_moves_to_an_idle_worker",
        LIMIT,
    );
    let dir = TestDir::new("balance");
    let rt = runtime(2);
    let long = start_long(&dir, "long-started");
    const SHORT: u64 = 50;
    let go = dir.path("go");
    let shorts: Vec<ObjectRef<u64>> = (0..SHORT).map(|i| gated::remote(go.clone(), i)).collect();
    // The first short task holds the other CPU until `go`; the next two are queued, one on
    // each busy worker (the emptier worker is picked first): one waits behind the long task.
    until_stats(&rt, "a short task queued on each worker", |s| s.queued >= 2);
    touch(&go);
    for (i, r) in shorts.iter().enumerate() {
        match rt.get_timeout(r, PATIENCE) {
            Ok(v) => assert_eq!(v, f(i as u64)),
            Err(e) => panic!(
                "short task {i} did not finish while the long task ran: {e:?}; {:?}",
                rt.stats().unwrap()
            ),
        }
    }
    // The long task still runs; the short task queued behind it was taken back to run.
    assert!(matches!(
        rt.get_timeout(&long, Duration::from_millis(1)),
        Err(Error::Timeout { .. })
    ));
    let s = rt.stats().unwrap();
    assert!(s.taken_back >= 1, "{s:?}");
    assert_eq!(
        rt.cancel(&long, CancelMode::default()).unwrap(),
        CancelOutcome::Cancelled
    );
    expect_cancelled(rt.get_timeout(&long, PATIENCE));
    let s = rt.stats().unwrap();
    assert_eq!((s.workers_died, s.tasks), (0, 0), "{s:?}");
}

/// Cancelling a task queued on a busy worker takes it back: it resolves to `TaskCancelled` at
/// once, while the task it was queued behind still runs, and its body never runs.
#[test]
fn a_cancelled_queued_task_resolves_at_once_and_never_runs() {
    let _w = watchdog(
        "a_cancelled_queued_task_resolves_at_once_and_never_runs",
        LIMIT,
    );
    let dir = TestDir::new("cancel");
    let rt = runtime(1);
    let a = start_long(&dir, "a-started");
    let mark = dir.path("b-ran");
    let b = leaves_a_mark::remote(mark.clone());
    // One CPU, held by A: B can only wait queued on A's worker.
    until_stats(&rt, "B queued behind A", |s| s.queued >= 1);
    assert_eq!(rayfork::cancel(&b).unwrap(), CancelOutcome::Cancelled);
    // Had it been left on the worker, B would resolve only after A, which runs until cancelled.
    expect_cancelled(rt.get_timeout(&b, PATIENCE));
    assert!(matches!(
        rt.get_timeout(&a, Duration::from_millis(1)),
        Err(Error::Timeout { .. })
    ));
    let s = rt.stats().unwrap();
    assert_eq!((s.taken_back, s.pipelined), (1, 0), "{s:?}");
    assert_eq!(rayfork::cancel(&a).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get_timeout(&a, PATIENCE));
    // The worker took its next task: had B been left there (claimed), it would run first.
    assert_eq!(rt.get_timeout(&small::remote(3), PATIENCE).unwrap(), f(3));
    assert!(!Path::new(&mark).exists(), "the cancelled queued task ran");
    let s = rt.stats().unwrap();
    assert_eq!((s.workers_died, s.tasks), (0, 0), "{s:?}");
}

/// When a worker dies, the tasks queued on it never started: they go back to the queue without
/// using an attempt, so with `max_retries(0)` they still run (once each) and succeed, while the
/// task that crashed fails with `WorkerCrashed`.
#[test]
fn tasks_queued_on_a_crashing_worker_run_elsewhere_without_using_an_attempt() {
    let _w = watchdog(
        "tasks_queued_on_a_crashing_worker_run_elsewhere_without_using_an_attempt",
        LIMIT,
    );
    let dir = TestDir::new("crash");
    let rt = runtime(1);
    let (started, go) = (dir.path("a-started"), dir.path("go"));
    let a = crash_on_go::options()
        .max_retries(0)
        .remote(started.clone(), go.clone());
    assert!(
        eventually(PATIENCE, || Path::new(&started).exists()),
        "task A never started"
    );
    let (b_runs, c_runs) = (dir.path("b-runs"), dir.path("c-runs"));
    let b = counted::options().max_retries(0).remote(b_runs.clone(), 1);
    let c = counted::options().max_retries(0).remote(c_runs.clone(), 2);
    // One CPU, held by A: B waits queued on A's worker (C too, if the worker has room for two,
    // else C waits in the scheduler's queue).
    until_stats(&rt, "B queued behind A", |s| s.queued >= 1);
    touch(&go);
    match rt.get_timeout(&a, PATIENCE) {
        Err(Error::WorkerCrashed {
            attempts, cause, ..
        }) => {
            assert_eq!(attempts, 1);
            assert!(cause.contains("SIGABRT"), "{cause}");
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    assert_eq!(rt.get_timeout(&b, PATIENCE).unwrap(), f(1));
    assert_eq!(rt.get_timeout(&c, PATIENCE).unwrap(), f(2));
    assert_eq!((runs(&b_runs), runs(&c_runs)), (1, 1));
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 1, "{s:?}");
    assert_eq!(s.tasks, 0, "{s:?}");
}

/// Actor calls queued on the actor's worker behind the running call keep their order and all
/// run: 500 `incr` calls return 1..=500 in submission order.
#[test]
fn actor_calls_queued_behind_a_running_call_keep_their_order() {
    let _w = watchdog(
        "actor_calls_queued_behind_a_running_call_keep_their_order",
        LIMIT,
    );
    let dir = TestDir::new("actor-order");
    let rt = runtime(2);
    let t = Tally::remote(0);
    let go = dir.path("go");
    let hold = t.hold(go.clone());
    const N: u64 = 500;
    let calls: Vec<ObjectRef<u64>> = (0..N).map(|_| t.incr()).collect();
    // No pool task runs: whatever is queued is a call behind `hold`.
    until_stats(&rt, "a call queued behind the running one", |s| {
        s.queued >= 1
    });
    touch(&go);
    assert_eq!(rt.get_timeout(&hold, PATIENCE).unwrap(), 0);
    assert_eq!(rt.get_all(&calls).unwrap(), (1..=N).collect::<Vec<_>>());
    let s = rt.stats().unwrap();
    assert!(s.queued >= 1 && s.pipelined >= 1, "{s:?}");
    assert_eq!(s.workers_died, 0, "{s:?}");
}

/// An actor call that blocks in `get` on a task while later calls of the same actor are queued
/// behind it: the blocked call takes them back, gets its value and returns, and the later calls
/// then run in order with the right values (no deadlock, no call lost or reordered).
#[test]
fn an_actor_call_blocking_in_get_with_calls_queued_behind_it_completes() {
    let _w = watchdog(
        "an_actor_call_blocking_in_get_with_calls_queued_behind_it_completes",
        LIMIT,
    );
    let dir = TestDir::new("actor-get");
    let rt = runtime(2);
    let t = Tally::remote(0);
    let (go_call, go_task) = (dir.path("go-call"), dir.path("go-task"));
    // A pool task that finishes only once the driver says so: the call's `get` really waits.
    let value = gated::remote(go_task.clone(), 10);
    let first = t.add_result(go_call.clone(), vec![value.clone()]);
    const N: u64 = 100;
    let calls: Vec<ObjectRef<u64>> = (0..N).map(|_| t.incr()).collect();
    // The only pool task waits alone on its worker: whatever is queued is an actor call.
    until_stats(&rt, "a call queued behind the first", |s| s.queued >= 1);
    touch(&go_call);
    // The first call blocks in `get`: the calls queued behind it are taken back.
    until_stats(&rt, "the queued calls taken back", |s| s.taken_back >= 1);
    touch(&go_task);
    let base = f(10);
    assert_eq!(rt.get_timeout(&first, PATIENCE).unwrap(), base);
    assert_eq!(
        rt.get_all(&calls).unwrap(),
        (1..=N).map(|i| base + i).collect::<Vec<_>>()
    );
    assert_eq!(rt.get(&t.incr()).unwrap(), base + N + 1);
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 0, "{s:?}");
}

/// A soak of the take-back paths: a recursive workload whose nodes block in `get` and `wait`
/// on children and small tasks (queued behind them, taken back, run on other or nested
/// workers), beside a burst of small tasks from the driver, on 2 CPUs with the default and the
/// smallest worker pool. Every result is checked and nothing is left afterwards.
#[test]
fn a_recursive_workload_mixing_nested_gets_and_small_tasks_is_right() {
    let _w = watchdog(
        "a_recursive_workload_mixing_nested_gets_and_small_tasks_is_right",
        LIMIT,
    );
    const DEPTH: u32 = 3;
    for max_workers in [None, Some(2)] {
        let mut cfg = Runtime::builder().num_cpus(2).store_capacity(64 << 20);
        if let Some(m) = max_workers {
            cfg = cfg.max_workers(m);
        }
        let rt = cfg.start().unwrap();
        for round in 0..3u64 {
            let roots: Vec<ObjectRef<u64>> = (0..2).map(|r| node::remote(r, DEPTH)).collect();
            let burst: Vec<ObjectRef<u64>> =
                (0..300).map(|i| small::remote(round * 1000 + i)).collect();
            assert_eq!(
                rt.get_all(&burst).unwrap(),
                (0..300).map(|i| f(round * 1000 + i)).collect::<Vec<_>>()
            );
            assert_eq!(
                rt.get_all(&roots).unwrap(),
                vec![node_value(0, DEPTH), node_value(1, DEPTH)],
                "{max_workers:?} round {round}"
            );
        }
        let s = rt.stats().unwrap();
        if max_workers.is_none() {
            // With two workers the blocked nodes mostly run their children nested on their own
            // stacks (scheduler rule 2), so few tasks are queued there, and those are taken back.
            assert!(s.queued > 0 && s.pipelined > 0, "{s:?}");
        }
        assert_eq!(
            s.pipelined + s.taken_back,
            s.queued,
            "{max_workers:?}: {s:?}"
        );
        assert_eq!((s.workers_died, s.tasks), (0, 0), "{max_workers:?}: {s:?}");
        assert_eq!((s.objects, s.store.used), (0, 0), "{max_workers:?}: {s:?}");
        eprintln!("soak {max_workers:?}: {s:?}");
    }
}

/// Waits until the other side of a rendezvous exists (both tasks run at once).
#[remote]
fn meet(me: String, other: String) -> u32 {
    touch(&me);
    await_file(&other);
    std::process::id()
}

/// Submits one small child, waits for `go`, then `get`s it.
#[remote]
fn parent_of_one(go: String) -> rayfork::Result<u64> {
    let kid = small::remote(5);
    await_file(&go);
    rayfork::get(&kid)
}

/// A frame that blocks frees a CPU for the tasks queued on *other* workers too: a child queued
/// behind an unrelated task that runs until cancelled is moved and run (on a new worker or
/// nested on the blocked one) instead of waiting behind it forever.
#[test]
fn a_blocked_frames_cpu_serves_tasks_queued_on_other_workers() {
    let _w = watchdog(
        "a_blocked_frames_cpu_serves_tasks_queued_on_other_workers",
        LIMIT,
    );
    let dir = TestDir::new("blocked-cpu");
    let rt = runtime(2);
    // Both workers ready (the two meet), so the long task takes the lowest slot and the
    // parent the other; the child then queues on the lowest: behind the long task.
    let (m1, m2) = (dir.path("meet-1"), dir.path("meet-2"));
    let pids = rt
        .get_all(&[meet::remote(m1.clone(), m2.clone()), meet::remote(m2, m1)])
        .unwrap();
    assert_ne!(pids[0], pids[1]);
    let long = start_long(&dir, "long-started");
    let go = dir.path("go");
    let parent = parent_of_one::remote(go.clone());
    until_stats(&rt, "the child queued", |s| s.queued >= 1);
    touch(&go);
    assert_eq!(rt.get_timeout(&parent, PATIENCE).unwrap(), f(5));
    let s = rt.stats().unwrap();
    assert!(s.taken_back >= 1, "{s:?}");
    assert_eq!(rayfork::cancel(&long).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get_timeout(&long, PATIENCE));
}

/// A queued task whose result nobody holds any more still runs (a submitted task runs, as in
/// Ray), and its result is freed when it ends.
#[test]
fn a_queued_task_nobody_holds_a_ref_to_still_runs() {
    let _w = watchdog("a_queued_task_nobody_holds_a_ref_to_still_runs", LIMIT);
    let dir = TestDir::new("unwanted");
    let rt = runtime(1);
    let a = start_long(&dir, "a-started");
    let mark = dir.path("b-ran");
    let b = leaves_a_mark::remote(mark.clone());
    until_stats(&rt, "B queued behind A", |s| s.queued >= 1);
    drop(b);
    assert_eq!(rayfork::cancel(&a).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get_timeout(&a, PATIENCE));
    // The worker's next task runs after anything left on it: B has run by then.
    assert_eq!(rt.get_timeout(&small::remote(3), PATIENCE).unwrap(), f(3));
    assert!(
        Path::new(&mark).exists(),
        "the queued task nobody held did not run"
    );
    drop(a);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

/// A task submitted as a statement (its ref dropped at once) runs, whether or not a worker
/// was idle when it was submitted.
#[test]
fn a_fire_and_forget_task_runs() {
    let _w = watchdog("a_fire_and_forget_task_runs", LIMIT);
    let dir = TestDir::new("forget");
    let rt = runtime(1);
    let a = start_long(&dir, "a-started");
    let marks: Vec<String> = (0..5).map(|i| dir.path(&format!("ran-{i}"))).collect();
    for m in &marks {
        let _ = leaves_a_mark::remote(m.clone());
    }
    assert_eq!(rayfork::cancel(&a).unwrap(), CancelOutcome::Cancelled);
    drop(a);
    assert!(
        eventually(LIMIT, || marks.iter().all(|m| Path::new(m).exists())),
        "a task submitted and dropped did not run"
    );
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

/// `Config::pipeline_depth(0)` turns pipelining off: tasks go only to idle workers.
#[test]
fn pipeline_depth_zero_queues_nothing() {
    let _w = watchdog("pipeline_depth_zero_queues_nothing", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .pipeline_depth(0)
        .start()
        .expect("start a runtime");
    let refs: Vec<ObjectRef<u64>> = (0..500).map(small::remote).collect();
    let got = rt.get_all(&refs).unwrap();
    assert!(got.iter().enumerate().all(|(i, &v)| v == f(i as u64)));
    let s = rt.stats().unwrap();
    assert_eq!((s.queued, s.pipelined, s.taken_back), (0, 0, 0), "{s:?}");
}

#[remote(num_returns = 2)]
fn two(mark: String) -> (u64, u64) {
    touch(&mark);
    (1, 2)
}

/// A task with two returns queued on a worker, whose refs are dropped one after the other,
/// still runs and leaves no object behind.
#[test]
fn a_queued_multi_return_task_dropped_ref_by_ref_runs_and_leaves_nothing() {
    let _w = watchdog(
        "a_queued_multi_return_task_dropped_ref_by_ref_runs_and_leaves_nothing",
        LIMIT,
    );
    let dir = TestDir::new("multi-return");
    let rt = runtime(1);
    let a = start_long(&dir, "a-started");
    let mark = dir.path("two-ran");
    let (first, second) = two::remote(mark.clone());
    until_stats(&rt, "the task queued behind A", |s| s.queued >= 1);
    drop(first);
    drop(second);
    assert_eq!(rayfork::cancel(&a).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get_timeout(&a, PATIENCE));
    assert_eq!(rt.get_timeout(&small::remote(3), PATIENCE).unwrap(), f(3));
    assert!(
        Path::new(&mark).exists(),
        "the task whose refs were dropped did not run"
    );
    drop(a);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}
