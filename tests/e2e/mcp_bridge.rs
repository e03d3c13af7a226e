//! The MCP bridge through real Envoy: real upstream MCP servers (the mcp 2.3.0 fixture server
//! over streamable HTTP and stdio, npm server-everything) and real clients (the mcp Python SDK
//! in both eras, raw HTTP for protocol edge cases).

use gantry_policy::auth::api_keys::KeyHash;
use gantry_testkit::mcp_peers::{
    fixture_stdio_command, python_client, ClientMode, ClientReport, FixtureOptions, FixtureServer,
    McpPeer,
};
use gantry_testkit::{free_ports, GantryStack, StackPorts};
use serde_json::{json, Value};

use crate::{http, start_stack};

/// A stack with the bridge and the given `mcp.upstreams` entries (YAML list items) plus
/// `extra` lines inside the `mcp` section and `top` lines at the top level.
async fn bridge_stack(upstreams: &str, extra: &str, top: &str) -> GantryStack {
    bridge_stack_with_env(upstreams, extra, top, vec![]).await
}

async fn bridge_stack_with_env(
    upstreams: &str,
    extra: &str,
    top: &str,
    mut env: Vec<(&'static str, &'static str)>,
) -> GantryStack {
    env.push(("GANTRY_MCP_SESSION_SECRET", "test-secret"));
    let ports = StackPorts::free();
    let mcp_port = free_ports(1)[0];
    let yaml = format!(
        "{head}{top}mcp:\n  listen: 127.0.0.1:{mcp_port}\n{extra}  upstreams:\n{upstreams}",
        head = ports.config_head(),
    );
    start_stack(ports, yaml, env).await
}

fn http_upstream(name: &str, peer: &McpPeer) -> String {
    format!(
        "    - {{ name: {name}, url: '{}', timeout_ms: 5000 }}\n",
        peer.url
    )
}

fn stdio_upstream(name: &str) -> String {
    let (program, args) = fixture_stdio_command(name);
    let mut command = vec![program.display().to_string()];
    command.extend(args);
    format!(
        "    - {{ name: {name}, command: {}, timeout_ms: 10000 }}\n",
        serde_json::to_string(&command).unwrap()
    )
}

async fn client(
    url: String,
    mode: ClientMode,
    headers: Vec<(String, String)>,
    elicitation: Option<Value>,
    steps: Value,
) -> ClientReport {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        python_client(&url, mode, &headers, elicitation, steps)
    })
    .await
    .expect("client task")
}

fn ok_result(report: &ClientReport, i: usize) -> &Value {
    let step = report.step(i);
    assert_eq!(step["ok"], true, "step {i} failed\n{}", report.context());
    &step["result"]
}

fn names(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {list}"))
        .iter()
        .map(|i| i[field].as_str().unwrap_or_default().to_string())
        .collect()
}

