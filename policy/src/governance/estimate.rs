//! What a request will cost before it runs: its input tokens and a bound on its output.
//!
//! **Input.** For models of the OpenAI family (`gpt-*`, `o1`/`o3`/`o4`, `chatgpt-4o`,
//! OpenAI embeddings) the text is counted with the model's own tokenizer (`tiktoken-rs`:
//! `o200k_base` or `cl100k_base`), plus OpenAI's fixed framing of 3 tokens per chat message,
//! 1 per `name`, and 3 to prime the reply. For every other model no tokenizer is public, so
//! the estimate is deliberately high: one token per 3 ASCII characters plus one token per
//! non-ASCII character (real tokenizers average about 4 ASCII characters per token, and rarely
//! spend more than one token per CJK character), plus the same framing. Tool and function
//! definitions, response formats and other structured parts of the request are counted as
//! their JSON text. Each image counts as [`IMAGE_TOKENS`], each audio or file part as
//! [`FILE_PART_TOKENS`].
//!
//! **Output.** `max_completion_tokens`, else `max_tokens`, else the configured default, times
//! `n` when the request asks for several choices (for completions, `best_of` when larger: the
//! provider generates and bills that many). Embeddings have no output.
//!
//! The estimate is what admission reserves; the real usage from the provider replaces it at
//! settlement (see [`super::metering`] for how far a budget can go over).

use serde_json::{Map, Value};
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

use crate::openai_api::LlmApi;

/// Tokens an image part is estimated at: a high-detail 1024×1024 image on GPT-4o is 765; larger
/// images are resized by the provider to about this.
pub const IMAGE_TOKENS: u64 = 1105;
/// Tokens an audio or file part is estimated at (their content is not inspected).
pub const FILE_PART_TOKENS: u64 = 4096;
/// OpenAI's framing of each chat message, of a `name`, and of the reply.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING_TOKENS: u64 = 3;

/// How the input tokens were counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EstimateMethod {
    /// With the model's tokenizer (`o200k_base`, `cl100k_base`).
    Tokenizer(&'static str),
    /// From the character count, on the high side.
    #[default]
    Characters,
}

impl EstimateMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            EstimateMethod::Tokenizer(name) => name,
            EstimateMethod::Characters => "characters",
        }
    }
}

/// The estimate of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestEstimate {
    pub input_tokens: u64,
    /// The most output tokens the request can produce (or the configured default).
    pub output_tokens: u64,
    pub method: EstimateMethod,
}

/// Estimates a request whose top-level JSON object is `body`.
pub fn estimate_request(
    api: LlmApi,
    body: &Map<String, Value>,
    upstream_model: &str,
    default_output_tokens: u64,
) -> RequestEstimate {
    let counter = TokenCounter::for_model(upstream_model);
    let input_tokens = match api {
        LlmApi::ChatCompletions => chat_input(body, &counter),
        LlmApi::Completions => body.get("prompt").map_or(0, |p| prompt_input(p, &counter)),
        LlmApi::Embeddings => body.get("input").map_or(0, |i| prompt_input(i, &counter)),
    };
    let output_tokens = match api {
        LlmApi::Embeddings => 0,
        LlmApi::ChatCompletions | LlmApi::Completions => {
            let bound = ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|field| body.get(*field).and_then(Value::as_u64))
                .unwrap_or(default_output_tokens);
            // Completions' `best_of` generates (and bills) that many choices server-side,
            // returning the best `n`.
            let count = |field: &str| body.get(field).and_then(Value::as_u64).unwrap_or(1);
            let choices = match api {
                LlmApi::Completions => count("n").max(count("best_of")),
                _ => count("n"),
            }
            .clamp(1, 128);
            bound.saturating_mul(choices)
        }
    };
    RequestEstimate {
        input_tokens,
        output_tokens,
        method: counter.method(),
    }
}

/// Warms the tokenizers (loading one takes a noticeable fraction of a second), so that the
/// first request does not pay for it.
pub fn warm_tokenizers() {
    let _ = tiktoken_rs::bpe_for_tokenizer(Tokenizer::O200kBase);
    let _ = tiktoken_rs::bpe_for_tokenizer(Tokenizer::Cl100kBase);
}

/// Counts the tokens of text for one model.
enum TokenCounter {
    Bpe(&'static CoreBPE, &'static str),
    Characters,
}

