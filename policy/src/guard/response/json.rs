//! Response guards over a whole JSON reply, and the surgical JSON rewrite that both the reply
//! and rewritten stream events use.

use crate::guard::GuardSelection;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{log_hit, rejection_reply, ResponseGuards, ResponseVerdict};
use crate::json_object::RawObject;
use crate::openai_api::LlmApi;

/// One step of a path into a JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seg {
    Key(&'static str),
    Index(usize),
}

/// One assistant text of a reply: where it is (for hits) and how to reach it (to rewrite it).
struct ReplyText<'v> {
    location: String,
    path: Vec<Seg>,
    text: &'v str,
}

impl ResponseGuards {
    /// Runs the response guards over the assistant text of a JSON reply to an `api` request
    /// (see the [module docs](super) for the fields). A body that is not JSON, or has no
    /// such fields, is [`ResponseVerdict::Unchanged`] with no hits.
    pub fn check_json(&self, api: LlmApi, body: &[u8]) -> ResponseVerdict {
        self.check_json_selected(api, body, &GuardSelection::all())
    }

    /// [`ResponseGuards::check_json`] with only the guards `selection` leaves on.
    pub fn check_json_selected(
        &self,
        api: LlmApi,
        body: &[u8],
        selection: &GuardSelection,
    ) -> ResponseVerdict {
        let unchanged = || ResponseVerdict::Unchanged { hits: Vec::new() };
        if self.is_empty() || api == LlmApi::Embeddings {
            return unchanged();
        }
        let Ok(raw) = std::str::from_utf8(body) else {
            tracing::debug!("response guards: the reply is not UTF-8; passed on unchecked");
            return unchanged();
        };
        let value: Value = match serde_json::from_str(raw) {
            Ok(value) => value,
            Err(error) => {
                tracing::debug!(%error, "response guards: the reply is not JSON; passed on unchecked");
                return unchanged();
            }
        };
        let mut texts = Vec::new();
        reply_texts(&value, &mut texts);
        let compiled = &self.compiled;
        let mut hits = Vec::new();
        let mut edits: Vec<(Vec<Seg>, String)> = Vec::new();
        for text in texts {
            let scan = compiled.scan_text_selected(text.text, selection);
            for found in &scan.hits {
                let hit = compiled.hit(found, &text.location);
                log_hit(&hit);
                hits.push(hit);
            }
            if scan.rejected {
                if let Some(hit) = hits.last() {
                    return ResponseVerdict::Rejected {
                        reply: rejection_reply(hit),
                        hits,
                    };
                }
            }
            if let Some(masked) = scan.masked {
                edits.push((text.path, masked));
            }
        }
        if edits.is_empty() {
            return ResponseVerdict::Unchanged { hits };
        }
        ResponseVerdict::Masked {
            body: rewrite(raw, &value, &edits),
            hits,
        }
    }
}

/// Every assistant text of a reply, in document order.
fn reply_texts<'v>(value: &'v Value, out: &mut Vec<ReplyText<'v>>) {
    let Some(choices) = value.get("choices").and_then(Value::as_array) else {
        return;
    };
    for (k, choice) in choices.iter().enumerate() {
        let mut add = |location: String, rest: &[Seg], text: &'v str| {
            let mut path = vec![Seg::Key("choices"), Seg::Index(k)];
            path.extend_from_slice(rest);
            out.push(ReplyText {
                location,
                path,
                text,
            });
        };
        if let Some(message) = choice.get("message") {
            use Seg::{Index, Key};
            match message.get("content") {
                Some(Value::String(text)) => add(
                    format!("choices[{k}].message.content"),
                    &[Key("message"), Key("content")],
                    text,
                ),
                Some(Value::Array(parts)) => {
                    for (p, part) in parts.iter().enumerate() {
                        if let Value::String(text) = part {
                            add(
                                format!("choices[{k}].message.content[{p}]"),
                                &[Key("message"), Key("content"), Index(p)],
                                text,
                            );
                            continue;
                        }
                        for field in ["text", "refusal"] {
                            if let Some(Value::String(text)) = part.get(field) {
                                add(
                                    format!("choices[{k}].message.content[{p}].{field}"),
                                    &[Key("message"), Key("content"), Index(p), Key(field)],
                                    text,
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
            if let Some(Value::String(text)) = message.get("refusal") {
                add(
                    format!("choices[{k}].message.refusal"),
                    &[Key("message"), Key("refusal")],
                    text,
                );
            }
            if let Some(Value::Array(calls)) = message.get("tool_calls") {
                for (m, call) in calls.iter().enumerate() {
                    let arguments = call.get("function").and_then(|f| f.get("arguments"));
                    if let Some(Value::String(text)) = arguments {
                        add(
                            format!("choices[{k}].message.tool_calls[{m}].function.arguments"),
                            &[
                                Key("message"),
                                Key("tool_calls"),
                                Index(m),
                                Key("function"),
                                Key("arguments"),
                            ],
                            text,
                        );
                    }
                }
            }
            let arguments = message
                .get("function_call")
                .and_then(|f| f.get("arguments"));
            if let Some(Value::String(text)) = arguments {
                add(
                    format!("choices[{k}].message.function_call.arguments"),
                    &[Key("message"), Key("function_call"), Key("arguments")],
                    text,
                );
            }
        }
        if let Some(Value::String(text)) = choice.get("text") {
            add(format!("choices[{k}].text"), &[Seg::Key("text")], text);
        }
    }
}

/// `raw` (whose parse is `value`) with the string at each path replaced. Only the objects
/// and arrays on the paths are re-serialised, and they keep every other member's bytes; a
/// document with repeated keys on a path is re-serialised whole instead.
pub(super) fn rewrite(raw: &str, value: &Value, edits: &[(Vec<Seg>, String)]) -> Vec<u8> {
    let mut out = raw.to_string();
    for (path, text) in edits {
        match replace_string(&out, path, text) {
            Some(next) => out = next,
            None => return rewrite_value(value, edits),
        }
    }
    out.into_bytes()
}

fn replace_string(json: &str, path: &[Seg], text: &str) -> Option<String> {
    match path.split_first() {
        None => serde_json::to_string(text).ok(),
        Some((Seg::Key(key), rest)) => {
            let mut object = RawObject::parse(json.as_bytes()).ok()?;
            let child = replace_string(object.get(key)?.get(), rest, text)?;
            let child = RawValue::from_string(child).ok()?;
            object.set(key, &child).ok()?;
            String::from_utf8(object.to_vec()).ok()
        }
        Some((Seg::Index(i), rest)) => {
            let mut items: Vec<Box<RawValue>> = serde_json::from_str(json).ok()?;
            let item = items.get_mut(*i)?;
            let child = replace_string(item.get(), rest, text)?;
            *item = RawValue::from_string(child).ok()?;
            serde_json::to_string(&items).ok()
        }
    }
}

fn rewrite_value(value: &Value, edits: &[(Vec<Seg>, String)]) -> Vec<u8> {
    let mut value = value.clone();
    for (path, text) in edits {
        let mut at = Some(&mut value);
        for seg in path {
            at = at.and_then(|v| match seg {
                Seg::Key(key) => v.get_mut(*key),
                Seg::Index(i) => v.get_mut(*i),
            });
        }
        if let Some(slot) = at {
            *slot = Value::String(text.clone());
        }
    }
    serde_json::to_vec(&value).unwrap_or_default()
}
