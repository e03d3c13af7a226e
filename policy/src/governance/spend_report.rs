//! Spend reports: the spend log grouped by key, user, team, model, provider or day, and
//! rendered as a table, CSV or JSON (what `gantry spend` prints).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;

use super::ledger::{Nanos, SpendOutcome, SpendRecord};
use super::metering::format_usd;

/// Comma-separated group names (`key,day`) as a list; the error names an unknown one.
pub fn parse_groups(text: &str) -> Result<Vec<GroupBy>, String> {
    let mut by = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match GroupBy::parse(name) {
            Some(group) => by.push(group),
            None => {
                return Err(format!(
                    "unknown group '{name}' (use key, user, team, model, provider, day)"
                ))
            }
        }
    }
    Ok(by)
}

/// `2026-11-01` (local midnight in `zone`) or `2026-11-01T12:00:00Z`, as ms since the epoch.
pub fn parse_instant(text: &str, zone: &TimeZone) -> Result<i64, String> {
    if let Ok(instant) = text.parse::<Timestamp>() {
        return Ok(instant.as_millisecond());
    }
    let date: jiff::civil::Date = text.parse().map_err(|_| {
        format!(
            "'{text}' is neither a date (2026-11-01) nor an RFC 3339 time (2026-11-01T12:00:00Z)"
        )
    })?;
    let start = date
        .to_zoned_datetime(zone.clone())
        .and_then(|z| z.start_of_day())
        .map_err(|e| format!("'{text}': {e}"))?;
    Ok(start.timestamp().as_millisecond())
}

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    User,
    Team,
    Model,
    Provider,
    /// Calendar day in the report's time zone.
    Day,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        Some(match text {
            "key" | "api_key" => GroupBy::Key,
            "user" => GroupBy::User,
            "team" => GroupBy::Team,
            "model" => GroupBy::Model,
            "provider" => GroupBy::Provider,
            "day" => GroupBy::Day,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Day => "day",
        }
    }

    fn value(self, record: &SpendRecord, zone: &TimeZone) -> String {
        let text = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        match self {
            GroupBy::Key => text(&record.api_key),
            GroupBy::User => text(if record.user.is_empty() {
                &record.subject
            } else {
                &record.user
            }),
            GroupBy::Team => text(&record.team),
            GroupBy::Model => text(&record.model),
            GroupBy::Provider => text(&record.provider),
            GroupBy::Day => Timestamp::from_millisecond(record.time_ms)
                .map(|t| {
                    t.to_zoned_datetime(zone.clone())
                        .strftime("%Y-%m-%d")
                        .to_string()
                })
                .unwrap_or_else(|_| "-".into()),
        }
    }
}

/// One row of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpendRow {
    /// The group's values, in the order of the report's `GroupBy` list.
    pub group: Vec<String>,
    pub requests: u64,
    /// Requests refused by a budget or a rate limit.
    pub refused: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: Nanos,
}

/// Groups records; rows sorted by their group values.
pub fn aggregate(records: &[SpendRecord], by: &[GroupBy], zone: &TimeZone) -> Vec<SpendRow> {
    let mut rows: BTreeMap<Vec<String>, SpendRow> = BTreeMap::new();
    for record in records {
        let group: Vec<String> = by.iter().map(|g| g.value(record, zone)).collect();
        let row = rows.entry(group.clone()).or_insert_with(|| SpendRow {
            group,
            ..Default::default()
        });
        row.requests += 1;
        if matches!(
            record.outcome,
            SpendOutcome::BudgetExceeded | SpendOutcome::RateLimited
        ) {
            row.refused += 1;
        }
        row.input_tokens += record.input_tokens;
        row.cached_input_tokens += record.cached_input_tokens;
        row.output_tokens += record.output_tokens;
        row.cost_nanos = row.cost_nanos.saturating_add(record.cost_nanos);
    }
    rows.into_values().collect()
}

