//! Identity and access: who is calling (API key, JWT, client certificate) and whether they may
//! do what they ask (key model allow-lists, CEL rules). The ext_authz server is the adapter that
//! feeds Envoy's check requests in here and turns a [`Decision`] into a check response.
//!
//! Fetching JWKS documents is I/O and stays in the adapter, behind [`JwksSource`].

pub mod api_keys;
pub mod jwt;
pub mod peer;
pub mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::admin::RuntimeDirectory;
use crate::config::{AuthMode, AuthSection};
use api_keys::{ApiKey, ApiKeyTable};
use jwt::{JwtError, JwtIssuer, KeySet};
use rules::{RuleFacts, RuleSet, RuleVerdict};

/// Upstream headers that carry the verified principal. Gantry always overwrites or removes
/// them, so a client can never choose their values.
pub const SUBJECT_HEADER: &str = "x-gantry-subject";
pub const USER_HEADER: &str = "x-gantry-user";
pub const TEAM_HEADER: &str = "x-gantry-team";
pub const KEY_HEADER: &str = "x-gantry-key";
pub const AUTH_METHOD_HEADER: &str = "x-gantry-auth-method";
pub const IDENTITY_HEADERS: &[&str] = &[
    SUBJECT_HEADER,
    USER_HEADER,
    TEAM_HEADER,
    KEY_HEADER,
    AUTH_METHOD_HEADER,
];
/// Headers that carry client credentials; removed upstream unless `forward_credentials`.
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key"];
/// The realm named in `WWW-Authenticate`.
const REALM: &str = "gantry";

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Mtls,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Mtls => "mtls",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub method: AuthMethod,
    /// The stable identity: the key's user (else its name), the token's `sub`, or the
    /// certificate's SPIFFE ID (else subject).
    pub subject: String,
    pub user: Option<String>,
    pub team: Option<String>,
    /// The API key's name.
    pub key: Option<String>,
    /// The JWT issuer.
    pub issuer: Option<String>,
    pub api_key: Option<Arc<ApiKey>>,
    pub claims: Option<Arc<Map<String, Value>>>,
    /// The metadata the admin API attached to the principal's team and user (the user's
    /// values win), for rules as `principal.metadata`.
    pub metadata: Option<Arc<std::collections::BTreeMap<String, String>>>,
}

/// The compiled `auth` section.
#[derive(Debug)]
pub struct AuthPolicy {
    pub mode: AuthMode,
    pub forward_credentials: bool,
    pub mtls_identity: bool,
    pub api_keys: ApiKeyTable,
    pub issuers: Vec<JwtIssuer>,
    pub rules: RuleSet,
    /// Whether decisions read the requested model from the body.
    pub needs_model: bool,
    /// Path prefixes whose clients speak JSON-RPC (the MCP bridge, `mcp_direct`, A2A): their
    /// denials are JSON-RPC errors.
    pub json_rpc_paths: Vec<String>,
}

/// The keys of each issuer, kept by the adapter. `issuer` indexes [`AuthPolicy::issuers`].
pub trait JwksSource: Sync {
    /// The last good keys (possibly empty).
    fn current(&self, issuer: usize) -> Arc<KeySet>;
    /// Fetches again, unless a fetch happened within the issuer's refetch interval; returns
    /// the keys to use (the last good ones when fetching fails).
    fn refetch(&self, issuer: usize) -> impl Future<Output = Arc<KeySet>> + Send;
}

/// What a check request says about the request being authorized.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    pub method: &'a str,
    /// Path with query.
    pub path: &'a str,
    pub host: &'a str,
    pub scheme: &'a str,
    /// Lower-case names, as Envoy sends them.
    pub headers: &'a HashMap<String, String>,
    pub source_address: &'a str,
    /// The peer certificate's identity, as reported by Envoy (empty without mTLS).
    pub peer_principal: &'a str,
    /// The peer certificate, URL-encoded PEM, as Envoy sends it (empty without).
    pub peer_certificate: &'a str,
    pub body: &'a [u8],
    /// Current time, Unix seconds.
    pub now: i64,
}

