//! The config file as the operator writes it (YAML), and its validation.
//!
//! Parsing rejects unknown fields and wrong types with the line and column of the offending
//! node. [`ConfigFile::validate`] then checks what types cannot say (duplicate names, dangling
//! references, addresses, ports), collecting every problem instead of stopping at the first one.
//! Names, references and addresses are kept as [`Spanned`] values so that each of these errors
//! names both the field path and its line.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::endpoint::ProviderEndpoint;

mod a2a;
mod admin_api;
mod auth;
mod governance;
mod guard_webhook;
mod guards;
mod mcp;
mod mcp_direct;
pub mod response_guards;
mod routing;
pub use a2a::*;
pub use admin_api::*;
pub use auth::*;
pub use governance::*;
pub use guard_webhook::*;
pub use guards::*;
pub use mcp::*;
pub use mcp_direct::*;
pub use response_guards::ResponseGuardSection;
pub use routing::*;

/// Where Envoy's admin interface listens unless the config says otherwise.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// Where the ext_proc gRPC server listens unless the config says otherwise.
pub const DEFAULT_EXT_PROC_LISTEN: &str = "127.0.0.1:10001";
/// The largest request body Gantry accepts unless the config says otherwise (4 MiB).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// The largest `max_request_body_bytes` allowed: a buffered body travels to ext_proc in one
/// gRPC message, which must stay under the server's 64 MiB message limit.
pub const MAX_REQUEST_BODY_LIMIT: u64 = 48 * 1024 * 1024;
/// How long Envoy waits for a provider's whole response unless the provider says otherwise.
pub const DEFAULT_PROVIDER_TIMEOUT_SECS: u64 = 300;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where Envoy accepts client traffic, `IP:port`.
    pub listen: Spanned<String>,
    /// Envoy's admin interface, `IP:port` (keep it on loopback).
    #[serde(default)]
    pub admin: Option<Spanned<String>>,
    #[serde(default)]
    pub ext_proc: ExtProcSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    /// Identity and access: API keys, JWT issuers, CEL rules (the ext_authz server). Without
    /// it, every request is let through.
    #[serde(default)]
    pub auth: Option<AuthSection>,
    /// TLS on the listener, optionally requiring client certificates (mTLS).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// CORS for browser clients, answered by Envoy.
    #[serde(default)]
    pub cors: Option<CorsSection>,
    /// Budgets, rate limits, prices and the spend log. Without it, nothing is metered.
    #[serde(default)]
    pub governance: Option<GovernanceSection>,
    /// Request guards: PII and secret detectors and regexes over prompts. Without it,
    /// prompts are not scanned.
    #[serde(default)]
    pub guards: Option<GuardsSection>,
    /// Gantry's own Prometheus endpoint (`GET /metrics`). Off unless configured.
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// The MCP bridge: one MCP endpoint federating many MCP servers. Off unless configured.
    #[serde(default)]
    pub mcp: Option<McpSection>,
    /// Content-based routing: CEL rules that pick the model alias before it is resolved.
    #[serde(default)]
    pub routing: Vec<RoutingRuleSection>,
    /// A2A agents Envoy fronts: card rewriting, method and skill authorization, webhook
    /// checks and the agent registry (ext_proc). Off unless configured.
    #[serde(default)]
    pub a2a: Option<A2aSection>,
    /// MCP servers Envoy routes to directly, policed inline by ext_proc (no bridge). Off unless
    /// configured.
    #[serde(default)]
    pub mcp_direct: Option<McpDirectSection>,
    /// Gantry's admin API (gRPC, `gantry.admin.v1`): API keys, budgets and metadata at
    /// runtime, spend, limits, config reload. Off unless configured.
    #[serde(default)]
    pub admin_api: Option<AdminApiSection>,
}

/// Where Gantry serves `GET /metrics` (Prometheus text).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// e.g. `127.0.0.1:10003`.
    pub listen: Spanned<String>,
}

/// How Envoy reaches Gantry's ext_proc server and what it does when that server is down.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcSection {
    /// `IP:port` of the ext_proc gRPC server.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// What Envoy does when ext_proc cannot be reached: `closed` (default) answers 503,
    /// `open` lets the request through unprocessed.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Envoy's deadline for each ext_proc message, in milliseconds (default 1000).
    #[serde(default)]
    pub message_timeout_ms: Option<u64>,
}

/// The operator's choice for an unreachable dependency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    Closed,
    Open,
}

/// Size limits applied to client requests.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Request bodies larger than this get 413 (default 4 MiB).
    #[serde(default)]
    pub max_request_body_bytes: Option<Spanned<u64>>,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The OpenAI REST API or any server compatible with it.
    Openai,
    /// Azure OpenAI: the OpenAI body, a deployment path with `api-version`, an `api-key` header.
    AzureOpenai,
    /// The Anthropic Messages API (`x-api-key`), translated from and to OpenAI's.
    Anthropic,
    /// Google Gemini `generateContent` (`x-goog-api-key`), translated.
    Gemini,
    /// AWS Bedrock Converse (SigV4 with AWS credentials), translated.
    Bedrock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::AzureOpenai => "azure_openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Bedrock => "bedrock",
        }
    }

    /// Whether requests to this kind are translated from the OpenAI format (and so go through
    /// Gantry's upstream filter, which knows the target).
    pub fn is_translated(self) -> bool {
        matches!(
            self,
            ProviderKind::Anthropic | ProviderKind::Gemini | ProviderKind::Bedrock
        )
    }
}

