//! The official `openai` Python SDK (pinned in scripts/requirements.txt) against the stack.

use std::process::Command;

use gantry_testkit::{project_root, venv_python};

use crate::TwoProviders;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_works_through_gantry() {
    let t = TwoProviders::start("").await;
    let base_url = t.stack.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv_python())
            .arg(project_root().join("tests/interop/openai_sdk.py"))
            .args(["--base-url", &base_url, "--model", "m-beta"])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a report line"))
            .expect("the script's last line is a JSON report");
    assert_eq!(report["chat_model"], "beta-1");
    assert!(report["chat_total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(report["stream_text"], report["chat_text"]);
    assert_eq!(report["stream_chunks_with_usage"], 0);
    assert_eq!(
        report["stream_with_usage_total_tokens"],
        report["chat_total_tokens"]
    );
    assert_eq!(report["embedding_dimensions"], 8);
    assert_eq!(report["unknown_model_status"], 404);
    assert_eq!(report["unknown_model_code"], "model_not_found");
    assert!(report["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "m-beta"));

    // Every SDK call reached beta with Gantry's key, never the SDK's.
    let recorded = t.beta.recorded();
    assert!(recorded.len() >= 4, "{recorded:?}");
    for request in recorded {
        assert_eq!(
            request.header("authorization"),
            Some(&*format!("Bearer {}", crate::BETA_KEY))
        );
    }
}
