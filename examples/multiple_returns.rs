//! The "Multiple returns" snippet of the Ray "Tasks" guide (ray-tasks.md), ported: by default a
//! task returns one object ref, even for a tuple; with `num_returns = 3` it returns three refs,
//! each resolving to its element on its own. Then a little more than the guide: one return
//! passed straight to another task, and a large element that goes through the object store
//! under its own id.
//!
//! Run with `cargo run --release --example multiple_returns`.

use rayfork::{Runtime, remote};

/// By default, a task only returns a single object ref.
#[remote]
fn return_single() -> (i64, i64, i64) {
    (0, 1, 2)
}

/// However, tasks can be configured to return multiple object refs.
#[remote(num_returns = 3)]
fn return_multiple() -> (i64, i64, i64) {
    (0, 1, 2)
}

/// A small header and a large body (8 MB), as separate objects.
#[remote(num_returns = 2)]
fn load(n: usize) -> (String, Vec<u64>) {
    (format!("{n} numbers"), (0..n as u64).collect())
}

/// Sums a body; receives the value of the ref it is given.
#[remote]
fn total(body: Vec<u64>) -> u64 {
    body.iter().sum()
}

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder().num_cpus(2).start()?;

    let object_ref = return_single::remote();
    let v = rt.get(&object_ref)?;
    println!("get(return_single::remote()) = {v:?}");
    assert_eq!(v, (0, 1, 2));

    let (object_ref0, object_ref1, object_ref2) = return_multiple::remote();
    let (v0, v1, v2) = (
        rt.get(&object_ref0)?,
        rt.get(&object_ref1)?,
        rt.get(&object_ref2)?,
    );
    println!("return_multiple::remote() gave 3 refs: get = {v0}, {v1}, {v2}");
    assert_eq!((v0, v1, v2), (0, 1, 2));

    // Each return is its own object: the driver fetches the small header only, and passes the
    // large body's ref to another task without ever fetching it.
    let n = 1_000_000;
    let (header, body) = load::remote(n);
    let sum = total::remote(&body);
    println!(
        "load::remote({n}) -> header {:?}; total::remote(&body) = {}",
        rt.get(&header)?,
        rt.get(&sum)?
    );
    assert_eq!(rt.get(&sum)?, (0..n as u64).sum::<u64>());
    println!(
        "store bytes in use while the body is referenced: {}",
        rt.stats()?.store.used
    );
    drop((header, body, sum));
    let used = rt.stats()?.store.used;
    println!("store bytes in use after the refs are dropped: {used}");
    assert_eq!(used, 0);
    Ok(())
}
