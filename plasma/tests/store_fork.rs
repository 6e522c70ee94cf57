//! Multi-process tests with real `fork()`: a [`ShmArena`] is shared with forked children, which
//! read and write objects zero-copy; a child killed mid-write is reclaimed by `client_gone`.
//!
//! Children do only simple work (no allocation, no locks) and leave with `libc::_exit`, never
//! returning into the test harness. The parent waits with `waitpid` under a watchdog that kills
//! a hung child and fails the test with a message, so nothing can hang forever.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use rayfork_plasma::{Arena, ClientId, ObjectId, ShmArena, Store, cast_slice};

const WATCHDOG: Duration = Duration::from_secs(120);
const PARENT: ClientId = ClientId(0);
const CHILD: ClientId = ClientId(7);

/// Forks; the child runs `f` and `_exit`s with its return value (101 if it panicked).
fn spawn_child(f: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child only runs `f`, which by the rules of this file does no allocation and
    // takes no locks (async-signal-safe work on memory it inherited), then calls `_exit`.
    match unsafe { fork() }.expect("fork failed") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: `_exit` ends the child immediately without running the harness's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

/// Waits for `pid`; a watchdog thread SIGKILLs it after [`WATCHDOG`] and the test then fails.
fn wait_with_watchdog(pid: Pid) -> WaitStatus {
    let (done, rx) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(WATCHDOG) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = kill(pid, Signal::SIGKILL);
            true
        } else {
            false
        }
    });
    let status = waitpid(pid, None).expect("waitpid failed");
    let _ = done.send(());
    let fired = dog.join().unwrap();
    assert!(
        !fired,
        "watchdog: child {pid} hung for {WATCHDOG:?} and was killed"
    );
    status
}

fn checksum(words: &[u64]) -> u64 {
    words.iter().enumerate().fold(0u64, |acc, (i, &w)| {
        acc.rotate_left(5) ^ w.wrapping_mul(i as u64 | 1)
    })
}

fn assert_empty<A: Arena>(store: &Store<A>) {
    store.check_invariants().unwrap();
    let st = store.stats();
    assert_eq!(st.used, 0, "{st:?}");
    assert_eq!(st.live_objects, 0, "{st:?}");
    assert_eq!(st.pinned_objects, 0, "{st:?}");
    assert_eq!(st.unsealed_objects, 0, "{st:?}");
}

#[test]
fn child_reads_sealed_64mib_zero_copy() {
    const SIZE: u64 = 64 << 20;
    let mut store = Store::new(Arc::new(ShmArena::create(SIZE + (1 << 20)).unwrap()));
    let id = ObjectId::from_u128(1);
    store.create(id, SIZE, PARENT).unwrap();
    let buf = store.write(id, PARENT).unwrap();
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    store.seal(id).unwrap();
    let d = store.get(id, CHILD).unwrap();
    let expected = checksum(cast_slice(store.arena().bytes(d).unwrap()).unwrap());
    let arena = Arc::clone(store.arena());
    let parent_ptr = arena.bytes(d).unwrap().as_ptr() as usize;

    let pid = spawn_child(|| {
        let Ok(bytes) = arena.bytes(d) else { return 2 };
        // Zero-copy: the very pages the parent wrote, at the inherited address.
        if bytes.as_ptr() as usize != parent_ptr {
            return 3;
        }
        let Ok(words) = cast_slice::<u64>(bytes) else {
            return 4;
        };
        if checksum(words) == expected { 0 } else { 1 }
    });
    assert_eq!(wait_with_watchdog(pid), WaitStatus::Exited(pid, 0));

    store.release(id, CHILD).unwrap();
    store.delete(id).unwrap();
    assert_empty(&store);
}

#[test]
fn child_fills_object_parent_seals_and_reads() {
    const SIZE: u64 = 3 << 20;
    let mut store = Store::new(Arc::new(ShmArena::create(8 << 20).unwrap()));
    let id = ObjectId::from_u128(2);
    // The parent (the store's owner) creates the object on the child's behalf...
    let d = store.create(id, SIZE, CHILD).unwrap();
    let base = store.arena().base().as_ptr() as u64;
    let pid = spawn_child(|| {
        // ...and the child writes through its inherited mapping, via its copy of the table.
        let Ok(buf) = store.write(id, CHILD) else {
            return 2;
        };
        if buf.as_ptr() as u64 != base + d.offset {
            return 3;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        0
    });
    assert_eq!(wait_with_watchdog(pid), WaitStatus::Exited(pid, 0));

    store.seal(id).unwrap();
    let d2 = store.get(id, PARENT).unwrap();
    assert_eq!(d2, d);
    let bytes = store.arena().bytes(d2).unwrap();
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));
    store.release(id, PARENT).unwrap();
    store.delete(id).unwrap();
    assert_empty(&store);
}

