//! The bridge's side of each upstream MCP server: how to reach it (streamable HTTP in either
//! era, or one shared stdio / HTTP+SSE connection), its era (probed once and remembered), its
//! concurrency cap, and the sessions the bridge holds with it.

pub mod http;
pub mod mux;
pub mod shared;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use gantry_policy::config::{UpstreamEra, UpstreamTransport};
use gantry_policy::mcp::protocol;
use serde_json::{json, Value};
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::settings::UpstreamSettings;
use http::{HttpEndpoint, PostHeaders};
use shared::{SharedConnection, SharedTransport};

/// Messages an upstream answers one request with: notifications and server requests, then
/// the response.
pub type UpstreamMessages = BoxStream<'static, Result<Value, UpstreamError>>;

pub(crate) fn no_messages() -> UpstreamMessages {
    Box::pin(futures::stream::empty())
}

/// Why an upstream could not answer. Each renders into the error the client sees, always
/// with the upstream's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within the upstream's timeout")]
    Timeout,
    #[error("answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("the upstream session was lost")]
    SessionLost,
    #[error("broke the protocol: {0}")]
    Protocol(String),
    #[error("sent a message larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("is unavailable: {0}")]
    Unavailable(String),
    #[error("closed the connection")]
    Closed,
    #[error("is at its concurrency limit")]
    Busy,
}

impl UpstreamError {
    pub(crate) fn from_reqwest(e: &reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            UpstreamError::Timeout
        } else if e.is_connect() {
            let mut source: Option<&dyn std::error::Error> = Some(e);
            let mut last = e.to_string();
            while let Some(s) = source {
                last = s.to_string();
                source = s.source();
            }
            UpstreamError::Connect(last)
        } else {
            UpstreamError::Protocol(e.to_string())
        }
    }
}

/// Which era an upstream speaks (probed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamEraKnown {
    /// Answers `server/discover`: stateless requests work. (It may also accept `initialize`.)
    Stateless,
    /// Needs the `initialize` handshake.
    Handshake,
}

/// How one request travels to an upstream.
#[derive(Debug, Clone)]
pub enum Hop {
    /// A 2026-07-28 request; `meta` is the `_meta` to send (protocol version, client
    /// capabilities and info).
    Stateless {
        meta: Value,
        /// `Mcp-Param-*` headers of the client's call, forwarded with `tools/call`.
        param_headers: Vec<(String, String)>,
    },
    /// Inside a handshake-era upstream session.
    Session {
        session_id: Option<String>,
        protocol_version: String,
    },
    /// Over the bridge's shared connection (stdio, HTTP+SSE).
    Shared,
}

/// A handshake-era session the bridge opened with an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedSession {
    pub session_id: Option<String>,
    pub protocol_version: String,
    pub result: Value,
}

enum Transport {
    Http(HttpEndpoint),
    Shared(SharedConnection),
}

/// One upstream MCP server.
pub struct Upstream {
    pub settings: UpstreamSettings,
    transport: Transport,
    era: OnceCell<UpstreamEraKnown>,
    slots: Arc<Semaphore>,
    /// Sessions the bridge holds for stateless (2026) clients with a handshake-only upstream,
    /// one per caller, so that callers never share upstream session state.
    pooled: moka::future::Cache<String, OpenedSession>,
    client_info: Value,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({})", self.settings.name)
    }
}

