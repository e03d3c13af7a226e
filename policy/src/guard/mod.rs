//! Request guards: built-in detectors (PII, secrets, high-entropy tokens, prompt-injection
//! heuristics) and operator regexes run over the prompt text of LLM requests, which then
//! reject, mask or log what they find.
//!
//! Guards are compiled once into the [`Snapshot`](crate::Snapshot) ([`GuardPolicy`]);
//! [`plan_forward`](crate::plan_forward) runs them, so every adapter gets them for free. Only
//! prompt text is scanned (see [`prompt`]), and each guard only the texts in its `scopes`
//! ([`GuardScope`]). Each text is scanned once per guard: a [`RegexSet`] of all of a guard's
//! rules says which of them can match at all, and only those are run for positions. A match
//! whose text an `allow` regex matches entirely is not a hit. `prompt_injection` scores the
//! text (`injection.rs`; once per text, shared by the guards that use it) and is a hit at the
//! guard's `injection_threshold`. A hit ([`GuardHit`]) records where it was and what it was,
//! never the matched text.

mod detectors;
mod injection;
mod prompt;
pub mod response;
mod scope;
#[cfg(test)]
mod tests;
mod webhook;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

pub use detectors::Detector;
pub use injection::DEFAULT_THRESHOLD as DEFAULT_INJECTION_THRESHOLD;
pub use prompt::Location;
pub use scope::{GuardScope, ScopeSet};
pub use webhook::{WebhookAnswer, WebhookCall, WebhookGuard, WebhookOutcome, WebhookRun};

use cel::Program;

use crate::config::{GuardAction, GuardsSection, RequestGuardSection};
use crate::json_object::RawObject;
use crate::openai_api::{LlmApi, LocalReply};
use crate::routing::{condition_context, holds, RequestContext, VariableUse};
use detectors::Check;
use prompt::Visit;

/// `code` (and `LocalReply::details`) of a request a guard refused.
pub const GUARD_REJECTED: &str = "guard_rejected";
/// `code` of a request refused because the guards could not be compiled.
pub const GUARD_UNAVAILABLE: &str = "guard_unavailable";

/// What matched: a built-in detector, or one of the guard's `patterns` (by index, so that
/// the regex itself, which may name what it protects, is never shown to clients), or a
/// webhook's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardRule {
    Detector(Detector),
    Pattern(usize),
    /// A webhook guard's service answered reject or mask.
    Webhook,
    /// A webhook guard got no verdict and, failing open, let the request through.
    WebhookUnavailable,
}

impl GuardRule {
    /// The label of the default mask text, `[REDACTED:<label>]`.
    fn mask_label(self) -> &'static str {
        match self {
            GuardRule::Detector(detector) => detector.name(),
            GuardRule::Pattern(_) => "pattern",
            GuardRule::Webhook | GuardRule::WebhookUnavailable => "webhook",
        }
    }
}

impl fmt::Display for GuardRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardRule::Detector(detector) => f.write_str(detector.name()),
            GuardRule::Pattern(index) => write!(f, "patterns[{index}]"),
            GuardRule::Webhook => f.write_str("webhook"),
            GuardRule::WebhookUnavailable => f.write_str("webhook_unavailable"),
        }
    }
}

/// One guard rule that found something in one prompt text. Holds no matched text.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardHit {
    /// The guard's `name`.
    pub guard: Arc<str>,
    pub rule: GuardRule,
    /// Where in the request body, e.g. `messages[1].content` or `input[0]`.
    pub location: String,
    /// What the guard did about it.
    pub action: GuardAction,
    /// How many separate matches the rule had there (for `prompt_injection`: signals).
    pub matches: usize,
    /// The `prompt_injection` score, in `[0, 1]`; `None` for other rules.
    pub score: Option<f32>,
}

/// Scores are never NaN, so equality is total.
impl Eq for GuardHit {}

impl GuardHit {
    /// A hit without a score.
    pub fn new(
        guard: Arc<str>,
        rule: GuardRule,
        location: String,
        action: GuardAction,
        matches: usize,
    ) -> GuardHit {
        GuardHit {
            guard,
            rule,
            location,
            action,
            matches,
            score: None,
        }
    }
}

