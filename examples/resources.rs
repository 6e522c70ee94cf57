//! The "Specifying resource requirements" snippet of the Ray "Tasks" guide (ray-tasks.md),
//! ported: a function that needs 4 CPUs and 2 GPUs, and a call that overrides it with 3 CPUs.
//! Then the rest of rayfork's resource model: a request that can never fit fails at once with
//! the resource named, a custom resource limits how many tasks run at once, and fractional CPUs
//! let several small tasks share one CPU.
//!
//! The runtime declares 4 CPUs and 2 GPUs whatever the machine has: rayfork counts resources,
//! as Ray's scheduler does, and gives each GPU task device ids (`rayfork::gpu_ids()`, and
//! `CUDA_VISIBLE_DEVICES` while it runs); it checks no hardware. Concurrency is measured from
//! the tasks' own start and end times (wall clock, comparable across processes).
//!
//! Run with `cargo run --release --example resources`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayfork::{Runtime, remote};

/// Specify required resources.
#[remote(num_cpus = 4, num_gpus = 2)]
fn my_function() -> i64 {
    1
}

/// The GPU devices this task was given, and what CUDA libraries would see.
#[remote(num_gpus = 1)]
fn which_gpu() -> (Vec<u32>, Option<String>) {
    (
        rayfork::gpu_ids(),
        std::env::var("CUDA_VISIBLE_DEVICES").ok(),
    )
}

/// Holds one "db" connection while it works for 100 ms; returns its (start, end) in us.
#[remote(num_cpus = 0.5, resources = [("db", 1)])]
fn query(_i: u32) -> (u128, u128) {
    busy(Duration::from_millis(100))
}

/// A small task: a quarter of a CPU, 100 ms of sleep; returns its (start, end) in us.
#[remote(num_cpus = 0.25)]
fn small(_i: u32) -> (u128, u128) {
    busy(Duration::from_millis(100))
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn busy(d: Duration) -> (u128, u128) {
    let start = now_us();
    std::thread::sleep(d);
    (start, now_us())
}

/// The most intervals that overlap at one instant.
fn max_overlap(spans: &[(u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends before starts at the same instant.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder()
        .num_cpus(4)
        .num_gpus(2.0)
        .resource("db", 2.0)
        .start()?;
    println!("runtime: 4 CPUs, 2 GPUs, 2 x db");

    let v = rt.get(&my_function::remote())?;
    println!("my_function::remote() (4 CPUs, 2 GPUs) = {v}");
    // Override the default resource requirements.
    let v = rt.get(&my_function::options().num_cpus(3.0).remote())?;
    println!("my_function::options().num_cpus(3.0).remote() = {v}");

    // More than the runtime has: an error at once, not a hang.
    let e = rt
        .get(&my_function::options().num_gpus(3.0).remote())
        .unwrap_err();
    println!("my_function::options().num_gpus(3.0).remote(): {e}");
    assert!(matches!(e, rayfork::Error::Unschedulable { ref resource, .. } if resource == "GPU"));

    // Devices: two one-GPU tasks in flight, each told its own device.
    let gpus = rt.get_all(&[which_gpu::remote(), which_gpu::remote()])?;
    for (ids, env) in &gpus {
        println!("which_gpu (num_gpus = 1): gpu_ids() = {ids:?}, CUDA_VISIBLE_DEVICES = {env:?}");
        assert_eq!(ids.len(), 1);
    }

    // 6 queries, 2 db connections: at most 2 run at once, though CPUs allow 8.
    let spans = rt.get_all(&(0..6).map(query::remote).collect::<Vec<_>>())?;
    let db = max_overlap(&spans);
    println!("6 queries holding 1 of 2 db each: at most {db} ran at once");
    assert!(db <= 2);

    // Fractional CPUs: 16 tasks of 0.25 CPU all fit on 4 CPUs at once; how many really overlap
    // is bounded by the worker processes (Config::max_workers, 4 x the machine's CPUs).
    let spans = rt.get_all(&(0..16).map(small::remote).collect::<Vec<_>>())?;
    let n = max_overlap(&spans);
    println!("16 tasks of 0.25 CPU on 4 CPUs: up to {n} ran at once");
    assert!(n <= 16);
    let spans = rt.get_all(
        &(0..4)
            .map(|i| small::options().num_cpus(4.0).remote(i))
            .collect::<Vec<_>>(),
    )?;
    let n = max_overlap(&spans);
    println!("the same task with options().num_cpus(4.0): {n} at a time");
    assert_eq!(n, 1);
    Ok(())
}
