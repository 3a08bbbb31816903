//! The engine: the pipelines, the records of their executions and the deduplication map, with
//! admission (`runtime::admit`) as the one way in. It knows nothing of HTTP: the composition root
//! (the bindings) opens it, then starts the HTTP server with an `Arc<Engine>`. Slots are started
//! by the host (thread slots) or by [`Engine::run_process_slot`] (process slots).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{AppConfig, DedupeSpec, Isolation, KeySpec, PipelineConfig};
use crate::error::ErrorCode;
use crate::observe::metrics::{self, PipelineGauges, Quantiles};
use crate::observe::pool::PoolCounters;
use crate::runtime::dedupe::Deliveries;
use crate::runtime::execution::Execution;
use crate::runtime::ids::{self, IdGenerator};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::records::Records;
use crate::runtime::slots::{WarmupReason, CRASH_REASONS, RECYCLE_REASONS, WARMUP_REASONS};
use crate::state::{StateStore, StoreError};

/// Opens the state store of a pipeline (a store may size per-pipeline limits from its config).
pub type StoreFactory = dyn Fn(&PipelineConfig) -> Result<Arc<dyn StateStore>, String>;

/// Computes ordering keys that the configuration cannot express as a field (a host-language
/// callable). Runs on the ingress thread, so it should be quick.
pub trait KeyFn: Send + Sync {
    fn key(&self, pipeline: usize, body: &[u8]) -> Result<Option<String>, String>;
    /// The delivery id of a pipeline declared with a callable `dedupe=`.
    fn delivery_id(&self, _pipeline: usize, _body: &[u8]) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// The errors of the runtime subsystem.
#[derive(Debug)]
pub enum EngineError {
    /// The configuration cannot run (names the pipeline and the field).
    Config(String),
    /// A state store failed while the engine opened (reading the journal, the deliveries).
    Store { pipeline: String, source: StoreError },
    /// `open` was called twice.
    AlreadyOpen,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Config(m) => write!(f, "invalid configuration: {m}"),
            EngineError::Store { pipeline, source } => {
                write!(f, "cannot read the journal of pipeline {pipeline:?}: {source}")
            }
            EngineError::AlreadyOpen => write!(f, "this server was started once already (start a new one)"),
        }
    }
}

impl std::error::Error for EngineError {}

/// A point-in-time view of one pipeline, for the host language (predictor, demo, stats).
#[derive(Clone, Debug)]
pub struct PipelineStats {
    pub name: String,
    pub ring_depth: usize,
    pub ring_capacity: usize,
    pub inflight: usize,
    pub slots_warm: usize,
    pub slots_busy: usize,
    pub requests: Vec<(&'static str, u64)>,
    /// queue, run, commit, total
    pub latency: [Quantiles; 4],
}

pub struct Engine {
    pub config: AppConfig,
    pub(super) pipelines: Vec<Arc<Pipeline>>,
    by_name: HashMap<String, usize>,
    pub(super) records: Records,
    pub(super) deliveries: Deliveries,
    ids: IdGenerator,
    key_fn: Option<Arc<dyn KeyFn>>,
    accepting: AtomicBool,
    /// Set by `open`; `None` until then.
    opened: Mutex<Option<Opened>>,
}

/// What `open` found for the engine's tasks to pick up once the I/O runtime runs.
struct Opened {
    /// Recovered async executions whose outcome nobody awaits yet (see `spawn_tasks`).
    unwatched: Vec<Arc<Execution>>,
}

impl Engine {
    /// `store_for(pipeline)` opens each pipeline's state store.
    pub fn new(
        config: AppConfig,
        store_for: &StoreFactory,
        key_fn: Option<Arc<dyn KeyFn>>,
    ) -> Result<Arc<Engine>, EngineError> {
        let mut by_name = HashMap::new();
        let mut pipelines = Vec::new();
        for (i, p) in config.pipelines.iter().enumerate() {
            if p.name.is_empty() || p.name.contains('/') {
                return Err(EngineError::Config(format!(
                    "pipeline name {:?} must be non-empty and without '/'",
                    p.name
                )));
            }
            if by_name.insert(p.name.clone(), i).is_some() {
                return Err(EngineError::Config(format!("pipeline {:?} is declared twice", p.name)));
            }
            if p.min_slots > p.max_slots.max(1) {
                return Err(EngineError::Config(format!(
                    "pipeline {:?}: min_slots ({}) is above max_slots ({})",
                    p.name, p.min_slots, p.max_slots
                )));
            }
            if matches!(p.dedupe, DedupeSpec::Callable) && key_fn.is_none() {
                return Err(EngineError::Config(format!(
                    "pipeline {:?} has a callable dedupe but no delivery-id function",
                    p.name
                )));
            }
            if matches!(p.key, KeySpec::Callable) && key_fn.is_none() {
                return Err(EngineError::Config(format!(
                    "pipeline {:?} has a callable key but no key function",
                    p.name
                )));
            }
            let store = store_for(p).map_err(EngineError::Config)?;
            let mut p = p.clone();
            p.max_state_bytes = config.max_state_bytes;
            pipelines.push(Arc::new(Pipeline::new(i, p, store)));
        }
        Ok(Arc::new(Engine {
            records: Records::new(config.max_records, config.max_record_bytes),
            deliveries: Deliveries::new(config.max_records),
            config,
            pipelines,
            by_name,
            ids: IdGenerator::default(),
            key_fn,
            accepting: AtomicBool::new(false),
            opened: Mutex::new(None),
        }))
    }

