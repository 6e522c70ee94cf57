//! The object table: owns the lifecycle of every object (create, write, seal, get, release,
//! delete, abort, eviction), the pins and creations recorded per client, and the accounting.
//!
//! The table and the allocator live in ordinary memory of the process that owns the [`Store`]
//! (the rayfork driver's scheduler thread), never in the arena: other processes only ever see
//! bytes at offsets they were given, so a process that crashes cannot corrupt the bookkeeping.
//!
//! The rules below are also shown on [`Store`]; the text lives once, in `lifecycle.md`.
//!
#![doc = include_str!("lifecycle.md")]

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::alloc::{Allocation, OffsetAllocator};
use crate::arena::{Arena, HEADER_SIZE};
use crate::id::{ClientId, ObjectId};
use crate::view::ViewError;

/// Where an object's bytes are: `offset` from the start of the mapping (header included) and
/// `len` bytes. The same descriptor is valid in every process that maps the arena.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Descriptor {
    /// Offset of the first byte from the start of the mapping. Always 64-byte aligned, and page
    /// aligned for objects of 4096 bytes or more.
    pub offset: u64,
    /// Length in bytes (as requested at create, not rounded).
    pub len: u64,
}

/// A snapshot of the store's accounting (rule 10 in `store.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stats {
    /// Bytes of the data area (the arena's capacity minus its header). `used + free == capacity`.
    pub capacity: u64,
    /// Bytes allocated to objects, including rounding to 64 bytes / whole pages.
    pub used: u64,
    /// Bytes not allocated (possibly in several pieces).
    pub free: u64,
    /// Objects holding memory: unsealed, sealed, and deleted-but-pinned.
    pub live_objects: u64,
    /// Objects with at least one pin.
    pub pinned_objects: u64,
    /// Objects created and not yet sealed or aborted.
    pub unsealed_objects: u64,
    /// The most bytes `used` has been since the store began, or since [`Store::reset_peak`].
    pub peak_used: u64,
}

/// What went wrong in a store call. Each message says what happened and what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The object does not fit, even after evicting every evictable object (rule 8).
    #[error(
        "object store full: {requested} bytes requested, {used} of {capacity} bytes in use; \
         release or delete objects, mark them evictable, or start with a larger store"
    )]
    StoreFull {
        /// Bytes requested.
        requested: u64,
        /// Bytes of the data area.
        capacity: u64,
        /// Bytes in use when the request failed.
        used: u64,
    },
    /// No object with this id is in the table (never created, aborted, freed or evicted).
    #[error("unknown object {0}: it was never created, or was aborted, freed or evicted")]
    UnknownObject(ObjectId),
    /// `create` with an id that is already in use (rule 1).
    #[error("object {0} already exists; pick a fresh id or delete the old object first")]
    AlreadyExists(ObjectId),
    /// The call needs a sealed object and this one is still being written (rules 4, 6).
    #[error("object {0} is not sealed yet; seal it first (or abort it to drop it)")]
    NotSealed(ObjectId),
    /// The call needs an unsealed object and this one is sealed (rules 2, 3, 7).
    #[error("object {0} is already sealed and immutable; create a new object to change it")]
    AlreadySealed(ObjectId),
    /// Someone other than the creator tried to write an unsealed object (rule 2).
    #[error("{client} cannot write object {id}: only its creator ({creator}) may write it")]
    NotCreator {
        /// The object.
        id: ObjectId,
        /// Who asked.
        client: ClientId,
        /// Who created it.
        creator: ClientId,
    },
    /// The call needs an object with a creator, and this one is shared (rules 2, 11).
    #[error(
        "object {0} is shared by its writers (not one creator's); write it through its descriptor"
    )]
    Shared(ObjectId),
    /// `release` by a client that holds no pin on the object (rule 5).
    #[error("{client} holds no pin on object {id}; release only what you got")]
    NotPinned {
        /// The object.
        id: ObjectId,
        /// Who asked.
        client: ClientId,
    },
    /// The object was deleted and waits for its last pins to be released (rule 6).
    #[error(
        "object {0} was deleted and is waiting for its pins to be released; \
         it can only be released now"
    )]
    Deleted(ObjectId),
    /// A descriptor did not fit the arena; a bug in the caller or a mismatched arena.
    #[error(transparent)]
    View(#[from] ViewError),
}

/// The seam for spilling to disk (rule 8): called with a sealed object's bytes just before the
/// store evicts it to make room.
///
/// The default does nothing (the object is simply dropped). A spilling implementation writes
/// `bytes` to a file here and restores it with a fresh `create` + write + `seal` when it is
/// asked for again.
pub trait EvictionHook: Send {
    /// `id` is about to be evicted; `bytes` are its contents, valid only during the call.
    fn on_evict(&mut self, id: ObjectId, bytes: &[u8]);
}

