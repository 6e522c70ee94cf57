//! The arena: owns the mapped region of memory that objects live in, its header, and the two
//! backings ([`ShmArena`]: a memfd shared between processes; [`HeapArena`]: process-private heap
//! memory for fast tests and Miri).
//!
//! # Layout
//!
//! ```text
//! 0            HEADER_SIZE                                    capacity
//! | header     | data area: objects at 64-byte aligned offsets |
//! ```
//!
//! The header is `#[repr(C)]`, pointer-free, and written *last* at creation with a magic number
//! and a layout version; every process that attaches checks it. Nothing else in the mapping is
//! interpreted: the allocator and the object table live in ordinary process memory (see
//! `store.rs`), so a process that dies mid-write can only spoil the bytes of the object it was
//! writing.
//!
//! How to share a [`ShmArena`] between processes is documented on the type.

use std::alloc::Layout;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::SealFlag;
use nix::sys::mman::{MapFlags, ProtFlags};

use crate::store::Descriptor;
use crate::view::{self, ViewError};

/// Bytes reserved at the start of every mapping for the header. The data area starts here, so it
/// is page aligned.
pub const HEADER_SIZE: u64 = 4096;

/// `"RAYFPLSM"` as a little-endian `u64`.
const MAGIC: u64 = u64::from_le_bytes(*b"RAYFPLSM");
/// Bumped whenever the header or the meaning of the data area changes.
const LAYOUT_VERSION: u32 = 1;
const PAGE: u64 = 4096;

/// The header at offset 0 of every arena. Plain data only: no pointers, no fds.
#[repr(C)]
struct Header {
    /// [`MAGIC`], stored last (release) at creation and loaded first (acquire) on attach.
    magic: u64,
    /// [`LAYOUT_VERSION`].
    version: u32,
    /// [`HEADER_SIZE`] as `u32`.
    header_size: u32,
    /// Total bytes of the mapping, header included.
    capacity: u64,
}

const _: () = assert!(size_of::<Header>() as u64 <= HEADER_SIZE);

/// A mapped region of memory that holds objects: everything the views need.
///
/// Implemented by [`ShmArena`] (shared between processes) and [`HeapArena`] (private heap memory).
/// Offsets in a [`Descriptor`] are counted from [`Arena::base`], header included, so they mean
/// the same in every process that maps the same arena.
pub trait Arena: Send + Sync {
    /// Total bytes of the mapping, header included.
    fn capacity(&self) -> u64;

    /// Start of the mapping.
    fn base(&self) -> NonNull<u8>;

    /// Bounds-checked read view of an object's bytes.
    ///
    /// Only use it for sealed objects (the store hands out descriptors of sealed objects from
    /// [`Store::get`](crate::Store::get)): sealed bytes are never written again, which is what
    /// makes a shared view of memory other processes can map sound in practice.
    fn bytes(&self, d: Descriptor) -> Result<&[u8], ViewError>;

    /// Bounds-checked writable view of an object's bytes.
    ///
    /// # Safety
    /// The caller must be the only writer of `d`'s range, and no reader (in this process or
    /// another) may look at the range for the lifetime of the returned slice: in the store's
    /// protocol, only the creator of an unsealed object holds such a view.
    /// [`Store::write`](crate::Store::write) is the safe way to get one.
    #[expect(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, d: Descriptor) -> Result<&mut [u8], ViewError>;
}

/// Why an arena could not be created or attached.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ArenaError {
    /// The machine cannot back an arena this large.
    #[error(
        "arena of {requested} bytes is larger than the {available} bytes this machine can back \
         (MemAvailable + SwapFree, cgroup memory limit, RLIMIT_FSIZE); \
         ask for a smaller store capacity"
    )]
    TooLarge {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the machine can currently back.
        available: u64,
    },
    /// The arena would not even hold its header.
    #[error("arena of {requested} bytes is smaller than the minimum of {minimum} bytes")]
    TooSmall {
        /// Bytes asked for (or found, when attaching).
        requested: u64,
        /// Smallest usable arena.
        minimum: u64,
    },
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The error it returned.
        errno: Errno,
    },
    /// The fd does not hold a rayfork arena (wrong magic number).
    #[error(
        "fd does not hold a rayfork arena (magic {found:#018x}, expected {expected:#018x}); \
         pass the fd of a ShmArena created by ShmArena::create"
    )]
    BadMagic {
        /// Magic found in the header.
        found: u64,
        /// Magic expected.
        expected: u64,
    },
    /// The arena was created by an incompatible version of this crate.
    #[error(
        "arena layout version {found} is not the supported version {expected}; \
         use the same rayfork-plasma version in every process"
    )]
    BadVersion {
        /// Version found in the header.
        found: u32,
        /// Version this crate understands.
        expected: u32,
    },
    /// The header disagrees with the size of the memfd.
    #[error(
        "arena header says {header} bytes (header size {header_size}) but the fd holds {file} \
         bytes; the arena is corrupt or was resized"
    )]
    BadSize {
        /// Capacity recorded in the header.
        header: u64,
        /// Header size recorded in the header.
        header_size: u32,
        /// Size of the file.
        file: u64,
    },
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> ArenaError {
    move |errno| ArenaError::Os { op, errno }
}

