//! The sorts of the quicksort demo, shared (by `#[path]`) by the example, the `sort` bench and
//! the nested-sort test, so each binary links its own remote functions.
//!
//! - `quick_sort_seq`: the seed algorithm of ray-nested-tasks-quicksort.md in one process
//!   (with a median-of-3 pivot and the keys equal to it set aside, so that sorted input and
//!   repeated keys do not make it recurse once per element).
//! - `quick_sort`: the same algorithm as nested rayfork tasks; partitions are written straight
//!   into new `ArrayMut`s (count first, then fill) and the join into one output `ArrayMut`;
//!   each task frees its input once partitioned.
//! - `sample_sort`: beyond the reference: one bucket per task, each task reads the input in
//!   place, copies its key range into its own array and sorts it; the driver concatenates.
//! - `quick_sort_in_place`: the seed's recursion on windows of one array (window.rs):
//!   partition in place, two nested tasks on the two sides, nothing copied or concatenated;
//!   `quick_sort_in_place_seq` is the same recursion in one process.
//! - `radix_sort_tasks`: a parallel MSD radix sort over windows: tasks count the top digit of
//!   their chunk, scatter it into their parts of every bucket of a second array, then sort
//!   groups of buckets in place with `radix_sort` (an LSD radix sort that skips the digits
//!   every key shares).

#![allow(dead_code)]

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayfork::{Array, ArrayMut, ObjectRef, Runtime, Window, remote};

/// Below this many elements a task sorts locally (the reference's "magic number").
pub const THRESHOLD: usize = 200_000;

/// `n` random integers in [0, 1_000_000) from a seeded generator.
pub fn random_ints(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..1_000_000)).collect()
}

/// The key of `x` as an unsigned integer in the same order.
#[inline(always)]
fn key(x: i64) -> u64 {
    (x as u64) ^ (1 << 63)
}

/// The widest digit of the LSD radix sort, in bits.
const MAX_DIGIT: u32 = 11;

thread_local! {
    /// `radix_sort`'s buffer, kept between calls in a worker.
    static SCRATCH: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
}

/// Sorts `v` with an LSD radix sort over the bits where its keys differ: one pass finds them,
/// one counts every digit, then one scatter pass per digit (at most 11 bits each; keys in
/// [0, 10^6) take 2, full-range keys 6; a digit all keys share is skipped). Uses a buffer of
/// `v.len()` elements kept per thread.
pub fn radix_sort(v: &mut [i64]) {
    if v.len() <= 64 {
        v.sort_unstable();
        return;
    }
    let (or, and) = v
        .iter()
        .fold((0u64, !0u64), |(o, a), &x| (o | key(x), a & key(x)));
    let vary = or ^ and;
    if vary == 0 {
        return;
    }
    let low = vary.trailing_zeros();
    let span = 64 - vary.leading_zeros() - low;
    let passes = span.div_ceil(MAX_DIGIT) as usize;
    let width = span.div_ceil(passes as u32);
    let buckets = 1usize << width;
    let mask = (buckets - 1) as u64;
    let mut counts = vec![0usize; passes * buckets];
    for &x in v.iter() {
        let k = key(x) >> low;
        for p in 0..passes {
            counts[p * buckets + ((k >> (p as u32 * width)) & mask) as usize] += 1;
        }
    }
    SCRATCH.with(|s| {
        let mut scratch = s.borrow_mut();
        scratch.resize(v.len(), 0);
        let buf = &mut scratch[..v.len()];
        let mut in_v = true;
        let mut at = vec![0usize; buckets];
        for (p, c) in counts.chunks(buckets).enumerate() {
            if c.contains(&v.len()) {
                continue;
            }
            let mut sum = 0;
            for (a, &n) in at.iter_mut().zip(c) {
                *a = sum;
                sum += n;
            }
            let shift = low + p as u32 * width;
            let (src, dst): (&[i64], &mut [i64]) = if in_v {
                (&*v, &mut *buf)
            } else {
                (&*buf, &mut *v)
            };
            for &x in src {
                let b = ((key(x) >> shift) & mask) as usize;
                dst[at[b]] = x;
                at[b] += 1;
            }
            in_v = !in_v;
        }
        if !in_v {
            v.copy_from_slice(buf);
        }
    });
}

