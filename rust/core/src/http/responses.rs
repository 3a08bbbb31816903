//! HTTP answers of the ingress: JSON error bodies, status codes of the contract, `/healthz` and
//! execution records.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::error::ErrorCode;
use crate::outcome::Outcome;
use crate::runtime::{Engine, Execution};

pub type HttpResponse = Response<Full<Bytes>>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
pub(crate) const EXECUTION_ID: &str = "x-warmslot-execution-id";

/// Escapes `s` as a JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{"error": {"code": ..., "message": ...}}` with the code's status.
pub fn error(code: ErrorCode, message: &str) -> HttpResponse {
    let body = format!("{{\"error\":{{\"code\":\"{}\",\"message\":{}}}}}", code.as_str(), json_str(message));
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    if code.retry_later() {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}

pub(crate) fn healthz(engine: &Engine) -> HttpResponse {
    let mut body = String::from("{\"status\":");
    let ready = engine.is_ready();
    body.push_str(if ready { "\"ok\"" } else { "\"warming\"" });
    body.push_str(",\"pipelines\":{");
    for (i, p) in engine.pipelines().iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let problem = p.slots.last_error().map(|e| format!(",\"problem\":{}", json_str(&e))).unwrap_or_default();
        body.push_str(&format!(
            "{}:{{\"warm_slots\":{},\"min_slots\":{},\"ready\":{}{problem}}}",
            json_str(p.name()),
            p.slots.warm_count(),
            p.config.min_slots,
            p.is_ready()
        ));
    }
    body.push_str("}}");
    json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// `GET /executions/<id>`: the record, live or from a durable store.
pub(crate) fn execution(engine: &Engine, id: &str) -> HttpResponse {
    match engine.execution_json(id) {
        Some(record) => json(StatusCode::OK, record),
        None => error(ErrorCode::UnknownExecution, &format!("no execution {id:?} (unknown or evicted)")),
    }
}

pub(crate) fn reply(exec: &Execution, outcome: &Outcome) -> HttpResponse {
    let mut resp = match outcome {
        Outcome::Succeeded(body) => json(StatusCode::OK, body.clone()),
        Outcome::Failed { code, message } => error(*code, message),
        Outcome::TimedOut { message } => error(ErrorCode::PipelineTimeout, message),
    };
    if let Ok(v) = HeaderValue::from_str(&exec.id_str) {
        resp.headers_mut().insert(EXECUTION_ID, v);
    }
    resp
}
