//! The OpenAI endpoints: request parsing, deterministic replies and token
//! counts, JSON bodies and server-sent-event streams.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::{json, Value};

use crate::handler::ApiError;
use crate::Shared;

/// The only model `GET /v1/models` lists (any model name is accepted elsewhere).
const LISTED_MODEL: &str = "mock-small";

/// Length of every embedding vector.
const EMBEDDING_DIMENSIONS: usize = 8;

/// How streamed replies are paced and cut, after per-request overrides.
pub(crate) struct StreamSettings {
    pub(crate) chunk_delay: Duration,
    /// Number of content chunks; at least 1.
    pub(crate) chunks: usize,
    /// The reply text to send instead of the canned one.
    pub(crate) reply: Option<String>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    tools: Vec<Value>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    role: Option<String>,
    /// A string, an array of content parts, or null.
    #[serde(default)]
    content: Value,
}

/// What the mock does about tools, the same rule in every format's mock: after tool results it
/// reports them; with tools offered it calls the first one with `{"city": "Paris"}`.
enum ToolTurn {
    None,
    /// The text to answer with: `the tool said: <results joined by "; ">`.
    Report(String),
    /// Call this function.
    Call(String),
}

impl ToolTurn {
    fn of(messages: &[ChatMessage], tools: &[Value]) -> ToolTurn {
        let results: Vec<String> = messages
            .iter()
            .rev()
            .take_while(|m| m.role.as_deref() == Some("tool"))
            .map(|m| match &m.content {
                Value::String(text) => text.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                other => other.to_string(),
            })
            .collect();
        if !results.is_empty() {
            let in_order: Vec<String> = results.into_iter().rev().collect();
            return ToolTurn::Report(format!("the tool said: {}", in_order.join("; ")));
        }
        match tools
            .first()
            .and_then(|t| t.pointer("/function/name"))
            .and_then(Value::as_str)
        {
            Some(name) => ToolTurn::Call(name.to_string()),
            None => ToolTurn::None,
        }
    }
}

/// The arguments of every mock tool call.
pub(crate) const TOOL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    /// A string, an array of strings, an array of token ids, or an array of
    /// token-id arrays.
    prompt: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(
    shared: &Shared,
    body: &[u8],
    stream: &StreamSettings,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_body(body)?;
    let model = require_model(request.model)?;
    let messages = request.messages.ok_or_else(|| {
        ApiError::invalid_request("you must provide a messages parameter").with_param("messages")
    })?;
    let prompt_words = messages
        .iter()
        .map(|message| content_words(&message.content))
        .sum();
    let tool_turn = ToolTurn::of(&messages, &request.tools);
    let scripted = match (&stream.reply, &tool_turn) {
        (Some(reply), _) => Some(reply.clone()),
        (None, ToolTurn::Report(text)) => Some(text.clone()),
        _ => None,
    };
    let reply = Reply::new(
        shared,
        &model,
        prompt_words,
        request.max_completion_tokens.or(request.max_tokens),
        scripted.as_deref(),
    )?;
    let meta = ReplyMeta::new(shared, "chatcmpl-mock", model);

    if let ToolTurn::Call(name) = &tool_turn {
        let call_id = format!("call_{}", meta.id.trim_start_matches("chatcmpl-"));
        if !request.stream.unwrap_or(false) {
            let body = json!({
                "id": meta.id,
                "object": "chat.completion",
                "created": meta.created,
                "model": meta.model,
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": TOOL_ARGUMENTS},
                        }],
                    },
                    "finish_reason": "tool_calls",
                }],
                "usage": reply.usage.to_json(),
            });
            return Ok(Json(body).into_response());
        }
        let chunks = ChunkShape {
            meta: &meta,
            object: "chat.completion.chunk",
            include_usage: include_usage(request.stream_options.as_ref()),
        };
        let (first, rest) = TOOL_ARGUMENTS.split_at(TOOL_ARGUMENTS.len() / 2);
        let events = vec![
            chunks.chunk(json!({
                "index": 0,
                "delta": {"role": "assistant", "content": null, "tool_calls": [{
                    "index": 0, "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]},
                "finish_reason": null,
            })),
            chunks.chunk(json!({
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": first}}]},
                "finish_reason": null,
            })),
            chunks.chunk(json!({
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": rest}}]},
                "finish_reason": null,
            })),
            chunks.chunk(json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"})),
        ];
        return Ok(sse_response(
            chunks.finish(events, &reply.usage),
            stream.chunk_delay,
        ));
    }

    if !request.stream.unwrap_or(false) {
        let body = json!({
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
            }],
            "usage": reply.usage.to_json(),
        });
        return Ok(Json(body).into_response());
    }

    let chunks = ChunkShape {
        meta: &meta,
        object: "chat.completion.chunk",
        include_usage: include_usage(request.stream_options.as_ref()),
    };
    let mut events = vec![chunks.chunk(json!({
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": null,
    }))];
    events.extend(
        split_into_pieces(&reply.text, stream.chunks)
            .into_iter()
            .map(|piece| {
                chunks.chunk(json!({
                    "index": 0,
                    "delta": {"content": piece},
                    "finish_reason": null,
                }))
            }),
    );
    events.push(chunks.chunk(json!({
        "index": 0,
        "delta": {},
        "finish_reason": reply.finish_reason,
    })));
    Ok(sse_response(
        chunks.finish(events, &reply.usage),
        stream.chunk_delay,
    ))
}

