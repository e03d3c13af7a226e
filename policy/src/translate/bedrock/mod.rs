//! Amazon Bedrock's Converse API (`POST /model/{modelId}/converse`) and ConverseStream
//! (`/converse-stream`, an AWS event stream) behind an OpenAI chat completions client, with
//! the SigV4 signing ([`sigv4`]) and event-stream framing ([`eventstream`]) they need.
//!
//! Wire formats from the Bedrock API reference:
//! <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html> and
//! <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html>.
//!
//! | OpenAI chat | Converse | |
//! |---|---|---|
//! | `system` / `developer` messages (string or text parts, anywhere) | `system: [{text}]` in order | mapped |
//! | `user` text parts, `image_url` with a base64 `data:` URL (png, jpeg, gif, webp) | `{text}`, `{image: {format, source: {bytes}}}` | mapped |
//! | `image_url` with an `http(s)` URL, `input_audio`, `file` parts | | refused (Bedrock takes image bytes only) |
//! | `assistant` text / refusal parts, `tool_calls` | `{text}`, `{toolUse: {toolUseId, name, input}}` | mapped (arguments must be JSON) |
//! | `tool` messages | `{toolResult: {toolUseId, content: [{text}]}}` in a user turn | mapped; `status` omitted (only some models accept it) |
//! | consecutive turns of one role (tool results + user text) | one message | merged |
//! | `tools` (functions), `tool_choice` auto / required / named | `toolConfig {tools: [{toolSpec}], toolChoice: auto / any / tool}` | mapped |
//! | `tool_choice: "none"` | `toolConfig` omitted; kept (without `toolChoice`) when the history has tool blocks, since Bedrock requires it then | approximated |
//! | tool blocks in the history but no `tools` | `toolConfig` synthesized from the called names (schema `{"type":"object"}`) | approximated |
//! | `max_completion_tokens` / `max_tokens`, `temperature`, `top_p`, `stop` | `inferenceConfig {maxTokens, temperature, topP, stopSequences}` | mapped |
//! | `n > 1`, `response_format` json_object / json_schema, `audio` / audio `modalities`, `functions` / `function_call`, `web_search_options`, non-function tools, `function` role | | refused |
//! | `frequency_penalty`, `presence_penalty`, `logit_bias`, `logprobs`, `top_logprobs`, `seed`, `user`, `metadata`, `store`, `parallel_tool_calls`, `stream_options`, `reasoning_effort`, `service_tier`, `prediction`, message `name`, image `detail`, unknown fields | | dropped |
//! | `model`, `stream` | the path ([`path`]) | |
//!
//! Replies: text blocks concatenated into `message.content`, `toolUse` blocks into
//! `tool_calls` (the `toolUseId` is the call id, `input` serialized as `arguments`);
//! `reasoningContent` and other block kinds are dropped. `stopReason`: `end_turn` and
//! `stop_sequence` → `stop`, `max_tokens` and `model_context_window_exceeded` → `length`,
//! `tool_use` → `tool_calls`, `guardrail_intervened` and `content_filtered` →
//! `content_filter`, anything else → `stop`.

pub mod eventstream;
pub mod sigv4;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use percent_encoding::{percent_decode_str, utf8_percent_encode};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub use eventstream::{encode_message, DecodeError, EventStreamDecoder, HeaderValue, Message};
pub use sigv4::{format_amz_date, parse_amz_date, sign, AwsCredentials};

use super::{StreamTranslator, TranslateError};

/// The SigV4 service name of the Bedrock runtime.
pub const SIGNING_SERVICE: &str = "bedrock";

/// The content type of ConverseStream replies.
pub const EVENT_STREAM_CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Image formats Bedrock's `ImageBlock` accepts.
const IMAGE_FORMATS: &[&str] = &["png", "jpeg", "gif", "webp"];

/// Fields refused because dropping them would change the answer.
const REFUSED_FIELDS: &[(&str, &str)] = &[
    ("audio", "Bedrock Converse does not produce audio"),
    (
        "functions",
        "use tools instead of the legacy functions field",
    ),
    (
        "function_call",
        "use tool_choice instead of the legacy function_call field",
    ),
    (
        "web_search_options",
        "Bedrock Converse has no built-in web search",
    ),
];

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `/model/{model id}/converse`, or `/converse-stream` when `stream`. The model id is one path
/// segment with every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded, so that the `:` of
/// versioned ids and the `/` of ARNs survive (the canonical URI that [`sign`] computes encodes
/// it once more, as SigV4 wants for every service but S3:
/// <https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html>).
pub fn path(model_id: &str, stream: bool) -> String {
    let id = utf8_percent_encode(model_id, sigv4::AWS_URI_ENCODE);
    let operation = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("/model/{id}/{operation}")
}

/// The inverse of [`path`]: the decoded model id and whether the path is the streaming one;
/// `None` for any other path.
pub fn parse_path(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (id, operation) = rest.split_once('/')?;
    let stream = match operation {
        "converse" => false,
        "converse-stream" => true,
        _ => return None,
    };
    let id = percent_decode_str(id).decode_utf8().ok()?;
    (!id.is_empty()).then(|| (id.into_owned(), stream))
}

/// An OpenAI chat completions request → a Converse (or ConverseStream) request body. The model
/// and `stream` go into the [`path`], not the body.
pub fn request_from_chat(chat: &Value) -> Result<Value, TranslateError> {
    let body = chat.as_object().ok_or_else(|| TranslateError {
        param: None,
        message: "the request body must be a JSON object".to_owned(),
    })?;
    refuse_unsupported(body)?;

    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("messages", "messages must be an array"))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{param}.role"), "role is required"))?;
        match role {
            "system" | "developer" => system.extend(
                text_parts(message.get("content"), &param)?
                    .into_iter()
                    .filter(|text| !text.is_empty())
                    .map(|text| json!({ "text": text })),
            ),
            "user" => push_turn(&mut turns, "user", user_blocks(message, &param)?),
            "assistant" => push_turn(&mut turns, "assistant", assistant_blocks(message, &param)?),
            "tool" => push_turn(
                &mut turns,
                "user",
                vec![tool_result_block(message, &param)?],
            ),
            "function" => {
                return Err(TranslateError::new(
                    format!("{param}.role"),
                    "the legacy function role is not supported; use tool messages",
                ))
            }
            other => {
                return Err(TranslateError::new(
                    format!("{param}.role"),
                    format!("unknown role {other:?}"),
                ))
            }
        }
    }

    let mut out = Map::new();
    out.insert(
        "messages".to_owned(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({ "role": role, "content": content }))
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("system".to_owned(), Value::Array(system));
    }
    if let Some(config) = inference_config(body)? {
        out.insert("inferenceConfig".to_owned(), config);
    }
    let history = out
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(config) = tool_config(body, history)? {
        out.insert("toolConfig".to_owned(), config);
    }
    Ok(Value::Object(out))
}

fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), TranslateError> {
    for (field, why) in REFUSED_FIELDS {
        if body.get(*field).is_some_and(|value| !value.is_null()) {
            return Err(TranslateError::new(*field, *why));
        }
    }
    if let Some(n) = body.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(TranslateError::new(
                "n",
                "Bedrock Converse returns one choice; n must be 1",
            ));
        }
    }
    if let Some(format) = body.get("response_format").filter(|f| !f.is_null()) {
        let kind = format.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(TranslateError::new(
                "response_format",
                "Bedrock Converse has no JSON mode; only response_format {\"type\":\"text\"} is accepted",
            ));
        }
    }
    if let Some(modalities) = body.get("modalities").and_then(Value::as_array) {
        if modalities.iter().any(|m| m.as_str() == Some("audio")) {
            return Err(TranslateError::new(
                "modalities",
                "Bedrock Converse does not produce audio",
            ));
        }
    }
    Ok(())
}

/// Appends a turn, merging it into the previous one when the role is the same (Bedrock wants
/// roles to alternate; tool results and the user text after them share one user turn).
fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, content)) if *last == role => content.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// The texts of a string or an array of `text` (or `refusal`) parts; null is no text.
fn text_parts(content: Option<&Value>, param: &str) -> Result<Vec<String>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let kind = part.get("type").and_then(Value::as_str);
                let text = match kind {
                    Some("text") => part.get("text"),
                    Some("refusal") => part.get("refusal"),
                    _ => None,
                };
                text.and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        TranslateError::new(
                            format!("{param}.content[{j}].type"),
                            "only text parts are accepted here",
                        )
                    })
            })
            .collect(),
        Some(_) => Err(TranslateError::new(
            format!("{param}.content"),
            "content must be a string or an array of parts",
        )),
    }
}

fn user_blocks(message: &Value, param: &str) -> Result<Vec<Value>, TranslateError> {
    match message.get("content") {
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let part_param = format!("{param}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            TranslateError::new(
                                format!("{part_param}.text"),
                                "a text part needs text",
                            )
                        })?;
                        if !text.is_empty() {
                            blocks.push(json!({ "text": text }));
                        }
                    }
                    Some("image_url") => blocks.push(image_block(part, &part_param)?),
                    Some(other) => {
                        return Err(TranslateError::new(
                            format!("{part_param}.type"),
                            format!(
                            "content parts of type {other:?} are not supported by Bedrock Converse"
                        ),
                        ))
                    }
                    None => {
                        return Err(TranslateError::new(
                            format!("{part_param}.type"),
                            "a content part needs a type",
                        ))
                    }
                }
            }
            Ok(blocks)
        }
        other => Ok(text_parts(other, param)?
            .into_iter()
            .filter(|text| !text.is_empty())
            .map(|text| json!({ "text": text }))
            .collect()),
    }
}

/// `{"type":"image_url","image_url":{"url":"data:image/png;base64,..."}}` →
/// `{"image":{"format":"png","source":{"bytes":"..."}}}`: on the wire (JSON) the `bytes` blob
/// is base64, as the data URL already has it; Bedrock does not fetch URLs (an S3 location is
/// its only other source), see
/// <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ImageSource.html>.
fn image_block(part: &Value, param: &str) -> Result<Value, TranslateError> {
    let image = part.get("image_url");
    let url = image
        .and_then(|image| image.get("url").or(Some(image)))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::new(
                format!("{param}.image_url.url"),
                "an image part needs a url",
            )
        })?;
    let url_param = format!("{param}.image_url.url");
    let Some(data) = url.strip_prefix("data:") else {
        return Err(TranslateError::new(
            url_param,
            "Bedrock needs the image bytes: send the image as a base64 data: URL, not a link",
        ));
    };
    let (meta, bytes) = data.split_once(',').ok_or_else(|| {
        TranslateError::new(
            url_param.clone(),
            "the data: URL has no comma before its data",
        )
    })?;
    let (mime, encoding) = meta.rsplit_once(';').unwrap_or((meta, ""));
    if encoding != "base64" {
        return Err(TranslateError::new(
            url_param,
            "the image data: URL must be base64-encoded",
        ));
    }
    let subtype = mime
        .strip_prefix("image/")
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let format = if subtype == "jpg" {
        "jpeg".to_owned()
    } else {
        subtype
    };
    if !IMAGE_FORMATS.contains(&format.as_str()) {
        return Err(TranslateError::new(
            url_param,
            format!("Bedrock accepts png, jpeg, gif and webp images, not {mime:?}"),
        ));
    }
    Ok(json!({ "image": { "format": format, "source": { "bytes": bytes } } }))
}

fn assistant_blocks(message: &Value, param: &str) -> Result<Vec<Value>, TranslateError> {
    let mut blocks: Vec<Value> = text_parts(message.get("content"), param)?
        .into_iter()
        .filter(|text| !text.is_empty())
        .map(|text| json!({ "text": text }))
        .collect();
    if message.get("function_call").is_some_and(|f| !f.is_null()) {
        return Err(TranslateError::new(
            format!("{param}.function_call"),
            "the legacy function_call is not supported; use tool_calls",
        ));
    }
    let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) else {
        return Ok(blocks);
    };
    let calls = calls.as_array().ok_or_else(|| {
        TranslateError::new(format!("{param}.tool_calls"), "tool_calls must be an array")
    })?;
    for (j, call) in calls.iter().enumerate() {
        let call_param = format!("{param}.tool_calls[{j}]");
        if let Some(kind) = call.get("type").and_then(Value::as_str) {
            if kind != "function" {
                return Err(TranslateError::new(
                    format!("{call_param}.type"),
                    format!("tool calls of type {kind:?} are not supported"),
                ));
            }
        }
        let id = call.get("id").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::new(format!("{call_param}.id"), "a tool call needs an id")
        })?;
        let function = call.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TranslateError::new(
                    format!("{call_param}.function.name"),
                    "a tool call needs a function name",
                )
            })?;
        let arguments = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(text)) if text.trim().is_empty() => json!({}),
            Some(Value::String(text)) => serde_json::from_str(text).map_err(|error| {
                TranslateError::new(
                    format!("{call_param}.function.arguments"),
                    format!("the arguments must be JSON for Bedrock: {error}"),
                )
            })?,
            Some(other) => other.clone(),
        };
        blocks.push(json!({ "toolUse": { "toolUseId": id, "name": name, "input": arguments } }));
    }
    Ok(blocks)
}

