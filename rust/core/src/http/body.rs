//! One pass over a webhook body: parses it (once) and pulls out the ordering key.
//!
//! The parsed document travels with the event to the slot, which hands it to the pipeline as it
//! is (the thread backend converts it straight into Python objects); worker processes parse the
//! same bytes with the same parser. So the ingress's check and the slot's parse accept exactly
//! the same inputs: serde_json's grammar, nesting up to 128 levels, numbers that fit an i64, u64
//! or finite f64 (a 100,000-digit number is refused here with 400 `invalid_json`).

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    InvalidJson(String),
    BadKey { field: String, found: &'static str },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::InvalidJson(e) => write!(f, "request body is not valid JSON: {e}"),
            EventError::BadKey { field, found } => {
                write!(f, "key field {field:?} must be a string or a number, found {found}")
            }
        }
    }
}

/// Parses `body` as one JSON value and returns it with the value of top-level field `key_field`
/// (strings as-is, numbers and booleans as their JSON text; missing or null gives `None`; in an
/// object with duplicate fields the last one wins, as in Python's `json`).
pub fn parse(body: &[u8], key_field: Option<&str>) -> Result<(Value, Option<String>), EventError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| EventError::InvalidJson(e.to_string()))?;
    let key = match (key_field, &value) {
        (Some(field), Value::Object(map)) => match map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(Value::Object(_)) => return Err(EventError::BadKey { field: field.into(), found: "an object" }),
            Some(Value::Array(_)) => return Err(EventError::BadKey { field: field.into(), found: "an array" }),
        },
        _ => None,
    };
    Ok((value, key))
}

/// Validates `body` and returns only its key (see [`parse`]).
pub fn scan(body: &[u8], key_field: Option<&str>) -> Result<Option<String>, EventError> {
    parse(body, key_field).map(|(_, key)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_string_and_number_keys() {
        assert_eq!(scan(br#"{"a":1,"user":"bob","z":[1,{"user":"x"}]}"#, Some("user")), Ok(Some("bob".into())));
        assert_eq!(scan(br#"{"user":42}"#, Some("user")), Ok(Some("42".into())));
        assert_eq!(scan(br#"{"us\u0065r":"esc"}"#, Some("user")), Ok(Some("esc".into())));
        assert_eq!(scan(br#"{"user":"a","user":"b"}"#, Some("user")), Ok(Some("b".into())));
    }

    #[test]
    fn missing_or_null_key_is_none() {
        assert_eq!(scan(br#"{"text":"hi"}"#, Some("user")), Ok(None));
        assert_eq!(scan(br#"{"user":null}"#, Some("user")), Ok(None));
        assert_eq!(scan(br#"[1,2,3]"#, Some("user")), Ok(None));
        assert_eq!(scan(br#""just a string""#, None), Ok(None));
    }

    #[test]
    fn rejects_invalid_json_and_trailing_garbage() {
        for bad in [&b"{"[..], b"{\"a\":}", b"", b"{} x", b"nul", b"{\"a\":1,}"] {
            assert!(matches!(scan(bad, Some("a")), Err(EventError::InvalidJson(_))), "{:?}", bad);
            assert!(matches!(scan(bad, None), Err(EventError::InvalidJson(_))), "{:?}", bad);
        }
    }

    #[test]
    fn refuses_what_the_slot_could_not_decode() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(scan(deep.as_bytes(), None), Err(EventError::InvalidJson(_))));
        let huge = format!("{{\"n\":{}}}", "9".repeat(100_000));
        assert!(matches!(scan(huge.as_bytes(), None), Err(EventError::InvalidJson(_))));
        assert!(matches!(scan(b"{\"a\":\"\xff\"}", None), Err(EventError::InvalidJson(_))));
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(scan(ok.as_bytes(), None).is_ok());
    }

    #[test]
    fn keeps_field_order() {
        let (v, _) = parse(br#"{"z":1,"a":2,"m":3}"#, None).unwrap();
        assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["z", "a", "m"]);
    }

    #[test]
    fn object_key_is_a_clear_error() {
        let err = scan(br#"{"user":{"id":1}}"#, Some("user")).unwrap_err();
        assert_eq!(err.to_string(), "key field \"user\" must be a string or a number, found an object");
    }
}
