//! Response guards: the request guards' detectors and operator regexes run over what the
//! provider answers, for JSON replies ([`ResponseGuards::check_json`]) and SSE streams
//! ([`ResponseGuardStream`]).
//!
//! What is scanned is the assistant's text:
//!
//! | reply | text |
//! |---|---|
//! | chat, JSON | `choices[i].message.content` (a string, or the `text`/`refusal` of each part of an array), `.refusal`, `.tool_calls[j].function.arguments`, `.function_call.arguments` |
//! | chat, stream | the same fields of `choices[i].delta`, each one text per choice `index` (and per tool call `index`), joined across events |
//! | completions | `choices[i].text` |
//! | embeddings | nothing |
//!
//! Fields are found by shape, whichever API the reply claims to answer (translated replies
//! scan the same). Each text is scanned the way request guards scan prompts: guards in config
//! order, a `reject` hit refuses, `mask` ranges of all guards merge where they overlap.
//!
//! A refused JSON reply becomes a **502** with an OpenAI error object
//! (`type: upstream_error`, `code: response_guard_rejected`, `param: null`) and
//! `x-should-retry: false`, which tells the OpenAI SDKs not to retry it (they retry 5xx
//! otherwise, and a retry would only pay for another answer). A refused stream ends with the
//! same error object as an event, then `[DONE]` (see [`ResponseGuardStream`]). Messages name
//! the guard, the detector (or `patterns[i]`) and the field, never the matched text.

mod json;
mod rule;
mod scanner;
mod stream;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use regex::{Regex, RegexSet, RegexSetBuilder};

pub use stream::{GuardedChunk, ResponseGuardStream, StreamRejection};

use cel::Program;

use super::{
    compile_pattern, distinct_detectors, Detector, GuardError, GuardHit, GuardRule, GuardSelection,
};
use crate::config::response_guards::ResponseGuardSection;
use crate::config::GuardAction;
use crate::openai_api::{LlmApi, LocalReply};
use rule::CompiledRule;

/// `code` (and `LocalReply::details`) of a provider answer a response guard refused.
pub const RESPONSE_GUARD_REJECTED: &str = "response_guard_rejected";
/// HTTP status of a refused JSON reply: the gateway will not pass on what the upstream said.
pub const RESPONSE_REJECTED_STATUS: u16 = 502;
/// `type` of the error object of a refused answer (JSON reply or stream event).
pub const RESPONSE_REJECTED_TYPE: &str = "upstream_error";

/// The outcome of the response guards for one JSON reply.
#[derive(Debug)]
pub enum ResponseVerdict {
    /// Pass the reply on as it is (no hit, or only `log` hits).
    Unchanged { hits: Vec<GuardHit> },
    /// Pass `body` on instead: the masked fields rewritten, every other field kept (byte for
    /// byte when the reply has no repeated keys).
    Masked { body: Vec<u8>, hits: Vec<GuardHit> },
    /// Answer the client with `reply` instead. `hits` ends with the hit that refused it.
    Rejected {
        reply: LocalReply,
        hits: Vec<GuardHit>,
    },
}

impl ResponseVerdict {
    pub fn hits(&self) -> &[GuardHit] {
        match self {
            ResponseVerdict::Unchanged { hits }
            | ResponseVerdict::Masked { hits, .. }
            | ResponseVerdict::Rejected { hits, .. } => hits,
        }
    }
}

/// The compiled `guards.response` list. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ResponseGuards {
    compiled: Arc<Compiled>,
}

#[derive(Default)]
struct Compiled {
    guards: Vec<CompiledGuard>,
    /// The rules of all guards, guard after guard (config order), each detector's rules
    /// together.
    rules: Vec<CompiledRule>,
    /// Scratch (lazy DFA caches) of finished streams, for the next ones: a warm cache has
    /// its states built and their holdback answers memoised. Locked only when a stream
    /// starts or ends.
    pool: Mutex<Vec<scanner::Scratch>>,
}

/// How many idle scratches [`Compiled::pool`] keeps.
const POOLED_SCRATCH: usize = 8;

impl Compiled {
    fn take_scratch(&self) -> scanner::Scratch {
        let pooled = self.pool.lock().ok().and_then(|mut pool| pool.pop());
        pooled.unwrap_or_else(|| scanner::Scratch::new(self.rules.len()))
    }

    fn return_scratch(&self, scratch: scanner::Scratch) {
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < POOLED_SCRATCH {
                pool.push(scratch);
            }
        }
    }
}

struct CompiledGuard {
    name: Arc<str>,
    action: GuardAction,
    /// Its rules in [`Compiled::rules`].
    rules: Range<usize>,
    /// Every rule's regex, to learn in one pass which rules can match a whole text at all.
    set: RegexSet,
    when: Option<Program>,
}

