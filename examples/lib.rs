//! Shared helpers of the rayfork examples (timing, section titles, side-by-side comparisons).

use std::time::{Duration, Instant};

/// Runs `f` and returns its result with the wall time it took.
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Prints a section title.
pub fn section(title: &str) {
    println!("== {title}");
}

/// Prints a wrong and a right way's times side by side.
pub fn compare(wrong: &str, t_wrong: Duration, right: &str, t_right: Duration) {
    let w = t_wrong.as_secs_f64();
    let r = t_right.as_secs_f64();
    println!("   wrong: {wrong:<40} {:>9.1} ms", w * 1e3);
    println!(
        "   right: {right:<40} {:>9.1} ms   ({:.1}x)",
        r * 1e3,
        w / r.max(1e-9)
    );
}

/// Prints a third way's time below a [`compare`], against the wrong way's time.
pub fn also(way: &str, t: Duration, t_wrong: Duration) {
    println!(
        "   also:  {way:<40} {:>9.1} ms   ({:.1}x)",
        t.as_secs_f64() * 1e3,
        t_wrong.as_secs_f64() / t.as_secs_f64().max(1e-9)
    );
}

/// Store bytes in use, polled briefly: ref drops travel to the scheduler asynchronously.
pub fn store_used_after_drops(rt: &rayfork::Runtime) -> rayfork::Result<u64> {
    let mut used = rt.stats()?.store.used;
    for _ in 0..100 {
        if used == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        used = rt.stats()?.store.used;
    }
    Ok(used)
}

/// The end of an example made of sections: checks that the store is empty again now that every
/// ref is dropped, and prints the total time.
pub fn finish_sections(rt: &rayfork::Runtime, total: Duration) -> rayfork::Result<()> {
    let used = store_used_after_drops(rt)?;
    println!("store bytes in use after all refs are dropped: {used}");
    assert_eq!(used, 0);
    println!("all sections done in {:.2} s", total.as_secs_f64());
    Ok(())
}
