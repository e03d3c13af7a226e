//! Identity and access through real Envoy: Gantry's ext_authz server decides, Envoy enforces.
//! API keys, JWTs against a live JWKS endpoint, client certificates, CEL rules, CORS, and the
//! identity headers a client must never be able to spoof.

use std::time::Duration;

use gantry_mock_provider::MockProvider;
use gantry_policy::auth::api_keys::KeyHash;
use gantry_testkit::jwks_server::JwksServer;
use gantry_testkit::jwt::{alg_none, tamper_payload, unix_now, TestIssuer};
use gantry_testkit::tls::TestCa;
use gantry_testkit::{free_ports, GantryStack, StackPorts};
use serde_json::{json, Value};

use crate::{assert_openai_error, http, json_of, start_mock, start_stack};

const ALICE: &str = "gk_alice_test_key";
const BOB: &str = "gk_bob_test_key";
const OLD: &str = "gk_expired_test_key";
const OFF: &str = "gk_disabled_test_key";
const IDENTITY_HEADERS: [&str; 5] = [
    "x-gantry-subject",
    "x-gantry-user",
    "x-gantry-team",
    "x-gantry-key",
    "x-gantry-auth-method",
];

/// One mock provider serving `fast` and `smart`, behind `gantry run` with `auth` (and `extra`
/// top-level sections).
async fn secured_stack(auth: &str, extra: &str) -> (GantryStack, MockProvider) {
    let mock = start_mock("mock", None).await;
    let ports = StackPorts::free();
    let auth_port = free_ports(1)[0];
    let yaml = format!(
        "{head}providers:
  - {{ name: mock, kind: openai, endpoint: '{url}' }}
models:
  - {{ name: fast, provider: mock, model: mock-small }}
  - {{ name: smart, provider: mock, model: mock-large }}
auth:
  listen: 127.0.0.1:{auth_port}
{auth}{extra}",
        head = ports.config_head(),
        url = mock.base_url(),
    );
    (start_stack(ports, yaml, vec![]).await, mock)
}

