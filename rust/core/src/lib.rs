//! warmslot-core: the engine behind warmslot, free of any Python binding.
//!
//! Subsystems, each depending only on those after it:
//! - [`http`]: the ingress (tokio + hyper), its answers, webhook signatures, the body check;
//! - [`runtime`]: pipelines, their intake (ring → per-key lanes), slots and the execution lifecycle;
//! - [`state`]: per-key state stores (memory, SQLite, Redis);
//! - [`observe`]: counters, latency histograms, Prometheus text, execution records.
//!
//! [`engine`] wires them together; [`config`] and [`error`] are shared by all.

pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod observe;
pub mod runtime;
pub mod state;

pub use bytes::Bytes;
pub use config::{
    AppConfig, DedupeSpec, Isolation, KeySpec, MissingKey, PipelineConfig, SignatureScheme, SignatureSpec,
    WorkerCommand,
};
pub use engine::{Engine, EngineError, KeyFn, PipelineStats};
pub use error::ErrorCode;
pub use runtime::execution::{BeginError, Job, Outcome, Status, Timings};
pub use state::redis::RedisDb;
pub use state::sqlite::{SqliteDb, SqliteOptions};
pub use state::{check_size, MemoryStore, StateStore, StateTooLarge, StoreError};
