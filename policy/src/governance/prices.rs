//! What tokens cost: the [`Price`] of a model, the cost of a request's [`TokenCounts`], the
//! built-in table of public list prices, and the [`PriceTable`] a snapshot compiles from the
//! config (operator overrides, then the built-in table, then an optional default).
//!
//! Prices are integers: nano-dollars ([`Nanos`]) per million tokens. A cost is rounded up once
//! per request, never per part, so a budget is never charged less than the provider bills.
//!
//! Model names are matched case-insensitively. The built-in table also understands the usual
//! spellings of one model: a provider prefix (`openai/gpt-4o`, `models/gemini-2.5-pro`), a
//! date or version suffix (`gpt-4o-2024-08-06`, `claude-3-5-sonnet-20241022`,
//! `gemini-1.5-pro-002`, `mistral-large-latest`), and a variant of a known family
//! (`gpt-4o-audio-preview` is priced as `gpt-4o`); see [`builtin_price`].

use std::collections::HashMap;
use std::sync::OnceLock;

use super::ledger::{Nanos, NANOS_PER_USD};

/// Tokens per unit of [`Price`]: prices are per million tokens.
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// The price of one model, in nano-dollars per million tokens (so $0.15 per million tokens is
/// `150_000_000`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    /// Uncached input (prompt) tokens.
    pub input: Nanos,
    /// Output (completion) tokens, reasoning tokens included.
    pub output: Nanos,
    /// Input tokens read from the provider's prompt cache (Anthropic: cache reads).
    pub cached_input: Nanos,
}

/// Token counts of one request, as billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// All input tokens, the cached ones included (OpenAI's `prompt_tokens`).
    pub input: u64,
    /// The part of `input` read from the prompt cache.
    pub cached_input: u64,
    /// Output tokens, reasoning tokens included.
    pub output: u64,
}

impl Price {
    /// A price from US dollars per million tokens, rounded to the nearest nano-dollar.
    /// `cached_input` defaults to `input` (the model has no cache discount). Negative, NaN,
    /// infinite or absurdly large (not representable in [`Nanos`]) amounts are refused.
    pub fn from_usd_per_million(
        input: f64,
        output: f64,
        cached_input: Option<f64>,
    ) -> Result<Price, String> {
        let input_nanos = usd_to_nanos("input", input)?;
        let output_nanos = usd_to_nanos("output", output)?;
        let cached_nanos = match cached_input {
            Some(usd) => usd_to_nanos("cached input", usd)?,
            None => input_nanos,
        };
        Ok(Price {
            input: input_nanos,
            output: output_nanos,
            cached_input: cached_nanos,
        })
    }

    /// What `tokens` cost at this price, rounded up to a whole nano-dollar:
    /// `ceil((uncached * input + cached * cached_input + output * output) / 1e6)`, where
    /// `uncached = input - cached` (never below zero). Exact integer arithmetic; a result beyond
    /// `i64::MAX` saturates there. Negative prices (only constructible by hand) count as zero.
    pub fn cost(&self, tokens: &TokenCounts) -> Nanos {
        let uncached = u128::from(tokens.input.saturating_sub(tokens.cached_input));
        let cached = u128::from(tokens.cached_input);
        let output = u128::from(tokens.output);
        // Each product fits in u128 (u64::MAX * i64::MAX < u128::MAX); only the sum can
        // overflow, and saturating there still saturates the result below.
        let micro_nanos = (uncached * nonnegative(self.input))
            .saturating_add(cached * nonnegative(self.cached_input))
            .saturating_add(output * nonnegative(self.output));
        let nanos = micro_nanos.div_ceil(TOKENS_PER_PRICE_UNIT);
        Nanos::try_from(nanos).unwrap_or(Nanos::MAX)
    }
}

fn nonnegative(nanos: Nanos) -> u128 {
    u128::try_from(nanos).unwrap_or(0)
}

fn usd_to_nanos(what: &str, usd: f64) -> Result<Nanos, String> {
    if !usd.is_finite() {
        return Err(format!("{what} price must be a finite number, got {usd}"));
    }
    if usd < 0.0 {
        return Err(format!("{what} price must not be negative, got {usd}"));
    }
    let nanos = (usd * NANOS_PER_USD as f64).round();
    // `i64::MAX as f64` rounds up to 2^63, which is itself out of range: compare with `<`.
    if nanos >= Nanos::MAX as f64 {
        return Err(format!(
            "{what} price {usd} USD per million tokens is too large"
        ));
    }
    Ok(nanos as Nanos)
}

