use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gantry::{envoy_binary, envoy_bootstrap, local_stack, QUICKSTART_CONFIG, QUICKSTART_SOURCE};
use gantry_policy::auth::api_keys::{generate_key, KeyHash};
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
        /// Where Gantry's policy runs: Gantry's ext_proc/ext_authz servers, or its dynamic
        /// module inside Envoy (no gRPC hop; no JWTs or budgets).
        #[arg(long, value_enum, default_value = "ext-proc")]
        mode: PolicyMode,
        /// The dynamic module library (default: libgantry.so next to this binary).
        #[arg(long)]
        module: Option<PathBuf>,
        /// Do not watch the config file (SIGHUP still reloads it).
        #[arg(long)]
        no_watch: bool,
    },
    /// Run only Gantry's gRPC servers (ext_proc, and ext_authz when the config has `auth`),
    /// for an Envoy or Istio gateway you run yourself.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// API keys: create, list, revoke and rotate them at runtime through the admin API, or
    /// make one (and its hash) for the config's `auth.api_keys`.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
        #[command(flatten)]
        connection: gantry::admin_client::AdminConnection,
    },
    /// Budgets on keys, users and teams, through the admin API.
    Budget {
        #[command(subcommand)]
        command: BudgetCommand,
        #[command(flatten)]
        connection: gantry::admin_client::AdminConnection,
    },
    /// Metadata of users and teams (for rules, as `principal.metadata`), through the admin API.
    Metadata {
        #[command(subcommand)]
        command: MetadataCommand,
        #[command(flatten)]
        connection: gantry::admin_client::AdminConnection,
    },
    /// The admin API's audit log: who changed what, when.
    Audit {
        /// The newest this many events.
        #[arg(long, default_value = "100")]
        limit: u32,
        #[arg(long, value_enum, default_value = "table")]
        format: gantry::admin_client::ListFormat,
        #[command(flatten)]
        connection: gantry::admin_client::AdminConnection,
    },
    /// Ask a running Gantry to reload its config file (as SIGHUP does).
    Reload {
        #[command(flatten)]
        connection: gantry::admin_client::AdminConnection,
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
        /// Where Gantry's policy runs (see `gantry run --mode`).
        #[arg(long, value_enum, default_value = "ext-proc")]
        mode: PolicyMode,
        /// With --mode module: the library's absolute path. Without it, Envoy finds
        /// libgantry.so through ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
        #[arg(long)]
        module: Option<PathBuf>,
    },
    /// Report spend from the spend log (grouped, or raw records) as a table, CSV or JSON,
    /// asked of a running Gantry's admin API (or, with --config, read from its store).
    Spend {
        /// Read the configured store directly instead of asking the admin API (works while
        /// Gantry is stopped; the embedded store is opened read-only).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Group by any of: key, user, team, model, provider, day (comma-separated).
        #[arg(long, default_value = "key")]
        by: String,
        /// From this day (YYYY-MM-DD, in the governance time zone) or instant (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Before this day or instant.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: gantry::spend::SpendFormat,
        /// One line per request instead of groups (CSV, or JSON lines with --format json).
        #[arg(long)]
        records: bool,
        #[command(flatten)]
        connection: gantry::admin_client::AdminConnection,
    },
    /// Convert another gateway's config into a Gantry config.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
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

