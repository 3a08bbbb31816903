//! Admission: the one way an event enters the runtime. [`Engine::admit`] owns deduplication (in
//! this process and, on a store that shares deliveries, across processes), journaling (durable
//! stores, before a `202`), intake admission (`queue_size`, else `429`) and the undo of all of it
//! when the event is refused. The caller turns a request into an [`Event`] and the
//! [`Admission`] back into its answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::HeaderMap;

use crate::error::ErrorCode;
use crate::outcome::{Outcome, Status};
use crate::runtime::dedupe::Seen;
use crate::runtime::engine::Engine;
use crate::runtime::execution::{Execution, Job};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::recovery::encode_headers;
use crate::state::{ExecutionRecord, JournalEntry, StoreError};

/// A checked webhook, ready for admission: its body passed the pipeline's checks, its key and
/// delivery id are found.
pub struct Event {
    pub body: Bytes,
    pub headers: HeaderMap,
    pub key: Option<Box<str>>,
    /// What deduplication compares (`Idempotency-Key`, `webhook-id`, a body field, ...).
    pub delivery: Option<Box<str>>,
    /// When the request was read: latency is measured from here.
    pub received: Instant,
    /// The client is answered `202` at once: failures are retried, and a durable store journals
    /// the event before that answer.
    pub reply_async: bool,
}

/// What admission made of an event.
pub enum Admission {
    /// Admitted: answer `202` (async) or await [`Ticket::finished`] (sync).
    Accepted(Ticket),
    /// A delivery seen within its dedupe window: answered as its first execution is.
    Repeat(Repeat),
    /// Not admitted, nothing kept: the error to answer with.
    Refused(ErrorCode, String),
}

/// The first execution of a repeated delivery.
pub enum Repeat {
    /// Known in this process.
    Live(Ticket),
    /// Finished before this process started: its durable record.
    Stored(ExecutionRecord),
    /// Claimed by another process sharing the store (Redis): its id (see [`Engine::remote_record`]).
    Remote(Box<str>),
}

/// An admitted execution and the duty to settle it: its reply is charged to the records' byte
/// budget once it has one. A sync ticket dropped before [`Ticket::finished`] (the client went
/// away) hands that duty to a task of its own.
pub struct Ticket {
    exec: Arc<Execution>,
    engine: Arc<Engine>,
    settle_on_drop: bool,
}

impl Ticket {
    pub fn execution(&self) -> &Arc<Execution> {
        &self.exec
    }

    /// Waits for the outcome (timing the execution out at its deadline) and settles it.
    pub async fn finished(mut self) -> Arc<Execution> {
        self.exec.finished().await;
        debug_assert!(self.exec.status().is_final());
        self.engine.settle(&self.exec);
        self.settle_on_drop = false;
        self.exec.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settle_on_drop && tokio::runtime::Handle::try_current().is_ok() {
            self.engine.watch(self.exec.clone());
        }
    }
}

/// Delivery ids longer than this are kept as their SHA-256 (`sha256:<hex>`), so that the
/// deduplication map and the records stay small whatever a client sends.
const MAX_DELIVERY_ID: usize = 128;

fn bounded_delivery_id(id: Box<str>) -> Box<str> {
    if id.len() <= MAX_DELIVERY_ID {
        return id;
    }
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes()))).into_boxed_str()
}

