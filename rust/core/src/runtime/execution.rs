//! One execution: its shared record (status, outcome, timings) and the job that carries it
//! from the ingress through the intake (ring, then its key's lane) to a slot.
//!
//! Status moves forward only, by compare-and-swap, so a timeout and a late completion can race
//! safely: `Queued → Running → Committing → Succeeded`, `Running → Failed`, and
//! `Queued | Running → TimedOut`. Whoever wins the CAS decides; a pipeline that finishes after its
//! deadline commits nothing. A `Committing` execution cannot time out: its state write is under way.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::HeaderMap;
use tokio::sync::Notify;

use crate::error::ErrorCode;
pub use crate::outcome::{Outcome, Status, Timings};
use crate::runtime::intake::LaneLease;
use crate::runtime::pipeline::Pipeline;
use crate::state::ExecutionRecord;

/// The shared record of one execution: read by `GET /executions/<id>`, awaited by the ingress.
pub struct Execution {
    pub id: u64,
    pub id_str: Box<str>,
    pub pipeline: Arc<Pipeline>,
    pub key: Option<Box<str>>,
    pub received: Instant,
    pub received_unix: f64,
    pub deadline: Option<Instant>,
    /// The delivery id it was deduplicated by (`Idempotency-Key`, `webhook-id`, ...).
    pub delivery: Option<Box<str>>,
    /// Answered `202` at once: failures are retried (`retries=`), and on a durable store the
    /// event was journaled before the answer.
    pub is_async: bool,
    status: AtomicU8,
    outcome: OnceLock<(Outcome, Timings)>,
    done: Notify,
    /// The errors of the attempts that failed and were retried, oldest first.
    retried: Mutex<Vec<(ErrorCode, String)>>,
    attempts: AtomicU32,
    /// The durable record was written with the commit (no separate outcome write).
    recorded: AtomicBool,
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
            delivery: None,
            is_async: false,
            status: AtomicU8::new(Status::Queued as u8),
            outcome: OnceLock::new(),
            done: Notify::new(),
            retried: Mutex::new(Vec::new()),
            attempts: AtomicU32::new(0),
            recorded: AtomicBool::new(false),
        }
    }

    /// Sets the delivery id and whether the client was answered `202` (before sharing it).
    pub fn with_delivery(mut self, delivery: Option<Box<str>>, is_async: bool) -> Self {
        self.delivery = delivery;
        self.is_async = is_async;
        self
    }

    /// A journaled event received at `received_unix` by an earlier run of the server.
    pub fn recovered(mut self, received_unix: f64) -> Self {
        self.received_unix = received_unix;
        self
    }

    /// Runs started so far (1 + retries).
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Acquire)
    }

    /// The record as `GET /executions/<id>` shows it, with `status` and, once final, `outcome`.
    pub fn record_json(&self, status: Status, outcome: Option<&(Outcome, Timings)>) -> String {
        let js = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let mut s = format!(
            "{{\"id\":{},\"pipeline\":{},\"key\":{},\"status\":\"{}\",\"received_at\":{}",
            js(&self.id_str),
            js(self.pipeline.name()),
            self.key.as_deref().map_or_else(|| "null".to_string(), js),
            status.as_str(),
            self.received_unix,
        );
        if let Some(d) = &self.delivery {
            s.push_str(&format!(",\"delivery_id\":{}", js(d)));
        }
        let timings = |t: &Timings| {
            format!(
                "{{\"queue_us\":{},\"run_us\":{},\"commit_us\":{},\"total_us\":{}}}",
                t.queue_us, t.run_us, t.commit_us, t.total_us
            )
        };
        match outcome.filter(|_| status.is_final()) {
            Some((Outcome::Succeeded(reply), t)) => {
                s.push_str(",\"result\":");
                s.push_str(std::str::from_utf8(reply).unwrap_or("null"));
                s.push_str(",\"timings\":");
                s.push_str(&timings(t));
            }
            Some((Outcome::Failed { code, message }, t)) => {
                s.push_str(&format!(",\"error\":{{\"code\":\"{code}\",\"message\":{}}}", js(message)));
                s.push_str(",\"timings\":");
                s.push_str(&timings(t));
            }
            Some((Outcome::TimedOut { message }, t)) => {
                s.push_str(&format!(",\"error\":{{\"code\":\"pipeline_timeout\",\"message\":{}}}", js(message)));
                s.push_str(",\"timings\":");
                s.push_str(&timings(t));
            }
            None => s.push_str(",\"timings\":null"),
        }
        let retried = self.retried.lock().unwrap_or_else(|e| e.into_inner());
        let errors: Vec<String> = retried
            .iter()
            .map(|(code, message)| format!("{{\"code\":\"{code}\",\"message\":{}}}", js(message)))
            .collect();
        s.push_str(&format!(",\"attempts\":{},\"retried_errors\":[{}]}}", self.attempts().max(1), errors.join(",")));
        s
    }

    /// The durable record of this execution ending with `outcome`.
    pub fn record(&self, status: Status, outcome: &Outcome, timings: &Timings) -> ExecutionRecord {
        let (http_status, reply) = match outcome {
            Outcome::Succeeded(reply) => (200, reply.clone()),
            Outcome::Failed { code, message } => (code.status(), error_body(*code, message)),
            Outcome::TimedOut { message } => {
                (ErrorCode::PipelineTimeout.status(), error_body(ErrorCode::PipelineTimeout, message))
            }
        };
        let pair = (outcome.clone(), *timings);
        ExecutionRecord {
            id: self.id_str.clone(),
            key: self.key.clone(),
            delivery: self.delivery.clone(),
            received_unix: self.received_unix,
            status: status.as_str(),
            http_status,
            reply,
            json: self.record_json(status, Some(&pair)),
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
    fn finish(self: &Arc<Self>, status: Status, outcome: Outcome, timings: Timings) {
        self.pipeline.metrics.record(status, &timings);
        // A journaled event stopped by a shutdown stays journaled: it runs after the restart.
        let shutting_down = matches!(outcome, Outcome::Failed { code: ErrorCode::ShuttingDown, .. });
        if self.pipeline.store.keeps_records() && !shutting_down && !self.recorded.load(Ordering::Acquire) {
            self.pipeline.store.record_outcome(self.record(status, &outcome, &timings));
        }
        let _ = self.outcome.set((outcome, timings));
        self.status.store(status as u8, Ordering::Release);
        self.pipeline.finished_one();
        // Every waiter: the client's request and any number of repeats of its delivery. A waiter
        // registers before it checks the outcome (see `wait`), so none misses this.
        self.pipeline.wakes.wake(self);
    }

    /// Wakes every task in `wait` (the outcome is published).
    pub(crate) fn notify_waiters(&self) {
        self.done.notify_waiters();
    }

    /// Takes the right to decide the outcome: moves `from` to `Committing`.
    fn claim(&self, from: &[Status]) -> bool {
        from.iter().any(|&f| self.transition(f, Status::Committing))
    }

    /// Marks the execution timed out unless it already finished or is committing.
    /// Returns true when this call decided the outcome.
    pub fn time_out(self: &Arc<Self>) -> bool {
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
            let mut notified = std::pin::pin!(self.done.notified());
            notified.as_mut().enable();
            if let Some(o) = self.outcome.get() {
                if self.status().is_final() {
                    return o;
                }
            }
            notified.await;
        }
    }

    /// Waits until the execution has an outcome, timing it out at its deadline (unless it is
    /// committing by then: its outcome is that of the commit).
    pub async fn finished(self: &Arc<Self>) -> &(Outcome, Timings) {
        if let Some(deadline) = self.deadline {
            if tokio::time::timeout_at(deadline.into(), self.wait()).await.is_err() {
                self.time_out();
            }
        }
        self.wait().await
    }

    /// Ends an execution refused at admission. It was never accepted, so nothing is counted or
    /// recorded; its outcome only answers whoever already awaits it (a repeat of its delivery
    /// that came while it was being journaled).
    pub(crate) fn refuse(self: &Arc<Self>, code: ErrorCode, message: String) {
        if !self.claim(&[Status::Queued]) {
            return;
        }
        let _ = self.outcome.set((Outcome::Failed { code, message }, Timings::default()));
        self.status.store(Status::Failed as u8, Ordering::Release);
        self.pipeline.wakes.wake(self);
    }

    /// Fails an execution that will not be answered otherwise (shutdown): a queued one, or one
    /// still running past the drain (its late result is then discarded, nothing committed).
    pub fn abandon(self: &Arc<Self>, code: ErrorCode, message: String) -> bool {
        self.abandon_from(&[Status::Queued, Status::Running], code, message)
    }

    /// Fails an execution only if no slot has started it yet.
    pub fn abandon_queued(self: &Arc<Self>, code: ErrorCode, message: String) -> bool {
        self.abandon_from(&[Status::Queued], code, message)
    }

    fn abandon_from(self: &Arc<Self>, from: &[Status], code: ErrorCode, message: String) -> bool {
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

/// What a succeeded execution commits (see [`Job::prepare_commit`]).
pub struct PreparedCommit {
    reply: Bytes,
    pub state: Option<Bytes>,
    pub record: Option<crate::state::ExecutionRecord>,
    commit_start: Instant,
}

impl PreparedCommit {
    /// Whether the store has anything to write for it.
    pub fn writes(&self) -> bool {
        self.state.is_some() || self.record.is_some()
    }
}

/// An event on its way to a slot. Dropping a job that never finished fails its execution, so an
/// accepted request always gets an answer; dropping it also releases its key's lane.
pub struct Job {
    pub exec: Arc<Execution>,
    pub body: Bytes,
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
    pub fn new(exec: Arc<Execution>, body: Bytes, headers: HeaderMap) -> Self {
        Job {
            exec,
            body,
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
        self.start()?;
        let Some(key) = &self.exec.key else { return Ok(None) };
        let loaded = self.exec.pipeline.store.load(key);
        self.loaded(loaded)
    }

    /// The first half of `begin`: `queued → running`, without loading the key's state (a slot
    /// loads the states of a whole batch at once, then hands each job its own with `loaded`).
    pub fn start(&mut self) -> Result<(), BeginError> {
        if self.exec.pipeline.is_closed() {
            self.exec
                .abandon_queued(ErrorCode::ShuttingDown, "the server stopped before this execution could run".into());
            return Err(BeginError::Closed);
        }
        if !self.exec.transition(Status::Queued, Status::Running) {
            return Err(BeginError::TimedOut);
        }
        self.exec.attempts.fetch_add(1, Ordering::AcqRel);
        let now = Instant::now();
        self.started = Some(now);
        self.timings.queue_us = now.duration_since(self.exec.received).as_micros() as u64;
        Ok(())
    }

    /// The second half of `begin`, for a keyed job: what loading its key's state gave.
    pub fn loaded(
        &mut self,
        loaded: Result<Option<Bytes>, crate::state::StoreError>,
    ) -> Result<Option<Bytes>, BeginError> {
        match loaded {
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
        // A deadline that passed first wins even if the I/O thread's timer has not fired yet
        // (results a slot holds for a batched commit can be a moment late).
        if self.exec.deadline.is_some_and(|d| Instant::now() >= d) {
            self.exec.time_out();
            return false;
        }
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
        self.exec.attempts.fetch_sub(1, Ordering::AcqRel); // it did not run
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
        let Some(mut prepared) = self.prepare_commit(reply, state) else { return false };
        let store = self.exec.pipeline.store.clone();
        let result = if prepared.writes() {
            let key = self.exec.key.as_deref();
            store.commit_execution(key, prepared.state.take(), prepared.record.as_ref())
        } else {
            Ok(())
        };
        self.finish_commit(prepared, result)
    }

    /// After `claim`: checks the new state's size (failing the execution, nothing committed, when
    /// it is too large) and builds what the commit writes: the state and, on a store that keeps
    /// records, the execution record (with it, in one transaction, the journal entry is done).
    pub fn prepare_commit(&mut self, reply: Bytes, state: Option<Bytes>) -> Option<PreparedCommit> {
        debug_assert_eq!(self.exec.status(), Status::Committing);
        if let (Some(_), Some(state)) = (&self.exec.key, &state) {
            if let Err(e) = crate::state::check_size(state, self.exec.pipeline.config.max_state_bytes) {
                self.fail_claimed(crate::state::StateTooLarge::CODE, e.to_string());
                return None;
            }
        }
        let commit_start = Instant::now();
        let record = self.exec.pipeline.store.keeps_records().then(|| {
            let timings = self.final_timings(commit_start);
            self.exec.record(Status::Succeeded, &Outcome::Succeeded(reply.clone()), &timings)
        });
        let state = if self.exec.key.is_some() { state } else { None };
        self.holds_state &= state.is_none(); // a commit ends the lease, whether it succeeds or not
        Some(PreparedCommit { reply, state, record, commit_start })
    }

    /// Publishes the outcome of a prepared commit: succeeded, or `state_error` when the store
    /// refused it. False when the commit failed.
    pub fn finish_commit(&mut self, prepared: PreparedCommit, result: Result<(), crate::state::StoreError>) -> bool {
        if let Err(e) = result {
            self.exec.finish(
                Status::Failed,
                Outcome::Failed { code: ErrorCode::StateError, message: e.to_string() },
                self.final_timings(prepared.commit_start),
            );
            return false;
        }
        self.exec.recorded.store(prepared.record.is_some(), Ordering::Release);
        self.exec.finish(
            Status::Succeeded,
            Outcome::Succeeded(prepared.reply),
            self.final_timings(prepared.commit_start),
        );
        true
    }

    /// Fails the execution with `code`; commits nothing. Returns false if it had already ended.
    pub fn fail(&mut self, code: ErrorCode, message: String) -> bool {
        self.claim() && self.fail_claimed(code, message)
    }

    /// After `claim`: fails the execution with `code`; commits nothing. An async execution with
    /// retries left is queued again instead (see `retry`).
    pub fn fail_claimed(&mut self, code: ErrorCode, message: String) -> bool {
        if self.retry(code, &message) {
            return true;
        }
        let t = self.final_timings(Instant::now());
        self.exec.finish(Status::Failed, Outcome::Failed { code, message }, t);
        true
    }

    /// Queues a failed async execution again after `retry_backoff * 2^(attempt - 1)`, at the back
    /// of its key's lane (events of the key that arrived meanwhile run first), when it failed with
    /// an exception or a slot crash and has retries left. Its deadline (`timeout`, counted from
    /// receipt) bounds all attempts together.
    fn retry(&mut self, code: ErrorCode, message: &str) -> bool {
        let exec = &self.exec;
        let p = &exec.pipeline;
        let attempt = exec.attempts();
        if !exec.is_async
            || !matches!(code, ErrorCode::PipelineError | ErrorCode::SlotCrashed)
            || attempt > p.config.retries
            || p.is_closed()
            || exec.status() != Status::Committing
        {
            return false;
        }
        exec.retried.lock().unwrap_or_else(|e| e.into_inner()).push((code, message.to_string()));
        if self.holds_state {
            self.holds_state = false;
            if let Some(key) = &exec.key {
                p.store.release(key);
            }
        }
        // We hold the outcome (`Committing`): hand the execution back to `queued`.
        exec.status.store(Status::Queued as u8, Ordering::Release);
        let again = Job::new(exec.clone(), self.body.clone(), self.headers.clone());
        self.live = false; // `again` answers for the execution now
        let delay = p.config.retry_backoff.saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16));
        let spawned = std::thread::Builder::new().name("warmslot-retry".into()).spawn(move || {
            std::thread::sleep(delay);
            let p = again.exec.pipeline.clone();
            if let Err((_, job)) = p.intake.admit(again) {
                job.exec.abandon_queued(
                    ErrorCode::Overloaded,
                    format!("pipeline {:?} was at capacity when this execution was to be retried", p.name()),
                );
            }
        });
        if spawned.is_err() {
            exec.abandon_queued(ErrorCode::PipelineError, message.to_string());
        }
        true
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

/// `{"error": {"code", "message"}}`, the body of an error answer.
pub fn error_body(code: ErrorCode, message: &str) -> Bytes {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".into());
    Bytes::from(format!("{{\"error\":{{\"code\":\"{code}\",\"message\":{message}}}}}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::state::MemoryStore;

    /// A repeat of a delivery that came while its first execution was being admitted awaits that
    /// execution: when admission refuses it, the repeat gets the refusal, nothing is counted, and
    /// the deadline cannot turn it into a recorded `timed_out`.
    #[tokio::test]
    async fn a_refused_execution_answers_its_waiters_and_counts_nothing() {
        let mut config = PipelineConfig::new("p");
        config.timeout = Some(std::time::Duration::from_millis(50));
        let p = Arc::new(Pipeline::new(0, config, Arc::new(MemoryStore::default())));
        let exec = Arc::new(Execution::new(1, format!("{:032x}", 1).into(), p.clone(), None, Instant::now()));
        let waiter = tokio::spawn({
            let exec = exec.clone();
            async move { exec.finished().await.0.clone() }
        });
        tokio::task::yield_now().await; // the waiter awaits the outcome
        exec.refuse(ErrorCode::Overloaded, "full".into());
        let outcome = Outcome::Failed { code: ErrorCode::Overloaded, message: "full".into() };
        assert_eq!(waiter.await.unwrap(), outcome);
        assert_eq!(exec.status(), Status::Failed);
        assert!(!exec.time_out(), "a refused execution cannot time out");
        assert_eq!(p.inflight(), 0, "never accepted, never finished");
        assert_eq!(p.metrics.requests("failed") + p.metrics.requests("timed_out"), 0);
    }
}
