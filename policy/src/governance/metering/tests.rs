//! The metering of requests under policies compiled from YAML configs, with the store's
//! answers made by hand.

use jiff::Timestamp;
use serde_json::Value;

use super::*;
use crate::config::ConfigFile;

/// 2026-11-25 is a Wednesday.
const NOW: &str = "2026-11-25T13:47:12.345Z";

/// One user message "hello world" with `max_tokens: 100`: on gpt-4o-mini that is 9 input
/// tokens (OpenAI's own count), so 109 tokens and, at $0.15/$0.60 per million,
/// 9 * 150 + 100 * 600 = 61_350 nano-dollars.
const BODY: &str =
    r#"{"model":"fast","messages":[{"role":"user","content":"hello world"}],"max_tokens":100}"#;
const BODY_TOKENS: i64 = 109;
const BODY_NANOS: Nanos = 61_350;

const BUDGETS: &str = r#"
  budgets:
    - name: team-daily
      scope: '"team:" + principal.team'
      usd: 10
      window: day
    - name: key-hourly-tokens
      scope: '"key:" + principal.key'
      when: 'llm.model == "fast"'
      tokens: 1000
      window: hour
    - name: everyone-monthly
      scope: '"global"'
      usd: 1
      window: month
      action: audit
  rate_limits:
    - name: per-key
      scope: '"key:" + principal.key'
      requests_per_minute: 60
      tokens_per_minute: 10000
"#;

fn ms(text: &str) -> i64 {
    text.parse::<Timestamp>().unwrap().as_millisecond()
}

fn now() -> i64 {
    ms(NOW)
}

/// A full config with `governance` (its lines indented by two spaces).
fn config(governance: &str) -> String {
    format!(
        "\
listen: 127.0.0.1:10000
providers:
  - name: openai
    kind: openai
    endpoint: https://api.openai.com
    api_key_env: OPENAI_API_KEY
models:
  - name: fast
    provider: openai
    model: gpt-4o-mini
  - name: mystery
    provider: openai
    model: mystery-model-7b
governance:
  time_zone: UTC
{governance}"
    )
}

fn policy(governance: &str) -> GovernancePolicy {
    let text = config(governance);
    let config = ConfigFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    GovernancePolicy::compile(config.governance.as_ref().expect("governance section"))
        .expect("compiles")
}

fn caller() -> Caller {
    Caller {
        method: Some("api_key".into()),
        subject: Some("key:ci".into()),
        user: Some("alice".into()),
        team: Some("eng".into()),
        key: Some("ci".into()),
        ..Default::default()
    }
}

fn facts<'a>(caller: &'a Caller, model: &'a str, upstream: &'a str) -> ScopeFacts<'a> {
    ScopeFacts {
        caller,
        model,
        provider: "openai",
        upstream_model: upstream,
        end_user: None,
        method: "POST",
        path: "/v1/chat/completions",
        headers: &[],
    }
}

