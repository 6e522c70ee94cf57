//! Unit tests of the store's lifecycle rules (lifecycle.md), one or more per rule.

use super::*;
use crate::HeapArena;

const A: ClientId = ClientId(1);
const B: ClientId = ClientId(2);

fn id(n: u128) -> ObjectId {
    ObjectId::from_u128(n)
}

fn store(cap: u64) -> Store<HeapArena> {
    Store::new(Arc::new(HeapArena::new(HEADER_SIZE + cap)))
}

fn sealed(s: &mut Store<HeapArena>, n: u128, size: u64) -> ObjectId {
    let i = id(n);
    s.create(i, size, A).unwrap();
    s.write(i, A).unwrap().fill(n as u8);
    s.seal(i).unwrap();
    i
}

fn assert_empty(s: &Store<HeapArena>) {
    s.check_invariants().unwrap();
    let st = s.stats();
    assert_eq!(
        (
            st.used,
            st.live_objects,
            st.pinned_objects,
            st.unsealed_objects
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(st.free, st.capacity);
    assert!(s.clients.is_empty() && s.lru.is_empty());
}

#[test]
fn full_lifecycle_returns_to_zero() {
    let mut s = store(1 << 20);
    let i = id(1);
    let d = s.create(i, 1000, A).unwrap();
    assert_eq!(d.len, 1000);
    assert_eq!(d.offset % 64, 0);
    assert_eq!(s.stats().unsealed_objects, 1);
    s.write(i, A).unwrap().copy_from_slice(&[7; 1000]);
    s.seal(i).unwrap();
    assert_eq!(s.get(i, B).unwrap(), d);
    assert_eq!(s.arena().bytes(d).unwrap(), &[7; 1000][..]);
    assert_eq!(s.stats().pinned_objects, 1);
    s.release(i, B).unwrap();
    s.delete(i).unwrap();
    assert!(!s.contains(i));
    assert_empty(&s);
}

// Rule 11.
#[test]
fn a_shared_object_outlives_its_creator_and_ends_by_seal_or_abort() {
    let mut s = store(1 << 20);
    let (i, j) = (id(1), id(2));
    s.create(i, 100, A).unwrap();
    s.create(j, 100, A).unwrap();
    assert_eq!(
        s.share(i, B),
        Err(StoreError::NotCreator {
            id: i,
            client: B,
            creator: A
        })
    );
    s.share(i, A).unwrap();
    s.share(j, A).unwrap();
    assert_eq!(s.share(i, A), Err(StoreError::Shared(i)));
    assert_eq!(s.write(i, A).map(|_| ()), Err(StoreError::Shared(i)));
    // Its creator's death leaves it alone.
    s.client_gone(A);
    assert!(s.contains(i) && s.contains(j));
    assert_eq!(s.stats().unsealed_objects, 2);
    assert_eq!(s.get(i, B), Err(StoreError::NotSealed(i)));
    s.seal(i).unwrap();
    s.abort(j).unwrap();
    s.get(i, B).unwrap();
    s.release(i, B).unwrap();
    s.delete(i).unwrap();
    assert_empty(&s);
}

// Rule 1.
#[test]
fn create_duplicate_and_zero_size() {
    let mut s = store(1 << 16);
    let d = s.create(id(1), 0, A).unwrap();
    assert_eq!(d.len, 0);
    assert_eq!(s.create(id(1), 5, B), Err(StoreError::AlreadyExists(id(1))));
    assert_eq!(s.stats().used, 64);
    assert!(s.write(id(1), A).unwrap().is_empty());
    s.seal(id(1)).unwrap();
    let d = s.get(id(1), A).unwrap();
    assert_eq!(s.arena().bytes(d).unwrap(), b"");
    s.release(id(1), A).unwrap();
    s.delete(id(1)).unwrap();
    assert_empty(&s);
}

#[test]
fn large_objects_are_page_aligned() {
    let mut s = store(1 << 20);
    s.create(id(1), 100, A).unwrap();
    let d = s.create(id(2), 5000, A).unwrap();
    assert_eq!(d.offset % 4096, 0);
    assert_eq!(s.stats().used, 128 + 8192);
    s.client_gone(A);
    assert_empty(&s);
}

// Rule 2.
#[test]
fn write_only_by_creator_while_unsealed() {
    let mut s = store(1 << 16);
    let i = id(1);
    assert_eq!(s.write(i, A).unwrap_err(), StoreError::UnknownObject(i));
    s.create(i, 8, A).unwrap();
    assert_eq!(
        s.write(i, B).unwrap_err(),
        StoreError::NotCreator {
            id: i,
            client: B,
            creator: A
        }
    );
    s.seal(i).unwrap();
    assert_eq!(s.write(i, A).unwrap_err(), StoreError::AlreadySealed(i));
}

// Rule 3.
#[test]
fn seal_twice_and_unknown() {
    let mut s = store(1 << 16);
    assert_eq!(s.seal(id(9)), Err(StoreError::UnknownObject(id(9))));
    let i = sealed(&mut s, 1, 10);
    assert_eq!(s.seal(i), Err(StoreError::AlreadySealed(i)));
    assert!(s.is_sealed(i));
}

// Rule 4.
#[test]
fn get_needs_sealed_and_counts_pins() {
    let mut s = store(1 << 16);
    assert_eq!(s.get(id(1), A), Err(StoreError::UnknownObject(id(1))));
    s.create(id(1), 10, A).unwrap();
    assert_eq!(s.get(id(1), A), Err(StoreError::NotSealed(id(1))));
    s.seal(id(1)).unwrap();
    s.get(id(1), B).unwrap();
    s.get(id(1), B).unwrap();
    s.get(id(1), A).unwrap();
    assert_eq!(s.stats().pinned_objects, 1);
    s.release(id(1), B).unwrap();
    s.release(id(1), B).unwrap();
    assert_eq!(
        s.release(id(1), B),
        Err(StoreError::NotPinned {
            id: id(1),
            client: B
        })
    );
    s.release(id(1), A).unwrap();
    assert_eq!(s.stats().pinned_objects, 0);
    s.check_invariants().unwrap();
}

// Rule 5.
#[test]
fn release_errors() {
    let mut s = store(1 << 16);
    assert_eq!(s.release(id(1), A), Err(StoreError::UnknownObject(id(1))));
    let i = sealed(&mut s, 1, 10);
    assert_eq!(
        s.release(i, A),
        Err(StoreError::NotPinned { id: i, client: A })
    );
    s.get(i, A).unwrap();
    assert_eq!(
        s.release(i, B),
        Err(StoreError::NotPinned { id: i, client: B })
    );
}

// Rule 6.
#[test]
fn delete_waits_for_last_pin() {
    let mut s = store(1 << 16);
    assert_eq!(s.delete(id(1)), Err(StoreError::UnknownObject(id(1))));
    s.create(id(1), 10, A).unwrap();
    assert_eq!(s.delete(id(1)), Err(StoreError::NotSealed(id(1))));
    s.write(id(1), A).unwrap().fill(1);
    s.seal(id(1)).unwrap();
    let d = s.get(id(1), A).unwrap();
    s.get(id(1), B).unwrap();
    s.delete(id(1)).unwrap();
    assert!(!s.contains(id(1)));
    assert_eq!(s.descriptor(id(1)), None);
    assert_eq!(s.delete(id(1)), Err(StoreError::Deleted(id(1))));
    assert_eq!(s.get(id(1), A), Err(StoreError::Deleted(id(1))));
    assert_eq!(s.seal(id(1)), Err(StoreError::Deleted(id(1))));
    assert_eq!(s.abort(id(1)), Err(StoreError::Deleted(id(1))));
    assert_eq!(s.write(id(1), A).unwrap_err(), StoreError::Deleted(id(1)));
    assert_eq!(s.mark_evictable(id(1)), Err(StoreError::Deleted(id(1))));
    assert_eq!(s.create(id(1), 1, A), Err(StoreError::Deleted(id(1))));
    // Still readable by the pinners.
    assert_eq!(s.arena().bytes(d).unwrap(), &[1; 10][..]);
    assert_eq!(s.stats().live_objects, 1);
    s.release(id(1), A).unwrap();
    assert_eq!(s.stats().live_objects, 1);
    s.release(id(1), B).unwrap();
    assert_empty(&s);
    // The id is free again.
    s.create(id(1), 1, A).unwrap();
}

// Rule 7.
#[test]
fn abort_only_unsealed() {
    let mut s = store(1 << 16);
    assert_eq!(s.abort(id(1)), Err(StoreError::UnknownObject(id(1))));
    s.create(id(1), 100, A).unwrap();
    s.abort(id(1)).unwrap();
    assert_empty(&s);
    let i = sealed(&mut s, 2, 100);
    assert_eq!(s.abort(i), Err(StoreError::AlreadySealed(i)));
}

// Rule 8.
#[test]
fn full_store_evicts_lru_evictable_then_fails() {
    struct Seen(Arc<std::sync::Mutex<Vec<(ObjectId, u8)>>>);
    impl EvictionHook for Seen {
        fn on_evict(&mut self, id: ObjectId, bytes: &[u8]) {
            self.0.lock().unwrap().push((id, bytes[0]));
        }
    }
    let mut s = store(4 * 4096);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    s.set_eviction_hook(Box::new(Seen(seen.clone())));
    let a = sealed(&mut s, 1, 4096);
    let b = sealed(&mut s, 2, 4096);
    let c = sealed(&mut s, 3, 4096);
    let d = sealed(&mut s, 4, 4096);
    // Nothing evictable: fails, nothing changes.
    assert_eq!(
        s.create(id(5), 4096, A),
        Err(StoreError::StoreFull {
            requested: 4096,
            capacity: 4 * 4096,
            used: 4 * 4096
        })
    );
    for i in [a, b, c, d] {
        s.mark_evictable(i).unwrap();
    }
    // Pinned objects are not evicted; `a` used most recently after its release.
    s.get(b, B).unwrap();
    s.get(a, B).unwrap();
    s.release(a, B).unwrap();
    // LRU among unpinned evictable: c, d, a.
    s.create(id(5), 2 * 4096, A).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(c, 3), (d, 4)]);
    assert!(!s.contains(c) && !s.contains(d) && s.contains(a) && s.contains(b));
    assert_eq!(s.evictions(), 2);
    // Cannot fit even after evicting `a`: fails without evicting it.
    assert!(matches!(
        s.create(id(6), 3 * 4096, A),
        Err(StoreError::StoreFull {
            requested: 12288,
            ..
        })
    ));
    assert!(s.contains(a));
    assert!(matches!(
        s.create(id(6), u64::MAX, A),
        Err(StoreError::StoreFull { .. })
    ));
    assert!(matches!(
        s.create(id(6), 1 << 40, A),
        Err(StoreError::StoreFull { .. })
    ));
    s.check_invariants().unwrap();
    let msg = s.create(id(6), 1 << 40, A).unwrap_err().to_string();
    assert!(msg.contains("larger store"), "{msg}");
    s.release(b, B).unwrap();
    s.client_gone(A);
    s.delete(a).unwrap();
    s.delete(b).unwrap();
    assert_empty(&s);
}

