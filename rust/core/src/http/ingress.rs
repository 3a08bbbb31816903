//! The HTTP ingress: tokio + hyper (HTTP/1.1, keep-alive). Routes webhooks to pipelines, checks
//! size, signature and JSON, admits them to the ring (or answers 429 at once) and replies when
//! the execution has an outcome.
//!
//! Limits that hold against hostile clients: a request head above `max_header_bytes` gets `431`
//! (JSON up to twice the limit; past that hyper's read buffer is full and hyper itself answers a
//! bare `431` and closes); headers must arrive within `header_timeout`, which is also how long a
//! keep-alive connection may idle; a body must arrive within `body_timeout` (`408`); an oversized
//! body gets `413` at once and is then read and dropped, never buffered, for up to `LINGER`
//! (nginx's lingering close), so that clients which write the whole body before reading still
//! read the `413` instead of a reset.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, LOCATION, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::config::{DedupeSpec, KeySpec, MissingKey, DELIVERY_HEADERS};
use crate::engine::Engine;
use crate::error::ErrorCode;
use crate::http::admin;
use crate::http::body::{self, EventError};
use crate::http::responses::{error, execution, healthz, json, json_str, reply, HttpResponse, EXECUTION_ID};
use crate::http::{signature, stats};
use crate::runtime::dedupe::Seen;
use crate::runtime::execution::{Execution, Job, Status};
use crate::runtime::pipeline::Pipeline;
use crate::state::JournalEntry;

/// How long the rest of an oversized body is read and dropped after the `413` (nginx's
/// `lingering_time` idea, shorter: enough for a client on a LAN to finish writing megabytes).
const LINGER: Duration = Duration::from_secs(5);
/// hyper refuses to shrink its read buffer below this (`MINIMUM_MAX_BUFFER_SIZE`).
const MIN_READ_BUFFER: usize = 8192;

