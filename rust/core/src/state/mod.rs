//! Per-key state stores. A store holds one JSON document (opaque bytes here) per (pipeline, key).
//!
//! The scheduler guarantees that events of one key never run at once, so a store needs no
//! read-modify-write transaction: `load` before the run and `commit` after it are enough.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// The state of one pipeline's keys.
pub trait StateStore: Send + Sync {
    fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    fn commit(&self, key: &str, state: Bytes) -> Result<(), StoreError>;
    /// Ends an execution that `load`ed `key` but will not `commit` (it failed or timed out).
    /// Stores that lock keys across processes release the lock here.
    fn release(&self, _key: &str) {}
    /// Human-readable kind, for logs and metrics.
    fn kind(&self) -> &'static str;
}

pub mod redis;
pub mod sqlite;

const SHARDS: usize = 16;

/// The embedded default: a sharded map in process memory. Lost when the process ends.
pub struct MemoryStore {
    hasher: RandomState,
    shards: [Mutex<HashMap<Box<str>, Bytes>>; SHARDS],
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore { hasher: RandomState::new(), shards: std::array::from_fn(|_| Mutex::new(HashMap::new())) }
    }
}

impl MemoryStore {
    fn shard(&self, key: &str) -> &Mutex<HashMap<Box<str>, Bytes>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for MemoryStore {
    fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.shard(key).lock().unwrap().get(key).cloned())
    }

    fn commit(&self, key: &str, state: Bytes) -> Result<(), StoreError> {
        let mut shard = self.shard(key).lock().unwrap();
        match shard.get_mut(key) {
            Some(slot) => *slot = state,
            None => {
                shard.insert(key.into(), state);
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
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
}