fn plan(policy: &GovernancePolicy, caller: &Caller) -> Metering {
    policy
        .plan(
            &facts(caller, "fast", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
        )
        .expect("planned")
}

fn refused(result: Result<Metering, Box<LocalReply>>) -> LocalReply {
    match result {
        Ok(metering) => panic!("planned: {:?}", metering.applied()),
        Err(reply) => *reply,
    }
}

fn error(reply: &LocalReply) -> Value {
    let body: Value = serde_json::from_slice(&reply.body).expect("JSON body");
    body["error"].clone()
}

fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn state(spent_nanos: Nanos, spent_tokens: i64) -> CounterState {
    CounterState {
        spent_nanos,
        spent_tokens,
        reserved_nanos: 0,
        reserved_tokens: 0,
    }
}

fn backlog(us: i64) -> RateState {
    RateState { backlog_us: us }
}

fn admitted(budgets: Vec<CounterState>, rates: Vec<RateState>) -> AdmissionOutcome {
    AdmissionOutcome {
        refused: None,
        budgets,
        rates,
    }
}

fn refusal(judgement: Judgement) -> (LocalReply, SpendOutcome) {
    match judgement {
        Judgement::Refused(reply, outcome) => (*reply, outcome),
        Judgement::Admitted => panic!("admitted"),
    }
}

#[test]
fn budgets_and_rate_limits_apply_by_scope_and_condition() {
    let policy = policy(BUDGETS);
    assert_eq!((policy.budget_count(), policy.rate_limit_count()), (3, 1));
    assert!(policy.counts_dollars());
    assert!(!policy.uses_request());

    let everything = plan(&policy, &caller());
    assert!(everything.needs_admission());
    assert_eq!(
        everything.applied(),
        vec![
            "budget team-daily (team:eng)",
            "budget key-hourly-tokens (key:ci)",
            "budget everyone-monthly (global)",
            "rate per-key (key:ci, requests)",
            "rate per-key (key:ci, tokens)",
        ]
    );

    // No team: the team budget does not apply; the rest does.
    let no_team = Caller {
        team: None,
        ..caller()
    };
    assert_eq!(
        plan(&policy, &no_team).applied(),
        vec![
            "budget key-hourly-tokens (key:ci)",
            "budget everyone-monthly (global)",
            "rate per-key (key:ci, requests)",
            "rate per-key (key:ci, tokens)",
        ]
    );

    // An anonymous caller meets only the global budget.
    let anonymous = plan(&policy, &Caller::default());
    assert_eq!(
        anonymous.applied(),
        vec!["budget everyone-monthly (global)"]
    );
    assert!(anonymous.needs_admission());

    // `when` is false for another model.
    let other = policy
        .plan(
            &facts(&caller(), "other", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
        )
        .expect("planned");
    assert_eq!(
        other.applied(),
        vec![
            "budget team-daily (team:eng)",
            "budget everyone-monthly (global)",
            "rate per-key (key:ci, requests)",
            "rate per-key (key:ci, tokens)",
        ]
    );

    // Nothing applies: nothing to ask the store.
    let team_only = self::policy(
        r#"
  budgets:
    - name: team-daily
      scope: '"team:" + principal.team'
      usd: 10
      window: day
"#,
    );
    let none = plan(&team_only, &Caller::default());
    assert!(!none.needs_admission());
    assert!(none.applied().is_empty());
    let admission = none.admission();
    assert!(admission.budgets.is_empty() && admission.rates.is_empty());
}

#[test]
fn admission_charges_each_window_with_the_estimate() {
    let policy = policy(BUDGETS);
    let metering = plan(&policy, &caller());
    assert_eq!(metering.estimate.input_tokens, 9);
    assert_eq!(metering.estimate.output_tokens, 100);
    assert_eq!(metering.estimate.input_tokens, 9);
    // Billed: the provider's usage when known, else the estimate (or the output seen).
    let usage = crate::usage::Usage {
        prompt_tokens: 12,
        completion_tokens: 3,
        total_tokens: 15,
        cached_tokens: 4,
    };
    assert_eq!(
        metering.billed_tokens(Some(usage), Some(1)),
        TokenCounts {
            input: 12,
            cached_input: 4,
            output: 3
        }
    );
    assert_eq!(
        metering.billed_tokens(None, None),
        TokenCounts {
            input: 9,
            cached_input: 0,
            output: 100
        }
    );
    assert_eq!(
        metering.billed_tokens(None, Some(2)),
        TokenCounts {
            input: 9,
            cached_input: 0,
            output: 2
        }
    );
    let price = metering.price.expect("gpt-4o-mini has a built-in price");
    assert_eq!(price.source, PriceSource::Builtin);
    assert_eq!(
        (price.price.input, price.price.output),
        (150_000_000, 600_000_000)
    );

    let admission = metering.admission();
    assert_eq!(admission.reservation, metering.reservation);
    assert_eq!(admission.now_ms, now());
    assert_eq!(metering.started_ms, now());
    assert_eq!(admission.lease_ms, 900_000, "the default lease");

    let day = ms("2026-11-25T00:00:00Z");
    let hour = ms("2026-11-25T13:00:00Z");
    assert_eq!(
        admission.budgets,
        vec![
            BudgetCharge {
                key: format!("b:team-daily:team:eng:{day}"),
                limit_nanos: Some(10 * NANOS_PER_USD),
                limit_tokens: None,
                nanos: BODY_NANOS,
                tokens: BODY_TOKENS,
                enforced: true,
                window_end_ms: Some(ms("2026-11-26T00:00:00Z")),
            },
            BudgetCharge {
                key: format!("b:key-hourly-tokens:key:ci:{hour}"),
                limit_nanos: None,
                limit_tokens: Some(1000),
                nanos: BODY_NANOS,
                tokens: BODY_TOKENS,
                enforced: true,
                window_end_ms: Some(ms("2026-11-25T14:00:00Z")),
            },
            BudgetCharge {
                key: format!("b:everyone-monthly:global:{}", ms("2026-11-01T00:00:00Z")),
                limit_nanos: Some(NANOS_PER_USD),
                limit_tokens: None,
                nanos: BODY_NANOS,
                tokens: BODY_TOKENS,
                enforced: false,
                window_end_ms: Some(ms("2026-12-01T00:00:00Z")),
            },
        ]
    );
    // 60 requests a minute: one costs a second; 10_000 tokens a minute: 109 tokens cost
    // 109 * 60 s / 10_000 = 0.654 s.
    assert_eq!(
        admission.rates,
        vec![
            RateCharge {
                key: "r:per-key:key:ci:req".into(),
                cost_us: 1_000_000,
                period_us: RATE_PERIOD_US,
            },
            RateCharge {
                key: "r:per-key:key:ci:tok".into(),
                cost_us: 654_000,
                period_us: RATE_PERIOD_US,
            },
        ]
    );

    // A later request in the next day charges a new counter; each plan has its own
    // reservation.
    let tomorrow = policy
        .plan(
            &facts(&caller(), "fast", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            ms("2026-11-26T00:00:00Z"),
        )
        .unwrap();
    let next = tomorrow.admission();
    assert_eq!(
        next.budgets[0].key,
        format!("b:team-daily:team:eng:{}", ms("2026-11-26T00:00:00Z"))
    );
    assert_ne!(next.reservation, admission.reservation);
}

#[test]
fn estimates_lease_and_long_scopes_follow_the_config() {
    let policy = policy(
        r#"
  estimates:
    default_output_tokens: 50
    reservation_lease_secs: 600
  budgets:
    - name: by-user
      scope: '"user:" + llm.user'
      tokens: 100000
      window: total
"#,
    );
    let caller = caller();
    let long_user = "u".repeat(200);
    let facts = ScopeFacts {
        end_user: Some(&long_user),
        ..facts(&caller, "fast", "gpt-4o-mini")
    };
    let body = r#"{"messages":[{"role":"user","content":"hello world"}]}"#;
    let metering = policy
        .plan(&facts, LlmApi::ChatCompletions, body.as_bytes(), now())
        .unwrap();
    assert_eq!(
        metering.estimate.output_tokens, 50,
        "the configured default"
    );
    let admission = metering.admission();
    assert_eq!(admission.lease_ms, 600_000);
    let charge = &admission.budgets[0];
    assert_eq!(charge.tokens, 59);
    assert_eq!(charge.window_end_ms, None, "total never resets");
    // A long scope is hashed into a short key; the window of `total` starts at 0.
    assert!(
        charge.key.starts_with("b:by-user:sha256:"),
        "{}",
        charge.key
    );
    assert!(charge.key.ends_with(":0"), "{}", charge.key);
    assert_eq!(charge.key.len(), "b:by-user:sha256:".len() + 64 + 2);
}

#[test]
fn a_budget_refusal_names_budget_scope_amounts_and_reset() {
    let policy = policy(BUDGETS);
    let mut metering = plan(&policy, &caller());
    let outcome = AdmissionOutcome {
        refused: Some(Refusal::Budget(0)),
        budgets: vec![
            CounterState {
                spent_nanos: 9_950_000_000,
                spent_tokens: 0,
                reserved_nanos: 50_000_000,
                reserved_tokens: 0,
            },
            state(0, 1_200),
            state(0, 0),
        ],
        rates: vec![backlog(0), backlog(0)],
    };
    let (reply, spend) = refusal(metering.judge(&outcome));
    assert_eq!(spend, SpendOutcome::BudgetExceeded);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, "budget_exceeded");
    let error = error(&reply);
    assert_eq!(error["code"], "budget_exceeded");
    assert_eq!(error["type"], "insufficient_quota");
    assert_eq!(
        error["message"],
        "Budget 'team-daily' for scope 'team:eng' (day window) is exhausted: $9.950000 spent and \
         $0.050000 reserved by requests in flight, of $10.000000; this request may cost up to \
         $0.000061. It resets at 2026-11-26T00:00:00Z."
    );
    // 10 h 12 min 47.655 s until midnight, rounded up.
    assert_eq!(header(&reply.headers, "retry-after"), Some("36768"));
    // The budget headers name the refusing budget, though the token budget looks tighter.
    assert_eq!(header(&reply.headers, BUDGET_HEADER), Some("team-daily"));
    assert_eq!(
        header(&reply.headers, BUDGET_REMAINING_USD_HEADER),
        Some("0.000000")
    );
    assert_eq!(
        header(&reply.headers, BUDGET_RESET_HEADER),
        Some("2026-11-26T00:00:00Z")
    );
    assert!(metering.audit_over.is_empty());
}

#[test]
fn a_token_budget_refusal_counts_tokens_and_a_total_window_never_resets() {
    let policy = policy(
        r#"
  budgets:
    - name: lifetime
      scope: '"key:" + principal.key'
      usd: 100
      tokens: 5000
      window: total
"#,
    );
    let mut metering = plan(&policy, &caller());
    let outcome = AdmissionOutcome {
        refused: Some(Refusal::Budget(0)),
        budgets: vec![state(NANOS_PER_USD, 4950)],
        rates: vec![],
    };
    let (reply, _) = refusal(metering.judge(&outcome));
    let message = error(&reply)["message"].as_str().unwrap().to_string();
    // Only the limit this request would pass is named: tokens, not dollars.
    assert_eq!(
        message,
        "Budget 'lifetime' for scope 'key:ci' (total window) is exhausted: 4950 tokens spent and \
         0 reserved, of 5000; this request may use up to 109. It does not reset (window: total)."
    );
    assert_eq!(header(&reply.headers, "retry-after"), None);
}

#[test]
fn a_rate_refusal_says_when_to_retry() {
    let policy = policy(BUDGETS);
    let mut metering = plan(&policy, &caller());
    // The request bucket is full (a minute of backlog): one request frees up in a second.
    let outcome = AdmissionOutcome {
        refused: Some(Refusal::Rate(0)),
        budgets: vec![state(0, 0); 3],
        rates: vec![backlog(RATE_PERIOD_US), backlog(6_000_000)],
    };
    let (reply, spend) = refusal(metering.judge(&outcome));
    assert_eq!(spend, SpendOutcome::RateLimited);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, "rate_limited");
    let error = error(&reply);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["type"], "requests");
    assert_eq!(
        error["message"],
        "Rate limit 'per-key' reached for scope 'key:ci': 60 requests per minute, 0 left, this \
         request needs 1. Please try again in 1s."
    );
    let headers = &reply.headers;
    assert_eq!(header(headers, "retry-after"), Some("1"));
    assert_eq!(header(headers, "x-ratelimit-limit-requests"), Some("60"));
    assert_eq!(header(headers, "x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(header(headers, "x-ratelimit-reset-requests"), Some("1m0s"));
    // 6 s of a 10_000-token minute are taken: 9_000 tokens left.
    assert_eq!(header(headers, "x-ratelimit-limit-tokens"), Some("10000"));
    assert_eq!(
        header(headers, "x-ratelimit-remaining-tokens"),
        Some("9000")
    );
    assert_eq!(header(headers, "x-ratelimit-reset-tokens"), Some("6s"));

    // The token bucket: 109 tokens cost 0.654 s; with 59.5 s of backlog they fit in 0.154 s.
    let mut metering = plan(&policy, &caller());
    let outcome = AdmissionOutcome {
        refused: Some(Refusal::Rate(1)),
        budgets: vec![state(0, 0); 3],
        rates: vec![backlog(1_000_000), backlog(59_500_000)],
    };
    let (reply, _) = refusal(metering.judge(&outcome));
    let error = self::error(&reply);
    assert_eq!(error["type"], "tokens");
    assert!(
        error["message"].as_str().unwrap().contains(
            "10000 tokens per minute, 83 left, this request needs 109. Please try again in 154ms."
        ),
        "{error}"
    );
    assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
}

#[test]
fn a_refusal_the_admission_cannot_name_still_refuses() {
    let policy = policy(BUDGETS);
    for (refused, expected) in [
        (Refusal::Budget(7), SpendOutcome::BudgetExceeded),
        (Refusal::Rate(7), SpendOutcome::RateLimited),
    ] {
        let mut metering = plan(&policy, &caller());
        let outcome = AdmissionOutcome {
            refused: Some(refused),
            budgets: vec![state(0, 0); 3],
            rates: vec![backlog(0); 2],
        };
        let (reply, spend) = refusal(metering.judge(&outcome));
        assert_eq!((reply.status, spend), (429, expected));
    }
}

#[test]
fn admitted_requests_get_the_tightest_budget_and_rate_limits() {
    let policy = policy(BUDGETS);
    let mut metering = plan(&policy, &caller());
    // Team budget half spent; the token budget at 90 %: the token budget is the tightest.
    let outcome = admitted(
        vec![
            CounterState {
                spent_nanos: 5 * NANOS_PER_USD - BODY_NANOS,
                spent_tokens: 0,
                reserved_nanos: BODY_NANOS,
                reserved_tokens: BODY_TOKENS,
            },
            CounterState {
                spent_nanos: 0,
                spent_tokens: 800,
                reserved_nanos: BODY_NANOS,
                reserved_tokens: 100,
            },
            state(0, 0),
        ],
        vec![backlog(30_000_000), backlog(654_000)],
    );
    assert!(matches!(metering.judge(&outcome), Judgement::Admitted));
    let headers = metering.headers.clone();
    assert_eq!(header(&headers, BUDGET_HEADER), Some("key-hourly-tokens"));
    assert_eq!(header(&headers, BUDGET_SCOPE_HEADER), Some("key:ci"));
    assert_eq!(header(&headers, BUDGET_LIMIT_TOKENS_HEADER), Some("1000"));
    assert_eq!(
        header(&headers, BUDGET_REMAINING_TOKENS_HEADER),
        Some("100")
    );
    assert_eq!(
        header(&headers, BUDGET_RESET_HEADER),
        Some("2026-11-25T14:00:00Z")
    );
    assert_eq!(header(&headers, BUDGET_LIMIT_USD_HEADER), None);
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), Some("60"));
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("30")
    );
    assert_eq!(header(&headers, "x-ratelimit-reset-requests"), Some("30s"));
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-tokens"),
        Some("9891")
    );
    assert_eq!(header(&headers, "x-ratelimit-reset-tokens"), Some("654ms"));
    assert_eq!(header(&headers, "retry-after"), None);
    assert!(metering.audit_over.is_empty());

    // The other way round: the dollar budget is the tightest.
    let mut metering = plan(&policy, &caller());
    let outcome = admitted(
        vec![state(9_750_000_000, 0), state(0, 100), state(0, 0)],
        vec![backlog(0), backlog(0)],
    );
    assert!(matches!(metering.judge(&outcome), Judgement::Admitted));
    let headers = &metering.headers;
    assert_eq!(header(headers, BUDGET_HEADER), Some("team-daily"));
    assert_eq!(header(headers, BUDGET_SCOPE_HEADER), Some("team:eng"));
    assert_eq!(header(headers, BUDGET_LIMIT_USD_HEADER), Some("10.000000"));
    assert_eq!(
        header(headers, BUDGET_REMAINING_USD_HEADER),
        Some("0.250000")
    );
    assert_eq!(
        header(headers, BUDGET_RESET_HEADER),
        Some("2026-11-26T00:00:00Z")
    );
    assert_eq!(header(headers, BUDGET_LIMIT_TOKENS_HEADER), None);
    assert_eq!(
        header(headers, "x-ratelimit-remaining-requests"),
        Some("60")
    );
}

