//! Budgets, rate limits and the spend log through real Envoy: reservations under concurrency,
//! settlement of streams and aborted requests, durability across a restart, two replicas sharing
//! one real Redis, the store's failure modes, and a calendar window that resets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_policy::auth::api_keys::KeyHash;
use gantry_testkit::{
    free_ports, wait_for, GantryStack, GatedSseUpstream, RedisServer, StackPorts,
};
use serde_json::{json, Value};

use crate::{
    assert_openai_error, gantry_bin, http, json_of, scrape_metrics, start_mock, start_stack,
};

const TEAM_KEY: &str = "gk_budget_team_key";

/// A Gantry config for one mock provider (`m-alpha` → `alpha-1`, priced at $1000 input and
/// $2000 output per million tokens, i.e. $0.001 / $0.002 a token), with `governance` given.
struct GovernedConfig {
    ports: StackPorts,
    yaml: String,
    /// A copy of the config for `gantry spend`.
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl GovernedConfig {
    fn new(endpoint: &str, governance: &str, extra: &str) -> GovernedConfig {
        let ports = StackPorts::free();
        let yaml = format!(
            "{head}providers:
  - {{ name: alpha, kind: openai, endpoint: '{endpoint}' }}
models:
  - {{ name: m-alpha, provider: alpha, model: alpha-1 }}
{extra}governance:
  pricing:
    models:
      m-alpha: {{ input: 1000, output: 2000 }}
{governance}",
            head = ports.config_head(),
        );
        let dir = tempfile::Builder::new()
            .prefix("gantry-governed")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("gantry.yaml");
        std::fs::write(&path, &yaml).expect("write config");
        GovernedConfig {
            ports,
            yaml,
            path,
            _dir: dir,
        }
    }

    async fn start(&self, env: Vec<(&'static str, &'static str)>) -> GantryStack {
        start_stack(self.ports, self.yaml.clone(), env).await
    }
}

/// An embedded store file in a fresh directory: `(dir, "store:" section)`.
fn embedded_store() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("gantry-store")
        .tempdir()
        .expect("temp dir");
    let section = format!(
        "  store: {{ kind: embedded, path: '{}' }}\n",
        dir.path().join("gantry.db").display()
    );
    (dir, section)
}

fn redis_store(redis: &RedisServer) -> String {
    format!(
        "  store: {{ kind: redis, url: '{}', timeout_ms: 300 }}\n",
        redis.url()
    )
}

