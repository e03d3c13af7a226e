//! OpenAI chat request → `generateContent` body.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::schema;
use crate::translate::TranslateError;

/// The thought signature sent with function calls that Gemini did not sign (history written
/// by the client or by another provider). Gemini 3 models refuse a function call of the current
/// turn without a signature; this value is the documented way to skip that check
/// (<https://ai.google.dev/gemini-api/docs/thought-signatures>, "FAQs").
const UNSIGNED_THOUGHT: &str = "skip_thought_signature_validator";

/// Translates an OpenAI chat completions request into a `generateContent` body.
///
/// Mapped: `messages` → `contents` (`user` → role `user`, `assistant` → role `model`;
/// consecutive turns of one role merged), `system`/`developer` → `systemInstruction` (all of
/// them, in order, wherever they stand); text parts; `image_url` data URLs and `input_audio`
/// and `file.file_data` → `inlineData`; `image_url` http(s) URLs → `fileData` (`fileUri`, with
/// `mimeType` from the file extension when it names one; Gemini fetches public URLs itself:
/// <https://ai.google.dev/gemini-api/docs/file-input-methods>); `tool_calls` → `functionCall`
/// parts (`args` parsed from the JSON string); `tool` messages → `functionResponse` parts in a
/// user turn, named after the earlier call with that id, `response: {"output": <the tool's
/// text>}` (the key Gemini reads a function's output from); `tools` →
/// `tools[0].functionDeclarations` (schemas cut down to what Gemini's `Schema` accepts: see
/// the `schema` module); `tool_choice` → `toolConfig.functionCallingConfig` (`auto` AUTO,
/// `none` NONE, `required` ANY, a named function ANY + `allowedFunctionNames`, `allowed_tools`
/// filters the declarations);
/// `temperature`, `top_p`, `max_completion_tokens`/`max_tokens`, `stop`, `n`, `seed`,
/// `presence_penalty`, `frequency_penalty`, `response_format` → `generationConfig`.
///
/// Dropped (tuning only, or carried elsewhere): `model` and `stream` (in the [`super::path`]),
/// `stream_options`, `user`, `metadata`, `store`, `service_tier`, `parallel_tool_calls`,
/// `logprobs`, `top_logprobs`, `logit_bias`, `reasoning_effort`, `prediction`, message `name`s,
/// image `detail`, and any unknown top-level field.
///
/// Refused: legacy `functions`/`function_call` and `function` messages, non-function tools,
/// `audio` output (and `modalities` other than text), `web_search_options`, file ids,
/// non-base64 data URLs, tool results that answer no earlier call, tool-call arguments that are
/// not a JSON object, recursive schemas.
pub fn request_from_chat(chat: &Value) -> Result<Value, TranslateError> {
    let chat = chat.as_object().ok_or_else(|| TranslateError {
        param: None,
        message: "the request body must be a JSON object".into(),
    })?;
    for legacy in ["functions", "function_call"] {
        if chat.contains_key(legacy) {
            return Err(TranslateError::new(
                legacy,
                "the legacy functions API cannot be sent to Gemini; use tools and tool_choice",
            ));
        }
    }
    if chat.get("audio").is_some_and(|audio| !audio.is_null()) {
        return Err(TranslateError::new(
            "audio",
            "audio output is not available through Gemini's generateContent translation",
        ));
    }
    if chat
        .get("modalities")
        .and_then(Value::as_array)
        .is_some_and(|modalities| modalities.iter().any(|m| m.as_str() != Some("text")))
    {
        return Err(TranslateError::new(
            "modalities",
            "only text output is available through Gemini's generateContent translation",
        ));
    }
    if chat
        .get("web_search_options")
        .is_some_and(|options| !options.is_null())
    {
        return Err(TranslateError::new(
            "web_search_options",
            "OpenAI's web search cannot be sent to Gemini",
        ));
    }

    let messages = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("messages", "messages must be an array"))?;
    let mut history = History::default();
    for (index, message) in messages.iter().enumerate() {
        history.add(index, message)?;
    }
    if history.contents.is_empty() {
        return Err(TranslateError::new(
            "messages",
            "Gemini needs at least one user or assistant message besides the system prompt",
        ));
    }

    let mut body = Map::new();
    body.insert("contents".into(), history.contents_json());
    if !history.system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({ "parts": history.system }),
        );
    }
    // Without tools, a tool_choice has nothing to choose from and is left out.
    if let Some(declarations) = tools(chat)? {
        let choice = tool_choice(chat, &declarations)?;
        body.insert(
            "tools".into(),
            json!([{ "functionDeclarations": choice.declarations.unwrap_or(declarations) }]),
        );
        if let Some(calling) = choice.calling {
            body.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": calling }),
            );
        }
    }
    let generation = generation_config(chat)?;
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

