//! The prompt text of an OpenAI request: what guards scan, read in one pass over the prompt
//! field and written back only when a guard changed some of it.
//!
//! | API | field | text scanned |
//! |---|---|---|
//! | chat completions | `messages` | `messages[i].content` when a string; the `text` of each part when an array |
//! | completions | `prompt` | the string, or each string of an array (token-id arrays are skipped) |
//! | embeddings | `input` | the same as `prompt` |
//!
//! Everything else in these fields (roles, names, tool calls, image parts, token ids) is kept
//! as the client's bytes ([`RawValue`]) or, where a value sits in a position that may hold text,
//! as a parsed value that serialises back to the same JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::json_object::RawObject;
use crate::openai_api::LlmApi;

/// The body field that holds an API's prompt.
pub(crate) fn field(api: LlmApi) -> &'static str {
    match api {
        LlmApi::ChatCompletions => "messages",
        LlmApi::Completions => "prompt",
        LlmApi::Embeddings => "input",
    }
}

/// Where one prompt text is in the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// `prompt` or `input` as a whole.
    Field(&'static str),
    /// `prompt[i]` or `input[i]`.
    Item(&'static str, usize),
    /// `messages[i].content`.
    Content(usize),
    /// `messages[i].content[j].text`.
    Part(usize, usize),
    /// `messages[i].content[j]`, a bare string in a content array.
    PartString(usize, usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Field(field) => f.write_str(field),
            Location::Item(field, i) => write!(f, "{field}[{i}]"),
            Location::Content(m) => write!(f, "messages[{m}].content"),
            Location::Part(m, p) => write!(f, "messages[{m}].content[{p}].text"),
            Location::PartString(m, p) => write!(f, "messages[{m}].content[{p}]"),
        }
    }
}

/// What the guards want done with one text.
pub(crate) enum Visit {
    Keep,
    Replace(String),
    /// Look no further (the request is refused).
    Stop,
}

/// Calls `f` on every prompt text of `body`, in document order, and sets the prompt field
/// back when `f` replaced any text (and did not stop).
pub(crate) fn visit(
    body: &mut RawObject,
    api: LlmApi,
    f: &mut dyn FnMut(Location, &str) -> Visit,
) -> Result<(), serde_json::Error> {
    let key = field(api);
    let replacement = {
        let Some(raw) = body.get(key) else {
            return Ok(());
        };
        let mut walker = Walker {
            f,
            changed: false,
            stopped: false,
        };
        match api {
            LlmApi::ChatCompletions => {
                let mut messages: Messages = serde_json::from_str(raw.get())?;
                messages.walk(&mut walker);
                walker.result(&messages)?
            }
            LlmApi::Completions | LlmApi::Embeddings => {
                let mut strings: Strings = serde_json::from_str(raw.get())?;
                strings.walk(key, &mut walker);
                walker.result(&strings)?
            }
        }
    };
    if let Some(raw) = replacement {
        body.set(key, &raw)?;
    }
    Ok(())
}

struct Walker<'f> {
    f: &'f mut dyn FnMut(Location, &str) -> Visit,
    changed: bool,
    stopped: bool,
}

impl Walker<'_> {
    /// Offers one text; false once the walk must stop.
    fn text(&mut self, location: Location, text: &mut Cow<'_, str>) -> bool {
        match (self.f)(location, text) {
            Visit::Keep => true,
            Visit::Replace(new) => {
                *text = Cow::Owned(new);
                self.changed = true;
                true
            }
            Visit::Stop => {
                self.stopped = true;
                false
            }
        }
    }

    fn result<T: Serialize>(&self, value: &T) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        if self.changed && !self.stopped {
            serde_json::value::to_raw_value(value).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// An object's fields in order, duplicates included.
struct Fields<'a, V>(Vec<(Cow<'a, str>, V)>);

impl<V: Serialize> Serialize for Fields<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A string borrowed from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// The visitor methods for JSON values a prompt position does not expect: they are kept as a
/// [`Value`] (wrapped by `$wrap`) so that they serialise back unchanged.
macro_rules! keep_other_values {
    ($wrap:expr) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok($wrap(Value::Bool(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrap(Value::Null))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrap(Value::Null))
        }
    };
}

macro_rules! keep_other_strings {
    ($wrap:expr) => {
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok($wrap(Value::String(v.to_owned())))
        }
    };
}

macro_rules! keep_other_seqs {
    ($wrap:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Value::deserialize(SeqAccessDeserializer::new(seq)).map($wrap)
        }
    };
}

macro_rules! keep_other_maps {
    ($wrap:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Value::deserialize(MapAccessDeserializer::new(map)).map($wrap)
        }
    };
}

