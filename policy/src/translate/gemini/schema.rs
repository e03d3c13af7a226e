//! OpenAI's JSON Schema (tool `parameters`, `response_format.json_schema.schema`) to the
//! subset of OpenAPI 3.0 that Gemini's `Schema` accepts.
//!
//! Gemini rejects a request whose schema carries a field it does not know, so the conversion
//! keeps only Gemini's fields (<https://ai.google.dev/api/caching#Schema>): `type` (upper-case
//! `STRING`, `NUMBER`, `INTEGER`, `BOOLEAN`, `ARRAY`, `OBJECT`), `format`, `title`,
//! `description`, `nullable`, `enum` (strings), `items`, `minItems`, `maxItems`, `properties`,
//! `required`, `minProperties`, `maxProperties`, `propertyOrdering`, `minLength`, `maxLength`,
//! `pattern`, `minimum`, `maximum`, `anyOf`, `default`, `example`.
//!
//! Rewritten: `type: [T, "null"]` and `anyOf: [S, {"type": "null"}]` become `nullable: true`;
//! `oneOf` becomes `anyOf`; `const` becomes a one-value `enum`; non-string `enum` values become
//! strings; local `$ref`s (`#/$defs/..`, `#/definitions/..`) are inlined (a recursive one is
//! refused past [`MAX_REF_DEPTH`]); `allOf` is merged into one schema; `examples` gives its
//! first value to `example`; `required` keeps only names that are `properties`.
//!
//! Dropped (Gemini refuses them): `additionalProperties`, `$schema`, `$id`, `$defs`,
//! `definitions`, `$comment`, `strict`, `patternProperties`, `unevaluatedProperties`,
//! `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`, `uniqueItems`, `not`, `if`/`then`/
//! `else`, `readOnly`, `writeOnly`, `deprecated`, and every other keyword; a string `format`
//! other than `enum` and `date-time` and a number `format` other than `float`, `double`,
//! `int32`, `int64` (the Gemini Developer API accepts only these:
//! <https://firebase.google.com/docs/reference/js/ai.schemashared>).

use serde_json::{Map, Value};

use crate::translate::TranslateError;

/// How deep `$ref`s are followed; deeper means a recursive schema, which Gemini's `Schema`
/// cannot express.
pub(super) const MAX_REF_DEPTH: usize = 16;

/// Converts `schema` (found at `param` in the client's request).
pub(super) fn to_gemini(schema: &Value, param: &str) -> Result<Value, TranslateError> {
    let defs = Definitions::of(schema);
    Converter { defs, param }.convert(schema, 0)
}

/// Whether a converted schema is an object without properties: Gemini refuses
/// `{"type": "OBJECT"}` as function parameters ("properties: should be non-empty for OBJECT
/// type"), so such parameters are left out (a function without arguments).
pub(super) fn is_empty_object(schema: &Value) -> bool {
    let Some(object) = schema.as_object() else {
        return true;
    };
    let no_properties = object
        .get("properties")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    let object_type = object.get("type").and_then(Value::as_str) == Some("OBJECT");
    let other_keys = object.keys().any(|key| {
        !matches!(
            key.as_str(),
            "type" | "properties" | "required" | "description" | "title"
        )
    });
    no_properties && (object_type || object.is_empty()) && !other_keys
}

struct Definitions<'a> {
    defs: Option<&'a Map<String, Value>>,
    definitions: Option<&'a Map<String, Value>>,
}

impl<'a> Definitions<'a> {
    fn of(root: &'a Value) -> Definitions<'a> {
        Definitions {
            defs: root.get("$defs").and_then(Value::as_object),
            definitions: root.get("definitions").and_then(Value::as_object),
        }
    }

    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        if let Some(name) = reference.strip_prefix("#/$defs/") {
            return self.defs?.get(&unescape_pointer(name));
        }
        if let Some(name) = reference.strip_prefix("#/definitions/") {
            return self.definitions?.get(&unescape_pointer(name));
        }
        None
    }
}

/// JSON Pointer unescaping of one reference token (`~1` is `/`, `~0` is `~`).
fn unescape_pointer(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

struct Converter<'a> {
    defs: Definitions<'a>,
    param: &'a str,
}

