//! The MCP conformance suite (npm `@modelcontextprotocol/conformance` 0.2.0-alpha.12, under
//! Node 22) against the bridge through real Envoy (the stack's `/mcp` URL), in four runs. The
//! suite judges each run itself against an expected-failures baseline (`--expected-failures`,
//! `tests/interop/mcp/conformance-expected-failures.<run>.yaml`): a failing check that is not
//! in the baseline fails the test, and so does a baselined check that passes (a stale entry).
//!
//! - **front door**: the scenarios that need no fixture tools, with an ordinary upstream
//!   (`fixture_server.py`, prefixed names) behind the bridge; at each scenario's default wire
//!   and at 2026-07-28 (one scenario per invocation, `--spec-version 2026-07-28 --force`,
//!   which is how `--requirements 2026-07-28` runs a scenario).
//! - **fixtures**: every server scenario, with `conformance_fixture.py` as the only upstream
//!   and `naming: { mode: none }`, so the suite's fixture names (`test_simple_text`, …) reach it
//!   unprefixed: the active suite (default wire), and `--requirements 2026-07-28` plus, one by
//!   one, the scenarios that set runs without scoring (the suite leaves those out of the
//!   baseline check of a requirements run).
//!
//! Every baseline entry carries a one-line `# CATEGORY: reason` (checked below); entries marked
//! `BRIDGE BUG` are bugs to fix, after which the suite reports them stale until removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_testkit::mcp_peers::{
    conformance_fixture, conformance_run, interop_dir, CliRun, FixtureOptions, FixtureServer,
    McpPeer,
};
use gantry_testkit::{free_ports, GantryStack, StackPorts};
use serde_json::{json, Value};

use crate::{http, start_stack};

const V2026: &str = "2026-07-28";

/// Front-door scenarios at their default wire (2025-11-25 for all of these).
const FRONT_DOOR_DEFAULT: &[&str] = &[
    "server-initialize",
    "server-session-lifecycle",
    "ping",
    "logging-set-level",
    "tools-list",
    "prompts-list",
    "resources-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
];

/// Front-door scenarios at 2026-07-28.
const FRONT_DOOR_2026: &[&str] = &[
    "server-stateless",
    "http-header-validation",
    "caching",
    "tools-list",
    "prompts-list",
    "resources-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
    "sep-2164-resource-not-found",
];

/// The server scenarios `--requirements 2026-07-28` runs without scoring (its `not_scored`:
/// extensions and scenarios pending in the suite), which its baseline check ignores.
const UNSCORED_2026: &[&str] = &[
    "tasks-lifecycle",
    "tasks-capability-negotiation",
    "tasks-wire-fields",
    "tasks-request-state-removal",
    "tasks-mrtr-input",
    "tasks-request-headers",
    "tasks-dispatch-and-envelope",
    "tasks-status-notifications",
    "tasks-required-task-error",
    "tasks-mrtr-composition",
    "json-schema-2020-12",
    "http-header-validation",
    "http-custom-header-server-validation",
];

/// Why a baseline entry may exist (the comment on its line starts with one of these).
const CATEGORIES: &[&str] = &[
    "BRIDGE BUG:",
    "LIMITATION:",
    "FIXTURE GAP:",
    "NO FIXTURE:",
    "EXTENSION:",
];

fn baseline_path(run: &str) -> PathBuf {
    interop_dir().join(format!("conformance-expected-failures.{run}.yaml"))
}

/// One entry of a baseline file: `<scenario>` or `<scenario>:<check-id>`, and its reason.
#[derive(Debug)]
struct BaselineEntry {
    id: String,
    reason: String,
}

/// The entries of a baseline file, or why the file breaks the conventions above.
fn read_baseline(path: &Path) -> Result<Vec<BaselineEntry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut entries = Vec::new();
    let mut has_server_key = false;
    for (number, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), number + 1);
        let trimmed = line.trim_start();
        if line.starts_with("server:") {
            has_server_key = true;
            continue;
        }
        let Some(item) = trimmed.strip_prefix("- ") else {
            if !(trimmed.is_empty() || trimmed.starts_with('#')) {
                return Err(format!("{at}: unexpected line {line:?}"));
            }
            continue;
        };
        let Some((id, comment)) = item.split_once(" # ") else {
            return Err(format!(
                "{at}: entry without a `# CATEGORY: reason` comment"
            ));
        };
        let id = id.trim().to_string();
        let comment = comment.trim();
        let Some(category) = CATEGORIES.iter().find(|c| comment.starts_with(**c)) else {
            return Err(format!(
                "{at}: the reason must start with one of {CATEGORIES:?}: {comment:?}"
            ));
        };
        if comment[category.len()..].trim().len() < 10 {
            return Err(format!("{at}: the reason is too short: {comment:?}"));
        }
        if id.contains(": ") || id.is_empty() {
            return Err(format!(
                "{at}: not `<scenario>` or `<scenario>:<check-id>`: {id:?}"
            ));
        }
        if entries.iter().any(|e: &BaselineEntry| e.id == id) {
            return Err(format!("{at}: {id} is listed twice"));
        }
        entries.push(BaselineEntry {
            id,
            reason: comment.to_string(),
        });
    }
    if !has_server_key {
        return Err(format!("{}: no top-level `server:` list", path.display()));
    }
    Ok(entries)
}

