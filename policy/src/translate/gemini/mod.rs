//! Google Gemini's `generateContent` / `streamGenerateContent?alt=sse` wire format, behind an
//! OpenAI chat completions client.
//!
//! - [`request_from_chat`]: an OpenAI chat request becomes a `generateContent` body (the model
//!   and the streaming choice go in the [`path`], the key in the [`KEY_HEADER`] header);
//! - [`response_to_chat`]: a `GenerateContentResponse` becomes a `chat.completion`;
//! - [`StreamToChat`]: the `alt=sse` stream (one `GenerateContentResponse` per `data:` event,
//!   text as deltas, function calls whole) becomes `chat.completion.chunk` events;
//! - [`error_to_openai`]: Google's `{"error":{"code","message","status"}}` becomes an OpenAI
//!   error object.
//!
//! What is mapped, dropped and refused is listed on each function. Wire references:
//! <https://ai.google.dev/api/generate-content> (request and response),
//! <https://ai.google.dev/api/caching#Content> (`Content`, `Part`, `Tool`, `Schema`).

mod error;
mod request;
mod response;
mod schema;
mod stream;

pub use error::error_to_openai;
pub use request::request_from_chat;
pub use response::response_to_chat;
pub use stream::StreamToChat;

/// The header Gemini reads the API key from (Gemini also takes a `key` query parameter, which
/// would put the key in URLs and access logs).
pub const KEY_HEADER: &str = "x-goog-api-key";

/// The request path for `upstream_model`: `generateContent`, or `streamGenerateContent` with
/// `alt=sse` (without it Google streams one JSON array instead of server-sent events).
pub fn path(upstream_model: &str, stream: bool) -> String {
    // A model given as its resource name ("models/gemini-2.5-flash") is accepted too.
    let model = upstream_model
        .strip_prefix("models/")
        .unwrap_or(upstream_model);
    if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            path("gemini-2.5-flash", false),
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            path("gemini-2.5-flash", true),
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            path("models/gemini-2.5-pro", false),
            "/v1beta/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(KEY_HEADER, "x-goog-api-key");
    }
}
