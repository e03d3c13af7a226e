//! The runtime side of governance for ext_proc: the store handle, settlements run off the
//! request path, the batched spend-log writer, and the counters an operator watches.
//!
//! Policy (what applies, what it costs, what a refusal says) stays in
//! `gantry_policy::governance`; this module only moves its ledger operations to the store and
//! makes sure none is lost at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gantry_policy::admin::RuntimeDirectory;
use gantry_policy::governance::ledger::{Admission, AdmissionOutcome, Settlement, SpendRecord};
use gantry_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Spend records waiting for the writer; beyond this the newest are dropped (and counted).
const SPEND_QUEUE: usize = 16_384;
/// Most records written in one store call.
const SPEND_BATCH: usize = 512;
/// Attempts of one settlement or spend-log write before it is given up (and logged whole).
const WRITE_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(100);
/// How often spend records beyond their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Counters of the governance runtime, exported as Prometheus text.
#[derive(Debug, Default)]
pub struct GovernanceStats {
    /// Admission checks the store answered (admitted or refused).
    pub admissions: AtomicU64,
    pub budget_refusals: AtomicU64,
    pub rate_limit_refusals: AtomicU64,
    /// Requests admitted over an audit budget's limit (counted, not refused).
    pub audit_budget_overruns: AtomicU64,
    /// Store calls that failed, by operation.
    pub store_errors_admit: AtomicU64,
    pub store_errors_settle: AtomicU64,
    pub store_errors_spend_log: AtomicU64,
    /// Requests refused because the store was unreachable (fail closed).
    pub store_unavailable_refusals: AtomicU64,
    /// Requests let through unmetered because the store was unreachable (fail open).
    pub store_unavailable_passes: AtomicU64,
    /// Settlements given up after every retry (their reservation expires with its lease).
    pub settlements_lost: AtomicU64,
    pub spend_records: AtomicU64,
    pub spend_records_lost: AtomicU64,
}

impl GovernanceStats {
    /// The counters in the Prometheus text format, labelled with the store kind.
    pub fn render_prometheus(&self, store: &str) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (labels, value) in samples {
                let sep = if labels.is_empty() { "" } else { "," };
                out.push_str(&format!(
                    "{name}{{store=\"{store}\"{sep}{labels}}} {value}\n"
                ));
            }
        };
        counter(
            "gantry_budget_checks_total",
            "Admission checks the store answered (admitted or refused).",
            &[("", get(&self.admissions))],
        );
        counter(
            "gantry_budget_refusals_total",
            "Requests refused with 429, by reason.",
            &[
                ("reason=\"budget\"", get(&self.budget_refusals)),
                ("reason=\"rate_limit\"", get(&self.rate_limit_refusals)),
            ],
        );
        counter(
            "gantry_budget_audit_overruns_total",
            "Requests admitted beyond the limit of an audit budget.",
            &[("", get(&self.audit_budget_overruns))],
        );
        counter(
            "gantry_store_errors_total",
            "Store calls that failed or timed out, by operation.",
            &[
                ("operation=\"admit\"", get(&self.store_errors_admit)),
                ("operation=\"settle\"", get(&self.store_errors_settle)),
                ("operation=\"spend_log\"", get(&self.store_errors_spend_log)),
            ],
        );
        counter(
            "gantry_store_unavailable_requests_total",
            "Requests that met an unreachable store, by what the failure mode did.",
            &[
                ("action=\"refused\"", get(&self.store_unavailable_refusals)),
                ("action=\"passed\"", get(&self.store_unavailable_passes)),
            ],
        );
        counter(
            "gantry_settlements_lost_total",
            "Settlements given up after every retry.",
            &[("", get(&self.settlements_lost))],
        );
        counter(
            "gantry_spend_records_total",
            "Spend-log records written, and lost (queue full or store down).",
            &[
                ("result=\"written\"", get(&self.spend_records)),
                ("result=\"lost\"", get(&self.spend_records_lost)),
            ],
        );
        out
    }
}

enum SpendMessage {
    Record(Box<SpendRecord>),
    /// Answered once every record sent before it is written (or given up).
    Flush(oneshot::Sender<()>),
}

/// The store and the background work of one Gantry process.
/// The admin API's records, compiled, as every adapter shares them.
pub type SharedDirectory = Arc<ArcSwap<RuntimeDirectory>>;

pub struct GovernanceRuntime {
    store: Arc<dyn Store>,
    /// Keys, budgets and metadata made through the admin API, compiled; swapped whole by the
    /// admin API's sync (empty without one).
    directory: SharedDirectory,
    settlements: TaskTracker,
    spend: mpsc::Sender<SpendMessage>,
    pub stats: Arc<GovernanceStats>,
}

impl std::fmt::Debug for GovernanceRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernanceRuntime")
            .field("store", &self.store.kind())
            .field("settlements_in_flight", &self.settlements.len())
            .finish()
    }
}

