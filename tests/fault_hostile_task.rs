//! A task is untrusted code in its own process (design.md, "Security"): whatever it does to
//! the runtime's file descriptors, sockets and shared memory, the driver and the other tasks
//! survive and stay correct. Each test here runs a task that really does the harmful thing.

use std::time::Duration;

use rayfork::{Array, Runtime, remote};
use rayfork_tests::watchdog;

const LIMIT: Duration = Duration::from_secs(120);

fn runtime() -> Runtime {
    Runtime::builder().num_cpus(2).start().unwrap()
}

/// Tries to resize every memfd this worker holds (the object store's arena and the shared
/// flags): returns how many it found and how many resizes the kernel allowed.
#[remote]
fn truncate_every_memfd() -> (u32, u32) {
    let (mut found, mut resized) = (0, 0);
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("/memfd:") {
            continue;
        }
        found += 1;
        // A new open file description of the same memfd: resizing it resizes the memfd.
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(entry.path()) else {
            continue;
        };
        if f.set_len(0).is_ok() {
            resized += 1;
        }
        if f.set_len(1 << 40).is_ok() {
            resized += 1;
        }
    }
    (found, resized)
}

#[remote]
fn sum(a: Array<i64>) -> i64 {
    a.iter().sum()
}

#[test]
fn a_task_cannot_resize_the_shared_memory_under_the_driver() {
    let _w = watchdog("a_task_cannot_resize_the_shared_memory_under_the_driver", LIMIT);
    let rt = runtime();
    let data: Vec<i64> = (0..1_000_000).collect();
    let expected: i64 = data.iter().sum();
    let arr = rt.put_array(&data).unwrap();
    let (found, resized) = rt.get(&truncate_every_memfd::remote()).unwrap();
    assert!(found >= 2, "the worker holds the arena and the flags: found {found}");
    assert_eq!(resized, 0, "a task resized the shared memory");
    // Had the arena shrunk, this read (in the driver) would die of SIGBUS.
    assert_eq!(arr.iter().sum::<i64>(), expected);
    assert_eq!(rt.get(&sum::remote(arr.clone())).unwrap(), expected);
}
