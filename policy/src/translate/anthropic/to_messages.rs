//! OpenAI chat shapes → Anthropic Messages shapes: the request sent to Anthropic as a
//! provider, and the reply given to an Anthropic client at the front door.

use serde_json::{json, Map, Value};

use super::{messages_usage, present, stop_reason, DEFAULT_MAX_TOKENS};
use crate::translate::TranslateError;

/// An OpenAI chat completions request → an Anthropic Messages request for `upstream_model`.
///
/// Mapped: `max_completion_tokens` (else `max_tokens`, else [`DEFAULT_MAX_TOKENS`]) →
/// `max_tokens`; `system` and `developer` messages → `system` (a string when there is one
/// plain text, else text blocks); `user`/`assistant` content → content blocks (text, images as
/// base64 or URL sources, PDFs sent as `file_data` → `document`); assistant `tool_calls` →
/// `tool_use` blocks (arguments parsed from their JSON string); `tool` messages →
/// `tool_result` blocks in a user turn. Consecutive messages of one role are merged (Anthropic
/// wants alternating turns) and in a user turn the tool results come first, as Anthropic
/// requires (<https://platform.claude.com/docs/en/agents-and-tools/tool-use/implement-tool-use>).
/// `tools` (functions) → `tools` with `input_schema`; `tool_choice` auto/none/required/a
/// function → auto/none/any/tool; `parallel_tool_calls: false` →
/// `disable_parallel_tool_use`; `stop` → `stop_sequences`; `temperature`, `top_p`, `top_k`;
/// `user` (or `safety_identifier`) → `metadata.user_id`; `stream`; `response_format` `json_schema` →
/// `output_config.format` (<https://platform.claude.com/docs/en/build-with-claude/structured-outputs>);
/// `cache_control` on a content part is carried over.
///
/// Refused: `n > 1`, `temperature` above 1 (Anthropic's range is 0–1), legacy `functions` /
/// `function_call` and `function` messages, audio (`input_audio` parts, `audio`,
/// `modalities` with audio), `web_search_options`, `response_format` `json_object` (Anthropic
/// has no schema-less JSON mode), files by `file_id`, non-function tools, and malformed
/// fields (each error names the field).
///
/// Dropped (they only tune): `stream_options` (Anthropic always reports usage), `logprobs`,
/// `top_logprobs`, `seed`, penalties, `logit_bias`, `reasoning_effort`, `service_tier`,
/// `store`, `metadata`, `prediction`, image `detail`, message `name`, and unknown fields.
pub fn request_from_chat(chat: &Value, upstream_model: &str) -> Result<Value, TranslateError> {
    let request = chat.as_object().ok_or_else(|| TranslateError {
        param: None,
        message: "the request body must be a JSON object".to_owned(),
    })?;
    refuse_unmappable(request)?;

    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("max_tokens".into(), json!(max_tokens(request)?));
    let messages = present(request, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("messages", "required: an array of messages"))?;
    let conversation = convert_messages(messages)?;
    if let Some(system) = conversation.system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(conversation.turns));

    if let Some(temperature) = present(request, "temperature") {
        let value = temperature
            .as_f64()
            .ok_or_else(|| TranslateError::new("temperature", "must be a number"))?;
        if !(0.0..=1.0).contains(&value) {
            return Err(TranslateError::new(
                "temperature",
                format!("Anthropic accepts a temperature from 0 to 1, got {value}"),
            ));
        }
        out.insert("temperature".into(), temperature.clone());
    }
    for field in ["top_p", "top_k"] {
        if let Some(value) = present(request, field) {
            if !value.is_number() {
                return Err(TranslateError::new(field, "must be a number"));
            }
            out.insert(field.into(), value.clone());
        }
    }
    if let Some(stop) = stop_sequences(request)? {
        out.insert("stop_sequences".into(), stop);
    }
    // `safety_identifier` is OpenAI's newer name for `user`.
    for field in ["user", "safety_identifier"] {
        if let Some(user) = present(request, field) {
            let user = user
                .as_str()
                .ok_or_else(|| TranslateError::new(field, "must be a string"))?;
            out.insert("metadata".into(), json!({ "user_id": user }));
            break;
        }
    }
    if let Some(stream) = present(request, "stream") {
        let stream = stream
            .as_bool()
            .ok_or_else(|| TranslateError::new("stream", "must be a boolean"))?;
        if stream {
            out.insert("stream".into(), Value::Bool(true));
        }
    }
    if let Some(tools) = tools(request)? {
        out.insert("tools".into(), tools);
        if let Some(choice) = tool_choice(request)? {
            out.insert("tool_choice".into(), choice);
        }
    }
    if let Some(format) = output_format(request)? {
        out.insert("output_config".into(), json!({ "format": format }));
    }
    Ok(Value::Object(out))
}

