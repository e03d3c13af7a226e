//! `gantry run`: the whole stack on one machine. Starts the ext_proc server in-process (and the
//! built-in mock for `mock: true` providers), writes the Envoy bootstrap, launches Envoy as a
//! child in its own process group, waits until the listener answers, and stops everything on
//! Ctrl-C / SIGTERM. If Envoy dies or a port is taken it says so and fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use gantry_admin::{AdminApi, DirectorySync, ReloadOutcome, ReloadRequest};
use gantry_ext_authz::{AuthzService, JwksStore};
use gantry_ext_proc::GovernanceRuntime;
use gantry_mock_provider::{MockConfig, MockProvider};
use gantry_policy::{ConfigFile, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::envoy_bootstrap;
use crate::governance_store::open_store;

/// How long Envoy may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long Envoy may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long shutdown waits for settlements and spend records to reach the store.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub struct RunOptions {
    pub config: ConfigFile,
    /// The config's text and file (`None` for the bundled quickstart: nothing to reload).
    pub config_text: String,
    pub config_path: Option<PathBuf>,
    /// Reload when the file changes (SIGHUP always reloads).
    pub watch: bool,
    /// Names the config in the rendered bootstrap and in messages.
    pub config_source: String,
    pub envoy: PathBuf,
    pub envoy_log_level: String,
    /// ext_proc (Gantry's gRPC servers run here) or the dynamic module (they do not).
    pub filter_mode: envoy_bootstrap::FilterMode,
}

