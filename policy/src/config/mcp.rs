//! The `mcp` section of the config: the MCP bridge's listener, the upstream MCP servers it
//! federates, how their names are prefixed and curated, virtual servers, authorization rules
//! and the malicious-definition defences.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{check_name, check_socket_addr, is_env_var_name, issue, ConfigIssue, RuleSection};

/// Where the bridge listens unless configured.
pub const DEFAULT_MCP_LISTEN: &str = "127.0.0.1:10004";
/// The path clients use unless configured.
pub const DEFAULT_MCP_PATH: &str = "/mcp";
/// Separator between an upstream's name and its tool or prompt names unless configured.
pub const DEFAULT_SEPARATOR: &str = "__";
/// Deadline of one upstream call unless configured.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// Upstream requests in flight at once, per upstream, unless configured.
pub const DEFAULT_UPSTREAM_CONCURRENCY: usize = 64;
/// Largest client request body unless configured (1 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest upstream response (one JSON-RPC message) unless configured (8 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// How long a downstream session lives unless configured (a day).
pub const DEFAULT_SESSION_TTL_SECS: u64 = 24 * 3600;
/// The environment variable holding the session-sealing secret unless configured.
pub const DEFAULT_SESSION_SECRET_ENV: &str = "GANTRY_MCP_SESSION_SECRET";

/// The MCP bridge: one MCP endpoint made of many upstream servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSection {
    /// Where the bridge's HTTP server listens (Envoy routes the MCP path here), `IP:port`.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// The public path of the federated endpoint (default `/mcp`); virtual servers are served
    /// at `<path>/<name>`.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// The `serverInfo` clients see.
    #[serde(default)]
    pub server_info: ServerInfoSection,
    /// Text returned as `instructions`, before the upstreams' own.
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub naming: NamingSection,
    #[serde(default)]
    pub sessions: SessionsSection,
    /// Values of `Origin` accepted from browsers (exact, e.g. `https://app.example.com`).
    /// A request with any other `Origin` gets 403. Requests without `Origin` are accepted.
    #[serde(default)]
    pub allowed_origins: Vec<Spanned<String>>,
    /// Values of `Host` accepted (host or host:port). Default: loopback names and the
    /// gateway's listen address, which is what a DNS-rebinding attack cannot forge.
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub limits: McpLimitsSection,
    pub upstreams: Vec<UpstreamSection>,
    #[serde(default)]
    pub virtual_servers: Vec<VirtualServerSection>,
    /// CEL rules over `principal`, `mcp` (and `request`): what a caller may see and call.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    #[serde(default)]
    pub definitions: DefinitionsSection,
}

/// The bridge's own identity in `initialize` and `server/discover` answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInfoSection {
    /// Default `gantry`.
    #[serde(default)]
    pub name: Option<String>,
    /// Default: Gantry's version.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

/// How federated names are formed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamingSection {
    /// Between upstream name and item name (default `__`). One or more of `_ - .`.
    #[serde(default)]
    pub separator: Option<Spanned<String>>,
    /// `prefix` (default): every tool and prompt is `<upstream><sep><name>`; `none`: names
    /// are kept as the upstreams give them, and a name two upstreams share is withheld.
    #[serde(default)]
    pub mode: NamingMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamingMode {
    #[default]
    Prefix,
    None,
}

/// Downstream sessions (handshake-era clients).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    /// The environment variable holding the secret session ids are sealed with (default
    /// `GANTRY_MCP_SESSION_SECRET`). Every replica must have the same secret. Without it the
    /// bridge makes a random one, and sessions do not survive a restart or move to another
    /// replica.
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
    /// How long a session is accepted after `initialize` (default 86400).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Size and time limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpLimitsSection {
    /// Largest client request body (default 1 MiB); larger ones get 413 with a JSON-RPC error.
    #[serde(default)]
    pub max_request_bytes: Option<usize>,
    /// Largest upstream message (default 8 MiB); a larger one is an error naming the upstream.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
}

/// How the bridge reaches one upstream MCP server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTransport {
    /// Streamable HTTP (both eras) at `url` (the default when `url` is set).
    #[default]
    StreamableHttp,
    /// The 2024-11-05 HTTP+SSE transport: `url` is the SSE endpoint (`GET /sse`).
    Sse,
    /// A child process speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio,
}

