//! The compiled, immutable form of a config that requests are served from.
//!
//! Everything a request needs is worked out here once: the alias table, each provider's
//! credential header, the `/v1/models` reply. Secrets are read from the environment at compile
//! time and never appear in `Debug` output or logs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::AuthPolicy;
use crate::config::{ConfigFile, ProviderKind};
use crate::endpoint::ProviderEndpoint;
use crate::governance::GovernancePolicy;
use crate::guard::GuardPolicy;
use crate::json_object::RawObject;
use crate::openai_api::LlmApi;
use crate::routing::{condition_context, holds, RequestContext, VariableUse};
use crate::translate::bedrock::AwsCredentials;
use crate::translate::provider::{ProviderCredential, ProviderFormat};
use cel::Program;

/// A provider's API key. Its `Debug` form is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Whether a provider can take traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The provider needs no key.
    NotNeeded,
    /// The header to inject upstream and its value: `authorization: Bearer ...` for OpenAI,
    /// `api-key: ...` for Azure OpenAI.
    Header { name: &'static str, value: ApiKey },
    /// `api_key_env` names a variable that is unset or empty: the provider is unavailable.
    Missing { env: String },
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// The wire format it speaks.
    pub format: ProviderFormat,
    pub endpoint: ProviderEndpoint,
    /// What the downstream adapters inject (OpenAI-format kinds) or `Missing`.
    pub credential: Credential,
    /// What the upstream filter authenticates with.
    pub upstream_credential: ProviderCredential,
    pub timeout_secs: u64,
    pub mock: bool,
    /// `azure_openai`: the `api-version` query parameter.
    pub api_version: String,
}

impl Provider {
    pub fn is_available(&self) -> bool {
        !matches!(self.credential, Credential::Missing { .. })
    }

    /// The path to send an `api` request for `upstream_model` to, when it is not the client's
    /// (Azure: `/openai/deployments/<deployment>/<api>?api-version=<v>`). The endpoint's base
    /// path is put in front by Envoy's route, as for every provider.
    pub fn upstream_path(&self, api: crate::LlmApi, upstream_model: &str) -> Option<String> {
        match self.kind {
            ProviderKind::Openai
            | ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Bedrock => None,
            ProviderKind::AzureOpenai => {
                let operation = api.path().trim_start_matches("/v1/");
                let deployment = path_segment(upstream_model);
                Some(format!(
                    "/openai/deployments/{deployment}/{operation}?api-version={}",
                    self.api_version
                ))
            }
        }
    }
}

/// `text` as one URL path segment: unreserved characters kept, everything else `%XX`.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A model name clients may send, resolved to its provider.
#[derive(Debug)]
pub struct ModelRoute {
    pub alias: String,
    /// The first target's provider and model (the only ones, for a single-target alias).
    pub provider: Arc<Provider>,
    pub upstream_model: String,
    /// Every place the alias may be served, in config order.
    pub targets: Vec<Target>,
    /// Whether requests go through the alias's own cluster, where Gantry's upstream filter
    /// adapts each attempt to the target Envoy picked (several targets, or a translated
    /// provider kind), rather than straight to the provider's route.
    pub via_upstream_filter: bool,
    /// Tries in all over the targets.
    pub attempts: u32,
    pub per_try_timeout_secs: Option<u64>,
    /// What the targets' `when` conditions read (nothing when none has one).
    pub target_condition_uses: VariableUse,
}

impl ModelRoute {
    /// Whether some target has a `when` condition.
    pub fn has_conditional_targets(&self) -> bool {
        self.targets.iter().any(|t| t.when.is_some())
    }

    /// The targets this request may use: those without `when`, and those whose `when` holds.
    pub fn eligible_targets(
        &self,
        api: LlmApi,
        body: &RawObject,
        request: &RequestContext<'_>,
    ) -> TargetMask {
        let mut eligible = TargetMask::all(self.targets.len());
        if !self.has_conditional_targets() {
            return eligible;
        }
        let context =
            condition_context(self.target_condition_uses, api, &self.alias, body, request);
        for (index, target) in self.targets.iter().enumerate() {
            let Some(when) = &target.when else { continue };
            let what = format_args!("target '{}' of model '{}' when", target.id, self.alias);
            if !holds(&when.0, &context, &what) {
                eligible.remove(index);
                tracing::debug!(target = %target.id, "target left out: its when condition does not hold");
            }
        }
        eligible
    }
}

