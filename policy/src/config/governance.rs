//! The `governance` section of the config: where counters live (`store`), prices, budgets,
//! rate limits and the spend log.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{check_name, is_env_var_name, issue, ConfigIssue, FailureMode};
use crate::governance::scope::compile_template;

/// Where the embedded store keeps its file unless configured (relative to the working
/// directory of the Gantry process).
pub const DEFAULT_STORE_PATH: &str = ".gantry/gantry.db";
/// The environment variable holding the Redis URL unless configured.
pub const DEFAULT_REDIS_URL_ENV: &str = "GANTRY_REDIS_URL";
/// How long one store call may take unless configured.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 200;
/// Output tokens reserved for a request that does not bound its output (`max_tokens`).
pub const DEFAULT_OUTPUT_TOKENS: u64 = 1024;
/// How long an unsettled reservation holds (the process died mid-request) unless configured.
pub const DEFAULT_RESERVATION_LEASE_SECS: u64 = 900;
/// Redis compares dollar amounts as doubles: exact up to 2^53 nano-dollars.
pub const MAX_BUDGET_USD: f64 = 9_000_000.0;

/// Budgets, rate limits, prices and the spend log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSection {
    #[serde(default)]
    pub store: StoreSection,
    /// What happens when the store cannot be reached.
    #[serde(default)]
    pub failure_mode: GovernanceFailureModes,
    /// IANA time zone in which calendar windows (day, week, month) reset (default `UTC`).
    #[serde(default)]
    pub time_zone: Option<Spanned<String>>,
    #[serde(default)]
    pub pricing: PricingSection,
    #[serde(default)]
    pub estimates: EstimatesSection,
    #[serde(default)]
    pub budgets: Vec<BudgetSection>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSection>,
    #[serde(default)]
    pub spend_log: SpendLogSection,
}

/// Where budget counters, rate buckets and the spend log live (`kind: embedded` or
/// `kind: redis`, with the fields of that kind).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawStoreSection")]
pub enum StoreSection {
    /// A SQLite file owned by this one Gantry process (nothing to install).
    Embedded {
        /// The database file (default `.gantry/gantry.db`).
        #[serde(default)]
        path: Option<Spanned<String>>,
        /// `normal` (default): survives a crash of the process; `full`: also a power loss,
        /// at the price of an fsync per commit.
        #[serde(default)]
        durability: StoreDurability,
    },
    /// A Redis server shared by every replica.
    Redis {
        /// The environment variable holding the URL, e.g. `redis://:password@host:6379/0`
        /// (default `GANTRY_REDIS_URL`).
        #[serde(default)]
        url_env: Option<Spanned<String>>,
        /// The URL itself, for a Redis without password (a URL with one must come from
        /// `url_env`).
        #[serde(default)]
        url: Option<Spanned<String>>,
        /// Prefix of every key Gantry writes (default `gantry`).
        #[serde(default)]
        key_prefix: Option<String>,
        /// Deadline of one store call in milliseconds (default 200).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// The store section as written: one flat mapping, so that its values keep their lines (an
/// internally tagged enum buffers its fields and loses them).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreSection {
    kind: StoreKind,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    durability: Option<StoreDurability>,
    #[serde(default)]
    url_env: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    key_prefix: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoreKind {
    Embedded,
    Redis,
}

impl TryFrom<RawStoreSection> for StoreSection {
    type Error = String;

    fn try_from(raw: RawStoreSection) -> Result<StoreSection, String> {
        let misplaced = |kind: &str, fields: &[(&str, bool)]| {
            let set: Vec<&str> = fields
                .iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| *name)
                .collect();
            if set.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "governance.store: {} not valid for kind: {kind}",
                    set.join(", ")
                ))
            }
        };
        match raw.kind {
            StoreKind::Embedded => {
                misplaced(
                    "embedded",
                    &[
                        ("url_env", raw.url_env.is_some()),
                        ("url", raw.url.is_some()),
                        ("key_prefix", raw.key_prefix.is_some()),
                        ("timeout_ms", raw.timeout_ms.is_some()),
                    ],
                )?;
                Ok(StoreSection::Embedded {
                    path: raw.path,
                    durability: raw.durability.unwrap_or_default(),
                })
            }
            StoreKind::Redis => {
                misplaced(
                    "redis",
                    &[
                        ("path", raw.path.is_some()),
                        ("durability", raw.durability.is_some()),
                    ],
                )?;
                Ok(StoreSection::Redis {
                    url_env: raw.url_env,
                    url: raw.url,
                    key_prefix: raw.key_prefix,
                    timeout_ms: raw.timeout_ms,
                })
            }
        }
    }
}

