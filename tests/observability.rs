//! `Runtime::timeline` and `Runtime::summary`: a workload with successes, a failure, a crash
//! that is retried, a cancelled task that never ran and a nested task; the trace written to a
//! file parses as JSON and holds one run per attempt, on the worker processes that ran them;
//! the summary counts every task by function and state.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use rayfork::{CancelMode, Error, Runtime, remote};
use rayfork_tests::{eventually, watchdog};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

#[remote]
fn work(i: u64) -> u64 {
    i * 2
}

#[remote]
fn plus_one(x: u64) -> u64 {
    x + 1
}

#[remote]
fn fails() -> Result<u64, String> {
    Err("no".into())
}

/// Crashes its process on the first attempt (a marker file says it already tried).
#[remote]
fn crash_once(marker: String) -> u64 {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"tried").expect("write the marker");
        std::process::abort();
    }
    7
}

/// Submits a child and waits for it.
#[remote]
fn parent() -> rayfork::Result<u64> {
    rayfork::get(&work::remote(21))
}

/// Runs until cancelled.
#[remote]
fn spin() -> u64 {
    while !rayfork::is_cancelled() {
        std::thread::yield_now();
    }
    0
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "rayfork-observability-{}-{name}",
        std::process::id()
    ))
}

/// The trace's events of kind `ph`.
fn events<'a>(trace: &'a Value, ph: &str) -> Vec<&'a Value> {
    trace["traceEvents"]
        .as_array()
        .expect("traceEvents is an array")
        .iter()
        .filter(|e| e["ph"] == ph)
        .collect()
}

fn name_ends(e: &Value, suffix: &str) -> bool {
    e["name"].as_str().is_some_and(|n| n.ends_with(suffix))
}

