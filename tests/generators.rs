//! Generator tasks: items arrive before the task ends, in order, under back-pressure, through
//! the store when large; a failure mid-way gives the items yielded before it, then the error.

use std::io::Read;
use std::time::Duration;

use rayfork::{Error, Runtime, remote};
use rayfork_tests::watchdog;

const LIMIT: Duration = Duration::from_secs(120);

/// Yields 0, then waits until the FIFO at `fifo` is written to, then yields 1..n.
#[remote(streaming)]
fn gated(n: u64, fifo: String) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |&i| {
        if i == 1 {
            let mut f = std::fs::File::open(&fifo).expect("open fifo");
            let mut b = [0u8; 1];
            let _ = f.read(&mut b);
        }
    })
}

/// Yields `ok` items, then fails as told.
#[remote(streaming)]
fn fails_after(ok: u64, how: String) -> impl Iterator<Item = u64> {
    (0..=ok).map(move |i| {
        if i == ok {
            match how.as_str() {
                "abort" => std::process::abort(),
                _ => panic!("generator gave up at {i}"),
            }
        }
        i * 10
    })
}

/// Yields vectors of `len` copies of their index (large ones go through the store).
#[remote(streaming)]
fn blocks(n: u64, len: usize) -> impl Iterator<Item = Vec<u64>> {
    (0..n).map(move |i| vec![i; len])
}

/// Consumes a generator inside a task and sums its items.
#[remote]
fn sum_inside(n: u64) -> u64 {
    let stream = blocks::options().backpressure(1).remote(n, 4);
    stream
        .map(|r| rayfork::get(&r.expect("item")).expect("value")[0])
        .sum()
}

fn runtime(cpus: usize) -> Runtime {
    Runtime::builder().num_cpus(cpus).start().expect("start")
}

