//! MCP authorization: CEL rules over the caller and the MCP item, compiled once.
//!
//! Variables a rule can use:
//! - `principal`: `method` (`api_key`, `jwt`, `mtls` or `none`), `subject`, `user`, `team`,
//!   `key` — the identity ext_authz established (empty strings when anonymous);
//! - `mcp`: `method` (the JSON-RPC method: `tools/list` while filtering a list,
//!   `tools/call` when calling, …), `kind` (`tool`, `prompt`, `resource` or
//!   `resource_template`), `upstream`, `name` (the federated name or URI the client sees),
//!   `upstream_name` (the upstream's own), `server` (the virtual server, empty for the
//!   main endpoint), `arguments` (the call's arguments; an empty map in lists);
//! - `request`: `headers` (lower-case names).
//!
//! The same rules filter lists (an item a caller may not call is not shown) and guard calls.
//! A matching `deny` wins; otherwise a matching `allow` admits; with rules present and none
//! matching, the item is denied. A condition that fails to evaluate does not match.

use std::collections::HashMap;

use cel::objects::{Key, Map as CelMap};
use cel::{Context, Program, Value as CelValue};
use serde_json::{Map, Value};

use crate::auth::rules::{env, evaluate_rules, object_to_cel, Rule, RuleVerdict};
use crate::config::{issue, ConfigIssue, RuleSection};
use crate::governance::scope::compile_with_variables;

/// Variables MCP rules may read.
pub const VARIABLES: &[&str] = &["principal", "mcp", "request"];

/// The caller as the bridge knows it (from the identity headers Envoy's ext_authz set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct McpCaller {
    /// `api_key`, `jwt`, `mtls`, or `none` for an anonymous caller.
    pub method: String,
    /// Stable identity; empty when anonymous.
    pub subject: String,
    pub user: String,
    pub team: String,
    pub key: String,
}

impl McpCaller {
    pub fn anonymous() -> McpCaller {
        McpCaller {
            method: "none".into(),
            ..McpCaller::default()
        }
    }

    /// The identity a session is bound to: method and subject.
    pub fn binding(&self) -> String {
        format!("{}:{}", self.method, self.subject)
    }
}

/// What kind of item a rule is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Tool,
    Prompt,
    Resource,
    ResourceTemplate,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Tool => "tool",
            ItemKind::Prompt => "prompt",
            ItemKind::Resource => "resource",
            ItemKind::ResourceTemplate => "resource_template",
        }
    }
}

/// One question to the rules.
#[derive(Debug)]
pub struct McpFacts<'a> {
    pub caller: &'a McpCaller,
    pub method: &'a str,
    pub kind: ItemKind,
    pub upstream: &'a str,
    pub name: &'a str,
    pub upstream_name: &'a str,
    pub server: &'a str,
    pub arguments: Option<&'a Map<String, Value>>,
    pub headers: &'a HashMap<String, String>,
}

/// Named CEL rules over `principal`, one protocol's variable (`mcp`, `a2a`) and `request`,
/// compiled once: what MCP and A2A rules share.
#[derive(Default)]
pub(crate) struct CallerRules {
    rules: Vec<Rule>,
    uses_request: bool,
}

impl std::fmt::Debug for CallerRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
        write!(f, "{names:?}")
    }
}

