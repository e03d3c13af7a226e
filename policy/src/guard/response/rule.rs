//! One compiled rule of a response guard: the `regex` that finds its matches (exactly as
//! request guards do), and a lazy DFA over the same pattern that tells a stream how much of
//! the text so far could still be part of a match.
//!
//! # Deciding what a stream may emit
//!
//! The holdback automaton is the rule's pattern compiled with [`MatchKind::All`], anchored,
//! without capture states. Run from a start position `s` over the text received so far
//! (`text[s..n]`), it says whether **any** continuation of the text could give a match that
//! starts at `s` and ends at or after `n` ([`CompiledRule::settled`] answers "no"). When no
//! start in `[at, q)` can, every match that starts there lies inside `text[..n]` and the regex
//! finds exactly the matches there that it would find in the complete text; `q`, the
//! earliest start that is not settled, is where the stream must start holding text back.
//!
//! The lazy DFA cannot evaluate Unicode word boundaries (`\b` in Unicode mode) on non-ASCII
//! text, so the automaton is built from a copy of the NFA in which those assertions always
//! hold. That only adds matches, so "settled" stays sound; the regex still decides what
//! matches.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use regex::{CaptureLocations, Regex};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson::{self, State, Transition, WhichCaptures, NFA};
use regex_automata::util::look::Look;
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind, PatternID};

use crate::guard::detectors::Check;
use crate::guard::GuardRule;

/// A match of a rule's regex: the whole match and the part a check looks at (capture group 1
/// of built-in detectors; the whole match for operator patterns).
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub whole: Range<usize>,
    pub body: Range<usize>,
}

pub(super) struct CompiledRule {
    /// Index of the guard (in config order) the rule belongs to.
    pub guard: usize,
    pub label: GuardRule,
    regex: Regex,
    check: Option<Check>,
    pub mask: Arc<str>,
    hold: DFA,
    /// False when `hold` was built with Unicode word boundaries relaxed.
    exact_lookahead: bool,
}

impl CompiledRule {
    pub(super) fn new(
        guard: usize,
        label: GuardRule,
        pattern: &str,
        regex: Regex,
        check: Option<Check>,
        mask: Arc<str>,
    ) -> Result<CompiledRule, String> {
        let (hold, exact_lookahead) = hold_automaton(pattern)?;
        Ok(CompiledRule {
            guard,
            label,
            regex,
            check,
            mask,
            hold,
            exact_lookahead,
        })
    }

    pub(super) fn has_check(&self) -> bool {
        self.check.is_some()
    }

    /// The leftmost match of the regex at or after `at` (with the text before `at` as context,
    /// like [`Regex::find_at`]).
    pub(super) fn find(
        &self,
        text: &str,
        at: usize,
        locations: &mut Option<CaptureLocations>,
    ) -> Option<Candidate> {
        match self.check {
            None => self.regex.find_at(text, at).map(|m| Candidate {
                whole: m.range(),
                body: m.range(),
            }),
            Some(_) => {
                let locations = locations.get_or_insert_with(|| self.regex.capture_locations());
                let whole = self.regex.captures_read_at(locations, text, at)?;
                let body = locations.get(1).map_or(whole.range(), |(s, e)| s..e);
                Some(Candidate {
                    whole: whole.range(),
                    body,
                })
            }
        }
    }

    /// What of `candidate` is a hit: the check's answer, or the whole match.
    pub(super) fn accept(&self, text: &str, candidate: &Candidate) -> Option<Range<usize>> {
        match self.check {
            None => Some(candidate.whole.clone()),
            Some(check) => check(text, candidate.body.clone()),
        }
    }

    /// Every accepted match in `text`, the way request guards find them: after a hit the
    /// search goes on at its end; after a candidate that is not a hit (or an empty match),
    /// one character after the candidate's start.
    pub(super) fn find_all(&self, text: &str, out: &mut Vec<Range<usize>>) {
        let mut locations = None;
        let mut at = 0;
        while at <= text.len() {
            let Some(candidate) = self.find(text, at, &mut locations) else {
                break;
            };
            match self.accept(text, &candidate) {
                Some(range) if !range.is_empty() => {
                    at = range.end;
                    out.push(range);
                }
                _ => match text[candidate.whole.start..].chars().next() {
                    Some(c) => at = candidate.whole.start + c.len_utf8(),
                    None => break,
                },
            }
        }
    }

