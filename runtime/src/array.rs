//! Zero-copy arrays: `Array<T>`, a sealed store object seen as `&[T]` in any process, and
//! `ArrayMut<T>`, an unsealed one its creator fills in place.
//!
//! Owns the typed views of store objects. Its `unsafe` code is the raw typed view
//! (`raw_slice`), the read and write views of `Array` and `ArrayMut` over it (an `ArrayMut`'s
//! creator is its only writer, see its invariant), and the `Send`/`Sync` impls of the handles
//! that hold a pointer into the shared mapping; each carries its `SAFETY` argument.
//!
//! Passing an `Array` to a task sends its id, offset and length (rule 4 in protocol.rs): no
//! element is copied or serialized; the task maps the same bytes.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytemuck::Pod;
use rayfork_plasma::{Arena, Descriptor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::client::{self, BackendRef};
use crate::protocol::Id;
use crate::{Error, Result};

struct Inner {
    id: Id,
    desc: Descriptor,
    backend: BackendRef,
    /// The validated view of `desc` in this process's mapping (see `raw_slice`).
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr` points into the shared mapping owned (through `backend`) by this value; the
// bytes are a sealed object that nobody writes, so sharing the view across threads is sound.
unsafe impl Send for Inner {}
// SAFETY: as above: the view is read-only and immutable for the object's lifetime.
unsafe impl Sync for Inner {}

/// The elements of a view validated by `view`, without re-checking it.
///
/// # Safety
/// `ptr`/`len` must come from a `view::<T>` of a mapping that outlives the returned slice,
/// and no process may write those bytes while the slice lives.
unsafe fn raw_slice<'a, T: Pod>(ptr: *const u8, len: usize) -> &'a [T] {
    // SAFETY: the caller guarantees `ptr`/`len` were validated by `view::<T>` (alignment,
    // length) and stay mapped and unwritten for 'a.
    unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), len) }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.backend.ref_op(self.id, -1);
    }
}

/// A sealed, immutable array of plain-old-data elements in shared memory.
///
/// Derefs to `&[T]` in whatever process holds it; the bytes are read where they lie. Clones
/// share one reference. Return it from a task or pass it to one: only its id travels.
///
/// ```no_run
/// # let rt = rayfork::Runtime::builder().start()?;
/// let a: rayfork::Array<u32> = rt.put_array(&[3, 1, 2])?;
/// assert_eq!(&a[..], &[3, 1, 2]);
/// # Ok::<(), rayfork::Error>(())
/// ```
pub struct Array<T: Pod> {
    inner: Arc<Inner>,
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            inner: self.inner.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("id", &format_args!("{:032x}", self.inner.id))
            .field("len", &self.len())
            .finish()
    }
}

pub(crate) fn view<T: Pod>(b: &BackendRef, d: Descriptor) -> Result<&[T]> {
    let bytes = b.arena().bytes(d).map_err(|e| Error::View(e.to_string()))?;
    rayfork_plasma::cast_slice(bytes).map_err(|e| Error::View(e.to_string()))
}

impl<T: Pod> Array<T> {
    pub(crate) fn from_parts(id: Id, desc: Descriptor, backend: BackendRef) -> Result<Self> {
        // Validate once, so `deref` is a plain slice.
        let v = view::<T>(&backend, desc)?;
        let (ptr, len) = (v.as_ptr().cast::<u8>(), v.len());
        Ok(Array {
            inner: Arc::new(Inner {
                id,
                desc,
                backend,
                ptr,
                len,
            }),
            _t: PhantomData,
        })
    }

    /// The object's id in the store.
    pub fn id(&self) -> rayfork_plasma::ObjectId {
        rayfork_plasma::ObjectId::from_u128(self.inner.id)
    }

    /// Where the elements are in the arena (offset and byte length).
    pub fn descriptor(&self) -> Descriptor {
        self.inner.desc
    }

    /// The address of the first element in this process (for proving zero-copy).
    pub fn as_ptr(&self) -> *const T {
        self.deref().as_ptr()
    }

    /// Copies `src` into a new array (one copy into shared memory), in this thread's runtime.
    pub fn from_slice(src: &[T]) -> Result<Self> {
        ArrayMut::from_slice(src)?.seal()
    }

    /// Concatenates slices into a new array, written in place in the store.
    pub fn concat(parts: &[&[T]]) -> Result<Self> {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut out = ArrayMut::with_len(len)?;
        let mut at = 0;
        for p in parts {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        out.seal()
    }

    /// A sorted copy: one `ArrayMut`, sorted in place, sealed.
    pub fn sorted_copy(src: &[T]) -> Result<Self>
    where
        T: Ord,
    {
        let mut m = ArrayMut::from_slice(src)?;
        m.sort_unstable();
        m.seal()
    }
}

impl<T: Pod> Deref for Array<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `from_parts` validated ptr/len with `view::<T>`; the mapping lives as long
        // as the backend that `inner` holds; the object is sealed, so nobody writes it.
        unsafe { raw_slice(self.inner.ptr, self.inner.len) }
    }
}