/// A `tool` message → a `toolResult` block. No `status`: "this field is only supported by
/// Amazon Nova and Anthropic Claude 3 and 4 models"
/// (<https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ToolResultBlock.html>),
/// and OpenAI has no way to say a tool failed anyway. The content stays text (not `json`), so
/// the model sees exactly what the client sent.
fn tool_result_block(message: &Value, param: &str) -> Result<Value, TranslateError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::new(
                format!("{param}.tool_call_id"),
                "a tool message needs tool_call_id",
            )
        })?;
    let text = text_parts(message.get("content"), param)?.concat();
    Ok(json!({ "toolResult": { "toolUseId": id, "content": [{ "text": text }] } }))
}

fn inference_config(body: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let mut config = Map::new();
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|field| body.get(field).filter(|v| !v.is_null()).map(|v| (field, v)));
    if let Some((field, value)) = max_tokens {
        if value.as_u64().is_none() {
            return Err(TranslateError::new(field, "must be a non-negative integer"));
        }
        config.insert("maxTokens".to_owned(), value.clone());
    }
    for (field, target) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
            if !value.is_number() {
                return Err(TranslateError::new(field, "must be a number"));
            }
            config.insert(target.to_owned(), value.clone());
        }
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(stop)) => {
            config.insert("stopSequences".to_owned(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if !stops.is_empty() {
                config.insert("stopSequences".to_owned(), Value::Array(stops.clone()));
            }
        }
        Some(_) => {
            return Err(TranslateError::new(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    }
    Ok((!config.is_empty()).then_some(Value::Object(config)))
}

fn tool_config(
    body: &Map<String, Value>,
    history: &[Value],
) -> Result<Option<Value>, TranslateError> {
    let mut specs = Vec::new();
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| TranslateError::new("tools", "tools must be an array"))?;
        for (i, tool) in tools.iter().enumerate() {
            let kind = tool.get("type").and_then(Value::as_str);
            if kind != Some("function") {
                return Err(TranslateError::new(
                    format!("tools[{i}].type"),
                    "Bedrock Converse supports function tools only",
                ));
            }
            let function = tool.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::new(format!("tools[{i}].function.name"), "a tool needs a name")
                })?;
            let schema = function
                .and_then(|f| f.get("parameters"))
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            let mut spec = Map::new();
            spec.insert("name".to_owned(), json!(name));
            if let Some(description) = function
                .and_then(|f| f.get("description"))
                .and_then(Value::as_str)
            {
                spec.insert("description".to_owned(), json!(description));
            }
            spec.insert("inputSchema".to_owned(), json!({ "json": schema }));
            specs.push(json!({ "toolSpec": spec }));
        }
    }

    let history_has_tools = history.iter().any(|message| {
        message
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|blocks| {
                blocks
                    .iter()
                    .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some())
            })
    });

    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => Some(json!({ "auto": {} })),
            "required" => Some(json!({ "any": {} })),
            "none" => {
                if !history_has_tools {
                    return Ok(None);
                }
                // Bedrock refuses tool blocks without a toolConfig: keep the tools, without a
                // choice (the closest it can say to "none").
                tracing::debug!("bedrock: tool_choice none with tool history; tools kept");
                None
            }
            other => {
                return Err(TranslateError::new(
                    "tool_choice",
                    format!("unknown tool_choice {other:?}"),
                ))
            }
        },
        Some(choice) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| choice.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    TranslateError::new(
                        "tool_choice",
                        "tool_choice must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\"}}",
                    )
                })?;
            Some(json!({ "tool": { "name": name } }))
        }
    };

    if specs.is_empty() {
        if choice.is_some() {
            return Err(TranslateError::new(
                "tool_choice",
                "tool_choice needs tools",
            ));
        }
        if !history_has_tools {
            return Ok(None);
        }
        // Tool calls in the history but no tools offered: Bedrock wants the called tools
        // declared, so declare them with an open schema.
        let mut names: Vec<&str> = Vec::new();
        for block in history
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
        {
            if let Some(name) = block
                .get("toolUse")
                .and_then(|t| t.get("name"))
                .and_then(Value::as_str)
            {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        specs = names
            .into_iter()
            .map(|name| {
                json!({ "toolSpec": { "name": name, "inputSchema": { "json": { "type": "object" } } } })
            })
            .collect();
        if specs.is_empty() {
            // Only tool results (their calls are not in the request): nothing to declare.
            return Ok(None);
        }
    }

    let mut config = Map::new();
    config.insert("tools".to_owned(), Value::Array(specs));
    if let Some(choice) = choice {
        config.insert("toolChoice".to_owned(), choice);
    }
    Ok(Some(Value::Object(config)))
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// A Converse reply → an OpenAI chat completion, `model` being the name the client asked for.
pub fn response_to_chat(resp: &Value, client_model: &str) -> Result<Value, TranslateError> {
    let content = resp
        .get("output")
        .and_then(|o| o.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            TranslateError::new(
                "output.message.content",
                "the Bedrock reply has no output message",
            )
        })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        if let Some(part) = block.get("text").and_then(Value::as_str) {
            text.push_str(part);
        } else if let Some(tool) = block.get("toolUse") {
            let input = tool.get("input").cloned().unwrap_or_else(|| json!({}));
            tool_calls.push(json!({
                "id": tool.get("toolUseId").and_then(Value::as_str).unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": tool.get("name").and_then(Value::as_str).unwrap_or_default(),
                    "arguments": input.to_string(),
                },
            }));
        } else {
            tracing::debug!(block = %block, "bedrock: reply block dropped");
        }
    }
    let mut message = Map::new();
    message.insert("role".to_owned(), json!("assistant"));
    message.insert(
        "content".to_owned(),
        if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !tool_calls.is_empty() {
        message.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }
    let finish = finish_reason(resp.get("stopReason").and_then(Value::as_str));
    let mut out = json!({
        "id": format!("chatcmpl-bedrock-{}", &sigv4::hex(&Sha256::digest(resp.to_string().as_bytes()))[..24]),
        "object": "chat.completion",
        "created": unix_now(),
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "finish_reason": finish,
        }],
    });
    if let Some(usage) = resp.get("usage").and_then(usage_to_openai) {
        out["usage"] = usage;
    }
    Ok(out)
}

