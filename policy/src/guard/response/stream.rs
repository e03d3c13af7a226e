//! Response guards over an SSE answer, event by event, without waiting for the end.
//!
//! Each text field (`choices[i].delta.content`, `.refusal`, `.function_call.arguments`,
//! `.tool_calls[j].function.arguments`, completions `choices[i].text`) of each choice `index`
//! (and tool call `index`) is a channel: its pieces are joined and scanned as one text
//! ([`scanner`](super::scanner)). What the guards have decided goes out at once; only the
//! shortest tail that could still be (the start of) a match is held back, and goes out in the
//! channel's next event.
//!
//! Events:
//!
//! - An event whose text goes out whole and unchanged is passed on byte for byte. Otherwise
//!   only its `data:` payload is rewritten, and in it only the changed strings (other fields
//!   keep their bytes): the text is what was decided (the masked text, possibly `""`).
//! - A choice ends with its event carrying a non-null `finish_reason`: its channels are scanned
//!   to the end first. Held text of a channel the finishing event carries goes into that
//!   event; held text of its other channels goes into one extra event **before** it:
//!   the finishing event's top-level fields with `"choices":[{"index":i,"delta":{...},
//!   "finish_reason":null}]` (`"text"` instead of `"delta"` for completions).
//!   `data: [DONE]` and the end of the body end every channel the same way (the extra events
//!   copy the last chunk's top-level fields).
//! - Events without choices (the usage-only chunk, comments, provider errors, anything that
//!   is not a JSON chunk) never overtake held text: while any text is held they wait, and go
//!   out, in order, as soon as nothing is held. Events of other choices are independent and
//!   are not held up.
//!
//! A `reject` hit ends the stream: what was decided before is already out, then
//!
//! ```text
//! data: {"error":{"message":"the provider's reply was blocked by guard 'x': credit_card found in choices[0].delta.content","type":"upstream_error","param":null,"code":"response_guard_rejected"}}
//!
//! data: [DONE]
//!
//! ```
//!
//! and [`GuardedChunk::rejected`] tells the adapter to drop the rest of the upstream body.

use crate::guard::GuardSelection;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::json::{rewrite, Seg};
use super::scanner::{ChannelScanner, Rejection, Scratch};
use super::{log_hit, rejection_reply, Compiled, ResponseGuards, TextHit};
use crate::guard::GuardHit;
use crate::openai_api::LlmApi;
use crate::sse::{line_ending, single_data_payload, SseFramer};
use crate::usage::ChunkOutput;

/// What to send downstream for one upstream chunk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuardedChunk {
    /// The bytes to send now, in place of the chunk (possibly empty: an unfinished event is
    /// kept until its end arrives).
    pub bytes: Vec<u8>,
    /// Set once, on the chunk where a `reject` guard hit: `bytes` ends with the error event
    /// and `[DONE]`, and the adapter must forward nothing more of the upstream body.
    pub rejected: Option<StreamRejection>,
}

impl GuardedChunk {
    /// As the adapters' [`ChunkOutput`]: `Unchanged` when the bytes are the chunk's.
    pub fn into_output(self, chunk: &[u8]) -> ChunkOutput {
        if self.bytes == chunk {
            ChunkOutput::Unchanged
        } else {
            ChunkOutput::Replace(self.bytes)
        }
    }
}

/// Why a stream was cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRejection {
    /// The hit that refused the answer.
    pub hit: GuardHit,
    /// The error event's message (already sent in [`GuardedChunk::bytes`]).
    pub message: String,
}

/// Which text field of a choice a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Content,
    Refusal,
    FunctionArguments,
    ToolArguments(u64),
    Text,
}

struct Channel {
    choice: u64,
    field: Field,
    location: String,
    scanner: ChannelScanner,
    /// Scanned to its end (its choice finished); reopened if more text comes.
    finished: bool,
}

/// One text of one event.
struct Piece {
    channel: usize,
    path: Vec<Seg>,
    original: String,
    output: String,
}

