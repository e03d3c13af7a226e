//! Aliases with several targets through the real Envoy: each attempt is adapted by Gantry's
//! upstream filter to the target Envoy picked (model, key, path), a failed attempt (429, 500,
//! a timeout, a dead provider) is retried on the next target, weights spread traffic, and a
//! response header says which target answered. Translated provider kinds (Anthropic, Gemini,
//! Bedrock) go the same way, one target each.

use std::time::Duration;

use gantry_testkit::{free_ports, StackPorts};

use crate::{json_of, post, served_target, start_failing_mock, start_stack};

const KEY_ENV: &str = "GANTRY_TEST_FAILOVER_KEY";
const KEY: &str = "failover-key";

fn chat(model: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_go_to_the_next_target_translated_for_it() {
    let limited = start_failing_mock("limited", None, Some(429), Duration::ZERO).await;
    let broken = start_failing_mock("broken", None, Some(500), Duration::ZERO).await;
    let slow = start_failing_mock("slow", None, None, Duration::from_secs(5)).await;
    let healthy = start_failing_mock("healthy", Some(KEY), None, Duration::ZERO).await;
    let dead_port = free_ports(1)[0];
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: limited, kind: openai, endpoint: {limited} }}
  - {{ name: broken, kind: openai, endpoint: {broken} }}
  - {{ name: slow, kind: openai, endpoint: {slow} }}
  - {{ name: dead, kind: openai, endpoint: 'http://127.0.0.1:{dead_port}' }}
  - {{ name: healthy, kind: openai, endpoint: {healthy}, api_key_env: {KEY_ENV} }}
  - {{ name: keyless, kind: openai, endpoint: {limited}, api_key_env: GANTRY_TEST_FAILOVER_UNSET_KEY }}
models:
  - name: after-missing-key
    targets:
      - {{ provider: keyless, model: k-1 }}
      - {{ provider: healthy, model: h-5, priority: 1 }}
  - name: after-429
    targets:
      - {{ provider: limited, model: l-1 }}
      - {{ provider: healthy, model: h-1, priority: 1 }}
  - name: after-500
    targets:
      - {{ provider: broken, model: b-1 }}
      - {{ provider: healthy, model: h-2, priority: 1 }}
  - name: after-timeout
    retry: {{ per_try_timeout_secs: 1 }}
    targets:
      - {{ provider: slow, model: s-1 }}
      - {{ provider: healthy, model: h-3, priority: 1 }}
  - name: after-connect-failure
    targets:
      - {{ provider: dead, model: d-1 }}
      - {{ provider: healthy, model: h-4, priority: 1 }}
  - name: all-down
    targets:
      - {{ provider: limited, model: l-2 }}
      - {{ provider: broken, model: b-2, priority: 1 }}
",
        head = ports.config_head(),
        limited = limited.base_url(),
        broken = broken.base_url(),
        slow = slow.base_url(),
        healthy = healthy.base_url(),
    );
    let stack = start_stack(ports, yaml, vec![(KEY_ENV, KEY)]).await;
    let url = stack.url("/v1/chat/completions");
    for (alias, upstream_model) in [
        ("after-429", "h-1"),
        ("after-500", "h-2"),
        ("after-timeout", "h-3"),
        ("after-connect-failure", "h-4"),
        // A target without its key is left out of the cluster: never tried.
        ("after-missing-key", "h-5"),
    ] {
        healthy.clear_recorded();
        let response = post(&url, &chat(alias)).await;
        let target = served_target(&response);
        let (status, body) = json_of(response).await;
        assert_eq!(status, 200, "{alias}: {body}");
        assert_eq!(
            target.as_deref(),
            Some(format!("healthy/{upstream_model}").as_str()),
            "{alias}"
        );
        // The attempt on the healthy target was adapted to it: its model, its key.
        let recorded = healthy.recorded();
        assert_eq!(recorded.len(), 1, "{alias}");
        assert_eq!(
            recorded[0].json().unwrap()["model"],
            upstream_model,
            "{alias}"
        );
        assert_eq!(
            recorded[0].header("authorization"),
            Some(format!("Bearer {KEY}").as_str()),
            "{alias}"
        );
    }
    assert_eq!(limited.recorded()[0].json().unwrap()["model"], "l-1");
    assert!(
        limited
            .recorded()
            .iter()
            .all(|r| r.json().unwrap()["model"] != "k-1"),
        "the target without its key was tried"
    );
    assert_eq!(broken.recorded()[0].json().unwrap()["model"], "b-1");

    // When every target fails, the client gets the last one's error, as an OpenAI error.
    let (status, body) = json_of(post(&url, &chat("all-down")).await).await;
    assert_eq!(status, 500, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    let entry = stack.wait_for_access_log("a failed-over request", |e| e["model"] == "after-500");
    assert_eq!(entry["status"], 200, "{entry}");
    // The access log names the target that answered, not the first one tried.
    assert_eq!(
        (&entry["provider"], &entry["upstream_model"]),
        (&serde_json::json!("healthy"), &serde_json::json!("h-2")),
        "{entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_spread_requests_over_targets_of_one_priority() {
    let heavy = start_failing_mock("heavy", None, None, Duration::ZERO).await;
    let light = start_failing_mock("light", None, None, Duration::ZERO).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: heavy, kind: openai, endpoint: {heavy} }}
  - {{ name: light, kind: openai, endpoint: {light} }}
