//! `gantry import litellm`: a LiteLLM proxy `config.yaml` turned into a Gantry config.
//!
//! What carries over: `model_list` (deployments sharing a `model_name` become one alias with
//! several targets; `weight` and `order` become target weight and priority; the provider prefix
//! of `litellm_params.model` picks the provider kind and its default endpoint; `os.environ/NAME`
//! credentials become `*_env` fields), `fallbacks` (the fallback groups' targets follow at the
//! next priorities), `num_retries` (`retry.attempts`), `timeout`/`request_timeout` (provider
//! `timeout_secs`) and aliases (`router_settings.model_group_alias`,
//! `litellm_settings.model_alias_map`). Everything else is reported by its path, with why; a
//! literal secret is never copied.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use gantry_policy::config::{MAX_ATTEMPTS, MAX_TARGETS};

/// A setting of the LiteLLM file that the Gantry config does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconverted {
    /// Where it is, e.g. `router_settings.routing_strategy` or `model_list[2].litellm_params.rpm`.
    pub path: String,
    pub reason: String,
}

/// The Gantry config made from a LiteLLM file, and what it left out.
#[derive(Debug)]
pub struct Conversion {
    pub yaml: String,
    pub unconverted: Vec<Unconverted>,
}

impl Conversion {
    /// The report, one line per setting left out.
    pub fn report(&self) -> String {
        self.unconverted
            .iter()
            .map(|u| format!("{}: {}\n", u.path, u.reason))
            .collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("the file is not valid YAML: {0}")]
    Yaml(String),
    #[error("the file is not a LiteLLM config: its top level must be a mapping")]
    NotAMapping,
    #[error("the file has no model_list (a list of models): there is nothing to import")]
    NoModelList,
    #[error("{path}: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("no model of the file could be carried over (see the report): {0}")]
    NothingConverted(String),
}

#[derive(Serialize)]
struct OutConfig {
    listen: String,
    admin: String,
    ext_proc: OutListen,
    providers: Vec<OutProvider>,
    models: Vec<OutModel>,
}

#[derive(Serialize)]
struct OutListen {
    listen: String,
}

#[derive(Serialize, Clone, PartialEq, Eq)]
struct OutProvider {
    name: String,
    kind: &'static str,
    endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_access_key_id_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_secret_access_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_session_token_env: Option<String>,
}

#[derive(Serialize)]
struct OutModel {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    targets: Vec<OutTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<OutRetry>,
}

#[derive(Serialize, Clone)]
struct OutTarget {
    provider: String,
    model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u32>,
}

#[derive(Serialize)]
struct OutRetry {
    attempts: u32,
}

/// How a LiteLLM provider prefix maps onto a Gantry provider.
struct KindOf {
    /// The Gantry provider name stem (`openai`, `groq`, ...).
    stem: &'static str,
    kind: &'static str,
    /// The endpoint when the deployment has no `api_base` (None: it must have one).
    endpoint: Option<&'static str>,
    /// The variable LiteLLM reads the key from when the deployment names none.
    key_env: Option<&'static str>,
}

