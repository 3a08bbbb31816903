//! `warmslot._core`: thin PyO3 bindings over `warmslot-core`. Errors of the core become Python
//! exceptions here, and only here.

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warmslot_core::{
    run_slot, wire, Backend, HttpError, HttpListener, HttpServer, LoopEnd, LoopSettings, Pipeline, WarmupReason,
};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use warmslot_core::{
    lease_for, Engine, EngineError, Isolation, KeyFn, MemoryStore, PipelineConfig, RedisDb, SqliteDb, SqliteOptions,
    StateStore,
};

// NOTE: glibc malloc took ~16% of the I/O thread's CPU serving the support bot (perf); Rust's
// allocations go to mimalloc (Python keeps its own). `local_dynamic_tls`, as a library loaded by
// `import` must: initial-exec TLS can fail to load beside other extensions (code-notes.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod config;
mod logbridge;
mod thread_slot;
mod value;
use config::{AppSettings, PipelineSettings, PyWarmupReason, SignatureSettings, SlotReport, Store};
use thread_slot::{AsyncThreadBackend, ThreadBackend};

/// How errors of the core become Python exceptions (all of them go through here, `http_err` and
/// `store_err`): bad configuration is a `ValueError`, what the OS or a store refused (a port in
/// use, a state store that cannot be opened or read) an `OSError`, the rest a `RuntimeError`.
fn engine_err(e: EngineError) -> PyErr {
    match e {
        EngineError::Config(_) => PyValueError::new_err(e.to_string()),
        EngineError::Store { .. } => PyOSError::new_err(e.to_string()),
        EngineError::AlreadyOpen => PyRuntimeError::new_err(e.to_string()),
    }
}

