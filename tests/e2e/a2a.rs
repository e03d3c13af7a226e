//! A2A through the real Envoy and Gantry's ext_proc, with the real a2a-sdk 1.3.0 agent and
//! client: the card is rewritten to point at the gateway (and carries the gateway's security,
//! and only the skills the caller may use), send, stream (events arrive while the stream is
//! open), get and cancel work through it, rules deny methods and skills in the client's
//! protocol, push-notification webhooks on private addresses are refused before the agent sees
//! them, a 0.3 client is served, signed cards are republished unsigned or refused, the
//! registry lists every agent, and `/metrics` counts requests per agent, method and outcome.

use gantry_policy::auth::api_keys::KeyHash;
use gantry_testkit::a2a_peers::{a2a_client, start_a2a_agent, A2aAgent, A2aAgentOptions};
use gantry_testkit::{free_ports, GantryStack, StackPorts};
use serde_json::Value;

use crate::{http, json_of, scrape_metrics, start_stack};

const OPS_KEY: &str = "gk_test_ops_0123456789abcdef";
const DEV_KEY: &str = "gk_test_dev_0123456789abcdef";

/// A stack in front of `agents` (name, agent) with two API keys (team ops and team dev), rules
/// that keep the admin skill and ListTasks for ops, and `extra` under `a2a:`.
async fn stack(agents: &[(&str, &A2aAgent)], extra: &str) -> (GantryStack, u16) {
    let ports = StackPorts::free();
    let [auth, metrics] = free_ports(2)[..] else {
        unreachable!()
    };
    let agent_lines: String = agents
        .iter()
        .map(|(name, agent)| format!("    - {{ name: {name}, url: '{}' }}\n", agent.base_url()))
        .collect();
    let yaml = format!(
        "{head}metrics: {{ listen: '127.0.0.1:{metrics}' }}
auth:
  listen: 127.0.0.1:{auth}
  api_keys:
    - {{ name: ops-key, hash: '{ops}', user: olga, team: ops }}
    - {{ name: dev-key, hash: '{dev}', user: dan, team: dev }}
a2a:
{extra}  rules:
    - {{ name: admin-is-for-ops, action: deny, when: \"a2a.skill == 'admin' && principal.team != 'ops'\" }}
    - {{ name: listing-is-for-ops, action: deny, when: \"a2a.method == 'ListTasks' && principal.team != 'ops'\" }}
    - {{ name: callers, action: allow, when: \"principal.method == 'api_key'\" }}
  agents:
{agent_lines}",
        head = ports.config_head(),
        ops = KeyHash::of(OPS_KEY),
        dev = KeyHash::of(DEV_KEY),
    );
    (start_stack(ports, yaml, vec![]).await, metrics)
}

async fn run_client(base: String, key: &'static str, steps: &[&str]) -> Vec<Value> {
    let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        a2a_client(&base, &[("x-api-key", key)], &steps)
    })
    .await
    .expect("client task")
}

fn no_error(step: &Value) -> &Value {
    assert!(step.get("error").is_none(), "step failed: {step}");
    step
}

fn interface_urls(card: &Value) -> Vec<String> {
    card["supportedInterfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no supportedInterfaces: {card}"))
        .iter()
        .map(|i| i["url"].as_str().unwrap_or("").to_string())
        .collect()
}

fn skill_ids(card: &Value) -> Vec<String> {
    card["skills"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_reaches_an_agent_only_through_the_gateway() {
    let agent = tokio::task::spawn_blocking(|| start_a2a_agent(A2aAgentOptions::default()))
        .await
        .unwrap();
    let (stack, metrics) = stack(&[("echo", &agent)], "").await;
    let base = stack.url("/a2a/echo");

    let ops = run_client(
        base.clone(),
        OPS_KEY,
        &[
            "card",
            "send:hello",
            "stream:streamed",
            "get:last",
            "cancel-wait",
            "send-skill:admin:root things",
        ],
    )
    .await;
    // The card: every interface at the gateway, the gateway's security, all skills for ops.
    let card = &no_error(&ops[0])["card"];
    let urls = interface_urls(card);
    assert_eq!(urls, [format!("{base}/"), format!("{base}/rest")], "{card}");
    assert_eq!(
        card["securitySchemes"]["gantry_api_key"]["apiKeySecurityScheme"]["name"], "x-api-key",
        "{card}"
    );
    assert!(card["securitySchemes"].get("agent-key").is_none(), "{card}");
    assert_eq!(skill_ids(card), ["echo", "admin"], "{card}");
    // Send and stream, through Envoy to the agent and back.
    let sent = no_error(&ops[1]);
    assert_eq!(sent["state"], "TASK_STATE_COMPLETED", "{sent}");
    assert_eq!(sent["artifacts"][0], "echo: hello", "{sent}");
    let streamed = no_error(&ops[2]);
    assert_eq!(
        streamed["events"],
        serde_json::json!(["task", "statusUpdate", "artifactUpdate", "statusUpdate"]),
        "{streamed}"
    );
    assert_eq!(
        streamed["final_state"], "TASK_STATE_COMPLETED",
        "{streamed}"
    );
    let got = no_error(&ops[3]);
    assert_eq!(got["task_id"], streamed["task_id"], "{got}");
    assert_eq!(got["state"], "TASK_STATE_COMPLETED", "{got}");
    // The stream passes through as it is produced: its first events reached the client while
    // the task was still working (the agent ends it only when cancelled), and the cancel,
    // sent through the gateway meanwhile, ended it.
    let cancelled = no_error(&ops[4]);
    assert_eq!(cancelled["state"], "TASK_STATE_CANCELED", "{cancelled}");
    assert_eq!(
        cancelled["events_before_cancel"],
        serde_json::json!(["task", "statusUpdate"]),
        "{cancelled}"
    );
    assert_eq!(
        cancelled["stream_states_after_cancel"],
        serde_json::json!(["TASK_STATE_CANCELED"]),
        "{cancelled}"
    );
    // Ops may use the admin skill.
    let admin = no_error(&ops[5]);
    assert_eq!(
        admin["artifacts"][0], "echo[skill=admin]: root things",
        "{admin}"
    );

    // Dev: the card hides the admin skill, and using it anyway is denied by the rule, as a
    // JSON-RPC error the SDK raises with its code; so is a method kept for ops.
    let dev = run_client(
        base.clone(),
        DEV_KEY,
        &[
            "card",
            "send-skill:admin:root things",
            "raw:ListTasks:{}",
            "send:still fine",
        ],
    )
    .await;
    assert_eq!(
        skill_ids(&no_error(&dev[0])["card"]),
        ["echo"],
        "{}",
        dev[0]
    );
    let denied = &dev[1]["error"];
    assert_eq!(denied["code"], -32050, "{}", dev[1]);
    assert!(
        denied["message"]
            .as_str()
            .is_some_and(|m| m.contains("skill 'admin'") && m.contains("admin-is-for-ops")),
        "{denied}"
    );
    let listing = &dev[2]["body"]["error"];
    assert_eq!(listing["code"], -32050, "{}", dev[2]);
    assert!(
        listing["message"]
            .as_str()
            .is_some_and(|m| m.contains("ListTasks") && m.contains("listing-is-for-ops")),
        "{listing}"
    );
    assert_eq!(no_error(&dev[3])["artifacts"][0], "echo: still fine");

    // Tasks are bound to their creator: dev cannot read or cancel ops' task, which it is
    // told does not exist; ops still can.
    let task = sent["task_id"].as_str().expect("task id").to_string();
    let get = format!("get:{task}");
    let cancel = format!("raw:CancelTask:{{\"id\":\"{task}\"}}");
    let other = run_client(base.clone(), DEV_KEY, &[&get, &cancel]).await;
    assert_eq!(other[0]["error"]["code"], -32001, "{}", other[0]);
    assert_eq!(other[1]["body"]["error"]["code"], -32001, "{}", other[1]);
    let own = run_client(base.clone(), OPS_KEY, &[&get]).await;
    assert_eq!(no_error(&own[0])["state"], "TASK_STATE_COMPLETED");
    // Also for a task created by a stream.
    let streamed_task = streamed["task_id"].as_str().expect("task id").to_string();
    let other = run_client(base.clone(), DEV_KEY, &[&format!("get:{streamed_task}")]).await;
    assert_eq!(other[0]["error"]["code"], -32001, "{}", other[0]);

    // Without a key, ext_authz refuses before anything reaches the agent.
    let anonymous = http()
        .get(format!("{base}/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(anonymous).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["jsonrpc"], "2.0",
        "A2A clients get JSON-RPC errors: {body}"
    );

    // The access log names the agent and the method; /metrics counts them.
    stack.wait_for_access_log("a denied A2A call", |e| {
        e["a2a_agent"] == "echo"
            && e["a2a_method"] == "SendMessage"
            && e["a2a_skill"] == "admin"
            && e["a2a_refused"] == "a2a_denied"
    });
    stack.wait_for_access_log("a served A2A stream", |e| {
        e["a2a_agent"] == "echo" && e["a2a_method"] == "SendStreamingMessage" && e["status"] == 200
    });
    let text = scrape_metrics(metrics).await;
    for series in [
        "gantry_a2a_requests_total{agent=\"echo\",method=\"SendMessage\",outcome=\"ok\"}",
        "gantry_a2a_requests_total{agent=\"echo\",method=\"SendMessage\",outcome=\"denied\"}",
        "gantry_a2a_requests_total{agent=\"echo\",method=\"SendStreamingMessage\",outcome=\"ok\"}",
        "gantry_a2a_requests_total{agent=\"echo\",method=\"CancelTask\",outcome=\"ok\"}",
        "gantry_a2a_requests_total{agent=\"echo\",method=\"GetAgentCard\",outcome=\"ok\"}",
        "gantry_a2a_requests_total{agent=\"echo\",method=\"GetTask\",outcome=\"task_not_owned\"}",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_on_private_addresses_never_reach_the_agent() {
    let agent = tokio::task::spawn_blocking(|| start_a2a_agent(A2aAgentOptions::default()))
        .await
        .unwrap();
    let (stack, _) = stack(&[("echo", &agent)], "").await;
    let base = stack.url("/a2a/echo");
    // A host name is resolved by the gateway: this machine's own name stands for a loopback
    // or private address (or does not resolve), so it is refused either way.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost.invalid".into());
    let by_name = format!("push:http://{hostname}:8080/hook");
    let steps = run_client(
        base,
        OPS_KEY,
        &[
            "send:first",
            "push:http://127.0.0.1:9/hook",
            "push:http://169.254.169.254/latest/meta-data",
            "send-push:http://[::ffff:10.0.0.1]/hook",
            "v03-send:old client",
            "v03-push:http://192.168.1.10/hook",
            "push:https://93.184.216.34/hook",
            "v03-sdk-send:sdk 0.3 transport",
            &by_name,
        ],
    )
    .await;
    no_error(&steps[0]);
    for (i, why) in [(1, "loopback"), (2, "link-local"), (3, "private")] {
        let error = &steps[i]["error"];
        assert_eq!(error["code"], -32602, "{}", steps[i]);
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains(why)),
            "{}",
            steps[i]
        );
    }
    // A 0.3 client is served (0.3 shapes back) and its push config is checked as well.
    let old = no_error(&steps[4]);
    assert_eq!(old["http_status"], 200, "{old}");
    assert_eq!(old["state"], "completed", "{old}");
    assert_eq!(old["artifacts"][0], "echo: old client", "{old}");
    let old_push = &steps[5];
    let code = old_push["body"]["error"]["code"]
        .as_i64()
        .or(old_push["error"]["code"].as_i64());
    assert_eq!(code, Some(-32602), "{old_push}");
    // A public webhook is allowed.
    let allowed = no_error(&steps[6]);
    assert_eq!(allowed["url"], "https://93.184.216.34/hook", "{allowed}");
    // The SDK's own 0.3 transport (A2A-Version: 0.3) is served as well.
    let sdk_03 = no_error(&steps[7]);
    assert_eq!(
        sdk_03["artifacts"][0], "echo: sdk 0.3 transport",
        "{sdk_03}"
    );
    let named = &steps[8]["error"];
    assert_eq!(named["code"], -32602, "{}", steps[8]);
    let message = named["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&hostname)
            && (message.contains("resolves to") || message.contains("could not be resolved")),
        "{message}"
    );
    // The agent saw only the allowed one.
    let configured = agent.push_config_urls();
    assert_eq!(
        configured,
        ["https://93.184.216.34/hook"],
        "{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_binding_and_the_registry_go_through_the_same_policy() {
    let agent = tokio::task::spawn_blocking(|| start_a2a_agent(A2aAgentOptions::default()))
        .await
        .unwrap();
    let other = tokio::task::spawn_blocking(|| {
        start_a2a_agent(A2aAgentOptions {
            name: Some("second-agent".into()),
            ..A2aAgentOptions::default()
        })
    })
    .await
    .unwrap();
    let (stack, _) = stack(&[("echo", &agent), ("second", &other)], "").await;

    // REST through the SDK's HTTP+JSON transport.
    let rest = run_client(
        stack.url("/a2a/echo"),
        OPS_KEY,
        &["rest-send:resty", "rest-get:last"],
    )
    .await;
    assert_eq!(no_error(&rest[0])["artifacts"][0], "echo: resty");
    assert_eq!(no_error(&rest[1])["state"], "TASK_STATE_COMPLETED");

    // A REST call the rules deny is a 403 google.rpc.Status; an unknown path is a 404.
    let denied = http()
        .get(stack.url("/a2a/echo/rest/tasks"))
        .header("x-api-key", DEV_KEY)
        .header("a2a-version", "1.0")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(denied).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED", "{body}");
    assert_eq!(
        body["error"]["details"][0]["reason"],
        "GATEWAY_POLICY_DENIED"
    );
    let unknown = http()
        .get(stack.url("/a2a/echo/admin/shell"))
        .header("x-api-key", OPS_KEY)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(unknown).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not an A2A operation")),
        "{body}"
    );
    // Malformed JSON-RPC is a JSON-RPC error; the agent keeps serving.
    let garbage = http()
        .post(stack.url("/a2a/echo/"))
        .header("x-api-key", OPS_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(garbage).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"]["code"], -32700, "{body}");

    // The legacy card location serves the same rewritten card.
    let legacy = http()
        .get(stack.url("/a2a/second/.well-known/agent.json"))
        .header("x-api-key", OPS_KEY)
        .send()
        .await
        .unwrap();
    assert!(legacy.headers().get("etag").is_none());
    let (status, card) = json_of(legacy).await;
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["name"], "second-agent");
    assert_eq!(
        interface_urls(&card)[0],
        stack.url("/a2a/second/"),
        "{card}"
    );

    // The registry lists both agents with their rewritten cards, as this caller sees them.
    let registry = http()
        .get(stack.url("/a2a"))
        .header("x-api-key", DEV_KEY)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(registry).await;
    assert_eq!(status, 200, "{body}");
    let agents = body["agents"].as_array().expect("agents");
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "second"], "{body}");
    for entry in agents {
        let name = entry["name"].as_str().unwrap();
        assert_eq!(entry["url"], stack.url(&format!("/a2a/{name}/")));
        assert_eq!(
            interface_urls(&entry["card"])[0],
            stack.url(&format!("/a2a/{name}/")),
            "{entry}"
        );
        assert_eq!(
            skill_ids(&entry["card"]),
            ["echo"],
            "dev sees no admin skill: {entry}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cards_are_republished_unsigned_or_refused() {
    let agent = tokio::task::spawn_blocking(|| {
        start_a2a_agent(A2aAgentOptions {
            signed: true,
            ..A2aAgentOptions::default()
        })
    })
    .await
    .unwrap();

    let (unsigned, _) = stack(&[("signed", &agent)], "").await;
    let response = http()
        .get(unsigned.url("/a2a/signed/.well-known/agent-card.json"))
        .header("x-api-key", OPS_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("x-gantry-card-signatures")
            .and_then(|v| v.to_str().ok()),
        Some("removed")
    );
    let (status, card) = json_of(response).await;
    assert_eq!(status, 200, "{card}");
    assert!(card.get("signatures").is_none(), "{card}");
    assert_eq!(
        card["capabilities"]["extensions"][0]["uri"],
        gantry_policy::a2a::card::UNSIGNED_EXTENSION_URI,
        "{card}"
    );
    // The SDK client accepts the flagged card and works through it.
    let steps = run_client(unsigned.url("/a2a/signed"), OPS_KEY, &["card", "send:hi"]).await;
    no_error(&steps[0]);
    assert_eq!(no_error(&steps[1])["artifacts"][0], "echo: hi");
    drop(unsigned);

    let (refusing, _) = stack(&[("signed", &agent)], "  signed_cards: refuse\n").await;
    let response = http()
        .get(refusing.url("/a2a/signed/.well-known/agent-card.json"))
        .header("x-api-key", OPS_KEY)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("signed") && m.contains("'signed'")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v03_card_is_rewritten_in_its_own_shape_and_a_v03_client_works_through_it() {
    let agent = tokio::task::spawn_blocking(|| {
        start_a2a_agent(A2aAgentOptions {
            card_v03: true,
            ..A2aAgentOptions::default()
        })
    })
    .await
    .unwrap();
    let (stack, _) = stack(&[("old", &agent)], "").await;
    let base = stack.url("/a2a/old");
    let response = http()
        .get(format!("{base}/.well-known/agent-card.json"))
        .header("x-api-key", DEV_KEY)
        .send()
        .await
        .unwrap();
    let (status, card) = json_of(response).await;
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["url"], format!("{base}/"), "{card}");
    assert_eq!(
        card["additionalInterfaces"][1]["url"],
        format!("{base}/rest"),
        "{card}"
    );
    assert!(card.get("supportedInterfaces").is_none(), "{card}");
    assert_eq!(
        card["securitySchemes"]["gantry_api_key"],
        serde_json::json!({"type": "apiKey", "in": "header", "name": "x-api-key",
            "description": "A Gantry API key (also accepted as 'Authorization: Bearer <key>')"}),
        "{card}"
    );
    assert_eq!(
        card["security"],
        serde_json::json!([{"gantry_api_key": []}]),
        "{card}"
    );
    assert_eq!(
        skill_ids(&card),
        ["echo"],
        "dev sees no admin skill: {card}"
    );

    // The SDK client reads the 0.3 card, picks its 0.3 transport, and works through the gateway.
    let steps = run_client(
        base.clone(),
        OPS_KEY,
        &["card", "send:from 0.3", "get:last"],
    )
    .await;
    let resolved = &no_error(&steps[0])["card"];
    assert_eq!(
        interface_urls(resolved)[0],
        format!("{base}/"),
        "{resolved}"
    );
    assert_eq!(
        no_error(&steps[1])["artifacts"][0],
        "echo: from 0.3",
        "{}",
        steps[1]
    );
    no_error(&steps[2]);
    stack.wait_for_access_log("a 0.3 send", |e| {
        e["a2a_agent"] == "old" && e["a2a_method"] == "SendMessage" && e["status"] == 200
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_is_down_gets_a_json_rpc_error_and_the_others_keep_serving() {
    let agent = tokio::task::spawn_blocking(|| start_a2a_agent(A2aAgentOptions::default()))
        .await
        .unwrap();
    let dead = free_ports(1)[0];
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}a2a:\n  agents:\n    - {{ name: live, url: '{live}' }}\n    - {{ name: dead, url: 'http://127.0.0.1:{dead}' }}\n",
        head = ports.config_head(),
        live = agent.base_url(),
    );
    let stack = start_stack(ports, yaml, vec![]).await;
    let send = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}});
    let post = |path: &'static str| {
        let url = stack.url(path);
        let body = send.to_string();
        async move {
            http()
                .post(url)
                .header("content-type", "application/json")
                .header("a2a-version", "1.0")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let (status, body) = json_of(post("/a2a/dead/").await).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["error"]["code"], -32603, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be reached")),
        "{body}"
    );
    let (status, body) = json_of(post("/a2a/live/").await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"]["task"]["status"]["state"], "TASK_STATE_COMPLETED",
        "{body}"
    );
    // The registry lists both: the live agent with its card, the dead one saying why not.
    let (status, registry) = json_of(http().get(stack.url("/a2a")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{registry}");
    let agents = registry["agents"].as_array().expect("agents");
    assert_eq!(agents[0]["name"], "live", "{registry}");
    assert!(agents[0]["card"].is_object(), "{registry}");
    assert_eq!(agents[1]["name"], "dead", "{registry}");
    assert!(agents[1].get("card").is_none(), "{registry}");
    assert!(
        agents[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("could not be fetched")),
        "{registry}"
    );
}