/// Writes the header at `base`, magic last.
///
/// # Safety
/// `base` must point to at least [`HEADER_SIZE`] writable, 8-byte aligned bytes that nothing else
/// reads or writes during the call.
unsafe fn write_header(base: NonNull<u8>, capacity: u64) {
    let h = base.cast::<Header>().as_ptr();
    // SAFETY: `h` is aligned and points to HEADER_SIZE >= size_of::<Header>() bytes that are ours
    // alone for this call (this fn's contract); `addr_of_mut!` avoids making a reference.
    unsafe {
        std::ptr::addr_of_mut!((*h).version).write(LAYOUT_VERSION);
        std::ptr::addr_of_mut!((*h).header_size).write(HEADER_SIZE as u32);
        std::ptr::addr_of_mut!((*h).capacity).write(capacity);
    }
    // SAFETY: the magic field is 8-byte aligned and valid for the call (same contract); storing
    // it with Release publishes the fields above to anyone who loads it with Acquire.
    let magic = unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*h).magic)) };
    magic.store(MAGIC, Ordering::Release);
}

/// Checks the header at `base` against a mapping of `file_len` bytes.
///
/// # Safety
/// `base` must point to at least [`HEADER_SIZE`] readable, 8-byte aligned bytes.
unsafe fn check_header(base: NonNull<u8>, file_len: u64) -> Result<(), ArenaError> {
    let h = base.cast::<Header>().as_ptr();
    // SAFETY: the magic field is aligned and readable (this fn's contract); other processes only
    // ever write it atomically, so an atomic load is the right access.
    let magic = unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*h).magic)) };
    let found = magic.load(Ordering::Acquire);
    if found != MAGIC {
        return Err(ArenaError::BadMagic {
            found,
            expected: MAGIC,
        });
    }
    // SAFETY: readable and aligned (contract); the Acquire load above synchronises with the
    // Release store in `write_header`, which came after these fields were written.
    let (version, header_size, capacity) = unsafe {
        (
            std::ptr::addr_of!((*h).version).read(),
            std::ptr::addr_of!((*h).header_size).read(),
            std::ptr::addr_of!((*h).capacity).read(),
        )
    };
    if version != LAYOUT_VERSION {
        return Err(ArenaError::BadVersion {
            found: version,
            expected: LAYOUT_VERSION,
        });
    }
    if capacity != file_len || u64::from(header_size) != HEADER_SIZE {
        return Err(ArenaError::BadSize {
            header: capacity,
            header_size,
            file: file_len,
        });
    }
    Ok(())
}

/// Bytes this machine can currently back with shared memory: the smallest of MemAvailable +
/// SwapFree, the cgroup v2 memory headroom, and RLIMIT_FSIZE (which bounds `ftruncate`).
pub(crate) fn backable_bytes() -> u64 {
    let mut avail = u64::MAX;
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let field = |name: &str| -> Option<u64> {
            let line = info.lines().find(|l| l.starts_with(name))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb.saturating_mul(1024))
        };
        if let Some(mem) = field("MemAvailable:").or_else(|| field("MemTotal:")) {
            avail = mem.saturating_add(field("SwapFree:").unwrap_or(0));
        }
    }
    let cgroup_headroom = (|| -> Option<u64> {
        let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
        let dir = format!("/sys/fs/cgroup{}", path.trim_end_matches('/'));
        let max: u64 = std::fs::read_to_string(format!("{dir}/memory.max"))
            .ok()?
            .trim()
            .parse()
            .ok()?; // "max" fails to parse: no limit.
        let current: u64 = std::fs::read_to_string(format!("{dir}/memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(max.saturating_sub(current))
    })();
    if let Some(h) = cgroup_headroom {
        avail = avail.min(h);
    }
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE)
    {
        if soft != nix::sys::resource::RLIM_INFINITY {
            avail = avail.min(soft);
        }
    }
    avail
}