impl Default for StoreSection {
    fn default() -> StoreSection {
        StoreSection::Embedded {
            path: None,
            durability: StoreDurability::Normal,
        }
    }
}

impl StoreSection {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSection::Embedded { .. } => "embedded",
            StoreSection::Redis { .. } => "redis",
        }
    }

    /// The embedded store's file.
    pub fn embedded_path(&self) -> Option<&str> {
        match self {
            StoreSection::Embedded { path, .. } => Some(
                path.as_ref()
                    .map(|p| p.value.as_str())
                    .unwrap_or(DEFAULT_STORE_PATH),
            ),
            StoreSection::Redis { .. } => None,
        }
    }

    /// The Redis URL: from the config, else from the environment variable (through `env`).
    pub fn redis_url(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            StoreSection::Embedded { .. } => Err("the store is not redis".into()),
            StoreSection::Redis { url: Some(url), .. } => Ok(url.value.clone()),
            StoreSection::Redis { url_env, .. } => {
                let name = url_env
                    .as_ref()
                    .map(|n| n.value.as_str())
                    .unwrap_or(DEFAULT_REDIS_URL_ENV);
                env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                    format!("the Redis store needs its URL in the environment variable {name}")
                })
            }
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        match self {
            StoreSection::Redis {
                timeout_ms: Some(ms),
                ..
            } => *ms,
            _ => DEFAULT_STORE_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreDurability {
    #[default]
    Normal,
    Full,
}

/// What a request meets when the store cannot be reached.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceFailureModes {
    /// `closed` (default): requests a budget applies to get 503; `open`: they pass unmetered.
    #[serde(default)]
    pub budgets: FailureMode,
    /// `closed` (default): requests a rate limit applies to get 503; `open`: they pass.
    #[serde(default)]
    pub rate_limits: FailureMode,
}

impl Default for GovernanceFailureModes {
    fn default() -> Self {
        GovernanceFailureModes {
            budgets: FailureMode::Closed,
            rate_limits: FailureMode::Closed,
        }
    }
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    /// Use Gantry's built-in prices for well-known models (default true).
    #[serde(default = "yes")]
    pub builtin: bool,
    /// Prices by alias or by upstream model name; they win over the built-in ones.
    #[serde(default)]
    pub models: BTreeMap<String, PriceSection>,
    /// The price of a model found nowhere else: it prices the spend log and audit budgets,
    /// and requests under an enforced dollar budget only with `unpriced: default`.
    #[serde(default)]
    pub default: Option<PriceSection>,
    /// A request an enforced (`action: block`) dollar budget applies to, for a model priced
    /// neither in `models` nor by the built-in table: `refuse` (default, 400 naming the model,
    /// even when `default` is set) or `default` (priced by `pricing.default`). Audit budgets
    /// never refuse: they count such a request at the default price, or at zero without one.
    #[serde(default)]
    pub unpriced: UnpricedModels,
}

impl Default for PricingSection {
    fn default() -> Self {
        PricingSection {
            builtin: true,
            models: BTreeMap::new(),
            default: None,
            unpriced: UnpricedModels::Refuse,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnpricedModels {
    #[default]
    Refuse,
    Default,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub input: f64,
    pub output: f64,
    /// Input tokens read from the provider's prompt cache (default: the input price).
    #[serde(default)]
    pub cached_input: Option<f64>,
}

/// How admission estimates a request before it runs.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimatesSection {
    /// Output tokens reserved when the request does not set `max_tokens` (default 1024).
    #[serde(default)]
    pub default_output_tokens: Option<u64>,
    /// How long a reservation holds if its request never ends (default 900 s).
    #[serde(default)]
    pub reservation_lease_secs: Option<u64>,
}

/// One budget: a limit per scope and window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    pub name: Spanned<String>,
    /// CEL expression giving the scope's key, e.g. `"team:" + principal.team` or `"global"`.
    /// When it cannot be evaluated (the principal has no team), the budget does not apply.
    pub scope: Spanned<String>,
    /// Optional CEL condition: the budget applies only when it is true.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    /// Limit in US dollars.
    #[serde(default)]
    pub usd: Option<f64>,
    /// Limit in tokens (input + output).
    #[serde(default)]
    pub tokens: Option<u64>,
    pub window: BudgetWindow,
    /// `block` (default): refuse with 429 when a request would go over; `audit`: count, log
    /// and let it through.
    #[serde(default)]
    pub action: BudgetAction,
}

/// When a budget's counter starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetWindow {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    /// Never resets.
    Total,
}

