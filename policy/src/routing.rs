//! Content-based routing: the `routing` rules, compiled once, evaluated per LLM request before
//! its model alias is resolved. The first rule whose CEL condition holds replaces the model the
//! client asked for with the rule's alias.
//!
//! Variables a condition can use:
//! - `llm`: `model` (the alias the client asked for), `api` (`chat_completions`,
//!   `completions`, `embeddings`), `stream` (bool), `message_count` (int; chat only, else 0),
//!   `max_tokens` (int, 0 when unset; `max_completion_tokens` counts too), `user` (the body's
//!   `user`, or ""), `metadata` (the body's `metadata` object as a map of strings, else empty),
//!   `has_tools` (the request offers tools);
//! - `request`: `method`, `path`, `headers` (lower-case names);
//! - `principal`, `apiKey`, `jwt`: the caller, as governance scopes see them.
//!
//! The client may also name a model that does not exist (say `auto`) and leave the choice to
//! the rules; when none matches, that name gets the usual 404. A condition that fails to
//! evaluate or is not a boolean does not match. Model allow-lists of
//! API keys are checked against the model the client asked for, before routing: routing rules
//! are the operator's policy.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map as CelMap};
use cel::{Context, Program, Value as CelValue};
use serde_json::Value;

use crate::auth::rules::env;
use crate::config::RoutingRuleSection;
use crate::governance::scope::{caller_variable, compile_with_variables, Caller, ScopeFacts};
use crate::json_object::RawObject;
use crate::openai_api::LlmApi;

/// Variables routing conditions may read.
pub const VARIABLES: &[&str] = &["llm", "request", "principal", "apiKey", "jwt"];

/// Compiles a condition; every identifier must be one of [`VARIABLES`].
pub fn compile_condition(source: &str) -> Result<Program, String> {
    if source.trim().is_empty() {
        return Err("the condition is empty".into());
    }
    compile_with_variables(source, VARIABLES)
}

struct RoutingRule {
    name: Arc<str>,
    when: Program,
    model: String,
}

/// The compiled `routing` section (empty when there is none).
#[derive(Default)]
pub struct RoutingRules {
    rules: Vec<RoutingRule>,
    uses: VariableUse,
}

/// Which of [`VARIABLES`] some conditions read: only those are built for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariableUse([bool; VARIABLES.len()]);

impl VariableUse {
    /// Adds what `program` reads.
    pub(crate) fn add(&mut self, program: &Program) {
        let references = program.references();
        for (i, name) in VARIABLES.iter().enumerate() {
            self.0[i] |= references.has_variable(name);
        }
    }

    pub fn union(self, other: VariableUse) -> VariableUse {
        let mut both = self;
        for (i, used) in other.0.iter().enumerate() {
            both.0[i] |= used;
        }
        both
    }

    fn reads(&self, variable: &str) -> bool {
        VARIABLES
            .iter()
            .position(|v| *v == variable)
            .is_some_and(|i| self.0[i])
    }

    /// Whether a condition reads `request` (the adapter then keeps the request headers).
    pub fn reads_request(&self) -> bool {
        self.reads("request")
    }

    /// Whether a condition reads the caller (`principal`, `apiKey` or `jwt`).
    pub fn reads_caller(&self) -> bool {
        self.reads("principal") || self.reads("apiKey") || self.reads("jwt")
    }
}

/// The variables `uses` names, for one `api` request for model `model`.
pub(crate) fn condition_context(
    uses: VariableUse,
    api: LlmApi,
    model: &str,
    body: &RawObject,
    request: &RequestContext<'_>,
) -> Context<'static, 'static> {
    let mut context = Context::with_env(env().clone());
    let facts = ScopeFacts {
        caller: request.caller,
        model,
        provider: "",
        upstream_model: "",
        end_user: None,
        method: request.method,
        path: request.path,
        headers: request.headers,
    };
    for (i, name) in VARIABLES.iter().enumerate() {
        if !uses.0[i] {
            continue;
        }
        let value = match *name {
            "llm" => llm_variable(api, model, body),
            other => caller_variable(other, &facts),
        };
        context.add_variable_from_value(*name, value);
    }
    context
}