fn first_text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upstreams_with_colliding_names_federate_in_both_eras() {
    // alpha answers JSON, beta SSE, gamma is a child process on stdio: all offer `echo`.
    let alpha = FixtureServer::start(
        "alpha",
        FixtureOptions {
            json_response: true,
            ..FixtureOptions::default()
        },
    );
    let beta = FixtureServer::start("beta", FixtureOptions::default());
    let upstreams =
        http_upstream("alpha", &alpha) + &http_upstream("beta", &beta) + &stdio_upstream("gamma");
    let stack = bridge_stack(&upstreams, "", "").await;
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "alpha__echo", "args": {"text": "hi"}},
        {"op": "call_tool", "name": "beta__echo", "args": {"text": "hi"}},
        {"op": "call_tool", "name": "gamma__echo", "args": {"text": "hi"}},
        {"op": "call_tool", "name": "beta__add", "args": {"a": 2, "b": 40}},
        {"op": "list_resources"},
        {"op": "read_resource", "uri": "beta+memo://notes/first"},
        {"op": "list_resource_templates"},
        {"op": "read_resource", "uri": "gamma+memo://notes/7"},
        {"op": "list_prompts"},
        {"op": "get_prompt", "name": "gamma__greet", "args": {"name": "bob"}},
        {"op": "call_tool", "name": "delta__echo", "args": {"text": "hi"}},
        {"op": "call_tool", "name": "echo", "args": {"text": "hi"}},
    ]);
    for mode in [
        ClientMode::Legacy,
        ClientMode::V2026_07_28,
        ClientMode::Auto,
    ] {
        let report = client(stack.url("/mcp"), mode, vec![], None, steps.clone()).await;
        assert!(report.connect_error().is_none(), "{}", report.context());
        let expected_version = if mode == ClientMode::Legacy {
            "2025-11-25"
        } else {
            "2026-07-28"
        };
        assert_eq!(report.protocol_version(), expected_version, "{mode:?}");
        let tools = names(ok_result(&report, 0), "tools", "name");
        for upstream in ["alpha", "beta", "gamma"] {
            for tool in ["echo", "add", "whoami"] {
                let name = format!("{upstream}__{tool}");
                assert!(
                    tools.contains(&name),
                    "{mode:?}: {name} missing in {tools:?}"
                );
            }
        }
        let mut sorted = tools.clone();
        sorted.sort();
        assert_eq!(tools, sorted, "{mode:?}: the merged list is sorted");
        assert_eq!(first_text(ok_result(&report, 1)), "alpha: hi", "{mode:?}");
        assert_eq!(first_text(ok_result(&report, 2)), "beta: hi", "{mode:?}");
        assert_eq!(first_text(ok_result(&report, 3)), "gamma: hi", "{mode:?}");
        assert_eq!(first_text(ok_result(&report, 4)), "42", "{mode:?}");
        let resources = names(ok_result(&report, 5), "resources", "uri");
        for upstream in ["alpha", "beta", "gamma"] {
            assert!(
                resources.contains(&format!("{upstream}+memo://notes/first")),
                "{resources:?}"
            );
        }
        let read = ok_result(&report, 6);
        assert_eq!(read["contents"][0]["uri"], "beta+memo://notes/first");
        assert_eq!(read["contents"][0]["text"], "first note from beta");
        let templates = names(ok_result(&report, 7), "resourceTemplates", "uriTemplate");
        assert!(
            templates.contains(&"gamma+memo://notes/{id}".to_string()),
            "{templates:?}"
        );
        assert_eq!(
            ok_result(&report, 8)["contents"][0]["uri"],
            "gamma+memo://notes/7"
        );
        let prompts = names(ok_result(&report, 9), "prompts", "name");
        assert!(prompts.contains(&"gamma__greet".to_string()), "{prompts:?}");
        let greeting = &ok_result(&report, 10)["messages"][0]["content"]["text"];
        assert!(
            greeting.as_str().unwrap_or("").contains("(from gamma)"),
            "{greeting}"
        );
        // Unknown upstream and unprefixed names are JSON-RPC errors naming the tool.
        for i in [11, 12] {
            let error = report.error(i);
            assert!(
                error["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("unknown tool"),
                "{mode:?} step {i}: {error}"
            );
        }
    }
}

/// Raw JSON-RPC over HTTP to the bridge through Envoy.
struct Raw {
    url: String,
    client: reqwest::Client,
}

impl Raw {
    fn new(stack: &GantryStack) -> Raw {
        Raw {
            url: stack.url("/mcp"),
            client: http(),
        }
    }

    async fn post(
        &self,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.body(body.to_string()).send().await.expect("POST");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let value = if let Some(data) = text.lines().rev().find_map(|l| l.strip_prefix("data: ")) {
            serde_json::from_str(data).unwrap_or(Value::Null)
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, value)
    }

    /// `initialize` with `headers`; the session id.
    async fn initialize(&self, headers: &[(&str, &str)]) -> String {
        let (status, response_headers, body) = self
            .post(
                headers,
                &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["serverInfo"]["name"], "gantry", "{body}");
        response_headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("a session id")
            .to_string()
    }
}

fn list_tools() -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
}

