//! Typed values that cross from Python to Rust: the app's and the pipelines' settings, and the
//! enumerations of slot reports and warm-up reasons.
//!
//! Every settings class has a keyword-only constructor in which every field is required, so a
//! missing or misspelt field is Python's own `TypeError` naming it, at start; optional values are
//! passed as `None`. The constructor validates the enumerated fields (an error names the field and
//! the accepted values) and converts to the core's config types, once, in that function.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use warmslot_core::{
    AppConfig, DedupeSpec, EventFilter, EventTypeSource, Isolation, KeySpec, MissingKey, PipelineConfig,
    SignatureScheme, SignatureSpec, WarmupReason, WorkerCommand,
};

/// `value` if it is one of `options` (by name), else a `ValueError` naming `field` and the accepted
/// names.
fn choice<T: Copy>(field: &str, value: &str, options: &[(&str, T)]) -> PyResult<T> {
    match options.iter().find(|(name, _)| *name == value) {
        Some((_, v)) => Ok(*v),
        None => {
            let accepted: Vec<String> = options.iter().map(|(name, _)| format!("'{name}'")).collect();
            Err(PyValueError::new_err(format!("{field} must be one of {}, got {value:?}", accepted.join(", "))))
        }
    }
}

/// `s` seconds as a duration, or a `ValueError` naming `field`.
fn duration(field: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{field} must be a non-negative number of seconds, got {s}")))
}

/// A `ValueError` for a field given where its mode does not use it, or missing where it does.
fn needs(field: &str, mode_field: &str, mode: &str, given: bool, wanted: bool) -> PyResult<()> {
    match (given, wanted) {
        (false, true) => Err(PyValueError::new_err(format!("{mode_field}={mode:?} needs {field}"))),
        (true, false) => Err(PyValueError::new_err(format!("{field} must be None when {mode_field}={mode:?}"))),
        _ => Ok(()),
    }
}

fn callable(field: &str, f: Option<Py<PyAny>>, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    match f {
        Some(f) if !f.bind(py).is_callable() => {
            Err(PyTypeError::new_err(format!("{field} must be a callable(body: bytes) -> str | None, or None")))
        }
        f => Ok(f),
    }
}

/// A webhook signature check: `scheme` is "hex" (`header: <prefix><hex>`), "slack", "stripe" or
/// "standard" (Standard Webhooks); `tolerance`: seconds a signed timestamp may be off (not "hex").
#[pyclass(module = "warmslot._core", frozen)]
pub struct SignatureSettings {
    pub(crate) spec: SignatureSpec,
}

#[derive(Clone, Copy)]
enum Scheme {
    Hex,
    Slack,
    Stripe,
    Standard,
}

#[pymethods]
impl SignatureSettings {
    #[new]
    #[pyo3(signature = (*, secret, scheme, header, prefix, tolerance))]
    fn new(secret: Vec<u8>, scheme: &str, header: &str, prefix: String, tolerance: f64) -> PyResult<Self> {
        let schemes = [
            ("hex", Scheme::Hex),
            ("slack", Scheme::Slack),
            ("stripe", Scheme::Stripe),
            ("standard", Scheme::Standard),
        ];
        let tolerance = duration("tolerance", tolerance)?;
        let scheme = match choice("scheme", scheme, &schemes)? {
            Scheme::Hex => SignatureScheme::Hex { header: header.to_ascii_lowercase(), prefix },
            Scheme::Slack => SignatureScheme::Slack { tolerance },
            Scheme::Stripe => SignatureScheme::Stripe { tolerance },
            Scheme::Standard => SignatureScheme::Standard { tolerance },
        };
        if secret.is_empty() {
            return Err(PyValueError::new_err("secret must not be empty"));
        }
        Ok(SignatureSettings { spec: SignatureSpec { secret, scheme } })
    }

    fn __repr__(&self) -> String {
        let scheme = match &self.spec.scheme {
            SignatureScheme::Hex { .. } => "hex",
            SignatureScheme::Slack { .. } => "slack",
            SignatureScheme::Stripe { .. } => "stripe",
            SignatureScheme::Standard { .. } => "standard",
        };
        format!("SignatureSettings(scheme={scheme:?}, secret=<hidden>)")
    }
}

