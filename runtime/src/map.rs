//! Mapping a remote function over many items: [`map_chunks`] (one task per chunk of items, Flyte's
//! map task with chunking) and [`map_each`] (one task per item, a bounded number in flight,
//! results fetched in batches with `wait`, the advice of Ray's anti-pattern guide).
//!
//! Owns only the chunking and batching logic; both are plain loops over the public API
//! (`f::remote`, [`wait`], [`get_all`]), in the driver or inside a task.

use std::collections::HashSet;

use serde::de::DeserializeOwned;

use crate::object_ref::{ObjectRef, get_all, wait};
use crate::{Error, Result};

/// Submits one task per chunk of `chunk_size` items (the last chunk may be shorter) and returns
/// the chunks' refs in order; `chunk_size` 0 counts as 1.
///
/// `f` is usually the generated `remote` of a function that takes a `Vec` of items, so every
/// task does a meaningful amount of work (Ray's "too fine-grained tasks" anti-pattern; Flyte's
/// map task over chunks). Flatten the results with `get_all(..)?.into_iter().flatten()`.
///
/// ```no_run
/// use rayfork::remote;
///
/// #[remote]
/// fn double_all(chunk: Vec<u64>) -> Vec<u64> {
///     chunk.into_iter().map(|x| 2 * x).collect()
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let _rt = rayfork::Runtime::builder().start()?;
///     // 10 tasks of 1000 numbers each, instead of 10 000 tiny ones.
///     let refs = rayfork::map_chunks(double_all::remote, 0..10_000u64, 1_000);
///     let doubled: Vec<u64> = rayfork::get_all(&refs)?.into_iter().flatten().collect();
///     assert_eq!(doubled[4_321], 8_642);
///     Ok(())
/// }
/// ```
pub fn map_chunks<T, R>(
    mut f: impl FnMut(Vec<T>) -> ObjectRef<R>,
    items: impl IntoIterator<Item = T>,
    chunk_size: usize,
) -> Vec<ObjectRef<R>> {
    let chunk_size = chunk_size.max(1);
    let mut items = items.into_iter();
    let mut refs = Vec::new();
    loop {
        let chunk: Vec<T> = items.by_ref().take(chunk_size).collect();
        if chunk.is_empty() {
            return refs;
        }
        refs.push(f(chunk));
    }
}

/// Calls `f` (a per-item `remote`) on every item, with at most `2 * batch_size` tasks submitted
/// and not yet fetched, and fetches results `batch_size` at a time as they finish (with
/// [`wait`]); returns every result in the order of `items`. `batch_size` 0 counts as 1.
///
/// This is Ray's advice for "fetching too many objects at once": the object store never holds
/// more than about `2 * batch_size` unfetched results, however many items there are. The first
/// error (a task's, or a failed submission) is returned at once; no more tasks are submitted,
/// and those already submitted run to their end (their results are freed).
///
/// ```no_run
/// use rayfork::remote;
///
/// #[remote]
/// fn big_result(i: u64) -> Vec<u64> {
///     vec![i; 100_000]
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let _rt = rayfork::Runtime::builder().start()?;
///     let sums: Vec<u64> = rayfork::map_each(big_result::remote, 0..1_000u64, 50)?
///         .into_iter()
///         .map(|v| v.iter().sum())
///         .collect();
///     assert_eq!(sums[3], 300_000);
///     Ok(())
/// }
/// ```
pub fn map_each<T, R: DeserializeOwned>(
    mut f: impl FnMut(T) -> ObjectRef<R>,
    items: impl IntoIterator<Item = T>,
    batch_size: usize,
) -> Result<Vec<R>> {
    let batch_size = batch_size.max(1);
    let window = batch_size.saturating_mul(2);
    let mut items = items.into_iter().enumerate();
    let mut out: Vec<Option<R>> = Vec::new();
    let mut in_flight: Vec<(usize, ObjectRef<R>)> = Vec::new();
    loop {
        while in_flight.len() < window {
            let Some((i, item)) = items.next() else { break };
            let r = f(item);
            // A submission that failed on this side: its error, not a missing object's.
            r.backend()?;
            in_flight.push((i, r));
            out.push(None);
        }
        if in_flight.is_empty() {
            break;
        }
        let refs: Vec<ObjectRef<R>> = in_flight.iter().map(|(_, r)| r.clone()).collect();
        let (ready, _) = wait(&refs, batch_size.min(refs.len()), None)?;
        let ready: HashSet<_> = ready.iter().map(ObjectRef::raw_id).collect();
        let (done, rest): (Vec<_>, Vec<_>) = in_flight
            .into_iter()
            .partition(|(_, r)| ready.contains(&r.raw_id()));
        in_flight = rest;
        let done_refs: Vec<ObjectRef<R>> = done.iter().map(|(_, r)| r.clone()).collect();
        for ((i, _), v) in done.into_iter().zip(get_all(&done_refs)?) {
            out[i] = Some(v);
        }
    }
    out.into_iter()
        .collect::<Option<Vec<R>>>()
        .ok_or_else(|| Error::Protocol("map_each lost a result".into()))
}

/// The old name of [`map_chunks`].
#[deprecated(since = "0.2.0", note = "renamed `map_chunks` (one task per chunk)")]
pub fn map<T, R>(
    f: impl FnMut(Vec<T>) -> ObjectRef<R>,
    items: impl IntoIterator<Item = T>,
    chunk_size: usize,
) -> Vec<ObjectRef<R>> {
    map_chunks(f, items, chunk_size)
}

/// The old name of [`map_each`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `map_each` (one task per item, bounded in flight)"
)]
pub fn map_batched<T, R: DeserializeOwned>(
    f: impl FnMut(T) -> ObjectRef<R>,
    items: impl IntoIterator<Item = T>,
    batch_size: usize,
) -> Result<Vec<R>> {
    map_each(f, items, batch_size)
}