/// Built-in list prices: `(model, input, output, cached input)` in US dollars per million
/// tokens, for the standard (not batch, not priority) tier.
///
/// Prices checked 2026-11-25 against the providers' public pricing pages. They are a
/// convenience, not a contract: providers change prices, and operators override any of them
/// (or turn the table off) in the config.
///
/// Conventions:
/// - "cached input" is the price of a prompt-cache hit (Anthropic: cache read; OpenAI: cached
///   input; Google: context-cache read). Where a model has no cache discount it equals input.
///   Anthropic cache writes are not modelled: they are billed as ordinary input here.
/// - Google's tiered models are listed at their base tier (prompts up to 200k tokens for
///   Gemini 2.x, up to 128k for Gemini 1.5); longer prompts cost more than this table says.
///   Likewise Claude Sonnet 4/4.5 are listed at the up-to-200k-tokens price.
/// - Text token prices only: audio or image *output* tokens of multimodal models cost more.
/// - Embedding models have no output tokens (output price 0).
/// - A few variants not in the usual list (`o1-pro`, `o3-pro`, `gpt-5-pro`, `o1-mini`, ...)
///   are listed so that the family match does not price them as their far cheaper (or dearer)
///   base model.
const BUILTIN_PRICES: &[(&str, f64, f64, f64)] = &[
    // OpenAI
    ("gpt-4o", 2.50, 10.00, 1.25),
    ("gpt-4o-mini", 0.15, 0.60, 0.075),
    ("chatgpt-4o", 5.00, 15.00, 5.00),
    ("gpt-4.1", 2.00, 8.00, 0.50),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025),
    ("gpt-5", 1.25, 10.00, 0.125),
    ("gpt-5-mini", 0.25, 2.00, 0.025),
    ("gpt-5-nano", 0.05, 0.40, 0.005),
    ("gpt-5-pro", 15.00, 120.00, 15.00),
    ("gpt-5.1", 1.25, 10.00, 0.125),
    ("o1", 15.00, 60.00, 7.50),
    ("o1-mini", 1.10, 4.40, 0.55),
    ("o1-pro", 150.00, 600.00, 150.00),
    ("o3", 2.00, 8.00, 0.50),
    ("o3-mini", 1.10, 4.40, 0.55),
    ("o3-pro", 20.00, 80.00, 20.00),
    ("o4-mini", 1.10, 4.40, 0.275),
    ("gpt-4-turbo", 10.00, 30.00, 10.00),
    ("gpt-4-1106-preview", 10.00, 30.00, 10.00),
    ("gpt-4-0125-preview", 10.00, 30.00, 10.00),
    ("gpt-4", 30.00, 60.00, 30.00),
    ("gpt-4-32k", 60.00, 120.00, 60.00),
    ("gpt-3.5-turbo", 0.50, 1.50, 0.50),
    ("text-embedding-3-small", 0.02, 0.0, 0.02),
    ("text-embedding-3-large", 0.13, 0.0, 0.13),
    ("text-embedding-ada-002", 0.10, 0.0, 0.10),
    // Anthropic (cached input = cache read)
    ("claude-opus-4-5", 5.00, 25.00, 0.50),
    ("claude-opus-4-1", 15.00, 75.00, 1.50),
    ("claude-opus-4", 15.00, 75.00, 1.50),
    ("claude-sonnet-4-5", 3.00, 15.00, 0.30),
    ("claude-sonnet-4", 3.00, 15.00, 0.30),
    ("claude-3-7-sonnet", 3.00, 15.00, 0.30),
    ("claude-3-5-sonnet", 3.00, 15.00, 0.30),
    ("claude-haiku-4-5", 1.00, 5.00, 0.10),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08),
    ("claude-3-haiku", 0.25, 1.25, 0.03),
    ("claude-3-opus", 15.00, 75.00, 1.50),
    // Google (base tier: prompts <= 200k tokens for 2.x, <= 128k for 1.5; text input)
    ("gemini-2.5-pro", 1.25, 10.00, 0.125),
    ("gemini-2.5-flash", 0.30, 2.50, 0.03),
    ("gemini-2.5-flash-lite", 0.10, 0.40, 0.01),
    ("gemini-2.0-flash", 0.10, 0.40, 0.025),
    ("gemini-2.0-flash-lite", 0.075, 0.30, 0.075),
    ("gemini-1.5-pro", 1.25, 5.00, 0.3125),
    ("gemini-1.5-flash", 0.075, 0.30, 0.01875),
    ("gemini-1.5-flash-8b", 0.0375, 0.15, 0.01),
    // Mistral (no cache discount). The bare `mistral-large` family keeps Large 2's price, the
    // higher one, so that an unknown Large version is over- rather than under-reserved; Large 3
    // (`mistral-large-2512`) is listed on its own.
    ("mistral-large", 2.00, 6.00, 2.00),
    ("mistral-large-2512", 0.50, 1.50, 0.50),
    ("mistral-medium", 0.40, 2.00, 0.40),
    ("mistral-small", 0.10, 0.30, 0.10),
    ("codestral", 0.30, 0.90, 0.30),
    ("ministral-8b", 0.10, 0.10, 0.10),
    ("ministral-3b", 0.04, 0.04, 0.04),
    ("open-mistral-nemo", 0.15, 0.15, 0.15),
    ("pixtral-large", 2.00, 6.00, 2.00),
    ("mistral-embed", 0.10, 0.0, 0.10),
];

