//! Tasks, object refs, get/wait/put and errors, with real runtimes and real worker processes.

use std::time::Duration;

use rayfork::{Error, Runtime, remote};
use rayfork_tests::{alive, children_of, eventually, parent_of, watchdog};

const LIMIT: Duration = Duration::from_secs(120);

#[remote]
fn pid() -> u32 {
    std::process::id()
}

#[remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[remote]
fn concat(a: String, b: String) -> String {
    a + &b
}

#[remote]
fn fails(msg: String) -> Result<u8, String> {
    Err(msg)
}

#[remote]
fn fails_num(msg: String) -> Result<i64, String> {
    Err(msg)
}

#[remote]
fn panics(msg: String) -> u8 {
    panic!("{msg}")
}

#[remote]
fn block_on_pipe(fd_path: String) -> i64 {
    // Blocks until the test writes to the FIFO: a task that finishes only when told to.
    use std::io::Read;
    let mut f = std::fs::File::open(fd_path).expect("open fifo");
    let mut b = [0u8; 1];
    let _ = f.read(&mut b);
    b[0] as i64
}

#[remote]
fn sum_vec(v: Vec<u64>) -> u64 {
    v.iter().sum()
}

#[remote]
fn make_vec(n: u64) -> Vec<u64> {
    (0..n).collect()
}

fn runtime() -> Runtime {
    Runtime::builder()
        .num_cpus(2)
        .store_capacity(256 << 20)
        .start()
        .expect("start runtime")
}

#[test]
fn tasks_run_in_worker_processes() {
    let _w = watchdog("tasks_run_in_worker_processes", LIMIT);
    let rt = runtime();
    let me = std::process::id();
    let pids = rt
        .get_all(&(0..8).map(|_| pid::remote()).collect::<Vec<_>>())
        .unwrap();
    for p in &pids {
        assert_ne!(*p, me, "a task ran in the driver");
        // Workers are children of the fork server, which is our child.
        let fork_server = parent_of(*p as i32).expect("worker has a parent");
        assert_eq!(parent_of(fork_server), Some(me as i32));
    }
}

#[test]
fn refs_as_arguments_resolve_in_order() {
    let _w = watchdog("refs_as_arguments_resolve_in_order", LIMIT);
    let rt = runtime();
    let a = concat::remote("a".to_string(), "b".to_string());
    let b = concat::remote(&a, "c".to_string());
    let c = concat::remote("x".to_string(), &b);
    let d = concat::remote(&c, &a);
    assert_eq!(rt.get(&d).unwrap(), "xabcab");
    // A chain of 50 tasks, each depending on the previous one.
    let mut r = add::remote(0, 1);
    for _ in 0..49 {
        r = add::remote(&r, 1);
    }
    assert_eq!(rt.get(&r).unwrap(), 50);
}

#[test]
fn put_and_pass_without_fetching() {
    let _w = watchdog("put_and_pass_without_fetching", LIMIT);
    let rt = runtime();
    let v: Vec<u64> = (0..100_000).collect(); // 800 KB: goes through the store
    let r = rt.put(&v).unwrap();
    assert_eq!(rt.get(&sum_vec::remote(&r)).unwrap(), v.iter().sum::<u64>());
    assert_eq!(rt.get(&r).unwrap(), v);
    // A large value given by value goes through the store as well.
    assert_eq!(
        rt.get(&sum_vec::remote(v.clone())).unwrap(),
        v.iter().sum::<u64>()
    );
    // A large result comes back through the store.
    assert_eq!(rt.get(&make_vec::remote(200_000)).unwrap().len(), 200_000);
}