impl Engine {
    /// Admits `event` to `pipeline`: deduplicates it, journals it when it is async on a durable
    /// store, and hands it to the intake; undoes what it did when the event is refused.
    pub async fn admit(self: &Arc<Self>, pipeline: &Arc<Pipeline>, event: Event) -> Admission {
        if !self.is_accepting() {
            pipeline.metrics.refused(ErrorCode::ShuttingDown);
            return Admission::Refused(ErrorCode::ShuttingDown, "the server is shutting down".into());
        }
        pipeline.arrived();
        let delivery = event.delivery.map(bounded_delivery_id);
        let exec = self.new_execution(pipeline, event.key, event.received);
        let exec = Arc::new(exec.with_delivery(delivery, event.reply_async));
        let journaled = exec.is_async && pipeline.store.is_durable();
        let waits = journaled || (exec.delivery.is_some() && pipeline.store.shares_deliveries());
        let admission = self.clone().admit_execution(pipeline.clone(), exec, event.body, event.headers, journaled);
        // NOTE: admission that waits on the store (a shared delivery claim, a journal write) runs as
        // a task of its own, so a client that goes away meanwhile (hyper drops this future) cannot
        // leave a delivery claimed or an event journaled but never admitted. Otherwise it ends in its
        // first poll and runs here: a task per request cost an allocation, a schedule and a wake.
        if !waits {
            return admission.await;
        }
        tokio::spawn(admission).await.unwrap_or_else(|e| {
            pipeline.metrics.refused(ErrorCode::StateError);
            Admission::Refused(ErrorCode::StateError, format!("the event could not be admitted: {e}"))
        })
    }

    async fn admit_execution(
        self: Arc<Self>,
        pipeline: Arc<Pipeline>,
        exec: Arc<Execution>,
        body: Bytes,
        headers: HeaderMap,
        journaled: bool,
    ) -> Admission {
        if let Some(answer) = self.deduplicate(&pipeline, &exec).await {
            return answer;
        }
        let job = Job::new(exec.clone(), body, headers);
        match admit_job(self.clone(), pipeline.clone(), job, journaled).await {
            Ok(()) => {
                let settle_on_drop = !exec.is_async;
                Admission::Accepted(Ticket { exec, engine: self, settle_on_drop })
            }
            Err((code, message)) => {
                pipeline.metrics.refused(code);
                Admission::Refused(code, message)
            }
        }
    }