/// The dynamic module library: `explicit`, else `libgantry.so` next to this binary (where
/// cargo puts both).
pub fn locate_module(explicit: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let file = format!("lib{}.so", envoy_bootstrap::MODULE_NAME);
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find the gantry binary's directory")?
            .with_file_name(&file),
    };
    if !path.is_file() {
        bail!(
            "the dynamic module {} does not exist: build it with `cargo build -p gantry-dynamic-module` (same profile as gantry) or pass --module <path to {file}>",
            path.display()
        );
    }
    std::path::absolute(&path).with_context(|| format!("module path {}", path.display()))
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let config = &options.config;
    let snapshot = Snapshot::compile(config, &|name| std::env::var(name).ok());
    for (provider, env) in snapshot.unavailable_providers() {
        tracing::warn!(
            "provider '{provider}' is unavailable: {env} is not set (its models answer 503)"
        );
    }

    let listen = config.listen_addr();
    let admin = config.admin_addr();
    ensure_port_free(listen, "listen")?;
    ensure_port_free(admin, "admin")?;

    let mut mocks = Vec::new();
    for provider in snapshot.providers.iter().filter(|p| p.mock) {
        let Some(addr) = provider.endpoint.mock_listen_addr() else {
            continue;
        };
        let mock = MockProvider::start(
            addr,
            MockConfig {
                name: provider.name.clone(),
                ..MockConfig::default()
            },
        )
        .await
        .with_context(|| {
            format!(
                "cannot start the mock provider '{}' on {addr}",
                provider.name
            )
        })?;
        tracing::info!("mock provider '{}' serving on http://{addr}", provider.name);
        mocks.push(mock);
    }

    let models = snapshot.available_models.clone();
    let in_module = matches!(options.filter_mode, envoy_bootstrap::FilterMode::Module(_));
    if in_module {
        // Envoy compiles the same config in the module; say now what it would refuse.
        let bootstrap = envoy_bootstrap::render_with(config, &options.filter_mode);
        if let Err(e) = bootstrap {
            bail!("{e}");
        }
    }
    let mut services = Services::start_with(config, snapshot, !in_module).await?;
    let reload_requests = services.reload_requests.take();

    let work_dir = std::env::temp_dir().join(format!("gantry-run-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    // Listeners and clusters come from files Envoy watches, so a reload can change them.
    let (reloader, bootstrap) = crate::config_reload::Reloader::start(
        options.config_path.clone(),
        options.config_text.clone(),
        config.clone(),
        &options.filter_mode,
        &work_dir,
        services.shared.clone(),
    )?;
    let bootstrap_path = work_dir.join("envoy.json");
    std::fs::write(&bootstrap_path, serde_json::to_vec_pretty(&bootstrap)?)
        .with_context(|| format!("cannot write {}", bootstrap_path.display()))?;

    let mut envoy = spawn_envoy(&options.envoy, &bootstrap_path, &options.envoy_log_level)?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let outcome = supervise(
        &mut envoy,
        listen,
        admin,
        &models,
        scheme,
        Reloads {
            file: reloader,
            watch: options.watch,
            requests: reload_requests,
        },
    )
    .await;
    stop_envoy(&mut envoy).await;
    services.stop().await;
    drop(mocks);
    let _ = std::fs::remove_dir_all(&work_dir);
    outcome
}

/// Gantry's gRPC servers: ext_proc always, ext_authz when the config has an `auth` section.
pub struct Services {
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    /// Servers besides the gRPC ones (`/metrics`).
    extra_tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The store runtime, when the config has a `governance` section.
    pub governance: Option<Arc<GovernanceRuntime>>,
    /// The snapshot ext_proc and ext_authz serve from (`None` without them: module mode).
    pub shared: Option<Arc<ArcSwap<Snapshot>>>,
    /// Config reloads asked for through the admin API (with an `admin_api` section).
    pub reload_requests: Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
}

impl Services {
    /// Binds and starts the servers; fails if a port is taken or a JWKS file is unreadable.
    pub async fn start(config: &ConfigFile, snapshot: Snapshot) -> anyhow::Result<Services> {
        Self::start_with(config, snapshot, true).await
    }

    /// [`Services::start`]; without `policy_servers` (the dynamic module does their work in
    /// Envoy) only the MCP bridge and `/metrics` run.
    pub async fn start_with(
        config: &ConfigFile,
        snapshot: Snapshot,
        policy_servers: bool,
    ) -> anyhow::Result<Services> {
        let ext_proc_addr = config.ext_proc_addr();
        let ext_proc_listener =
            if policy_servers {
                Some(TcpListener::bind(ext_proc_addr).await.with_context(|| {
                    format!("cannot listen on {ext_proc_addr} (ext_proc.listen)")
                })?)
            } else {
                None
            };
        let authz = match snapshot.auth.as_ref().filter(|_| policy_servers) {
            Some(policy) => {
                let addr = config.auth_addr();
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (auth.listen)"))?;
                let jwks = Arc::new(JwksStore::new(policy)?);
                jwks.spawn_refresh();
                Some((listener, jwks))
            }
            None => None,
        };
        let governance = match snapshot.governance.as_ref().filter(|_| policy_servers) {
            Some(policy) => {
                let store = open_store(&policy.store)?;
                // Loading a tokenizer takes a moment: do it now, not on the first request.
                tokio::task::spawn_blocking(gantry_policy::governance::estimate::warm_tokenizers);
                tracing::info!(
                    "governance: {} budgets, {} rate limits, {} store",
                    policy.budget_count(),
                    policy.rate_limit_count(),
                    store.kind()
                );
                Some(GovernanceRuntime::start(store, policy.spend_log_retention))
            }
            None => None,
        };
        let shared = Arc::new(ArcSwap::from_pointee(snapshot));
        let mut services = Services {
            stop: Vec::new(),
            tasks: Vec::new(),
            extra_tasks: Vec::new(),
            governance: governance.clone(),
            shared: policy_servers.then(|| shared.clone()),
            reload_requests: None,
        };
        let mut admin_sync = None;
        if let (Some(section), Some(governance)) = (&config.admin_api, &governance) {
            let addr = section.listen_addr();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin_api.listen)"))?;
            let sync = Arc::new(DirectorySync::new(
                governance.store().clone(),
                governance.directory().clone(),
            ));
            match sync.refresh().await {
                Ok(version) => tracing::info!(
                    version,
                    "runtime keys and budgets loaded from the {} store",
                    governance.store().kind()
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot read runtime keys and budgets yet; retrying every {} ms",
                    section.sync_interval().as_millis()
                ),
            }
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            services.stop.push(stop);
            tokio::spawn(sync.clone().run(section.sync_interval(), async move {
                let _ = stopped.await;
            }));
            let (reload_sender, reload_requests) = tokio::sync::mpsc::channel(4);
            services.reload_requests = Some(reload_requests);
            admin_sync = Some(sync.clone());
            let api = AdminApi::new(shared.clone(), sync, Some(reload_sender));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            services.stop.push(stop);
            services.extra_tasks.push(tokio::spawn(async move {
                gantry_admin::serve(listener, api, async move {
                    let _ = stopped.await;
                })
                .await
                .map_err(std::io::Error::other)
            }));
            tracing::info!("admin API serving on {addr} (gRPC, gantry.admin.v1)");
        }
        if let Some(listener) = ext_proc_listener {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            services.stop.push(stop);
            services.tasks.push(tokio::spawn(gantry_ext_proc::serve(
                listener,
                shared.clone(),
                governance,
                async move {
                    let _ = stopped.await;
                },
            )));
            tracing::info!("ext_proc serving on {ext_proc_addr}");
        } else {
            tracing::info!(
                "policy runs in Envoy's dynamic module: no ext_proc or ext_authz server"
            );
        }
        let mut mcp_bridge = None;
        if let Some(section) = &config.mcp {
            let addr = section.listen_addr();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (mcp.listen)"))?;
            let settings = gantry_mcp_bridge::BridgeSettings::compile(
                section,
                Some(config.listen_addr()),
                &|name| std::env::var(name).ok(),
            );
            let bridge = Arc::new(
                gantry_mcp_bridge::Bridge::new(settings).context("cannot start the MCP bridge")?,
            );
            mcp_bridge = Some(bridge.clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            services.stop.push(stop);
            services
                .extra_tasks
                .push(tokio::spawn(gantry_mcp_bridge::serve(
                    listener,
                    bridge,
                    async move {
                        let _ = stopped.await;
                    },
                )));
            tracing::info!("MCP bridge serving on http://{addr}{}", section.path());
        }
        if let Some(addr) = config.metrics_addr() {
            let (listener, router) = crate::metrics_endpoint::bind(
                addr,
                services.governance.clone(),
                mcp_bridge,
                admin_sync,
            )
            .await?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            services.stop.push(stop);
            services.extra_tasks.push(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
            }));
            tracing::info!("metrics served on http://{addr}/metrics");
        }
        if let Some((listener, jwks)) = authz {
            let addr = listener.local_addr().ok();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            services.stop.push(stop);
            services.tasks.push(tokio::spawn(gantry_ext_authz::serve(
                listener,
                match &services.governance {
                    Some(governance) => AuthzService::new(shared, jwks)
                        .with_runtime_directory(governance.directory().clone()),
                    None => AuthzService::new(shared, jwks),
                },
                async move {
                    let _ = stopped.await;
                },
            )));
            tracing::info!("ext_authz serving on {addr:?}");
        }
        Ok(services)
    }

    /// Waits until a server fails (it should not) and says which.
    pub async fn failed(&mut self) -> anyhow::Error {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (result, index, _) = futures::future::select_all(self.tasks.iter_mut()).await;
        let what = if index == 0 { "ext_proc" } else { "ext_authz" };
        match result {
            Ok(Ok(())) => anyhow::anyhow!("the {what} server stopped"),
            Ok(Err(e)) => anyhow::anyhow!("the {what} server failed: {e}"),
            Err(e) => anyhow::anyhow!("the {what} server panicked: {e}"),
        }
    }

    /// Stops the servers, then waits for settlements and spend records to reach the store.
    pub async fn stop(self) {
        for stop in self.stop {
            let _ = stop.send(());
        }
        for task in self.tasks {
            let _ = task.await;
        }
        for task in self.extra_tasks {
            let _ = task.await;
        }
        if let Some(governance) = &self.governance {
            governance.drain(DRAIN_DEADLINE).await;
        }
    }
}