impl fmt::Display for GuardHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guard '{}': {} in {} ({}, {} match{}",
            self.guard,
            self.rule,
            self.location,
            self.action.as_str(),
            self.matches,
            if self.matches == 1 { "" } else { "es" }
        )?;
        if let Some(score) = self.score {
            write!(f, ", score {score:.2}")?;
        }
        f.write_str(")")
    }
}

/// The hits of one request as one line for dynamic metadata and the access log:
/// `<guard>:<rule>:<action>@<location>`, comma-separated (never the matched text); a hit with
/// a score (`prompt_injection`) ends in `:<score>` with two decimals.
pub fn hits_summary(hits: &[GuardHit]) -> String {
    let mut out = String::new();
    for (i, hit) in hits.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{}:{}:{}@{}",
            hit.guard,
            hit.rule,
            hit.action.as_str(),
            hit.location
        ));
        if let Some(score) = hit.score {
            out.push_str(&format!(":{score:.2}"));
        }
    }
    out
}

/// The outcome of the request guards for one request.
#[derive(Debug)]
pub enum GuardVerdict {
    /// Send it on. Masks, if any, have been applied to the body.
    Forward { hits: Vec<GuardHit> },
    /// Refuse it with `reply`. `hits` ends with the hit that refused it, when there is one.
    Reject {
        reply: LocalReply,
        hits: Vec<GuardHit>,
    },
}

/// A guard that cannot be compiled (unreachable on a validated config: validation compiles
/// the same guards).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("guard '{guard}': {message}")]
    Compile { guard: String, message: String },
}

/// Compiles an operator's regex (Rust `regex` syntax) as guards use it. The error is a
/// message for the config issue at the pattern's path.
pub(crate) fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    let regex = RegexBuilder::new(pattern).build().map_err(|e| match e {
        regex::Error::Syntax(text) => format!(
            "'{pattern}' is not a valid regex: {}",
            describe_syntax_error(&text)
        ),
        regex::Error::CompiledTooBig(limit) => {
            format!("'{pattern}' compiles to more than {limit} bytes: simplify it")
        }
        other => format!("'{pattern}' is not a valid regex: {other}"),
    })?;
    if regex.is_match("") {
        return Err(format!(
            "'{pattern}' matches the empty string, so it would match every prompt"
        ));
    }
    Ok(regex)
}

/// Compiles one of a guard's `allow` regexes: it must match a hit's text entirely, so it is
/// anchored at both ends. The error is a message for the config issue at the regex's path.
pub(crate) fn compile_allow(pattern: &str) -> Result<Regex, String> {
    // Checked as written, so that errors point into what the operator wrote.
    let plain = compile_pattern(pattern).map_err(|message| {
        if message.ends_with("so it would match every prompt") {
            format!("'{pattern}' matches the empty string, so it would allow too much")
        } else {
            message
        }
    })?;
    drop(plain);
    RegexBuilder::new(&format!(r"\A(?:{pattern})\z"))
        .build()
        .map_err(|e| format!("'{pattern}' is not a valid regex: {e}"))
}

/// The regex crate's syntax errors span several lines (the pattern, a caret line, the
/// message); config issues are one line each.
fn describe_syntax_error(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(message) = lines
        .iter()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("error: "))
    else {
        return lines.join(" ");
    };
    let column = lines
        .iter()
        .find(|l| l.trim_start().starts_with('^'))
        .and_then(|carets| carets.find('^'))
        .and_then(|at| at.checked_sub(4));
    match column {
        Some(at) if lines.len() == 4 => format!("{message} (at character {})", at + 1),
        _ => message.to_string(),
    }
}

/// One regex of a guard, with what it stands for and what replaces its matches.
struct Rule {
    label: GuardRule,
    regex: Regex,
    /// Built-in detectors match their candidate in capture group 1 and check it; operator
    /// patterns are taken as they match.
    check: Option<Check>,
    mask: Arc<str>,
}

impl Rule {
    /// Every accepted match of this rule in `text`.
    fn find_all(&self, text: &str, out: &mut Vec<Range<usize>>) {
        let mut groups = self.regex.capture_locations();
        let mut at = 0;
        while at <= text.len() {
            let (start, accepted) = match self.check {
                None => match self.regex.find_at(text, at) {
                    Some(m) => (m.start(), Some(m.range())),
                    None => break,
                },
                Some(check) => match self.regex.captures_read_at(&mut groups, text, at) {
                    Some(whole) => {
                        let body = groups.get(1).map_or(whole.range(), |(s, e)| s..e);
                        (whole.start(), check(text, body))
                    }
                    None => break,
                },
            };
            match accepted {
                Some(range) if !range.is_empty() => {
                    at = range.end;
                    out.push(range);
                }
                // Not a hit (or an empty match): look again one character further on.
                _ => match text[start..].chars().next() {
                    Some(c) => at = start + c.len_utf8(),
                    None => break,
                },
            }
        }
    }
}

