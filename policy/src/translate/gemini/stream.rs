//! Gemini's `streamGenerateContent?alt=sse` stream → OpenAI `chat.completion.chunk` events.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::error;
use super::response::{self, CallIds, Parts};
use crate::sse::SseFramer;
use crate::translate::StreamTranslator;

/// Translates one Gemini SSE stream for an OpenAI client.
///
/// Every Gemini event is a whole `GenerateContentResponse` (`data: {...}`, events separated by
/// a blank line, `\r\n\r\n` as Google sends it or `\n\n`) carrying the next text of each
/// candidate; function calls arrive whole, in one event. Out come, per candidate: a role chunk
/// first (`{"role":"assistant","content":""}`), a chunk per event with new text and/or
/// `tool_calls` (each call complete: id, name, arguments; `index` counts the candidate's
/// calls), and a finish chunk when the candidate's `finishReason` arrives. When the client
/// asked for usage, every chunk carries `"usage": null` and the last `usageMetadata` seen
/// becomes a usage chunk (`"choices": []`) at the end. A prompt blocked outright
/// (`promptFeedback.blockReason`) is a role chunk and a `content_filter` finish. An `error`
/// object in the stream becomes an OpenAI error event, then `[DONE]`, and the rest of the
/// stream is ignored. The stream ends with `data: [DONE]`.
pub struct StreamToChat {
    framer: SseFramer,
    model: String,
    include_usage: bool,
    created: u64,
    /// The chunks' id, from the first event's `responseId`.
    id: Option<String>,
    call_ids: Option<CallIds>,
    candidates: BTreeMap<u64, CandidateState>,
    usage: Option<Value>,
    /// `[DONE]` was sent (after an error, or by `finish`).
    done: bool,
}

#[derive(Default)]
struct CandidateState {
    calls: usize,
    finished: bool,
}

impl StreamToChat {
    pub fn new(client_model: &str, include_usage: bool) -> StreamToChat {
        StreamToChat::created_at(client_model, include_usage, response::now())
    }

    /// With a fixed `created` time (tests compare whole outputs).
    fn created_at(client_model: &str, include_usage: bool, created: u64) -> StreamToChat {
        StreamToChat {
            framer: SseFramer::new(),
            model: client_model.to_owned(),
            include_usage,
            created,
            id: None,
            call_ids: None,
            candidates: BTreeMap::new(),
            usage: None,
            done: false,
        }
    }

    fn event(&mut self, event: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(payload) = data_of(event) else {
            return;
        };
        let payload = payload.trim_ascii();
        if payload.is_empty() || payload == b"[DONE]" {
            return;
        }
        let value: Value = match serde_json::from_slice(payload) {
            Ok(value) => value,
            Err(error) => {
                tracing::debug!(%error, "gemini stream: an event that is not JSON was skipped");
                return;
            }
        };
        // A streaming call without alt=sse would send one JSON array; read its items too.
        let responses = match value {
            Value::Array(items) => items,
            other => vec![other],
        };
        for resp in responses {
            if self.done {
                return;
            }
            if let Some(error) = resp.get("error").filter(|error| error.is_object()) {
                let status = error::http_status_of(error, 500);
                let body = error::from_google(error, status);
                emit(out, &body);
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
                return;
            }
            if let Value::Object(resp) = resp {
                self.response(&resp, out);
            }
        }
    }

