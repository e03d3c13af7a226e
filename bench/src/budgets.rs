//! The `governance` sections of the budget gateways: two budgets and a rate limit so large that
//! every request is admitted and charged (three charges per admission, settled when the reply
//! ends, plus a spend log record), and the probe's check of the headers that show it.

use std::path::Path;

use reqwest::header::HeaderMap;

use crate::ALIAS;

/// The budget every request charges, in dollars, under one `"global"` scope.
pub const GLOBAL_BUDGET: &str = "bench-global-usd";
const GLOBAL_USD: u64 = 1_000_000;
/// The budget per model alias (`"model:bench"`), in tokens.
pub const MODEL_BUDGET: &str = "bench-model-tokens";
const MODEL_TOKENS: u64 = 1_000_000_000_000_000;
/// The rate limit per model alias; far above what one machine can send.
pub const RATE_LIMIT: &str = "bench-model-rpm";
const REQUESTS_PER_MINUTE: u64 = 1_000_000_000;
/// The `bench` alias's price in USD per million tokens, so that the dollar budget can charge it.
const PRICE_INPUT: u64 = 1;
const PRICE_OUTPUT: u64 = 2;

/// The response headers that name the tightest budget and the tightest request rate limit.
pub const BUDGET_HEADER: &str = "x-gantry-budget";
pub const RATE_LIMIT_HEADER: &str = "x-ratelimit-limit-requests";

/// Where a budget gateway keeps its counters, rate buckets and spend log.
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// A SQLite file owned by the gantry process.
    Embedded(&'a Path),
    /// A Redis server, by URL.
    Redis(&'a str),
}

impl Store<'_> {
    fn flow(self) -> String {
        let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
        match self {
            Store::Embedded(path) => format!(
                "{{ kind: embedded, path: {} }}",
                quote(&path.display().to_string())
            ),
            Store::Redis(url) => format!("{{ kind: redis, url: {} }}", quote(url)),
        }
    }
}

/// A `governance:` section on `store` with the price of the `bench` alias, the two budgets and
/// the rate limit; everything else (failure modes, store timeout, estimates, spend log) at
/// its default.
pub fn governance_section(store: Store<'_>) -> String {
    format!(
        "governance:\n  store: {store}\n  pricing:\n    models:\n      \
         {ALIAS}: {{ input: {PRICE_INPUT}, output: {PRICE_OUTPUT} }}\n  budgets:\n    \
         - {{ name: {GLOBAL_BUDGET}, scope: '\"global\"', usd: {GLOBAL_USD}, window: day }}\n    \
         - {{ name: {MODEL_BUDGET}, scope: '\"model:\" + llm.model', tokens: {MODEL_TOKENS}, \
         window: month }}\n  rate_limits:\n    \
         - {{ name: {RATE_LIMIT}, scope: '\"model:\" + llm.model', requests_per_minute: \
         {REQUESTS_PER_MINUTE} }}\n",
        store = store.flow(),
    )
}

/// A budget gateway's reply must show its admission: `x-gantry-budget` naming one of the two
/// budgets with its configured limit and less than that left (this request was charged), and
/// `x-ratelimit-*-requests` with the configured limit and less than that left.
pub fn check_admitted(headers: &HeaderMap) -> Result<(), String> {
    let get = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let budget = get(BUDGET_HEADER)
        .ok_or_else(|| format!("the reply has no {BUDGET_HEADER} header: no budget was checked"))?;
    if budget != GLOBAL_BUDGET && budget != MODEL_BUDGET {
        return Err(format!(
            "{BUDGET_HEADER} is {budget:?}, not {GLOBAL_BUDGET:?} or {MODEL_BUDGET:?}"
        ));
    }
    let mut charged = Vec::new();
    for (unit, limit) in [
        ("usd", format!("{GLOBAL_USD}.000000")),
        ("tokens", MODEL_TOKENS.to_string()),
    ] {
        let limit_header = format!("{BUDGET_HEADER}-limit-{unit}");
        let remaining_header = format!("{BUDGET_HEADER}-remaining-{unit}");
        match (get(&limit_header), get(&remaining_header)) {
            (None, None) => {}
            (Some(found), Some(remaining)) => {
                if found != limit {
                    return Err(format!("{limit_header} is {found:?}, not {limit:?}"));
                }
                below(&remaining_header, remaining, &limit_header, &limit)?;
                charged.push(unit);
            }
            (found, remaining) => {
                return Err(format!(
                    "{limit_header} is {found:?} but {remaining_header} is {remaining:?}"
                ))
            }
        }
    }
    if charged.is_empty() {
        return Err(format!(
            "{BUDGET_HEADER} is {budget:?} but no limit-usd or limit-tokens header came with it"
        ));
    }
    let limit = REQUESTS_PER_MINUTE.to_string();
    match get(RATE_LIMIT_HEADER) {
        Some(found) if found == limit => {}
        found => {
            return Err(format!(
                "{RATE_LIMIT_HEADER} is {found:?}, not {limit:?}: the rate limit was not checked"
            ))
        }
    }
    let remaining_header = "x-ratelimit-remaining-requests";
    let remaining = get(remaining_header)
        .ok_or_else(|| format!("{RATE_LIMIT_HEADER} came without {remaining_header}"))?;
    below(remaining_header, remaining, RATE_LIMIT_HEADER, &limit)
}

/// A gateway without governance must not send the budget headers (nor may the mock).
pub fn check_not_governed(headers: &HeaderMap) -> Result<(), String> {
    match [BUDGET_HEADER, RATE_LIMIT_HEADER]
        .into_iter()
        .find(|name| headers.contains_key(*name))
    {
        Some(name) => Err(format!(
            "the reply carries {name} although this gateway has no governance section"
        )),
        None => Ok(()),
    }
}

/// `remaining` (a header's value) must be a number below `limit`: the request was counted.
fn below(
    remaining_header: &str,
    remaining: &str,
    limit_header: &str,
    limit: &str,
) -> Result<(), String> {
    let parse = |text: &str| text.parse::<f64>().ok().filter(|n| n.is_finite());
    match (parse(remaining), parse(limit)) {
        (Some(left), Some(limit)) if left < limit => Ok(()),
        _ => Err(format!(
            "{remaining_header} is {remaining:?}, not below {limit_header} {limit:?}: the request \
             was not charged"
        )),
    }
}