fn builtin_table() -> &'static HashMap<&'static str, Price> {
    static TABLE: OnceLock<HashMap<&'static str, Price>> = OnceLock::new();
    TABLE.get_or_init(|| {
        BUILTIN_PRICES
            .iter()
            .filter_map(|&(model, input, output, cached)| {
                match Price::from_usd_per_million(input, output, Some(cached)) {
                    Ok(price) => Some((model, price)),
                    Err(error) => {
                        // Unreachable with the literal table above (a unit test checks it).
                        tracing::error!(model, %error, "invalid built-in price");
                        None
                    }
                }
            })
            .collect()
    })
}

/// The built-in list price of `model`, if the table knows it.
///
/// Matching is case-insensitive and tries, in order:
/// 1. the name as given;
/// 2. without a provider prefix: everything up to the last `/` (`openai/`, `anthropic/`,
///    `google/`, `gemini/`, `mistral/`, `models/`, or any other router's prefix);
/// 3. without trailing version suffixes: `-latest`, a date (`-2024-08-06`, `-20241022`,
///    `-240229`), or a 3- or 4-digit version (`-001`, `-0613`, `-2411`). Other suffixes such
///    as `-preview-05-20` are not stripped;
/// 4. the longest table name that is a prefix of the (unprefixed) name ending at a `-`, `@`
///    or `:` boundary. So `gpt-4o-mini-2024-07-18` is `gpt-4o-mini`, never `gpt-4o`, and
///    `gpt-4.1` is never `gpt-4`. A variant of a family is priced as the family: for example
///    `gpt-4o-audio-preview` and `gpt-4o-search-preview` are priced as `gpt-4o` (their text
///    token price), and `o3-deep-research` as `o3`, which is cheaper than its real price.
///    Operators who serve such variants should price them in the config.
pub fn builtin_price(model: &str) -> Option<Price> {
    let table = builtin_table();
    match_model(model, true, |name| table.get(name).copied())
}

/// Looks `model` up through `get` following the steps of [`builtin_price`]; the family prefix
/// step (4) only when `family_match`.
fn match_model(
    model: &str,
    family_match: bool,
    get: impl Fn(&str) -> Option<Price>,
) -> Option<Price> {
    let lower = model.trim().to_ascii_lowercase();
    if let Some(price) = get(&lower) {
        return Some(price);
    }
    let unprefixed = strip_provider_prefix(&lower);
    if unprefixed.is_empty() {
        return None;
    }
    if unprefixed.len() != lower.len() {
        if let Some(price) = get(unprefixed) {
            return Some(price);
        }
    }
    let base = strip_version_suffixes(unprefixed);
    if base.len() != unprefixed.len() {
        if let Some(price) = get(base) {
            return Some(price);
        }
    }
    if !family_match {
        return None;
    }
    // Longest first: walk the boundaries from the end. `base` is itself one of these
    // prefixes, so this also covers every name the suffix stripping could reach.
    unprefixed
        .char_indices()
        .rev()
        .filter(|&(_, c)| matches!(c, '-' | '@' | ':'))
        .find_map(|(at, _)| get(&unprefixed[..at]))
}

