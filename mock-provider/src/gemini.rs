//! The Google Gemini wire format: `POST /v1beta/models/{model}:generateContent` (JSON) and
//! `POST /v1beta/models/{model}:streamGenerateContent` (with `?alt=sse` server-sent events,
//! `data: {GenerateContentResponse}` separated by `\r\n\r\n` as Google sends them; without it
//! one JSON array of the same responses). `/v1/models/{model}:...` is answered the same way.
//!
//! Replies are deterministic, like the OpenAI endpoints': the canned text (or `x-mock-reply`),
//! cut to `generationConfig.maxOutputTokens` words (`finishReason: MAX_TOKENS`), one candidate
//! per `candidateCount`, word counts as `usageMetadata`. Tools: when the request offers
//! function declarations and its last turn holds no `functionResponse`, the reply calls the
//! first declared function with `{"city": "Paris"}` (`finishReason: STOP`, Gemini has no
//! tool-use reason of its own); when the last turn holds `functionResponse` parts, the reply is
//! `the tool said: <result>`, the result being the response's `output` field (where Gemini
//! reads a function's output from), else its `result` or `content` field when that is a
//! string, else the whole `response` as JSON text (several responses joined by `; `).
//!
//! Errors are Google's shape, `{"error":{"code","message","status"}}`: `x-mock-status`, a
//! missing key (403 `PERMISSION_DENIED`), a wrong key (400 `INVALID_ARGUMENT` with reason
//! `API_KEY_INVALID`, as Google answers it), a body that is not JSON or has no `contents`.
//! The key is read from `x-goog-api-key` or the `key` query parameter.

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::handler::{ApiError, Controls};
use crate::openai::{first_words, split_into_pieces, sse_response, word_count};
use crate::{controls, Shared};

/// The header Gemini reads the API key from.
const KEY_HEADER: &str = "x-goog-api-key";

/// Google's JSON content type.
const JSON_TYPE: &str = "application/json; charset=UTF-8";

/// The most candidates one request may ask for.
const MAX_CANDIDATES: u64 = 8;

/// Answers a request on one of Gemini's paths; `None` for any other path.
pub(crate) fn answer(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    controls: &Controls,
) -> Option<Result<Response, ApiError>> {
    let route = Route::of(parts.uri.path(), parts.uri.query())?;
    Some(Ok(respond(shared, parts, body, controls, route)))
}

enum Call {
    Generate,
    /// `streamGenerateContent`; `sse` when `alt=sse` was asked for.
    Stream {
        sse: bool,
    },
}

enum Route {
    Model {
        model: String,
        call: Call,
    },
    /// A Gemini path this mock does not serve.
    Unknown,
}