/// A stack with the bridge; `mcp` is the rest of the `mcp` section (after `listen`).
async fn bridge_stack(mcp: &str) -> GantryStack {
    let ports = StackPorts::free();
    let mcp_port = free_ports(1)[0];
    let yaml = format!(
        "{head}mcp:\n  listen: 127.0.0.1:{mcp_port}\n{mcp}",
        head = ports.config_head()
    );
    start_stack(
        ports,
        yaml,
        vec![("GANTRY_MCP_SESSION_SECRET", "conformance-secret")],
    )
    .await
}

/// The bridge in front of an ordinary upstream (prefixed names).
async fn front_door_stack() -> (GantryStack, McpPeer) {
    let peer = FixtureServer::start("alpha", FixtureOptions::default());
    let stack = bridge_stack(&format!(
        "  upstreams:\n    - {{ name: alpha, url: '{}', timeout_ms: 5000 }}\n",
        peer.url
    ))
    .await;
    (stack, peer)
}

/// The bridge in front of the conformance fixture alone, names unprefixed.
async fn fixtures_stack() -> (GantryStack, McpPeer) {
    let peer = conformance_fixture();
    let stack = bridge_stack(&format!(
        "  naming: {{ mode: none }}\n  upstreams:\n    - {{ name: conformance, url: '{}', timeout_ms: 5000 }}\n",
        peer.url
    ))
    .await;
    assert_names_are_unprefixed(&stack, &peer).await;
    (stack, peer)
}

/// With `naming: { mode: none }` the suite's fixture names come through as they are.
async fn assert_names_are_unprefixed(stack: &GantryStack, peer: &McpPeer) {
    let url = stack.url("/mcp");
    let client = http();
    let post = |body: Value, session: Option<String>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.body(body.to_string()).send()
    };
    let initialized = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "naming-check", "version": "1"}}}),
        None,
    )
    .await
    .expect("initialize reaches the bridge");
    let session = initialized
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no session id ({})\n{}", initialized.status(), peer.logs()));
    post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(session.clone()),
    )
    .await
    .expect("notifications/initialized");
    let listed = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
        Some(session),
    )
    .await
    .expect("tools/list reaches the bridge")
    .text()
    .await
    .expect("tools/list body");
    let data = listed
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&listed);
    let answer: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let names: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {listed}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for expected in [
        "test_simple_text",
        "test_sampling",
        "test_missing_capability",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
    assert!(
        names.iter().all(|n| !n.contains("__")),
        "naming mode none still prefixes: {names:?}"
    );
}

/// One invocation of the suite within a run.
struct Invocation {
    label: String,
    args: Vec<String>,
    /// Scenarios whose checks another invocation of the run counts.
    counted_elsewhere: &'static [&'static str],
}

impl Invocation {
    fn suite(label: &str, args: &[&str], counted_elsewhere: &'static [&'static str]) -> Self {
        Invocation {
            label: label.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            counted_elsewhere,
        }
    }

    /// One scenario at its default wire, or at `wire` (forced, as a requirements run does).
    fn scenario(scenario: &str, wire: Option<&str>) -> Self {
        let mut args = vec!["--scenario".to_string(), scenario.to_string()];
        if let Some(wire) = wire {
            args.extend(["--spec-version".into(), wire.into(), "--force".into()]);
        }
        Invocation {
            label: scenario.to_string(),
            args,
            counted_elsewhere: &[],
        }
    }
}

