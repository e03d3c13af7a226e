//! The `guards` section of the config: request guards that scan the prompt text of LLM
//! requests with built-in detectors and the operator's regexes, and reject, mask or log what
//! they find.
//!
//! ```yaml
//! guards:
//!   request:
//!     - name: no-pii
//!       action: reject            # reject (default) | mask | log
//!       detectors: [email, phone, credit_card, us_ssn, iban, secrets]
//!       patterns: ['(?i)project\s+falcon']
//!       allow: ['[^@\s]+@example\.com']   # a match these match entirely is not a hit
//!       # mask_with: "[REDACTED]"  # action: mask only
//!     - name: no-injection
//!       detectors: [prompt_injection, high_entropy]
//!       scopes: [user, tool_results] # default: every scope
//!       injection_threshold: 0.5  # prompt_injection only; in (0, 1], default 0.5
//! ```
//!
//! - `detectors`: `email`, `phone`, `credit_card`, `us_ssn`, `iban`, `secrets`,
//!   `high_entropy` (random-looking tokens of 20+ characters: unknown keys, base64 blobs; not
//!   hex hashes or UUIDs; noisier than `secrets`), `prompt_injection` (heuristic score in
//!   `[0, 1]` of override, jailbreak, exfiltration and role-marker signals after undoing
//!   case, spacing, leetspeak, look-alike and invisible-character disguises; a hit at
//!   `injection_threshold` or above; `action: mask` replaces the signals' spans).
//! - `scopes`: `system` (system and developer messages), `user` (user messages; all of a
//!   completions `prompt` and an embeddings `input`), `assistant` (assistant message content),
//!   `tool_call_arguments` (`tool_calls[].function.arguments`, `tool_calls[].custom.input`,
//!   legacy `function_call.arguments`; each string of the JSON document), `tool_results`
//!   (tool and legacy function messages). A message whose role is missing or unknown is in
//!   every scope.
//! - `allow`: Rust regexes matched against the text of each match (of any detector or
//!   pattern of the guard; of each signal for `prompt_injection`), anchored at both ends: a
//!   match one of them matches *entirely* is ignored.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::guard_webhook::{validate_webhook_guard, validate_when, NotForWebhooks};
use super::{check_name, issue, ConfigIssue};
use crate::guard::{compile_allow, compile_pattern, Detector, GuardScope, RequestGuard};

/// Guards over LLM traffic. Only request guards exist so far.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardsSection {
    /// Guards over what clients send, applied in order.
    #[serde(default)]
    pub request: Vec<RequestGuardSection>,
    /// Guards over what providers answer (JSON replies and SSE streams), applied in order.
    #[serde(default)]
    pub response: Vec<super::response_guards::ResponseGuardSection>,
}

/// One request guard: what it looks for and what it does when it finds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestGuardSection {
    /// Unique; names the guard in errors, logs and metadata.
    pub name: Spanned<String>,
    #[serde(default)]
    pub action: GuardAction,
    /// Built-in detectors: `email`, `phone`, `credit_card`, `us_ssn`, `iban`, `secrets`,
    /// `high_entropy`, `prompt_injection`.
    #[serde(default)]
    pub detectors: Vec<Spanned<String>>,
    /// Regexes in Rust `regex` syntax (case-sensitive unless `(?i)`).
    #[serde(default)]
    pub patterns: Vec<Spanned<String>>,
    /// What the guard scans: `system`, `user`, `assistant`, `tool_call_arguments`,
    /// `tool_results` (default: all of them).
    #[serde(default)]
    pub scopes: Option<Vec<Spanned<String>>>,
    /// Regexes a match's text must not match entirely for it to be a hit.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// The `prompt_injection` score at which the guard fires, in `(0, 1]` (default 0.5).
    #[serde(default)]
    pub injection_threshold: Option<Spanned<f64>>,
    /// What replaces a match with `action: mask` (default `[REDACTED:<detector>]`, or
    /// `[REDACTED:pattern]` for patterns).
    #[serde(default)]
    pub mask_with: Option<Spanned<String>>,
    /// A CEL condition over the request (the variables of routing rules; `llm.model` is the
    /// model the request is routed to): the guard runs only when it holds.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    /// An external service that decides instead of detectors and patterns.
    #[serde(default)]
    pub webhook: Option<super::guard_webhook::WebhookSection>,
}