impl Route {
    fn of(path: &str, query: Option<&str>) -> Option<Route> {
        let rest = match path.strip_prefix("/v1beta/") {
            Some(rest) => rest,
            // Under /v1 only model methods are Gemini's (OpenAI's paths have no ':').
            None => path
                .strip_prefix("/v1/")
                .filter(|rest| rest.starts_with("models/") && rest.contains(':'))?,
        };
        let Some((model, method)) = rest
            .strip_prefix("models/")
            .and_then(|rest| rest.rsplit_once(':'))
        else {
            return Some(Route::Unknown);
        };
        let call = match method {
            "generateContent" => Call::Generate,
            "streamGenerateContent" => Call::Stream {
                sse: query_param(query, "alt") == Some("sse"),
            },
            _ => return Some(Route::Unknown),
        };
        if model.is_empty() {
            return Some(Route::Unknown);
        }
        Some(Route::Model {
            model: model.to_owned(),
            call,
        })
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

fn respond(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    controls: &Controls,
    route: Route,
) -> Response {
    let Route::Model { model, call } = route else {
        return google_error(
            StatusCode::NOT_FOUND,
            format!("Method not found: {}", parts.uri.path()),
        );
    };
    if parts.method != Method::POST {
        return google_error(
            StatusCode::NOT_FOUND,
            format!(
                "{} {} is not served: use POST",
                parts.method,
                parts.uri.path()
            ),
        );
    }
    if let Some(refusal) = check_key(shared, parts) {
        return refusal;
    }
    if let Some(status) = controls.status {
        return google_error(
            status,
            format!(
                "mock error: the {} header asked for HTTP {}",
                controls::STATUS,
                status.as_u16()
            ),
        );
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                format!("Invalid JSON payload received. {error}"),
            )
        }
    };
    let Some(contents) = request
        .get("contents")
        .and_then(Value::as_array)
        .filter(|contents| !contents.is_empty())
    else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified\n",
        );
    };
    let reply = match Reply::new(shared, &model, &request, contents, controls) {
        Ok(reply) => reply,
        Err(message) => return google_error(StatusCode::BAD_REQUEST, message),
    };
    let response_id = format!(
        "mock-gemini-{}",
        shared
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let chunks = controls
        .chunks
        .unwrap_or(shared.config.stream_chunks)
        .max(1);
    match call {
        Call::Generate => json_response(StatusCode::OK, &reply.whole(&model, &response_id)),
        Call::Stream { sse } => {
            let events = reply.stream(&model, &response_id, chunks);
            if sse {
                let frames = events
                    .iter()
                    .map(|event| Bytes::from(format!("data: {event}\r\n\r\n")))
                    .collect();
                sse_response(
                    frames,
                    controls.chunk_delay.unwrap_or(shared.config.chunk_delay),
                )
            } else {
                json_response(StatusCode::OK, &Value::Array(events))
            }
        }
    }
}

fn check_key(shared: &Shared, parts: &Parts) -> Option<Response> {
    let expected = shared.config.expected_api_key.as_deref()?;
    let presented = parts
        .headers
        .get(KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .or_else(|| query_param(parts.uri.query(), "key"));
    match presented {
        Some(key) if key == expected => None,
        // Google's answers, word for word.
        None => Some(google_error(
            StatusCode::FORBIDDEN,
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        )),
        Some(_) => {
            let body = json!({
                "error": {
                    "code": 400,
                    "message": "API key not valid. Please pass a valid API key.",
                    "status": "INVALID_ARGUMENT",
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"}
                    }]
                }
            });
            Some(json_response(StatusCode::BAD_REQUEST, &body))
        }
    }
}

/// What the model "says".
enum Answer {
    Text {
        text: String,
        finish_reason: &'static str,
    },
    FunctionCall {
        name: String,
    },
}

struct Reply {
    answer: Answer,
    candidates: u64,
    prompt_tokens: u64,
}

