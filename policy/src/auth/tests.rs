use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::api_keys::KeyHash;
use super::jwt::KeySet;
use super::*;
use crate::ConfigFile;

const SECRET: &[u8] = b"a-test-hmac-secret-of-32-bytes!!";

fn config(auth: &str) -> AuthPolicy {
    let text = format!(
        "listen: 127.0.0.1:10000\n\
         providers: [{{ name: p, kind: openai, endpoint: 'http://127.0.0.1:18080' }}]\n\
         models: [{{ name: fast, provider: p, model: m }}, {{ name: smart, provider: p, model: m2 }}]\n\
         auth:\n{auth}"
    );
    let parsed = ConfigFile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    AuthPolicy::compile(parsed.auth.as_ref().unwrap())
}

fn keys_section() -> String {
    format!(
        "  api_keys:\n\
         \x20   - {{ name: alice-key, hash: '{}', user: alice, team: research, models: [fast], labels: {{ tier: gold }} }}\n\
         \x20   - {{ name: old-key, hash: '{}', expires_at: '2020-01-01T00:00:00Z' }}\n\
         \x20   - {{ name: off-key, hash: '{}', enabled: false }}\n",
        KeyHash::of("alice-secret"),
        KeyHash::of("old-secret"),
        KeyHash::of("off-secret"),
    )
}

struct StaticKeys(Vec<Arc<KeySet>>);

impl JwksSource for StaticKeys {
    fn current(&self, issuer: usize) -> Arc<KeySet> {
        self.0[issuer].clone()
    }
    async fn refetch(&self, issuer: usize) -> Arc<KeySet> {
        self.0[issuer].clone()
    }
}

fn no_keys() -> StaticKeys {
    StaticKeys(vec![])
}

fn hmac_keys(kid: &str) -> StaticKeys {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    let doc = json!({"keys": [{"kty": "oct", "kid": kid, "alg": "HS256", "k": k}]});
    StaticKeys(vec![Arc::new(
        KeySet::from_json(doc.to_string().as_bytes()).unwrap(),
    )])
}

fn check(
    policy: &AuthPolicy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    keys: &StaticKeys,
) -> Decision {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let request = AuthRequest {
        method,
        path,
        host: "gw",
        scheme: "http",
        headers: &headers,
        source_address: "127.0.0.1",
        peer_principal: "",
        peer_certificate: "",
        body: body.as_bytes(),
        now: 1_800_000_000,
    };
    futures_lite_block_on(policy.check(&request, keys))
}

/// A minimal executor: the futures here never wait on I/O.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
    fn noop(_: *const ()) {}
    fn clone(p: *const ()) -> RawWaker {
        RawWaker::new(p, &VTABLE)
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: the vtable functions do nothing with the null pointer.
    let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut context) {
            return out;
        }
    }
}

fn denial(decision: Decision) -> Denial {
    match decision {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("allowed: {a:?}"),
    }
}

fn allowed(decision: Decision) -> Allowed {
    match decision {
        Decision::Allow(a) => *a,
        Decision::Deny(d) => panic!("denied: {d:?}"),
    }
}

const CHAT: &str = "/v1/chat/completions";

