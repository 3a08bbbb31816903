//! warmslot-core: the engine behind warmslot, free of any Python binding.
//!
//! Data path: [`ingress`] (tokio + hyper) → [`ring`] per pipeline (crossbeam `ArrayQueue`) →
//! [`scheduler`] thread (per-key order, micro-batches) → [`slots`] (mailboxes of pre-warmed
//! workers) → the worker runs the pipeline and finishes the [`execution::Job`], which commits the
//! key's state in a [`state`] store and wakes the waiting request.

pub mod config;
pub mod engine;
pub mod event;
pub mod execution;
pub mod ids;
pub mod ingress;
pub mod metrics;
pub mod pipeline;
pub mod records;
pub mod redis_store;
pub mod responses;
pub mod ring;
pub mod scheduler;
pub mod signature;
pub mod slots;
pub mod sqlite_store;
pub mod state;

pub use bytes::Bytes;
pub use config::{AppConfig, KeySpec, PipelineConfig, SignatureScheme, SignatureSpec};
pub use engine::{Engine, EngineError, KeyFn, PipelineStats};
pub use execution::{BeginError, Job, Outcome, Status, Timings};
pub use redis_store::RedisDb;
pub use sqlite_store::SqliteDb;
pub use state::{MemoryStore, StateStore, StoreError};
