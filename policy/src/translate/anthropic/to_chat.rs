//! Anthropic Messages shapes → OpenAI chat shapes: the request of an Anthropic client at the
//! front door, and Anthropic's reply as a provider.

use serde_json::{json, Map, Value};

use super::{chat_usage, finish_reason, present, unix_now};
use crate::translate::TranslateError;

/// An Anthropic Messages request (from an Anthropic SDK client) → the canonical OpenAI chat
/// completions request. `model` is kept as the client sent it (the alias resolves later).
///
/// Mapped: `system` (string or text blocks) → a leading `system` message; user `text`,
/// `image` (base64 → data URL, URL source → URL) and `document` (base64 PDF → `file` part with
/// `file_data`; plain-text source → text part) blocks → content parts; `tool_result` blocks →
/// `tool` messages (placed before the rest of their user turn, as OpenAI expects them right
/// after the assistant's calls); assistant `text` → `content`, `tool_use` → `tool_calls`
/// (input serialized to a JSON string); `tools` → function tools (`input_schema` →
/// `parameters`, `strict` kept); `tool_choice` auto/any/tool/none → auto/required/{function}/
/// none, `disable_parallel_tool_use` → `parallel_tool_calls: false`; `stop_sequences` → `stop`;
/// `max_tokens` → `max_completion_tokens`; `temperature`, `top_p`; `metadata.user_id` →
/// `user`; `stream` → `stream` plus `stream_options.include_usage` (the usage chunk that
/// [`StreamFromChat`](super::StreamFromChat) needs for `message_delta`);
/// `output_config.format` (or the beta `output_format`) `json_schema` → `response_format`.
///
/// Dropped: `thinking` and `redacted_thinking` blocks in the history, the `thinking` option,
/// `cache_control`, `is_error` on tool results, citations, `top_k` (OpenAI has none),
/// `service_tier`, `context_management`, and unknown fields.
///
/// Refused: server tools (`web_search_*`, `bash_*`, …) and their result blocks, `mcp_servers`,
/// `container`, images or documents inside a tool result (an OpenAI tool message is text),
/// document URL or file sources, unknown block types, and malformed fields.
pub fn request_to_chat(messages_request: &Value) -> Result<Value, TranslateError> {
    let request = messages_request.as_object().ok_or_else(|| TranslateError {
        param: None,
        message: "the request body must be a JSON object".to_owned(),
    })?;
    for field in ["mcp_servers", "container"] {
        if present(request, field).is_some() {
            return Err(TranslateError::new(
                field,
                "Anthropic-hosted tools cannot be served by another provider",
            ));
        }
    }
    let model = present(request, "model")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new("model", "required: a string"))?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));

    let mut messages = Vec::new();
    if let Some(system) = present(request, "system") {
        if let Some(message) = system_message(system)? {
            messages.push(message);
        }
    }
    let turns = present(request, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("messages", "required: an array of messages"))?;
    for (i, turn) in turns.iter().enumerate() {
        convert_turn(turn, &format!("messages[{i}]"), &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(max) = present(request, "max_tokens") {
        let max = max
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| TranslateError::new("max_tokens", "must be a positive integer"))?;
        out.insert("max_completion_tokens".into(), json!(max));
    }
    for field in ["temperature", "top_p"] {
        if let Some(value) = present(request, field) {
            if !value.is_number() {
                return Err(TranslateError::new(field, "must be a number"));
            }
            out.insert(field.into(), value.clone());
        }
    }
    if let Some(stops) = present(request, "stop_sequences") {
        let stops = stops
            .as_array()
            .filter(|stops| stops.iter().all(Value::is_string))
            .ok_or_else(|| TranslateError::new("stop_sequences", "must be an array of strings"))?;
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    if let Some(user) = present(request, "metadata")
        .and_then(|metadata| metadata.get("user_id"))
        .filter(|user| !user.is_null())
    {
        let user = user
            .as_str()
            .ok_or_else(|| TranslateError::new("metadata.user_id", "must be a string"))?;
        out.insert("user".into(), json!(user));
    }
    if let Some(stream) = present(request, "stream") {
        let stream = stream
            .as_bool()
            .ok_or_else(|| TranslateError::new("stream", "must be a boolean"))?;
        if stream {
            out.insert("stream".into(), Value::Bool(true));
            out.insert("stream_options".into(), json!({ "include_usage": true }));
        }
    }
    let has_tools = if let Some(tools) = present(request, "tools") {
        let tools = function_tools(tools)?;
        let has = !tools.is_empty();
        if has {
            out.insert("tools".into(), Value::Array(tools));
        }
        has
    } else {
        false
    };
    if has_tools {
        if let Some(choice) = present(request, "tool_choice") {
            let (choice, parallel) = tool_choice(choice)?;
            if let Some(choice) = choice {
                out.insert("tool_choice".into(), choice);
            }
            if !parallel {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    let format = present(request, "output_config")
        .and_then(|config| config.get("format"))
        .map(|format| ("output_config.format", format))
        .or_else(|| present(request, "output_format").map(|format| ("output_format", format)));
    if let Some((path, format)) = format.filter(|(_, format)| !format.is_null()) {
        out.insert("response_format".into(), response_format(format, path)?);
    }
    Ok(Value::Object(out))
}

fn system_message(system: &Value) -> Result<Option<Value>, TranslateError> {
    match system {
        Value::String(text) if text.is_empty() => Ok(None),
        Value::String(text) => Ok(Some(json!({ "role": "system", "content": text }))),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(TranslateError::new(
                        format!("system[{i}].type"),
                        "system blocks must be text",
                    ));
                }
                texts.push(block_text(block, &format!("system[{i}]"))?);
            }
            Ok(match texts.as_slice() {
                [] => None,
                [only] => Some(json!({ "role": "system", "content": only })),
                _ => Some(json!({
                    "role": "system",
                    "content": texts
                        .iter()
                        .map(|text| json!({ "type": "text", "text": text }))
                        .collect::<Vec<_>>(),
                })),
            })
        }
        _ => Err(TranslateError::new(
            "system",
            "must be a string or an array of text blocks",
        )),
    }
}

fn block_text<'a>(block: &'a Value, path: &str) -> Result<&'a str, TranslateError> {
    block
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.text"), "required: a string"))
}

