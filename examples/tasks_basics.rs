//! The task snippets of the Ray "Tasks" guide (ray-tasks.md), ported to rayfork: basic usage,
//! passing object refs and waiting for partial results.
//!
//! Sleeps are scaled down from the guide's (10 s -> 0.5 s and so on, each noted where it happens)
//! so that the whole example runs in a few seconds on 2 CPUs. Every printed result is asserted.
//!
//! Elsewhere: the anti-patterns (the `anti_patterns` example), resource requirements
//! (`resources`), multiple returns (`multiple_returns`), the nested quicksort pattern
//! (`quicksort`); generators, cancellation and the Monte Carlo actor example come later.
//!
//! Run with `cargo run --release --example tasks_basics`.

use std::time::Duration;

use rayfork::{Runtime, remote};
use rayfork_examples::{finish_sections, section, timed};

/// The guide's `time.sleep(10)` in `slow_function`, scaled down 20x.
const SLOW: Duration = Duration::from_millis(500);

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder().num_cpus(2).start()?;
    println!("rayfork runtime with {} CPUs\n", rt.num_cpus());
    let (r, total) = timed(|| -> rayfork::Result<()> {
        basic_usage(&rt)?;
        passing_object_refs(&rt)?;
        waiting_for_partial_results(&rt)?;
        Ok(())
    });
    r?;
    // Every ref above is dropped: the store must be empty again.
    finish_sections(&rt, total)
}

// ---------------------------------------------------------------------------------------------
// Basic usage

/// A regular function.
fn normal_function() -> i64 {
    1
}

/// With `#[remote]`, a regular function becomes a remote function.
#[remote]
fn my_function() -> i64 {
    1
}

/// Sleeps (10 s in the guide, [`SLOW`] here) and returns 1.
#[remote]
fn slow_function() -> i64 {
    std::thread::sleep(SLOW);
    1
}

fn basic_usage(rt: &Runtime) -> rayfork::Result<()> {
    section("Basic usage");
    assert_eq!(normal_function(), 1);
    // `remote` returns an object ref (a future) at once; the task runs in a worker process.
    let obj_ref = my_function::remote();
    let v = rt.get(&obj_ref)?;
    println!(
        "   normal_function() = {}, get(my_function::remote()) = {v}",
        normal_function()
    );
    assert_eq!(v, 1);

    // Tasks run in parallel, in the background: submitting does not block. (The guide drops
    // the refs; we keep them to show when the tasks end.)
    let ((vals, submit), all) = timed(|| {
        let (refs, submit) = timed(|| (0..4).map(|_| slow_function::remote()).collect::<Vec<_>>());
        (rt.get_all(&refs), submit)
    });
    let vals = vals?;
    println!(
        "   4 x slow_function::remote() ({} ms of sleep each): submitted in {:.2} ms, \
         all done after {:.0} ms on 2 CPUs",
        SLOW.as_millis(),
        submit.as_secs_f64() * 1e3,
        all.as_secs_f64() * 1e3
    );
    assert_eq!(vals, vec![1, 1, 1, 1]);
    assert!(submit < SLOW, "submission blocked for {submit:?}");
    // 2 rounds of 2 parallel tasks, not 4 in a row.
    assert!(all < 3 * SLOW, "4 slow tasks took {all:?} on 2 CPUs");

    // As the guide writes it: the refs are dropped at once. The tasks run all the same (each
    // leaves a line in a file to show it); their results are freed when they end.
    let log = std::env::temp_dir().join(format!("rayfork-tasks-basics-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let log_name = log.to_string_lossy().into_owned();
    for _ in 0..4 {
        let _ = slow_function_that_logs::remote(log_name.clone());
    }
    let ran = |p: &std::path::Path| std::fs::read_to_string(p).map_or(0, |s| s.lines().count());
    let (_, waited) = timed(|| {
        while ran(&log) < 4 {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    println!(
        "   4 x slow_function::remote() with the refs dropped: all 4 ran ({:.0} ms)",
        waited.as_secs_f64() * 1e3
    );
    std::fs::remove_file(&log).ok();
    Ok(())
}

/// `slow_function`, appending a line to `log` when it is done.
#[remote]
fn slow_function_that_logs(log: String) -> i64 {
    std::thread::sleep(SLOW);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the log");
    writeln!(f, "done").expect("write the log");
    1
}

// ---------------------------------------------------------------------------------------------
// Passing object refs to tasks

/// Adds 1 to its argument; given a ref, it receives the value.
#[remote]
fn function_with_an_argument(value: i64) -> i64 {
    value + 1
}

fn passing_object_refs(rt: &Runtime) -> rayfork::Result<()> {
    section("Passing object refs to tasks");
    let obj_ref1 = my_function::remote();
    let v1 = rt.get(&obj_ref1)?;
    assert_eq!(v1, 1);
    // An object ref passed as an argument to another task.
    let obj_ref2 = function_with_an_argument::remote(&obj_ref1);
    let v2 = rt.get(&obj_ref2)?;
    println!("   get(obj_ref1) = {v1}, get(function_with_an_argument::remote(&obj_ref1)) = {v2}");
    assert_eq!(v2, 2);

    // The second task does not run before the first has finished.
    let (v, t) = timed(|| rt.get(&function_with_an_argument::remote(slow_function::remote())));
    let v = v?;
    println!(
        "   function_with_an_argument(slow_function) = {v}, ready after {:.0} ms (>= {} ms)",
        t.as_secs_f64() * 1e3,
        SLOW.as_millis()
    );
    assert_eq!(v, 2);
    assert!(t >= SLOW);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Waiting for partial results

fn waiting_for_partial_results(rt: &Runtime) -> rayfork::Result<()> {
    section("Waiting for partial results");
    let object_refs: Vec<_> = (0..2).map(|_| slow_function::remote()).collect();
    // Return as soon as one of the tasks finished. (`rayfork::wait` gives `ray.wait`'s "at most
    // num_returns ready"; both tasks end at about the same time here.)
    let (r, t) = timed(|| rayfork::wait(&object_refs, 1, None));
    let (ready_refs, remaining_refs) = r?;
    println!(
        "   wait(2 slow tasks, num_returns=1): {} ready, {} remaining after {:.0} ms",
        ready_refs.len(),
        remaining_refs.len(),
        t.as_secs_f64() * 1e3
    );
    assert_eq!((ready_refs.len(), remaining_refs.len()), (1, 1));
    assert!(t >= SLOW);
    assert_eq!(rt.get_all(&object_refs)?, vec![1, 1]);
    Ok(())
}