    fn response(&mut self, resp: &Map<String, Value>, out: &mut Vec<u8>) {
        if self.id.is_none() {
            self.id = Some(response::completion_id(resp));
        }
        let ids = self.call_ids.get_or_insert_with(|| CallIds::new(resp));
        let mut chunks = Vec::new();
        if let Some(metadata) = resp.get("usageMetadata") {
            self.usage = Some(response::usage(metadata));
        }
        let candidates = resp
            .get("candidates")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (position, candidate) in candidates.iter().enumerate() {
            let index = candidate
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let state = match self.candidates.get_mut(&index) {
                Some(state) => state,
                None => {
                    chunks.push(role_choice(index));
                    self.candidates.entry(index).or_default()
                }
            };
            if state.finished {
                continue;
            }
            let parts = Parts::of(candidate, ids);
            let mut delta = Map::new();
            if !parts.text.is_empty() {
                delta.insert("content".into(), Value::String(parts.text));
            }
            if !parts.tool_calls.is_empty() {
                let calls: Vec<Value> = parts
                    .tool_calls
                    .into_iter()
                    .map(|mut call| {
                        if let Value::Object(call) = &mut call {
                            call.insert("index".into(), json!(state.calls));
                        }
                        state.calls += 1;
                        call
                    })
                    .collect();
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            if !delta.is_empty() {
                chunks.push(json!({ "index": index, "delta": delta, "finish_reason": null }));
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                state.finished = true;
                let reason = response::finish_reason(Some(reason), state.calls > 0);
                chunks.push(json!({ "index": index, "delta": {}, "finish_reason": reason }));
            }
        }
        if candidates.is_empty() && response::block_reason(resp).is_some() {
            let state = self.candidates.entry(0).or_default();
            if !state.finished {
                state.finished = true;
                chunks.push(role_choice(0));
                chunks.push(json!({ "index": 0, "delta": {}, "finish_reason": "content_filter" }));
            }
        }
        for choice in chunks {
            let chunk = self.chunk(vec![choice], None);
            emit(out, &chunk);
        }
    }

    fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut chunk = Map::new();
        chunk.insert(
            "id".into(),
            Value::String(self.id.clone().unwrap_or_else(|| "chatcmpl-gemini".into())),
        );
        chunk.insert("object".into(), json!("chat.completion.chunk"));
        chunk.insert("created".into(), json!(self.created));
        chunk.insert("model".into(), json!(self.model));
        chunk.insert("choices".into(), Value::Array(choices));
        if self.include_usage {
            chunk.insert("usage".into(), usage.unwrap_or(Value::Null));
        }
        Value::Object(chunk)
    }
}

impl StreamTranslator for StreamToChat {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.framer.push(chunk) {
            self.event(&event, &mut out);
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        // A last event without its blank line still counts.
        let rest = self.framer.take_pending();
        if !rest.is_empty() {
            self.event(&rest, &mut out);
        }
        if self.done {
            return out;
        }
        if self.include_usage {
            if let Some(usage) = self.usage.take() {
                let chunk = self.chunk(Vec::new(), Some(usage));
                emit(&mut out, &chunk);
            }
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
        out
    }
}

fn role_choice(index: u64) -> Value {
    json!({
        "index": index,
        "delta": { "role": "assistant", "content": "" },
        "finish_reason": null,
    })
}

fn emit(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The data of one SSE event: its `data:` lines joined by newlines (comments and other
/// fields ignored); `None` when it has no data. A body that is bare JSON (an error Google sent
/// without SSE framing) is taken as it is.
fn data_of(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|byte| *byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            match &mut data {
                Some(data) => {
                    data.push(b'\n');
                    data.extend_from_slice(rest);
                }
                None => data = Some(rest.to_vec()),
            }
        }
    }
    if data.is_none() {
        let trimmed = event.trim_ascii();
        if trimmed.starts_with(b"{") || trimmed.starts_with(b"[") {
            return Some(trimmed.to_vec());
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: u64 = 1_700_000_000;

    /// A text reply as Google streams it: one event per piece, `\r\n\r\n` between events,
    /// usage growing in every event, the finish reason and final usage in the last.
    const TEXT_STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Bonjour\"}],\"role\": \"model\"},\"index\": 0}],",
        "\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"resp-1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" le monde — ünïcödé ✓ 🌍\"}],\"role\": \"model\"},\"index\": 0}],",
        "\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 6,\"totalTokenCount\": 15},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"resp-1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"!\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],",
        "\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 7,\"totalTokenCount\": 32,\"cachedContentTokenCount\": 4,\"thoughtsTokenCount\": 16},",
        "\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"resp-1\"}\r\n\r\n",
    );

    /// A thinking model calling two functions at once: a thought summary, text, then both
    /// calls whole in one event.
    const TOOL_STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"**Planning** I need the weather and the time.\", \"thought\": true}],\"role\": \"model\"},\"index\": 0}],",
        "\"usageMetadata\": {\"promptTokenCount\": 120,\"totalTokenCount\": 150,\"thoughtsTokenCount\": 30},\"responseId\": \"r-tools\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Let me look.\"}],\"role\": \"model\"},\"index\": 0}],",
        "\"usageMetadata\": {\"promptTokenCount\": 120,\"candidatesTokenCount\": 3,\"totalTokenCount\": 153,\"thoughtsTokenCount\": 30},\"responseId\": \"r-tools\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [",
        "{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}},\"thoughtSignature\": \"CiwBVKhc7nU=\"},",
        "{\"functionCall\": {\"name\": \"get_time\",\"args\": {\"city\": \"Paris\",\"tz\": true}}}",
        "],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],",
        "\"usageMetadata\": {\"promptTokenCount\": 120,\"candidatesTokenCount\": 40,\"totalTokenCount\": 190,\"thoughtsTokenCount\": 30},\"responseId\": \"r-tools\"}\r\n\r\n",
    );

    const ERROR_STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Partial\"}],\"role\": \"model\"},\"index\": 0}],\"responseId\": \"r-err\"}\r\n\r\n",
        "data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded. Please try again later.\", \"status\": \"UNAVAILABLE\"}}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"ignored\"}],\"role\": \"model\"},\"index\": 0}]}\r\n\r\n",
    );

