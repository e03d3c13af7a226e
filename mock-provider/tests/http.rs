//! Drives a real `MockProvider` over HTTP with reqwest.

use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use gantry_mock_provider::{MockConfig, MockProvider};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start(config: MockConfig) -> MockProvider {
    MockProvider::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("mock provider starts")
}

fn fast() -> MockConfig {
    MockConfig {
        chunk_delay: Duration::from_millis(1),
        ..MockConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client builds")
}

fn url(server: &MockProvider, path: &str) -> String {
    format!("{}{path}", server.base_url())
}

/// Splits an SSE body into the payloads of its `data:` events.
fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without data prefix: {event:?}"))
                .to_owned()
        })
        .collect()
}

/// The JSON chunks of an SSE body, checking that it ends with `[DONE]`.
fn sse_chunks(body: &str) -> Vec<Value> {
    let mut payloads = sse_payloads(body);
    assert_eq!(payloads.pop().as_deref(), Some("[DONE]"), "body: {body}");
    assert!(
        !payloads.iter().any(|p| p == "[DONE]"),
        "[DONE] must come once, last"
    );
    payloads
        .iter()
        .map(|payload| serde_json::from_str(payload).expect("chunk is JSON"))
        .collect()
}

async fn post(server: &MockProvider, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(url(server, path))
        .json(&body)
        .send()
        .await
        .expect("request succeeds")
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[tokio::test]
async fn chat_completion_json_with_usage() {
    let server = start(MockConfig {
        name: "alpha".into(),
        ..fast()
    })
    .await;
    let response = post(
        &server,
        "/v1/chat/completions",
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello there world"}]},
            ],
        }),
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-mock-provider"], "alpha");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.expect("JSON body");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "gpt-test");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("mock reply from alpha to gpt-test: "),
        "{content}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], words(content));
    assert_eq!(body["usage"]["total_tokens"], 5 + words(content));
}

