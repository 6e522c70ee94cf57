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
    let _w = watchdog(
        "a_task_cannot_resize_the_shared_memory_under_the_driver",
        LIMIT,
    );
    let rt = runtime();
    let data: Vec<i64> = (0..1_000_000).collect();
    let expected: i64 = data.iter().sum();
    let arr = rt.put_array(&data).unwrap();
    let (found, resized) = rt.get(&truncate_every_memfd::remote()).unwrap();
    assert!(
        found >= 2,
        "the worker holds the arena and the flags: found {found}"
    );
    assert_eq!(resized, 0, "a task resized the shared memory");
    // Had the arena shrunk, this read (in the driver) would die of SIGBUS.
    assert_eq!(arr.iter().sum::<i64>(), expected);
    assert_eq!(rt.get(&sum::remote(arr.clone())).unwrap(), expected);
}

/// Writes its pid to `path`, then never returns.
#[remote]
fn park_forever(path: String) -> u32 {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    loop {
        std::thread::park();
    }
}

/// Claims, in a second `Hello`, to be process `pid`; then never returns.
#[remote]
fn claim_pid(path: String, pid: i32) -> u32 {
    let sent = rayfork::__private::hostile::hello(pid);
    std::fs::write(&path, if sent { "sent" } else { "failed" }).unwrap();
    loop {
        std::thread::park();
    }
}

