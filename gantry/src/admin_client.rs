//! The admin API's client side: `gantry key create|list|show|update|revoke|rotate`, `gantry budget
//! set|show|list|delete`, `gantry metadata set|list`, `gantry spend`, `gantry audit` and
//! `gantry reload` call a running Gantry's `gantry.admin.v1.AdminService` and print the answer
//! as a table (or JSON).
//!
//! The address comes from `--admin-url` / `GANTRY_ADMIN_URL` (default the admin API's default
//! listen address) and the admin token from `GANTRY_ADMIN_TOKEN` or `--admin-token-file`,
//! never from the command line, where other users could read it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use gantry_admin::convert;
use gantry_policy::admin::Subject;
use gantry_policy::config::BudgetWindow;
use gantry_policy::governance::ledger::SpendRecord;
use gantry_policy::governance::spend_report::{parse_groups, SpendRow};
use gantry_proto::admin::v1 as pb;
use gantry_proto::admin::v1::admin_service_client::AdminServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::spend::{render_records, render_rows, SpendFormat};

/// Where the CLI finds the admin API and its credential.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminConnection {
    /// The admin API (default: admin_api's default listen address).
    #[arg(
        long,
        env = "GANTRY_ADMIN_URL",
        default_value = "http://127.0.0.1:10005",
        global = true
    )]
    pub admin_url: String,
    /// A file holding the admin token (default: the GANTRY_ADMIN_TOKEN environment variable).
    #[arg(long, global = true)]
    pub admin_token_file: Option<PathBuf>,
}

/// A connected client that sends the admin token with every call.
pub struct Admin {
    client: AdminServiceClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
}

impl Admin {
    pub async fn connect(connection: &AdminConnection) -> anyhow::Result<Admin> {
        let token = match &connection.admin_token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token from {}", path.display()))?,
            None => std::env::var("GANTRY_ADMIN_TOKEN").map_err(|_| {
                anyhow::anyhow!(
                    "no admin token: set GANTRY_ADMIN_TOKEN or pass --admin-token-file (a token whose hash is in admin_api.tokens)"
                )
            })?,
        };
        let token = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .context("the admin token is not valid header text")?;
        let client = AdminServiceClient::connect(connection.admin_url.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot reach the admin API at {} (is Gantry running with an admin_api section?)",
                    connection.admin_url
                )
            })?;
        Ok(Admin { client, token })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        request
    }
}

/// A gRPC error as the CLI says it.
fn failed(what: &str, status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::Unauthenticated => "refused",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::FailedPrecondition => "not possible",
        tonic::Code::Unavailable => "unavailable",
        _ => "failed",
    };
    anyhow::anyhow!("{what} {code}: {}", status.message())
}

/// How list commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct KeyCreate {
    /// The key's name (letters, digits, '-', '_', '.').
    pub name: String,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub team: Option<String>,
    /// A model the key may use (repeat; default: every model).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// A label, `name=value` (repeat).
    #[arg(long = "label", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// RFC 3339 time after which the key is refused.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// A dollar budget on the key (with --budget-window).
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// A token budget on the key (with --budget-window).
    #[arg(long)]
    pub budget_tokens: Option<u64>,
    #[arg(long, value_enum, default_value = "month")]
    pub budget_window: WindowArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowArg {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Total,
}

impl WindowArg {
    fn proto(self) -> i32 {
        convert::window_to_proto(match self {
            WindowArg::Minute => BudgetWindow::Minute,
            WindowArg::Hour => BudgetWindow::Hour,
            WindowArg::Day => BudgetWindow::Day,
            WindowArg::Week => BudgetWindow::Week,
            WindowArg::Month => BudgetWindow::Month,
            WindowArg::Total => BudgetWindow::Total,
        })
    }
}

/// `name=value`, for labels and metadata entries.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not name=value")),
    }
}

fn subject_proto(text: &str) -> anyhow::Result<pb::Subject> {
    let subject = Subject::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(convert::subject_to_proto(&subject))
}

fn subject_text(subject: Option<&pb::Subject>) -> String {
    convert::subject_from_proto(subject)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn window_text(value: i32) -> &'static str {
    convert::window_from_proto(value).map_or("?", BudgetWindow::as_str)
}