#[test]
fn api_keys_from_either_header_and_every_refusal() {
    let policy = config(&keys_section());
    let ok = allowed(check(
        &policy,
        "POST",
        CHAT,
        &[("x-api-key", "alice-secret")],
        r#"{"model":"fast"}"#,
        &no_keys(),
    ));
    let principal = ok.principal.as_ref().unwrap();
    assert_eq!(
        (principal.subject.as_str(), principal.method),
        ("alice", AuthMethod::ApiKey)
    );
    assert!(ok.set_headers.contains(&(SUBJECT_HEADER, "alice".into())));
    assert!(ok.set_headers.contains(&(TEAM_HEADER, "research".into())));
    assert!(ok.set_headers.contains(&(KEY_HEADER, "alice-key".into())));
    assert!(
        ok.remove_headers.contains(&"authorization") && ok.remove_headers.contains(&"x-api-key")
    );
    assert_eq!(ok.metadata["subject"], "alice");
    assert_eq!(ok.metadata["allowed_models"], json!(["fast"]));

    let bearer = check(
        &policy,
        "GET",
        "/v1/models",
        &[("authorization", "Bearer alice-secret")],
        "",
        &no_keys(),
    );
    assert!(matches!(bearer, Decision::Allow(_)));

    for (secret, code, needle) in [
        ("wrong", "invalid_api_key", "invalid API key"),
        (
            "old-secret",
            "expired_api_key",
            "API key 'old-key' expired at 2020-01-01T00:00:00Z",
        ),
        (
            "off-secret",
            "disabled_api_key",
            "API key 'off-key' is disabled",
        ),
    ] {
        let d = denial(check(
            &policy,
            "POST",
            CHAT,
            &[("x-api-key", secret)],
            "{}",
            &no_keys(),
        ));
        assert_eq!((d.status, d.code), (401, code), "{d:?}");
        assert!(d.message.contains(needle), "{}", d.message);
        assert!(d
            .www_authenticate
            .as_deref()
            .unwrap()
            .starts_with("Bearer realm=\"gantry\", error=\"invalid_token\""));
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["type"], "authentication_error");
    }

    let d = denial(check(&policy, "POST", CHAT, &[], "{}", &no_keys()));
    assert_eq!((d.status, d.code), (401, "missing_credentials"));
    assert_eq!(
        d.www_authenticate.as_deref(),
        Some("Bearer realm=\"gantry\"")
    );

    let d = denial(check(
        &policy,
        "POST",
        CHAT,
        &[("authorization", "Basic YTpi")],
        "{}",
        &no_keys(),
    ));
    assert_eq!((d.status, d.code), (401, "unsupported_credentials"));
}

#[test]
fn key_model_allow_list_reads_the_body() {
    let policy = config(&keys_section());
    assert!(policy.needs_model);
    let d = denial(check(
        &policy,
        "POST",
        CHAT,
        &[("x-api-key", "alice-secret")],
        r#"{"messages":[],"model":"smart"}"#,
        &no_keys(),
    ));
    assert_eq!((d.status, d.code), (403, "model_not_allowed"));
    assert_eq!(
        d.message,
        "API key 'alice-key' may not use model 'smart' (allowed: fast)"
    );
    let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
}

#[test]
fn mcp_paths_get_json_rpc_errors() {
    let policy = config(&keys_section());
    let d = denial(check(&policy, "POST", "/mcp", &[], "{}", &no_keys()));
    let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["code"], -32001);
    assert_eq!(body["error"]["data"]["reason"], "missing_credentials");
    let prefixes = ["/mcp".to_string(), "/a2a".to_string()];
    assert_eq!(
        ClientProtocol::for_path("/mcp/github?x=1", &prefixes),
        ClientProtocol::JsonRpc
    );
    assert_eq!(
        ClientProtocol::for_path("/a2a/echo/", &prefixes),
        ClientProtocol::JsonRpc
    );
    assert_eq!(
        ClientProtocol::for_path("/mcpx", &prefixes),
        ClientProtocol::OpenAi
    );
    assert_eq!(
        ClientProtocol::for_path("/v1/chat/completions", &prefixes),
        ClientProtocol::OpenAi
    );
}

#[test]
fn the_configured_json_rpc_paths_get_json_rpc_errors() {
    let parsed = crate::config::ConfigFile::parse(&format!(
        "listen: 127.0.0.1:10000\nproviders: [{{ name: p, kind: openai, endpoint: 'http://127.0.0.1:18080' }}]\nmodels: [{{ name: fast, provider: p, model: m }}]\nauth:\n{}a2a:\n  path: /agents\n  agents: [{{ name: echo, url: 'http://127.0.0.1:1' }}]\nmcp_direct:\n  servers: [{{ name: calc, url: 'http://127.0.0.1:2/mcp' }}]\n",
        keys_section()
    ))
    .unwrap();
    let policy = AuthPolicy::compile(parsed.auth.as_ref().unwrap()).with_json_rpc_paths_of(&parsed);
    assert_eq!(policy.json_rpc_paths, ["/mcp-direct", "/agents"]);
    for path in ["/agents/echo/", "/mcp-direct/calc"] {
        let d = denial(check(&policy, "POST", path, &[], "{}", &no_keys()));
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["jsonrpc"], "2.0", "{path}: {body}");
    }
}

