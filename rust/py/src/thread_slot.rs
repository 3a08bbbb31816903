//! The thread backends: slots whose pipeline instance lives in this interpreter. The Rust slot
//! loop runs on the slot's Python thread with the GIL released. For a sync pipeline
//! ([`ThreadBackend`]) it attaches once per batch, calls the Python runner per event, and detaches
//! before committing; for an async one ([`AsyncThreadBackend`]) it hands the batch's events to the
//! pipeline's event loop as tasks and commits each result as it comes back.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyList, PyString, PyTuple};
use warmslot_core::{Backend, Begun, Bytes, CommitNow, ErrorCode, More, Pipeline, RunResult, SlotDied};

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

/// The runner's arguments for one event: `(execution_id, key, event, state, headers,
/// received_at, remaining)`.
fn event_args<'py>(py: Python<'py>, b: &Begun) -> Result<Bound<'py, PyTuple>, RunResult> {
    let job = &b.job;
    let exec = &job.exec;
    // NOTE: the stored state goes to Python as bytes and is decoded there with orjson (the
    // encoder that wrote it), about 3x faster than serde_json + object building for a typical
    // conversation state. The body is parsed here, straight into Python objects, by the parser the
    // ingress checked it with (see `http::body`): it cannot fail here but for want of memory.
    let event = match loads(py, &job.body) {
        Ok(event) => event,
        Err(e) => return Err(error(ErrorCode::PipelineError, format!("cannot decode the event: {e}"))),
    };
    let args = (|| -> PyResult<Bound<'_, PyTuple>> {
        let state = b.state.as_ref().map(|s| PyBytes::new(py, s));
        let headers = Bound::new(py, LazyHeaders(RawHeaders::Map(job.headers.clone())))?;
        (exec.id_str.as_ref(), exec.key.as_deref(), event, state, headers, exec.received_unix, job.remaining())
            .into_pyobject(py)
    })();
    args.map_err(|e| error(ErrorCode::PipelineError, format!("internal error while running the pipeline: {e}")))
}