/// One Anthropic turn → one or more OpenAI messages.
fn convert_turn(turn: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let role = turn
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.role"), "required: a string"))?;
    let content = turn.get("content").unwrap_or(&Value::Null);
    let content_path = format!("{path}.content");
    match role {
        "user" => user_turn(content, &content_path, out),
        "assistant" => assistant_turn(content, &content_path, out),
        other => Err(TranslateError::new(
            format!("{path}.role"),
            format!("must be user or assistant, not {other:?}"),
        )),
    }
}

fn user_turn(content: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let blocks = match content {
        Value::String(text) => {
            out.push(json!({ "role": "user", "content": text }));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(TranslateError::new(
                path,
                "must be a string or an array of content blocks",
            ))
        }
    };
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let block_path = format!("{path}[{j}]");
        match block_type(block, &block_path)? {
            "text" => {
                parts.push(json!({ "type": "text", "text": block_text(block, &block_path)? }))
            }
            "image" => parts.push(image_part(block, &block_path)?),
            "document" => parts.push(document_part(block, &block_path)?),
            "tool_result" => out.push(tool_message(block, &block_path)?),
            other => return Err(unsupported_block(other, &block_path)),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [only] if only["type"] == "text" => only["text"].clone(),
        _ => Value::Array(parts),
    };
    out.push(json!({ "role": "user", "content": content }));
    Ok(())
}

fn block_type<'a>(block: &'a Value, path: &str) -> Result<&'a str, TranslateError> {
    block
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.type"), "required: a string"))
}

fn unsupported_block(kind: &str, path: &str) -> TranslateError {
    TranslateError::new(
        format!("{path}.type"),
        format!("{kind} blocks cannot be sent to this provider"),
    )
}