#[test]
fn rules_deny_wins_and_default_deny() {
    let rules = "  rules:\n\
        \x20   - { name: research-only, action: allow, when: \"principal.team == 'research'\" }\n\
        \x20   - { name: gold-everything, action: allow, when: \"apiKey.labels.tier == 'gold'\" }\n\
        \x20   - { name: no-deletes, action: deny, when: \"request.method == 'DELETE'\" }\n\
        \x20   - { name: no-smart, action: deny, when: \"llm.model == 'smart' && request.headers['x-env'] == 'ci'\" }\n";
    let extra = format!(
        "    - {{ name: bob-key, hash: '{}', user: bob, team: sales }}\n",
        KeyHash::of("bob-secret")
    );
    let policy = config(&format!("{}{extra}{rules}", keys_section()));
    let ok = allowed(check(
        &policy,
        "POST",
        CHAT,
        &[("x-api-key", "alice-secret")],
        r#"{"model":"fast"}"#,
        &no_keys(),
    ));
    assert!(ok.principal.is_some());
    let d = denial(check(
        &policy,
        "DELETE",
        CHAT,
        &[("x-api-key", "alice-secret")],
        "",
        &no_keys(),
    ));
    assert_eq!(
        (d.status, d.code, d.message.as_str()),
        (403, "denied_by_rule", "denied by rule 'no-deletes'")
    );
    let d = denial(check(
        &policy,
        "POST",
        CHAT,
        &[("x-api-key", "bob-secret")],
        r#"{"model":"fast"}"#,
        &no_keys(),
    ));
    assert_eq!((d.status, d.code), (403, "not_allowed"));
    // A condition over a missing header does not match (and does not break other rules).
    assert!(matches!(
        check(
            &policy,
            "POST",
            CHAT,
            &[("x-api-key", "alice-secret")],
            r#"{"model":"fast"}"#,
            &no_keys()
        ),
        Decision::Allow(_)
    ));
}

#[test]
fn optional_mode_lets_rules_admit_anonymous_callers() {
    let policy = config("  mode: optional\n  rules:\n    - { name: public-models, action: allow, when: \"request.path == '/v1/models'\" }\n");
    let ok = allowed(check(
        &policy,
        "GET",
        "/v1/models",
        &[(SUBJECT_HEADER, "spoofed")],
        "",
        &no_keys(),
    ));
    assert!(ok.principal.is_none());
    assert!(ok.remove_headers.contains(&SUBJECT_HEADER), "{ok:?}");
    let d = denial(check(&policy, "POST", CHAT, &[], "{}", &no_keys()));
    assert_eq!((d.status, d.code), (401, "missing_credentials"));
}

