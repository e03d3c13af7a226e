//! Anthropic's streamed reply (SSE: `message_start`, `content_block_start`/`delta`/`stop`,
//! `message_delta`, `message_stop`, `ping`, `error`; reference:
//! <https://platform.claude.com/docs/en/build-with-claude/streaming>) → OpenAI
//! `chat.completion.chunk` events.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::errors::openai_error;
use super::{chat_usage, event_data, finish_reason, unix_now};
use crate::sse::SseFramer;
use crate::translate::StreamTranslator;

/// Translates one Anthropic Messages stream for an OpenAI client.
///
/// Out: a first chunk with `delta.role: "assistant"` (on `message_start`); a chunk per text
/// delta; per `tool_use` block a chunk with the call's `index`, `id`, `type` and
/// `function.name`, then chunks with its argument fragments (`input_json_delta`); a chunk with
/// `finish_reason` (on `message_delta`); then, on `message_stop`, a usage chunk
/// (`choices: []`) when `include_usage`, and `data: [DONE]`. With `include_usage` every chunk
/// carries `"usage": null` until the usage chunk, as OpenAI's do.
///
/// `thinking`, `redacted_thinking` and server-tool blocks and their deltas (`thinking_delta`,
/// `signature_delta`, `citations_delta`) are dropped, as in [`super::response_to_chat`];
/// `ping` and unknown events are skipped. An `error` event, or an event that is not JSON,
/// becomes an OpenAI error event (`data: {"error": {...}}`) followed by `[DONE]`, and ends the
/// translation. A stream that ends before `message_delta` ends with an error event too; one
/// that ends after it (without `message_stop`) is finished normally.
#[derive(Debug)]
pub struct StreamToChat {
    framer: SseFramer,
    model: String,
    include_usage: bool,
    created: u64,
    id: String,
    /// The role chunk has been sent.
    started: bool,
    /// What each Anthropic content block index became.
    blocks: HashMap<u64, Block>,
    /// OpenAI `tool_calls[].index` of the next tool call.
    next_tool: u64,
    /// Anthropic usage so far (`message_start`, updated by `message_delta`).
    usage: Value,
    /// The finish chunk has been sent.
    finished: bool,
    /// `[DONE]` has been sent: everything after is ignored.
    done: bool,
}

#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    Tool { index: u64 },
    Dropped,
}

impl StreamToChat {
    /// A translator whose chunks name `client_model`; `include_usage` as the client asked with
    /// `stream_options.include_usage`.
    pub fn new(client_model: &str, include_usage: bool) -> StreamToChat {
        StreamToChat {
            framer: SseFramer::new(),
            model: client_model.to_owned(),
            include_usage,
            created: unix_now(),
            id: "chatcmpl-gantry".to_owned(),
            started: false,
            blocks: HashMap::new(),
            next_tool: 0,
            usage: json!({}),
            finished: false,
            done: false,
        }
    }