#[derive(Default)]
struct History {
    system: Vec<Value>,
    /// (role, parts), consecutive roles already merged.
    contents: Vec<(&'static str, Vec<Value>)>,
    /// Tool call id → function name, from the assistant messages seen so far.
    call_names: HashMap<String, String>,
}

impl History {
    fn add(&mut self, index: usize, message: &Value) -> Result<(), TranslateError> {
        let param = format!("messages[{index}]");
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::new(format!("{param}.role"), "role must be a string"))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                let parts = text_only_parts(content, &format!("{param}.content"))?;
                self.system.extend(parts);
            }
            "user" => {
                let parts = user_parts(content, &format!("{param}.content"))?;
                self.push("user", parts);
            }
            "assistant" => {
                let mut parts = text_only_parts(content, &format!("{param}.content"))?;
                if let Some(calls) = message.get("tool_calls").filter(|calls| !calls.is_null()) {
                    let calls = calls.as_array().ok_or_else(|| {
                        TranslateError::new(format!("{param}.tool_calls"), "must be an array")
                    })?;
                    for (position, call) in calls.iter().enumerate() {
                        parts.push(
                            self.function_call(call, &format!("{param}.tool_calls[{position}]"))?,
                        );
                    }
                }
                self.push("model", parts);
            }
            "tool" => {
                let part = self.function_response(message, &param)?;
                self.push("user", vec![part]);
            }
            "function" => {
                return Err(TranslateError::new(
                    format!("{param}.role"),
                    "legacy function messages cannot be sent to Gemini; use tool messages",
                ))
            }
            other => {
                return Err(TranslateError::new(
                    format!("{param}.role"),
                    format!("unknown role {other:?}"),
                ))
            }
        }
        Ok(())
    }

    fn push(&mut self, role: &'static str, parts: Vec<Value>) {
        if parts.is_empty() {
            return;
        }
        match self.contents.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => self.contents.push((role, parts)),
        }
    }

    fn function_call(&mut self, call: &Value, param: &str) -> Result<Value, TranslateError> {
        if let Some(kind) = call.get("type").and_then(Value::as_str) {
            if kind != "function" {
                return Err(TranslateError::new(
                    format!("{param}.type"),
                    format!("only function tool calls can be sent to Gemini, not {kind:?}"),
                ));
            }
        }
        let function = call.get("function").ok_or_else(|| {
            TranslateError::new(format!("{param}.function"), "a tool call needs a function")
        })?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TranslateError::new(format!("{param}.function.name"), "must be a string")
            })?;
        let args = match function.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(text)) if text.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(text)) => serde_json::from_str::<Value>(text)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    TranslateError::new(
                        format!("{param}.function.arguments"),
                        "Gemini needs a tool call's arguments as a JSON object",
                    )
                })?,
            Some(object @ Value::Object(_)) => object.clone(),
            Some(_) => {
                return Err(TranslateError::new(
                    format!("{param}.function.arguments"),
                    "must be a JSON string",
                ))
            }
        };
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            self.call_names.insert(id.to_owned(), name.to_owned());
        }
        Ok(json!({ "functionCall": { "name": name, "args": args } }))
    }

    fn function_response(&self, message: &Value, param: &str) -> Result<Value, TranslateError> {
        let id = message
            .get("tool_call_id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TranslateError::new(format!("{param}.tool_call_id"), "must be a string")
            })?;
        let name = self.call_names.get(id).ok_or_else(|| {
            TranslateError::new(
                format!("{param}.tool_call_id"),
                format!("no earlier assistant tool call has the id {id:?}"),
            )
        })?;
        let content = message.get("content").unwrap_or(&Value::Null);
        let text = joined_text(content, &format!("{param}.content"))?;
        Ok(json!({
            "functionResponse": { "name": name, "response": { "output": text } }
        }))
    }

    /// The contents, with the first function call of every model turn signed (see
    /// [`UNSIGNED_THOUGHT`]).
    fn contents_json(&self) -> Value {
        let contents = self
            .contents
            .iter()
            .map(|(role, parts)| {
                let mut parts = parts.clone();
                if *role == "model" {
                    if let Some(Value::Object(first_call)) = parts
                        .iter_mut()
                        .find(|part| part.get("functionCall").is_some())
                    {
                        first_call
                            .entry("thoughtSignature")
                            .or_insert_with(|| Value::String(UNSIGNED_THOUGHT.into()));
                    }
                }
                json!({ "role": role, "parts": parts })
            })
            .collect();
        Value::Array(contents)
    }
}

