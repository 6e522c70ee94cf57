//! Nested `get`s never deadlock, whatever the worker cap (design.md: "a nested workload never
//! deadlocks for lack of processes"). A task that waits inside for results of earlier tasks
//! blocks its worker; once `max_workers` is reached, a blocked worker runs queued tasks
//! nested on its stack, and must never nest one that waits for a frame below it.
//!
//! The model test draws random task graphs (each task gets, inside, the results of a random
//! set of earlier tasks) and runs them under small worker caps, with and without pipelining;
//! Ray's stress pattern (task i waits for tasks 0..i) is one of them.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayfork::{ObjectRef, Runtime, remote};
use rayfork_tests::watchdog;

const LIMIT: Duration = Duration::from_secs(300);

/// Waits for `deps` (inside: a nested get), then returns `1 + sum of theirs` (mod 2^32).
#[remote]
fn node(deps: Vec<ObjectRef<u64>>) -> u64 {
    let got = rayfork::get_all(&deps).unwrap();
    got.iter().fold(1u64, |a, &b| (a + b) % (1 << 32))
}

/// Submits a graph where task `i` waits for `deps[i]` (indices below `i`) and checks every
/// result against the same sum computed here.
fn run_graph(rt: &Runtime, deps: &[Vec<usize>]) {
    let mut refs: Vec<ObjectRef<u64>> = Vec::new();
    let mut want: Vec<u64> = Vec::new();
    for d in deps {
        let r = node::remote(d.iter().map(|&j| refs[j].clone()).collect::<Vec<_>>());
        want.push(d.iter().fold(1u64, |a, &j| (a + want[j]) % (1 << 32)));
        refs.push(r);
    }
    assert_eq!(rt.get_all(&refs).unwrap(), want);
}

fn runtime(cpus: usize, max_workers: usize, depth: usize) -> Runtime {
    Runtime::builder()
        .num_cpus(cpus)
        .max_workers(max_workers)
        .pipeline_depth(depth)
        .start()
        .unwrap()
}

#[test]
fn a_chain_where_each_task_waits_for_all_before_it_completes() {
    let _w = watchdog("a_chain_where_each_task_waits_for_all_before_it", LIMIT);
    let deps: Vec<Vec<usize>> = (0..200).map(|i| (0..i).collect()).collect();
    for (cpus, depth) in [(2, 0), (4, 0), (4, 4), (10, 0)] {
        let rt = runtime(cpus, cpus, depth);
        run_graph(&rt, &deps);
    }
}

#[test]
fn random_graphs_of_nested_gets_complete_under_small_worker_caps() {
    let _w = watchdog("random_graphs_of_nested_gets", LIMIT);
    for seed in 0..40u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let n = rng.random_range(10..80);
        let density = rng.random_range(0.05..0.6);
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|i| (0..i).filter(|_| rng.random_bool(density)).collect())
            .collect();
        let cpus = rng.random_range(1..5);
        let cap = cpus + rng.random_range(0..3);
        let depth = if rng.random_bool(0.5) { 0 } else { 4 };
        let rt = runtime(cpus, cap, depth);
        run_graph(&rt, &deps);
    }
}
