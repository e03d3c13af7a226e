//! The governance policy of a config, and the metering of one request under it.
//!
//! [`GovernancePolicy::plan`] turns a request into a [`Metering`]: the budgets and rate limits
//! that apply (scopes evaluated, windows resolved), the estimate, and the [`Admission`] to ask
//! the store for. [`Metering::judge`] turns the store's answer into response headers or a 429
//! in the OpenAI style; [`Metering::settlement`] charges the real usage (or releases) and
//! [`Metering::spend_record`] writes the spend log line.
//!
//! **How far a budget can go over.** Admission reserves each request's estimate atomically, so
//! `spent + reserved` never passes the limit at admission. A request can still cost more than
//! it reserved: its real input tokens above the estimate (exact for OpenAI-family models,
//! counted with their tokenizer; an over-estimate by design for other families) and its real
//! output above the reserved output, which is `max_tokens` when the request sets it (the
//! provider cannot exceed it) or `estimates.default_output_tokens` otherwise. So the overspend
//! of a budget is at most the sum, over the requests in flight when it was reached, of
//! (real cost − reserved cost); it is zero when every request sets `max_tokens`, carries text
//! only, and the provider counts input as its tokenizer does. Images, audio and files are
//! estimated at a flat size (see [`super::estimate`]) and can cost more.

use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use super::estimate::{estimate_request, RequestEstimate};
use super::ledger::{
    Admission, AdmissionOutcome, BudgetCharge, BudgetSettle, CounterState, Nanos, RateCharge,
    RateSettle, RateState, Refusal, ReservationId, Settlement, SpendOutcome, SpendRecord,
    NANOS_PER_USD,
};
use super::prices::{Price, PriceSource, PriceTable, PricedBy, TokenCounts};
use super::scope::{Caller, ScopeContext, ScopeFacts, ScopeTemplate, VariableUse};
use super::windows::{rfc3339_utc, window_span, WindowSpan};
use crate::admin::{RuntimeDirectory, Subject, SubjectKind};
use crate::config::{
    BudgetAction, BudgetWindow, GovernanceFailureModes, GovernanceSection, StoreSection,
    UnpricedModels,
};
use crate::openai_api::{LlmApi, LocalReply};
use crate::usage::Usage;
use crate::FailureMode;

/// A rate limit's period: one minute, in microseconds.
pub const RATE_PERIOD_US: i64 = 60_000_000;

/// Response headers naming the tightest budget that applies.
pub const BUDGET_HEADER: &str = "x-gantry-budget";
pub const BUDGET_SCOPE_HEADER: &str = "x-gantry-budget-scope";
pub const BUDGET_LIMIT_USD_HEADER: &str = "x-gantry-budget-limit-usd";
pub const BUDGET_REMAINING_USD_HEADER: &str = "x-gantry-budget-remaining-usd";
pub const BUDGET_LIMIT_TOKENS_HEADER: &str = "x-gantry-budget-limit-tokens";
pub const BUDGET_REMAINING_TOKENS_HEADER: &str = "x-gantry-budget-remaining-tokens";
pub const BUDGET_RESET_HEADER: &str = "x-gantry-budget-reset";

struct CompiledBudget {
    name: String,
    template: ScopeTemplate,
    limit_nanos: Option<Nanos>,
    limit_tokens: Option<i64>,
    window: BudgetWindow,
    enforced: bool,
}

struct CompiledRate {
    name: String,
    template: ScopeTemplate,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

/// The compiled `governance` section.
pub struct GovernancePolicy {
    budgets: Vec<CompiledBudget>,
    /// The config's budget names: a runtime budget of the same name is not applied.
    budget_names: std::collections::HashSet<String>,
    rates: Vec<CompiledRate>,
    uses: VariableUse,
    prices: PriceTable,
    unpriced: UnpricedModels,
    zone: TimeZone,
    default_output_tokens: u64,
    lease_ms: i64,
    pub failure_modes: GovernanceFailureModes,
    pub spend_log: bool,
    /// How long spend records are kept, when limited.
    pub spend_log_retention: Option<std::time::Duration>,
    pub store: StoreSection,
}

impl std::fmt::Debug for GovernancePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernancePolicy")
            .field("budgets", &self.budgets.len())
            .field("rate_limits", &self.rates.len())
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

/// A budget of the config, for listings.
#[derive(Debug, Clone, Copy)]
pub struct ConfiguredBudget<'a> {
    pub name: &'a str,
    pub scope: &'a str,
    pub limit_nanos: Option<Nanos>,
    pub limit_tokens: Option<i64>,
    pub window: BudgetWindow,
    pub enforced: bool,
}