/// Text parts of a system or assistant message (a string or an array of `text` parts; an
/// assistant's `refusal` parts are text too). Empty texts are left out: Gemini refuses them.
fn text_only_parts(content: &Value, param: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(text_part(text).into_iter().collect()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                let text = match kind {
                    Some("text") => part.get("text"),
                    Some("refusal") => part.get("refusal"),
                    _ => {
                        return Err(TranslateError::new(
                            format!("{param}[{index}].type"),
                            "only text parts are allowed here",
                        ))
                    }
                };
                let text = text.and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("{param}[{index}].text"), "must be a string")
                })?;
                out.extend(text_part(text));
            }
            Ok(out)
        }
        _ => Err(TranslateError::new(
            param,
            "content must be a string or an array of parts",
        )),
    }
}

/// A tool result's text: a string, or its text parts joined by newlines.
fn joined_text(content: &Value, param: &str) -> Result<String, TranslateError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(_) => {
            let parts = text_only_parts(content, param)?;
            Ok(parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        _ => Err(TranslateError::new(
            param,
            "content must be a string or an array of text parts",
        )),
    }
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "text": text }))
}

fn user_parts(content: &Value, param: &str) -> Result<Vec<Value>, TranslateError> {
    let parts = match content {
        Value::Array(parts) => parts,
        _ => return text_only_parts(content, param),
    };
    let mut out = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let param = format!("{param}[{index}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("{param}.text"), "must be a string")
                })?;
                out.extend(text_part(text));
            }
            Some("image_url") => {
                let url = match part.get("image_url") {
                    Some(Value::String(url)) => Some(url.as_str()),
                    Some(image) => image.get("url").and_then(Value::as_str),
                    None => None,
                }
                .ok_or_else(|| {
                    TranslateError::new(format!("{param}.image_url.url"), "must be a string")
                })?;
                out.push(image_part(url, &format!("{param}.image_url.url"))?);
            }
            Some("input_audio") => {
                let audio = part.get("input_audio");
                let data = audio
                    .and_then(|audio| audio.get("data"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        TranslateError::new(format!("{param}.input_audio.data"), "must be a string")
                    })?;
                let format = audio
                    .and_then(|audio| audio.get("format"))
                    .and_then(Value::as_str)
                    .unwrap_or("wav");
                out.push(json!({
                    "inlineData": { "mimeType": format!("audio/{format}"), "data": data }
                }));
            }
            Some("file") => out.push(file_part(part.get("file"), &format!("{param}.file"))?),
            Some(other) => {
                return Err(TranslateError::new(
                    format!("{param}.type"),
                    format!("content parts of type {other:?} cannot be sent to Gemini"),
                ))
            }
            None => {
                return Err(TranslateError::new(
                    format!("{param}.type"),
                    "a content part needs a type",
                ))
            }
        }
    }
    Ok(out)
}