/// The response guards over one streamed answer. Feed it every upstream body chunk.
pub struct ResponseGuardStream {
    guards: ResponseGuards,
    /// False when there is nothing to do (no guards, or embeddings): chunks pass as they are.
    active: bool,
    scratch: Scratch,
    /// Rules this answer does not run (see [`ChannelScanner::with_disabled`]).
    disabled: Vec<bool>,
    framer: SseFramer,
    channels: Vec<Channel>,
    /// Choice-less events waiting behind held text.
    deferred: Vec<Vec<u8>>,
    /// The top-level fields of the last chunk with choices, for the extra events.
    template: Option<Map<String, Value>>,
    eol: &'static [u8],
    rejected: bool,
}

impl std::fmt::Debug for ResponseGuardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseGuardStream")
            .field("guards", &self.guards)
            .field("channels", &self.channels.len())
            .field("held", &self.held())
            .field("rejected", &self.rejected)
            .finish()
    }
}

impl Drop for ResponseGuardStream {
    fn drop(&mut self) {
        if self.active {
            let scratch = std::mem::replace(&mut self.scratch, Scratch::new(0));
            self.guards.compiled.return_scratch(scratch);
        }
    }
}

impl ResponseGuardStream {
    pub fn new(guards: ResponseGuards, api: LlmApi) -> ResponseGuardStream {
        ResponseGuardStream::selected(guards, api, &GuardSelection::all())
    }

    /// A stream that runs only the response guards `selection` leaves on.
    pub fn selected(
        guards: ResponseGuards,
        api: LlmApi,
        selection: &GuardSelection,
    ) -> ResponseGuardStream {
        let disabled: Vec<bool> = if selection.all_responses() {
            Vec::new()
        } else {
            guards
                .compiled
                .rules
                .iter()
                .map(|rule| !selection.runs_response(rule.guard))
                .collect()
        };
        let any_on = disabled.is_empty() || disabled.iter().any(|off| !off);
        let active = !guards.is_empty() && api != LlmApi::Embeddings && any_on;
        let scratch = if active {
            guards.compiled.take_scratch()
        } else {
            Scratch::new(0)
        };
        ResponseGuardStream {
            active,
            guards,
            scratch,
            disabled,
            framer: SseFramer::new(),
            channels: Vec::new(),
            deferred: Vec::new(),
            template: None,
            eol: b"\n",
            rejected: false,
        }
    }

    /// Whether a `reject` guard has cut the stream off.
    pub fn is_rejected(&self) -> bool {
        self.rejected
    }

    /// Bytes of text held back across all channels.
    pub fn held(&self) -> usize {
        self.channels.iter().map(|c| c.scanner.held()).sum()
    }

    /// The hits so far, channel by channel (in the order channels first carried text).
    pub fn hits(&self) -> Vec<GuardHit> {
        let compiled = &self.guards.compiled;
        self.channels
            .iter()
            .flat_map(|c| channel_hits(compiled, c))
            .collect()
    }

    pub fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> GuardedChunk {
        if !self.active {
            return GuardedChunk {
                bytes: chunk.to_vec(),
                rejected: None,
            };
        }
        if self.rejected {
            return GuardedChunk::default();
        }
        let mut events = self.framer.push(chunk);
        if end_of_stream {
            let tail = self.framer.take_pending();
            if !tail.is_empty() {
                events.push(tail);
            }
        }
        let mut out = Vec::with_capacity(chunk.len());
        for event in &events {
            if let Err(rejection) = self.event(event, &mut out) {
                return self.reject(out, rejection);
            }
        }
        if end_of_stream {
            if let Err(rejection) = self.finish_all(&mut out) {
                return self.reject(out, rejection);
            }
            self.release(&mut out, true);
        }
        GuardedChunk {
            bytes: out,
            rejected: None,
        }
    }

