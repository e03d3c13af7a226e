//! The `mcp` scenario: what Gantry's MCP bridge adds to an MCP request. Three fixture
//! upstreams (`tests/interop/mcp/fixture_server.py`, the mcp 2.3.0 Python SDK, streamable HTTP
//! with JSON replies) with 0, 50 and 200 extra trivial tools run behind `gantry run` with an
//! `mcp` section that federates them (every other setting at its default). Clients send raw
//! JSON-RPC either through Envoy to the bridge, which fans `tools/list` out to all three
//! upstreams and merges their 268 tools under prefixed names, or straight to the slowest
//! upstream (the one whose `tools/list` took longest in a short sequential calibration: the one
//! with the most tools), the baseline. `tools/call` of `echo` goes to that same upstream,
//! through the bridge as `<upstream>__echo`. Both protocol eras are measured: stateless
//! 2026-07-28 and the 2025-11-25 handshake (one `initialize` per connection, outside the
//! measured window).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gantry_testkit::mcp_peers::{FixtureOptions, FixtureServer, McpPeer};
use gantry_testkit::{free_ports, GantryStack, StackPorts};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use crate::gateways::{blocking, ensure_running, indent, logs_tail};
use crate::load::Window;
use crate::mcp_wire::{Connection, Era, Expect, McpRequest, Method, ECHO_TEXT};
use crate::stats::{table_header, Delta, RoundStats, Summary, Tally, Unit};
use crate::{Settings, GANTRY_LOG_FILTER, ROUND_NAME_WIDTH};

/// The fixture upstreams: name and number of extra trivial tools (`--extra-tools`).
pub const UPSTREAMS: [(&str, usize); 3] = [("alpha", 0), ("beta", 50), ("gamma", 200)];
/// Sequential direct `tools/list` calls per upstream that decide which one is the slowest.
const CALIBRATION_CALLS: usize = 20;
/// The bridge's public path.
const MCP_PATH: &str = "/mcp";
const SESSION_SECRET: &str = "gantry-bench-mcp-session-secret";
/// The bridge's separator between upstream and tool names (its default).
const SEPARATOR: &str = "__";
const LABEL_WIDTH: usize = 24;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Straight to the slowest upstream: the baseline.
    Direct,
    /// Through Envoy to the bridge, and on to every upstream (lists) or the owner (calls).
    Bridge,
}

impl Route {
    const ALL: [Route; 2] = [Route::Direct, Route::Bridge];

    fn key(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Bridge => "bridge",
        }
    }
}

/// One method in one era: a pair of routes compared.
#[derive(Clone, Copy, Debug)]
struct Case {
    method: Method,
    era: Era,
}

impl Case {
    fn all() -> Vec<Case> {
        Method::ALL
            .into_iter()
            .flat_map(|method| Era::ALL.into_iter().map(move |era| Case { method, era }))
            .collect()
    }

    fn key(self) -> String {
        format!("{}_{}", self.method.key(), self.era.key())
    }

    fn name(self) -> String {
        format!("{}, {}", self.method.name(), self.era.name())
    }
}

/// A fixture upstream and what the probes learnt about it.
struct Upstream {
    name: &'static str,
    extra_tools: usize,
    peer: McpPeer,
    /// Tools it lists.
    tools: usize,
    /// Median latency of a direct `tools/list` in the calibration.
    list_p50: Duration,
}

/// `gantry run` with the bridge, and its upstreams.
pub struct McpBench {
    // Declared first so that gantry stops before its upstreams.
    gantry: GantryStack,
    upstreams: Vec<Upstream>,
    /// Index into `upstreams` of the baseline, set by [`McpBench::probe`].
    slowest: usize,
}