#[test]
fn child_killed_mid_write_is_reclaimed_by_client_gone() {
    const SIZE: u64 = 16 << 20;
    let mut store = Store::new(Arc::new(ShmArena::create(32 << 20).unwrap()));
    let keep = ObjectId::from_u128(9);
    store.create(keep, 100, PARENT).unwrap();
    store.seal(keep).unwrap();
    store.get(keep, CHILD).unwrap();
    let id = ObjectId::from_u128(3);
    store.create(id, SIZE, CHILD).unwrap();
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();

    let pid = spawn_child(|| {
        let Ok(buf) = store.write(id, CHILD) else {
            return 2;
        };
        buf[0] = 1;
        if nix::unistd::write(&wr, b"w") != Ok(1) {
            return 3;
        }
        // Keep writing until killed.
        loop {
            for b in buf.iter_mut() {
                *b = b.wrapping_add(1);
            }
            std::hint::black_box(&mut *buf);
        }
    });
    drop(wr);
    let mut started = [0u8; 1];
    let n = nix::unistd::read(&rd, &mut started).unwrap();
    assert_eq!(n, 1, "child exited before it started writing");
    kill(pid, Signal::SIGKILL).unwrap();
    assert!(matches!(
        wait_with_watchdog(pid),
        WaitStatus::Signaled(p, Signal::SIGKILL, _) if p == pid
    ));

    // The runtime's reaction to a dead worker: its pins and its unsealed object go.
    assert_eq!(store.stats().unsealed_objects, 1);
    assert_eq!(store.stats().pinned_objects, 1);
    store.client_gone(CHILD);
    assert!(!store.contains(id));
    assert_eq!(store.stats().pinned_objects, 0);
    store.delete(keep).unwrap();
    assert_empty(&store);
    // The memory is reusable at once.
    store.create(id, SIZE, PARENT).unwrap();
    store.abort(id).unwrap();
    assert_empty(&store);
}

#[test]
fn from_fd_on_fresh_mapping_sees_the_bytes() {
    let mut store = Store::new(Arc::new(ShmArena::create(1 << 20).unwrap()));
    let id = ObjectId::from_u128(4);
    store.create(id, 11, PARENT).unwrap();
    store
        .write(id, PARENT)
        .unwrap()
        .copy_from_slice(b"hello arena");
    store.seal(id).unwrap();
    let d = store.get(id, PARENT).unwrap();

    // What a process that received the fd over exec or SCM_RIGHTS does.
    let fd = store.arena().fd().try_clone_to_owned().unwrap();
    let other = ShmArena::from_fd(fd).unwrap();
    assert_ne!(other.base(), store.arena().base());
    assert_eq!(other.capacity(), store.arena().capacity());
    assert_eq!(other.bytes(d).unwrap(), b"hello arena");
    drop(other);
    // The original mapping is unaffected by the second one going away.
    assert_eq!(store.arena().bytes(d).unwrap(), b"hello arena");
    store.release(id, PARENT).unwrap();
    store.delete(id).unwrap();
    assert_empty(&store);
}

#[test]
fn from_fd_in_forked_child_sees_the_bytes() {
    let mut store = Store::new(Arc::new(ShmArena::create(1 << 20).unwrap()));
    let id = ObjectId::from_u128(5);
    store.create(id, 8, PARENT).unwrap();
    store
        .write(id, PARENT)
        .unwrap()
        .copy_from_slice(b"fd-share");
    store.seal(id).unwrap();
    let d = store.get(id, CHILD).unwrap();
    // Dup before forking: the child attaches a second, independent mapping.
    let fd = store.arena().fd().try_clone_to_owned().unwrap();
    let pid = spawn_child(move || {
        // mmap and fstat are syscalls; ShmArena::from_fd allocates nothing on success.
        match ShmArena::from_fd(fd) {
            Ok(a) if a.bytes(d).map(|b| b == b"fd-share").unwrap_or(false) => 0,
            Ok(_) => 1,
            Err(_) => 2,
        }
    });
    assert_eq!(wait_with_watchdog(pid), WaitStatus::Exited(pid, 0));
    store.client_gone(CHILD);
    store.delete(id).unwrap();
    assert_empty(&store);
}