    const BLOCKED_STREAM: &str = concat!(
        "data: {\"promptFeedback\": {\"blockReason\": \"PROHIBITED_CONTENT\"},",
        "\"usageMetadata\": {\"promptTokenCount\": 7,\"totalTokenCount\": 7},\"modelVersion\": \"gemini-2.5-pro\",\"responseId\": \"r-blocked\"}\r\n\r\n",
    );

    /// Runs `stream` through a fresh translator, cut at `cuts` (ascending offsets).
    fn run(stream: &[u8], cuts: &[usize], include_usage: bool) -> Vec<u8> {
        let mut translator = StreamToChat::created_at("my-alias", include_usage, CREATED);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            out.extend(translator.push(&stream[start..cut]));
            start = cut;
        }
        out.extend(translator.push(&stream[start..]));
        out.extend(translator.finish());
        out
    }

    fn events(out: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        text.trim_end_matches("\n\n")
            .split("\n\n")
            .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    fn chunk(choice: Value) -> String {
        json!({
            "id": "chatcmpl-resp-1", "object": "chat.completion.chunk", "created": CREATED,
            "model": "my-alias", "choices": [choice], "usage": null
        })
        .to_string()
    }

    #[test]
    fn a_text_stream_with_usage() {
        let out = run(TEXT_STREAM.as_bytes(), &[], true);
        let expected = vec![
            chunk(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
            ),
            chunk(json!({"index": 0, "delta": {"content": "Bonjour"}, "finish_reason": null})),
            chunk(
                json!({"index": 0, "delta": {"content": " le monde — ünïcödé ✓ 🌍"}, "finish_reason": null}),
            ),
            chunk(json!({"index": 0, "delta": {"content": "!"}, "finish_reason": null})),
            chunk(json!({"index": 0, "delta": {}, "finish_reason": "stop"})),
            json!({
                "id": "chatcmpl-resp-1", "object": "chat.completion.chunk", "created": CREATED,
                "model": "my-alias", "choices": [],
                "usage": {
                    "prompt_tokens": 9, "completion_tokens": 23, "total_tokens": 32,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 16}
                }
            })
            .to_string(),
            "[DONE]".to_owned(),
        ];
        assert_eq!(events(&out), expected);
    }

    #[test]
    fn without_usage_the_chunks_carry_none() {
        let out = run(TEXT_STREAM.as_bytes(), &[], false);
        let events = events(&out);
        assert_eq!(events.len(), 6);
        assert_eq!(events[5], "[DONE]");
        for event in &events[..5] {
            let chunk: Value = serde_json::from_str(event).unwrap();
            assert!(chunk.get("usage").is_none(), "{event}");
        }
    }

    #[test]
    fn parallel_function_calls_arrive_whole() {
        let out = run(TOOL_STREAM.as_bytes(), &[], false);
        let chunks: Vec<Value> = events(&out)[..4]
            .iter()
            .map(|event| serde_json::from_str::<Value>(event).unwrap()["choices"][0].clone())
            .collect();
        assert_eq!(
            chunks,
            vec![
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
                json!({"index": 0, "delta": {"content": "Let me look."}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [
                    {"id": "call_r-tools_0", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}, "index": 0},
                    {"id": "call_r-tools_1", "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"city\":\"Paris\",\"tz\":true}"}, "index": 1}
                ]}, "finish_reason": null}),
                json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
            ]
        );
        assert_eq!(events(&out).len(), 5);
    }

    #[test]
    fn an_error_in_the_stream_ends_it() {
        let out = run(ERROR_STREAM.as_bytes(), &[], true);
        let events = events(&out);
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&events[1]).unwrap()["choices"][0]["delta"]["content"],
            "Partial"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&events[2]).unwrap(),
            json!({"error": {
                "message": "The model is overloaded. Please try again later.",
                "type": "server_error", "param": null, "code": "unavailable"
            }})
        );
        assert_eq!(events[3], "[DONE]");
    }

    #[test]
    fn a_blocked_prompt_finishes_with_content_filter() {
        let out = run(BLOCKED_STREAM.as_bytes(), &[], true);
        let events = events(&out);
        let values: Vec<Value> = events[..3]
            .iter()
            .map(|event| serde_json::from_str(event).unwrap())
            .collect();
        assert_eq!(
            values[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(values[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(
            values[2]["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7})
        );
        assert_eq!(events[3], "[DONE]");
    }

    #[test]
    fn lf_framing_a_missing_last_blank_line_and_several_candidates() {
        let stream = concat!(
            ": keep-alive comment\n\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"A\"}]},\"index\": 0},",
            "{\"content\": {\"parts\": [{\"text\": \"B\"}]},\"index\": 1}]}\n\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"b\"}]},\"finishReason\": \"MAX_TOKENS\",\"index\": 1},",
            "{\"content\": {\"parts\": [{\"text\": \"a\"}]},\"finishReason\": \"STOP\",\"index\": 0}]}"
        );
        let out = run(stream.as_bytes(), &[], false);
        let choices: Vec<Value> = events(&out)
            .iter()
            .filter(|event| *event != "[DONE]")
            .map(|event| serde_json::from_str::<Value>(event).unwrap()["choices"][0].clone())
            .collect();
        let summary: Vec<(u64, Value, Value)> = choices
            .iter()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap(),
                    c["delta"].clone(),
                    c["finish_reason"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, json!({"role": "assistant", "content": ""}), Value::Null),
                (0, json!({"content": "A"}), Value::Null),
                (1, json!({"role": "assistant", "content": ""}), Value::Null),
                (1, json!({"content": "B"}), Value::Null),
                (1, json!({"content": "b"}), Value::Null),
                (1, json!({}), json!("length")),
                (0, json!({"content": "a"}), Value::Null),
                (0, json!({}), json!("stop")),
            ]
        );
        assert_eq!(
            serde_json::from_str::<Value>(&events(&out)[0]).unwrap()["id"],
            "chatcmpl-gemini"
        );
    }

    #[test]
    fn an_empty_stream_is_just_done() {
        assert_eq!(run(b"", &[], true), b"data: [DONE]\n\n".to_vec());
        let mut translator = StreamToChat::new("m", false);
        assert!(translator.push(b"data: not json\r\n\r\n").is_empty());
        assert_eq!(translator.finish(), b"data: [DONE]\n\n".to_vec());
        assert!(translator.finish().is_empty(), "[DONE] is sent once");
    }

    /// A small deterministic generator (xorshift64) for the random cuts.
    struct Cuts(u64);

    impl Cuts {
        fn next(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }
    }

    #[test]
    fn the_output_does_not_depend_on_how_the_input_is_cut() {
        let tool_and_text = format!("{TOOL_STREAM}{}", TEXT_STREAM.replace("\r\n", "\n"));
        let streams: [&str; 5] = [
            TEXT_STREAM,
            TOOL_STREAM,
            ERROR_STREAM,
            BLOCKED_STREAM,
            &tool_and_text,
        ];
        let mut cuts = Cuts(0x9e37_79b9_7f4a_7c15);
        for stream in streams {
            let bytes = stream.as_bytes();
            for include_usage in [true, false] {
                let whole = run(bytes, &[], include_usage);
                assert!(whole.ends_with(b"data: [DONE]\n\n"));
                for cut in 0..=bytes.len() {
                    assert_eq!(
                        run(bytes, &[cut], include_usage),
                        whole,
                        "cut at byte {cut} of {stream:?}"
                    );
                }
                let every_byte: Vec<usize> = (1..bytes.len()).collect();
                assert_eq!(
                    run(bytes, &every_byte, include_usage),
                    whole,
                    "byte by byte"
                );
                for _ in 0..50 {
                    let count = 1 + cuts.next(8);
                    let mut points: Vec<usize> =
                        (0..count).map(|_| cuts.next(bytes.len() + 1)).collect();
                    points.sort_unstable();
                    assert_eq!(
                        run(bytes, &points, include_usage),
                        whole,
                        "cuts at {points:?} of {stream:?}"
                    );
                }
            }
        }
    }
}
