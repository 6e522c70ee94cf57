//! Generator tasks (Ray's streaming returns): a `#[remote(streaming)]` function returns an
//! iterator; each item it yields becomes an object at once, and the caller gets an
//! [`ObjectRefGenerator`] that produces a ref per item as soon as it is yielded, before the
//! task ends.
//!
//! Owns the caller's iterator and the worker-side loop that yields items. The stream itself
//! (items, back-pressure, the end) is the scheduler's (scheduler rule 10).
//!
//! ```no_run
//! #[rayfork::remote(streaming)]
//! fn squares(n: u64) -> impl Iterator<Item = u64> {
//!     (0..n).map(|i| i * i)
//! }
//!
//! fn main() -> rayfork::Result<()> {
//!     let rt = rayfork::Runtime::builder().start()?;
//!     let mut seen = Vec::new();
//!     for r in squares::remote(5) {
//!         seen.push(rt.get(&r?)?); // each ref arrives as soon as the task yields it
//!     }
//!     assert_eq!(seen, vec![0, 1, 4, 9, 16]);
//!     Ok(())
//! }
//! ```

use std::marker::PhantomData;

use serde::Serialize;

use crate::Result;
use crate::client::{self, BackendRef};
use crate::object_ref::{self, ObjectRef};
use crate::protocol::Outcome;
use crate::registry::Invocation;
use crate::task::{ArgSpec, SubmitCx, TaskOptions, submit_call};

/// The refs of a generator task's items, in the order it yielded them.
///
/// Each `next()` waits for the next item (or the end) and gives `Ok(ref)`; if the task failed
/// (an error, a panic, a crash, once its retries are spent), the items yielded before the
/// failure come first, then one `Err`, then `None`. A retried generator starts over, and the
/// items the caller already has are skipped: each item comes once. Dropping the generator frees the items not
/// taken and ends the task at its next yield (it stops iterating; until then it runs on, or
/// can be cancelled through [`completion`](Self::completion)).
#[must_use = "dropping the generator frees the items not taken and stops the task at its next yield"]
pub struct ObjectRefGenerator<T> {
    done: ObjectRef<u64>,
    next: u64,
    finished: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ObjectRefGenerator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectRefGenerator({:032x}, next {})",
            self.done.raw_id(),
            self.next
        )
    }
}

impl<T> ObjectRefGenerator<T> {
    /// The ref of the task itself: resolves to the number of items once it ends. Pass it to
    /// `rayfork::cancel` to stop the generator.
    pub fn completion(&self) -> &ObjectRef<u64> {
        &self.done
    }
}

impl<T> Iterator for ObjectRefGenerator<T> {
    type Item = Result<ObjectRef<T>>;

    fn next(&mut self) -> Option<Result<ObjectRef<T>>> {
        if self.finished {
            return None;
        }
        let b: &BackendRef = match self.done.backend() {
            Ok(b) => b,
            Err(e) => {
                self.finished = true;
                return Some(Err(e));
            }
        };
        match b.next_item(self.done.raw_id(), self.next) {
            Ok(Some(id)) => {
                self.next += 1;
                Some(Ok(ObjectRef::adopt(id, b.clone())))
            }
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// Submits a generator call; the glue behind `f::remote` of a `streaming` function.
#[doc(hidden)]
pub fn submit_stream<T>(
    func: &'static str,
    options: &TaskOptions,
    args: impl FnOnce(&SubmitCx) -> Result<Vec<ArgSpec>>,
) -> ObjectRefGenerator<T> {
    ObjectRefGenerator {
        done: submit_call(func, &options.opts, None, args),
        next: 0,
        finished: false,
        _t: PhantomData,
    }
}

/// Runs a generator's iterator in its worker: each item is stored and yielded as it comes;
/// the task's own result is the number of items.
#[doc(hidden)]
pub fn finish_stream<T: Serialize>(
    inv: &Invocation<'_>,
    items: impl IntoIterator<Item = T>,
) -> Outcome {
    let b = match client::current() {
        Ok(b) => b,
        Err(e) => return Outcome::Err(e),
    };
    let mut count = 0u64;
    for item in items {
        let r = match object_ref::put_with(&b, &item) {
            Ok(r) => r,
            Err(e) => return Outcome::Err(e),
        };
        count += 1;
        match b.yield_item(inv.task, r.raw_id()) {
            Ok(true) => {}
            // The caller dropped the generator: nobody takes the items any more.
            Ok(false) => break,
            Err(e) => return Outcome::Err(e),
        }
    }
    crate::task::finish(inv, count)
}