/// Fields whose loss would change the answer.
fn refuse_unmappable(request: &Map<String, Value>) -> Result<(), TranslateError> {
    if let Some(n) = present(request, "n") {
        if n.as_u64() != Some(1) {
            return Err(TranslateError::new(
                "n",
                "Anthropic returns one choice per request; n must be 1",
            ));
        }
    }
    for field in ["functions", "function_call"] {
        if present(request, field).is_some() {
            return Err(TranslateError::new(
                field,
                "the legacy functions API cannot be sent to Anthropic; use tools and tool_choice",
            ));
        }
    }
    if present(request, "audio").is_some() {
        return Err(TranslateError::new(
            "audio",
            "Anthropic does not produce audio",
        ));
    }
    if let Some(modalities) = present(request, "modalities").and_then(Value::as_array) {
        if modalities.iter().any(|m| m.as_str() == Some("audio")) {
            return Err(TranslateError::new(
                "modalities",
                "Anthropic does not produce audio",
            ));
        }
    }
    if present(request, "web_search_options").is_some() {
        return Err(TranslateError::new(
            "web_search_options",
            "OpenAI's built-in web search cannot be sent to Anthropic",
        ));
    }
    Ok(())
}

fn max_tokens(request: &Map<String, Value>) -> Result<u64, TranslateError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        if let Some(value) = present(request, field) {
            return value
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| TranslateError::new(field, "must be a positive integer"));
        }
    }
    Ok(DEFAULT_MAX_TOKENS)
}

fn stop_sequences(request: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let sequences: Vec<Value> = match present(request, "stop") {
        None => return Ok(None),
        Some(Value::String(stop)) => vec![json!(stop)],
        Some(Value::Array(stops)) => stops
            .iter()
            .enumerate()
            .map(|(i, stop)| {
                stop.as_str()
                    .map(|s| json!(s))
                    .ok_or_else(|| TranslateError::new(format!("stop[{i}]"), "must be a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(TranslateError::new(
                "stop",
                "must be a string or an array of strings",
            ))
        }
    };
    let sequences: Vec<Value> = sequences
        .into_iter()
        .filter(|s| s.as_str().is_some_and(|s| !s.is_empty()))
        .collect();
    Ok((!sequences.is_empty()).then_some(Value::Array(sequences)))
}

/// The system prompt and the alternating user/assistant turns.
struct Conversation {
    system: Option<Value>,
    turns: Vec<Value>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

fn convert_messages(messages: &[Value]) -> Result<Conversation, TranslateError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let message = message
            .as_object()
            .ok_or_else(|| TranslateError::new(path.clone(), "must be an object"))?;
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{path}.role"), "required: a string"))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(content, &format!("{path}.content"))?);
                continue;
            }
            "user" => (
                Role::User,
                user_blocks(content, &format!("{path}.content"))?,
            ),
            "assistant" => (Role::Assistant, assistant_blocks(message, &path)?),
            "tool" => (Role::User, vec![tool_result_block(message, &path)?]),
            "function" => {
                return Err(TranslateError::new(
                    format!("{path}.role"),
                    "legacy function messages cannot be sent to Anthropic; use tool messages",
                ))
            }
            other => {
                return Err(TranslateError::new(
                    format!("{path}.role"),
                    format!("unknown role {other:?}"),
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return Err(TranslateError::new(
            "messages",
            "at least one user or assistant message with content is required",
        ));
    }
    let turns = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == Role::User {
                // Stable: tool results keep their order, and so does the rest.
                blocks.sort_by_key(|block| block["type"] != "tool_result");
            }
            json!({ "role": role.name(), "content": blocks })
        })
        .collect();
    let system = match system.as_slice() {
        [] => None,
        [only] if only.get("cache_control").is_none() => Some(only["text"].clone()),
        _ => Some(Value::Array(system)),
    };
    Ok(Conversation { system, turns })
}

