//! Gantry's Envoy dynamic module (`libgantry.so`, crate `dynamic-module/`) in the real Envoy
//! 1.40.0: its imports against the binary's exports (ABI drift is caught here, not in
//! production), API-key authentication in-process, and what `gantry run --mode module`
//! refuses. The LLM path itself (alias, rewrite, usage, streaming, errors) is tested on both
//! policy paths by the shared table in llm_path.rs, streaming.rs and errors.rs.
//!
//! The module is built by `cargo build -p gantry-dynamic-module` (the test command does it
//! before the tests).

use std::path::PathBuf;
use std::process::Command;

use gantry_policy::auth::api_keys::KeyHash;
use gantry_testkit::{envoy_binary, PolicyPath, StackPorts};
use serde_json::Value;

use crate::{assert_openai_error, http, json_of, start_mock, start_stack_on};

/// Every hook Envoy 1.40 requires of an HTTP filter module.
const REQUIRED_HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
];

/// `target/<profile>/libgantry.so`, next to the test binary's profile directory.
fn module_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("libgantry.so");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p gantry-dynamic-module` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn dynamic_symbols(binary: &std::path::Path, defined: bool) -> Vec<String> {
    let out = Command::new("nm")
        .arg("-D")
        .arg(if defined {
            "--defined-only"
        } else {
            "--undefined-only"
        })
        .arg(binary)
        .output()
        .expect("run nm (binutils)");
    assert!(out.status.success(), "nm failed on {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .filter(|s| s.starts_with("envoy_dynamic_module_"))
        .collect()
}

#[test]
fn every_callback_the_module_imports_is_exported_by_the_pinned_envoy() {
    let module = module_path();
    let imports = dynamic_symbols(&module, false);
    assert!(
        imports.contains(&"envoy_dynamic_module_callback_http_set_header".to_string()),
        "{imports:?}"
    );
    let envoy = std::fs::canonicalize(envoy_binary()).expect("envoy binary");
    let exported = dynamic_symbols(&envoy, true);
    assert!(
        exported.len() > 500,
        "Envoy exports only {} callbacks",
        exported.len()
    );
    let missing: Vec<&String> = imports.iter().filter(|i| !exported.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "the module imports callbacks Envoy 1.40.0 does not export (ABI drift): {missing:?}"
    );
    let hooks = dynamic_symbols(&module, true);
    let absent: Vec<&&str> = REQUIRED_HOOKS
        .iter()
        .filter(|h| !hooks.iter().any(|s| s == **h))
        .collect();
    assert!(
        absent.is_empty(),
        "hooks missing from the module: {absent:?}"
    );
}

const ALICE: &str = "gk-alice-module-test-key";

/// `gantry run --mode module` with an `auth` section whose key is limited to one model, so the
/// module authenticates once the body is buffered (the model is in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_authenticates_api_keys_inside_envoy() {
    let mock = start_mock("alpha", None).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: alpha, kind: openai, endpoint: '{endpoint}' }}
models:
  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}
  - {{ name: m-other, provider: alpha, model: other-1 }}
auth:
  api_keys:
    - {{ name: alice-key, hash: '{hash}', user: alice, team: research, models: [m-alpha] }}
",
        head = ports.config_head(),
        endpoint = mock.base_url(),
        hash = KeyHash::of(ALICE),
    );
    let stack = start_stack_on(PolicyPath::Module, ports, yaml, vec![]).await;
    let client = http();
    let chat = stack.url("/v1/chat/completions");
    let body = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
    };

    // No key, a wrong key: 401 as an OpenAI error, with a challenge; the upstream never sees it.
    for auth in [None, Some("Bearer gk-wrong")] {
        let mut request = client
            .post(&chat)
            .header("content-type", "application/json")
            .body(body("m-alpha"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{auth:?}");
        assert!(response.headers().contains_key("www-authenticate"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    }
    assert!(
        mock.recorded().is_empty(),
        "a refused request reached the upstream"
    );
    // The MCP path gets a JSON-RPC error instead.
    let response = client
        .post(stack.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");

    let bearer = format!("Bearer {ALICE}");
    // The key sees only its models, and may not use another.
    let response = client
        .get(stack.url("/v1/models"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    let (status, listed) = json_of(response).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m-alpha"]);
    let response = client
        .post(&chat)
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(body("m-other"))
        .send()
        .await
        .unwrap();
    let (status, refused) = json_of(response).await;
    assert_eq!(status, 403, "{refused}");
    assert_openai_error(&refused, "model_not_allowed");

    // The right key and model pass; the principal's headers overwrite the client's, and the
    // key is not forwarded.
    let response = client
        .post(&chat)
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .header("x-gantry-user", "mallory")
        .body(body("m-alpha"))
        .send()
        .await
        .unwrap();
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["model"], "alpha-1");
    let recorded = mock.recorded();
    assert_eq!(
        recorded.len(),
        1,
        "only the admitted request reached the upstream"
    );
    let seen = &recorded[0];
    assert_eq!(seen.header("x-gantry-user"), Some("alice"));
    assert_eq!(seen.header("x-gantry-team"), Some("research"));
    assert_eq!(seen.header("x-gantry-key"), Some("alice-key"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the caller's key was forwarded"
    );
    let entry = stack.wait_for_access_log("alice's chat request", |e| {
        e["status"] == 200 && e["model"] == "m-alpha"
    });
    assert_eq!(entry["subject"], "alice", "{entry}");
    assert_eq!(entry["auth_method"], "api_key", "{entry}");
    assert_eq!(entry["api_key"], "alice-key", "{entry}");
}

/// What the module cannot do is refused before anything starts, naming the mode that can.
#[test]
fn gantry_run_in_module_mode_refuses_configs_the_module_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let ports = StackPorts::free();
    let config = dir.path().join("jwt.yaml");
    std::fs::write(
        &config,
        format!(
            "{}providers:\n  - {{ name: a, kind: openai, endpoint: 'http://127.0.0.1:1' }}\nauth:\n  jwt:\n    - {{ issuer: 'https://idp.example/', audiences: [gantry], jwks_url: 'https://idp.example/jwks' }}\n",
            ports.config_head()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(crate::gantry_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--envoy")
            .arg(envoy_binary())
            .args(["--mode", "module"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&[]);
    assert!(
        stderr.contains("auth.jwt") && stderr.contains("ext_proc mode"),
        "{stderr}"
    );
    let stderr = run(&["--module", "/nonexistent/libgantry.so"]);
    assert!(
        stderr.contains("/nonexistent/libgantry.so does not exist")
            && stderr.contains("cargo build -p gantry-dynamic-module"),
        "{stderr}"
    );
}

/// A panic inside a hook fails only its own request (500 in the client's protocol, logged);
/// Envoy keeps serving everyone else. The fault is injected through the module's test switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_module_fails_one_request_and_envoy_keeps_serving() {
    let mock = start_mock("alpha", None).await;
    let ports = StackPorts::free();
    let yaml = format!(
        "{}providers:\n  - {{ name: alpha, kind: openai, endpoint: '{}' }}\nmodels:\n  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}\n",
        ports.config_head(),
        mock.base_url()
    );
    let stack = start_stack_on(
        PolicyPath::Module,
        ports,
        yaml,
        vec![("GANTRY_MODULE_FAULT_HEADER", "x-gantry-test-fault")],
    )
    .await;
    let chat = stack.url("/v1/chat/completions");
    let body = r#"{"model":"m-alpha","messages":[{"role":"user","content":"hi"}]}"#;
    let send = |fault: bool| {
        let mut request = http()
            .post(&chat)
            .header("content-type", "application/json")
            .body(body);
        if fault {
            request = request.header("x-gantry-test-fault", "1");
        }
        request.send()
    };
    for _ in 0..3 {
        let (status, reply) = json_of(send(true).await.expect("Envoy answers")).await;
        assert_eq!(status, 500, "{reply}");
        assert_openai_error(&reply, "gantry_module_error");
        let (status, reply) = json_of(send(false).await.expect("Envoy still serves")).await;
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(
        mock.recorded().len(),
        3,
        "only the healthy requests went upstream"
    );
    let logs = stack.process.logs();
    assert!(
        logs.contains("gantry module: request_headers panicked"),
        "the panic was not logged:\n{logs}"
    );
    drop(stack);

    // failure_mode: open lets the failed request go on unprocessed: nothing routed it, so
    // Envoy's catch-all answers, saying the module did not process it.
    let ports = StackPorts::free();
    let yaml = format!(
        "{}  failure_mode: open\nproviders:\n  - {{ name: alpha, kind: openai, endpoint: '{}' }}\nmodels:\n  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}\n",
        ports.config_head(),
        mock.base_url()
    );
    let stack = start_stack_on(
        PolicyPath::Module,
        ports,
        yaml,
        vec![("GANTRY_MODULE_FAULT_HEADER", "x-gantry-test-fault")],
    )
    .await;
    let response = http()
        .post(stack.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-gantry-test-fault", "1")
        .body(body)
        .send()
        .await
        .expect("Envoy answers");
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 503, "{reply}");
    let message = assert_openai_error(&reply, "gantry_unavailable");
    assert!(
        message.contains("dynamic module did not process it"),
        "{message}"
    );
    assert_eq!(
        mock.recorded().len(),
        3,
        "an unrouted request reached the provider"
    );
}

/// A hand-written bootstrap with a config the module cannot serve (or cannot parse) fails to
/// load in Envoy, and the module's log line says why (Envoy's own message is generic).
#[test]
fn envoy_refuses_a_module_config_it_cannot_serve_and_the_log_says_why() {
    let module = module_path();
    let bootstrap = |filter_config: &str| {
        serde_json::json!({
            "static_resources": {
                "listeners": [{
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "l",
                            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                                {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                            "http_filters": [
                                {"name": "envoy.filters.http.dynamic_modules", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                                    "dynamic_module_config": {
                                        "name": "gantry",
                                        "module": {"local": {"filename": module.display().to_string()}}
                                    },
                                    "filter_name": "gantry",
                                    "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter_config}
                                }},
                                {"name": "envoy.filters.http.router", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                            ]
                        }
                    }]}]
                }]
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"listen":"127.0.0.1:1","auth":{"jwt":[{"issuer":"https://idp.example/","audiences":["gantry"],"jwks_url":"https://idp.example/jwks"}]}}"#,
            "auth.jwt is not supported by the dynamic module",
        ),
        (
            r#"{"listen":"127.0.0.1:1","guards":{"request":[{"name":"w","webhook":{"url":"http://127.0.0.1:9/check"}}]}}"#,
            "webhook guards (guards.request[].webhook) are not supported by the dynamic module",
        ),
        (
            r#"{"listen": "127.0.0.1:1", "models": ["#,
            "invalid filter_config",
        ),
        (r#"{"listen":"127.0.0.1:1","modles":[]}"#, "modles"),
    ];
    for (i, (config, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.json"));
        std::fs::write(&path, bootstrap(config).to_string()).unwrap();
        let out = Command::new(envoy_binary())
            .args([
                "--mode",
                "validate",
                "--log-level",
                "error",
                "--config-path",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let logs = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "Envoy accepted {config}:\n{logs}");
        assert!(
            logs.contains(expected),
            "{config}: expected {expected:?} in\n{logs}"
        );
    }
}

/// The C types of the hooks whose signatures carry data (the module's Rust declarations in
/// `dynamic-module/src/lib.rs` follow them), as the pinned Envoy dlsyms them. Envoy checks hook
/// names only; its `getFunctionPointer<T>` instantiations spell out each `T`, so a changed
/// parameter list shows up here rather than as undefined behaviour.
const HOOK_TYPES: &[&str] = &[
    "const char *(*)()",
    "const void *(*)(void *, envoy_dynamic_module_type_envoy_buffer, envoy_dynamic_module_type_envoy_buffer)",
    "const void *(*)(const void *, void *)",
    "envoy_dynamic_module_type_on_http_filter_request_headers_status (*)(void *, const void *, bool)",
    "envoy_dynamic_module_type_on_http_filter_request_body_status (*)(void *, const void *, bool)",
    "envoy_dynamic_module_type_on_http_filter_request_trailers_status (*)(void *, const void *)",
    "envoy_dynamic_module_type_on_http_filter_response_headers_status (*)(void *, const void *, bool)",
    "envoy_dynamic_module_type_on_http_filter_response_body_status (*)(void *, const void *, bool)",
    "envoy_dynamic_module_type_on_http_filter_response_trailers_status (*)(void *, const void *)",
];

#[test]
fn the_hook_signatures_match_what_the_pinned_envoy_looks_up() {
    let envoy = std::fs::canonicalize(envoy_binary()).expect("envoy binary");
    let out = Command::new("strings")
        .args(["-n", "20"])
        .arg(&envoy)
        .output()
        .expect("run strings (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let looked_up: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("DynamicModule::getFunctionPointer"))
        .filter_map(|l| l.split_once("[T = ").map(|(_, t)| t.trim_end_matches(']')))
        .collect();
    assert!(
        looked_up.len() > 20,
        "found only {} hook types in Envoy",
        looked_up.len()
    );
    let missing: Vec<&&str> = HOOK_TYPES
        .iter()
        .filter(|t| !looked_up.contains(t))
        .collect();
    assert!(
        missing.is_empty(),
        "hook signatures the pinned Envoy no longer uses (ABI drift): {missing:?}"
    );
}
