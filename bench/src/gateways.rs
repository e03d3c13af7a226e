//! The gateways requests go through: plain Envoy (the baseline), `gantry run`, and `gantry run`
//! with an `auth` section (ext_authz on the path); plus the helpers that start processes.

use std::any::Any;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use gantry_testkit::{free_ports, loopback, ChildProcess, EnvoyProcess, GantryStack, StackPorts};

use crate::auth::{self, Credentials};
use crate::{ALIAS, CHAT_PATH, GANTRY_LOG_FILTER, UPSTREAM_MODEL};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    Baseline,
    Gantry,
    GantryAuth,
}

impl Gateway {
    pub fn name(self) -> &'static str {
        match self {
            Gateway::Baseline => "baseline",
            Gateway::Gantry => "gantry",
            Gateway::GantryAuth => "gantry+auth",
        }
    }

    /// The gateway's key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Gateway::Baseline => "baseline",
            Gateway::Gantry => "gantry",
            Gateway::GantryAuth => "gantry_auth",
        }
    }

    /// The model the mock must receive: Envoy alone forwards the alias, Gantry rewrites it.
    pub fn upstream_model(self) -> &'static str {
        match self {
            Gateway::Baseline => ALIAS,
            Gateway::Gantry | Gateway::GantryAuth => UPSTREAM_MODEL,
        }
    }
}

/// The gateways, running side by side for the whole benchmark (`gantry+auth` only when a
/// scenario needs it).
pub struct Gateways {
    baseline: BaselineEnvoy,
    gantry: GantryStack,
    gantry_auth: Option<GantryStack>,
}

impl Gateways {
    /// Starts the baseline and gantry, and gantry+auth when `credentials` are given. Prints
    /// where each runs and gantry's configs.
    pub async fn start(
        gantry_bin: &Path,
        upstream: SocketAddr,
        credentials: Option<&Credentials>,
    ) -> anyhow::Result<Gateways> {
        let baseline = BaselineEnvoy::start(upstream).await?;
        println!("baseline:    plain Envoy at {}", baseline.url);
        let (gantry, config) = start_gantry(gantry_bin, upstream, None).await?;
        println!(
            "gantry:      gantry run at {}, config:\n{}",
            gantry.url(CHAT_PATH),
            indent(&config)
        );
        let gantry_auth = match credentials {
            Some(credentials) => {
                let (stack, config) = start_gantry(gantry_bin, upstream, Some(credentials)).await?;
                println!(
                    "gantry+auth: gantry run at {} (ext_authz in the gantry process, called by \
                     Envoy before ext_proc), config:\n{}",
                    stack.url(CHAT_PATH),
                    indent(&config)
                );
                Some(stack)
            }
            None => None,
        };
        Ok(Gateways {
            baseline,
            gantry,
            gantry_auth,
        })
    }

    fn gantry_auth(&self) -> &GantryStack {
        self.gantry_auth
            .as_ref()
            .expect("the gantry+auth gateway runs whenever a scenario uses it")
    }

    pub fn url(&self, gateway: Gateway) -> String {
        match gateway {
            Gateway::Baseline => self.baseline.url.clone(),
            Gateway::Gantry => self.gantry.url(CHAT_PATH),
            Gateway::GantryAuth => self.gantry_auth().url(CHAT_PATH),
        }
    }

    /// The process that is the gateway: Envoy, or `gantry run` (which runs Envoy as a child).
    pub fn process(&mut self, gateway: Gateway) -> &mut ChildProcess {
        match gateway {
            Gateway::Baseline => &mut self.baseline.envoy.process,
            Gateway::Gantry => &mut self.gantry.process,
            Gateway::GantryAuth => {
                &mut self
                    .gantry_auth
                    .as_mut()
                    .expect("the gantry+auth gateway runs whenever a scenario uses it")
                    .process
            }
        }
    }

    /// Fails, with the gateway's last output, if its process has exited.
    pub fn ensure_running(&mut self, gateway: Gateway) -> anyhow::Result<()> {
        ensure_running(self.process(gateway), gateway.name())
    }
}

/// Fails, with the process's last output, if it has exited.
pub fn ensure_running(process: &mut ChildProcess, what: &str) -> anyhow::Result<()> {
    match process.try_status() {
        Some(status) => bail!(
            "{what} exited during the benchmark ({status})\n{}",
            logs_tail(process)
        ),
        None => Ok(()),
    }
}

