//! HTTP load through a gateway: the scenarios' requests, the probes that check them, and the
//! closed-loop rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use gantry_mock_provider::{controls, MockProvider};
use reqwest::header::HeaderMap;
use serde_json::json;
use tokio::task::JoinSet;

use crate::auth::KEY_NAME;
use crate::budgets;
use crate::gateways::Gateway;
use crate::stats::{RoundStats, Tally};
use crate::{Settings, ALIAS, BODY_BYTES, REQUEST_TIMEOUT, UPSTREAM_MODEL, WARMUP};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Chat,
    Stream,
    /// The chat request with an API key, through baseline, gantry and gantry+auth.
    Authz,
    /// The chat request through baseline, gantry and the two budget gateways.
    Budgets,
    /// The chat request through baseline, gantry-module (the policy in Envoy's dynamic module)
    /// and gantry (ext_proc).
    ModuleChat,
    /// The stream request through the same three gateways.
    ModuleStream,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::Stream => "stream",
            Scenario::Authz => "authz",
            Scenario::Budgets => "budgets",
            Scenario::ModuleChat => "module-chat",
            Scenario::ModuleStream => "module-stream",
        }
    }

    /// Where the scenario goes in the JSON report's `scenarios`: a group and a key in it
    /// (`scenarios.module.chat`), or `None` for a key of its own (`scenarios.chat`).
    pub fn json_group(self) -> Option<(&'static str, &'static str)> {
        match self {
            Scenario::ModuleChat => Some(("module", "chat")),
            Scenario::ModuleStream => Some(("module", "stream")),
            Scenario::Chat | Scenario::Stream | Scenario::Authz | Scenario::Budgets => None,
        }
    }

    /// Whether the scenario compares the dynamic module with ext_proc.
    pub fn module(self) -> bool {
        matches!(self, Scenario::ModuleChat | Scenario::ModuleStream)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Chat => "non-streaming, JSON reply",
            Scenario::Stream => "\"stream\": true, SSE reply sent without delay",
            Scenario::Authz => {
                "the chat request plus `Authorization: Bearer <API key>` to every gateway; \
                 only gantry+auth checks it (ext_authz)"
            }
            Scenario::Budgets => {
                "the chat request to every gateway; the budget gateways admit it against two \
                 budgets and a rate limit in their store, and settle it when the reply ends"
            }
            Scenario::ModuleChat => {
                "the chat request (JSON reply) to baseline, gantry-module (policy in Envoy's \
                 dynamic module) and gantry (policy in ext_proc)"
            }
            Scenario::ModuleStream => {
                "the stream request (SSE reply sent without delay) to baseline, gantry-module \
                 (policy in Envoy's dynamic module) and gantry (policy in ext_proc)"
            }
        }
    }

    /// The gateways compared, in the order each round visits them.
    pub fn gateways(self) -> &'static [Gateway] {
        match self {
            Scenario::Chat | Scenario::Stream => &[Gateway::Baseline, Gateway::Gantry],
            Scenario::Authz => &[Gateway::Baseline, Gateway::Gantry, Gateway::GantryAuth],
            Scenario::Budgets => &[
                Gateway::Baseline,
                Gateway::Gantry,
                Gateway::GantryBudgetEmbedded,
                Gateway::GantryBudgetRedis,
            ],
            Scenario::ModuleChat | Scenario::ModuleStream => {
                &[Gateway::Baseline, Gateway::GantryModule, Gateway::Gantry]
            }
        }
    }

    fn streams(self) -> bool {
        matches!(self, Scenario::Stream | Scenario::ModuleStream)
    }
}

/// The request bodies, identical for every gateway.
pub struct RequestBodies {
    pub chat: String,
    pub stream: String,
}

impl RequestBodies {
    /// A system and a user message, the user text padded until the JSON body is ~1 KB.
    pub fn new() -> RequestBodies {
        let body = |content: &str, stream: bool| {
            let mut request = json!({
                "model": ALIAS,
                "messages": [
                    {
                        "role": "system",
                        "content": "You are a concise assistant. Answer in plain text, without lists.",
                    },
                    { "role": "user", "content": content },
                ],
                "max_tokens": 64,
                "temperature": 0.2,
            });
            if stream {
                request["stream"] = json!(true);
            }
            request.to_string()
        };
        let mut content =
            String::from("Summarize these notes from a gateway load test in two sentences.");
        while body(&content, false).len() < BODY_BYTES {
            content.push_str(" Requests went through Envoy to a mock provider and back.");
        }
        RequestBodies {
            chat: body(&content, false),
            stream: body(&content, true),
        }
    }