/// A budget that applies to a caller, for status reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    pub name: String,
    /// Created through the admin API (else declared in the config).
    pub runtime: bool,
    /// The scope value, e.g. `team:research`.
    pub scope: String,
    /// The store key of its counter in the current window (as admissions charge it).
    pub counter_key: String,
    pub limit_nanos: Option<Nanos>,
    pub limit_tokens: Option<i64>,
    pub window: BudgetWindow,
    /// When the current window ends (`None` for `total`).
    pub resets_at_ms: Option<i64>,
    pub enforced: bool,
}

/// A budget limit in nano-dollars: at least one, so that a positive limit too small to count
/// does not become a limit of zero.
pub(crate) fn usd_to_nanos(usd: f64) -> Nanos {
    ((usd * NANOS_PER_USD as f64).round() as Nanos).max(1)
}

/// Nano-dollars as dollars with six decimals, rounded to the nearest micro-dollar, e.g.
/// `12.345678`; `-0.000001` for a negative amount, never `-0.000000`.
pub fn format_usd(nanos: Nanos) -> String {
    let micros = nanos.unsigned_abs().saturating_add(500) / 1000;
    let sign = if nanos < 0 && micros > 0 { "-" } else { "" };
    format!("{sign}{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it, rounded up: `20ms`,
/// `1s`, `6m0s`, `1h0m0s`.
pub fn format_reset(us: i64) -> String {
    let us = us.max(0) as u64;
    let ms = us.div_ceil(1000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = us.div_ceil(1_000_000);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

impl GovernancePolicy {
    /// Compiles a validated section.
    pub fn compile(section: &GovernanceSection) -> Result<GovernancePolicy, String> {
        let mut uses = VariableUse::default();
        let mut budgets = Vec::new();
        for b in &section.budgets {
            let template =
                ScopeTemplate::compile(&b.scope.value, b.when.as_ref().map(|w| w.value.as_str()))
                    .map_err(|e| format!("budget '{}': {e}", b.name.value))?;
            uses.add(&template);
            budgets.push(CompiledBudget {
                name: b.name.value.clone(),
                template,
                limit_nanos: b.usd.map(usd_to_nanos),
                limit_tokens: b.tokens.map(|t| t.min(i64::MAX as u64) as i64),
                window: b.window,
                enforced: b.action == BudgetAction::Block,
            });
        }
        let mut rates = Vec::new();
        for r in &section.rate_limits {
            let template =
                ScopeTemplate::compile(&r.scope.value, r.when.as_ref().map(|w| w.value.as_str()))
                    .map_err(|e| format!("rate limit '{}': {e}", r.name.value))?;
            uses.add(&template);
            rates.push(CompiledRate {
                name: r.name.value.clone(),
                template,
                requests_per_minute: r.requests_per_minute,
                tokens_per_minute: r.tokens_per_minute,
            });
        }
        let price = |p: &crate::config::PriceSection| {
            Price::from_usd_per_million(p.input, p.output, p.cached_input)
        };
        let mut overrides = std::collections::HashMap::new();
        for (model, p) in &section.pricing.models {
            overrides.insert(
                model.clone(),
                price(p).map_err(|e| format!("price of '{model}': {e}"))?,
            );
        }
        let default = section
            .pricing
            .default
            .as_ref()
            .map(price)
            .transpose()
            .map_err(|e| format!("default price: {e}"))?;
        let zone = TimeZone::get(section.time_zone_name())
            .map_err(|e| format!("time zone '{}': {e}", section.time_zone_name()))?;
        Ok(GovernancePolicy {
            budget_names: budgets.iter().map(|b| b.name.clone()).collect(),
            budgets,
            rates,
            uses,
            prices: PriceTable::new(overrides, default, section.pricing.builtin),
            unpriced: section.pricing.unpriced,
            zone,
            default_output_tokens: section.default_output_tokens(),
            lease_ms: (section.reservation_lease_secs() as i64).saturating_mul(1000),
            failure_modes: section.failure_mode,
            spend_log: section.spend_log.enabled,
            spend_log_retention: section
                .spend_log
                .retention_days
                .map(|days| std::time::Duration::from_secs(days.saturating_mul(86_400))),
            store: section.store.clone(),
        })
    }

    /// Whether scopes read `request` (the adapter must then keep the request headers).
    pub fn uses_request(&self) -> bool {
        self.uses.request()
    }

    /// The time zone calendar windows reset in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.zone
    }

    /// Whether the config declares a budget of this name.
    pub fn has_budget(&self, name: &str) -> bool {
        self.budget_names.contains(name)
    }

    /// The config's budgets: name, scope expression, limits, window, whether it refuses.
    pub fn configured_budgets(&self) -> impl Iterator<Item = ConfiguredBudget<'_>> {
        self.budgets.iter().map(|b| ConfiguredBudget {
            name: &b.name,
            scope: b.template.source(),
            limit_nanos: b.limit_nanos,
            limit_tokens: b.limit_tokens,
            window: b.window,
            enforced: b.enforced,
        })
    }

    /// The budgets that apply to a caller now (the config's whose scope evaluates, then the
    /// runtime ones on its key, user and team), with their store keys, for status reports.
    /// Scopes over the request (`request`, `llm.user`) see an empty request.
    pub fn budgets_applying(
        &self,
        facts: &ScopeFacts<'_>,
        now_ms: i64,
        runtime: &RuntimeDirectory,
    ) -> Vec<BudgetStatus> {
        let context = ScopeContext::new(facts, self.uses);
        self.applicable_budgets(&context, facts.caller, now_ms, runtime)
            .into_iter()
            .map(|b| BudgetStatus {
                runtime: !self.has_budget(&b.name),
                name: b.name,
                counter_key: format!("{}:{}", b.key, b.span.start_ms),
                scope: b.scope,
                limit_nanos: b.limit_nanos,
                limit_tokens: b.limit_tokens,
                window: b.window,
                resets_at_ms: b.span.end_ms,
                enforced: b.enforced,
            })
            .collect()
    }

    /// The rate limits that apply to a caller: name, scope value, requests and tokens per
    /// minute.
    pub fn rate_limits_applying(
        &self,
        facts: &ScopeFacts<'_>,
    ) -> Vec<(String, String, Option<u64>, Option<u64>)> {
        let context = ScopeContext::new(facts, self.uses);
        self.rates
            .iter()
            .filter_map(|rate| {
                rate.template.evaluate(&context).map(|scope| {
                    (
                        rate.name.clone(),
                        scope,
                        rate.requests_per_minute,
                        rate.tokens_per_minute,
                    )
                })
            })
            .collect()
    }

    fn applicable_budgets(
        &self,
        context: &ScopeContext,
        caller: &Caller,
        now_ms: i64,
        runtime: &RuntimeDirectory,
    ) -> Vec<AppliedBudget> {
        let mut applied = Vec::new();
        for budget in &self.budgets {
            if let Some(scope) = budget.template.evaluate(context) {
                applied.push(AppliedBudget {
                    name: budget.name.clone(),
                    key: counter_key("b", &budget.name, &scope),
                    scope,
                    limit_nanos: budget.limit_nanos,
                    limit_tokens: budget.limit_tokens,
                    window: budget.window,
                    span: window_span(budget.window, now_ms, &self.zone),
                    enforced: budget.enforced,
                    state: CounterState::default(),
                });
            }
        }
        if runtime.has_budgets() {
            let subjects = [
                (SubjectKind::Key, &caller.key),
                (SubjectKind::User, &caller.user),
                (SubjectKind::Team, &caller.team),
            ];
            for (kind, id) in subjects {
                let Some(id) = id.as_deref().filter(|id| !id.is_empty()) else {
                    continue;
                };
                for budget in runtime.budgets_for(&Subject::new(kind, id)) {
                    if self.has_budget(&budget.name) {
                        continue; // the config wins
                    }
                    applied.push(AppliedBudget {
                        name: budget.name.clone(),
                        key: counter_key("b", &budget.name, &budget.scope),
                        scope: budget.scope.clone(),
                        limit_nanos: budget.limit_nanos,
                        limit_tokens: budget.limit_tokens,
                        window: budget.window,
                        span: window_span(budget.window, now_ms, &self.zone),
                        enforced: budget.enforced,
                        state: CounterState::default(),
                    });
                }
            }
        }
        applied
    }

    pub fn budget_count(&self) -> usize {
        self.budgets.len()
    }

    pub fn rate_limit_count(&self) -> usize {
        self.rates.len()
    }

    /// Whether some dollar budget exists (models then need prices).
    pub fn counts_dollars(&self) -> bool {
        self.budgets.iter().any(|b| b.limit_nanos.is_some())
    }

    /// Records that the request was served by another target than the one planned for (after
    /// failover): the spend log names that target, and its price bills the usage (unless the
    /// alias has a price of its own, or the target has none: then the planned price stays).
    pub fn served_by(&self, metering: &mut Metering, provider: &str, upstream_model: &str) {
        let identity = &mut metering.identity;
        if identity.provider == provider && identity.upstream_model == upstream_model {
            return;
        }
        if let Some(price) = self.prices.lookup(&identity.model, upstream_model) {
            metering.price = Some(price);
        }
        identity.provider = provider.to_string();
        identity.upstream_model = upstream_model.to_string();
    }

    /// Plans the metering of one request, or refuses it outright (a model with no price under
    /// a dollar budget, a request larger than a whole rate limit).
    pub fn plan(
        &self,
        facts: &ScopeFacts<'_>,
        api: LlmApi,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Metering, Box<LocalReply>> {
        self.plan_with(facts, api, body, now_ms, &RuntimeDirectory::empty())
    }

    /// [`GovernancePolicy::plan`], with the budgets the admin API put on the caller's key, user
    /// and team (`runtime`) after the config's (a runtime budget whose name the config declares
    /// is skipped).
    pub fn plan_with(
        &self,
        facts: &ScopeFacts<'_>,
        api: LlmApi,
        body: &[u8],
        now_ms: i64,
        runtime: &RuntimeDirectory,
    ) -> Result<Metering, Box<LocalReply>> {
        // The body is parsed whole at most once: for `llm.user` and for the estimate.
        let mut object: Option<Map<String, Value>> = None;
        let end_user: Option<String> = match facts.end_user {
            None if self.uses.uses("llm") => parsed(&mut object, body)
                .get("user")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        };
        let facts = &ScopeFacts {
            end_user: facts.end_user.or(end_user.as_deref()),
            ..*facts
        };
        let context = ScopeContext::new(facts, self.uses);
        let mut metering = Metering {
            reservation: ReservationId::random(),
            started_ms: now_ms,
            lease_ms: self.lease_ms,
            budgets: Vec::new(),
            rates: Vec::new(),
            estimate: RequestEstimate::default(),
            price: self.prices.lookup(facts.model, facts.upstream_model),
            estimated_nanos: 0,
            estimated_tokens: 0,
            failure_modes: self.failure_modes,
            headers: Vec::new(),
            audit_over: Vec::new(),
            identity: Identity::from_facts(facts),
        };
        metering.budgets = self.applicable_budgets(&context, facts.caller, now_ms, runtime);
        // The estimate is reserved by budgets and token limits, and billed to a logged request
        // whose reply carries no usage (or that the client aborted).
        let mut needs_tokens = !metering.budgets.is_empty() || self.spend_log;
        for rate in &self.rates {
            if let Some(scope) = rate.template.evaluate(&context) {
                for (kind, limit) in [
                    (RateKind::Requests, rate.requests_per_minute),
                    (RateKind::Tokens, rate.tokens_per_minute),
                ] {
                    let Some(limit) = limit else { continue };
                    needs_tokens |= kind == RateKind::Tokens;
                    metering.rates.push(AppliedRate {
                        name: rate.name.clone(),
                        key: counter_key(
                            "r",
                            &rate.name,
                            &format!("{scope}:{}", kind.key_suffix()),
                        ),
                        scope: scope.clone(),
                        kind,
                        limit,
                        cost: 1,
                        state: RateState::default(),
                    });
                }
            }
        }
        // Under a dollar budget, `unpriced` decides whether `pricing.default` may stand in for
        // a model priced neither by the config nor by the built-in table. Only a budget that
        // can refuse refuses: an audit budget counts what it can (nothing without a price).
        let priced = match (&metering.price, self.unpriced) {
            (None, _) => false,
            (Some(p), UnpricedModels::Refuse) => p.source != PriceSource::Default,
            (Some(_), UnpricedModels::Default) => true,
        };
        if !priced {
            let enforced_dollars = metering
                .budgets
                .iter()
                .find(|b| b.limit_nanos.is_some() && b.enforced);
            if let Some(budget) = enforced_dollars {
                return Err(Box::new(LocalReply::openai_error(
                    400,
                    "invalid_request_error",
                    "model_not_priced",
                    Some("model"),
                    format!(
                        "model '{}' (upstream '{}' at provider '{}') has no price, and budget '{}' counts dollars; the operator must add it to governance.pricing.models (or set governance.pricing.unpriced: default)",
                        facts.model, facts.upstream_model, facts.provider, budget.name
                    ),
                )));
            }
        }
        if needs_tokens {
            metering.estimate = estimate_request(
                api,
                parsed(&mut object, body),
                facts.upstream_model,
                self.default_output_tokens,
            );
            let counts = TokenCounts {
                input: metering.estimate.input_tokens,
                cached_input: 0,
                output: metering.estimate.output_tokens,
            };
            metering.estimated_tokens = clamp_i64(counts.input.saturating_add(counts.output));
            metering.estimated_nanos = metering
                .price
                .as_ref()
                .map(|p| p.price.cost(&counts))
                .unwrap_or(0);
        }
        if let Some(budget) = metering.budgets.iter().find(|b| {
            b.enforced
                && (b
                    .limit_tokens
                    .is_some_and(|l| metering.estimated_tokens > l)
                    || b.limit_nanos.is_some_and(|l| metering.estimated_nanos > l))
        }) {
            return Err(Box::new(too_large_for_budget(
                budget,
                metering.estimated_tokens,
                metering.estimated_nanos,
            )));
        }
        let estimated_tokens = metering.estimated_tokens;
        for rate in &mut metering.rates {
            if rate.kind == RateKind::Tokens {
                rate.cost = estimated_tokens.max(0) as u64;
                if rate.cost > rate.limit {
                    return Err(Box::new(too_large_for_rate(rate)));
                }
            }
        }
        Ok(metering)
    }
}

/// The body's top-level object, parsed on first use (an unreadable body is an empty object:
/// the OpenAI front door has already refused malformed JSON).
fn parsed<'o>(object: &'o mut Option<Map<String, Value>>, body: &[u8]) -> &'o Map<String, Value> {
    object.get_or_insert_with(|| serde_json::from_slice(body).unwrap_or_default())
}

fn clamp_i64(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// A store key for one budget or rate scope. Long scopes are hashed to keep keys short.
fn counter_key(kind: &str, name: &str, scope: &str) -> String {
    if scope.len() <= 160 {
        return format!("{kind}:{name}:{scope}");
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(scope.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}:{name}:sha256:{hex}")
}

/// A request whose estimate alone exceeds a whole budget: no wait would let it through, so it
/// is refused before the store is asked, without `retry-after`.
fn too_large_for_budget(budget: &AppliedBudget, tokens: i64, nanos: Nanos) -> LocalReply {
    let (needs, limit) = match budget.limit_tokens {
        Some(limit) if tokens > limit => (format!("{tokens} tokens"), format!("{limit} tokens")),
        _ => (
            format!("${}", format_usd(nanos)),
            format!("${}", format_usd(budget.limit_nanos.unwrap_or_default())),
        ),
    };
    LocalReply::openai_error(
        429,
        "insufficient_quota",
        "budget_exceeded",
        None,
        format!(
            "Request too large: it may use up to {needs}, more than the whole of budget '{}' for scope '{}' ({limit} per {} window). Lower max_tokens or the prompt size.",
            budget.name,
            budget.scope,
            budget.window.as_str()
        ),
    )
}

fn too_large_for_rate(rate: &AppliedRate) -> LocalReply {
    let mut reply = LocalReply::openai_error(
        429,
        rate.kind.as_str(),
        "rate_limit_exceeded",
        None,
        format!(
            "Request too large: rate limit '{}' (scope '{}') allows {} {} per minute, and this request needs up to {}. Lower max_tokens or the prompt size.",
            rate.name,
            rate.scope,
            rate.limit,
            rate.kind.as_str(),
            rate.cost
        ),
    );
    reply.details = "rate_limited";
    reply
}

/// The refusal of a charge the admission does not know (a store answering out of range).
fn unknown_refusal(error_type: &str, code: &'static str, what: &str) -> LocalReply {
    LocalReply::openai_error(
        429,
        error_type,
        code,
        None,
        format!("The request was refused by {what} of the gateway. Please try again later."),
    )
}

/// A scope as a header value: visible ASCII is kept, anything else (spaces, control
/// characters, non-ASCII, and `%` itself) is percent-encoded, since scopes can hold what the
/// client sent (`llm.user`, request headers).
pub fn header_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Requests or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Requests,
    Tokens,
}

impl RateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
        }
    }

    fn key_suffix(self) -> &'static str {
        match self {
            RateKind::Requests => "req",
            RateKind::Tokens => "tok",
        }
    }
}