/// The protocol a denial must speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    /// OpenAI error objects.
    OpenAi,
    /// JSON-RPC 2.0 errors (MCP endpoints).
    JsonRpc,
}

impl ClientProtocol {
    /// JSON-RPC on `prefixes` (each exactly, or followed by `/`), OpenAI elsewhere.
    pub fn for_path(path: &str, prefixes: &[String]) -> ClientProtocol {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let under = |prefix: &String| {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if prefixes.iter().any(under) {
            ClientProtocol::JsonRpc
        } else {
            ClientProtocol::OpenAi
        }
    }
}

/// The outcome of a check.
#[derive(Debug)]
pub enum Decision {
    Allow(Box<Allowed>),
    Deny(Denial),
}

/// An admitted request and what to change on its way upstream.
#[derive(Debug)]
pub struct Allowed {
    /// `None` for an anonymous request admitted by the rules in `optional` mode.
    pub principal: Option<Principal>,
    /// Headers to set upstream, overwriting whatever the client sent.
    pub set_headers: Vec<(&'static str, String)>,
    /// Headers to remove upstream.
    pub remove_headers: Vec<&'static str>,
    /// Facts for Envoy's dynamic metadata (read by ext_proc and the access log).
    pub metadata: Map<String, Value>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    /// Machine-readable reason, e.g. `invalid_api_key`.
    pub code: &'static str,
    pub message: String,
    /// Set on 401 answers.
    pub www_authenticate: Option<String>,
    /// The body in the client's protocol.
    pub body: Bytes,
}

impl Denial {
    fn new(protocol: ClientProtocol, status: u16, code: &'static str, message: String) -> Denial {
        let www_authenticate = (status == 401).then(|| {
            if code == "missing_credentials" {
                format!("Bearer realm=\"{REALM}\"")
            } else {
                format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                    message.replace(['"', '\\'], "'")
                )
            }
        });
        let body = match protocol {
            ClientProtocol::OpenAi => json!({
                "error": {
                    "message": message,
                    "type": match status {
                        401 => "authentication_error",
                        403 => "permission_error",
                        _ => "service_unavailable",
                    },
                    "param": null,
                    "code": code,
                }
            }),
            ClientProtocol::JsonRpc => json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {
                    "code": match status { 401 => -32001, 403 => -32003, _ => -32603 },
                    "message": message,
                    "data": { "status": status, "reason": code },
                }
            }),
        };
        Denial {
            status,
            code,
            message,
            www_authenticate,
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        }
    }
}

/// The credential a request presents.
enum Presented<'a> {
    None,
    /// `x-api-key`.
    ApiKey(&'a str),
    /// `Authorization: Bearer`: an API key or a JWT.
    Bearer(&'a str),
    /// An `Authorization` header Gantry cannot use.
    Unsupported(&'a str),
}

fn presented(headers: &HashMap<String, String>) -> Presented<'_> {
    if let Some(key) = headers.get("x-api-key") {
        return Presented::ApiKey(key.trim());
    }
    let Some(value) = headers.get("authorization") else {
        return Presented::None;
    };
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Presented::Bearer(token.trim())
        }
        _ => Presented::Unsupported(value.split(' ').next().unwrap_or("")),
    }
}

impl AuthPolicy {
    pub fn compile(section: &AuthSection) -> AuthPolicy {
        AuthPolicy {
            mode: section.mode,
            forward_credentials: section.forward_credentials,
            mtls_identity: section.mtls_identity,
            api_keys: ApiKeyTable::compile(&section.api_keys),
            issuers: section.jwt.iter().map(JwtIssuer::compile).collect(),
            rules: RuleSet::compile(&section.rules),
            needs_model: section.needs_request_body(),
            json_rpc_paths: vec![crate::config::DEFAULT_MCP_PATH.to_string()],
        }
    }

