//! The engine: pipelines and the ingress runtime, started and stopped as one. Slots are started
//! by the host (thread slots) or by [`Engine::run_process_slot`] (process slots).

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{AppConfig, DedupeSpec, Isolation, KeySpec, PipelineConfig};
use crate::observe::metrics::{self, PipelineGauges, Quantiles};
use crate::observe::pool::PoolCounters;
use crate::observe::records::Records;
use crate::runtime::dedupe::{Deliveries, Seen};
use crate::runtime::execution::{Execution, Job};
use crate::runtime::ids::{self, IdGenerator};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::slots::{WarmupReason, CRASH_REASONS, RECYCLE_REASONS, WARMUP_REASONS};
use crate::state::StateStore;

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

#[derive(Debug)]
pub enum EngineError {
    Config(String),
    Bind { addr: String, source: std::io::Error },
    AlreadyStarted,
    Runtime(std::io::Error),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Config(m) => write!(f, "invalid configuration: {m}"),
            EngineError::Bind { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
                write!(f, "cannot listen on {addr}: the address is already in use (is another server running? pick another --port)")
            }
            EngineError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            EngineError::AlreadyStarted => write!(f, "the server is already running"),
            EngineError::Runtime(e) => write!(f, "cannot start the I/O runtime: {e}"),
        }
    }
}

impl std::error::Error for EngineError {}