models:
  - name: spread
    targets:
      - {{ provider: heavy, model: big, weight: 3 }}
      - {{ provider: light, model: small, weight: 1 }}
",
        head = ports.config_head(),
        heavy = heavy.base_url(),
        light = light.base_url(),
    );
    let stack = start_stack(ports, yaml, Vec::new()).await;
    let url = stack.url("/v1/chat/completions");
    const REQUESTS: usize = 400;
    for _ in 0..REQUESTS {
        let (status, body) = json_of(post(&url, &chat("spread")).await).await;
        assert_eq!(status, 200, "{body}");
    }
    let heavy_share = heavy.recorded().len() as f64 / REQUESTS as f64;
    assert_eq!(heavy.recorded().len() + light.recorded().len(), REQUESTS);
    // 3:1 is 0.75; with 400 requests a weighted balancer stays well within ±0.08.
    assert!(
        (0.67..=0.83).contains(&heavy_share),
        "heavy got {heavy_share:.3} of the requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_conditions_choose_which_targets_may_serve_a_request() {
    let eu = start_failing_mock("eu", None, None, Duration::ZERO).await;
    let eu_broken = start_failing_mock("eu-broken", None, Some(500), Duration::ZERO).await;
    let us = start_failing_mock("us", None, None, Duration::ZERO).await;
    let claude = start_failing_mock("claude", Some(KEY), None, Duration::ZERO).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: eu, kind: openai, endpoint: {eu} }}
  - {{ name: eu-broken, kind: openai, endpoint: {eu_broken} }}
  - {{ name: us, kind: openai, endpoint: {us} }}
  - {{ name: claude, kind: anthropic, endpoint: {claude}, api_key_env: {KEY_ENV} }}
models:
  # EU requests stay in the EU: both EU targets, never US; others go to the US.
  - name: regional
    targets:
      - {{ provider: eu-broken, model: eu-1, when: 'request.headers[\"x-data-region\"] == \"eu\"' }}
      - {{ provider: eu, model: eu-2, priority: 1, when: 'request.headers[\"x-data-region\"] == \"eu\"' }}
      - provider: us
        model: us-1
        priority: 2
        when: \"!('x-data-region' in request.headers) || request.headers['x-data-region'] != 'eu'\"
  # Only long requests may use Claude; everything else is refused.
  - name: gated
    targets:
      - {{ provider: claude, model: claude-haiku-4-5, when: 'llm.max_tokens >= 100' }}
