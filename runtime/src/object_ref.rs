//! `ObjectRef<T>`: a reference-counted handle to an object that a task will produce, or that
//! `put` stored, plus the free functions that read it (`get`, `get_all`, `wait`, `put`).
//!
//! Owns the handle's reference counting (rule 4 in protocol.rs) and its (de)serialization.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::client::{self, BackendRef};
use crate::protocol::{Id, Resolved};
use crate::{Error, Result, codec};

struct Handle {
    id: Id,
    backend: std::result::Result<BackendRef, Error>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Ok(b) = &self.backend {
            b.ref_op(self.id, -1);
        }
    }
}

/// A future value of type `T`: the result of a task, or a value stored with [`put`].
///
/// Cloning is cheap. The object lives while any `ObjectRef` to it (in any process) or any task
/// that takes it as an argument is alive; then its memory is freed. Pass it to another task
/// as an argument without fetching it: the task receives the value.
///
/// ```no_run
/// #[rayfork::remote]
/// fn double(x: i64) -> i64 { 2 * x }
///
/// fn main() -> rayfork::Result<()> {
///     let rt = rayfork::Runtime::builder().start()?;
///     let a = double::remote(21);
///     let b = double::remote(&a); // depends on a; the driver never fetches a
///     assert_eq!(rt.get(&b)?, 84);
///     Ok(())
/// }
/// ```
#[must_use = "the task runs anyway; without its ref nobody can read its result, which is freed when it ends (use rayfork::cancel to stop a task)"]
pub struct ObjectRef<T> {
    handle: Arc<Handle>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef {
            handle: self.handle.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({:032x})", self.handle.id)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.handle.id == other.handle.id
    }
}

impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.handle.id.hash(state)
    }
}

impl<T> ObjectRef<T> {
    /// A handle that owns the reference its object was created with.
    pub(crate) fn adopt(id: Id, backend: BackendRef) -> Self {
        ObjectRef {
            handle: Arc::new(Handle {
                id,
                backend: Ok(backend),
            }),
            _t: PhantomData,
        }
    }

    /// A handle whose every `get` returns `err` (a submission that failed on this side).
    pub(crate) fn failed(err: Error) -> Self {
        ObjectRef {
            handle: Arc::new(Handle {
                id: 0,
                backend: Err(err),
            }),
            _t: PhantomData,
        }
    }

    /// The object's id in the store.
    pub fn id(&self) -> rayfork_plasma::ObjectId {
        rayfork_plasma::ObjectId::from_u128(self.handle.id)
    }

    pub(crate) fn raw_id(&self) -> Id {
        self.handle.id
    }

    /// True if the object is ready (its task finished or failed), without waiting.
    ///
    /// ```
    /// #[rayfork::remote]
    /// fn one() -> u64 { 1 }
    ///
    /// fn main() -> rayfork::Result<()> {
    ///     let rt = rayfork::Runtime::builder().num_cpus(1).start()?;
    ///     let r = one::remote();
    ///     rt.get(&r)?;
    ///     assert!(r.is_ready()?);
    ///     Ok(())
    /// }
    /// ```
    pub fn is_ready(&self) -> Result<bool> {
        let flags = self.backend()?.wait(&[self.raw_id()], 1, Some(0))?;
        Ok(flags.first().copied().unwrap_or(false))
    }

    pub(crate) fn backend(&self) -> Result<&BackendRef> {
        self.handle.backend.as_ref().map_err(Clone::clone)
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if let Err(e) = &self.handle.backend {
            return Err(serde::ser::Error::custom(e));
        }
        client::mention(self.handle.id);
        s.serialize_u128(self.handle.id)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = u128::deserialize(d)?;
        let b = client::decode_ctx()
            .ok_or_else(|| serde::de::Error::custom("an ObjectRef decoded outside a runtime"))?;
        b.ref_op(id, 1);
        Ok(ObjectRef::adopt(id, b))
    }
}

