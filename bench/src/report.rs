//! Reporting: the header, the per-scenario tables, the error banner and the JSON line.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::decisions::DecisionResults;
use crate::gateways::Gateway;
use crate::guards::{self, GuardResults, PROMPT_KIB, STREAM_CHUNKS, STREAM_CHUNK_DELAY_MS};
use crate::load::{RequestBodies, Scenario};
use crate::mcp::{McpResults, UPSTREAMS};
use crate::mcp_wire::{ECHO_TEXT, HANDSHAKE_VERSION, STATELESS_VERSION};
use crate::stats::{table_header, Delta, Summary, Unit};
use crate::{Settings, ALIAS, CHAT_PATH, WARMUP};

/// Width of the first column of the tables.
const LABEL_WIDTH: usize = 24;

/// One scenario: each gateway's medians across rounds.
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub summaries: Vec<(Gateway, Summary)>,
}

/// A difference between two gateways: its table label, its key in the JSON report (`None`:
/// the flat `added_*`/`throughput_ratio` keys of gantry vs baseline), a note, and the values.
struct Comparison {
    label: &'static str,
    key: Option<&'static str>,
    note: &'static str,
    delta: Delta,
}

impl ScenarioResult {
    fn get(&self, gateway: Gateway) -> Option<&Summary> {
        self.summaries
            .iter()
            .find(|(g, _)| *g == gateway)
            .map(|(_, summary)| summary)
    }

    fn comparisons(&self) -> Vec<Comparison> {
        let mut comparisons = Vec::new();
        let baseline = self.get(Gateway::Baseline);
        let gantry = self.get(Gateway::Gantry);
        let gantry_auth = self.get(Gateway::GantryAuth);
        if let (Some(gantry), Some(baseline)) = (gantry, baseline) {
            comparisons.push(Comparison {
                label: "gantry - baseline",
                key: None,
                note: "(latency gantry adds; req/s gantry/baseline)",
                delta: Delta::between(gantry, baseline),
            });
        }
        let module = self.get(Gateway::GantryModule);
        if let (Some(module), Some(baseline)) = (module, baseline) {
            comparisons.push(Comparison {
                label: "gantry-module - baseline",
                key: Some("gantry_module_minus_baseline"),
                note: "(latency the dynamic module adds; req/s gantry-module/baseline)",
                delta: Delta::between(module, baseline),
            });
        }
        if let (Some(module), Some(gantry)) = (module, gantry) {
            comparisons.push(Comparison {
                label: "gantry-module - gantry",
                key: Some("gantry_module_minus_gantry"),
                note: "(module vs ext_proc: < 0 = the module is faster; req/s module/ext_proc)",
                delta: Delta::between(module, gantry),
            });
        }
        if let (Some(gantry_auth), Some(baseline)) = (gantry_auth, baseline) {
            comparisons.push(Comparison {
                label: "gantry+auth - baseline",
                key: Some("gantry_auth_minus_baseline"),
                note: "(gantry with authorization, against plain Envoy)",
                delta: Delta::between(gantry_auth, baseline),
            });
        }
        if let (Some(gantry_auth), Some(gantry)) = (gantry_auth, gantry) {
            comparisons.push(Comparison {
                label: "gantry+auth - gantry",
                key: Some("gantry_auth_minus_gantry"),
                note: "(the cost of ext_authz itself)",
                delta: Delta::between(gantry_auth, gantry),
            });
        }
        if let (Some(embedded), Some(gantry)) = (self.get(Gateway::GantryBudgetEmbedded), gantry) {
            comparisons.push(Comparison {
                label: "budget-embedded - gantry",
                key: Some("budget_embedded_minus_gantry"),
                note: "(the cost of budget checks on the embedded store)",
                delta: Delta::between(embedded, gantry),
            });
        }
        if let (Some(redis), Some(gantry)) = (self.get(Gateway::GantryBudgetRedis), gantry) {
            comparisons.push(Comparison {
                label: "budget-redis - gantry",
                key: Some("budget_redis_minus_gantry"),
                note: "(the cost of budget checks on Redis)",
                delta: Delta::between(redis, gantry),
            });
        }
        comparisons
    }

    pub fn errors(&self) -> u64 {
        self.summaries.iter().map(|(_, s)| s.errors).sum()
    }

    pub fn print(&self, settings: &Settings) {
        println!(
            "== {} ({}): medians of {} rounds x {} s at concurrency {} ==",
            self.scenario.name(),
            self.scenario.describe(),
            settings.rounds,
            settings.seconds.as_secs(),
            settings.concurrency
        );
        println!("{}", table_header("gateway", LABEL_WIDTH, Unit::Requests));
        for (gateway, summary) in &self.summaries {
            println!("{}", summary.row(gateway.name(), LABEL_WIDTH));
        }
        for comparison in self.comparisons() {
            println!(
                "{}",
                comparison
                    .delta
                    .row(comparison.label, LABEL_WIDTH, comparison.note)
            );
        }
        println!();
    }

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        for (gateway, summary) in &self.summaries {
            object.insert(gateway.key().into(), summary.to_json());
        }
        for comparison in self.comparisons() {
            match comparison.key {
                None => comparison
                    .delta
                    .insert_json(&mut object, "throughput_ratio"),
                Some(key) => {
                    object.insert(key.into(), comparison.delta.to_json("throughput_ratio"));
                }
            }
        }
        Value::Object(object)
    }
}

