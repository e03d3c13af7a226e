//! Scopes: which counter a request charges, chosen by CEL expressions over the caller.
//!
//! A budget's or rate limit's `scope` is a CEL expression that yields the scope's key, e.g.
//! `"team:" + principal.team`, `"key:" + principal.key`, `"model:" + llm.model` or
//! `"global"`. Its optional `when` is a CEL condition. Variables:
//! - `principal`: `method`, `subject`, `user`, `team`, `key` (the API key's name), `issuer`;
//! - `apiKey`: `name`, `user`, `team`, `labels` (map);
//! - `jwt`: the verified token's claims;
//! - `llm`: `model` (the alias the client asked for), `provider`, `upstream_model`, `user`
//!   (the OpenAI `user` field of the request body, when sent);
//! - `request`: `method`, `path`, `headers` (lower-case names).
//!
//! Besides these, an expression may name the variables its macros bind (`g` in
//! `jwt.groups.exists(g, g == "admins")`) and standard type names (`string`, `int`, ...);
//! any other name is a config error, so that a typo cannot make a budget silently never apply.
//!
//! Facts the request does not have are absent (not empty): `"team:" + principal.team` fails
//! for a caller without a team, and a scope that fails, or yields anything but a non-empty
//! string, does not apply to the request. A `when` that fails or is not `true` does not apply
//! either.

use std::collections::{BTreeMap, HashMap};

use cel::common::ast::{EntryExpr, Expr, MapExpr, StructExpr};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, IdedExpr, Program, Value as CelValue};
use serde_json::Value;

use crate::auth::rules::{env, object_to_cel};

/// Variables scope and condition expressions may use.
pub const VARIABLES: &[&str] = &["principal", "apiKey", "jwt", "llm", "request"];

/// Compiles a scope or condition; the error names the problem.
///
/// Besides syntax, every identifier the expression reads must be one of [`VARIABLES`], a
/// variable a macro binds where it is bound (`x` in `list.exists(x, x > 0)`, only inside
/// that call), or a type name of the standard library (`int`, `string`, ...). A misspelled
/// variable (`principle.team`) is a config error rather than a scope that silently never
/// applies.
pub fn compile_template(source: &str) -> Result<Program, String> {
    compile_with_variables(source, VARIABLES)
}

/// Compiles an expression that may read only `variables` (plus macro-bound names and type
/// names); see [`compile_template`].
pub(crate) fn compile_with_variables(source: &str, variables: &[&str]) -> Result<Program, String> {
    if source.trim().is_empty() {
        return Err("the expression is empty".into());
    }
    let program = env().compile(source).map_err(|e| e.to_string())?;
    let mut bound = Vec::new();
    let mut unknown = Vec::new();
    unknown_identifiers(program.expression(), variables, &mut bound, &mut unknown);
    if let Some(name) = unknown.first() {
        return Err(format!(
            "unknown variable '{name}' (use {})",
            variables.join(", ")
        ));
    }
    Ok(program)
}

