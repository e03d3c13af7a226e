//! Gantry's Envoy dynamic module (`libgantry.so`, crate `dynamic-module/`) in the real Envoy
//! 1.40.0: its imports against the binary's exports (ABI drift is caught here, not in
//! production), and API-key authentication in-process.
//!
//! The module is built by `cargo build -p gantry-dynamic-module` (the test command does it
//! before the tests).

use std::path::PathBuf;
use std::process::Command;

use gantry_policy::auth::api_keys::KeyHash;
use gantry_testkit::{envoy_binary, free_ports, loopback, EnvoyProcess};
use serde_json::{json, Value};

use crate::{http, start_mock};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_authenticates_api_keys_inside_envoy() {
    let mock = start_mock("upstream", None).await;
    let ports = free_ports(2);
    let (listen, admin) = (loopback(ports[0]), loopback(ports[1]));
    let gantry_config = format!(
        "listen: {listen}\nauth:\n  api_keys:\n    - {{ name: alice-key, hash: '{}', user: alice, team: research }}\n",
        KeyHash::of(ALICE)
    );
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin.port()}}},
        "static_resources": {
            "listeners": [{
                "name": "gantry_module",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen.port()}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gantry_module",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.dynamic_modules", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                                "dynamic_module_config": {
                                    "name": "gantry",
                                    "do_not_close": true,
                                    "module": {"local": {"filename": module_path().display().to_string()}}
                                },
                                "filter_name": "gantry",
                                "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": gantry_config}
                            }},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": mock.addr().port()}}}}]}]}
            }]
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let _envoy = tokio::task::spawn_blocking(move || EnvoyProcess::start(&path, admin))
        .await
        .unwrap();
    let client = http();
    let url = format!("http://{listen}/v1/models");

    // No key, a wrong key: 401 as an OpenAI error, with a challenge; the upstream never sees it.
    for auth in [None, Some("Bearer gk-wrong")] {
        let mut request = client.get(&url);
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
        .post(format!("http://{listen}/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "{body}");

    // The right key passes; the principal's headers overwrite the client's, and the key is
    // not forwarded.
    let response = client
        .get(&url)
        .header("authorization", format!("Bearer {ALICE}"))
        .header("x-gantry-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let recorded = mock.recorded();
    let seen = recorded.last().expect("the request reached the upstream");
    assert_eq!(seen.header("x-gantry-user"), Some("alice"));
    assert_eq!(seen.header("x-gantry-team"), Some("research"));
    assert_eq!(seen.header("x-gantry-key"), Some("alice-key"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the caller's key was forwarded"
    );
}
