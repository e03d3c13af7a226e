//! Hot reload of `gantry run` through the real Envoy, on both policy paths: a rewritten config
//! file is applied under continuous load (new model, new provider, new guard; then a provider
//! removed) with no failed request; an invalid one is refused, naming the problem, while the
//! previous config keeps serving; with `--no-watch`, SIGHUP reloads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_mock_provider::MockProvider;
use gantry_testkit::{GantryStack, PolicyPath, StackPorts};

use crate::{
    gantry_bin, json_of, on_both_policy_paths, post, served_target, start_mock, BETA_KEY,
    BETA_KEY_ENV,
};

on_both_policy_paths!(
    a_reload_under_continuous_load_fails_no_request,
    an_invalid_reload_is_refused_and_the_old_config_keeps_serving,
);

const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

/// The stack's config: providers alpha and beta, model m-alpha, and `extra` appended.
fn config(ports: &StackPorts, alpha: &MockProvider, beta: &MockProvider, extra: &str) -> String {
    format!(
        "{head}providers:
  - {{ name: alpha, kind: openai, endpoint: '{alpha}' }}
  - {{ name: beta, kind: openai, endpoint: '{beta}', api_key_env: {BETA_KEY_ENV} }}
{extra}",
        head = ports.config_head(),
        alpha = alpha.base_url(),
        beta = beta.base_url(),
    )
}

const MODELS: &str = "models:\n  - { name: m-alpha, provider: alpha, model: alpha-1 }\n";

fn chat(model: &str, content: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    })
    .to_string()
}

async fn start(
    path: PolicyPath,
    args: &'static [&'static str],
) -> (GantryStack, MockProvider, MockProvider, StackPorts) {
    let alpha = start_mock("alpha", None).await;
    let beta = start_mock("beta", Some(BETA_KEY)).await;
    let ports = StackPorts::free();
    let yaml = format!("{}{MODELS}", config(&ports, &alpha, &beta, ""));
    let stack = tokio::task::spawn_blocking(move || {
        GantryStack::start_with_args(
            path,
            &gantry_bin(),
            ports,
            &yaml,
            &[(BETA_KEY_ENV, BETA_KEY)],
            args,
        )
    })
    .await
    .unwrap();
    (stack, alpha, beta, ports)
}

/// Rewrites the config file in one step (a rename), as editors and config managers do.
fn rewrite(stack: &GantryStack, yaml: &str) {
    let staging = stack.config_path.with_extension("staging");
    std::fs::write(&staging, yaml).unwrap();
    std::fs::rename(&staging, &stack.config_path).unwrap();
}

async fn wait_for_stdout(stack: GantryStack, needle: &'static str) -> GantryStack {
    tokio::task::spawn_blocking(move || {
        let mut stack = stack;
        stack.process.wait_for_stdout(needle, RELOAD_DEADLINE);
        stack
    })
    .await
    .unwrap()
}