fn image_part(url: &str, param: &str) -> Result<Value, TranslateError> {
    if url.starts_with("data:") {
        let (mime, data) = data_url(url).ok_or_else(|| {
            TranslateError::new(
                param,
                "a data URL must look like data:<mime type>;base64,<data>",
            )
        })?;
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        let mut file = Map::new();
        if let Some(mime) = mime_from_extension(url) {
            file.insert("mimeType".into(), Value::String(mime.into()));
        }
        file.insert("fileUri".into(), Value::String(url.into()));
        return Ok(json!({ "fileData": file }));
    }
    Err(TranslateError::new(
        param,
        "an image must be a data URL or an http(s) URL",
    ))
}

fn file_part(file: Option<&Value>, param: &str) -> Result<Value, TranslateError> {
    let file = file.ok_or_else(|| TranslateError::new(param, "a file part needs a file"))?;
    if file.get("file_id").is_some() {
        return Err(TranslateError::new(
            format!("{param}.file_id"),
            "OpenAI file ids cannot be sent to Gemini; send file_data",
        ));
    }
    let data = file
        .get("file_data")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::new(format!("{param}.file_data"), "must be a string"))?;
    if data.starts_with("data:") {
        let (mime, data) = data_url(data).ok_or_else(|| {
            TranslateError::new(
                format!("{param}.file_data"),
                "a data URL must look like data:<mime type>;base64,<data>",
            )
        })?;
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    // Bare base64: the file name must say what it is.
    let mime = file
        .get("filename")
        .and_then(Value::as_str)
        .and_then(mime_from_extension)
        .ok_or_else(|| {
            TranslateError::new(
                format!("{param}.filename"),
                "Gemini needs the file's type: send file_data as a data URL",
            )
        })?;
    Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
}

/// `data:<mime>;base64,<data>` → (mime, data). Other data URLs (not base64) are refused by
/// the caller.
fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let mime = header.strip_suffix(";base64")?;
    // Parameters such as ";charset=utf-8" before ";base64" are not part of the type.
    let mime = mime.split(';').next().unwrap_or(mime);
    (!mime.is_empty()).then_some((mime, data))
}

/// The MIME type a URL's or file name's extension names, among the types Gemini reads.
fn mime_from_extension(name: &str) -> Option<&'static str> {
    let path = name.split(['?', '#']).next().unwrap_or(name);
    let extension = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "wav" => "audio/wav",
        "mp3" => "audio/mp3",
        _ => return None,
    })
}

/// The function declarations, or `None` when the request offers no tools.
fn tools(chat: &Map<String, Value>) -> Result<Option<Vec<Value>>, TranslateError> {
    let tools = match chat.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(tools)) if tools.is_empty() => return Ok(None),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(TranslateError::new("tools", "must be an array")),
    };
    let mut declarations = Vec::new();
    for (index, tool) in tools.iter().enumerate() {
        let param = format!("tools[{index}]");
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        if kind != "function" {
            return Err(TranslateError::new(
                format!("{param}.type"),
                format!("only function tools can be sent to Gemini, not {kind:?}"),
            ));
        }
        let function = tool.get("function").ok_or_else(|| {
            TranslateError::new(
                format!("{param}.function"),
                "a function tool needs a function",
            )
        })?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TranslateError::new(format!("{param}.function.name"), "must be a string")
            })?;
        let mut declaration = Map::new();
        declaration.insert("name".into(), Value::String(name.into()));
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            declaration.insert("description".into(), Value::String(description.into()));
        }
        if let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) {
            let converted = schema::to_gemini(parameters, &format!("{param}.function.parameters"))?;
            if !schema::is_empty_object(&converted) {
                declaration.insert("parameters".into(), converted);
            }
        }
        declarations.push(Value::Object(declaration));
    }
    Ok(Some(declarations))
}

