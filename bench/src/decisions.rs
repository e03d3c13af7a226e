//! The raw decision rate of Gantry's ext_authz server: `Check` calls straight to `gantry serve`
//! (no Envoy), shaped like the ones Envoy sends for the benchmark's chat request, at
//! `--concurrency` HTTP/2 connections with one call in flight each.
//!
//! Three kinds of decision, each expected to allow:
//! - `api_key`: an API key as `Authorization: Bearer` (one SHA-256 and a table lookup);
//! - `jwt`: an RS256 token (2048-bit key, JWKS from a file) as `Authorization: Bearer`;
//! - `api_key_rules`: the API key, against a server whose config adds three CEL rules over
//!   `request.path` and `principal.team` (all three are evaluated for this request).
//!
//! `api_key` and `jwt` go to one `gantry serve`; `api_key_rules` to a second one with the rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttributeRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::Timestamp;
use gantry_testkit::{free_ports, loopback, ChildProcess, StackPorts};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{self, Credentials, JWT_SUBJECT, KEY_USER};
use crate::gateways::{blocking, ensure_running, gantry_config, indent, logs_tail};
use crate::load::{excerpt, Window};
use crate::stats::{table_header, Delta, RoundStats, Summary, Tally, Unit};
use crate::{Settings, CHAT_PATH, GANTRY_LOG_FILTER, REQUEST_TIMEOUT, WARMUP};

/// gRPC status codes in check responses.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;
/// The gateway address the check requests name (no listener is involved).
const GATEWAY_HOST: &str = "127.0.0.1:10000";
/// The client address the check requests name.
const CLIENT_IP: &str = "127.0.0.1";
const CLIENT_PORT: u32 = 43_210;
const LABEL_WIDTH: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionKind {
    ApiKey,
    Jwt,
    Rules,
}

impl DecisionKind {
    const ALL: [DecisionKind; 3] = [DecisionKind::ApiKey, DecisionKind::Jwt, DecisionKind::Rules];

    pub fn name(self) -> &'static str {
        match self {
            DecisionKind::ApiKey => "api_key",
            DecisionKind::Jwt => "jwt",
            DecisionKind::Rules => "api_key_rules",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            DecisionKind::ApiKey => "API key as Authorization: Bearer, no rules",
            DecisionKind::Jwt => {
                "RS256 JWT (RSA 2048, JWKS file) as Authorization: Bearer, no rules"
            }
            DecisionKind::Rules => "API key, plus 3 CEL rules over request.path and principal.team",
        }
    }

    /// The principal the server must admit: `x-gantry-subject` and `x-gantry-auth-method`.
    fn principal(self) -> (&'static str, &'static str) {
        match self {
            DecisionKind::ApiKey | DecisionKind::Rules => (KEY_USER, "api_key"),
            DecisionKind::Jwt => (JWT_SUBJECT, "jwt"),
        }
    }

    /// The check request measured: the benchmark's chat request with this kind's credential.
    fn request(self, credentials: &Credentials, body_bytes: usize) -> CheckRequest {
        let authorization = match self {
            DecisionKind::ApiKey | DecisionKind::Rules => credentials.api_key_bearer(),
            DecisionKind::Jwt => credentials.token_bearer(),
        };
        check_request(CHAT_PATH, &authorization, body_bytes)
    }

    /// A request the server must refuse, and the gRPC code it must refuse it with: a wrong
    /// key, a token whose payload was swapped under its signature, a path a rule denies.
    fn refused_request(
        self,
        credentials: &Credentials,
        body_bytes: usize,
    ) -> (CheckRequest, i32, &'static str) {
        match self {
            DecisionKind::ApiKey => {
                let wrong = format!("Bearer {}x", credentials.api_key);
                (
                    check_request(CHAT_PATH, &wrong, body_bytes),
                    GRPC_UNAUTHENTICATED,
                    "a wrong API key",
                )
            }
            DecisionKind::Jwt => {
                let forged = gantry_testkit::jwt::tamper_payload(
                    &credentials.token,
                    json!({ "iss": auth::JWT_ISSUER, "sub": "admin", "aud": auth::JWT_AUDIENCE }),
                );
                (
                    check_request(CHAT_PATH, &format!("Bearer {forged}"), body_bytes),
                    GRPC_UNAUTHENTICATED,
                    "a token with a forged payload",
                )
            }
            DecisionKind::Rules => (
                check_request("/admin/keys", &credentials.api_key_bearer(), body_bytes),
                GRPC_PERMISSION_DENIED,
                "a path the deny rule matches",
            ),
        }
    }
}

