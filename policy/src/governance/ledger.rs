//! What the governance policy asks of a store, as plain data: reserve at admission, settle
//! when the response ends, record the request in the spend log.
//!
//! Money is counted in whole nano-dollars ([`Nanos`], 1e-9 USD) so that every store adds and
//! compares integers: no rounding drift between replicas or across restarts.
//!
//! The semantics every [`Store`](../../../gantry_store/trait.Store.html) implements:
//!
//! **Budgets.** A counter (one per budget, scope and window: [`BudgetCharge::key`]) holds
//! `spent` and `reserved` amounts, in nano-dollars and in tokens. An admission is all or
//! nothing: it is refused when any *enforced* charge would take `spent + reserved + charge`
//! above a limit it has (dollars or tokens); otherwise every charge (enforced or audit) is added
//! to `reserved` under the admission's [`ReservationId`]. A settlement removes that reservation
//! from each counter (if it is still there) and adds the actual amounts to `spent`. A reservation
//! never settled (the process died) expires after [`Admission::lease_ms`]: the next admission
//! touching its counter drops it.
//!
//! **Settlements are idempotent per [`Settlement::reservation`].** A store applies the first
//! settlement of a reservation id and ignores any later one with that id: settling the same
//! settlement again changes nothing (no spend, no reservation, no rate bucket), whether or not
//! the reservation was still held the first time (a settlement whose reservation expired and
//! was dropped adds its actual amounts once). So a caller may retry a settlement that failed
//! or timed out, though the store may have applied it: the spend counts exactly once. A store
//! remembers settled ids for an hour after the settlement (the embedded store: also not across
//! a restart, which the retries of the process that made them cannot outlive), far longer than
//! retries take; a repeat after that would count again.
//!
//! **Rate limits.** Each rate key is a GCRA bucket: the store keeps one instant, the
//! *theoretical arrival time* (TAT), in microseconds. A charge of `cost_us` is admitted when
//! `max(tat, now) + cost_us - now <= period_us`, and then moves the TAT there. A settlement
//! moves the TAT by `adjust_us` (negative: tokens given back).
//!
//! Admissions and settlements are atomic per store: under any concurrency, the sum of `spent`
//! and `reserved` of an enforced counter never exceeds its limit at admission time.

use serde::{Deserialize, Serialize};

/// An amount of money in nano-dollars (1e-9 USD).
pub type Nanos = i64;

/// Nano-dollars in one dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// Identifies one admission's reservation until it is settled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReservationId(pub String);

impl ReservationId {
    /// A fresh random identifier (128 bits, hex).
    pub fn random() -> ReservationId {
        let mut bytes = [0u8; 16];
        // Without OS randomness, fall back to the clock: ids only need to be unique.
        if getrandom::fill(&mut bytes).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            bytes = now.to_le_bytes();
        }
        ReservationId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// One budget counter charged by an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCharge {
    /// The counter: unique per budget, scope and window (the store adds its own prefix).
    pub key: String,
    /// Limit in nano-dollars, if the budget has one.
    pub limit_nanos: Option<Nanos>,
    /// Limit in tokens, if the budget has one.
    pub limit_tokens: Option<i64>,
    /// The estimated cost reserved.
    pub nanos: Nanos,
    /// The estimated tokens reserved.
    pub tokens: i64,
    /// `true` for `action: block` (refuse when over), `false` for `audit` (count only).
    pub enforced: bool,
    /// When the window ends (ms since the epoch); `None` for `total`. The store may forget the
    /// counter some time after it ends.
    pub window_end_ms: Option<i64>,
}

/// One rate-limit bucket charged by an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCharge {
    /// The bucket: unique per rate limit, scope and kind (requests or tokens).
    pub key: String,
    /// The time the charge costs: `cost * period / limit`, in microseconds.
    pub cost_us: i64,
    /// The bucket's period (its burst), in microseconds.
    pub period_us: i64,
}

