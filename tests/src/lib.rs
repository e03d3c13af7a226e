//! Test harness for Gantry's end-to-end tests and benchmarks: free loopback ports, child
//! processes in their own process group that are killed on drop, a real Envoy, the `gantry`
//! stack, and a gated SSE upstream whose every event the test releases by hand.
//!
//! Nothing here sleeps and hopes: every wait is on a condition with a deadline.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod a2a_peers;
pub mod gated_upstream;
pub mod jwks_server;
pub mod jwt;
pub mod mcp_peers;
pub mod redis_server;
pub mod tls;

pub use gated_upstream::GatedSseUpstream;
pub use redis_server::RedisServer;

/// The Gantry checkout this crate lives in.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Envoy binary installed by `scripts/setup.sh` (or `ENVOY_BIN`), or why it is missing.
pub fn find_envoy_binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => project_root().join(".local/bin/envoy"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "Envoy is missing at {}: run scripts/setup.sh first (or set ENVOY_BIN)",
            path.display()
        ))
    }
}

/// [`find_envoy_binary`], failing the test when Envoy is missing.
pub fn envoy_binary() -> PathBuf {
    find_envoy_binary().unwrap_or_else(|reason| panic!("{reason}"))
}

/// The project's Python venv interpreter (with the pinned `openai` SDK).
pub fn venv_python() -> PathBuf {
    let path = project_root().join(".local/venv/bin/python");
    assert!(
        path.exists(),
        "the project venv is missing at {}: run scripts/setup.sh first",
        path.display()
    );
    path
}

/// `n` distinct free loopback ports (all held open until all are chosen), never one this
/// process handed out before: two calls in one test (a stack's ports, then another server's)
/// could otherwise get the same port back, since the first call's listeners are closed by then.
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        // Held open either way, so the kernel offers another port next.
        listeners.push(listener);
        if !handed_out.contains(&port) {
            handed_out.push(port);
            ports.push(port);
        }
    }
    ports
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `condition` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process in its own process group, with stdout/stderr in files; the whole group is
/// terminated (then killed) on drop.
pub struct ChildProcess {
    name: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl ChildProcess {
    pub fn spawn(name: &str, command: &mut Command) -> ChildProcess {
        let dir = tempfile::Builder::new()
            .prefix(name)
            .tempdir()
            .expect("create temp dir");
        let stdout = File::create(dir.path().join("stdout")).expect("create stdout file");
        let stderr = File::create(dir.path().join("stderr")).expect("create stderr file");
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildProcess {
            name: name.to_string(),
            child,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.dir.path().join("stdout"))
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.dir.path().join("stderr"))
    }

