//! `gantry import litellm`: a LiteLLM proxy config converted by the real binary, checked by
//! `gantry check`, then served through the real Envoy: a group fails over by `order`, a
//! `fallbacks` rule reaches an Anthropic deployment (translated), a `model_group_alias` name
//! works, an unknown model gets OpenAI's 404; and a bad file is exit code 1 naming the problem.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use gantry_testkit::StackPorts;

use crate::{
    assert_openai_error, gantry_bin, json_of, post, served_target, start_failing_mock, start_stack,
};

const ANTHROPIC_ENV: &str = "GANTRY_TEST_LITELLM_ANTHROPIC_KEY";
const ANTHROPIC_KEY: &str = "litellm-import-anthropic-key";

fn gantry(args: &[&str]) -> Output {
    Command::new(gantry_bin())
        .args(args)
        .output()
        .expect("run gantry")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The name of the provider the converted config gave to `endpoint`.
fn provider_named_for(config: &serde_json::Value, endpoint: &str) -> String {
    config["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["endpoint"] == endpoint)
        .and_then(|p| p["name"].as_str())
        .unwrap_or_else(|| panic!("no provider at {endpoint} in {config}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_litellm_config_fails_over_and_resolves_aliases_through_envoy() {
    let broken = start_failing_mock("broken", None, Some(500), Duration::ZERO).await;
    let healthy = start_failing_mock("healthy", None, None, Duration::ZERO).await;
    let anthropic =
        start_failing_mock("anthropic", Some(ANTHROPIC_KEY), None, Duration::ZERO).await;
    let litellm = format!(
        "model_list:
  - model_name: chat
    litellm_params:
      model: openai/gpt-broken
      api_base: {broken}/v1
      order: 1
  - model_name: chat
    litellm_params:
      model: openai/gpt-healthy
      api_base: {healthy}/v1/
      order: 2
      rpm: 100
  - model_name: primary
    litellm_params:
      model: openai/primary-broken
      api_base: {broken}/v1
  - model_name: backup
    litellm_params:
      model: anthropic/claude-haiku-4-5
      api_base: {anthropic}
      api_key: os.environ/{ANTHROPIC_ENV}
router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 1
  fallbacks: [{{ primary: [backup] }}]
  model_group_alias: {{ gpt-4: chat }}
general_settings:
  master_key: sk-litellm-MASTER-literal
",
        broken = broken.base_url(),
        healthy = healthy.base_url(),
        anthropic = anthropic.base_url(),
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("config.yaml");
    let output = dir.path().join("gantry.yaml");
    std::fs::write(&source, litellm).unwrap();
    let ports = StackPorts::free();
    let [listen, admin, ext_proc] =
        [ports.listen, ports.admin, ports.ext_proc].map(|p| format!("127.0.0.1:{p}"));
    let out = gantry(&[
        "import",
        "litellm",
        &source.display().to_string(),
        "--output",
        &output.display().to_string(),
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--ext-proc-listen",
        &ext_proc,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The report names each setting that did not carry over, with its path.
    for needle in [
        "gantry: 4 settings not carried over:",
        "  - router_settings.num_retries: not carried over for backup: ",
        "  - router_settings.routing_strategy: usage-based-routing-v2 is not carried over: Gantry spreads by weight and priority",
        "  - model_list[1].litellm_params.rpm: ",
        "  - general_settings.master_key: ",
        &format!("reads these environment variables: {ANTHROPIC_ENV}"),
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    let converted = std::fs::read_to_string(&output).unwrap();
    assert!(converted.starts_with("# Gantry config converted by `gantry import litellm`"));
    assert!(converted.contains("#   - router_settings.routing_strategy: usage-based-routing-v2"));
    assert!(!converted.contains("MASTER-literal"));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // What `gantry check` says of it.
    let check = gantry(&["check", "--config", &output.display().to_string()]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("OK (3 providers, 4 models)"));

    let config: serde_json::Value = serde_saphyr::from_str(&converted).unwrap();
    let healthy_name = provider_named_for(&config, &healthy.base_url());
    let broken_name = provider_named_for(&config, &broken.base_url());
    let anthropic_name = provider_named_for(&config, &anthropic.base_url());

    // The converted file as it is, on this test's ports.
    let stack = start_stack(ports, converted, vec![(ANTHROPIC_ENV, ANTHROPIC_KEY)]).await;
    let url = stack.url("/v1/chat/completions");
    let chat = |model: &str| {
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };

    // `chat`: order 1 answers 500, order 2 serves (at its api_base without the /v1).
    let response = post(&url, &chat("chat")).await;
    let target = served_target(&response);
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        target.as_deref(),
        Some(format!("{healthy_name}/gpt-healthy").as_str())
    );
    let tried = broken.recorded();
    assert_eq!(tried.len(), 1);
    assert_eq!(tried[0].json().unwrap()["model"], "gpt-broken");
    let recorded = healthy.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].json().unwrap()["model"], "gpt-healthy");

    // `primary` falls back to `backup`: the Anthropic deployment, in Anthropic's format and key.
    broken.clear_recorded();
    let response = post(&url, &chat("primary")).await;
    let target = served_target(&response);
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "chat.completion", "{reply}");
    assert_eq!(
        target.as_deref(),
        Some(format!("{anthropic_name}/claude-haiku-4-5").as_str())
    );
    assert_eq!(
        broken.recorded()[0].json().unwrap()["model"],
        "primary-broken"
    );
    let recorded = anthropic.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/messages");
    assert_eq!(recorded[0].header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(recorded[0].json().unwrap()["model"], "claude-haiku-4-5");

    // The model_group_alias name is served like its group.
    healthy.clear_recorded();
    let response = post(&url, &chat("gpt-4")).await;
    let target = served_target(&response);
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        target.as_deref(),
        Some(format!("{healthy_name}/gpt-healthy").as_str())
    );
    assert_eq!(healthy.recorded().len(), 1);
    assert_ne!(broken_name, healthy_name);

    // A model the LiteLLM file did not have: OpenAI's 404.
    let (status, reply) = json_of(post(&url, &chat("claude-opus")).await).await;
    assert_eq!(status, 404, "{reply}");
    let message = assert_openai_error(&reply, "model_not_found");
    assert!(message.contains("'claude-opus'"), "{message}");
}

#[test]
fn a_malformed_litellm_file_is_exit_1_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let output = dir.path().join(format!("{name}.out"));
        let out = gantry(&[
            "import",
            "litellm",
            &path.display().to_string(),
            "--output",
            &output.display().to_string(),
        ]);
        assert!(
            !Path::new(&output).exists(),
            "{name}: an output was written"
        );
        assert!(out.stdout.is_empty(), "{name}");
        (out.status.code(), text(&out.stderr))
    };
    for (name, contents, needle) in [
        (
            "bad-yaml.yaml",
            "model_list: [\n  - {model_name: a\n",
            "not valid YAML: line",
        ),
        (
            "no-list.yaml",
            "router_settings: {num_retries: 2}\n",
            "model_list is missing",
        ),
        (
            "not-a-list.yaml",
            "model_list: {gpt-4o: openai/gpt-4o}\n",
            "model_list: must be a list of deployments (found a mapping)",
        ),
        (
            "no-name.yaml",
            "model_list:\n  - litellm_params: { model: openai/gpt-4o }\n",
            "model_list[0]: has no model_name",
        ),
        (
            "no-model.yaml",
            "model_list:\n  - { model_name: a, litellm_params: { model: openai/a } }\n  - { model_name: b, litellm_params: { api_base: 'http://x' } }\n",
            "model_list[1] (b): has no litellm_params.model",
        ),
    ] {
        let (code, stderr) = run(name, contents);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("gantry: cannot convert {}", dir.path().join(name).display())),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(needle), "{name}: missing {needle:?} in {stderr}");
    }

    let out = gantry(&[
        "import",
        "litellm",
        &dir.path().join("missing.yaml").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
}
