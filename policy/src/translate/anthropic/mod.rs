//! The Anthropic Messages API (`POST /v1/messages`, reference:
//! <https://platform.claude.com/docs/en/api/messages/create>), both ways.
//!
//! **Anthropic as a provider** behind an OpenAI client: [`request_from_chat`] turns the
//! canonical chat request into a Messages request, [`response_to_chat`] and [`StreamToChat`]
//! turn the reply (JSON or SSE) back into a `chat.completion` / `chat.completion.chunk`
//! stream, and [`error_to_openai`] turns an Anthropic error body into an OpenAI error object.
//!
//! **Anthropic as a front door**: an Anthropic SDK client in front of any provider.
//! [`request_to_chat`] turns its Messages request into the canonical chat request,
//! [`response_from_chat`] and [`StreamFromChat`] turn the canonical reply back into a Messages
//! reply or event stream, and [`error_from_openai`] turns an OpenAI error object into the
//! Anthropic error shape.
//!
//! What each direction carries over, drops or refuses is documented on each function. In
//! short: text, images (base64 and URL), PDFs, system prompts, tool definitions, tool calls
//! and tool results, `tool_choice`, stop sequences, sampling settings, the end user, streaming
//! and JSON-schema output are mapped; `thinking` blocks and cache-control hints are dropped;
//! what cannot be expressed without changing the answer (`n > 1`, audio, server-side tools,
//! legacy `functions`, JSON mode without a schema) is refused with a
//! [`TranslateError`](super::TranslateError) naming the field.
//!
//! Pure functions over `serde_json::Value`; the one outside fact read is the wall clock for
//! the OpenAI `created` field.

mod errors;
mod stream_from_chat;
mod stream_to_chat;
mod to_chat;
mod to_messages;

#[cfg(test)]
mod split_test;

pub use errors::{error_from_openai, error_to_openai};
pub use stream_from_chat::StreamFromChat;
pub use stream_to_chat::StreamToChat;
pub use to_chat::{request_to_chat, response_to_chat};
pub use to_messages::{request_from_chat, response_from_chat};

use serde_json::{json, Map, Value};

/// The Messages endpoint, relative to the API base (`https://api.anthropic.com`).
pub const PATH: &str = "/v1/messages";
/// The request header naming the API version; Anthropic answers 400 without it.
pub const VERSION_HEADER: &str = "anthropic-version";
/// The API version Gantry speaks.
pub const VERSION: &str = "2023-06-01";
/// The request header carrying the API key (no `Bearer` prefix).
pub const API_KEY_HEADER: &str = "x-api-key";
/// `max_tokens` for a chat request that sets neither `max_completion_tokens` nor
/// `max_tokens`: Anthropic requires the field, OpenAI does not. 4096 is below every current
/// Claude model's output limit, so the default is accepted everywhere.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The OpenAI `finish_reason` for an Anthropic `stop_reason`. `pause_turn` (a server-tool loop
/// paused) ends this reply like a normal stop; `model_context_window_exceeded` is a
/// truncation. Values: <https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons>.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and values added later.
        _ => "stop",
    }
}

/// The Anthropic `stop_reason` for an OpenAI `finish_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// A non-negative integer field, 0 when absent or not a number.
fn count(object: &Value, field: &str) -> u64 {
    object.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// Anthropic `usage` → OpenAI `usage`. Anthropic's `input_tokens` excludes the cached part of
/// the prompt, OpenAI's `prompt_tokens` includes it: the prompt is the sum of the three input
/// counts, and `cached_tokens` is the part read from the cache.
fn chat_usage(usage: &Value) -> Value {
    let cache_read = count(usage, "cache_read_input_tokens");
    let prompt =
        count(usage, "input_tokens") + cache_read + count(usage, "cache_creation_input_tokens");
    let completion = count(usage, "output_tokens");
    let mut out = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if usage
        .get("cache_read_input_tokens")
        .is_some_and(Value::is_u64)
    {
        out["prompt_tokens_details"] = json!({ "cached_tokens": cache_read });
    }
    out
}

/// OpenAI `usage` → Anthropic `usage` (the inverse of [`chat_usage`]; cache writes are not
/// reported by OpenAI, so `cache_creation_input_tokens` is 0).
fn messages_usage(usage: &Value) -> Value {
    let cached = usage
        .get("prompt_tokens_details")
        .map_or(0, |details| count(details, "cached_tokens"));
    let prompt = count(usage, "prompt_tokens");
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": count(usage, "completion_tokens"),
    })
}

/// Seconds since the Unix epoch, for OpenAI's `created`.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The payload of an SSE event: its `data:` lines joined by `\n` (the SSE rule), `None` when it
/// has none (a comment or keep-alive).
fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("data:") else {
            continue;
        };
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match &mut data {
            Some(joined) => {
                joined.push('\n');
                joined.push_str(rest);
            }
            None => data = Some(rest.to_owned()),
        }
    }
    data
}

/// `field` of a JSON object, treating an explicit `null` as absent (OpenAI clients send nulls
/// for unset options).
fn present<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|value| !value.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_map_both_ways() {
        for (anthropic, openai) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(anthropic), openai, "{anthropic}");
        }
        assert_eq!(stop_reason("stop"), "end_turn");
        assert_eq!(stop_reason("length"), "max_tokens");
        assert_eq!(stop_reason("tool_calls"), "tool_use");
        assert_eq!(stop_reason("content_filter"), "refusal");
    }

    #[test]
    fn usage_counts_cached_input_in_the_prompt() {
        let usage = json!({
            "input_tokens": 25,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "output_tokens": 50,
        });
        assert_eq!(
            chat_usage(&usage),
            json!({
                "prompt_tokens": 2125,
                "completion_tokens": 50,
                "total_tokens": 2175,
                "prompt_tokens_details": {"cached_tokens": 2000},
            })
        );
        let plain = chat_usage(&json!({"input_tokens": 3, "output_tokens": 4}));
        assert_eq!(plain["total_tokens"], 7);
        assert!(plain.get("prompt_tokens_details").is_none());

        let back = messages_usage(&json!({
            "prompt_tokens": 2125,
            "completion_tokens": 50,
            "total_tokens": 2175,
            "prompt_tokens_details": {"cached_tokens": 2000},
        }));
        assert_eq!(back["input_tokens"], 125);
        assert_eq!(back["cache_read_input_tokens"], 2000);
        assert_eq!(back["output_tokens"], 50);
    }

    #[test]
    fn event_data_joins_data_lines() {
        assert_eq!(
            event_data(b"event: ping\ndata: {\"type\":\"ping\"}\n\n").as_deref(),
            Some("{\"type\":\"ping\"}")
        );
        assert_eq!(
            event_data(b"data: a\r\ndata:b\r\n\r\n").as_deref(),
            Some("a\nb")
        );
        assert_eq!(event_data(b": keep-alive\n\n"), None);
    }
}