/// The Azure OpenAI `api-version` used unless a provider names another (the latest GA
/// data-plane version when this was written).
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// One upstream LLM provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub name: Spanned<String>,
    pub kind: ProviderKind,
    /// Base URL: `http(s)://host[:port][/base/path]`. Client paths (`/v1/...`) are appended.
    pub endpoint: Spanned<String>,
    /// Name of the environment variable that holds the provider's API key.
    #[serde(default)]
    pub api_key_env: Option<Spanned<String>>,
    /// Upper bound for one whole response from this provider, in seconds (default 300).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// PEM file of the CAs that may sign an https provider's certificate (default: the
    /// system bundle). For providers behind a private CA.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// `gantry run` also serves Gantry's built-in OpenAI-compatible mock at this endpoint
    /// (for offline quickstarts and demos). The endpoint must be `http://` on a loopback IP.
    #[serde(default)]
    pub mock: bool,
    /// `azure_openai` only: the `api-version` query parameter (default
    /// [`AZURE_DEFAULT_API_VERSION`]).
    #[serde(default)]
    pub api_version: Option<Spanned<String>>,
    /// `bedrock` only: the AWS region signed for (e.g. `us-east-1`).
    #[serde(default)]
    pub region: Option<Spanned<String>>,
    /// `bedrock` only: the variables holding the AWS credentials (defaults
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; the token is
    /// optional).
    #[serde(default)]
    pub aws_access_key_id_env: Option<Spanned<String>>,
    #[serde(default)]
    pub aws_secret_access_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub aws_session_token_env: Option<Spanned<String>>,
}

impl ProviderSection {
    /// The Azure `api-version` this provider uses (meaningful for `azure_openai` only).
    pub fn api_version(&self) -> &str {
        self.api_version
            .as_ref()
            .map_or(AZURE_DEFAULT_API_VERSION, |v| v.value.as_str())
    }
}

/// A model name clients may send, and where it goes: one provider and model, or several
/// `targets` to spread over and fail over between.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The name clients send in `model`.
    pub name: Spanned<String>,
    /// The provider that serves it (with `model`; or list `targets`).
    #[serde(default)]
    pub provider: Option<Spanned<String>>,
    /// The model name the provider receives.
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    /// Where the alias may be served, each a provider and model with a priority and weight.
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    /// How a failed attempt is retried on the next target.
    #[serde(default)]
    pub retry: Option<RetrySection>,
}

/// One place a model alias may be served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub provider: Spanned<String>,
    pub model: Spanned<String>,
    /// Share of traffic among targets of the same priority (default 1, at most 128).
    #[serde(default)]
    pub weight: Option<Spanned<u32>>,
    /// 0 (default) is tried first; a retry goes to the next priority.
    #[serde(default)]
    pub priority: Option<Spanned<u32>>,
    /// A CEL condition (the routing variables: `llm`, `request`, `principal`, `apiKey`,
    /// `jwt`): the target serves only requests for which it holds. A request no target
    /// accepts gets 403 `no_eligible_target`.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
}

impl TargetSection {
    pub fn weight(&self) -> u32 {
        self.weight.as_ref().map_or(1, |w| w.value)
    }

    pub fn priority(&self) -> u32 {
        self.priority.as_ref().map_or(0, |p| p.value)
    }
}

/// Failover between an alias's targets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Tries in all, the first included (default: one per target, at most 5).
    #[serde(default)]
    pub attempts: Option<Spanned<u32>>,
    /// Deadline of each try, in seconds (default: none, the provider's timeout bounds the
    /// whole request). A try that runs out is retried on the next target.
    #[serde(default)]
    pub per_try_timeout_secs: Option<Spanned<u64>>,
}

/// The most tries of one request over an alias's targets.
pub const MAX_ATTEMPTS: u32 = 5;
/// The most targets one alias may list.
pub const MAX_TARGETS: usize = 16;
/// The most targets with a `when` condition one alias may list (each combination of them is a
/// cluster of its own in Envoy: 2^4 at most).
pub const MAX_CONDITIONAL_TARGETS: usize = 4;

/// One target of a model, as [`ModelSection::targets_or_single`] gives them.
#[derive(Debug, Clone)]
pub struct TargetRef<'a> {
    pub provider: &'a Spanned<String>,
    pub model: &'a Spanned<String>,
    pub weight: u32,
    pub priority: u32,
    pub when: Option<&'a Spanned<String>>,
}