    /// Both streams, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        wait_for(&format!("{name} to exit"), deadline, || self.try_status())
    }

    /// Waits until stdout contains `needle`; fails with the logs if the process exits first.
    pub fn wait_for_stdout(&mut self, needle: &str, deadline: Duration) {
        let what = format!("{} to print {needle:?}", self.name);
        wait_for(&what, deadline, || {
            if let Some(status) = self.try_status() {
                panic!(
                    "{} exited ({status}) before printing {needle:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            self.stdout().contains(needle).then_some(())
        });
    }

    /// Sends `signal` to the process (not the group).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    fn stop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let group = -(self.child.id() as i32);
        // SAFETY: plain syscalls on our own child's process group.
        unsafe {
            libc::kill(group, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.try_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A running `gantry run` (ext_proc + Envoy) on free ports.
pub struct GantryStack {
    pub process: ChildProcess,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub ext_proc: SocketAddr,
    /// The config file `gantry run` reads (and watches: rewrite it to reload).
    pub config_path: PathBuf,
    _config_dir: tempfile::TempDir,
}

/// Ports for a stack, chosen free.
#[derive(Debug, Clone, Copy)]
pub struct StackPorts {
    pub listen: u16,
    pub admin: u16,
    pub ext_proc: u16,
}

impl StackPorts {
    pub fn free() -> StackPorts {
        let ports = free_ports(3);
        StackPorts {
            listen: ports[0],
            admin: ports[1],
            ext_proc: ports[2],
        }
    }

    /// The config's first lines: `listen`, `admin`, `ext_proc.listen`.
    pub fn config_head(&self) -> String {
        format!(
            "listen: 127.0.0.1:{}\nadmin: 127.0.0.1:{}\next_proc:\n  listen: 127.0.0.1:{}\n",
            self.listen, self.admin, self.ext_proc
        )
    }
}

/// Where the stack runs Gantry's policy (`gantry run --mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyPath {
    /// Gantry's ext_proc and ext_authz gRPC servers.
    ExtProc,
    /// Gantry's dynamic module inside Envoy (`libgantry.so`, found next to the gantry binary).
    Module,
}

impl GantryStack {
    /// Starts `gantry run --config <yaml>` and waits for its ready line.
    /// `yaml` must use `ports` (see [`StackPorts::config_head`]).
    pub fn start(
        gantry: &Path,
        ports: StackPorts,
        yaml: &str,
        env: &[(&str, &str)],
    ) -> GantryStack {
        Self::start_on(PolicyPath::ExtProc, gantry, ports, yaml, env)
    }

    /// [`GantryStack::start`] with the policy on `path`.
    pub fn start_on(
        path: PolicyPath,
        gantry: &Path,
        ports: StackPorts,
        yaml: &str,
        env: &[(&str, &str)],
    ) -> GantryStack {
        Self::start_with_args(path, gantry, ports, yaml, env, &[])
    }

    /// [`GantryStack::start_on`] with more `gantry run` arguments.
    pub fn start_with_args(
        path: PolicyPath,
        gantry: &Path,
        ports: StackPorts,
        yaml: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> GantryStack {
        let config_dir = tempfile::Builder::new()
            .prefix("gantry-config")
            .tempdir()
            .expect("create temp dir");
        let config_path = config_dir.path().join("gantry.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let mut command = Command::new(gantry);
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--envoy")
            .arg(envoy_binary())
            .env("RUST_LOG", "info,gantry_ext_proc=debug");
        if path == PolicyPath::Module {
            command.arg("--mode").arg("module");
        }
        command.args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut process = ChildProcess::spawn("gantry", &mut command);
        process.wait_for_stdout("gantry: ready at", Duration::from_secs(60));
        GantryStack {
            process,
            listen: loopback(ports.listen),
            admin: loopback(ports.admin),
            ext_proc: loopback(ports.ext_proc),
            config_path,
            _config_dir: config_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    /// Envoy's JSON access log lines (Envoy writes them to gantry's stdout).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.process
            .stdout()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for an access log entry that satisfies `matches`.
    pub fn wait_for_access_log(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(
            &format!("an access log entry: {what}"),
            Duration::from_secs(15),
            || self.access_log().into_iter().find(|e| matches(e)),
        )
    }
}

/// Envoy alone, on a given bootstrap (e.g. to test behaviour with ext_proc down).
pub struct EnvoyProcess {
    pub process: ChildProcess,
}

impl EnvoyProcess {
    /// Starts Envoy and waits until `admin` reports it ready.
    pub fn start(bootstrap: &Path, admin: SocketAddr) -> EnvoyProcess {
        let mut command = Command::new(envoy_binary());
        command
            .arg("--config-path")
            .arg(bootstrap)
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg("warn")
            .arg("--file-flush-interval-msec")
            .arg("100");
        let mut process = ChildProcess::spawn("envoy", &mut command);
        wait_for("envoy to be ready", Duration::from_secs(60), || {
            if let Some(status) = process.try_status() {
                panic!("envoy exited during startup ({status})\n{}", process.logs());
            }
            admin_ready(admin).then_some(())
        });
        EnvoyProcess { process }
    }
}

/// Whether Envoy's admin `/ready` answers 200.
pub fn admin_ready(admin: SocketAddr) -> bool {
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}