const COLUMNS: [&str; 6] = [
    "requests",
    "refused",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
];

fn numbers(row: &SpendRow) -> [String; 6] {
    [
        row.requests.to_string(),
        row.refused.to_string(),
        row.input_tokens.to_string(),
        row.cached_input_tokens.to_string(),
        row.output_tokens.to_string(),
        format_usd(row.cost_nanos),
    ]
}

/// A fixed-width text table with a total line.
pub fn render_table(rows: &[SpendRow], by: &[GroupBy]) -> String {
    // At least one label column, for the TOTAL line (a report without groups has one row).
    let labels = by.len().max(1);
    let mut header: Vec<String> = by.iter().map(|g| g.as_str().to_string()).collect();
    header.resize(labels, String::new());
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in rows {
        let mut line = row.group.clone();
        line.resize(labels, String::new());
        line.extend(numbers(row));
        lines.push(line);
    }
    let total = total_row(rows, labels);
    let mut line = total.group.clone();
    line.extend(numbers(&total));
    lines.push(line);
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c < labels {
                    format!("{cell:<width$}", width = widths[c])
                } else {
                    format!("{cell:>width$}", width = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

fn total_row(rows: &[SpendRow], groups: usize) -> SpendRow {
    let mut total = SpendRow {
        group: vec!["TOTAL".to_string()],
        ..Default::default()
    };
    total.group.resize(groups.max(1), String::new());
    for row in rows {
        total.requests += row.requests;
        total.refused += row.refused;
        total.input_tokens += row.input_tokens;
        total.cached_input_tokens += row.cached_input_tokens;
        total.output_tokens += row.output_tokens;
        total.cost_nanos = total.cost_nanos.saturating_add(row.cost_nanos);
    }
    total
}

/// CSV with a header line (RFC 4180 quoting).
pub fn render_csv(rows: &[SpendRow], by: &[GroupBy]) -> String {
    let mut out = String::new();
    let mut header: Vec<&str> = by.iter().map(|g| g.as_str()).collect();
    header.extend(COLUMNS);
    let _ = writeln!(out, "{}", header.join(","));
    for row in rows {
        let mut cells: Vec<String> = row.group.iter().map(|g| csv_cell(g)).collect();
        cells.extend(numbers(row));
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

/// Raw records as CSV, one line per request.
pub fn render_records_csv(records: &[SpendRecord]) -> String {
    let mut out = String::from(
        "time,request_id,subject,user,team,api_key,model,upstream_model,provider,input_tokens,cached_input_tokens,output_tokens,cost_usd,status,outcome,latency_ms,stream\n",
    );
    for r in records {
        let time = Timestamp::from_millisecond(r.time_ms)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let cells = [
            time,
            csv_cell(&r.request_id),
            csv_cell(&r.subject),
            csv_cell(&r.user),
            csv_cell(&r.team),
            csv_cell(&r.api_key),
            csv_cell(&r.model),
            csv_cell(&r.upstream_model),
            csv_cell(&r.provider),
            r.input_tokens.to_string(),
            r.cached_input_tokens.to_string(),
            r.output_tokens.to_string(),
            format_usd(r.cost_nanos),
            r.status.to_string(),
            r.outcome.as_str().to_string(),
            r.latency_ms.to_string(),
            r.stream.to_string(),
        ];
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

/// Rows as a JSON array of objects keyed by column name.
pub fn render_json(rows: &[SpendRow], by: &[GroupBy]) -> String {
    let values: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut object = serde_json::Map::new();
            for (g, value) in by.iter().zip(&row.group) {
                object.insert(g.as_str().into(), value.clone().into());
            }
            object.insert("requests".into(), row.requests.into());
            object.insert("refused".into(), row.refused.into());
            object.insert("input_tokens".into(), row.input_tokens.into());
            object.insert("cached_input_tokens".into(), row.cached_input_tokens.into());
            object.insert("output_tokens".into(), row.output_tokens.into());
            object.insert("cost_usd".into(), usd_number(row.cost_nanos));
            serde_json::Value::Object(object)
        })
        .collect();
    serde_json::to_string_pretty(&values).unwrap_or_else(|_| "[]".into())
}

/// Dollars as a JSON number with the six decimals of [`format_usd`].
fn usd_number(nanos: Nanos) -> serde_json::Value {
    format_usd(nanos)
        .parse::<serde_json::Number>()
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time: &str, key: &str, team: &str, model: &str, cost: Nanos) -> SpendRecord {
        SpendRecord {
            time_ms: time.parse::<Timestamp>().unwrap().as_millisecond(),
            request_id: String::new(),
            subject: key.into(),
            user: String::new(),
            team: team.into(),
            api_key: key.into(),
            model: model.into(),
            upstream_model: model.into(),
            provider: "p".into(),
            input_tokens: 10,
            cached_input_tokens: 0,
            output_tokens: 5,
            cost_nanos: cost,
            status: 200,
            outcome: SpendOutcome::Ok,
            latency_ms: 3,
            stream: false,
        }
    }

    #[test]
    fn groups_by_team_and_day_in_the_time_zone() {
        let records = [
            record("2026-11-24T23:30:00Z", "a", "eng", "m", 1_500_000_000),
            record("2026-11-25T10:00:00Z", "b", "eng", "m", 250_000_000),
            record("2026-11-25T11:00:00Z", "c", "ops", "m", 1),
        ];
        let utc = aggregate(&records, &[GroupBy::Team, GroupBy::Day], &TimeZone::UTC);
        assert_eq!(utc.len(), 3);
        assert_eq!(utc[0].group, vec!["eng", "2026-11-24"]);
        // In Paris the first record is already on the 25th.
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let rows = aggregate(&records, &[GroupBy::Team, GroupBy::Day], &paris);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].group, vec!["eng", "2026-11-25"]);
        assert_eq!(rows[0].requests, 2);
        assert_eq!(rows[0].cost_nanos, 1_750_000_000);
        let table = render_table(&rows, &[GroupBy::Team, GroupBy::Day]);
        assert!(table.contains("1.750000"), "{table}");
        assert!(
            table.lines().last().unwrap().starts_with("TOTAL"),
            "{table}"
        );
        let csv = render_csv(&rows, &[GroupBy::Team, GroupBy::Day]);
        assert_eq!(
            csv.lines().next().unwrap(),
            "team,day,requests,refused,input_tokens,cached_input_tokens,output_tokens,cost_usd"
        );
        assert!(csv.contains("eng,2026-11-25,2,0,20,0,10,1.750000"), "{csv}");
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&rows, &[GroupBy::Team])).unwrap();
        assert_eq!(json[0]["cost_usd"], serde_json::json!(1.75));
    }

    #[test]
    fn a_report_without_groups_is_one_row_and_its_total() {
        let records = [
            record("2026-11-25T10:00:00Z", "a", "eng", "m", 2_000),
            record("2026-11-25T11:00:00Z", "b", "ops", "m", 3_000),
        ];
        let rows = aggregate(&records, &[], &TimeZone::UTC);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].requests, rows[0].cost_nanos), (2, 5_000));
        let table = render_table(&rows, &[]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].trim_start().starts_with("requests"), "{table}");
        assert!(lines[2].starts_with("TOTAL"), "{table}");
        assert!(lines[2].trim_end().ends_with("0.000005"), "{table}");
    }

    #[test]
    fn csv_cells_are_quoted_when_needed() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("plain"), "plain");
        let mut r = record("2026-11-25T10:00:00Z", "k,1", "t", "m", 5);
        r.request_id = "id".into();
        let csv = render_records_csv(&[r]);
        assert!(csv.lines().nth(1).unwrap().contains("\"k,1\""));
    }
}
