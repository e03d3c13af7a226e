//! MCP protocol facts as code: the revisions and the era each belongs to, the header and `_meta`
//! names, the JSON-RPC error codes, the `=?base64?…?=` header-value codec, the 2026-07-28
//! header-against-body validation, and small JSON-RPC message helpers.
//!
//! The rules mirror the official Python SDK (mcp 2.3.0, `mcp/shared/inbound.py` and
//! `mcp_types/version.py`), so the gateway accepts and rejects what a conforming server does.

use base64::engine::general_purpose::STANDARD as BASE64_STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

/// 2024-10-07: pre-release revision the TS SDK 1.x still accepts; treated as handshake era.
pub const V_2024_10_07: &str = "2024-10-07";
/// 2024-11-05: stdio and HTTP+SSE.
pub const V_2024_11_05: &str = "2024-11-05";
/// 2025-03-26: Streamable HTTP, sessions, batching. Also what a request without an
/// `MCP-Protocol-Version` header means.
pub const V_2025_03_26: &str = "2025-03-26";
/// 2025-06-18: batching removed, `MCP-Protocol-Version` required after `initialize`.
pub const V_2025_06_18: &str = "2025-06-18";
/// 2025-11-25: the last handshake-era revision.
pub const V_2025_11_25: &str = "2025-11-25";
/// 2026-07-28: stateless, per-request `_meta` envelope, routing headers.
pub const V_2026_07_28: &str = "2026-07-28";

/// Revisions negotiated through `initialize`, oldest to newest.
pub const HANDSHAKE_VERSIONS: &[&str] = &[V_2024_11_05, V_2025_03_26, V_2025_06_18, V_2025_11_25];
/// Handshake-era revisions we accept but never advertise.
pub const LEGACY_ACCEPTED_VERSIONS: &[&str] = &[V_2024_10_07];
/// Stateless (per-request envelope) revisions, oldest to newest.
pub const MODERN_VERSIONS: &[&str] = &[V_2026_07_28];
/// Newest revision reachable through `initialize`.
pub const LATEST_HANDSHAKE_VERSION: &str = V_2025_11_25;
/// Newest stateless revision.
pub const LATEST_MODERN_VERSION: &str = V_2026_07_28;
/// The revision a request without an `MCP-Protocol-Version` header is taken to speak.
pub const VERSION_WHEN_HEADER_ABSENT: &str = V_2025_03_26;

/// HTTP header names, lowercase (HTTP/2 and Envoy spell them so).
pub mod header {
    /// `MCP-Protocol-Version`: picks the era; required after `initialize` and on every
    /// 2026-07-28 request.
    pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
    /// `Mcp-Session-Id`: handshake-era session handle.
    pub const SESSION_ID: &str = "mcp-session-id";
    /// `Mcp-Method`: mirrors the JSON-RPC `method` (2026-07-28).
    pub const METHOD: &str = "mcp-method";
    /// `Mcp-Name`: mirrors `params.name` or `params.uri` (2026-07-28).
    pub const NAME: &str = "mcp-name";
    /// Prefix of the `Mcp-Param-{Name}` headers declared by `x-mcp-header` schema annotations.
    pub const PARAM_PREFIX: &str = "mcp-param-";
}

/// Reserved `_meta` keys of the 2026-07-28 envelope.
pub mod meta_key {
    /// Request: the revision this request speaks (must equal the `MCP-Protocol-Version` header).
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    /// Request: the client's capabilities for this request (required).
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    /// Request: the client `Implementation` (should be present).
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    /// Result: the server `Implementation`; self-reported, display only.
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
    /// Request: the log level wanted for this request.
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    /// Notification: the `subscriptions/listen` stream a notification belongs to.
    pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
}

/// JSON-RPC error codes used by MCP.
pub mod error_code {
    /// The body is not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON is not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad params (also: unknown tool, bad cursor, missing envelope keys, resource not found in
    /// 2026-07-28).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Generic implementation-defined server error.
    pub const SERVER_ERROR: i64 = -32000;
    /// 2026-07-28: a routing header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28: the request lacks a client capability the server needs (`data.requiredCapabilities`).
    pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
    /// 2026-07-28: unknown revision (`data{supported, requested}`).
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// HTTP status the SDK sends with a JSON-RPC error code; `None` means the caller's default
/// (normally 200).
pub fn http_status_for_error_code(code: i64) -> Option<u16> {
    match code {
        error_code::PARSE_ERROR
        | error_code::INVALID_REQUEST
        | error_code::INVALID_PARAMS
        | error_code::HEADER_MISMATCH
        | error_code::MISSING_REQUIRED_CLIENT_CAPABILITY
        | error_code::UNSUPPORTED_PROTOCOL_VERSION => Some(400),
        error_code::METHOD_NOT_FOUND => Some(404),
        _ => None,
    }
}

/// Which lifecycle a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    /// `initialize` handshake and (over HTTP) `Mcp-Session-Id` sessions: 2024-11-05 … 2025-11-25.
    Handshake,
    /// Per-request `_meta` envelope, no sessions: 2026-07-28.
    Stateless,
}

