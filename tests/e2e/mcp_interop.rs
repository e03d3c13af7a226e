//! MCP interop through the bridge behind real Envoy: a legacy-only upstream (npm
//! server-everything, over streamable HTTP, HTTP+SSE and stdio) next to the dual-era fixture
//! server, reached by the clients people actually use: the mcp Python SDK (both eras), the npm
//! MCP Inspector's CLI (legacy handshake) and the Rust SDK rmcp (both eras).

use gantry_testkit::mcp_peers::{
    everything, everything_stdio_command, inspector_cli, python_client, ClientMode, ClientReport,
    Everything, FixtureOptions, FixtureServer, McpPeer,
};
use gantry_testkit::{free_ports, GantryStack, StackPorts};
use serde_json::{json, Value};

use crate::start_stack;

/// A stack whose `mcp` section has the given `upstreams` entries (YAML list items).
async fn interop_stack(upstreams: &str) -> GantryStack {
    let ports = StackPorts::free();
    let mcp_port = free_ports(1)[0];
    let yaml = format!(
        "{head}mcp:\n  listen: 127.0.0.1:{mcp_port}\n  upstreams:\n{upstreams}",
        head = ports.config_head(),
    );
    start_stack(
        ports,
        yaml,
        vec![("GANTRY_MCP_SESSION_SECRET", "interop-test-secret")],
    )
    .await
}

/// A streamable HTTP upstream entry.
fn http_entry(name: &str, peer: &McpPeer) -> String {
    format!(
        "    - {{ name: {name}, url: '{}', timeout_ms: 10000 }}\n",
        peer.url
    )
}

/// An HTTP+SSE upstream entry (`peer.url` ends in `/sse`).
fn sse_entry(name: &str, peer: &McpPeer) -> String {
    format!(
        "    - {{ name: {name}, url: '{}', transport: sse, timeout_ms: 10000 }}\n",
        peer.url
    )
}

/// server-everything as a stdio child of the bridge.
fn everything_stdio_entry(name: &str) -> String {
    let (program, args) = everything_stdio_command();
    let mut command = vec![program.display().to_string()];
    command.extend(args);
    format!(
        "    - {{ name: {name}, command: {}, timeout_ms: 20000 }}\n",
        serde_json::to_string(&command).expect("command as JSON")
    )
}

/// server-everything (streamable HTTP, legacy only) as `everything` and the dual-era fixture
/// server as `fixture`, behind one endpoint.
async fn legacy_and_modern() -> (McpPeer, McpPeer, GantryStack) {
    let legacy = everything(Everything::StreamableHttp);
    let modern = FixtureServer::start("fixture", FixtureOptions::default());
    let stack =
        interop_stack(&(http_entry("everything", &legacy) + &http_entry("fixture", &modern))).await;
    (legacy, modern, stack)
}

/// Runs the Python SDK client off the async runtime.
async fn py_client(
    url: String,
    mode: ClientMode,
    elicitation: Option<Value>,
    steps: Value,
) -> ClientReport {
    tokio::task::spawn_blocking(move || python_client(&url, mode, &[], elicitation, steps))
        .await
        .expect("python client task")
}

/// Runs the inspector CLI off the async runtime; its JSON output.
async fn inspector(args: Vec<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        inspector_cli(&args)
    })
    .await
    .expect("inspector task")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The values of `field` in the array `list[key]`.
fn field_values(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {list}"))
        .iter()
        .filter_map(|item| item[field].as_str().map(str::to_string))
        .collect()
}