/// A shared-memory arena: a memfd mapped `MAP_SHARED`, shareable with forked children or with
/// any process that receives its fd.
///
/// # Sharing between processes
///
/// 1. **Inherit it over `fork()`.** The mapping is `MAP_SHARED`, so a forked child sees the same
///    pages at the same address, and the child's copy of the `ShmArena` (and of any `Store`) is
///    usable as is. This is what the rayfork runtime does. (A child's copy of a `Store` is a
///    snapshot of the table: it can look up where to write or read, but only the owning
///    process's `Store` records creates, seals and pins.)
/// 2. **Receive the fd.** The memfd is created with `MFD_CLOEXEC`. To hand it over `exec`, clear
///    `FD_CLOEXEC` on a dup of [`ShmArena::fd`] in the child before `exec` (for example in
///    `Command::pre_exec` with `fcntl(F_SETFD, 0)`) and pass its number; or send it over a Unix
///    socket with `SCM_RIGHTS`. The receiver calls [`ShmArena::from_fd`], which maps it and
///    checks the header. Offsets ([`Descriptor`]s) mean the same thing in every process even
///    though the base address differs.
///
/// Because the backing is a memfd rather than a named file in `/dev/shm`, nothing is left behind
/// when every process holding the fd or the mapping exits, however it exits.
///
/// ```
/// use rayfork_plasma::{Arena, ShmArena, HEADER_SIZE};
/// let arena = ShmArena::create(1 << 20).unwrap();
/// assert_eq!(arena.capacity(), 1 << 20);
/// // Attach a second mapping of the same memory, as a process that received the fd would.
/// let again = ShmArena::from_fd(arena.fd().try_clone_to_owned().unwrap()).unwrap();
/// assert_eq!(again.capacity(), arena.capacity());
/// # let _ = HEADER_SIZE;
/// ```
#[derive(Debug)]
pub struct ShmArena {
    fd: OwnedFd,
    base: NonNull<u8>,
    capacity: u64,
}

// SAFETY: ShmArena owns its mapping (unmapped only in Drop) and its fd; the raw pointer is not
// tied to a thread. All access to the bytes goes through `bytes`/`bytes_mut`, whose aliasing
// rules are part of their contracts, not of which thread calls them.
unsafe impl Send for ShmArena {}
// SAFETY: `&ShmArena` only exposes `capacity`, `base`, `fd` (immutable) and the views, which are
// safe to call from several threads under their own contracts.
unsafe impl Sync for ShmArena {}

impl ShmArena {
    /// Creates a new arena of `capacity` bytes (header included; rounded up to whole pages).
    ///
    /// `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)` + `ftruncate` + seals against any
    /// change of size (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: a process holding the fd
    /// cannot truncate the memory under another's mapping) + `mmap(MAP_SHARED)`. Refuses with
    /// [`ArenaError::TooLarge`] when the machine cannot back that many bytes now (memory + swap,
    /// cgroup limit, RLIMIT_FSIZE), rather than let a process die of SIGBUS on first touch later.
    /// The header is written last.
    pub fn create(capacity: u64) -> Result<ShmArena, ArenaError> {
        let minimum = HEADER_SIZE + PAGE;
        if capacity < minimum {
            return Err(ArenaError::TooSmall {
                requested: capacity,
                minimum,
            });
        }
        let capacity = capacity
            .checked_next_multiple_of(PAGE)
            .ok_or(ArenaError::TooLarge {
                requested: capacity,
                available: backable_bytes(),
            })?;
        let available = backable_bytes();
        let too_large = ArenaError::TooLarge {
            requested: capacity,
            available,
        };
        if capacity > available {
            return Err(too_large);
        }
        let len = usize::try_from(capacity).map_err(|_| too_large.clone())?;
        let off_len = libc::off_t::try_from(capacity).map_err(|_| too_large.clone())?;
        let fd = nix::sys::memfd::memfd_create(
            c"rayfork-plasma",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(os("memfd_create"))?;
        nix::unistd::ftruncate(&fd, off_len).map_err(|e| match e {
            Errno::EFBIG | Errno::ENOSPC | Errno::ENOMEM => too_large.clone(),
            errno => ArenaError::Os {
                op: "ftruncate",
                errno,
            },
        })?;
        // The size is final: no process that holds the fd (a worker running untrusted code)
        // can shrink the file under the others' mappings, which would kill them with SIGBUS
        // on their next touch, nor grow it, nor lift the seals.
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_ADD_SEALS(seals))
            .map_err(os("fcntl(F_ADD_SEALS)"))?;
        let base = Self::map(&fd, len)?;
        let arena = ShmArena { fd, base, capacity };
        // SAFETY: the mapping is fresh, page aligned, at least HEADER_SIZE long, and not yet
        // visible to anyone else (the fd has not been shared).
        unsafe { write_header(arena.base, capacity) };
        Ok(arena)
    }

