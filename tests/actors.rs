//! Actors: a worker process of their own, calls in submission order, handles passed to tasks,
//! crashes with and without restarts, kill, and the end of an actor when its handles drop.

use std::time::Duration;

use rayfork::{ActorHandle, Error, Runtime, remote};
use rayfork_tests::{alive, eventually, watchdog};

const LIMIT: Duration = Duration::from_secs(120);

/// A counter that remembers every call, so order is checkable.
pub struct Counter {
    n: i64,
    seen: Vec<i64>,
}

#[rayfork::actor]
impl Counter {
    /// Starts at `start`.
    pub fn new(start: i64) -> Counter {
        Counter {
            n: start,
            seen: Vec::new(),
        }
    }

    /// Adds `by`; the new total.
    pub fn add(&mut self, by: i64) -> i64 {
        self.n += by;
        self.seen.push(by);
        self.n
    }

    /// Every `by` so far, in call order.
    pub fn seen(&self) -> Vec<i64> {
        self.seen.clone()
    }

    /// The actor's process.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Kills the actor's process.
    pub fn crash(&self) {
        std::process::abort()
    }

    /// Spins until cancelled; the number of polls.
    pub fn spin_until_cancelled(&self) -> u64 {
        let mut n = 0;
        while !rayfork::is_cancelled() {
            n += 1;
            std::hint::spin_loop();
        }
        n
    }

    /// Kills its process the first time (when `marker` does not exist yet); then its pid.
    pub fn crash_once(&self, marker: String) -> u32 {
        if std::fs::metadata(&marker).is_err() {
            std::fs::write(&marker, b"1").expect("marker");
            std::process::abort();
        }
        std::process::id()
    }

    /// An application error.
    pub fn fail(&self, why: String) -> Result<i64, String> {
        Err(why)
    }
}

/// A task that reports to an actor it was handed (Ray's progress-actor pattern).
#[remote]
fn report(counter: ActorHandle<Counter>, by: i64) -> i64 {
    rayfork::get(&counter.add(by)).expect("actor call")
}

/// A value that takes a while, so calls depending on it arrive before it is ready.
#[remote]
fn slow_value(v: i64, ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    v
}

/// The pid of the pool worker running it.
#[remote]
fn task_pid() -> u32 {
    std::process::id()
}

fn runtime() -> Runtime {
    Runtime::builder().num_cpus(2).start().expect("start")
}