impl McpBench {
    /// Starts the fixture upstreams and `gantry run` federating them. Prints where each runs
    /// and gantry's config.
    pub async fn start(gantry_bin: &std::path::Path) -> anyhow::Result<McpBench> {
        let mut upstreams = Vec::new();
        for (name, extra_tools) in UPSTREAMS {
            let peer = blocking(&format!("start the MCP fixture server {name}"), move || {
                FixtureServer::start(
                    name,
                    FixtureOptions {
                        json_response: true,
                        extra_tools,
                        ..FixtureOptions::default()
                    },
                )
            })
            .await?;
            upstreams.push(Upstream {
                name,
                extra_tools,
                peer,
                tools: 0,
                list_p50: Duration::ZERO,
            });
        }
        // One call, so that the four ports are distinct.
        let free = free_ports(4);
        let ports = StackPorts {
            listen: free[0],
            admin: free[1],
            ext_proc: free[2],
        };
        let mut yaml = format!(
            "{head}mcp:\n  listen: 127.0.0.1:{mcp}\n  upstreams:\n",
            head = ports.config_head(),
            mcp = free[3],
        );
        for upstream in &upstreams {
            yaml.push_str(&format!(
                "    - {{ name: {}, url: '{}' }}\n",
                upstream.name, upstream.peer.url
            ));
        }
        let gantry_bin = gantry_bin.to_path_buf();
        let config = yaml.clone();
        let gantry = blocking("start `gantry run` with the MCP bridge", move || {
            GantryStack::start(
                &gantry_bin,
                ports,
                &config,
                &[
                    ("RUST_LOG", GANTRY_LOG_FILTER),
                    ("GANTRY_MCP_SESSION_SECRET", SESSION_SECRET),
                ],
            )
        })
        .await?;
        for upstream in &upstreams {
            println!(
                "mcp upstream {}: fixture_server.py --json-response --extra-tools {} at {}",
                upstream.name, upstream.extra_tools, upstream.peer.url
            );
        }
        println!(
            "gantry+mcp:  gantry run at {} (the MCP bridge behind Envoy), config:\n{}",
            gantry.url(MCP_PATH),
            indent(&yaml)
        );
        Ok(McpBench {
            gantry,
            upstreams,
            slowest: 0,
        })
    }

    fn bridge_url(&self) -> String {
        self.gantry.url(MCP_PATH)
    }

    fn bridge_tools(&self) -> usize {
        self.upstreams.iter().map(|u| u.tools).sum()
    }

    /// What `case` sends on `route`.
    fn request(&self, case: Case, route: Route) -> McpRequest {
        let slowest = &self.upstreams[self.slowest];
        let (url, tool, expect) = match (route, case.method) {
            (Route::Direct, Method::ToolsList) => (
                slowest.peer.url.clone(),
                String::new(),
                Expect::Tools {
                    count: slowest.tools,
                    includes: vec!["echo".to_owned()],
                },
            ),
            (Route::Bridge, Method::ToolsList) => (
                self.bridge_url(),
                String::new(),
                Expect::Tools {
                    count: self.bridge_tools(),
                    includes: self
                        .upstreams
                        .iter()
                        .map(|u| format!("{}{SEPARATOR}echo", u.name))
                        .collect(),
                },
            ),
            (Route::Direct, Method::ToolsCall) => (
                slowest.peer.url.clone(),
                "echo".to_owned(),
                echo_expect(slowest.name),
            ),
            (Route::Bridge, Method::ToolsCall) => (
                self.bridge_url(),
                format!("{}{SEPARATOR}echo", slowest.name),
                echo_expect(slowest.name),
            ),
        };
        McpRequest {
            url,
            era: case.era,
            method: case.method,
            tool,
            expect,
        }
    }

    fn route_name(&self, route: Route) -> String {
        match route {
            Route::Direct => format!("direct to {}", self.upstreams[self.slowest].name),
            Route::Bridge => format!("bridge ({} upstreams)", self.upstreams.len()),
        }
    }