fn read_when_written(path: &std::path::Path) -> String {
    assert!(
        rayfork_tests::eventually(LIMIT, || std::fs::metadata(path).is_ok_and(|m| m.len() > 0)),
        "{} never written",
        path.display()
    );
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn a_worker_cannot_name_a_pid_for_the_runtime_to_kill() {
    let _w = watchdog("a_worker_cannot_name_a_pid_for_the_runtime_to_kill", LIMIT);
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("rayfork-hostile-pid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let victim = park_forever::remote(p("victim"));
    let victim_pid: i32 = read_when_written(&dir.join("victim")).parse().unwrap();
    let liar = claim_pid::options()
        .max_retries(0)
        .remote(p("liar"), victim_pid);
    assert_eq!(read_when_written(&dir.join("liar")), "sent");
    // Stopping the liar must stop the liar (killed for its lie, or by the cancel), never the
    // process it named.
    rayfork::cancel_with(&liar, rayfork::CancelMode::default().force()).unwrap();
    // A safety net well inside the watchdog's: a liar that cannot be stopped fails here.
    match rayfork::get_timeout(&liar, Duration::from_secs(30)) {
        Err(rayfork::Error::TaskCancelled { .. } | rayfork::Error::WorkerCrashed { .. }) => {}
        other => panic!("the liar should have been stopped, got {other:?}"),
    }
    assert!(
        rayfork_tests::alive(victim_pid),
        "the runtime killed the named process"
    );
    rayfork::cancel_with(&victim, rayfork::CancelMode::default().force()).unwrap();
    assert!(matches!(
        rt.get(&victim),
        Err(rayfork::Error::TaskCancelled { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The driver's resident memory, in bytes.
fn driver_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Sends a frame header announcing `len` bytes and `body` bytes of it, then asks for a value
/// (a real message, which would be read as part of the frame), then never returns.
#[remote]
fn announce_frame(len: u32, body: u32) -> u32 {
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.resize(4 + body as usize, 7);
    assert!(rayfork::__private::hostile::raw(&bytes));
    let answer = rayfork::get(&rayfork::put(&1u32).unwrap());
    eprintln!("a reply came: {answer:?}");
    loop {
        std::thread::park();
    }
}

/// Asserts that `r`'s worker was killed within `patience`, that the driver grew by less than
/// `max_growth` bytes since `before`, and that the runtime still runs tasks.
fn assert_killed_cheaply(
    rt: &Runtime,
    r: &rayfork::ObjectRef<u32>,
    patience: Duration,
    before: u64,
    max_growth: u64,
) {
    match rayfork::get_timeout(r, patience) {
        Err(rayfork::Error::WorkerCrashed { .. }) => {}
        other => panic!("the worker should have been killed, got {other:?}"),
    }
    let grown = driver_rss().saturating_sub(before);
    assert!(grown < max_growth, "the driver grew by {grown} bytes");
    let small = rt.put_array(&[1i64, 2]).unwrap();
    assert_eq!(rt.get(&sum::remote(small)).unwrap(), 3);
}

#[test]
fn an_oversized_frame_header_kills_its_worker_without_an_allocation() {
    let _w = watchdog("an_oversized_frame_header_kills_its_worker", LIMIT);
    let rt = runtime();
    let before = driver_rss();
    let r = announce_frame::options().max_retries(0).remote(1 << 30, 0);
    assert_killed_cheaply(&rt, &r, Duration::from_secs(60), before, 256 << 20);
}

#[test]
fn a_stalled_partial_frame_kills_its_worker_and_costs_what_arrived() {
    let _w = watchdog("a_stalled_partial_frame_kills_its_worker", LIMIT);
    let rt = runtime();
    let before = driver_rss();
    // Under the limit, but only 1 KiB of it ever comes.
    let r = announce_frame::options()
        .max_retries(0)
        .remote(200 << 20, 1024);
    assert_killed_cheaply(&rt, &r, Duration::from_secs(90), before, 64 << 20);
}

/// Overwrites every claim cell of the shared table (every worker's, rule 11 of the
/// scheduler) until `stop` exists; returns how many rounds it did.
#[remote]
fn scribble_claims(stop: String) -> u64 {
    let mut rounds = 0u64;
    while !std::path::Path::new(&stop).exists() {
        assert!(rayfork::__private::hostile::scribble_claims(
            0x5eed_0000 + rounds
        ));
        rounds += 1;
    }
    rounds
}

#[remote]
fn tiny(i: u64) -> u64 {
    i + 1
}

#[test]
fn a_worker_scribbling_over_the_claim_cells_cannot_lose_other_tasks() {
    let _w = watchdog("a_worker_scribbling_over_the_claim_cells", LIMIT);
    let rt = Runtime::builder().num_cpus(3).start().unwrap();
    let dir = std::env::temp_dir().join(format!("rayfork-hostile-claims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stop = dir.join("stop").to_string_lossy().into_owned();
    // Half a CPU: no task of one CPU is queued behind it (a task queued behind a frame that
    // never ends waits for it, hostile or not; what the scribbler must not do is lose the
    // tasks of the other workers).
    let scribbler = scribble_claims::options()
        .num_cpus(0.5)
        .remote(stop.clone());
    // Small tasks queue behind each other on the other workers (pipelining) while the
    // scribbler overwrites their claim cells.
    let refs: Vec<_> = (0..3000u64).map(tiny::remote).collect();
    let (ready, pending) = rayfork::wait(&refs, refs.len(), Some(Duration::from_secs(60))).unwrap();
    std::fs::write(&stop, b"stop").unwrap();
    assert!(rt.get(&scribbler).unwrap() > 0);
    assert!(
        pending.is_empty(),
        "{} of {} tasks were lost: {:?}\n{}",
        pending.len(),
        refs.len(),
        rt.stats().unwrap(),
        rt.summary().unwrap()
    );
    assert_eq!(ready.len(), refs.len());
    let got = rt.get_all(&refs).unwrap();
    assert!(got.iter().enumerate().all(|(i, &v)| v == i as u64 + 1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Drops `times` references to the array it was given, more than it holds.
#[remote]
fn drop_refs_of(a: Array<i64>, times: i32) -> u32 {
    let id = a.id().as_u128();
    assert!(rayfork::__private::hostile::ref_ops(&[(id, -times)]));
    // A round trip: the forged operations are applied before this answer comes.
    let _ = rayfork::get(&rayfork::put(&0u8).unwrap());
    0
}

#[test]
fn a_worker_cannot_drop_references_it_does_not_hold() {
    let _w = watchdog("a_worker_cannot_drop_references_it_does_not_hold", LIMIT);
    let rt = runtime();
    let data: Vec<i64> = (0..1_000_000).collect();
    let expected: i64 = data.iter().sum();
    let arr = rt.put_array(&data).unwrap();
    let r = drop_refs_of::options()
        .max_retries(0)
        .remote(arr.clone(), 8);
    match rt.get(&r) {
        Err(rayfork::Error::WorkerCrashed { .. }) => {}
        other => panic!("the worker should have been killed, got {other:?}"),
    }
    // Had the array been freed, new objects would take its memory and the driver would read
    // their bytes through its view.
    let others: Vec<_> = (0..4)
        .map(|i| rt.put_array(&vec![i as i64; 1_000_000]).unwrap())
        .collect();
    assert_eq!(arr.iter().sum::<i64>(), expected);
    assert_eq!(rt.get(&sum::remote(arr.clone())).unwrap(), expected);
    drop(others);
}

/// Takes references to an id it was never given (`victim`, passed as a bare number): a
/// forged increment that would pin the object, or keep it past its owner's drop.
#[remote]
fn pin_an_id_it_was_not_given(victim: u128) -> u32 {
    assert!(rayfork::__private::hostile::ref_ops(&[(victim, 1000)]));
    let _ = rayfork::get(&rayfork::put(&0u8).unwrap());
    0
}

#[test]
fn a_worker_cannot_take_references_it_was_never_given() {
    let _w = watchdog("a_worker_cannot_take_references_it_was_never_given", LIMIT);
    let rt = runtime();
    let arr = rt.put_array(&vec![7i64; 1 << 20]).unwrap();
    let victim = arr.id().as_u128();
    let r = pin_an_id_it_was_not_given::options()
        .max_retries(0)
        .remote(victim);
    match rt.get(&r) {
        Err(rayfork::Error::WorkerCrashed { .. }) => {}
        other => panic!("the worker should have been killed, got {other:?}"),
    }
    // Nothing pins the array: dropping the driver's handle frees it.
    drop((arr, r));
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}

/// Reads an object by a number it was handed as plain data (it holds no reference to it):
/// the answer would make it "given" and let it pin the object.
#[remote]
fn read_an_id_it_was_not_given(victim: u128) -> bool {
    rayfork::__private::hostile::get_by_id(victim)
}

#[test]
fn a_worker_cannot_read_an_object_it_holds_no_reference_to() {
    let _w = watchdog(
        "a_worker_cannot_read_an_object_it_holds_no_reference_to",
        LIMIT,
    );
    let rt = runtime();
    let arr = rt.put_array(&vec![7i64; 1 << 10]).unwrap();
    let r = read_an_id_it_was_not_given::options()
        .max_retries(0)
        .remote(arr.id().as_u128());
    match rt.get(&r) {
        Err(rayfork::Error::WorkerCrashed { .. }) => {}
        other => panic!("the worker should have been killed, got {other:?}"),
    }
    assert_eq!(arr[0], 7);
    drop((arr, r));
    rayfork_tests::assert_runtime_drains(&rt, LIMIT);
}