fn chat(max_tokens: u64) -> String {
    json!({"model": "m-alpha", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

async fn post_chat(stack: &GantryStack, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = http()
        .post(stack.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request reaches the gateway")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `gantry spend --records --format json` for a config: the spend log, one record a line.
fn spend_records(config: &Path) -> Vec<Value> {
    let output = Command::new(gantry_bin())
        .args(["spend", "--records", "--format", "json", "--config"])
        .arg(config)
        .output()
        .expect("run gantry spend");
    assert!(
        output.status.success(),
        "gantry spend failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
        .collect()
}

/// Waits until the spend log holds `count` records satisfying `matches`.
fn wait_for_records(config: &Path, what: &str, matches: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(what, Duration::from_secs(20), || {
        let records = spend_records(config);
        matches(&records).then_some(records)
    })
}

fn outcome_count(records: &[Value], outcome: &str) -> usize {
    records.iter().filter(|r| r["outcome"] == outcome).count()
}

fn cost_sum(records: &[Value]) -> i64 {
    records
        .iter()
        .map(|r| r["cost_nanos"].as_i64().expect("cost_nanos"))
        .sum()
}

const NANOS_PER_USD: f64 = 1e9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_overspend_a_small_budget() {
    let mock = start_mock("alpha", None).await;
    let (_store_dir, store) = embedded_store();
    // Each request reserves 9 input tokens (estimate) + 10 output (max_tokens) = $0.029, and
    // really costs 1 input word + 10 output words = $0.021 on the mock.
    let limit_usd = 0.5;
    let auth_port = free_ports(1)[0];
    let config = GovernedConfig::new(
        &mock.base_url(),
        &format!(
            "{store}  budgets:
    - {{ name: team-total, scope: '\"team:\" + principal.team', usd: {limit_usd}, window: total }}
"
        ),
        &format!(
            "auth:
  listen: 127.0.0.1:{auth_port}
  api_keys:
    - {{ name: budget-key, hash: '{}', team: eng }}
",
            KeyHash::of(TEAM_KEY)
        ),
    );
    let stack = config.start(vec![]).await;
    let bearer = format!("Bearer {TEAM_KEY}");

    let requests = (0..100).map(|_| {
        let stack = &stack;
        let bearer = bearer.as_str();
        async move {
            let response = post_chat(stack, &chat(10), &[("authorization", bearer)]).await;
            let remaining = header(&response, "x-gantry-budget-remaining-usd").map(String::from);
            let (status, body) = json_of(response).await;
            (status, body, remaining)
        }
    });
    let results = futures::future::join_all(requests).await;
    let admitted = results.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(s, _, _)| *s == 429)
        .map(|(_, b, _)| b)
        .collect();
    assert_eq!(
        admitted + refused.len(),
        100,
        "only 200 and 429: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(!refused.is_empty(), "the budget must run out");
    for body in &refused {
        let message = assert_openai_error(body, "budget_exceeded");
        assert!(
            message.contains("team-total") && message.contains("team:eng"),
            "{message}"
        );
    }
    // At most limit / reservation can be in flight at once, and each success frees part of
    // its reservation: at least floor(0.5 / 0.029) = 17 get through.
    assert!(admitted >= 17, "only {admitted} admitted");
    for (status, _, remaining) in &results {
        if *status == 200 {
            let remaining: f64 = remaining
                .as_deref()
                .expect("remaining header")
                .parse()
                .unwrap();
            assert!((0.0..=limit_usd).contains(&remaining), "{remaining}");
        }
    }

    // The spend log has every request; what was charged is the real usage and stays within
    // the limit (the documented bound is zero here: every request sets max_tokens and the
    // estimate covers the real input).
    let records = wait_for_records(&config.path, "100 spend records", |r| r.len() >= 100);
    assert_eq!(outcome_count(&records, "ok"), admitted);
    assert_eq!(outcome_count(&records, "budget_exceeded"), refused.len());
    let ok: Vec<Value> = records
        .iter()
        .filter(|r| r["outcome"] == "ok")
        .cloned()
        .collect();
    for record in &ok {
        assert_eq!(record["team"], "eng");
        assert_eq!(record["api_key"], "budget-key");
        assert_eq!(record["output_tokens"], 10, "{record}");
        assert_eq!(record["cost_nanos"], 21_000_000, "{record}");
    }
    let spent = cost_sum(&ok) as f64 / NANOS_PER_USD;
    assert!(spent <= limit_usd, "spent ${spent} of ${limit_usd}");

    // Sequential requests use up what the concurrent ones left; once refused, every
    // reservation has been settled (nothing reserved) and what is left is less than one
    // request's reservation.
    let mut more = 0;
    let message = loop {
        let response = post_chat(&stack, &chat(10), &[("authorization", &bearer)]).await;
        let (status, body) = json_of(response).await;
        if status == 429 {
            break assert_openai_error(&body, "budget_exceeded");
        }
        assert_eq!(status, 200, "{body}");
        more += 1;
        assert!(more < 30, "the budget never ran out");
    };
    assert!(message.contains("$0.000000 reserved"), "{message}");
    let records = wait_for_records(&config.path, "every record", |r| {
        r.len() >= 101 + more && outcome_count(r, "ok") == admitted + more
    });
    let spent = cost_sum(&records) as f64 / NANOS_PER_USD;
    assert!(spent <= limit_usd, "spent ${spent} of ${limit_usd}");
    assert!(
        limit_usd - spent < 0.029,
        "a request that fits was refused: spent only ${spent}"
    );
    assert!(
        message.contains(&format!("${spent:.6} spent")),
        "{message} (spent {spent})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_usage_settles_and_is_logged() {
    let mock = start_mock("alpha", None).await;
    let (_store_dir, store) = embedded_store();
    let config = GovernedConfig::new(
        &mock.base_url(),
        &format!(
            "{store}  budgets:
    - {{ name: global, scope: '\"global\"', usd: 100, tokens: 100000, window: day }}
"
        ),
        "",
    );
    let stack = config.start(vec![]).await;
    let body = json!({"model": "m-alpha", "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "tell me something"}]})
    .to_string();
    let response = post_chat(&stack, &body, &[("x-request-id", "stream-1")]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gantry-budget"), Some("global"));
    assert!(header(&response, "x-gantry-budget-reset").is_some());
    let text = response.text().await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "injected usage must be stripped: {text}"
    );

    let records = wait_for_records(&config.path, "the stream's record", |r| {
        r.iter().any(|r| r["request_id"] == "stream-1")
    });
    let record = records
        .iter()
        .find(|r| r["request_id"] == "stream-1")
        .unwrap();
    assert_eq!(record["outcome"], "ok");
    assert_eq!(record["stream"], true);
    // The mock counts words: 3 prompt words; its reply has 14.
    assert_eq!(record["input_tokens"], 3, "{record}");
    assert_eq!(record["output_tokens"], 14, "{record}");
    assert_eq!(record["cost_nanos"], 3 * 1_000_000 + 14 * 2_000_000);
    // The access log line carries the cost, and the request id that joins it to the record.
    let line = stack.wait_for_access_log("the stream's line with its cost", |e| {
        e["request_id"] == "stream-1" && e["cost_usd"].is_number()
    });
    let cost = line["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.031).abs() < 1e-9, "{line}");

    // The next request sees the stream's real cost spent, not its reservation.
    let response = post_chat(&stack, &chat(1), &[]).await;
    let remaining_tokens: i64 = header(&response, "x-gantry-budget-remaining-tokens")
        .expect("token header")
        .parse()
        .unwrap();
    // 100000 - 17 (stream) - this request's reservation (9 + 1).
    assert_eq!(remaining_tokens, 100_000 - 17 - 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_releases_the_reservation() {
    let mut upstream = GatedSseUpstream::start().await;
    let (_store_dir, store) = embedded_store();
    // One request reserves 9 + 100 = 109 tokens: a second one does not fit while it is held.
    let config = GovernedConfig::new(
        &format!("http://{}", upstream.addr()),
        &format!(
            "{store}  budgets:
    - {{ name: small, scope: '\"global\"', tokens: 160, window: total }}
"
        ),
        "",
    );
    let stack = config.start(vec![]).await;
    let body = json!({"model": "m-alpha", "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();

    let client = tokio::spawn({
        let url = stack.url("/v1/chat/completions");
        let body = body.clone();
        async move {
            http()
                .post(url)
                .header("content-type", "application/json")
                .header("x-request-id", "aborted-1")
                .body(body)
                .send()
                .await
                .expect("stream starts")
        }
    });
    let exchange = upstream.next_exchange(Duration::from_secs(15)).await;
    exchange.send(r#"{"id":"c1","object":"chat.completion.chunk","model":"alpha-1","choices":[{"index":0,"delta":{"content":"first"},"finish_reason":null}],"usage":null}"#);
    let response = client.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first chunk in time")
        .expect("a chunk")
        .expect("chunk ok");
    assert!(String::from_utf8_lossy(&first).contains("first"));

    // While the stream holds its reservation, another request does not fit.
    let (status, refused) = json_of(post_chat(&stack, &chat(100), &[]).await).await;
    assert_eq!(status, 429, "{refused}");
    let message = assert_openai_error(&refused, "budget_exceeded");
    assert!(message.contains("109 reserved"), "{message}");

    // The client goes away mid-stream.
    drop(stream);

    // The reservation is released: the same request fits again.
    let mut readmitted = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while readmitted.is_none() && Instant::now() < deadline {
        let response = post_chat(&stack, &chat(1), &[]).await;
        if response.status() == 200 {
            readmitted = Some(response);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        readmitted.is_some(),
        "the aborted stream's reservation was never released"
    );
    drop(exchange);

    let records = wait_for_records(&config.path, "the aborted record", |r| {
        r.iter().any(|r| r["request_id"] == "aborted-1")
    });
    let record = records
        .iter()
        .find(|r| r["request_id"] == "aborted-1")
        .unwrap();
    assert_eq!(record["outcome"], "aborted", "{record}");
    // Billed its estimated input and the one event it got, not its reservation.
    assert_eq!(record["input_tokens"], 9, "{record}");
    assert_eq!(record["output_tokens"], 1, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_spend() {
    let mock = start_mock("alpha", None).await;
    let (_store_dir, store) = embedded_store();
    let config = GovernedConfig::new(
        &mock.base_url(),
        &format!(
            "{store}  budgets:
    - {{ name: global, scope: '\"global\"', tokens: 10000, window: month }}
  rate_limits:
    - {{ name: per-minute, scope: '\"global\"', requests_per_minute: 10 }}
"
        ),
        "",
    );
    let mut stack = config.start(vec![]).await;
    for i in 0..5 {
        let id = format!("before-{i}");
        let response = post_chat(&stack, &chat(10), &[("x-request-id", &id)]).await;
        assert_eq!(response.status(), 200);
    }
    // Each settles with 1 + 10 = 11 tokens; the records are written after their settlement.
    wait_for_records(&config.path, "5 records", |r| r.len() == 5);

    // Killed without a chance to flush anything.
    stack.process.signal(libc::SIGKILL);
    stack.process.wait_exit(Duration::from_secs(10));
    let listen = stack.listen;
    drop(stack);
    wait_for(
        "the old Envoy to free its port",
        Duration::from_secs(20),
        || std::net::TcpListener::bind(listen).ok().map(drop),
    );

    let stack = config.start(vec![]).await;
    let response = post_chat(&stack, &chat(10), &[]).await;
    assert_eq!(response.status(), 200);
    let remaining: i64 = header(&response, "x-gantry-budget-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        remaining,
        10_000 - 5 * 11 - 19,
        "spend from before the restart"
    );
    // The rate bucket came back too (written at most a second late, so at least the first
    // request's share survived kill -9): no fresh minute of requests after a restart.
    let left: u64 = header(&response, "x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    assert!((4..=8).contains(&left), "{left} requests left of 10");
    wait_for_records(&config.path, "6 records", |r| r.len() == 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_enforce_one_limit() {
    let redis = RedisServer::start();
    let mock = start_mock("alpha", None).await;
    let governance = format!(
        "{}  rate_limits:
    - {{ name: shared, scope: '\"global\"', requests_per_minute: 10 }}
",
        redis_store(&redis)
    );
    let one = GovernedConfig::new(&mock.base_url(), &governance, "");
    let two = GovernedConfig::new(&mock.base_url(), &governance, "");
    let (a, b) = tokio::join!(one.start(vec![]), two.start(vec![]));

    let started = Instant::now();
    let requests = (0..30).map(|i| {
        let stack = if i % 2 == 0 { &a } else { &b };
        async move {
            let response = post_chat(stack, &chat(5), &[]).await;
            let headers = (
                header(&response, "x-ratelimit-limit-requests").map(String::from),
                header(&response, "retry-after").map(String::from),
            );
            let (status, body) = json_of(response).await;
            (i % 2, status, body, headers)
        }
    });
    let results = futures::future::join_all(requests).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let admitted = results.iter().filter(|r| r.1 == 200).count();
    // A GCRA bucket of 10 a minute: 10 at once, then one more every 6 s.
    let allowed = 10 + (elapsed.as_secs() / 6) as usize;
    assert!(
        (10..=allowed).contains(&admitted),
        "{admitted} admitted by two replicas, {allowed} allowed"
    );
    for replica in 0..2 {
        assert!(
            results.iter().any(|r| r.0 == replica && r.1 == 429),
            "replica {replica} refused nothing: its limit is not shared"
        );
    }
    for (_, status, body, (limit, retry_after)) in &results {
        assert_eq!(limit.as_deref(), Some("10"), "{body}");
        if *status == 429 {
            let message = assert_openai_error(body, "rate_limit_exceeded");
            assert!(message.contains("shared"), "{message}");
            let retry: u64 = retry_after
                .as_deref()
                .expect("retry-after")
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    assert_eq!(
        mock.recorded().len(),
        admitted,
        "refused requests never reach the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_keep_one_budget() {
    let redis = RedisServer::start();
    let mock = start_mock("alpha", None).await;
    // Each request reserves $0.029 and costs $0.021 (see the concurrency test).
    let limit_usd = 0.2;
    let governance = format!(
        "{}  budgets:
    - {{ name: shared-usd, scope: '\"global\"', usd: {limit_usd}, window: total }}
",
        redis_store(&redis)
    );
    let one = GovernedConfig::new(&mock.base_url(), &governance, "");
    let two = GovernedConfig::new(&mock.base_url(), &governance, "");
    let (a, b) = tokio::join!(one.start(vec![]), two.start(vec![]));

    let requests = (0..40).map(|i| {
        let stack = if i % 2 == 0 { &a } else { &b };
        async move {
            (
                i % 2,
                post_chat(stack, &chat(10), &[]).await.status().as_u16(),
            )
        }
    });
    let results = futures::future::join_all(requests).await;
    let admitted = results.iter().filter(|r| r.1 == 200).count();
    assert!(
        results.iter().all(|r| r.1 == 200 || r.1 == 429),
        "{results:?}"
    );
    assert!(
        admitted >= 6,
        "only {admitted} admitted (0.2 / 0.029 = 6 fit at once)"
    );
    assert!(
        admitted <= 9,
        "{admitted} admitted: more than 0.2 / 0.021 = 9 fit in the budget"
    );
    for replica in 0..2 {
        assert!(
            results.iter().any(|r| r.0 == replica && r.1 == 429),
            "replica {replica} refused nothing: its budget is not shared"
        );
    }
    // Both replicas write one spend log in Redis, readable through either config.
    let records = wait_for_records(&one.path, "40 records", |r| r.len() >= 40);
    assert_eq!(outcome_count(&records, "ok"), admitted);
    let spent = cost_sum(&records) as f64 / NANOS_PER_USD;
    assert!(spent <= limit_usd, "spent ${spent} of ${limit_usd}");
    assert_eq!(spend_records(&two.path).len(), records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_follows_the_failure_mode() {
    let mut redis = RedisServer::start();
    let mock = start_mock("alpha", None).await;
    let budget = "  budgets:
    - { name: global, scope: '\"global\"', tokens: 100000, window: day }
";
    let metrics = free_ports(2);
    let closed = GovernedConfig::new(
        &mock.base_url(),
        &format!("{}{budget}", redis_store(&redis)),
        &format!("metrics: {{ listen: '127.0.0.1:{}' }}\n", metrics[0]),
    );
    let open = GovernedConfig::new(
        &mock.base_url(),
        &format!(
            "{}  failure_mode: {{ budgets: open }}\n{budget}",
            redis_store(&redis)
        ),
        &format!("metrics: {{ listen: '127.0.0.1:{}' }}\n", metrics[1]),
    );
    let (closed_stack, open_stack) = tokio::join!(closed.start(vec![]), open.start(vec![]));
    for stack in [&closed_stack, &open_stack] {
        let response = post_chat(stack, &chat(5), &[]).await;
        assert_eq!(response.status(), 200);
        assert!(header(&response, "x-gantry-budget-remaining-tokens").is_some());
    }

    redis.stop();
    mock.clear_recorded();
    let (status, body) = json_of(post_chat(&closed_stack, &chat(5), &[]).await).await;
    assert_eq!(status, 503, "{body}");
    let message = assert_openai_error(&body, "gantry_store_unavailable");
    assert!(message.contains("budgets"), "{message}");
    assert!(
        mock.recorded().is_empty(),
        "fail closed: nothing reaches the provider"
    );

    let response = post_chat(&open_stack, &chat(5), &[]).await;
    assert_eq!(response.status(), 200, "fail open lets the request through");
    assert!(header(&response, "x-gantry-budget-remaining-tokens").is_none());
    assert_eq!(mock.recorded().len(), 1);

    // Both say so on /metrics.
    let closed_metrics = scrape_metrics(metrics[0]).await;
    assert!(
        closed_metrics.contains(
            "gantry_store_unavailable_requests_total{store=\"redis\",action=\"refused\"} 1\n"
        ),
        "{closed_metrics}"
    );
    assert!(
        metric_value(
            &closed_metrics,
            "gantry_store_errors_total{store=\"redis\",operation=\"admit\"}"
        ) >= 1,
        "{closed_metrics}"
    );
    let open_metrics = scrape_metrics(metrics[1]).await;
    assert!(
        open_metrics.contains(
            "gantry_store_unavailable_requests_total{store=\"redis\",action=\"passed\"} 1\n"
        ),
        "{open_metrics}"
    );

    // Redis comes back (empty): metering resumes without restarting Gantry.
    redis.start_again();
    let mut metered = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !metered && Instant::now() < deadline {
        let response = post_chat(&closed_stack, &chat(5), &[]).await;
        metered = response.status() == 200
            && header(&response, "x-gantry-budget-remaining-tokens").is_some();
        if !metered {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(metered, "metering did not resume after Redis came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_window_resets_on_the_calendar_boundary() {
    let mock = start_mock("alpha", None).await;
    let (_store_dir, store) = embedded_store();
    // One request reserves 19 tokens and spends 11: the second in the same minute is refused.
    let config = GovernedConfig::new(
        &mock.base_url(),
        &format!(
            "{store}  time_zone: Asia/Kolkata
  budgets:
    - {{ name: per-minute, scope: '\"global\"', tokens: 25, window: minute }}
"
        ),
        "",
    );
    let stack = config.start(vec![]).await;
    // Start just after a minute boundary, so that two requests share one window.
    let now = jiff::Timestamp::now();
    if now.as_second() % 60 > 50 {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    let first = post_chat(&stack, &chat(10), &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-gantry-budget-remaining-tokens"),
        Some("6"),
        "25 - 19 reserved"
    );
    let reset = header(&first, "x-gantry-budget-reset")
        .expect("reset header")
        .to_string();
    let reset_at: jiff::Timestamp = reset.parse().expect("RFC 3339 reset");
    assert_eq!(
        reset_at.as_second() % 60,
        0,
        "a minute window ends on a minute: {reset}"
    );
    assert!(reset_at > jiff::Timestamp::now());

    let (status, body) = json_of(post_chat(&stack, &chat(10), &[]).await).await;
    assert_eq!(status, 429, "{body}");
    let message = assert_openai_error(&body, "budget_exceeded");
    assert!(message.contains(&format!("resets at {reset}")), "{message}");

    // After the boundary the window starts from zero.
    let response = wait_until_admitted(&stack, Duration::from_secs(75)).await;
    assert!(jiff::Timestamp::now() >= reset_at);
    let remaining: i64 = header(&response, "x-gantry-budget-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(remaining, 25 - 19, "a fresh window");
}

fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

async fn wait_until_admitted(stack: &GantryStack, deadline: Duration) -> reqwest::Response {
    let until = Instant::now() + deadline;
    loop {
        let response = post_chat(stack, &chat(10), &[]).await;
        if response.status() == 200 {
            return response;
        }
        assert!(Instant::now() < until, "never admitted again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_reports_group_by_key_and_day() {
    let mock = start_mock("alpha", None).await;
    let (_store_dir, store) = embedded_store();
    let config = GovernedConfig::new(&mock.base_url(), &store, "");
    let stack = config.start(vec![]).await;
    for _ in 0..3 {
        assert_eq!(post_chat(&stack, &chat(10), &[]).await.status(), 200);
    }
    wait_for_records(&config.path, "3 records", |r| r.len() == 3);
    let output = Command::new(gantry_bin())
        .args(["spend", "--by", "model,day", "--format", "csv", "--config"])
        .arg(&config.path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let csv = String::from_utf8_lossy(&output.stdout);
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    assert!(
        csv.starts_with(
            "model,day,requests,refused,input_tokens,cached_input_tokens,output_tokens,cost_usd\n"
        ),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("m-alpha,{today},3,0,3,0,30,0.063000")),
        "{csv}"
    );
    let output = Command::new(gantry_bin())
        .args(["spend", "--by", "nonsense", "--config"])
        .arg(&config.path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown group 'nonsense'"));
    drop(mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_budgets_count_overruns_but_never_refuse() {
    let mock = start_mock("alpha", None).await;
    let (_store_dir, store) = embedded_store();
    let metrics = free_ports(1)[0];
    // Each request reserves 19 tokens: the second and third go over the audit limit of 20.
    let config = GovernedConfig::new(
        &mock.base_url(),
        &format!(
            "{store}  budgets:
    - {{ name: watch, scope: '\"global\"', tokens: 20, window: total, action: audit }}
"
        ),
        &format!("metrics: {{ listen: '127.0.0.1:{metrics}' }}\n"),
    );
    let stack = config.start(vec![]).await;
    for _ in 0..3 {
        let response = post_chat(&stack, &chat(10), &[]).await;
        assert_eq!(response.status(), 200, "audit budgets never refuse");
        assert_eq!(header(&response, "x-gantry-budget"), Some("watch"));
    }
    let text = scrape_metrics(metrics).await;
    assert!(
        text.contains("gantry_budget_audit_overruns_total{store=\"embedded\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("gantry_budget_refusals_total{store=\"embedded\",reason=\"budget\"} 0\n"),
        "{text}"
    );
    let records = wait_for_records(&config.path, "3 records", |r| r.len() == 3);
    assert_eq!(outcome_count(&records, "ok"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_records_beyond_their_retention_are_deleted() {
    use gantry_policy::governance::ledger::{SpendOutcome, SpendRecord};
    use gantry_store::Store;

    let mock = start_mock("alpha", None).await;
    let (store_dir, store) = embedded_store();
    // A store with a 40-day-old record and a 1-hour-old one, as an earlier run left it.
    let now = jiff::Timestamp::now().as_millisecond();
    let record = |age_ms: i64, id: &str| SpendRecord {
        time_ms: now - age_ms,
        request_id: id.to_string(),
        subject: String::new(),
        user: String::new(),
        team: String::new(),
        api_key: String::new(),
        model: "m-alpha".into(),
        upstream_model: "alpha-1".into(),
        provider: "alpha".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost_nanos: 3_000_000,
        status: 200,
        outcome: SpendOutcome::Ok,
        latency_ms: 1,
        stream: false,
    };
    {
        let file = gantry_store::EmbeddedStore::open(
            &store_dir.path().join("gantry.db"),
            gantry_policy::config::StoreDurability::Normal,
        )
        .expect("open the store");
        file.record_spend(&[record(40 * 86_400_000, "old"), record(3_600_000, "recent")])
            .await
            .expect("seed the spend log");
    }
    let config = GovernedConfig::new(
        &mock.base_url(),
        &format!("{store}  spend_log: {{ retention_days: 30 }}\n"),
        "",
    );
    let _stack = config.start(vec![]).await;
    let records = wait_for_records(&config.path, "the old record pruned at start", |r| {
        r.iter().all(|r| r["request_id"] != "old")
    });
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["request_id"], "recent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_over_request_is_billed_as_the_target_that_served_it() {
    let broken = crate::start_failing_mock("broken", None, Some(500), Duration::ZERO).await;
    let healthy = start_mock("healthy", None).await;
    let (_store_dir, store) = embedded_store();
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: broken, kind: openai, endpoint: '{broken}' }}
  - {{ name: healthy, kind: openai, endpoint: '{healthy}' }}
models:
  - name: failing-over
    targets:
      - {{ provider: broken, model: b-1 }}
      - {{ provider: healthy, model: h-1, priority: 1 }}
governance:
  pricing:
    models:
      b-1: {{ input: 1, output: 1 }}
      h-1: {{ input: 1000, output: 2000 }}
{store}  spend_log: {{ enabled: true }}
",
        head = ports.config_head(),
        broken = broken.base_url(),
        healthy = healthy.base_url(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let stack = start_stack(ports, yaml, vec![]).await;
    let body = json!({"model": "failing-over", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let response = post_chat(&stack, &body, &[("x-request-id", "failed-over-1")]).await;
    assert_eq!(response.status(), 200);
    let records = wait_for_records(&path, "the failed-over record", |r| {
        r.iter().any(|r| r["request_id"] == "failed-over-1")
    });
    let record = records
        .iter()
        .find(|r| r["request_id"] == "failed-over-1")
        .unwrap();
    assert_eq!(
        (&record["provider"], &record["upstream_model"]),
        (&json!("healthy"), &json!("h-1")),
        "{record}"
    );
    let (input, output) = (
        record["input_tokens"].as_i64().unwrap(),
        record["output_tokens"].as_i64().unwrap(),
    );
    assert!(input > 0 && output > 0, "{record}");
    // Priced as h-1 ($1000/$2000 per million), not as b-1, the target planned first.
    assert_eq!(
        record["cost_nanos"].as_i64().unwrap(),
        input * 1_000_000 + output * 2_000_000,
        "{record}"
    );
}
