//! Chaos: a mixed workload (plain, nested, and tasks with arrays in the store) while another
//! thread SIGKILLs random workers at random moments. Every task returns its right result or a
//! typed error, and one in twenty is cancelled along the way (and then gives `TaskCancelled`);
//! afterwards store accounting is exactly zero and no process is left.
//!
//! `RAYFORK_SOAK_SECS=N` repeats the workload for about N seconds (a soak run).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayfork::{Array, CancelMode, CancelOutcome, Error, ObjectRef, Runtime, remote};
use rayfork_tests::{alive, children_of, eventually, parent_of, watchdog};

#[remote]
fn pid() -> u32 {
    std::process::id()
}

#[remote]
fn square(x: u64, work_us: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(work_us));
    x * x
}

/// Nested: submits `k` squares and sums them.
#[remote]
fn sum_of_squares(k: u64) -> rayfork::Result<u64> {
    let refs: Vec<ObjectRef<u64>> = (0..k).map(|i| square::remote(i, 200)).collect();
    Ok(rayfork::get_all(&refs)?.iter().sum())
}

/// Reads an array in place.
#[remote]
fn array_sum(a: Array<u64>) -> u64 {
    a.iter().sum()
}

/// Writes an array into the store and returns it.
#[remote]
fn array_make(n: usize) -> rayfork::Result<Array<u64>> {
    rayfork::ArrayMut::from_fn(n, |i| i as u64)?.seal()
}

/// Nested with arrays: makes an array in a child and sums it in another.
#[remote]
fn array_pipeline(n: usize) -> rayfork::Result<u64> {
    let made = array_make::remote(n);
    rayfork::get(&array_sum::remote(&made))
}

enum Job {
    Square(ObjectRef<u64>, u64),
    Nested(ObjectRef<u64>, u64),
    ArraySum(ObjectRef<u64>, u64),
    ArrayMake(ObjectRef<Array<u64>>, usize),
    Pipeline(ObjectRef<u64>, u64),
}

