//! What Envoy does when Gantry's ext_proc server is unreachable, per `ext_proc.failure_mode`.
//! Envoy runs alone on the bootstrap `gantry envoy-config` renders; nothing listens on the
//! ext_proc port.

use std::process::Command;

use gantry_mock_provider::MockProvider;
use gantry_testkit::{EnvoyProcess, StackPorts};

use crate::{assert_openai_error, gantry_bin, json_of, post, start_mock};

/// Writes `config_text` to a temp dir, renders its bootstrap with `gantry envoy-config`, and
/// starts Envoy alone on it. Returns Envoy, the config path, and the dir that holds both.
async fn envoy_on(
    config_text: String,
    ports: StackPorts,
) -> (EnvoyProcess, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.yaml");
    std::fs::write(&config, config_text).unwrap();
    let bootstrap = dir.path().join("envoy.yaml");
    let rendered = Command::new(gantry_bin())
        .args(["envoy-config", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&bootstrap)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let admin = gantry_testkit::loopback(ports.admin);
    let envoy = tokio::task::spawn_blocking(move || EnvoyProcess::start(&bootstrap, admin))
        .await
        .unwrap();
    (envoy, config, dir)
}

async fn envoy_without_ext_proc(
    failure_mode: &str,
) -> (EnvoyProcess, MockProvider, StackPorts, tempfile::TempDir) {
    let mock = start_mock("mock", None).await;
    let ports = StackPorts::free();
    let text = format!(
        "{}  failure_mode: {failure_mode}\nproviders:\n  - {{ name: local, kind: openai, endpoint: '{}' }}\nmodels:\n  - {{ name: fast, provider: local, model: mock-small }}\n",
        ports.config_head(),
        mock.base_url()
    );
    let (envoy, _config, dir) = envoy_on(text, ports).await;
    (envoy, mock, ports, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_answers_503_with_an_openai_error() {
    let (_envoy, mock, ports, _dir) = envoy_without_ext_proc("closed").await;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", ports.listen);
    let (status, body) = json_of(post(&url, r#"{"model":"fast","messages":[]}"#).await).await;
    assert_eq!(status, 503);
    let message = assert_openai_error(&body, "gantry_unavailable");
    assert!(message.contains("ext_proc"), "{message}");
    assert!(
        mock.recorded().is_empty(),
        "a request passed without policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_lets_requests_through_without_policy() {
    let (_envoy, mock, ports, _dir) = envoy_without_ext_proc("open").await;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", ports.listen);

    // Nobody chose a provider: the catch-all answers.
    let (status, body) = json_of(post(&url, r#"{"model":"fast","messages":[]}"#).await).await;
    assert_eq!(status, 503);
    assert_openai_error(&body, "gantry_unavailable");

    // A client that names the provider itself reaches it, unprocessed.
    let response = crate::http()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-gantry-provider", "local")
        .body(r#"{"model":"mock-small","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.recorded().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ext_authz_fails_closed_with_an_openai_error() {
    let mock = start_mock("mock", None).await;
    let ports = StackPorts::free();
    let authz_port = gantry_testkit::free_ports(1)[0];
    let text = format!(
        "{}providers:\n  - {{ name: local, kind: openai, endpoint: '{}' }}\nmodels:\n  - {{ name: fast, provider: local, model: mock-small }}\nauth:\n  listen: 127.0.0.1:{authz_port}\n  api_keys: [{{ name: k, hash: 'sha256:{}' }}]\n",
        ports.config_head(),
        mock.base_url(),
        "cd".repeat(32)
    );
    // Envoy starts before ext_proc; its readiness does not depend on the gRPC servers.
    let (_envoy, config, dir) = envoy_on(text, ports).await;
    // ext_proc runs (from the same config without its auth section); ext_authz does not.
    let without_auth = dir.path().join("no-auth.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&without_auth, &text[..text.find("auth:").unwrap()]).unwrap();
    let mut ext_proc = gantry_testkit::ChildProcess::spawn(
        "gantry serve",
        Command::new(gantry_bin())
            .args(["serve", "--config"])
            .arg(&without_auth),
    );
    ext_proc.wait_for_stdout(
        "gantry: serving ext_proc",
        std::time::Duration::from_secs(30),
    );
    let response = post(
        &format!("http://127.0.0.1:{}/v1/chat/completions", ports.listen),
        r#"{"model":"fast","messages":[]}"#,
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 503, "{body}");
    let message = assert_openai_error(&body, "gantry_unavailable");
    assert!(message.contains("ext_authz"), "{message}");
    assert!(
        mock.recorded().is_empty(),
        "the request reached the provider"
    );
}