/// A text block, with the part's `cache_control` carried over when it has one.
fn text_block(text: &str, part: Option<&Value>) -> Value {
    let mut block = json!({ "type": "text", "text": text });
    if let Some(cache) = part.and_then(|p| p.get("cache_control")) {
        block["cache_control"] = cache.clone();
    }
    block
}

/// Content that may only hold text (system prompts): a string or text parts. Empty texts are
/// skipped (Anthropic rejects empty text blocks).
fn text_blocks(content: &Value, path: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![text_block(text, None)]),
        Value::Array(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let part_path = format!("{path}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = part_text(part, &part_path)?;
                        if !text.is_empty() {
                            blocks.push(text_block(text, Some(part)));
                        }
                    }
                    _ => {
                        return Err(TranslateError::new(
                            format!("{part_path}.type"),
                            "only text parts are allowed here",
                        ))
                    }
                }
            }
            Ok(blocks)
        }
        _ => Err(TranslateError::new(
            path,
            "must be a string or an array of content parts",
        )),
    }
}

fn part_text<'a>(part: &'a Value, path: &str) -> Result<&'a str, TranslateError> {
    part.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.text"), "required: a string"))
}

/// A user message's content (or a tool message's): text, images and files.
fn user_blocks(content: &Value, path: &str) -> Result<Vec<Value>, TranslateError> {
    let Value::Array(parts) = content else {
        return text_blocks(content, path);
    };
    let mut blocks = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_path = format!("{path}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part_text(part, &part_path)?;
                if !text.is_empty() {
                    blocks.push(text_block(text, Some(part)));
                }
            }
            Some("image_url") => blocks.push(image_block(part, &part_path)?),
            Some("file") => blocks.push(document_block(part, &part_path)?),
            Some("input_audio") => {
                return Err(TranslateError::new(
                    format!("{part_path}.type"),
                    "Anthropic does not accept audio input",
                ))
            }
            other => {
                return Err(TranslateError::new(
                    format!("{part_path}.type"),
                    format!("unsupported content part type {other:?}"),
                ))
            }
        }
    }
    Ok(blocks)
}

/// `data:<media type>;base64,<data>` → (media type, data).
pub(super) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let (header, data) = url.strip_prefix("data:")?.split_once(',')?;
    let media_type = header.strip_suffix(";base64")?;
    let media_type = media_type.split(';').next().unwrap_or(media_type);
    Some((media_type, data))
}

/// `image_url` part → `image` block: data URLs become a base64 source, http(s) URLs a URL
/// source (<https://platform.claude.com/docs/en/build-with-claude/vision>). `detail` has no
/// equivalent and is dropped.
fn image_block(part: &Value, path: &str) -> Result<Value, TranslateError> {
    let image = part.get("image_url");
    let url = image
        .and_then(|image| image.get("url").or(Some(image)))
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.image_url.url"), "required: a URL"))?;
    let source = if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url).ok_or_else(|| {
            TranslateError::new(
                format!("{path}.image_url.url"),
                "a data URL must be base64: data:<media type>;base64,<data>",
            )
        })?;
        json!({ "type": "base64", "media_type": media_type, "data": data })
    } else if url.starts_with("https://") || url.starts_with("http://") {
        json!({ "type": "url", "url": url })
    } else {
        return Err(TranslateError::new(
            format!("{path}.image_url.url"),
            "must be an http(s) URL or a base64 data URL",
        ));
    };
    let mut block = json!({ "type": "image", "source": source });
    if let Some(cache) = part.get("cache_control") {
        block["cache_control"] = cache.clone();
    }
    Ok(block)
}