/// All text blocks of a `tools/call` result, joined with newlines.
fn result_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content in {result}"))
        .iter()
        .filter_map(|block| block["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_contains_all(haystack: &[String], needles: &[&str], what: &str) {
    for needle in needles {
        assert!(
            haystack.iter().any(|h| h == needle),
            "{what}: {needle} missing in {haystack:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_and_a_modern_upstream_serve_python_clients_of_both_eras() {
    let (_legacy, _modern, stack) = legacy_and_modern().await;
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "everything__echo", "args": {"message": "hi"}},
        {"op": "call_tool", "name": "everything__get-sum", "args": {"a": 2, "b": 40}},
        {"op": "call_tool", "name": "fixture__add", "args": {"a": 2, "b": 40}},
        {"op": "call_tool", "name": "fixture__echo", "args": {"text": "hi"}},
        {"op": "list_resources"},
        {"op": "read_resource", "uri": "everything+demo://resource/dynamic/text/1"},
        {"op": "read_resource", "uri": "fixture+memo://notes/first"},
        {"op": "list_prompts"},
    ]);
    for (mode, version) in [
        (ClientMode::Auto, "2026-07-28"),
        (ClientMode::Legacy, "2025-11-25"),
    ] {
        let report = py_client(stack.url("/mcp"), mode, None, steps.clone()).await;
        let context = format!("{mode:?}\n{}", report.context());
        assert!(report.connect_error().is_none(), "{context}");
        assert!(report.session_error().is_none(), "{context}");
        assert_eq!(report.protocol_version(), version, "{context}");
        assert_eq!(report.server_name(), Some("gantry"), "{context}");
        // Only the handshake era has a (sealed) session id; 2026 is stateless.
        match mode {
            ClientMode::Legacy => assert!(
                report.session_id().is_some_and(|id| id.starts_with("g1.")),
                "{context}"
            ),
            _ => assert_eq!(report.session_id(), None, "{context}"),
        }

        let tools = report.tool_names(0);
        assert_contains_all(
            &tools,
            &[
                "everything__echo",
                "everything__get-sum",
                "everything__get-structured-content",
                "fixture__add",
                "fixture__echo",
            ],
            &context,
        );
        assert_eq!(report.text(1), "Echo: hi", "{context}");
        assert_eq!(report.text(2), "The sum of 2 and 40 is 42.", "{context}");
        assert_eq!(report.text(3), "42", "{context}");
        assert_eq!(report.text(4), "fixture: hi", "{context}");

        let resources = field_values(report.result(5), "resources", "uri");
        assert!(
            resources
                .iter()
                .any(|uri| uri.starts_with("everything+demo://resource/static/document/")),
            "{resources:?}\n{context}"
        );
        assert!(
            resources.contains(&"fixture+memo://notes/first".to_string()),
            "{resources:?}\n{context}"
        );
        let read = &report.result(6)["contents"][0];
        assert_eq!(
            read["uri"], "everything+demo://resource/dynamic/text/1",
            "{context}"
        );
        assert!(
            read["text"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Resource 1: This is a plaintext resource"),
            "{context}"
        );
        let read = &report.result(7)["contents"][0];
        assert_eq!(read["uri"], "fixture+memo://notes/first", "{context}");
        assert_eq!(read["text"], "first note from fixture", "{context}");

        let prompts = field_values(report.result(8), "prompts", "name");
        assert_contains_all(
            &prompts,
            &["everything__simple-prompt", "fixture__greet"],
            &context,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_http_sse_and_stdio_is_federated() {
    let sse = everything(Everything::Sse);
    assert!(sse.url.ends_with("/sse"), "{}", sse.url);
    let stack = interop_stack(&(sse_entry("sse", &sse) + &everything_stdio_entry("stdio"))).await;
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "sse__echo", "args": {"message": "over sse"}},
        {"op": "call_tool", "name": "stdio__echo", "args": {"message": "over stdio"}},
        {"op": "call_tool", "name": "sse__get-sum", "args": {"a": 1, "b": 2}},
        {"op": "call_tool", "name": "stdio__get-sum", "args": {"a": 3, "b": 4}},
        {"op": "read_resource", "uri": "sse+demo://resource/dynamic/text/2"},
        {"op": "read_resource", "uri": "stdio+demo://resource/dynamic/text/3"},
    ]);
    for mode in [ClientMode::Legacy, ClientMode::Auto] {
        let report = py_client(stack.url("/mcp"), mode, None, steps.clone()).await;
        let context = format!(
            "{mode:?}\n{}\n--- gantry ---\n{}\n--- server-everything (sse) ---\n{}",
            report.context(),
            stack.process.logs(),
            sse.logs()
        );
        assert!(report.connect_error().is_none(), "{context}");
        let tools = report.tool_names(0);
        assert_contains_all(
            &tools,
            &["sse__echo", "sse__get-sum", "stdio__echo", "stdio__get-sum"],
            &context,
        );
        assert_eq!(report.text(1), "Echo: over sse", "{context}");
        assert_eq!(report.text(2), "Echo: over stdio", "{context}");
        assert_eq!(report.text(3), "The sum of 1 and 2 is 3.", "{context}");
        assert_eq!(report.text(4), "The sum of 3 and 4 is 7.", "{context}");
        for (i, uri, id) in [
            (5, "sse+demo://resource/dynamic/text/2", 2),
            (6, "stdio+demo://resource/dynamic/text/3", 3),
        ] {
            let read = &report.result(i)["contents"][0];
            assert_eq!(read["uri"], uri, "{context}");
            assert!(
                read["text"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&format!("Resource {id}: ")),
                "{context}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_cli_lists_calls_reads_and_gets_prompts_through_the_bridge() {
    let (_legacy, _modern, stack) = legacy_and_modern().await;
    let url = stack.url("/mcp");

    let listed = inspector(strings(&[&url, "--method", "tools/list"])).await;
    let tools = field_values(&listed, "tools", "name");
    assert_contains_all(
        &tools,
        &["everything__echo", "everything__get-sum", "fixture__add"],
        "inspector tools/list",
    );

    let called = inspector(strings(&[
        &url,
        "--method",
        "tools/call",
        "--tool-name",
        "everything__get-sum",
        "--tool-arg",
        "a=2",
        "b=40",
    ]))
    .await;
    assert_eq!(
        result_text(&called),
        "The sum of 2 and 40 is 42.",
        "{called}"
    );
    let called = inspector(strings(&[
        &url,
        "--method",
        "tools/call",
        "--tool-name",
        "fixture__add",
        "--tool-arg",
        "a=2",
        "b=40",
    ]))
    .await;
    assert_eq!(called["structuredContent"]["result"], 42, "{called}");
    let called = inspector(strings(&[
        &url,
        "--method",
        "tools/call",
        "--tool-name",
        "everything__echo",
        "--tool-arg",
        "message=from the inspector",
    ]))
    .await;
    assert_eq!(result_text(&called), "Echo: from the inspector", "{called}");

    let read = inspector(strings(&[
        &url,
        "--method",
        "resources/read",
        "--uri",
        "fixture+memo://notes/first",
    ]))
    .await;
    assert_eq!(read["contents"][0]["uri"], "fixture+memo://notes/first");
    assert_eq!(
        read["contents"][0]["text"], "first note from fixture",
        "{read}"
    );
    let read = inspector(strings(&[
        &url,
        "--method",
        "resources/read",
        "--uri",
        "everything+demo://resource/dynamic/text/5",
    ]))
    .await;
    assert_eq!(
        read["contents"][0]["uri"],
        "everything+demo://resource/dynamic/text/5"
    );
    assert!(
        read["contents"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Resource 5: "),
        "{read}"
    );

    let prompt = inspector(strings(&[
        &url,
        "--method",
        "prompts/get",
        "--prompt-name",
        "everything__args-prompt",
        "--prompt-args",
        "city=Oslo",
    ]))
    .await;
    assert_eq!(
        prompt["messages"][0]["content"]["text"], "What's weather in Oslo?",
        "{prompt}"
    );
    let prompt = inspector(strings(&[
        &url,
        "--method",
        "prompts/get",
        "--prompt-name",
        "fixture__greet",
        "--prompt-args",
        "name=bob",
    ]))
    .await;
    let greeting = prompt["messages"][0]["content"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(greeting.contains("(from fixture)"), "{prompt}");
}

/// The rmcp client: a running service, how it negotiated, and its tools.
mod rust_sdk {
    use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
    use rmcp::service::RunningService;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
    use serde_json::{json, Value};

    pub type Client = RunningService<RoleClient, ClientConfig>;

    /// A client that identifies itself as `gantry-rmcp-test`, advertising `version` (used by
    /// `initialize`; discovery sends its own preferred versions).
    fn config(version: ProtocolVersion) -> ClientConfig {
        let mut config = ClientConfig::default();
        config.protocol_version = version;
        config.client_info.name = "gantry-rmcp-test".into();
        config
    }

    /// rmcp's `Auto` lifecycle: `server/discover` preferring 2026-07-28, else `initialize`.
    pub async fn connect_auto(url: &str) -> Client {
        config(ProtocolVersion::LATEST_WITH_INITIALIZE)
            .serve_with_lifecycle(
                StreamableHttpClientTransport::from_uri(url.to_string()),
                ClientLifecycleMode::Auto {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    legacy_version: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("rmcp Auto lifecycle against {url}: {e}"))
    }

    /// The handshake era: `initialize` advertising `version`. rmcp's own default
    /// (`ClientConfig::default()`, what `().serve(transport)` sends) advertises 2026-07-28, which
    /// has no handshake: the bridge answers with its newest handshake version instead.
    pub async fn connect_initialize(url: &str, version: ProtocolVersion) -> Client {
        config(version)
            .serve(StreamableHttpClientTransport::from_uri(url.to_string()))
            .await
            .unwrap_or_else(|e| panic!("rmcp initialize against {url}: {e}"))
    }

    /// The negotiated protocol version and the server's name.
    pub fn negotiated(client: &Client) -> (String, Option<String>) {
        let info = client.peer_info().expect("peer info after connecting");
        (
            info.protocol_version.to_string(),
            info.server_info.as_ref().map(|i| i.name.clone()),
        )
    }

    pub async fn tool_names(client: &Client) -> Vec<String> {
        client
            .list_all_tools()
            .await
            .expect("tools/list")
            .into_iter()
            .map(|tool| tool.name.to_string())
            .collect()
    }

    /// Calls `name` with `args` (a JSON object); the result as JSON.
    pub async fn call(client: &Client, name: &str, args: Value) -> Value {
        let arguments = args.as_object().cloned().expect("arguments object");
        let result = client
            .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(arguments))
            .await
            .unwrap_or_else(|e| panic!("tools/call {name}: {e}"));
        serde_json::to_value(&result).unwrap_or_else(|e| json!({"unserializable": e.to_string()}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rmcp_client_lists_and_calls_in_both_eras() {
    use rmcp::model::ProtocolVersion;

    let (_legacy, _modern, stack) = legacy_and_modern().await;
    let url = stack.url("/mcp");
    for (label, expected_version) in [
        ("auto", "2026-07-28"),
        ("legacy", "2025-11-25"),
        ("initialize advertising 2026-07-28", "2025-11-25"),
    ] {
        let client = match label {
            "auto" => rust_sdk::connect_auto(&url).await,
            "legacy" => rust_sdk::connect_initialize(&url, ProtocolVersion::V_2025_11_25).await,
            _ => rust_sdk::connect_initialize(&url, ProtocolVersion::V_2026_07_28).await,
        };
        let (version, server) = rust_sdk::negotiated(&client);
        assert_eq!(version, expected_version, "{label}");
        if expected_version != "2026-07-28" {
            // initialize results always name the server (discovery results need not).
            assert_eq!(server.as_deref(), Some("gantry"), "{label}");
        }
        let tools = rust_sdk::tool_names(&client).await;
        assert_contains_all(
            &tools,
            &["everything__echo", "everything__get-sum", "fixture__echo"],
            label,
        );
        let echoed = rust_sdk::call(&client, "fixture__echo", json!({"text": "from rmcp"})).await;
        assert_eq!(
            result_text(&echoed),
            "fixture: from rmcp",
            "{label}: {echoed}"
        );
        let echoed =
            rust_sdk::call(&client, "everything__echo", json!({"message": "from rmcp"})).await;
        assert_eq!(result_text(&echoed), "Echo: from rmcp", "{label}: {echoed}");
        let sum = rust_sdk::call(&client, "everything__get-sum", json!({"a": 20, "b": 22})).await;
        assert_eq!(
            result_text(&sum),
            "The sum of 20 and 22 is 42.",
            "{label}: {sum}"
        );
        client.cancel().await.expect("rmcp client stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_lists_its_elicitation_tool_only_to_a_client_that_can_answer() {
    let (legacy, _modern, stack) = legacy_and_modern().await;
    let tool = "everything__trigger-elicitation-request";
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": tool, "args": {}},
    ]);

    // No elicitation capability declared: server-everything never registers the tool.
    let report = py_client(stack.url("/mcp"), ClientMode::Legacy, None, steps.clone()).await;
    let tools = report.tool_names(0);
    assert!(tools.contains(&"everything__echo".to_string()), "{tools:?}");
    assert!(!tools.contains(&tool.to_string()), "{tools:?}");
    assert_eq!(report.step(1)["ok"], false, "{}", report.context());

    // Declared: it is listed, and calling it sends `elicitation/create` through the bridge to
    // the client, whose answer goes back to server-everything.
    let answer = json!({"name": "Ada Lovelace", "check": true});
    let report = py_client(stack.url("/mcp"), ClientMode::Legacy, Some(answer), steps).await;
    let context = format!(
        "{}\n--- gantry ---\n{}\n--- server-everything ---\n{}",
        report.context(),
        stack.process.logs(),
        legacy.logs()
    );
    let tools = report.tool_names(0);
    assert!(tools.contains(&tool.to_string()), "{tools:?}\n{context}");
    let text = report.text(1);
    assert!(
        text.contains("User provided the requested information"),
        "{context}"
    );
    assert!(text.contains("- Name: Ada Lovelace"), "{context}");
    assert!(text.contains("- Agreed to terms: true"), "{context}");
    let asked = report.elicitations();
    assert_eq!(asked.len(), 1, "{context}");
    assert_eq!(
        asked[0]["message"], "Please provide inputs for the following fields:",
        "{context}"
    );
    assert_eq!(
        asked[0]["requestedSchema"]["required"],
        json!(["name"]),
        "{context}"
    );
}