fn api_keys_section() -> String {
    format!(
        "  api_keys:
    - {{ name: alice-key, hash: '{}', user: alice, team: research, models: [fast], labels: {{ tier: gold }} }}
    - {{ name: bob-key, hash: '{}', user: bob }}
    - {{ name: old-key, hash: '{}', expires_at: '2021-06-01T00:00:00Z' }}
    - {{ name: off-key, hash: '{}', enabled: false }}
",
        KeyHash::of(ALICE),
        KeyHash::of(BOB),
        KeyHash::of(OLD),
        KeyHash::of(OFF),
    )
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

async fn send(
    stack: &GantryStack,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> reqwest::Response {
    let client = http();
    let mut request = match &body {
        Some(_) => client.post(stack.url(path)),
        None => client.get(stack.url(path)),
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    request.send().await.expect("request reaches the gateway")
}

/// The last request the mock received, as a header lookup.
fn last_upstream_headers(mock: &MockProvider) -> Vec<(String, String)> {
    mock.recorded()
        .last()
        .expect("the provider received a request")
        .headers
        .clone()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Asserts a 401 with a Bearer challenge and an OpenAI error with `code`; returns the message.
async fn assert_unauthorized(response: reqwest::Response, code: &str) -> String {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = json_of(response).await;
    assert_eq!(status, 401, "{body}");
    let challenge = challenge.expect("401 carries WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"gantry\""),
        "{challenge}"
    );
    assert_openai_error(&body, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_admit_refuse_and_carry_the_principal_upstream() {
    let (stack, mock) = secured_stack(&api_keys_section(), "").await;
    let chat_path = "/v1/chat/completions";

    // Allowed, with the key in x-api-key; the principal goes upstream, the key does not.
    let response = send(
        &stack,
        chat_path,
        &[("x-api-key", ALICE)],
        Some(chat("fast")),
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let upstream = last_upstream_headers(&mock);
    assert_eq!(header(&upstream, "x-gantry-subject"), Some("alice"));
    assert_eq!(header(&upstream, "x-gantry-team"), Some("research"));
    assert_eq!(header(&upstream, "x-gantry-key"), Some("alice-key"));
    assert_eq!(header(&upstream, "x-gantry-auth-method"), Some("api_key"));
    assert_eq!(header(&upstream, "x-api-key"), None, "{upstream:?}");
    assert_eq!(header(&upstream, "authorization"), None, "{upstream:?}");
    let logged = stack.wait_for_access_log("alice's request", |e| e["api_key"] == "alice-key");
    assert_eq!(logged["subject"], "alice");

    // The same key as a bearer token; /v1/models lists only the key's models.
    let response = send(
        &stack,
        "/v1/models",
        &[("authorization", &format!("Bearer {ALICE}"))],
        None,
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fast"], "{body}");

    // Not allowed for the model: 403, nothing reaches the provider.
    let before = mock.recorded().len();
    let response = send(
        &stack,
        chat_path,
        &[("x-api-key", ALICE)],
        Some(chat("smart")),
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 403, "{body}");
    let message = assert_openai_error(&body, "model_not_allowed");
    assert!(message.contains("'smart'"), "{message}");

    // Unknown, expired, disabled, missing, unsupported scheme: 401 with a challenge.
    let unknown = send(
        &stack,
        chat_path,
        &[("x-api-key", "gk_nobody")],
        Some(chat("fast")),
    )
    .await;
    assert_unauthorized(unknown, "invalid_api_key").await;
    let expired = send(
        &stack,
        chat_path,
        &[("authorization", &format!("Bearer {OLD}"))],
        Some(chat("fast")),
    )
    .await;
    let message = assert_unauthorized(expired, "expired_api_key").await;
    assert!(message.contains("2021-06-01T00:00:00Z"), "{message}");
    let disabled = send(&stack, chat_path, &[("x-api-key", OFF)], Some(chat("fast"))).await;
    assert_unauthorized(disabled, "disabled_api_key").await;
    let missing = send(&stack, chat_path, &[], Some(chat("fast"))).await;
    assert_unauthorized(missing, "missing_credentials").await;
    let basic = send(
        &stack,
        chat_path,
        &[("authorization", "Basic YWxpY2U6cHc=")],
        Some(chat("fast")),
    )
    .await;
    assert_unauthorized(basic, "unsupported_credentials").await;
    assert_eq!(
        mock.recorded().len(),
        before,
        "a refused request reached the provider"
    );

    // Spoofing: every identity header set by the client is overwritten or removed. Bob's key
    // has no team, so the spoofed team must vanish rather than pass through.
    let spoofed: Vec<(&str, &str)> = IDENTITY_HEADERS.iter().map(|h| (*h, "mallory")).collect();
    let mut with_key = spoofed.clone();
    with_key.push(("x-api-key", BOB));
    let response = send(&stack, chat_path, &with_key, Some(chat("smart"))).await;
    assert_eq!(response.status(), 200);
    let upstream = last_upstream_headers(&mock);
    assert_eq!(header(&upstream, "x-gantry-subject"), Some("bob"));
    assert_eq!(header(&upstream, "x-gantry-user"), Some("bob"));
    assert_eq!(header(&upstream, "x-gantry-key"), Some("bob-key"));
    assert_eq!(header(&upstream, "x-gantry-auth-method"), Some("api_key"));
    assert_eq!(header(&upstream, "x-gantry-team"), None, "{upstream:?}");
    for name in IDENTITY_HEADERS {
        assert!(
            upstream
                .iter()
                .filter(|(k, _)| k == name)
                .all(|(_, v)| v != "mallory"),
            "spoofed {name} reached the provider: {upstream:?}"
        );
    }
    // Without credentials the spoofed headers buy nothing.
    let response = send(&stack, chat_path, &spoofed, Some(chat("fast"))).await;
    assert_unauthorized(response, "missing_credentials").await;

    // A 3 MB prompt passes through ext_authz (which reads the model) and ext_proc.
    let big =
        json!({"model": "fast", "messages": [{"role": "user", "content": "x".repeat(3 << 20)}]})
            .to_string();
    let response = send(&stack, chat_path, &[("x-api-key", ALICE)], Some(big)).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    // Above the 4 MiB limit: an OpenAI error, not a hang.
    let huge =
        json!({"model": "fast", "messages": [{"role": "user", "content": "x".repeat(5 << 20)}]})
            .to_string();
    let response = send(&stack, chat_path, &[("x-api-key", ALICE)], Some(huge)).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 413, "{body}");
    assert_openai_error(&body, "request_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_rules_allow_deny_and_deny_by_default() {
    let rules = "  rules:
    - { name: research-only, action: allow, when: \"principal.team == 'research' || apiKey.labels.tier == 'gold'\" }
    - { name: bob-cheap-models, action: allow, when: \"principal.user == 'bob' && llm.model == 'fast'\" }
    - { name: no-ci-smart, action: deny, when: \"request.headers['x-env'] == 'ci' && llm.model == 'smart'\" }
";
    let auth = api_keys_section().replace("models: [fast], ", "") + rules;
    let (stack, mock) = secured_stack(&auth, "").await;
    let path = "/v1/chat/completions";

    let ok = send(&stack, path, &[("x-api-key", ALICE)], Some(chat("smart"))).await;
    assert_eq!(ok.status(), 200);
    let ok = send(&stack, path, &[("x-api-key", BOB)], Some(chat("fast"))).await;
    assert_eq!(ok.status(), 200);

    let before = mock.recorded().len();
    let (status, body) =
        json_of(send(&stack, path, &[("x-api-key", BOB)], Some(chat("smart"))).await).await;
    assert_eq!(status, 403, "{body}");
    let message = assert_openai_error(&body, "not_allowed");
    assert!(message.contains("no rule allows"), "{message}");

    let (status, body) = json_of(
        send(
            &stack,
            path,
            &[("x-api-key", ALICE), ("x-env", "ci")],
            Some(chat("smart")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let message = assert_openai_error(&body, "denied_by_rule");
    assert!(message.contains("'no-ci-smart'"), "{message}");
    assert_eq!(
        mock.recorded().len(),
        before,
        "a denied request reached the provider"
    );

    // MCP endpoints get JSON-RPC errors.
    let response = send(
        &stack,
        "/mcp",
        &[],
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.into()),
    )
    .await;
    assert!(response.headers().contains_key("www-authenticate"));
    let (status, body) = json_of(response).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["error"]["code"], -32001, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_issuer_with_live_jwks_rotation_and_outage() {
    let mut issuer = TestIssuer::new("https://login.example.test");
    issuer
        .add_rsa_key("k1")
        .add_rsa_key("k2")
        .add_ec_key("e1")
        .add_rsa_key("k3");
    let jwks = JwksServer::start(issuer.jwks_json(&["k1", "e1"]));
    let auth = format!(
        "  jwt:
    - issuer: https://login.example.test
      audiences: [gantry-api]
      jwks_url: {url}
      algorithms: [RS256, ES256, HS256]
      refetch_interval_secs: 1
      team_claim: org
",
        url = jwks.url()
    );
    let (stack, mock) = secured_stack(&auth, "").await;
    let path = "/v1/chat/completions";
    let bearer = |token: &str| format!("Bearer {token}");
    let claims = |overrides: Value| {
        let mut c = issuer.claims("carol", "gantry-api");
        c["org"] = json!("ml");
        for (k, v) in overrides.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    let good = issuer.mint("k1", claims(json!({})));
    let response = send(
        &stack,
        path,
        &[("authorization", &bearer(&good))],
        Some(chat("fast")),
    )
    .await;
    assert_eq!(response.status(), 200);
    let upstream = last_upstream_headers(&mock);
    assert_eq!(header(&upstream, "x-gantry-subject"), Some("carol"));
    assert_eq!(header(&upstream, "x-gantry-team"), Some("ml"));
    assert_eq!(header(&upstream, "x-gantry-auth-method"), Some("jwt"));
    assert_eq!(
        header(&upstream, "authorization"),
        None,
        "the token went upstream"
    );
    let es = issuer.mint("e1", claims(json!({})));
    assert_eq!(
        send(
            &stack,
            path,
            &[("authorization", &bearer(&es))],
            Some(chat("fast"))
        )
        .await
        .status(),
        200
    );

    let now = unix_now();
    let refused = [
        (
            "expired",
            issuer.mint("k1", claims(json!({"exp": now - 300}))),
            "expired",
        ),
        (
            "not yet valid",
            issuer.mint("k1", claims(json!({"nbf": now + 600}))),
            "not valid yet",
        ),
        (
            "wrong aud",
            issuer.mint("k1", claims(json!({"aud": "another-service"}))),
            "audience",
        ),
        (
            "wrong iss",
            issuer.mint("k1", claims(json!({"iss": "https://evil.example.test"}))),
            "not trusted",
        ),
        (
            "alg none",
            alg_none(claims(json!({}))),
            "'none' are not accepted",
        ),
        (
            "HS256 with the RSA public key",
            issuer.hs256_with_public_key("k1", claims(json!({}))),
            "no key of this issuer can verify a HS256 token",
        ),
        (
            "tampered payload",
            tamper_payload(&good, claims(json!({"sub": "admin"}))),
            "signature is invalid",
        ),
    ];
    let before = mock.recorded().len();
    for (case, token, needle) in refused {
        let response = send(
            &stack,
            path,
            &[("authorization", &bearer(&token))],
            Some(chat("fast")),
        )
        .await;
        let message = assert_unauthorized(response, "invalid_token").await;
        assert!(message.contains(needle), "{case}: {message}");
    }
    assert_eq!(
        mock.recorded().len(),
        before,
        "a refused token reached the provider"
    );

    // Unknown kid: refused while the JWKS lacks it, admitted once the issuer publishes it
    // (the unknown kid makes Gantry refetch, at most once per second here).
    let rotated = issuer.mint("k2", claims(json!({})));
    let response = send(
        &stack,
        path,
        &[("authorization", &bearer(&rotated))],
        Some(chat("fast")),
    )
    .await;
    let message = assert_unauthorized(response, "invalid_token").await;
    assert!(message.contains("'k2'"), "{message}");
    jwks.set_keys(issuer.jwks_json(&["k1", "k2", "e1"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = send(
            &stack,
            path,
            &[("authorization", &bearer(&rotated))],
            Some(chat("fast")),
        )
        .await
        .status();
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotated key never accepted (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The JWKS endpoint goes down: cached keys keep working; a new kid fails closed.
    jwks.set_down(true);
    let fetches = jwks.fetch_count();
    assert_eq!(
        send(
            &stack,
            path,
            &[("authorization", &bearer(&good))],
            Some(chat("fast"))
        )
        .await
        .status(),
        200
    );
    let newer = issuer.mint("k3", claims(json!({})));
    // Each try with the new kid may refetch (at most once a second); every one must be refused,
    // until a fetch has demonstrably been attempted against the failing endpoint.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let response = send(
            &stack,
            path,
            &[("authorization", &bearer(&newer))],
            Some(chat("fast")),
        )
        .await;
        let message = assert_unauthorized(response, "invalid_token").await;
        assert!(message.contains("'k3'"), "{message}");
        if jwks.fetch_count() > fetches {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JWKS fetch was attempted for the unknown kid"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The failed fetch kept the last good keys.
    assert_eq!(
        send(
            &stack,
            path,
            &[("authorization", &bearer(&rotated))],
            Some(chat("fast"))
        )
        .await
        .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_principal() {
    let ca = TestCa::new("Gantry mTLS test CA");
    let server = ca.issue_server_for_loopback();
    let agent = ca.issue_client("spiffe://example.org/ns/team-a/sa/agent-1", "agent-1");
    let intruder = ca.issue_client("spiffe://example.org/ns/team-b/sa/intruder", "intruder");
    let stranger_ca = TestCa::new("Some other CA");
    let stranger = stranger_ca.issue_client("spiffe://example.org/ns/team-a/sa/agent-1", "agent-1");
    let auth = "  rules:
    - { name: team-a-agents, action: allow, when: \"source.principal.startsWith('spiffe://example.org/ns/team-a/')\" }
";
    let tls = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n",
        server.cert.display(),
        server.key.display(),
        ca.ca_file().display()
    );
    let (stack, mock) = secured_stack(auth, &tls).await;
    let url = format!(
        "https://127.0.0.1:{}/v1/chat/completions",
        stack.listen.port()
    );
    let client = |identity: Option<reqwest::Identity>| {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .add_root_certificate(ca.reqwest_ca_certificate());
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    };
    let post = |client: reqwest::Client| {
        let url = url.clone();
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("x-gantry-subject", "mallory")
                .body(chat("fast"))
                .send()
                .await
        }
    };

    let response = post(client(Some(agent.reqwest_identity())))
        .await
        .expect("mTLS request");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let upstream = last_upstream_headers(&mock);
    assert_eq!(
        header(&upstream, "x-gantry-subject"),
        Some("spiffe://example.org/ns/team-a/sa/agent-1")
    );
    assert_eq!(header(&upstream, "x-gantry-auth-method"), Some("mtls"));

    // A trusted certificate the rules do not allow: 403.
    let response = post(client(Some(intruder.reqwest_identity())))
        .await
        .expect("mTLS request");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 403, "{body}");
    assert_openai_error(&body, "not_allowed");

    // A certificate from another CA, and no certificate at all: the handshake fails.
    let error = post(client(Some(stranger.reqwest_identity())))
        .await
        .expect_err("untrusted client certificate accepted");
    assert!(error.is_connect() || error.is_request(), "{error:?}");
    let error = post(client(None))
        .await
        .expect_err("connection without a client certificate accepted");
    assert!(error.is_connect() || error.is_request(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_by_envoy_before_authorization() {
    let cors = "cors:
  allow_origins: ['https://app.example.test']
  allow_headers: [authorization, content-type]
  expose_headers: [x-gantry-model]
  max_age_secs: 600
";
    let (stack, _mock) = secured_stack(&api_keys_section(), cors).await;
    let client = http();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, stack.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let response = preflight("https://app.example.test").await.unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.test");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    assert_eq!(h["access-control-max-age"], "600");
    let entry = stack.wait_for_access_log("the preflight", |e| e["method"] == "OPTIONS");
    assert_eq!(
        entry["denied"],
        Value::Null,
        "the preflight reached ext_authz: {entry}"
    );

    let response = preflight("https://evil.example.test").await.unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin"),
        "{:?}",
        response.headers()
    );

    // The real request is authorized as usual and carries the CORS response headers.
    let response = client
        .post(stack.url("/v1/chat/completions"))
        .header("origin", "https://app.example.test")
        .header("authorization", format!("Bearer {ALICE}"))
        .header("content-type", "application/json")
        .body(chat("fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.test"
    );
    assert_eq!(
        response.headers()["access-control-expose-headers"],
        "x-gantry-model"
    );
}