/// Accepts connections until `stop` fires, then lets open connections finish their current
/// request (hyper's graceful shutdown) for at most `grace`.
pub(crate) async fn serve(listener: TcpListener, engine: Arc<Engine>, stop: Arc<Notify>, grace: Duration) {
    let permits = Arc::new(Semaphore::new(engine.config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let ticker = tokio::spawn(stats::tick_every_second(engine.clone()));
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        // Backpressure: take a connection permit before accepting.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stopped => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let cfg = &engine.config;
        // hyper answers a bare 431 and closes once a head fills its read buffer; heads between
        // `max_header_bytes` and the buffer's size get the JSON 431 from `route`.
        let read_buffer = cfg.max_header_bytes.saturating_mul(2).max(MIN_READ_BUFFER);
        // The header timer runs from the moment hyper waits for a request head, so it bounds both
        // a slowloris head and an idle keep-alive connection.
        let mut builder = http1::Builder::new();
        builder.keep_alive(true).timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout);
        builder.max_buf_size(read_buffer);
        let engine = engine.clone();
        let service = service_fn(move |req| {
            let engine = engine.clone();
            async move { Ok::<_, Infallible>(route(req, &engine).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    ticker.abort();
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

async fn route(req: Request<Incoming>, engine: &Arc<Engine>) -> HttpResponse {
    let limit = engine.config.max_header_bytes;
    let head = head_bytes(&req);
    if head > limit {
        return closing(error(
            ErrorCode::HeadersTooLarge,
            &format!("the request head takes {head} bytes, above the {limit}-byte limit (max_header_bytes)"),
        ));
    }
    let path = req.uri().path();
    if let Some(name) = path.strip_prefix("/hooks/") {
        // Webhook providers are often configured with a trailing slash: accept `/hooks/<name>/`.
        let name = name.strip_suffix('/').unwrap_or(name);
        let Some(pipeline) = engine.pipeline(name) else {
            return error(ErrorCode::UnknownPipeline, &format!("no pipeline named {name:?}"));
        };
        if req.method() != Method::POST {
            let mut resp = error(
                ErrorCode::MethodNotAllowed,
                &format!("{} {path} is not allowed; webhooks are POSTed", req.method()),
            );
            resp.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let pipeline = pipeline.clone();
        return hook(req, pipeline, engine).await;
    }
    let get_only = |resp: HttpResponse| {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            resp
        } else {
            let mut resp =
                error(ErrorCode::MethodNotAllowed, &format!("{} {path} is not allowed; use GET", req.method()));
            resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
            resp
        }
    };
    // Admin routes: each calls `admin::authorized` before it answers.
    let token = engine.config.admin_token.as_deref();
    match path {
        "/healthz" => get_only(healthz(engine)),
        "/metrics" | "/stats" | "/dashboard"
            if !(admin::authorized(req.headers(), token)
                || (path == "/dashboard" && admin::authorized_query(req.uri().query(), token))) =>
        {
            unauthorized()
        }
        "/metrics" | "/stats" | "/dashboard" => get_only(stats::observation(path, req.uri().query(), engine)),
        "/executions" | "/executions/" if !admin::authorized(req.headers(), token) => unauthorized(),
        "/executions" | "/executions/" => get_only(list_executions(engine, req.uri().query())),
        _ => match path.strip_prefix("/executions/") {
            Some(_) if !admin::authorized(req.headers(), token) => unauthorized(),
            Some(id) => get_only(match engine.execution_json(id) {
                Some(record) => json(StatusCode::OK, record),
                None => execution(engine, id),
            }),
            None => error(ErrorCode::NotFound, &format!("no route for {path}")),
        },
    }
}

/// `GET /executions?status=failed&pipeline=<name>&limit=100`: records, newest first.
fn list_executions(engine: &Engine, query: Option<&str>) -> HttpResponse {
    let (mut status, mut pipeline, mut limit) = ("failed".to_string(), None, 100usize);
    for (k, v) in query.unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "status" => status = v.to_string(),
            "pipeline" => pipeline = Some(v.to_string()),
            "limit" => match v.parse() {
                Ok(n) => limit = n,
                Err(_) => return error(ErrorCode::BadRequest, &format!("limit must be a count, got {v:?}")),
            },
            _ => {}
        }
    }
    if !["succeeded", "failed", "timed_out"].contains(&status.as_str()) {
        return error(
            ErrorCode::BadRequest,
            &format!("status must be succeeded, failed or timed_out (finished executions), got {status:?}"),
        );
    }
    if let Some(name) = &pipeline {
        if engine.pipeline(name).is_none() {
            return error(ErrorCode::UnknownPipeline, &format!("no pipeline named {name:?}"));
        }
    }
    let records = engine.list_executions(pipeline.as_deref(), &status, limit);
    json(StatusCode::OK, format!("{{\"executions\":[{}]}}", records.join(",")))
}

fn unauthorized() -> HttpResponse {
    let mut resp =
        error(ErrorCode::Unauthorized, "this route needs the admin token: send Authorization: Bearer <admin_token>");
    resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"warmslot\""));
    resp
}

/// Marks a response as the connection's last (the request was not fully read, or was hostile).
fn closing(mut resp: HttpResponse) -> HttpResponse {
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The size of the request head as sent: request line and header lines with their separators.
fn head_bytes(req: &Request<Incoming>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + " HTTP/1.1\r\n".len();
    line + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() + 2
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

async fn hook(req: Request<Incoming>, pipeline: Arc<Pipeline>, engine: &Arc<Engine>) -> HttpResponse {
    let cfg = &pipeline.config;
    let refuse = |code: ErrorCode, message: String| {
        pipeline.metrics.refused(code);
        error(code, &message)
    };
    if !engine.is_accepting() {
        return refuse(ErrorCode::ShuttingDown, "the server is shutting down".into());
    }
    let limit = cfg.max_body_bytes;
    let too_large = || format!("request body exceeds the {limit}-byte limit of pipeline {:?}", cfg.name);
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let is_async = cfg.reply_async || wants_async(&req);
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
        return closing(refuse(ErrorCode::PayloadTooLarge, too_large()));
    }
    let deadline = tokio::time::Instant::now() + engine.config.body_timeout;
    let body = match read_body(body, limit, deadline).await {
        Ok(body) => body,
        Err(BodyError::TooLarge(rest)) => {
            linger(rest);
            return closing(refuse(ErrorCode::PayloadTooLarge, too_large()));
        }
        Err(BodyError::TimedOut) => {
            let secs = engine.config.body_timeout.as_secs_f64();
            return closing(refuse(
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {secs}s"),
            ));
        }
        Err(BodyError::Read(e)) => {
            return refuse(ErrorCode::BadRequest, format!("could not read the request body: {e}"))
        }
    };
    let received = Instant::now();
    if !engine.is_accepting() {
        return refuse(ErrorCode::ShuttingDown, "the server is shutting down".into());
    }

    if let Some(spec) = &cfg.signature {
        if let Err(e) = signature::verify(spec, &parts.headers, &body) {
            return refuse(ErrorCode::BadSignature, e.0);
        }
    }
    let key_field = match &cfg.key {
        KeySpec::Field(field) => Some(field.as_str()),
        KeySpec::None | KeySpec::Callable => None,
    };
    // NOTE: the ingress checks the body (the same parse, dropping what it reads) and finds its key;
    // slots parse it straight into Python objects with the same parser (`value::loads` in the
    // bindings), so a body is refused here or runs. A document is built only for a dedupe field.
    // Building a `serde_json::Value` here for thread slots (an `IndexMap` per object, converted to
    // Python by the slot, freed across threads) was the largest of our own costs on the I/O thread
    // (perf). Without it, and with admission in the request's task (below), the I/O thread went from
    // 11.6-13 to 8.8-9.3 µs per request and the slot thread from 8.5 to 7.2-7.4 (support bot,
    // thread slots, wrk -c64, per-thread /proc, 2-core VM, 2026-12-02).
    let document = matches!(cfg.dedupe, DedupeSpec::Field(_));
    let parsed = body::check(&body, key_field, document);
    let (event, key) = match parsed {
        Ok(parsed) => parsed,
        Err(e @ EventError::InvalidJson(_)) => return refuse(ErrorCode::InvalidJson, e.to_string()),
        Err(e @ EventError::BadKey { .. }) => return refuse(ErrorCode::BadRequest, e.to_string()),
    };
    let key = match (&cfg.key, engine.key_fn()) {
        (KeySpec::Callable, Some(f)) => match f.key(pipeline.index, &body) {
            Ok(k) => k,
            Err(message) => {
                return refuse(ErrorCode::BadRequest, format!("key function of {:?} failed: {message}", cfg.name))
            }
        },
        _ => key,
    };
    if key.is_none() && cfg.missing_key == MissingKey::Reject {
        let message = match &cfg.key {
            KeySpec::Field(field) => Some(format!(
                "the event has no key field {field:?} (pipeline {:?} rejects events without a key)",
                cfg.name
            )),
            KeySpec::Callable => Some(format!(
                "the key function of {:?} returned None (the pipeline rejects events without a key)",
                cfg.name
            )),
            KeySpec::None => None,
        };
        if let Some(message) = message {
            return refuse(ErrorCode::BadRequest, message);
        }
    }

    let delivery = match delivery_id(&cfg.dedupe, &parts.headers, &event) {
        Ok(Some(d)) => Some(d),
        Ok(None) if cfg.dedupe == DedupeSpec::Callable => match engine
            .key_fn()
            .map(|f| f.delivery_id(pipeline.index, &body))
        {
            Some(Ok(d)) => d.map(String::into_boxed_str),
            Some(Err(message)) => {
                return refuse(ErrorCode::BadRequest, format!("dedupe function of {:?} failed: {message}", cfg.name))
            }
            None => None,
        },
        Ok(None) => None,
        Err(message) => return refuse(ErrorCode::BadRequest, message),
    };
    let delivery = delivery.map(bounded_delivery_id);

    pipeline.arrived();
    let exec = engine.new_execution(&pipeline, key.map(String::into_boxed_str), received);
    let exec = Arc::new(exec.with_delivery(delivery, is_async));
    if let (Some(d), true) = (&exec.delivery, pipeline.store.shares_deliveries()) {
        // Across processes (Redis): the first process to claim the id runs it. Checked before
        // the in-process map, so that every repeat, here or elsewhere, is pointed at that one.
        let (store, d2, id, window) = (pipeline.store.clone(), d.clone(), exec.id_str.clone(), cfg.dedupe_window);
        let claimed = tokio::task::spawn_blocking(move || store.claim_delivery(&d2, &id, window)).await;
        match claimed {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(other))) => {
                return match engine.execution(&other) {
                    Some(first) => repeat(first, is_async, engine).await,
                    None => repeat_remote(&pipeline, other.into(), is_async).await,
                };
            }
            Ok(Err(e)) => return refuse(ErrorCode::StateError, format!("could not check the delivery id: {e}")),
            Err(e) => return refuse(ErrorCode::StateError, format!("could not check the delivery id: {e}")),
        }
    }
    if let Some(d) = &exec.delivery {
        match engine.deliveries.claim(pipeline.index, d, cfg.dedupe_window, &exec) {
            Ok(()) => {}
            Err(Seen::Live(first)) => return repeat(first, is_async, engine).await,
            Err(Seen::Stored(id)) => match pipeline.store.record(&id) {
                Some(record) => return repeat_stored(&record, is_async),
                // Its record is gone (evicted from memory, or pruned): this delivery runs again.
                None => engine.deliveries.replace(pipeline.index, d, cfg.dedupe_window, &exec),
            },
        }
    }
    let journaled = is_async && pipeline.store.is_durable();
    // NOTE: journaling and admission run in their own task, so a client that goes away meanwhile
    // (hyper then drops this future) cannot leave an event journaled but never admitted. Without
    // a journal there is nothing to wait for: `journal_and_admit` ends in its first poll, so it runs
    // here (a spawned task per request: an allocation, a schedule and a wake; see the NOTE above).
    // A panic in admission (a bug) then ends this connection instead of answering 500.
    let admit = journal_and_admit(
        engine.clone(),
        pipeline.clone(),
        exec.clone(),
        Job::new(exec.clone(), body, parts.headers),
        journaled,
    );
    let admitted = if journaled { tokio::spawn(admit).await } else { Ok(admit.await) };
    match admitted {
        Ok(Ok(())) => {}
        Ok(Err((code, message))) => return refuse(code, message),
        Err(e) => return refuse(ErrorCode::StateError, format!("the event could not be admitted: {e}")),
    }
    let mut settle = SettleLater(Some((exec.clone(), engine.clone())));
    if is_async {
        settle.0 = None;
        return accepted(&exec.id_str);
    }

    if let Some(deadline) = exec.deadline {
        if tokio::time::timeout_at(deadline.into(), exec.wait()).await.is_err() {
            // Deadline passed: time it out unless it is already committing, then report what won.
            exec.time_out();
        }
    }
    let (outcome, _) = exec.wait().await;
    debug_assert!(exec.status() != Status::Queued);
    let resp = reply(&exec, outcome);
    engine.settle(&exec);
    settle.0 = None;
    resp
}

/// Journals `job` first when `journaled` (the event is in the store, SQLite's file or Redis,
/// before its 202), then admits it to its pipeline's intake; on refusal, undoes the delivery
/// claim. Runs as its own task when it journals (see the NOTE in `hook`).
async fn journal_and_admit(
    engine: Arc<Engine>,
    pipeline: Arc<Pipeline>,
    exec: Arc<Execution>,
    job: Job,
    journaled: bool,
) -> Result<(), (ErrorCode, String)> {
    let forget = || {
        if let Some(d) = &exec.delivery {
            engine.deliveries.forget(pipeline.index, d, &exec);
            if pipeline.store.shares_deliveries() {
                pipeline.store.release_delivery(d, &exec.id_str);
            }
        }
    };
    if journaled {
        // The event is in the journal before its 202 is sent (group commit: the writer thread
        // writes the arrivals of a moment in one transaction, or one Redis script call).
        let entry = JournalEntry {
            id: exec.id_str.clone(),
            key: exec.key.clone(),
            delivery: exec.delivery.clone(),
            body: job.body.clone(),
            headers: crate::engine::encode_headers(&job.headers),
            received_unix: exec.received_unix,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        pipeline.store.journal(entry, Box::new(move |r| drop(tx.send(r))));
        let written = rx.await.unwrap_or_else(|_| Err(crate::state::StoreError("the journal writer stopped".into())));
        if let Err(e) = written {
            job.discard();
            forget();
            return Err((ErrorCode::StateError, format!("the event could not be journaled, nothing was run: {e}")));
        }
    }
    pipeline.accepted_one();
    if let Err((_, job)) = pipeline.intake.admit(job) {
        job.discard();
        pipeline.finished_one();
        forget();
        if journaled {
            // Mark the journal entry done: a refused event never runs, not even after a restart.
            let message = "refused at admission (queue_size reached)".to_string();
            let outcome = crate::runtime::execution::Outcome::Failed { code: ErrorCode::Overloaded, message };
            let mut record = exec.record(Status::Failed, &outcome, &Default::default());
            record.delivery = None; // the provider's retry of this delivery must run, after a restart too
            pipeline.store.record_outcome(record);
        }
        let name = &pipeline.config.name;
        let message =
            format!("pipeline {name:?} is at capacity ({} waiting); retry shortly", pipeline.intake.capacity());
        return Err((ErrorCode::Overloaded, message));
    }
    engine.remember(exec.clone());
    // Pairs with `Engine::shutdown`: it closes the pipeline, then drains the intake. Either that
    // drain sees this job, or we see `closed` here and answer it ourselves.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if pipeline.is_closed() {
        exec.abandon_queued(ErrorCode::ShuttingDown, "the server is shutting down".into());
    }
    if exec.is_async {
        watch_async(exec.clone(), engine.clone());
    }
    Ok(())
}

/// Waits for an async execution's outcome (timing it out at the deadline) so its reply is counted
/// against the records' byte budget.
pub(crate) fn watch_async(exec: Arc<Execution>, engine: Arc<Engine>) {
    tokio::spawn(async move {
        match exec.deadline {
            Some(deadline) if tokio::time::timeout_at(deadline.into(), exec.wait()).await.is_err() => {
                exec.time_out();
            }
            _ => {}
        }
        exec.wait().await;
        engine.settle(&exec);
    });
}

/// `202 {"execution_id": ...}` with `Location` and the execution id header.
fn accepted(id: &str) -> HttpResponse {
    let mut resp = json(StatusCode::ACCEPTED, format!("{{\"execution_id\":{}}}", json_str(id)));
    if let Ok(v) = HeaderValue::from_str(&format!("/executions/{id}")) {
        resp.headers_mut().insert(LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(EXECUTION_ID, v);
    }
    resp
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

/// Delivery ids longer than this are kept as their SHA-256 (`sha256:<hex>`), so that the
/// deduplication map and the records stay small whatever a client sends.
const MAX_DELIVERY_ID: usize = 128;

fn bounded_delivery_id(id: Box<str>) -> Box<str> {
    if id.len() <= MAX_DELIVERY_ID {
        return id;
    }
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes()))).into_boxed_str()
}

