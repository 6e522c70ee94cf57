//! When the OS refuses to fork (here: too few file descriptors), the runtime backs off
//! instead of asking again at once forever, reports it, runs what it can on the workers it
//! has, and gives work that cannot run a typed error that names the limit.
//! One test per binary: it lowers this process's fd limit.

use std::time::Duration;

use rayfork::{Error, Runtime, remote};
use rayfork_tests::watchdog;

const LIMIT: Duration = Duration::from_secs(240);

/// Sums `depth` levels of a fan-out of `width` nested tasks (each leaf counts 1).
#[remote]
fn fan_out(depth: u32, width: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let kids: Vec<_> = (0..width)
        .map(|_| fan_out::remote(depth - 1, width))
        .collect();
    rayfork::get_all(&kids).unwrap().iter().sum()
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[test]
fn fork_failures_back_off_and_end_in_a_typed_error_or_a_result() {
    let _w = watchdog("fork_failures_back_off", LIMIT);
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open_fds() + 20, hard).unwrap();
    let rt = Runtime::builder().num_cpus(60).start().unwrap();
    let root = fan_out::remote(3, 4);
    let answer = rayfork::get_timeout(&root, Duration::from_secs(120));
    let stats = rt.stats().unwrap();
    match answer {
        Ok(n) => assert_eq!(n, 64),
        Err(Error::WorkerStartFailed { message, .. }) => {
            assert!(message.contains("open files"), "{message}")
        }
        other => panic!("expected the sum or WorkerStartFailed, got {other:?} ({stats:?})"),
    }
    assert!(
        stats.workers_started < 5_000,
        "fork requests did not back off: {stats:?}"
    );
}
