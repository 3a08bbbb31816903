//! Observation: counters, latency histograms and their Prometheus text; per-second series;
//! execution records.

pub mod metrics;
pub mod pool;
pub mod records;
pub mod series;