/// Collects, in source order, the identifiers of `expr` that are neither a known variable, a
/// variable bound by an enclosing comprehension (`bound`), nor a type name.
fn unknown_identifiers<'a>(
    expr: &'a IdedExpr,
    variables: &[&str],
    bound: &mut Vec<&'a str>,
    unknown: &mut Vec<&'a str>,
) {
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            if !is_known_identifier(name, variables, bound) && !unknown.contains(&name.as_str()) {
                unknown.push(name);
            }
        }
        Expr::Select(select) => {
            // A qualified type name such as `google.protobuf.Duration` is no variable.
            if !select.test && qualified_name(expr).is_some_and(|n| is_type_name(&n)) {
                return;
            }
            unknown_identifiers(&select.operand, variables, bound, unknown);
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                unknown_identifiers(target, variables, bound, unknown);
            }
            for arg in &call.args {
                unknown_identifiers(arg, variables, bound, unknown);
            }
        }
        Expr::Comprehension(comprehension) => {
            // The range and the accumulator's start are evaluated outside the loop; the
            // loop variables are bound in the condition, the step and the result only.
            unknown_identifiers(&comprehension.iter_range, variables, bound, unknown);
            unknown_identifiers(&comprehension.accu_init, variables, bound, unknown);
            let depth = bound.len();
            bound.push(&comprehension.iter_var);
            if let Some(second) = &comprehension.iter_var2 {
                bound.push(second);
            }
            bound.push(&comprehension.accu_var);
            unknown_identifiers(&comprehension.loop_cond, variables, bound, unknown);
            unknown_identifiers(&comprehension.loop_step, variables, bound, unknown);
            unknown_identifiers(&comprehension.result, variables, bound, unknown);
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for element in &list.elements {
                unknown_identifiers(element, variables, bound, unknown);
            }
        }
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            for entry in entries {
                match &entry.expr {
                    EntryExpr::StructField(field) => {
                        unknown_identifiers(&field.value, variables, bound, unknown)
                    }
                    EntryExpr::MapEntry(entry) => {
                        unknown_identifiers(&entry.key, variables, bound, unknown);
                        unknown_identifiers(&entry.value, variables, bound, unknown);
                    }
                }
            }
        }
    }
}

fn is_known_identifier(name: &str, variables: &[&str], bound: &[&str]) -> bool {
    // `@`-names are the parser's own (macro accumulators).
    if name.starts_with('@') || bound.contains(&name) {
        return true;
    }
    // `.principal` is `principal` looked up in the root scope.
    let root = name.strip_prefix('.').unwrap_or(name);
    variables.contains(&root) || is_type_name(root)
}

fn is_type_name(name: &str) -> bool {
    env()
        .types()
        .find_type(name.strip_prefix('.').unwrap_or(name))
        .is_some()
}

/// `a.b.c` for a chain of field selections on an identifier.
fn qualified_name(expr: &IdedExpr) -> Option<String> {
    match &expr.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(select) if !select.test => {
            qualified_name(&select.operand).map(|base| format!("{base}.{}", select.field))
        }
        _ => None,
    }
}

/// The caller as the authorization step admitted it. Absent facts are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    /// `api_key`, `jwt`, `mtls`, or `None` for an anonymous request.
    pub method: Option<String>,
    pub subject: Option<String>,
    pub user: Option<String>,
    pub team: Option<String>,
    /// The API key's name.
    pub key: Option<String>,
    pub issuer: Option<String>,
    /// The API key's labels.
    pub labels: BTreeMap<String, String>,
    /// The JWT's claims.
    pub claims: Option<serde_json::Map<String, Value>>,
    /// The API key's model allow-list, when it has one.
    pub allowed_models: Option<Vec<String>>,
}

/// What one request offers to scope expressions.
#[derive(Debug, Clone, Copy)]
pub struct ScopeFacts<'a> {
    pub caller: &'a Caller,
    pub model: &'a str,
    pub provider: &'a str,
    pub upstream_model: &'a str,
    /// The body's `user` field; `None` lets [`GovernancePolicy::plan`](super::GovernancePolicy::plan)
    /// read it from the body when a scope uses `llm`.
    pub end_user: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
}

/// A compiled scope with its optional condition.
pub struct ScopeTemplate {
    source: String,
    scope: Program,
    when: Option<Program>,
}

impl std::fmt::Debug for ScopeTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScopeTemplate({})", self.source)
    }
}

impl ScopeTemplate {
    /// Compiles a validated expression pair.
    pub fn compile(scope: &str, when: Option<&str>) -> Result<ScopeTemplate, String> {
        Ok(ScopeTemplate {
            source: scope.to_string(),
            scope: compile_template(scope)?,
            when: when.map(compile_template).transpose()?,
        })
    }

