//! The `a2a` section of the config: the A2A agents Envoy fronts, how their cards are rewritten,
//! who may call which method and skill, and which push-notification webhooks are allowed.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{issue, ConfigIssue, RuleSection};
use crate::endpoint::ProviderEndpoint;

/// The public path under which agents are served unless configured: `/a2a/<agent>/…`.
pub const DEFAULT_A2A_PATH: &str = "/a2a";
/// Where an agent serves its card unless configured (A2A 0.3 and later).
pub const DEFAULT_CARD_PATH: &str = "/.well-known/agent-card.json";
/// How long Envoy waits for an agent's whole answer (streams included) unless configured.
pub const DEFAULT_AGENT_TIMEOUT_SECS: u64 = 300;

/// A2A agents behind the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aSection {
    /// The public path prefix (default `/a2a`): agent `x` is reached at `<path>/x/`, and
    /// `GET <path>` lists every agent with its rewritten card (the agent registry).
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// The gateway's public base URL as clients see it (e.g. `https://gw.example.com`). Card
    /// URLs are rewritten under it. Without it they are built from the request
    /// (`X-Forwarded-Proto`, `X-Forwarded-Host` or `Host`).
    #[serde(default)]
    pub public_url: Option<Spanned<String>>,
    /// What to do with a signed card, whose signatures the rewrite breaks: `unsigned`
    /// (default) removes the signatures and flags the card (an extension entry and the
    /// `x-gantry-card-signatures: removed` header); `refuse` answers 502 instead.
    #[serde(default)]
    pub signed_cards: SignedCards,
    /// The security schemes cards advertise instead of the agents' own. Without it they
    /// describe the `auth` section (API key, JWT bearer, mTLS), or nothing without `auth`.
    #[serde(default)]
    pub security: Option<A2aSecuritySection>,
    #[serde(default)]
    pub push_notifications: PushNotificationsSection,
    /// CEL rules over `principal`, `a2a` and `request`: who may call which method and skill.
    /// A skill a caller may not use is also left out of the card they see.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// Bind each task to the caller whose request created it (default true): a request about
    /// another caller's task is answered "task not found". Per gateway process: a task created
    /// through another replica, or before a restart, is left to the rules.
    #[serde(default = "yes")]
    pub bind_tasks_to_caller: bool,
    pub agents: Vec<AgentSection>,
}

/// What happens to a card that carries `signatures`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignedCards {
    /// Republished without its signatures, flagged as changed by the gateway.
    #[default]
    Unsigned,
    /// Not served: 502 naming the agent.
    Refuse,
}

/// Security schemes published in place of the agents' own, in the A2A 1.0 card form
/// (`securitySchemes` keyed by name; `securityRequirements` lists of scheme names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aSecuritySection {
    /// Name → an A2A 1.0 `SecurityScheme` object (e.g.
    /// `{httpAuthSecurityScheme: {scheme: Bearer}}`). 0.3 cards get the same schemes in 0.3 form.
    pub schemes: serde_json::Map<String, serde_json::Value>,
    /// Alternatives, each a list of scheme names all required together (default: each
    /// scheme alone).
    #[serde(default)]
    pub requirements: Vec<Vec<String>>,
}

/// Which webhook URLs push-notification configs may name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushNotificationsSection {
    /// Host names (exact, or `*.example.com` for its subdomains) webhooks may point to. When
    /// set, every other host is refused; when empty, any public host is allowed.
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
    /// Allow webhooks on loopback, private, link-local and other non-public addresses
    /// (default false: those are how a webhook reaches into the network behind the agent).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Allow `http://` webhooks (default true; set false to require `https://`).
    #[serde(default = "yes")]
    pub allow_http: bool,
}

fn yes() -> bool {
    true
}

impl Default for PushNotificationsSection {
    fn default() -> Self {
        PushNotificationsSection {
            allowed_hosts: Vec::new(),
            allow_private_networks: false,
            allow_http: true,
        }
    }
}

/// One agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Its path segment: the agent is reached at `<a2a.path>/<name>/`.
    pub name: Spanned<String>,
    /// The agent's base URL, `http(s)://host[:port][/path]`: requests under `<a2a.path>/<name>/`
    /// go to the same path under it.
    pub url: Spanned<String>,
    /// Where the agent serves its card, relative to `url` (default
    /// `/.well-known/agent-card.json`).
    #[serde(default)]
    pub card_path: Option<Spanned<String>>,
    /// Headers sent to the agent on every request (its credentials); values from the
    /// environment with `value_env`.
    #[serde(default)]
    pub headers: Vec<super::UpstreamHeader>,
    /// How long Envoy waits for the agent's whole answer, streams included (default 300).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// A PEM CA bundle for an `https://` agent (default: the system's).
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
}

