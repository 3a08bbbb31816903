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
    /// Standard Webhooks (standardwebhooks.com): `webhook-signature: v1,base64(hmac(ID + "." + TS +
    /// "." + body)) [v1,...]` with `webhook-id` and `webhook-timestamp`. The secret is the raw key
    /// (the bytes behind a `whsec_` base64 secret).
    Standard { tolerance: Duration },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureSpec {
    pub secret: Vec<u8>,
    pub scheme: SignatureScheme,
}

/// Where a webhook's event type is found (`events_from=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventTypeSource {
    /// A request header (its lower-case name), e.g. GitHub's `x-github-event`.
    Header(String),
    /// A string at a dotted path into the JSON object body: `["type"]`, `["event", "type"]`.
    Field(Vec<String>),
}

impl EventTypeSource {
    /// `"header:X-Event-Type"` or `"field:type"` / `"field:event.type"` (a dotted path).
    pub fn parse(rule: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "events_from must be \"header:<name>\" or \"field:<path>\" (e.g. \"header:X-Event-Type\", \
                 \"field:event.type\"), got {rule:?}"
            )
        };
        let (kind, rest) = rule.split_once(':').ok_or_else(bad)?;
        let rest = rest.trim();
        match kind.trim() {
            "header" if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic() && b != b':') => {
                Ok(EventTypeSource::Header(rest.to_ascii_lowercase()))
            }
            "field" if !rest.is_empty() && rest.split('.').all(|p| !p.is_empty()) => {
                Ok(EventTypeSource::Field(rest.split('.').map(String::from).collect()))
            }
            _ => Err(bad()),
        }
    }
}

/// Only events of these types run (`events=`); the others are answered `200 {"ignored": true}`
/// before admission, and so is an event whose type is not found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    pub types: Vec<String>,
    /// Where the type is found, tried in order; the first one present wins.
    pub from: Vec<EventTypeSource>,
}

impl EventFilter {
    /// Where a provider puts its event type, by signature scheme: GitHub's `X-GitHub-Event`
    /// header; the `type` field of Stripe and Standard Webhooks bodies; Slack's `event.type`, then
    /// the top-level `type` (`url_verification`). `None` for other schemes (`events_from=` needed).
    pub fn provider_sources(scheme: &SignatureScheme) -> Option<Vec<EventTypeSource>> {
        let field = |path: &[&str]| EventTypeSource::Field(path.iter().map(|p| p.to_string()).collect());
        match scheme {
            SignatureScheme::Hex { header, .. } if header.eq_ignore_ascii_case("x-hub-signature-256") => {
                Some(vec![EventTypeSource::Header("x-github-event".into())])
            }
            SignatureScheme::Hex { .. } => None,
            SignatureScheme::Stripe { .. } | SignatureScheme::Standard { .. } => Some(vec![field(&["type"])]),
            SignatureScheme::Slack { .. } => Some(vec![field(&["event", "type"]), field(&["type"])]),
        }
    }

    /// Whether the type is read from the body (so the ingress builds the document).
    pub fn reads_body(&self) -> bool {
        self.from.iter().any(|s| matches!(s, EventTypeSource::Field(_)))
    }
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

/// Where a webhook's delivery id (what deduplication compares) comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DedupeSpec {
    /// The first of `Idempotency-Key`, `webhook-id` (Standard Webhooks), `X-GitHub-Delivery`.
    #[default]
    Headers,
    /// A top-level field of the JSON body (Stripe's `id`, Slack's `event_id`).
    Field(String),
    /// Computed by a callable in the host language ([`KeyFn::delivery_id`](crate::KeyFn)).
    Callable,
    /// No deduplication.
    Off,
}

/// The headers a delivery id is read from by default, in this order.
pub const DELIVERY_HEADERS: [&str; 3] = ["idempotency-key", "webhook-id", "x-github-delivery"];

