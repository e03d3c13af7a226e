//! `--scenario admin`: how fast a change made through the admin API reaches another replica,
//! and what a key created at runtime costs a request next to a key of the config.
//!
//! Two `gantry run` replicas share one Redis. Each sample creates a key on replica A (through
//! the gRPC admin API), checks A accepts it at once, then sends requests to replica B until
//! it accepts the key (propagation of a creation); then revokes the key on A and sends
//! requests to B until it refuses it (propagation of a revocation). Propagation is printed as
//! percentiles and as a ratio to the configured sync interval, the bound the design states
//! (sync interval plus one store call).
//!
//! Then, on replica A, alternating batches of sequential requests with the config's key and
//! with a runtime key: the runtime key's median latency as a ratio to the config key's, in
//! the same run.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gantry_policy::auth::api_keys::KeyHash;
use gantry_proto::admin::v1 as pb;
use gantry_proto::admin::v1::admin_service_client::AdminServiceClient;
use gantry_testkit::{free_ports, GantryStack, RedisServer, StackPorts};
use serde_json::json;

use crate::gateways::{blocking, gantry_config, indent};
use crate::{Settings, ALIAS, CHAT_PATH, GANTRY_LOG_FILTER};

const ADMIN_TOKEN: &str = "gat_bench_admin_token";
const CONFIG_KEY: &str = "gk_bench_config_key";
/// The admin API's default sync interval, which the replicas keep.
const SYNC_INTERVAL_MS: f64 = 250.0;
/// Propagation samples per round.
const SAMPLES_PER_ROUND: usize = 5;
/// Requests per key per batch in the request-cost comparison.
const BATCH: usize = 50;
/// Give up on one propagation after this long.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(10);

struct Replica {
    stack: GantryStack,
    admin: SocketAddr,
}

/// Two replicas on one Redis.
pub struct AdminBench {
    a: Replica,
    b: Replica,
    _redis: RedisServer,
    http: reqwest::Client,
}