/// A value that is text when it is a string.
#[derive(Serialize)]
#[serde(untagged)]
enum Text<'a> {
    Str(Cow<'a, str>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text::Str(Cow::Owned(v.to_owned())))
            }
            keep_other_values!(Text::Other);
            keep_other_seqs!(Text::Other);
            keep_other_maps!(Text::Other);
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// `prompt` or `input`: a string, an array (of strings, or of token ids), or something else.
#[derive(Serialize)]
#[serde(untagged)]
enum Strings<'a> {
    One(Cow<'a, str>),
    List(Vec<Text<'a>>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Strings<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StringsVisitor;
        impl<'de> Visitor<'de> for StringsVisitor {
            type Value = Strings<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Strings<'de>, E> {
                Ok(Strings::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Strings<'de>, E> {
                Ok(Strings::One(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<Text<'de>>()? {
                    items.push(item);
                }
                Ok(Strings::List(items))
            }
            keep_other_values!(Strings::Other);
            keep_other_maps!(Strings::Other);
        }
        deserializer.deserialize_any(StringsVisitor)
    }
}

impl Strings<'_> {
    fn walk(&mut self, key: &'static str, walker: &mut Walker<'_>) {
        match self {
            Strings::One(text) => {
                walker.text(Location::Field(key), text);
            }
            Strings::List(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Text::Str(text) = item {
                        if !walker.text(Location::Item(key, i), text) {
                            return;
                        }
                    }
                }
            }
            Strings::Other(_) => {}
        }
    }
}

/// `messages`: normally an array of message objects.
#[derive(Serialize)]
#[serde(untagged)]
enum Messages<'a> {
    List(Vec<Message<'a>>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Messages<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessagesVisitor;
        impl<'de> Visitor<'de> for MessagesVisitor {
            type Value = Messages<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<Message<'de>>()? {
                    items.push(item);
                }
                Ok(Messages::List(items))
            }
            keep_other_values!(Messages::Other);
            keep_other_strings!(Messages::Other);
            keep_other_maps!(Messages::Other);
        }
        deserializer.deserialize_any(MessagesVisitor)
    }
}

impl Messages<'_> {
    fn walk(&mut self, walker: &mut Walker<'_>) {
        let Messages::List(messages) = self else {
            return;
        };
        for (m, message) in messages.iter_mut().enumerate() {
            let Message::Object(fields) = message else {
                continue;
            };
            // Every `content` field, duplicates included: a JSON parser upstream may read any.
            for (_, value) in fields.0.iter_mut() {
                let MessageValue::Content(content) = value else {
                    continue;
                };
                match content {
                    Content::Text(text) => {
                        if !walker.text(Location::Content(m), text) {
                            return;
                        }
                    }
                    Content::Parts(parts) => {
                        for (p, part) in parts.iter_mut().enumerate() {
                            let fields = match part {
                                Part::Object(fields) => fields,
                                Part::Str(text) => {
                                    if !walker.text(Location::PartString(m, p), text) {
                                        return;
                                    }
                                    continue;
                                }
                                Part::Other(_) => continue,
                            };
                            for (_, value) in fields.0.iter_mut() {
                                if let PartValue::Text(Text::Str(text)) = value {
                                    if !walker.text(Location::Part(m, p), text) {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Content::Other(_) => {}
                }
            }
        }
    }
}

/// One element of `messages`: an object whose `content` is read; its other fields stay raw.
#[derive(Serialize)]
#[serde(untagged)]
enum Message<'a> {
    Object(Fields<'a, MessageValue<'a>>),
    Other(Value),
}

#[derive(Serialize)]
#[serde(untagged)]
enum MessageValue<'a> {
    Content(Content<'a>),
    Raw(&'a RawValue),
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let value = if key == "content" {
                        MessageValue::Content(map.next_value()?)
                    } else {
                        MessageValue::Raw(map.next_value()?)
                    };
                    fields.push((key, value));
                }
                Ok(Message::Object(Fields(fields)))
            }
            keep_other_values!(Message::Other);
            keep_other_strings!(Message::Other);
            keep_other_seqs!(Message::Other);
        }
        deserializer.deserialize_any(MessageVisitor)
    }
}

/// A message's `content`: a string, an array of parts, or something else (e.g. `null` next to
/// tool calls).
#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Content<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content<'de>, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content<'de>, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(part) = seq.next_element::<Part<'de>>()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
            keep_other_values!(Content::Other);
            keep_other_maps!(Content::Other);
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// One content part. Its `text` is read (whatever its `type`: a part that carries text calls
/// it `text`); image data and other fields stay raw. A bare string (which lenient servers take
/// as text) is read too.
#[derive(Serialize)]
#[serde(untagged)]
enum Part<'a> {
    Object(Fields<'a, PartValue<'a>>),
    Str(Cow<'a, str>),
    Other(Value),
}

