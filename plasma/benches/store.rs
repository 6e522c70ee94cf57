//! Benchmarks of the object store. Scenarios (baseline stated in each group):
//!
//! - `put/<size>`: create + fill (copy from a source buffer) + seal (+ delete) of one object, vs
//!   a plain memcpy (`copy_from_slice` into a `Vec`) of the same size. `warm`: the arena / Vec
//!   was written before, pages are faulted in. `fresh`: a new arena / `vec![0; n]` each time, so
//!   first-touch page faults are included. `store_fresh_populated`: a new arena on which
//!   `ShmArena::populate` ran before the timer started (what a runtime can do at startup).
//! - `get/<size>`: `get` (pin) + descriptor -> `&[u8]` + `release`, for a 64 B and a 1 GiB
//!   object; it must not grow with size.
//! - `alloc/<mix>`: one free + one alloc against a pool of 1024 live allocations, sizes uniform
//!   in 64 B-4 KiB (`small`) or log-uniform 64 B-16 MiB (`mixed`). Fragmentation after 1 M such
//!   pairs is printed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_main};
use rayfork_plasma::{Arena, ClientId, ObjectId, OffsetAllocator, ShmArena, Store};

const C: ClientId = ClientId(1);
const SLACK: u64 = 1 << 20;

fn source(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    v
}

fn put(store: &mut Store<ShmArena>, id: ObjectId, src: &[u8]) {
    store.create(id, src.len() as u64, C).unwrap();
    store.write(id, C).unwrap().copy_from_slice(src);
    store.seal(id).unwrap();
}

fn bench_put(c: &mut Criterion, name: &str, n: usize, big: bool) {
    let src = source(n);
    let mut g = c.benchmark_group(format!("put/{name}"));
    g.throughput(Throughput::Bytes(n as u64));
    if big {
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5));
    } else {
        g.sample_size(20).measurement_time(Duration::from_secs(4));
    }

    let mut dst = source(n);
    g.bench_function("memcpy_warm", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)));
    });
    drop(dst);

    let mut store = Store::new(Arc::new(ShmArena::create(n as u64 + SLACK).unwrap()));
    let id = ObjectId::from_u128(1);
    g.bench_function("store_warm", |b| {
        b.iter(|| {
            put(&mut store, id, black_box(&src));
            store.delete(id).unwrap();
        });
    });
    drop(store);

    g.bench_function("memcpy_fresh", |b| {
        b.iter_batched(
            || vec![0u8; n],
            |mut dst| {
                dst.copy_from_slice(black_box(&src));
                dst
            },
            BatchSize::PerIteration,
        );
    });

    g.bench_function("store_fresh", |b| {
        b.iter_batched(
            || Store::new(Arc::new(ShmArena::create(n as u64 + SLACK).unwrap())),
            |mut store| {
                put(&mut store, id, black_box(&src));
                store
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("store_fresh_populated", |b| {
        b.iter_batched(
            || {
                let arena = ShmArena::create(n as u64 + SLACK).unwrap();
                arena.populate().unwrap();
                Store::new(Arc::new(arena))
            },
            |mut store| {
                put(&mut store, id, black_box(&src));
                store
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn bench_puts(c: &mut Criterion) {
    bench_put(c, "64MiB", 64 << 20, false);
    bench_put(c, "1GiB", 1 << 30, true);
}

fn bench_get(c: &mut Criterion) {
    let mut g = c.benchmark_group("get");
    g.measurement_time(Duration::from_secs(2));
    let big = 1u64 << 30;
    let mut store = Store::new(Arc::new(ShmArena::create(big + SLACK).unwrap()));
    let (small_id, big_id) = (ObjectId::from_u128(1), ObjectId::from_u128(2));
    store.create(small_id, 64, C).unwrap();
    store.seal(small_id).unwrap();
    store.create(big_id, big, C).unwrap();
    store.seal(big_id).unwrap();
    for (name, id) in [("64B", small_id), ("1GiB", big_id)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let d = store.get(black_box(id), C).unwrap();
                let bytes = store.arena().bytes(d).unwrap();
                black_box((bytes.as_ptr(), bytes.len()));
                store.release(id, C).unwrap();
            });
        });
    }
    g.finish();
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn small_size(r: &mut XorShift) -> u64 {
    64 + r.next() % (4096 - 64 + 1)
}

fn mixed_size(r: &mut XorShift) -> u64 {
    // Log-uniform in [64 B, 16 MiB].
    let bits = 6 + r.next() % 18;
    (1u64 << bits) + r.next() % (1u64 << bits)
}

const POOL: usize = 1024;

/// Draws an allocation size.
type SizeFn = fn(&mut XorShift) -> u64;

/// Runs `pairs` free+alloc pairs on a pool of live allocations.
fn churn(
    a: &mut OffsetAllocator,
    live: &mut [Option<rayfork_plasma::Allocation>],
    r: &mut XorShift,
    size: SizeFn,
    pairs: u64,
) {
    for _ in 0..pairs {
        let slot = (r.next() % POOL as u64) as usize;
        if let Some(x) = live[slot].take() {
            a.free(x);
        }
        live[slot] = a.alloc(size(r));
    }
}

fn bench_alloc(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    // `tight`: 1024 live objects averaging ~2 KiB in 3 MiB, about 70% occupancy.
    let cases: [(&str, u64, SizeFn); 3] = [
        ("small_64B-4KiB", 64 << 20, small_size),
        ("small_tight_3MiB", 3 << 20, small_size),
        ("mixed_64B-16MiB", 16 << 30, mixed_size),
    ];
    for (name, cap, size) in cases {
        let mut a = OffsetAllocator::new(0, cap);
        let mut r = XorShift(0x1234_5678_9abc_def1);
        let mut live = vec![None; POOL];
        churn(&mut a, &mut live, &mut r, size, 100_000);
        g.bench_function(name, |b| {
            b.iter(|| churn(&mut a, &mut live, &mut r, size, 1));
        });
        // Fragmentation after a long run (not timed).
        churn(&mut a, &mut live, &mut r, size, 1_000_000);
        let failed = live.iter().filter(|x| x.is_none()).count();
        eprintln!(
            "alloc/{name}: after 1M more pairs: {} live, {} failed allocs in pool, used {} B of {} B, \
             {} free blocks, largest free {} B, fragmentation {:.4}",
            a.allocations(),
            failed,
            a.used(),
            a.capacity(),
            a.free_blocks(),
            a.largest_free(),
            a.fragmentation()
        );
        for x in live.iter_mut().filter_map(Option::take) {
            a.free(x);
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.free_blocks(), 1);
    }
    g.finish();
}

/// `criterion_group!` generates an undocumented `pub fn`; keep the allow scoped to it.
#[allow(missing_docs)]
mod group {
    use super::{bench_alloc, bench_get, bench_puts};
    criterion::criterion_group!(benches, bench_alloc, bench_get, bench_puts);
}
criterion_main!(group::benches);