/// An `MCP-Protocol-Version` we do not serve. Answer it with
/// [`error_code::UNSUPPORTED_PROTOCOL_VERSION`] and [`UnsupportedVersion::error_data`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported MCP protocol version '{}' (supported: {})", clip(.requested, 64), .supported.join(", "))]
pub struct UnsupportedVersion {
    /// The version the client asked for, as sent.
    pub requested: String,
    /// Every revision we advertise, handshake era first. Listing the handshake revisions lets a
    /// dual-era client fall back to `initialize` instead of giving up.
    pub supported: Vec<&'static str>,
}

impl UnsupportedVersion {
    /// `data` of the -32022 error: `{"supported": [...], "requested": "..."}`.
    pub fn error_data(&self) -> Value {
        let mut data = Map::new();
        data.insert(
            "supported".to_string(),
            Value::Array(self.supported.iter().map(|v| Value::from(*v)).collect()),
        );
        data.insert(
            "requested".to_string(),
            Value::from(self.requested.as_str()),
        );
        Value::Object(data)
    }
}

/// The revisions we advertise, oldest to newest: handshake era, then stateless.
pub fn supported_versions() -> Vec<&'static str> {
    HANDSHAKE_VERSIONS
        .iter()
        .chain(MODERN_VERSIONS)
        .copied()
        .collect()
}

/// Whether `version` is a revision we accept in any era (including the legacy `2024-10-07`).
pub fn is_known_version(version: &str) -> bool {
    is_handshake_version(version) || MODERN_VERSIONS.contains(&version)
}

/// Whether `version` is a handshake-era revision we accept.
pub fn is_handshake_version(version: &str) -> bool {
    HANDSHAKE_VERSIONS.contains(&version) || LEGACY_ACCEPTED_VERSIONS.contains(&version)
}

/// The era named by an `MCP-Protocol-Version` header value. Absent means 2025-03-26, so
/// handshake era. Any present value that is neither a known handshake revision nor a listed
/// stateless one (including the empty string) is unsupported, as in the SDK.
pub fn era_of_header(value: Option<&str>) -> Result<Era, UnsupportedVersion> {
    match value {
        None => Ok(Era::Handshake),
        Some(version) if is_handshake_version(version) => Ok(Era::Handshake),
        Some(version) if MODERN_VERSIONS.contains(&version) => Ok(Era::Stateless),
        Some(version) => Err(UnsupportedVersion {
            requested: version.to_string(),
            supported: supported_versions(),
        }),
    }
}

/// The `protocolVersion` to answer an `initialize` with: the requested one when it is a known
/// handshake-era revision, otherwise [`LATEST_HANDSHAKE_VERSION`] (the client then decides
/// whether it can speak that).
pub fn initialize_response_version(requested: &str) -> &'static str {
    HANDSHAKE_VERSIONS
        .iter()
        .chain(LEGACY_ACCEPTED_VERSIONS)
        .find(|known| **known == requested)
        .copied()
        .unwrap_or(LATEST_HANDSHAKE_VERSION)
}

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";

/// Why a sentinel-encoded header value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderDecodeError {
    /// The payload is not standard, padded base64.
    #[error("sentinel payload is not valid base64")]
    InvalidBase64,
    /// Valid base64, but not the canonical encoding of its bytes (e.g. non-zero trailing bits).
    #[error("sentinel payload is not canonical base64")]
    NonCanonicalBase64,
    /// The decoded bytes are not UTF-8.
    #[error("sentinel payload is not UTF-8")]
    InvalidUtf8,
}

fn sentinel_payload(raw: &str) -> Option<&str> {
    if raw.len() < SENTINEL_PREFIX.len() + SENTINEL_SUFFIX.len() {
        return None;
    }
    raw.strip_prefix(SENTINEL_PREFIX)?
        .strip_suffix(SENTINEL_SUFFIX)
}

