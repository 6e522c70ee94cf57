//! The "Generators" snippet of ray-tasks.md: a generator task streams its outputs back to the
//! caller before it finishes, against a normal task that returns them all at the end.
//!
//! Run: `cargo run --release --example generators` (`-- --quick`: 0.1 s between items, not 1 s).

use std::time::{Duration, Instant};

use rayfork::{Runtime, remote};

/// Yields 0..5, one item every `interval_ms`.
#[remote(streaming)]
fn task(interval_ms: u64) -> impl Iterator<Item = u64> {
    (0..5).inspect(move |_| std::thread::sleep(Duration::from_millis(interval_ms)))
}

/// The same work as a normal task: the caller sees nothing until the end.
#[remote]
fn task_all_at_once(interval_ms: u64) -> Vec<u64> {
    (0..5)
        .inspect(|_| std::thread::sleep(Duration::from_millis(interval_ms)))
        .collect()
}

fn main() -> rayfork::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let interval_ms = if quick { 100 } else { 1000 };
    let rt = Runtime::builder().start()?;

    println!("generator task (an item every {interval_ms} ms):");
    let start = Instant::now();
    let mut arrivals = Vec::new();
    // The generator yields output every interval.
    for obj_ref in task::remote(interval_ms) {
        let value = rt.get(&obj_ref?)?;
        arrivals.push(start.elapsed());
        println!("  {value}  (after {:.2} s)", start.elapsed().as_secs_f64());
    }

    println!("normal task returning the same 5 values:");
    let start = Instant::now();
    let all = rt.get(&task_all_at_once::remote(interval_ms))?;
    let whole = start.elapsed();
    println!("  {all:?}  (all after {:.2} s)", whole.as_secs_f64());

    println!(
        "first output: {:.2} s with a generator, {:.2} s with a normal task",
        arrivals[0].as_secs_f64(),
        whole.as_secs_f64()
    );
    Ok(())
}
