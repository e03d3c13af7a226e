//! Webhook guards through the real Envoy (ext_proc path; the dynamic module refuses them):
//! a Gantry-format webhook that passes, rejects, masks, answers late or badly, the OpenAI
//! moderation adapter, guards turned on and off by their `when` conditions, and a timeout
//! longer than Envoy's per-message timeout (Gantry extends it for the call).

use gantry_testkit::StackPorts;

use crate::{assert_openai_error, json_of, post, start_mock, start_stack};

const GUARD_TOKEN_ENV: &str = "GANTRY_TEST_GUARD_TOKEN";
const GUARD_TOKEN: &str = "guard-token-secret";

fn chat(model: &str, content: &str, metadata: Option<&str>) -> String {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content},
        ],
    });
    if let Some(tag) = metadata {
        body["metadata"] = serde_json::json!({ tag: "yes" });
    }
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_guards_pass_reject_mask_time_out_and_moderate() {
    let provider = start_mock("alpha", None).await;
    let guard = start_mock("guard", None).await;
    let ports = StackPorts::free();
    // The head's ext_proc section, with Envoy's per-message timeout at its default (1 s).
    let head = ports.config_head() + "  message_timeout_ms: 1000\n";
    let yaml = format!(
        r#"{head}providers:
  - {{ name: alpha, kind: openai, endpoint: {provider} }}
models:
  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}
  - {{ name: m-other, provider: alpha, model: other-1 }}
guards:
  request:
    - name: scrub
      action: mask
      detectors: [email]
    - name: house-policy
      scopes: [user]
      when: "!('lenient' in llm.metadata)"
      webhook:
        url: {guard}/gantry/guard
        timeout_ms: 1500
        api_key_env: {GUARD_TOKEN_ENV}
    - name: house-policy-lenient
      scopes: [user]
      when: "'lenient' in llm.metadata"
      webhook:
        url: {guard}/gantry/guard
        timeout_ms: 1500
        failure_mode: open
    - name: moderation
      when: llm.model == 'm-alpha'
      webhook:
        format: openai_moderation
        url: {guard}/v1/moderations
        categories: [violence]
"#,
        provider = provider.base_url(),
        guard = guard.base_url(),
    );
    let stack = start_stack(ports, yaml, vec![(GUARD_TOKEN_ENV, GUARD_TOKEN)]).await;
    let url = stack.url("/v1/chat/completions");

    // Pass: both webhooks are asked (the house policy with its token, only the user's text,
    // and after the built-in guard masked the e-mail); the provider gets the request.
    let (status, body) = json_of(
        post(
            &url,
            &chat("m-alpha", "hello, write to ann@example.com", None),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let calls = guard.recorded();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].path, "/gantry/guard");
    assert_eq!(
        calls[0].header("authorization"),
        Some(format!("Bearer {GUARD_TOKEN}").as_str())
    );
    let sent = calls[0].json().unwrap();
    assert_eq!(sent["guard"], "house-policy");
    assert_eq!(sent["model"], "m-alpha");
    assert_eq!(sent["api"], "chat_completions");
    assert_eq!(
        sent["texts"],
        serde_json::json!([{"location": "messages[1].content", "text": "hello, write to [REDACTED:email]"}])
    );
    assert_eq!(calls[1].path, "/v1/moderations");
    assert_eq!(calls[1].header("authorization"), None);
    let moderation = calls[1].json().unwrap();
    assert_eq!(moderation["model"], "omni-moderation-latest");
    assert_eq!(moderation["input"].as_array().map(Vec::len), Some(2));
    assert_eq!(provider.recorded().len(), 1);
    provider.clear_recorded();
    guard.clear_recorded();

    // Reject: a 400 naming the guard and the webhook's reason; nothing goes upstream.
    let (status, body) =
        json_of(post(&url, &chat("m-alpha", "please WEBHOOK-REJECT this", None)).await).await;
    assert_eq!(status, 400, "{body}");
    let message = assert_openai_error(&body, "guard_rejected");
    assert!(
        message.contains("'house-policy'") && message.contains("the text asks to be rejected"),
        "{message}"
    );
    assert_eq!(body["error"]["param"], "messages[1].content", "{body}");

    // Moderation: a violent prompt is refused, naming the category; a harassing one passes
    // (the guard only counts violence); and a model its `when` excludes is not moderated.
    let (status, body) =
        json_of(post(&url, &chat("m-alpha", "how do I attack the castle", None)).await).await;
    assert_eq!(status, 400, "{body}");
    let message = assert_openai_error(&body, "guard_rejected");
    assert!(
        message.contains("'moderation'") && message.contains("flagged for violence"),
        "{message}"
    );
    assert!(
        provider.recorded().is_empty(),
        "a refused prompt went upstream"
    );
    let (status, body) = json_of(post(&url, &chat("m-alpha", "you idiot", None)).await).await;
    assert_eq!(status, 200, "{body}");
    guard.clear_recorded();
    let (status, body) =
        json_of(post(&url, &chat("m-other", "how do I attack the castle", None)).await).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        guard.recorded().iter().all(|c| c.path != "/v1/moderations"),
        "the moderation guard ran although its when condition was false"
    );
    provider.clear_recorded();

    // Mask: the provider gets the webhook's text, with a content-length that matches.
    let (status, body) =
        json_of(post(&url, &chat("m-alpha", "call mask-me at noon", None)).await).await;
    assert_eq!(status, 200, "{body}");
    let recorded = provider.recorded();
    assert_eq!(recorded.len(), 1);
    let upstream = recorded[0].json().unwrap();
    assert_eq!(
        upstream["messages"][1]["content"],
        "call [masked-by-webhook] at noon"
    );
    assert_eq!(upstream["messages"][0]["content"], "be brief");
    assert_eq!(upstream["model"], "alpha-1");
    assert_eq!(
        recorded[0]
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok()),
        Some(recorded[0].body.len())
    );
    let entry = stack.wait_for_access_log("the webhook-masked request", |e| {
        e["guard_hits"]
            .as_str()
            .is_some_and(|h| h.contains("house-policy:webhook:mask@messages[1].content"))
    });
    assert_eq!(entry["status"], 200, "{entry}");
    provider.clear_recorded();

    // Timeout, failing closed: a 503 that says so, well before the webhook would answer,
    // and although the timeout (1.5 s) is longer than Envoy's per-message timeout (1 s).
    let (status, body) =
        json_of(post(&url, &chat("m-alpha", "slow one: WEBHOOK-SLOW", None)).await).await;
    assert_eq!(status, 503, "{body}");
    let message = assert_openai_error(&body, "guard_unavailable");
    assert!(
        message.contains("'house-policy'") && message.contains("timed out after 1500 ms"),
        "{message}"
    );
    // Bad answers fail closed too, each named.
    for (text, why) in [
        ("WEBHOOK-GARBAGE", "not a Gantry verdict"),
        ("WEBHOOK-500", "answered HTTP 500"),
    ] {
        let (status, body) = json_of(post(&url, &chat("m-alpha", text, None)).await).await;
        assert_eq!(status, 503, "{body}");
        let message = assert_openai_error(&body, "guard_unavailable");
        assert!(message.contains(why), "{text}: {message}");
    }
    assert!(
        provider.recorded().is_empty(),
        "a request without a verdict went upstream"
    );

    // Timeout, failing open (the lenient guard, picked by `when`): the request goes on and
    // the access log says the webhook had no verdict.
    let (status, body) = json_of(
        post(
            &url,
            &chat("m-alpha", "slow one: WEBHOOK-SLOW", Some("lenient")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(provider.recorded().len(), 1);
    stack.wait_for_access_log("the request that failed open", |e| {
        e["guard_hits"]
            .as_str()
            .is_some_and(|h| h.contains("house-policy-lenient:webhook_unavailable:log@messages"))
    });

    // And the gateway still serves everyone else.
    let (status, body) = json_of(post(&url, &chat("m-alpha", "all good?", None)).await).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_guard_without_its_token_refuses_rather_than_calls_unauthenticated() {
    let provider = start_mock("alpha", None).await;
    let guard = start_mock("guard", None).await;
    let ports = StackPorts::free();
    let yaml = format!(
        r#"{head}providers:
  - {{ name: alpha, kind: openai, endpoint: {provider} }}
models:
  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}
guards:
  request:
    - name: moderation
      webhook:
        format: openai_moderation
        url: {guard}/v1/moderations
        api_key_env: GANTRY_TEST_UNSET_MODERATION_KEY
"#,
        head = ports.config_head(),
        provider = provider.base_url(),
        guard = guard.base_url(),
    );
    let stack = start_stack(ports, yaml, Vec::new()).await;
    let (status, body) = json_of(
        post(
            &stack.url("/v1/chat/completions"),
            &chat("m-alpha", "hi", None),
        )
        .await,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = assert_openai_error(&body, "guard_unavailable");
    assert!(
        message.contains("GANTRY_TEST_UNSET_MODERATION_KEY is not set"),
        "{message}"
    );
    assert!(guard.recorded().is_empty() && provider.recorded().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_guard_is_told_who_is_calling() {
    const KEY: &str = "gk-webhook-caller-test-key";
    let provider = start_mock("alpha", None).await;
    let guard = start_mock("guard", None).await;
    let ports = StackPorts::free();
    let auth_port = gantry_testkit::free_ports(1)[0];
    let yaml = format!(
        r#"{head}providers:
  - {{ name: alpha, kind: openai, endpoint: {provider} }}
models:
  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}
auth:
  listen: 127.0.0.1:{auth_port}
  api_keys:
    - {{ name: alice-key, hash: '{hash}', user: alice, team: research }}
guards:
  request:
    - name: house-policy
      webhook: {{ url: {guard}/gantry/guard }}
"#,
        head = ports.config_head(),
        provider = provider.base_url(),
        guard = guard.base_url(),
        hash = gantry_policy::auth::api_keys::KeyHash::of(KEY),
    );
    let stack = start_stack(ports, yaml, Vec::new()).await;
    let response = crate::http()
        .post(stack.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .body(chat("m-alpha", "hello", None))
        .send()
        .await
        .expect("request");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let calls = guard.recorded();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let sent = calls[0].json().unwrap();
    assert_eq!(
        sent["caller"],
        serde_json::json!({"method": "api_key", "subject": "alice", "team": "research", "key": "alice-key"}),
        "{sent}"
    );
    // The client's credential is not passed on to the webhook.
    assert_eq!(calls[0].header("authorization"), None);
}
