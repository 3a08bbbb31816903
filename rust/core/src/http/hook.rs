//! `POST /hooks/<pipeline>`: a request becomes an [`Event`] (size, body deadline, signature, the
//! body check, key and delivery id), the runtime admits it, and the [`Admission`] becomes the
//! answer: `202`, the execution's outcome, a repeat's first answer, or the refusal.
//!
//! An oversized body gets `413` at once and is then read and dropped, never buffered, for up to
//! `LINGER` (nginx's lingering close), so that clients which write the whole body before reading
//! still read the `413` instead of a reset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, LOCATION};
use hyper::http::request::Parts;
use hyper::{Request, StatusCode};

use crate::config::{DedupeSpec, KeySpec, MissingKey, DELIVERY_HEADERS};
use crate::error::ErrorCode;
use crate::http::body::{self, EventError};
use crate::http::events;
use crate::http::responses::{error, json, json_str, reply, HttpResponse, EXECUTION_ID};
use crate::http::routes::closing;
use crate::http::signature;
use crate::runtime::{Admission, Engine, Event, Pipeline, Repeat};
use crate::state::ExecutionRecord;

/// How long the rest of an oversized body is read and dropped after the `413` (nginx's
/// `lingering_time` idea, shorter: enough for a client on a LAN to finish writing megabytes).
const LINGER: Duration = Duration::from_secs(5);

pub(crate) async fn hook(req: Request<Incoming>, pipeline: Arc<Pipeline>, engine: &Arc<Engine>) -> HttpResponse {
    let is_async = pipeline.config.reply_async || wants_async(&req);
    let event = match read_event(req, &pipeline, engine, is_async).await {
        Ok(Read::Event(event)) => event,
        Ok(Read::Ignored(event_type)) => {
            pipeline.metrics.ignored();
            return events::ignored_answer(event_type.as_deref());
        }
        Err(refusal) => return refusal.answer(&pipeline),
    };
    match engine.admit(&pipeline, event).await {
        Admission::Refused(code, message) => error(code, &message),
        Admission::Accepted(ticket) | Admission::Repeat(Repeat::Live(ticket)) if is_async => {
            accepted(&ticket.execution().id_str)
        }
        Admission::Accepted(ticket) | Admission::Repeat(Repeat::Live(ticket)) => {
            let exec = ticket.finished().await;
            match exec.outcome() {
                Some((outcome, _)) => reply(&exec, outcome),
                None => error(ErrorCode::StateError, "the execution ended without an outcome"),
            }
        }
        Admission::Repeat(Repeat::Stored(record)) => repeat_stored(&record, is_async),
        Admission::Repeat(Repeat::Remote(id)) if is_async => accepted(&id),
        Admission::Repeat(Repeat::Remote(id)) => match engine.remote_record(&pipeline, &id).await {
            Some(record) => repeat_stored(&record, false),
            None => {
                let message =
                    format!("execution {id} (the first delivery, run by another process) did not finish in time");
                with_execution_id(error(ErrorCode::PipelineTimeout, &message), &id)
            }
        },
    }
}

/// A request refused before admission.
struct Refusal {
    code: ErrorCode,
    message: String,
    /// The request was not read whole (or the client is too slow): close the connection.
    close: bool,
}

fn refuse(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message, close: false }
}

fn refuse_and_close(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message, close: true }
}

impl Refusal {
    /// The answer, counted in the pipeline's metrics.
    fn answer(self, pipeline: &Pipeline) -> HttpResponse {
        pipeline.metrics.refused(self.code);
        let resp = error(self.code, &self.message);
        if self.close {
            closing(resp)
        } else {
            resp
        }
    }
}

/// A request read and checked: an event to admit, or one `events=` ignores (with its type, if
/// it had one).
enum Read {
    Event(Event),
    Ignored(Option<String>),
}