impl ModelSection {
    /// Its targets: the `targets` list, or the one `provider` and `model`.
    pub fn targets_or_single(&self) -> Vec<TargetRef<'_>> {
        if !self.targets.is_empty() {
            return self
                .targets
                .iter()
                .map(|t| TargetRef {
                    provider: &t.provider,
                    model: &t.model,
                    weight: t.weight(),
                    priority: t.priority(),
                    when: t.when.as_ref(),
                })
                .collect();
        }
        match (&self.provider, &self.model) {
            (Some(provider), Some(model)) => vec![TargetRef {
                provider,
                model,
                weight: 1,
                priority: 0,
                when: None,
            }],
            _ => Vec::new(),
        }
    }

    /// Tries in all for one request (see [`RetrySection::attempts`]).
    pub fn attempts(&self) -> u32 {
        self.retry
            .as_ref()
            .and_then(|r| r.attempts.as_ref())
            .map_or((self.targets.len().max(1) as u32).min(MAX_ATTEMPTS), |a| {
                a.value
            })
    }
}

/// A config problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Field path such as `models[1].provider`; empty when the problem is the document itself.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (false, Some(line)) => write!(f, "{} (line {line}): {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
            (true, Some(line)) => write!(f, "line {line}: {}", self.message),
            (true, None) => write!(f, "{}", self.message),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{}", render_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    let mut out = format!(
        "{} problem{} in config:",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for issue in issues {
        out.push_str("\n  - ");
        out.push_str(&issue.to_string());
    }
    out
}

impl ConfigFile {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        let config: ConfigFile =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let issues = config.validate();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Every semantic problem of a parsed config; empty when it is usable.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut ports: HashMap<u16, String> = HashMap::new();
        let mut claim_port = |addr: SocketAddr, path: &str, line: u64, issues: &mut Vec<_>| {
            if let Some(other) = ports.insert(addr.port(), path.to_string()) {
                issues.push(issue(
                    path,
                    line,
                    format!("port {} is already used by {other}", addr.port()),
                ));
            }
        };

        if let Some(addr) = check_socket_addr(&self.listen, "listen", &mut issues) {
            claim_port(addr, "listen", self.listen.referenced.line(), &mut issues);
        }
        if let Some(admin) = &self.admin {
            if let Some(addr) = check_socket_addr(admin, "admin", &mut issues) {
                claim_port(addr, "admin", admin.referenced.line(), &mut issues);
                if !addr.ip().is_loopback() {
                    issues.push(issue(
                        "admin",
                        admin.referenced.line(),
                        format!("'{}' is not a loopback address: Envoy's admin interface can reconfigure and stop Envoy, keep it on 127.0.0.1 or ::1", admin.value),
                    ));
                }
            }
        }
        if let Some(listen) = &self.ext_proc.listen {
            if let Some(addr) = check_socket_addr(listen, "ext_proc.listen", &mut issues) {
                claim_port(
                    addr,
                    "ext_proc.listen",
                    listen.referenced.line(),
                    &mut issues,
                );
            }
        }
        if let Some(listen) = self.auth.as_ref().and_then(|a| a.listen.as_ref()) {
            if let Ok(addr) = listen.value.parse::<SocketAddr>() {
                claim_port(addr, "auth.listen", listen.referenced.line(), &mut issues);
            }
        }
        if let Some(metrics) = &self.metrics {
            if let Some(addr) = check_socket_addr(&metrics.listen, "metrics.listen", &mut issues) {
                claim_port(
                    addr,
                    "metrics.listen",
                    metrics.listen.referenced.line(),
                    &mut issues,
                );
            }
        }
        if let Some(mcp) = &self.mcp {
            let line = mcp.listen.as_ref().map_or(0, |l| l.referenced.line());
            let valid = mcp
                .listen
                .as_ref()
                .is_none_or(|l| l.value.parse::<SocketAddr>().is_ok());
            if valid {
                claim_port(mcp.listen_addr(), "mcp.listen", line, &mut issues);
            }
            mcp.validate(&mut issues);
        }
        if let Some(admin_api) = &self.admin_api {
            let line = admin_api.listen.as_ref().map_or(0, |l| l.referenced.line());
            if let Some(addr) = admin_api.validate(self.governance.is_some(), &mut issues) {
                claim_port(addr, "admin_api.listen", line, &mut issues);
            }
        }
        if let Some(a2a) = &self.a2a {
            a2a.validate(&mut issues);
        }
        if let Some(direct) = &self.mcp_direct {
            direct.validate(&mut issues);
        }
        if self.ext_proc.message_timeout_ms == Some(0) {
            issues.push(ConfigIssue {
                path: "ext_proc.message_timeout_ms".into(),
                line: None,
                message: "must be at least 1".into(),
            });
        }
        if let Some(limit) = &self.limits.max_request_body_bytes {
            if limit.value == 0 || limit.value > MAX_REQUEST_BODY_LIMIT {
                issues.push(issue(
                    "limits.max_request_body_bytes",
                    limit.referenced.line(),
                    format!("must be between 1 and {MAX_REQUEST_BODY_LIMIT} (48 MiB)"),
                ));
            }
        }

