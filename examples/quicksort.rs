//! The quicksort demo and benchmark: the nested-tasks quicksort of
//! ray-nested-tasks-quicksort.md in Rust, with every array in shared memory.
//!
//! For each size (200_000, 4_000_000, 8_000_000 and any given on the command line) it prints
//! the median time of: the seed algorithm in one process, the same algorithm as nested rayfork
//! tasks, a rayfork sample sort, rayon's `par_sort_unstable` and std's `sort_unstable` (both in
//! this process), the worker processes used, and a correctness check of every run against
//! `sort_unstable`.
//!
//! `cargo run --release --example quicksort -- 32000000` adds a size; `--rounds N` sets the
//! number of runs per cell (default 3); `--quick` runs only the smallest size once;
//! `--timeline trace.json` writes the tasks of the largest size as a Chrome trace (open it in
//! ui.perfetto.dev) and prints their summary.

#[path = "sort_tasks.rs"]
mod sort_tasks;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rayfork::{Array, Runtime};
use rayfork_examples::timed;
use rayon::prelude::*;
use sort_tasks::{quick_sort, quick_sort_seq, random_ints, sample_sort};

/// Prints the elapsed time on stderr while a long sort runs.
struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(label: String) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            let mut shown = false;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if t.elapsed() > Duration::from_secs(1) {
                    eprint!("\r  {label}: {:.1} s ", t.elapsed().as_secs_f64());
                    shown = true;
                }
            }
            if shown {
                eprint!("\r{:60}\r", "");
            }
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `f` `rounds` times, checking each result against `expected`; returns the median.
fn measure<R: AsRef<[i64]>>(
    label: &str,
    rounds: usize,
    expected: &[i64],
    mut f: impl FnMut() -> R,
) -> Duration {
    let mut times = Vec::new();
    for r in 0..rounds {
        let _p = Progress::start(format!("{label} run {}/{rounds}", r + 1));
        let (out, t) = timed(&mut f);
        assert!(
            out.as_ref() == expected,
            "{label}: result differs from sort_unstable"
        );
        times.push(t);
    }
    median(times)
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn main() -> rayfork::Result<()> {
    let mut sizes = vec![200_000, 4_000_000, 8_000_000];
    let mut rounds = 3;
    let mut timeline = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                sizes = vec![200_000, 1_000_000];
                rounds = 1;
            }
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(3),
            "--timeline" => timeline = Some(args.next().expect("--timeline needs a file name")),
            n => sizes.push(n.replace('_', "").parse().expect("a size, e.g. 32000000")),
        }
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "quicksort: random integers in [0, 1_000_000), seeded; threshold {}; {cpus} CPUs; \
         median of {rounds} run(s); every run checked against sort_unstable",
        sort_tasks::THRESHOLD
    );
    println!(
        "{:>11} {:>10} {:>11} {:>8} {:>12} {:>10} {:>11} {:>8} {:>6}",
        "size",
        "sequential",
        "distributed",
        "speedup",
        "sample sort",
        "rayon par",
        "std unstab",
        "workers",
        "check"
    );
    for &n in &sizes {
        let input = random_ints(n, 42);
        let mut expected = input.clone();
        expected.sort_unstable();
        let bytes = (n * 8) as u64;
        let rt = Runtime::builder()
            .num_cpus(cpus)
            .store_capacity((24 * bytes).max(1 << 30))
            .start()?;

        let seq = measure("sequential", rounds, &expected, || {
            quick_sort_seq(input.clone())
        });
        let data: Array<i64> = rt.put_array(&input)?;
        let dist = measure("distributed", rounds, &expected, || {
            rt.get(&quick_sort::remote(data.clone()))
                .expect("distributed sort")
        });
        let sample = measure("sample sort", rounds, &expected, || {
            sample_sort(&rt, &data, cpus).expect("sample sort")
        });
        let par = measure("rayon", rounds, &expected, || {
            let mut v = input.clone();
            v.par_sort_unstable();
            v
        });
        let std_t = measure("std", rounds, &expected, || {
            let mut v = input.clone();
            v.sort_unstable();
            v
        });
        let stats = rt.stats()?;
        println!(
            "{:>11} {:>10} {:>11} {:>7.2}x {:>12} {:>10} {:>11} {:>8} {:>6}",
            n,
            secs(seq),
            secs(dist),
            seq.as_secs_f64() / dist.as_secs_f64(),
            secs(sample),
            secs(par),
            secs(std_t),
            stats.peak_workers,
            "ok"
        );
        std::io::stdout().flush().ok();
        if let Some(path) = timeline.as_ref().filter(|_| Some(&n) == sizes.iter().max()) {
            let events = rt.timeline(path)?;
            println!("\n{events} trace events of the {n} runs written to {path}; the tasks:");
            println!("{}", rt.summary()?);
        }
        drop(data);
        let s = rt.stats()?;
        assert_eq!(s.store.used, 0, "store accounting after the runs: {s:?}");
    }
    println!(
        "sequential/distributed: the seed algorithm; sample sort: {cpus} bucket tasks reading the \
         input in place; rayon/std: in this process (rayon and std include one copy of the input)."
    );
    Ok(())
}
