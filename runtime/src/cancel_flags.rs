//! The cancel flags: a small shared-memory table of atomic words, one per (worker slot, frame
//! depth), that the scheduler raises and a task polls through `rayfork::is_cancelled()`.
//!
//! Owns the table's mapping, its layout and every atomic access to it; nothing else touches the
//! words. The table is its own memfd mapping (a [`ShmArena`] used as plain shared memory, not the
//! object store's arena), created by the driver, inherited by the fork server over `exec` and by
//! the workers over `fork`.
//!
//! Layout: the arena header, then a `u64` magic and version (written last, checked on attach),
//! then `SLOTS * DEPTH` words. Word `(slot % SLOTS, depth)` holds the *tag* of the last task
//! cancelled while running at that depth of that worker's stack (0 = none). A task reads the word
//! of its own frame and compares it with its own tag, so a stale word (left by an earlier task at
//! the same place) or a frame above or below never reads as cancelled. Two live workers whose
//! slots collide modulo `SLOTS` can at worst overwrite each other's flag, which hides a
//! cooperative request; the kill after the grace period still stops the task (rule 9 in
//! scheduler.rs), so a collision can delay a cancel, never invent one.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rayfork_plasma::{Arena, HEADER_SIZE, ShmArena};

use crate::protocol::Id;
use crate::{Error, Result};

/// Worker slots the table distinguishes (slots are taken modulo this).
const SLOTS: u64 = 512;
/// Frames per worker stack that get a flag; deeper nested frames are only stopped by the kill.
const DEPTH: u64 = 16;
/// `"RFCANCEL"` as a little-endian `u64`, then the layout version.
const MAGIC: u64 = u64::from_le_bytes(*b"RFCANCEL");
const VERSION: u64 = 1;
/// Two header words (magic, version) before the flags.
const WORDS: u64 = 2 + SLOTS * DEPTH;

/// The shared table of cancel flags.
pub(crate) struct CancelFlags {
    mem: ShmArena,
}

impl std::fmt::Debug for CancelFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelFlags")
    }
}

/// The tag of a task: its id folded to a non-zero `u64`.
pub(crate) fn tag(task: Id) -> u64 {
    let t = (task as u64) ^ ((task >> 64) as u64).rotate_left(40);
    if t == 0 { 1 } else { t }
}

impl CancelFlags {
    /// Creates a zeroed table (in the driver).
    pub(crate) fn create() -> Result<CancelFlags> {
        let mem = ShmArena::create(HEADER_SIZE + WORDS * 8)
            .map_err(|e| Error::os("create the cancel flags", e))?;
        let flags = CancelFlags { mem };
        // A fresh memfd is zeroed: every flag is down. The magic goes last.
        flags.word(1).store(VERSION, Ordering::Relaxed);
        flags.word(0).store(MAGIC, Ordering::Release);
        Ok(flags)
    }

    /// Attaches the table from its fd (in the fork server) and checks its magic and version.
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<CancelFlags> {
        let mem = ShmArena::from_fd(fd).map_err(|e| Error::os("attach the cancel flags", e))?;
        if mem.capacity() < HEADER_SIZE + WORDS * 8 {
            return Err(Error::Runtime(
                "the cancel flags mapping is too small".into(),
            ));
        }
        let flags = CancelFlags { mem };
        if flags.word(0).load(Ordering::Acquire) != MAGIC
            || flags.word(1).load(Ordering::Relaxed) != VERSION
        {
            return Err(Error::Runtime(
                "the cancel flags mapping has a bad magic or version (driver and worker \
                 programs built from different rayfork versions?)"
                    .into(),
            ));
        }
        Ok(flags)
    }

    /// The memfd (`FD_CLOEXEC` set), to hand to the fork server.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.mem.fd()
    }

    /// Word `i` of the table.
    fn word(&self, i: u64) -> &AtomicU64 {
        assert!(i < WORDS, "cancel flag index out of range");
        let offset = (HEADER_SIZE + i * 8) as usize;
        // The mapping is at least HEADER_SIZE + WORDS * 8 bytes (checked in `from_fd`, made so
        // in `create`) and page aligned; its words are only ever accessed as atomics, by every
        // process that maps them; it lives as long as `self`, which the reference borrows.
        // SAFETY: `offset` is in bounds and 8-byte aligned, the word is atomic-only, and the
        // mapping outlives the returned reference (all three as said just above).
        unsafe { &*self.mem.base().as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn index(slot: u32, depth: usize) -> Option<u64> {
        let depth = depth as u64;
        (depth < DEPTH).then(|| 2 + (u64::from(slot) % SLOTS) * DEPTH + depth)
    }

    /// Raises the flag of `task`, running at `depth` of worker `slot`'s stack (in the driver).
    /// Returns false when the frame is too deep to have a flag.
    pub(crate) fn raise(&self, slot: u32, depth: usize, task: Id) -> bool {
        match Self::index(slot, depth) {
            Some(i) => {
                self.word(i).store(tag(task), Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// True if the task with tag `tag`, running at `depth` of worker `slot`'s stack, has been
    /// cancelled (in the worker). One acquire load.
    pub(crate) fn is_raised(&self, slot: u32, depth: usize, tag: u64) -> bool {
        Self::index(slot, depth).is_some_and(|i| self.word(i).load(Ordering::Acquire) == tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_is_seen_only_by_its_own_frame() {
        let f = CancelFlags::create().unwrap();
        let (a, b) = (7u128 | (1 << 64), 8u128 | (1 << 64));
        assert!(!f.is_raised(3, 0, tag(a)));
        assert!(f.raise(3, 1, a));
        assert!(f.is_raised(3, 1, tag(a)));
        // Another task at the same place, the frame below, another worker: not cancelled.
        assert!(!f.is_raised(3, 1, tag(b)));
        assert!(!f.is_raised(3, 0, tag(a)));
        assert!(!f.is_raised(4, 1, tag(a)));
        // Too deep for a flag.
        assert!(!f.raise(3, DEPTH as usize, a));
        assert!(!f.is_raised(3, DEPTH as usize, tag(a)));
    }

    #[test]
    fn attach_checks_the_magic() {
        let f = CancelFlags::create().unwrap();
        let fd = f.fd().try_clone_to_owned().unwrap();
        let g = CancelFlags::from_fd(fd).unwrap();
        assert!(f.raise(9, 0, 42));
        assert!(g.is_raised(9, 0, tag(42)));
        // The store's own arena is not a flag table.
        let store = ShmArena::create(1 << 20).unwrap();
        let fd = store.fd().try_clone_to_owned().unwrap();
        assert!(CancelFlags::from_fd(fd).is_err());
    }

    #[test]
    fn tags_are_never_zero() {
        assert_ne!(tag(0), 0);
        assert_ne!(tag(1), tag(1 | (1 << 64)));
    }
}