fn http_err(e: HttpError) -> PyErr {
    match e {
        HttpError::Bind { ref source, .. } => {
            let msg = e.to_string();
            match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, msg)),
                None => PyOSError::new_err(msg),
            }
        }
        HttpError::Runtime(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

fn store_err(e: warmslot_core::StoreError) -> PyErr {
    PyOSError::new_err(e.to_string())
}

fn seconds(v: Option<f64>) -> PyResult<Option<Duration>> {
    v.map(|s| Duration::try_from_secs_f64(s).map_err(|_| PyValueError::new_err(format!("{s} is not a valid duration"))))
        .transpose()
}

/// Calls the Python key callables from the ingress thread.
struct PyKeyFn {
    callables: Vec<Option<Py<PyAny>>>,
    delivery_callables: Vec<Option<Py<PyAny>>>,
}

/// Calls a Python `callable(body: bytes) -> str | None` (key or delivery id) with the GIL.
fn call_str(f: Option<&Option<Py<PyAny>>>, body: &[u8]) -> Result<Option<String>, String> {
    let Some(Some(f)) = f else { return Ok(None) };
    Python::attach(|py| {
        let out = f.bind(py).call1((PyBytes::new(py, body),)).map_err(|e| e.to_string())?;
        if out.is_none() {
            Ok(None)
        } else {
            out.extract::<String>().map(Some).map_err(|e| e.to_string())
        }
    })
}

impl KeyFn for PyKeyFn {
    fn delivery_id(&self, pipeline: usize, body: &[u8]) -> Result<Option<String>, String> {
        call_str(self.delivery_callables.get(pipeline), body)
    }

    fn key(&self, pipeline: usize, body: &[u8]) -> Result<Option<String>, String> {
        call_str(self.callables.get(pipeline), body)
    }
}

/// The engine: HTTP ingress, per-pipeline intake (ring + lanes) and slot pools.
#[pyclass(module = "warmslot._core", frozen)]
struct Core {
    engine: Arc<Engine>,
    /// The HTTP server once `start` ran; taken by `shutdown`.
    server: Mutex<Option<HttpServer>>,
}

impl Core {
    fn pipeline(&self, index: usize) -> PyResult<&Arc<Pipeline>> {
        self.engine.pipelines().get(index).ok_or_else(|| PyValueError::new_err(format!("no pipeline {index}")))
    }

    /// A pipeline whose code runs in this interpreter (thread slots); a process pipeline's events
    /// are run by its worker processes only.
    fn thread_pipeline(&self, index: usize) -> PyResult<&Arc<Pipeline>> {
        let p = self.pipeline(index)?;
        if p.config.isolation != Isolation::Thread {
            return Err(PyValueError::new_err(format!("pipeline {:?} does not use thread slots", p.name())));
        }
        Ok(p)
    }

    fn check_slot(&self, pipeline: usize, slot: usize) -> PyResult<&Arc<Pipeline>> {
        let p = self.pipeline(pipeline)?;
        if slot >= p.slots.len() {
            return Err(PyValueError::new_err(format!("pipeline {:?} has no slot {slot}", p.name())));
        }
        Ok(p)
    }
}

#[pymethods]
impl Core {
    /// `app`: the app's settings; `pipelines`: each pipeline's, in order (a pipeline's index is
    /// its place here).
    #[new]
    fn new(py: Python<'_>, app: PyRef<'_, AppSettings>, pipelines: Vec<PyRef<'_, PipelineSettings>>) -> PyResult<Self> {
        let mut config = app.config.clone();
        config.pipelines = pipelines.iter().map(|p| p.config.clone()).collect();
        let key_fns: Vec<_> = pipelines.iter().map(|p| p.key_fn.as_ref().map(|f| f.clone_ref(py))).collect();
        let dedupe_fns: Vec<_> = pipelines.iter().map(|p| p.dedupe_fn.as_ref().map(|f| f.clone_ref(py))).collect();
        let key_fn: Option<Arc<dyn KeyFn>> = if key_fns.iter().chain(dedupe_fns.iter()).any(Option::is_some) {
            Some(Arc::new(PyKeyFn { callables: key_fns, delivery_callables: dedupe_fns }))
        } else {
            None
        };
        let engine = match &app.store {
            Store::Redis { url } => {
                let db = RedisDb::open(url).map_err(store_err)?;
                db.set_records_ttl(config.records_ttl);
                let store_for = move |p: &PipelineConfig| Ok(db.store(&p.name, lease_for(p)));
                Engine::new(config, &store_for, key_fn)
            }
            Store::Sqlite { path, synchronous_full } => {
                let options = SqliteOptions {
                    synchronous_full: *synchronous_full,
                    records_ttl: config.records_ttl,
                    max_records: config.max_records,
                };
                let db = SqliteDb::open_with(path, options).map_err(store_err)?;
                let store_for = move |p: &PipelineConfig| Ok(db.store(&p.name));
                Engine::new(config, &store_for, key_fn)
            }
            Store::Memory => {
                let max_keys = config.max_keys;
                let store_for =
                    move |_: &PipelineConfig| Ok(Arc::new(MemoryStore::new(max_keys)) as Arc<dyn StateStore>);
                Engine::new(config, &store_for, key_fn)
            }
        }
        .map_err(engine_err)?;
        Ok(Core { engine, server: Mutex::new(None) })
    }

    /// Opens the engine (recovering a durable store's journal), then binds and starts the HTTP
    /// server with it; returns the (host, port) actually bound.
    fn start(&self, py: Python<'_>) -> PyResult<(String, u16)> {
        logbridge::refresh(); // logging configured since the last start applies to this server
        let engine = self.engine.clone();
        let server = py.detach(move || {
            // Bind first: a port in use then fails the start before the engine recovers anything.
            let bound = HttpListener::bind(&engine.config).map_err(http_err)?;
            engine.open().map_err(engine_err)?;
            HttpServer::start(bound, engine.clone()).map_err(|e| {
                // Nothing serves it: what the open recovered stays journaled for the next start.
                engine.drain(Duration::ZERO);
                engine.close();
                http_err(e)
            })
        })?;
        let addr = server.local_addr();
        *self.server.lock().unwrap() = Some(server);
        log::info!("listening on {addr}");
        for p in self.engine.pipelines() {
            let c = &p.config;
            let iso = if c.isolation == Isolation::Thread { "thread" } else { "process" };
            let (name, min, max) = (p.name(), c.min_slots, c.max_slots);
            log::debug!(target: "warmslot.core.pipelines", pipeline = name;
                "pipeline '{name}': {min}-{max} {iso} slots, a queue of {}", c.ring_capacity);
        }
        Ok((addr.ip().to_string(), addr.port()))
    }

    /// Runs a warm thread slot on the calling thread (GIL released) until it retires or the
    /// server stops; returns "retired" or "stopped". A sync pipeline's `runner` is called per
    /// event with the GIL; an async pipeline's (`is_async`) is the slot's `warmslot.slots.AsyncSlot`,
    /// which runs the events as tasks on the pipeline's event loop. Raises what ended an async slot
    /// on the Python side (its `submit` or `cancel` raised, or the event loop stopped), after the
    /// slot loop has answered what it held.
    #[pyo3(signature = (pipeline, slot, runner, reason, warmup_s, is_async=false))]
    #[allow(clippy::too_many_arguments)]
    fn run_thread_slot(
        &self,
        py: Python<'_>,
        pipeline: usize,
        slot: usize,
        runner: Py<PyAny>,
        reason: PyWarmupReason,
        warmup_s: f64,
        is_async: bool,
    ) -> PyResult<&'static str> {
        // The warm-up (`warmup_s`, measured by the caller) ended as it called: an event received
        // since did not wait for it.
        let warm_at = Instant::now();
        let spin = self.engine.config.idle_spin;
        self.thread_pipeline(pipeline)?;
        let p = self.check_slot(pipeline, slot)?.clone();
        let reason = WarmupReason::from(reason);
        let serve = move |backend: &mut dyn Backend| {
            let live = p.slots.live_loop();
            p.slots.mark_warm(slot, reason, (warmup_s.max(0.0) * 1e6) as u64);
            let warm_from = warm_at.checked_sub(Duration::from_secs_f64(warmup_s.max(0.0))).unwrap_or(warm_at);
            let settings = LoopSettings { spin, warm_from, warm_at };
            let end = run_slot(&p, slot, backend, &settings);
            p.slots.mark_cold(slot);
            if matches!(end, LoopEnd::Retired) {
                live.retired();
            }
            end
        };
        let end = if is_async {
            let mut backend = AsyncThreadBackend::new(py, runner, self.pipeline(pipeline)?.clone())?;
            let end = py.detach(|| serve(&mut backend));
            if let Some(e) = backend.failure.take() {
                return Err(e);
            }
            end
        } else {
            let inline = !self.pipeline(pipeline)?.store.does_io();
            let mut backend = ThreadBackend { runner, inline };
            py.detach(|| serve(&mut backend))
        };
        match end {
            LoopEnd::Retired => Ok("retired"),
            LoopEnd::Died(d) => Err(PyRuntimeError::new_err(d.message)),
            _ => Ok("stopped"),
        }
    }

    /// Runs process slot `slot` on the calling thread (GIL released): spawns its worker, replaces
    /// it after crashes and recycles, returns when the slot retires or the server stops.
    /// `report(kind: SlotReport, message)` is called (with the GIL) on WARM, WARMUP_FAILED,
    /// CRASHED and RECYCLED.
    fn run_process_slot(
        &self,
        py: Python<'_>,
        pipeline: usize,
        slot: usize,
        reason: PyWarmupReason,
        report: Py<PyAny>,
    ) -> PyResult<()> {
        self.check_slot(pipeline, slot)?;
        let engine = self.engine.clone();
        py.detach(move || {
            let report = |kind: &str, message: &str| {
                Python::attach(|py| {
                    let called = SlotReport::parse(kind).and_then(|kind| report.bind(py).call1((kind, message)));
                    if let Err(e) = called {
                        e.print(py);
                    }
                })
            };
            engine.run_process_slot(pipeline, slot, reason.into(), &report)
        })
        .map_err(engine_err)
    }

    /// Marks a slot cold once its thread has stopped (slot loops do as they end; this covers a
    /// thread that stopped without one).
    fn mark_cold(&self, pipeline: usize, slot: usize) -> PyResult<()> {
        self.pipeline(pipeline)?.slots.mark_cold(slot);
        Ok(())
    }

    /// Keeps at most `keep` slots of `pipeline` (None: no limit); those above finish what they
    /// hold and stop.
    #[pyo3(signature = (pipeline, keep=None))]
    fn keep_at_most(&self, pipeline: usize, keep: Option<usize>) -> PyResult<()> {
        let p = self.pipeline(pipeline)?;
        p.slots.keep_at_most(keep.unwrap_or(usize::MAX));
        p.intake.nudge();
        Ok(())
    }

    /// Pool counters of `pipeline` for the predictor and `server.pool()`.
    fn pool<'py>(&self, py: Python<'py>, pipeline: usize) -> PyResult<Bound<'py, PyDict>> {
        let p = self.pipeline(pipeline)?;
        let s = &p.slots;
        let d = PyDict::new(py);
        d.set_item("warm", s.warm_count())?;
        d.set_item("busy", s.busy_count())?;
        d.set_item("waiting", p.intake.waiting())?;
        d.set_item("retire_pending", s.retire_pending())?;
        d.set_item("cold_starts", s.cold_starts())?;
        d.set_item("idle_slot_seconds", s.idle_slot_seconds())?;
        d.set_item("warmup_s", s.warmup_seconds())?;
        d.set_item("cpu_us", s.cpu_us())?;
        d.set_item("worker_rss_bytes", s.rss_bytes())?;
        d.set_item("last_error", s.last_error())?;
        let named = |names: &[&str], v: &[u64]| -> PyResult<Bound<'py, PyDict>> {
            let d = PyDict::new(py);
            for (n, v) in names.iter().zip(v) {
                d.set_item(*n, *v)?;
            }
            Ok(d)
        };
        use warmslot_core::{CRASH_REASONS, RECYCLE_REASONS, WARMUP_REASONS};
        d.set_item("warmups", named(&WARMUP_REASONS, &s.warmups())?)?;
        d.set_item("crashes", named(&CRASH_REASONS, &s.crashes())?)?;
        d.set_item("recycles", named(&RECYCLE_REASONS, &s.recycles())?)?;
        Ok(d)
    }

    fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }

    /// Stops serving: refuses new webhooks, drains accepted ones for up to `drain` seconds, fails
    /// the rest, and stops the intakes so that idle slots return.
    fn shutdown(&self, py: Python<'_>, drain: f64) -> PyResult<()> {
        let drain = seconds(Some(drain))?.unwrap_or_default();
        let Some(server) = self.server.lock().unwrap().take() else { return Ok(()) };
        let engine = self.engine.clone();
        let addr = server.local_addr();
        // Drain first, so that waiting clients are answered on open connections, then close them.
        py.detach(move || {
            engine.drain(drain);
            server.stop();
            engine.close();
        });
        log::info!("stopped listening on {addr}");
        Ok(())
    }

    fn metrics_text(&self) -> String {
        self.engine.metrics_text()
    }

    /// The committed state of `key` in `pipeline` (JSON bytes), or None: read without a lease and
    /// without touching the key's recency (for `warmslot.testing.TestClient.state`).
    fn state<'py>(&self, py: Python<'py>, pipeline: usize, key: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let store = self.pipeline(pipeline)?.store.clone();
        let key = key.to_owned();
        let state = if store.does_io() { py.detach(move || store.peek(&key)) } else { store.peek(&key) };
        let state = state.map_err(store_err)?;
        Ok(state.map(|s| PyBytes::new(py, &s)))
    }

    /// The record of an execution as JSON text, or None if unknown or evicted.
    fn execution(&self, id: &str) -> Option<String> {
        self.engine.execution(id).map(|e| e.record_json(e.status(), e.outcome()))
    }

    /// Cheap per-pipeline counters for the predictor: (waiting, inflight, slots_warm,
    /// slots_busy, arrivals, executions_ran, run_us_sum, cpu_us_sum). `cpu_us_sum` is the CPU
    /// time of the slots' batches (0: not measured, e.g. async pipelines in this interpreter).
    #[allow(clippy::type_complexity)]
    fn load(&self) -> Vec<(usize, usize, usize, usize, u64, u64, u64, u64)> {
        self.engine
            .pipelines()
            .iter()
            .map(|p| {
                let (ran, run_us) = p.metrics.service();
                (
                    p.intake.waiting(),
                    p.inflight(),
                    p.slots.warm_count(),
                    p.slots.busy_count(),
                    p.arrivals(),
                    ran,
                    run_us,
                    p.slots.cpu_us(),
                )
            })
            .collect()
    }

    /// Publishes the predictor's warm-slot target, forecast and phase for /metrics.
    #[pyo3(signature = (pipeline, target_slots, forecast_rps, phase=None))]
    fn set_prediction(
        &self,
        pipeline: usize,
        target_slots: usize,
        forecast_rps: f64,
        phase: Option<&str>,
    ) -> PyResult<()> {
        let p = self.engine.pipelines().get(pipeline).ok_or_else(|| PyValueError::new_err("no such pipeline"))?;
        p.set_prediction(target_slots, forecast_rps);
        if let Some(phase) = phase {
            p.slots.set_predictor_phase(phase);
        }
        Ok(())
    }

    /// Declares the phases of `pipeline`'s scaling policy (the `state` labels of
    /// `warmslot_predictor_state`).
    fn set_predictor_phases(&self, pipeline: usize, phases: Vec<String>) -> PyResult<()> {
        self.pipeline(pipeline)?.slots.set_predictor_phases(&phases);
        Ok(())
    }

    /// Per-pipeline counters and latency quantiles (microseconds).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for s in self.engine.stats() {
            let d = PyDict::new(py);
            d.set_item("name", &s.name)?;
            d.set_item("ring_depth", s.ring_depth)?;
            d.set_item("ring_capacity", s.ring_capacity)?;
            d.set_item("inflight", s.inflight)?;
            d.set_item("slots_warm", s.slots_warm)?;
            d.set_item("slots_busy", s.slots_busy)?;
            let req = PyDict::new(py);
            for (k, v) in &s.requests {
                req.set_item(*k, *v)?;
            }
            d.set_item("requests", req)?;
            let lat = PyDict::new(py);
            for (phase, q) in ["queue", "run", "commit", "total"].iter().zip(s.latency.iter()) {
                let qd = PyDict::new(py);
                qd.set_item("count", q.count)?;
                qd.set_item("mean_us", q.mean_us)?;
                qd.set_item("p50_us", q.p50_us)?;
                qd.set_item("p95_us", q.p95_us)?;
                qd.set_item("p99_us", q.p99_us)?;
                qd.set_item("max_us", q.max_us)?;
                lat.set_item(*phase, qd)?;
            }
            d.set_item("latency", lat)?;
            out.append(d)?;
        }
        Ok(out)
    }
}

