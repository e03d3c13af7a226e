//! The Amazon Bedrock runtime's Converse API: `POST /model/{modelId}/converse` (JSON) and
//! `POST /model/{modelId}/converse-stream` (an `application/vnd.amazon.eventstream` body of
//! binary frames: `messageStart`, `contentBlockStart` (tool use), `contentBlockDelta`,
//! `contentBlockStop`, `messageStop`, `metadata`, each payload padded with a `p` field as
//! Bedrock pads them). The model id is the percent-decoded path segment.
//!
//! Replies are deterministic, like the OpenAI endpoints': the canned text (or
//! `x-mock-reply`), cut to `inferenceConfig.maxTokens` words (`stopReason: max_tokens`), word
//! counts as `usage`. Tools: when the request offers tools and its last message holds no
//! `toolResult`, the reply calls the first tool with `{"city": "Paris"}` (`stopReason:
//! tool_use`); when the last message holds `toolResult` blocks the reply is
//! `the tool said: <their text>` (several results joined by `; `).
//!
//! Every request must carry a well-formed SigV4 `Authorization` header (`AWS4-HMAC-SHA256
//! Credential=<key id>/<date>/<region>/bedrock/aws4_request, SignedHeaders=..., Signature=...`)
//! and `x-amz-date`. With [`MockConfig::expected_api_key`](crate::MockConfig) set, that key is
//! the secret access key: the signature is recomputed with
//! [`gantry_policy::translate::bedrock::sign`] over the request as received and must match,
//! within 15 minutes of the mock's clock, so end-to-end tests prove that what reached the
//! provider was signed correctly.
//!
//! Errors are Bedrock's shape: an `x-amzn-ErrorType` header and `{"message": ...}`, for
//! `x-mock-status`, authentication (403 `MissingAuthenticationTokenException`,
//! `IncompleteSignatureException`, `InvalidSignatureException`), bodies that are not a
//! Converse request (400 `SerializationException` / `ValidationException`) and other
//! operations under `/model/` (404 `UnknownOperationException`).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue as HttpHeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use gantry_policy::translate::bedrock::{
    encode_message, parse_amz_date, parse_path, sign, AwsCredentials, HeaderValue,
    EVENT_STREAM_CONTENT_TYPE, SIGNING_SERVICE,
};
use serde_json::{json, Map, Value};

use crate::handler::{ApiError, Controls};
use crate::openai::{first_words, split_into_pieces, word_count};
use crate::{controls, Shared};

/// How far `x-amz-date` may be from the mock's clock when the signature is verified.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// Where Bedrock's own errors say they come from, in `x-amzn-ErrorType`.
const BEDROCK_ERROR_SUFFIX: &str = ":http://internal.amazon.com/coral/com.amazon.bedrock/";
/// Where authentication errors say they come from.
const CORAL_ERROR_SUFFIX: &str = ":http://internal.amazon.com/coral/com.amazon.coral.service/";

const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// Answers a request under `/model/`; `None` for any other path.
pub(crate) fn answer(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    controls: &Controls,
) -> Option<Result<Response, ApiError>> {
    if !parts.uri.path().starts_with("/model/") {
        return None;
    }
    Some(Ok(respond(shared, parts, body, controls)))
}

fn respond(shared: &Shared, parts: &Parts, body: &[u8], controls: &Controls) -> Response {
    let request_id = format!(
        "mock-bedrock-{}",
        shared.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let Some((model, stream)) = parse_path(parts.uri.path()) else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            BEDROCK_ERROR_SUFFIX,
            "The requested operation is not recognized by the service.".to_owned(),
            &request_id,
        );
    };
    if parts.method != Method::POST {
        return aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            BEDROCK_ERROR_SUFFIX,
            format!(
                "{} {} is not an operation: use POST",
                parts.method,
                parts.uri.path()
            ),
            &request_id,
        );
    }
    if let Err(refusal) = check_signature(shared, parts, body) {
        let (status, kind, message) = *refusal;
        return aws_error(status, kind, CORAL_ERROR_SUFFIX, message, &request_id);
    }
    if let Some(status) = controls.status {
        return aws_error(
            status,
            error_type_for(status),
            BEDROCK_ERROR_SUFFIX,
            format!(
                "mock error: the {} header asked for HTTP {}",
                controls::STATUS,
                status.as_u16()
            ),
            &request_id,
        );
    }
    let reply = match serde_json::from_slice::<Value>(body) {
        Ok(request) => Reply::new(shared, &model, &request, controls),
        Err(error) => Err((
            "SerializationException",
            format!("The request body is not valid JSON: {error}"),
        )),
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err((kind, message)) => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                kind,
                BEDROCK_ERROR_SUFFIX,
                message,
                &request_id,
            )
        }
    };
    if stream {
        let chunks = controls
            .chunks
            .unwrap_or(shared.config.stream_chunks)
            .max(1);
        event_stream_response(
            reply.frames(chunks),
            controls.chunk_delay.unwrap_or(shared.config.chunk_delay),
            &request_id,
        )
    } else {
        json_response(StatusCode::OK, &reply.whole(), &request_id)
    }
}

