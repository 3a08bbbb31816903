//! The slot pool of one pipeline: which slots are warm or busy, retirement requests, and the
//! counters the predictor and `/metrics` read (warm-ups, crashes, recycles, idle time, cold starts).
//!
//! A slot is a worker whose pipeline instance was set up before traffic came: a host-language
//! thread, a task on an event loop, or a worker process. Slots pull work from the pipeline's
//! [`Intake`](crate::runtime::intake::Intake); nothing here routes events.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Why a slot warmed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmupReason {
    /// Before demand: the pool was growing with nothing waiting (the predictor's forecast, or min_slots).
    Ahead,
    /// Events were already waiting when the warm-up started.
    Demand,
    /// A slot replaced one that crashed or was recycled.
    Replace,
}

pub const WARMUP_REASONS: [&str; 3] = ["ahead", "demand", "replace"];
pub const CRASH_REASONS: [&str; 4] = ["exit", "signal", "hang", "protocol"];
pub const RECYCLE_REASONS: [&str; 2] = ["max_executions", "max_memory"];

/// A running slot loop, counted live while it exists (see [`SlotPool::live_loop`]).
pub struct LiveLoop<'a> {
    pool: &'a SlotPool,
    retired: bool,
}

impl LiveLoop<'_> {
    /// The loop retired: `should_retire` has already taken it out of the live count.
    pub fn retired(mut self) {
        self.retired = true;
    }
}

impl Drop for LiveLoop<'_> {
    fn drop(&mut self) {
        if !self.retired {
            let _ = self.pool.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }
}

#[derive(Default)]
pub struct Slot {
    warm: AtomicBool,
    busy: AtomicBool,
    /// Resident memory of the slot's worker process, in bytes (0 for in-process slots).
    rss_bytes: AtomicU64,
}

pub struct SlotPool {
    slots: Box<[Slot]>,
    /// Slot loops running (warming, warm or draining); a retiring loop leaves this count first.
    live: AtomicUsize,
    /// The most slot loops to keep: loops above it retire between batches.
    keep: AtomicUsize,
    warmups: [AtomicU64; 3],
    crashes: [AtomicU64; 4],
    recycles: [AtomicU64; 2],
    cold_starts: AtomicU64,
    /// Integral of (warm - busy) slots over time, in microseconds.
    idle_us: AtomicU64,
    idle_clock: Mutex<(Instant, usize)>,
    /// Most recent warm-up time (µs), an EWMA: the predictor's horizon.
    warmup_us: AtomicU64,
    /// CPU time the slots spent running batches (µs): thread CPU time of a thread slot, the
    /// worker's user + system time for a process slot. Beside the wall time it tells the
    /// predictor whether more slots can overlap.
    cpu_us: AtomicU64,
    /// The predictor's phases (labels of `warmslot_predictor_state`) and the current one.
    predictor: Mutex<(Vec<String>, usize)>,
    /// Most recent warm-up or crash problem and its slot, shown by `/healthz` until that slot
    /// warms up again.
    last_error: Mutex<Option<(usize, String)>>,
}