/// Decodes an `Mcp-Name` / `Mcp-Param-*` header value: `=?base64?<standard padded base64 of
/// UTF-8>?=` is unwrapped, anything else is returned as is. A malformed sentinel is an error,
/// so a corrupt header never matches a body value by accident.
pub fn decode_header_value(raw: &str) -> Result<String, HeaderDecodeError> {
    let Some(payload) = sentinel_payload(raw) else {
        return Ok(raw.to_string());
    };
    let bytes = BASE64_STANDARD
        .decode(payload)
        .map_err(|_| HeaderDecodeError::InvalidBase64)?;
    if BASE64_STANDARD.encode(&bytes) != payload {
        return Err(HeaderDecodeError::NonCanonicalBase64);
    }
    String::from_utf8(bytes).map_err(|_| HeaderDecodeError::InvalidUtf8)
}

/// Encodes a value for an `Mcp-Name` / `Mcp-Param-*` header. Printable ASCII (0x20–0x7E)
/// without leading or trailing spaces passes verbatim; anything else, and anything that already
/// looks like the sentinel, is wrapped as `=?base64?…?=` (standard alphabet, padded).
pub fn encode_header_value(value: &str) -> String {
    let printable_ascii = value.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let no_edge_spaces = !value.starts_with(' ') && !value.ends_with(' ');
    if printable_ascii && no_edge_spaces && sentinel_payload(value).is_none() {
        return value.to_string();
    }
    format!(
        "{SENTINEL_PREFIX}{}{SENTINEL_SUFFIX}",
        BASE64_STANDARD.encode(value.as_bytes())
    )
}

/// Which request param `Mcp-Name` mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameField {
    /// `params.name` (`tools/call`, `prompts/get`).
    Name,
    /// `params.uri` (`resources/read`).
    Uri,
}

impl NameField {
    /// The param key.
    pub fn as_str(self) -> &'static str {
        match self {
            NameField::Name => "name",
            NameField::Uri => "uri",
        }
    }
}

impl std::fmt::Display for NameField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The param `Mcp-Name` mirrors for `method`, or `None` when the method carries no `Mcp-Name`.
pub fn name_header_target(method: &str) -> Option<NameField> {
    match method {
        "tools/call" | "prompts/get" => Some(NameField::Name),
        "resources/read" => Some(NameField::Uri),
        _ => None,
    }
}

/// A 2026-07-28 routing header that disagrees with the body. Answer with
/// [`error_code::HEADER_MISMATCH`] (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderMismatch {
    /// No `MCP-Protocol-Version` header.
    #[error("MCP-Protocol-Version header is missing")]
    MissingProtocolVersion,
    /// The header differs from `params._meta["io.modelcontextprotocol/protocolVersion"]`
    /// (`body` is `None` when that key is absent or not a string).
    #[error("MCP-Protocol-Version '{}' does not match params._meta protocolVersion {}", clip(.header, 64), quoted_or_absent(.body.as_deref()))]
    ProtocolVersion {
        /// The header value.
        header: String,
        /// The envelope value.
        body: Option<String>,
    },
    /// No `Mcp-Method` header.
    #[error("Mcp-Method header is missing")]
    MissingMethod,
    /// `Mcp-Method` differs from the body's `method`.
    #[error("Mcp-Method '{}' does not match method {}", clip(.header, 64), quoted_or_absent(.body.as_deref()))]
    Method {
        /// The header value.
        header: String,
        /// The body's `method`, `None` when absent or not a string.
        body: Option<String>,
    },
    /// No `Mcp-Name` header although the body names its target.
    #[error("Mcp-Name header is missing (params.{field} is '{}')", clip(.body, 64))]
    MissingName {
        /// The mirrored param.
        field: NameField,
        /// The body's value (JSON text if it is not a string).
        body: String,
    },
    /// `Mcp-Name` (decoded) differs from the mirrored param.
    #[error("Mcp-Name '{}' does not match params.{field} '{}'", clip(.header, 64), clip(.body, 64))]
    Name {
        /// The decoded header value.
        header: String,
        /// The mirrored param.
        field: NameField,
        /// The body's value (JSON text if it is not a string).
        body: String,
    },
    /// `Mcp-Name` carries a sentinel that does not decode.
    #[error("Mcp-Name carries a malformed base64 sentinel: {0}")]
    MalformedName(HeaderDecodeError),
    /// A routing header was sent more than once (see [`find_duplicated_routing_header`]).
    #[error("{0} header appears more than once")]
    Duplicated(&'static str),
}