#[test]
fn audit_budgets_over_their_limit_are_listed_but_admitted() {
    let policy = policy(BUDGETS);
    let mut metering = plan(&policy, &caller());
    let outcome = admitted(
        vec![
            state(0, 0),
            state(0, 0),
            // $1.50 of a $1 audit budget.
            state(1_500_000_000, 0),
        ],
        vec![backlog(0), backlog(0)],
    );
    assert!(matches!(metering.judge(&outcome), Judgement::Admitted));
    assert_eq!(metering.audit_over, vec!["everyone-monthly (global)"]);
    // The headers name a budget that can refuse the client, not the audit one.
    assert_ne!(
        header(&metering.headers, BUDGET_HEADER),
        Some("everyone-monthly")
    );

    // Exactly at the limit is not over it.
    let mut metering = plan(&policy, &caller());
    let outcome = admitted(
        vec![state(0, 0), state(0, 0), state(NANOS_PER_USD, 0)],
        vec![backlog(0), backlog(0)],
    );
    assert!(matches!(metering.judge(&outcome), Judgement::Admitted));
    assert!(metering.audit_over.is_empty());

    // With only audit budgets, the headers report the tightest of them.
    let audit_only = self::policy(
        r#"
  budgets:
    - name: watch
      scope: '"global"'
      usd: 2
      window: week
      action: audit
"#,
    );
    let mut metering = plan(&audit_only, &caller());
    let outcome = admitted(vec![state(3 * NANOS_PER_USD, 0)], vec![]);
    assert!(matches!(metering.judge(&outcome), Judgement::Admitted));
    assert_eq!(metering.audit_over, vec!["watch (global)"]);
    assert_eq!(header(&metering.headers, BUDGET_HEADER), Some("watch"));
    assert_eq!(
        header(&metering.headers, BUDGET_REMAINING_USD_HEADER),
        Some("0.000000")
    );
    assert_eq!(
        header(&metering.headers, BUDGET_RESET_HEADER),
        Some("2026-11-30T00:00:00Z")
    );
}