        let mut provider_names: HashMap<&str, usize> = HashMap::new();
        for (i, provider) in self.providers.iter().enumerate() {
            let path = format!("providers[{i}]");
            let name = &provider.name;
            check_name(name, &format!("{path}.name"), &mut issues);
            if let Some(first) = provider_names.insert(name.value.as_str(), i) {
                issues.push(issue(
                    &format!("{path}.name"),
                    name.referenced.line(),
                    format!(
                        "duplicate provider name '{}' (first declared at providers[{first}])",
                        name.value
                    ),
                ));
            }
            let endpoint_path = format!("{path}.endpoint");
            match ProviderEndpoint::parse(&provider.endpoint.value) {
                Err(e) => issues.push(issue(
                    &endpoint_path,
                    provider.endpoint.referenced.line(),
                    e.to_string(),
                )),
                Ok(endpoint) if provider.mock => match endpoint.mock_listen_addr() {
                    Some(addr) => {
                        claim_port(
                            addr,
                            &endpoint_path,
                            provider.endpoint.referenced.line(),
                            &mut issues,
                        );
                    }
                    None => issues.push(issue(
                        &endpoint_path,
                        provider.endpoint.referenced.line(),
                        "a mock provider's endpoint must be http:// on a loopback IP with an explicit port, e.g. http://127.0.0.1:18080".into(),
                    )),
                },
                Ok(endpoint) => {
                    if let Some(ca_file) = &provider.ca_file {
                        if !endpoint.tls {
                            issues.push(issue(
                                &format!("{path}.ca_file"),
                                ca_file.referenced.line(),
                                "applies only to https:// endpoints".into(),
                            ));
                        } else if ca_file.value.trim().is_empty() {
                            issues.push(issue(
                                &format!("{path}.ca_file"),
                                ca_file.referenced.line(),
                                "must not be empty".into(),
                            ));
                        }
                    }
                }
            }
            if let Some(env) = &provider.api_key_env {
                if !is_env_var_name(&env.value) {
                    issues.push(issue(
                        &format!("{path}.api_key_env"),
                        env.referenced.line(),
                        format!(
                            "'{}' is not an environment variable name (letters, digits and _, not starting with a digit)",
                            env.value
                        ),
                    ));
                }
            }
            if let Some(version) = &provider.api_version {
                let line = version.referenced.line();
                if provider.kind != ProviderKind::AzureOpenai {
                    issues.push(issue(
                        &format!("{path}.api_version"),
                        line,
                        "applies only to kind: azure_openai".into(),
                    ));
                } else if version.value.is_empty()
                    || !version
                        .value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
                {
                    issues.push(issue(
                        &format!("{path}.api_version"),
                        line,
                        format!(
                            "'{}' is not an api-version such as {AZURE_DEFAULT_API_VERSION} or 2025-01-01-preview",
                            version.value
                        ),
                    ));
                }
            }
            let bedrock = provider.kind == ProviderKind::Bedrock;
            match (&provider.region, bedrock) {
                (None, true) => issues.push(issue(
                    &format!("{path}.region"),
                    name.referenced.line(),
                    "a bedrock provider needs its AWS region, e.g. region: us-east-1".into(),
                )),
                (Some(region), false) => issues.push(issue(
                    &format!("{path}.region"),
                    region.referenced.line(),
                    "applies only to kind: bedrock".into(),
                )),
                (Some(region), true)
                    if region.value.is_empty()
                        || !region
                            .value
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
                {
                    issues.push(issue(
                        &format!("{path}.region"),
                        region.referenced.line(),
                        format!("'{}' is not an AWS region such as us-east-1", region.value),
                    ))
                }
                _ => {}
            }
            for (field, env) in [
                ("aws_access_key_id_env", &provider.aws_access_key_id_env),
                (
                    "aws_secret_access_key_env",
                    &provider.aws_secret_access_key_env,
                ),
                ("aws_session_token_env", &provider.aws_session_token_env),
            ] {
                let Some(env) = env else { continue };
                if !bedrock {
                    issues.push(issue(
                        &format!("{path}.{field}"),
                        env.referenced.line(),
                        "applies only to kind: bedrock".into(),
                    ));
                } else if !is_env_var_name(&env.value) {
                    issues.push(issue(
                        &format!("{path}.{field}"),
                        env.referenced.line(),
                        format!("'{}' is not an environment variable name", env.value),
                    ));
                }
            }
            if let (true, Some(env)) = (bedrock, &provider.api_key_env) {
                issues.push(issue(
                    &format!("{path}.api_key_env"),
                    env.referenced.line(),
                    "a bedrock provider signs with AWS credentials: use aws_access_key_id_env and aws_secret_access_key_env".into(),
                ));
            }
            if provider.timeout_secs == Some(0) {
                issues.push(issue(
                    &format!("{path}.timeout_secs"),
                    name.referenced.line(),
                    "must be at least 1".into(),
                ));
            }
        }