/// `image` block → `image_url` part (a data URL for base64 sources).
fn image_part(block: &Value, path: &str) -> Result<Value, TranslateError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media_type, data) {
                (Some(media_type), Some(data)) => format!("data:{media_type};base64,{data}"),
                _ => {
                    return Err(TranslateError::new(
                        format!("{path}.source"),
                        "a base64 source needs media_type and data",
                    ))
                }
            }
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{path}.source.url"), "required: a string"))?
            .to_owned(),
        _ => {
            return Err(TranslateError::new(
                format!("{path}.source.type"),
                "only base64 and url image sources can be sent to this provider",
            ))
        }
    };
    Ok(json!({ "type": "image_url", "image_url": { "url": url } }))
}

/// `document` block → a `file` part (base64 PDF) or a text part (plain-text source).
fn document_part(block: &Value, path: &str) -> Result<Value, TranslateError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            let (Some(media_type), Some(data)) = (media_type, data) else {
                return Err(TranslateError::new(
                    format!("{path}.source"),
                    "a base64 source needs media_type and data",
                ));
            };
            let mut file = json!({ "file_data": format!("data:{media_type};base64,{data}") });
            if let Some(title) = block.get("title").and_then(Value::as_str) {
                file["filename"] = json!(title);
            }
            Ok(json!({ "type": "file", "file": file }))
        }
        Some("text") => {
            let data = source.get("data").and_then(Value::as_str).ok_or_else(|| {
                TranslateError::new(format!("{path}.source.data"), "required: a string")
            })?;
            Ok(json!({ "type": "text", "text": data }))
        }
        _ => Err(TranslateError::new(
            format!("{path}.source.type"),
            "only base64 and text document sources can be sent to this provider",
        )),
    }
}

/// `tool_result` block → `tool` message. Its text blocks are joined; OpenAI tool messages
/// carry no images and no error flag.
fn tool_message(block: &Value, path: &str) -> Result<Value, TranslateError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.tool_use_id"), "required: a string"))?;
    let content = match block.get("content").unwrap_or(&Value::Null) {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            let mut text = String::new();
            for (k, part) in parts.iter().enumerate() {
                let part_path = format!("{path}.content[{k}]");
                match block_type(part, &part_path)? {
                    "text" => text.push_str(block_text(part, &part_path)?),
                    other => {
                        return Err(TranslateError::new(
                            format!("{part_path}.type"),
                            format!(
                                "a tool result for this provider may hold text only, not {other}"
                            ),
                        ))
                    }
                }
            }
            text
        }
        _ => {
            return Err(TranslateError::new(
                format!("{path}.content"),
                "must be a string or an array of blocks",
            ))
        }
    };
    Ok(json!({ "role": "tool", "tool_call_id": id, "content": content }))
}