    /// Claims the execution's delivery id; `Some` answer when it is a repeat (or the shared claim
    /// failed), `None` when the execution goes on.
    async fn deduplicate(self: &Arc<Self>, pipeline: &Arc<Pipeline>, exec: &Arc<Execution>) -> Option<Admission> {
        let delivery = exec.delivery.as_ref()?;
        let window = pipeline.config.dedupe_window;
        let watching = |first| {
            Admission::Repeat(Repeat::Live(Ticket { exec: first, engine: self.clone(), settle_on_drop: false }))
        };
        if pipeline.store.shares_deliveries() {
            // Across processes (Redis): the first process to claim the id runs it. Checked before
            // the in-process map, so that every repeat, here or elsewhere, is pointed at that one.
            let (store, d, id) = (pipeline.store.clone(), delivery.clone(), exec.id_str.clone());
            let claimed = tokio::task::spawn_blocking(move || store.claim_delivery(&d, &id, window)).await;
            let failed = match claimed {
                Ok(Ok(None)) => None,
                Ok(Ok(Some(other))) => {
                    return Some(match self.execution(&other) {
                        Some(first) => watching(first),
                        None => Admission::Repeat(Repeat::Remote(other.into())),
                    })
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                pipeline.metrics.refused(ErrorCode::StateError);
                return Some(Admission::Refused(
                    ErrorCode::StateError,
                    format!("could not check the delivery id: {e}"),
                ));
            }
        }
        match self.deliveries.claim(pipeline.index, delivery, window, exec) {
            Ok(()) => None,
            Err(Seen::Live(first)) => Some(watching(first)),
            Err(Seen::Stored(id)) => match stored_record(pipeline, id).await {
                Some(record) => Some(Admission::Repeat(Repeat::Stored(record))),
                // Its record is gone (evicted from memory, or pruned): this delivery runs again.
                None => {
                    self.deliveries.replace(pipeline.index, delivery, window, exec);
                    None
                }
            },
        }
    }

    /// Waits for an async execution's outcome (timing it out at the deadline), then settles it.
    pub(super) fn watch(self: &Arc<Self>, exec: Arc<Execution>) {
        let engine = self.clone();
        tokio::spawn(async move {
            exec.finished().await;
            engine.settle(&exec);
        });
    }

    /// The record of execution `id`, which another process sharing the pipeline's store runs
    /// (`Repeat::Remote`), once that process wrote it; polled until the pipeline's timeout.
    pub async fn remote_record(&self, pipeline: &Arc<Pipeline>, id: &str) -> Option<ExecutionRecord> {
        let until = pipeline.config.timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(record) = stored_record(pipeline, id.into()).await {
                return Some(record);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The durable record of execution `id`, read off the I/O thread when the store does I/O.
async fn stored_record(pipeline: &Pipeline, id: Box<str>) -> Option<ExecutionRecord> {
    if !pipeline.store.does_io() {
        return pipeline.store.record(&id);
    }
    let store = pipeline.store.clone();
    tokio::task::spawn_blocking(move || store.record(&id)).await.ok().flatten()
}

/// Journals `job` first when `journaled` (the event is in the store, SQLite's file or Redis,
/// before its 202), then admits it to its pipeline's intake; on refusal, undoes the delivery
/// claim and marks the journal entry done. Runs in a task of its own when it journals (see the
/// NOTE in `admit`).
async fn admit_job(
    engine: Arc<Engine>,
    pipeline: Arc<Pipeline>,
    job: Job,
    journaled: bool,
) -> Result<(), (ErrorCode, String)> {
    let exec = job.exec.clone();
    // Undoes the delivery claim, and wakes a repeat that came meanwhile with the refusal.
    let refuse = |code: ErrorCode, message: &str| {
        if let Some(d) = &exec.delivery {
            engine.deliveries.forget(pipeline.index, d, &exec);
            if pipeline.store.shares_deliveries() {
                let (store, d, id) = (pipeline.store.clone(), d.clone(), exec.id_str.clone());
                tokio::task::spawn_blocking(move || store.release_delivery(&d, &id));
                // a Redis call
            }
        }
        exec.refuse(code, message.to_string());
    };
    if journaled {
        // Group commit: the writer thread writes the arrivals of a moment in one transaction, or
        // one Redis script call.
        let entry = JournalEntry {
            id: exec.id_str.clone(),
            key: exec.key.clone(),
            delivery: exec.delivery.clone(),
            body: job.body.clone(),
            headers: encode_headers(&job.headers),
            received_unix: exec.received_unix,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        pipeline.store.journal(entry, Box::new(move |r| drop(tx.send(r))));
        let written = rx.await.unwrap_or_else(|_| Err(StoreError("the journal writer stopped".into())));
        if let Err(e) = written {
            job.discard();
            let message = format!("the event could not be journaled, nothing was run: {e}");
            refuse(ErrorCode::StateError, &message);
            return Err((ErrorCode::StateError, message));
        }
    }
    pipeline.accepted_one();
    if let Err((_, job)) = pipeline.intake.admit(job) {
        job.discard();
        pipeline.finished_one();
        let name = &pipeline.config.name;
        let message =
            format!("pipeline {name:?} is at capacity ({} waiting); retry shortly", pipeline.intake.capacity());
        refuse(ErrorCode::Overloaded, &message);
        if journaled {
            // Mark the journal entry done: a refused event never runs, not even after a restart.
            let message = "refused at admission (queue_size reached)".to_string();
            let outcome = Outcome::Failed { code: ErrorCode::Overloaded, message };
            let mut record = exec.record(Status::Failed, &outcome, &Default::default());
            record.delivery = None; // the provider's retry of this delivery must run, after a restart too
            pipeline.store.record_outcome(record);
        }
        return Err((ErrorCode::Overloaded, message));
    }
    engine.records.insert(exec.clone());
    // Pairs with `Engine::drain`: it closes the pipeline, then drains the intake. Either that
    // drain sees this job, or we see `closed` here and answer it ourselves.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if pipeline.is_closed() {
        exec.abandon_queued(ErrorCode::ShuttingDown, "the server is shutting down".into());
    }
    if exec.is_async {
        engine.watch(exec.clone());
    }
    Ok(())
}