/// The hook used when none is set: evicted objects are dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct DropOnEvict;

impl EvictionHook for DropOnEvict {
    fn on_evict(&mut self, _id: ObjectId, _bytes: &[u8]) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unsealed {
        creator: ClientId,
    },
    /// Unsealed, its creator gone from it: shared by writers the runtime tracks (rule 11).
    Shared,
    Sealed,
    Deleted,
}

#[derive(Debug)]
struct Object {
    alloc: Allocation,
    len: u64,
    state: State,
    /// Total pins over all clients.
    pins: u64,
    evictable: bool,
    /// Key in `Store::lru` while the object is eligible for eviction.
    lru_key: Option<u64>,
}

impl Object {
    /// Ok if `client` created this unsealed object (rule 2); the error for the state else.
    fn check_creator(&self, id: ObjectId, client: ClientId) -> Result<(), StoreError> {
        match self.state {
            State::Unsealed { creator } if creator == client => Ok(()),
            State::Unsealed { creator } => Err(StoreError::NotCreator {
                id,
                client,
                creator,
            }),
            State::Shared => Err(StoreError::Shared(id)),
            State::Sealed => Err(StoreError::AlreadySealed(id)),
            State::Deleted => Err(StoreError::Deleted(id)),
        }
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            offset: self.alloc.offset,
            len: self.len,
        }
    }
}

#[derive(Debug, Default)]
struct ClientRecord {
    pins: HashMap<ObjectId, u64>,
    creating: HashSet<ObjectId>,
}

impl ClientRecord {
    fn is_empty(&self) -> bool {
        self.pins.is_empty() && self.creating.is_empty()
    }
}

/// The object store: an arena plus the object table and allocator that manage it.
///
/// See the [crate docs](crate) for an example.
///
#[doc = include_str!("lifecycle.md")]
pub struct Store<A: Arena> {
    arena: Arc<A>,
    alloc: OffsetAllocator,
    objects: HashMap<ObjectId, Object>,
    clients: HashMap<ClientId, ClientRecord>,
    /// Eviction candidates (rule 8), by last-use stamp.
    lru: BTreeMap<u64, ObjectId>,
    clock: u64,
    pinned: u64,
    unsealed: u64,
    evictions: u64,
    /// The largest `used` since the start or the last `reset_peak`.
    peak_used: u64,
    hook: Box<dyn EvictionHook>,
}

impl<A: Arena> std::fmt::Debug for Store<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish()
    }
}

fn find(objects: &mut HashMap<ObjectId, Object>, id: ObjectId) -> Result<&mut Object, StoreError> {
    objects.get_mut(&id).ok_or(StoreError::UnknownObject(id))
}

impl<A: Arena> Store<A> {
    /// A store managing `[HEADER_SIZE, capacity)` of `arena`, with every byte free.
    pub fn new(arena: Arc<A>) -> Self {
        let alloc = OffsetAllocator::new(HEADER_SIZE, arena.capacity());
        Store {
            arena,
            alloc,
            objects: HashMap::new(),
            clients: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            pinned: 0,
            unsealed: 0,
            evictions: 0,
            peak_used: 0,
            hook: Box::new(DropOnEvict),
        }
    }

    /// The arena the store manages (to make views from descriptors, or to share it).
    pub fn arena(&self) -> &Arc<A> {
        &self.arena
    }

    /// Sets the hook called before each eviction (rule 8); the seam for spilling to disk.
    pub fn set_eviction_hook(&mut self, hook: Box<dyn EvictionHook>) {
        self.hook = hook;
    }

    /// Creates an unsealed object of `size` bytes for `client` (rule 1); evicts if needed
    /// (rule 8). Returns where its bytes are; the creator fills them, then calls [`seal`].
    ///
    /// [`seal`]: Store::seal
    pub fn create(
        &mut self,
        id: ObjectId,
        size: u64,
        client: ClientId,
    ) -> Result<Descriptor, StoreError> {
        // Rule 1.
        if let Some(o) = self.objects.get(&id) {
            return Err(match o.state {
                State::Deleted => StoreError::Deleted(id),
                _ => StoreError::AlreadyExists(id),
            });
        }
        let alloc = self.alloc_evicting(size)?;
        self.peak_used = self.peak_used.max(self.alloc.used());
        let obj = Object {
            alloc,
            len: size,
            state: State::Unsealed { creator: client },
            pins: 0,
            evictable: false,
            lru_key: None,
        };
        let d = obj.descriptor();
        self.objects.insert(id, obj);
        self.clients.entry(client).or_default().creating.insert(id);
        self.unsealed += 1;
        Ok(d)
    }

