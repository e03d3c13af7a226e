//! The `mcp` config section compiled once into what the bridge serves from: resolved
//! credentials, compiled curation, rules, patterns and pins.

use std::collections::HashMap;
use std::time::Duration;

use gantry_policy::config::{
    DriftAction, McpSection, NamingMode, UpstreamEra, UpstreamFailureMode, UpstreamTransport,
    VerdictAction, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_SESSION_TTL_SECS,
};
use gantry_policy::mcp::authz::McpRules;
use gantry_policy::mcp::names::{Curation, NamePattern, Naming};
use gantry_policy::mcp::pin::DefinitionDigest;
use gantry_policy::mcp::scan::ScanPolicy;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

/// One upstream, ready to connect.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub transport: UpstreamTransport,
    pub url: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub era: UpstreamEra,
    pub headers: HeaderMap,
    pub timeout: Duration,
    pub failure_mode: UpstreamFailureMode,
    pub max_concurrency: usize,
    pub tools: Curation,
    pub prompts: Curation,
    pub resources: Curation,
    pub pins: HashMap<String, DefinitionDigest>,
    /// Why it cannot be used (a credential's variable is not set), if so.
    pub unavailable: Option<String>,
}

/// A virtual server: a named subset of the federated items.
#[derive(Debug, Clone)]
pub struct VirtualServer {
    pub name: String,
    pub tools: Vec<NamePattern>,
    pub prompts: Vec<NamePattern>,
    pub resources_from: Vec<String>,
}

impl VirtualServer {
    pub fn offers_tool(&self, federated: &str) -> bool {
        self.tools.iter().any(|p| p.matches(federated))
    }

    pub fn offers_prompt(&self, federated: &str) -> bool {
        self.prompts.iter().any(|p| p.matches(federated))
    }

    pub fn offers_resources_of(&self, upstream: &str) -> bool {
        self.resources_from.iter().any(|u| u == upstream)
    }
}

/// Everything the bridge serves from.
#[derive(Debug)]
pub struct BridgeSettings {
    pub path: String,
    pub server_info: Value,
    pub instructions: Option<String>,
    pub naming: Naming,
    pub allowed_origins: Vec<String>,
    /// Lower-case hosts (without port) and host:port values accepted in `Host`.
    pub allowed_hosts: Vec<String>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub session_ttl_secs: u64,
    /// The sealing secret; `None` means a random one per process.
    pub session_secret: Option<Vec<u8>>,
    pub session_secret_env: String,
    pub upstreams: Vec<UpstreamSettings>,
    pub virtual_servers: Vec<VirtualServer>,
    pub rules: McpRules,
    pub scan: ScanPolicy,
    pub scan_action: VerdictAction,
    pub on_change: DriftAction,
    pub on_collision: VerdictAction,
    pub pin_file: Option<std::path::PathBuf>,
}

impl BridgeSettings {
    /// Compiles a validated section; `env` reads environment variables, `listen` is where
    /// Envoy accepts clients (its address is an accepted `Host`).
    pub fn compile(
        section: &McpSection,
        listen: Option<std::net::SocketAddr>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> BridgeSettings {
        let mut allowed_hosts: Vec<String> = section
            .allowed_hosts
            .iter()
            .map(|h| h.value.to_ascii_lowercase())
            .collect();
        if allowed_hosts.is_empty() {
            allowed_hosts.extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
            if let Some(listen) = listen {
                allowed_hosts.push(match listen.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                });
            }
        }
        let upstreams = section
            .upstreams
            .iter()
            .map(|u| {
                let resolved = gantry_policy::config::resolve_upstream_headers(
                    &u.headers,
                    &format!("upstream '{}'", u.name.value),
                    env,
                );
                let mut unavailable = resolved.unavailable;
                let pairs = resolved.pairs;
                let headers = match crate::upstream::http::header_map(&pairs) {
                    Ok(map) => map,
                    Err(e) => {
                        unavailable.get_or_insert(e);
                        HeaderMap::new()
                    }
                };
                let child_env = u
                    .env
                    .iter()
                    .map(|(k, v)| {
                        let value = match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                            Some(var) => env(var).unwrap_or_else(|| {
                                unavailable.get_or_insert(format!("{var} is not set (env {k})"));
                                String::new()
                            }),
                            None => v.clone(),
                        };
                        (k.clone(), value)
                    })
                    .collect();
                UpstreamSettings {
                    name: u.name.value.clone(),
                    transport: u.transport(),
                    url: u.url.as_ref().map(|s| s.value.clone()).unwrap_or_default(),
                    command: u.command.iter().map(|s| s.value.clone()).collect(),
                    env: child_env,
                    era: u.era,
                    headers,
                    timeout: Duration::from_millis(u.timeout_ms()),
                    failure_mode: u.failure_mode,
                    max_concurrency: u.max_concurrency(),
                    tools: Curation::compile(&u.tools),
                    prompts: Curation::compile(&u.prompts),
                    resources: Curation::compile(&u.resources),
                    pins: u
                        .pins
                        .iter()
                        .filter_map(|(k, v)| v.value.parse().ok().map(|d| (k.clone(), d)))
                        .collect(),
                    unavailable,
                }
            })
            .collect();
        let mut server_info = json!({
            "name": section.server_info.name.clone().unwrap_or_else(|| "gantry".into()),
            "version": section.server_info.version.clone().unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
        });
        if let Some(title) = &section.server_info.title {
            server_info["title"] = Value::from(title.clone());
        }
        let secret_env = section.session_secret_env().to_string();
        BridgeSettings {
            path: section.path().to_string(),
            server_info,
            instructions: section.instructions.clone(),
            naming: Naming {
                separator: section.separator().to_string(),
                mode: section.naming.mode,
            },
            allowed_origins: section
                .allowed_origins
                .iter()
                .map(|o| o.value.to_ascii_lowercase())
                .collect(),
            allowed_hosts,
            max_request_bytes: section
                .limits
                .max_request_bytes
                .unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            max_response_bytes: section
                .limits
                .max_response_bytes
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            session_ttl_secs: section
                .sessions
                .ttl_secs
                .unwrap_or(DEFAULT_SESSION_TTL_SECS),
            session_secret: env(&secret_env)
                .filter(|s| !s.is_empty())
                .map(String::into_bytes),
            session_secret_env: secret_env,
            upstreams,
            virtual_servers: section
                .virtual_servers
                .iter()
                .map(|v| VirtualServer {
                    name: v.name.value.clone(),
                    tools: v.tools.iter().map(|p| NamePattern::new(&p.value)).collect(),
                    prompts: v
                        .prompts
                        .iter()
                        .map(|p| NamePattern::new(&p.value))
                        .collect(),
                    resources_from: v.resources_from.iter().map(|s| s.value.clone()).collect(),
                })
                .collect(),
            rules: McpRules::compile(&section.rules),
            scan: section.definitions.scan.policy(),
            scan_action: section.definitions.scan.action,
            on_change: section.definitions.on_change,
            on_collision: if section.naming.mode == NamingMode::None {
                VerdictAction::Block
            } else {
                section.definitions.on_collision
            },
            pin_file: section
                .definitions
                .pin_file
                .as_ref()
                .map(|f| std::path::PathBuf::from(&f.value)),
        }
    }

    pub fn virtual_server(&self, name: &str) -> Option<&VirtualServer> {
        self.virtual_servers.iter().find(|v| v.name == name)
    }
}