/// A guard's `prompt_injection` rule.
struct InjectionRule {
    engine: &'static injection::Engine,
    threshold: f32,
    mask: Arc<str>,
}

/// One compiled request guard.
pub struct RequestGuard {
    name: Arc<str>,
    action: GuardAction,
    /// What it scans.
    scopes: ScopeSet,
    rules: Vec<Rule>,
    /// Every rule's regex, to learn in one pass which rules can match a text at all.
    set: RegexSet,
    /// The `allow` regexes, anchored: a match whose text one of them matches is not a hit.
    allow: Option<RegexSet>,
    injection: Option<InjectionRule>,
    /// Its index in `guards.request` (for `when` selection).
    index: usize,
    when: Option<Program>,
}

impl fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rules: Vec<String> = self.rules.iter().map(|r| r.label.to_string()).collect();
        rules.dedup();
        if self.injection.is_some() {
            rules.push(Detector::PromptInjection.to_string());
        }
        f.debug_struct("RequestGuard")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("scopes", &self.scopes)
            .field("rules", &rules)
            .field("allow", &self.allow.as_ref().map_or(0, RegexSet::len))
            .field(
                "injection_threshold",
                &self.injection.as_ref().map(|i| i.threshold),
            )
            .field("when", &self.when.is_some())
            .finish()
    }
}

impl RequestGuard {
    pub fn compile(section: &RequestGuardSection) -> Result<RequestGuard, GuardError> {
        RequestGuard::compile_at(0, section)
    }