fn source_text(value: i32) -> &'static str {
    match pb::Source::try_from(value) {
        Ok(pb::Source::Config) => "config",
        Ok(pb::Source::Runtime) => "runtime",
        _ => "?",
    }
}

fn state_text(value: i32) -> &'static str {
    match pb::KeyState::try_from(value) {
        Ok(pb::KeyState::Active) => "active",
        Ok(pb::KeyState::Revoked) => "revoked",
        Ok(pb::KeyState::Expired) => "expired",
        Ok(pb::KeyState::Disabled) => "disabled",
        Ok(pb::KeyState::Shadowed) => "shadowed by config",
        _ => "?",
    }
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

fn key_json(key: &pb::Key) -> serde_json::Value {
    serde_json::json!({
        "name": key.name,
        "source": source_text(key.source),
        "state": state_text(key.state),
        "hash": key.hash,
        "user": key.user,
        "team": key.team,
        "models": key.models,
        "labels": key.labels.iter().collect::<BTreeMap<_, _>>(),
        "expires_at": key.expires_at,
        "created_at": key.created_at,
        "created_by": key.created_by,
        "revoked_at": key.revoked_at,
        "revoked_by": key.revoked_by,
        "previous_secrets": key.previous_secrets.iter().map(|p| serde_json::json!({"hash": p.hash, "valid_until": p.valid_until})).collect::<Vec<_>>(),
    })
}

fn describe_key(key: &pb::Key) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name:     {}", key.name);
    let _ = writeln!(out, "source:   {}", source_text(key.source));
    let _ = writeln!(out, "state:    {}", state_text(key.state));
    let _ = writeln!(out, "hash:     {}", key.hash);
    if let Some(user) = &key.user {
        let _ = writeln!(out, "user:     {user}");
    }
    if let Some(team) = &key.team {
        let _ = writeln!(out, "team:     {team}");
    }
    let models = if key.models.is_empty() {
        "all".to_string()
    } else {
        key.models.join(", ")
    };
    let _ = writeln!(out, "models:   {models}");
    if !key.labels.is_empty() {
        let labels: BTreeMap<_, _> = key.labels.iter().collect();
        let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "labels:   {}", text.join(", "));
    }
    if !key.expires_at.is_empty() {
        let _ = writeln!(out, "expires:  {}", key.expires_at);
    }
    if !key.created_at.is_empty() {
        let _ = writeln!(out, "created:  {} by {}", key.created_at, key.created_by);
    }
    if !key.revoked_at.is_empty() {
        let _ = writeln!(out, "revoked:  {} by {}", key.revoked_at, key.revoked_by);
    }
    for previous in &key.previous_secrets {
        let _ = writeln!(
            out,
            "previous: {} (works until {})",
            previous.hash, previous.valid_until
        );
    }
    out
}

pub async fn key_create(admin: &mut Admin, args: KeyCreate) -> anyhow::Result<String> {
    let mut budgets = Vec::new();
    if args.budget_usd.is_some() || args.budget_tokens.is_some() {
        budgets.push(pb::BudgetLimit {
            usd: args.budget_usd,
            tokens: args.budget_tokens,
            window: args.budget_window.proto(),
            audit_only: false,
        });
    }
    let request = admin.request(pb::CreateKeyRequest {
        name: args.name.clone(),
        user: args.user,
        team: args.team,
        models: args.models,
        labels: args.labels.into_iter().collect(),
        expires_at: args.expires_at.unwrap_or_default(),
        budgets,
    });
    let created = admin
        .client
        .create_key(request)
        .await
        .map_err(|s| failed(&format!("key '{}'", args.name), s))?
        .into_inner();
    let mut out = format!("key:  {}\n", created.secret);
    out.push_str(
        "# Give the key to its user now: Gantry keeps only its hash and cannot show it again.\n\n",
    );
    if let Some(key) = &created.key {
        out.push_str(&describe_key(key));
    }
    for budget in &created.budgets {
        out.push_str(&format!("budget:   {}\n", budget_line(budget)));
    }
    Ok(out)
}

