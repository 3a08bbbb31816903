//! Rust `log` records to Python `logging` (through pyo3-log), delivered by one forwarding thread.
//!
//! Logger names: the core's targets `warmslot_core::a::b` become `warmslot.core.a.b`, the
//! bindings' (`_core::...`) `warmslot.core...`; a target already under `warmslot` (an explicit
//! `target: "warmslot.x"`) stays as it is, and any other crate's goes under `warmslot.core.`. So
//! configuring the `warmslot` logger (or `warmslot.core`) governs the Rust messages too.
//!
//! Key-values (`log::warn!(pipeline = name, execution_id = id; "...")`) arrive as attributes of
//! the Python `LogRecord` (`record.pipeline`, as text), as `extra=` does on the Python side; a
//! `None` (an `Option` value) is left out.
//!
//! Levels: pyo3-log caches each logger's effective level at its first message, so a level set
//! later would not apply; `refresh()` (`warmslot._core.refresh_logging()`) drops that cache: the
//! CLI's `logs.configure()` and every server start call it.

// A message that passes the cached, lock-free level check is queued; one forwarder thread attaches
// once per burst to hand the queue to Python. An atexit callback drains it and stops the forwarder;
// later messages go to stderr, so no thread attaches to a finalizing interpreter.
// NOTE: attaching on the logging thread would make an I/O thread wait up to a switch interval (5 ms)
// for the GIL, and deadlock one that logs while the GIL's holder joins it (code-notes.md).

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::kv::{Error as KvError, Key, Value, VisitSource, VisitValue};
use log::{Level, LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};
use pyo3_log::{Caching, Logger, ResetHandle};

/// Messages queued for Python at most; more are counted, and the count is logged.
const QUEUE: usize = 1024;
/// Messages handed to Python in one attach at most (then the GIL is let go).
const BURST: usize = 64;

struct Bridge {
    sink: Logger,
    reset: ResetHandle,
    /// The forwarder's queue and the pid that started it (a forked child starts its own).
    queue: Mutex<Option<(u32, SyncSender<Msg>)>>,
    /// Set at exit: messages go to stderr, no thread attaches to the interpreter any more.
    closed: AtomicBool,
    dropped: AtomicU64,
}

static BRIDGE: OnceLock<Bridge> = OnceLock::new();
static FORWARD: Forward = Forward;

/// A record that left its thread: what pyo3-log needs to rebuild it.
struct Owned {
    level: Level,
    target: String,
    message: String,
    file: Option<&'static str>,
    line: Option<u32>,
    kvs: Vec<(String, String)>,
}

enum Msg {
    Record(Owned),
    Stop(SyncSender<()>),
}

/// The target pyo3-log sees (it turns `::` into `.` for the Python logger's name).
fn python_name(target: &str) -> Cow<'_, str> {
    for own in ["warmslot_core", "_core"] {
        if let Some(rest) = target.strip_prefix(own) {
            if rest.is_empty() || rest.starts_with("::") {
                return format!("warmslot::core{rest}").into();
            }
        }
    }
    if target == "warmslot" || target.starts_with("warmslot::") || target.starts_with("warmslot.") {
        return target.into();
    }
    format!("warmslot::core::{target}").into()
}

struct IsNull(bool);

impl<'v> VisitValue<'v> for IsNull {
    fn visit_any(&mut self, _: Value<'_>) -> Result<(), KvError> {
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), KvError> {
        self.0 = true;
        Ok(())
    }
}

struct Collect(Vec<(String, String)>);

impl<'kvs> VisitSource<'kvs> for Collect {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        let mut null = IsNull(false);
        let _ = value.visit(&mut null);
        if !null.0 {
            self.0.push((key.as_str().to_owned(), value.to_string()));
        }
        Ok(())
    }
}

impl Owned {
    /// `LEVEL LOGGER: MESSAGE`, with Python's level names.
    fn to_stderr(&self) {
        let level = match self.level {
            Level::Error => "ERROR",
            Level::Warn => "WARNING",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let _ = writeln!(std::io::stderr(), "{level} {}: {}", self.target.replace("::", "."), self.message);
    }
}

struct Forward;

impl Log for Forward {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        BRIDGE.get().is_some_and(|b| b.enabled(m.level(), &python_name(m.target())))
    }

    fn log(&self, record: &Record<'_>) {
        let Some(b) = BRIDGE.get() else { return };
        let target = python_name(record.target());
        if !b.enabled(record.level(), &target) {
            return;
        }
        let mut kvs = Collect(Vec::new());
        let _ = record.key_values().visit(&mut kvs);
        b.send(Owned {
            level: record.level(),
            target: target.into_owned(),
            message: record.args().to_string(),
            file: record.file_static(),
            line: record.line(),
            kvs: kvs.0,
        });
    }

    fn flush(&self) {}
}

impl Bridge {
    /// pyo3-log's verdict: its level filter and, once the logger has been used, the cached
    /// Python level (no GIL).
    fn enabled(&self, level: Level, target: &str) -> bool {
        self.sink.enabled(&Metadata::builder().level(level).target(target).build())
    }