#[derive(Serialize)]
#[serde(untagged)]
enum PartValue<'a> {
    Text(Text<'a>),
    Raw(&'a RawValue),
}

impl<'de> Deserialize<'de> for Part<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartVisitor;
        impl<'de> Visitor<'de> for PartVisitor {
            type Value = Part<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let value = if key == "text" {
                        PartValue::Text(map.next_value()?)
                    } else {
                        PartValue::Raw(map.next_value()?)
                    };
                    fields.push((key, value));
                }
                Ok(Part::Object(Fields(fields)))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Part<'de>, E> {
                Ok(Part::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Part<'de>, E> {
                Ok(Part::Str(Cow::Owned(v.to_owned())))
            }
            keep_other_values!(Part::Other);
            keep_other_seqs!(Part::Other);
        }
        deserializer.deserialize_any(PartVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts `visit` offers, with their locations; each text containing "x" is replaced
    /// by "Y".
    fn walk(api: LlmApi, body: &str) -> (Vec<(String, String)>, String) {
        let mut object = RawObject::parse(body.as_bytes()).unwrap();
        let mut seen = Vec::new();
        visit(&mut object, api, &mut |location, text| {
            seen.push((location.to_string(), text.to_string()));
            if text.contains('x') {
                Visit::Replace("Y".into())
            } else {
                Visit::Keep
            }
        })
        .unwrap();
        (seen, String::from_utf8(object.to_vec()).unwrap())
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn chat_messages_offer_string_content_and_text_parts_only() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"be \"brief\"","name":"x"},{"role":"user","content":[{"type":"text","text":"hi x"},{"type":"image_url","image_url":{"url":"data:image/png;base64,eHh4"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"x","function":{"arguments":"{\"x\":1.50}"}}]},7],"temperature":0.70}"#;
        let (seen, out) = walk(LlmApi::ChatCompletions, body);
        assert_eq!(
            seen,
            pairs(&[
                ("messages[0].content", "be \"brief\""),
                ("messages[1].content[0].text", "hi x"),
            ])
        );
        assert_eq!(
            out,
            r#"{"model":"m","messages":[{"role":"system","content":"be \"brief\"","name":"x"},{"role":"user","content":[{"type":"text","text":"Y"},{"type":"image_url","image_url":{"url":"data:image/png;base64,eHh4"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"x","function":{"arguments":"{\"x\":1.50}"}}]},7],"temperature":0.70}"#
        );
    }

    #[test]
    fn unchanged_prompts_are_not_rewritten() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9"}]}"#;
        let (seen, out) = walk(LlmApi::ChatCompletions, body);
        assert_eq!(seen, pairs(&[("messages[0].content", "café")]));
        assert_eq!(out, body);
    }

    #[test]
    fn prompt_and_input_strings_and_arrays() {
        let (seen, out) = walk(LlmApi::Completions, r#"{"prompt":"x","n":1}"#);
        assert_eq!(seen, pairs(&[("prompt", "x")]));
        assert_eq!(out, r#"{"prompt":"Y","n":1}"#);
        let (seen, out) = walk(LlmApi::Completions, r#"{"prompt":["a","x",[1,2]]}"#);
        assert_eq!(seen, pairs(&[("prompt[0]", "a"), ("prompt[1]", "x")]));
        assert_eq!(out, r#"{"prompt":["a","Y",[1,2]]}"#);
        let (seen, out) = walk(LlmApi::Embeddings, r#"{"input":[101,2023,102]}"#);
        assert!(seen.is_empty());
        assert_eq!(out, r#"{"input":[101,2023,102]}"#);
        let (seen, _) = walk(LlmApi::Embeddings, r#"{"input":["one","two"]}"#);
        assert_eq!(seen, pairs(&[("input[0]", "one"), ("input[1]", "two")]));
        let (seen, _) = walk(LlmApi::Embeddings, r#"{"model":"m"}"#);
        assert!(seen.is_empty());
    }

    #[test]
    fn odd_shapes_are_read_without_error() {
        for body in [
            r#"{"messages":"hello"}"#,
            r#"{"messages":{"a":1}}"#,
            r#"{"messages":[{"content":{"weird":true}},[1],null,{"content":[1,{"text":3}]}]}"#,
            r#"{"prompt":{"a":[1]}}"#,
        ] {
            let api = if body.contains("prompt") {
                LlmApi::Completions
            } else {
                LlmApi::ChatCompletions
            };
            let (seen, out) = walk(api, body);
            assert!(seen.is_empty(), "{body}: {seen:?}");
            assert_eq!(out, body);
        }
        // Duplicate `content` fields are all offered.
        let (seen, _) = walk(
            LlmApi::ChatCompletions,
            r#"{"messages":[{"content":"a","content":"b"}]}"#,
        );
        assert_eq!(
            seen,
            pairs(&[("messages[0].content", "a"), ("messages[0].content", "b")])
        );
        // So are bare strings in a content array.
        let (seen, out) = walk(
            LlmApi::ChatCompletions,
            r#"{"messages":[{"content":["x",{"type":"text","text":"b"}]}]}"#,
        );
        assert_eq!(
            seen,
            pairs(&[
                ("messages[0].content[0]", "x"),
                ("messages[0].content[1].text", "b")
            ])
        );
        assert_eq!(
            out,
            r#"{"messages":[{"content":["Y",{"type":"text","text":"b"}]}]}"#
        );
    }

    #[test]
    fn stop_ends_the_walk_without_rewriting() {
        let mut object = RawObject::parse(br#"{"prompt":["x","x","x"]}"#).unwrap();
        let mut calls = 0;
        visit(&mut object, LlmApi::Completions, &mut |_, _| {
            calls += 1;
            if calls == 2 {
                Visit::Stop
            } else {
                Visit::Replace("Y".into())
            }
        })
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(object.to_vec(), br#"{"prompt":["x","x","x"]}"#);
    }
}
