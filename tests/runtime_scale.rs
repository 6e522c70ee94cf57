//! Many processes at once: the scheduler and the fork server never block writing to each
//! other (design.md, "Security": whatever happens, the scheduler thread never blocks), so a
//! runtime with hundreds of CPUs starts, runs tasks and stops, and hundreds of actors come
//! and go at once.

use std::time::Duration;

use rayfork::{Runtime, remote};
use rayfork_tests::watchdog;

const LIMIT: Duration = Duration::from_secs(240);

/// As many CPUs as this machine's fd limit allows for `want`: each worker holds about three
/// descriptors in the driver and the fork server.
fn cpus_for(want: usize) -> usize {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    want.min((soft as usize).saturating_sub(64) / 3)
}

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_runtime_with_hundreds_of_cpus_starts_runs_and_stops() {
    let _w = watchdog("a_runtime_with_hundreds_of_cpus", LIMIT);
    let cpus = cpus_for(600);
    assert!(cpus >= 100, "the fd limit allows only {cpus} CPUs");
    let rt = Runtime::builder().num_cpus(cpus).start().unwrap();
    let refs: Vec<_> = (0..2000u64).map(square::remote).collect();
    let got = rt.get_all(&refs).unwrap();
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, &v)| v == (i as u64) * (i as u64))
    );
    assert!(rt.stats().unwrap().workers >= cpus);
    drop(rt);
}

/// A counter actor.
pub struct Counter(u64);

#[rayfork::actor]
impl Counter {
    /// Starts at `n`.
    pub fn new(n: u64) -> Counter {
        Counter(n)
    }

    /// Adds one and returns the count.
    pub fn bump(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

#[test]
fn a_thousand_actors_come_and_go_at_once() {
    let _w = watchdog("a_thousand_actors_come_and_go_at_once", LIMIT);
    let n = cpus_for(1000);
    let rt = Runtime::builder().num_cpus(2).start().unwrap();
    let actors: Vec<_> = (0..n as u64).map(Counter::remote).collect();
    let bumps: Vec<_> = actors.iter().map(|a| a.bump()).collect();
    let got = rt.get_all(&bumps).unwrap();
    assert!(got.iter().enumerate().all(|(i, &v)| v == i as u64 + 1));
    drop(bumps);
    drop(actors);
    let gone = rayfork_tests::eventually(Duration::from_secs(120), || {
        rt.stats().unwrap().workers <= 2
    });
    assert!(gone, "{:?}", rt.stats().unwrap());
}
