//! Observation: counters, latency histograms and their Prometheus text; per-second series.
//! A leaf: it takes plain values (`outcome`'s `Status` and `Timings`, counts, names) and imports
//! nothing of the runtime, the stores or HTTP.

pub(crate) mod metrics;
pub(crate) mod pool;
pub(crate) mod series;