#[derive(Debug, Clone)]
struct AppliedBudget {
    name: String,
    scope: String,
    key: String,
    limit_nanos: Option<Nanos>,
    limit_tokens: Option<i64>,
    window: BudgetWindow,
    span: WindowSpan,
    enforced: bool,
    /// As the store left it after admission.
    state: CounterState,
}

impl AppliedBudget {
    fn used(&self) -> (Nanos, i64) {
        (
            self.state
                .spent_nanos
                .saturating_add(self.state.reserved_nanos),
            self.state
                .spent_tokens
                .saturating_add(self.state.reserved_tokens),
        )
    }

    /// How much of the budget is left, as a fraction (the tightest budget is reported).
    fn remaining_fraction(&self) -> f64 {
        let (nanos, tokens) = self.used();
        let mut fraction = f64::INFINITY;
        if let Some(limit) = self.limit_nanos {
            fraction = fraction.min(limit.saturating_sub(nanos) as f64 / limit.max(1) as f64);
        }
        if let Some(limit) = self.limit_tokens {
            fraction = fraction.min(limit.saturating_sub(tokens) as f64 / limit.max(1) as f64);
        }
        fraction
    }
}

#[derive(Debug, Clone)]
struct AppliedRate {
    name: String,
    scope: String,
    key: String,
    kind: RateKind,
    /// Per minute.
    limit: u64,
    /// What this request takes: 1 request, or its estimated tokens.
    cost: u64,
    state: RateState,
}

