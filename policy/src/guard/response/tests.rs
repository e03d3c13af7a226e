//! Response guards: JSON replies, SSE streams, and exhaustive split tests of the streaming
//! masker against the one-shot scan.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::scanner::{ChannelScanner, Scratch, MAX_HELD_BYTES};
use super::*;
use crate::config::response_guards::validate_response_guards;
use crate::sse::{single_data_payload, SseFramer};
use crate::usage::ChunkOutput;

#[derive(Deserialize)]
struct Doc {
    response: Vec<ResponseGuardSection>,
}

/// Compiles a `response:` list (YAML), which must validate.
fn guards(yaml: &str) -> ResponseGuards {
    let doc: Doc = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut issues = Vec::new();
    validate_response_guards(&doc.response, "guards.response", &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    ResponseGuards::compile(&doc.response).expect("compiles")
}

const CARDS_REJECT: &str = "response:\n  - { name: no-cards, detectors: [credit_card] }\n";
const EMAIL_MASK: &str = "response:\n  - { name: scrub, action: mask, detectors: [email] }\n";

/// Everything at once: two mask guards (one overlapping the other's matches), a log guard.
const EVERYTHING: &str = r"response:
  - name: scrub
    action: mask
    detectors: [email, phone, credit_card, us_ssn, iban, secrets]
    patterns: ['(?i)project\s+falcon']
  - name: overlap
    action: mask
    patterns: ['0132\. Card']
    mask_with: '#'
  - name: watch
    action: log
    detectors: [high_entropy]
    patterns: ['launch']
";

const RICH_TEXT: &str = "Hi Jane, mail jane.doe@example.com or call +1 415 555 0132. Card 4111 1111 1111 1111, \
SSN 123-45-6789, IBAN DE89 3704 0044 0532 0130 00, key AKIAIOSFODNN7EXAMPLE. Caf\u{e9}: Project  Falcon launch!";

/// The one-shot scan's output for a whole text.
fn masked_once(guards: &ResponseGuards, text: &str) -> String {
    let scan = guards.compiled.scan_text(text);
    assert!(!scan.rejected);
    scan.masked.unwrap_or_else(|| text.to_string())
}

/// (guard, rule, matches) of hits, for comparing stream and one-shot hits.
fn hit_keys(hits: &[GuardHit]) -> Vec<(String, String, usize)> {
    hits.iter()
        .map(|h| (h.guard.to_string(), h.rule.to_string(), h.matches))
        .collect()
}

fn once_hit_keys(guards: &ResponseGuards, text: &str) -> Vec<(String, String, usize)> {
    let compiled = &guards.compiled;
    let hits: Vec<GuardHit> = compiled
        .scan_text(text)
        .hits
        .iter()
        .map(|h| compiled.hit(h, "x"))
        .collect();
    hit_keys(&hits)
}

// ---------------------------------------------------------------- JSON replies

fn chat_reply(content: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":{}}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1, "completion_tokens":2}}}}"#,
        serde_json::to_string(content).unwrap()
    )
}

#[test]
fn json_reject_replaces_the_reply_with_a_502_that_names_guard_rule_and_field() {
    let g = guards(CARDS_REJECT);
    let body = chat_reply("your card is 4111 1111 1111 1111, keep it safe");
    let ResponseVerdict::Rejected { reply, hits } =
        g.check_json(LlmApi::ChatCompletions, body.as_bytes())
    else {
        panic!("expected a rejection");
    };
    assert_eq!(reply.status, 502);
    assert_eq!(reply.details, RESPONSE_GUARD_REJECTED);
    assert_eq!(reply.headers, vec![("x-should-retry", "false".to_string())]);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert_eq!(
        text,
        r#"{"error":{"message":"the provider's reply was blocked by guard 'no-cards': credit_card found in choices[0].message.content","type":"upstream_error","param":null,"code":"response_guard_rejected"}}"#
    );
    assert!(!text.contains("4111"));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].location, "choices[0].message.content");
    assert_eq!(hits[0].action, GuardAction::Reject);
}