/// What a guard does with a request it has a hit in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Refuse the request (400, `code: guard_rejected`).
    #[default]
    Reject,
    /// Replace each match and forward the request.
    Mask,
    /// Forward the request unchanged; only record the hit.
    Log,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Reject => "reject",
            GuardAction::Mask => "mask",
            GuardAction::Log => "log",
        }
    }
}

impl GuardsSection {
    pub(super) fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        super::response_guards::validate_response_guards(&self.response, "guards.response", issues);
        // Webhooks run one after another while Envoy waits for the request body's answer,
        // which Gantry can ask it to wait for up to its max_message_timeout.
        let webhooks: Vec<(usize, &super::guard_webhook::WebhookSection)> = self
            .request
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.webhook.as_ref().map(|w| (i, w)))
            .collect();
        let total: u64 = webhooks.iter().map(|(_, w)| w.timeout_ms()).sum();
        if webhooks.len() > 1 && total > super::guard_webhook::MAX_WEBHOOK_TIMEOUT_MS {
            let (last, webhook) = webhooks[webhooks.len() - 1];
            issues.push(issue(
                &format!("guards.request[{last}].webhook"),
                webhook.url.referenced.line(),
                format!(
                    "the webhook guards' timeout_ms add up to {total} ms; a request waits for them one after another, at most {} ms in all",
                    super::guard_webhook::MAX_WEBHOOK_TIMEOUT_MS
                ),
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, guard) in self.request.iter().enumerate() {
            let path = format!("guards.request[{i}]");
            let before = issues.len();
            let name = &guard.name;
            validate_when(guard.when.as_ref(), &path, issues);
            if let Some(webhook) = &guard.webhook {
                check_name(name, &format!("{path}.name"), issues);
                check_unique(name, i, "guards.request", &mut names, issues);
                check_scopes(guard, &path, issues);
                validate_webhook_guard(
                    &path,
                    name.referenced.line(),
                    guard.action,
                    webhook,
                    NotForWebhooks {
                        detectors: !guard.detectors.is_empty(),
                        patterns: !guard.patterns.is_empty(),
                        allow: !guard.allow.is_empty(),
                        injection_threshold: guard.injection_threshold.is_some(),
                        mask_with: guard.mask_with.as_ref(),
                    },
                    issues,
                );
                continue;
            }
            validate_guard_parts(
                &GuardParts {
                    list: "guards.request",
                    index: i,
                    name,
                    action: guard.action,
                    detectors: &guard.detectors,
                    patterns: &guard.patterns,
                    mask_with: guard.mask_with.as_ref(),
                },
                &mut names,
                &|_| None,
                issues,
            );
            for (j, pattern) in guard.allow.iter().enumerate() {
                if let Err(message) = compile_allow(&pattern.value) {
                    issues.push(issue(
                        &format!("{path}.allow[{j}]"),
                        pattern.referenced.line(),
                        message,
                    ));
                }
            }
            check_scopes(guard, &path, issues);
            if let Some(threshold) = &guard.injection_threshold {
                let path = format!("{path}.injection_threshold");
                let line = threshold.referenced.line();
                let uses_injection = guard
                    .detectors
                    .iter()
                    .any(|d| Detector::from_name(&d.value) == Some(Detector::PromptInjection));
                if !uses_injection {
                    issues.push(issue(
                        &path,
                        line,
                        "applies only with the prompt_injection detector".into(),
                    ));
                }
                let value = threshold.value;
                if !(value > 0.0 && value <= 1.0) {
                    issues.push(issue(
                        &path,
                        line,
                        format!("must be more than 0 and at most 1 (got {value})"),
                    ));
                }
            }
            // What the snapshot will compile must compile: the parts together, too.
            if issues.len() == before {
                if let Err(e) = RequestGuard::compile(guard) {
                    issues.push(issue(&path, name.referenced.line(), e.to_string()));
                }
            }
        }
    }
}

