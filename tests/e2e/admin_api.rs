//! The admin API (`gantry.admin.v1`) through real Envoy, driven by the `gantry` CLI: keys
//! created at runtime work at once, a revoked key stops working on two replicas sharing one
//! real Redis, a rotated key's old secret works for its grace period only, runtime budgets
//! refuse and report, the config wins on names, calls without the admin credential are
//! refused, and every change lands in the audit log.

use std::time::{Duration, Instant};

use gantry_policy::auth::api_keys::KeyHash;
use gantry_testkit::{free_ports, GantryStack, RedisServer, StackPorts};
use serde_json::{json, Value};

use crate::{
    assert_openai_error, gantry_bin, http, json_of, scrape_metrics, start_mock, start_stack,
};

const OPS_TOKEN: &str = "gat_ops_admin_token_for_tests";
const BOOT_KEY: &str = "gk_boot_key_from_the_config";

/// One replica's config: a mock provider, `auth` with one config key (`boot`), governance on
/// `store`, and the admin API on its own port.
struct Replica {
    ports: StackPorts,
    admin_api: u16,
    metrics: u16,
    yaml: String,
}

impl Replica {
    fn new(endpoint: &str, store: &str, extra_governance: &str) -> Replica {
        let ports = StackPorts::free();
        let [auth, admin_api, metrics] = free_ports(3)[..] else {
            unreachable!()
        };
        let yaml = format!(
            "{head}providers:
  - {{ name: alpha, kind: openai, endpoint: '{endpoint}' }}
models:
  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}
  - {{ name: m-other, provider: alpha, model: alpha-2 }}
auth:
  listen: 127.0.0.1:{auth}
  api_keys:
    - {{ name: boot, hash: '{boot}', team: platform }}
governance:
  pricing:
    models:
      m-alpha: {{ input: 1000, output: 2000 }}
      m-other: {{ input: 1000, output: 2000 }}
{store}{extra_governance}admin_api:
  listen: 127.0.0.1:{admin_api}
  tokens:
    - {{ name: ops, hash: '{ops}' }}
metrics:
  listen: 127.0.0.1:{metrics}
",
            head = ports.config_head(),
            boot = KeyHash::of(BOOT_KEY),
            ops = KeyHash::of(OPS_TOKEN),
        );
        Replica {
            ports,
            admin_api,
            metrics,
            yaml,
        }
    }

    async fn start(&self) -> GantryStack {
        start_stack(self.ports, self.yaml.clone(), vec![]).await
    }
}

fn embedded(dir: &tempfile::TempDir) -> String {
    format!(
        "  store: {{ kind: embedded, path: '{}' }}\n",
        dir.path().join("gantry.db").display()
    )
}

fn redis(redis: &RedisServer) -> String {
    format!(
        "  store: {{ kind: redis, url: '{}', timeout_ms: 300 }}\n",
        redis.url()
    )
}

