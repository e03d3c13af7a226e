//! The prompt text of an OpenAI request: what guards scan, read in one pass over the prompt
//! field and written back only when a guard changed some of it.
//!
//! | API | field | text scanned | scope |
//! |---|---|---|---|
//! | chat completions | `messages` | `messages[i].content` when a string; the `text` of each part when an array | by `role` (see [`ScopeSet::of_role`]) |
//! | chat completions | `messages` | `messages[i].tool_calls[j].function.arguments`, `…custom.input`, `messages[i].function_call.arguments` | `tool_call_arguments` |
//! | completions | `prompt` | the string, or each string of an array (token-id arrays are skipped) | `user` |
//! | embeddings | `input` | the same as `prompt` | `user` |
//!
//! Tool-call arguments are a JSON document in a string. When that document parses, each of its
//! strings (object keys included) is offered on its own, so that escapes are read as the tool
//! will read them and a mask can never break the document; masked arguments are written back
//! as a string holding the re-serialised document (numbers and other values kept as sent).
//! Arguments that are not JSON (or nest deeper than [`MAX_ARGUMENT_DEPTH`]) are offered whole.
//!
//! Everything else in these fields (roles, names, tool ids, image parts, token ids) is kept
//! as the client's bytes ([`RawValue`]) or, where a value sits in a position that may hold text,
//! as a parsed value that serialises back to the same JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::scope::{GuardScope, ScopeSet};
use crate::json_object::RawObject;
use crate::openai_api::LlmApi;