impl<T: Pod> AsRef<[T]> for Array<T> {
    fn as_ref(&self) -> &[T] {
        self
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    id: Id,
    offset: u64,
    len: u64,
}

impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        client::mention(self.inner.id);
        Wire {
            id: self.inner.id,
            offset: self.inner.desc.offset,
            len: self.inner.desc.len,
        }
        .serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let b = client::decode_ctx()
            .ok_or_else(|| serde::de::Error::custom("an Array decoded outside a runtime"))?;
        let desc = Descriptor {
            offset: w.offset,
            len: w.len,
        };
        view::<T>(&b, desc).map_err(serde::de::Error::custom)?;
        b.ref_op(w.id, 1);
        Array::from_parts(w.id, desc, b).map_err(serde::de::Error::custom)
    }
}

/// An unsealed array in shared memory that its creator fills in place, then seals into an
/// [`Array`]. Dropping it unsealed frees its memory.
///
/// Invariant: the scheduler allocated this object for this process, no other process knows
/// its id until it is sealed, and `ArrayMut` is not `Clone`: it is the only writer.
///
/// ```no_run
/// # let rt = rayfork::Runtime::builder().start()?;
/// let squares = rayfork::ArrayMut::from_fn(1000, |i| (i * i) as u64)?.seal()?;
/// assert_eq!(squares[10], 100);
/// # Ok::<(), rayfork::Error>(())
/// ```
pub struct ArrayMut<T: Pod> {
    id: Id,
    desc: Descriptor,
    backend: BackendRef,
    live: bool,
    /// The validated writable view of `desc` (see the invariant above).
    ptr: *mut u8,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: an `ArrayMut` is the only handle to its unsealed bytes (the invariant above); moving
// it to another thread moves that exclusive access with it.
unsafe impl<T: Pod> Send for ArrayMut<T> {}
// SAFETY: shared access only reads (`Deref`); writing needs `&mut self`.
unsafe impl<T: Pod> Sync for ArrayMut<T> {}

impl<T: Pod> fmt::Debug for ArrayMut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayMut")
            .field("id", &format_args!("{:032x}", self.id))
            .field("len", &self.len())
            .finish()
    }
}

impl<T: Pod> ArrayMut<T> {
    /// An array of `len` elements in this thread's runtime. Its elements hold whatever the
    /// memory held (any bit pattern is a valid `T`); write them all before sealing.
    pub fn with_len(len: usize) -> Result<Self> {
        let b = client::current()?;
        let id = b.new_id();
        Self::with_len_in(&b, id, len)
    }

    pub(crate) fn with_len_in(b: &BackendRef, id: Id, len: usize) -> Result<Self> {
        let size = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::View(format!("{len} elements overflow")))?;
        let (offset, blen) = b.create(id, size as u64)?;
        let desc = Descriptor { offset, len: blen };
        let mut m = ArrayMut {
            id,
            desc,
            backend: b.clone(),
            live: true,
            ptr: std::ptr::null_mut(),
            len: 0,
            _t: PhantomData,
        };
        // Validate the view once (alignment, length), so `deref_mut` is a plain slice.
        let v = view::<T>(&m.backend, desc)?;
        m.len = v.len();
        m.ptr = v.as_ptr().cast::<u8>().cast_mut();
        Ok(m)
    }

    /// An array of `len` zeroed elements.
    pub fn zeroed(len: usize) -> Result<Self> {
        let mut m = Self::with_len(len)?;
        m.fill(T::zeroed());
        Ok(m)
    }

    /// An array whose element `i` is `f(i)`, written in place (no intermediate `Vec`).
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> T) -> Result<Self> {
        let mut m = Self::with_len(len)?;
        for (i, x) in m.iter_mut().enumerate() {
            *x = f(i);
        }
        Ok(m)
    }

    /// A copy of `src`.
    pub fn from_slice(src: &[T]) -> Result<Self> {
        let mut m = Self::with_len(src.len())?;
        m.copy_from_slice(src);
        Ok(m)
    }

    /// Seals the array: it becomes immutable and readable by every process.
    pub fn seal(mut self) -> Result<Array<T>> {
        self.backend.seal(self.id, Vec::new())?;
        self.live = false;
        Array::from_parts(self.id, self.desc, self.backend.clone())
    }

    /// Gives up the array without aborting it, with its reference: its id, place, runtime,
    /// and validated view (for `into_window`).
    pub(crate) fn into_shared_parts(
        mut self,
    ) -> Result<(Id, Descriptor, BackendRef, *mut u8, usize)> {
        self.live = false;
        Ok((self.id, self.desc, self.backend.clone(), self.ptr, self.len))
    }

    /// Seals, leaving the reference with the caller (for `put`).
    pub(crate) fn seal_with(mut self, contained: Vec<Id>) -> Result<()> {
        self.backend.seal(self.id, contained)?;
        self.live = false;
        Ok(())
    }
}

impl<T: Pod> Deref for ArrayMut<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: validated in `with_len_in`; the mapping lives as long as `backend`; by the
        // invariant of `ArrayMut` nobody else writes these bytes, and `&self` excludes `&mut`.
        unsafe { raw_slice(self.ptr, self.len) }
    }
}

impl<T: Pod> DerefMut for ArrayMut<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: validated in `with_len_in` (alignment, length, bounds); the mapping lives as
        // long as `backend`; by the invariant of `ArrayMut`, this process is the only one that
        // touches this unsealed range, and `&mut self` makes this the only live view in it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<T>(), self.len) }
    }
}

impl<T: Pod> Drop for ArrayMut<T> {
    fn drop(&mut self) {
        if self.live {
            self.backend.abort(self.id);
        }
    }
}