    /// Sets the `created` timestamp of every chunk (the construction time by default).
    pub fn created_at(mut self, created: u64) -> StreamToChat {
        self.created = created;
        self
    }

    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn emit_delta(&mut self, delta: Value, out: &mut Vec<u8>) {
        self.ensure_started(out);
        let chunk = self.chunk(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": null,
        }]));
        write_data(out, &chunk);
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let chunk = self.chunk(json!([{
            "index": 0,
            "delta": { "role": "assistant", "content": "" },
            "logprobs": null,
            "finish_reason": null,
        }]));
        write_data(out, &chunk);
    }

    fn emit_finish(&mut self, stop_reason: Option<&str>, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.ensure_started(out);
        self.finished = true;
        let chunk = self.chunk(json!([{
            "index": 0,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish_reason(stop_reason.unwrap_or("end_turn")),
        }]));
        write_data(out, &chunk);
    }

    fn emit_end(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": chat_usage(&self.usage),
            });
            write_data(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn emit_error(&mut self, error: Value, out: &mut Vec<u8>) {
        write_data(out, &error);
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn merge_usage(&mut self, usage: Option<&Value>) {
        let (Some(Value::Object(update)), Some(current)) = (usage, self.usage.as_object_mut())
        else {
            return;
        };
        for (field, value) in update {
            if value.is_u64() {
                current.insert(field.clone(), value.clone());
            }
        }
    }

    fn handle_event(&mut self, event: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(data) = event_data(event) else {
            return;
        };
        let event: Value = match serde_json::from_str(&data) {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, "anthropic stream: event is not JSON");
                let error = openai_error(
                    "api_error",
                    0,
                    &format!("the provider sent a stream event that is not JSON: {error}"),
                );
                self.emit_error(error, out);
                return;
            }
        };
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let message = event.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = id.to_owned();
                }
                self.merge_usage(message.get("usage"));
                self.ensure_started(out);
            }
            "content_block_start" => self.block_start(&event, out),
            "content_block_delta" => self.block_delta(&event, out),
            "message_delta" => {
                self.merge_usage(event.get("usage"));
                let stop = event
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if stop.is_some() {
                    self.emit_finish(stop, out);
                }
            }
            "message_stop" => {
                self.emit_finish(None, out);
                self.emit_end(out);
            }
            "error" => {
                let error = event.get("error").unwrap_or(&Value::Null);
                let kind = error
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error");
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider's stream failed");
                self.emit_error(openai_error(kind, 0, message), out);
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
    }

    fn block_start(&mut self, event: &Value, out: &mut Vec<u8>) {
        let Some(index) = event.get("index").and_then(Value::as_u64) else {
            return;
        };
        let block = event.get("content_block").unwrap_or(&Value::Null);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                self.blocks.insert(index, Block::Text);
                if let Some(text) = block
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.emit_delta(json!({ "content": text }), out);
                }
            }
            Some("tool_use") => {
                let tool = self.next_tool;
                self.next_tool += 1;
                self.blocks.insert(index, Block::Tool { index: tool });
                let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                self.emit_delta(
                    json!({ "tool_calls": [{
                        "index": tool,
                        "id": id,
                        "type": "function",
                        "function": { "name": name, "arguments": "" },
                    }]}),
                    out,
                );
                // A start block normally has `input: {}` and the input arrives as deltas;
                // a complete input here is sent as one fragment.
                if let Some(input) = block
                    .get("input")
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                {
                    self.emit_arguments(tool, &input.to_string(), out);
                }
            }
            other => {
                tracing::debug!(block = ?other, "anthropic stream: block dropped");
                self.blocks.insert(index, Block::Dropped);
            }
        }
    }

    fn emit_arguments(&mut self, tool: u64, fragment: &str, out: &mut Vec<u8>) {
        self.emit_delta(
            json!({ "tool_calls": [{ "index": tool, "function": { "arguments": fragment } }] }),
            out,
        );
    }

    fn block_delta(&mut self, event: &Value, out: &mut Vec<u8>) {
        let Some(index) = event.get("index").and_then(Value::as_u64) else {
            return;
        };
        let delta = event.get("delta").unwrap_or(&Value::Null);
        let block = self.blocks.get(&index).copied();
        match (delta.get("type").and_then(Value::as_str), block) {
            (Some("text_delta"), Some(Block::Text) | None) => {
                if let Some(text) = delta
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.emit_delta(json!({ "content": text }), out);
                }
            }
            (Some("input_json_delta"), Some(Block::Tool { index: tool })) => {
                if let Some(fragment) = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .filter(|f| !f.is_empty())
                {
                    self.emit_arguments(tool, fragment, out);
                }
            }
            _ => {}
        }
    }
}