/// Reads and checks the request: everything the HTTP layer decides before admission. The
/// signature and the body check come first, then `events=` (so no key function runs for an
/// ignored event), then the key and the delivery id.
async fn read_event(
    req: Request<Incoming>,
    pipeline: &Pipeline,
    engine: &Engine,
    is_async: bool,
) -> Result<Read, Refusal> {
    if !engine.is_accepting() {
        return Err(refuse(ErrorCode::ShuttingDown, "the server is shutting down".into()));
    }
    let (parts, body) = read_limited(req, pipeline, engine).await?;
    let received = Instant::now();
    let cfg = &pipeline.config;
    if let Some(spec) = &cfg.signature {
        if let Err(e) = signature::verify(spec, &parts.headers, &body) {
            return Err(refuse(ErrorCode::BadSignature, e.0));
        }
    }
    let (document, key) = check_body(pipeline, &body)?;
    if let Some(filter) = &cfg.events {
        if let Some(event_type) = events::ignored(filter, &parts.headers, &document) {
            return Ok(Read::Ignored(event_type));
        }
    }
    let (key, delivery) = key_and_delivery(pipeline, engine, &parts, &body, &document, key)?;
    Ok(Read::Event(Event { body, headers: parts.headers, key, delivery, received, reply_async: is_async }))
}

