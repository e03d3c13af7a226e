//! `gantry-bench`: the latency and throughput that Gantry's ext_proc adds to Envoy, measured
//! against plain Envoy in the same run.
//!
//! Usage (scripts/setup.sh must have installed Envoy; `ENVOY_BIN` overrides its path):
//!
//! ```text
//! cargo build --release -p gantry -p gantry-bench && target/release/gantry-bench
//! ```
//!
//! The same OpenAI chat request (`POST /v1/chat/completions`, a ~1 KB JSON body) goes to a mock
//! provider (in this process, on its own Tokio threads) through two gateways that run side by
//! side for the whole benchmark:
//!
//! - **baseline**: Envoy on a minimal hand-written bootstrap (listener → router → the mock), no
//!   ext_proc;
//! - **gantry**: `gantry run --config <yaml> --envoy <envoy>` (the release binary, run as users
//!   run it), with the model alias `bench` → provider `mock`, upstream model `mock-small`.
//!
//! Both Envoys get the same flags apart from the bootstrap (Envoy's default `--concurrency`,
//! `--log-level warn`); Gantry's bootstrap keeps its JSON access log, which is part of what the
//! product costs.
//!
//! A round is a closed loop: `--concurrency` connections, each with one request in flight,
//! for a 1 s warm-up and then `--seconds` of measurement; latency is measured from sending the
//! request to reading the whole reply. Rounds alternate baseline/gantry `--rounds` times, per
//! scenario: `chat` (JSON reply) and `stream` (`"stream": true`, SSE events sent without delay).
//! The machine is shared and noisy, so only relative numbers mean much: per scenario, the
//! medians across rounds of p50/p99/mean latency and req/s for each gateway, the latency Gantry
//! adds (gantry minus baseline) and the throughput ratio gantry/baseline. A readable table is followed
//! by one JSON line with every number. Any failed request is reported loudly and makes the exit
//! status 1.

use std::any::Any;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use gantry_mock_provider::{controls, MockConfig, MockProvider};
use gantry_testkit::{free_ports, loopback, ChildProcess, EnvoyProcess, GantryStack, StackPorts};
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// Load before each measured round, to open connections and warm caches.
const WARMUP: Duration = Duration::from_secs(1);
/// A request that takes longer than this counts as failed.
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

const USAGE: &str = "\
Usage (scripts/setup.sh must have installed Envoy; ENVOY_BIN overrides its path):
  cargo build --release -p gantry -p gantry-bench && target/release/gantry-bench