impl TokenCounter {
    fn for_model(model: &str) -> TokenCounter {
        let lower = model.trim().to_ascii_lowercase();
        // `openai/gpt-4o`, `azure/gpt-4o-mini`: the name after the router's prefix.
        let name = lower.rsplit('/').next().unwrap_or(&lower);
        let tokenizer = get_tokenizer(name).or_else(|| openai_family(name));
        let named = match tokenizer {
            Some(Tokenizer::O200kBase) => Some((Tokenizer::O200kBase, "o200k_base")),
            Some(Tokenizer::Cl100kBase) => Some((Tokenizer::Cl100kBase, "cl100k_base")),
            // Older encodings count at least as many tokens as cl100k for the same text.
            Some(_) => Some((Tokenizer::Cl100kBase, "cl100k_base")),
            None => None,
        };
        match named.and_then(|(t, name)| tiktoken_rs::bpe_for_tokenizer(t).ok().map(|b| (b, name)))
        {
            Some((bpe, name)) => TokenCounter::Bpe(bpe, name),
            None => TokenCounter::Characters,
        }
    }

    fn method(&self) -> EstimateMethod {
        match self {
            TokenCounter::Bpe(_, name) => EstimateMethod::Tokenizer(name),
            TokenCounter::Characters => EstimateMethod::Characters,
        }
    }

    fn count(&self, text: &str) -> u64 {
        match self {
            TokenCounter::Bpe(bpe, _) => bpe.encode_ordinary(text).len() as u64,
            TokenCounter::Characters => {
                let (ascii, other) = text.chars().fold((0u64, 0u64), |(a, o), c| {
                    if c.is_ascii() {
                        (a + 1, o)
                    } else {
                        (a, o + 1)
                    }
                });
                ascii.div_ceil(3) + other
            }
        }
    }
}

/// Base names `get_tokenizer` only knows with a suffix (`o1`, `gpt-4o`) or not at all.
fn openai_family(name: &str) -> Option<Tokenizer> {
    const O200K: &[&str] = &[
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "chatgpt-4o",
        "o1",
        "o3",
        "o4-mini",
    ];
    const CL100K: &[&str] = &["gpt-4", "gpt-3.5-turbo", "gpt-35-turbo"];
    let family = |names: &[&str]| {
        names.iter().any(|base| {
            name == *base
                || name
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.starts_with(['-', ':', '@']))
        })
    };
    if family(O200K) {
        Some(Tokenizer::O200kBase)
    } else if family(CL100K) || name.starts_with("text-embedding-") {
        Some(Tokenizer::Cl100kBase)
    } else {
        None
    }
}

fn chat_input(body: &Map<String, Value>, counter: &TokenCounter) -> u64 {
    let mut tokens = REPLY_PRIMING_TOKENS;
    if let Some(Value::Array(messages)) = body.get("messages") {
        for message in messages {
            tokens = tokens.saturating_add(TOKENS_PER_MESSAGE);
            let Value::Object(fields) = message else {
                tokens = tokens.saturating_add(json_tokens(message, counter));
                continue;
            };
            for (field, value) in fields {
                let part = match (field.as_str(), value) {
                    ("content", content) => content_tokens(content, counter),
                    ("name", Value::String(name)) => {
                        counter.count(name).saturating_add(TOKENS_PER_NAME)
                    }
                    (_, Value::String(text)) => counter.count(text),
                    (_, Value::Null) => 0,
                    (_, other) => json_tokens(other, counter),
                };
                tokens = tokens.saturating_add(part);
            }
        }
    }
    // Structured parts the model reads: tool and function definitions, the response schema.
    for field in ["tools", "functions", "response_format", "tool_choice"] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
            tokens = tokens.saturating_add(json_tokens(value, counter));
        }
    }
    tokens
}

/// A message's `content`: a string, or an array of typed parts.
fn content_tokens(content: &Value, counter: &TokenCounter) -> u64 {
    match content {
        Value::String(text) => counter.count(text),
        Value::Array(parts) => parts.iter().fold(0u64, |sum, part| {
            let tokens = match part.get("type").and_then(Value::as_str) {
                Some("text") | Some("input_text") | Some("output_text") | Some("refusal") => part
                    .get("text")
                    .or_else(|| part.get("refusal"))
                    .and_then(Value::as_str)
                    .map_or(0, |t| counter.count(t)),
                Some("image_url") | Some("input_image") | Some("image") => IMAGE_TOKENS,
                Some("input_audio") | Some("file") | Some("input_file") | Some("document") => {
                    FILE_PART_TOKENS
                }
                _ => json_tokens(part, counter),
            };
            sum.saturating_add(tokens)
        }),
        Value::Null => 0,
        other => json_tokens(other, counter),
    }
}