    pub fn pipelines(&self) -> &[Arc<Pipeline>] {
        &self.pipelines
    }

    pub fn pipeline(&self, name: &str) -> Option<&Arc<Pipeline>> {
        self.by_name.get(name).map(|&i| &self.pipelines[i])
    }

    /// The ordering key of `body` from the pipeline's key callable (`KeySpec::Callable`).
    pub fn callable_key(&self, pipeline: &Pipeline, body: &[u8]) -> Result<Option<String>, String> {
        match &self.key_fn {
            Some(f) => f.key(pipeline.index, body),
            None => Ok(None),
        }
    }

    /// The delivery id of `body` from the pipeline's dedupe callable (`DedupeSpec::Callable`).
    pub fn callable_delivery_id(&self, pipeline: &Pipeline, body: &[u8]) -> Result<Option<String>, String> {
        match &self.key_fn {
            Some(f) => f.delivery_id(pipeline.index, body),
            None => Ok(None),
        }
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Every pipeline has its minimum of warm slots.
    pub fn is_ready(&self) -> bool {
        self.pipelines.iter().all(|p| p.is_ready())
    }

    /// The next execution's arrival sequence number and public id.
    pub(super) fn next_id(&self) -> (u64, Box<str>) {
        self.ids.next()
    }

    pub(super) fn new_execution(
        &self,
        pipeline: &Arc<Pipeline>,
        key: Option<Box<str>>,
        received: Instant,
    ) -> Execution {
        let (seq, id_str) = self.next_id();
        Execution::new(seq, id_str, pipeline.clone(), key, received)
    }

    /// Charges a finished execution's reply to the records' byte budget.
    pub(super) fn settle(&self, exec: &Execution) {
        self.records.settle(exec);
    }

    /// Looks up an execution by its public id.
    pub fn execution(&self, id: &str) -> Option<Arc<Execution>> {
        ids::is_well_formed(id).then(|| self.records.get(id)).flatten()
    }

    /// The record of an execution as JSON: live, or from a durable store (an earlier run).
    pub fn execution_json(&self, id: &str) -> Option<String> {
        if let Some(exec) = self.execution(id) {
            return Some(exec.record_json(exec.status(), exec.outcome()));
        }
        if !ids::is_well_formed(id) {
            return None;
        }
        self.pipelines.iter().find_map(|p| p.store.record(id)).map(|r| r.json)
    }

    /// Records (JSON) of executions with `status` (`failed`, ...), of one pipeline or all,
    /// newest first: those this process holds, then older ones from a durable store.
    pub fn list_executions(&self, pipeline: Option<&str>, status: &str, limit: usize) -> Vec<String> {
        let wanted = |p: &Pipeline| pipeline.is_none_or(|name| p.name() == name);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for exec in self.records.newest_first() {
            if out.len() >= limit {
                return out;
            }
            let st = exec.status();
            if wanted(&exec.pipeline) && st.is_final() && st.as_str() == status {
                seen.insert(exec.id_str.clone());
                out.push(exec.record_json(st, exec.outcome()));
            }
        }
        for p in self.pipelines.iter().filter(|p| wanted(p)) {
            for json in p.store.list(status, limit) {
                if out.len() >= limit {
                    return out;
                }
                let id = serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(Box::<str>::from));
                if id.is_some_and(|id| !seen.contains(&id)) {
                    out.push(json);
                }
            }
        }
        out
    }

