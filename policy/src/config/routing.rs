//! The `routing` section: content-based routing rules, CEL conditions over the request that
//! pick the model alias before the alias is resolved.
//!
//! ```yaml
//! routing:
//!   - name: long-chats-to-smart
//!     when: llm.message_count > 20
//!     model: smart
//!   - name: premium-tag
//!     when: "'tier' in llm.metadata && llm.metadata.tier == 'premium'"
//!     model: smart
//! ```

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{check_name, issue, ConfigIssue};

/// One routing rule. Rules are tried in order; the first whose condition holds picks the model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRuleSection {
    /// Unique; names the rule in the access log (`route_rule`) and in logs.
    pub name: Spanned<String>,
    /// CEL condition over `llm`, `request`, `principal`, `apiKey` and `jwt`
    /// (see [`crate::routing::VARIABLES`]).
    pub when: Spanned<String>,
    /// The model alias (a `models[].name`) the request is sent to when the condition holds.
    pub model: Spanned<String>,
}

/// Checks the rules: names, conditions that compile over known variables, known models.
pub(crate) fn validate_routing(
    rules: &[RoutingRuleSection],
    model_names: &HashSet<&str>,
    issues: &mut Vec<ConfigIssue>,
) {
    let mut seen: HashMap<&str, String> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("routing[{i}]");
        check_name(&rule.name, &format!("{path}.name"), issues);
        if let Some(first) = seen.insert(rule.name.value.as_str(), path.clone()) {
            issues.push(issue(
                &format!("{path}.name"),
                rule.name.referenced.line(),
                format!(
                    "duplicate routing rule name '{}' (first declared at {first})",
                    rule.name.value
                ),
            ));
        }
        if let Err(e) = crate::routing::compile_condition(&rule.when.value) {
            issues.push(issue(
                &format!("{path}.when"),
                rule.when.referenced.line(),
                format!("invalid condition: {e}"),
            ));
        }
        if !model_names.contains(rule.model.value.as_str()) {
            let mut known: Vec<&str> = model_names.iter().copied().collect();
            known.sort_unstable();
            issues.push(issue(
                &format!("{path}.model"),
                rule.model.referenced.line(),
                format!(
                    "unknown model '{}' (models: {})",
                    rule.model.value,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
}