#[test]
fn wait_returns_the_first_finished() {
    let _w = watchdog("wait_returns_the_first_finished", LIMIT);
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("rayfork-wait-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let slow = block_on_pipe::remote(fifo.to_string_lossy().into_owned());
    let fast = add::remote(1, 2);
    let refs = vec![slow.clone(), fast.clone()];
    let (ready, pending) = rt.wait(&refs, 1, None).unwrap();
    assert_eq!(ready, vec![fast]);
    assert_eq!(pending, vec![slow.clone()]);
    // With a timeout, nothing more becomes ready.
    let (ready, pending) = rt
        .wait(
            std::slice::from_ref(&slow),
            1,
            Some(Duration::from_millis(50)),
        )
        .unwrap();
    assert!(ready.is_empty());
    assert_eq!(pending.len(), 1);
    // get with a timeout gives a typed error, and does not cancel.
    let e = rt
        .get_timeout(&slow, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    std::fs::write(&fifo, [7u8]).unwrap();
    assert_eq!(rt.get(&slow).unwrap(), 7);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_and_panics_are_typed_and_the_worker_survives() {
    let _w = watchdog("errors_and_panics_are_typed_and_the_worker_survives", LIMIT);
    let rt = Runtime::builder().num_cpus(1).start().unwrap();
    let before = rt.get(&pid::remote()).unwrap();
    let e = rt.get(&fails::remote("bad input".to_string())).unwrap_err();
    match &e {
        Error::TaskFailed { task, message, .. } => {
            assert!(task.ends_with("fails"), "{task}");
            assert_eq!(message, "bad input");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let e = rt.get(&panics::remote("boom".to_string())).unwrap_err();
    match &e {
        Error::TaskPanicked { message, .. } => assert_eq!(message, "boom"),
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    // Same single worker process before and after.
    assert_eq!(rt.get(&pid::remote()).unwrap(), before);
    // A task whose argument failed fails with that error, without running.
    let dep = fails_num::remote("upstream".to_string());
    let e = rt.get(&add::remote(1, &dep)).unwrap_err();
    assert!(matches!(e, Error::TaskFailed { ref message, .. } if message == "upstream"));
}

#[test]
fn unknown_function_and_type_mismatch_are_typed_errors() {
    let _w = watchdog("unknown_function_and_type_mismatch_are_typed_errors", LIMIT);
    let rt = runtime();
    let opts = rayfork::TaskOptions::default();
    let r: rayfork::ObjectRef<u8> =
        rayfork::__private::submit("no::such::function", &opts, |_| Ok(Vec::new()));
    let e = rt.get(&r).unwrap_err();
    assert!(matches!(e, Error::UnknownFunction { ref name } if name == "no::such::function"));
    // The caller expects a String where the task returns an i64.
    let r: rayfork::ObjectRef<String> = rayfork::__private::submit(add::NAME, &opts, |cx| {
        Ok(vec![
            rayfork::IntoArg::<i64>::into_arg(1i64, cx)?,
            rayfork::IntoArg::<i64>::into_arg(2i64, cx)?,
        ])
    });
    let e = rt.get(&r).unwrap_err();
    assert!(matches!(e, Error::Codec { .. }), "{e:?}");
    // Wrong argument count.
    let r: rayfork::ObjectRef<i64> = rayfork::__private::submit(add::NAME, &opts, |_| Ok(vec![]));
    assert!(matches!(rt.get(&r).unwrap_err(), Error::Protocol(_)));
    // The runtime keeps working.
    assert_eq!(rt.get(&add::remote(2, 3)).unwrap(), 5);
}

#[test]
fn store_returns_to_zero_after_a_workload() {
    let _w = watchdog("store_returns_to_zero_after_a_workload", LIMIT);
    let rt = runtime();
    {
        let big: Vec<u64> = (0..50_000).collect();
        let refs: Vec<_> = (0..20).map(|_| sum_vec::remote(big.clone())).collect();
        let puts: Vec<_> = (0..5)
            .map(|i| rt.put(&vec![i as u64; 30_000]).unwrap())
            .collect();
        let sums: Vec<_> = puts.iter().map(sum_vec::remote).collect();
        let arrays: Vec<_> = (0..5)
            .map(|i| rt.put_array(&vec![i as u32; 100_000]).unwrap())
            .collect();
        assert!(
            rt.get_all(&refs)
                .unwrap()
                .iter()
                .all(|&s| s == big.iter().sum::<u64>())
        );
        assert_eq!(rt.get_all(&sums).unwrap().len(), 5);
        assert!(rt.stats().unwrap().store.used > 0);
        drop(arrays);
    }
    // Every ref is dropped: the scheduler processes our drops in order before this request.
    let s = rt.stats().unwrap();
    assert_eq!(s.store.used, 0, "{s:?}");
    assert_eq!(s.store.live_objects, 0, "{s:?}");
    assert_eq!(s.objects, 0, "{s:?}");
}

#[test]
fn runtime_drop_reaps_every_process() {
    let _w = watchdog("runtime_drop_reaps_every_process", LIMIT);
    let rt = runtime();
    let wpid = rt.get(&pid::remote()).unwrap() as i32;
    let fork_server = parent_of(wpid).unwrap();
    assert!(children_of(std::process::id() as i32).contains(&fork_server));
    drop(rt);
    assert!(!alive(wpid));
    assert!(!alive(fork_server));
    // Reaped, not a zombie: it is not our child any more.
    assert!(!children_of(std::process::id() as i32).contains(&fork_server));
}

/// Run as a child process by `driver_sigkill_takes_every_process_down`.
#[test]
#[ignore = "run as a child driver by another test"]
fn child_driver() {
    if std::env::var_os("RAYFORK_TEST_CHILD_DRIVER").is_none() {
        return;
    }
    let rt = runtime();
    let w = rt.get(&pid::remote()).unwrap() as i32;
    let g = rt.get(&spawn_sleeper::remote()).unwrap() as i32;
    println!("PIDS {} {} {}", parent_of(w).unwrap(), w, g);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // Wait to be killed; if the parent test dies first, stdin closes and we exit.
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    drop(rt);
}

#[test]
fn driver_sigkill_takes_every_process_down() {
    let _w = watchdog("driver_sigkill_takes_every_process_down", LIMIT);
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_driver",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAYFORK_TEST_CHILD_DRIVER", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut pids = None;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("PIDS ").nth(1) {
            let v: Vec<i32> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            pids = Some((v[0], v[1], v[2]));
            break;
        }
    }
    let (fork_server, worker, grandchild) = pids.expect("child driver printed its pids");
    assert!(alive(fork_server) && alive(worker) && alive(grandchild));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Fate sharing: gone within a second (the limit is a safety net, ten times that).
    assert!(eventually(Duration::from_secs(10), || !alive(fork_server)
        && !alive(worker)
        && !alive(grandchild)));
}

/// Starts `sleep 1000` from a task (a grandchild of the runtime) and returns its pid.
#[remote]
fn spawn_sleeper() -> u32 {
    rayfork_tests::spawn_sleeper()
}

/// Two runtimes of one process name their objects in separate id spaces: a ref of one, passed
/// to a task of the other, is an error that says so, never the other's object of the same
/// number.
#[test]
fn a_ref_of_another_runtime_is_refused_not_resolved() {
    let _w = watchdog("a_ref_of_another_runtime_is_refused_not_resolved", LIMIT);
    let rt_a = runtime();
    let a = rt_a.put(&10i64).unwrap();
    let rt_b = runtime(); // now this thread's current runtime
    let b = rt_b.put(&20i64).unwrap();
    match rt_b.get(&add::remote(&a, 1)) {
        Err(Error::ObjectNotFound { reason, .. }) => {
            assert!(reason.contains("another runtime") || reason.contains("belongs to runtime"))
        }
        other => panic!("a foreign ref must be refused, got {other:?}"),
    }
    // Each runtime still reads its own objects.
    assert_eq!(rt_b.get(&add::remote(&b, 1)).unwrap(), 21);
    rt_a.enter();
    assert_eq!(rt_a.get(&add::remote(&a, 1)).unwrap(), 11);
}

/// A panic payload whose own `Drop` panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the payload's drop panics too");
    }
}

#[remote]
fn panic_with_bomb() -> u8 {
    std::panic::panic_any(Bomb)
}

#[test]
fn a_panic_whose_payload_panics_when_dropped_is_task_panicked() {
    let _w = watchdog("a_panic_whose_payload_panics_when_dropped", LIMIT);
    let rt = runtime();
    let r = panic_with_bomb::options().max_retries(0).remote();
    assert!(
        matches!(rt.get(&r), Err(Error::TaskPanicked { .. })),
        "{:?}",
        rt.get(&r)
    );
    assert_eq!(rt.stats().unwrap().workers_died, 0, "the worker died");
}

#[test]
fn wait_refuses_a_ref_given_twice() {
    let _w = watchdog("wait_refuses_a_ref_given_twice", LIMIT);
    let rt = runtime();
    let x = add::remote(1, 2);
    match rayfork::wait(&[x.clone(), x.clone()], 1, None) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("twice"), "{m}"),
        other => panic!(
            "expected InvalidArgument, got {:?}",
            other.map(|(r, p)| (r.len(), p.len()))
        ),
    }
    assert_eq!(rt.get(&x).unwrap(), 3);
}

#[test]
fn get_all_returns_as_soon_as_one_fails() {
    let _w = watchdog("get_all_returns_as_soon_as_one_fails", LIMIT);
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("rayfork-get-all-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("release");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let slow = block_on_pipe::remote(fifo.to_string_lossy().into_owned());
    let failed = fails_num::remote("no good".to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            rt.enter();
            let _ = tx.send(rayfork::get_all(&[slow.clone(), failed.clone()]));
        });
        // A safety net: a get_all that waits for the slow task fails the test, then ends.
        let answer = rx.recv_timeout(Duration::from_secs(60));
        std::fs::write(&fifo, [7u8]).unwrap();
        match answer {
            Ok(Err(Error::TaskFailed { message, .. })) => assert_eq!(message, "no good"),
            other => panic!("get_all should fail at once with the task's error, got {other:?}"),
        }
    });
    assert_eq!(rt.get(&slow).unwrap(), 7);
    let _ = std::fs::remove_dir_all(&dir);
}