/// `file` part with inline PDF data → `document` block.
fn document_block(part: &Value, path: &str) -> Result<Value, TranslateError> {
    let file = part.get("file");
    if file.and_then(|f| f.get("file_id")).is_some() {
        return Err(TranslateError::new(
            format!("{path}.file.file_id"),
            "OpenAI file ids mean nothing to Anthropic; send the file inline as file_data",
        ));
    }
    let data_url = file
        .and_then(|f| f.get("file_data"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::new(format!("{path}.file.file_data"), "required: a data URL")
        })?;
    match parse_data_url(data_url) {
        Some(("application/pdf", data)) => {
            let mut block = json!({
                "type": "document",
                "source": { "type": "base64", "media_type": "application/pdf", "data": data },
            });
            if let Some(title) = file
                .and_then(|f| f.get("filename"))
                .filter(|t| t.is_string())
            {
                block["title"] = title.clone();
            }
            Ok(block)
        }
        _ => Err(TranslateError::new(
            format!("{path}.file.file_data"),
            "Anthropic takes inline files as base64 PDFs: data:application/pdf;base64,<data>",
        )),
    }
}

/// An assistant message: its text (or refusal) and its tool calls.
fn assistant_blocks(
    message: &Map<String, Value>,
    path: &str,
) -> Result<Vec<Value>, TranslateError> {
    if present(message, "function_call").is_some() {
        return Err(TranslateError::new(
            format!("{path}.function_call"),
            "legacy function calls cannot be sent to Anthropic; use tool_calls",
        ));
    }
    let content_path = format!("{path}.content");
    let mut blocks = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(text) => {
            if !text.is_empty() {
                blocks.push(text_block(text, None));
            }
        }
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                let part_path = format!("{content_path}[{j}]");
                let text = match part.get("type").and_then(Value::as_str) {
                    Some("text") => part_text(part, &part_path)?,
                    Some("refusal") => {
                        part.get("refusal").and_then(Value::as_str).ok_or_else(|| {
                            TranslateError::new(
                                format!("{part_path}.refusal"),
                                "required: a string",
                            )
                        })?
                    }
                    _ => {
                        return Err(TranslateError::new(
                            format!("{part_path}.type"),
                            "assistant content parts must be text or refusal",
                        ))
                    }
                };
                if !text.is_empty() {
                    blocks.push(text_block(text, Some(part)));
                }
            }
        }
        _ => {
            return Err(TranslateError::new(
                content_path,
                "must be a string, an array of content parts, or null",
            ))
        }
    }
    if let Some(calls) = present(message, "tool_calls") {
        let calls = calls
            .as_array()
            .ok_or_else(|| TranslateError::new(format!("{path}.tool_calls"), "must be an array"))?;
        for (j, call) in calls.iter().enumerate() {
            blocks.push(tool_use_block(call, &format!("{path}.tool_calls[{j}]"))?);
        }
    }
    Ok(blocks)
}

/// The `input` object of a tool call, parsed from its JSON string of arguments. An empty
/// string means no arguments.
pub(super) fn parse_arguments(arguments: &Value, path: &str) -> Result<Value, TranslateError> {
    let text = match arguments {
        Value::Null => return Ok(json!({})),
        Value::String(text) => text,
        _ => return Err(TranslateError::new(path, "must be a JSON string")),
    };
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(input @ Value::Object(_)) => Ok(input),
        Ok(_) => Err(TranslateError::new(path, "must encode a JSON object")),
        Err(error) => Err(TranslateError::new(
            path,
            format!("not valid JSON: {error}"),
        )),
    }
}

/// An OpenAI tool call → a `tool_use` block.
pub(super) fn tool_use_block(call: &Value, path: &str) -> Result<Value, TranslateError> {
    if let Some(kind) = call.get("type").and_then(Value::as_str) {
        if kind != "function" {
            return Err(TranslateError::new(
                format!("{path}.type"),
                format!("only function tool calls can be sent to Anthropic, not {kind:?}"),
            ));
        }
    }
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.id"), "required: a string"))?;
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::new(format!("{path}.function.name"), "required: a string")
        })?;
    let input = parse_arguments(
        function
            .and_then(|f| f.get("arguments"))
            .unwrap_or(&Value::Null),
        &format!("{path}.function.arguments"),
    )?;
    Ok(json!({ "type": "tool_use", "id": id, "name": name, "input": input }))
}