        let mut model_names: HashSet<&str> = HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
            let path = format!("models[{i}]");
            if model.name.value.trim().is_empty() {
                issues.push(issue(
                    &format!("{path}.name"),
                    model.name.referenced.line(),
                    "must not be empty".into(),
                ));
            } else if !model_names.insert(model.name.value.as_str()) {
                issues.push(issue(
                    &format!("{path}.name"),
                    model.name.referenced.line(),
                    format!("duplicate model name '{}'", model.name.value),
                ));
            }
            let unknown_provider =
                |name: &Spanned<String>, at: &str, issues: &mut Vec<ConfigIssue>| {
                    if !provider_names.contains_key(name.value.as_str()) {
                        let mut known: Vec<&str> = provider_names.keys().copied().collect();
                        known.sort_unstable();
                        issues.push(issue(
                            at,
                            name.referenced.line(),
                            format!(
                                "unknown provider '{}' (declared providers: {})",
                                name.value,
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ));
                    }
                };
            let line = model.name.referenced.line();
            match (&model.provider, &model.model, model.targets.is_empty()) {
                (Some(provider), Some(name), true) => {
                    unknown_provider(provider, &format!("{path}.provider"), &mut issues);
                    if name.value.trim().is_empty() {
                        issues.push(issue(
                            &format!("{path}.model"),
                            name.referenced.line(),
                            "must not be empty".into(),
                        ));
                    }
                }
                (None, None, false) => {
                    if model.targets.len() > MAX_TARGETS {
                        issues.push(issue(
                            &format!("{path}.targets"),
                            line,
                            format!(
                                "at most {MAX_TARGETS} targets (got {})",
                                model.targets.len()
                            ),
                        ));
                    }
                    let mut seen: HashSet<(&str, &str)> = HashSet::new();
                    for (t, target) in model.targets.iter().enumerate() {
                        let at = format!("{path}.targets[{t}]");
                        unknown_provider(&target.provider, &format!("{at}.provider"), &mut issues);
                        if target.model.value.trim().is_empty() {
                            issues.push(issue(
                                &format!("{at}.model"),
                                target.model.referenced.line(),
                                "must not be empty".into(),
                            ));
                        }
                        if !seen.insert((&target.provider.value, &target.model.value)) {
                            issues.push(issue(
                                &at,
                                target.provider.referenced.line(),
                                format!(
                                    "'{}' at '{}' is listed twice",
                                    target.model.value, target.provider.value
                                ),
                            ));
                        }
                        if let Some(weight) = &target.weight {
                            if !(1..=128).contains(&weight.value) {
                                issues.push(issue(
                                    &format!("{at}.weight"),
                                    weight.referenced.line(),
                                    format!("must be from 1 to 128 (got {})", weight.value),
                                ));
                            }
                        }
                        if let Some(priority) = &target.priority {
                            if priority.value > 9 {
                                issues.push(issue(
                                    &format!("{at}.priority"),
                                    priority.referenced.line(),
                                    format!("must be from 0 to 9 (got {})", priority.value),
                                ));
                            }
                        }
                        guard_webhook::validate_when(target.when.as_ref(), &at, &mut issues);
                    }
                    let conditional = model.targets.iter().filter(|t| t.when.is_some()).count();
                    if conditional > MAX_CONDITIONAL_TARGETS {
                        issues.push(issue(
                            &format!("{path}.targets"),
                            line,
                            format!(
                                "at most {MAX_CONDITIONAL_TARGETS} targets may have a `when` condition (got {conditional})"
                            ),
                        ));
                    }
                }
                (_, _, false) => issues.push(issue(
                    &path,
                    line,
                    "give either provider and model, or targets, not both".into(),
                )),
                _ => issues.push(issue(
                    &path,
                    line,
                    "needs a provider and a model (or a list of targets)".into(),
                )),
            }
            if let Some(retry) = &model.retry {
                if let Some(attempts) = &retry.attempts {
                    if !(1..=MAX_ATTEMPTS).contains(&attempts.value) {
                        issues.push(issue(
                            &format!("{path}.retry.attempts"),
                            attempts.referenced.line(),
                            format!("must be from 1 to {MAX_ATTEMPTS} (got {})", attempts.value),
                        ));
                    }
                }
                if let Some(timeout) = &retry.per_try_timeout_secs {
                    if timeout.value == 0 {
                        issues.push(issue(
                            &format!("{path}.retry.per_try_timeout_secs"),
                            timeout.referenced.line(),
                            "must be at least 1".into(),
                        ));
                    }
                }
            }
        }
        if let Some(auth) = &self.auth {
            auth.validate(&model_names, &mut issues);
        }
        routing::validate_routing(&self.routing, &model_names, &mut issues);
        if let Some(tls) = &self.tls {
            tls.validate(&mut issues);
        }
        if let Some(cors) = &self.cors {
            cors.validate(&mut issues);
        }
        if let Some(guards) = &self.guards {
            guards.validate(&mut issues);
        }
        if let Some(governance) = &self.governance {
            governance.validate(&mut issues);
            // A reservation must outlive the longest request, or it would stop counting while
            // its request still runs.
            let lease = governance.reservation_lease_secs();
            for (i, provider) in self.providers.iter().enumerate() {
                if lease > 0 && provider.timeout_secs() > lease {
                    issues.push(issue(
                        "governance.estimates.reservation_lease_secs",
                        0,
                        format!(
                            "{lease} s is shorter than providers[{i}].timeout_secs ({} s): reservations would expire while their requests still run; raise the lease",
                            provider.timeout_secs()
                        ),
                    ));
                }
            }
        }
        issues
    }

    pub fn auth_addr(&self) -> SocketAddr {
        parse_addr_or(
            &self.auth.as_ref().and_then(|a| a.listen.clone()),
            DEFAULT_AUTH_LISTEN,
        )
    }

    pub fn listen_addr(&self) -> SocketAddr {
        parse_addr_or(&Some(self.listen.clone()), "127.0.0.1:10000")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        parse_addr_or(&self.admin, DEFAULT_ADMIN)
    }

    /// Where `/metrics` is served, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|m| m.listen.value.parse().ok())
    }

    pub fn ext_proc_addr(&self) -> SocketAddr {
        parse_addr_or(&self.ext_proc.listen, DEFAULT_EXT_PROC_LISTEN)
    }

    pub fn max_request_body_bytes(&self) -> u64 {
        self.limits
            .max_request_body_bytes
            .as_ref()
            .map_or(DEFAULT_MAX_REQUEST_BODY_BYTES, |s| s.value)
    }

    pub fn message_timeout_ms(&self) -> u64 {
        self.ext_proc.message_timeout_ms.unwrap_or(1000)
    }
}