#[test]
fn mark_evictable_errors() {
    let mut s = store(1 << 16);
    assert_eq!(
        s.mark_evictable(id(1)),
        Err(StoreError::UnknownObject(id(1)))
    );
    s.create(id(1), 1, A).unwrap();
    assert_eq!(s.mark_evictable(id(1)), Err(StoreError::NotSealed(id(1))));
    s.seal(id(1)).unwrap();
    s.mark_evictable(id(1)).unwrap();
    s.mark_evictable(id(1)).unwrap();
    s.check_invariants().unwrap();
}

// Rule 9.
#[test]
fn client_gone_drops_pins_and_aborts_creates() {
    let mut s = store(1 << 20);
    let x = sealed(&mut s, 1, 100);
    s.get(x, B).unwrap();
    s.get(x, B).unwrap();
    s.create(id(2), 5000, B).unwrap();
    s.create(id(3), 10, A).unwrap();
    s.delete(x).unwrap();
    s.client_gone(B);
    assert!(!s.contains(id(2)));
    assert!(s.contains(id(3)));
    assert_eq!(s.stats().live_objects, 1);
    s.client_gone(B); // Unknown client: no-op.
    s.client_gone(A);
    assert_empty(&s);
}

#[test]
fn descriptor_and_contains() {
    let mut s = store(1 << 16);
    assert_eq!(s.descriptor(id(1)), None);
    let d = s.create(id(1), 3, A).unwrap();
    assert_eq!(s.descriptor(id(1)), Some(d));
    assert!(s.contains(id(1)) && !s.is_sealed(id(1)));
}

#[test]
fn error_messages_say_what_to_do() {
    let e = StoreError::NotCreator {
        id: id(1),
        client: B,
        creator: A,
    };
    assert!(e.to_string().contains("only its creator (client 1)"));
    assert!(
        StoreError::NotSealed(id(1))
            .to_string()
            .contains("seal it first")
    );
}