impl BudgetWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetWindow::Minute => "minute",
            BudgetWindow::Hour => "hour",
            BudgetWindow::Day => "day",
            BudgetWindow::Week => "week",
            BudgetWindow::Month => "month",
            BudgetWindow::Total => "total",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    #[default]
    Block,
    Audit,
}

/// Requests and tokens per minute for a scope, shared by every replica using the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub name: Spanned<String>,
    /// CEL expression giving the scope's key (as for budgets).
    pub scope: Spanned<String>,
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Input plus output tokens per minute (reserved from the estimate, corrected with the
    /// real usage).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

/// The per-request spend log.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendLogSection {
    /// Record every LLM request (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Delete records older than this many days (default: keep them all).
    #[serde(default)]
    pub retention_days: Option<u64>,
}

impl Default for SpendLogSection {
    fn default() -> Self {
        SpendLogSection {
            enabled: true,
            retention_days: None,
        }
    }
}

impl GovernanceSection {
    pub fn default_output_tokens(&self) -> u64 {
        self.estimates
            .default_output_tokens
            .unwrap_or(DEFAULT_OUTPUT_TOKENS)
    }

    pub fn reservation_lease_secs(&self) -> u64 {
        self.estimates
            .reservation_lease_secs
            .unwrap_or(DEFAULT_RESERVATION_LEASE_SECS)
    }

    pub fn time_zone_name(&self) -> &str {
        self.time_zone
            .as_ref()
            .map(|t| t.value.as_str())
            .unwrap_or("UTC")
    }

