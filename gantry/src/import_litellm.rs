//! `gantry import litellm`: a LiteLLM proxy `config.yaml` turned into a Gantry config.
//!
//! [`convert`] is a pure function: the LiteLLM YAML text in, the Gantry YAML and the list of
//! every setting that could not be carried over out. The generated config is checked with the
//! same validation `gantry check` runs before it is returned, so it always loads.
//!
//! How LiteLLM's settings map:
//!
//! - Entries of `model_list` that share a `model_name` are one load-balanced group: one Gantry
//!   model, with one target per deployment (a single deployment is a plain `provider`/`model`).
//!   `weight` becomes the target weight (floats are scaled to integers keeping their ratios,
//!   1..128), `order` becomes the priority (the distinct orders of a group ranked: the lowest
//!   order is priority 0, the next one 1, ... at most 9).
//! - The provider prefix of `litellm_params.model` picks the kind (`openai` and the
//!   OpenAI-compatible services, `azure`, `anthropic`, `gemini`, `bedrock`) and, without an
//!   `api_base`, the service's public endpoint. Gantry appends the client's `/v1/...` path to
//!   an endpoint, so a trailing `/v1` is taken off `api_base` (and reported when the base does
//!   not end in `/v1`, where LiteLLM would have sent requests elsewhere).
//! - `api_key: os.environ/NAME` becomes `api_key_env: NAME` (the AWS ones `aws_*_env`). A
//!   literal secret is never copied: the provider reads a suggested variable instead and the
//!   report says which. Without a key, a service at its public endpoint (and Azure) reads
//!   LiteLLM's conventional variable (e.g. `OPENAI_API_KEY`, `AZURE_API_KEY`); a custom
//!   `api_base` gets no key (Gantry never sends the OpenAI key to another host unasked).
//! - One Gantry provider per distinct kind, endpoint, credentials, api-version / region and
//!   timeout.
//! - `fallbacks` (router or litellm settings) append the fallback groups' targets at the next
//!   priorities, in list order (a fallback group's own fallbacks are not followed).
//!   `num_retries` becomes `retry.attempts` (num_retries + 1, plus
//!   one per fallback group so that the fallbacks are still reached; at most 5) on models with
//!   several targets.
//! - `router_settings.timeout` / `litellm_settings.request_timeout` become every provider's
//!   `timeout_secs`. A deployment's own `timeout` becomes its provider's `timeout_secs` (which
//!   bounds a single-target model) and, on a model with several targets, also the model's
//!   `retry.per_try_timeout_secs` (the largest of its targets'), so that a slow target fails
//!   over as it does in LiteLLM.
//! - `model_group_alias` / `model_alias_map` add a model named after the alias with the
//!   targets (and retry) of its group.
//!
//! Everything else is reported: with its path in the LiteLLM file and why.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use gantry_policy::config::{ProviderKind, MAX_ATTEMPTS, MAX_TARGETS};
use gantry_policy::endpoint::ProviderEndpoint;
use gantry_policy::ConfigFile;
use serde_json::{json, Map, Value};

/// The highest target priority Gantry accepts.
const MAX_PRIORITY: u32 = 9;
/// The highest target weight Gantry accepts.
const MAX_WEIGHT: u32 = 128;
/// The region assumed for a Bedrock deployment whose region is not in the file.
const DEFAULT_AWS_REGION: &str = "us-east-1";

/// What the generated config's head says.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// `listen` of the generated config.
    pub listen: SocketAddr,
    /// `admin` of the generated config.
    pub admin: SocketAddr,
    /// `ext_proc.listen` of the generated config.
    pub ext_proc_listen: SocketAddr,
    /// The LiteLLM file's name, for the header comment.
    pub source: Option<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 10000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            ext_proc_listen: SocketAddr::from(([127, 0, 0, 1], 10001)),
            source: None,
        }
    }
}

/// The converted config.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The Gantry config: the report as `#` comments, then the YAML.
    pub yaml: String,
    /// Every setting of the LiteLLM file that was not carried over (or only partly).
    pub unconverted: Vec<Unconverted>,
    /// The environment variables the generated config reads (sorted).
    pub env_vars: Vec<String>,
    /// How many providers and models the generated config has.
    pub providers: usize,
    pub models: usize,
}

/// One setting that was not carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconverted {
    /// Where it is in the LiteLLM file, e.g. `router_settings.routing_strategy` or
    /// `model_list[3].litellm_params.rpm`.
    pub path: String,
    /// What happened to it and why.
    pub reason: String,
}

impl fmt::Display for Unconverted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Why a LiteLLM file could not be converted at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("not a LiteLLM config: the top level must be a mapping with a model_list")]
    NotAMapping,
    #[error("model_list is missing: a LiteLLM config lists its deployments under model_list")]
    NoModelList,
    #[error("model_list: must be a list of deployments (found {found})")]
    ModelListNotAList { found: &'static str },
    #[error(
        "model_list[{index}]: must be a mapping with model_name and litellm_params (found {found})"
    )]
    EntryNotAMapping { index: usize, found: &'static str },
    #[error("model_list[{index}]: has no model_name")]
    NoModelName { index: usize },
    #[error(
        "model_list[{index}] ({model_name}): has no litellm_params.model (such as openai/gpt-4o)"
    )]
    NoLitellmModel { index: usize, model_name: String },
    #[error("no model could be carried over: {0}")]
    NothingConverted(String),
    #[error("the generated config does not pass `gantry check`: {0}")]
    InvalidOutput(String),
}

/// Converts a LiteLLM proxy config (YAML text) into a Gantry config.
pub fn convert(text: &str, options: &ImportOptions) -> Result<Conversion, ImportError> {
    let root: Value = serde_saphyr::from_str(text).map_err(|e| {
        // The parser quotes the offending line; it may hold a secret, so keep only the
        // first line of its message (position and cause).
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        ImportError::Yaml(first.trim_start_matches("error: ").to_string())
    })?;
    let root = match root {
        Value::Object(map) => map,
        Value::Null => return Err(ImportError::NoModelList),
        _ => return Err(ImportError::NotAMapping),
    };
    let entries = match root.get("model_list") {
        None | Some(Value::Null) => return Err(ImportError::NoModelList),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(ImportError::ModelListNotAList {
                found: type_name(other),
            })
        }
    };
    // Structural problems first, so that a broken file gives an error and no half report.
    for (index, entry) in entries.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(ImportError::EntryNotAMapping {
                index,
                found: type_name(entry),
            });
        };
        let Some(model_name) = entry.get("model_name").and_then(scalar_string) else {
            return Err(ImportError::NoModelName { index });
        };
        if entry
            .get("litellm_params")
            .and_then(|p| p.get("model"))
            .and_then(Value::as_str)
            .is_none_or(|m| m.trim().is_empty())
        {
            return Err(ImportError::NoLitellmModel { index, model_name });
        }
    }

    let mut importer = Importer::new(&root);
    let router = settings_section(&root, "router_settings", &mut importer.report);
    let litellm = settings_section(&root, "litellm_settings", &mut importer.report);
    let global_timeout = importer.global_timeout(router, litellm);

    let mut groups: Vec<Group> = Vec::new();
    let mut group_index: HashMap<String, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        let deployment = importer.deployment(index, entry, global_timeout);
        let name = entry
            .get("model_name")
            .and_then(scalar_string)
            .unwrap_or_default();
        if name.contains('*') {
            continue; // reported by `deployment`
        }
        let g = *group_index.entry(name.clone()).or_insert_with(|| {
            groups.push(Group {
                name: name.clone(),
                deployments: Vec::new(),
                targets: Vec::new(),
            });
            groups.len() - 1
        });
        if let Some(deployment) = deployment {
            groups[g].deployments.push(deployment);
        }
    }
    for group in &mut groups {
        group.targets = importer.group_targets(&group.name, &group.deployments);
    }

    let mut plan = Plan::default();
    if let Some(router) = router {
        importer.router_settings(router, &mut plan);
    }
    if let Some(litellm) = litellm {
        importer.litellm_settings(litellm, &mut plan);
    }
    let models = importer.models(&groups, &group_index, &plan);

    for (key, value) in &root {
        match key.as_str() {
            "model_list" | "router_settings" | "litellm_settings" => {}
            "general_settings" => importer.general_settings(value),
            "environment_variables" => importer.environment_variables(value),
            "include" => importer.unconverted(
                key,
                "not carried over: the included files are not read; convert each one and merge the results",
            ),
            "credential_list" => importer.unconverted(
                key,
                "not carried over: Gantry reads each provider's credentials from environment variables (api_key_env)",
            ),
            "guardrails" => importer.unconverted(
                key,
                "not carried over: Gantry's request and response guards are configured under guards",
            ),
            "mcp_servers" => importer.unconverted(
                key,
                "not carried over: Gantry's MCP bridge is configured under mcp",
            ),
            _ => importer.unconverted(key, "not carried over: Gantry has no equivalent"),
        }
    }
    if models.is_empty() {
        let report: Vec<String> = importer.report.iter().map(ToString::to_string).collect();
        return Err(ImportError::NothingConverted(report.join("; ")));
    }

    importer.finish(models, options)
}

/// One `model_name` of the LiteLLM file.
struct Group {
    name: String,
    deployments: Vec<Deployment>,
    /// Its own targets (before fallbacks).
    targets: Vec<Target>,
}

/// One converted `model_list` entry.
struct Deployment {
    index: usize,
    provider: usize,
    model: String,
    weight: Option<f64>,
    order: Option<i64>,
    timeout_secs: Option<u64>,
}

#[derive(Clone)]
struct Target {
    provider: usize,
    model: String,
    weight: u32,
    priority: u32,
    timeout_secs: Option<u64>,
}

/// A Gantry model to write.
struct ModelOut {
    name: String,
    targets: Vec<Target>,
    attempts: Option<u32>,
    per_try_timeout_secs: Option<u64>,
}

/// What the router and litellm settings ask for, gathered before the models are built.
#[derive(Default)]
struct Plan {
    fallbacks: Vec<FallbackRule>,
    num_retries: Option<(String, u32)>,
    /// (path, alias, target model).
    aliases: Vec<(String, String, String)>,
}