#[test]
fn json_mask_rewrites_only_the_text_and_keeps_every_other_byte() {
    let g = guards(EMAIL_MASK);
    let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"mail jane.doe@example.com or x@example.org","extra":1.50},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1, "completion_tokens":2}}"#;
    let ResponseVerdict::Masked { body: masked, hits } =
        g.check_json(LlmApi::ChatCompletions, body.as_bytes())
    else {
        panic!("expected masking");
    };
    assert_eq!(
        String::from_utf8(masked).unwrap(),
        body.replace(
            "mail jane.doe@example.com or x@example.org",
            "mail [REDACTED:email] or [REDACTED:email]"
        )
    );
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].matches, 2);
    assert_eq!(hits[0].action, GuardAction::Mask);
}

#[test]
fn json_log_records_hits_and_changes_nothing() {
    let g = guards("response:\n  - { name: watch, action: log, detectors: [email, us_ssn] }\n");
    let body = chat_reply("a@example.com, b@example.com and 123-45-6789");
    let verdict = g.check_json(LlmApi::ChatCompletions, body.as_bytes());
    let ResponseVerdict::Unchanged { hits } = verdict else {
        panic!("expected no change: {verdict:?}");
    };
    let keys = hit_keys(&hits);
    assert_eq!(
        keys,
        vec![
            ("watch".into(), "email".into(), 2),
            ("watch".into(), "us_ssn".into(), 1)
        ]
    );
    assert!(hits.iter().all(|h| h.action == GuardAction::Log));
}

#[test]
fn json_scans_tool_call_arguments_refusals_content_parts_and_completions() {
    let g = guards(
        r"response:
  - { name: falcon, action: mask, patterns: ['(?i)project\s+falcon'] }
  - { name: no-ssn, detectors: [us_ssn] }
",
    );
    let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"t1","type":"function","function":{"name":"search","arguments":"{\"q\":\"Project Falcon\"}"}}]},"finish_reason":"tool_calls"}]}"#;
    let ResponseVerdict::Masked { body: masked, hits } =
        g.check_json(LlmApi::ChatCompletions, body.as_bytes())
    else {
        panic!("expected masking");
    };
    assert_eq!(
        String::from_utf8(masked).unwrap(),
        body.replace("Project Falcon", "[REDACTED:pattern]")
    );
    assert_eq!(
        hits[0].location,
        "choices[0].message.tool_calls[0].function.arguments"
    );

    let refusal = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"not for 078-05-1120"}}]}"#;
    let ResponseVerdict::Rejected { hits, .. } =
        g.check_json(LlmApi::ChatCompletions, refusal.as_bytes())
    else {
        panic!("expected a rejection");
    };
    assert_eq!(hits.last().unwrap().location, "choices[0].message.refusal");

    let parts = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":[{"type":"text","text":"about project falcon"},"and PROJECT FALCON"]}}]}"#;
    let ResponseVerdict::Masked { body: masked, hits } =
        g.check_json(LlmApi::ChatCompletions, parts.as_bytes())
    else {
        panic!("expected masking");
    };
    let masked: Value = serde_json::from_slice(&masked).unwrap();
    assert_eq!(
        masked["choices"][0]["message"]["content"],
        serde_json::json!([{"type":"text","text":"about [REDACTED:pattern]"},"and [REDACTED:pattern]"])
    );
    assert_eq!(
        hits.iter().map(|h| h.location.as_str()).collect::<Vec<_>>(),
        [
            "choices[0].message.content[0].text",
            "choices[0].message.content[1]"
        ]
    );

    let completion = r#"{"id":"cmpl-1","object":"text_completion","choices":[{"text":"the Project Falcon plan","index":0,"logprobs":null,"finish_reason":"stop"}]}"#;
    let ResponseVerdict::Masked { body: masked, hits } =
        g.check_json(LlmApi::Completions, completion.as_bytes())
    else {
        panic!("expected masking");
    };
    assert_eq!(
        String::from_utf8(masked).unwrap(),
        completion.replace("Project Falcon", "[REDACTED:pattern]")
    );
    assert_eq!(hits[0].location, "choices[0].text");
}

#[test]
fn json_that_cannot_be_read_or_has_no_answer_text_passes_unchanged_without_hits() {
    let g = guards(CARDS_REJECT);
    let card = chat_reply("4111 1111 1111 1111");
    for (api, body) in [
        (LlmApi::Embeddings, card.as_bytes()),
        (
            LlmApi::ChatCompletions,
            b"{\"choices\":[{\"message\":{\"content\":\"4111 1111".as_slice(),
        ),
        (LlmApi::ChatCompletions, b"\xff\xfe"),
        (LlmApi::ChatCompletions, b"[]"),
        (
            LlmApi::ChatCompletions,
            br#"{"error":{"message":"4111 1111 1111 1111"}}"#,
        ),
        (
            LlmApi::ChatCompletions,
            br#"{"choices":[{"message":{"content":42}}]}"#,
        ),
    ] {
        match g.check_json(api, body) {
            ResponseVerdict::Unchanged { hits } => assert!(hits.is_empty()),
            other => panic!("{other:?} for {}", String::from_utf8_lossy(body)),
        }
    }
}