    fn get(&self, scenario: Scenario) -> &str {
        if scenario.streams() {
            &self.stream
        } else {
            &self.chat
        }
    }
}

/// One request, sent over and over.
pub struct Job {
    scenario: Scenario,
    url: String,
    body: String,
    /// The `Authorization` header, if any.
    authorization: Option<String>,
}

impl Job {
    pub fn new(
        scenario: Scenario,
        url: String,
        bodies: &RequestBodies,
        authorization: Option<&str>,
    ) -> Job {
        Job {
            scenario,
            url,
            body: bodies.get(scenario).to_owned(),
            authorization: authorization.map(str::to_owned),
        }
    }
}

/// A client with one keep-alive connection (HTTP/1.1, no proxy).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")
}

fn build_request(client: &reqwest::Client, job: &Job) -> reqwest::RequestBuilder {
    let mut request = client
        .post(&job.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(job.body.clone());
    if job.scenario.streams() {
        request = request.header(controls::CHUNK_DELAY_MS, "0");
    }
    if let Some(authorization) = &job.authorization {
        request = request.header(reqwest::header::AUTHORIZATION, authorization);
    }
    request
}

/// Sends the request and reads the whole reply; anything but a valid 200 reply is an error.
async fn send(client: &reqwest::Client, job: &Job) -> Result<(), String> {
    exchange(client, job).await.map(drop)
}

/// [`send`], returning the reply's headers.
async fn exchange(client: &reqwest::Client, job: &Job) -> Result<HeaderMap, String> {
    let mut response = build_request(client, job).send().await.map_err(describe)?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let body = response.bytes().await.map_err(describe)?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("HTTP {status}: {}", excerpt(&body)));
    }
    check_reply(job.scenario, &body)?;
    Ok(headers)
}

fn describe(error: reqwest::Error) -> String {
    format!("{:#}", anyhow::Error::from(error))
}

/// A chat completion, or for `stream` an SSE stream of chunks that ends with `[DONE]`.
fn check_reply(scenario: Scenario, body: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "the reply is not UTF-8".to_owned())?;
    let valid = text.contains("\"choices\"")
        && if scenario.streams() {
            text.starts_with("data: ") && text.trim_end().ends_with("data: [DONE]")
        } else {
            text.trim_start().starts_with('{')
        };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "not a valid {} reply: {}",
            scenario.name(),
            excerpt(body)
        ))
    }
}

pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(300).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// One request through `gateway`, checking the reply and what the mock received. Through
/// gantry+auth, also checks that the principal reached the mock and the key did not, and that
/// the same request without the key is refused with 401 before reaching the mock. Through a
/// budget gateway, checks that the reply shows the request admitted and charged by the budgets
/// and the rate limit; through any other, that it carries no budget headers. In the module
/// scenarios, checks that gantry-module's and gantry's replies carry the routing headers (and,
/// for JSON, the usage headers) Gantry's policy adds, and the baseline's none of them.
pub async fn probe(mock: &MockProvider, gateway: Gateway, job: &Job) -> anyhow::Result<()> {
    let name = job.scenario.name();
    mock.clear_recorded();
    let client = http_client()?;
    let headers = exchange(&client, job)
        .await
        .map_err(|error| anyhow!("{name} probe failed: {error}"))?;
    let governance = if gateway.governed() {
        budgets::check_admitted(&headers)
    } else {
        budgets::check_not_governed(&headers)
    };
    governance.map_err(|error| anyhow!("{name} probe: {error}"))?;
    if job.scenario.module() {
        check_policy_headers(gateway, job.scenario, &headers)
            .map_err(|error| anyhow!("{name} probe: {error}"))?;
    }
    let recorded = mock.recorded();
    let [request] = recorded.as_slice() else {
        bail!(
            "{name} probe: the mock received {} requests instead of 1",
            recorded.len()
        );
    };
    let model = request
        .json()
        .and_then(|body| body["model"].as_str().map(str::to_owned));
    if model.as_deref() != Some(gateway.upstream_model()) {
        bail!(
            "{name} probe: the mock received model {model:?} instead of {:?}",
            gateway.upstream_model()
        );
    }
    if gateway == Gateway::GantryAuth {
        let key = request.header("x-gantry-key");
        if key != Some(KEY_NAME) {
            bail!("{name} probe: the mock received x-gantry-key {key:?} instead of {KEY_NAME:?}");
        }
        if request.header("authorization").is_some() {
            bail!("{name} probe: the API key reached the mock (it should have been removed)");
        }
        mock.clear_recorded();
        let anonymous = Job {
            scenario: job.scenario,
            url: job.url.clone(),
            body: job.body.clone(),
            authorization: None,
        };
        let response = build_request(&client, &anonymous)
            .send()
            .await
            .with_context(|| format!("{name} probe: the request without the API key failed"))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status != reqwest::StatusCode::UNAUTHORIZED || !mock.recorded().is_empty() {
            bail!(
                "{name} probe: without the API key, gantry+auth answered HTTP {status} (the mock \
                 received {} requests) instead of 401 before the mock: {}",
                mock.recorded().len(),
                excerpt(&body)
            );
        }
    }
    mock.clear_recorded();
    Ok(())
}