impl Converter<'_> {
    fn refuse(&self, message: impl Into<String>) -> TranslateError {
        TranslateError::new(self.param, message)
    }

    fn convert(&self, schema: &Value, depth: usize) -> Result<Value, TranslateError> {
        let object = match schema {
            Value::Object(object) => object,
            // `true` (anything) has no Gemini equivalent narrower than "no constraint".
            Value::Bool(true) => return Ok(Value::Object(Map::new())),
            _ => return Err(self.refuse("a JSON Schema must be an object")),
        };
        if let Some(reference) = object.get("$ref") {
            let target = reference
                .as_str()
                .and_then(|reference| self.defs.resolve(reference))
                .ok_or_else(|| {
                    self.refuse(format!(
                        "only local $ref to #/$defs or #/definitions can be sent to Gemini, not {reference}"
                    ))
                })?;
            if depth >= MAX_REF_DEPTH {
                return Err(
                    self.refuse("a recursive schema ($ref) cannot be expressed in Gemini's Schema")
                );
            }
            let mut resolved = self.convert(target, depth + 1)?;
            // Keywords beside the $ref (e.g. a description) refine the target.
            let mut siblings = object.clone();
            siblings.remove("$ref");
            if !siblings.is_empty() {
                let siblings = self.convert(&Value::Object(siblings), depth)?;
                merge_into(&mut resolved, siblings);
            }
            return Ok(resolved);
        }

        let mut out = Map::new();
        let mut nullable = object.get("nullable").and_then(Value::as_bool) == Some(true);

        // type: a string, or a list with "null" among the types.
        let mut types: Vec<String> = match object.get("type") {
            None => Vec::new(),
            Some(Value::String(name)) => vec![name.clone()],
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(self.refuse("a schema's type must be a string or a list")),
        };
        if types.iter().any(|name| name == "null") {
            nullable = true;
            types.retain(|name| name != "null");
        }
        let type_name = match types.as_slice() {
            [] => infer_type(object),
            [one] => Some(
                gemini_type(one)
                    .ok_or_else(|| self.refuse(format!("unknown JSON Schema type {one:?}")))?,
            ),
            many => {
                // Several types: one `anyOf` branch per type.
                let mut branches = Vec::new();
                for name in many {
                    let name = gemini_type(name)
                        .ok_or_else(|| self.refuse(format!("unknown JSON Schema type {name:?}")))?;
                    branches.push(serde_json::json!({ "type": name }));
                }
                out.insert("anyOf".into(), Value::Array(branches));
                None
            }
        };
        if let Some(type_name) = type_name {
            out.insert("type".into(), Value::String(type_name.into()));
        }

        for key in ["title", "description", "pattern", "default", "example"] {
            if let Some(value) = object.get(key) {
                out.insert(key.into(), value.clone());
            }
        }
        if !out.contains_key("example") {
            if let Some(first) = object
                .get("examples")
                .and_then(Value::as_array)
                .and_then(|examples| examples.first())
            {
                out.insert("example".into(), first.clone());
            }
        }
        for key in [
            "minItems",
            "maxItems",
            "minProperties",
            "maxProperties",
            "minLength",
            "maxLength",
            "minimum",
            "maximum",
        ] {
            if let Some(value) = object.get(key).filter(|value| value.is_number()) {
                out.insert(key.into(), value.clone());
            }
        }
        if let Some(ordering) = object.get("propertyOrdering").and_then(Value::as_array) {
            out.insert("propertyOrdering".into(), Value::Array(ordering.clone()));
        }
        if let Some(format) = object.get("format").and_then(Value::as_str) {
            let kept = match out.get("type").and_then(Value::as_str) {
                Some("STRING") => matches!(format, "enum" | "date-time"),
                Some("NUMBER") => matches!(format, "float" | "double"),
                Some("INTEGER") => matches!(format, "int32" | "int64"),
                _ => false,
            };
            if kept {
                out.insert("format".into(), Value::String(format.into()));
            }
        }

        // enum / const: Gemini's enum holds strings.
        let mut values: Vec<&Value> = Vec::new();
        if let Some(constant) = object.get("const") {
            values.push(constant);
        } else if let Some(list) = object.get("enum") {
            let list = list
                .as_array()
                .ok_or_else(|| self.refuse("enum must be a list"))?;
            values.extend(list);
        }
        if object.contains_key("const") || object.contains_key("enum") {
            let mut strings = Vec::new();
            for value in values {
                match value {
                    Value::Null => nullable = true,
                    Value::String(text) => strings.push(Value::String(text.clone())),
                    Value::Number(_) | Value::Bool(_) => {
                        strings.push(Value::String(value.to_string()))
                    }
                    Value::Array(_) | Value::Object(_) => {
                        return Err(self.refuse("enum values must be strings, numbers or booleans"))
                    }
                }
            }
            out.entry("type")
                .or_insert_with(|| Value::String("STRING".into()));
            out.insert("enum".into(), Value::Array(strings));
        }

        if let Some(properties) = object.get("properties") {
            let properties = properties
                .as_object()
                .ok_or_else(|| self.refuse("properties must be an object"))?;
            let mut converted = Map::new();
            for (name, property) in properties {
                converted.insert(name.clone(), self.convert(property, depth)?);
            }
            if let Some(required) = object.get("required").and_then(Value::as_array) {
                let required: Vec<Value> = required
                    .iter()
                    .filter(|name| {
                        name.as_str()
                            .is_some_and(|name| converted.contains_key(name))
                    })
                    .cloned()
                    .collect();
                if !required.is_empty() {
                    out.insert("required".into(), Value::Array(required));
                }
            }
            out.insert("properties".into(), Value::Object(converted));
        }

        match object.get("items") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Array(tuple)) => {
                // Tuple form: any of the listed item schemas.
                let mut branches = Vec::new();
                for item in tuple {
                    branches.push(self.convert(item, depth)?);
                }
                out.insert("items".into(), serde_json::json!({ "anyOf": branches }));
            }
            Some(items) => {
                out.insert("items".into(), self.convert(items, depth)?);
            }
        }

        // anyOf / oneOf, with a {"type": "null"} branch turned into nullable.
        let branches = object.get("anyOf").or_else(|| object.get("oneOf"));
        if let Some(branches) = branches {
            let branches = branches
                .as_array()
                .ok_or_else(|| self.refuse("anyOf and oneOf must be lists"))?;
            let mut converted = Vec::new();
            for branch in branches {
                if is_null_schema(branch) {
                    nullable = true;
                } else {
                    converted.push(self.convert(branch, depth)?);
                }
            }
            match converted.len() {
                0 => {}
                1 => {
                    // One real branch: the schema is that branch (its own keywords first).
                    let mut combined = Value::Object(std::mem::take(&mut out));
                    if let Some(only) = converted.pop() {
                        merge_into(&mut combined, only);
                    }
                    out = into_map(combined);
                }
                _ => {
                    out.insert("anyOf".into(), Value::Array(converted));
                }
            }
        }

        if let Some(all) = object.get("allOf") {
            let all = all
                .as_array()
                .ok_or_else(|| self.refuse("allOf must be a list"))?;
            let mut combined = Value::Object(out);
            for part in all {
                let part = self.convert(part, depth)?;
                merge_into(&mut combined, part);
            }
            out = into_map(combined);
        }

        if nullable {
            out.insert("nullable".into(), Value::Bool(true));
        }
        Ok(Value::Object(out))
    }
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(object) => object,
        _ => Map::new(),
    }
}

