//! The `webhook` of a request guard: an external HTTP service that reads the prompt text and
//! answers pass, mask or reject.
//!
//! ```yaml
//! guards:
//!   request:
//!     - name: house-policy
//!       webhook:
//!         url: http://guard.internal:8080/check   # http or https
//!         timeout_ms: 1000          # default 1000, at most 30000
//!         failure_mode: closed      # closed (default): 503 when no verdict; open: forward
//!         api_key_env: GUARD_TOKEN  # optional: sent as `Authorization: Bearer <value>`
//!     - name: moderation
//!       scopes: [user]
//!       webhook:
//!         format: openai_moderation # the OpenAI moderation API's request and reply
//!         url: https://api.openai.com/v1/moderations
//!         api_key_env: OPENAI_API_KEY
//!         model: omni-moderation-latest               # the default
//!         categories: [violence, self-harm, hate]     # default: whatever OpenAI flags
//! ```
//!
//! A webhook guard has no detectors, patterns, `allow`, `injection_threshold` or `mask_with`:
//! its verdict decides. Its `action` is `reject` (the default: obey the verdict) or `log`
//! (record the verdict, forward the request unchanged). The wire format is in
//! [`crate::guard::webhook`].

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{is_env_var_name, issue, ConfigIssue, FailureMode, GuardAction};
use crate::routing::compile_condition;

/// The default `timeout_ms` of a webhook.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 1000;
/// The longest `timeout_ms`: Envoy's `max_message_timeout` for ext_proc, which bounds how long
/// Gantry may ask Envoy to wait for the request body's answer.
pub const MAX_WEBHOOK_TIMEOUT_MS: u64 = 30_000;
/// The moderation model used unless `model` names another.
pub const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";
/// The categories the OpenAI moderation API reports.
pub const MODERATION_CATEGORIES: &[&str] = &[
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// What a webhook guard calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    pub url: Spanned<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// How long to wait for the verdict, in milliseconds (default 1000).
    #[serde(default)]
    pub timeout_ms: Option<Spanned<u64>>,
    /// What happens when there is no verdict (timeout, connection error, non-2xx status, a
    /// reply that is not a verdict): `closed` refuses the request (503), `open` forwards it.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// The variable holding a token sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub api_key_env: Option<Spanned<String>>,
    /// `openai_moderation` only: the moderation model (default `omni-moderation-latest`).
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    /// `openai_moderation` only: the categories that refuse a request (default: a text the
    /// API flags refuses it, whatever the category).
    #[serde(default)]
    pub categories: Vec<Spanned<String>>,
}

/// The request and reply shape a webhook speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Gantry's own: the texts with their locations in; `pass`, `mask` (with the new texts) or
    /// `reject` (with a reason) out.
    #[default]
    Gantry,
    /// `POST {model, input: [texts]}`, answered by `{results: [{flagged, categories}]}`.
    OpenaiModeration,
}

impl WebhookSection {
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
            .as_ref()
            .map_or(DEFAULT_WEBHOOK_TIMEOUT_MS, |t| t.value)
    }
}

/// The parts of a request guard a webhook guard must not have, by name, when present.
pub(super) struct NotForWebhooks<'a> {
    pub detectors: bool,
    pub patterns: bool,
    pub allow: bool,
    pub injection_threshold: bool,
    pub mask_with: Option<&'a Spanned<String>>,
}

/// Checks a webhook guard at `path` (e.g. `guards.request[2]`); `line` is its name's line.
pub(super) fn validate_webhook_guard(
    path: &str,
    line: u64,
    action: GuardAction,
    webhook: &WebhookSection,
    others: NotForWebhooks<'_>,
    issues: &mut Vec<ConfigIssue>,
) {
    for (present, field) in [
        (others.detectors, "detectors"),
        (others.patterns, "patterns"),
        (others.allow, "allow"),
        (others.injection_threshold, "injection_threshold"),
        (others.mask_with.is_some(), "mask_with"),
    ] {
        if present {
            issues.push(issue(
                &format!("{path}.{field}"),
                line,
                "does not apply to a webhook guard, whose verdict decides: move it to a guard of its own"
                    .into(),
            ));
        }
    }
    if action == GuardAction::Mask {
        issues.push(issue(
            &format!("{path}.action"),
            line,
            "a webhook's verdict says what to mask: use action reject (obey the verdict, the default) or log (only record it)".into(),
        ));
    }
    let path = format!("{path}.webhook");
    let url = &webhook.url;
    if let Err(message) = check_webhook_url(&url.value) {
        issues.push(issue(
            &format!("{path}.url"),
            url.referenced.line(),
            message,
        ));
    }
    if let Some(timeout) = &webhook.timeout_ms {
        if timeout.value == 0 || timeout.value > MAX_WEBHOOK_TIMEOUT_MS {
            issues.push(issue(
                &format!("{path}.timeout_ms"),
                timeout.referenced.line(),
                format!(
                    "must be from 1 to {MAX_WEBHOOK_TIMEOUT_MS} (got {})",
                    timeout.value
                ),
            ));
        }
    }
    if let Some(env) = &webhook.api_key_env {
        if !is_env_var_name(&env.value) {
            issues.push(issue(
                &format!("{path}.api_key_env"),
                env.referenced.line(),
                format!(
                    "'{}' is not an environment variable name (letters, digits and _, not starting with a digit)",
                    env.value
                ),
            ));
        }
    }
    let moderation = webhook.format == WebhookFormat::OpenaiModeration;
    if let Some(model) = &webhook.model {
        if !moderation {
            issues.push(issue(
                &format!("{path}.model"),
                model.referenced.line(),
                "applies only to format: openai_moderation".into(),
            ));
        } else if model.value.trim().is_empty() {
            issues.push(issue(
                &format!("{path}.model"),
                model.referenced.line(),
                "must not be empty".into(),
            ));
        }
    }
    for (j, category) in webhook.categories.iter().enumerate() {
        let entry = format!("{path}.categories[{j}]");
        let line = category.referenced.line();
        if !moderation {
            issues.push(issue(
                &entry,
                line,
                "applies only to format: openai_moderation".into(),
            ));
            break;
        }
        if !MODERATION_CATEGORIES.contains(&category.value.as_str()) {
            issues.push(issue(
                &entry,
                line,
                format!(
                    "unknown moderation category '{}' (valid categories: {})",
                    category.value,
                    MODERATION_CATEGORIES.join(", ")
                ),
            ));
        } else if webhook.categories[..j]
            .iter()
            .any(|c| c.value == category.value)
        {
            issues.push(issue(
                &entry,
                line,
                format!("'{}' is listed twice", category.value),
            ));
        }
    }
}

/// Checks a guard's `when` condition at `path`.
pub(super) fn validate_when(
    when: Option<&Spanned<String>>,
    path: &str,
    issues: &mut Vec<ConfigIssue>,
) {
    if let Some(when) = when {
        if let Err(message) = compile_condition(&when.value) {
            // CEL's syntax errors add lines that point into the expression: the first says it.
            let first = message.lines().next().unwrap_or_default().trim_end();
            issues.push(issue(
                &format!("{path}.when"),
                when.referenced.line(),
                first.to_string(),
            ));
        }
    }
}

fn check_webhook_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("'{text}' is not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(()),
        "http" | "https" => Err(format!("'{text}' has no host")),
        other => Err(format!(
            "'{text}': unsupported scheme '{other}' (use http or https)"
        )),
    }
}
