//! Upstreams reached over one long-lived connection the bridge owns: a stdio child process, or
//! a legacy HTTP+SSE stream. The connection is opened, initialized (handshake era, the bridge's
//! own client identity, no sampling/elicitation/roots to relay), supervised, and reopened with
//! exponential backoff when it dies. Server requests on it are refused, since they cannot be
//! attributed to one client; notifications are logged.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_policy::mcp::protocol;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::http::{event_data, event_name};
use super::mux::Multiplexer;
use super::UpstreamError;

/// Where a shared connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedState {
    Starting,
    Ready { protocol_version: String },
    Down { reason: String },
}

/// How to open the connection.
#[derive(Debug, Clone)]
pub enum SharedTransport {
    Stdio {
        command: Vec<String>,
        env: Vec<(String, String)>,
    },
    Sse {
        url: String,
        headers: reqwest::header::HeaderMap,
    },
}

/// A supervised shared connection.
#[derive(Debug)]
pub struct SharedConnection {
    pub mux: Arc<Multiplexer>,
    state: watch::Receiver<SharedState>,
    /// Notifications the upstream sends on the connection, for clients' GET streams.
    pub notifications: broadcast::Sender<Value>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that stayed up this long starts its backoff from the beginning again.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

impl SharedConnection {
    /// Starts the supervisor; it runs until `stop` is cancelled.
    pub fn start(
        name: &str,
        transport: SharedTransport,
        client_info: Value,
        stop: CancellationToken,
    ) -> SharedConnection {
        let mux = Arc::new(Multiplexer::new(name));
        let (state_tx, state) = watch::channel(SharedState::Starting);
        let (notifications, _) = broadcast::channel(256);
        let supervisor = Supervisor {
            name: name.to_string(),
            transport,
            client_info,
            mux: mux.clone(),
            state: state_tx,
            notifications: notifications.clone(),
        };
        tokio::spawn(supervisor.run(stop));
        SharedConnection {
            mux,
            state,
            notifications,
        }
    }

    /// Waits (up to `deadline`) until the connection is initialized; returns its version.
    pub async fn ready(&self, deadline: Duration) -> Result<String, UpstreamError> {
        let mut state = self.state.clone();
        let wait = async {
            loop {
                let current = state.borrow_and_update().clone();
                match current {
                    SharedState::Ready { protocol_version } => return Ok(protocol_version),
                    SharedState::Down { reason } if !reason.is_empty() => {
                        // Down now, maybe up after the backoff: wait for the next change.
                        if state.changed().await.is_err() {
                            return Err(UpstreamError::Unavailable(reason));
                        }
                    }
                    _ => {
                        if state.changed().await.is_err() {
                            return Err(UpstreamError::Closed);
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(result) => result,
            Err(_) => Err(match &*self.state.borrow() {
                SharedState::Down { reason } => UpstreamError::Unavailable(reason.clone()),
                _ => UpstreamError::Timeout,
            }),
        }
    }
}

struct Supervisor {
    name: String,
    transport: SharedTransport,
    client_info: Value,
    mux: Arc<Multiplexer>,
    state: watch::Sender<SharedState>,
    notifications: broadcast::Sender<Value>,
}

impl Supervisor {
    async fn run(self, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let reason = tokio::select! {
                _ = stop.cancelled() => return,
                reason = self.connect_once() => reason,
            };
            self.mux
                .disconnected(UpstreamError::Unavailable(reason.clone()));
            let _ = self.state.send(SharedState::Down {
                reason: reason.clone(),
            });
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = FIRST_BACKOFF;
            }
            tracing::warn!(upstream = %self.name, %reason, retry_in_ms = backoff.as_millis() as u64, "MCP upstream connection lost; reconnecting");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Opens, initializes and serves one connection; returns why it ended.
    async fn connect_once(&self) -> String {
        let (outgoing_tx, outgoing_rx) = mpsc::channel::<Value>(64);
        let (incoming_tx, mut incoming_rx) = mpsc::channel::<Value>(64);
        let transport = match &self.transport {
            SharedTransport::Stdio { command, env } => tokio::spawn(run_stdio(
                self.name.clone(),
                command.clone(),
                env.clone(),
                outgoing_rx,
                incoming_tx,
            )),
            SharedTransport::Sse { url, headers } => tokio::spawn(run_sse(
                self.name.clone(),
                url.clone(),
                headers.clone(),
                outgoing_rx,
                incoming_tx,
            )),
        };
        self.mux.connected(outgoing_tx.clone());
        let mux = self.mux.clone();
        let name = self.name.clone();
        let refuser = outgoing_tx.clone();
        let notifications = self.notifications.clone();
        let router = tokio::spawn(async move {
            while let Some(message) = incoming_rx.recv().await {
                let Some(other) = mux.incoming(message) else {
                    continue;
                };
                if let (Some(id), Some(method)) = (other.get("id"), other.get("method")) {
                    tracing::info!(upstream = %name, %method, "refused a server request on a shared upstream connection");
                    let _ = refuser
                        .send(protocol::error_response(
                            Some(id),
                            protocol::error_code::METHOD_NOT_FOUND,
                            "the gateway does not relay server requests from this upstream",
                            None,
                        ))
                        .await;
                } else if let Some(method) = other.get("method").and_then(Value::as_str) {
                    tracing::debug!(upstream = %name, %method, "notification from a shared upstream connection");
                    // Nobody listening is fine: the notification is dropped.
                    let _ = notifications.send(other);
                }
            }
        });
        let handshake = self.handshake();
        let reason = match tokio::time::timeout(Duration::from_secs(30), handshake).await {
            Ok(Ok(version)) => {
                tracing::info!(upstream = %self.name, %version, "MCP upstream connected");
                let _ = self.state.send(SharedState::Ready {
                    protocol_version: version,
                });
                match transport.await {
                    Ok(reason) => reason,
                    Err(e) => format!("the transport task failed: {e}"),
                }
            }
            Ok(Err(e)) => {
                transport.abort();
                format!("initialize failed: {e}")
            }
            Err(_) => {
                transport.abort();
                "initialize timed out after 30 s".to_string()
            }
        };
        router.abort();
        reason
    }

    async fn handshake(&self) -> Result<String, UpstreamError> {
        let initialize = json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": protocol::LATEST_HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": self.client_info,
            }
        });
        let mut answers = self.mux.request(initialize).await?;
        let answer = answers.next().await.ok_or(UpstreamError::Closed)??;
        if let Some(error) = answer.get("error") {
            return Err(UpstreamError::Protocol(format!(
                "initialize was refused: {error}"
            )));
        }
        let version = answer["result"]["protocolVersion"]
            .as_str()
            .unwrap_or(protocol::LATEST_HANDSHAKE_VERSION)
            .to_string();
        self.mux
            .notify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(version)
    }
}

/// Runs a child process until it exits; returns why.
async fn run_stdio(
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    mut outgoing: mpsc::Receiver<Value>,
    incoming: mpsc::Sender<Value>,
) -> String {
    let Some((program, args)) = command.split_first() else {
        return "no command".into();
    };
    let mut child = tokio::process::Command::new(program);
    child
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for inherited in ["PATH", "HOME", "LANG"] {
        if let Ok(value) = std::env::var(inherited) {
            child.env(inherited, value);
        }
    }
    child.envs(env);
    let mut child = match child.spawn() {
        Ok(child) => child,
        Err(e) => return format!("cannot start {program}: {e}"),
    };
    tracing::info!(upstream = %name, %program, pid = child.id(), "spawned MCP stdio upstream");
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return "the child's pipes are missing".into();
    };
    let log_name = name.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(upstream = %log_name, "stderr: {line}");
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let mut line = serde_json::to_vec(&message).unwrap_or_default();
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let reason = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Value>(&line) {
                        Ok(message) => {
                            if incoming.send(message).await.is_err() {
                                break "the bridge stopped reading".to_string();
                            }
                        }
                        Err(_) => tracing::debug!(upstream = %name, "a stdout line that is not JSON-RPC was ignored"),
                    }
                }
                Ok(None) => break "the process closed its stdout".to_string(),
                Err(e) => break format!("reading stdout failed: {e}"),
            },
            status = child.wait() => {
                break match status {
                    Ok(status) => format!("the process exited ({status})"),
                    Err(e) => format!("waiting for the process failed: {e}"),
                };
            }
        }
    };
    writer.abort();
    let _ = child.start_kill();
    let _ = child.wait().await;
    reason
}

