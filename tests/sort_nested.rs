//! Nested tasks and zero-copy arrays: the quicksort of the demo at 2M elements, a recursion
//! deeper than the worker bound, and proof that a worker reads the driver's bytes in place.

#[path = "../examples/sort_tasks.rs"]
mod sort_tasks;

use std::time::Duration;

use rayfork::{Array, ArrayMut, Runtime, remote};
use rayfork_tests::{assert_store_empty, watchdog};

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn nested_quicksort_sorts_2m_elements() {
    let _w = watchdog("nested_quicksort_sorts_2m_elements", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .store_capacity(1 << 30)
        .start()
        .unwrap();
    let input = sort_tasks::random_ints(2_000_000, 1);
    let mut expected = input.clone();
    expected.sort_unstable();
    let data = rt.put_array(&input).unwrap();
    let sorted = rt
        .get(&sort_tasks::quick_sort::remote(data.clone()))
        .unwrap();
    assert_eq!(&sorted[..], &expected[..]);
    let sampled = sort_tasks::sample_sort(&rt, &data, 3).unwrap();
    assert_eq!(&sampled[..], &expected[..]);
    let s = rt.stats().unwrap();
    assert!(s.workers_started >= 2, "{s:?}");
    drop((data, sorted, sampled));
    assert_store_empty(&rt);
}

#[remote]
fn depth(level: u32) -> rayfork::Result<u32> {
    if level == 0 {
        return Ok(0);
    }
    // Each level blocks on its child: 8 levels need 8 blocked frames at once.
    let child = depth::remote(level - 1);
    Ok(rayfork::get(&child)? + 1)
}

#[test]
fn recursion_deeper_than_max_workers_finishes() {
    let _w = watchdog("recursion_deeper_than_max_workers_finishes", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .max_workers(3)
        .start()
        .unwrap();
    assert_eq!(rt.get(&depth::remote(8)).unwrap(), 8);
    // Two such trees at once, still bounded.
    let a = depth::remote(8);
    let b = depth::remote(8);
    assert_eq!(rt.get_all(&[a, b]).unwrap(), vec![8, 8]);
    let s = rt.stats().unwrap();
    assert!(s.peak_workers <= 3, "{s:?}");
    assert!(s.nested_inline > 0, "{s:?}");
}

#[remote]
fn where_is(a: Array<u64>, b: Array<u64>) -> (u64, u64, usize, usize, u64) {
    // The offset of each array in the arena, and its address in this process.
    let sum = a.iter().sum::<u64>();
    (
        a.descriptor().offset,
        b.descriptor().offset,
        a.as_ptr() as usize,
        b.as_ptr() as usize,
        sum,
    )
}

#[remote]
fn fill_in_task(n: usize) -> rayfork::Result<Array<u64>> {
    ArrayMut::from_fn(n, |i| i as u64 * 3)?.seal()
}

#[test]
fn a_worker_reads_the_drivers_bytes_in_place() {
    let _w = watchdog("a_worker_reads_the_drivers_bytes_in_place", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .store_capacity(512 << 20)
        .start()
        .unwrap();
    let a = rt
        .put_array(&(0..4_000_000u64).collect::<Vec<_>>())
        .unwrap();
    let b = ArrayMut::from_fn(1000, |i| i as u64)
        .unwrap()
        .seal()
        .unwrap();
    let before = rt.stats().unwrap().store;
    let (off_a, off_b, ptr_a, ptr_b, sum) =
        rt.get(&where_is::remote(a.clone(), b.clone())).unwrap();
    let after = rt.stats().unwrap().store;
    // Same bytes: the worker's views sit at the driver's offsets...
    assert_eq!(off_a, a.descriptor().offset);
    assert_eq!(off_b, b.descriptor().offset);
    // ...of one mapping (base = address - offset is the same for both arrays)...
    assert_eq!(ptr_a - off_a as usize, ptr_b - off_b as usize);
    assert_eq!(sum, (0..4_000_000u64).sum::<u64>());
    // ...and passing them allocated nothing in the store (the result is a small inline value).
    assert_eq!(before.used, after.used);
    assert_eq!(before.live_objects, after.live_objects);
    // An array made in a task comes back as a view of the task's bytes.
    let c = rt.get(&fill_in_task::remote(10_000)).unwrap();
    assert_eq!(c[9_999], 9_999 * 3);
    assert_eq!(
        rt.stats().unwrap().store.live_objects,
        after.live_objects + 1
    );
    drop((a, b, c));
    assert_eq!(rt.stats().unwrap().store.used, 0);
}

/// Polls until cancelled (a task that stays blocked on it until the test ends it).
#[remote]
fn gate() {
    while !rayfork::is_cancelled() {
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

/// Drops its input, then waits for `gate` (which only a cancel ends).
#[remote]
fn drop_then_wait(data: Array<u64>, gate: rayfork::ObjectRef<()>) -> rayfork::Result<()> {
    drop(data);
    rayfork::get(&gate)
}

#[test]
fn a_task_with_no_retry_frees_its_input_when_it_drops_it() {
    let _w = watchdog("a_task_with_no_retry_frees_its_input", LIMIT);
    let rt = Runtime::builder().num_cpus(2).start().unwrap();
    let g = gate::remote();
    let data = rt.put_array(&vec![7u64; 1 << 20]).unwrap();
    // The driver's handle moves into the call; with no retry, so does the task's reference
    // (scheduler rule 13): its own drop frees the array while it still runs.
    let r = drop_then_wait::options()
        .max_retries(0)
        .remote(data, g.clone());
    assert!(
        rayfork_tests::eventually(LIMIT, || rt.stats().unwrap().store.used == 0),
        "the input outlived the task's drop: {:?}",
        rt.stats().unwrap()
    );
    assert_eq!(rt.stats().unwrap().tasks, 2);
    rayfork::cancel(&g).unwrap();
    assert!(rt.get(&r).is_err());
    drop((g, r));
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[test]
fn every_sort_variant_sorts_every_kind_of_input() {
    let _w = watchdog("every_sort_variant_sorts_every_kind_of_input", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .store_capacity(1 << 30)
        .start()
        .unwrap();
    let n = 300_000;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    use rand::{Rng, SeedableRng};
    let inputs: Vec<(&str, Vec<i64>)> = vec![
        ("random seed range", sort_tasks::random_ints(n, 9)),
        ("random full range", (0..n).map(|_| rng.random()).collect()),
        ("sorted", (0..n as i64).collect()),
        ("reversed", (0..n as i64).rev().collect()),
        ("all equal", vec![-3; n]),
        (
            "few distinct",
            (0..n).map(|_| rng.random_range(-2..=2)).collect(),
        ),
        (
            "extremes and negatives",
            (0..n)
                .map(|i| [i64::MIN, i64::MAX, -1, 0, i64::MIN + 1][i % 5])
                .collect(),
        ),
    ];
    for (name, input) in &inputs {
        let mut want = input.clone();
        want.sort_unstable();
        let leaf = 1 << 14;
        // The in-place nested quicksort on a window.
        let w = ArrayMut::from_slice(input).unwrap().into_window().unwrap();
        let got = rt
            .get(&sort_tasks::quick_sort_in_place::remote(w, leaf))
            .unwrap()
            .seal()
            .unwrap();
        assert!(got[..] == want[..], "in-place: {name}");
        // The same recursion in one process, and the radix leaf alone.
        let mut v = input.clone();
        sort_tasks::quick_sort_in_place_seq(&mut v, leaf);
        assert!(v == want, "in-place, one process: {name}");
        let mut v = input.clone();
        sort_tasks::radix_sort(&mut v);
        assert!(v == want, "radix: {name}");
        // The radix sort tasks, with 1, 2 and 3 chunks.
        for tasks in 1..=3 {
            let m = ArrayMut::from_slice(input).unwrap();
            let got = sort_tasks::radix_sort_tasks(m, tasks).unwrap();
            assert!(got[..] == want[..], "radix tasks ({tasks}): {name}");
        }
        // The seed algorithm (copying), with no retry: its inputs go as it partitions them.
        let data = rt.put_array(input).unwrap();
        let got = rt
            .get(
                &sort_tasks::quick_sort::options()
                    .max_retries(0)
                    .remote(data),
            )
            .unwrap();
        assert!(got[..] == want[..], "seed: {name}");
    }
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}