    fn event(&mut self, event: &[u8], out: &mut Vec<u8>) -> Result<(), (usize, Rejection)> {
        let Some(payload) = single_data_payload(event) else {
            self.defer(event, out);
            return Ok(());
        };
        if payload.trim_ascii() == b"[DONE]" {
            self.finish_all(out)?;
            self.release(out, true);
            out.extend_from_slice(event);
            return Ok(());
        }
        let Ok(raw) = std::str::from_utf8(payload) else {
            self.defer(event, out);
            return Ok(());
        };
        let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(raw) else {
            self.defer(event, out);
            return Ok(());
        };
        let Some(choices) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        else {
            self.defer(event, out);
            return Ok(());
        };
        self.eol = line_ending(event);
        let compiled = Arc::clone(&self.guards.compiled);
        let mut pieces: Vec<Piece> = Vec::new();
        let mut finishing: Vec<u64> = Vec::new();
        for (k, choice) in choices.iter().enumerate() {
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(k as u64);
            for (field, path, text) in choice_texts(choice, k) {
                let channel = self.channel(index, field);
                let output = self.channels[channel]
                    .scanner
                    .push(&compiled, &mut self.scratch, text)
                    .map_err(|r| (channel, r))?;
                pieces.push(Piece {
                    channel,
                    path,
                    original: text.to_string(),
                    output,
                });
            }
            if choice
                .get("finish_reason")
                .is_some_and(|reason| !reason.is_null())
            {
                finishing.push(index);
            }
        }
        let mut extra: Vec<(u64, Vec<(Field, String)>)> = Vec::new();
        for index in finishing {
            let mut rest_of_choice = Vec::new();
            for channel in 0..self.channels.len() {
                if self.channels[channel].choice != index || self.channels[channel].finished {
                    continue;
                }
                let rest = self.finish_channel(&compiled, channel)?;
                match pieces.iter_mut().rev().find(|p| p.channel == channel) {
                    Some(piece) => piece.output.push_str(&rest),
                    None if !rest.is_empty() => {
                        rest_of_choice.push((self.channels[channel].field, rest));
                    }
                    None => {}
                }
            }
            if !rest_of_choice.is_empty() {
                extra.push((index, rest_of_choice));
            }
        }
        let mut template = chunk.clone();
        template.remove("choices");
        for (index, parts) in extra {
            out.extend_from_slice(&synthesized_event(&chunk, index, parts, self.eol));
        }
        let edits: Vec<(Vec<Seg>, String)> = pieces
            .into_iter()
            .filter(|p| p.output != p.original)
            .map(|p| (p.path, p.output))
            .collect();
        if edits.is_empty() {
            out.extend_from_slice(event);
        } else {
            let payload_bytes = rewrite(raw, &Value::Object(chunk), &edits);
            out.extend_from_slice(&replace_payload(event, payload, &payload_bytes));
        }
        self.template = Some(template);
        self.release(out, false);
        Ok(())
    }

    /// The channel of `field` of choice `index`, created on first use.
    fn channel(&mut self, choice: u64, field: Field) -> usize {
        if let Some(i) = self
            .channels
            .iter()
            .position(|c| c.choice == choice && c.field == field)
        {
            self.channels[i].finished = false;
            return i;
        }
        let location = match field {
            Field::Content => format!("choices[{choice}].delta.content"),
            Field::Refusal => format!("choices[{choice}].delta.refusal"),
            Field::FunctionArguments => format!("choices[{choice}].delta.function_call.arguments"),
            Field::ToolArguments(call) => {
                format!("choices[{choice}].delta.tool_calls[{call}].function.arguments")
            }
            Field::Text => format!("choices[{choice}].text"),
        };
        self.channels.push(Channel {
            choice,
            field,
            location,
            scanner: ChannelScanner::with_disabled(
                self.guards.compiled.rules.len(),
                self.disabled.clone(),
            ),
            finished: false,
        });
        self.channels.len() - 1
    }

