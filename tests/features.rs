//! The rest of the Ray task model (issue 6): multiple returns, resources (CPU, GPU, custom,
//! fractional CPUs), `max_calls` and the map helpers, with real runtimes and real processes.
//!
//! Concurrency is counted with marker files that the tasks themselves write, never by timing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayfork::{Error, ObjectRef, Runtime, remote};
use rayfork_tests::{alive, eventually, watchdog};

const LIMIT: Duration = Duration::from_secs(120);

/// Bigger than the 64 KiB inline limit: goes through the store under its own return id.
const BIG: usize = 200_000;

#[remote(num_returns = 3)]
fn three(x: u64) -> (u64, String, Vec<u8>) {
    (x, format!("value {x}"), vec![7; BIG])
}

#[remote(num_returns = 2)]
fn split(x: i64) -> Result<(i64, Vec<u8>), String> {
    if x < 0 {
        return Err(format!("negative: {x}"));
    }
    Ok((2 * x, vec![1; BIG]))
}

#[remote]
fn one_tuple() -> (u64, u64, u64) {
    (0, 1, 2)
}

#[remote]
fn byte_sum(v: Vec<u8>) -> u64 {
    v.iter().map(|&b| b as u64).sum()
}

#[remote]
fn add_one(x: u64) -> u64 {
    x + 1
}

#[remote]
fn pid() -> u32 {
    std::process::id()
}

#[remote(max_calls = 1)]
fn fresh_pid() -> u32 {
    std::process::id()
}

#[remote(num_cpus = 4, num_gpus = 2, resources = [("db", 1)])]
fn big_request() -> u8 {
    1
}