    pub(super) fn hold_cache(&self) -> HoldCache {
        HoldCache {
            cache: self.hold.create_cache(),
            settled: HashMap::new(),
            clears: 0,
        }
    }

    /// Whether no match that starts at the beginning of `tail` can end at or after the end of
    /// `tail`, whatever text follows (including none). `look_behind` is the byte before
    /// `tail`, `None` at the very start of the text.
    pub(super) fn settled(
        &self,
        cache: &mut HoldCache,
        look_behind: Option<u8>,
        tail: &[u8],
    ) -> bool {
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(look_behind);
        let Ok(mut state) = self.hold.start_state(&mut cache.cache, &config) else {
            return false;
        };
        for &byte in tail {
            if state.is_dead() {
                return true;
            }
            if state.is_quit() {
                return false;
            }
            state = match self.hold.next_state(&mut cache.cache, state, byte) {
                Ok(next) => next,
                Err(_) => return false,
            };
        }
        if state.is_dead() {
            return true;
        }
        if state.is_quit() {
            return false;
        }
        self.leads_nowhere(cache, state)
    }

    /// A state that is not dead is still settled when no continuation can give a match that
    /// ends after the end of the text, and whether one ends exactly there is the same for
    /// every next byte and for the end of the text (e.g. right after a literal matched). The
    /// second part needs an automaton that evaluates look-ahead itself: with Unicode word
    /// boundaries relaxed, a match may not end exactly at the end either.
    fn leads_nowhere(&self, cache: &mut HoldCache, state: LazyStateID) -> bool {
        let clears = cache.cache.clear_count();
        if clears != cache.clears {
            cache.settled.clear();
            cache.clears = clears;
        }
        if let Some(&known) = cache.settled.get(&state) {
            return known;
        }
        // `None` when the answer is unknown: the cache was cleared, which invalidates
        // `state` (answer conservatively and remember nothing).
        let settled = (|| {
            let dfa = &self.hold;
            let step = |cache: &mut Cache, from: LazyStateID, byte: u8| {
                let next = dfa.next_state(cache, from, byte).ok()?;
                (cache.clear_count() == clears).then_some(next)
            };
            let eoi = |cache: &mut Cache, from: LazyStateID| {
                let next = dfa.next_eoi_state(cache, from).ok()?;
                (cache.clear_count() == clears).then_some(next.is_match())
            };
            let ends_here = eoi(&mut cache.cache, state)?;
            if ends_here && !self.exact_lookahead {
                return Some(false);
            }
            for unit in dfa.byte_classes().representatives(..) {
                let Some(byte) = unit.as_u8() else { continue };
                let next = step(&mut cache.cache, state, byte)?;
                if next.is_dead() {
                    if ends_here {
                        return Some(false);
                    }
                    continue;
                }
                if next.is_match() != ends_here || (next.is_match() && !self.exact_lookahead) {
                    return Some(false);
                }
                if eoi(&mut cache.cache, next)? {
                    return Some(false);
                }
                for unit in dfa.byte_classes().representatives(..) {
                    let Some(byte) = unit.as_u8() else { continue };
                    if !step(&mut cache.cache, next, byte)?.is_dead() {
                        return Some(false);
                    }
                }
            }
            Some(true)
        })();
        match settled {
            Some(settled) => {
                cache.settled.insert(state, settled);
                settled
            }
            None => false,
        }
    }
}

/// The per-stream memory of one rule's lazy DFA.
pub(super) struct HoldCache {
    cache: Cache,
    /// [`CompiledRule::leads_nowhere`] answers, valid until the cache is next cleared.
    settled: HashMap<LazyStateID, bool>,
    clears: usize,
}

/// The most memory one rule's lazy DFA cache grows to before it starts over (the default is
/// 2 MiB; holdback automata visit few states, and caches are pooled).
const HOLD_CACHE_BYTES: usize = 256 * 1024;

