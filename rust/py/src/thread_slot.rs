//! The thread backend: a slot whose pipeline instance lives in this interpreter. The Rust slot
//! loop runs on the slot's Python thread with the GIL released; for each batch it attaches once,
//! calls the Python runner per event, and detaches before committing.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use warmslot_core::{Backend, Begun, Bytes, CommitNow, ErrorCode, More, RunResult, SlotDied};

use crate::value::loads;

pub struct ThreadBackend {
    /// `runner(execution_id, key, event, state, headers, received_at, remaining)` returns
    /// `(True, reply_bytes, state_bytes_or_None)` or `(False, code, message)`.
    pub runner: Py<PyAny>,
    /// The store answers in memory: commit each result at once, GIL held (well under a
    /// microsecond, less than a detach and re-attach). Stores that do I/O commit after the batch,
    /// with the GIL released.
    pub inline: bool,
}

/// A batch stops taking new events after this long (the rest go back to their lanes), so the
/// results it holds for a store that commits after the batch are not held up for long.
const BATCH_TIME_LIMIT: std::time::Duration = std::time::Duration::from_millis(10);

/// The request headers as a dict (values decoded lossily; a repeated name keeps its last value).
pub fn headers_dict<'py>(py: Python<'py>, headers: &warmslot_core::HeaderMap) -> PyResult<Bound<'py, PyDict>> {
    pairs_dict(py, headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
}

fn pairs_dict<'py, 'a>(
    py: Python<'py>,
    pairs: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in pairs {
        d.set_item(k, String::from_utf8_lossy(v))?;
    }
    Ok(d)
}

fn error(code: ErrorCode, message: String) -> RunResult {
    RunResult::Error { code, message }
}

/// The request headers of one event, turned into a dict only if the pipeline reads
/// `ctx.headers` (most do not; building it for every event cost more than the bot's own work).
#[pyclass(module = "warmslot._core", frozen)]
pub struct LazyHeaders(pub RawHeaders);

/// Headers as the slot has them: the request's (thread slots) or a batch frame's (workers).
pub enum RawHeaders {
    Map(warmslot_core::HeaderMap),
    Pairs(Vec<(Box<str>, Box<[u8]>)>),
}

#[pymethods]
impl LazyHeaders {
    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match &self.0 {
            RawHeaders::Map(map) => headers_dict(py, map),
            RawHeaders::Pairs(pairs) => pairs_dict(py, pairs.iter().map(|(k, v)| (&**k, &**v))),
        }
    }
}

fn run_one(py: Python<'_>, runner: &Bound<'_, PyAny>, b: &Begun) -> RunResult {
    let job = &b.job;
    let exec = &job.exec;
    // NOTE: the stored state goes to Python as bytes and is decoded there with orjson (the
    // encoder that wrote it), about 3x faster than serde_json + object building for a typical
    // conversation state. The body is parsed here, straight into Python objects, by the parser the
    // ingress checked it with (see `http::body`): it cannot fail here but for want of memory.
    let event = match loads(py, &job.body) {
        Ok(event) => event,
        Err(e) => return error(ErrorCode::PipelineError, format!("cannot decode the event: {e}")),
    };
    let args = (|| -> PyResult<Bound<'_, PyTuple>> {
        let state = b.state.as_ref().map(|s| PyBytes::new(py, s));
        let headers = Bound::new(py, LazyHeaders(RawHeaders::Map(job.headers.clone())))?;
        (exec.id_str.as_ref(), exec.key.as_deref(), event, state, headers, exec.received_unix, job.remaining())
            .into_pyobject(py)
    })();
    let out = match args.and_then(|a| runner.call1(a)) {
        Ok(out) => out,
        Err(e) => return error(ErrorCode::PipelineError, format!("internal error while running the pipeline: {e}")),
    };
    let parsed = (|| -> PyResult<RunResult> {
        let (ok, a, b): (bool, Bound<'_, PyAny>, Bound<'_, PyAny>) = out.extract()?;
        if ok {
            let reply = Bytes::copy_from_slice(a.cast::<PyBytes>()?.as_bytes());
            let state = if b.is_none() { None } else { Some(Bytes::copy_from_slice(b.cast::<PyBytes>()?.as_bytes())) };
            Ok(RunResult::Reply { reply, state })
        } else {
            let code: String = a.extract()?;
            let message = b.cast::<PyString>()?.to_string_lossy().into_owned();
            Ok(error(ErrorCode::parse(&code).unwrap_or(ErrorCode::PipelineError), message))
        }
    })();
    parsed.unwrap_or_else(|e| error(ErrorCode::PipelineError, format!("the slot runner returned a bad result: {e}")))
}

impl Backend for ThreadBackend {
    fn commits_inline(&self) -> bool {
        self.inline
    }

    fn run(
        &mut self,
        batch: &mut Vec<Begun>,
        _more: &mut More<'_>,
        done: &mut dyn FnMut(&mut Begun, RunResult),
        _commit_now: &mut CommitNow<'_>,
    ) -> Result<(), SlotDied> {
        let started = std::time::Instant::now();
        Python::attach(|py| {
            let runner = self.runner.bind(py);
            for b in batch.iter_mut() {
                if started.elapsed() > BATCH_TIME_LIMIT {
                    break; // the rest run in the next batch (or on another slot)
                }
                if b.job.exec.status().is_final() {
                    continue; // answered while it waited in this batch (its deadline passed)
                }
                b.start_run();
                let result = run_one(py, runner, b);
                done(b, result);
            }
        });
        Ok(())
    }
}