fn kind_of(prefix: &str) -> Option<KindOf> {
    let k = |stem, kind, endpoint, key_env| {
        Some(KindOf {
            stem,
            kind,
            endpoint,
            key_env,
        })
    };
    match prefix {
        "openai" | "text-completion-openai" => k(
            "openai",
            "openai",
            Some("https://api.openai.com"),
            Some("OPENAI_API_KEY"),
        ),
        "openai_like" | "hosted_vllm" | "vllm" | "lm_studio" | "llamafile" | "litellm_proxy" => {
            k(stem_of(prefix), "openai", None, None)
        }
        "ollama" | "ollama_chat" => k("ollama", "openai", Some("http://localhost:11434"), None),
        "groq" => k(
            "groq",
            "openai",
            Some("https://api.groq.com/openai"),
            Some("GROQ_API_KEY"),
        ),
        "mistral" => k(
            "mistral",
            "openai",
            Some("https://api.mistral.ai"),
            Some("MISTRAL_API_KEY"),
        ),
        "deepseek" => k(
            "deepseek",
            "openai",
            Some("https://api.deepseek.com"),
            Some("DEEPSEEK_API_KEY"),
        ),
        "openrouter" => k(
            "openrouter",
            "openai",
            Some("https://openrouter.ai/api"),
            Some("OPENROUTER_API_KEY"),
        ),
        "together_ai" => k(
            "together",
            "openai",
            Some("https://api.together.xyz"),
            Some("TOGETHERAI_API_KEY"),
        ),
        "fireworks_ai" => k(
            "fireworks",
            "openai",
            Some("https://api.fireworks.ai/inference"),
            Some("FIREWORKS_AI_API_KEY"),
        ),
        "xai" => k(
            "xai",
            "openai",
            Some("https://api.x.ai"),
            Some("XAI_API_KEY"),
        ),
        "azure" => k("azure", "azure_openai", None, Some("AZURE_API_KEY")),
        "anthropic" => k(
            "anthropic",
            "anthropic",
            Some("https://api.anthropic.com"),
            Some("ANTHROPIC_API_KEY"),
        ),
        "gemini" => k(
            "gemini",
            "gemini",
            Some("https://generativelanguage.googleapis.com"),
            Some("GEMINI_API_KEY"),
        ),
        "bedrock" => k("bedrock", "bedrock", None, None),
        _ => None,
    }
}

fn stem_of(prefix: &str) -> &'static str {
    match prefix {
        "hosted_vllm" | "vllm" => "vllm",
        "lm_studio" => "lm-studio",
        "llamafile" => "llamafile",
        "litellm_proxy" => "litellm-proxy",
        _ => "openai-compatible",
    }
}

/// Which settings of each section carry over (the rest is reported).
const ROUTER_CARRIED: &[&str] = &["fallbacks", "num_retries", "timeout", "model_group_alias"];
const LITELLM_CARRIED: &[&str] = &[
    "fallbacks",
    "num_retries",
    "request_timeout",
    "model_alias_map",
];
const PARAMS_CARRIED: &[&str] = &[
    "model",
    "api_base",
    "api_key",
    "api_version",
    "aws_region_name",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "weight",
    "order",
    "timeout",
];

struct Converter {
    unconverted: Vec<Unconverted>,
    providers: Vec<OutProvider>,
    /// Alias → its own targets, in file order.
    groups: Vec<(String, Vec<OutTarget>)>,
}