/// What one `gantry` CLI run printed.
struct Cli {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs the `gantry` CLI against the admin API on `port`, with `token` as the admin token.
async fn cli(port: u16, token: Option<&str>, args: &[&str]) -> Cli {
    let mut command = tokio::process::Command::new(gantry_bin());
    command
        .args(args)
        .env("GANTRY_ADMIN_URL", format!("http://127.0.0.1:{port}"))
        .env_remove("GANTRY_ADMIN_TOKEN")
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("GANTRY_ADMIN_TOKEN", token);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the CLI finishes")
        .expect("run gantry");
    Cli {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `cli` with the ops token, asserting success.
async fn ops(port: u16, args: &[&str]) -> String {
    let run = cli(port, Some(OPS_TOKEN), args).await;
    assert!(
        run.success,
        "gantry {args:?} failed:\n{}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// The secret a `key create` or `key rotate` printed.
fn secret_of(printed: &str) -> String {
    printed
        .lines()
        .find_map(|l| l.strip_prefix("key:  "))
        .unwrap_or_else(|| panic!("no secret printed:\n{printed}"))
        .trim()
        .to_string()
}

async fn chat(stack: &GantryStack, key: &str, model: &str) -> (u16, Value) {
    let response = http()
        .post(stack.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(
            json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .expect("request reaches the gateway");
    json_of(response).await
}

/// Sends requests with `key` until `done` says the answer is the awaited one; returns how
/// long that took. Panics after `deadline`.
async fn until_answer(
    stack: &GantryStack,
    key: &str,
    what: &str,
    deadline: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = chat(stack, key, "m-alpha").await;
        if done(status, &body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: still {status} {body} after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_key_works_at_once_and_a_revoked_one_stops_on_both_replicas_sharing_redis() {
    let redis_server = RedisServer::start();
    let mock = start_mock("alpha", None).await;
    let one = Replica::new(&mock.base_url(), &redis(&redis_server), "");
    let two = Replica::new(&mock.base_url(), &redis(&redis_server), "");
    let (a, b) = tokio::join!(one.start(), two.start());

    let created = ops(
        one.admin_api,
        &[
            "key",
            "create",
            "alice",
            "--user",
            "alice",
            "--team",
            "research",
            "--label",
            "tier=gold",
        ],
    )
    .await;
    let secret = secret_of(&created);
    assert!(secret.starts_with("gk_"), "{created}");
    assert!(created.contains("team:     research"), "{created}");

    // On the replica that created it: at once, no waiting.
    let (status, body) = chat(&a, &secret, "m-alpha").await;
    assert_eq!(status, 200, "{body}");
    // On the other: within its sync interval.
    let seen = until_answer(
        &b,
        &secret,
        "replica two learning the key",
        Duration::from_secs(10),
        |s, _| s == 200,
    )
    .await;
    eprintln!("replica two accepted the new key after {seen:?}");
    let metrics = scrape_metrics(two.metrics).await;
    assert!(
        metrics.contains("gantry_admin_runtime_keys 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gantry_admin_sync_errors_total 0\n"),
        "{metrics}"
    );
    // The access log names the runtime key.
    let logged = a.wait_for_access_log("alice's request", |l| l["api_key"] == "alice");
    assert_eq!(logged["subject"], "alice", "{logged}");

    // Listed by both replicas, next to the config's key; the secret is never shown again.
    let listed = ops(two.admin_api, &["key", "list", "--format", "json"]).await;
    let keys: Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<(&str, &str)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("alice", "runtime"), ("boot", "config")],
        "{listed}"
    );
    assert!(!listed.contains(&secret), "a listing shows the secret");
    assert_eq!(keys[0]["labels"]["tier"], "gold");

    // Revoked on replica two: refused there at once, and on replica one within the bound.
    let revoked = ops(
        two.admin_api,
        &["key", "revoke", "alice", "--reason", "left the team"],
    )
    .await;
    assert!(revoked.contains("key 'alice' revoked at"), "{revoked}");
    let (status, body) = chat(&b, &secret, "m-alpha").await;
    assert_eq!(status, 401, "{body}");
    let message = assert_openai_error(&body, "revoked_api_key");
    assert!(
        message.starts_with("API key 'alice' was revoked at "),
        "{message}"
    );
    let stopped = until_answer(
        &a,
        &secret,
        "replica one refusing the revoked key",
        Duration::from_secs(10),
        |s, body| s == 401 && body["error"]["code"] == "revoked_api_key",
    )
    .await;
    eprintln!("replica one refused the revoked key after {stopped:?} (sync interval 250 ms)");
    let metrics = scrape_metrics(one.metrics).await;
    assert!(
        metrics.contains("gantry_admin_runtime_keys 0\n"),
        "{metrics}"
    );
    // The config's key was never affected.
    for stack in [&a, &b] {
        let (status, body) = chat(stack, BOOT_KEY, "m-alpha").await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_secret_for_its_grace_period_only() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock("alpha", None).await;
    let replica = Replica::new(&mock.base_url(), &embedded(&dir), "");
    let stack = replica.start().await;
    let old = secret_of(&ops(replica.admin_api, &["key", "create", "ci"]).await);
    assert_eq!(chat(&stack, &old, "m-alpha").await.0, 200);

    let rotated = ops(
        replica.admin_api,
        &["key", "rotate", "ci", "--grace-secs", "6"],
    )
    .await;
    let new = secret_of(&rotated);
    assert_ne!(new, old);
    assert!(
        rotated.contains("The previous secret keeps working until "),
        "{rotated}"
    );
    // Both work during the grace period.
    for secret in [&new, &old] {
        let (status, body) = chat(&stack, secret, "m-alpha").await;
        assert_eq!(status, 200, "{body}");
    }
    let shown = ops(
        replica.admin_api,
        &["key", "show", "ci", "--format", "json"],
    )
    .await;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["hash"], KeyHash::of(&new).to_string());
    assert_eq!(
        shown["previous_secrets"][0]["hash"],
        KeyHash::of(&old).to_string()
    );

    // Then the old one is refused, saying why; the new one keeps working.
    until_answer(
        &stack,
        &old,
        "the old secret expiring",
        Duration::from_secs(20),
        |s, body| s == 401 && body["error"]["code"] == "rotated_api_key",
    )
    .await;
    let (_, body) = chat(&stack, &old, "m-alpha").await;
    let message = assert_openai_error(&body, "rotated_api_key");
    assert!(message.contains("API key 'ci' was rotated"), "{message}");
    assert_eq!(chat(&stack, &new, "m-alpha").await.0, 200);

    // A rotation without grace stops the previous secret at once.
    let newest = secret_of(
        &ops(
            replica.admin_api,
            &["key", "rotate", "ci", "--grace-secs", "0"],
        )
        .await,
    );
    assert_eq!(chat(&stack, &new, "m-alpha").await.0, 401);
    assert_eq!(chat(&stack, &newest, "m-alpha").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_budgets_refuse_when_spent_and_report_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock("alpha", None).await;
    let replica = Replica::new(&mock.base_url(), &embedded(&dir), "");
    let stack = replica.start().await;
    // Each request costs about 1 input-ish token plus up to 5 output tokens at $0.001 and
    // $0.002 a token: a $0.05 budget admits a few requests, not twenty.
    let created = ops(
        replica.admin_api,
        &[
            "key",
            "create",
            "bob",
            "--team",
            "sales",
            "--budget-usd",
            "0.05",
            "--budget-window",
            "day",
            "--model",
            "m-alpha",
        ],
    )
    .await;
    assert!(
        created.contains("budget:   key-bob-day ($0.05 per day)"),
        "{created}"
    );
    let secret = secret_of(&created);

    // The key's allow-list is enforced (the body reaches ext_authz with the admin API on).
    let (status, body) = chat(&stack, &secret, "m-other").await;
    assert_eq!(status, 403, "{body}");
    assert_openai_error(&body, "model_not_allowed");

    let mut admitted = 0;
    let refusal = loop {
        let (status, body) = chat(&stack, &secret, "m-alpha").await;
        match status {
            200 => admitted += 1,
            429 => break body,
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(admitted < 20, "the $0.05 budget never refused");
    };
    assert!(admitted >= 1, "refused the first request: {refusal}");
    let message = assert_openai_error(&refusal, "budget_exceeded");
    assert!(message.contains("'key-bob-day'"), "{message}");

    // A team budget set at runtime applies to the team's callers too (config key `boot` is
    // on team platform).
    ops(
        replica.admin_api,
        &[
            "budget",
            "set",
            "team:platform",
            "--tokens",
            "1",
            "--window",
            "hour",
        ],
    )
    .await;
    let (status, body) = chat(&stack, BOOT_KEY, "m-alpha").await;
    assert_eq!(status, 429, "{body}");
    assert!(assert_openai_error(&body, "budget_exceeded").contains("team-platform-hour"));

    // What is left, as the API reports it.
    let shown = ops(
        replica.admin_api,
        &["budget", "show", "key:bob", "--format", "json"],
    )
    .await;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let budget = &shown["budgets"][0];
    assert_eq!(budget["budget"], "key-bob-day", "{shown}");
    assert_eq!(budget["source"], "runtime");
    assert_eq!(budget["limit_usd"], 0.05);
    let spent = budget["spent_usd"].as_f64().unwrap();
    let remaining = budget["remaining_usd"].as_f64().unwrap();
    assert!(
        spent > 0.0 && (spent + remaining - 0.05).abs() < 1e-9,
        "{budget}"
    );
    let table = ops(replica.admin_api, &["budget", "show", "key:bob"]).await;
    assert!(
        table.contains("key-bob-day") && table.contains("$0.050000"),
        "{table}"
    );

    // Spend through the API, grouped by key.
    let spend = ops(
        replica.admin_api,
        &["spend", "--by", "key", "--format", "json"],
    )
    .await;
    let rows: Value = serde_json::from_str(&spend).unwrap();
    let bob = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "bob")
        .unwrap_or_else(|| panic!("no row for bob: {spend}"));
    assert_eq!(bob["requests"].as_u64().unwrap(), admitted + 1, "{bob}");

    // Budgets listed with their source; deleting the team budget lets `boot` through again.
    let listed = ops(replica.admin_api, &["budget", "list"]).await;
    assert!(
        listed.contains("key-bob-day") && listed.contains("team-platform-hour"),
        "{listed}"
    );
    ops(
        replica.admin_api,
        &["budget", "delete", "team-platform-hour"],
    )
    .await;
    assert_eq!(chat(&stack, BOOT_KEY, "m-alpha").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_admin_credential_are_refused_and_changes_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock("alpha", None).await;
    let replica = Replica::new(&mock.base_url(), &embedded(&dir), "");
    let stack = replica.start().await;
    let port = replica.admin_api;

    // No token, a wrong token, a raw gRPC call without metadata: all refused, nothing made.
    let none = cli(port, None, &["key", "create", "mallory"]).await;
    assert!(!none.success);
    assert!(
        none.stderr
            .contains("no admin token: set GANTRY_ADMIN_TOKEN"),
        "{}",
        none.stderr
    );
    let wrong = cli(
        port,
        Some("gat_not_the_token"),
        &["key", "create", "mallory"],
    )
    .await;
    assert!(!wrong.success);
    assert!(
        wrong.stderr.contains("refused: invalid admin token"),
        "{}",
        wrong.stderr
    );
    let mut raw = gantry_proto::admin::v1::admin_service_client::AdminServiceClient::connect(
        format!("http://127.0.0.1:{port}"),
    )
    .await
    .expect("connect to the admin API");
    let refused = raw
        .list_keys(gantry_proto::admin::v1::ListKeysRequest::default())
        .await
        .expect_err("no credential");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("needs an admin token"),
        "{}",
        refused.message()
    );

    // The config wins on names, and says so.
    let taken = cli(port, Some(OPS_TOKEN), &["key", "create", "boot"]).await;
    assert!(!taken.success);
    assert!(
        taken
            .stderr
            .contains("already exists: key 'boot' is declared in the config file"),
        "{}",
        taken.stderr
    );
    let config_owned = cli(port, Some(OPS_TOKEN), &["key", "revoke", "boot"]).await;
    assert!(
        config_owned
            .stderr
            .contains("declared in the config file (auth.api_keys): change it there"),
        "{}",
        config_owned.stderr
    );
    let bad = cli(
        port,
        Some(OPS_TOKEN),
        &["key", "create", "dave", "--model", "gpt-9"],
    )
    .await;
    assert!(
        bad.stderr.contains("invalid: unknown model 'gpt-9'"),
        "{}",
        bad.stderr
    );

    // Changes, each audited.
    let secret = secret_of(&ops(port, &["key", "create", "carol", "--team", "ops"]).await);
    ops(port, &["key", "rotate", "carol", "--grace-secs", "60"]).await;
    ops(port, &["metadata", "set", "team:ops", "tier=gold"]).await;
    ops(
        port,
        &[
            "budget",
            "set",
            "user:carol",
            "--usd",
            "10",
            "--window",
            "month",
        ],
    )
    .await;
    let updated = ops(
        port,
        &[
            "key",
            "update",
            "carol",
            "--team",
            "sre",
            "--label",
            "on_call=yes",
        ],
    )
    .await;
    assert!(
        updated.contains("team:     sre") && updated.contains("labels:   on_call=yes"),
        "{updated}"
    );
    ops(port, &["key", "revoke", "carol"]).await;
    let reloaded = ops(port, &["reload"]).await;
    assert!(reloaded.contains("has not changed"), "{reloaded}");

    let audit = ops(port, &["audit", "--format", "json"]).await;
    assert!(!audit.contains(&secret), "the audit log holds a secret");
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ops", "key.create", "key:carol"),
            ("ops", "key.rotate", "key:carol"),
            ("ops", "metadata.set", "team:ops"),
            ("ops", "budget.set", "budget:user-carol-month"),
            ("ops", "key.update", "key:carol"),
            ("ops", "key.revoke", "key:carol"),
            ("ops", "config.reload", "config"),
        ],
        "{audit}"
    );
    for event in &events {
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
        assert!(
            event["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{event}"
        );
    }
    assert_eq!(events[0]["detail"]["team"], "ops");
    assert_eq!(events[3]["detail"]["usd"], 10.0);
    // The refused attempts changed nothing.
    let keys = ops(port, &["key", "list", "--all", "--format", "json"]).await;
    assert!(
        !keys.contains("mallory") && !keys.contains("dave"),
        "{keys}"
    );
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_keys_and_budgets_survive_a_restart_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock("alpha", None).await;
    let replica = Replica::new(&mock.base_url(), &embedded(&dir), "");
    let stack = replica.start().await;
    let secret = secret_of(
        &ops(
            replica.admin_api,
            &[
                "key",
                "create",
                "erin",
                "--budget-tokens",
                "1000000",
                "--budget-window",
                "total",
            ],
        )
        .await,
    );
    assert_eq!(chat(&stack, &secret, "m-alpha").await.0, 200);
    let spent_tokens = || async {
        let shown = ops(
            replica.admin_api,
            &["budget", "show", "key:erin", "--format", "json"],
        )
        .await;
        let shown: Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(shown["budgets"][0]["budget"], "key-erin-total", "{shown}");
        shown["budgets"][0]["spent_tokens"].as_u64().unwrap()
    };
    // The settlement runs off the request path: wait until it has landed.
    let started = Instant::now();
    let spent = loop {
        let spent = spent_tokens().await;
        if spent > 0 {
            break spent;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the request was never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(stack);

    // The same config and store file, a new process: the key, its budget and what it spent
    // are still there.
    let stack = replica.start().await;
    assert_eq!(spent_tokens().await, spent);
    let (status, body) = chat(&stack, &secret, "m-alpha").await;
    assert_eq!(status, 200, "{body}");
}
