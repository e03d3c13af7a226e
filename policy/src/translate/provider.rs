//! One call to a provider of any format, built from a canonical (OpenAI chat completions)
//! request, and its reply read back into the canonical form: the one dispatch over formats
//! that an adapter needs, so that it never matches on provider kinds itself.
//!
//! [`ProviderFormat::call`] gives the path, headers and body to send (credentials included:
//! a key header, or a SigV4 signature over the final body for Bedrock).
//! [`ProviderFormat::reply`] reads a whole reply (JSON, or an error of any status) and
//! [`ProviderFormat::stream`] gives the translator for a streamed one.

use std::time::SystemTime;

use serde_json::Value;

use super::bedrock::{self, AwsCredentials};
use super::{anthropic, gemini, StreamTranslator, TranslateError};

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderFormat {
    /// OpenAI chat completions (and every compatible server): nothing to translate.
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

/// How Gantry authenticates to a provider.
#[derive(Clone)]
pub enum ProviderCredential {
    None,
    /// An API key, sent the format's way (`Authorization: Bearer`, `x-api-key`,
    /// `x-goog-api-key`).
    ApiKey(String),
    /// AWS credentials for SigV4, with the region the endpoint is in.
    Aws {
        credentials: AwsCredentials,
        region: String,
    },
}

impl std::fmt::Debug for ProviderCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderCredential::None => f.write_str("None"),
            ProviderCredential::ApiKey(_) => f.write_str("ApiKey(..)"),
            ProviderCredential::Aws { region, .. } => write!(f, "Aws {{ region: {region:?}, .. }}"),
        }
    }
}

/// A request ready to send: relative to the provider's endpoint (whose base path goes in
/// front of `path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCall {
    /// Path and query.
    pub path: String,
    /// Headers to set, lower-case names (`content-type`, version headers, credentials).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The reply will be streamed.
    pub stream: bool,
}

/// A reply in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalReply {
    pub status: u16,
    /// A `chat.completion` object, or an OpenAI error object.
    pub body: Vec<u8>,
}

impl ProviderFormat {
    /// The call for `chat` (a canonical chat completions request) to `upstream_model`.
    /// `host` is the `Host` the request will carry (signed for Bedrock), `now` the signing
    /// time.
    pub fn call(
        self,
        chat: &Value,
        upstream_model: &str,
        credential: &ProviderCredential,
        host: &str,
        now: SystemTime,
    ) -> Result<ProviderCall, TranslateError> {
        let stream = chat.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        let key = match credential {
            ProviderCredential::ApiKey(key) => Some(key.as_str()),
            _ => None,
        };
        let (path, body) = match self {
            ProviderFormat::OpenAi => {
                let mut body = chat.clone();
                if let Some(object) = body.as_object_mut() {
                    object.insert("model".into(), Value::from(upstream_model));
                }
                if let Some(key) = key {
                    headers.push(("authorization".into(), format!("Bearer {key}")));
                }
                ("/v1/chat/completions".to_string(), body)
            }
            ProviderFormat::Anthropic => {
                headers.push((anthropic::VERSION_HEADER.into(), anthropic::VERSION.into()));
                if let Some(key) = key {
                    headers.push((anthropic::API_KEY_HEADER.into(), key.to_string()));
                }
                let body = anthropic::request_from_chat(chat, upstream_model)?;
                (anthropic::PATH.to_string(), body)
            }
            ProviderFormat::Gemini => {
                if let Some(key) = key {
                    headers.push((gemini::KEY_HEADER.into(), key.to_string()));
                }
                let body = gemini::request_from_chat(chat)?;
                (gemini::path(upstream_model, stream), body)
            }
            ProviderFormat::Bedrock => {
                let body = bedrock::request_from_chat(chat)?;
                (bedrock::path(upstream_model, stream), body)
            }
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| TranslateError::new("messages", format!("cannot encode: {e}")))?;
        if let ProviderCredential::Aws {
            credentials,
            region,
        } = credential
        {
            let signed = bedrock::sign(
                "POST",
                host,
                &path,
                &headers,
                &body,
                region,
                bedrock::SIGNING_SERVICE,
                credentials,
                now,
            );
            headers.extend(signed);
        }
        Ok(ProviderCall {
            path,
            headers,
            body,
            stream,
        })
    }

