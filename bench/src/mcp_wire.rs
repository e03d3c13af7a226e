//! Raw MCP over streamable HTTP for the `mcp` scenario: JSON-RPC `tools/list` and `tools/call`
//! requests in the stateless 2026-07-28 era (per-request `_meta` and `Mcp-Method`/`Mcp-Name`
//! headers) and in the handshake era (`initialize` once per connection, then `Mcp-Session-Id`),
//! and the checks every reply must pass.

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};

use crate::load::{excerpt, http_client};

/// The stateless revision: no `initialize`, everything in each request.
pub const STATELESS_VERSION: &str = "2026-07-28";
/// The newest handshake-era revision.
pub const HANDSHAKE_VERSION: &str = "2025-11-25";
/// What `echo` is asked to echo; the fixture answers `<server name>: <text>`.
pub const ECHO_TEXT: &str = "ping from gantry-bench";
/// The bridge's `_meta` key naming upstreams a list left out.
const UNAVAILABLE_KEY: &str = "gantry/unavailableUpstreams";

/// How a client talks to an MCP endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// 2026-07-28: every request carries its protocol version and client capabilities.
    Stateless,
    /// 2025-11-25: `initialize` (and `notifications/initialized`) once per connection, then
    /// every request names the session.
    Handshake,
}

impl Era {
    pub const ALL: [Era; 2] = [Era::Stateless, Era::Handshake];

    pub fn name(self) -> &'static str {
        match self {
            Era::Stateless => "stateless 2026-07-28",
            Era::Handshake => "handshake 2025-11-25",
        }
    }

    /// The era's key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Era::Stateless => "stateless",
            Era::Handshake => "handshake",
        }
    }
}

/// The JSON-RPC method measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ToolsList,
    ToolsCall,
}

impl Method {
    pub const ALL: [Method; 2] = [Method::ToolsList, Method::ToolsCall];

    pub fn name(self) -> &'static str {
        match self {
            Method::ToolsList => "tools/list",
            Method::ToolsCall => "tools/call",
        }
    }

    /// The method's key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Method::ToolsList => "tools_list",
            Method::ToolsCall => "tools_call",
        }
    }
}

/// What a successful reply contains.
#[derive(Clone, Debug)]
pub enum Expect {
    /// A `tools/list` result with exactly `count` tools, no cursor, no upstream left out, and
    /// these names among the tools.
    Tools { count: usize, includes: Vec<String> },
    /// A `tools/call` result that is not an error and whose first content is this text.
    Text(String),
}

/// One request, sent over and over to one endpoint.
#[derive(Clone, Debug)]
pub struct McpRequest {
    pub url: String,
    pub era: Era,
    pub method: Method,
    /// The tool called (`tools/call` only), as the endpoint names it.
    pub tool: String,
    pub expect: Expect,
}

impl McpRequest {
    fn body(&self, id: u64) -> String {
        let mut params = match self.method {
            Method::ToolsList => json!({}),
            Method::ToolsCall => json!({ "name": self.tool, "arguments": { "text": ECHO_TEXT } }),
        };
        if self.era == Era::Stateless {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
        }
        json!({ "jsonrpc": "2.0", "id": id, "method": self.method.name(), "params": params })
            .to_string()
    }
}

/// A reply as read off the wire, checked later (so that checking is not timed).
pub struct RawReply {
    id: u64,
    status: reqwest::StatusCode,
    content_type: String,
    body: Vec<u8>,
}

/// One client connection (HTTP/1.1 keep-alive) and, in the handshake era, its session.
pub struct Connection {
    client: reqwest::Client,
    url: String,
    era: Era,
    session: Option<String>,
    next_id: u64,
}

impl Connection {
    /// A connection to `url`; in the handshake era, `initialize` and `notifications/initialized`
    /// first.
    pub async fn open(url: &str, era: Era) -> Result<Connection, String> {
        let client = http_client().map_err(|e| format!("{e:#}"))?;
        let mut connection = Connection {
            client,
            url: url.to_owned(),
            era,
            session: None,
            next_id: 1,
        };
        if era == Era::Handshake {
            connection.initialize().await?;
        }
        Ok(connection)
    }

