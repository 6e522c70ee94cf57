//! Helpers shared by the integration tests: a watchdog, and process checks.

use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

/// Aborts the whole test binary with a message if not dropped within `limit`: a safety net
/// against hangs, never a timing assertion.
pub struct Watchdog {
    _done: Sender<()>,
}

/// Starts a watchdog for the test `name`.
pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("watchdog: test {name} still running after {limit:?}; aborting");
            std::process::abort();
        }
    });
    Watchdog { _done: tx }
}

/// True while `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// The parent pid of `pid`.
pub fn parent_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pids of the children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let p = t.path().join("children");
            if let Ok(s) = std::fs::read_to_string(p) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Polls `cond` until it holds or `limit` passes (a safety net: the result is asserted).
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Asserts that nothing is left in the runtime's store or object table. The driver's drops
/// reach the scheduler before this request (one channel, in order).
pub fn assert_store_empty(rt: &rayfork::Runtime) {
    let s = rt.stats().expect("stats");
    assert_eq!(
        (s.store.used, s.store.live_objects, s.objects),
        (0, 0, 0),
        "{s:?}"
    );
}

/// Waits (up to `limit`, a safety net) until the runtime holds no store memory, object or
/// task, and fails with its counters if it does not get there.
pub fn assert_runtime_drains(rt: &rayfork::Runtime, limit: Duration) {
    let empty = eventually(limit, || {
        let s = rt.stats().expect("stats");
        (s.store.used, s.objects, s.tasks) == (0, 0, 0)
    });
    assert!(empty, "the runtime still holds: {:?}", rt.stats());
}

/// A path named `name` in a fresh directory of this test process (removed if it exists).
pub fn fresh_path(test: &str, name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("rayfork-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p.to_string_lossy().into_owned()
}

/// In a task: appends this process's pid to `path` (one line per run, so retries show).
pub fn note_run(path: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the runs file");
    writeln!(f, "{}", std::process::id()).expect("write the runs file");
}

/// How many runs a task noted in `path` with `note_run`.
pub fn runs(path: &str) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Starts `sleep 1000` with no stdio (so it holds no pipe of the test's) and returns its pid:
/// a child process for a task to leave behind.
pub fn spawn_sleeper() -> u32 {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    std::mem::forget(child);
    pid
}