/// `events=` and `events_from=`: the types that run, and where the type is found (a rule, or by
/// default where the `signature`'s provider puts it); `None` without `events`.
fn event_filter(
    events: Option<Vec<String>>,
    events_from: Option<String>,
    signature: Option<&SignatureSpec>,
) -> PyResult<Option<EventFilter>> {
    let Some(types) = events else {
        return match events_from {
            Some(_) => Err(PyValueError::new_err("events_from needs events (the event types that run)")),
            None => Ok(None),
        };
    };
    if types.is_empty() || types.iter().any(|t| t.trim().is_empty()) {
        return Err(PyValueError::new_err(format!("events must be a non-empty list of event types, got {types:?}")));
    }
    let from = match events_from {
        Some(rule) => vec![EventTypeSource::parse(&rule).map_err(PyValueError::new_err)?],
        None => signature.and_then(|s| EventFilter::provider_sources(&s.scheme)).ok_or_else(|| {
            PyValueError::new_err(
                "events needs events_from (\"header:<name>\" or \"field:<path>\"): only a GitHub, Slack, Stripe \
                 or Standard Webhooks signature says where the event type is",
            )
        })?,
    };
    Ok(Some(EventFilter { types, from }))
}

#[derive(Clone, Copy)]
enum Mode {
    None,
    Headers,
    Field,
    Callable,
    Off,
}

/// One pipeline's settings (see `PipelineSpec.settings()` in `warmslot/spec.py`).
///
/// `key`: "none", "field" (`key_field`) or "callable" (`key_fn(body) -> str | None`).
/// `isolation`: "thread", or "process" (`worker_cmd`: program and arguments of its workers).
/// `dedupe`: "headers", "field" (`dedupe_field`), "callable" (`dedupe_fn`) or "off".
/// `missing_key`: "unkeyed" or "reject". Seconds are floats; `timeout` None waits forever.
/// `events`: the event types that run (None: all); `events_from`: "header:<name>" or
/// "field:<dotted.path>", None to use the signature's provider (GitHub, Slack, Stripe, Standard).
#[pyclass(module = "warmslot._core", frozen)]
pub struct PipelineSettings {
    pub(crate) config: PipelineConfig,
    pub(crate) key_fn: Option<Py<PyAny>>,
    pub(crate) dedupe_fn: Option<Py<PyAny>>,
}