#[remote]
fn triple(x: u64) -> u64 {
    3 * x
}

/// Any thread of the driver submits and gets without entering the runtime: the most recently
/// started runtime of the process is everyone's. (Other tests of this binary start runtimes
/// too, in parallel; any of them gives the same answers.)
#[test]
fn every_driver_thread_reaches_the_runtime() {
    let _w = watchdog("every_driver_thread_reaches_the_runtime", LIMIT);
    let rt = runtime();
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            std::thread::spawn(move || {
                let r = triple::remote(i);
                rayfork::get(&r).map(|v| (rayfork::put(&v).is_ok(), v))
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap().unwrap(), (true, 3 * i as u64));
    }
    drop(rt);
}

/// Waits until `path` exists, then returns `v`.
#[remote]
fn after_file(path: String, v: u64) -> u64 {
    while !std::path::Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    v
}

#[remote]
fn fails_with(msg: String) -> Result<u64, String> {
    Err(msg)
}

/// Gives the indices of `refs` in completion order, from inside a task.
#[remote]
fn completion_order_inside(n: u64) -> rayfork::Result<Vec<usize>> {
    let refs: Vec<_> = (0..n).map(triple::remote).collect();
    let mut order = Vec::new();
    for (i, v) in rayfork::as_completed(&refs) {
        assert_eq!(v?, 3 * i as u64);
        order.push(i);
    }
    Ok(order)
}