    pub(super) fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        match &self.store {
            StoreSection::Embedded { path, .. } => {
                if let Some(path) = path {
                    if path.value.trim().is_empty() {
                        issues.push(issue(
                            "governance.store.path",
                            path.referenced.line(),
                            "must not be empty".into(),
                        ));
                    }
                }
            }
            StoreSection::Redis {
                url_env,
                url,
                timeout_ms,
                key_prefix,
            } => {
                if let Some(name) = url_env {
                    if !is_env_var_name(&name.value) {
                        issues.push(issue(
                            "governance.store.url_env",
                            name.referenced.line(),
                            format!("'{}' is not an environment variable name", name.value),
                        ));
                    }
                }
                if let Some(url) = url {
                    let line = url.referenced.line();
                    match url::Url::parse(&url.value) {
                        Ok(parsed) if matches!(parsed.scheme(), "redis" | "rediss") => {
                            if parsed.password().is_some() {
                                issues.push(issue(
                                    "governance.store.url",
                                    line,
                                    "holds a password: put the URL in an environment variable and name it in url_env".into(),
                                ));
                            }
                        }
                        _ => issues.push(issue(
                            "governance.store.url",
                            line,
                            "must be a redis:// or rediss:// URL".into(),
                        )),
                    }
                    if url_env.is_some() {
                        issues.push(issue(
                            "governance.store.url",
                            line,
                            "set url or url_env, not both".into(),
                        ));
                    }
                }
                if *timeout_ms == Some(0) {
                    issues.push(issue(
                        "governance.store.timeout_ms",
                        0,
                        "must be at least 1".into(),
                    ));
                }
                if let Some(prefix) = key_prefix {
                    if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
                        issues.push(issue(
                            "governance.store.key_prefix",
                            0,
                            "must be non-empty, without spaces or braces".into(),
                        ));
                    }
                }
            }
        }
        if let Some(zone) = &self.time_zone {
            if jiff::tz::TimeZone::get(&zone.value).is_err() {
                issues.push(issue(
                    "governance.time_zone",
                    zone.referenced.line(),
                    format!(
                        "'{}' is not a known IANA time zone (e.g. UTC, Europe/Paris, America/New_York)",
                        zone.value
                    ),
                ));
            }
        }
        let check_price = |path: &str, price: &PriceSection, issues: &mut Vec<ConfigIssue>| {
            let values = [Some(price.input), Some(price.output), price.cached_input];
            if values
                .iter()
                .flatten()
                .any(|v| !v.is_finite() || *v < 0.0 || *v > 1_000_000.0)
            {
                issues.push(issue(
                    path,
                    0,
                    "prices are USD per million tokens, between 0 and 1000000".into(),
                ));
            }
        };
        let mut priced: HashMap<String, &str> = HashMap::new();
        for (model, price) in &self.pricing.models {
            let path = format!("governance.pricing.models.{model}");
            check_price(&path, price, issues);
            let key = model.trim().to_ascii_lowercase();
            if key.is_empty() {
                issues.push(issue(&path, 0, "the model name must not be empty".into()));
            } else if let Some(first) = priced.insert(key, model) {
                // Model names are matched case-insensitively: one of the two would be ignored.
                issues.push(issue(
                    &path,
                    0,
                    format!("'{model}' and '{first}' name the same model (names are matched case-insensitively)"),
                ));
            }
        }
        if let Some(default) = &self.pricing.default {
            check_price("governance.pricing.default", default, issues);
        }
        if self.pricing.unpriced == UnpricedModels::Default && self.pricing.default.is_none() {
            issues.push(issue(
                "governance.pricing.unpriced",
                0,
                "'default' needs governance.pricing.default".into(),
            ));
        }
        if self.estimates.default_output_tokens == Some(0) {
            issues.push(issue(
                "governance.estimates.default_output_tokens",
                0,
                "must be at least 1".into(),
            ));
        }
        if let Some(days) = self.spend_log.retention_days {
            if days == 0 || days > 100_000 {
                issues.push(issue(
                    "governance.spend_log.retention_days",
                    0,
                    "must be between 1 and 100000 days".into(),
                ));
            }
        }
        if self.estimates.reservation_lease_secs == Some(0) {
            issues.push(issue(
                "governance.estimates.reservation_lease_secs",
                0,
                "must be at least 1".into(),
            ));
        }

        let mut names = HashSet::new();
        for (i, budget) in self.budgets.iter().enumerate() {
            let path = format!("governance.budgets[{i}]");
            let scoped = Scoped {
                what: "budget",
                name: &budget.name,
                scope: &budget.scope,
                when: budget.when.as_ref(),
            };
            scoped.check(&path, &mut names, issues);
            if budget.usd.is_none() && budget.tokens.is_none() {
                issues.push(issue(
                    &path,
                    budget.name.referenced.line(),
                    "set a limit: usd, tokens, or both".into(),
                ));
            }
            if let Some(usd) = budget.usd {
                if !usd.is_finite() || usd <= 0.0 || usd > MAX_BUDGET_USD {
                    issues.push(issue(
                        &format!("{path}.usd"),
                        budget.name.referenced.line(),
                        format!("must be above 0 and at most {MAX_BUDGET_USD}"),
                    ));
                }
            }
            if budget.tokens == Some(0) {
                issues.push(issue(
                    &format!("{path}.tokens"),
                    budget.name.referenced.line(),
                    "must be at least 1".into(),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, limit) in self.rate_limits.iter().enumerate() {
            let path = format!("governance.rate_limits[{i}]");
            let scoped = Scoped {
                what: "rate limit",
                name: &limit.name,
                scope: &limit.scope,
                when: limit.when.as_ref(),
            };
            scoped.check(&path, &mut names, issues);
            if limit.requests_per_minute.is_none() && limit.tokens_per_minute.is_none() {
                issues.push(issue(
                    &path,
                    limit.name.referenced.line(),
                    "set requests_per_minute, tokens_per_minute, or both".into(),
                ));
            }
            for (field, value) in [
                ("requests_per_minute", limit.requests_per_minute),
                ("tokens_per_minute", limit.tokens_per_minute),
            ] {
                if value == Some(0) {
                    issues.push(issue(
                        &format!("{path}.{field}"),
                        limit.name.referenced.line(),
                        "must be at least 1".into(),
                    ));
                }
            }
        }
    }
}

/// What budgets and rate limits share: a unique name, a scope and an optional condition.
struct Scoped<'a> {
    what: &'static str,
    name: &'a Spanned<String>,
    scope: &'a Spanned<String>,
    when: Option<&'a Spanned<String>>,
}