struct Running {
    addr: SocketAddr,
    stop_io: Arc<Notify>,
    io: JoinHandle<()>,
}

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
    pipelines: Vec<Arc<Pipeline>>,
    by_name: HashMap<String, usize>,
    records: Records,
    pub(crate) deliveries: Deliveries,
    ids: IdGenerator,
    key_fn: Option<Arc<dyn KeyFn>>,
    accepting: AtomicBool,
    running: Mutex<Option<Running>>,
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
            running: Mutex::new(None),
        }))
    }

    pub fn pipelines(&self) -> &[Arc<Pipeline>] {
        &self.pipelines
    }

    pub fn pipeline(&self, name: &str) -> Option<&Arc<Pipeline>> {
        self.by_name.get(name).map(|&i| &self.pipelines[i])
    }

    pub(crate) fn key_fn(&self) -> Option<&Arc<dyn KeyFn>> {
        self.key_fn.as_ref()
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Every pipeline has its minimum of warm slots.
    pub fn is_ready(&self) -> bool {
        self.pipelines.iter().all(|p| p.is_ready())
    }

    pub(crate) fn new_execution(
        &self,
        pipeline: &Arc<Pipeline>,
        key: Option<Box<str>>,
        received: Instant,
    ) -> Execution {
        let (seq, id_str) = self.ids.next();
        Execution::new(seq, id_str, pipeline.clone(), key, received)
    }

    pub(crate) fn remember(&self, exec: Arc<Execution>) {
        self.records.insert(exec);
    }

    /// Charges a finished execution's reply to the records' byte budget.
    pub(crate) fn settle(&self, exec: &Execution) {
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

    /// Before serving: loads the recent deliveries of a durable store (so repeats after a restart
    /// are answered), and re-admits the journaled events whose executions had not ended, in their
    /// arrival order, ahead of any new event. Returns the recovered executions.
    fn recover(&self) -> Result<Vec<Arc<Execution>>, EngineError> {
        let now_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut recovered = Vec::new();
        for p in &self.pipelines {
            if !p.store.is_durable() {
                continue;
            }
            let window = p.config.dedupe_window;
            if p.config.dedupe != DedupeSpec::Off {
                for d in p.store.deliveries(now_unix - window.as_secs_f64(), self.config.max_records) {
                    let age = Duration::from_secs_f64((now_unix - d.received_unix).max(0.0));
                    self.deliveries.remember(p.index, &d.delivery, Seen::Stored(d.execution_id.into()), window, age);
                }
            }
            let entries = p
                .store
                .unfinished()
                .map_err(|e| EngineError::Config(format!("cannot read the journal of pipeline {:?}: {e}", p.name())))?;
            for entry in entries {
                let (seq, _) = self.ids.next(); // arrival order in this process; the public id is kept
                let exec = Execution::new(seq, entry.id.clone(), p.clone(), entry.key.clone(), Instant::now())
                    .with_delivery(entry.delivery.clone(), true)
                    .recovered(entry.received_unix);
                let exec = Arc::new(exec);
                p.arrived();
                p.accepted_one();
                let job = Job::new(exec.clone(), entry.body.clone(), decode_headers(&entry.headers));
                // Past queue_size too: it was accepted before the restart (the intake's waiting
                // count then exceeds queue_size until these run, so new events get 429 meanwhile).
                p.intake.admit_recovered(job);
                if let Some(d) = &entry.delivery {
                    self.deliveries.replace(p.index, d, window, &exec);
                }
                self.records.insert(exec.clone());
                recovered.push(exec);
            }
        }
        Ok(recovered)
    }

    /// Binds the listener and starts the ingress runtime.
    pub fn start(self: &Arc<Self>) -> Result<SocketAddr, EngineError> {
        let mut running = self.running.lock().unwrap();
        if running.is_some() {
            return Err(EngineError::AlreadyStarted);
        }
        let display = format!("{}:{}", self.config.host, self.config.port);
        let bind_err = |source| EngineError::Bind { addr: display.clone(), source };
        let addrs: Vec<SocketAddr> =
            (self.config.host.as_str(), self.config.port).to_socket_addrs().map_err(bind_err)?.collect();
        let listener = std::net::TcpListener::bind(&addrs[..]).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;

        let runtime = if self.config.io_threads <= 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.config.io_threads)
                .thread_name("warmslot-io")
                .enable_all()
                .build()
        }
        .map_err(EngineError::Runtime)?;
        let recovered = self.recover()?;
        let stop_io = Arc::new(Notify::new());
        let (engine, stop) = (self.clone(), stop_io.clone());
        let io = std::thread::Builder::new()
            .name("warmslot-io".into())
            .spawn(move || {
                runtime.block_on(async move {
                    for p in &engine.pipelines {
                        tokio::spawn(p.wakes.clone().drain());
                    }
                    for exec in recovered {
                        crate::http::ingress::watch_async(exec, engine.clone());
                    }
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => crate::http::ingress::serve(l, engine, stop, Duration::from_secs(2)).await,
                        Err(e) => eprintln!("warmslot: cannot register the listener: {e}"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(EngineError::Runtime)?;
        self.accepting.store(true, Ordering::Release);
        *running = Some(Running { addr, stop_io, io });
        Ok(addr)
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.lock().unwrap().as_ref().map(|r| r.addr)
    }

    /// Stops taking webhooks (503), waits up to `drain` for accepted executions to finish, then
    /// fails what has not started (503 `shutting_down`), stops the intakes (idle slots return)
    /// and closes the ingress. Blocks; call it without holding any lock that the slots need.
    pub fn shutdown(&self, drain: Duration) {
        let Some(running) = self.running.lock().unwrap().take() else { return };
        self.accepting.store(false, Ordering::SeqCst);
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
            exec.abandon(
                crate::error::ErrorCode::ShuttingDown,
                "the server stopped before this execution finished".into(),
            );
        }
        running.stop_io.notify_one();
        let _ = running.io.join();
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

/// Headers as journaled: `name: value` lines.
pub(crate) fn encode_headers(headers: &hyper::HeaderMap) -> bytes::Bytes {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.into()
}

fn decode_headers(lines: &[u8]) -> hyper::HeaderMap {
    let mut headers = hyper::HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
        if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(name), hyper::header::HeaderValue::from_bytes(value))
        {
            headers.append(n, v);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::runtime::slot_loop::{run_slot, Backend, Begun, LoopEnd, LoopSettings, More, RunResult, SlotDied};
    use crate::state::MemoryStore;
    use bytes::Bytes;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// One HTTP/1.1 request on a fresh connection; returns (status, body).
    fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    #[test]
    fn serves_a_pipeline_end_to_end_on_loopback() {
        let mut p = PipelineConfig::new("count");
        p.key = KeySpec::Field("user".into());
        let config = AppConfig { port: 0, pipelines: vec![p], ..AppConfig::default() };
        let store = |_: &PipelineConfig| Ok(Arc::new(MemoryStore::default()) as Arc<dyn StateStore>);
        let engine = Engine::new(config, &store, None).unwrap();
        let addr = engine.start().unwrap();
        assert_eq!(request(addr, "GET", "/healthz", "").0, 503, "no warm slot yet");

        // A slot in Rust: counts events per key in the committed state.
        struct Counter;
        impl Backend for Counter {
            fn commits_inline(&self) -> bool {
                true
            }
            fn run(
                &mut self,
                batch: &mut Vec<Begun>,
                _more: &mut More<'_>,
                done: &mut dyn FnMut(&mut Begun, RunResult),
                _commit_now: &mut crate::runtime::slot_loop::CommitNow<'_>,
            ) -> Result<(), SlotDied> {
                for b in batch.iter_mut() {
                    let n: u64 = b.state.as_ref().map_or(0, |s| std::str::from_utf8(s).unwrap().parse().unwrap()) + 1;
                    let reply = Bytes::from(format!("{{\"n\":{n}}}"));
                    done(b, RunResult::Reply { reply, state: Some(Bytes::from(n.to_string())) });
                }
                Ok(())
            }
        }
        let p = engine.pipelines()[0].clone();
        p.slots.mark_warm(0, WarmupReason::Ahead, 1);
        let worker = std::thread::spawn(move || {
            let settings = LoopSettings { spin: Duration::ZERO, warm_from: Instant::now(), warm_at: Instant::now() };
            run_slot(&p, 0, &mut Counter, &settings)
        });
        assert_eq!(request(addr, "GET", "/healthz", "").0, 200);
        assert_eq!(request(addr, "POST", "/hooks/count", r#"{"user":"a"}"#), (200, r#"{"n":1}"#.into()));
        assert_eq!(request(addr, "POST", "/hooks/count", r#"{"user":"a"}"#), (200, r#"{"n":2}"#.into()));
        assert_eq!(request(addr, "POST", "/hooks/count", r#"{"user":"b"}"#), (200, r#"{"n":1}"#.into()));
        let (status, body) = request(addr, "POST", "/hooks/count", "{nope");
        assert_eq!(status, 400);
        assert!(body.contains("\"invalid_json\""), "{body}");
        assert_eq!(request(addr, "POST", "/hooks/other", "{}").0, 404);
        assert_eq!(request(addr, "GET", "/hooks/count", "").0, 405);
        let (_, metrics) = request(addr, "GET", "/metrics", "");
        assert!(metrics.contains("warmslot_requests_total{pipeline=\"count\",status=\"succeeded\"} 3"), "{metrics}");

        engine.shutdown(Duration::from_secs(1));
        assert!(matches!(worker.join().unwrap(), LoopEnd::Stopped));
        assert!(TcpStream::connect(addr).is_err(), "the listener is closed after shutdown");
    }
}