    /// The scope expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn uses(&self, variable: &str) -> bool {
        self.scope.references().has_variable(variable)
            || self
                .when
                .as_ref()
                .is_some_and(|w| w.references().has_variable(variable))
    }

    /// The scope key for this request, or `None` when the scope does not apply.
    pub fn evaluate(&self, context: &ScopeContext) -> Option<String> {
        if let Some(when) = &self.when {
            match when.execute(&context.context) {
                Ok(CelValue::Bool(true)) => {}
                Ok(_) => return None,
                Err(e) => {
                    tracing::trace!(scope = %self.source, error = %e, "condition does not apply");
                    return None;
                }
            }
        }
        match self.scope.execute(&context.context) {
            Ok(CelValue::String(s)) if !s.is_empty() => Some(s.to_string()),
            Ok(other) => {
                tracing::trace!(scope = %self.source, value = ?other, "scope is not a non-empty string; does not apply");
                None
            }
            Err(e) => {
                tracing::trace!(scope = %self.source, error = %e, "scope does not apply");
                None
            }
        }
    }
}

/// Which variables any template of a policy reads: only those are built per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct VariableUse([bool; VARIABLES.len()]);

impl VariableUse {
    pub fn add(&mut self, template: &ScopeTemplate) {
        for (i, name) in VARIABLES.iter().enumerate() {
            self.0[i] |= template.uses(name);
        }
    }

    /// Whether `request` is read (the adapter then keeps the request headers).
    pub fn request(&self) -> bool {
        self.uses("request")
    }

    /// Whether some template reads `variable` (one of [`VARIABLES`]).
    pub fn uses(&self, variable: &str) -> bool {
        VARIABLES
            .iter()
            .position(|v| *v == variable)
            .is_some_and(|i| self.0[i])
    }
}

/// The CEL context of one request, built once for all of its templates.
pub struct ScopeContext {
    context: Context<'static, 'static>,
}

impl ScopeContext {
    pub fn new(facts: &ScopeFacts<'_>, uses: VariableUse) -> ScopeContext {
        let mut context = Context::with_env(env().clone());
        for (i, name) in VARIABLES.iter().enumerate() {
            if uses.0[i] {
                context.add_variable_from_value(*name, variable(name, facts));
            }
        }
        ScopeContext { context }
    }
}

/// One variable of [`VARIABLES`] built from the facts (routing rules use the same caller
/// variables).
pub(crate) fn caller_variable(name: &str, facts: &ScopeFacts<'_>) -> CelValue {
    variable(name, facts)
}

fn variable(name: &str, facts: &ScopeFacts<'_>) -> CelValue {
    let caller = facts.caller;
    match name {
        "principal" => map([
            ("method", caller.method.as_deref()),
            ("subject", caller.subject.as_deref()),
            ("user", caller.user.as_deref()),
            ("team", caller.team.as_deref()),
            ("key", caller.key.as_deref()),
            ("issuer", caller.issuer.as_deref()),
        ]),
        "apiKey" => match &caller.key {
            Some(key) => {
                let mut entries: HashMap<Key, CelValue> = HashMap::new();
                entries.insert(Key::from("name"), key.as_str().into());
                if let Some(user) = &caller.user {
                    entries.insert(Key::from("user"), user.as_str().into());
                }
                if let Some(team) = &caller.team {
                    entries.insert(Key::from("team"), team.as_str().into());
                }
                let labels: HashMap<Key, CelValue> = caller
                    .labels
                    .iter()
                    .map(|(k, v)| (Key::from(k.as_str()), CelValue::from(v.as_str())))
                    .collect();
                entries.insert(Key::from("labels"), CelValue::Map(CelMap::from(labels)));
                CelValue::Map(CelMap::from(entries))
            }
            None => CelValue::Map(CelMap::from(HashMap::<Key, CelValue>::new())),
        },
        "jwt" => match &caller.claims {
            Some(claims) => object_to_cel(claims),
            None => CelValue::Map(CelMap::from(HashMap::<Key, CelValue>::new())),
        },
        "llm" => map([
            ("model", Some(facts.model)),
            ("provider", Some(facts.provider)),
            ("upstream_model", Some(facts.upstream_model)),
            ("user", facts.end_user),
        ]),
        "request" => {
            let headers: HashMap<Key, CelValue> = facts
                .headers
                .iter()
                .map(|(k, v)| (Key::from(k.as_str()), CelValue::from(v.as_str())))
                .collect();
            let mut entries: HashMap<Key, CelValue> = HashMap::new();
            entries.insert(Key::from("method"), facts.method.into());
            entries.insert(Key::from("path"), facts.path.into());
            entries.insert(Key::from("headers"), CelValue::Map(CelMap::from(headers)));
            CelValue::Map(CelMap::from(entries))
        }
        _ => CelValue::Null,
    }
}