impl ProviderSection {
    pub fn timeout_secs(&self) -> u64 {
        self.timeout_secs.unwrap_or(DEFAULT_PROVIDER_TIMEOUT_SECS)
    }

    /// The parsed endpoint. Only call on a validated config.
    pub fn endpoint(&self) -> Result<ProviderEndpoint, crate::endpoint::EndpointError> {
        ProviderEndpoint::parse(&self.endpoint.value)
    }
}

pub(crate) fn issue(path: &str, line: u64, message: String) -> ConfigIssue {
    ConfigIssue {
        path: path.to_string(),
        line: (line > 0).then_some(line),
        message,
    }
}

fn check_socket_addr(
    value: &Spanned<String>,
    path: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<SocketAddr> {
    match value.value.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Some(addr),
        Ok(_) => {
            issues.push(issue(
                path,
                value.referenced.line(),
                "port 0 is not allowed: name the port".into(),
            ));
            None
        }
        Err(_) => {
            issues.push(issue(
                path,
                value.referenced.line(),
                format!(
                    "'{}' is not an IP:port address (e.g. 127.0.0.1:10000)",
                    value.value
                ),
            ));
            None
        }
    }
}

fn parse_addr_or(value: &Option<Spanned<String>>, default: &str) -> SocketAddr {
    let fallback = || {
        default
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    value
        .as_ref()
        .and_then(|s| s.value.parse().ok())
        .unwrap_or_else(fallback)
}

/// Names end up in Envoy cluster names and header values: keep them to a safe alphabet.
fn check_name(name: &Spanned<String>, path: &str, issues: &mut Vec<ConfigIssue>) {
    let ok = !name.value.is_empty()
        && name
            .value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        issues.push(issue(
            path,
            name.referenced.line(),
            format!(
                "'{}' is not a valid name (use letters, digits, '-', '_' and '.')",
                name.value
            ),
        ));
    }
}

/// The fields every upstream entry has (an A2A agent, a direct MCP server).
struct UpstreamEntry<'a> {
    name: &'a Spanned<String>,
    url: &'a Spanned<String>,
    ca_file: Option<&'a Spanned<String>>,
    timeout_secs: Option<u64>,
    headers: &'a [UpstreamHeader],
}

/// Validates the upstream entries listed at `list` (e.g. `a2a.agents`, each a `noun`): at
/// least one, valid and unique names, URLs, `ca_file` only for https, `timeout_secs` at least
/// 1, and their headers.
fn check_upstream_entries<'a>(
    list: &str,
    noun: &str,
    entries: impl Iterator<Item = UpstreamEntry<'a>>,
    issues: &mut Vec<ConfigIssue>,
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in entries.enumerate() {
        let path = format!("{list}[{i}]");
        check_name(entry.name, &format!("{path}.name"), issues);
        if let Some(first) = names.insert(entry.name.value.as_str(), i) {
            issues.push(issue(
                &format!("{path}.name"),
                entry.name.referenced.line(),
                format!(
                    "duplicate {noun} name '{}' (first declared at {list}[{first}])",
                    entry.name.value
                ),
            ));
        }
        match ProviderEndpoint::parse(&entry.url.value) {
            Err(e) => issues.push(issue(
                &format!("{path}.url"),
                entry.url.referenced.line(),
                e.to_string(),
            )),
            Ok(endpoint) => {
                if let Some(ca_file) = entry.ca_file.filter(|_| !endpoint.tls) {
                    issues.push(issue(
                        &format!("{path}.ca_file"),
                        ca_file.referenced.line(),
                        format!("applies only to https:// {noun}s"),
                    ));
                }
            }
        }
        if entry.timeout_secs == Some(0) {
            issues.push(issue(
                &format!("{path}.timeout_secs"),
                0,
                "must be at least 1".into(),
            ));
        }
        check_upstream_headers(&path, entry.headers, issues);
    }
    if names.is_empty() {
        issues.push(issue(list, 0, format!("declare at least one {noun}")));
    }
}

