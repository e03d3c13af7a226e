//! One long-lived upstream connection shared by many calls (stdio, HTTP+SSE): the bridge gives
//! every request its own id on that connection and hands each answer to the call waiting for
//! it. The transport (a child process, an SSE stream) is supervised elsewhere; this is only
//! the bookkeeping, with its lock never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use super::{UpstreamError, UpstreamMessages};

/// Sends messages and routes answers by id.
#[derive(Debug)]
pub struct Multiplexer {
    name: String,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::Sender<Result<Value, UpstreamError>>>>,
    outgoing: Mutex<Option<mpsc::Sender<Value>>>,
}

impl Multiplexer {
    pub fn new(name: &str) -> Multiplexer {
        Multiplexer {
            name: name.to_string(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(None),
        }
    }

    /// A transport came up: messages go to `outgoing` from now on.
    pub fn connected(&self, outgoing: mpsc::Sender<Value>) {
        if let Ok(mut slot) = self.outgoing.lock() {
            *slot = Some(outgoing);
        }
    }

    /// The transport went away: every waiting call fails with `error`.
    pub fn disconnected(&self, error: UpstreamError) {
        if let Ok(mut slot) = self.outgoing.lock() {
            *slot = None;
        }
        let waiting: Vec<_> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().map(|(_, tx)| tx).collect(),
            Err(_) => Vec::new(),
        };
        for tx in waiting {
            let _ = tx.try_send(Err(error.clone()));
        }
    }

    pub fn is_connected(&self) -> bool {
        self.outgoing.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    fn sender(&self) -> Option<mpsc::Sender<Value>> {
        self.outgoing.lock().ok().and_then(|s| s.clone())
    }

    /// Sends a request (its `id` is replaced by the connection's own) and returns its answer.
    pub async fn request(
        self: &Arc<Self>,
        mut message: Value,
    ) -> Result<UpstreamMessages, UpstreamError> {
        let sender = self.sender().ok_or_else(|| {
            UpstreamError::Unavailable(format!("'{}' is not connected", self.name))
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        message["id"] = Value::from(id);
        let (tx, rx) = mpsc::channel(4);
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        let guard = PendingGuard {
            mux: self.clone(),
            id,
        };
        if sender.send(message).await.is_err() {
            return Err(UpstreamError::Closed);
        }
        let stream = futures::stream::unfold((rx, Some(guard)), |(mut rx, guard)| async move {
            let item = rx.recv().await?;
            let done = matches!(&item, Ok(v) if v.get("method").is_none());
            let guard = if done { None } else { guard };
            Some((item, (rx, guard)))
        });
        // The stream owns the guard: a caller that stops waiting removes its entry.
        Ok(Box::pin(stream))
    }

    /// Sends a notification (or a response to a server request).
    pub async fn notify(&self, message: Value) -> Result<(), UpstreamError> {
        let sender = self.sender().ok_or_else(|| {
            UpstreamError::Unavailable(format!("'{}' is not connected", self.name))
        })?;
        sender
            .send(message)
            .await
            .map_err(|_| UpstreamError::Closed)
    }

    /// An incoming message from the transport. Answers go to their caller; anything else
    /// (notifications, server requests) is returned for the transport to handle.
    pub fn incoming(&self, message: Value) -> Option<Value> {
        let is_answer = message.get("method").is_none()
            && (message.get("result").is_some() || message.get("error").is_some());
        if !is_answer {
            return Some(message);
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            tracing::debug!(upstream = %self.name, "an answer without a known id was dropped");
            return None;
        };
        let tx = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        match tx {
            Some(tx) => {
                let _ = tx.try_send(Ok(message));
            }
            None => {
                tracing::debug!(upstream = %self.name, id, "an answer nobody waits for was dropped")
            }
        }
        None
    }

    fn forget(&self, id: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&id);
        }
    }
}

/// Removes a call's entry when its caller stops waiting.
struct PendingGuard {
    mux: Arc<Multiplexer>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.mux.forget(self.id);
    }
}
