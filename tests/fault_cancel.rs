//! Cancellation: queued and waiting tasks never run, running ones stop cooperatively or are
//! killed after the grace period (or at once with `force`), the cancel is recursive, and a
//! finished task is left alone. Real processes; tasks report through files in a per-test
//! directory, and the tests wait with `get` or `eventually`, never with a sleep.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayfork::{CancelMode, CancelOutcome, Error, ObjectRef, Runtime, remote};
use rayfork_tests::{alive, eventually, note_run, runs, watchdog};

const LIMIT: Duration = Duration::from_secs(120);
/// A safety net for `eventually`: generous, because the machine may be loaded.
const PATIENCE: Duration = Duration::from_secs(60);
/// A grace period no test may wait out: if a cancel relied on it, the watchdog would fire.
const FOREVER: Duration = Duration::from_secs(3600);

/// A fresh directory for one test.
fn test_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rayfork-cancel-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Writes this process's pid to `path`, atomically (the test reads it as soon as it exists).
fn announce(path: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, std::process::id().to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits for a task's announcement and returns the pid it wrote.
fn announced(path: &str) -> i32 {
    assert!(
        eventually(PATIENCE, || Path::new(path).exists()),
        "{path} never appeared"
    );
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

fn runtime(grace: Duration) -> Runtime {
    Runtime::builder()
        .num_cpus(2)
        .store_capacity(64 << 20)
        .cancel_grace(grace)
        .start()
        .unwrap()
}

fn expect_cancelled<T: std::fmt::Debug>(r: rayfork::Result<T>) {
    match r {
        Err(Error::TaskCancelled { .. }) => {}
        other => panic!("expected TaskCancelled, got {other:?}"),
    }
}

#[remote]
fn pid() -> u32 {
    std::process::id()
}

#[remote]
fn value(x: u64) -> u64 {
    x
}

/// Announces itself, then runs until `release` exists (sleeping: it simulates work).
#[remote]
fn blocker(started: String, release: String) -> u64 {
    announce(&started);
    while !Path::new(&release).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    1
}

/// Leaves a mark if it ever runs.
#[remote]
fn mark(path: String, _dep: u64) -> u64 {
    std::fs::write(path, b"ran").unwrap();
    2
}

/// Polls `is_cancelled` like a well-behaved long loop, notes that it saw it, and returns.
#[remote]
fn polite(started: String, saw: String) -> u64 {
    announce(&started);
    while !rayfork::is_cancelled() {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(saw, b"saw").unwrap();
    42
}

/// Sleeps in one long system call, never looking at the flag.
#[remote]
fn sleeper(started: String) -> u64 {
    announce(&started);
    std::thread::sleep(Duration::from_secs(3600));
    3
}

/// Blocks in `read` on a socket that never gets data.
#[remote]
fn reader(started: String) -> u64 {
    let (mut a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    announce(&started);
    let mut buf = [0u8; 1];
    let _ = a.read(&mut buf);
    4
}

/// A native loop that never polls and never makes a system call.
#[remote]
fn spinner(started: String) -> u64 {
    announce(&started);
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Submits `n` children that each announce themselves and sleep forever, then waits for them.
#[remote]
fn tree_parent(dir: String, n: u32) -> rayfork::Result<u64> {
    announce(&format!("{dir}/parent"));
    let kids: Vec<ObjectRef<u64>> = (0..n)
        .map(|i| tree_child::remote(format!("{dir}/child-{i}")))
        .collect();
    Ok(rayfork::get_all(&kids)?.iter().sum())
}

#[remote]
fn tree_child(started: String) -> u64 {
    // A second run (a retry) would show as a second line.
    note_run(&format!("{started}.runs"));
    announce(&started);
    std::thread::sleep(Duration::from_secs(3600));
    5
}

#[test]
fn a_queued_task_is_removed_and_never_runs() {
    let _w = watchdog("a_queued_task_is_removed_and_never_runs", LIMIT);
    let dir = test_dir("queued");
    let rt = runtime(FOREVER);
    let release = path(&dir, "release");
    // Fill both CPUs.
    let blockers: Vec<_> = (0..2)
        .map(|i| blocker::remote(path(&dir, &format!("b{i}")), release.clone()))
        .collect();
    announced(&path(&dir, "b0"));
    announced(&path(&dir, "b1"));
    // Queued for a CPU, and waiting for an argument.
    let queued = mark::remote(path(&dir, "queued-ran"), 0);
    let waiting = mark::remote(path(&dir, "waiting-ran"), &blockers[0]);
    assert_eq!(rayfork::cancel(&queued).unwrap(), CancelOutcome::Cancelled);
    assert_eq!(rayfork::cancel(&waiting).unwrap(), CancelOutcome::Cancelled);
    // Resolved at once, while the blockers still hold the CPUs.
    expect_cancelled(rt.get(&queued));
    expect_cancelled(rt.get(&waiting));
    std::fs::write(&release, b"go").unwrap();
    assert_eq!(rt.get_all(&blockers).unwrap(), vec![1, 1]);
    // A task submitted after them has run: had they been left in the queue, they would have run
    // first.
    assert_eq!(rt.get(&value::remote(9)).unwrap(), 9);
    assert!(!Path::new(&path(&dir, "queued-ran")).exists());
    assert!(!Path::new(&path(&dir, "waiting-ran")).exists());
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 0, "{s:?}");
    assert_eq!((s.tasks, s.store.used), (0, 0), "{s:?}");
}

#[test]
fn a_polling_task_stops_cooperatively_and_its_worker_lives() {
    let _w = watchdog(
        "a_polling_task_stops_cooperatively_and_its_worker_lives",
        LIMIT,
    );
    let dir = test_dir("cooperative");
    // A grace period no test waits out: only the cooperative path can end this task.
    let rt = runtime(FOREVER);
    let (started, saw) = (path(&dir, "started"), path(&dir, "saw"));
    let r = polite::remote(started.clone(), saw.clone());
    let worker = announced(&started);
    assert!(!Path::new(&saw).exists());
    assert_eq!(rayfork::cancel(&r).unwrap(), CancelOutcome::Cancelled);
    // It returned 42, but a cancelled task resolves to TaskCancelled whatever it returns.
    expect_cancelled(rt.get(&r));
    assert!(Path::new(&saw).exists(), "the task never saw the flag");
    assert!(alive(worker));
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 0, "{s:?}");
    // The flag was the cancelled task's alone: the next task on that worker is not cancelled.
    let again = polite::remote(path(&dir, "started2"), path(&dir, "saw2"));
    announced(&path(&dir, "started2"));
    assert_eq!(
        rt.get_timeout(&again, Duration::from_millis(50))
            .unwrap_err(),
        Error::Timeout { millis: 50 }
    );
    assert_eq!(
        rt.cancel(&again, CancelMode::default()).unwrap(),
        CancelOutcome::Cancelled
    );
    expect_cancelled(rt.get(&again));
    assert_eq!(rt.stats().unwrap().workers_died, 0);
}

#[test]
fn a_task_blocked_in_a_system_call_is_killed_after_the_grace_period() {
    let _w = watchdog(
        "a_task_blocked_in_a_system_call_is_killed_after_the_grace_period",
        LIMIT,
    );
    let dir = test_dir("syscall");
    let rt = runtime(Duration::from_millis(50));
    let sleeping = sleeper::remote(path(&dir, "sleeper"));
    let reading = reader::remote(path(&dir, "reader"));
    let pids = [
        announced(&path(&dir, "sleeper")),
        announced(&path(&dir, "reader")),
    ];
    assert_eq!(
        rayfork::cancel(&sleeping).unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(rayfork::cancel(&reading).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get(&sleeping));
    expect_cancelled(rt.get(&reading));
    for p in pids {
        assert!(eventually(PATIENCE, || !alive(p)), "worker {p} still alive");
    }
    // Replaced, not retried: the pool works and nothing is left.
    assert_eq!(rt.get(&value::remote(1)).unwrap(), 1);
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 2, "{s:?}");
    assert_eq!((s.tasks, s.store.used), (0, 0), "{s:?}");
}

#[test]
fn force_kills_at_once() {
    let _w = watchdog("force_kills_at_once", LIMIT);
    let dir = test_dir("force");
    // With a grace period of an hour, only `force` can make `get` return.
    let rt = runtime(FOREVER);
    let spinning = spinner::remote(path(&dir, "spinner"));
    let polling = polite::remote(path(&dir, "polite"), path(&dir, "saw"));
    let pids = [
        announced(&path(&dir, "spinner")),
        announced(&path(&dir, "polite")),
    ];
    let force = CancelMode::default().force();
    assert_eq!(
        rt.cancel(&spinning, force).unwrap(),
        CancelOutcome::Cancelled
    );
    expect_cancelled(rt.get(&spinning));
    assert!(eventually(PATIENCE, || !alive(pids[0])));
    // Force does not wait for a polite task either.
    assert_eq!(
        rt.cancel(&polling, force).unwrap(),
        CancelOutcome::Cancelled
    );
    expect_cancelled(rt.get(&polling));
    assert!(eventually(PATIENCE, || !alive(pids[1])));
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 2, "{s:?}");
    assert_eq!(s.tasks, 0, "{s:?}");
    // A second cancel of a cancelled task: its result is there, so it has finished.
    assert_eq!(
        rt.cancel(&spinning, force).unwrap(),
        CancelOutcome::AlreadyFinished
    );
}

#[test]
fn cancel_is_recursive_over_submitted_tasks() {
    let _w = watchdog("cancel_is_recursive_over_submitted_tasks", LIMIT);
    let dir = test_dir("recursive");
    let rt = runtime(Duration::from_millis(50));
    let d = dir.to_string_lossy().into_owned();
    let parent = tree_parent::remote(d.clone(), 3);
    let parent_pid = announced(&format!("{d}/parent"));
    // The parent waits in get_all, so its CPU is free: two children run, the third is queued.
    let kids = [
        announced(&format!("{d}/child-0")),
        announced(&format!("{d}/child-1")),
    ];
    assert_eq!(rayfork::cancel(&parent).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get(&parent));
    // Every child is gone and none was retried: no task is left in the table.
    assert!(eventually(PATIENCE, || rt.stats().unwrap().tasks == 0));
    for p in kids.into_iter().chain([parent_pid]) {
        assert!(
            eventually(PATIENCE, || !alive(p)),
            "process {p} still alive"
        );
    }
    for i in 0..3 {
        let n = runs(&format!("{d}/child-{i}.runs"));
        assert!(n <= 1, "child {i} ran again: {n} runs");
    }
    assert!(
        !Path::new(&format!("{d}/child-2")).exists(),
        "the queued child ran"
    );
    drop(parent);
    let s = rt.stats().unwrap();
    assert_eq!((s.tasks, s.objects, s.store.used), (0, 0, 0), "{s:?}");
    // The pool is whole again.
    assert_eq!(rt.get(&value::remote(3)).unwrap(), 3);
}

#[test]
fn a_non_recursive_cancel_spares_the_children() {
    let _w = watchdog("a_non_recursive_cancel_spares_the_children", LIMIT);
    let dir = test_dir("nonrecursive");
    let rt = runtime(Duration::from_millis(50));
    let d = dir.to_string_lossy().into_owned();
    let parent = tree_parent::remote(d.clone(), 2);
    announced(&format!("{d}/parent"));
    let kids = [
        announced(&format!("{d}/child-0")),
        announced(&format!("{d}/child-1")),
    ];
    let mode = CancelMode::default().recursive(false).force();
    assert_eq!(rt.cancel(&parent, mode).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get(&parent));
    // The children still run (nobody waits for them any more; they finish unobserved).
    assert!(kids.iter().all(|&p| alive(p)));
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 1, "{s:?}");
}

#[test]
fn cancelling_a_finished_task_does_nothing_and_says_so() {
    let _w = watchdog("cancelling_a_finished_task_does_nothing_and_says_so", LIMIT);
    let rt = runtime(FOREVER);
    let r = value::remote(5);
    assert_eq!(rt.get(&r).unwrap(), 5);
    assert_eq!(rayfork::cancel(&r).unwrap(), CancelOutcome::AlreadyFinished);
    let force = CancelMode::default().force();
    assert_eq!(
        rt.cancel(&r, force).unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert_eq!(rt.get(&r).unwrap(), 5);
    // A put object is not a task: nothing to cancel.
    let p = rt.put(&7u64).unwrap();
    assert_eq!(rayfork::cancel(&p).unwrap(), CancelOutcome::AlreadyFinished);
    assert_eq!(rt.get(&p).unwrap(), 7);
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 0, "{s:?}");
}

#[test]
fn get_timeout_does_not_cancel_but_cancel_on_timeout_does() {
    let _w = watchdog(
        "get_timeout_does_not_cancel_but_cancel_on_timeout_does",
        LIMIT,
    );
    let dir = test_dir("timeout");
    let rt = runtime(Duration::from_millis(50));
    let release = path(&dir, "release");
    let r = blocker::remote(path(&dir, "b"), release.clone());
    announced(&path(&dir, "b"));
    assert!(matches!(
        rt.get_timeout(&r, Duration::from_millis(20)),
        Err(Error::Timeout { .. })
    ));
    std::fs::write(&release, b"go").unwrap();
    assert_eq!(rt.get(&r).unwrap(), 1);
    let s = sleeper::remote(path(&dir, "s"));
    announced(&path(&dir, "s"));
    assert!(matches!(
        rayfork::cancel_on_timeout(&s, Duration::from_millis(20)),
        Err(Error::Timeout { .. })
    ));
    expect_cancelled(rt.get(&s));
}

/// Runs `spin_until_cancelled` nested on its own (blocked) worker and has another task cancel
/// it: the nested frame sees the flag, the frame below does not.
#[remote]
fn nest_parent(dir: String) -> rayfork::Result<(bool, bool, bool)> {
    let victim = polite::options()
        .num_cpus(0.0)
        .remote(format!("{dir}/victim"), format!("{dir}/victim-saw"));
    let killer = cancel_it::remote(vec![victim.clone()]);
    // While this waits for the victim, the victim runs nested on this worker (what a frame
    // waits for may run nested on it; max_workers = 2, the other worker is busy), and the
    // killer waits for a CPU.
    let victim_cancelled = rayfork::get(&victim).is_err_and(|e| e.is_cancelled());
    let outcome = rayfork::get(&killer)?;
    Ok((
        rayfork::is_cancelled(),
        victim_cancelled,
        outcome == CancelOutcome::Cancelled,
    ))
}

#[remote]
fn cancel_it(refs: Vec<ObjectRef<u64>>) -> rayfork::Result<CancelOutcome> {
    rayfork::cancel(&refs[0])
}

#[test]
fn a_nested_frame_has_its_own_flag_and_tasks_can_cancel() {
    let _w = watchdog(
        "a_nested_frame_has_its_own_flag_and_tasks_can_cancel",
        LIMIT,
    );
    let dir = test_dir("nested");
    let rt = Runtime::builder()
        .num_cpus(2)
        .max_workers(2)
        .store_capacity(64 << 20)
        .cancel_grace(FOREVER)
        .start()
        .unwrap();
    let release = path(&dir, "release");
    // Keep the other worker busy until the victim runs nested on the parent's worker.
    let filler = blocker::remote(path(&dir, "filler"), release.clone());
    announced(&path(&dir, "filler"));
    let d = dir.to_string_lossy().into_owned();
    let parent = nest_parent::remote(d.clone());
    announced(&format!("{d}/victim"));
    std::fs::write(&release, b"go").unwrap();
    assert_eq!(rt.get(&filler).unwrap(), 1);
    assert_eq!(rt.get(&parent).unwrap(), (false, true, true));
    assert!(Path::new(&format!("{d}/victim-saw")).exists());
    let s = rt.stats().unwrap();
    assert!(s.nested_inline >= 1, "{s:?}");
    assert_eq!(s.workers_died, 0, "{s:?}");
}

/// Submits a guest and yields its ref, then waits for it (blocked in `get`, so the guest,
/// which it waits for, runs nested on top of it).
#[remote(streaming)]
fn host(dir: String) -> impl Iterator<Item = ObjectRef<u64>> {
    let g = guest::options()
        .num_cpus(0.0)
        .max_retries(0)
        .remote(format!("{dir}/guest"), format!("{dir}/guest-release"));
    let wait = g.clone();
    std::iter::once(g).chain(std::iter::once_with(move || {
        announce(&format!("{dir}/host"));
        let _ = rayfork::get(&wait);
        wait
    }))
}

/// Notes each run, announces itself, and returns once `release` exists.
#[remote]
fn guest(started: String, release: String) -> u64 {
    note_run(&format!("{started}.runs"));
    announce(&started);
    while !Path::new(&release).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    8
}

#[test]
fn frames_killed_with_a_cancelled_task_are_resubmitted() {
    let _w = watchdog("frames_killed_with_a_cancelled_task_are_resubmitted", LIMIT);
    let dir = test_dir("innocent");
    let rt = Runtime::builder()
        .num_cpus(2)
        .max_workers(2)
        .store_capacity(64 << 20)
        .cancel_grace(FOREVER)
        .start()
        .unwrap();
    let d = dir.to_string_lossy().into_owned();
    let release = path(&dir, "release");
    let filler = blocker::remote(path(&dir, "filler"), release.clone());
    announced(&path(&dir, "filler"));
    // No idle worker and no room for another: the guest, which the host waits for, runs
    // nested on the host's worker. With no retries left, only scheduler rule 9 (an innocent
    // frame uses no attempt) lets it run again.
    let mut hosting = host::remote(d.clone());
    let g: ObjectRef<u64> = rt.get(&hosting.next().unwrap().unwrap()).unwrap();
    let h = hosting.completion().clone();
    let host_pid = announced(&format!("{d}/host"));
    assert_eq!(announced(&format!("{d}/guest")), host_pid);
    std::fs::remove_file(format!("{d}/guest")).unwrap();
    let mode = CancelMode::default().force().recursive(false);
    assert_eq!(rt.cancel(&h, mode).unwrap(), CancelOutcome::Cancelled);
    expect_cancelled(rt.get(&h));
    assert!(eventually(PATIENCE, || !alive(host_pid)));
    // The guest runs again, on another worker, and gives its result.
    let second = announced(&format!("{d}/guest"));
    assert_ne!(second, host_pid);
    std::fs::write(format!("{d}/guest-release"), b"go").unwrap();
    assert_eq!(rt.get(&g).unwrap(), 8);
    assert_eq!(runs(&format!("{d}/guest.runs")), 2);
    std::fs::write(&release, b"go").unwrap();
    assert_eq!(rt.get(&filler).unwrap(), 1);
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 1, "{s:?}");
    assert_eq!(s.tasks, 0, "{s:?}");
}
