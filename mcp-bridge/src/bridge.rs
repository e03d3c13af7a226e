//! The federation itself, independent of HTTP: one JSON-RPC message from a client in, the
//! answer out. Lists fan out to every upstream (all pages, in parallel, each bounded by its
//! timeout) and come back merged, prefixed, curated, judged and sorted; calls are routed by
//! their prefix to the one upstream that owns the item; sessions are sealed into their id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::stream::BoxStream;
use futures::StreamExt;
use gantry_policy::auth::rules::RuleVerdict;
use gantry_policy::config::{NamingMode, UpstreamFailureMode, VerdictAction};
use gantry_policy::mcp::authz::{ItemKind, McpCaller, McpFacts};
use gantry_policy::mcp::names::{federated_uri, split_uri};
use gantry_policy::mcp::protocol::{self, Era};
use gantry_policy::mcp::scan::{DefinitionKind, ForeignNames};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::defences::{Defences, Foreign, Verdict};
use crate::session::{SessionError, SessionSealer, SessionState, UpstreamSession};
use crate::settings::{BridgeSettings, UpstreamSettings};
use crate::upstream::{
    final_answer, Hop, OpenedSession, Upstream, UpstreamEraKnown, UpstreamError, UpstreamMessages,
};

/// How long `initialize` waits for each upstream's own session before answering the client.
const INITIALIZE_FAN_OUT_DEADLINE: Duration = Duration::from_secs(3);
/// Most pages read from one upstream for one list.
const MAX_PAGES: usize = 100;
/// A tool's remembered verdict is re-checked against a fresh list when older than this.
const CALL_RECHECK_AFTER: Duration = Duration::from_secs(5);
/// The JSON-RPC error code of an authorization denial (as ext_authz uses for 403).
const FORBIDDEN: i64 = -32003;
/// Several upstreams' `list_changed` within this window reach the client as one.
const LIST_CHANGED_COALESCE: Duration = Duration::from_millis(200);
/// Ids of server requests the bridge relays start with this.
const RELAYED_ID_PREFIX: &str = "gantry.";

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Session(SessionError),
    #[error(transparent)]
    PinFile(#[from] crate::defences::PinFileError),
}

/// The client side of one message.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub era: Era,
    pub caller: McpCaller,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    /// The virtual server addressed, if any.
    pub server: Option<String>,
    /// The open session (handshake era, after `initialize`).
    pub session: Option<SessionState>,
    /// The request's `_meta` (stateless era).
    pub meta: Value,
    /// Whether the client accepts `text/event-stream`.
    pub accepts_sse: bool,
    /// `Mcp-Param-*` headers (stateless era), forwarded with the call they belong to.
    pub param_headers: Vec<(String, String)>,
}

/// The answer to one message.
pub enum Reply {
    /// One JSON-RPC message, HTTP 200 (or `status`).
    Json { status: u16, message: Value },
    /// Messages to send as SSE events; the last is the response.
    Stream(BoxStream<'static, Value>),
    /// Notifications and responses: 202, no body.
    Accepted,
    /// `initialize` succeeded: the answer and the new session id.
    Initialized { session_id: String, message: Value },
}

impl Reply {
    fn ok(message: Value) -> Reply {
        Reply::Json {
            status: 200,
            message,
        }
    }

