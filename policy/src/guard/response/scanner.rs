//! The streaming scan of one text channel (one choice's `content`, one tool call's
//! `arguments`, ...): text arrives in pieces, and each piece gives back the part of the text
//! that is now decided, masked, while the rest is held back.
//!
//! Every rule keeps a cursor, the position its next regex search starts from (the same
//! positions [`CompiledRule::find_all`] goes through over the whole text). A rule advances
//! its cursor over matches and non-matches that no continuation can change (see
//! [`rule`](super::rule)): a match is decided when no start from the cursor to the match's
//! start can still grow into a longer or earlier match, and, for a detector with a check,
//! when [`CHECK_LOOKAHEAD_CHARS`] characters follow it (the checks look that far past a
//! candidate). The text before the lowest cursor of the `mask` and `reject` rules is
//! decided; `log` rules never hold text back (their cursors only keep text for the scan).
//! A mask range never splits: when the decided point falls inside one, the whole range waits.
//!
//! Held text is bounded: a rule whose cursor falls more than [`MAX_HELD_BYTES`] behind the end
//! decides what it holds as if the text ended there, and starts again at the end. A match that
//! straddles such a cut, or that is longer than the bound, may then be found only in part.

use std::ops::Range;

use regex::CaptureLocations;

use super::rule::{CompiledRule, HoldCache};
use super::{merged_regions, Compiled};
use crate::config::GuardAction;

/// The most text a rule holds back in one channel before it decides on what it holds
/// (8 KiB: room for a PEM private key block, RSA keys up to 8192 bits, to be masked whole).
pub(super) const MAX_HELD_BYTES: usize = 8 * 1024;
/// Text kept before the lowest cursor: regex look-behind (`\b`, `(?m)^`) and the detectors'
/// checks look at the few bytes before a match.
const CONTEXT_BYTES: usize = 32;
/// How far past a candidate's end the built-in detectors' checks look (`char_after`,
/// `nothing_joined_after` in `detectors.rs`): a candidate is decided only once that much text
/// follows it, or the text has ended.
pub(super) const CHECK_LOOKAHEAD_CHARS: usize = 2;

/// Per-stream scratch of the compiled rules, shared by the stream's channels.
pub(super) struct Scratch {
    holds: Vec<Option<HoldCache>>,
    locations: Vec<Option<CaptureLocations>>,
}

impl Scratch {
    pub(super) fn new(rules: usize) -> Scratch {
        Scratch {
            holds: (0..rules).map(|_| None).collect(),
            locations: (0..rules).map(|_| None).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// Absolute offset where the rule's next search starts.
    at: usize,
    /// Every start in `[at, settled_until)` is known to be settled.
    settled_until: usize,
}

/// A hit of one rule, at absolute offsets in the channel's text.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub rule: usize,
    pub range: Range<usize>,
}

/// A `reject` rule found something: the index of the rule.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rejection {
    pub rule: usize,
}

#[derive(Debug)]
pub(super) struct ChannelScanner {
    /// The channel's text from absolute offset `base` on.
    buf: String,
    base: usize,
    /// Text before this absolute offset has been handed out.
    emitted: usize,
    cursors: Vec<Cursor>,
    /// Rules this answer does not run (their guard's `when` did not hold); empty: none.
    disabled: Vec<bool>,
    /// Every hit so far (for the hit counts).
    found: Vec<Found>,
    /// Mask ranges (absolute) not handed out yet, with their rule.
    masks: Vec<(Range<usize>, usize)>,
}

impl ChannelScanner {
    #[cfg(test)]
    pub(super) fn new(rules: usize) -> ChannelScanner {
        ChannelScanner::with_disabled(rules, Vec::new())
    }

    /// A scanner that skips the rules `disabled` marks (by rule index).
    pub(super) fn with_disabled(rules: usize, disabled: Vec<bool>) -> ChannelScanner {
        ChannelScanner {
            disabled,
            buf: String::new(),
            base: 0,
            emitted: 0,
            cursors: vec![Cursor::default(); rules],
            found: Vec::new(),
            masks: Vec::new(),
        }
    }

    /// Adds the next piece of the channel's text; returns the text decided by it.
    pub(super) fn push(
        &mut self,
        compiled: &Compiled,
        scratch: &mut Scratch,
        text: &str,
    ) -> Result<String, Rejection> {
        self.buf.push_str(text);
        self.advance(compiled, scratch, false)
    }

    /// The channel's text has ended: returns the rest, decided.
    pub(super) fn finish(
        &mut self,
        compiled: &Compiled,
        scratch: &mut Scratch,
    ) -> Result<String, Rejection> {
        self.advance(compiled, scratch, true)
    }

    /// Bytes of text received but not handed out yet.
    pub(super) fn held(&self) -> usize {
        self.end() - self.emitted
    }

    pub(super) fn found(&self) -> &[Found] {
        &self.found
    }

    fn end(&self) -> usize {
        self.base + self.buf.len()
    }

    fn advance(
        &mut self,
        compiled: &Compiled,
        scratch: &mut Scratch,
        ended: bool,
    ) -> Result<String, Rejection> {
        let end = self.end();
        for r in 0..compiled.rules.len() {
            if self.disabled.get(r).copied().unwrap_or(false) {
                // Holds nothing and finds nothing.
                self.cursors[r].at = end;
                continue;
            }
            self.advance_rule(compiled, scratch, r, ended)?;
            if !ended && end - self.cursors[r].at > MAX_HELD_BYTES {
                tracing::debug!(
                    rule = %compiled.rules[r].label,
                    held = end - self.cursors[r].at,
                    "response guard window full: deciding on the text held"
                );
                self.advance_rule(compiled, scratch, r, true)?;
            }
        }
        let mut until = end;
        if !ended {
            for (r, rule) in compiled.rules.iter().enumerate() {
                if compiled.guards[rule.guard].action != GuardAction::Log {
                    until = until.min(self.cursors[r].at);
                }
            }
        }
        let out = self.emit(compiled, until);
        self.trim();
        Ok(out)
    }