impl fmt::Debug for ResponseGuards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for guard in &self.compiled.guards {
            let mut rules: Vec<String> = self.compiled.rules[guard.rules.clone()]
                .iter()
                .map(|r| r.label.to_string())
                .collect();
            rules.dedup();
            list.entry(&format_args!(
                "{} ({}: {})",
                guard.name,
                guard.action.as_str(),
                rules.join(", ")
            ));
        }
        list.finish()
    }
}

impl ResponseGuards {
    pub fn compile(sections: &[ResponseGuardSection]) -> Result<ResponseGuards, GuardError> {
        let mut compiled = Compiled::default();
        for (index, section) in sections.iter().enumerate() {
            compile_guard(index, section, &mut compiled)?;
        }
        Ok(ResponseGuards {
            compiled: Arc::new(compiled),
        })
    }

    /// Whether there is nothing to run (no response guards configured).
    pub fn is_empty(&self) -> bool {
        self.compiled.guards.is_empty()
    }

    /// The guards' names, in the order they apply.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.compiled.guards.iter().map(|g| &*g.name)
    }

    /// A scanner for one streamed (`text/event-stream`) answer to an `api` request.
    pub fn stream(&self, api: LlmApi) -> ResponseGuardStream {
        ResponseGuardStream::new(self.clone(), api)
    }

    /// [`ResponseGuards::stream`] running only the guards `selection` leaves on.
    pub fn stream_selected(&self, api: LlmApi, selection: &GuardSelection) -> ResponseGuardStream {
        ResponseGuardStream::selected(self.clone(), api, selection)
    }

    /// Each guard's `when` condition, with its index and name.
    pub(super) fn conditions(&self) -> impl Iterator<Item = (usize, &str, &Program)> {
        self.compiled
            .guards
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.when.as_ref().map(|w| (i, &*g.name, w)))
    }
}

/// Why a detector is not available to response guards, if it is not.
pub(crate) fn unavailable_for_responses(detector: Detector) -> Option<&'static str> {
    (detector == Detector::PromptInjection).then_some(
        "prompt_injection scores prompts; it is not available to response guards \
         (it would hold back a whole streamed answer)",
    )
}

fn compile_guard(
    index: usize,
    section: &ResponseGuardSection,
    compiled: &mut Compiled,
) -> Result<(), GuardError> {
    let name = section.name.value.as_str();
    let error = |message: String| GuardError::Compile {
        guard: name.to_string(),
        message,
    };
    let mask_for = |label: &str| -> Arc<str> {
        match &section.mask_with {
            Some(text) => Arc::from(text.value.as_str()),
            None => Arc::from(format!("[REDACTED:{label}]")),
        }
    };
    let first = compiled.rules.len();
    let mut sources: Vec<&str> = Vec::new();
    for detector in distinct_detectors(&section.detectors).map_err(error)? {
        if let Some(why) = unavailable_for_responses(detector) {
            return Err(error(why.to_string()));
        }
        let label = GuardRule::Detector(detector);
        let mask = mask_for(detector.name());
        for rule in detector.rules() {
            let regex = Regex::new(rule.pattern).map_err(|e| error(e.to_string()))?;
            sources.push(rule.pattern);
            compiled.rules.push(
                CompiledRule::new(
                    index,
                    label,
                    rule.pattern,
                    regex,
                    Some(rule.check),
                    mask.clone(),
                )
                .map_err(error)?,
            );
        }
    }
    for (i, pattern) in section.patterns.iter().enumerate() {
        let regex = compile_pattern(&pattern.value)
            .map_err(|message| error(format!("patterns[{i}]: {message}")))?;
        sources.push(&pattern.value);
        compiled.rules.push(
            CompiledRule::new(
                index,
                GuardRule::Pattern(i),
                &pattern.value,
                regex,
                None,
                mask_for("pattern"),
            )
            .map_err(|message| error(format!("patterns[{i}]: {message}")))?,
        );
    }
    if compiled.rules.len() == first {
        return Err(error("detects nothing".into()));
    }
    let set = RegexSetBuilder::new(sources).build().map_err(|e| {
        error(format!(
            "its detectors and patterns together are too large to compile: {e}"
        ))
    })?;
    let when = section
        .when
        .as_ref()
        .map(|when| {
            crate::routing::compile_condition(&when.value).map_err(|e| error(format!("when: {e}")))
        })
        .transpose()?;
    compiled.guards.push(CompiledGuard {
        name: Arc::from(name),
        action: section.action,
        rules: first..compiled.rules.len(),
        set,
        when,
    });
    Ok(())
}

/// Hits of one guard rule (label) in one text, before they get a location.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TextHit {
    guard: usize,
    label: GuardRule,
    matches: usize,
}

/// One whole text through the guards.
#[derive(Debug, Default)]
struct TextScan {
    hits: Vec<TextHit>,
    /// The text with the masks applied, when a `mask` guard hit.
    masked: Option<String>,
    /// A `reject` guard hit (the last of `hits`).
    rejected: bool,
}