/// Whether `condition` holds in `context`. A condition that fails or is not a boolean does
/// not hold; `what` names it in the debug log (e.g. `routing rule 'long-chats'`).
pub(crate) fn holds(
    condition: &Program,
    context: &Context<'_, '_>,
    what: &dyn std::fmt::Display,
) -> bool {
    match condition.execute(context) {
        Ok(CelValue::Bool(value)) => value,
        Ok(other) => {
            tracing::debug!(%what, value = ?other, "condition is not a boolean; it does not hold");
            false
        }
        Err(e) => {
            tracing::debug!(%what, error = %e, "condition failed; it does not hold");
            false
        }
    }
}

impl std::fmt::Debug for RoutingRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.rules.iter().map(|r| &*r.name).collect();
        write!(f, "RoutingRules({names:?})")
    }
}

/// What the adapter knows of the request besides its body.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    pub caller: &'a Caller,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
}

static NO_CALLER: Caller = Caller {
    method: None,
    subject: None,
    user: None,
    team: None,
    key: None,
    issuer: None,
    labels: std::collections::BTreeMap::new(),
    claims: None,
    allowed_models: None,
};

impl RequestContext<'static> {
    /// No caller, no headers (for callers that have none to give).
    pub fn empty() -> RequestContext<'static> {
        RequestContext {
            caller: &NO_CALLER,
            method: "POST",
            path: "",
            headers: &[],
        }
    }
}

/// The rule that matched and the alias it picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub rule: Arc<str>,
    pub model: String,
}