/// Checks counted by status.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    scenarios: usize,
    passed: usize,
    failed: usize,
    warnings: usize,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.scenarios += other.scenarios;
        self.passed += other.passed;
        self.failed += other.failed;
        self.warnings += other.warnings;
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `results/server-<scenario>-<timestamp>` → `<scenario>`.
fn scenario_of_result_dir(name: &str) -> String {
    let name = name.strip_prefix("server-").unwrap_or(name);
    // The timestamp is `YYYY-MM-DDTHH-MM-SS-mmmZ`: five dashes from the end, then one more.
    match name.rmatch_indices('-').nth(5) {
        Some((at, _)) => name[..at].to_string(),
        None => name.to_string(),
    }
}

/// Every check the suite wrote under `dir`, by scenario.
fn read_checks(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(entry.path().join("checks.json")) else {
            continue;
        };
        let checks: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        out.entry(scenario_of_result_dir(&name))
            .or_insert_with(Vec::new)
            .extend(checks);
    }
    out
}

fn count(checks: &BTreeMap<String, Vec<Value>>, skip: &[&str]) -> Counts {
    let mut counts = Counts::default();
    for (scenario, checks) in checks {
        if skip.contains(&scenario.as_str()) {
            continue;
        }
        counts.scenarios += 1;
        for check in checks {
            match check["status"].as_str() {
                Some("SUCCESS") => counts.passed += 1,
                Some("FAILURE") => counts.failed += 1,
                Some("WARNING") => counts.warnings += 1,
                _ => {}
            }
        }
    }
    counts
}

/// Failing and warning checks, with the suite's message, for failure reports.
fn failing_checks(checks: &BTreeMap<String, Vec<Value>>) -> Vec<String> {
    let mut out = Vec::new();
    for (scenario, checks) in checks {
        for check in checks {
            let status = check["status"].as_str().unwrap_or("");
            if status == "FAILURE" || status == "WARNING" {
                let message = check["errorMessage"].as_str().unwrap_or("");
                out.push(format!(
                    "  {status} {scenario}:{} — {}",
                    check["id"].as_str().unwrap_or("?"),
                    message.chars().take(300).collect::<String>()
                ));
            }
        }
    }
    out
}

/// Runs every invocation against `url` with the run's baseline and fails the test (after all
/// of them ran) if the suite found a failure outside the baseline or a stale entry.
async fn run_against_baseline(
    run: &str,
    url: &str,
    invocations: Vec<Invocation>,
    stack: &GantryStack,
    peer: &McpPeer,
) {
    let baseline = baseline_path(run);
    let entries = read_baseline(&baseline).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut total = Counts::default();
    let mut expected = 0;
    let mut summary = Vec::new();
    let mut problems = Vec::new();
    for invocation in invocations {
        let invocation_started = Instant::now();
        let results = tempfile::Builder::new()
            .prefix("gantry-conformance")
            .tempdir()
            .expect("temp dir");
        let mut args: Vec<String> = vec!["server".into(), "--url".into(), url.into()];
        args.extend(invocation.args.iter().cloned());
        args.extend([
            "--expected-failures".into(),
            baseline.display().to_string(),
            "-o".into(),
            results.path().display().to_string(),
        ]);
        let cli_args = args.clone();
        let run_result: CliRun = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = cli_args.iter().map(String::as_str).collect();
            conformance_run(&args)
        })
        .await
        .expect("conformance task");
        let stdout = strip_ansi(&run_result.stdout);
        let checks = read_checks(results.path());
        let counts = count(&checks, invocation.counted_elsewhere);
        let excused = stdout.lines().filter(|l| l.starts_with("  ~ ")).count();
        total.add(counts);
        expected += excused;
        summary.push(format!(
            "  {:<38} {:>5.1}s {:>2} scenarios, {:>3} checks passed, {:>2} failed, {} warnings ({} baselined)",
            invocation.label,
            invocation_started.elapsed().as_secs_f64(),
            counts.scenarios,
            counts.passed,
            counts.failed,
            counts.warnings,
            excused
        ));
        let judged = stdout.contains("Baseline check passed");
        if run_result.code != Some(0) || !judged || checks.is_empty() {
            problems.push(format!(
                "=== {} (exit {:?}{}) ===\nconformance {}\n--- failing checks ---\n{}\n--- suite output (tail) ---\n{}\n--- stderr (tail) ---\n{}",
                invocation.label,
                run_result.code,
                if judged { "" } else { ", baseline check failed" },
                args.join(" "),
                failing_checks(&checks).join("\n"),
                tail(&stdout, 60),
                tail(&strip_ansi(&run_result.stderr), 20),
            ));
        }
    }
    let bridge_bugs = entries
        .iter()
        .filter(|e| e.reason.starts_with("BRIDGE BUG:"))
        .count();
    println!(
        "MCP conformance run '{run}' in {:.1?}: {} scenarios, {} checks passed, {} failed, {} warnings; {expected} failure(s) excused by {} ({} entries, {bridge_bugs} BRIDGE BUG)\n{}",
        started.elapsed(),
        total.scenarios,
        total.passed,
        total.failed,
        total.warnings,
        baseline.display(),
        entries.len(),
        summary.join("\n")
    );
    if !problems.is_empty() {
        let bridge_log: Vec<String> = strip_ansi(&stack.process.stdout())
            .lines()
            .filter(|l| !l.starts_with('{'))
            .map(str::to_string)
            .collect();
        panic!(
            "the MCP conformance suite disagrees with {} (a failure outside the baseline, or a baselined check that now passes: fix the bridge, or update the baseline with a reason)\n{}\n--- gantry log (tail) ---\n{}\n--- upstream (tail) ---\n{}",
            baseline.display(),
            problems.join("\n\n"),
            tail(&bridge_log.join("\n"), 40),
            tail(&peer.logs(), 20),
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "run '{run}' took {:?}",
        started.elapsed()
    );
}