/// Adds `extra`'s keywords to `target`: properties and required lists are unioned; for any
/// other keyword the value already in `target` wins.
fn merge_into(target: &mut Value, extra: Value) {
    let (Value::Object(target), Value::Object(extra)) = (target, extra) else {
        return;
    };
    for (key, value) in extra {
        match (key.as_str(), target.get_mut(&key), value) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (name, property) in theirs {
                    mine.entry(name).or_insert(property);
                }
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for name in theirs {
                    if !mine.contains(&name) {
                        mine.push(name);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, value) => {
                target.insert(key, value);
            }
        }
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
        && schema.as_object().is_some_and(|object| {
            object
                .keys()
                .all(|key| matches!(key.as_str(), "type" | "title" | "description"))
        })
}

fn gemini_type(json_schema_type: &str) -> Option<&'static str> {
    Some(match json_schema_type {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        // Already in Gemini's spelling.
        "STRING" => "STRING",
        "NUMBER" => "NUMBER",
        "INTEGER" => "INTEGER",
        "BOOLEAN" => "BOOLEAN",
        "ARRAY" => "ARRAY",
        "OBJECT" => "OBJECT",
        _ => return None,
    })
}

/// The type a schema without `type` implies by its keywords, if any.
fn infer_type(object: &Map<String, Value>) -> Option<&'static str> {
    if object.contains_key("properties") {
        Some("OBJECT")
    } else if object.contains_key("items") {
        Some("ARRAY")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert(schema: Value) -> Value {
        to_gemini(&schema, "tools[0].function.parameters").unwrap()
    }

    #[test]
    fn drops_what_gemini_rejects() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:x",
            "$comment": "generated",
            "title": "Search",
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^<>]*$", "format": "uri"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "exclusiveMaximum": 51, "multipleOf": 1, "default": 10, "format": "int32"},
                "score": {"type": "number", "format": "double"},
                "since": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 0, "maxItems": 5, "uniqueItems": true},
                "filters": {"type": "object", "additionalProperties": {"type": "string"}, "patternProperties": {"^x-": {}}}
            },
            "required": ["query", "not_a_property"],
            "additionalProperties": false,
            "unevaluatedProperties": false,
            "examples": [{"query": "rust"}]
        });
        assert_eq!(
            convert(schema),
            json!({
                "type": "OBJECT",
                "title": "Search",
                "example": {"query": "rust"},
                "properties": {
                    "query": {"type": "STRING", "pattern": "^[^<>]*$", "minLength": 1, "maxLength": 200},
                    "limit": {"type": "INTEGER", "default": 10, "minimum": 1, "maximum": 50, "format": "int32"},
                    "score": {"type": "NUMBER", "format": "double"},
                    "since": {"type": "STRING", "format": "date-time"},
                    "tags": {"type": "ARRAY", "minItems": 0, "maxItems": 5, "items": {"type": "STRING"}},
                    "filters": {"type": "OBJECT"}
                },
                "required": ["query"]
            })
        );
    }

    #[test]
    fn nullable_unions_and_constants() {
        assert_eq!(
            convert(
                json!({"anyOf": [{"type": "string", "description": "a name"}, {"type": "null"}], "description": "optional name"})
            ),
            json!({"description": "optional name", "type": "STRING", "nullable": true})
        );
        assert_eq!(
            convert(json!({"oneOf": [{"type": "string"}, {"type": "integer"}]})),
            json!({"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]})
        );
        assert_eq!(
            convert(json!({"type": ["integer", "string"]})),
            json!({"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]})
        );
        assert_eq!(
            convert(json!({"const": "fixed"})),
            json!({"type": "STRING", "enum": ["fixed"]})
        );
        assert_eq!(
            convert(json!({"type": "integer", "enum": [1, 2, 3]})),
            json!({"type": "INTEGER", "enum": ["1", "2", "3"]})
        );
        assert_eq!(convert(json!(true)), json!({}));
    }

    #[test]
    fn local_refs_are_inlined() {
        let schema = json!({
            "type": "object",
            "$defs": {
                "Address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}}, "required": ["street"], "additionalProperties": false}
            },
            "definitions": {"Unit": {"type": "string", "enum": ["c", "f"]}},
            "properties": {
                "home": {"$ref": "#/$defs/Address", "description": "where they live"},
                "unit": {"$ref": "#/definitions/Unit"}
            }
        });
        assert_eq!(
            convert(schema),
            json!({
                "type": "OBJECT",
                "properties": {
                    "home": {
                        "type": "OBJECT",
                        "properties": {"street": {"type": "STRING"}, "zip": {"type": "STRING"}},
                        "required": ["street"],
                        "description": "where they live"
                    },
                    "unit": {"type": "STRING", "enum": ["c", "f"]}
                }
            })
        );
    }

    #[test]
    fn all_of_merges() {
        let schema = json!({"allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}
        ]});
        assert_eq!(
            convert(schema),
            json!({
                "type": "OBJECT",
                "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}},
                "required": ["a", "b"]
            })
        );
    }

    #[test]
    fn refusals() {
        let recursive = json!({
            "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
            "$ref": "#/$defs/Node"
        });
        let error = to_gemini(&recursive, "tools[2].function.parameters").unwrap_err();
        assert_eq!(error.param.as_deref(), Some("tools[2].function.parameters"));
        assert!(error.message.contains("recursive"), "{}", error.message);
        assert!(to_gemini(&json!({"$ref": "https://example.com/s.json"}), "p").is_err());
        assert!(to_gemini(&json!({"type": "decimal"}), "p").is_err());
        assert!(to_gemini(&json!("string"), "p").is_err());
    }

    #[test]
    fn empty_objects() {
        assert!(is_empty_object(&convert(
            json!({"type": "object", "properties": {}})
        )));
        assert!(is_empty_object(&convert(json!({"type": "object"}))));
        assert!(is_empty_object(&json!({})));
        assert!(!is_empty_object(&convert(
            json!({"type": "object", "properties": {"a": {"type": "string"}}})
        )));
        assert!(!is_empty_object(&convert(json!({"type": "string"}))));
    }
}