/// A completions `prompt` or embeddings `input`: a string, strings, token ids, or arrays of
/// token ids (counted as they are).
fn prompt_input(value: &Value, counter: &TokenCounter) -> u64 {
    match value {
        Value::String(text) => counter.count(text),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().fold(0u64, |sum, item| {
            sum.saturating_add(prompt_input(item, counter))
        }),
        Value::Null | Value::Bool(_) => 0,
        Value::Object(_) => json_tokens(value, counter),
    }
}

fn json_tokens(value: &Value, counter: &TokenCounter) -> u64 {
    counter.count(&value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn openai_models_are_counted_with_their_tokenizer() {
        let body = object(r#"{"messages":[{"role":"user","content":"hello world"}]}"#);
        let estimate = estimate_request(LlmApi::ChatCompletions, &body, "gpt-4o-mini", 100);
        // "user" (1) + "hello world" (2) + 3 per message + 3 reply priming: OpenAI's own
        // count for this request is 9 prompt tokens.
        assert_eq!(estimate.input_tokens, 9);
        assert_eq!(estimate.method, EstimateMethod::Tokenizer("o200k_base"));
        assert_eq!(estimate.output_tokens, 100, "the default bounds the output");
        let legacy = estimate_request(LlmApi::ChatCompletions, &body, "gpt-4-0613", 1);
        assert_eq!(legacy.method, EstimateMethod::Tokenizer("cl100k_base"));
        for model in ["o1", "o3-mini", "openai/gpt-4o", "GPT-4.1", "gpt-5-nano"] {
            assert!(
                matches!(
                    estimate_request(LlmApi::ChatCompletions, &body, model, 1).method,
                    EstimateMethod::Tokenizer(_)
                ),
                "{model}"
            );
        }
    }

    #[test]
    fn other_models_are_over_estimated_from_characters() {
        let text = "The quick brown fox jumps over the lazy dog.";
        let body = object(&format!(
            r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#
        ));
        let estimate = estimate_request(LlmApi::ChatCompletions, &body, "claude-sonnet-4-5", 1);
        assert_eq!(estimate.method, EstimateMethod::Characters);
        let tokenized = estimate_request(LlmApi::ChatCompletions, &body, "gpt-4o", 1);
        assert!(
            estimate.input_tokens > tokenized.input_tokens,
            "{} should exceed the real count {}",
            estimate.input_tokens,
            tokenized.input_tokens
        );
        // 44 ASCII characters → 15, "user" → 2, framing 6.
        assert_eq!(estimate.input_tokens, 15 + 2 + 6);
        // One token per non-ASCII character.
        assert_eq!(TokenCounter::Characters.count("日本語"), 3);
    }

    #[test]
    fn output_is_bounded_by_max_tokens_times_choices() {
        let body = object(r#"{"messages":[],"max_tokens":50,"n":3}"#);
        let estimate = estimate_request(LlmApi::ChatCompletions, &body, "gpt-4o", 1000);
        assert_eq!(estimate.output_tokens, 150);
        let body = object(r#"{"messages":[],"max_completion_tokens":20,"max_tokens":50}"#);
        let estimate = estimate_request(LlmApi::ChatCompletions, &body, "gpt-4o", 1000);
        assert_eq!(estimate.output_tokens, 20, "max_completion_tokens wins");
        let body = object(r#"{"prompt":"x","max_tokens":10,"n":2,"best_of":5}"#);
        let estimate = estimate_request(LlmApi::Completions, &body, "gpt-3.5-turbo-instruct", 1);
        assert_eq!(estimate.output_tokens, 50, "best_of choices are billed");
        let body = object(r#"{"messages":[],"max_tokens":10,"best_of":5}"#);
        let estimate = estimate_request(LlmApi::ChatCompletions, &body, "gpt-4o", 1);
        assert_eq!(estimate.output_tokens, 10, "chat has no best_of");
        let body = object(r#"{"input":["a b c","d"]}"#);
        let estimate = estimate_request(LlmApi::Embeddings, &body, "text-embedding-3-small", 1000);
        assert_eq!(estimate.output_tokens, 0);
        assert_eq!(estimate.input_tokens, 4);
    }

    #[test]
    fn parts_tools_and_token_arrays_count() {
        let body = object(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:,"}}]}],
                "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#,
        );
        let with_tools = estimate_request(LlmApi::ChatCompletions, &body, "gpt-4o", 1);
        assert!(
            with_tools.input_tokens > IMAGE_TOKENS + 10,
            "{with_tools:?}"
        );
        let prompt = object(r#"{"prompt":[[1,2,3],[4]]}"#);
        let estimate = estimate_request(LlmApi::Completions, &prompt, "gpt-3.5-turbo-instruct", 5);
        assert_eq!(estimate.input_tokens, 4);
        assert_eq!(estimate.output_tokens, 5);
    }
}
