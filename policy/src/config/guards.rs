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
//!       # mask_with: "[REDACTED]"  # action: mask only
//! ```

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{check_name, issue, ConfigIssue};
use crate::guard::{compile_pattern, Detector, RequestGuard};

/// Guards over LLM traffic. Only request guards exist so far.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardsSection {
    /// Guards over what clients send, applied in order.
    #[serde(default)]
    pub request: Vec<RequestGuardSection>,
}

/// One request guard: what it looks for and what it does when it finds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestGuardSection {
    /// Unique; names the guard in errors, logs and metadata.
    pub name: Spanned<String>,
    #[serde(default)]
    pub action: GuardAction,
    /// Built-in detectors: `email`, `phone`, `credit_card`, `us_ssn`, `iban`, `secrets`.
    #[serde(default)]
    pub detectors: Vec<Spanned<String>>,
    /// Regexes in Rust `regex` syntax (case-sensitive unless `(?i)`).
    #[serde(default)]
    pub patterns: Vec<Spanned<String>>,
    /// What replaces a match with `action: mask` (default `[REDACTED:<detector>]`, or
    /// `[REDACTED:pattern]` for patterns).
    #[serde(default)]
    pub mask_with: Option<Spanned<String>>,
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
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, guard) in self.request.iter().enumerate() {
            let path = format!("guards.request[{i}]");
            let before = issues.len();
            let name = &guard.name;
            check_name(name, &format!("{path}.name"), issues);
            if let Some(first) = names.insert(name.value.as_str(), i) {
                issues.push(issue(
                    &format!("{path}.name"),
                    name.referenced.line(),
                    format!(
                        "duplicate guard name '{}' (first declared at guards.request[{first}])",
                        name.value
                    ),
                ));
            }
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
                    Some(detector) if !seen.insert(detector) => issues.push(issue(
                        &entry_path,
                        entry.referenced.line(),
                        format!("'{}' is listed twice", entry.value),
                    )),
                    Some(_) => {}
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
            if let Some(mask) = &guard.mask_with {
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
            // What the snapshot will compile must compile: the parts together, too.
            if issues.len() == before {
                if let Err(e) = RequestGuard::compile(guard) {
                    issues.push(issue(&path, name.referenced.line(), e.to_string()));
                }
            }
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
",
        ))
        .expect("valid");
        let guards = parsed.guards.expect("guards");
        assert_eq!(guards.request.len(), 3);
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
            "guards.request[0].detectors[1] (line 11): unknown detector 'ssn' (valid detectors: email, phone, credit_card, us_ssn, iban, secrets)",
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
    fn unknown_fields_and_actions_are_syntax_errors() {
        let err = problems("  request:\n    - { name: a, detectors: [email], scopes: [user] }\n");
        assert!(err.contains("unknown field `scopes`"), "{err}");
        let err = problems("  request:\n    - { name: a, detectors: [email], action: block }\n");
        assert!(err.contains("line 10") && err.contains("block"), "{err}");
        let err = problems("  response: []\n");
        assert!(err.contains("unknown field `response`"), "{err}");
    }
}