#[test]
fn bad_rules_and_auth_sections_are_config_errors() {
    let text = "listen: 127.0.0.1:10000\n\
        auth:\n\
        \x20 api_keys: [{ name: k, hash: 'sha256:1234' }]\n\
        \x20 jwt:\n\
        \x20   - { issuer: 'https://id.example', audiences: [], jwks_url: 'http://id.example/jwks', algorithms: [none] }\n\
        \x20 rules:\n\
        \x20   - { name: broken, action: allow, when: 'request.path ==' }\n";
    let err = ConfigFile::parse(text).unwrap_err().to_string();
    for needle in [
        "auth.api_keys[0].hash (line 3): 'sha256:1234' is not a key hash",
        "auth.jwt[0].audiences",
        "auth.jwt[0].jwks_url (line 5): 'http://id.example/jwks' must be https",
        "auth.jwt[0].algorithms (line 5): 'none' is never accepted",
        "auth.rules[0].when (line 7): rule 'broken' does not compile",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

fn hs256(claims: serde_json::Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn jwt_policy() -> AuthPolicy {
    config("  jwt:\n    - { issuer: 'https://id.example', audiences: [gantry], jwks_file: /dev/null, algorithms: [HS256], team_claim: org }\n")
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    let mut base = json!({"iss": "https://id.example", "aud": "gantry", "sub": "carol", "org": "ml", "exp": now + 600, "nbf": now - 5});
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

#[test]
fn jwt_checks_signature_time_issuer_audience_and_kid() {
    let policy = jwt_policy();
    let keys = hmac_keys("k1");
    let bearer = |t: &str| format!("Bearer {t}");
    let good = hs256(claims(json!({})), "k1");
    let ok = allowed(check(
        &policy,
        "POST",
        CHAT,
        &[("authorization", &bearer(&good))],
        "{}",
        &keys,
    ));
    let p = ok.principal.unwrap();
    assert_eq!(
        (p.method, p.subject.as_str(), p.team.as_deref()),
        (AuthMethod::Jwt, "carol", Some("ml"))
    );
    assert_eq!(ok.metadata["issuer"], "https://id.example");

    let now = jsonwebtoken::get_current_timestamp();
    let cases = [
        (
            hs256(claims(json!({"exp": now - 120})), "k1"),
            "the token has expired",
        ),
        (
            hs256(claims(json!({"nbf": now + 600})), "k1"),
            "not valid yet",
        ),
        (hs256(claims(json!({"aud": "other"})), "k1"), "audience"),
        (
            hs256(claims(json!({"iss": "https://evil.example"})), "k1"),
            "from issuer 'https://evil.example' are not trusted",
        ),
        (
            hs256(claims(json!({"exp": null})), "k1"),
            "required 'exp' claim",
        ),
        (hs256(claims(json!({})), "k9"), "no key with id 'k9'"),
        ("not.a.jwt".to_string(), "not a well-formed JWT"),
    ];
    for (token, needle) in cases {
        let d = denial(check(
            &policy,
            "POST",
            CHAT,
            &[("authorization", &bearer(&token))],
            "{}",
            &keys,
        ));
        assert_eq!(d.status, 401, "{d:?}");
        assert!(d.message.contains(needle), "{needle}: {}", d.message);
    }

    // Tampered payload: the signature no longer matches.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(claims(json!({"sub": "admin"})).to_string());
    let d = denial(check(
        &policy,
        "POST",
        CHAT,
        &[("authorization", &bearer(&parts.join(".")))],
        "{}",
        &keys,
    ));
    assert!(d.message.contains("signature is invalid"), "{}", d.message);

    // alg none.
    let header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let none = format!("{header}.{}.", parts[1]);
    let d = denial(check(
        &policy,
        "POST",
        CHAT,
        &[("authorization", &bearer(&none))],
        "{}",
        &keys,
    ));
    assert!(
        d.message.contains("'none' are not accepted"),
        "{}",
        d.message
    );
}

#[test]
fn algorithm_outside_the_allow_list_is_refused_even_with_a_matching_key() {
    let policy = config("  jwt:\n    - { issuer: 'https://id.example', audiences: [gantry], jwks_file: /dev/null }\n");
    let token = hs256(claims(json!({})), "k1");
    let d = denial(check(
        &policy,
        "POST",
        CHAT,
        &[("authorization", &format!("Bearer {token}"))],
        "{}",
        &hmac_keys("k1"),
    ));
    assert!(
        d.message.contains("HS256") && d.message.contains("not accepted"),
        "{}",
        d.message
    );
}

#[test]
fn empty_key_set_answers_503_not_401() {
    let policy = jwt_policy();
    let token = hs256(claims(json!({})), "k1");
    let keys = StaticKeys(vec![Arc::new(KeySet::default())]);
    let d = denial(check(
        &policy,
        "POST",
        CHAT,
        &[("authorization", &format!("Bearer {token}"))],
        "{}",
        &keys,
    ));
    assert_eq!((d.status, d.code), (503, "jwks_unavailable"));
}

// ---------------------------------------------------------------------------------------------
// Keys created through the admin API (the runtime directory)

mod runtime_keys {
    use std::collections::BTreeMap;

    use super::*;
    use crate::admin::stored::{AdminRecords, RecordKind, StoredRecord};
    use crate::admin::{KeyRecord, MetadataRecord, PreviousSecret, RuntimeDirectory, Subject};

    /// The request clock of `check` (1_800_000_000 s), in ms.
    const NOW_MS: i64 = 1_800_000_000_000;

    fn key(name: &str, secret: &str) -> KeyRecord {
        KeyRecord {
            name: name.into(),
            hash: KeyHash::of(secret).to_string(),
            user: Some("carol".into()),
            team: Some("ops".into()),
            models: None,
            labels: BTreeMap::new(),
            expires_at_ms: None,
            created_ms: NOW_MS - 1000,
            created_by: "admin".into(),
            revoked_ms: None,
            revoked_by: None,
            previous: Vec::new(),
        }
    }

    fn directory(keys: &[KeyRecord], metadata: &[MetadataRecord]) -> RuntimeDirectory {
        let mut records: Vec<StoredRecord> = keys
            .iter()
            .map(|k| StoredRecord {
                kind: RecordKind::Key,
                id: k.name.clone(),
                revision: 1,
                json: serde_json::to_string(k).unwrap(),
            })
            .collect();
        records.extend(metadata.iter().map(|m| StoredRecord {
            kind: RecordKind::Metadata,
            id: m.subject.to_string(),
            revision: 2,
            json: serde_json::to_string(m).unwrap(),
        }));
        RuntimeDirectory::compile(&AdminRecords {
            version: 2,
            records,
        })
    }

    fn check_with(
        policy: &AuthPolicy,
        runtime: &RuntimeDirectory,
        secret: &str,
        body: &str,
    ) -> Decision {
        let headers: HashMap<String, String> =
            HashMap::from([("authorization".into(), format!("Bearer {secret}"))]);
        let request = AuthRequest {
            method: "POST",
            path: CHAT,
            host: "gw",
            scheme: "http",
            headers: &headers,
            source_address: "127.0.0.1",
            peer_principal: "",
            peer_certificate: "",
            body: body.as_bytes(),
            now: NOW_MS / 1000,
        };
        futures_lite_block_on(policy.check_with(&request, &no_keys(), runtime))
    }

    #[test]
    fn a_runtime_key_is_a_principal_like_a_config_key() {
        let policy = config(&keys_section());
        let runtime = directory(&[key("carol-key", "carol-secret")], &[]);
        let ok = allowed(check_with(&policy, &runtime, "carol-secret", ""));
        let principal = ok.principal.unwrap();
        assert_eq!(principal.key.as_deref(), Some("carol-key"));
        assert_eq!(principal.team.as_deref(), Some("ops"));
        assert_eq!(ok.metadata["key"], "carol-key");
        // The config's keys still work, and an unknown secret is still refused.
        allowed(check_with(&policy, &runtime, "alice-secret", ""));
        let unknown = denial(check_with(&policy, &runtime, "nobody", ""));
        assert_eq!((unknown.status, unknown.code), (401, "invalid_api_key"));
        // Without the directory, the runtime key is unknown.
        let plain = denial(check(
            &policy,
            "POST",
            CHAT,
            &[("authorization", "Bearer carol-secret")],
            "",
            &no_keys(),
        ));
        assert_eq!(plain.code, "invalid_api_key");
    }

    #[test]
    fn the_config_wins_over_a_runtime_key_of_the_same_name() {
        let policy = config(&keys_section());
        let runtime = directory(&[key("alice-key", "impostor-secret")], &[]);
        let refused = denial(check_with(&policy, &runtime, "impostor-secret", ""));
        assert_eq!((refused.status, refused.code), (401, "invalid_api_key"));
        allowed(check_with(&policy, &runtime, "alice-secret", ""));
    }

    #[test]
    fn revoked_keys_and_rotated_secrets_are_refused_with_the_reason() {
        let policy = config(&keys_section());
        let mut revoked = key("gone", "gone-secret");
        revoked.revoked_ms = Some(1_799_999_000_000);
        let mut rotated = key("turned", "new-secret");
        rotated.previous = vec![
            PreviousSecret {
                hash: KeyHash::of("recent-secret").to_string(),
                valid_until_ms: NOW_MS + 60_000,
            },
            PreviousSecret {
                hash: KeyHash::of("stale-secret").to_string(),
                valid_until_ms: NOW_MS - 1,
            },
        ];
        let runtime = directory(&[revoked, rotated], &[]);
        let gone = denial(check_with(&policy, &runtime, "gone-secret", ""));
        assert_eq!((gone.status, gone.code), (401, "revoked_api_key"));
        assert_eq!(
            gone.message,
            "API key 'gone' was revoked at 2027-01-15T07:43:20Z"
        );
        for secret in ["new-secret", "recent-secret"] {
            let ok = allowed(check_with(&policy, &runtime, secret, ""));
            assert_eq!(ok.principal.unwrap().key.as_deref(), Some("turned"));
        }
        let stale = denial(check_with(&policy, &runtime, "stale-secret", ""));
        assert_eq!(stale.code, "rotated_api_key");
        assert!(
            stale.message.contains("was rotated") && stale.message.contains("use the new one"),
            "{}",
            stale.message
        );
    }

    #[test]
    fn a_runtime_allow_list_is_enforced_and_metadata_reaches_the_rules() {
        let rules = "  rules:\n\
             \x20   - { name: gold-only, action: allow, when: 'principal.metadata[\"tier\"] == \"gold\"' }\n";
        let policy = config(&format!("{}{rules}", keys_section()));
        let mut listed = key("listed", "listed-secret");
        listed.models = Some(vec!["fast".into()]);
        let gold_team = MetadataRecord {
            subject: Subject::parse("team:ops").unwrap(),
            metadata: BTreeMap::from([("tier".into(), "silver".into())]),
            updated_ms: NOW_MS,
            updated_by: "admin".into(),
        };
        let gold_user = MetadataRecord {
            subject: Subject::parse("user:carol").unwrap(),
            metadata: BTreeMap::from([("tier".into(), "gold".into())]),
            updated_ms: NOW_MS,
            updated_by: "admin".into(),
        };
        let runtime = directory(&[listed.clone()], &[gold_team.clone(), gold_user]);
        let ok = allowed(check_with(
            &policy,
            &runtime,
            "listed-secret",
            r#"{"model":"fast"}"#,
        ));
        assert_eq!(
            ok.principal.unwrap().metadata.unwrap()["tier"],
            "gold",
            "the user's metadata wins over the team's"
        );
        let other = denial(check_with(
            &policy,
            &runtime,
            "listed-secret",
            r#"{"model":"smart"}"#,
        ));
        assert_eq!((other.status, other.code), (403, "model_not_allowed"));
        // With only the team's (silver) metadata, the rule does not allow.
        let silver = directory(&[listed], &[gold_team]);
        let refused = denial(check_with(
            &policy,
            &silver,
            "listed-secret",
            r#"{"model":"fast"}"#,
        ));
        assert_eq!((refused.status, refused.code), (403, "not_allowed"));
    }

    #[test]
    fn an_unreadable_record_is_reported_and_the_others_still_apply() {
        let records = AdminRecords {
            version: 3,
            records: vec![
                StoredRecord {
                    kind: RecordKind::Key,
                    id: "broken".into(),
                    revision: 1,
                    json: "{not json".into(),
                },
                StoredRecord {
                    kind: RecordKind::Key,
                    id: "fine".into(),
                    revision: 2,
                    json: serde_json::to_string(&key("fine", "fine-secret")).unwrap(),
                },
            ],
        };
        let runtime = RuntimeDirectory::compile(&records);
        assert_eq!(runtime.version, 3);
        assert_eq!(runtime.unreadable.len(), 1);
        assert!(
            runtime.unreadable[0].starts_with("key 'broken': "),
            "{:?}",
            runtime.unreadable
        );
        assert_eq!(runtime.key("fine").unwrap().revision, 2);
        let policy = config(&keys_section());
        allowed(check_with(&policy, &runtime, "fine-secret", ""));
    }
}
