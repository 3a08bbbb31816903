//! One pass over a webhook body at the ingress: checks it and pulls out the ordering key.
//!
//! The ingress only checks the body and finds its key ([`scan`], no document built; [`parse`]
//! builds one only for a pipeline that deduplicates by a body field). The slot (a thread slot, or
//! a worker process) parses the same bytes with the same parser straight into Python objects. So
//! the ingress's check and the slot's parse accept exactly
//! the same inputs: serde_json's grammar, nesting up to 128 levels, numbers that fit an i64, u64
//! or finite f64 (a 100,000-digit number is refused here with 400 `invalid_json`).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    InvalidJson(String),
    /// The key field holds a value that cannot be a key (keys are strings or numbers).
    BadKey {
        field: String,
        found: &'static str,
    },
    /// A keyed pipeline's body is not a JSON object, so it has no key field.
    NotAnObject {
        field: String,
        found: &'static str,
    },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::InvalidJson(e) => write!(f, "request body is not valid JSON: {e}"),
            EventError::BadKey { field, found } => {
                write!(f, "key field {field:?} must be a string or a number, found {found}")
            }
            EventError::NotAnObject { field, found } => {
                write!(
                    f,
                    "the body must be a JSON object (the pipeline is keyed by its field {field:?}), found {found}"
                )
            }
        }
    }
}

/// Parses `body` as one JSON value and returns it with the value of top-level field `key_field`
/// (strings as-is, numbers as their JSON text; missing or null gives `None`; in an object with
/// duplicate fields the last one wins, as in Python's `json`). With a `key_field` the body must
/// be an object.
pub fn parse(body: &[u8], key_field: Option<&str>) -> Result<(Value, Option<String>), EventError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| EventError::InvalidJson(e.to_string()))?;
    let Some(field) = key_field else { return Ok((value, None)) };
    let Value::Object(map) = &value else {
        return Err(EventError::NotAnObject { field: field.into(), found: kind(&value) });
    };
    let key = match map.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(EventError::BadKey { field: field.into(), found: kind(other) }),
    };
    Ok((value, key))
}

/// What a JSON value is, as an error message names it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the ingress keeps of a body: the document and its key ([`parse`]) when `document` is true
/// (a dedupe field is read from it), else only the key ([`scan`]) with `Null` for the document.
pub fn check(body: &[u8], key_field: Option<&str>, document: bool) -> Result<(Value, Option<String>), EventError> {
    if document {
        parse(body, key_field)
    } else {
        scan(body, key_field).map(|key| (Value::Null, key))
    }
}

/// Validates `body` and returns only its key, as [`parse`] does, without building the document
/// (the slot parses the body itself, straight into Python objects).
// NOTE: the same parser makes the same visits as `parse`, so both accept exactly the same inputs
// and find the same key; `scan_agrees_with_parse` checks a corpus. Building a `Value` that no slot
// uses cost the I/O thread about 2 µs per light event (perf).
pub fn scan(body: &[u8], key_field: Option<&str>) -> Result<Option<String>, EventError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = KeyScan(key_field)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| EventError::InvalidJson(e.to_string()))?;
    let field = || key_field.unwrap_or_default().into();
    match found {
        Found::Key(key) => Ok(key),
        Found::Bad(found) => Err(EventError::BadKey { field: field(), found }),
        Found::NotAnObject(found) => Err(EventError::NotAnObject { field: field(), found }),
    }
}

