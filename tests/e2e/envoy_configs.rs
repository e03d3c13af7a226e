//! The checked-in Envoy configs under envoy-configs/ are exactly what `gantry envoy-config`
//! renders from examples/ (envoy-configs/module/: with `--mode module`), and every one passes
//! `envoy --mode validate` (which also loads the dynamic module and compiles its config).

use std::path::Path;
use std::process::Command;

use gantry_testkit::{envoy_binary, project_root};

use crate::gantry_bin;

/// (example config, rendered bootstrap), relative to the project root.
fn pairs() -> Vec<(String, String)> {
    let root = project_root();
    let mut pairs: Vec<(String, String)> = std::fs::read_dir(root.join("examples"))
        .expect("examples/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .map(|name| (format!("examples/{name}"), format!("envoy-configs/{name}")))
        .collect();
    pairs.sort();
    assert!(!pairs.is_empty());
    pairs
}

/// The module-mode renders: (example config, rendered bootstrap).
fn module_pairs() -> Vec<(String, String)> {
    let dir = project_root().join("envoy-configs/module");
    let mut pairs: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("envoy-configs/module/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .map(|name| {
            (
                format!("examples/{name}"),
                format!("envoy-configs/module/{name}"),
            )
        })
        .collect();
    pairs.sort();
    assert!(pairs.len() >= 3, "{pairs:?}");
    pairs
}

#[test]
fn checked_in_envoy_configs_match_a_fresh_render() {
    let root = project_root();
    let renders = pairs()
        .into_iter()
        .map(|pair| (pair, false))
        .chain(module_pairs().into_iter().map(|pair| (pair, true)));
    for ((example, rendered), module) in renders {
        let mut args = vec!["envoy-config", "--config", &example];
        if module {
            args.extend(["--mode", "module"]);
        }
        let out = Command::new(gantry_bin())
            .current_dir(&root)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fresh = String::from_utf8(out.stdout).unwrap();
        let checked_in = std::fs::read_to_string(root.join(&rendered)).unwrap_or_else(|_| {
            panic!("{rendered} is missing: run scripts/render-envoy-configs.sh")
        });
        assert!(
            fresh == checked_in,
            "{rendered} is stale: run scripts/render-envoy-configs.sh and commit the result"
        );
    }
}

#[test]
fn every_checked_in_envoy_config_passes_envoy_validate() {
    let root = project_root();
    // Module renders name the library `gantry`: Envoy finds libgantry.so here.
    let module_dir = gantry_bin()
        .parent()
        .expect("the gantry binary's directory")
        .to_path_buf();
    assert!(
        module_dir.join("libgantry.so").exists(),
        "run `cargo build -p gantry-dynamic-module` first (scripts/test.sh does)"
    );
    let entries = std::fs::read_dir(root.join("envoy-configs"))
        .unwrap()
        .chain(std::fs::read_dir(root.join("envoy-configs/module")).unwrap());
    let mut checked = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") || !is_bootstrap(&path) {
            continue;
        }
        let out = Command::new(envoy_binary())
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &module_dir)
            .args([
                "--mode",
                "validate",
                "--log-level",
                "error",
                "--config-path",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} fails envoy --mode validate:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= pairs().len() + module_pairs().len(),
        "validated only {checked} configs"
    );
}

/// Bootstraps have `static_resources`; snippets meant for pasting elsewhere do not.
fn is_bootstrap(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("\nstatic_resources:"))
}