/// The body, read within `max_body_bytes` and `body_timeout` (`413`, `408`).
async fn read_limited(req: Request<Incoming>, pipeline: &Pipeline, engine: &Engine) -> Result<(Parts, Bytes), Refusal> {
    let limit = pipeline.config.max_body_bytes;
    let too_large = || {
        let message = format!("request body exceeds the {limit}-byte limit of pipeline {:?}", pipeline.name());
        refuse_and_close(ErrorCode::PayloadTooLarge, message)
    };
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    if declared.is_some_and(|len| len > limit as u64) {
        // With `Expect: 100-continue` the client has not sent the body yet and will not: answer
        // and close. Otherwise it may be writing the body before it reads: let it finish.
        let expects_continue = parts
            .headers
            .get(hyper::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !expects_continue {
            linger(body);
        }
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + engine.config.body_timeout;
    match read_body(body, limit, deadline).await {
        Ok(body) => Ok((parts, body)),
        Err(BodyError::TooLarge(rest)) => {
            linger(rest);
            Err(too_large())
        }
        Err(BodyError::TimedOut) => {
            let secs = engine.config.body_timeout.as_secs_f64();
            let message = format!("the request body did not arrive within {secs}s");
            Err(refuse_and_close(ErrorCode::RequestTimeout, message))
        }
        Err(BodyError::Read(e)) => Err(refuse(ErrorCode::BadRequest, format!("could not read the request body: {e}"))),
    }
}

/// Checks the body and finds its key field: the document (`Null` unless a dedupe field or an
/// `events=` body field needs it) and the key.
fn check_body(pipeline: &Pipeline, body: &Bytes) -> Result<(serde_json::Value, Option<String>), Refusal> {
    let cfg = &pipeline.config;
    let bad = |message: String| refuse(ErrorCode::BadRequest, message);
    let key_field = match &cfg.key {
        KeySpec::Field(field) => Some(field.as_str()),
        KeySpec::None | KeySpec::Callable => None,
    };
    // NOTE: the ingress checks the body (the slots' parser, dropping what it reads) and finds its key, so
    // a body is refused here or runs. A document is built only for a dedupe field: one for every event
    // was ~3 µs a request on the I/O thread (perf, support bot, 2-core VM; docs/design/code-notes.md).
    // NOTE: an `events=` type in a body field builds the document too (serde_json, ~2-3 µs per
    // event on the I/O thread), only for such pipelines; header types (GitHub) cost nothing.
    let document = matches!(cfg.dedupe, DedupeSpec::Field(_)) || cfg.events.as_ref().is_some_and(|f| f.reads_body());
    match body::check(body, key_field, document) {
        Ok(parsed) => Ok(parsed),
        // Not an object, so no key field: it runs without a key, as a missing field would.
        Err(EventError::NotAnObject { .. }) if cfg.missing_key == MissingKey::Unkeyed => {
            Ok((serde_json::Value::Null, None))
        }
        Err(e @ EventError::InvalidJson(_)) => Err(refuse(ErrorCode::InvalidJson, e.to_string())),
        Err(e @ (EventError::BadKey { .. } | EventError::NotAnObject { .. })) => Err(bad(e.to_string())),
    }
}

/// The ordering key and delivery id of a checked body (`document`, `key`: what [`check_body`]
/// found), as the pipeline declares them.
#[allow(clippy::type_complexity)]
fn key_and_delivery(
    pipeline: &Pipeline,
    engine: &Engine,
    parts: &Parts,
    body: &Bytes,
    event: &serde_json::Value,
    key: Option<String>,
) -> Result<(Option<Box<str>>, Option<Box<str>>), Refusal> {
    let cfg = &pipeline.config;
    let bad = |message: String| refuse(ErrorCode::BadRequest, message);
    let key = match &cfg.key {
        KeySpec::Callable => engine
            .callable_key(pipeline, body)
            .map_err(|message| bad(format!("key function of {:?} failed: {message}", cfg.name)))?,
        _ => key,
    };
    if key.is_none() && cfg.missing_key == MissingKey::Reject {
        match &cfg.key {
            KeySpec::Field(field) => {
                let message = format!(
                    "the event has no key field {field:?} (pipeline {:?} rejects events without a key)",
                    cfg.name
                );
                return Err(bad(message));
            }
            KeySpec::Callable => {
                let message = format!(
                    "the key function of {:?} returned None (the pipeline rejects events without a key)",
                    cfg.name
                );
                return Err(bad(message));
            }
            KeySpec::None => {}
        }
    }
    let delivery = match delivery_id(&cfg.dedupe, &parts.headers, event).map_err(bad)? {
        None if cfg.dedupe == DedupeSpec::Callable => engine
            .callable_delivery_id(pipeline, body)
            .map_err(|message| bad(format!("dedupe function of {:?} failed: {message}", cfg.name)))?
            .map(String::into_boxed_str),
        found => found,
    };
    Ok((key.map(String::into_boxed_str), delivery))
}

/// `Prefer: respond-async` (RFC 7240: comma-separated preferences, names case-insensitive,
/// parameters after `;`).
pub fn prefers_respond_async(value: &str) -> bool {
    value.split(',').any(|pref| {
        let name = pref.split(';').next().unwrap_or_default();
        let name = name.split('=').next().unwrap_or_default();
        name.trim().eq_ignore_ascii_case("respond-async")
    })
}

fn wants_async(req: &Request<Incoming>) -> bool {
    req.headers().get_all("prefer").iter().filter_map(|v| v.to_str().ok()).any(prefers_respond_async)
}

enum BodyError {
    /// Over the limit; the rest of the body is still unread.
    TooLarge(Incoming),
    TimedOut,
    Read(hyper::Error),
}

/// Reads a body of at most `limit` bytes that must have arrived by `deadline`. A body sent in one
/// piece is returned without a copy.
async fn read_body(mut body: Incoming, limit: usize, deadline: tokio::time::Instant) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let have = more.as_ref().map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len);
        if have + data.len() > limit {
            return Err(BodyError::TooLarge(body));
        }
        match (&mut more, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(head)) => {
                let mut buf = BytesMut::with_capacity((head.len() + data.len()) * 2);
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
                more = Some(buf);
            }
        }
    }
    Ok(more.map(BytesMut::freeze).or(first).unwrap_or_default())
}

/// Reads and drops what the client still sends of a refused body, for at most `LINGER`, while
/// hyper writes the answer; then the connection closes. Nothing is kept.
fn linger(mut body: Incoming) {
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + LINGER;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, body.frame()).await {}
    });
}