/// The holdback automaton of `pattern`, and whether it is exact (false: Unicode word
/// boundaries relaxed).
fn hold_automaton(pattern: &str) -> Result<(DFA, bool), String> {
    let nfa = thompson::Compiler::new()
        .configure(thompson::Config::new().which_captures(WhichCaptures::None))
        .build(pattern)
        .map_err(|e| format!("cannot build the stream automaton of '{pattern}': {e}"))?;
    let exact = !nfa.look_set_any().contains_word_unicode();
    let nfa = if exact {
        nfa
    } else {
        without_unicode_word_boundaries(&nfa)?
    };
    let dfa = DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .cache_capacity(HOLD_CACHE_BYTES)
                .skip_cache_capacity_check(true),
        )
        .build_from_nfa(nfa)
        .map_err(|e| format!("cannot build the stream automaton of '{pattern}': {e}"))?;
    Ok((dfa, exact))
}

fn is_unicode_word_look(look: Look) -> bool {
    matches!(
        look,
        Look::WordUnicode
            | Look::WordUnicodeNegate
            | Look::WordStartUnicode
            | Look::WordEndUnicode
            | Look::WordStartHalfUnicode
            | Look::WordEndHalfUnicode
    )
}

/// A copy of `nfa` (one pattern, no capture states) in which Unicode word-boundary
/// assertions are unconditional: it matches everything `nfa` matches, and more.
fn without_unicode_word_boundaries(nfa: &NFA) -> Result<NFA, String> {
    let error = |e: thompson::BuildError| format!("cannot build the stream automaton: {e}");
    let mut builder = thompson::Builder::new();
    builder.set_utf8(nfa.is_utf8());
    builder.set_reverse(nfa.is_reverse());
    builder.set_look_matcher(nfa.look_matcher().clone());
    builder.start_pattern().map_err(error)?;
    for (index, state) in nfa.states().iter().enumerate() {
        let id = match state {
            State::ByteRange { trans } => builder.add_range(*trans).map_err(error)?,
            State::Sparse(sparse) => builder
                .add_sparse(sparse.transitions.to_vec())
                .map_err(error)?,
            State::Dense(dense) => builder
                .add_sparse(dense_ranges(&dense.transitions))
                .map_err(error)?,
            State::Look { look, next } if is_unicode_word_look(*look) => {
                epsilon(&mut builder, *next)?
            }
            State::Look { look, next } => builder.add_look(*next, *look).map_err(error)?,
            State::Union { alternates } => builder.add_union(alternates.to_vec()).map_err(error)?,
            State::BinaryUnion { alt1, alt2 } => {
                builder.add_union(vec![*alt1, *alt2]).map_err(error)?
            }
            State::Capture { next, .. } => epsilon(&mut builder, *next)?,
            State::Fail => builder.add_fail().map_err(error)?,
            State::Match { .. } => builder.add_match().map_err(error)?,
        };
        if id.as_usize() != index {
            return Err("cannot build the stream automaton: state numbering differs".into());
        }
    }
    let start = nfa
        .start_pattern(PatternID::ZERO)
        .unwrap_or(nfa.start_anchored());
    builder.finish_pattern(start).map_err(error)?;
    builder
        .build(nfa.start_anchored(), nfa.start_unanchored())
        .map_err(error)
}

/// An unconditional epsilon transition to `next`.
fn epsilon(builder: &mut thompson::Builder, next: StateID) -> Result<StateID, String> {
    let error = |e: thompson::BuildError| format!("cannot build the stream automaton: {e}");
    let id = builder.add_empty().map_err(error)?;
    builder.patch(id, next).map_err(error)?;
    Ok(id)
}

/// A dense state's transitions as sorted, non-overlapping ranges (`StateID::ZERO` is "no
/// transition").
fn dense_ranges(transitions: &[StateID]) -> Vec<Transition> {
    let mut out: Vec<Transition> = Vec::new();
    for (byte, &next) in transitions.iter().enumerate() {
        let Ok(byte) = u8::try_from(byte) else { break };
        if next == StateID::ZERO {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.next == next && last.end.checked_add(1) == Some(byte) => {
                last.end = byte;
            }
            _ => out.push(Transition {
                start: byte,
                end: byte,
                next,
            }),
        }
    }
    out
}