impl HeaderMismatch {
    /// The JSON-RPC error code to answer with.
    pub fn error_code(&self) -> i64 {
        error_code::HEADER_MISMATCH
    }
}

/// The first routing header (`mcp-protocol-version`, `mcp-method`, `mcp-name`) that occurs more
/// than once among raw header names; readers of the first and of the last copy would disagree.
pub fn find_duplicated_routing_header<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Option<&'static str> {
    let routing = [header::PROTOCOL_VERSION, header::METHOD, header::NAME];
    let mut seen = [false; 3];
    for name in names {
        if let Some(index) = routing
            .iter()
            .position(|known| name.eq_ignore_ascii_case(known))
        {
            if seen[index] {
                return Some(routing[index]);
            }
            seen[index] = true;
        }
    }
    None
}

/// Checks a 2026-07-28 request's routing headers against its body, in the SDK's order:
/// `MCP-Protocol-Version` equals the envelope's protocol version, `Mcp-Method` equals `method`,
/// and for `tools/call`, `prompts/get` and `resources/read` `Mcp-Name` (after sentinel decoding)
/// equals `params.name` / `params.uri` when the body carries that param.
///
/// `headers` looks a header up by lowercase name. Only requests are checked: a notification
/// (no `id`) has no defined header requirements at this revision and passes, and anything that
/// is not a request (responses, batches, junk) is left to [`classify`]. Whether the envelope
/// itself is complete (-32602 in the SDK) is the caller's check; an absent envelope version is
/// reported here as a protocol-version mismatch.
pub fn validate_stateless_headers(
    headers: &impl Fn(&str) -> Option<String>,
    body: &Value,
) -> Result<(), HeaderMismatch> {
    let MessageKind::Request { method, .. } = classify(body) else {
        return Ok(());
    };
    let params = body.get("params");

    let version_header =
        headers(header::PROTOCOL_VERSION).ok_or(HeaderMismatch::MissingProtocolVersion)?;
    let envelope_version = params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(meta_key::PROTOCOL_VERSION))
        .and_then(Value::as_str);
    if envelope_version != Some(version_header.as_str()) {
        return Err(HeaderMismatch::ProtocolVersion {
            header: version_header,
            body: envelope_version.map(str::to_string),
        });
    }

    let method_header = headers(header::METHOD).ok_or(HeaderMismatch::MissingMethod)?;
    if method_header != method {
        return Err(HeaderMismatch::Method {
            header: method_header,
            body: Some(method.to_string()),
        });
    }

    let Some(field) = name_header_target(method) else {
        return Ok(());
    };
    let body_value = match params.and_then(|p| p.get(field.as_str())) {
        None | Some(Value::Null) => return Ok(()),
        Some(value) => value,
    };
    let body_text = match body_value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let Some(raw_name) = headers(header::NAME) else {
        return Err(HeaderMismatch::MissingName {
            field,
            body: body_text,
        });
    };
    let decoded = decode_header_value(&raw_name).map_err(HeaderMismatch::MalformedName)?;
    if body_value.as_str() != Some(decoded.as_str()) {
        return Err(HeaderMismatch::Name {
            header: decoded,
            field,
            body: body_text,
        });
    }
    Ok(())
}