/// A map holding only the facts that are present.
fn map<const N: usize>(entries: [(&str, Option<&str>); N]) -> CelValue {
    let map: HashMap<Key, CelValue> = entries
        .into_iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| (Key::from(k), v.into()))
        })
        .collect();
    CelValue::Map(CelMap::from(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(caller: &Caller) -> ScopeFacts<'_> {
        ScopeFacts {
            caller,
            model: "fast",
            provider: "p",
            upstream_model: "gpt-4o-mini",
            end_user: None,
            method: "POST",
            path: "/v1/chat/completions",
            headers: &[],
        }
    }

    fn eval(scope: &str, when: Option<&str>, caller: &Caller) -> Option<String> {
        let template = ScopeTemplate::compile(scope, when).unwrap();
        let mut uses = VariableUse::default();
        uses.add(&template);
        template.evaluate(&ScopeContext::new(&facts(caller), uses))
    }

    #[test]
    fn scopes_come_from_the_caller_and_missing_facts_do_not_apply() {
        let with_team = Caller {
            key: Some("ci".into()),
            team: Some("eng".into()),
            ..Default::default()
        };
        assert_eq!(
            eval(r#""team:" + principal.team"#, None, &with_team).as_deref(),
            Some("team:eng")
        );
        assert_eq!(
            eval(r#""team:" + apiKey.team"#, None, &with_team).as_deref(),
            Some("team:eng")
        );
        assert_eq!(
            eval(r#""team:" + principal.team"#, None, &Caller::default()),
            None
        );
        assert_eq!(
            eval(r#""global""#, None, &Caller::default()).as_deref(),
            Some("global")
        );
        assert_eq!(
            eval(r#""model:" + llm.model"#, None, &Caller::default()).as_deref(),
            Some("model:fast")
        );
        // Not a string, or empty: does not apply.
        assert_eq!(eval("1", None, &with_team), None);
        assert_eq!(eval(r#""""#, None, &with_team), None);
    }

    #[test]
    fn conditions_gate_the_scope() {
        let caller = Caller {
            labels: [("tier".to_string(), "free".to_string())].into(),
            key: Some("k".into()),
            ..Default::default()
        };
        let when = Some(r#"apiKey.labels.tier == "free""#);
        assert_eq!(eval(r#""free""#, when, &caller).as_deref(), Some("free"));
        let paid = Caller {
            labels: [("tier".to_string(), "paid".to_string())].into(),
            key: Some("k".into()),
            ..Default::default()
        };
        assert_eq!(eval(r#""free""#, when, &paid), None);
    }

    #[test]
    fn jwt_claims_are_readable() {
        let caller = Caller {
            claims: serde_json::from_str(r#"{"org":"acme","n":3}"#).ok(),
            ..Default::default()
        };
        assert_eq!(
            eval(r#""org:" + jwt.org"#, None, &caller).as_deref(),
            Some("org:acme")
        );
    }

    #[test]
    fn unknown_variables_and_syntax_errors_are_config_errors() {
        let err = compile_template(r#""team:" + principle.team"#).unwrap_err();
        assert!(err.contains("unknown variable 'principle'"), "{err}");
        assert!(
            err.contains("principal, apiKey, jwt, llm, request"),
            "{err}"
        );
        assert!(compile_template("\"a\" +").is_err());
        assert!(compile_template("  ").unwrap_err().contains("empty"));
        assert!(compile_template(r#"principal.team in ["a"] ? "x" : "y""#).is_ok());
    }

    #[test]
    fn short_misspellings_are_unknown_variables_too() {
        for (source, name) in [
            (r#""m:" + lm.model"#, "lm"),
            (r#""k:" + k"#, "k"),
            (r#"[1].exists(x, x == y) ? "a" : "b""#, "y"),
            // Naming a variable in `(v,` form somewhere does not bind it everywhere.
            (r#"[1].all(team, true) ? "t:" + team : "x""#, "team"),
            (r#"{"a": principle}.a"#, "principle"),
        ] {
            let err = compile_template(source).unwrap_err();
            assert!(err.contains(&format!("'{name}'")), "{source}: {err}");
        }
    }

    #[test]
    fn macro_variables_types_and_presence_tests_are_allowed() {
        for source in [
            r#"request.headers.exists(h, h == "x-team") ? "t" : "u""#,
            r#"jwt.groups.exists(g, g.startsWith("eng")) ? "eng" : "other""#,
            r#"jwt.groups.filter(g, g != "").map(g, "g:" + g)[0]"#,
            r#"[1, 2].all(x, [3].exists(y, x < y)) ? "a" : "b""#,
            r#"jwt.groups.exists_one(g, g == "a") ? "a" : "b""#,
            r#"has(principal.team) ? "team:" + principal.team : "none""#,
            r#"type(jwt.org) == string ? "org:" + jwt.org : "none""#,
            r#""n:" + string(int(jwt.n))"#,
            r#"{"a": llm.model}.a"#,
        ] {
            assert!(
                compile_template(source).is_ok(),
                "{source}: {:?}",
                compile_template(source).err()
            );
        }
    }

    #[test]
    fn comprehension_variables_evaluate() {
        let caller = Caller {
            claims: serde_json::from_str(r#"{"groups":["ops","eng-core"]}"#).ok(),
            ..Default::default()
        };
        assert_eq!(
            eval(
                r#"jwt.groups.filter(g, g.startsWith("eng"))[0]"#,
                Some(r#"jwt.groups.exists(g, g == "ops")"#),
                &caller
            )
            .as_deref(),
            Some("eng-core")
        );
    }

    #[test]
    fn request_facts_and_the_end_user_are_readable() {
        let caller = Caller::default();
        let headers = [("x-tenant".to_string(), "acme".to_string())];
        let facts = ScopeFacts {
            end_user: Some("alice"),
            headers: &headers,
            ..facts(&caller)
        };
        let template = ScopeTemplate::compile(
            r#"request.headers["x-tenant"] + "/" + llm.user"#,
            Some(r#"request.method == "POST" && request.path.startsWith("/v1/")"#),
        )
        .unwrap();
        let mut uses = VariableUse::default();
        uses.add(&template);
        assert!(uses.request());
        assert!(!uses.uses("principal"));
        assert_eq!(
            template
                .evaluate(&ScopeContext::new(&facts, uses))
                .as_deref(),
            Some("acme/alice")
        );
        // Without the end user, the scope does not apply.
        let facts = ScopeFacts {
            end_user: None,
            headers: &headers,
            ..facts
        };
        assert_eq!(template.evaluate(&ScopeContext::new(&facts, uses)), None);
        let global = ScopeTemplate::compile(r#""global""#, None).unwrap();
        let mut uses = VariableUse::default();
        uses.add(&global);
        assert!(!uses.request());
    }
}