/// How deep tool-call arguments are walked as JSON; deeper documents are scanned as one text.
pub(crate) const MAX_ARGUMENT_DEPTH: usize = 64;

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
    /// `messages[i].tool_calls[j].<call>.<field>`: `function.arguments` or `custom.input`.
    ToolCall(usize, usize, &'static str, &'static str),
    /// `messages[i].function_call.arguments`, the legacy single function call.
    FunctionCall(usize, &'static str),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Field(field) => f.write_str(field),
            Location::Item(field, i) => write!(f, "{field}[{i}]"),
            Location::Content(m) => write!(f, "messages[{m}].content"),
            Location::Part(m, p) => write!(f, "messages[{m}].content[{p}].text"),
            Location::PartString(m, p) => write!(f, "messages[{m}].content[{p}]"),
            Location::ToolCall(m, t, call, field) => {
                write!(f, "messages[{m}].tool_calls[{t}].{call}.{field}")
            }
            Location::FunctionCall(m, field) => write!(f, "messages[{m}].function_call.{field}"),
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

/// Calls `f` on every prompt text of `body` whose scope meets `wanted`, in document order,
/// with its location and scope, and sets the prompt field back when `f` replaced any text (and
/// did not stop).
pub(crate) fn visit(
    body: &mut RawObject,
    api: LlmApi,
    wanted: ScopeSet,
    f: &mut dyn FnMut(Location, ScopeSet, &str) -> Visit,
) -> Result<(), serde_json::Error> {
    let key = field(api);
    let replacement = {
        let Some(raw) = body.get(key) else {
            return Ok(());
        };
        let mut walker = Walker {
            f,
            wanted,
            changed: false,
            stopped: false,
            error: None,
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
    f: &'f mut dyn FnMut(Location, ScopeSet, &str) -> Visit,
    /// The scopes some guard scans; texts in none of them are not offered.
    wanted: ScopeSet,
    changed: bool,
    stopped: bool,
    /// Masked tool-call arguments that could not be written back.
    error: Option<serde_json::Error>,
}

impl Walker<'_> {
    /// Offers one text; false once the walk must stop.
    fn text(&mut self, location: Location, scope: ScopeSet, text: &mut Cow<'_, str>) -> bool {
        if !self.wanted.intersects(scope) {
            return true;
        }
        match (self.f)(location, scope, text) {
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

    /// Offers tool-call arguments: each string of the JSON document they hold, or the whole
    /// text when it is not JSON. False once the walk must stop.
    fn arguments(&mut self, location: Location, text: &mut Cow<'_, str>) -> bool {
        let scope = ScopeSet::of(GuardScope::ToolCallArguments);
        if !self.wanted.intersects(scope) {
            return true;
        }
        let rewritten = {
            let Some(mut document) = Json::parse(text, 0) else {
                return self.text(location, scope, text);
            };
            let changed_before = std::mem::replace(&mut self.changed, false);
            let go = document.walk(&mut |leaf| self.text(location, scope, leaf));
            let changed = std::mem::replace(&mut self.changed, changed_before);
            if !go {
                return false;
            }
            if !changed {
                return true;
            }
            match serde_json::to_string(&document) {
                Ok(json) => json,
                Err(error) => {
                    self.error = Some(error);
                    self.stopped = true;
                    return false;
                }
            }
        };
        *text = Cow::Owned(rewritten);
        self.changed = true;
        true
    }

    fn result<T: Serialize>(
        &mut self,
        value: &T,
    ) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
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
        let scope = ScopeSet::of(GuardScope::User);
        match self {
            Strings::One(text) => {
                walker.text(Location::Field(key), scope, text);
            }
            Strings::List(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Text::Str(text) = item {
                        if !walker.text(Location::Item(key, i), scope, text) {
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
            let scope = fields.content_scope();
            // Every `content` and `tool_calls` field, duplicates included: a JSON parser
            // upstream may read any.
            for (_, value) in fields.0.iter_mut() {
                let go = match value {
                    MessageValue::Content(content) => content.walk(m, scope, walker),
                    MessageValue::ToolCalls(ToolCalls::List(calls)) => {
                        calls.iter_mut().enumerate().all(|(t, call)| match call {
                            ToolCall::Object(fields) => {
                                fields.0.iter_mut().all(|(key, value)| match value {
                                    ToolCallValue::Call(call) => {
                                        let name = if *key == "custom" {
                                            "custom"
                                        } else {
                                            "function"
                                        };
                                        call.walk(walker, |field| {
                                            Location::ToolCall(m, t, name, field)
                                        })
                                    }
                                    ToolCallValue::Raw(_) => true,
                                })
                            }
                            ToolCall::Other(_) => true,
                        })
                    }
                    MessageValue::FunctionCall(call) => {
                        call.walk(walker, |field| Location::FunctionCall(m, field))
                    }
                    MessageValue::ToolCalls(ToolCalls::Other(_))
                    | MessageValue::Role(_)
                    | MessageValue::Raw(_) => true,
                };
                if !go {
                    return;
                }
            }
        }
    }
}

impl Fields<'_, MessageValue<'_>> {
    /// The scope of this message's content: by its role when it has exactly one (repeated
    /// roles that agree count as one), every scope otherwise.
    fn content_scope(&self) -> ScopeSet {
        let mut role: Option<&str> = None;
        for (_, value) in &self.0 {
            if let MessageValue::Role(text) = value {
                match (role, text) {
                    (_, Text::Other(_)) => return ScopeSet::ALL,
                    (None, Text::Str(this)) => role = Some(this),
                    (Some(seen), Text::Str(this)) if seen == this.as_ref() => {}
                    (Some(_), Text::Str(_)) => return ScopeSet::ALL,
                }
            }
        }
        ScopeSet::of_role(role)
    }
}

impl Content<'_> {
    /// Offers this content of message `m`; false once the walk must stop.
    fn walk(&mut self, m: usize, scope: ScopeSet, walker: &mut Walker<'_>) -> bool {
        match self {
            Content::Text(text) => walker.text(Location::Content(m), scope, text),
            Content::Parts(parts) => {
                for (p, part) in parts.iter_mut().enumerate() {
                    let fields = match part {
                        Part::Object(fields) => fields,
                        Part::Str(text) => {
                            if !walker.text(Location::PartString(m, p), scope, text) {
                                return false;
                            }
                            continue;
                        }
                        Part::Other(_) => continue,
                    };
                    for (_, value) in fields.0.iter_mut() {
                        if let PartValue::Text(Text::Str(text)) = value {
                            if !walker.text(Location::Part(m, p), scope, text) {
                                return false;
                            }
                        }
                    }
                }
                true
            }
            Content::Other(_) => true,
        }
    }
}

/// One element of `messages`: an object whose `content`, `role`, `tool_calls` and
/// `function_call` are read; its other fields stay raw.
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
    Role(Text<'a>),
    ToolCalls(ToolCalls<'a>),
    FunctionCall(Call<'a>),
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
                    let value = match &*key {
                        "content" => MessageValue::Content(map.next_value()?),
                        "role" => MessageValue::Role(map.next_value()?),
                        "tool_calls" => MessageValue::ToolCalls(map.next_value()?),
                        "function_call" => MessageValue::FunctionCall(map.next_value()?),
                        _ => MessageValue::Raw(map.next_value()?),
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

/// A message's `tool_calls`: normally an array of call objects.
#[derive(Serialize)]
#[serde(untagged)]
enum ToolCalls<'a> {
    List(Vec<ToolCall<'a>>),
    Other(Value),
}

impl<'de> Deserialize<'de> for ToolCalls<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ToolCallsVisitor;
        impl<'de> Visitor<'de> for ToolCallsVisitor {
            type Value = ToolCalls<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ToolCalls<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<ToolCall<'de>>()? {
                    items.push(item);
                }
                Ok(ToolCalls::List(items))
            }
            keep_other_values!(ToolCalls::Other);
            keep_other_strings!(ToolCalls::Other);
            keep_other_maps!(ToolCalls::Other);
        }
        deserializer.deserialize_any(ToolCallsVisitor)
    }
}

/// One tool call: its `function` (or `custom`) object is read; `id`, `type` stay raw.
#[derive(Serialize)]
#[serde(untagged)]
enum ToolCall<'a> {
    Object(Fields<'a, ToolCallValue<'a>>),
    Other(Value),
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolCallValue<'a> {
    Call(Call<'a>),
    Raw(&'a RawValue),
}

impl<'de> Deserialize<'de> for ToolCall<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ToolCallVisitor;
        impl<'de> Visitor<'de> for ToolCallVisitor {
            type Value = ToolCall<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ToolCall<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let value = if key == "function" || key == "custom" {
                        ToolCallValue::Call(map.next_value()?)
                    } else {
                        ToolCallValue::Raw(map.next_value()?)
                    };
                    fields.push((key, value));
                }
                Ok(ToolCall::Object(Fields(fields)))
            }
            keep_other_values!(ToolCall::Other);
            keep_other_strings!(ToolCall::Other);
            keep_other_seqs!(ToolCall::Other);
        }
        deserializer.deserialize_any(ToolCallVisitor)
    }
}

/// A call object (`function`, `custom`, legacy `function_call`): its `arguments` (or `input`)
/// is read; `name` stays raw.
#[derive(Serialize)]
#[serde(untagged)]
enum Call<'a> {
    Object(Fields<'a, CallValue<'a>>),
    Other(Value),
}

#[derive(Serialize)]
#[serde(untagged)]
enum CallValue<'a> {
    Arguments(Text<'a>),
    Raw(&'a RawValue),
}

impl<'de> Deserialize<'de> for Call<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CallVisitor;
        impl<'de> Visitor<'de> for CallVisitor {
            type Value = Call<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Call<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let value = if key == "arguments" || key == "input" {
                        CallValue::Arguments(map.next_value()?)
                    } else {
                        CallValue::Raw(map.next_value()?)
                    };
                    fields.push((key, value));
                }
                Ok(Call::Object(Fields(fields)))
            }
            keep_other_values!(Call::Other);
            keep_other_strings!(Call::Other);
            keep_other_seqs!(Call::Other);
        }
        deserializer.deserialize_any(CallVisitor)
    }
}

