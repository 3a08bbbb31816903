//! The embedded default store: per-key state in process memory, bounded by an LRU of keys.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use bytes::Bytes;

use crate::state::{StateStore, StoreError};

/// Keys kept by a `MemoryStore::default()`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
const SHARDS: usize = 16;
/// Below this many keys one shard holds them all, so eviction is exact LRU.
const SHARD_ABOVE: usize = 1024;

/// The embedded default: a map in process memory, lost when the process ends, holding at most
/// `max_keys` keys. Committing a new key past that evicts the least recently used key (loaded or
/// committed longest ago): its state is forgotten, and its next event starts from an empty state.
/// A key whose event is running was loaded moments ago, so it is the last to go. Above
/// `SHARD_ABOVE` keys the map is split into 16 shards, each holding `max_keys / 16` keys with
/// its own LRU order (less lock contention; the key evicted is the least recently used of its
/// shard).
pub struct MemoryStore {
    hasher: RandomState,
    per_shard: usize,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    states: HashMap<Box<str>, (Bytes, u64)>,
    /// Last use → key, oldest first.
    lru: BTreeMap<u64, Box<str>>,
    clock: u64,
}

impl Shard {
    fn touch(&mut self, key: &str) -> bool {
        let Some((_, used)) = self.states.get_mut(key) else { return false };
        self.clock += 1;
        if let Some(k) = self.lru.remove(used) {
            self.lru.insert(self.clock, k);
        }
        *used = self.clock;
        true
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_MAX_KEYS)
    }
}

impl MemoryStore {
    /// A store of at most `max_keys` keys (at least 1).
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let shards = if max_keys > SHARD_ABOVE { SHARDS } else { 1 };
        MemoryStore {
            hasher: RandomState::new(),
            per_shard: max_keys / shards,
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().states.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most keys kept.
    pub fn max_keys(&self) -> usize {
        self.per_shard * self.shards.len()
    }
}

impl StateStore for MemoryStore {
    fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut shard = self.shard(key).lock().unwrap();
        if !shard.touch(key) {
            return Ok(None);
        }
        Ok(shard.states.get(key).map(|(state, _)| state.clone()))
    }

    fn peek(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.shard(key).lock().unwrap().states.get(key).map(|(state, _)| state.clone()))
    }

    fn commit(&self, key: &str, state: Bytes) -> Result<(), StoreError> {
        let mut shard = self.shard(key).lock().unwrap();
        if shard.touch(key) {
            if let Some(slot) = shard.states.get_mut(key) {
                slot.0 = state;
            }
            return Ok(());
        }
        while shard.states.len() >= self.per_shard {
            let Some((_, oldest)) = shard.lru.pop_first() else { break };
            shard.states.remove(&oldest);
        }
        shard.clock += 1;
        let clock = shard.clock;
        shard.lru.insert(clock, key.into());
        shard.states.insert(key.into(), (state, clock));
        Ok(())
    }

    fn does_io(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_then_load_round_trips_per_key() {
        let store = MemoryStore::default();
        assert_eq!(store.load("a").unwrap(), None);
        store.commit("a", Bytes::from_static(b"{\"n\":1}")).unwrap();
        store.commit("b", Bytes::from_static(b"{\"n\":2}")).unwrap();
        store.commit("a", Bytes::from_static(b"{\"n\":3}")).unwrap();
        assert_eq!(store.load("a").unwrap().unwrap(), Bytes::from_static(b"{\"n\":3}"));
        assert_eq!(store.load("b").unwrap().unwrap(), Bytes::from_static(b"{\"n\":2}"));
        assert_eq!(store.len(), 2);
    }

    fn state(n: u32) -> Bytes {
        Bytes::from(format!("{{\"n\":{n}}}"))
    }

    #[test]
    fn evicts_the_least_recently_used_key() {
        let store = MemoryStore::new(3);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            store.commit(k, state(i as u32)).unwrap();
        }
        store.load("a").unwrap(); // a is now more recent than b
        store.commit("d", state(9)).unwrap();
        assert_eq!(store.len(), 3);
        assert_eq!(store.load("b").unwrap(), None, "b was the least recently used");
        assert_eq!(store.load("a").unwrap(), Some(state(0)));
        assert_eq!(store.load("d").unwrap(), Some(state(9)));
        // Re-committing a kept key evicts nothing.
        store.commit("c", state(5)).unwrap();
        assert_eq!(store.len(), 3);
        assert_eq!(store.load("c").unwrap(), Some(state(5)));
    }

    #[test]
    fn large_stores_stay_within_max_keys() {
        let store = MemoryStore::new(2048);
        for i in 0..10_000 {
            store.commit(&format!("k{i}"), state(i)).unwrap();
        }
        assert!(store.len() <= 2048, "{}", store.len());
        assert!(store.len() > 1800, "shards fill up: {}", store.len());
        assert_eq!(store.load("k9999").unwrap(), Some(state(9999)), "the newest key is kept");
    }
}