/// Everything one request asks the store for at admission, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub reservation: ReservationId,
    /// The current time in ms since the epoch (the policy's clock, so tests can move it).
    pub now_ms: i64,
    /// How long the reservation holds if it is never settled.
    pub lease_ms: i64,
    pub budgets: Vec<BudgetCharge>,
    pub rates: Vec<RateCharge>,
}

/// A budget counter as the store found it (refused) or left it (admitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    pub spent_nanos: Nanos,
    pub spent_tokens: i64,
    pub reserved_nanos: Nanos,
    pub reserved_tokens: i64,
}

/// A rate bucket after an admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateState {
    /// `tat - now` in microseconds after this admission (admitted) or before it (refused):
    /// how far the bucket is from full. Never negative.
    pub backlog_us: i64,
}

/// Which charge refused an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Index into [`Admission::budgets`].
    Budget(usize),
    /// Index into [`Admission::rates`].
    Rate(usize),
}

/// The store's answer to an admission. `budgets` and `rates` are in the admission's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionOutcome {
    /// `None`: admitted and reserved. `Some`: nothing was reserved or charged.
    pub refused: Option<Refusal>,
    pub budgets: Vec<CounterState>,
    pub rates: Vec<RateState>,
}

/// One budget counter settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSettle {
    pub key: String,
    /// What the admission reserved (removed from `reserved` if the reservation still holds).
    pub reserved_nanos: Nanos,
    pub reserved_tokens: i64,
    /// What the request really cost (added to `spent`; zero for a release).
    pub actual_nanos: Nanos,
    pub actual_tokens: i64,
    pub window_end_ms: Option<i64>,
}

/// One rate bucket corrected once the real token count is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSettle {
    pub key: String,
    /// Added to the bucket's TAT: `(actual - estimated) * period / limit` microseconds.
    pub adjust_us: i64,
    pub period_us: i64,
}

/// How a request's reservation ends: charged with real usage, or released (actual amounts 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub reservation: ReservationId,
    pub now_ms: i64,
    pub budgets: Vec<BudgetSettle>,
    pub rates: Vec<RateSettle>,
}

/// How a logged request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendOutcome {
    /// The provider answered with success.
    Ok,
    /// The provider answered with an error status, or could not be reached.
    UpstreamError,
    /// The client went away before the response ended.
    Aborted,
    /// Refused by a budget before reaching the provider.
    BudgetExceeded,
    /// Refused by a rate limit before reaching the provider.
    RateLimited,
}

impl SpendOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SpendOutcome::Ok => "ok",
            SpendOutcome::UpstreamError => "upstream_error",
            SpendOutcome::Aborted => "aborted",
            SpendOutcome::BudgetExceeded => "budget_exceeded",
            SpendOutcome::RateLimited => "rate_limited",
        }
    }
}

/// One line of the spend log: one LLM request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    /// When the request was admitted, ms since the epoch.
    pub time_ms: i64,
    /// Envoy's `x-request-id`, when it sent one.
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub team: String,
    /// The API key's name.
    #[serde(default)]
    pub api_key: String,
    /// The model the client asked for (the alias).
    pub model: String,
    #[serde(default)]
    pub upstream_model: String,
    #[serde(default)]
    pub provider: String,
    pub input_tokens: u64,
    /// Input tokens served from the provider's prompt cache (part of `input_tokens`).
    #[serde(default)]
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: Nanos,
    /// The HTTP status the client got.
    pub status: u16,
    pub outcome: SpendOutcome,
    /// From admission to the end of the response.
    pub latency_ms: u64,
    #[serde(default)]
    pub stream: bool,
}

/// Which spend records to read back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendQuery {
    /// Records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Records before this time.
    pub until_ms: Option<i64>,
}

impl SpendQuery {
    pub fn matches(&self, record: &SpendRecord) -> bool {
        self.since_ms.is_none_or(|since| record.time_ms >= since)
            && self.until_ms.is_none_or(|until| record.time_ms < until)
    }
}