    pub fn error(
        status: u16,
        id: Option<&Value>,
        code: i64,
        text: &str,
        data: Option<Value>,
    ) -> Reply {
        Reply::Json {
            status,
            message: protocol::error_response(id, code, text, data),
        }
    }
}

/// The bridge: settings, upstreams and the state shared by all requests.
pub struct Bridge {
    pub settings: Arc<BridgeSettings>,
    upstreams: Vec<Arc<Upstream>>,
    by_name: HashMap<String, usize>,
    sealer: SessionSealer,
    /// Upstream sessions re-opened after the upstream lost them, by (session nonce, upstream).
    healed: moka::future::Cache<(u64, String), OpenedSession>,
    /// Sessions the client ended (DELETE), by nonce.
    closed: moka::future::Cache<u64, ()>,
    pub defences: Arc<Defences>,
    stop: CancellationToken,
    /// Ids of the requests the bridge makes on its own (lists, subscriptions): unique, so that
    /// several in flight on one upstream session never share one.
    request_ids: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bridge({} upstreams)", self.upstreams.len())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn upstream_error(upstream: &str, id: Option<&Value>, error: &UpstreamError) -> Value {
    protocol::error_response(
        id,
        protocol::error_code::SERVER_ERROR,
        &format!("upstream '{upstream}' {error}"),
        Some(json!({"upstream": upstream})),
    )
}

impl Bridge {
    /// Builds the bridge and starts its shared upstream connections (stdio, HTTP+SSE) and the
    /// pin file's writer. Must be called inside a Tokio runtime.
    pub fn new(settings: BridgeSettings) -> Result<Bridge, BridgeError> {
        let stop = CancellationToken::new();
        let defences = Arc::new(Defences::load(settings.pin_file.clone())?);
        tokio::spawn(defences.clone().keep_pin_file(stop.child_token()));
        let client_info = json!({
            "name": settings.server_info["name"].as_str().unwrap_or("gantry"),
            "version": env!("CARGO_PKG_VERSION"),
        });
        let upstreams: Vec<Arc<Upstream>> = settings
            .upstreams
            .iter()
            .filter(|u| u.unavailable.is_none())
            .map(|u| {
                Arc::new(Upstream::new(
                    u.clone(),
                    client_info.clone(),
                    settings.max_response_bytes,
                    &stop,
                ))
            })
            .collect();
        for u in settings
            .upstreams
            .iter()
            .filter(|u| u.unavailable.is_some())
        {
            tracing::warn!(upstream = %u.name, reason = u.unavailable.as_deref().unwrap_or(""), "MCP upstream is unavailable");
        }
        let by_name = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name().to_string(), i))
            .collect();
        let sealer = match &settings.session_secret {
            Some(secret) => SessionSealer::new(secret, settings.session_ttl_secs),
            None => {
                tracing::warn!(
                    "{} is not set: MCP session ids are sealed with a random key, so sessions end when this process does and cannot move to another replica",
                    settings.session_secret_env
                );
                SessionSealer::random(settings.session_ttl_secs).map_err(BridgeError::Session)?
            }
        };
        Ok(Bridge {
            healed: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(settings.session_ttl_secs))
                .build(),
            closed: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(settings.session_ttl_secs))
                .build(),
            settings: Arc::new(settings),
            upstreams,
            by_name,
            sealer,
            defences,
            stop,
            request_ids: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Stops the shared connections (child processes are killed).
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.defences.write_pin_file();
    }

    fn next_request_id(&self) -> String {
        let n = self
            .request_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("gantry-{n}")
    }

    fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name).map(|&i| &self.upstreams[i])
    }

    fn upstream_settings(&self, name: &str) -> Option<&UpstreamSettings> {
        self.settings.upstreams.iter().find(|u| u.name == name)
    }

    /// Opens a presented session id for `caller`.
    pub fn open_session(&self, id: &str, caller: &McpCaller) -> Result<SessionState, SessionError> {
        let state = self.sealer.open(id, &caller.binding(), now_secs())?;
        if self.closed.contains_key(&state.nonce) {
            return Err(SessionError::Expired);
        }
        Ok(state)
    }

    /// Ends a session: every upstream session in it is deleted.
    pub async fn close_session(&self, state: &SessionState) {
        self.closed.insert(state.nonce, ()).await;
        for entry in &state.upstreams {
            let healed = self
                .healed
                .get(&(state.nonce, entry.upstream.clone()))
                .await;
            let Some(upstream) = self.upstream(&entry.upstream) else {
                continue;
            };
            let session = healed
                .and_then(|h| h.session_id.map(|s| (s, h.protocol_version)))
                .or_else(|| {
                    entry
                        .session_id
                        .clone()
                        .map(|s| (s, entry.protocol_version.clone()))
                });
            if let Some((session_id, version)) = session {
                upstream.close_session(&session_id, &version).await;
            }
        }
    }

    /// Answers one client message.
    pub async fn handle(&self, d: &Downstream, message: Value) -> Reply {
        match protocol::classify(&message) {
            protocol::MessageKind::Request { id, method } => {
                let id = id.clone();
                let method = method.to_string();
                self.request(d, id, &method, message).await
            }
            protocol::MessageKind::Notification { method } => {
                let method = method.to_string();
                self.notification(d, &method, message).await;
                Reply::Accepted
            }
            protocol::MessageKind::Response { id } => {
                let id = id.clone();
                self.client_response(d, &id, message).await;
                Reply::Accepted
            }
            protocol::MessageKind::ErrorResponse { id } => {
                // Error answers without an id cannot be routed and are dropped.
                if let Some(id) = id.cloned() {
                    self.client_response(d, &id, message).await;
                }
                Reply::Accepted
            }
            protocol::MessageKind::Batch(_) => Reply::error(
                400,
                None,
                protocol::error_code::INVALID_REQUEST,
                "JSON-RPC batches are not supported: send one message per request",
                None,
            ),
            protocol::MessageKind::Invalid(reason) => Reply::error(
                400,
                message.get("id"),
                protocol::error_code::INVALID_REQUEST,
                &format!("not a JSON-RPC 2.0 message: {reason}"),
                None,
            ),
        }
    }

    async fn request(&self, d: &Downstream, id: Value, method: &str, message: Value) -> Reply {
        let params = message.get("params").cloned().unwrap_or(json!({}));
        match method {
            "initialize"
            | "ping"
            | "logging/setLevel"
            | "resources/subscribe"
            | "resources/unsubscribe"
                if d.era == Era::Stateless =>
            {
                Reply::error(
                    404,
                    Some(&id),
                    protocol::error_code::METHOD_NOT_FOUND,
                    &format!("method '{method}' is not part of protocol version 2026-07-28"),
                    None,
                )
            }
            "initialize" => self.initialize(d, &id, &params).await,
            "server/discover" if d.era == Era::Stateless => Reply::ok(protocol::result_response(
                &id,
                self.stamp(d, self.discover_result()),
            )),
            "ping" => Reply::ok(protocol::result_response(&id, self.stamp(d, json!({})))),
            "tools/list" => self.list(d, &id, ListKind::Tools).await,
            "prompts/list" => self.list(d, &id, ListKind::Prompts).await,
            "resources/list" => self.list(d, &id, ListKind::Resources).await,
            "resources/templates/list" => self.list(d, &id, ListKind::Templates).await,
            "tools/call" => {
                self.routed_by_name(d, &id, method, ItemKind::Tool, message)
                    .await
            }
            "prompts/get" => {
                self.routed_by_name(d, &id, method, ItemKind::Prompt, message)
                    .await
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.routed_by_uri(d, &id, method, message).await
            }
            "completion/complete" => self.complete(d, &id, message).await,
            "subscriptions/listen" if d.era == Era::Stateless => {
                self.subscribe(d, &id, &params).await
            }
            "logging/setLevel" => {
                let upstreams: Vec<_> = self.upstreams.clone();
                for upstream in upstreams {
                    if let Ok(messages) = self.call(d, &upstream, message.clone()).await {
                        let _ =
                            tokio::time::timeout(upstream.timeout(), final_answer(messages)).await;
                    }
                }
                Reply::ok(protocol::result_response(&id, json!({})))
            }
            "server/discover" => Reply::error(
                400,
                Some(&id),
                protocol::error_code::METHOD_NOT_FOUND,
                "server/discover needs MCP-Protocol-Version: 2026-07-28",
                None,
            ),
            other => Reply::error(
                200,
                Some(&id),
                protocol::error_code::METHOD_NOT_FOUND,
                &format!("method '{other}' is not supported by the gateway"),
                None,
            ),
        }
    }

    async fn notification(&self, d: &Downstream, method: &str, message: Value) {
        match method {
            // Sent to each upstream when its session was opened.
            "notifications/initialized" => {}
            "notifications/cancelled" | "notifications/roots/list_changed" => {
                for upstream in self.upstreams.clone() {
                    if let Ok(hop) = self.hop(d, &upstream).await {
                        if !matches!(hop, Hop::Stateless { .. }) {
                            let _ = upstream.notify(&hop, message.clone()).await;
                        }
                    }
                }
            }
            other => tracing::debug!(method = %other, "client notification ignored"),
        }
    }

    /// A client's answer to a server request the bridge relayed: back to its upstream, with
    /// the upstream's own id.
    async fn client_response(&self, d: &Downstream, id: &Value, mut message: Value) {
        let Some((upstream, original)) = id.as_str().and_then(parse_relayed_id) else {
            tracing::debug!(?id, "a client response to no relayed request was dropped");
            return;
        };
        let Some(upstream) = self.upstream(&upstream).cloned() else {
            return;
        };
        message["id"] = original;
        match self.hop(d, &upstream).await {
            Ok(hop) => {
                if let Err(e) = upstream.notify(&hop, message).await {
                    tracing::warn!(upstream = %upstream.name(), error = %e, "relaying a client response upstream failed");
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %upstream.name(), error = %e, "no route for a client response")
            }
        }
    }

    /// `_meta.serverInfo` and `resultType` for stateless clients; nothing for others.
    fn stamp(&self, d: &Downstream, mut result: Value) -> Value {
        if d.era == Era::Stateless {
            if let Some(object) = result.as_object_mut() {
                object
                    .entry("resultType")
                    .or_insert_with(|| Value::from("complete"));
                let meta = object.entry("_meta").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    meta.insert(
                        protocol::meta_key::SERVER_INFO.into(),
                        self.settings.server_info.clone(),
                    );
                }
            }
        }
        result
    }

    fn capabilities(&self) -> Value {
        json!({
            "tools": {"listChanged": true},
            "prompts": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true},
            "completions": {},
            "logging": {},
        })
    }

    fn discover_result(&self) -> Value {
        let mut result = json!({
            "supportedVersions": [protocol::LATEST_MODERN_VERSION],
            "capabilities": self.capabilities(),
            "cacheScope": "private",
            "ttlMs": 0,
        });
        if let Some(instructions) = &self.settings.instructions {
            result["instructions"] = Value::from(instructions.clone());
        }
        result
    }

    async fn initialize(&self, d: &Downstream, id: &Value, params: &Value) -> Reply {
        let requested = params["protocolVersion"].as_str().unwrap_or("");
        let version = protocol::initialize_response_version(requested).to_string();
        let capabilities = params.get("capabilities").cloned().unwrap_or(json!({}));
        let client_info = params.get("clientInfo").cloned().unwrap_or(json!({}));
        let mut state = match SessionSealer::new_state(
            d.caller.binding(),
            now_secs(),
            version.clone(),
            capabilities.clone(),
            client_info.clone(),
        ) {
            Ok(state) => state,
            Err(e) => {
                return Reply::error(
                    500,
                    Some(id),
                    protocol::error_code::INTERNAL_ERROR,
                    &e.to_string(),
                    None,
                )
            }
        };
        let opened =
            futures::future::join_all(self.upstreams.iter().filter(|u| !u.is_shared()).map(|u| {
                let version = version.clone();
                let capabilities = capabilities.clone();
                let client_info = client_info.clone();
                async move {
                    // A slow upstream must not hold up the client's initialize: one that does
                    // not answer in time is opened on first use instead.
                    let deadline = u.timeout().min(INITIALIZE_FAN_OUT_DEADLINE);
                    let result = tokio::time::timeout(
                        deadline,
                        u.open_session(&version, &capabilities, &client_info),
                    )
                    .await
                    .unwrap_or(Err(UpstreamError::Timeout));
                    (u.clone(), result)
                }
            }))
            .await;
        let mut instructions: Vec<String> = self.settings.instructions.iter().cloned().collect();
        for (upstream, result) in opened {
            match result {
                Ok(session) => {
                    if let Some(text) = session.result["instructions"].as_str() {
                        instructions.push(format!("[{}] {text}", upstream.name()));
                    }
                    state.upstreams.push(UpstreamSession {
                        upstream: upstream.name().to_string(),
                        session_id: session.session_id,
                        protocol_version: session.protocol_version,
                    });
                }
                // Refused by a stateless-only upstream: reach it with stateless requests.
                // Unreachable or slow: leave it out, and open it on first use.
                Err(e) => {
                    let stateless =
                        !matches!(e, UpstreamError::Timeout | UpstreamError::Connect(_))
                            && tokio::time::timeout(INITIALIZE_FAN_OUT_DEADLINE, upstream.era())
                                .await
                                .is_ok_and(|era| era == Ok(UpstreamEraKnown::Stateless));
                    if stateless {
                        state.upstreams.push(UpstreamSession {
                            upstream: upstream.name().to_string(),
                            session_id: None,
                            protocol_version: protocol::LATEST_MODERN_VERSION.to_string(),
                        });
                    } else {
                        tracing::warn!(upstream = %upstream.name(), error = %e, "could not open an upstream session; it will be retried on use");
                    }
                }
            }
        }
        let session_id = match self.sealer.seal(&state) {
            Ok(id) => id,
            Err(e) => {
                return Reply::error(
                    500,
                    Some(id),
                    protocol::error_code::INTERNAL_ERROR,
                    &e.to_string(),
                    None,
                )
            }
        };
        let mut result = json!({
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": self.settings.server_info,
        });
        if !instructions.is_empty() {
            result["instructions"] = Value::from(instructions.join("\n\n"));
        }
        tracing::info!(caller = %d.caller.binding(), %version, upstreams = state.upstreams.len(), "MCP session opened");
        Reply::Initialized {
            session_id,
            message: protocol::result_response(id, result),
        }
    }

    /// How a request from `d` travels to `upstream`.
    async fn hop(&self, d: &Downstream, upstream: &Arc<Upstream>) -> Result<Hop, UpstreamError> {
        if upstream.is_shared() {
            return Ok(Hop::Shared);
        }
        match d.era {
            Era::Stateless => match upstream.era().await? {
                UpstreamEraKnown::Stateless => Ok(Hop::Stateless {
                    meta: relayable_meta(&d.meta),
                    param_headers: d.param_headers.clone(),
                }),
                UpstreamEraKnown::Handshake => {
                    let session = upstream.pooled_session(&d.caller.binding()).await?;
                    Ok(Hop::Session {
                        session_id: session.session_id,
                        protocol_version: session.protocol_version,
                    })
                }
            },
            Era::Handshake => {
                let Some(state) = &d.session else {
                    return Err(UpstreamError::Unavailable("no session".into()));
                };
                let key = (state.nonce, upstream.name().to_string());
                if let Some(healed) = self.healed.get(&key).await {
                    return Ok(session_hop(
                        &healed.session_id,
                        &healed.protocol_version,
                        state,
                    ));
                }
                if let Some(entry) = state
                    .upstreams
                    .iter()
                    .find(|u| u.upstream == upstream.name())
                {
                    return Ok(session_hop(
                        &entry.session_id,
                        &entry.protocol_version,
                        state,
                    ));
                }
                // Not reached at initialize: open it now.
                let opened = self.reopen(state, upstream).await?;
                Ok(session_hop(
                    &opened.session_id,
                    &opened.protocol_version,
                    state,
                ))
            }
        }
    }

    /// Opens (again) the upstream session of a downstream session and remembers it.
    async fn reopen(
        &self,
        state: &SessionState,
        upstream: &Arc<Upstream>,
    ) -> Result<OpenedSession, UpstreamError> {
        let opened = match upstream
            .open_session(
                &state.protocol_version,
                &state.client_capabilities,
                &state.client_info,
            )
            .await
        {
            Ok(opened) => opened,
            Err(e) => match upstream.era().await {
                Ok(UpstreamEraKnown::Stateless) => OpenedSession {
                    session_id: None,
                    protocol_version: protocol::LATEST_MODERN_VERSION.to_string(),
                    result: Value::Null,
                },
                _ => return Err(e),
            },
        };
        tracing::info!(upstream = %upstream.name(), "opened the upstream session of an MCP session");
        self.healed
            .insert((state.nonce, upstream.name().to_string()), opened.clone())
            .await;
        Ok(opened)
    }

    /// Sends `message` to `upstream` for `d`; an upstream that lost its session gets a new
    /// one and the request once more.
    async fn call(
        &self,
        d: &Downstream,
        upstream: &Arc<Upstream>,
        message: Value,
    ) -> Result<UpstreamMessages, UpstreamError> {
        let hop = self.hop(d, upstream).await?;
        match upstream.request(&hop, message.clone()).await {
            Err(UpstreamError::SessionLost) => {
                tracing::warn!(upstream = %upstream.name(), "the upstream lost its session; re-initializing");
                let hop = match (&d.era, &d.session) {
                    (Era::Handshake, Some(state)) => {
                        let opened = self.reopen(state, upstream).await?;
                        session_hop(&opened.session_id, &opened.protocol_version, state)
                    }
                    _ => {
                        upstream.forget_pooled(&d.caller.binding()).await;
                        self.hop(d, upstream).await?
                    }
                };
                upstream.request(&hop, message).await
            }
            other => other,
        }
    }

    /// Every page of one list from one upstream.
    async fn collect(
        &self,
        d: &Downstream,
        upstream: &Arc<Upstream>,
        kind: ListKind,
    ) -> Result<Vec<Value>, UpstreamError> {
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let mut params = json!({});
            if let Some(cursor) = &cursor {
                params["cursor"] = cursor.clone();
            }
            let request = json!({"jsonrpc": "2.0", "id": self.next_request_id(), "method": kind.method(), "params": params});
            let answer = final_answer(self.call(d, upstream, request).await?).await?;
            if let Some(error) = answer.get("error") {
                return Err(UpstreamError::Protocol(format!(
                    "{} failed: {}",
                    kind.method(),
                    error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error")
                )));
            }
            let result = &answer["result"];
            if let Some(page_items) = result.get(kind.key()).and_then(Value::as_array) {
                items.extend(page_items.iter().cloned());
            }
            match result.get("nextCursor") {
                Some(next) if !next.is_null() && next.as_str() != Some("") => {
                    cursor = Some(next.clone())
                }
                _ => return Ok(items),
            }
        }
        tracing::warn!(upstream = %upstream.name(), "stopped reading a list after {MAX_PAGES} pages");
        Ok(items)
    }

    async fn list(&self, d: &Downstream, id: &Value, kind: ListKind) -> Reply {
        let server = d
            .server
            .as_deref()
            .and_then(|s| self.settings.virtual_server(s));
        let in_scope: Vec<Arc<Upstream>> = self
            .upstreams
            .iter()
            .filter(|u| match (kind, server) {
                (ListKind::Resources | ListKind::Templates, Some(server)) => {
                    server.offers_resources_of(u.name())
                }
                _ => true,
            })
            .cloned()
            .collect();
        let fetched = futures::future::join_all(in_scope.iter().map(|upstream| async move {
            let result =
                match tokio::time::timeout(upstream.timeout(), self.collect(d, upstream, kind))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(UpstreamError::Timeout),
                };
            (upstream.clone(), result)
        }))
        .await;
        let mut unavailable = Vec::new();
        for u in self
            .settings
            .upstreams
            .iter()
            .filter(|u| u.unavailable.is_some())
        {
            unavailable.push(json!({"upstream": u.name, "error": u.unavailable}));
            if u.failure_mode == UpstreamFailureMode::Closed {
                return Reply::error(
                    200,
                    Some(id),
                    protocol::error_code::SERVER_ERROR,
                    &format!(
                        "upstream '{}' is unavailable: {}",
                        u.name,
                        u.unavailable.as_deref().unwrap_or("")
                    ),
                    Some(json!({"upstream": u.name})),
                );
            }
        }
        let mut lists: Vec<(Arc<Upstream>, Vec<Value>)> = Vec::new();
        for (upstream, result) in fetched {
            match result {
                Ok(items) => lists.push((upstream, items)),
                Err(e) => {
                    tracing::warn!(upstream = %upstream.name(), error = %e, method = kind.method(), "an upstream's list is missing");
                    if upstream.settings.failure_mode == UpstreamFailureMode::Closed {
                        return Reply::Json {
                            status: 200,
                            message: upstream_error(upstream.name(), Some(id), &e),
                        };
                    }
                    unavailable.push(json!({"upstream": upstream.name(), "error": e.to_string()}));
                }
            }
        }
        let items = self.merge(d, kind, server.map(|s| s.name.as_str()), &lists);
        let mut result = Map::new();
        result.insert(kind.key().into(), Value::Array(items));
        let mut result = Value::Object(result);
        if !unavailable.is_empty() {
            result["_meta"] = json!({"gantry/unavailableUpstreams": unavailable});
        }
        if d.era == Era::Stateless {
            // Lists depend on the caller's rights: cacheable only by this caller, and not
            // for long.
            result["cacheScope"] = Value::from("private");
            result["ttlMs"] = Value::from(0);
        }
        Reply::ok(protocol::result_response(id, self.stamp(d, result)))
    }

    /// Curates, judges, authorizes, names and sorts the items of every upstream.
    fn merge(
        &self,
        d: &Downstream,
        kind: ListKind,
        server: Option<&str>,
        lists: &[(Arc<Upstream>, Vec<Value>)],
    ) -> Vec<Value> {
        let naming = &self.settings.naming;
        let virtual_server = server.and_then(|s| self.settings.virtual_server(s));
        // (offered name → upstreams offering it), for collisions and shadowing checks.
        let mut offered: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let mut candidates: Vec<(&Arc<Upstream>, String, String, &Value)> = Vec::new();
        for (upstream, items) in lists {
            let curation = kind.curation(&upstream.settings);
            for item in items {
                let Some(raw) = item.get(kind.name_field()).and_then(Value::as_str) else {
                    continue;
                };
                if !curation.offers(raw) {
                    continue;
                }
                let offered_name = curation.offered_name(raw).to_string();
                if kind.is_named() {
                    offered
                        .entry(offered_name.clone())
                        .or_default()
                        .push(upstream.name());
                }
                candidates.push((upstream, raw.to_string(), offered_name, item));
            }
        }
        // What each upstream's definitions may not mention: the other upstreams' tool and
        // prompt names, built once per list (and remembered for the checks before calls).
        let mut foreign_for: HashMap<&str, Foreign> = HashMap::new();
        if kind.is_named() {
            for (upstream, _) in lists {
                let mut others: Vec<(String, String)> = lists
                    .iter()
                    .filter(|(u, _)| u.name() != upstream.name())
                    .flat_map(|(u, items)| {
                        items.iter().filter_map(move |i| {
                            let raw = i.get("name").and_then(Value::as_str)?;
                            Some((raw.to_string(), naming.federated(u.name(), raw)))
                        })
                    })
                    .collect();
                others.sort();
                let key = {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    (kind.method(), &others).hash(&mut hasher);
                    hasher.finish()
                };
                let names = Foreign {
                    names: Arc::new(ForeignNames::new(others)),
                    key,
                };
                if kind == ListKind::Tools {
                    self.defences
                        .remember_foreign(upstream.name(), names.clone());
                }
                foreign_for.insert(upstream.name(), names);
            }
        }
        let mut out: Vec<(String, Value)> = Vec::new();
        for (upstream, raw, offered_name, item) in candidates {
            let federated = match kind {
                ListKind::Tools | ListKind::Prompts => {
                    naming.federated(upstream.name(), &offered_name)
                }
                ListKind::Resources | ListKind::Templates => match naming.mode {
                    NamingMode::Prefix => federated_uri(upstream.name(), &raw),
                    NamingMode::None => raw.clone(),
                },
            };
            if kind.is_named() {
                if let Some(owners) = offered.get(&offered_name).filter(|o| o.len() > 1) {
                    self.defences.count("collision", "seen");
                    tracing::warn!(name = %offered_name, upstreams = ?owners, "several MCP upstreams offer the same name");
                    if self.settings.on_collision == VerdictAction::Block {
                        continue;
                    }
                }
            }
            if let Some(vs) = virtual_server {
                let offered_here = match kind {
                    ListKind::Tools => vs.offers_tool(&federated),
                    ListKind::Prompts => vs.offers_prompt(&federated),
                    _ => true,
                };
                if !offered_here {
                    continue;
                }
            }
            let foreign = foreign_for
                .get(upstream.name())
                .cloned()
                .unwrap_or_else(Foreign::none);
            if let Verdict::Withhold { reason } = self.defences.judge(
                &self.settings,
                &upstream.settings,
                kind.definition_kind(),
                &raw,
                item,
                &foreign,
            ) {
                tracing::info!(upstream = %upstream.name(), item = %raw, %reason, "MCP item withheld");
                continue;
            }
            let facts = McpFacts {
                caller: &d.caller,
                method: kind.method(),
                kind: kind.item_kind(),
                upstream: upstream.name(),
                name: &federated,
                upstream_name: &raw,
                server: server.unwrap_or(""),
                arguments: None,
                headers: &d.headers,
            };
            if !self.settings.rules.permits(&facts) {
                continue;
            }
            let mut item = item.clone();
            match kind {
                ListKind::Tools | ListKind::Prompts => {
                    item["name"] = Value::from(federated.clone());
                    if let Some(description) = kind.curation(&upstream.settings).description(&raw) {
                        item["description"] = Value::from(description);
                    }
                }
                ListKind::Resources => {
                    item["uri"] = Value::from(federated.clone());
                    if let Some(description) = kind.curation(&upstream.settings).description(&raw) {
                        item["description"] = Value::from(description);
                    }
                }
                ListKind::Templates => {
                    item["uriTemplate"] = Value::from(federated.clone());
                }
            }
            out.push((federated, item));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out.into_iter().map(|(_, item)| item).collect()
    }

    /// `tools/call` and `prompts/get`: split the prefix, check, forward.
    async fn routed_by_name(
        &self,
        d: &Downstream,
        id: &Value,
        method: &str,
        kind: ItemKind,
        mut message: Value,
    ) -> Reply {
        let Some(name) = message["params"]["name"].as_str().map(str::to_string) else {
            return Reply::error(
                200,
                Some(id),
                protocol::error_code::INVALID_PARAMS,
                "params.name is missing",
                None,
            );
        };
        let label = if kind == ItemKind::Tool {
            "tool"
        } else {
            "prompt"
        };
        let unknown = || {
            Reply::error(
                200,
                Some(id),
                protocol::error_code::INVALID_PARAMS,
                &format!("unknown {label} '{name}'"),
                None,
            )
        };
        let (upstream_name, offered) = match self.settings.naming.mode {
            NamingMode::Prefix => match self.settings.naming.split(&name) {
                Some((upstream, offered)) => (upstream.to_string(), offered),
                None => return unknown(),
            },
            NamingMode::None => match self.owner_without_prefix(d, kind, &name).await {
                Some(owner) => (owner, name.as_str()),
                None => return unknown(),
            },
        };
        let Some(settings) = self.upstream_settings(&upstream_name) else {
            return unknown();
        };
        let curation = if kind == ItemKind::Tool {
            &settings.tools
        } else {
            &settings.prompts
        };
        let Some(raw) = curation.upstream_name(offered).map(str::to_string) else {
            return unknown();
        };
        if let Some(server) = d
            .server
            .as_deref()
            .and_then(|s| self.settings.virtual_server(s))
        {
            let offered_here = if kind == ItemKind::Tool {
                server.offers_tool(&name)
            } else {
                server.offers_prompt(&name)
            };
            if !offered_here {
                return unknown();
            }
        }
        if let Some(reason) = &settings.unavailable {
            return Reply::error(
                200,
                Some(id),
                protocol::error_code::SERVER_ERROR,
                &format!("upstream '{upstream_name}' is unavailable: {reason}"),
                Some(json!({"upstream": upstream_name})),
            );
        }
        let Some(upstream) = self.upstream(&upstream_name).cloned() else {
            return unknown();
        };
        let arguments = message["params"]["arguments"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let facts = McpFacts {
            caller: &d.caller,
            method,
            kind,
            upstream: &upstream_name,
            name: &name,
            upstream_name: &raw,
            server: d.server.as_deref().unwrap_or(""),
            arguments: Some(&arguments),
            headers: &d.headers,
        };
        match self.settings.rules.evaluate(&facts) {
            RuleVerdict::NoRules | RuleVerdict::Allowed { .. } => {}
            RuleVerdict::Denied { rule } => {
                tracing::info!(caller = %d.caller.binding(), %name, %rule, "MCP call denied");
                return Reply::error(
                    200,
                    Some(id),
                    FORBIDDEN,
                    &format!("calling {label} '{name}' is denied (rule '{rule}')"),
                    None,
                );
            }
            RuleVerdict::NoneAllowed => {
                tracing::info!(caller = %d.caller.binding(), %name, "MCP call denied: no rule allows it");
                return Reply::error(
                    200,
                    Some(id),
                    FORBIDDEN,
                    &format!("calling {label} '{name}' is denied (no rule allows it)"),
                    None,
                );
            }
        }
        if kind == ItemKind::Tool {
            if let Err(reason) = self.check_before_call(d, &upstream, &raw).await {
                return Reply::error(
                    200,
                    Some(id),
                    FORBIDDEN,
                    &format!("tool '{name}' is withheld: {reason}"),
                    Some(json!({"upstream": upstream_name})),
                );
            }
        }
        message["params"]["name"] = Value::from(raw);
        self.forward(d, id, &upstream, method, message).await
    }

    /// The prefix resource URIs of `upstream` get (`None` in naming mode none).
    fn uri_prefix(&self, upstream: &str) -> Option<String> {
        (self.settings.naming.mode == NamingMode::Prefix).then(|| upstream.to_string())
    }

    /// The upstream owning a client-facing resource URI, and the upstream's own URI: by its
    /// `<upstream>+` prefix, or in naming mode none by asking which upstream lists it (as a
    /// resource, else through one of its templates).
    async fn resolve_uri(&self, d: &Downstream, uri: &str) -> Option<(String, String)> {
        if self.settings.naming.mode == NamingMode::Prefix {
            return split_uri(uri).map(|(u, raw)| (u.to_string(), raw.to_string()));
        }
        let owners = futures::future::join_all(self.upstreams.iter().map(|upstream| async move {
            let timeout = upstream.timeout();
            let resources =
                tokio::time::timeout(timeout, self.collect(d, upstream, ListKind::Resources))
                    .await
                    .ok()?
                    .ok()?;
            if resources.iter().any(|r| r["uri"].as_str() == Some(uri)) {
                return Some((upstream.name().to_string(), 2));
            }
            let templates =
                tokio::time::timeout(timeout, self.collect(d, upstream, ListKind::Templates))
                    .await
                    .ok()?
                    .ok()?;
            templates
                .iter()
                .filter_map(|t| t["uriTemplate"].as_str())
                .any(|t| gantry_policy::mcp::names::template_matches(t, uri))
                .then(|| (upstream.name().to_string(), 1))
        }))
        .await;
        // An exact resource wins over a template match; ties have no owner.
        let mut owners: Vec<(String, u8)> = owners.into_iter().flatten().collect();
        owners.sort_by_key(|o| std::cmp::Reverse(o.1));
        match owners.as_slice() {
            [(owner, _)] => Some((owner.clone(), uri.to_string())),
            [(owner, best), (_, next), ..] if best > next => Some((owner.clone(), uri.to_string())),
            _ => None,
        }
    }

    /// With naming mode `none`: the one upstream offering `name` (a name two upstreams
    /// offer is withheld in that mode, so it has no owner).
    async fn owner_without_prefix(
        &self,
        d: &Downstream,
        kind: ItemKind,
        name: &str,
    ) -> Option<String> {
        let list = if kind == ItemKind::Tool {
            ListKind::Tools
        } else {
            ListKind::Prompts
        };
        let owners = futures::future::join_all(self.upstreams.iter().map(|upstream| async move {
            let items = tokio::time::timeout(upstream.timeout(), self.collect(d, upstream, list))
                .await
                .ok()?
                .ok()?;
            let curation = list.curation(&upstream.settings);
            items
                .iter()
                .filter_map(|i| i.get("name").and_then(Value::as_str))
                .any(|raw| curation.offers(raw) && curation.offered_name(raw) == name)
                .then(|| upstream.name().to_string())
        }))
        .await;
        let mut owners = owners.into_iter().flatten();
        match (owners.next(), owners.next()) {
            (Some(owner), None) => Some(owner),
            _ => None,
        }
    }

    /// The rug-pull check before a call: the tool's latest definition must still be served;
    /// a verdict older than a few seconds is refreshed from the upstream first.
    async fn check_before_call(
        &self,
        d: &Downstream,
        upstream: &Arc<Upstream>,
        raw: &str,
    ) -> Result<(), String> {
        let fresh = self
            .defences
            .latest(upstream.name(), raw)
            .filter(|l| l.seen.elapsed() < CALL_RECHECK_AFTER);
        let latest = match fresh {
            Some(latest) => Some(latest),
            None => {
                match tokio::time::timeout(
                    upstream.timeout(),
                    self.collect(d, upstream, ListKind::Tools),
                )
                .await
                {
                    Ok(Ok(items)) => {
                        let foreign = self.defences.foreign(upstream.name());
                        for item in &items {
                            if let Some(name) = item.get("name").and_then(Value::as_str) {
                                self.defences.judge(
                                    &self.settings,
                                    &upstream.settings,
                                    DefinitionKind::Tool,
                                    name,
                                    item,
                                    &foreign,
                                );
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        return Err(format!(
                            "its definition could not be checked: upstream '{}' {e}",
                            upstream.name()
                        ))
                    }
                    Err(_) => {
                        return Err(format!(
                            "its definition could not be checked: upstream '{}' did not answer",
                            upstream.name()
                        ))
                    }
                }
                self.defences.latest(upstream.name(), raw)
            }
        };
        match latest {
            Some(latest) => match latest.verdict {
                Verdict::Serve => Ok(()),
                Verdict::Withhold { reason } => Err(reason),
            },
            None => Err("the upstream does not list it".into()),
        }
    }

    async fn routed_by_uri(
        &self,
        d: &Downstream,
        id: &Value,
        method: &str,
        mut message: Value,
    ) -> Reply {
        let Some(uri) = message["params"]["uri"].as_str().map(str::to_string) else {
            return Reply::error(
                200,
                Some(id),
                protocol::error_code::INVALID_PARAMS,
                "params.uri is missing",
                None,
            );
        };
        let not_found = || {
            Reply::error(
                200,
                Some(id),
                protocol::error_code::INVALID_PARAMS,
                &format!("unknown resource '{uri}'"),
                Some(json!({"uri": uri})),
            )
        };
        let Some((upstream_name, raw_uri)) = self.resolve_uri(d, &uri).await else {
            return not_found();
        };
        let (upstream_name, raw_uri) = (upstream_name.as_str(), raw_uri.as_str());
        let Some(settings) = self.upstream_settings(upstream_name) else {
            return not_found();
        };
        if !settings.resources.offers(raw_uri) {
            return not_found();
        }
        if let Some(server) = d
            .server
            .as_deref()
            .and_then(|s| self.settings.virtual_server(s))
        {
            if !server.offers_resources_of(upstream_name) {
                return not_found();
            }
        }
        let Some(upstream) = self.upstream(upstream_name).cloned() else {
            return Reply::error(
                200,
                Some(id),
                protocol::error_code::SERVER_ERROR,
                &format!("upstream '{upstream_name}' is unavailable"),
                Some(json!({"upstream": upstream_name})),
            );
        };
        let facts = McpFacts {
            caller: &d.caller,
            method,
            kind: ItemKind::Resource,
            upstream: upstream_name,
            name: &uri,
            upstream_name: raw_uri,
            server: d.server.as_deref().unwrap_or(""),
            arguments: None,
            headers: &d.headers,
        };
        if !self.settings.rules.permits(&facts) {
            return Reply::error(
                200,
                Some(id),
                FORBIDDEN,
                &format!("reading resource '{uri}' is denied"),
                None,
            );
        }
        message["params"]["uri"] = Value::from(raw_uri.to_string());
        self.forward(d, id, &upstream, method, message).await
    }

    /// `completion/complete`: routed by the prompt name or resource URI it refers to.
    async fn complete(&self, d: &Downstream, id: &Value, mut message: Value) -> Reply {
        let reference = message["params"]["ref"].clone();
        let (upstream_name, rewritten) = match reference["type"].as_str() {
            Some("ref/prompt") => {
                let federated = reference["name"].as_str().unwrap_or("").to_string();
                let owner = match self.settings.naming.mode {
                    NamingMode::Prefix => self
                        .settings
                        .naming
                        .split(&federated)
                        .map(|(u, n)| (u.to_string(), n.to_string())),
                    NamingMode::None => self
                        .owner_without_prefix(d, ItemKind::Prompt, &federated)
                        .await
                        .map(|owner| (owner, federated.clone())),
                };
                let Some((upstream, name)) = owner else {
                    return Reply::error(
                        200,
                        Some(id),
                        protocol::error_code::INVALID_PARAMS,
                        "unknown prompt in ref",
                        None,
                    );
                };
                let raw = self
                    .upstream_settings(&upstream)
                    .and_then(|s| s.prompts.upstream_name(&name))
                    .unwrap_or(&name)
                    .to_string();
                (upstream, json!({"type": "ref/prompt", "name": raw}))
            }
            Some("ref/resource") => {
                let federated = reference["uri"].as_str().unwrap_or("").to_string();
                let Some((upstream, uri)) = self.resolve_uri(d, &federated).await else {
                    return Reply::error(
                        200,
                        Some(id),
                        protocol::error_code::INVALID_PARAMS,
                        "unknown resource in ref",
                        None,
                    );
                };
                (
                    upstream.to_string(),
                    json!({"type": "ref/resource", "uri": uri}),
                )
            }
            _ => {
                return Reply::error(
                    200,
                    Some(id),
                    protocol::error_code::INVALID_PARAMS,
                    "params.ref must be a ref/prompt or ref/resource",
                    None,
                )
            }
        };
        let Some(upstream) = self.upstream(&upstream_name).cloned() else {
            return Reply::error(
                200,
                Some(id),
                protocol::error_code::INVALID_PARAMS,
                &format!("unknown upstream '{upstream_name}'"),
                None,
            );
        };
        message["params"]["ref"] = rewritten;
        self.forward(d, id, &upstream, "completion/complete", message)
            .await
    }

    /// Sends a routed request and turns the upstream's messages into the client's answer. The
    /// whole answer must arrive within the upstream's timeout.
    async fn forward(
        &self,
        d: &Downstream,
        id: &Value,
        upstream: &Arc<Upstream>,
        method: &str,
        message: Value,
    ) -> Reply {
        let deadline = tokio::time::Instant::now() + upstream.timeout();
        let failed = |e: &UpstreamError| Reply::ok(upstream_error(upstream.name(), Some(id), e));
        let mut messages =
            match tokio::time::timeout_at(deadline, self.call(d, upstream, message)).await {
                Ok(Ok(messages)) => messages,
                Ok(Err(e)) => return failed(&e),
                Err(_) => return failed(&UpstreamError::Timeout),
            };
        let translator = Translator {
            upstream: upstream.name().to_string(),
            uri_prefix: self.uri_prefix(upstream.name()),
            client_id: id.clone(),
            method: method.to_string(),
            stateless: d.era == Era::Stateless,
            server_info: self.settings.server_info.clone(),
        };
        let first = match next_before(&mut messages, deadline).await {
            Ok(first) => first,
            Err(e) => return failed(&e),
        };
        if is_response(&first) {
            return Reply::ok(translator.translate(first));
        }
        if !d.accepts_sse {
            // The client takes JSON only: wait for the response, dropping what comes before.
            loop {
                match next_before(&mut messages, deadline).await {
                    Ok(m) if is_response(&m) => return Reply::ok(translator.translate(m)),
                    Ok(_) => continue,
                    Err(e) => return failed(&e),
                }
            }
        }
        // Stream: the first message, then the rest up to the response (or an error in its
        // place, which also ends the stream).
        let rest = futures::stream::unfold(Some(messages), move |messages| async move {
            let mut messages = messages?;
            let next = next_before(&mut messages, deadline).await;
            let done = next.as_ref().map_or(true, is_response);
            Some((next, (!done).then_some(messages)))
        });
        let translated = futures::stream::once(async { Ok(first) })
            .chain(rest)
            .map(move |next| match next {
                Ok(m) => translator.translate(m),
                Err(e) => upstream_error(&translator.upstream, Some(&translator.client_id), &e),
            });
        Reply::Stream(Box::pin(translated))
    }

    /// A handshake-era session's standalone stream: the GET streams of its upstream sessions
    /// and the notifications of the shared connections, merged. Server requests get bridge
    /// ids, resource URIs and logger names name their upstream, and a burst of the same
    /// `list_changed` from several upstreams reaches the client once. `None` when no upstream
    /// offers such a stream.
    pub async fn listen(&self, d: &Downstream) -> Option<BoxStream<'static, Value>> {
        let opened = futures::future::join_all(self.upstreams.iter().map(|upstream| async move {
            let hop = self.hop(d, upstream).await.ok()?;
            match upstream.listen(&hop).await {
                Ok(Some(stream)) => Some((upstream.name().to_string(), stream)),
                Ok(None) => None,
                Err(e) => {
                    tracing::info!(upstream = %upstream.name(), error = %e, "no server-to-client stream from this upstream");
                    None
                }
            }
        }))
        .await;
        let prefix_uris = self.settings.naming.mode == NamingMode::Prefix;
        let streams: Vec<BoxStream<'static, Value>> = opened
            .into_iter()
            .flatten()
            .map(|(upstream, stream)| {
                let stream: BoxStream<'static, Value> = Box::pin(stream.filter_map(move |m| {
                    let upstream = upstream.clone();
                    async move { m.ok().map(|m| listened_message(&upstream, prefix_uris, m)) }
                }));
                stream
            })
            .collect();
        if streams.is_empty() {
            return None;
        }
        let mut last_list_changed: HashMap<String, std::time::Instant> = HashMap::new();
        let merged = futures::stream::select_all(streams).filter(move |m| {
            let keep = match m.get("method").and_then(Value::as_str) {
                Some(method) if method.ends_with("/list_changed") => {
                    let now = std::time::Instant::now();
                    let recent = last_list_changed
                        .get(method)
                        .is_some_and(|at| now.duration_since(*at) < LIST_CHANGED_COALESCE);
                    last_list_changed.insert(method.to_string(), now);
                    !recent
                }
                _ => true,
            };
            futures::future::ready(keep)
        });
        Some(Box::pin(merged))
    }

    /// `subscriptions/listen` (2026-07-28): one subscription per upstream (a `listen` of its own
    /// for stateless upstreams, the session's stream or the shared connection's notifications
    /// otherwise), each asked only for what concerns it (resource URIs go to their owner). The
    /// client gets one acknowledgement with the union of what the upstreams accepted, then
    /// their notifications, filtered to what it asked for and tagged with its subscription id.
    async fn subscribe(&self, d: &Downstream, id: &Value, params: &Value) -> Reply {
        let wanted = params.get("notifications").cloned().unwrap_or(json!({}));
        let flags = [
            "toolsListChanged",
            "promptsListChanged",
            "resourcesListChanged",
        ];
        let uris: Vec<String> = wanted["resourceSubscriptions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let opened = futures::future::join_all(self.upstreams.iter().map(|upstream| {
            let wanted = wanted.clone();
            let uris = uris.clone();
            async move {
                let own_uris: Vec<Value> = match self.settings.naming.mode {
                    NamingMode::Prefix => uris
                        .iter()
                        .filter_map(|u| split_uri(u).filter(|(owner, _)| *owner == upstream.name()))
                        .map(|(_, raw)| Value::from(raw))
                        .collect(),
                    // URIs are the upstreams' own: each upstream accepts those it knows.
                    NamingMode::None => uris.iter().map(|u| Value::from(u.as_str())).collect(),
                };
                let mut filter = json!({});
                for flag in flags {
                    if wanted[flag] == true {
                        filter[flag] = Value::Bool(true);
                    }
                }
                if !own_uris.is_empty() {
                    filter["resourceSubscriptions"] = Value::Array(own_uris);
                }
                let hop = self.hop(d, upstream).await.ok()?;
                let (accepted, stream) = match hop {
                    Hop::Stateless { .. } => {
                        let request = json!({"jsonrpc": "2.0", "id": self.next_request_id(),
                                             "method": "subscriptions/listen", "params": {"notifications": filter}});
                        let mut messages = upstream.open_subscription(&hop, request).await.ok()?;
                        let first = tokio::time::timeout(upstream.timeout(), messages.next()).await.ok()??.ok()?;
                        if first.get("method").and_then(Value::as_str) != Some("notifications/subscriptions/acknowledged") {
                            tracing::info!(upstream = %upstream.name(), "subscriptions/listen was not acknowledged");
                            return None;
                        }
                        (first["params"]["notifications"].clone(), messages)
                    }
                    hop => (filter, upstream.listen(&hop).await.ok()??),
                };
                Some((upstream.name().to_string(), accepted, stream))
            }
        }))
        .await;
        let prefix_uris = self.settings.naming.mode == NamingMode::Prefix;
        let mut accepted = json!({});
        let mut streams: Vec<BoxStream<'static, Value>> = Vec::new();
        for (upstream, upstream_accepted, stream) in opened.into_iter().flatten() {
            for flag in flags {
                if upstream_accepted[flag] == true {
                    accepted[flag] = Value::Bool(true);
                }
            }
            if let Some(raw) = upstream_accepted["resourceSubscriptions"].as_array() {
                let list = accepted.as_object_mut().map(|a| {
                    a.entry("resourceSubscriptions")
                        .or_insert_with(|| json!([]))
                });
                if let Some(Value::Array(list)) = list {
                    for uri in raw.iter().filter_map(Value::as_str) {
                        list.push(Value::from(match prefix_uris {
                            true => federated_uri(&upstream, uri),
                            false => uri.to_string(),
                        }));
                    }
                }
            }
            streams.push(Box::pin(stream.filter_map(move |m| {
                let upstream = upstream.clone();
                async move { m.ok().map(|m| listened_message(&upstream, prefix_uris, m)) }
            })));
        }
        let subscription_id = id.clone();
        let ack = json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {
                "notifications": accepted.clone(),
                "_meta": {protocol::meta_key::SUBSCRIPTION_ID: subscription_id},
            }
        });
        let tag = id.clone();
        let notifications = futures::stream::select_all(streams).filter_map(move |mut m| {
            let wanted_here = match m.get("method").and_then(Value::as_str) {
                Some("notifications/tools/list_changed") => accepted["toolsListChanged"] == true,
                Some("notifications/prompts/list_changed") => {
                    accepted["promptsListChanged"] == true
                }
                Some("notifications/resources/list_changed") => {
                    accepted["resourcesListChanged"] == true
                }
                Some("notifications/resources/updated") => accepted["resourceSubscriptions"]
                    .as_array()
                    .is_some_and(|l| l.contains(&m["params"]["uri"])),
                _ => false,
            };
            if wanted_here {
                if !m["params"].is_object() {
                    m["params"] = json!({});
                }
                let meta = m["params"]
                    .as_object_mut()
                    .map(|p| p.entry("_meta").or_insert_with(|| json!({})));
                if let Some(meta) = meta.and_then(Value::as_object_mut) {
                    meta.insert(protocol::meta_key::SUBSCRIPTION_ID.into(), tag.clone());
                }
            }
            futures::future::ready(wanted_here.then_some(m))
        });
        Reply::Stream(Box::pin(
            futures::stream::once(async move { ack }).chain(notifications),
        ))
    }

    /// The upstreams the bridge connects to (those whose credentials are set).
    pub fn upstream_names(&self) -> Vec<String> {
        self.upstreams
            .iter()
            .map(|u| u.name().to_string())
            .collect()
    }
}