#[test]
fn the_first_item_arrives_before_the_task_ends() {
    let _w = watchdog("the_first_item_arrives_before_the_task_ends", LIMIT);
    let rt = runtime(2);
    let dir = std::env::temp_dir().join(format!("rayfork-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("gate");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut stream = gated::remote(5, fifo.to_string_lossy().into_owned());
    // The task cannot end before we open the gate, so this item came while it ran.
    let first = stream.next().expect("an item").unwrap();
    assert_eq!(rt.get(&first).unwrap(), 0);
    let (ready, _) = rt
        .wait(
            std::slice::from_ref(stream.completion()),
            1,
            Some(Duration::ZERO),
        )
        .unwrap();
    assert!(
        ready.is_empty(),
        "the generator ended before its gate opened"
    );
    std::fs::write(&fifo, b"x").unwrap();
    let rest: Vec<u64> = stream.map(|r| rt.get(&r.unwrap()).unwrap()).collect();
    assert_eq!(rest, vec![1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crash_midway_gives_the_items_then_the_error() {
    let _w = watchdog("a_crash_midway_gives_the_items_then_the_error", LIMIT);
    let rt = runtime(2);
    let mut got = Vec::new();
    let mut err = None;
    // It crashes on every attempt: each retry yields the same three items again, and the
    // caller sees each once.
    for r in fails_after::options()
        .max_retries(2)
        .remote(3, "abort".to_string())
    {
        match r {
            Ok(r) => got.push(rt.get(&r).unwrap()),
            Err(e) => err = Some(e),
        }
    }
    assert_eq!(got, vec![0, 10, 20]);
    match err {
        Some(Error::WorkerCrashed {
            attempts, cause, ..
        }) => {
            assert_eq!(attempts, 3, "a generator is retried as other tasks");
            assert!(cause.contains("SIGABRT"), "{cause}");
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    // A panic is an error of the task; the worker survives it.
    let items: Vec<_> = fails_after::remote(2, "panic".to_string()).collect();
    assert_eq!(items.len(), 3);
    assert!(
        matches!(&items[2], Err(Error::TaskPanicked { message, .. }) if message.contains("gave up"))
    );
}

#[test]
fn items_come_in_order_under_backpressure_and_free_their_memory() {
    let _w = watchdog(
        "items_come_in_order_under_backpressure_and_free_their_memory",
        LIMIT,
    );
    let rt = runtime(2);
    // 40 items of ~100 KB encoded each (bincode's varints: one byte per small u64), at most 2
    // waiting: the store never holds them all at once.
    const LEN: usize = 100_000;
    let stream = blocks::options().backpressure(2).remote(40, LEN);
    let mut peak = 0;
    for (i, r) in stream.enumerate() {
        let v = rt.get(&r.unwrap()).unwrap();
        assert_eq!(v.len(), LEN);
        assert!(v.iter().all(|&x| x == i as u64));
        peak = peak.max(rt.stats().unwrap().store.used);
    }
    assert!(peak > 0, "large items went through the store");
    assert!(
        peak < 10 * 128 * 1024,
        "back-pressure kept at most a few items: {peak} bytes"
    );
    let s = rt.stats().unwrap();
    assert_eq!((s.store.used, s.objects), (0, 0), "{s:?}");
    // Dropping a generator without taking its items frees them too.
    let stream = blocks::options().backpressure(0).remote(10, LEN);
    let done = stream.completion().clone();
    assert_eq!(rt.get(&done).unwrap(), 10);
    drop(stream);
    drop(done);
    let s = rt.stats().unwrap();
    assert_eq!((s.store.used, s.objects), (0, 0), "{s:?}");
}

#[test]
fn a_task_consumes_a_generator_on_one_cpu() {
    let _w = watchdog("a_task_consumes_a_generator_on_one_cpu", LIMIT);
    // The consumer holds the only CPU until it waits for an item; the generator then runs, and
    // waits for room with its CPU given back: neither starves the other (scheduler rule 10).
    let rt = runtime(1);
    assert_eq!(
        rt.get(&sum_inside::remote(50)).unwrap(),
        (0..50).sum::<u64>()
    );
}

/// Yields forever.
#[remote(streaming)]
fn endless() -> impl Iterator<Item = u64> {
    0..
}

/// A generator whose caller drops it ends at its next yield, whether it waits for room
/// (back-pressure) or not; its untaken items are freed and its worker takes other tasks.
#[test]
fn dropping_a_generator_ends_its_task_and_frees_its_items() {
    let _w = watchdog("dropping_a_generator_ends_its_task", LIMIT);
    let rt = Runtime::builder().num_cpus(2).start().unwrap();
    for bound in [2, 0] {
        let mut g = endless::options().backpressure(bound).remote();
        assert_eq!(rt.get(&g.next().unwrap().unwrap()).unwrap(), 0);
        drop(g);
        let ended = rayfork_tests::eventually(Duration::from_secs(60), || {
            let s = rt.stats().unwrap();
            s.tasks == 0 && s.objects == 0 && s.store.live_objects == 0
        });
        assert!(ended, "backpressure {bound}: {:?}", rt.stats().unwrap());
    }
}

/// Yields `0..n`, crashing after `crash_at` items on its first run only.
#[remote(streaming)]
fn crashes_once(n: u64, crash_at: u64, path: String) -> impl Iterator<Item = u64> {
    let first = rayfork_tests::runs(&path) == 0;
    rayfork_tests::note_run(&path);
    (0..n).inspect(move |&i| {
        if first && i == crash_at {
            std::process::abort();
        }
    })
}

#[test]
fn a_retried_generator_gives_each_item_once() {
    let _w = watchdog("a_retried_generator_gives_each_item_once", LIMIT);
    let rt = runtime(2);
    let path = rayfork_tests::fresh_path("generator-retry", "runs");
    let items: Vec<u64> = crashes_once::remote(40, 25, path.clone())
        .map(|r| rt.get(&r.unwrap()).unwrap())
        .collect();
    assert_eq!(items, (0..40).collect::<Vec<_>>());
    assert_eq!(rayfork_tests::runs(&path), 2);
    // Without retries, the crash ends the stream after the items it yielded.
    let path = rayfork_tests::fresh_path("generator-no-retry", "runs");
    let got: Vec<_> = crashes_once::options()
        .max_retries(0)
        .remote(40, 25, path)
        .collect();
    assert_eq!(got.len(), 26);
    assert!(matches!(got[25], Err(Error::WorkerCrashed { .. })));
    drop(got);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}