/// What a JSON-RPC message is.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind<'a> {
    /// Has `method` and an `id` (a string or an integer).
    Request {
        /// The id, a string or integer JSON value.
        id: &'a Value,
        /// The method.
        method: &'a str,
    },
    /// Has `method` and no `id`.
    Notification {
        /// The method.
        method: &'a str,
    },
    /// Has `result` and an `id`.
    Response {
        /// The id of the request answered.
        id: &'a Value,
    },
    /// Has `error`; the id is `None` when null or absent (e.g. a parse error).
    ErrorResponse {
        /// The id of the request answered, if any.
        id: Option<&'a Value>,
    },
    /// A non-empty JSON array (2025-03-26 batching); classify each element separately.
    Batch(&'a [Value]),
    /// Not a JSON-RPC 2.0 message; the reason is short and fixed.
    Invalid(&'static str),
}

fn is_request_id(value: &Value) -> bool {
    match value {
        Value::String(_) => true,
        Value::Number(number) => number.is_i64() || number.is_u64(),
        _ => false,
    }
}

/// Classifies a decoded JSON-RPC message. Ids must be strings or integers (MCP's `RequestId`);
/// `params`, when present, must be an object or null.
pub fn classify(message: &Value) -> MessageKind<'_> {
    let object = match message {
        Value::Array(items) if items.is_empty() => return MessageKind::Invalid("empty batch"),
        Value::Array(items) => return MessageKind::Batch(items),
        Value::Object(object) => object,
        _ => return MessageKind::Invalid("not a JSON object"),
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return MessageKind::Invalid("jsonrpc must be \"2.0\"");
    }
    if let Some(method) = object.get("method") {
        let Some(method) = method.as_str() else {
            return MessageKind::Invalid("method must be a string");
        };
        if object.contains_key("result") || object.contains_key("error") {
            return MessageKind::Invalid("a request cannot carry result or error");
        }
        if !matches!(
            object.get("params"),
            None | Some(Value::Object(_)) | Some(Value::Null)
        ) {
            return MessageKind::Invalid("params must be an object");
        }
        return match object.get("id") {
            None => MessageKind::Notification { method },
            Some(id) if is_request_id(id) => MessageKind::Request { id, method },
            Some(_) => MessageKind::Invalid("id must be a string or an integer"),
        };
    }
    match (object.get("result"), object.get("error")) {
        (Some(_), Some(_)) => MessageKind::Invalid("a response cannot carry both result and error"),
        (Some(_), None) => match object.get("id") {
            Some(id) if is_request_id(id) => MessageKind::Response { id },
            _ => MessageKind::Invalid("id must be a string or an integer"),
        },
        (None, Some(error)) => {
            if !error.is_object() {
                return MessageKind::Invalid("error must be an object");
            }
            match object.get("id") {
                None | Some(Value::Null) => MessageKind::ErrorResponse { id: None },
                Some(id) if is_request_id(id) => MessageKind::ErrorResponse { id: Some(id) },
                Some(_) => MessageKind::Invalid("id must be a string or an integer"),
            }
        }
        (None, None) => MessageKind::Invalid("neither a request, a notification nor a response"),
    }
}

/// A JSON-RPC error response; `id` is null when `None`, and `data` is omitted when `None`.
pub fn error_response(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".to_string(), Value::from(code));
    error.insert("message".to_string(), Value::from(message));
    if let Some(data) = data {
        error.insert("data".to_string(), data);
    }
    let mut response = Map::new();
    response.insert("jsonrpc".to_string(), Value::from("2.0"));
    response.insert("id".to_string(), id.cloned().unwrap_or(Value::Null));
    response.insert("error".to_string(), Value::Object(error));
    Value::Object(response)
}

/// A JSON-RPC result response.
pub fn result_response(id: &Value, result: Value) -> Value {
    let mut response = Map::new();
    response.insert("jsonrpc".to_string(), Value::from("2.0"));
    response.insert("id".to_string(), id.clone());
    response.insert("result".to_string(), result);
    Value::Object(response)
}

/// At most `max` characters of `text`, with `…` when cut; for error messages that echo input.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

