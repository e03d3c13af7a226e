//! Real A2A peers for the A2A gateway's end-to-end tests, all on `127.0.0.1`, on the official
//! Python SDK (a2a-sdk 1.3.0, in the project venv):
//!
//! - [`A2aAgent`] ([`start_a2a_agent`]): `tests/interop/a2a/agent_server.py`, an A2A 1.0 agent
//!   (JSON-RPC at `/` with 0.3 compatibility, HTTP+JSON at `/rest`, card at
//!   `/.well-known/agent-card.json`) that echoes text as `echo: <text>` (or
//!   `echo[skill=S]: <text>`), keeps `wait…` tasks WORKING until cancelled, and stores push
//!   configs, logging them and its webhook deliveries ([`A2aAgent::push_log`]).
//! - [`a2a_client`]: `tests/interop/a2a/a2a_client.py`, an SDK client that resolves the card at a
//!   base URL (the gateway), runs steps such as `card`, `send:hi`, `stream:hi`, `get:last`,
//!   `cancel-wait`, `push:URL`, `v03-send:hi`, `raw:METHOD:{json}` on one client and returns one
//!   JSON value per step (`{"step", "op", …}` or `{"step", "op", "error": {"type", "message",
//!   "http_status", "code"}}`). The script's docstring lists every step.
//!
//! `tests/interop/a2a/WIRE.md` records what these peers put on the wire.
//!
//! Every call here blocks: from an async test, run it in `tokio::task::spawn_blocking`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_ports, loopback, project_root, venv_python, wait_for, ChildProcess};

/// How long a starting agent has to print `READY <port>` and accept TCP connections.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The driver's deadline: this much, plus [`CLIENT_STEP_DEADLINE`] per step.
const CLIENT_BASE_DEADLINE: Duration = Duration::from_secs(30);
const CLIENT_STEP_DEADLINE: Duration = Duration::from_secs(60);

/// `tests/interop/a2a/`, where the Python A2A peers live.
pub fn a2a_interop_dir() -> PathBuf {
    project_root().join("tests/interop/a2a")
}

/// Options for [`start_a2a_agent`] (all off by default).
#[derive(Debug, Clone, Default)]
pub struct A2aAgentOptions {
    /// The card carries a `signatures` entry (HS256 JWS over the RFC 8785 canonical card, key id
    /// `gantry-test-agent`, secret `SIGNING_SECRET` in `agent_server.py`).
    pub signed: bool,
    /// The card's `name` (default `echo-agent`).
    pub name: Option<String>,
    /// The card is served in the A2A 0.3 shape (`url`, `preferredTransport`,
    /// `additionalInterfaces`, `security`); the agent still speaks both versions.
    pub card_v03: bool,
}

/// A running `agent_server.py` on `127.0.0.1:port`, in its own process group, killed on drop.
pub struct A2aAgent {
    port: u16,
    name: String,
    process: ChildProcess,
    push_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl A2aAgent {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The card's `name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:<port>` (no trailing slash): where the card lives, at
    /// `/.well-known/agent-card.json`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The card's JSONRPC interface URL, `http://127.0.0.1:<port>/`.
    pub fn jsonrpc_url(&self) -> String {
        format!("{}/", self.base_url())
    }

    /// The card's HTTP+JSON interface URL, `http://127.0.0.1:<port>/rest`.
    pub fn rest_url(&self) -> String {
        format!("{}/rest", self.base_url())
    }

    /// `http://127.0.0.1:<port>/.well-known/agent-card.json`.
    pub fn card_url(&self) -> String {
        format!("{}/.well-known/agent-card.json", self.base_url())
    }

    /// The agent's process id (also its process group).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The agent's stdout and stderr, for assertion messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Everything the agent did with push notifications so far, one JSON object per event:
    /// `{"event": "config-set", "task_id", "id", "url", "token", "authentication"}` for every push
    /// config it stored (CreateTaskPushNotificationConfig, 0.3 `tasks/pushNotificationConfig/set`,
    /// or `configuration.taskPushNotificationConfig` in SendMessage), and
    /// `{"event": "delivery", "url", "headers", "body", "status" | "error"}` for every webhook POST
    /// it attempted (the body is a 1.0 `StreamResponse`). The agent screens no URL.
    pub fn push_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.push_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The webhook URLs the agent stored push configs for, in order.
    pub fn push_config_urls(&self) -> Vec<String> {
        self.push_log()
            .iter()
            .filter(|e| e["event"] == "config-set")
            .filter_map(|e| e["url"].as_str().map(str::to_string))
            .collect()
    }
}

/// Starts `agent_server.py` on a free loopback port and waits (with a deadline) until it has
/// printed `READY <port>` and accepts connections; panics with its logs if it dies first.
pub fn start_a2a_agent(opts: A2aAgentOptions) -> A2aAgent {
    let port = free_ports(1)[0];
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| "echo-agent".to_string());
    let dir = tempfile::Builder::new()
        .prefix("gantry-a2a-agent")
        .tempdir()
        .expect("create temp dir");
    let push_log = dir.path().join("push.jsonl");
    let mut command = Command::new(venv_python());
    command
        .arg(a2a_interop_dir().join("agent_server.py"))
        .arg("--port")
        .arg(port.to_string())
        .arg("--name")
        .arg(&name)
        .arg("--push-log")
        .arg(&push_log)
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(project_root());
    if opts.signed {
        command.arg("--signed");
    }
    if opts.card_v03 {
        command.arg("--card-v03");
    }
    let process_name = format!("a2a-agent-{name}");
    let mut process = ChildProcess::spawn(&process_name, &mut command);
    let ready = format!("READY {port}");
    let start = Instant::now();
    wait_for(
        &format!("{process_name} to listen on 127.0.0.1:{port}"),
        START_DEADLINE + Duration::from_secs(5),
        || {
            if let Some(status) = process.try_status() {
                panic!(
                    "{process_name} exited ({status}) before listening on 127.0.0.1:{port}\n{}",
                    process.logs()
                );
            }
            if start.elapsed() > START_DEADLINE {
                panic!(
                    "{process_name} did not become ready on 127.0.0.1:{port} within {START_DEADLINE:?}\n{}",
                    process.logs()
                );
            }
            (process.stdout().contains(&ready)
                && TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok())
            .then_some(())
        },
    );
    A2aAgent {
        port,
        name,
        process,
        push_log,
        _dir: dir,
    }
}