fn session_hop(session_id: &Option<String>, protocol_version: &str, state: &SessionState) -> Hop {
    if session_id.is_none() && protocol_version == protocol::LATEST_MODERN_VERSION {
        Hop::Stateless {
            meta: json!({
                protocol::meta_key::CLIENT_CAPABILITIES: state.client_capabilities,
                protocol::meta_key::CLIENT_INFO: state.client_info,
            }),
            param_headers: Vec::new(),
        }
    } else {
        Hop::Session {
            session_id: session_id.clone(),
            protocol_version: protocol_version.to_string(),
        }
    }
}

/// The parts of a stateless client's `_meta` worth sending upstream (the protocol version
/// is set per hop).
fn relayable_meta(meta: &Value) -> Value {
    let mut out = Map::new();
    for key in [
        protocol::meta_key::CLIENT_CAPABILITIES,
        protocol::meta_key::CLIENT_INFO,
        protocol::meta_key::LOG_LEVEL,
    ] {
        if let Some(value) = meta.get(key) {
            out.insert(key.to_string(), value.clone());
        }
    }
    if !out.contains_key(protocol::meta_key::CLIENT_CAPABILITIES) {
        out.insert(protocol::meta_key::CLIENT_CAPABILITIES.into(), json!({}));
    }
    Value::Object(out)
}

