//! Request guards over prompts (regex patterns and PII/secret detectors) through the real
//! Envoy, on both policy paths: a reject is a 400 naming the guard (never the secret), a mask
//! rewrites the prompt the provider receives, a log-only hit reaches the access log; and
//! response guards over JSON replies and SSE streams (a match split across chunks is masked,
//! a reject ends the stream with an error event).

use gantry_testkit::PolicyPath;

use crate::{assert_openai_error, json_of, on_both_policy_paths, post, TwoProviders};

on_both_policy_paths!(
    guards_reject_mask_and_log_prompts,
    response_guards_mask_and_reject_replies_json_and_streamed,
    guards_run_only_when_their_condition_holds,
);

const GUARDS: &str = r#"guards:
  request:
    - name: no-secrets
      action: reject
      detectors: [secrets, credit_card]
    - name: scrub-contacts
      action: mask
      detectors: [email]
      patterns: ['(?i)project\s+falcon']
    - name: watch-ssn
      action: log
      detectors: [us_ssn]
"#;

fn chat(content: &str, extra: &str) -> String {
    serde_json::json!({
        "model": "m-alpha",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content},
        ],
    })
    .to_string()
    .replacen('{', &format!("{{{extra}"), 1)
}

async fn guards_reject_mask_and_log_prompts(path: PolicyPath) {
    let t = TwoProviders::start_on(path, GUARDS).await;
    let url = t.stack.url("/v1/chat/completions");

    // Reject: a card number (Luhn-valid) and an AWS key id; the client learns which guard and
    // where, never the value; nothing reaches the provider.
    for (secret, rule) in [
        ("4111 1111 1111 1111", "credit_card"),
        ("AKIAIOSFODNN7EXAMPLE", "secrets"),
    ] {
        let (status, body) =
            json_of(post(&url, &chat(&format!("my key is {secret}, thanks"), "")).await).await;
        assert_eq!(status, 400, "{body}");
        let message = assert_openai_error(&body, "guard_rejected");
        assert!(
            message.contains("'no-secrets'") && message.contains(rule),
            "{message}"
        );
        assert_eq!(body["error"]["param"], "messages[1].content", "{body}");
        assert!(
            !body.to_string().contains(secret),
            "the secret was echoed: {body}"
        );
    }
    let (status, body) = json_of(
        post(
            &t.stack.url("/v1/embeddings"),
            r#"{"model":"m-alpha","input":["fine","AKIAIOSFODNN7EXAMPLE"]}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "input[1]", "{body}");
    assert!(
        t.alpha.recorded().is_empty(),
        "a rejected prompt reached the provider"
    );

    // Mask: the provider gets the prompt with the e-mail and the project name redacted, the
    // other fields intact and a content-length that matches.
    let (status, reply) = json_of(
        post(
            &url,
            &chat(
                "mail bob@example.com about Project  Falcon",
                r#""temperature":0.25,"#,
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let recorded = t.alpha.recorded();
    assert_eq!(recorded.len(), 1);
    let upstream = recorded[0].json().unwrap();
    assert_eq!(
        upstream["messages"][1]["content"],
        "mail [REDACTED:email] about [REDACTED:pattern]"
    );
    assert_eq!(upstream["messages"][0]["content"], "be brief");
    assert_eq!(upstream["temperature"], 0.25);
    assert_eq!(upstream["model"], "alpha-1");
    assert_eq!(
        recorded[0]
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok()),
        Some(recorded[0].body.len())
    );
    let entry = t.stack.wait_for_access_log("the masked request", |e| {
        e["guard_hits"]
            .as_str()
            .is_some_and(|h| h.contains("scrub-contacts"))
    });
    let hits = entry["guard_hits"].as_str().unwrap();
    assert!(
        hits.contains("scrub-contacts:email:mask@messages[1].content")
            && hits.contains("scrub-contacts:patterns[0]:mask"),
        "{hits}"
    );
    assert!(!hits.contains("bob@"), "{hits}");

    // Log only: forwarded unchanged, the hit recorded.
    let (status, _) = json_of(post(&url, &chat("ssn 123-45-6789", "")).await).await;
    assert_eq!(status, 200);
    let upstream = t.alpha.recorded()[1].json().unwrap();
    assert_eq!(upstream["messages"][1]["content"], "ssn 123-45-6789");
    t.stack.wait_for_access_log("the logged SSN hit", |e| {
        e["guard_hits"]
            .as_str()
            .is_some_and(|h| h.contains("watch-ssn:us_ssn:log"))
    });

    // A streamed request is masked the same way, and the stream still works.
    let response = post(
        &url,
        &chat("reach me at eve@example.org", r#""stream":true,"#),
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let upstream = t.alpha.recorded()[2].json().unwrap();
    assert_eq!(
        upstream["messages"][1]["content"],
        "reach me at [REDACTED:email]"
    );
}

const RESPONSE_GUARDS: &str = r#"guards:
  response:
    - name: no-ssn-out
      action: reject
      detectors: [us_ssn]
    - name: scrub-cards
      action: mask
      detectors: [credit_card]
"#;

/// The text of a streamed reply, and whether it ended with `[DONE]`.
fn streamed_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let event: serde_json::Value = serde_json::from_str(data).expect("each event is JSON");
        if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    (text, body.trim_end().ends_with("data: [DONE]"))
}

async fn response_guards_mask_and_reject_replies_json_and_streamed(path: PolicyPath) {
    let t = TwoProviders::start_on(path, RESPONSE_GUARDS).await;
    let url = t.stack.url("/v1/chat/completions");
    let ask = |reply: &'static str, stream: bool| {
        crate::http()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-mock-reply", reply)
            .header("x-mock-chunks", "12")
            .body(chat(
                "what is on file?",
                if stream { r#""stream":true,"# } else { "" },
            ))
            .send()
    };
    let card = "your card 4111 1111 1111 1111 is on file";

    // JSON: the card masked, the rest of the reply intact, usage still reported.
    let response = ask(card, false).await.unwrap();
    assert!(response.headers().contains_key("x-gantry-total-tokens"));
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "your card [REDACTED:credit_card] is on file"
    );
    assert_eq!(reply["model"], "alpha-1");
    t.stack.wait_for_access_log("the masked reply", |e| {
        e["response_guard_hits"]
            .as_str()
            .is_some_and(|h| h.contains("scrub-cards:credit_card:mask"))
    });

    // Streamed, the card split over the chunks: masked all the same.
    let body = ask(card, true).await.unwrap().text().await.unwrap();
    let (text, done) = streamed_text(&body);
    assert_eq!(
        text, "your card [REDACTED:credit_card] is on file",
        "{body}"
    );
    assert!(done, "{body}");
    assert!(!body.contains("4111"), "{body}");

    // JSON: an SSN refuses the whole reply, without echoing it.
    let ssn = "the number is 123-45-6789, keep it safe";
    let (status, reply) = json_of(ask(ssn, false).await.unwrap()).await;
    assert_eq!(status, 502, "{reply}");
    let message = assert_openai_error(&reply, "response_guard_rejected");
    assert!(message.contains("'no-ssn-out'"), "{message}");
    assert!(!reply.to_string().contains("6789"), "{reply}");

    // Streamed: the stream ends with an error event and [DONE], before the SSN.
    let response = ask(ssn, true).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("\"code\":\"response_guard_rejected\""),
        "{body}"
    );
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(body.matches("[DONE]").count(), 1, "{body}");
    assert!(
        !body.contains("6789") && !body.contains("keep it safe"),
        "{body}"
    );

    // An ordinary reply passes as it is.
    let (status, reply) = json_of(ask("all clear", false).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(reply["choices"][0]["message"]["content"], "all clear");
}

/// `when` conditions: a request guard off for callers with a header, a response guard only for
/// one model.
async fn guards_run_only_when_their_condition_holds(path: PolicyPath) {
    let t = TwoProviders::start_on(
        path,
        r#"guards:
  request:
    - name: strict-mail
      when: "!('x-trusted' in request.headers)"
      detectors: [email]
  response:
    - name: scrub-alpha
      action: mask
      when: llm.model == 'm-alpha'
      detectors: [email]
"#,
    )
    .await;
    let url = t.stack.url("/v1/chat/completions");
    let send = |model: &'static str, content: &'static str, trusted: bool| {
        let url = url.clone();
        async move {
            let mut request = crate::http()
                .post(&url)
                .header("content-type", "application/json")
                .header("x-mock-reply", "write to bob@example.com")
                .body(
                    serde_json::json!({
                        "model": model,
                        "messages": [{"role": "user", "content": content}],
                    })
                    .to_string(),
                );
            if trusted {
                request = request.header("x-trusted", "1");
            }
            json_of(request.send().await.expect("request")).await
        }
    };
    let (status, body) = send("m-alpha", "mail ann@example.com", false).await;
    assert_eq!(status, 400, "{body}");
    assert!(assert_openai_error(&body, "guard_rejected").contains("'strict-mail'"));
    let (status, body) = send("m-alpha", "mail ann@example.com", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "write to [REDACTED:email]",
        "{body}"
    );
    let (status, body) = send("m-beta", "hello", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "write to bob@example.com",
        "the response guard ran although its when condition was false: {body}"
    );
}