    /// Allocates `size` bytes, evicting LRU evictable objects while it does not fit (rule 8).
    /// Fails without evicting anything when even evicting every candidate could not help.
    fn alloc_evicting(&mut self, size: u64) -> Result<Allocation, StoreError> {
        let full = |s: &Self| StoreError::StoreFull {
            requested: size,
            capacity: s.alloc.capacity(),
            used: s.alloc.used(),
        };
        if let Some(a) = self.alloc.alloc(size) {
            return Ok(a);
        }
        let need = OffsetAllocator::rounded(size).ok_or_else(|| full(self))?;
        let evictable: u64 = self
            .lru
            .values()
            .map(|id| self.objects[id].alloc.size)
            .sum();
        if need > self.alloc.capacity() || self.alloc.free_bytes() + evictable < need {
            return Err(full(self));
        }
        while let Some((_, id)) = self.lru.pop_first() {
            self.evict(id);
            if let Some(a) = self.alloc.alloc(size) {
                return Ok(a);
            }
        }
        Err(full(self))
    }

    fn evict(&mut self, id: ObjectId) {
        let Some(obj) = self.objects.remove(&id) else {
            debug_assert!(false, "lru names missing object {id:?}");
            return;
        };
        debug_assert!(obj.state == State::Sealed && obj.pins == 0 && obj.evictable);
        let arena = Arc::clone(&self.arena);
        if let Ok(bytes) = arena.bytes(obj.descriptor()) {
            self.hook.on_evict(id, bytes);
        }
        self.alloc.free(obj.alloc);
        self.evictions += 1;
    }

