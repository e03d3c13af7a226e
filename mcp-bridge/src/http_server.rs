//! The bridge's HTTP front: streamable HTTP at the configured path (and `<path>/<virtual
//! server>`), in both eras. Checks `Host` and `Origin` (DNS rebinding), the body size, the
//! era (`MCP-Protocol-Version`), the 2026 header/body agreement and the session, then hands
//! the message to the [`Bridge`] and writes its answer as JSON, SSE or 202.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use futures::StreamExt;
use gantry_policy::auth::{
    AUTH_METHOD_HEADER, KEY_HEADER, SUBJECT_HEADER, TEAM_HEADER, USER_HEADER,
};
use gantry_policy::mcp::authz::McpCaller;
use gantry_policy::mcp::protocol::{self, Era};
use serde_json::Value;

use crate::bridge::{Bridge, Downstream, Reply};

/// The bridge's routes: the MCP endpoint, its virtual servers, and `/healthz`.
pub fn router(bridge: Arc<Bridge>) -> Router {
    let path = bridge.settings.path.clone();
    Router::new()
        .route(&path, any(endpoint))
        .route(&format!("{path}/{{server}}"), any(virtual_endpoint))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(bridge)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    bridge: Arc<Bridge>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let result = axum::serve(listener, router(bridge.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    bridge.shutdown();
    result
}

async fn endpoint(
    State(bridge): State<Arc<Bridge>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(bridge, None, method, headers, body).await
}

async fn virtual_endpoint(
    State(bridge): State<Arc<Bridge>>,
    Path(server): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if bridge.settings.virtual_server(&server).is_none() {
        return json_rpc_error(
            StatusCode::NOT_FOUND,
            None,
            protocol::error_code::INVALID_REQUEST,
            &format!("no MCP server '{server}' here"),
            None,
        );
    }
    handle(bridge, Some(server), method, headers, body).await
}

fn json_rpc_error(
    status: StatusCode,
    id: Option<&Value>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Response {
    json_response(status, &protocol::error_response(id, code, message, data))
}

fn json_response(status: StatusCode, message: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(message).unwrap_or_default(),
    )
        .into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The caller ext_authz established (Envoy strips client-sent identity headers and sets
/// these); anonymous without them.
fn caller(headers: &HeaderMap) -> McpCaller {
    let get = |name: &str| header(headers, name).unwrap_or("").to_string();
    let subject = get(SUBJECT_HEADER);
    if subject.is_empty() {
        return McpCaller::anonymous();
    }
    McpCaller {
        method: match get(AUTH_METHOD_HEADER) {
            m if m.is_empty() => "unknown".into(),
            m => m,
        },
        subject,
        user: get(USER_HEADER),
        team: get(TEAM_HEADER),
        key: get(KEY_HEADER),
    }
}

/// The `Mcp-Param-*` headers of a request (2026-07-28, declared by `x-mcp-header`), passed to
/// the upstream of a call unchanged.
fn param_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(protocol::header::PARAM_PREFIX))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// `Host` and `Origin` against the allowed lists (DNS-rebinding protection).
fn check_origin_and_host(bridge: &Bridge, headers: &HeaderMap) -> Result<(), String> {
    let allowed_host = |host: &str| {
        let host = host.to_ascii_lowercase();
        let bare = match host.strip_prefix('[') {
            Some(rest) => rest
                .split(']')
                .next()
                .map(|h| format!("[{h}]"))
                .unwrap_or_default(),
            None => host.split(':').next().unwrap_or("").to_string(),
        };
        bridge
            .settings
            .allowed_hosts
            .iter()
            .any(|a| *a == host || *a == bare)
    };
    if let Some(host) = header(headers, "host") {
        if !allowed_host(host) {
            return Err(format!("Host '{host}' is not allowed"));
        }
    }
    if let Some(origin) = header(headers, "origin") {
        let lower = origin.to_ascii_lowercase();
        let by_list = bridge.settings.allowed_origins.contains(&lower);
        let by_host = url::Url::parse(&lower)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_string();
                Some(match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .is_some_and(|h| allowed_host(&h));
        if !by_list && !by_host {
            return Err(format!("Origin '{origin}' is not allowed"));
        }
    }
    Ok(())
}

async fn handle(
    bridge: Arc<Bridge>,
    server: Option<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(reason) = check_origin_and_host(&bridge, &headers) {
        tracing::warn!(%reason, "MCP request refused");
        return json_rpc_error(
            StatusCode::FORBIDDEN,
            None,
            protocol::error_code::INVALID_REQUEST,
            &reason,
            None,
        );
    }
    // The body first (POST only): every error below can then echo the request's id.
    let message = if method == Method::POST {
        let body = match axum::body::to_bytes(body, bridge.settings.max_request_bytes).await {
            Ok(body) => body,
            Err(_) => {
                return json_rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    None,
                    protocol::error_code::INVALID_REQUEST,
                    &format!(
                        "the request body is larger than the gateway's {}-byte limit",
                        bridge.settings.max_request_bytes
                    ),
                    None,
                )
            }
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(message) => message,
            Err(e) => {
                return json_rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    protocol::error_code::PARSE_ERROR,
                    &format!("the body is not JSON: {e}"),
                    None,
                )
            }
        }
    } else {
        Value::Null
    };
    let request_id = message.get("id").filter(|id| !id.is_null());
    let era = match protocol::era_of_header(header(&headers, protocol::header::PROTOCOL_VERSION)) {
        Ok(era) => era,
        Err(e) => {
            // What `server/discover` would list: the versions a stateless client may pick.
            let data = serde_json::json!({
                "supported": protocol::MODERN_VERSIONS,
                "requested": e.requested,
            });
            return json_rpc_error(
                StatusCode::BAD_REQUEST,
                request_id,
                protocol::error_code::UNSUPPORTED_PROTOCOL_VERSION,
                &e.to_string(),
                Some(data),
            );
        }
    };
    let caller = caller(&headers);
    let session = match (era, header(&headers, protocol::header::SESSION_ID)) {
        (Era::Handshake, Some(id)) => match bridge.open_session(id, &caller) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::info!(caller = %caller.binding(), reason = %e, "MCP session id refused");
                return json_rpc_error(
                    StatusCode::NOT_FOUND,
                    None,
                    protocol::error_code::INVALID_REQUEST,
                    "Session not found: initialize a new session",
                    None,
                );
            }
        },
        _ => None,
    };
    match method {
        Method::POST => {}
        Method::DELETE => {
            return match (era, session) {
                (Era::Handshake, Some(state)) => {
                    bridge.close_session(&state).await;
                    StatusCode::OK.into_response()
                }
                (Era::Handshake, None) => json_rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    protocol::error_code::INVALID_REQUEST,
                    "Missing session ID",
                    None,
                ),
                (Era::Stateless, _) => StatusCode::METHOD_NOT_ALLOWED.into_response(),
            };
        }
        Method::GET => {
            let Some(state) = session else {
                return match era {
                    // 2026-07-28 has no standalone stream (subscriptions/listen replaces it).
                    Era::Stateless => StatusCode::METHOD_NOT_ALLOWED.into_response(),
                    Era::Handshake => json_rpc_error(
                        StatusCode::BAD_REQUEST,
                        None,
                        protocol::error_code::INVALID_REQUEST,
                        "Missing session ID",
                        None,
                    ),
                };
            };
            let downstream = Downstream {
                era,
                caller,
                headers: HashMap::new(),
                server,
                session: Some(state),
                meta: Value::Null,
                accepts_sse: true,
                param_headers: Vec::new(),
            };
            return match bridge.listen(&downstream).await {
                Some(messages) => sse_response(messages),
                None => StatusCode::METHOD_NOT_ALLOWED.into_response(),
            };
        }
        _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
    let is_request = message.get("method").is_some() && message.get("id").is_some();
    let mut meta = Value::Null;
    match era {
        Era::Stateless => {
            if is_request {
                let envelope = &message["params"]["_meta"];
                for key in [
                    protocol::meta_key::PROTOCOL_VERSION,
                    protocol::meta_key::CLIENT_CAPABILITIES,
                ] {
                    if envelope.get(key).is_none() {
                        return json_rpc_error(
                            StatusCode::BAD_REQUEST,
                            request_id,
                            protocol::error_code::INVALID_PARAMS,
                            &format!(
                                "params._meta[\"{key}\"] is required in protocol version {}",
                                protocol::LATEST_MODERN_VERSION
                            ),
                            None,
                        );
                    }
                }
                meta = message["params"]["_meta"].clone();
            }
            if let Some((name, _)) = param_headers(&headers)
                .iter()
                .find(|(_, v)| protocol::decode_header_value(v).is_err())
            {
                return json_rpc_error(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    protocol::error_code::HEADER_MISMATCH,
                    &format!("header {name} is not a valid value (bad =?base64?...?= encoding)"),
                    None,
                );
            }
            let lookup = |name: &str| header(&headers, name).map(str::to_string);
            if let Err(mismatch) = protocol::validate_stateless_headers(&lookup, &message) {
                return json_rpc_error(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    mismatch.error_code(),
                    &mismatch.to_string(),
                    None,
                );
            }
        }
        Era::Handshake => {
            let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
            if session.is_none() && !is_initialize {
                return json_rpc_error(
                    StatusCode::BAD_REQUEST,
                    message.get("id"),
                    protocol::error_code::INVALID_REQUEST,
                    "Missing session ID: send initialize first",
                    None,
                );
            }
        }
    }
    let accepts_sse = header(&headers, "accept").is_some_and(|a| a.contains("text/event-stream"));
    let downstream = Downstream {
        era,
        caller,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect::<HashMap<_, _>>(),
        server,
        session,
        meta,
        accepts_sse,
        param_headers: if era == Era::Stateless {
            param_headers(&headers)
        } else {
            Vec::new()
        },
    };
    match bridge.handle(&downstream, message).await {
        Reply::Json { status, message } => {
            // 2026-07-28 answers errors with the HTTP status their code implies (400 for
            // invalid params and header errors, 404 for unknown methods), upstream's included.
            let status = match (era, message["error"]["code"].as_i64()) {
                (Era::Stateless, Some(code)) if status == 200 => {
                    protocol::http_status_for_error_code(code).unwrap_or(status)
                }
                _ => status,
            };
            json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                &message,
            )
        }
        Reply::Accepted => StatusCode::ACCEPTED.into_response(),
        Reply::Initialized {
            session_id,
            message,
        } => {
            let mut response = json_response(StatusCode::OK, &message);
            if let Ok(value) = session_id.parse() {
                response
                    .headers_mut()
                    .insert(protocol::header::SESSION_ID, value);
            }
            response
        }
        Reply::Stream(messages) => sse_response(messages),
    }
}

/// Keep-alive comments on quiet streams, so that idle timeouts along the way do not cut them.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Messages as an SSE response, one `message` event each, with keep-alive comments.
fn sse_response(messages: futures::stream::BoxStream<'static, Value>) -> Response {
    let events = messages.map(|m| {
        let mut event = b"event: message\ndata: ".to_vec();
        event.extend_from_slice(&serde_json::to_vec(&m).unwrap_or_default());
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    });
    let keepalive = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE,
        KEEPALIVE,
    ))
    .map(|_| Bytes::from_static(b": keepalive\n\n"));
    // The response ends when the messages do; the keep-alives never end on their own.
    let body = futures::stream::select(
        events
            .map(Some)
            .chain(futures::stream::once(async { None })),
        keepalive.map(Some),
    )
    .take_while(|item| futures::future::ready(item.is_some()))
    .filter_map(|item| async move { item.map(Ok::<_, Infallible>) });
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "text/event-stream")
        .header(axum::http::header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
