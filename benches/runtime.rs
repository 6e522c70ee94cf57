//! Criterion benches of the runtime's fixed costs, the scenarios of the `microbenchmark`
//! example: an empty task's sync round trip, 1000 empty tasks in flight, and
//! `Runtime::start()` to the first task result. Ray 2.60 on this kind of machine (2 cores):
//! 1.8-2.1 ms per round trip, 1.6-1.8 k tasks/s in flight, 2.7 s for `ray.init` alone.
//!
//! Run: `cargo bench -p rayfork-benches --bench runtime` (about two minutes).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use rayfork::{Runtime, remote};

/// An empty task.
#[remote]
fn noop() {}

/// Tasks per batch in the "in flight" bench.
const IN_FLIGHT: usize = 1000;

/// A 2-CPU runtime, as on the machine the Ray figures come from.
fn runtime() -> Runtime {
    Runtime::builder()
        .num_cpus(2)
        .store_capacity(64 << 20)
        .start()
        .expect("start a runtime")
}

/// `get(noop::remote())`, one at a time.
fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("empty_task");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("sync_round_trip", |b| {
        b.iter(|| rt.get(&noop::remote()).expect("noop"))
    });
    g.finish();
}

/// Submit 1000 empty tasks, then `get_all` them.
fn in_flight(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("empty_tasks");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(IN_FLIGHT as u64));
    g.bench_function("1000_in_flight", |b| {
        b.iter(|| {
            let refs: Vec<_> = (0..IN_FLIGHT).map(|_| noop::remote()).collect();
            black_box(rt.get_all(&refs).expect("noops"))
        })
    });
    g.finish();
}

/// `Runtime::start()`, one empty task, its result; the drop is outside the timing.
fn start_to_first_result(c: &mut Criterion) {
    let mut g = c.benchmark_group("runtime");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("start_to_first_result", |b| {
        b.iter_batched(
            || (),
            |()| {
                let rt = runtime();
                rt.get(&noop::remote()).expect("noop");
                rt
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that every item is
// documented (the macros make an undocumented `pub fn`).
fn main() {
    let mut c = Criterion::default().configure_from_args();
    round_trip(&mut c);
    in_flight(&mut c);
    start_to_first_result(&mut c);
    c.final_summary();
}