    /// Learns each upstream's tools and which is slowest, then sends every measured request
    /// once on a fresh connection (with its `initialize`, in the handshake era) and checks the
    /// reply. Fails with gantry's last output on any error.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        for index in 0..self.upstreams.len() {
            let (url, name) = (
                self.upstreams[index].peer.url.clone(),
                self.upstreams[index].name,
            );
            let tools = count_tools(&url)
                .await
                .with_context(|| format!("mcp probe: tools/list straight to {name}"))?;
            let extra = self.upstreams[index].extra_tools;
            if tools <= extra {
                bail!("mcp probe: {name} lists {tools} tools, expected more than {extra}");
            }
            self.upstreams[index].tools = tools;
            let list = McpRequest {
                url,
                era: Era::Stateless,
                method: Method::ToolsList,
                tool: String::new(),
                expect: Expect::Tools {
                    count: tools,
                    includes: vec!["echo".to_owned()],
                },
            };
            self.upstreams[index].list_p50 = calibrate(&list)
                .await
                .with_context(|| format!("mcp probe: calibrating {name}"))?;
        }
        self.slowest = (0..self.upstreams.len())
            .max_by_key(|&i| self.upstreams[i].list_p50)
            .unwrap_or(0);
        for case in Case::all() {
            for route in Route::ALL {
                let request = self.request(case, route);
                if let Err(error) = probe_once(&request).await {
                    bail!(
                        "mcp probe: {} via {}: {error}\n{}",
                        case.name(),
                        self.route_name(route),
                        logs_tail(&self.gantry.process)
                    );
                }
            }
        }
        let calibration: Vec<String> = self
            .upstreams
            .iter()
            .map(|u| {
                format!(
                    "{} {} tools, p50 {}",
                    u.name,
                    u.tools,
                    crate::stats::format_us(u.list_p50.as_secs_f64() * 1e6)
                )
            })
            .collect();
        let slowest = self.upstreams[self.slowest].name;
        println!(
            "probes: direct stateless tools/list x {CALIBRATION_CALLS}, one at a time: {}; the \
             baseline is the slowest, {slowest}. Through the bridge, tools/list in both eras \
             lists all {} tools (none left out) and {slowest}{SEPARATOR}echo answers \
             \"{slowest}: {ECHO_TEXT}\", as echo does straight from {slowest}",
            calibration.join(", "),
            self.bridge_tools()
        );
        Ok(())
    }

    /// Fails, with the last output, if gantry or an upstream has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        ensure_running(&mut self.gantry.process, "gantry (mcp)")?;
        for upstream in &mut self.upstreams {
            if !upstream.peer.is_running() {
                let logs = upstream.peer.logs();
                let lines: Vec<&str> = logs.lines().collect();
                bail!(
                    "the MCP upstream {} exited during the benchmark\n{}",
                    upstream.name,
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
        Ok(())
    }

    /// Per case (method and era), `settings.rounds` rounds alternating direct and bridge.
    pub async fn measure(&mut self, settings: &Settings) -> anyhow::Result<McpResults> {
        let name_width = Route::ALL
            .iter()
            .map(|&route| self.route_name(route).len())
            .fold(ROUND_NAME_WIDTH, usize::max);
        let mut cases = Vec::new();
        for case in Case::all() {
            println!(
                "mcp {}: {}",
                case.name(),
                describe(case, self.upstreams[self.slowest].name)
            );
            let mut rounds: [Vec<RoundStats>; 2] = [Vec::new(), Vec::new()];
            for round in 1..=settings.rounds {
                for (slot, route) in Route::ALL.into_iter().enumerate() {
                    let request = Arc::new(self.request(case, route));
                    let stats = run_round(request, settings).await?;
                    println!(
                        "  round {round}/{} {:<name_width$} {}",
                        settings.rounds,
                        self.route_name(route),
                        stats.line(Unit::Requests)
                    );
                    self.ensure_running()?;
                    rounds[slot].push(stats);
                }
            }
            let [direct, bridge] = rounds;
            cases.push(CaseResult {
                case,
                direct: Summary::of(Unit::Requests, direct),
                bridge: Summary::of(Unit::Requests, bridge),
            });
        }
        Ok(McpResults {
            upstreams: self
                .upstreams
                .iter()
                .map(|u| UpstreamFacts {
                    name: u.name,
                    extra_tools: u.extra_tools,
                    tools: u.tools,
                    list_p50_us: u.list_p50.as_secs_f64() * 1e6,
                })
                .collect(),
            slowest: self.upstreams[self.slowest].name,
            direct_name: self.route_name(Route::Direct),
            bridge_name: self.route_name(Route::Bridge),
            bridge_tools: self.bridge_tools(),
            cases,
        })
    }
}

fn echo_expect(upstream: &str) -> Expect {
    Expect::Text(format!("{upstream}: {ECHO_TEXT}"))
}

fn describe(case: Case, slowest: &str) -> String {
    let what = match case.method {
        Method::ToolsList => format!(
            "the bridge asks every upstream and merges their lists; direct asks {slowest} only"
        ),
        Method::ToolsCall => {
            format!("echo on {slowest}, through the bridge as {slowest}{SEPARATOR}echo")
        }
    };
    let era = match case.era {
        Era::Stateless => "each request carries _meta and Mcp-Method/Mcp-Name",
        Era::Handshake => "one initialize per connection, then Mcp-Session-Id",
    };
    format!("{what}; {era}")
}

/// The number of tools `url` lists (stateless), which must include `echo`.
async fn count_tools(url: &str) -> anyhow::Result<usize> {
    let request = McpRequest {
        url: url.to_owned(),
        era: Era::Stateless,
        method: Method::ToolsList,
        tool: String::new(),
        expect: Expect::Tools {
            count: 0,
            includes: Vec::new(),
        },
    };
    let mut connection = Connection::open(url, Era::Stateless)
        .await
        .map_err(anyhow::Error::msg)?;
    let reply = connection
        .send(&request)
        .await
        .map_err(anyhow::Error::msg)?;
    let result = reply.result().map_err(anyhow::Error::msg)?;
    let tools = result["tools"]
        .as_array()
        .with_context(|| format!("the result has no tools array: {result}"))?;
    if !tools.iter().any(|tool| tool["name"] == "echo") {
        bail!("the list has no echo tool");
    }
    Ok(tools.len())
}

/// The median latency of [`CALIBRATION_CALLS`] checked requests, one at a time, after two
/// unmeasured ones.
async fn calibrate(request: &McpRequest) -> anyhow::Result<Duration> {
    let mut connection = Connection::open(&request.url, request.era)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut latencies = Vec::new();
    for i in 0..CALIBRATION_CALLS + 2 {
        let sent = Instant::now();
        let reply = connection.send(request).await.map_err(anyhow::Error::msg)?;
        let latency = sent.elapsed();
        reply.check(request).map_err(anyhow::Error::msg)?;
        if i >= 2 {
            latencies.push(latency);
        }
    }
    connection.close().await;
    latencies.sort_unstable();
    Ok(latencies[latencies.len() / 2])
}

/// `request` once on a fresh connection, checked.
async fn probe_once(request: &McpRequest) -> Result<(), String> {
    let mut connection = Connection::open(&request.url, request.era).await?;
    let outcome = match connection.send(request).await {
        Ok(reply) => reply.check(request).map(drop),
        Err(error) => Err(error),
    };
    connection.close().await;
    outcome
}

/// A warm-up, then a measured window, with `concurrency` connections in a closed loop.
async fn run_round(request: Arc<McpRequest>, settings: &Settings) -> anyhow::Result<RoundStats> {
    let window = Window::starting_now(settings.seconds);
    let mut connections = JoinSet::new();
    for _ in 0..settings.concurrency {
        connections.spawn(connection_loop(Arc::clone(&request), window));
    }
    let mut total = Tally::default();
    while let Some(tally) = connections.join_next().await {
        total.absorb(tally.context("an MCP load task failed")?);
    }
    Ok(RoundStats::new(total, settings.seconds))
}

/// Opens a connection (an `initialize`, in the handshake era, during the warm-up), then sends
/// request after request until the window closes. Latency is from sending the request to
/// reading the whole reply; the reply is checked after that. Errors count whenever they
/// happen, latencies only inside the measured window.
async fn connection_loop(request: Arc<McpRequest>, window: Window) -> Tally {
    let mut tally = Tally::default();
    let mut connection = match Connection::open(&request.url, request.era).await {
        Ok(connection) => connection,
        Err(error) => {
            tally.record(Err(error), Duration::ZERO, false);
            return tally;
        }
    };
    loop {
        let sent = Instant::now();
        if sent >= window.until {
            break;
        }
        let reply = connection.send(&request).await;
        let latency = sent.elapsed();
        let outcome = reply.and_then(|reply| reply.check(&request).map(drop));
        tally.record(outcome, latency, sent >= window.measure_from);
    }
    connection.close().await;
    tally
}

struct UpstreamFacts {
    name: &'static str,
    extra_tools: usize,
    tools: usize,
    list_p50_us: f64,
}

struct CaseResult {
    case: Case,
    direct: Summary,
    bridge: Summary,
}

/// Every case's medians, and the setup they were measured on.
pub struct McpResults {
    upstreams: Vec<UpstreamFacts>,
    slowest: &'static str,
    direct_name: String,
    bridge_name: String,
    bridge_tools: usize,
    cases: Vec<CaseResult>,
}

impl McpResults {
    pub fn errors(&self) -> u64 {
        self.cases
            .iter()
            .map(|c| c.direct.errors + c.bridge.errors)
            .sum()
    }

    /// `(case / route, errors, first error)` for every route that had errors.
    pub fn failures(&self) -> Vec<(String, u64, Option<&str>)> {
        let mut failures = Vec::new();
        for case in &self.cases {
            for (name, summary) in [
                (&self.direct_name, &case.direct),
                (&self.bridge_name, &case.bridge),
            ] {
                if summary.errors > 0 {
                    failures.push((
                        format!("mcp {} / {name}", case.case.name()),
                        summary.errors,
                        summary.first_error.as_deref(),
                    ));
                }
            }
        }
        failures
    }

    pub fn print(&self, settings: &Settings) {
        for case in &self.cases {
            println!(
                "== mcp {}: medians of {} rounds x {} s at concurrency {} ==",
                case.case.name(),
                settings.rounds,
                settings.seconds.as_secs(),
                settings.concurrency
            );
            println!("{}", table_header("path", LABEL_WIDTH, Unit::Requests));
            println!("{}", case.direct.row(&self.direct_name, LABEL_WIDTH));
            println!("{}", case.bridge.row(&self.bridge_name, LABEL_WIDTH));
            println!(
                "{}",
                Delta::between(&case.bridge, &case.direct).row(
                    "bridge - direct",
                    LABEL_WIDTH,
                    "(latency the bridge adds; req/s bridge/direct)"
                )
            );
            println!();
        }
    }

    pub fn to_json(&self) -> Value {
        let mut cases = Map::new();
        for case in &self.cases {
            let mut object = Map::new();
            object.insert(Route::Direct.key().into(), case.direct.to_json());
            object.insert(Route::Bridge.key().into(), case.bridge.to_json());
            Delta::between(&case.bridge, &case.direct).insert_json(&mut object, "throughput_ratio");
            cases.insert(case.case.key(), Value::Object(object));
        }
        json!({
            "upstreams": self.upstreams.iter().map(|u| json!({
                "name": u.name,
                "extra_tools": u.extra_tools,
                "tools": u.tools,
                "direct_list_p50_us": crate::stats::round1(u.list_p50_us),
            })).collect::<Vec<_>>(),
            "baseline_upstream": self.slowest,
            "bridge_tools": self.bridge_tools,
            "cases": cases,
        })
    }
}
