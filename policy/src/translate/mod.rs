//! Translation between the OpenAI chat completions wire format, which is Gantry's canonical
//! form for LLM calls, and the providers' native formats: requests, JSON replies, streamed
//! replies, tool calls and their results, system prompts, stop reasons, usage and errors.
//!
//! Each provider format has its own module of pure functions over `serde_json::Value`:
//! - [`anthropic`]: the Messages API (`POST /v1/messages`), both ways: as a provider behind an
//!   OpenAI client, and as a front door (an Anthropic client in front of any provider);
//! - [`gemini`]: `generateContent` / `streamGenerateContent?alt=sse`;
//! - [`bedrock`]: Converse / ConverseStream, with SigV4 signing and the AWS event-stream framing;
//! - Azure OpenAI speaks the OpenAI body: only its path and key header differ, which the
//!   provider itself knows ([`Provider::upstream_path`](crate::snapshot::Provider::upstream_path)).
//!
//! [`provider`] dispatches over the formats: one call built from a canonical request, one
//! reply read back. These modules are the translation core; wiring them to providers of these kinds (with
//! failover between targets through an upstream ext_proc filter) is the adapters' part.
//!
//! Rules every module follows:
//! - Requests: what the target accepts is carried over; a canonical field with no equivalent in
//!   the target is dropped when it only tunes (e.g. `logprobs`) and refused with a
//!   [`TranslateError`] naming the field when dropping it would change the answer (e.g. `n > 1`
//!   for a provider that returns one candidate). Unknown top-level fields are not forwarded to a
//!   provider of another format (it would reject them).
//! - Replies: the canonical reply has `id`, `object`, `created`, `model` (the alias the client
//!   asked for), `choices` with `message`/`delta`, `finish_reason` mapped from the provider's
//!   stop reason, and `usage` (`prompt_tokens`, `completion_tokens`, `total_tokens`, and
//!   `prompt_tokens_details.cached_tokens` when the provider reports cache reads).
//! - Streams ([`StreamTranslator`]): bytes in, bytes out, never waiting for more than the
//!   current event; a provider event split across chunks is reassembled.
//! - Errors: the provider's error body becomes an OpenAI error object (`error.message`,
//!   `type`, `param`, `code`) with the same HTTP status.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod provider;

use std::fmt;

/// A request that cannot be expressed in the target format. Becomes a 400 in the client's
/// protocol, naming `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    /// The offending field of the client's request, e.g. `messages[2].content[0].type`.
    pub param: Option<String>,
    pub message: String,
}

impl TranslateError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
        TranslateError {
            param: Some(param.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.param {
            Some(param) => write!(f, "{param}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TranslateError {}

/// Translates one streamed reply, chunk by chunk: the provider's stream in, the client's
/// stream (SSE) out.
pub trait StreamTranslator: Send {
    /// The next bytes of the provider's stream; returns the translated events that are complete
    /// (possibly none). A provider event split across chunks comes out once it is whole.
    fn push(&mut self, chunk: &[u8]) -> Vec<u8>;
    /// The provider's stream has ended: whatever is left to send (for an OpenAI client, the
    /// final usage chunk when asked for, and `data: [DONE]`).
    fn finish(&mut self) -> Vec<u8>;
}