impl Reply {
    fn new(
        shared: &Shared,
        model: &str,
        request: &Value,
        contents: &[Value],
        controls: &Controls,
    ) -> Result<Reply, String> {
        let config = request.get("generationConfig");
        let setting = |key: &str| {
            config
                .and_then(|config| config.get(key))
                .and_then(Value::as_u64)
        };
        let candidates = setting("candidateCount").unwrap_or(1);
        if !(1..=MAX_CANDIDATES).contains(&candidates) {
            return Err(format!("candidateCount must be from 1 to {MAX_CANDIDATES}"));
        }
        let max_tokens = setting("maxOutputTokens");
        if max_tokens == Some(0) {
            return Err("maxOutputTokens must be at least 1".to_owned());
        }

        let tool_results: Vec<String> = contents
            .last()
            .and_then(|content| content.get("parts"))
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|part| part.get("functionResponse"))
                    .map(tool_result_text)
                    .collect()
            })
            .unwrap_or_default();
        let first_tool = request
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|tool| tool.get("functionDeclarations").and_then(Value::as_array))
            .flatten()
            .find_map(|declaration| declaration.get("name").and_then(Value::as_str));

        let answer = if !tool_results.is_empty() {
            text_answer(
                format!("the tool said: {}", tool_results.join("; ")),
                max_tokens,
            )
        } else if let Some(name) = first_tool {
            Answer::FunctionCall {
                name: name.to_owned(),
            }
        } else {
            let text = controls.reply.clone().unwrap_or_else(|| {
                format!(
                    "mock reply from {} to {model}: this deterministic answer arrives in several small pieces",
                    shared.config.name
                )
            });
            text_answer(text, max_tokens)
        };

        let mut prompt_words = 0;
        let system = request.get("systemInstruction").into_iter();
        for content in system.chain(contents) {
            for part in content
                .get("parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                prompt_words += match part.get("text").and_then(Value::as_str) {
                    Some(text) => word_count(text),
                    None => word_count(&part.to_string()),
                };
            }
        }
        Ok(Reply {
            answer,
            candidates,
            prompt_tokens: prompt_words.max(1),
        })
    }

    /// Output tokens of one candidate.
    fn candidate_tokens(&self) -> u64 {
        match &self.answer {
            Answer::Text { text, .. } => word_count(text),
            // The name and the one argument.
            Answer::FunctionCall { .. } => 3,
        }
    }

    fn usage(&self, candidate_tokens: u64) -> Value {
        let candidates = candidate_tokens * self.candidates;
        let mut usage = json!({
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt_tokens + candidates,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt_tokens}],
        });
        if candidates == 0 {
            if let Value::Object(usage) = &mut usage {
                usage.remove("candidatesTokenCount");
            }
        }
        usage
    }

    fn candidates(&self, parts: Value, finish_reason: Option<&str>) -> Value {
        let candidates: Vec<Value> = (0..self.candidates)
            .map(|index| {
                let mut candidate = json!({
                    "content": {"parts": parts, "role": "model"},
                    "index": index,
                });
                if let Some(reason) = finish_reason {
                    candidate["finishReason"] = json!(reason);
                }
                candidate
            })
            .collect();
        Value::Array(candidates)
    }

    /// The `generateContent` reply.
    fn whole(&self, model: &str, response_id: &str) -> Value {
        let (parts, reason) = match &self.answer {
            Answer::Text {
                text,
                finish_reason,
            } => (json!([{ "text": text }]), *finish_reason),
            Answer::FunctionCall { name } => (function_call_parts(name), "STOP"),
        };
        json!({
            "candidates": self.candidates(parts, Some(reason)),
            "usageMetadata": self.usage(self.candidate_tokens()),
            "modelVersion": model,
            "responseId": response_id,
        })
    }

    /// The `streamGenerateContent` events: the text in `chunks` pieces (usage growing, the
    /// finish reason on the last), or the function call whole in one event.
    fn stream(&self, model: &str, response_id: &str, chunks: usize) -> Vec<Value> {
        let event = |candidates: Value, usage: Value| {
            json!({
                "candidates": candidates,
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": response_id,
            })
        };
        match &self.answer {
            Answer::FunctionCall { name } => vec![event(
                self.candidates(function_call_parts(name), Some("STOP")),
                self.usage(self.candidate_tokens()),
            )],
            Answer::Text {
                text,
                finish_reason,
            } => {
                let pieces = split_into_pieces(text, chunks);
                let last = pieces.len().saturating_sub(1);
                let mut sent = String::new();
                pieces
                    .iter()
                    .enumerate()
                    .map(|(index, piece)| {
                        sent.push_str(piece);
                        let reason = (index == last).then_some(*finish_reason);
                        event(
                            self.candidates(json!([{ "text": piece }]), reason),
                            self.usage(word_count(&sent)),
                        )
                    })
                    .collect()
            }
        }
    }
}

fn text_answer(text: String, max_tokens: Option<u64>) -> Answer {
    match max_tokens.and_then(|limit| first_words(&text, limit)) {
        Some(kept) => Answer::Text {
            text: kept,
            finish_reason: "MAX_TOKENS",
        },
        None => Answer::Text {
            text,
            finish_reason: "STOP",
        },
    }
}

fn function_call_parts(name: &str) -> Value {
    json!([{ "functionCall": { "name": name, "args": { "city": "Paris" } } }])
}

