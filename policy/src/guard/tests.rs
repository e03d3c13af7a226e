//! Request guards through `plan_forward`, the way every adapter runs them.

use super::*;
use crate::config::ConfigFile;
use crate::openai_api::{plan_forward, ForwardPlan};
use crate::Snapshot;

fn snapshot(guards: &str) -> Snapshot {
    let text = format!(
        "\
listen: 127.0.0.1:10000
providers:
  - {{ name: a, kind: openai, endpoint: 'http://127.0.0.1:18080' }}
models:
  - {{ name: fast, provider: a, model: mock-small }}
guards:
{guards}"
    );
    let config = ConfigFile::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::compile(&config, &|_| None)
}

const GUARDS: &str = r"  request:
    - name: no-secrets
      detectors: [secrets, credit_card, us_ssn, iban]
    - name: scrub
      action: mask
      detectors: [email, phone]
    - name: falcon
      action: log
      patterns: ['(?i)project\s+falcon']
";

fn forward(s: &Snapshot, api: LlmApi, body: &str) -> ForwardPlan {
    plan_forward(s, api, body.as_bytes())
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, String::from_utf8_lossy(&r.body)))
}

fn refused(s: &Snapshot, api: LlmApi, body: &str) -> (LocalReply, serde_json::Value) {
    let reply = plan_forward(s, api, body.as_bytes()).expect_err("expected a refusal");
    let json = serde_json::from_slice(&reply.body).unwrap();
    (reply, json)
}

fn body_of(plan: &ForwardPlan) -> String {
    String::from_utf8(plan.body.clone()).unwrap()
}

#[test]
fn reject_answers_400_naming_guard_detector_and_place_but_not_the_text() {
    let s = snapshot(GUARDS);
    let (reply, json) = refused(
        &s,
        LlmApi::ChatCompletions,
        r#"{"model":"fast","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"charge 4111 1111 1111 1111 please"}]}"#,
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.details, GUARD_REJECTED);
    let error = &json["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "guard_rejected");
    assert_eq!(error["param"], "messages[1].content");
    assert_eq!(
        error["message"],
        "request blocked by guard 'no-secrets': credit_card found in messages[1].content"
    );
    let raw = String::from_utf8_lossy(&reply.body);
    assert!(!raw.contains("4111") && !raw.contains("charge"), "{raw}");
}

#[test]
fn mask_rewrites_only_the_prompt_and_records_hits() {
    let s = snapshot(GUARDS);
    let plan = forward(
        &s,
        LlmApi::ChatCompletions,
        r#"{"model":"fast","messages":[{"role":"user","name":"u","content":"mail jane@example.com or call (415) 555-0132.\nthanks"}],"temperature":0.50,"x_vendor":{"a":[1, 2]}}"#,
    );
    assert_eq!(
        body_of(&plan),
        r#"{"model":"mock-small","messages":[{"role":"user","name":"u","content":"mail [REDACTED:email] or call [REDACTED:phone].\nthanks"}],"temperature":0.50,"x_vendor":{"a":[1, 2]}}"#
    );
    let hits: Vec<String> = plan.guard_hits.iter().map(ToString::to_string).collect();
    assert_eq!(
        hits,
        [
            "guard 'scrub': email in messages[0].content (mask, 1 match)",
            "guard 'scrub': phone in messages[0].content (mask, 1 match)",
        ]
    );
    assert!(plan
        .guard_hits
        .iter()
        .all(|h| h.action == GuardAction::Mask && &*h.guard == "scrub"));
}

#[test]
fn log_forwards_unchanged_and_records_the_hit() {
    let s = snapshot(GUARDS);
    let body = r#"{"model":"fast","messages":[{"role":"user","content":"status of PROJECT  Falcon? and project falcon"}]}"#;
    let plan = forward(&s, LlmApi::ChatCompletions, body);
    assert_eq!(body_of(&plan), body.replace("\"fast\"", "\"mock-small\""));
    assert_eq!(
        plan.guard_hits,
        [GuardHit {
            guard: Arc::from("falcon"),
            rule: GuardRule::Pattern(0),
            location: "messages[0].content".into(),
            action: GuardAction::Log,
            matches: 2,
        }]
    );
}

#[test]
fn content_parts_are_scanned_and_masked_in_place() {
    let s = snapshot(GUARDS);
    let plan = forward(
        &s,
        LlmApi::ChatCompletions,
        r#"{"model":"fast","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},{"type":"text","text":"reply to bob@corp.example"}]}]}"#,
    );
    assert_eq!(
        body_of(&plan),
        r#"{"model":"mock-small","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},{"type":"text","text":"reply to [REDACTED:email]"}]}]}"#
    );
    assert_eq!(plan.guard_hits[0].location, "messages[0].content[1].text");

    let (_, json) = refused(
        &s,
        LlmApi::ChatCompletions,
        r#"{"model":"fast","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":"ssn 123-45-6789"}]}]}"#,
    );
    assert_eq!(json["error"]["param"], "messages[0].content[1].text");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("us_ssn found"));
}