    fn finish_channel(
        &mut self,
        compiled: &Compiled,
        channel: usize,
    ) -> Result<String, (usize, Rejection)> {
        let rest = self.channels[channel]
            .scanner
            .finish(compiled, &mut self.scratch)
            .map_err(|r| (channel, r))?;
        self.channels[channel].finished = true;
        for hit in channel_hits(compiled, &self.channels[channel]) {
            log_hit(&hit);
        }
        Ok(rest)
    }

    /// Ends every open channel; held text goes out in extra events, one per choice.
    fn finish_all(&mut self, out: &mut Vec<u8>) -> Result<(), (usize, Rejection)> {
        let compiled = Arc::clone(&self.guards.compiled);
        let mut extra: Vec<(u64, Vec<(Field, String)>)> = Vec::new();
        for channel in 0..self.channels.len() {
            if self.channels[channel].finished {
                continue;
            }
            let rest = self.finish_channel(&compiled, channel)?;
            if rest.is_empty() {
                continue;
            }
            let (choice, field) = (self.channels[channel].choice, self.channels[channel].field);
            match extra.iter_mut().find(|(c, _)| *c == choice) {
                Some((_, parts)) => parts.push((field, rest)),
                None => extra.push((choice, vec![(field, rest)])),
            }
        }
        let template = self.template.clone().unwrap_or_default();
        for (choice, parts) in extra {
            out.extend_from_slice(&synthesized_event(&template, choice, parts, self.eol));
        }
        Ok(())
    }

    fn defer(&mut self, event: &[u8], out: &mut Vec<u8>) {
        self.deferred.push(event.to_vec());
        self.release(out, false);
    }

    /// Sends the waiting choice-less events once nothing is held (or when `force`d).
    fn release(&mut self, out: &mut Vec<u8>, force: bool) {
        if self.deferred.is_empty() || (!force && self.held() > 0) {
            return;
        }
        for event in self.deferred.drain(..) {
            out.extend_from_slice(&event);
        }
    }

    fn reject(
        &mut self,
        mut out: Vec<u8>,
        (channel, rejection): (usize, Rejection),
    ) -> GuardedChunk {
        self.rejected = true;
        self.deferred.clear();
        let compiled = &self.guards.compiled;
        let rule = &compiled.rules[rejection.rule];
        let location = &self.channels[channel].location;
        let matches = channel_hits(compiled, &self.channels[channel])
            .into_iter()
            .find(|h| h.rule == rule.label && *h.guard == *compiled.guards[rule.guard].name)
            .map_or(1, |h| h.matches);
        let hit = compiled.hit(
            &TextHit {
                guard: rule.guard,
                label: rule.label,
                matches,
            },
            location,
        );
        log_hit(&hit);
        let reply = rejection_reply(&hit);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&reply.body);
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        GuardedChunk {
            bytes: out,
            rejected: Some(StreamRejection {
                message: super::rejection_message(&hit),
                hit,
            }),
        }
    }
}

/// The text fields of one streamed choice (at position `k` of `choices`).
fn choice_texts(choice: &Value, k: usize) -> Vec<(Field, Vec<Seg>, &str)> {
    use Seg::{Index, Key};
    let mut out = Vec::new();
    let at = |rest: &[Seg]| {
        let mut path = vec![Key("choices"), Index(k)];
        path.extend_from_slice(rest);
        path
    };
    if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
        if let Some(Value::String(text)) = delta.get("content") {
            out.push((
                Field::Content,
                at(&[Key("delta"), Key("content")]),
                text.as_str(),
            ));
        }
        if let Some(Value::String(text)) = delta.get("refusal") {
            out.push((
                Field::Refusal,
                at(&[Key("delta"), Key("refusal")]),
                text.as_str(),
            ));
        }
        if let Some(Value::String(text)) =
            delta.get("function_call").and_then(|f| f.get("arguments"))
        {
            out.push((
                Field::FunctionArguments,
                at(&[Key("delta"), Key("function_call"), Key("arguments")]),
                text.as_str(),
            ));
        }
        if let Some(Value::Array(calls)) = delta.get("tool_calls") {
            for (m, call) in calls.iter().enumerate() {
                let index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(m as u64);
                if let Some(Value::String(text)) =
                    call.get("function").and_then(|f| f.get("arguments"))
                {
                    out.push((
                        Field::ToolArguments(index),
                        at(&[
                            Key("delta"),
                            Key("tool_calls"),
                            Index(m),
                            Key("function"),
                            Key("arguments"),
                        ]),
                        text.as_str(),
                    ));
                }
            }
        }
    }
    if let Some(Value::String(text)) = choice.get("text") {
        out.push((Field::Text, at(&[Key("text")]), text.as_str()));
    }
    out
}