    /// The JSON-RPC path prefixes of `config` (the MCP bridge's path, `mcp_direct.path`,
    /// `a2a.path`).
    pub fn with_json_rpc_paths_of(mut self, config: &crate::config::ConfigFile) -> AuthPolicy {
        self.json_rpc_paths = [
            config.mcp.as_ref().map(|m| m.path().to_string()),
            config.mcp_direct.as_ref().map(|d| d.path().to_string()),
            config.a2a.as_ref().map(|a| a.path().to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.json_rpc_paths.is_empty() {
            self.json_rpc_paths
                .push(crate::config::DEFAULT_MCP_PATH.to_string());
        }
        self
    }

    /// Decides on one request, with the config's keys only.
    pub async fn check(&self, request: &AuthRequest<'_>, jwks: &impl JwksSource) -> Decision {
        self.check_with(request, jwks, &RuntimeDirectory::empty())
            .await
    }

    /// Decides on one request; API keys are looked up in the config, then in the keys the
    /// admin API created (`runtime`), skipping a runtime key whose name the config declares.
    pub async fn check_with(
        &self,
        request: &AuthRequest<'_>,
        jwks: &impl JwksSource,
        runtime: &RuntimeDirectory,
    ) -> Decision {
        let protocol = ClientProtocol::for_path(request.path, &self.json_rpc_paths);
        let deny = |status, code, message: String| {
            tracing::debug!(status, code, %message, path = request.path, "request denied");
            Decision::Deny(Denial::new(protocol, status, code, message))
        };
        let peer = peer::PeerIdentity::from_envoy(request.peer_principal, request.peer_certificate);

        let principal = match presented(request.headers) {
            Presented::Unsupported(scheme) => {
                return deny(
                    401,
                    "unsupported_credentials",
                    format!("the '{scheme}' authorization scheme is not supported: send 'Authorization: Bearer <key or token>' or 'x-api-key: <key>'"),
                )
            }
            Presented::ApiKey(secret) => match self.api_key_principal(secret, request.now, runtime) {
                Ok(p) => Some(p),
                Err((code, message)) => return deny(401, code, message),
            },
            Presented::Bearer(secret) => {
                if self.lookup_key(secret, runtime).is_some() || !looks_like_jwt(secret) {
                    match self.api_key_principal(secret, request.now, runtime) {
                        Ok(p) => Some(p),
                        Err((code, message)) => return deny(401, code, message),
                    }
                } else {
                    match self.jwt_principal(secret, jwks).await {
                        Ok(p) => Some(p),
                        Err(JwtError::KeysUnavailable(issuer)) => {
                            return deny(
                                503,
                                "jwks_unavailable",
                                format!("the signing keys of issuer '{issuer}' could not be loaded; try again later"),
                            )
                        }
                        Err(e) => return deny(401, "invalid_token", format!("invalid token: {e}")),
                    }
                }
            }
            Presented::None => match (&peer, self.mtls_identity) {
                (Some(peer), true) => Some(Principal {
                    method: AuthMethod::Mtls,
                    subject: peer.identity().to_string(),
                    user: None,
                    team: None,
                    key: None,
                    issuer: None,
                    api_key: None,
                    claims: None,
                    metadata: None,
                }),
                _ => None,
            },
        };
        let principal = principal.map(|mut p| {
            p.metadata = runtime.principal_metadata(p.user.as_deref(), p.team.as_deref());
            p
        });

        if principal.is_none() && self.mode == AuthMode::Strict {
            return deny(
                401,
                "missing_credentials",
                self.missing_credentials_message(),
            );
        }

        // A runtime key can carry an allow-list the config's `needs_model` did not foresee
        // (Envoy sends the body to ext_authz whenever the admin API is on).
        let key_lists_models = principal
            .as_ref()
            .and_then(|p| p.api_key.as_ref())
            .is_some_and(|k| k.models.is_some());
        let model = if self.needs_model || key_lists_models {
            requested_model(request.method, request.body).unwrap_or_default()
        } else {
            String::new()
        };
        if let Some(key) = principal.as_ref().and_then(|p| p.api_key.as_ref()) {
            if !model.is_empty() && !key.allows_model(&model) {
                return deny(
                    403,
                    "model_not_allowed",
                    format!(
                        "API key '{}' may not use model '{model}' (allowed: {})",
                        key.name,
                        key.models.as_deref().unwrap_or_default().join(", ")
                    ),
                );
            }
        }

        let (peer_principal, peer_subject) = peer
            .as_ref()
            .map_or(("", ""), |p| (p.principal.as_str(), p.subject.as_str()));
        let verdict = self.rules.evaluate(&RuleFacts {
            method: request.method,
            path: request.path,
            host: request.host,
            scheme: request.scheme,
            headers: request.headers,
            source_address: request.source_address,
            source_principal: peer_principal,
            source_subject: peer_subject,
            principal: principal.as_ref(),
            model: &model,
        });
        match verdict {
            RuleVerdict::Denied { rule } if principal.is_some() => {
                return deny(403, "denied_by_rule", format!("denied by rule '{rule}'"))
            }
            RuleVerdict::NoneAllowed if principal.is_some() => {
                return deny(
                    403,
                    "not_allowed",
                    "no rule allows this request (rules deny by default)".into(),
                )
            }
            RuleVerdict::Denied { .. } | RuleVerdict::NoneAllowed => {
                return deny(
                    401,
                    "missing_credentials",
                    self.missing_credentials_message(),
                )
            }
            RuleVerdict::Allowed { .. } | RuleVerdict::NoRules => {}
        }
        Decision::Allow(Box::new(self.admit(principal, &model)))
    }

    fn missing_credentials_message(&self) -> String {
        let mut ways = vec!["an API key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"];
        if !self.issuers.is_empty() {
            ways.push("a JWT as 'Authorization: Bearer <token>'");
        }
        if self.mtls_identity {
            ways.push("a client certificate");
        }
        format!("credentials required: send {}", ways.join(", or "))
    }

    /// The key a secret belongs to: the config's, else a runtime key whose name the config
    /// does not declare.
    fn lookup_key<'a>(
        &'a self,
        secret: &str,
        runtime: &'a RuntimeDirectory,
    ) -> Option<&'a Arc<ApiKey>> {
        self.api_keys.lookup(secret).or_else(|| {
            runtime
                .keys()
                .lookup(secret)
                .filter(|key| !self.api_keys.has_name(&key.name))
        })
    }

