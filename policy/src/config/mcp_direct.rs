//! The `mcp_direct` section: MCP servers Envoy routes to directly (no bridge), with MCP policy
//! applied inline by ext_proc: tool-level rules, curation, the malicious-definition checks on
//! `tools/list` answers, and the request guards over tool-call arguments and results.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{issue, ConfigIssue, CurationSection, DefinitionsSection, RuleSection, UpstreamHeader};
use crate::endpoint::ProviderEndpoint;

/// The public path prefix unless configured: server `x` is at `/mcp-direct/x`.
pub const DEFAULT_MCP_DIRECT_PATH: &str = "/mcp-direct";
/// How long Envoy waits for a server's whole answer (streams included) unless configured.
pub const DEFAULT_MCP_DIRECT_TIMEOUT_SECS: u64 = 300;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpDirectSection {
    /// The public path prefix (default `/mcp-direct`); server `x`'s MCP endpoint is
    /// `<path>/x`.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// CEL rules over `principal`, `mcp` and `request`, as `mcp.rules` (`mcp.upstream` is the
    /// server's name; `mcp.name` and `mcp.upstream_name` are the tool's own name). A tool a
    /// caller may not call is also left out of the lists they get.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// The scan and pin defences, as `mcp.definitions` (`on_collision` and `pin_file` do not
    /// apply: each server is on its own, and first-sight pins last as long as the process).
    #[serde(default)]
    pub definitions: DefinitionsSection,
    /// Run the request guards (`guards.request`, by their `tool_call_arguments` and
    /// `tool_results` scopes) over `tools/call` arguments and results (default true).
    #[serde(default = "yes")]
    pub guard_tool_calls: bool,
    pub servers: Vec<McpDirectServerSection>,
}

fn yes() -> bool {
    true
}

/// One MCP server reached through Envoy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpDirectServerSection {
    pub name: Spanned<String>,
    /// The server's streamable-HTTP endpoint, e.g. `http://127.0.0.1:18001/mcp`.
    pub url: Spanned<String>,
    /// Headers sent to the server on every request (its credentials).
    #[serde(default)]
    pub headers: Vec<UpstreamHeader>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Which tools are offered (`include`/`exclude`; names pass unchanged, so `rename` and
    /// `descriptions` are not available inline).
    #[serde(default)]
    pub tools: CurationSection,
    /// Approved definition digests (`sha256:…`) by tool name.
    #[serde(default)]
    pub pins: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
}

impl McpDirectSection {
    pub fn path(&self) -> &str {
        self.path
            .as_ref()
            .map_or(DEFAULT_MCP_DIRECT_PATH, |p| p.value.as_str())
    }

    pub(super) fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        if let Some(path) = &self.path {
            let p = &path.value;
            let ok = p.starts_with('/')
                && p.len() >= 2
                && !p.ends_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
            if !ok {
                issues.push(issue(
                    "mcp_direct.path",
                    path.referenced.line(),
                    format!("'{p}' is not a path like /mcp-direct (no trailing '/')"),
                ));
            }
        }
        if let Some(pin_file) = &self.definitions.pin_file {
            issues.push(issue(
                "mcp_direct.definitions.pin_file",
                pin_file.referenced.line(),
                "is not available inline: pin definitions with servers[].pins".into(),
            ));
        }
        crate::mcp::authz::validate_rules_at("mcp_direct.rules", &self.rules, issues);
        super::check_upstream_entries(
            "mcp_direct.servers",
            "server",
            self.servers.iter().map(|s| super::UpstreamEntry {
                name: &s.name,
                url: &s.url,
                ca_file: s.ca_file.as_ref(),
                timeout_secs: s.timeout_secs,
                headers: &s.headers,
            }),
            issues,
        );
        for (i, server) in self.servers.iter().enumerate() {
            let path = format!("mcp_direct.servers[{i}]");
            if !server.tools.rename.is_empty() || !server.tools.descriptions.is_empty() {
                issues.push(issue(
                    &format!("{path}.tools"),
                    0,
                    "rename and descriptions need the MCP bridge (inline, names and definitions pass unchanged); use include and exclude".into(),
                ));
            }
            for (tool, digest) in &server.pins {
                if digest
                    .value
                    .parse::<crate::mcp::pin::DefinitionDigest>()
                    .is_err()
                {
                    issues.push(issue(
                        &format!("{path}.pins.{tool}"),
                        digest.referenced.line(),
                        format!(
                            "'{}' is not a digest like sha256:<64 hex digits>",
                            digest.value
                        ),
                    ));
                }
            }
        }
    }
}

impl McpDirectServerSection {
    pub fn timeout_secs(&self) -> u64 {
        self.timeout_secs.unwrap_or(DEFAULT_MCP_DIRECT_TIMEOUT_SECS)
    }

    /// The parsed URL. Only call on a validated config.
    pub fn endpoint(&self) -> Result<ProviderEndpoint, crate::endpoint::EndpointError> {
        ProviderEndpoint::parse(&self.url.value)
    }
}