fn budget_line(budget: &pb::Budget) -> String {
    let limit = budget.limit.unwrap_or_default();
    let mut amounts = Vec::new();
    if let Some(usd) = limit.usd {
        amounts.push(format!("${usd}"));
    }
    if let Some(tokens) = limit.tokens {
        amounts.push(format!("{tokens} tokens"));
    }
    format!(
        "{} ({} per {}{})",
        budget.name,
        amounts.join(" and "),
        window_text(limit.window),
        if limit.audit_only { ", audit only" } else { "" }
    )
}

#[derive(Debug, clap::Args)]
pub struct KeyUpdate {
    pub name: String,
    /// The key's user (an empty value removes it).
    #[arg(long)]
    pub user: Option<String>,
    /// The key's team (an empty value removes it).
    #[arg(long)]
    pub team: Option<String>,
    /// Replace the model allow-list with these models (repeat).
    #[arg(long = "model", conflicts_with = "all_models")]
    pub models: Vec<String>,
    /// Allow every model.
    #[arg(long)]
    pub all_models: bool,
    /// Replace the labels with these, `name=value` (repeat).
    #[arg(long = "label", value_parser = parse_pair, conflicts_with = "clear_labels")]
    pub labels: Vec<(String, String)>,
    /// Remove every label.
    #[arg(long)]
    pub clear_labels: bool,
    /// RFC 3339 expiry (an empty value removes it).
    #[arg(long)]
    pub expires_at: Option<String>,
}

pub async fn key_update(admin: &mut Admin, args: KeyUpdate) -> anyhow::Result<String> {
    let models = if args.all_models {
        Some(pb::StringList { values: Vec::new() })
    } else if args.models.is_empty() {
        None
    } else {
        Some(pb::StringList {
            values: args.models,
        })
    };
    let labels = if args.clear_labels || !args.labels.is_empty() {
        Some(pb::Labels {
            values: args.labels.into_iter().collect(),
        })
    } else {
        None
    };
    let request = admin.request(pb::UpdateKeyRequest {
        name: args.name.clone(),
        user: args.user,
        team: args.team,
        models,
        labels,
        expires_at: args.expires_at,
    });
    let key = admin
        .client
        .update_key(request)
        .await
        .map_err(|s| failed(&format!("key '{}'", args.name), s))?
        .into_inner();
    Ok(describe_key(&key))
}

pub async fn key_list(admin: &mut Admin, all: bool, format: ListFormat) -> anyhow::Result<String> {
    let request = admin.request(pb::ListKeysRequest {
        include_revoked: all,
    });
    let keys = admin
        .client
        .list_keys(request)
        .await
        .map_err(|s| failed("listing keys", s))?
        .into_inner()
        .keys;
    if format == ListFormat::Json {
        let values: Vec<_> = keys.iter().map(key_json).collect();
        return Ok(serde_json::to_string_pretty(&values)? + "\n");
    }
    let mut rows = vec![[
        "name",
        "source",
        "state",
        "user",
        "team",
        "models",
        "expires",
        "created by",
    ]
    .map(String::from)
    .to_vec()];
    for key in &keys {
        rows.push(vec![
            key.name.clone(),
            source_text(key.source).into(),
            state_text(key.state).into(),
            key.user.clone().unwrap_or_default(),
            key.team.clone().unwrap_or_default(),
            if key.models.is_empty() {
                "all".into()
            } else {
                key.models.join(",")
            },
            key.expires_at.clone(),
            key.created_by.clone(),
        ]);
    }
    Ok(table(&rows))
}

pub async fn key_show(
    admin: &mut Admin,
    name: String,
    format: ListFormat,
) -> anyhow::Result<String> {
    let request = admin.request(pb::GetKeyRequest { name: name.clone() });
    let key = admin
        .client
        .get_key(request)
        .await
        .map_err(|s| failed(&format!("key '{name}'"), s))?
        .into_inner();
    Ok(match format {
        ListFormat::Json => serde_json::to_string_pretty(&key_json(&key))? + "\n",
        ListFormat::Table => describe_key(&key),
    })
}