    /// Before serving: recovers what a durable store holds (see `runtime::recovery`) and starts
    /// accepting webhooks. Call once, before the HTTP server starts, then call `spawn_tasks` on
    /// the I/O runtime.
    pub fn open(&self) -> Result<(), EngineError> {
        let mut opened = self.opened();
        if opened.is_some() {
            return Err(EngineError::AlreadyOpen);
        }
        let recovered = self.recover();
        *opened = Some(Opened { unwatched: Vec::new() });
        match recovered {
            Ok(unwatched) => {
                *opened = Some(Opened { unwatched });
                self.accepting.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // Nothing will serve this engine: what was recovered stays journaled (dropping a
                // recovered job does not mark its entry done), and the stores let go of it.
                for p in &self.pipelines {
                    p.close();
                    drop(p.intake.drain_all());
                }
                drop(opened);
                self.close();
                Err(e)
            }
        }
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Option<Opened>> {
        self.opened.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine's own tasks on the I/O runtime (call from inside it, after `open`): each
    /// pipeline's wake-up drain, and a watcher for each recovered async execution.
    pub fn spawn_tasks(self: &Arc<Self>) {
        for p in &self.pipelines {
            tokio::spawn(p.wakes.clone().drain());
        }
        let unwatched = self.opened().as_mut().map(|o| std::mem::take(&mut o.unwatched));
        for exec in unwatched.unwrap_or_default() {
            self.watch(exec);
        }
    }

    /// The first half of a shutdown: stops taking webhooks (503), waits up to `drain` for
    /// accepted executions to finish, then fails what has not started (503 `shutting_down`),
    /// stops the intakes (idle slots return) and fails what still runs, so that every waiting
    /// client is answered while its connection is open. Then the HTTP server stops, then `close`.
    /// Blocks; call it without holding any lock that the slots need.
    pub fn drain(&self, drain: Duration) {
        if self.opened().is_none() || !self.accepting.swap(false, Ordering::SeqCst) {
            return;
        }
        let wait_idle = |limit: Duration| {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline && self.pipelines.iter().any(|p| p.inflight() > 0) {
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        wait_idle(drain);
        // Drain is over: whatever has not started fails with `shutting_down` (503) from here on,
        // whether it waits in the intake (drained here; dropping a job answers it), in a slot's
        // batch (`Job::begin` refuses it) or is being admitted right now (the ingress re-checks
        // `closed`). Closing also stops the intake, so idle slots return.
        for p in &self.pipelines {
            p.close();
            drop(p.intake.drain_all());
        }
        // Let the slots answer what their batches still hold before the connections close.
        wait_idle(Duration::from_secs(2));
        // A run still going now (a slow sync pipeline) cannot be interrupted: answer its client
        // 503 while the connection is open; its late result is discarded, nothing committed.
        for exec in self.records.unfinished() {
            exec.abandon(ErrorCode::ShuttingDown, "the server stopped before this execution finished".into());
        }
    }

    /// The second half of a shutdown, once the HTTP server has stopped: writes what the stores
    /// still hold and closes them.
    pub fn close(&self) {
        for p in &self.pipelines {
            p.store.flush();
        }
        for p in &self.pipelines {
            p.store.close();
        }
    }

    pub fn stats(&self) -> Vec<PipelineStats> {
        self.pipelines
            .iter()
            .map(|p| PipelineStats {
                name: p.name().to_string(),
                ring_depth: p.intake.waiting(),
                ring_capacity: p.intake.capacity(),
                inflight: p.inflight(),
                slots_warm: p.slots.warm_count(),
                slots_busy: p.slots.busy_count(),
                requests: metrics::REQUEST_STATUSES.iter().map(|s| (*s, p.metrics.requests(s))).collect(),
                latency: p.metrics.quantiles(),
            })
            .collect()
    }

    pub fn metrics_text(&self) -> String {
        let gauges: Vec<_> = self
            .pipelines
            .iter()
            .map(|p| {
                (
                    PipelineGauges {
                        name: p.name(),
                        ring_depth: p.intake.waiting(),
                        ring_capacity: p.intake.capacity(),
                        slots_warm: p.slots.warm_count(),
                        slots_busy: p.slots.busy_count(),
                        slots_max: p.slots.len(),
                        slots_min: p.config.min_slots,
                        slots_target: p.target_slots(),
                        forecast_rps: p.forecast_rps(),
                        arrivals: p.arrivals(),
                    },
                    &p.metrics,
                )
            })
            .collect();
        let pools: Vec<_> = self
            .pipelines
            .iter()
            .map(|p| {
                let s = &p.slots;
                let zip = |names: &[&'static str], v: &[u64]| names.iter().copied().zip(v.iter().copied()).collect();
                PoolCounters {
                    name: p.name(),
                    warmups: zip(&WARMUP_REASONS, &s.warmups()),
                    crashes: zip(&CRASH_REASONS, &s.crashes()),
                    recycles: zip(&RECYCLE_REASONS, &s.recycles()),
                    cold_starts: s.cold_starts(),
                    idle_slot_seconds: s.idle_slot_seconds(),
                    worker_rss_bytes: s.rss_bytes(),
                    waiting: p.intake.waiting(),
                    cpu_seconds: s.cpu_us() as f64 / 1e6,
                    target_slots: p.target_slots(),
                    predictor_phases: s.predictor_phases(),
                }
            })
            .collect();
        let mut text = metrics::render(&gauges);
        text.push_str(&crate::observe::pool::render(&pools));
        text
    }

    /// Runs process slot `slot` of pipeline `index` on the calling thread until it retires or
    /// the server stops (see [`crate::runtime::process::run_process_slot`]).
    pub fn run_process_slot(
        &self,
        index: usize,
        slot: usize,
        reason: WarmupReason,
        report: &dyn Fn(&str, &str),
    ) -> Result<(), EngineError> {
        let p = self.pipelines.get(index).ok_or_else(|| EngineError::Config(format!("no pipeline {index}")))?;
        let Isolation::Process(cmd) = &p.config.isolation else {
            return Err(EngineError::Config(format!("pipeline {:?} does not use process isolation", p.name())));
        };
        if slot >= p.slots.len() {
            return Err(EngineError::Config(format!("pipeline {:?} has no slot {slot}", p.name())));
        }
        crate::runtime::process::run_process_slot(p, slot, cmd, self.config.idle_spin, reason, report);
        Ok(())
    }
}
