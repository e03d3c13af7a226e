//! Error bodies both ways: Anthropic's `{"type":"error","error":{"type","message"}}` and
//! OpenAI's `{"error":{"message","type","param","code"}}`. The HTTP status is kept by the
//! caller; it also decides the type when the body does not.
//! Anthropic's error types: <https://platform.claude.com/docs/en/api/errors>.

use serde_json::{json, Value};

/// How much of a body that is not an error object is quoted in the message.
const QUOTED_BODY_CHARS: usize = 200;

/// An Anthropic error body (any status) → an OpenAI error object. The OpenAI `type`/`code`
/// for each Anthropic type:
///
/// | Anthropic `error.type` | OpenAI `type` | `code` |
/// |---|---|---|
/// | `invalid_request_error` | `invalid_request_error` | `null` |
/// | `authentication_error` | `invalid_request_error` | `invalid_api_key` |
/// | `permission_error` | `invalid_request_error` | `permission_denied` |
/// | `not_found_error` | `invalid_request_error` | `not_found` |
/// | `request_too_large` | `invalid_request_error` | `request_too_large` |
/// | `billing_error` | `insufficient_quota` | `insufficient_quota` |
/// | `rate_limit_error` | `requests` | `rate_limit_exceeded` |
/// | `api_error` | `server_error` | `null` |
/// | `timeout_error` | `server_error` | `timeout` |
/// | `overloaded_error` | `server_error` | `overloaded` |
///
/// An unknown type, or a body that is not Anthropic JSON, takes its type from the status
/// (`invalid_request_error` for 4xx, `server_error` otherwise); the message then names the
/// status and quotes the start of the body.
pub fn error_to_openai(status: u16, body: &[u8]) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|body| body.get("error"));
    let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str);
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
    match message {
        Some(message) => openai_error(kind.unwrap_or(""), status, message),
        None => openai_error("", status, &unreadable_body(status, body)),
    }
}

/// The OpenAI error object for an Anthropic error type (also used for `error` events in a
/// stream, where there is no status: pass 0).
pub(super) fn openai_error(kind: &str, status: u16, message: &str) -> Value {
    let (openai_type, code): (&str, Option<&str>) = match kind {
        "invalid_request_error" => ("invalid_request_error", None),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "permission_error" => ("invalid_request_error", Some("permission_denied")),
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "billing_error" => ("insufficient_quota", Some("insufficient_quota")),
        "rate_limit_error" => ("requests", Some("rate_limit_exceeded")),
        "api_error" => ("server_error", None),
        "timeout_error" => ("server_error", Some("timeout")),
        "overloaded_error" => ("server_error", Some("overloaded")),
        _ if (400..500).contains(&status) => ("invalid_request_error", None),
        _ => ("server_error", None),
    };
    json!({
        "error": {
            "message": message,
            "type": openai_type,
            "param": null,
            "code": code,
        }
    })
}

fn unreadable_body(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("the provider answered HTTP {status}");
    }
    let quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
    let ellipsis = if quoted.len() < text.len() { "…" } else { "" };
    format!("the provider answered HTTP {status}: {quoted}{ellipsis}")
}

/// An OpenAI error object (any status) → an Anthropic error body. The Anthropic type follows
/// the status, as Anthropic's own do (its SDKs pick the exception by status): 400
/// `invalid_request_error`, 401 `authentication_error`, 402 `billing_error`, 403
/// `permission_error`, 404 `not_found_error`, 413 `request_too_large`, 429
/// `rate_limit_error`, 503 and 529 `overloaded_error`, 504 `timeout_error`, other 4xx
/// `invalid_request_error`, anything else `api_error`. OpenAI's `param` prefixes the message
/// (Anthropic errors have no such field).
pub fn error_from_openai(status: u16, body: &[u8]) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|body| body.get("error"));
    let message = match error {
        Some(Value::String(message)) => message.clone(),
        Some(error) => match error.get("message").and_then(Value::as_str) {
            Some(message) => match error.get("param").and_then(Value::as_str) {
                Some(param) if !param.is_empty() && !message.contains(param) => {
                    format!("{param}: {message}")
                }
                _ => message.to_owned(),
            },
            None => unreadable_body(status, body),
        },
        None => unreadable_body(status, body),
    };
    anthropic_error(anthropic_type(status), &message)
}

fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

pub(super) fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({ "type": "error", "error": { "type": kind, "message": message } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_errors_become_openai_errors() {
        let cases = [
            (
                400,
                "invalid_request_error",
                "invalid_request_error",
                Value::Null,
            ),
            (
                401,
                "authentication_error",
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            (
                403,
                "permission_error",
                "invalid_request_error",
                json!("permission_denied"),
            ),
            (
                404,
                "not_found_error",
                "invalid_request_error",
                json!("not_found"),
            ),
            (
                413,
                "request_too_large",
                "invalid_request_error",
                json!("request_too_large"),
            ),
            (
                429,
                "rate_limit_error",
                "requests",
                json!("rate_limit_exceeded"),
            ),
            (500, "api_error", "server_error", Value::Null),
            (529, "overloaded_error", "server_error", json!("overloaded")),
        ];
        for (status, kind, openai_type, code) in cases {
            let body = json!({
                "type": "error",
                "error": {"type": kind, "message": format!("{kind} happened")},
                "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"
            });
            let out = error_to_openai(status, body.to_string().as_bytes());
            assert_eq!(
                out,
                json!({"error": {"message": format!("{kind} happened"), "type": openai_type, "param": null, "code": code}}),
                "{kind}"
            );
        }
    }

    #[test]
    fn bodies_that_are_not_anthropic_errors_still_name_the_status() {
        let html = error_to_openai(502, b"<html><body>Bad gateway</body></html>");
        assert_eq!(html["error"]["type"], "server_error");
        let message = html["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains("502") && message.contains("Bad gateway"),
            "{message}"
        );
        let empty = error_to_openai(404, b"");
        assert_eq!(empty["error"]["type"], "invalid_request_error");
        assert_eq!(empty["error"]["message"], "the provider answered HTTP 404");
        let long = error_to_openai(500, "x".repeat(1000).as_bytes());
        assert!(long["error"]["message"]
            .as_str()
            .is_some_and(|m| m.len() < 300));
        let unknown = error_to_openai(
            409,
            br#"{"type":"error","error":{"type":"conflict_error","message":"busy"}}"#,
        );
        assert_eq!(unknown["error"]["type"], "invalid_request_error");
        assert_eq!(unknown["error"]["message"], "busy");
    }

    #[test]
    fn openai_errors_become_anthropic_errors() {
        let body = json!({"error": {
            "message": "Incorrect API key provided: sk-abc. You can find your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"
        }});
        let out = error_from_openai(401, body.to_string().as_bytes());
        assert_eq!(out["type"], "error");
        assert_eq!(out["error"]["type"], "authentication_error");
        assert!(out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Incorrect API key")));

        let with_param = json!({"error": {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error", "param": "temperature", "code": null}});
        assert_eq!(
            error_from_openai(400, with_param.to_string().as_bytes())["error"],
            json!({"type": "invalid_request_error", "message": "Invalid value for 'temperature'."})
        );
        let other_param = json!({"error": {"message": "Too long.", "type": "invalid_request_error", "param": "messages", "code": null}});
        assert_eq!(
            error_from_openai(400, other_param.to_string().as_bytes())["error"]["message"],
            "messages: Too long."
        );
        for (status, kind) in [
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
            (422, "invalid_request_error"),
        ] {
            let out = error_from_openai(
                status,
                br#"{"error":{"message":"m","type":"x","param":null,"code":null}}"#,
            );
            assert_eq!(out["error"]["type"], kind, "{status}");
        }
        let raw = error_from_openai(503, b"upstream connect error");
        assert_eq!(raw["error"]["type"], "overloaded_error");
        assert!(raw["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("503")));
    }
}