#[test]
fn scopes_from_the_client_are_safe_header_values() {
    let policy = policy(
        r#"
  budgets:
    - name: by-user
      scope: '"user:" + llm.user'
      tokens: 1000
      window: day
"#,
    );
    let caller = caller();
    let facts = ScopeFacts {
        end_user: Some("eve\r\nx-evil: 1 é%"),
        ..facts(&caller, "fast", "gpt-4o-mini")
    };
    let mut metering = policy
        .plan(&facts, LlmApi::ChatCompletions, BODY.as_bytes(), now())
        .unwrap();
    assert!(matches!(
        metering.judge(&admitted(vec![state(0, 0)], vec![])),
        Judgement::Admitted
    ));
    assert_eq!(
        header(&metering.headers, BUDGET_SCOPE_HEADER),
        Some("user:eve%0D%0Ax-evil:%201%20%C3%A9%25")
    );
}

#[test]
fn a_model_without_a_price_is_refused_under_a_dollar_budget() {
    let policy = policy(BUDGETS);
    let result = policy.plan(
        &facts(&caller(), "mystery", "mystery-model-7b"),
        LlmApi::ChatCompletions,
        BODY.as_bytes(),
        now(),
    );
    let reply = refused(result);
    assert_eq!(reply.status, 400);
    let error = error(&reply);
    assert_eq!(error["code"], "model_not_priced");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "model");
    let message = error["message"].as_str().unwrap();
    for needle in [
        "'mystery'",
        "'mystery-model-7b'",
        "'openai'",
        "budget 'team-daily'",
    ] {
        assert!(message.contains(needle), "{needle} in {message}");
    }

    // An audit dollar budget alone does not refuse: it counts no dollars for the model.
    let metering = policy
        .plan(
            &facts(&Caller::default(), "mystery", "mystery-model-7b"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
        )
        .expect("only the audit budget applies");
    assert_eq!(metering.applied(), vec!["budget everyone-monthly (global)"]);
    assert_eq!(metering.admission().budgets[0].nanos, 0);

    // Under token budgets only, no price is needed: no dollars are counted.
    let tokens_only = self::policy(
        r#"
  budgets:
    - name: key-tokens
      scope: '"key:" + principal.key'
      tokens: 1000
      window: day
"#,
    );
    let metering = tokens_only
        .plan(
            &facts(&caller(), "mystery", "mystery-model-7b"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
        )
        .expect("planned");
    assert!(metering.price.is_none());
    assert_eq!(metering.admission().budgets[0].nanos, 0);
    assert!(metering.admission().budgets[0].tokens > 0);
}

const DEFAULT_PRICE: &str = r#"
  pricing:
    default:
      input: 1.0
      output: 2.0
    unpriced: UNPRICED
  budgets:
    - name: team-daily
      scope: '"team:" + principal.team'
      usd: 10
      window: day
"#;

#[test]
fn unpriced_default_prices_a_model_by_the_default() {
    let policy = policy(&DEFAULT_PRICE.replace("UNPRICED", "default"));
    let metering = policy
        .plan(
            &facts(&caller(), "mystery", "mystery-model-7b"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
        )
        .expect("priced by the default");
    let price = metering.price.expect("priced");
    assert_eq!(price.source, PriceSource::Default);
    // Characters estimate for a model without a tokenizer, at $1 / $2 per million tokens.
    let estimate = metering.estimate;
    assert_eq!(estimate.output_tokens, 100);
    let charge = &metering.admission().budgets[0];
    assert_eq!(
        charge.nanos,
        (estimate.input_tokens * 1_000 + 100 * 2_000) as Nanos
    );
}

#[test]
fn unpriced_refuse_does_not_fall_back_to_the_default_under_a_dollar_budget() {
    let policy = policy(&DEFAULT_PRICE.replace("UNPRICED", "refuse"));
    let reply = refused(policy.plan(
        &facts(&caller(), "mystery", "mystery-model-7b"),
        LlmApi::ChatCompletions,
        BODY.as_bytes(),
        now(),
    ));
    assert_eq!(error(&reply)["code"], "model_not_priced");
    // A caller no dollar budget applies to goes on, and its spend is priced by the default.
    let metering = policy
        .plan(
            &facts(&Caller::default(), "mystery", "mystery-model-7b"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
        )
        .expect("no budget applies");
    assert!(!metering.needs_admission());
    let tokens = TokenCounts {
        input: 1_000_000,
        cached_input: 0,
        output: 0,
    };
    assert_eq!(metering.cost(&tokens), NANOS_PER_USD);
}

#[test]
fn a_request_larger_than_a_whole_token_rate_limit_is_refused() {
    let policy = policy(
        r#"
  rate_limits:
    - name: small
      scope: '"key:" + principal.key'
      requests_per_minute: 10
      tokens_per_minute: 100
"#,
    );
    // 109 tokens never fit in 100 a minute.
    let reply = refused(policy.plan(
        &facts(&caller(), "fast", "gpt-4o-mini"),
        LlmApi::ChatCompletions,
        BODY.as_bytes(),
        now(),
    ));
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, "rate_limited");
    let error = error(&reply);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["type"], "tokens");
    assert_eq!(
        error["message"],
        "Request too large: rate limit 'small' (scope 'key:ci') allows 100 tokens per minute, \
         and this request needs up to 109. Lower max_tokens or the prompt size."
    );
    assert_eq!(
        header(&reply.headers, "retry-after"),
        None,
        "retrying cannot help"
    );

    // Exactly the limit fits.
    let fits = BODY.replace("\"max_tokens\":100", "\"max_tokens\":91");
    let metering = policy
        .plan(
            &facts(&caller(), "fast", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            fits.as_bytes(),
            now(),
        )
        .expect("fits");
    assert_eq!(metering.admission().rates[1].cost_us, RATE_PERIOD_US);
}

#[test]
fn a_failed_over_request_is_billed_and_logged_as_the_target_that_served_it() {
    let policy = policy(BUDGETS);
    let mut metering = plan(&policy, &caller());
    let tokens = TokenCounts {
        input: 1_000_000,
        cached_input: 0,
        output: 0,
    };
    let planned = metering.cost(&tokens);
    policy.served_by(&mut metering, "backup", "gpt-4o");
    let record = metering.spend_record("r1", &tokens, 200, SpendOutcome::Ok, false, now());
    assert_eq!(
        (record.provider.as_str(), record.upstream_model.as_str()),
        ("backup", "gpt-4o")
    );
    assert_eq!(record.model, "fast");
    // gpt-4o's list price per million input tokens is above gpt-4o-mini's.
    assert!(
        record.cost_nanos > planned,
        "{} <= {planned}",
        record.cost_nanos
    );
    // A target without a price keeps the planned one.
    let mut metering = plan(&policy, &caller());
    policy.served_by(&mut metering, "local", "mystery-model-7b");
    assert_eq!(metering.cost(&tokens), planned);
}

#[test]
fn settlement_charges_actual_usage_and_gives_tokens_back() {
    let policy = policy(BUDGETS);
    let metering = plan(&policy, &caller());
    let admission = metering.admission();
    let actual = TokenCounts {
        input: 9,
        cached_input: 4,
        output: 40,
    };
    // 5 * 150 + 4 * 75 + 40 * 600 nanos.
    assert_eq!(metering.cost(&actual), 25_050);
    let later = now() + 2_500;
    let settlement = metering.settlement(Some(&actual), later);
    assert_eq!(settlement.reservation, metering.reservation);
    assert_eq!(settlement.now_ms, later);
    assert_eq!(settlement.budgets.len(), 3);
    for (settle, charge) in settlement.budgets.iter().zip(&admission.budgets) {
        assert_eq!(
            settle,
            &BudgetSettle {
                key: charge.key.clone(),
                reserved_nanos: BODY_NANOS,
                reserved_tokens: BODY_TOKENS,
                actual_nanos: 25_050,
                actual_tokens: 49,
                window_end_ms: charge.window_end_ms,
            }
        );
    }
    // Only the token bucket is corrected: 49 tokens cost 0.294 s instead of 0.654 s.
    assert_eq!(
        settlement.rates,
        vec![RateSettle {
            key: "r:per-key:key:ci:tok".into(),
            adjust_us: 294_000 - 654_000,
            period_us: RATE_PERIOD_US,
        }]
    );

    // More than estimated: charged in full, the bucket moves forward.
    let more = TokenCounts {
        input: 200,
        cached_input: 0,
        output: 100,
    };
    let settlement = metering.settlement(Some(&more), later);
    assert_eq!(settlement.budgets[0].actual_tokens, 300);
    assert_eq!(settlement.budgets[0].actual_nanos, 200 * 150 + 100 * 600);
    assert_eq!(settlement.rates[0].adjust_us, 1_800_000 - 654_000);

    // A release charges nothing and gives every reserved token back.
    let release = metering.settlement(None, later);
    for settle in &release.budgets {
        assert_eq!((settle.actual_nanos, settle.actual_tokens), (0, 0));
        assert_eq!(
            (settle.reserved_nanos, settle.reserved_tokens),
            (BODY_NANOS, BODY_TOKENS)
        );
    }
    assert_eq!(release.rates[0].adjust_us, -654_000);
}

#[test]
fn an_unreachable_store_refuses_only_where_the_failure_mode_is_closed() {
    let closed = policy(BUDGETS);
    let metering = plan(&closed, &caller());
    let reply = metering
        .store_unavailable("connection refused")
        .expect("closed by default");
    assert_eq!(reply.status, 503);
    assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
    let error = error(&reply);
    assert_eq!(error["code"], "gantry_store_unavailable");
    assert_eq!(error["type"], "server_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("budgets") && message.contains("connection refused"),
        "{message}"
    );

    let budgets_open = policy(&format!("  failure_mode:\n    budgets: open\n{BUDGETS}"));
    let metering = plan(&budgets_open, &caller());
    let reply = metering
        .store_unavailable("timeout")
        .expect("rate limits closed");
    let message = self::error(&reply)["message"].as_str().unwrap().to_string();
    assert!(message.contains("rate limits"), "{message}");
    // An anonymous caller meets only the (open) budget.
    assert!(plan(&budgets_open, &Caller::default())
        .store_unavailable("timeout")
        .is_none());

    let all_open = policy(&format!(
        "  failure_mode:\n    budgets: open\n    rate_limits: open\n{BUDGETS}"
    ));
    assert!(plan(&all_open, &caller())
        .store_unavailable("timeout")
        .is_none());

    let rates_open = policy(&format!(
        "  failure_mode:\n    rate_limits: open\n{BUDGETS}"
    ));
    assert!(plan(&rates_open, &caller())
        .store_unavailable("timeout")
        .is_some());
    // Closed budgets do not matter to a request only open rate limits apply to.
    let rates_only = policy(
        r#"
  failure_mode:
    rate_limits: open
  rate_limits:
    - name: per-key
      scope: '"key:" + principal.key'
      requests_per_minute: 60
"#,
    );
    let metering = plan(&rates_only, &caller());
    assert!(metering.needs_admission());
    assert!(metering.store_unavailable("timeout").is_none());
}

#[test]
fn the_spend_record_names_the_caller_and_prices_the_usage() {
    let policy = policy(BUDGETS);
    let metering = plan(&policy, &caller());
    let tokens = TokenCounts {
        input: 1_000,
        cached_input: 200,
        output: 300,
    };
    let record =
        metering.spend_record("req-1", &tokens, 200, SpendOutcome::Ok, true, now() + 1_234);
    assert_eq!(
        record,
        SpendRecord {
            time_ms: now(),
            request_id: "req-1".into(),
            subject: "key:ci".into(),
            user: "alice".into(),
            team: "eng".into(),
            api_key: "ci".into(),
            model: "fast".into(),
            upstream_model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            input_tokens: 1_000,
            cached_input_tokens: 200,
            output_tokens: 300,
            // 800 * 150 + 200 * 75 + 300 * 600
            cost_nanos: 315_000,
            status: 200,
            outcome: SpendOutcome::Ok,
            latency_ms: 1_234,
            stream: true,
        }
    );
    // A clock that went back gives a latency of zero, not an underflow.
    let record = metering.spend_record(
        "",
        &TokenCounts::default(),
        429,
        SpendOutcome::RateLimited,
        false,
        now() - 5,
    );
    assert_eq!((record.latency_ms, record.cost_nanos), (0, 0));
    assert_eq!(record.subject, "key:ci");
}

#[test]
fn dollars_and_durations_are_formatted_for_people() {
    assert_eq!(format_usd(0), "0.000000");
    assert_eq!(format_usd(10 * NANOS_PER_USD), "10.000000");
    assert_eq!(format_usd(12_345_678_901), "12.345679");
    assert_eq!(format_usd(499), "0.000000");
    assert_eq!(format_usd(500), "0.000001");
    assert_eq!(format_usd(-1_500_000_000), "-1.500000");
    assert_eq!(format_usd(-400), "0.000000", "no negative zero");
    assert_eq!(format_usd(-600), "-0.000001");
    assert_eq!(format_usd(Nanos::MIN), "-9223372036.854776");

    assert_eq!(format_reset(-5), "0ms");
    assert_eq!(format_reset(0), "0ms");
    assert_eq!(format_reset(1), "1ms");
    assert_eq!(format_reset(20_000), "20ms");
    assert_eq!(format_reset(999_000), "999ms");
    assert_eq!(format_reset(999_001), "1s");
    assert_eq!(format_reset(1_000_000), "1s");
    assert_eq!(format_reset(1_000_001), "2s");
    assert_eq!(format_reset(59_000_000), "59s");
    assert_eq!(format_reset(60_000_000), "1m0s");
    assert_eq!(format_reset(360_000_000), "6m0s");
    assert_eq!(format_reset(3_725_000_000), "1h2m5s");
    assert_eq!(format_reset(i64::MAX), "2562047788h0m55s");
}

#[test]
fn header_values_keep_visible_ascii_only() {
    assert_eq!(header_value("team:eng-1_a.b/c"), "team:eng-1_a.b/c");
    assert_eq!(header_value("a b"), "a%20b");
    assert_eq!(header_value("100%"), "100%25");
    assert_eq!(header_value("\u{7f}\t"), "%7F%09");
    assert_eq!(header_value("日"), "%E6%97%A5");
}

#[test]
fn audit_budgets_alone_do_not_refuse_when_the_store_is_down() {
    // The anonymous caller meets only `everyone-monthly`, an audit budget; failure mode closed.
    let closed = policy(BUDGETS);
    let metering = plan(&closed, &Caller::default());
    assert!(
        metering.needs_admission(),
        "the audit budget is still counted"
    );
    assert!(metering.store_unavailable("connection refused").is_none());
}

#[test]
fn a_request_larger_than_a_whole_budget_is_refused_before_the_store() {
    let small = policy(
        r#"
  budgets:
    - { name: tiny-tokens, scope: '"global"', tokens: 100, window: day }
"#,
    );
    let reply = refused(small.plan(
        &facts(&caller(), "fast", "gpt-4o-mini"),
        LlmApi::ChatCompletions,
        BODY.as_bytes(),
        now(),
    ));
    assert_eq!(reply.status, 429);
    assert_eq!(
        header(&reply.headers, "retry-after"),
        None,
        "waiting cannot help"
    );
    let error = error(&reply);
    assert_eq!(error["code"], "budget_exceeded");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{BODY_TOKENS} tokens"))
            && message.contains("tiny-tokens")
            && message.contains("100 tokens"),
        "{message}"
    );

    let small_usd = policy(
        r#"
  budgets:
    - { name: tiny-usd, scope: '"global"', usd: 0.00005, window: day }
"#,
    );
    let reply = refused(small_usd.plan(
        &facts(&caller(), "fast", "gpt-4o-mini"),
        LlmApi::ChatCompletions,
        BODY.as_bytes(),
        now(),
    ));
    let message = self::error(&reply)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("$0.000061") && message.contains("$0.000050"),
        "{message}"
    );

    // An audit budget never refuses, however small.
    let audit = policy(
        r#"
  budgets:
    - { name: tiny-audit, scope: '"global"', tokens: 1, window: day, action: audit }
"#,
    );
    assert!(audit
        .plan(
            &facts(&caller(), "fast", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
        )
        .is_ok());
}

#[test]
fn the_end_user_is_read_from_the_body_for_llm_user_scopes() {
    let per_user = policy(
        r#"
  budgets:
    - { name: per-user, scope: '"user:" + llm.user', tokens: 100000, window: day }
"#,
    );
    let body = r#"{"model":"fast","user":"bob","messages":[{"role":"user","content":"hello world"}],"max_tokens":100}"#;
    let metering = per_user
        .plan(
            &facts(&caller(), "fast", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            body.as_bytes(),
            now(),
        )
        .expect("planned");
    assert_eq!(
        metering.applied(),
        vec!["budget per-user (user:bob)".to_string()]
    );
    // The same body parse feeds the estimate.
    assert_eq!(metering.estimate.input_tokens, 9);
    // Without a `user` field the scope does not apply.
    assert!(!plan(&per_user, &caller()).needs_admission());
}

#[test]
fn a_logged_request_without_budgets_is_still_estimated_for_its_billing() {
    // Only a request rate limit applies: nothing reserves tokens, but a reply without usage
    // (or an abort) is billed from the estimate in the spend log.
    let rates_only = policy(
        r#"
  rate_limits:
    - { name: per-key, scope: '"key:" + principal.key', requests_per_minute: 60 }
"#,
    );
    let metering = plan(&rates_only, &caller());
    assert_eq!(
        metering.billed_tokens(None, Some(0)),
        TokenCounts {
            input: 9,
            cached_input: 0,
            output: 0
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Budgets created through the admin API

fn runtime_budgets(budgets: &[crate::admin::BudgetRecord]) -> crate::admin::RuntimeDirectory {
    use crate::admin::stored::{AdminRecords, RecordKind, StoredRecord};
    crate::admin::RuntimeDirectory::compile(&AdminRecords {
        version: 1,
        records: budgets
            .iter()
            .map(|b| StoredRecord {
                kind: RecordKind::Budget,
                id: b.name.clone(),
                revision: 1,
                json: serde_json::to_string(b).unwrap(),
            })
            .collect(),
    })
}

fn runtime_budget(name: &str, subject: &str, usd: f64) -> crate::admin::BudgetRecord {
    crate::admin::BudgetRecord {
        name: name.into(),
        subject: crate::admin::Subject::parse(subject).unwrap(),
        usd: Some(usd),
        tokens: None,
        window: BudgetWindow::Month,
        audit_only: false,
        updated_ms: now(),
        updated_by: "admin".into(),
    }
}

#[test]
fn runtime_budgets_on_the_callers_key_user_and_team_apply_after_the_configs() {
    let policy = policy(BUDGETS);
    let runtime = runtime_budgets(&[
        runtime_budget("ci-monthly", "key:ci", 5.0),
        runtime_budget("alice-monthly", "user:alice", 5.0),
        runtime_budget("eng-monthly", "team:eng", 0.00005),
        runtime_budget("other-team", "team:sales", 5.0),
        // The config declares this name: the config's budget applies, this one does not.
        runtime_budget("team-daily", "team:eng", 1.0),
    ]);
    let caller = caller();
    let metering = policy
        .plan_with(
            &facts(&caller, "fast", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
            &runtime,
        )
        .err()
        .map(|reply| error(&reply));
    // eng-monthly ($0.00005) is smaller than the request's estimate: refused before the store.
    let refusal = metering.expect("the tiny team budget refuses");
    assert_eq!(refusal["code"], "budget_exceeded");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("budget 'eng-monthly' for scope 'team:eng'"),
        "{refusal}"
    );

    let runtime = runtime_budgets(&[
        runtime_budget("ci-monthly", "key:ci", 5.0),
        runtime_budget("alice-monthly", "user:alice", 5.0),
        runtime_budget("team-daily", "team:eng", 1.0),
    ]);
    let metering = policy
        .plan_with(
            &facts(&caller, "fast", "gpt-4o-mini"),
            LlmApi::ChatCompletions,
            BODY.as_bytes(),
            now(),
            &runtime,
        )
        .expect("planned");
    assert_eq!(
        metering.applied(),
        [
            "budget team-daily (team:eng)",
            "budget key-hourly-tokens (key:ci)",
            "budget everyone-monthly (global)",
            "budget ci-monthly (key:ci)",
            "budget alice-monthly (user:alice)",
            "rate per-key (key:ci, requests)",
            "rate per-key (key:ci, tokens)",
        ]
    );
    let keys: Vec<String> = metering
        .admission()
        .budgets
        .iter()
        .map(|b| b.key.clone())
        .collect();
    // The month starting 2026-11-01 (the ledger key names the window's start).
    assert!(
        keys.contains(&"b:ci-monthly:key:ci:1793491200000".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"b:alice-monthly:user:alice:1793491200000".to_string()),
        "{keys:?}"
    );

    let status = policy.budgets_applying(&facts(&caller, "fast", "gpt-4o-mini"), now(), &runtime);
    let names: Vec<(&str, bool)> = status
        .iter()
        .map(|b| (b.name.as_str(), b.runtime))
        .collect();
    assert_eq!(
        names,
        [
            ("team-daily", false),
            ("key-hourly-tokens", false),
            ("everyone-monthly", false),
            ("ci-monthly", true),
            ("alice-monthly", true),
        ]
    );
    assert_eq!(status[3].resets_at_ms, Some(ms("2026-12-01T00:00:00Z")));
    assert_eq!(
        status[3].counter_key, "b:ci-monthly:key:ci:1793491200000",
        "as admitted"
    );
    assert!(policy.has_budget("team-daily") && !policy.has_budget("ci-monthly"));
}
