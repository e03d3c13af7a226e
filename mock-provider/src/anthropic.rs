//! The Anthropic Messages wire format: `POST /v1/messages`, a JSON reply or, with
//! `"stream": true`, server-sent events with `event:` lines in Anthropic's order
//! (`message_start`, `content_block_start`, `ping`, `content_block_delta`…,
//! `content_block_stop`, `message_delta`, `message_stop`).
//!
//! Replies are deterministic, like the OpenAI endpoints': the canned text (or `x-mock-reply`),
//! cut at the first of the request's `stop_sequences` (`stop_reason: stop_sequence`) and then
//! to `max_tokens` words (`stop_reason: max_tokens`); word counts as `usage`, with zero cache
//! counts. Tools: when the request offers tools and its last message holds no `tool_result`,
//! the reply is a `tool_use` block calling the first tool with `{"city": "Paris"}`
//! (`stop_reason: tool_use`); when the last message holds `tool_result` blocks, the reply is
//! `the tool said: <result text>` (several results joined by `; `). `x-mock-reply` replaces the
//! text of a text reply (canned or tool-said); it does not turn a tool call into text.
//!
//! Checked as Anthropic does, and answered in its error shape
//! `{"type":"error","error":{"type","message"},"request_id"}`: the `x-api-key` header when
//! [`MockConfig::expected_api_key`](crate::MockConfig::expected_api_key) is set (401
//! `authentication_error`), the `anthropic-version` header, the JSON body, `model`,
//! `max_tokens` and `messages` (400 `invalid_request_error`); `x-mock-status` answers its
//! status with the error type Anthropic uses for it.

use std::sync::atomic::Ordering;

use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::handler::{ApiError, Controls};
use crate::openai::{first_words, split_into_pieces, sse_response, word_count};
use crate::{controls, Shared};

/// The one path this format answers.
const PATH: &str = "/v1/messages";
const API_KEY_HEADER: &str = "x-api-key";
const VERSION_HEADER: &str = "anthropic-version";
/// Every response carries a request id, as Anthropic's do.
const REQUEST_ID_HEADER: &str = "request-id";
/// The arguments of every mock tool call.
const TOOL_INPUT: &str = r#"{"city": "Paris"}"#;

/// Answers a request on one of this format's paths; `None` for any other path.
pub(crate) fn answer(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    controls: &Controls,
) -> Option<Result<Response, ApiError>> {
    if parts.uri.path() != PATH {
        return None;
    }
    let number = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("req_mock_{number}");
    let mut response = match messages(shared, parts, body, controls, number) {
        Ok(response) => response,
        Err(error) => error.into_response(&request_id),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Some(Ok(response))
}

/// An error in Anthropic's shape.
struct AnthropicError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl AnthropicError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        AnthropicError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid_request(message: impl Into<String>) -> Self {
        AnthropicError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn into_response(self, request_id: &str) -> Response {
        let body = json!({
            "type": "error",
            "error": { "type": self.kind, "message": self.message },
            "request_id": request_id,
        });
        (self.status, Json(body)).into_response()
    }
}

/// The error type Anthropic answers a status with
/// (<https://platform.claude.com/docs/en/api/errors>).
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

fn messages(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    controls: &Controls,
    number: u64,
) -> Result<Response, AnthropicError> {
    if parts.method != Method::POST {
        return Err(AnthropicError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method Not Allowed ({} {PATH})", parts.method),
        ));
    }
    if let Some(expected) = shared.config.expected_api_key.as_deref() {
        match parts.headers.get(API_KEY_HEADER).map(|v| v.to_str()) {
            None => {
                return Err(AnthropicError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "x-api-key header is required",
                ))
            }
            Some(Ok(key)) if key.trim() == expected => {}
            Some(_) => {
                return Err(AnthropicError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "invalid x-api-key",
                ))
            }
        }
    }
    if !parts.headers.contains_key(VERSION_HEADER) {
        return Err(AnthropicError::invalid_request(
            "anthropic-version: header is required",
        ));
    }
    if let Some(status) = controls.status {
        return Err(AnthropicError::new(
            status,
            error_type(status),
            format!(
                "mock error: the {} header asked for HTTP {}",
                controls::STATUS,
                status.as_u16()
            ),
        ));
    }
    let request: Value = serde_json::from_slice(body).map_err(|error| {
        AnthropicError::invalid_request(format!(
            "There was an issue with the format of your request: {error}"
        ))
    })?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .filter(|model| !model.is_empty())
        .ok_or_else(|| AnthropicError::invalid_request("model: Field required"))?;
    let max_tokens = match request.get("max_tokens") {
        None | Some(Value::Null) => {
            return Err(AnthropicError::invalid_request(
                "max_tokens: Field required",
            ))
        }
        Some(value) => value.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            AnthropicError::invalid_request(
                "max_tokens: Input should be an integer greater than or equal to 1",
            )
        })?,
    };
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| AnthropicError::invalid_request("messages: Field required"))?;

    let reply = Reply::new(shared, &request, messages, model, max_tokens, controls);
    let meta = Meta {
        id: format!("msg_mock_{number}"),
        tool_id: format!("toolu_mock_{number}"),
        model: model.to_owned(),
        input_tokens: prompt_words(&request, messages).max(1),
    };
    if request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let chunks = controls
            .chunks
            .unwrap_or(shared.config.stream_chunks)
            .max(1);
        let delay = controls.chunk_delay.unwrap_or(shared.config.chunk_delay);
        let mut response = sse_response(stream_events(&meta, &reply, chunks), delay);
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        return Ok(response);
    }
    let content = match &reply.content {
        Content::Text(text) => json!([{ "type": "text", "text": text }]),
        Content::ToolCall { name } => json!([{
            "type": "tool_use",
            "id": meta.tool_id,
            "name": name,
            "input": tool_input(),
        }]),
    };
    Ok(Json(json!({
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": {
            "input_tokens": meta.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": reply.output_tokens,
        },
    }))
    .into_response())
}