/// A set of an alias's targets, by index (an alias has at most 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetMask(u16);

impl TargetMask {
    /// The first `count` targets.
    pub fn all(count: usize) -> TargetMask {
        TargetMask(if count >= 16 {
            u16::MAX
        } else {
            (1u16 << count) - 1
        })
    }

    pub fn from_bits(bits: u16) -> TargetMask {
        TargetMask(bits)
    }

    pub fn bits(self) -> u16 {
        self.0
    }

    pub fn contains(self, index: usize) -> bool {
        index < 16 && self.0 & (1 << index) != 0
    }

    pub fn remove(&mut self, index: usize) {
        if index < 16 {
            self.0 &= !(1 << index);
        }
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Lower-case hex, no leading zeros (how Envoy's route and cluster names carry it).
    pub fn to_hex(self) -> String {
        format!("{:x}", self.0)
    }

    pub fn parse_hex(text: &str) -> Option<TargetMask> {
        u16::from_str_radix(text, 16).ok().map(TargetMask)
    }
}

/// A compiled target condition (its `Debug` form is opaque).
pub struct TargetCondition(pub Program);

impl fmt::Debug for TargetCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TargetCondition(..)")
    }
}

/// One place an alias may be served.
#[derive(Debug)]
pub struct Target {
    /// `<alias>/<index>`: how Envoy's endpoint metadata names it to the upstream filter.
    pub id: String,
    pub provider: Arc<Provider>,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: u32,
    /// The target serves only requests for which this holds.
    pub when: Option<TargetCondition>,
}

/// The id of target `index` of `alias` (see [`Target::id`]).
pub fn target_id(alias: &str, index: usize) -> String {
    format!("{alias}/{index}")
}

/// A provider's credentials: the header the downstream adapters inject (OpenAI-format kinds),
/// and what the upstream filter signs or sends with (every kind). A missing variable makes
/// the provider unavailable either way.
fn provider_credentials(
    section: &crate::config::ProviderSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Credential, ProviderCredential) {
    let read = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if section.kind == ProviderKind::Bedrock {
        let var = |field: &Option<serde_saphyr::Spanned<String>>, default: &str| {
            field
                .as_ref()
                .map_or(default.to_string(), |f| f.value.clone())
        };
        let id_env = var(&section.aws_access_key_id_env, "AWS_ACCESS_KEY_ID");
        let secret_env = var(&section.aws_secret_access_key_env, "AWS_SECRET_ACCESS_KEY");
        let token_env = var(&section.aws_session_token_env, "AWS_SESSION_TOKEN");
        let region = section
            .region
            .as_ref()
            .map_or(String::new(), |r| r.value.clone());
        return match (read(&id_env), read(&secret_env)) {
            (Some(access_key_id), Some(secret_access_key)) => (
                Credential::NotNeeded,
                ProviderCredential::Aws {
                    credentials: AwsCredentials {
                        access_key_id,
                        secret_access_key,
                        session_token: read(&token_env),
                    },
                    region,
                },
            ),
            (None, _) => (
                Credential::Missing { env: id_env },
                ProviderCredential::None,
            ),
            (_, None) => (
                Credential::Missing { env: secret_env },
                ProviderCredential::None,
            ),
        };
    }
    let Some(var) = &section.api_key_env else {
        return (Credential::NotNeeded, ProviderCredential::None);
    };
    let Some(key) = read(&var.value) else {
        return (
            Credential::Missing {
                env: var.value.clone(),
            },
            ProviderCredential::None,
        );
    };
    let downstream = match section.kind {
        ProviderKind::Openai => Credential::Header {
            name: "authorization",
            value: ApiKey(format!("Bearer {key}")),
        },
        ProviderKind::AzureOpenai => Credential::Header {
            name: "api-key",
            value: ApiKey(key.clone()),
        },
        // Sent by the upstream filter, the format's way.
        ProviderKind::Anthropic | ProviderKind::Gemini | ProviderKind::Bedrock => {
            Credential::NotNeeded
        }
    };
    (downstream, ProviderCredential::ApiKey(key))
}

