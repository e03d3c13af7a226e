use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gantry::{envoy_binary, envoy_bootstrap, local_stack, QUICKSTART_CONFIG, QUICKSTART_SOURCE};
use gantry_policy::ConfigFile;

/// Gantry: an AI gateway that lives inside Envoy.
#[derive(Parser)]
#[command(name = "gantry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the local stack: ext_proc in-process, Envoy as a child, until Ctrl-C.
    Run {
        /// Gantry config file (default: the bundled quickstart, examples/quickstart.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Envoy binary (default: $ENVOY_BIN, then .local/bin/envoy, then PATH).
        #[arg(long)]
        envoy: Option<PathBuf>,
        /// Envoy's own log level.
        #[arg(long, default_value = "warn")]
        envoy_log_level: String,
    },
    /// Validate a config file; exit 1 with every problem named.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Render the Envoy bootstrap for a config.
    EnvoyConfig {
        #[arg(long)]
        config: PathBuf,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Serve the built-in OpenAI-compatible mock provider (JSON and SSE).
    MockProvider {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: SocketAddr,
        /// Name reported in replies.
        #[arg(long, default_value = "mock")]
        name: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gantry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    ConfigFile::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Check { config } => {
            let parsed = load(&config)?;
            println!(
                "{}: OK ({} providers, {} models)",
                config.display(),
                parsed.providers.len(),
                parsed.models.len()
            );
            Ok(())
        }
        Commands::EnvoyConfig { config, output } => {
            let parsed = load(&config)?;
            let yaml = envoy_bootstrap::render_yaml(&parsed, &config.display().to_string())?;
            match output {
                Some(path) => std::fs::write(&path, yaml)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
                None => {
                    print!("{yaml}");
                    Ok(())
                }
            }
        }
        Commands::Run {
            config,
            envoy,
            envoy_log_level,
        } => {
            let (parsed, source) = match config {
                Some(path) => (load(&path)?, path.display().to_string()),
                None => (
                    ConfigFile::parse(QUICKSTART_CONFIG)
                        .map_err(|e| anyhow::anyhow!("bundled {QUICKSTART_SOURCE}: {e}"))?,
                    format!("{QUICKSTART_SOURCE} (bundled)"),
                ),
            };
            let envoy = envoy_binary::locate(envoy.as_deref())?;
            runtime()?.block_on(local_stack::run(local_stack::RunOptions {
                config: parsed,
                config_source: source,
                envoy,
                envoy_log_level,
            }))
        }
        Commands::MockProvider { listen, name } => runtime()?.block_on(async move {
            let mock = gantry_mock_provider::MockProvider::start(
                listen,
                gantry_mock_provider::MockConfig {
                    name,
                    ..Default::default()
                },
            )
            .await?;
            println!("gantry: mock provider at {}", mock.base_url());
            tokio::select! {
                result = mock.wait() => result?,
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
