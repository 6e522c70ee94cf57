//! `Config::worker_program`: workers exec'd from an external program (tests/bin/worker.rs)
//! instead of the driver's own binary.

#[path = "program_fns.rs"]
mod program_fns;

use std::time::Duration;

use program_fns::{triple, whoami};
use rayfork::{Error, Runtime};
use rayfork_tests::{alive, children_of, watchdog};

const WORKER: &str = env!("CARGO_BIN_EXE_rayfork-test-worker");

/// A function the driver registers but the external worker program does not.
#[rayfork::remote]
fn only_in_driver() -> u8 {
    1
}

#[test]
fn tasks_run_in_the_external_worker_program() {
    let _w = watchdog(
        "tasks_run_in_the_external_worker_program",
        Duration::from_secs(120),
    );
    let rt = Runtime::builder()
        .num_cpus(2)
        .worker_program(WORKER)
        .start()
        .unwrap();
    let (pid, exe) = rt.get(&whoami::remote()).unwrap();
    assert_ne!(pid, std::process::id());
    let want = std::fs::canonicalize(WORKER).unwrap();
    assert_eq!(std::path::Path::new(&exe), want, "worker runs {exe}");

    // Refs as arguments work across the external program too.
    let x = rt.put(&7i64).unwrap();
    let y = triple::remote(&x);
    let z = triple::remote(&y);
    assert_eq!(rt.get(&z).unwrap(), 63);

    // A function only the driver links is a clear error, and the runtime keeps working.
    match rt.get(&only_in_driver::remote()) {
        Err(Error::UnknownFunction { name }) => assert!(name.contains("only_in_driver")),
        other => panic!("expected UnknownFunction, got {other:?}"),
    }
    assert_eq!(rt.get(&triple::remote(1)).unwrap(), 3);

    // Dropping the runtime reaps the external program's processes too.
    let me = std::process::id() as i32;
    let mut kids = children_of(me);
    for k in kids.clone() {
        kids.extend(children_of(k));
    }
    assert!(
        kids.contains(&(pid as i32)),
        "worker {pid} not among {kids:?}"
    );
    drop(rt);
    for k in kids {
        assert!(!alive(k), "process {k} outlived the runtime");
    }
}

#[test]
fn the_worker_program_run_by_hand_explains_itself() {
    let out = std::process::Command::new(WORKER).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Config::worker_program"), "stderr: {err}");
}
