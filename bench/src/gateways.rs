//! The gateways requests go through: plain Envoy (the baseline), `gantry run`, `gantry run`
//! with an `auth` section (ext_authz on the path), `gantry run` with a `governance` section
//! on the embedded store or on a Redis started here, `gantry run --mode module` (the policy
//! in Envoy's dynamic module) and `gantry run` with response guards; plus the helpers that start
//! processes.

use std::any::Any;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use gantry_testkit::{
    free_ports, loopback, ChildProcess, EnvoyProcess, GantryStack, PolicyPath, RedisServer,
    StackPorts,
};

use crate::auth::{self, Credentials};
use crate::budgets::{self, Store};
use crate::guards;
use crate::{ALIAS, CHAT_PATH, GANTRY_LOG_FILTER, UPSTREAM_MODEL};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    Baseline,
    Gantry,
    GantryAuth,
    /// Budgets and a rate limit on the embedded (SQLite) store.
    GantryBudgetEmbedded,
    /// The same on Redis.
    GantryBudgetRedis,
    /// `gantry run --mode module`: gantry's config, the policy in Envoy's dynamic module.
    GantryModule,
    /// gantry's config plus the `guards.response` section of [`guards::response_guards_section`].
    GantryResponseGuards,
}

impl Gateway {
    pub fn name(self) -> &'static str {
        match self {
            Gateway::Baseline => "baseline",
            Gateway::Gantry => "gantry",
            Gateway::GantryAuth => "gantry+auth",
            Gateway::GantryBudgetEmbedded => "gantry+budget-embedded",
            Gateway::GantryBudgetRedis => "gantry+budget-redis",
            Gateway::GantryModule => "gantry-module",
            Gateway::GantryResponseGuards => "gantry+response-guards",
        }
    }

    /// The gateway's key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Gateway::Baseline => "baseline",
            Gateway::Gantry => "gantry",
            Gateway::GantryAuth => "gantry_auth",
            Gateway::GantryBudgetEmbedded => "gantry_budget_embedded",
            Gateway::GantryBudgetRedis => "gantry_budget_redis",
            Gateway::GantryModule => "gantry_module",
            Gateway::GantryResponseGuards => "gantry_response_guards",
        }
    }

    /// The model the mock must receive: Envoy alone forwards the alias, Gantry rewrites it.
    pub fn upstream_model(self) -> &'static str {
        match self {
            Gateway::Baseline => ALIAS,
            Gateway::Gantry
            | Gateway::GantryAuth
            | Gateway::GantryBudgetEmbedded
            | Gateway::GantryBudgetRedis
            | Gateway::GantryModule
            | Gateway::GantryResponseGuards => UPSTREAM_MODEL,
        }
    }

    /// Whether the gateway has a `governance` section (budgets and a rate limit).
    pub fn governed(self) -> bool {
        matches!(
            self,
            Gateway::GantryBudgetEmbedded | Gateway::GantryBudgetRedis
        )
    }
}

/// The gateways, running side by side for the whole benchmark (`gantry+auth`, the budget
/// gateways, `gantry-module` and `gantry+response-guards` only when a scenario needs them).
pub struct Gateways {
    baseline: BaselineEnvoy,
    gantry: GantryStack,
    gantry_auth: Option<GantryStack>,
    budgets: Option<BudgetGateways>,
    gantry_module: Option<GantryStack>,
    gantry_response_guards: Option<GantryStack>,
}

/// gantry+budget-embedded and gantry+budget-redis, and their stores.
struct BudgetGateways {
    // The gantry processes are declared first so that they stop before their stores go away.
    embedded: GantryStack,
    redis_gateway: GantryStack,
    /// Holds the embedded store's SQLite file.
    _store_dir: tempfile::TempDir,
    redis: RedisServer,
}

