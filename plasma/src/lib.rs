//! rayfork-plasma: the shared-memory, zero-copy object store that every rayfork process shares.
//!
//! One [arena](Arena) of shared memory holds every object; an offset [allocator](OffsetAllocator)
//! and an object table ([`Store`]) in the owning process's ordinary memory decide where objects
//! go. Readers in any process that maps the arena turn a [`Descriptor`] (offset, length) into a
//! slice of the mapping: no copy, no serialization. The crate knows nothing of tasks or IPC; the
//! `rayfork` runtime drives it.
//!
//! # Hello, store
//!
//! ```
//! use std::sync::Arc;
//! use rayfork_plasma::{cast_slice, Arena, ClientId, HeapArena, ObjectId, Store};
//!
//! // A 1 MiB store. `ShmArena::create` gives the shared-memory one; `HeapArena` is the same
//! // thing in private memory, for tests.
//! let mut store = Store::new(Arc::new(HeapArena::new(1 << 20)));
//! let (writer, reader) = (ClientId(1), ClientId(2));
//! let id = ObjectId::from_u128(42);
//!
//! // 1. create: reserve space; the object is unsealed and belongs to its creator.
//! store.create(id, 8 * 4, writer)?;
//! // 2. the creator writes the bytes in place...
//! let bytes = store.write(id, writer)?;
//! bytes.copy_from_slice(bytemuck::cast_slice(&[1.0f64, 2.0, 3.0, 4.0][..]));
//! // 3. ...and seals: immutable from now on.
//! store.seal(id)?;
//!
//! // 4. get: pin the object for a reader and view it zero-copy, typed.
//! let d = store.get(id, reader)?;
//! let xs: &[f64] = cast_slice(store.arena().bytes(d)?)?;
//! assert_eq!(xs.iter().sum::<f64>(), 10.0);
//!
//! // 5. release the pin, 6. delete: the memory is freed (it would wait for the last pin).
//! store.release(id, reader)?;
//! store.delete(id)?;
//! assert_eq!(store.stats().used, 0);
//! assert_eq!(store.stats().live_objects, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Lifecycle
//!
//! `create` -> creator writes -> `seal` -> `get` (pin) -> `release` -> `delete` -> freed when no
//! pin remains. `abort` drops an unsealed object; `client_gone` drops a dead process's pins and
//! aborts what it was creating. The full list of rules (numbered, cited from the code) is on
//! [`Store`]; each wrong-state call returns a [`StoreError`], never panics:
//!
//! ```
//! # use std::sync::Arc;
//! # use rayfork_plasma::*;
//! let mut store = Store::new(Arc::new(HeapArena::new(1 << 16)));
//! let id = ObjectId::from_u128(7);
//! store.create(id, 100, ClientId(1)).unwrap();
//! assert_eq!(store.get(id, ClientId(2)), Err(StoreError::NotSealed(id)));
//! store.seal(id).unwrap();
//! assert_eq!(store.seal(id), Err(StoreError::AlreadySealed(id)));
//! assert_eq!(
//!     store.release(id, ClientId(2)),
//!     Err(StoreError::NotPinned { id, client: ClientId(2) })
//! );
//! ```
//!
//! # Sharing between processes
//!
//! A [`ShmArena`] is a memfd mapped `MAP_SHARED`. Either fork after creating it (children
//! inherit the mapping and can use their copy of the arena as is), or pass its fd (over `exec`
//! with `FD_CLOEXEC` cleared, or `SCM_RIGHTS`) and call [`ShmArena::from_fd`]. Descriptors are
//! offsets, valid in every process. Details on [`ShmArena`].
//!
//! # When the store is full
//!
//! A `create` that does not fit first evicts sealed, unpinned objects marked with
//! [`Store::mark_evictable`] (least recently used first, each passed to an [`EvictionHook`]: the
//! seam for spilling to disk), then fails with [`StoreError::StoreFull`].
//!
//! # Modules
//!
//! - `arena`: the mapping, its header, shared-memory and heap backings.
//! - `alloc`: the offset allocator (64-byte aligned, page aligned from 4 KiB, best fit,
//!   warm-first, coalescing).
//! - `store`: the object table, lifecycle rules and accounting.
//! - `view`: descriptor -> slice and typed (`Pod`) views. With `arena`, it holds the unsafe
//!   code; the one other `unsafe` block is in `Store::write`, where rule 2 (only the creator of an
//!   unsealed object writes) is what makes the writable view sound.
//! - `id`: object and client ids.

mod alloc;
mod arena;
mod id;
mod store;
mod view;

pub use alloc::{ALIGN, Allocation, OffsetAllocator, PAGE};
pub use arena::{Arena, ArenaError, HEADER_SIZE, HeapArena, ShmArena};
pub use bytemuck::Pod;
pub use id::{ClientId, ObjectId};
pub use store::{Descriptor, DropOnEvict, EvictionHook, Stats, Store, StoreError};
pub use view::{ViewError, cast_slice, cast_slice_mut};

#[cfg(test)]
mod assert_traits {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    #[test]
    fn auto_traits() {
        send::<crate::ShmArena>();
        sync::<crate::ShmArena>();
        send::<crate::HeapArena>();
        sync::<crate::HeapArena>();
        send::<crate::Store<crate::ShmArena>>();
        send::<crate::Store<crate::HeapArena>>();
    }
}
