//! One execution: its shared record (status, outcome, timings) and the job that carries it
//! from the ingress through the intake (ring, then its key's lane) to a slot.
//!
//! Status moves forward only, by compare-and-swap, so a timeout and a late completion can race
//! safely: `Queued → Running → Committing → Succeeded`, `Running → Failed`, and
//! `Queued | Running → TimedOut`. Whoever wins the CAS decides; a pipeline that finishes after its
//! deadline commits nothing. A `Committing` execution cannot time out: its state write is under way.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::HeaderMap;
use tokio::sync::Notify;

use crate::error::ErrorCode;
use crate::runtime::intake::LaneLease;
use crate::runtime::pipeline::Pipeline;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Queued = 0,
    Running = 1,
    Committing = 2,
    Succeeded = 3,
    Failed = 4,
    TimedOut = 5,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Queued,
            1 => Status::Running,
            2 => Status::Committing,
            3 => Status::Succeeded,
            4 => Status::Failed,
            _ => Status::TimedOut,
        }
    }

    /// The name in the public contract (`Committing` shows as `running`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running | Status::Committing => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::TimedOut)
    }
}

/// Microseconds spent in each phase; `total_us` runs from the request read to the state commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub queue_us: u64,
    pub run_us: u64,
    pub commit_us: u64,
    pub total_us: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pipeline's reply, already JSON.
    Succeeded(Bytes),
    Failed {
        code: ErrorCode,
        message: String,
    },
    TimedOut {
        message: String,
    },
}

/// The shared record of one execution: read by `GET /executions/<id>`, awaited by the ingress.
pub struct Execution {
    pub id: u64,
    pub id_str: Box<str>,
    pub pipeline: Arc<Pipeline>,
    pub key: Option<Box<str>>,
    pub received: Instant,
    pub received_unix: f64,
    pub deadline: Option<Instant>,
    status: AtomicU8,
    outcome: OnceLock<(Outcome, Timings)>,
    done: Notify,
}

impl Execution {
    pub fn new(id: u64, id_str: Box<str>, pipeline: Arc<Pipeline>, key: Option<Box<str>>, received: Instant) -> Self {
        let deadline = pipeline.config.timeout.map(|t| received + t);
        let received_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Execution {
            id,
            id_str,
            pipeline,
            key,
            received,
            received_unix,
            deadline,
            status: AtomicU8::new(Status::Queued as u8),
            outcome: OnceLock::new(),
            done: Notify::new(),
        }
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire))
    }

    pub fn outcome(&self) -> Option<&(Outcome, Timings)> {
        self.outcome.get()
    }

    fn transition(&self, from: Status, to: Status) -> bool {
        // AcqRel: the winner of a transition sees everything the previous owner wrote.
        self.status.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Publishes the final outcome once; wakes whoever awaits it.
    fn finish(&self, status: Status, outcome: Outcome, timings: Timings) {
        self.pipeline.metrics.record(status, &timings);
        let _ = self.outcome.set((outcome, timings));
        self.status.store(status as u8, Ordering::Release);
        self.pipeline.finished_one();
        // notify_one stores a permit when nobody waits yet, so a waiter that arrives later still wakes.
        self.done.notify_one();
    }

    /// Takes the right to decide the outcome: moves `from` to `Committing`.
    fn claim(&self, from: &[Status]) -> bool {
        from.iter().any(|&f| self.transition(f, Status::Committing))
    }

    /// Marks the execution timed out unless it already finished or is committing.
    /// Returns true when this call decided the outcome.
    pub fn time_out(&self) -> bool {
        if !self.claim(&[Status::Queued, Status::Running]) {
            return false;
        }
        let message = match self.pipeline.config.timeout {
            Some(t) => {
                format!("pipeline {:?} did not finish within {:.3}s", self.pipeline.config.name, t.as_secs_f64())
            }
            None => format!("pipeline {:?} did not finish in time", self.pipeline.config.name),
        };
        let total_us = self.received.elapsed().as_micros() as u64;
        self.finish(Status::TimedOut, Outcome::TimedOut { message }, Timings { total_us, ..Timings::default() });
        true
    }

    /// Waits until the execution has an outcome.
    pub async fn wait(&self) -> &(Outcome, Timings) {
        loop {
            if let Some(o) = self.outcome.get() {
                if self.status().is_final() {
                    return o;
                }
            }
            self.done.notified().await;
        }
    }

    /// Fails an execution that will not be answered otherwise (shutdown): a queued one, or one
    /// still running past the drain (its late result is then discarded, nothing committed).
    pub fn abandon(&self, code: ErrorCode, message: String) -> bool {
        self.abandon_from(&[Status::Queued, Status::Running], code, message)
    }

    /// Fails an execution only if no slot has started it yet.
    pub fn abandon_queued(&self, code: ErrorCode, message: String) -> bool {
        self.abandon_from(&[Status::Queued], code, message)
    }

    fn abandon_from(&self, from: &[Status], code: ErrorCode, message: String) -> bool {
        if !self.claim(from) {
            return false;
        }
        let total_us = self.received.elapsed().as_micros() as u64;
        self.finish(Status::Failed, Outcome::Failed { code, message }, Timings { total_us, ..Timings::default() });
        true
    }
}