    /// A whole (not streamed) reply in canonical form: a 2xx body becomes a
    /// `chat.completion` answering `client_model`; any other status keeps its status with an
    /// OpenAI error object. `error_type` is Bedrock's `x-amzn-errortype` header.
    pub fn reply(
        self,
        status: u16,
        body: &[u8],
        error_type: Option<&str>,
        client_model: &str,
    ) -> CanonicalReply {
        let success = (200..300).contains(&status);
        let translated: Result<Value, String> = match (self, success) {
            (ProviderFormat::OpenAi, _) => {
                return CanonicalReply {
                    status,
                    body: body.to_vec(),
                }
            }
            (ProviderFormat::Anthropic, false) => Ok(anthropic::error_to_openai(status, body)),
            (ProviderFormat::Gemini, false) => Ok(gemini::error_to_openai(status, body)),
            (ProviderFormat::Bedrock, false) => {
                Ok(bedrock::error_to_openai(status, body, error_type))
            }
            (format, true) => match serde_json::from_slice::<Value>(body) {
                Err(e) => Err(format!("the provider's reply is not JSON ({e})")),
                Ok(value) => match format {
                    ProviderFormat::Anthropic => anthropic::response_to_chat(&value, client_model),
                    ProviderFormat::Gemini => gemini::response_to_chat(&value, client_model),
                    _ => bedrock::response_to_chat(&value, client_model),
                }
                .map_err(|e| format!("the provider's reply cannot be read: {e}")),
            },
        };
        match translated {
            Ok(value) => CanonicalReply {
                status,
                body: value.to_string().into_bytes(),
            },
            Err(message) => CanonicalReply {
                status: 502,
                body: serde_json::json!({"error": {
                    "message": message,
                    "type": "upstream_error",
                    "param": null,
                    "code": "bad_upstream_reply",
                }})
                .to_string()
                .into_bytes(),
            },
        }
    }

    /// The translator for a streamed 2xx reply (`None` for OpenAI: it is already canonical).
    pub fn stream(
        self,
        client_model: &str,
        include_usage: bool,
    ) -> Option<Box<dyn StreamTranslator>> {
        match self {
            ProviderFormat::OpenAi => None,
            ProviderFormat::Anthropic => Some(Box::new(anthropic::StreamToChat::new(
                client_model,
                include_usage,
            ))),
            ProviderFormat::Gemini => Some(Box::new(gemini::StreamToChat::new(
                client_model,
                include_usage,
            ))),
            ProviderFormat::Bedrock => Some(Box::new(bedrock::StreamToChat::new(
                client_model,
                include_usage,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(stream: bool) -> Value {
        json!({
            "model": "alias",
            "stream": stream,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_tokens": 50,
        })
    }

    #[test]
    fn each_format_gets_its_path_headers_and_body() {
        let key = ProviderCredential::ApiKey("k".into());
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let call = ProviderFormat::OpenAi
            .call(&chat(false), "gpt-4o", &key, "api.openai.com", now)
            .unwrap();
        assert_eq!(call.path, "/v1/chat/completions");
        assert!(call
            .headers
            .contains(&("authorization".into(), "Bearer k".into())));
        let body: Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body["model"], "gpt-4o");

        let call = ProviderFormat::Anthropic
            .call(&chat(true), "claude-x", &key, "api.anthropic.com", now)
            .unwrap();
        assert_eq!((call.path.as_str(), call.stream), ("/v1/messages", true));
        assert!(call.headers.contains(&("x-api-key".into(), "k".into())));
        assert!(call
            .headers
            .contains(&("anthropic-version".into(), "2023-06-01".into())));
        let body: Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(
            (body["model"].as_str(), body["system"].as_str()),
            (Some("claude-x"), Some("be brief"))
        );

        let call = ProviderFormat::Gemini
            .call(
                &chat(true),
                "gemini-2.5-flash",
                &key,
                "generativelanguage.googleapis.com",
                now,
            )
            .unwrap();
        assert_eq!(
            call.path,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert!(call
            .headers
            .contains(&("x-goog-api-key".into(), "k".into())));

        let aws = ProviderCredential::Aws {
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            },
            region: "us-east-1".into(),
        };
        let call = ProviderFormat::Bedrock
            .call(
                &chat(false),
                "anthropic.claude-3-haiku-20240307-v1:0",
                &aws,
                "bedrock-runtime.us-east-1.amazonaws.com",
                now,
            )
            .unwrap();
        assert_eq!(
            call.path,
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        let authorization = call
            .headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str())
            .unwrap();
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request"
            ),
            "{authorization}"
        );
        assert!(call.headers.iter().any(|(name, _)| name == "x-amz-date"));

        // A request a format cannot express is refused, naming the field.
        let mut two = chat(false);
        two["n"] = json!(2);
        let err = ProviderFormat::Anthropic
            .call(&two, "claude-x", &key, "h", now)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("n"));
    }

    #[test]
    fn replies_and_errors_come_back_canonical() {
        let reply = ProviderFormat::Anthropic.reply(
            200,
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":2}}"#,
            None,
            "alias",
        );
        assert_eq!(reply.status, 200);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "hello");
        assert_eq!(body["model"], "alias");
        assert_eq!(body["usage"]["total_tokens"], 7);

        let reply = ProviderFormat::Anthropic.reply(
            429,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
            None,
            "alias",
        );
        assert_eq!(reply.status, 429);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slow down"));

        let reply = ProviderFormat::Gemini.reply(200, b"<html>", None, "alias");
        assert_eq!(reply.status, 502);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "bad_upstream_reply");

        let untouched = ProviderFormat::OpenAi.reply(500, b"anything", None, "alias");
        assert_eq!(untouched.body, b"anything");
        assert!(ProviderFormat::OpenAi.stream("alias", true).is_none());
        assert!(ProviderFormat::Bedrock.stream("alias", true).is_some());
    }
}
