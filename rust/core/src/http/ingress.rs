//! The HTTP ingress: tokio + hyper (HTTP/1.1, keep-alive). Routes webhooks to pipelines, checks
//! size, signature and JSON, admits them to the ring (or answers 429 at once) and replies when
//! the execution has an outcome.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::config::KeySpec;
use crate::engine::Engine;
use crate::error::ErrorCode;
use crate::http::body::{self, EventError};
use crate::http::responses::{error, execution, healthz, json, json_str, reply, HttpResponse, EXECUTION_ID};
use crate::http::{signature, stats};
use crate::runtime::execution::{Job, Status};
use crate::runtime::pipeline::Pipeline;

const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Oversized bodies up to this size are read and discarded before the 413 (see `hook`).
const DRAIN_CAP: u64 = 8 << 20;

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
        let engine = engine.clone();
        let service = service_fn(move |req| {
            let engine = engine.clone();
            async move { Ok::<_, Infallible>(route(req, &engine).await) }
        });
        // A client gets HEADER_TIMEOUT to send each request's headers (no slowloris pinning a permit).
        let conn = http1::Builder::new()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
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
    match path {
        "/healthz" => get_only(healthz(engine)),
        "/metrics" | "/stats" | "/dashboard" => get_only(stats::observation(path, req.uri().query(), engine)),
        _ => match path.strip_prefix("/executions/") {
            Some(id) => get_only(execution(engine, id)),
            None => error(ErrorCode::NotFound, &format!("no route for {path}")),
        },
    }
}

/// `Prefer: respond-async` (RFC 7240: comma-separated preferences, names case-insensitive).
fn wants_async(req: &Request<Incoming>) -> bool {
    req.headers().get_all("prefer").iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',')
            .any(|pref| pref.split(';').next().is_some_and(|name| name.trim().eq_ignore_ascii_case("respond-async")))
    })
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
    if let Some(len) = declared.filter(|&len| len > limit as u64) {
        // Read and discard a moderately oversized body so the client sees the 413 instead of a
        // reset while it is still sending; past DRAIN_CAP, answer at once and let hyper close.
        // With `Expect: 100-continue` the client has not sent the body yet: answer at once.
        let expects_continue = parts
            .headers
            .get(hyper::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if len <= DRAIN_CAP && !expects_continue {
            let _ = Limited::new(body, DRAIN_CAP as usize).collect().await;
        }
        return refuse(ErrorCode::PayloadTooLarge, too_large());
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return refuse(ErrorCode::PayloadTooLarge, too_large()),
        Err(e) => return refuse(ErrorCode::BadRequest, format!("could not read the request body: {e}")),
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
    let parsed = match &cfg.key {
        KeySpec::Field(field) => body::parse(&body, Some(field)),
        KeySpec::None | KeySpec::Callable => body::parse(&body, None),
    };
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

    pipeline.arrived();
    let exec = Arc::new(engine.new_execution(&pipeline, key.map(String::into_boxed_str), received));
    pipeline.accepted_one();
    if let Err((_, job)) = pipeline.intake.admit(Job::new(exec.clone(), body, event, parts.headers)) {
        job.discard();
        pipeline.finished_one();
        return refuse(
            ErrorCode::Overloaded,
            format!("pipeline {:?} is at capacity ({} waiting); retry shortly", cfg.name, pipeline.intake.capacity()),
        );
    }
    engine.remember(exec.clone());
    // Pairs with `Engine::shutdown`: it closes the pipeline, then drains the intake. Either that
    // drain sees this job, or we see `closed` here and answer it ourselves.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if pipeline.is_closed() {
        exec.abandon_queued(ErrorCode::ShuttingDown, "the server is shutting down".into());
    }

    if is_async {
        if let Some(deadline) = exec.deadline {
            let exec = exec.clone();
            tokio::spawn(async move {
                if tokio::time::timeout_at(deadline.into(), exec.wait()).await.is_err() {
                    exec.time_out();
                }
            });
        }
        let mut resp = json(StatusCode::ACCEPTED, format!("{{\"execution_id\":{}}}", json_str(&exec.id_str)));
        if let Ok(v) = HeaderValue::from_str(&format!("/executions/{}", exec.id_str)) {
            resp.headers_mut().insert(LOCATION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&exec.id_str) {
            resp.headers_mut().insert(EXECUTION_ID, v);
        }
        return resp;
    }

    if let Some(deadline) = exec.deadline {
        if let Ok((outcome, _)) = tokio::time::timeout_at(deadline.into(), exec.wait()).await {
            return reply(&exec, outcome);
        }
        // Deadline passed: time it out unless it is already committing, then report what won.
        exec.time_out();
    }
    let (outcome, _) = exec.wait().await;
    debug_assert!(exec.status() != Status::Queued);
    reply(&exec, outcome)
}
