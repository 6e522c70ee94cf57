//! `ray microbenchmark`, rayfork edition: one line per scenario with ops/s and us/op, beside
//! the Ray 2.60 figure measured on this kind of machine (2 cores), and the ratio to it.
//!
//! Scenarios (each the median of several rounds, after a warm-up):
//! 1. empty task, sync round trip: `get(noop::remote())` in a loop.
//! 2. empty tasks, 1000 in flight: submit 1000, then `get_all`, repeated.
//! 3. `Runtime::start()` to the first task result (start, one noop, get), then drop.
//! 4. memory: RSS and PSS of each idle worker and of the fork server (from /proc).
//! 5. a 64 MiB `Array<u64>`: `put_array`, a task that checksums it in place, `get`; against a
//!    plain 64 MiB memcpy in the same run.
//! 6. actors and generators: an actor call's sync round trip, 1000 actor calls in flight,
//!    generator items taken one by one, and the empty-task round trip again with 101 actors
//!    (idle processes) alive.
//! 7. faults: a task whose first attempt crashes (abort) against one that does not (the
//!    difference is the recovery overhead), a crash reported with retries off, force cancel and
//!    cooperative cancel (cancel call to `get` returning), a non-polling task stopped after the
//!    grace period, and worker replacement; beside the Ray 2.60 figures of issue 5.
//!
//! Run: `cargo run --release --example microbenchmark` (`-- --quick` for a short run, as in CI).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rayfork::{Array, CancelMode, Runtime, remote};
use rayfork_examples::timed;

/// An empty task (Ray's `f.remote()` of a function returning `None`).
#[remote]
fn noop() {}

/// The pid of the worker running it, after `ms` milliseconds (so concurrent calls spread over
/// all workers).
#[remote]
fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// A wrapping sum of the array, read in place in shared memory.
#[remote]
fn checksum(a: Array<u64>) -> u64 {
    sum(&a)
}

/// Crashes (SIGABRT) on its first attempt, tells the attempts apart by a marker file.
#[remote]
fn crash_once(marker: String) -> u32 {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"1").expect("write marker");
        std::process::abort();
    }
    std::process::id()
}

/// The same task without the crash: the baseline of the recovery overhead.
#[remote]
fn no_crash(marker: String) -> u32 {
    let _ = std::fs::metadata(&marker).is_err();
    std::fs::write(&marker, b"1").expect("write marker");
    std::process::id()
}

/// Always crashes.
#[remote]
fn crash_always() -> u32 {
    std::process::abort()
}

/// Announces it runs, then spins until cancelled (polling the flag) or forever (not polling).
#[remote]
fn spin(started: String, polls: bool) -> u64 {
    std::fs::write(&started, b"1").expect("write marker");
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
        if polls && rayfork::is_cancelled() {
            return n;
        }
    }
}

fn sum(v: &[u64]) -> u64 {
    v.iter().fold(0u64, |s, x| s.wrapping_add(*x))
}

/// Round counts and sizes for a full or a `--quick` run.
struct Plan {
    rounds: usize,
    round_trips: usize,
    batches: usize,
    starts: usize,
    array_rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 3,
                round_trips: 300,
                batches: 3,
                starts: 4,
                array_rounds: 2,
            }
        } else {
            Plan {
                rounds: 7,
                round_trips: 3000,
                batches: 20,
                starts: 11,
                array_rounds: 5,
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The seconds each of `n` single runs of `op` took (failures counted in `fails`).
fn singles<T>(n: usize, fails: &mut usize, mut op: impl FnMut() -> rayfork::Result<T>) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let (r, d) = timed(&mut op);
            *fails += usize::from(r.is_err());
            d.as_secs_f64()
        })
        .collect()
}

/// Median seconds per op over `rounds` rounds of `ops` ops each, `f` running one round.
fn per_op(rounds: usize, ops: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| timed(&mut f).1.as_secs_f64() / ops as f64)
        .collect();
    median(&mut v)
}

/// A Ray 2.60 figure: its text as the issue gives it, and seconds per op (the middle of the
/// range) for the ratio; `None` when Ray has no figure for the scenario.
struct Ray {
    text: &'static str,
    secs_per_op: Option<f64>,
}

fn header() {
    println!(
        "{:<44} {:>13} {:>11}   {:<22} {:>10}",
        "scenario", "ops/s", "us/op", "Ray 2.60 (baseline)", "vs Ray"
    );
    println!("{}", "-".repeat(106));
}