/// The parts of a SigV4 `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

/// Reads `AWS4-HMAC-SHA256 Credential=<id>/<date>/<region>/<service>/aws4_request,
/// SignedHeaders=<a;b>, Signature=<64 hex>`; `None` when it is not of that form.
fn parse_authorization(value: &str) -> Option<Authorization> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in rest.split(',') {
        let (name, value) = field.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed = Some(value),
            "Signature" => signature = Some(value),
            _ => return None,
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return None;
    };
    let well_formed_date = date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit());
    if access_key_id.is_empty() || !well_formed_date || region.is_empty() || service.is_empty() {
        return None;
    }
    let signed_headers: Vec<String> = signed?.split(';').map(str::to_owned).collect();
    let lower_and_sorted = signed_headers.windows(2).all(|pair| pair[0] < pair[1])
        && signed_headers
            .iter()
            .all(|name| !name.is_empty() && *name == name.to_ascii_lowercase());
    let signature = signature?;
    let hex = signature.len() == 64
        && signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (lower_and_sorted && hex).then(|| Authorization {
        access_key_id: (*access_key_id).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: (*service).to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

type Refusal = Box<(StatusCode, &'static str, String)>;

fn refuse(kind: &'static str, message: impl Into<String>) -> Refusal {
    Box::new((StatusCode::FORBIDDEN, kind, message.into()))
}

/// Checks the SigV4 header's form always, and the signature itself when the mock knows the
/// secret access key.
fn check_signature(shared: &Shared, parts: &Parts, body: &[u8]) -> Result<(), Refusal> {
    let Some(value) = parts.headers.get("authorization") else {
        return Err(refuse(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let value = value.to_str().unwrap_or_default();
    let Some(auth) = parse_authorization(value) else {
        return Err(refuse(
            "IncompleteSignatureException",
            format!(
                "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters in the AWS4-HMAC-SHA256 form. Authorization={value}"
            ),
        ));
    };
    if auth.service != SIGNING_SERVICE {
        return Err(refuse(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{SIGNING_SERVICE}'."),
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|name| name == required) {
            return Err(refuse(
                "InvalidSignatureException",
                format!("'{required}' must be a 'SignedHeader' in the AWS Authorization."),
            ));
        }
    }
    let amz_date = header_values(parts, "x-amz-date").unwrap_or_default();
    let Some(timestamp) = parse_amz_date(&amz_date) else {
        return Err(refuse(
            "IncompleteSignatureException",
            "Authorization header requires existence of a valid 'X-Amz-Date' header (YYYYMMDDTHHMMSSZ).",
        ));
    };
    if !amz_date.starts_with(&auth.date) {
        return Err(refuse(
            "InvalidSignatureException",
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                auth.date,
                &amz_date[..8]
            ),
        ));
    }

    let Some(secret) = shared.config.expected_api_key.as_deref() else {
        return Ok(());
    };
    let now = SystemTime::now();
    let skew = now
        .duration_since(timestamp)
        .or_else(|_| timestamp.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_CLOCK_SKEW {
        return Err(refuse(
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is more than {} minutes from the server's time.",
                MAX_CLOCK_SKEW.as_secs() / 60
            ),
        ));
    }
    let host = header_values(parts, HOST.as_str())
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    let headers: Vec<(String, String)> = auth
        .signed_headers
        .iter()
        .filter(|name| {
            !matches!(
                name.as_str(),
                "host" | "x-amz-date" | "x-amz-security-token"
            )
        })
        .map(|name| (name.clone(), header_values(parts, name).unwrap_or_default()))
        .collect();
    let session_token = auth
        .signed_headers
        .iter()
        .any(|name| name == "x-amz-security-token")
        .then(|| header_values(parts, "x-amz-security-token").unwrap_or_default());
    let credentials = AwsCredentials {
        access_key_id: auth.access_key_id.clone(),
        secret_access_key: secret.to_owned(),
        session_token,
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let expected = sign(
        parts.method.as_str(),
        &host,
        path_and_query,
        &headers,
        body,
        &auth.region,
        &auth.service,
        &credentials,
        timestamp,
    );
    let matches = expected
        .iter()
        .any(|(name, expected)| name == "authorization" && expected == value);
    if matches {
        Ok(())
    } else {
        tracing::debug!(presented = %value, ?expected, "mock bedrock: signature mismatch");
        Err(refuse("InvalidSignatureException", SIGNATURE_MISMATCH))
    }
}

/// Every value of a header, joined by `,` as SigV4 reads repeated headers.
fn header_values(parts: &Parts, name: &str) -> Option<String> {
    let values: Vec<&str> = parts
        .headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap_or_default())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The exception Bedrock answers a status with.
fn error_type_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "UnrecognizedClientException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        400..=499 => "ValidationException",
        _ => "InternalServerException",
    }
}

fn aws_error(
    status: StatusCode,
    kind: &str,
    suffix: &str,
    message: String,
    request_id: &str,
) -> Response {
    let mut response = json_response(status, &json!({ "message": message }), request_id);
    if let Ok(value) = HttpHeaderValue::from_str(&format!("{kind}{suffix}")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-amzn-errortype"), value);
    }
    response
}

fn json_response(status: StatusCode, body: &Value, request_id: &str) -> Response {
    let mut response = (
        status,
        [(
            CONTENT_TYPE,
            HttpHeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response();
    add_request_id(&mut response, request_id);
    response
}

fn add_request_id(response: &mut Response, request_id: &str) {
    if let Ok(value) = HttpHeaderValue::from_str(request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-amzn-requestid"), value);
    }
}

/// An event-stream body sending each frame as its own body chunk, the first at once and each
/// later one after `delay`.
fn event_stream_response(frames: Vec<Bytes>, delay: Duration, request_id: &str) -> Response {
    let body = futures::stream::iter(frames.into_iter().enumerate()).then(
        move |(index, frame)| async move {
            if index > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(frame)
        },
    );
    let mut response = (
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            HttpHeaderValue::from_static(EVENT_STREAM_CONTENT_TYPE),
        )],
        Body::from_stream(body),
    )
        .into_response();
    add_request_id(&mut response, request_id);
    response
}

/// What the model "says".
enum Answer {
    Text {
        text: String,
        stop_reason: &'static str,
    },
    ToolUse {
        id: String,
        name: String,
    },
}

/// The arguments every mock tool call carries.
const TOOL_INPUT: &str = r#"{"city":"Paris"}"#;

struct Reply {
    answer: Answer,
    input_tokens: u64,
    output_tokens: u64,
}

type Invalid = (&'static str, String);

impl Reply {
    fn new(
        shared: &Shared,
        model: &str,
        request: &Value,
        controls: &Controls,
    ) -> Result<Reply, Invalid> {
        let invalid = |message: &str| ("ValidationException", message.to_owned());
        let messages = request
            .get("messages")
            .and_then(Value::as_array)
            .filter(|messages| !messages.is_empty())
            .ok_or_else(|| invalid("The model returned the following errors: messages: at least one message is required"))?;
        let max_tokens = request
            .get("inferenceConfig")
            .and_then(|config| config.get("maxTokens"))
            .and_then(Value::as_u64);
        if max_tokens == Some(0) {
            return Err(invalid(
                "1 validation error detected: Value '0' at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1",
            ));
        }

        let tool_results: Vec<String> = messages
            .last()
            .and_then(|message| message.get("content"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|block| block.get("toolResult"))
            .map(tool_result_text)
            .collect();
        let first_tool = request
            .get("toolConfig")
            .and_then(|config| config.get("tools"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|tool| {
                tool.get("toolSpec")
                    .and_then(|spec| spec.get("name"))
                    .and_then(Value::as_str)
            });
        let answer = if !tool_results.is_empty() {
            text_answer(
                format!("the tool said: {}", tool_results.join("; ")),
                max_tokens,
            )
        } else if let Some(name) = first_tool {
            Answer::ToolUse {
                id: format!(
                    "tooluse_mock{}",
                    shared.next_id.fetch_add(1, Ordering::Relaxed)
                ),
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

        let system = request
            .get("system")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let blocks = messages
            .iter()
            .filter_map(|message| message.get("content").and_then(Value::as_array))
            .flatten();
        let input_tokens = system.chain(blocks).map(block_words).sum::<u64>().max(1);
        let output_tokens = match &answer {
            Answer::Text { text, .. } => word_count(text),
            Answer::ToolUse { name, .. } => word_count(name) + word_count(TOOL_INPUT),
        };
        Ok(Reply {
            answer,
            input_tokens,
            output_tokens,
        })
    }

    fn usage(&self) -> Value {
        json!({
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens + self.output_tokens,
        })
    }

    fn stop_reason(&self) -> &'static str {
        match &self.answer {
            Answer::Text { stop_reason, .. } => stop_reason,
            Answer::ToolUse { .. } => "tool_use",
        }
    }

    /// The `Converse` reply.
    fn whole(&self) -> Value {
        let block = match &self.answer {
            Answer::Text { text, .. } => json!({ "text": text }),
            Answer::ToolUse { id, name } => json!({ "toolUse": {
                "toolUseId": id,
                "name": name,
                "input": { "city": "Paris" },
            } }),
        };
        json!({
            "output": { "message": { "role": "assistant", "content": [block] } },
            "stopReason": self.stop_reason(),
            "usage": self.usage(),
            "metrics": { "latencyMs": 42 },
        })
    }

    /// The `ConverseStream` frames, the content cut into `chunks` deltas.
    fn frames(&self, chunks: usize) -> Vec<Bytes> {
        let mut events: Vec<(&str, Value)> = vec![("messageStart", json!({ "role": "assistant" }))];
        match &self.answer {
            Answer::Text { text, .. } => {
                events.extend(
                    split_into_pieces(text, chunks)
                        .into_iter()
                        .filter(|piece| !piece.is_empty())
                        .map(|piece| {
                            (
                                "contentBlockDelta",
                                json!({ "contentBlockIndex": 0, "delta": { "text": piece } }),
                            )
                        }),
                );
            }
            Answer::ToolUse { id, name } => {
                events.push((
                    "contentBlockStart",
                    json!({ "contentBlockIndex": 0, "start": { "toolUse": { "toolUseId": id, "name": name } } }),
                ));
                events.extend(
                    split_into_pieces(TOOL_INPUT, chunks)
                        .into_iter()
                        .filter(|piece| !piece.is_empty())
                        .map(|piece| {
                            (
                                "contentBlockDelta",
                                json!({ "contentBlockIndex": 0, "delta": { "toolUse": { "input": piece } } }),
                            )
                        }),
                );
            }
        }
        events.push(("contentBlockStop", json!({ "contentBlockIndex": 0 })));
        events.push(("messageStop", json!({ "stopReason": self.stop_reason() })));
        events.push((
            "metadata",
            json!({ "usage": self.usage(), "metrics": { "latencyMs": 42 } }),
        ));
        events
            .into_iter()
            .enumerate()
            .map(|(index, (kind, payload))| Bytes::from(frame(kind, payload, index)))
            .collect()
    }
}

/// One event frame; the payload gets Bedrock's `p` padding (its length varies by event, as
/// Bedrock's does, so that clients that choke on it fail here too).
fn frame(kind: &str, mut payload: Value, index: usize) -> Vec<u8> {
    const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    if let Value::Object(fields) = &mut payload {
        fields.insert(
            "p".to_owned(),
            Value::String(PADDING[..1 + (index * 7) % PADDING.len()].to_owned()),
        );
    }
    encode_message(
        &[
            (":event-type", HeaderValue::string(kind)),
            (":content-type", HeaderValue::string("application/json")),
            (":message-type", HeaderValue::string("event")),
        ],
        payload.to_string().as_bytes(),
    )
}

fn text_answer(full: String, max_tokens: Option<u64>) -> Answer {
    match max_tokens.and_then(|limit| first_words(&full, limit)) {
        Some(kept) => Answer::Text {
            text: kept,
            stop_reason: "max_tokens",
        },
        None => Answer::Text {
            text: full,
            stop_reason: "end_turn",
        },
    }
}

/// The text of a `toolResult`: its text blocks, and its JSON blocks as JSON text.
fn tool_result_text(result: &Value) -> String {
    result
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|block| match block.get("text").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => block.get("json").map(Value::to_string).unwrap_or_default(),
        })
        .collect()
}

/// Words a content block counts for: its text, else its JSON.
fn block_words(block: &Value) -> u64 {
    match block.get("text").and_then(Value::as_str) {
        Some(text) => word_count(text),
        None => match block.get("toolResult") {
            Some(result) => word_count(&tool_result_text(result)),
            None => word_count(&Value::Object(strip_bytes(block)).to_string()),
        },
    }
}

/// A block without image bytes (which are not words).
fn strip_bytes(block: &Value) -> Map<String, Value> {
    let mut fields = block.as_object().cloned().unwrap_or_default();
    if fields.contains_key("image") {
        fields.insert("image".to_owned(), json!({}));
    }
    fields
}

#[cfg(test)]
mod tests {
    use gantry_policy::translate::bedrock::{path, EventStreamDecoder, Message, StreamToChat};
    use gantry_policy::translate::StreamTranslator;

    use super::*;
    use crate::{MockConfig, MockProvider};

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

    async fn start(secret: Option<&str>) -> MockProvider {
        let config = MockConfig {
            name: "bedrock-mock".to_owned(),
            expected_api_key: secret.map(str::to_owned),
            chunk_delay: Duration::ZERO,
            ..MockConfig::default()
        };
        MockProvider::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap()
    }

    struct Call<'a> {
        path: String,
        body: Value,
        secret: &'a str,
        token: Option<&'a str>,
        time: SystemTime,
        extra: Vec<(&'a str, &'a str)>,
    }

    impl<'a> Call<'a> {
        fn new(body: Value) -> Call<'a> {
            Call {
                path: path(MODEL, false),
                body,
                secret: SECRET,
                token: None,
                time: SystemTime::now(),
                extra: Vec::new(),
            }
        }

        fn stream(mut self) -> Call<'a> {
            self.path = path(MODEL, true);
            self
        }

        async fn send(&self, provider: &MockProvider) -> reqwest::Response {
            let body = self.body.to_string();
            let host = provider.addr().to_string();
            let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            let signed = sign(
                "POST",
                &host,
                &self.path,
                &headers,
                body.as_bytes(),
                "us-east-1",
                "bedrock",
                &AwsCredentials {
                    access_key_id: "AKIAIOSFODNN7EXAMPLE".to_owned(),
                    secret_access_key: self.secret.to_owned(),
                    session_token: self.token.map(str::to_owned),
                },
                self.time,
            );
            let mut request = reqwest::Client::new()
                .post(format!("{}{}", provider.base_url(), self.path))
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in &signed {
                request = request.header(name.as_str(), value.as_str());
            }
            for (name, value) in &self.extra {
                request = request.header(*name, *value);
            }
            request.send().await.unwrap()
        }
    }

    fn hello() -> Value {
        json!({
            "messages": [{"role": "user", "content": [{"text": "Say hello to the world"}]}],
            "system": [{"text": "Be brief."}],
            "inferenceConfig": {"maxTokens": 100}
        })
    }

    async fn error_of(response: reqwest::Response) -> (u16, String, String) {
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/json"
        );
        let body: Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap().to_owned();
        (status, kind, message)
    }

    #[tokio::test]
    async fn converse_answers_a_correctly_signed_request() {
        let provider = start(Some(SECRET)).await;
        let response = Call::new(hello()).send(&provider).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/json"
        );
        assert!(response.headers().get("x-amzn-requestid").is_some());
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["output"]["message"],
            json!({"role": "assistant", "content": [{"text": format!("mock reply from bedrock-mock to {MODEL}: this deterministic answer arrives in several small pieces")}]})
        );
        assert_eq!(body["stopReason"], "end_turn");
        // "Be brief." + "Say hello to the world" = 2 + 5 words; the reply is 14 words.
        assert_eq!(
            body["usage"],
            json!({"inputTokens": 7, "outputTokens": 14, "totalTokens": 21})
        );

        let recorded = provider.recorded();
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            recorded[0].path,
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
    }

    #[tokio::test]
    async fn session_tokens_and_arn_model_ids_verify() {
        let provider = start(Some(SECRET)).await;
        let mut call = Call::new(hello());
        call.token = Some("FwoGZXIvYXdzEBYaDExampleSessionToken");
        assert_eq!(call.send(&provider).await.status(), 200);

        call.path = path(
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            false,
        );
        let response = call.send(&provider).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert!(body["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("to arn:aws:bedrock:us-east-1:123456789012:inference-profile/us."));
    }

    #[tokio::test]
    async fn bad_signatures_are_refused_in_bedrock_shape() {
        let provider = start(Some(SECRET)).await;

        let mut wrong_secret = Call::new(hello());
        wrong_secret.secret = "not-the-secret";
        let (status, kind, message) = error_of(wrong_secret.send(&provider).await).await;
        assert_eq!(status, 403);
        assert!(kind.starts_with("InvalidSignatureException:"), "{kind}");
        assert_eq!(message, SIGNATURE_MISMATCH);

        // A body changed after signing.
        let provider_url = provider.base_url();
        let tampered = {
            let call = Call::new(hello());
            let body = call.body.to_string();
            let signed = sign(
                "POST",
                &provider.addr().to_string(),
                &call.path,
                &[("content-type".to_owned(), "application/json".to_owned())],
                body.as_bytes(),
                "us-east-1",
                "bedrock",
                &AwsCredentials {
                    access_key_id: "AKID".to_owned(),
                    secret_access_key: SECRET.to_owned(),
                    session_token: None,
                },
                SystemTime::now(),
            );
            let mut request = reqwest::Client::new()
                .post(format!("{provider_url}{}", call.path))
                .header("content-type", "application/json")
                .body(body.replace("hello", "HELLO"));
            for (name, value) in &signed {
                request = request.header(name.as_str(), value.as_str());
            }
            request.send().await.unwrap()
        };
        let (status, kind, _) = error_of(tampered).await;
        assert_eq!(status, 403);
        assert!(kind.starts_with("InvalidSignatureException"));

        let mut stale = Call::new(hello());
        stale.time = SystemTime::now() - Duration::from_secs(3600);
        let (status, kind, message) = error_of(stale.send(&provider).await).await;
        assert_eq!(
            (status, kind.starts_with("InvalidSignatureException")),
            (403, true)
        );
        assert!(message.starts_with("Signature expired"), "{message}");
    }

    #[tokio::test]
    async fn the_authorization_header_must_be_sigv4() {
        let provider = start(None).await;
        let url = format!("{}{}", provider.base_url(), path(MODEL, false));
        let client = reqwest::Client::new();
        let send = |authorization: Option<&str>, date: Option<&str>| {
            let mut request = client.post(&url).body(hello().to_string());
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            if let Some(date) = date {
                request = request.header("x-amz-date", date);
            }
            request.send()
        };
        let sig = "a".repeat(64);
        let good = format!("AWS4-HMAC-SHA256 Credential=AKID/20240601/eu-west-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}");

        // Without a secret, any well-formed signature passes.
        assert_eq!(
            send(Some(&good), Some("20240601T101500Z"))
                .await
                .unwrap()
                .status(),
            200
        );

        let cases: Vec<(Option<String>, Option<&str>, &str)> = vec![
            (None, None, "MissingAuthenticationTokenException"),
            (
                Some("Bearer sk-123".to_owned()),
                Some("20240601T101500Z"),
                "IncompleteSignatureException",
            ),
            (
                Some(good.replace("Signature=", "Signature=z")),
                Some("20240601T101500Z"),
                "IncompleteSignatureException",
            ),
            (
                Some(good.replace("/bedrock/", "/s3/")),
                Some("20240601T101500Z"),
                "InvalidSignatureException",
            ),
            (
                Some(good.replace("host;x-amz-date", "x-amz-date")),
                Some("20240601T101500Z"),
                "InvalidSignatureException",
            ),
            (Some(good.clone()), None, "IncompleteSignatureException"),
            (
                Some(good.clone()),
                Some("20240602T101500Z"),
                "InvalidSignatureException",
            ),
        ];
        for (authorization, date, expected) in cases {
            let response = send(authorization.as_deref(), date).await.unwrap();
            let (status, kind, _) = error_of(response).await;
            assert_eq!(status, 403, "{authorization:?}");
            assert!(kind.starts_with(expected), "{authorization:?}: {kind}");
        }
    }

    #[tokio::test]
    async fn mock_status_answers_native_errors() {
        let provider = start(Some(SECRET)).await;
        for (status, kind) in [
            (429, "ThrottlingException"),
            (400, "ValidationException"),
            (403, "AccessDeniedException"),
            (404, "ResourceNotFoundException"),
            (408, "ModelTimeoutException"),
            (500, "InternalServerException"),
            (503, "ServiceUnavailableException"),
        ] {
            let status_text = status.to_string();
            let mut call = Call::new(hello());
            call.extra.push(("x-mock-status", &status_text));
            let (got_status, got_kind, message) = error_of(call.send(&provider).await).await;
            assert_eq!(got_status, status);
            assert_eq!(
                got_kind,
                format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/")
            );
            assert!(message.contains(&status_text));
            // The translator reads it back as the OpenAI error it is.
            let openai = gantry_policy::translate::bedrock::error_to_openai(
                status,
                json!({ "message": message }).to_string().as_bytes(),
                Some(&got_kind),
            );
            assert_eq!(openai["error"]["code"], kind);
        }
    }

    #[tokio::test]
    async fn tool_rule() {
        let provider = start(None).await;
        let tools = json!({"tools": [
            {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}},
            {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object"}}}}
        ]});
        let mut request = hello();
        request["toolConfig"] = tools.clone();
        let body: Value = Call::new(request)
            .send(&provider)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["stopReason"], "tool_use");
        let tool_use = &body["output"]["message"]["content"][0]["toolUse"];
        assert_eq!(tool_use["name"], "get_weather");
        assert_eq!(tool_use["input"], json!({"city": "Paris"}));
        assert!(tool_use["toolUseId"]
            .as_str()
            .unwrap()
            .starts_with("tooluse_"));

        let follow_up = json!({
            "messages": [
                {"role": "user", "content": [{"text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "t1", "content": [{"text": "18°C and cloudy"}]}},
                    {"toolResult": {"toolUseId": "t2", "content": [{"json": {"tz": "CET"}}]}}
                ]}
            ],
            "toolConfig": tools
        });
        let body: Value = Call::new(follow_up)
            .send(&provider)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["stopReason"], "end_turn");
        assert_eq!(
            body["output"]["message"]["content"][0]["text"],
            "the tool said: 18°C and cloudy; {\"tz\":\"CET\"}"
        );
    }

    #[tokio::test]
    async fn reply_control_max_tokens_and_bad_bodies() {
        let provider = start(None).await;
        let mut call = Call::new(hello());
        call.extra.push(("x-mock-reply", "custom words here"));
        let body: Value = call.send(&provider).await.json().await.unwrap();
        assert_eq!(
            body["output"]["message"]["content"][0]["text"],
            "custom words here"
        );

        let mut short = hello();
        short["inferenceConfig"]["maxTokens"] = json!(3);
        let body: Value = Call::new(short).send(&provider).await.json().await.unwrap();
        assert_eq!(body["stopReason"], "max_tokens");
        assert_eq!(
            body["output"]["message"]["content"][0]["text"],
            "mock reply from"
        );
        assert_eq!(body["usage"]["outputTokens"], 3);

        let (status, kind, _) =
            error_of(Call::new(json!({"messages": []})).send(&provider).await).await;
        assert_eq!(status, 400);
        assert!(kind.starts_with("ValidationException"));

        let unknown = reqwest::Client::new()
            .post(format!("{}/model/x/invoke", provider.base_url()))
            .send()
            .await
            .unwrap();
        let (status, kind, _) = error_of(unknown).await;
        assert_eq!(
            (status, kind.starts_with("UnknownOperationException")),
            (404, true)
        );

        // Paths that are not Bedrock's still reach the OpenAI routes.
        let models = reqwest::get(format!("{}/v1/models", provider.base_url()))
            .await
            .unwrap();
        assert_eq!(models.status(), 200);
    }

    fn decode(bytes: &[u8]) -> Vec<Message> {
        let mut decoder = EventStreamDecoder::new();
        decoder.push(bytes);
        let mut messages = Vec::new();
        while let Some(message) = decoder.next_message().unwrap() {
            messages.push(message);
        }
        assert_eq!(decoder.buffered(), 0);
        messages
    }

    fn kinds(messages: &[Message]) -> Vec<&str> {
        messages
            .iter()
            .map(|m| m.header_str(":event-type").unwrap())
            .collect()
    }

    fn payload(message: &Message) -> Value {
        serde_json::from_slice(&message.payload).unwrap()
    }

    #[tokio::test]
    async fn converse_stream_sends_event_stream_frames() {
        let provider = start(Some(SECRET)).await;
        let mut call = Call::new(hello()).stream();
        call.extra.push(("x-mock-chunks", "3"));
        let response = call.send(&provider).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/vnd.amazon.eventstream"
        );
        let bytes = response.bytes().await.unwrap();
        let messages = decode(&bytes);
        assert_eq!(
            kinds(&messages),
            [
                "messageStart",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockStop",
                "messageStop",
                "metadata"
            ]
        );
        for message in &messages {
            assert_eq!(message.header_str(":message-type"), Some("event"));
            assert_eq!(
                message.header_str(":content-type"),
                Some("application/json")
            );
            assert!(payload(message)["p"].is_string());
        }
        let text: String = messages[1..4]
            .iter()
            .map(|m| payload(m)["delta"]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            text,
            format!("mock reply from bedrock-mock to {MODEL}: this deterministic answer arrives in several small pieces")
        );
        assert_eq!(payload(&messages[5])["stopReason"], "end_turn");
        assert_eq!(
            payload(&messages[6])["usage"],
            json!({"inputTokens": 7, "outputTokens": 14, "totalTokens": 21})
        );

        // And the translator turns it into the OpenAI stream.
        let mut translator = StreamToChat::new("alias", true);
        let mut sse = translator.push(&bytes);
        sse.extend(translator.finish());
        let sse = String::from_utf8(sse).unwrap();
        assert!(sse.ends_with("data: [DONE]\n\n"));
        assert!(sse.contains("\"finish_reason\":\"stop\""));
        assert!(sse.contains("\"prompt_tokens\":7"));
    }

    #[tokio::test]
    async fn converse_stream_tool_call() {
        let provider = start(None).await;
        let mut request = hello();
        request["toolConfig"] = json!({"tools": [
            {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}
        ]});
        let mut call = Call::new(request).stream();
        call.extra.push(("x-mock-chunks", "2"));
        let bytes = call.send(&provider).await.bytes().await.unwrap();
        let messages = decode(&bytes);
        assert_eq!(
            kinds(&messages),
            [
                "messageStart",
                "contentBlockStart",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockStop",
                "messageStop",
                "metadata"
            ]
        );
        let start = payload(&messages[1]);
        assert_eq!(start["start"]["toolUse"]["name"], "get_weather");
        let input: String = messages[2..4]
            .iter()
            .map(|m| {
                payload(m)["delta"]["toolUse"]["input"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(input, r#"{"city":"Paris"}"#);
        assert_eq!(payload(&messages[5])["stopReason"], "tool_use");
    }

    #[test]
    fn authorization_parsing() {
        let sig = "0123456789abcdef".repeat(4);
        let header = format!("AWS4-HMAC-SHA256 Credential=AKID/20240601/us-west-2/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}");
        assert_eq!(
            parse_authorization(&header),
            Some(Authorization {
                access_key_id: "AKID".to_owned(),
                date: "20240601".to_owned(),
                region: "us-west-2".to_owned(),
                service: "bedrock".to_owned(),
                signed_headers: vec![
                    "content-type".to_owned(),
                    "host".to_owned(),
                    "x-amz-date".to_owned()
                ],
                signature: sig.clone(),
            })
        );
        for bad in [
            header.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"),
            header.replace("/aws4_request", ""),
            header.replace("20240601", "2024-06-01"),
            header.replace("content-type;host", "host;content-type"),
            header.replace("Signature=0", "Signature="),
            header.replace(&sig, &sig.to_uppercase()),
            format!("{header}, Extra=1"),
        ] {
            assert_eq!(parse_authorization(&bad), None, "{bad}");
        }
    }
}