impl AppliedRate {
    fn cost_us(&self, amount: i64) -> i64 {
        let limit = self.limit.max(1) as i128;
        let us = (amount as i128 * RATE_PERIOD_US as i128 + limit - 1).div_euclid(limit);
        us.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    fn remaining(&self) -> u64 {
        let backlog_us = self.state.backlog_us.clamp(0, RATE_PERIOD_US);
        let free_us = (RATE_PERIOD_US - backlog_us) as i128;
        (free_us * self.limit as i128 / RATE_PERIOD_US as i128) as u64
    }
}

/// Who made the request, for the spend log.
#[derive(Debug, Clone, Default)]
struct Identity {
    subject: String,
    user: String,
    team: String,
    api_key: String,
    model: String,
    upstream_model: String,
    provider: String,
}

impl Identity {
    fn from_facts(facts: &ScopeFacts<'_>) -> Identity {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let caller: &Caller = facts.caller;
        Identity {
            subject: text(&caller.subject),
            user: text(&caller.user),
            team: text(&caller.team),
            api_key: text(&caller.key),
            model: facts.model.to_string(),
            upstream_model: facts.upstream_model.to_string(),
            provider: facts.provider.to_string(),
        }
    }
}

/// What the store's answer means for the request.
#[derive(Debug)]
pub enum Judgement {
    /// Go ahead; the reservation is held until settled.
    Admitted,
    /// Refused (429); nothing was reserved.
    Refused(Box<LocalReply>, SpendOutcome),
}

/// The metering of one request, from admission to settlement.
#[derive(Debug)]
pub struct Metering {
    pub reservation: ReservationId,
    pub started_ms: i64,
    lease_ms: i64,
    budgets: Vec<AppliedBudget>,
    rates: Vec<AppliedRate>,
    pub estimate: RequestEstimate,
    pub price: Option<PricedBy>,
    estimated_nanos: Nanos,
    estimated_tokens: i64,
    failure_modes: GovernanceFailureModes,
    /// Budget and rate-limit headers for the response, once judged.
    pub headers: Vec<(&'static str, String)>,
    /// Audit budgets this request took over their limit.
    pub audit_over: Vec<String>,
    identity: Identity,
}

impl Metering {
    /// Whether the store must be asked before the request goes on.
    pub fn needs_admission(&self) -> bool {
        !self.budgets.is_empty() || !self.rates.is_empty()
    }

