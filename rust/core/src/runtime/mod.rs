//! The execution runtime: pipelines, their intake, slots and the lifecycle of an execution.
//! Uses the state stores and `observe`; never the HTTP layer.

pub mod dedupe;
pub mod execution;
pub mod ids;
pub mod intake;
pub mod pipeline;
pub mod process;
pub mod slot_loop;
pub mod slots;
pub mod wakes;
pub mod wire;