#[test]
fn calls_run_in_submission_order_on_one_process() {
    let _w = watchdog("calls_run_in_submission_order_on_one_process", LIMIT);
    let rt = runtime();
    let c = Counter::remote(100);
    // A call whose argument is not ready yet holds back the later ones (submission order).
    let late = slow_value::remote(-1, 50);
    let mut refs = vec![c.add(&late)];
    refs.extend((1..=200).map(|i| c.add(i)));
    let got = rt.get_all(&refs).unwrap();
    let mut want = vec![99];
    let mut n = 99;
    for i in 1..=200 {
        n += i;
        want.push(n);
    }
    assert_eq!(got, want);
    let mut order = vec![-1];
    order.extend(1..=200);
    assert_eq!(rt.get(&c.seen()).unwrap(), order);
    let pids: std::collections::BTreeSet<u32> = rt
        .get_all(&(0..10).map(|_| c.pid()).collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(pids.len(), 1, "one process runs the actor");
    let pid = *pids.iter().next().unwrap();
    assert_ne!(pid, std::process::id());
    // Not a pool worker: pool tasks (here calling the actor from inside) run elsewhere.
    let task_pids: Vec<u32> = rt
        .get_all(&(0..20).map(|_| task_pid::remote()).collect::<Vec<_>>())
        .unwrap();
    assert!(
        !task_pids.contains(&pid),
        "a pool task ran on the actor's process"
    );
}

#[test]
fn handles_pass_to_tasks_and_tasks_call_the_actor() {
    let _w = watchdog("handles_pass_to_tasks_and_tasks_call_the_actor", LIMIT);
    let rt = runtime();
    let c = Counter::remote(0);
    let reports: Vec<_> = (1..=10).map(|i| report::remote(&c, i)).collect();
    rt.get_all(&reports).unwrap();
    let mut seen = rt.get(&c.seen()).unwrap();
    seen.sort();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert_eq!(rt.get(&c.add(0)).unwrap(), 55);
}

#[test]
fn application_errors_do_not_end_the_actor() {
    let _w = watchdog("application_errors_do_not_end_the_actor", LIMIT);
    let rt = runtime();
    let c = Counter::remote(1);
    match rt.get(&c.fail(String::from("no"))) {
        Err(Error::TaskFailed { message, .. }) => assert_eq!(message, "no"),
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    assert_eq!(rt.get(&c.add(1)).unwrap(), 2);
}

#[test]
fn a_crash_without_restarts_ends_the_actor() {
    let _w = watchdog("a_crash_without_restarts_ends_the_actor", LIMIT);
    let rt = runtime();
    let c = Counter::remote(0);
    let pid = rt.get(&c.pid()).unwrap() as i32;
    let crash = c.crash();
    let after = c.add(1);
    match rt.get(&crash) {
        Err(Error::ActorDied { reason, .. }) => assert!(reason.contains("SIGABRT"), "{reason}"),
        other => panic!("expected ActorDied, got {other:?}"),
    }
    assert!(matches!(rt.get(&after), Err(Error::ActorDied { .. })));
    assert!(matches!(rt.get(&c.add(1)), Err(Error::ActorDied { .. })));
    assert!(eventually(LIMIT, || !alive(pid)));
    // The pool is unaffected.
    assert_eq!(rt.get(&slow_value::remote(5, 0)).unwrap(), 5);
}

#[test]
fn a_crash_with_restarts_reruns_the_constructor() {
    let _w = watchdog("a_crash_with_restarts_reruns_the_constructor", LIMIT);
    let rt = runtime();
    let c = Counter::options().max_restarts(1).remote(10);
    assert_eq!(rt.get(&c.add(5)).unwrap(), 15);
    let pid1 = rt.get(&c.pid()).unwrap();
    assert!(matches!(rt.get(&c.crash()), Err(Error::ActorDied { .. })));
    // Restarted: a new process with the constructor's state.
    assert_eq!(rt.get(&c.add(1)).unwrap(), 11);
    let pid2 = rt.get(&c.pid()).unwrap();
    assert_ne!(pid1, pid2);
    // No restarts left.
    assert!(matches!(rt.get(&c.crash()), Err(Error::ActorDied { .. })));
    assert!(matches!(rt.get(&c.add(1)), Err(Error::ActorDied { .. })));
}

#[test]
fn kill_ends_the_process_and_fails_pending_calls() {
    let _w = watchdog("kill_ends_the_process_and_fails_pending_calls", LIMIT);
    let rt = runtime();
    let c = Counter::options().max_restarts(5).remote(0);
    let pid = rt.get(&c.pid()).unwrap() as i32;
    c.kill().unwrap();
    assert!(eventually(LIMIT, || !alive(pid)));
    match rt.get(&c.add(1)) {
        Err(Error::ActorDied { reason, .. }) => assert!(reason.contains("killed"), "{reason}"),
        other => panic!("expected ActorDied, got {other:?}"),
    }
}

#[test]
fn dropping_every_handle_ends_the_actor_and_frees_its_objects() {
    let _w = watchdog(
        "dropping_every_handle_ends_the_actor_and_frees_its_objects",
        LIMIT,
    );
    let rt = runtime();
    let big = vec![7u8; 1 << 20];
    let c = Counter::remote(0);
    let pid = rt.get(&c.pid()).unwrap() as i32;
    let r = report::remote(&c, 3);
    assert_eq!(rt.get(&r).unwrap(), 3);
    // A large argument goes through the store; the actor keeps nothing of it after the call.
    let put = rt.put(&big).unwrap();
    drop(put);
    drop(r);
    drop(c);
    assert!(
        eventually(LIMIT, || !alive(pid)),
        "actor process {pid} still alive"
    );
    assert!(eventually(LIMIT, || {
        let s = rt.stats().unwrap();
        s.store.used == 0 && s.objects == 0
    }));
}

#[test]
fn a_failing_constructor_fails_every_call() {
    let _w = watchdog("a_failing_constructor_fails_every_call", LIMIT);
    let rt = runtime();
    let c = Picky::remote(-1);
    assert!(c.ready().is_err());
    match rt.get(&c.get()) {
        Err(Error::TaskPanicked { message, .. }) => assert!(message.contains("negative")),
        Err(Error::ActorDied { reason, .. }) => assert!(reason.contains("negative"), "{reason}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let ok = Picky::remote(2);
    assert_eq!(rt.get(&ok.get()).unwrap(), 2);
}

/// An actor whose constructor returns `Err` on bad input.
pub struct Careful(u32);

#[rayfork::actor]
impl Careful {
    /// Refuses zero.
    pub fn new(v: u32) -> Result<Self, String> {
        if v == 0 {
            return Err("zero is not a size".to_string());
        }
        Ok(Careful(v))
    }

    /// Its value.
    pub fn get(&self) -> u32 {
        self.0
    }
}

#[test]
fn a_constructor_returning_err_fails_the_actor_with_its_message() {
    let _w = watchdog("a_constructor_returning_err_fails_the_actor", LIMIT);
    let rt = runtime();
    let bad = Careful::remote(0u32);
    let e = bad.ready().unwrap_err();
    assert!(e.to_string().contains("zero is not a size"), "{e}");
    let e = rt.get(&bad.get()).unwrap_err();
    assert!(e.to_string().contains("zero is not a size"), "{e}");
    let good = Careful::remote(7u32);
    assert_eq!(rt.get(&good.get()).unwrap(), 7);
}

/// An actor whose constructor panics on bad input.
pub struct Picky(i64);

#[rayfork::actor]
impl Picky {
    /// Panics on a negative `v`.
    pub fn new(v: i64) -> Picky {
        assert!(v >= 0, "negative start");
        Picky(v)
    }

    /// Its value.
    pub fn get(&self) -> i64 {
        self.0
    }
}

/// A value that fails.
#[remote]
fn broken() -> Result<i64, String> {
    Err("no value".to_string())
}

#[test]
fn an_unrun_constructor_with_a_failed_argument_fails_later_calls() {
    let _w = watchdog(
        "an_unrun_constructor_with_a_failed_argument_fails_later_calls",
        LIMIT,
    );
    let rt = runtime();
    let c = Counter::remote(broken::remote());
    assert!(c.ready().is_err());
    // Calls submitted after the failure fail too, instead of waiting forever.
    assert!(rt.get(&c.add(1)).is_err());
    assert!(rt.get(&c.pid()).is_err());
}

#[test]
fn killing_or_dropping_an_actor_before_its_process_exists_leaves_no_process() {
    let _w = watchdog(
        "killing_or_dropping_an_actor_before_its_process_exists_leaves_no_process",
        LIMIT,
    );
    let rt = runtime();
    let pool = rt.stats().unwrap().workers;
    for _ in 0..5 {
        let c = Counter::remote(0);
        c.kill().unwrap();
        drop(Counter::remote(1));
    }
    assert!(
        eventually(LIMIT, || rt.stats().unwrap().workers == pool),
        "actor processes left: {:?}",
        rt.stats().unwrap()
    );
}

#[test]
fn cancelling_an_actor_call_asks_it_to_stop_and_keeps_the_actor() {
    let _w = watchdog(
        "cancelling_an_actor_call_asks_it_to_stop_and_keeps_the_actor",
        LIMIT,
    );
    let rt = runtime();
    let c = Counter::remote(5);
    let pid = rt.get(&c.pid()).unwrap();
    let spinning = c.spin_until_cancelled();
    rayfork::cancel(&spinning).unwrap();
    assert!(matches!(
        rt.get(&spinning),
        Err(Error::TaskCancelled { .. })
    ));
    // Same process, same state.
    assert_eq!(rt.get(&c.pid()).unwrap(), pid);
    assert_eq!(rt.get(&c.add(1)).unwrap(), 6);
}

#[test]
fn max_task_retries_runs_a_crashed_call_again_on_the_restarted_actor() {
    let _w = watchdog(
        "max_task_retries_runs_a_crashed_call_again_on_the_restarted_actor",
        LIMIT,
    );
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("rayfork-actor-retry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("crashed").to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&marker);
    let c = Counter::options()
        .max_restarts(1)
        .max_task_retries(1)
        .remote(7);
    let pid1 = rt.get(&c.pid()).unwrap();
    let call = c.crash_once(marker.clone());
    let later = c.add(1);
    let pid2 = rt.get(&call).unwrap();
    assert_ne!(pid1, pid2, "the call ran again on a new process");
    // The queued call ran after it, on the restarted actor's fresh state.
    assert_eq!(rt.get(&later).unwrap(), 8);
    // Without retries the call fails.
    let _ = std::fs::remove_file(&marker);
    let d = Counter::options().max_restarts(1).remote(0);
    assert!(matches!(
        rt.get(&d.crash_once(marker.clone())),
        Err(Error::ActorDied { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls sent to wait on the actor's process behind a call that crashes it (pipelining,
/// scheduler rule 11) never ran there: after the restart they all run, once each, in order.
#[test]
fn calls_queued_behind_a_crash_run_in_order_after_the_restart() {
    let _w = watchdog(
        "calls_queued_behind_a_crash_run_in_order_after_the_restart",
        LIMIT,
    );
    let rt = runtime();
    let c = Counter::options().max_restarts(1).remote(0);
    let pid1 = rt.get(&c.pid()).unwrap();
    let crash = c.crash();
    let adds: Vec<_> = (1..=50).map(|i| c.add(i)).collect();
    assert!(matches!(rt.get(&crash), Err(Error::ActorDied { .. })));
    let totals = rt.get_all(&adds).unwrap();
    let want: Vec<i64> = (1..=50)
        .scan(0, |s, i| {
            *s += i;
            Some(*s)
        })
        .collect();
    assert_eq!(totals, want);
    assert_eq!(rt.get(&c.seen()).unwrap(), (1..=50).collect::<Vec<i64>>());
    assert_ne!(rt.get(&c.pid()).unwrap(), pid1);
}

/// A counter found by name.
#[derive(Default)]
pub struct Tally(u64);

#[rayfork::actor]
impl Tally {
    /// Starts at zero.
    pub fn new() -> Self {
        Tally::default()
    }

    /// Adds one and returns the count.
    pub fn bump(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Bumps the actor named `name`, found from inside a task.
#[remote]
fn bump_by_name(name: String) -> rayfork::Result<u64> {
    let t: rayfork::ActorHandle<Tally> = rayfork::get_actor(&name)?;
    rayfork::get(&t.bump())
}

#[test]
fn a_named_actor_is_found_by_name_from_anywhere_while_it_lives() {
    let _w = watchdog("a_named_actor_is_found_by_name", LIMIT);
    let rt = runtime();
    let t = Tally::options().name("tally").remote();
    assert_eq!(rt.get(&t.bump()).unwrap(), 1);
    let found: rayfork::ActorHandle<Tally> = rayfork::get_actor("tally").unwrap();
    assert_eq!(rt.get(&found.bump()).unwrap(), 2);
    assert_eq!(
        rt.get(&bump_by_name::remote("tally".to_string())).unwrap(),
        3
    );
    // The wrong type, or no such name: errors, not a handle.
    assert!(matches!(
        rayfork::get_actor::<Picky>("tally"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(rayfork::get_actor::<Tally>("nobody").is_err());
    // Names are unique among live actors.
    let twin = Tally::options().name("tally").remote();
    let e = twin.ready().unwrap_err();
    assert!(e.to_string().contains("lives already"), "{e}");
    // Once every handle is gone the actor ends and its name is free again.
    drop((t, found, twin));
    assert!(eventually(LIMIT, || rayfork::get_actor::<Tally>("tally").is_err()));
    let again = Tally::options().name("tally").remote();
    assert_eq!(rt.get(&again.bump()).unwrap(), 1);
}
