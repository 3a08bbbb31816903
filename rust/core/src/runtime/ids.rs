//! Execution ids: 128 random bits from the operating system (`getrandom`), written as 32
//! lower-case hex characters (URL-safe), so that `GET /executions/<id>` only serves whoever was
//! handed the id. A per-process counter beside it numbers executions in arrival order.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Length of the textual id.
pub const ID_LEN: usize = 32;

// NOTE: one `getrandom` system call per id was one per request on the I/O thread (strace: as many
// `getrandom` calls as responses). The generator reads the OS's random bytes 32 ids at a time;
// each id still gets 128 bits of its own from the OS generator, used once.
const POOL: usize = 32 * 16;

#[derive(Default)]
pub struct IdGenerator {
    counter: AtomicU64,
    fallback: RandomState,
    /// Random bytes from the OS not handed out yet: `pool.1[pool.0..]`.
    pool: Mutex<(usize, Vec<u8>)>,
}

impl IdGenerator {
    /// The next (sequence number, public id).
    pub fn next(&self) -> (u64, Box<str>) {
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut bits = [0u8; 16];
        if !self.take_random(&mut bits) {
            // The OS generator does not fail on supported systems once it has been seeded; should
            // it, ids stay unique (the counter) and keyed by a per-process random SipHash key.
            bits[..8].copy_from_slice(&self.fallback.hash_one((seq, 0u8)).to_le_bytes());
            bits[8..].copy_from_slice(&self.fallback.hash_one((seq, 1u8)).to_le_bytes());
        }
        (seq, hex::encode(bits).into_boxed_str())
    }

    /// Fills `out` with random bytes from the pool (refilled from the OS when it runs out).
    fn take_random(&self, out: &mut [u8; 16]) -> bool {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let (used, bytes) = &mut *pool;
        if *used + 16 > bytes.len() {
            bytes.resize(POOL, 0);
            if getrandom::fill(bytes).is_err() {
                bytes.clear();
                *used = 0;
                return false;
            }
            *used = 0;
        }
        out.copy_from_slice(&bytes[*used..*used + 16]);
        *used += 16;
        true
    }
}

/// True for strings shaped like an id (32 lower-case hex characters).
pub fn is_well_formed(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_128_bit_hex_unique_and_numbered() {
        let ids = IdGenerator::default();
        let n = if cfg!(miri) { 100 } else { 100_000 };
        let mut seen = HashSet::new();
        for i in 0..n {
            let (seq, id) = ids.next();
            assert_eq!(seq, i as u64);
            assert!(is_well_formed(&id), "{id}");
            assert!(seen.insert(id));
        }
        // Every bit position takes both values across ids (not a counter in disguise).
        let (ones, zeros) = seen.iter().fold((0u128, 0u128), |(o, z), id| {
            let v = u128::from_str_radix(id, 16).unwrap();
            (o | v, z | !v)
        });
        assert_eq!((ones, zeros), (u128::MAX, u128::MAX));
    }

    #[test]
    fn well_formed_ids_only() {
        assert!(is_well_formed(&"0123456789abcdef".repeat(2)));
        assert!(!is_well_formed(&"0123456789ABCDEF".repeat(2)));
        assert!(!is_well_formed("0123"));
        assert!(!is_well_formed(&"g".repeat(32)));
    }
}
