//! The canonical streamed reply (OpenAI `chat.completion.chunk` SSE, with
//! `stream_options.include_usage`) → Anthropic Messages stream events, for an Anthropic client
//! at the front door. Event shapes: <https://platform.claude.com/docs/en/build-with-claude/streaming>.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::errors::anthropic_error;
use super::{event_data, messages_usage, stop_reason};
use crate::sse::SseFramer;
use crate::translate::StreamTranslator;

/// Translates one OpenAI chunk stream for an Anthropic client.
///
/// Out, each as `event: <type>\ndata: <json>\n\n`: `message_start` (on the first chunk; its
/// usage is zero, as OpenAI reports usage only at the end), then per text run a `text` block
/// and per tool call a `tool_use` block (`content_block_start`, `content_block_delta` with
/// `text_delta` / `input_json_delta`, `content_block_stop`), then `message_delta` with the
/// `stop_reason` and the usage (including `input_tokens`, which current Anthropic SDKs take
/// from `message_delta`), then `message_stop`. `message_delta` waits for the usage chunk that
/// follows the finish chunk, or for `[DONE]`.
///
/// OpenAI streams one tool call after another; a fragment for an earlier call (never seen
/// from OpenAI) is sent on that call's block index. An OpenAI error event (`{"error": ...}`)
/// becomes an Anthropic `error` event and ends the translation, as does a stream that ends
/// before any finish reason.
#[derive(Debug)]
pub struct StreamFromChat {
    framer: SseFramer,
    model: String,
    /// `message_start` has been sent.
    started: bool,
    /// The Anthropic index of the next content block.
    next_block: u64,
    /// The block open now, if any.
    open: Option<Open>,
    /// Anthropic block index of each OpenAI tool call index.
    tool_blocks: HashMap<u64, u64>,
    stop_reason: Option<&'static str>,
    usage: Option<Value>,
    /// The translation has ended (`message_stop` or `error` sent).
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u64),
    Tool(u64),
}

impl Open {
    fn index(self) -> u64 {
        match self {
            Open::Text(index) | Open::Tool(index) => index,
        }
    }
}

impl StreamFromChat {
    /// A translator whose `message_start` names `client_model`.
    pub fn new(client_model: &str) -> StreamFromChat {
        StreamFromChat {
            framer: SseFramer::new(),
            model: client_model.to_owned(),
            started: false,
            next_block: 0,
            open: None,
            tool_blocks: HashMap::new(),
            stop_reason: None,
            usage: None,
            done: false,
        }
    }

    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        write_event(
            out,
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 },
                },
            }),
        );
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        if let Some(open) = self.open.take() {
            write_event(
                out,
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": open.index() }),
            );
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some(Open::Text(index)) => index,
            _ => {
                self.close_open(out);
                let index = self.next_block;
                self.next_block += 1;
                self.open = Some(Open::Text(index));
                write_event(
                    out,
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": index,
                        "content_block": { "type": "text", "text": "" },
                    }),
                );
                index
            }
        };
        write_event(
            out,
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": index,
                "delta": { "type": "text_delta", "text": text },
            }),
        );
    }

    fn tool_call(&mut self, call: &Value, position: u64, out: &mut Vec<u8>) {
        let openai_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position);
        let block = match self.tool_blocks.get(&openai_index) {
            Some(block) => *block,
            None => {
                self.close_open(out);
                let block = self.next_block;
                self.next_block += 1;
                self.tool_blocks.insert(openai_index, block);
                self.open = Some(Open::Tool(block));
                let id = call.get("id").and_then(Value::as_str).unwrap_or("");
                let name = call
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                write_event(
                    out,
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": block,
                        "content_block": { "type": "tool_use", "id": id, "name": name, "input": {} },
                    }),
                );
                block
            }
        };
        if let Some(fragment) = call
            .get("function")
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
        {
            write_event(
                out,
                "content_block_delta",
                &json!({
                    "type": "content_block_delta",
                    "index": block,
                    "delta": { "type": "input_json_delta", "partial_json": fragment },
                }),
            );
        }
    }

    /// `message_delta` and `message_stop`.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.close_open(out);
        let usage = messages_usage(self.usage.as_ref().unwrap_or(&Value::Null));
        write_event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": self.stop_reason.unwrap_or("end_turn"),
                    "stop_sequence": null,
                },
                "usage": usage,
            }),
        );
        write_event(out, "message_stop", &json!({ "type": "message_stop" }));
        self.done = true;
    }

    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        write_event(out, "error", &anthropic_error(kind, message));
        self.done = true;
    }

    fn handle_event(&mut self, event: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(data) = event_data(event) else {
            return;
        };
        if data.trim() == "[DONE]" {
            if self.started || self.stop_reason.is_some() {
                self.start("msg_gantry", out);
                self.end(out);
            } else {
                self.fail(
                    "api_error",
                    "the provider's stream ended without a reply",
                    out,
                );
            }
            return;
        }
        let chunk: Value = match serde_json::from_str(&data) {
            Ok(chunk) => chunk,
            Err(error) => {
                tracing::debug!(%error, "chat stream: chunk is not JSON");
                let message = format!("the provider sent a stream chunk that is not JSON: {error}");
                self.fail("api_error", &message, out);
                return;
            }
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| error.as_str())
                .unwrap_or("the provider's stream failed");
            self.fail(anthropic_type_of(error), message, out);
            return;
        }
        let usage = chunk.get("usage").filter(|u| u.is_object());
        let choice = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| {
                choices
                    .iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            });
        if choice.is_none() && usage.is_none() {
            // E.g. Azure's first chunk, which only carries prompt filter results.
            return;
        }
        let id = chunk
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .unwrap_or("msg_gantry");
        self.start(id, out);
        if let Some(usage) = usage {
            self.usage = Some(usage.clone());
        }
        if let Some(choice) = choice {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            for field in ["content", "refusal"] {
                if let Some(text) = delta
                    .get(field)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.text(text, out);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (position, call) in calls.iter().enumerate() {
                    self.tool_call(call, position as u64, out);
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.stop_reason = Some(stop_reason(reason));
                self.close_open(out);
            }
        }
        // The usage chunk comes after the finish chunk; some providers put usage on the
        // finish chunk itself.
        if self.stop_reason.is_some() && self.usage.is_some() {
            self.end(out);
        }
    }
}