pub async fn key_revoke(
    admin: &mut Admin,
    name: String,
    reason: Option<String>,
) -> anyhow::Result<String> {
    let request = admin.request(pb::RevokeKeyRequest {
        name: name.clone(),
        reason: reason.unwrap_or_default(),
    });
    let key = admin
        .client
        .revoke_key(request)
        .await
        .map_err(|s| failed(&format!("revoking key '{name}'"), s))?
        .into_inner();
    Ok(format!(
        "key '{}' revoked at {} (every replica refuses it within the admin API's sync interval)\n",
        key.name, key.revoked_at
    ))
}

pub async fn key_rotate(
    admin: &mut Admin,
    name: String,
    grace_secs: Option<u64>,
) -> anyhow::Result<String> {
    let request = admin.request(pb::RotateKeyRequest {
        name: name.clone(),
        grace_seconds: grace_secs,
    });
    let rotated = admin
        .client
        .rotate_key(request)
        .await
        .map_err(|s| failed(&format!("rotating key '{name}'"), s))?
        .into_inner();
    let mut out = format!("key:  {}\n", rotated.secret);
    out.push_str("# The new secret, shown once: Gantry keeps only its hash.\n");
    if rotated.previous_valid_until.is_empty() {
        out.push_str("# The previous secret stopped working now.\n");
    } else {
        let _ = writeln!(
            out,
            "# The previous secret keeps working until {}.",
            rotated.previous_valid_until
        );
    }
    Ok(out)
}

#[derive(Debug, clap::Args)]
pub struct BudgetSet {
    /// Whom it limits: key:<name>, user:<id> or team:<id>.
    pub subject: String,
    #[arg(long)]
    pub usd: Option<f64>,
    #[arg(long)]
    pub tokens: Option<u64>,
    #[arg(long, value_enum)]
    pub window: WindowArg,
    /// The budget's name (default <kind>-<id>-<window>).
    #[arg(long)]
    pub name: Option<String>,
    /// Count and report, never refuse.
    #[arg(long)]
    pub audit: bool,
}

pub async fn budget_set(admin: &mut Admin, args: BudgetSet) -> anyhow::Result<String> {
    let request = admin.request(pb::SetBudgetRequest {
        name: args.name.unwrap_or_default(),
        subject: Some(subject_proto(&args.subject)?),
        limit: Some(pb::BudgetLimit {
            usd: args.usd,
            tokens: args.tokens,
            window: args.window.proto(),
            audit_only: args.audit,
        }),
    });
    let budget = admin
        .client
        .set_budget(request)
        .await
        .map_err(|s| failed("budget", s))?
        .into_inner();
    Ok(format!(
        "budget {} set on {}\n",
        budget_line(&budget),
        subject_text(budget.subject.as_ref())
    ))
}

pub async fn budget_delete(admin: &mut Admin, name: String) -> anyhow::Result<String> {
    let request = admin.request(pb::DeleteBudgetRequest { name: name.clone() });
    let budget = admin
        .client
        .delete_budget(request)
        .await
        .map_err(|s| failed(&format!("budget '{name}'"), s))?
        .into_inner();
    Ok(format!("budget {} deleted\n", budget_line(&budget)))
}

