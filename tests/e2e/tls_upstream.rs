//! An https provider: Envoy connects with TLS, sends the provider's host as SNI, verifies the
//! certificate against the provider's `ca_file`, and rewrites `Host` to the provider's.

use gantry_testkit::tls::{TestCa, TlsFront};
use gantry_testkit::StackPorts;

use crate::{assert_openai_error, json_of, post, served_target, start_mock, start_stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_provider_gets_sni_verified_tls_and_its_host() {
    let mock = start_mock("secure", None).await;
    let ca = TestCa::new("Gantry test CA");
    let cert = ca.issue("localhost");
    let upstream = mock.addr();
    let front = tokio::task::spawn_blocking(move || TlsFront::start(upstream, "localhost", &cert))
        .await
        .unwrap();
    // A CA that did not sign the provider's certificate.
    let stranger = TestCa::new("Some other CA");

    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - name: secure
    kind: openai
    endpoint: https://localhost:{port}/
    ca_file: {ca}
  - name: untrusted
    kind: openai
    endpoint: https://localhost:{port}
    ca_file: {stranger}
models:
  - {{ name: s, provider: secure, model: secure-1 }}
  - {{ name: u, provider: untrusted, model: untrusted-1 }}
",
        head = ports.config_head(),
        port = front.port,
        ca = ca.ca_file().display(),
        stranger = stranger.ca_file().display(),
    );
    let stack = start_stack(ports, yaml, vec![]).await;

    let url = stack.url("/v1/chat/completions");
    let (status, body) = json_of(post(&url, r#"{"model":"s","messages":[]}"#).await).await;
    assert_eq!(status, 200, "{body}\n{}", stack.process.logs());
    assert_eq!(body["model"], "secure-1");
    let recorded = mock.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].header("host"),
        Some(&*format!("localhost:{}", front.port)),
        "Host must be the provider's, not the gateway's"
    );

    // A certificate the configured CA did not sign is refused: the request never arrives.
    let (status, body) = json_of(post(&url, r#"{"model":"u","messages":[]}"#).await).await;
    assert_eq!(status, 503, "{body}");
    let message = assert_openai_error(&body, "provider_unreachable");
    assert!(message.contains("provider 'untrusted'"), "{message}");
    assert_eq!(
        mock.recorded().len(),
        1,
        "an unverified upstream received the request"
    );
}

/// An alias's targets each get their own TLS (SNI, CA) in the alias's cluster: a target whose
/// certificate is not trusted fails the attempt, and the retry on the next target succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_of_one_alias_each_get_their_own_tls() {
    let mock = start_mock("secure", None).await;
    let ca = TestCa::new("Gantry test CA");
    let cert = ca.issue("localhost");
    let upstream = mock.addr();
    let front = tokio::task::spawn_blocking(move || TlsFront::start(upstream, "localhost", &cert))
        .await
        .unwrap();
    let stranger = TestCa::new("Some other CA");
    let ports = StackPorts::free();
    let yaml = format!(
        "{head}providers:
  - {{ name: untrusted, kind: openai, endpoint: 'https://localhost:{port}', ca_file: {stranger} }}
  - {{ name: secure, kind: openai, endpoint: 'https://localhost:{port}/', ca_file: {ca} }}
models:
  - name: t
    targets:
      - {{ provider: untrusted, model: untrusted-1 }}
      - {{ provider: secure, model: secure-1, priority: 1 }}
",
        head = ports.config_head(),
        port = front.port,
        ca = ca.ca_file().display(),
        stranger = stranger.ca_file().display(),
    );
    let stack = start_stack(ports, yaml, vec![]).await;
    let response = post(
        &stack.url("/v1/chat/completions"),
        r#"{"model":"t","messages":[]}"#,
    )
    .await;
    let target = served_target(&response);
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}\n{}", stack.process.logs());
    assert_eq!(target.as_deref(), Some("secure/secure-1"));
    let recorded = mock.recorded();
    assert_eq!(recorded.len(), 1, "the untrusted attempt must not arrive");
    assert_eq!(recorded[0].json().unwrap()["model"], "secure-1");
    assert_eq!(
        recorded[0].header("host"),
        Some(&*format!("localhost:{}", front.port))
    );
}
