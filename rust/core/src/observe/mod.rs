//! Observation: counters, latency histograms and their Prometheus text; execution records.

pub mod metrics;
pub mod pool;
pub mod records;
