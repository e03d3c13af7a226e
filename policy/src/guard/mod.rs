//! Request guards: built-in detectors (PII, secrets) and operator regexes run over the prompt
//! text of LLM requests, which then reject, mask or log what they find.
//!
//! Guards are compiled once into the [`Snapshot`](crate::Snapshot) ([`GuardPolicy`]);
//! [`plan_forward`](crate::plan_forward) runs them, so every adapter gets them for free. Only
//! prompt text is scanned (see [`prompt`]), each text once per guard: a [`RegexSet`] of all of a
//! guard's rules says which of them can match at all, and only those are run for positions.
//! A hit ([`GuardHit`]) records where it was and what it was, never the matched text.

mod detectors;
mod prompt;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

pub use detectors::Detector;
pub use prompt::Location;

use crate::config::{GuardAction, GuardsSection, RequestGuardSection};
use crate::json_object::RawObject;
use crate::openai_api::{LlmApi, LocalReply};
use detectors::Check;
use prompt::Visit;

/// `code` (and `LocalReply::details`) of a request a guard refused.
pub const GUARD_REJECTED: &str = "guard_rejected";
/// `code` of a request refused because the guards could not be compiled.
pub const GUARD_UNAVAILABLE: &str = "guard_unavailable";

/// What matched: a built-in detector, or one of the guard's `patterns` (by index, so that
/// the regex itself, which may name what it protects, is never shown to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardRule {
    Detector(Detector),
    Pattern(usize),
}

impl GuardRule {
    /// The label of the default mask text, `[REDACTED:<label>]`.
    fn mask_label(self) -> &'static str {
        match self {
            GuardRule::Detector(detector) => detector.name(),
            GuardRule::Pattern(_) => "pattern",
        }
    }
}

impl fmt::Display for GuardRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardRule::Detector(detector) => f.write_str(detector.name()),
            GuardRule::Pattern(index) => write!(f, "patterns[{index}]"),
        }
    }
}

/// One guard rule that found something in one prompt text. Holds no matched text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardHit {
    /// The guard's `name`.
    pub guard: Arc<str>,
    pub rule: GuardRule,
    /// Where in the request body, e.g. `messages[1].content` or `input[0]`.
    pub location: String,
    /// What the guard did about it.
    pub action: GuardAction,
    /// How many separate matches the rule had there.
    pub matches: usize,
}

impl fmt::Display for GuardHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guard '{}': {} in {} ({}, {} match{})",
            self.guard,
            self.rule,
            self.location,
            self.action.as_str(),
            self.matches,
            if self.matches == 1 { "" } else { "es" }
        )
    }
}

/// The hits of one request as one line for dynamic metadata and the access log:
/// `<guard>:<rule>:<action>@<location>`, comma-separated (never the matched text).
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

/// One compiled request guard.
pub struct RequestGuard {
    name: Arc<str>,
    action: GuardAction,
    rules: Vec<Rule>,
    /// Every rule's regex, to learn in one pass which rules can match a text at all.
    set: RegexSet,
}

impl fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rules: Vec<String> = self.rules.iter().map(|r| r.label.to_string()).collect();
        rules.dedup();
        f.debug_struct("RequestGuard")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("rules", &rules)
            .finish()
    }
}

