//! Execution ids: unique per process and hard to guess, so that `GET /executions/<id>` does not
//! hand one client's results to another who counts upwards.
//!
//! A counter is run through a keyed Feistel permutation of 48 bits (four rounds, SipHash with a
//! per-process random key as the round function): a bijection, so ids never repeat before 2^48
//! executions, and without the key the next id cannot be derived from earlier ones.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

const HALF_BITS: u32 = 24;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;
const ROUNDS: usize = 4;

pub struct IdGenerator {
    counter: AtomicU64,
    keys: [RandomState; ROUNDS],
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator { counter: AtomicU64::new(0), keys: std::array::from_fn(|_| RandomState::new()) }
    }
}

impl IdGenerator {
    /// The next id, below 2^48.
    pub fn next(&self) -> u64 {
        self.permute(self.counter.fetch_add(1, Ordering::Relaxed) & ((1 << (2 * HALF_BITS)) - 1))
    }

    fn permute(&self, x: u64) -> u64 {
        let (mut left, mut right) = (x >> HALF_BITS, x & HALF_MASK);
        for key in &self.keys {
            let f = key.hash_one(right) & HALF_MASK;
            (left, right) = (right, left ^ f);
        }
        (left << HALF_BITS) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_below_2_pow_48_and_not_sequential() {
        let ids = IdGenerator::default();
        let n = if cfg!(miri) { 100 } else { 200_000 };
        let seen: HashSet<u64> = (0..n).map(|_| ids.next()).collect();
        assert_eq!(seen.len(), n, "a permutation never repeats");
        assert!(seen.iter().all(|&id| id < 1 << 48));
        let (a, b) = (ids.next(), ids.next());
        assert!(a.abs_diff(b) > 1, "consecutive ids should not be neighbours");
    }
}