/// Which protocol era the bridge speaks to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamEra {
    /// Probe once (`server/discover`, then `initialize`) and remember.
    #[default]
    Auto,
    /// Only the `initialize` handshake (2025-11-25 and earlier).
    Handshake,
    /// Only the stateless 2026-07-28 revision.
    Stateless,
}

/// What the bridge does when an upstream fails (down, slow, broken answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFailureMode {
    /// Lists leave the upstream out (and say so in `_meta`); calls to it get an error naming
    /// it. The other upstreams keep serving.
    #[default]
    Open,
    /// A list that cannot include this upstream fails as a whole, naming it.
    Closed,
}

/// One upstream MCP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Also the prefix of its tools and prompts.
    pub name: Spanned<String>,
    #[serde(default)]
    pub transport: Option<UpstreamTransport>,
    /// `http(s)://…` endpoint (streamable HTTP, or the SSE endpoint for `transport: sse`).
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// For `transport: stdio`: the program and its arguments.
    #[serde(default)]
    pub command: Vec<Spanned<String>>,
    /// For `transport: stdio`: environment variables of the child, `NAME: value`; a value
    /// `${VAR}` is read from Gantry's environment. The child gets nothing else of Gantry's
    /// environment but `PATH`, `HOME` and `LANG`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub era: UpstreamEra,
    /// Headers sent upstream on every request (credentials for this upstream).
    #[serde(default)]
    pub headers: Vec<UpstreamHeader>,
    /// Deadline of one call (default 30000); list fan-outs wait at most this for the upstream.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub failure_mode: UpstreamFailureMode,
    /// Calls in flight at once (default 64); more wait, then fail at the timeout.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    #[serde(default)]
    pub tools: CurationSection,
    #[serde(default)]
    pub prompts: CurationSection,
    #[serde(default)]
    pub resources: CurationSection,
    /// Approved definition digests (`sha256:…`) by the upstream's tool name.
    #[serde(default)]
    pub pins: BTreeMap<String, Spanned<String>>,
}

/// A header for an upstream: a literal `value`, or `value_env` (the value read from the
/// environment at load, optionally after `prefix`, e.g. `Bearer `).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHeader {
    pub name: Spanned<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_env: Option<Spanned<String>>,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Upstream headers with their values resolved, and why the upstream cannot be used when a
/// variable is unset or empty.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResolvedHeaders {
    /// Lower-case names and values (secrets: never log them).
    pub pairs: Vec<(String, String)>,
    pub unavailable: Option<String>,
}

impl std::fmt::Debug for ResolvedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.pairs.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ResolvedHeaders")
            .field("names", &names)
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

/// Resolves `headers` of `owner` (e.g. `agent 'echo'`): `value` as written, `value_env` read
/// through `env`, each after its `prefix`.
pub fn resolve_upstream_headers(
    headers: &[UpstreamHeader],
    owner: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> ResolvedHeaders {
    let mut resolved = ResolvedHeaders::default();
    for header in headers {
        let value = match (&header.value, &header.value_env) {
            (Some(value), _) => Some(value.clone()),
            (None, Some(var)) => {
                let value = env(&var.value).filter(|v| !v.is_empty());
                if value.is_none() {
                    resolved.unavailable.get_or_insert(format!(
                        "{} is not set (header {} of {owner})",
                        var.value, header.name.value
                    ));
                }
                value
            }
            (None, None) => None,
        };
        if let Some(value) = value {
            resolved.pairs.push((
                header.name.value.to_ascii_lowercase(),
                format!("{}{value}", header.prefix.as_deref().unwrap_or("")),
            ));
        }
    }
    resolved
}

/// Which of an upstream's items are offered, and under what name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurationSection {
    /// Names or `*` patterns offered (default: all). Matched against the upstream's name.
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    /// Names or patterns withheld (wins over include).
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    /// New names (before prefixing) by the upstream's name. Tools and prompts only.
    #[serde(default)]
    pub rename: BTreeMap<String, Spanned<String>>,
    /// Replacement descriptions by the upstream's name.
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
}

