//! Writable windows: disjoint ranges of one unsealed array, each writable in one place at a
//! time, handed from process to process without a copy.
//!
//! Owns `Window<T>` and the rules that keep windows disjoint (below); the scheduler's part is
//! scheduler rule 12 (who may read an object that holds a window, what a crash means). Its
//! `unsafe` code is the writable typed view of a window and the `Send`/`Sync` impls of the
//! handle; each carries its `SAFETY` argument. It must not touch store memory outside the
//! range of the window it views.
//!
//! # The rules that make a window exclusive
//!
//! 1. [`ArrayMut::into_window`] turns an unsealed array into one window over all of it; from
//!    then on the array is written only through windows.
//! 2. In a process, windows only split ([`Window::split_at`]) and join ([`Window::join`]):
//!    both consume what they are given, so the live windows of an array always cover disjoint
//!    ranges. A window is not `Clone`.
//! 3. A window leaves its process only by being moved: as a task's argument (given by value
//!    to `f::remote`) or in a task's result. Serializing it any other way (`put`, a yield,
//!    serde outside rayfork) is an error. Either way the sender no longer has it.
//! 4. The bytes that carry a window are decoded once: a task's arguments once per attempt,
//!    and an object whose value holds a window (a task's result) is given out once, to one
//!    `get` or one task (scheduler rule 12); a second taker gets [`Error::WindowTaken`].
//! 5. A task that holds a window and dies is not run again unless declared
//!    [`restartable`](crate::TaskOptions::restartable): what it wrote is unspecified, and
//!    its ref fails with [`Error::WindowLost`]. The windows it held are gone, so the array can
//!    no longer be sealed; its memory is freed when the last window (or handle) is dropped.
//! 6. [`Window::seal`] needs the whole array in one window: every part has come back.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;

use bytemuck::Pod;
use rayfork_plasma::Descriptor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::array::{Array, ArrayMut, view};
use crate::client::{self, BackendRef};
use crate::protocol::Id;
use crate::{Error, Result};

/// This process's hold on an array shared as windows: one reference for all its windows here.
struct Shared {
    id: Id,
    desc: Descriptor,
    backend: BackendRef,
    /// The first element in this process's mapping, validated by `view` for the window's `T`.
    base: *mut u8,
    /// The array's length in elements.
    len: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.backend.ref_op(self.id, -1);
    }
}

// SAFETY: `base` points into the shared mapping that `backend` keeps mapped; `Shared` itself
// never reads or writes through it (the windows do, each in its own range, rule 2).
unsafe impl Send for Shared {}
// SAFETY: as above: `Shared` only hands out the address.
unsafe impl Sync for Shared {}

/// Exclusive write access to a range of an unsealed array in shared memory.
///
/// Derefs to `&mut [T]` over its range in whatever process holds it. Split it into disjoint
/// parts for tasks, take the parts back, join them, and seal the whole into an [`Array`]: no
/// element is copied. The module docs list the rules that keep a window the only writer of its
/// range.
///
/// ```no_run
/// use rayfork::{ArrayMut, Window};
///
/// #[rayfork::remote]
/// fn double(mut w: Window<u64>) -> Window<u64> {
///     for x in w.iter_mut() {
///         *x *= 2;
///     }
///     w
/// }
///
/// fn main() -> rayfork::Result<()> {
///     let rt = rayfork::Runtime::builder().start()?;
///     let whole = ArrayMut::from_fn(1000, |i| i as u64)?.into_window()?;
///     let (left, right) = whole.split_at(500);
///     let (l, r) = (double::remote(left), double::remote(right));
///     let joined = rt.get(&l)?.join(rt.get(&r)?).map_err(|e| e.to_error())?;
///     let doubled = joined.seal()?;
///     assert_eq!(doubled[999], 1998);
///     Ok(())
/// }
/// ```
pub struct Window<T: Pod> {
    array: Arc<Shared>,
    start: usize,
    end: usize,
    _t: PhantomData<T>,
}

// SAFETY: a window is the only handle to its range (the module rules), so moving it to
// another thread moves that exclusive access with it.
unsafe impl<T: Pod> Send for Window<T> {}
// SAFETY: shared access only reads (`Deref`); writing needs `&mut self`.
unsafe impl<T: Pod> Sync for Window<T> {}

impl<T: Pod> fmt::Debug for Window<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("array", &format_args!("{:032x}", self.array.id))
            .field("range", &self.range())
            .finish()
    }
}

impl<T: Pod> ArrayMut<T> {
    /// Turns the array into one window over all of it (rule 1 of window.rs), to split among
    /// tasks and seal once every part is back.
    pub fn into_window(self) -> Result<Window<T>> {
        let (id, desc, backend, base, len) = self.into_shared_parts()?;
        backend.share(id)?;
        Ok(Window {
            array: Arc::new(Shared {
                id,
                desc,
                backend,
                base,
                len,
            }),
            start: 0,
            end: len,
            _t: PhantomData,
        })
    }
}

impl<T: Pod> Window<T> {
    /// Where the window lies in its array, in elements.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// True if the window covers its whole array (then it can be sealed).
    pub fn is_whole(&self) -> bool {
        self.start == 0 && self.end == self.array.len
    }

