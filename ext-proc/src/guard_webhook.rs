//! The HTTP side of webhook guards: makes the [`WebhookCall`]s the policy core asks for.
//!
//! One client for the process (connections are pooled and reused across requests). Redirects
//! are not followed: a guard's prompt text goes only where the config says.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gantry_policy::guard::{WebhookAnswer, WebhookCall};

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "webhook client not built with its settings; using defaults");
                reqwest::Client::new()
            })
    })
}

/// Makes `call`, within its timeout, and says what came of it.
pub async fn call(call: &WebhookCall) -> WebhookAnswer {
    let started = Instant::now();
    let answer = match tokio::time::timeout(call.timeout, send(call)).await {
        Ok(answer) => answer,
        Err(_) => WebhookAnswer::Failed(format!("timed out after {} ms", call.timeout.as_millis())),
    };
    match &answer {
        WebhookAnswer::Reply { status, body } => tracing::debug!(
            guard = %call.guard,
            status,
            bytes = body.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "webhook guard answered"
        ),
        WebhookAnswer::Failed(why) => tracing::debug!(
            guard = %call.guard,
            why,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "webhook guard call failed"
        ),
    }
    answer
}

async fn send(call: &WebhookCall) -> WebhookAnswer {
    let mut request = client()
        .post(&call.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(call.body.clone());
    if let Some(authorization) = &call.authorization {
        request = request.header(reqwest::header::AUTHORIZATION, authorization);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return WebhookAnswer::Failed(describe(&e)),
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > call.max_reply_bytes {
                    return WebhookAnswer::Failed(format!(
                        "its reply is larger than {} bytes",
                        call.max_reply_bytes
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return WebhookAnswer::Failed(describe(&e)),
        }
    }
    WebhookAnswer::Reply { status, body }
}

/// A reqwest error as a short reason (the URL is logged separately, not repeated here).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_body() || error.is_decode() {
        "its reply broke off"
    } else {
        "the call failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut innermost = None;
    while let Some(inner) = source {
        innermost = Some(inner.to_string());
        source = inner.source();
    }
    match innermost {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_string(),
    }
}
