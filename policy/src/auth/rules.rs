//! CEL authorization rules: compiled once at config load, evaluated per request.
//!
//! Variables a condition can use:
//! - `request`: `method`, `path` (with query), `host`, `scheme`, `headers` (lower-case names);
//! - `source`: `address` (client IP), `principal` (the peer certificate's identity as Envoy
//!   reports it: URI SAN, else DNS SAN, else subject), `subject` (certificate subject);
//! - `principal`: `method` (`api_key`, `jwt`, `mtls` or `none`), `subject`, `user`, `team`,
//!   `key`, `issuer`, `metadata` (what the admin API attached to the principal's team and
//!   user, the user's values winning; an empty map without);
//! - `jwt`: the verified token's claims (empty map without a token);
//! - `apiKey`: `name`, `user`, `team`, `models`, `labels` (empty map without a key);
//! - `llm`: `model`, the model named in the request body (empty string when none).
//!
//! A `deny` that matches wins; otherwise a matching `allow` admits; with rules present and
//! none matching, the request is denied. A condition that fails to evaluate (for instance a
//! missing map key: write `has(jwt.groups)` first) or is not a boolean does not match.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program, Value as CelValue};
use serde_json::Value;

use crate::config::{RuleAction, RuleSection};

/// Variables rules may refer to.
pub const VARIABLES: &[&str] = &["request", "source", "principal", "jwt", "apiKey", "llm"];

/// The CEL environment (standard library) every Gantry expression is compiled in.
pub(crate) fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// Compiles one condition; the error text names the problem.
pub fn compile_condition(source: &str) -> Result<Program, String> {
    if source.trim().is_empty() {
        return Err("the condition is empty".into());
    }
    env().compile(source).map_err(|e| e.to_string())
}

/// Whether a condition reads `llm` (and so needs the request body).
pub fn references_llm(source: &str) -> bool {
    compile_condition(source)
        .map(|p| p.references().has_variable("llm"))
        .unwrap_or(false)
}

/// One compiled rule (auth rules and MCP rules alike).
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) action: RuleAction,
    pub(crate) program: Program,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule({} {:?})", self.name, self.action)
    }
}

/// The ordered rules of a config.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Which variables any rule reads: only those are built per request.
    uses: [bool; VARIABLES.len()],
}

/// What the rules say about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleVerdict {
    /// There are no rules.
    NoRules,
    Allowed {
        rule: String,
    },
    Denied {
        rule: String,
    },
    /// Rules exist and none allows.
    NoneAllowed,
}

/// The facts a request offers to the rules.
#[derive(Debug)]
pub struct RuleFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HashMap<String, String>,
    pub source_address: &'a str,
    pub source_principal: &'a str,
    pub source_subject: &'a str,
    pub principal: Option<&'a super::Principal>,
    pub model: &'a str,
}