/// A check request as Envoy's ext_authz filter sends it for `POST <path>` (no body: the
/// benchmark's configs do not ask for it).
fn check_request(path: &str, authorization: &str, body_bytes: usize) -> CheckRequest {
    let headers: HashMap<String, String> = [
        (":authority", GATEWAY_HOST),
        (":method", "POST"),
        (":path", path),
        (":scheme", "http"),
        ("authorization", authorization),
        ("content-type", "application/json"),
        ("content-length", &body_bytes.to_string()),
        ("user-agent", "gantry-bench"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c2a4e-8b3d-4f5a-9c7e-0d1b2a3c4d5e"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    let socket = |ip: &str, port: u32| Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(socket(CLIENT_IP, CLIENT_PORT)),
                ..Peer::default()
            }),
            destination: Some(Peer {
                address: Some(socket("127.0.0.1", 10_000)),
                ..Peer::default()
            }),
            request: Some(AttributeRequest {
                time: Some(Timestamp {
                    seconds: i64::try_from(now.as_secs()).unwrap_or_default(),
                    nanos: i32::try_from(now.subsec_nanos()).unwrap_or_default(),
                }),
                http: Some(HttpRequest {
                    id: "8216355375112370731".to_owned(),
                    method: "POST".to_owned(),
                    headers,
                    path: path.to_owned(),
                    host: GATEWAY_HOST.to_owned(),
                    scheme: "http".to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    size: i64::try_from(body_bytes).unwrap_or_default(),
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

/// The allow in `response`, or what it said instead.
fn allowed(response: &CheckResponse) -> Result<&OkHttpResponse, String> {
    match (&response.status, &response.http_response) {
        (Some(status), Some(HttpResponse::OkResponse(ok))) if status.code == GRPC_OK => Ok(ok),
        _ => Err(format!("not allowed: {}", describe(response))),
    }
}

fn describe(response: &CheckResponse) -> String {
    let (code, message) = response
        .status
        .as_ref()
        .map_or((-1, ""), |s| (s.code, s.message.as_str()));
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => format!(
            "gRPC status {code} ({message}), HTTP {}: {}",
            denied.status.as_ref().map_or(0, |s| s.code),
            excerpt(denied.body.as_bytes())
        ),
        Some(HttpResponse::OkResponse(_)) => format!("gRPC status {code} ({message}), OK response"),
        Some(HttpResponse::ErrorResponse(error)) => format!(
            "gRPC status {code} ({message}), error response HTTP {}: {}",
            error.status.as_ref().map_or(0, |s| s.code),
            excerpt(error.body.as_bytes())
        ),
        None => format!("gRPC status {code} ({message}), no HTTP response"),
    }
}

async fn check(
    client: &mut AuthorizationClient<Channel>,
    request: &CheckRequest,
) -> Result<CheckResponse, String> {
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(REQUEST_TIMEOUT);
    client
        .check(call)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("gRPC error {:?}: {}", status.code(), status.message()))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<AuthorizationClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .context("invalid ext_authz address")?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to ext_authz at {addr}"))?;
    Ok(AuthorizationClient::new(channel))
}

/// One `gantry serve` (ext_proc and ext_authz only) with its config directory.
struct AuthzServer {
    // Declared first so that the process stops before its config directory is removed.
    process: ChildProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl AuthzServer {
    /// Starts `gantry serve` with the benchmark's key and JWT issuer, and `rules`. Returns the
    /// server and its config.
    async fn start(
        gantry_bin: &Path,
        upstream: SocketAddr,
        credentials: &Credentials,
        rules: bool,
    ) -> anyhow::Result<(AuthzServer, String)> {
        let dir = tempfile::Builder::new()
            .prefix("gantry-bench-authz")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, &credentials.jwks)
            .with_context(|| format!("cannot write {}", jwks_file.display()))?;
        let free = free_ports(4);
        let ports = StackPorts {
            listen: free[0],
            admin: free[1],
            ext_proc: free[2],
        };
        let addr = loopback(free[3]);
        let auth = auth::auth_section(
            addr,
            credentials,
            auth::Extras {
                jwks_file: Some(&jwks_file),
                rules,
            },
        );
        let yaml = gantry_config(&ports, upstream, &auth);
        let config_path = dir.path().join("gantry.yaml");
        std::fs::write(&config_path, &yaml)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let mut command = std::process::Command::new(gantry_bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", GANTRY_LOG_FILTER);
        let process = blocking("start `gantry serve`", move || {
            let mut process = ChildProcess::spawn("gantry-serve", &mut command);
            process.wait_for_stdout("and ext_authz on", Duration::from_secs(60));
            process
        })
        .await?;
        Ok((
            AuthzServer {
                process,
                addr,
                _dir: dir,
            },
            yaml,
        ))
    }
}

/// The two `gantry serve` processes: without and with the rules.
pub struct AuthzServers {
    plain: AuthzServer,
    rules: AuthzServer,
}

impl AuthzServers {
    /// Starts both and prints their configs.
    pub async fn start(
        gantry_bin: &Path,
        upstream: SocketAddr,
        credentials: &Credentials,
    ) -> anyhow::Result<AuthzServers> {
        let (plain, plain_config) =
            AuthzServer::start(gantry_bin, upstream, credentials, false).await?;
        let (rules, rules_config) =
            AuthzServer::start(gantry_bin, upstream, credentials, true).await?;
        println!(
            "decisions:   gantry serve, ext_authz at {} for api_key and jwt, config:\n{}",
            plain.addr,
            indent(&plain_config)
        );
        println!(
            "decisions:   gantry serve, ext_authz at {} for api_key_rules, config (the same plus \
             rules):\n{}",
            rules.addr,
            indent(&rules_config)
        );
        Ok(AuthzServers { plain, rules })
    }

    fn server(&mut self, kind: DecisionKind) -> &mut AuthzServer {
        match kind {
            DecisionKind::ApiKey | DecisionKind::Jwt => &mut self.plain,
            DecisionKind::Rules => &mut self.rules,
        }
    }

    /// For each kind: the measured request is allowed for the expected principal, and a bad
    /// variant of it is refused with the expected code.
    pub async fn probe(
        &mut self,
        credentials: &Credentials,
        body_bytes: usize,
    ) -> anyhow::Result<()> {
        for kind in DecisionKind::ALL {
            let server = self.server(kind);
            let outcome = probe(server.addr, kind, credentials, body_bytes).await;
            if let Err(error) = outcome {
                bail!(
                    "{} decision probe: {error:#}\n{}",
                    kind.name(),
                    logs_tail(&server.process)
                );
            }
        }
        Ok(())
    }

    /// `settings.rounds` rounds; each measures every kind in turn.
    pub async fn measure(
        &mut self,
        settings: &Settings,
        credentials: &Credentials,
        body_bytes: usize,
    ) -> anyhow::Result<DecisionResults> {
        let mut rounds: Vec<Vec<RoundStats>> =
            DecisionKind::ALL.iter().map(|_| Vec::new()).collect();
        for round in 1..=settings.rounds {
            for (slot, kind) in DecisionKind::ALL.into_iter().enumerate() {
                let request = Arc::new(kind.request(credentials, body_bytes));
                let server = self.server(kind);
                let stats = run_round(server.addr, request, settings).await?;
                println!(
                    "  round {round}/{} {:<13} {}",
                    settings.rounds,
                    kind.name(),
                    stats.line(Unit::Decisions)
                );
                ensure_running(&mut server.process, "gantry serve")?;
                rounds[slot].push(stats);
            }
        }
        Ok(DecisionResults {
            kinds: DecisionKind::ALL
                .into_iter()
                .zip(rounds)
                .map(|(kind, rounds)| (kind, Summary::of(Unit::Decisions, rounds)))
                .collect(),
        })
    }
}

async fn probe(
    addr: SocketAddr,
    kind: DecisionKind,
    credentials: &Credentials,
    body_bytes: usize,
) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    let response = check(&mut client, &kind.request(credentials, body_bytes))
        .await
        .map_err(anyhow::Error::msg)?;
    let ok = allowed(&response).map_err(anyhow::Error::msg)?;
    let header = |name: &str| {
        ok.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.as_str())
    };
    let (subject, method) = kind.principal();
    let seen = (header("x-gantry-subject"), header("x-gantry-auth-method"));
    if seen != (Some(subject), Some(method)) {
        bail!("allowed, but for subject/method {seen:?} instead of ({subject:?}, {method:?})");
    }
    let (refused, code, what) = kind.refused_request(credentials, body_bytes);
    let response = check(&mut client, &refused)
        .await
        .map_err(anyhow::Error::msg)?;
    let got = response.status.as_ref().map_or(-1, |s| s.code);
    if got != code {
        bail!(
            "{what} should be refused with gRPC status {code}, got {}",
            describe(&response)
        );
    }
    Ok(())
}

/// A warm-up, then a measured window, with `concurrency` connections in a closed loop.
async fn run_round(
    addr: SocketAddr,
    request: Arc<CheckRequest>,
    settings: &Settings,
) -> anyhow::Result<RoundStats> {
    let mut clients = Vec::with_capacity(settings.concurrency);
    for _ in 0..settings.concurrency {
        clients.push(connect(addr).await?);
    }
    let window = Window::starting_now(settings.seconds);
    let mut connections = JoinSet::new();
    for client in clients {
        connections.spawn(decision_loop(client, Arc::clone(&request), window));
    }
    let mut total = Tally::default();
    while let Some(tally) = connections.join_next().await {
        total.absorb(tally.context("a decision task failed")?);
    }
    Ok(RoundStats::new(total, settings.seconds))
}

/// Check after check on one connection until the window closes; anything but an allow is an
/// error.
async fn decision_loop(
    mut client: AuthorizationClient<Channel>,
    request: Arc<CheckRequest>,
    window: Window,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= window.until {
            return tally;
        }
        let outcome = check(&mut client, &request)
            .await
            .and_then(|response| allowed(&response).map(|_| ()));
        tally.record(outcome, sent.elapsed(), sent >= window.measure_from);
    }
}

/// Per kind, the medians across rounds.
pub struct DecisionResults {
    kinds: Vec<(DecisionKind, Summary)>,
}

impl DecisionResults {
    fn get(&self, kind: DecisionKind) -> &Summary {
        &self
            .kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every kind is measured")
            .1
    }

    /// What each kind costs over the API key alone.
    fn deltas(&self) -> [(&'static str, &'static str, &'static str, Delta); 2] {
        let api_key = self.get(DecisionKind::ApiKey);
        [
            (
                "jwt - api_key",
                "jwt_minus_api_key",
                "(RS256 verification instead of a key lookup)",
                Delta::between(self.get(DecisionKind::Jwt), api_key),
            ),
            (
                "api_key_rules - api_key",
                "rules_minus_api_key",
                "(the cost of the 3 CEL rules)",
                Delta::between(self.get(DecisionKind::Rules), api_key),
            ),
        ]
    }

    pub fn errors(&self) -> u64 {
        self.kinds.iter().map(|(_, s)| s.errors).sum()
    }

    /// `(kind, errors, first error)` for each kind with errors.
    pub fn failures(&self) -> Vec<(&'static str, u64, Option<&str>)> {
        self.kinds
            .iter()
            .filter(|(_, s)| s.errors > 0)
            .map(|(k, s)| (k.name(), s.errors, s.first_error.as_deref()))
            .collect()
    }

    pub fn print(&self, settings: &Settings) {
        println!(
            "== decisions: ext_authz Check calls straight to `gantry serve` (no Envoy): medians of \
             {} rounds x {} s, {} connections x 1 call in flight ==",
            settings.rounds,
            settings.seconds.as_secs(),
            settings.concurrency
        );
        println!("{}", table_header("decision", LABEL_WIDTH, Unit::Decisions));
        for (kind, summary) in &self.kinds {
            println!("{}", summary.row(kind.name(), LABEL_WIDTH));
        }
        for (label, _, note, delta) in self.deltas() {
            println!("{}", delta.row(label, LABEL_WIDTH, note));
        }
        println!(
            "  (latency: sending a Check to reading its response; the client shares the CPUs \
             with the server, so decisions/s is a lower bound for the server alone)\n"
        );
    }

    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert(
            "server".into(),
            json!("gantry serve (a separate process; the client shares its CPUs)"),
        );
        object.insert(
            "connections".into(),
            json!("--concurrency HTTP/2 connections, 1 Check in flight each"),
        );
        let kinds: Map<String, Value> = self
            .kinds
            .iter()
            .map(|(kind, summary)| {
                let mut value = summary.to_json();
                value["describe"] = json!(kind.describe());
                (kind.name().to_owned(), value)
            })
            .collect();
        object.insert("kinds".into(), Value::Object(kinds));
        for (_, key, _, delta) in self.deltas() {
            object.insert(key.into(), delta.to_json("rate_ratio"));
        }
        Value::Object(object)
    }
}

/// The line that introduces the decision rounds.
pub fn print_intro() {
    println!(
        "decisions: ext_authz Check calls shaped like Envoy's (POST {CHAT_PATH}, headers incl. \
         authorization and content-type, source {CLIENT_IP}:{CLIENT_PORT}), {} s warm-up per round",
        WARMUP.as_secs()
    );
    for kind in DecisionKind::ALL {
        println!("  {:<13} {}", kind.name(), kind.describe());
    }
}