    /// Compiles guard `index` of `guards.request` (one without a webhook).
    fn compile_at(index: usize, section: &RequestGuardSection) -> Result<RequestGuard, GuardError> {
        let name = section.name.value.as_str();
        let error = |message: String| GuardError::Compile {
            guard: name.to_string(),
            message,
        };
        let when = compile_when(section).map_err(error)?;
        let scopes = compile_scopes(section).map_err(error)?;
        let mask_for = |rule: GuardRule| -> Arc<str> {
            match &section.mask_with {
                Some(text) => Arc::from(text.value.as_str()),
                None => Arc::from(format!("[REDACTED:{}]", rule.mask_label())),
            }
        };
        let mut rules = Vec::new();
        let mut sources: Vec<&str> = Vec::new();
        let mut injection = None;
        for detector in distinct_detectors(&section.detectors).map_err(error)? {
            let label = GuardRule::Detector(detector);
            let mask = mask_for(label);
            if detector == Detector::PromptInjection {
                let engine = injection::engine().map_err(|e| {
                    error(format!(
                        "the prompt_injection heuristics do not compile: {e}"
                    ))
                })?;
                let threshold = section
                    .injection_threshold
                    .as_ref()
                    .map_or(DEFAULT_INJECTION_THRESHOLD, |t| t.value as f32);
                injection = Some(InjectionRule {
                    engine,
                    threshold,
                    mask,
                });
                continue;
            }
            for rule in detector.rules() {
                let regex = Regex::new(rule.pattern).map_err(|e| error(e.to_string()))?;
                sources.push(rule.pattern);
                rules.push(Rule {
                    label,
                    regex,
                    check: Some(rule.check),
                    mask: mask.clone(),
                });
            }
        }
        for (index, pattern) in section.patterns.iter().enumerate() {
            let regex = compile_pattern(&pattern.value)
                .map_err(|message| error(format!("patterns[{index}]: {message}")))?;
            sources.push(&pattern.value);
            let label = GuardRule::Pattern(index);
            rules.push(Rule {
                label,
                regex,
                check: None,
                mask: mask_for(label),
            });
        }
        if rules.is_empty() && injection.is_none() {
            return Err(error("detects nothing".into()));
        }
        let set = RegexSetBuilder::new(sources).build().map_err(|e| {
            error(format!(
                "its detectors and patterns together are too large to compile: {e}"
            ))
        })?;
        let mut anchored = Vec::new();
        for (index, pattern) in section.allow.iter().enumerate() {
            let regex = compile_allow(&pattern.value)
                .map_err(|message| error(format!("allow[{index}]: {message}")))?;
            anchored.push(regex.as_str().to_string());
        }
        let allow = if anchored.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(anchored)
                    .build()
                    .map_err(|e| error(format!("its allow list is too large to compile: {e}")))?,
            )
        };
        Ok(RequestGuard {
            name: Arc::from(name),
            action: section.action,
            scopes,
            rules,
            set,
            allow,
            injection,
            index,
            when,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn action(&self) -> GuardAction {
        self.action
    }

    /// What this guard scans.
    pub fn scopes(&self) -> ScopeSet {
        self.scopes
    }

    /// The `prompt_injection` threshold, when the guard uses that detector.
    pub fn injection_threshold(&self) -> Option<f32> {
        self.injection.as_ref().map(|i| i.threshold)
    }

    /// Whether `allow` lets `text[range]` through.
    fn allowed(&self, text: &str, range: &Range<usize>) -> bool {
        self.allow
            .as_ref()
            .is_some_and(|allow| allow.is_match(&text[range.clone()]))
    }

    /// Every hit of this guard's regex rules in `text`, as (rule index, byte range).
    fn scan(&self, text: &str, found: &mut Vec<(usize, Range<usize>)>) {
        let candidates = self.set.matches(text);
        if !candidates.matched_any() {
            return;
        }
        let mut ranges = Vec::new();
        for index in candidates.iter() {
            ranges.clear();
            self.rules[index].find_all(text, &mut ranges);
            found.extend(
                ranges
                    .drain(..)
                    .filter(|range| !self.allowed(text, range))
                    .map(|range| (index, range)),
            );
        }
    }
}

/// A request guard's `scopes` (all of them when it lists none).
fn compile_scopes(section: &RequestGuardSection) -> Result<ScopeSet, String> {
    let Some(names) = &section.scopes else {
        return Ok(ScopeSet::ALL);
    };
    let mut scopes = ScopeSet::NONE;
    for entry in names {
        let scope = GuardScope::from_name(&entry.value).ok_or_else(|| {
            format!(
                "unknown scope '{}' (valid scopes: {})",
                entry.value,
                GuardScope::names()
            )
        })?;
        scopes = scopes.with(scope);
    }
    if scopes.is_empty() {
        return Err("scans nothing: its scopes are empty".into());
    }
    Ok(scopes)
}

/// A guard's `when` condition, compiled.
fn compile_when(section: &RequestGuardSection) -> Result<Option<Program>, String> {
    section
        .when
        .as_ref()
        .map(|when| {
            crate::routing::compile_condition(&when.value).map_err(|e| format!("when: {e}"))
        })
        .transpose()
}

/// A guard's detectors, each once, in the order listed; the error names an unknown one.
pub(crate) fn distinct_detectors(
    entries: &[serde_saphyr::Spanned<String>],
) -> Result<Vec<Detector>, String> {
    let mut detectors = Vec::with_capacity(entries.len());
    for entry in entries {
        let detector = Detector::from_name(&entry.value).ok_or_else(|| {
            format!(
                "unknown detector '{}' (valid detectors: {})",
                entry.value,
                Detector::names()
            )
        })?;
        if !detectors.contains(&detector) {
            detectors.push(detector);
        }
    }
    Ok(detectors)
}

/// The compiled `guards` section.
#[derive(Debug, Default)]
pub struct GuardPolicy {
    /// Built-in (detector and pattern) request guards, in config order.
    request: Vec<RequestGuard>,
    /// Webhook request guards, in config order (they run after the built-in ones).
    webhooks: Vec<WebhookGuard>,
    /// Guards over providers' replies.
    response: response::ResponseGuards,
    /// Every scope some built-in request guard scans.
    scopes: ScopeSet,
    /// What the guards' `when` conditions read.
    condition_uses: VariableUse,
    /// Whether some guard has a `when` condition.
    conditional: bool,
    /// Set when the section could not be compiled: guarded requests are then refused rather
    /// than forwarded unchecked.
    unavailable: Option<String>,
}

/// Which request guards a request's `when` conditions turned off (by index in
/// `guards.request`); nothing is off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardSelection {
    off: Vec<bool>,
    /// The same for `guards.response`.
    response_off: Vec<bool>,
}