/// `gantry serve`: only the gRPC servers, for an Envoy or Istio gateway run by someone else.
pub async fn serve(config: ConfigFile, config_path: &std::path::Path) -> anyhow::Result<()> {
    let snapshot = Snapshot::compile(&config, &|name| std::env::var(name).ok());
    for (provider, env) in snapshot.unavailable_providers() {
        tracing::warn!(
            "provider '{provider}' is unavailable: {env} is not set (its models answer 503)"
        );
    }
    let has_auth = snapshot.auth.is_some();
    let mut services = Services::start(&config, snapshot).await?;
    let mut reloader = match &services.shared {
        Some(shared) => Some(crate::config_reload::SnapshotReloader::new(
            config_path.to_path_buf(),
            config.clone(),
            shared.clone(),
        )?),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    println!(
        "gantry: serving ext_proc on {}{} (Ctrl-C stops)",
        config.ext_proc_addr(),
        if has_auth {
            format!(" and ext_authz on {}", config.auth_addr())
        } else {
            String::new()
        }
    );
    let mut poll = tokio::time::interval(crate::config_reload::WATCH_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reload_requests = services.reload_requests.take();
    let outcome = loop {
        let mut asked: Option<ReloadRequest> = None;
        let why = tokio::select! {
            e = services.failed() => break Err(e),
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            _ = sighup.recv() => "SIGHUP",
            _ = poll.tick() => {
                if !reloader.as_ref().is_some_and(|r| r.file_changed()) {
                    continue;
                }
                "file changed"
            }
            Some(reply) = next_reload_request(&mut reload_requests) => {
                asked = Some(reply);
                "admin API"
            }
        };
        let Some(reloader) = reloader.as_mut() else {
            answer_reload(asked, Err("this process serves no config file".into()));
            continue;
        };
        // Only Gantry's policy reloads here: the Envoy in front is configured by its owner.
        let result = reloader.reload().await;
        let path = reloader.path().display().to_string();
        let answer = reload_answer(&path, why, result, || {
            let message = format!("config reloaded from {path}");
            println!("gantry: {message} ({why})");
            message
        });
        answer_reload(asked, answer);
    };
    services.stop().await;
    outcome
}

/// What can reload the config of `gantry run`.
struct Reloads {
    /// The config file's reloader (`None` for the bundled quickstart).
    file: Option<crate::config_reload::Reloader>,
    /// Reload when the file changes.
    watch: bool,
    /// Reloads asked for through the admin API.
    requests: Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
}

/// Waits for readiness, then for a stop signal or Envoy's death, reloading the config when
/// its file changes (with `watch`) or on SIGHUP.
async fn supervise(
    envoy: &mut Child,
    listen: SocketAddr,
    admin: SocketAddr,
    models: &[String],
    scheme: &str,
    reloads: Reloads,
) -> anyhow::Result<()> {
    let Reloads {
        file: mut reloader,
        watch,
        requests: mut reload_requests,
    } = reloads;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::select! {
        ready = wait_until_ready(envoy, listen, admin) => ready?,
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    }
    println!(
        "gantry: ready at {scheme}://{listen} (models: {}; Envoy admin at http://{admin}; Ctrl-C stops)",
        if models.is_empty() { "none".to_string() } else { models.join(", ") }
    );
    let mut poll = tokio::time::interval(crate::config_reload::WATCH_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut asked: Option<ReloadRequest> = None;
        let why = tokio::select! {
            status = envoy.wait() => {
                let status = status.context("cannot wait for envoy")?;
                bail!("envoy exited unexpectedly ({status}); see its log above")
            }
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = sighup.recv() => "SIGHUP",
            _ = poll.tick(), if watch && reloader.is_some() => {
                if !reloader.as_ref().is_some_and(|r| r.file_changed()) {
                    continue;
                }
                "file changed"
            }
            Some(reply) = next_reload_request(&mut reload_requests) => {
                asked = Some(reply);
                "admin API"
            }
        };
        let Some(reloader) = reloader.as_mut() else {
            println!("gantry: {why}: the bundled quickstart has no config file to reload");
            answer_reload(
                asked,
                Err("gantry runs the bundled quickstart: there is no config file to reload".into()),
            );
            continue;
        };
        let result = reloader.reload().await;
        let path = reloader.path().display().to_string();
        let answer = reload_answer(&path, why, result, || {
            let (version, models) = (reloader.version(), reloader.models().join(", "));
            // The test suite and operators read this line: keep its shape.
            println!(
                "gantry: config reloaded from {path} ({why}; version {version}; models: {models})"
            );
            format!("config reloaded from {path} (version {version}; models: {models})")
        });
        answer_reload(asked, answer);
    }
}

/// The next reload asked for through the admin API (never, without one).
async fn next_reload_request(
    requests: &mut Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
) -> Option<ReloadRequest> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

/// What a reload did, for the admin API; a refusal is printed here, a change by `changed`
/// (which returns the message).
fn reload_answer(
    path: &str,
    why: &str,
    result: anyhow::Result<bool>,
    changed: impl FnOnce() -> String,
) -> Result<ReloadOutcome, String> {
    match result {
        Ok(true) => Ok(ReloadOutcome {
            changed: true,
            message: changed(),
        }),
        Ok(false) => Ok(ReloadOutcome {
            changed: false,
            message: format!("{path} has not changed"),
        }),
        Err(e) => {
            println!(
                "gantry: config reload refused ({why}): {path}: {e:#}; the previous config keeps serving"
            );
            Err(format!("{path}: {e:#}"))
        }
    }
}

fn answer_reload(asked: Option<ReloadRequest>, answer: Result<ReloadOutcome, String>) {
    if let Some(reply) = asked {
        // The caller may have given up waiting; the reload happened either way.
        let _ = reply.send(answer);
    }
}

fn ensure_port_free(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => bail!("cannot use {addr} ({what}): {e}; is another gantry or envoy running?"),
    }
}

fn spawn_envoy(
    binary: &std::path::Path,
    bootstrap: &std::path::Path,
    log_level: &str,
) -> anyhow::Result<Child> {
    let mut command = Command::new(binary);
    command
        .arg("--config-path")
        .arg(bootstrap)
        .arg("--log-level")
        .arg(log_level)
        .arg("--disable-hot-restart")
        // The access log goes to stdout through Envoy's file flusher (default every 10 s).
        .arg("--file-flush-interval-msec")
        .arg("500")
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // Envoy must not outlive gantry, even if gantry is killed with SIGKILL.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start envoy at {}", binary.display()))
}

async fn wait_until_ready(
    envoy: &mut Child,
    listen: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Some(status) = envoy.try_wait().context("cannot poll envoy")? {
            bail!("envoy exited during startup ({status}); see its log above");
        }
        if admin_says_live(admin).await && TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "envoy did not become ready within {}s (admin http://{admin}/ready)",
                READY_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /ready` on Envoy's admin port answers 200 once listeners are up.
async fn admin_says_live(admin: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn stop_envoy(envoy: &mut Child) {
    let Some(pid) = envoy.id() else {
        return; // already reaped
    };
    // SAFETY: plain syscall; Envoy leads its own process group (process_group(0)).
    unsafe {
        libc::kill(-(pid as i32), libc::SIGTERM);
    }
    if tokio::time::timeout(STOP_DEADLINE, envoy.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "envoy did not stop within {}s; killing it",
            STOP_DEADLINE.as_secs()
        );
        // SAFETY: as above.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
        let _ = envoy.wait().await;
    }
}