impl Upstream {
    pub fn new(
        settings: UpstreamSettings,
        client_info: Value,
        max_message_bytes: usize,
        stop: &CancellationToken,
    ) -> Upstream {
        let transport = match settings.transport {
            UpstreamTransport::StreamableHttp => Transport::Http(HttpEndpoint::new(
                settings.url.clone(),
                settings.headers.clone(),
                max_message_bytes,
            )),
            UpstreamTransport::Sse => Transport::Shared(SharedConnection::start(
                &settings.name,
                SharedTransport::Sse {
                    url: settings.url.clone(),
                    headers: settings.headers.clone(),
                },
                client_info.clone(),
                stop.child_token(),
            )),
            UpstreamTransport::Stdio => Transport::Shared(SharedConnection::start(
                &settings.name,
                SharedTransport::Stdio {
                    command: settings.command.clone(),
                    env: settings.env.clone(),
                },
                client_info.clone(),
                stop.child_token(),
            )),
        };
        let era = OnceCell::new();
        match (settings.transport, settings.era) {
            (UpstreamTransport::StreamableHttp, UpstreamEra::Stateless) => {
                let _ = era.set(UpstreamEraKnown::Stateless);
            }
            (UpstreamTransport::StreamableHttp, UpstreamEra::Auto) => {}
            _ => {
                let _ = era.set(UpstreamEraKnown::Handshake);
            }
        }
        Upstream {
            slots: Arc::new(Semaphore::new(settings.max_concurrency)),
            pooled: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            settings,
            transport,
            era,
            client_info,
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.transport, Transport::Shared(_))
    }

    /// The upstream's era: configured, or probed once (a probe that could not reach the
    /// upstream is not remembered, so the next request probes again).
    pub async fn era(&self) -> Result<UpstreamEraKnown, UpstreamError> {
        self.era
            .get_or_try_init(|| async {
                let Transport::Http(endpoint) = &self.transport else {
                    return Ok(UpstreamEraKnown::Handshake);
                };
                let era = probe(endpoint, &self.client_info, self.timeout()).await?;
                tracing::info!(upstream = %self.settings.name, ?era, "probed MCP upstream era");
                Ok(era)
            })
            .await
            .copied()
    }