impl RoutingRules {
    /// Compiles validated rules (an invalid one is skipped: unreachable after validation).
    pub fn compile(sections: &[RoutingRuleSection]) -> RoutingRules {
        let mut compiled = RoutingRules::default();
        for section in sections {
            let Ok(when) = compile_condition(&section.when.value) else {
                tracing::error!(rule = %section.name.value, "routing condition not compiled");
                continue;
            };
            compiled.uses.add(&when);
            compiled.rules.push(RoutingRule {
                name: Arc::from(section.name.value.as_str()),
                when,
                model: section.model.value.clone(),
            });
        }
        compiled
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What the rules' conditions read.
    pub fn uses(&self) -> VariableUse {
        self.uses
    }

    /// The first rule whose condition holds for this request, if any.
    pub fn pick(
        &self,
        api: LlmApi,
        requested: &str,
        body: &RawObject,
        request: &RequestContext<'_>,
    ) -> Option<Routed> {
        if self.rules.is_empty() {
            return None;
        }
        let context = condition_context(self.uses, api, requested, body, request);
        for rule in &self.rules {
            let what = format_args!("routing rule '{}'", rule.name);
            if holds(&rule.when, &context, &what) {
                tracing::debug!(rule = %rule.name, from = requested, to = %rule.model, "routing rule matched");
                return Some(Routed {
                    rule: rule.name.clone(),
                    model: rule.model.clone(),
                });
            }
        }
        None
    }
}

/// The `llm` variable: facts read from the top level of the body.
fn llm_variable(api: LlmApi, requested: &str, body: &RawObject) -> CelValue {
    let parse = |key: &str| -> Option<Value> {
        body.get(key)
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    };
    let stream = parse("stream").and_then(|v| v.as_bool()).unwrap_or(false);
    let message_count = match (api, parse("messages")) {
        (LlmApi::ChatCompletions, Some(Value::Array(messages))) => messages.len() as i64,
        _ => 0,
    };
    let max_tokens = parse("max_completion_tokens")
        .or_else(|| parse("max_tokens"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let user = parse("user")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let metadata: HashMap<Key, CelValue> = match parse("metadata") {
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (Key::from(k.as_str()), CelValue::from(text.as_str()))
            })
            .collect(),
        _ => HashMap::new(),
    };
    let has_tools = matches!(parse("tools"), Some(Value::Array(tools)) if !tools.is_empty())
        || matches!(parse("functions"), Some(Value::Array(f)) if !f.is_empty());
    let entries: HashMap<Key, CelValue> = [
        ("model", CelValue::from(requested)),
        ("api", CelValue::from(api.name())),
        ("stream", CelValue::Bool(stream)),
        ("message_count", CelValue::Int(message_count)),
        ("max_tokens", CelValue::Int(max_tokens)),
        ("user", CelValue::from(user.as_str())),
        ("metadata", CelValue::Map(CelMap::from(metadata))),
        ("has_tools", CelValue::Bool(has_tools)),
    ]
    .into_iter()
    .map(|(k, v)| (Key::from(k), v))
    .collect();
    CelValue::Map(CelMap::from(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_saphyr::Spanned;

    fn rules(specs: &[(&str, &str, &str)]) -> RoutingRules {
        let sections: Vec<RoutingRuleSection> = specs
            .iter()
            .map(|(name, when, model)| {
                serde_saphyr::from_str(&format!(
                    "{{ name: {name}, when: {when:?}, model: {model} }}"
                ))
                .unwrap()
            })
            .collect();
        let _: Option<Spanned<String>> = None;
        RoutingRules::compile(&sections)
    }

    fn body(json: &str) -> RawObject {
        RawObject::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_first_matching_rule_picks_the_model() {
        let r = rules(&[
            ("long", "llm.message_count > 2", "smart"),
            (
                "premium",
                "'tier' in llm.metadata && llm.metadata.tier == 'premium'",
                "premium",
            ),
            ("tools", "llm.has_tools && llm.model == 'fast'", "tooling"),
        ]);
        let ctx = RequestContext::empty();
        let api = LlmApi::ChatCompletions;
        let short = body(r#"{"model":"fast","messages":[{},{}]}"#);
        assert_eq!(r.pick(api, "fast", &short, &ctx), None);
        let long = body(r#"{"model":"fast","messages":[{},{},{}],"metadata":{"tier":"premium"}}"#);
        assert_eq!(
            r.pick(api, "fast", &long, &ctx).unwrap().rule.as_ref(),
            "long"
        );
        let tagged = body(r#"{"model":"fast","messages":[],"metadata":{"tier":"premium"}}"#);
        assert_eq!(r.pick(api, "fast", &tagged, &ctx).unwrap().model, "premium");
        let tools = body(r#"{"model":"fast","messages":[],"tools":[{"type":"function"}]}"#);
        assert_eq!(r.pick(api, "fast", &tools, &ctx).unwrap().model, "tooling");
        assert_eq!(r.pick(api, "other", &tools, &ctx), None);
    }

    #[test]
    fn conditions_read_headers_and_the_caller_and_errors_do_not_match() {
        let r = rules(&[
            ("broken", "llm.metadata.missing == 'x'", "never"),
            (
                "header",
                "'x-priority' in request.headers && request.headers['x-priority'] == 'high'",
                "smart",
            ),
            ("team", "principal.team == 'research'", "lab"),
        ]);
        assert!(r.uses().reads_request() && r.uses().reads_caller());
        let headers = vec![("x-priority".to_string(), "high".to_string())];
        let caller = Caller {
            team: Some("research".into()),
            ..Caller::default()
        };
        let b = body(r#"{"model":"fast"}"#);
        let with_header = RequestContext {
            caller: &NO_CALLER,
            method: "POST",
            path: "/v1/chat/completions",
            headers: &headers,
        };
        let api = LlmApi::ChatCompletions;
        assert_eq!(
            r.pick(api, "fast", &b, &with_header).unwrap().rule.as_ref(),
            "header"
        );
        let from_team = RequestContext {
            caller: &caller,
            ..RequestContext::empty()
        };
        assert_eq!(r.pick(api, "fast", &b, &from_team).unwrap().model, "lab");
        assert_eq!(r.pick(api, "fast", &b, &RequestContext::empty()), None);
    }

    #[test]
    fn unknown_variables_are_config_errors() {
        assert!(compile_condition("llm.message_count > 1").is_ok());
        let error = compile_condition("body.size > 1").unwrap_err();
        assert!(error.contains("body"), "{error}");
        assert!(compile_condition("  ").is_err());
    }
}
