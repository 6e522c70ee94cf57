//! The anti-patterns of the Ray "Tasks" guide (ray-tasks.md), ported to rayfork: get in a loop,
//! get unnecessarily, get on task arguments, processing results in submission order, fetching
//! too many objects at once, and too fine-grained tasks. Each runs the wrong and the right way
//! and prints their measured times side by side; the last two also show the `rayfork::map_chunks` and
//! `rayfork::map_each` helpers that package the right way. Every printed result is asserted.
//!
//! Sizes and sleeps are scaled down from the guide's (each noted where it happens) so that the
//! whole example runs in a few seconds on 2 CPUs.
//!
//! Run with `cargo run --release --example anti_patterns`.

use std::time::Duration;

use rayfork::{ObjectRef, Runtime, remote};
use rayfork_examples::{also, compare, finish_sections, section, timed};

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder().num_cpus(2).start()?;
    println!("rayfork runtime with {} CPUs\n", rt.num_cpus());
    let (r, total) = timed(|| -> rayfork::Result<()> {
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
    finish_sections(&rt, total)
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
    // The same right way, packaged: at most 2 x 100 results unfetched at any time.
    let (lens, t_helper) =
        timed(|| rayfork::map_each(|_| return_big_object::remote(), 0..NUM_TASKS, BATCH_SIZE));
    let lens = lens?;
    assert_eq!(lens.len(), NUM_TASKS);
    assert!(lens.iter().all(|r| r.len() == 10 * 1024));
    also("rayfork::map_each(.., 100)", t_helper, t_wrong);
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
    // The same right way, packaged: one task per chunk of 1000 numbers.
    let (mapped, t_map) = timed(|| -> rayfork::Result<Vec<u64>> {
        let refs = rayfork::map_chunks(remote_double_batch::remote, numbers.iter().copied(), 1000);
        Ok(rt.get_all(&refs)?.into_iter().flatten().collect())
    });
    assert_eq!(mapped?, expected);
    also("rayfork::map_chunks(.., 1000)", t_map, t_wrong);
    Ok(())
}