#[test]
fn completions_prompt_strings_and_arrays() {
    let s = snapshot(GUARDS);
    let key = format!("sk-{}", "Zx81QwErTy55UiOp00AsDf");
    let (_, json) = refused(
        &s,
        LlmApi::Completions,
        &format!(r#"{{"model":"fast","prompt":["all good",[1,2,3],"use {key}"]}}"#),
    );
    assert_eq!(json["error"]["param"], "prompt[2]");
    assert_eq!(
        json["error"]["message"],
        "request blocked by guard 'no-secrets': secrets found in prompt[2]"
    );
    assert!(!json.to_string().contains(&key));

    let plan = forward(
        &s,
        LlmApi::Completions,
        r#"{"model":"fast","prompt":"Dear jane@example.com,","max_tokens":5}"#,
    );
    assert_eq!(
        body_of(&plan),
        r#"{"model":"mock-small","prompt":"Dear [REDACTED:email],","max_tokens":5}"#
    );
    assert_eq!(plan.guard_hits[0].location, "prompt");
}

#[test]
fn embeddings_input_strings_and_token_ids() {
    let s = snapshot(GUARDS);
    let plan = forward(
        &s,
        LlmApi::Embeddings,
        r#"{"model":"fast","input":["plain","+44 20 7946 0958"]}"#,
    );
    assert_eq!(
        body_of(&plan),
        r#"{"model":"mock-small","input":["plain","[REDACTED:phone]"]}"#
    );
    assert_eq!(plan.guard_hits[0].location, "input[1]");
    let (_, json) = refused(
        &s,
        LlmApi::Embeddings,
        r#"{"model":"fast","input":"IBAN DE89 3704 0044 0532 0130 00"}"#,
    );
    assert_eq!(json["error"]["param"], "input");
    let ids = r#"{"model":"fast","input":[[4111,1111,1111,1111],[415,555,132]]}"#;
    let plan = forward(&s, LlmApi::Embeddings, ids);
    assert!(plan.guard_hits.is_empty());
    assert_eq!(body_of(&plan), ids.replace("\"fast\"", "\"mock-small\""));
}

#[test]
fn ordinary_text_with_numbers_is_left_alone() {
    let s = snapshot(GUARDS);
    let body = r#"{"model":"fast","messages":[{"role":"user","content":"order 1234567890123 and 4111111111111112 shipped on 2024-05-17; invoice 5550132, tracking 1Z999AA10123456784, v1.2.3, 3.14159265358979, call ext. 4155. Pricing: 100 200 3000."}]}"#;
    let plan = forward(&s, LlmApi::ChatCompletions, body);
    assert!(plan.guard_hits.is_empty(), "{:?}", plan.guard_hits);
    assert_eq!(body_of(&plan), body.replace("\"fast\"", "\"mock-small\""));
}

#[test]
fn masks_keep_the_text_around_them_including_non_ascii() {
    let s = snapshot(GUARDS);
    let plan = forward(
        &s,
        LlmApi::Completions,
        r#"{"model":"fast","prompt":"café ☕ écrire à «jane@example.com» 🎉 +33 1 23 45 67 89\u00e9"}"#,
    );
    assert_eq!(
        body_of(&plan),
        r#"{"model":"mock-small","prompt":"café ☕ écrire à «[REDACTED:email]» 🎉 [REDACTED:phone]é"}"#
    );
}

#[test]
fn fields_other_than_the_prompt_are_never_scanned() {
    let s = snapshot(GUARDS);
    let body = r#"{"model":"fast","user":"jane@example.com","metadata":{"card":"4111111111111111"},"messages":[{"role":"user","name":"jane@example.com","content":"hello"}]}"#;
    let plan = forward(&s, LlmApi::ChatCompletions, body);
    assert!(plan.guard_hits.is_empty());
    assert_eq!(body_of(&plan), body.replace("\"fast\"", "\"mock-small\""));
}

#[test]
fn masks_of_several_guards_compose_and_overlaps_merge() {
    let s = snapshot(
        r"  request:
    - name: emails
      action: mask
      detectors: [email]
    - name: names
      action: mask
      patterns: ['jane', 'doe@']
      mask_with: '[NAME]'
",
    );
    let plan = forward(
        &s,
        LlmApi::Completions,
        r#"{"model":"fast","prompt":"jane.doe@example.com wrote to jane"}"#,
    );
    assert_eq!(
        body_of(&plan),
        r#"{"model":"mock-small","prompt":"[REDACTED:email] wrote to [NAME]"}"#
    );
    let hits: Vec<(String, String, usize)> = plan
        .guard_hits
        .iter()
        .map(|h| (h.guard.to_string(), h.rule.to_string(), h.matches))
        .collect();
    assert_eq!(
        hits,
        [
            ("emails".into(), "email".into(), 1),
            ("names".into(), "patterns[0]".into(), 2),
            ("names".into(), "patterns[1]".into(), 1),
        ]
    );
}

#[test]
fn a_reject_anywhere_wins_over_earlier_masks() {
    let s = snapshot(
        r"  request:
    - name: scrub
      action: mask
      detectors: [email]
    - name: codename
      patterns: ['(?i)falcon']
",
    );
    let (reply, json) = refused(
        &s,
        LlmApi::ChatCompletions,
        r#"{"model":"fast","messages":[{"role":"user","content":"jane@example.com"},{"role":"user","content":"about Falcon"}]}"#,
    );
    assert_eq!(reply.status, 400);
    assert_eq!(
        json["error"]["message"],
        "request blocked by guard 'codename': patterns[0] matched in messages[1].content"
    );
    assert!(!json.to_string().contains("(?i)falcon"));
}

#[test]
fn masking_keeps_stream_options_and_model_rewrites() {
    let s = snapshot(GUARDS);
    let plan = forward(
        &s,
        LlmApi::ChatCompletions,
        r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"x@example.com"}]}"#,
    );
    assert!(plan.stream && plan.usage_injected);
    assert_eq!(
        body_of(&plan),
        r#"{"model":"mock-small","stream":true,"messages":[{"role":"user","content":"[REDACTED:email]"}],"stream_options":{"include_usage":true}}"#
    );
}

