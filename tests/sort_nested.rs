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