/// What a keyed pipeline does with an event whose key field is missing or null.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingKey {
    /// Run it without a key (no per-key order, scratch state), as an unkeyed pipeline would.
    #[default]
    Unkeyed,
    /// Refuse it with `400 bad_request` naming the field.
    Reject,
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub name: String,
    pub key: KeySpec,
    /// Events of a `KeySpec::Field` pipeline without that field (or with `null` there).
    pub missing_key: MissingKey,
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
    /// Largest committed state of one key (the app's `max_state_bytes`, copied here by the engine).
    pub max_state_bytes: usize,
    /// Recycle a worker process after about this many executions (+ up to 10% jitter).
    pub max_executions: Option<u64>,
    /// Recycle a worker process whose resident memory exceeds this, checked between batches.
    pub max_memory_mb: Option<u64>,
    pub signature: Option<SignatureSpec>,
    /// Answer every webhook `202` at once (as if it carried `Prefer: respond-async`).
    pub reply_async: bool,
    /// Where delivery ids come from; a repeat within `dedupe_window` is answered, not run.
    pub dedupe: DedupeSpec,
    pub dedupe_window: Duration,
    /// Further attempts of a failed async execution (exception or slot crash).
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// `events=`: only these event types run; `None` runs every event.
    pub events: Option<EventFilter>,
}

impl PipelineConfig {
    pub fn new(name: impl Into<String>) -> Self {
        PipelineConfig {
            name: name.into(),
            key: KeySpec::None,
            missing_key: MissingKey::Unkeyed,
            min_slots: 1,
            max_slots: 1,
            timeout: Some(Duration::from_secs(30)),
            max_body_bytes: 1 << 20,
            ring_capacity: 4096,
            max_batch: 64,
            isolation: Isolation::Thread,
            concurrency: 1,
            max_state_bytes: 1 << 20,
            max_executions: None,
            max_memory_mb: None,
            signature: None,
            reply_async: false,
            dedupe: DedupeSpec::Headers,
            dedupe_window: Duration::from_secs(24 * 3600),
            retries: 0,
            retry_backoff: Duration::from_secs(1),
            events: None,
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
    /// How long an idle slot spins for the next event before parking.
    pub idle_spin: Duration,
    /// Bearer token that `/metrics`, `/executions/*` and every other admin route require
    /// (`Authorization: Bearer <token>`); `None` leaves them open. Webhooks and `/healthz` stay open.
    pub admin_token: Option<String>,
    /// Largest request head (request line and headers) answered normally; above it `431`.
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers, and how long a keep-alive connection may
    /// sit idle between requests.
    pub header_timeout: Duration,
    /// Time a client has to send a request body once its headers arrived; after it `408`.
    pub body_timeout: Duration,
    /// Bytes the execution records may hold (replies and error messages included); the oldest
    /// records are evicted first, like `max_records`.
    pub max_record_bytes: usize,
    /// Keys the in-memory state store keeps per pipeline; past it the least recently used key is
    /// evicted (its state is forgotten).
    pub max_keys: usize,
    /// Largest committed state of one key, in bytes (see `state::check_size`).
    pub max_state_bytes: usize,
    /// How long a durable store keeps finished execution records (and so deduplicates).
    pub records_ttl: Duration,
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
            idle_spin: Duration::from_micros(50),
            admin_token: None,
            max_header_bytes: 64 << 10,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_record_bytes: 64 << 20,
            max_keys: 100_000,
            max_state_bytes: 1 << 20,
            records_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_rules() {
        assert_eq!(EventTypeSource::parse("header:X-Event-Type"), Ok(EventTypeSource::Header("x-event-type".into())));
        assert_eq!(EventTypeSource::parse("field:type"), Ok(EventTypeSource::Field(vec!["type".into()])));
        assert_eq!(
            EventTypeSource::parse("field:event.type"),
            Ok(EventTypeSource::Field(vec!["event".into(), "type".into()]))
        );
        for bad in ["", "type", "header:", "field:", "field:a..b", "field:.a", "body:type", "header:a b"] {
            assert!(EventTypeSource::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn provider_sources_by_scheme() {
        let github = SignatureScheme::Hex { header: "x-hub-signature-256".into(), prefix: "sha256=".into() };
        assert_eq!(
            EventFilter::provider_sources(&github),
            Some(vec![EventTypeSource::Header("x-github-event".into())])
        );
        let other = SignatureScheme::Hex { header: "x-signature".into(), prefix: String::new() };
        assert_eq!(EventFilter::provider_sources(&other), None);
        let stripe = EventFilter::provider_sources(&SignatureScheme::Stripe { tolerance: Duration::ZERO });
        assert_eq!(stripe, Some(vec![EventTypeSource::Field(vec!["type".into()])]));
        let slack = EventFilter::provider_sources(&SignatureScheme::Slack { tolerance: Duration::ZERO }).unwrap();
        assert_eq!(slack.len(), 2);
    }
}