#[test]
fn without_guards_nothing_is_scanned() {
    let config = ConfigFile::parse(
        "\
listen: 127.0.0.1:10000
providers:
  - { name: a, kind: openai, endpoint: 'http://127.0.0.1:18080' }
models:
  - { name: fast, provider: a, model: fast }
",
    )
    .unwrap();
    let s = Snapshot::compile(&config, &|_| None);
    assert!(!s.guards.has_request_guards());
    let body = r#"{"model":"fast","messages":[{"role":"user","content":"4111 1111 1111 1111"}]}"#;
    let plan = forward(&s, LlmApi::ChatCompletions, body);
    assert!(plan.guard_hits.is_empty());
    assert_eq!(body_of(&plan), body);
}

#[test]
fn a_policy_that_failed_to_compile_refuses_instead_of_forwarding() {
    let policy = GuardPolicy::refusing("guard 'x': broken".into());
    assert!(policy.has_request_guards());
    let mut body = RawObject::parse(br#"{"model":"m","prompt":"hi"}"#).unwrap();
    match policy.check_request(LlmApi::Completions, &mut body) {
        GuardVerdict::Reject { reply, .. } => {
            assert_eq!((reply.status, reply.details), (503, GUARD_UNAVAILABLE));
            assert!(!String::from_utf8_lossy(&reply.body).contains("broken"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn regex_errors_are_one_line() {
    let message = compile_pattern("(?i)falcon(").unwrap_err();
    assert_eq!(
        message,
        "'(?i)falcon(' is not a valid regex: unclosed group (at character 11)"
    );
    let message = compile_pattern("a{99999999}").unwrap_err();
    assert!(!message.contains('\n'), "{message}");
    assert!(compile_pattern("^$").is_err());
    assert!(compile_pattern(r"\bfalcon\b").is_ok());
}

#[test]
fn snapshot_debug_names_guards_without_their_patterns() {
    let s = snapshot(GUARDS);
    let debug = format!("{:?}", s.guards);
    assert!(
        debug.contains("no-secrets") && debug.contains("credit_card"),
        "{debug}"
    );
    assert!(
        !debug.contains("falcon\\s") && !debug.contains("s+falcon"),
        "{debug}"
    );
}

#[test]
fn a_prompt_the_guards_cannot_read_is_refused_not_forwarded() {
    let s = snapshot(GUARDS);
    // Valid JSON, but nested deeper than a parse may go.
    let deep = format!(
        r#"{{"model":"fast","messages":[{}1{}]}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let (reply, json) = refused(&s, LlmApi::ChatCompletions, &deep);
    assert_eq!(reply.status, 400);
    assert_eq!(json["error"]["code"], "guard_rejected");
    assert_eq!(json["error"]["param"], "messages");
}