    /// Attaches an existing arena from its fd (received over `exec` or `SCM_RIGHTS`, or a dup).
    ///
    /// Maps the whole file `MAP_SHARED` and checks the header: magic ([`ArenaError::BadMagic`]),
    /// layout version ([`ArenaError::BadVersion`]) and size ([`ArenaError::BadSize`]).
    pub fn from_fd(fd: OwnedFd) -> Result<ShmArena, ArenaError> {
        let st = nix::sys::stat::fstat(&fd).map_err(os("fstat"))?;
        let file_len = u64::try_from(st.st_size).unwrap_or(0);
        if file_len < HEADER_SIZE {
            return Err(ArenaError::TooSmall {
                requested: file_len,
                minimum: HEADER_SIZE + PAGE,
            });
        }
        let len = usize::try_from(file_len).map_err(|_| ArenaError::TooLarge {
            requested: file_len,
            available: usize::MAX as u64,
        })?;
        let base = Self::map(&fd, len)?;
        // Built before the check so Drop unmaps on error.
        let arena = ShmArena {
            fd,
            base,
            capacity: file_len,
        };
        // SAFETY: the mapping is page aligned and at least HEADER_SIZE long (checked above).
        unsafe { check_header(arena.base, file_len) }?;
        Ok(arena)
    }

    fn map(fd: &OwnedFd, len: usize) -> Result<NonNull<u8>, ArenaError> {
        let nz = std::num::NonZeroUsize::new(len).ok_or(ArenaError::TooSmall {
            requested: 0,
            minimum: HEADER_SIZE + PAGE,
        })?;
        // SAFETY: we map a fresh region chosen by the kernel (addr = None), so no existing
        // memory is replaced; the fd is a regular memfd of at least `len` bytes.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(os("mmap"))?;
        Ok(ptr.cast())
    }

    /// Faults every page of the arena in, writable, without changing its contents
    /// (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+).
    ///
    /// A fresh arena's first write into each page pays a page fault (about 1 GB/s against
    /// about 10 GB/s into touched memory); calling this once at startup moves that cost off the
    /// critical path, and commits the memory, so a shortage shows up here as
    /// [`ArenaError::TooLarge`] instead of as SIGBUS later. Safe to call while other processes
    /// use the arena. Takes time proportional to the capacity.
    pub fn populate(&self) -> Result<(), ArenaError> {
        // SAFETY: the range is exactly our mapping; MADV_POPULATE_WRITE only faults pages in
        // (as a write would, without writing), so no byte of the mapping changes.
        let r = unsafe {
            nix::sys::mman::madvise(
                self.base.cast(),
                self.capacity as usize,
                nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE,
            )
        };
        r.map_err(|errno| match errno {
            Errno::ENOMEM | Errno::EFAULT => ArenaError::TooLarge {
                requested: self.capacity,
                available: backable_bytes(),
            },
            errno => ArenaError::Os {
                op: "madvise(MADV_POPULATE_WRITE)",
                errno,
            },
        })
    }

    /// The memfd backing the arena (`FD_CLOEXEC` set). Dup it to hand the arena to another
    /// process; see [Sharing between processes](ShmArena#sharing-between-processes).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for ShmArena {
    fn drop(&mut self) {
        // SAFETY: `base`/`capacity` describe the mapping made in `map`, which nothing else unmaps;
        // `&mut self` means no view borrowed from this arena is alive.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.capacity as usize) };
    }
}