/// One `fallbacks` entry: a model group and the groups it falls back to, in order.
struct FallbackRule {
    group: String,
    /// Where the rule is in the file.
    path: String,
    /// Each fallback model name, with its path.
    fallbacks: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
struct ProviderSpec {
    kind: ProviderKind,
    endpoint: String,
    api_key_env: Option<String>,
    api_version: Option<String>,
    region: Option<String>,
    aws_access_key_id_env: Option<String>,
    aws_secret_access_key_env: Option<String>,
    aws_session_token_env: Option<String>,
    timeout_secs: Option<u64>,
}

/// How a provider prefix of LiteLLM reaches Gantry.
#[derive(Debug, Clone, Copy)]
enum Family {
    /// An OpenAI-compatible service.
    OpenAi {
        /// The service's public base URL as LiteLLM writes it (with its `/v1`).
        default_base: Option<&'static str>,
        /// LiteLLM's conventional key variable for the public service.
        key_env: Option<&'static str>,
        /// A server that serves the OpenAI API under `/v1` whatever base LiteLLM used.
        serves_v1: bool,
        /// The provider's name in Gantry.
        label: &'static str,
    },
    Azure,
    Anthropic,
    Gemini,
    Bedrock,
}

fn family(prefix: &str) -> Option<Family> {
    let openai = |default_base, key_env, label| Family::OpenAi {
        default_base,
        key_env,
        serves_v1: false,
        label,
    };
    let local = |default_base, label| Family::OpenAi {
        default_base: Some(default_base),
        key_env: None,
        serves_v1: true,
        label,
    };
    Some(match prefix {
        "openai" | "text-completion-openai" => openai(
            Some("https://api.openai.com/v1"),
            Some("OPENAI_API_KEY"),
            "openai",
        ),
        "custom_openai" | "openai_like" => openai(None, None, "openai"),
        "hosted_vllm" => local("http://localhost:8000/v1", "hosted-vllm"),
        "ollama" | "ollama_chat" => local("http://localhost:11434", "ollama"),
        "lm_studio" => local("http://localhost:1234/v1", "lm-studio"),
        "groq" => openai(
            Some("https://api.groq.com/openai/v1"),
            Some("GROQ_API_KEY"),
            "groq",
        ),
        "mistral" => openai(
            Some("https://api.mistral.ai/v1"),
            Some("MISTRAL_API_KEY"),
            "mistral",
        ),
        "deepseek" => openai(
            Some("https://api.deepseek.com/v1"),
            Some("DEEPSEEK_API_KEY"),
            "deepseek",
        ),
        "openrouter" => openai(
            Some("https://openrouter.ai/api/v1"),
            Some("OPENROUTER_API_KEY"),
            "openrouter",
        ),
        "together_ai" => openai(
            Some("https://api.together.xyz/v1"),
            Some("TOGETHERAI_API_KEY"),
            "together-ai",
        ),
        "fireworks_ai" => openai(
            Some("https://api.fireworks.ai/inference/v1"),
            Some("FIREWORKS_AI_API_KEY"),
            "fireworks-ai",
        ),
        "xai" => openai(Some("https://api.x.ai/v1"), Some("XAI_API_KEY"), "xai"),
        "perplexity" => openai(
            Some("https://api.perplexity.ai"),
            Some("PERPLEXITYAI_API_KEY"),
            "perplexity",
        ),
        "deepinfra" => openai(
            Some("https://api.deepinfra.com/v1/openai"),
            Some("DEEPINFRA_API_KEY"),
            "deepinfra",
        ),
        "cerebras" => openai(
            Some("https://api.cerebras.ai/v1"),
            Some("CEREBRAS_API_KEY"),
            "cerebras",
        ),
        "nvidia_nim" => openai(
            Some("https://integrate.api.nvidia.com/v1"),
            Some("NVIDIA_NIM_API_KEY"),
            "nvidia-nim",
        ),
        "azure" => Family::Azure,
        "anthropic" => Family::Anthropic,
        "gemini" => Family::Gemini,
        "bedrock" => Family::Bedrock,
        _ => return None,
    })
}

/// A credential as LiteLLM writes it.
enum Credential {
    None,
    Env(String),
    Literal(String),
}

struct Importer {
    report: Vec<Unconverted>,
    providers: Vec<(ProviderSpec, String)>,
    /// Literal secrets (in memory only) and the variable suggested for each.
    suggested_env: Vec<(String, String)>,
    /// Variables named by `os.environ/...` anywhere in the file, and those suggested.
    used_env: HashSet<String>,
}

impl Importer {
    fn new(root: &Map<String, Value>) -> Importer {
        let mut referenced_env = HashSet::new();
        collect_env_refs(&Value::Object(root.clone()), &mut referenced_env);
        Importer {
            report: Vec::new(),
            providers: Vec::new(),
            // Variables the file names itself are never suggested for a literal secret.
            used_env: referenced_env,
            suggested_env: Vec::new(),
        }
    }