    /// Opens a handshake-era session (`initialize`, then `notifications/initialized`).
    pub async fn open_session(
        &self,
        protocol_version: &str,
        capabilities: &Value,
        client_info: &Value,
    ) -> Result<OpenedSession, UpstreamError> {
        match &self.transport {
            Transport::Shared(connection) => {
                let version = connection.ready(self.timeout()).await?;
                Ok(OpenedSession {
                    session_id: None,
                    protocol_version: version,
                    result: Value::Null,
                })
            }
            Transport::Http(endpoint) => {
                let initialize = json!({
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": protocol_version,
                        "capabilities": capabilities,
                        "clientInfo": client_info,
                    }
                });
                let work = async {
                    let reply = endpoint.post(&initialize, &PostHeaders::default()).await?;
                    let session_id = reply.session_id.clone();
                    let answer = final_answer(reply.messages).await?;
                    if let Some(error) = answer.get("error") {
                        return Err(UpstreamError::Protocol(format!(
                            "initialize was refused: {}",
                            error.get("message").and_then(Value::as_str).unwrap_or("")
                        )));
                    }
                    let result = answer.get("result").cloned().unwrap_or(Value::Null);
                    let version = result["protocolVersion"]
                        .as_str()
                        .unwrap_or(protocol_version)
                        .to_string();
                    let initialized =
                        json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                    endpoint
                        .post(
                            &initialized,
                            &PostHeaders {
                                protocol_version: Some(version.clone()),
                                session_id: session_id.clone(),
                                ..PostHeaders::default()
                            },
                        )
                        .await?;
                    Ok(OpenedSession {
                        session_id,
                        protocol_version: version,
                        result,
                    })
                };
                tokio::time::timeout(self.timeout(), work)
                    .await
                    .map_err(|_| UpstreamError::Timeout)?
            }
        }
    }

    /// The bridge's own session with this upstream for a stateless client `binding`.
    pub async fn pooled_session(&self, binding: &str) -> Result<OpenedSession, UpstreamError> {
        if let Some(session) = self.pooled.get(binding).await {
            return Ok(session);
        }
        let opened = self
            .open_session(
                protocol::LATEST_HANDSHAKE_VERSION,
                &json!({}),
                &self.client_info,
            )
            .await?;
        self.pooled
            .insert(binding.to_string(), opened.clone())
            .await;
        Ok(opened)
    }

    /// Forgets a pooled session the upstream no longer knows.
    pub async fn forget_pooled(&self, binding: &str) {
        self.pooled.invalidate(binding).await;
    }

    /// Sends one request and returns the upstream's messages for it. Waits for a concurrency
    /// slot at most the upstream's timeout.
    pub async fn request(
        self: &Arc<Self>,
        hop: &Hop,
        message: Value,
    ) -> Result<UpstreamMessages, UpstreamError> {
        let permit = tokio::time::timeout(self.timeout(), self.slots.clone().acquire_owned())
            .await
            .map_err(|_| UpstreamError::Busy)?
            .map_err(|_| UpstreamError::Closed)?;
        let messages = self.send(hop, message).await?;
        // The slot is held until the caller has read the answer (or dropped the stream).
        Ok(Box::pin(messages.map(move |m| {
            let _held = &permit;
            m
        })))
    }

    /// Sends a notification or a response to a server request; waits for no answer.
    pub async fn notify(&self, hop: &Hop, message: Value) -> Result<(), UpstreamError> {
        match (&self.transport, hop) {
            (Transport::Shared(connection), _) => {
                connection.mux.notify(without_envelope(message)).await
            }
            (Transport::Http(endpoint), hop) => {
                let (message, headers) = http_message(hop, message);
                endpoint.post(&message, &headers).await.map(|_| ())
            }
        }
    }

    /// Opens a long-lived request (`subscriptions/listen`): like [`Upstream::request`], but it
    /// takes no concurrency slot, since it holds its stream for as long as the client listens
    /// and would otherwise starve calls.
    pub async fn open_subscription(
        &self,
        hop: &Hop,
        message: Value,
    ) -> Result<UpstreamMessages, UpstreamError> {
        self.send(hop, message).await
    }

    async fn send(&self, hop: &Hop, message: Value) -> Result<UpstreamMessages, UpstreamError> {
        match &self.transport {
            Transport::Shared(connection) => {
                connection.ready(self.timeout()).await?;
                connection.mux.request(without_envelope(message)).await
            }
            Transport::Http(endpoint) => {
                let (message, headers) = http_message(hop, message);
                Ok(endpoint.post(&message, &headers).await?.messages)
            }
        }
    }

    /// The upstream's server-to-client messages outside any request: the GET stream of an
    /// upstream session, or the notifications of the shared connection. `None` when there is
    /// no such stream (stateless hops, upstreams answering 405).
    pub async fn listen(&self, hop: &Hop) -> Result<Option<UpstreamMessages>, UpstreamError> {
        match (&self.transport, hop) {
            (Transport::Shared(connection), _) => {
                let receiver = connection.notifications.subscribe();
                let stream = tokio_stream::wrappers::BroadcastStream::new(receiver)
                    .filter_map(|m| async move { m.ok().map(Ok) });
                Ok(Some(Box::pin(stream)))
            }
            (
                Transport::Http(endpoint),
                Hop::Session {
                    session_id: Some(session_id),
                    protocol_version,
                },
            ) => endpoint.get_stream(session_id, protocol_version).await,
            _ => Ok(None),
        }
    }

    /// Ends an upstream session (client DELETE).
    pub async fn close_session(&self, session_id: &str, protocol_version: &str) {
        if let Transport::Http(endpoint) = &self.transport {
            endpoint.delete_session(session_id, protocol_version).await;
        }
    }
}