impl Compiled {
    /// Scans a complete text as request guards scan a prompt text: guards in order, the first
    /// `reject` hit stops, masks of all guards are applied together.
    #[cfg(test)]
    fn scan_text(&self, text: &str) -> TextScan {
        self.scan_text_selected(text, &GuardSelection::all())
    }

    /// [`Compiled::scan_text`] with only the guards `selection` leaves on.
    fn scan_text_selected(&self, text: &str, selection: &GuardSelection) -> TextScan {
        let mut scan = TextScan::default();
        let mut masks: Vec<(Range<usize>, usize)> = Vec::new();
        let mut ranges = Vec::new();
        for (g, guard) in self.guards.iter().enumerate() {
            if !selection.runs_response(g) {
                continue;
            }
            let candidates = guard.set.matches(text);
            if !candidates.matched_any() {
                continue;
            }
            let mut r = guard.rules.start;
            while r < guard.rules.end {
                let label = self.rules[r].label;
                ranges.clear();
                while r < guard.rules.end && self.rules[r].label == label {
                    if candidates.matched(r - guard.rules.start) {
                        let before = ranges.len();
                        self.rules[r].find_all(text, &mut ranges);
                        if guard.action == GuardAction::Mask {
                            masks.extend(ranges[before..].iter().map(|range| (range.clone(), r)));
                        }
                    }
                    r += 1;
                }
                if ranges.is_empty() {
                    continue;
                }
                scan.hits.push(TextHit {
                    guard: g,
                    label,
                    matches: count_merged(&mut ranges),
                });
                if guard.action == GuardAction::Reject {
                    scan.rejected = true;
                    return scan;
                }
            }
        }
        if !masks.is_empty() {
            scan.masked = Some(self.apply_masks(text, &mut masks));
        }
        scan
    }

    /// `text` with every mask range replaced (overlapping ranges merge; the mask text is that
    /// of the range that starts first, of the earlier rule when they start together).
    fn apply_masks(&self, text: &str, masks: &mut [(Range<usize>, usize)]) -> String {
        masks.sort_by_key(|(range, rule)| (range.start, *rule));
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        for (region, rule, _) in merged_regions(masks) {
            out.push_str(&text[copied..region.start]);
            out.push_str(&self.rules[rule].mask);
            copied = region.end;
        }
        out.push_str(&text[copied..]);
        out
    }

    fn hit(&self, hit: &TextHit, location: &str) -> GuardHit {
        let guard = &self.guards[hit.guard];
        GuardHit::new(
            guard.name.clone(),
            hit.label,
            location.to_string(),
            guard.action,
            hit.matches,
        )
    }
}

/// Merges `masks` (sorted by start, then rule) where they overlap: each region, the rule of
/// its first range, and how many ranges it took.
fn merged_regions(masks: &[(Range<usize>, usize)]) -> Vec<(Range<usize>, usize, usize)> {
    let mut regions: Vec<(Range<usize>, usize, usize)> = Vec::new();
    for (range, rule) in masks {
        match regions.last_mut() {
            Some((open, _, count)) if range.start < open.end => {
                open.end = open.end.max(range.end);
                *count += 1;
            }
            _ => regions.push((range.clone(), *rule, 1)),
        }
    }
    regions
}

/// How many separate matches `ranges` are once overlapping ones merge.
fn count_merged(ranges: &mut [Range<usize>]) -> usize {
    ranges.sort_by_key(|r| r.start);
    let mut count = 0;
    let mut end = None;
    for range in ranges.iter() {
        match end {
            Some(e) if range.start < e => end = Some(e.max(range.end)),
            _ => {
                count += 1;
                end = Some(range.end);
            }
        }
    }
    count
}

fn log_hit(hit: &GuardHit) {
    tracing::info!(
        guard = %hit.guard,
        rule = %hit.rule,
        location = %hit.location,
        action = hit.action.as_str(),
        matches = hit.matches,
        "response guard hit"
    );
}

/// The message of a refused answer: guard, rule and field, never the matched text.
fn rejection_message(hit: &GuardHit) -> String {
    let what = match hit.rule {
        GuardRule::Pattern(index) => format!("patterns[{index}] matched"),
        other => format!("{other} found"),
    };
    format!(
        "the provider's reply was blocked by guard '{}': {what} in {}",
        hit.guard, hit.location
    )
}

/// The error object of a refused answer, as [`LocalReply`] (status 502,
/// `x-should-retry: false`). A stream sends its body as the error event.
fn rejection_reply(hit: &GuardHit) -> LocalReply {
    let mut reply = LocalReply::openai_error(
        RESPONSE_REJECTED_STATUS,
        RESPONSE_REJECTED_TYPE,
        RESPONSE_GUARD_REJECTED,
        None,
        rejection_message(hit),
    );
    reply.headers.push(("x-should-retry", "false".to_string()));
    reply
}
