//! `guards.response`: guards over what the provider answers (JSON replies and SSE streams),
//! with the same shape and the same checks as request guards.
//!
//! ```yaml
//! guards:
//!   response:
//!     - name: no-leaks
//!       action: mask              # reject (default) | mask | log
//!       detectors: [email, phone, credit_card, us_ssn, iban, secrets]
//!       patterns: ['(?i)project\s+falcon']
//!       # mask_with: "[REDACTED]"  # action: mask only
//! ```
//!
//! Validation is [`validate_response_guards`]; [`ResponseGuards`] compiles the list.

use std::collections::HashMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::guards::{validate_guard_parts, GuardParts};
use super::{issue, ConfigIssue, GuardAction};
use crate::guard::response::{unavailable_for_responses, ResponseGuards};

/// One response guard: what it looks for in the provider's answer and what it does when it
/// finds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseGuardSection {
    /// Unique among response guards; names the guard in errors, logs and metadata.
    pub name: Spanned<String>,
    /// `reject` replaces the answer with an error (a 502 for JSON replies, an error event
    /// that ends a stream), `mask` replaces each match, `log` only records the hit.
    #[serde(default)]
    pub action: GuardAction,
    /// Built-in detectors, as for request guards (`email`, `phone`, `credit_card`, `us_ssn`,
    /// `iban`, `secrets`, `high_entropy`), except `prompt_injection`: it scores a whole
    /// text, so a stream would be held back to its end.
    #[serde(default)]
    pub detectors: Vec<Spanned<String>>,
    /// Regexes in Rust `regex` syntax (case-sensitive unless `(?i)`).
    #[serde(default)]
    pub patterns: Vec<Spanned<String>>,
    /// What replaces a match with `action: mask` (default `[REDACTED:<detector>]`, or
    /// `[REDACTED:pattern]` for patterns).
    #[serde(default)]
    pub mask_with: Option<Spanned<String>>,
    /// A CEL condition over the request the reply answers (the variables of routing rules;
    /// `llm.model` is the model the request was routed to): the guard runs only when it holds.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
}

/// Checks `guards` (the list at `path`, e.g. `guards.response`) the way request guards are
/// checked: valid and unique names, at least one detector or pattern, known detectors listed
/// once (and not `prompt_injection`), valid regexes that do not match the empty string, `mask_with` only with
/// `action: mask`, and that each guard compiles as a whole.
pub fn validate_response_guards(
    guards: &[ResponseGuardSection],
    path: &str,
    issues: &mut Vec<ConfigIssue>,
) {
    let list = path;
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, guard) in guards.iter().enumerate() {
        let path = format!("{list}[{i}]");
        let before = issues.len();
        let name = &guard.name;
        validate_guard_parts(
            &GuardParts {
                list,
                index: i,
                name,
                action: guard.action,
                detectors: &guard.detectors,
                patterns: &guard.patterns,
                mask_with: guard.mask_with.as_ref(),
            },
            &mut names,
            &unavailable_for_responses,
            issues,
        );
        super::guard_webhook::validate_when(guard.when.as_ref(), &path, issues);
        // What the snapshot will compile must compile: the parts together, too.
        if issues.len() == before {
            if let Err(e) = ResponseGuards::compile(std::slice::from_ref(guard)) {
                issues.push(issue(&path, name.referenced.line(), e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        response: Vec<ResponseGuardSection>,
    }

    /// The issues of a `response:` list written in YAML (the list starts on line 2).
    fn issues_of(yaml: &str) -> Vec<String> {
        let doc: Doc = serde_saphyr::from_str(&format!("# response guards\n{yaml}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut issues = Vec::new();
        validate_response_guards(&doc.response, "guards.response", &mut issues);
        issues.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn accepts_the_documented_shape() {
        let yaml = r"response:
  - name: no-leaks
    action: mask
    detectors: [email, phone, credit_card, us_ssn, iban, secrets, high_entropy]
    patterns: ['(?i)project\s+falcon']
    mask_with: '[hidden]'
  - name: no-keys
    detectors: [secrets]
  - name: watch
    action: log
    patterns: ['internal-only']
";
        assert_eq!(issues_of(yaml), Vec::<String>::new());
        let doc: Doc = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(doc.response[0].action, GuardAction::Mask);
        assert_eq!(doc.response[1].action, GuardAction::Reject);
        assert_eq!(doc.response[2].action, GuardAction::Log);
        let guards = ResponseGuards::compile(&doc.response).expect("compiles");
        assert!(!guards.is_empty());
    }

    #[test]
    fn reports_the_same_problems_as_request_guards() {
        let issues = issues_of(
            r"response:
  - name: a
    detectors: [email, ssn, email]
    patterns: ['(?i)falcon(', 'ok', 'x*']
  - name: a
    action: log
    mask_with: '#'
    patterns: [secret]
  - name: 'bad name'
  - name: c
    detectors: [prompt_injection]
",
        )
        .join("\n");
        for needle in [
            "guards.response[0].detectors[1] (line 4): unknown detector 'ssn' (valid detectors: email, phone, credit_card, us_ssn, iban, secrets",
            "guards.response[0].detectors[2] (line 4): 'email' is listed twice",
            "guards.response[0].patterns[0] (line 5): '(?i)falcon(' is not a valid regex: unclosed group (at character 11)",
            "guards.response[0].patterns[2] (line 5): 'x*' matches the empty string",
            "guards.response[1].name (line 6): duplicate guard name 'a' (first declared at guards.response[0])",
            "guards.response[1].mask_with (line 8): applies only to action: mask (this guard's action is log)",
            "guards.response[2].name (line 10): 'bad name' is not a valid name",
            "guards.response[2] (line 10): detects nothing: list detectors, patterns, or both",
            "guards.response[3].detectors[0] (line 12): prompt_injection scores prompts; it is not available to response guards",
        ] {
            assert!(issues.contains(needle), "missing {needle:?} in:\n{issues}");
        }
        assert!(!issues.contains("patterns[1]"), "{issues}");
    }

    #[test]
    fn unknown_fields_and_actions_are_syntax_errors() {
        for yaml in [
            "response:\n  - { name: a, detectors: [email], scopes: [user] }\n",
            "response:\n  - { name: a, detectors: [email], action: block }\n",
        ] {
            assert!(serde_saphyr::from_str::<Doc>(yaml).is_err(), "{yaml}");
        }
    }
}