#[remote]
fn double_all(chunk: Vec<u64>) -> Vec<u64> {
    chunk.into_iter().map(|x| 2 * x).collect()
}

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Marks itself active in `dir`, waits until `width` tasks are active together (or all the
/// others have finished), and returns the most active tasks it saw at once.
#[remote]
fn rendezvous(dir: String, i: usize, total: usize, width: usize) -> usize {
    let dir = Path::new(&dir);
    let me = dir.join(format!("active-{i}"));
    std::fs::write(&me, b"").expect("write marker");
    let count = |prefix: &str| {
        std::fs::read_dir(dir)
            .expect("read marker dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .count()
    };
    let mut seen = 0;
    loop {
        let active = count("active-");
        seen = seen.max(active);
        // `done` is written before `active` is removed, so a task may be counted twice: that
        // only lets the wait end early, never counts too many as active.
        if active >= width || active + count("done-") >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Stay active a little so that a wrongly admitted extra task would be seen.
    std::thread::sleep(Duration::from_millis(20));
    seen = seen.max(count("active-"));
    std::fs::write(dir.join(format!("done-{i}")), b"").expect("write marker");
    std::fs::remove_file(&me).expect("remove marker");
    seen
}

fn marker_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rayfork-features-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create marker dir");
    dir
}

fn runtime() -> Runtime {
    Runtime::builder()
        .num_cpus(2)
        .store_capacity(256 << 20)
        .start()
        .expect("start runtime")
}

/// The shared check, and no task left.
fn assert_store_empty(rt: &Runtime) {
    rayfork_tests::assert_store_empty(rt);
    let s = rt.stats().unwrap();
    assert_eq!(s.tasks, 0, "{s:?}");
}

#[test]
fn multiple_returns_resolve_independently() {
    let _w = watchdog("multiple_returns_resolve_independently", LIMIT);
    let rt = runtime();
    {
        let (a, b, c): (ObjectRef<u64>, ObjectRef<String>, ObjectRef<Vec<u8>>) = three::remote(5);
        // Each ref resolves on its own, in any order; the big one came through the store.
        assert_eq!(rt.get(&c).unwrap(), vec![7; BIG]);
        assert_eq!(rt.get(&a).unwrap(), 5);
        assert_eq!(rt.get(&b).unwrap(), "value 5");
        assert!(rt.stats().unwrap().store.used > 0);
        // One return passed to another task, the driver never fetching it.
        assert_eq!(rt.get(&byte_sum::remote(&c)).unwrap(), 7 * BIG as u64);
        assert_eq!(rt.get(&add_one::remote(a)).unwrap(), 6);

        // Dropping some refs before the task ends leaves the others whole.
        let (a, b, c) = three::options().name("three-opts").remote(9);
        drop((a, c));
        assert_eq!(rt.get(&b).unwrap(), "value 9");

        // Without num_returns a tuple is one object.
        let t: ObjectRef<(u64, u64, u64)> = one_tuple::remote();
        assert_eq!(rt.get(&t).unwrap(), (0, 1, 2));

        // A fallible multi-return function: Ok splits, Err fails every ref.
        let (x, y) = split::remote(21);
        assert_eq!(rt.get(&x).unwrap(), 42);
        assert_eq!(rt.get(&y).unwrap().len(), BIG);
        let (x, y) = split::remote(-1);
        for e in [rt.get(&x).unwrap_err(), rt.get(&y).map(|_| 0).unwrap_err()] {
            match e {
                Error::TaskFailed { message, .. } => assert_eq!(message, "negative: -1"),
                other => panic!("expected TaskFailed, got {other:?}"),
            }
        }
    }
    assert_store_empty(&rt);
}

#[test]
fn multiple_returns_from_nested_tasks() {
    let _w = watchdog("multiple_returns_from_nested_tasks", LIMIT);
    let rt = runtime();
    assert_eq!(
        rt.get(&nested_three::remote(3)).unwrap(),
        3 + 7 * BIG as u64
    );
    assert_store_empty(&rt);
}

#[remote]
fn nested_three(x: u64) -> rayfork::Result<u64> {
    let (a, _b, c) = three::remote(x);
    Ok(rayfork::get(&a)? + rayfork::get(&byte_sum::remote(c))?)
}

fn unschedulable(e: Error) -> (String, String, String) {
    match e {
        Error::Unschedulable {
            resource,
            requested,
            total,
            ..
        } => (resource, requested, total),
        other => panic!("expected Unschedulable, got {other:?}"),
    }
}

#[test]
fn an_oversized_resource_request_fails_at_once() {
    let _w = watchdog("an_oversized_resource_request_fails_at_once", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .num_gpus(1.0)
        .resource("db", 2.0)
        .start()
        .unwrap();
    // The attribute asks for 4 CPUs of 2: CPU is checked first.
    let e = rt.get(&big_request::remote()).unwrap_err();
    assert_eq!(
        unschedulable(e.clone()),
        ("CPU".into(), "4".into(), "2".into())
    );
    assert!(e.to_string().contains("needs 4 CPU"), "{e}");
    let e = rt
        .get(&big_request::options().num_cpus(1.0).remote())
        .unwrap_err();
    assert_eq!(unschedulable(e), ("GPU".into(), "2".into(), "1".into()));
    let e = rt
        .get(
            &big_request::options()
                .num_cpus(1.0)
                .num_gpus(1.0)
                .resource("db", 3.0)
                .remote(),
        )
        .unwrap_err();
    assert_eq!(unschedulable(e), ("db".into(), "3".into(), "2".into()));
    // A resource the runtime does not have at all.
    let e = rt
        .get(&pid::options().resource("license", 1.0).remote())
        .unwrap_err();
    assert_eq!(unschedulable(e), ("license".into(), "1".into(), "0".into()));
    // Multiple returns fail together.
    let (a, b, c) = three::options().num_gpus(5.0).remote(1);
    assert!(matches!(rt.get(&a), Err(Error::Unschedulable { .. })));
    assert!(matches!(rt.get(&b), Err(Error::Unschedulable { .. })));
    assert!(matches!(rt.get(&c), Err(Error::Unschedulable { .. })));
    // Within the totals it runs.
    assert_eq!(
        rt.get(
            &big_request::options()
                .num_cpus(2.0)
                .num_gpus(1.0)
                .resource("db", 2.0)
                .remote()
        )
        .unwrap(),
        1
    );
    drop((a, b, c));
    assert_store_empty(&rt);
}

/// Runs `n` rendezvous tasks with `opts` applied and returns the most seen active at once.
fn max_concurrent(
    test: &str,
    n: usize,
    width: usize,
    opts: impl Fn(rendezvous::Options) -> rendezvous::Options,
) -> usize {
    let dir = marker_dir(test);
    let d = dir.to_string_lossy().into_owned();
    let refs: Vec<_> = (0..n)
        .map(|i| opts(rendezvous::options()).remote(d.clone(), i, n, width))
        .collect();
    let seen = rayfork::get_all(&refs).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    seen.into_iter().max().unwrap()
}

#[test]
fn custom_resource_limits_concurrency() {
    let _w = watchdog("custom_resource_limits_concurrency", LIMIT);
    // Plenty of CPUs (4 x 0.5 each: 8 tasks could run), but only 2 db connections.
    let rt = Runtime::builder()
        .num_cpus(4)
        .resource("db", 2.0)
        .start()
        .unwrap();
    let max = max_concurrent("db", 6, 2, |o| o.num_cpus(0.5).resource("db", 1.0));
    assert_eq!(max, 2, "tasks holding db at once");
    // A task waiting for db does not hold back a CPU-only task queued behind it: a db holder
    // blocked on such a child finishes (scheduler rule 1).
    let held = rt
        .get(
            &hold_db_and_wait_child::options()
                .resource("db", 2.0)
                .remote(),
        )
        .unwrap();
    assert_eq!(held, 4);
    // The waiter, whose ref its parent dropped, still runs (once db is free) and then ends.
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[remote]
fn hold_db_and_wait_child() -> rayfork::Result<u64> {
    // Queued first: a task that needs db while we hold all of it.
    let waiter = add_one::options().resource("db", 1.0).remote(0);
    let child = square::remote(2);
    let v = rayfork::get(&child)?;
    drop(waiter);
    Ok(v)
}

#[test]
fn fractional_cpus_share_one_cpu() {
    let _w = watchdog("fractional_cpus_share_one_cpu", LIMIT);
    let rt = Runtime::builder().num_cpus(1).start().unwrap();
    // Half a CPU each: two at a time on one CPU, never three.
    let max = max_concurrent("half", 6, 2, |o| o.num_cpus(0.5));
    assert_eq!(max, 2, "0.5-CPU tasks at once on 1 CPU");
    // A third of a CPU each: three at a time.
    let max = max_concurrent("third", 6, 3, |o| o.num_cpus(1.0 / 3.0));
    assert_eq!(max, 3, "1/3-CPU tasks at once on 1 CPU");
    // Whole CPUs: one at a time.
    let max = max_concurrent("whole", 3, 1, |o| o);
    assert_eq!(max, 1);
    assert_store_empty(&rt);
}

#[test]
fn max_calls_one_gives_a_new_process_per_task() {
    let _w = watchdog("max_calls_one_gives_a_new_process_per_task", LIMIT);
    let rt = Runtime::builder().num_cpus(1).start().unwrap();
    // Without max_calls, the pool's one worker runs them all.
    let reused: HashSet<u32> = (0..4).map(|_| rt.get(&pid::remote()).unwrap()).collect();
    assert_eq!(reused.len(), 1);
    // With max_calls = 1 (attribute, then option), each call gets a fresh process.
    let mut pids: Vec<u32> = (0..4)
        .map(|_| rt.get(&fresh_pid::remote()).unwrap())
        .collect();
    pids.extend((0..4).map(|_| rt.get(&pid::options().max_calls(1).remote()).unwrap()));
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 8, "{pids:?}");
    // Retired workers exit (and are reaped) while the runtime runs; retirements are not crashes.
    assert!(
        eventually(Duration::from_secs(30), || pids
            .iter()
            .all(|&p| !alive(p as i32))),
        "a retired worker is still alive"
    );
    // The scheduler hears of each exit from the fork server, just after the reaping.
    assert!(
        eventually(Duration::from_secs(30), || rt
            .stats()
            .unwrap()
            .workers_retired
            >= 8),
        "{:?}",
        rt.stats()
    );
    let s = rt.stats().unwrap();
    assert_eq!(s.workers_died, 0, "{s:?}");
    assert!(s.workers <= 3, "{s:?}");
    // max_calls = 2: no process serves more than two calls.
    let two: Vec<u32> = (0..6)
        .map(|_| rt.get(&pid::options().max_calls(2).remote()).unwrap())
        .collect();
    for p in &two {
        assert!(two.iter().filter(|&q| q == p).count() <= 2, "{two:?}");
    }
    drop(rt);
    assert!(eventually(Duration::from_secs(10), || two
        .iter()
        .all(|&p| !alive(p as i32))));
}

/// `f::options()` has every setter of `TaskOptions`, with the same arguments and the same
/// effect: the generated options type forwards them (issue 11), it does not declare its own.
#[test]
fn remote_options_have_every_task_option() {
    // The same calls on both types (they share no trait: the macro forwards each setter).
    macro_rules! set_all {
        ($o:expr) => {
            $o.max_retries(1)
                .num_cpus(0.5)
                .name("n")
                .retry_exceptions(true)
                .retry_exceptions_matching(["reset"])
                .num_gpus(0.25)
                .resource("db", 1.0)
                .resources([("disk", 0.5), ("db", 2.0)])
                .resources::<&str>([])
                .backpressure(2)
                .max_calls(3)
        };
    }
    let forwarded = set_all!(square::options());
    let direct = set_all!(rayfork::TaskOptions::default());
    assert_eq!(format!("{forwarded:?}"), format!("Options({direct:?})"));
}

#[test]
fn map_and_map_each_keep_order() {
    let _w = watchdog("map_and_map_each_keep_order", LIMIT);
    let rt = runtime();
    let refs = rayfork::map_chunks(double_all::remote, 0..1_003u64, 100);
    assert_eq!(refs.len(), 11);
    let doubled: Vec<u64> = rt.get_all(&refs).unwrap().into_iter().flatten().collect();
    assert_eq!(doubled, (0..1_003u64).map(|x| 2 * x).collect::<Vec<_>>());
    assert!(rayfork::map_chunks(double_all::remote, Vec::<u64>::new(), 10).is_empty());

    let squares = rayfork::map_each(square::remote, 0..500u64, 16).unwrap();
    assert_eq!(squares, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    let ones = rayfork::map_each(|x| square::options().num_cpus(0.5).remote(x), [1u64], 0).unwrap();
    assert_eq!(ones, vec![1]);
    drop(refs);
    assert_store_empty(&rt);
    // The first error comes back; tasks still in flight then finish unobserved.
    let e = rayfork::map_each(split_first::remote, [1i64, -1, 2, 3], 1).unwrap_err();
    assert!(matches!(e, Error::TaskFailed { .. }), "{e:?}");
    assert!(eventually(Duration::from_secs(30), || {
        let s = rt.stats().unwrap();
        (s.store.used, s.objects, s.tasks) == (0, 0, 0)
    }));
}

#[remote]
fn split_first(x: i64) -> Result<i64, String> {
    if x < 0 { Err("negative".into()) } else { Ok(x) }
}

/// What a task sees of its GPUs: `gpu_ids()` and `CUDA_VISIBLE_DEVICES`.
type GpuView = (Vec<u32>, Option<String>);

fn gpu_view() -> GpuView {
    (
        rayfork::gpu_ids(),
        std::env::var("CUDA_VISIBLE_DEVICES").ok(),
    )
}

#[remote]
fn gpu_child() -> GpuView {
    gpu_view()
}

/// Holds its GPUs while it waits for a child asking for `child` GPUs: both hold devices at once.
#[remote]
fn gpu_parent(child: f64) -> rayfork::Result<(GpuView, GpuView)> {
    let mine = gpu_view();
    let theirs = rayfork::get(&gpu_child::options().num_gpus(child).remote())?;
    // Back from the nested wait: still its own devices.
    assert_eq!(gpu_view(), mine);
    Ok((mine, theirs))
}

#[test]
fn tasks_get_gpu_devices_and_cuda_visible_devices() {
    let _w = watchdog("tasks_get_gpu_devices_and_cuda_visible_devices", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .num_gpus(2.0)
        .start()
        .unwrap();
    let listed = |ids: &[u32]| {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
        Some(s.join(","))
    };
    // Two whole GPUs held at once: distinct devices, each listed in its own environment.
    let ((p, p_env), (c, c_env)) = rt
        .get(&gpu_parent::options().num_gpus(1.0).remote(1.0))
        .unwrap();
    assert_eq!((p.len(), c.len()), (1, 1));
    assert_ne!(p, c);
    assert!(p[0] < 2 && c[0] < 2);
    assert_eq!((p_env, c_env), (listed(&p), listed(&c)));
    // Two halves share one device; a whole one then goes to the other.
    let ((p, _), (c, _)) = rt
        .get(&gpu_parent::options().num_gpus(0.5).remote(0.5))
        .unwrap();
    assert_eq!(p, c);
    let ((p, _), (c, _)) = rt
        .get(&gpu_parent::options().num_gpus(0.5).remote(1.0))
        .unwrap();
    assert_ne!(p, c);
    // Both devices for one task.
    let (both, env) = rt
        .get(&gpu_child::options().num_gpus(2.0).remote())
        .unwrap();
    assert_eq!(both, vec![0, 1]);
    assert_eq!(env, listed(&both));
    // A task without GPUs gets none, and the environment the driver had (the old value was
    // put back after each GPU task).
    let (none, env) = rt.get(&gpu_child::remote()).unwrap();
    assert!(none.is_empty());
    assert_eq!(env, std::env::var("CUDA_VISIBLE_DEVICES").ok());
    assert!(rayfork::gpu_ids().is_empty(), "the driver has no devices");
    // More than one GPU comes in whole devices: 1.5 of a 1.5-GPU runtime can never fit.
    drop(rt);
    let rt = Runtime::builder().num_gpus(1.5).start().unwrap();
    let e = rt
        .get(&gpu_child::options().num_gpus(1.5).remote())
        .unwrap_err();
    assert_eq!(unschedulable(e).0, "GPU (whole devices)");
    assert_eq!(
        rt.get(&gpu_child::options().num_gpus(0.5).remote())
            .unwrap()
            .0,
        vec![1]
    );
}