impl Call<'_> {
    /// Offers this call's arguments (string ones: they are JSON in a string), located by
    /// `location(field)`; false once the walk must stop.
    fn walk(
        &mut self,
        walker: &mut Walker<'_>,
        location: impl Fn(&'static str) -> Location,
    ) -> bool {
        let Call::Object(fields) = self else {
            return true;
        };
        fields.0.iter_mut().all(|(key, value)| match value {
            CallValue::Arguments(Text::Str(text)) => {
                let field = if *key == "input" {
                    "input"
                } else {
                    "arguments"
                };
                walker.arguments(location(field), text)
            }
            CallValue::Arguments(Text::Other(_)) | CallValue::Raw(_) => true,
        })
    }
}

/// A JSON document held in a string (tool-call arguments), read so that its strings can be
/// scanned and replaced while everything else serialises back as it was written.
enum Json<'a> {
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
    /// Numbers, booleans and `null`, as written.
    Raw(&'a RawValue),
}

impl<'a> Json<'a> {
    /// `None` when `text` is not one JSON value, or nests deeper than [`MAX_ARGUMENT_DEPTH`].
    fn parse(text: &'a str, depth: usize) -> Option<Json<'a>> {
        let raw: &'a RawValue = serde_json::from_str(text).ok()?;
        Json::from_raw(raw, depth)
    }

    fn from_raw(raw: &'a RawValue, depth: usize) -> Option<Json<'a>> {
        if depth > MAX_ARGUMENT_DEPTH {
            return None;
        }
        let text = raw.get();
        match text.trim_start().as_bytes().first()? {
            b'"' => serde_json::from_str::<Str<'a>>(text)
                .ok()
                .map(|Str(s)| Json::Str(s)),
            b'[' => {
                let items: Vec<&'a RawValue> = serde_json::from_str(text).ok()?;
                items
                    .into_iter()
                    .map(|item| Json::from_raw(item, depth + 1))
                    .collect::<Option<_>>()
                    .map(Json::Array)
            }
            b'{' => {
                let RawEntries(entries) = serde_json::from_str(text).ok()?;
                entries
                    .into_iter()
                    .map(|(key, value)| Some((key, Json::from_raw(value, depth + 1)?)))
                    .collect::<Option<_>>()
                    .map(Json::Object)
            }
            _ => Some(Json::Raw(raw)),
        }
    }

    /// Offers every string, keys included, in document order; false once `f` said stop.
    fn walk(&mut self, f: &mut dyn FnMut(&mut Cow<'_, str>) -> bool) -> bool {
        match self {
            Json::Str(text) => f(text),
            Json::Array(items) => items.iter_mut().all(|item| item.walk(f)),
            Json::Object(entries) => entries
                .iter_mut()
                .all(|(key, value)| f(key) && value.walk(f)),
            Json::Raw(_) => true,
        }
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Str(text) => serializer.serialize_str(text),
            Json::Array(items) => serializer.collect_seq(items),
            Json::Object(entries) => serializer.collect_map(entries.iter().map(|(k, v)| (k, v))),
            Json::Raw(raw) => raw.serialize(serializer),
        }
    }
}

/// An object's entries in order, duplicates included, values raw.
struct RawEntries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawEntries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = RawEntries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntries<'de>, A::Error> {
                let mut entries = Vec::new();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
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

    /// The texts `visit` offers (with `wanted` scopes), with their locations and scopes; each
    /// text containing "x" is replaced by "Y".
    fn walk_scoped(
        api: LlmApi,
        wanted: ScopeSet,
        body: &str,
    ) -> (Vec<(String, String, ScopeSet)>, String) {
        let mut object = RawObject::parse(body.as_bytes()).unwrap();
        let mut seen = Vec::new();
        visit(&mut object, api, wanted, &mut |location, scope, text| {
            seen.push((location.to_string(), text.to_string(), scope));
            if text.contains('x') {
                Visit::Replace(text.replace('x', "Y"))
            } else {
                Visit::Keep
            }
        })
        .unwrap();
        (seen, String::from_utf8(object.to_vec()).unwrap())
    }

    /// [`walk_scoped`] over every scope, without the scopes.
    fn walk(api: LlmApi, body: &str) -> (Vec<(String, String)>, String) {
        let (seen, out) = walk_scoped(api, ScopeSet::ALL, body);
        let seen = seen.into_iter().map(|(l, t, _)| (l, t)).collect();
        (seen, out)
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn chat_messages_offer_content_text_parts_and_tool_call_arguments() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"be \"brief\"","name":"x"},{"role":"user","content":[{"type":"text","text":"hi x"},{"type":"image_url","image_url":{"url":"data:image/png;base64,eHh4"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"x","type":"function","function":{"name":"x","arguments":"{\"x\":1.50}"}}]},7],"temperature":0.70}"#;
        let (seen, out) = walk(LlmApi::ChatCompletions, body);
        assert_eq!(
            seen,
            pairs(&[
                ("messages[0].content", "be \"brief\""),
                ("messages[1].content[0].text", "hi x"),
                ("messages[2].tool_calls[0].function.arguments", "x"),
            ])
        );
        // The arguments stay a string; the number in them is kept as written.
        assert_eq!(
            out,
            r#"{"model":"m","messages":[{"role":"system","content":"be \"brief\"","name":"x"},{"role":"user","content":[{"type":"text","text":"hi Y"},{"type":"image_url","image_url":{"url":"data:image/png;base64,eHh4"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"x","type":"function","function":{"name":"x","arguments":"{\"Y\":1.50}"}}]},7],"temperature":0.70}"#
        );
    }

    #[test]
    fn each_text_has_the_scope_of_its_role() {
        let body = r#"{"messages":[
            {"role":"system","content":"s"},
            {"role":"developer","content":"d"},
            {"role":"user","content":[{"type":"text","text":"u"}]},
            {"role":"assistant","content":"a","tool_calls":[{"function":{"arguments":"[\"t\"]"}}]},
            {"role":"tool","tool_call_id":"1","content":"r"},
            {"role":"function","name":"f","content":"f"},
            {"content":"no role"},
            {"role":"critic","content":"unknown role"},
            {"role":"user","role":"system","content":"two roles"},
            {"role":"user","content":"same role twice","role":"user"},
            {"role":7,"content":"odd role"}
        ]}"#;
        let (seen, _) = walk_scoped(LlmApi::ChatCompletions, ScopeSet::ALL, body);
        let scopes: Vec<(&str, ScopeSet)> = seen.iter().map(|(_, t, s)| (t.as_str(), *s)).collect();
        let one = ScopeSet::of;
        assert_eq!(
            scopes,
            [
                ("s", one(GuardScope::System)),
                ("d", one(GuardScope::System)),
                ("u", one(GuardScope::User)),
                ("a", one(GuardScope::Assistant)),
                ("t", one(GuardScope::ToolCallArguments)),
                ("r", one(GuardScope::ToolResults)),
                ("f", one(GuardScope::ToolResults)),
                ("no role", ScopeSet::ALL),
                ("unknown role", ScopeSet::ALL),
                ("two roles", ScopeSet::ALL),
                ("same role twice", one(GuardScope::User)),
                ("odd role", ScopeSet::ALL),
            ]
        );
        // Only texts in a wanted scope are offered; prompts and inputs are user text.
        let wanted = one(GuardScope::User).with(GuardScope::ToolCallArguments);
        let (seen, _) = walk_scoped(LlmApi::ChatCompletions, wanted, body);
        let texts: Vec<&str> = seen.iter().map(|(_, t, _)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "u",
                "t",
                "no role",
                "unknown role",
                "two roles",
                "same role twice",
                "odd role"
            ]
        );
        let (seen, _) = walk_scoped(
            LlmApi::Completions,
            one(GuardScope::User),
            r#"{"prompt":"p"}"#,
        );
        assert_eq!(seen, [("prompt".into(), "p".into(), one(GuardScope::User))]);
        let (seen, _) = walk_scoped(
            LlmApi::Embeddings,
            one(GuardScope::System),
            r#"{"input":"p"}"#,
        );
        assert!(seen.is_empty());
    }

    #[test]
    fn tool_call_arguments_are_read_as_json_and_stay_a_string() {
        // Each string of the document, keys included, with escapes decoded.
        let body = r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"send","arguments":"{\"to\":\"x\\u0040example.com\",\"n\":[1e3,true,null,\"a\\\"x\"],\"x\":{}}"}},{"type":"custom","custom":{"name":"sql","input":"select x"}}],"function_call":{"name":"f","arguments":"not json: x"}}]}"#;
        let (seen, out) = walk(LlmApi::ChatCompletions, body);
        let call = "messages[0].tool_calls[0].function.arguments";
        assert_eq!(
            seen,
            pairs(&[
                (call, "to"),
                (call, "x@example.com"),
                (call, "n"),
                (call, "a\"x"),
                (call, "x"),
                ("messages[0].tool_calls[1].custom.input", "select x"),
                ("messages[0].function_call.arguments", "not json: x"),
            ])
        );
        let object: Value = serde_json::from_str(&out).unwrap();
        let message = &object["messages"][0];
        let arguments = message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("arguments stay a string");
        assert_eq!(
            arguments,
            r#"{"to":"Y@eYample.com","n":[1e3,true,null,"a\"Y"],"Y":{}}"#
        );
        assert_eq!(message["tool_calls"][1]["custom"]["input"], "select Y");
        assert_eq!(message["function_call"]["arguments"], "not json: Y");
        assert_eq!(message["tool_calls"][0]["id"], "c1");

        // Arguments that are not a string, and odd call shapes, are left alone.
        let odd = r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":{"x":1}}},{"function":"x"},"x",{"custom":[1]}]},{"tool_calls":"x","function_call":null}]}"#;
        let (seen, out) = walk(LlmApi::ChatCompletions, odd);
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(out, odd);

        // A document deeper than the walk goes is offered whole.
        let deep = format!(
            "{}\"x\"{}",
            "[".repeat(MAX_ARGUMENT_DEPTH + 2),
            "]".repeat(MAX_ARGUMENT_DEPTH + 2)
        );
        let body = serde_json::json!({"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":deep}}]}]});
        let (seen, _) = walk(LlmApi::ChatCompletions, &body.to_string());
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, deep);
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
        visit(
            &mut object,
            LlmApi::Completions,
            ScopeSet::ALL,
            &mut |_, _, _| {
                calls += 1;
                if calls == 2 {
                    Visit::Stop
                } else {
                    Visit::Replace("Y".into())
                }
            },
        )
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(object.to_vec(), br#"{"prompt":["x","x","x"]}"#);
    }
}
