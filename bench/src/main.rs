//! `gantry-bench`: the latency and throughput that Gantry's ext_proc, ext_authz and budget
//! checks add to Envoy, measured against plain Envoy in the same run, the same for Gantry's
//! policy in Envoy's dynamic module, the raw decision rate of the ext_authz server, what the
//! MCP bridge adds to an MCP server, and what request and response guards cost.
//!
//! Usage (scripts/setup.sh must have installed Envoy; `ENVOY_BIN` overrides its path):
//!
//! ```text
//! cargo build --release -p gantry -p gantry-bench && target/release/gantry-bench
//! # --scenario module also needs the dynamic module, for the same profile:
//! cargo build --release -p gantry -p gantry-bench -p gantry-dynamic-module \
//!   && target/release/gantry-bench --scenario module
//! ```
//!
//! The same OpenAI chat request (`POST /v1/chat/completions`, a ~1 KB JSON body) goes to a mock
//! provider (in this process, on its own Tokio threads) through gateways that run side by side
//! for the whole benchmark:
//!
//! - **baseline**: Envoy on a minimal hand-written bootstrap (listener → router → the mock), no
//!   ext_proc, no ext_authz;
//! - **gantry**: `gantry run --config <yaml> --envoy <envoy>` (the release binary, run as users
//!   run it), with the model alias `bench` → provider `mock`, upstream model `mock-small`;
//! - **gantry+auth** (scenario `authz` only): the same plus an `auth` section with one API key,
//!   so Envoy asks Gantry's ext_authz server (in the gantry process) before ext_proc;
//! - **gantry+budget-embedded** (scenario `budgets` only): gantry plus a `governance` section
//!   whose store is the embedded SQLite file (in a temporary directory), with a price for
//!   `bench`, a dollar budget scoped `"global"`, a token budget scoped `"model:" + llm.model`
//!   and a requests-per-minute rate limit, all far too large to refuse anything: every request
//!   is admitted against three counters (reserving its estimate) and settled when its reply
//!   ends, and leaves a spend log record (failure modes, store timeout and spend log at their
//!   defaults);
//! - **gantry+budget-redis** (scenario `budgets` only): the same `governance` section with
//!   `store: { kind: redis }` on a `redis-server` this program starts (the testkit's
//!   `RedisServer`: Debian's, installed into `.local/` by scripts/setup.sh; no persistence);
//! - **gantry-module** (scenario `module` only): `gantry run --mode module` with gantry's config
//!   (on its own ports): Envoy loads Gantry's dynamic module (`libgantry.so`, which `gantry run`
//!   finds next to the gantry binary; `cargo build --release -p gantry-dynamic-module`) and runs
//!   the same policy in its own worker threads: no ext_proc or ext_authz server, no gRPC hop.
//!   The alias is resolved and rewritten, the usage headers added and SSE passed through as in
//!   ext_proc.
//!
//! Every Envoy gets the same flags apart from the bootstrap (Envoy's default `--concurrency`,
//! `--log-level warn`); Gantry's bootstrap keeps its JSON access log, which is part of what the
//! product costs.
//!
//! A round is a closed loop: `--concurrency` connections, each with one request in flight,
//! for a 1 s warm-up and then `--seconds` of measurement; latency is measured from sending the
//! request to reading the whole reply. Rounds alternate between the gateways `--rounds` times,
//! per scenario: `chat` (JSON reply) and `stream` (`"stream": true`, SSE events sent without
//! delay) compare baseline and gantry; `authz` sends the chat request with
//! `Authorization: Bearer <API key>` to baseline, gantry and gantry+auth, so that gantry+auth
//! minus gantry is the cost of authorization itself (probes first check that gantry+auth admits
//! the key, passes the principal upstream, and answers 401 without it); `budgets` sends the chat
//! request to baseline, gantry, gantry+budget-embedded and gantry+budget-redis, so that each
//! budget gateway minus gantry is the cost of budget checks on that store (probes first check
//! that every budget gateway's reply carries `x-gantry-budget` and `x-ratelimit-limit-requests`
//! with the configured limits and less than that left, i.e. the request was charged, and that
//! gantry's carries neither).
//!
//! `--scenario all` (the default) is chat, stream, authz and decisions, as before `budgets`
//! existed: `budgets` is measured only with `--scenario budgets`. It would add four gateways'
//! rounds (about 70 s at the defaults, on top of some 3 minutes) and make the default run need
//! `redis-server`, for a feature that is off unless configured.
//!
//! `--scenario module` (not in `all` either) sends the chat request, then the stream request, to
//! baseline, gantry-module and gantry in alternating rounds (reported as `module-chat` and
//! `module-stream`), so that gantry-module − baseline is what the policy costs in the module
//! and gantry-module − gantry is the module against ext_proc. Probes first check that
//! gantry-module runs the policy in Envoy: its log says "policy runs in Envoy's dynamic module",
//! nothing listens on its config's ext_proc port (while gantry's ext_proc port does listen), and
//! its replies, like gantry's, carry `x-gantry-provider: mock`, `x-gantry-model: bench`,
//! `x-gantry-upstream-model: mock-small` (and, for JSON, a non-zero `x-gantry-prompt-tokens`)
//! while the mock received the rewritten model; the baseline's replies carry none of these. If
//! `libgantry.so` is missing next to the gantry binary the run fails at once, naming the cargo
//! command for the binary's profile. It is not in `all` because it needs the module built and
//! would add some 2 minutes (6 more rounds per request) that mostly repeat chat and stream.
//!
//! `--scenario mcp` (not in `all` either) measures Gantry's MCP bridge: three fixture MCP servers
//! (`tests/interop/mcp/fixture_server.py`, the mcp 2.3.0 Python SDK, streamable HTTP, JSON replies;
//! `alpha`, `beta` and `gamma` with 0, 50 and 200 extra trivial tools) behind `gantry run` with an
//! `mcp` section federating them (everything else at its defaults). Raw JSON-RPC requests go either
//! through Envoy to the bridge or straight to the slowest upstream (the baseline: the one whose
//! `tools/list` is slowest in a short sequential calibration, i.e. `gamma`), for four cases:
//! `tools/list` (the bridge asks all three upstreams and merges their 268 tools under prefixed
//! names) and `tools/call` of `echo` on the slowest upstream (through the bridge as
//! `<upstream>__echo`), each in the stateless 2026-07-28 era (`MCP-Protocol-Version`, `Mcp-Method`,
//! `Mcp-Name` and `params._meta` on every request) and in the 2025-11-25 handshake era (one
//! `initialize` and `notifications/initialized` per connection during the warm-up, then
//! `Mcp-Session-Id` on every request). Each reply is checked (the full merged list with no upstream
//! left out, the echoed text), after its latency is taken. Per case it prints direct and bridge
//! p50/p99/mean and req/s, bridge − direct and the throughput ratio bridge/direct. `--concurrency`
//! defaults to 4 here: the fixture servers are single-threaded Python. It is not in `all` because
//! it would add some 2.5 minutes (8 pairs of rounds) and need the Python venv, for a feature that
//! is off unless configured.
//!
//! `--scenario guards` (not in `all` either) measures Gantry's guards in two parts (details in
//! `guards.rs`). First, in this process and without Envoy, what request guards cost per KiB of
//! prompt: `gantry_policy::plan_forward_in` (the call ext_proc and the dynamic module make for a
//! buffered request body, with ext_proc's inputs) on two snapshots compiled from config text
//! with gantry's provider and alias, one without a `guards` section and one with three guards
//! that only log or mask (every PII and secret detector plus `high_entropy`;
//! `prompt_injection`; two operator patterns), for chat bodies whose user message is English
//! prose of 1, 16 and 256 KiB with no detector hits (checked). Per size, unguarded and guarded
//! batches alternate `--rounds` times on one blocking thread (the gateways idle), each timing
//! calls one by one for `--seconds / --rounds` (at least 5 calls); it prints the median µs per
//! call of each, guarded − unguarded, that per KiB of user message, and the ratio. Second, the
//! time to first token that response guards add to a stream: the stream request through
//! baseline, gantry and gantry+response-guards (gantry with a `guards.response` section that
//! masks `email`, `secrets` and one pattern), the mock steered by `x-mock-reply`,
//! `x-mock-chunks` and `x-mock-chunk-delay-ms` to stream a fixed 209-byte reply in 48 content
//! events 2 ms apart, cut inside words the way tokenizers cut text. Per request it takes the
//! time to the first SSE event (the role event), to the first event with content (TTFT) and
//! to `[DONE]`, and checks the streamed text is the reply, complete and unmasked. Rounds
//! alternate the three gateways; it prints median p50/p99 TTFT and total per gateway, gantry −
//! baseline and gantry+response-guards − gantry. Probes first check that the guarded snapshot
//! logs an address and masks the pattern in a probe prompt, and that a reply with an address
//! and the pattern comes back masked through gantry+response-guards and unchanged through gantry
//! and the baseline. It is not in `all` because it would add some 1.5 minutes (6 batches of `--seconds` in process and
//! 3 gateways' rounds) for features that are off unless configured.
//!
//! `--scenario admin` (not in `all`; needs Redis) measures the admin API across two replicas
//! sharing one Redis: how long a key created, then revoked, on one takes to be accepted, then
//! refused, by the other (percentiles, and their ratio to the sync interval), and a runtime
//! key's request latency against the config key's on one replica (details in `admin.rs`).
//!
//! `decisions` (part of `--scenario authz` and `all`, or alone with `--scenario decisions`)
//! drives the ext_authz gRPC server directly, without Envoy: `gantry serve` runs as a separate
//! process (sharing the machine's CPUs with this client), and `--concurrency` HTTP/2
//! connections send `Check` requests shaped like Envoy's (`POST /v1/chat/completions`, the
//! client's headers, source address) for the same rounds, for three kinds of decision that must
//! all be allowed: an API key, an RS256 JWT verified against a JWKS file, and the API key under
//! three CEL rules over `request.path` and `principal.team`. Each kind reports decisions/s and
//! the latency of one decision (p50/p99/mean), and the differences jwt − api_key and
//! api_key_rules − api_key.
//!
//! The machine is shared and noisy, so only relative numbers mean much: per scenario, the
//! medians across rounds of p50/p99/mean latency and req/s for each gateway, the latency added
//! (gantry − baseline; for `authz` also gantry+auth − baseline and gantry+auth − gantry; for
//! `budgets` also gantry+budget-embedded − gantry and gantry+budget-redis − gantry; for `module`
//! also gantry-module − baseline and gantry-module − gantry) and the matching throughput
//! ratios. A readable table is followed by one JSON line with every number
//! (`scenarios.authz.gantry_auth_minus_gantry`, `scenarios.budgets.budget_redis_minus_gantry`,
//! `scenarios.module.chat.gantry_module_minus_gantry`, `scenarios.module.stream.gantry_module`,
//! `decisions.kinds.<kind>.decisions_per_s`, ...).
//! With `--scenario mcp` the JSON line has `mcp.cases.<method>_<era>` (`tools_list_stateless`,
//! `tools_call_handshake`, ...) with `direct`, `bridge`, `added_*` and `throughput_ratio`.
//! With `--scenario guards` it has `scenarios.guards.prompt.sizes.<n>kib` (`unguarded` and
//! `guarded` `median_us`, `added_us`, `added_us_per_kib`, `ratio`) and `scenarios.guards.stream`
//! (`ttft`, `first_event` and `total` per gateway, `response_guards_minus_gantry`
//! `.added_ttft_p50_us`, ...).
//! Any failed request, and any decision that is not an allow, is reported loudly and makes the
//! exit status 1.

