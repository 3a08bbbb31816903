//! The observation routes: `/metrics` (Prometheus text), `/stats` (per-second series as JSON)
//! and `/dashboard` (one HTML page that draws `/stats`), and the ticker that closes each second.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::error::ErrorCode;
use crate::http::responses::{error, json, json_str, HttpResponse};
use crate::observe::series::{Gauges, PoolGauges};
use crate::runtime::Engine;
use crate::runtime::Pipeline;

const DASHBOARD: &str = include_str!("dashboard.html");

/// One entry point for every observation route, so that access control wraps all of them.
pub(crate) fn observation(path: &str, query: Option<&str>, engine: &Engine) -> HttpResponse {
    match path {
        "/metrics" => text(engine.metrics_text(), "text/plain; version=0.0.4"),
        "/stats" => stats(engine, query),
        _ => text(DASHBOARD.to_string(), "text/html; charset=utf-8"),
    }
}

fn text(body: String, content_type: &'static str) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `?since=<unix seconds>`: only the samples whose second started after it.
fn since(query: Option<&str>) -> Result<f64, String> {
    let Some(raw) = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("since=")) else {
        return Ok(0.0);
    };
    raw.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("since must be a unix time in seconds, got {raw:?}"))
}

// NOTE: a full hour of one pipeline (3600 samples, ~900 KB of JSON), the dashboard's first load,
// takes 1.7-2.5 ms (release, `series::tests::write_json_cost`, ignored by default, 2-core VM); polls ask
// only for the seconds since the last: under 1 µs per pipeline (docs/design/code-notes.md).
pub(crate) fn stats_json(engine: &Engine, since: f64) -> String {
    let mut body = String::with_capacity(64 + engine.pipelines().len() * 256);
    body.push_str("{\"pipelines\":{");
    for (i, p) in engine.pipelines().iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&json_str(p.name()));
        body.push_str(":{\"series\":");
        p.metrics.series().write_json(since, &mut body);
        body.push('}');
    }
    body.push_str("}}");
    body
}

fn stats(engine: &Engine, query: Option<&str>) -> HttpResponse {
    match since(query) {
        Ok(since) => {
            let mut resp = json(StatusCode::OK, stats_json(engine, since));
            resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(message) => error(ErrorCode::BadRequest, &message),
    }
}

// `cold_starts_total` counts events, not slots: those that arrived while the slot that ran them was
// still warming up (`slot_loop::begin_all`).
impl PoolGauges for Pipeline {
    fn gauges(&self) -> Gauges {
        Gauges {
            queue: self.intake.waiting() as u64,
            warm: self.slots.warm_count() as u64,
            busy: self.slots.busy_count() as u64,
            target: self.target_slots() as u64,
            forecast_rps: self.forecast_rps(),
            arrivals_total: self.arrivals(),
            cold_starts_total: self.slots.cold_starts(),
        }
    }
}

/// Closes every pipeline's second just after each wall-clock second ends, so that sample `t`
/// covers [t, t+1) as closely as the timer allows. Runs until the ingress runtime stops.
pub(crate) async fn tick_every_second(engine: Arc<Engine>) {
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let to_next = Duration::from_secs(1).saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
        tokio::time::sleep(to_next + Duration::from_millis(2)).await;
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().saturating_sub(1);
        for p in engine.pipelines() {
            p.metrics.series().tick(t, p.gauges());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_parsed_from_the_query() {
        assert_eq!(since(None), Ok(0.0));
        assert_eq!(since(Some("since=1700000000")), Ok(1_700_000_000.0));
        assert_eq!(since(Some("x=1&since=12.5")), Ok(12.5));
        assert!(since(Some("since=yesterday")).unwrap_err().contains("\"yesterday\""));
        assert!(since(Some("since=inf")).is_err());
    }

    #[test]
    fn the_dashboard_is_self_contained() {
        assert!(DASHBOARD.contains("/stats?since="));
        for external in ["src=\"http", "href=\"http", "//cdn", "<script src"] {
            assert!(!DASHBOARD.contains(external), "{external}");
        }
    }
}
