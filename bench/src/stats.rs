//! Statistics: what one round measured, medians across rounds, and differences between two
//! summaries; plus the number formatting the tables use.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// What is being counted: HTTP requests through a gateway, or ext_authz decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Decisions,
}

impl Unit {
    /// The rate's name in tables.
    pub fn rate(self) -> &'static str {
        match self {
            Unit::Requests => "req/s",
            Unit::Decisions => "decisions/s",
        }
    }

    /// The counted thing, plural.
    pub fn noun(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Decisions => "decisions",
        }
    }

    /// The rate's key in the JSON report.
    fn rate_key(self) -> &'static str {
        match self {
            Unit::Requests => "rps",
            Unit::Decisions => "decisions_per_s",
        }
    }
}

/// What one connection saw in a round.
#[derive(Default)]
pub struct Tally {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn absorb(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Records one outcome: errors count whenever they happen, latencies only when `measured`.
    pub fn record(&mut self, outcome: Result<(), String>, latency: Duration, measured: bool) {
        match outcome {
            Ok(()) if measured => self
                .latencies_us
                .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
            Ok(()) => {}
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

/// One round of one gateway (or decision kind).
pub struct RoundStats {
    /// Successful requests (or decisions) inside the measured window.
    pub count: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// `count` per second of the measured window.
    pub rate: f64,
}

impl RoundStats {
    pub fn new(mut tally: Tally, window: Duration) -> RoundStats {
        tally.latencies_us.sort_unstable();
        let count = tally.latencies_us.len() as u64;
        let mean_us = if count == 0 {
            0.0
        } else {
            tally.latencies_us.iter().sum::<u64>() as f64 / count as f64
        };
        RoundStats {
            count,
            errors: tally.errors,
            first_error: tally.first_error,
            mean_us,
            p50_us: percentile(&tally.latencies_us, 0.50),
            p99_us: percentile(&tally.latencies_us, 0.99),
            rate: count as f64 / window.as_secs_f64(),
        }
    }

    pub fn line(&self, unit: Unit) -> String {
        let mut line = format!(
            "{:>9.1} {}  mean {:>9}  p50 {:>9}  p99 {:>9}  ({} {}, {} errors)",
            self.rate,
            unit.rate(),
            format_us(self.mean_us),
            format_us(self.p50_us),
            format_us(self.p99_us),
            self.count,
            unit.noun(),
            self.errors
        );
        if let Some(error) = &self.first_error {
            line.push_str(&format!("  FIRST ERROR: {error}"));
        }
        line
    }

    fn to_json(&self, unit: Unit) -> Value {
        Value::Object(fields(
            unit,
            [self.mean_us, self.p50_us, self.p99_us, self.rate],
            self.count,
            self.errors,
        ))
    }
}

/// The JSON members of a round or summary: `mean_us`, `p50_us`, `p99_us`, the rate, the count
/// and `errors` (for requests, the keys are `rps` and `requests`).
fn fields(
    unit: Unit,
    [mean_us, p50_us, p99_us, rate]: [f64; 4],
    count: u64,
    errors: u64,
) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("mean_us".into(), json!(round1(mean_us)));
    object.insert("p50_us".into(), json!(round1(p50_us)));
    object.insert("p99_us".into(), json!(round1(p99_us)));
    object.insert(unit.rate_key().into(), json!(round1(rate)));
    object.insert(unit.noun().into(), json!(count));
    object.insert("errors".into(), json!(errors));
    object
}

/// Nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One gateway in one scenario (or one decision kind): medians across rounds, totals of
/// requests and errors.
pub struct Summary {
    pub unit: Unit,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rate: f64,
    pub count: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    rounds: Vec<RoundStats>,
}

impl Summary {
    pub fn of(unit: Unit, rounds: Vec<RoundStats>) -> Summary {
        Summary {
            unit,
            mean_us: median(rounds.iter().map(|r| r.mean_us)),
            p50_us: median(rounds.iter().map(|r| r.p50_us)),
            p99_us: median(rounds.iter().map(|r| r.p99_us)),
            rate: median(rounds.iter().map(|r| r.rate)),
            count: rounds.iter().map(|r| r.count).sum(),
            errors: rounds.iter().map(|r| r.errors).sum(),
            first_error: rounds.iter().find_map(|r| r.first_error.clone()),
            rounds,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut object = fields(
            self.unit,
            [self.mean_us, self.p50_us, self.p99_us, self.rate],
            self.count,
            self.errors,
        );
        object.insert(
            "rounds".into(),
            self.rounds.iter().map(|r| r.to_json(self.unit)).collect(),
        );
        Value::Object(object)
    }

    /// A table row: p50, p99, mean, rate, count, errors.
    pub fn row(&self, label: &str, label_width: usize) -> String {
        format!(
            "  {label:<label_width$} {:>10} {:>10} {:>10} {:>11.1} {:>10} {:>7}",
            format_us(self.p50_us),
            format_us(self.p99_us),
            format_us(self.mean_us),
            self.rate,
            self.count,
            self.errors
        )
    }
}

/// The header of the table [`Summary::row`] fills.
pub fn table_header(first: &str, label_width: usize, unit: Unit) -> String {
    format!(
        "  {first:<label_width$} {:>10} {:>10} {:>10} {:>11} {:>10} {:>7}",
        "p50",
        "p99",
        "mean",
        unit.rate(),
        unit.noun(),
        "errors"
    )
}

/// `a` minus `b`: latency added, and the throughput ratio a/b.
pub struct Delta {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub ratio: f64,
}

impl Delta {
    pub fn between(a: &Summary, b: &Summary) -> Delta {
        Delta {
            p50_us: a.p50_us - b.p50_us,
            p99_us: a.p99_us - b.p99_us,
            mean_us: a.mean_us - b.mean_us,
            ratio: if b.rate > 0.0 { a.rate / b.rate } else { 0.0 },
        }
    }

    /// A table row under [`table_header`]: the differences, and the ratio in the rate column.
    pub fn row(&self, label: &str, label_width: usize, note: &str) -> String {
        format!(
            "  {label:<label_width$} {:>10} {:>10} {:>10} {:>10.3}x   {note}",
            format_signed_us(self.p50_us),
            format_signed_us(self.p99_us),
            format_signed_us(self.mean_us),
            self.ratio,
        )
    }

    /// `added_p50_us`, `added_p99_us`, `added_mean_us` and `<ratio_key>`, into `object`.
    pub fn insert_json(&self, object: &mut Map<String, Value>, ratio_key: &str) {
        object.insert("added_p50_us".into(), json!(round1(self.p50_us)));
        object.insert("added_p99_us".into(), json!(round1(self.p99_us)));
        object.insert("added_mean_us".into(), json!(round1(self.mean_us)));
        object.insert(
            ratio_key.into(),
            json!((self.ratio * 1000.0).round() / 1000.0),
        );
    }

    pub fn to_json(&self, ratio_key: &str) -> Value {
        let mut object = Map::new();
        self.insert_json(&mut object, ratio_key);
        Value::Object(object)
    }
}

pub fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

pub fn format_us(us: f64) -> String {
    if us.abs() < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn format_signed_us(us: f64) -> String {
    let sign = if us >= 0.0 { "+" } else { "-" };
    format!("{sign}{}", format_us(us.abs()))
}
