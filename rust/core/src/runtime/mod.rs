//! The execution runtime: the engine and its one way in (`admit`: dedupe, journal, intake, undo),
//! pipelines, their intake (ring → per-key lanes), slots and the slot loop, the backends (thread
//! slots in the bindings, worker processes here), and the lifecycle of an execution (`execution`:
//! status, outcome, settle). Uses `state` and `observe`; never the HTTP layer.
//!
//! One aggregate has references both ways, and only it: a [`Pipeline`] owns its intake, its
//! wake-up queue and its slot pool, and the executions it holds point back at it
//! (`execution` ↔ `pipeline` ↔ `intake`, `wakes`). Everything else depends one way.

mod admit;
pub(crate) mod dedupe;
mod engine;
pub(crate) mod execution;
mod ids;
pub(crate) mod intake;
pub(crate) mod pipeline;
mod process;
pub(crate) mod records;
mod recovery;
pub(crate) mod slot_loop;
pub(crate) mod slots;
pub(crate) mod wakes;
pub mod wire;

pub use admit::{Admission, Event, Repeat};
pub use engine::{Engine, EngineError, KeyFn};
pub use execution::Execution;
pub use pipeline::Pipeline;
pub use slot_loop::{run_slot, Backend, Begun, CommitNow, LoopEnd, LoopSettings, More, RunResult, SlotDied};
pub use slots::{WarmupReason, CRASH_REASONS, RECYCLE_REASONS, WARMUP_REASONS};