/// The compiled config. Shared behind an `Arc` and swapped whole on reload.
#[derive(Debug)]
pub struct Snapshot {
    pub providers: Vec<Arc<Provider>>,
    models: HashMap<String, Arc<ModelRoute>>,
    /// Every target of every alias, by [`Target::id`], for the upstream filter.
    targets_by_id: HashMap<String, (Arc<ModelRoute>, usize)>,
    pub max_request_body_bytes: u64,
    /// Names of the models clients can use now (their provider has its key), sorted.
    pub available_models: Vec<String>,
    /// The JSON body of `GET /v1/models`, rendered once.
    pub models_list_body: Bytes,
    /// Identity and access, when the config has an `auth` section.
    pub auth: Option<Arc<AuthPolicy>>,
    /// Budgets, rate limits and spend, when the config has a `governance` section.
    pub governance: Option<Arc<GovernancePolicy>>,
    /// Request guards (empty without a `guards` section), compiled once.
    pub guards: GuardPolicy,
    /// Content-based routing rules (empty without a `routing` section).
    pub routing: crate::routing::RoutingRules,
    /// A2A agents, when the config has an `a2a` section.
    pub a2a: Option<Arc<crate::a2a::A2aPolicy>>,
    /// MCP servers policed inline, when the config has an `mcp_direct` section.
    pub mcp_direct: Option<Arc<crate::mcp::direct::DirectMcpPolicy>>,
    /// The admin API, when the config has an `admin_api` section.
    pub admin: Option<Arc<crate::admin::AdminApiPolicy>>,
    /// What the targets' `when` conditions read, over all aliases.
    target_condition_uses: VariableUse,
}