    fn api_key_principal(
        &self,
        secret: &str,
        now: i64,
        runtime: &RuntimeDirectory,
    ) -> Result<Principal, (&'static str, String)> {
        let Some(key) = self.lookup_key(secret, runtime) else {
            return Err(("invalid_api_key", "invalid API key".into()));
        };
        if let Some(at) = &key.revoked_at {
            return Err((
                "revoked_api_key",
                format!("API key '{}' was revoked at {at}", key.name),
            ));
        }
        if key.superseded && key.expires_at.is_some_and(|at| now >= at) {
            return Err((
                "rotated_api_key",
                format!(
                    "API key '{}' was rotated: this secret stopped working at {}; use the new one",
                    key.name,
                    key.expires_at_text.as_deref().unwrap_or("?")
                ),
            ));
        }
        if !key.enabled {
            return Err((
                "disabled_api_key",
                format!("API key '{}' is disabled", key.name),
            ));
        }
        if key.expires_at.is_some_and(|at| now >= at) {
            return Err((
                "expired_api_key",
                format!(
                    "API key '{}' expired at {}",
                    key.name,
                    key.expires_at_text.as_deref().unwrap_or("?")
                ),
            ));
        }
        Ok(Principal {
            method: AuthMethod::ApiKey,
            subject: key.user.clone().unwrap_or_else(|| key.name.clone()),
            user: key.user.clone(),
            team: key.team.clone(),
            key: Some(key.name.clone()),
            issuer: None,
            api_key: Some(key.clone()),
            claims: None,
            metadata: None,
        })
    }