/// Plain Envoy in front of the mock: the baseline.
struct BaselineEnvoy {
    // Declared first so that Envoy stops before its bootstrap's directory is removed.
    envoy: EnvoyProcess,
    url: String,
    _dir: tempfile::TempDir,
}

impl BaselineEnvoy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<BaselineEnvoy> {
        let ports = free_ports(2);
        let (listen, admin) = (loopback(ports[0]), loopback(ports[1]));
        let dir = tempfile::Builder::new()
            .prefix("gantry-bench-baseline")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, baseline_bootstrap(listen, admin, upstream))
            .with_context(|| format!("cannot write {}", path.display()))?;
        let envoy = blocking("start the baseline Envoy", move || {
            EnvoyProcess::start(&path, admin)
        })
        .await?;
        Ok(BaselineEnvoy {
            envoy,
            url: format!("http://{listen}{CHAT_PATH}"),
            _dir: dir,
        })
    }
}

/// The smallest useful Envoy: one listener whose HTTP connection manager has only the router,
/// and a static cluster for the mock.
fn baseline_bootstrap(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let address = |addr: SocketAddr| {
        format!(
            "{{ socket_address: {{ address: {}, port_value: {} }} }}",
            addr.ip(),
            addr.port()
        )
    };
    format!(
        r#"# gantry-bench baseline: Envoy with the router only (no ext_proc).
admin:
  address: {admin}
static_resources:
  listeners:
    - name: baseline_listener
      address: {listen}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: baseline
                codec_type: AUTO
                route_config:
                  name: baseline_routes
                  virtual_hosts:
                    - name: baseline
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: mock_provider, timeout: 60s }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: mock_provider
      type: STATIC
      connect_timeout: 5s
      load_assignment:
        cluster_name: mock_provider
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {upstream}
"#,
        admin = address(admin),
        listen = address(listen),
        upstream = address(upstream),
    )
}

/// A Gantry config on `ports` with the `bench` alias → provider `mock` at `upstream`, then
/// `extra` (e.g. an `auth` section).
pub fn gantry_config(ports: &StackPorts, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "{head}providers:\n  - name: mock\n    kind: openai\n    endpoint: http://{upstream}\n\
         models:\n  - {{ name: {ALIAS}, provider: mock, model: {UPSTREAM_MODEL} }}\n{extra}",
        head = ports.config_head(),
    )
}

/// `gantry run` in front of the mock, with the `bench` alias and, given `credentials`, an `auth`
/// section that accepts their API key. Returns the stack and its config.
async fn start_gantry(
    gantry_bin: &Path,
    upstream: SocketAddr,
    credentials: Option<&Credentials>,
) -> anyhow::Result<(GantryStack, String)> {
    // One call, so that the four ports are distinct.
    let free = free_ports(4);
    let ports = StackPorts {
        listen: free[0],
        admin: free[1],
        ext_proc: free[2],
    };
    let auth = match credentials {
        Some(credentials) => auth::auth_section(
            loopback(free[3]),
            credentials,
            auth::Extras {
                jwks_file: None,
                rules: false,
            },
        ),
        None => String::new(),
    };
    let yaml = gantry_config(&ports, upstream, &auth);
    let gantry_bin = gantry_bin.to_path_buf();
    let config = yaml.clone();
    let stack = blocking("start `gantry run`", move || {
        GantryStack::start(
            &gantry_bin,
            ports,
            &config,
            &[("RUST_LOG", GANTRY_LOG_FILTER)],
        )
    })
    .await?;
    Ok((stack, yaml))
}

/// Runs the testkit's blocking start-up off the async threads; its panics become errors.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    start: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(start)
        .await
        .map_err(|error| match error.try_into_panic() {
            Ok(payload) => anyhow!("cannot {what}: {}", panic_message(payload.as_ref())),
            Err(error) => anyhow!("cannot {what}: {error}"),
        })
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("panicked")
}

/// The last lines of a child's output, for error messages.
pub fn logs_tail(process: &ChildProcess) -> String {
    let logs = process.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub fn locate_gantry(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find this executable's path")?
            .parent()
            .context("this executable has no parent directory")?
            .join("gantry"),
    };
    if !path.is_file() {
        bail!(
            "the gantry binary is missing at {}: run `cargo build --release -p gantry -p gantry-bench` \
             first (or pass --gantry PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// Where the testkit will find Envoy, checked here so that a missing Envoy is a clear error.
pub fn locate_envoy() -> anyhow::Result<PathBuf> {
    gantry_testkit::find_envoy_binary().map_err(|reason| anyhow!(reason))
}

pub fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
