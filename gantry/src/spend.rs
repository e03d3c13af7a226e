//! `gantry spend`: reads the spend log from the configured store and prints it grouped (by key,
//! user, team, model, provider, day), or exports the raw records, as a table, CSV or JSON.

use anyhow::Context;
use gantry_policy::config::GovernanceSection;
use gantry_policy::governance::ledger::{SpendQuery, SpendRecord};
use gantry_policy::governance::spend_report::{
    aggregate, parse_groups, parse_instant, render_csv, render_json, render_records_csv,
    render_table, GroupBy, SpendRow,
};
use jiff::tz::TimeZone;

use crate::governance_store::open_store_for_reading;

/// How `gantry spend` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpendFormat {
    Table,
    Csv,
    Json,
}

pub struct SpendOptions {
    /// Comma-separated groups: key, user, team, model, provider, day.
    pub by: String,
    /// `YYYY-MM-DD` (midnight in the governance time zone) or an RFC 3339 instant.
    pub since: Option<String>,
    pub until: Option<String>,
    pub format: SpendFormat,
    /// One line per request instead of groups.
    pub records: bool,
}

/// Reads and renders the spend log.
pub async fn report(section: &GovernanceSection, options: &SpendOptions) -> anyhow::Result<String> {
    let zone = TimeZone::get(section.time_zone_name())
        .with_context(|| format!("time zone {}", section.time_zone_name()))?;
    let by = parse_groups(&options.by).map_err(|e| anyhow::anyhow!("--by: {e}"))?;
    let query = SpendQuery {
        since_ms: options
            .since
            .as_deref()
            .map(|t| parse_instant(t, &zone).map_err(|e| anyhow::anyhow!("--since: {e}")))
            .transpose()?,
        until_ms: options
            .until
            .as_deref()
            .map(|t| parse_instant(t, &zone).map_err(|e| anyhow::anyhow!("--until: {e}")))
            .transpose()?,
    };
    let store = open_store_for_reading(&section.store)?;
    let records = store
        .spend(&query)
        .await
        .with_context(|| format!("cannot read the spend log from the {} store", store.kind()))?;
    if options.records {
        return render_records(&records, options.format);
    }
    Ok(render_rows(
        &aggregate(&records, &by, &zone),
        &by,
        options.format,
    ))
}

/// Spend records as `gantry spend --records` prints them: JSON lines, or CSV.
pub fn render_records(records: &[SpendRecord], format: SpendFormat) -> anyhow::Result<String> {
    Ok(match format {
        SpendFormat::Json => {
            let mut out = String::new();
            for record in records {
                out.push_str(&serde_json::to_string(record)?);
                out.push('\n');
            }
            out
        }
        SpendFormat::Csv | SpendFormat::Table => render_records_csv(records),
    })
}

/// Grouped spend as `gantry spend` prints it.
pub fn render_rows(rows: &[SpendRow], by: &[GroupBy], format: SpendFormat) -> String {
    match format {
        SpendFormat::Table => render_table(rows, by),
        SpendFormat::Csv => render_csv(rows, by),
        SpendFormat::Json => render_json(rows, by) + "\n",
    }
}