    fn unconverted(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.report.push(Unconverted {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// `router_settings.timeout`, or `litellm_settings.request_timeout`.
    fn global_timeout(
        &mut self,
        router: Option<&Map<String, Value>>,
        litellm: Option<&Map<String, Value>>,
    ) -> Option<u64> {
        let router_timeout = router.and_then(|r| r.get("timeout"));
        let litellm_timeout = litellm.and_then(|l| l.get("request_timeout"));
        if router_timeout.is_some() && litellm_timeout.is_some() {
            self.unconverted(
                "litellm_settings.request_timeout",
                "not carried over: router_settings.timeout is used for every provider's timeout_secs",
            );
        }
        let (path, value) = match (router_timeout, litellm_timeout) {
            (Some(v), _) => ("router_settings.timeout", v),
            (None, Some(v)) => ("litellm_settings.request_timeout", v),
            (None, None) => return None,
        };
        self.seconds(path, value)
    }

    /// A timeout in whole seconds (rounded up), reporting what is not one.
    fn seconds(&mut self, path: &str, value: &Value) -> Option<u64> {
        let secs = value
            .as_f64()
            .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
        match secs {
            Some(secs) if secs > 0.0 && secs.is_finite() => {
                let whole = secs.ceil() as u64;
                if (whole as f64 - secs).abs() > 1e-9 {
                    self.unconverted(
                        path,
                        format!("{secs} s is rounded up to {whole} s: Gantry's timeouts are whole seconds"),
                    );
                }
                Some(whole)
            }
            _ => {
                self.unconverted(path, "not carried over: not a positive number of seconds");
                None
            }
        }
    }

    /// One `model_list` entry (already known to have `model_name` and `litellm_params.model`).
    fn deployment(
        &mut self,
        index: usize,
        entry: &Map<String, Value>,
        global_timeout: Option<u64>,
    ) -> Option<Deployment> {
        let at = format!("model_list[{index}]");
        let group = entry
            .get("model_name")
            .and_then(scalar_string)
            .unwrap_or_default();
        for (key, value) in entry {
            match key.as_str() {
                "model_name" | "litellm_params" => {}
                "model_info" => {
                    let keys = value
                        .as_object()
                        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    self.unconverted(
                        format!("{at}.model_info"),
                        format!("not carried over ({keys}): Gantry keeps no model metadata; prices go in governance.pricing"),
                    );
                }
                _ => self.unconverted(
                    format!("{at}.{key}"),
                    "not carried over: Gantry has no equivalent",
                ),
            }
        }
        let params = entry.get("litellm_params").and_then(Value::as_object)?;
        let p = format!("{at}.litellm_params");
        let full_model = params
            .get("model")
            .and_then(Value::as_str)?
            .trim()
            .to_string();

        if group.contains('*') {
            self.unconverted(
                format!("{at}.model_name"),
                format!("wildcard model name '{group}' is not carried over: Gantry serves the model names listed in models; list each one"),
            );
            return None;
        }
        if full_model.contains('*') {
            self.unconverted(
                format!("{p}.model"),
                format!("wildcard '{full_model}' of model {group} is not carried over: Gantry serves the model names listed in models; list each one"),
            );
            return None;
        }

        // The provider prefix: `custom_llm_provider`, the part before the first `/`, or none.
        let custom = params
            .get("custom_llm_provider")
            .and_then(Value::as_str)
            .map(str::trim);
        let (prefix, mut model) = match custom {
            Some(custom) => {
                let bare = full_model
                    .strip_prefix(&format!("{custom}/"))
                    .unwrap_or(&full_model)
                    .to_string();
                (custom.to_string(), bare)
            }
            None => match full_model.split_once('/') {
                Some((prefix, rest)) => (prefix.to_string(), rest.to_string()),
                None => {
                    let guessed = if full_model.starts_with("claude") {
                        "anthropic"
                    } else if full_model.starts_with("gemini") {
                        "gemini"
                    } else {
                        "openai"
                    };
                    self.unconverted(
                        format!("{p}.model"),
                        format!("'{full_model}' of model {group} has no provider prefix: converted as {guessed}/{full_model}"),
                    );
                    (guessed.to_string(), full_model.clone())
                }
            },
        };
        let Some(family) = family(&prefix) else {
            self.unconverted(
                format!("{p}.model"),
                format!("{full_model} (model {group}) is skipped: Gantry has no '{prefix}' provider kind (it reaches openai and OpenAI-compatible servers, azure_openai, anthropic, gemini and bedrock)"),
            );
            return None;
        };
        if model.trim().is_empty() {
            self.unconverted(
                format!("{p}.model"),
                format!("'{full_model}' of model {group} names no model: skipped"),
            );
            return None;
        }

        let mut handled: HashSet<&str> = ["model", "custom_llm_provider"].into();
        let api_base = params
            .get("api_base")
            .or_else(|| params.get("base_url"))
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string());
        let base_key = if params.contains_key("api_base") {
            "api_base"
        } else {
            "base_url"
        };
        handled.insert("api_base");
        handled.insert("base_url");
        if let Some(env) = api_base.as_deref().and_then(env_ref) {
            self.unconverted(
                format!("{p}.{base_key}"),
                format!("model {group} is skipped: its api_base comes from environment variable {env}; Gantry needs the URL in the config (write it in and convert again)"),
            );
            return None;
        }

        let timeout_secs = match params.get("timeout") {
            Some(v) => self.seconds(&format!("{p}.timeout"), v),
            None => None,
        };
        handled.insert("timeout");
        let mut spec = ProviderSpec {
            kind: ProviderKind::Openai,
            endpoint: String::new(),
            api_key_env: None,
            api_version: None,
            region: None,
            aws_access_key_id_env: None,
            aws_secret_access_key_env: None,
            aws_session_token_env: None,
            timeout_secs: timeout_secs.or(global_timeout),
        };
        let label: String;
        let default_endpoint: Option<String>;
        match family {
            Family::OpenAi {
                default_base,
                key_env,
                serves_v1,
                label: family_label,
            } => {
                let (base, from_user) = match (&api_base, default_base) {
                    (Some(base), _) => (base.clone(), true),
                    (None, Some(base)) => (base.to_string(), false),
                    (None, None) => {
                        self.unconverted(
                            format!("{p}.model"),
                            format!("model {group} is skipped: {prefix}/ needs an api_base"),
                        );
                        return None;
                    }
                };
                let trimmed = base.trim_end_matches('/');
                let endpoint = match trimmed.strip_suffix("/v1") {
                    Some(stripped) => stripped.to_string(),
                    None => {
                        if !serves_v1 {
                            self.unconverted(
                                format!("{p}.{}", if from_user { base_key } else { "model" }),
                                format!("the base URL {trimmed} of model {group} does not end in /v1: Gantry appends the client's path, so requests go to {trimmed}/v1/chat/completions (LiteLLM sent {trimmed}/chat/completions); check the server answers there"),
                            );
                        }
                        trimmed.to_string()
                    }
                };
                spec.endpoint = endpoint;
                default_endpoint = default_base.map(|b| {
                    let b = b.trim_end_matches('/');
                    b.strip_suffix("/v1").unwrap_or(b).to_string()
                });
                label = family_label.to_string();
                let is_default = default_endpoint.as_deref() == Some(spec.endpoint.as_str());
                spec.api_key_env = self.api_key(
                    params,
                    &p,
                    &group,
                    if is_default { key_env } else { None },
                    key_env.map_or_else(|| env_stem(&label), String::from),
                );
            }
            Family::Azure => {
                spec.kind = ProviderKind::AzureOpenai;
                let Some(base) = &api_base else {
                    self.unconverted(
                        format!("{p}.model"),
                        format!("model {group} is skipped: azure/ needs an api_base (https://<resource>.openai.azure.com)"),
                    );
                    return None;
                };
                let base = base.trim_end_matches('/');
                spec.endpoint = base.strip_suffix("/openai").unwrap_or(base).to_string();
                default_endpoint = None;
                label = format!("azure-{}", host_label(&spec.endpoint));
                // LiteLLM reads AZURE_API_KEY when a deployment names no key.
                spec.api_key_env = self.api_key(
                    params,
                    &p,
                    &group,
                    Some("AZURE_API_KEY"),
                    "AZURE_API_KEY".to_string(),
                );
                handled.insert("api_version");
                match params.get("api_version") {
                    None => {}
                    Some(Value::String(v)) if env_ref(v).is_some() => self.unconverted(
                        format!("{p}.api_version"),
                        format!("comes from environment variable {}: Gantry needs the api-version in the config; its default {} is used", env_ref(v).unwrap_or_default(), gantry_policy::config::AZURE_DEFAULT_API_VERSION),
                    ),
                    Some(v) => match scalar_string(v) {
                        Some(v) => spec.api_version = Some(v),
                        None => self.unconverted(
                            format!("{p}.api_version"),
                            "not carried over: not a string",
                        ),
                    },
                }
                for key in [
                    "azure_ad_token",
                    "tenant_id",
                    "client_id",
                    "client_secret",
                    "azure_ad_token_provider",
                ] {
                    if params.contains_key(key) {
                        handled.insert(key);
                        self.unconverted(
                            format!("{p}.{key}"),
                            "not carried over: Gantry authenticates to Azure OpenAI with an api-key (api_key_env), not Entra ID",
                        );
                    }
                }
            }
            Family::Anthropic | Family::Gemini => {
                let (kind, public, key_env, strip): (_, _, _, &[&str]) =
                    if matches!(family, Family::Anthropic) {
                        (
                            ProviderKind::Anthropic,
                            "https://api.anthropic.com",
                            "ANTHROPIC_API_KEY",
                            &["/v1/messages", "/v1"],
                        )
                    } else {
                        (
                            ProviderKind::Gemini,
                            "https://generativelanguage.googleapis.com",
                            "GEMINI_API_KEY",
                            &["/v1beta", "/v1"],
                        )
                    };
                spec.kind = kind;
                let mut endpoint = api_base
                    .clone()
                    .unwrap_or_else(|| public.to_string())
                    .trim_end_matches('/')
                    .to_string();
                for suffix in strip {
                    if let Some(stripped) = endpoint.strip_suffix(suffix) {
                        endpoint = stripped.to_string();
                        break;
                    }
                }
                spec.endpoint = endpoint;
                default_endpoint = Some(public.to_string());
                label = kind.as_str().to_string();
                let is_default = spec.endpoint == public;
                spec.api_key_env = self.api_key(
                    params,
                    &p,
                    &group,
                    is_default.then_some(key_env),
                    key_env.to_string(),
                );
            }
            Family::Bedrock => {
                spec.kind = ProviderKind::Bedrock;
                if let Some(rest) = model.strip_prefix("converse/") {
                    model = rest.to_string();
                } else if let Some(rest) = model.strip_prefix("invoke/") {
                    self.unconverted(
                        format!("{p}.model"),
                        format!("bedrock/invoke/ of model {group} is not carried over: Gantry calls Bedrock's Converse API (model {rest})"),
                    );
                    model = rest.to_string();
                }
                handled.insert("aws_region_name");
                let region = match params.get("aws_region_name") {
                    Some(Value::String(r)) if env_ref(r).is_none() && is_aws_region(r) => {
                        r.trim().to_string()
                    }
                    Some(_) => {
                        self.unconverted(
                            format!("{p}.aws_region_name"),
                            format!("not carried over: Gantry needs a literal AWS region such as us-east-1 in the config; {DEFAULT_AWS_REGION} is assumed"),
                        );
                        DEFAULT_AWS_REGION.to_string()
                    }
                    None => {
                        self.unconverted(
                            format!("{p}.model"),
                            format!("model {group} has no aws_region_name (LiteLLM falls back to the environment); Gantry needs the region in the config: {DEFAULT_AWS_REGION} is assumed"),
                        );
                        DEFAULT_AWS_REGION.to_string()
                    }
                };
                let custom_endpoint = params
                    .get("aws_bedrock_runtime_endpoint")
                    .and_then(Value::as_str)
                    .or(api_base.as_deref())
                    .filter(|e| env_ref(e).is_none());
                handled.insert("aws_bedrock_runtime_endpoint");
                let public = format!("https://bedrock-runtime.{region}.amazonaws.com");
                spec.endpoint = custom_endpoint
                    .map(|e| e.trim().trim_end_matches('/').to_string())
                    .unwrap_or_else(|| public.clone());
                default_endpoint = Some(public);
                label = format!("bedrock-{region}");
                spec.region = Some(region);
                for (key, default_env) in [
                    ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
                    ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                    ("aws_session_token", "AWS_SESSION_TOKEN"),
                ] {
                    handled.insert(key);
                    let env = match self.credential(params.get(key), &format!("{p}.{key}")) {
                        Credential::None => None,
                        Credential::Env(env) => Some(env),
                        Credential::Literal(secret) => {
                            let env = self.suggest_env(&secret, default_env);
                            self.unconverted(
                                format!("{p}.{key}"),
                                format!("litellm_params.{key} of model {group} is a literal secret and is not copied; set it in an environment variable: the generated provider reads {key}_env: {env}"),
                            );
                            Some(env)
                        }
                    };
                    match key {
                        "aws_access_key_id" => spec.aws_access_key_id_env = env,
                        "aws_secret_access_key" => spec.aws_secret_access_key_env = env,
                        _ => spec.aws_session_token_env = env,
                    }
                }
                for key in [
                    "aws_profile_name",
                    "aws_role_name",
                    "aws_session_name",
                    "aws_web_identity_token",
                    "aws_sts_endpoint",
                    "aws_external_id",
                ] {
                    if params.contains_key(key) {
                        handled.insert(key);
                        self.unconverted(
                            format!("{p}.{key}"),
                            "not carried over: Gantry signs Bedrock requests with credentials from environment variables (aws_access_key_id_env, aws_secret_access_key_env, aws_session_token_env)",
                        );
                    }
                }
                if params.contains_key("api_key") {
                    handled.insert("api_key");
                    self.unconverted(
                        format!("{p}.api_key"),
                        "not carried over: Gantry signs Bedrock requests with AWS credentials (SigV4), not an API key",
                    );
                }
            }
        }
        handled.insert("api_key");
        if let Err(e) = ProviderEndpoint::parse(&spec.endpoint) {
            self.unconverted(
                format!("{p}.{base_key}"),
                format!("model {group} is skipped: {e}"),
            );
            return None;
        }
        let is_default = default_endpoint.as_deref() == Some(spec.endpoint.as_str());
        let base_name = if is_default || matches!(family, Family::Azure) {
            label
        } else {
            format!("{label}-{}", host_label(&spec.endpoint))
        };
        let provider = self.provider(spec, &base_name);

        // The rest of litellm_params.
        let weight = match params.get("weight") {
            None => None,
            Some(v) => match v.as_f64() {
                Some(w) => Some(w),
                None => {
                    self.unconverted(format!("{p}.weight"), "not carried over: not a number");
                    None
                }
            },
        };
        let order = match params.get("order") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(o) => Some(o),
                None => {
                    self.unconverted(format!("{p}.order"), "not carried over: not an integer");
                    None
                }
            },
        };
        handled.insert("weight");
        handled.insert("order");
        for (key, value) in params {
            if handled.contains(key.as_str()) {
                continue;
            }
            let path = format!("{p}.{key}");
            match key.as_str() {
                "rpm" | "tpm" => self.unconverted(
                    path,
                    "not carried over: Gantry's rate limits are governance.rate_limits (by caller and model, in a governance store), not per deployment",
                ),
                "stream_timeout" => self.unconverted(
                    path,
                    "not carried over: Gantry has one timeout for streamed and other replies (timeout_secs, retry.per_try_timeout_secs)",
                ),
                "max_retries" | "num_retries" => self.unconverted(
                    path,
                    "not carried over: Gantry retries per model (retry.attempts), on the next target",
                ),
                "input_cost_per_token" | "output_cost_per_token" => {
                    let per_million = value
                        .as_f64()
                        .map(|c| format!(" ({} USD per million tokens)", trim_float(c * 1e6)))
                        .unwrap_or_default();
                    self.unconverted(
                        path,
                        format!("not carried over{per_million}: Gantry's prices are governance.pricing.models (per million tokens), which needs a governance store; add one to meter spend"),
                    )
                }
                "api_version" | "aws_access_key_id" | "aws_secret_access_key"
                | "aws_session_token" | "aws_region_name" => self.unconverted(
                    path,
                    format!("not carried over: applies only to {} providers in Gantry", if key == "api_version" { "azure" } else { "bedrock" }),
                ),
                _ => self.unconverted(path, "not carried over: Gantry has no equivalent"),
            }
        }
        Some(Deployment {
            index,
            provider,
            model,
            weight,
            order,
            timeout_secs,
        })
    }

    /// The key variable of a provider: `os.environ/NAME`, a suggested variable for a literal
    /// (reported), or `default_env` when the deployment names no key.
    fn api_key(
        &mut self,
        params: &Map<String, Value>,
        p: &str,
        group: &str,
        default_env: Option<&str>,
        suggestion: String,
    ) -> Option<String> {
        match self.credential(params.get("api_key"), &format!("{p}.api_key")) {
            Credential::None => default_env.map(String::from),
            Credential::Env(env) => Some(env),
            Credential::Literal(secret) => {
                let env = self.suggest_env(&secret, &suggestion);
                self.unconverted(
                    format!("{p}.api_key"),
                    format!("litellm_params.api_key of model {group} is a literal secret and is not copied; set it in an environment variable: the generated provider reads api_key_env: {env}"),
                );
                Some(env)
            }
        }
    }

