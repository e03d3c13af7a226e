//! SSE is passed on chunk by chunk: proved with an upstream whose every event the test releases,
//! so each event must reach the client while the upstream is still streaming (on both policy
//! paths: ext_proc and the dynamic module).

use std::time::Duration;

use futures::StreamExt;
use gantry_testkit::{GatedSseUpstream, PolicyPath, StackPorts};

use crate::{on_both_policy_paths, start_stack_on};

on_both_policy_paths!(each_event_reaches_the_client_while_the_upstream_is_still_streaming);

fn chunk(content: &str) -> String {
    format!(
        r#"{{"id":"c1","object":"chat.completion.chunk","model":"gated-1","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}],"usage":null}}"#
    )
}

/// Reads from `stream` into `seen` until it contains `needle`, or fails after a deadline.
async fn read_until(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    needle: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not reach the client; got so far:\n{seen}"));
        match next {
            Some(Ok(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Some(Err(e)) => panic!("stream broke: {e}"),
            None => panic!("stream ended before {needle:?}; got:\n{seen}"),
        }
    }
}

async fn each_event_reaches_the_client_while_the_upstream_is_still_streaming(path: PolicyPath) {
    let mut upstream = GatedSseUpstream::start().await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{}providers:\n  - {{ name: gated, kind: openai, endpoint: 'http://{}' }}\nmodels:\n  - {{ name: slow, provider: gated, model: gated-1 }}\n",
        ports.config_head(),
        upstream.addr()
    );
    let stack = start_stack_on(path, ports, yaml, vec![]).await;

    let request = crate::http()
        .post(stack.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"slow","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send();
    let client = tokio::spawn(request);
    let exchange = upstream.next_exchange(Duration::from_secs(15)).await;
    let upstream_body: serde_json::Value = serde_json::from_slice(&exchange.body).unwrap();
    assert_eq!(upstream_body["model"], "gated-1");
    assert_eq!(upstream_body["stream_options"]["include_usage"], true);

    exchange.send(&chunk("first"));
    let response = client
        .await
        .unwrap()
        .expect("response headers reach the client");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    // The upstream has sent one event and is holding the rest: the client must already have it.
    read_until(&mut body, &mut seen, "first").await;
    assert!(!seen.contains("second"));
    assert!(
        !seen.contains("usage"),
        "injected usage:null leaked: {seen}"
    );

    exchange.send(&chunk("second"));
    read_until(&mut body, &mut seen, "second").await;

    exchange.send(
        r#"{"id":"c1","object":"chat.completion.chunk","model":"gated-1","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}"#,
    );
    exchange.send("[DONE]");
    exchange.finish();
    read_until(&mut body, &mut seen, "[DONE]").await;
    assert!(
        body.next().await.is_none(),
        "stream should end after [DONE]"
    );
    assert!(
        !seen.contains("usage"),
        "client got usage it did not ask for:\n{seen}"
    );
    assert_eq!(seen.matches("data: ").count(), 3, "{seen}");

    let entry = stack.wait_for_access_log("usage of the gated stream", |e| {
        e["model"] == "slow" && e["total_tokens"].is_number()
    });
    assert_eq!(entry["prompt_tokens"], 11);
    assert_eq!(entry["completion_tokens"], 2);
    assert_eq!(entry["total_tokens"], 13);
}
