//! Worker crashes: every death cause is detected, the worker replaced, the task retried within
//! `max_retries`, and then reported as `Error::WorkerCrashed` with the cause.

use std::path::PathBuf;
use std::time::Duration;

use rayfork::{Error, Runtime, remote};
use rayfork_tests::watchdog;

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
    let dir = std::env::temp_dir().join(format!("rayfork-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("marker");
    let _ = std::fs::remove_file(&p);
    p.to_string_lossy().into_owned()
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
    let s = rt.stats().unwrap();
    assert_eq!(
        (s.store.used, s.store.live_objects, s.objects),
        (0, 0, 0),
        "{s:?}"
    );
}