fn millis(t: Option<Duration>) -> Option<u64> {
    t.map(|d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// Decodes one resolved value in the context of `b`.
pub(crate) fn decode_resolved<T: DeserializeOwned>(b: &BackendRef, r: &Resolved) -> Result<T> {
    let bytes = client::resolved_bytes(b.arena(), r)?;
    client::with_decode_ctx(b, || codec::decode_value(bytes))
}

/// Waits for the object and returns its value (or the task's error).
///
/// Works in the driver and inside tasks; inside a task, the worker's CPU goes back to the
/// scheduler while it waits.
pub fn get<T: DeserializeOwned>(r: &ObjectRef<T>) -> Result<T> {
    get_timeout_opt(r, None)
}

/// Like [`get`], but gives up with [`Error::Timeout`] after `timeout` (the task goes on).
pub fn get_timeout<T: DeserializeOwned>(r: &ObjectRef<T>, timeout: Duration) -> Result<T> {
    get_timeout_opt(r, Some(timeout))
}

fn get_timeout_opt<T: DeserializeOwned>(r: &ObjectRef<T>, t: Option<Duration>) -> Result<T> {
    let b = r.backend()?;
    let mut vals = b.get(&[r.raw_id()], millis(t))?;
    let v = vals
        .pop()
        .ok_or_else(|| Error::Protocol("empty get reply".into()))?;
    decode_resolved(b, &v)
}

/// Waits for every object and returns their values in order; returns as soon as one of them
/// fails, with its error (the first one in `refs`' order, if several failed by then).
pub fn get_all<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    get_all_opt(refs, None)
}

/// Like [`get_all`], but gives up with [`Error::Timeout`] once `timeout` passes (the tasks go
/// on).
///
/// ```
/// #[rayfork::remote]
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
///     ms
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let _rt = rayfork::Runtime::builder().num_cpus(2).start()?;
///     let refs = vec![nap::remote(1), nap::remote(60_000)];
///     let e = rayfork::get_all_timeout(&refs, std::time::Duration::from_millis(50));
///     assert!(matches!(e, Err(rayfork::Error::Timeout { .. })));
///     rayfork::cancel(&refs[1])?;
///     Ok(())
/// }
/// ```
pub fn get_all_timeout<T: DeserializeOwned>(
    refs: &[ObjectRef<T>],
    timeout: Duration,
) -> Result<Vec<T>> {
    get_all_opt(refs, Some(timeout))
}

fn get_all_opt<T: DeserializeOwned>(
    refs: &[ObjectRef<T>],
    timeout: Option<Duration>,
) -> Result<Vec<T>> {
    let Some(first) = refs.first() else {
        return Ok(Vec::new());
    };
    let b = first.backend()?;
    let ids: Vec<Id> = refs.iter().map(ObjectRef::raw_id).collect();
    let vals = b.get(&ids, millis(timeout))?;
    if vals.len() != ids.len() {
        return Err(Error::Protocol("get reply of the wrong length".into()));
    }
    if let Some(Resolved::Error(e)) = vals.iter().find(|v| matches!(v, Resolved::Error(_))) {
        return Err(e.clone());
    }
    vals.iter().map(|v| decode_resolved(b, v)).collect()
}

/// The `(ready, pending)` split that [`wait`] returns.
pub type ReadyPending<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are ready (finished or failed), or `timeout` passes.
/// Returns `(ready, pending)`, each in the order of `refs`; `ready` holds at most
/// `num_returns` refs (as Ray's `wait`), so a loop over `pending` sees every result once.
/// A ref given twice is `Error::InvalidArgument` (it could not be both ready and pending).
///
/// ```no_run
/// #[rayfork::remote]
/// fn work(i: u64) -> u64 { i }
///
/// fn main() -> rayfork::Result<()> {
///     let _rt = rayfork::Runtime::builder().start()?;
///     let mut pending: Vec<_> = (0..8).map(work::remote).collect();
///     while !pending.is_empty() {
///         let (ready, rest) = rayfork::wait(&pending, 1, None)?;
///         println!("{}", rayfork::get(&ready[0])?);
///         pending = rest;
///     }
///     Ok(())
/// }
/// ```
pub fn wait<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<ReadyPending<T>> {
    let Some(first) = refs.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let b = first.backend()?;
    let ids: Vec<Id> = refs.iter().map(ObjectRef::raw_id).collect();
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    if let Some(twice) = ids.iter().find(|&&id| !seen.insert(id)) {
        return Err(Error::InvalidArgument(format!(
            "wait was given the ref {twice:x} twice: give each ref once (as Ray's wait)"
        )));
    }
    let flags = b.wait(&ids, num_returns, millis(timeout))?;
    // As Ray: at most `num_returns` refs come back ready; the rest stay pending.
    let mut ready = Vec::new();
    let mut pending = Vec::new();
    for (r, ok) in refs.iter().zip(flags) {
        if ok && ready.len() < num_returns {
            ready.push(r.clone())
        } else {
            pending.push(r.clone())
        }
    }
    Ok((ready, pending))
}

/// Stores a value in the object store and returns a ref to it, in the runtime of this thread
/// (the worker's own inside a task).
pub fn put<T: Serialize>(value: &T) -> Result<ObjectRef<T>> {
    put_with(&client::current()?, value)
}

pub(crate) fn put_with<T: Serialize>(b: &BackendRef, value: &T) -> Result<ObjectRef<T>> {
    let (bytes, contained) = client::encode_with_refs(b, value)?;
    let id = b.new_id();
    if bytes.len() <= b.inline_max() {
        b.put_inline(id, bytes, contained)?;
    } else {
        store_bytes(b, id, &bytes, contained)?;
    }
    Ok(ObjectRef::adopt(id, b.clone()))
}

/// Writes an encoded value into a new sealed store object `id`; its one reference stays with
/// the caller (the new handle, or the task that takes it as an argument).
/// On failure the references `contained` held are given back.
pub(crate) fn store_bytes(b: &BackendRef, id: Id, bytes: &[u8], contained: Vec<Id>) -> Result<()> {
    let mut m = match crate::array::ArrayMut::<u8>::with_len_in(b, id, bytes.len()) {
        Ok(m) => m,
        Err(e) => {
            for c in contained {
                b.ref_op(c, -1);
            }
            return Err(e);
        }
    };
    m.copy_from_slice(bytes);
    m.seal_with(contained)
}

/// Yields the values of `refs` in the order their tasks finish, each with its index in `refs`;
/// a failed one yields its error. The scheduler follows the refs once and hands out each
/// result as it comes (no re-sending of the pending ones), so each result costs O(1). Dropping
/// the iterator stops following; the tasks go on.
///
/// ```
/// #[rayfork::remote]
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
///     ms
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let _rt = rayfork::Runtime::builder().num_cpus(2).start()?;
///     let refs = vec![nap::remote(300), nap::remote(1)];
///     for (i, v) in rayfork::as_completed(&refs) {
///         println!("task {i} finished: {} ms", v?); // most likely task 1 first
///     }
///     Ok(())
/// }
/// ```
pub fn as_completed<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> AsCompleted<'_, T> {
    AsCompleted {
        refs,
        watch: None,
        ready: std::collections::VecDeque::new(),
        left: refs.len(),
        yielded: vec![false; refs.len()],
        failed: None,
    }
}