#[test]
fn mcp_conformance_baselines_give_a_reason_for_every_entry() {
    let runs = [
        "front-door",
        "front-door.2026-07-28",
        "fixtures",
        "fixtures.2026-07-28",
    ];
    for run in runs {
        let entries = read_baseline(&baseline_path(run)).unwrap_or_else(|e| panic!("{e}"));
        for entry in &entries {
            let scenario = entry.id.split(':').next().unwrap_or("");
            assert!(
                !scenario.is_empty() && !scenario.contains(' '),
                "{run}: {entry:?}"
            );
        }
    }
    assert_eq!(
        scenario_of_result_dir("server-tools-list-2026-12-02T00-37-19-094Z"),
        "tools-list"
    );
    assert_eq!(
        scenario_of_result_dir("server-sep-2164-resource-not-found-2026-12-02T00-37-19-094Z"),
        "sep-2164-resource-not-found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_conformance_front_door_default_wire_matches_its_baseline() {
    let (stack, peer) = front_door_stack().await;
    let invocations = FRONT_DOOR_DEFAULT
        .iter()
        .map(|s| Invocation::scenario(s, None))
        .collect();
    run_against_baseline("front-door", &stack.url("/mcp"), invocations, &stack, &peer).await;

    // A baselined scenario that passes is reported stale and fails the run: a fix cannot
    // leave its entry behind unnoticed.
    let dir = tempfile::tempdir().expect("temp dir");
    let stale = dir.path().join("stale.yaml");
    std::fs::write(&stale, "server:\n  - ping\n").expect("write baseline");
    let url = stack.url("/mcp");
    let stale_arg = stale.display().to_string();
    let run = tokio::task::spawn_blocking(move || {
        conformance_run(&[
            "server",
            "--url",
            &url,
            "--scenario",
            "ping",
            "--expected-failures",
            &stale_arg,
        ])
    })
    .await
    .expect("conformance task");
    let stdout = strip_ansi(&run.stdout);
    assert_eq!(run.code, Some(1), "{stdout}");
    assert!(
        stdout.contains("Stale baseline entries") && stdout.contains("  ✓ ping"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_conformance_front_door_at_2026_07_28_matches_its_baseline() {
    let (stack, peer) = front_door_stack().await;
    let invocations = FRONT_DOOR_2026
        .iter()
        .map(|s| Invocation::scenario(s, Some(V2026)))
        .collect();
    run_against_baseline(
        "front-door.2026-07-28",
        &stack.url("/mcp"),
        invocations,
        &stack,
        &peer,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_conformance_fixtures_default_wire_matches_its_baseline() {
    let (stack, peer) = fixtures_stack().await;
    let invocations = vec![Invocation::suite("active suite (default)", &[], &[])];
    run_against_baseline("fixtures", &stack.url("/mcp"), invocations, &stack, &peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_conformance_fixtures_at_2026_07_28_matches_its_baseline() {
    let (stack, peer) = fixtures_stack().await;
    let mut invocations = vec![Invocation::suite(
        "--requirements 2026-07-28 (scored)",
        &["--requirements", V2026],
        UNSCORED_2026,
    )];
    invocations.extend(
        UNSCORED_2026
            .iter()
            .map(|s| Invocation::scenario(s, Some(V2026))),
    );
    run_against_baseline(
        "fixtures.2026-07-28",
        &stack.url("/mcp"),
        invocations,
        &stack,
        &peer,
    )
    .await;
}