#[test]
fn json_with_repeated_keys_is_still_masked() {
    let g = guards(EMAIL_MASK);
    let body = r#"{"choices":[{"message":{"content":"x@example.com","content":"y@example.com"}}]}"#;
    let ResponseVerdict::Masked { body, .. } =
        g.check_json(LlmApi::ChatCompletions, body.as_bytes())
    else {
        panic!("expected masking");
    };
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value["choices"][0]["message"]["content"],
        "[REDACTED:email]"
    );
}

#[test]
fn one_shot_scan_finds_what_request_guards_find() {
    let text = RICH_TEXT;
    for detector in [
        Detector::Email,
        Detector::Phone,
        Detector::CreditCard,
        Detector::UsSsn,
        Detector::Iban,
        Detector::Secrets,
        Detector::HighEntropy,
    ] {
        let g = guards(&format!(
            "response:\n  - {{ name: d, action: mask, detectors: [{}] }}\n",
            detector.name()
        ));
        let mut ranges = Vec::new();
        for rule in &g.compiled.rules {
            rule.find_all(text, &mut ranges);
        }
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<std::ops::Range<usize>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        assert_eq!(
            merged,
            crate::guard::scan_with(detector, text),
            "{detector}"
        );
    }
}

#[test]
fn compile_refuses_unknown_detectors_and_prompt_injection() {
    let doc: Doc = serde_saphyr::from_str(
        "response:\n  - { name: a, detectors: [ssn] }\n  - { name: b, detectors: [prompt_injection] }\n",
    )
    .unwrap();
    let err = ResponseGuards::compile(&doc.response[..1])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("guard 'a': unknown detector 'ssn'"),
        "{err}"
    );
    let err = ResponseGuards::compile(&doc.response[1..])
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt_injection scores prompts"), "{err}");
    assert!(ResponseGuards::default().is_empty());
}

// ---------------------------------------------------------------- SSE helpers

const HEAD: &str = r#""id":"c1","object":"chat.completion.chunk","created":1,"model":"m""#;

fn content_event(index: u64, content: &str) -> String {
    format!(
        "data: {{{HEAD},\"choices\":[{{\"index\":{index},\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
        serde_json::to_string(content).unwrap()
    )
}

fn role_event() -> String {
    format!("data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n")
}

fn finish_event(index: u64) -> String {
    format!("data: {{{HEAD},\"choices\":[{{\"index\":{index},\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n")
}

fn tool_event(call: u64, arguments: &str) -> String {
    format!(
        "data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":{call},\"function\":{{\"arguments\":{}}}}}]}},\"finish_reason\":null}}]}}\n\n",
        serde_json::to_string(arguments).unwrap()
    )
}

const USAGE_EVENT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// Feeds `chunks` (the last one ends the stream); returns all bytes out and the rejection.
fn run(stream: &mut ResponseGuardStream, chunks: &[&[u8]]) -> (Vec<u8>, Option<StreamRejection>) {
    let mut out = Vec::new();
    let mut rejected = None;
    for (i, chunk) in chunks.iter().enumerate() {
        let guarded = stream.on_chunk(chunk, i + 1 == chunks.len());
        out.extend_from_slice(&guarded.bytes);
        if guarded.rejected.is_some() {
            assert!(rejected.is_none(), "rejected twice");
            rejected = guarded.rejected;
        }
    }
    (out, rejected)
}

/// The events of an SSE byte stream.
fn events_of(bytes: &[u8]) -> Vec<String> {
    let mut framer = SseFramer::new();
    let mut events = framer.push(bytes);
    let tail = framer.take_pending();
    if !tail.is_empty() {
        events.push(tail);
    }
    events
        .into_iter()
        .map(|e| String::from_utf8(e).unwrap())
        .collect()
}