/// The message and headers of an HTTP request on `hop`.
fn http_message(hop: &Hop, mut message: Value) -> (Value, PostHeaders) {
    match hop {
        Hop::Stateless {
            meta,
            param_headers,
        } => {
            let method = message
                .get("method")
                .and_then(Value::as_str)
                .map(str::to_string);
            if method.is_some() && message.get("id").is_some() {
                if !message.get("params").is_some_and(Value::is_object) {
                    message["params"] = json!({});
                }
                let params = &mut message["params"];
                let mut merged = meta.as_object().cloned().unwrap_or_default();
                if let Some(own) = params.get("_meta").and_then(Value::as_object) {
                    for (k, v) in own {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                merged.insert(
                    protocol::meta_key::PROTOCOL_VERSION.into(),
                    Value::from(protocol::LATEST_MODERN_VERSION),
                );
                params["_meta"] = Value::Object(merged);
            }
            let name = method.as_deref().and_then(|m| {
                protocol::name_header_target(m).and_then(|field| {
                    message["params"]
                        .get(field.as_str())
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
            });
            (
                message,
                PostHeaders {
                    protocol_version: Some(protocol::LATEST_MODERN_VERSION.to_string()),
                    session_id: None,
                    extra: if method.as_deref() == Some("tools/call") {
                        param_headers.clone()
                    } else {
                        Vec::new()
                    },
                    method,
                    name,
                },
            )
        }
        Hop::Session {
            session_id,
            protocol_version,
        } => (
            without_envelope(message),
            PostHeaders {
                protocol_version: Some(protocol_version.clone()),
                session_id: session_id.clone(),
                ..PostHeaders::default()
            },
        ),
        Hop::Shared => (without_envelope(message), PostHeaders::default()),
    }
}

/// A 2026 request on a handshake-era hop: the per-request envelope keys go (the session
/// carries what they say); other `_meta` (progress tokens, extensions) stays.
pub(crate) fn without_envelope(mut message: Value) -> Value {
    if let Some(meta) = message
        .get_mut("params")
        .and_then(|p| p.get_mut("_meta"))
        .and_then(Value::as_object_mut)
    {
        for key in [
            protocol::meta_key::PROTOCOL_VERSION,
            protocol::meta_key::CLIENT_CAPABILITIES,
            protocol::meta_key::CLIENT_INFO,
            protocol::meta_key::LOG_LEVEL,
        ] {
            meta.remove(key);
        }
        if meta.is_empty() {
            if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
                params.remove("_meta");
            }
        }
    }
    message
}

/// Reads messages until the response (a message with `result` or `error` and no `method`).
pub async fn final_answer(mut messages: UpstreamMessages) -> Result<Value, UpstreamError> {
    while let Some(message) = messages.next().await {
        let message = message?;
        if message.get("method").is_none() {
            return Ok(message);
        }
    }
    Err(UpstreamError::Closed)
}

/// `server/discover` once: a result listing 2026-07-28 means stateless; any JSON-RPC error
/// (or an HTTP error without one) means the handshake era. Network errors are returned.
async fn probe(
    endpoint: &HttpEndpoint,
    client_info: &Value,
    timeout: Duration,
) -> Result<UpstreamEraKnown, UpstreamError> {
    let discover = json!({
        "jsonrpc": "2.0",
        "id": 0,
        "method": "server/discover",
        "params": {
            "_meta": {
                protocol::meta_key::PROTOCOL_VERSION: protocol::LATEST_MODERN_VERSION,
                protocol::meta_key::CLIENT_CAPABILITIES: {},
                protocol::meta_key::CLIENT_INFO: client_info,
            }
        }
    });
    let headers = PostHeaders {
        protocol_version: Some(protocol::LATEST_MODERN_VERSION.into()),
        method: Some("server/discover".into()),
        ..PostHeaders::default()
    };
    let work = async {
        match endpoint.post(&discover, &headers).await {
            Ok(reply) => match final_answer(reply.messages).await {
                Ok(answer) => {
                    let modern = answer["result"]["supportedVersions"]
                        .as_array()
                        .is_some_and(|v| {
                            v.iter()
                                .any(|v| v.as_str() == Some(protocol::LATEST_MODERN_VERSION))
                        });
                    Ok(if modern {
                        UpstreamEraKnown::Stateless
                    } else {
                        UpstreamEraKnown::Handshake
                    })
                }
                Err(UpstreamError::Closed) => Ok(UpstreamEraKnown::Handshake),
                Err(e) => Err(e),
            },
            Err(UpstreamError::Http { .. }) => Ok(UpstreamEraKnown::Handshake),
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}
