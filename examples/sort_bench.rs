//! The sort benchmark shared (by `#[path]`) by the quicksort example and `rayfork sort`: every
//! variant of sort_tasks.rs and the in-process baselines on the same keys, median times, peak
//! store bytes and worker processes per variant, a check of every run, a table or one JSON
//! object.
//!
//! Keys are made from their index by a hash (so every variant sorts the same keys without a
//! copy of them kept around), and a run is checked without a second sorted copy: the output
//! must be in order and have the input's fingerprint (a sum of hashed keys, so a lost, doubled
//! or changed key shows). This is what lets 10^9 keys (8 GB) be sorted and checked on a
//! machine that holds them three times over.

#![allow(dead_code)]

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayfork::{ArrayMut, Config, Runtime};
use rayon::prelude::*;

use crate::sort_tasks::{
    in_place_leaf, quick_sort, quick_sort_in_place, quick_sort_in_place_seq, quick_sort_seq,
    radix_sort_tasks, sample_sort,
};

/// Which keys to sort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// In [0, 10^6), as the reference's quicksort example.
    Seed,
    /// Any `i64`.
    Full,
}

impl Keys {
    pub fn name(self) -> &'static str {
        match self {
            Keys::Seed => "random i64 in [0, 1_000_000)",
            Keys::Full => "random i64 over the full range",
        }
    }
}

/// A variant of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Nested quicksort tasks on windows of one array, in place (the headline).
    InPlace,
    /// The parallel radix sort over windows.
    Radix,
    /// The seed algorithm as nested tasks (new arrays per level, concatenation).
    SeedNested,
    /// Sample sort: one bucket per task.
    SampleSort,
    /// The in-place recursion in one process.
    InPlaceOneProcess,
    /// The seed algorithm in one process.
    SeedOneProcess,
    /// rayon's `par_sort_unstable` in this process.
    Rayon,
    /// std's `sort_unstable` in this process.
    Std,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::InPlace,
        Variant::Radix,
        Variant::SeedNested,
        Variant::SampleSort,
        Variant::InPlaceOneProcess,
        Variant::SeedOneProcess,
        Variant::Rayon,
        Variant::Std,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::InPlace => "in-place nested quicksort",
            Variant::Radix => "radix sort tasks",
            Variant::SeedNested => "seed algorithm, nested tasks",
            Variant::SampleSort => "sample sort tasks",
            Variant::InPlaceOneProcess => "in-place quicksort, 1 process",
            Variant::SeedOneProcess => "seed algorithm, 1 process",
            Variant::Rayon => "rayon par_sort_unstable",
            Variant::Std => "std sort_unstable",
        }
    }

    /// True for the variants that run as rayfork tasks.
    pub fn is_rayfork(self) -> bool {
        matches!(
            self,
            Variant::InPlace | Variant::Radix | Variant::SeedNested | Variant::SampleSort
        )
    }

    /// The one-process run of the same algorithm, for the speedup column.
    pub fn one_process(self) -> Option<Variant> {
        match self {
            Variant::InPlace => Some(Variant::InPlaceOneProcess),
            Variant::SeedNested => Some(Variant::SeedOneProcess),
            _ => None,
        }
    }

    /// Store bytes it needs per input byte, at most (measured peaks, with room).
    pub fn store_factor(self) -> u64 {
        match self {
            Variant::InPlace => 1,
            Variant::Radix => 2,
            // Peaks measured: 2.0-2.3x for the seed, 3x for the sample sort; the room above
            // is for the holes large arrays leave between them.
            Variant::SeedNested | Variant::SampleSort => 5,
            _ => 0,
        }
    }
}

/// SplitMix64: a strong 64-bit mix, for keys and fingerprints.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` with the keys of indices `0..out.len()` (in parallel, in this process).
pub fn fill(out: &mut [i64], keys: Keys, seed: u64) {
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, part)| {
        for (j, x) in part.iter_mut().enumerate() {
            *x = key_at(c * CHUNK + j, keys, seed);
        }
    });
}

/// The key of index `i`.
#[inline(always)]
fn key_at(i: usize, keys: Keys, seed: u64) -> i64 {
    let h = mix(seed ^ mix(i as u64));
    match keys {
        Keys::Seed => (h % 1_000_000) as i64,
        Keys::Full => h as i64,
    }
}

