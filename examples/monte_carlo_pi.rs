//! The complete example of ray-tasks.md, "Monte Carlo Pi Estimation": sampling tasks report
//! their progress to an actor whose handle they were given, while the driver polls it.
//!
//! Run: `cargo run --release --example monte_carlo_pi` (`-- --quick` for 10 x 1M samples).

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rayfork::{ActorHandle, Runtime, remote};

/// Tracks how many samples each task has done.
pub struct ProgressActor {
    total_num_samples: u64,
    num_samples_completed_per_task: HashMap<u32, u64>,
}

#[rayfork::actor]
impl ProgressActor {
    /// An actor expecting `total_num_samples` in all.
    pub fn new(total_num_samples: u64) -> ProgressActor {
        ProgressActor {
            total_num_samples,
            num_samples_completed_per_task: HashMap::new(),
        }
    }

    /// Task `task_id` has done `num_samples_completed` samples.
    pub fn report_progress(&mut self, task_id: u32, num_samples_completed: u64) {
        self.num_samples_completed_per_task
            .insert(task_id, num_samples_completed);
    }

    /// The fraction of all samples done.
    pub fn get_progress(&self) -> f64 {
        self.num_samples_completed_per_task.values().sum::<u64>() as f64
            / self.total_num_samples as f64
    }
}

/// Counts samples of the unit square that fall in the unit circle, reporting every million.
#[remote]
fn sampling_task(
    num_samples: u64,
    task_id: u32,
    progress_actor: ActorHandle<ProgressActor>,
) -> u64 {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(task_id as u64);
    let mut num_inside = 0;
    for i in 0..num_samples {
        let (x, y): (f64, f64) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
        if x.hypot(y) <= 1.0 {
            num_inside += 1;
        }
        // Report progress every 1 million samples (fire and forget, as Ray's `.remote()`).
        if (i + 1) % 1_000_000 == 0 {
            let _ = progress_actor.report_progress(task_id, i + 1);
        }
    }
    // Report the final progress.
    let _ = progress_actor.report_progress(task_id, num_samples);
    num_inside
}

fn main() -> rayfork::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = Runtime::builder().start()?;

    // Configuration
    const NUM_SAMPLING_TASKS: u32 = 10;
    let num_samples_per_task: u64 = if quick { 1_000_000 } else { 10_000_000 };
    let total_num_samples = NUM_SAMPLING_TASKS as u64 * num_samples_per_task;

    // Create the progress actor
    let progress_actor = ProgressActor::remote(total_num_samples);

    // Create and execute all sampling tasks in parallel
    let results: Vec<_> = (0..NUM_SAMPLING_TASKS)
        .map(|i| sampling_task::remote(num_samples_per_task, i, &progress_actor))
        .collect();

    // Query progress periodically
    loop {
        let progress = rt.get(&progress_actor.get_progress())?;
        println!("Progress: {}%", (progress * 100.0) as u32);
        if progress >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(if quick { 100 } else { 1000 }));
    }

    // Get all the sampling tasks results and calculate π
    let total_num_inside: u64 = rt.get_all(&results)?.iter().sum();
    let pi = (total_num_inside * 4) as f64 / total_num_samples as f64;
    println!("Estimated value of π is: {pi}");
    assert!(
        (pi - std::f64::consts::PI).abs() < 0.01,
        "estimate off: {pi}"
    );
    Ok(())
}