mod admin;
mod auth;
mod budgets;
mod decisions;
mod gateways;
mod guards;
mod load;
mod mcp;
mod mcp_wire;
mod report;
mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use gantry_mock_provider::{MockConfig, MockProvider};
use gantry_testkit::loopback;

use auth::Credentials;
use decisions::AuthzServers;
use gateways::{blocking, logs_tail, Gateway, Gateways};
use guards::{GuardResults, PromptBench};
use load::{probe, run_round, Job, RequestBodies, Scenario};
use mcp::McpBench;
use report::{
    command_line, print_error_banner, print_header, report_json, Machine, Measured, ScenarioResult,
};
use stats::{Summary, Unit};

/// Load before each measured round, to open connections and warm caches.
const WARMUP: Duration = Duration::from_secs(1);
/// A request (or decision) that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The model name clients send; Gantry maps it to [`UPSTREAM_MODEL`] at provider `mock`.
const ALIAS: &str = "bench";
const UPSTREAM_MODEL: &str = "mock-small";
const CHAT_PATH: &str = "/v1/chat/completions";
/// The request body is padded to at least this size.
const BODY_BYTES: usize = 1024;
/// `gantry`'s own default log filter. The testkit turns on ext_proc debug logs for tests; the
/// benchmark runs gantry the way users do.
const GANTRY_LOG_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn";
/// The least width of the gateway's name in the round lines (longer names widen them).
const ROUND_NAME_WIDTH: usize = 11;