/// Bedrock's `stopReason` → OpenAI's `finish_reason` (values from
/// <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_MessageStopEvent.html>).
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// Bedrock's `TokenUsage` → OpenAI's `usage`. `inputTokens` does not include the tokens read
/// from or written to the prompt cache (they are reported beside it, as Anthropic's API does;
/// see the `TokenUsage` reference,
/// <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html>, and
/// the prompt caching guide), while OpenAI's `prompt_tokens` counts every prompt token: so the
/// prompt is the sum of the three and `cached_tokens` the cache reads.
fn usage_to_openai(usage: &Value) -> Option<Value> {
    let count = |field: &str| usage.get(field).and_then(Value::as_u64);
    let input = count("inputTokens")?;
    let output = count("outputTokens").unwrap_or(0);
    let cache_read = count("cacheReadInputTokens");
    let cache_write = count("cacheWriteInputTokens").unwrap_or(0);
    let prompt = input + cache_read.unwrap_or(0) + cache_write;
    let mut out = json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
    });
    if let Some(cached) = cache_read {
        out["prompt_tokens_details"] = json!({ "cached_tokens": cached });
    }
    Some(out)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A Bedrock error reply → an OpenAI error object (`{"error":{message,type,param,code}}`), to
/// be sent with the same HTTP status. `error_type` is the `x-amzn-errortype` response header
/// (e.g. `ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/`); without
/// it the body's `__type` or `code` is used. `code` is the AWS exception name.
pub fn error_to_openai(status: u16, body: &[u8], error_type: Option<&str>) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let name = error_type
        .map(str::to_owned)
        .or_else(|| field("__type"))
        .or_else(|| field("code"))
        .or_else(|| field("Code"))
        .map(|name| exception_name(&name).to_owned())
        .filter(|name| !name.is_empty());
    let message = field("message")
        .or_else(|| field("Message"))
        .or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            (!text.is_empty() && parsed.is_none()).then(|| text.chars().take(1000).collect())
        })
        .unwrap_or_else(|| format!("Bedrock returned HTTP {status}"));
    openai_error(
        &message,
        error_kind(name.as_deref(), status),
        name.as_deref(),
    )
}

/// `ThrottlingException:http://...` or `com.amazon.coral.service#ThrottlingException` →
/// `ThrottlingException`.
fn exception_name(raw: &str) -> &str {
    let name = raw.split(':').next().unwrap_or(raw);
    name.rsplit('#').next().unwrap_or(name).trim()
}

/// The OpenAI error `type` for an AWS exception name (case-insensitive: event streams spell
/// them `throttlingException`), else for the HTTP status.
fn error_kind(name: Option<&str>, status: u16) -> &'static str {
    let name = name.map(str::to_ascii_lowercase);
    match name.as_deref().map(|n| n.trim_end_matches("exception")) {
        Some("throttling" | "toomanyrequests" | "servicequotaexceeded") => "rate_limit_error",
        Some(
            "validation" | "resourcenotfound" | "unknownoperation" | "serialization" | "conflict",
        ) => "invalid_request_error",
        Some("accessdenied") => "permission_error",
        Some(
            "unrecognizedclient"
            | "invalidsignature"
            | "missingauthenticationtoken"
            | "incompletesignature"
            | "expiredtoken"
            | "invalidclienttokenid"
            | "signaturedoesnotmatch",
        ) => "authentication_error",
        Some(
            "internalserver" | "serviceunavailable" | "modeltimeout" | "modelstreamerror"
            | "modelerror" | "modelnotready",
        ) => "server_error",
        _ => match status {
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            500..=599 => "server_error",
            _ => "api_error",
        },
    }
}

fn openai_error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

static STREAM_IDS: AtomicU64 = AtomicU64::new(0);

/// A ConverseStream reply (binary `application/vnd.amazon.eventstream`) → OpenAI
/// `chat.completion.chunk` server-sent events ending with `data: [DONE]`.
///
/// `messageStart` gives the role chunk, text deltas content chunks, `contentBlockStart` with a
/// `toolUse` a tool-call chunk (id, name) and its `toolUse.input` deltas the argument chunks,
/// `messageStop` the `finish_reason` chunk, and `metadata` the usage chunk (`choices: []`) when
/// the client asked for usage. An exception message (`:message-type: exception`, e.g.
/// `throttlingException`), an `error` message, a bad CRC or a truncated frame become an OpenAI
/// error event followed by `[DONE]`; nothing is sent after it.
pub struct StreamToChat {
    model: String,
    include_usage: bool,
    id: String,
    created: u64,
    decoder: EventStreamDecoder,
    started: bool,
    /// `contentBlockIndex` of each tool call so far; the position is the OpenAI call index.
    tool_blocks: Vec<u64>,
    done: bool,
}

impl StreamToChat {
    pub fn new(client_model: &str, include_usage: bool) -> StreamToChat {
        let created = unix_now();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let serial = STREAM_IDS.fetch_add(1, Ordering::Relaxed);
        StreamToChat {
            model: client_model.to_owned(),
            include_usage,
            id: format!("chatcmpl-bedrock-{created:x}{nanos:08x}{serial:x}"),
            created,
            decoder: EventStreamDecoder::new(),
            started: false,
            tool_blocks: Vec::new(),
            done: false,
        }
    }

    /// Uses this `id` (e.g. Bedrock's `x-amzn-requestid`) and `created` in every chunk.
    pub fn with_identity(mut self, id: impl Into<String>, created: u64) -> StreamToChat {
        self.id = id.into();
        self.created = created;
        self
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Vec<u8> {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        sse(&chunk)
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            out.extend(self.chunk(json!({ "role": "assistant", "content": "" }), None));
        }
    }