fn tool_input() -> Value {
    serde_json::from_str(TOOL_INPUT).unwrap_or_else(|_| json!({}))
}

/// Fields every event of one reply shares.
struct Meta {
    id: String,
    tool_id: String,
    model: String,
    input_tokens: u64,
}

enum Content {
    Text(String),
    ToolCall { name: String },
}

/// The deterministic answer to one request.
struct Reply {
    content: Content,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    output_tokens: u64,
}

impl Reply {
    fn new(
        shared: &Shared,
        request: &Value,
        messages: &[Value],
        model: &str,
        max_tokens: u64,
        controls: &Controls,
    ) -> Reply {
        let last = messages.last();
        let results = last.map(tool_results).unwrap_or_default();
        let first_tool = request
            .get("tools")
            .and_then(Value::as_array)
            .and_then(|tools| tools.first())
            .and_then(|tool| tool.get("name"))
            .and_then(Value::as_str);
        if let (Some(name), true) = (first_tool, results.is_empty()) {
            return Reply {
                content: Content::ToolCall {
                    name: name.to_owned(),
                },
                stop_reason: "tool_use",
                stop_sequence: None,
                output_tokens: word_count(TOOL_INPUT),
            };
        }
        let full = match (&controls.reply, results.is_empty()) {
            (Some(text), _) => text.clone(),
            (None, false) => format!("the tool said: {}", results.join("; ")),
            (None, true) => format!(
                "mock reply from {} to {model}: this deterministic answer arrives in several small pieces",
                shared.config.name
            ),
        };
        let (mut text, mut stop_reason, stop_sequence) = match first_stop(request, &full) {
            Some((at, sequence)) => (full[..at].to_owned(), "stop_sequence", Some(sequence)),
            None => (full, "end_turn", None),
        };
        if let Some(kept) = first_words(&text, max_tokens) {
            text = kept;
            stop_reason = "max_tokens";
        }
        let stop_sequence = stop_sequence.filter(|_| stop_reason == "stop_sequence");
        Reply {
            output_tokens: word_count(&text),
            content: Content::Text(text),
            stop_reason,
            stop_sequence,
        }
    }
}

/// Where the earliest of the request's stop sequences starts in `text`, and which it is.
fn first_stop(request: &Value, text: &str) -> Option<(usize, String)> {
    request
        .get("stop_sequences")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(Value::as_str)
        .filter(|sequence| !sequence.is_empty())
        .filter_map(|sequence| text.find(sequence).map(|at| (at, sequence.to_owned())))
        .min_by_key(|(at, _)| *at)
}