/// Why `Job::begin` refused to start a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginError {
    /// The deadline passed while the event waited; the execution is already `timed_out`.
    TimedOut,
    /// Loading the key's state failed; the execution is now `failed`.
    State(String),
    /// The server stopped waiting for queued work (drain expired); the execution is now `failed`
    /// with `shutting_down` and its client is answered 503.
    Closed,
}

/// An event on its way to a slot. Dropping a job that never finished fails its execution, so an
/// accepted request always gets an answer; dropping it also releases its key's lane.
pub struct Job {
    pub exec: Arc<Execution>,
    pub body: Bytes,
    /// The body, parsed once at the ingress (the slot hands it to the pipeline as is).
    pub event: serde_json::Value,
    pub headers: HeaderMap,
    /// Set while the job is out of its lane (taken by a slot); dropped last, after the outcome.
    pub(crate) lane: Option<LaneLease>,
    /// False for a job refused at admission: it was never accepted, so dropping it reports nothing.
    live: bool,
    /// Already counted as a cold start (a requeued job is not counted twice).
    pub(crate) cold_counted: bool,
    /// `begin` loaded the key's state and nothing has committed it yet: a store that locks keys
    /// (Redis) must be told when the job ends without a commit.
    holds_state: bool,
    started: Option<Instant>,
    timings: Timings,
}

impl Job {
    pub fn new(exec: Arc<Execution>, body: Bytes, event: serde_json::Value, headers: HeaderMap) -> Self {
        Job {
            exec,
            body,
            event,
            headers,
            lane: None,
            live: true,
            cold_counted: false,
            holds_state: false,
            started: None,
            timings: Timings::default(),
        }
    }

    /// Forgets a job that was refused at admission: its execution never existed.
    pub(crate) fn discard(mut self) {
        self.live = false;
    }

    /// Seconds left before the deadline (negative when past), or None without a timeout.
    pub fn remaining(&self) -> Option<f64> {
        let now = Instant::now();
        self.exec.deadline.map(|d| if d >= now { (d - now).as_secs_f64() } else { -(now - d).as_secs_f64() })
    }

    /// Moves the execution to `running` and loads the key's state (None when the key has none yet).
    pub fn begin(&mut self) -> Result<Option<Bytes>, BeginError> {
        if self.exec.pipeline.is_closed() {
            self.exec
                .abandon_queued(ErrorCode::ShuttingDown, "the server stopped before this execution could run".into());
            return Err(BeginError::Closed);
        }
        if !self.exec.transition(Status::Queued, Status::Running) {
            return Err(BeginError::TimedOut);
        }
        let now = Instant::now();
        self.started = Some(now);
        self.timings.queue_us = now.duration_since(self.exec.received).as_micros() as u64;
        let Some(key) = &self.exec.key else { return Ok(None) };
        match self.exec.pipeline.store.load(key) {
            Ok(state) => {
                self.holds_state = true;
                if self.exec.status() != Status::Running {
                    // The deadline passed while the store waited (a key locked by another
                    // process): do not run a pipeline whose client was already answered 504.
                    return Err(BeginError::TimedOut); // dropping the job releases the lease
                }
                Ok(state)
            }
            Err(e) => {
                let message = e.to_string();
                self.fail(ErrorCode::StateError, message.clone());
                Err(BeginError::State(message))
            }
        }
    }

