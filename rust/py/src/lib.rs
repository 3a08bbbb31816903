//! `warmslot._core`: thin PyO3 bindings over `warmslot-core`. Errors of the core become Python
//! exceptions here, and only here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warmslot_core::runtime::slot_loop::{run_slot, Backend, LoopEnd, LoopSettings};
use warmslot_core::runtime::slots::WarmupReason;
use warmslot_core::runtime::wire;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use warmslot_core::state::redis::lease_for;
use warmslot_core::{
    AppConfig, DedupeSpec, Engine, EngineError, Isolation, KeyFn, KeySpec, MemoryStore, MissingKey, PipelineConfig,
    RedisDb, SignatureScheme, SignatureSpec, SqliteDb, SqliteOptions, StateStore, WorkerCommand,
};

// NOTE: glibc malloc took about 16% of the I/O thread's CPU serving the support bot (perf,
// `_int_malloc`, `malloc_consolidate`, `unlink_chunk`, `_int_free`); Rust allocations (request
// buffers, headers, parsed bodies, records) go to mimalloc instead. Python keeps its own
// allocator. `local_dynamic_tls`: mimalloc's thread-locals use the dynamic TLS model, as a
// library loaded late (by `import`) must; the initial-exec model can fail to load beside other
// extensions ("cannot allocate memory in static TLS block").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod thread_slot;
mod value;
use thread_slot::{AsyncThreadBackend, ThreadBackend};

fn warmup_reason(reason: &str) -> PyResult<WarmupReason> {
    match reason {
        "ahead" => Ok(WarmupReason::Ahead),
        "demand" => Ok(WarmupReason::Demand),
        "replace" => Ok(WarmupReason::Replace),
        other => Err(PyValueError::new_err(format!("unknown warm-up reason {other:?}"))),
    }
}

fn engine_err(e: EngineError) -> PyErr {
    match e {
        EngineError::Bind { ref source, .. } => {
            let msg = e.to_string();
            match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, msg)),
                None => PyOSError::new_err(msg),
            }
        }
        EngineError::Config(_) => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

fn get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => Ok(Some(v.extract().map_err(Into::into)?)),
        _ => Ok(None),
    }
}

fn seconds(v: Option<f64>) -> PyResult<Option<Duration>> {
    v.map(|s| Duration::try_from_secs_f64(s).map_err(|_| PyValueError::new_err(format!("{s} is not a valid duration"))))
        .transpose()
}

fn pipeline_config(d: &Bound<'_, PyDict>) -> PyResult<PipelineConfig> {
    let name: String = get(d, "name")?.ok_or_else(|| PyValueError::new_err("pipeline needs a name"))?;
    let mut p = PipelineConfig::new(name);
    p.key = match get::<String>(d, "key_field")? {
        Some(field) => KeySpec::Field(field),
        None if get::<bool>(d, "key_callable")?.unwrap_or(false) => KeySpec::Callable,
        None => KeySpec::None,
    };
    if let Some(v) = get(d, "min_slots")? {
        p.min_slots = v;
    }
    p.max_slots = get(d, "max_slots")?.unwrap_or(p.min_slots).max(p.min_slots);
    p.timeout = seconds(get(d, "timeout")?)?;
    if let Some(v) = get(d, "max_body_bytes")? {
        p.max_body_bytes = v;
    }
    if let Some(v) = get(d, "queue_size")? {
        p.ring_capacity = v;
    }
    if let Some(v) = get(d, "max_batch")? {
        p.max_batch = v;
    }
    if let Some(cmd) = get::<Vec<String>>(d, "worker_cmd")? {
        let (program, args) = cmd.split_first().ok_or_else(|| PyValueError::new_err("worker_cmd is empty"))?;
        p.isolation = Isolation::Process(WorkerCommand { program: program.clone(), args: args.to_vec() });
    }
    if let Some(v) = get(d, "concurrency")? {
        p.concurrency = v;
    }
    p.max_executions = get(d, "max_executions")?;
    p.max_memory_mb = get(d, "max_memory_mb")?;
    p.reply_async = get(d, "reply_async")?.unwrap_or(false);
    p.dedupe = match (get::<String>(d, "dedupe_field")?, get::<String>(d, "dedupe")?.as_deref()) {
        (Some(field), _) => DedupeSpec::Field(field),
        (None, Some("headers") | None) => DedupeSpec::Headers,
        (None, Some("callable")) => DedupeSpec::Callable,
        (None, Some("off")) => DedupeSpec::Off,
        (None, Some(other)) => return Err(PyValueError::new_err(format!("unknown dedupe mode {other:?}"))),
    };
    p.dedupe_window = seconds(get(d, "dedupe_window")?)?.unwrap_or(p.dedupe_window);
    p.retries = get(d, "retries")?.unwrap_or(0);
    p.retry_backoff = seconds(get(d, "retry_backoff")?)?.unwrap_or(p.retry_backoff);
    p.missing_key = match get::<String>(d, "missing_key")?.as_deref() {
        Some("unkeyed") | None => MissingKey::Unkeyed,
        Some("reject") => MissingKey::Reject,
        Some(other) => {
            return Err(PyValueError::new_err(format!("missing_key must be 'unkeyed' or 'reject', got {other:?}")))
        }
    };
    if let Some(sig) = get::<Bound<'_, PyDict>>(d, "signature")? {
        let secret: Vec<u8> = get(&sig, "secret")?.ok_or_else(|| PyValueError::new_err("signature needs a secret"))?;
        let tolerance = seconds(get(&sig, "tolerance")?)?.unwrap_or(Duration::from_secs(300));
        let scheme = match get::<String>(&sig, "scheme")?.as_deref() {
            Some("hex") | None => SignatureScheme::Hex {
                header: get::<String>(&sig, "header")?.unwrap_or_else(|| "x-signature".into()).to_ascii_lowercase(),
                prefix: get(&sig, "prefix")?.unwrap_or_default(),
            },
            Some("slack") => SignatureScheme::Slack { tolerance },
            Some("stripe") => SignatureScheme::Stripe { tolerance },
            Some("standard") => SignatureScheme::Standard { tolerance },
            Some(other) => return Err(PyValueError::new_err(format!("unknown signature scheme {other:?}"))),
        };
        p.signature = Some(SignatureSpec { secret, scheme });
    }
    Ok(p)
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
}

