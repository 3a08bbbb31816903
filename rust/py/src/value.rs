//! JSON bytes parsed straight into Python objects by the core's parser, the one the ingress checks
//! bodies with (thread slots and worker processes alike).

use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parses JSON bytes with the ingress's parser (same grammar and limits) into Python objects.
// NOTE: straight into Python objects, without a `serde_json::Value` between: that tree cost about a
// fifth of a worker process's CPU per light event (perf). Same parser, same visits; dict fields in
// order, the last of duplicate fields in the first one's place (as `IndexMap::insert` and `json` do).
pub fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let mut de = serde_json::Deserializer::from_slice(data);
    PySeed(py)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| PyValueError::new_err(format!("invalid JSON: {e}")))
}

/// Builds the Python object of the JSON value being parsed.
#[derive(Clone, Copy)]
struct PySeed<'py>(Python<'py>);

fn py_err<E: de::Error>(e: PyErr) -> E {
    E::custom(e)
}

impl<'de, 'py> DeserializeSeed<'de> for PySeed<'py> {
    type Value = Bound<'py, PyAny>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'py> Visitor<'de> for PySeed<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, b).to_owned().into_any())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let Ok(n) = v.into_pyobject(self.0);
        Ok(n.into_any())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let Ok(n) = v.into_pyobject(self.0);
        Ok(n.into_any())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        let Ok(n) = v.into_pyobject(self.0);
        Ok(n.into_any())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, s).into_any())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(self)? {
            list.append(item).map_err(py_err)?;
        }
        Ok(list.into_any())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(k) = map.next_key_seed(KeySeed(self.0))? {
            let v = map.next_value_seed(self)?;
            dict.set_item(k, v).map_err(py_err)?;
        }
        Ok(dict.into_any())
    }
}

/// An object's field name, as a Python `str`.
struct KeySeed<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for KeySeed<'py> {
    type Value = Bound<'py, PyString>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'py> Visitor<'de> for KeySeed<'py> {
    type Value = Bound<'py, PyString>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(field_name(self.0, s))
    }
}

// NOTE: field names repeat from one webhook to the next: a per-thread cache of them as Python strings
// (hash computed once; not interned: on some CPython 3.12 releases interned strings are immortal, and
// names come from clients) took the support bot's bodies from 1105 to 905 ns each (timeit, 200
// bodies; docs/design/code-notes.md).
/// Cached field names: longer ones are not cached.
const CACHED_NAME_MAX: usize = 64;
const NAME_CACHE_SIZE: usize = 512;

thread_local! {
    static NAMES: std::cell::RefCell<Vec<Option<(Box<str>, Py<PyString>)>>> =
        std::cell::RefCell::new((0..NAME_CACHE_SIZE).map(|_| None).collect());
}

/// The field name `s` as a Python `str`: from this thread's cache, or new (and cached).
fn field_name<'py>(py: Python<'py>, s: &str) -> Bound<'py, PyString> {
    if s.len() > CACHED_NAME_MAX {
        return PyString::new(py, s);
    }
    let slot = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        as usize
        % NAME_CACHE_SIZE;
    NAMES
        .try_with(|names| {
            // Busy only if building a name ran Python code that parses JSON (a finalizer): skip.
            let Ok(mut names) = names.try_borrow_mut() else { return PyString::new(py, s) };
            match &names[slot] {
                Some((name, obj)) if &**name == s => obj.bind(py).clone(),
                _ => {
                    let obj = PyString::new(py, s);
                    names[slot] = Some((s.into(), obj.clone().unbind()));
                    obj
                }
            }
        })
        .unwrap_or_else(|_| PyString::new(py, s))
}
