//! `GenerateContentResponse` → OpenAI `chat.completion`, and the pieces the stream shares.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::translate::TranslateError;

/// Translates a `generateContent` reply into an OpenAI chat completion for `client_model`.
///
/// Each candidate becomes a choice (at its `index`): its text parts joined are the content
/// (`thought` parts, the model's reasoning summaries, are left out); its `functionCall` parts
/// become `tool_calls` with JSON-string arguments and the call's `id` when Gemini gave one,
/// otherwise a generated one (`call_<responseId>_<n>`, or `call_<n>`), stable for a given reply.
/// `finishReason` maps as `finish_reason` below says. A prompt blocked before any candidate
/// (`promptFeedback.blockReason`) is one choice with empty content and `content_filter`.
/// `usageMetadata` maps as `usage` below says.
pub fn response_to_chat(resp: &Value, client_model: &str) -> Result<Value, TranslateError> {
    let resp = resp.as_object().ok_or_else(|| TranslateError {
        param: None,
        message: "Gemini's reply is not a JSON object".into(),
    })?;
    let candidates = resp
        .get("candidates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut ids = CallIds::new(resp);
    let mut choices = Vec::new();
    for (position, candidate) in candidates.iter().enumerate() {
        let index = candidate
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let parts = Parts::of(candidate, &mut ids);
        let has_calls = !parts.tool_calls.is_empty();
        let mut message = Map::new();
        message.insert("role".into(), json!("assistant"));
        let content = if parts.text.is_empty() && has_calls {
            Value::Null
        } else {
            Value::String(parts.text)
        };
        message.insert("content".into(), content);
        if has_calls {
            message.insert("tool_calls".into(), Value::Array(parts.tool_calls));
        }
        let reason = candidate.get("finishReason").and_then(Value::as_str);
        choices.push(json!({
            "index": index,
            "message": message,
            "finish_reason": finish_reason(reason, has_calls),
        }));
    }
    if choices.is_empty() {
        if block_reason(resp).is_none() {
            return Err(TranslateError {
                param: None,
                message: "Gemini's reply has neither candidates nor a prompt block reason".into(),
            });
        }
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": "" },
            "finish_reason": "content_filter",
        }));
    }
    let mut out = Map::new();
    out.insert("id".into(), Value::String(completion_id(resp)));
    out.insert("object".into(), json!("chat.completion"));
    out.insert("created".into(), json!(created(resp)));
    out.insert("model".into(), json!(client_model));
    out.insert("choices".into(), Value::Array(choices));
    if let Some(metadata) = resp.get("usageMetadata") {
        out.insert("usage".into(), usage(metadata));
    }
    Ok(Value::Object(out))
}

/// Gemini's `finishReason` as an OpenAI `finish_reason`
/// (<https://ai.google.dev/api/generate-content#FinishReason>): `STOP` is `stop`, or
/// `tool_calls` when the candidate calls functions (Gemini has no reason of its own for that);
/// `MAX_TOKENS` is `length`; the safety and policy stops (`SAFETY`, `RECITATION`, `BLOCKLIST`,
/// `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT`) are
/// `content_filter`; anything else (`OTHER`, `LANGUAGE`, `MALFORMED_FUNCTION_CALL`, ...) is `stop`.
pub(super) fn finish_reason(reason: Option<&str>, has_calls: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT",
        ) => "content_filter",
        Some("STOP") | None if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// `usageMetadata` as OpenAI `usage`: `prompt_tokens` is `promptTokenCount` plus