/// The fingerprint of the `n` keys `fill` makes, without making them.
pub fn fingerprint_of_keys(n: usize, keys: Keys, seed: u64) -> u64 {
    (0..n)
        .into_par_iter()
        .with_min_len(1 << 16)
        .map(|i| mix(key_at(i, keys, seed) as u64))
        .reduce(|| 0, u64::wrapping_add)
}

/// A fingerprint of the multiset of `v`'s keys: equal for any order of the same keys.
pub fn fingerprint(v: &[i64]) -> u64 {
    v.par_chunks(1 << 16)
        .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(mix(x as u64))))
        .reduce(|| 0, u64::wrapping_add)
}

/// True if `v` is sorted and has the fingerprint `want`.
pub fn check(v: &[i64], want: u64) -> bool {
    let sorted = v.par_windows(2).with_min_len(1 << 16).all(|w| w[0] <= w[1]);
    sorted && fingerprint(v) == want
}

/// One row of the result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub name: &'static str,
    /// `"rayfork"` or `"baseline"`.
    pub kind: &'static str,
    /// The median time of the runs, in seconds.
    pub seconds: f64,
    /// The most store bytes in use during a run (rayfork variants).
    pub peak_store_bytes: Option<u64>,
    /// The most worker processes alive during a run (rayfork variants).
    pub workers: Option<usize>,
    /// Every run's output was sorted and had the input's keys.
    pub checked: bool,
    /// Kernel (system) CPU time over wall time in the median run, counting this process and
    /// every worker process: the cost of page faults and zeroing.
    pub sys_share: f64,
    /// This variant's time over its one-process run, when both ran.
    #[serde(skip)]
    pub speedup: Option<f64>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub n: usize,
    pub cpus: usize,
    pub rounds: usize,
    pub keys: Keys,
    pub variants: Vec<Variant>,
}

impl Plan {
    /// The store capacity the planned rayfork variants need (bytes).
    pub fn store_bytes(&self) -> u64 {
        let factor = self.variants.iter().map(|v| v.store_factor()).max();
        let bytes = (self.n as u64) * 8;
        (factor.unwrap_or(1) * bytes + bytes / 8).max(256 << 20)
    }
}

/// Prints the elapsed time of a long run on stderr, only when stderr is a terminal (piped
/// output stays clean).
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: String) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::io::stderr().is_terminal().then(|| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let mut shown = false;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(250));
                    if t.elapsed() > Duration::from_secs(1) && !flag.load(Ordering::Relaxed) {
                        eprint!("\r  {label}: {:.1} s ", t.elapsed().as_secs_f64());
                        shown = true;
                    }
                }
                if shown {
                    eprint!("\r{:70}\r", "");
                }
            })
        });
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A store array holding the keys.
fn keys_in_store(rt: &Runtime, plan: &Plan) -> rayfork::Result<ArrayMut<i64>> {
    let mut m = rt.array_mut::<i64>(plan.n)?;
    fill(&mut m, plan.keys, 42);
    Ok(m)
}

/// The keys in a `Vec`.
fn keys_in_vec(plan: &Plan) -> Vec<i64> {
    let mut v = vec![0i64; plan.n];
    fill(&mut v, plan.keys, 42);
    v
}

/// System CPU seconds used so far by this process and every live process below it (the fork
/// server and the workers), from `/proc`.
fn sys_seconds_of_tree() -> f64 {
    let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    // Fields after the command name: state is field 3; ppid 4; stime 15 (1-based).
    let fields = |s: &str| -> Option<(u32, u64)> {
        let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
        Some((rest.get(1)?.parse().ok()?, rest.get(12)?.parse().ok()?))
    };
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, stime)) = stat(&pid.to_string()).as_deref().and_then(fields) {
                procs.push((pid, ppid, stime));
            }
        }
    }
    let me = std::process::id();
    let mut tree = vec![me];
    let mut ticks = 0;
    while let Some(p) = tree.pop() {
        for &(pid, ppid, stime) in &procs {
            if pid == p {
                ticks += stime;
            }
            if ppid == p {
                tree.push(pid);
            }
        }
    }
    // Clock ticks: 100 per second on Linux (`getconf CLK_TCK`).
    ticks as f64 / 100.0
}

/// One run's measurements.
struct Run {
    took: Duration,
    sys: f64,
    checked: bool,
}