/// Validates headers Gantry sets on an upstream (agent or MCP server) at `path`: exactly one of
/// `value` and `value_env`, a variable name, and a header name Gantry may set.
fn check_upstream_headers(path: &str, headers: &[UpstreamHeader], issues: &mut Vec<ConfigIssue>) {
    for (j, header) in headers.iter().enumerate() {
        let hpath = format!("{path}.headers[{j}]");
        match (&header.value, &header.value_env) {
            (Some(_), None) => {}
            (None, Some(env)) if is_env_var_name(&env.value) => {}
            (None, Some(env)) => issues.push(issue(
                &format!("{hpath}.value_env"),
                env.referenced.line(),
                format!("'{}' is not an environment variable name", env.value),
            )),
            _ => issues.push(issue(
                &hpath,
                header.name.referenced.line(),
                "set exactly one of value and value_env".into(),
            )),
        }
        let name = header.name.value.to_ascii_lowercase();
        if name.is_empty()
            || name.starts_with(':')
            || name == "host"
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            issues.push(issue(
                &format!("{hpath}.name"),
                header.name.referenced.line(),
                format!("'{}' is not a header Gantry can set", header.name.value),
            ));
        }
    }
}

fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
listen: 127.0.0.1:10000
providers:
  - name: local-mock
    kind: openai
    endpoint: http://127.0.0.1:18080
    api_key_env: OPENAI_API_KEY
models:
  - name: fast
    provider: local-mock
    model: mock-small