impl RuleSet {
    pub fn compile(sections: &[RuleSection]) -> RuleSet {
        let mut set = RuleSet::default();
        for section in sections {
            let Ok(program) = compile_condition(&section.when.value) else {
                continue; // unreachable on a validated config
            };
            let references = program.references();
            for (i, name) in VARIABLES.iter().enumerate() {
                set.uses[i] |= references.has_variable(name);
            }
            set.rules.push(Rule {
                name: section.name.value.clone(),
                action: section.action,
                program,
            });
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn evaluate(&self, facts: &RuleFacts<'_>) -> RuleVerdict {
        if self.rules.is_empty() {
            return RuleVerdict::NoRules;
        }
        let mut context = Context::with_env(env().clone());
        for (i, name) in VARIABLES.iter().enumerate() {
            if self.uses[i] {
                context.add_variable_from_value(*name, variable(name, facts));
            }
        }
        evaluate_rules(&self.rules, &context)
    }
}

/// The verdict of ordered rules in `context`: the first matching `deny` wins, else any
/// matching `allow` admits, else nothing does.
pub(crate) fn evaluate_rules(rules: &[Rule], context: &Context) -> RuleVerdict {
    let mut allowed_by = None;
    for rule in rules {
        let matched = match rule.program.execute(context) {
            Ok(CelValue::Bool(b)) => b,
            Ok(other) => {
                tracing::debug!(rule = %rule.name, value = ?other, "rule condition is not a boolean; treated as no match");
                false
            }
            Err(e) => {
                tracing::debug!(rule = %rule.name, error = %e, "rule condition failed; treated as no match");
                false
            }
        };
        if !matched {
            continue;
        }
        match rule.action {
            RuleAction::Deny => {
                return RuleVerdict::Denied {
                    rule: rule.name.clone(),
                }
            }
            RuleAction::Allow => {
                allowed_by.get_or_insert_with(|| rule.name.clone());
            }
        }
    }
    match allowed_by {
        Some(rule) => RuleVerdict::Allowed { rule },
        None => RuleVerdict::NoneAllowed,
    }
}

fn variable(name: &str, facts: &RuleFacts<'_>) -> CelValue {
    let principal = facts.principal;
    match name {
        "request" => {
            let headers: HashMap<Key, CelValue> = facts
                .headers
                .iter()
                .map(|(k, v)| (Key::from(k.as_str()), CelValue::from(v.as_str())))
                .collect();
            map([
                ("method", facts.method.into()),
                ("path", facts.path.into()),
                ("host", facts.host.into()),
                ("scheme", facts.scheme.into()),
                ("headers", CelValue::Map(CelMap::from(headers))),
            ])
        }
        "source" => map([
            ("address", facts.source_address.into()),
            ("principal", facts.source_principal.into()),
            ("subject", facts.source_subject.into()),
        ]),
        "principal" => match principal {
            Some(p) => map([
                ("method", p.method.as_str().into()),
                ("subject", p.subject.as_str().into()),
                ("user", opt(&p.user)),
                ("team", opt(&p.team)),
                ("key", opt(&p.key)),
                ("issuer", opt(&p.issuer)),
                ("metadata", string_map(p.metadata.as_deref())),
            ]),
            None => map([
                ("method", "none".into()),
                ("subject", "".into()),
                ("user", "".into()),
                ("team", "".into()),
                ("key", "".into()),
                ("issuer", "".into()),
                ("metadata", string_map(None)),
            ]),
        },
        "jwt" => match principal.and_then(|p| p.claims.as_ref()) {
            Some(claims) => object_to_cel(claims),
            None => map([]),
        },
        "apiKey" => match principal.and_then(|p| p.api_key.as_ref()) {
            Some(key) => {
                let labels: HashMap<Key, CelValue> = key
                    .labels
                    .iter()
                    .map(|(k, v)| (Key::from(k.as_str()), CelValue::from(v.as_str())))
                    .collect();
                let models: Vec<CelValue> = key
                    .models
                    .iter()
                    .flatten()
                    .map(|m| m.as_str().into())
                    .collect();
                map([
                    ("name", key.name.as_str().into()),
                    ("user", opt(&key.user)),
                    ("team", opt(&key.team)),
                    ("models", CelValue::List(Arc::new(models))),
                    ("labels", CelValue::Map(CelMap::from(labels))),
                ])
            }
            None => map([]),
        },
        "llm" => map([("model", facts.model.into())]),
        _ => CelValue::Null,
    }
}

fn string_map(entries: Option<&std::collections::BTreeMap<String, String>>) -> CelValue {
    let map: HashMap<Key, CelValue> = entries
        .into_iter()
        .flatten()
        .map(|(k, v)| (Key::from(k.as_str()), CelValue::from(v.as_str())))
        .collect();
    CelValue::Map(CelMap::from(map))
}

fn opt(value: &Option<String>) -> CelValue {
    value.as_deref().unwrap_or("").into()
}

fn map<const N: usize>(entries: [(&str, CelValue); N]) -> CelValue {
    let map: HashMap<Key, CelValue> = entries
        .into_iter()
        .map(|(k, v)| (Key::from(k), v))
        .collect();
    CelValue::Map(CelMap::from(map))
}

/// A JSON value as a CEL value (numbers: int, then uint, then double).
pub(crate) fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => CelValue::Int(i),
            (None, Some(u), _) => CelValue::UInt(u),
            (_, _, Some(f)) => CelValue::Float(f),
            _ => CelValue::Null,
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(fields) => object_to_cel(fields),
    }
}

pub(crate) fn object_to_cel(fields: &serde_json::Map<String, Value>) -> CelValue {
    let map: HashMap<Key, CelValue> = fields
        .iter()
        .map(|(k, v)| (Key::from(k.as_str()), json_to_cel(v)))
        .collect();
    CelValue::Map(CelMap::from(map))
}
