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
use gantry_mock_provider::{MockConfig, MockProvider};
use gantry_policy::{ConfigFile, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::envoy_bootstrap;

/// How long Envoy may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long Envoy may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

pub struct RunOptions {
    pub config: ConfigFile,
    /// Names the config in the rendered bootstrap and in messages.
    pub config_source: String,
    pub envoy: PathBuf,
    pub envoy_log_level: String,
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

    let ext_proc_addr = config.ext_proc_addr();
    let ext_proc_listener = TcpListener::bind(ext_proc_addr)
        .await
        .with_context(|| format!("cannot listen on {ext_proc_addr} (ext_proc.listen)"))?;
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
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let (stop_ext_proc, ext_proc_stopped) = tokio::sync::oneshot::channel::<()>();
    let ext_proc_task = tokio::spawn(gantry_ext_proc::serve(
        ext_proc_listener,
        shared,
        async move {
            let _ = ext_proc_stopped.await;
        },
    ));

    let work_dir = std::env::temp_dir().join(format!("gantry-run-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    let bootstrap_path = work_dir.join("envoy.yaml");
    let bootstrap = envoy_bootstrap::render_yaml(config, &options.config_source)?;
    std::fs::write(&bootstrap_path, bootstrap)
        .with_context(|| format!("cannot write {}", bootstrap_path.display()))?;

    let mut envoy = spawn_envoy(&options.envoy, &bootstrap_path, &options.envoy_log_level)?;
    let outcome = supervise(&mut envoy, listen, admin, &models).await;
    stop_envoy(&mut envoy).await;
    let _ = stop_ext_proc.send(());
    let _ = ext_proc_task.await;
    drop(mocks);
    let _ = std::fs::remove_dir_all(&work_dir);
    outcome
}

/// Waits for readiness, then for a stop signal or Envoy's death.
async fn supervise(
    envoy: &mut Child,
    listen: SocketAddr,
    admin: SocketAddr,
    models: &[String],
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::select! {
        ready = wait_until_ready(envoy, listen, admin) => ready?,
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    }
    println!(
        "gantry: ready at http://{listen} (models: {}; Envoy admin at http://{admin}; Ctrl-C stops)",
        if models.is_empty() { "none".to_string() } else { models.join(", ") }
    );
    tokio::select! {
        status = envoy.wait() => {
            let status = status.context("cannot wait for envoy")?;
            bail!("envoy exited unexpectedly ({status}); see its log above")
        }
        _ = sigint.recv() => Ok(()),
        _ = sigterm.recv() => Ok(()),
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
