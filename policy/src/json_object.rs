//! A JSON object parsed one level deep: its keys in order, each value kept as the exact bytes
//! the client sent.
//!
//! Gantry rewrites a handful of top-level fields (`model`, `stream_options`, `usage`) and must
//! pass everything else through untouched, including fields it has never heard of and number
//! formats a full parse would normalise. Parsing one level deep is also cheaper than building a
//! whole `serde_json::Value` tree for a large prompt.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The top level of a JSON object.
#[derive(Debug, Default)]
pub struct RawObject {
    entries: Vec<(String, Box<RawValue>)>,
}

/// Why bytes are not a usable JSON object.
#[derive(Debug, thiserror::Error)]
pub enum RawObjectError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl RawObject {
    pub fn parse(bytes: &[u8]) -> Result<RawObject, RawObjectError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Sets `key` to `value` (serialised), keeping its position when it exists.
    pub fn set<T: serde::Serialize>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        let raw = serde_json::value::to_raw_value(value)?;
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = raw,
            None => self.entries.push((key.to_string(), raw)),
        }
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        before != self.entries.len()
    }

    /// Compact serialisation; values are written back byte for byte.
    pub fn to_vec(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'{');
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Serialising a str cannot fail.
            let _ = serde_json::to_writer(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut entries: Vec<(String, Box<RawValue>)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    // Parsers disagree on which copy of a repeated key wins (serde_json and
                    // most providers take the last, a naive lookup the first): a body with two
                    // `model` or `messages` fields could show Gantry one value and the
                    // provider another. Refuse it.
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate field '{key}' in the request object"
                        )));
                    }
                    entries.push((key, value));
                }
                Ok(RawObject { entries })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_one_field_and_keeps_the_rest_byte_for_byte() {
        let mut obj = RawObject::parse(
            br#"{"model":"fast","x":1.50,"nested":{"b":2,"a":[1, 2]},"z":"\u00e9"}"#,
        )
        .unwrap();
        obj.set("model", &"gpt-4o").unwrap();
        assert_eq!(
            String::from_utf8(obj.to_vec()).unwrap(),
            r#"{"model":"gpt-4o","x":1.50,"nested":{"b":2,"a":[1, 2]},"z":"\u00e9"}"#
        );
        assert!(obj.remove("x"));
        assert!(!obj.remove("x"));
        obj.set("added", &true).unwrap();
        assert!(String::from_utf8(obj.to_vec())
            .unwrap()
            .ends_with(r#","added":true}"#));
    }

    #[test]
    fn rejects_non_objects_and_broken_json() {
        assert!(RawObject::parse(b"[1,2]").is_err());
        assert!(RawObject::parse(b"{\"a\":").is_err());
        assert!(RawObject::parse(b"").is_err());
    }

    #[test]
    fn refuses_repeated_top_level_keys() {
        let error = RawObject::parse(br#"{"model":"a","messages":[],"model":"b"}"#).unwrap_err();
        assert!(
            error.to_string().contains("duplicate field 'model'"),
            "{error}"
        );
        // Nested objects are the provider's business, passed through as they are.
        assert!(RawObject::parse(br#"{"a":{"x":1,"x":2}}"#).is_ok());
    }
}