/// Checks a request guard's `scopes`: known names, each once, not an empty list.
fn check_scopes(guard: &RequestGuardSection, path: &str, issues: &mut Vec<ConfigIssue>) {
    let name = &guard.name;
    if let Some(scopes) = &guard.scopes {
        if scopes.is_empty() {
            issues.push(issue(
                &format!("{path}.scopes"),
                name.referenced.line(),
                "scans nothing: list scopes, or leave scopes out to scan everything".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (j, entry) in scopes.iter().enumerate() {
            let entry_path = format!("{path}.scopes[{j}]");
            match GuardScope::from_name(&entry.value) {
                None => issues.push(issue(
                    &entry_path,
                    entry.referenced.line(),
                    format!(
                        "unknown scope '{}' (valid scopes: {})",
                        entry.value,
                        GuardScope::names()
                    ),
                )),
                Some(scope) if !seen.insert(scope) => issues.push(issue(
                    &entry_path,
                    entry.referenced.line(),
                    format!("'{}' is listed twice", entry.value),
                )),
                Some(_) => {}
            }
        }
    }
}

/// The parts every guard has (request and response guards alike), for [`validate_guard_parts`].
pub(super) struct GuardParts<'a> {
    /// The list's path, e.g. `guards.request`.
    pub list: &'a str,
    pub index: usize,
    pub name: &'a Spanned<String>,
    pub action: GuardAction,
    pub detectors: &'a [Spanned<String>],
    pub patterns: &'a [Spanned<String>],
    pub mask_with: Option<&'a Spanned<String>>,
}

/// Records `name` (of `list[index]`) in `names`, reporting a name seen before.
pub(super) fn check_unique<'a>(
    name: &'a Spanned<String>,
    index: usize,
    list: &str,
    names: &mut HashMap<&'a str, usize>,
    issues: &mut Vec<ConfigIssue>,
) {
    if let Some(first) = names.insert(name.value.as_str(), index) {
        issues.push(issue(
            &format!("{list}[{index}].name"),
            name.referenced.line(),
            format!(
                "duplicate guard name '{}' (first declared at {list}[{first}])",
                name.value
            ),
        ));
    }
}

/// Checks a guard's common parts: a valid name unique in its list (`names`), at least one
/// detector or pattern, known detectors listed once (`refuse` says why a detector cannot be
/// used in this list), valid regexes, and `mask_with` only with `action: mask`.
pub(super) fn validate_guard_parts<'a>(
    guard: &GuardParts<'a>,
    names: &mut HashMap<&'a str, usize>,
    refuse: &dyn Fn(Detector) -> Option<&'static str>,
    issues: &mut Vec<ConfigIssue>,
) {
    let (list, i, name) = (guard.list, guard.index, guard.name);
    let path = format!("{list}[{i}]");
    check_name(name, &format!("{path}.name"), issues);
    check_unique(name, i, list, names, issues);
    if guard.detectors.is_empty() && guard.patterns.is_empty() {
        issues.push(issue(
            &path,
            name.referenced.line(),
            "detects nothing: list detectors, patterns, or both".into(),
        ));
    }
    let mut seen = HashSet::new();
    for (j, entry) in guard.detectors.iter().enumerate() {
        let entry_path = format!("{path}.detectors[{j}]");
        match Detector::from_name(&entry.value) {
            None => issues.push(issue(
                &entry_path,
                entry.referenced.line(),
                format!(
                    "unknown detector '{}' (valid detectors: {})",
                    entry.value,
                    Detector::names()
                ),
            )),
            Some(detector) => {
                if let Some(reason) = refuse(detector) {
                    issues.push(issue(&entry_path, entry.referenced.line(), reason.into()));
                } else if !seen.insert(detector) {
                    issues.push(issue(
                        &entry_path,
                        entry.referenced.line(),
                        format!("'{}' is listed twice", entry.value),
                    ));
                }
            }
        }
    }
    for (j, pattern) in guard.patterns.iter().enumerate() {
        if let Err(message) = compile_pattern(&pattern.value) {
            issues.push(issue(
                &format!("{path}.patterns[{j}]"),
                pattern.referenced.line(),
                message,
            ));
        }
    }
    if let Some(mask) = guard.mask_with {
        if guard.action != GuardAction::Mask {
            issues.push(issue(
                &format!("{path}.mask_with"),
                mask.referenced.line(),
                format!(
                    "applies only to action: mask (this guard's action is {})",
                    guard.action.as_str()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ConfigFile;

    use super::*;

    /// A config whose `guards` section is `guards` (indented by two spaces); the section
    /// starts on line 8.
    fn config(guards: &str) -> String {
        format!(
            "\
listen: 127.0.0.1:10000
providers:
  - {{ name: mock, kind: openai, endpoint: 'http://127.0.0.1:18080' }}
models:
  - {{ name: fast, provider: mock, model: m }}
# guards
#
guards:
{guards}"
        )
    }

    fn problems(guards: &str) -> String {
        match ConfigFile::parse(&config(guards)) {
            Ok(_) => panic!("config was accepted:\n{guards}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_the_documented_shape() {
        let parsed = ConfigFile::parse(&config(
            r"  request:
    - name: no-pii
      detectors: [email, phone, credit_card, us_ssn, iban, secrets]
      patterns: ['(?i)project\s+falcon']
    - name: scrub
      action: mask
      detectors: [email]
      mask_with: '[hidden]'
    - name: watch
      action: log
      patterns: ['internal-only']
    - name: no-injection
      detectors: [prompt_injection, high_entropy]
      scopes: [user, tool_results, tool_call_arguments]
      allow: ['[^@\s]+@example\.com', '(?i)developer mode']
      injection_threshold: 0.7
    - name: quiet
      action: log
      detectors: [prompt_injection]
      injection_threshold: 1
",
        ))
        .expect("valid");
        let guards = parsed.guards.expect("guards");
        assert_eq!(guards.request.len(), 5);
        let injection = &guards.request[3];
        assert_eq!(injection.scopes.as_ref().map(Vec::len), Some(3));
        assert_eq!(injection.allow.len(), 2);
        assert_eq!(injection.injection_threshold.as_ref().unwrap().value, 0.7);
        assert_eq!(
            guards.request[4]
                .injection_threshold
                .as_ref()
                .unwrap()
                .value,
            1.0
        );
        assert!(guards.request[0].scopes.is_none());
        assert_eq!(guards.request[0].action, GuardAction::Reject);
        assert_eq!(guards.request[1].action, GuardAction::Mask);
        assert_eq!(guards.request[2].action, GuardAction::Log);
        assert_eq!(
            guards.request[1].mask_with.as_ref().unwrap().value,
            "[hidden]"
        );
        ConfigFile::parse(&config("  {}\n")).expect("an empty section is fine");
    }

    #[test]
    fn bad_detectors_regexes_names_and_empty_guards_are_all_reported() {
        let err = problems(
            r"  request:
    - name: a
      detectors: [email, ssn, email]
      patterns: ['(?i)falcon(', 'ok', 'x*']
    - name: a
      action: log
      mask_with: '#'
      patterns: [secret]
    - name: 'bad name'
",
        );
        for needle in [
            "guards.request[0].detectors[1] (line 11): unknown detector 'ssn' (valid detectors: email, phone, credit_card, us_ssn, iban, secrets, high_entropy, prompt_injection)",
            "guards.request[0].detectors[2] (line 11): 'email' is listed twice",
            "guards.request[0].patterns[0] (line 12): '(?i)falcon(' is not a valid regex: unclosed group (at character 11)",
            "guards.request[0].patterns[2] (line 12): 'x*' matches the empty string",
            "guards.request[1].name (line 13): duplicate guard name 'a' (first declared at guards.request[0])",
            "guards.request[1].mask_with (line 15): applies only to action: mask (this guard's action is log)",
            "guards.request[2].name (line 17): 'bad name' is not a valid name",
            "guards.request[2] (line 17): detects nothing: list detectors, patterns, or both",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        assert!(!err.contains("patterns[1]"), "{err}");
    }

    #[test]
    fn bad_scopes_allow_lists_and_thresholds_are_reported() {
        let err = problems(
            r"  request:
    - name: a
      detectors: [email]
      scopes: [user, prompt, user]
      allow: ['(', '.*', 'ok@example\.com']
      injection_threshold: 0.5
    - name: b
      detectors: [prompt_injection]
      scopes: []
      injection_threshold: 1.5
    - name: c
      detectors: [prompt_injection]
      injection_threshold: 0
",
        );
        for needle in [
            "guards.request[0].scopes[1] (line 12): unknown scope 'prompt' (valid scopes: system, user, assistant, tool_call_arguments, tool_results)",
            "guards.request[0].scopes[2] (line 12): 'user' is listed twice",
            "guards.request[0].allow[0] (line 13): '(' is not a valid regex",
            "guards.request[0].allow[1] (line 13): '.*' matches the empty string, so it would allow too much",
            "guards.request[0].injection_threshold (line 14): applies only with the prompt_injection detector",
            "guards.request[1].scopes (line 15): scans nothing",
            "guards.request[1].injection_threshold (line 18): must be more than 0 and at most 1 (got 1.5)",
            "guards.request[2].injection_threshold (line 21): must be more than 0 and at most 1 (got 0)",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        assert!(!err.contains("allow[2]"), "{err}");
    }

    #[test]
    fn webhook_guards_and_when_conditions_are_checked() {
        let parsed = ConfigFile::parse(&config(
            r"  request:
    - name: house
      scopes: [user]
      when: llm.model == 'fast'
      webhook: { url: 'http://guard.internal:8080/check', timeout_ms: 2500, api_key_env: GUARD_TOKEN, failure_mode: open }
    - name: moderation
      action: log
      webhook:
        format: openai_moderation
        url: https://api.openai.com/v1/moderations
        model: omni-moderation-2024-09-26
        categories: [violence, self-harm/intent]
",
        ))
        .expect("valid");
        let guards = parsed.guards.expect("guards");
        let house = guards.request[0].webhook.as_ref().unwrap();
        assert_eq!(house.timeout_ms(), 2500);
        assert_eq!(house.failure_mode, crate::config::FailureMode::Open);
        let moderation = guards.request[1].webhook.as_ref().unwrap();
        assert_eq!(
            moderation.format,
            crate::config::WebhookFormat::OpenaiModeration
        );
        assert_eq!(moderation.timeout_ms(), 1000);

        let err = problems(
            r"  request:
    - name: a
      action: mask
      detectors: [email]
      mask_with: '#'
      webhook: { url: 'ftp://x/check', timeout_ms: 0, api_key_env: 1BAD, model: m }
    - name: b
      when: llm.modle == 'x' ||
      webhook: { url: 'not a url', format: openai_moderation, categories: [violence, gore, violence] }
    - name: a
      webhook: { url: 'http://h/x', timeout_ms: 30000 }
    - name: c
      detectors: [email]
      when: nobody.knows
",
        );
        for needle in [
            "guards.request[0].detectors (line 10): does not apply to a webhook guard",
            "guards.request[0].mask_with (line 10): does not apply to a webhook guard",
            "guards.request[0].action (line 10): a webhook's verdict says what to mask",
            "guards.request[0].webhook.url (line 14): 'ftp://x/check': unsupported scheme 'ftp' (use http or https)",
            "guards.request[0].webhook.timeout_ms (line 14): must be from 1 to 30000 (got 0)",
            "guards.request[0].webhook.api_key_env (line 14): '1BAD' is not an environment variable name",
            "guards.request[0].webhook.model (line 14): applies only to format: openai_moderation",
            "guards.request[1].when (line 16): ERROR: <input>:1:20: Syntax error: mismatched input",
            "guards.request[1].webhook.url (line 17): 'not a url' is not a URL",
            "guards.request[1].webhook.categories[1] (line 17): unknown moderation category 'gore' (valid categories: harassment,",
            "guards.request[1].webhook.categories[2] (line 17): 'violence' is listed twice",
            "guards.request[2].name (line 18): duplicate guard name 'a' (first declared at guards.request[0])",
            "guards.request[2].webhook (line 19): the webhook guards' timeout_ms add up to 31000 ms",
            "guards.request[3].when (line 22): unknown variable 'nobody'",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn unknown_fields_and_actions_are_syntax_errors() {
        let err = problems("  request:\n    - { name: a, detectors: [email], scope: [user] }\n");
        assert!(err.contains("unknown field `scope`"), "{err}");
        let err = problems("  request:\n    - { name: a, detectors: [email], action: block }\n");
        assert!(err.contains("line 10") && err.contains("block"), "{err}");
        let err = problems("  responses: []\n");
        assert!(err.contains("unknown field `responses`"), "{err}");
    }
}
