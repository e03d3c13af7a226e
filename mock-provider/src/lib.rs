//! An OpenAI-compatible mock LLM provider: a real HTTP server (HTTP/1.1 and
//! cleartext HTTP/2) speaking the OpenAI wire format.
//!
//! This crate owns the offline provider that `gantry run` bundles for the
//! quickstart and that the end-to-end tests put behind a real Envoy in place of
//! paid providers. It serves:
//!
//! - `POST /v1/chat/completions` (JSON, or SSE when `"stream": true`),
//! - `POST /v1/completions` (JSON or SSE),
//! - `POST /v1/embeddings` (deterministic 8-dimensional vectors),
//! - `GET /v1/models`,
//! - `POST /v1/moderations` and `POST /gantry/guard`: the OpenAI moderation API and a
//!   Gantry-format guard webhook, for webhook guards (see [`guard`]);
//! - Azure OpenAI's `[<base>]/openai/deployments/<deployment>/<operation>?api-version=` with
//!   the key in `api-key`;
//! - native provider formats, each with its own auth, errors and stream framing: Anthropic
//!   `POST /v1/messages` (SSE with `event:` lines), Gemini
//!   `POST /v1beta/models/<m>:generateContent` and `:streamGenerateContent?alt=sse`, Bedrock
//!   `POST /model/<id>/converse` and `/converse-stream` (AWS event-stream, SigV4 checked).
//!
//! Every format follows one tool rule: a request that offers tools (and does not end with tool
//! results) gets a call to the first tool with `{"city": "Paris"}`; a request that ends with
//! tool results gets the text `the tool said: <results joined by "; ">`.
//!
//! Replies and token counts are deterministic. Requests are recorded (see
//! [`MockProvider::recorded`]) and every response carries an
//! `x-mock-provider: <name>` header. Tests can steer a single request with
//! the headers listed in [`controls`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use gantry_mock_provider::{MockConfig, MockProvider};
//!
//! let provider = MockProvider::start("127.0.0.1:0".parse().unwrap(), MockConfig::default()).await?;
//! println!("mock provider at {}", provider.base_url());
//! provider.wait().await
//! # }
//! ```

mod anthropic;
mod bedrock;
mod gemini;
pub mod guard;
mod handler;
mod openai;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::HeaderValue;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Names of the request headers that steer a single request. All are optional.
pub mod controls {
    /// Answer with this HTTP status and an OpenAI error object of type
    /// `mock_error` instead of a normal reply (accepted range: 200–599).
    pub const STATUS: &str = "x-mock-status";
    /// Override [`MockConfig::chunk_delay`](crate::MockConfig::chunk_delay), in milliseconds.
    pub const CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
    /// Sleep this many milliseconds before sending the response headers.
    pub const FIRST_BYTE_DELAY_MS: &str = "x-mock-first-byte-delay-ms";
    /// Override [`MockConfig::stream_chunks`](crate::MockConfig::stream_chunks).
    pub const CHUNKS: &str = "x-mock-chunks";
    /// Answer with this text instead of the canned one (JSON, or split into the stream's
    /// chunks), e.g. to test what guards do with a provider's reply.
    pub const REPLY: &str = "x-mock-reply";
}

/// Name of the response header that identifies which mock answered.
pub const PROVIDER_HEADER: &str = "x-mock-provider";