    /// The admission to ask the store for.
    pub fn admission(&self) -> Admission {
        Admission {
            reservation: self.reservation.clone(),
            now_ms: self.started_ms,
            lease_ms: self.lease_ms,
            budgets: self
                .budgets
                .iter()
                .map(|b| BudgetCharge {
                    key: format!("{}:{}", b.key, b.span.start_ms),
                    limit_nanos: b.limit_nanos,
                    limit_tokens: b.limit_tokens,
                    nanos: self.estimated_nanos,
                    tokens: self.estimated_tokens,
                    enforced: b.enforced,
                    window_end_ms: b.span.end_ms,
                })
                .collect(),
            rates: self
                .rates
                .iter()
                .map(|r| RateCharge {
                    key: r.key.clone(),
                    cost_us: r.cost_us(r.cost as i64),
                    period_us: RATE_PERIOD_US,
                })
                .collect(),
        }
    }

    /// The names of the budgets and rate limits that apply, for logs.
    pub fn applied(&self) -> Vec<String> {
        self.budgets
            .iter()
            .map(|b| format!("budget {} ({})", b.name, b.scope))
            .chain(
                self.rates
                    .iter()
                    .map(|r| format!("rate {} ({}, {})", r.name, r.scope, r.kind.as_str())),
            )
            .collect()
    }