/// A function response's text: its `output` (where Gemini reads a function's output from),
/// else its `result` or `content` when that is a string, else the whole response as JSON.
fn tool_result_text(function_response: &Value) -> String {
    let response = function_response.get("response").unwrap_or(&Value::Null);
    for key in ["output", "result", "content"] {
        match response.get(key) {
            Some(Value::String(text)) => return text.clone(),
            Some(other) if key == "output" => return other.to_string(),
            _ => {}
        }
    }
    response.to_string()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE))],
        Body::from(body.to_string()),
    )
        .into_response()
}

/// A Google error: `{"error":{"code","message","status"}}`.
fn google_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({
        "error": {
            "code": status.as_u16(),
            "message": message.into(),
            "status": canonical_status(status),
        }
    });
    json_response(status, &body)
}

/// Google's canonical error status for an HTTP status.
fn canonical_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if status.is_client_error() => "FAILED_PRECONDITION",
        _ if status.is_server_error() => "INTERNAL",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gantry_policy::translate::gemini as translate;
    use gantry_policy::translate::StreamTranslator;
    use serde_json::{json, Value};

    use crate::{MockConfig, MockProvider};

    const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
    const STREAM: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";

    async fn start(config: MockConfig) -> MockProvider {
        MockProvider::start(([127, 0, 0, 1], 0).into(), config)
            .await
            .expect("mock provider starts")
    }

    fn fast() -> MockConfig {
        MockConfig {
            name: "gem".into(),
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

    async fn post(
        server: &MockProvider,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (u16, String, String) {
        let mut request = client()
            .post(format!("{}{path}", server.base_url()))
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request succeeds");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(
            response
                .headers()
                .get(crate::PROVIDER_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(server.config().name.as_str())
        );
        (status, content_type, response.text().await.expect("body"))
    }

    fn hello() -> Value {
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Say hello to the world"}]}]
        })
    }

    fn weather_tools() -> Value {
        json!([{"functionDeclarations": [
            {"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}},
            {"name": "get_time"}
        ]}])
    }

    /// The JSON payloads of a Gemini SSE body, checking Google's `\r\n\r\n` framing.
    fn sse_events(body: &str) -> Vec<Value> {
        assert!(body.ends_with("\r\n\r\n"), "{body:?}");
        body.split("\r\n\r\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let payload = event.strip_prefix("data: ").expect("data: events only");
                serde_json::from_str(payload).expect("event is JSON")
            })
            .collect()
    }

    #[tokio::test]
    async fn generate_content_answers_in_geminis_shape() {
        let server = start(fast()).await;
        let (status, content_type, body) = post(&server, GENERATE, &[], &hello()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type, "application/json; charset=UTF-8");
        let reply: Value = serde_json::from_str(&body).unwrap();
        let text = "mock reply from gem to gemini-2.5-flash: this deterministic answer arrives in several small pieces";
        assert_eq!(
            reply["candidates"],
            json!([{
                "content": {"parts": [{"text": text}], "role": "model"},
                "index": 0,
                "finishReason": "STOP"
            }])
        );
        assert_eq!(
            reply["usageMetadata"],
            json!({
                "promptTokenCount": 7,
                "candidatesTokenCount": 14,
                "totalTokenCount": 21,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}]
            })
        );
        assert_eq!(reply["modelVersion"], "gemini-2.5-flash");
        assert!(reply["responseId"]
            .as_str()
            .unwrap()
            .starts_with("mock-gemini-"));
        let recorded = server.recorded();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].path, GENERATE);
    }

    #[tokio::test]
    async fn reply_control_max_tokens_and_candidates() {
        let server = start(fast()).await;
        let mut request = hello();
        request["generationConfig"] = json!({"maxOutputTokens": 3, "candidateCount": 2});
        let (status, _, body) = post(
            &server,
            "/v1/models/gemini-2.0-flash:generateContent",
            &[("x-mock-reply", "one two three four five")],
            &request,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        let candidates = reply["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 2);
        for (index, candidate) in candidates.iter().enumerate() {
            assert_eq!(candidate["index"], index);
            assert_eq!(candidate["content"]["parts"][0]["text"], "one two three");
            assert_eq!(candidate["finishReason"], "MAX_TOKENS");
        }
        assert_eq!(reply["usageMetadata"]["candidatesTokenCount"], 6);
    }

    #[tokio::test]
    async fn stream_generate_content_with_alt_sse() {
        let server = start(fast()).await;
        let (status, content_type, body) = post(
            &server,
            STREAM,
            &[
                ("x-mock-chunks", "3"),
                ("x-mock-reply", "alpha beta gamma delta"),
            ],
            &hello(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type, "text/event-stream");
        let events = sse_events(&body);
        assert_eq!(events.len(), 3);
        let text: String = events
            .iter()
            .map(|event| {
                event["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(text, "alpha beta gamma delta");
        assert!(events[..2]
            .iter()
            .all(|e| e["candidates"][0].get("finishReason").is_none()));
        assert_eq!(events[2]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(events[2]["usageMetadata"]["candidatesTokenCount"], 4);
        assert_eq!(events[2]["usageMetadata"]["totalTokenCount"], 11);
        let ids: Vec<&Value> = events.iter().map(|e| &e["responseId"]).collect();
        assert!(ids.iter().all(|id| *id == ids[0]));
    }

    #[tokio::test]
    async fn stream_without_alt_sse_is_one_json_array() {
        let server = start(fast()).await;
        let (status, content_type, body) = post(
            &server,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            &[("x-mock-chunks", "2")],
            &hello(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type, "application/json; charset=UTF-8");
        let events: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(events.as_array().unwrap().len(), 2);
        assert_eq!(events[1]["candidates"][0]["finishReason"], "STOP");
    }

    #[tokio::test]
    async fn offered_tools_are_called_and_their_results_echoed() {
        let server = start(fast()).await;
        let mut request = hello();
        request["tools"] = weather_tools();
        let (_, _, body) = post(&server, GENERATE, &[], &request).await;
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            reply["candidates"][0]["content"]["parts"],
            json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}])
        );
        assert_eq!(reply["candidates"][0]["finishReason"], "STOP");

        let (_, _, body) = post(&server, STREAM, &[], &request).await;
        let events = sse_events(&body);
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
            "get_weather"
        );

        for (response, said) in [
            (json!({"output": "18°C and sunny"}), "18°C and sunny"),
            (json!({"result": "sunny"}), "sunny"),
            (json!({"content": "cloudy"}), "cloudy"),
            (json!({"output": {"temp": 18}}), "{\"temp\":18}"),
            (
                json!({"temp": 18, "sky": "clear"}),
                "{\"temp\":18,\"sky\":\"clear\"}",
            ),
        ] {
            let mut request = request.clone();
            request["contents"] = json!([
                {"role": "user", "parts": [{"text": "weather in Paris?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": response}}]}
            ]);
            let (_, _, body) = post(&server, GENERATE, &[], &request).await;
            let reply: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                reply["candidates"][0]["content"]["parts"][0]["text"],
                format!("the tool said: {said}")
            );
        }
    }

    #[tokio::test]
    async fn mock_status_answers_a_google_error() {
        let server = start(fast()).await;
        for (code, canonical) in [
            (429, "RESOURCE_EXHAUSTED"),
            (503, "UNAVAILABLE"),
            (400, "INVALID_ARGUMENT"),
        ] {
            let (status, content_type, body) = post(
                &server,
                STREAM,
                &[("x-mock-status", &code.to_string())],
                &hello(),
            )
            .await;
            assert_eq!(status, code);
            assert_eq!(content_type, "application/json; charset=UTF-8");
            let error: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(error["error"]["code"], code);
            assert_eq!(error["error"]["status"], canonical);
            assert!(error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("x-mock-status"));
        }
    }

    #[tokio::test]
    async fn the_api_key_is_checked() {
        let server = start(MockConfig {
            expected_api_key: Some("AIza-test".into()),
            ..fast()
        })
        .await;
        let (status, _, body) = post(&server, GENERATE, &[], &hello()).await;
        assert_eq!(status, 403);
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["status"], "PERMISSION_DENIED");

        let (status, _, body) =
            post(&server, GENERATE, &[("x-goog-api-key", "wrong")], &hello()).await;
        assert_eq!(status, 400);
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(error["error"]["details"][0]["reason"], "API_KEY_INVALID");
        // The translation reads that as a bad key.
        assert_eq!(
            translate::error_to_openai(400, body.as_bytes())["error"]["code"],
            "invalid_api_key"
        );

        let (status, _, _) = post(
            &server,
            GENERATE,
            &[("x-goog-api-key", "AIza-test")],
            &hello(),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _, _) = post(
            &server,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=AIza-test",
            &[],
            &hello(),
        )
        .await;
        assert_eq!(status, 200);
        // A bearer token is not Gemini's way.
        let (status, _, _) = post(
            &server,
            GENERATE,
            &[("authorization", "Bearer AIza-test")],
            &hello(),
        )
        .await;
        assert_eq!(status, 403);
    }

    #[tokio::test]
    async fn bad_requests_and_other_paths() {
        let server = start(fast()).await;
        let (status, _, body) = post(&server, GENERATE, &[], &json!({"contents": []})).await;
        assert_eq!(status, 400);
        assert!(body.contains("contents is not specified"), "{body}");
        let response = client()
            .post(format!("{}{GENERATE}", server.base_url()))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");

        let (status, _, body) = post(
            &server,
            "/v1beta/models/gemini-2.5-flash:countTokens",
            &[],
            &hello(),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"]["status"],
            "NOT_FOUND"
        );
        let response = client()
            .get(format!("{}{GENERATE}", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404);

        // OpenAI's paths are not Gemini's.
        let (status, _, body) = post(
            &server,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["object"],
            "chat.completion"
        );
        let response = client()
            .get(format!("{}/v1/models", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.json::<Value>().await.unwrap()["object"], "list");
    }

    /// An OpenAI client's conversation through the translation and this mock: a tool call,
    /// then the tool's result, JSON and streamed.
    #[tokio::test]
    async fn round_trip_through_the_translation() {
        let server = start(fast()).await;
        let mut chat = json!({
            "model": "alias",
            "messages": [
                {"role": "system", "content": "You report the weather."},
                {"role": "user", "content": "Weather in Paris?"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": false}
            }}]
        });
        let body = translate::request_from_chat(&chat).unwrap();
        let path = translate::path("gemini-2.5-flash", false);
        let (status, _, reply) = post(&server, &path, &[], &body).await;
        assert_eq!(status, 200, "{reply}");
        let reply =
            translate::response_to_chat(&serde_json::from_str(&reply).unwrap(), "alias").unwrap();
        assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls");
        let call = reply["choices"][0]["message"]["tool_calls"][0].clone();
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");

        let messages = chat["messages"].as_array_mut().unwrap();
        messages.push(reply["choices"][0]["message"].clone());
        messages.push(
            json!({"role": "tool", "tool_call_id": call["id"], "content": "18°C, light rain"}),
        );
        let body = translate::request_from_chat(&chat).unwrap();
        let path = translate::path("gemini-2.5-flash", true);
        let (status, _, stream) = post(&server, &path, &[("x-mock-chunks", "3")], &body).await;
        assert_eq!(status, 200, "{stream}");
        let mut translator = translate::StreamToChat::new("alias", true);
        let mut out = translator.push(stream.as_bytes());
        out.extend(translator.finish());
        let out = String::from_utf8(out).unwrap();
        let chunks: Vec<Value> = out
            .split("\n\n")
            .filter(|event| !event.is_empty() && *event != "data: [DONE]")
            .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert!(out.ends_with("data: [DONE]\n\n"));
        let text: String = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "the tool said: 18°C, light rain");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "stop"
        );
    }
}
