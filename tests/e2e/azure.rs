//! An Azure OpenAI provider through the real Envoy, on both policy paths: OpenAI clients keep
//! their API, and Gantry sends each call to the deployment path with `api-version` and the key in
//! `api-key` (the client's own credentials removed).

use gantry_testkit::{PolicyPath, StackPorts};

use crate::{json_of, on_both_policy_paths, start_mock, start_stack_on};

on_both_policy_paths!(azure_openai_gets_its_deployment_path_version_and_key);

const AZURE_KEY_ENV: &str = "GANTRY_TEST_AZURE_KEY";
const AZURE_KEY: &str = "azure-key-secret";

async fn azure_openai_gets_its_deployment_path_version_and_key(path: PolicyPath) {
    let azure = start_mock("azure", Some(AZURE_KEY)).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - name: azure
    kind: azure_openai
    endpoint: {endpoint}/tenant-a
    api_key_env: {AZURE_KEY_ENV}
    api_version: 2024-06-01
models:
  - {{ name: gpt, provider: azure, model: my-gpt4o deployment }}
",
        head = ports.config_head(),
        endpoint = azure.base_url(),
    );
    let stack = start_stack_on(path, ports, yaml, vec![(AZURE_KEY_ENV, AZURE_KEY)]).await;
    let client = crate::http();
    let send = |path: &str, body: serde_json::Value| {
        client
            .post(stack.url(path))
            .header("content-type", "application/json")
            .header("authorization", "Bearer client-own-secret")
            .header("api-key", "client-own-azure-key")
            .body(body.to_string())
            .send()
    };

    let (status, body) = json_of(
        send(
            "/v1/chat/completions",
            serde_json::json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .expect("chat"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );

    let response = send(
        "/v1/chat/completions",
        serde_json::json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .expect("stream");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream body");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    let (status, body) = json_of(
        send(
            "/v1/embeddings",
            serde_json::json!({"model": "gpt", "input": "hello"}),
        )
        .await
        .expect("embeddings"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let recorded = azure.recorded();
    let paths: Vec<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/tenant-a/openai/deployments/my-gpt4o%20deployment/chat/completions?api-version=2024-06-01",
            "/tenant-a/openai/deployments/my-gpt4o%20deployment/chat/completions?api-version=2024-06-01",
            "/tenant-a/openai/deployments/my-gpt4o%20deployment/embeddings?api-version=2024-06-01",
        ]
    );
    for request in &recorded {
        assert_eq!(request.header("api-key"), Some(AZURE_KEY), "{request:?}");
        assert_eq!(request.header("authorization"), None, "{request:?}");
        assert_eq!(request.header("x-api-key"), None, "{request:?}");
    }
}
