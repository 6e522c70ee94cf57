//! Identifiers: owns [`ObjectId`] (the 16-byte name of an object) and [`ClientId`] (the process
//! or worker that pins and creates objects).

use std::fmt;

/// The 16-byte name of an object in the store.
///
/// Ids are chosen by the caller (the runtime derives them from task ids); the store only requires
/// them to be unique among live objects. `Debug` and `Display` print 32 lowercase hex digits.
///
/// ```
/// use rayfork_plasma::ObjectId;
/// let id = ObjectId::from_u128(0xfeed);
/// assert_eq!(id.as_u128(), 0xfeed);
/// assert_eq!(format!("{id:?}"), "ObjectId(0000000000000000000000000000feed)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    /// Builds an id from a `u128` (big-endian bytes, so ordering matches the integer's).
    pub fn from_u128(v: u128) -> Self {
        ObjectId(v.to_be_bytes())
    }

    /// The id as a `u128` (inverse of [`ObjectId::from_u128`]).
    pub fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A client of the store: one process (driver, fork server or worker) that creates and pins
/// objects. When a client dies, [`Store::client_gone`](crate::Store::client_gone) drops
/// everything recorded under its id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ClientId(pub u32);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_order() {
        for v in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            assert_eq!(ObjectId::from_u128(v).as_u128(), v);
        }
        assert!(ObjectId::from_u128(1) < ObjectId::from_u128(2));
        assert_eq!(
            ObjectId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677).to_string(),
            "0123456789abcdef0011223344556677"
        );
    }
}
