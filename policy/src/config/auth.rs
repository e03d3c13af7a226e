//! The identity and access sections of the config: `auth` (API keys, JWT issuers, CEL rules),
//! `tls` (TLS on the listener, optionally requiring client certificates) and `cors`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{check_socket_addr, issue, ConfigIssue, FailureMode};
use crate::auth::api_keys::KeyHash;
use crate::auth::rules::compile_condition;

/// Where the ext_authz gRPC server listens unless the config says otherwise.
pub const DEFAULT_AUTH_LISTEN: &str = "127.0.0.1:10002";
/// Clock skew tolerated on `exp` and `nbf` unless an issuer says otherwise.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 30;
/// An unknown `kid` makes Gantry refetch a JWKS at most this often unless configured.
pub const DEFAULT_JWKS_REFETCH_SECS: u64 = 60;
/// A JWKS URL is refreshed in the background this often unless configured.
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;
/// How long Envoy waits for one authorization decision unless configured.
pub const DEFAULT_AUTH_TIMEOUT_MS: u64 = 500;

/// Who may call the gateway, and what they may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `IP:port` of the ext_authz gRPC server.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// What Envoy does when the ext_authz server cannot be reached: `closed` (default) answers
    /// 503; `open` lets requests through unauthenticated.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Envoy's deadline for one decision, in milliseconds (default 500).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `strict` (default): every request needs valid credentials. `optional`: a request
    /// without credentials is anonymous and the rules decide; bad credentials still get 401.
    #[serde(default)]
    pub mode: AuthMode,
    /// Keep the client's `Authorization` and `x-api-key` headers on the upstream request
    /// (default: removed once they have been checked).
    #[serde(default)]
    pub forward_credentials: bool,
    /// Take the verified client certificate's identity (URI SAN / SPIFFE ID, else subject) as
    /// the principal when the request carries no API key or token (default true).
    #[serde(default = "yes")]
    pub mtls_identity: bool,
    #[serde(default)]
    pub api_keys: Vec<ApiKeySection>,
    #[serde(default)]
    pub jwt: Vec<JwtIssuerSection>,
    /// Evaluated in order; a matching `deny` wins over any `allow`. When rules exist and none
    /// allows, the request is denied.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Strict,
    Optional,
}

/// One API key. The config holds only its hash (`gantry key new` prints both).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    /// Names the key in logs, headers and metadata.
    pub name: Spanned<String>,
    /// `sha256:<64 hex digits>` of the key.
    pub hash: Spanned<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    /// Model names (as clients send them) this key may use; absent means all.
    #[serde(default)]
    pub models: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 time after which the key is refused, e.g. `2027-01-31T00:00:00Z`.
    #[serde(default)]
    pub expires_at: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// A trusted JWT issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerSection {
    /// The exact `iss` claim.
    pub issuer: Spanned<String>,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (https, or http on loopback).
    #[serde(default)]
    pub jwks_url: Option<Spanned<String>>,
    /// A local JWKS file instead of a URL.
    #[serde(default)]
    pub jwks_file: Option<Spanned<String>>,
    /// Signature algorithms accepted from this issuer (default `[RS256, ES256]`). `none` is
    /// never accepted.
    #[serde(default)]
    pub algorithms: Option<Vec<Spanned<String>>>,
    /// Clock skew tolerated on `exp`/`nbf`, seconds (default 30).
    #[serde(default)]
    pub leeway_secs: Option<u64>,
    /// An unknown `kid` refetches the JWKS at most once per this many seconds (default 60).
    #[serde(default)]
    pub refetch_interval_secs: Option<u64>,
    /// The JWKS is refreshed in the background this often, seconds (default 300).
    #[serde(default)]
    pub refresh_interval_secs: Option<u64>,
    /// Claims that name the principal's user and team (default `sub` for the subject).
    #[serde(default)]
    pub user_claim: Option<String>,
    #[serde(default)]
    pub team_claim: Option<String>,
}

/// One authorization rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub name: Spanned<String>,
    pub action: RuleAction,
    /// CEL condition over `request`, `source`, `principal`, `jwt`, `apiKey` and `llm`.
    pub when: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Allow,
    Deny,
}

/// TLS on Envoy's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    /// PEM bundle of CAs whose client certificates are accepted; setting it turns on mTLS.
    #[serde(default)]
    pub client_ca_file: Option<Spanned<String>>,
    /// Refuse connections without a client certificate (default true when `client_ca_file`
    /// is set).
    #[serde(default)]
    pub require_client_certificate: Option<bool>,
}

