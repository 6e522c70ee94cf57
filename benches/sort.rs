//! Criterion bench `sort`: the quicksort demo's variants at 4M integers (the in-place nested
//! quicksort on windows, the radix sort tasks, the seed algorithm, the sample sort), side by
//! side with the in-process baselines (the in-place recursion in one process, rayon's
//! `par_sort_unstable`, std's `sort_unstable`). Each in-place iteration copies the input into
//! a fresh store array first, as the baselines clone their `Vec`.

#[path = "../examples/sort_tasks.rs"]
mod sort_tasks;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use rayon::prelude::*;

fn bench(c: &mut Criterion) {
    let n = 4_000_000;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let input = sort_tasks::random_ints(n, 42);
    let rt = rayfork::Runtime::builder()
        .num_cpus(cpus)
        .store_capacity(2 << 30)
        .start()
        .expect("start runtime");
    let data = rt.put_array(&input).expect("put input");
    let mut g = c.benchmark_group("sort");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let leaf = sort_tasks::in_place_leaf(n, cpus);
    g.bench_function(BenchmarkId::new("rayfork_in_place_nested", n), |b| {
        b.iter(|| {
            let w = rayfork::ArrayMut::from_slice(&input)
                .and_then(rayfork::ArrayMut::into_window)
                .expect("window");
            rt.get(&sort_tasks::quick_sort_in_place::remote(w, leaf))
                .and_then(rayfork::Window::seal)
                .expect("sort")
        })
    });
    g.bench_function(BenchmarkId::new("rayfork_radix_tasks", n), |b| {
        b.iter(|| {
            let m = rayfork::ArrayMut::from_slice(&input).expect("array");
            sort_tasks::radix_sort_tasks(m, cpus).expect("sort")
        })
    });
    g.bench_function(BenchmarkId::new("in_place_one_process", n), |b| {
        b.iter(|| {
            let mut v = input.clone();
            sort_tasks::quick_sort_in_place_seq(&mut v, leaf);
            v
        })
    });
    g.bench_function(BenchmarkId::new("sequential_seed", n), |b| {
        b.iter(|| sort_tasks::quick_sort_seq(input.clone()))
    });
    g.bench_function(BenchmarkId::new("rayfork_nested_seed", n), |b| {
        b.iter(|| {
            rt.get(
                &sort_tasks::quick_sort::options()
                    .max_retries(0)
                    .remote(data.clone()),
            )
            .expect("sort")
        })
    });
    g.bench_function(BenchmarkId::new("rayfork_sample_sort", n), |b| {
        b.iter(|| sort_tasks::sample_sort(&rt, &data, cpus).expect("sort"))
    });
    g.bench_function(BenchmarkId::new("rayon_par_sort_unstable", n), |b| {
        b.iter(|| {
            let mut v = input.clone();
            v.par_sort_unstable();
            v
        })
    });
    g.bench_function(BenchmarkId::new("std_sort_unstable", n), |b| {
        b.iter(|| {
            let mut v = input.clone();
            v.sort_unstable();
            v
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
