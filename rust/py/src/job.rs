//! `Job`: one event handed to an async slot (an event-loop task). The slot calls `begin()` (in a
//! thread for stores that do I/O), runs the pipeline, then exactly one of `succeed()`, `fail()` or
//! `time_out()`. A job dropped without them fails its execution.

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use warmslot_core::{BeginError, Bytes, ErrorCode, Job};

#[pyclass(name = "Job", module = "warmslot._core")]
pub struct PyJob {
    job: Option<Job>,
    state: Option<Bytes>,
    id: String,
}

impl PyJob {
    pub fn new(job: Job, state: Option<Bytes>) -> Self {
        let id = job.exec.id_str.to_string();
        PyJob { job: Some(job), state, id }
    }

    fn job_mut(&mut self) -> PyResult<&mut Job> {
        self.job.as_mut().ok_or_else(|| PyRuntimeError::new_err("this job is already finished"))
    }

    fn job(&self) -> PyResult<&Job> {
        self.job.as_ref().ok_or_else(|| PyRuntimeError::new_err("this job is already finished"))
    }
}

/// Whether the job's state store does I/O (SQLite, Redis): then its calls run without the GIL so
/// other slots go on.
// NOTE: the in-memory store answers in well under a microsecond, less than a detach and re-attach
// costs, so it keeps the GIL.
fn store_does_io(job: &Job) -> bool {
    job.exec.pipeline.store.does_io()
}

/// Ends `job` with `f` and drops it (which releases a Redis lease it holds) without the GIL when
/// its store does I/O.
fn finish_without_gil<T: Send>(py: Python<'_>, mut job: Job, f: impl FnOnce(&mut Job) -> T + Send) -> T {
    if store_does_io(&job) {
        py.detach(move || f(&mut job))
    } else {
        f(&mut job)
    }
}

impl Drop for PyJob {
    fn drop(&mut self) {
        // A job the slot never finished (garbage-collected): dropping it answers its execution and
        // may release a Redis lease. The GIL may be held here, so store I/O goes to a thread.
        if let Some(job) = self.job.take() {
            if store_does_io(&job) {
                std::thread::spawn(move || drop(job));
            }
        }
    }
}

#[pymethods]
impl PyJob {
    #[getter]
    fn execution_id(&self) -> &str {
        &self.id
    }

    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.job()?.body))
    }

    #[getter]
    fn key(&self) -> PyResult<Option<String>> {
        Ok(self.job()?.exec.key.as_deref().map(str::to_string))
    }

    /// The event: the body, parsed by the parser the ingress checked it with (again at every
    /// access: read it once).
    #[getter]
    fn event<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::value::loads(py, &self.job()?.body)
    }

    /// The key's committed state, decoded (None when the key has none yet). Raises ValueError
    /// when the stored state cannot be decoded.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.state.as_ref().map(|s| crate::value::loads(py, s)).transpose()
    }

    #[getter]
    fn received_at(&self) -> PyResult<f64> {
        Ok(self.job()?.exec.received_unix)
    }

    /// Seconds left before the deadline (negative when past), or None without a timeout.
    fn remaining(&self) -> PyResult<Option<f64>> {
        Ok(self.job()?.remaining())
    }

    /// The request headers, lower-cased names (a repeated header keeps its last value).
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::thread_slot::headers_dict(py, &self.job()?.headers)
    }

    /// Marks the execution running and returns the key's committed state (JSON bytes) or None.
    /// Raises TimeoutError when the deadline passed while it waited, RuntimeError when the state
    /// could not be loaded or the server stopped first (then skip the run: it is answered).
    fn begin<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let job = self.job_mut()?;
        let result = if store_does_io(job) { py.detach(|| job.begin()) } else { job.begin() };
        let err = match result {
            Ok(state) => {
                self.state = state;
                return Ok(self.state.as_ref().map(|s| PyBytes::new(py, s)));
            }
            Err(BeginError::TimedOut) => PyTimeoutError::new_err("the execution timed out before it started"),
            Err(BeginError::State(m)) => PyRuntimeError::new_err(m),
            Err(BeginError::Closed) => PyRuntimeError::new_err("the server is shutting down"),
        };
        if let Some(job) = self.job.take() {
            finish_without_gil(py, job, |_| ()); // dropping it may release a Redis lease
        }
        Err(err)
    }

    /// Commits `state` (ignored for unkeyed events) and sends `reply` (JSON bytes).
    /// Returns False when the deadline had already answered the request (nothing committed).
    #[pyo3(signature = (reply, state=None))]
    fn succeed(&mut self, py: Python<'_>, reply: &[u8], state: Option<&[u8]>) -> PyResult<bool> {
        let mut job = self.job.take().ok_or_else(|| PyRuntimeError::new_err("this job is already finished"))?;
        let (reply, state) = (Bytes::copy_from_slice(reply), state.map(Bytes::copy_from_slice));
        if store_does_io(&job) {
            Ok(py.detach(move || job.succeed(reply, state)))
        } else {
            Ok(job.succeed(reply, state))
        }
    }

    /// Fails the execution with an error code of the contract; commits nothing. The message is
    /// taken lossily (an exception text with lone surrogates must not fail the failure path).
    fn fail(&mut self, py: Python<'_>, code: &str, message: &Bound<'_, PyString>) -> PyResult<bool> {
        let job = self.job.take().ok_or_else(|| PyRuntimeError::new_err("this job is already finished"))?;
        let (code, message) = (ErrorCode::parse(code).unwrap_or(ErrorCode::PipelineError), message.to_string_lossy());
        let message = message.into_owned();
        Ok(finish_without_gil(py, job, move |job| job.fail(code, message)))
    }

    /// Times the execution out (an async run cancelled at its deadline).
    fn time_out(&mut self, py: Python<'_>) -> PyResult<bool> {
        let job = self.job.take().ok_or_else(|| PyRuntimeError::new_err("this job is already finished"))?;
        Ok(finish_without_gil(py, job, |job| job.time_out()))
    }

    #[getter]
    fn done(&self) -> bool {
        self.job.is_none()
    }
}