    fn fail(&mut self, out: &mut Vec<u8>, error: &Value) {
        out.extend(sse(error));
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn handle(&mut self, message: &Message, out: &mut Vec<u8>) {
        let payload: Option<Value> = serde_json::from_slice(&message.payload).ok();
        let text_field = |name: &str| {
            payload
                .as_ref()
                .and_then(|p| p.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match message.header_str(":message-type").unwrap_or("event") {
            "event" => {}
            "exception" => {
                let name = message.header_str(":exception-type").unwrap_or("exception");
                let text = text_field("message")
                    .or_else(|| text_field("Message"))
                    .unwrap_or_else(|| format!("Bedrock stream exception {name}"));
                let error = openai_error(&text, error_kind(Some(name), 500), Some(name));
                self.fail(out, &error);
                return;
            }
            "error" => {
                let code = message.header_str(":error-code").unwrap_or("error");
                let text = message
                    .header_str(":error-message")
                    .unwrap_or("Bedrock stream error");
                let error = openai_error(text, error_kind(Some(code), 500), Some(code));
                self.fail(out, &error);
                return;
            }
            other => {
                tracing::debug!(message_type = other, "bedrock: stream message ignored");
                return;
            }
        }
        let event = message.header_str(":event-type").unwrap_or_default();
        let Some(payload) = payload else {
            let error = openai_error(
                &format!("Bedrock sent a {event} event whose payload is not JSON"),
                "server_error",
                Some("bad_event_stream"),
            );
            self.fail(out, &error);
            return;
        };
        let block_index = payload.get("contentBlockIndex").and_then(Value::as_u64);
        match event {
            "messageStart" => self.start(out),
            "contentBlockStart" => {
                if let Some(tool) = payload.get("start").and_then(|s| s.get("toolUse")) {
                    self.start(out);
                    out.extend(self.open_tool_call(block_index.unwrap_or(0), tool));
                }
            }
            "contentBlockDelta" => {
                let Some(delta) = payload.get("delta") else {
                    return;
                };
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    self.start(out);
                    if !text.is_empty() {
                        out.extend(self.chunk(json!({ "content": text }), None));
                    }
                } else if let Some(tool) = delta.get("toolUse") {
                    self.start(out);
                    let index = block_index.unwrap_or(0);
                    let ordinal = match self.tool_blocks.iter().position(|b| *b == index) {
                        Some(ordinal) => ordinal,
                        None => {
                            // A delta without its start: open the call with what it carries.
                            out.extend(self.open_tool_call(index, tool));
                            self.tool_blocks.len() - 1
                        }
                    };
                    if let Some(input) = tool.get("input").and_then(Value::as_str) {
                        if !input.is_empty() {
                            out.extend(self.chunk(
                                json!({ "tool_calls": [{
                                    "index": ordinal,
                                    "function": { "arguments": input },
                                }] }),
                                None,
                            ));
                        }
                    }
                } else {
                    tracing::debug!(%delta, "bedrock: stream delta dropped");
                }
            }
            "contentBlockStop" => {}
            "messageStop" => {
                self.start(out);
                let reason = finish_reason(payload.get("stopReason").and_then(Value::as_str));
                out.extend(self.chunk(json!({}), Some(reason)));
            }
            "metadata" => {
                if !self.include_usage {
                    return;
                }
                if let Some(usage) = payload.get("usage").and_then(usage_to_openai) {
                    out.extend(sse(&json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage,
                    })));
                }
            }
            other => tracing::debug!(event = other, "bedrock: stream event ignored"),
        }
    }

    fn open_tool_call(&mut self, block_index: u64, tool: &Value) -> Vec<u8> {
        let ordinal = self.tool_blocks.len();
        self.tool_blocks.push(block_index);
        let id = tool
            .get("toolUseId")
            .and_then(Value::as_str)
            .map_or_else(|| format!("call_{block_index}"), str::to_owned);
        let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
        self.chunk(
            json!({ "tool_calls": [{
                "index": ordinal,
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": "" },
            }] }),
            None,
        )
    }
}

