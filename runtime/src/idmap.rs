//! Hash maps keyed by object ids, request numbers and worker slots, with a cheap hash.
//!
//! The scheduler looks ids up several times per task; SipHash (the std default, built to
//! resist collision attacks from untrusted keys) costs more than the rest of a lookup. Ids here
//! are made by this runtime's own processes (counters with the client in the high bits), so a
//! multiplicative hash spreads them well. Owns the hasher only.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A `HashSet` with [`IdHasher`].
pub(crate) type IdSet<K> = std::collections::HashSet<K, BuildHasherDefault<IdHasher>>;

/// Folds integer keys into 64 bits and multiplies by a large odd constant (Fibonacci hashing);
/// hashbrown takes its bucket from the low bits and its tag from the high ones, both mixed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl IdHasher {
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weakest; fold the high half in.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }

    fn write_u32(&mut self, x: u32) {
        self.add(u64::from(x));
    }

    fn write_i32(&mut self, x: i32) {
        self.add(x as u32 as u64);
    }

    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }

    fn write_u128(&mut self, x: u128) {
        self.add(x as u64);
        self.add((x >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::{IdHasher, IdMap};

    #[test]
    fn counters_spread_over_buckets() {
        let b = BuildHasherDefault::<IdHasher>::default();
        // Ids of one client: the same high bits, a counter below. Their low 10 bits (a
        // 1024-bucket table) should take most values.
        let mut seen = std::collections::HashSet::new();
        for i in 0..1024u128 {
            seen.insert(b.hash_one((7u128 << 64) | i) & 1023);
        }
        assert!(seen.len() > 600, "{} distinct buckets of 1024", seen.len());
        let mut m: IdMap<u128, u32> = IdMap::default();
        for i in 0..10_000u128 {
            m.insert(i << 64 | i, i as u32);
        }
        assert!((0..10_000u128).all(|i| m[&(i << 64 | i)] == i as u32));
    }
}