pub async fn budget_list(admin: &mut Admin, format: ListFormat) -> anyhow::Result<String> {
    let request = admin.request(pb::ListBudgetsRequest { subject: None });
    let budgets = admin
        .client
        .list_budgets(request)
        .await
        .map_err(|s| failed("listing budgets", s))?
        .into_inner()
        .budgets;
    if format == ListFormat::Json {
        let values: Vec<_> = budgets
            .iter()
            .map(|b| {
                let limit = b.limit.unwrap_or_default();
                serde_json::json!({
                    "name": b.name,
                    "source": source_text(b.source),
                    "scope": b.scope,
                    "usd": limit.usd,
                    "tokens": limit.tokens,
                    "window": window_text(limit.window),
                    "audit_only": limit.audit_only,
                    "shadowed_by_config": b.shadowed_by_config,
                    "updated_at": b.updated_at,
                    "updated_by": b.updated_by,
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&values)? + "\n");
    }
    let mut rows = vec![[
        "name", "source", "scope", "usd", "tokens", "window", "action",
    ]
    .map(String::from)
    .to_vec()];
    for b in &budgets {
        let limit = b.limit.unwrap_or_default();
        rows.push(vec![
            b.name.clone(),
            if b.shadowed_by_config {
                "runtime (shadowed by config)".into()
            } else {
                source_text(b.source).into()
            },
            b.scope.clone(),
            limit.usd.map(|u| u.to_string()).unwrap_or_default(),
            limit.tokens.map(|t| t.to_string()).unwrap_or_default(),
            window_text(limit.window).into(),
            if limit.audit_only { "audit" } else { "block" }.into(),
        ]);
    }
    Ok(table(&rows))
}

pub async fn budget_show(
    admin: &mut Admin,
    subject: String,
    model: Option<String>,
    format: ListFormat,
) -> anyhow::Result<String> {
    let request = admin.request(pb::GetLimitsRequest {
        subject: Some(subject_proto(&subject)?),
        model: model.unwrap_or_default(),
    });
    let limits = admin
        .client
        .get_limits(request)
        .await
        .map_err(|s| failed(&format!("limits of {subject}"), s))?
        .into_inner();
    if format == ListFormat::Json {
        let budgets: Vec<_> = limits
            .budgets
            .iter()
            .map(|b| {
                serde_json::json!({
                    "budget": b.budget,
                    "source": source_text(b.source),
                    "scope": b.scope,
                    "window": window_text(b.window),
                    "audit_only": b.audit_only,
                    "limit_usd": b.limit_usd,
                    "spent_usd": b.spent_usd,
                    "reserved_usd": b.reserved_usd,
                    "remaining_usd": b.remaining_usd,
                    "limit_tokens": b.limit_tokens,
                    "spent_tokens": b.spent_tokens,
                    "reserved_tokens": b.reserved_tokens,
                    "remaining_tokens": b.remaining_tokens,
                    "resets_at": b.resets_at,
                })
            })
            .collect();
        let rates: Vec<_> = limits
            .rate_limits
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "scope": r.scope, "requests_per_minute": r.requests_per_minute, "tokens_per_minute": r.tokens_per_minute}))
            .collect();
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "subject": subject,
            "budgets": budgets,
            "rate_limits": rates,
        }))? + "\n");
    }
    if limits.budgets.is_empty() && limits.rate_limits.is_empty() {
        return Ok(format!("no budget or rate limit applies to {subject}\n"));
    }
    let money = |v: Option<f64>| v.map(|u| format!("${u:.6}")).unwrap_or_default();
    let count = |v: Option<u64>| v.map(|t| t.to_string()).unwrap_or_default();
    let mut rows = vec![[
        "budget",
        "source",
        "scope",
        "window",
        "limit",
        "spent",
        "reserved",
        "remaining",
        "resets",
    ]
    .map(String::from)
    .to_vec()];
    for b in &limits.budgets {
        let source = source_text(b.source).to_string();
        if b.limit_usd.is_some() {
            rows.push(vec![
                b.budget.clone(),
                source.clone(),
                b.scope.clone(),
                window_text(b.window).into(),
                money(b.limit_usd),
                money(Some(b.spent_usd)),
                money(Some(b.reserved_usd)),
                money(b.remaining_usd),
                b.resets_at.clone(),
            ]);
        }
        if b.limit_tokens.is_some() {
            rows.push(vec![
                b.budget.clone(),
                source,
                b.scope.clone(),
                window_text(b.window).into(),
                format!("{} tokens", count(b.limit_tokens)),
                b.spent_tokens.to_string(),
                b.reserved_tokens.to_string(),
                count(b.remaining_tokens),
                b.resets_at.clone(),
            ]);
        }
    }
    let mut out = table(&rows);
    if !limits.rate_limits.is_empty() {
        out.push('\n');
        let mut rows = vec![["rate limit", "scope", "requests/min", "tokens/min"]
            .map(String::from)
            .to_vec()];
        for r in &limits.rate_limits {
            rows.push(vec![
                r.name.clone(),
                r.scope.clone(),
                count(r.requests_per_minute),
                count(r.tokens_per_minute),
            ]);
        }
        out.push_str(&table(&rows));
    }
    Ok(out)
}