/// `POST /v1/completions`.
pub(crate) fn completions(
    shared: &Shared,
    body: &[u8],
    stream: &StreamSettings,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_body(body)?;
    let model = require_model(request.model)?;
    let prompt_words = match &request.prompt {
        None => 0,
        Some(prompt) => prompt_words(prompt).ok_or_else(|| {
            ApiError::invalid_request(
                "prompt must be a string, an array of strings, or an array of token ids",
            )
            .with_param("prompt")
        })?,
    };
    let reply = Reply::new(
        shared,
        &model,
        prompt_words,
        request.max_tokens,
        stream.reply.as_deref(),
    )?;
    let meta = ReplyMeta::new(shared, "cmpl-mock", model);

    if !request.stream.unwrap_or(false) {
        let body = json!({
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{
                "text": reply.text,
                "index": 0,
                "logprobs": null,
                "finish_reason": reply.finish_reason,
            }],
            "usage": reply.usage.to_json(),
        });
        return Ok(Json(body).into_response());
    }

    let chunks = ChunkShape {
        meta: &meta,
        object: "text_completion",
        include_usage: include_usage(request.stream_options.as_ref()),
    };
    let mut events: Vec<Value> = split_into_pieces(&reply.text, stream.chunks)
        .into_iter()
        .map(|piece| {
            chunks.chunk(json!({
                "text": piece,
                "index": 0,
                "logprobs": null,
                "finish_reason": null,
            }))
        })
        .collect();
    events.push(chunks.chunk(json!({
        "text": "",
        "index": 0,
        "logprobs": null,
        "finish_reason": reply.finish_reason,
    })));
    Ok(sse_response(
        chunks.finish(events, &reply.usage),
        stream.chunk_delay,
    ))
}

/// `POST /v1/embeddings`.
pub(crate) fn embeddings(body: &[u8]) -> Result<Response, ApiError> {
    let request: EmbeddingsRequest = parse_body(body)?;
    let model = require_model(request.model)?;
    let input = request.input.ok_or_else(|| {
        ApiError::invalid_request("you must provide an input parameter").with_param("input")
    })?;
    let inputs = embedding_inputs(&input).ok_or_else(|| {
        ApiError::invalid_request(
            "input must be a non-empty string, array of strings, or array of token ids",
        )
        .with_param("input")
    })?;
    let as_base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "unsupported encoding_format {other:?}; use \"float\" or \"base64\""
            ))
            .with_param("encoding_format"))
        }
    };

    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding(&input.seed);
            let embedding = if as_base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens = inputs.iter().map(|input| input.tokens).sum::<u64>().max(1);
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(Json(body).into_response())
}

/// `GET /v1/models`.
pub(crate) fn models(shared: &Shared) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": LISTED_MODEL,
            "object": "model",
            "created": 0,
            "owned_by": shared.config.name,
        }],
    }))
    .into_response()
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| match error.classify() {
        Category::Data => ApiError::invalid_request(format!("invalid request body: {error}")),
        Category::Io | Category::Syntax | Category::Eof => ApiError::invalid_request(format!(
            "We could not parse the JSON body of your request: {error}"
        )),
    })
}

