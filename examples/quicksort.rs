//! The quicksort demo and benchmark: the nested-tasks quicksort of
//! ray-nested-tasks-quicksort.md in Rust, with every array in shared memory.
//!
//! For each size (1_000_000, 8_000_000 and any given on the command line) it prints one row per
//! variant: the in-place nested quicksort on windows of one array (the headline), the
//! parallel radix sort over windows, the seed algorithm as nested tasks (new arrays per level),
//! a sample sort, and as baselines the in-place recursion and the seed algorithm in one
//! process, rayon's `par_sort_unstable` and std's `sort_unstable` (both in this process). Each
//! row gives the median time, the speedup over the same algorithm in one process, the peak
//! store bytes (as a multiple of the input), the worker processes, and the check of every run.
//!
//! `cargo run --release --example quicksort -- 32000000` adds a size; `--rounds N` sets the
//! runs per cell (default 3); `--full-range` sorts keys over all of `i64` instead of
//! [0, 10^6); `--variants in-place,radix,rayon` picks variants; `--quick` runs a small size
//! once; `--json` prints one JSON object per size instead of the table; `--populate` backs the
//! store at start (`Config::populate`); `--max-workers N` caps the worker processes; `--timeline trace.json` writes the tasks of the largest
//! size as a Chrome trace (open it in ui.perfetto.dev).

#[path = "sort_tasks.rs"]
mod sort_tasks;

#[path = "sort_bench.rs"]
mod sort_bench;

use rayfork::Runtime;
use sort_bench::{Keys, Plan, Variant};

fn main() -> rayfork::Result<()> {
    let mut sizes = vec![1_000_000, 8_000_000];
    let mut extra: Vec<usize> = Vec::new();
    let mut rounds = 3;
    let mut keys = Keys::Seed;
    let mut json = false;
    let mut populate = false;
    let mut max_workers = None;
    let mut variants: Option<Vec<Variant>> = None;
    let mut timeline = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                sizes = vec![1_000_000];
                rounds = 1;
            }
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(3),
            "--full-range" => keys = Keys::Full,
            "--json" => json = true,
            "--populate" => populate = true,
            "--max-workers" => max_workers = args.next().and_then(|n| n.parse().ok()),
            "--variants" => {
                let list = args.next().unwrap_or_default();
                variants = Some(
                    sort_bench::parse_variants(&list).map_err(rayfork::Error::InvalidArgument)?,
                );
            }
            "--timeline" => timeline = Some(args.next().expect("--timeline needs a file name")),
            n => extra.push(n.replace('_', "").parse().expect("a size, e.g. 32000000")),
        }
    }
    if !extra.is_empty() {
        sizes.extend(extra);
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let largest = sizes.iter().copied().max().unwrap_or(0);
    for &n in &sizes {
        let plan = Plan {
            n,
            cpus,
            rounds: rounds.max(1),
            keys,
            variants: variants
                .clone()
                .unwrap_or_else(|| sort_bench::default_variants(n)),
        };
        let mut cfg = Runtime::builder()
            .num_cpus(cpus)
            .store_capacity(plan.store_bytes())
            .populate(populate);
        if let Some(m) = max_workers {
            cfg = cfg.max_workers(m);
        }
        let trace = timeline.as_deref().filter(|_| n == largest);
        let rows = sort_bench::run(&cfg, &plan, trace)?;
        if json {
            println!("{}", sort_bench::to_json(&plan, &rows));
        } else {
            sort_bench::print_table(&plan, &rows);
            println!();
        }
        assert!(rows.iter().all(|r| r.checked), "a sort gave a wrong result");
    }
    Ok(())
}
