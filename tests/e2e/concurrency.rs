//! Many requests at once, mixed: both providers, JSON and SSE, HTTP/1.1 and HTTP/2, and bad
//! requests among them. Every reply must belong to its own request (per-request state never
//! crosses streams) and the bad ones must not disturb the rest.

use std::time::Duration;

use futures::future::join_all;

use crate::TwoProviders;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Json { beta: bool },
    Stream { beta: bool },
    Malformed,
    UnknownModel,
}

async fn one(client: &reqwest::Client, url: &str, kind: Kind, i: usize) -> Result<(), String> {
    let body = match kind {
        Kind::Json { beta } | Kind::Stream { beta } => format!(
            r#"{{"model":"{}","stream":{},"messages":[{{"role":"user","content":"request {i}"}}]}}"#,
            alias_of(beta),
            matches!(kind, Kind::Stream { .. })
        ),
        Kind::Malformed => format!(r#"{{"model":"m-alpha","messages":[{i}"#),
        Kind::UnknownModel => format!(r#"{{"model":"nope-{i}","messages":[]}}"#),
    };
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("#{i} {kind:?}: {e}"))?;
    let status = response.status().as_u16();
    let provider = response
        .headers()
        .get("x-gantry-provider")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = response.text().await.map_err(|e| format!("#{i}: {e}"))?;
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "#{i} {kind:?}: {what}; status {status}, body {text}"
            ))
        }
    };
    match kind {
        Kind::Json { beta } => {
            check(status == 200, "status")?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| e.to_string())?;
            check(
                value["model"] == upstream_of(beta),
                "model of another request",
            )?;
            check(
                provider.as_deref() == Some(provider_of(beta)),
                "provider header",
            )
        }
        Kind::Stream { beta } => {
            check(status == 200, "status")?;
            check(
                text.contains(&format!("\"model\":\"{}\"", upstream_of(beta))),
                "model",
            )?;
            check(
                provider.as_deref() == Some(provider_of(beta)),
                "provider header",
            )?;
            check(!text.contains("usage"), "usage leaked into a stream")?;
            check(
                text.trim_end().ends_with("data: [DONE]"),
                "stream not finished",
            )
        }
        Kind::Malformed => check(
            status == 400 && text.contains("invalid_json"),
            "malformed JSON",
        ),
        Kind::UnknownModel => check(
            status == 404 && text.contains(&format!("'nope-{i}'")),
            "unknown model named in the error",
        ),
    }?;
    Ok(())
}

fn alias_of(beta: bool) -> &'static str {
    if beta {
        "m-beta"
    } else {
        "m-alpha"
    }
}
fn upstream_of(beta: bool) -> &'static str {
    if beta {
        "beta-1"
    } else {
        "alpha-1"
    }
}
fn provider_of(beta: bool) -> &'static str {
    if beta {
        "beta"
    } else {
        "alpha"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_requests_each_get_their_own_reply() {
    let t = TwoProviders::start("").await;
    let url = t.stack.url("/v1/chat/completions");
    let http1 = reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let kinds = [
        Kind::Json { beta: false },
        Kind::Json { beta: true },
        Kind::Stream { beta: false },
        Kind::Stream { beta: true },
        Kind::Malformed,
        Kind::UnknownModel,
    ];
    let requests = (0..120).map(|i| {
        let client = if i % 2 == 0 { &http1 } else { &http2 };
        one(client, &url, kinds[i % kinds.len()], i)
    });
    let failures: Vec<String> = join_all(requests)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Each provider saw exactly its own 40 requests, each with its own prompt and model.
    for (mock, beta) in [(&t.alpha, false), (&t.beta, true)] {
        let mut prompts: Vec<String> = mock
            .recorded()
            .iter()
            .map(|r| {
                let body = r.json().unwrap();
                assert_eq!(body["model"], upstream_of(beta));
                body["messages"][0]["content"].as_str().unwrap().to_string()
            })
            .collect();
        let mut expected: Vec<String> = (0..120)
            .filter(|i| {
                matches!(kinds[i % kinds.len()], Kind::Json { beta: b } | Kind::Stream { beta: b } if b == beta)
            })
            .map(|i| format!("request {i}"))
            .collect();
        prompts.sort();
        expected.sort();
        assert_eq!(prompts.len(), 40);
        assert_eq!(prompts, expected);
    }
}