    /// The run of this event starts now (a batch's later events wait for the earlier ones: that
    /// wait counts as queueing, not running).
    pub fn mark_started(&mut self) {
        let now = Instant::now();
        self.started = Some(now);
        self.timings.queue_us = now.duration_since(self.exec.received).as_micros() as u64;
    }

    /// The pipeline returned: its run time stops here, even if the outcome is claimed later.
    pub fn end_run(&mut self) {
        self.run_done();
        self.started = None;
    }

    fn run_done(&mut self) {
        if let Some(started) = self.started {
            self.timings.run_us = started.elapsed().as_micros() as u64;
        }
    }

    /// Ends the run: takes the right to decide the outcome (`Running → Committing`) unless the
    /// deadline won. Call right after the pipeline returns; then `commit` or `fail_claimed`.
    pub fn claim(&mut self) -> bool {
        self.run_done();
        self.exec.claim(&[Status::Running])
    }

    /// Puts a begun job back to `queued` (its slot died before running it): releases the state it
    /// loaded. False when it had already ended (timed out meanwhile): then just drop it.
    pub fn rollback(&mut self) -> bool {
        if self.holds_state {
            self.holds_state = false;
            if let Some(key) = &self.exec.key {
                self.exec.pipeline.store.release(key);
            }
        }
        self.started = None;
        self.timings = Timings::default();
        self.exec.transition(Status::Running, Status::Queued) || self.exec.status() == Status::Queued
    }

    /// Commits `state` (for keyed events) and publishes `reply`. Returns false when the deadline
    /// won the race: then nothing is committed.
    pub fn succeed(&mut self, reply: Bytes, state: Option<Bytes>) -> bool {
        self.claim() && self.commit(reply, state)
    }

    /// After `claim`: commits `state` and publishes `reply`. False when the commit failed (the
    /// execution is then failed with `state_error`).
    pub fn commit(&mut self, reply: Bytes, state: Option<Bytes>) -> bool {
        debug_assert_eq!(self.exec.status(), Status::Committing);
        if let (Some(_), Some(state)) = (&self.exec.key, &state) {
            if let Err(e) = crate::state::check_size(state, self.exec.pipeline.config.max_state_bytes) {
                self.fail_claimed(ErrorCode::StateTooLarge, e.to_string());
                return false;
            }
        }
        let commit_start = Instant::now();
        if let (Some(key), Some(state)) = (&self.exec.key, state) {
            self.holds_state = false; // a commit ends the lease, whether it succeeds or not
            if let Err(e) = self.exec.pipeline.store.commit(key, state) {
                self.exec.finish(
                    Status::Failed,
                    Outcome::Failed { code: ErrorCode::StateError, message: e.to_string() },
                    self.final_timings(commit_start),
                );
                return false;
            }
        }
        self.exec.finish(Status::Succeeded, Outcome::Succeeded(reply), self.final_timings(commit_start));
        true
    }

    /// Fails the execution with `code`; commits nothing. Returns false if it had already ended.
    pub fn fail(&mut self, code: ErrorCode, message: String) -> bool {
        self.claim() && self.fail_claimed(code, message)
    }

    /// After `claim`: fails the execution with `code`; commits nothing.
    pub fn fail_claimed(&mut self, code: ErrorCode, message: String) -> bool {
        let t = self.final_timings(Instant::now());
        self.exec.finish(Status::Failed, Outcome::Failed { code, message }, t);
        true
    }

    /// Times the execution out from the slot's side (an async run that was cancelled).
    pub fn time_out(&mut self) -> bool {
        self.run_done();
        self.exec.time_out()
    }

    fn final_timings(&self, commit_start: Instant) -> Timings {
        let now = Instant::now();
        Timings {
            commit_us: now.duration_since(commit_start).as_micros() as u64,
            total_us: now.duration_since(self.exec.received).as_micros() as u64,
            ..self.timings
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.holds_state {
            if let Some(key) = &self.exec.key {
                self.exec.pipeline.store.release(key);
            }
        }
        if self.live && matches!(self.exec.status(), Status::Queued | Status::Running) {
            self.exec.abandon(
                ErrorCode::ShuttingDown,
                format!("execution {} was not run: the server is shutting down", self.exec.id_str),
            );
        }
    }
}