impl StreamTranslator for StreamToChat {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.decoder.push(chunk);
        loop {
            match self.decoder.next_message() {
                Ok(Some(message)) => {
                    self.handle(&message, &mut out);
                    if self.done {
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let error = openai_error(
                        &format!("the Bedrock event stream is corrupt: {error}"),
                        "server_error",
                        Some("bad_event_stream"),
                    );
                    self.fail(&mut out, &error);
                    break;
                }
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if self.decoder.buffered() > 0 {
            let error = openai_error(
                &format!(
                    "the Bedrock event stream ended inside a message ({} bytes left over)",
                    self.decoder.buffered()
                ),
                "server_error",
                Some("bad_event_stream"),
            );
            self.fail(&mut out, &error);
            return out;
        }
        self.done = true;
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }
}

fn sse(value: &Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A one-pixel PNG, as clients send it.
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

    fn weather_tools() -> Value {
        json!([
            {"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": true
            }},
            {"type": "function", "function": {
                "name": "get_time",
                "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}
            }}
        ])
    }

    #[test]
    fn a_full_conversation_translates() {
        let chat = json!({
            "model": "claude",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather in Paris and the time in Tokyo?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}"), "detail": "low"}}
                ]},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"Asia/Tokyo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C, cloudy"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "09:30"}]},
                {"role": "user", "content": "Thanks. Summarise."}
            ],
            "tools": weather_tools(),
            "tool_choice": "auto",
            "max_tokens": 256,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
            "seed": 7,
            "logprobs": true,
            "user": "u-1",
            "parallel_tool_calls": true,
            "frequency_penalty": 0.5,
            "x_unknown": {"a": 1}
        });
        let expected = json!({
            "messages": [
                {"role": "user", "content": [
                    {"text": "What is in this picture, and the weather in Paris and the time in Tokyo?"},
                    {"image": {"format": "png", "source": {"bytes": PNG}}}
                ]},
                {"role": "assistant", "content": [
                    {"text": "Let me check."},
                    {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                    {"toolUse": {"toolUseId": "call_2", "name": "get_time", "input": {"tz": "Asia/Tokyo"}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18°C, cloudy"}]}},
                    {"toolResult": {"toolUseId": "call_2", "content": [{"text": "09:30"}]}},
                    {"text": "Thanks. Summarise."}
                ]}
            ],
            "system": [{"text": "You are terse."}, {"text": "Answer in English."}],
            "inferenceConfig": {"maxTokens": 256, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [
                    {"toolSpec": {"name": "get_weather", "description": "Current weather in a city",
                        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}},
                    {"toolSpec": {"name": "get_time",
                        "inputSchema": {"json": {"type": "object", "properties": {"tz": {"type": "string"}}}}}}
                ],
                "toolChoice": {"auto": {}}
            }
        });
        assert_eq!(request_from_chat(&chat).unwrap(), expected);
    }

    #[test]
    fn system_prompt_forms_and_turn_merging() {
        let chat = json!({
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]},
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "d"},
                {"role": "system", "content": "Late system."},
                {"role": "user", "content": "e"}
            ],
            "max_completion_tokens": 10,
            "max_tokens": 99,
            "stop": ["x", "y"]
        });
        assert_eq!(
            request_from_chat(&chat).unwrap(),
            json!({
                "messages": [
                    {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
                    {"role": "assistant", "content": [{"text": "c"}, {"text": "d"}]},
                    {"role": "user", "content": [{"text": "e"}]}
                ],
                "system": [{"text": "One."}, {"text": "Two."}, {"text": "Late system."}],
                "inferenceConfig": {"maxTokens": 10, "stopSequences": ["x", "y"]}
            })
        );
    }

    #[test]
    fn tool_choice_forms() {
        let base = |choice: Value| {
            json!({
                "messages": [{"role": "user", "content": "hi"}],
                "tools": weather_tools(),
                "tool_choice": choice
            })
        };
        let config = |chat: &Value| request_from_chat(chat).unwrap().get("toolConfig").cloned();
        assert_eq!(
            config(&base(json!("required"))).unwrap()["toolChoice"],
            json!({"any": {}})
        );
        assert_eq!(
            config(&base(
                json!({"type": "function", "function": {"name": "get_time"}})
            ))
            .unwrap()["toolChoice"],
            json!({"tool": {"name": "get_time"}})
        );
        assert_eq!(config(&base(json!("none"))), None);
        let absent = config(&base(Value::Null)).unwrap();
        assert_eq!(absent["tools"].as_array().unwrap().len(), 2);
        assert!(absent.get("toolChoice").is_none());

        // "none" with tool blocks in the history: Bedrock needs the tools declared.
        let mut with_history = base(json!("none"));
        with_history["messages"] = json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}
        ]);
        let out = request_from_chat(&with_history).unwrap();
        assert_eq!(out["toolConfig"]["tools"].as_array().unwrap().len(), 2);
        assert!(out["toolConfig"].get("toolChoice").is_none());
        assert_eq!(
            out["messages"][1]["content"][0]["toolUse"]["input"],
            json!({})
        );

        // Tool history without tools: the called tools are declared with an open schema.
        with_history.as_object_mut().unwrap().remove("tools");
        with_history.as_object_mut().unwrap().remove("tool_choice");
        assert_eq!(
            request_from_chat(&with_history).unwrap()["toolConfig"],
            json!({"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]})
        );
    }

    fn refused(chat: Value) -> TranslateError {
        request_from_chat(&chat).unwrap_err()
    }

    #[test]
    fn what_cannot_be_said_is_refused_naming_the_field() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": user, "n": 2}), "n"),
            (
                json!({"messages": user, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
                "response_format",
            ),
            (
                json!({"messages": user, "response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"messages": user, "audio": {"voice": "alloy", "format": "mp3"}}),
                "audio",
            ),
            (
                json!({"messages": user, "modalities": ["text", "audio"]}),
                "modalities",
            ),
            (
                json!({"messages": user, "functions": [{"name": "f"}]}),
                "functions",
            ),
            (
                json!({"messages": user, "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                json!({"messages": user, "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
                ]}]}),
                "messages[0].content[1].image_url.url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}
                ]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                ]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
                ]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "critic", "content": "x"}]}),
                "messages[0].role",
            ),
            (json!({"messages": user, "stop": 5}), "stop"),
            (
                json!({"messages": user, "max_tokens": "many"}),
                "max_tokens",
            ),
            (json!({"messages": "hi"}), "messages"),
        ];
        for (chat, param) in cases {
            let error = refused(chat.clone());
            assert_eq!(error.param.as_deref(), Some(param), "{chat}: {error}");
        }
        assert_eq!(refused(json!([1])).param, None);
        // n = 1 and response_format text are fine.
        assert!(request_from_chat(
            &json!({"messages": user, "n": 1, "response_format": {"type": "text"}})
        )
        .is_ok());
    }

    #[test]
    fn image_formats() {
        for (mime, format) in [
            ("image/png", "png"),
            ("image/jpeg", "jpeg"),
            ("image/jpg", "jpeg"),
            ("image/gif", "gif"),
            ("image/webp", "webp"),
        ] {
            let chat = json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{PNG}")}}
            ]}]});
            assert_eq!(
                request_from_chat(&chat).unwrap()["messages"][0]["content"][0]["image"]["format"],
                format
            );
        }
    }

    #[test]
    fn paths_encode_model_ids_as_one_segment() {
        assert_eq!(
            path("anthropic.claude-3-5-sonnet-20240620-v1:0", false),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0";
        let encoded = path(arn, true);
        assert_eq!(
            encoded,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
        );
        assert_eq!(parse_path(&encoded), Some((arn.to_owned(), true)));
        assert_eq!(
            parse_path("/model/amazon.nova-lite-v1%3A0/converse"),
            Some(("amazon.nova-lite-v1:0".to_owned(), false))
        );
        assert_eq!(parse_path("/model/x/invoke"), None);
        assert_eq!(parse_path("/model//converse"), None);
        assert_eq!(parse_path("/model/a/b/converse"), None);
        assert_eq!(parse_path("/v1/chat/completions"), None);
    }

    #[test]
    fn a_text_reply_with_cache_usage() {
        let reply = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "thinking", "signature": "sig"}}},
                {"text": "Paris is "},
                {"text": "cloudy."}
            ]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 1216,
                      "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 200},
            "metrics": {"latencyMs": 321}
        });
        let chat = response_to_chat(&reply, "my-alias").unwrap();
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(chat["model"], "my-alias");
        assert!(chat["id"]
            .as_str()
            .unwrap()
            .starts_with("chatcmpl-bedrock-"));
        assert!(chat["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(
            chat["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Paris is cloudy."}, "finish_reason": "stop"}])
        );
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 1212, "completion_tokens": 4, "total_tokens": 1216,
                   "prompt_tokens_details": {"cached_tokens": 1000}})
        );
        // Same reply, same id.
        assert_eq!(
            response_to_chat(&reply, "my-alias").unwrap()["id"],
            chat["id"]
        );
    }

    #[test]
    fn a_parallel_tool_call_reply() {
        let reply = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "tooluse_2", "name": "get_time", "input": {"tz": "Asia/Tokyo"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 30, "outputTokens": 20, "totalTokens": 50}
        });
        let chat = response_to_chat(&reply, "m").unwrap();
        assert_eq!(
            chat["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "tooluse_2", "type": "function",
                 "function": {"name": "get_time", "arguments": "{\"tz\":\"Asia/Tokyo\"}"}}
            ]}, "finish_reason": "tool_calls"})
        );
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50})
        );
    }

    #[test]
    fn stop_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("malformed_model_output", "stop"),
        ] {
            let reply = json!({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": stop});
            let chat = response_to_chat(&reply, "m").unwrap();
            assert_eq!(chat["choices"][0]["finish_reason"], finish, "{stop}");
            assert!(chat.get("usage").is_none());
        }
        let error = response_to_chat(&json!({"message": "nope"}), "m").unwrap_err();
        assert_eq!(error.param.as_deref(), Some("output.message.content"));
    }

    #[test]
    fn errors_become_openai_error_objects() {
        let cases: &[(u16, &str, Option<&str>, &str, &str)] = &[
            (
                429,
                r#"{"message":"Too many requests, please wait before trying again."}"#,
                Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
                "rate_limit_error",
                "ThrottlingException",
            ),
            (
                400,
                r#"{"message":"The model returned the following errors: messages: roles must alternate"}"#,
                Some("ValidationException"),
                "invalid_request_error",
                "ValidationException",
            ),
            (
                403,
                r#"{"message":"You don't have access to the model with the specified model ID."}"#,
                Some("AccessDeniedException"),
                "permission_error",
                "AccessDeniedException",
            ),
            (
                404,
                r#"{"message":"Could not resolve the foundation model from the provided model identifier."}"#,
                Some("ResourceNotFoundException"),
                "invalid_request_error",
                "ResourceNotFoundException",
            ),
            (
                408,
                r#"{"message":"Model has timed out in processing the request."}"#,
                Some("ModelTimeoutException"),
                "server_error",
                "ModelTimeoutException",
            ),
            (
                503,
                r#"{"message":"Bedrock is unable to process your request."}"#,
                Some("ServiceUnavailableException"),
                "server_error",
                "ServiceUnavailableException",
            ),
            (
                403,
                r#"{"__type":"com.amazon.coral.service#InvalidSignatureException","message":"The request signature we calculated does not match the signature you provided."}"#,
                None,
                "authentication_error",
                "InvalidSignatureException",
            ),
            (
                403,
                r#"{"message":"The security token included in the request is invalid."}"#,
                Some("UnrecognizedClientException"),
                "authentication_error",
                "UnrecognizedClientException",
            ),
        ];
        for (status, body, header, kind, code) in cases {
            let error = error_to_openai(*status, body.as_bytes(), *header);
            let message: Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                error,
                json!({"error": {"message": message["message"], "type": kind, "param": null, "code": code}}),
                "{body}"
            );
        }
        // Neither a header nor a type: the status decides; a text body is the message.
        assert_eq!(
            error_to_openai(502, b"<html>Bad Gateway</html>", None),
            json!({"error": {"message": "<html>Bad Gateway</html>", "type": "server_error", "param": null, "code": null}})
        );
        assert_eq!(
            error_to_openai(429, b"", None)["error"],
            json!({"message": "Bedrock returned HTTP 429", "type": "rate_limit_error", "param": null, "code": null})
        );
    }

    // --- streams ------------------------------------------------------------------------

    fn event(kind: &str, payload: Value) -> Vec<u8> {
        encode_message(
            &[
                (":event-type", HeaderValue::string(kind)),
                (":content-type", HeaderValue::string("application/json")),
                (":message-type", HeaderValue::string("event")),
            ],
            payload.to_string().as_bytes(),
        )
    }

    fn exception(kind: &str, message: &str) -> Vec<u8> {
        encode_message(
            &[
                (":exception-type", HeaderValue::string(kind)),
                (":content-type", HeaderValue::string("application/json")),
                (":message-type", HeaderValue::string("exception")),
            ],
            json!({ "message": message }).to_string().as_bytes(),
        )
    }

    /// What ConverseStream sends for a reply with text then two parallel tool calls (the
    /// payloads carry Bedrock's `p` padding).
    fn tool_stream() -> Vec<u8> {
        [
            event("messageStart", json!({"p": "abcdefghijk", "role": "assistant"})),
            event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Checking "}, "p": "abcd"})),
            event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "both."}, "p": "ab"})),
            event("contentBlockStop", json!({"contentBlockIndex": 0, "p": "abcdefgh"})),
            event("contentBlockStart", json!({"contentBlockIndex": 1, "p": "abc",
                "start": {"toolUse": {"toolUseId": "tooluse_A1", "name": "get_weather"}}})),
            event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}})),
            event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}})),
            event("contentBlockStop", json!({"contentBlockIndex": 1})),
            event("contentBlockStart", json!({"contentBlockIndex": 2,
                "start": {"toolUse": {"toolUseId": "tooluse_B2", "name": "get_time"}}})),
            event("contentBlockDelta", json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"tz\":\"Asia/Tokyo\"}"}}})),
            event("contentBlockStop", json!({"contentBlockIndex": 2})),
            event("messageStop", json!({"stopReason": "tool_use", "p": "abcdefghijklmnopq"})),
            event("metadata", json!({"usage": {"inputTokens": 25, "outputTokens": 40, "totalTokens": 65,
                "cacheReadInputTokens": 5}, "metrics": {"latencyMs": 812}, "p": "abcde"})),
        ]
        .concat()
    }

    fn translator(include_usage: bool) -> StreamToChat {
        StreamToChat::new("alias", include_usage).with_identity("chatcmpl-test", 1_720_000_000)
    }

    fn run(stream: &[u8], include_usage: bool, cuts: &[usize]) -> Vec<u8> {
        let mut translator = translator(include_usage);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            out.extend(translator.push(&stream[start..cut]));
            start = cut;
        }
        out.extend(translator.finish());
        out
    }

    /// The `data:` payloads of an SSE byte stream.
    fn events(sse: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(sse).unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_tool_call_stream_becomes_openai_chunks() {
        let out = events(&run(&tool_stream(), true, &[]));
        assert_eq!(out.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = out[..out.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        for chunk in &chunks {
            assert_eq!(chunk["id"], "chatcmpl-test");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["created"], 1_720_000_000);
            assert_eq!(chunk["model"], "alias");
        }
        let deltas: Vec<Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|choice| choice["delta"].clone()))
            .collect();
        assert_eq!(
            deltas,
            vec![
                json!({"role": "assistant", "content": ""}),
                json!({"content": "Checking "}),
                json!({"content": "both."}),
                json!({"tool_calls": [{"index": 0, "id": "tooluse_A1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                json!({"tool_calls": [{"index": 1, "id": "tooluse_B2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}),
                json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\":\"Asia/Tokyo\"}"}}]}),
                json!({}),
            ]
        );
        let finish: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|choice| &choice["finish_reason"]))
            .collect();
        assert!(finish[..finish.len() - 1].iter().all(|f| f.is_null()));
        assert_eq!(finish.last().unwrap().as_str(), Some("tool_calls"));
        // Every chunk but the last says "usage": null; the last one has the usage.
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
        assert_eq!(
            chunks.last().unwrap(),
            &json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_720_000_000,
                "model": "alias", "choices": [],
                "usage": {"prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70,
                          "prompt_tokens_details": {"cached_tokens": 5}}})
        );
    }

    #[test]
    fn without_include_usage_there_is_no_usage() {
        let out = run(&tool_stream(), false, &[]);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("usage"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"finish_reason\":\"tool_calls\""));
    }

    fn throttled_stream() -> Vec<u8> {
        [
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
            ),
            exception(
                "throttlingException",
                "Too many tokens, please wait before trying again.",
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
            ),
        ]
        .concat()
    }

    #[test]
    fn an_exception_ends_the_stream_with_an_error_event() {
        let out = events(&run(&throttled_stream(), true, &[]));
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&out[2]).unwrap(),
            json!({"error": {"message": "Too many tokens, please wait before trying again.",
                "type": "rate_limit_error", "param": null, "code": "throttlingException"}})
        );
        assert_eq!(out[3], "[DONE]");

        let validation = [
            event("messageStart", json!({"role": "assistant"})),
            exception(
                "validationException",
                "Input is too long for requested model.",
            ),
        ]
        .concat();
        let out = events(&run(&validation, false, &[]));
        assert_eq!(
            serde_json::from_str::<Value>(&out[1]).unwrap()["error"]["type"],
            "invalid_request_error"
        );

        // The generic event-stream error message.
        let error = encode_message(
            &[
                (":message-type", HeaderValue::string("error")),
                (":error-code", HeaderValue::string("InternalFailure")),
                (":error-message", HeaderValue::string("boom")),
            ],
            b"",
        );
        let out = events(&run(&error, false, &[]));
        assert_eq!(
            serde_json::from_str::<Value>(&out[0]).unwrap(),
            json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": "InternalFailure"}})
        );
        assert_eq!(out[1], "[DONE]");
    }

    fn corrupt_stream() -> Vec<u8> {
        let mut second = event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "x"}}),
        );
        let at = second.len() - 6;
        second[at] ^= 0x20;
        [event("messageStart", json!({"role": "assistant"})), second].concat()
    }

    #[test]
    fn a_bad_crc_or_a_truncated_frame_is_an_error_event() {
        let out = events(&run(&corrupt_stream(), false, &[]));
        assert_eq!(out.len(), 3, "{out:?}");
        let error: Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(error["error"]["code"], "bad_event_stream");
        assert!(error["error"]["message"].as_str().unwrap().contains("CRC"));
        assert_eq!(out[2], "[DONE]");

        let mut truncated = tool_stream();
        truncated.truncate(truncated.len() - 10);
        let out = events(&run(&truncated, true, &[]));
        let error: Value = serde_json::from_str(&out[out.len() - 2]).unwrap();
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ended inside a message"));
        assert_eq!(out.last().unwrap(), "[DONE]");
    }

    #[test]
    fn nothing_after_the_end() {
        let mut stream = translator(false);
        stream.push(&throttled_stream());
        assert!(stream
            .push(&event("messageStop", json!({"stopReason": "end_turn"})))
            .is_empty());
        assert!(stream.finish().is_empty());

        let mut stream = translator(false);
        assert_eq!(stream.finish(), b"data: [DONE]\n\n");
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn text_stream_without_message_start_and_max_tokens() {
        let stream = [
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "cut"}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
            ),
            event("messageStop", json!({"stopReason": "max_tokens"})),
        ]
        .concat();
        let out = events(&run(&stream, false, &[]));
        let chunks: Vec<Value> = out[..out.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "cut"}));
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks.len(), 3);
    }

    /// A small deterministic generator for the random splits.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }
    }

    /// The output must not depend on how the provider's bytes were cut: every single split
    /// point, then random multi-splits (including empty pieces).
    #[test]
    fn output_is_the_same_however_the_stream_is_cut() {
        for (name, stream, include_usage) in [
            ("tool calls", tool_stream(), true),
            ("tool calls, no usage", tool_stream(), false),
            ("exception", throttled_stream(), true),
            ("bad crc", corrupt_stream(), false),
        ] {
            let whole = run(&stream, include_usage, &[]);
            for cut in 0..=stream.len() {
                assert_eq!(
                    run(&stream, include_usage, &[cut]),
                    whole,
                    "{name}: split at byte {cut}"
                );
            }
            let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ stream.len() as u64);
            for round in 0..50 {
                let mut cuts: Vec<usize> = (0..1 + random.next(12))
                    .map(|_| random.next(stream.len() + 1))
                    .collect();
                cuts.sort_unstable();
                assert_eq!(
                    run(&stream, include_usage, &cuts),
                    whole,
                    "{name}: round {round}, cuts {cuts:?}"
                );
            }
            // Byte by byte.
            let every: Vec<usize> = (1..stream.len()).collect();
            assert_eq!(
                run(&stream, include_usage, &every),
                whole,
                "{name}: byte by byte"
            );
        }
    }
}