    fn credential(&mut self, value: Option<&Value>, path: &str) -> Credential {
        let Some(value) = value else {
            return Credential::None;
        };
        let text = match value {
            Value::Null => return Credential::None,
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        if text.is_empty() {
            return Credential::None;
        }
        match text.strip_prefix("os.environ/") {
            Some(name) if is_env_var_name(name) => Credential::Env(name.to_string()),
            Some(name) => {
                self.unconverted(
                    path,
                    format!("not carried over: '{name}' is not an environment variable name"),
                );
                Credential::None
            }
            None => Credential::Literal(text),
        }
    }

    /// The variable suggested for a literal secret: the same one for the same secret, a new
    /// one (`NAME`, `NAME_2`, ...) for each different secret, never one the file names itself.
    fn suggest_env(&mut self, secret: &str, stem: &str) -> String {
        if let Some((_, env)) = self.suggested_env.iter().find(|(s, _)| s == secret) {
            return env.clone();
        }
        let mut candidate = stem.to_string();
        let mut n = 2;
        while self.used_env.contains(&candidate) {
            candidate = format!("{stem}_{n}");
            n += 1;
        }
        self.used_env.insert(candidate.clone());
        self.suggested_env
            .push((secret.to_string(), candidate.clone()));
        candidate
    }

    /// The index of the provider for `spec`, added under a unique name if it is new.
    fn provider(&mut self, spec: ProviderSpec, base_name: &str) -> usize {
        if let Some(i) = self.providers.iter().position(|(s, _)| *s == spec) {
            return i;
        }
        let base = sanitize_name(base_name);
        let mut name = base.clone();
        let mut n = 2;
        while self.providers.iter().any(|(_, existing)| *existing == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.providers.push((spec, name));
        self.providers.len() - 1
    }

    /// A group's own targets: weights scaled, orders ranked into priorities.
    fn group_targets(&mut self, group: &str, deployments: &[Deployment]) -> Vec<Target> {
        let weights = self.scale_weights(group, deployments);
        let any_order = deployments.iter().any(|d| d.order.is_some());
        let mut orders: Vec<i64> = deployments.iter().map(|d| d.order.unwrap_or(1)).collect();
        orders.sort_unstable();
        orders.dedup();
        let mut targets: Vec<Target> = Vec::new();
        let mut seen: Vec<(usize, usize, String)> = Vec::new();
        for (d, weight) in deployments.iter().zip(weights) {
            let at = format!("model_list[{}].litellm_params", d.index);
            if any_order && d.order.is_none() {
                self.unconverted(
                    format!("{at}.order"),
                    format!("missing while other deployments of model {group} have one: treated as order 1 (priority 0)"),
                );
            }
            let rank = orders
                .iter()
                .position(|o| *o == d.order.unwrap_or(1))
                .unwrap_or(0) as u32;
            let priority = if rank > MAX_PRIORITY {
                self.unconverted(
                    format!("{at}.order"),
                    format!("model {group} has more than {} distinct orders: this deployment gets priority {MAX_PRIORITY}, Gantry's last", MAX_PRIORITY + 1),
                );
                MAX_PRIORITY
            } else {
                rank
            };
            if let Some((first, _, _)) = seen
                .iter()
                .find(|(_, p, m)| *p == d.provider && *m == d.model)
            {
                self.unconverted(
                    format!("model_list[{}]", d.index),
                    format!("not carried over: same provider and model as model_list[{first}] in model {group}; Gantry lists a target once"),
                );
                continue;
            }
            if targets.len() == MAX_TARGETS {
                self.unconverted(
                    format!("model_list[{}]", d.index),
                    format!("not carried over: model {group} already has {MAX_TARGETS} targets, Gantry's most"),
                );
                continue;
            }
            seen.push((d.index, d.provider, d.model.clone()));
            targets.push(Target {
                provider: d.provider,
                model: d.model.clone(),
                weight,
                priority,
                timeout_secs: d.timeout_secs,
            });
        }
        targets
    }

    /// LiteLLM weights as Gantry's integers 1..=128, keeping their ratios where they can be
    /// kept: the smallest of ×1, ×10, ×100, ×1000 that makes every weight a whole number within
    /// range; otherwise scaled so that the largest is 128.
    fn scale_weights(&mut self, group: &str, deployments: &[Deployment]) -> Vec<u32> {
        if deployments.iter().all(|d| d.weight.is_none()) {
            return vec![1; deployments.len()];
        }
        let mut values: Vec<f64> = Vec::with_capacity(deployments.len());
        for d in deployments {
            if d.weight.is_none() {
                self.unconverted(
                    format!("model_list[{}].litellm_params.weight", d.index),
                    format!("missing while other deployments of model {group} have one: treated as weight 1"),
                );
            }
            let w = d.weight.unwrap_or(1.0);
            if w <= 0.0 || !w.is_finite() {
                self.unconverted(
                    format!("model_list[{}].litellm_params.weight", d.index),
                    format!("{w} of model {group} is outside Gantry's 1..{MAX_WEIGHT}: the target gets the smallest weight, 1"),
                );
                values.push(f64::NAN);
            } else {
                values.push(w);
            }
        }
        let positive: Vec<f64> = values.iter().copied().filter(|w| !w.is_nan()).collect();
        if positive.is_empty() {
            return vec![1; deployments.len()];
        }
        let max = positive.iter().copied().fold(0.0, f64::max);
        let exact = [1.0, 10.0, 100.0, 1000.0].into_iter().find(|m| {
            positive.iter().all(|w| {
                let scaled = w * m;
                (scaled - scaled.round()).abs() < 1e-6 && scaled.round() >= 1.0
            }) && (max * m).round() <= MAX_WEIGHT as f64
        });
        let factor = exact.unwrap_or(MAX_WEIGHT as f64 / max);
        let mut weights = Vec::with_capacity(values.len());
        for (d, w) in deployments.iter().zip(&values) {
            if w.is_nan() {
                weights.push(1);
                continue;
            }
            let scaled = (w * factor).round();
            if exact.is_none() {
                let clamped = scaled.clamp(1.0, MAX_WEIGHT as f64) as u32;
                self.unconverted(
                    format!("model_list[{}].litellm_params.weight", d.index),
                    format!("{w} of model {group} is scaled to {clamped}: Gantry's weights are whole numbers 1..{MAX_WEIGHT} (the group's ratios are kept as closely as that allows)"),
                );
                weights.push(clamped);
            } else {
                weights.push(scaled as u32);
            }
        }
        weights
    }

    fn router_settings(&mut self, router: &Map<String, Value>, plan: &mut Plan) {
        for (key, value) in router {
            let path = format!("router_settings.{key}");
            match key.as_str() {
                "routing_strategy" => {
                    let strategy = scalar_string(value).unwrap_or_default();
                    if strategy != "simple-shuffle" {
                        self.unconverted(
                            path,
                            format!("{strategy} is not carried over: Gantry spreads by weight and priority"),
                        );
                    }
                }
                "num_retries" => self.num_retries(&path, value, plan),
                "timeout" => {} // read with the providers
                "fallbacks" => self.fallbacks(&path, value, plan),
                "model_group_alias" => self.aliases(&path, value, plan),
                _ => self.common_setting(&path, key, value),
            }
        }
    }

    fn litellm_settings(&mut self, litellm: &Map<String, Value>, plan: &mut Plan) {
        for (key, value) in litellm {
            let path = format!("litellm_settings.{key}");
            match key.as_str() {
                "num_retries" => {
                    if plan.num_retries.is_some() {
                        self.unconverted(
                            path,
                            "not carried over: router_settings.num_retries is used",
                        );
                    } else {
                        self.num_retries(&path, value, plan);
                    }
                }
                "request_timeout" => {} // read with the providers
                "fallbacks" => self.fallbacks(&path, value, plan),
                "model_alias_map" => self.aliases(&path, value, plan),
                "callbacks" | "success_callback" | "failure_callback" | "service_callback"
                | "input_callback" | "turn_off_message_logging" | "json_logs" => self.unconverted(
                    path,
                    "not carried over: Gantry writes one JSON access-log line per request on stdout (and serves Prometheus /metrics with a metrics section); it has no logging callbacks",
                ),
                "cache" | "cache_params" => self.unconverted(
                    path,
                    "not carried over: Gantry has no response cache",
                ),
                "drop_params" | "modify_params" => self.unconverted(
                    path,
                    "not carried over: Gantry forwards parameters as sent; one a translated provider cannot express gets a 400 naming it",
                ),
                "set_verbose" => self.unconverted(
                    path,
                    "not carried over: Gantry's log level is set with RUST_LOG",
                ),
                _ => self.common_setting(&path, key, value),
            }
        }
    }

    /// Settings that both router_settings and litellm_settings may hold, and the rest.
    fn common_setting(&mut self, path: &str, key: &str, value: &Value) {
        match key {
            "default_fallbacks" => self.unconverted(
                path,
                "not carried over: Gantry fails over only between a model's own targets; add the fallback models as targets (at a later priority) of each model",
            ),
            "context_window_fallbacks" | "content_policy_fallbacks" => self.unconverted(
                path,
                "not carried over: Gantry fails over on 429, 5xx, timeouts and connection failures, not on context-window or content-policy errors",
            ),
            "allowed_fails" | "allowed_fails_policy" | "cooldown_time" | "disable_cooldowns" => {
                let shown = match value {
                    Value::Number(n) => format!("{n} "),
                    _ => String::new(),
                };
                self.unconverted(
                    path,
                    format!("{shown}is not carried over: Gantry ejects a target after 5 consecutive 5xx for 30 s (outlier ejection) and fails over to the next one; this is not configurable"),
                )
            }
            "retry_policy" => self.unconverted(
                path,
                "not carried over: Gantry retries 429, 5xx, timeouts and connection failures, up to retry.attempts tries, on the next target",
            ),
            k if k.starts_with("redis_") || k == "cache_responses" => self.unconverted(
                path,
                "not carried over: Gantry's routing keeps no shared state (budgets and rate limits share Redis through governance.store)",
            ),
            _ => self.unconverted(path, "not carried over: Gantry has no equivalent"),
        }
    }

    fn num_retries(&mut self, path: &str, value: &Value, plan: &mut Plan) {
        match value.as_u64() {
            Some(n) => plan.num_retries = Some((path.to_string(), n.min(u32::MAX as u64) as u32)),
            None => self.unconverted(path, "not carried over: not a whole number"),
        }
    }

    fn fallbacks(&mut self, path: &str, value: &Value, plan: &mut Plan) {
        let Some(rules) = value.as_array() else {
            self.unconverted(
                path,
                "not carried over: expected a list such as [{gpt-4o: [claude-sonnet]}]",
            );
            return;
        };
        for (i, rule) in rules.iter().enumerate() {
            let Some(rule) = rule.as_object() else {
                self.unconverted(
                    format!("{path}[{i}]"),
                    "not carried over: expected a mapping such as {gpt-4o: [claude-sonnet]}",
                );
                continue;
            };
            for (group, list) in rule {
                let at = format!("{path}[{i}].{group}");
                let names: Vec<String> = match list {
                    Value::Array(items) => items.iter().filter_map(scalar_string).collect(),
                    other => scalar_string(other).into_iter().collect(),
                };
                if plan.fallbacks.iter().any(|rule| rule.group == *group) {
                    self.unconverted(
                        at,
                        format!("not carried over: model {group} already has fallbacks (the first rule is used)"),
                    );
                    continue;
                }
                let names = names
                    .into_iter()
                    .enumerate()
                    .map(|(j, n)| (format!("{at}[{j}]"), n))
                    .collect();
                plan.fallbacks.push(FallbackRule {
                    group: group.clone(),
                    path: at,
                    fallbacks: names,
                });
            }
        }
    }

    fn aliases(&mut self, path: &str, value: &Value, plan: &mut Plan) {
        let Some(map) = value.as_object() else {
            self.unconverted(
                path,
                "not carried over: expected a mapping such as {gpt-4: gpt-4o}",
            );
            return;
        };
        for (alias, target) in map {
            let at = format!("{path}.{alias}");
            let name = match target {
                Value::Object(spec) => {
                    if spec.get("hidden").and_then(Value::as_bool) == Some(true) {
                        self.unconverted(
                            format!("{at}.hidden"),
                            "not carried over: Gantry lists every model in GET /v1/models",
                        );
                    }
                    spec.get("model").and_then(scalar_string)
                }
                other => scalar_string(other),
            };
            match name {
                Some(name) => plan.aliases.push((at, alias.clone(), name)),
                None => self.unconverted(
                    at,
                    "not carried over: expected the name of a model_list model",
                ),
            }
        }
    }

    /// The Gantry models: each group with its fallbacks and retries, then the aliases.
    fn models(
        &mut self,
        groups: &[Group],
        group_index: &HashMap<String, usize>,
        plan: &Plan,
    ) -> Vec<ModelOut> {
        let alias_of: HashMap<&str, &str> = plan
            .aliases
            .iter()
            .map(|(_, a, g)| (a.as_str(), g.as_str()))
            .collect();
        let lookup = |name: &str| -> Option<&Group> {
            group_index
                .get(name)
                .or_else(|| alias_of.get(name).and_then(|g| group_index.get(*g)))
                .map(|&i| &groups[i])
        };
        for FallbackRule {
            group, path: at, ..
        } in &plan.fallbacks
        {
            if !group_index.contains_key(group) {
                self.unconverted(
                    at.clone(),
                    format!("not carried over: {group} is not a model_name of model_list"),
                );
            } else if groups[group_index[group]].targets.is_empty() {
                self.unconverted(
                    at.clone(),
                    format!("not carried over: every deployment of model {group} was skipped"),
                );
            }
        }
        let mut models: Vec<ModelOut> = Vec::new();
        let mut capped: Vec<String> = Vec::new();
        let mut single: Vec<String> = Vec::new();
        for group in groups {
            if group.targets.is_empty() {
                continue;
            }
            let mut targets = group.targets.clone();
            let mut fallback_groups = 0u32;
            if let Some(rule) = plan.fallbacks.iter().find(|r| r.group == group.name) {
                for (at, name) in &rule.fallbacks {
                    let Some(fallback) = lookup(name) else {
                        self.unconverted(
                            at.clone(),
                            format!("fallback {name} of model {} is not carried over: it is not a model_name of model_list", group.name),
                        );
                        continue;
                    };
                    if fallback.targets.is_empty() {
                        self.unconverted(
                            at.clone(),
                            format!("fallback {name} of model {} is not carried over: every deployment of {} was skipped", group.name, fallback.name),
                        );
                        continue;
                    }
                    if fallback.name == group.name {
                        continue;
                    }
                    let base = targets.iter().map(|t| t.priority).max().unwrap_or(0) + 1;
                    let mut added = false;
                    let mut over = false;
                    for t in &fallback.targets {
                        if targets
                            .iter()
                            .any(|x| x.provider == t.provider && x.model == t.model)
                        {
                            continue;
                        }
                        if targets.len() == MAX_TARGETS {
                            self.unconverted(
                                at.clone(),
                                format!("fallback {name} of model {} is cut short: Gantry allows {MAX_TARGETS} targets per model", group.name),
                            );
                            break;
                        }
                        let priority = base + t.priority;
                        over |= priority > MAX_PRIORITY;
                        targets.push(Target {
                            priority: priority.min(MAX_PRIORITY),
                            ..t.clone()
                        });
                        added = true;
                    }
                    if over {
                        self.unconverted(
                            at.clone(),
                            format!("fallback {name} of model {} needs a priority beyond {MAX_PRIORITY}: its targets share priority {MAX_PRIORITY}", group.name),
                        );
                    }
                    if added {
                        fallback_groups += 1;
                    }
                }
            }
            let mut attempts = None;
            let mut per_try_timeout_secs = None;
            if targets.len() > 1 {
                if let Some((_, n)) = &plan.num_retries {
                    let wanted = n.saturating_add(1).saturating_add(fallback_groups);
                    if wanted > MAX_ATTEMPTS {
                        capped.push(format!("{} ({wanted})", group.name));
                    }
                    attempts = Some(wanted.min(MAX_ATTEMPTS));
                }
                per_try_timeout_secs = targets.iter().filter_map(|t| t.timeout_secs).max();
            } else if plan.num_retries.is_some() {
                single.push(group.name.clone());
            }
            models.push(ModelOut {
                name: group.name.clone(),
                targets,
                attempts,
                per_try_timeout_secs,
            });
        }
        if let Some((path, n)) = &plan.num_retries {
            if !capped.is_empty() {
                self.unconverted(
                    path.clone(),
                    format!("{n} retries (plus one try per fallback) is more than Gantry's {MAX_ATTEMPTS} tries: retry.attempts is {MAX_ATTEMPTS} on {}", capped.join(", ")),
                );
            }
            if !single.is_empty() {
                self.unconverted(
                    path.clone(),
                    format!("not carried over for {}: Gantry retries on another target, and these models have only one", single.join(", ")),
                );
            }
        }
        for (at, alias, target) in &plan.aliases {
            if models.iter().any(|m| m.name == *alias) || group_index.contains_key(alias) {
                self.unconverted(
                    at.clone(),
                    format!(
                        "alias {alias} is not carried over: a model of that name already exists"
                    ),
                );
                continue;
            }
            let Some(model) = models.iter().find(|m| m.name == *target) else {
                let why = if group_index.contains_key(target) {
                    format!("every deployment of {target} was skipped")
                } else {
                    format!("{target} is not a model_name of model_list")
                };
                self.unconverted(
                    at.clone(),
                    format!("alias {alias} is not carried over: {why}"),
                );
                continue;
            };
            let copy = ModelOut {
                name: alias.clone(),
                targets: model.targets.clone(),
                attempts: model.attempts,
                per_try_timeout_secs: model.per_try_timeout_secs,
            };
            models.push(copy);
        }
        models
    }

    fn general_settings(&mut self, value: &Value) {
        let Some(map) = value.as_object() else {
            self.unconverted("general_settings", "not carried over: not a mapping");
            return;
        };
        for key in map.keys() {
            let path = format!("general_settings.{key}");
            let reason = match key.as_str() {
                "master_key" => "not carried over: Gantry authenticates clients with hashed API keys in auth.api_keys (make one with `gantry key new`)",
                "database_url" | "store_model_in_db" => "not carried over: Gantry keeps its config in this file and spend in governance.store (an SQLite file or Redis)",
                "alerting" | "alerting_threshold" | "alert_types" => "not carried over: Gantry has no alerting; watch its /metrics (metrics section) and access log",
                "max_parallel_requests" | "global_max_parallel_requests" => "not carried over: Gantry's limits are governance.rate_limits (requests and tokens per window)",
                _ => "not carried over: Gantry has no equivalent",
            };
            self.unconverted(path, reason);
        }
    }

    fn environment_variables(&mut self, value: &Value) {
        let Some(map) = value.as_object() else {
            self.unconverted("environment_variables", "not carried over: not a mapping");
            return;
        };
        for key in map.keys() {
            self.unconverted(
                format!("environment_variables.{key}"),
                format!("not carried over (values are never copied): set {key} in Gantry's environment if the config reads it"),
            );
        }
    }

    /// Renders, checks and returns the conversion.
    fn finish(
        self,
        models: Vec<ModelOut>,
        options: &ImportOptions,
    ) -> Result<Conversion, ImportError> {
        let providers_used: Vec<usize> = {
            let mut used: Vec<usize> = models
                .iter()
                .flat_map(|m| m.targets.iter().map(|t| t.provider))
                .collect();
            used.sort_unstable();
            used.dedup();
            used
        };
        let mut env_vars: Vec<String> = Vec::new();
        let providers: Vec<Value> = providers_used
            .iter()
            .map(|&i| {
                let (spec, name) = &self.providers[i];
                let mut p = Map::new();
                p.insert("name".into(), json!(name));
                p.insert("kind".into(), json!(spec.kind.as_str()));
                p.insert("endpoint".into(), json!(spec.endpoint));
                let mut put = |field: &str, value: &Option<String>, env: bool| {
                    if let Some(v) = value {
                        p.insert(field.into(), json!(v));
                        if env {
                            env_vars.push(v.clone());
                        }
                    }
                };
                put("api_key_env", &spec.api_key_env, true);
                put("api_version", &spec.api_version, false);
                put("region", &spec.region, false);
                put("aws_access_key_id_env", &spec.aws_access_key_id_env, true);
                put(
                    "aws_secret_access_key_env",
                    &spec.aws_secret_access_key_env,
                    true,
                );
                put("aws_session_token_env", &spec.aws_session_token_env, true);
                if spec.kind == ProviderKind::Bedrock {
                    if spec.aws_access_key_id_env.is_none() {
                        env_vars.push("AWS_ACCESS_KEY_ID".into());
                    }
                    if spec.aws_secret_access_key_env.is_none() {
                        env_vars.push("AWS_SECRET_ACCESS_KEY".into());
                    }
                }
                if let Some(t) = spec.timeout_secs {
                    p.insert("timeout_secs".into(), json!(t));
                }
                Value::Object(p)
            })
            .collect();
        env_vars.sort();
        env_vars.dedup();
        let provider_name = |i: usize| self.providers[i].1.clone();
        let models_out: Vec<Value> = models
            .iter()
            .map(|m| {
                let mut out = Map::new();
                out.insert("name".into(), json!(m.name));
                if let [only] = m.targets.as_slice() {
                    out.insert("provider".into(), json!(provider_name(only.provider)));
                    out.insert("model".into(), json!(only.model));
                    return Value::Object(out);
                }
                let mut retry = Map::new();
                if let Some(a) = m.attempts {
                    retry.insert("attempts".into(), json!(a));
                }
                if let Some(t) = m.per_try_timeout_secs {
                    retry.insert("per_try_timeout_secs".into(), json!(t));
                }
                if !retry.is_empty() {
                    out.insert("retry".into(), Value::Object(retry));
                }
                let targets: Vec<Value> = m
                    .targets
                    .iter()
                    .map(|t| {
                        let mut target = Map::new();
                        target.insert("provider".into(), json!(provider_name(t.provider)));
                        target.insert("model".into(), json!(t.model));
                        if t.weight != 1 {
                            target.insert("weight".into(), json!(t.weight));
                        }
                        if t.priority != 0 {
                            target.insert("priority".into(), json!(t.priority));
                        }
                        Value::Object(target)
                    })
                    .collect();
                out.insert("targets".into(), Value::Array(targets));
                Value::Object(out)
            })
            .collect();
        let config = json!({
            "listen": options.listen.to_string(),
            "admin": options.admin.to_string(),
            "ext_proc": { "listen": options.ext_proc_listen.to_string() },
            "providers": providers,
            "models": models_out,
        });
        let body = serde_saphyr::to_string_with_options(
            &config,
            serde_saphyr::ser_options! { prefer_block_scalars: false },
        )
        .map_err(|e| ImportError::InvalidOutput(e.to_string()))?;

        let mut head = String::new();
        let from = options
            .source
            .as_deref()
            .map_or(String::new(), |s| format!(" {s}"));
        head.push_str(&format!(
            "# Gantry config converted by `gantry import litellm` from the LiteLLM proxy config{from}.\n"
        ));
        head.push_str("# Check it with `gantry check --config <this file>`.\n");
        if !env_vars.is_empty() {
            head.push_str(&format!(
                "# Environment variables it reads: {}\n",
                env_vars.join(", ")
            ));
        }
        if self.report.is_empty() {
            head.push_str("# Every setting was carried over.\n");
        } else {
            head.push_str(&format!("#\n# Not carried over ({}):\n", self.report.len()));
            for item in &self.report {
                head.push_str(&format!("#   - {}\n", one_line(&item.to_string())));
            }
        }
        let yaml = format!("{head}{body}");
        ConfigFile::parse(&yaml).map_err(|e| ImportError::InvalidOutput(e.to_string()))?;
        Ok(Conversion {
            yaml,
            unconverted: self.report,
            env_vars,
            providers: providers_used.len(),
            models: models.len(),
        })
    }
}

/// A settings section, or `None` (reported) when it is not a mapping.
fn settings_section<'a>(
    root: &'a Map<String, Value>,
    key: &str,
    report: &mut Vec<Unconverted>,
) -> Option<&'a Map<String, Value>> {
    match root.get(key)? {
        Value::Object(map) => Some(map),
        Value::Null => None,
        _ => {
            report.push(Unconverted {
                path: key.to_string(),
                reason: "not carried over: not a mapping".into(),
            });
            None
        }
    }
}

fn collect_env_refs(value: &Value, out: &mut HashSet<String>) {
    match value {
        Value::String(s) => {
            if let Some(name) = env_ref(s) {
                out.insert(name.to_string());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_env_refs(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_env_refs(v, out)),
        _ => {}
    }
}

/// `NAME` of `os.environ/NAME`.
fn env_ref(text: &str) -> Option<&str> {
    text.trim().strip_prefix("os.environ/")
}

/// A string, number or boolean as text (model names may be written unquoted as numbers).
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_aws_region(region: &str) -> bool {
    let region = region.trim();
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `GROQ` for `groq`: the stem of a suggested `<STEM>_API_KEY`.
fn env_stem(label: &str) -> String {
    let stem: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{stem}_API_KEY")
}

/// A short name for an endpoint's host: the first DNS label (`my-eastus` of
/// `my-eastus.openai.azure.com`), or the IP, with the port when the URL gives one.
fn host_label(endpoint: &str) -> String {
    let Ok(parsed) = ProviderEndpoint::parse(endpoint) else {
        return "custom".into();
    };
    let host = if parsed.ip().is_some() {
        parsed.host.replace(':', "-")
    } else {
        parsed
            .host
            .split('.')
            .next()
            .unwrap_or(&parsed.host)
            .to_string()
    };
    if parsed.explicit_port {
        format!("{host}-{}", parsed.port)
    } else {
        host
    }
}

/// Gantry's name alphabet: letters, digits, `-`, `_`, `.`.
fn sanitize_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "provider".into()
    } else {
        cleaned
    }
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_policy::config::ModelSection;

    /// A LiteLLM config as teams have them: a weighted two-deployment group, Azure, Anthropic
    /// with a literal key, Gemini, Bedrock, a vLLM/Ollama failover pair, a Vertex model Gantry
    /// cannot reach, a wildcard, fallbacks, retries, aliases and settings Gantry lacks.
    const REPRESENTATIVE: &str = r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      weight: 0.7
      rpm: 500
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eastus
      api_base: https://my-eastus.openai.azure.com/
      api_key: os.environ/AZURE_EASTUS_KEY
      api_version: "2024-08-01-preview"
      weight: 0.3
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: sk-ant-LITERAL-do-not-copy
  - model_name: gemini-flash
    litellm_params:
      model: gemini/gemini-2.5-flash
      api_key: os.environ/GEMINI_API_KEY
  - model_name: bedrock-claude
    litellm_params:
      model: bedrock/converse/anthropic.claude-3-5-sonnet-20240620-v1:0
      aws_region_name: eu-west-1
      aws_access_key_id: os.environ/BEDROCK_KEY_ID
      aws_secret_access_key: os.environ/BEDROCK_SECRET
  - model_name: llama
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: http://10.0.0.5:8000/v1
      timeout: 45
      order: 1
  - model_name: llama
    litellm_params:
      model: ollama_chat/llama3.1
      api_base: http://localhost:11434
      order: 2
  - model_name: vertex-gemini
    litellm_params:
      model: vertex_ai/gemini-1.5-pro
      vertex_project: my-project
  - model_name: "*"
    litellm_params:
      model: "openai/*"
router_settings:
  routing_strategy: latency-based-routing
  num_retries: 3
  allowed_fails: 3
  fallbacks:
    - gpt-4o: [claude-sonnet, gemini-flash]
    - vertex-gemini: [gemini-flash]
    - llama: [vertex-gemini]
  model_group_alias:
    gpt-4: gpt-4o
    vertex: vertex-gemini
litellm_settings:
  callbacks: [langfuse]
  drop_params: true
general_settings:
  master_key: sk-master-LITERAL
"#;

    fn convert_ok(text: &str) -> (Conversion, ConfigFile) {
        let conversion = convert(text, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("conversion failed: {e}"));
        let config = checked(&conversion.yaml);
        (conversion, config)
    }

    /// What `gantry check` does (parse and validate), plus compiling the snapshot and the
    /// Envoy bootstrap `gantry run` would build from it.
    fn checked(yaml: &str) -> ConfigFile {
        let config = ConfigFile::parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let snapshot = gantry_policy::Snapshot::compile(&config, &|_| Some("x".into()));
        assert_eq!(snapshot.available_models.len(), config.models.len());
        crate::envoy_bootstrap::render_yaml(&config, "converted")
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        config
    }

    fn provider<'a>(
        config: &'a ConfigFile,
        name: &str,
    ) -> &'a gantry_policy::config::ProviderSection {
        config
            .providers
            .iter()
            .find(|p| p.name.value == name)
            .unwrap_or_else(|| panic!("no provider {name}"))
    }