#[tokio::test]
async fn max_tokens_cuts_the_reply() {
    let server = start(fast()).await;
    let body: Value = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "mock reply from");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn chat_stream_without_include_usage() {
    let server = start(fast()).await;
    let request = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
    let plain: Value = post(&server, "/v1/chat/completions", request.clone())
        .await
        .json()
        .await
        .unwrap();
    let expected = plain["choices"][0]["message"]["content"].as_str().unwrap();

    let mut streamed = request;
    streamed["stream"] = json!(true);
    let response = post(&server, "/v1/chat/completions", streamed).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-mock-provider"], "mock");
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("\"usage\""),
        "no usage without include_usage: {body}"
    );

    let chunks = sse_chunks(&body);
    // role chunk + 4 content chunks + finish chunk
    assert_eq!(chunks.len(), 6, "{body}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-mock-"));
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-test");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content: String = chunks[1..5]
        .iter()
        .map(|chunk| {
            assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
            chunk["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(content, expected);
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let server = start(fast()).await;
    let response = client()
        .post(url(&server, "/v1/chat/completions"))
        .header("x-mock-chunks", "2")
        .json(&json!({
            "model": "gpt-test",
            "messages": [{"role": "user", "content": "one two three"}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(body.contains("\"usage\":null"), "{body}");
    let chunks = sse_chunks(&body);
    // role chunk + 2 content chunks (x-mock-chunks) + finish chunk + usage chunk
    assert_eq!(chunks.len(), 5, "{body}");
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    for chunk in rest {
        assert_eq!(chunk.get("usage"), Some(&Value::Null), "{chunk}");
    }
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
    let content: String = rest
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();

    assert_eq!(usage_chunk["object"], "chat.completion.chunk");
    assert_eq!(usage_chunk["id"], rest[0]["id"]);
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert_eq!(usage["prompt_tokens"], 3);
    assert_eq!(usage["completion_tokens"], words(&content));
    assert_eq!(usage["total_tokens"], 3 + words(&content));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_chunks_arrive_incrementally() {
    let server = start(MockConfig {
        chunk_delay: Duration::from_millis(300),
        stream_chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let response = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut frames = response.bytes_stream();

    let first = frames.next().await.expect("a first frame").unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    let first_seen = Instant::now();
    assert!(first.starts_with("data: "), "{first}");
    assert!(first.contains("\"role\":\"assistant\""), "{first}");
    assert!(
        !first.contains("[DONE]"),
        "the whole stream arrived at once: {first}"
    );
    assert!(
        frames.next().now_or_never().is_none(),
        "the stream must still be open, with nothing more to read, right after the first event"
    );

    let mut body = first;
    while let Some(frame) = frames.next().await {
        body.push_str(std::str::from_utf8(&frame.unwrap()).unwrap());
    }
    // Six more events follow the first, each after a 300 ms pause.
    assert!(
        first_seen.elapsed() >= Duration::from_millis(900),
        "rest of stream took only {:?}",
        first_seen.elapsed()
    );
    assert_eq!(sse_chunks(&body).len(), 6);
}

#[tokio::test]
async fn records_requests_in_order() {
    let server = start(fast()).await;
    let client = client();
    let response = client
        .post(url(&server, "/v1/chat/completions?trace=on"))
        .header("X-Trace-Id", "abc-123")
        .header("authorization", "Bearer whatever")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "record me"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client
        .get(url(&server, "/v1/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let recorded = server.recorded();
    assert_eq!(recorded.len(), 2);
    let first = &recorded[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions?trace=on");
    assert_eq!(first.header("x-trace-id"), Some("abc-123"));
    assert_eq!(first.header("X-TRACE-ID"), Some("abc-123"));
    assert_eq!(first.header("authorization"), Some("Bearer whatever"));
    assert!(first
        .headers
        .iter()
        .any(|(name, value)| name == "x-trace-id" && value == "abc-123"));
    assert!(first
        .headers
        .iter()
        .all(|(name, _)| *name == name.to_lowercase()));
    let body = first.json().expect("recorded body is JSON");
    assert_eq!(body["messages"][0]["content"], "record me");
    assert_eq!(recorded[1].method, "GET");
    assert_eq!(recorded[1].path, "/v1/nowhere");
    assert!(recorded[1].body.is_empty());
    assert_eq!(recorded[1].json(), None);

    server.clear_recorded();
    assert!(server.recorded().is_empty());
}

#[tokio::test]
async fn api_key_is_enforced_when_configured() {
    let server = start(MockConfig {
        expected_api_key: Some("sk-right".into()),
        ..fast()
    })
    .await;
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let send = |key: Option<&'static str>| {
        let mut builder = client()
            .post(url(&server, "/v1/chat/completions"))
            .json(&request);
        if let Some(key) = key {
            builder = builder.bearer_auth(key);
        }
        builder.send()
    };

    for key in [None, Some("sk-wrong")] {
        let response = send(key).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "key {key:?}");
        assert_eq!(response.headers()["x-mock-provider"], "mock");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].is_string());
    }
    let response = send(Some("sk-right")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn mock_status_header_forces_an_error() {
    let server = start(fast()).await;
    for code in [429_u16, 503] {
        let response = client()
            .post(url(&server, "/v1/chat/completions"))
            .header("x-mock-status", code.to_string())
            .json(&json!({"model": "m", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(response.headers()["x-mock-provider"], "mock");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "mock_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&code.to_string()), "{message}");
    }

    let response = client()
        .post(url(&server, "/v1/chat/completions"))
        .header("x-mock-status", "banana")
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn first_byte_delay_holds_back_the_headers() {
    let server = start(fast()).await;
    let started = Instant::now();
    let response = client()
        .get(url(&server, "/v1/models"))
        .header("x-mock-first-byte-delay-ms", "250")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn embeddings_are_deterministic() {
    let server = start(fast()).await;
    let request = json!({"model": "embed-test", "input": ["hello world", "good bye now"]});
    let first: Value = post(&server, "/v1/embeddings", request.clone())
        .await
        .json()
        .await
        .unwrap();
    let second: Value = post(&server, "/v1/embeddings", request)
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(first["object"], "list");
    assert_eq!(first["model"], "embed-test");
    assert_eq!(
        first["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );
    let data = first["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        let vector = item["embedding"].as_array().unwrap();
        assert_eq!(vector.len(), 8);
        assert!(vector.iter().all(Value::is_f64));
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(first["data"], second["data"]);

    let single: Value = post(
        &server,
        "/v1/embeddings",
        json!({"model": "e", "input": "hello world"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(single["data"][0]["embedding"], data[0]["embedding"]);

    let base64: Value = post(
        &server,
        "/v1/embeddings",
        json!({"model": "e", "input": "x", "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    // 8 little-endian f32 = 32 bytes = 44 base64 characters.
    assert_eq!(base64["data"][0]["embedding"].as_str().unwrap().len(), 44);
}

#[tokio::test]
async fn text_completions_json_and_stream() {
    let server = start(fast()).await;
    let body: Value = post(
        &server,
        "/v1/completions",
        json!({"model": "davinci-mock", "prompt": ["say", "something nice"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-mock-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "davinci-mock");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    let text = choice["text"].as_str().unwrap();
    assert!(text.starts_with("mock reply from mock to davinci-mock: "));
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], words(text));

    let response = post(
        &server,
        "/v1/completions",
        json!({
            "model": "davinci-mock",
            "prompt": "say something",
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    )
    .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunks = sse_chunks(&response.text().await.unwrap());
    // 4 text chunks + finish chunk + usage chunk
    assert_eq!(chunks.len(), 6);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    let streamed: String = rest
        .iter()
        .map(|chunk| {
            assert_eq!(chunk["object"], "text_completion");
            assert_eq!(chunk.get("usage"), Some(&Value::Null));
            chunk["choices"][0]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 2);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 2 + words(text));
}

#[tokio::test]
async fn models_are_listed() {
    let server = start(MockConfig {
        name: "beta".into(),
        ..fast()
    })
    .await;
    let body: Value = client()
        .get(url(&server, "/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"object": "list", "data": [
            {"id": "mock-small", "object": "model", "created": 0, "owned_by": "beta"}
        ]})
    );
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let server = start(fast()).await;
    let client = client();

    let response = client
        .post(url(&server, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": \"m\", \"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["x-mock-provider"], "mock");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"].get("code").is_some());

    let response = post(
        &server,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "model");

    let response = post(&server, "/v1/embeddings", json!({"model": "m"})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = post(&server, "/v2/unknown", json!({})).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-mock-provider"], "mock");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response = client
        .get(url(&server, "/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

async fn assert_port_closes(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "port {addr} still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dropping_the_provider_closes_the_port() {
    let server = start(fast()).await;
    let addr = server.addr();
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(server);
    assert_port_closes(addr).await;
}

#[tokio::test]
async fn wait_serves_until_dropped() {
    let server = start(fast()).await;
    let addr = server.addr();
    let waiter = tokio::spawn(server.wait());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "wait() must keep serving");
    let response = client()
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_port_closes(addr).await;
}

#[tokio::test]
async fn shutdown_completes_and_closes_the_port() {
    let server = start(fast()).await;
    let addr = server.addr();
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown completes")
        .expect("server ended cleanly");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn chat_calls_the_first_tool_then_reports_its_result() {
    let server = start(fast()).await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]);
    let response = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "m", "tools": tools, "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    assert!(choice["message"]["content"].is_null());

    // Streamed: the arguments arrive in fragments that add up.
    let response = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "m", "stream": true, "tools": tools, "messages": [{"role": "user", "content": "weather?"}]}),
    )
    .await;
    let text = response.text().await.unwrap();
    let mut arguments = String::new();
    let mut finish = None;
    for payload in sse_payloads(&text) {
        if payload == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&payload).unwrap();
        let choice = &chunk["choices"][0];
        if let Some(fragment) = choice.pointer("/delta/tool_calls/0/function/arguments") {
            arguments.push_str(fragment.as_str().unwrap());
        }
        if choice["finish_reason"].is_string() {
            finish = choice["finish_reason"].as_str().map(str::to_string);
        }
    }
    assert_eq!(arguments, r#"{"city":"Paris"}"#);
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    // After the tool result: text that reports it.
    let response = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "m", "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"},
        ]}),
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "the tool said: sunny, 21C",
        "{body}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}