/// How a [`MockProvider`] behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Name reported in replies ("mock reply from {name}") and in the `x-mock-provider` response header.
    pub name: String,
    /// If Some, requests must carry `Authorization: Bearer <key>`; otherwise 401 with an OpenAI error object.
    pub expected_api_key: Option<String>,
    /// Delay between SSE events (default 20 ms in Default impl).
    pub chunk_delay: Duration,
    /// Number of content chunks a streamed reply has (default 4; 0 is treated as 1).
    pub stream_chunks: usize,
    /// Answer every request with this status (an error in the format's shape), as if
    /// `x-mock-status` were on each: a provider that is down or rate-limiting everyone.
    pub forced_status: Option<u16>,
    /// Wait this long before answering every request (as `x-mock-first-byte-delay-ms`).
    pub first_byte_delay: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            name: "mock".to_owned(),
            expected_api_key: None,
            chunk_delay: Duration::from_millis(20),
            stream_chunks: 4,
            forced_status: None,
            first_byte_delay: Duration::ZERO,
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path and query as received, e.g. `/v1/chat/completions?x=1`.
    pub path: String,
    /// Header names are lower-case; values that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The complete request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// Value of the first header called `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON, if it is valid JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// State shared between the [`MockProvider`] handle and the request handlers.
pub(crate) struct Shared {
    config: MockConfig,
    provider_header: HeaderValue,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    next_id: AtomicU64,
}

/// How many requests the log keeps (the most recent ones), so a long-running mock (the
/// quickstart's) does not grow without bound.
pub const RECORD_LIMIT: usize = 1000;

impl Shared {
    /// The request log. A panic elsewhere cannot leave the log half-written, so
    /// a poisoned lock is simply taken over.
    fn log(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: RecordedRequest) {
        let mut log = self.log();
        if log.len() == RECORD_LIMIT {
            log.pop_front();
        }
        log.push_back(request);
    }
}

/// A running mock provider.
///
/// Dropping it stops the server: the listening socket is closed and open
/// connections are shut down gracefully (in-flight responses finish).
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl MockProvider {
    /// Binds `listen` (port 0 picks a free port) and starts serving on the
    /// current Tokio runtime. The server accepts connections once this returns.
    ///
    /// Fails if the address cannot be bound or if `config.name` cannot be used
    /// as an HTTP header value.
    pub async fn start(listen: SocketAddr, config: MockConfig) -> io::Result<MockProvider> {
        let provider_header = HeaderValue::from_str(&config.name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "mock provider name {:?} is not a valid header value",
                    config.name
                ),
            )
        })?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            provider_header,
            recorded: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
        });

        let app = handler::router(Arc::clone(&shared));
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Small SSE events must not wait for delayed ACKs (a real provider's do not).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "mock provider: TCP_NODELAY not set");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // Either an explicit signal or the sender being dropped.
                    let _ = shutdown_rx.await;
                })
                .await
        });
        tracing::debug!(%addr, name = %shared.config.name, "mock provider listening");

        Ok(MockProvider {
            addr,
            shared,
            shutdown: Some(shutdown_tx),
            task,
        })
    }

    /// The address the server listens on (with the real port if 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, handy as an OpenAI client base URL (append `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration this server runs with.
    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    /// The requests received so far (the most recent [`RECORD_LIMIT`]), in arrival order.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.shared.log().iter().cloned().collect()
    }

    /// Forgets all recorded requests.
    pub fn clear_recorded(&self) {
        self.shared.log().clear();
    }

    /// Runs until the server stops, which only happens on a fatal server
    /// error; meant for `gantry mock-provider`, which serves forever. Dropping
    /// the returned future stops the server, like dropping the provider does.
    pub async fn wait(mut self) -> io::Result<()> {
        join(&mut self.task).await
    }

    /// Stops accepting connections and waits until every open connection has
    /// finished its in-flight response and closed.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(signal) = self.shutdown.take() {
            let _ = signal.send(());
        }
        join(&mut self.task).await
    }
}

async fn join(task: &mut JoinHandle<io::Result<()>>) -> io::Result<()> {
    match task.await {
        Ok(result) => result,
        Err(error) if error.is_cancelled() => Ok(()),
        Err(error) => Err(io::Error::other(error)),
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        if let Some(signal) = self.shutdown.take() {
            let _ = signal.send(());
        }
        // Closes the listener right away; connection tasks still get the
        // graceful-shutdown signal sent above.
        self.task.abort();
    }
}

impl fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockProvider")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
