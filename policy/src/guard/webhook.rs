//! Webhook guards: request guards whose verdict comes from an external HTTP service.
//!
//! The policy core does no I/O: [`WebhookRun`] says which call to make next
//! ([`WebhookCall`]), the adapter makes it and hands back what came of it
//! ([`WebhookAnswer`]), and the run applies the verdict to the body. Webhook guards run after
//! the built-in ones (so a webhook never sees what a `mask` guard hid) and one after the
//! other, in config order, each over the prompt as the guards before it left it.
//!
//! **`format: gantry`** (the default). Gantry sends `POST <url>`
//! (`content-type: application/json`, `Authorization: Bearer` when `api_key_env` is set):
//!
//! ```json
//! {"guard": "house-policy", "api": "chat_completions", "model": "fast",
//!  "caller": {"method": "api_key", "subject": "alice", "team": "search", "key": "alice-key"},
//!  "texts": [{"location": "messages[1].content", "text": "..."}]}
//! ```
//!
//! `caller` is who sent the request, as authentication found it (each field `null` when unknown
//! or for anonymous requests). `texts` are the prompt texts in the guard's scopes, in document order (the strings of
//! tool-call arguments one by one, sharing a location). The service answers 2xx with one of
//!
//! ```json
//! {"verdict": "pass"}
//! {"verdict": "reject", "reason": "mentions a competitor", "index": 0}
//! {"verdict": "mask", "texts": ["the new text of texts[0]", null]}
//! ```
//!
//! `reason` (optional, shown to the client, at most 200 characters kept) and `index` (optional:
//! which text, for the error's `param`); for `mask`, `texts` has one entry per text sent:
//! its new text, or `null` to keep it.
//!
//! **`format: openai_moderation`**: `POST {"model": ..., "input": [texts]}`, answered by the
//! moderation API's `{"results": [{"flagged": bool, "categories": {...}}]}` (one result per
//! input). A text is flagged when one of the guard's `categories` is true, or, without
//! `categories`, when the API flags it; a flagged text refuses the request.
//!
//! Anything else (no answer within `timeout_ms`, a connection error, a non-2xx status, a reply
//! that is not a verdict, an unset `api_key_env`) is a failure: `failure_mode: closed` refuses
//! the request with a 503 (`guard_unavailable`), `open` forwards it and records a
//! `webhook_unavailable` hit.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cel::Program;
use serde::Deserialize;
use serde_json::{json, Value};

use super::prompt::{self, Visit};
use super::{GuardHit, GuardRule, ScopeSet, GUARD_REJECTED, GUARD_UNAVAILABLE};
use crate::config::{
    FailureMode, GuardAction, RequestGuardSection, WebhookFormat, DEFAULT_MODERATION_MODEL,
};
use crate::governance::Caller;
use crate::json_object::RawObject;
use crate::openai_api::{LlmApi, LocalReply};

/// The most of a webhook's `reason` passed on to the client, in characters.
const MAX_REASON_CHARS: usize = 200;

/// How a webhook guard authenticates to its service.
#[derive(Clone)]
enum Token {
    None,
    Bearer(String),
    /// `api_key_env` names a variable that was not set.
    Missing(String),
}

/// One compiled webhook guard.
pub struct WebhookGuard {
    pub(super) name: Arc<str>,
    /// Its index in `guards.request` (for `when` selection).
    pub(super) index: usize,
    shadow: bool,
    url: String,
    format: WebhookFormat,
    model: String,
    categories: Vec<String>,
    timeout: Duration,
    failure_mode: FailureMode,
    token: Token,
    pub(super) scopes: ScopeSet,
    pub(super) when: Option<Program>,
}

impl fmt::Debug for WebhookGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookGuard")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("format", &self.format)
            .field("timeout", &self.timeout)
            .field("failure_mode", &self.failure_mode)
            .field("shadow", &self.shadow)
            .finish()
    }
}

