//! The task snippets of the Ray "Tasks" guide (ray-tasks.md), ported to rayfork: basic usage,
//! passing object refs, waiting for partial results, and every anti-pattern that needs only
//! tasks, `get`, `wait` and `put`. Where the guide shows a wrong and a right way, both run and
//! their measured times are printed side by side.
//!
//! Sleeps are scaled down from the guide's (10 s -> 0.5 s and so on, each noted where it happens)
//! so that the whole example runs in a few seconds on 2 CPUs. Every printed result is asserted.
//!
//! Not ported here: resource requirements, multiple returns, generators, cancellation and the
//! Monte Carlo actor example (later issues), and the nested quicksort pattern (the `quicksort`
//! example).
//!
//! Run with `cargo run --release --example tasks_basics`.

use std::time::Duration;

use rayfork::{ObjectRef, Runtime, remote};
use rayfork_examples::timed;

/// The guide's `time.sleep(10)` in `slow_function`, scaled down 20x.
const SLOW: Duration = Duration::from_millis(500);

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder().num_cpus(2).start()?;
    println!("rayfork runtime with {} CPUs\n", rt.num_cpus());
    let (r, total) = timed(|| -> rayfork::Result<()> {
        basic_usage(&rt)?;
        passing_object_refs(&rt)?;
        waiting_for_partial_results(&rt)?;
        get_in_a_loop(&rt)?;
        get_unnecessarily(&rt)?;
        get_on_task_arguments(&rt)?;
        submission_order(&rt)?;
        too_many_objects_at_once(&rt)?;
        too_fine_grained_tasks(&rt)?;
        Ok(())
    });
    r?;
    // Every ref above is dropped: the store must be empty again.
    let used = store_used_after_drops(&rt)?;
    println!("store bytes in use after all refs are dropped: {used}");
    assert_eq!(used, 0);
    println!("all sections done in {:.2} s", total.as_secs_f64());
    Ok(())
}

/// Prints a section title.
fn section(title: &str) {
    println!("== {title}");
}

/// Prints a wrong and a right way's times side by side.
fn compare(wrong: &str, t_wrong: Duration, right: &str, t_right: Duration) {
    let w = t_wrong.as_secs_f64();
    let r = t_right.as_secs_f64();
    println!("   wrong: {wrong:<40} {:>9.1} ms", w * 1e3);
    println!(
        "   right: {right:<40} {:>9.1} ms   ({:.1}x)",
        r * 1e3,
        w / r.max(1e-9)
    );
}

/// Store bytes in use, polled briefly: ref drops travel to the scheduler asynchronously.
fn store_used_after_drops(rt: &Runtime) -> rayfork::Result<u64> {
    let mut used = rt.stats()?.store.used;
    for _ in 0..100 {
        if used == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        used = rt.stats()?.store.used;
    }
    Ok(used)
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
    Ok(())
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

// ---------------------------------------------------------------------------------------------
// Anti-pattern: calling get in a loop

/// Returns `i`. The guide's `f` returns at once; 10 ms of sleep makes the lost parallelism
/// visible.
#[remote]
fn f(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10));
    i
}

