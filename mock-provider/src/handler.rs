//! Request plumbing: recording, per-request controls, authentication, routing
//! and OpenAI-shaped errors. The endpoint bodies live in [`crate::openai`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

use crate::{controls, openai, RecordedRequest, Shared, PROVIDER_HEADER};

/// Largest request body the mock accepts.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Every request goes through one handler so that unknown paths and wrong
/// methods are recorded and answered in OpenAI shape too.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let mut response = respond(&shared, request).await;
    response.headers_mut().insert(
        HeaderName::from_static(PROVIDER_HEADER),
        shared.provider_header.clone(),
    );
    response
}

async fn respond(shared: &Shared, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (body, body_error) = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => (body, None),
        Err(error) => (
            Bytes::new(),
            Some(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("could not read the request body: {error}"),
            )),
        ),
    };
    let recorded = record(&parts, body.clone());
    tracing::debug!(method = %recorded.method, path = %recorded.path, "mock provider request");
    shared.record(recorded);

    if let Some(error) = body_error {
        return error.into_response();
    }
    let mut controls = match Controls::from_headers(&parts.headers) {
        Ok(controls) => controls,
        Err(error) => return error.into_response(),
    };
    if controls.status.is_none() {
        controls.status = shared
            .config
            .forced_status
            .and_then(|code| StatusCode::from_u16(code).ok());
    }
    if controls.first_byte_delay.is_none() && !shared.config.first_byte_delay.is_zero() {
        controls.first_byte_delay = Some(shared.config.first_byte_delay);
    }
    if let Some(delay) = controls.first_byte_delay {
        tokio::time::sleep(delay).await;
    }
    if parts.uri.path() == "/gantry/guard" && crate::guard::is_slow(&body) {
        tokio::time::sleep(crate::guard::SLOW_GUARD).await;
    }
    answer(shared, &parts, &body, &controls).unwrap_or_else(IntoResponse::into_response)
}

fn record(parts: &Parts, body: Bytes) -> RecordedRequest {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: path.to_owned(),
        headers,
        body,
    }
}

fn answer(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    controls: &Controls,
) -> Result<Response, ApiError> {
    // Native provider formats first: each answers its own paths, errors in its own shape.
    for native in [
        crate::anthropic::answer,
        crate::gemini::answer,
        crate::bedrock::answer,
    ] {
        if let Some(response) = native(shared, parts, body, controls) {
            return response;
        }
    }
    let route = Route::from_path(parts.uri.path())
        .ok_or_else(|| ApiError::not_found(&parts.method, parts.uri.path()))?;
    if parts.method != route.method() {
        return Err(ApiError::method_not_allowed(
            &parts.method,
            parts.uri.path(),
        ));
    }
    check_api_key(shared, &parts.headers)?;
    if parts.uri.path().contains("/openai/deployments/") {
        let has_version = parts.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.starts_with("api-version=") && kv.len() > 12)
        });
        if !has_version {
            return Err(ApiError::invalid_request(
                "Missing api-version query parameter (Azure OpenAI requires it)",
            ));
        }
    }
    if let Some(status) = controls.status {
        return Err(ApiError::new(
            status,
            "mock_error",
            format!(
                "mock error: the {} header asked for HTTP {}",
                controls::STATUS,
                status.as_u16()
            ),
        )
        .with_code(status.as_str()));
    }

    let stream = openai::StreamSettings {
        chunk_delay: controls.chunk_delay.unwrap_or(shared.config.chunk_delay),
        chunks: controls
            .chunks
            .unwrap_or(shared.config.stream_chunks)
            .max(1),
        reply: controls.reply.clone(),
    };
    match route {
        Route::ChatCompletions => openai::chat_completions(shared, body, &stream),
        Route::Completions => openai::completions(shared, body, &stream),
        Route::Embeddings => openai::embeddings(body),
        Route::Models => Ok(openai::models(shared)),
        Route::Moderations => crate::guard::moderations(body),
        Route::GuardWebhook => crate::guard::gantry_guard(body),
    }
}

