//! Zero-copy views: owns the conversion of a [`Descriptor`] into a bounds-checked `&[u8]` /
//! `&mut [u8]` over a mapping, and of byte slices into typed slices of plain-old-data elements
//! ([`cast_slice`], [`cast_slice_mut`]).
//!
//! This module and `arena.rs` hold the crate's `unsafe` code, with one more block in
//! `Store::write` (see the crate docs).

use std::ptr::NonNull;

use bytemuck::Pod;

use crate::arena::HEADER_SIZE;
use crate::store::Descriptor;

/// Why a view could not be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ViewError {
    /// The descriptor does not lie inside the data area of the mapping.
    #[error(
        "descriptor (offset {offset}, len {len}) is outside the arena's data area \
         [{data_start}, {capacity}); use a descriptor returned by this arena's store"
    )]
    OutOfBounds {
        /// Offset of the descriptor, from the start of the mapping.
        offset: u64,
        /// Length of the descriptor.
        len: u64,
        /// First byte of the data area (the header ends here).
        data_start: u64,
        /// Total size of the mapping.
        capacity: u64,
    },
    /// The byte length is not a whole number of elements.
    #[error(
        "{len} bytes is not a whole number of {elem_size}-byte elements; \
         store the array with a length that is a multiple of the element size"
    )]
    LengthNotMultiple {
        /// Length of the byte slice.
        len: usize,
        /// `size_of` of the element type.
        elem_size: usize,
    },
    /// The bytes do not start at an address aligned for the element type.
    #[error(
        "address {addr:#x} is not aligned to {align} bytes for the element type; \
         objects are 64-byte aligned, so view from the object's start"
    )]
    Misaligned {
        /// Address of the first byte.
        addr: usize,
        /// Required alignment of the element type.
        align: usize,
    },
    /// Zero-sized element types cannot be viewed.
    #[error("zero-sized element types cannot be viewed; use a sized plain-old-data type")]
    ZeroSizedElement,
}

/// Checks that `d` lies inside `[HEADER_SIZE, capacity)` and returns `(offset, len)` as `usize`.
fn check(capacity: u64, d: Descriptor) -> Result<(usize, usize), ViewError> {
    let oob = ViewError::OutOfBounds {
        offset: d.offset,
        len: d.len,
        data_start: HEADER_SIZE,
        capacity,
    };
    let end = d.offset.checked_add(d.len).ok_or(oob.clone())?;
    if d.offset < HEADER_SIZE || end > capacity {
        return Err(oob);
    }
    let offset = usize::try_from(d.offset).map_err(|_| oob.clone())?;
    let len = usize::try_from(d.len).map_err(|_| oob)?;
    Ok((offset, len))
}

/// Read view of `d` inside the mapping at `base` of `capacity` bytes.
///
/// # Safety
/// `base` must point to `capacity` bytes that stay mapped and readable for `'a`, and no `&mut`
/// to any byte of `d`'s range may exist during `'a` (nor may another process write it: the
/// store only hands out descriptors of sealed, hence immutable, objects for reading).
pub(crate) unsafe fn bytes_at<'a>(
    base: NonNull<u8>,
    capacity: u64,
    d: Descriptor,
) -> Result<&'a [u8], ViewError> {
    let (offset, len) = check(capacity, d)?;
    // SAFETY: `check` proved offset + len <= capacity, so the range is inside the mapping that
    // the caller guarantees is readable and not mutably aliased for 'a (this fn's contract).
    Ok(unsafe { std::slice::from_raw_parts(base.as_ptr().add(offset), len) })
}

/// Writable view of `d` inside the mapping at `base` of `capacity` bytes.
///
/// # Safety
/// `base` must point to `capacity` bytes that stay mapped and writable for `'a`, and no other
/// reference (shared or mutable, in this or another process) to any byte of `d`'s range may be
/// used during `'a`: the caller is the creator of an unsealed object.
pub(crate) unsafe fn bytes_mut_at<'a>(
    base: NonNull<u8>,
    capacity: u64,
    d: Descriptor,
) -> Result<&'a mut [u8], ViewError> {
    let (offset, len) = check(capacity, d)?;
    // SAFETY: `check` proved the range is inside the mapping, which the caller guarantees is
    // writable and exclusively theirs for 'a (this fn's contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(base.as_ptr().add(offset), len) })
}