/// Moves the elements of `v` below `pivot` to its front (a branchless Lomuto pass) and
/// returns how many there are.
fn partition_below(v: &mut [i64], pivot: i64) -> usize {
    let mut lt = 0;
    for i in 0..v.len() {
        let below = v[i] < pivot;
        v.swap(i, lt);
        lt += usize::from(below);
    }
    lt
}

/// Partitions `v` in place into `[< p | == p | > p-or-equal]` around a median-of-5 pivot and
/// returns the two ends of the middle run, which is in its final place: `v[..lo]` and
/// `v[hi..]` remain, each shorter than `v`.
fn partition3(v: &mut [i64]) -> (usize, usize) {
    let n = v.len();
    let mut s = [v[0], v[n / 4], v[n / 2], v[3 * n / 4], v[n - 1]];
    s.sort_unstable();
    let pivot = s[2];
    let lo = partition_below(v, pivot);
    // Nothing below the pivot: it is the minimum; take the run equal to it off the front.
    // Otherwise both sides are non-empty (the pivot is not below itself).
    let hi = match (lo, pivot.checked_add(1)) {
        (0, Some(above)) => partition_below(v, above),
        // Nothing is above i64::MAX: all of it equals the pivot.
        (0, None) => n,
        _ => lo,
    };
    (lo, hi)
}

/// The in-place recursion in one process: partition, recurse on both sides, radix leaves.
pub fn quick_sort_in_place_seq(v: &mut [i64], leaf: usize) {
    if v.len() <= leaf.max(64) {
        radix_sort(v);
        return;
    }
    let (lo, hi) = partition3(v);
    let (left, rest) = v.split_at_mut(lo);
    quick_sort_in_place_seq(left, leaf);
    quick_sort_in_place_seq(&mut rest[hi - lo..], leaf);
}

/// The seed's recursion on a window of one array: partition in place, sort both sides in
/// nested tasks, join the windows back. No element is copied.
#[remote]
pub fn quick_sort_in_place(mut w: Window<i64>, leaf: usize) -> rayfork::Result<Window<i64>> {
    if w.len() <= leaf.max(64) {
        radix_sort(&mut w);
        return Ok(w);
    }
    let (lo, hi) = partition3(&mut w);
    let (left, rest) = w.split_at(lo);
    let (mid, right) = rest.split_at(hi - lo);
    let l = quick_sort_in_place::remote(left, leaf);
    let r = quick_sort_in_place::remote(right, leaf);
    let (l, r) = (rayfork::get(&l)?, rayfork::get(&r)?);
    let joined = l.join(mid).and_then(|w| w.join(r));
    joined.map_err(|e| e.to_error())
}

/// The leaf size of the in-place sorts for `n` elements on `cpus` CPUs: small enough for a
/// few leaves per CPU, large enough that partitions do not dominate.
pub fn in_place_leaf(n: usize, cpus: usize) -> usize {
    (n / (cpus.max(1) * 8)).clamp(1 << 16, 1 << 20)
}

/// The digit `radix_sort_tasks` splits on: keys in `[lo, hi]` map to `buckets()` buckets.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TopDigit {
    lo: u64,
    shift: u32,
    bits: u32,
}

impl TopDigit {
    /// The digit for the keys of `data` in the range of a sample (keys outside it clamp to the
    /// first or last bucket: the order stays right, only the balance suffers), with enough
    /// buckets (256 to 4096) for each to hold about 256K keys, a size the bucket sort keeps in
    /// cache.
    fn of_sample(data: &[i64]) -> TopDigit {
        let mut rng = SmallRng::seed_from_u64(3);
        let (mut lo, mut hi) = (u64::MAX, 0);
        for _ in 0..4096.min(data.len()) {
            let k = key(data[rng.random_range(0..data.len())]);
            lo = lo.min(k);
            hi = hi.max(k);
        }
        let span = hi.saturating_sub(lo);
        let span_bits = 64 - span.leading_zeros();
        let bits = (data.len() >> 18).max(1).ilog2().clamp(8, 12);
        TopDigit {
            lo,
            shift: span_bits.saturating_sub(bits),
            bits,
        }
    }

    fn buckets(&self) -> usize {
        1 << self.bits
    }

