//! Remote functions linked into both the `worker_program` test driver and the external worker
//! program `rayfork-test-worker` (tests/bin/worker.rs), so both register them by name.

use rayfork::remote;

/// The worker's pid and the path of the executable it runs.
#[remote]
pub fn whoami() -> (u32, String) {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (std::process::id(), exe)
}

/// A task that needs its argument resolved and returns a derived value.
#[remote]
pub fn triple(x: i64) -> i64 {
    3 * x
}