async fn start_replica(
    gantry_bin: &Path,
    upstream: SocketAddr,
    redis: &str,
) -> anyhow::Result<(Replica, String)> {
    let free = free_ports(5);
    let ports = StackPorts {
        listen: free[0],
        admin: free[1],
        ext_proc: free[2],
    };
    let extra = format!(
        "auth:\n  listen: 127.0.0.1:{auth}\n  api_keys:\n    - {{ name: bench-config-key, hash: '{key}' }}\n\
         governance:\n  store: {{ kind: redis, url: '{redis}' }}\n\
         admin_api:\n  listen: 127.0.0.1:{admin}\n  tokens:\n    - {{ name: bench, hash: '{token}' }}\n",
        auth = free[3],
        admin = free[4],
        key = KeyHash::of(CONFIG_KEY),
        token = KeyHash::of(ADMIN_TOKEN),
    );
    let yaml = gantry_config(&ports, upstream, &extra);
    let config = yaml.clone();
    let gantry_bin = gantry_bin.to_path_buf();
    let stack = blocking("start `gantry run` with the admin API", move || {
        GantryStack::start(
            &gantry_bin,
            ports,
            &config,
            &[("RUST_LOG", GANTRY_LOG_FILTER)],
        )
    })
    .await?;
    Ok((
        Replica {
            stack,
            admin: SocketAddr::from(([127, 0, 0, 1], free[4])),
        },
        yaml,
    ))
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {ADMIN_TOKEN}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn client(
    admin: SocketAddr,
) -> anyhow::Result<AdminServiceClient<tonic::transport::Channel>> {
    AdminServiceClient::connect(format!("http://{admin}"))
        .await
        .with_context(|| format!("cannot reach the admin API at {admin}"))
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

impl AdminBench {
    pub async fn start(gantry_bin: &Path, upstream: SocketAddr) -> anyhow::Result<AdminBench> {
        let redis = blocking("start redis-server", RedisServer::start).await?;
        let (a, config) = start_replica(gantry_bin, upstream, &redis.url()).await?;
        let (b, _) = start_replica(gantry_bin, upstream, &redis.url()).await?;
        println!(
            "admin: two `gantry run` replicas on one Redis ({}), admin API at {} and {}; replica config:\n{}",
            redis.url(),
            a.admin,
            b.admin,
            indent(&config)
        );
        Ok(AdminBench {
            a,
            b,
            _redis: redis,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("http client")?,
        })
    }

    async fn status(&self, replica: &Replica, key: &str) -> anyhow::Result<u16> {
        let body = json!({"model": ALIAS, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let response = self
            .http
            .post(replica.stack.url(CHAT_PATH))
            .header("authorization", format!("Bearer {key}"))
            .json(&body)
            .send()
            .await
            .context("request to the gateway")?;
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        Ok(status)
    }

    /// Sends requests to `replica` until it answers `wanted`; how long that took, in ms.
    async fn until(
        &self,
        replica: &Replica,
        key: &str,
        wanted: u16,
        what: &str,
    ) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            if self.status(replica, key).await? == wanted {
                return Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
            if started.elapsed() > PROPAGATION_DEADLINE {
                bail!("{what}: replica B still did not answer {wanted} after {PROPAGATION_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Checks the setup once: the config key works on both replicas, a runtime key on the one
    /// that made it at once.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        for replica in [&self.a, &self.b] {
            let status = self.status(replica, CONFIG_KEY).await?;
            if status != 200 {
                bail!("the config's key got {status} instead of 200");
            }
        }
        let mut admin = client(self.a.admin).await?;
        let created = admin
            .create_key(authorized(pb::CreateKeyRequest {
                name: "bench-probe".into(),
                ..Default::default()
            }))
            .await
            .context("CreateKey")?
            .into_inner();
        let status = self.status(&self.a, &created.secret).await?;
        if status != 200 {
            bail!("a key created on replica A got {status} there instead of 200");
        }
        println!("probes: the config key works on both replicas; a runtime key works at once on the replica that made it");
        Ok(())
    }

    pub async fn measure(&mut self, settings: &Settings) -> anyhow::Result<AdminResults> {
        println!("admin: propagation of key creation and revocation from replica A to replica B");
        let mut admin = client(self.a.admin).await?;
        let (mut created, mut revoked) = (Vec::new(), Vec::new());
        let mut errors = 0u64;
        for round in 1..=settings.rounds {
            for sample in 0..SAMPLES_PER_ROUND {
                let name = format!("bench-{round}-{sample}");
                let key = admin
                    .create_key(authorized(pb::CreateKeyRequest {
                        name: name.clone(),
                        ..Default::default()
                    }))
                    .await
                    .context("CreateKey")?
                    .into_inner()
                    .secret;
                if self.status(&self.a, &key).await? != 200 {
                    errors += 1;
                }
                created.push(self.until(&self.b, &key, 200, "a created key").await?);
                admin
                    .revoke_key(authorized(pb::RevokeKeyRequest {
                        name,
                        reason: String::new(),
                    }))
                    .await
                    .context("RevokeKey")?;
                if self.status(&self.a, &key).await? != 401 {
                    errors += 1;
                }
                revoked.push(self.until(&self.b, &key, 401, "a revoked key").await?);
            }
            println!(
                "  round {round}/{} created: last {:.1} ms, revoked: last {:.1} ms",
                settings.rounds,
                created.last().copied().unwrap_or_default(),
                revoked.last().copied().unwrap_or_default()
            );
        }
        println!("admin: request latency on replica A with a runtime key vs the config's key (sequential, alternating batches)");
        let runtime = admin
            .create_key(authorized(pb::CreateKeyRequest {
                name: "bench-runtime".into(),
                ..Default::default()
            }))
            .await
            .context("CreateKey")?
            .into_inner()
            .secret;
        let (mut config_ms, mut runtime_ms) = (Vec::new(), Vec::new());
        for _ in 0..settings.rounds {
            for (key, into) in [
                (CONFIG_KEY, &mut config_ms),
                (runtime.as_str(), &mut runtime_ms),
            ] {
                for _ in 0..BATCH {
                    let started = Instant::now();
                    if self.status(&self.a, key).await? != 200 {
                        errors += 1;
                    }
                    into.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        created.sort_by(f64::total_cmp);
        revoked.sort_by(f64::total_cmp);
        Ok(AdminResults {
            config_median_ms: median(&mut config_ms),
            runtime_median_ms: median(&mut runtime_ms),
            created,
            revoked,
            errors,
        })
    }
}

pub struct AdminResults {
    created: Vec<f64>,
    revoked: Vec<f64>,
    config_median_ms: f64,
    runtime_median_ms: f64,
    pub errors: u64,
}

impl AdminResults {
    pub fn print(&self) {
        for (what, samples) in [("creation", &self.created), ("revocation", &self.revoked)] {
            println!(
                "admin {what} reaches replica B: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms over {} samples ({:.2}x / {:.2}x / {:.2}x the {SYNC_INTERVAL_MS} ms sync interval)",
                percentile(samples, 0.5),
                percentile(samples, 0.9),
                percentile(samples, 1.0),
                samples.len(),
                percentile(samples, 0.5) / SYNC_INTERVAL_MS,
                percentile(samples, 0.9) / SYNC_INTERVAL_MS,
                percentile(samples, 1.0) / SYNC_INTERVAL_MS,
            );
        }
        println!(
            "admin request with a runtime key: median {:.3} ms vs {:.3} ms with the config's key ({:.3}x)",
            self.runtime_median_ms,
            self.config_median_ms,
            self.runtime_median_ms / self.config_median_ms
        );
    }

    pub fn to_json(&self) -> serde_json::Value {
        let spread = |samples: &[f64]| {
            json!({
                "samples": samples.len(),
                "p50_ms": percentile(samples, 0.5),
                "p90_ms": percentile(samples, 0.9),
                "max_ms": percentile(samples, 1.0),
                "p90_over_sync_interval": percentile(samples, 0.9) / SYNC_INTERVAL_MS,
            })
        };
        json!({
            "sync_interval_ms": SYNC_INTERVAL_MS,
            "creation": spread(&self.created),
            "revocation": spread(&self.revoked),
            "runtime_key_median_ms": self.runtime_median_ms,
            "config_key_median_ms": self.config_median_ms,
            "runtime_over_config_key": self.runtime_median_ms / self.config_median_ms,
            "errors": self.errors,
        })
    }
}