pub async fn metadata_set(
    admin: &mut Admin,
    subject: String,
    entries: Vec<(String, String)>,
) -> anyhow::Result<String> {
    let request = admin.request(pb::SetMetadataRequest {
        subject: Some(subject_proto(&subject)?),
        metadata: entries.into_iter().collect(),
    });
    let set = admin
        .client
        .set_metadata(request)
        .await
        .map_err(|s| failed(&format!("metadata of {subject}"), s))?
        .into_inner();
    Ok(if set.metadata.is_empty() {
        format!("metadata of {subject} removed\n")
    } else {
        let entries: BTreeMap<_, _> = set.metadata.iter().collect();
        let text: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("metadata of {subject}: {}\n", text.join(", "))
    })
}

pub async fn metadata_list(admin: &mut Admin) -> anyhow::Result<String> {
    let request = admin.request(pb::ListMetadataRequest {});
    let subjects = admin
        .client
        .list_metadata(request)
        .await
        .map_err(|s| failed("listing metadata", s))?
        .into_inner()
        .subjects;
    let mut rows = vec![["subject", "metadata", "updated", "by"]
        .map(String::from)
        .to_vec()];
    for s in &subjects {
        let entries: BTreeMap<_, _> = s.metadata.iter().collect();
        let text: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(vec![
            subject_text(s.subject.as_ref()),
            text.join(", "),
            s.updated_at.clone(),
            s.updated_by.clone(),
        ]);
    }
    Ok(table(&rows))
}

pub async fn audit(admin: &mut Admin, limit: u32, format: ListFormat) -> anyhow::Result<String> {
    let request = admin.request(pb::ListAuditEventsRequest { limit });
    let events = admin
        .client
        .list_audit_events(request)
        .await
        .map_err(|s| failed("reading the audit log", s))?
        .into_inner()
        .events;
    if format == ListFormat::Json {
        let mut out = String::new();
        for e in &events {
            out.push_str(&serde_json::to_string(&serde_json::json!({
                "time": e.time, "actor": e.actor, "action": e.action, "target": e.target,
                "detail": serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or(serde_json::Value::String(e.detail.clone())),
                "peer": e.peer, "replica": e.replica,
            }))?);
            out.push('\n');
        }
        return Ok(out);
    }
    let mut rows = vec![["time", "actor", "action", "target", "detail"]
        .map(String::from)
        .to_vec()];
    for e in &events {
        rows.push(vec![
            e.time.clone(),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            e.detail.clone(),
        ]);
    }
    Ok(table(&rows))
}

pub async fn reload(admin: &mut Admin) -> anyhow::Result<String> {
    let request = admin.request(pb::ReloadConfigRequest {});
    let done = admin
        .client
        .reload_config(request)
        .await
        .map_err(|s| failed("config reload", s))?
        .into_inner();
    Ok(format!("{}\n", done.message))
}

/// `gantry spend` through the admin API.
pub async fn spend(
    admin: &mut Admin,
    by: &str,
    since: Option<String>,
    until: Option<String>,
    format: SpendFormat,
    records: bool,
) -> anyhow::Result<String> {
    let groups = parse_groups(by).map_err(|e| anyhow::anyhow!("--by: {e}"))?;
    let request = admin.request(pb::QuerySpendRequest {
        group_by: groups.iter().map(|g| g.as_str().to_string()).collect(),
        since: since.unwrap_or_default(),
        until: until.unwrap_or_default(),
        records,
    });
    let answer = admin
        .client
        .query_spend(request)
        .await
        .map_err(|s| failed("spend query", s))?
        .into_inner();
    if records {
        let records: Vec<SpendRecord> = answer
            .records
            .iter()
            .map(convert::spend_record_from_proto)
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        return render_records(&records, format);
    }
    let by = parse_groups(&answer.group_by.join(",")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows: Vec<SpendRow> = answer
        .groups
        .into_iter()
        .map(|g| SpendRow {
            group: g.values,
            requests: g.requests,
            refused: g.refused,
            input_tokens: g.input_tokens,
            cached_input_tokens: g.cached_input_tokens,
            output_tokens: g.output_tokens,
            cost_nanos: g.cost_nanos,
        })
        .collect();
    Ok(render_rows(&rows, &by, format))
}