/// `toolUsePromptTokenCount`; `completion_tokens` is `candidatesTokenCount` plus
/// `thoughtsTokenCount` (billed as output; also reported as
/// `completion_tokens_details.reasoning_tokens`); `total_tokens` is `totalTokenCount` (or the
/// sum); `cachedContentTokenCount` is `prompt_tokens_details.cached_tokens`
/// (<https://ai.google.dev/api/generate-content#UsageMetadata>).
pub(super) fn usage(metadata: &Value) -> Value {
    let count = |key: &str| metadata.get(key).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("promptTokenCount") + count("toolUsePromptTokenCount");
    let thoughts = count("thoughtsTokenCount");
    let completion = count("candidatesTokenCount") + thoughts;
    let total = metadata
        .get("totalTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or(prompt + completion);
    let mut out = Map::new();
    out.insert("prompt_tokens".into(), json!(prompt));
    out.insert("completion_tokens".into(), json!(completion));
    out.insert("total_tokens".into(), json!(total));
    if let Some(cached) = metadata
        .get("cachedContentTokenCount")
        .and_then(Value::as_u64)
    {
        out.insert(
            "prompt_tokens_details".into(),
            json!({ "cached_tokens": cached }),
        );
    }
    if metadata.get("thoughtsTokenCount").is_some() {
        out.insert(
            "completion_tokens_details".into(),
            json!({ "reasoning_tokens": thoughts }),
        );
    }
    Value::Object(out)
}

pub(super) fn block_reason(resp: &Map<String, Value>) -> Option<&str> {
    resp.get("promptFeedback")
        .and_then(|feedback| feedback.get("blockReason"))
        .and_then(Value::as_str)
}

/// `chatcmpl-<responseId>`, or a fixed id when Gemini sent none.
pub(super) fn completion_id(resp: &Map<String, Value>) -> String {
    match resp.get("responseId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => "chatcmpl-gemini".to_owned(),
    }
}

/// The reply's `createTime` (Vertex AI sends one) in Unix seconds, else the current time.
pub(super) fn created(resp: &Map<String, Value>) -> u64 {
    resp.get("createTime")
        .and_then(Value::as_str)
        .and_then(|time| {
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).ok()
        })
        .and_then(|time| u64::try_from(time.unix_timestamp()).ok())
        .unwrap_or_else(now)
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Tool call ids for function calls Gemini did not give one.
pub(super) struct CallIds {
    prefix: String,
    next: usize,
}

impl CallIds {
    pub(super) fn new(resp: &Map<String, Value>) -> CallIds {
        // Only characters every provider accepts in an id (Anthropic: [a-zA-Z0-9_-]).
        let response_id: String = resp
            .get("responseId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        let prefix = if response_id.is_empty() {
            "call_".to_owned()
        } else {
            format!("call_{response_id}_")
        };
        CallIds { prefix, next: 0 }
    }

    pub(super) fn id_for(&mut self, call: &Value) -> String {
        if let Some(id) = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
        {
            return id.to_owned();
        }
        let id = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        id
    }
}

/// A candidate's content: text joined, and function calls as OpenAI tool calls (without the
/// streaming `index`).
pub(super) struct Parts {
    pub(super) text: String,
    pub(super) tool_calls: Vec<Value>,
}

impl Parts {
    pub(super) fn of(candidate: &Value, ids: &mut CallIds) -> Parts {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        let parts = candidate
            .get("content")
            .and_then(|content| content.get("parts"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for part in parts {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(piece) = part.get("text").and_then(Value::as_str) {
                text.push_str(piece);
            }
            if let Some(call) = part.get("functionCall") {
                let name = call.get("name").and_then(Value::as_str).unwrap_or("");
                let args = call
                    .get("args")
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new()));
                tool_calls.push(json!({
                    "id": ids.id_for(call),
                    "type": "function",
                    "function": { "name": name, "arguments": args.to_string() },
                }));
            }
        }
        Parts { text, tool_calls }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything but `created`, which is the clock's when Gemini sends no createTime.
    fn without_created(mut chat: Value) -> Value {
        assert!(chat["created"].is_u64(), "created: {}", chat["created"]);
        chat.as_object_mut().unwrap().remove("created");
        chat
    }

    #[test]
    fn a_text_reply_with_cached_and_thinking_tokens() {
        let resp = json!({
            "candidates": [{
                "content": {"parts": [
                    {"text": "Thinking about Paris weather...", "thought": true},
                    {"text": "It is 18°C "},
                    {"text": "in Paris."}
                ], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]
            }],
            "usageMetadata": {
                "promptTokenCount": 1200,
                "candidatesTokenCount": 9,
                "totalTokenCount": 1250,
                "cachedContentTokenCount": 1024,
                "thoughtsTokenCount": 41,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "mEXtaMnFG9yqkdUPnaesmQY"
        });
        let chat = response_to_chat(&resp, "my-alias").unwrap();
        assert_eq!(
            without_created(chat),
            json!({
                "id": "chatcmpl-mEXtaMnFG9yqkdUPnaesmQY",
                "object": "chat.completion",
                "model": "my-alias",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "It is 18°C in Paris."},
                    "finish_reason": "stop"
                }],
                "usage": {
                    "prompt_tokens": 1200,
                    "completion_tokens": 50,
                    "total_tokens": 1250,
                    "prompt_tokens_details": {"cached_tokens": 1024},
                    "completion_tokens_details": {"reasoning_tokens": 41}
                }
            })
        );
    }

    #[test]
    fn parallel_function_calls() {
        let resp = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
                     "thoughtSignature": "CiQB0e2Kb0ss"},
                    {"functionCall": {"name": "get_time", "args": {"city": "Rome"}}},
                    {"functionCall": {"id": "fc-77", "name": "ping"}}
                ]},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 80, "candidatesTokenCount": 24, "totalTokenCount": 104},
            "responseId": "abc/+=123"
        });
        let chat = response_to_chat(&resp, "m").unwrap();
        assert_eq!(
            chat["choices"],
            json!([{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [
                        {"id": "call_abc123_0", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},
                        {"id": "call_abc123_1", "type": "function",
                         "function": {"name": "get_time", "arguments": "{\"city\":\"Rome\"}"}},
                        {"id": "fc-77", "type": "function",
                         "function": {"name": "ping", "arguments": "{}"}}
                    ]
                },
                "finish_reason": "tool_calls"
            }])
        );
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 80, "completion_tokens": 24, "total_tokens": 104})
        );
        // The same reply gives the same ids.
        assert_eq!(
            response_to_chat(&resp, "m").unwrap()["choices"],
            chat["choices"]
        );
    }

    #[test]
    fn text_beside_a_function_call_and_several_candidates() {
        let resp = json!({
            "candidates": [
                {"content": {"role": "model", "parts": [
                    {"text": "Checking."}, {"functionCall": {"name": "lookup", "args": {"q": "x"}}}
                ]}, "finishReason": "STOP", "index": 0},
                {"content": {"role": "model", "parts": [{"text": "A long"}]}, "finishReason": "MAX_TOKENS", "index": 1},
                {"content": {"role": "model", "parts": []}, "finishReason": "SAFETY", "index": 2}
            ]
        });
        let chat = response_to_chat(&resp, "m").unwrap();
        let choices = chat["choices"].as_array().unwrap();
        assert_eq!(choices[0]["message"]["content"], "Checking.");
        assert_eq!(choices[0]["message"]["tool_calls"][0]["id"], "call_0");
        assert_eq!(choices[0]["finish_reason"], "tool_calls");
        assert_eq!(
            choices[1]["message"],
            json!({"role": "assistant", "content": "A long"})
        );
        assert_eq!(choices[1]["finish_reason"], "length");
        assert_eq!(
            choices[2]["message"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(choices[2]["finish_reason"], "content_filter");
        assert_eq!(chat["id"], "chatcmpl-gemini");
        assert!(chat.get("usage").is_none());
    }

    #[test]
    fn a_blocked_prompt() {
        let resp = json!({
            "promptFeedback": {
                "blockReason": "SAFETY",
                "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]
            },
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
            "modelVersion": "gemini-2.0-flash"
        });
        let chat = response_to_chat(&resp, "m").unwrap();
        assert_eq!(
            chat["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}])
        );
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12})
        );
    }

    #[test]
    fn finish_reasons() {
        for (reason, calls, expected) in [
            (Some("STOP"), false, "stop"),
            (Some("STOP"), true, "tool_calls"),
            (None, true, "tool_calls"),
            (None, false, "stop"),
            (Some("MAX_TOKENS"), true, "length"),
            (Some("SAFETY"), false, "content_filter"),
            (Some("RECITATION"), false, "content_filter"),
            (Some("BLOCKLIST"), false, "content_filter"),
            (Some("PROHIBITED_CONTENT"), false, "content_filter"),
            (Some("SPII"), false, "content_filter"),
            (Some("IMAGE_SAFETY"), false, "content_filter"),
            (Some("OTHER"), false, "stop"),
            (Some("LANGUAGE"), false, "stop"),
            (Some("MALFORMED_FUNCTION_CALL"), false, "stop"),
            (Some("FINISH_REASON_UNSPECIFIED"), false, "stop"),
        ] {
            assert_eq!(finish_reason(reason, calls), expected, "{reason:?} {calls}");
        }
    }

    #[test]
    fn usage_without_a_total_and_with_tool_prompts() {
        assert_eq!(
            usage(
                &json!({"promptTokenCount": 10, "toolUsePromptTokenCount": 5, "candidatesTokenCount": 3})
            ),
            json!({"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 18})
        );
    }

    #[test]
    fn created_comes_from_create_time() {
        let resp = json!({
            "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
            "createTime": "2025-03-10T14:54:45.066123Z"
        });
        assert_eq!(
            response_to_chat(&resp, "m").unwrap()["created"],
            1_741_618_485
        );
    }

    #[test]
    fn a_reply_without_candidates_is_an_error() {
        assert!(response_to_chat(&json!({"usageMetadata": {"promptTokenCount": 3}}), "m").is_err());
        assert!(response_to_chat(&json!("text"), "m").is_err());
    }
}