    /// Puts `id` into the LRU if it is an eviction candidate (rule 8), with a fresh stamp.
    fn touch(&mut self, id: ObjectId) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        if let Some(k) = obj.lru_key.take() {
            self.lru.remove(&k);
        }
        if obj.state == State::Sealed && obj.evictable && obj.pins == 0 {
            self.clock += 1;
            obj.lru_key = Some(self.clock);
            self.lru.insert(self.clock, id);
        }
    }

    /// Removes `id` from the table and frees its memory.
    fn free_object(&mut self, id: ObjectId) {
        if let Some(obj) = self.objects.remove(&id) {
            if let Some(k) = obj.lru_key {
                self.lru.remove(&k);
            }
            match obj.state {
                State::Unsealed { creator } => {
                    self.unsealed -= 1;
                    self.forget_creating(creator, id);
                }
                State::Shared => self.unsealed -= 1,
                State::Sealed | State::Deleted => {}
            }
            self.alloc.free(obj.alloc);
        }
    }

    fn forget_creating(&mut self, client: ClientId, id: ObjectId) {
        if let MapEntry::Occupied(mut e) = self.clients.entry(client) {
            e.get_mut().creating.remove(&id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// The writable bytes of an unsealed object, for its creator only (rule 2).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use rayfork_plasma::{Store, HeapArena, ObjectId, ClientId};
    /// let mut store = Store::new(Arc::new(HeapArena::new(1 << 16)));
    /// let (id, me) = (ObjectId::from_u128(1), ClientId(0));
    /// store.create(id, 4, me).unwrap();
    /// store.write(id, me).unwrap().copy_from_slice(b"abcd");
    /// assert!(store.write(id, ClientId(9)).is_err());
    /// ```
    pub fn write(&mut self, id: ObjectId, client: ClientId) -> Result<&mut [u8], StoreError> {
        let obj = find(&mut self.objects, id)?;
        obj.check_creator(id, client)?;
        let d = obj.descriptor();
        // Rule 2: only the creator of an unsealed object gets here; unsealed objects are never
        // handed out for reading (rule 4); the allocator gives live objects disjoint ranges.
        // SAFETY: by those rules this is the only view of the range, and it borrows `self`
        // mutably, so this process cannot seal, abort or write the object while it lives.
        let bytes = unsafe { self.arena.bytes_mut(d) };
        Ok(bytes?)
    }

    /// Seals an unsealed object: its bytes are immutable from now on (rule 3).
    pub fn seal(&mut self, id: ObjectId) -> Result<(), StoreError> {
        let obj = find(&mut self.objects, id)?;
        // Rule 3.
        let creator = match obj.state {
            State::Unsealed { creator } => Some(creator),
            State::Shared => None,
            State::Deleted => return Err(StoreError::Deleted(id)),
            State::Sealed => return Err(StoreError::AlreadySealed(id)),
        };
        obj.state = State::Sealed;
        self.unsealed -= 1;
        if let Some(creator) = creator {
            self.forget_creating(creator, id);
        }
        self.touch(id);
        Ok(())
    }

    /// Pins a sealed object for `client` and returns where it is (rule 4). Turn the descriptor
    /// into bytes with [`Arena::bytes`] on [`Store::arena`] (or in another process's mapping).
    pub fn get(&mut self, id: ObjectId, client: ClientId) -> Result<Descriptor, StoreError> {
        let obj = find(&mut self.objects, id)?;
        match obj.state {
            State::Sealed => {}
            State::Unsealed { .. } | State::Shared => return Err(StoreError::NotSealed(id)), // Rule 4.
            State::Deleted => return Err(StoreError::Deleted(id)), // Rule 6.
        }
        obj.pins += 1;
        let d = obj.descriptor();
        if obj.pins == 1 {
            self.pinned += 1;
        }
        *self
            .clients
            .entry(client)
            .or_default()
            .pins
            .entry(id)
            .or_insert(0) += 1;
        self.touch(id);
        Ok(d)
    }

    /// Drops one pin of `client` on `id` (rule 5); frees a deleted object on its last pin.
    pub fn release(&mut self, id: ObjectId, client: ClientId) -> Result<(), StoreError> {
        if !self.objects.contains_key(&id) {
            return Err(StoreError::UnknownObject(id));
        }
        let not_pinned = StoreError::NotPinned { id, client };
        let MapEntry::Occupied(mut rec) = self.clients.entry(client) else {
            return Err(not_pinned);
        };
        let MapEntry::Occupied(mut n) = rec.get_mut().pins.entry(id) else {
            return Err(not_pinned);
        };
        *n.get_mut() -= 1;
        if *n.get() == 0 {
            n.remove();
            if rec.get().is_empty() {
                rec.remove();
            }
        }
        self.unpin(id, 1);
        Ok(())
    }

    /// Removes `n` pins from the object's total; frees it if it was deleted and is now unpinned.
    fn unpin(&mut self, id: ObjectId, n: u64) {
        let Some(obj) = self.objects.get_mut(&id) else {
            debug_assert!(false, "pin on missing object {id:?}");
            return;
        };
        debug_assert!(obj.pins >= n);
        obj.pins -= n;
        if obj.pins == 0 {
            self.pinned -= 1;
            if obj.state == State::Deleted {
                self.free_object(id); // Rule 5 / rule 6.
                return;
            }
        }
        self.touch(id);
    }

    /// Deletes a sealed object (rule 6): freed now if unpinned, else when its last pin goes.
    pub fn delete(&mut self, id: ObjectId) -> Result<(), StoreError> {
        let obj = find(&mut self.objects, id)?;
        match obj.state {
            State::Sealed => {}
            State::Unsealed { .. } | State::Shared => return Err(StoreError::NotSealed(id)),
            State::Deleted => return Err(StoreError::Deleted(id)),
        }
        // Rule 6.
        if obj.pins == 0 {
            self.free_object(id);
        } else {
            obj.state = State::Deleted;
            self.touch(id); // Leaves the LRU: deleted objects wait for their pins.
        }
        Ok(())
    }

    /// Drops an unsealed object and frees its memory (rule 7).
    pub fn abort(&mut self, id: ObjectId) -> Result<(), StoreError> {
        let obj = find(&mut self.objects, id)?;
        match obj.state {
            State::Unsealed { .. } | State::Shared => {}
            State::Sealed => return Err(StoreError::AlreadySealed(id)),
            State::Deleted => return Err(StoreError::Deleted(id)),
        }
        self.free_object(id);
        Ok(())
    }

    /// Takes an unsealed object from its creator `client` and makes it shared (rule 11): no
    /// client owns it any more, `client_gone` leaves it alone, and it ends by `seal` or
    /// `abort` from whoever the caller allows.
    pub fn share(&mut self, id: ObjectId, client: ClientId) -> Result<(), StoreError> {
        let obj = find(&mut self.objects, id)?;
        obj.check_creator(id, client)?;
        obj.state = State::Shared;
        self.forget_creating(client, id);
        Ok(())
    }

    /// Drops every pin `client` holds and aborts every object it was creating (rule 9).
    /// Unknown clients are a no-op.
    pub fn client_gone(&mut self, client: ClientId) {
        let Some(rec) = self.clients.remove(&client) else {
            return;
        };
        // Rule 9: pins as rule 5 would drop them, creations as rule 7 would abort them.
        for (id, n) in rec.pins {
            self.unpin(id, n);
        }
        for id in rec.creating {
            debug_assert!(matches!(
                self.objects.get(&id).map(|o| o.state),
                Some(State::Unsealed { creator }) if creator == client
            ));
            self.free_object(id);
        }
    }

    /// Lets the store evict `id` when it is sealed, unpinned and space is needed (rule 8).
    pub fn mark_evictable(&mut self, id: ObjectId) -> Result<(), StoreError> {
        let obj = find(&mut self.objects, id)?;
        match obj.state {
            State::Sealed => {}
            State::Unsealed { .. } | State::Shared => return Err(StoreError::NotSealed(id)),
            State::Deleted => return Err(StoreError::Deleted(id)),
        }
        obj.evictable = true;
        self.touch(id);
        Ok(())
    }

    /// Whether `id` names an unsealed or sealed object (deleted ones are not visible).
    pub fn contains(&self, id: ObjectId) -> bool {
        self.objects
            .get(&id)
            .is_some_and(|o| o.state != State::Deleted)
    }

    /// Where `id`'s bytes are, without pinning it (for the owner's bookkeeping, e.g. to hand an
    /// unsealed object's descriptor to the process that fills it). `None` if unknown or deleted.
    pub fn descriptor(&self, id: ObjectId) -> Option<Descriptor> {
        self.objects
            .get(&id)
            .filter(|o| o.state != State::Deleted)
            .map(Object::descriptor)
    }

    /// Whether `id` is sealed (and not deleted).
    pub fn is_sealed(&self, id: ObjectId) -> bool {
        self.objects
            .get(&id)
            .is_some_and(|o| o.state == State::Sealed)
    }

    /// The accounting (rule 10).
    pub fn stats(&self) -> Stats {
        Stats {
            capacity: self.alloc.capacity(),
            used: self.alloc.used(),
            free: self.alloc.free_bytes(),
            live_objects: self.objects.len() as u64,
            pinned_objects: self.pinned,
            unsealed_objects: self.unsealed,
            peak_used: self.peak_used,
        }
    }

    /// Starts a new peak: `peak_used` becomes the bytes used now.
    pub fn reset_peak(&mut self) {
        self.peak_used = self.alloc.used();
    }

    /// Objects evicted so far (rule 8).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// External fragmentation of the free space; see [`OffsetAllocator::fragmentation`].
    pub fn fragmentation(&self) -> f64 {
        self.alloc.fragmentation()
    }

    /// Recomputes every counter from the table and checks it against the incremental ones,
    /// and that no two objects overlap. For tests; returns a description of the first mismatch.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut ranges: Vec<_> = self.objects.values().map(|o| o.alloc).collect();
        ranges.sort_by_key(|a| a.offset);
        for w in ranges.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(format!("overlap: {:?} {:?}", w[0], w[1]));
            }
        }
        let used: u64 = ranges.iter().map(|a| a.size).sum();
        if used != self.alloc.used() {
            return Err(format!("used {} != sum {used}", self.alloc.used()));
        }
        if self.alloc.allocations() != self.objects.len() as u64 {
            return Err("allocation count mismatch".into());
        }
        let pinned = self.objects.values().filter(|o| o.pins > 0).count() as u64;
        let unsealed = self
            .objects
            .values()
            .filter(|o| matches!(o.state, State::Unsealed { .. }))
            .count() as u64;
        if pinned != self.pinned || unsealed != self.unsealed {
            return Err(format!(
                "pinned {}/{pinned} unsealed {}/{unsealed}",
                self.pinned, self.unsealed
            ));
        }
        let mut pins: HashMap<ObjectId, u64> = HashMap::new();
        for rec in self.clients.values() {
            if rec.is_empty() {
                return Err("empty client record kept".into());
            }
            for (id, n) in &rec.pins {
                *pins.entry(*id).or_default() += n;
            }
        }
        for (id, o) in &self.objects {
            if pins.get(id).copied().unwrap_or(0) != o.pins {
                return Err(format!("pin count mismatch for {id:?}"));
            }
            if o.state == State::Deleted && o.pins == 0 {
                return Err(format!("deleted unpinned object kept: {id:?}"));
            }
            let eligible = o.state == State::Sealed && o.evictable && o.pins == 0;
            if eligible != o.lru_key.is_some() {
                return Err(format!("lru membership wrong for {id:?}"));
            }
        }
        if self.lru.len()
            != self
                .objects
                .values()
                .filter(|o| o.lru_key.is_some())
                .count()
        {
            return Err("lru size mismatch".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
