//! Hot reload for `gantry run`: the config file is watched (and re-read on SIGHUP); a new
//! valid config is compiled off the request path and applied without failing a request, an
//! invalid one is refused with the problem named while the previous config keeps serving.
//!
//! Applying a config, in order:
//! 1. Envoy's clusters (file-based CDS): the new config's providers plus the previous ones, so
//!    anything still routed by the previous policy finds its cluster; Envoy confirms with
//!    `cluster_manager.cds.update_success`.
//! 2. Envoy's listener (file-based LDS), when it changed (routes, filters, the module's
//!    config): Envoy builds the new listener, then drains the old one, whose requests in flight
//!    finish; confirmed with `listener_manager.lds.update_success` and no listener warming.
//! 3. In ext_proc mode, the new `Snapshot` (compiled on a blocking thread) is swapped in
//!    atomically; each request keeps the snapshot it started with.
//!
//! What needs a restart is refused, naming the field: the admin address, Gantry's own server
//! addresses (`ext_proc.listen`, `auth.listen`, `metrics`), the `mcp` section, adding or
//! removing `auth`, `auth.jwt` issuers, `governance.store`, and the set of `mock: true`
//! providers (their servers start with `gantry run`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use gantry_policy::{ConfigFile, Snapshot};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::envoy_bootstrap::{self, FilterMode, ModuleFilter, CDS_FILE, LDS_FILE};

/// How long Envoy may take to accept new clusters or a new listener.
const APPLY_DEADLINE: Duration = Duration::from_secs(15);
/// How often the config file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The running config and where Envoy reads its listeners and clusters.
pub struct Reloader {
    config: WatchedConfig,
    /// `Some` in module mode: where the library is.
    module_library: Option<PathBuf>,
    xds_dir: PathBuf,
    admin: SocketAddr,
    version: u64,
    listeners: Value,
    clusters: Value,
    /// The snapshot ext_proc and ext_authz serve from (ext_proc mode only).
    shared: Option<Arc<ArcSwap<Snapshot>>>,
}

/// The config file as last seen and the config now applied; both reloaders share it.
struct WatchedConfig {
    path: PathBuf,
    /// The file as last seen (changed contents trigger a reload).
    last_text: String,
    current: ConfigFile,
    /// `current` as JSON, to compare the fields that need a restart.
    current_json: Value,
}

/// A changed, valid config that needs no restart, not applied yet.
struct Candidate {
    config: ConfigFile,
    json: Value,
    text: String,
}

impl WatchedConfig {
    fn new(path: PathBuf, text: String, current: ConfigFile) -> anyhow::Result<WatchedConfig> {
        Ok(WatchedConfig {
            current_json: serde_json::from_str(&envoy_bootstrap::config_as_json(&text)?)?,
            last_text: text,
            path,
            current,
        })
    }

    fn file_changed(&self) -> bool {
        std::fs::read_to_string(&self.path).is_ok_and(|text| text != self.last_text)
    }

    /// Re-reads the file: `None` when unchanged; an error names what is wrong with it.
    fn next(&mut self) -> anyhow::Result<Option<Candidate>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        if text == self.last_text {
            return Ok(None);
        }
        // Seen, valid or not: an invalid file is reported once, not on every poll.
        self.last_text = text.clone();
        let config = ConfigFile::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let json: Value = serde_json::from_str(&envoy_bootstrap::config_as_json(&text)?)?;
        restart_only_change(&self.current, &self.current_json, &config, &json)?;
        Ok(Some(Candidate { config, json, text }))
    }

    fn accept(&mut self, candidate: Candidate) {
        self.current = candidate.config;
        self.current_json = candidate.json;
    }
}

/// Compiles a snapshot on a blocking thread (off the runtime's request-serving threads).
async fn compile_snapshot(config: &ConfigFile) -> anyhow::Result<Snapshot> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        Snapshot::compile(&config, &|name| std::env::var(name).ok())
    })
    .await
    .context("compiling the new snapshot")
}