impl TlsSection {
    pub fn requires_client_certificate(&self) -> bool {
        self.client_ca_file.is_some() && self.require_client_certificate.unwrap_or(true)
    }
}

/// Browser access, answered by Envoy's CORS filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Exact origins (`https://app.example.com`), `*` for any, or `regex:<RE2>`.
    pub allow_origins: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    #[serde(default)]
    pub allow_credentials: bool,
}

/// Methods a preflight may name unless configured.
pub const DEFAULT_CORS_METHODS: &[&str] = &["GET", "POST", "OPTIONS"];
/// Request headers a browser may send unless configured.
pub const DEFAULT_CORS_HEADERS: &[&str] = &["authorization", "content-type", "x-api-key"];

impl AuthSection {
    pub(super) fn validate(&self, models: &HashSet<&str>, issues: &mut Vec<ConfigIssue>) {
        if let Some(listen) = &self.listen {
            check_socket_addr(listen, "auth.listen", issues);
        }
        if self.timeout_ms == Some(0) {
            issues.push(issue("auth.timeout_ms", 0, "must be at least 1".into()));
        }
        if self.api_keys.is_empty() && self.jwt.is_empty() && !self.mtls_identity {
            issues.push(issue(
                "auth",
                0,
                "no api_keys, no jwt issuers and mtls_identity is off: no caller could ever authenticate".into(),
            ));
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut hashes: HashMap<String, usize> = HashMap::new();
        for (i, key) in self.api_keys.iter().enumerate() {
            let path = format!("auth.api_keys[{i}]");
            super::check_name(&key.name, &format!("{path}.name"), issues);
            if let Some(first) = names.insert(key.name.value.as_str(), i) {
                issues.push(issue(
                    &format!("{path}.name"),
                    key.name.referenced.line(),
                    format!(
                        "duplicate key name '{}' (first declared at auth.api_keys[{first}])",
                        key.name.value
                    ),
                ));
            }
            match KeyHash::parse(&key.hash.value) {
                Ok(hash) => {
                    if let Some(first) = hashes.insert(hash.to_string(), i) {
                        issues.push(issue(
                            &format!("{path}.hash"),
                            key.hash.referenced.line(),
                            format!(
                                "the same key hash is already declared at auth.api_keys[{first}]"
                            ),
                        ));
                    }
                }
                Err(e) => issues.push(issue(
                    &format!("{path}.hash"),
                    key.hash.referenced.line(),
                    e.to_string(),
                )),
            }
            for model in key.models.iter().flatten() {
                if !models.contains(model.value.as_str()) {
                    issues.push(issue(
                        &format!("{path}.models"),
                        model.referenced.line(),
                        format!("unknown model '{}' (not in models)", model.value),
                    ));
                }
            }
            if let Some(expiry) = &key.expires_at {
                if let Err(e) = parse_rfc3339(&expiry.value) {
                    issues.push(issue(
                        &format!("{path}.expires_at"),
                        expiry.referenced.line(),
                        e,
                    ));
                }
            }
        }

        let mut issuers: HashMap<&str, usize> = HashMap::new();
        for (i, jwt) in self.jwt.iter().enumerate() {
            let path = format!("auth.jwt[{i}]");
            let line = jwt.issuer.referenced.line();
            if jwt.issuer.value.trim().is_empty() {
                issues.push(issue(
                    &format!("{path}.issuer"),
                    line,
                    "must not be empty".into(),
                ));
            } else if let Some(first) = issuers.insert(jwt.issuer.value.as_str(), i) {
                issues.push(issue(
                    &format!("{path}.issuer"),
                    line,
                    format!(
                        "issuer '{}' is already declared at auth.jwt[{first}]",
                        jwt.issuer.value
                    ),
                ));
            }
            if jwt.audiences.is_empty() || jwt.audiences.iter().any(|a| a.trim().is_empty()) {
                issues.push(issue(
                    &format!("{path}.audiences"),
                    line,
                    "name at least one non-empty audience: tokens minted for other services must not be accepted".into(),
                ));
            }
            match (&jwt.jwks_url, &jwt.jwks_file) {
                (Some(_), Some(_)) | (None, None) => issues.push(issue(
                    &path,
                    line,
                    "set exactly one of jwks_url and jwks_file".into(),
                )),
                (Some(url), None) => {
                    if let Err(e) = check_jwks_url(&url.value) {
                        issues.push(issue(&format!("{path}.jwks_url"), url.referenced.line(), e));
                    }
                }
                (None, Some(file)) => {
                    if file.value.trim().is_empty() {
                        issues.push(issue(
                            &format!("{path}.jwks_file"),
                            file.referenced.line(),
                            "must not be empty".into(),
                        ));
                    }
                }
            }
            for alg in jwt.algorithms.iter().flatten() {
                if let Err(e) = crate::auth::jwt::parse_algorithm(&alg.value) {
                    issues.push(issue(
                        &format!("{path}.algorithms"),
                        alg.referenced.line(),
                        e,
                    ));
                }
            }
            if jwt.algorithms.as_ref().is_some_and(|a| a.is_empty()) {
                issues.push(issue(
                    &format!("{path}.algorithms"),
                    line,
                    "must not be empty".into(),
                ));
            }
            for (field, value) in [
                ("refetch_interval_secs", jwt.refetch_interval_secs),
                ("refresh_interval_secs", jwt.refresh_interval_secs),
            ] {
                if value == Some(0) {
                    issues.push(issue(
                        &format!("{path}.{field}"),
                        line,
                        "must be at least 1".into(),
                    ));
                }
            }
            if jwt.leeway_secs.is_some_and(|l| l > 300) {
                issues.push(issue(
                    &format!("{path}.leeway_secs"),
                    line,
                    "at most 300: a larger leeway accepts tokens long after they expire".into(),
                ));
            }
        }

        let mut rule_names: HashMap<&str, usize> = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("auth.rules[{i}]");
            if rule.name.value.trim().is_empty() {
                issues.push(issue(
                    &format!("{path}.name"),
                    rule.name.referenced.line(),
                    "must not be empty".into(),
                ));
            } else if let Some(first) = rule_names.insert(rule.name.value.as_str(), i) {
                issues.push(issue(
                    &format!("{path}.name"),
                    rule.name.referenced.line(),
                    format!(
                        "duplicate rule name '{}' (first declared at auth.rules[{first}])",
                        rule.name.value
                    ),
                ));
            }
            if let Err(e) = compile_condition(&rule.when.value) {
                issues.push(issue(
                    &format!("{path}.when"),
                    rule.when.referenced.line(),
                    format!("rule '{}' does not compile: {e}", rule.name.value),
                ));
            }
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_AUTH_TIMEOUT_MS)
    }

