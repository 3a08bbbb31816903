//! One pass over a webhook body: checks that it is JSON and pulls out the ordering key.
//!
//! The body stays as bytes (it is parsed again, once, by the pipeline's language); here we only
//! validate it and read one top-level field, without building a document tree.
//!
//! Validation visits every value (`Valid`), not serde's `IgnoredAny`: serde_json skips ignored
//! values without its nesting limit and without converting numbers, so a 100,000-deep array or a
//! 100,000-digit number would pass here and fail in the pipeline's parser. Visiting them applies
//! serde_json's limits: nesting deeper than 128 levels and numbers outside the `f64` range are
//! invalid JSON (orjson, the Python side, refuses the same numbers and nests up to 1024).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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

/// Validates `body` as one JSON value and returns the value of top-level field `key_field`
/// (strings as-is, numbers and booleans as their JSON text; missing or null gives `None`).
pub fn scan(body: &[u8], key_field: Option<&str>) -> Result<Option<String>, EventError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let key = match key_field {
        Some(field) => FindKey { field }.deserialize(&mut de),
        None => Valid::deserialize(&mut de).map(|_| Ok(None)),
    }
    .map_err(|e| EventError::InvalidJson(e.to_string()))?;
    de.end().map_err(|e| EventError::InvalidJson(e.to_string()))?;
    key.map_err(|found| EventError::BadKey { field: key_field.unwrap_or_default().to_string(), found })
}

use serde::Deserialize;

/// Visits the top-level value; for an object, captures the field named `field`.
struct FindKey<'f> {
    field: &'f str,
}

type KeyResult = Result<Option<String>, &'static str>;

impl<'de> DeserializeSeed<'de> for FindKey<'_> {
    type Value = KeyResult;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KeyResult, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FindKey<'_> {
    type Value = KeyResult;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyResult, A::Error> {
        let mut found: KeyResult = Ok(None);
        while let Some(is_key) = map.next_key_seed(IsField(self.field))? {
            if is_key {
                // Like Python's json, the last duplicate wins.
                found = map.next_value::<KeyValue>()?.0;
            } else {
                map.next_value::<Valid>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyResult, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Ok(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<KeyResult, E> {
        Ok(Ok(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<KeyResult, E> {
        Ok(Ok(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<KeyResult, E> {
        Ok(Ok(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<KeyResult, E> {
        Ok(Ok(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<KeyResult, E> {
        Ok(Ok(None))
    }
    fn visit_unit<E>(self) -> Result<KeyResult, E> {
        Ok(Ok(None))
    }
}

/// Compares an object key with the wanted field without allocating (borrowed or unescaped).
struct IsField<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for IsField<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for IsField<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

struct KeyValue(KeyResult);

impl<'de> Deserialize<'de> for KeyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyValueVisitor)
    }
}

struct KeyValueVisitor;

impl<'de> Visitor<'de> for KeyValueVisitor {
    type Value = KeyValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key value")
    }
    fn visit_str<E>(self, v: &str) -> Result<KeyValue, E> {
        Ok(KeyValue(Ok(Some(v.to_owned()))))
    }
    fn visit_i64<E>(self, v: i64) -> Result<KeyValue, E> {
        Ok(KeyValue(Ok(Some(v.to_string()))))
    }
    fn visit_u64<E>(self, v: u64) -> Result<KeyValue, E> {
        Ok(KeyValue(Ok(Some(v.to_string()))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<KeyValue, E> {
        Ok(KeyValue(Ok(Some(serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string())))))
    }
    fn visit_bool<E>(self, v: bool) -> Result<KeyValue, E> {
        Ok(KeyValue(Ok(Some(v.to_string()))))
    }
    fn visit_unit<E>(self) -> Result<KeyValue, E> {
        Ok(KeyValue(Ok(None)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyValue, A::Error> {
        while map.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(KeyValue(Err("an object")))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyValue, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(KeyValue(Err("an array")))
    }
}

/// Any JSON value, visited (so that serde_json checks nesting depth and number range) and dropped.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValidVisitor)
    }
}

struct ValidVisitor;

impl<'de> Visitor<'de> for ValidVisitor {
    type Value = Valid;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while map.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
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

        /// The key found is the top-level field's value as text; other shapes have no key.
        #[test]
        fn finds_the_top_level_key(mut fields in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..6), key in json_value()) {
            fields.insert("user".into(), key.clone());
            let body = serde_json::to_vec(&Value::Object(fields.into_iter().collect::<Map<_, _>>())).unwrap();
            let got = scan(&body, Some("user"));
            match key {
                Value::Null => prop_assert_eq!(got, Ok(None)),
                Value::String(s) => prop_assert_eq!(got, Ok(Some(s))),
                Value::Bool(b) => prop_assert_eq!(got, Ok(Some(b.to_string()))),
                Value::Number(n) => prop_assert_eq!(got, Ok(Some(n.to_string()))),
                Value::Array(_) => prop_assert_eq!(got.map_err(found), Err("an array")),
                Value::Object(_) => prop_assert_eq!(got.map_err(found), Err("an object")),
            }
        }
    }
}