    /// Moves rule `r`'s cursor over everything decided (all of the text when `ended`).
    fn advance_rule(
        &mut self,
        compiled: &Compiled,
        scratch: &mut Scratch,
        r: usize,
        ended: bool,
    ) -> Result<(), Rejection> {
        let rule = &compiled.rules[r];
        let end = self.end();
        loop {
            let at = self.cursors[r].at;
            let mut open = end;
            if !ended {
                let hold = scratch.holds[r].get_or_insert_with(|| rule.hold_cache());
                open = self.earliest_unsettled(rule, hold, r);
                if open == at {
                    // Nothing before the first open start: no search needed.
                    return Ok(());
                }
            }
            let candidate = rule.find(&self.buf, at - self.base, &mut scratch.locations[r]);
            if !ended {
                let decided = candidate
                    .as_ref()
                    .filter(|c| self.base + c.whole.start < open);
                let Some(decided) = decided else {
                    // No match starts before `open`, in any continuation.
                    self.cursors[r].at = open;
                    return Ok(());
                };
                if rule.has_check() && !lookahead_ok(&self.buf, decided.body.end) {
                    self.cursors[r].at = self.base + decided.whole.start;
                    return Ok(());
                }
            }
            let Some(candidate) = candidate else {
                self.cursors[r] = Cursor {
                    at: end,
                    settled_until: end,
                };
                return Ok(());
            };
            match rule.accept(&self.buf, &candidate) {
                Some(range) if !range.is_empty() => {
                    let range = self.base + range.start..self.base + range.end;
                    self.cursors[r].at = range.end;
                    self.record(compiled, r, range)?;
                }
                _ => match self.buf[candidate.whole.start..].chars().next() {
                    Some(c) => {
                        self.cursors[r].at = self.base + candidate.whole.start + c.len_utf8();
                    }
                    None => {
                        self.cursors[r] = Cursor {
                            at: end,
                            settled_until: end,
                        };
                        return Ok(());
                    }
                },
            }
            let cursor = &mut self.cursors[r];
            cursor.settled_until = cursor.settled_until.max(cursor.at);
        }
    }

    /// The first start at or after rule `r`'s cursor from which a match could still end at
    /// or after the end of the text received; the end when there is none.
    fn earliest_unsettled(&mut self, rule: &CompiledRule, hold: &mut HoldCache, r: usize) -> usize {
        let end = self.end();
        let bytes = self.buf.as_bytes();
        let cursor = &mut self.cursors[r];
        let mut s = cursor.settled_until.max(cursor.at);
        while s < end {
            let rel = s - self.base;
            if self.buf.is_char_boundary(rel) {
                let look_behind = match rel.checked_sub(1) {
                    Some(i) => Some(bytes[i]),
                    None if s == 0 => None,
                    // No context before the start (cannot happen: `trim` keeps some).
                    None => {
                        cursor.settled_until = s;
                        return s;
                    }
                };
                if !rule.settled(hold, look_behind, &bytes[rel..]) {
                    cursor.settled_until = s;
                    return s;
                }
            }
            s += 1;
        }
        cursor.settled_until = end;
        end
    }

    fn record(
        &mut self,
        compiled: &Compiled,
        r: usize,
        range: Range<usize>,
    ) -> Result<(), Rejection> {
        self.found.push(Found {
            rule: r,
            range: range.clone(),
        });
        match compiled.guards[compiled.rules[r].guard].action {
            GuardAction::Mask => self.masks.push((range, r)),
            GuardAction::Reject => return Err(Rejection { rule: r }),
            GuardAction::Log => {}
        }
        Ok(())
    }

    /// Hands out the text up to `until` (or up to the start of a mask range that reaches
    /// past it), masked.
    fn emit(&mut self, compiled: &Compiled, mut until: usize) -> String {
        self.masks.sort_by_key(|(range, rule)| (range.start, *rule));
        let regions = merged_regions(&self.masks);
        let mut out = String::new();
        let mut copied = self.emitted;
        let mut used = 0;
        for (region, rule, count) in regions {
            if region.end > until {
                until = until.min(region.start);
                break;
            }
            out.push_str(&self.buf[copied - self.base..region.start - self.base]);
            out.push_str(&compiled.rules[rule].mask);
            copied = region.end;
            used += count;
        }
        out.push_str(&self.buf[copied - self.base..until - self.base]);
        self.masks.drain(..used);
        self.emitted = until;
        out
    }

    /// Drops text no cursor and no pending output needs any more.
    fn trim(&mut self) {
        let lowest = self
            .cursors
            .iter()
            .map(|c| c.at)
            .fold(self.emitted, usize::min);
        let mut keep = lowest.saturating_sub(CONTEXT_BYTES).max(self.base);
        while !self.buf.is_char_boundary(keep - self.base) {
            keep -= 1;
        }
        if keep > self.base {
            self.buf.drain(..keep - self.base);
            self.base = keep;
        }
    }
}

/// Whether enough text follows `end` for a detector's check to decide.
fn lookahead_ok(text: &str, end: usize) -> bool {
    text[end..].chars().take(CHECK_LOOKAHEAD_CHARS).count() == CHECK_LOOKAHEAD_CHARS
}