    /// The id of the array the window belongs to.
    pub fn array_id(&self) -> rayfork_plasma::ObjectId {
        rayfork_plasma::ObjectId::from_u128(self.array.id)
    }

    /// Splits the window into `[0, mid)` and `[mid, len)` of its range.
    ///
    /// # Panics
    /// If `mid > self.len()`, as [`slice::split_at`].
    pub fn split_at(self, mid: usize) -> (Window<T>, Window<T>) {
        assert!(
            mid <= self.len(),
            "Window::split_at: mid {mid} is past the window's length {}",
            self.len()
        );
        let at = self.start + mid;
        let right = Window {
            array: self.array.clone(),
            start: at,
            end: self.end,
            _t: PhantomData,
        };
        let left = Window { end: at, ..self };
        (left, right)
    }

    /// Joins this window with the one that follows it in the same array.
    ///
    /// Fails, handing both back, unless `next` starts where `self` ends in the same array.
    pub fn join(self, next: Window<T>) -> std::result::Result<Window<T>, JoinError<T>> {
        if self.array.id != next.array.id || self.end != next.start {
            return Err(JoinError {
                left: self,
                right: next,
            });
        }
        Ok(Window {
            end: next.end,
            ..self
        })
    }

    /// Seals the array: it becomes an immutable [`Array`] readable by every process. Needs
    /// the whole array in this window (rule 6 of window.rs); a part gives
    /// [`Error::InvalidArgument`] and is dropped.
    pub fn seal(self) -> Result<Array<T>> {
        if !self.is_whole() {
            return Err(Error::InvalidArgument(format!(
                "Window::seal needs the whole array (0..{}) in one window, this one is {:?}: \
                 join every part first",
                self.array.len,
                self.range()
            )));
        }
        let a = &self.array;
        // The new `Array`'s own reference; this window's goes when it drops.
        a.backend.ref_op(a.id, 1);
        a.backend.seal(a.id, Vec::new())?;
        Array::from_parts(a.id, a.desc, a.backend.clone())
    }
}

impl<T: Pod> Deref for Window<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let base = self.array.base.cast::<T>().cast_const();
        // SAFETY: `view::<T>` validated `base`/`len`, `start <= end <= len` where the window was
        // made, the mapping lives as long as `array.backend`, no other window covers this
        // range (rules 1-4 of window.rs), and `&self` excludes `&mut` here.
        unsafe { std::slice::from_raw_parts(base.add(self.start), self.end - self.start) }
    }
}

impl<T: Pod> DerefMut for Window<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let base = self.array.base.cast::<T>();
        // SAFETY: as in `deref`; the range is this window's alone (rules 1-4 of window.rs),
        // and `&mut self` makes this the only live view of it in this process.
        unsafe { std::slice::from_raw_parts_mut(base.add(self.start), self.end - self.start) }
    }
}

/// Two windows that [`Window::join`] could not join: not adjacent parts of one array. Both
/// come back.
#[derive(Debug, thiserror::Error)]
#[error("windows {left:?} and {right:?} are not adjacent parts of one array")]
pub struct JoinError<T: Pod> {
    /// The window `join` was called on.
    pub left: Window<T>,
    /// The window it was given.
    pub right: Window<T>,
}

impl<T: Pod> JoinError<T> {
    /// The error as an [`Error::InvalidArgument`], dropping both windows.
    pub fn to_error(&self) -> Error {
        Error::InvalidArgument(self.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    id: Id,
    offset: u64,
    len: u64,
    start: u64,
    end: u64,
    /// The element size in bytes: a window decodes only as the type it was made of.
    elem: u32,
}

impl<T: Pod> Serialize for Window<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // Rule 3 of window.rs.
        if !client::moving() {
            return Err(serde::ser::Error::custom(
                "a Window can only be moved into a task (an argument given by value) or returned \
                 from one; put, yields and other serializers cannot take it",
            ));
        }
        client::mention(self.array.id);
        Wire {
            id: self.array.id,
            offset: self.array.desc.offset,
            len: self.array.desc.len,
            start: self.start as u64,
            end: self.end as u64,
            elem: std::mem::size_of::<T>() as u32,
        }
        .serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Window<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        if w.elem as usize != std::mem::size_of::<T>() {
            return Err(D::Error::custom(format!(
                "a Window of {}-byte elements decoded as one of {}-byte elements",
                w.elem,
                std::mem::size_of::<T>()
            )));
        }
        let backend = client::decode_ctx()
            .ok_or_else(|| D::Error::custom("a Window decoded outside a runtime"))?;
        let desc = Descriptor {
            offset: w.offset,
            len: w.len,
        };
        let v = view::<T>(&backend, desc).map_err(D::Error::custom)?;
        let (base, len) = (v.as_ptr().cast::<u8>().cast_mut(), v.len());
        let (start, end) = (w.start as usize, w.end as usize);
        if start > end || end > len {
            return Err(D::Error::custom(format!(
                "a Window of {start}..{end} in an array of {len} elements"
            )));
        }
        backend.ref_op(w.id, 1);
        Ok(Window {
            array: Arc::new(Shared {
                id: w.id,
                desc,
                backend,
                base,
                len,
            }),
            start,
            end,
            _t: PhantomData,
        })
    }
}