    #[inline(always)]
    fn bucket(&self, x: i64) -> usize {
        let b = key(x).saturating_sub(self.lo) >> self.shift;
        (b as usize).min(self.buckets() - 1)
    }
}

/// Counts how many keys of the chunk fall in each bucket of `digit`.
#[remote]
pub fn radix_count(chunk: Window<i64>, digit: TopDigit) -> (Window<i64>, Vec<u64>) {
    let mut counts = vec![0u64; digit.buckets()];
    for &x in chunk.iter() {
        counts[digit.bucket(x)] += 1;
    }
    (chunk, counts)
}

/// Scatters the chunk into `parts`, its part of every bucket of the output (part `b` has room
/// for exactly its keys of bucket `b`), and hands both back.
#[remote]
pub fn radix_scatter(
    chunk: Window<i64>,
    mut parts: Vec<Window<i64>>,
    digit: TopDigit,
) -> (Window<i64>, Vec<Window<i64>>) {
    let mut at = vec![0usize; parts.len()];
    for &x in chunk.iter() {
        let b = digit.bucket(x);
        parts[b][at[b]] = x;
        at[b] += 1;
    }
    (chunk, parts)
}

/// Sorts each bucket of a group in place (`sizes` are the buckets' lengths, in order).
#[remote]
pub fn radix_sort_buckets(mut group: Window<i64>, sizes: Vec<usize>) -> Window<i64> {
    let mut at = 0;
    for n in sizes {
        radix_sort(&mut group[at..at + n]);
        at += n;
    }
    group
}

/// Splits `w` into consecutive windows of the given lengths (which sum to its length).
fn split_lengths(mut w: Window<i64>, lengths: impl IntoIterator<Item = usize>) -> Vec<Window<i64>> {
    let mut out = Vec::new();
    for n in lengths {
        let (head, tail) = w.split_at(n);
        out.push(head);
        w = tail;
    }
    out
}

/// Joins consecutive windows into one.
fn join_all(parts: impl IntoIterator<Item = Window<i64>>) -> rayfork::Result<Window<i64>> {
    let mut it = parts.into_iter();
    let mut whole = it
        .next()
        .ok_or_else(|| rayfork::Error::InvalidArgument("nothing to join".into()))?;
    for p in it {
        whole = whole.join(p).map_err(|e| e.to_error())?;
    }
    Ok(whole)
}

/// Sorts `data` with `tasks` tasks per phase: count the top digit of each chunk, scatter the
/// chunks into a second array at their buckets' places, sort groups of buckets in place. The
/// input array is freed once scattered; the sorted result is the second array.
pub fn radix_sort_tasks(data: ArrayMut<i64>, tasks: usize) -> rayfork::Result<Array<i64>> {
    let n = data.len();
    let tasks = tasks.clamp(1, n.max(1));
    let digit = TopDigit::of_sample(&data);
    let chunk = n.div_ceil(tasks);
    let chunks = split_lengths(
        data.into_window()?,
        (0..tasks).map(|i| chunk.min(n - (i * chunk).min(n))),
    );
    // 1. Counts per chunk and bucket.
    let refs: Vec<_> = chunks
        .into_iter()
        .map(|c| radix_count::remote(c, digit))
        .collect();
    let counted = rayfork::get_all(&refs)?;
    drop(refs);
    // 2. Every chunk's part of every bucket, in bucket-major order, then the scatter.
    let out = ArrayMut::<i64>::with_len(n)?.into_window()?;
    let buckets = digit.buckets();
    let lengths = (0..buckets).flat_map(|b| counted.iter().map(move |(_, c)| c[b] as usize));
    let mut parts = split_lengths(out, lengths).into_iter();
    let mut per_task: Vec<Vec<Window<i64>>> = (0..counted.len()).map(|_| Vec::new()).collect();
    for _ in 0..buckets {
        for mine in per_task.iter_mut() {
            mine.push(parts.next().expect("one part per chunk and bucket"));
        }
    }
    let refs: Vec<_> = counted
        .into_iter()
        .zip(per_task)
        .map(|((c, _), mine)| radix_scatter::remote(c, mine, digit))
        .collect();
    let scattered = rayfork::get_all(&refs)?;
    drop(refs);
    let mut by_task: Vec<std::vec::IntoIter<Window<i64>>> = Vec::new();
    for (chunk, mine) in scattered {
        drop(chunk);
        by_task.push(mine.into_iter());
    }
    let mut scattered_buckets = Vec::with_capacity(buckets);
    for _ in 0..buckets {
        scattered_buckets.push(join_all(
            by_task
                .iter_mut()
                .map(|t| t.next().expect("one part per bucket")),
        )?);
    }
    // 3. Groups of consecutive buckets of about n / tasks keys each, sorted in place.
    let target = n.div_ceil(tasks * 4).max(1);
    let mut groups: Vec<(Vec<Window<i64>>, Vec<usize>)> = vec![(Vec::new(), Vec::new())];
    let mut in_group = 0;
    for b in scattered_buckets {
        if in_group >= target {
            groups.push((Vec::new(), Vec::new()));
            in_group = 0;
        }
        in_group += b.len();
        let g = groups.last_mut().expect("one group at least");
        g.1.push(b.len());
        g.0.push(b);
    }
    let mut refs = Vec::with_capacity(groups.len());
    for (ws, sizes) in groups {
        refs.push(radix_sort_buckets::remote(join_all(ws)?, sizes));
    }
    join_all(rayfork::get_all(&refs)?)?.seal()
}

