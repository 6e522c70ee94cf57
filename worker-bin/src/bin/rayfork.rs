//! `rayfork`: the command line. The sort demo and a short benchmark, from one binary that is
//! also its own worker program (nothing else to build or install).
//!
//! ```text
//! rayfork sort [N] [--rounds R] [--cpus C] [--timeline FILE]
//! rayfork bench [--cpus C]
//! ```
//!
//! `sort` sorts N random integers (default 10 000 000) with the nested-tasks quicksort and the
//! sample sort of the quicksort example, checks every run against `sort_unstable` and prints
//! the median times beside the same algorithm in one process; `--timeline` writes the tasks'
//! Chrome trace. `bench` prints the empty-task round trip, the throughput with 1000 tasks and
//! 1000 actor calls in flight. The full tables are the `quicksort` and `microbenchmark`
//! examples.

#[path = "../../../examples/sort_tasks.rs"]
mod sort_tasks;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rayfork::{Runtime, remote};
use sort_tasks::{quick_sort, quick_sort_seq, random_ints, sample_sort};

const USAGE: &str = "usage:
  rayfork sort [N] [--rounds R] [--cpus C] [--timeline FILE]
      sort N random integers (default 10000000) with nested tasks and a sample sort
  rayfork bench [--cpus C]
      empty-task round trip and throughput with 1000 tasks / actor calls in flight";

/// Options of both commands.
struct Opts {
    n: usize,
    rounds: usize,
    cpus: usize,
    timeline: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        n: 10_000_000,
        rounds: 3,
        cpus: std::thread::available_parallelism().map_or(2, |n| n.get()),
        timeline: None,
    };
    let mut it = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<usize, String> {
        v.and_then(|s| s.replace('_', "").parse().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{what} needs a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => o.rounds = number(it.next(), "--rounds")?,
            "--cpus" => o.cpus = number(it.next(), "--cpus")?,
            "--timeline" => {
                o.timeline = Some(it.next().ok_or("--timeline needs a file name")?.clone())
            }
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

/// The median of `rounds` timed runs of `f`, each checked by `check`.
fn median_of<R>(
    rounds: usize,
    mut f: impl FnMut() -> rayfork::Result<R>,
    check: impl Fn(&R) -> bool,
) -> rayfork::Result<Duration> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let out = f()?;
        times.push(t.elapsed());
        if !check(&out) {
            return Err(rayfork::Error::Runtime("a sort gave a wrong result".into()));
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn sort(o: &Opts) -> rayfork::Result<()> {
    let input = random_ints(o.n, 42);
    let mut expected = input.clone();
    expected.sort_unstable();
    let rt = Runtime::builder()
        .num_cpus(o.cpus)
        .store_capacity((24 * 8 * o.n as u64).max(1 << 30))
        .start()?;
    let data = rt.put_array(&input)?;
    let same = |out: &[i64]| out == expected.as_slice();
    let seq = median_of(o.rounds, || Ok(quick_sort_seq(input.clone())), |v| same(v))?;
    let nested = median_of(
        o.rounds,
        || rt.get(&quick_sort::remote(data.clone())),
        |a| same(a),
    )?;
    let sample = median_of(o.rounds, || sample_sort(&rt, &data, o.cpus), |a| same(a))?;
    println!(
        "sorted {} integers on {} CPUs, median of {} run(s), every run checked:",
        o.n, o.cpus, o.rounds
    );
    println!(
        "  one process (the seed algorithm) {:>9.3} s",
        seq.as_secs_f64()
    );
    let ratio = |d: Duration| seq.as_secs_f64() / d.as_secs_f64();
    println!(
        "  nested quicksort tasks           {:>9.3} s  ({:.2}x)",
        nested.as_secs_f64(),
        ratio(nested)
    );
    println!(
        "  sample sort, {:>2} bucket tasks    {:>9.3} s  ({:.2}x)",
        o.cpus,
        sample.as_secs_f64(),
        ratio(sample)
    );
    if let Some(path) = &o.timeline {
        let events = rt.timeline(path)?;
        println!("{events} trace events written to {path}");
    }
    println!("\n{}", rt.summary()?);
    Ok(())
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

    fn incr(&mut self) -> u64 {
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
    let counter = Counter::remote();
    let calls = burst(&|| {
        let refs: Vec<_> = (0..1000).map(|_| counter.incr()).collect();
        rt.get_all(&refs).map(drop)
    })?;
    println!("rayfork on {} CPUs (medians):", o.cpus);
    println!(
        "  empty task, sync round trip     {:>9.1} us",
        p50.as_secs_f64() * 1e6
    );
    println!("  empty tasks, 1000 in flight     {:>9.1} k/s", tasks / 1e3);
    println!("  actor calls, 1000 in flight     {:>9.1} k/s", calls / 1e3);
    Ok(())
}