    fn model<'a>(config: &'a ConfigFile, name: &str) -> &'a ModelSection {
        config
            .models
            .iter()
            .find(|m| m.name.value == name)
            .unwrap_or_else(|| panic!("no model {name}"))
    }

    /// (provider, model, weight, priority) of each target.
    fn shape(model: &ModelSection) -> Vec<(String, String, u32, u32)> {
        model
            .targets_or_single()
            .iter()
            .map(|t| {
                (
                    t.provider.value.clone(),
                    t.model.value.clone(),
                    t.weight,
                    t.priority,
                )
            })
            .collect()
    }

    fn env(field: &Option<serde_saphyr::Spanned<String>>) -> Option<&str> {
        field.as_ref().map(|f| f.value.as_str())
    }

    fn t(provider: &str, model: &str, weight: u32, priority: u32) -> (String, String, u32, u32) {
        (provider.into(), model.into(), weight, priority)
    }

    fn paths(conversion: &Conversion) -> Vec<&str> {
        conversion
            .unconverted
            .iter()
            .map(|u| u.path.as_str())
            .collect()
    }

    fn reason<'a>(conversion: &'a Conversion, path: &str) -> &'a str {
        conversion
            .unconverted
            .iter()
            .find(|u| u.path == path)
            .map(|u| u.reason.as_str())
            .unwrap_or_else(|| panic!("{path} not reported: {:?}", conversion.unconverted))
    }

    #[test]
    fn a_representative_litellm_config_converts_to_a_config_that_passes_check() {
        let (conversion, config) = convert_ok(REPRESENTATIVE);

        // Providers: kinds, endpoints (no trailing /v1), credentials by variable name.
        let names: Vec<&str> = config
            .providers
            .iter()
            .map(|p| p.name.value.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "openai",
                "azure-my-eastus",
                "anthropic",
                "gemini",
                "bedrock-eu-west-1",
                "hosted-vllm-10.0.0.5-8000",
                "ollama"
            ]
        );
        let openai = provider(&config, "openai");
        assert_eq!(openai.kind, ProviderKind::Openai);
        assert_eq!(openai.endpoint.value, "https://api.openai.com");
        assert_eq!(env(&openai.api_key_env), Some("OPENAI_API_KEY"));
        let azure = provider(&config, "azure-my-eastus");
        assert_eq!(azure.kind, ProviderKind::AzureOpenai);
        assert_eq!(azure.endpoint.value, "https://my-eastus.openai.azure.com");
        assert_eq!(env(&azure.api_key_env), Some("AZURE_EASTUS_KEY"));
        assert_eq!(azure.api_version(), "2024-08-01-preview");
        let anthropic = provider(&config, "anthropic");
        assert_eq!(anthropic.kind, ProviderKind::Anthropic);
        assert_eq!(anthropic.endpoint.value, "https://api.anthropic.com");
        assert_eq!(env(&anthropic.api_key_env), Some("ANTHROPIC_API_KEY"));
        let gemini = provider(&config, "gemini");
        assert_eq!(gemini.kind, ProviderKind::Gemini);
        assert_eq!(
            gemini.endpoint.value,
            "https://generativelanguage.googleapis.com"
        );
        assert_eq!(env(&gemini.api_key_env), Some("GEMINI_API_KEY"));
        let bedrock = provider(&config, "bedrock-eu-west-1");
        assert_eq!(bedrock.kind, ProviderKind::Bedrock);
        assert_eq!(
            bedrock.endpoint.value,
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        assert_eq!(env(&bedrock.region), Some("eu-west-1"));
        assert_eq!(env(&bedrock.aws_access_key_id_env), Some("BEDROCK_KEY_ID"));
        assert_eq!(
            env(&bedrock.aws_secret_access_key_env),
            Some("BEDROCK_SECRET")
        );
        assert_eq!(bedrock.api_key_env, None);
        let vllm = provider(&config, "hosted-vllm-10.0.0.5-8000");
        assert_eq!(vllm.endpoint.value, "http://10.0.0.5:8000");
        assert_eq!(vllm.api_key_env, None);
        assert_eq!(vllm.timeout_secs, Some(45));
        let ollama = provider(&config, "ollama");
        assert_eq!(ollama.endpoint.value, "http://localhost:11434");
        assert_eq!(ollama.timeout_secs, None);

        // Models: the weighted group (0.7 / 0.3 keep their ratio) with its fallbacks at the
        // next priorities, in list order; retries are num_retries + 1 + one per fallback,
        // capped at 5.
        let gpt = model(&config, "gpt-4o");
        assert_eq!(
            shape(gpt),
            [
                t("openai", "gpt-4o", 7, 0),
                t("azure-my-eastus", "gpt-4o-eastus", 3, 0),
                t("anthropic", "claude-sonnet-4-5", 1, 1),
                t("gemini", "gemini-2.5-flash", 1, 2),
            ]
        );
        assert_eq!(gpt.attempts(), 5);
        // The alias has its group's targets and retries.
        let gpt4 = model(&config, "gpt-4");
        assert_eq!(shape(gpt4), shape(gpt));
        assert_eq!(gpt4.attempts(), 5);
        // order 1 and 2 become priorities 0 and 1; a deployment timeout bounds each try.
        let llama = model(&config, "llama");
        assert_eq!(
            shape(llama),
            [
                t(
                    "hosted-vllm-10.0.0.5-8000",
                    "meta-llama/Llama-3.1-8B-Instruct",
                    1,
                    0
                ),
                t("ollama", "llama3.1", 1, 1),
            ]
        );
        assert_eq!(llama.attempts(), 4);
        assert_eq!(
            llama
                .retry
                .as_ref()
                .and_then(|r| r.per_try_timeout_secs.as_ref())
                .map(|s| s.value),
            Some(45)
        );
        // Single deployments are plain provider/model models, without retries.
        let bedrock_model = model(&config, "bedrock-claude");
        assert_eq!(
            shape(bedrock_model),
            [t(
                "bedrock-eu-west-1",
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                1,
                0
            )]
        );
        assert!(bedrock_model.retry.is_none() && bedrock_model.targets.is_empty());
        let mut models: Vec<&str> = config
            .models
            .iter()
            .map(|m| m.name.value.as_str())
            .collect();
        models.sort_unstable();
        assert_eq!(
            models,
            [
                "bedrock-claude",
                "claude-sonnet",
                "gemini-flash",
                "gpt-4",
                "gpt-4o",
                "llama"
            ]
        );

        // Literal secrets never reach the output, nor the report.
        for secret in ["sk-ant-LITERAL-do-not-copy", "sk-master-LITERAL"] {
            assert!(!conversion.yaml.contains(secret), "{}", conversion.yaml);
            assert!(conversion
                .unconverted
                .iter()
                .all(|u| !u.reason.contains(secret)));
        }

        // Exactly these settings are reported.
        let mut reported = paths(&conversion);
        reported.sort_unstable();
        assert_eq!(
            reported,
            [
                "general_settings.master_key",
                "litellm_settings.callbacks",
                "litellm_settings.drop_params",
                "model_list[0].litellm_params.rpm",
                "model_list[2].litellm_params.api_key",
                "model_list[7].litellm_params.model",
                "model_list[8].model_name",
                "router_settings.allowed_fails",
                "router_settings.fallbacks[1].vertex-gemini",
                "router_settings.fallbacks[2].llama[0]",
                "router_settings.model_group_alias.vertex",
                "router_settings.num_retries",
                "router_settings.num_retries",
                "router_settings.routing_strategy",
            ]
        );
        assert_eq!(
            conversion
                .unconverted
                .iter()
                .find(|u| u.path == "router_settings.routing_strategy")
                .unwrap()
                .to_string(),
            "router_settings.routing_strategy: latency-based-routing is not carried over: Gantry spreads by weight and priority"
        );
        assert!(reason(&conversion, "model_list[2].litellm_params.api_key").contains(
            "litellm_params.api_key of model claude-sonnet is a literal secret and is not copied; set it in an environment variable: the generated provider reads api_key_env: ANTHROPIC_API_KEY"
        ));
        assert!(reason(&conversion, "model_list[7].litellm_params.model")
            .contains("Gantry has no 'vertex_ai' provider kind"));
        assert!(reason(&conversion, "router_settings.allowed_fails")
            .contains("5 consecutive 5xx for 30 s"));
        assert!(reason(&conversion, "router_settings.fallbacks[2].llama[0]")
            .contains("every deployment of vertex-gemini was skipped"),);
        let retries: Vec<&str> = conversion
            .unconverted
            .iter()
            .filter(|u| u.path == "router_settings.num_retries")
            .map(|u| u.reason.as_str())
            .collect();
        assert!(
            retries[0].contains("retry.attempts is 5 on gpt-4o (6)"),
            "{retries:?}"
        );
        assert!(
            retries[1].contains("bedrock-claude") && retries[1].contains("claude-sonnet"),
            "{retries:?}"
        );

        // The report heads the YAML as comments, and the environment variables are listed.
        let head: Vec<&str> = conversion
            .yaml
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect();
        assert!(head.contains(&"# Not carried over (14):"), "{head:?}");
        assert!(head.contains(
            &"#   - router_settings.routing_strategy: latency-based-routing is not carried over: Gantry spreads by weight and priority"
        ));
        assert_eq!(
            conversion.env_vars,
            [
                "ANTHROPIC_API_KEY",
                "AZURE_EASTUS_KEY",
                "BEDROCK_KEY_ID",
                "BEDROCK_SECRET",
                "GEMINI_API_KEY",
                "OPENAI_API_KEY"
            ]
        );
        assert_eq!((conversion.providers, conversion.models), (7, 6));
        assert_eq!(config.listen.value, "127.0.0.1:10000");
        assert_eq!(config.admin_addr().port(), 9901);
        assert_eq!(config.ext_proc_addr().port(), 10001);
    }

    #[test]
    fn the_listen_addresses_are_the_options() {
        let options = ImportOptions {
            listen: "127.0.0.1:20000".parse().unwrap(),
            admin: "127.0.0.1:20001".parse().unwrap(),
            ext_proc_listen: "127.0.0.1:20002".parse().unwrap(),
            source: Some("litellm.yaml".into()),
        };
        let conversion = convert(
            "model_list: [{ model_name: m, litellm_params: { model: openai/gpt-4o } }]",
            &options,
        )
        .unwrap();
        let config = checked(&conversion.yaml);
        assert_eq!(config.listen_addr(), options.listen);
        assert_eq!(config.admin_addr(), options.admin);
        assert_eq!(config.ext_proc_addr(), options.ext_proc_listen);
        assert!(conversion.yaml.starts_with(
            "# Gantry config converted by `gantry import litellm` from the LiteLLM proxy config litellm.yaml.\n"
        ));
        assert!(conversion
            .yaml
            .contains("# Every setting was carried over.\n"));
        assert!(conversion.unconverted.is_empty());
    }

    #[test]
    fn weights_keep_their_ratios_within_gantry_range() {
        let group = |weights: &[&str]| {
            let mut text = String::from("model_list:\n");
            for (i, w) in weights.iter().enumerate() {
                let weight = if w.is_empty() {
                    String::new()
                } else {
                    format!(", weight: {w}")
                };
                text.push_str(&format!(
                    "  - {{ model_name: m, litellm_params: {{ model: openai/m{i}{weight} }} }}\n"
                ));
            }
            let (conversion, config) = convert_ok(&text);
            let weights: Vec<u32> = shape(model(&config, "m")).iter().map(|t| t.2).collect();
            (weights, paths(&conversion).len())
        };
        assert_eq!(group(&["0.9", "0.1"]), (vec![9, 1], 0));
        assert_eq!(group(&["0.25", "0.75"]), (vec![25, 75], 0));
        assert_eq!(group(&["3", "1"]), (vec![3, 1], 0));
        // Beyond 128: scaled so that the largest is 128, and reported.
        assert_eq!(group(&["200", "100"]), (vec![128, 64], 2));
        // Gantry cannot express 0: the smallest weight, reported.
        assert_eq!(group(&["0", "2"]), (vec![1, 2], 1));
        // A deployment without a weight in a weighted group counts as 1, reported.
        assert_eq!(group(&["4", ""]), (vec![4, 1], 1));
        // No weights: Gantry's default.
        assert_eq!(group(&["", ""]), (vec![1, 1], 0));
    }

    #[test]
    fn orders_become_ranked_priorities_and_fallbacks_follow_them() {
        let (conversion, config) = convert_ok(
            "model_list:
  - { model_name: m, litellm_params: { model: openai/a, order: 5 } }
  - { model_name: m, litellm_params: { model: openai/b, order: 2 } }
  - { model_name: m, litellm_params: { model: openai/c, order: 9 } }
  - { model_name: m, litellm_params: { model: openai/d } }
  - { model_name: f, litellm_params: { model: groq/e, order: 1 } }
  - { model_name: f, litellm_params: { model: groq/g, order: 2 } }
litellm_settings:
  num_retries: 0
  fallbacks: [{ m: [f] }]
",
        );
        // Orders 2, 5, 9 rank 1, 2, 3 after the unordered one (order 1); the fallback group
        // keeps its own order after them.
        assert_eq!(
            shape(model(&config, "m")),
            [
                t("openai", "a", 1, 2),
                t("openai", "b", 1, 1),
                t("openai", "c", 1, 3),
                t("openai", "d", 1, 0),
                t("groq", "e", 1, 4),
                t("groq", "g", 1, 5),
            ]
        );
        // num_retries 0 still reaches the fallback: one try, plus one for the fallback group.
        assert_eq!(model(&config, "m").attempts(), 2);
        assert_eq!(model(&config, "f").attempts(), 1);
        assert_eq!(paths(&conversion), ["model_list[3].litellm_params.order"]);
    }

    #[test]
    fn literal_secrets_get_their_own_suggested_variables() {
        let (conversion, config) = convert_ok(
            "model_list:
  - { model_name: a, litellm_params: { model: groq/x, api_key: gsk-first-SECRET } }
  - { model_name: b, litellm_params: { model: groq/y, api_key: gsk-second-SECRET } }
  - { model_name: c, litellm_params: { model: groq/z, api_key: gsk-first-SECRET } }
  - { model_name: d, litellm_params: { model: groq/w, api_key: os.environ/GROQ_API_KEY } }
  - model_name: e
    litellm_params:
      model: bedrock/amazon.nova-lite-v1:0
      aws_region_name: us-west-2
      aws_access_key_id: AKIA-LITERAL-ID
      aws_secret_access_key: os.environ/MY_AWS_SECRET
",
        );
        for secret in ["gsk-first-SECRET", "gsk-second-SECRET", "AKIA-LITERAL-ID"] {
            assert!(!conversion.yaml.contains(secret), "{}", conversion.yaml);
        }
        // GROQ_API_KEY is named by the file itself: literals get other variables, the same
        // one for the same secret (so a and c share a provider).
        let provider_of = |m: &str| shape(model(&config, m))[0].0.clone();
        assert_eq!(provider_of("a"), provider_of("c"));
        assert_ne!(provider_of("a"), provider_of("b"));
        let key = |m: &str| {
            env(&provider(&config, &provider_of(m)).api_key_env)
                .unwrap()
                .to_string()
        };
        assert_eq!(key("a"), "GROQ_API_KEY_2");
        assert_eq!(key("b"), "GROQ_API_KEY_3");
        assert_eq!(key("d"), "GROQ_API_KEY");
        let bedrock = provider(&config, "bedrock-us-west-2");
        assert_eq!(
            env(&bedrock.aws_access_key_id_env),
            Some("AWS_ACCESS_KEY_ID")
        );
        assert_eq!(
            env(&bedrock.aws_secret_access_key_env),
            Some("MY_AWS_SECRET")
        );
        assert_eq!(
            paths(&conversion),
            [
                "model_list[0].litellm_params.api_key",
                "model_list[1].litellm_params.api_key",
                "model_list[2].litellm_params.api_key",
                "model_list[4].litellm_params.aws_access_key_id",
            ]
        );
    }

    #[test]
    fn what_gantry_check_would_refuse_is_reported_instead() {
        let (conversion, config) = convert_ok(
            "model_list:
  - model_name: azure-env
    litellm_params: { model: azure/gpt-4o, api_base: os.environ/AZURE_API_BASE, api_key: os.environ/AZURE_API_KEY }
  - model_name: azure-version
    litellm_params:
      model: azure/gpt-4o
      api_base: https://res.openai.azure.com/openai/
      api_version: os.environ/AZURE_API_VERSION
  - model_name: bedrock-env-region
    litellm_params: { model: bedrock/amazon.nova-pro-v1:0, aws_region_name: os.environ/AWS_REGION }
  - model_name: twice
    litellm_params: { model: openai/gpt-4o, rpm: 100 }
  - model_name: twice
    litellm_params: { model: openai/gpt-4o, rpm: 200 }
  - model_name: no-scheme
    litellm_params: { model: openai/x, api_base: 'localhost:8000/v1' }
  - model_name: azure-no-base
    litellm_params: { model: azure/gpt-4o }
  - model_name: bare
    litellm_params: { model: gpt-4o-mini }
  - model_name: claude-bare
    litellm_params: { model: claude-3-5-haiku-latest }
  - model_name: proxy
    litellm_params: { model: openai/gpt-4o, api_base: 'http://proxy.internal:4000/api/' }
  - model_name: deepinfra
    litellm_params: { model: deepinfra/meta-llama/Llama-3.3-70B-Instruct }
  - model_name: groq
    litellm_params: { model: groq/llama-3.1-8b-instant, timeout: 2.5 }
",
        );
        let azure = provider(&config, "azure-res");
        assert_eq!(azure.endpoint.value, "https://res.openai.azure.com");
        assert_eq!(azure.api_version, None);
        assert_eq!(env(&azure.api_key_env), Some("AZURE_API_KEY"));
        assert_eq!(
            env(&provider(&config, "bedrock-us-east-1").region),
            Some("us-east-1")
        );
        assert_eq!(
            shape(model(&config, "twice")),
            [t("openai", "gpt-4o", 1, 0)]
        );
        assert_eq!(
            shape(model(&config, "bare")),
            [t("openai", "gpt-4o-mini", 1, 0)]
        );
        assert_eq!(
            shape(model(&config, "claude-bare")),
            [t("anthropic", "claude-3-5-haiku-latest", 1, 0)]
        );
        assert_eq!(
            provider(&config, "openai-proxy-4000").endpoint.value,
            "http://proxy.internal:4000/api"
        );
        assert_eq!(
            provider(&config, "deepinfra").endpoint.value,
            "https://api.deepinfra.com/v1/openai"
        );
        assert_eq!(provider(&config, "groq").timeout_secs, Some(3));
        for skipped in ["azure-env", "no-scheme", "azure-no-base"] {
            assert!(config.models.iter().all(|m| m.name.value != skipped));
        }
        assert_eq!(
            paths(&conversion),
            [
                "model_list[0].litellm_params.api_base",
                "model_list[1].litellm_params.api_version",
                "model_list[2].litellm_params.aws_region_name",
                "model_list[3].litellm_params.rpm",
                "model_list[4].litellm_params.rpm",
                "model_list[5].litellm_params.api_base",
                "model_list[6].litellm_params.model",
                "model_list[7].litellm_params.model",
                "model_list[8].litellm_params.model",
                "model_list[9].litellm_params.api_base",
                "model_list[10].litellm_params.model",
                "model_list[11].litellm_params.timeout",
                "model_list[4]",
            ]
        );
        assert!(reason(&conversion, "model_list[0].litellm_params.api_base")
            .contains("environment variable AZURE_API_BASE"));
        assert!(reason(&conversion, "model_list[9].litellm_params.api_base")
            .contains("does not end in /v1"));
        assert!(reason(&conversion, "model_list[10].litellm_params.model")
            .contains("https://api.deepinfra.com/v1/openai/v1/chat/completions"));
    }

    #[test]
    fn every_other_setting_is_reported_by_its_path() {
        let (conversion, _) = convert_ok(
            "model_list:
  - model_name: m
    litellm_params:
      model: openai/gpt-4o
      stream_timeout: 30
      max_retries: 2
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001
      temperature: 0.2
    model_info: { id: abc, mode: chat }
router_settings:
  routing_strategy: simple-shuffle
  cooldown_time: 30
  redis_host: redis.internal
  redis_password: hunter2-LITERAL
  context_window_fallbacks: [{ m: [m] }]
  default_fallbacks: [m]
  enable_pre_call_checks: true
litellm_settings:
  success_callback: [langfuse]
  cache: true
  request_timeout: 600
general_settings:
  database_url: postgres://user:pw-LITERAL@db/litellm
environment_variables:
  OPENAI_API_KEY: sk-env-LITERAL
include: [more.yaml]
",
        );
        let mut reported = paths(&conversion);
        reported.sort_unstable();
        assert_eq!(
            reported,
            [
                "environment_variables.OPENAI_API_KEY",
                "general_settings.database_url",
                "include",
                "litellm_settings.cache",
                "litellm_settings.success_callback",
                "model_list[0].litellm_params.input_cost_per_token",
                "model_list[0].litellm_params.max_retries",
                "model_list[0].litellm_params.output_cost_per_token",
                "model_list[0].litellm_params.stream_timeout",
                "model_list[0].litellm_params.temperature",
                "model_list[0].model_info",
                "router_settings.context_window_fallbacks",
                "router_settings.cooldown_time",
                "router_settings.default_fallbacks",
                "router_settings.enable_pre_call_checks",
                "router_settings.redis_host",
                "router_settings.redis_password",
            ]
        );
        assert!(reason(
            &conversion,
            "model_list[0].litellm_params.input_cost_per_token"
        )
        .contains("2.5 USD per million tokens"));
        for secret in ["hunter2", "pw-LITERAL", "sk-env-LITERAL"] {
            assert!(!conversion.yaml.contains(secret));
        }
        // request_timeout became every provider's timeout.
        let config = checked(&conversion.yaml);
        assert_eq!(config.providers[0].timeout_secs, Some(600));
    }

    #[test]
    fn malformed_files_are_typed_errors() {
        let err = |text: &str| convert(text, &ImportOptions::default()).unwrap_err();
        let yaml = err("model_list: [\n  - {model_name: a\napi_key: sk-IN-THE-BROKEN-LINE\n");
        assert!(
            matches!(&yaml, ImportError::Yaml(m) if m.contains("line")),
            "{yaml}"
        );
        assert!(
            !yaml.to_string().contains("sk-IN-THE-BROKEN-LINE"),
            "{yaml}"
        );
        assert_eq!(err("- a\n- b\n"), ImportError::NotAMapping);
        assert_eq!(err(""), ImportError::NoModelList);
        assert_eq!(err("general_settings: {}\n"), ImportError::NoModelList);
        assert_eq!(
            err("model_list: {gpt: {}}\n"),
            ImportError::ModelListNotAList { found: "a mapping" }
        );
        assert_eq!(
            err("model_list: [gpt-4o]\n"),
            ImportError::EntryNotAMapping {
                index: 0,
                found: "a string"
            }
        );
        let no_name = err("model_list:\n  - litellm_params: { model: openai/x }\n");
        assert_eq!(no_name, ImportError::NoModelName { index: 0 });
        assert_eq!(no_name.to_string(), "model_list[0]: has no model_name");
        let no_model = err(
            "model_list:\n  - { model_name: a, litellm_params: { model: openai/a } }\n  - { model_name: b, litellm_params: { api_key: x } }\n",
        );
        assert_eq!(
            no_model,
            ImportError::NoLitellmModel {
                index: 1,
                model_name: "b".into()
            }
        );
        assert_eq!(
            err("model_list:\n  - { model_name: b }\n"),
            ImportError::NoLitellmModel {
                index: 0,
                model_name: "b".into()
            }
        );
        let nothing = err(
            "model_list:\n  - { model_name: v, litellm_params: { model: vertex_ai/gemini-pro } }\n",
        );
        assert!(
            matches!(&nothing, ImportError::NothingConverted(r) if r.contains("model_list[0].litellm_params.model")),
            "{nothing}"
        );
    }

    #[test]
    fn the_bundled_example_converts_to_a_config_that_passes_check() {
        let source = include_str!("../../examples/litellm/config.yaml");
        let (conversion, config) = convert_ok(source);
        // Fallbacks are not followed transitively (claude-sonnet's own fallback is its own).
        assert_eq!(
            shape(model(&config, "gpt-4o")),
            [
                t("openai", "gpt-4o", 2, 0),
                t("azure-my-company", "gpt-4o-prod", 1, 0),
                t("anthropic", "claude-sonnet-4-5", 1, 1),
            ],
            "{}",
            conversion.yaml
        );
        assert_eq!(
            shape(model(&config, "gpt-4")),
            shape(model(&config, "gpt-4o"))
        );
        assert_eq!(
            shape(model(&config, "claude-sonnet")),
            [
                t("anthropic", "claude-sonnet-4-5", 1, 0),
                t(
                    "bedrock-us-east-1",
                    "anthropic.claude-3-5-sonnet-20240620-v1:0",
                    1,
                    1
                ),
            ]
        );
        assert!(config.providers.iter().all(|p| p.api_key_env.is_some()
            || p.kind == ProviderKind::Bedrock
            || p.endpoint.value.starts_with("http://")));
        // The local pair fails over by order; its timeout bounds each try.
        let llama = model(&config, "llama");
        assert_eq!(
            shape(llama),
            [
                t(
                    "hosted-vllm-gpu-box-8000",
                    "meta-llama/Llama-3.1-8B-Instruct",
                    1,
                    0
                ),
                t("ollama", "llama3.1", 1, 1),
            ]
        );
        assert_eq!(
            llama
                .retry
                .as_ref()
                .and_then(|r| r.per_try_timeout_secs.as_ref())
                .map(|s| s.value),
            Some(60)
        );
        // Its keys are all environment references: nothing about them is reported.
        assert!(conversion
            .unconverted
            .iter()
            .all(|u| !u.path.ends_with("api_key")));
    }
}