#[pymethods]
impl PipelineSettings {
    #[new]
    #[pyo3(signature = (
        *, name, key, key_field, key_fn, missing_key, min_slots, max_slots, timeout, max_body_bytes,
        queue_size, max_batch, isolation, worker_cmd, concurrency, max_executions, max_memory_mb,
        signature, reply_async, dedupe, dedupe_field, dedupe_fn, dedupe_window, retries, retry_backoff,
        events, events_from
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        key: &str,
        key_field: Option<String>,
        key_fn: Option<Py<PyAny>>,
        missing_key: &str,
        min_slots: usize,
        max_slots: usize,
        timeout: Option<f64>,
        max_body_bytes: usize,
        queue_size: usize,
        max_batch: usize,
        isolation: &str,
        worker_cmd: Option<Vec<String>>,
        concurrency: usize,
        max_executions: Option<u64>,
        max_memory_mb: Option<u64>,
        signature: Option<PyRef<'_, SignatureSettings>>,
        reply_async: bool,
        dedupe: &str,
        dedupe_field: Option<String>,
        dedupe_fn: Option<Py<PyAny>>,
        dedupe_window: f64,
        retries: u32,
        retry_backoff: f64,
        events: Option<Vec<String>>,
        events_from: Option<String>,
    ) -> PyResult<Self> {
        let key_fn = callable("key_fn", key_fn, py)?;
        let dedupe_fn = callable("dedupe_fn", dedupe_fn, py)?;
        let key_mode =
            choice("key", key, &[("none", Mode::None), ("field", Mode::Field), ("callable", Mode::Callable)])?;
        needs("key_field", "key", key, key_field.is_some(), matches!(key_mode, Mode::Field))?;
        needs("key_fn", "key", key, key_fn.is_some(), matches!(key_mode, Mode::Callable))?;
        let key = match (key_mode, key_field) {
            (Mode::Field, Some(field)) => KeySpec::Field(field),
            (Mode::Callable, _) => KeySpec::Callable,
            _ => KeySpec::None,
        };
        let missing_key =
            choice("missing_key", missing_key, &[("unkeyed", MissingKey::Unkeyed), ("reject", MissingKey::Reject)])?;
        let process = choice("isolation", isolation, &[("thread", false), ("process", true)])?;
        needs("worker_cmd", "isolation", isolation, worker_cmd.is_some(), process)?;
        let isolation = match worker_cmd {
            Some(cmd) => {
                let (program, args) =
                    cmd.split_first().ok_or_else(|| PyValueError::new_err("worker_cmd must not be empty"))?;
                Isolation::Process(WorkerCommand { program: program.clone(), args: args.to_vec() })
            }
            None => Isolation::Thread,
        };
        let dedupe_modes =
            [("headers", Mode::Headers), ("field", Mode::Field), ("callable", Mode::Callable), ("off", Mode::Off)];
        let dedupe_mode = choice("dedupe", dedupe, &dedupe_modes)?;
        needs("dedupe_field", "dedupe", dedupe, dedupe_field.is_some(), matches!(dedupe_mode, Mode::Field))?;
        needs("dedupe_fn", "dedupe", dedupe, dedupe_fn.is_some(), matches!(dedupe_mode, Mode::Callable))?;
        let dedupe = match (dedupe_mode, dedupe_field) {
            (Mode::Field, Some(field)) => DedupeSpec::Field(field),
            (Mode::Callable, _) => DedupeSpec::Callable,
            (Mode::Off, _) => DedupeSpec::Off,
            _ => DedupeSpec::Headers,
        };
        if max_slots < min_slots {
            return Err(PyValueError::new_err(format!(
                "max_slots ({max_slots}) must be at least min_slots ({min_slots})"
            )));
        }
        let signature = signature.map(|s| s.spec.clone());
        let events = event_filter(events, events_from, signature.as_ref())?;
        let config = PipelineConfig {
            key,
            missing_key,
            min_slots,
            max_slots,
            timeout: timeout.map(|s| duration("timeout", s)).transpose()?,
            max_body_bytes,
            ring_capacity: queue_size,
            max_batch,
            isolation,
            concurrency,
            // The app's max_state_bytes, which Engine::new copies into every pipeline.
            max_state_bytes: PipelineConfig::new("").max_state_bytes,
            max_executions,
            max_memory_mb,
            signature,
            reply_async,
            dedupe,
            dedupe_window: duration("dedupe_window", dedupe_window)?,
            retries,
            retry_backoff: duration("retry_backoff", retry_backoff)?,
            events,
            name,
        };
        Ok(PipelineSettings { config, key_fn, dedupe_fn })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.config.name
    }

    fn __repr__(&self) -> String {
        format!("PipelineSettings(name={:?})", self.config.name)
    }
}

/// Where per-key state lives.
pub(crate) enum Store {
    Memory,
    Sqlite { path: String, synchronous_full: bool },
    Redis { url: String },
}

/// The app's settings: where it listens, its limits, and its state store.
///
/// `store`: "memory", "sqlite" (`sqlite_path`) or "redis" (`redis_url`); `sqlite_synchronous`:
/// "normal" or "full". `spin_us` in microseconds; timeouts and `records_ttl` in seconds.
#[pyclass(module = "warmslot._core", frozen)]
pub struct AppSettings {
    /// Without pipelines (`Core` adds them).
    pub(crate) config: AppConfig,
    pub(crate) store: Store,
}