impl GuardSelection {
    /// Every guard runs.
    pub fn all() -> GuardSelection {
        GuardSelection::default()
    }

    /// Whether guard `index` of `guards.request` runs.
    pub fn runs(&self, index: usize) -> bool {
        !self.off.get(index).copied().unwrap_or(false)
    }

    /// Whether guard `index` of `guards.response` runs on the reply.
    pub fn runs_response(&self, index: usize) -> bool {
        !self.response_off.get(index).copied().unwrap_or(false)
    }

    /// Whether every response guard runs.
    pub fn all_responses(&self) -> bool {
        !self.response_off.iter().any(|off| *off)
    }
}

impl GuardPolicy {
    /// Compiles the section; `env` reads the webhooks' token variables.
    pub fn compile(
        section: &GuardsSection,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GuardPolicy, GuardError> {
        let mut request = Vec::new();
        let mut webhooks = Vec::new();
        let mut condition_uses = VariableUse::default();
        for (index, guard) in section.request.iter().enumerate() {
            if guard.webhook.is_some() {
                let error = |message: String| GuardError::Compile {
                    guard: guard.name.value.clone(),
                    message,
                };
                let when = compile_when(guard).map_err(error)?;
                let scopes = compile_scopes(guard).map_err(error)?;
                if let Some(when) = &when {
                    condition_uses.add(when);
                }
                webhooks.extend(WebhookGuard::compile(index, guard, scopes, when, env));
            } else {
                let compiled = RequestGuard::compile_at(index, guard)?;
                if let Some(when) = &compiled.when {
                    condition_uses.add(when);
                }
                request.push(compiled);
            }
        }
        let scopes = request
            .iter()
            .fold(ScopeSet::NONE, |all, guard| all.union(guard.scopes));
        let response = response::ResponseGuards::compile(&section.response)?;
        for (_, _, when) in response.conditions() {
            condition_uses.add(when);
        }
        let conditional = request.iter().any(|g| g.when.is_some())
            || webhooks.iter().any(|g| g.when.is_some())
            || response.conditions().next().is_some();
        Ok(GuardPolicy {
            request,
            webhooks,
            response,
            scopes,
            condition_uses,
            conditional,
            unavailable: None,
        })
    }

    /// What the guards' `when` conditions read.
    pub fn condition_uses(&self) -> VariableUse {
        self.condition_uses
    }

    /// The webhook guards, in config order.
    pub fn webhook_guards(&self) -> &[WebhookGuard] {
        &self.webhooks
    }

    /// Which request guards run for this request: those without `when`, and those whose
    /// `when` holds. `model` is the alias the request is routed to.
    pub fn select(
        &self,
        api: LlmApi,
        model: &str,
        body: &RawObject,
        request: &RequestContext<'_>,
    ) -> GuardSelection {
        if !self.conditional {
            return GuardSelection::all();
        }
        let context = condition_context(self.condition_uses, api, model, body, request);
        let conditions = self
            .request
            .iter()
            .map(|g| (g.index, &g.name, &g.when))
            .chain(self.webhooks.iter().map(|g| (g.index, &g.name, &g.when)));
        let mut off = Vec::new();
        for (index, name, when) in conditions {
            let Some(when) = when else { continue };
            let what = format_args!("guard '{name}' when");
            if !holds(when, &context, &what) {
                if off.len() <= index {
                    off.resize(index + 1, false);
                }
                off[index] = true;
                tracing::debug!(guard = %name, "guard skipped: its when condition does not hold");
            }
        }
        let mut response_off = Vec::new();
        for (index, name, when) in self.response.conditions() {
            let what = format_args!("response guard '{name}' when");
            if !holds(when, &context, &what) {
                if response_off.len() <= index {
                    response_off.resize(index + 1, false);
                }
                response_off[index] = true;
                tracing::debug!(guard = %name, "response guard skipped: its when condition does not hold");
            }
        }
        GuardSelection { off, response_off }
    }

    /// The longest the selected webhook guards can take (every call at its timeout), or
    /// `None` when none of them runs.
    pub fn webhook_budget(&self, selection: &GuardSelection) -> Option<std::time::Duration> {
        let mut selected = self
            .webhooks
            .iter()
            .filter(|g| selection.runs(g.index))
            .peekable();
        selected.peek()?;
        Some(selected.map(WebhookGuard::timeout).sum())
    }

    /// The webhook guards' pass over a planned request (`body` is what would go upstream),
    /// or `None` when no selected webhook guard applies.
    pub fn webhook_run(
        &self,
        api: LlmApi,
        model: &str,
        caller: &crate::governance::Caller,
        body: &[u8],
        selection: &GuardSelection,
    ) -> Option<WebhookRun<'_>> {
        let guards: Vec<&WebhookGuard> = self
            .webhooks
            .iter()
            .filter(|g| selection.runs(g.index))
            .collect();
        WebhookRun::new(guards, api, model, caller, body)
    }

