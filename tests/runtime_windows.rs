//! Writable windows (window.rs, scheduler rule 12): disjoint parts of one unsealed array,
//! written in place by tasks in other processes and joined back; never writable from two
//! places; a crash in the middle gives the documented outcome; nothing is left in the store.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayfork::{ArrayMut, Error, ObjectRef, Runtime, Window, remote};
use rayfork_tests::{assert_store_empty, fresh_path, note_run, runs, watchdog};

const LIMIT: Duration = Duration::from_secs(300);

fn runtime() -> Runtime {
    Runtime::builder().num_cpus(2).start().unwrap()
}

/// Adds `k` to every element, in place, and hands the window back.
#[remote]
fn add(mut w: Window<i64>, k: i64) -> Window<i64> {
    for x in w.iter_mut() {
        *x += k;
    }
    w
}

/// Sorts in place: partitions around a pivot, gives both sides to nested tasks, joins.
#[remote]
fn sort_in_place(mut w: Window<i64>) -> Window<i64> {
    if w.len() <= 64 {
        w.sort_unstable();
        return w;
    }
    let pivot = w[w.len() / 2];
    let (mut lt, mut i, mut gt) = (0, 0, w.len());
    // Three-way partition: [< pivot | == pivot | > pivot].
    while i < gt {
        if w[i] < pivot {
            w.swap(lt, i);
            lt += 1;
            i += 1;
        } else if w[i] > pivot {
            gt -= 1;
            w.swap(i, gt);
        } else {
            i += 1;
        }
    }
    let (left, rest) = w.split_at(lt);
    let (mid, right) = rest.split_at(gt - lt);
    let (l, r) = (sort_in_place::remote(left), sort_in_place::remote(right));
    let (l, r) = (rayfork::get(&l).unwrap(), rayfork::get(&r).unwrap());
    l.join(mid).unwrap().join(r).unwrap()
}

