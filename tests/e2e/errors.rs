//! Bad input and broken upstreams get clear OpenAI-style errors, and the gateway keeps serving
//! (on both policy paths: ext_proc and the dynamic module).

use futures::stream;
use gantry_testkit::{free_ports, PolicyPath, StackPorts};

use crate::{
    assert_openai_error, json_of, on_both_policy_paths, post, start_mock, start_stack_on,
    TwoProviders,
};

on_both_policy_paths!(
    bad_requests_get_openai_errors_and_the_gateway_keeps_serving,
    models_list_and_unconfigured_provider,
    broken_upstreams_give_clear_errors,
);

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str = r#"{"model":"m-alpha","messages":[{"role":"user","content":"still there?"}]}"#;

/// A body sent with chunked transfer encoding (no content-length), in 64 KiB pieces.
fn chunked_body(total: usize) -> reqwest::Body {
    let prefix = br#"{"model":"m-alpha","messages":[{"role":"user","content":""#.to_vec();
    let mut pieces = vec![prefix];
    let mut left = total;
    while left > 0 {
        let n = left.min(64 * 1024);
        pieces.push(vec![b'x'; n]);
        left -= n;
    }
    pieces.push(br#""}]}"#.to_vec());
    reqwest::Body::wrap_stream(stream::iter(
        pieces.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

async fn bad_requests_get_openai_errors_and_the_gateway_keeps_serving(path: PolicyPath) {
    let t = TwoProviders::start_on(path, "limits:\n  max_request_body_bytes: 2048\n").await;
    let url = t.stack.url(CHAT);

    let (status, body) = json_of(post(&url, r#"{"model":"gpt-nope","messages":[]}"#).await).await;
    assert_eq!(status, 404);
    let message = assert_openai_error(&body, "model_not_found");
    assert!(
        message.contains("'gpt-nope'") && message.contains("m-alpha, m-beta"),
        "{message}"
    );

    let (status, body) = json_of(post(&url, r#"{"model": "m-alpha", "messages": [}"#).await).await;
    assert_eq!(status, 400);
    let message = assert_openai_error(&body, "invalid_json");
    assert!(message.contains("column"), "{message}");

    let (status, body) = json_of(post(&url, r#"{"messages":[]}"#).await).await;
    assert_eq!(status, 400);
    assert_openai_error(&body, "missing_model");

    // Over the limit with a content-length: refused from the headers alone.
    let big = format!(r#"{{"model":"m-alpha","input":"{}"}}"#, "x".repeat(3000));
    let (status, body) = json_of(post(&t.stack.url("/v1/embeddings"), &big).await).await;
    assert_eq!(status, 413);
    let message = assert_openai_error(&body, "request_too_large");
    assert!(message.contains("2048"), "{message}");

    // Over the limit without a content-length: refused once the body is buffered.
    let response = crate::http()
        .post(&url)
        .header("content-type", "application/json")
        .body(chunked_body(3000))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 413);
    assert_openai_error(&body, "request_too_large");

    // Beyond even Envoy's buffer: Envoy answers itself, and its reply is an OpenAI error too.
    let response = crate::http()
        .post(&url)
        .header("content-type", "application/json")
        .body(chunked_body(40 * 1024 * 1024))
        .send()
        .await;
    let (status, body) = json_of(response.expect("Envoy answers the oversized upload")).await;
    assert_eq!(status, 413);
    let message = assert_openai_error(&body, "request_too_large");
    assert!(
        message.contains("exceeds this gateway's limit of 2048 bytes"),
        "{message}"
    );

    let (status, body) = json_of(post(&t.stack.url("/v1/nothing-here"), "{}").await).await;
    assert_eq!(status, 404);
    assert_openai_error(&body, "unknown_url");

    let response = crate::http().get(&url).send().await.unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 405);
    assert_openai_error(&body, "method_not_allowed");

    // Nothing bad reached a provider, and good requests still work.
    assert!(t.alpha.recorded().is_empty(), "{:?}", t.alpha.recorded());
    let (status, body) = json_of(post(&url, GOOD).await).await;
    assert_eq!(status, 200, "{body}");
}

async fn models_list_and_unconfigured_provider(path: PolicyPath) {
    let ports = StackPorts::free();
    let mock = start_mock("mock", None).await;
    let yaml = format!(
        "{}providers:
  - {{ name: local, kind: openai, endpoint: '{}' }}
  - {{ name: keyless, kind: openai, endpoint: 'https://api.openai.com', api_key_env: GANTRY_TEST_UNSET_KEY }}
models:
  - {{ name: here, provider: local, model: mock-small }}
  - {{ name: elsewhere, provider: keyless, model: gpt-4o }}
",
        ports.config_head(),
        mock.base_url()
    );
    let stack = start_stack_on(path, ports, yaml, vec![]).await;
    let response = crate::http()
        .get(stack.url("/v1/models"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["here"],
        "models of a provider without its key are hidden"
    );

    let (status, body) =
        json_of(post(&stack.url(CHAT), r#"{"model":"elsewhere","messages":[]}"#).await).await;
    assert_eq!(status, 503);
    let message = assert_openai_error(&body, "provider_unavailable");
    assert!(message.contains("GANTRY_TEST_UNSET_KEY"), "{message}");
    assert!(
        stack
            .process
            .stderr()
            .contains("GANTRY_TEST_UNSET_KEY is not set"),
        "a startup warning should name the variable\n{}",
        stack.process.logs()
    );
}

async fn broken_upstreams_give_clear_errors(path: PolicyPath) {
    let t = TwoProviders::start_on(path, "").await;
    let url = t.stack.url(CHAT);

    // A provider's own error passes through unchanged.
    let response = crate::http()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-mock-status", "429")
        .body(GOOD)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "mock_error");

    // A provider that is down.
    let dead_port = free_ports(1)[0];
    let ports = StackPorts::free();
    let yaml = format!(
        "{}providers:
  - {{ name: gone, kind: openai, endpoint: 'http://127.0.0.1:{dead_port}' }}
  - {{ name: slow, kind: openai, endpoint: '{}', timeout_secs: 1 }}
models:
  - {{ name: ghost, provider: gone, model: g }}
  - {{ name: sloth, provider: slow, model: s }}
",
        ports.config_head(),
        t.alpha.base_url()
    );
    let stack = start_stack_on(path, ports, yaml, vec![]).await;
    let (status, body) =
        json_of(post(&stack.url(CHAT), r#"{"model":"ghost","messages":[]}"#).await).await;
    assert_eq!(status, 503);
    let message = assert_openai_error(&body, "provider_unreachable");
    assert!(message.contains("provider 'gone'"), "{message}");

    // A provider slower than its timeout.
    let response = crate::http()
        .post(stack.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock-first-byte-delay-ms", "5000")
        .body(r#"{"model":"sloth","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 504);
    let message = assert_openai_error(&body, "provider_unreachable");
    assert!(message.contains("provider 'slow'"), "{message}");

    // The first gateway is unaffected.
    let (status, _) = json_of(post(&url, GOOD).await).await;
    assert_eq!(status, 200);
}