/// The iterator of [`as_completed`].
#[must_use = "an iterator does nothing unless iterated"]
pub struct AsCompleted<'a, T> {
    refs: &'a [ObjectRef<T>],
    /// The watch id and its runtime, once started.
    watch: Option<(Id, BackendRef)>,
    /// Indices ready and not yet yielded.
    ready: std::collections::VecDeque<u32>,
    /// Results not yet yielded.
    left: usize,
    /// Which indices were yielded.
    yielded: Vec<bool>,
    /// A failure of the watch itself, yielded with every index not yielded yet.
    failed: Option<Error>,
}

impl<T> fmt::Debug for AsCompleted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("refs", &self.refs.len())
            .field("left", &self.left)
            .finish()
    }
}

impl<T: DeserializeOwned> AsCompleted<'_, T> {
    /// Starts the watch, or says why it cannot be.
    fn start(&mut self) -> Result<(Id, BackendRef)> {
        if let Some(w) = &self.watch {
            return Ok(w.clone());
        }
        let b = self.refs[0].backend()?.clone();
        let watch = b.new_id();
        b.watch(watch, self.refs.iter().map(ObjectRef::raw_id).collect())?;
        self.watch = Some((watch, b.clone()));
        Ok((watch, b))
    }

    fn next_index(&mut self) -> Result<u32> {
        let (watch, b) = self.start()?;
        while self.ready.is_empty() {
            let got = b.next_ready(watch, None)?;
            if got.is_empty() {
                return Err(Error::Protocol("a watch ended with results left".into()));
            }
            self.ready.extend(got);
        }
        Ok(self.ready.pop_front().expect("not empty"))
    }
}

impl<T: DeserializeOwned> Iterator for AsCompleted<'_, T> {
    type Item = (usize, Result<T>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let index = match &self.failed {
            Some(_) => Err(()),
            None => self.next_index().map_err(|e| self.failed = Some(e)),
        };
        let i = match index {
            Ok(i) if !self.yielded.get(i as usize).copied().unwrap_or(true) => i as usize,
            Ok(i) => {
                let e = Error::Protocol(format!("a watch handed out index {i} twice"));
                self.failed = Some(e);
                self.yielded.iter().position(|&y| !y)?
            }
            Err(()) => self.yielded.iter().position(|&y| !y)?,
        };
        self.yielded[i] = true;
        match &self.failed {
            Some(e) => Some((i, Err(e.clone()))),
            None => Some((i, get(&self.refs[i]))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T> Drop for AsCompleted<'_, T> {
    fn drop(&mut self) {
        if let Some((watch, b)) = self.watch.take() {
            b.unwatch(watch);
        }
    }
}
