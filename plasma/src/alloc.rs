//! The allocator: owns which byte ranges of the arena's data area are free, as offsets, in
//! ordinary process memory (never in the arena, so a process that dies mid-write cannot corrupt
//! it).
//!
//! Best fit over a free list kept in two ordered maps, one by offset (for coalescing with both
//! neighbours on free) and one by `(size, recency)` (for the smallest block that fits, and among
//! blocks of that size the most recently freed one, whose pages are most likely still faulted in
//! and in cache). Blocks are carved from their low end, so a freed block that merges back into
//! the untouched tail is reused from its warm start first.
//!
//! Every allocation is a multiple of [`ALIGN`] bytes at an [`ALIGN`]-aligned offset; requests of
//! [`PAGE`] bytes or more are rounded to whole pages at page-aligned offsets. The rounded size is
//! what [`OffsetAllocator::used`] counts, so it returns exactly to zero when everything is freed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Alignment (and size granularity) of every allocation.
pub const ALIGN: u64 = 64;
/// Requests of at least this many bytes are page aligned and rounded to whole pages.
pub const PAGE: u64 = 4096;

/// A block handed out by [`OffsetAllocator::alloc`]: give it back with
/// [`OffsetAllocator::free`] exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Allocation {
    /// Offset of the block (in the same coordinates as the range the allocator manages).
    pub offset: u64,
    /// Size of the block after rounding; at least the requested size.
    pub size: u64,
}

/// An offset allocator over `[start, end)`, with its metadata in process memory.
///
/// ```
/// use rayfork_plasma::OffsetAllocator;
/// let mut a = OffsetAllocator::new(4096, 4096 + (1 << 20));
/// let x = a.alloc(100).unwrap();
/// assert_eq!((x.offset % 64, x.size), (0, 128));
/// let big = a.alloc(5000).unwrap();
/// assert_eq!((big.offset % 4096, big.size), (0, 8192));
/// a.free(x);
/// a.free(big);
/// assert_eq!(a.used(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct OffsetAllocator {
    start: u64,
    end: u64,
    /// Free blocks keyed by their *end*: end -> (start, stamp). Keyed by end so that carving an
    /// allocation off the low end of a block updates its entry in place.
    by_end: BTreeMap<u64, (u64, u64)>,
    /// Free blocks by (size, most recent first, start).
    by_size: BTreeSet<(u64, Reverse<u64>, u64)>,
    /// Monotonic counter; a block's stamp is the value when it was last freed.
    clock: u64,
    used: u64,
    allocations: u64,
}

impl OffsetAllocator {
    /// Manages `[start, end)`. `start` is rounded up and `end` down to [`ALIGN`].
    pub fn new(start: u64, end: u64) -> Self {
        let start = start.next_multiple_of(ALIGN);
        let end = (end / ALIGN * ALIGN).max(start);
        let mut a = OffsetAllocator {
            start,
            end,
            by_end: BTreeMap::new(),
            by_size: BTreeSet::new(),
            clock: 0,
            used: 0,
            allocations: 0,
        };
        if end > start {
            a.by_end.insert(end, (start, 0));
            a.by_size.insert((end - start, Reverse(0), start));
        }
        a
    }

    /// The size `alloc(size)` would reserve: at least [`ALIGN`], a multiple of [`ALIGN`], and a
    /// multiple of [`PAGE`] from [`PAGE`] bytes up. `None` if it overflows.
    pub fn rounded(size: u64) -> Option<u64> {
        if size >= PAGE {
            size.checked_next_multiple_of(PAGE)
        } else {
            Some(size.max(1).next_multiple_of(ALIGN))
        }
    }