fn quoted_or_absent(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("'{}'", clip(value, 64)),
        None => "(absent)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn modern_call(method: &str, params: Value) -> Value {
        let mut params = params;
        params["_meta"] = json!({
            meta_key::PROTOCOL_VERSION: "2026-07-28",
            meta_key::CLIENT_CAPABILITIES: {}
        });
        json!({"jsonrpc": "2.0", "id": 3, "method": method, "params": params})
    }

    #[test]
    fn version_lists_are_consistent() {
        assert_eq!(
            LATEST_HANDSHAKE_VERSION,
            *HANDSHAKE_VERSIONS.last().unwrap()
        );
        assert_eq!(LATEST_MODERN_VERSION, *MODERN_VERSIONS.last().unwrap());
        assert_eq!(
            supported_versions(),
            vec![
                "2024-11-05",
                "2025-03-26",
                "2025-06-18",
                "2025-11-25",
                "2026-07-28"
            ]
        );
        for v in [
            "2024-10-07",
            "2024-11-05",
            "2025-03-26",
            "2025-06-18",
            "2025-11-25",
            "2026-07-28",
        ] {
            assert!(is_known_version(v), "{v}");
        }
        for v in ["", "2026-07-29", "2025-11-25 ", "latest", "2027-01-01"] {
            assert!(!is_known_version(v), "{v}");
        }
    }

    #[test]
    fn era_from_header() {
        assert_eq!(era_of_header(None), Ok(Era::Handshake));
        for v in [
            "2024-10-07",
            "2024-11-05",
            "2025-03-26",
            "2025-06-18",
            "2025-11-25",
        ] {
            assert_eq!(era_of_header(Some(v)), Ok(Era::Handshake), "{v}");
        }
        assert_eq!(era_of_header(Some("2026-07-28")), Ok(Era::Stateless));
        let err = era_of_header(Some("2027-01-01")).unwrap_err();
        assert_eq!(err.requested, "2027-01-01");
        assert!(err.supported.contains(&"2026-07-28"));
        assert!(err.supported.contains(&"2025-11-25"));
        assert_eq!(
            err.error_data(),
            json!({"supported": ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"],
                   "requested": "2027-01-01"})
        );
        assert!(err.to_string().contains("'2027-01-01'"));
        assert!(era_of_header(Some("")).is_err());
    }

    #[test]
    fn initialize_version_choice() {
        assert_eq!(initialize_response_version("2025-06-18"), "2025-06-18");
        assert_eq!(initialize_response_version("2024-11-05"), "2024-11-05");
        assert_eq!(initialize_response_version("2024-10-07"), "2024-10-07");
        assert_eq!(
            initialize_response_version("2026-07-28"),
            LATEST_HANDSHAKE_VERSION
        );
        assert_eq!(
            initialize_response_version("1999-01-01"),
            LATEST_HANDSHAKE_VERSION
        );
        assert_eq!(initialize_response_version(""), LATEST_HANDSHAKE_VERSION);
    }

    #[test]
    fn error_code_statuses() {
        assert_eq!(
            http_status_for_error_code(error_code::HEADER_MISMATCH),
            Some(400)
        );
        assert_eq!(
            http_status_for_error_code(error_code::UNSUPPORTED_PROTOCOL_VERSION),
            Some(400)
        );
        assert_eq!(
            http_status_for_error_code(error_code::METHOD_NOT_FOUND),
            Some(404)
        );
        assert_eq!(http_status_for_error_code(error_code::INTERNAL_ERROR), None);
        assert_eq!(error_code::MISSING_REQUIRED_CLIENT_CAPABILITY, -32021);
        assert_eq!(error_code::SERVER_ERROR, -32000);
    }

    #[test]
    fn plain_header_values_pass_verbatim() {
        for v in ["add", "file:///tmp/a b.txt", "a=b?c", "", "=?base64"] {
            assert_eq!(encode_header_value(v), v);
            assert_eq!(decode_header_value(v).unwrap(), v);
        }
    }

    #[test]
    fn sentinel_round_trip_on_unsafe_values() {
        for v in [
            "héllo wörld",
            "日本語のツール",
            "tab\there",
            " leading",
            "trailing ",
            "line\nbreak",
            "emoji 🚀",
            "\u{7f}",
        ] {
            let encoded = encode_header_value(v);
            assert!(
                encoded.starts_with("=?base64?") && encoded.ends_with("?="),
                "{encoded}"
            );
            assert!(encoded.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            assert_eq!(decode_header_value(&encoded).unwrap(), v);
        }
        assert_eq!(encode_header_value("héllo"), "=?base64?aMOpbGxv?=");
    }

    #[test]
    fn values_that_look_like_the_sentinel_are_wrapped() {
        let tricky = "=?base64?YWJj?=";
        let encoded = encode_header_value(tricky);
        assert_ne!(encoded, tricky);
        assert_eq!(decode_header_value(&encoded).unwrap(), tricky);
        assert_eq!(decode_header_value(tricky).unwrap(), "abc");
        assert_eq!(decode_header_value("=?base64??=").unwrap(), "");
    }

    #[test]
    fn malformed_sentinels_are_errors() {
        assert_eq!(
            decode_header_value("=?base64?not base64!?="),
            Err(HeaderDecodeError::InvalidBase64)
        );
        // Missing padding.
        assert_eq!(
            decode_header_value("=?base64?YWI?="),
            Err(HeaderDecodeError::InvalidBase64)
        );
        // URL-safe alphabet is not accepted.
        assert_eq!(
            decode_header_value("=?base64?-_8=?="),
            Err(HeaderDecodeError::InvalidBase64)
        );
        // Non-zero trailing bits.
        assert!(matches!(
            decode_header_value("=?base64?YWJ=?="),
            Err(HeaderDecodeError::InvalidBase64 | HeaderDecodeError::NonCanonicalBase64)
        ));
        // 0xff is not UTF-8.
        assert_eq!(
            decode_header_value("=?base64?/w==?="),
            Err(HeaderDecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn name_targets() {
        assert_eq!(name_header_target("tools/call"), Some(NameField::Name));
        assert_eq!(name_header_target("prompts/get"), Some(NameField::Name));
        assert_eq!(name_header_target("resources/read"), Some(NameField::Uri));
        assert_eq!(name_header_target("tools/list"), None);
        assert_eq!(name_header_target("server/discover"), None);
    }

    #[test]
    fn consistent_headers_pass() {
        let body = modern_call("tools/call", json!({"name": "add", "arguments": {"a": 1}}));
        let headers = lookup(&[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "add"),
        ]);
        assert_eq!(validate_stateless_headers(&headers, &body), Ok(()));

        let body = modern_call("resources/read", json!({"uri": "file:///é.txt"}));
        let headers = lookup(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "resources/read"),
            ("mcp-name", &encode_header_value("file:///é.txt")),
        ]);
        assert_eq!(validate_stateless_headers(&headers, &body), Ok(()));

        let body = modern_call("tools/list", json!({}));
        let headers = lookup(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ]);
        assert_eq!(validate_stateless_headers(&headers, &body), Ok(()));
    }

    #[test]
    fn protocol_version_mismatches() {
        let body = modern_call("tools/list", json!({}));
        let missing = lookup(&[("mcp-method", "tools/list")]);
        assert_eq!(
            validate_stateless_headers(&missing, &body),
            Err(HeaderMismatch::MissingProtocolVersion)
        );
        let different = lookup(&[
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/list"),
        ]);
        let err = validate_stateless_headers(&different, &body).unwrap_err();
        assert_eq!(
            err,
            HeaderMismatch::ProtocolVersion {
                header: "2025-11-25".into(),
                body: Some("2026-07-28".into())
            }
        );
        assert_eq!(err.error_code(), -32020);

        let no_envelope = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
        let headers = lookup(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ]);
        let err = validate_stateless_headers(&headers, &no_envelope).unwrap_err();
        assert_eq!(
            err,
            HeaderMismatch::ProtocolVersion {
                header: "2026-07-28".into(),
                body: None
            }
        );
        assert!(err.to_string().contains("(absent)"));
    }

    #[test]
    fn method_mismatches() {
        let body = modern_call("tools/call", json!({"name": "add"}));
        let missing = lookup(&[("mcp-protocol-version", "2026-07-28"), ("mcp-name", "add")]);
        assert_eq!(
            validate_stateless_headers(&missing, &body),
            Err(HeaderMismatch::MissingMethod)
        );
        let different = lookup(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
            ("mcp-name", "add"),
        ]);
        let err = validate_stateless_headers(&different, &body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Mcp-Method 'tools/list' does not match method 'tools/call'"
        );
    }

    #[test]
    fn name_mismatches() {
        let body = modern_call("tools/call", json!({"name": "y"}));
        let base = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
        ];

        let err = validate_stateless_headers(&lookup(&base), &body).unwrap_err();
        assert_eq!(
            err,
            HeaderMismatch::MissingName {
                field: NameField::Name,
                body: "y".into()
            }
        );

        let mut wrong = base.to_vec();
        wrong.push(("mcp-name", "x"));
        let err = validate_stateless_headers(&lookup(&wrong), &body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Mcp-Name 'x' does not match params.name 'y'"
        );

        let mut encoded_wrong = base.to_vec();
        let encoded = encode_header_value(" y");
        encoded_wrong.push(("mcp-name", &encoded));
        assert!(matches!(
            validate_stateless_headers(&lookup(&encoded_wrong), &body),
            Err(HeaderMismatch::Name { .. })
        ));

        let mut malformed = base.to_vec();
        malformed.push(("mcp-name", "=?base64?%%%?="));
        assert_eq!(
            validate_stateless_headers(&lookup(&malformed), &body),
            Err(HeaderMismatch::MalformedName(
                HeaderDecodeError::InvalidBase64
            ))
        );

        let uri_body = modern_call("resources/read", json!({"uri": "file:///a"}));
        let headers = lookup(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "resources/read"),
            ("mcp-name", "file:///b"),
        ]);
        assert_eq!(
            validate_stateless_headers(&headers, &uri_body)
                .unwrap_err()
                .to_string(),
            "Mcp-Name 'file:///b' does not match params.uri 'file:///a'"
        );

        // A non-string body value can never match a header.
        let numeric = modern_call("prompts/get", json!({"name": 42}));
        let headers = lookup(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "prompts/get"),
            ("mcp-name", "42"),
        ]);
        assert!(matches!(
            validate_stateless_headers(&headers, &numeric),
            Err(HeaderMismatch::Name { .. })
        ));
    }

    #[test]
    fn name_check_skipped_when_body_has_no_name() {
        // As in the SDK: the missing param is an invalid-params problem for the handler.
        let body = modern_call("tools/call", json!({"arguments": {}}));
        let headers = lookup(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
        ]);
        assert_eq!(validate_stateless_headers(&headers, &body), Ok(()));
    }

    #[test]
    fn notifications_and_non_requests_are_not_header_checked() {
        let none = lookup(&[]);
        let notification =
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}});
        assert_eq!(validate_stateless_headers(&none, &notification), Ok(()));
        let response = json!({"jsonrpc": "2.0", "id": 1, "result": {}});
        assert_eq!(validate_stateless_headers(&none, &response), Ok(()));
    }

    #[test]
    fn duplicated_routing_headers() {
        assert_eq!(
            find_duplicated_routing_header(["Mcp-Name", "accept", "mcp-name"]),
            Some("mcp-name")
        );
        assert_eq!(
            find_duplicated_routing_header([
                "mcp-method",
                "mcp-name",
                "mcp-param-x",
                "mcp-param-x"
            ]),
            None
        );
        assert_eq!(
            HeaderMismatch::Duplicated("mcp-name").to_string(),
            "mcp-name header appears more than once"
        );
    }

    #[test]
    fn classify_messages() {
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert_eq!(
            classify(&request),
            MessageKind::Request {
                id: &json!(1),
                method: "tools/list"
            }
        );
        let string_id = json!({"jsonrpc": "2.0", "id": "a", "method": "ping", "params": null});
        assert!(matches!(
            classify(&string_id),
            MessageKind::Request {
                id: Value::String(_),
                ..
            }
        ));
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(
            classify(&notification),
            MessageKind::Notification {
                method: "notifications/initialized"
            }
        );
        let response = json!({"jsonrpc": "2.0", "id": "x", "result": {}});
        assert_eq!(
            classify(&response),
            MessageKind::Response { id: &json!("x") }
        );
        let error = json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "no"}});
        assert_eq!(
            classify(&error),
            MessageKind::ErrorResponse {
                id: Some(&json!(7))
            }
        );
        let parse_error =
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "x"}});
        assert_eq!(
            classify(&parse_error),
            MessageKind::ErrorResponse { id: None }
        );
        let batch = json!([request.clone(), notification.clone()]);
        assert!(matches!(classify(&batch), MessageKind::Batch(items) if items.len() == 2));
    }

    #[test]
    fn classify_rejects_invalid_messages() {
        let cases = [
            json!([]),
            json!("hello"),
            json!({"id": 1, "method": "x"}),
            json!({"jsonrpc": "1.0", "id": 1, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            json!({"jsonrpc": "2.0", "id": null, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": 1.5, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": {}, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "x", "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}),
            json!({"jsonrpc": "2.0", "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "error": "bad"}),
            json!({"jsonrpc": "2.0", "id": 1}),
        ];
        for case in &cases {
            assert!(matches!(classify(case), MessageKind::Invalid(_)), "{case}");
        }
    }

    #[test]
    fn response_builders() {
        assert_eq!(
            error_response(Some(&json!(3)), error_code::HEADER_MISMATCH, "bad", None),
            json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32020, "message": "bad"}})
        );
        let unsupported = era_of_header(Some("9999-01-01")).unwrap_err();
        let response = error_response(
            None,
            error_code::UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version",
            Some(unsupported.error_data()),
        );
        assert_eq!(response["id"], Value::Null);
        assert_eq!(response["error"]["data"]["requested"], "9999-01-01");
        assert_eq!(
            serde_json::to_string(&result_response(&json!("a"), json!({"ok": true}))).unwrap(),
            r#"{"jsonrpc":"2.0","id":"a","result":{"ok":true}}"#
        );
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("ééééé", 2), "éé…");
    }
}