#[pymethods]
impl AppSettings {
    #[new]
    #[pyo3(signature = (
        *, host, port, max_records, io_threads, max_connections, spin_us, admin_token, max_header_bytes,
        header_timeout, body_timeout, max_record_bytes, max_keys, max_state_bytes, records_ttl, store,
        sqlite_path, sqlite_synchronous, redis_url
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        max_records: usize,
        io_threads: usize,
        max_connections: usize,
        spin_us: u64,
        admin_token: Option<String>,
        max_header_bytes: usize,
        header_timeout: f64,
        body_timeout: f64,
        max_record_bytes: usize,
        max_keys: usize,
        max_state_bytes: usize,
        records_ttl: f64,
        store: &str,
        sqlite_path: Option<String>,
        sqlite_synchronous: &str,
        redis_url: Option<String>,
    ) -> PyResult<Self> {
        #[derive(Clone, Copy)]
        enum Kind {
            Memory,
            Sqlite,
            Redis,
        }
        let kind =
            choice("store", store, &[("memory", Kind::Memory), ("sqlite", Kind::Sqlite), ("redis", Kind::Redis)])?;
        let synchronous_full = choice("sqlite_synchronous", sqlite_synchronous, &[("normal", false), ("full", true)])?;
        needs("sqlite_path", "store", store, sqlite_path.is_some(), matches!(kind, Kind::Sqlite))?;
        needs("redis_url", "store", store, redis_url.is_some(), matches!(kind, Kind::Redis))?;
        let store = match (sqlite_path, redis_url) {
            (Some(path), _) => Store::Sqlite { path, synchronous_full },
            (None, Some(url)) => Store::Redis { url },
            (None, None) => Store::Memory,
        };
        let config = AppConfig {
            host,
            port,
            pipelines: Vec::new(),
            max_records,
            io_threads,
            max_connections,
            // Not read by the engine: Python passes the drain to `Core.shutdown(drain)`.
            idle_spin: Duration::from_micros(spin_us),
            admin_token,
            max_header_bytes,
            header_timeout: duration("header_timeout", header_timeout)?,
            body_timeout: duration("body_timeout", body_timeout)?,
            max_record_bytes,
            max_keys,
            max_state_bytes,
            records_ttl: duration("records_ttl", records_ttl)?,
        };
        Ok(AppSettings { config, store })
    }

    fn __repr__(&self) -> String {
        let store = match self.store {
            Store::Memory => "memory",
            Store::Sqlite { .. } => "sqlite",
            Store::Redis { .. } => "redis",
        };
        format!("AppSettings(host={:?}, port={}, store={store:?})", self.config.host, self.config.port)
    }
}

/// Why a slot warmed up (the `reason` label of `warmslot_slot_warmups_total`).
#[pyclass(module = "warmslot._core", name = "WarmupReason", eq, eq_int, hash, frozen, from_py_object)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PyWarmupReason {
    /// Before demand: the pool grew with nothing waiting (the forecast, or min_slots).
    #[pyo3(name = "AHEAD")]
    Ahead,
    /// Events were waiting when the warm-up started.
    #[pyo3(name = "DEMAND")]
    Demand,
    /// The slot replaced one that crashed or was recycled.
    #[pyo3(name = "REPLACE")]
    Replace,
}

impl PyWarmupReason {
    fn label(self) -> &'static str {
        match self {
            PyWarmupReason::Ahead => "ahead",
            PyWarmupReason::Demand => "demand",
            PyWarmupReason::Replace => "replace",
        }
    }
}

impl From<PyWarmupReason> for WarmupReason {
    fn from(r: PyWarmupReason) -> Self {
        match r {
            PyWarmupReason::Ahead => WarmupReason::Ahead,
            PyWarmupReason::Demand => WarmupReason::Demand,
            PyWarmupReason::Replace => WarmupReason::Replace,
        }
    }
}

#[pymethods]
impl PyWarmupReason {
    /// The metric label: "ahead", "demand" or "replace".
    #[getter]
    fn value(&self) -> &'static str {
        self.label()
    }
}

/// What `Core.run_process_slot` reports about its slot: `report(kind, message)`.
#[pyclass(module = "warmslot._core", eq, eq_int, hash, frozen, skip_from_py_object)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotReport {
    /// A worker is warm (message: its pid).
    #[pyo3(name = "WARM")]
    Warm,
    /// A worker failed to warm up (message: why).
    #[pyo3(name = "WARMUP_FAILED")]
    WarmupFailed,
    /// A worker crashed; a fresh one is started (message: how).
    #[pyo3(name = "CRASHED")]
    Crashed,
    /// A worker was recycled (message: "max_executions" or "max_memory").
    #[pyo3(name = "RECYCLED")]
    Recycled,
}

impl SlotReport {
    const ALL: [SlotReport; 4] =
        [SlotReport::Warm, SlotReport::WarmupFailed, SlotReport::Crashed, SlotReport::Recycled];

    /// The kind the core reports (the process slot loop in the core).
    fn label(self) -> &'static str {
        match self {
            SlotReport::Warm => "warm",
            SlotReport::WarmupFailed => "warmup_failed",
            SlotReport::Crashed => "crashed",
            SlotReport::Recycled => "recycled",
        }
    }

    pub(crate) fn parse(kind: &str) -> PyResult<Self> {
        let options = Self::ALL.map(|r| (r.label(), r));
        choice("slot report kind", kind, &options)
    }
}

#[pymethods]
impl SlotReport {
    /// The kind as the core names it: "warm", "warmup_failed", "crashed" or "recycled".
    #[getter]
    fn value(&self) -> &'static str {
        self.label()
    }
}