    async fn initialize(&mut self) -> Result<(), String> {
        let id = self.take_id();
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": { "name": "gantry-bench", "version": env!("CARGO_PKG_VERSION") },
            },
        });
        let response = self
            .post(body.to_string(), &[])
            .send()
            .await
            .map_err(|e| format!("initialize: {}", describe(e)))?;
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let reply = read(id, response)
            .await
            .map_err(|e| format!("initialize: {e}"))?;
        let result = reply.result().map_err(|e| format!("initialize: {e}"))?;
        let version = result["protocolVersion"].as_str().unwrap_or_default();
        if version != HANDSHAKE_VERSION {
            return Err(format!(
                "initialize: the server chose protocol version {version:?}, not \
                 {HANDSHAKE_VERSION:?}"
            ));
        }
        let Some(session) = session else {
            return Err("initialize: the reply has no Mcp-Session-Id header".to_owned());
        };
        self.session = Some(session);
        let notification = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        let response = self
            .post(notification.to_string(), &[])
            .send()
            .await
            .map_err(|e| format!("notifications/initialized: {}", describe(e)))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(format!(
                "notifications/initialized: HTTP {status} instead of 202: {}",
                excerpt(&body)
            ));
        }
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A POST with the era's headers (`extra` besides).
    fn post(&self, body: String, extra: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(body);
        match (self.era, &self.session) {
            (Era::Stateless, _) => {
                request = request.header("MCP-Protocol-Version", STATELESS_VERSION);
            }
            (Era::Handshake, Some(session)) => {
                request = request
                    .header("Mcp-Session-Id", session)
                    .header("MCP-Protocol-Version", HANDSHAKE_VERSION);
            }
            (Era::Handshake, None) => {}
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request
    }

    /// Sends `request` and reads the whole reply, without checking it.
    pub async fn send(&mut self, request: &McpRequest) -> Result<RawReply, String> {
        let id = self.take_id();
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if self.era == Era::Stateless {
            headers.push(("Mcp-Method", request.method.name()));
            if request.method == Method::ToolsCall {
                headers.push(("Mcp-Name", &request.tool));
            }
        }
        let response = self
            .post(request.body(id), &headers)
            .send()
            .await
            .map_err(describe)?;
        read(id, response).await
    }

    /// Ends the handshake-era session (`DELETE`). Its outcome is not checked: a server may
    /// refuse to end sessions (405), and nothing is measured after it.
    pub async fn close(self) {
        if let Some(session) = &self.session {
            let _ = self
                .client
                .delete(&self.url)
                .header("Mcp-Session-Id", session)
                .header("MCP-Protocol-Version", HANDSHAKE_VERSION)
                .send()
                .await;
        }
    }
}

async fn read(id: u64, response: reqwest::Response) -> Result<RawReply, String> {
    let status = response.status();
    let content_type = content_type(response.headers());
    let body: Vec<u8> = response.bytes().await.map_err(describe)?.into();
    Ok(RawReply {
        id,
        status,
        content_type,
        body,
    })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn describe(error: reqwest::Error) -> String {
    format!("{:#}", anyhow::Error::from(error))
}

impl RawReply {
    /// The JSON-RPC response to this request: the JSON body, or for an SSE reply the event
    /// that answers it.
    fn response(&self) -> Result<Value, String> {
        if self.status != reqwest::StatusCode::OK {
            return Err(format!("HTTP {}: {}", self.status, excerpt(&self.body)));
        }
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| format!("the reply is not UTF-8: {}", excerpt(&self.body)))?;
        let answers = |message: &Value| {
            message["id"].as_u64() == Some(self.id)
                && (message.get("result").is_some() || message.get("error").is_some())
        };
        if self.content_type.starts_with("text/event-stream") {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .find(answers)
                .ok_or_else(|| {
                    format!(
                        "the SSE reply has no response to request {}: {}",
                        self.id,
                        excerpt(&self.body)
                    )
                })
        } else {
            let message: Value = serde_json::from_str(text)
                .map_err(|e| format!("the reply is not JSON ({e}): {}", excerpt(&self.body)))?;
            if answers(&message) {
                Ok(message)
            } else {
                Err(format!(
                    "the reply does not answer request {}: {}",
                    self.id,
                    excerpt(&self.body)
                ))
            }
        }
    }

    /// The `result` of the response; a JSON-RPC error is an error.
    pub fn result(&self) -> Result<Value, String> {
        let mut message = self.response()?;
        if let Some(error) = message.get("error") {
            return Err(format!(
                "JSON-RPC error {}: {}",
                error["code"],
                error["message"].as_str().unwrap_or("(no message)")
            ));
        }
        Ok(message["result"].take())
    }

    /// Checks the reply against what `request` expects; returns the result.
    pub fn check(&self, request: &McpRequest) -> Result<Value, String> {
        let result = self.result()?;
        match &request.expect {
            Expect::Tools { count, includes } => {
                if let Some(missing) = result.pointer(&format!("/_meta/{UNAVAILABLE_KEY}")) {
                    return Err(format!("the list left upstreams out: {missing}"));
                }
                if let Some(cursor) = result.get("nextCursor").filter(|c| !c.is_null()) {
                    return Err(format!("the list has a next page ({cursor})"));
                }
                let tools = result["tools"]
                    .as_array()
                    .ok_or_else(|| format!("the result has no tools array: {result}"))?;
                if tools.len() != *count {
                    return Err(format!("{} tools listed instead of {count}", tools.len()));
                }
                for name in includes {
                    if !tools.iter().any(|tool| tool["name"] == name.as_str()) {
                        return Err(format!("the list has no tool {name:?}"));
                    }
                }
            }
            Expect::Text(expected) => {
                if result["isError"] == true {
                    return Err(format!("the tool failed: {result}"));
                }
                let text = result.pointer("/content/0/text").and_then(Value::as_str);
                if text != Some(expected.as_str()) {
                    return Err(format!(
                        "the tool answered {text:?} instead of {expected:?}: {result}"
                    ));
                }
            }
        }
        Ok(result)
    }
}
