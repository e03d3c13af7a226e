//! The APIs clients may speak to Gantry. Every LLM call is served in the canonical OpenAI chat
//! completions form; a client of another API (the Anthropic Messages API, `POST /v1/messages`)
//! has its request converted to it on the way in, and every reply (JSON, stream, or error,
//! Gantry's own included) converted back on the way out, so that guards, routing, budgets and
//! every provider work the same behind either API.

use serde_json::Value;

use crate::openai_api::LocalReply;
use crate::translate::{anthropic, StreamTranslator};

/// The API a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrontDoor {
    /// OpenAI's (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`): canonical.
    #[default]
    OpenAi,
    /// Anthropic's Messages API (`POST /v1/messages`).
    Anthropic,
}

/// The canonical path a front door's request is served as.
pub const CANONICAL_CHAT_PATH: &str = "/v1/chat/completions";

impl FrontDoor {
    /// The front door a request path (without query) belongs to, when it is not OpenAI's.
    pub fn for_path(path: &str) -> Option<FrontDoor> {
        (path == anthropic::PATH).then_some(FrontDoor::Anthropic)
    }

    /// The client's request body as a canonical chat request, and the model it asked for; the
    /// error is the reply to send (in the canonical shape: [`FrontDoor::reply`] converts it).
    pub fn canonical_request(self, body: &[u8]) -> Result<(Vec<u8>, String), LocalReply> {
        let bad = |param: Option<&str>, message: String| {
            LocalReply::openai_error(
                400,
                "invalid_request_error",
                "invalid_request",
                param,
                message,
            )
        };
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            bad(
                None,
                format!("request body is not a valid JSON object: {e}"),
            )
        })?;
        let model = value
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let chat = match self {
            FrontDoor::OpenAi => return Ok((body.to_vec(), model)),
            FrontDoor::Anthropic => anthropic::request_to_chat(&value)
                .map_err(|e| bad(e.param.as_deref(), e.message.clone()))?,
        };
        Ok((chat.to_string().into_bytes(), model))
    }

    /// A reply Gantry answers itself, in this front door's shape.
    pub fn reply(self, mut reply: LocalReply) -> LocalReply {
        if self == FrontDoor::Anthropic {
            reply.body = anthropic::error_from_openai(reply.status, &reply.body)
                .to_string()
                .into();
        }
        reply
    }

    /// A whole provider reply (canonical JSON, or an error object) in this front door's
    /// shape; `None` for OpenAI (unchanged).
    pub fn whole_reply(self, status: u16, body: &[u8], client_model: &str) -> Option<Vec<u8>> {
        match self {
            FrontDoor::OpenAi => None,
            FrontDoor::Anthropic => {
                let converted = if (200..300).contains(&status) {
                    serde_json::from_slice::<Value>(body)
                        .ok()
                        .and_then(|chat| anthropic::response_from_chat(&chat, client_model).ok())
                } else {
                    None
                };
                Some(
                    converted
                        .unwrap_or_else(|| anthropic::error_from_openai(status.max(400), body))
                        .to_string()
                        .into_bytes(),
                )
            }
        }
    }

    /// The translator for a streamed (canonical SSE) reply; `None` for OpenAI.
    pub fn stream(self, client_model: &str) -> Option<Box<dyn StreamTranslator + Sync>> {
        match self {
            FrontDoor::OpenAi => None,
            FrontDoor::Anthropic => Some(Box::new(anthropic::StreamFromChat::new(client_model))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_requests_become_canonical_and_replies_go_back() {
        let door = FrontDoor::for_path("/v1/messages").unwrap();
        assert_eq!(FrontDoor::for_path("/v1/chat/completions"), None);
        let (chat, model) = door
            .canonical_request(
                br#"{"model":"claude","max_tokens":64,"system":"be brief","messages":[{"role":"user","content":"hi"}]}"#,
            )
            .unwrap();
        assert_eq!(model, "claude");
        let chat: Value = serde_json::from_slice(&chat).unwrap();
        assert_eq!(chat["messages"][0]["role"], "system");
        assert_eq!(chat["messages"][1]["content"], "hi");

        let reply = door
            .whole_reply(
                200,
                br#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
                "claude",
            )
            .unwrap();
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["type"], "message");
        assert_eq!(reply["content"][0]["text"], "hello");
        assert_eq!(reply["stop_reason"], "end_turn");

        let error = door.reply(LocalReply::openai_error(
            404,
            "invalid_request_error",
            "model_not_found",
            Some("model"),
            "no such model",
        ));
        let error: Value = serde_json::from_slice(&error.body).unwrap();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "not_found_error");

        let (status, bad) = match door.canonical_request(b"{not json") {
            Err(reply) => (reply.status, door.reply(reply)),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(status, 400);
        let bad: Value = serde_json::from_slice(&bad.body).unwrap();
        assert_eq!(bad["error"]["type"], "invalid_request_error");
        assert_eq!(FrontDoor::OpenAi.whole_reply(200, b"x", "m"), None);
    }
}
