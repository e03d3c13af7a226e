//! `gantry import litellm`: a LiteLLM proxy config converted by the real binary, then served
//! through the real Envoy: its fallbacks fail over, its aliases resolve, and a bad file is an
//! exit code 1 that names the problem.

use std::process::Command;
use std::time::Duration;

use gantry_mock_provider::{MockConfig, MockProvider};
use gantry_testkit::StackPorts;

use crate::{assert_openai_error, gantry_bin, json_of, post, start_stack};

async fn mock(name: &str, key: Option<&str>, forced_status: Option<u16>) -> MockProvider {
    MockProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            name: name.into(),
            expected_api_key: key.map(String::from),
            forced_status,
            chunk_delay: Duration::from_millis(1),
            ..MockConfig::default()
        },
    )
    .await
    .expect("mock starts")
}

const ANTHROPIC_ENV: &str = "GANTRY_TEST_LITELLM_ANTHROPIC_KEY";
const ANTHROPIC_KEY: &str = "litellm-import-anthropic-key";

fn import(path: &std::path::Path) -> std::process::Output {
    Command::new(gantry_bin())
        .args(["import", "litellm"])
        .arg(path)
        .output()
        .expect("run gantry import")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_litellm_config_serves_traffic_with_its_fallbacks_and_aliases() {
    let broken = mock("broken", None, Some(500)).await;
    let healthy = mock("healthy", None, None).await;
    let anthropic = mock("anthropic", Some(ANTHROPIC_KEY), None).await;
    let litellm = format!(
        "model_list:
  - model_name: chat
    litellm_params:
      model: openai/gpt-broken
      api_base: {broken}/v1
  - model_name: backup
    litellm_params:
      model: anthropic/claude-haiku-4-5
      api_base: {anthropic}
      api_key: os.environ/{ANTHROPIC_ENV}
  - model_name: plain
    litellm_params:
      model: openai/small-model
      api_base: {healthy}/v1/
      rpm: 100
router_settings:
  routing_strategy: usage-based-routing
  fallbacks: [{{ chat: [backup] }}]
  model_group_alias: {{ gpt-4: plain }}
",
        broken = broken.base_url(),
        healthy = healthy.base_url(),
        anthropic = anthropic.base_url(),
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("config.yaml");
    std::fs::write(&source, litellm).unwrap();
    let out = import(&source);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The report names what did not carry over.
    assert!(
        stderr.contains("router_settings.routing_strategy:")
            && stderr.contains("model_list[2].litellm_params.rpm:")
            && stderr.contains("2 settings not carried over"),
        "{stderr}"
    );
    let converted = String::from_utf8(out.stdout).unwrap();
    // Served on this test's ports: the converted config from its providers on.
    let body = &converted[converted.find("\nproviders:").expect("providers") + 1..];
    let ports = StackPorts::free();
    let stack = start_stack(
        ports,
        format!("{}{body}", ports.config_head()),
        // OpenAI deployments without api_key read OPENAI_API_KEY, as in LiteLLM.
        vec![
            (ANTHROPIC_ENV, ANTHROPIC_KEY),
            ("OPENAI_API_KEY", "sk-litellm-import-test"),
        ],
    )
    .await;
    let url = stack.url("/v1/chat/completions");
    let chat = |model: &str| {
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };

    // `chat` fails (500) and falls back to `backup`, translated for Anthropic.
    let response = post(&url, &chat("chat")).await;
    let target = response.headers().get("x-gantry-target").cloned();
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        target.as_ref().and_then(|v| v.to_str().ok()),
        Some("anthropic/claude-haiku-4-5")
    );
    assert_eq!(broken.recorded().len(), 1);
    assert_eq!(anthropic.recorded()[0].path, "/v1/messages");

    // The model group alias reaches its group, at the api_base without its /v1.
    let response = post(&url, &chat("gpt-4")).await;
    let upstream = response.headers().get("x-gantry-upstream-model").cloned();
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        upstream.as_ref().and_then(|v| v.to_str().ok()),
        Some("small-model")
    );
    assert_eq!(healthy.recorded()[0].path, "/v1/chat/completions");
    assert_eq!(
        healthy.recorded()[0].header("authorization"),
        Some("Bearer sk-litellm-import-test")
    );

    let (status, reply) = json_of(post(&url, &chat("nope")).await).await;
    assert_eq!(status, 404, "{reply}");
    assert_openai_error(&reply, "model_not_found");
}

#[test]
fn a_bad_litellm_file_is_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("config.yaml");
    std::fs::write(
        &source,
        "model_list:\n  - litellm_params: { model: openai/x }\n",
    )
    .unwrap();
    let out = import(&source);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model_list[0]: has no model_name"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = import(&dir.path().join("missing.yaml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