impl Snapshot {
    /// Compiles a validated config. `env` looks up environment variables (injectable for tests).
    pub fn compile(config: &ConfigFile, env: &dyn Fn(&str) -> Option<String>) -> Snapshot {
        let mut providers = Vec::with_capacity(config.providers.len());
        let mut by_name = HashMap::new();
        for section in &config.providers {
            let Ok(endpoint) = section.endpoint() else {
                continue; // unreachable on a validated config
            };
            let (credential, upstream_credential) = provider_credentials(section, env);
            let provider = Arc::new(Provider {
                name: section.name.value.clone(),
                kind: section.kind,
                format: match section.kind {
                    ProviderKind::Openai | ProviderKind::AzureOpenai => ProviderFormat::OpenAi,
                    ProviderKind::Anthropic => ProviderFormat::Anthropic,
                    ProviderKind::Gemini => ProviderFormat::Gemini,
                    ProviderKind::Bedrock => ProviderFormat::Bedrock,
                },
                endpoint,
                credential,
                upstream_credential,
                timeout_secs: section.timeout_secs(),
                mock: section.mock,
                api_version: section.api_version().to_string(),
            });
            by_name.insert(provider.name.clone(), provider.clone());
            providers.push(provider);
        }
        let mut models = HashMap::with_capacity(config.models.len());
        let mut targets_by_id = HashMap::new();
        let mut condition_uses = VariableUse::default();
        let mut listed: Vec<serde_json::Value> = Vec::new();
        let mut available_models = Vec::new();
        for section in &config.models {
            let alias = section.name.value.clone();
            let targets: Vec<Target> = section
                .targets_or_single()
                .iter()
                .enumerate()
                .filter_map(|(index, t)| {
                    Some(Target {
                        id: target_id(&alias, index),
                        provider: by_name.get(&t.provider.value)?.clone(),
                        upstream_model: t.model.value.clone(),
                        weight: t.weight,
                        priority: t.priority,
                        // Unreachable error on a validated config; a target whose condition
                        // does not compile never serves.
                        when: t.when.map(|w| {
                            TargetCondition(
                                crate::routing::compile_condition(&w.value)
                                    .unwrap_or_else(|_| never_holds()),
                            )
                        }),
                    })
                })
                .collect();
            let mut target_condition_uses = VariableUse::default();
            for target in &targets {
                if let Some(when) = &target.when {
                    target_condition_uses.add(&when.0);
                }
            }
            condition_uses = condition_uses.union(target_condition_uses);
            let Some(primary) = targets.first() else {
                continue; // unreachable on a validated config
            };
            let via_upstream_filter =
                targets.len() > 1 || targets.iter().any(|t| t.provider.kind.is_translated());
            if targets.iter().any(|t| t.provider.is_available()) {
                available_models.push(alias.clone());
                listed.push(model_entry(&alias, &primary.provider.name));
            }
            let route = Arc::new(ModelRoute {
                alias: alias.clone(),
                provider: primary.provider.clone(),
                upstream_model: primary.upstream_model.clone(),
                via_upstream_filter,
                attempts: section.attempts(),
                per_try_timeout_secs: section
                    .retry
                    .as_ref()
                    .and_then(|r| r.per_try_timeout_secs.as_ref())
                    .map(|t| t.value),
                target_condition_uses,
                targets,
            });
            for (index, target) in route.targets.iter().enumerate() {
                targets_by_id.insert(target.id.clone(), (route.clone(), index));
            }
            models.insert(alias, route);
        }
        available_models.sort_unstable();
        let models_list_body = list_body(&listed);
        Snapshot {
            providers,
            models,
            targets_by_id,
            target_condition_uses: condition_uses,
            admin: config
                .admin_api
                .as_ref()
                .map(|a| Arc::new(crate::admin::AdminApiPolicy::compile(a))),
            max_request_body_bytes: config.max_request_body_bytes(),
            available_models,
            models_list_body,
            auth: config
                .auth
                .as_ref()
                .map(|section| Arc::new(AuthPolicy::compile(section).with_json_rpc_paths_of(config))),
            governance: config.governance.as_ref().and_then(|section| {
                GovernancePolicy::compile(section)
                    .map(Arc::new)
                    // Unreachable on a validated config: validation compiles the same parts.
                    .map_err(|e| tracing::error!(error = %e, "governance section not compiled"))
                    .ok()
            }),
            routing: crate::routing::RoutingRules::compile(&config.routing),
            mcp_direct: config.mcp_direct.as_ref().map(|section| {
                Arc::new(crate::mcp::direct::DirectMcpPolicy::compile(section, env))
            }),
            a2a: config.a2a.as_ref().map(|section| {
                Arc::new(crate::a2a::A2aPolicy::compile(section, config, env))
            }),
            guards: config.guards.as_ref().map_or_else(GuardPolicy::default, |section| {
                // Unreachable on a validated config; refuse guarded traffic rather than let
                // it through unscanned.
                GuardPolicy::compile(section, env).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "guards section not compiled; LLM requests will be refused");
                    GuardPolicy::refusing(e.to_string())
                })
            }),
        }
    }

    /// The `GET /v1/models` body for a caller limited to `allowed` model names.
    pub fn models_list_body_for(&self, allowed: &[String]) -> Bytes {
        let listed: Vec<serde_json::Value> = self
            .available_models
            .iter()
            .filter(|m| allowed.contains(m))
            .filter_map(|m| self.models.get(m))
            .map(|route| model_entry(&route.alias, &route.provider.name))
            .collect();
        list_body(&listed)
    }

    /// What the request's conditions (routing rules, guards' `when`) read: the adapter keeps
    /// the headers and the caller only when some condition needs them.
    pub fn condition_uses(&self) -> crate::routing::VariableUse {
        self.routing
            .uses()
            .union(self.guards.condition_uses())
            .union(self.target_condition_uses)
    }

    /// Models served through Gantry's upstream filter (several targets, or a translated
    /// provider kind), by name.
    pub fn upstream_filter_models(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .models
            .values()
            .filter(|m| m.via_upstream_filter)
            .map(|m| m.alias.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// The alias and target an upstream filter's endpoint metadata names.
    pub fn target(&self, id: &str) -> Option<(&Arc<ModelRoute>, &Target)> {
        let (route, index) = self.targets_by_id.get(id)?;
        Some((route, route.targets.get(*index)?))
    }

    pub fn model(&self, alias: &str) -> Option<&Arc<ModelRoute>> {
        self.models.get(alias)
    }

    /// Providers whose key variable is unset, for a startup warning.
    pub fn unavailable_providers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.providers.iter().filter_map(|p| match &p.credential {
            Credential::Missing { env } => Some((p.name.as_str(), env.as_str())),
            _ => None,
        })
    }
}

/// A condition that is always false.
fn never_holds() -> Program {
    Program::compile("false").expect("'false' compiles")
}