impl CallerRules {
    /// Compiles validated `sections` with `compile` (the protocol's variables).
    pub(crate) fn compile(
        sections: &[RuleSection],
        compile: fn(&str) -> Result<Program, String>,
    ) -> CallerRules {
        let mut set = CallerRules::default();
        for section in sections {
            let Ok(program) = compile(&section.when.value) else {
                continue; // unreachable on a validated config
            };
            set.uses_request |= program.references().has_variable("request");
            set.rules.push(Rule {
                name: section.name.value.clone(),
                action: section.action,
                program,
            });
        }
        set
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule reads `request.headers`.
    pub(crate) fn uses_request(&self) -> bool {
        self.uses_request
    }

    /// Evaluates the rules; `call` builds the protocol variable (`name`) only when there are
    /// rules, `headers` are read only when a rule uses them.
    pub(crate) fn evaluate<'h>(
        &self,
        caller: &McpCaller,
        name: &str,
        call: impl FnOnce() -> CelValue,
        headers: impl Iterator<Item = (&'h str, &'h str)>,
    ) -> RuleVerdict {
        if self.rules.is_empty() {
            return RuleVerdict::NoRules;
        }
        let mut context = Context::with_env(env().clone());
        context.add_variable_from_value("principal", principal_value(caller));
        context.add_variable_from_value(name, call());
        if self.uses_request {
            let headers: HashMap<Key, CelValue> = headers
                .map(|(k, v)| (Key::from(k), CelValue::from(v)))
                .collect();
            context.add_variable_from_value(
                "request",
                cel_map([("headers", CelValue::Map(CelMap::from(headers)))]),
            );
        }
        evaluate_rules(&self.rules, &context)
    }
}

/// The compiled `mcp.rules`.
#[derive(Default, Debug)]
pub struct McpRules(CallerRules);

/// Compiles one rule condition against the MCP variables.
pub fn compile_rule(source: &str) -> Result<Program, String> {
    compile_with_variables(source, VARIABLES)
}

/// Config validation of `mcp.rules`.
pub(crate) fn validate_rules(rules: &[RuleSection], issues: &mut Vec<ConfigIssue>) {
    validate_rules_at("mcp.rules", rules, issues);
}

/// Config validation of MCP rules at `path` (`mcp.rules`, `mcp_direct.rules`).
pub(crate) fn validate_rules_at(path: &str, rules: &[RuleSection], issues: &mut Vec<ConfigIssue>) {
    validate_rule_list(path, rules, compile_rule, issues);
}

/// Config validation of a list of named CEL rules: unique names, conditions that compile
/// with `compile`.
pub(crate) fn validate_rule_list(
    path: &str,
    rules: &[RuleSection],
    compile: fn(&str) -> Result<Program, String>,
    issues: &mut Vec<ConfigIssue>,
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(first) = names.insert(rule.name.value.as_str(), i) {
            issues.push(issue(
                &format!("{at}.name"),
                rule.name.referenced.line(),
                format!(
                    "duplicate rule name '{}' (first declared at {path}[{first}])",
                    rule.name.value
                ),
            ));
        }
        if let Err(e) = compile(&rule.when.value) {
            issues.push(issue(
                &format!("{at}.when"),
                rule.when.referenced.line(),
                format!("rule '{}' does not compile: {e}", rule.name.value),
            ));
        }
    }
}

