//! `rayfork`: the command line. The sort demo and a short benchmark, from one binary that is
//! also its own worker program (nothing else to build or install).
//!
//! ```text
//! rayfork sort [N] [--rounds R] [--cpus C] [--full-range] [--variants LIST] [--json]
//!              [--timeline FILE]
//! rayfork bench [--cpus C] [--json]
//! ```
//!
//! `sort` sorts N random integers (default 10 000 000) with every variant of the quicksort
//! example (the in-place nested quicksort on windows first, the radix sort tasks, the seed
//! algorithm as nested tasks up to 10^8 keys) beside the baselines in one process, checks every
//! run (sorted, same keys) and prints the median times, peak store bytes and worker processes
//! per variant; it sizes the store for the variants it runs. `--json` prints one JSON object
//! instead. `bench` prints the empty-task round trip, the throughput with 1000 tasks and 1000
//! actor calls in flight. The full tables are the `quicksort` and `microbenchmark` examples.

#[path = "../../../examples/sort_tasks.rs"]
mod sort_tasks;

#[path = "../../../examples/sort_bench.rs"]
mod sort_bench;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rayfork::{Runtime, remote};
use sort_bench::{Keys, Plan, Variant};

const USAGE: &str = "usage:
  rayfork sort [N] [--rounds R] [--cpus C] [--full-range] [--variants LIST] [--json] [--timeline FILE]
      sort N random integers (default 10000000) with every variant and baseline, checked;
      LIST is a comma-separated choice of in-place, radix, seed, sample, in-place-1, seed-1,
      rayon, std
  rayfork bench [--cpus C] [--json]
      empty-task round trip and throughput with 1000 tasks / actor calls in flight";

/// Options of both commands.
struct Opts {
    n: usize,
    rounds: Option<usize>,
    cpus: usize,
    keys: Keys,
    variants: Option<Vec<Variant>>,
    json: bool,
    timeline: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        n: 10_000_000,
        rounds: None,
        cpus: std::thread::available_parallelism().map_or(2, |n| n.get()),
        keys: Keys::Seed,
        variants: None,
        json: false,
        timeline: None,
    };
    let mut it = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{what} needs a value"))?;
        v.replace('_', "")
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{what} needs a positive number, got {v:?}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => o.rounds = Some(number(it.next(), "--rounds")?),
            "--cpus" => o.cpus = number(it.next(), "--cpus")?,
            "--full-range" => o.keys = Keys::Full,
            "--json" => o.json = true,
            "--variants" => {
                let list = it.next().ok_or("--variants needs a list")?;
                o.variants = Some(sort_bench::parse_variants(list)?);
            }
            "--timeline" => {
                o.timeline = Some(it.next().ok_or("--timeline needs a file name")?.clone())
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            n => o.n = number(Some(&n.to_string()), "the size")?,
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.first().map(String::as_str) {
        Some("sort") => parse(&args[1..]).map(|o| sort(&o)),
        Some("bench") => parse(&args[1..]).map(|o| bench(&o)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err("expected a command".to_string()),
    };
    match run {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("rayfork: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("rayfork: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn sort(o: &Opts) -> rayfork::Result<()> {
    let plan = Plan {
        n: o.n,
        cpus: o.cpus,
        // Three runs per variant up to 10^8 keys, one above (10^9 takes minutes per round).
        rounds: o.rounds.unwrap_or(if o.n <= 100_000_000 { 3 } else { 1 }),
        keys: o.keys,
        variants: o
            .variants
            .clone()
            .unwrap_or_else(|| sort_bench::default_variants(o.n)),
    };
    let store = plan.store_bytes();
    let cfg = Runtime::builder().num_cpus(o.cpus).store_capacity(store);
    // A first start says at once, and clearly, when the store cannot be made.
    drop(cfg.clone().start().map_err(|e| {
        rayfork::Error::Runtime(format!(
            "sorting {} keys with {:?} needs an object store of {:.1} GB, which could not \
             be made ({e}); run fewer variants (--variants in-place needs 1x the keys' \
             bytes, radix 2x, seed and sample 5x) or fewer keys",
            o.n,
            plan.variants.iter().map(|v| v.name()).collect::<Vec<_>>(),
            store as f64 / 1e9
        ))
    })?);
    let rows = sort_bench::run(&cfg, &plan, o.timeline.as_deref())?;
    if o.json {
        println!("{}", sort_bench::to_json(&plan, &rows));
    } else {
        sort_bench::print_table(&plan, &rows);
    }
    if rows.iter().all(|r| r.checked) {
        Ok(())
    } else {
        Err(rayfork::Error::Runtime("a sort gave a wrong result".into()))
    }
}

/// An empty task.
#[remote]
fn noop() {}

/// An actor that counts its calls.
struct Counter(u64);

#[rayfork::actor]
impl Counter {
    fn new() -> Counter {
        Counter(0)
    }

    pub fn incr(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn bench(o: &Opts) -> rayfork::Result<()> {
    let rt = Runtime::builder().num_cpus(o.cpus).start()?;
    let mut single: Vec<Duration> = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        rt.get(&noop::remote())?;
        single.push(t.elapsed());
    }
    single.sort();
    let p50 = single[single.len() / 2];
    let burst = |submit: &dyn Fn() -> rayfork::Result<()>| -> rayfork::Result<f64> {
        let mut rates = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..10 {
                submit()?;
            }
            rates.push(10_000.0 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates[rates.len() / 2])
    };
    let tasks = burst(&|| {
        let refs: Vec<_> = (0..1000).map(|_| noop::remote()).collect();
        rt.get_all(&refs).map(drop)
    })?;
    let quiet = burst(&|| {
        let refs: Vec<_> = (0..1000)
            .map(|_| noop::options().enable_task_events(false).remote())
            .collect();
        rt.get_all(&refs).map(drop)
    })?;
    let counter = Counter::remote();
    let calls = burst(&|| {
        let refs: Vec<_> = (0..1000).map(|_| counter.incr()).collect();
        rt.get_all(&refs).map(drop)
    })?;
    if o.json {
        let json = serde_json::json!({
            "cpus": o.cpus,
            "round_trip_us": p50.as_secs_f64() * 1e6,
            "tasks_in_flight_per_s": tasks,
            "tasks_in_flight_no_events_per_s": quiet,
            "actor_calls_in_flight_per_s": calls,
        });
        println!("{json}");
        return Ok(());
    }
    println!("rayfork on {} CPUs (medians):", o.cpus);
    println!(
        "  empty task, sync round trip     {:>9.1} us",
        p50.as_secs_f64() * 1e6
    );
    println!("  empty tasks, 1000 in flight     {:>9.1} k/s", tasks / 1e3);
    println!(
        "    the same, task events off     {:>9.1} k/s  (recording costs {:.2} us per task)",
        quiet / 1e3,
        (1e6 / tasks - 1e6 / quiet).max(0.0)
    );
    println!("  actor calls, 1000 in flight     {:>9.1} k/s", calls / 1e3);
    Ok(())
}
