//! Property test: random sequences of store operations against a simple model.
//!
//! Invariants checked after every step: results (including the exact error) match the model,
//! live allocations never overlap (`check_invariants`), contents read back equal what was
//! written, accounting matches the model, and at the end everything is free.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use rayfork_plasma::{
    Arena, ClientId, HEADER_SIZE, HeapArena, ObjectId, OffsetAllocator, Store, StoreError,
};

#[derive(Clone, Debug)]
enum Op {
    Create { id: u8, size: u64, client: u8 },
    Write { id: u8, client: u8, seed: u8 },
    Seal { id: u8 },
    Get { id: u8, client: u8 },
    Release { id: u8, client: u8 },
    Delete { id: u8 },
    Abort { id: u8 },
    ClientGone { client: u8 },
    MarkEvictable { id: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u8..8;
    let client = 0u8..3;
    let size = prop_oneof![0u64..200, 200u64..5000, 4096u64..40_000];
    prop_oneof![
        3 => (id.clone(), size, client.clone()).prop_map(|(id, size, client)| Op::Create { id, size, client }),
        2 => (id.clone(), client.clone(), any::<u8>()).prop_map(|(id, client, seed)| Op::Write { id, client, seed }),
        2 => id.clone().prop_map(|id| Op::Seal { id }),
        2 => (id.clone(), client.clone()).prop_map(|(id, client)| Op::Get { id, client }),
        2 => (id.clone(), client.clone()).prop_map(|(id, client)| Op::Release { id, client }),
        1 => id.clone().prop_map(|id| Op::Delete { id }),
        1 => id.clone().prop_map(|id| Op::Abort { id }),
        1 => client.prop_map(|client| Op::ClientGone { client }),
        1 => id.prop_map(|id| Op::MarkEvictable { id }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Unsealed(ClientId),
    Sealed,
    Deleted,
}

#[derive(Debug)]
struct Obj {
    size: u64,
    state: St,
    content: Option<Vec<u8>>,
    pins: HashMap<ClientId, u64>,
    evictable: bool,
}

impl Obj {
    fn pinned(&self) -> bool {
        self.pins.values().any(|&n| n > 0)
    }
}

#[derive(Default)]
struct Model {
    objs: HashMap<ObjectId, Obj>,
}

fn oid(n: u8) -> ObjectId {
    ObjectId::from_u128(1000 + u128::from(n))
}

fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

impl Model {
    fn expect_state(&self, id: ObjectId) -> Result<&Obj, StoreError> {
        self.objs.get(&id).ok_or(StoreError::UnknownObject(id))
    }

    fn used(&self) -> u64 {
        self.objs
            .values()
            .map(|o| OffsetAllocator::rounded(o.size).unwrap())
            .sum()
    }

    fn drop_pins(&mut self, id: ObjectId, client: ClientId, n: u64) {
        let o = self.objs.get_mut(&id).unwrap();
        let p = o.pins.get_mut(&client).unwrap();
        *p -= n;
        if *p == 0 {
            o.pins.remove(&client);
        }
        if o.state == St::Deleted && !o.pinned() {
            self.objs.remove(&id);
        }
    }
}

fn run(ops: Vec<Op>, capacity: u64, may_fill: bool) -> Result<(), TestCaseError> {
    let mut store = Store::new(Arc::new(HeapArena::new(HEADER_SIZE + capacity)));
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Create { id, size, client } => {
                let (id, c) = (oid(id), ClientId(client.into()));
                let expected = match m.objs.get(&id) {
                    Some(o) if o.state == St::Deleted => Err(StoreError::Deleted(id)),
                    Some(_) => Err(StoreError::AlreadyExists(id)),
                    None => Ok(()),
                };
                let got = store.create(id, size, c);
                match (&expected, &got) {
                    (Ok(()), Ok(d)) => {
                        prop_assert_eq!(d.len, size);
                        prop_assert_eq!(d.offset % 64, 0);
                        if size >= 4096 {
                            prop_assert_eq!(d.offset % 4096, 0);
                        }
                        m.objs.insert(
                            id,
                            Obj {
                                size,
                                state: St::Unsealed(c),
                                content: None,
                                pins: HashMap::new(),
                                evictable: false,
                            },
                        );
                    }
                    (Ok(()), Err(StoreError::StoreFull { requested, .. })) if may_fill => {
                        prop_assert_eq!(*requested, size);
                    }
                    (Err(e), Err(g)) => prop_assert_eq!(e, g),
                    _ => prop_assert!(
                        false,
                        "create {:?}: expected {:?}, got {:?}",
                        id,
                        expected,
                        got
                    ),
                }
                // Objects gone from the store were evicted: they must have been eligible (rule 8).
                let evicted: Vec<ObjectId> = m
                    .objs
                    .keys()
                    .filter(|i| !store.contains(**i) && m.objs[*i].state != St::Deleted)
                    .copied()
                    .collect();
                for e in evicted {
                    let o = &m.objs[&e];
                    prop_assert!(
                        may_fill && o.state == St::Sealed && o.evictable && !o.pinned(),
                        "bad eviction of {:?}: {:?}",
                        e,
                        o
                    );
                    m.objs.remove(&e);
                }
            }
            Op::Write { id, client, seed } => {
                let (id, c) = (oid(id), ClientId(client.into()));
                let expected = m.expect_state(id).and_then(|o| match o.state {
                    St::Unsealed(cr) if cr == c => Ok(o.size),
                    St::Unsealed(cr) => Err(StoreError::NotCreator {
                        id,
                        client: c,
                        creator: cr,
                    }),
                    St::Sealed => Err(StoreError::AlreadySealed(id)),
                    St::Deleted => Err(StoreError::Deleted(id)),
                });
                match (expected, store.write(id, c)) {
                    (Ok(size), Ok(buf)) => {
                        prop_assert_eq!(buf.len() as u64, size);
                        let p = pattern(seed, size);
                        buf.copy_from_slice(&p);
                        m.objs.get_mut(&id).unwrap().content = Some(p);
                    }
                    (Err(e), Err(g)) => prop_assert_eq!(e, g),
                    (e, g) => prop_assert!(
                        false,
                        "write: expected {:?}, got {:?}",
                        e,
                        g.map(|b| b.len())
                    ),
                }
            }
            Op::Seal { id } => {
                let id = oid(id);
                let expected = m.expect_state(id).and_then(|o| match o.state {
                    St::Unsealed(_) => Ok(()),
                    St::Sealed => Err(StoreError::AlreadySealed(id)),
                    St::Deleted => Err(StoreError::Deleted(id)),
                });
                prop_assert_eq!(&store.seal(id), &expected);
                if expected.is_ok() {
                    m.objs.get_mut(&id).unwrap().state = St::Sealed;
                }
            }
            Op::Get { id, client } => {
                let (id, c) = (oid(id), ClientId(client.into()));
                let expected = m.expect_state(id).and_then(|o| match o.state {
                    St::Sealed => Ok(()),
                    St::Unsealed(_) => Err(StoreError::NotSealed(id)),
                    St::Deleted => Err(StoreError::Deleted(id)),
                });
                match (expected, store.get(id, c)) {
                    (Ok(()), Ok(d)) => {
                        let o = m.objs.get_mut(&id).unwrap();
                        *o.pins.entry(c).or_default() += 1;
                        let bytes = store.arena().bytes(d).unwrap();
                        prop_assert_eq!(bytes.len() as u64, o.size);
                        if let Some(content) = &o.content {
                            prop_assert!(bytes == &content[..], "content of {:?} differs", id);
                        }
                    }
                    (Err(e), Err(g)) => prop_assert_eq!(e, g),
                    (e, g) => prop_assert!(false, "get: expected {:?}, got {:?}", e, g),
                }
            }
            Op::Release { id, client } => {
                let (id, c) = (oid(id), ClientId(client.into()));
                let expected = m.expect_state(id).and_then(|o| {
                    if o.pins.get(&c).copied().unwrap_or(0) > 0 {
                        Ok(())
                    } else {
                        Err(StoreError::NotPinned { id, client: c })
                    }
                });
                prop_assert_eq!(&store.release(id, c), &expected);
                if expected.is_ok() {
                    m.drop_pins(id, c, 1);
                }
            }
            Op::Delete { id } => {
                let id = oid(id);
                let expected = m.expect_state(id).and_then(|o| match o.state {
                    St::Sealed => Ok(()),
                    St::Unsealed(_) => Err(StoreError::NotSealed(id)),
                    St::Deleted => Err(StoreError::Deleted(id)),
                });
                prop_assert_eq!(&store.delete(id), &expected);
                if expected.is_ok() {
                    let o = m.objs.get_mut(&id).unwrap();
                    if o.pinned() {
                        o.state = St::Deleted;
                    } else {
                        m.objs.remove(&id);
                    }
                }
            }
            Op::Abort { id } => {
                let id = oid(id);
                let expected = m.expect_state(id).and_then(|o| match o.state {
                    St::Unsealed(_) => Ok(()),
                    St::Sealed => Err(StoreError::AlreadySealed(id)),
                    St::Deleted => Err(StoreError::Deleted(id)),
                });
                prop_assert_eq!(&store.abort(id), &expected);
                if expected.is_ok() {
                    m.objs.remove(&id);
                }
            }
            Op::ClientGone { client } => {
                let c = ClientId(client.into());
                store.client_gone(c);
                let ids: Vec<ObjectId> = m.objs.keys().copied().collect();
                for id in ids {
                    let o = &m.objs[&id];
                    if o.state == St::Unsealed(c) {
                        m.objs.remove(&id);
                    } else if let Some(&n) = o.pins.get(&c) {
                        m.drop_pins(id, c, n);
                    }
                }
            }
            Op::MarkEvictable { id } => {
                let id = oid(id);
                let expected = m.expect_state(id).and_then(|o| match o.state {
                    St::Sealed => Ok(()),
                    St::Unsealed(_) => Err(StoreError::NotSealed(id)),
                    St::Deleted => Err(StoreError::Deleted(id)),
                });
                prop_assert_eq!(&store.mark_evictable(id), &expected);
                if expected.is_ok() {
                    m.objs.get_mut(&id).unwrap().evictable = true;
                }
            }
        }
        store.check_invariants().map_err(TestCaseError::fail)?;
        let st = store.stats();
        prop_assert_eq!(st.live_objects, m.objs.len() as u64);
        prop_assert_eq!(st.used, m.used());
        prop_assert_eq!(st.used + st.free, st.capacity);
        prop_assert_eq!(
            st.pinned_objects,
            m.objs.values().filter(|o| o.pinned()).count() as u64
        );
        prop_assert_eq!(
            st.unsealed_objects,
            m.objs
                .values()
                .filter(|o| matches!(o.state, St::Unsealed(_)))
                .count() as u64
        );
        for (id, o) in &m.objs {
            prop_assert_eq!(store.contains(*id), o.state != St::Deleted);
        }
    }
    // Tear down: every pin released, every object deleted or aborted.
    for (id, o) in &m.objs {
        if o.state == St::Sealed {
            store.delete(*id).unwrap();
        }
    }
    for c in 0..3 {
        store.client_gone(ClientId(c));
    }
    let st = store.stats();
    prop_assert_eq!(
        (
            st.used,
            st.live_objects,
            st.pinned_objects,
            st.unsealed_objects
        ),
        (0, 0, 0, 0)
    );
    prop_assert_eq!(store.fragmentation(), 0.0);
    prop_assert_eq!(st.free, st.capacity);
    // Objects never sat in the header.
    prop_assert!(store.arena().capacity() >= HEADER_SIZE + st.capacity);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Room for everything: creates never fail, nothing is evicted.
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, 1 << 20, false)?;
    }

    /// A tight store: creates may fail with StoreFull or evict, but only evictable objects.
    #[test]
    fn tight_store_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, 64 * 1024, true)?;
    }
}