impl A2aSection {
    pub fn path(&self) -> &str {
        self.path
            .as_ref()
            .map_or(DEFAULT_A2A_PATH, |p| p.value.as_str())
    }

    pub(super) fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        if let Some(path) = &self.path {
            if !is_url_path(&path.value) {
                issues.push(issue(
                    "a2a.path",
                    path.referenced.line(),
                    format!(
                        "'{}' is not a path like /a2a (letters, digits, '/', '-', '_', '.'; no trailing '/')",
                        path.value
                    ),
                ));
            }
        }
        if let Some(url) = &self.public_url {
            if let Err(problem) = parse_public_url(&url.value) {
                issues.push(issue("a2a.public_url", url.referenced.line(), problem));
            }
        }
        if let Some(security) = &self.security {
            validate_security(security, issues);
        }
        for (i, host) in self.push_notifications.allowed_hosts.iter().enumerate() {
            let h = host.value.strip_prefix("*.").unwrap_or(&host.value);
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
            {
                issues.push(issue(
                    &format!("a2a.push_notifications.allowed_hosts[{i}]"),
                    host.referenced.line(),
                    format!("'{}' is not a host name or '*.domain' pattern", host.value),
                ));
            }
        }
        crate::a2a::authz::validate_rules(&self.rules, issues);
        super::check_upstream_entries(
            "a2a.agents",
            "agent",
            self.agents.iter().map(|a| super::UpstreamEntry {
                name: &a.name,
                url: &a.url,
                ca_file: a.ca_file.as_ref(),
                timeout_secs: a.timeout_secs,
                headers: &a.headers,
            }),
            issues,
        );
        for (i, agent) in self.agents.iter().enumerate() {
            let path = format!("a2a.agents[{i}]");
            if let Some(card_path) = &agent.card_path {
                if !card_path.value.starts_with('/') || card_path.value.contains(['?', '#']) {
                    issues.push(issue(
                        &format!("{path}.card_path"),
                        card_path.referenced.line(),
                        format!("'{}' is not a path starting with '/'", card_path.value),
                    ));
                }
            }
        }
    }
}

impl AgentSection {
    pub fn card_path(&self) -> &str {
        self.card_path
            .as_ref()
            .map_or(DEFAULT_CARD_PATH, |p| p.value.as_str())
    }

    pub fn timeout_secs(&self) -> u64 {
        self.timeout_secs.unwrap_or(DEFAULT_AGENT_TIMEOUT_SECS)
    }

    /// The parsed URL. Only call on a validated config.
    pub fn endpoint(&self) -> Result<ProviderEndpoint, crate::endpoint::EndpointError> {
        ProviderEndpoint::parse(&self.url.value)
    }
}

fn is_url_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() >= 2
        && !p.ends_with('/')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
}

/// `scheme://authority` with an optional path, no query: the gateway's public base URL,
/// returned without a trailing `/`.
pub fn parse_public_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("'{url}' must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || url.contains(['?', '#', ' ']) {
        return Err(format!(
            "'{url}' is not a base URL like https://gateway.example.com"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn validate_security(security: &A2aSecuritySection, issues: &mut Vec<ConfigIssue>) {
    const KINDS: &[&str] = &[
        "apiKeySecurityScheme",
        "httpAuthSecurityScheme",
        "oauth2SecurityScheme",
        "openIdConnectSecurityScheme",
        "mtlsSecurityScheme",
    ];
    for (name, scheme) in &security.schemes {
        let ok = scheme
            .as_object()
            .is_some_and(|o| o.len() == 1 && o.keys().all(|k| KINDS.contains(&k.as_str())));
        if !ok {
            issues.push(issue(
                &format!("a2a.security.schemes.{name}"),
                0,
                format!(
                    "must be an object with exactly one of {} (the A2A 1.0 SecurityScheme form)",
                    KINDS.join(", ")
                ),
            ));
        }
    }
    for (i, requirement) in security.requirements.iter().enumerate() {
        for scheme in requirement {
            if !security.schemes.contains_key(scheme) {
                issues.push(issue(
                    &format!("a2a.security.requirements[{i}]"),
                    0,
                    format!("names '{scheme}', which is not in a2a.security.schemes"),
                ));
            }
        }
    }
}