    /// A policy that refuses every LLM request: for a section that failed to compile.
    pub fn refusing(reason: String) -> GuardPolicy {
        GuardPolicy {
            unavailable: Some(reason),
            ..GuardPolicy::default()
        }
    }

    /// The guards over providers' replies (empty without `guards.response`).
    pub fn response_guards(&self) -> &response::ResponseGuards {
        &self.response
    }

    /// Whether requests need [`GuardPolicy::check_request`] at all.
    /// Whether some built-in request guard scans texts in `scope` (and the guards can run).
    pub fn scans(&self, scope: GuardScope) -> bool {
        self.unavailable.is_some() || self.scopes.contains(scope)
    }

    pub fn has_request_guards(&self) -> bool {
        !self.request.is_empty() || self.unavailable.is_some()
    }

    /// Whether requests need [`GuardPolicy::select`] (some guard has a `when`).
    pub fn is_conditional(&self) -> bool {
        self.conditional
    }

    /// The built-in request guards, in the order they apply.
    pub fn request_guards(&self) -> &[RequestGuard] {
        &self.request
    }

    /// Runs the request guards over the prompt text of `body` (an `api` request), in config
    /// order, each over the texts in its scopes. A rejecting hit anywhere refuses the request;
    /// masks of every guard are applied together (overlapping matches merge into one mask) and
    /// the changed prompt field is set back into `body`; other fields are left as the client
    /// sent them. Guards `selection` turned off are skipped.
    pub fn check_request(
        &self,
        api: LlmApi,
        body: &mut RawObject,
        selection: &GuardSelection,
    ) -> GuardVerdict {
        if let Some(reason) = &self.unavailable {
            tracing::error!(%reason, "request guards are unavailable; request refused");
            return GuardVerdict::Reject {
                reply: LocalReply::openai_error(
                    503,
                    "service_unavailable",
                    GUARD_UNAVAILABLE,
                    None,
                    "the gateway's request guards are unavailable; see its logs",
                ),
                hits: Vec::new(),
            };
        }
        // Without `when` conditions every guard runs: no per-request work here.
        let scopes = if selection.off.is_empty() {
            self.scopes
        } else {
            self.request
                .iter()
                .filter(|g| selection.runs(g.index))
                .fold(ScopeSet::NONE, |all, guard| all.union(guard.scopes))
        };
        if scopes.is_empty() {
            return GuardVerdict::Forward { hits: Vec::new() };
        }
        let mut scan = Scan {
            guards: &self.request,
            selection,
            hits: Vec::new(),
            rejected: None,
            found: Vec::new(),
            location: None,
            location_hits: 0,
        };
        let read = prompt::visit(body, api, scopes, &mut |location, scope, text| {
            scan.text(location, scope, text)
        });
        for hit in &scan.hits {
            log_hit(hit);
        }
        if let Err(error) = read {
            let field = prompt::field(api);
            tracing::info!(field, %error, "request guards cannot read the prompt; request refused");
            return GuardVerdict::Reject {
                reply: LocalReply::openai_error(
                    400,
                    "invalid_request_error",
                    GUARD_REJECTED,
                    Some(field),
                    format!("request blocked: the request guards cannot read '{field}'"),
                ),
                hits: scan.hits,
            };
        }
        match scan.rejected {
            Some(index) => GuardVerdict::Reject {
                reply: rejection(&scan.hits[index]),
                hits: scan.hits,
            },
            None => GuardVerdict::Forward { hits: scan.hits },
        }
    }
}

/// What the request guards made of texts outside an LLM request ([`GuardPolicy::check_texts`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TextsVerdict {
    /// Pass them on; `masked` says some texts were rewritten in place.
    Forward { hits: Vec<GuardHit>, masked: bool },
    /// Refuse them; the last hit is the one that refused (none: the guards are unavailable).
    Reject { hits: Vec<GuardHit> },
}