const ALICE: &str = "gk-alice-mcp-test-key";
const BOB: &str = "gk-bob-mcp-test-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_replayed_by_another_principal_gets_404() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let auth_port = free_ports(1)[0];
    let top = format!(
        "auth:\n  listen: 127.0.0.1:{auth_port}\n  api_keys:\n    - {{ name: alice-key, hash: '{}', user: alice }}\n    - {{ name: bob-key, hash: '{}', user: bob }}\n",
        KeyHash::of(ALICE),
        KeyHash::of(BOB)
    );
    let stack = bridge_stack(&http_upstream("alpha", &alpha), "", &top).await;
    let raw = Raw::new(&stack);
    let alice_auth = format!("Bearer {ALICE}");
    let bob_auth = format!("Bearer {BOB}");
    let session = raw.initialize(&[("authorization", &alice_auth)]).await;
    assert!(session.starts_with("g1."), "{session}");
    let alice = [
        ("authorization", alice_auth.as_str()),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, _, body) = raw.post(&alice, &list_tools()).await;
    assert_eq!(status, 200, "{body}");
    assert!(names(&body["result"], "tools", "name").contains(&"alpha__echo".into()));

    // Bob presents Alice's session: 404, as for a session that does not exist.
    let bob = [
        ("authorization", bob_auth.as_str()),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, _, body) = raw.post(&bob, &list_tools()).await;
    assert_eq!(status, 404, "{body}");
    // A forged or tampered id, and no credentials at all.
    let mut tampered = session.clone();
    tampered.replace_range(10..11, if &session[10..11] == "A" { "B" } else { "A" });
    let forged = [
        ("authorization", alice_auth.as_str()),
        ("mcp-session-id", tampered.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    assert_eq!(raw.post(&forged, &list_tools()).await.0, 404);
    let (status, headers, body) = raw.post(&alice[1..], &list_tools()).await;
    assert_eq!(status, 401, "{body}");
    assert!(headers.contains_key("www-authenticate"));
    assert!(
        body["error"]["message"].is_string(),
        "a JSON-RPC error: {body}"
    );
    // A request without a session is told to initialize.
    let (status, _, body) = raw.post(&alice[..1], &list_tools()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Missing session ID"));

    // DELETE ends the session; the id is refused afterwards.
    let deleted = raw
        .client
        .delete(&raw.url)
        .header("authorization", &alice_auth)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    assert_eq!(raw.post(&alice, &list_tools()).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_are_json_rpc_errors_with_the_right_status() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let stack = bridge_stack(
        &http_upstream("alpha", &alpha),
        "  limits: { max_request_bytes: 4096 }\n",
        "",
    )
    .await;
    let raw = Raw::new(&stack);
    let modern_call = |name: &str| {
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": name, "arguments": {"text": "x"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}})
    };
    let modern = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "alpha__echo"),
    ];
    let (status, _, body) = raw.post(&modern, &modern_call("alpha__echo")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(first_text(&body["result"]), "alpha: x");
    assert_eq!(body["result"]["resultType"], "complete");
    assert_eq!(
        body["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "gantry"
    );

    // Mcp-Name that disagrees with the body: 400 -32020 (HeaderMismatch).
    let (status, _, body) = raw.post(&modern, &modern_call("alpha__add")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    // An unknown protocol version: 400 -32022 listing what is supported.
    let (status, _, body) = raw
        .post(&[("mcp-protocol-version", "2030-01-01")], &list_tools())
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32022);
    assert!(body["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));
    // server/discover without client capabilities: 400 -32602.
    let discover = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let (status, _, body) = raw
        .post(
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "server/discover"),
            ],
            &discover,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(-32602)),
        "{body}"
    );
    // Malformed JSON, a batch, an oversize body.
    let response = raw
        .client
        .post(&raw.url)
        .header("content-type", "application/json")
        .body("{\"jsonrpc\": \"2.0\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32700, "{body}");
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, _, body) = raw
        .post(&legacy, &json!([list_tools(), list_tools()]))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("batch"));
    let big = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "alpha__echo", "arguments": {"text": "x".repeat(10_000)}}});
    let (status, _, body) = raw.post(&legacy, &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("4096-byte limit"));
    // DNS rebinding: a foreign Origin or Host is refused with 403.
    let (status, _, body) = raw
        .post(&[("origin", "http://evil.example")], &list_tools())
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = raw.post(&[("host", "evil.example")], &list_tools()).await;
    assert_eq!(status, 403);
    let local_origin = format!("http://{}", stack.listen);
    let (status, _, body) = raw
        .post(
            &[("origin", &local_origin), legacy[0], legacy[1]],
            &list_tools(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The gateway kept serving throughout.
    let (status, _, body) = raw.post(&modern, &modern_call("alpha__echo")).await;
    assert_eq!(
        (status, first_text(&body["result"])),
        (200, "alpha: x".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_fails_alone_and_its_session_heals_after_restart() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let mut beta = FixtureServer::start("beta", FixtureOptions::default());
    let upstreams = http_upstream("alpha", &alpha) + &http_upstream("beta", &beta);
    let stack = bridge_stack(&upstreams, "", "").await;
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = |tool: &str| {
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": tool, "arguments": {"text": "ping"}}})
    };
    let (_, _, body) = raw.post(&legacy, &call("beta__echo")).await;
    assert_eq!(first_text(&body["result"]), "beta: ping", "{body}");

    beta.kill();
    let (status, _, body) = raw.post(&legacy, &list_tools()).await;
    assert_eq!(status, 200, "{body}");
    let tools = names(&body["result"], "tools", "name");
    assert!(tools.contains(&"alpha__echo".into()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("beta__")), "{tools:?}");
    let missing = &body["result"]["_meta"]["gantry/unavailableUpstreams"];
    assert_eq!(missing[0]["upstream"], "beta", "{body}");
    let (_, _, body) = raw.post(&legacy, &call("beta__echo")).await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("upstream 'beta'"), "{body}");
    let (_, _, body) = raw.post(&legacy, &call("alpha__echo")).await;
    assert_eq!(first_text(&body["result"]), "alpha: ping", "{body}");

    // Restarted, beta has forgotten its sessions: the bridge re-initializes it transparently.
    beta.restart();
    let (_, _, body) = raw.post(&legacy, &call("beta__echo")).await;
    assert_eq!(
        first_text(&body["result"]),
        "beta: ping",
        "{body}\n{}",
        stack.process.logs()
    );
    assert!(stack.process.logs().contains("re-initializing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_tools_are_withheld_and_a_rug_pull_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let rug = dir.path().join("rug-pull");
    let alpha = FixtureServer::start(
        "alpha",
        FixtureOptions {
            poisoned: true,
            rug_pull_file: Some(rug.clone()),
            ..FixtureOptions::default()
        },
    );
    let metrics_port = free_ports(1)[0];
    let top = format!("metrics:\n  listen: 127.0.0.1:{metrics_port}\n");
    let stack = bridge_stack(&http_upstream("alpha", &alpha), "", &top).await;
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "alpha__send_note", "args": {"note": "x"}},
        {"op": "call_tool", "name": "alpha__weather", "args": {"city": "Oslo"}},
    ]);
    let report = client(
        stack.url("/mcp"),
        ClientMode::Legacy,
        vec![],
        None,
        steps.clone(),
    )
    .await;
    let tools = names(ok_result(&report, 0), "tools", "name");
    assert!(tools.contains(&"alpha__weather".into()), "{tools:?}");
    assert!(!tools.contains(&"alpha__send_note".into()), "{tools:?}");
    let refused = report.error(1);
    assert!(
        refused["message"].as_str().unwrap().contains("withheld"),
        "{refused}"
    );
    assert!(ok_result(&report, 2)["content"][0]["text"].is_string());
    assert!(stack
        .process
        .logs()
        .contains("MCP definition flagged by the scanner"));

    // The description changes behind the pin: the tool disappears and calls are refused.
    std::fs::write(&rug, "on").unwrap();
    let report = client(
        stack.url("/mcp"),
        ClientMode::V2026_07_28,
        vec![],
        None,
        steps,
    )
    .await;
    let tools = names(ok_result(&report, 0), "tools", "name");
    assert!(!tools.contains(&"alpha__weather".into()), "{tools:?}");
    let refused = report.error(2);
    assert!(
        refused["message"].as_str().unwrap().contains("changed"),
        "{refused}"
    );
    assert!(stack.process.logs().contains("changed since it was pinned"));
    // Every verdict is counted.
    let metrics = crate::scrape_metrics(metrics_port).await;
    for series in [
        "gantry_mcp_definition_verdicts_total{defence=\"scan\",outcome=\"blocked\"}",
        "gantry_mcp_definition_verdicts_total{defence=\"drift\",outcome=\"blocked\"}",
        "gantry_mcp_definition_verdicts_total{defence=\"pin\",outcome=\"first_seen\"}",
    ] {
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"));
        assert!(count > 0, "{series} {count}");
    }
    // Changed back, it is served again.
    std::fs::remove_file(&rug).unwrap();
    let report = client(
        stack.url("/mcp"),
        ClientMode::Legacy,
        vec![],
        None,
        json!([{"op": "list_tools"}]),
    )
    .await;
    assert!(names(ok_result(&report, 0), "tools", "name").contains(&"alpha__weather".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curation_rules_and_virtual_servers_shape_what_callers_see() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let beta = FixtureServer::start("beta", FixtureOptions::default());
    let auth_port = free_ports(1)[0];
    let top = format!(
        "auth:\n  listen: 127.0.0.1:{auth_port}\n  api_keys:\n    - {{ name: alice-key, hash: '{}', user: alice, team: ops }}\n    - {{ name: bob-key, hash: '{}', user: bob, team: guests }}\n",
        KeyHash::of(ALICE),
        KeyHash::of(BOB)
    );
    let upstreams = format!(
        "    - name: alpha\n      url: '{}'\n      tools: {{ exclude: [slow], rename: {{ echo: say }}, descriptions: {{ add: Sums two integers. }} }}\n{}",
        alpha.url,
        http_upstream("beta", &beta)
    );
    let extra = "  rules:\n    - { name: guests-no-beta, action: deny, when: 'principal.team == \"guests\" && mcp.upstream == \"beta\"' }\n    - { name: small-sums, action: deny, when: 'mcp.upstream_name == \"add\" && has(mcp.arguments.a) && mcp.arguments.a > 100' }\n    - { name: everyone, action: allow, when: 'true' }\n  virtual_servers:\n    - { name: sums, tools: ['*__add'] }\n";
    let stack = bridge_stack(&upstreams, extra, &top).await;
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "alpha__say", "args": {"text": "hi"}},
        {"op": "call_tool", "name": "alpha__echo", "args": {"text": "hi"}},
        {"op": "call_tool", "name": "alpha__slow", "args": {"seconds": 0}},
        {"op": "call_tool", "name": "beta__echo", "args": {"text": "hi"}},
        {"op": "call_tool", "name": "alpha__add", "args": {"a": 500, "b": 1}},
    ]);
    let as_user = |key: &str| vec![("authorization".to_string(), format!("Bearer {key}"))];
    let alice = client(
        stack.url("/mcp"),
        ClientMode::Legacy,
        as_user(ALICE),
        None,
        steps.clone(),
    )
    .await;
    let tools = names(ok_result(&alice, 0), "tools", "name");
    assert!(
        tools.contains(&"alpha__say".into()) && !tools.contains(&"alpha__echo".into()),
        "{tools:?}"
    );
    assert!(!tools.contains(&"alpha__slow".into()), "{tools:?}");
    assert!(tools.contains(&"beta__echo".into()), "{tools:?}");
    let add = ok_result(&alice, 0)["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "alpha__add")
        .cloned()
        .unwrap();
    assert_eq!(add["description"], "Sums two integers.");
    assert_eq!(first_text(ok_result(&alice, 1)), "alpha: hi");
    assert!(alice.error(2)["message"]
        .as_str()
        .unwrap()
        .contains("unknown tool"));
    assert!(alice.error(3)["message"]
        .as_str()
        .unwrap()
        .contains("unknown tool"));
    assert_eq!(first_text(ok_result(&alice, 4)), "beta: hi");
    let denied = alice.error(5);
    assert_eq!(denied["code"], -32003, "{denied}");
    assert!(
        denied["message"].as_str().unwrap().contains("small-sums"),
        "{denied}"
    );

    let bob = client(
        stack.url("/mcp"),
        ClientMode::V2026_07_28,
        as_user(BOB),
        None,
        steps,
    )
    .await;
    let tools = names(ok_result(&bob, 0), "tools", "name");
    assert!(!tools.iter().any(|t| t.starts_with("beta__")), "{tools:?}");
    assert!(bob.error(4)["message"]
        .as_str()
        .unwrap()
        .contains("guests-no-beta"));

    let sums = client(
        stack.url("/mcp/sums"),
        ClientMode::Legacy,
        as_user(ALICE),
        None,
        json!([{"op": "list_tools"}, {"op": "call_tool", "name": "alpha__say", "args": {"text": "x"}}]),
    )
    .await;
    assert_eq!(
        names(ok_result(&sums, 0), "tools", "name"),
        vec!["alpha__add".to_string(), "beta__add".to_string()]
    );
    assert!(sums.error(1)["message"]
        .as_str()
        .unwrap()
        .contains("unknown tool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elicitation_round_trips_through_the_bridge_in_both_eras() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let stack = bridge_stack(&http_upstream("alpha", &alpha), "", "").await;
    let steps =
        json!([{"op": "call_tool", "name": "alpha__ask_user", "args": {"question": "colour?"}}]);
    for mode in [ClientMode::Legacy, ClientMode::V2026_07_28] {
        let report = client(
            stack.url("/mcp"),
            mode,
            vec![],
            Some(json!({"answer": "teal"})),
            steps.clone(),
        )
        .await;
        let text = first_text(ok_result(&report, 0));
        assert!(
            text.contains("teal"),
            "{mode:?}: {text}\n{}",
            report.context()
        );
        assert_eq!(
            report.elicitations().len(),
            1,
            "{mode:?}\n{}",
            report.context()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_times_out_alone() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let beta = FixtureServer::start("beta", FixtureOptions::default());
    let upstreams = http_upstream("alpha", &alpha)
        + &format!(
            "    - {{ name: beta, url: '{}', timeout_ms: 1000 }}\n",
            beta.url
        );
    let stack = bridge_stack(&upstreams, "", "").await;
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let slow = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                      "params": {"name": "beta__slow", "arguments": {"seconds": 5}}});
    let (status, _, body) = raw.post(&legacy, &slow).await;
    assert_eq!(status, 200);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("upstream 'beta'") && message.contains("timeout"),
        "{body}"
    );
    let echo = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                      "params": {"name": "alpha__echo", "arguments": {"text": "still here"}}});
    let (_, _, body) = raw.post(&legacy, &echo).await;
    assert_eq!(first_text(&body["result"]), "alpha: still here");
}

