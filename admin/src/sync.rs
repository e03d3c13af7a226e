//! Keeping a replica's runtime directory current: poll the store's admin version, and when it
//! moved, read every record and swap in a newly compiled directory.
//!
//! A change made on another replica is seen within one poll interval plus one store call
//! (and the compile). The store being unreachable keeps the last directory serving: keys and
//! budgets that existed keep working, and a warning is logged once until it is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gantry_policy::admin::RuntimeDirectory;
use gantry_store::{Store, StoreError};

/// The directory every adapter reads, and the store it comes from.
pub struct DirectorySync {
    store: Arc<dyn Store>,
    directory: Arc<ArcSwap<RuntimeDirectory>>,
    /// Whether the last poll failed (to log a failure once, and its end).
    failing: AtomicBool,
    /// Times the store could not be read.
    pub errors: AtomicU64,
    /// Directories compiled (initial load included).
    pub loads: AtomicU64,
}

impl DirectorySync {
    /// Syncs into `directory` (the handle ext_authz and ext_proc read).
    pub fn new(store: Arc<dyn Store>, directory: Arc<ArcSwap<RuntimeDirectory>>) -> DirectorySync {
        DirectorySync {
            store,
            directory,
            failing: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The directory requests are checked against now.
    pub fn current(&self) -> Arc<RuntimeDirectory> {
        self.directory.load_full()
    }

    /// Reads every record and swaps in the compiled directory, unless a newer one is already
    /// in place (two refreshes racing never go back in time). Returns the version in place.
    pub async fn refresh(&self) -> Result<u64, StoreError> {
        let records = self.store.admin_records().await?;
        let compiled = Arc::new(RuntimeDirectory::compile(&records));
        for problem in &compiled.unreadable {
            tracing::warn!(%problem, "admin record left out: it cannot be read");
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut in_place = compiled.version;
        self.directory.rcu(|old| {
            if old.version > compiled.version {
                in_place = old.version;
                old.clone()
            } else {
                in_place = compiled.version;
                compiled.clone()
            }
        });
        Ok(in_place)
    }

    /// One poll: refresh when the store's version differs from the directory's.
    pub async fn poll(&self) {
        let result = match self.store.admin_version().await {
            Ok(version) if version == self.directory.load().version => Ok(()),
            Ok(version) => self.refresh().await.map(|now| {
                tracing::debug!(version = now, seen = version, "runtime directory reloaded");
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("admin records readable again");
                }
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read admin records from the store; the last ones keep serving");
                }
            }
        }
    }

    /// The sync's counters in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        let directory = self.directory.load();
        let keys = directory
            .key_records()
            .filter(|k| !k.record.is_revoked())
            .count();
        let budgets = directory.budget_records().count();
        format!(
            "# HELP gantry_admin_records_version The admin records' store version this replica serves.\n\
             # TYPE gantry_admin_records_version gauge\n\
             gantry_admin_records_version {}\n\
             # HELP gantry_admin_runtime_keys Keys created through the admin API and not revoked.\n\
             # TYPE gantry_admin_runtime_keys gauge\n\
             gantry_admin_runtime_keys {keys}\n\
             # HELP gantry_admin_runtime_budgets Budgets created through the admin API.\n\
             # TYPE gantry_admin_runtime_budgets gauge\n\
             gantry_admin_runtime_budgets {budgets}\n\
             # HELP gantry_admin_directory_loads_total Times the admin records were read and compiled.\n\
             # TYPE gantry_admin_directory_loads_total counter\n\
             gantry_admin_directory_loads_total {}\n\
             # HELP gantry_admin_sync_errors_total Polls that could not read the store.\n\
             # TYPE gantry_admin_sync_errors_total counter\n\
             gantry_admin_sync_errors_total {}\n",
            directory.version,
            self.loads.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// Polls every `interval` until `stop` resolves.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.poll().await,
                _ = &mut stop => return,
            }
        }
    }
}
