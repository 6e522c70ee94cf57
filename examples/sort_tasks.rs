//! The sorts of the quicksort demo, shared (by `#[path]`) by the example, the `sort` bench and
//! the nested-sort test, so each binary links its own remote functions.
//!
//! - `quick_sort_seq`: the seed algorithm of ray-nested-tasks-quicksort.md in one process.
//! - `quick_sort`: the same algorithm as nested rayfork tasks; partitions are written straight
//!   into new `ArrayMut`s (count first, then fill) and the join into one output `ArrayMut`.
//! - `sample_sort`: beyond the reference: one bucket per task, each task reads the input in
//!   place, copies its key range into its own array and sorts it; the driver concatenates.

#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayfork::{Array, ArrayMut, ObjectRef, Runtime, remote};

/// Below this many elements a task sorts locally (the reference's "magic number").
pub const THRESHOLD: usize = 200_000;

/// `n` random integers in [0, 1_000_000) from a seeded generator.
pub fn random_ints(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..1_000_000)).collect()
}

/// The seed algorithm, sequential: last element as pivot, lists for lesser and greater.
pub fn quick_sort_seq(mut v: Vec<i64>) -> Vec<i64> {
    if v.len() <= THRESHOLD {
        v.sort_unstable();
        return v;
    }
    let pivot = v.pop().expect("longer than the threshold");
    let (mut lesser, mut greater) = (Vec::new(), Vec::new());
    for x in v {
        if x > pivot {
            greater.push(x)
        } else {
            lesser.push(x)
        }
    }
    let mut out = quick_sort_seq(lesser);
    out.push(pivot);
    out.extend(quick_sort_seq(greater));
    out
}

/// Splits `data` around its last element into two new store arrays, written in place.
fn partition(data: &[i64]) -> rayfork::Result<(Array<i64>, i64, Array<i64>)> {
    let (&pivot, rest) = data.split_last().expect("non-empty");
    let n_lesser = rest.iter().filter(|&&x| x <= pivot).count();
    let mut lesser = ArrayMut::<i64>::with_len(n_lesser)?;
    let mut greater = ArrayMut::<i64>::with_len(rest.len() - n_lesser)?;
    let (mut i, mut j) = (0, 0);
    for &x in rest {
        if x <= pivot {
            lesser[i] = x;
            i += 1;
        } else {
            greater[j] = x;
            j += 1;
        }
    }
    Ok((lesser.seal()?, pivot, greater.seal()?))
}

/// The seed algorithm as nested tasks: both halves are submitted before either is fetched.
#[remote]
pub fn quick_sort(data: Array<i64>) -> rayfork::Result<Array<i64>> {
    if data.len() <= THRESHOLD {
        return Array::sorted_copy(&data);
    }
    let (lesser, pivot, greater) = partition(&data)?;
    drop(data);
    let l = quick_sort::remote(lesser);
    let g = quick_sort::remote(greater);
    let (l, g) = (rayfork::get(&l)?, rayfork::get(&g)?);
    Array::concat(&[&l, &[pivot], &g])
}

/// Copies the keys in `[lo, hi)` (`hi = None`: no upper bound) into a new array and sorts it.
#[remote]
pub fn sort_bucket(data: Array<i64>, lo: i64, hi: Option<i64>) -> rayfork::Result<Array<i64>> {
    let inside = |x: i64| x >= lo && hi.is_none_or(|h| x < h);
    let n = data.iter().filter(|&&x| inside(x)).count();
    let mut out = ArrayMut::<i64>::with_len(n)?;
    let mut k = 0;
    for &x in data.iter() {
        if inside(x) {
            out[k] = x;
            k += 1;
        }
    }
    out.sort_unstable();
    out.seal()
}

/// Sample sort over `buckets` tasks: splitters from a sample, one task per key range.
pub fn sample_sort(rt: &Runtime, data: &Array<i64>, buckets: usize) -> rayfork::Result<Array<i64>> {
    let buckets = buckets.max(1);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut sample: Vec<i64> = (0..(64 * buckets).min(data.len()))
        .map(|_| data[rng.random_range(0..data.len())])
        .collect();
    sample.sort_unstable();
    let splitters: Vec<i64> = (1..buckets)
        .map(|i| sample[i * sample.len() / buckets])
        .collect();
    let mut refs: Vec<ObjectRef<Array<i64>>> = Vec::with_capacity(buckets);
    let mut lo = i64::MIN;
    for i in 0..buckets {
        let hi = splitters.get(i).copied();
        refs.push(sort_bucket::remote(data.clone(), lo, hi));
        lo = hi.unwrap_or(i64::MAX);
    }
    let parts = rt.get_all(&refs)?;
    let slices: Vec<&[i64]> = parts.iter().map(|p| &p[..]).collect();
    Array::concat(&slices)
}