    async fn jwt_principal(
        &self,
        token: &str,
        jwks: &impl JwksSource,
    ) -> Result<Principal, JwtError> {
        let unverified = jwt::peek(token)?;
        let Some(index) = self
            .issuers
            .iter()
            .position(|i| i.issuer == unverified.issuer)
        else {
            return Err(JwtError::UnknownIssuer(unverified.issuer));
        };
        let issuer = &self.issuers[index];
        if !issuer.algorithms.contains(&unverified.alg) {
            return Err(JwtError::AlgorithmNotAllowed(format!(
                "{:?}",
                unverified.alg
            )));
        }
        let mut keys = jwks.current(index);
        let needs_fetch = keys.is_empty()
            || unverified
                .kid
                .as_deref()
                .is_some_and(|kid| !keys.has_kid(kid));
        if needs_fetch {
            keys = jwks.refetch(index).await;
            if keys.is_empty() {
                return Err(JwtError::KeysUnavailable(issuer.issuer.clone()));
            }
        }
        let claims = jwt::verify(token, &unverified, issuer, &keys)?;
        let subject = jwt::claim_string(&claims, "sub").unwrap_or_default();
        let user = issuer
            .user_claim
            .as_deref()
            .and_then(|c| jwt::claim_string(&claims, c));
        let team = issuer
            .team_claim
            .as_deref()
            .and_then(|c| jwt::claim_string(&claims, c));
        Ok(Principal {
            method: AuthMethod::Jwt,
            subject,
            user,
            team,
            key: None,
            issuer: Some(issuer.issuer.clone()),
            api_key: None,
            claims: Some(claims),
            metadata: None,
        })
    }

    fn admit(&self, principal: Option<Principal>, model: &str) -> Allowed {
        let mut set_headers = Vec::new();
        let mut remove_headers = Vec::new();
        let mut metadata = Map::new();
        let fields: [(&'static str, Option<&str>); 5] = match &principal {
            Some(p) => [
                (SUBJECT_HEADER, Some(p.subject.as_str())),
                (USER_HEADER, p.user.as_deref()),
                (TEAM_HEADER, p.team.as_deref()),
                (KEY_HEADER, p.key.as_deref()),
                (AUTH_METHOD_HEADER, Some(p.method.as_str())),
            ],
            None => [
                (SUBJECT_HEADER, None),
                (USER_HEADER, None),
                (TEAM_HEADER, None),
                (KEY_HEADER, None),
                (AUTH_METHOD_HEADER, None),
            ],
        };
        for (header, value) in fields {
            match value {
                Some(v) if !v.is_empty() => {
                    set_headers.push((header, v.to_string()));
                    let key = header.trim_start_matches("x-gantry-").replace('-', "_");
                    metadata.insert(key, Value::String(v.to_string()));
                }
                _ => remove_headers.push(header),
            }
        }
        if let Some(p) = &principal {
            if let Some(issuer) = &p.issuer {
                metadata.insert("issuer".into(), Value::String(issuer.clone()));
            }
            if let Some(key) = &p.api_key {
                if !key.labels.is_empty() {
                    let labels = key
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect();
                    metadata.insert("labels".into(), Value::Object(labels));
                }
            }
            if let Some(claims) = &p.claims {
                // For scopes of budgets and rate limits written over `jwt` (ext_proc).
                metadata.insert("claims".into(), Value::Object((**claims).clone()));
            }
            if let Some(models) = p.api_key.as_ref().and_then(|k| k.models.as_ref()) {
                metadata.insert(
                    "allowed_models".into(),
                    Value::Array(models.iter().cloned().map(Value::String).collect()),
                );
            }
        }
        if !model.is_empty() {
            metadata.insert("model".into(), Value::String(model.to_string()));
        }
        if !self.forward_credentials {
            remove_headers.extend_from_slice(CREDENTIAL_HEADERS);
        }
        Allowed {
            principal,
            set_headers,
            remove_headers,
            metadata,
        }
    }
}

fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

/// The `model` of a JSON request body, if it names one.
pub fn requested_model(method: &str, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    if method != "POST" || body.is_empty() {
        return None;
    }
    serde_json::from_slice::<ModelOnly>(body).ok()?.model
}

#[cfg(test)]
mod tests;
