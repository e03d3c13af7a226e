//! Content-based routing through the real Envoy, on both policy paths: CEL rules over the body
//! (message count), headers and the requested name pick the model before its alias resolves.

use gantry_testkit::PolicyPath;

use crate::{json_of, on_both_policy_paths, post, TwoProviders};

on_both_policy_paths!(routing_rules_pick_the_model_from_the_request);

const RULES: &str = r#"routing:
  - name: long-chats
    when: llm.message_count > 2
    model: m-beta
  - name: priority
    when: "'x-priority' in request.headers && request.headers['x-priority'] == 'high'"
    model: m-beta
  - name: auto
    when: "llm.model == 'auto'"
    model: m-alpha
"#;

fn chat(model: &str, messages: usize) -> String {
    let messages: Vec<serde_json::Value> = (0..messages)
        .map(|i| serde_json::json!({"role": "user", "content": format!("message {i}")}))
        .collect();
    serde_json::json!({"model": model, "messages": messages}).to_string()
}

async fn routing_rules_pick_the_model_from_the_request(path: PolicyPath) {
    let t = TwoProviders::start_on(path, RULES).await;
    let url = t.stack.url("/v1/chat/completions");

    // No rule matches: the alias the client asked for.
    let response = post(&url, &chat("m-alpha", 1)).await;
    assert_eq!(response.headers()["x-gantry-model"], "m-alpha");
    assert_eq!(json_of(response).await.0, 200);

    // The body: a long chat goes to beta, with beta's upstream model and key.
    let response = post(&url, &chat("m-alpha", 3)).await;
    assert_eq!(response.headers()["x-gantry-model"], "m-beta");
    assert_eq!(response.headers()["x-gantry-provider"], "beta");
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["model"], "beta-1");
    let beta = t.beta.recorded();
    assert_eq!(beta.len(), 1);
    assert_eq!(beta[0].json().unwrap()["model"], "beta-1");
    let entry = t
        .stack
        .wait_for_access_log("the routed request", |e| e["route_rule"] == "long-chats");
    assert_eq!(entry["model"], "m-beta");

    // A header.
    let response = crate::http()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-priority", "high")
        .body(chat("m-alpha", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-gantry-model"], "m-beta");
    assert_eq!(t.beta.recorded().len(), 2);

    // A name that is no model, left to the rules; without a rule it is unknown.
    let (status, reply) = json_of(post(&url, &chat("auto", 1)).await).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["model"], "alpha-1");
    let (status, reply) = json_of(post(&url, &chat("nothing-routes-me", 1)).await).await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["error"]["code"], "model_not_found");
    assert_eq!(t.alpha.recorded().len(), 2);
}