/// A route (`<path>/<name>`) exposing a chosen subset of the federated items.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerSection {
    pub name: Spanned<String>,
    /// Federated tool names or patterns (`alpha__*`) it offers.
    #[serde(default)]
    pub tools: Vec<Spanned<String>>,
    /// Federated prompt names or patterns.
    #[serde(default)]
    pub prompts: Vec<Spanned<String>>,
    /// Upstreams whose resources it offers.
    #[serde(default)]
    pub resources_from: Vec<Spanned<String>>,
}

/// Defences against malicious tool, prompt and resource definitions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionsSection {
    /// What a scan finding does (default `block`).
    #[serde(default)]
    pub scan: ScanSection,
    /// What a definition that differs from its pin does (default `block`).
    #[serde(default)]
    pub on_change: DriftAction,
    /// What two upstreams offering the same (unprefixed) tool name does (default `alert`; with
    /// `naming.mode: none` a collision always withholds both).
    #[serde(default = "alert")]
    pub on_collision: VerdictAction,
    /// A JSON file that keeps the digests pinned on first sight, so that a definition that
    /// changed while Gantry was down is still caught after a restart (written by the bridge,
    /// read at start). Without it, first-sight pins last as long as the process.
    #[serde(default)]
    pub pin_file: Option<Spanned<String>>,
}

fn alert() -> VerdictAction {
    VerdictAction::Alert
}

impl Default for DefinitionsSection {
    fn default() -> Self {
        DefinitionsSection {
            scan: ScanSection::default(),
            on_change: DriftAction::default(),
            on_collision: VerdictAction::Alert,
            pin_file: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanSection {
    #[serde(default)]
    pub action: VerdictAction,
    /// Longest description accepted (default 2048 characters).
    #[serde(default)]
    pub max_description_chars: Option<usize>,
    /// More phrases that mark hidden instructions (case-insensitive).
    #[serde(default)]
    pub extra_phrases: Vec<String>,
}

impl ScanSection {
    /// The scanner's settings.
    pub fn policy(&self) -> crate::mcp::scan::ScanPolicy {
        let defaults = crate::mcp::scan::ScanPolicy::default();
        crate::mcp::scan::ScanPolicy {
            max_description_chars: self
                .max_description_chars
                .unwrap_or(defaults.max_description_chars),
            extra_phrases: self.extra_phrases.clone(),
        }
    }
}

/// What a finding does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictAction {
    /// The item is withheld from lists and calls to it are refused.
    #[default]
    Block,
    /// The item is served; the finding is logged and counted.
    Alert,
    /// Nothing is checked.
    Off,
}

/// What a changed definition does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftAction {
    /// Withheld while it differs from its pin; served again if it changes back.
    #[default]
    Block,
    /// Served with the new definition; logged and counted.
    Alert,
    /// Withheld until an operator approves the new digest (adds it to `pins`); the log line
    /// names the digest to approve.
    Reapprove,
}

impl McpSection {
    pub fn separator(&self) -> &str {
        self.naming
            .separator
            .as_ref()
            .map_or(DEFAULT_SEPARATOR, |s| s.value.as_str())
    }

    pub fn path(&self) -> &str {
        self.path
            .as_ref()
            .map_or(DEFAULT_MCP_PATH, |p| p.value.as_str())
    }

    pub fn listen_addr(&self) -> std::net::SocketAddr {
        super::parse_addr_or(&self.listen, DEFAULT_MCP_LISTEN)
    }

    pub fn session_secret_env(&self) -> &str {
        self.sessions
            .secret_env
            .as_ref()
            .map_or(DEFAULT_SESSION_SECRET_ENV, |s| s.value.as_str())
    }

