//! A2A authorization: CEL rules over the caller and the A2A call, compiled once.
//!
//! Variables a rule can use:
//! - `principal`: `method` (`api_key`, `jwt`, `mtls` or `none`), `subject`, `user`, `team`,
//!   `key`, as for MCP rules;
//! - `a2a`: `agent` (its name in the config), `method` (the 1.0 name, whichever style the
//!   client used: `SendMessage`, `GetTask`, …, and `GetAgentCard` for the public card),
//!   `binding` (`jsonrpc`, `rest` or `card`), `version` (`1.0` or `0.3`), `skill` (the
//!   message's or request's `metadata.skill`; while filtering a card, each skill's id), `task`,
//!   `context`, `tenant` (empty strings when absent);
//! - `request`: `headers` (lower-case names).
//!
//! A matching `deny` wins; otherwise a matching `allow` admits; with rules present and none
//! matching, the call is denied. A condition that fails to evaluate does not match.

use cel::Program;

use super::protocol::CallFacts;
use crate::auth::rules::RuleVerdict;
use crate::config::{ConfigIssue, RuleSection};
use crate::governance::scope::compile_with_variables;
use crate::mcp::authz::{cel_map, CallerRules, McpCaller};

/// Variables A2A rules may read.
pub const VARIABLES: &[&str] = &["principal", "a2a", "request"];

/// The compiled `a2a.rules`.
#[derive(Default, Debug)]
pub struct A2aRules(CallerRules);

fn compile_rule(source: &str) -> Result<Program, String> {
    compile_with_variables(source, VARIABLES)
}

/// Config validation of `a2a.rules`.
pub(crate) fn validate_rules(rules: &[RuleSection], issues: &mut Vec<ConfigIssue>) {
    crate::mcp::authz::validate_rule_list("a2a.rules", rules, compile_rule, issues);
}

/// One question to the rules.
#[derive(Debug, Clone, Copy)]
pub struct A2aQuestion<'a> {
    pub caller: &'a McpCaller,
    pub agent: &'a str,
    pub facts: &'a CallFacts,
    pub headers: &'a [(String, String)],
}

impl A2aRules {
    pub fn compile(sections: &[RuleSection]) -> A2aRules {
        A2aRules(CallerRules::compile(sections, compile_rule))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a rule reads `request.headers` (the adapter then keeps them).
    pub fn uses_request(&self) -> bool {
        self.0.uses_request()
    }

    pub fn evaluate(&self, question: &A2aQuestion<'_>) -> RuleVerdict {
        let facts = question.facts;
        self.0.evaluate(
            question.caller,
            "a2a",
            || {
                cel_map([
                    ("agent", question.agent.into()),
                    ("method", facts.method.as_str().into()),
                    ("binding", facts.binding.as_str().into()),
                    ("version", facts.version.as_str().into()),
                    ("skill", facts.skill.as_str().into()),
                    ("task", facts.task.as_str().into()),
                    ("context", facts.context.as_str().into()),
                    ("tenant", facts.tenant.as_str().into()),
                ])
            },
            question
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::a2a::protocol::{A2aMethod, A2aVersion, Binding};

    fn rules(yaml: &str) -> A2aRules {
        let sections: Vec<RuleSection> = serde_saphyr::from_str(yaml).expect("rules yaml");
        let mut issues = Vec::new();
        validate_rules(&sections, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        A2aRules::compile(&sections)
    }

    #[test]
    fn rules_see_method_skill_task_and_principal() {
        let set = rules(
            "- { name: no-admin-skill, action: deny, when: 'a2a.skill == \"admin\" && principal.team != \"ops\"' }\n\
             - { name: no-cancel, action: deny, when: 'a2a.method == \"CancelTask\" && a2a.task.startsWith(\"keep-\")' }\n\
             - { name: everyone, action: allow, when: 'a2a.agent == \"echo\"' }\n",
        );
        let dev = McpCaller {
            method: "api_key".into(),
            subject: "dev".into(),
            team: "dev".into(),
            ..McpCaller::default()
        };
        let ops = McpCaller {
            team: "ops".into(),
            ..dev.clone()
        };
        let mut send = CallFacts::new(A2aMethod::SendMessage, Binding::JsonRpc, A2aVersion::V03);
        send.skill = "admin".into();
        let q = |caller, agent, facts| A2aQuestion {
            caller,
            agent,
            facts,
            headers: &[],
        };
        assert_eq!(
            set.evaluate(&q(&dev, "echo", &send)),
            RuleVerdict::Denied {
                rule: "no-admin-skill".into()
            }
        );
        assert!(matches!(
            set.evaluate(&q(&ops, "echo", &send)),
            RuleVerdict::Allowed { .. }
        ));
        assert_eq!(
            set.evaluate(&q(&ops, "other", &send)),
            RuleVerdict::NoneAllowed
        );
        let mut cancel = CallFacts::new(A2aMethod::CancelTask, Binding::Rest, A2aVersion::V1);
        cancel.task = "keep-1".into();
        assert_eq!(
            set.evaluate(&q(&ops, "echo", &cancel)),
            RuleVerdict::Denied {
                rule: "no-cancel".into()
            }
        );
    }

    #[test]
    fn misspelt_variables_are_config_errors() {
        let sections: Vec<RuleSection> = serde_saphyr::from_str(
            "- { name: x, action: allow, when: 'a2.method == \"GetTask\"' }\n",
        )
        .unwrap();
        let mut issues = Vec::new();
        validate_rules(&sections, &mut issues);
        assert!(
            issues[0].message.contains("unknown variable 'a2'"),
            "{issues:?}"
        );
    }
}