async fn a_reload_under_continuous_load_fails_no_request(path: PolicyPath) {
    let (stack, alpha, beta, ports) = start(path, &[]).await;
    let url = stack.url("/v1/chat/completions");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, done, failures, url) =
            (stop.clone(), done.clone(), failures.clone(), url.clone());
        load.push(tokio::spawn(async move {
            // One client per worker: its pooled connections live across the reloads.
            let client = crate::http();
            let stream = worker == 3;
            while !stop.load(Ordering::Relaxed) {
                let outcome = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(chat("m-alpha", "steady traffic", stream))
                    .send()
                    .await;
                let failure = match outcome {
                    Err(e) => Some(format!("transport error: {e}")),
                    Ok(response) => {
                        let status = response.status();
                        match response.text().await {
                            Err(e) => Some(format!("{status}: body broke: {e}")),
                            Ok(_) if status != 200 => Some(format!("{status}")),
                            Ok(text) if stream && !text.trim_end().ends_with("data: [DONE]") => {
                                Some(format!("stream cut short: {text}"))
                            }
                            Ok(_) => None,
                        }
                    }
                };
                if let Some(failure) = failure {
                    failures.lock().unwrap().push(failure);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_for_load = |at_least: usize| {
        let done = done.clone();
        async move {
            let deadline = tokio::time::Instant::now() + RELOAD_DEADLINE;
            while done.load(Ordering::Relaxed) < at_least {
                assert!(tokio::time::Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for_load(50).await;

    // Reload 1: a new provider (gamma, on alpha's server), a model on it and one on beta, a guard.
    let next = format!(
        "{}  - {{ name: gamma, kind: openai, endpoint: '{}' }}
{MODELS}  - {{ name: m-new, provider: beta, model: beta-1 }}
  - {{ name: m-gamma, provider: gamma, model: gamma-1 }}
guards:
  request:
    - {{ name: no-cards, action: reject, detectors: [credit_card] }}
",
        config(&ports, &alpha, &beta, ""),
        alpha.base_url()
    );
    rewrite(&stack, &next);
    let stack = wait_for_stdout(stack, "(file changed; version 2;").await;
    for (model, upstream) in [("m-new", "beta-1"), ("m-gamma", "gamma-1")] {
        let (status, reply) = json_of(post(&url, &chat(model, "hi", false)).await).await;
        assert_eq!(status, 200, "{model}: {reply}");
        assert_eq!(reply["model"], upstream);
    }
    let (status, reply) =
        json_of(post(&url, &chat("m-alpha", "card 4111 1111 1111 1111", false)).await).await;
    assert_eq!(status, 400, "the new guard is not applied: {reply}");
    let after_first = done.load(Ordering::Relaxed);
    wait_for_load(after_first + 50).await;

    // Reload 2: gamma removed again.
    rewrite(
        &stack,
        &format!(
            "{}{MODELS}  - {{ name: m-new, provider: beta, model: beta-1 }}\n",
            config(&ports, &alpha, &beta, "")
        ),
    );
    let stack = wait_for_stdout(stack, "(file changed; version 3;").await;
    let (status, reply) = json_of(post(&url, &chat("m-gamma", "hi", false)).await).await;
    assert_eq!(status, 404, "{reply}");
    let after_second = done.load(Ordering::Relaxed);
    wait_for_load(after_second + 50).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the reloads: {:?}",
        failures.len(),
        done.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    drop(stack);
}

async fn an_invalid_reload_is_refused_and_the_old_config_keeps_serving(path: PolicyPath) {
    let (stack, alpha, beta, ports) = start(path, &["--no-watch"]).await;
    let url = stack.url("/v1/chat/completions");

    // --no-watch: a changed file is applied on SIGHUP.
    rewrite(
        &stack,
        &format!(
            "{}{MODELS}  - {{ name: m-new, provider: beta, model: beta-1 }}\n",
            config(&ports, &alpha, &beta, "")
        ),
    );
    stack.process.signal(libc::SIGHUP);
    let stack = wait_for_stdout(stack, "(SIGHUP; version 2;").await;
    let (status, reply) = json_of(post(&url, &chat("m-new", "hi", false)).await).await;
    assert_eq!(status, 200, "{reply}");

    // Invalid: an unknown model in a rule, and a field that needs a restart.
    rewrite(
        &stack,
        &format!(
            "{}{MODELS}routing:\n  - {{ name: r, when: 'true', model: m-missing }}\n",
            config(&ports, &alpha, &beta, "")
        ),
    );
    stack.process.signal(libc::SIGHUP);
    let stack = wait_for_stdout(stack, "config reload refused (SIGHUP)").await;
    let stdout = stack.process.stdout();
    assert!(
        stdout.contains("routing[0].model") && stdout.contains("m-missing"),
        "the refusal does not name the problem:\n{stdout}"
    );
    let moved_admin = config(&ports, &alpha, &beta, MODELS).replacen(
        &format!("admin: 127.0.0.1:{}", ports.admin),
        "admin: 127.0.0.1:1",
        1,
    );
    rewrite(&stack, &moved_admin);
    stack.process.signal(libc::SIGHUP);
    let stack = wait_for_stdout(stack, "admin changed: that needs a restart").await;

    // The previous config (with m-new) still serves.
    let (status, reply) = json_of(post(&url, &chat("m-new", "hi", false)).await).await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        !stack.process.stdout().contains("version 3"),
        "a refused config was applied"
    );
}

/// `gantry serve` (for an Envoy someone else runs) reloads its policy too: on SIGHUP here, with
/// the Envoy in front unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gantry_serve_reloads_its_policy_on_sighup() {
    let alpha = start_mock("alpha", None).await;
    let ports = StackPorts::free();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("gantry.yaml");
    let yaml = |models: &str| {
        format!(
            "{}providers:\n  - {{ name: alpha, kind: openai, endpoint: '{}' }}\n{models}",
            ports.config_head(),
            alpha.base_url()
        )
    };
    std::fs::write(&config_path, yaml(MODELS)).unwrap();
    let bootstrap = dir.path().join("envoy.yaml");
    let rendered = std::process::Command::new(gantry_bin())
        .args(["envoy-config", "--config"])
        .arg(&config_path)
        .arg("--output")
        .arg(&bootstrap)
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{rendered:?}");
    let admin = gantry_testkit::loopback(ports.admin);
    let envoy =
        tokio::task::spawn_blocking(move || gantry_testkit::EnvoyProcess::start(&bootstrap, admin))
            .await
            .unwrap();
    let mut serve = gantry_testkit::ChildProcess::spawn(
        "gantry serve",
        std::process::Command::new(gantry_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config_path),
    );
    serve.wait_for_stdout("gantry: serving ext_proc", RELOAD_DEADLINE);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", ports.listen);
    let (status, _) = json_of(post(&url, &chat("m-later", "hi", false)).await).await;
    assert_eq!(status, 404);

    let staging = config_path.with_extension("staging");
    std::fs::write(
        &staging,
        yaml(&format!(
            "{MODELS}  - {{ name: m-later, provider: alpha, model: later-1 }}\n"
        )),
    )
    .unwrap();
    std::fs::rename(&staging, &config_path).unwrap();
    serve.signal(libc::SIGHUP);
    let serve = tokio::task::spawn_blocking(move || {
        serve.wait_for_stdout("gantry: config reloaded from", RELOAD_DEADLINE);
        serve
    })
    .await
    .unwrap();
    let (status, reply) = json_of(post(&url, &chat("m-later", "hi", false)).await).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["model"], "later-1");
    drop((serve, envoy));
}

/// Aliases with several targets are clusters of their own (with their subset clusters when
/// targets have conditions): a reload adds, changes and removes them. ext_proc path only (the
/// dynamic module does not serve such aliases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_changes_and_removes_target_clusters() {
    let (stack, alpha, beta, ports) = start(PolicyPath::ExtProc, &[]).await;
    let url = stack.url("/v1/chat/completions");
    let with_targets = |targets: &str| {
        format!(
            "{}{MODELS}  - name: spread\n    targets:\n{targets}",
            config(&ports, &alpha, &beta, "")
        )
    };

    // Reload 1: `spread` appears, alpha first; beta only for requests that stream.
    rewrite(
        &stack,
        &with_targets(
            "      - { provider: alpha, model: alpha-2 }
      - { provider: beta, model: beta-2, priority: 1, when: 'llm.stream' }
",
        ),
    );
    let stack = wait_for_stdout(stack, "(file changed; version 2;").await;
    let response = post(&url, &chat("spread", "hi", false)).await;
    let target = served_target(&response);
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(target.as_deref(), Some("alpha/alpha-2"));

    // Reload 2: the same alias, now beta first and alpha only as its fallback.
    rewrite(
        &stack,
        &with_targets(
            "      - { provider: beta, model: beta-3 }
      - { provider: alpha, model: alpha-3, priority: 1 }
",
        ),
    );
    let stack = wait_for_stdout(stack, "(file changed; version 3;").await;
    let response = post(&url, &chat("spread", "hi", false)).await;
    let target = served_target(&response);
    let (status, reply) = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(target.as_deref(), Some("beta/beta-3"));
    assert_eq!(
        beta.recorded().last().unwrap().header("authorization"),
        Some(format!("Bearer {BETA_KEY}").as_str())
    );

    // Reload 3: `spread` is gone; m-alpha still serves.
    rewrite(
        &stack,
        &format!("{}{MODELS}", config(&ports, &alpha, &beta, "")),
    );
    let stack = wait_for_stdout(stack, "(file changed; version 4;").await;
    let (status, reply) = json_of(post(&url, &chat("spread", "hi", false)).await).await;
    assert_eq!(status, 404, "{reply}");
    let (status, reply) = json_of(post(&url, &chat("m-alpha", "hi", false)).await).await;
    assert_eq!(status, 200, "{reply}");
    drop(stack);
}