/// The pivot of the seed algorithm: the median of the first, middle and last elements (the
/// reference takes the last one, which recurses `n` deep on sorted input).
fn seed_pivot(v: &[i64]) -> i64 {
    let mut m = [v[0], v[v.len() / 2], v[v.len() - 1]];
    m.sort_unstable();
    m[1]
}

/// The seed algorithm, sequential: lists for the lesser and the greater elements, the ones
/// equal to the pivot in between (so equal keys end the recursion), recursion on both lists.
pub fn quick_sort_seq(v: Vec<i64>) -> Vec<i64> {
    if v.len() <= THRESHOLD {
        let mut v = v;
        v.sort_unstable();
        return v;
    }
    let pivot = seed_pivot(&v);
    let (mut lesser, mut greater) = (Vec::new(), Vec::new());
    let mut equal = 0;
    for x in v {
        if x > pivot {
            greater.push(x)
        } else if x < pivot {
            lesser.push(x)
        } else {
            equal += 1;
        }
    }
    let mut out = quick_sort_seq(lesser);
    out.resize(out.len() + equal, pivot);
    out.extend(quick_sort_seq(greater));
    out
}

/// Splits `data` around its pivot into two new store arrays, written in place, and the
/// number of elements equal to the pivot.
fn partition(data: &[i64]) -> rayfork::Result<(Array<i64>, i64, usize, Array<i64>)> {
    let pivot = seed_pivot(data);
    let n_lesser = data.iter().filter(|&&x| x < pivot).count();
    let n_greater = data.iter().filter(|&&x| x > pivot).count();
    let mut lesser = ArrayMut::<i64>::with_len(n_lesser)?;
    let mut greater = ArrayMut::<i64>::with_len(n_greater)?;
    let (mut i, mut j) = (0, 0);
    for &x in data {
        if x < pivot {
            lesser[i] = x;
            i += 1;
        } else if x > pivot {
            greater[j] = x;
            j += 1;
        }
    }
    let equal = data.len() - n_lesser - n_greater;
    Ok((lesser.seal()?, pivot, equal, greater.seal()?))
}

/// The seed algorithm as nested tasks: both halves are submitted before either is fetched.
///
/// Its input is freed as soon as it is partitioned: the task runs with no retry
/// (`max_retries(0)`), so the runtime hands the argument's reference to the task (scheduler
/// rule 13) and dropping `data` frees it. The live footprint stays a small multiple of the
/// input instead of growing with the depth.
#[remote]
pub fn quick_sort(data: Array<i64>) -> rayfork::Result<Array<i64>> {
    if data.len() <= THRESHOLD {
        return Array::sorted_copy(&data);
    }
    let (lesser, pivot, equal, greater) = partition(&data)?;
    drop(data);
    let l = quick_sort::options().max_retries(0).remote(lesser);
    let g = quick_sort::options().max_retries(0).remote(greater);
    let (l, g) = (rayfork::get(&l)?, rayfork::get(&g)?);
    Array::concat(&[&l, &vec![pivot; equal], &g])
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