const USAGE: &str = "\
Usage (scripts/setup.sh must have installed Envoy; ENVOY_BIN overrides its path):
  cargo build --release -p gantry -p gantry-bench && target/release/gantry-bench
  --scenario module also needs libgantry.so next to the gantry binary, for the same profile:
  cargo build --release -p gantry -p gantry-bench -p gantry-dynamic-module \\
    && target/release/gantry-bench --scenario module

Sends the same OpenAI chat request through plain Envoy (baseline) and through `gantry run`
(Envoy + Gantry's ext_proc) to an in-process mock provider, in alternating rounds; scenario
`authz` adds `gantry run` with an API key checked by ext_authz; scenario `budgets` (not in
`all`) adds `gantry run` with budgets and a rate limit on the embedded store and on a Redis
started here (scripts/setup.sh --with-redis installs redis-server). Prints per scenario the
medians across rounds, the latency each gateway adds and the throughput ratios. `decisions` (in `authz` and
`all`) sends ext_authz Check calls straight to `gantry serve` and prints decisions/s and the
latency per decision for an API key, a JWT and CEL rules. Scenario `mcp` (not in `all`; needs
the Python venv from scripts/setup.sh) sends MCP tools/list and tools/call, stateless 2026-07-28
and with an initialize handshake, through Envoy to `gantry run`'s MCP bridge federating three
fixture servers, and straight to the slowest of them, and prints what the bridge adds. Scenario
`module` (not in `all`) sends the chat and the stream request through plain Envoy, `gantry run
--mode module` (the policy in Envoy's dynamic module, no ext_proc server) and `gantry run`
(ext_proc), and prints what each adds and the module against ext_proc. Scenario `guards` (not in
`all`) times request guards in process per KiB of prompt (1, 16 and 256 KiB), then streams
through plain Envoy, `gantry run` and `gantry run` with response guards and prints the TTFT
each adds. Ends with one JSON line
with every number. Exits 1 if any request failed or any decision was not an allow.";

/// Measures what Gantry's ext_proc, ext_authz and budget checks (and its policy in Envoy's
/// dynamic module) add to Envoy, against plain Envoy in the same run (and what its MCP bridge
/// adds to an MCP server).
#[derive(Parser, Debug)]
#[command(name = "gantry-bench", after_help = USAGE)]
struct Args {
    /// Connections, each with one request (or Check call) in flight at a time [default: 8; 4
    /// for --scenario mcp].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: Option<u64>,
    /// Measured seconds per round (after a 1 s warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Rounds per gateway (and decision kind) and scenario; rounds alternate between them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = ScenarioChoice::All)]
    scenario: ScenarioChoice,
    /// The gantry binary [default: `gantry` next to this executable, i.e. target/release/gantry].
    #[arg(long, value_name = "PATH")]
    gantry: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScenarioChoice {
    /// JSON chat completion: baseline vs gantry.
    Chat,
    /// Streamed (SSE) chat completion: baseline vs gantry.
    Stream,
    /// The chat completion with an API key: baseline vs gantry vs gantry+auth, then the raw
    /// decision rate.
    Authz,
    /// Only the raw ext_authz decision rate (no Envoy).
    Decisions,
    /// The chat completion: baseline vs gantry vs gantry with budgets on the embedded store
    /// vs on Redis (not part of `all`).
    Budgets,
    /// MCP tools/list and tools/call, in both protocol eras, through Envoy and the MCP bridge
    /// (federating three fixture servers) vs straight to the slowest of them (not part of
    /// `all`).
    Mcp,
    /// The chat and the stream request: baseline vs gantry-module (the policy in Envoy's
    /// dynamic module) vs gantry (ext_proc) (not part of `all`; needs libgantry.so).
    Module,
    /// Request guards' cost per KiB of prompt (in process), and the TTFT response guards add
    /// to a stream: baseline vs gantry vs gantry with response guards (not part of `all`).
    Guards,
    /// The admin API: how fast a key created or revoked on one replica reaches another
    /// sharing Redis, against the sync interval, and a runtime key's request latency against
    /// the config key's (not part of `all`).
    Admin,
    /// chat, stream, authz and the decision rate (not budgets, mcp or module).
    All,
}

impl ScenarioChoice {
    /// The scenarios that go through Envoy.
    fn scenarios(self) -> Vec<Scenario> {
        match self {
            ScenarioChoice::Chat => vec![Scenario::Chat],
            ScenarioChoice::Stream => vec![Scenario::Stream],
            ScenarioChoice::Authz => vec![Scenario::Authz],
            ScenarioChoice::Decisions
            | ScenarioChoice::Mcp
            | ScenarioChoice::Guards
            | ScenarioChoice::Admin => Vec::new(),
            ScenarioChoice::Budgets => vec![Scenario::Budgets],
            ScenarioChoice::Module => vec![Scenario::ModuleChat, Scenario::ModuleStream],
            ScenarioChoice::All => vec![Scenario::Chat, Scenario::Stream, Scenario::Authz],
        }
    }

    /// Whether the raw decision rate is measured.
    fn decisions(self) -> bool {
        matches!(
            self,
            ScenarioChoice::Authz | ScenarioChoice::Decisions | ScenarioChoice::All
        )
    }
}

/// The run's fixed settings.
struct Settings {
    concurrency: usize,
    seconds: Duration,
    rounds: usize,
    /// Through Envoy, in this order.
    scenarios: Vec<Scenario>,
    /// Straight to ext_authz, after the scenarios.
    decisions: bool,
    /// MCP through the bridge vs straight to an upstream, after the scenarios.
    mcp: bool,
    /// The dynamic module gantry-module loads (`libgantry.so` next to the gantry binary), when
    /// a scenario goes through gantry-module.
    module: Option<PathBuf>,
    /// Request guards in process, then streams through baseline, gantry and
    /// gantry+response-guards.
    guards: bool,
    /// The admin API across two replicas sharing Redis.
    admin: bool,
}

impl Settings {
    fn needs_credentials(&self) -> bool {
        self.decisions || self.scenarios.contains(&Scenario::Authz)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gantry-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the two runtimes and the mock, and runs the benchmark until it ends or a signal
/// arrives. Every child process is owned by the benchmark future, so it is stopped on every
/// way out (success, error, Ctrl-C / SIGTERM) before this returns.
fn run(args: &Args) -> anyhow::Result<()> {
    let mcp = args.scenario == ScenarioChoice::Mcp;
    let concurrency = args.concurrency.unwrap_or(if mcp { 4 } else { 8 });
    let scenarios = args.scenario.scenarios();
    let gantry_bin = gateways::locate_gantry(args.gantry.as_deref())?;
    let module = if scenarios.iter().any(|s| s.module()) {
        Some(gateways::locate_module(&gantry_bin)?)
    } else {
        None
    };
    let settings = Settings {
        concurrency: usize::try_from(concurrency).context("--concurrency is too large")?,
        seconds: Duration::from_secs(args.seconds),
        rounds: usize::try_from(args.rounds).context("--rounds is too large")?,
        scenarios,
        decisions: args.scenario.decisions(),
        mcp,
        module,
        guards: args.scenario == ScenarioChoice::Guards,
        admin: args.scenario == ScenarioChoice::Admin,
    };
    let envoy_bin =
        if settings.scenarios.is_empty() && !settings.mcp && !settings.guards && !settings.admin {
            None
        } else {
            Some(gateways::locate_envoy()?)
        };

    let mock_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("mock-provider")
        .enable_all()
        .build()
        .context("cannot start the mock provider's runtime")?;
    let mock = mock_runtime
        .block_on(MockProvider::start(
            loopback(0),
            MockConfig {
                name: "mock".to_owned(),
                chunk_delay: Duration::ZERO,
                ..MockConfig::default()
            },
        ))
        .context("cannot start the mock provider")?;
    let upstream = mock.addr();

    let load_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("load")
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let outcome = load_runtime.block_on(async {
        tokio::select! {
            outcome = bench(&settings, &mock, upstream, &gantry_bin, envoy_bin.as_deref()) => outcome,
            signal = stop_signal() => Err(anyhow!("interrupted by {signal}; Envoy and gantry were stopped")),
        }
    });
    drop(load_runtime);
    drop(mock);
    drop(mock_runtime);
    outcome
}

/// Resolves on Ctrl-C or SIGTERM, naming it; never if the handlers cannot be installed.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "Ctrl-C",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// `upstream` is where the gateways reach the mock.
async fn bench(
    settings: &Settings,
    mock: &MockProvider,
    upstream: SocketAddr,
    gantry_bin: &Path,
    envoy_bin: Option<&Path>,
) -> anyhow::Result<()> {
    let command = command_line();
    let machine = Machine::detect(envoy_bin);
    let bodies = RequestBodies::new();
    print_header(settings, &command, &machine, gantry_bin, envoy_bin, &bodies);

    let credentials = if settings.needs_credentials() {
        Some(blocking("generate the API key and JWT", Credentials::generate).await??)
    } else {
        None
    };
    let authz_scenario = settings.scenarios.contains(&Scenario::Authz);
    let budgets_scenario = settings.scenarios.contains(&Scenario::Budgets);
    // Everything starts and is probed before anything is measured, so that a broken setup
    // fails in seconds.
    let prompt_bench = if settings.guards {
        let prompt_bench =
            blocking("prepare the request guard snapshots", PromptBench::prepare).await??;
        prompt_bench.print_setup();
        Some(Arc::new(prompt_bench))
    } else {
        None
    };
    let mut gateways = if settings.scenarios.is_empty() && !settings.guards {
        None
    } else {
        let credentials = credentials.as_ref().filter(|_| authz_scenario);
        Some(
            Gateways::start(
                gantry_bin,
                upstream,
                credentials,
                budgets_scenario,
                settings.module.as_deref(),
                settings.guards,
            )
            .await?,
        )
    };
    let mut servers = match (&credentials, settings.decisions) {
        (Some(credentials), true) => {
            Some(AuthzServers::start(gantry_bin, mock.addr(), credentials).await?)
        }
        _ => None,
    };
    let mut mcp = if settings.mcp {
        Some(McpBench::start(gantry_bin).await?)
    } else {
        None
    };
    let mut admin = if settings.admin {
        Some(admin::AdminBench::start(gantry_bin, upstream).await?)
    } else {
        None
    };

    if let (Some(gateways), true) = (&mut gateways, settings.guards) {
        guards::probe_stream(mock, gateways, &bodies).await?;
    }
    if let (Some(gateways), false) = (&mut gateways, settings.scenarios.is_empty()) {
        for &scenario in &settings.scenarios {
            for &gateway in scenario.gateways() {
                let job = job(scenario, gateways, gateway, &bodies, credentials.as_ref());
                if let Err(error) = probe(mock, gateway, &job).await {
                    bail!(
                        "{}: {error:#}\n{}",
                        gateway.name(),
                        logs_tail(gateways.process(gateway))
                    );
                }
            }
        }
        println!(
            "probes: every reply is valid; the mock received model '{ALIAS}' from the baseline and \
             '{UPSTREAM_MODEL}' from gantry (alias rewritten by ext_proc){}{}{}",
            if authz_scenario {
                "; gantry+auth passed the key's principal upstream, not the key, and answered 401 \
                 without it"
            } else {
                ""
            },
            if budgets_scenario {
                "; gantry+budget-embedded and gantry+budget-redis admitted and charged the \
                 request (x-gantry-budget and x-ratelimit-*-requests headers with the configured \
                 limits and less left), the other gateways sent no budget headers"
            } else {
                ""
            },
            if settings.module.is_some() {
                "; gantry-module (no ext_proc server) and gantry rewrote the alias and replied \
                 with x-gantry-provider, x-gantry-model, x-gantry-upstream-model (and \
                 x-gantry-prompt-tokens for JSON), the baseline with none of them"
            } else {
                ""
            }
        );
    }
    if let (Some(servers), Some(credentials)) = (&mut servers, &credentials) {
        servers.probe(credentials, bodies.chat.len()).await?;
        println!(
            "probes: ext_authz allows each kind of decision for the expected principal and \
             refuses a wrong key, a forged token and a path a rule denies"
        );
    }
    if let Some(mcp) = &mut mcp {
        mcp.probe().await?;
    }
    if let Some(admin) = &mut admin {
        admin.probe().await?;
    }
    println!();

    let mut results = Vec::new();
    if let Some(gateways) = &mut gateways {
        for &scenario in &settings.scenarios {
            println!("{}: {}", scenario.name(), scenario.describe());
            let mut rounds: Vec<Vec<_>> = scenario.gateways().iter().map(|_| Vec::new()).collect();
            let name_width = scenario
                .gateways()
                .iter()
                .map(|gateway| gateway.name().len())
                .fold(ROUND_NAME_WIDTH, usize::max);
            for round in 1..=settings.rounds {
                for (slot, &gateway) in scenario.gateways().iter().enumerate() {
                    let job = job(scenario, gateways, gateway, &bodies, credentials.as_ref());
                    let stats = run_round(Arc::new(job), settings).await?;
                    mock.clear_recorded();
                    println!(
                        "  round {round}/{} {:<name_width$} {}",
                        settings.rounds,
                        gateway.name(),
                        stats.line(Unit::Requests)
                    );
                    gateways.ensure_running(gateway)?;
                    rounds[slot].push(stats);
                }
            }
            results.push(ScenarioResult {
                scenario,
                summaries: scenario
                    .gateways()
                    .iter()
                    .copied()
                    .zip(rounds)
                    .map(|(gateway, rounds)| (gateway, Summary::of(Unit::Requests, rounds)))
                    .collect(),
            });
        }
    }
    let guard_results = match (&prompt_bench, &mut gateways) {
        (Some(prompt_bench), Some(gateways)) => {
            println!(
                "guards per KiB of prompt: plan_forward_in in this process (one blocking thread; \
                 the gateways idle), unguarded and guarded batches alternating"
            );
            let (seconds, rounds) = (settings.seconds, settings.rounds);
            let prompt_bench = Arc::clone(prompt_bench);
            let prompt = blocking("time plan_forward_in", move || {
                prompt_bench.measure(seconds, rounds)
            })
            .await?;
            let stream = guards::measure_stream(settings, mock, gateways, &bodies).await?;
            Some(GuardResults { prompt, stream })
        }
        _ => None,
    };
    let mcp_results = match &mut mcp {
        Some(mcp) => Some(mcp.measure(settings).await?),
        None => None,
    };
    let admin_results = match &mut admin {
        Some(admin) => Some(admin.measure(settings).await?),
        None => None,
    };
    let decisions = match (&mut servers, &credentials) {
        (Some(servers), Some(credentials)) => {
            decisions::print_intro();
            Some(
                servers
                    .measure(settings, credentials, bodies.chat.len())
                    .await?,
            )
        }
        _ => None,
    };

    println!();
    for result in &results {
        result.print(settings);
    }
    if let Some(guard_results) = &guard_results {
        guard_results.print(settings);
    }
    if let Some(mcp_results) = &mcp_results {
        mcp_results.print(settings);
    }
    if let Some(admin_results) = &admin_results {
        admin_results.print();
    }
    if let Some(decisions) = &decisions {
        decisions.print(settings);
    }
    let measured = Measured {
        scenarios: &results,
        decisions: decisions.as_ref(),
        mcp: mcp_results.as_ref(),
        guards: guard_results.as_ref(),
        admin: admin_results.as_ref(),
    };
    let errors = measured.errors();
    if errors > 0 {
        print_error_banner(errors, &measured);
    }
    println!(
        "{}",
        report_json(settings, &command, &machine, &bodies, &measured, errors)
    );
    if errors > 0 {
        bail!("{errors} requests or decisions failed: this run is not a valid measurement");
    }
    Ok(())
}

/// The request `scenario` sends through `gateway`.
fn job(
    scenario: Scenario,
    gateways: &Gateways,
    gateway: Gateway,
    bodies: &RequestBodies,
    credentials: Option<&Credentials>,
) -> Job {
    let authorization = match scenario {
        Scenario::Authz => credentials.map(Credentials::api_key_bearer),
        Scenario::Chat
        | Scenario::Stream
        | Scenario::Budgets
        | Scenario::ModuleChat
        | Scenario::ModuleStream => None,
    };
    Job::new(
        scenario,
        gateways.url(gateway),
        bodies,
        authorization.as_deref(),
    )
}