/// A `tool` message → a `tool_result` block.
fn tool_result_block(message: &Map<String, Value>, path: &str) -> Result<Value, TranslateError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.tool_call_id"), "required: a string"))?;
    let mut block = json!({ "type": "tool_result", "tool_use_id": id });
    match message.get("content").unwrap_or(&Value::Null) {
        Value::String(text) if text.is_empty() => {}
        Value::String(text) => block["content"] = json!(text),
        content => {
            let blocks = user_blocks(content, &format!("{path}.content"))?;
            if let Some(j) = blocks
                .iter()
                .position(|b| b["type"] != "text" && b["type"] != "image")
            {
                return Err(TranslateError::new(
                    format!("{path}.content[{j}].type"),
                    "a tool result may hold text and images only",
                ));
            }
            if !blocks.is_empty() {
                block["content"] = Value::Array(blocks);
            }
        }
    }
    Ok(block)
}

/// OpenAI function tools → Anthropic client tools.
fn tools(request: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let Some(tools) = present(request, "tools") else {
        return Ok(None);
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| TranslateError::new("tools", "must be an array"))?;
    if tools.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(TranslateError::new(
                format!("{path}.type"),
                "only function tools can be sent to Anthropic",
            ));
        }
        let function = tool.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TranslateError::new(format!("{path}.function.name"), "required: a string")
            })?;
        let mut converted = json!({ "name": name });
        if let Some(description) = function
            .and_then(|f| f.get("description"))
            .filter(|d| d.is_string())
        {
            converted["description"] = description.clone();
        }
        converted["input_schema"] = match function.and_then(|f| f.get("parameters")) {
            None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{path}.function.parameters"),
                    "must be a JSON schema object",
                ))
            }
        };
        if let Some(strict) = function
            .and_then(|f| f.get("strict"))
            .filter(|s| s.is_boolean())
        {
            converted["strict"] = strict.clone();
        }
        if let Some(cache) = tool.get("cache_control") {
            converted["cache_control"] = cache.clone();
        }
        out.push(converted);
    }
    Ok(Some(Value::Array(out)))
}

/// `tool_choice` and `parallel_tool_calls` → Anthropic `tool_choice` (only sent with tools).
fn tool_choice(request: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let mut choice = match present(request, "tool_choice") {
        None => None,
        Some(Value::String(mode)) => Some(match mode.as_str() {
            "auto" => json!({ "type": "auto" }),
            "none" => json!({ "type": "none" }),
            "required" => json!({ "type": "any" }),
            other => {
                return Err(TranslateError::new(
                    "tool_choice",
                    format!("unknown tool_choice {other:?}"),
                ))
            }
        }),
        Some(choice @ Value::Object(_)) => {
            if choice.get("type").and_then(Value::as_str) != Some("function") {
                return Err(TranslateError::new(
                    "tool_choice.type",
                    "only a function can be forced on Anthropic",
                ));
            }
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::new("tool_choice.function.name", "required: a string")
                })?;
            Some(json!({ "type": "tool", "name": name }))
        }
        Some(_) => {
            return Err(TranslateError::new(
                "tool_choice",
                "must be a string or an object",
            ))
        }
    };
    let parallel = match present(request, "parallel_tool_calls") {
        None => true,
        Some(value) => value
            .as_bool()
            .ok_or_else(|| TranslateError::new("parallel_tool_calls", "must be a boolean"))?,
    };
    if !parallel {
        let choice = choice.get_or_insert_with(|| json!({ "type": "auto" }));
        // `none` takes no options: no tool is called at all.
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    Ok(choice)
}

/// `response_format` → the `output_config.format` of Anthropic's structured outputs.
fn output_format(request: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let Some(format) = present(request, "response_format") else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    TranslateError::new(
                        "response_format.json_schema.schema",
                        "required: a JSON schema object",
                    )
                })?;
            Ok(Some(json!({ "type": "json_schema", "schema": schema })))
        }
        Some("json_object") => Err(TranslateError::new(
            "response_format.type",
            "Anthropic has no JSON mode without a schema; use json_schema",
        )),
        _ => Err(TranslateError::new(
            "response_format.type",
            "must be text, json_schema or json_object",
        )),
    }
}

