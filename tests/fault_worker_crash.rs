//! Worker crashes: every death cause is detected, the worker replaced, the task retried within
//! `max_retries`, and then reported as `Error::WorkerCrashed` with the cause.

use std::path::PathBuf;
use std::time::Duration;

use rayfork::{Error, Runtime, remote};
use rayfork_tests::{assert_store_empty, watchdog};

const LIMIT: Duration = Duration::from_secs(120);

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
enum Death {
    Kill,
    Segv,
    Abort,
    StackOverflow,
    Exit,
}

fn die(how: Death) -> ! {
    match how {
        Death::Kill => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        Death::Segv => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSEGV);
        }
        Death::Abort => std::process::abort(),
        Death::StackOverflow => {
            #[allow(unconditional_recursion)]
            fn recurse(n: u64) -> u64 {
                let buf = std::hint::black_box([n; 512]);
                recurse(buf[7] + 1) + buf[3]
            }
            std::hint::black_box(recurse(0));
        }
        Death::Exit => std::process::exit(3),
    }
    unreachable!("the process should be dead")
}

/// Crashes on the first attempt (no marker yet), succeeds on later ones.
#[remote]
fn crash_once(marker: String, how: Death) -> u32 {
    let p = PathBuf::from(&marker);
    if !p.exists() {
        std::fs::write(&p, b"attempted").unwrap();
        die(how);
    }
    std::process::id()
}

#[remote]
fn always_crash(how: Death) -> u32 {
    die(how)
}

#[remote]
fn pid() -> u32 {
    std::process::id()
}

fn marker(test: &str) -> String {
    rayfork_tests::fresh_path(test, "marker")
}

fn runtime() -> Runtime {
    Runtime::builder()
        .num_cpus(2)
        .store_capacity(64 << 20)
        .start()
        .unwrap()
}

fn check_cause(how: Death, cause: &str) {
    let want = match how {
        Death::Kill => "SIGKILL",
        Death::Segv => "SIGSEGV",
        Death::Abort => "SIGABRT",
        Death::StackOverflow => "SIG", // SIGSEGV or SIGABRT, by the guard page handler
        Death::Exit => "exited with code 3",
    };
    assert!(cause.contains(want), "{how:?}: cause {cause:?}");
}