/// The runner's result: `(True, reply_bytes, state_bytes_or_None)` or `(False, code, message)`.
fn parse_result(out: &Bound<'_, PyAny>) -> RunResult {
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

fn run_one(py: Python<'_>, runner: &Bound<'_, PyAny>, b: &Begun) -> RunResult {
    let args = match event_args(py, b) {
        Ok(args) => args,
        Err(result) => return result,
    };
    match runner.call1(args) {
        Ok(out) => parse_result(&out),
        Err(e) => error(ErrorCode::PipelineError, format!("internal error while running the pipeline: {e}")),
    }
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

// -- async pipelines ----------------------------------------------------------------------------

/// Results that the pipeline's event loop (another thread) hands back to one async slot.
#[derive(Default)]
struct InboxState {
    results: Vec<(u64, RunResult)>,
    /// Set when the event loop stopped: no more results will come.
    stopped: Option<String>,
}

#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    ready: Condvar,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, token: u64, result: RunResult) {
        self.lock().results.push((token, result));
        self.ready.notify_one();
    }

    fn stop(&self, message: String) {
        self.lock().stopped.get_or_insert(message);
        self.ready.notify_one();
    }

    /// Waits up to `timeout` for results (the caller has detached from the interpreter).
    fn wait(&self, timeout: Duration) -> (Vec<(u64, RunResult)>, Option<String>) {
        let mut state = self.lock();
        if state.results.is_empty() && state.stopped.is_none() {
            state = self
                .ready
                .wait_timeout_while(state, timeout, |s| s.results.is_empty() && s.stopped.is_none())
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        (std::mem::take(&mut state.results), state.stopped.clone())
    }
}

/// While an async slot has room, it looks for newly runnable events this often (between results).
// NOTE: as the process backend's `TOP_UP_POLL`: an event that arrives while every slot is busy but
// one has room waits at most this long for it. The poll takes neither the interpreter lock nor a
// store call unless there is something to take.
const TOP_UP_POLL: Duration = Duration::from_millis(2);
/// Without room (or without work to take), a slot still looks this often whether what it runs was
/// answered meanwhile (shutdown) and whether it was asked to stop.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// A coroutine still running this long after its deadline (it ignored its cancellation) is
/// abandoned: cancelled again, no longer waited for, its lane released.
const HANG_GRACE: Duration = Duration::from_secs(1);

/// The backend of an async pipeline's thread slot. The slot loop runs on the slot's own thread;
/// the pipeline's coroutines run as tasks on the pipeline's event loop, which one Python thread
/// runs for all its slots (`warmslot.slots`). Up to `concurrency` events of the slot run at once:
/// the slot loop takes batches of at most that many, and the backend tops itself up with `More`
/// as events finish, so a slow event never keeps the slot from taking new work.
///
/// The slot thread holds the interpreter lock only to hand events over (`submit`) and to cancel
/// them; it waits for results, takes new events, and commits (each result as it arrives: async
/// results come one by one) without it.
pub struct AsyncThreadBackend {
    /// The slot's Python side (`warmslot.slots.AsyncSlot`): `submit([(token, args), ...])` starts
    /// each event as a task (`EventRunner.run_async(*args)`) on the pipeline's event loop,
    /// `cancel([token, ...])` cancels tasks; each result comes back through the callable handed to
    /// `bind(report)` once: `report(token, result)`, or `report(None, message)` when the event
    /// loop stops.
    slot: Py<PyAny>,
    pipeline: Arc<Pipeline>,
    inbox: Arc<Inbox>,
    next_token: u64,
    /// What ended the slot on the Python side (an exception from `submit` or `cancel`, be it a
    /// `KeyboardInterrupt`): `Core.run_thread_slot` raises it again once the slot loop stopped.
    pub failure: Option<PyErr>,
}

impl AsyncThreadBackend {
    pub fn new(py: Python<'_>, slot: Py<PyAny>, pipeline: Arc<Pipeline>) -> PyResult<Self> {
        let inbox = Arc::new(Inbox::default());
        let sink = inbox.clone();
        // Called on the event loop's thread (with the GIL) as each task finishes.
        let report = PyCFunction::new_closure(
            py,
            Some(c"report"),
            Some(c"report(token, result): an event's result; report(None, message): the loop stopped"),
            move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let (token, result): (Option<u64>, Bound<'_, PyAny>) = args.extract()?;
                match token {
                    Some(token) => sink.put(token, parse_result(&result)),
                    None => sink.stop(result.str()?.to_string_lossy().into_owned()),
                }
                Ok(())
            },
        )?;
        slot.bind(py).call_method1(intern!(py, "bind"), (report,))?;
        Ok(AsyncThreadBackend { slot, pipeline, inbox, next_token: 0, failure: None })
    }

    /// Takes new events while the pool keeps this slot and the server runs.
    fn tops_up(&self) -> bool {
        !self.pipeline.is_closed() && self.pipeline.slots.retire_pending() == 0
    }

    /// Hands the batch's events that have no token yet to the event loop; returns how many.
    fn submit(
        &mut self,
        batch: &mut [Begun],
        tokens: &mut [u64],
        done: &mut dyn FnMut(&mut Begun, RunResult),
    ) -> PyResult<usize> {
        let new: Vec<usize> = (0..batch.len())
            .filter(|&i| tokens[i] == 0 && !batch[i].has_result() && !batch[i].job.exec.status().is_final())
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        let mut failed = Vec::new();
        let n = Python::attach(|py| -> PyResult<usize> {
            let items = PyList::empty(py);
            for &i in &new {
                let b = &mut batch[i];
                b.start_run();
                match event_args(py, b) {
                    Ok(args) => {
                        self.next_token += 1;
                        tokens[i] = self.next_token;
                        items.append((self.next_token, args))?;
                    }
                    Err(result) => failed.push((i, result)),
                }
            }
            if !items.is_empty() {
                self.slot.bind(py).call_method1(intern!(py, "submit"), (&items,))?;
            }
            Ok(items.len())
        });
        for (i, result) in failed {
            done(&mut batch[i], result);
        }
        n
    }

    fn cancel(&self, tokens: Vec<u64>) -> PyResult<()> {
        Python::attach(|py| self.slot.bind(py).call_method1(intern!(py, "cancel"), (tokens,)).map(drop))
    }

    /// The slot cannot go on (its Python side failed, or the event loop stopped): what it runs
    /// fails with `slot_crashed` (retried where the pipeline retries), the rest goes back to the
    /// lanes.
    fn die(
        &mut self,
        batch: &mut [Begun],
        tokens: &[u64],
        done: &mut dyn FnMut(&mut Begun, RunResult),
        message: String,
    ) -> SlotDied {
        let mut running = Vec::new();
        for (b, &token) in batch.iter_mut().zip(tokens) {
            if token != 0 && !b.has_result() {
                running.push(token);
                done(b, error(ErrorCode::SlotCrashed, message.clone()));
            }
        }
        if !running.is_empty() && self.failure.is_some() {
            let _ = self.cancel(running); // best effort: the loop may still run them
        }
        SlotDied { reason: "exit", message, started: 0 }
    }

    fn failed(&mut self, e: PyErr) -> String {
        let message = format!("the async slot of pipeline {:?} failed: {e}", self.pipeline.config.name);
        self.failure.get_or_insert(e);
        message
    }
}

impl Backend for AsyncThreadBackend {
    fn commits_inline(&self) -> bool {
        // Results arrive one by one, whenever their coroutines end: each commits at once (without
        // the GIL, on this thread), never held behind a slower event of the batch.
        true
    }

    fn batch_limit(&self) -> usize {
        self.pipeline.config.concurrency.max(1)
    }

    fn run(
        &mut self,
        batch: &mut Vec<Begun>,
        more: &mut More<'_>,
        done: &mut dyn FnMut(&mut Begun, RunResult),
        _commit_now: &mut CommitNow<'_>,
    ) -> Result<(), SlotDied> {
        let concurrency = self.batch_limit();
        // The token of each event of `batch` handed to the event loop (0: not handed over).
        let mut tokens = vec![0u64; batch.len()];
        let mut running = 0usize;
        loop {
            match self.submit(batch, &mut tokens, done) {
                Ok(n) => running += n,
                Err(e) => {
                    let message = self.failed(e);
                    return Err(self.die(batch, &tokens, done, message));
                }
            }
            if running < concurrency && self.tops_up() {
                let mut extra = more(concurrency - running);
                if !extra.is_empty() {
                    batch.append(&mut extra);
                    tokens.resize(batch.len(), 0);
                    match self.submit(batch, &mut tokens, done) {
                        Ok(n) => running += n,
                        Err(e) => {
                            let message = self.failed(e);
                            return Err(self.die(batch, &tokens, done, message));
                        }
                    }
                }
            }
            if running == 0 {
                return Ok(());
            }
            let now = Instant::now();
            let mut wait = if running < concurrency && self.tops_up() { TOP_UP_POLL } else { IDLE_POLL };
            let hang_at = batch
                .iter()
                .zip(&tokens)
                .filter(|(b, &t)| t != 0 && !b.has_result())
                .filter_map(|(b, _)| b.job.exec.deadline)
                .min()
                .map(|d| d + HANG_GRACE);
            if let Some(t) = hang_at {
                // At least a millisecond: a hang already due is handled below, not spun on.
                wait = wait.min(t.saturating_duration_since(now).max(Duration::from_millis(1)));
            }
            let (results, stopped) = self.inbox.wait(wait);
            for (token, result) in results {
                // A token of an earlier batch, or of an abandoned event: nothing waits for it.
                if let Some(i) = tokens.iter().position(|&t| t == token) {
                    if !batch[i].has_result() {
                        done(&mut batch[i], result);
                        running -= 1;
                    }
                }
            }
            if let Some(message) = stopped {
                return Err(self.die(batch, &tokens, done, message));
            }
            // A coroutine whose execution was already answered (its deadline passed, or the
            // server stopped after its drain) and that is still running at shutdown or well past
            // its deadline: stop waiting for it (its result could not be used), cancel it.
            let closed = self.pipeline.is_closed();
            let now = Instant::now();
            let mut abandon = Vec::new();
            for (b, &token) in batch.iter_mut().zip(&tokens) {
                if token == 0 || b.has_result() {
                    continue;
                }
                let overdue = b.job.exec.deadline.is_some_and(|d| now >= d + HANG_GRACE);
                if overdue && !b.job.exec.status().is_final() {
                    // The I/O runtime has not timed it out yet (its timer is late, or it is gone).
                    b.job.exec.time_out();
                }
                if !b.job.exec.status().is_final() {
                    continue;
                }
                if closed || overdue {
                    abandon.push(token);
                    running -= 1;
                    // Claims nothing (the execution has its outcome); releases the event's lane.
                    done(b, error(ErrorCode::PipelineTimeout, "abandoned after its execution was answered".into()));
                }
            }
            if !abandon.is_empty() {
                if let Err(e) = self.cancel(abandon) {
                    let message = self.failed(e);
                    return Err(self.die(batch, &tokens, done, message));
                }
            }
            // Drop what ended, so that a slot that keeps topping up holds only what runs.
            let mut i = 0;
            while i < batch.len() {
                if batch[i].has_result() || (tokens[i] == 0 && batch[i].job.exec.status().is_final()) {
                    batch.swap_remove(i);
                    tokens.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
    }

    fn cpu_clock_us(&mut self) -> Option<u64> {
        None // the coroutines run on the event loop's thread, shared by the pipeline's slots
    }
}