    /// Whether decisions need the request body (to read the requested model).
    pub fn needs_request_body(&self) -> bool {
        self.api_keys.iter().any(|k| k.models.is_some())
            || self
                .rules
                .iter()
                .any(|r| crate::auth::rules::references_llm(&r.when.value))
    }
}

impl TlsSection {
    pub(super) fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        for (field, value) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if value.value.trim().is_empty() {
                issues.push(issue(
                    &format!("tls.{field}"),
                    value.referenced.line(),
                    "must not be empty".into(),
                ));
            }
        }
        if self.client_ca_file.is_none() && self.require_client_certificate == Some(true) {
            issues.push(issue(
                "tls.require_client_certificate",
                self.cert_file.referenced.line(),
                "needs client_ca_file: Envoy can only require certificates it can verify".into(),
            ));
        }
    }
}

impl CorsSection {
    pub(super) fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        if self.allow_origins.is_empty() {
            issues.push(issue(
                "cors.allow_origins",
                0,
                "name at least one origin".into(),
            ));
        }
        for origin in &self.allow_origins {
            let line = origin.referenced.line();
            let value = origin.value.as_str();
            if let Some(re) = value.strip_prefix("regex:") {
                if re.is_empty() {
                    issues.push(issue("cors.allow_origins", line, "empty regex".into()));
                }
            } else if value == "*" {
                if self.allow_credentials {
                    issues.push(issue(
                        "cors.allow_origins",
                        line,
                        "'*' cannot be combined with allow_credentials: browsers refuse credentialed responses for any origin; list the origins".into(),
                    ));
                }
            } else if !(value.starts_with("https://") || value.starts_with("http://"))
                || value.ends_with('/')
            {
                issues.push(issue(
                    "cors.allow_origins",
                    line,
                    format!("'{value}' is not an origin (scheme://host[:port], no path), '*' or regex:<RE2>"),
                ));
            }
        }
    }
}

/// Unix seconds of an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("'{text}' is not an RFC 3339 time such as 2027-01-31T00:00:00Z ({e})"))
}

fn check_jwks_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("'{text}' is not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "'{text}' must be https: keys fetched over plain HTTP can be swapped by anyone on the path (http is allowed only on loopback)"
        )),
        other => Err(format!("'{text}': unsupported scheme '{other}' (use https)")),
    }
}