struct ToolConfig {
    /// `functionCallingConfig`, when the client chose.
    calling: Option<Value>,
    /// The declarations narrowed by an `allowed_tools` choice.
    declarations: Option<Vec<Value>>,
}

fn tool_choice(
    chat: &Map<String, Value>,
    declarations: &[Value],
) -> Result<ToolConfig, TranslateError> {
    let mode = |mode: &str| json!({ "mode": mode });
    let config = match chat.get("tool_choice") {
        None | Some(Value::Null) => ToolConfig {
            calling: None,
            declarations: None,
        },
        Some(Value::String(choice)) => {
            let calling = match choice.as_str() {
                "auto" => mode("AUTO"),
                "none" => mode("NONE"),
                "required" => mode("ANY"),
                other => {
                    return Err(TranslateError::new(
                        "tool_choice",
                        format!("unknown tool_choice {other:?}"),
                    ))
                }
            };
            ToolConfig {
                calling: Some(calling),
                declarations: None,
            }
        }
        Some(choice @ Value::Object(_)) => match choice.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = choice
                    .get("function")
                    .and_then(|function| function.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        TranslateError::new("tool_choice.function.name", "must be a string")
                    })?;
                ToolConfig {
                    calling: Some(json!({ "mode": "ANY", "allowedFunctionNames": [name] })),
                    declarations: None,
                }
            }
            Some("allowed_tools") => {
                let allowed = choice.get("allowed_tools");
                let names: Vec<&str> = allowed
                    .and_then(|allowed| allowed.get("tools"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        TranslateError::new("tool_choice.allowed_tools.tools", "must be an array")
                    })?
                    .iter()
                    .filter_map(|tool| {
                        tool.get("function")
                            .and_then(|function| function.get("name"))
                            .and_then(Value::as_str)
                    })
                    .collect();
                let narrowed: Vec<Value> = declarations
                    .iter()
                    .filter(|declaration| {
                        declaration
                            .get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|name| names.contains(&name))
                    })
                    .cloned()
                    .collect();
                if narrowed.is_empty() {
                    return Err(TranslateError::new(
                        "tool_choice.allowed_tools.tools",
                        "names none of the offered tools",
                    ));
                }
                let calling = match allowed
                    .and_then(|allowed| allowed.get("mode"))
                    .and_then(Value::as_str)
                {
                    Some("required") => mode("ANY"),
                    _ => mode("AUTO"),
                };
                ToolConfig {
                    calling: Some(calling),
                    declarations: Some(narrowed),
                }
            }
            _ => {
                return Err(TranslateError::new(
                    "tool_choice.type",
                    "tool_choice must be \"function\" or \"allowed_tools\"",
                ))
            }
        },
        Some(_) => {
            return Err(TranslateError::new(
                "tool_choice",
                "must be a string or an object",
            ))
        }
    };
    Ok(config)
}

fn generation_config(chat: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(value) = number(chat, from)? {
            config.insert(to.into(), value);
        }
    }
    let max_tokens = match integer(chat, "max_completion_tokens")? {
        Some(value) => Some(value),
        None => integer(chat, "max_tokens")?,
    };
    if let Some(value) = max_tokens {
        config.insert("maxOutputTokens".into(), value);
    }
    match chat.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(stop)) => {
            config.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if !stops.is_empty() {
                config.insert("stopSequences".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => {
            return Err(TranslateError::new(
                "stop",
                "must be a string or an array of strings",
            ))
        }
    }
    if let Some(n) = integer(chat, "n")? {
        config.insert("candidateCount".into(), n);
    }
    if let Some(seed) = integer(chat, "seed")? {
        config.insert("seed".into(), seed);
    }
    if let Some(format) = chat.get("response_format").filter(|f| !f.is_null()) {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = format
                    .get("json_schema")
                    .and_then(|json_schema| json_schema.get("schema"))
                {
                    config.insert(
                        "responseSchema".into(),
                        schema::to_gemini(schema, "response_format.json_schema.schema")?,
                    );
                }
            }
            _ => {
                return Err(TranslateError::new(
                    "response_format.type",
                    "response_format must be text, json_object or json_schema",
                ))
            }
        }
    }
    Ok(config)
}

