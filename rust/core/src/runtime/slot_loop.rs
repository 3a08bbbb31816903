//! The slot loop: what every slot does, whatever runs its pipeline code.
//!
//! ```text
//! loop: take a batch of runnable events (lanes) → begin each: queued → running, load its key's
//!       state (store I/O, no interpreter lock) → backend runs the pipeline per event → claim each
//!       result at once (running → committing; a deadline that passed first wins) → commit state
//!       and record, reply → drop the jobs (their lanes become runnable again)
//! ```
//!
//! A [`Backend`] runs pipeline code only: in this process's interpreter (the bindings' thread
//! backend, which commits after detaching from the interpreter) or in a worker process
//! ([`crate::runtime::process`], which commits each result as it arrives, or on a store that
//! commits batches in one transaction, the results that came back within about a millisecond).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::runtime::execution::Job;
use crate::runtime::pipeline::Pipeline;
use crate::state::StoreError;

/// What the pipeline produced for one event.
#[derive(Debug)]
pub enum RunResult {
    /// The reply (JSON) and, for keyed events, the new state (JSON).
    Reply {
        reply: Bytes,
        state: Option<Bytes>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug)]
enum Pending {
    NotRun,
    /// Ran; the result waits for the batch to end (a backend that holds the interpreter lock).
    Ran(RunResult),
    Done,
}

/// One event of a batch, begun: running, its key's state loaded.
pub struct Begun {
    pub job: Job,
    pub state: Option<Bytes>,
    pending: Pending,
}

impl Begun {
    /// Backends call this right before the pipeline runs this event.
    pub fn start_run(&mut self) {
        self.job.mark_started();
    }

    pub fn has_result(&self) -> bool {
        !matches!(self.pending, Pending::NotRun)
    }

    /// Ran, and its result waits to be committed with the batch's others (`Backend::commits_inline`
    /// is false).
    pub fn awaits_commit(&self) -> bool {
        matches!(self.pending, Pending::Ran(_))
    }
}

/// A slot that died in the middle of a batch (its worker process exited or hung).
#[derive(Debug, Clone)]
pub struct SlotDied {
    /// `exit`, `signal`, `hang` or `protocol` (label of `warmslot_slot_crashes_total`).
    pub reason: &'static str,
    pub message: String,
    /// Events `[0, started)` without a result were running: they fail with `slot_crashed`. Later
    /// ones never started and run again elsewhere.
    pub started: usize,
}

/// Takes up to `n` more begun events without waiting (a backend that runs several events at once
/// tops itself up while it runs).
pub type More<'a> = dyn FnMut(usize) -> Vec<Begun> + 'a;

/// Commits, in one store transaction, the results a batch holds so far (`Begun::awaits_commit`):
/// a backend that waits for more results calls it rather than hold finished ones.
pub type CommitNow<'a> = dyn FnMut(&mut [Begun]) + 'a;

/// Runs pipeline code for a batch. Implementations call `done` once per event that produced a
/// result, in any order, and never touch the store themselves (they may call `commit_now`). A
/// backend may stop early: events it did not run (no `done`) go back to the front of their lanes.
/// It should skip events that already ended (`b.job.exec.status()` is final: timed out while
/// waiting in the batch).
pub trait Backend {
    /// True when results are committed as they arrive; false when `done` keeps them for one
    /// transaction at the end of the batch (or at `commit_now`).
    fn commits_inline(&self) -> bool;
    /// The most events the slot loop takes for one batch, below the pipeline's `max_batch` (a
    /// backend that runs a batch's events at once, up to a concurrency, takes no more than it
    /// can start and tops up with `more` as they finish). The default: `max_batch`.
    fn batch_limit(&self) -> usize {
        usize::MAX
    }
    /// Runs `batch`; may append events from `more` to it and run them too.
    fn run(
        &mut self,
        batch: &mut Vec<Begun>,
        more: &mut More<'_>,
        done: &mut dyn FnMut(&mut Begun, RunResult),
        commit_now: &mut CommitNow<'_>,
    ) -> Result<(), SlotDied>;
    /// Asked between batches: `Some(reason)` when the slot should be recycled now.
    fn recycle(&mut self) -> Option<&'static str> {
        None
    }
    /// A clock of the CPU time this slot's pipeline code uses, in µs (read before and after each
    /// batch; only differences count). The default, for backends that run pipeline code on the
    /// slot loop's own thread: that thread's CPU time.
    fn cpu_clock_us(&mut self) -> Option<u64> {
        thread_cpu_us()
    }
}