/// An extra event carrying held text of choice `index`: the top-level fields of `template`,
/// with one choice (`finish_reason: null`) and a non-null `usage` set to null.
fn synthesized_event(
    template: &Map<String, Value>,
    index: u64,
    parts: Vec<(Field, String)>,
    eol: &[u8],
) -> Vec<u8> {
    let mut delta = Map::new();
    let mut tool_calls = Vec::new();
    let mut text = None;
    for (field, part) in parts {
        match field {
            Field::Content => {
                delta.insert("content".into(), Value::String(part));
            }
            Field::Refusal => {
                delta.insert("refusal".into(), Value::String(part));
            }
            Field::FunctionArguments => {
                delta.insert("function_call".into(), json!({ "arguments": part }));
            }
            Field::ToolArguments(call) => {
                tool_calls.push(json!({ "index": call, "function": { "arguments": part } }));
            }
            Field::Text => text = Some(part),
        }
    }
    if !tool_calls.is_empty() {
        delta.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut choice = Map::new();
    choice.insert("index".into(), json!(index));
    if !delta.is_empty() || text.is_none() {
        choice.insert("delta".into(), Value::Object(delta));
    }
    if let Some(text) = text {
        choice.insert("text".into(), Value::String(text));
    }
    choice.insert("finish_reason".into(), Value::Null);
    let mut object = Map::new();
    let mut placed = false;
    for (key, value) in template {
        match key.as_str() {
            "choices" => {
                object.insert(key.clone(), json!([choice.clone()]));
                placed = true;
            }
            "usage" if !value.is_null() => {
                object.insert(key.clone(), Value::Null);
            }
            _ => {
                object.insert(key.clone(), value.clone());
            }
        }
    }
    if !placed {
        object.insert("choices".into(), json!([choice]));
    }
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(&Value::Object(object)).unwrap_or_default());
    out.extend_from_slice(eol);
    out.extend_from_slice(eol);
    out
}

/// `event` with its `data:` payload (a sub-slice of it) replaced.
fn replace_payload(event: &[u8], payload: &[u8], new: &[u8]) -> Vec<u8> {
    let start = (payload.as_ptr() as usize).saturating_sub(event.as_ptr() as usize);
    let end = (start + payload.len()).min(event.len());
    let mut out = Vec::with_capacity(event.len() + new.len());
    out.extend_from_slice(&event[..start]);
    out.extend_from_slice(new);
    out.extend_from_slice(&event[end..]);
    out
}

fn channel_hits(compiled: &Compiled, channel: &Channel) -> Vec<GuardHit> {
    let found = channel.scanner.found();
    if found.is_empty() {
        return Vec::new();
    }
    let mut hits = Vec::new();
    let mut r = 0;
    while r < compiled.rules.len() {
        let (guard, label) = (compiled.rules[r].guard, compiled.rules[r].label);
        let mut ranges = Vec::new();
        while r < compiled.rules.len()
            && compiled.rules[r].guard == guard
            && compiled.rules[r].label == label
        {
            ranges.extend(
                found
                    .iter()
                    .filter(|f| f.rule == r)
                    .map(|f| f.range.clone()),
            );
            r += 1;
        }
        if !ranges.is_empty() {
            let matches = super::count_merged(&mut ranges);
            hits.push(compiled.hit(
                &TextHit {
                    guard,
                    label,
                    matches,
                },
                &channel.location,
            ));
        }
    }
    hits
}