/// `openai/gpt-4o` → `gpt-4o`, `gemini/models/gemini-2.5-pro` → `gemini-2.5-pro`.
fn strip_provider_prefix(model: &str) -> &str {
    match model.rfind('/') {
        Some(at) => &model[at + 1..],
        None => model,
    }
}

/// Removes trailing `-latest`, date and numeric version suffixes, never the whole name.
fn strip_version_suffixes(model: &str) -> &str {
    let mut name = model;
    loop {
        let stripped = strip_one_version_suffix(name);
        if stripped.len() == name.len() || stripped.is_empty() {
            return name;
        }
        name = stripped;
    }
}

fn strip_one_version_suffix(name: &str) -> &str {
    if let Some(rest) = name.strip_suffix("-latest") {
        return rest;
    }
    // -YYYY-MM-DD
    let bytes = name.as_bytes();
    if bytes.len() > 11 {
        let tail = &bytes[bytes.len() - 11..];
        let is_date = tail.iter().enumerate().all(|(i, b)| match i {
            0 | 5 | 8 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
        if is_date {
            return &name[..name.len() - 11];
        }
    }
    // -001, -0613, -2411, -240229, -20241022
    if let Some(at) = name.rfind('-') {
        let segment = &name[at + 1..];
        if matches!(segment.len(), 3 | 4 | 6 | 8) && segment.bytes().all(|b| b.is_ascii_digit()) {
            return &name[..at];
        }
    }
    name
}

/// Where a request's price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource {
    /// An operator's price in the config (for the alias or the upstream model).
    Config,
    /// The built-in table.
    Builtin,
    /// The config's default price for models nothing else prices.
    Default,
}

impl PriceSource {
    /// The name used in metadata and logs: `config`, `builtin` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Config => "config",
            PriceSource::Builtin => "builtin",
            PriceSource::Default => "default",
        }
    }
}

/// A price and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricedBy {
    pub price: Price,
    pub source: PriceSource,
}

/// The prices a snapshot uses: operator overrides, the built-in table, a default.
#[derive(Debug, Clone)]
pub struct PriceTable {
    /// Overrides keyed by lower-cased alias or upstream model name.
    overrides: HashMap<String, Price>,
    default: Option<Price>,
    use_builtin: bool,
}

impl PriceTable {
    /// `overrides` are keyed by a Gantry alias or an upstream model name, case-insensitively
    /// (if two keys differ only in case, the one that sorts first wins; config validation
    /// should refuse such keys). `default` prices models nothing else prices; `use_builtin`
    /// turns the built-in table on.
    pub fn new(
        overrides: HashMap<String, Price>,
        default: Option<Price>,
        use_builtin: bool,
    ) -> PriceTable {
        let mut entries: Vec<(String, Price)> = overrides.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut lowered = HashMap::with_capacity(entries.len());
        for (key, price) in entries {
            lowered
                .entry(key.trim().to_ascii_lowercase())
                .or_insert(price);
        }
        PriceTable {
            overrides: lowered,
            default,
            use_builtin,
        }
    }