fn model_entry(id: &str, owner: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": owner })
}

fn list_body(listed: &[serde_json::Value]) -> Bytes {
    serde_json::to_vec(&serde_json::json!({"object": "list", "data": listed}))
        .map(Bytes::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_openai_gets_a_deployment_path_and_an_api_key_header() {
        let config = ConfigFile::parse(
            "listen: 127.0.0.1:10000
providers:
  - { name: az, kind: azure_openai, endpoint: 'https://res.openai.azure.com', api_key_env: AZ_KEY }
  - { name: az2, kind: azure_openai, endpoint: 'https://res2.openai.azure.com', api_version: 2025-01-01-preview }
models:
  - { name: gpt, provider: az, model: 'my deploy/1' }
  - { name: gpt2, provider: az2, model: d2 }
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let snapshot =
            Snapshot::compile(&config, &|name| (name == "AZ_KEY").then(|| " k3y ".into()));
        let route = snapshot.model("gpt").unwrap();
        match &route.provider.credential {
            Credential::Header { name, value } => {
                assert_eq!((*name, value.expose()), ("api-key", "k3y"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route
                .provider
                .upstream_path(crate::LlmApi::ChatCompletions, &route.upstream_model),
            Some(
                "/openai/deployments/my%20deploy%2F1/chat/completions?api-version=2024-10-21"
                    .into()
            )
        );
        let route = snapshot.model("gpt2").unwrap();
        assert_eq!(
            route
                .provider
                .upstream_path(crate::LlmApi::Embeddings, &route.upstream_model),
            Some("/openai/deployments/d2/embeddings?api-version=2025-01-01-preview".into())
        );
        assert!(matches!(route.provider.credential, Credential::NotNeeded));

        let err = ConfigFile::parse(
            "listen: 127.0.0.1:10000
providers:
  - { name: o, kind: openai, endpoint: 'https://api.openai.com', api_version: 2024-10-21 }
  - { name: az, kind: azure_openai, endpoint: 'https://res.openai.azure.com', api_version: 'v 1' }
models: []
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("providers[0].api_version (line 3): applies only to kind: azure_openai"),
            "{err}"
        );
        assert!(
            err.contains("providers[1].api_version (line 4): 'v 1' is not an api-version"),
            "{err}"
        );
    }

    const CONFIG: &str = "\
listen: 127.0.0.1:10000
providers:
  - { name: mock, kind: openai, endpoint: 'http://127.0.0.1:18080' }
  - { name: openai, kind: openai, endpoint: 'https://api.openai.com', api_key_env: TEST_OPENAI_KEY }
models:
  - { name: fast, provider: mock, model: mock-small }
  - { name: smart, provider: openai, model: gpt-4o }
";

    #[test]
    fn missing_key_makes_provider_unavailable_and_hides_its_models() {
        let config = ConfigFile::parse(CONFIG).unwrap();
        let snapshot = Snapshot::compile(&config, &|_| None);
        let smart = snapshot.model("smart").unwrap();
        assert!(!smart.provider.is_available());
        let list: serde_json::Value = serde_json::from_slice(&snapshot.models_list_body).unwrap();
        assert_eq!(list["data"].as_array().unwrap().len(), 1);
        assert_eq!(list["data"][0]["id"], "fast");
        assert_eq!(
            snapshot.unavailable_providers().collect::<Vec<_>>(),
            vec![("openai", "TEST_OPENAI_KEY")]
        );
    }

    #[test]
    fn key_is_injected_as_bearer_and_redacted_in_debug() {
        let config = ConfigFile::parse(CONFIG).unwrap();
        let snapshot = Snapshot::compile(&config, &|name| {
            (name == "TEST_OPENAI_KEY").then(|| "sk-secret".to_string())
        });
        let smart = snapshot.model("smart").unwrap();
        match &smart.provider.credential {
            Credential::Header { name, value } => {
                assert_eq!(
                    (*name, value.expose()),
                    ("authorization", "Bearer sk-secret")
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        let debug = format!("{snapshot:?}");
        assert!(!debug.contains("sk-secret"), "{debug}");
        let list: serde_json::Value = serde_json::from_slice(&snapshot.models_list_body).unwrap();
        assert_eq!(list["data"].as_array().unwrap().len(), 2);
    }
}