impl SlotPool {
    pub fn new(max_slots: usize) -> Self {
        SlotPool {
            slots: (0..max_slots.max(1)).map(|_| Slot::default()).collect(),
            live: AtomicUsize::new(0),
            keep: AtomicUsize::new(usize::MAX),
            warmups: Default::default(),
            crashes: Default::default(),
            recycles: Default::default(),
            cold_starts: AtomicU64::new(0),
            idle_us: AtomicU64::new(0),
            idle_clock: Mutex::new((Instant::now(), 0)),
            warmup_us: AtomicU64::new(0),
            cpu_us: AtomicU64::new(0),
            predictor: Mutex::new((Vec::new(), 0)),
            last_error: Mutex::new(None),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds the idle time since the last change to the integral; call before warm/busy change.
    fn tick_idle(&self) {
        let mut clock = self.idle_clock.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let idle = self.warm_count().saturating_sub(self.busy_count());
        let dt = now.duration_since(clock.0).as_micros() as u64;
        self.idle_us.fetch_add(dt * clock.1 as u64, Ordering::Relaxed);
        *clock = (now, idle);
    }

    fn set_idle_level(&self) {
        let mut clock = self.idle_clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.1 = self.warm_count().saturating_sub(self.busy_count());
    }

    /// A slot whose instance is set up after `warmup` seconds; from now on it takes work.
    pub fn mark_warm(&self, slot: usize, reason: WarmupReason, warmup_us: u64) {
        self.tick_idle();
        self.slots[slot].warm.store(true, Ordering::Release);
        self.set_idle_level();
        self.warmups[reason as usize].fetch_add(1, Ordering::Relaxed);
        let old = self.warmup_us.load(Ordering::Relaxed);
        let ewma = if old == 0 { warmup_us } else { (old * 7 + warmup_us * 3) / 10 };
        self.warmup_us.store(ewma.max(1), Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_some_and(|(s, _)| *s == slot) {
            *last = None;
        }
    }

    /// A slot that stopped (its worker exited or retired); it takes no more work.
    pub fn mark_cold(&self, slot: usize) {
        if slot >= self.slots.len() {
            return;
        }
        self.tick_idle();
        self.slots[slot].warm.store(false, Ordering::Release);
        self.slots[slot].busy.store(false, Ordering::Release);
        self.slots[slot].rss_bytes.store(0, Ordering::Relaxed);
        self.set_idle_level();
    }

    pub fn set_busy(&self, slot: usize, busy: bool) {
        self.tick_idle();
        self.slots[slot].busy.store(busy, Ordering::Release);
        self.set_idle_level();
    }

    pub fn is_warm(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.warm.load(Ordering::Acquire))
    }

    pub fn warm_count(&self) -> usize {
        self.slots.iter().filter(|s| s.warm.load(Ordering::Acquire)).count()
    }

    pub fn busy_count(&self) -> usize {
        self.slots.iter().filter(|s| s.warm.load(Ordering::Acquire) && s.busy.load(Ordering::Acquire)).count()
    }

    /// A slot loop starts (before its warm-up): it counts as live until the guard drops, or until
    /// it retires ([`SlotPool::should_retire`] took it out of the count already).
    pub fn live_loop(&self) -> LiveLoop<'_> {
        self.live.fetch_add(1, Ordering::AcqRel);
        LiveLoop { pool: self, retired: false }
    }

    /// Keeps at most `n` slot loops: those above it finish what they hold and stop (the pool
    /// shrinks). `usize::MAX` cancels. Idempotent, so a predictor may repeat it every tick.
    pub fn keep_at_most(&self, n: usize) {
        self.keep.store(n, Ordering::Release);
    }

    /// A slot between batches asks whether it should retire. Each `true` has already taken the
    /// slot out of the live count, so no more slots retire than the pool has above `keep`.
    pub fn should_retire(&self) -> bool {
        let keep = self.keep.load(Ordering::Acquire);
        self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n > keep).then(|| n - 1)).is_ok()
    }

    /// Slot loops above `keep` that have not retired yet.
    pub fn retire_pending(&self) -> usize {
        self.live.load(Ordering::Acquire).saturating_sub(self.keep.load(Ordering::Acquire))
    }

    pub fn count_crash(&self, slot: usize, reason: &str, message: &str) {
        if let Some(i) = CRASH_REASONS.iter().position(|r| *r == reason) {
            self.crashes[i].fetch_add(1, Ordering::Relaxed);
        }
        self.set_error(slot, format!("slot {slot}: {message}"));
    }

    pub fn count_recycle(&self, reason: &str) {
        if let Some(i) = RECYCLE_REASONS.iter().position(|r| *r == reason) {
            self.recycles[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_cold_start(&self) {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_error(&self, slot: usize, message: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((slot, message));
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, m)| m.clone())
    }

    pub fn set_rss(&self, slot: usize, bytes: u64) {
        self.slots[slot].rss_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn rss_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.rss_bytes.load(Ordering::Relaxed)).sum()
    }

    pub fn warmups(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.warmups[i].load(Ordering::Relaxed))
    }

    pub fn crashes(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.crashes[i].load(Ordering::Relaxed))
    }

    pub fn recycles(&self) -> [u64; 2] {
        std::array::from_fn(|i| self.recycles[i].load(Ordering::Relaxed))
    }

    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }

    /// Idle slot-seconds so far (warm slots running nothing, integrated over time).
    pub fn idle_slot_seconds(&self) -> f64 {
        self.tick_idle();
        self.idle_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Adds CPU time spent running a batch.
    pub fn add_cpu_us(&self, us: u64) {
        self.cpu_us.fetch_add(us, Ordering::Relaxed);
    }

    /// CPU time the slots spent running batches so far, in µs (0: not measured, e.g. async
    /// pipelines in this interpreter).
    pub fn cpu_us(&self) -> u64 {
        self.cpu_us.load(Ordering::Relaxed)
    }

    /// Sets the predictor's current phase; `phase` is added to the known ones if new.
    pub fn set_predictor_phase(&self, phase: &str) {
        let mut p = self.predictor.lock().unwrap_or_else(|e| e.into_inner());
        match p.0.iter().position(|s| s == phase) {
            Some(i) => p.1 = i,
            None => {
                p.0.push(phase.to_string());
                p.1 = p.0.len() - 1;
            }
        }
    }

    /// Declares the predictor's phases (all exported, 1 for the current one).
    pub fn set_predictor_phases(&self, phases: &[String]) {
        let mut p = self.predictor.lock().unwrap_or_else(|e| e.into_inner());
        let current = p.0.get(p.1).cloned();
        p.0 = phases.to_vec();
        p.1 = current.and_then(|c| p.0.iter().position(|s| *s == c)).unwrap_or(0);
    }

    /// (phase, is current) for every phase the predictor declared or reported.
    pub fn predictor_phases(&self) -> Vec<(String, bool)> {
        let p = self.predictor.lock().unwrap_or_else(|e| e.into_inner());
        p.0.iter().enumerate().map(|(i, s)| (s.clone(), i == p.1)).collect()
    }

    /// Measured warm-up time of this pipeline's slots (EWMA, seconds; 0 before the first).
    pub fn warmup_seconds(&self) -> f64 {
        self.warmup_us.load(Ordering::Relaxed) as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::pool::{render, PoolCounters};

    #[test]
    fn predictor_target_state_and_cpu_time_are_rendered() {
        let pool = SlotPool::new(2);
        pool.set_predictor_phases(&["stable".to_string(), "panic".to_string()]);
        pool.set_predictor_phase("panic");
        pool.add_cpu_us(1_500_000);
        let text = render(&[PoolCounters {
            name: "p",
            warmups: vec![],
            crashes: vec![],
            recycles: vec![],
            cold_starts: 0,
            idle_slot_seconds: 0.0,
            worker_rss_bytes: 0,
            waiting: 0,
            cpu_seconds: pool.cpu_us() as f64 / 1e6,
            target_slots: 3,
            predictor_phases: pool.predictor_phases(),
        }]);
        assert!(text.contains("warmslot_predictor_target_slots{pipeline=\"p\"} 3\n"), "{text}");
        assert!(text.contains("warmslot_predictor_state{pipeline=\"p\",state=\"stable\"} 0\n"), "{text}");
        assert!(text.contains("warmslot_predictor_state{pipeline=\"p\",state=\"panic\"} 1\n"), "{text}");
        assert!(text.contains("warmslot_slot_cpu_seconds_total{pipeline=\"p\"} 1.500000\n"), "{text}");
        // A phase the policy did not declare is added, and becomes the current one.
        pool.set_predictor_phase("warming");
        assert_eq!(
            pool.predictor_phases(),
            vec![("stable".into(), false), ("panic".into(), false), ("warming".into(), true)]
        );
    }
}