fn check_cast<T: Pod>(addr: usize, len: usize) -> Result<(), ViewError> {
    let elem_size = size_of::<T>();
    if elem_size == 0 {
        return Err(ViewError::ZeroSizedElement);
    }
    if len % elem_size != 0 {
        return Err(ViewError::LengthNotMultiple { len, elem_size });
    }
    let align = align_of::<T>();
    if addr % align != 0 {
        return Err(ViewError::Misaligned { addr, align });
    }
    Ok(())
}

/// Views bytes as a slice of plain-old-data elements, checking length and alignment.
///
/// Objects in the store start 64-byte aligned, so any `Pod` type with alignment <= 64 can view
/// a whole object.
///
/// ```
/// let words = [1u64, 2, 3];
/// let bytes: &[u8] = bytemuck::cast_slice(&words);
/// let back: &[u64] = rayfork_plasma::cast_slice(bytes).unwrap();
/// assert_eq!(back, &[1, 2, 3]);
/// assert!(rayfork_plasma::cast_slice::<u64>(&bytes[..7]).is_err());
/// ```
pub fn cast_slice<T: Pod>(bytes: &[u8]) -> Result<&[T], ViewError> {
    check_cast::<T>(bytes.as_ptr() as usize, bytes.len())?;
    // Checked above, so bytemuck cannot fail; map its error anyway rather than unwrap.
    bytemuck::try_cast_slice(bytes).map_err(|_| ViewError::ZeroSizedElement)
}

/// Views bytes as a mutable slice of plain-old-data elements, checking length and alignment.
///
/// ```
/// let mut words = [0u32; 4];
/// let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
/// let view: &mut [u32] = rayfork_plasma::cast_slice_mut(bytes).unwrap();
/// view[3] = 7;
/// assert_eq!(words[3], 7);
/// ```
pub fn cast_slice_mut<T: Pod>(bytes: &mut [u8]) -> Result<&mut [T], ViewError> {
    check_cast::<T>(bytes.as_ptr() as usize, bytes.len())?;
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| ViewError::ZeroSizedElement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_checks_length_and_alignment() {
        let words = [0u64; 4];
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        assert_eq!(cast_slice::<u64>(bytes).unwrap().len(), 4);
        assert_eq!(
            cast_slice::<u64>(&bytes[..12]),
            Err(ViewError::LengthNotMultiple {
                len: 12,
                elem_size: 8
            })
        );
        assert!(matches!(
            cast_slice::<u64>(&bytes[1..9]),
            Err(ViewError::Misaligned { align: 8, .. })
        ));
        assert_eq!(cast_slice::<()>(bytes), Err(ViewError::ZeroSizedElement));
        let mut w = [0u32; 2];
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut w);
        assert!(cast_slice_mut::<u32>(b).is_ok());
        assert!(cast_slice_mut::<u32>(&mut b[4..]).is_ok());
        assert!(matches!(
            cast_slice_mut::<u32>(&mut b[1..5]),
            Err(ViewError::Misaligned { align: 4, .. })
        ));
    }

    #[test]
    fn descriptor_bounds() {
        let cap = HEADER_SIZE + 128;
        assert!(
            check(
                cap,
                Descriptor {
                    offset: HEADER_SIZE,
                    len: 128
                }
            )
            .is_ok()
        );
        assert!(
            check(
                cap,
                Descriptor {
                    offset: HEADER_SIZE,
                    len: 129
                }
            )
            .is_err()
        );
        assert!(check(cap, Descriptor { offset: 0, len: 1 }).is_err());
        assert!(
            check(
                cap,
                Descriptor {
                    offset: u64::MAX,
                    len: 2
                }
            )
            .is_err()
        );
        assert!(
            check(
                cap,
                Descriptor {
                    offset: cap,
                    len: 0
                }
            )
            .is_ok()
        );
    }
}