/// The texts of the `tool_result` blocks of a message (none for other messages).
fn tool_results(message: &Value) -> Vec<String> {
    let Some(blocks) = message.get("content").and_then(Value::as_array) else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|block| block_text(block.get("content").unwrap_or(&Value::Null)))
        .collect()
}

/// The text of a content value: a string, or the `text` of its blocks.
fn block_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Words in the system prompt and every message (texts and tool results).
fn prompt_words(request: &Value, messages: &[Value]) -> u64 {
    let system = request
        .get("system")
        .map_or(0, |s| word_count(&block_text(s)));
    let turns: u64 = messages
        .iter()
        .map(|message| match message.get("content") {
            Some(Value::Array(blocks)) => blocks
                .iter()
                .map(|block| match block.get("type").and_then(Value::as_str) {
                    Some("tool_result") => {
                        word_count(&block_text(block.get("content").unwrap_or(&Value::Null)))
                    }
                    _ => block
                        .get("text")
                        .and_then(Value::as_str)
                        .map_or(0, word_count),
                })
                .sum(),
            Some(content) => word_count(&block_text(content)),
            None => 0,
        })
        .sum();
    system + turns
}

fn event(name: &str, payload: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {payload}\n\n"))
}

/// The whole event sequence of a streamed reply.
fn stream_events(meta: &Meta, reply: &Reply, chunks: usize) -> Vec<Bytes> {
    let mut events = vec![event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": meta.id,
                "type": "message",
                "role": "assistant",
                "model": meta.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": meta.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        }),
    )];
    let (block, deltas): (Value, Vec<Value>) = match &reply.content {
        Content::Text(text) => (
            json!({ "type": "text", "text": "" }),
            split_into_pieces(text, chunks)
                .into_iter()
                .map(|piece| json!({ "type": "text_delta", "text": piece }))
                .collect(),
        ),
        Content::ToolCall { name } => (
            json!({ "type": "tool_use", "id": meta.tool_id, "name": name, "input": {} }),
            // Anthropic opens a tool's input with an empty fragment.
            std::iter::once(String::new())
                .chain(split_into_pieces(TOOL_INPUT, chunks))
                .map(|piece| json!({ "type": "input_json_delta", "partial_json": piece }))
                .collect(),
        ),
    };
    events.push(event(
        "content_block_start",
        &json!({ "type": "content_block_start", "index": 0, "content_block": block }),
    ));
    events.push(event("ping", &json!({ "type": "ping" })));
    events.extend(deltas.into_iter().map(|delta| {
        event(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        )
    }));
    events.push(event(
        "content_block_stop",
        &json!({ "type": "content_block_stop", "index": 0 }),
    ));
    events.push(event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": { "stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence },
            "usage": { "output_tokens": reply.output_tokens },
        }),
    ));
    events.push(event("message_stop", &json!({ "type": "message_stop" })));
    events
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::{MockConfig, MockProvider};

    async fn start(config: MockConfig) -> MockProvider {
        MockProvider::start(([127, 0, 0, 1], 0).into(), config)
            .await
            .expect("mock provider starts")
    }

    fn fast() -> MockConfig {
        MockConfig {
            name: "claude-mock".to_owned(),
            chunk_delay: Duration::from_millis(1),
            ..MockConfig::default()
        }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client builds")
    }

    /// POST /v1/messages with the version header and `headers`.
    async fn post(
        server: &MockProvider,
        body: Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = client()
            .post(format!("{}/v1/messages", server.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request succeeds")
    }

    async fn json_of(response: reqwest::Response) -> Value {
        response.json().await.expect("JSON body")
    }

    fn hello() -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "Be kind."}],
            "messages": [{"role": "user", "content": "Hello there, Claude"}]
        })
    }

    /// (event name, payload) of an Anthropic SSE body, checking that names match payload types.
    fn events(body: &str) -> Vec<(String, Value)> {
        assert!(body.ends_with("\n\n"), "{body:?}");
        body.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                let (name, data) = event.split_once('\n').expect("event and data lines");
                let name = name.strip_prefix("event: ").expect("event line").to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                        .expect("JSON data");
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    fn streamed_text(events: &[(String, Value)]) -> String {
        events
            .iter()
            .filter(|(name, _)| name == "content_block_delta")
            .filter_map(|(_, data)| data["delta"]["text"].as_str())
            .collect()
    }

    #[tokio::test]
    async fn json_reply_in_anthropic_shape() {
        let server = start(fast()).await;
        let response = post(&server, hello(), &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(response.headers()["request-id"]
            .to_str()
            .is_ok_and(|id| id.starts_with("req_mock_")));
        assert_eq!(response.headers()["x-mock-provider"], "claude-mock");
        let body = json_of(response).await;
        assert!(body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_mock_")));
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "claude-sonnet-4-5");
        let text = "mock reply from claude-mock to claude-sonnet-4-5: this deterministic answer arrives in several small pieces";
        assert_eq!(body["content"], json!([{"type": "text", "text": text}]));
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["stop_sequence"], Value::Null);
        assert_eq!(
            body["usage"],
            json!({"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 14})
        );
        let recorded = server.recorded();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].path, "/v1/messages");
    }

    #[tokio::test]
    async fn max_tokens_stop_sequences_and_the_reply_header() {
        let server = start(fast()).await;
        let mut short = hello();
        short["max_tokens"] = json!(3);
        let body = json_of(post(&server, short, &[]).await).await;
        assert_eq!(body["content"][0]["text"], "mock reply from");
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["usage"]["output_tokens"], 3);

        let mut stopped = hello();
        stopped["stop_sequences"] = json!(["pieces", "deterministic"]);
        let body = json_of(post(&server, stopped, &[]).await).await;
        assert_eq!(
            body["content"][0]["text"],
            "mock reply from claude-mock to claude-sonnet-4-5: this "
        );
        assert_eq!(body["stop_reason"], "stop_sequence");
        assert_eq!(body["stop_sequence"], "deterministic");

        let body =
            json_of(post(&server, hello(), &[("x-mock-reply", "Call me at 555-0100")]).await).await;
        assert_eq!(body["content"][0]["text"], "Call me at 555-0100");
        assert_eq!(body["usage"]["output_tokens"], 4);
    }

    #[tokio::test]
    async fn stream_has_the_real_event_sequence() {
        let server = start(fast()).await;
        let mut request = hello();
        request["stream"] = json!(true);
        let response = post(&server, request, &[("x-mock-chunks", "3")]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        let events = events(&response.text().await.expect("body"));
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = &events[0].1["message"];
        assert_eq!(start["model"], "claude-sonnet-4-5");
        assert_eq!(start["usage"]["input_tokens"], 5);
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            streamed_text(&events),
            "mock reply from claude-mock to claude-sonnet-4-5: this deterministic answer arrives in several small pieces"
        );
        assert_eq!(
            events[7].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 14}})
        );
    }

    fn weather_tools() -> Value {
        json!([
            {"name": "get_weather", "description": "Weather in a city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
        ])
    }

    #[tokio::test]
    async fn offered_tools_get_a_call_to_the_first_one() {
        let server = start(fast()).await;
        let mut request = hello();
        request["tools"] = weather_tools();
        let body = json_of(post(&server, request.clone(), &[]).await).await;
        assert_eq!(body["stop_reason"], "tool_use");
        assert_eq!(body["content"].as_array().map(Vec::len), Some(1));
        let call = &body["content"][0];
        assert_eq!(call["type"], "tool_use");
        assert!(call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("toolu_mock_")));
        assert_eq!(call["name"], "get_weather");
        assert_eq!(call["input"], json!({"city": "Paris"}));

        request["stream"] = json!(true);
        let events = events(
            &post(&server, request, &[])
                .await
                .text()
                .await
                .expect("body"),
        );
        assert_eq!(events[1].1["content_block"]["type"], "tool_use");
        assert_eq!(events[1].1["content_block"]["name"], "get_weather");
        assert_eq!(events[1].1["content_block"]["input"], json!({}));
        let json_text: String = events
            .iter()
            .filter_map(|(_, data)| data["delta"]["partial_json"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json_text).expect("whole input is JSON"),
            json!({"city": "Paris"})
        );
        let delta = events
            .iter()
            .find(|(n, _)| n == "message_delta")
            .expect("message_delta");
        assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn tool_results_are_echoed() {
        let server = start(fast()).await;
        let request = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "tools": weather_tools(),
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C and sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "25C"}]}
                ]}
            ]
        });
        let body = json_of(post(&server, request.clone(), &[]).await).await;
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(
            body["content"][0]["text"],
            "the tool said: 18C and sunny; 25C"
        );
        let mut streamed = request;
        streamed["stream"] = json!(true);
        let events = events(
            &post(&server, streamed, &[("x-mock-chunks", "2")])
                .await
                .text()
                .await
                .expect("body"),
        );
        assert_eq!(streamed_text(&events), "the tool said: 18C and sunny; 25C");
    }

    #[tokio::test]
    async fn the_api_key_is_checked_in_x_api_key() {
        let server = start(MockConfig {
            expected_api_key: Some("sk-ant-test".to_owned()),
            ..fast()
        })
        .await;
        let missing = post(&server, hello(), &[("authorization", "Bearer sk-ant-test")]).await;
        assert_eq!(missing.status(), 401);
        assert_eq!(
            json_of(missing).await["error"],
            json!({"type": "authentication_error", "message": "x-api-key header is required"})
        );
        let wrong = post(&server, hello(), &[("x-api-key", "sk-ant-other")]).await;
        assert_eq!(wrong.status(), 401);
        let body = json_of(wrong).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["message"], "invalid x-api-key");
        assert!(body["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req_mock_")));
        let right = post(&server, hello(), &[("x-api-key", "sk-ant-test")]).await;
        assert_eq!(right.status(), 200);
    }

    #[tokio::test]
    async fn bad_requests_get_anthropic_errors() {
        let server = start(fast()).await;
        let no_version = client()
            .post(format!("{}/v1/messages", server.base_url()))
            .json(&hello())
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(no_version.status(), 400);
        assert_eq!(
            json_of(no_version).await["error"],
            json!({"type": "invalid_request_error", "message": "anthropic-version: header is required"})
        );
        let mut no_max = hello();
        if let Some(object) = no_max.as_object_mut() {
            object.remove("max_tokens");
        }
        let response = post(&server, no_max, &[]).await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            json_of(response).await["error"]["message"],
            "max_tokens: Field required"
        );
        let mut zero = hello();
        zero["max_tokens"] = json!(0);
        assert_eq!(post(&server, zero, &[]).await.status(), 400);
        let no_model = post(&server, json!({"max_tokens": 5, "messages": []}), &[]).await;
        assert_eq!(
            json_of(no_model).await["error"]["message"],
            "model: Field required"
        );
        let not_json = client()
            .post(format!("{}/v1/messages", server.base_url()))
            .header("anthropic-version", "2023-06-01")
            .body("{not json")
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(not_json.status(), 400);
        assert_eq!(
            json_of(not_json).await["error"]["type"],
            "invalid_request_error"
        );
        let get = client()
            .get(format!("{}/v1/messages", server.base_url()))
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(get.status(), 405);
        assert_eq!(json_of(get).await["type"], "error");
    }

    #[tokio::test]
    async fn mock_status_answers_in_the_native_error_shape() {
        let server = start(fast()).await;
        for (status, kind) in [
            ("400", "invalid_request_error"),
            ("401", "authentication_error"),
            ("403", "permission_error"),
            ("404", "not_found_error"),
            ("429", "rate_limit_error"),
            ("500", "api_error"),
            ("529", "overloaded_error"),
        ] {
            let response = post(&server, hello(), &[("x-mock-status", status)]).await;
            assert_eq!(response.status().as_str(), status);
            let body = json_of(response).await;
            assert_eq!(body["type"], "error", "{status}");
            assert_eq!(body["error"]["type"], kind, "{status}");
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(status)));
        }
    }

    #[tokio::test]
    async fn other_paths_are_left_to_the_openai_routes() {
        let server = start(fast()).await;
        let chat = client()
            .post(format!("{}/v1/chat/completions", server.base_url()))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(chat.status(), 200);
        assert_eq!(json_of(chat).await["object"], "chat.completion");
        let count = client()
            .post(format!("{}/v1/messages/count_tokens", server.base_url()))
            .json(&hello())
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(count.status(), 404);
    }
}
