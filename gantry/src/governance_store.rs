//! Opening the store a config's `governance.store` names: the embedded SQLite file or a
//! shared Redis. Used by `gantry run` / `gantry serve` (the request path) and `gantry spend`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gantry_policy::config::{StoreSection, DEFAULT_STORE_PATH};
use gantry_store::{EmbeddedStore, RedisStore, Store};

/// The Redis key prefix unless configured.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "gantry";

/// Opens the configured store to read its spend log and counters (`gantry spend`) while a
/// Gantry process may be serving from it: the embedded file is opened read-only (it must
/// exist), Redis as usual.
pub fn open_store_for_reading(section: &StoreSection) -> anyhow::Result<Arc<dyn Store>> {
    match section {
        StoreSection::Embedded { .. } => {
            let path = section.embedded_path().unwrap_or(DEFAULT_STORE_PATH);
            let store = EmbeddedStore::open_read_only(Path::new(path)).with_context(|| {
                format!("cannot read the embedded store {path} (has Gantry run with this config, from this directory?)")
            })?;
            Ok(Arc::new(store))
        }
        StoreSection::Redis { .. } => open_store(section),
    }
}

/// Opens the configured store. The embedded file is created (with its directory) if missing;
/// a Redis store connects lazily, so Gantry starts while Redis is down and applies the
/// configured failure mode until it is back.
pub fn open_store(section: &StoreSection) -> anyhow::Result<Arc<dyn Store>> {
    match section {
        StoreSection::Embedded { durability, .. } => {
            let path = section.embedded_path().unwrap_or(DEFAULT_STORE_PATH);
            let store = EmbeddedStore::open(Path::new(path), *durability)
                .with_context(|| format!("cannot open the embedded store {path}"))?;
            tracing::info!("governance store: embedded, {path}");
            Ok(Arc::new(store))
        }
        StoreSection::Redis { key_prefix, .. } => {
            let url = section
                .redis_url(&|name| std::env::var(name).ok())
                .map_err(anyhow::Error::msg)?;
            let prefix = key_prefix.as_deref().unwrap_or(DEFAULT_REDIS_KEY_PREFIX);
            let timeout = Duration::from_millis(section.timeout_ms());
            let store =
                RedisStore::new(&url, prefix, timeout).context("cannot use the Redis store")?;
            tracing::info!("governance store: redis (key prefix '{prefix}')");
            Ok(Arc::new(store))
        }
    }
}