impl GuardPolicy {
    /// Runs the request guards whose scopes include `scope` over `texts` (e.g. the strings of an
    /// MCP tool call's arguments, or the text of its result), as `<field>[i]`. Masks rewrite
    /// `texts` in place. Guards' `when` conditions read LLM requests and are not evaluated
    /// here: every guard for the scope runs. Webhook guards do not run here.
    pub fn check_texts(
        &self,
        scope: GuardScope,
        field: &'static str,
        texts: &mut [String],
    ) -> TextsVerdict {
        if let Some(reason) = &self.unavailable {
            tracing::error!(%reason, "request guards are unavailable; MCP message refused");
            return TextsVerdict::Reject { hits: Vec::new() };
        }
        let all = GuardSelection::all();
        if !self.scopes.contains(scope) {
            return TextsVerdict::Forward {
                hits: Vec::new(),
                masked: false,
            };
        }
        let mut scan = Scan {
            guards: &self.request,
            selection: &all,
            hits: Vec::new(),
            rejected: None,
            found: Vec::new(),
            location: None,
            location_hits: 0,
        };
        let mut masked = false;
        for (i, text) in texts.iter_mut().enumerate() {
            match scan.text(prompt::Location::Item(field, i), ScopeSet::of(scope), text) {
                Visit::Keep => {}
                Visit::Replace(new) => {
                    *text = new;
                    masked = true;
                }
                Visit::Stop => break,
            }
        }
        for hit in &scan.hits {
            log_hit(hit);
        }
        match scan.rejected {
            Some(_) => TextsVerdict::Reject { hits: scan.hits },
            None => TextsVerdict::Forward {
                hits: scan.hits,
                masked,
            },
        }
    }
}

/// How a refusing hit is described to a client: the guard, the rule and where, never the text.
pub fn describe_rejection(hit: &GuardHit) -> String {
    let what = match hit.rule {
        GuardRule::Detector(detector) => format!("{detector} found"),
        GuardRule::Pattern(index) => format!("patterns[{index}] matched"),
        GuardRule::Webhook | GuardRule::WebhookUnavailable => "its webhook refused it".into(),
    };
    format!(
        "blocked by guard '{}': {what} in {}",
        hit.guard, hit.location
    )
}

pub(super) fn log_hit(hit: &GuardHit) {
    tracing::info!(
        guard = %hit.guard,
        rule = %hit.rule,
        location = %hit.location,
        action = hit.action.as_str(),
        matches = hit.matches,
        score = hit.score,
        "request guard hit"
    );
}

/// The reply to a refused request. It names the guard, the rule and where, never the text;
/// nor a `prompt_injection` score, which would tell a client how close to the threshold it is.
fn rejection(hit: &GuardHit) -> LocalReply {
    LocalReply::openai_error(
        400,
        "invalid_request_error",
        GUARD_REJECTED,
        Some(&hit.location),
        format!("request {}", describe_rejection(hit)),
    )
}

/// The guards' pass over one request.
struct Scan<'g> {
    guards: &'g [RequestGuard],
    /// Guards whose `when` did not hold are skipped.
    selection: &'g GuardSelection,
    hits: Vec<GuardHit>,
    /// The index in `hits` of the hit that refused the request.
    rejected: Option<usize>,
    /// Scratch: one guard's hits in the current text.
    found: Vec<(usize, Range<usize>)>,
    /// The location of the last text, and where its hits start in `hits`: the strings of one
    /// tool call's arguments share a location, and their hits are counted together.
    location: Option<Location>,
    location_hits: usize,
}