/// Runs `f` (the timed part) and checks its output.
fn time_and_check<R: AsRef<[i64]>>(
    want: u64,
    f: impl FnOnce() -> rayfork::Result<R>,
) -> rayfork::Result<Run> {
    let sys = sys_seconds_of_tree();
    let t = Instant::now();
    let out = f()?;
    let took = t.elapsed();
    let sys = sys_seconds_of_tree() - sys;
    Ok(Run {
        took,
        sys,
        checked: check(out.as_ref(), want),
    })
}

/// One timed run of `v` on fresh keys: its time, and whether its output checked.
fn run_once(rt: &Runtime, plan: &Plan, v: Variant, want: u64) -> rayfork::Result<Run> {
    let leaf = in_place_leaf(plan.n, plan.cpus);
    match v {
        Variant::InPlace => {
            let w = keys_in_store(rt, plan)?.into_window()?;
            time_and_check(want, || {
                rt.get(&quick_sort_in_place::remote(w, leaf))?.seal()
            })
        }
        Variant::Radix => {
            let m = keys_in_store(rt, plan)?;
            time_and_check(want, || radix_sort_tasks(m, plan.cpus))
        }
        Variant::SeedNested => {
            let data = keys_in_store(rt, plan)?.seal()?;
            // The array moves into the task, which frees it once partitioned.
            time_and_check(want, || {
                rt.get(&quick_sort::options().max_retries(0).remote(data))
            })
        }
        Variant::SampleSort => {
            let data = keys_in_store(rt, plan)?.seal()?;
            time_and_check(want, || sample_sort(rt, &data, plan.cpus))
        }
        Variant::InPlaceOneProcess => {
            let mut v = keys_in_vec(plan);
            time_and_check(want, || {
                quick_sort_in_place_seq(&mut v, leaf);
                Ok(&v)
            })
        }
        Variant::SeedOneProcess => {
            let v = keys_in_vec(plan);
            time_and_check(want, || Ok(quick_sort_seq(v)))
        }
        Variant::Rayon => {
            let mut v = keys_in_vec(plan);
            time_and_check(want, || {
                v.par_sort_unstable();
                Ok(&v)
            })
        }
        Variant::Std => {
            let mut v = keys_in_vec(plan);
            time_and_check(want, || {
                v.sort_unstable();
                Ok(&v)
            })
        }
    }
}

/// Runs every planned variant `plan.rounds` times (baselines first), each variant on a fresh
/// runtime made from `cfg` (so no variant inherits another's workers or store layout), and
/// returns one row per variant, in the plan's order. With `timeline`, writes the trace of the
/// headline variant's tasks there (and their summary on stderr). Checks that each variant
/// leaves the store empty.
pub fn run(cfg: &Config, plan: &Plan, timeline: Option<&str>) -> rayfork::Result<Vec<Row>> {
    let want = fingerprint_of_keys(plan.n, plan.keys, 42);
    let mut order: Vec<Variant> = plan.variants.clone();
    order.sort_by_key(|v| v.is_rayfork());
    let mut rows = Vec::new();
    for &v in &order {
        let rt = cfg.clone().start()?;
        let rt = &rt;
        let mut times = Vec::with_capacity(plan.rounds);
        let (mut peak, mut workers, mut checked) = (0, 0, true);
        for r in 0..plan.rounds {
            let _p = Progress::start(format!("{} run {}/{}", v.name(), r + 1, plan.rounds));
            rt.take_peaks()?;
            let run = run_once(rt, plan, v, want)?;
            let s = rt.take_peaks()?;
            peak = peak.max(s.store.peak_used);
            workers = workers.max(s.peak_workers);
            checked &= run.checked;
            times.push((run.took, run.sys));
        }
        if let Some(path) = timeline.filter(|_| v == Variant::InPlace) {
            let events = rt.timeline(path)?;
            eprintln!("{events} trace events of the in-place runs written to {path}; the tasks:");
            eprintln!("{}", rt.summary()?);
        }
        let mut used = rt.stats()?.store.used;
        for _ in 0..200 {
            if used == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            used = rt.stats()?.store.used;
        }
        if used != 0 {
            return Err(rayfork::Error::Runtime(format!(
                "{} left {used} store bytes in use",
                v.name()
            )));
        }
        times.sort_by_key(|t| t.0);
        let (median, sys) = times[times.len() / 2];
        rows.push((
            v,
            Row {
                name: v.name(),
                kind: if v.is_rayfork() {
                    "rayfork"
                } else {
                    "baseline"
                },
                seconds: median.as_secs_f64(),
                sys_share: sys / median.as_secs_f64(),
                peak_store_bytes: v.is_rayfork().then_some(peak),
                workers: v.is_rayfork().then_some(workers),
                checked,
                speedup: None,
            },
        ));
    }
    let secs = |x: Variant, rows: &[(Variant, Row)]| {
        rows.iter().find(|(v, _)| *v == x).map(|(_, r)| r.seconds)
    };
    let speedups: Vec<Option<f64>> = rows
        .iter()
        .map(|(v, r)| {
            v.one_process()
                .and_then(|o| secs(o, &rows))
                .map(|one| one / r.seconds)
        })
        .collect();
    let mut out = Vec::new();
    for &v in &plan.variants {
        let i = rows
            .iter()
            .position(|(x, _)| *x == v)
            .expect("ran every variant");
        let mut row = rows[i].1.clone();
        row.speedup = speedups[i];
        out.push(row);
    }
    Ok(out)
}