    /// Reserves a block of at least `size` bytes (size 0 reserves [`ALIGN`] bytes, so every
    /// allocation has a distinct offset). `None` if no free block fits.
    pub fn alloc(&mut self, size: u64) -> Option<Allocation> {
        let need = Self::rounded(size)?;
        let align = if need >= PAGE { PAGE } else { ALIGN };
        let fits = |&(bsize, _, boff): &(u64, Reverse<u64>, u64)| {
            let pad = boff.next_multiple_of(align) - boff;
            bsize >= need + pad
        };
        // Best fit; page-aligned requests may need front padding, so look at a few candidates,
        // then fall back to a size that always fits whatever the padding.
        let mut found = self
            .by_size
            .range((need, Reverse(u64::MAX), 0)..)
            .take(8)
            .find(|b| fits(b))
            .copied();
        if found.is_none() && align > ALIGN {
            found = self
                .by_size
                .range((need + align - ALIGN, Reverse(u64::MAX), 0)..)
                .next()
                .copied();
        }
        let key @ (bsize, Reverse(stamp), bstart) = found?;
        self.by_size.remove(&key);
        let bend = bstart + bsize;
        let offset = bstart.next_multiple_of(align);
        if offset > bstart {
            // Front padding stays free as a block of its own.
            self.by_end.insert(offset, (bstart, stamp));
            self.by_size
                .insert((offset - bstart, Reverse(stamp), bstart));
        }
        let rest_start = offset + need;
        if rest_start < bend {
            // Carve from the low end: the rest keeps the block's end, so update in place.
            if let Some(v) = self.by_end.get_mut(&bend) {
                v.0 = rest_start;
            }
            self.by_size
                .insert((bend - rest_start, Reverse(stamp), rest_start));
        } else {
            self.by_end.remove(&bend);
        }
        self.used += need;
        self.allocations += 1;
        Some(Allocation { offset, size: need })
    }

    /// Returns a block to the free list, merging it with free neighbours.
    ///
    /// Each [`Allocation`] must be freed exactly once; the allocator checks in debug builds.
    pub fn free(&mut self, a: Allocation) {
        debug_assert!(a.offset >= self.start && a.offset + a.size <= self.end);
        debug_assert!(self.used >= a.size);
        self.clock += 1;
        let stamp = self.clock;
        let mut start = a.offset;
        let end = a.offset + a.size;
        debug_assert!(
            self.by_end.range(a.offset + 1..end).next().is_none(),
            "double free of {a:?}"
        );
        // A free block ending where this one starts.
        if let Some((pstart, pstamp)) = self.by_end.remove(&a.offset) {
            self.by_size
                .remove(&(a.offset - pstart, Reverse(pstamp), pstart));
            start = pstart;
        }
        // The first free block ending after this one: if it starts at our end, merge into it.
        let next = self.by_end.range_mut(end..).next();
        debug_assert!(
            next.as_ref().is_none_or(|(_, v)| v.0 >= end),
            "double free of {a:?}"
        );
        match next {
            Some((&nend, v)) if v.0 == end => {
                let nstamp = v.1;
                *v = (start, stamp);
                self.by_size.remove(&(nend - end, Reverse(nstamp), end));
                self.by_size.insert((nend - start, Reverse(stamp), start));
            }
            _ => {
                self.by_end.insert(end, (start, stamp));
                self.by_size.insert((end - start, Reverse(stamp), start));
            }
        }
        self.used -= a.size;
        self.allocations -= 1;
    }

    /// Bytes currently allocated (rounded sizes).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes currently free.
    pub fn free_bytes(&self) -> u64 {
        self.capacity() - self.used
    }

    /// Bytes managed in total.
    pub fn capacity(&self) -> u64 {
        self.end - self.start
    }

    /// Number of live allocations.
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// The largest free block.
    pub fn largest_free(&self) -> u64 {
        self.by_size.last().map_or(0, |&(s, _, _)| s)
    }

    /// Number of free blocks.
    pub fn free_blocks(&self) -> usize {
        self.by_end.len()
    }

