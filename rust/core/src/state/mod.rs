//! Per-key state stores. A store holds one JSON document (opaque bytes here) per (pipeline, key).
//!
//! The lanes guarantee that events of one key never run at once, so a store needs no
//! read-modify-write transaction: `load` before the run and `commit` after it are enough.
//!
//! This module holds the `StateStore` trait and the types every store shares; the stores are
//! `memory` (the default), `sqlite` and `redis`. The durable two write their journal and
//! outcomes through one group-commit writer, `group`.

use std::fmt;

use bytes::Bytes;

use crate::error::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// An accepted event as the journal keeps it until its execution ends (durable stores only).
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub id: Box<str>,
    pub key: Option<Box<str>>,
    /// The delivery id the event was deduplicated by, if any.
    pub delivery: Option<Box<str>>,
    pub body: Bytes,
    /// Request headers as `name: value` lines (the pipeline sees them as `ctx.headers`).
    pub headers: Bytes,
    pub received_unix: f64,
}

/// The durable record of a finished execution: what `GET /executions/<id>` shows and what a
/// repeated delivery is answered with.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionRecord {
    pub id: Box<str>,
    pub key: Option<Box<str>>,
    pub delivery: Option<Box<str>>,
    pub received_unix: f64,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: &'static str,
    /// The answer a synchronous client got: HTTP status and body.
    pub http_status: u16,
    pub reply: Bytes,
    /// The record as `GET /executions/<id>` shows it (JSON).
    pub json: String,
}

/// A delivery id seen recently, and the execution it started.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenDelivery {
    pub delivery: String,
    pub execution_id: String,
    pub received_unix: f64,
}

/// Called once a journal write is durable (or failed), on the store's writer thread.
pub type Journaled = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One succeeded execution to commit: its key, its new state and its record.
pub type CommitItem<'a> = (Option<&'a str>, Option<Bytes>, Option<&'a ExecutionRecord>);