/// Runs one HTTP+SSE connection (2024-11-05 transport) until it ends; returns why.
async fn run_sse(
    name: String,
    url: String,
    headers: reqwest::header::HeaderMap,
    outgoing: mpsc::Receiver<Value>,
    incoming: mpsc::Sender<Value>,
) -> String {
    let client = reqwest::Client::new();
    let response = match client
        .get(&url)
        .headers(headers.clone())
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return format!("GET {url} answered {}", r.status()),
        Err(e) => return format!("GET {url} failed: {}", UpstreamError::from_reqwest(&e)),
    };
    let mut body = response.bytes_stream();
    let mut framer = gantry_policy::sse::SseFramer::new();
    let mut writer: Option<tokio::task::JoinHandle<()>> = None;
    // Messages wait in the channel until the endpoint event says where to POST them.
    let mut queued = Some(outgoing);
    let reason = loop {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                break format!("the SSE stream failed: {}", UpstreamError::from_reqwest(&e))
            }
            None => break "the SSE stream ended".to_string(),
        };
        for event in framer.push(&chunk) {
            let data = event_data(&event);
            match event_name(&event).as_deref() {
                Some("endpoint") => {
                    let Some(endpoint) = data else { continue };
                    let resolved =
                        match url::Url::parse(&url).and_then(|base| base.join(endpoint.trim())) {
                            Ok(u) => u.to_string(),
                            Err(e) => {
                                return format!("the endpoint event '{endpoint}' is not a URL: {e}")
                            }
                        };
                    tracing::debug!(upstream = %name, endpoint = %resolved, "SSE upstream endpoint");
                    if let Some(mut rx) = queued.take() {
                        let client = client.clone();
                        let headers = headers.clone();
                        let name = name.clone();
                        writer = Some(tokio::spawn(async move {
                            while let Some(message) = rx.recv().await {
                                let sent = client
                                    .post(&resolved)
                                    .headers(headers.clone())
                                    .json(&message)
                                    .send()
                                    .await;
                                if let Err(e) = sent {
                                    tracing::debug!(upstream = %name, error = %e, "POST to the SSE upstream failed");
                                }
                            }
                        }));
                    }
                }
                _ => {
                    let Some(data) = data else { continue };
                    match serde_json::from_str::<Value>(&data) {
                        Ok(message) => {
                            if incoming.send(message).await.is_err() {
                                return "the bridge stopped reading".into();
                            }
                        }
                        Err(_) => {
                            tracing::debug!(upstream = %name, "an SSE event that is not JSON-RPC was ignored")
                        }
                    }
                }
            }
        }
    };
    if let Some(writer) = writer {
        writer.abort();
    }
    reason
}