impl Arena for ShmArena {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn bytes(&self, d: Descriptor) -> Result<&[u8], ViewError> {
        // SAFETY: the mapping covers `capacity` bytes and lives as long as `self`; the no-writer
        // requirement is this method's documented contract (sealed objects only).
        unsafe { view::bytes_at(self.base, self.capacity, d) }
    }

    unsafe fn bytes_mut(&self, d: Descriptor) -> Result<&mut [u8], ViewError> {
        // SAFETY: the mapping covers `capacity` writable bytes and lives as long as `self`;
        // exclusivity is the caller's obligation (see `# Safety` on the trait method).
        unsafe { view::bytes_mut_at(self.base, self.capacity, d) }
    }
}

/// A heap-backed arena: same interface and layout as [`ShmArena`], in private process memory.
///
/// For fast tests of the store and for running its unsafe code under Miri
/// (`cargo +nightly miri test -p rayfork-plasma --lib`). Not shareable with other processes (a
/// forked child gets a copy, not shared pages).
///
/// ```
/// use rayfork_plasma::{Arena, HeapArena, HEADER_SIZE};
/// let arena = HeapArena::new(1 << 16);
/// assert_eq!(arena.capacity(), 1 << 16);
/// assert!(arena.capacity() > HEADER_SIZE);
/// ```
#[derive(Debug)]
pub struct HeapArena {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: HeapArena owns its allocation (freed only in Drop); the pointer is not tied to a thread.
unsafe impl Send for HeapArena {}
// SAFETY: `&HeapArena` exposes only immutable fields and the views, whose aliasing rules are part
// of their own contracts.
unsafe impl Sync for HeapArena {}

impl HeapArena {
    /// Allocates a zeroed, page-aligned arena of `capacity` bytes, header included. `capacity`
    /// is rounded up to a multiple of 64 and to at least `HEADER_SIZE + 64`.
    ///
    /// Aborts (like any allocation) if the memory cannot be allocated.
    ///
    /// # Panics
    /// If `capacity` does not fit the address space (more than `isize::MAX` bytes).
    pub fn new(capacity: u64) -> HeapArena {
        let capacity = capacity.max(HEADER_SIZE + 64).next_multiple_of(64);
        let size = usize::try_from(capacity).expect("HeapArena capacity exceeds the address space");
        let layout =
            Layout::from_size_align(size, PAGE as usize).expect("HeapArena capacity too large");
        // SAFETY: `layout` has non-zero size (>= HEADER_SIZE + 64).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: fresh, page-aligned allocation of at least HEADER_SIZE bytes, ours alone.
        unsafe { write_header(base, capacity) };
        // SAFETY: same allocation; just written, so the check can only fail on a bug.
        debug_assert!(unsafe { check_header(base, capacity) }.is_ok());
        HeapArena { base, layout }
    }
}

impl Drop for HeapArena {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated in `new` with exactly `layout` and is freed only here;
        // `&mut self` means no view borrowed from this arena is alive.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

impl Arena for HeapArena {
    fn capacity(&self) -> u64 {
        self.layout.size() as u64
    }

    fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn bytes(&self, d: Descriptor) -> Result<&[u8], ViewError> {
        // SAFETY: the allocation covers `capacity` bytes and lives as long as `self`; the
        // no-writer requirement is this method's documented contract (sealed objects only).
        unsafe { view::bytes_at(self.base, self.capacity(), d) }
    }

