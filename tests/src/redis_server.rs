//! A throwaway Redis for the shared-store tests: Debian's real `redis-server` (installed into
//! `.local/` by `scripts/setup.sh`), on a free loopback port, with no persistence, in its own
//! process group, killed on drop.
//!
//! [`RedisServer::stop`] and [`RedisServer::start_again`] take it down and bring it back on the
//! same port, for "store down" and "store restarted" tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{free_ports, loopback, project_root, wait_for, ChildProcess};

/// How long a starting Redis has to answer `PING`.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The `redis-server` to run: `GANTRY_REDIS_SERVER`, else the one `scripts/setup.sh` installed
/// into `.local/bin`, else one on `PATH`; or why there is none.
pub fn find_redis_server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("GANTRY_REDIS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "GANTRY_REDIS_SERVER points at {}, which does not exist",
                path.display()
            ))
        };
    }
    let local = project_root().join(".local/bin/redis-server");
    if local.is_file() {
        return Ok(local);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("redis-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "redis-server is missing at {} and not on PATH: run ./scripts/setup.sh --with-redis first (or set \
         GANTRY_REDIS_SERVER)",
        local.display()
    ))
}

/// A running `redis-server` on `127.0.0.1`, killed (with its process group) on drop.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    /// Redis's working directory (nothing is saved there: `--save ""`, no AOF).
    dir: tempfile::TempDir,
    process: Option<ChildProcess>,
}

impl RedisServer {
    /// Starts Redis on a free port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let binary = find_redis_server().unwrap_or_else(|reason| panic!("{reason}"));
        let dir = tempfile::Builder::new()
            .prefix("gantry-redis")
            .tempdir()
            .expect("create temp dir");
        let mut server = RedisServer {
            binary,
            port: free_ports(1)[0],
            dir,
            process: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether Redis answers `PING` with `+PONG` right now.
    pub fn ping(&self) -> bool {
        ping(self.port)
    }

    /// Kills Redis and waits for it to exit (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        // Dropping the child terminates its process group and reaps it.
        drop(self.process.take());
    }

    /// Starts Redis again on the same port (empty), and waits until it answers `PING`.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Redis's log, for assertion messages.
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(ChildProcess::logs)
            .unwrap_or_else(|| "(redis-server is stopped)".to_string())
    }

    fn spawn(&mut self) {
        let mut command = Command::new(&self.binary);
        command
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path());
        let mut process = ChildProcess::spawn("redis-server", &mut command);
        let port = self.port;
        wait_for(
            &format!("redis-server to answer PING on port {port}"),
            START_DEADLINE,
            || {
                if let Some(status) = process.try_status() {
                    panic!(
                        "redis-server exited during startup ({status})\n{}",
                        process.logs()
                    );
                }
                ping(port).then_some(())
            },
        );
        self.process = Some(process);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends an inline `PING` and reads the reply, speaking RESP by hand.
fn ping(port: u16) -> bool {
    let timeout = Duration::from_secs(1);
    let Ok(mut stream) = TcpStream::connect_timeout(&loopback(port), timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_stops_and_starts_again() {
        let mut redis = RedisServer::start();
        assert!(redis.ping(), "{}", redis.logs());
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));

        redis.stop();
        assert!(!redis.ping());
        let refused = TcpStream::connect_timeout(&loopback(redis.port()), Duration::from_secs(1));
        assert!(
            refused.is_err(),
            "port {} still accepts connections",
            redis.port()
        );

        redis.start_again();
        assert!(redis.ping(), "{}", redis.logs());
    }
}
