//! The keys of every JWT issuer: read from a file, or fetched from a JWKS URL and kept fresh.
//!
//! For a URL:
//! - a background task refreshes the keys every `refresh_interval_secs`;
//! - a token with an unknown `kid` triggers a fetch, at most once per `refetch_interval_secs`
//!   (a moka cache entry with that time-to-live is the gate, and it also makes concurrent
//!   callers share one fetch);
//! - a failed fetch keeps the last good keys, so tokens signed with known keys keep working
//!   while the issuer is down, and tokens with new keys are refused.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gantry_policy::auth::jwt::{JwtIssuer, KeySet, KeySource};
use gantry_policy::auth::{AuthPolicy, JwksSource};

/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Deadline for one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

struct IssuerKeys {
    issuer: String,
    source: KeySource,
    current: ArcSwap<KeySet>,
    /// Present while a fetch happened within the refetch interval.
    refetch_gate: moka::future::Cache<(), Arc<KeySet>>,
}

/// Keys for each issuer of an [`AuthPolicy`], in the same order.
pub struct JwksStore {
    issuers: Vec<IssuerKeys>,
    client: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JWKS file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("cannot build the HTTP client for JWKS fetches: {0}")]
    Client(#[source] reqwest::Error),
}

impl JwksStore {
    /// Reads JWKS files now (a bad file is an error); URL issuers start empty and are
    /// fetched by [`JwksStore::spawn_refresh`] and on demand.
    pub fn new(policy: &AuthPolicy) -> Result<JwksStore, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(JwksError::Client)?;
        let mut issuers = Vec::with_capacity(policy.issuers.len());
        for issuer in &policy.issuers {
            issuers.push(IssuerKeys::new(issuer)?);
        }
        Ok(JwksStore { issuers, client })
    }

    /// Starts one refresh task per URL issuer; each fetches at once, then every refresh
    /// interval. The tasks end when the store is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) {
        for (index, issuer) in self.issuers.iter().enumerate() {
            let KeySource::Url {
                refresh_interval_secs,
                ..
            } = issuer.source
            else {
                continue;
            };
            let store = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(refresh_interval_secs));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let Some(store) = store.upgrade() else { return };
                    store.fetch(index).await;
                }
            });
        }
    }

    /// Fetches one issuer's URL; on success the keys replace the current ones.
    async fn fetch(&self, index: usize) -> Arc<KeySet> {
        let issuer = &self.issuers[index];
        let KeySource::Url { url, .. } = &issuer.source else {
            return issuer.current.load_full();
        };
        match fetch_key_set(&self.client, url).await {
            Ok(keys) => {
                tracing::info!(issuer = %issuer.issuer, %url, keys = keys.len(), "JWKS loaded");
                let keys = Arc::new(keys);
                issuer.current.store(keys.clone());
                keys
            }
            Err(message) => {
                let kept = issuer.current.load_full();
                tracing::warn!(issuer = %issuer.issuer, %url, kept_keys = kept.len(), "JWKS fetch failed: {message}; keeping the last good keys");
                kept
            }
        }
    }
}

impl IssuerKeys {
    fn new(issuer: &JwtIssuer) -> Result<IssuerKeys, JwksError> {
        let (initial, gate_ttl) = match &issuer.source {
            KeySource::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| JwksError::File {
                    path: path.clone(),
                    source,
                })?;
                let keys = KeySet::from_json(&bytes).map_err(|message| JwksError::Parse {
                    path: path.clone(),
                    message,
                })?;
                (keys, Duration::from_secs(1))
            }
            KeySource::Url {
                refetch_interval_secs,
                ..
            } => (
                KeySet::default(),
                Duration::from_secs(*refetch_interval_secs),
            ),
        };
        Ok(IssuerKeys {
            issuer: issuer.issuer.clone(),
            source: issuer.source.clone(),
            current: ArcSwap::from_pointee(initial),
            refetch_gate: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(gate_ttl)
                .build(),
        })
    }
}

async fn fetch_key_set(client: &reqwest::Client, url: &str) -> Result<KeySet, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
    }
    KeySet::from_json(&body)
}

impl JwksSource for JwksStore {
    fn current(&self, issuer: usize) -> Arc<KeySet> {
        self.issuers
            .get(issuer)
            .map(|i| i.current.load_full())
            .unwrap_or_default()
    }

    async fn refetch(&self, index: usize) -> Arc<KeySet> {
        let Some(issuer) = self.issuers.get(index) else {
            return Arc::default();
        };
        if matches!(issuer.source, KeySource::File(_)) {
            return issuer.current.load_full();
        }
        issuer
            .refetch_gate
            .get_with((), async { self.fetch(index).await })
            .await;
        issuer.current.load_full()
    }
}