/// Facts about the machine and Envoy, printed with the results.
pub struct Machine {
    nproc: usize,
    cpu: String,
    kernel: String,
    load_average: String,
    envoy_version: String,
}

impl Machine {
    pub fn detect(envoy_bin: Option<&Path>) -> Machine {
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
        let envoy_version = envoy_bin
            .and_then(|envoy_bin| {
                std::process::Command::new(envoy_bin)
                    .arg("--version")
                    .output()
                    .ok()
            })
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
pub fn command_line() -> String {
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

pub fn print_header(
    settings: &Settings,
    command: &str,
    machine: &Machine,
    gantry_bin: &Path,
    envoy_bin: Option<&Path>,
    bodies: &RequestBodies,
) {
    let module = settings.scenarios.iter().any(|s| s.module());
    println!(
        "{}",
        if settings.guards {
            "gantry-bench: the cost of Gantry's request guards per KiB of prompt (in process) and \
             the TTFT its response guards add to a stream, against gantry without guards and \
             plain Envoy in the same run"
        } else if settings.mcp {
            "gantry-bench: the cost of Gantry's MCP bridge, against the MCP server alone in the \
             same run"
        } else if module {
            "gantry-bench: the cost of Gantry's policy in Envoy's dynamic module and in ext_proc, \
             against plain Envoy in the same run"
        } else {
            "gantry-bench: the cost of Gantry's ext_proc, ext_authz and budget checks, against \
             plain Envoy in the same run"
        }
    );
    println!("command:  {command}");
    println!(
        "machine:  nproc {}, {}, Linux {}, load average {} at start",
        machine.nproc, machine.cpu, machine.kernel, machine.load_average
    );
    if let Some(envoy_bin) = envoy_bin {
        println!(
            "envoy:    {} ({}); default --concurrency, --log-level warn for every gateway",
            envoy_bin.display(),
            machine.envoy_version
        );
    }
    println!("gantry:   {}", gantry_bin.display());
    if cfg!(debug_assertions) || gantry_bin.components().any(|c| c.as_os_str() == "debug") {
        println!(
            "WARNING:  a debug build is being measured; build with \
             `cargo build --release -p gantry -p gantry-bench{}`",
            if module {
                " -p gantry-dynamic-module"
            } else {
                ""
            }
        );
    }
    let mut measured: Vec<&str> = settings.scenarios.iter().map(|s| s.name()).collect();
    if settings.mcp {
        measured.push("mcp");
    }
    if settings.decisions {
        measured.push("decisions");
    }
    if settings.guards {
        measured.push("guards");
    }
    println!(
        "load:     {} connections x 1 request (or Check call) in flight, {} s warm-up + {} s per \
         round, {} rounds per gateway (or decision kind), alternating; measured: {}",
        settings.concurrency,
        WARMUP.as_secs(),
        settings.seconds.as_secs(),
        settings.rounds,
        measured.join(", ")
    );
    if !settings.scenarios.is_empty() {
        println!(
            "request:  POST {CHAT_PATH}, model '{ALIAS}', {} bytes (chat, authz, budgets, \
             module-chat) / {} bytes (stream, module-stream)",
            bodies.chat.len(),
            bodies.stream.len()
        );
    }
    if settings.guards {
        let sizes: Vec<String> = PROMPT_KIB.iter().map(|kib| format!("{kib} KiB")).collect();
        println!(
            "guards:   request guards timed in process (plan_forward_in, prompts of {}); then \
             POST {CHAT_PATH}, model '{ALIAS}', {} bytes, \"stream\": true, through baseline vs \
             gantry vs gantry+response-guards, the mock streaming {STREAM_CHUNKS} content events \
             {STREAM_CHUNK_DELAY_MS} ms apart ({} bytes of text)",
            sizes.join(", "),
            bodies.stream.len(),
            guards::STREAM_REPLY.len()
        );
    }
    if settings.scenarios.contains(&Scenario::Authz) {
        println!(
            "authz:    baseline vs gantry vs gantry+auth (gantry run with an `auth` section: one \
             API key, checked by ext_authz before ext_proc); every gateway gets the same request \
             with `Authorization: Bearer <key>`"
        );
    }
    if settings.scenarios.contains(&Scenario::Budgets) {
        println!(
            "budgets:  baseline vs gantry vs gantry+budget-embedded vs gantry+budget-redis \
             (gantry run with a `governance` section: a dollar and a token budget and a rate \
             limit, all too large to refuse, on a SQLite file or on Redis); each request is \
             admitted against 3 counters, settled at the end of its reply, and logged"
        );
    }
    if module {
        println!(
            "module:   baseline vs gantry-module (gantry run --mode module: the same config, the \
             policy in Envoy's dynamic module {}, no ext_proc server) vs gantry (ext_proc), for \
             the chat and the stream request",
            settings
                .module
                .as_deref()
                .map_or_else(|| "libgantry.so".to_owned(), |p| p.display().to_string())
        );
    }
    if settings.mcp {
        let upstreams: Vec<String> = UPSTREAMS
            .iter()
            .map(|(name, extra)| format!("{name} (+{extra} tools)"))
            .collect();
        println!(
            "mcp:      POST /mcp through Envoy to gantry run's MCP bridge federating {} (fixture \
             servers on the mcp 2.3.0 Python SDK, streamable HTTP, JSON replies) vs straight to \
             the slowest of them; tools/list, and tools/call echo {{\"text\": {ECHO_TEXT:?}}}; \
             raw JSON-RPC, stateless {STATELESS_VERSION} and handshake {HANDSHAKE_VERSION} \
             (initialize once per connection)",
            upstreams.join(", ")
        );
    }
}

/// Everything a run measured.
pub struct Measured<'a> {
    pub scenarios: &'a [ScenarioResult],
    pub decisions: Option<&'a DecisionResults>,
    pub mcp: Option<&'a McpResults>,
    pub guards: Option<&'a GuardResults>,
    pub admin: Option<&'a crate::admin::AdminResults>,
}

impl Measured<'_> {
    /// Failed requests and decisions, over everything measured.
    pub fn errors(&self) -> u64 {
        self.scenarios
            .iter()
            .map(ScenarioResult::errors)
            .sum::<u64>()
            + self.decisions.map_or(0, DecisionResults::errors)
            + self.mcp.map_or(0, McpResults::errors)
            + self.guards.map_or(0, GuardResults::errors)
            + self.admin.map_or(0, |a| a.errors)
    }
}

/// The loud part of a run with failures.
pub fn print_error_banner(errors: u64, measured: &Measured<'_>) {
    let Measured {
        scenarios: results,
        decisions,
        mcp,
        guards,
        admin,
    } = *measured;
    let bar = "!".repeat(96);
    println!("{bar}");
    println!(
        "!! {errors} REQUESTS OR DECISIONS FAILED: the numbers above are NOT a valid measurement."
    );
    for result in results {
        for (gateway, summary) in &result.summaries {
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
    let guard_failures = guards.map(GuardResults::failures).unwrap_or_default();
    let mcp_failures = mcp.map(McpResults::failures).unwrap_or_default();
    for (what, errors, first) in guard_failures.into_iter().chain(mcp_failures) {
        println!(
            "!!   {what}: {errors} errors; first: {}",
            first.unwrap_or("?")
        );
    }
    for (kind, errors, first) in decisions.map(DecisionResults::failures).unwrap_or_default() {
        println!(
            "!!   decisions / {kind}: {errors} errors; first: {}",
            first.unwrap_or("?")
        );
    }
    if let Some(admin) = admin.filter(|a| a.errors > 0) {
        println!(
            "!!   admin: {} requests got another status than the change should give",
            admin.errors
        );
    }
    println!("{bar}");
}

pub fn report_json(
    settings: &Settings,
    command: &str,
    machine: &Machine,
    bodies: &RequestBodies,
    measured: &Measured<'_>,
    errors: u64,
) -> Value {
    let Measured {
        scenarios: results,
        decisions,
        mcp,
        guards,
        admin,
    } = *measured;
    let mut scenarios = Map::new();
    for result in results {
        match result.scenario.json_group() {
            None => {
                scenarios.insert(result.scenario.name().to_owned(), result.to_json());
            }
            Some((group, key)) => {
                if let Value::Object(group) = scenarios
                    .entry(group)
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    group.insert(key.to_owned(), result.to_json());
                }
            }
        }
    }
    if let Some(guards) = guards {
        scenarios.insert("guards".to_owned(), guards.to_json());
    }
    if let Some(admin) = admin {
        scenarios.insert("admin".to_owned(), admin.to_json());
    }
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
        "statistic": "per gateway (and decision kind), the median across rounds of each round's mean/p50/p99 latency and req/s (decisions/s); added = gantry - baseline (authz also: gantry_auth - baseline, gantry_auth - gantry; budgets also: budget_embedded - gantry, budget_redis - gantry; module.chat and module.stream also: gantry_module - baseline, gantry_module - gantry; mcp: bridge - direct; guards.prompt: per size the median across batches of each batch's median µs per plan_forward_in call, added = guarded - unguarded, added_us_per_kib per KiB of user message, ratio guarded/unguarded; guards.stream: ttft/first_event/total per gateway, gantry_minus_baseline and response_guards_minus_gantry; decisions: jwt - api_key, api_key_rules - api_key); throughput_ratio (rate_ratio) = the same rates divided",
        "scenarios": scenarios,
        "decisions": decisions.map(DecisionResults::to_json),
        "mcp": mcp.map(McpResults::to_json),
        "errors": errors,
        "valid": errors == 0,
    })
}
