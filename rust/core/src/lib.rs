//! warmslot-core: the engine behind warmslot, free of any Python binding.
//!
//! Subsystems, each depending only on those after it (no import cycle crosses them):
//! - `http`: the outer layer — the server (tokio + hyper), routes, limits, webhook signatures, the
//!   body check; turns a request into a runtime `Event` and an `Admission` into an answer;
//! - `runtime`: the `Engine` and its admission (dedupe, journal, intake), pipelines, slots, the
//!   slot loop, worker processes, the execution lifecycle;
//! - `state`: per-key state stores (memory, SQLite, Redis) and their journals;
//! - `observe`: counters, latency histograms, Prometheus text, per-second series (a leaf);
//! - `config`, `error`, `outcome`: leaves shared by all.
//!
//! The composition root (the bindings) builds the `Engine`, opens it, and starts the
//! `HttpServer` with it; modules are private, and what the bindings use is re-exported here.

#![forbid(unsafe_code)]

mod config;
mod error;
mod http;
mod observe;
mod outcome;
mod runtime;
mod state;

pub use bytes::Bytes;
pub use config::{
    AppConfig, DedupeSpec, EventFilter, EventTypeSource, Isolation, KeySpec, MissingKey, PipelineConfig,
    SignatureScheme, SignatureSpec, WorkerCommand,
};
pub use error::ErrorCode;
pub use http::{sign_hex, HttpError, HttpListener, HttpServer};
pub use hyper::HeaderMap;
pub use runtime::wire;
pub use runtime::{
    run_slot, Backend, Begun, CommitNow, Engine, EngineError, KeyFn, LoopEnd, LoopSettings, More, Pipeline, RunResult,
    SlotDied, WarmupReason, CRASH_REASONS, RECYCLE_REASONS, WARMUP_REASONS,
};
pub use state::redis::{lease_for, RedisDb};
pub use state::sqlite::{SqliteDb, SqliteOptions};
pub use state::{MemoryStore, StateStore, StoreError};