Sends the same OpenAI chat request through plain Envoy (baseline) and through `gantry run`
(Envoy + Gantry's ext_proc) to an in-process mock provider, in alternating rounds, and prints
per scenario the medians across rounds, the latency Gantry adds and the throughput ratio
gantry/baseline, then one JSON line with every number. Exits 1 if any request failed.";

/// Measures what Gantry's ext_proc adds to Envoy, against plain Envoy in the same run.
#[derive(Parser, Debug)]
#[command(name = "gantry-bench", after_help = USAGE)]
struct Args {
    /// Connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Measured seconds per round (after a 1 s warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Rounds per gateway and scenario; rounds alternate baseline, gantry, baseline, ...
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// Which request to send: a JSON chat completion, a streamed (SSE) one, or both in turn.
    #[arg(long, value_enum, default_value_t = ScenarioChoice::All)]
    scenario: ScenarioChoice,
    /// The gantry binary [default: `gantry` next to this executable, i.e. target/release/gantry].
    #[arg(long, value_name = "PATH")]
    gantry: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScenarioChoice {
    Chat,
    Stream,
    All,
}

impl ScenarioChoice {
    fn scenarios(self) -> Vec<Scenario> {
        match self {
            ScenarioChoice::Chat => vec![Scenario::Chat],
            ScenarioChoice::Stream => vec![Scenario::Stream],
            ScenarioChoice::All => vec![Scenario::Chat, Scenario::Stream],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Chat,
    Stream,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::Stream => "stream",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Chat => "non-streaming, JSON reply",
            Scenario::Stream => "\"stream\": true, SSE reply sent without delay",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gateway {
    Baseline,
    Gantry,
}

impl Gateway {
    const BOTH: [Gateway; 2] = [Gateway::Baseline, Gateway::Gantry];

    fn name(self) -> &'static str {
        match self {
            Gateway::Baseline => "baseline",
            Gateway::Gantry => "gantry",
        }
    }

    /// The model the mock must receive: Envoy alone forwards the alias, Gantry rewrites it.
    fn upstream_model(self) -> &'static str {
        match self {
            Gateway::Baseline => ALIAS,
            Gateway::Gantry => UPSTREAM_MODEL,
        }
    }
}

/// The run's fixed settings.
struct Settings {
    concurrency: usize,
    seconds: Duration,
    rounds: usize,
    scenarios: Vec<Scenario>,
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
    let settings = Settings {
        concurrency: usize::try_from(args.concurrency).context("--concurrency is too large")?,
        seconds: Duration::from_secs(args.seconds),
        rounds: usize::try_from(args.rounds).context("--rounds is too large")?,
        scenarios: args.scenario.scenarios(),
    };
    let gantry_bin = locate_gantry(args.gantry.as_deref())?;
    let envoy_bin = locate_envoy()?;

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

    let load_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("load")
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let outcome = load_runtime.block_on(async {
        tokio::select! {
            outcome = bench(&settings, &mock, &gantry_bin, &envoy_bin) => outcome,
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

async fn bench(
    settings: &Settings,
    mock: &MockProvider,
    gantry_bin: &Path,
    envoy_bin: &Path,
) -> anyhow::Result<()> {
    let command = command_line();
    let machine = Machine::detect(envoy_bin);
    let bodies = RequestBodies::new();
    print_header(settings, &command, &machine, gantry_bin, envoy_bin, &bodies);

    let baseline = BaselineEnvoy::start(mock.addr()).await?;
    let (gantry, gantry_config) = start_gantry(gantry_bin, mock.addr()).await?;
    let mut gateways = Gateways { baseline, gantry };
    println!(
        "baseline: plain Envoy at {}",
        gateways.url(Gateway::Baseline)
    );
    println!(
        "gantry:   gantry run at {}, config:\n{}",
        gateways.url(Gateway::Gantry),
        indent(&gantry_config)
    );

    for &scenario in &settings.scenarios {
        for gateway in Gateway::BOTH {
            let job = Job::new(scenario, gateways.url(gateway), &bodies);
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
         '{UPSTREAM_MODEL}' from gantry (alias rewritten by ext_proc)\n"
    );

    let mut results = Vec::new();
    for &scenario in &settings.scenarios {
        println!("{}: {}", scenario.name(), scenario.describe());
        let mut rounds: [Vec<RoundStats>; 2] = [Vec::new(), Vec::new()];
        for round in 1..=settings.rounds {
            for (slot, gateway) in Gateway::BOTH.into_iter().enumerate() {
                let job = Arc::new(Job::new(scenario, gateways.url(gateway), &bodies));
                let stats = run_round(job, settings).await?;
                mock.clear_recorded();
                println!(
                    "  round {round}/{} {:<8} {}",
                    settings.rounds,
                    gateway.name(),
                    stats.line()
                );
                gateways.ensure_running(gateway)?;
                rounds[slot].push(stats);
            }
        }
        let [baseline_rounds, gantry_rounds] = rounds;
        results.push(ScenarioResult {
            scenario,
            baseline: Summary::of(baseline_rounds),
            gantry: Summary::of(gantry_rounds),
        });
    }

    println!();
    for result in &results {
        result.print(settings);
    }
    let errors: u64 = results
        .iter()
        .map(|r| r.baseline.errors + r.gantry.errors)
        .sum();
    if errors > 0 {
        print_error_banner(errors, &results);
    }
    println!(
        "{}",
        report_json(settings, &command, &machine, &bodies, &results, errors)
    );
    if errors > 0 {
        bail!("{errors} requests failed: this run is not a valid measurement");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The two gateways.

/// Both gateways, running side by side for the whole benchmark.
struct Gateways {
    baseline: BaselineEnvoy,
    gantry: GantryStack,
}

impl Gateways {
    fn url(&self, gateway: Gateway) -> String {
        match gateway {
            Gateway::Baseline => self.baseline.url.clone(),
            Gateway::Gantry => self.gantry.url(CHAT_PATH),
        }
    }

    /// The process that is the gateway: Envoy, or `gantry run` (which runs Envoy as a child).
    fn process(&mut self, gateway: Gateway) -> &mut ChildProcess {
        match gateway {
            Gateway::Baseline => &mut self.baseline.envoy.process,
            Gateway::Gantry => &mut self.gantry.process,
        }
    }

    /// Fails, with the gateway's last output, if its process has exited.
    fn ensure_running(&mut self, gateway: Gateway) -> anyhow::Result<()> {
        let process = self.process(gateway);
        match process.try_status() {
            Some(status) => bail!(
                "the {} gateway exited during the benchmark ({status})\n{}",
                gateway.name(),
                logs_tail(process)
            ),
            None => Ok(()),
        }
    }
}

/// Plain Envoy in front of the mock: the baseline.
struct BaselineEnvoy {
    // Declared first so that Envoy stops before its bootstrap's directory is removed.
    envoy: EnvoyProcess,
    url: String,
    _dir: tempfile::TempDir,
}

impl BaselineEnvoy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<BaselineEnvoy> {
        let ports = free_ports(2);
        let (listen, admin) = (loopback(ports[0]), loopback(ports[1]));
        let dir = tempfile::Builder::new()
            .prefix("gantry-bench-baseline")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, baseline_bootstrap(listen, admin, upstream))
            .with_context(|| format!("cannot write {}", path.display()))?;
        let envoy = blocking("start the baseline Envoy", move || {
            EnvoyProcess::start(&path, admin)
        })
        .await?;
        Ok(BaselineEnvoy {
            envoy,
            url: format!("http://{listen}{CHAT_PATH}"),
            _dir: dir,
        })
    }
}

/// The smallest useful Envoy: one listener whose HTTP connection manager has only the router,
/// and a static cluster for the mock.
fn baseline_bootstrap(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let address = |addr: SocketAddr| {
        format!(
            "{{ socket_address: {{ address: {}, port_value: {} }} }}",
            addr.ip(),
            addr.port()
        )
    };
    format!(
        r#"# gantry-bench baseline: Envoy with the router only (no ext_proc).
admin:
  address: {admin}
static_resources:
  listeners:
    - name: baseline_listener
      address: {listen}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: baseline
                codec_type: AUTO
                route_config:
                  name: baseline_routes
                  virtual_hosts:
                    - name: baseline
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: mock_provider, timeout: 60s }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: mock_provider
      type: STATIC
      connect_timeout: 5s
      load_assignment:
        cluster_name: mock_provider
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {upstream}
"#,
        admin = address(admin),
        listen = address(listen),
        upstream = address(upstream),
    )
}

/// `gantry run` in front of the mock, with the `bench` alias. Returns the stack and its config.
async fn start_gantry(
    gantry_bin: &Path,
    upstream: SocketAddr,
) -> anyhow::Result<(GantryStack, String)> {
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:\n  - name: mock\n    kind: openai\n    endpoint: http://{upstream}\n\
         models:\n  - {{ name: {ALIAS}, provider: mock, model: {UPSTREAM_MODEL} }}\n",
        head = ports.config_head(),
    );
    let gantry_bin = gantry_bin.to_path_buf();
    let config = yaml.clone();
    let stack = blocking("start `gantry run`", move || {
        GantryStack::start(
            &gantry_bin,
            ports,
            &config,
            &[("RUST_LOG", GANTRY_LOG_FILTER)],
        )
    })
    .await?;
    Ok((stack, yaml))
}

/// Runs the testkit's blocking start-up off the async threads; its panics become errors.
async fn blocking<T: Send + 'static>(
    what: &str,
    start: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(start)
        .await
        .map_err(|error| match error.try_into_panic() {
            Ok(payload) => anyhow!("cannot {what}: {}", panic_message(payload.as_ref())),
            Err(error) => anyhow!("cannot {what}: {error}"),
        })
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("panicked")
}

/// The last lines of a child's output, for error messages.
fn logs_tail(process: &ChildProcess) -> String {
    let logs = process.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn locate_gantry(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find this executable's path")?
            .parent()
            .context("this executable has no parent directory")?
            .join("gantry"),
    };
    if !path.is_file() {
        bail!(
            "the gantry binary is missing at {}: run `cargo build --release -p gantry -p gantry-bench` \
             first (or pass --gantry PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// Where the testkit will find Envoy, checked here so that a missing Envoy is a clear error.
fn locate_envoy() -> anyhow::Result<PathBuf> {
    gantry_testkit::find_envoy_binary().map_err(|reason| anyhow!(reason))
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// The request bodies, identical for both gateways.
struct RequestBodies {
    chat: String,
    stream: String,
}

impl RequestBodies {
    /// A system and a user message, the user text padded until the JSON body is ~1 KB.
    fn new() -> RequestBodies {
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
        match scenario {
            Scenario::Chat => &self.chat,
            Scenario::Stream => &self.stream,
        }
    }
}

/// One request, sent over and over.
struct Job {
    scenario: Scenario,
    url: String,
    body: String,
}

impl Job {
    fn new(scenario: Scenario, url: String, bodies: &RequestBodies) -> Job {
        Job {
            scenario,
            url,
            body: bodies.get(scenario).to_owned(),
        }
    }
}

/// A client with one keep-alive connection (HTTP/1.1, no proxy).
fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")
}

/// Sends the request and reads the whole reply; anything but a valid 200 reply is an error.
async fn send(client: &reqwest::Client, job: &Job) -> Result<(), String> {
    let mut request = client
        .post(&job.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(job.body.clone());
    if job.scenario == Scenario::Stream {
        request = request.header(controls::CHUNK_DELAY_MS, "0");
    }
    let response = request.send().await.map_err(describe)?;
    let status = response.status();
    let body = response.bytes().await.map_err(describe)?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("HTTP {status}: {}", excerpt(&body)));
    }
    check_reply(job.scenario, &body)
}

fn describe(error: reqwest::Error) -> String {
    format!("{:#}", anyhow::Error::from(error))
}

/// A chat completion, or for `stream` an SSE stream of chunks that ends with `[DONE]`.
fn check_reply(scenario: Scenario, body: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "the reply is not UTF-8".to_owned())?;
    let valid = text.contains("\"choices\"")
        && match scenario {
            Scenario::Chat => text.trim_start().starts_with('{'),
            Scenario::Stream => {
                text.starts_with("data: ") && text.trim_end().ends_with("data: [DONE]")
            }
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

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(300).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// One request through `gateway`, checking the reply and the model the mock received.
async fn probe(mock: &MockProvider, gateway: Gateway, job: &Job) -> anyhow::Result<()> {
    mock.clear_recorded();
    let client = http_client()?;
    send(&client, job)
        .await
        .map_err(|error| anyhow!("{} probe failed: {error}", job.scenario.name()))?;
    let recorded = mock.recorded();
    let [request] = recorded.as_slice() else {
        bail!(
            "{} probe: the mock received {} requests instead of 1",
            job.scenario.name(),
            recorded.len()
        );
    };
    let model = request
        .json()
        .and_then(|body| body["model"].as_str().map(str::to_owned));
    if model.as_deref() != Some(gateway.upstream_model()) {
        bail!(
            "{} probe: the mock received model {model:?} instead of {:?}",
            job.scenario.name(),
            gateway.upstream_model()
        );
    }
    mock.clear_recorded();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load.

/// When a round's requests count: sent at or after `measure_from` and before `until`.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    until: Instant,
}

/// What one connection saw in a round.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn absorb(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// A warm-up, then a measured window, with `concurrency` connections in a closed loop.
async fn run_round(job: Arc<Job>, settings: &Settings) -> anyhow::Result<RoundStats> {
    let clients = (0..settings.concurrency)
        .map(|_| http_client())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let window = Window {
        measure_from: start + WARMUP,
        until: start + WARMUP + settings.seconds,
    };
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
        let latency = sent.elapsed();
        match outcome {
            Ok(()) if sent >= window.measure_from => tally
                .latencies_us
                .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
            Ok(()) => {}
            Err(error) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(error);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

struct RoundStats {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

impl RoundStats {
    fn new(mut tally: Tally, window: Duration) -> RoundStats {
        tally.latencies_us.sort_unstable();
        let requests = tally.latencies_us.len() as u64;
        let mean_us = if requests == 0 {
            0.0
        } else {
            tally.latencies_us.iter().sum::<u64>() as f64 / requests as f64
        };
        RoundStats {
            requests,
            errors: tally.errors,
            first_error: tally.first_error,
            mean_us,
            p50_us: percentile(&tally.latencies_us, 0.50),
            p99_us: percentile(&tally.latencies_us, 0.99),
            rps: requests as f64 / window.as_secs_f64(),
        }
    }

    fn line(&self) -> String {
        let mut line = format!(
            "{:>9.1} req/s  mean {:>9}  p50 {:>9}  p99 {:>9}  ({} requests, {} errors)",
            self.rps,
            format_us(self.mean_us),
            format_us(self.p50_us),
            format_us(self.p99_us),
            self.requests,
            self.errors
        );
        if let Some(error) = &self.first_error {
            line.push_str(&format!("  FIRST ERROR: {error}"));
        }
        line
    }

    fn to_json(&self) -> Value {
        json!({
            "mean_us": round1(self.mean_us),
            "p50_us": round1(self.p50_us),
            "p99_us": round1(self.p99_us),
            "rps": round1(self.rps),
            "requests": self.requests,
            "errors": self.errors,
        })
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One gateway in one scenario: medians across rounds, totals of requests and errors.
struct Summary {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    rounds: Vec<RoundStats>,
}

impl Summary {
    fn of(rounds: Vec<RoundStats>) -> Summary {
        Summary {
            mean_us: median(rounds.iter().map(|r| r.mean_us)),
            p50_us: median(rounds.iter().map(|r| r.p50_us)),
            p99_us: median(rounds.iter().map(|r| r.p99_us)),
            rps: median(rounds.iter().map(|r| r.rps)),
            requests: rounds.iter().map(|r| r.requests).sum(),
            errors: rounds.iter().map(|r| r.errors).sum(),
            first_error: rounds.iter().find_map(|r| r.first_error.clone()),
            rounds,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "mean_us": round1(self.mean_us),
            "p50_us": round1(self.p50_us),
            "p99_us": round1(self.p99_us),
            "rps": round1(self.rps),
            "requests": self.requests,
            "errors": self.errors,
            "rounds": self.rounds.iter().map(RoundStats::to_json).collect::<Vec<_>>(),
        })
    }
}

struct ScenarioResult {
    scenario: Scenario,
    baseline: Summary,
    gantry: Summary,
}

impl ScenarioResult {
    fn added_p50_us(&self) -> f64 {
        self.gantry.p50_us - self.baseline.p50_us
    }

    fn added_p99_us(&self) -> f64 {
        self.gantry.p99_us - self.baseline.p99_us
    }

    fn added_mean_us(&self) -> f64 {
        self.gantry.mean_us - self.baseline.mean_us
    }

    fn throughput_ratio(&self) -> f64 {
        if self.baseline.rps > 0.0 {
            self.gantry.rps / self.baseline.rps
        } else {
            0.0
        }
    }

    fn print(&self, settings: &Settings) {
        println!(
            "== {} ({}): medians of {} rounds x {} s at concurrency {} ==",
            self.scenario.name(),
            self.scenario.describe(),
            settings.rounds,
            settings.seconds.as_secs(),
            settings.concurrency
        );
        println!(
            "  {:<10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>7}",
            "gateway", "p50", "p99", "mean", "req/s", "requests", "errors"
        );
        for (gateway, summary) in [
            (Gateway::Baseline, &self.baseline),
            (Gateway::Gantry, &self.gantry),
        ] {
            println!(
                "  {:<10} {:>10} {:>10} {:>10} {:>11.1} {:>10} {:>7}",
                gateway.name(),
                format_us(summary.p50_us),
                format_us(summary.p99_us),
                format_us(summary.mean_us),
                summary.rps,
                summary.requests,
                summary.errors
            );
        }
        println!(
            "  {:<10} {:>10} {:>10} {:>10} {:>10.3}x   (gantry minus baseline; req/s gantry/baseline)\n",
            "added",
            format_signed_us(self.added_p50_us()),
            format_signed_us(self.added_p99_us()),
            format_signed_us(self.added_mean_us()),
            self.throughput_ratio()
        );
    }

    fn to_json(&self) -> Value {
        json!({
            "baseline": self.baseline.to_json(),
            "gantry": self.gantry.to_json(),
            "added_p50_us": round1(self.added_p50_us()),
            "added_p99_us": round1(self.added_p99_us()),
            "added_mean_us": round1(self.added_mean_us()),
            "throughput_ratio": (self.throughput_ratio() * 1000.0).round() / 1000.0,
        })
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn format_us(us: f64) -> String {
    if us.abs() < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn format_signed_us(us: f64) -> String {
    let sign = if us >= 0.0 { "+" } else { "-" };
    format!("{sign}{}", format_us(us.abs()))
}

// ---------------------------------------------------------------------------------------------
// Reporting.

/// Facts about the machine and Envoy, printed with the results.
struct Machine {
    nproc: usize,
    cpu: String,
    kernel: String,
    load_average: String,
    envoy_version: String,
}

impl Machine {
    fn detect(envoy_bin: &Path) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, name)| name.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let load_average = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let envoy_version = std::process::Command::new(envoy_bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.split_once("version:")
                    .map(|(_, version)| version.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average,
            envoy_version,
        }
    }
}

/// The command line as typed, quoted for a POSIX shell where needed.
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_header(
    settings: &Settings,
    command: &str,
    machine: &Machine,
    gantry_bin: &Path,
    envoy_bin: &Path,
    bodies: &RequestBodies,
) {
    println!("gantry-bench: the cost of Gantry's ext_proc, against plain Envoy in the same run");
    println!("command:  {command}");
    println!(
        "machine:  nproc {}, {}, Linux {}, load average {} at start",
        machine.nproc, machine.cpu, machine.kernel, machine.load_average
    );
    println!(
        "envoy:    {} ({}); default --concurrency, --log-level warn for both gateways",
        envoy_bin.display(),
        machine.envoy_version
    );
    println!("gantry:   {}", gantry_bin.display());
    if cfg!(debug_assertions) || gantry_bin.components().any(|c| c.as_os_str() == "debug") {
        println!(
            "WARNING:  a debug build is being measured; build with \
             `cargo build --release -p gantry -p gantry-bench`"
        );
    }
    println!(
        "load:     {} connections x 1 request in flight, {} s warm-up + {} s per round, {} rounds \
         per gateway, alternating; scenarios: {}",
        settings.concurrency,
        WARMUP.as_secs(),
        settings.seconds.as_secs(),
        settings.rounds,
        settings
            .scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "request:  POST {CHAT_PATH}, model '{ALIAS}', {} bytes (chat) / {} bytes (stream)",
        bodies.chat.len(),
        bodies.stream.len()
    );
}

fn print_error_banner(errors: u64, results: &[ScenarioResult]) {
    let bar = "!".repeat(96);
    println!("{bar}");
    println!("!! {errors} REQUESTS FAILED: the numbers above are NOT a valid measurement.");
    for result in results {
        for (gateway, summary) in [
            (Gateway::Baseline, &result.baseline),
            (Gateway::Gantry, &result.gantry),
        ] {
            if summary.errors > 0 {
                println!(
                    "!!   {} / {}: {} errors; first: {}",
                    result.scenario.name(),
                    gateway.name(),
                    summary.errors,
                    summary.first_error.as_deref().unwrap_or("?")
                );
            }
        }
    }
    println!("{bar}");
}

fn report_json(
    settings: &Settings,
    command: &str,
    machine: &Machine,
    bodies: &RequestBodies,
    results: &[ScenarioResult],
    errors: u64,
) -> Value {
    let scenarios: serde_json::Map<String, Value> = results
        .iter()
        .map(|r| (r.scenario.name().to_owned(), r.to_json()))
        .collect();
    json!({
        "bench": "gantry-bench",
        "command": command,
        "nproc": machine.nproc,
        "cpu": machine.cpu,
        "kernel": machine.kernel,
        "load_average_at_start": machine.load_average,
        "envoy_version": machine.envoy_version,
        "concurrency": settings.concurrency,
        "warmup_seconds": WARMUP.as_secs(),
        "seconds_per_round": settings.seconds.as_secs(),
        "rounds": settings.rounds,
        "body_bytes": { "chat": bodies.chat.len(), "stream": bodies.stream.len() },
        "statistic": "per gateway, the median across rounds of each round's mean/p50/p99 latency and req/s; added = gantry - baseline; throughput_ratio = gantry req/s / baseline req/s",
        "scenarios": scenarios,
        "errors": errors,
        "valid": errors == 0,
    })
}