/// The state of one pipeline's keys. Durable stores also keep the journal of accepted events and
/// the records of finished executions; the defaults (memory) keep neither.
pub trait StateStore: Send + Sync {
    fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// The key's committed state, for inspection (`TestClient.state`): unlike `load`, it takes no
    /// lease and leaves the key's recency alone.
    fn peek(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// `load` of each key, in order (the keys of one batch: distinct). Stores with transactions
    /// read them all in one.
    fn load_many(&self, keys: &[&str]) -> Vec<Result<Option<Bytes>, StoreError>> {
        keys.iter().map(|k| self.load(k)).collect()
    }
    fn commit(&self, key: &str, state: Bytes) -> Result<(), StoreError>;
    /// Commits a succeeded execution: the key's new state and (on a durable store) its record,
    /// which also marks its journal entry done, all at once: after a crash either all of it is
    /// there or none.
    fn commit_execution(
        &self,
        key: Option<&str>,
        state: Option<Bytes>,
        _record: Option<&ExecutionRecord>,
    ) -> Result<(), StoreError> {
        match (key, state) {
            (Some(key), Some(state)) => self.commit(key, state),
            _ => Ok(()),
        }
    }
    /// Commits several succeeded executions (`(key, state, record)` each, as `commit_execution`).
    /// Returns how many were committed (a prefix) and the error that stopped the rest, if any.
    /// Stores with transactions commit them all in one (all or none).
    fn commit_executions(&self, items: Vec<CommitItem<'_>>) -> (usize, Option<StoreError>) {
        for (i, (key, state, record)) in items.into_iter().enumerate() {
            if let Err(e) = self.commit_execution(key, state, record) {
                return (i, Some(e));
            }
        }
        (usize::MAX, None)
    }
    /// True when `commit_executions` costs much less per execution than `commit_execution`
    /// (one transaction for all): slots then commit a batch's results together.
    fn commits_in_batches(&self) -> bool {
        false
    }
    /// True when the store journals accepted events and keeps execution records across restarts
    /// (SQLite, Redis).
    fn is_durable(&self) -> bool {
        false
    }
    /// True when the store keeps execution records (written with the commit, and by
    /// `record_outcome`) that `record` reads back.
    fn keeps_records(&self) -> bool {
        self.is_durable()
    }
    /// Claims `delivery` for `execution_id` among every process sharing the store, for `window`.
    /// Returns the execution id that claimed it first when another one did.
    fn claim_delivery(
        &self,
        _delivery: &str,
        _execution_id: &str,
        _window: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// Waits until the outcomes recorded so far are written (called at shutdown).
    fn flush(&self) {}
    /// This process runs nothing more from the store (called at shutdown, after `flush`). Redis:
    /// other processes may take over its unfinished journal entries from then on.
    fn close(&self) {}
    /// Undoes `claim_delivery` (the event was refused, so a repeat must run).
    fn release_delivery(&self, _delivery: &str, _execution_id: &str) {}
    /// True when `claim_delivery` deduplicates across processes (Redis).
    fn shares_deliveries(&self) -> bool {
        false
    }
    /// Writes an accepted event to the journal; `done` is called once it is durable.
    fn journal(&self, _entry: JournalEntry, done: Journaled) {
        done(Ok(()))
    }
    /// Records an execution that ended without a commit (failed, timed out): its journal entry is
    /// then done. Written in the background.
    fn record_outcome(&self, _record: ExecutionRecord) {}
    /// The stored record of a finished execution of this pipeline.
    fn record(&self, _id: &str) -> Option<ExecutionRecord> {
        None
    }
    /// Journaled events of this pipeline whose execution has not ended and that no live process
    /// runs, in arrival order; called once, at start. Redis takes them over from dead processes
    /// (this process runs them from then on).
    fn unfinished(&self) -> Result<Vec<JournalEntry>, StoreError> {
        Ok(Vec::new())
    }
    /// Delivery ids of finished executions received after `since_unix`, newest first.
    fn deliveries(&self, _since_unix: f64, _limit: usize) -> Vec<SeenDelivery> {
        Vec::new()
    }
    /// Records (JSON) of finished executions with `status`, newest first.
    fn list(&self, _status: &str, _limit: usize) -> Vec<String> {
        Vec::new()
    }
    /// Ends an execution that `load`ed `key` but will not `commit` (it failed or timed out).
    /// Stores that lock keys across processes release the lock here.
    fn release(&self, _key: &str) {}
    /// True when the store's calls do I/O (SQLite, Redis): callers holding a lock that others
    /// wait for (Python's GIL) let go of it around them. False for the memory store.
    // NOTE: the in-memory store answers in well under a microsecond, less than a GIL detach and
    // re-attach costs, so its callers keep the GIL.
    fn does_io(&self) -> bool;
}

mod group;
mod memory;
pub mod redis;
pub mod sqlite;

pub use memory::MemoryStore;

/// Why a state is not committed: it is larger than `max_state_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTooLarge {
    pub size: usize,
    pub limit: usize,
}

impl StateTooLarge {
    pub const CODE: ErrorCode = ErrorCode::StateTooLarge;
}

impl fmt::Display for StateTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the new state is {} bytes, above the {}-byte limit (max_state_bytes); nothing was committed",
            self.size, self.limit
        )
    }
}

impl std::error::Error for StateTooLarge {}

/// The check the runtime makes before committing a key's new state (for every store): a state
/// above `limit` bytes fails the execution with `state_too_large` and commits nothing.
pub fn check_size(state: &[u8], limit: usize) -> Result<(), StateTooLarge> {
    if state.len() > limit {
        return Err(StateTooLarge { size: state.len(), limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_size_refuses_states_over_the_limit() {
        assert_eq!(check_size(b"{}", 2), Ok(()));
        let err = check_size(b"{\"a\":1}", 4).unwrap_err();
        assert_eq!(err, StateTooLarge { size: 7, limit: 4 });
        assert_eq!(StateTooLarge::CODE.as_str(), "state_too_large");
        assert!(err.to_string().contains("4-byte limit (max_state_bytes)"), "{err}");
    }
}