/// Turns upstream messages into what the client sees.
struct Translator {
    upstream: String,
    /// The upstream name resource URIs get as prefix (`None` in naming mode none).
    uri_prefix: Option<String>,
    client_id: Value,
    method: String,
    stateless: bool,
    server_info: Value,
}

impl Translator {
    fn translate(&self, mut message: Value) -> Value {
        let is_request = message.get("method").is_some() && message.get("id").is_some();
        if is_request {
            let original = message["id"].clone();
            message["id"] = Value::from(relayed_id(&self.upstream, &original));
            return message;
        }
        if message.get("method").is_some() {
            return message; // a notification (progress, logging, …)
        }
        message["id"] = self.client_id.clone();
        if let Some(result) = message.get_mut("result") {
            rewrite_uris(self.uri_prefix.as_deref(), &self.method, result);
            if self.stateless {
                if let Some(object) = result.as_object_mut() {
                    object
                        .entry("resultType")
                        .or_insert_with(|| Value::from("complete"));
                    let meta = object.entry("_meta").or_insert_with(|| json!({}));
                    if let Some(meta) = meta.as_object_mut() {
                        meta.insert(
                            protocol::meta_key::SERVER_INFO.into(),
                            self.server_info.clone(),
                        );
                    }
                    // Results depend on the caller's rights: never cacheable across callers.
                    // A read answered on a handshake-era hop gets the fields 2026 requires.
                    if object.contains_key("cacheScope") || self.method == "resources/read" {
                        object.insert("cacheScope".into(), Value::from("private"));
                        object.entry("ttlMs").or_insert_with(|| Value::from(0));
                    }
                }
            }
        }
        message
    }
}