impl RequestGuard {
    pub fn compile(section: &RequestGuardSection) -> Result<RequestGuard, GuardError> {
        let name = section.name.value.as_str();
        let error = |message: String| GuardError::Compile {
            guard: name.to_string(),
            message,
        };
        let mask_for = |rule: GuardRule| -> Arc<str> {
            match &section.mask_with {
                Some(text) => Arc::from(text.value.as_str()),
                None => Arc::from(format!("[REDACTED:{}]", rule.mask_label())),
            }
        };
        let mut rules = Vec::new();
        let mut sources: Vec<&str> = Vec::new();
        let mut seen = Vec::new();
        for entry in &section.detectors {
            let detector = Detector::from_name(&entry.value).ok_or_else(|| {
                error(format!(
                    "unknown detector '{}' (valid detectors: {})",
                    entry.value,
                    Detector::names()
                ))
            })?;
            if seen.contains(&detector) {
                continue;
            }
            seen.push(detector);
            let label = GuardRule::Detector(detector);
            let mask = mask_for(label);
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
        if rules.is_empty() {
            return Err(error("detects nothing".into()));
        }
        let set = RegexSetBuilder::new(sources).build().map_err(|e| {
            error(format!(
                "its detectors and patterns together are too large to compile: {e}"
            ))
        })?;
        Ok(RequestGuard {
            name: Arc::from(name),
            action: section.action,
            rules,
            set,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn action(&self) -> GuardAction {
        self.action
    }

    /// Every hit of this guard in `text`, as (rule index, byte range).
    fn scan(&self, text: &str, found: &mut Vec<(usize, Range<usize>)>) {
        let candidates = self.set.matches(text);
        if !candidates.matched_any() {
            return;
        }
        let mut ranges = Vec::new();
        for index in candidates.iter() {
            ranges.clear();
            self.rules[index].find_all(text, &mut ranges);
            found.extend(ranges.drain(..).map(|range| (index, range)));
        }
    }
}

/// The compiled `guards` section.
#[derive(Debug, Default)]
pub struct GuardPolicy {
    request: Vec<RequestGuard>,
    /// Set when the section could not be compiled: guarded requests are then refused rather
    /// than forwarded unchecked.
    unavailable: Option<String>,
}

impl GuardPolicy {
    pub fn compile(section: &GuardsSection) -> Result<GuardPolicy, GuardError> {
        let request = section
            .request
            .iter()
            .map(RequestGuard::compile)
            .collect::<Result<_, _>>()?;
        Ok(GuardPolicy {
            request,
            unavailable: None,
        })
    }

    /// A policy that refuses every LLM request: for a section that failed to compile.
    pub fn refusing(reason: String) -> GuardPolicy {
        GuardPolicy {
            request: Vec::new(),
            unavailable: Some(reason),
        }
    }

    /// Whether requests need [`GuardPolicy::check_request`] at all.
    pub fn has_request_guards(&self) -> bool {
        !self.request.is_empty() || self.unavailable.is_some()
    }

    /// The request guards, in the order they apply.
    pub fn request_guards(&self) -> &[RequestGuard] {
        &self.request
    }

    /// Runs the request guards over the prompt text of `body` (an `api` request), in config
    /// order. A rejecting hit anywhere refuses the request; masks of every guard are applied
    /// together (overlapping matches merge into one mask) and the changed prompt field is set
    /// back into `body`; other fields are left as the client sent them.
    pub fn check_request(&self, api: LlmApi, body: &mut RawObject) -> GuardVerdict {
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
        let mut scan = Scan {
            guards: &self.request,
            hits: Vec::new(),
            rejected: None,
            found: Vec::new(),
        };
        let read = prompt::visit(body, api, &mut |location, text| scan.text(location, text));
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
            Some(hit) => GuardVerdict::Reject {
                reply: rejection(&hit),
                hits: scan.hits,
            },
            None => GuardVerdict::Forward { hits: scan.hits },
        }
    }
}

fn rejection(hit: &GuardHit) -> LocalReply {
    let what = match hit.rule {
        GuardRule::Detector(detector) => format!("{detector} found"),
        GuardRule::Pattern(index) => format!("patterns[{index}] matched"),
    };
    LocalReply::openai_error(
        400,
        "invalid_request_error",
        GUARD_REJECTED,
        Some(&hit.location),
        format!(
            "request blocked by guard '{}': {what} in {}",
            hit.guard, hit.location
        ),
    )
}

/// The guards' pass over one request.
struct Scan<'g> {
    guards: &'g [RequestGuard],
    hits: Vec<GuardHit>,
    rejected: Option<GuardHit>,
    /// Scratch: one guard's hits in the current text.
    found: Vec<(usize, Range<usize>)>,
}

impl Scan<'_> {
    fn text(&mut self, location: Location, text: &str) -> Visit {
        let mut masks: Vec<(Range<usize>, &Arc<str>)> = Vec::new();
        let mut location_text: Option<String> = None;
        for guard in self.guards {
            self.found.clear();
            guard.scan(text, &mut self.found);
            if self.found.is_empty() {
                continue;
            }
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
                let hit = GuardHit {
                    guard: guard.name.clone(),
                    rule: label,
                    location: location_text
                        .get_or_insert_with(|| location.to_string())
                        .clone(),
                    action: guard.action,
                    matches: merge(&mut ranges).len(),
                };
                tracing::info!(
                    guard = %hit.guard,
                    rule = %hit.rule,
                    location = %hit.location,
                    action = hit.action.as_str(),
                    matches = hit.matches,
                    "request guard hit"
                );
                self.hits.push(hit.clone());
                if guard.action == GuardAction::Reject {
                    self.rejected = Some(hit);
                    return Visit::Stop;
                }
            }
        }
        if masks.is_empty() {
            Visit::Keep
        } else {
            Visit::Replace(apply_masks(text, masks))
        }
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