/// The text of each event's first choice (`delta.content`, or `text`), `None` for events
/// without it.
fn event_texts(bytes: &[u8]) -> Vec<Option<String>> {
    events_of(bytes)
        .iter()
        .map(|e| {
            let payload = single_data_payload(e.as_bytes())?;
            let value: Value = serde_json::from_slice(payload).ok()?;
            let choice = &value["choices"][0];
            choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Joined text per (choice index, field) of an SSE byte stream: `content`, `text`, or
/// `tool<j>` arguments.
fn texts_of(bytes: &[u8]) -> BTreeMap<(u64, String), String> {
    let mut out: BTreeMap<(u64, String), String> = BTreeMap::new();
    for event in events_of(bytes) {
        let Some(payload) = single_data_payload(event.as_bytes()) else {
            continue;
        };
        let Ok(value) = serde_json::from_slice::<Value>(payload) else {
            continue;
        };
        for choice in value["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap();
            let mut add = |field: String, text: &str| {
                out.entry((index, field)).or_default().push_str(text);
            };
            if let Some(text) = choice["delta"]["content"].as_str() {
                add("content".into(), text);
            }
            if let Some(text) = choice["text"].as_str() {
                add("text".into(), text);
            }
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(text) = call["function"]["arguments"].as_str() {
                    add(format!("tool{}", call["index"]), text);
                }
            }
        }
    }
    out
}

fn content_of(bytes: &[u8]) -> String {
    texts_of(bytes)
        .remove(&(0, "content".to_string()))
        .unwrap_or_default()
}

/// A chat stream of `pieces` (one content event each), a finish event and `[DONE]`.
fn chat_stream(pieces: &[&str]) -> String {
    let mut s = role_event();
    for piece in pieces {
        s.push_str(&content_event(0, piece));
    }
    s.push_str(&finish_event(0));
    s.push_str(DONE);
    s
}

// ---------------------------------------------------------------- SSE streams

#[test]
fn sse_a_match_split_across_two_events_is_masked_and_the_rest_passes_as_is() {
    let g = guards("response:\n  - { name: scrub, action: mask, detectors: [credit_card] }\n");
    let input = chat_stream(&["Card: 4111 1111", " 1111 1111 thanks"]);
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (out, rejected) = run(&mut stream, &[input.as_bytes()]);
    assert!(rejected.is_none());
    assert_eq!(
        event_texts(&out),
        vec![
            Some(String::new()),
            Some("Card:".into()),
            Some(" [REDACTED:credit_card] thanks".into()),
            None,
            None
        ]
    );
    let (input_events, out_events) = (events_of(input.as_bytes()), events_of(&out));
    assert_eq!(
        out_events[0], input_events[0],
        "the role event is untouched"
    );
    assert_eq!(
        out_events[1],
        content_event(0, "Card:"),
        "only the text changed"
    );
    assert_eq!(
        out_events[3..],
        input_events[3..],
        "finish and [DONE] untouched"
    );
    assert_eq!(stream.held(), 0);
    assert_eq!(
        hit_keys(&stream.hits()),
        vec![("scrub".into(), "credit_card".into(), 1)]
    );
    assert_eq!(stream.hits()[0].location, "choices[0].delta.content");
}

#[test]
fn sse_first_tokens_pass_at_once_when_nothing_could_match() {
    let g = guards(
        r"response:
  - { name: no-cards, detectors: [credit_card] }
  - { name: falcon, action: mask, patterns: ['(?i)project\s+falcon'] }
",
    );
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let first = format!("{}{}", role_event(), content_event(0, "Hello"));
    let guarded = stream.on_chunk(first.as_bytes(), false);
    assert!(guarded.rejected.is_none());
    assert_eq!(
        guarded.into_output(first.as_bytes()),
        ChunkOutput::Unchanged
    );
    assert_eq!(stream.held(), 0);
    for piece in [" world", " how", " are", " you"] {
        let event = content_event(0, piece);
        let out = stream
            .on_chunk(event.as_bytes(), false)
            .into_output(event.as_bytes());
        assert_eq!(out, ChunkOutput::Unchanged, "{piece:?}");
    }
    // Only the shortest tail that may begin a match waits: the word that may begin the
    // pattern, or the boundary and digits that may begin a card number.
    for (piece, passed, held) in [
        (" about the project", " about the ", 7),
        (" x; paid ", "project x; paid", 1),
        ("ok", " ok", 0),
        ("at 4111 22", "at", 8),
    ] {
        let event = content_event(0, piece);
        let out = stream.on_chunk(event.as_bytes(), false).bytes;
        let expected_piece = content_event(0, passed);
        assert_eq!(String::from_utf8(out).unwrap(), expected_piece, "{piece:?}");
        assert_eq!(stream.held(), held, "{piece:?}");
    }
}

#[test]
fn sse_reject_mid_stream_sends_an_error_event_then_done_and_nothing_more() {
    let g = guards(CARDS_REJECT);
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let first = content_event(0, "ok so far");
    assert_eq!(
        stream
            .on_chunk(first.as_bytes(), false)
            .into_output(first.as_bytes()),
        ChunkOutput::Unchanged
    );
    let second = content_event(0, " card 4111 1111 ");
    let guarded = stream.on_chunk(second.as_bytes(), false);
    assert_eq!(
        String::from_utf8(guarded.bytes).unwrap(),
        content_event(0, " card")
    );
    let third = format!(
        "{}{}",
        content_event(0, "1111 1111 is yours"),
        finish_event(0)
    );
    let guarded = stream.on_chunk(third.as_bytes(), false);
    assert_eq!(
        String::from_utf8(guarded.bytes).unwrap(),
        "data: {\"error\":{\"message\":\"the provider's reply was blocked by guard 'no-cards': credit_card found in choices[0].delta.content\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"response_guard_rejected\"}}\n\ndata: [DONE]\n\n"
    );
    let rejection = guarded.rejected.expect("rejected");
    assert_eq!(rejection.hit.guard.as_ref(), "no-cards");
    assert_eq!(rejection.hit.location, "choices[0].delta.content");
    assert!(rejection.message.contains("credit_card found"));
    assert!(stream.is_rejected());
    assert_eq!(
        stream.on_chunk(DONE.as_bytes(), true),
        GuardedChunk::default()
    );
}

#[test]
fn sse_choices_are_scanned_apart_and_do_not_wait_for_each_other() {
    let g = guards(EMAIL_MASK);
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let events = [
        content_event(0, "zero says hi."),
        content_event(1, "one: mail jane.doe@exa"),
        content_event(0, " Zero again."),
        content_event(1, "mple.com please"),
        finish_event(0),
        finish_event(1),
        DONE.to_string(),
    ];
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let guarded = stream.on_chunk(event.as_bytes(), i + 1 == events.len());
        if i == 2 {
            // Choice 1 holds "jane.doe@exa"; choice 0 goes on regardless.
            assert_eq!(
                texts_of(&guarded.bytes)[&(0, "content".into())],
                " hi. Zero"
            );
            assert!(stream.held() > " again.".len());
        }
        out.extend_from_slice(&guarded.bytes);
    }
    let texts = texts_of(&out);
    assert_eq!(texts[&(0, "content".into())], "zero says hi. Zero again.");
    assert_eq!(
        texts[&(1, "content".into())],
        "one: mail [REDACTED:email] please"
    );
    assert_eq!(stream.hits()[0].location, "choices[1].delta.content");
}

#[test]
fn sse_tool_call_arguments_are_one_text_per_tool_call() {
    let g = guards(EMAIL_MASK);
    let input = [
        tool_event(0, "{\"city\":"),
        tool_event(1, "{\"to\":\"jane."),
        tool_event(0, "\"Paris\"}"),
        tool_event(1, "doe@example.com\"}"),
        format!("data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\n"),
        DONE.to_string(),
    ]
    .concat();
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (out, _) = run(&mut stream, &[input.as_bytes()]);
    let texts = texts_of(&out);
    assert_eq!(texts[&(0, "tool0".into())], "{\"city\":\"Paris\"}");
    assert_eq!(texts[&(0, "tool1".into())], "{\"to\":\"[REDACTED:email]\"}");
    assert_eq!(
        stream.hits()[0].location,
        "choices[0].delta.tool_calls[1].function.arguments"
    );
}

#[test]
fn sse_held_text_goes_out_before_the_finishing_event() {
    let g = guards(EMAIL_MASK);
    // The finishing event carries no text: an extra event before it.
    let input = chat_stream(&["write to jane"]);
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (out, _) = run(&mut stream, &[input.as_bytes()]);
    let events = events_of(&out);
    assert_eq!(events[1], content_event(0, "write to"));
    assert_eq!(
        events[2],
        format!("data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" jane\"}},\"finish_reason\":null}}]}}\n\n")
    );
    assert_eq!(events[3], finish_event(0));
    assert_eq!(events[4], DONE);

    // The finishing event carries the last text: the held text goes into it.
    let last = format!("data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"@example.com\"}},\"finish_reason\":\"stop\"}}]}}\n\n");
    let input = format!("{}{last}{DONE}", content_event(0, "write to jane"));
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (out, _) = run(&mut stream, &[input.as_bytes()]);
    let events = events_of(&out);
    assert_eq!(events.len(), 3);
    assert_eq!(events[1], last.replace("@example.com", " [REDACTED:email]"));
}

#[test]
fn sse_choiceless_events_wait_behind_held_text_and_done_flushes_it() {
    let g = guards("response:\n  - { name: scrub, action: mask, detectors: [phone] }\n");
    let input = [
        content_event(0, "call me at (415"),
        USAGE_EVENT.to_string(),
        ": ping\n\n".to_string(),
        DONE.to_string(),
    ]
    .concat();
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (out, _) = run(&mut stream, &[input.as_bytes()]);
    let events = events_of(&out);
    assert_eq!(events.len(), 5, "{events:#?}");
    assert_eq!(events[0], content_event(0, "call me at"));
    assert!(events[1].contains("\"content\":\" (415\""), "{}", events[1]);
    assert_eq!(events[2], USAGE_EVENT);
    assert_eq!(events[3], ": ping\n\n");
    assert_eq!(events[4], DONE);

    // Without [DONE] or a finish reason, the end of the body flushes; an unfinished last
    // event counts.
    let input = format!("{}data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" 555 0132 ok\"}}}}]}}", content_event(0, "call (415)"));
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (out, _) = run(&mut stream, &[input.as_bytes()]);
    assert_eq!(content_of(&out), "call [REDACTED:phone] ok");
    assert_eq!(stream.held(), 0);
}

#[test]
fn sse_log_guards_pass_every_byte_and_record_hits() {
    let g =
        guards("response:\n  - { name: watch, action: log, detectors: [email, credit_card] }\n");
    let input = chat_stream(&[
        "mail a@exa",
        "mple.com, card 4111 1111 ",
        "1111 1111 and b@example.com",
    ]);
    for size in [1, 5, 64, input.len()] {
        let chunks: Vec<&[u8]> = input.as_bytes().chunks(size).collect();
        let mut stream = g.stream(LlmApi::ChatCompletions);
        let (out, rejected) = run(&mut stream, &chunks);
        assert!(rejected.is_none());
        assert_eq!(String::from_utf8(out).unwrap(), input, "chunk size {size}");
        assert_eq!(
            hit_keys(&stream.hits()),
            vec![
                ("watch".into(), "email".into(), 2),
                ("watch".into(), "credit_card".into(), 1)
            ]
        );
    }
}

#[test]
fn sse_completions_text_is_guarded_too() {
    let g = guards("response:\n  - { name: scrub, action: mask, detectors: [us_ssn] }\n");
    let event = |text: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{{\"text\":{},\"index\":0,\"logprobs\":null,\"finish_reason\":{finish}}}],\"model\":\"m\"}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    };
    let input = [
        event("ssn 123-4", "null"),
        event("5-6789", "null"),
        event("", "\"length\""),
        DONE.into(),
    ]
    .concat();
    let mut stream = g.stream(LlmApi::Completions);
    let (out, _) = run(&mut stream, &[input.as_bytes()]);
    assert_eq!(
        event_texts(&out),
        vec![
            Some("ssn".into()),
            Some(String::new()),
            Some(" [REDACTED:us_ssn]".into()),
            None
        ]
    );
}

#[test]
fn sse_embeddings_and_empty_guards_pass_through() {
    let input = chat_stream(&["4111 1111 1111 1111"]);
    for (g, api) in [
        (guards(CARDS_REJECT), LlmApi::Embeddings),
        (ResponseGuards::default(), LlmApi::ChatCompletions),
    ] {
        let mut stream = g.stream(api);
        let (out, rejected) = run(&mut stream, &[input.as_bytes()]);
        assert!(rejected.is_none());
        assert_eq!(out, input.as_bytes());
    }
}

#[test]
fn sse_held_text_is_bounded() {
    let g = guards("response:\n  - { name: keys, action: mask, detectors: [secrets] }\n");
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let mut out = Vec::new();
    let begin = content_event(0, "here: -----BEGIN RSA PRIVATE KEY-----\n");
    out.extend(stream.on_chunk(begin.as_bytes(), false).bytes);
    let line = "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpF\n";
    for _ in 0..(3 * MAX_HELD_BYTES / line.len()) {
        let event = content_event(0, line);
        out.extend(stream.on_chunk(event.as_bytes(), false).bytes);
        assert!(
            stream.held() <= MAX_HELD_BYTES + line.len(),
            "{}",
            stream.held()
        );
    }
    out.extend(stream.on_chunk(DONE.as_bytes(), true).bytes);
    let text = content_of(&out);
    assert!(
        text.starts_with("here: [REDACTED:secrets]"),
        "{}",
        &text[..60]
    );
    assert!(!text.contains("BEGIN RSA PRIVATE KEY"));
}

#[test]
fn sse_unicode_word_boundaries_on_non_ascii_text() {
    let g = guards(
        r"response:
  - { name: falcon, action: mask, patterns: ['\bfalcon\b'] }
",
    );
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let first = content_event(0, "na\u{ef}ve caf\u{e9} \u{201c}");
    assert_eq!(
        stream
            .on_chunk(first.as_bytes(), false)
            .into_output(first.as_bytes()),
        ChunkOutput::Unchanged,
        "nothing held after non-ASCII text"
    );
    let text = "\u{e9}falcon falcon\u{2014}falcons \u{fc}falcon\u{e9} falcon";
    assert_every_split_matches_one_shot(&g, text, false);
}

#[test]
fn scanner_holds_the_minimal_tail() {
    let g = guards(
        r"response:
  - { name: p, action: mask, patterns: ['project falcon', 'ab+c'] }
",
    );
    let compiled = &g.compiled;
    let mut scratch = Scratch::new(compiled.rules.len());
    let mut scanner = ChannelScanner::new(compiled.rules.len());
    let mut push = |text: &str| {
        scanner
            .push(compiled, &mut scratch, text)
            .map_err(|_| ())
            .unwrap()
    };
    assert_eq!(push("see the proj"), "see the ");
    assert_eq!(push("ect x and a"), "project x and ");
    assert_eq!(push("bbb"), "");
    // A literal that matched is decided at once, whatever follows.
    assert_eq!(push("bd, project falcon"), "abbbbd, [REDACTED:pattern]");
    assert_eq!(push("!"), "!");
    assert_eq!(push("abc"), "[REDACTED:pattern]");
}

// ---------------------------------------------------------------- exhaustive splits

/// Runs `pieces` as content events through a fresh stream; returns the joined content out.
fn stream_pieces(g: &ResponseGuards, pieces: &[&str]) -> (String, ResponseGuardStream) {
    let input = chat_stream(pieces);
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (out, rejected) = run(&mut stream, &[input.as_bytes()]);
    assert!(rejected.is_none());
    (content_of(&out), stream)
}

fn assert_every_split_matches_one_shot(g: &ResponseGuards, text: &str, three: bool) {
    let expected = masked_once(g, text);
    let hits = once_hit_keys(g, text);
    let cuts: Vec<usize> = (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect();
    let check = |pieces: &[&str]| {
        let (out, stream) = stream_pieces(g, pieces);
        assert_eq!(out, expected, "pieces {pieces:?}");
        assert_eq!(stream.held(), 0, "pieces {pieces:?}");
        assert_eq!(hit_keys(&stream.hits()), hits, "pieces {pieces:?}");
    };
    for &i in &cuts {
        check(&[&text[..i], &text[i..]]);
        if three {
            for &j in cuts.iter().filter(|&&j| j >= i) {
                check(&[&text[..i], &text[i..j], &text[j..]]);
            }
        }
    }
    // Many small events, as providers send them.
    for size in 1..=7 {
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + size).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            pieces.push(&text[start..end]);
            start = end;
        }
        check(&pieces);
    }
}

#[test]
fn every_split_into_two_and_three_events_masks_like_the_one_shot_scan() {
    let g = guards(EVERYTHING);
    let expected = masked_once(&g, RICH_TEXT);
    // The reference itself is right: each secret is masked, the overlap merged.
    assert_eq!(
        expected,
        "Hi Jane, mail [REDACTED:email] or call [REDACTED:phone] [REDACTED:credit_card], \
SSN [REDACTED:us_ssn], IBAN [REDACTED:iban], key [REDACTED:secrets]. Caf\u{e9}: \
[REDACTED:pattern] launch!"
    );
    assert_every_split_matches_one_shot(&g, RICH_TEXT, false);
    // Every split into three events, over a shorter text with the same kinds of overlap.
    let short = "Mail a.b@example.com, call (415) 555-0132. Card 4111111111111111; Project Falcon!";
    assert_eq!(
        masked_once(&g, short),
        "Mail [REDACTED:email], call [REDACTED:phone] [REDACTED:credit_card]; [REDACTED:pattern]!"
    );
    assert_every_split_matches_one_shot(&g, short, true);
}

#[test]
fn every_byte_split_of_the_sse_stream_gives_the_same_output() {
    let g = guards(EVERYTHING);
    let text = "mail x@example.com, card 4111111111111111 ok, Project Falcon";
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let mut input = chat_stream(&words);
    input.insert_str(input.len() - DONE.len(), USAGE_EVENT);
    let mut stream = g.stream(LlmApi::ChatCompletions);
    let (whole, _) = run(&mut stream, &[input.as_bytes()]);
    assert_eq!(content_of(&whole), masked_once(&g, text));
    let events = events_of(&whole);
    assert!(events[events.len() - 2] == USAGE_EVENT && events[events.len() - 1] == DONE);
    let bytes = input.as_bytes();
    let same = |chunks: &[&[u8]], what: &str| {
        let mut stream = g.stream(LlmApi::ChatCompletions);
        let (out, rejected) = run(&mut stream, chunks);
        assert!(rejected.is_none());
        assert_eq!(out, whole, "{what}");
        assert_eq!(stream.held(), 0, "{what}");
    };
    for i in 0..=bytes.len() {
        same(&[&bytes[..i], &bytes[i..]], &format!("split at {i}"));
    }
    for i in (0..=bytes.len()).step_by(17) {
        for j in (i..=bytes.len()).step_by(13) {
            same(
                &[&bytes[..i], &bytes[i..j], &bytes[j..]],
                &format!("splits at {i}, {j}"),
            );
        }
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    same(&singles, "one byte at a time");

    // A stream with nothing to find passes byte for byte, however it is cut.
    let g = guards(
        r"response:
  - { name: no-cards, detectors: [credit_card, us_ssn] }
  - { name: falcon, action: mask, patterns: ['(?i)project\s+falcon'] }
",
    );
    let clean = chat_stream(&["nothing", " to see", " here"]);
    for i in 0..=clean.len() {
        let mut stream = g.stream(LlmApi::ChatCompletions);
        let (out, _) = run(
            &mut stream,
            &[&clean.as_bytes()[..i], &clean.as_bytes()[i..]],
        );
        assert_eq!(out, clean.as_bytes(), "split at {i}");
    }
}

#[test]
fn every_split_of_a_rejected_stream_rejects_before_the_match_goes_out() {
    let g = guards(CARDS_REJECT);
    let text = "your number: 4111-1111-1111-1111, expires soon";
    let body = text.find("4111").unwrap();
    for i in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
        let input = chat_stream(&[&text[..i], &text[i..]]);
        let mut stream = g.stream(LlmApi::ChatCompletions);
        let (out, rejected) = run(&mut stream, &[input.as_bytes()]);
        assert!(rejected.is_some(), "split at {i}");
        let sent = content_of(&out);
        assert!(
            text[..body].starts_with(&sent),
            "split at {i}: sent {sent:?}"
        );
        let events = events_of(&out);
        assert!(
            events[events.len() - 2].starts_with("data: {\"error\":"),
            "split at {i}"
        );
        assert_eq!(events[events.len() - 1], DONE);
    }
}

#[test]
fn every_split_with_anchors_and_word_boundaries_masks_like_the_one_shot_scan() {
    let g = guards(
        r"response:
  - name: anchored
    action: mask
    patterns: ['(?m)^token: \w+$', '(?-u:\b)id\d+(?-u:\b)', 'tail\z', '\bé\w+']
",
    );
    let text = "token: abc\nid42 and xid7 id9\ntoken: x y\n\u{e9}t\u{e9} the tail";
    assert_eq!(
        masked_once(&g, text),
        "[REDACTED:pattern]\n[REDACTED:pattern] and xid7 [REDACTED:pattern]\ntoken: x y\n\
[REDACTED:pattern] the [REDACTED:pattern]"
    );
    assert_every_split_matches_one_shot(&g, text, true);
}