impl GovernanceRuntime {
    /// Starts the spend-log writer on the current tokio runtime, and with a `retention`, a task
    /// that deletes older spend records now and every ten minutes.
    pub fn start(store: Arc<dyn Store>, retention: Option<Duration>) -> Arc<GovernanceRuntime> {
        let stats = Arc::new(GovernanceStats::default());
        let (spend, inbox) = mpsc::channel(SPEND_QUEUE);
        tokio::spawn(write_spend_log(store.clone(), inbox, stats.clone()));
        if let Some(retention) = retention {
            tokio::spawn(prune_spend_log(store.clone(), retention));
        }
        Arc::new(GovernanceRuntime {
            store,
            directory: Arc::new(ArcSwap::from_pointee(RuntimeDirectory::empty())),
            settlements: TaskTracker::new(),
            spend,
            stats,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The runtime directory metering reads (the admin API's sync writes it).
    pub fn directory(&self) -> &SharedDirectory {
        &self.directory
    }

    /// Asks the store to admit a request (counted).
    pub async fn admit(&self, admission: &Admission) -> Result<AdmissionOutcome, StoreError> {
        let result = self.store.admit(admission).await;
        match &result {
            Ok(_) => self.stats.admissions.fetch_add(1, Ordering::Relaxed),
            Err(_) => self
                .stats
                .store_errors_admit
                .fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Settles a reservation (if any) and then logs the request, off the request path. The
    /// reservation keeps counting until the settlement lands, so the budget stays safe
    /// meanwhile.
    pub fn finish(&self, settlement: Option<Settlement>, record: Option<SpendRecord>) {
        let Some(settlement) = settlement else {
            if let Some(record) = record {
                self.log_spend(record);
            }
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Only when a stream is dropped after the runtime is gone (process exit): the
            // reservation expires with its lease.
            tracing::warn!(reservation = %settlement.reservation.0, "no runtime left to settle on");
            return;
        };
        let store = self.store.clone();
        let stats = self.stats.clone();
        let spend = self.spend.clone();
        self.settlements.spawn_on(
            async move {
                settle_with_retries(store.as_ref(), &settlement, &stats).await;
                if let Some(record) = record {
                    send_spend(&spend, record, &stats);
                }
            },
            &runtime,
        );
    }

    /// Queues one spend-log record.
    pub fn log_spend(&self, record: SpendRecord) {
        send_spend(&self.spend, record, &self.stats);
    }

    /// Waits (at most `deadline`) until every settlement and spend record queued so far is in
    /// the store: called at shutdown, after the servers stopped taking requests.
    pub async fn drain(&self, deadline: Duration) {
        let work = async {
            self.settlements.close();
            self.settlements.wait().await;
            let (done, flushed) = oneshot::channel();
            if self.spend.send(SpendMessage::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        if tokio::time::timeout(deadline, work).await.is_err() {
            tracing::warn!(
                settlements = self.settlements.len(),
                "shutdown: gave up waiting for the store; unsettled reservations expire with their lease"
            );
        }
    }
}

fn send_spend(spend: &mpsc::Sender<SpendMessage>, record: SpendRecord, stats: &GovernanceStats) {
    if let Err(e) = spend.try_send(SpendMessage::Record(Box::new(record))) {
        stats.spend_records_lost.fetch_add(1, Ordering::Relaxed);
        let record = match e {
            mpsc::error::TrySendError::Full(SpendMessage::Record(r))
            | mpsc::error::TrySendError::Closed(SpendMessage::Record(r)) => Some(r),
            _ => None,
        };
        tracing::error!(record = ?record, "spend log queue full: record dropped");
    }
}

async fn settle_with_retries(store: &dyn Store, settlement: &Settlement, stats: &GovernanceStats) {
    for attempt in 1..=WRITE_ATTEMPTS {
        match store.settle(settlement).await {
            Ok(()) => return,
            Err(error) => {
                stats.store_errors_settle.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, attempt, reservation = %settlement.reservation.0, "settlement failed");
                if attempt < WRITE_ATTEMPTS {
                    tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt - 1)).await;
                }
            }
        }
    }
    stats.settlements_lost.fetch_add(1, Ordering::Relaxed);
    tracing::error!(settlement = ?settlement, "settlement given up after {WRITE_ATTEMPTS} attempts");
}

/// The governance clock: ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Deletes spend records older than `retention`, now and every [`PRUNE_EVERY`].
async fn prune_spend_log(store: Arc<dyn Store>, retention: Duration) {
    let mut ticks = tokio::time::interval(PRUNE_EVERY);
    loop {
        ticks.tick().await;
        let before_ms = now_ms().saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64);
        match store.prune_spend(before_ms).await {
            Ok(()) => tracing::debug!(before_ms, "spend log pruned"),
            Err(error) => tracing::warn!(%error, "spend log not pruned; trying again later"),
        }
    }
}

/// Writes queued spend records in batches until every sender is gone.
async fn write_spend_log(
    store: Arc<dyn Store>,
    mut inbox: mpsc::Receiver<SpendMessage>,
    stats: Arc<GovernanceStats>,
) {
    let mut batch: Vec<SpendRecord> = Vec::with_capacity(SPEND_BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = inbox.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                SpendMessage::Record(record) => batch.push(*record),
                SpendMessage::Flush(done) => flushes.push(done),
            }
            if batch.len() < SPEND_BATCH {
                next = inbox.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write_batch(store.as_ref(), &batch, &stats).await;
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn write_batch(store: &dyn Store, batch: &[SpendRecord], stats: &GovernanceStats) {
    for attempt in 1..=WRITE_ATTEMPTS {
        match store.record_spend(batch).await {
            Ok(()) => {
                stats
                    .spend_records
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                stats.store_errors_spend_log.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, attempt, records = batch.len(), "spend log write failed");
                if attempt < WRITE_ATTEMPTS {
                    tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt - 1)).await;
                }
            }
        }
    }
    stats
        .spend_records_lost
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    tracing::error!(records = ?batch, "spend log records given up after {WRITE_ATTEMPTS} attempts");
}