    fn send(&self, msg: Owned) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return msg.to_stderr();
        }
        let pid = std::process::id();
        if !matches!(&*queue, Some((p, _)) if *p == pid) {
            *queue = spawn_forwarder().map(|tx| (pid, tx));
        }
        let Some((_, tx)) = &*queue else { return msg.to_stderr() };
        match tx.try_send(Msg::Record(msg)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(m)) => {
                *queue = None; // the forwarder is gone (it panicked): the next message starts one
                if let Msg::Record(m) = m {
                    m.to_stderr();
                }
            }
        }
    }

    /// Hands one record to pyo3-log (which attaches again: a no-op, this thread is attached).
    fn deliver(&self, py: Python<'_>, r: &Owned) {
        let kvs: Vec<(&str, &str)> = r.kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let kvs: &[(&str, &str)] = &kvs;
        self.sink.log(
            &Record::builder()
                .args(format_args!("{}", r.message))
                .level(r.level)
                .target(&r.target)
                .file_static(r.file)
                .line(r.line)
                .key_values(&kvs)
                .build(),
        );
        // pyo3-log leaves what logging raised (e.g. a key-value named like a LogRecord attribute).
        if let Some(e) = PyErr::take(py) {
            let _ = writeln!(std::io::stderr(), "warmslot: a Rust log message could not be logged: {e}");
            r.to_stderr();
        }
    }

    fn report_dropped(&self, py: Python<'_>) {
        let n = self.dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            let message = format!("{n} log messages were dropped: {QUEUE} were waiting for Python already");
            let r = Owned {
                level: Level::Warn,
                target: "warmslot::core".into(),
                message,
                file: None,
                line: None,
                kvs: vec![],
            };
            self.deliver(py, &r);
        }
    }
}

fn spawn_forwarder() -> Option<SyncSender<Msg>> {
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new().name("warmslot-log".into()).spawn(move || forward(rx)).ok()?;
    Some(tx)
}

fn forward(rx: Receiver<Msg>) {
    let Some(b) = BRIDGE.get() else { return };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut stop = None;
        let attached = Python::try_attach(|py| {
            for _ in 0..BURST {
                match next.take() {
                    Some(Msg::Record(r)) => b.deliver(py, &r),
                    Some(Msg::Stop(done)) => {
                        stop = Some(done);
                        break;
                    }
                    None => break,
                }
                next = rx.try_recv().ok();
            }
            b.report_dropped(py);
        });
        if attached.is_none() {
            // No interpreter to hand it to (not initialized, or finalizing).
            match next.take() {
                Some(Msg::Record(r)) => r.to_stderr(),
                Some(Msg::Stop(done)) => stop = Some(done),
                None => {}
            }
        }
        if let Some(done) = stop {
            let _ = done.send(());
            return;
        }
        // A record taken but not delivered (the burst ended) goes first next time.
        if let Some(Msg::Record(r)) = next {
            Python::try_attach(|py| b.deliver(py, &r)).unwrap_or_else(|| r.to_stderr());
        }
    }
}

/// At exit (Python's atexit, before finalization): hands what is queued to Python, stops the
/// forwarder; later messages go to stderr.
fn close(py: Python<'_>) {
    let Some(b) = BRIDGE.get() else { return };
    let queue = {
        let mut q = b.queue.lock().unwrap_or_else(|e| e.into_inner());
        b.closed.store(true, Ordering::Release);
        q.take()
    };
    let Some((pid, tx)) = queue else { return };
    if pid != std::process::id() {
        return;
    }
    py.detach(move || {
        let deadline = Instant::now() + Duration::from_secs(2);
        let (done_tx, done_rx) = sync_channel(1);
        let mut msg = Msg::Stop(done_tx);
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    });
}

/// Drops the cached levels of the Python loggers that Rust messages go to.
pub(crate) fn refresh() {
    if let Some(b) = BRIDGE.get() {
        b.reset.reset();
    }
}

/// Re-reads the levels of the Python loggers that Rust messages go to: pyo3-log caches a
/// logger's level at its first message. Call it after changing `warmslot` logger levels while a
/// server runs (`warmslot.logs.configure()` and every server start call it).
#[pyfunction]
fn refresh_logging() {
    refresh();
}

/// Installs the bridge (once per process) and `refresh_logging` in module `m`.
pub(crate) fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(refresh_logging, m)?)?;
    let sink = Logger::new(py, Caching::LoggersAndLevels)?.filter(LevelFilter::Debug);
    let reset = sink.reset_handle();
    let bridge =
        Bridge { sink, reset, queue: Mutex::new(None), closed: AtomicBool::new(false), dropped: AtomicU64::new(0) };
    if BRIDGE.set(bridge).is_err() || log::set_logger(&FORWARD).is_err() {
        return Ok(());
    }
    log::set_max_level(LevelFilter::Debug);
    let on_exit = PyCFunction::new_closure(
        py,
        Some(c"_close_log_bridge"),
        None,
        |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| close(args.py()),
    )?;
    py.import("atexit")?.call_method1("register", (on_exit,))?;
    Ok(())
}