/// Resource URIs inside results point back through the bridge.
fn rewrite_uris(upstream: Option<&str>, method: &str, result: &mut Value) {
    let Some(upstream) = upstream else {
        return; // naming mode none: URIs are the upstreams' own
    };
    let rewrite = |value: &mut Value| {
        if let Some(uri) = value.get("uri").and_then(Value::as_str) {
            let federated = federated_uri(upstream, uri);
            value["uri"] = Value::from(federated);
        }
    };
    match method {
        "resources/read" => {
            if let Some(contents) = result.get_mut("contents").and_then(Value::as_array_mut) {
                contents.iter_mut().for_each(rewrite);
            }
        }
        "tools/call" => {
            if let Some(content) = result.get_mut("content").and_then(Value::as_array_mut) {
                for block in content {
                    match block.get("type").and_then(Value::as_str) {
                        Some("resource_link") => rewrite(block),
                        Some("resource") => {
                            if let Some(resource) = block.get_mut("resource") {
                                rewrite(resource);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        "prompts/get" => {
            if let Some(messages) = result.get_mut("messages").and_then(Value::as_array_mut) {
                for message in messages {
                    if let Some(content) = message.get_mut("content") {
                        match content.get("type").and_then(Value::as_str) {
                            Some("resource_link") => rewrite(content),
                            Some("resource") => {
                                if let Some(resource) = content.get_mut("resource") {
                                    rewrite(resource);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// A message from an upstream's standalone stream, as the client sees it.
fn listened_message(upstream: &str, prefix_uris: bool, mut message: Value) -> Value {
    if message.get("method").is_some() && message.get("id").is_some() {
        let original = message["id"].clone();
        message["id"] = Value::from(relayed_id(upstream, &original));
        return message;
    }
    match message.get("method").and_then(Value::as_str) {
        Some("notifications/resources/updated") => {
            if let Some(uri) = message["params"]["uri"].as_str().filter(|_| prefix_uris) {
                message["params"]["uri"] = Value::from(federated_uri(upstream, uri));
            }
        }
        Some("notifications/message") => {
            let logger = match message["params"]["logger"].as_str() {
                Some(logger) => format!("{upstream}/{logger}"),
                None => upstream.to_string(),
            };
            if message["params"].is_object() {
                message["params"]["logger"] = Value::from(logger);
            }
        }
        _ => {}
    }
    message
}

/// Whether an upstream message is the response (not a notification or a server request).
fn is_response(message: &Value) -> bool {
    message.get("method").is_none()
}

/// The upstream's next message, or why there is none before `deadline`.
async fn next_before(
    messages: &mut UpstreamMessages,
    deadline: tokio::time::Instant,
) -> Result<Value, UpstreamError> {
    match tokio::time::timeout_at(deadline, messages.next()).await {
        Ok(Some(message)) => message,
        Ok(None) => Err(UpstreamError::Closed),
        Err(_) => Err(UpstreamError::Timeout),
    }
}

/// The id a relayed server request gets: the upstream and its own id, recoverable.
fn relayed_id(upstream: &str, original: &Value) -> String {
    let encoded = URL_SAFE_NO_PAD.encode(serde_json::to_vec(original).unwrap_or_default());
    format!("{RELAYED_ID_PREFIX}{upstream}.{encoded}")
}

fn parse_relayed_id(id: &str) -> Option<(String, Value)> {
    let rest = id.strip_prefix(RELAYED_ID_PREFIX)?;
    let (upstream, encoded) = rest.rsplit_once('.')?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    Some((upstream.to_string(), serde_json::from_slice(&bytes).ok()?))
}

/// The four federated lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl ListKind {
    fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::Templates => "resources/templates/list",
        }
    }

    fn key(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::Templates => "resourceTemplates",
        }
    }

    fn name_field(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::Templates => "uriTemplate",
        }
    }

    fn is_named(self) -> bool {
        matches!(self, ListKind::Tools | ListKind::Prompts)
    }

    fn curation(self, settings: &UpstreamSettings) -> &gantry_policy::mcp::names::Curation {
        match self {
            ListKind::Tools => &settings.tools,
            ListKind::Prompts => &settings.prompts,
            ListKind::Resources | ListKind::Templates => &settings.resources,
        }
    }

    fn definition_kind(self) -> DefinitionKind {
        match self {
            ListKind::Tools => DefinitionKind::Tool,
            ListKind::Prompts => DefinitionKind::Prompt,
            ListKind::Resources => DefinitionKind::Resource,
            ListKind::Templates => DefinitionKind::ResourceTemplate,
        }
    }

    fn item_kind(self) -> ItemKind {
        match self {
            ListKind::Tools => ItemKind::Tool,
            ListKind::Prompts => ItemKind::Prompt,
            ListKind::Resources => ItemKind::Resource,
            ListKind::Templates => ItemKind::ResourceTemplate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_ids_round_trip_numbers_and_strings() {
        for original in [json!(7), json!("req-1.a"), json!("x.y.z")] {
            let id = relayed_id("alpha", &original);
            assert_eq!(parse_relayed_id(&id), Some(("alpha".to_string(), original)));
        }
        assert_eq!(parse_relayed_id("7"), None);
    }

    #[test]
    fn uris_in_results_are_rewritten() {
        let mut result = json!({"content": [
            {"type": "text", "text": "x"},
            {"type": "resource_link", "uri": "memo://a", "name": "a"},
            {"type": "resource", "resource": {"uri": "memo://b", "text": "b"}}
        ]});
        rewrite_uris(Some("docs"), "tools/call", &mut result);
        assert_eq!(result["content"][1]["uri"], "docs+memo://a");
        assert_eq!(result["content"][2]["resource"]["uri"], "docs+memo://b");
        let mut read = json!({"contents": [{"uri": "memo://a", "text": "t"}]});
        rewrite_uris(Some("docs"), "resources/read", &mut read);
        assert_eq!(read["contents"][0]["uri"], "docs+memo://a");
    }
}
