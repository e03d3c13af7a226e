//! The Anthropic Messages API as a front door, through the real Envoy: an Anthropic client's
//! `POST /v1/messages` is served as the canonical chat call by any provider (an OpenAI one, an
//! Anthropic one through the upstream filter), and every reply comes back in Anthropic's shape:
//! JSON, the event stream, tool use, and errors (Gantry's own and the provider's).

use std::time::Duration;

use gantry_mock_provider::{MockConfig, MockProvider};
use gantry_testkit::StackPorts;
use serde_json::{json, Value};

use crate::{json_of, start_stack};

const KEY_ENV: &str = "GANTRY_TEST_FRONT_DOOR_KEY";
const KEY: &str = "front-door-provider-key";

async fn mock(name: &str, key: Option<&str>) -> MockProvider {
    MockProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            name: name.into(),
            expected_api_key: key.map(String::from),
            chunk_delay: Duration::from_millis(1),
            ..MockConfig::default()
        },
    )
    .await
    .expect("mock starts")
}

async fn messages(url: &str, body: &Value) -> reqwest::Response {
    crate::http()
        .post(url)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "the-clients-own-key")
        .body(body.to_string())
        .send()
        .await
        .expect("request")
}

/// The `event:` names and `data:` payloads of an Anthropic event stream.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or(Value::Null);
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_clients_reach_any_provider_in_their_own_api() {
    let openai = mock("openai", Some(KEY)).await;
    let claude = mock("claude", Some(KEY)).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: openai, kind: openai, endpoint: {openai}, api_key_env: {KEY_ENV} }}
  - {{ name: claude, kind: anthropic, endpoint: {claude}, api_key_env: {KEY_ENV} }}
models:
  - {{ name: gpt, provider: openai, model: gpt-4o }}
  - {{ name: sonnet, provider: claude, model: claude-sonnet-4-5 }}
guards:
  request:
    - {{ name: no-cards, detectors: [credit_card] }}
",
        head = ports.config_head(),
        openai = openai.base_url(),
        claude = claude.base_url(),
    );
    let stack = start_stack(ports, yaml, vec![(KEY_ENV, KEY)]).await;
    let url = stack.url("/v1/messages");
    let tools = json!([{"name": "get_weather", "description": "weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);

    for (model, provider, upstream_path) in [
        ("gpt", &openai, "/v1/chat/completions"),
        ("sonnet", &claude, "/v1/messages"),
    ] {
        provider.clear_recorded();
        // JSON.
        let (status, reply) = json_of(
            messages(
                &url,
                &json!({"model": model, "max_tokens": 64, "system": "be brief",
                "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{model}: {reply}");
        assert_eq!(reply["type"], "message", "{model}: {reply}");
        assert_eq!(reply["role"], "assistant");
        assert_eq!(reply["model"], model);
        assert_eq!(reply["stop_reason"], "end_turn", "{reply}");
        assert!(
            reply["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("mock")),
            "{model}: {reply}"
        );
        assert!(
            reply["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
            "{reply}"
        );
        let recorded = provider.recorded();
        assert_eq!(recorded.len(), 1, "{model}");
        assert_eq!(recorded[0].path, upstream_path, "{model}");
        // The provider gets Gantry's key, never the client's.
        let presented = recorded[0]
            .header("authorization")
            .or(recorded[0].header("x-api-key"))
            .unwrap_or("");
        assert!(presented.ends_with(KEY), "{model}: {presented}");

        // The event stream.
        let response = messages(
            &url,
            &json!({"model": model, "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(response.status(), 200, "{model}");
        let events = events(&response.text().await.unwrap());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"message_start"), "{model}: {names:?}");
        assert_eq!(names.last(), Some(&"message_stop"), "{model}: {names:?}");
        assert!(names.contains(&"content_block_delta"), "{model}: {names:?}");
        let text: String = events
            .iter()
            .filter_map(|(_, d)| d.pointer("/delta/text").and_then(Value::as_str))
            .collect();
        assert!(text.contains("mock"), "{model}: {text}");
        let delta = events
            .iter()
            .find(|(n, _)| n == "message_delta")
            .map(|(_, d)| d)
            .unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{delta}");
        assert!(
            delta["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
            "{delta}"
        );

        // Tool use, then its result.
        let (status, reply) = json_of(
            messages(
                &url,
                &json!({"model": model, "max_tokens": 64, "tools": tools,
                "messages": [{"role": "user", "content": "weather in Paris?"}]}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{model}: {reply}");
        assert_eq!(reply["stop_reason"], "tool_use", "{model}: {reply}");
        let tool_use = reply["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "tool_use")
            .cloned()
            .unwrap();
        assert_eq!(tool_use["name"], "get_weather");
        assert_eq!(tool_use["input"], json!({"city": "Paris"}));
        let (status, reply) = json_of(
            messages(&url, &json!({"model": model, "max_tokens": 64, "tools": tools, "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": [tool_use]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "sunny"}]},
            ]}))
            .await,
        )
        .await;
        assert_eq!(status, 200, "{model}: {reply}");
        assert_eq!(
            reply["content"][0]["text"], "the tool said: sunny",
            "{model}: {reply}"
        );
    }

    // Gantry's own refusals, in Anthropic's error shape.
    for (body, status, error_type) in [
        (
            json!({"model": "nope", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "pay with 4111 1111 1111 1111"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "gpt", "max_tokens": 8, "messages": "not a list"}),
            400,
            "invalid_request_error",
        ),
    ] {
        let (got, reply) = json_of(messages(&url, &body).await).await;
        assert_eq!(got, status, "{reply}");
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["error"]["type"], error_type, "{reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    // The provider's errors too.
    let response = crate::http()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-mock-status", "429")
        .body(json!({"model": "gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(reply["error"]["type"], "rate_limit_error", "{reply}");
}

/// The dynamic module serves the OpenAI API only: an Anthropic client learns why, in its own
/// error shape, and nothing is sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_answers_anthropic_clients_in_their_own_shape() {
    let openai = mock("openai", None).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: openai, kind: openai, endpoint: {openai} }}
models:
  - {{ name: gpt, provider: openai, model: gpt-4o }}
",
        head = ports.config_head(),
        openai = openai.base_url(),
    );
    let stack =
        crate::start_stack_on(gantry_testkit::PolicyPath::Module, ports, yaml, Vec::new()).await;
    let (status, reply) = json_of(
        messages(
            &stack.url("/v1/messages"),
            &json!({"model": "gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["error"]["type"], "not_found_error", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ext_proc mode")),
        "{reply}"
    );
    assert!(openai.recorded().is_empty());
}