/// A `chat.completion` → an Anthropic Messages reply, for an Anthropic client at the front
/// door.
///
/// Mapped: the message's text (and `refusal`) → `text` blocks, `tool_calls` → `tool_use`
/// blocks (arguments parsed; invalid JSON is a [`TranslateError`] naming the field),
/// `finish_reason` stop/length/tool_calls/content_filter → `stop_reason`
/// end_turn/max_tokens/tool_use/refusal (`stop_sequence` is `null`: OpenAI does not say which
/// sequence matched), `usage` (`input_tokens` without the cached part, which is
/// `cache_read_input_tokens`). Only the first choice is used. The `id` is kept.
pub fn response_from_chat(
    chat_response: &Value,
    client_model: &str,
) -> Result<Value, TranslateError> {
    let choice = chat_response
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| TranslateError::new("choices", "the reply has no choice"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::String(text) if !text.is_empty() => {
            content.push(json!({"type": "text", "text": text}))
        }
        Value::Array(parts) => {
            let text: String = parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect();
            if !text.is_empty() {
                content.push(json!({ "type": "text", "text": text }));
            }
        }
        _ => {}
    }
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty());
    if let Some(refusal) = refusal {
        content.push(json!({ "type": "text", "text": refusal }));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (j, call) in calls.iter().enumerate() {
            content.push(tool_use_block(
                call,
                &format!("choices[0].message.tool_calls[{j}]"),
            )?);
        }
    }
    let stop = match choice.get("finish_reason").and_then(Value::as_str) {
        Some(reason) => stop_reason(reason),
        None if refusal.is_some() => "refusal",
        None => "end_turn",
    };
    Ok(json!({
        "id": chat_response.get("id").and_then(Value::as_str).unwrap_or("msg_gantry"),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": messages_usage(chat_response.get("usage").unwrap_or(&Value::Null)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(chat: Value) -> Value {
        request_from_chat(&chat, "claude-sonnet-4-5").expect("translates")
    }

    fn refused(chat: Value) -> TranslateError {
        request_from_chat(&chat, "claude-sonnet-4-5").expect_err("refused")
    }

    #[test]
    fn a_simple_chat_becomes_a_messages_request() {
        let out = translate(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello"}
            ],
            "max_tokens": 256,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "\n\nHuman:",
            "user": "user-123",
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": 7,
            "logprobs": true,
            "frequency_penalty": 0.5,
            "some_future_field": {"x": 1}
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 256,
                "system": "You are terse.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
                "temperature": 0.2,
                "top_p": 0.9,
                "stop_sequences": ["\n\nHuman:"],
                "metadata": {"user_id": "user-123"},
                "stream": true,
            })
        );
    }

    #[test]
    fn max_tokens_comes_from_either_field_or_the_default() {
        let base = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(translate(base.clone())["max_tokens"], DEFAULT_MAX_TOKENS);
        let mut both = base.clone();
        both["max_completion_tokens"] = json!(100);
        both["max_tokens"] = json!(50);
        assert_eq!(translate(both)["max_tokens"], 100);
        let mut null = base.clone();
        null["max_completion_tokens"] = Value::Null;
        null["max_tokens"] = json!(50);
        assert_eq!(translate(null)["max_tokens"], 50);
        let mut zero = base;
        zero["max_tokens"] = json!(0);
        assert_eq!(refused(zero).param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn system_prompts_in_array_form_and_developer_messages() {
        let out = translate(json!({
            "messages": [
                {"role": "developer", "content": [
                    {"type": "text", "text": "Rule one."},
                    {"type": "text", "text": "Big shared context", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "system", "content": "Rule two."},
                {"role": "user", "content": "Go"}
            ]
        }));
        assert_eq!(
            out["system"],
            json!([
                {"type": "text", "text": "Rule one."},
                {"type": "text", "text": "Big shared context", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Rule two."}
            ])
        );
        assert_eq!(out["messages"].as_array().map(Vec::len), Some(1));
        let err = refused(json!({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "user", "content": "hi"}
        ]}));
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0].type"));
    }

    #[test]
    fn multi_turn_with_parallel_tool_calls_and_results() {
        let out = translate(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Use tools."},
                {"role": "user", "content": "Weather in Paris and Tokyo?"},
                {"role": "assistant", "content": "Let me check both.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\", \"unit\": \"c\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "22C, rain"}]},
                {"role": "user", "content": "Thanks. Which is warmer?"},
                {"role": "assistant", "content": "Tokyo."},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_3", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]}
            ],
            "tools": [
                {"type": "function", "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]},
                    "strict": true
                }},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": "required",
            "parallel_tool_calls": false
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Tokyo?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check both."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Tokyo", "unit": "c"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "22C, rain"}]},
                    {"type": "text", "text": "Thanks. Which is warmer?"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Tokyo."},
                    {"type": "tool_use", "id": "call_3", "name": "get_time", "input": {}}
                ]}
            ])
        );
        assert_eq!(
            out["tools"],
            json!([
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]},
                    "strict": true
                },
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn tool_results_come_first_in_a_merged_user_turn() {
        let out = translate(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "also this"},
            {"role": "tool", "tool_call_id": "t1", "content": "done"}
        ]}));
        assert_eq!(out["messages"][1]["content"][0]["type"], "tool_result");
        assert_eq!(out["messages"][1]["content"][1]["type"], "text");
    }

    #[test]
    fn tool_choice_forms() {
        let with = |choice: Value| {
            translate(json!({
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": choice
            }))["tool_choice"]
                .clone()
        };
        assert_eq!(with(json!("auto")), json!({"type": "auto"}));
        assert_eq!(with(json!("none")), json!({"type": "none"}));
        assert_eq!(with(json!("required")), json!({"type": "any"}));
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "f"}})),
            json!({"type": "tool", "name": "f"})
        );
        let parallel_off = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "parallel_tool_calls": false
        }));
        assert_eq!(
            parallel_off["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        // Without tools there is nothing to choose from.
        let no_tools = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "tool_choice": "auto"
        }));
        assert!(no_tools.get("tool_choice").is_none() && no_tools.get("tools").is_none());
        assert_eq!(
            refused(json!({
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "sometimes"
            }))
            .param
            .as_deref(),
            Some("tool_choice")
        );
    }

    #[test]
    fn images_become_base64_or_url_sources_and_pdfs_documents() {
        let out = translate(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/cat.jpg"}},
            {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
        ]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/cat.jpg"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "report.pdf"}
            ])
        );
        let bad = refused(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/svg+xml,%3Csvg%3E"}}
        ]}]}));
        assert_eq!(
            bad.param.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );
        let by_id = refused(json!({"messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-abc"}}
        ]}]}));
        assert_eq!(
            by_id.param.as_deref(),
            Some("messages[0].content[0].file.file_id")
        );
    }

    #[test]
    fn invalid_tool_arguments_name_the_field() {
        let err = refused(json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{\"city\": "}}
            ]}
        ]}));
        assert_eq!(
            err.param.as_deref(),
            Some("messages[1].tool_calls[1].function.arguments")
        );
        assert!(err.message.contains("not valid JSON"), "{err}");
        let not_object = refused(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}
        ]}));
        assert!(not_object.message.contains("object"), "{not_object}");
    }

    #[test]
    fn what_cannot_be_expressed_is_refused() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases = [
            (json!({"messages": user, "n": 2}), "n"),
            (json!({"messages": user, "temperature": 1.5}), "temperature"),
            (
                json!({"messages": user, "functions": [{"name": "f"}]}),
                "functions",
            ),
            (
                json!({"messages": user, "modalities": ["text", "audio"]}),
                "modalities",
            ),
            (
                json!({"messages": user, "audio": {"voice": "alloy"}}),
                "audio",
            ),
            (
                json!({"messages": user, "web_search_options": {}}),
                "web_search_options",
            ),
            (
                json!({"messages": user, "response_format": {"type": "json_object"}}),
                "response_format.type",
            ),
            (
                json!({"messages": user, "tools": [{"type": "custom", "custom": {"name": "g"}}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "function", "name": "f", "content": "1"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "1"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "1"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "system", "content": "only a system prompt"}]}),
                "messages",
            ),
            (json!({"model": "x"}), "messages"),
        ];
        for (chat, param) in cases {
            let err = refused(chat.clone());
            assert_eq!(err.param.as_deref(), Some(param), "{chat}: {err}");
        }
        assert!(request_from_chat(&json!([1]), "m").is_err());
        // n = 1 is fine.
        translate(json!({"messages": user, "n": 1}));
    }

    #[test]
    fn the_end_user_comes_from_user_or_safety_identifier() {
        let user = json!([{"role": "user", "content": "x"}]);
        let out = translate(json!({"messages": user, "safety_identifier": "hash-42"}));
        assert_eq!(out["metadata"], json!({"user_id": "hash-42"}));
        let both = translate(json!({"messages": user, "user": "u", "safety_identifier": "s"}));
        assert_eq!(both["metadata"], json!({"user_id": "u"}));
        assert_eq!(
            refused(json!({"messages": user, "user": 7}))
                .param
                .as_deref(),
            Some("user")
        );
    }

    #[test]
    fn json_schema_output_maps_to_output_config() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "Extract"}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "person", "strict": true,
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": false}
            }}
        }));
        assert_eq!(
            out["output_config"],
            json!({"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": false}}})
        );
        let text = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "text"}
        }));
        assert!(text.get("output_config").is_none());
    }

    fn chat_reply() -> Value {
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion",
            "created": 1741570283,
            "model": "gpt-4o-2024-08-06",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking the weather.",
                    "tool_calls": [
                        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}
                    ],
                    "refusal": null
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {
                "prompt_tokens": 1117,
                "completion_tokens": 46,
                "total_tokens": 1163,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}
            }
        })
    }

    #[test]
    fn a_chat_reply_becomes_a_messages_reply() {
        let out = response_from_chat(&chat_reply(), "claude-alias").expect("translates");
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                "type": "message",
                "role": "assistant",
                "model": "claude-alias",
                "content": [
                    {"type": "text", "text": "Checking the weather."},
                    {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Tokyo"}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 93, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024, "output_tokens": 46}
            })
        );
    }

    #[test]
    fn reply_stop_reasons_refusals_and_bad_replies() {
        let reply = |message: Value, finish: Value| {
            json!({"id": "c", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
        };
        let length = response_from_chat(
            &reply(
                json!({"role": "assistant", "content": "cut"}),
                json!("length"),
            ),
            "m",
        )
        .expect("translates");
        assert_eq!(length["stop_reason"], "max_tokens");
        assert_eq!(length["usage"]["input_tokens"], 5);
        assert_eq!(length["usage"]["output_tokens"], 7);
        let filtered = response_from_chat(
            &reply(
                json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
                json!("content_filter"),
            ),
            "m",
        )
        .expect("translates");
        assert_eq!(filtered["stop_reason"], "refusal");
        assert_eq!(
            filtered["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
        let empty = response_from_chat(
            &reply(json!({"role": "assistant", "content": ""}), json!("stop")),
            "m",
        )
        .expect("translates");
        assert_eq!(empty["content"], json!([]));
        assert_eq!(empty["stop_reason"], "end_turn");

        let bad_args = reply(
            json!({"role": "assistant", "tool_calls": [{"id": "x", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}),
            json!("tool_calls"),
        );
        assert_eq!(
            response_from_chat(&bad_args, "m")
                .expect_err("bad")
                .param
                .as_deref(),
            Some("choices[0].message.tool_calls[0].function.arguments")
        );
        assert_eq!(
            response_from_chat(&json!({"choices": []}), "m")
                .expect_err("no choice")
                .param
                .as_deref(),
            Some("choices")
        );
    }

    #[test]
    fn data_urls_parse() {
        assert_eq!(
            parse_data_url("data:image/jpeg;base64,/9j/4AAQ"),
            Some(("image/jpeg", "/9j/4AAQ"))
        );
        assert_eq!(
            parse_data_url("data:image/png;name=x.png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        assert_eq!(parse_data_url("https://x"), None);
    }
}
