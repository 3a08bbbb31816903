//! A pipeline's runtime: its configuration, ring, slot pool, state store and metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::PipelineConfig;
use crate::execution::Job;
use crate::metrics::PipelineMetrics;
use crate::ring::Ring;
use crate::scheduler::SchedulerWaker;
use crate::slots::SlotPool;
use crate::state::StateStore;

pub struct Pipeline {
    pub index: usize,
    pub config: PipelineConfig,
    pub ring: Ring<Job>,
    pub slots: SlotPool,
    pub store: Arc<dyn StateStore>,
    pub metrics: PipelineMetrics,
    /// Accepted executions that have no outcome yet.
    inflight: AtomicUsize,
}

impl Pipeline {
    pub fn new(index: usize, config: PipelineConfig, store: Arc<dyn StateStore>, waker: Arc<SchedulerWaker>) -> Self {
        let max_slots = config.max_slots.max(config.min_slots).max(1);
        Pipeline {
            index,
            ring: Ring::new(config.ring_capacity.max(1)),
            slots: SlotPool::new(max_slots, config.shared_mailbox, waker),
            store,
            metrics: PipelineMetrics::default(),
            inflight: AtomicUsize::new(0),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
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