fn check_api_key(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = shared.config.expected_api_key.as_deref() else {
        return Ok(());
    };
    // Azure OpenAI sends the bare key in `api-key`.
    if let Some(key) = headers.get("api-key").and_then(|v| v.to_str().ok()) {
        return if key.trim() == expected {
            Ok(())
        } else {
            Err(ApiError::unauthorized("Incorrect API key provided."))
        };
    }
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "You didn't provide an API key. Provide it in the Authorization header (Bearer auth).",
        ));
    };
    let presented = value.to_str().ok().and_then(|value| {
        let (scheme, key) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
    });
    match presented {
        Some(key) if key == expected => Ok(()),
        _ => Err(ApiError::unauthorized("Incorrect API key provided.")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    Moderations,
    GuardWebhook,
}

impl Route {
    fn from_path(path: &str) -> Option<Route> {
        // Azure OpenAI: [<base>]/openai/deployments/<deployment>/<operation> (the body is
        // OpenAI's).
        if let Some(at) = path.find("/openai/deployments/") {
            let rest = &path[at + "/openai/deployments/".len()..];
            let (_deployment, operation) = rest.split_once('/')?;
            return match operation {
                "chat/completions" => Some(Route::ChatCompletions),
                "completions" => Some(Route::Completions),
                "embeddings" => Some(Route::Embeddings),
                _ => None,
            };
        }
        match path {
            "/v1/chat/completions" => Some(Route::ChatCompletions),
            "/v1/completions" => Some(Route::Completions),
            "/v1/embeddings" => Some(Route::Embeddings),
            "/v1/models" => Some(Route::Models),
            "/v1/moderations" => Some(Route::Moderations),
            "/gantry/guard" => Some(Route::GuardWebhook),
            _ => None,
        }
    }

    fn method(self) -> Method {
        match self {
            Route::Models => Method::GET,
            Route::ChatCompletions
            | Route::Completions
            | Route::Embeddings
            | Route::Moderations
            | Route::GuardWebhook => Method::POST,
        }
    }
}

/// The per-request test controls (see [`crate::controls`]).
#[derive(Debug, Default)]
pub(crate) struct Controls {
    pub(crate) status: Option<StatusCode>,
    pub(crate) chunk_delay: Option<Duration>,
    pub(crate) first_byte_delay: Option<Duration>,
    pub(crate) chunks: Option<usize>,
    pub(crate) reply: Option<String>,
}

impl Controls {
    fn from_headers(headers: &HeaderMap) -> Result<Controls, ApiError> {
        let status = number_header(headers, controls::STATUS)?
            .map(|code| {
                u16::try_from(code)
                    .ok()
                    .filter(|code| (200..=599).contains(code))
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .ok_or_else(|| bad_control(controls::STATUS, "a status code from 200 to 599"))
            })
            .transpose()?;
        let chunks = number_header(headers, controls::CHUNKS)?
            .map(|chunks| {
                usize::try_from(chunks).map_err(|_| bad_control(controls::CHUNKS, "a chunk count"))
            })
            .transpose()?;
        Ok(Controls {
            status,
            chunk_delay: number_header(headers, controls::CHUNK_DELAY_MS)?
                .map(Duration::from_millis),
            first_byte_delay: number_header(headers, controls::FIRST_BYTE_DELAY_MS)?
                .map(Duration::from_millis),
            chunks,
            reply: headers
                .get(controls::REPLY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }
}

fn number_header(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or_else(|| bad_control(name, "a non-negative integer"))
        })
        .transpose()
}

fn bad_control(header: &str, expected: &str) -> ApiError {
    ApiError::invalid_request(format!("mock control header {header} must be {expected}"))
}

/// An error answered as an OpenAI error object:
/// `{"error":{"message","type","param","code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401 `invalid_request_error` with code `invalid_api_key`.
    fn unauthorized(message: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    fn not_found(method: &Method, path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Invalid URL ({method} {path})"),
        )
    }

    fn method_not_allowed(method: &Method, path: &str) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method not allowed ({method} {path})"),
        )
    }

    pub(crate) fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub(crate) fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        (self.status, Json(body)).into_response()
    }
}