/// Prints the rows as a table.
pub fn print_table(plan: &Plan, rows: &[Row]) {
    println!(
        "{} keys ({}), {} CPUs, median of {} run(s), every run checked (in order, same keys):",
        plan.n,
        plan.keys.name(),
        plan.cpus,
        plan.rounds
    );
    println!(
        "  {:<31} {:>9} {:>9} {:>6} {:>12} {:>8} {:>6}",
        "variant", "seconds", "vs 1 proc", "sys", "peak store", "workers", "check"
    );
    let rayon = rows
        .iter()
        .find(|r| r.name == Variant::Rayon.name())
        .map(|r| r.seconds);
    for r in rows {
        let speedup = r.speedup.map_or(String::new(), |s| format!("{s:.2}x"));
        let peak = r.peak_store_bytes.map_or(String::new(), |b| {
            format!("{:.2}x in", b as f64 / (plan.n as f64 * 8.0))
        });
        let workers = r.workers.map_or(String::new(), |w| w.to_string());
        let check = if r.checked { "ok" } else { "WRONG" };
        // The kernel counts CPU time in 10 ms ticks: a share of a shorter run means nothing.
        let sys = if r.seconds >= 0.25 {
            format!("{:.0}%", r.sys_share * 100.0)
        } else {
            "-".to_string()
        };
        println!(
            "  {:<31} {:>9.3} {:>9} {:>6} {:>12} {:>8} {:>6}",
            r.name, r.seconds, speedup, sys, peak, workers, check
        );
    }
    if let Some(rayon) = rayon {
        let best = rows
            .iter()
            .filter(|r| r.kind == "rayfork")
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds));
        if let Some(b) = best {
            println!(
                "  best rayfork variant ({}) takes {:.2}x rayon's time",
                b.name,
                b.seconds / rayon
            );
        }
    }
}

/// The rows as one JSON object (`{"n", "cpus", "rounds", "keys", "variants": [...]}`).
pub fn to_json(plan: &Plan, rows: &[Row]) -> String {
    serde_json::json!({
        "n": plan.n,
        "cpus": plan.cpus,
        "rounds": plan.rounds,
        "keys": match plan.keys { Keys::Seed => "seed", Keys::Full => "full" },
        "variants": rows,
    })
    .to_string()
}

/// Parses a variant list such as `in-place,radix,rayon`.
pub fn parse_variants(s: &str) -> Result<Vec<Variant>, String> {
    s.split(',')
        .map(|name| {
            let v = match name.trim() {
                "in-place" => Variant::InPlace,
                "radix" => Variant::Radix,
                "seed" => Variant::SeedNested,
                "sample" => Variant::SampleSort,
                "in-place-1" => Variant::InPlaceOneProcess,
                "seed-1" => Variant::SeedOneProcess,
                "rayon" => Variant::Rayon,
                "std" => Variant::Std,
                other => {
                    return Err(format!(
                        "unknown variant {other:?}: expected in-place, radix, seed, sample, \
                         in-place-1, seed-1, rayon or std"
                    ));
                }
            };
            Ok(v)
        })
        .collect()
}

/// The variants to run at `n` keys by default: all of them, but the seed algorithm (its
/// one-process run takes minutes) above 10^8.
pub fn default_variants(n: usize) -> Vec<Variant> {
    Variant::ALL
        .into_iter()
        .filter(|v| {
            n <= 100_000_000
                || !matches!(
                    v,
                    Variant::SeedNested | Variant::SeedOneProcess | Variant::SampleSort
                )
        })
        .collect()
}