#[test]
fn tasks_write_disjoint_windows_in_place_and_the_array_seals_without_a_copy() {
    let _w = watchdog("tasks_write_disjoint_windows_in_place", LIMIT);
    let rt = runtime();
    {
        let m = ArrayMut::from_fn(10_000, |i| i as i64).unwrap();
        let whole = m.into_window().unwrap();
        let id = whole.array_id();
        let addr = whole.as_ptr();
        let (a, rest) = whole.split_at(2_500);
        let (b, rest) = rest.split_at(2_500);
        let (c, d) = rest.split_at(2_500);
        let refs: Vec<ObjectRef<Window<i64>>> = [a, b, c, d]
            .into_iter()
            .enumerate()
            .map(|(k, w)| add::remote(w, 1_000_000 * (k as i64 + 1)))
            .collect();
        let mut parts = rt.get_all(&refs).unwrap().into_iter();
        let mut joined = parts.next().unwrap();
        for p in parts {
            joined = joined.join(p).unwrap();
        }
        assert!(joined.is_whole());
        let sealed = joined.seal().unwrap();
        // The same object, at the same address: nothing was copied.
        assert_eq!((sealed.id(), sealed.as_ptr()), (id, addr));
        for (i, &x) in sealed.iter().enumerate() {
            assert_eq!(
                x,
                i as i64 + 1_000_000 * (i as i64 / 2_500 + 1),
                "element {i}"
            );
        }
    }
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[test]
fn the_nested_in_place_quicksort_sorts_every_kind_of_input() {
    let _w = watchdog("the_nested_in_place_quicksort_sorts", LIMIT);
    let rt = runtime();
    let mut rng = SmallRng::seed_from_u64(7);
    let n = 20_000;
    let inputs: Vec<(&str, Vec<i64>)> = vec![
        ("random", (0..n).map(|_| rng.random()).collect()),
        ("sorted", (0..n as i64).collect()),
        ("reversed", (0..n as i64).rev().collect()),
        ("all equal", vec![5; n]),
        (
            "few distinct",
            (0..n).map(|_| rng.random_range(-3..3)).collect(),
        ),
        (
            "extremes",
            (0..n)
                .map(|i| [i64::MIN, i64::MAX, 0, -1][i % 4] ^ (i as i64 & 1))
                .collect(),
        ),
    ];
    for (name, input) in inputs {
        let w = ArrayMut::from_slice(&input).unwrap().into_window().unwrap();
        let sorted = rt.get(&sort_in_place::remote(w)).unwrap().seal().unwrap();
        let mut want = input.clone();
        want.sort_unstable();
        assert!(sorted[..] == want[..], "{name}: not sorted");
    }
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[test]
fn split_and_join_keep_windows_disjoint_and_refuse_what_is_not_adjacent() {
    let _w = watchdog("split_and_join_keep_windows_disjoint", LIMIT);
    let rt = runtime();
    let mut rng = SmallRng::seed_from_u64(11);
    for round in 0..50 {
        let len = rng.random_range(0..300);
        let mut parts = vec![ArrayMut::<u32>::zeroed(len).unwrap().into_window().unwrap()];
        for _ in 0..rng.random_range(0..40) {
            // Split a random part at a random place, or try to join two random parts.
            let i = rng.random_range(0..parts.len());
            if rng.random_bool(0.6) {
                let p = parts.remove(i);
                let mid = rng.random_range(0..=p.len());
                let (a, b) = p.split_at(mid);
                parts.insert(i, b);
                parts.insert(i, a);
            } else if parts.len() > 1 {
                let j = rng.random_range(0..parts.len() - 1);
                let k = rng.random_range(j + 1..parts.len());
                let right = parts.remove(k);
                let left = parts.remove(j);
                let adjacent = left.range().end == right.range().start;
                match left.join(right) {
                    Ok(w) => {
                        assert!(adjacent, "round {round}: joined parts that do not touch");
                        parts.insert(j, w);
                    }
                    Err(e) => {
                        assert!(!adjacent, "round {round}: refused to join touching parts");
                        parts.insert(j, e.left);
                        parts.insert(k, e.right);
                    }
                }
            }
            // Every element is in exactly one part: no overlap, no element lost.
            let mut cover = vec![0u8; len];
            for p in &parts {
                for c in &mut cover[p.range()] {
                    *c += 1;
                }
            }
            assert!(cover.iter().all(|&c| c == 1), "round {round}: {cover:?}");
        }
        // Each part writes its own number; joined back in array order, the array reads
        // every part's number over exactly its range.
        let mut want = vec![0u32; len];
        for (k, p) in parts.iter_mut().enumerate() {
            p.fill(k as u32 + 1);
            want[p.range()].fill(k as u32 + 1);
        }
        parts.sort_by_key(|p| (p.range().start, p.range().end));
        let mut it = parts.into_iter();
        let mut whole = it.next().unwrap();
        for p in it {
            // An empty part may sit inside a joined range: it covers nothing, it goes.
            if !p.is_empty() {
                whole = whole.join(p).unwrap();
            }
        }
        assert_eq!(whole.seal().unwrap()[..], want[..], "round {round}");
    }
    assert_store_empty(&rt);
}

#[test]
fn a_window_in_a_result_is_given_out_once() {
    let _w = watchdog("a_window_in_a_result_is_given_out_once", LIMIT);
    let rt = runtime();
    {
        let w = ArrayMut::from_fn(100, |i| i as i64)
            .unwrap()
            .into_window()
            .unwrap();
        let r = add::remote(w, 1);
        let first = rt.get(&r).unwrap();
        assert_eq!(first[99], 100);
        // A second get would alias the first window: refused.
        match rt.get(&r) {
            Err(Error::WindowTaken { taker, .. }) => assert_eq!(taker, "the driver"),
            other => panic!("a second get of a window: {other:?}"),
        }
        // So is a task given the same ref.
        match rt.get(&add::remote(&r, 1)) {
            Err(Error::WindowTaken { .. }) => {}
            other => panic!("a task given a taken window: {other:?}"),
        }
    }
    {
        // Two tasks given one unread result: one of them gets it.
        let w = ArrayMut::from_fn(100, |i| i as i64)
            .unwrap()
            .into_window()
            .unwrap();
        let r = add::remote(w, 1);
        let (x, y) = (add::remote(&r, 10), add::remote(&r, 20));
        let outcomes = [rt.get(&x), rt.get(&y)];
        let ok = outcomes.iter().filter(|o| o.is_ok()).count();
        let taken = outcomes
            .iter()
            .filter(|o| matches!(o, Err(Error::WindowTaken { .. })))
            .count();
        assert_eq!((ok, taken), (1, 1), "{outcomes:?}");
    }
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[test]
fn a_window_moves_but_is_never_copied_by_put() {
    let _w = watchdog("a_window_moves_but_is_never_copied_by_put", LIMIT);
    let rt = runtime();
    let mut w = ArrayMut::<u8>::zeroed(10).unwrap().into_window().unwrap();
    let e = rayfork::put(&w).unwrap_err();
    assert!(e.to_string().contains("moved into a task"), "{e}");
    // The window is still the caller's, and still writes.
    w[0] = 1;
    let a = w.seal().unwrap();
    assert_eq!(a[0], 1);
    drop(a);
    assert_store_empty(&rt);
}

/// Writes part of its window, then dies the first time (and notes each run in `path`).
#[remote]
fn write_then_crash(mut w: Window<i64>, path: String, always: bool) -> Window<i64> {
    let first = rayfork_tests::runs(&path) == 0;
    note_run(&path);
    let half = w.len() / 2;
    w[..half].fill(-1);
    if first || always {
        std::process::abort();
    }
    w.fill(7);
    w
}

#[test]
fn a_crash_while_holding_a_window_is_window_lost_and_frees_the_array() {
    let _w = watchdog("a_crash_while_holding_a_window", LIMIT);
    let rt = runtime();
    let path = fresh_path("window-lost", "runs");
    let w = ArrayMut::from_fn(1000, |i| i as i64)
        .unwrap()
        .into_window()
        .unwrap();
    let (mine, theirs) = w.split_at(500);
    // Retries are on by default (3): a task holding a window still runs once only.
    let r = write_then_crash::remote(theirs, path.clone(), true);
    match rt.get(&r) {
        Err(Error::WindowLost { task, cause }) => {
            assert!(task.contains("write_then_crash"), "{task}");
            assert!(cause.contains("SIGABRT"), "{cause}");
        }
        other => panic!("a crash holding a window: {other:?}"),
    }
    assert_eq!(runs(&path), 1);
    // The caller's own part is intact, but the array can no longer be sealed whole.
    assert!(mine.iter().enumerate().all(|(i, &x)| x == i as i64));
    assert!(matches!(mine.seal(), Err(Error::InvalidArgument(_))));
    drop(r);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[test]
fn a_restartable_task_runs_again_after_a_crash() {
    let _w = watchdog("a_restartable_task_runs_again", LIMIT);
    let rt = runtime();
    let path = fresh_path("window-restart", "runs");
    let w = ArrayMut::from_fn(1000, |i| i as i64)
        .unwrap()
        .into_window()
        .unwrap();
    let r = write_then_crash::options()
        .restartable(true)
        .remote(w, path.clone(), false);
    let a = rt.get(&r).unwrap().seal().unwrap();
    assert_eq!(runs(&path), 2);
    assert!(a.iter().all(|&x| x == 7));
}

// ---------------------------------------------------------------------------------------------
// Regressions found by an adversarial review: each gave two writers of one range, a wrong
// result, or a leak.

/// Two windows as two arguments: writes one, reads the other.
#[remote]
fn two(mut a: Window<i64>, b: Window<i64>) -> i64 {
    a[0] = 42;
    b[0]
}

/// Takes a window as an argument and also gets the same ref.
#[remote]
fn arg_and_get(a: Window<i64>, r: ObjectRef<Window<i64>>) -> rayfork::Result<usize> {
    let b = rayfork::get(&r)?;
    Ok(a.len() + b.len())
}

#[remote]
fn boom() -> Window<i64> {
    panic!("boom")
}

#[test]
fn one_window_is_never_given_twice_to_one_task_or_lost_to_a_failed_read() {
    let _w = watchdog("one_window_is_never_given_twice", LIMIT);
    let rt = runtime();
    let window = || {
        let w = ArrayMut::from_fn(10, |i| i as i64)
            .unwrap()
            .into_window()
            .unwrap();
        add::remote(w, 0)
    };
    // The same ref as two arguments.
    let r = window();
    assert!(matches!(
        rt.get(&two::remote(&r, &r)),
        Err(Error::WindowTaken { .. })
    ));
    drop(r);
    // As an argument and by a get in the same run.
    let r = window();
    let e = rt.get(&arg_and_get::remote(&r, r.clone())).unwrap_err();
    assert!(e.to_string().contains("writable window"), "{e}");
    drop(r);
    // A get_all that fails (another ref failed, or the same ref twice) takes nothing: the
    // window is still there for a later get.
    let r = window();
    let bad = boom::remote();
    assert!(rt.get_all(&[r.clone(), bad.clone()]).is_err());
    assert!(matches!(
        rt.get_all(&[r.clone(), r.clone()]),
        Err(Error::WindowTaken { .. })
    ));
    // A task that never runs because another argument failed takes nothing either.
    assert!(rt.get(&two::remote(&r, &bad)).is_err());
    assert_eq!(rt.get(&r).unwrap().range(), 0..10);
    drop((r, bad));
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

/// First run: gives its window to a child and fails; a retry would share the range with it.
#[remote]
fn give_then_fail(w: Window<i64>, path: String) -> Result<Window<i64>, String> {
    let first = runs(&path) == 0;
    note_run(&path);
    if first {
        let _ = add::remote(w, 1);
        return Err("flaky".into());
    }
    Ok(w)
}

#[test]
fn retry_exceptions_never_reruns_a_task_that_gave_its_window_away() {
    let _w = watchdog("retry_exceptions_never_reruns", LIMIT);
    let rt = runtime();
    let path = fresh_path("window-retry-exceptions", "runs");
    let w = ArrayMut::<i64>::zeroed(10).unwrap().into_window().unwrap();
    let r = give_then_fail::options()
        .retry_exceptions(true)
        .max_retries(2)
        .remote(w, path.clone());
    let e = rt.get(&r).unwrap_err();
    assert!(e.to_string().contains("flaky"), "{e}");
    assert_eq!(runs(&path), 1);
    drop(r);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[remote]
fn with_blob(w: Window<i64>, blob: Vec<u8>) -> usize {
    w.len() + blob.len()
}

#[remote]
fn window_and_blob(w: Window<i64>) -> (Window<i64>, Vec<u8>) {
    (w, vec![1u8; 16 << 20])
}

#[test]
fn a_call_or_a_result_that_does_not_fit_gives_its_windows_back() {
    let _w = watchdog("a_call_or_a_result_that_does_not_fit", LIMIT);
    let rt = Runtime::builder()
        .num_cpus(2)
        .store_capacity(8 << 20)
        .start()
        .unwrap();
    let w = ArrayMut::from_fn(1000, |i| i as i64)
        .unwrap()
        .into_window()
        .unwrap();
    // The second argument does not fit in the store: the first one's reference goes back.
    let r = with_blob::remote(w, vec![0u8; 16 << 20]);
    assert!(matches!(rt.get(&r), Err(Error::StoreFull { .. })));
    drop(r);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
    // The result does not fit: the window it held goes back.
    let w = ArrayMut::from_fn(1000, |i| i as i64)
        .unwrap()
        .into_window()
        .unwrap();
    let r = window_and_blob::remote(w);
    assert!(rt.get(&r).is_err());
    drop(r);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

#[test]
fn a_window_of_another_runtime_is_refused_not_written_into_this_one() {
    let _w = watchdog("a_window_of_another_runtime_is_refused", LIMIT);
    let rt1 = runtime();
    let rt2 = runtime();
    let x = rt2.put_array(&[100i64; 10]).unwrap();
    rt1.enter();
    let w = ArrayMut::<i64>::zeroed(10).unwrap().into_window().unwrap();
    rt2.enter();
    let e = rt2.get(&add::remote(w, 1)).unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
    assert_eq!(&x[..], &[100i64; 10]);
}

#[remote]
fn seal_it(w: Window<i64>) -> rayfork::Result<usize> {
    Ok(w.seal()?.len())
}

#[test]
fn the_two_whole_windows_of_an_empty_array_both_seal() {
    let _w = watchdog("the_two_whole_windows_of_an_empty_array", LIMIT);
    let rt = runtime();
    let (a, b) = ArrayMut::<i64>::zeroed(0)
        .unwrap()
        .into_window()
        .unwrap()
        .split_at(0);
    assert!(a.is_whole() && b.is_whole());
    assert_eq!(a.seal().unwrap().len(), 0);
    assert_eq!(rt.get(&seal_it::remote(b)).unwrap(), 0);
    assert_eq!(rt.stats().unwrap().workers_died, 0);
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}