impl WebhookGuard {
    /// Compiles guard `index` of `guards.request`, which has a `webhook`; `env` reads its
    /// token variable.
    pub(super) fn compile(
        index: usize,
        section: &RequestGuardSection,
        scopes: ScopeSet,
        when: Option<Program>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<WebhookGuard> {
        let webhook = section.webhook.as_ref()?;
        let token = match &webhook.api_key_env {
            None => Token::None,
            Some(name) => match env(&name.value) {
                Some(value) if !value.is_empty() => Token::Bearer(value),
                _ => Token::Missing(name.value.clone()),
            },
        };
        Some(WebhookGuard {
            name: Arc::from(section.name.value.as_str()),
            index,
            shadow: section.action == GuardAction::Log,
            url: webhook.url.value.clone(),
            format: webhook.format,
            model: webhook
                .model
                .as_ref()
                .map_or(DEFAULT_MODERATION_MODEL.to_string(), |m| m.value.clone()),
            categories: webhook.categories.iter().map(|c| c.value.clone()).collect(),
            timeout: Duration::from_millis(webhook.timeout_ms()),
            failure_mode: webhook.failure_mode,
            token,
            scopes,
            when,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The variable its token should come from, when that variable is unset.
    pub fn missing_token(&self) -> Option<&str> {
        match &self.token {
            Token::Missing(name) => Some(name),
            _ => None,
        }
    }
}

/// One HTTP call to make for a webhook guard.
#[derive(Debug, Clone)]
pub struct WebhookCall {
    pub guard: Arc<str>,
    pub url: String,
    /// The `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// A JSON body.
    pub body: Vec<u8>,
    pub timeout: Duration,
    /// The most of a reply worth reading, in bytes (a bigger one is a failure).
    pub max_reply_bytes: usize,
}

/// What came of a [`WebhookCall`].
#[derive(Debug, Clone)]
pub enum WebhookAnswer {
    /// The service answered (any status).
    Reply { status: u16, body: Vec<u8> },
    /// No answer: why, for logs (e.g. `timed out after 1000 ms`, `connection refused`).
    Failed(String),
}

/// One text sent to the current webhook.
struct SentText {
    location: String,
    text: String,
}

/// The webhook guards' pass over one request: call [`WebhookRun::next_call`] until it returns
/// `None`, [`answer`](WebhookRun::answer) each call, then [`finish`](WebhookRun::finish).
pub struct WebhookRun<'p> {
    guards: Vec<&'p WebhookGuard>,
    next: usize,
    api: LlmApi,
    model: String,
    /// The caller as `format: gantry` calls describe it.
    caller: Value,
    body: RawObject,
    changed: bool,
    hits: Vec<GuardHit>,
    /// The guard being called and what it was sent.
    pending: Option<(&'p WebhookGuard, Vec<SentText>)>,
}

/// The outcome of a finished [`WebhookRun`].
#[derive(Debug)]
pub struct WebhookOutcome {
    /// The body to send upstream instead, when a webhook masked some of it.
    pub body: Option<Vec<u8>>,
    pub hits: Vec<GuardHit>,
}

impl<'p> WebhookRun<'p> {
    pub(super) fn new(
        guards: Vec<&'p WebhookGuard>,
        api: LlmApi,
        model: &str,
        caller: &Caller,
        body: &[u8],
    ) -> Option<WebhookRun<'p>> {
        if guards.is_empty() {
            return None;
        }
        // The body was planned from a parsed object: it parses.
        let body = RawObject::parse(body).ok()?;
        Some(WebhookRun {
            guards,
            next: 0,
            api,
            model: model.to_string(),
            caller: json!({
                "method": caller.method,
                "subject": caller.subject,
                "team": caller.team,
                "key": caller.key,
            }),
            body,
            changed: false,
            hits: Vec::new(),
            pending: None,
        })
    }

    /// The next call to make, `Ok(None)` when every guard has had its say, or the reply that
    /// refuses the request (a guard whose token is missing, failing closed).
    pub fn next_call(&mut self) -> Result<Option<WebhookCall>, LocalReply> {
        while let Some(&guard) = self.guards.get(self.next) {
            self.next += 1;
            let texts = self.texts(guard.scopes);
            if texts.is_empty() {
                continue;
            }
            let authorization = match &guard.token {
                Token::None => None,
                Token::Bearer(token) => Some(format!("Bearer {token}")),
                Token::Missing(env) => {
                    self.failed(guard, &format!("{env} is not set"))?;
                    continue;
                }
            };
            let body = match guard.format {
                WebhookFormat::Gantry => json!({
                    "guard": &*guard.name,
                    "api": self.api.name(),
                    "model": self.model,
                    "caller": self.caller,
                    "texts": texts
                        .iter()
                        .map(|t| json!({"location": t.location, "text": t.text}))
                        .collect::<Vec<_>>(),
                }),
                WebhookFormat::OpenaiModeration => json!({
                    "model": guard.model,
                    "input": texts.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
                }),
            };
            let body = body.to_string().into_bytes();
            let max_reply_bytes = 64 * 1024 + 2 * body.len();
            self.pending = Some((guard, texts));
            return Ok(Some(WebhookCall {
                guard: guard.name.clone(),
                url: guard.url.clone(),
                authorization,
                body,
                timeout: guard.timeout,
                max_reply_bytes,
            }));
        }
        Ok(None)
    }

    /// Applies what came of the last call; the error is the reply that refuses the request.
    pub fn answer(&mut self, answer: WebhookAnswer) -> Result<(), LocalReply> {
        let Some((guard, texts)) = self.pending.take() else {
            return Ok(());
        };
        let verdict = match answer {
            WebhookAnswer::Failed(why) => Err(why),
            WebhookAnswer::Reply { status, body } if (200..300).contains(&status) => {
                match guard.format {
                    WebhookFormat::Gantry => gantry_verdict(&body, texts.len()),
                    WebhookFormat::OpenaiModeration => {
                        moderation_verdict(&body, texts.len(), &guard.categories)
                    }
                }
            }
            WebhookAnswer::Reply { status, .. } => Err(format!("it answered HTTP {status}")),
        };
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(why) => return self.failed(guard, &why),
        };
        match verdict {
            Verdict::Pass => {
                tracing::debug!(guard = %guard.name, "webhook guard: pass");
                Ok(())
            }
            Verdict::Reject { reason, index } => {
                let location = index.and_then(|i| texts.get(i)).map_or_else(
                    || prompt::field(self.api).to_string(),
                    |t| t.location.clone(),
                );
                self.record(
                    guard,
                    GuardRule::Webhook,
                    GuardAction::Reject,
                    location.clone(),
                    1,
                );
                if guard.shadow {
                    return Ok(());
                }
                let because = match &reason {
                    Some(reason) => format!(": {reason}"),
                    None => String::new(),
                };
                Err(LocalReply::openai_error(
                    400,
                    "invalid_request_error",
                    GUARD_REJECTED,
                    Some(&location),
                    format!(
                        "request blocked by guard '{}'{because} (in {location})",
                        guard.name
                    ),
                ))
            }
            Verdict::Mask(replacements) => {
                let changed: Vec<usize> = replacements
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| r.as_deref().is_some_and(|r| r != texts[*i].text))
                    .map(|(i, _)| i)
                    .collect();
                let Some(&first) = changed.first() else {
                    return Ok(());
                };
                let location = texts[first].location.clone();
                let mut locations: Vec<&str> = changed
                    .iter()
                    .map(|&i| texts[i].location.as_str())
                    .collect();
                locations.dedup();
                let count = locations.len();
                self.record(
                    guard,
                    GuardRule::Webhook,
                    GuardAction::Mask,
                    location,
                    count,
                );
                if guard.shadow {
                    return Ok(());
                }
                self.replace(guard.scopes, &replacements);
                Ok(())
            }
        }
    }

    /// The body to send (when changed) and what the webhooks found.
    pub fn finish(self) -> WebhookOutcome {
        WebhookOutcome {
            body: self.changed.then(|| self.body.to_vec()),
            hits: self.hits,
        }
    }

    /// The prompt texts in `scopes`, in document order.
    fn texts(&mut self, scopes: ScopeSet) -> Vec<SentText> {
        let mut texts = Vec::new();
        // Already read once by the built-in guards' pass; a failure here leaves nothing to send.
        let _ = prompt::visit(
            &mut self.body,
            self.api,
            scopes,
            &mut |location, _, text| {
                texts.push(SentText {
                    location: location.to_string(),
                    text: text.to_string(),
                });
                Visit::Keep
            },
        );
        texts
    }

    /// Puts `replacements[i]` (when some) in place of the i-th text in `scopes`.
    fn replace(&mut self, scopes: ScopeSet, replacements: &[Option<String>]) {
        let mut i = 0;
        let result = prompt::visit(&mut self.body, self.api, scopes, &mut |_, _, text| {
            let visit = match replacements.get(i) {
                Some(Some(new)) if new != text => Visit::Replace(new.clone()),
                _ => Visit::Keep,
            };
            i += 1;
            visit
        });
        match result {
            Ok(()) => self.changed = true,
            Err(error) => tracing::error!(%error, "webhook guard: masked texts not set back"),
        }
    }

    /// Records a hit; `action` is what the verdict asked (a shadow guard only logs).
    fn record(
        &mut self,
        guard: &WebhookGuard,
        rule: GuardRule,
        action: GuardAction,
        location: String,
        matches: usize,
    ) {
        let action = if guard.shadow {
            GuardAction::Log
        } else {
            action
        };
        let hit = GuardHit::new(guard.name.clone(), rule, location, action, matches);
        super::log_hit(&hit);
        self.hits.push(hit);
    }

    /// A guard got no verdict (`why`): refused when it fails closed, else recorded.
    fn failed(&mut self, guard: &WebhookGuard, why: &str) -> Result<(), LocalReply> {
        let closed = guard.failure_mode == FailureMode::Closed && !guard.shadow;
        tracing::warn!(
            guard = %guard.name,
            url = %guard.url,
            why,
            failure_mode = if closed { "closed" } else { "open" },
            "webhook guard got no verdict"
        );
        if closed {
            return Err(LocalReply::openai_error(
                503,
                "service_unavailable",
                GUARD_UNAVAILABLE,
                None,
                format!(
                    "request guard '{}' could not get a verdict from its webhook ({why}); the request was not sent",
                    guard.name
                ),
            ));
        }
        let field = prompt::field(self.api).to_string();
        self.record(
            guard,
            GuardRule::WebhookUnavailable,
            GuardAction::Log,
            field,
            1,
        );
        Ok(())
    }
}

/// A webhook's decision.
#[derive(Debug, PartialEq)]
enum Verdict {
    Pass,
    Reject {
        reason: Option<String>,
        index: Option<usize>,
    },
    /// New texts, one per text sent (`None`: keep it).
    Mask(Vec<Option<String>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GantryReply {
    verdict: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    texts: Option<Vec<Option<String>>>,
}

/// Reads a `format: gantry` reply to a call that sent `sent` texts.
fn gantry_verdict(body: &[u8], sent: usize) -> Result<Verdict, String> {
    let reply: GantryReply = serde_json::from_slice(body)
        .map_err(|e| format!("its reply is not a Gantry verdict ({e})"))?;
    match reply.verdict.as_str() {
        "pass" => Ok(Verdict::Pass),
        "reject" => Ok(Verdict::Reject {
            reason: reply
                .reason
                .map(|r| clean_reason(&r))
                .filter(|r| !r.is_empty()),
            index: reply.index.filter(|&i| i < sent),
        }),
        "mask" => match reply.texts {
            Some(texts) if texts.len() == sent => Ok(Verdict::Mask(texts)),
            Some(texts) => Err(format!(
                "its mask verdict has {} texts for the {sent} sent",
                texts.len()
            )),
            None => Err("its mask verdict has no texts".into()),
        },
        other => Err(format!(
            "its verdict '{other}' is none of pass, mask, reject"
        )),
    }
}

/// A reason fit for an error message: one line, printable, at most [`MAX_REASON_CHARS`].
fn clean_reason(reason: &str) -> String {
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    one_line.trim().to_string()
}

/// Reads an OpenAI moderation reply to a call that sent `sent` inputs; `categories` (when
/// not empty) are the ones that count.
fn moderation_verdict(body: &[u8], sent: usize, categories: &[String]) -> Result<Verdict, String> {
    let reply: Value = serde_json::from_slice(body)
        .map_err(|e| format!("its reply is not a moderation result ({e})"))?;
    let results = reply
        .get("results")
        .and_then(Value::as_array)
        .ok_or("its reply has no 'results' list")?;
    if results.len() != sent {
        return Err(format!(
            "its reply has {} results for the {sent} inputs sent",
            results.len()
        ));
    }
    for (index, result) in results.iter().enumerate() {
        let flagged = result
            .get("flagged")
            .and_then(Value::as_bool)
            .ok_or_else(|| format!("results[{index}] has no boolean 'flagged'"))?;
        let listed = result.get("categories").and_then(Value::as_object);
        let mut hit_categories: Vec<&str> = listed
            .map(|map| {
                map.iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k.as_str())
                    .collect()
            })
            .unwrap_or_default();
        if !categories.is_empty() {
            hit_categories.retain(|c| categories.iter().any(|wanted| wanted == c));
        }
        let refused = if categories.is_empty() {
            flagged
        } else {
            !hit_categories.is_empty()
        };
        if refused {
            hit_categories.sort_unstable();
            let reason = if hit_categories.is_empty() {
                "flagged by moderation".to_string()
            } else {
                format!("flagged for {}", hit_categories.join(", "))
            };
            return Ok(Verdict::Reject {
                reason: Some(reason),
                index: Some(index),
            });
        }
    }
    Ok(Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gantry_verdicts_are_read_and_bad_ones_named() {
        assert_eq!(
            gantry_verdict(br#"{"verdict":"pass"}"#, 2),
            Ok(Verdict::Pass)
        );
        assert_eq!(
            gantry_verdict(
                br#"{"verdict":"reject","reason":"no\ncompetitors","index":1}"#,
                2
            ),
            Ok(Verdict::Reject {
                reason: Some("no competitors".into()),
                index: Some(1)
            })
        );
        // An index out of range is dropped, not trusted.
        assert_eq!(
            gantry_verdict(br#"{"verdict":"reject","index":9}"#, 2),
            Ok(Verdict::Reject {
                reason: None,
                index: None
            })
        );
        assert_eq!(
            gantry_verdict(br#"{"verdict":"mask","texts":["x",null]}"#, 2),
            Ok(Verdict::Mask(vec![Some("x".into()), None]))
        );
        for (body, needle) in [
            (
                &br#"{"verdict":"mask","texts":["x"]}"#[..],
                "1 texts for the 2 sent",
            ),
            (br#"{"verdict":"mask"}"#, "has no texts"),
            (
                br#"{"verdict":"block"}"#,
                "'block' is none of pass, mask, reject",
            ),
            (br#"{"verdict":"pass","extra":1}"#, "not a Gantry verdict"),
            (b"<html>", "not a Gantry verdict"),
        ] {
            let err = gantry_verdict(body, 2).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        let long = format!(r#"{{"verdict":"reject","reason":"{}"}}"#, "a".repeat(500));
        match gantry_verdict(long.as_bytes(), 1) {
            Ok(Verdict::Reject {
                reason: Some(r), ..
            }) => assert_eq!(r.len(), MAX_REASON_CHARS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn moderation_results_refuse_flagged_texts_in_the_chosen_categories() {
        let reply = br#"{"id":"modr-1","model":"omni-moderation-latest","results":[
            {"flagged":false,"categories":{"violence":false,"hate":false}},
            {"flagged":true,"categories":{"violence":true,"hate":false,"harassment":true}}]}"#;
        assert_eq!(
            moderation_verdict(reply, 2, &[]),
            Ok(Verdict::Reject {
                reason: Some("flagged for harassment, violence".into()),
                index: Some(1)
            })
        );
        assert_eq!(
            moderation_verdict(reply, 2, &["violence".into()]),
            Ok(Verdict::Reject {
                reason: Some("flagged for violence".into()),
                index: Some(1)
            })
        );
        assert_eq!(
            moderation_verdict(reply, 2, &["hate".into()]),
            Ok(Verdict::Pass)
        );
        assert!(moderation_verdict(reply, 3, &[])
            .unwrap_err()
            .contains("2 results for the 3 inputs"));
        assert!(moderation_verdict(br#"{"results":[{}]}"#, 1, &[])
            .unwrap_err()
            .contains("no boolean 'flagged'"));
        assert!(moderation_verdict(b"{}", 1, &[])
            .unwrap_err()
            .contains("no 'results'"));
    }
}