    /// The price of a request for `alias` served by `upstream_model`, first found of:
    /// 1. an override for the alias (exact name, case-insensitive);
    /// 2. an override for the upstream model: exact, or after removing a provider prefix and
    ///    version suffixes as [`builtin_price`] does (so an override for `gpt-4o` prices
    ///    `openai/gpt-4o-2024-08-06`), but without the family match (an override for `gpt-4o`
    ///    never prices `gpt-4o-mini`);
    /// 3. the built-in price of the upstream model, when the built-in table is on;
    /// 4. the default price.
    pub fn lookup(&self, alias: &str, upstream_model: &str) -> Option<PricedBy> {
        let config = |price| PricedBy {
            price,
            source: PriceSource::Config,
        };
        if let Some(price) = self.overrides.get(&alias.trim().to_ascii_lowercase()) {
            return Some(config(*price));
        }
        if let Some(price) = match_model(upstream_model, false, |name| {
            self.overrides.get(name).copied()
        }) {
            return Some(config(price));
        }
        if self.use_builtin {
            if let Some(price) = builtin_price(upstream_model) {
                return Some(PricedBy {
                    price,
                    source: PriceSource::Builtin,
                });
            }
        }
        self.default.map(|price| PricedBy {
            price,
            source: PriceSource::Default,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(input: f64, output: f64, cached: f64) -> Price {
        Price::from_usd_per_million(input, output, Some(cached)).expect("valid price")
    }

    #[test]
    fn from_usd_converts_and_rounds_to_the_nearest_nano() {
        let price = usd(0.15, 0.60, 0.075);
        assert_eq!(price.input, 150_000_000);
        assert_eq!(price.output, 600_000_000);
        assert_eq!(price.cached_input, 75_000_000);
        // 0.0000000014 USD = 1.4 nanos → 1; 0.0000000016 → 2.
        let tiny = Price::from_usd_per_million(1.4e-9, 1.6e-9, None).expect("valid");
        assert_eq!((tiny.input, tiny.output, tiny.cached_input), (1, 2, 1));
    }

    #[test]
    fn from_usd_defaults_cached_input_to_input() {
        let price = Price::from_usd_per_million(2.0, 6.0, None).expect("valid");
        assert_eq!(price.cached_input, price.input);
    }

    #[test]
    fn from_usd_refuses_bad_numbers() {
        for bad in [-0.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e10] {
            assert!(
                Price::from_usd_per_million(bad, 1.0, None).is_err(),
                "{bad}"
            );
            assert!(
                Price::from_usd_per_million(1.0, bad, None).is_err(),
                "{bad}"
            );
            assert!(
                Price::from_usd_per_million(1.0, 1.0, Some(bad)).is_err(),
                "{bad}"
            );
        }
        assert!(Price::from_usd_per_million(0.0, 0.0, Some(0.0)).is_ok());
    }

    #[test]
    fn cost_splits_cached_input_and_rounds_up_once() {
        let price = usd(2.50, 10.00, 1.25);
        let tokens = TokenCounts {
            input: 1_000,
            cached_input: 400,
            output: 200,
        };
        // 600 * 2.5e3 + 400 * 1.25e3 + 200 * 10e3 nanos = 1.5e6 + 0.5e6 + 2e6 = 4e6 nanos.
        assert_eq!(price.cost(&tokens), 4_000_000);

        // One token at $0.15/M is 150 nanos exactly; at $0.075/M it is 75.
        let mini = usd(0.15, 0.60, 0.075);
        let one = TokenCounts {
            input: 1,
            cached_input: 0,
            output: 0,
        };
        assert_eq!(mini.cost(&one), 150);

        // 1 token at 1 nano per million tokens: 1e-6 nanos, rounded up to 1.
        let cheap = Price {
            input: 1,
            output: 1,
            cached_input: 1,
        };
        assert_eq!(cheap.cost(&one), 1);
        // Rounded once over the sum, not per part: 3 parts of 1e-6 nanos → 1, not 3.
        let three = TokenCounts {
            input: 2,
            cached_input: 1,
            output: 1,
        };
        assert_eq!(cheap.cost(&three), 1);
        assert_eq!(cheap.cost(&TokenCounts::default()), 0);
    }

    #[test]
    fn cost_saturates_cached_beyond_input() {
        let price = usd(1.0, 0.0, 0.5);
        let tokens = TokenCounts {
            input: 10,
            cached_input: 30,
            output: 0,
        };
        // No negative uncached part; all 30 cached tokens at 500 nanos each.
        assert_eq!(price.cost(&tokens), 15_000);
    }

    #[test]
    fn cost_never_overflows() {
        let max = Price {
            input: Nanos::MAX,
            output: Nanos::MAX,
            cached_input: Nanos::MAX,
        };
        let huge = TokenCounts {
            input: u64::MAX,
            cached_input: u64::MAX / 2,
            output: u64::MAX,
        };
        assert_eq!(max.cost(&huge), Nanos::MAX);
        let negative = Price {
            input: -5,
            output: Nanos::MIN,
            cached_input: -1,
        };
        assert_eq!(negative.cost(&huge), 0);
        // Large but representable: 1e12 tokens at $100/M = $1e8 = 1e17 nanos.
        let big = usd(100.0, 0.0, 100.0);
        let tokens = TokenCounts {
            input: 1_000_000_000_000,
            cached_input: 0,
            output: 0,
        };
        assert_eq!(big.cost(&tokens), 100_000_000 * NANOS_PER_USD);
    }

    #[test]
    fn builtin_table_is_valid_and_unique() {
        assert_eq!(builtin_table().len(), BUILTIN_PRICES.len());
        for (model, ..) in BUILTIN_PRICES {
            assert_eq!(*model, model.to_ascii_lowercase());
        }
    }

    fn builtin(model: &str) -> Option<Price> {
        builtin_price(model)
    }

    fn table(model: &str) -> Price {
        *builtin_table().get(model).expect("in the table")
    }

    #[test]
    fn builtin_exact_and_case_insensitive() {
        assert_eq!(builtin("gpt-4o"), Some(usd(2.5, 10.0, 1.25)));
        assert_eq!(builtin("GPT-4o-Mini"), Some(table("gpt-4o-mini")));
        assert_eq!(builtin(" gpt-4.1 "), Some(table("gpt-4.1")));
        assert_eq!(
            builtin("text-embedding-ada-002"),
            Some(table("text-embedding-ada-002"))
        );
        assert_eq!(builtin("unknown-model"), None);
        assert_eq!(builtin(""), None);
        assert_eq!(builtin("openai/"), None);
    }

    #[test]
    fn builtin_strips_provider_prefixes() {
        assert_eq!(builtin("openai/gpt-4o"), Some(table("gpt-4o")));
        assert_eq!(
            builtin("anthropic/claude-3-haiku"),
            Some(table("claude-3-haiku"))
        );
        assert_eq!(
            builtin("google/gemini-2.5-pro"),
            Some(table("gemini-2.5-pro"))
        );
        assert_eq!(
            builtin("gemini/gemini-2.0-flash"),
            Some(table("gemini-2.0-flash"))
        );
        assert_eq!(
            builtin("models/gemini-1.5-flash"),
            Some(table("gemini-1.5-flash"))
        );
        assert_eq!(
            builtin("mistral/codestral-latest"),
            Some(table("codestral"))
        );
        assert_eq!(
            builtin("openai/text-embedding-ada-002"),
            Some(table("text-embedding-ada-002"))
        );
    }

    #[test]
    fn builtin_strips_version_suffixes() {
        assert_eq!(builtin("gpt-4o-2024-08-06"), Some(table("gpt-4o")));
        assert_eq!(
            builtin("gpt-4o-mini-2024-07-18"),
            Some(table("gpt-4o-mini"))
        );
        assert_eq!(
            builtin("claude-3-5-sonnet-20241022"),
            Some(table("claude-3-5-sonnet"))
        );
        assert_eq!(
            builtin("claude-3-5-sonnet-latest"),
            Some(table("claude-3-5-sonnet"))
        );
        assert_eq!(
            builtin("claude-sonnet-4-5-20250929"),
            Some(table("claude-sonnet-4-5"))
        );
        assert_eq!(
            builtin("claude-opus-4-1-20250805"),
            Some(table("claude-opus-4-1"))
        );
        assert_eq!(
            builtin("claude-opus-4-20250514"),
            Some(table("claude-opus-4"))
        );
        assert_eq!(
            builtin("claude-3-haiku-20240307"),
            Some(table("claude-3-haiku"))
        );
        assert_eq!(builtin("gemini-1.5-pro-002"), Some(table("gemini-1.5-pro")));
        assert_eq!(builtin("gpt-4-0613"), Some(table("gpt-4")));
        assert_eq!(builtin("gpt-3.5-turbo-0125"), Some(table("gpt-3.5-turbo")));
        assert_eq!(builtin("mistral-large-2411"), Some(table("mistral-large")));
        assert_eq!(
            builtin("mistral-large-2512"),
            Some(table("mistral-large-2512"))
        );
        assert_eq!(
            builtin("mistral-small-latest"),
            Some(table("mistral-small"))
        );
        assert_eq!(builtin("ministral-8b-2410"), Some(table("ministral-8b")));
        assert_eq!(builtin("o3-mini-2025-01-31"), Some(table("o3-mini")));
        assert_eq!(builtin("o1-2024-12-17"), Some(table("o1")));
    }

    #[test]
    fn builtin_family_match_prefers_the_longest_name_at_a_boundary() {
        assert_eq!(builtin("gpt-4o-audio-preview"), Some(table("gpt-4o")));
        assert_eq!(
            builtin("gpt-4o-mini-search-preview-2025-03-11"),
            Some(table("gpt-4o-mini"))
        );
        assert_eq!(
            builtin("gpt-4-turbo-2024-04-09"),
            Some(table("gpt-4-turbo"))
        );
        assert_eq!(builtin("gpt-4-turbo-preview"), Some(table("gpt-4-turbo")));
        assert_eq!(builtin("gpt-5-chat-latest"), Some(table("gpt-5")));
        assert_eq!(builtin("o1-mini-2024-09-12"), Some(table("o1-mini")));
        assert_eq!(builtin("o3-pro-2025-06-10"), Some(table("o3-pro")));
        assert_eq!(
            builtin("gemini-2.5-flash-lite-preview-06-17"),
            Some(table("gemini-2.5-flash-lite"))
        );
        assert_eq!(
            builtin("gemini-2.5-flash-preview-05-20"),
            Some(table("gemini-2.5-flash"))
        );
        assert_eq!(
            builtin("claude-sonnet-4@20250514"),
            Some(table("claude-sonnet-4"))
        );
        // `.` is not a boundary: these are different models, not gpt-4 / gpt-5 variants.
        assert_eq!(builtin("gpt-4.5-preview"), None);
        assert_eq!(builtin("gpt-5.2"), None);
        assert_eq!(builtin("gpt-4omni"), None);
        assert_ne!(builtin("gpt-4.1-mini"), builtin("gpt-4"));
    }

    fn overrides(entries: &[(&str, Price)]) -> HashMap<String, Price> {
        entries.iter().map(|(k, p)| (k.to_string(), *p)).collect()
    }

    #[test]
    fn lookup_order_is_alias_upstream_builtin_default() {
        let alias_price = usd(1.0, 1.0, 1.0);
        let model_price = usd(2.0, 2.0, 2.0);
        let default = usd(3.0, 3.0, 3.0);
        let prices = PriceTable::new(
            overrides(&[("Fast", alias_price), ("my-model", model_price)]),
            Some(default),
            true,
        );

        let found = prices.lookup("fast", "my-model").expect("priced");
        assert_eq!(
            (found.price, found.source),
            (alias_price, PriceSource::Config)
        );

        let found = prices
            .lookup("other", "openai/my-model-latest")
            .expect("priced");
        assert_eq!(
            (found.price, found.source),
            (model_price, PriceSource::Config)
        );

        let found = prices.lookup("other", "gpt-4o-mini").expect("priced");
        assert_eq!(found.source, PriceSource::Builtin);
        assert_eq!(found.price, table("gpt-4o-mini"));

        let found = prices.lookup("other", "llama-3-70b").expect("priced");
        assert_eq!((found.price, found.source), (default, PriceSource::Default));
        assert_eq!(found.source.as_str(), "default");
    }

    #[test]
    fn upstream_overrides_do_not_match_families() {
        let mine = usd(9.0, 9.0, 9.0);
        let prices = PriceTable::new(overrides(&[("gpt-4o", mine)]), None, true);
        let dated = prices.lookup("a", "gpt-4o-2024-08-06").expect("priced");
        assert_eq!((dated.price, dated.source), (mine, PriceSource::Config));
        let mini = prices.lookup("a", "gpt-4o-mini").expect("priced");
        assert_eq!(
            (mini.price, mini.source),
            (table("gpt-4o-mini"), PriceSource::Builtin)
        );
    }

    #[test]
    fn lookup_without_builtin_or_default() {
        let prices = PriceTable::new(HashMap::new(), None, false);
        assert!(prices.lookup("a", "gpt-4o").is_none());
        let with_default = PriceTable::new(HashMap::new(), Some(Price::default()), false);
        let found = with_default.lookup("a", "gpt-4o").expect("default");
        assert_eq!(found.source, PriceSource::Default);
        assert_eq!(PriceSource::Config.as_str(), "config");
        assert_eq!(PriceSource::Builtin.as_str(), "builtin");
    }
}
