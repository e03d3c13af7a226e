//! The LLM path through Envoy: alias routing, model rewrite, key injection, usage reporting,
//! on both policy paths (ext_proc and the dynamic module).

use gantry_testkit::PolicyPath;

use crate::{json_of, on_both_policy_paths, post, TwoProviders, BETA_KEY};

on_both_policy_paths!(
    aliases_route_to_their_provider_with_the_model_rewritten,
    provider_key_is_injected_and_client_credentials_stay_at_the_gateway,
    usage_is_reported_in_headers_and_the_access_log,
    streamed_reply_keeps_the_clients_shape_and_is_still_metered,
);

const CHAT: &str = "/v1/chat/completions";

fn chat_body(model: &str, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"one two three"}}]{extra}}}"#
    )
}

async fn aliases_route_to_their_provider_with_the_model_rewritten(path: PolicyPath) {
    let t = TwoProviders::start_on(path, "").await;

    let response = post(&t.stack.url(CHAT), &chat_body("m-alpha", "")).await;
    assert_eq!(response.headers()["x-gantry-provider"], "alpha");
    assert_eq!(response.headers()["x-gantry-model"], "m-alpha");
    assert_eq!(response.headers()["x-gantry-upstream-model"], "alpha-1");
    assert_eq!(response.headers()["x-mock-provider"], "alpha");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "alpha-1");

    let recorded = t.alpha.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, CHAT);
    let upstream = recorded[0].json().expect("JSON body upstream");
    assert_eq!(upstream["model"], "alpha-1");
    assert_eq!(upstream["messages"][0]["content"], "one two three");
    assert!(t.beta.recorded().is_empty(), "beta got alpha's request");

    for (path, body) in [
        (CHAT, chat_body("m-beta", "")),
        (
            "/v1/completions",
            r#"{"model":"m-beta","prompt":"say hi"}"#.to_string(),
        ),
        (
            "/v1/embeddings",
            r#"{"model":"m-beta","input":["a b","c"]}"#.to_string(),
        ),
    ] {
        let (status, reply) = json_of(post(&t.stack.url(path), &body).await).await;
        assert_eq!(status, 200, "{path}: {reply}");
        assert_eq!(reply["model"], "beta-1", "{path}");
    }
    let recorded = t.beta.recorded();
    let paths: Vec<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [CHAT, "/v1/completions", "/v1/embeddings"]);
    for request in &recorded {
        assert_eq!(request.json().unwrap()["model"], "beta-1");
        assert_eq!(
            request
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok()),
            Some(request.body.len()),
            "content-length must match the rewritten body"
        );
    }
    assert_eq!(t.alpha.recorded().len(), 1);
}

async fn provider_key_is_injected_and_client_credentials_stay_at_the_gateway(path: PolicyPath) {
    let t = TwoProviders::start_on(path, "").await;
    let client = crate::http();
    let send = |model: &str| {
        client
            .post(t.stack.url(CHAT))
            .header("content-type", "application/json")
            .header("authorization", "Bearer client-secret")
            .header("x-api-key", "client-key")
            // A client trying to pick the provider itself.
            .header("x-gantry-provider", "alpha")
            .body(chat_body(model, ""))
            .send()
    };

    let response = send("m-beta").await.expect("request");
    assert_eq!(response.status(), 200, "beta accepts only its own key");
    let beta = t.beta.recorded();
    assert_eq!(beta.len(), 1, "the spoofed routing header must not win");
    assert_eq!(
        beta[0].header("authorization"),
        Some(&*format!("Bearer {BETA_KEY}"))
    );
    assert_eq!(beta[0].header("x-api-key"), None);
    assert_eq!(
        beta[0].header("x-gantry-provider"),
        None,
        "routing header leaked upstream"
    );
    assert!(t.alpha.recorded().is_empty());

    let response = send("m-alpha").await.expect("request");
    assert_eq!(response.status(), 200);
    let alpha = t.alpha.recorded();
    assert_eq!(
        alpha[0].header("authorization"),
        None,
        "client credential forwarded"
    );
    assert_eq!(alpha[0].header("x-api-key"), None);

    let logs = t.stack.process.logs();
    assert!(
        !logs.contains(BETA_KEY),
        "the provider key appeared in the logs"
    );
}

async fn usage_is_reported_in_headers_and_the_access_log(path: PolicyPath) {
    let t = TwoProviders::start_on(path, "").await;
    let response = post(&t.stack.url(CHAT), &chat_body("m-alpha", "")).await;
    let header =
        |name: &str| -> u64 { response.headers()[name].to_str().unwrap().parse().unwrap() };
    let (prompt, completion, total) = (
        header("x-gantry-prompt-tokens"),
        header("x-gantry-completion-tokens"),
        header("x-gantry-total-tokens"),
    );
    let (_, body) = json_of(response).await;
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(usage["completion_tokens"], completion);
    assert_eq!(usage["total_tokens"], total);
    assert!(total > 0 && total == prompt + completion);

    let entry = t
        .stack
        .wait_for_access_log("the chat request with usage", |e| {
            e["model"] == "m-alpha" && e["total_tokens"].is_number()
        });
    assert_eq!(entry["provider"], "alpha");
    assert_eq!(entry["upstream_model"], "alpha-1");
    assert_eq!(entry["upstream_cluster"], "provider_alpha");
    assert_eq!(entry["prompt_tokens"], prompt);
    assert_eq!(entry["completion_tokens"], completion);
    assert_eq!(entry["total_tokens"], total);
    assert_eq!(entry["status"], 200);
}

async fn streamed_reply_keeps_the_clients_shape_and_is_still_metered(path: PolicyPath) {
    let t = TwoProviders::start_on(path, "").await;

    // The client did not ask for usage: Gantry asks upstream, meters, and strips it again.
    let plain = post(
        &t.stack.url(CHAT),
        &chat_body("m-alpha", r#","stream":true"#),
    )
    .await;
    assert_eq!(plain.status(), 200);
    assert!(plain.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = plain.text().await.unwrap();
    assert!(
        !text.contains("usage"),
        "client got usage it did not ask for:\n{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).expect("each event is JSON"))
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert!(
        content.starts_with("mock reply from alpha to alpha-1"),
        "{content}"
    );
    let upstream = t.alpha.recorded()[0].json().unwrap();
    assert_eq!(upstream["stream_options"]["include_usage"], true);

    let entry = t
        .stack
        .wait_for_access_log("the streamed request's usage", |e| {
            e["stream"] == true && e["total_tokens"].is_number()
        });
    assert!(entry["completion_tokens"].as_u64().unwrap() > 0, "{entry}");

    // A client that asks for usage gets it, exactly once, in the final chunk.
    let asked = post(
        &t.stack.url(CHAT),
        &chat_body(
            "m-alpha",
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    let text = asked.text().await.unwrap();
    let with_usage: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter(|v| v["usage"].is_object())
        .collect();
    assert_eq!(with_usage.len(), 1, "{text}");
    assert_eq!(
        with_usage[0]["usage"]["total_tokens"],
        entry["total_tokens"]
    );
}