fn assistant_turn(content: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let blocks = match content {
        Value::String(text) => {
            out.push(json!({ "role": "assistant", "content": text }));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(TranslateError::new(
                path,
                "must be a string or an array of content blocks",
            ))
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let block_path = format!("{path}[{j}]");
        match block_type(block, &block_path)? {
            "text" => text.push_str(block_text(block, &block_path)?),
            "tool_use" => calls.push(tool_call(block, &block_path)?),
            // The provider cannot verify another model's reasoning: dropped.
            "thinking" | "redacted_thinking" => {}
            other => return Err(unsupported_block(other, &block_path)),
        }
    }
    if text.is_empty() && calls.is_empty() {
        return Ok(());
    }
    let mut message = json!({ "role": "assistant", "content": text });
    if !calls.is_empty() {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = Value::Array(calls);
    }
    out.push(message);
    Ok(())
}

/// A `tool_use` block → an OpenAI tool call.
fn tool_call(block: &Value, path: &str) -> Result<Value, TranslateError> {
    let id = block
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.id"), "required: a string"))?;
    let name = block
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{path}.name"), "required: a string"))?;
    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
    Ok(json!({
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": input.to_string() },
    }))
}

/// Anthropic client tools → OpenAI function tools.
fn function_tools(tools: &Value) -> Result<Vec<Value>, TranslateError> {
    let tools = tools
        .as_array()
        .ok_or_else(|| TranslateError::new("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        if let Some(kind) = tool.get("type").and_then(Value::as_str) {
            if kind != "custom" {
                return Err(TranslateError::new(
                    format!("{path}.type"),
                    format!(
                        "the Anthropic server tool {kind:?} cannot be served by another provider"
                    ),
                ));
            }
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{path}.name"), "required: a string"))?;
        let mut function = json!({ "name": name });
        if let Some(description) = tool.get("description").filter(|d| d.is_string()) {
            function["description"] = description.clone();
        }
        function["parameters"] = match tool.get("input_schema") {
            Some(schema @ Value::Object(_)) => schema.clone(),
            _ => {
                return Err(TranslateError::new(
                    format!("{path}.input_schema"),
                    "required: a JSON schema object",
                ))
            }
        };
        if let Some(strict) = tool.get("strict").filter(|s| s.is_boolean()) {
            function["strict"] = strict.clone();
        }
        out.push(json!({ "type": "function", "function": function }));
    }
    Ok(out)
}

/// Anthropic `tool_choice` → (OpenAI `tool_choice`, parallel tool calls allowed).
fn tool_choice(choice: &Value) -> Result<(Option<Value>, bool), TranslateError> {
    let parallel = !choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::new("tool_choice.name", "required: a string"))?;
            json!({ "type": "function", "function": { "name": name } })
        }
        _ => {
            return Err(TranslateError::new(
                "tool_choice.type",
                "must be auto, any, tool or none",
            ))
        }
    };
    Ok((Some(mapped), parallel))
}

fn response_format(format: &Value, path: &str) -> Result<Value, TranslateError> {
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(TranslateError::new(
            format!("{path}.type"),
            "only json_schema output formats are supported",
        ));
    }
    let schema = format
        .get("schema")
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            TranslateError::new(format!("{path}.schema"), "required: a JSON schema object")
        })?;
    Ok(json!({
        "type": "json_schema",
        "json_schema": { "name": "output", "schema": schema, "strict": true },
    }))
}