fn get_in_a_loop(rt: &Runtime) -> rayfork::Result<()> {
    section("Anti-pattern: calling get in a loop");
    // Wrong: no parallelism, each task is waited for before the next is submitted.
    let (sequential_returns, t_wrong) = timed(|| -> rayfork::Result<Vec<u64>> {
        let mut sequential_returns = Vec::new();
        for i in 0..100 {
            sequential_returns.push(rt.get(&f::remote(i))?);
        }
        Ok(sequential_returns)
    });
    // Right: submit every task first, then get all the results at once.
    let (parallel_returns, t_right) = timed(|| {
        let refs: Vec<_> = (0..100).map(f::remote).collect();
        rt.get_all(&refs)
    });
    let (sequential_returns, parallel_returns) = (sequential_returns?, parallel_returns?);
    let expected: Vec<u64> = (0..100).collect();
    assert_eq!(sequential_returns, expected);
    assert_eq!(parallel_returns, expected);
    println!("   100 x f(i) (10 ms each): both ways return 0..100");
    compare(
        "get(f::remote(i)) in the loop",
        t_wrong,
        "submit all, then get_all(&refs)",
        t_right,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Anti-pattern: calling get unnecessarily

/// Side of the rollout matrix: the guide's is 10_000 (800 MB); 2_000 gives 32 MB.
const ROLLOUT_SIDE: usize = 2_000;

/// A large object (the guide's `np.ones((10000, 10000))`, scaled down).
#[remote]
fn generate_rollout() -> Vec<f64> {
    vec![1.0; ROLLOUT_SIDE * ROLLOUT_SIDE]
}

/// Sums the rollout.
#[remote]
fn reduce(rollout: Vec<f64>) -> f64 {
    rollout.iter().sum()
}

fn get_unnecessarily(rt: &Runtime) -> rayfork::Result<()> {
    section("Anti-pattern: calling get unnecessarily");
    // Wrong: the driver downloads the result, then uploads it again.
    let (wrong, t_wrong) = timed(|| -> rayfork::Result<f64> {
        let rollout = rt.get(&generate_rollout::remote())?;
        rt.get(&reduce::remote(rollout))
    });
    // Right: pass the ref; the object stays in the store.
    let (right, t_right) = timed(|| {
        let rollout_obj_ref = generate_rollout::remote();
        rt.get(&reduce::remote(&rollout_obj_ref))
    });
    let (wrong, right) = (wrong?, right?);
    let n = ROLLOUT_SIDE * ROLLOUT_SIDE;
    println!(
        "   reduce(generate_rollout) of a {ROLLOUT_SIDE}x{ROLLOUT_SIDE} f64 matrix ({} MB) = {right}",
        n * 8 / 1_000_000
    );
    assert_eq!(wrong, n as f64);
    assert_eq!(right, n as f64);
    compare(
        "get the rollout, pass it by value",
        t_wrong,
        "pass the rollout's ref",
        t_right,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Anti-pattern: calling get on task arguments

/// Returns 1.
#[remote]
fn one() -> i64 {
    1
}

/// Wrong: receives refs nested in a list and must `get` them inside the task.
#[remote]
fn pass_via_nested_ref(refs: Vec<ObjectRef<i64>>) -> rayfork::Result<i64> {
    let s: i64 = rayfork::get_all(&refs)?.iter().sum();
    println!(
        "   (in worker {}) pass_via_nested_ref: {s}",
        std::process::id()
    );
    Ok(s)
}

/// Right: the refs are direct arguments, so the task receives the values.
#[remote]
fn pass_via_direct_arg(a: i64, b: i64, c: i64) -> i64 {
    let s = a + b + c;
    println!(
        "   (in worker {}) pass_via_direct_arg: {s}",
        std::process::id()
    );
    s
}

fn get_on_task_arguments(rt: &Runtime) -> rayfork::Result<()> {
    section("Anti-pattern: calling get on task arguments");
    let (wrong, t_wrong) = timed(|| {
        let refs: Vec<_> = (0..3).map(|_| one::remote()).collect();
        rt.get(&pass_via_nested_ref::remote(refs))
    });
    // The guide's `*args` unpacking: three refs as three arguments.
    let (right, t_right) = timed(|| {
        let [a, b, c] = [(); 3].map(|_| one::remote());
        rt.get(&pass_via_direct_arg::remote(a, b, c))
    });
    let (wrong, right) = (wrong?, right?);
    println!("   sum via nested refs = {wrong}, sum via direct args = {right}");
    assert_eq!(wrong, 3);
    assert_eq!(right, 3);
    compare(
        "nested refs, get inside the task",
        t_wrong,
        "refs as direct arguments",
        t_right,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Anti-pattern: processing results in submission order

/// Tasks in this section.
const ORDER_TASKS: u64 = 20;

/// Returns `i` after a while. The guide sleeps `random.random()` s in each of 100 tasks; here
/// task 0 is slow (800 ms) and the 19 others fast (20 ms), which shows the same effect
/// deterministically.
#[remote]
fn f_variable(i: u64) -> u64 {
    let ms = if i == 0 { 800 } else { 20 };
    std::thread::sleep(Duration::from_millis(ms));
    i
}

/// The driver's work on each result: 30 ms.
fn process(result: u64, processed: &mut Vec<u64>) {
    std::thread::sleep(Duration::from_millis(30));
    processed.push(result);
}

fn submission_order(rt: &Runtime) -> rayfork::Result<()> {
    section("Anti-pattern: processing results in submission order");
    // Wrong: blocks on the slow task 0 before processing anything.
    let (wrong, t_wrong) = timed(|| -> rayfork::Result<Vec<u64>> {
        let refs: Vec<_> = (0..ORDER_TASKS).map(f_variable::remote).collect();
        let mut processed = Vec::new();
        for r in &refs {
            process(rt.get(r)?, &mut processed);
        }
        Ok(processed)
    });
    // Right: process each result as soon as its task finishes.
    let (right, t_right) = timed(|| -> rayfork::Result<Vec<u64>> {
        let refs: Vec<_> = (0..ORDER_TASKS).map(f_variable::remote).collect();
        let mut unfinished = refs;
        let mut processed = Vec::new();
        while !unfinished.is_empty() {
            let (finished, rest) = rayfork::wait(&unfinished, 1, None)?;
            unfinished = rest;
            process(rt.get(&finished[0])?, &mut processed);
        }
        Ok(processed)
    });
    let (wrong, right) = (wrong?, right?);
    let sum_in_submission_order: u64 = wrong.iter().sum();
    let sum_in_completion_order: u64 = right.iter().sum();
    println!(
        "   sum in submission order = {sum_in_submission_order}, \
         sum in completion order = {sum_in_completion_order}"
    );
    println!(
        "   completion order processed task 0 (the slow one) last: {:?}",
        &right[right.len() - 3..]
    );
    assert_eq!(sum_in_submission_order, (0..ORDER_TASKS).sum::<u64>());
    assert_eq!(sum_in_submission_order, sum_in_completion_order);
    assert_eq!(wrong, (0..ORDER_TASKS).collect::<Vec<_>>());
    assert_eq!(right.last(), Some(&0));
    compare(
        "get in submission order",
        t_wrong,
        "wait(num_returns=1), completion order",
        t_right,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Anti-pattern: fetching too many objects at once

/// The guide's `np.zeros(1024 * 10)`: 80 KB, so it goes through the store (not inline).
#[remote]
fn return_big_object() -> Vec<f64> {
    vec![0.0; 1024 * 10]
}

/// Tasks in this section (as in the guide).
const NUM_TASKS: usize = 1000;
/// Results fetched at once by the right way (as in the guide).
const BATCH_SIZE: usize = 100;

/// The driver's work on a batch of results: counts the elements and checks they are zero.
fn process_results(results: &[Vec<f64>], seen: &mut usize, peak_bytes: &mut usize) {
    let bytes: usize = results.iter().map(|r| r.len() * 8).sum();
    *peak_bytes = (*peak_bytes).max(bytes);
    for r in results {
        assert!(r.iter().all(|&x| x == 0.0));
        *seen += r.len();
    }
}

fn too_many_objects_at_once(rt: &Runtime) -> rayfork::Result<()> {
    section("Anti-pattern: fetching too many objects at once");
    // Wrong: every result is in the driver's heap at once.
    let (wrong, t_wrong) = timed(|| -> rayfork::Result<(usize, usize)> {
        let object_refs: Vec<_> = (0..NUM_TASKS)
            .map(|_| return_big_object::remote())
            .collect();
        let results = rt.get_all(&object_refs)?;
        let (mut seen, mut peak) = (0, 0);
        process_results(&results, &mut seen, &mut peak);
        Ok((seen, peak))
    });
    // Right: fetch and process them in batches as they become ready.
    let (right, t_right) = timed(|| -> rayfork::Result<(usize, usize, usize)> {
        let mut object_refs: Vec<_> = (0..NUM_TASKS)
            .map(|_| return_big_object::remote())
            .collect();
        let (mut seen, mut peak, mut batches) = (0, 0, 0);
        while !object_refs.is_empty() {
            let (ready_object_refs, rest) = rayfork::wait(&object_refs, BATCH_SIZE, None)?;
            object_refs = rest;
            let results = rt.get_all(&ready_object_refs)?;
            process_results(&results, &mut seen, &mut peak);
            batches += 1;
        }
        Ok((seen, peak, batches))
    });
    let ((seen_w, peak_w), (seen_r, peak_r, batches)) = (wrong?, right?);
    println!(
        "   {NUM_TASKS} x 80 KB objects: all at once held {:.1} MB in the driver; \
         {batches} batches of {BATCH_SIZE} held at most {:.1} MB",
        peak_w as f64 / 1e6,
        peak_r as f64 / 1e6
    );
    assert_eq!(seen_w, NUM_TASKS * 10 * 1024);
    assert_eq!(seen_r, NUM_TASKS * 10 * 1024);
    assert_eq!(batches, NUM_TASKS / BATCH_SIZE);
    assert_eq!(peak_w, NUM_TASKS * 80 * 1024);
    assert_eq!(peak_r, BATCH_SIZE * 80 * 1024);
    compare(
        "get_all of 1000 refs",
        t_wrong,
        "wait + get_all in batches of 100",
        t_right,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Anti-pattern: over-parallelizing with too fine-grained tasks

/// Numbers doubled in this section (as in the guide).
const NUMBERS: u64 = 10_000;

/// The guide's `double`, with its 10 us of sleep.
fn double(number: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(10));
    number * 2
}

/// One task per number.
#[remote]
fn remote_double(number: u64) -> u64 {
    double(number)
}

/// One task per batch of numbers.
#[remote]
fn remote_double_batch(numbers: Vec<u64>) -> Vec<u64> {
    numbers.into_iter().map(double).collect()
}

fn too_fine_grained_tasks(rt: &Runtime) -> rayfork::Result<()> {
    section("Anti-pattern: over-parallelizing with too fine-grained tasks");
    let numbers: Vec<u64> = (0..NUMBERS).collect();
    let expected: Vec<u64> = numbers.iter().map(|n| n * 2).collect();
    // Sequential, in the driver.
    let (sequential, t_seq) = timed(|| numbers.iter().copied().map(double).collect::<Vec<_>>());
    // Wrong: one tiny task per number; the overhead dominates.
    let (fine, t_wrong) = timed(|| {
        let doubled_number_refs: Vec<_> =
            numbers.iter().map(|&n| remote_double::remote(n)).collect();
        rt.get_all(&doubled_number_refs)
    });
    // Right: batches of 1000 numbers per task.
    let (batched, t_right) = timed(|| -> rayfork::Result<Vec<u64>> {
        let doubled_batch_refs: Vec<_> = numbers
            .chunks(1000)
            .map(|batch| remote_double_batch::remote(batch.to_vec()))
            .collect();
        let mut doubled_numbers = Vec::new();
        for batch in rt.get_all(&doubled_batch_refs)? {
            doubled_numbers.extend(batch);
        }
        Ok(doubled_numbers)
    });
    let (fine, batched) = (fine?, batched?);
    assert_eq!(sequential, expected);
    assert_eq!(fine, expected);
    assert_eq!(batched, expected);
    println!("   {NUMBERS} numbers doubled, the same result three ways");
    println!(
        "   sequential in the driver:                      {:>9.1} ms",
        t_seq.as_secs_f64() * 1e3
    );
    compare(
        "one task per number (10000 tasks)",
        t_wrong,
        "one task per 1000 numbers (10 tasks)",
        t_right,
    );
    Ok(())
}