impl<'a> Scoped<'a> {
    fn check(&self, path: &str, names: &mut HashSet<&'a str>, issues: &mut Vec<ConfigIssue>) {
        check_name(self.name, &format!("{path}.name"), issues);
        if !names.insert(self.name.value.as_str()) {
            issues.push(issue(
                &format!("{path}.name"),
                self.name.referenced.line(),
                format!("duplicate {} name '{}'", self.what, self.name.value),
            ));
        }
        check_expression(self.scope, &format!("{path}.scope"), issues);
        if let Some(when) = self.when {
            check_expression(when, &format!("{path}.when"), issues);
        }
    }
}

fn check_expression(source: &Spanned<String>, path: &str, issues: &mut Vec<ConfigIssue>) {
    if let Err(message) = compile_template(&source.value) {
        issues.push(issue(path, source.referenced.line(), message));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigFile, FailureMode};

    use super::*;

    /// A config whose `governance` section is `governance` (indented by two spaces); the
    /// section starts on line 10.
    fn config(governance: &str) -> String {
        format!(
            "\
listen: 127.0.0.1:10000
providers:
  - name: openai
    kind: openai
    endpoint: https://api.openai.com
models:
  - name: fast
    provider: openai
    model: gpt-4o-mini
governance:
{governance}"
        )
    }

    fn problems(governance: &str) -> String {
        let text = config(governance);
        match ConfigFile::parse(&text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_problems(governance: &str, needles: &[&str]) {
        let err = problems(governance);
        for needle in needles {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        let count = err.lines().filter(|l| l.starts_with("  - ")).count();
        assert_eq!(count, needles.len(), "unexpected problems in:\n{err}");
    }

    #[test]
    fn accepts_a_full_section_and_applies_defaults() {
        let text = config(
            r#"  store:
    kind: redis
    url_env: MY_REDIS
    key_prefix: gw
    timeout_ms: 50
  failure_mode:
    budgets: open
  time_zone: Europe/Paris
  pricing:
    builtin: false
    models:
      fast: { input: 0.5, output: 1.5, cached_input: 0.25 }
    default: { input: 1, output: 2 }
    unpriced: default
  estimates:
    default_output_tokens: 256
  budgets:
    - name: team-daily
      scope: '"team:" + principal.team'
      when: 'jwt.groups.exists(g, g == "paying")'
      usd: 25.5
      window: day
    - name: key-total
      scope: '"key:" + principal.key'
      tokens: 1000000
      window: total
      action: audit
  rate_limits:
    - name: per-key
      scope: '"key:" + principal.key'
      tokens_per_minute: 60000
  spend_log:
    enabled: false
"#,
        );
        let config = ConfigFile::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let governance = config.governance.expect("section");
        assert_eq!(governance.store.kind(), "redis");
        assert_eq!(governance.store.timeout_ms(), 50);
        assert_eq!(governance.store.embedded_path(), None);
        let env = |name: &str| (name == "MY_REDIS").then(|| "redis://redis:6379/0".to_string());
        assert_eq!(
            governance.store.redis_url(&env).as_deref(),
            Ok("redis://redis:6379/0")
        );
        let err = governance.store.redis_url(&|_| None).unwrap_err();
        assert!(err.contains("MY_REDIS"), "{err}");
        assert_eq!(governance.failure_mode.budgets, FailureMode::Open);
        assert_eq!(governance.failure_mode.rate_limits, FailureMode::Closed);
        assert_eq!(governance.time_zone_name(), "Europe/Paris");
        assert!(!governance.pricing.builtin);
        assert_eq!(governance.pricing.models["fast"].cached_input, Some(0.25));
        assert_eq!(governance.pricing.unpriced, UnpricedModels::Default);
        assert_eq!(governance.default_output_tokens(), 256);
        assert_eq!(
            governance.reservation_lease_secs(),
            DEFAULT_RESERVATION_LEASE_SECS
        );
        assert_eq!(governance.budgets[0].usd, Some(25.5));
        assert_eq!(governance.budgets[0].window, BudgetWindow::Day);
        assert_eq!(governance.budgets[0].action, BudgetAction::Block);
        assert_eq!(governance.budgets[1].window.as_str(), "total");
        assert_eq!(governance.budgets[1].action, BudgetAction::Audit);
        assert_eq!(governance.rate_limits[0].requests_per_minute, None);
        assert!(!governance.spend_log.enabled);
    }

    #[test]
    fn an_empty_section_is_embedded_utc_with_builtin_prices() {
        let config = ConfigFile::parse(&config("  {}\n")).expect("valid");
        let governance = config.governance.expect("section");
        assert_eq!(governance.store.kind(), "embedded");
        assert_eq!(governance.store.embedded_path(), Some(DEFAULT_STORE_PATH));
        assert_eq!(governance.store.timeout_ms(), DEFAULT_STORE_TIMEOUT_MS);
        let env = |name: &str| (name == DEFAULT_REDIS_URL_ENV).then(|| "x".to_string());
        assert!(governance.store.redis_url(&env).is_err(), "not redis");
        assert_eq!(governance.time_zone_name(), "UTC");
        assert!(governance.pricing.builtin);
        assert_eq!(governance.pricing.unpriced, UnpricedModels::Refuse);
        assert_eq!(governance.default_output_tokens(), DEFAULT_OUTPUT_TOKENS);
        assert_eq!(governance.failure_mode.budgets, FailureMode::Closed);
        assert!(governance.spend_log.enabled);
    }

    #[test]
    fn a_bad_time_zone_is_named_with_its_line() {
        assert_problems(
            "  time_zone: Mars/Olympus_Mons\n",
            &["governance.time_zone (line 11): 'Mars/Olympus_Mons' is not a known IANA time zone"],
        );
    }

    #[test]
    fn bad_and_duplicate_names_are_reported() {
        assert_problems(
            r#"  budgets:
    - name: team daily
      scope: '"global"'
      usd: 1
      window: day
    - name: b
      scope: '"global"'
      usd: 1
      window: day
    - name: b
      scope: '"global"'
      usd: 1
      window: day
  rate_limits:
    - name: r
      scope: '"global"'
      requests_per_minute: 1
    - name: r
      scope: '"global"'
      requests_per_minute: 1
    - name: "b:c"
      scope: '"global"'
      requests_per_minute: 1
"#,
            &[
                "governance.budgets[0].name (line 12): 'team daily' is not a valid name",
                "governance.budgets[2].name (line 20): duplicate budget name 'b'",
                "governance.rate_limits[1].name (line 28): duplicate rate limit name 'r'",
                "governance.rate_limits[2].name (line 31): 'b:c' is not a valid name",
            ],
        );
    }

    #[test]
    fn scope_and_condition_errors_name_the_path_and_line() {
        let err = problems(
            r#"  budgets:
    - name: a
      scope: '"team:" +'
      usd: 1
      window: day
    - name: b
      scope: '"team:" + principle.team'
      usd: 1
      window: day
  rate_limits:
    - name: r
      scope: '"global"'
      when: 'llm.model == "fast" && [1].exists(x, x == y)'
      requests_per_minute: 1
"#,
        );
        assert!(err.contains("3 problems in config"), "{err}");
        assert!(
            err.contains("governance.budgets[0].scope (line 13): "),
            "{err}"
        );
        assert!(
            err.contains("governance.budgets[1].scope (line 17): unknown variable 'principle' (use principal, apiKey, jwt, llm, request)"),
            "{err}"
        );
        assert!(
            err.contains("governance.rate_limits[0].when (line 23): unknown variable 'y'"),
            "{err}"
        );
    }

    #[test]
    fn every_budget_and_rate_limit_needs_a_positive_limit() {
        assert_problems(
            r#"  budgets:
    - name: none
      scope: '"global"'
      window: day
    - name: zero
      scope: '"global"'
      usd: 0
      tokens: 0
      window: day
    - name: negative
      scope: '"global"'
      usd: -5
      window: day
    - name: huge
      scope: '"global"'
      usd: 1e12
      window: day
  rate_limits:
    - name: none
      scope: '"global"'
    - name: zero
      scope: '"global"'
      requests_per_minute: 0
      tokens_per_minute: 0
"#,
            &[
                "governance.budgets[0] (line 12): set a limit: usd, tokens, or both",
                "governance.budgets[1].usd (line 15): must be above 0 and at most 9000000",
                "governance.budgets[1].tokens (line 15): must be at least 1",
                "governance.budgets[2].usd (line 20): must be above 0",
                "governance.budgets[3].usd (line 24): must be above 0",
                "governance.rate_limits[0] (line 29): set requests_per_minute, tokens_per_minute, or both",
                "governance.rate_limits[1].requests_per_minute (line 31): must be at least 1",
                "governance.rate_limits[1].tokens_per_minute (line 31): must be at least 1",
            ],
        );
    }

    #[test]
    fn a_redis_url_must_not_hold_a_password() {
        assert_problems(
            "  store:\n    kind: redis\n    url: redis://:s3cret@redis:6379/0\n",
            &["governance.store.url (line 13): holds a password: put the URL in an environment variable and name it in url_env"],
        );
        assert_problems(
            "  store:\n    kind: redis\n    url: http://redis:6379\n    url_env: REDIS\n",
            &[
                "governance.store.url (line 13): must be a redis:// or rediss:// URL",
                "governance.store.url (line 13): set url or url_env, not both",
            ],
        );
        assert_problems(
            "  store:\n    kind: redis\n    url_env: 1REDIS\n    key_prefix: 'a{b}'\n    timeout_ms: 0\n",
            &[
                "governance.store.url_env (line 13): '1REDIS' is not an environment variable name",
                "governance.store.key_prefix: must be non-empty, without spaces or braces",
                "governance.store.timeout_ms: must be at least 1",
            ],
        );
        assert_problems(
            "  store:\n    kind: embedded\n    path: ' '\n",
            &["governance.store.path (line 13): must not be empty"],
        );
        let config = ConfigFile::parse(&config(
            "  store:\n    kind: redis\n    url: rediss://gantry@redis:6380/1\n",
        ))
        .expect("a user without password is fine");
        let store = &config.governance.unwrap().store;
        assert_eq!(
            store.redis_url(&|_| None).as_deref(),
            Ok("rediss://gantry@redis:6380/1")
        );
    }

    #[test]
    fn prices_and_estimates_are_checked() {
        assert_problems(
            r#"  pricing:
    models:
      fast: { input: -1, output: 1 }
      My-Model: { input: 1, output: 1 }
      my-model: { input: 2, output: 2 }
    default: { input: 1, output: 2000000 }
    unpriced: default
  estimates:
    default_output_tokens: 0
    reservation_lease_secs: 0
"#,
            &[
                "governance.pricing.models.fast: prices are USD per million tokens",
                "governance.pricing.models.my-model: 'my-model' and 'My-Model' name the same model",
                "governance.pricing.default: prices are USD per million tokens",
                "governance.estimates.default_output_tokens: must be at least 1",
                "governance.estimates.reservation_lease_secs: must be at least 1",
            ],
        );
        assert_problems(
            "  pricing:\n    unpriced: default\n",
            &["governance.pricing.unpriced: 'default' needs governance.pricing.default"],
        );
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_syntax_errors_with_lines() {
        let err = problems("  budgets:\n    - name: a\n      scope: '\"g\"'\n      usd: 1\n      window: fortnight\n");
        assert!(
            err.contains("line 15") && err.contains("fortnight"),
            "{err}"
        );
        let err = problems(
            "  rate_limits:\n    - name: a\n      scope: '\"g\"'\n      requests_per_second: 1\n",
        );
        assert!(
            err.contains("line 14") && err.contains("unknown field `requests_per_second`"),
            "{err}"
        );
        let err = problems("  store:\n    kind: postgres\n");
        assert!(err.contains("line 12") && err.contains("postgres"), "{err}");
        let err =
            problems("  store:\n    kind: embedded\n    url: redis://r:6379\n    timeout_ms: 5\n");
        assert!(
            err.contains("line 12")
                && err.contains("governance.store: url, timeout_ms not valid for kind: embedded"),
            "{err}"
        );
        let err = problems("  store:\n    kind: redis\n    durability: full\n");
        assert!(
            err.contains("governance.store: durability not valid for kind: redis"),
            "{err}"
        );
        let err = problems("  store:\n    path: x.db\n");
        assert!(err.contains("kind"), "{err}");
    }

    #[test]
    fn spend_log_retention_is_at_least_a_day() {
        assert_problems(
            "  spend_log: { retention_days: 0 }\n",
            &["governance.spend_log.retention_days: must be between 1 and 100000 days"],
        );
        let text = config("  spend_log: { retention_days: 30 }\n");
        let parsed = ConfigFile::parse(&text).expect("valid");
        assert_eq!(
            parsed.governance.unwrap().spend_log.retention_days,
            Some(30)
        );
    }
}