#[test]
fn as_completed_yields_in_completion_order_each_result_once() {
    let _w = watchdog("as_completed_yields_in_completion_order", LIMIT);
    let rt = runtime();
    let gate = rayfork_tests::fresh_path("as-completed", "gate");
    // The first task cannot finish before the test opens the gate, which it does only after
    // the second one came out: the order is certain.
    let refs = vec![after_file::remote(gate.clone(), 7), triple::remote(5)];
    let mut it = rayfork::as_completed(&refs);
    let (i, v) = it.next().unwrap();
    assert_eq!((i, v.unwrap()), (1, 15));
    std::fs::write(&gate, b"open").unwrap();
    let (i, v) = it.next().unwrap();
    assert_eq!((i, v.unwrap()), (0, 7));
    assert!(it.next().is_none());
    drop(it);
    drop(refs);
    // Many results, ready or not, failed or not: each index exactly once.
    let mut refs: Vec<_> = (0..300).map(triple::remote).collect();
    rt.get(&refs[0]).unwrap();
    refs.push(fails_with::remote("no".to_string()));
    let mut seen = vec![0; refs.len()];
    for (i, v) in rayfork::as_completed(&refs) {
        seen[i] += 1;
        match v {
            Ok(v) => assert_eq!(v, 3 * i as u64),
            Err(e) => assert!(i == 300 && e.to_string().contains("no"), "{i}: {e}"),
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    drop(refs);
    // Inside a task too.
    let order = rt.get(&completion_order_inside::remote(50)).unwrap();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    // Dropped half-way: the watch ends, nothing is left behind.
    let refs: Vec<_> = (0..20).map(triple::remote).collect();
    assert!(rayfork::as_completed(&refs).next().is_some());
    assert!(refs[0].is_ready().is_ok());
    drop(refs);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[test]
fn is_ready_and_get_all_timeout_do_not_wait_for_a_blocked_task() {
    let _w = watchdog("is_ready_and_get_all_timeout", LIMIT);
    let rt = runtime();
    let gate = rayfork_tests::fresh_path("is-ready", "gate");
    let blocked = after_file::remote(gate.clone(), 1);
    let done = triple::remote(1);
    rt.get(&done).unwrap();
    assert!(done.is_ready().unwrap());
    assert!(!blocked.is_ready().unwrap());
    let both = vec![done.clone(), blocked.clone()];
    let e = rayfork::get_all_timeout(&both, Duration::from_millis(20)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    std::fs::write(&gate, b"open").unwrap();
    assert_eq!(rayfork::get_all_timeout(&both, LIMIT).unwrap(), vec![3, 1]);
    assert!(blocked.is_ready().unwrap());
}

/// `#[remote]` inside a function body (a test, a doctest without `main`) works as at module
/// level.
#[test]
fn a_remote_function_defined_in_a_function_body_runs() {
    #[remote]
    fn local_double(x: u64) -> u64 {
        2 * x
    }
    let _w = watchdog("a_remote_function_defined_in_a_function_body_runs", LIMIT);
    let rt = runtime();
    assert_eq!(rt.get(&local_double::remote(21)).unwrap(), 42);
    let r = local_double::options()
        .max_retries(0)
        .remote(local_double::remote(1));
    assert_eq!(rt.get(&r).unwrap(), 4);
}

/// Its own context, before and after a nested call (whose context differs).
#[remote]
fn context_around_a_child() -> rayfork::Result<(String, u64, u32, u32, bool)> {
    let before = rayfork::context().expect("inside a task");
    let child = rayfork::get(&child_context::remote())?;
    let after = rayfork::context().expect("inside a task");
    Ok((
        before.name.clone(),
        u64::from(before == after),
        before.attempt,
        before.pid,
        child != before.task_id.as_u128(),
    ))
}

#[remote]
fn child_context() -> u128 {
    rayfork::context().expect("inside a task").task_id.as_u128()
}

/// Crashes on its first attempt; returns the attempt it saw.
#[remote]
fn attempt_after_a_crash(path: String) -> u32 {
    let first = rayfork_tests::runs(&path) == 0;
    rayfork_tests::note_run(&path);
    if first {
        std::process::abort();
    }
    rayfork::context().expect("inside a task").attempt
}

#[test]
fn a_task_knows_its_context() {
    let _w = watchdog("a_task_knows_its_context", LIMIT);
    let rt = runtime();
    assert!(rayfork::context().is_none());
    let (name, same, attempt, pid, child_differs) = rt
        .get(&context_around_a_child::options().name("ctx").remote())
        .unwrap();
    assert_eq!((name.as_str(), same, attempt), ("ctx", 1, 1));
    assert_ne!(pid, std::process::id());
    assert!(child_differs);
    let r = child_context::remote();
    assert_eq!(rt.get(&r).unwrap(), r.id().as_u128());
    let path = rayfork_tests::fresh_path("context-attempt", "runs");
    assert_eq!(rt.get(&attempt_after_a_crash::remote(path)).unwrap(), 2);
}

/// An error type that crosses the process boundary as a value.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Refused {
    TooBig(u64),
    Busy,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused ({self:?})")
    }
}

#[remote]
fn refuse(n: u64, path: String) -> Result<u64, Refused> {
    rayfork_tests::note_run(&path);
    match n {
        0 => Err(Refused::Busy),
        n if n > 10 => Err(Refused::TooBig(n)),
        n => Ok(n),
    }
}

#[test]
fn a_typed_error_comes_back_as_its_type_and_retries_match_it() {
    let _w = watchdog("a_typed_error_comes_back_as_its_type", LIMIT);
    let rt = runtime();
    let path = rayfork_tests::fresh_path("typed-error", "runs");
    let e = rt.get(&refuse::remote(99, path.clone())).unwrap_err();
    assert_eq!(e.downcast::<Refused>(), Some(Refused::TooBig(99)));
    assert_eq!(e.downcast::<String>(), None);
    assert!(e.to_string().contains("refused (TooBig(99))"), "{e}");
    // A plain `String` error has no value to downcast to, only its text.
    let e = rt.get(&fails::remote("plain".to_string())).unwrap_err();
    assert!(e.downcast::<Refused>().is_none());
    // Retried by type: three runs for a Busy with max_retries(2).
    let path = rayfork_tests::fresh_path("typed-error-retry", "runs");
    let e = rt
        .get(
            &refuse::options()
                .max_retries(2)
                .retry_exceptions_matching([std::any::type_name::<Refused>()])
                .remote(0, path.clone()),
        )
        .unwrap_err();
    assert_eq!(e.downcast::<Refused>(), Some(Refused::Busy));
    assert_eq!(rayfork_tests::runs(&path), 3);
}

#[remote]
fn leaf(x: u64) -> u64 {
    x
}

/// Sums leaves in completion order.
#[remote]
fn sum_as_completed(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(leaf::remote).collect();
    rayfork::as_completed(&refs).map(|(_, v)| v.unwrap()).sum()
}

/// Waits in `as_completed` for a task gated on a file (which never opens).
#[remote]
fn watch_a_gate(gate: String) -> u64 {
    let r = after_file::remote(gate, 1);
    rayfork::as_completed(std::slice::from_ref(&r))
        .map(|(_, v)| v.unwrap_or(0))
        .sum()
}

#[test]
fn as_completed_inside_tasks_at_the_worker_cap_and_after_a_kill() {
    let _w = watchdog("as_completed_inside_tasks_at_the_worker_cap", LIMIT);
    // One worker: the leaves can only run nested on the frame waiting for them.
    let rt = Runtime::builder()
        .num_cpus(1)
        .max_workers(1)
        .start()
        .unwrap();
    assert_eq!(rt.get(&sum_as_completed::remote(3)).unwrap(), 3);
    drop(rt);
    // A worker killed while it watches leaves no watch behind.
    let rt = runtime();
    let gate = rayfork_tests::fresh_path("watch-kill", "gate");
    let r = watch_a_gate::remote(gate.clone());
    assert!(eventually(LIMIT, || rt.stats().unwrap().watches == 1));
    rayfork::cancel_with(&r, rayfork::CancelMode::default().force()).unwrap();
    assert!(rt.get(&r).is_err());
    std::fs::write(&gate, b"open").unwrap();
    assert!(eventually(LIMIT, || rt.stats().unwrap().watches == 0));
    drop(r);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}