/// Where Gantry's policy runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PolicyMode {
    /// Envoy calls Gantry's ext_authz and ext_proc gRPC servers.
    ExtProc,
    /// Gantry's dynamic module (libgantry.so) runs inside Envoy.
    Module,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A LiteLLM proxy config.yaml (model_list, router_settings, litellm_settings). Every
    /// setting that does not carry over is reported on standard error and in the output.
    Litellm {
        /// The LiteLLM config file.
        file: PathBuf,
        /// Write the Gantry config here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// `listen` of the generated config: where Envoy accepts client traffic.
        #[arg(long, default_value = "127.0.0.1:10000")]
        listen: SocketAddr,
        /// `admin` of the generated config: Envoy's admin interface (loopback).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// `ext_proc.listen` of the generated config: Gantry's ext_proc gRPC server.
        #[arg(long, default_value = "127.0.0.1:10001")]
        ext_proc_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a fresh random key and the hash to put in the config (no Gantry needed; also
    /// makes admin tokens for `admin_api.tokens`).
    New {
        /// The key's name in the config snippet printed.
        #[arg(long, default_value = "my-key")]
        name: String,
    },
    /// Print the hash of an existing key, read from standard input.
    Hash,
    /// Create a key at runtime; its secret is printed once.
    Create(gantry::admin_client::KeyCreate),
    /// Keys of the config and of the admin API.
    List {
        /// Also list revoked keys.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: gantry::admin_client::ListFormat,
    },
    /// One key.
    Show {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: gantry::admin_client::ListFormat,
    },
    /// Change a runtime key's user, team, model allow-list, labels or expiry.
    Update(gantry::admin_client::KeyUpdate),
    /// Revoke a runtime key: every replica refuses it within the sync interval.
    Revoke {
        name: String,
        /// Kept in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Give a runtime key a new secret (printed once); the old one keeps working for the
    /// grace period.
    Rotate {
        name: String,
        /// Seconds the previous secret keeps working (default admin_api.rotation_grace_secs;
        /// 0 stops it at once).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// Create or replace a budget on key:<name>, user:<id> or team:<id>.
    Set(gantry::admin_client::BudgetSet),
    /// What applies to key:<name>, user:<id> or team:<id> now: limits, spent, remaining.
    Show {
        subject: String,
        /// Evaluate model-dependent scopes for this model.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: gantry::admin_client::ListFormat,
    },
    /// Budgets of the config and of the admin API.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: gantry::admin_client::ListFormat,
    },
    /// Delete a runtime budget.
    Delete { name: String },
}

#[derive(Subcommand)]
enum MetadataCommand {
    /// Replace the metadata of user:<id> or team:<id> (no entries removes it).
    Set {
        subject: String,
        /// `name=value` entries.
        #[arg(value_parser = gantry::admin_client::parse_pair)]
        entries: Vec<(String, String)>,
    },
    /// Every user's and team's metadata.
    List,
}

/// Runs one admin API call on a fresh runtime and prints its answer.
fn admin_call<F>(
    connection: &gantry::admin_client::AdminConnection,
    call: impl FnOnce(gantry::admin_client::Admin) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<String>>,
{
    let text = runtime()?.block_on(async {
        let admin = gantry::admin_client::Admin::connect(connection).await?;
        call(admin).await
    })?;
    print!("{text}");
    Ok(())
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
        Commands::Import {
            command:
                ImportCommand::Litellm {
                    file,
                    output,
                    listen,
                    admin,
                    ext_proc_listen,
                },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let options = gantry::import_litellm::ImportOptions {
                listen,
                admin,
                ext_proc_listen,
                source: Some(file.display().to_string()),
            };
            let conversion = gantry::import_litellm::convert(&text, &options)
                .map_err(|e| anyhow::anyhow!("cannot convert {}: {e}", file.display()))?;
            let written = match &output {
                Some(path) => {
                    std::fs::write(path, &conversion.yaml)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    path.display().to_string()
                }
                None => {
                    print!("{}", conversion.yaml);
                    "standard output".to_string()
                }
            };
            eprintln!(
                "gantry: converted {} into {} models and {} providers ({written})",
                file.display(),
                conversion.models,
                conversion.providers
            );
            if !conversion.env_vars.is_empty() {
                eprintln!(
                    "gantry: the config reads these environment variables: {}",
                    conversion.env_vars.join(", ")
                );
            }
            if conversion.unconverted.is_empty() {
                eprintln!("gantry: every setting was carried over");
            } else {
                eprintln!(
                    "gantry: {} settings not carried over:",
                    conversion.unconverted.len()
                );
                for item in &conversion.unconverted {
                    eprintln!("  - {item}");
                }
            }
            Ok(())
        }
        Commands::Check { config } => {
            let parsed = load(&config)?;
            let auth = match &parsed.auth {
                Some(auth) => format!(
                    ", auth: {} API keys, {} JWT issuers, {} rules",
                    auth.api_keys.len(),
                    auth.jwt.len(),
                    auth.rules.len()
                ),
                None => String::new(),
            };
            let governance = match &parsed.governance {
                Some(g) => format!(
                    ", governance: {} budgets, {} rate limits, {} store",
                    g.budgets.len(),
                    g.rate_limits.len(),
                    g.store.kind()
                ),
                None => String::new(),
            };
            let a2a = match &parsed.a2a {
                Some(a) => format!(", a2a: {} agents, {} rules", a.agents.len(), a.rules.len()),
                None => String::new(),
            };
            let direct = match &parsed.mcp_direct {
                Some(d) => format!(", mcp_direct: {} servers", d.servers.len()),
                None => String::new(),
            };
            let admin = match &parsed.admin_api {
                Some(a) => format!(
                    ", admin API on {} with {} tokens",
                    a.listen_addr(),
                    a.tokens.len()
                ),
                None => String::new(),
            };
            println!(
                "{}: OK ({} providers, {} models{auth}{governance}{a2a}{direct}{admin})",
                config.display(),
                parsed.providers.len(),
                parsed.models.len()
            );
            Ok(())
        }
        Commands::EnvoyConfig {
            config,
            output,
            mode,
            module,
        } => {
            let parsed = load(&config)?;
            let filter_mode = match mode {
                PolicyMode::ExtProc => envoy_bootstrap::FilterMode::ExtProc,
                PolicyMode::Module => {
                    let text = std::fs::read_to_string(&config)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", config.display()))?;
                    let library =
                        match module {
                            Some(path) => Some(std::path::absolute(&path).map_err(|e| {
                                anyhow::anyhow!("module path {}: {e}", path.display())
                            })?),
                            None => None,
                        };
                    envoy_bootstrap::FilterMode::Module(envoy_bootstrap::ModuleFilter {
                        config_json: envoy_bootstrap::config_as_json(&text)?,
                        library,
                    })
                }
            };
            let yaml = envoy_bootstrap::render_yaml_with(
                &parsed,
                &config.display().to_string(),
                &filter_mode,
            )?;
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
            mode,
            module,
            no_watch,
        } => {
            let config_path = config.clone();
            let (parsed, source, text) = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    (load(&path)?, path.display().to_string(), text)
                }
                None => (
                    ConfigFile::parse(QUICKSTART_CONFIG)
                        .map_err(|e| anyhow::anyhow!("bundled {QUICKSTART_SOURCE}: {e}"))?,
                    format!("{QUICKSTART_SOURCE} (bundled)"),
                    QUICKSTART_CONFIG.to_string(),
                ),
            };
            let filter_mode = match mode {
                PolicyMode::ExtProc => envoy_bootstrap::FilterMode::ExtProc,
                PolicyMode::Module => {
                    envoy_bootstrap::FilterMode::Module(envoy_bootstrap::ModuleFilter {
                        config_json: envoy_bootstrap::config_as_json(&text)?,
                        library: Some(local_stack::locate_module(module.as_deref())?),
                    })
                }
            };
            let envoy = envoy_binary::locate(envoy.as_deref())?;
            runtime()?.block_on(local_stack::run(local_stack::RunOptions {
                config: parsed,
                config_text: text,
                config_path,
                watch: !no_watch,
                config_source: source,
                envoy,
                envoy_log_level,
                filter_mode,
            }))
        }
        Commands::Serve { config } => {
            let parsed = load(&config)?;
            runtime()?.block_on(local_stack::serve(parsed, &config))
        }
        Commands::Key {
            command,
            connection,
        } => match command {
            KeyCommand::New { name } => {
                let key = generate_key().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let hash = KeyHash::of(&key);
                println!("key:  {key}");
                println!("hash: {hash}");
                println!();
                println!("# Give the key to its user; put only the hash in the config:");
                println!("auth:\n  api_keys:\n    - name: {name}\n      hash: {hash}");
                Ok(())
            }
            KeyCommand::Hash => {
                let mut key = String::new();
                std::io::stdin()
                    .read_line(&mut key)
                    .map_err(|e| anyhow::anyhow!("cannot read the key from standard input: {e}"))?;
                let key = key.trim();
                if key.is_empty() {
                    anyhow::bail!("no key on standard input");
                }
                println!("{}", KeyHash::of(key));
                Ok(())
            }
            KeyCommand::Create(args) => admin_call(&connection, |mut admin| async move {
                gantry::admin_client::key_create(&mut admin, args).await
            }),
            KeyCommand::List { all, format } => admin_call(&connection, |mut admin| async move {
                gantry::admin_client::key_list(&mut admin, all, format).await
            }),
            KeyCommand::Show { name, format } => admin_call(&connection, |mut admin| async move {
                gantry::admin_client::key_show(&mut admin, name, format).await
            }),
            KeyCommand::Update(args) => admin_call(&connection, |mut admin| async move {
                gantry::admin_client::key_update(&mut admin, args).await
            }),
            KeyCommand::Revoke { name, reason } => {
                admin_call(&connection, |mut admin| async move {
                    gantry::admin_client::key_revoke(&mut admin, name, reason).await
                })
            }
            KeyCommand::Rotate { name, grace_secs } => {
                admin_call(&connection, |mut admin| async move {
                    gantry::admin_client::key_rotate(&mut admin, name, grace_secs).await
                })
            }
        },
        Commands::Budget {
            command,
            connection,
        } => admin_call(&connection, |mut admin| async move {
            match command {
                BudgetCommand::Set(args) => {
                    gantry::admin_client::budget_set(&mut admin, args).await
                }
                BudgetCommand::Show {
                    subject,
                    model,
                    format,
                } => gantry::admin_client::budget_show(&mut admin, subject, model, format).await,
                BudgetCommand::List { format } => {
                    gantry::admin_client::budget_list(&mut admin, format).await
                }
                BudgetCommand::Delete { name } => {
                    gantry::admin_client::budget_delete(&mut admin, name).await
                }
            }
        }),
        Commands::Metadata {
            command,
            connection,
        } => admin_call(&connection, |mut admin| async move {
            match command {
                MetadataCommand::Set { subject, entries } => {
                    gantry::admin_client::metadata_set(&mut admin, subject, entries).await
                }
                MetadataCommand::List => gantry::admin_client::metadata_list(&mut admin).await,
            }
        }),
        Commands::Audit {
            limit,
            format,
            connection,
        } => admin_call(&connection, |mut admin| async move {
            gantry::admin_client::audit(&mut admin, limit, format).await
        }),
        Commands::Reload { connection } => admin_call(&connection, |mut admin| async move {
            gantry::admin_client::reload(&mut admin).await
        }),
        Commands::Spend {
            config,
            by,
            since,
            until,
            format,
            records,
            connection,
        } => {
            let Some(config) = config else {
                return admin_call(&connection, |mut admin| async move {
                    gantry::admin_client::spend(&mut admin, &by, since, until, format, records)
                        .await
                });
            };
            let parsed = load(&config)?;
            let Some(section) = &parsed.governance else {
                anyhow::bail!(
                    "{} has no governance section: nothing is metered or logged",
                    config.display()
                );
            };
            let options = gantry::spend::SpendOptions {
                by,
                since,
                until,
                format,
                records,
            };
            let text = runtime()?.block_on(gantry::spend::report(section, &options))?;
            print!("{text}");
            Ok(())
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
