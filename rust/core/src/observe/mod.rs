//! Observation: counters, latency histograms and their Prometheus text; execution records.

pub mod metrics;
pub mod records;