    /// The reply when the store cannot be reached, or `None` when the configured failure modes
    /// let the request through unmetered.
    pub fn store_unavailable(&self, error: &str) -> Option<LocalReply> {
        // Audit budgets never refuse a request, so an unreachable store does not either.
        let budgets_closed = self.budgets.iter().any(|b| b.enforced)
            && self.failure_modes.budgets == FailureMode::Closed;
        let rates_closed =
            !self.rates.is_empty() && self.failure_modes.rate_limits == FailureMode::Closed;
        if !budgets_closed && !rates_closed {
            return None;
        }
        let what = if budgets_closed {
            "budgets"
        } else {
            "rate limits"
        };
        let mut reply = LocalReply::openai_error(
            503,
            "server_error",
            "gantry_store_unavailable",
            None,
            format!(
                "the gateway cannot check its {what} right now ({error}); the request was not sent. Retry shortly."
            ),
        );
        reply.headers.push(("retry-after", "1".into()));
        Some(reply)
    }

    /// Reads the store's answer: response headers when admitted, a 429 when refused.
    pub fn judge(&mut self, outcome: &AdmissionOutcome) -> Judgement {
        for (budget, state) in self.budgets.iter_mut().zip(&outcome.budgets) {
            budget.state = *state;
        }
        for (rate, state) in self.rates.iter_mut().zip(&outcome.rates) {
            rate.state = *state;
        }
        match outcome.refused {
            None => {
                self.audit_over = self
                    .budgets
                    .iter()
                    .filter(|b| !b.enforced && b.remaining_fraction() < 0.0)
                    .map(|b| format!("{} ({})", b.name, b.scope))
                    .collect();
                self.headers = self.limit_headers(None);
                Judgement::Admitted
            }
            // A refusal naming a charge the admission did not have is still a refusal: the
            // store reserved nothing, so the request must not go on unmetered.
            Some(Refusal::Budget(i)) => {
                let mut reply = match self.budgets.get(i) {
                    Some(budget) => self.budget_refusal(budget),
                    None => unknown_refusal("insufficient_quota", "budget_exceeded", "a budget"),
                };
                reply.headers.extend(self.limit_headers(Some(i)));
                Judgement::Refused(Box::new(reply), SpendOutcome::BudgetExceeded)
            }
            Some(Refusal::Rate(i)) => {
                let mut reply = match self.rates.get(i) {
                    Some(rate) => self.rate_refusal(rate),
                    None => {
                        let mut reply =
                            unknown_refusal("requests", "rate_limit_exceeded", "a rate limit");
                        reply.details = "rate_limited";
                        reply
                    }
                };
                reply.headers.extend(self.limit_headers(None));
                Judgement::Refused(Box::new(reply), SpendOutcome::RateLimited)
            }
        }
    }