/// Reads SSE events from `response` until one satisfies `matches`, within `deadline`.
async fn wait_for_event(
    response: reqwest::Response,
    deadline: std::time::Duration,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let found = tokio::time::timeout(deadline, async {
        use futures::StreamExt;
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        if let Ok(message) = serde_json::from_str::<Value>(data) {
                            if matches(&message) {
                                return Some(message);
                            }
                        }
                    }
                }
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(message)) => message,
        Ok(None) => panic!("the stream ended without the expected event; last data: {buffer}"),
        Err(_) => panic!("no expected event within {deadline:?}; last data: {buffer}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_stream_merges_upstream_notifications() {
    let everything = gantry_testkit::mcp_peers::everything(
        gantry_testkit::mcp_peers::Everything::StreamableHttp,
    );
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let upstreams = http_upstream("ev", &everything) + &http_upstream("alpha", &alpha);
    let stack = bridge_stack(&upstreams, "", "").await;
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (_, _, body) = raw
        .post(
            &legacy,
            &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                    "params": {"name": "ev__toggle-simulated-logging", "arguments": {}}}),
        )
        .await;
    assert!(first_text(&body["result"]).contains("Started"), "{body}");
    let stream = raw
        .client
        .get(&raw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status().as_u16(), 200);
    // server-everything logs every few seconds on its session stream; the bridge names the
    // upstream in the logger.
    let message = wait_for_event(stream, std::time::Duration::from_secs(30), |m| {
        m["method"] == "notifications/message"
    })
    .await;
    assert_eq!(message["params"]["logger"], "ev", "{message}");
    // A stateless client has no GET stream: 405.
    let status = raw
        .client
        .get(&raw.url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_listen_fans_out_and_acknowledges_once() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let beta = FixtureServer::start("beta", FixtureOptions::default());
    let upstreams = http_upstream("alpha", &alpha) + &http_upstream("beta", &beta);
    let stack = bridge_stack(&upstreams, "", "").await;
    let response = http()
        .post(stack.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(
            json!({"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen", "params": {
                "notifications": {"toolsListChanged": true, "promptsListChanged": true},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                          "io.modelcontextprotocol/clientCapabilities": {}}}})
            .to_string(),
        )
        .send()
        .await
        .expect("listen");
    assert_eq!(response.status().as_u16(), 200);
    let ack = wait_for_event(response, std::time::Duration::from_secs(15), |m| {
        m["method"]
            .as_str()
            .is_some_and(|m| m.starts_with("notifications/"))
    })
    .await;
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"]["toolsListChanged"], true,
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "sub-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_upstream_that_dies_is_restarted() {
    // A name no other test uses, so that only this child is killed.
    let name = format!("stdio{}", std::process::id());
    let stack = bridge_stack(&stdio_upstream(&name), "", "").await;
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": format!("{name}__echo"), "arguments": {"text": "hi"}}});
    let (_, _, body) = raw.post(&legacy, &call).await;
    assert_eq!(first_text(&body["result"]), format!("{name}: hi"), "{body}");

    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("fixture_server.py --name {name} ")])
        .status()
        .expect("pkill");
    assert!(killed.success(), "the stdio child was not found");
    // The supervisor notices, and starts it again after a short backoff.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, _, body) = raw.post(&legacy, &call).await;
        if first_text(&body["result"]) == format!("{name}: hi") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stdio upstream did not come back: {body}\n{}",
            stack.process.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(stack
        .process
        .logs()
        .contains("MCP upstream connection lost; reconnecting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lists_on_one_session_are_all_complete() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let beta = FixtureServer::start("beta", FixtureOptions::default());
    let upstreams = http_upstream("alpha", &alpha) + &http_upstream("beta", &beta);
    let stack = bridge_stack(&upstreams, "", "").await;
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let lists = (0..4).map(|i| {
        let raw = &raw;
        async move {
            let request = json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/list"});
            raw.post(&legacy, &request).await
        }
    });
    for (status, _, body) in futures::future::join_all(lists).await {
        assert_eq!(status, 200, "{body}");
        assert!(
            body["result"]["_meta"].is_null(),
            "an upstream was missing: {body}"
        );
        let tools = names(&body["result"], "tools", "name");
        assert!(
            tools.contains(&"alpha__echo".to_string()) && tools.contains(&"beta__echo".to_string()),
            "{tools:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_through_and_completions_are_routed() {
    let everything = gantry_testkit::mcp_peers::everything(
        gantry_testkit::mcp_peers::Everything::StreamableHttp,
    );
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let upstreams = http_upstream("ev", &everything) + &http_upstream("alpha", &alpha);
    let stack = bridge_stack(&upstreams, "", "").await;
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    // A long-running tool's progress notifications reach the client on the call's stream,
    // before the result, with the client's own progress token.
    let response = raw
        .client
        .post(&raw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                "name": "ev__trigger-long-running-operation",
                "arguments": {"duration": 1, "steps": 2},
                "_meta": {"progressToken": "p-1"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.unwrap();
    let messages: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let progress: Vec<&Value> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert!(!progress.is_empty(), "{text}");
    assert!(
        progress
            .iter()
            .all(|m| m["params"]["progressToken"] == "p-1"),
        "{text}"
    );
    let last = messages.last().expect("a response");
    assert_eq!(last["id"], 7, "{text}");
    assert!(last["result"]["content"].is_array(), "{text}");

    // completion/complete goes to the prompt's upstream, with the upstream's own name.
    let report = client(
        stack.url("/mcp"),
        ClientMode::Legacy,
        vec![],
        None,
        json!([{"op": "complete", "ref": {"type": "ref/prompt", "name": "alpha__greet"},
                "argument": {"name": "name", "value": "al"}}]),
    )
    .await;
    let values = &ok_result(&report, 0)["completion"]["values"];
    assert!(
        values
            .as_array()
            .is_some_and(|v| v.contains(&json!("alice"))),
        "{}",
        report.context()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_get_their_own_credentials_never_the_callers() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let auth_port = free_ports(1)[0];
    let top = format!(
        "auth:\n  listen: 127.0.0.1:{auth_port}\n  api_keys:\n    - {{ name: alice-key, hash: '{}', user: alice }}\n",
        KeyHash::of(ALICE)
    );
    let upstreams = format!(
        "    - name: alpha\n      url: '{}'\n      headers:\n        - {{ name: Authorization, value_env: GANTRY_TEST_ALPHA_TOKEN, prefix: 'Bearer ' }}\n        - {{ name: X-Tenant, value: blue }}\n",
        alpha.url
    );
    let stack = bridge_stack_with_env(
        &upstreams,
        "",
        &top,
        vec![("GANTRY_TEST_ALPHA_TOKEN", "upstream-secret")],
    )
    .await;
    let report = client(
        stack.url("/mcp"),
        ClientMode::Auto,
        vec![("authorization".into(), format!("Bearer {ALICE}"))],
        None,
        json!([{"op": "call_tool", "name": "alpha__whoami", "args": {}}]),
    )
    .await;
    let seen: Value =
        serde_json::from_str(&first_text(ok_result(&report, 0))).expect("whoami JSON");
    assert_eq!(seen["authorization"], "Bearer upstream-secret", "{seen}");
    assert_eq!(seen["x-tenant"], "blue", "{seen}");
    assert!(
        !seen.to_string().contains(ALICE),
        "the caller's key reached the upstream: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rug_pull_while_gantry_was_down_is_caught_from_the_pin_file() {
    let dir = tempfile::tempdir().unwrap();
    let rug = dir.path().join("rug-pull");
    let pins = dir.path().join("pins").join("mcp-pins.json");
    let alpha = FixtureServer::start(
        "alpha",
        FixtureOptions {
            rug_pull_file: Some(rug.clone()),
            ..FixtureOptions::default()
        },
    );
    let extra = format!("  definitions: {{ pin_file: '{}' }}\n", pins.display());
    let list = json!([{"op": "list_tools"}]);
    {
        let stack = bridge_stack(&http_upstream("alpha", &alpha), &extra, "").await;
        let report = client(
            stack.url("/mcp"),
            ClientMode::Legacy,
            vec![],
            None,
            list.clone(),
        )
        .await;
        assert!(names(ok_result(&report, 0), "tools", "name").contains(&"alpha__weather".into()));
        gantry_testkit::wait_for(
            "the pin file to hold weather's pin",
            std::time::Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&pins).ok()?;
                let file: Value = serde_json::from_str(&text).ok()?;
                file["pins"]["alpha"]["weather"]
                    .as_str()
                    .map(str::to_string)
            },
        );
    }
    // The definition changes while no Gantry runs; the next one still knows the old pin.
    std::fs::write(&rug, "on").unwrap();
    let stack = bridge_stack(&http_upstream("alpha", &alpha), &extra, "").await;
    let report = client(stack.url("/mcp"), ClientMode::Legacy, vec![], None, list).await;
    let tools = names(ok_result(&report, 0), "tools", "name");
    assert!(!tools.contains(&"alpha__weather".into()), "{tools:?}");
    assert!(tools.contains(&"alpha__echo".into()), "{tools:?}");
    assert!(stack.process.logs().contains("changed since it was pinned"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_every_upstream_is_collected_and_a_closed_upstream_fails_the_list() {
    let paged = FixtureServer::start(
        "paged",
        FixtureOptions {
            extra_tools: 25,
            page_size: 10,
            ..FixtureOptions::default()
        },
    );
    let mut strict = FixtureServer::start("strict", FixtureOptions::default());
    let upstreams = http_upstream("paged", &paged)
        + &format!(
            "    - {{ name: strict, url: '{}', timeout_ms: 3000, failure_mode: closed }}\n",
            strict.url
        );
    let stack = bridge_stack(&upstreams, "", "").await;
    let report = client(
        stack.url("/mcp"),
        ClientMode::V2026_07_28,
        vec![],
        None,
        json!([{"op": "list_tools"}]),
    )
    .await;
    let list = ok_result(&report, 0);
    assert!(list.get("nextCursor").is_none(), "{list}");
    let tools = names(list, "tools", "name");
    let paged_tools: Vec<&String> = tools.iter().filter(|t| t.starts_with("paged__")).collect();
    // 6 fixture tools and 25 extra ones, over four upstream pages.
    assert_eq!(paged_tools.len(), 31, "{tools:?}");
    assert!(tools.contains(&"paged__t0024".to_string()), "{tools:?}");
    assert!(tools.contains(&"strict__echo".to_string()), "{tools:?}");

    // `failure_mode: closed`: without that upstream the list fails as a whole, naming it.
    strict.kill();
    let report = client(
        stack.url("/mcp"),
        ClientMode::Legacy,
        vec![],
        None,
        json!([{"op": "list_tools"}]),
    )
    .await;
    let error = report.error(0);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("upstream 'strict'"),
        "{error}"
    );
    // Calls to the other upstream still work (raw: the SDK client lists before it calls).
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    let (_, _, body) = raw
        .post(
            &[
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                    "params": {"name": "paged__echo", "arguments": {"text": "x"}}}),
        )
        .await;
    assert_eq!(first_text(&body["result"]), "paged: x", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_the_upstream_in_both_eras() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let stack = bridge_stack(&http_upstream("alpha", &alpha), "", "").await;
    let raw = Raw::new(&stack);
    let slow = |seconds: u64| {
        json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call",
               "params": {"name": "alpha__slow", "arguments": {"seconds": seconds}}})
    };
    // Handshake era: the client sends notifications/cancelled for its request id.
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let pending = {
        let client = raw.client.clone();
        let url = raw.url.clone();
        let session = session.clone();
        let body = slow(20).to_string();
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25")
                .body(body)
                .send()
                .await
        })
    };
    gantry_testkit::wait_for(
        "the slow call to start upstream",
        std::time::Duration::from_secs(10),
        || alpha.logs().contains("slow(20.0) started").then_some(()),
    );
    let (status, _, _) = raw
        .post(
            &legacy,
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": 41, "reason": "test"}}),
        )
        .await;
    assert_eq!(status, 202);
    gantry_testkit::wait_for(
        "the upstream to see the cancellation",
        std::time::Duration::from_secs(10),
        || {
            alpha
                .logs()
                .contains("slow(20.0) was cancelled")
                .then_some(())
        },
    );
    pending.abort();

    // 2026-07-28: closing the response stream cancels.
    let modern = raw.client.clone();
    let url = raw.url.clone();
    let mut call = slow(30);
    call["params"]["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                     "io.modelcontextprotocol/clientCapabilities": {}});
    let request = tokio::spawn(async move {
        modern
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "alpha__slow")
            .body(call.to_string())
            .send()
            .await
    });
    gantry_testkit::wait_for(
        "the second slow call to start upstream",
        std::time::Duration::from_secs(10),
        || alpha.logs().contains("slow(30.0) started").then_some(()),
    );
    request.abort();
    gantry_testkit::wait_for(
        "the upstream to see the stream close",
        std::time::Duration::from_secs(15),
        || {
            alpha
                .logs()
                .contains("slow(30.0) was cancelled")
                .then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_does_not_hold_up_initialize() {
    let alpha = FixtureServer::start("alpha", FixtureOptions::default());
    let beta = FixtureServer::start("beta", FixtureOptions::default());
    // beta may take a minute per call: longer than the client waits for initialize (30 s).
    let upstreams = http_upstream("alpha", &alpha)
        + &format!(
            "    - {{ name: beta, url: '{}', timeout_ms: 60000 }}\n",
            beta.url
        );
    let stack = bridge_stack(&upstreams, "", "").await;
    let beta_pid = beta.pid().expect("beta runs") as i32;
    // Stopped, beta's kernel still accepts connections but nothing answers.
    // SAFETY: plain syscalls on our own child's process group.
    unsafe { libc::kill(-beta_pid, libc::SIGSTOP) };
    let raw = Raw::new(&stack);
    let session = raw.initialize(&[]).await;
    let legacy = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = |tool: &str| {
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": tool, "arguments": {"text": "hi"}}})
    };
    let (_, _, body) = raw.post(&legacy, &call("alpha__echo")).await;
    assert_eq!(first_text(&body["result"]), "alpha: hi", "{body}");
    // Resumed, beta is opened on first use.
    unsafe { libc::kill(-beta_pid, libc::SIGCONT) };
    let (_, _, body) = raw.post(&legacy, &call("beta__echo")).await;
    assert_eq!(first_text(&body["result"]), "beta: hi", "{body}");
}