// NOTE: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` through rustix (no `unsafe` here) cost 0.5-1.3 µs a
// call (measured 2026-12-02 by `thread_cpu_clock_is_cheap` below: debug build, 10^5 calls, a
// shared 2-core machine); two calls a batch, beside a batch's interpreter attach, Python call and
// state commit (tens of µs at least), are under a few percent of the lightest batch.
/// CPU time of the calling thread, in µs.
pub fn thread_cpu_us() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000)
}

/// Why a slot loop ended.
#[derive(Debug)]
pub enum LoopEnd {
    /// The pool asked this slot to retire: it finished what it held.
    Retired,
    /// The pipeline closed (server shutdown).
    Stopped,
    Died(SlotDied),
    Recycle(&'static str),
}

/// Per-slot loop settings.
pub struct LoopSettings {
    pub spin: Duration,
    /// When this slot's warm-up began and finished: an event that arrived in between and runs
    /// here waited for this warm-up: a cold start.
    pub warm_from: Instant,
    pub warm_at: Instant,
}

// NOTE: a batch is sized so that it takes about this long to run (from the measured per-event run
// time), capped by `max_batch`: light pipelines get big batches (one interpreter attach per
// ~60 events at ~30 µs each), slow ones get one event at a time, so an event never waits behind a
// slow event of another key inside one slot's batch.
const BATCH_BUDGET_US: f64 = 2_000.0;

/// Claims the result (a deadline that passed first wins: nothing is committed), commits it and
/// releases the event's lane at once, so its key's next event can run while this batch goes on.
fn settle(begun: &mut Begun, result: RunResult) {
    if begun.job.claim() {
        match result {
            RunResult::Reply { reply, state } => {
                begun.job.commit(reply, state);
            }
            RunResult::Error { code, message } => {
                begun.job.fail_claimed(code, message);
            }
        }
    }
    begun.pending = Pending::Done;
    drop(begun.job.lane.take());
}

/// Commits the results a batch holds (a backend that commits after the batch) in one store
/// transaction where the store has them; failures and refusals settle one by one.
fn commit_together(pipeline: &Pipeline, batch: &mut [Begun]) {
    let mut prepared = Vec::new();
    for (i, b) in batch.iter_mut().enumerate() {
        let pending = std::mem::replace(&mut b.pending, Pending::Done);
        let Pending::Ran(RunResult::Reply { reply, state }) = pending else {
            b.pending = pending; // errors and unrun events settle one by one, after this
            continue;
        };
        // The deadline may have answered it first (then nothing is committed).
        if b.job.claim() {
            if let Some(p) = b.job.prepare_commit(reply, state) {
                prepared.push((i, p));
            }
        }
    }
    if prepared.is_empty() {
        return;
    }
    let items = prepared
        .iter_mut()
        .map(|(i, p)| (batch[*i].job.exec.key.as_deref(), p.state.take(), p.record.as_ref()))
        .collect();
    let (committed, error) = pipeline.store.commit_executions(items);
    for (n, (i, p)) in prepared.into_iter().enumerate() {
        let result = match &error {
            Some(e) if n >= committed => Err(e.clone()),
            _ => Ok(()),
        };
        let b = &mut batch[i];
        b.job.finish_commit(p, result);
        drop(b.job.lane.take());
    }
}

/// Begins each job: `queued → running`, its key's state loaded (all the batch's keys in one store
/// call). A job that cannot begin was already answered (timed out, state error, closed) and is
/// dropped here.
fn begin_all(pipeline: &Pipeline, settings: &LoopSettings, jobs: Vec<Job>) -> Vec<Begun> {
    let mut started = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let received = job.exec.received;
        if !job.cold_counted && settings.warm_from <= received && received < settings.warm_at {
            job.cold_counted = true; // once, even if it is requeued and runs elsewhere
            pipeline.slots.count_cold_start();
        }
        if job.start().is_ok() {
            started.push(job);
        }
    }
    let keys: Vec<&str> = started.iter().filter_map(|j| j.exec.key.as_deref()).collect();
    let mut states = if keys.is_empty() { Vec::new() } else { pipeline.store.load_many(&keys) }.into_iter();
    let mut batch = Vec::with_capacity(started.len());
    for mut job in started {
        let state = match job.exec.key {
            None => Ok(None),
            Some(_) => {
                let loaded = states.next().unwrap_or_else(|| Err(StoreError("the store lost a load".into())));
                job.loaded(loaded)
            }
        };
        if let Ok(state) = state {
            batch.push(Begun { job, state, pending: Pending::NotRun });
        }
    }
    batch
}