impl Converter {
    fn report(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.unconverted.push(Unconverted {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// The provider's name, adding it when it is new.
    fn provider(&mut self, stem: &str, mut provider: OutProvider) -> String {
        if let Some(same) = self.providers.iter().find(|p| {
            OutProvider {
                name: String::new(),
                ..(*p).clone()
            } == provider
        }) {
            return same.name.clone();
        }
        let mut name = stem.to_string();
        let mut n = 2;
        while self.providers.iter().any(|p| p.name == name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        provider.name = name.clone();
        self.providers.push(provider);
        name
    }

    fn group(&mut self, alias: &str) -> &mut Vec<OutTarget> {
        if let Some(i) = self.groups.iter().position(|(name, _)| name == alias) {
            return &mut self.groups[i].1;
        }
        self.groups.push((alias.to_string(), Vec::new()));
        &mut self.groups.last_mut().expect("just pushed").1
    }
}

/// The name of the variable an `os.environ/NAME` value names.
fn env_name(value: &Value) -> Option<&str> {
    value.as_str()?.strip_prefix("os.environ/")
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn seconds(value: &Value) -> Option<u64> {
    let secs = value.as_f64()?;
    (secs > 0.0).then(|| secs.ceil() as u64)
}

/// Converts a LiteLLM proxy config to a Gantry config listening on the usual local ports.
pub fn convert(source: &str) -> Result<Conversion, ImportError> {
    let file: Value =
        serde_saphyr::from_str(source).map_err(|e| ImportError::Yaml(e.to_string()))?;
    let Value::Object(top) = &file else {
        return Err(ImportError::NotAMapping);
    };
    let Some(Value::Array(model_list)) = top.get("model_list") else {
        return Err(ImportError::NoModelList);
    };
    let mut c = Converter {
        unconverted: Vec::new(),
        providers: Vec::new(),
        groups: Vec::new(),
    };
    let empty = serde_json::Map::new();
    let section = |name: &str| match top.get(name) {
        Some(Value::Object(map)) => map,
        _ => &empty,
    };
    let router = section("router_settings");
    let litellm = section("litellm_settings");
    for (key, _) in top {
        match key.as_str() {
            "model_list" | "router_settings" | "litellm_settings" => {}
            "environment_variables" => c.report(
                key.clone(),
                "not copied (values may be secrets): set these variables in Gantry's environment",
            ),
            "general_settings" => {
                for (setting, _) in section("general_settings") {
                    let reason = match setting.as_str() {
                        "master_key" => "Gantry has no master key: callers authenticate with auth.api_keys (gantry key new) or JWTs",
                        "database_url" | "store_model_in_db" => "Gantry keeps its config in the file; spend goes to governance.spend_log",
                        _ => "no Gantry equivalent",
                    };
                    c.report(format!("general_settings.{setting}"), reason);
                }
            }
            other => c.report(
                other.to_string(),
                "unknown LiteLLM section: not carried over",
            ),
        }
    }
    for (setting, _) in router {
        if !ROUTER_CARRIED.contains(&setting.as_str()) {
            let reason = match setting.as_str() {
                "routing_strategy" => "Gantry spreads by weight within a priority and fails over by priority",
                "allowed_fails" | "cooldown_time" => "Gantry ejects a target after 5 consecutive 5xx for 30 s (Envoy outlier detection)",
                "context_window_fallbacks" | "content_policy_fallbacks" | "default_fallbacks" => "Gantry fails over on 429, 5xx, timeouts and connection failures only",
                s if s.starts_with("redis") => "Gantry's shared state is governance.store (kind: redis)",
                _ => "no Gantry equivalent",
            };
            c.report(format!("router_settings.{setting}"), reason);
        }
    }
    for (setting, _) in litellm {
        if !LITELLM_CARRIED.contains(&setting.as_str()) {
            let reason = match setting.as_str() {
                "drop_params" => "Gantry forwards unknown fields; a field a translated provider cannot take is a 400 naming it",
                "success_callback" | "failure_callback" | "callbacks" => "Gantry logs each request to Envoy's access log and /metrics",
                "cache" | "cache_params" => "Gantry has no response cache",
                "context_window_fallbacks" | "content_policy_fallbacks" | "default_fallbacks" => "Gantry fails over on 429, 5xx, timeouts and connection failures only",
                _ => "no Gantry equivalent",
            };
            c.report(format!("litellm_settings.{setting}"), reason);
        }
    }
    let global_timeout = router
        .get("timeout")
        .or_else(|| litellm.get("request_timeout"))
        .and_then(seconds);

    for (i, entry) in model_list.iter().enumerate() {
        let path = format!("model_list[{i}]");
        let bad = |reason: &str| ImportError::BadEntry {
            path: path.clone(),
            reason: reason.into(),
        };
        let Value::Object(entry) = entry else {
            return Err(bad("must be a mapping with model_name and litellm_params"));
        };
        let alias = entry
            .get("model_name")
            .and_then(text)
            .ok_or_else(|| bad("has no model_name"))?;
        let Some(Value::Object(params)) = entry.get("litellm_params") else {
            return Err(bad("has no litellm_params"));
        };
        let model = params
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no litellm_params.model"))?;
        for (key, _) in entry {
            if !matches!(key.as_str(), "model_name" | "litellm_params") {
                c.report(
                    format!("{path}.{key}"),
                    "not carried over (Gantry's pricing is governance.pricing)",
                );
            }
        }
        for (key, _) in params {
            if !PARAMS_CARRIED.contains(&key.as_str()) {
                let reason = match key.as_str() {
                    "rpm" | "tpm" => "per-deployment limits: Gantry's rate limits are governance.rate_limits, per caller",
                    "input_cost_per_token" | "output_cost_per_token" => "prices go to governance.pricing.models (USD per million tokens)",
                    "max_retries" => "Gantry retries per alias (retry.attempts)",
                    _ => "no Gantry equivalent",
                };
                c.report(format!("{path}.litellm_params.{key}"), reason);
            }
        }
        if alias.contains('*') || model.contains('*') {
            c.report(
                path.clone(),
                format!(
                    "wildcard '{alias}' is not carried over: list each model Gantry should serve"
                ),
            );
            continue;
        }
        let (prefix, upstream) = model.split_once('/').unwrap_or(("", model));
        let (prefix, upstream) = if prefix.is_empty() {
            c.report(
                format!("{path}.litellm_params.model"),
                format!("'{model}' names no provider: taken as openai/{model}"),
            );
            ("openai", upstream)
        } else {
            (prefix, upstream)
        };
        let Some(kind) = kind_of(prefix) else {
            c.report(
                format!("{path}.litellm_params.model"),
                format!("provider '{prefix}' is not a Gantry provider kind (openai and compatible, azure_openai, anthropic, gemini, bedrock): '{alias}' left out"),
            );
            continue;
        };
        let upstream = match kind.kind {
            "bedrock" => upstream.strip_prefix("converse/").unwrap_or(upstream),
            _ => upstream,
        }
        .to_string();
        let region = params.get("aws_region_name").and_then(text);
        let endpoint = match (params.get("api_base").and_then(Value::as_str), kind.kind) {
            (Some(base), _) => {
                let base = base.trim_end_matches('/');
                base.strip_suffix("/v1").unwrap_or(base).to_string()
            }
            (None, "bedrock") => format!(
                "https://bedrock-runtime.{}.amazonaws.com",
                region.as_deref().unwrap_or("us-east-1")
            ),
            (None, _) => match kind.endpoint {
                Some(endpoint) => endpoint.to_string(),
                None => {
                    c.report(
                        format!("{path}.litellm_params.api_base"),
                        format!("provider '{prefix}' needs an api_base: '{alias}' left out"),
                    );
                    continue;
                }
            },
        };
        if kind.kind == "bedrock" && region.is_none() {
            c.report(
                format!("{path}.litellm_params.aws_region_name"),
                "not set: us-east-1 assumed (set region on the provider)",
            );
        }
        let mut credential = |field: &str, default: Option<&str>| -> Option<String> {
            match params.get(field) {
                None => default.map(str::to_string),
                Some(value) => match env_name(value) {
                    Some(name) => Some(name.to_string()),
                    None => {
                        let suggested = default.map_or_else(
                            || {
                                format!(
                                    "{}_{}",
                                    kind.stem.to_uppercase().replace('-', "_"),
                                    field.to_uppercase()
                                )
                            },
                            str::to_string,
                        );
                        c.unconverted.push(Unconverted {
                            path: format!("{path}.litellm_params.{field}"),
                            reason: format!("a literal secret is not copied: set it in ${suggested} (the generated config reads that variable)"),
                        });
                        Some(suggested)
                    }
                },
            }
        };
        let mut provider = OutProvider {
            name: String::new(),
            kind: kind.kind,
            endpoint,
            api_key_env: None,
            timeout_secs: params.get("timeout").and_then(seconds).or(global_timeout),
            api_version: None,
            region: None,
            aws_access_key_id_env: None,
            aws_secret_access_key_env: None,
            aws_session_token_env: None,
        };
        if kind.kind == "bedrock" {
            provider.region = Some(region.unwrap_or_else(|| "us-east-1".into()));
            provider.aws_access_key_id_env = credential("aws_access_key_id", None);
            provider.aws_secret_access_key_env = credential("aws_secret_access_key", None);
            provider.aws_session_token_env = credential("aws_session_token", None);
        } else {
            provider.api_key_env = credential("api_key", kind.key_env);
        }
        if kind.kind == "azure_openai" {
            provider.api_version = params.get("api_version").and_then(text);
        } else if params.contains_key("api_version") {
            c.report(
                format!("{path}.litellm_params.api_version"),
                "applies to Azure only",
            );
        }
        let provider_name = c.provider(kind.stem, provider);
        let weight = params
            .get("weight")
            .and_then(Value::as_f64)
            .map(|w| w.round().clamp(1.0, 128.0) as u32);
        if let Some(w) = params.get("weight").and_then(Value::as_f64) {
            if !(1.0..=128.0).contains(&w) || w.fract() != 0.0 {
                c.report(
                    format!("{path}.litellm_params.weight"),
                    format!(
                        "{w} became {} (Gantry weights are whole numbers from 1 to 128)",
                        weight.unwrap_or(1)
                    ),
                );
            }
        }
        let priority = params
            .get("order")
            .and_then(Value::as_u64)
            .map(|o| (o.saturating_sub(1)).min(9) as u32)
            .filter(|p| *p > 0);
        c.group(&alias).push(OutTarget {
            provider: provider_name,
            model: upstream,
            weight,
            priority,
        });
    }
    if c.groups.is_empty() {
        return Err(ImportError::NothingConverted(c.report_text()));
    }

    // Fallbacks: each fallback group's targets follow, at the next priorities.
    let mut fallbacks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (section, settings) in [("router_settings", router), ("litellm_settings", litellm)] {
        match settings.get("fallbacks") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let Value::Object(map) = item else {
                        c.report(
                            format!("{section}.fallbacks[{i}]"),
                            "not a mapping of model to fallbacks",
                        );
                        continue;
                    };
                    for (from, to) in map {
                        let to: Vec<String> = match to {
                            Value::Array(names) => names.iter().filter_map(text).collect(),
                            other => text(other).into_iter().collect(),
                        };
                        fallbacks.entry(from.clone()).or_default().extend(to);
                    }
                }
            }
            Some(_) => c.report(format!("{section}.fallbacks"), "not a list"),
        }
    }
    let own: BTreeMap<String, Vec<OutTarget>> = c.groups.iter().cloned().collect();
    let mut models = Vec::new();
    let retries = router
        .get("num_retries")
        .or_else(|| litellm.get("num_retries"))
        .and_then(Value::as_u64);
    let groups = std::mem::take(&mut c.groups);
    for (alias, mut targets) in groups {
        if let Some(list) = fallbacks.remove(&alias) {
            for fallback in list {
                let Some(extra) = own.get(&fallback) else {
                    c.report(
                        "fallbacks",
                        format!("'{alias}' falls back to '{fallback}', which is not a model carried over"),
                    );
                    continue;
                };
                let next = targets
                    .iter()
                    .map(|t| t.priority.unwrap_or(0))
                    .max()
                    .unwrap_or(0)
                    + 1;
                for target in extra {
                    let priority = (next + target.priority.unwrap_or(0)).min(9);
                    if targets
                        .iter()
                        .any(|t| t.provider == target.provider && t.model == target.model)
                    {
                        continue; // already a target, tried earlier
                    }
                    if targets.len() == MAX_TARGETS {
                        c.report(
                            "fallbacks",
                            format!("'{alias}' has more than {MAX_TARGETS} targets with its fallbacks: '{fallback}' cut"),
                        );
                        break;
                    }
                    targets.push(OutTarget {
                        priority: Some(priority),
                        ..target.clone()
                    });
                }
            }
        }
        models.push(model_of(&alias, targets, retries, &mut c));
    }
    for (from, _) in fallbacks {
        c.report(
            "fallbacks",
            format!("'{from}' is not a model carried over: its fallbacks are left out"),
        );
    }
    let mut aliases: Vec<(String, String, String)> = Vec::new();
    for (section, key) in [
        ("router_settings", "model_group_alias"),
        ("litellm_settings", "model_alias_map"),
    ] {
        let settings = if section == "router_settings" {
            router
        } else {
            litellm
        };
        if let Some(Value::Object(map)) = settings.get(key) {
            for (name, target) in map {
                let target = match target {
                    Value::Object(spec) => spec.get("model").and_then(text),
                    other => text(other),
                };
                match target {
                    Some(target) => {
                        aliases.push((format!("{section}.{key}.{name}"), name.clone(), target))
                    }
                    None => c.report(format!("{section}.{key}.{name}"), "names no model"),
                }
            }
        }
    }
    for (path, name, target) in aliases {
        if models.iter().any(|m| m.name == name) {
            c.report(path, format!("'{name}' is already a model"));
            continue;
        }
        let Some(of) = models.iter().find(|m| m.name == target) else {
            c.report(path, format!("'{target}' is not a model carried over"));
            continue;
        };
        let copy = OutModel {
            name,
            provider: of.provider.clone(),
            model: of.model.clone(),
            targets: of.targets.clone(),
            retry: of.retry.as_ref().map(|r| OutRetry {
                attempts: r.attempts,
            }),
        };
        models.push(copy);
    }
    let config = OutConfig {
        listen: "127.0.0.1:10000".into(),
        admin: "127.0.0.1:9901".into(),
        ext_proc: OutListen {
            listen: "127.0.0.1:10001".into(),
        },
        providers: c.providers,
        models,
    };
    let body = serde_saphyr::to_string(&config).map_err(|e| ImportError::Yaml(e.to_string()))?;
    let mut yaml =
        String::from("# Converted from a LiteLLM proxy config by `gantry import litellm`.\n");
    if c.unconverted.is_empty() {
        yaml.push_str("# Every setting carried over.\n");
    } else {
        yaml.push_str("# Not carried over:\n");
        for u in &c.unconverted {
            yaml.push_str(&format!(
                "#   {}: {}\n",
                u.path,
                u.reason.replace('\n', " ")
            ));
        }
    }
    yaml.push_str(&body);
    Ok(Conversion {
        yaml,
        unconverted: c.unconverted,
    })
}

impl Converter {
    fn report_text(&self) -> String {
        self.unconverted
            .iter()
            .map(|u| format!("{}: {}", u.path, u.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn model_of(
    alias: &str,
    targets: Vec<OutTarget>,
    retries: Option<u64>,
    c: &mut Converter,
) -> OutModel {
    if let [only] = targets.as_slice() {
        return OutModel {
            name: alias.to_string(),
            provider: Some(only.provider.clone()),
            model: Some(only.model.clone()),
            targets: Vec::new(),
            retry: None,
        };
    }
    let retry = retries.map(|n| {
        let attempts = (n + 1).min(MAX_ATTEMPTS as u64) as u32;
        if n + 1 > MAX_ATTEMPTS as u64 {
            c.report(
                "num_retries",
                format!("{n} retries became {attempts} attempts for '{alias}' (Gantry tries at most {MAX_ATTEMPTS} times)"),
            );
        }
        OutRetry { attempts }
    });
    OutModel {
        name: alias.to_string(),
        provider: None,
        model: None,
        targets,
        retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_policy::ConfigFile;

    const REPRESENTATIVE: &str = r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      weight: 3
      rpm: 500
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eastus
      api_base: https://eastus.openai.azure.com/
      api_key: os.environ/AZURE_EASTUS_KEY
      api_version: "2024-10-21"
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: sk-ant-LITERAL-SECRET
  - model_name: gemini
    litellm_params: { model: gemini/gemini-2.5-flash }
  - model_name: bedrock-claude
    litellm_params:
      model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0
      aws_region_name: eu-west-1
      aws_access_key_id: os.environ/AWS_KEY_ID
      aws_secret_access_key: os.environ/AWS_SECRET
  - model_name: local
    litellm_params: { model: hosted_vllm/llama-3, api_base: "http://10.0.0.5:8000/v1", timeout: 20 }
  - model_name: palm
    litellm_params: { model: vertex_ai/gemini-pro }
  - model_name: "*"
    litellm_params: { model: "openai/*" }
router_settings:
  routing_strategy: latency-based-routing
  num_retries: 7
  timeout: 90
  fallbacks: [{ gpt-4o: [claude, gemini] }, { palm: [gemini] }]
  model_group_alias: { gpt-4: gpt-4o }
litellm_settings:
  drop_params: true
  success_callback: [langfuse]
general_settings:
  master_key: sk-1234
"#;

    #[test]
    fn a_representative_litellm_config_converts_and_reports_the_rest() {
        let conversion = convert(REPRESENTATIVE).unwrap();
        assert!(!conversion.yaml.contains("LITERAL-SECRET"));
        assert!(!conversion.yaml.contains("sk-1234"));
        let config = ConfigFile::parse(&conversion.yaml)
            .unwrap_or_else(|e| panic!("{e}\n{}", conversion.yaml));
        let provider = |name: &str| {
            config
                .providers
                .iter()
                .find(|p| p.name.value == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(provider("openai").endpoint.value, "https://api.openai.com");
        assert_eq!(
            provider("azure").endpoint.value,
            "https://eastus.openai.azure.com"
        );
        assert_eq!(
            provider("azure").api_key_env.as_ref().unwrap().value,
            "AZURE_EASTUS_KEY"
        );
        assert_eq!(provider("azure").api_version(), "2024-10-21");
        // The literal key is replaced by the variable LiteLLM itself would read.
        assert_eq!(
            provider("anthropic").api_key_env.as_ref().unwrap().value,
            "ANTHROPIC_API_KEY"
        );
        assert_eq!(
            provider("gemini").api_key_env.as_ref().unwrap().value,
            "GEMINI_API_KEY"
        );
        let bedrock = provider("bedrock");
        assert_eq!(
            bedrock.endpoint.value,
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        assert_eq!(bedrock.region.as_ref().unwrap().value, "eu-west-1");
        assert_eq!(
            bedrock.aws_secret_access_key_env.as_ref().unwrap().value,
            "AWS_SECRET"
        );
        let vllm = provider("vllm");
        assert_eq!(vllm.endpoint.value, "http://10.0.0.5:8000");
        assert_eq!(vllm.timeout_secs, Some(20));
        assert_eq!(provider("openai").timeout_secs, Some(90));

        let model = |name: &str| {
            config
                .models
                .iter()
                .find(|m| m.name.value == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let gpt = model("gpt-4o").targets_or_single();
        let shape: Vec<(&str, &str, u32, u32)> = gpt
            .iter()
            .map(|t| {
                (
                    t.provider.value.as_str(),
                    t.model.value.as_str(),
                    t.weight,
                    t.priority,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("openai", "gpt-4o", 3, 0),
                ("azure", "gpt-4o-eastus", 1, 0),
                ("anthropic", "claude-sonnet-4-5", 1, 1),
                ("gemini", "gemini-2.5-flash", 1, 2),
            ]
        );
        assert_eq!(model("gpt-4o").attempts(), 5);
        assert_eq!(model("gpt-4").targets_or_single().len(), 4);
        assert_eq!(model("local").model.as_ref().unwrap().value, "llama-3");
        assert!(config
            .models
            .iter()
            .all(|m| m.name.value != "palm" && m.name.value != "*"));

        let paths: Vec<&str> = conversion
            .unconverted
            .iter()
            .map(|u| u.path.as_str())
            .collect();
        for expected in [
            "general_settings.master_key",
            "router_settings.routing_strategy",
            "litellm_settings.drop_params",
            "litellm_settings.success_callback",
            "model_list[0].litellm_params.rpm",
            "model_list[2].litellm_params.api_key",
            "model_list[6].litellm_params.model",
            "model_list[7]",
            "num_retries",
            "fallbacks",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        assert_eq!(paths.len(), 10, "{paths:?}");
        assert!(conversion.yaml.starts_with("# Converted"));
        assert!(conversion
            .yaml
            .contains("#   router_settings.routing_strategy:"));
    }

    #[test]
    fn bad_files_are_named() {
        assert!(matches!(
            convert("model_list: [").unwrap_err(),
            ImportError::Yaml(_)
        ));
        assert_eq!(convert("- a\n- b\n").unwrap_err(), ImportError::NotAMapping);
        assert_eq!(
            convert("general_settings: {}\n").unwrap_err(),
            ImportError::NoModelList
        );
        assert_eq!(
            convert("model_list:\n  - litellm_params: { model: openai/x }\n")
                .unwrap_err()
                .to_string(),
            "model_list[0]: has no model_name"
        );
        assert_eq!(
            convert("model_list:\n  - { model_name: a, litellm_params: {} }\n")
                .unwrap_err()
                .to_string(),
            "model_list[0]: has no litellm_params.model"
        );
        assert!(matches!(
            convert("model_list:\n  - { model_name: a, litellm_params: { model: vertex_ai/x } }\n")
                .unwrap_err(),
            ImportError::NothingConverted(_)
        ));
    }

    #[test]
    fn the_bundled_example_converts_to_a_valid_config() {
        let source = include_str!("../../examples/litellm/config.yaml");
        let conversion = convert(source).unwrap();
        ConfigFile::parse(&conversion.yaml).unwrap_or_else(|e| panic!("{e}\n{}", conversion.yaml));
    }
}