/// The Anthropic error type of an OpenAI error object sent inside a stream (no status there:
/// its `type` and `code` decide).
fn anthropic_type_of(error: &Value) -> &'static str {
    let field = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or("");
    match (field("type"), field("code")) {
        (_, "rate_limit_exceeded") | ("requests" | "tokens", _) => "rate_limit_error",
        (_, "insufficient_quota") | ("insufficient_quota", _) => "billing_error",
        (_, "invalid_api_key") => "authentication_error",
        ("invalid_request_error", _) => "invalid_request_error",
        _ => "api_error",
    }
}

fn write_event(out: &mut Vec<u8>, name: &str, payload: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(payload.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl StreamTranslator for StreamFromChat {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.framer.push(chunk) {
            self.handle_event(&event, &mut out);
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let tail = self.framer.take_pending();
        if !tail.iter().all(u8::is_ascii_whitespace) {
            self.handle_event(&tail, &mut out);
        }
        if self.done {
            return out;
        }
        if self.stop_reason.is_some() {
            self.end(&mut out);
        } else {
            self.close_open(&mut out);
            self.fail(
                "api_error",
                "the provider's stream ended before the reply was complete",
                &mut out,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#""id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb""#;

    fn chunk(choice: &str) -> String {
        format!("data: {{{HEAD},\"choices\":[{choice}],\"usage\":null}}\n\n")
    }

    fn usage_chunk() -> String {
        format!("data: {{{HEAD},\"choices\":[],\"usage\":{{\"prompt_tokens\":1117,\"completion_tokens\":12,\"total_tokens\":1129,\"prompt_tokens_details\":{{\"cached_tokens\":1024}}}}}}\n\n")
    }

    fn text_stream() -> String {
        [
            chunk(r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"content":" there — ünïcødé 🌍"},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#),
            usage_chunk(),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat()
    }

    fn tool_stream() -> String {
        [
            chunk(r#"{"index":0,"delta":{"role":"assistant","content":null},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"content":"Let me check."},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"location\":"}}]},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_ABC","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}"#),
            usage_chunk(),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat()
    }

    fn translate_whole(stream: &str) -> String {
        let mut translator = StreamFromChat::new("claude-alias");
        let mut out = translator.push(stream.as_bytes());
        out.extend(translator.finish());
        String::from_utf8(out).expect("utf-8")
    }

    /// (event name, payload) pairs, checking each event's name matches its payload's type.
    fn events(out: &str) -> Vec<(String, Value)> {
        out.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                let (name, data) = event.split_once('\n').expect("two lines");
                let name = name.strip_prefix("event: ").expect("event line");
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                        .expect("JSON");
                assert_eq!(data["type"], name, "{event}");
                (name.to_owned(), data)
            })
            .collect()
    }

    #[test]
    fn a_text_stream_becomes_anthropic_events() {
        let events = events(&translate_whole(&text_stream()));
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[0].1["message"],
            json!({"id": "chatcmpl-123", "type": "message", "role": "assistant", "model": "claude-alias",
                   "content": [], "stop_reason": null, "stop_sequence": null,
                   "usage": {"input_tokens": 0, "output_tokens": 0}})
        );
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "text_delta", "text": "Hello"})
        );
        assert_eq!(events[3].1["delta"]["text"], " there — ünïcødé 🌍");
        assert_eq!(
            events[5].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"input_tokens": 93, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024, "output_tokens": 12}})
        );
    }

    #[test]
    fn tool_calls_become_tool_use_blocks() {
        let events = events(&translate_whole(&tool_stream()));
        let summary: Vec<Value> = events
            .iter()
            .map(|(name, data)| match name.as_str() {
                "content_block_start" => json!([name, data["index"], data["content_block"]]),
                "content_block_delta" => json!([name, data["index"], data["delta"]]),
                "content_block_stop" => json!([name, data["index"]]),
                "message_delta" => json!([name, data["delta"]["stop_reason"]]),
                _ => json!([name]),
            })
            .collect();
        assert_eq!(
            summary,
            [
                json!(["message_start"]),
                json!(["content_block_start", 0, {"type": "text", "text": ""}]),
                json!(["content_block_delta", 0, {"type": "text_delta", "text": "Let me check."}]),
                json!(["content_block_stop", 0]),
                json!(["content_block_start", 1, {"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {}}]),
                json!(["content_block_delta", 1, {"type": "input_json_delta", "partial_json": "{\"location\":"}]),
                json!(["content_block_delta", 1, {"type": "input_json_delta", "partial_json": "\"Paris\"}"}]),
                json!(["content_block_stop", 1]),
                json!(["content_block_start", 2, {"type": "tool_use", "id": "call_ABC", "name": "get_time", "input": {}}]),
                json!(["content_block_delta", 2, {"type": "input_json_delta", "partial_json": "{}"}]),
                json!(["content_block_stop", 2]),
                json!(["message_delta", "tool_use"]),
                json!(["message_stop"]),
            ]
        );
    }

    #[test]
    fn length_and_content_filter_stop_reasons() {
        for (finish, stop) in [("length", "max_tokens"), ("content_filter", "refusal")] {
            let stream = text_stream().replace(
                "\"finish_reason\":\"stop\"",
                &format!("\"finish_reason\":\"{finish}\""),
            );
            let events = events(&translate_whole(&stream));
            let delta = events
                .iter()
                .find(|(n, _)| n == "message_delta")
                .expect("message_delta");
            assert_eq!(delta.1["delta"]["stop_reason"], stop);
        }
    }

    #[test]
    fn without_a_usage_chunk_done_still_ends_the_message() {
        let stream = text_stream().replace(&usage_chunk(), "");
        let events = events(&translate_whole(&stream));
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
        assert_eq!(events[events.len() - 2].1["usage"]["output_tokens"], 0);
    }

    #[test]
    fn errors_mid_stream_and_truncation() {
        let stream = [
            chunk(r#"{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}"#),
            "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n".to_owned(),
            chunk(r#"{"index":0,"delta":{"content":"ignored"},"finish_reason":null}"#),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let out = translate_whole(&stream);
        let failed = events(&out);
        let (name, error) = failed.last().expect("events");
        assert_eq!(name, "error");
        assert_eq!(
            error,
            &json!({"type": "error", "error": {"type": "api_error", "message": "The server had an error while processing your request."}})
        );
        assert!(!out.contains("ignored"));

        let cut = text_stream();
        let cut = &cut[..cut.find("\"finish_reason\":\"stop\"").expect("finish")];
        let cut = &cut[..cut.rfind("data: ").expect("chunk")];
        let truncated = events(&translate_whole(cut));
        let names: Vec<&str> = truncated.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["content_block_stop", "error"]);

        let empty = events(&translate_whole("data: [DONE]\n\n"));
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].0, "error");
    }

    #[test]
    fn output_does_not_depend_on_where_the_stream_is_split() {
        let error_stream = [
            chunk(r#"{"index":0,"delta":{"role":"assistant","content":"Partial"},"finish_reason":null}"#),
            "data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\n".to_owned(),
        ]
        .concat();
        for (name, stream) in [
            ("text", text_stream()),
            ("tools", tool_stream()),
            ("error", error_stream),
            ("crlf", text_stream().replace('\n', "\r\n")),
        ] {
            let out = crate::translate::anthropic::split_test::assert_split_invariant(
                || StreamFromChat::new("claude-alias"),
                stream.as_bytes(),
            );
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                translate_whole(&stream),
                "{name}"
            );
        }
    }

    #[test]
    fn provider_to_front_door_round_trip() {
        // An OpenAI client's stream from Anthropic, read back by the front door: same text,
        // same tool calls, same stop reason.
        let anthropic_stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let mut to_chat = super::super::StreamToChat::new("claude", true);
        let mut chat = to_chat.push(anthropic_stream.as_bytes());
        chat.extend(to_chat.finish());
        let mut from_chat = StreamFromChat::new("claude");
        let mut back = from_chat.push(&chat);
        back.extend(from_chat.finish());
        let back = String::from_utf8(back).expect("utf-8");
        let events = events(&back);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[1].1["content_block"]["id"], "toolu_1");
        assert_eq!(events[2].1["delta"]["partial_json"], "{\"a\":1}");
        assert_eq!(events[4].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[4].1["usage"]["input_tokens"], 9);
        assert_eq!(events[4].1["usage"]["output_tokens"], 5);
    }
}