#[test]
fn every_death_cause_is_retried_then_reported() {
    let _w = watchdog("every_death_cause_is_retried_then_reported", LIMIT);
    let rt = runtime();
    for how in [
        Death::Kill,
        Death::Segv,
        Death::Abort,
        Death::StackOverflow,
        Death::Exit,
    ] {
        // With a retry left: the second attempt succeeds, in another process.
        let m = marker(&format!("retry-{how:?}"));
        let ok = rt.get(&crash_once::options().max_retries(1).remote(m, how));
        assert!(ok.is_ok(), "{how:?}: {ok:?}");
        // Without retries: a typed error naming the cause, after exactly one attempt.
        let m = marker(&format!("noretry-{how:?}"));
        match rt.get(&crash_once::options().max_retries(0).remote(m, how)) {
            Err(Error::WorkerCrashed {
                task,
                attempts,
                cause,
            }) => {
                assert!(task.ends_with("crash_once"), "{task}");
                assert_eq!(attempts, 1);
                check_cause(how, &cause);
            }
            other => panic!("{how:?}: expected WorkerCrashed, got {other:?}"),
        }
    }
    // Retries exhausted: max_retries + 1 attempts.
    match rt.get(&always_crash::options().max_retries(2).remote(Death::Exit)) {
        Err(Error::WorkerCrashed { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    // The pool is back to its size and works.
    let pids = rt
        .get_all(&(0..6).map(|_| pid::remote()).collect::<Vec<_>>())
        .unwrap();
    assert!(pids.iter().all(|&p| p != std::process::id()));
    let s = rt.stats().unwrap();
    assert!(s.workers_died >= 11, "{s:?}");
    assert_eq!(s.workers, 2, "{s:?}");
    assert_eq!((s.store.used, s.objects), (0, 0), "{s:?}");
}

#[test]
fn default_max_retries_is_three() {
    let _w = watchdog("default_max_retries_is_three", LIMIT);
    let rt = runtime();
    match rt.get(&always_crash::remote(Death::Kill)) {
        Err(Error::WorkerCrashed {
            attempts, cause, ..
        }) => {
            assert_eq!(attempts, 4);
            check_cause(Death::Kill, &cause);
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
}

#[remote]
fn nested_crash(marker: String) -> rayfork::Result<u64> {
    // A parent whose child crashes once: the child's retry is invisible to the parent.
    let child = crash_once::options()
        .max_retries(1)
        .remote(marker, Death::Segv);
    let arr = rayfork::ArrayMut::from_fn(100_000, |i| i as u64)?.seal()?;
    rayfork::get(&child).map(|_| arr.iter().sum::<u64>())
}

#[test]
fn a_crash_in_a_nested_task_leaves_nothing_behind() {
    let _w = watchdog("a_crash_in_a_nested_task_leaves_nothing_behind", LIMIT);
    let rt = runtime();
    let m = marker("nested");
    assert_eq!(
        rt.get(&nested_crash::remote(m)).unwrap(),
        (0..100_000u64).sum::<u64>()
    );
    assert_store_empty(&rt);
}

/// Fails with `message` on every attempt, counting attempts in the marker file.
#[remote]
fn fails_counting(marker: String, message: String, succeed_on: u32) -> Result<u32, String> {
    let n = std::fs::read_to_string(&marker)
        .map(|s| s.len() as u32)
        .unwrap_or(0)
        + 1;
    std::fs::write(&marker, "x".repeat(n as usize)).unwrap();
    if n >= succeed_on {
        Ok(n)
    } else {
        Err(format!("{message} (attempt {n})"))
    }
}

fn attempts(marker: &str) -> usize {
    std::fs::read_to_string(marker).map_or(0, |s| s.len())
}

#[test]
fn retry_exceptions_matching_retries_only_matching_errors() {
    let _w = watchdog(
        "retry_exceptions_matching_retries_only_matching_errors",
        LIMIT,
    );
    let rt = runtime();
    let opts = || {
        fails_counting::options()
            .max_retries(3)
            .retry_exceptions_matching(["connection reset", "busy"])
    };
    // A matching error is retried, and the third attempt succeeds.
    let m = marker("match-ok");
    let r = opts().remote(m.clone(), "connection reset by peer".to_string(), 3);
    assert_eq!(rt.get(&r).unwrap(), 3);
    assert_eq!(attempts(&m), 3);
    // A matching error that persists: max_retries + 1 attempts, then the task's own error.
    let m = marker("match-fail");
    let r = opts().remote(m.clone(), "server busy".to_string(), 99);
    match rt.get(&r) {
        Err(Error::TaskFailed { message, .. }) => assert!(message.contains("attempt 4")),
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    assert_eq!(attempts(&m), 4);
    // Another error is not retried at all.
    let m = marker("nomatch");
    let r = opts().remote(m.clone(), "bad input".to_string(), 2);
    assert!(matches!(rt.get(&r), Err(Error::TaskFailed { .. })));
    assert_eq!(attempts(&m), 1);
    // retry_exceptions(true) retries every error.
    let m = marker("all");
    let r = fails_counting::options()
        .max_retries(1)
        .retry_exceptions(true)
        .remote(m.clone(), "bad input".to_string(), 2);
    assert_eq!(rt.get(&r).unwrap(), 2);
    assert_eq!(attempts(&m), 2);
}

/// Says a few things on stderr, then dies.
#[remote]
fn chatty_crash(tag: String) -> u32 {
    for i in 0..12 {
        eprintln!("{tag}: line {i}");
    }
    eprint!("{tag}: last words");
    std::process::abort()
}

#[test]
fn the_crash_cause_quotes_the_last_stderr_lines() {
    let _w = watchdog("the_crash_cause_quotes_the_last_stderr_lines", LIMIT);
    let rt = runtime();
    let tag = format!("chatty-{}", std::process::id());
    match rt.get(&chatty_crash::options().max_retries(0).remote(tag.clone())) {
        Err(Error::WorkerCrashed { cause, .. }) => {
            assert!(cause.contains("SIGABRT"), "{cause}");
            assert!(cause.contains(&format!("{tag}: line 11")), "{cause}");
            assert!(cause.contains(&format!("{tag}: last words")), "{cause}");
            // Only the last ten lines are kept.
            assert!(!cause.contains(&format!("{tag}: line 2\n")), "{cause}");
            assert!(!cause.contains(&format!("{tag}: line 0")), "{cause}");
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
}

/// When the fork server dies, every task that cannot run any more, and every later one,
/// fails with `RuntimeStopped`, which says to start a new runtime; nothing hangs.
#[test]
fn a_dead_fork_server_stops_the_runtime_with_a_typed_error() {
    let _w = watchdog("a_dead_fork_server_stops_the_runtime", LIMIT);
    let rt = runtime();
    let worker = rt.get(&pid::remote()).unwrap() as i32;
    let fork_server = rayfork_tests::parent_of(worker).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fork_server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Until the scheduler sees it, a task may still run (or be retried): either way it ends.
    let gone = rayfork_tests::eventually(LIMIT, || {
        matches!(rt.get(&pid::remote()), Err(Error::RuntimeStopped { .. }))
    });
    assert!(gone, "the runtime never said it stopped");
    match rt.get(&pid::remote()) {
        Err(Error::RuntimeStopped { reason }) => {
            assert!(reason.contains("fork server"), "{reason}")
        }
        other => panic!("expected RuntimeStopped, got {other:?}"),
    }
    // Its workers die with it (PR_SET_PDEATHSIG), a moment later.
    assert!(rayfork_tests::eventually(LIMIT, || !rayfork_tests::alive(
        worker
    )));
}