#[test]
fn timeline_and_summary_show_every_run() {
    let _w = watchdog("timeline_and_summary_show_every_run", LIMIT);
    let marker = temp_path("crash-marker");
    let trace_path = temp_path("trace.json");
    let _ = std::fs::remove_file(&marker);
    let rt = Runtime::builder().num_cpus(1).start().unwrap();

    let refs: Vec<_> = (0..20).map(work::remote).collect();
    assert_eq!(rt.get_all(&refs).unwrap()[19], 38);
    assert!(matches!(
        rt.get(&fails::remote()),
        Err(Error::TaskFailed { .. })
    ));
    let crashed = crash_once::remote(marker.to_string_lossy().into_owned());
    assert_eq!(rt.get(&crashed).unwrap(), 7);
    assert_eq!(rt.get(&parent::remote()).unwrap(), 42);
    // One CPU held by a spinning task: the next one waits, and is cancelled before it runs.
    let spinning = spin::remote();
    let never = work::options().name("never").remote(0);
    // Its dependent fails with its error, unrun: counted as failed, not cancelled.
    let after = plus_one::remote(&never);
    rt.cancel(&never, CancelMode::default().recursive(false))
        .unwrap();
    assert!(matches!(rt.get(&never), Err(Error::TaskCancelled { .. })));
    assert!(matches!(rt.get(&after), Err(Error::TaskCancelled { .. })));
    // The spinning task shows as running in a trace taken now.
    assert!(eventually(LIMIT, || rt.summary().unwrap().total().running == 1));
    let n = rt.timeline(&trace_path).unwrap();
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(&trace_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&trace_path);
    assert_eq!(trace["traceEvents"].as_array().unwrap().len(), n);

    let runs = events(&trace, "X");
    let works: Vec<_> = runs.iter().filter(|e| name_ends(e, "::work")).collect();
    // 20, plus the parent's child.
    assert_eq!(works.len(), 21, "{runs:?}");
    assert!(works.iter().all(|e| e["args"]["outcome"] == "finished"));
    let me = i64::from(std::process::id());
    let pids: BTreeSet<i64> = runs.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
    assert!(pids.iter().all(|&p| p > 0 && p != me), "{pids:?}");
    // The crash: attempt 1 crashed, attempt 2 finished, on two different processes.
    let mut crash_runs: Vec<_> = runs
        .iter()
        .filter(|e| name_ends(e, "::crash_once"))
        .map(|e| {
            (
                e["args"]["attempt"].as_u64().unwrap(),
                e["args"]["outcome"].as_str().unwrap().to_string(),
                e["pid"].as_i64().unwrap(),
            )
        })
        .collect();
    crash_runs.sort();
    assert_eq!(crash_runs.len(), 2, "{crash_runs:?}");
    assert_eq!((crash_runs[0].0, crash_runs[0].1.as_str()), (1, "crashed"));
    assert_eq!((crash_runs[1].0, crash_runs[1].1.as_str()), (2, "finished"));
    assert_ne!(crash_runs[0].2, crash_runs[1].2);
    // Runs have durations, and start after their submission.
    for e in &runs {
        assert!(e["dur"].as_u64().is_some(), "{e}");
        assert!(e["ts"].as_u64().unwrap() >= e["args"]["submitted_us"].as_u64().unwrap());
    }
    // The failed one, the one still running, the one that never ran.
    assert!(
        runs.iter()
            .any(|e| name_ends(e, "::fails") && e["args"]["outcome"] == "failed")
    );
    assert!(
        runs.iter()
            .any(|e| name_ends(e, "::spin") && e["args"]["outcome"] == "running")
    );
    let marks = events(&trace, "i");
    assert_eq!(marks.len(), 2, "{marks:?}");
    let never_ran = |name: &str| {
        marks
            .iter()
            .find(|e| name_ends(e, name))
            .map(|e| e["args"]["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(never_ran("never").as_deref(), Some("cancelled"));
    assert_eq!(never_ran("::plus_one").as_deref(), Some("failed"));
    // Every process has a name.
    let named: BTreeSet<i64> = events(&trace, "M")
        .iter()
        .map(|e| e["pid"].as_i64().unwrap())
        .collect();
    assert!(pids.is_subset(&named));

    rt.cancel(&spinning, CancelMode::default()).unwrap();
    let _ = rt.get(&spinning);
    let s = rt.summary().unwrap();
    let by = |suffix: &str| {
        s.by_function
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {suffix} in {s}"))
    };
    // By function: the task named "never" counts under `work`.
    assert_eq!((by("::work").finished, by("::work").cancelled), (21, 1));
    assert_eq!(
        (by("::plus_one").failed, by("::plus_one").cancelled),
        (1, 0)
    );
    assert_eq!(by("::fails").failed, 1);
    assert_eq!(
        (by("::crash_once").finished, by("::crash_once").retried),
        (1, 1)
    );
    assert_eq!(by("::parent").finished, 1);
    assert_eq!(by("::spin").cancelled, 1);
    let total = s.total();
    assert_eq!((total.pending, total.running), (0, 0));
    let table = s.to_string();
    assert!(
        table.contains("finished") && table.contains("total"),
        "{table}"
    );
    let _ = std::fs::remove_file(&marker);
}

/// A function that leaves no trace in the timeline or the summary.
#[rayfork::remote(enable_task_events = false)]
fn quiet(x: u64) -> u64 {
    x + 1
}

#[rayfork::remote]
fn loud(x: u64) -> u64 {
    x + 2
}

#[test]
fn tasks_with_events_off_leave_no_record() {
    let _w = rayfork_tests::watchdog("tasks_with_events_off_leave_no_record", LIMIT);
    let rt = rayfork::Runtime::builder().num_cpus(2).start().unwrap();
    let quiet_refs: Vec<_> = (0..10).map(quiet::remote).collect();
    let off: Vec<_> = (0..10)
        .map(|i| loud::options().enable_task_events(false).remote(i))
        .collect();
    let on: Vec<_> = (0..3).map(loud::remote).collect();
    assert_eq!(rt.get_all(&quiet_refs).unwrap()[9], 10);
    assert_eq!(rt.get_all(&off).unwrap()[9], 11);
    assert_eq!(rt.get_all(&on).unwrap()[2], 4);
    let s = rt.summary().unwrap();
    assert_eq!(s.total().finished, 3, "{s}");
    assert!(!s.to_string().contains("quiet"), "{s}");
    let path = rayfork_tests::fresh_path("events-off", "trace.json");
    let events = rt.timeline(&path).unwrap();
    let trace = std::fs::read_to_string(&path).unwrap();
    assert!(!trace.contains("quiet"), "the trace has a quiet task");
    assert_eq!(
        trace.matches("observability::loud").count(),
        3,
        "{events} events"
    );
}
