//! The runtime's own bugs (README.md of runtime/src/scheduler, "The runtime's own bugs"): a
//! panic on the scheduler thread fails every waiting and later call with
//! `Error::SchedulerPanicked`, carrying the panic's message, and stops the fork server and the
//! workers. The panic is injected through a hidden hook standing in for a bug.

use std::time::Duration;

use rayfork::{Error, Runtime, remote};
use rayfork_tests::{alive, children_of, eventually, watchdog};

const LIMIT: Duration = Duration::from_secs(120);

/// Notes that it runs, then never returns.
#[remote]
fn stuck(marker: String) -> u32 {
    std::fs::write(&marker, b"running").unwrap();
    loop {
        std::thread::park();
    }
}

#[remote]
fn add(a: u32, b: u32) -> u32 {
    a + b
}

fn assert_panicked<T: std::fmt::Debug>(what: &str, r: rayfork::Result<T>) {
    match r {
        Err(Error::SchedulerPanicked { message }) => {
            assert!(
                message.contains("injected scheduler bug"),
                "{what}: {message}"
            )
        }
        other => panic!("{what}: expected SchedulerPanicked, got {other:?}"),
    }
}

#[test]
fn a_scheduler_panic_fails_every_call_with_a_named_error_and_stops_the_processes() {
    let _w = watchdog("scheduler_panic", LIMIT);
    let rt = Runtime::builder().num_cpus(2).start().unwrap();
    let dir = std::env::temp_dir().join(format!("rayfork-sched-panic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("started");
    let r = stuck::remote(marker.to_string_lossy().into_owned());
    assert!(eventually(LIMIT, || marker.exists()), "the task never ran");
    // This test binary runs one runtime: its fork server is our only child.
    let fork_server = children_of(std::process::id() as i32);
    assert_eq!(fork_server.len(), 1, "one fork server: {fork_server:?}");
    let fork_server = fork_server[0];
    let workers = children_of(fork_server);
    assert!(!workers.is_empty());

    let answer = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            rt.enter();
            rt.get(&r)
        });
        rayfork::__private::inject_scheduler_panic(&rt, "injected scheduler bug").unwrap();
        waiter.join().unwrap()
    });
    assert_panicked("a get waiting when the scheduler panicked", answer);
    assert_panicked("a later get", rt.get(&r));
    assert_panicked("stats", rt.stats());
    assert_panicked("a later task", rt.get(&add::remote(1, 2)));
    assert!(
        eventually(LIMIT, || !alive(fork_server)
            && workers.iter().all(|&p| !alive(p))),
        "processes left: fork server {fork_server}, workers {workers:?}"
    );
    drop(r);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