impl Core {
    fn pipeline(&self, index: usize) -> PyResult<&Arc<warmslot_core::runtime::pipeline::Pipeline>> {
        self.engine.pipelines().get(index).ok_or_else(|| PyValueError::new_err(format!("no pipeline {index}")))
    }

    /// A pipeline whose code runs in this interpreter (thread slots); a process pipeline's events
    /// are run by its worker processes only.
    fn thread_pipeline(&self, index: usize) -> PyResult<&Arc<warmslot_core::runtime::pipeline::Pipeline>> {
        let p = self.pipeline(index)?;
        if p.config.isolation != Isolation::Thread {
            return Err(PyValueError::new_err(format!("pipeline {:?} does not use thread slots", p.name())));
        }
        Ok(p)
    }

    fn check_slot(&self, pipeline: usize, slot: usize) -> PyResult<&Arc<warmslot_core::runtime::pipeline::Pipeline>> {
        let p = self.pipeline(pipeline)?;
        if slot >= p.slots.len() {
            return Err(PyValueError::new_err(format!("pipeline {:?} has no slot {slot}", p.name())));
        }
        Ok(p)
    }
}

#[pymethods]
impl Core {
    /// `app`: host, port, max_records, io_threads, max_connections. `pipelines`: list of dicts.
    /// `key_fns`: per pipeline, None or a callable(body: bytes) -> str | None; `dedupe_fns`
    /// likewise, for delivery ids.
    #[new]
    #[pyo3(signature = (app, pipelines, key_fns, dedupe_fns=None))]
    fn new(
        app: &Bound<'_, PyDict>,
        pipelines: &Bound<'_, PyList>,
        key_fns: Vec<Option<Py<PyAny>>>,
        dedupe_fns: Option<Vec<Option<Py<PyAny>>>>,
    ) -> PyResult<Self> {
        let mut config = AppConfig::default();
        if let Some(h) = get(app, "host")? {
            config.host = h;
        }
        if let Some(p) = get(app, "port")? {
            config.port = p;
        }
        if let Some(v) = get(app, "max_records")? {
            config.max_records = v;
        }
        if let Some(v) = get(app, "io_threads")? {
            config.io_threads = v;
        }
        if let Some(v) = get(app, "max_connections")? {
            config.max_connections = v;
        }
        if let Some(v) = get::<u64>(app, "spin_us")? {
            config.idle_spin = Duration::from_micros(v);
        }
        // Hardening limits (issue 9); absent keys keep the core's defaults.
        config.admin_token = get(app, "admin_token")?;
        config.max_header_bytes = get(app, "max_header_bytes")?.unwrap_or(config.max_header_bytes);
        config.header_timeout = seconds(get(app, "header_timeout")?)?.unwrap_or(config.header_timeout);
        config.body_timeout = seconds(get(app, "body_timeout")?)?.unwrap_or(config.body_timeout);
        config.max_record_bytes = get(app, "max_record_bytes")?.unwrap_or(config.max_record_bytes);
        config.max_keys = get(app, "max_keys")?.unwrap_or(config.max_keys);
        config.max_state_bytes = get(app, "max_state_bytes")?.unwrap_or(config.max_state_bytes);
        let max_keys = config.max_keys;
        for p in pipelines.iter() {
            config.pipelines.push(pipeline_config(p.cast::<PyDict>()?)?);
        }
        config.records_ttl = seconds(get(app, "records_ttl")?)?.unwrap_or(config.records_ttl);
        let dedupe_fns = dedupe_fns.unwrap_or_default();
        let key_fn: Option<Arc<dyn KeyFn>> = if key_fns.iter().chain(dedupe_fns.iter()).any(Option::is_some) {
            Some(Arc::new(PyKeyFn { callables: key_fns, delivery_callables: dedupe_fns }))
        } else {
            None
        };
        let synchronous_full = match get::<String>(app, "sqlite_synchronous")?.as_deref() {
            Some("normal") | None => false,
            Some("full") => true,
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "sqlite_synchronous must be 'normal' or 'full', got {other:?}"
                )))
            }
        };
        let sqlite_options =
            SqliteOptions { synchronous_full, records_ttl: config.records_ttl, max_records: config.max_records };
        let store_err = |e: warmslot_core::StoreError| PyOSError::new_err(e.to_string());
        let engine = match (get::<String>(app, "redis_url")?, get::<String>(app, "sqlite_path")?) {
            (Some(url), _) => {
                let db = RedisDb::open(&url).map_err(store_err)?;
                db.set_records_ttl(config.records_ttl);
                let store_for = move |p: &PipelineConfig| Ok(db.store(&p.name, lease_for(p)));
                Engine::new(config, &store_for, key_fn)
            }
            (None, Some(path)) => {
                let db = SqliteDb::open_with(&path, sqlite_options).map_err(store_err)?;
                let store_for = move |p: &PipelineConfig| Ok(db.store(&p.name));
                Engine::new(config, &store_for, key_fn)
            }
            (None, None) => {
                let store_for =
                    move |_: &PipelineConfig| Ok(Arc::new(MemoryStore::new(max_keys)) as Arc<dyn StateStore>);
                Engine::new(config, &store_for, key_fn)
            }
        }
        .map_err(engine_err)?;
        Ok(Core { engine })
    }

    /// Binds and starts serving; returns the (host, port) actually bound.
    fn start(&self, py: Python<'_>) -> PyResult<(String, u16)> {
        let engine = self.engine.clone();
        let addr = py.detach(move || engine.start()).map_err(engine_err)?;
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
        reason: &str,
        warmup_s: f64,
        is_async: bool,
    ) -> PyResult<&'static str> {
        // The warm-up (`warmup_s`, measured by the caller) ended as it called: an event received
        // since did not wait for it.
        let warm_at = Instant::now();
        let spin = self.engine.config.idle_spin;
        self.thread_pipeline(pipeline)?;
        let p = self.check_slot(pipeline, slot)?.clone();
        let reason = warmup_reason(reason)?;
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
            let inline = self.pipeline(pipeline)?.store.kind() == "memory";
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
    /// `report(kind, message)` is called (with the GIL) on warm, warmup_failed, crashed, recycled.
    fn run_process_slot(
        &self,
        py: Python<'_>,
        pipeline: usize,
        slot: usize,
        reason: &str,
        report: Py<PyAny>,
    ) -> PyResult<()> {
        self.check_slot(pipeline, slot)?;
        let reason = warmup_reason(reason)?;
        let engine = self.engine.clone();
        py.detach(move || {
            let report = |kind: &str, message: &str| {
                Python::attach(|py| {
                    if let Err(e) = report.bind(py).call1((kind, message)) {
                        e.print(py);
                    }
                })
            };
            engine.run_process_slot(pipeline, slot, reason, &report)
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
        use warmslot_core::runtime::slots::{CRASH_REASONS, RECYCLE_REASONS, WARMUP_REASONS};
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
        let engine = self.engine.clone();
        py.detach(move || engine.shutdown(drain));
        Ok(())
    }

    fn metrics_text(&self) -> String {
        self.engine.metrics_text()
    }

    /// The record of an execution as JSON text, or None if unknown or evicted.
    fn execution(&self, id: &str) -> Option<String> {
        self.engine.execution(id).map(|e| warmslot_core::http::responses::execution_json(&e))
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
    warmslot_core::http::signature::sign_hex(secret, &parts)
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Core>()?;
    m.add_class::<thread_slot::LazyHeaders>()?;
    m.add_function(wrap_pyfunction!(hmac_sha256_hex, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(encode_result, m)?)?;
    Ok(())
}