/// True for the typed errors a task may end with when its workers keep being killed.
fn acceptable(e: &Error) -> bool {
    match e {
        Error::WorkerCrashed { .. } => true,
        // A nested task whose child ran out of retries reports it as its own failure.
        Error::TaskFailed { message, .. } => message.contains("lost its worker process"),
        _ => false,
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    cancelled: u64,
    /// Nested and pipeline jobs submitted (only the driver submits those two functions).
    nested: u64,
    pipelines: u64,
}

fn check(job: Job, cancel: Option<CancelOutcome>, t: &mut Tally) {
    let ok = &mut t.ok;
    let failed = &mut t.failed;
    if cancel == Some(CancelOutcome::Cancelled) {
        let r = match job {
            Job::Square(r, _) | Job::Nested(r, _) | Job::ArraySum(r, _) | Job::Pipeline(r, _) => {
                rayfork::get(&r).map(|_| ())
            }
            Job::ArrayMake(r, _) => rayfork::get(&r).map(|_| ()),
        };
        assert!(
            matches!(r, Err(Error::TaskCancelled { .. })),
            "a cancelled task gave {r:?}"
        );
        t.cancelled += 1;
        return;
    }
    let (r, want) = match job {
        Job::Square(r, w) | Job::Nested(r, w) | Job::ArraySum(r, w) | Job::Pipeline(r, w) => {
            (rayfork::get(&r), w)
        }
        Job::ArrayMake(r, n) => match rayfork::get(&r) {
            Ok(a) => {
                assert_eq!(a.len(), n);
                assert!(a.iter().enumerate().all(|(i, &v)| v == i as u64));
                *ok += 1;
                return;
            }
            Err(e) => (Err(e), 0),
        },
    };
    match r {
        Ok(v) => {
            assert_eq!(v, want);
            *ok += 1;
        }
        Err(e) => {
            assert!(acceptable(&e), "untyped or unexpected error: {e:?}");
            if std::env::var_os("CHAOS_VERBOSE").is_some() {
                eprintln!("{e}");
            }
            *failed += 1;
        }
    }
}

/// Cancels a job's task (one in twenty), as a user might while workers are being killed.
fn maybe_cancel(rt: &Runtime, rng: &mut SmallRng, job: &Job) -> Option<CancelOutcome> {
    if rng.random_range(0..20) != 0 {
        return None;
    }
    let mode = if rng.random_bool(0.5) {
        CancelMode::default().force()
    } else {
        CancelMode::default()
    };
    let r = match job {
        Job::Square(r, _) | Job::Nested(r, _) | Job::ArraySum(r, _) | Job::Pipeline(r, _) => {
            rt.cancel(r, mode)
        }
        Job::ArrayMake(r, _) => rt.cancel(r, mode),
    };
    Some(r.unwrap())
}

/// One round of the workload: `n` tasks, some cancelled, checked.
fn round(rt: &Runtime, rng: &mut SmallRng, n: usize, t: &mut Tally) {
    let data: Vec<u64> = (0..50_000).collect();
    let arr = rt.put_array(&data).unwrap();
    let arr_sum: u64 = data.iter().sum();
    let mut jobs = Vec::with_capacity(n);
    let mut cancels = Vec::new();
    for i in 0..n as u64 {
        let job = match rng.random_range(0..10) {
            0..=4 => Job::Square(square::remote(i, rng.random_range(0..2000)), i * i),
            5 | 6 => {
                t.nested += 1;
                let k = rng.random_range(1..6);
                Job::Nested(sum_of_squares::remote(k), (0..k).map(|j| j * j).sum())
            }
            7 => Job::ArraySum(array_sum::remote(arr.clone()), arr_sum),
            8 => {
                let n = rng.random_range(1_000..100_000);
                Job::ArrayMake(array_make::remote(n), n)
            }
            _ => {
                t.pipelines += 1;
                let n = rng.random_range(1_000..50_000u64);
                Job::Pipeline(array_pipeline::remote(n as usize), n * (n - 1) / 2)
            }
        };
        jobs.push(job);
        if jobs.len() >= 2 {
            let k = rng.random_range(0..jobs.len());
            let c = maybe_cancel(rt, rng, &jobs[k]);
            cancels.push((k, c));
        }
    }
    let mut outcome: Vec<Option<CancelOutcome>> = vec![None; jobs.len()];
    for (k, c) in cancels {
        // The first cancel that took effect decides; a later one says AlreadyFinished.
        if outcome[k] != Some(CancelOutcome::Cancelled) {
            outcome[k] = c.or(outcome[k]);
        }
    }
    for (job, c) in jobs.into_iter().zip(outcome) {
        check(job, c, t);
    }
}

#[test]
fn random_worker_kills_lose_and_leak_nothing() {
    let soak = std::env::var("RAYFORK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let limit = soak.unwrap_or_default() + Duration::from_secs(300);
    let _w = watchdog("random_worker_kills_lose_and_leak_nothing", limit);
    let rt = Runtime::builder()
        .num_cpus(2)
        .store_capacity(256 << 20)
        .start()
        .unwrap();
    let worker = rt.get(&pid::remote()).unwrap() as i32;
    let fork_server = parent_of(worker).unwrap();
    assert!(children_of(std::process::id() as i32).contains(&fork_server));

    // The killer: SIGKILLs a random worker every few milliseconds (its sleeps pace the chaos;
    // nothing waits on them).
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(7);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
                let workers = children_of(fork_server);
                if workers.is_empty() {
                    continue;
                }
                let victim = workers[rng.random_range(0..workers.len())];
                if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(victim),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
                {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut rng = SmallRng::seed_from_u64(42);
    let mut t = Tally::default();
    let start = Instant::now();
    // Three rounds of 300 tasks (about a second), or rounds until the soak time is up.
    let mut rounds = 0;
    loop {
        round(&rt, &mut rng, 300, &mut t);
        rounds += 1;
        let done = match soak {
            Some(d) => start.elapsed() >= d,
            None => rounds >= 3,
        };
        if done {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let kills = kills.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {} right results, {} typed errors, {} cancelled, {kills} workers killed",
        t.ok, t.failed, t.cancelled
    );
    assert!(kills > 0, "the killer never struck");
    assert!(t.ok > 0, "nothing succeeded");

    // Every ref is dropped (the rounds own them): accounting returns to exactly zero. Tasks
    // that finish unobserved (children of killed parents) may still be running; wait for them.
    let settled = eventually(Duration::from_secs(120), || {
        let s = rt.stats().unwrap();
        s.tasks == 0 && s.objects == 0 && s.store.used == 0 && s.store.live_objects == 0
    });
    let s = rt.stats().unwrap();
    assert!(settled, "accounting did not return to zero: {s:?}");
    assert!(s.workers_died >= kills.min(1), "{s:?}");
    // The task summary agrees: nothing pending or running, every task the driver submitted
    // ended exactly once (retries and kills included), and no fewer successes than it saw.
    let summary = rt.summary().unwrap();
    let total = summary.total();
    assert_eq!((total.pending, total.running), (0, 0), "{summary}");
    assert!(total.finished >= t.ok, "{summary}");
    let ended = |suffix: &str| {
        let f = summary
            .by_function
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, f)| *f)
            .unwrap_or_default();
        f.finished + f.failed + f.cancelled + f.crashed + f.dropped
    };
    assert_eq!(ended("::sum_of_squares"), t.nested, "{summary}");
    assert_eq!(ended("::array_pipeline"), t.pipelines, "{summary}");
    assert!(total.retried > 0 || total.crashed > 0, "{summary}");
    // The pool still works.
    assert_eq!(rt.get(&square::remote(12, 0)).unwrap(), 144);
    let workers = children_of(fork_server);
    drop(rt);
    assert!(!alive(fork_server));
    assert!(workers.iter().all(|&p| !alive(p)), "a worker survived");
}

/// An actor that counts its calls.
pub struct Ledger(u64);

#[rayfork::actor]
impl Ledger {
    /// Starts at `start`.
    pub fn new(start: u64) -> Ledger {
        Ledger(start)
    }

    /// Adds `n` and returns the total.
    pub fn add(&mut self, n: u64) -> u64 {
        self.0 += n;
        self.0
    }

    /// This process's pid.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// Hundreds of actors and plain tasks in flight while random actor processes are killed, then
/// the fork server itself: every call and task still ends (a value, or a typed error that
/// says why), nothing hangs, and no process is left.
#[test]
fn actors_and_a_fork_server_kill_end_in_typed_errors_and_leave_nothing() {
    let soak = std::env::var("RAYFORK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let _w = watchdog(
        "actors_and_a_fork_server_kill",
        soak.unwrap_or_default() + Duration::from_secs(300),
    );
    let end = Instant::now() + soak.unwrap_or_default();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut rounds = 0;
    while rounds == 0 || Instant::now() < end {
        rounds += 1;
        let rt = Runtime::builder().num_cpus(2).start().unwrap();
        let actors: Vec<_> = (0..300).map(|_| Ledger::remote(0)).collect();
        let pids: Vec<i32> = rt
            .get_all(&actors.iter().map(|a| a.pid()).collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|p| p as i32)
            .collect();
        let fork_server = parent_of(pids[0]).unwrap();
        let calls: Vec<_> = actors.iter().map(|a| a.add(1)).collect();
        let tasks: Vec<_> = (0..500).map(|i| square::remote(i, 100)).collect();
        for _ in 0..20 {
            let victim = pids[rng.random_range(0..pids.len())];
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(fork_server),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let typed = |e: &Error| {
            matches!(
                e,
                Error::ActorDied { .. }
                    | Error::RuntimeStopped { .. }
                    | Error::WorkerCrashed { .. }
            )
        };
        for c in &calls {
            match rt.get(c) {
                Ok(v) => assert_eq!(v, 1),
                Err(e) => assert!(typed(&e), "an actor call ended with {e:?}"),
            }
        }
        for (i, t) in tasks.iter().enumerate() {
            match rt.get(t) {
                Ok(v) => assert_eq!(v, (i * i) as u64),
                Err(e) => assert!(typed(&e), "a task ended with {e:?}"),
            }
        }
        assert!(matches!(
            rt.get(&square::remote(3, 0)),
            Err(Error::RuntimeStopped { .. })
        ));
        drop((calls, tasks, actors));
        drop(rt);
        assert!(
            eventually(Duration::from_secs(60), || !alive(fork_server)
                && pids.iter().all(|&p| !alive(p))),
            "a process survived"
        );
    }
}