    /// External fragmentation: `1 - largest_free / free_bytes`, from 0.0 (all free memory in one
    /// block) towards 1.0 (free memory in many small pieces). 0.0 when nothing is free.
    pub fn fragmentation(&self) -> f64 {
        let free = self.free_bytes();
        if free == 0 {
            0.0
        } else {
            1.0 - self.largest_free() as f64 / free as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_rounding() {
        let mut a = OffsetAllocator::new(4096, 4096 + 64 * 4096);
        let s = a.alloc(1).unwrap();
        assert_eq!(
            s,
            Allocation {
                offset: 4096,
                size: 64
            }
        );
        let z = a.alloc(0).unwrap();
        assert_eq!(z.size, 64);
        assert_ne!(z.offset, s.offset);
        let p = a.alloc(4096).unwrap();
        assert_eq!(p.offset % 4096, 0);
        assert_eq!(p.size, 4096);
        // The pad in front of the page-aligned block stays usable.
        let small = a.alloc(64).unwrap();
        assert!(small.offset < p.offset);
        for x in [s, z, p, small] {
            a.free(x);
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.free_blocks(), 1);
        assert_eq!(a.fragmentation(), 0.0);
    }

    #[test]
    fn full_and_exact_fit() {
        let mut a = OffsetAllocator::new(0, 4 * 4096);
        let all = a.alloc(4 * 4096).unwrap();
        assert_eq!(a.alloc(1), None);
        assert_eq!(a.free_bytes(), 0);
        a.free(all);
        assert_eq!(a.alloc(5 * 4096), None);
        assert_eq!(a.alloc(u64::MAX), None);
    }

    #[test]
    fn prefers_recently_freed_block() {
        let mut a = OffsetAllocator::new(0, 1 << 20);
        let x = a.alloc(4096).unwrap();
        let _g1 = a.alloc(4096).unwrap();
        let y = a.alloc(4096).unwrap();
        let _g2 = a.alloc(4096).unwrap();
        a.free(x);
        a.free(y);
        // Both holes fit exactly; the most recently freed (y) is reused first.
        assert_eq!(a.alloc(4096).unwrap().offset, y.offset);
        assert_eq!(a.alloc(4096).unwrap().offset, x.offset);
    }

    #[test]
    fn reuses_warm_start_of_merged_tail() {
        let mut a = OffsetAllocator::new(0, 1 << 24);
        let x = a.alloc(1 << 20).unwrap();
        a.free(x);
        assert_eq!(a.alloc(1 << 20).unwrap().offset, x.offset);
    }

    proptest::proptest! {
        /// Free blocks and live allocations always tile the managed range exactly, and
        /// everything coalesces back into one block at the end.
        #[test]
        #[cfg_attr(miri, ignore = "too slow under Miri; no unsafe code in the allocator")]
        fn tiles_and_coalesces(ops in proptest::collection::vec((0u64..20_000, 0usize..64), 1..400)) {
            let (start, end) = (4096, 4096 + (1 << 20));
            let mut a = OffsetAllocator::new(start, end);
            let mut live: Vec<Allocation> = Vec::new();
            for (size, pick) in ops {
                if pick < live.len() && pick % 2 == 0 {
                    a.free(live.swap_remove(pick));
                } else if let Some(x) = a.alloc(size) {
                    proptest::prop_assert!(x.size >= size && x.offset % ALIGN == 0);
                    if size >= PAGE {
                        proptest::prop_assert_eq!(x.offset % PAGE, 0);
                    }
                    live.push(x);
                }
                let mut pieces: Vec<(u64, u64, bool)> =
                    live.iter().map(|x| (x.offset, x.offset + x.size, true)).collect();
                pieces.extend(a.by_end.iter().map(|(&e, &(s, _))| (s, e, false)));
                pieces.sort();
                let mut at = start;
                for w in &pieces {
                    proptest::prop_assert_eq!(w.0, at, "gap or overlap at {}", at);
                    at = w.1;
                }
                proptest::prop_assert_eq!(at, end);
                // No two free blocks adjacent (fully coalesced).
                for w in pieces.windows(2) {
                    proptest::prop_assert!(w[0].2 || w[1].2, "uncoalesced free blocks");
                }
                proptest::prop_assert_eq!(a.by_size.len(), a.by_end.len());
                proptest::prop_assert_eq!(a.used(), live.iter().map(|x| x.size).sum::<u64>());
            }
            for x in live.drain(..) {
                a.free(x);
            }
            proptest::prop_assert_eq!(a.used(), 0);
            proptest::prop_assert_eq!(a.free_blocks(), 1);
        }
    }

    #[test]
    fn coalesces_both_sides() {
        let mut a = OffsetAllocator::new(0, 64 * 10);
        let v: Vec<_> = (0..10).map(|_| a.alloc(64).unwrap()).collect();
        for i in [1, 3, 2, 0, 9, 5, 7, 6, 8, 4] {
            a.free(v[i]);
        }
        assert_eq!(a.free_blocks(), 1);
        assert_eq!(a.largest_free(), 640);
    }
}