fn number(chat: &Map<String, Value>, key: &str) -> Result<Option<Value>, TranslateError> {
    match chat.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Number(_)) => Ok(Some(value.clone())),
        Some(_) => Err(TranslateError::new(key, "must be a number")),
    }
}

fn integer(chat: &Map<String, Value>, key: &str) -> Result<Option<Value>, TranslateError> {
    match chat.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) if value.is_i64() || value.is_u64() => Ok(Some(value.clone())),
        Some(_) => Err(TranslateError::new(key, "must be an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

    fn weather_tool() -> Value {
        json!({
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "strict": true,
                "parameters": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "City name"},
                        "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", null]}
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": false
                }
            }
        })
    }

    fn time_tool() -> Value {
        json!({
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "Local time in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": false
                }
            }
        })
    }

    #[test]
    fn a_full_conversation_with_parallel_tool_calls() {
        let chat = json!({
            "model": "my-alias",
            "user": "user-1234",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "You are a terse weather bot."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is the weather and time in Paris and Rome? And what is in these pictures?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}"), "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/photos/rome.JPG?size=large"}}
                ]},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},
                    {"id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_abc", "content": "18°C, light rain"},
                {"role": "tool", "tool_call_id": "call_def", "content": [{"type": "text", "text": "14:05"}, {"type": "text", "text": "CET"}]},
                {"role": "assistant", "content": "Paris: 18°C and rain. Rome: 14:05."},
                {"role": "user", "content": "Thanks!"}
            ],
            "tools": [weather_tool(), time_tool()],
            "tool_choice": "auto",
            "parallel_tool_calls": true,
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 256,
            "max_tokens": 999,
            "stop": ["\n\n", "END"],
            "n": 1,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "logprobs": true,
            "top_logprobs": 2,
            "metadata": {"trace": "x"},
            "response_format": {"type": "text"}
        });
        let body = request_from_chat(&chat).unwrap();
        let expected = json!({
            "contents": [
                {"role": "user", "parts": [
                    {"text": "What is the weather and time in Paris and Rome? And what is in these pictures?"},
                    {"inlineData": {"mimeType": "image/png", "data": PNG}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photos/rome.JPG?size=large"}}
                ]},
                {"role": "model", "parts": [
                    {"text": "Let me check."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
                     "thoughtSignature": "skip_thought_signature_validator"},
                    {"functionCall": {"name": "get_time", "args": {"city": "Rome"}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"output": "18°C, light rain"}}},
                    {"functionResponse": {"name": "get_time", "response": {"output": "14:05\nCET"}}}
                ]},
                {"role": "model", "parts": [{"text": "Paris: 18°C and rain. Rome: 14:05."}]},
                {"role": "user", "parts": [{"text": "Thanks!"}]}
            ],
            "systemInstruction": {"parts": [
                {"text": "You are a terse weather bot."},
                {"text": "Answer in English."}
            ]},
            "tools": [{"functionDeclarations": [
                {"name": "get_weather", "description": "Current weather in a city", "parameters": {
                    "type": "OBJECT",
                    "properties": {
                        "city": {"type": "STRING", "description": "City name"},
                        "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"], "nullable": true}
                    },
                    "required": ["city", "unit"]
                }},
                {"name": "get_time", "description": "Local time in a city", "parameters": {
                    "type": "OBJECT",
                    "properties": {"city": {"type": "STRING"}},
                    "required": ["city"]
                }}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
            "generationConfig": {
                "temperature": 0.2,
                "topP": 0.9,
                "presencePenalty": 0.5,
                "frequencyPenalty": 0.25,
                "maxOutputTokens": 256,
                "stopSequences": ["\n\n", "END"],
                "candidateCount": 1,
                "seed": 7
            }
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn consecutive_turns_of_one_role_merge_and_empty_texts_vanish() {
        let chat = json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "second"}]},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": [{"type": "text", "text": "answer"}, {"type": "refusal", "refusal": "not that"}]},
            {"role": "assistant", "content": null}
        ]});
        let body = request_from_chat(&chat).unwrap();
        assert_eq!(
            body,
            json!({"contents": [
                {"role": "user", "parts": [{"text": "first"}, {"text": "second"}]},
                {"role": "model", "parts": [{"text": "answer"}, {"text": "not that"}]}
            ]})
        );
    }

    #[test]
    fn a_tool_result_after_a_user_text_shares_the_user_turn() {
        let chat = json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 18}"},
            {"role": "user", "content": "and tomorrow?"}
        ], "tools": [weather_tool()]});
        let body = request_from_chat(&chat).unwrap();
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {}},
                     "thoughtSignature": "skip_thought_signature_validator"}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"output": "{\"temp\": 18}"}}},
                    {"text": "and tomorrow?"}
                ]}
            ])
        );
        assert!(body.get("toolConfig").is_none());
    }

    #[test]
    fn a_repeated_tool_call_id_names_the_latest_call() {
        let chat = json!({"messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "one"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "second", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "two"}
        ]});
        let body = request_from_chat(&chat).unwrap();
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"]["name"],
            "first"
        );
        assert_eq!(
            body["contents"][4]["parts"][0]["functionResponse"]["name"],
            "second"
        );
    }

    #[test]
    fn tool_choice_modes() {
        let with_choice = |choice: Value| {
            let chat = json!({
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [weather_tool(), time_tool()],
                "tool_choice": choice,
            });
            request_from_chat(&chat)
        };
        let config = |body: Value| body["toolConfig"]["functionCallingConfig"].clone();
        assert_eq!(
            config(with_choice(json!("none")).unwrap()),
            json!({"mode": "NONE"})
        );
        assert_eq!(
            config(with_choice(json!("required")).unwrap()),
            json!({"mode": "ANY"})
        );
        assert_eq!(
            config(
                with_choice(json!({"type": "function", "function": {"name": "get_time"}})).unwrap()
            ),
            json!({"mode": "ANY", "allowedFunctionNames": ["get_time"]})
        );
        let narrowed = with_choice(json!({"type": "allowed_tools", "allowed_tools": {
            "mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]
        }}))
        .unwrap();
        assert_eq!(config(narrowed.clone()), json!({"mode": "ANY"}));
        let names: Vec<&str> = narrowed["tools"][0]["functionDeclarations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["get_time"]);
        assert_eq!(
            with_choice(json!("sometimes"))
                .unwrap_err()
                .param
                .as_deref(),
            Some("tool_choice")
        );
        // No tools: the choice is left out.
        let body = request_from_chat(&json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": "required"
        }))
        .unwrap();
        assert!(body.get("toolConfig").is_none() && body.get("tools").is_none());
    }

    #[test]
    fn a_tool_without_parameters_declares_none() {
        let chat = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "ping"}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}}
            ]
        });
        let body = request_from_chat(&chat).unwrap();
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [{"name": "ping"}, {"name": "now"}]}])
        );
    }

    #[test]
    fn generation_settings() {
        let chat = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
            "stop": "STOP",
            "n": 2,
            "response_format": {"type": "json_object"}
        });
        assert_eq!(
            request_from_chat(&chat).unwrap()["generationConfig"],
            json!({
                "maxOutputTokens": 100,
                "stopSequences": ["STOP"],
                "candidateCount": 2,
                "responseMimeType": "application/json"
            })
        );
        let chat = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "strict": true,
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
                    "required": ["answer", "confidence"],
                    "additionalProperties": false
                }
            }}
        });
        assert_eq!(
            request_from_chat(&chat).unwrap()["generationConfig"],
            json!({
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {"answer": {"type": "STRING"}, "confidence": {"type": "NUMBER"}},
                    "required": ["answer", "confidence"]
                }
            })
        );
        let bad = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"});
        assert_eq!(
            request_from_chat(&bad).unwrap_err().param.as_deref(),
            Some("temperature")
        );
    }

    #[test]
    fn media_parts() {
        let chat = json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
            {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "report.PDF"}},
            {"type": "image_url", "image_url": "https://example.com/image"},
            {"type": "image_url", "image_url": {"url": "data:image/webp;charset=binary;base64,UklGRh4="}}
        ]}]});
        assert_eq!(
            request_from_chat(&chat).unwrap()["contents"][0]["parts"],
            json!([
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
                {"fileData": {"fileUri": "https://example.com/image"}},
                {"inlineData": {"mimeType": "image/webp", "data": "UklGRh4="}}
            ])
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let refuse = |chat: Value| request_from_chat(&chat).unwrap_err();
        let user = |content: Value| json!({"messages": [{"role": "user", "content": content}]});

        let error = refuse(json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "call_missing", "content": "x"}
        ]}));
        assert_eq!(error.param.as_deref(), Some("messages[1].tool_call_id"));

        let error = refuse(json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1,2]"}}]}
        ]}));
        assert_eq!(
            error.param.as_deref(),
            Some("messages[1].tool_calls[0].function.arguments")
        );

        let error = refuse(json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ]}));
        assert_eq!(
            error.param.as_deref(),
            Some("messages[1].tool_calls[0].function.arguments")
        );

        let error =
            refuse(json!({"messages": [{"role": "user", "content": "hi"}], "functions": []}));
        assert_eq!(error.param.as_deref(), Some("functions"));

        let error = refuse(
            json!({"messages": [{"role": "user", "content": "hi"}], "modalities": ["text", "audio"]}),
        );
        assert_eq!(error.param.as_deref(), Some("modalities"));

        let error = refuse(
            json!({"messages": [{"role": "user", "content": "hi"}], "audio": {"voice": "alloy", "format": "mp3"}}),
        );
        assert_eq!(error.param.as_deref(), Some("audio"));

        let error = refuse(
            json!({"messages": [{"role": "user", "content": "hi"}], "web_search_options": {}}),
        );
        assert_eq!(error.param.as_deref(), Some("web_search_options"));
        assert!(request_from_chat(&json!({"messages": [{"role": "user", "content": "hi"}], "modalities": ["text"], "audio": null})).is_ok());

        let error = refuse(user(
            json!([{"type": "file", "file": {"file_id": "file-123"}}]),
        ));
        assert_eq!(
            error.param.as_deref(),
            Some("messages[0].content[0].file.file_id")
        );

        let error = refuse(user(
            json!([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]),
        ));
        assert_eq!(
            error.param.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );

        let error = refuse(user(
            json!([{"type": "image_url", "image_url": {"url": "gs://bucket/a.png"}}]),
        ));
        assert_eq!(
            error.param.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );

        let error = refuse(user(json!([{"type": "video", "video": {}}])));
        assert_eq!(error.param.as_deref(), Some("messages[0].content[0].type"));

        let error = refuse(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "custom", "custom": {"name": "grammar"}}]
        }));
        assert_eq!(error.param.as_deref(), Some("tools[0].type"));

        let error =
            refuse(json!({"messages": [{"role": "system", "content": "only a system prompt"}]}));
        assert_eq!(error.param.as_deref(), Some("messages"));

        let error = refuse(json!({"messages": [{"role": "narrator", "content": "x"}]}));
        assert_eq!(error.param.as_deref(), Some("messages[0].role"));

        let error = refuse(
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, {"role": "user", "content": "hi"}]}),
        );
        assert_eq!(error.param.as_deref(), Some("messages[0].content[0].type"));

        assert!(request_from_chat(&json!([1, 2]))
            .unwrap_err()
            .param
            .is_none());
    }
}
