//! A JWKS endpoint for tests: a real HTTP server on a free loopback port, serving a JWK Set the
//! test can swap ([`JwksServer::set_keys`]) or take down ([`JwksServer::set_down`]: every
//! request answers 503), and counting the fetches it receives.
//!
//! It runs on its own single-threaded Tokio runtime in a background thread, so plain blocking
//! `#[test]`s can use it as well as async ones. Dropping it stops the server: the listening
//! socket and every open connection are closed before `drop` returns.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use tokio::sync::oneshot;

/// The path the key set is served at.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The body of the 503 answered while the server is down.
pub const DOWN_BODY: &str = "jwks endpoint down (test)";

struct Shared {
    keys: Mutex<Value>,
    down: AtomicBool,
    fetches: AtomicUsize,
}

/// The running server; stops on drop.
pub struct JwksServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Starts serving `initial` (normally a JWK Set, but any JSON is served as given) at
    /// [`JwksServer::url`]. The server accepts connections by the time this returns.
    pub fn start(initial: Value) -> JwksServer {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the JWKS server port");
        let addr = listener.local_addr().expect("JWKS server address");
        listener
            .set_nonblocking(true)
            .expect("make the JWKS listener non-blocking");
        let shared = Arc::new(Shared {
            keys: Mutex::new(initial),
            down: AtomicBool::new(false),
            fetches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route(JWKS_PATH, get(serve_jwks))
            .with_state(shared.clone());
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name(format!("jwks-server-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot build a runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot adopt the listener: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        result = axum::serve(listener, router).into_future() => {
                            if let Err(e) = result {
                                eprintln!("jwks server on {addr} failed: {e}");
                            }
                        }
                        _ = shutdown_rx => {}
                    }
                });
                // Dropping the runtime cancels every connection task and closes its socket.
                drop(runtime);
            })
            .expect("spawn the JWKS server thread");
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => panic!("JWKS server did not start: {reason}"),
            Err(_) => panic!("JWKS server thread died during startup"),
        }
        JwksServer {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/.well-known/jwks.json`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, JWKS_PATH)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves `keys` from the next request on.
    pub fn set_keys(&self, keys: Value) {
        *self
            .shared
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = keys;
    }

    /// The JSON currently served.
    pub fn keys(&self) -> Value {
        self.shared
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// While down, every request to the JWKS path answers `503` with [`DOWN_BODY`].
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// GET requests received at the JWKS path so far, including those answered 503.
    pub fn fetch_count(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Waits until [`JwksServer::fetch_count`] reaches `at_least`; returns the count then.
    pub fn wait_for_fetch_count(&self, at_least: usize, deadline: Duration) -> usize {
        crate::wait_for(
            &format!("{at_least} fetches of {}", self.url()),
            deadline,
            || {
                let count = self.fetch_count();
                (count >= at_least).then_some(count)
            },
        )
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_jwks(method: Method, State(shared): State<Arc<Shared>>) -> Response {
    if method == Method::GET {
        shared.fetches.fetch_add(1, Ordering::SeqCst);
    }
    if shared.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, DOWN_BODY).into_response();
    }
    let keys = shared
        .keys
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Json(keys).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fetched {
        status: u16,
        content_type: Option<String>,
        body: String,
    }

    fn fetch(runtime: &tokio::runtime::Runtime, client: &reqwest::Client, url: &str) -> Fetched {
        runtime.block_on(async {
            let response = client.get(url).send().await.expect("request the JWKS");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.text().await.expect("read the body");
            Fetched {
                status,
                content_type,
                body,
            }
        })
    }

    fn json_of(fetched: &Fetched) -> Value {
        serde_json::from_str(&fetched.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", fetched.body))
    }

    #[test]
    fn serves_swaps_fails_and_counts() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let first = json!({ "keys": [{ "kty": "oct", "kid": "one" }] });
        let second = json!({ "keys": [{ "kty": "oct", "kid": "two" }] });

        let server = JwksServer::start(first.clone());
        let url = server.url();
        assert_eq!(
            url,
            format!("http://127.0.0.1:{}/.well-known/jwks.json", server.port())
        );
        assert_eq!(server.fetch_count(), 0);

        let fetched = fetch(&runtime, &client, &url);
        assert_eq!(fetched.status, 200);
        assert_eq!(fetched.content_type.as_deref(), Some("application/json"));
        assert_eq!(json_of(&fetched), first);
        assert_eq!(server.fetch_count(), 1);

        server.set_keys(second.clone());
        assert_eq!(server.keys(), second);
        let fetched = fetch(&runtime, &client, &url);
        assert_eq!(fetched.status, 200);
        assert_eq!(json_of(&fetched), second);
        assert_eq!(server.fetch_count(), 2);

        server.set_down(true);
        let fetched = fetch(&runtime, &client, &url);
        assert_eq!(fetched.status, 503);
        assert_eq!(fetched.body, DOWN_BODY);
        assert_eq!(server.fetch_count(), 3, "failed fetches count too");

        server.set_down(false);
        let fetched = fetch(&runtime, &client, &url);
        assert_eq!(fetched.status, 200);
        assert_eq!(json_of(&fetched), second);
        assert_eq!(server.wait_for_fetch_count(4, Duration::from_secs(5)), 4);

        // Other paths are not the JWKS and are not counted.
        let other = format!("http://{}/other", server.addr());
        assert_eq!(fetch(&runtime, &client, &other).status, 404);
        assert_eq!(server.fetch_count(), 4);

        let addr = server.addr();
        drop(server);
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "still accepting connections after drop"
        );
    }

    #[test]
    fn blocking_callers_can_use_it_from_a_plain_thread() {
        let server = JwksServer::start(json!({ "keys": [] }));
        let url = server.url();
        let body = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let client = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client");
            runtime.block_on(async {
                client
                    .get(url)
                    .send()
                    .await
                    .expect("get")
                    .text()
                    .await
                    .expect("text")
            })
        })
        .join()
        .expect("fetch thread");
        assert_eq!(
            serde_json::from_str::<Value>(&body).expect("json"),
            json!({ "keys": [] })
        );
        assert_eq!(server.fetch_count(), 1);
    }
}