/// The mode's filter description for a config text.
fn filter_mode(module_library: &Option<PathBuf>, text: &str) -> anyhow::Result<FilterMode> {
    Ok(match module_library {
        None => FilterMode::ExtProc,
        Some(library) => FilterMode::Module(ModuleFilter {
            config_json: envoy_bootstrap::config_as_json(text)?,
            library: Some(library.clone()),
        }),
    })
}

/// Writes `value` as `dir/name` atomically (written beside, then renamed in: Envoy watches the
/// directory for moves).
fn write_xds_file(dir: &Path, name: &str, value: &Value) -> anyhow::Result<()> {
    let staging = dir.parent().unwrap_or(dir).join(format!(".{name}.staging"));
    std::fs::write(&staging, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    std::fs::rename(&staging, dir.join(name))
        .with_context(|| format!("cannot move {name} into {}", dir.display()))?;
    Ok(())
}

impl Reloader {
    /// Writes the first LDS/CDS files and returns the bootstrap Envoy starts from.
    pub fn start(
        path: Option<PathBuf>,
        text: String,
        config: ConfigFile,
        filter_mode_now: &FilterMode,
        work_dir: &Path,
        shared: Option<Arc<ArcSwap<Snapshot>>>,
    ) -> anyhow::Result<(Option<Reloader>, Value)> {
        let xds_dir = work_dir.join("xds");
        std::fs::create_dir_all(&xds_dir)
            .with_context(|| format!("cannot create {}", xds_dir.display()))?;
        let rendered = envoy_bootstrap::render_dynamic(&config, filter_mode_now, &xds_dir, 1)?;
        write_xds_file(&xds_dir, CDS_FILE, &rendered.clusters)?;
        write_xds_file(&xds_dir, LDS_FILE, &rendered.listeners)?;
        let Some(path) = path else {
            // The bundled quickstart has no file to watch.
            return Ok((None, rendered.bootstrap));
        };
        let module_library = match filter_mode_now {
            FilterMode::ExtProc => None,
            FilterMode::Module(module) => module.library.clone(),
        };
        let reloader = Reloader {
            admin: config.admin_addr(),
            config: WatchedConfig::new(path, text, config)?,
            module_library,
            xds_dir,
            version: 1,
            listeners: rendered.listeners,
            clusters: rendered.clusters,
            shared,
        };
        Ok((Some(reloader), rendered.bootstrap))
    }

    /// Whether the file's contents differ from what was last seen.
    pub fn file_changed(&self) -> bool {
        self.config.file_changed()
    }

    /// Re-reads the file and applies it. `Ok(false)`: nothing changed.
    pub async fn reload(&mut self) -> anyhow::Result<bool> {
        let Some(next) = self.config.next()? else {
            return Ok(false);
        };
        let mode = filter_mode(&self.module_library, &next.text)?;
        let transition = envoy_bootstrap::transition_config(&next.config, &self.config.current);
        let version = self.version + 1;
        let rendered = envoy_bootstrap::render_dynamic(&transition, &mode, &self.xds_dir, version)?;
        let snapshot = match &self.shared {
            Some(_) => Some(compile_snapshot(&next.config).await?),
            None => None,
        };
        if !same_resources(&rendered.clusters, &self.clusters) {
            let before = self.stat("cluster_manager.cds.update_success").await;
            write_xds_file(&self.xds_dir, CDS_FILE, &rendered.clusters)?;
            self.wait_applied("cluster_manager.cds", before).await?;
            self.clusters = rendered.clusters;
        }
        if !same_resources(&rendered.listeners, &self.listeners) {
            let before = self.stat("listener_manager.lds.update_success").await;
            write_xds_file(&self.xds_dir, LDS_FILE, &rendered.listeners)?;
            self.wait_applied("listener_manager.lds", before).await?;
            self.wait_no_listener_warming().await?;
            self.listeners = rendered.listeners;
        }
        if let (Some(shared), Some(snapshot)) = (&self.shared, snapshot) {
            shared.store(Arc::new(snapshot));
        }
        self.version = version;
        self.config.accept(next);
        Ok(true)
    }

    /// The models clients may use under the current config.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .config
            .current
            .models
            .iter()
            .map(|m| m.name.value.clone())
            .collect();
        names.sort();
        names
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// A counter from Envoy's admin `/stats`, 0 when unreadable.
    async fn stat(&self, name: &str) -> u64 {
        admin_get(self.admin, &format!("/stats?filter=%5E{name}%24"))
            .await
            .and_then(|body| {
                body.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn wait_applied(&self, prefix: &str, before: u64) -> anyhow::Result<()> {
        let rejected_before = self.stat(&format!("{prefix}.update_rejected")).await;
        let deadline = Instant::now() + APPLY_DEADLINE;
        loop {
            if self.stat(&format!("{prefix}.update_success")).await > before {
                return Ok(());
            }
            if self.stat(&format!("{prefix}.update_rejected")).await > rejected_before {
                bail!("Envoy rejected the new {prefix} resources (see Envoy's log); the previous ones keep serving");
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy did not apply the new {prefix} resources within {}s",
                    APPLY_DEADLINE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_no_listener_warming(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + APPLY_DEADLINE;
        while self.stat("listener_manager.total_listeners_warming").await > 0 {
            if Instant::now() > deadline {
                bail!("Envoy's new listener did not warm up in time");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }
}

/// Refuses a change that needs a restart, naming the field.
pub fn restart_only_change(
    current: &ConfigFile,
    current_json: &Value,
    next: &ConfigFile,
    json: &Value,
) -> anyhow::Result<()> {
    let old = current_json;
    let pointers = [
        ("/admin", "admin"),
        ("/ext_proc/listen", "ext_proc.listen"),
        ("/auth/listen", "auth.listen"),
        ("/auth/jwt", "auth.jwt"),
        ("/metrics", "metrics"),
        ("/mcp", "mcp"),
        ("/governance/store", "governance.store"),
    ];
    for (pointer, field) in pointers {
        if old.pointer(pointer) != json.pointer(pointer) {
            bail!("{field} changed: that needs a restart");
        }
    }
    if current.auth.is_some() != next.auth.is_some() {
        bail!("adding or removing the auth section needs a restart");
    }
    if current.governance.is_some() != next.governance.is_some() {
        bail!("adding or removing the governance section needs a restart");
    }
    let mocks = |config: &ConfigFile| {
        let mut mocks: Vec<(String, String)> = config
            .providers
            .iter()
            .filter(|p| p.mock)
            .map(|p| (p.name.value.clone(), p.endpoint.value.clone()))
            .collect();
        mocks.sort();
        mocks
    };
    if mocks(current) != mocks(next) {
        bail!("the mock: true providers changed: their servers start with gantry run, so that needs a restart");
    }
    Ok(())
}

/// Reloads for `gantry serve`: only the snapshot (Envoy is someone else's).
pub struct SnapshotReloader {
    config: WatchedConfig,
    shared: Arc<ArcSwap<Snapshot>>,
}

impl SnapshotReloader {
    pub fn new(
        path: PathBuf,
        config: ConfigFile,
        shared: Arc<ArcSwap<Snapshot>>,
    ) -> anyhow::Result<SnapshotReloader> {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(SnapshotReloader {
            config: WatchedConfig::new(path, text, config)?,
            shared,
        })
    }

    pub fn file_changed(&self) -> bool {
        self.config.file_changed()
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Re-reads the file and swaps the snapshot. `Ok(false)`: nothing changed.
    pub async fn reload(&mut self) -> anyhow::Result<bool> {
        let Some(next) = self.config.next()? else {
            return Ok(false);
        };
        let snapshot = compile_snapshot(&next.config).await?;
        self.shared.store(Arc::new(snapshot));
        self.config.accept(next);
        Ok(true)
    }
}

/// Two DiscoveryResponses hold the same resources (their version labels aside).
fn same_resources(a: &Value, b: &Value) -> bool {
    a["resources"] == b["resources"]
}

/// `GET path` on Envoy's admin interface; the body, or `None`.
async fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    let request = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .ok()
        .flatten()
}