/// An Anthropic Messages reply → a `chat.completion` whose `model` is `client_model`.
///
/// Mapped: `text` blocks joined → `message.content`; `tool_use` blocks → `tool_calls` (the
/// block id, the input as a JSON string); `stop_reason` → `finish_reason`
/// (end_turn/stop_sequence/pause_turn → stop, max_tokens → length, tool_use → tool_calls,
/// refusal → content_filter); `usage` → `prompt_tokens` (input + cache reads + cache writes),
/// `completion_tokens`, `prompt_tokens_details.cached_tokens` (cache reads). The `id` is kept.
///
/// Dropped: `thinking` and `redacted_thinking` blocks (OpenAI chat has no field for them; the
/// response guards scan `content`, so reasoning is not exposed unguarded), server-tool blocks
/// (`server_tool_use`, `web_search_tool_result`, …: results the model already used), citations.
pub fn response_to_chat(
    messages_response: &Value,
    client_model: &str,
) -> Result<Value, TranslateError> {
    if messages_response.get("type").and_then(Value::as_str) == Some("error") {
        let message = messages_response
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("the provider answered with an error");
        return Err(TranslateError {
            param: None,
            message: message.to_owned(),
        });
    }
    let blocks = messages_response
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("content", "the reply has no content array"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let path = format!("content[{j}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(tool_call(block, &path)?),
            other => tracing::debug!(block = ?other, "anthropic reply: block dropped"),
        }
    }
    let mut message = json!({ "role": "assistant", "content": text });
    if !calls.is_empty() {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = Value::Array(calls);
    }
    let finish = messages_response
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(finish_reason);
    Ok(json!({
        "id": messages_response.get("id").and_then(Value::as_str).unwrap_or("chatcmpl-gantry"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": chat_usage(messages_response.get("usage").unwrap_or(&Value::Null)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Value {
        request_to_chat(&request).expect("translates")
    }

    #[test]
    fn a_simple_messages_request_becomes_a_chat_request() {
        let out = translate(json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You are a pirate.",
            "messages": [{"role": "user", "content": "Hello, Claude"}],
            "temperature": 0.5,
            "top_p": 0.8,
            "top_k": 40,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
            "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "service_tier": "auto"
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-sonnet-4-5",
                "messages": [
                    {"role": "system", "content": "You are a pirate."},
                    {"role": "user", "content": "Hello, Claude"}
                ],
                "max_completion_tokens": 1024,
                "temperature": 0.5,
                "top_p": 0.8,
                "stop": ["END"],
                "user": "13803d75-b4b5-4c3e-b2a2-6f21399b021b",
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn system_blocks_tools_and_a_tool_loop() {
        let out = translate(json!({
            "model": "claude-opus-4-1",
            "max_tokens": 512,
            "system": [
                {"type": "text", "text": "You are a weather bot."},
                {"type": "text", "text": "Long cached context", "cache_control": {"type": "ephemeral"}}
            ],
            "tools": [
                {"name": "get_weather", "description": "Get the current weather in a given location",
                 "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
                {"type": "custom", "name": "get_time", "input_schema": {"type": "object", "properties": {}}, "strict": true}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in SF and NYC?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "EqQB..."},
                    {"type": "text", "text": "I'll check both."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "San Francisco, CA"}},
                    {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"location": "New York, NY"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
                    {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "22 "}, {"type": "text", "text": "degrees"}], "is_error": false},
                    {"type": "text", "text": "Which is warmer?"}
                ]}
            ]
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": [
                    {"type": "text", "text": "You are a weather bot."},
                    {"type": "text", "text": "Long cached context"}
                ]},
                {"role": "user", "content": "Weather in SF and NYC?"},
                {"role": "assistant", "content": "I'll check both.", "tool_calls": [
                    {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}},
                    {"id": "toolu_01B", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"New York, NY\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
                {"role": "tool", "tool_call_id": "toolu_01B", "content": "22 degrees"},
                {"role": "user", "content": "Which is warmer?"}
            ])
        );
        assert_eq!(
            out["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a given location",
                  "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}, "strict": true}}
            ])
        );
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["parallel_tool_calls"], false);
    }

    #[test]
    fn tool_choice_forms() {
        let with = |choice: Value| {
            translate(json!({
                "model": "m", "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": choice
            }))
        };
        assert_eq!(with(json!({"type": "auto"}))["tool_choice"], "auto");
        assert_eq!(with(json!({"type": "none"}))["tool_choice"], "none");
        assert_eq!(
            with(json!({"type": "tool", "name": "f"}))["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert!(with(json!({"type": "auto"}))
            .get("parallel_tool_calls")
            .is_none());
        let err = request_to_chat(&json!({
            "model": "m", "messages": [],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "sometimes"}
        }))
        .expect_err("refused");
        assert_eq!(err.param.as_deref(), Some("tool_choice.type"));
    }

    #[test]
    fn images_and_documents_become_parts() {
        let out = translate(json!({
            "model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}},
                {"type": "document", "title": "q3.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."}},
                {"type": "text", "text": "Describe these.", "cache_control": {"type": "ephemeral"}}
            ]}]
        }));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "q3.pdf"}},
                {"type": "text", "text": "Plain notes."},
                {"type": "text", "text": "Describe these."}
            ])
        );
    }

    #[test]
    fn structured_output_maps_to_response_format() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false});
        for field in ["output_config", "output_format"] {
            let format = json!({"type": "json_schema", "schema": schema});
            let value = if field == "output_config" {
                json!({"format": format})
            } else {
                format
            };
            let out = translate(json!({
                "model": "m", "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}],
                field: value
            }));
            assert_eq!(
                out["response_format"],
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
                "{field}"
            );
        }
    }

    #[test]
    fn what_cannot_be_served_elsewhere_is_refused() {
        let base = |extra: Value| {
            let mut request = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
            if let (Some(request), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
                request.extend(extra.clone());
            }
            request
        };
        let cases = [
            (
                base(
                    json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]}),
                ),
                "tools[0].type",
            ),
            (
                base(json!({"tools": [{"name": "f"}]})),
                "tools[0].input_schema",
            ),
            (
                base(json!({"mcp_servers": [{"type": "url", "url": "https://mcp.example"}]})),
                "mcp_servers",
            ),
            (
                base(
                    json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]}]}]}),
                ),
                "messages[0].content[0].content[0].type",
            ),
            (
                base(
                    json!({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
                ),
                "messages[0].content[0].type",
            ),
            (
                base(
                    json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]}),
                ),
                "messages[0].content[0].source.type",
            ),
            (
                base(json!({"messages": [{"role": "system", "content": "x"}]})),
                "messages[0].role",
            ),
            (base(json!({"max_tokens": 0})), "max_tokens"),
            (
                base(json!({"output_config": {"format": {"type": "regex"}}})),
                "output_config.format.type",
            ),
            (json!({"messages": []}), "model"),
            (json!({"model": "m"}), "messages"),
        ];
        for (request, param) in cases {
            let err = request_to_chat(&request).expect_err("refused");
            assert_eq!(err.param.as_deref(), Some(param), "{request}: {err}");
        }
    }

    fn messages_reply() -> Value {
        json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "The user wants weather for two cities.", "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL...."},
                {"type": "text", "text": "I'll look up "},
                {"type": "text", "text": "both cities.", "citations": null},
                {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up7", "name": "get_weather", "input": {"location": "Tokyo", "unit": "celsius"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 472,
                "cache_creation_input_tokens": 1500,
                "cache_read_input_tokens": 30000,
                "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 89,
                "service_tier": "standard"
            }
        })
    }

    #[test]
    fn a_messages_reply_becomes_a_chat_completion() {
        let out = response_to_chat(&messages_reply(), "claude").expect("translates");
        assert!(out["created"].as_u64().is_some_and(|c| c > 1_700_000_000));
        let mut out = out;
        out["created"] = json!(0);
        assert_eq!(
            out,
            json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "object": "chat.completion",
                "created": 0,
                "model": "claude",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "I'll look up both cities.",
                        "tool_calls": [
                            {"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                            {"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Tokyo\",\"unit\":\"celsius\"}"}}
                        ]
                    },
                    "logprobs": null,
                    "finish_reason": "tool_calls"
                }],
                "usage": {
                    "prompt_tokens": 31972,
                    "completion_tokens": 89,
                    "total_tokens": 32061,
                    "prompt_tokens_details": {"cached_tokens": 30000}
                }
            })
        );
    }

    #[test]
    fn reply_stop_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            let reply = json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": "Hi"}],
                "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 1}
            });
            let out = response_to_chat(&reply, "c").expect("translates");
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
            assert_eq!(out["choices"][0]["message"]["content"], "Hi");
            assert!(out["choices"][0]["message"].get("tool_calls").is_none());
            assert_eq!(out["usage"]["prompt_tokens"], 10);
        }
        let only_tool = json!({
            "id": "msg_2", "type": "message", "role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
            ], "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}
        });
        let out = response_to_chat(&only_tool, "c").expect("translates");
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        assert!(response_to_chat(
            &json!({"type": "error", "error": {"type": "api_error", "message": "boom"}}),
            "c"
        )
        .is_err());
        assert_eq!(
            response_to_chat(&json!({"id": "x"}), "c")
                .expect_err("no content")
                .param
                .as_deref(),
            Some("content")
        );
    }

    #[test]
    fn round_trip_through_both_directions_keeps_the_conversation() {
        let chat = json!({
            "model": "alias",
            "max_completion_tokens": 300,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "stop": ["X"],
            "user": "u1"
        });
        let messages = super::super::request_from_chat(&chat, "alias").expect("to messages");
        let back = request_to_chat(&messages).expect("back to chat");
        assert_eq!(back["messages"], chat["messages"]);
        assert_eq!(back["tools"], chat["tools"]);
        assert_eq!(back["tool_choice"], chat["tool_choice"]);
        assert_eq!(back["stop"], chat["stop"]);
        assert_eq!(back["user"], chat["user"]);
        assert_eq!(back["max_completion_tokens"], 300);
    }
}