fn require_model(model: Option<String>) -> Result<String, ApiError> {
    model.filter(|model| !model.is_empty()).ok_or_else(|| {
        ApiError::invalid_request("you must provide a model parameter").with_param("model")
    })
}

fn include_usage(options: Option<&StreamOptions>) -> bool {
    options
        .and_then(|options| options.include_usage)
        .unwrap_or(false)
}

pub(crate) fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Words in a chat message's content: a string or an array of content parts
/// (only the `text` of parts counts).
fn content_words(content: &Value) -> u64 {
    match content {
        Value::String(text) => word_count(text),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(word_count)
            .sum(),
        _ => 0,
    }
}

/// Words (or token ids) in a completions prompt; `None` if it has the wrong shape.
fn prompt_words(prompt: &Value) -> Option<u64> {
    match prompt {
        Value::Null => Some(0),
        Value::String(text) => Some(word_count(text)),
        Value::Number(_) => Some(1),
        Value::Array(items) => items.iter().map(prompt_words).sum(),
        Value::Bool(_) | Value::Object(_) => None,
    }
}

/// One embedding input: what its vector is derived from, and its token count.
struct EmbeddingInput {
    seed: String,
    tokens: u64,
}

/// Splits `input` into embedding inputs; `None` if it has the wrong shape.
fn embedding_inputs(input: &Value) -> Option<Vec<EmbeddingInput>> {
    let token_ids = |items: &[Value]| -> bool { items.iter().all(Value::is_number) };
    match input {
        Value::String(text) => Some(vec![EmbeddingInput {
            seed: text.clone(),
            tokens: word_count(text),
        }]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if token_ids(items) => Some(vec![EmbeddingInput {
            seed: input.to_string(),
            tokens: items.len() as u64,
        }]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(EmbeddingInput {
                    seed: text.clone(),
                    tokens: word_count(text),
                }),
                Value::Array(ids) if !ids.is_empty() && token_ids(ids) => Some(EmbeddingInput {
                    seed: item.to_string(),
                    tokens: ids.len() as u64,
                }),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A deterministic unit vector derived from `seed` (FNV-1a seeding a
/// xorshift generator), identical across runs and platforms.
fn embedding(seed: &str) -> [f32; EMBEDDING_DIMENSIONS] {
    let mut state = seed
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
        .max(1);
    let mut raw = [0.0_f64; EMBEDDING_DIMENSIONS];
    for value in &mut raw {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // The top 53 bits as a fraction in [0, 1), mapped to [-1, 1).
        *value = (state >> 11) as f64 / (1_u64 << 53) as f64 * 2.0 - 1.0;
    }
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    raw.map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
}

/// Standard base64 with padding, as OpenAI uses for `encoding_format: "base64"`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let sextets = [
            b[0] >> 2,
            (b[0] & 0x03) << 4 | b[1] >> 4,
            (b[1] & 0x0f) << 2 | b[2] >> 6,
            b[2] & 0x3f,
        ];
        for (i, sextet) in sextets.iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[usize::from(*sextet)]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Token accounting of one reply.
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Usage {
    fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// The deterministic answer to a completion-style request.
struct Reply {
    text: String,
    finish_reason: &'static str,
    usage: Usage,
}

impl Reply {
    /// The canned text, cut to `max_tokens` words (finish reason `length`) if
    /// that is shorter.
    fn new(
        shared: &Shared,
        model: &str,
        prompt_words: u64,
        max_tokens: Option<u64>,
        text: Option<&str>,
    ) -> Result<Reply, ApiError> {
        let full = match text {
            Some(text) => text.to_string(),
            None => format!(
                "mock reply from {} to {model}: this deterministic answer arrives in several small pieces",
                shared.config.name
            ),
        };
        let (text, finish_reason) = match max_tokens {
            Some(0) => {
                return Err(ApiError::invalid_request("max_tokens must be at least 1")
                    .with_param("max_tokens"))
            }
            Some(limit) => match first_words(&full, limit) {
                Some(kept) => (kept, "length"),
                None => (full, "stop"),
            },
            None => (full, "stop"),
        };
        let completion_tokens = word_count(&text);
        Ok(Reply {
            text,
            finish_reason,
            usage: Usage {
                prompt_tokens: prompt_words.max(1),
                completion_tokens,
            },
        })
    }
}

/// Fields every reply object (or stream chunk) of one response shares.
struct ReplyMeta {
    id: String,
    created: u64,
    model: String,
}

impl ReplyMeta {
    fn new(shared: &Shared, id_prefix: &str, model: String) -> ReplyMeta {
        let number = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        ReplyMeta {
            id: format!("{id_prefix}-{number}"),
            created,
            model,
        }
    }
}

/// Builds the chunks of one streamed reply.
struct ChunkShape<'a> {
    meta: &'a ReplyMeta,
    object: &'static str,
    include_usage: bool,
}

impl ChunkShape<'_> {
    /// A chunk with a single choice; carries `"usage": null` when the client
    /// asked for usage, as OpenAI does.
    fn chunk(&self, choice: Value) -> Value {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": self.object,
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// Appends the usage chunk (when asked for) and serializes everything as
    /// SSE events, ending with `[DONE]`.
    fn finish(&self, mut chunks: Vec<Value>, usage: &Usage) -> Vec<Bytes> {
        if self.include_usage {
            chunks.push(json!({
                "id": self.meta.id,
                "object": self.object,
                "created": self.meta.created,
                "model": self.meta.model,
                "choices": [],
                "usage": usage.to_json(),
            }));
        }
        chunks
            .iter()
            .map(|chunk| Bytes::from(format!("data: {chunk}\n\n")))
            .chain(std::iter::once(Bytes::from_static(b"data: [DONE]\n\n")))
            .collect()
    }
}

/// A `text/event-stream` response sending each event as its own body frame,
/// the first at once and each later one after `delay`. Hyper flushes whenever
/// the body is pending, so clients see events arrive one by one.
pub(crate) fn sse_response(events: Vec<Bytes>, delay: Duration) -> Response {
    let frames = futures::stream::iter(events.into_iter().enumerate()).then(
        move |(index, event)| async move {
            if index > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(event)
        },
    );
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

/// Cuts `text` into exactly `count` pieces whose concatenation is `text`:
/// whole words when there are enough of them, otherwise single characters
/// (pieces are empty only if `text` has fewer than `count` characters).
pub(crate) fn split_into_pieces(text: &str, count: usize) -> Vec<String> {
    let count = count.max(1);
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let units: Vec<&str> = if words.len() >= count {
        words
    } else {
        text.char_indices()
            .map(|(start, c)| &text[start..start + c.len_utf8()])
            .collect()
    };
    let total = units.len();
    (0..count)
        .map(|i| units[i * total / count..(i + 1) * total / count].concat())
        .collect()
}

/// The first `limit` words of `text`, when it has more (a reply cut at `max_tokens`, one token
/// per word in every mock format).
pub(crate) fn first_words(text: &str, limit: u64) -> Option<String> {
    (word_count(text) > limit).then(|| {
        text.split_whitespace()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_to_the_text() {
        let text = "mock reply from mock to m: one two three";
        for count in [1, 2, 4, 8, 9, 40, 100] {
            let pieces = split_into_pieces(text, count);
            assert_eq!(pieces.len(), count, "count {count}");
            assert_eq!(pieces.concat(), text, "count {count}");
        }
        assert_eq!(split_into_pieces("a b c d", 2), ["a b ", "c d"]);
        assert_eq!(split_into_pieces("héllo", 3).concat(), "héllo");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello world");
        assert_eq!(a, embedding("hello world"));
        assert_ne!(a, embedding("hello there"));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn prompt_shapes() {
        assert_eq!(prompt_words(&json!("a b  c")), Some(3));
        assert_eq!(prompt_words(&json!(["a b", "c"])), Some(3));
        assert_eq!(prompt_words(&json!([1, 2, 3])), Some(3));
        assert_eq!(prompt_words(&json!([[1, 2], [3]])), Some(3));
        assert_eq!(prompt_words(&json!({"a": 1})), None);
        assert!(embedding_inputs(&json!([])).is_none());
        assert!(embedding_inputs(&json!([{"a": 1}])).is_none());
        assert_eq!(
            embedding_inputs(&json!(["a", "b c"])).map(|v| v.len()),
            Some(2)
        );
        assert_eq!(embedding_inputs(&json!([5, 6])).map(|v| v.len()), Some(1));
    }
}
