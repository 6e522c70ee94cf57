//! Workers start like programs: std's signal defaults, the user's init hook, thread pools
//! sized to the task, and an exit that runs `atexit` handlers.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rayfork::{Runtime, remote};
use rayfork_tests::{eventually, fresh_path, watchdog};

const LIMIT: Duration = Duration::from_secs(300);

static SET_UP: AtomicBool = AtomicBool::new(false);

fn setup() {
    SET_UP.store(true, Ordering::Relaxed);
}
rayfork::worker_init!(setup);

#[remote]
fn was_set_up() -> bool {
    SET_UP.load(Ordering::Relaxed)
}

/// Writes into a pipe whose reader is gone: with std's default (SIGPIPE ignored) the write
/// fails with `BrokenPipe`; with the kernel's default the process dies.
#[remote]
fn write_to_a_closed_pipe() -> String {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut w = writer;
    match w.write_all(b"anyone?") {
        Ok(()) => "written".to_string(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

#[remote]
fn thread_pool_vars() -> (Option<String>, Option<String>) {
    (
        std::env::var("RAYON_NUM_THREADS").ok(),
        std::env::var("OMP_NUM_THREADS").ok(),
    )
}

static AT_EXIT_PATH: Mutex<String> = Mutex::new(String::new());

extern "C" fn leave_a_mark() {
    let path = AT_EXIT_PATH.lock().map(|p| p.clone()).unwrap_or_default();
    let _ = std::fs::write(path, b"atexit ran");
}

/// Registers an `atexit` handler that leaves a mark when the process exits.
#[remote]
fn register_at_exit(path: String) -> u32 {
    *AT_EXIT_PATH.lock().unwrap() = path;
    // SAFETY: `leave_a_mark` is a plain `extern "C" fn()` that only writes a file.
    unsafe { libc::atexit(leave_a_mark) };
    std::process::id()
}

#[test]
fn workers_start_and_end_like_programs() {
    let _w = watchdog("workers_start_and_end_like_programs", LIMIT);
    let rt = Runtime::builder().num_cpus(2).start().unwrap();
    assert!(
        !SET_UP.load(Ordering::Relaxed),
        "the hook ran in the driver"
    );
    assert!(
        rt.get(&was_set_up::remote()).unwrap(),
        "the init hook did not run"
    );
    assert_eq!(
        rt.get(&write_to_a_closed_pipe::options().max_retries(0).remote())
            .unwrap(),
        "BrokenPipe"
    );
    let want = |n: &str, var: &str| std::env::var(var).unwrap_or_else(|_| n.to_string());
    let (rayon, omp) = rt
        .get(&thread_pool_vars::options().num_cpus(2.0).remote())
        .unwrap();
    assert_eq!(rayon, Some(want("2", "RAYON_NUM_THREADS")));
    assert_eq!(omp, Some(want("2", "OMP_NUM_THREADS")));
    // A worker retired after its one call exits through `exit`: `atexit` handlers run.
    let mark = fresh_path("worker-atexit", "mark");
    let pid = rt
        .get(
            &register_at_exit::options()
                .max_calls(1)
                .remote(mark.clone()),
        )
        .unwrap();
    assert!(
        eventually(LIMIT, || std::path::Path::new(&mark).exists()),
        "the atexit handler of worker {pid} never ran"
    );
}