    fn budget_refusal(&self, budget: &AppliedBudget) -> LocalReply {
        let state = budget.state;
        // Name the limits this request would pass (both when the store's numbers say neither).
        let (nanos, tokens) = budget.used();
        let over_usd = budget
            .limit_nanos
            .is_some_and(|l| nanos.saturating_add(self.estimated_nanos) > l);
        let over_tokens = budget
            .limit_tokens
            .is_some_and(|l| tokens.saturating_add(self.estimated_tokens) > l);
        let all = !over_usd && !over_tokens;
        let mut parts = Vec::new();
        if let Some(limit) = budget.limit_nanos.filter(|_| all || over_usd) {
            parts.push(format!(
                "${} spent and ${} reserved by requests in flight, of ${}; this request may cost up to ${}",
                format_usd(state.spent_nanos),
                format_usd(state.reserved_nanos),
                format_usd(limit),
                format_usd(self.estimated_nanos)
            ));
        }
        if let Some(limit) = budget.limit_tokens.filter(|_| all || over_tokens) {
            parts.push(format!(
                "{} tokens spent and {} reserved, of {}; this request may use up to {}",
                state.spent_tokens, state.reserved_tokens, limit, self.estimated_tokens
            ));
        }
        let reset = match budget.span.end_ms {
            Some(end) => format!("It resets at {}.", rfc3339_utc(end)),
            None => "It does not reset (window: total).".into(),
        };
        let mut reply = LocalReply::openai_error(
            429,
            "insufficient_quota",
            "budget_exceeded",
            None,
            format!(
                "Budget '{}' for scope '{}' ({} window) is exhausted: {}. {reset}",
                budget.name,
                budget.scope,
                budget.window.as_str(),
                parts.join("; "),
            ),
        );
        if let Some(end) = budget.span.end_ms {
            let secs = ((end - self.started_ms).max(0) + 999) / 1000;
            let secs = secs.max(1);
            reply.headers.push(("retry-after", secs.to_string()));
        }
        reply
    }

    fn rate_refusal(&self, rate: &AppliedRate) -> LocalReply {
        // The bucket must drain until this request's cost fits within the period.
        let wait_us = rate
            .state
            .backlog_us
            .saturating_add(rate.cost_us(rate.cost as i64))
            .saturating_sub(RATE_PERIOD_US)
            .max(1000);
        let mut reply = LocalReply::openai_error(
            429,
            rate.kind.as_str(),
            "rate_limit_exceeded",
            None,
            format!(
                "Rate limit '{}' reached for scope '{}': {} {} per minute, {} left, this request needs {}. Please try again in {}.",
                rate.name,
                rate.scope,
                rate.limit,
                rate.kind.as_str(),
                rate.remaining(),
                rate.cost,
                format_reset(wait_us)
            ),
        );
        reply.details = "rate_limited";
        reply.headers.push((
            "retry-after",
            (wait_us as u64).div_ceil(1_000_000).to_string(),
        ));
        reply
    }