impl McpRules {
    pub fn compile(sections: &[RuleSection]) -> McpRules {
        McpRules(CallerRules::compile(sections, compile_rule))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a rule reads `request.headers` (adapters then keep them).
    pub fn uses_request(&self) -> bool {
        self.0.uses_request()
    }

    pub fn evaluate(&self, facts: &McpFacts<'_>) -> RuleVerdict {
        self.0.evaluate(
            facts.caller,
            "mcp",
            || mcp(facts),
            facts.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// Whether the verdict lets the item through.
    pub fn permits(&self, facts: &McpFacts<'_>) -> bool {
        matches!(
            self.evaluate(facts),
            RuleVerdict::NoRules | RuleVerdict::Allowed { .. }
        )
    }
}

/// The `principal` variable of MCP and A2A rules.
pub(crate) fn principal_value(caller: &McpCaller) -> CelValue {
    cel_map([
        ("method", caller.method.as_str().into()),
        ("subject", caller.subject.as_str().into()),
        ("user", caller.user.as_str().into()),
        ("team", caller.team.as_str().into()),
        ("key", caller.key.as_str().into()),
    ])
}

fn mcp(facts: &McpFacts<'_>) -> CelValue {
    let arguments = match facts.arguments {
        Some(arguments) => object_to_cel(arguments),
        None => CelValue::Map(CelMap::from(HashMap::<Key, CelValue>::new())),
    };
    cel_map([
        ("method", facts.method.into()),
        ("kind", facts.kind.as_str().into()),
        ("upstream", facts.upstream.into()),
        ("name", facts.name.into()),
        ("upstream_name", facts.upstream_name.into()),
        ("server", facts.server.into()),
        ("arguments", arguments),
    ])
}

/// A CEL map of fixed string keys.
pub(crate) fn cel_map<const N: usize>(entries: [(&str, CelValue); N]) -> CelValue {
    let map: HashMap<Key, CelValue> = entries
        .into_iter()
        .map(|(k, v)| (Key::from(k), v))
        .collect();
    CelValue::Map(CelMap::from(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> McpRules {
        let sections: Vec<RuleSection> = serde_saphyr::from_str(yaml).expect("rules yaml");
        let mut issues = Vec::new();
        validate_rules(&sections, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        McpRules::compile(&sections)
    }

    fn facts<'a>(
        caller: &'a McpCaller,
        name: &'a str,
        arguments: Option<&'a Map<String, Value>>,
        headers: &'a HashMap<String, String>,
    ) -> McpFacts<'a> {
        McpFacts {
            caller,
            method: if arguments.is_some() {
                "tools/call"
            } else {
                "tools/list"
            },
            kind: ItemKind::Tool,
            upstream: name.split("__").next().unwrap_or(""),
            name,
            upstream_name: name.split("__").nth(1).unwrap_or(""),
            server: "",
            arguments,
            headers,
        }
    }

    #[test]
    fn deny_wins_allow_admits_and_nothing_matching_denies() {
        let set = rules(
            "- { name: no-delete, action: deny, when: 'mcp.upstream_name.startsWith(\"delete\")' }\n\
             - { name: team-a, action: allow, when: 'principal.team == \"a\"' }\n\
             - { name: docs-for-all, action: allow, when: 'mcp.upstream == \"docs\"' }\n",
        );
        let headers = HashMap::new();
        let a = McpCaller {
            method: "api_key".into(),
            subject: "alice".into(),
            team: "a".into(),
            ..McpCaller::default()
        };
        let anon = McpCaller::anonymous();
        assert_eq!(
            set.evaluate(&facts(&a, "fs__read", None, &headers)),
            RuleVerdict::Allowed {
                rule: "team-a".into()
            }
        );
        assert_eq!(
            set.evaluate(&facts(&a, "fs__delete_all", None, &headers)),
            RuleVerdict::Denied {
                rule: "no-delete".into()
            }
        );
        assert!(set.permits(&facts(&anon, "docs__search", None, &headers)));
        assert_eq!(
            set.evaluate(&facts(&anon, "fs__read", None, &headers)),
            RuleVerdict::NoneAllowed
        );
    }

    #[test]
    fn arguments_are_visible_to_calls_and_absent_in_lists() {
        let set = rules(
            "- { name: no-root, action: deny, when: 'has(mcp.arguments.path) && mcp.arguments.path.startsWith(\"/root\")' }\n\
             - { name: all, action: allow, when: 'true' }\n",
        );
        let headers = HashMap::new();
        let caller = McpCaller::anonymous();
        let args: Map<String, Value> =
            serde_json::from_str(r#"{"path": "/root/.ssh/id_rsa"}"#).unwrap();
        let fine: Map<String, Value> = serde_json::from_str(r#"{"path": "/tmp/x"}"#).unwrap();
        assert!(set.permits(&facts(&caller, "fs__read", None, &headers)));
        assert!(!set.permits(&facts(&caller, "fs__read", Some(&args), &headers)));
        assert!(set.permits(&facts(&caller, "fs__read", Some(&fine), &headers)));
    }

    #[test]
    fn misspelt_variables_are_config_errors() {
        let sections: Vec<RuleSection> =
            serde_saphyr::from_str("- { name: x, action: allow, when: 'mpc.upstream == \"a\"' }\n")
                .unwrap();
        let mut issues = Vec::new();
        validate_rules(&sections, &mut issues);
        assert!(
            issues[0].message.contains("unknown variable 'mpc'"),
            "{issues:?}"
        );
    }
}
