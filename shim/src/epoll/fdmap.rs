//! Maps and sets keyed by descriptor numbers (and other small integers: tally groups), hashed
//! with one multiply instead of the standard library's SipHash. The epoll module looks up its
//! registrations several times per connection and wait; with SipHash those look-ups were 4–6 %
//! of a loaded nginx worker's CPU at 8,000 connections (benches/results/scaling.md, session 12).
//! The keys are this process's own descriptor numbers, never chosen by a peer, so the
//! flooding resistance SipHash buys is not needed here.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing: the multiply spreads consecutive numbers over the top bits (which pick
/// the table's tag byte) while the low bits (which pick the bucket) stay a permutation of the
/// key's own.
const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The hasher of [`FdMap`] and [`FdSet`].
#[derive(Default, Clone, Copy)]
pub(super) struct FdHasher(u64);

impl Hasher for FdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(K);
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u32(n as u32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by descriptor numbers (or other small integers).
pub(super) type FdMap<K, V> = HashMap<K, V, BuildHasherDefault<FdHasher>>;

/// A set of descriptor numbers.
pub(super) type FdSet = HashSet<libc::c_int, BuildHasherDefault<FdHasher>>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash>(v: T) -> u64 {
        BuildHasherDefault::<FdHasher>::default().hash_one(v)
    }

    #[test]
    fn consecutive_fds_land_in_distinct_buckets_and_tags() {
        // The bucket is the hash's low bits: 4,096 consecutive fds fill 4,096 buckets once each.
        let buckets: HashSet<u64> = (0..4096).map(|fd: i32| hash(fd) & 4095).collect();
        assert_eq!(buckets.len(), 4096);
        // The tag is its top 7 bits: all 128 of them are used.
        let tags: HashSet<u64> = (0..4096).map(|fd: i32| hash(fd) >> 57).collect();
        assert_eq!(tags.len(), 128);
    }

    #[test]
    fn maps_and_sets_keep_what_they_are_given() {
        let mut m: FdMap<libc::c_int, u32> = FdMap::default();
        for fd in 0..10_000 {
            m.insert(fd, fd as u32 * 2);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000).all(|fd| m[&fd] == fd as u32 * 2));
        let mut s = FdSet::default();
        assert!(s.insert(7) && !s.insert(7) && s.contains(&7) && !s.contains(&8));
        let mut g: FdMap<u32, u8> = FdMap::default();
        g.insert(u32::MAX, 1);
        assert_eq!(g.get(&u32::MAX), Some(&1));
        // Bytes hash too (a key type that writes them), differently for different input.
        assert_ne!(hash("ab"), hash("ba"));
    }
}
