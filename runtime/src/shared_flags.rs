//! The shared flags: a small shared-memory table of atomic words that the scheduler and the
//! workers both touch without a message. Two kinds live in it:
//!
//! - **Cancel flags**, one per (worker slot, frame depth): the scheduler raises them and a task
//!   polls its own through `rayfork::is_cancelled()` (scheduler rule 9).
//! - **Claim cells**, `RING` per *lane* (a lane is lent to one live worker at a time): a task
//!   queued on a busy worker (scheduler rule 11, rule 6 in protocol.rs) is armed in a
//!   cell with a unique *ticket*; whoever swaps the ticket out first owns the task: the worker
//!   (it runs it) or the scheduler (it took it back). One compare-exchange each side, no message.
//!
//! Owns the table's mapping, its layout and every atomic access to it; nothing else touches the
//! words. The table is its own memfd mapping (a [`ShmArena`] used as plain shared memory, not the
//! object store's arena), created by the driver, inherited by the fork server over `exec` and by
//! the workers over `fork`.
//!
//! Layout: the arena header, then a `u64` magic and version (written last, checked on attach),
//! then `SLOTS * DEPTH` cancel words, then `LANES * RING` claim cells. Cancel word
//! `(slot % SLOTS, depth)` holds the *tag* of the last task
//! cancelled while running at that depth of that worker's stack (0 = none). A task reads the word
//! of its own frame and compares it with its own tag, so a stale word (left by an earlier task at
//! the same place) or a frame above or below never reads as cancelled. Two live workers whose
//! slots collide modulo `SLOTS` can at worst overwrite each other's flag, which hides a
//! cooperative request; the kill after the grace period still stops the task (scheduler
//! rule 9), so a collision can delay a cancel, never invent one.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rayfork_plasma::{Arena, HEADER_SIZE, ShmArena};

use crate::protocol::Id;
use crate::{Error, Result};

/// Worker slots the table distinguishes (slots are taken modulo this).
const SLOTS: u64 = 512;
/// Frames per worker stack that get a flag; deeper nested frames are only stopped by the kill.
const DEPTH: u64 = 16;
/// Lanes of claim cells: at most this many live workers can have tasks queued at once.
pub(crate) const LANES: u32 = 1024;
/// Claim cells per lane: a worker's queued tasks not yet settled (claimed or taken back, as the
/// scheduler last heard) never number more, so a cell is never armed twice while in use.
pub(crate) const RING: u64 = 16;
/// `"RFCANCEL"` as a little-endian `u64`, then the layout version.
const MAGIC: u64 = u64::from_le_bytes(*b"RFCANCEL");
const VERSION: u64 = 2;
/// The first claim cell's word.
const CELLS: u64 = 2 + SLOTS * DEPTH;
/// Two header words (magic, version), the cancel flags, the claim cells.
const WORDS: u64 = CELLS + LANES as u64 * RING;

/// The shared table of cancel flags and claim cells.
pub(crate) struct SharedFlags {
    mem: ShmArena,
}

impl std::fmt::Debug for SharedFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedFlags")
    }
}

/// A claim cell: which lane, and which of its `RING` cells (a queued task's sequence number
/// modulo `RING`).
pub(crate) fn cell(lane: u32, seq: u64) -> u32 {
    debug_assert!(lane < LANES);
    lane * RING as u32 + (seq % RING) as u32
}

/// The tag of a task: its id folded to a non-zero `u64`.
pub(crate) fn tag(task: Id) -> u64 {
    let t = (task as u64) ^ ((task >> 64) as u64).rotate_left(40);
    if t == 0 { 1 } else { t }
}

impl SharedFlags {
    /// Creates a zeroed table (in the driver).
    pub(crate) fn create() -> Result<SharedFlags> {
        let mem = ShmArena::create(HEADER_SIZE + WORDS * 8)
            .map_err(|e| Error::os("create the cancel flags", e))?;
        let flags = SharedFlags { mem };
        // A fresh memfd is zeroed: every flag is down. The magic goes last.
        flags.word(1).store(VERSION, Ordering::Relaxed);
        flags.word(0).store(MAGIC, Ordering::Release);
        Ok(flags)
    }

    /// Attaches the table from its fd (in the fork server) and checks its magic and version.
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<SharedFlags> {
        let mem = ShmArena::from_fd(fd).map_err(|e| Error::os("attach the cancel flags", e))?;
        if mem.capacity() < HEADER_SIZE + WORDS * 8 {
            return Err(Error::Runtime(
                "the cancel flags mapping is too small".into(),
            ));
        }
        let flags = SharedFlags { mem };
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
        // The mapping is page aligned and at least HEADER_SIZE + WORDS * 8 bytes (checked in
        // `from_fd`, made so in `create`); every process accesses its words only as atomics.
        // SAFETY: `offset` is in bounds and 8-byte aligned (`i < WORDS`), the word is
        // atomic-only, and the mapping outlives the reference, which borrows `self`.
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

    /// The word of claim cell `cell`, if it is one.
    fn claim_word(&self, cell: u32) -> Option<&AtomicU64> {
        (cell < LANES * RING as u32).then(|| self.word(CELLS + u64::from(cell)))
    }

    /// Arms `cell` with `ticket` (non-zero) before the task it names is sent (in the driver).
    pub(crate) fn arm(&self, cell: u32, ticket: u64) {
        debug_assert_ne!(ticket, 0);
        if let Some(w) = self.claim_word(cell) {
            w.store(ticket, Ordering::Release);
        }
    }

    /// Takes the task armed in `cell` with `ticket`: true for exactly one of the scheduler
    /// (taking it back) and the worker (claiming it to run), false for the other, and false for
    /// a cell out of range or holding another ticket.
    pub(crate) fn take(&self, cell: u32, ticket: u64) -> bool {
        self.claim_word(cell).is_some_and(|w| {
            w.compare_exchange(ticket, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_is_seen_only_by_its_own_frame() {
        let f = SharedFlags::create().unwrap();
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
        let f = SharedFlags::create().unwrap();
        let fd = f.fd().try_clone_to_owned().unwrap();
        let g = SharedFlags::from_fd(fd).unwrap();
        assert!(f.raise(9, 0, 42));
        assert!(g.is_raised(9, 0, tag(42)));
        // The store's own arena is not a flag table.
        let store = ShmArena::create(1 << 20).unwrap();
        let fd = store.fd().try_clone_to_owned().unwrap();
        assert!(SharedFlags::from_fd(fd).is_err());
    }

    #[test]
    fn a_claim_is_won_once() {
        let f = SharedFlags::create().unwrap();
        let c = cell(LANES - 1, 7);
        assert!(!f.take(c, 5), "an unarmed cell holds nothing");
        f.arm(c, 5);
        assert!(!f.take(c, 6), "another ticket");
        assert!(f.take(c, 5));
        assert!(!f.take(c, 5), "the second taker loses");
        // Cells of different lanes and sequence numbers are distinct words.
        f.arm(cell(0, 1), 9);
        assert!(!f.take(cell(1, 1), 9));
        assert!(!f.take(cell(0, 1 + RING + 1), 9));
        assert!(f.take(cell(0, 1 + RING), 9));
        assert!(!f.take(LANES * RING as u32, 9), "out of range");
    }

    #[test]
    fn tags_are_never_zero() {
        assert_ne!(tag(0), 0);
        assert_ne!(tag(1), tag(1 | (1 << 64)));
    }
}