/// What a document's key field held: a key (or none), or a value that cannot be one; or, for a
/// keyed pipeline, a document that is not an object.
enum Found {
    Key(Option<String>),
    Bad(&'static str),
    NotAnObject(&'static str),
}

/// Visits a whole document, keeping only its top-level field `.0`. `KeyScan(None)` parses a value
/// as `parse` does and drops it (the scan's nested values and skipped fields).
// NOTE: not serde's `IgnoredAny`: serde_json skips what it ignores without the checks of a real
// parse (string escapes and UTF-8, numbers out of range, nesting depth), and the ingress must
// refuse exactly what the slot cannot decode.
#[derive(Clone, Copy)]
struct KeyScan<'a>(Option<&'a str>);

/// Parses a value and drops it.
const SKIP: KeyScan<'static> = KeyScan(None);

impl KeyScan<'_> {
    /// A document that is not an object: no key, or (with a key field) an error.
    fn not_an_object(self, found: &'static str) -> Found {
        match self.0 {
            Some(_) => Found::NotAnObject(found),
            None => Found::Key(None),
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeyScan<'_> {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyScan<'_> {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(self.not_an_object("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Found, E> {
        Ok(self.not_an_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Found, E> {
        Ok(self.not_an_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Found, E> {
        Ok(self.not_an_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Found, E> {
        Ok(self.not_an_object("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(self.not_an_object("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element_seed(SKIP)?.is_some() {}
        Ok(self.not_an_object("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::Key(None);
        while let Some(is_key) = map.next_key_seed(IsField(self.0))? {
            if is_key {
                found = map.next_value_seed(KeyValue)?; // the last of duplicate fields wins
            } else {
                map.next_value_seed(SKIP)?;
            }
        }
        Ok(found)
    }
}

/// Whether a field name is the key field.
struct IsField<'a>(Option<&'a str>);

impl<'de> DeserializeSeed<'de> for IsField<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsField<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
        Ok(self.0 == Some(s))
    }
}

/// The key field's value, as `parse` turns it into a key.
struct KeyValue;

impl<'de> DeserializeSeed<'de> for KeyValue {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyValue {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(Found::Bad("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Found, E> {
        Ok(Found::Key(Some(serde_json::Number::from(v).to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Found, E> {
        Ok(Found::Key(Some(serde_json::Number::from(v).to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Found, E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Found::Key(Some(n.to_string()))),
            None => Err(E::custom("number out of range")), // the parser gives only finite numbers
        }
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Found, E> {
        Ok(Found::Key(Some(s.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::Key(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element_seed(SKIP)?.is_some() {}
        Ok(Found::Bad("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        while map.next_key_seed(SKIP)?.is_some() {
            map.next_value_seed(SKIP)?;
        }
        Ok(Found::Bad("an object"))
    }
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
        assert_eq!(scan(br#""just a string""#, None), Ok(None));
        assert_eq!(scan(br#"[1,2,3]"#, None), Ok(None), "an unkeyed pipeline takes any JSON value");
    }

    #[test]
    fn a_keyed_body_must_be_an_object() {
        for (body, found) in
            [(&b"[1,2,3]"[..], "an array"), (b"\"s\"", "a string"), (b"7", "a number"), (b"null", "null")]
        {
            let err = scan(body, Some("user")).unwrap_err();
            assert_eq!(err, EventError::NotAnObject { field: "user".into(), found });
            assert_eq!(parse(body, Some("user")).unwrap_err(), err, "parse agrees");
        }
        let err = scan(b"[]", Some("user")).unwrap_err().to_string();
        assert_eq!(err, "the body must be a JSON object (the pipeline is keyed by its field \"user\"), found an array");
    }

    #[test]
    fn a_boolean_is_not_a_key() {
        for body in [&br#"{"user":true}"#[..], br#"{"user":false}"#] {
            let err = scan(body, Some("user")).unwrap_err();
            assert_eq!(err, EventError::BadKey { field: "user".into(), found: "a boolean" });
            assert_eq!(parse(body, Some("user")).unwrap_err(), err, "parse agrees");
        }
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
    fn rejects_what_the_python_parser_rejects() {
        let deep = |n: usize| [vec![b'['; n], vec![b']'; n]].concat();
        assert_eq!(scan(&deep(100), None), Ok(None));
        let huge_int = [&b"{\"n\":"[..], &vec![b'9'; 100_000], b"}"].concat();
        let bad: [&[u8]; 6] = [&deep(129), &deep(100_000), &huge_int, b"1e999", b"{\"a\":\"\xff\"}", b"\"\\ud800\""];
        for body in bad {
            assert!(matches!(scan(body, None), Err(EventError::InvalidJson(_))), "{:?}", &body[..body.len().min(20)]);
            assert!(matches!(scan(body, Some("user")), Err(EventError::InvalidJson(_))));
        }
        // Deep values beside the key, or inside it, are checked too.
        let beside = [&b"{\"user\":\"u\",\"x\":"[..], &deep(200), b"}"].concat();
        assert!(matches!(scan(&beside, Some("user")), Err(EventError::InvalidJson(_))));
        let inside = [&b"{\"user\":"[..], &deep(200), b"}"].concat();
        assert!(matches!(scan(&inside, Some("user")), Err(EventError::InvalidJson(_))));
        // Big integers become floats on both sides: accepted.
        assert_eq!(scan(b"{\"user\":18446744073709551616}", Some("user")), Ok(Some("1.8446744073709552e+19".into())));
    }

    #[test]
    fn object_key_is_a_clear_error() {
        let err = scan(br#"{"user":{"id":1}}"#, Some("user")).unwrap_err();
        assert_eq!(err.to_string(), "key field \"user\" must be a string or a number, found an object");
    }
}

/// Property tests (proptest). `cargo test` runs 256 cases per property; a longer run:
/// `PROPTEST_CASES=100000 cargo test -p warmslot-core --release props` (see docs/fuzzing.md).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Number, Value};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn found(e: EventError) -> &'static str {
        match e {
            EventError::BadKey { found, .. } => found,
            EventError::NotAnObject { found, .. } => found,
            EventError::InvalidJson(_) => "invalid json",
        }
    }

    /// Bytes that are often almost JSON: a JSON text with a few bytes changed, cut or added.
    fn mangled_json() -> impl Strategy<Value = Vec<u8>> {
        (json_value(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..4)).prop_map(
            |(v, edits)| {
                let mut bytes = serde_json::to_vec(&v).unwrap();
                for (at, byte, op) in edits {
                    let i = at.index(bytes.len() + 1);
                    match op {
                        0 if i < bytes.len() => bytes[i] = byte,
                        1 => bytes.insert(i, byte),
                        _ => bytes.truncate(i),
                    }
                }
                bytes
            },
        )
    }

    proptest! {
        /// The ingress accepts exactly what a full JSON parse with the same limits accepts, and
        /// whether a body is valid does not depend on the key field asked for.
        #[test]
        fn valid_iff_serde_json_parses(body in prop_oneof![mangled_json(), prop::collection::vec(any::<u8>(), 0..64)]) {
            let parsed = serde_json::from_slice::<Value>(&body).is_ok();
            let unkeyed = scan(&body, None);
            prop_assert_eq!(unkeyed.is_ok(), parsed);
            match scan(&body, Some("user")) {
                Err(EventError::InvalidJson(_)) => prop_assert!(!parsed),
                _ => prop_assert!(parsed),
            }
        }

        /// `scan` (no document built) and `parse` accept the same bodies, fail with the same
        /// message and find the same key, duplicate key fields included (the last one wins).
        #[test]
        fn scan_agrees_with_parse(
            body in prop_oneof![mangled_json(), prop::collection::vec(any::<u8>(), 0..64)],
            first in json_value(),
            second in json_value(),
        ) {
            let dup = format!(
                r#"{{"user":{},"x":[1,{{"user":2}}],"user":{}}}"#,
                serde_json::to_string(&first).unwrap(),
                serde_json::to_string(&second).unwrap()
            );
            for b in [&body[..], dup.as_bytes()] {
                for field in [None, Some("user")] {
                    prop_assert_eq!(scan(b, field), parse(b, field).map(|(_, k)| k));
                }
            }
        }

        /// The key found is the top-level string or number as text; null is no key; other values are errors.
        #[test]
        fn finds_the_top_level_key(mut fields in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..6), key in json_value()) {
            fields.insert("user".into(), key.clone());
            let body = serde_json::to_vec(&Value::Object(fields.into_iter().collect::<Map<_, _>>())).unwrap();
            let got = scan(&body, Some("user"));
            match key {
                Value::Null => prop_assert_eq!(got, Ok(None)),
                Value::String(s) => prop_assert_eq!(got, Ok(Some(s))),
                Value::Bool(_) => prop_assert_eq!(got.map_err(found), Err("a boolean")),
                Value::Number(n) => prop_assert_eq!(got, Ok(Some(n.to_string()))),
                Value::Array(_) => prop_assert_eq!(got.map_err(found), Err("an array")),
                Value::Object(_) => prop_assert_eq!(got.map_err(found), Err("an object")),
            }
        }
    }
}
