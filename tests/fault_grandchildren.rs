//! A task's own child processes die with it (design.md, "Security": nothing is left): on a
//! force cancel, a crash, a retirement after `max_calls`, and when the runtime drops.

use std::path::Path;
use std::time::Duration;

use rayfork::{CancelMode, Error, Runtime, remote};
use rayfork_tests::{alive, eventually, watchdog};

const LIMIT: Duration = Duration::from_secs(240);
/// How long a grandchild may take to die (a safety net; the assertion is that it does).
const PATIENCE: Duration = Duration::from_secs(30);

/// Starts `sleep 1000` (a grandchild of the runtime), writes its pid to `path`, then ends as
/// told: "park" (runs until killed), "abort" (crashes), "return" (returns at once).
#[remote]
fn with_child(path: String, then: String) -> u32 {
    let child = rayfork_tests::spawn_sleeper();
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, child.to_string()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    match then.as_str() {
        "abort" => std::process::abort(),
        "return" => 0,
        _ => loop {
            std::thread::park();
        },
    }
}

fn grandchild(path: &Path) -> i32 {
    assert!(
        eventually(LIMIT, || path.exists()),
        "{} never written",
        path.display()
    );
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

#[test]
fn a_tasks_children_die_with_it() {
    let _w = watchdog("a_tasks_children_die_with_it", LIMIT);
    let dir = std::env::temp_dir().join(format!("rayfork-grandchildren-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let rt = Runtime::builder().num_cpus(2).start().unwrap();

    // Force cancel.
    let r = with_child::remote(p("cancel"), "park".to_string());
    let pid = grandchild(&dir.join("cancel"));
    rt.cancel(&r, CancelMode::default().force()).unwrap();
    assert!(matches!(rt.get(&r), Err(Error::TaskCancelled { .. })));
    assert!(
        eventually(PATIENCE, || !alive(pid)),
        "survived a force cancel"
    );

    // Crash (no retry).
    let r = with_child::options()
        .max_retries(0)
        .remote(p("crash"), "abort".to_string());
    assert!(matches!(rt.get(&r), Err(Error::WorkerCrashed { .. })));
    let pid = grandchild(&dir.join("crash"));
    assert!(
        eventually(PATIENCE, || !alive(pid)),
        "survived its parent's crash"
    );

    // Retirement: the worker exits after one call.
    let r = with_child::options()
        .max_calls(1)
        .remote(p("retire"), "return".to_string());
    assert_eq!(rt.get(&r).unwrap(), 0);
    let pid = grandchild(&dir.join("retire"));
    assert!(
        eventually(PATIENCE, || !alive(pid)),
        "survived its worker's retirement"
    );

    // Runtime drop, with the task still running.
    let _r = with_child::remote(p("drop"), "park".to_string());
    let pid = grandchild(&dir.join("drop"));
    drop(rt);
    assert!(eventually(PATIENCE, || !alive(pid)), "survived the runtime");
    let _ = std::fs::remove_dir_all(&dir);
}
