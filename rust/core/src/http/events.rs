//! `events=`: a webhook's event type, found in a header or a body field as the pipeline's
//! [`EventFilter`] says, decides before admission whether the pipeline runs it.

use hyper::header::HeaderValue;
use hyper::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::config::{EventFilter, EventTypeSource};
use crate::http::responses::{json, HttpResponse};

/// The header an ignored event's answer names its type in.
pub(crate) const IGNORED: &str = "x-warmslot-ignored";

/// The event's type: the first of the filter's sources that holds one. A header must be visible
/// ASCII and not blank; a field must be a non-empty string (the body is `document`, `Null` when it
/// was not built or is not an object).
pub(crate) fn event_type(from: &[EventTypeSource], headers: &HeaderMap, document: &Value) -> Option<String> {
    from.iter().find_map(|source| match source {
        EventTypeSource::Header(name) => {
            let value = headers.get(name.as_str())?.to_str().ok()?.trim();
            (!value.is_empty()).then(|| value.to_string())
        }
        EventTypeSource::Field(path) => {
            let found = path.iter().try_fold(document, |v, part| v.as_object()?.get(part))?;
            found.as_str().filter(|s| !s.is_empty()).map(String::from)
        }
    })
}

/// `None` when the event runs; else the answer to an ignored event: its type is not one of the
/// filter's, or it has none.
pub(crate) fn ignored(filter: &EventFilter, headers: &HeaderMap, document: &Value) -> Option<Option<String>> {
    match event_type(&filter.from, headers, document) {
        Some(t) if filter.types.contains(&t) => None,
        found => Some(found),
    }
}

/// `200 {"ignored": true}`, with `x-warmslot-ignored: <type>` when the event had one.
pub(crate) fn ignored_answer(event_type: Option<&str>) -> HttpResponse {
    let mut resp = json(StatusCode::OK, "{\"ignored\":true}");
    // A type longer than any provider's is not echoed (it comes from the sender's body).
    if let Some(v) = event_type.filter(|t| t.len() <= 256).and_then(|t| HeaderValue::from_str(t).ok()) {
        resp.headers_mut().insert(IGNORED, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SignatureScheme;
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (hyper::header::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    fn filter(types: &[&str], from: Vec<EventTypeSource>) -> EventFilter {
        EventFilter { types: types.iter().map(|t| t.to_string()).collect(), from }
    }

    #[test]
    fn github_type_is_the_header() {
        let github = SignatureScheme::Hex { header: "x-hub-signature-256".into(), prefix: "sha256=".into() };
        let f = filter(&["push", "pull_request"], EventFilter::provider_sources(&github).unwrap());
        assert_eq!(ignored(&f, &headers(&[("x-github-event", "push")]), &Value::Null), None);
        assert_eq!(ignored(&f, &headers(&[("x-github-event", " pull_request ")]), &Value::Null), None);
        assert_eq!(ignored(&f, &headers(&[("x-github-event", "issues")]), &Value::Null), Some(Some("issues".into())));
        assert_eq!(ignored(&f, &headers(&[("x-github-event", "Push")]), &Value::Null), Some(Some("Push".into())));
        assert_eq!(ignored(&f, &headers(&[]), &Value::Null), Some(None));
        assert_eq!(ignored(&f, &headers(&[("x-github-event", "  ")]), &Value::Null), Some(None));
    }

    #[test]
    fn stripe_and_standard_type_is_the_body_field() {
        let stripe = EventFilter::provider_sources(&SignatureScheme::Stripe { tolerance: Duration::ZERO }).unwrap();
        let f = filter(&["invoice.paid"], stripe);
        let none = headers(&[]);
        assert_eq!(ignored(&f, &none, &serde_json::json!({"type": "invoice.paid"})), None);
        assert_eq!(
            ignored(&f, &none, &serde_json::json!({"type": "charge.failed"})),
            Some(Some("charge.failed".into()))
        );
        assert_eq!(ignored(&f, &none, &serde_json::json!({"type": 3})), Some(None));
        assert_eq!(ignored(&f, &none, &serde_json::json!([{"type": "invoice.paid"}])), Some(None));
        assert_eq!(ignored(&f, &none, &Value::Null), Some(None));
    }

    #[test]
    fn slack_type_is_event_type_then_type() {
        let slack = EventFilter::provider_sources(&SignatureScheme::Slack { tolerance: Duration::ZERO }).unwrap();
        let f = filter(&["app_mention", "url_verification"], slack);
        let none = headers(&[]);
        let mention = serde_json::json!({"type": "event_callback", "event": {"type": "app_mention"}});
        assert_eq!(ignored(&f, &none, &mention), None);
        let message = serde_json::json!({"type": "event_callback", "event": {"type": "message"}});
        assert_eq!(ignored(&f, &none, &message), Some(Some("message".into())));
        assert_eq!(ignored(&f, &none, &serde_json::json!({"type": "url_verification", "challenge": "c"})), None);
        // `event` present but without a type: the top-level type is the fallback.
        let odd = serde_json::json!({"type": "event_callback", "event": {}});
        assert_eq!(ignored(&f, &none, &odd), Some(Some("event_callback".into())));
    }

    #[test]
    fn explicit_rules() {
        let f = filter(&["a"], vec![EventTypeSource::parse("header:X-Event-Type").unwrap()]);
        assert_eq!(ignored(&f, &headers(&[("x-event-type", "a")]), &Value::Null), None);
        let f = filter(&["deep"], vec![EventTypeSource::parse("field:a.b.c").unwrap()]);
        assert_eq!(ignored(&f, &headers(&[]), &serde_json::json!({"a": {"b": {"c": "deep"}}})), None);
        assert_eq!(ignored(&f, &headers(&[]), &serde_json::json!({"a": {"b": "deep"}})), Some(None));
    }

    #[test]
    fn answer_names_the_type() {
        let resp = ignored_answer(Some("issues"));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[IGNORED], "issues");
        assert!(ignored_answer(None).headers().get(IGNORED).is_none());
    }
}
