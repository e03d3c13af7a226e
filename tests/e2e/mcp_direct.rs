//! MCP policy inline in ext_proc, for a real MCP server (the mcp 2.3.0 fixture) that Envoy
//! routes to directly, no bridge: tool rules, poisoned and changed definitions withheld from
//! `tools/list` answers (SSE in the handshake era, JSON in 2026-07-28) and calls to them
//! refused, the request guards over tool-call arguments and results, and 2026 `Mcp-*` headers
//! that disagree with the body refused before the server sees them.

use gantry_testkit::mcp_peers::{python_client, ClientMode, FixtureOptions, FixtureServer};
use gantry_testkit::StackPorts;
use serde_json::{json, Value};

use crate::{http, json_of, start_stack};

const GUARDS: &str = "guards:
  request:
    - { name: no-secrets-to-tools, action: reject, detectors: [secrets], scopes: [tool_call_arguments] }
    - { name: no-emails-from-tools, action: mask, detectors: [email], scopes: [tool_results] }
";

async fn stack_for(url: &str, definitions: &str) -> gantry_testkit::GantryStack {
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}{GUARDS}mcp_direct:
  rules:
    - {{ name: no-slow, action: deny, when: \"mcp.name == 'slow'\" }}
    - {{ name: everyone, action: allow, when: 'true' }}
{definitions}  servers:
    - {{ name: calc, url: '{url}', tools: {{ exclude: [whoami] }} }}
",
        head = ports.config_head(),
    );
    start_stack(ports, yaml, vec![]).await
}

fn client(url: String, mode: ClientMode, steps: Value) -> gantry_testkit::mcp_peers::ClientReport {
    python_client(&url, mode, &[], None, steps)
}