/// Answers a repeated delivery with what its first execution answered: its id at once for an
/// async repeat; for a sync one, its outcome once it has one.
async fn repeat(first: Arc<Execution>, is_async: bool, engine: &Arc<Engine>) -> HttpResponse {
    if is_async {
        return accepted(&first.id_str);
    }
    if let Some(deadline) = first.deadline {
        if tokio::time::timeout_at(deadline.into(), first.wait()).await.is_err() {
            first.time_out();
        }
    }
    let (outcome, _) = first.wait().await;
    engine.settle(&first);
    reply(&first, outcome)
}

/// Answers a repeated delivery that another process (sharing a Redis store) took: its id at once
/// for an async repeat; for a sync one, its record once that process wrote it (polled until this
/// pipeline's timeout, then `504`).
async fn repeat_remote(pipeline: &Arc<Pipeline>, id: Box<str>, is_async: bool) -> HttpResponse {
    if is_async {
        return accepted(&id);
    }
    let until = pipeline.config.timeout.map(|t| Instant::now() + t);
    loop {
        let (store, id2) = (pipeline.store.clone(), id.clone());
        if let Ok(Some(record)) = tokio::task::spawn_blocking(move || store.record(&id2)).await {
            return repeat_stored(&record, false);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            let mut resp = error(
                ErrorCode::PipelineTimeout,
                &format!("execution {id} (the first delivery, run by another process) did not finish in time"),
            );
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert(EXECUTION_ID, v);
            }
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Answers a repeated delivery whose first execution finished before this process started.
fn repeat_stored(record: &crate::state::ExecutionRecord, is_async: bool) -> HttpResponse {
    if is_async {
        return accepted(&record.id);
    }
    let mut resp = json(StatusCode::from_u16(record.http_status).unwrap_or(StatusCode::OK), record.reply.clone());
    if let Ok(v) = HeaderValue::from_str(&record.id) {
        resp.headers_mut().insert(EXECUTION_ID, v);
    }
    resp
}

/// Settles a recorded execution whose client went away before the answer (hyper drops the
/// request's future): its reply still counts against the records' byte budget once it comes.
struct SettleLater(Option<(Arc<Execution>, Arc<Engine>)>);

impl Drop for SettleLater {
    fn drop(&mut self) {
        let Some((exec, engine)) = self.0.take() else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                exec.wait().await;
                engine.settle(&exec);
            });
        }
    }
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