fn write_data(out: &mut Vec<u8>, payload: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl StreamTranslator for StreamToChat {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.framer.push(chunk) {
            self.handle_event(&event, &mut out);
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        // A last event without its blank line still counts.
        let tail = self.framer.take_pending();
        if !tail.iter().all(u8::is_ascii_whitespace) {
            self.handle_event(&tail, &mut out);
        }
        if self.done {
            return out;
        }
        if self.finished {
            self.emit_end(&mut out);
        } else {
            let error = openai_error(
                "api_error",
                0,
                "the provider's stream ended before the reply was complete",
            );
            self.emit_error(error, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text reply as Anthropic streams it (shape from the streaming docs).
    const TEXT_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01QC4g3HwBThD4BaNtBckFDJ\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2048,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"! Ça va — très bien 👋\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    /// Thinking, text, then two parallel tool calls whose input arrives in fragments.
    const TOOL_STREAM: &str = concat!(
        "event: message_start\r\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-1\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\r\n\r\n",
        "event: content_block_start\r\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Two cities.\"}}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...\"}}\r\n\r\n",
        "event: content_block_stop\r\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
        "event: content_block_start\r\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking both.\"}}\r\n\r\n",
        "event: content_block_stop\r\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\r\n\r\n",
        "event: content_block_start\r\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Par\"}}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\r\n\r\n",
        "event: content_block_stop\r\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\r\n\r\n",
        "event: content_block_start\r\n",
        "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up7\",\"name\":\"get_weather\",\"input\":{}}}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Tokyo\\\"}\"}}\r\n\r\n",
        "event: content_block_stop\r\n",
        "data: {\"type\":\"content_block_stop\",\"index\":3}\r\n\r\n",
        "event: message_delta\r\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\r\n\r\n",
        "event: message_stop\r\n",
        "data: {\"type\":\"message_stop\"}\r\n\r\n",
    );

    fn translate_whole(stream: &str, include_usage: bool) -> String {
        let mut translator = StreamToChat::new("claude", include_usage).created_at(1_700_000_000);
        let mut out = translator.push(stream.as_bytes());
        out.extend(translator.finish());
        String::from_utf8(out).expect("utf-8")
    }

    /// The JSON payloads of an OpenAI stream, checking `[DONE]` comes once, last.
    fn chunks(out: &str) -> Vec<Value> {
        let payloads: Vec<&str> = out
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").expect("data event"))
            .collect();
        assert_eq!(payloads.last(), Some(&"[DONE]"), "{out}");
        assert_eq!(payloads.iter().filter(|p| **p == "[DONE]").count(), 1);
        payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).expect("JSON chunk"))
            .collect()
    }

    #[test]
    fn a_text_stream_becomes_chunks_with_usage() {
        let out = translate_whole(TEXT_STREAM, true);
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 5, "{out}");
        for chunk in &chunks[..4] {
            assert_eq!(chunk["id"], "msg_01QC4g3HwBThD4BaNtBckFDJ");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "claude");
            assert_eq!(chunk["created"], 1_700_000_000);
            assert_eq!(chunk["usage"], Value::Null);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(
            chunks[1]["choices"][0]["delta"],
            json!({"content": "Hello"})
        );
        assert_eq!(
            chunks[2]["choices"][0]["delta"],
            json!({"content": "! Ça va — très bien 👋"})
        );
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(
            chunks[4]["usage"],
            json!({"prompt_tokens": 2060, "completion_tokens": 15, "total_tokens": 2075, "prompt_tokens_details": {"cached_tokens": 2048}})
        );
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk() {
        let out = translate_whole(TEXT_STREAM, false);
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn tool_calls_stream_with_index_id_name_then_arguments() {
        let out = translate_whole(TOOL_STREAM, true);
        let chunks = chunks(&out);
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|choice| &choice["delta"]))
            .collect();
        assert_eq!(
            deltas,
            [
                &json!({"role": "assistant", "content": ""}),
                &json!({"content": "Checking both."}),
                &json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\": \"Par"}}]}),
                &json!({"tool_calls": [{"index": 0, "function": {"arguments": "is\"}"}}]}),
                &json!({"tool_calls": [{"index": 1, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up7", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"location\": \"Tokyo\"}"}}]}),
                &json!({}),
            ]
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let usage = &chunks[chunks.len() - 1]["usage"];
        assert_eq!(
            usage,
            &json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561})
        );
    }

    #[test]
    fn max_tokens_and_refusal_stop_reasons() {
        for (stop, finish) in [
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
            ("stop_sequence", "stop"),
        ] {
            let stream = TEXT_STREAM.replace("\"end_turn\"", &format!("\"{stop}\""));
            let chunks = chunks(&translate_whole(&stream, false));
            assert_eq!(chunks[3]["choices"][0]["finish_reason"], finish, "{stop}");
        }
    }

    #[test]
    fn an_error_event_becomes_an_openai_error_then_done() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: error\n",
            "data: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ignored\"}}\n\n",
        );
        let out = translate_whole(stream, true);
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 3, "{out}");
        assert_eq!(
            chunks[2],
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
        );
        assert!(!out.contains("ignored"));
    }

    #[test]
    fn a_truncated_stream_ends_with_an_error() {
        let cut = &TEXT_STREAM[..TEXT_STREAM.find("event: message_delta").expect("has delta")];
        let out = translate_whole(cut, true);
        let chunks = chunks(&out);
        assert_eq!(
            chunks.last().map(|c| c["error"]["type"].clone()),
            Some(json!("server_error"))
        );
        // Cut after message_delta: the reply is complete, so it ends normally.
        let after_delta =
            &TEXT_STREAM[..TEXT_STREAM.find("event: message_stop").expect("has stop")];
        let chunks_after = chunks_of(after_delta);
        assert_eq!(chunks_after, chunks_of(TEXT_STREAM));
        // A last event without its blank line is still read.
        let no_blank = TEXT_STREAM.trim_end();
        assert_eq!(chunks_of(no_blank), chunks_of(TEXT_STREAM));
    }

    fn chunks_of(stream: &str) -> Vec<Value> {
        chunks(&translate_whole(stream, true))
    }

    #[test]
    fn output_does_not_depend_on_where_the_stream_is_split() {
        let error_stream = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":\"Internal server error\"}}}}\n\n",
            &TEXT_STREAM[..TEXT_STREAM.find("event: content_block_stop").expect("has stop")]
        );
        for (name, stream) in [
            ("text", TEXT_STREAM.to_owned()),
            ("tools", TOOL_STREAM.to_owned()),
            ("error", error_stream),
        ] {
            for include_usage in [true, false] {
                let out = crate::translate::anthropic::split_test::assert_split_invariant(
                    || StreamToChat::new("claude", include_usage).created_at(1_700_000_000),
                    stream.as_bytes(),
                );
                assert_eq!(
                    String::from_utf8(out).expect("utf-8"),
                    translate_whole(&stream, include_usage),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let out = translate_whole("event: message_start\ndata: {not json\n\n", false);
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not JSON")));
        // Nothing at all: an error, then [DONE].
        assert_eq!(chunks_of("").len(), 1);
    }
}