/// The response headers Gantry's policy adds (in the dynamic module as in ext_proc): the
/// provider, the alias and the upstream model on every reply, and for a JSON reply the token
/// counts read from its usage. The baseline must have none of them.
fn check_policy_headers(
    gateway: Gateway,
    scenario: Scenario,
    headers: &HeaderMap,
) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let names = [
        "x-gantry-provider",
        "x-gantry-model",
        "x-gantry-upstream-model",
        "x-gantry-prompt-tokens",
    ];
    if gateway == Gateway::Baseline {
        return match names.iter().find(|name| headers.contains_key(**name)) {
            Some(name) => Err(format!("the baseline's reply carries {name}")),
            None => Ok(()),
        };
    }
    let who = gateway.name();
    for (name, expected) in [
        ("x-gantry-provider", "mock"),
        ("x-gantry-model", ALIAS),
        ("x-gantry-upstream-model", UPSTREAM_MODEL),
    ] {
        if header(name) != Some(expected) {
            return Err(format!(
                "{who}'s reply carries {name} {:?} instead of {expected:?}",
                header(name)
            ));
        }
    }
    if !scenario.streams() {
        let tokens = header("x-gantry-prompt-tokens");
        let count = tokens.and_then(|t| t.parse::<u64>().ok());
        if count.unwrap_or(0) == 0 {
            return Err(format!(
                "{who}'s reply carries x-gantry-prompt-tokens {tokens:?} instead of the prompt's \
                 token count"
            ));
        }
    }
    Ok(())
}

/// When a round's requests count: sent at or after `measure_from` and before `until`.
#[derive(Clone, Copy)]
pub struct Window {
    pub measure_from: Instant,
    pub until: Instant,
}

impl Window {
    /// A warm-up from now, then `seconds` of measurement.
    pub fn starting_now(seconds: Duration) -> Window {
        let start = Instant::now();
        Window {
            measure_from: start + WARMUP,
            until: start + WARMUP + seconds,
        }
    }
}

/// A warm-up, then a measured window, with `concurrency` connections in a closed loop.
pub async fn run_round(job: Arc<Job>, settings: &Settings) -> anyhow::Result<RoundStats> {
    let clients = (0..settings.concurrency)
        .map(|_| http_client())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let window = Window::starting_now(settings.seconds);
    let mut connections = JoinSet::new();
    for client in clients {
        connections.spawn(connection_loop(client, Arc::clone(&job), window));
    }
    let mut total = Tally::default();
    while let Some(tally) = connections.join_next().await {
        total.absorb(tally.context("a load task failed")?);
    }
    Ok(RoundStats::new(total, settings.seconds))
}

/// Request after request on one connection until the window closes. Errors count whenever they
/// happen, warm-up included; latencies only inside the measured window.
async fn connection_loop(client: reqwest::Client, job: Arc<Job>, window: Window) -> Tally {
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= window.until {
            return tally;
        }
        let outcome = send(&client, &job).await;
        tally.record(outcome, sent.elapsed(), sent >= window.measure_from);
    }
}