impl Scan<'_> {
    fn text(&mut self, location: Location, scope: ScopeSet, text: &str) -> Visit {
        if self.location != Some(location) {
            self.location = Some(location);
            self.location_hits = self.hits.len();
        }
        let mut masks: Vec<(Range<usize>, &Arc<str>)> = Vec::new();
        // Shared by every guard with `prompt_injection` (they share the heuristics).
        let mut analysis: Option<injection::Analysis> = None;
        for guard in self.guards {
            if !guard.scopes.intersects(scope) || !self.selection.runs(guard.index) {
                continue;
            }
            self.found.clear();
            guard.scan(text, &mut self.found);
            // Rules of one detector are adjacent: group the hits by label, in rule order.
            self.found
                .sort_by_key(|(index, range)| (*index, range.start));
            let mut i = 0;
            while i < self.found.len() {
                let label = guard.rules[self.found[i].0].label;
                let mut ranges: Vec<Range<usize>> = Vec::new();
                while i < self.found.len() && guard.rules[self.found[i].0].label == label {
                    let (index, range) = &self.found[i];
                    if guard.action == GuardAction::Mask {
                        masks.push((range.clone(), &guard.rules[*index].mask));
                    }
                    ranges.push(range.clone());
                    i += 1;
                }
                let matches = merge(&mut ranges).len();
                if self.record(guard, label, location, matches, None) {
                    return Visit::Stop;
                }
            }
            let Some(rule) = &guard.injection else {
                continue;
            };
            let analysis = analysis.get_or_insert_with(|| rule.engine.analyse(text));
            let keep = |signal: &injection::Signal| !guard.allowed(text, &signal.span);
            let score = analysis.score(keep);
            if score < rule.threshold {
                continue;
            }
            let mut ranges: Vec<Range<usize>> = analysis
                .signals
                .iter()
                .filter(|s| keep(s) && !s.span.is_empty())
                .map(|s| s.span.clone())
                .collect();
            let matches = merge(&mut ranges).len();
            if guard.action == GuardAction::Mask {
                masks.extend(ranges.iter().map(|range| (range.clone(), &rule.mask)));
            }
            let label = GuardRule::Detector(Detector::PromptInjection);
            if self.record(guard, label, location, matches, Some(score)) {
                return Visit::Stop;
            }
        }
        if masks.is_empty() {
            Visit::Keep
        } else {
            Visit::Replace(apply_masks(text, masks))
        }
    }

    /// Records a hit (adding to an earlier one of the same guard and rule at the same
    /// location); true when it refuses the request.
    fn record(
        &mut self,
        guard: &RequestGuard,
        rule: GuardRule,
        location: Location,
        matches: usize,
        score: Option<f32>,
    ) -> bool {
        let earlier = self.hits[self.location_hits..]
            .iter()
            .position(|h| Arc::ptr_eq(&h.guard, &guard.name) && h.rule == rule)
            .map(|i| self.location_hits + i);
        let index = match earlier {
            Some(index) => {
                let hit = &mut self.hits[index];
                hit.matches += matches;
                hit.score = match (hit.score, score) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                index
            }
            None => {
                self.hits.push(GuardHit {
                    guard: guard.name.clone(),
                    rule,
                    location: location.to_string(),
                    action: guard.action,
                    matches,
                    score,
                });
                self.hits.len() - 1
            }
        };
        if guard.action == GuardAction::Reject {
            self.rejected = Some(index);
            return true;
        }
        false
    }
}

/// Sorts `ranges` and merges overlapping ones.
fn merge(ranges: &mut Vec<Range<usize>>) -> &[Range<usize>] {
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if range.start < last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    *ranges = merged;
    ranges
}

/// `text` with each masked range replaced. Overlapping ranges become one, replaced by the
/// mask text of the one that starts first (of the earlier guard when they start together).
fn apply_masks(text: &str, mut masks: Vec<(Range<usize>, &Arc<str>)>) -> String {
    masks.sort_by_key(|(range, _)| range.start); // stable: config order breaks ties
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut current: Option<(Range<usize>, &Arc<str>)> = None;
    for (range, mask) in masks {
        match &mut current {
            Some((open, _)) if range.start < open.end => open.end = open.end.max(range.end),
            _ => {
                if let Some((open, text_of)) = current.take() {
                    out.push_str(&text[copied..open.start]);
                    out.push_str(text_of);
                    copied = open.end;
                }
                current = Some((range, mask));
            }
        }
    }
    if let Some((open, text_of)) = current {
        out.push_str(&text[copied..open.start]);
        out.push_str(text_of);
        copied = open.end;
    }
    out.push_str(&text[copied..]);
    out
}

/// What one detector finds in `text` (merged ranges), for tests.
#[cfg(test)]
pub(crate) fn scan_with(detector: Detector, text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    for rule in detector.rules() {
        let compiled = Rule {
            label: GuardRule::Detector(detector),
            regex: Regex::new(rule.pattern).expect("built-in patterns compile"),
            check: Some(rule.check),
            mask: Arc::from(""),
        };
        compiled.find_all(text, &mut ranges);
    }
    merge(&mut ranges).to_vec()
}