";

    fn problems(text: &str) -> String {
        match ConfigFile::parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_the_documented_shape() {
        let config = ConfigFile::parse(GOOD).expect("valid");
        assert_eq!(config.providers[0].name.value, "local-mock");
        assert_eq!(config.models[0].model.as_ref().unwrap().value, "mock-small");
        assert_eq!(config.listen_addr().port(), 10000);
        assert_eq!(config.admin_addr().port(), 9901);
        assert_eq!(
            config.max_request_body_bytes(),
            DEFAULT_MAX_REQUEST_BODY_BYTES
        );
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = GOOD.replace(
            "    model: mock-small",
            "    model: mock-small\n    modle: typo",
        );
        let err = problems(&text);
        assert!(
            err.contains(
                "line 11 column 5: unknown field `modle`, expected one of name, provider, model"
            ),
            "{err}"
        );
    }

    #[test]
    fn dangling_provider_is_named_with_path_and_line() {
        let text = GOOD.replace("provider: local-mock", "provider: nowhere");
        let err = problems(&text);
        assert!(
            err.contains("models[0].provider (line 9): unknown provider 'nowhere' (declared providers: local-mock)"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_and_bad_addresses_are_all_reported() {
        let text = "\
listen: localhost:10000
admin: 0.0.0.0:9901
ext_proc:
  listen: 127.0.0.1:9901
providers:
  - name: a
    kind: openai
    endpoint: ftp://example.com
  - name: a
    kind: openai
    endpoint: https://api.example.com/v1
    api_key_env: 1BAD
models:
  - name: m
    provider: a
    model: x
  - name: m
    provider: a
    model: ''
limits:
  max_request_body_bytes: 100000000
";
        let err = problems(text);
        for needle in [
            "listen (line 1): 'localhost:10000' is not an IP:port",
            "ext_proc.listen (line 4): port 9901 is already used by admin",
            "admin (line 2): '0.0.0.0:9901' is not a loopback address",
            "providers[0].endpoint (line 8)",
            "providers[1].name (line 9): duplicate provider name 'a'",
            "providers[1].api_key_env (line 12)",
            "models[1].name (line 17): duplicate model name 'm'",
            "models[1].model (line 19): must not be empty",
            "limits.max_request_body_bytes (line 21): must be between 1 and 50331648",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn wrong_type_and_bad_enum_are_syntax_errors_with_lines() {
        let err = problems(&GOOD.replace("kind: openai", "kind: telepathy"));
        assert!(err.contains("line 4") && err.contains("telepathy"), "{err}");
        let err = problems("listen: [1, 2]\n");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn ca_file_needs_an_https_endpoint() {
        let text = GOOD.replace(
            "    api_key_env: OPENAI_API_KEY",
            "    ca_file: /etc/ssl/private-ca.pem",
        );
        let err = problems(&text);
        assert!(
            err.contains("providers[0].ca_file (line 6): applies only to https:// endpoints"),
            "{err}"
        );
        let https = text.replace("http://127.0.0.1:18080", "https://llm.internal:8443");
        assert!(ConfigFile::parse(&https).is_ok());
    }

    #[test]
    fn mock_provider_must_be_local_http() {
        let text = GOOD
            .replace("    api_key_env: OPENAI_API_KEY", "    mock: true")
            .replace("http://127.0.0.1:18080", "https://api.openai.com");
        let err = problems(&text);
        assert!(
            err.contains("providers[0].endpoint (line 5): a mock provider"),
            "{err}"
        );
    }

    #[test]
    fn targets_and_provider_kinds_are_checked() {
        let ok = ConfigFile::parse(
            "listen: 127.0.0.1:10000
providers:
  - { name: o, kind: openai, endpoint: 'https://api.openai.com', api_key_env: OPENAI_API_KEY }
  - { name: c, kind: anthropic, endpoint: 'https://api.anthropic.com', api_key_env: ANTHROPIC_API_KEY }
  - { name: g, kind: gemini, endpoint: 'https://generativelanguage.googleapis.com', api_key_env: GEMINI_API_KEY }
  - { name: b, kind: bedrock, endpoint: 'https://bedrock-runtime.us-east-1.amazonaws.com', region: us-east-1 }
models:
  - name: smart
    retry: { attempts: 3, per_try_timeout_secs: 20 }
    targets:
      - { provider: c, model: claude-sonnet-4-5, weight: 3 }
      - { provider: o, model: gpt-4o }
      - { provider: b, model: 'anthropic.claude-3-5-sonnet-20240620-v1:0', priority: 1 }
  - { name: flash, provider: g, model: gemini-2.5-flash }
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let smart = &ok.models[0];
        assert_eq!(smart.attempts(), 3);
        let targets = smart.targets_or_single();
        assert_eq!(
            targets
                .iter()
                .map(|t| (t.weight, t.priority))
                .collect::<Vec<_>>(),
            [(3, 0), (1, 0), (1, 1)]
        );
        assert_eq!(ok.models[1].targets_or_single().len(), 1);
        assert_eq!(ok.models[1].attempts(), 1);

        let err = ConfigFile::parse(
            "listen: 127.0.0.1:10000
providers:
  - { name: o, kind: openai, endpoint: 'https://api.openai.com', region: us-east-1 }
  - { name: b, kind: bedrock, endpoint: 'https://bedrock-runtime.us-east-1.amazonaws.com', api_key_env: K }
  - { name: b2, kind: bedrock, endpoint: 'https://x.amazonaws.com', region: 'US East', aws_secret_access_key_env: 1X }
models:
  - name: both
    provider: o
    model: m
    targets: [{ provider: o, model: m }]
  - name: neither
  - name: bad-targets
    retry: { attempts: 9, per_try_timeout_secs: 0 }
    targets:
      - { provider: nope, model: m }
      - { provider: o, model: m, weight: 0, priority: 12 }
      - { provider: o, model: m }
",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "providers[0].region (line 3): applies only to kind: bedrock",
            "providers[1].region (line 4): a bedrock provider needs its AWS region",
            "providers[1].api_key_env (line 4): a bedrock provider signs with AWS credentials",
            "providers[2].region (line 5): 'US East' is not an AWS region",
            "providers[2].aws_secret_access_key_env (line 5): '1X' is not an environment variable name",
            "models[0] (line 7): give either provider and model, or targets, not both",
            "models[1] (line 11): needs a provider and a model (or a list of targets)",
            "models[2].retry.attempts (line 13): must be from 1 to 5 (got 9)",
            "models[2].retry.per_try_timeout_secs (line 13): must be at least 1",
            "models[2].targets[0].provider (line 15): unknown provider 'nope'",
            "models[2].targets[1].weight (line 16): must be from 1 to 128 (got 0)",
            "models[2].targets[1].priority (line 16): must be from 0 to 9 (got 12)",
            "models[2].targets[2] (line 17): 'm' at 'o' is listed twice",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn a_reservation_lease_shorter_than_a_provider_timeout_is_refused() {
        let text = "\
listen: 127.0.0.1:10000
providers:
  - { name: slow, kind: openai, endpoint: 'http://127.0.0.1:18080', timeout_secs: 1200 }
models:
  - { name: m, provider: slow, model: m }
governance: {}
";
        let error = ConfigFile::parse(text).unwrap_err().to_string();
        assert!(
            error.contains("governance.estimates.reservation_lease_secs")
                && error.contains("providers[0].timeout_secs (1200 s)"),
            "{error}"
        );
        let longer = text.replace(
            "governance: {}",
            "governance: { estimates: { reservation_lease_secs: 1300 } }",
        );
        ConfigFile::parse(&longer).expect("a lease longer than the timeout is fine");
    }
}