/// Runs the slot until it retires, the pipeline closes, or the backend dies or asks to recycle.
pub fn run_slot(pipeline: &Arc<Pipeline>, slot: usize, backend: &mut dyn Backend, settings: &LoopSettings) -> LoopEnd {
    let max_batch = pipeline.config.max_batch.min(backend.batch_limit()).max(1);
    let mut per_event_us = 0.0f64;
    loop {
        if pipeline.slots.should_retire() {
            return LoopEnd::Retired;
        }
        if let Some(reason) = backend.recycle() {
            return LoopEnd::Recycle(reason);
        }
        let limit = if per_event_us <= 0.0 {
            max_batch
        } else {
            ((BATCH_BUDGET_US / per_event_us) as usize).clamp(1, max_batch)
        };
        let jobs = pipeline.intake.take_batch(limit, Duration::from_millis(100), settings.spin);
        if jobs.is_empty() {
            if pipeline.is_closed() {
                return LoopEnd::Stopped;
            }
            continue;
        }
        pipeline.slots.set_busy(slot, true);
        let mut batch = begin_all(pipeline, settings, jobs);
        let inline = backend.commits_inline();
        let cpu_before = backend.cpu_clock_us();
        let started = Instant::now();
        let mut more =
            |n: usize| begin_all(pipeline, settings, pipeline.intake.take_batch(n, Duration::ZERO, Duration::ZERO));
        let mut commit_now = |batch: &mut [Begun]| commit_together(pipeline, batch);
        let outcome = backend.run(
            &mut batch,
            &mut more,
            &mut |b: &mut Begun, result: RunResult| {
                if !matches!(b.pending, Pending::NotRun) {
                    return; // a second result for one event: ignore it
                }
                if inline {
                    settle(b, result);
                } else {
                    // NOTE: claimed only at the commit (batch end or `commit_now`), so a deadline
                    // that passes meanwhile still answers 504 (and nothing commits), not a late 200.
                    b.job.end_run();
                    b.pending = Pending::Ran(result);
                }
            },
            &mut commit_now,
        );
        if let (Some(a), Some(b)) = (cpu_before, backend.cpu_clock_us()) {
            pipeline.slots.add_cpu_us(b.saturating_sub(a));
        }
        if !batch.is_empty() {
            let sample = started.elapsed().as_micros() as f64 / batch.len() as f64;
            per_event_us = if per_event_us <= 0.0 { sample } else { 0.7 * per_event_us + 0.3 * sample };
        }
        let died = outcome.err();
        if !inline {
            commit_together(pipeline, &mut batch);
        }
        let mut requeue = Vec::new();
        for (i, mut b) in batch.into_iter().enumerate() {
            match std::mem::replace(&mut b.pending, Pending::Done) {
                Pending::Ran(result) => settle(&mut b, result),
                Pending::Done => {}
                Pending::NotRun => match &died {
                    Some(d) if i < d.started => {
                        b.job.fail(ErrorCode::SlotCrashed, d.message.clone());
                    }
                    // Never started (or already ended): back to the front of its lane, unless
                    // its deadline answered it meanwhile.
                    _ => {
                        if b.job.rollback() {
                            requeue.push(b.job);
                        }
                    }
                },
            }
        }
        pipeline.intake.requeue(requeue);
        pipeline.slots.set_busy(slot, false);
        if let Some(d) = died {
            return LoopEnd::Died(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::thread_cpu_us;
    use std::time::Instant;

    #[test]
    fn thread_cpu_clock_counts_work_not_sleep() {
        let a = thread_cpu_us().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = thread_cpu_us().unwrap();
        assert!(b - a < 10_000, "a sleeping thread used {} µs of CPU", b - a);
        // Spinning advances it (on a busy machine, slower than the wall clock: that is the point).
        let t = Instant::now();
        let mut x = 0u64;
        while thread_cpu_us().unwrap() - b < 20_000 {
            x = x.wrapping_add(std::hint::black_box(1));
            assert!(t.elapsed().as_secs() < 10, "10 s of spinning did not count 20 ms of CPU (x={x})");
        }
    }
}
