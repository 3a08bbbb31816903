//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API, kept as a static document
//! (`openapi.json`, checked against the server by `tests/test_openapi.py`), with the server's
//! pipeline names added as the enum of `{pipeline}` and the package version as `info.version`.

use std::sync::Mutex;

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;
use serde_json::Value;

use crate::http::responses::{json, HttpResponse};
use crate::runtime::Engine;

const DOCUMENT: &str = include_str!("openapi.json");

/// The document for a server with these pipelines.
pub(crate) fn document<'a>(pipelines: impl IntoIterator<Item = &'a str>) -> Value {
    let mut doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON (unit-tested)");
    doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
    let names: Vec<Value> = pipelines.into_iter().map(Value::from).collect();
    if !names.is_empty() {
        doc["components"]["parameters"]["pipeline"]["schema"]["enum"] = Value::Array(names);
    }
    doc
}

/// The last document served and the pipeline names it was made for: it is built once per server,
/// not per request (parsing and writing 32 KB of JSON on the I/O thread, for anyone who asks).
static LAST: Mutex<Option<(Vec<String>, Bytes)>> = Mutex::new(None);

pub(crate) fn openapi(engine: &Engine) -> HttpResponse {
    let names: Vec<String> = engine.pipelines().iter().map(|p| p.name().to_string()).collect();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let body = match &*last {
        Some((for_names, body)) if *for_names == names => body.clone(),
        _ => {
            let body = Bytes::from(document(names.iter().map(String::as_str)).to_string());
            *last = Some((names, body.clone()));
            body
        }
    };
    drop(last);
    let mut resp = json(StatusCode::OK, body);
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    /// Every `enum` under a `code` property, anywhere in the document.
    fn codes(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(list) = map.get("code").and_then(|c| c.get("enum")).and_then(Value::as_array) {
                    out.extend(list.iter().filter_map(Value::as_str).map(String::from));
                }
                map.values().for_each(|x| codes(x, out));
            }
            Value::Array(items) => items.iter().for_each(|x| codes(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_parses_and_names_every_error_code() {
        let doc = document(["a", "b"]);
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["components"]["securitySchemes"]["admin"]["scheme"], "bearer");
        assert_eq!(doc["components"]["parameters"]["pipeline"]["schema"]["enum"], serde_json::json!(["a", "b"]));
        let mut found = Vec::new();
        codes(&doc["components"]["responses"], &mut found);
        for code in ErrorCode::ALL {
            assert!(found.iter().any(|c| c == code.as_str()), "{code} is not in a documented response");
        }
        let mut all = Vec::new();
        codes(&doc["components"]["schemas"]["ErrorDetail"]["properties"], &mut all);
        assert_eq!(all.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn admin_routes_carry_the_bearer_scheme() {
        let doc = document([]);
        for path in ["/metrics", "/stats", "/dashboard", "/executions", "/executions/{id}"] {
            assert_eq!(doc["paths"][path]["get"]["security"], serde_json::json!([{"admin": []}]), "{path}");
        }
        for path in ["/healthz", "/openapi.json"] {
            assert_eq!(doc["paths"][path]["get"]["security"], serde_json::json!([]), "{path}");
        }
    }
}