/// Runs `a2a_client.py --base <base> [--header 'K: V']… <steps>…` and returns one JSON value per
/// step, in order (see the module docs and the script's docstring for the steps and their
/// results). A failing step is a value with an `"error"` member, not a panic; this panics (with
/// the driver's stdout and stderr) only if the driver exits non-zero, overruns its deadline, or
/// prints the wrong number of JSON lines.
pub fn a2a_client(base: &str, headers: &[(&str, &str)], steps: &[&str]) -> Vec<Value> {
    a2a_client_with(base, headers, &[], steps)
}

/// [`a2a_client`] with more driver options before the steps, e.g. `["--card-path", "/x.json"]`,
/// `["--rpc-url", url]` (where the raw and 0.3 steps POST) or `["--timeout", "5"]`.
pub fn a2a_client_with(
    base: &str,
    headers: &[(&str, &str)],
    extra_args: &[&str],
    steps: &[&str],
) -> Vec<Value> {
    let mut command = Command::new(venv_python());
    command
        .arg(a2a_interop_dir().join("a2a_client.py"))
        .arg("--base")
        .arg(base);
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    command
        .args(extra_args)
        .args(steps)
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(project_root());
    let deadline = CLIENT_BASE_DEADLINE + CLIENT_STEP_DEADLINE * steps.len() as u32;
    let (status, stdout, stderr) = run_to_end("a2a_client.py", &mut command, deadline);
    let context = || format!("({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    if !status.success() {
        panic!("a2a_client.py {steps:?} failed {}", context());
    }
    let values: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("a2a_client.py printed bad JSON ({e}): {l}\n{}", context())
            })
        })
        .collect();
    if values.len() != steps.len() {
        panic!(
            "a2a_client.py printed {} JSON lines for {} steps {}",
            values.len(),
            steps.len(),
            context()
        );
    }
    values
}

/// Runs a command to its end (killing its process group after `deadline`).
fn run_to_end(
    name: &str,
    command: &mut Command,
    deadline: Duration,
) -> (ExitStatus, String, String) {
    let mut process = ChildProcess::spawn(name, command);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = process.try_status() {
            break status;
        }
        if start.elapsed() > deadline {
            panic!(
                "{name} did not finish within {deadline:?}\n{}",
                process.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, process.stdout(), process.stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a2a_peers_agent_serves_every_driver_step() {
        let agent = start_a2a_agent(A2aAgentOptions {
            signed: true,
            name: Some("alpha".to_string()),
            ..A2aAgentOptions::default()
        });
        let base = agent.base_url();
        let hook = "http://127.0.0.1:9/hook";
        let steps = [
            "card",
            "send:hello",
            "send-skill:admin:hi",
            "stream:streamed",
            "get:last",
            "cancel-wait",
            &format!("push:{hook}"),
            "v03-send:old",
            r#"raw:Bogus:{}"#,
            r#"raw03:GetTask:{"id":"x"}"#,
            "get:nope",
        ];
        let out = a2a_client(&base, &[("X-Api-Key", "k1")], &steps);
        let context = format!("{out:#?}\n{}", agent.logs());

        let card = &out[0]["card"];
        assert_eq!(card["name"], "alpha", "{context}");
        assert_eq!(out[0]["jsonrpc_url"], agent.jsonrpc_url(), "{context}");
        assert_eq!(out[0]["rest_url"], agent.rest_url(), "{context}");
        assert!(card["signatures"][0]["protected"].is_string(), "{context}");
        assert!(
            card["securitySchemes"]["agent-key"].is_object(),
            "{context}"
        );

        assert_eq!(out[1]["state"], "TASK_STATE_COMPLETED", "{context}");
        assert_eq!(out[1]["artifacts"][0], "echo: hello", "{context}");
        assert_eq!(out[2]["artifacts"][0], "echo[skill=admin]: hi", "{context}");
        assert_eq!(
            out[3]["events"],
            serde_json::json!(["task", "statusUpdate", "artifactUpdate", "statusUpdate"]),
            "{context}"
        );
        assert_eq!(out[3]["final_state"], "TASK_STATE_COMPLETED", "{context}");
        assert_eq!(out[4]["task_id"], out[3]["task_id"], "{context}");
        assert_eq!(out[4]["artifacts"][0], "echo: streamed", "{context}");
        assert_eq!(out[5]["state"], "TASK_STATE_CANCELED", "{context}");
        assert_eq!(out[6]["url"], hook, "{context}");
        assert_eq!(out[7]["state"], "completed", "{context}");
        assert_eq!(out[7]["artifacts"][0], "echo: old", "{context}");
        assert_eq!(out[8]["body"]["error"]["code"], -32601, "{context}");
        assert_eq!(out[8]["http_status"], 200, "{context}");
        assert_eq!(out[9]["body"]["error"]["code"], -32009, "{context}");
        assert_eq!(out[10]["error"]["code"], -32001, "{context}");
        assert_eq!(out[10]["error"]["type"], "TaskNotFoundError", "{context}");

        assert_eq!(
            agent.push_config_urls(),
            vec![hook.to_string()],
            "{context}"
        );
    }
}