    /// OpenAI-style `x-ratelimit-*` headers for the tightest rate limit of each kind, and
    /// `x-gantry-budget-*` headers for the tightest budget.
    /// `refusing`: the budget that refused the request, named instead of the tightest.
    fn limit_headers(&self, refusing: Option<usize>) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        for (kind, names) in [
            (
                RateKind::Requests,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                RateKind::Tokens,
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            let tightest = self
                .rates
                .iter()
                .filter(|r| r.kind == kind)
                .min_by_key(|r| r.remaining());
            if let Some(rate) = tightest {
                headers.push((names[0], rate.limit.to_string()));
                headers.push((names[1], rate.remaining().to_string()));
                headers.push((names[2], format_reset(rate.state.backlog_us)));
            }
        }
        // The tightest budget that can refuse the client; audit budgets only when no enforced
        // one applies.
        let enforced = self.budgets.iter().any(|b| b.enforced);
        let tightest = refusing.and_then(|i| self.budgets.get(i)).or_else(|| {
            self.budgets
                .iter()
                .filter(|b| b.enforced || !enforced)
                .min_by(|a, b| a.remaining_fraction().total_cmp(&b.remaining_fraction()))
        });
        if let Some(budget) = tightest {
            let (nanos, tokens) = budget.used();
            headers.push((BUDGET_HEADER, budget.name.clone()));
            headers.push((BUDGET_SCOPE_HEADER, header_value(&budget.scope)));
            if let Some(limit) = budget.limit_nanos {
                headers.push((BUDGET_LIMIT_USD_HEADER, format_usd(limit)));
                headers.push((
                    BUDGET_REMAINING_USD_HEADER,
                    format_usd(limit.saturating_sub(nanos).max(0)),
                ));
            }
            if let Some(limit) = budget.limit_tokens {
                headers.push((BUDGET_LIMIT_TOKENS_HEADER, limit.to_string()));
                headers.push((
                    BUDGET_REMAINING_TOKENS_HEADER,
                    limit.saturating_sub(tokens).max(0).to_string(),
                ));
            }
            if let Some(end) = budget.span.end_ms {
                headers.push((BUDGET_RESET_HEADER, rfc3339_utc(end)));
            }
        }
        headers
    }

    /// What the real usage costs (zero for a model with no price).
    pub fn cost(&self, tokens: &TokenCounts) -> Nanos {
        self.price
            .as_ref()
            .map(|p| p.price.cost(tokens))
            .unwrap_or(0)
    }

    /// Ends the reservation: charges `actual` (or nothing, for a release).
    pub fn settlement(&self, actual: Option<&TokenCounts>, now_ms: i64) -> Settlement {
        let (actual_nanos, actual_tokens) = match actual {
            Some(tokens) => (
                self.cost(tokens),
                clamp_i64(tokens.input.saturating_add(tokens.output)),
            ),
            None => (0, 0),
        };
        Settlement {
            reservation: self.reservation.clone(),
            now_ms,
            budgets: self
                .budgets
                .iter()
                .map(|b| BudgetSettle {
                    key: format!("{}:{}", b.key, b.span.start_ms),
                    reserved_nanos: self.estimated_nanos,
                    reserved_tokens: self.estimated_tokens,
                    actual_nanos,
                    actual_tokens,
                    window_end_ms: b.span.end_ms,
                })
                .collect(),
            rates: self
                .rates
                .iter()
                .filter(|r| r.kind == RateKind::Tokens)
                .map(|r| RateSettle {
                    key: r.key.clone(),
                    adjust_us: r.cost_us(actual_tokens) - r.cost_us(r.cost as i64),
                    period_us: RATE_PERIOD_US,
                })
                .collect(),
        }
    }

    /// The spend log line of this request.
    pub fn spend_record(
        &self,
        request_id: &str,
        tokens: &TokenCounts,
        status: u16,
        outcome: SpendOutcome,
        stream: bool,
        now_ms: i64,
    ) -> SpendRecord {
        let id = &self.identity;
        SpendRecord {
            time_ms: self.started_ms,
            request_id: request_id.to_string(),
            subject: id.subject.clone(),
            user: id.user.clone(),
            team: id.team.clone(),
            api_key: id.api_key.clone(),
            model: id.model.clone(),
            upstream_model: id.upstream_model.clone(),
            provider: id.provider.clone(),
            input_tokens: tokens.input,
            cached_input_tokens: tokens.cached_input,
            output_tokens: tokens.output,
            cost_nanos: self.cost(tokens),
            status,
            outcome,
            latency_ms: (now_ms - self.started_ms).max(0) as u64,
            stream,
        }
    }

    /// What a request that ended is billed: the provider's usage when the reply carried it;
    /// otherwise the estimate, its input and, for output, what was seen of it (a stream, an
    /// aborted request) or else the reserved bound.
    pub fn billed_tokens(&self, usage: Option<Usage>, observed_output: Option<u64>) -> TokenCounts {
        match usage {
            Some(usage) => TokenCounts {
                input: usage.prompt_tokens,
                cached_input: usage.cached_tokens,
                output: usage.completion_tokens,
            },
            None => TokenCounts {
                input: self.estimate.input_tokens,
                cached_input: 0,
                output: observed_output.unwrap_or(self.estimate.output_tokens),
            },
        }
    }
}

#[cfg(test)]
mod tests;
