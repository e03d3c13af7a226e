//! Streamable HTTP to one upstream, both eras: one POST per message; the answer is JSON, an
//! SSE stream (notifications and server requests first, then the response), or 202.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gantry_policy::mcp::protocol;
use gantry_policy::sse::SseFramer;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{UpstreamError, UpstreamMessages};

/// What a POST needs beyond the message.
#[derive(Debug, Default, Clone)]
pub struct PostHeaders {
    pub protocol_version: Option<String>,
    pub session_id: Option<String>,
    /// `Mcp-Method` / `Mcp-Name` on stateless requests.
    pub method: Option<String>,
    pub name: Option<String>,
    /// More headers (the client's `Mcp-Param-*`).
    pub extra: Vec<(String, String)>,
}

/// The answer to one POST.
pub struct PostReply {
    pub status: u16,
    pub session_id: Option<String>,
    pub messages: UpstreamMessages,
}

/// One streamable-HTTP upstream endpoint.
#[derive(Debug, Clone)]
pub struct HttpEndpoint {
    pub url: String,
    pub client: reqwest::Client,
    pub headers: HeaderMap,
    pub max_message_bytes: usize,
}

impl HttpEndpoint {
    pub fn new(url: String, headers: HeaderMap, max_message_bytes: usize) -> HttpEndpoint {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        HttpEndpoint {
            url,
            client,
            headers,
            max_message_bytes,
        }
    }

    /// POSTs one JSON-RPC message and returns the messages the upstream answers with.
    pub async fn post(
        &self,
        message: &Value,
        extra: &PostHeaders,
    ) -> Result<PostReply, UpstreamError> {
        let body =
            serde_json::to_vec(message).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let mut request = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        for (name, value) in [
            (protocol::header::PROTOCOL_VERSION, &extra.protocol_version),
            (protocol::header::SESSION_ID, &extra.session_id),
            (protocol::header::METHOD, &extra.method),
        ] {
            if let Some(value) = value {
                request = request.header(name, value.as_str());
            }
        }
        for (name, value) in &extra.extra {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(name) = &extra.name {
            request = request.header(
                protocol::header::NAME,
                protocol::encode_header_value(name).as_str(),
            );
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&e))?;
        let status = response.status().as_u16();
        let session_id = response
            .headers()
            .get(protocol::header::SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status == 202 {
            return Ok(PostReply {
                status,
                session_id,
                messages: super::no_messages(),
            });
        }
        if status == 404 && extra.session_id.is_some() {
            return Err(UpstreamError::SessionLost);
        }
        if is_sse && (200..300).contains(&status) {
            return Ok(PostReply {
                status,
                session_id,
                messages: sse_messages(response, self.max_message_bytes),
            });
        }
        let body = read_limited(response, self.max_message_bytes).await?;
        match serde_json::from_slice::<Value>(&body) {
            // A JSON-RPC answer, whatever the status (modern servers answer header and version
            // errors with 400 and a JSON-RPC error).
            Ok(value) if value.get("jsonrpc").is_some() || value.is_array() => {
                let messages = match value {
                    Value::Array(items) => items,
                    one => vec![one],
                };
                Ok(PostReply {
                    status,
                    session_id,
                    messages: Box::pin(futures::stream::iter(messages.into_iter().map(Ok))),
                })
            }
            _ => Err(UpstreamError::Http {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }

    /// The standalone server-to-client stream of a session (`GET`); `None` when the upstream
    /// offers none (405).
    pub async fn get_stream(
        &self,
        session_id: &str,
        protocol_version: &str,
    ) -> Result<Option<UpstreamMessages>, UpstreamError> {
        let response = self
            .client
            .get(&self.url)
            .headers(self.headers.clone())
            .header(ACCEPT, "text/event-stream")
            .header(protocol::header::SESSION_ID, session_id)
            .header(protocol::header::PROTOCOL_VERSION, protocol_version)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&e))?;
        match response.status().as_u16() {
            405 => Ok(None),
            404 => Err(UpstreamError::SessionLost),
            200..=299 => Ok(Some(sse_messages(response, self.max_message_bytes))),
            status => Err(UpstreamError::Http {
                status,
                body: String::new(),
            }),
        }
    }

    /// `DELETE` of an upstream session; any answer is fine (2xx, 404, 405).
    pub async fn delete_session(&self, session_id: &str, protocol_version: &str) {
        let result = self
            .client
            .delete(&self.url)
            .headers(self.headers.clone())
            .header(protocol::header::SESSION_ID, session_id)
            .header(protocol::header::PROTOCOL_VERSION, protocol_version)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Err(e) = result {
            tracing::debug!(url = %self.url, error = %e, "upstream session DELETE failed");
        }
    }
}

async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Bytes, UpstreamError> {
    if response
        .content_length()
        .is_some_and(|n| n as usize > limit)
    {
        return Err(UpstreamError::TooLarge(limit));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UpstreamError::from_reqwest(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The JSON-RPC messages of an SSE response, as they arrive.
fn sse_messages(response: reqwest::Response, limit: usize) -> UpstreamMessages {
    let (tx, rx) = mpsc::channel::<Result<Value, UpstreamError>>(16);
    tokio::spawn(async move {
        let mut framer = SseFramer::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tx.send(Err(UpstreamError::from_reqwest(&e))).await;
                    return;
                }
            };
            for event in framer.push(&chunk) {
                let Some(data) = event_data(&event) else {
                    continue;
                };
                let parsed = serde_json::from_str::<Value>(&data)
                    .map_err(|e| UpstreamError::Protocol(format!("an SSE event is not JSON: {e}")));
                if tx.send(parsed).await.is_err() {
                    return; // the reader is gone: dropping the body closes the stream
                }
            }
            if framer.pending().len() > limit {
                let _ = tx.send(Err(UpstreamError::TooLarge(limit))).await;
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The `data` of one SSE event (lines joined by `\n`); `None` for events without data
/// (priming events, comments) or with empty data.
pub(crate) fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data = String::new();
    let mut any = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if any {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            any = true;
        }
    }
    (any && !data.trim().is_empty()).then_some(data)
}

/// The `event:` name of an SSE event, if any.
pub(crate) fn event_name(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("event:"))
        .map(|v| v.trim().to_string())
}

/// Turns configured `(name, value)` pairs into a header map; bad ones are reported.
pub fn header_map(pairs: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("'{name}' is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header '{name}' is not a valid header value"))?;
        map.insert(header, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_joins_lines_and_skips_priming_events() {
        assert_eq!(
            event_data(b"event: message\ndata: {\"a\":\ndata: 1}\n\n").as_deref(),
            Some("{\"a\":\n1}")
        );
        assert_eq!(event_data(b"id: 1\ndata: \n\n"), None);
        assert_eq!(event_data(b"data:\nid: 0\nretry: 3000\n\n"), None);
        assert_eq!(event_data(b": comment\n\n"), None);
        assert_eq!(
            event_name(b"event: endpoint\ndata: /messages?x=1\n\n").as_deref(),
            Some("endpoint")
        );
    }
}