impl Gateways {
    /// Starts the baseline and gantry, gantry+auth when `credentials` are given, with
    /// `budgets` a Redis server and the two budget gateways, and with `module` (the dynamic
    /// module library next to `gantry_bin`, see [`locate_module`]) gantry-module, checked to
    /// run the policy in Envoy (see [`check_module_stack`]), and with `response_guards`
    /// gantry+response-guards. Prints where each runs and gantry's configs.
    pub async fn start(
        gantry_bin: &Path,
        upstream: SocketAddr,
        credentials: Option<&Credentials>,
        budgets: bool,
        module: Option<&Path>,
        response_guards: bool,
    ) -> anyhow::Result<Gateways> {
        let baseline = BaselineEnvoy::start(upstream).await?;
        println!("baseline:    plain Envoy at {}", baseline.url);
        let (gantry, config) =
            start_gantry(gantry_bin, upstream, Extra::Nothing, PolicyPath::ExtProc).await?;
        println!(
            "gantry:      gantry run at {}, config:\n{}",
            gantry.url(CHAT_PATH),
            indent(&config)
        );
        let gantry_auth = match credentials {
            Some(credentials) => {
                let (stack, config) = start_gantry(
                    gantry_bin,
                    upstream,
                    Extra::Auth(credentials),
                    PolicyPath::ExtProc,
                )
                .await?;
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
        let budgets = if budgets {
            Some(BudgetGateways::start(gantry_bin, upstream).await?)
        } else {
            None
        };
        let gantry_module = match module {
            Some(library) => {
                check_ext_proc_listens(&gantry).await?;
                let (stack, _) =
                    start_gantry(gantry_bin, upstream, Extra::Nothing, PolicyPath::Module).await?;
                check_module_stack(&stack).await?;
                println!(
                    "gantry-module: gantry run --mode module at {} (the policy in Envoy's dynamic \
                     module {}; no ext_proc server: its log says so and nothing listens on its \
                     ext_proc port {}), config: gantry's, on its own ports",
                    stack.url(CHAT_PATH),
                    library.display(),
                    stack.ext_proc.port()
                );
                Some(stack)
            }
            None => None,
        };
        let gantry_response_guards = if response_guards {
            let (stack, config) = start_gantry(
                gantry_bin,
                upstream,
                Extra::ResponseGuards,
                PolicyPath::ExtProc,
            )
            .await?;
            println!(
                "gantry+response-guards: gantry run at {} (response guards over every reply, \
                 SSE streams included), config:\n{}",
                stack.url(CHAT_PATH),
                indent(&config)
            );
            Some(stack)
        } else {
            None
        };
        Ok(Gateways {
            baseline,
            gantry,
            gantry_auth,
            budgets,
            gantry_module,
            gantry_response_guards,
        })
    }

    fn gantry_response_guards(&self) -> &GantryStack {
        self.gantry_response_guards
            .as_ref()
            .expect("the gantry+response-guards gateway runs whenever a scenario uses it")
    }

    fn gantry_module(&self) -> &GantryStack {
        self.gantry_module
            .as_ref()
            .expect("the gantry-module gateway runs whenever a scenario uses it")
    }

    fn gantry_auth(&self) -> &GantryStack {
        self.gantry_auth
            .as_ref()
            .expect("the gantry+auth gateway runs whenever a scenario uses it")
    }

    fn budgets(&self) -> &BudgetGateways {
        self.budgets
            .as_ref()
            .expect("the budget gateways run whenever a scenario uses them")
    }

    pub fn url(&self, gateway: Gateway) -> String {
        match gateway {
            Gateway::Baseline => self.baseline.url.clone(),
            Gateway::Gantry => self.gantry.url(CHAT_PATH),
            Gateway::GantryAuth => self.gantry_auth().url(CHAT_PATH),
            Gateway::GantryBudgetEmbedded => self.budgets().embedded.url(CHAT_PATH),
            Gateway::GantryBudgetRedis => self.budgets().redis_gateway.url(CHAT_PATH),
            Gateway::GantryModule => self.gantry_module().url(CHAT_PATH),
            Gateway::GantryResponseGuards => self.gantry_response_guards().url(CHAT_PATH),
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
            Gateway::GantryBudgetEmbedded => &mut self.budgets_mut().embedded.process,
            Gateway::GantryBudgetRedis => &mut self.budgets_mut().redis_gateway.process,
            Gateway::GantryModule => {
                &mut self
                    .gantry_module
                    .as_mut()
                    .expect("the gantry-module gateway runs whenever a scenario uses it")
                    .process
            }
            Gateway::GantryResponseGuards => {
                &mut self
                    .gantry_response_guards
                    .as_mut()
                    .expect("the gantry+response-guards gateway runs whenever a scenario uses it")
                    .process
            }
        }
    }

    fn budgets_mut(&mut self) -> &mut BudgetGateways {
        self.budgets
            .as_mut()
            .expect("the budget gateways run whenever a scenario uses them")
    }

    /// Fails, with the gateway's last output, if its process has exited; for
    /// gantry+budget-redis, also if Redis no longer answers.
    pub fn ensure_running(&mut self, gateway: Gateway) -> anyhow::Result<()> {
        ensure_running(self.process(gateway), gateway.name())?;
        if gateway == Gateway::GantryBudgetRedis {
            let redis = &self.budgets().redis;
            if !redis.ping() {
                bail!(
                    "redis-server stopped answering during the benchmark\n{}",
                    redis.logs()
                );
            }
        }
        Ok(())
    }
}

impl BudgetGateways {
    /// Starts gantry with the budgets on a fresh SQLite file, then Redis and gantry with the
    /// budgets on it. Prints where each runs and their configs.
    async fn start(gantry_bin: &Path, upstream: SocketAddr) -> anyhow::Result<BudgetGateways> {
        let store_dir = tempfile::Builder::new()
            .prefix("gantry-bench-store")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let store_path = store_dir.path().join("gantry.db");
        let (embedded, config) = start_gantry(
            gantry_bin,
            upstream,
            Extra::Governance(Store::Embedded(&store_path)),
            PolicyPath::ExtProc,
        )
        .await?;
        println!(
            "gantry+budget-embedded: gantry run at {} (budgets and a rate limit in a SQLite file \
             owned by the gantry process), config:\n{}",
            embedded.url(CHAT_PATH),
            indent(&config)
        );
        let redis = blocking("start redis-server", RedisServer::start).await?;
        println!(
            "redis:       {} at {} (no persistence)",
            redis_version(),
            redis.url()
        );
        let (redis_gateway, config) = start_gantry(
            gantry_bin,
            upstream,
            Extra::Governance(Store::Redis(&redis.url())),
            PolicyPath::ExtProc,
        )
        .await?;
        println!(
            "gantry+budget-redis: gantry run at {} (the same budgets and rate limit in Redis), \
             config:\n{}",
            redis_gateway.url(CHAT_PATH),
            indent(&config)
        );
        Ok(BudgetGateways {
            embedded,
            redis_gateway,
            _store_dir: store_dir,
            redis,
        })
    }
}

/// The testkit's `redis-server`, with its version, e.g. `/…/redis-server (v=7.0.15)`.
fn redis_version() -> String {
    let Ok(path) = gantry_testkit::redis_server::find_redis_server() else {
        return "redis-server".to_owned();
    };
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find(|word| word.starts_with("v="))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".to_owned());
    format!("{} ({version})", path.display())
}

/// What `gantry run --mode module` logs instead of starting its ext_proc server.
const MODULE_LOG_LINE: &str = "policy runs in Envoy's dynamic module";

/// Fails unless `stack` (`gantry run --mode module`) runs the policy in Envoy: its log must say
/// so, and nothing may listen on its config's ext_proc port (so that no request can be served
/// by an ext_proc server).
async fn check_module_stack(stack: &GantryStack) -> anyhow::Result<()> {
    if !stack.process.stderr().contains(MODULE_LOG_LINE) {
        bail!(
            "gantry-module: `gantry run --mode module` did not log {MODULE_LOG_LINE:?}\n{}",
            logs_tail(&stack.process)
        );
    }
    if listens(stack.ext_proc).await {
        bail!(
            "gantry-module: something listens on its ext_proc port {} although the policy should \
             run in Envoy's dynamic module\n{}",
            stack.ext_proc,
            logs_tail(&stack.process)
        );
    }
    Ok(())
}

/// Fails unless gantry's ext_proc server listens, the other side of the module comparison.
async fn check_ext_proc_listens(stack: &GantryStack) -> anyhow::Result<()> {
    if !listens(stack.ext_proc).await {
        bail!(
            "gantry: nothing listens on its ext_proc port {}\n{}",
            stack.ext_proc,
            logs_tail(&stack.process)
        );
    }
    Ok(())
}

/// Whether a TCP connection to `addr` succeeds within a second.
async fn listens(addr: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
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

/// What a gantry gateway's config has besides the `bench` alias.
#[derive(Clone, Copy)]
enum Extra<'a> {
    Nothing,
    /// An `auth` section that accepts the credentials' API key.
    Auth(&'a Credentials),
    /// The budgets and rate limit of [`budgets::governance_section`] on this store.
    Governance(Store<'a>),
    /// The response guards of [`guards::response_guards_section`].
    ResponseGuards,
}

/// `gantry run` in front of the mock, with the `bench` alias and `extra`, the policy on `path`
/// (`--mode ext-proc` or `--mode module`). Returns the stack and its config.
async fn start_gantry(
    gantry_bin: &Path,
    upstream: SocketAddr,
    extra: Extra<'_>,
    path: PolicyPath,
) -> anyhow::Result<(GantryStack, String)> {
    // One call, so that the four ports are distinct.
    let free = free_ports(4);
    let ports = StackPorts {
        listen: free[0],
        admin: free[1],
        ext_proc: free[2],
    };
    let extra = match extra {
        Extra::Nothing => String::new(),
        Extra::Auth(credentials) => auth::auth_section(
            loopback(free[3]),
            credentials,
            auth::Extras {
                jwks_file: None,
                rules: false,
            },
        ),
        Extra::Governance(store) => budgets::governance_section(store),
        Extra::ResponseGuards => guards::response_guards_section().to_owned(),
    };
    let yaml = gantry_config(&ports, upstream, &extra);
    let gantry_bin = gantry_bin.to_path_buf();
    let config = yaml.clone();
    let what = match path {
        PolicyPath::ExtProc => "start `gantry run`",
        PolicyPath::Module => "start `gantry run --mode module`",
    };
    let stack = blocking(what, move || {
        GantryStack::start_on(
            path,
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

/// The dynamic module `gantry run --mode module` loads: `libgantry.so` next to the gantry
/// binary (its real path, as `gantry run` sees itself). Fails, saying how to build it for the
/// gantry binary's profile, if it is missing.
pub fn locate_module(gantry_bin: &Path) -> anyhow::Result<PathBuf> {
    let gantry_bin = &std::fs::canonicalize(gantry_bin)
        .with_context(|| format!("cannot resolve {}", gantry_bin.display()))?;
    let path = gantry_bin.with_file_name("libgantry.so");
    if path.is_file() {
        return Ok(path);
    }
    let profile = gantry_bin
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str());
    let build = match profile {
        Some("release") => "`cargo build --release -p gantry-dynamic-module`".to_owned(),
        Some("debug") => "`cargo build -p gantry-dynamic-module`".to_owned(),
        Some(profile) => format!("`cargo build --profile {profile} -p gantry-dynamic-module`"),
        None => "`cargo build --release -p gantry-dynamic-module`".to_owned(),
    };
    bail!(
        "the dynamic module is missing at {} (`gantry run --mode module` loads libgantry.so from \
         next to the gantry binary {}): run {build} first (the same profile as gantry)",
        path.display(),
        gantry_bin.display()
    )
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