",
        head = ports.config_head(),
        eu = eu.base_url(),
        eu_broken = eu_broken.base_url(),
        us = us.base_url(),
        claude = claude.base_url(),
    );
    let stack = start_stack(ports, yaml, vec![(KEY_ENV, KEY)]).await;
    let url = stack.url("/v1/chat/completions");
    let send =
        |model: &str, region: Option<&str>, spoofed_targets: Option<&str>, max_tokens: u32| {
            let mut request = crate::http()
                .post(&url)
                .header("content-type", "application/json")
                .body(
                    serde_json::json!({"model": model, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
                );
            if let Some(region) = region {
                request = request.header("x-data-region", region);
            }
            if let Some(targets) = spoofed_targets {
                request = request.header("x-gantry-targets", targets);
            }
            request.send()
        };

    // An EU request fails over within the EU, and is never sent to the US target.
    let response = send("regional", Some("eu"), None, 10).await.unwrap();
    let target = served_target(&response);
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(target.as_deref(), Some("eu/eu-2"));
    assert_eq!(eu_broken.recorded().len(), 1);

    // Any other request goes only to the US target: with the EU one broken and the US one
    // last by priority, anything else would show.
    for region in [None, Some("us")] {
        eu.clear_recorded();
        eu_broken.clear_recorded();
        let response = send("regional", region, None, 10).await.unwrap();
        let target = served_target(&response);
        let (status, body) = json_of(response).await;
        assert_eq!(status, 200, "{region:?}: {body}");
        assert_eq!(target.as_deref(), Some("us/us-1"), "{region:?}");
        assert!(
            eu.recorded().is_empty() && eu_broken.recorded().is_empty(),
            "{region:?}"
        );
    }

    // The client cannot pick targets itself: its x-gantry-targets header is replaced (here
    // it names the US target alone, mask 4) or removed.
    us.clear_recorded();
    let response = send("regional", Some("eu"), Some("4"), 10).await.unwrap();
    let target = served_target(&response);
    let (status, body) = json_of(response).await;
    assert_eq!(
        (status, target.as_deref()),
        (200, Some("eu/eu-2")),
        "{body}"
    );
    assert!(us.recorded().is_empty());

    // No target accepts a short request for `gated`: 403, an OpenAI error naming the model.
    let (status, body) = json_of(send("gated", None, None, 10).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "no_eligible_target", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'gated'"),
        "{body}"
    );
    assert!(claude.recorded().is_empty());
    // A long one is served, translated for Anthropic.
    let response = send("gated", None, None, 200).await.unwrap();
    let target = served_target(&response);
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(target.as_deref(), Some("claude/claude-haiku-4-5"));
    assert_eq!(claude.recorded()[0].json().unwrap()["max_tokens"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_keeps_failing_is_ejected() {
    let broken = start_failing_mock("broken", None, Some(500), Duration::ZERO).await;
    let healthy = start_failing_mock("healthy", None, None, Duration::ZERO).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: broken, kind: openai, endpoint: {broken} }}
  - {{ name: healthy, kind: openai, endpoint: {healthy} }}
models:
  - name: even
    targets:
      - {{ provider: broken, model: b-1 }}
      - {{ provider: healthy, model: h-1 }}
",
        head = ports.config_head(),
        broken = broken.base_url(),
        healthy = healthy.base_url(),
    );
    let stack = start_stack(ports, yaml, Vec::new()).await;
    let url = stack.url("/v1/chat/completions");
    const REQUESTS: usize = 60;
    for _ in 0..REQUESTS {
        let (status, body) = json_of(post(&url, &chat("even")).await).await;
        assert_eq!(status, 200, "{body}");
    }
    // Without ejection about half the first attempts (30) would go to the broken target;
    // after 5 consecutive 5xx it is out for 30 s, longer than this test.
    let tried = broken.recorded().len();
    assert!(
        (5..=7).contains(&tried),
        "the broken target was tried {tried} times"
    );
    let stats = crate::http()
        .get(format!(
            "http://127.0.0.1:{}/stats?filter=outlier_detection",
            ports.admin
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let enforced = stats
        .lines()
        .find(|l| {
            l.starts_with(
                "cluster.model_even.outlier_detection.ejections_enforced_consecutive_5xx:",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(enforced, Some(1), "{stats}");
}

const ANTHROPIC_KEY_ENV: &str = "GANTRY_TEST_ANTHROPIC_KEY";
const GEMINI_KEY_ENV: &str = "GANTRY_TEST_GEMINI_KEY";
const AWS_ID_ENV: &str = "GANTRY_TEST_AWS_ID";
const AWS_SECRET_ENV: &str = "GANTRY_TEST_AWS_SECRET";
const NATIVE_KEY: &str = "native-provider-secret";

/// Reads an SSE body into its JSON payloads (`[DONE]` as a string).
fn sse_payloads(text: &str) -> Vec<serde_json::Value> {
    text.split("\n\n")
        .filter_map(|event| event.trim().strip_prefix("data: "))
        .map(|data| {
            serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.into()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_clients_reach_anthropic_gemini_and_bedrock_in_their_own_formats() {
    let anthropic = start_failing_mock("anthropic", Some(NATIVE_KEY), None, Duration::ZERO).await;
    let gemini = start_failing_mock("gemini", Some(NATIVE_KEY), None, Duration::ZERO).await;
    let bedrock = start_failing_mock("bedrock", Some(NATIVE_KEY), None, Duration::ZERO).await;
    let limited = start_failing_mock("limited", None, Some(429), Duration::ZERO).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: claude, kind: anthropic, endpoint: {anthropic}, api_key_env: {ANTHROPIC_KEY_ENV} }}
  - {{ name: google, kind: gemini, endpoint: {gemini}, api_key_env: {GEMINI_KEY_ENV} }}
  - name: aws
    kind: bedrock
    endpoint: {bedrock}
    region: us-east-1
    aws_access_key_id_env: {AWS_ID_ENV}
    aws_secret_access_key_env: {AWS_SECRET_ENV}
  - {{ name: limited, kind: openai, endpoint: {limited} }}
models:
  - {{ name: claude, provider: claude, model: claude-sonnet-4-5 }}
  - {{ name: gemini, provider: google, model: gemini-2.5-flash }}
  - {{ name: bedrock, provider: aws, model: 'anthropic.claude-3-5-sonnet-20240620-v1:0' }}
  - name: openai-then-claude
    targets:
      - {{ provider: limited, model: gpt-x }}
      - {{ provider: claude, model: claude-haiku-4-5, priority: 1 }}
",
        head = ports.config_head(),
        anthropic = anthropic.base_url(),
        gemini = gemini.base_url(),
        bedrock = bedrock.base_url(),
        limited = limited.base_url(),
    );
    let stack = start_stack(
        ports,
        yaml,
        vec![
            (ANTHROPIC_KEY_ENV, NATIVE_KEY),
            (GEMINI_KEY_ENV, NATIVE_KEY),
            (AWS_ID_ENV, "AKIDGANTRYTEST"),
            (AWS_SECRET_ENV, NATIVE_KEY),
        ],
    )
    .await;
    let url = stack.url("/v1/chat/completions");
    let tools = serde_json::json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }}]);
    for (alias, native, path_part) in [
        ("claude", &anthropic, "/v1/messages"),
        ("gemini", &gemini, ":generateContent"),
        ("bedrock", &bedrock, "/converse"),
        ("openai-then-claude", &anthropic, "/v1/messages"),
    ] {
        native.clear_recorded();
        // JSON.
        let response = post(&url, &chat(alias)).await;
        let provider = response
            .headers()
            .get("x-gantry-provider")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (status, body) = json_of(response).await;
        assert_eq!(status, 200, "{alias}: {body}");
        assert_eq!(body["object"], "chat.completion", "{alias}: {body}");
        assert!(
            body["choices"][0]["message"]["content"]
                .as_str()
                .is_some_and(|t| t.contains("mock")),
            "{alias}: {body}"
        );
        assert!(
            body["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0,
            "{alias}: {body}"
        );
        assert!(provider.is_some(), "{alias}: no x-gantry-provider");
        let recorded = native.recorded();
        assert!(
            recorded.iter().any(|r| r.path.contains(path_part)),
            "{alias}: {:?}",
            recorded.iter().map(|r| &r.path).collect::<Vec<_>>()
        );

        // Streamed, with usage (Gantry asks for it and strips it again: the client did not).
        let body = serde_json::json!({"model": alias, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]});
        let response = post(&url, &body.to_string()).await;
        assert_eq!(response.status(), 200, "{alias}");
        assert!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("text/event-stream")),
            "{alias}"
        );
        let payloads = sse_payloads(&response.text().await.unwrap());
        assert_eq!(
            payloads.last(),
            Some(&serde_json::Value::String("[DONE]".into())),
            "{alias}"
        );
        let text: String = payloads
            .iter()
            .filter_map(|p| {
                p.pointer("/choices/0/delta/content")
                    .and_then(|v| v.as_str())
            })
            .collect();
        assert!(text.contains("mock"), "{alias}: {payloads:?}");

        // A tool call, then its result.
        let body = serde_json::json!({"model": alias, "tools": tools,
            "messages": [{"role": "user", "content": "weather in Paris?"}]});
        let (status, reply) = json_of(post(&url, &body.to_string()).await).await;
        assert_eq!(status, 200, "{alias}: {reply}");
        let call = reply["choices"][0]["message"]["tool_calls"][0].clone();
        assert_eq!(call["function"]["name"], "get_weather", "{alias}: {reply}");
        let body = serde_json::json!({"model": alias, "tools": tools, "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]});
        let (status, reply) = json_of(post(&url, &body.to_string()).await).await;
        assert_eq!(status, 200, "{alias}: {reply}");
        assert_eq!(
            reply["choices"][0]["message"]["content"], "the tool said: sunny",
            "{alias}: {reply}"
        );
    }

    // A provider error comes back as an OpenAI error with its status.
    let response = crate::http()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-mock-status", "400")
        .body(chat("claude"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    // Embeddings cannot go to a chat-only provider: refused before anything is sent.
    let (status, body) = json_of(
        post(
            &stack.url("/v1/embeddings"),
            r#"{"model":"claude","input":"hi"}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_for_provider", "{body}");
}
