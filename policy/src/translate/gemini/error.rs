//! Google API errors → OpenAI error objects.

use serde_json::{json, Value};

/// Translates a Gemini error reply (HTTP `status`, `body`) into an OpenAI error object
/// (`{"error":{"message","type","param","code"}}`) to send with the same status.
///
/// Google's body is `{"error":{"code","message","status","details"}}` (a streaming call without
/// `alt=sse` wraps it in a one-element array; both are read). The type follows the canonical
/// status (<https://cloud.google.com/apis/design/errors#handling_errors>; HTTP status when the
/// body has none): `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `NOT_FOUND` →
/// `invalid_request_error`; `UNAUTHENTICATED`, and an `INVALID_ARGUMENT` whose details give the
/// reason `API_KEY_INVALID` (Gemini answers a wrong key with 400) → `authentication_error`,
/// code `invalid_api_key`; `PERMISSION_DENIED` → `permission_error`; `RESOURCE_EXHAUSTED` →
/// `rate_limit_error`, code `rate_limit_exceeded`; `INTERNAL`, `UNAVAILABLE`,
/// `DEADLINE_EXCEEDED` and other 5xx → `server_error`. The code is otherwise Google's status in
/// lower case (`invalid_argument`, `not_found`, ...). A body that is not Google's shape gives
/// its text (cut to 1000 bytes) as the message.
pub fn error_to_openai(status: u16, body: &[u8]) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|value| match value {
        Value::Array(items) => items.first().and_then(|item| item.get("error")),
        _ => value.get("error"),
    });
    match error.filter(|error| error.is_object()) {
        Some(error) => from_google(error, status),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("Gemini answered HTTP {status}")
            } else {
                format!("Gemini answered HTTP {status}: {}", cut(text, 1000))
            };
            let (kind, code) = classify(status, None, false);
            openai_error(&message, kind, &code)
        }
    }
}

/// An OpenAI error object for a Google `error` object (also used for an error event inside a
/// stream, whose `code` is the HTTP status it stands for).
pub(super) fn from_google(error: &Value, http_status: u16) -> Value {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .filter(|message| !message.is_empty())
        .map_or_else(
            || format!("Gemini answered HTTP {http_status}"),
            str::to_owned,
        );
    let canonical = error.get("status").and_then(Value::as_str);
    let key_invalid = error
        .get("details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details.iter().any(|detail| {
                detail.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID")
            })
        });
    let (kind, code) = classify(http_status, canonical, key_invalid);
    openai_error(&message, kind, &code)
}

/// The HTTP status an in-stream error object stands for (its `code`), else `fallback`.
pub(super) fn http_status_of(error: &Value, fallback: u16) -> u16 {
    error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (400..=599).contains(code))
        .unwrap_or(fallback)
}

fn classify(status: u16, canonical: Option<&str>, key_invalid: bool) -> (&'static str, String) {
    if key_invalid {
        return ("authentication_error", "invalid_api_key".into());
    }
    let canonical = canonical.map_or_else(|| canonical_for(status).to_owned(), str::to_owned);
    let kind = match canonical.as_str() {
        "INVALID_ARGUMENT"
        | "FAILED_PRECONDITION"
        | "OUT_OF_RANGE"
        | "NOT_FOUND"
        | "ALREADY_EXISTS"
        | "ABORTED"
        | "CANCELLED" => "invalid_request_error",
        "UNAUTHENTICATED" => "authentication_error",
        "PERMISSION_DENIED" => "permission_error",
        "RESOURCE_EXHAUSTED" => "rate_limit_error",
        "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "DATA_LOSS" | "UNIMPLEMENTED" => {
            "server_error"
        }
        _ if status >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let code = match canonical.as_str() {
        "UNAUTHENTICATED" => "invalid_api_key".to_owned(),
        "RESOURCE_EXHAUSTED" => "rate_limit_exceeded".to_owned(),
        other => other.to_ascii_lowercase(),
    };
    (kind, code)
}

/// Google's canonical status for an HTTP status, for bodies that do not say.
fn canonical_for(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

fn openai_error(message: &str, kind: &str, code: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
        }
    })
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google(code: u16, status: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"error": {"code": code, "message": message, "status": status}}))
            .unwrap()
    }

    #[test]
    fn canonical_statuses() {
        for (code, status, kind, openai_code) in [
            (
                400,
                "INVALID_ARGUMENT",
                "invalid_request_error",
                "invalid_argument",
            ),
            (
                400,
                "FAILED_PRECONDITION",
                "invalid_request_error",
                "failed_precondition",
            ),
            (
                401,
                "UNAUTHENTICATED",
                "authentication_error",
                "invalid_api_key",
            ),
            (
                403,
                "PERMISSION_DENIED",
                "permission_error",
                "permission_denied",
            ),
            (404, "NOT_FOUND", "invalid_request_error", "not_found"),
            (
                429,
                "RESOURCE_EXHAUSTED",
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            (500, "INTERNAL", "server_error", "internal"),
            (503, "UNAVAILABLE", "server_error", "unavailable"),
            (
                504,
                "DEADLINE_EXCEEDED",
                "server_error",
                "deadline_exceeded",
            ),
        ] {
            let message = format!("{status} happened");
            let error = error_to_openai(code, &google(code, status, &message));
            assert_eq!(
                error,
                json!({"error": {"message": message, "type": kind, "param": null, "code": openai_code}}),
                "{status}"
            );
        }
    }

    #[test]
    fn a_wrong_key_is_an_authentication_error() {
        let body = br#"{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"}
      }
    ]
  }
}"#;
        assert_eq!(
            error_to_openai(400, body),
            json!({"error": {
                "message": "API key not valid. Please pass a valid API key.",
                "type": "authentication_error",
                "param": null,
                "code": "invalid_api_key"
            }})
        );
    }

    #[test]
    fn an_array_wrapped_error() {
        let body = br#"[{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}]"#;
        let error = error_to_openai(429, body);
        assert_eq!(error["error"]["type"], "rate_limit_error");
        assert_eq!(
            error["error"]["message"],
            "Resource has been exhausted (e.g. check quota)."
        );
    }

    #[test]
    fn bodies_that_are_not_google_errors() {
        let error = error_to_openai(502, b"<html>Bad Gateway</html>");
        assert_eq!(
            error,
            json!({"error": {
                "message": "Gemini answered HTTP 502: <html>Bad Gateway</html>",
                "type": "server_error",
                "param": null,
                "code": "internal"
            }})
        );
        let error = error_to_openai(429, b"");
        assert_eq!(error["error"]["message"], "Gemini answered HTTP 429");
        assert_eq!(error["error"]["type"], "rate_limit_error");
        let error = error_to_openai(403, br#"{"error": {"code": 403}}"#);
        assert_eq!(error["error"]["type"], "permission_error");
        assert_eq!(error["error"]["message"], "Gemini answered HTTP 403");
        let long = "é".repeat(2000);
        let error = error_to_openai(500, long.as_bytes());
        assert!(error["error"]["message"].as_str().unwrap().len() < 1100);
    }
}