/// One timed scenario line.
fn row(name: &str, secs_per_op: f64, ray: &Ray) {
    let ratio = ray
        .secs_per_op
        .map_or_else(|| "-".into(), |r| format!("{:.0}x", r / secs_per_op));
    println!(
        "{:<44} {:>13.1} {:>11.2}   {:<22} {:>10}",
        name,
        1.0 / secs_per_op,
        secs_per_op * 1e6,
        ray.text,
        ratio
    );
}

/// One line whose figure is not a rate (memory, bandwidth).
fn row_text(name: &str, figure: &str, ray: &str, ratio: &str) {
    println!("{name:<44} {figure:>25}   {ray:<22} {ratio:>10}");
}

/// A `kB` field of a /proc file, in KiB.
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (VmRSS, Pss) of a process in KiB.
fn rss_pss(pid: u32) -> (u64, u64) {
    (
        proc_kib(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0),
        proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0),
    )
}

/// The parent pid of a process (field 4 of /proc/<pid>/stat, after the command in parens).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() -> rayfork::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    let cpus = 2;
    println!(
        "rayfork microbenchmark ({} run, num_cpus {cpus}, {} CPUs on this machine; median of {} rounds)\n",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        plan.rounds,
    );

    // 3 first, while no other runtime exists: start -> first result, then the drop.
    let mut starts = Vec::new();
    let mut drops = Vec::new();
    for _ in 0..plan.starts {
        let t = Instant::now();
        let rt = Runtime::builder().num_cpus(cpus).start()?;
        rt.get(&noop::remote())?;
        starts.push(t.elapsed().as_secs_f64());
        drops.push(timed(move || drop(rt)).1.as_secs_f64());
    }
    let start_s = median(&mut starts);
    let drop_s = median(&mut drops);

    let rt = Runtime::builder().num_cpus(cpus).start()?;

    // 1. Sync round trip.
    for _ in 0..plan.round_trips / 3 {
        rt.get(&noop::remote())?;
    }
    let mut fails = 0usize;
    let rtt = per_op(plan.rounds, plan.round_trips, || {
        for _ in 0..plan.round_trips {
            fails += usize::from(rt.get(&noop::remote()).is_err());
        }
    });

    // The same, op by op: the spread of single round trips.
    let mut single = singles(plan.round_trips, &mut fails, || rt.get(&noop::remote()));
    single.sort_by(f64::total_cmp);
    let pct = |p: usize| single[(single.len() - 1) * p / 100] * 1e6;
    let (p10, p50, p90, p99) = (pct(10), pct(50), pct(90), pct(99));

    // 2. 1000 in flight.
    const IN_FLIGHT: usize = 1000;
    let batch = |fails: &mut usize| {
        let refs: Vec<_> = (0..IN_FLIGHT).map(|_| noop::remote()).collect();
        *fails += usize::from(rt.get_all(&refs).is_err());
    };
    batch(&mut fails);
    let tput = per_op(plan.rounds, plan.batches * IN_FLIGHT, || {
        for _ in 0..plan.batches {
            batch(&mut fails);
        }
    });
    // Submission alone (the driver side of scenario 2).
    let mut submits = Vec::new();
    for _ in 0..plan.rounds {
        let (refs, d) = timed(|| (0..IN_FLIGHT).map(|_| noop::remote()).collect::<Vec<_>>());
        submits.push(d.as_secs_f64() / IN_FLIGHT as f64);
        fails += usize::from(rt.get_all(&refs).is_err());
    }
    let submit_s = median(&mut submits);

    // 4. Memory of the idle workers (after scenarios 1 and 2 ran on them).
    let stats = rt.stats()?;
    let mut workers = BTreeSet::new();
    for _ in 0..20 {
        let refs: Vec<_> = (0..4 * stats.workers)
            .map(|_| pid_after::remote(20))
            .collect();
        workers.extend(rt.get_all(&refs)?);
        if workers.len() >= stats.workers {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let me = std::process::id();
    let fork_server = workers.iter().find_map(|&w| parent_of(w));
    let per_worker: Vec<(u64, u64)> = workers.iter().map(|&w| rss_pss(w)).collect();
    let fs_mem = fork_server.map(rss_pss).unwrap_or_default();
    let driver_mem = rss_pss(me);
    drop(rt);

    // 5. 64 MiB array against memcpy.
    const N: usize = 64 << 20 >> 3;
    let src: Vec<u64> = (0..N as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let expect = sum(&src);
    let mut dst = vec![1u64; N];
    let memcpy_s = per_op(plan.array_rounds.max(3), 1, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
    });
    let sum_s = per_op(plan.array_rounds.max(3), 1, || {
        std::hint::black_box(sum(std::hint::black_box(&src)));
    });
    let rt = Runtime::builder()
        .num_cpus(cpus)
        .store_capacity(512 << 20)
        .start()?;
    let (mut puts, mut tasks, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.array_rounds + 1 {
        let t = Instant::now();
        let a = rt.put_array(&src)?;
        let put = t.elapsed();
        let got = rt.get(&checksum::remote(a))?;
        let total = t.elapsed();
        assert_eq!(
            got, expect,
            "the task read other bytes than the driver wrote"
        );
        puts.push(put.as_secs_f64());
        tasks.push((total - put).as_secs_f64());
        totals.push(total.as_secs_f64());
    }
    // The first round (fresh store pages) is the warm-up.
    let (put_s, task_s, total_s) = (
        median(&mut puts[1..]),
        median(&mut tasks[1..]),
        median(&mut totals[1..]),
    );
    let store_left = rt.stats()?.store;
    drop(rt);

    // The table.
    header();
    row(
        "empty task, sync round trip",
        rtt,
        &Ray {
            text: "1.8-2.1 ms/op",
            secs_per_op: Some(1.95e-3),
        },
    );
    row(
        "empty tasks, 1000 in flight",
        tput,
        &Ray {
            text: "1.6-1.8 k/s",
            secs_per_op: Some(1.0 / 1700.0),
        },
    );
    row(
        "  of which: submit only (driver side)",
        submit_s,
        &Ray {
            text: "-",
            secs_per_op: None,
        },
    );
    row(
        "Runtime::start() to first task result",
        start_s,
        &Ray {
            text: "2.7 s (ray.init alone)",
            secs_per_op: Some(2.7),
        },
    );
    row(
        "  Runtime drop (shutdown, reap)",
        drop_s,
        &Ray {
            text: "-",
            secs_per_op: None,
        },
    );
    let n = per_worker.len().max(1) as u64;
    let (rss_sum, pss_sum) = per_worker
        .iter()
        .fold((0, 0), |(r, p), (wr, wp)| (r + wr, p + wp));
    let (rss_max, pss_max) = per_worker
        .iter()
        .fold((0, 0), |(r, p), &(wr, wp)| (r.max(wr), p.max(wp)));
    let ray_per_proc = 683.0 / 9.0;
    row_text(
        &format!("idle worker RSS, mean of {n} (max)"),
        &format!("{:.1} MiB ({:.1})", mib(rss_sum / n), mib(rss_max)),
        "683 MiB / 9 procs",
        &format!("{:.0}x", ray_per_proc / mib(rss_sum / n).max(0.01)),
    );
    row_text(
        &format!("idle worker PSS, mean of {n} (max)"),
        &format!("{:.1} MiB ({:.1})", mib(pss_sum / n), mib(pss_max)),
        "= 75.9 MiB / proc",
        &format!("{:.0}x", ray_per_proc / mib(pss_sum / n).max(0.01)),
    );
    row_text(
        "fork server RSS / PSS",
        &format!("{:.1} / {:.1} MiB", mib(fs_mem.0), mib(fs_mem.1)),
        "-",
        "-",
    );
    let procs = per_worker.len() + usize::from(fork_server.is_some());
    let all_rss = rss_sum + fs_mem.0;
    let all_pss = pss_sum + fs_mem.1;
    row_text(
        &format!("all {procs} processes beyond the driver RSS/PSS"),
        &format!("{:.1} / {:.1} MiB", mib(all_rss), mib(all_pss)),
        "683 MiB (9 procs)",
        &format!("{:.0}x", 683.0 / mib(all_rss).max(0.01)),
    );
    row_text(
        "driver RSS / PSS (for reference)",
        &format!("{:.1} / {:.1} MiB", mib(driver_mem.0), mib(driver_mem.1)),
        "-",
        "-",
    );
    let gib_s = |s: f64| 64.0 / 1024.0 / s;
    let none = Ray {
        text: "-",
        secs_per_op: None,
    };
    row(
        "64 MiB Array: put_array + checksum task + get",
        total_s,
        &none,
    );
    row("  of which: put_array (one copy into store)", put_s, &none);
    row("  of which: checksum task + get (in place)", task_s, &none);
    row("64 MiB memcpy (baseline, same run)", memcpy_s, &none);
    row("64 MiB checksum in the driver (baseline)", sum_s, &none);
    println!();
    println!(
        "single round trips: p10 {p10:.1} us, p50 {p50:.1} us, p90 {p90:.1} us, p99 {p99:.1} us"
    );
    println!(
        "64 MiB: put+task+get {:.2} GiB/s = {:.2}x a memcpy ({:.2} GiB/s); put_array {:.2} GiB/s",
        gib_s(total_s),
        total_s / memcpy_s,
        gib_s(memcpy_s),
        gib_s(put_s),
    );
    println!(
        "targets: round trip <= 30 us (median of single round trips): {}; 1000 in flight >= \
         100 k/s: {}; start <= 20 ms: {}; idle worker <= 10 MiB (PSS): {}",
        verdict(p50 <= 30.0),
        verdict(tput <= 1e-5),
        verdict(start_s <= 20e-3),
        verdict(mib(pss_sum / n) <= 10.0),
    );
    println!(
        "failed gets: {fails}; store after the array runs: {} bytes used",
        store_left.used
    );
    actors_and_generators(&plan)?;
    faults(quick)
}

/// An actor that counts calls (for the actor round trip and throughput).
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[rayfork::actor]
impl Counter {
    /// A counter at zero.
    pub fn new() -> Counter {
        Counter::default()
    }

    /// Counts one call; the count so far.
    pub fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

/// Yields `n` small items as fast as the caller takes them.
#[remote(streaming)]
fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

/// Actor calls (sync round trip and 1000 in flight) and generator item throughput, against
/// Ray 2.60's actor figures.
fn actors_and_generators(plan: &Plan) -> rayfork::Result<()> {
    let rt = Runtime::builder().start()?;
    let c = Counter::remote();
    rt.get(&c.incr())?;
    let mut fails = 0usize;
    let call_p50 = median(&mut singles(plan.round_trips, &mut fails, || {
        rt.get(&c.incr())
    }));
    const IN_FLIGHT: usize = 1000;
    let calls = per_op(plan.rounds, plan.batches * IN_FLIGHT, || {
        for _ in 0..plan.batches {
            let refs: Vec<_> = (0..IN_FLIGHT).map(|_| c.incr()).collect();
            fails += usize::from(rt.get_all(&refs).is_err());
        }
    });
    let items = plan.batches as u64 * 1000;
    let item = per_op(plan.rounds, items as usize, || {
        for r in numbers::remote(items) {
            fails += usize::from(r.and_then(|r| rt.get(&r)).is_err());
        }
    });
    // Scale: the same empty-task round trip with 100 more actors alive (idle processes the
    // scheduler watches): a loop turn must not cost one poll entry per process.
    let crowd: Vec<_> = (0..100).map(|_| Counter::remote()).collect();
    for a in &crowd {
        fails += usize::from(rt.get(&a.incr()).is_err());
    }
    let crowded_p50 = median(&mut singles(plan.round_trips, &mut fails, || {
        rt.get(&noop::remote())
    }));
    drop(crowd);
    println!();
    println!("actors and generators (medians)");
    header();
    row(
        "actor call, sync round trip (median of single)",
        call_p50,
        &Ray {
            text: "1.2 k/s",
            secs_per_op: Some(1.0 / 1200.0),
        },
    );
    row(
        "actor calls, 1000 in flight",
        calls,
        &Ray {
            text: "4.0-4.5 k/s",
            secs_per_op: Some(1.0 / 4250.0),
        },
    );
    row(
        "generator items, taken one by one (get each)",
        item,
        &Ray {
            text: "-",
            secs_per_op: None,
        },
    );
    row(
        "empty task round trip, 101 actors alive",
        crowded_p50,
        &Ray {
            text: "-",
            secs_per_op: None,
        },
    );
    println!(
        "targets: actor round trip <= 30 us: {}; actor calls >= 100 k/s: {}; failed: {fails}",
        verdict(call_p50 <= 30e-6),
        verdict(calls <= 1e-5),
    );
    Ok(())
}

/// Waits until a task has created `path` (polling: a benchmark's rendezvous, not a test's).
fn wait_for(path: &std::path::Path) {
    while !path.exists() {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Section 6: crash recovery, cancel latency and worker replacement, each a median.
fn faults(quick: bool) -> rayfork::Result<()> {
    let runs = if quick { 5 } else { 41 };
    let dir = std::env::temp_dir().join(format!("rayfork-microbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| rayfork::Error::Runtime(e.to_string()))?;
    let mut next = 0u64;
    let mut fresh = |name: &str| {
        next += 1;
        dir.join(format!("{name}-{next}"))
    };
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let rt = Runtime::builder()
        .num_cpus(2)
        .store_capacity(64 << 20)
        .start()?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Warm up both workers.
    rt.get_all(&(0..4).map(|_| pid_after::remote(5)).collect::<Vec<_>>())?;

    let (mut plain, mut crashed, mut reported) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let m = fresh("plain");
        let (r, d) = timed(|| rt.get(&no_crash::remote(path(&m))));
        r?;
        plain.push(ms(d));
        let m = fresh("crash");
        let (r, d) = timed(|| rt.get(&crash_once::options().max_retries(1).remote(path(&m))));
        r?;
        crashed.push(ms(d));
        let (r, d) = timed(|| rt.get(&crash_always::options().max_retries(0).remote()));
        assert!(matches!(r, Err(rayfork::Error::WorkerCrashed { .. })));
        reported.push(ms(d));
        // Let the pool refill before the next round, so every round starts alike.
        rt.get_all(&(0..2).map(|_| pid_after::remote(1)).collect::<Vec<_>>())?;
    }
    let (plain, crashed, reported) = (
        median(&mut plain),
        median(&mut crashed),
        median(&mut reported),
    );

    let (mut force, mut coop, mut graced) = (Vec::new(), Vec::new(), Vec::new());
    let grace = Duration::from_millis(20);
    for _ in 0..runs {
        for (kind, polls, mode) in [
            (0, false, CancelMode::default().force()),
            (1, true, CancelMode::default()),
            (2, false, CancelMode::default().grace(grace)),
        ] {
            let started = fresh("spin");
            let r = spin::remote(path(&started), polls);
            wait_for(&started);
            let (res, d) = timed(|| rt.cancel(&r, mode).and_then(|_| rt.get(&r).map(|_| ())));
            assert!(res.is_err_and(|e| e.is_cancelled()));
            match kind {
                0 => force.push(ms(d)),
                1 => coop.push(ms(d)),
                _ => graced.push(ms(d) - ms(grace)),
            }
        }
        rt.get_all(&(0..2).map(|_| pid_after::remote(1)).collect::<Vec<_>>())?;
    }
    let (force, coop, graced) = (median(&mut force), median(&mut coop), median(&mut graced));
    drop(rt);

    // Worker replacement: one worker; it crashes; time from the crash report to the next task's
    // result (fork from the fork server, hello, run).
    let rt = Runtime::builder()
        .num_cpus(1)
        .store_capacity(64 << 20)
        .start()?;
    let mut replace = Vec::new();
    for _ in 0..runs {
        let before = rt.get(&pid_after::remote(0))?;
        let r = rt.get(&crash_always::options().max_retries(0).remote());
        assert!(r.is_err());
        let (after, d) = timed(|| rt.get(&pid_after::remote(0)));
        assert_ne!(after?, before, "the task ran on the dead worker");
        replace.push(ms(d));
    }
    let replace = median(&mut replace);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("faults (median of {runs} runs; ms)");
    println!(
        "{:<52} {:>10}   {:<30}",
        "scenario", "rayfork", "Ray 2.60 (baseline)"
    );
    println!("{}", "-".repeat(96));
    let line = |name: &str, v: f64, ray: &str| println!("{name:<52} {v:>10.3}   {ray:<30}");
    line("task, no crash (submit -> get)", plain, "6 ms");
    line(
        "task crashing on its first attempt, retried",
        crashed,
        "881 ms",
    );
    line(
        "  recovery overhead (difference)",
        crashed - plain,
        "~875 ms",
    );
    line("crash reported, retries off", reported, "12 ms");
    line("force cancel (cancel -> get returns)", force, "13-17 ms");
    line(
        "cooperative cancel of a polling task",
        coop,
        "- (KeyboardInterrupt)",
    );
    line(
        "non-polling task, cancel -> get minus 20 ms grace",
        graced,
        "never stopped (time.sleep)",
    );
    line(
        "worker replacement (crash report -> next result)",
        replace,
        "-",
    );
    println!(
        "targets: recovery <= 5 ms: {}; force cancel <= 2 ms: {}; cooperative <= 2 ms: {}; \
         non-polling within grace + 2 ms: {}",
        verdict(crashed - plain <= 5.0),
        verdict(force <= 2.0),
        verdict(coop <= 2.0),
        verdict(graced <= 2.0),
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}