    pub(super) fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        if let Some(listen) = &self.listen {
            check_socket_addr(listen, "mcp.listen", issues);
        }
        if let Some(path) = &self.path {
            let p = &path.value;
            if !p.starts_with('/')
                || p.len() < 2
                || p.ends_with('/')
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
            {
                issues.push(issue(
                    "mcp.path",
                    path.referenced.line(),
                    format!("'{p}' is not a path like /mcp (letters, digits, '/', '-', '_', '.'; no trailing '/')"),
                ));
            }
        }
        if let Some(sep) = &self.naming.separator {
            if sep.value.is_empty() || !sep.value.bytes().all(|b| matches!(b, b'_' | b'-' | b'.')) {
                issues.push(issue(
                    "mcp.naming.separator",
                    sep.referenced.line(),
                    format!(
                        "'{}' is not a separator: use one or more of '_', '-' and '.' (tool names allow only [A-Za-z0-9_.-])",
                        sep.value
                    ),
                ));
            }
        }
        if let Some(secret_env) = &self.sessions.secret_env {
            if !is_env_var_name(&secret_env.value) {
                issues.push(issue(
                    "mcp.sessions.secret_env",
                    secret_env.referenced.line(),
                    format!("'{}' is not an environment variable name", secret_env.value),
                ));
            }
        }
        if self.sessions.ttl_secs == Some(0) {
            issues.push(issue(
                "mcp.sessions.ttl_secs",
                0,
                "must be at least 1".into(),
            ));
        }
        for (field, value) in [
            ("max_request_bytes", self.limits.max_request_bytes),
            ("max_response_bytes", self.limits.max_response_bytes),
        ] {
            if value == Some(0) {
                issues.push(issue(
                    &format!("mcp.limits.{field}"),
                    0,
                    "must be at least 1".into(),
                ));
            }
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let ok = url::Url::parse(&origin.value)
                .map(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.path() == "/"
                        && !origin.value.ends_with('/')
                })
                .unwrap_or(false);
            if !ok {
                issues.push(issue(
                    &format!("mcp.allowed_origins[{i}]"),
                    origin.referenced.line(),
                    format!(
                        "'{}' is not an origin like https://app.example.com (scheme, host, optional port; no path)",
                        origin.value
                    ),
                ));
            }
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            if host.value.is_empty()
                || host.value.contains(['/', ' ', '@'])
                || host.value.contains("://")
            {
                issues.push(issue(
                    &format!("mcp.allowed_hosts[{i}]"),
                    host.referenced.line(),
                    format!("'{}' is not a host or host:port", host.value),
                ));
            }
        }
        if self.upstreams.is_empty() {
            issues.push(issue(
                "mcp.upstreams",
                0,
                "name at least one upstream MCP server".into(),
            ));
        }
        let separator = self.separator().to_string();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let path = format!("mcp.upstreams[{i}]");
            upstream.validate(&path, &separator, issues);
            if let Some(first) = names.insert(upstream.name.value.as_str(), i) {
                issues.push(issue(
                    &format!("{path}.name"),
                    upstream.name.referenced.line(),
                    format!(
                        "duplicate upstream name '{}' (first declared at mcp.upstreams[{first}])",
                        upstream.name.value
                    ),
                ));
            }
        }
        let mut virtual_names = HashSet::new();
        for (i, server) in self.virtual_servers.iter().enumerate() {
            let path = format!("mcp.virtual_servers[{i}]");
            check_name(&server.name, &format!("{path}.name"), issues);
            if !virtual_names.insert(server.name.value.as_str()) {
                issues.push(issue(
                    &format!("{path}.name"),
                    server.name.referenced.line(),
                    format!("duplicate virtual server name '{}'", server.name.value),
                ));
            }
            for (j, upstream) in server.resources_from.iter().enumerate() {
                if !names.contains_key(upstream.value.as_str()) {
                    issues.push(issue(
                        &format!("{path}.resources_from[{j}]"),
                        upstream.referenced.line(),
                        format!("unknown upstream '{}'", upstream.value),
                    ));
                }
            }
            for (field, patterns) in [("tools", &server.tools), ("prompts", &server.prompts)] {
                for (j, pattern) in patterns.iter().enumerate() {
                    if pattern.value.trim().is_empty() {
                        issues.push(issue(
                            &format!("{path}.{field}[{j}]"),
                            pattern.referenced.line(),
                            "must not be empty".into(),
                        ));
                    }
                }
            }
        }
        crate::mcp::authz::validate_rules(&self.rules, issues);
        if let Some(file) = &self.definitions.pin_file {
            if file.value.trim().is_empty() || file.value.ends_with('/') {
                issues.push(issue(
                    "mcp.definitions.pin_file",
                    file.referenced.line(),
                    "must be a file path".into(),
                ));
            }
        }
        if self.definitions.scan.max_description_chars == Some(0) {
            issues.push(issue(
                "mcp.definitions.scan.max_description_chars",
                0,
                "must be at least 1".into(),
            ));
        }
    }
}

