//! A pipeline's runtime: its configuration, intake (ring + lanes), slot pool, state store and metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::PipelineConfig;
use crate::observe::metrics::PipelineMetrics;
use crate::runtime::intake::Intake;
use crate::runtime::slots::SlotPool;
use crate::runtime::wakes::Wakes;
use crate::state::StateStore;

pub struct Pipeline {
    pub index: usize,
    pub config: PipelineConfig,
    pub intake: Arc<Intake>,
    pub slots: SlotPool,
    pub store: Arc<dyn StateStore>,
    pub metrics: PipelineMetrics,
    /// Wakes the requests waiting for executions that slot threads finish (see `runtime::wakes`).
    pub(crate) wakes: Arc<Wakes>,
    /// Accepted executions that have no outcome yet.
    inflight: AtomicUsize,
    /// Webhooks that reached admission (accepted or refused with 429): the demand signal.
    arrivals: AtomicU64,
    /// Set by the predictor: the warm-slot target and the arrival rate it forecast (milli-req/s).
    target_slots: AtomicUsize,
    forecast_milli_rps: AtomicU64,
    /// Set at shutdown once the drain period is over: queued jobs are failed instead of run.
    closed: AtomicBool,
}

impl Pipeline {
    pub fn new(index: usize, config: PipelineConfig, store: Arc<dyn StateStore>) -> Self {
        let max_slots = config.max_slots.max(config.min_slots).max(1);
        Pipeline {
            index,
            intake: Intake::new(config.ring_capacity.max(1)),
            slots: SlotPool::new(max_slots),
            store,
            metrics: PipelineMetrics::default(),
            wakes: Arc::default(),
            inflight: AtomicUsize::new(0),
            arrivals: AtomicU64::new(0),
            target_slots: AtomicUsize::new(config.min_slots),
            forecast_milli_rps: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.intake.stop();
    }

    pub fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }

    pub(crate) fn arrived(&self) {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the predictor's decision (shown in /metrics).
    pub fn set_prediction(&self, target_slots: usize, forecast_rps: f64) {
        self.target_slots.store(target_slots, Ordering::Relaxed);
        self.forecast_milli_rps.store((forecast_rps.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn target_slots(&self) -> usize {
        self.target_slots.load(Ordering::Relaxed)
    }

    pub fn forecast_rps(&self) -> f64 {
        self.forecast_milli_rps.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub(crate) fn accepted_one(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn finished_one(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// True once the pipeline has its minimum of warm slots.
    pub fn is_ready(&self) -> bool {
        self.slots.warm_count() >= self.config.min_slots.min(self.slots.len())
    }
}