/// The delivery id of a webhook, as `dedupe=` says: a header (the first of
/// `DELIVERY_HEADERS`), a top-level body field, or none. (`Callable` is asked by the caller.)
fn delivery_id(
    spec: &DedupeSpec,
    headers: &hyper::HeaderMap,
    event: &serde_json::Value,
) -> Result<Option<Box<str>>, String> {
    match spec {
        DedupeSpec::Off | DedupeSpec::Callable => Ok(None),
        DedupeSpec::Headers => {
            for name in DELIVERY_HEADERS {
                if let Some(v) = headers.get(name) {
                    let v = v.to_str().map_err(|_| format!("the {name} header is not visible ASCII"))?.trim();
                    if !v.is_empty() {
                        return Ok(Some(v.into()));
                    }
                }
            }
            Ok(None)
        }
        DedupeSpec::Field(field) => match event.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str().into())),
            Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string().into())),
            Some(_) => Err(format!("the dedupe field {field:?} must be a string or a number")),
        },
    }
}

fn with_execution_id(mut resp: HttpResponse, id: &str) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(EXECUTION_ID, v);
    }
    resp
}

/// `202 {"execution_id": ...}` with `Location` and the execution id header.
fn accepted(id: &str) -> HttpResponse {
    let mut resp = json(StatusCode::ACCEPTED, format!("{{\"execution_id\":{}}}", json_str(id)));
    if let Ok(v) = HeaderValue::from_str(&format!("/executions/{id}")) {
        resp.headers_mut().insert(LOCATION, v);
    }
    with_execution_id(resp, id)
}

/// Answers a repeated delivery whose first execution has a durable record.
fn repeat_stored(record: &ExecutionRecord, is_async: bool) -> HttpResponse {
    if is_async {
        return accepted(&record.id);
    }
    let status = StatusCode::from_u16(record.http_status).unwrap_or(StatusCode::OK);
    with_execution_id(json(status, record.reply.clone()), &record.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_header_forms() {
        assert!(prefers_respond_async("respond-async"));
        assert!(prefers_respond_async("return=minimal, Respond-Async ; wait=10"));
        assert!(prefers_respond_async("wait=5,respond-async"));
        assert!(!prefers_respond_async("return=representation"));
        assert!(!prefers_respond_async("respond-asynchronously"));
        assert!(!prefers_respond_async("wait=respond-async"));
        assert!(!prefers_respond_async(""));
    }
}

/// Property tests of `Prefer` parsing (256 cases in `cargo test`; see docs/fuzzing.md).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// `respond-async` in a random ASCII case (regex `(?i)` would also draw Unicode case folds).
    fn respond_async() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<bool>(), 13).prop_map(|upper| {
            "respond-async".chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect()
        })
    }

    fn preference() -> impl Strategy<Value = (String, bool)> {
        let name = prop_oneof![
            respond_async().prop_map(|n| (n, true)),
            "[a-z-]{1,16}".prop_map(|n| {
                let yes = n == "respond-async";
                (n, yes)
            }),
            (respond_async(), "[a-z]{1,3}").prop_map(|(n, tail)| (n + &tail, false)),
        ];
        (name, "( *= *[a-z0-9]{1,4})?", "( *; *[a-z]{1,5}(=[a-z0-9]{1,4})?){0,2}", " {0,2}", " {0,2}").prop_map(
            |((name, yes), value, params, before, after)| (format!("{before}{name}{value}{params}{after}"), yes),
        )
    }

    proptest! {
        #[test]
        fn prefer_never_panics(value in "\\PC{0,64}") {
            let _ = prefers_respond_async(&value);
        }

        /// `respond-async` is found as a preference name in any position, in any case, with
        /// values and parameters; never as a parameter, a value or a longer name.
        #[test]
        fn finds_respond_async_among_preferences(prefs in prop::collection::vec(preference(), 1..5)) {
            let header = prefs.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(",");
            let expected = prefs.iter().any(|(_, yes)| *yes);
            prop_assert_eq!(prefers_respond_async(&header), expected, "{}", header);
        }
    }
}
