//! The official `openai` Python SDK (pinned in scripts/requirements.txt) against the stack.

use std::process::Command;

use gantry_testkit::{project_root, venv_python};

use crate::TwoProviders;

/// Runs a script of tests/interop/ with the project's Python and returns the JSON report it
/// prints last; fails with its output when it fails.
async fn python_report(script: &'static str, args: Vec<String>) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv_python())
            .arg(project_root().join(script))
            .args(&args)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a report line"))
        .expect("the script's last line is a JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_works_through_gantry() {
    let t = TwoProviders::start("").await;
    let base_url = t.stack.url("/v1");
    let report = python_report(
        "tests/interop/openai_sdk.py",
        vec![
            "--base-url".into(),
            base_url,
            "--model".into(),
            "m-beta".into(),
        ],
    )
    .await;
    assert_eq!(report["chat_model"], "beta-1");
    assert!(report["chat_total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(report["stream_text"], report["chat_text"]);
    assert_eq!(report["stream_chunks_with_usage"], 0);
    assert_eq!(
        report["stream_with_usage_total_tokens"],
        report["chat_total_tokens"]
    );
    assert_eq!(report["embedding_dimensions"], 8);
    assert_eq!(report["unknown_model_status"], 404);
    assert_eq!(report["unknown_model_code"], "model_not_found");
    assert!(report["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "m-beta"));

    // Every SDK call reached beta with Gantry's key, never the SDK's.
    let recorded = t.beta.recorded();
    assert!(recorded.len() >= 4, "{recorded:?}");
    for request in recorded {
        assert_eq!(
            request.header("authorization"),
            Some(&*format!("Bearer {}", crate::BETA_KEY))
        );
    }
}

/// Every front door (the OpenAI and Anthropic SDKs) x every provider kind (OpenAI, Anthropic,
/// Gemini, Bedrock mocks in their own formats): plain, streamed, and a tool call then its
/// result, each checked pair by pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_and_anthropic_sdks_reach_every_provider_kind() {
    use gantry_mock_provider::{MockConfig, MockProvider};
    const KEY: &str = "matrix-provider-key";
    let mut mocks = Vec::new();
    for name in ["openai", "anthropic", "gemini", "bedrock"] {
        mocks.push(
            MockProvider::start(
                "127.0.0.1:0".parse().unwrap(),
                MockConfig {
                    name: name.into(),
                    expected_api_key: Some(KEY.into()),
                    chunk_delay: std::time::Duration::from_millis(1),
                    ..MockConfig::default()
                },
            )
            .await
            .unwrap(),
        );
    }
    let ports = gantry_testkit::StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: o, kind: openai, endpoint: {o}, api_key_env: MATRIX_KEY }}
  - {{ name: a, kind: anthropic, endpoint: {a}, api_key_env: MATRIX_KEY }}
  - {{ name: g, kind: gemini, endpoint: {g}, api_key_env: MATRIX_KEY }}
  - {{ name: b, kind: bedrock, endpoint: {b}, region: eu-west-1, aws_access_key_id_env: MATRIX_AWS_ID, aws_secret_access_key_env: MATRIX_KEY }}
models:
  - {{ name: via-openai, provider: o, model: gpt-4o }}
  - {{ name: via-anthropic, provider: a, model: claude-sonnet-4-5 }}
  - {{ name: via-gemini, provider: g, model: gemini-2.5-flash }}
  - {{ name: via-bedrock, provider: b, model: 'anthropic.claude-3-5-sonnet-20240620-v1:0' }}
",
        head = ports.config_head(),
        o = mocks[0].base_url(),
        a = mocks[1].base_url(),
        g = mocks[2].base_url(),
        b = mocks[3].base_url(),
    );
    let stack = crate::start_stack(
        ports,
        yaml,
        vec![("MATRIX_KEY", KEY), ("MATRIX_AWS_ID", "AKIDMATRIX")],
    )
    .await;
    let base_url = stack.url("");
    let base_url = base_url.trim_end_matches('/').to_string();
    let models = "via-openai,via-anthropic,via-gemini,via-bedrock";
    let report = python_report(
        "tests/interop/provider_matrix.py",
        vec![
            "--base-url".into(),
            base_url,
            "--models".into(),
            models.into(),
        ],
    )
    .await;
    for sdk in ["openai", "anthropic"] {
        for model in models.split(',') {
            let pair = format!("{sdk}/{model}");
            let r = &report[&pair];
            assert!(r["error"].is_null(), "{pair}: {}", r["error"]);
            assert!(
                r["text"].as_str().is_some_and(|t| t.contains("mock")),
                "{pair}: {r}"
            );
            assert_eq!(
                r["stream_text"], r["text"],
                "{pair}: the stream and the reply differ"
            );
            assert!(r["total_tokens"].as_u64().unwrap_or(0) > 0, "{pair}: {r}");
            let tool_stop = if sdk == "openai" {
                "tool_calls"
            } else {
                "tool_use"
            };
            assert_eq!(r["finish_reason"], tool_stop, "{pair}: {r}");
            assert_eq!(r["tool"], "get_weather", "{pair}");
            assert_eq!(
                r["tool_arguments"],
                serde_json::json!({"city": "Paris"}),
                "{pair}"
            );
            assert_eq!(r["stream_tool"], "get_weather", "{pair}: {r}");
            assert_eq!(
                r["stream_tool_arguments"],
                serde_json::json!({"city": "Paris"}),
                "{pair}: {r}"
            );
            assert_eq!(r["after_tool"], "the tool said: sunny", "{pair}: {r}");
        }
    }
}