/// Parses JSON bytes with the server's own parser (the one the ingress checks bodies with).
#[pyfunction]
fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    value::loads(py, data)
}

/// Decodes a batch frame payload (worker side) into tuples
/// `(index, execution_id, key, event, state_json_bytes_or_None, headers, received_at, remaining)`;
/// `headers` is a callable that builds the dict (`Context.headers` calls it when first read).
// NOTE: the state stays bytes, decoded by the runner with orjson as in thread slots (a state that
// cannot be decoded is that event's `state_error`, not a bad frame), and the headers dict is built
// only when read: decode_batch went from 1643 to 1131-1159 ns an event (support bot, 4-event frames).
#[pyfunction]
fn decode_batch<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let events = wire::decode_batch(payload).map_err(|e| PyValueError::new_err(e.0))?;
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let event = value::loads(py, ev.body)?;
        let state = ev.state.map(|s| PyBytes::new(py, s));
        let pairs = ev.headers.iter().map(|(k, v)| (Box::<str>::from(*k), Box::<[u8]>::from(*v))).collect();
        let headers = Bound::new(py, thread_slot::LazyHeaders(thread_slot::RawHeaders::Pairs(pairs)))?;
        out.push((ev.index, ev.id, ev.key, event, state, headers, ev.received_unix, ev.remaining).into_pyobject(py)?);
    }
    Ok(out)
}

/// Encodes a result frame (worker side): kind 0 reply (a=reply, b=state), 1 error (a=code,
/// b=message), 2 ready, 3 warm-up failed (a=message). Index 0xFFFFFFFF for ready/failed.
#[pyfunction]
#[pyo3(signature = (index, kind, a=b"".as_slice(), b=None))]
fn encode_result<'py>(py: Python<'py>, index: u32, kind: u8, a: &[u8], b: Option<&[u8]>) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &wire::encode_result(index, kind, a, b))
}

/// HMAC-SHA256 of the concatenated `parts`, hex-encoded (for signing test requests).
#[pyfunction]
fn hmac_sha256_hex(secret: &[u8], parts: Vec<Vec<u8>>) -> String {
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    warmslot_core::sign_hex(secret, &parts)
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logbridge::init(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Core>()?;
    m.add_class::<AppSettings>()?;
    m.add_class::<PipelineSettings>()?;
    m.add_class::<SignatureSettings>()?;
    m.add_class::<SlotReport>()?;
    m.add_class::<PyWarmupReason>()?;
    m.add_class::<thread_slot::LazyHeaders>()?;
    m.add_function(wrap_pyfunction!(hmac_sha256_hex, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(encode_result, m)?)?;
    Ok(())
}
