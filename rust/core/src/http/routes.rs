//! Routing: a request's path and method to its handler — webhooks (`hook`), `/healthz`,
//! `/openapi.json`, the observation routes and the execution records (both behind the admin token).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};

use crate::error::ErrorCode;
use crate::http::responses::{error, execution, healthz, json, HttpResponse};
use crate::http::{admin, hook, openapi, stats};
use crate::runtime::Engine;

pub(crate) async fn route(req: Request<Incoming>, engine: &Arc<Engine>) -> HttpResponse {
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
            let message = format!("{} {path} is not allowed; webhooks are POSTed", req.method());
            return not_allowed(error(ErrorCode::MethodNotAllowed, &message), "POST");
        }
        let pipeline = pipeline.clone();
        return hook::hook(req, pipeline, engine).await;
    }
    read_route(&req, path, engine)
}

/// `resp` for a GET or HEAD, else `405`.
fn get_only(req: &Request<Incoming>, path: &str, resp: HttpResponse) -> HttpResponse {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        resp
    } else {
        let message = format!("{} {path} is not allowed; use GET", req.method());
        not_allowed(error(ErrorCode::MethodNotAllowed, &message), "GET")
    }
}

fn not_allowed(mut resp: HttpResponse, allow: &'static str) -> HttpResponse {
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The routes that only read (GET): `/healthz` and `/openapi.json` (open), and the admin routes,
/// each of which calls `admin::authorized` before it answers.
fn read_route(req: &Request<Incoming>, path: &str, engine: &Engine) -> HttpResponse {
    let token = engine.config.admin_token.as_deref();
    let admin = admin::authorized(req.headers(), token);
    let get_only = |resp| get_only(req, path, resp);
    match path {
        "/healthz" => get_only(healthz(engine)),
        "/openapi.json" => get_only(openapi::openapi(engine)),
        "/metrics" | "/stats" | "/dashboard"
            if !(admin || (path == "/dashboard" && admin::authorized_query(req.uri().query(), token))) =>
        {
            unauthorized()
        }
        "/metrics" | "/stats" | "/dashboard" => get_only(stats::observation(path, req.uri().query(), engine)),
        "/executions" | "/executions/" if !admin => unauthorized(),
        "/executions" | "/executions/" => get_only(list_executions(engine, req.uri().query())),
        _ => match path.strip_prefix("/executions/") {
            Some(_) if !admin => unauthorized(),
            Some(id) => get_only(execution(engine, id)),
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
pub(crate) fn closing(mut resp: HttpResponse) -> HttpResponse {
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The size of the request head as sent: request line and header lines with their separators.
fn head_bytes(req: &Request<Incoming>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + " HTTP/1.1\r\n".len();
    line + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() + 2
}