    unsafe fn bytes_mut(&self, d: Descriptor) -> Result<&mut [u8], ViewError> {
        // SAFETY: the allocation covers `capacity` writable bytes and lives as long as `self`;
        // exclusivity is the caller's obligation (see `# Safety` on the trait method).
        unsafe { view::bytes_mut_at(self.base, self.capacity(), d) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn the_arena_size_is_sealed() {
        let a = ShmArena::create(64 * 1024).unwrap();
        // A dup, as a worker holds it: neither shrinking, growing nor unsealing is allowed.
        let fd = a.fd().try_clone_to_owned().unwrap();
        assert_eq!(nix::unistd::ftruncate(&fd, 0), Err(Errno::EPERM));
        assert_eq!(nix::unistd::ftruncate(&fd, 1 << 20), Err(Errno::EPERM));
        let unseal = nix::fcntl::FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE);
        assert_eq!(nix::fcntl::fcntl(&fd, unseal), Err(Errno::EPERM));
        let b = ShmArena::from_fd(fd).unwrap();
        assert_eq!(b.capacity(), a.capacity());
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn shm_create_and_attach_sees_same_bytes() {
        let a = ShmArena::create(64 * 1024).unwrap();
        let d = Descriptor {
            offset: HEADER_SIZE,
            len: 16,
        };
        // SAFETY: no other view of this range exists in the test.
        unsafe { a.bytes_mut(d) }
            .unwrap()
            .copy_from_slice(b"0123456789abcdef");
        let b = ShmArena::from_fd(a.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_ne!(a.base(), b.base());
        assert_eq!(b.bytes(d).unwrap(), b"0123456789abcdef");
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn shm_rejects_too_large_and_too_small() {
        let huge = u64::MAX / 4;
        match ShmArena::create(huge) {
            Err(ArenaError::TooLarge {
                requested,
                available,
            }) => {
                assert!(requested >= huge);
                assert!(available < requested);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            ShmArena::create(10),
            Err(ArenaError::TooSmall { .. })
        ));
        let msg = ShmArena::create(huge).unwrap_err().to_string();
        assert!(msg.contains("smaller store capacity"), "{msg}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn populate_keeps_contents() {
        let a = ShmArena::create(1 << 20).unwrap();
        let d = Descriptor {
            offset: HEADER_SIZE,
            len: 4,
        };
        // SAFETY: no other view of this range exists in the test.
        unsafe { a.bytes_mut(d) }.unwrap().copy_from_slice(b"keep");
        a.populate().unwrap();
        assert_eq!(a.bytes(d).unwrap(), b"keep");
        // The header survives too.
        ShmArena::from_fd(a.fd().try_clone_to_owned().unwrap()).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn shm_rounds_capacity_to_pages() {
        let a = ShmArena::create(3 * PAGE + 1).unwrap();
        assert_eq!(a.capacity(), 4 * PAGE);
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn from_fd_rejects_foreign_memfd() {
        let fd =
            nix::sys::memfd::memfd_create(c"x", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 2 * PAGE as libc::off_t).unwrap();
        assert!(matches!(
            ShmArena::from_fd(fd),
            Err(ArenaError::BadMagic { found: 0, .. })
        ));
        let small =
            nix::sys::memfd::memfd_create(c"y", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        assert!(matches!(
            ShmArena::from_fd(small),
            Err(ArenaError::TooSmall { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn from_fd_rejects_wrong_version_and_size() {
        let a = ShmArena::create(4 * PAGE).unwrap();
        let h = a.base().cast::<Header>().as_ptr();
        // SAFETY: header is ours; no other thread or process looks at this arena.
        unsafe { std::ptr::addr_of_mut!((*h).version).write(99) };
        assert!(matches!(
            ShmArena::from_fd(a.fd().try_clone_to_owned().unwrap()),
            Err(ArenaError::BadVersion { found: 99, .. })
        ));
        // SAFETY: as above.
        unsafe {
            std::ptr::addr_of_mut!((*h).version).write(LAYOUT_VERSION);
            std::ptr::addr_of_mut!((*h).capacity).write(123);
        }
        assert!(matches!(
            ShmArena::from_fd(a.fd().try_clone_to_owned().unwrap()),
            Err(ArenaError::BadSize { header: 123, .. })
        ));
    }

    #[test]
    fn heap_arena_views() {
        let a = HeapArena::new(10);
        assert_eq!(a.capacity(), HEADER_SIZE + 64);
        let d = Descriptor {
            offset: HEADER_SIZE,
            len: 64,
        };
        assert_eq!(a.bytes(d).unwrap(), &[0u8; 64][..]);
        // SAFETY: no other view exists.
        unsafe { a.bytes_mut(d) }.unwrap()[0] = 1;
        assert_eq!(a.bytes(d).unwrap()[0], 1);
        assert!(a.bytes(Descriptor { offset: 0, len: 8 }).is_err());
        assert!(
            a.bytes(Descriptor {
                offset: HEADER_SIZE,
                len: 65
            })
            .is_err()
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd/mmap/procfs are not supported by Miri")]
    fn backable_is_positive() {
        assert!(backable_bytes() > 1 << 20);
    }
}
