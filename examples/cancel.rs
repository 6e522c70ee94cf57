//! "Cancelling tasks" of ray-tasks.md, ported: a task blocked in a very long sleep is cancelled
//! and `get` reports it. Then what rayfork adds: a task that polls `is_cancelled` stops on its
//! own, `force` kills at once, a finished task is left alone, and `cancel_on_timeout`.
//!
//! Run: `cargo run --release --example cancel`.

use std::time::{Duration, Instant};

use rayfork::{CancelMode, CancelOutcome, Error, Runtime, remote};

/// The reference's `blocking_operation`: `time.sleep(10e6)`. It never looks at the cancel
/// flag, so after the grace period its worker is killed (SIGKILL) and replaced.
#[remote]
fn blocking_operation() {
    std::thread::sleep(Duration::from_secs(10_000_000));
}

/// A long loop that polls the cancel flag and stops cleanly.
#[remote]
fn count_until_cancelled() -> u64 {
    let mut n = 0u64;
    while !rayfork::is_cancelled() {
        n = std::hint::black_box(n + 1);
    }
    n
}

#[remote]
fn quick(x: u64) -> u64 {
    x + 1
}

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder().num_cpus(2).start()?;

    // The reference snippet.
    let obj_ref = blocking_operation::remote();
    let t = Instant::now();
    rayfork::cancel(&obj_ref)?;
    match rt.get(&obj_ref) {
        Err(Error::TaskCancelled { .. }) => println!(
            "Object reference was cancelled. ({:.1} ms from cancel to get)",
            t.elapsed().as_secs_f64() * 1e3
        ),
        other => panic!("expected TaskCancelled, got {other:?}"),
    }

    // A task that polls `is_cancelled()` stops by itself; its worker lives on.
    let counting = count_until_cancelled::remote();
    std::thread::sleep(Duration::from_millis(50)); // let it count a while
    let died_before = rt.stats()?.workers_died;
    let t = Instant::now();
    rayfork::cancel(&counting)?;
    assert!(rt.get(&counting).unwrap_err().is_cancelled());
    println!(
        "a polling task stopped cooperatively in {:.2} ms; workers lost: {}",
        t.elapsed().as_secs_f64() * 1e3,
        rt.stats()?.workers_died - died_before
    );

    // `force` does not wait for the grace period.
    let stuck = blocking_operation::remote();
    std::thread::sleep(Duration::from_millis(20)); // let it start
    let t = Instant::now();
    rt.cancel(&stuck, CancelMode::default().force())?;
    assert!(rt.get(&stuck).unwrap_err().is_cancelled());
    println!(
        "force cancel: {:.2} ms from cancel to get",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Cancelling a finished task does nothing, and says so.
    let done = quick::remote(41);
    assert_eq!(rt.get(&done)?, 42);
    assert_eq!(rayfork::cancel(&done)?, CancelOutcome::AlreadyFinished);
    println!(
        "cancel after finish: AlreadyFinished; the value is still {}",
        rt.get(&done)?
    );

    // A timed-out get does not cancel; cancel_on_timeout does.
    let slow = blocking_operation::remote();
    let e = rayfork::cancel_on_timeout(&slow, Duration::from_millis(10)).unwrap_err();
    println!(
        "cancel_on_timeout: {e}; then get: {}",
        rt.get(&slow).unwrap_err()
    );
    Ok(())
}
