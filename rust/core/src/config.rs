//! Declarative configuration handed over from Python: the app, its pipelines, their limits.

use std::time::Duration;

/// How the per-key ordering key of an event is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// No key: events are independent, may run in parallel, and carry no persisted state.
    None,
    /// A top-level field of the JSON object body (a string or a number).
    Field(String),
    /// Computed by a callable in the host language; the ingress asks the [`KeyFn`](crate::KeyFn).
    Callable,
}

/// Which signing scheme a pipeline's webhooks use. All are HMAC-SHA256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `header: <prefix><hex(hmac(body))>`, e.g. GitHub's `X-Hub-Signature-256: sha256=...`.
    Hex { header: String, prefix: String },
    /// Slack: `X-Slack-Signature: v0=hex(hmac("v0:" + ts + ":" + body))` with `X-Slack-Request-Timestamp`.
    Slack { tolerance: Duration },
    /// Stripe: `Stripe-Signature: t=TS,v1=hex(hmac(TS + "." + body))[,v1=...]`.
    Stripe { tolerance: Duration },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureSpec {
    pub secret: Vec<u8>,
    pub scheme: SignatureScheme,
}

/// How a worker process of a `process`-isolated pipeline is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: String,
    pub args: Vec<String>,
}

/// Where a pipeline's code runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Threads (or an event loop) in the server's own interpreter.
    Thread,
    /// Warm worker processes, one per slot, started with this command.
    Process(WorkerCommand),
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub name: String,
    pub key: KeySpec,
    /// Slots warmed before `/healthz` turns 200.
    pub min_slots: usize,
    /// Upper bound on slots; the pool may grow to this many.
    pub max_slots: usize,
    /// Deadline counted from receipt; `None` waits forever.
    pub timeout: Option<Duration>,
    pub max_body_bytes: usize,
    /// Events admitted and not yet running (`queue_size`); one more is refused with 429.
    pub ring_capacity: usize,
    /// Most events one slot takes in one hand-over.
    pub max_batch: usize,
    pub isolation: Isolation,
    /// Events one slot runs at once (async pipelines); lanes still keep per-key exclusion.
    pub concurrency: usize,
    /// Recycle a worker process after about this many executions (+ up to 10% jitter).
    pub max_executions: Option<u64>,
    /// Recycle a worker process whose resident memory exceeds this, checked between batches.
    pub max_memory_mb: Option<u64>,
    pub signature: Option<SignatureSpec>,
    /// Answer every webhook `202` at once (as if it carried `Prefer: respond-async`).
    pub reply_async: bool,
}

impl PipelineConfig {
    pub fn new(name: impl Into<String>) -> Self {
        PipelineConfig {
            name: name.into(),
            key: KeySpec::None,
            min_slots: 1,
            max_slots: 1,
            timeout: Some(Duration::from_secs(30)),
            max_body_bytes: 1 << 20,
            ring_capacity: 4096,
            max_batch: 64,
            isolation: Isolation::Thread,
            concurrency: 1,
            max_executions: None,
            max_memory_mb: None,
            signature: None,
            reply_async: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AppConfig {
    pub host: String,
    pub port: u16,
    pub pipelines: Vec<PipelineConfig>,
    /// Execution records kept for `GET /executions/<id>`; the oldest are evicted first.
    pub max_records: usize,
    /// Tokio worker threads; 1 runs a current-thread runtime on one dedicated thread.
    pub io_threads: usize,
    /// Most open connections; further accepts wait for a permit.
    pub max_connections: usize,
    /// Grace period for in-flight executions at shutdown.
    pub drain_timeout: Duration,
    /// How long an idle slot spins for the next event before parking.
    pub idle_spin: Duration,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            pipelines: Vec::new(),
            max_records: 100_000,
            io_threads: 1,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
            idle_spin: Duration::from_micros(50),
        }
    }
}