async fn run(
    url: String,
    mode: ClientMode,
    steps: Value,
) -> gantry_testkit::mcp_peers::ClientReport {
    tokio::task::spawn_blocking(move || client(url, mode, steps))
        .await
        .expect("client task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_policed_inline_in_both_eras() {
    let rug = tempfile::tempdir().unwrap();
    let rug_file = rug.path().join("rug");
    let server = tokio::task::spawn_blocking({
        let rug_file = rug_file.clone();
        move || {
            FixtureServer::start(
                "calc",
                FixtureOptions {
                    poisoned: true,
                    rug_pull_file: Some(rug_file),
                    ..FixtureOptions::default()
                },
            )
        }
    })
    .await
    .unwrap();
    let stack = stack_for(&server.url, "").await;
    let url = stack.url("/mcp-direct/calc");

    for mode in [ClientMode::Legacy, ClientMode::V2026_07_28] {
        let report = run(
            url.clone(),
            mode,
            json!([
                {"op": "list_tools"},
                {"op": "call_tool", "name": "echo", "args": {"text": "hi"}},
                {"op": "call_tool", "name": "slow", "args": {"seconds": 0}},
                {"op": "call_tool", "name": "send_note", "args": {"note": "x"}},
                {"op": "call_tool", "name": "echo", "args": {"text": "key AKIAIOSFODNN7EXAMPLE"}},
                {"op": "call_tool", "name": "echo", "args": {"text": "mail bob@example.com"}},
                {"op": "call_tool", "name": "whoami"},
            ]),
        )
        .await;
        let context = report.context();
        let tools = report.tool_names(0);
        // The poisoned tool is withheld, the denied and the excluded ones hidden; the rest listed.
        assert!(
            tools.contains(&"echo".to_string()),
            "{mode:?}: {tools:?}\n{context}"
        );
        assert!(
            tools.contains(&"weather".to_string()),
            "{mode:?}: {tools:?}"
        );
        for hidden in ["send_note", "slow", "whoami"] {
            assert!(
                !tools.contains(&hidden.to_string()),
                "{mode:?}: {hidden} listed: {tools:?}"
            );
        }
        assert_eq!(report.text(1), "calc: hi", "{mode:?}\n{context}");
        let denied = report.error(2);
        assert_eq!(denied["code"], -32003, "{mode:?}: {denied}");
        assert!(
            denied["message"]
                .as_str()
                .unwrap()
                .contains("rule 'no-slow'"),
            "{denied}"
        );
        let withheld = report.error(3);
        assert_eq!(withheld["code"], -32003, "{mode:?}: {withheld}");
        assert!(
            withheld["message"]
                .as_str()
                .unwrap()
                .contains("'send_note' is withheld"),
            "{withheld}"
        );
        let secret = report.error(4);
        assert_eq!(secret["code"], -32003, "{mode:?}: {secret}");
        let message = secret["message"].as_str().unwrap();
        assert!(message.contains("no-secrets-to-tools"), "{message}");
        assert!(
            !message.contains("AKIA"),
            "the secret was echoed: {message}"
        );
        // The result's e-mail address is masked on its way back.
        let masked = report.text(5);
        assert!(!masked.contains("bob@example.com"), "{mode:?}: {masked}");
        assert!(masked.contains("[REDACTED:email]"), "{mode:?}: {masked}");
        assert_eq!(report.error(6)["code"], -32602, "{mode:?}");
    }

    // A rug pull: weather's definition changes after it was first listed, so it is withheld and
    // calls to it are refused; when it changes back, it is served again.
    std::fs::write(&rug_file, "on").unwrap();
    let pulled = run(
        url.clone(),
        ClientMode::Legacy,
        json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "weather", "args": {"city": "Oslo"}},
        ]),
    )
    .await;
    assert!(
        !pulled.tool_names(0).contains(&"weather".to_string()),
        "{}",
        pulled.context()
    );
    let refused = pulled.error(1);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("definition changed"),
        "{refused}"
    );
    std::fs::remove_file(&rug_file).unwrap();
    let restored = run(
        url.clone(),
        ClientMode::Legacy,
        json!([{"op": "list_tools"}, {"op": "call_tool", "name": "weather", "args": {"city": "Oslo"}}]),
    )
    .await;
    assert!(restored.tool_names(0).contains(&"weather".to_string()));
    restored.result(1);

    // The access log names the server, the method and the tool of a refused call.
    stack.wait_for_access_log("a refused inline MCP call", |e| {
        e["mcp_server"] == "calc" && e["mcp_tool"] == "slow" && e["mcp_refused"] == "mcp_denied"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagged_definitions_are_served_under_alert_and_2026_headers_must_match_the_body() {
    let server = tokio::task::spawn_blocking(|| {
        FixtureServer::start(
            "calc",
            FixtureOptions {
                poisoned: true,
                ..FixtureOptions::default()
            },
        )
    })
    .await
    .unwrap();
    let stack = stack_for(&server.url, "  definitions: { scan: { action: alert } }\n").await;
    let url = stack.url("/mcp-direct/calc");
    let report = run(
        url.clone(),
        ClientMode::Legacy,
        json!([{"op": "list_tools"}]),
    )
    .await;
    assert!(
        report.tool_names(0).contains(&"send_note".to_string()),
        "{}",
        report.context()
    );

    let call = |name_header: &'static str, body_name: &'static str| {
        let url = url.clone();
        async move {
            let body = json!({
                "jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": body_name, "arguments": {"text": "hi"},
                    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                              "io.modelcontextprotocol/clientCapabilities": {}}},
            });
            http()
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", name_header)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    // Header and body agree: served.
    let (status, body) = json_of(call("echo", "echo").await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["content"][0]["text"], "calc: hi", "{body}");
    // They disagree (a header naming an allowed tool to slip a denied one past a
    // header-reading policy): refused with -32020 before the server sees it.
    let (status, body) = json_of(call("echo", "slow").await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Name 'echo'"),
        "{body}"
    );
    // Malformed JSON and batches get JSON-RPC errors, and the server keeps serving.
    for (bad, code) in [
        ("{nope", -32700),
        (
            "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}]",
            -32600,
        ),
    ] {
        let response = http()
            .post(&url)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let (status, _) = json_of(call("echo", "echo").await).await;
    assert_eq!(status, 200);
}