impl UpstreamSection {
    pub fn transport(&self) -> UpstreamTransport {
        self.transport.unwrap_or(if self.command.is_empty() {
            UpstreamTransport::StreamableHttp
        } else {
            UpstreamTransport::Stdio
        })
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS)
    }

    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency.unwrap_or(DEFAULT_UPSTREAM_CONCURRENCY)
    }

    fn validate(&self, path: &str, separator: &str, issues: &mut Vec<ConfigIssue>) {
        check_name(&self.name, &format!("{path}.name"), issues);
        if self.name.value.contains(separator) {
            issues.push(issue(
                &format!("{path}.name"),
                self.name.referenced.line(),
                format!(
                    "'{}' contains the naming separator '{separator}': prefixed names could not be split back",
                    self.name.value
                ),
            ));
        }
        match self.transport() {
            UpstreamTransport::StreamableHttp | UpstreamTransport::Sse => {
                match &self.url {
                    None => issues.push(issue(
                        path,
                        self.name.referenced.line(),
                        "needs a url (or transport: stdio with a command)".into(),
                    )),
                    Some(url) => {
                        let ok = url::Url::parse(&url.value)
                            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                            .unwrap_or(false);
                        if !ok {
                            issues.push(issue(
                                &format!("{path}.url"),
                                url.referenced.line(),
                                format!("'{}' is not an http:// or https:// URL", url.value),
                            ));
                        }
                    }
                }
                if !self.command.is_empty() {
                    issues.push(issue(
                        &format!("{path}.command"),
                        self.command[0].referenced.line(),
                        "applies only to transport: stdio".into(),
                    ));
                }
                if self.transport() == UpstreamTransport::Sse && self.era == UpstreamEra::Stateless
                {
                    issues.push(issue(
                        &format!("{path}.era"),
                        self.name.referenced.line(),
                        "the HTTP+SSE transport is handshake-era only".into(),
                    ));
                }
            }
            UpstreamTransport::Stdio => {
                if self.command.is_empty() || self.command[0].value.trim().is_empty() {
                    issues.push(issue(
                        &format!("{path}.command"),
                        self.name.referenced.line(),
                        "transport: stdio needs a command, e.g. [npx, '@modelcontextprotocol/server-everything', stdio]".into(),
                    ));
                }
                if let Some(url) = &self.url {
                    issues.push(issue(
                        &format!("{path}.url"),
                        url.referenced.line(),
                        "does not apply to transport: stdio".into(),
                    ));
                }
                if !self.headers.is_empty() {
                    issues.push(issue(
                        &format!("{path}.headers"),
                        self.name.referenced.line(),
                        "do not apply to transport: stdio (use env)".into(),
                    ));
                }
            }
        }
        for name in self.env.keys() {
            if !is_env_var_name(name) {
                issues.push(issue(
                    &format!("{path}.env.{name}"),
                    self.name.referenced.line(),
                    format!("'{name}' is not an environment variable name"),
                ));
            }
        }
        for (i, header) in self.headers.iter().enumerate() {
            let hpath = format!("{path}.headers[{i}]");
            let valid_name = !header.name.value.is_empty()
                && header
                    .name
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                issues.push(issue(
                    &format!("{hpath}.name"),
                    header.name.referenced.line(),
                    format!("'{}' is not a header name", header.name.value),
                ));
            }
            let lower = header.name.value.to_ascii_lowercase();
            if lower.starts_with("mcp-") || lower == "host" || lower == "content-length" {
                issues.push(issue(
                    &format!("{hpath}.name"),
                    header.name.referenced.line(),
                    format!("'{}' is set by the bridge itself", header.name.value),
                ));
            }
            match (&header.value, &header.value_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => issues.push(issue(
                    &hpath,
                    header.name.referenced.line(),
                    "needs exactly one of value and value_env".into(),
                )),
            }
            if let Some(env) = &header.value_env {
                if !is_env_var_name(&env.value) {
                    issues.push(issue(
                        &format!("{hpath}.value_env"),
                        env.referenced.line(),
                        format!("'{}' is not an environment variable name", env.value),
                    ));
                }
            }
        }
        if self.timeout_ms == Some(0) {
            issues.push(issue(
                &format!("{path}.timeout_ms"),
                0,
                "must be at least 1".into(),
            ));
        }
        if self.max_concurrency == Some(0) {
            issues.push(issue(
                &format!("{path}.max_concurrency"),
                0,
                "must be at least 1".into(),
            ));
        }
        for (field, curation) in [
            ("tools", &self.tools),
            ("prompts", &self.prompts),
            ("resources", &self.resources),
        ] {
            if field == "resources" && !curation.rename.is_empty() {
                issues.push(issue(
                    &format!("{path}.resources.rename"),
                    0,
                    "resources are addressed by URI and cannot be renamed".into(),
                ));
            }
            for (from, to) in &curation.rename {
                if !crate::mcp::names::is_valid_item_name(&to.value) {
                    issues.push(issue(
                        &format!("{path}.{field}.rename.{from}"),
                        to.referenced.line(),
                        format!(
                            "'{}' is not a valid name (1-128 characters of [A-Za-z0-9_.-])",
                            to.value
                        ),
                    ));
                }
            }
        }
        for (tool, pin) in &self.pins {
            if pin
                .value
                .parse::<crate::mcp::pin::DefinitionDigest>()
                .is_err()
            {
                issues.push(issue(
                    &format!("{path}.pins.{tool}"),
                    pin.referenced.line(),
                    format!(
                        "'{}' is not a digest like sha256:<64 hex digits>",
                        pin.value
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ConfigFile;

    const HEAD: &str = "listen: 127.0.0.1:10000\n";

    fn problems(mcp: &str) -> String {
        match ConfigFile::parse(&format!("{HEAD}{mcp}")) {
            Ok(_) => panic!("accepted:\n{mcp}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_section_is_accepted_with_its_defaults() {
        let config = ConfigFile::parse(&format!(
            "{HEAD}mcp:\n  upstreams:\n    - {{ name: a, url: 'http://127.0.0.1:1/mcp' }}\n    - {{ name: b, command: [python3, server.py], env: {{ TOKEN: '${{B_TOKEN}}' }} }}\n"
        ))
        .expect("valid");
        let mcp = config.mcp.expect("mcp section");
        assert_eq!(mcp.path(), "/mcp");
        assert_eq!(mcp.separator(), "__");
        assert_eq!(mcp.listen_addr().port(), 10004);
        assert_eq!(
            mcp.upstreams[1].transport(),
            super::UpstreamTransport::Stdio
        );
        assert_eq!(mcp.definitions.on_collision, super::VerdictAction::Alert);
        assert_eq!(mcp.definitions.scan.action, super::VerdictAction::Block);
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let err = problems(
            "mcp:
  path: mcp/
  naming: { separator: '::' }
  allowed_origins: ['https://app.example.com/path']
  upstreams:
    - { name: 'a::b', url: 'http://127.0.0.1:1/mcp' }
    - { name: c, url: 'ftp://x' }
    - { name: c, transport: stdio }
    - { name: d, url: 'http://x', headers: [{ name: Mcp-Session-Id, value: x }, { name: X-Key }] }
    - { name: e, url: 'http://x', pins: { echo: 'md5:123' }, tools: { rename: { echo: 'bad name' } } }
  virtual_servers:
    - { name: v, resources_from: [nowhere] }
  rules:
    - { name: r, action: allow, when: 'mpc.upstream == \"a\"' }
",
        );
        for needle in [
            "mcp.path",
            "mcp.naming.separator",
            "mcp.allowed_origins[0]",
            "mcp.upstreams[0].name",
            "mcp.upstreams[1].url",
            "mcp.upstreams[2].name (line 9): duplicate upstream name 'c'",
            "mcp.upstreams[2].command",
            "mcp.upstreams[3].headers[0].name",
            "mcp.upstreams[3].headers[1]",
            "mcp.upstreams[4].pins.echo",
            "mcp.upstreams[4].tools.rename.echo",
            "mcp.virtual_servers[0].resources_from[0]",
            "unknown variable 'mpc'",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn the_bridge_port_must_not_collide() {
        let err = problems(
            "mcp:\n  listen: 127.0.0.1:10000\n  upstreams:\n    - { name: a, url: 'http://127.0.0.1:1/mcp' }\n",
        );
        assert!(
            err.contains("port 10000 is already used by listen"),
            "{err}"
        );
    }
}
