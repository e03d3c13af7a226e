//! The embedded store: budget counters, rate buckets and the spend log of one Gantry process,
//! kept in memory and in one SQLite file.
//!
//! **What it owns.** [`EmbeddedStore::open`] makes the process the owner of the file: it loads
//! the spent amounts of every budget counter, then serves admissions from memory under one
//! mutex (no disk I/O on admit, all-or-nothing and atomic against concurrent admissions) and
//! writes through a single writer thread, in the order the changes were made in memory. Only
//! one process may own a file at a time (a second owner would keep its own counters and
//! overwrite the first one's spent amounts): `open` locks `<file>.lock` and refuses a file that
//! another process holds. [`EmbeddedStore::open_read_only`] reads the same
//! file while its owner runs (the file is in WAL mode, so a reader never blocks the writer),
//! for the CLI's `gantry spend`.
//!
//! The file holds:
//! - `counters`: per budget counter, `spent_nanos`, `spent_tokens` and `window_end_ms`. Every
//!   settlement that changes spent amounts commits the counters' new values before
//!   [`Store::settle`] returns.
//! - `spend_log`: one row per [`SpendRecord`], committed before [`Store::record_spend`] returns.
//! - `rate_buckets`: the running GCRA buckets (see below).
//! - `admin_records` (`kind`, `id`, `revision`, `json`; one row per admin record),
//!   `admin_version` (one row, `one = 1`: the admin records' version; no row reads as 0) and
//!   `audit_log` (one row per [`AuditEvent`], as JSON, with its `time_ms`; never pruned): see
//!   "Admin records" below.
//!
//! Every table is created with `CREATE TABLE IF NOT EXISTS` when the owner opens the file, so a
//! file made by an earlier version of the same layout (without `rate_buckets` or the admin
//! tables) gains them without a new layout number; a read-only store reads the missing admin
//! tables as empty (version 0).
//!
//! Counters whose window ended more than an hour ago (by the policy's clock) are forgotten,
//! in memory and on disk, by a sweep that admissions run at most once a minute; a new window is a
//! new key, so nothing still in use is lost. The spend log is pruned only by
//! [`Store::prune_spend`] (the caller's retention).
//!
//! **Memory only: reservations.** Reservations (with their leases) are never written: they belong
//! to requests of the running process, so a restart forgets them, which is correct because those
//! requests died with the process. After a restart, counters hold their spent amounts and
//! nothing reserved.
//!
//! **Rate buckets** (GCRA TATs) are written lazily: admissions queue the running buckets at most
//! once a second when they changed, and dropping the store queues them a last time. `open`
//! loads them, so a restart does not hand out a fresh minute of requests; a crash loses at most
//! the last second of their changes.
//!
//! **Admin records.** [`Store::admin_write`] and [`Store::record_audit`] are jobs of the writer
//! thread, like settlements. An admin write's compare-and-set runs inside the writer's
//! transaction, in a savepoint of its own: the writer is the file's only writer, so the revision
//! it reads there is still the record's when it writes. When the record is as the write
//! expects, the savepoint bumps the version, stores (or deletes) the record at the new version
//! and appends the audit event, all or nothing; on a conflict it writes nothing. The outcome is
//! answered once the transaction is committed. The owner keeps the version in memory (loaded
//! at `open`, raised by the writer after each commit, before it answers), so
//! [`Store::admin_version`] reads no file; [`Store::admin_records`] reads the version and every
//! record in one read transaction, and [`Store::audit_events`] reads the log's tail.
//!
//! **Durability.** Once `settle`, `record_spend`, `admin_write` or `record_audit` has returned
//! `Ok`, the change is committed to the SQLite write-ahead log:
//! - a crash of the Gantry process (panic, `kill -9`, OOM) loses nothing, with either setting;
//! - a power loss or an operating-system crash: with [`StoreDurability::Full`] (an fsync per
//!   commit; concurrent commits share one) nothing committed is lost; with
//!   [`StoreDurability::Normal`] the last commits before the loss may be rolled back (SQLite syncs
//!   the log only at checkpoints). With both, the file stays consistent: a settlement's counters
//!   are all committed or none, and so are an admin write's record, version and audit event.
//!
//! When a write fails (disk full, file removed), the call returns
//! [`StoreError::Unavailable`] naming the file and SQLite's error. Memory keeps the new spent
//! amounts either way (the money was spent); the next successful write of a counter stores its
//! full value, so the file catches up.
//!
//! **Repeated settlements.** A settlement is applied once per [`Settlement::reservation`], so
//! a caller may retry one that failed: memory remembers each settled reservation id for an
//! hour (`SETTLED_MEMORY_MS`) after the settlement's `now_ms` (the policy's clock; the sweep
//! forgets older ids), and settling it again changes nothing in memory, whether or not its
//! reservation was still held the first time. When the first attempt's write has not been
//! confirmed (it failed, or its caller stopped waiting), a repeat writes the current values of
//! the counters that settlement charged and returns once they are committed, so a retry after
//! a failed write makes the file catch up; once a write of them has succeeded, a repeat returns
//! `Ok` at once, touching neither memory nor disk. The settled ids are memory only: a restart
//! forgets them, which is safe because a retry cannot outlive the process that made the first
//! attempt (and a restart's memory is loaded from the file, which holds what was committed).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use gantry_policy::admin::stored::{
    AdminRecords, AdminWrite, AuditEvent, Expect, RecordKind, StoredRecord, WriteOutcome,
};
use gantry_policy::config::StoreDurability;
use gantry_policy::governance::ledger::{
    Admission, AdmissionOutcome, CounterState, RateState, Refusal, Settlement, SpendOutcome,
    SpendQuery, SpendRecord,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::{Store, StoreError};

/// The layout this version writes and reads (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// How long after its window ends a counter is kept (status queries, late settlements).
const WINDOW_GRACE_MS: i64 = 3_600_000;

/// How often (policy clock) admissions sweep expired counters, leases and idle rate buckets.
const SWEEP_INTERVAL_MS: i64 = 60_000;

/// How long (policy clock, from a settlement's `now_ms`) a settled reservation id is
/// remembered, so that settling it again changes nothing. Far longer than a caller's retries
/// of a failed settlement take (seconds); an id costs about 100 bytes of memory meanwhile.
const SETTLED_MEMORY_MS: i64 = 3_600_000;

/// How long a connection waits for a lock held by another connection of the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many queued writes share one transaction.
const MAX_BATCH: usize = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY NOT NULL,
    spent_nanos INTEGER NOT NULL,
    spent_tokens INTEGER NOT NULL,
    window_end_ms INTEGER
);
CREATE TABLE IF NOT EXISTS spend_log (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    user TEXT NOT NULL,
    team TEXT NOT NULL,
    api_key TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    provider TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_nanos INTEGER NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms INTEGER NOT NULL,
    stream INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_log_time_ms ON spend_log (time_ms);
CREATE TABLE IF NOT EXISTS rate_buckets (
    key TEXT PRIMARY KEY NOT NULL,
    tat_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_records (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS admin_version (
    one INTEGER PRIMARY KEY NOT NULL CHECK (one = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    json TEXT NOT NULL
);
";

/// How often (policy clock) changed rate buckets are written, at most.
const BUCKET_FLUSH_MS: i64 = 1_000;

const SPEND_COLUMNS: &str = "time_ms, request_id, subject, user, team, api_key, model, \
     upstream_model, provider, input_tokens, cached_input_tokens, output_tokens, cost_nanos, \
     status, outcome, latency_ms, stream";

/// The SQLite-backed [`Store`] of a single Gantry process. See the module documentation.
pub struct EmbeddedStore {
    path: PathBuf,
    mode: Mode,
}

enum Mode {
    /// This process owns the file: counters in memory, writes through the writer thread.
    Owner {
        state: Box<Mutex<State>>,
        writer: Option<JoinHandle<()>>,
        reader: Reader,
        /// The admin records' version as last committed; the writer thread, the only writer,
        /// raises it after each commit of admin writes, before answering them.
        admin_version: Arc<AtomicU64>,
        /// `<file>.lock`, locked exclusively for as long as this process owns the file.
        _owner_lock: std::fs::File,
    },
    /// Reads only, from the file (another process may own it).
    ReadOnly { reader: Reader },
}

impl EmbeddedStore {
    /// Opens (creating it and its parent directories if needed) the store's file and makes this
    /// process its owner: sets WAL journal mode and `synchronous` from `durability`, creates the
    /// tables if missing, loads every counter's spent amounts and the admin records' version, and
    /// starts the writer thread.
    ///
    /// Blocking (it reads the file): call it at start-up or from `spawn_blocking`.
    pub fn open(path: &Path, durability: StoreDurability) -> Result<EmbeddedStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!(
                    "{}: cannot create directory {}: {e}",
                    path.display(),
                    parent.display()
                ))
            })?;
        }
        let owner_lock = take_owner_lock(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| sqlite_error(path, "cannot open", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sqlite_error(path, "cannot configure", e))?;
        let journal_mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(|e| sqlite_error(path, "cannot set WAL journal mode", e))?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                path = %path.display(),
                journal_mode,
                "the store's file system does not support WAL; readers will wait for writes"
            );
        }
        let synchronous = match durability {
            StoreDurability::Normal => "NORMAL",
            StoreDurability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(|e| sqlite_error(path, "cannot set synchronous", e))?;

        let version = schema_version(&conn, path)?;
        if version == 0 {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| {
                // Leave no half-made schema behind; the error to report is the first one.
                let _ = conn.execute_batch("ROLLBACK");
                sqlite_error(path, "cannot create tables", e)
            })?;
        }

        // Every statement is `IF NOT EXISTS`: this adds tables that files made by an earlier
        // version of the same layout lack (`rate_buckets`, the admin tables).
        conn.execute_batch(SCHEMA)
            .map_err(|e| sqlite_error(path, "cannot create tables", e))?;
        let counters = load_counters(&conn, path)?;
        let buckets = load_buckets(&conn, path)?;
        let admin_version = Arc::new(AtomicU64::new(read_admin_version(&conn, path)?));
        let reader = Reader::open(path)?;

        let (sender, receiver) = mpsc::channel();
        let writer_path = path.to_path_buf();
        let writer_version = admin_version.clone();
        let writer = std::thread::Builder::new()
            .name("gantry-store-writer".to_string())
            .spawn(move || run_writer(conn, &writer_path, receiver, &writer_version))
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "{}: cannot start the writer thread: {e}",
                    path.display()
                ))
            })?;

        Ok(EmbeddedStore {
            path: path.to_path_buf(),
            mode: Mode::Owner {
                state: Box::new(Mutex::new(State {
                    counters,
                    buckets,
                    buckets_dirty: false,
                    next_bucket_flush_ms: i64::MIN,
                    settled: HashMap::new(),
                    settled_expiry: VecDeque::new(),
                    next_sweep_ms: i64::MIN,
                    writer: Some(sender),
                })),
                writer: Some(writer),
                reader,
                admin_version,
                _owner_lock: owner_lock,
            },
        })
    }

    /// Opens an existing store's file to read it, while the process that owns it (if any) keeps
    /// running. [`Store::spend`] reads the spend log and [`Store::counters`] the spent amounts as
    /// last committed (reservations live in the owner's memory: they read as zero); the admin
    /// records, their version and the audit log read as last committed (a file made before the
    /// admin tables existed reads as version 0, no records, no events). `admit`, `settle`,
    /// `record_spend`, `prune_spend`, `admin_write` and `record_audit` fail with
    /// [`StoreError::Unavailable`]. A file that does not exist is an error (nothing is created).
    pub fn open_read_only(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "{}: no such store file",
                path.display()
            )));
        }
        let reader = Reader::open(path)?;
        Ok(EmbeddedStore {
            path: path.to_path_buf(),
            mode: Mode::ReadOnly { reader },
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `true` when opened with [`EmbeddedStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        matches!(self.mode, Mode::ReadOnly { .. })
    }

    fn owner_state(&self, operation: &str) -> Result<MutexGuard<'_, State>, StoreError> {
        match &self.mode {
            Mode::Owner { state, .. } => Ok(lock(state)),
            Mode::ReadOnly { .. } => Err(StoreError::Unavailable(format!(
                "{}: opened read-only, cannot {operation}",
                self.path.display()
            ))),
        }
    }

    fn reader(&self) -> &Reader {
        match &self.mode {
            Mode::Owner { reader, .. } | Mode::ReadOnly { reader } => reader,
        }
    }

    /// Waits for the writer thread's answer to one queued job.
    async fn written<T>(
        &self,
        reply: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match reply.await {
            Ok(result) => result,
            Err(_) => Err(writer_stopped(&self.path)),
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("read_only", &self.is_read_only())
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedStore {
    /// Lets the writer thread finish the queued writes and close the file.
    fn drop(&mut self) {
        if let Mode::Owner { state, writer, .. } = &mut self.mode {
            let state = state.get_mut().unwrap_or_else(PoisonError::into_inner);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            state.flush_buckets(now_ms, true);
            state.writer = None;
            if let Some(writer) = writer.take() {
                let _ = writer.join();
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn admit(&self, admission: &Admission) -> Result<AdmissionOutcome, StoreError> {
        let mut state = self.owner_state("admit")?;
        let outcome = state.admit(admission);
        state.flush_buckets(admission.now_ms, false);
        Ok(outcome)
    }

    async fn settle(&self, settlement: &Settlement) -> Result<(), StoreError> {
        let reply = {
            let mut state = self.owner_state("settle")?;
            let rows = state.settle(settlement);
            if rows.is_empty() {
                return Ok(());
            }
            // Queued under the lock, so the writer stores counters in the order memory changed.
            state.queue(&self.path, Work::Counters(rows))?
        };
        self.written(reply).await?;
        self.owner_state("settle")?
            .settlement_written(&settlement.reservation.0);
        Ok(())
    }

    async fn record_spend(&self, records: &[SpendRecord]) -> Result<(), StoreError> {
        let rows = records
            .iter()
            .map(|record| SpendRow::new(record, &self.path))
            .collect::<Result<Vec<_>, _>>()?;
        let reply = {
            // Taken even for no records, so a read-only store refuses them all alike.
            let state = self.owner_state("record spend")?;
            if rows.is_empty() {
                return Ok(());
            }
            state.queue(&self.path, Work::Spend(rows))?
        };
        self.written(reply).await
    }

    async fn prune_spend(&self, before_ms: i64) -> Result<(), StoreError> {
        let reply = self
            .owner_state("prune the spend log")?
            .queue(&self.path, Work::PruneSpend { before_ms })?;
        self.written(reply).await
    }

    async fn spend(&self, query: &SpendQuery) -> Result<Vec<SpendRecord>, StoreError> {
        let query = *query;
        self.reader()
            .run(move |conn, path| read_spend(conn, path, query))
            .await
    }

    async fn counters(&self, keys: &[String]) -> Result<Vec<CounterState>, StoreError> {
        match &self.mode {
            Mode::Owner { state, .. } => {
                let state = lock(state);
                Ok(keys.iter().map(|key| state.counter_state(key)).collect())
            }
            Mode::ReadOnly { reader } => {
                let keys = keys.to_vec();
                reader
                    .run(move |conn, path| read_counters(conn, path, &keys))
                    .await
            }
        }
    }

    async fn admin_version(&self) -> Result<u64, StoreError> {
        match &self.mode {
            // The owner is the only writer: memory holds what was last committed.
            Mode::Owner { admin_version, .. } => Ok(admin_version.load(Ordering::Acquire)),
            Mode::ReadOnly { reader } => reader.run(read_admin_version).await,
        }
    }

    async fn admin_records(&self) -> Result<AdminRecords, StoreError> {
        self.reader().run(read_admin_records).await
    }

    async fn admin_write(&self, write: &AdminWrite) -> Result<WriteOutcome, StoreError> {
        let row = AdminRow {
            kind: write.kind,
            id: write.id.clone(),
            json: write.json.clone(),
            expect: write.expect,
            audit: AuditRow::new(&write.audit, &self.path)?,
        };
        let reply = self
            .owner_state("write admin records")?
            .queue_admin(&self.path, row)?;
        self.written(reply).await
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let row = AuditRow::new(event, &self.path)?;
        let reply = self
            .owner_state("record audit events")?
            .queue(&self.path, Work::Audit(row))?;
        self.written(reply).await
    }

    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.reader()
            .run(move |conn, path| read_audit_events(conn, path, limit))
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Memory: counters, reservations, rate buckets

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves every value consistent (each change is one
    // assignment after all checks), so the state is safe to keep using.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct State {
    counters: HashMap<String, Counter>,
    /// Rate key -> theoretical arrival time (µs since the epoch).
    buckets: HashMap<String, i64>,
    /// Buckets changed since they were last queued for writing.
    buckets_dirty: bool,
    /// The policy time at or after which changed buckets are queued again.
    next_bucket_flush_ms: i64,
    /// Reservation id -> its settlement, remembered so that settling it again changes nothing.
    settled: HashMap<String, Settled>,
    /// The same ids in the order they expire (settlement times are about monotonic), so the
    /// sweep pops the expired ones instead of walking an hour of settlements under the lock.
    settled_expiry: VecDeque<(i64, String)>,
    /// The policy time at or after which the next admission sweeps.
    next_sweep_ms: i64,
    /// The writer thread's queue; `None` once the store is being dropped.
    writer: Option<mpsc::Sender<Job>>,
}

#[derive(Default)]
struct Counter {
    spent_nanos: i64,
    spent_tokens: i64,
    /// Sums of `reservations`.
    reserved_nanos: i64,
    reserved_tokens: i64,
    reservations: HashMap<String, Reservation>,
    /// No reservation expires before this (may be earlier than the true minimum).
    next_expiry_ms: i64,
    window_end_ms: Option<i64>,
}

struct Reservation {
    nanos: i64,
    tokens: i64,
    expires_ms: i64,
}

/// A settlement already applied to memory.
/// When it is forgotten is in `State::settled_expiry`.
struct Settled {
    /// The counters it charged are not known to be on disk (their write failed, is still
    /// queued, or its caller stopped waiting): a repeat writes their current values again.
    unwritten: bool,
}

impl Counter {
    fn new(window_end_ms: Option<i64>) -> Counter {
        Counter {
            window_end_ms,
            next_expiry_ms: i64::MAX,
            ..Counter::default()
        }
    }

    fn state(&self) -> CounterState {
        CounterState {
            spent_nanos: self.spent_nanos,
            spent_tokens: self.spent_tokens,
            reserved_nanos: self.reserved_nanos,
            reserved_tokens: self.reserved_tokens,
        }
    }

    /// Drops the reservations whose lease has ended at `now_ms`.
    fn drop_expired(&mut self, now_ms: i64) {
        if now_ms < self.next_expiry_ms {
            return;
        }
        let mut next_expiry_ms = i64::MAX;
        let (mut nanos, mut tokens) = (0i64, 0i64);
        self.reservations.retain(|_, reservation| {
            if reservation.expires_ms <= now_ms {
                nanos = nanos.saturating_add(reservation.nanos);
                tokens = tokens.saturating_add(reservation.tokens);
                false
            } else {
                next_expiry_ms = next_expiry_ms.min(reservation.expires_ms);
                true
            }
        });
        self.reserved_nanos = self.reserved_nanos.saturating_sub(nanos);
        self.reserved_tokens = self.reserved_tokens.saturating_sub(tokens);
        self.next_expiry_ms = next_expiry_ms;
    }

    fn reserve(&mut self, reservation: &str, nanos: i64, tokens: i64, expires_ms: i64) {
        let held = self
            .reservations
            .entry(reservation.to_string())
            .or_insert(Reservation {
                nanos: 0,
                tokens: 0,
                expires_ms,
            });
        held.nanos = held.nanos.saturating_add(nanos);
        held.tokens = held.tokens.saturating_add(tokens);
        self.reserved_nanos = self.reserved_nanos.saturating_add(nanos);
        self.reserved_tokens = self.reserved_tokens.saturating_add(tokens);
        self.next_expiry_ms = self.next_expiry_ms.min(expires_ms);
    }

    fn is_empty(&self) -> bool {
        self.spent_nanos == 0 && self.spent_tokens == 0 && self.reservations.is_empty()
    }
}

/// `true` when `spent + reserved + pending + charge` goes above `limit`.
fn over(limit: Option<i64>, spent: i64, reserved: i64, pending: i64, charge: i64) -> bool {
    limit.is_some_and(|limit| {
        i128::from(spent) + i128::from(reserved) + i128::from(pending) + i128::from(charge)
            > i128::from(limit)
    })
}

impl State {
    fn counter_state(&self, key: &str) -> CounterState {
        self.counters
            .get(key)
            .map(Counter::state)
            .unwrap_or_default()
    }

    fn tat(&self, key: &str) -> Option<i64> {
        self.buckets.get(key).copied()
    }

    fn admit(&mut self, admission: &Admission) -> AdmissionOutcome {
        let now_ms = admission.now_ms;
        let now_us = now_ms.saturating_mul(1000);
        self.sweep(now_ms);
        for charge in &admission.budgets {
            if let Some(counter) = self.counters.get_mut(&charge.key) {
                counter.drop_expired(now_ms);
            }
        }

        // Check every charge first; charges on the same key within one admission add up.
        let mut refused = None;
        let mut pending: Vec<(&str, i64, i64)> = Vec::new();
        for (index, charge) in admission.budgets.iter().enumerate() {
            let found = self.counter_state(&charge.key);
            let (pending_nanos, pending_tokens) = pending
                .iter()
                .filter(|(key, ..)| *key == charge.key)
                .fold((0i64, 0i64), |(n, t), (_, pn, pt)| {
                    (n.saturating_add(*pn), t.saturating_add(*pt))
                });
            if charge.enforced
                && (over(
                    charge.limit_nanos,
                    found.spent_nanos,
                    found.reserved_nanos,
                    pending_nanos,
                    charge.nanos,
                ) || over(
                    charge.limit_tokens,
                    found.spent_tokens,
                    found.reserved_tokens,
                    pending_tokens,
                    charge.tokens,
                ))
            {
                refused = Some(Refusal::Budget(index));
                break;
            }
            pending.push((&charge.key, charge.nanos, charge.tokens));
        }
        let mut new_tats: Vec<(&str, i64)> = Vec::new();
        if refused.is_none() {
            for (index, charge) in admission.rates.iter().enumerate() {
                let tat = new_tats
                    .iter()
                    .rev()
                    .find(|(key, _)| *key == charge.key)
                    .map(|(_, tat)| *tat)
                    .or_else(|| self.tat(&charge.key))
                    .unwrap_or(now_us);
                let new_tat = tat.max(now_us).saturating_add(charge.cost_us);
                if new_tat.saturating_sub(now_us) > charge.period_us {
                    refused = Some(Refusal::Rate(index));
                    break;
                }
                new_tats.push((&charge.key, new_tat));
            }
        }

        if refused.is_none() {
            let expires_ms = now_ms.saturating_add(admission.lease_ms);
            for charge in &admission.budgets {
                self.counters
                    .entry(charge.key.clone())
                    .or_insert_with(|| Counter::new(charge.window_end_ms))
                    .reserve(
                        &admission.reservation.0,
                        charge.nanos,
                        charge.tokens,
                        expires_ms,
                    );
            }
            for (key, tat) in new_tats {
                self.buckets.insert(key.to_string(), tat);
                self.buckets_dirty = true;
            }
        }
        // Admitted: the state left; refused: the state found (nothing changed).
        AdmissionOutcome {
            refused,
            budgets: admission
                .budgets
                .iter()
                .map(|charge| self.counter_state(&charge.key))
                .collect(),
            rates: admission
                .rates
                .iter()
                .map(|charge| RateState {
                    backlog_us: self
                        .tat(&charge.key)
                        .map_or(0, |tat| tat.saturating_sub(now_us).max(0)),
                })
                .collect(),
        }
    }

    /// Applies a settlement; returns the counters whose spent amounts changed, to be written.
    ///
    /// A settlement of a reservation already settled changes nothing: it returns the current
    /// values of the counters it charged while their write is not confirmed, else nothing.
    fn settle(&mut self, settlement: &Settlement) -> Vec<CounterRow> {
        if let Some(settled) = self.settled.get(&settlement.reservation.0) {
            return if settled.unwritten {
                self.charged_rows(settlement)
            } else {
                Vec::new()
            };
        }
        let mut rows: Vec<CounterRow> = Vec::new();
        for settle in &settlement.budgets {
            let counter = self
                .counters
                .entry(settle.key.clone())
                .or_insert_with(|| Counter::new(settle.window_end_ms));
            if let Some(held) = counter.reservations.remove(&settlement.reservation.0) {
                counter.reserved_nanos = counter.reserved_nanos.saturating_sub(held.nanos);
                counter.reserved_tokens = counter.reserved_tokens.saturating_sub(held.tokens);
            }
            if settle.actual_nanos == 0 && settle.actual_tokens == 0 {
                continue;
            }
            counter.spent_nanos = counter.spent_nanos.saturating_add(settle.actual_nanos);
            counter.spent_tokens = counter.spent_tokens.saturating_add(settle.actual_tokens);
            if counter.window_end_ms.is_none() {
                counter.window_end_ms = settle.window_end_ms;
            }
            let row = CounterRow {
                key: settle.key.clone(),
                spent_nanos: counter.spent_nanos,
                spent_tokens: counter.spent_tokens,
                window_end_ms: counter.window_end_ms,
            };
            match rows.iter_mut().find(|r| r.key == row.key) {
                Some(existing) => *existing = row,
                None => rows.push(row),
            }
        }
        let now_us = settlement.now_ms.saturating_mul(1000);
        for settle in &settlement.rates {
            let tat = self.tat(&settle.key).unwrap_or(now_us).max(now_us);
            self.buckets
                .insert(settle.key.clone(), tat.saturating_add(settle.adjust_us));
            self.buckets_dirty = true;
        }
        let expires_ms = settlement.now_ms.saturating_add(SETTLED_MEMORY_MS);
        self.settled.insert(
            settlement.reservation.0.clone(),
            Settled {
                unwritten: !rows.is_empty(),
            },
        );
        self.settled_expiry
            .push_back((expires_ms, settlement.reservation.0.clone()));
        rows
    }

    /// The current values of the counters `settlement` charged (actual amounts not zero) that
    /// memory still holds, once each.
    fn charged_rows(&self, settlement: &Settlement) -> Vec<CounterRow> {
        let mut rows: Vec<CounterRow> = Vec::new();
        for settle in &settlement.budgets {
            if (settle.actual_nanos == 0 && settle.actual_tokens == 0)
                || rows.iter().any(|row| row.key == settle.key)
            {
                continue;
            }
            if let Some(counter) = self.counters.get(&settle.key) {
                rows.push(CounterRow {
                    key: settle.key.clone(),
                    spent_nanos: counter.spent_nanos,
                    spent_tokens: counter.spent_tokens,
                    window_end_ms: counter.window_end_ms,
                });
            }
        }
        rows
    }

    /// A write of the counters charged by the settlement of `reservation` was committed.
    fn settlement_written(&mut self, reservation: &str) {
        if let Some(settled) = self.settled.get_mut(reservation) {
            settled.unwritten = false;
        }
    }

    /// At most once per [`SWEEP_INTERVAL_MS`]: forgets counters whose window ended more than
    /// [`WINDOW_GRACE_MS`] ago, expired leases, empty counters, idle rate buckets and settled
    /// reservation ids older than [`SETTLED_MEMORY_MS`].
    fn sweep(&mut self, now_ms: i64) {
        if now_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now_ms.saturating_add(SWEEP_INTERVAL_MS);
        let before_ms = now_ms.saturating_sub(WINDOW_GRACE_MS);
        let mut forgot_window = false;
        self.counters.retain(|_, counter| {
            if counter.window_end_ms.is_some_and(|end| end < before_ms) {
                forgot_window = true;
                return false;
            }
            counter.drop_expired(now_ms);
            !counter.is_empty()
        });
        let now_us = now_ms.saturating_mul(1000);
        self.buckets.retain(|_, tat| *tat > now_us);
        // A settlement a little out of order waits behind a later one: kept a bit longer.
        while let Some((expires_ms, _)) = self.settled_expiry.front() {
            if *expires_ms > now_ms {
                break;
            }
            if let Some((_, id)) = self.settled_expiry.pop_front() {
                self.settled.remove(&id);
            }
        }
        if forgot_window {
            if let Some(writer) = &self.writer {
                // Nobody waits for this write; a failure is logged by the writer.
                let _ = writer.send(Job::Write {
                    work: Work::Forget { before_ms },
                    reply: None,
                });
            }
        }
    }

    /// Queues the rate buckets still running for writing (nobody waits for it), at most once per
    /// [`BUCKET_FLUSH_MS`] unless `now`; a crash loses at most that much of their changes.
    fn flush_buckets(&mut self, now_ms: i64, now: bool) {
        if !self.buckets_dirty || (!now && now_ms < self.next_bucket_flush_ms) {
            return;
        }
        let Some(writer) = &self.writer else {
            return;
        };
        let now_us = now_ms.saturating_mul(1000);
        let running = self
            .buckets
            .iter()
            .filter(|(_, tat)| **tat > now_us)
            .map(|(key, tat)| (key.clone(), *tat))
            .collect();
        let _ = writer.send(Job::Write {
            work: Work::Buckets(running),
            reply: None,
        });
        self.buckets_dirty = false;
        self.next_bucket_flush_ms = now_ms.saturating_add(BUCKET_FLUSH_MS);
    }

    /// Queues a write; the receiver answers once it is committed (or failed).
    fn queue(
        &self,
        path: &Path,
        work: Work,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(
            path,
            Job::Write {
                work,
                reply: Some(reply),
            },
        )?;
        Ok(answer)
    }

    /// Queues an admin write; the receiver answers with its outcome once it is committed (or
    /// with the error that kept it from being committed).
    fn queue_admin(
        &self,
        path: &Path,
        row: AdminRow,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(path, Job::Admin { row, reply })?;
        Ok(answer)
    }

    fn send(&self, path: &Path, job: Job) -> Result<(), StoreError> {
        match &self.writer {
            Some(writer) if writer.send(job).is_ok() => Ok(()),
            _ => Err(writer_stopped(path)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Disk: the writer thread

enum Job {
    /// A write; `reply` (when someone waits) answers once it is committed.
    Write {
        work: Work,
        reply: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// An admin write: its compare-and-set runs inside the writer's transaction (the writer is
    /// the only writer, so what it reads there cannot change before it writes); `reply` gets
    /// the outcome once the transaction is committed.
    Admin {
        row: AdminRow,
        reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
    },
}

enum Work {
    /// New spent amounts of counters (whole values, not increments).
    Counters(Vec<CounterRow>),
    Spend(Vec<SpendRow>),
    /// Deletes counters whose window ended before `before_ms`.
    Forget {
        before_ms: i64,
    },
    /// Every running rate bucket (key, TAT in µs), replacing those on disk.
    Buckets(Vec<(String, i64)>),
    /// Deletes spend records from before `before_ms`.
    PruneSpend {
        before_ms: i64,
    },
    /// Appends an audit event that changes no admin record.
    Audit(AuditRow),
}

struct CounterRow {
    key: String,
    spent_nanos: i64,
    spent_tokens: i64,
    window_end_ms: Option<i64>,
}

/// A [`SpendRecord`] with its unsigned fields checked to fit SQLite's integers.
struct SpendRow {
    record: SpendRecord,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    latency_ms: i64,
}

impl SpendRow {
    fn new(record: &SpendRecord, path: &Path) -> Result<SpendRow, StoreError> {
        let fit = |field: &str, value: u64| {
            i64::try_from(value).map_err(|_| {
                StoreError::Unavailable(format!(
                    "{}: cannot store spend record {:?}: {field} {value} is too large",
                    path.display(),
                    record.request_id
                ))
            })
        };
        Ok(SpendRow {
            input_tokens: fit("input_tokens", record.input_tokens)?,
            cached_input_tokens: fit("cached_input_tokens", record.cached_input_tokens)?,
            output_tokens: fit("output_tokens", record.output_tokens)?,
            latency_ms: fit("latency_ms", record.latency_ms)?,
            record: record.clone(),
        })
    }
}

/// An [`AuditEvent`] as stored: its JSON, and its time for queries by hand.
struct AuditRow {
    time_ms: i64,
    json: String,
}

impl AuditRow {
    fn new(event: &AuditEvent, path: &Path) -> Result<AuditRow, StoreError> {
        let json = serde_json::to_string(event).map_err(|e| {
            StoreError::Corrupt(format!(
                "{}: cannot encode audit event {:?}: {e}",
                path.display(),
                event.action
            ))
        })?;
        Ok(AuditRow {
            time_ms: event.time_ms,
            json,
        })
    }
}

/// An [`AdminWrite`], its audit event encoded.
struct AdminRow {
    kind: RecordKind,
    id: String,
    json: Option<String>,
    expect: Expect,
    audit: AuditRow,
}

/// What the writer answers for one job once its transaction has ended.
enum Answer {
    Write {
        reply: Option<oneshot::Sender<Result<(), StoreError>>>,
        result: Result<(), StoreError>,
    },
    Admin {
        reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
        result: Result<WriteOutcome, StoreError>,
    },
}

impl Answer {
    /// The admin version this job wrote, if it is an admin write that was written.
    fn admin_version(&self) -> Option<u64> {
        match self {
            Answer::Admin {
                result: Ok(WriteOutcome::Written { version }),
                ..
            } => Some(*version),
            _ => None,
        }
    }

    /// The transaction did not commit: nothing of this job was written.
    fn failed(self, message: &str) -> Answer {
        let error = StoreError::Unavailable(message.to_string());
        match self {
            Answer::Write { reply, .. } => Answer::Write {
                reply,
                result: Err(error),
            },
            Answer::Admin { reply, .. } => Answer::Admin {
                reply,
                result: Err(error),
            },
        }
    }

    fn send(self) {
        // A caller may have stopped waiting; the job is done (or failed) either way.
        match self {
            Answer::Write {
                reply: Some(reply),
                result,
            } => {
                let _ = reply.send(result);
            }
            Answer::Write {
                reply: None,
                result,
            } => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "store write failed");
                }
            }
            Answer::Admin { reply, result } => {
                let _ = reply.send(result);
            }
        }
    }
}

/// Runs until every sender is gone: takes what is queued (up to [`MAX_BATCH`]), writes it in one
/// transaction (one commit, one fsync with `Full`), then answers each job.
fn run_writer(
    mut conn: Connection,
    path: &Path,
    jobs: mpsc::Receiver<Job>,
    admin_version: &AtomicU64,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        write_batch(&mut conn, path, batch, admin_version);
    }
}

/// One transaction; each job in a savepoint of its own, so one failing job fails only itself.
/// When the transaction cannot begin or commit, nothing was written and every job fails. Once
/// committed, the admin version in memory is raised to the last one written, then every job is
/// answered.
fn write_batch(conn: &mut Connection, path: &Path, batch: Vec<Job>, admin_version: &AtomicU64) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let message = sqlite_message(path, "cannot commit", &e);
            tracing::error!(error = %message, "store write failed");
            for job in batch {
                job.failed(&message).send();
            }
            return;
        }
    };
    let answers: Vec<Answer> = batch
        .into_iter()
        .map(|job| run_job(&mut tx, path, job))
        .collect();
    match tx.commit() {
        Ok(()) => {
            if let Some(version) = answers.iter().filter_map(Answer::admin_version).max() {
                admin_version.fetch_max(version, Ordering::AcqRel);
            }
            for answer in answers {
                answer.send();
            }
        }
        Err(e) => {
            let message = sqlite_message(path, "cannot commit", &e);
            tracing::error!(error = %message, "store write failed");
            for answer in answers {
                answer.failed(&message).send();
            }
        }
    }
}

impl Job {
    /// Its answer when the transaction could not begin: nothing was written.
    fn failed(self, message: &str) -> Answer {
        let error = StoreError::Unavailable(message.to_string());
        match self {
            Job::Write { reply, .. } => Answer::Write {
                reply,
                result: Err(error),
            },
            Job::Admin { reply, .. } => Answer::Admin {
                reply,
                result: Err(error),
            },
        }
    }
}

/// Runs one job in a savepoint of `tx`: committed into the transaction when it succeeds,
/// rolled back when it fails (or, for an admin write, when it finds a conflict).
fn run_job(tx: &mut rusqlite::Transaction<'_>, path: &Path, job: Job) -> Answer {
    match job {
        Job::Write { work, reply } => {
            let result = tx.savepoint().and_then(|savepoint| {
                write_work(&savepoint, &work)?;
                savepoint.commit()
            });
            Answer::Write {
                reply,
                result: result.map_err(|e| sqlite_error(path, work.describe(), e)),
            }
        }
        Job::Admin { row, reply } => {
            let result = tx.savepoint().and_then(|savepoint| {
                let outcome = write_admin(&savepoint, &row)?;
                // A conflict wrote nothing; dropping the savepoint rolls it back all the same.
                if matches!(outcome, WriteOutcome::Written { .. }) {
                    savepoint.commit()?;
                }
                Ok(outcome)
            });
            Answer::Admin {
                reply,
                result: result.map_err(|e| row_error(path, "cannot write an admin record", e)),
            }
        }
    }
}

impl Work {
    fn describe(&self) -> &'static str {
        match self {
            Work::Counters(_) => "cannot store spent amounts",
            Work::Spend(_) => "cannot append to the spend log",
            Work::Forget { .. } => "cannot delete ended counters",
            Work::Buckets(_) => "cannot store rate buckets",
            Work::PruneSpend { .. } => "cannot prune the spend log",
            Work::Audit(_) => "cannot append to the audit log",
        }
    }
}

fn write_work(conn: &Connection, work: &Work) -> rusqlite::Result<()> {
    match work {
        Work::Counters(rows) => {
            let mut upsert = conn.prepare_cached(
                "INSERT INTO counters (key, spent_nanos, spent_tokens, window_end_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET spent_nanos = excluded.spent_nanos,
                     spent_tokens = excluded.spent_tokens, window_end_ms = excluded.window_end_ms",
            )?;
            for row in rows {
                upsert.execute((
                    &row.key,
                    row.spent_nanos,
                    row.spent_tokens,
                    row.window_end_ms,
                ))?;
            }
        }
        Work::Spend(rows) => {
            let mut insert = conn.prepare_cached(&format!(
                "INSERT INTO spend_log ({SPEND_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ))?;
            for row in rows {
                let r = &row.record;
                insert.execute(rusqlite::params![
                    r.time_ms,
                    r.request_id,
                    r.subject,
                    r.user,
                    r.team,
                    r.api_key,
                    r.model,
                    r.upstream_model,
                    r.provider,
                    row.input_tokens,
                    row.cached_input_tokens,
                    row.output_tokens,
                    r.cost_nanos,
                    r.status,
                    r.outcome.as_str(),
                    row.latency_ms,
                    r.stream,
                ])?;
            }
        }
        Work::Forget { before_ms } => {
            conn.prepare_cached(
                "DELETE FROM counters WHERE window_end_ms IS NOT NULL AND window_end_ms < ?1",
            )?
            .execute([before_ms])?;
        }
        Work::PruneSpend { before_ms } => {
            conn.prepare_cached("DELETE FROM spend_log WHERE time_ms < ?1")?
                .execute([before_ms])?;
        }
        Work::Buckets(buckets) => {
            conn.prepare_cached("DELETE FROM rate_buckets")?
                .execute([])?;
            let mut insert =
                conn.prepare_cached("INSERT INTO rate_buckets (key, tat_us) VALUES (?1, ?2)")?;
            for (key, tat_us) in buckets {
                insert.execute((key, tat_us))?;
            }
        }
        Work::Audit(row) => append_audit(conn, row)?,
    }
    Ok(())
}

fn append_audit(conn: &Connection, row: &AuditRow) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO audit_log (time_ms, json) VALUES (?1, ?2)")?
        .execute((row.time_ms, &row.json))?;
    Ok(())
}

/// An admin write's compare-and-set, version bump, record change and audit event. On a
/// conflict it writes nothing.
fn write_admin(conn: &Connection, row: &AdminRow) -> rusqlite::Result<WriteOutcome> {
    let current: Option<i64> = conn
        .prepare_cached("SELECT revision FROM admin_records WHERE kind = ?1 AND id = ?2")?
        .query_row((row.kind.as_str(), &row.id), |r| r.get(0))
        .optional()?;
    let current = current.map(|revision| unsigned(0, revision)).transpose()?;
    let expected = match row.expect {
        Expect::Absent => current.is_none(),
        Expect::Revision(revision) => current == Some(revision),
    };
    if !expected {
        return Ok(WriteOutcome::Conflict { current });
    }
    let version = stored_admin_version(conn)?;
    let next = version
        .checked_add(1)
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, version))?;
    conn.prepare_cached(
        "INSERT INTO admin_version (one, version) VALUES (1, ?1)
         ON CONFLICT (one) DO UPDATE SET version = excluded.version",
    )?
    .execute([next])?;
    match &row.json {
        Some(json) => {
            conn.prepare_cached(
                "INSERT INTO admin_records (kind, id, revision, json) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, id) DO UPDATE SET revision = excluded.revision,
                     json = excluded.json",
            )?
            .execute((row.kind.as_str(), &row.id, next, json))?;
        }
        None => {
            conn.prepare_cached("DELETE FROM admin_records WHERE kind = ?1 AND id = ?2")?
                .execute((row.kind.as_str(), &row.id))?;
        }
    }
    append_audit(conn, &row.audit)?;
    Ok(WriteOutcome::Written {
        version: unsigned(0, next)?,
    })
}

/// A stored integer that must not be negative.
fn unsigned(column: usize, value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(column, value))
}

/// The version row's value; 0 when there is none (no admin write yet).
fn stored_admin_version(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT version FROM admin_version WHERE one = 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Disk: reading

/// A connection for reads, used from `spawn_blocking` so queries never hold a runtime thread.
#[derive(Clone)]
struct Reader {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

impl Reader {
    fn open(path: &Path) -> Result<Reader, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| sqlite_error(path, "cannot open for reading", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sqlite_error(path, "cannot configure", e))?;
        if schema_version(&conn, path)? == 0 {
            return Err(StoreError::Corrupt(format!(
                "{}: not a Gantry store (no tables)",
                path.display()
            )));
        }
        Ok(Reader {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::from(path),
        })
    }

    async fn run<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let conn = lock(&reader.conn);
            read(&conn, &reader.path)
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Unavailable(format!(
                "{}: read failed: {e}",
                self.path.display()
            ))),
        }
    }
}

/// The file's schema version: 0 for a new file; an error for a newer layout than this one.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| sqlite_error(path, "cannot read", e))?;
    if !(0..=SCHEMA_VERSION).contains(&version) {
        return Err(StoreError::Corrupt(format!(
            "{}: layout {version} is unknown to this version, which reads layout \
             {SCHEMA_VERSION} (written by a newer Gantry?)",
            path.display()
        )));
    }
    Ok(version)
}

fn load_counters(conn: &Connection, path: &Path) -> Result<HashMap<String, Counter>, StoreError> {
    let read = || -> rusqlite::Result<HashMap<String, Counter>> {
        let mut select =
            conn.prepare("SELECT key, spent_nanos, spent_tokens, window_end_ms FROM counters")?;
        let rows = select.query_map([], |row| {
            let mut counter = Counter::new(row.get(3)?);
            counter.spent_nanos = row.get(1)?;
            counter.spent_tokens = row.get(2)?;
            Ok((row.get(0)?, counter))
        })?;
        rows.collect()
    };
    read().map_err(|e| row_error(path, "cannot load counters", e))
}

fn load_buckets(conn: &Connection, path: &Path) -> Result<HashMap<String, i64>, StoreError> {
    let read = || -> rusqlite::Result<HashMap<String, i64>> {
        let mut select = conn.prepare("SELECT key, tat_us FROM rate_buckets")?;
        let rows = select.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    };
    read().map_err(|e| row_error(path, "cannot load rate buckets", e))
}

fn read_counters(
    conn: &Connection,
    path: &Path,
    keys: &[String],
) -> Result<Vec<CounterState>, StoreError> {
    let read = || -> rusqlite::Result<Vec<CounterState>> {
        let mut select =
            conn.prepare_cached("SELECT spent_nanos, spent_tokens FROM counters WHERE key = ?1")?;
        keys.iter()
            .map(|key| {
                let spent = select
                    .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let (spent_nanos, spent_tokens) = spent.unwrap_or((0, 0));
                Ok(CounterState {
                    spent_nanos,
                    spent_tokens,
                    ..CounterState::default()
                })
            })
            .collect()
    };
    read().map_err(|e| row_error(path, "cannot read counters", e))
}

/// Whether the file has `table` (a file made before the admin tables existed, read by a
/// read-only store, has not).
fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([table])
}

fn read_admin_version(conn: &Connection, path: &Path) -> Result<u64, StoreError> {
    let read = || -> rusqlite::Result<u64> {
        if !has_table(conn, "admin_version")? {
            return Ok(0);
        }
        unsigned(0, stored_admin_version(conn)?)
    };
    read().map_err(|e| row_error(path, "cannot read the admin version", e))
}

/// The version and every record, in one read transaction (one snapshot of the file), sorted by
/// kind then id.
fn read_admin_records(conn: &Connection, path: &Path) -> Result<AdminRecords, StoreError> {
    let read = || -> rusqlite::Result<AdminRecords> {
        let tx = conn.unchecked_transaction()?;
        if !has_table(&tx, "admin_records")? || !has_table(&tx, "admin_version")? {
            return Ok(AdminRecords::default());
        }
        let version = unsigned(0, stored_admin_version(&tx)?)?;
        let mut select = tx.prepare_cached("SELECT kind, id, revision, json FROM admin_records")?;
        let rows = select.query_map([], |row| {
            let kind: String = row.get(0)?;
            let kind = RecordKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("unknown record kind {kind:?}").into(),
                )
            })?;
            Ok(StoredRecord {
                kind,
                id: row.get(1)?,
                revision: unsigned(2, row.get(2)?)?,
                json: row.get(3)?,
            })
        })?;
        let mut records = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        drop(select);
        tx.finish()?;
        records.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(AdminRecords { version, records })
    };
    read().map_err(|e| row_error(path, "cannot read the admin records", e))
}

/// The newest `limit` audit events, oldest first.
fn read_audit_events(
    conn: &Connection,
    path: &Path,
    limit: usize,
) -> Result<Vec<AuditEvent>, StoreError> {
    let read = || -> rusqlite::Result<Vec<String>> {
        if limit == 0 || !has_table(conn, "audit_log")? {
            return Ok(Vec::new());
        }
        let mut select = conn.prepare_cached(
            "SELECT json FROM (SELECT id, json FROM audit_log ORDER BY id DESC LIMIT ?1)
             ORDER BY id",
        )?;
        let rows =
            select.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |row| row.get(0))?;
        rows.collect()
    };
    let lines = read().map_err(|e| row_error(path, "cannot read the audit log", e))?;
    lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{}: cannot read the audit log: unreadable event {line:?}: {e}",
                    path.display()
                ))
            })
        })
        .collect()
}

fn read_spend(
    conn: &Connection,
    path: &Path,
    query: SpendQuery,
) -> Result<Vec<SpendRecord>, StoreError> {
    let mut conditions = Vec::new();
    let mut bounds = Vec::new();
    if let Some(since) = query.since_ms {
        bounds.push(since);
        conditions.push(format!("time_ms >= ?{}", bounds.len()));
    }
    if let Some(until) = query.until_ms {
        bounds.push(until);
        conditions.push(format!("time_ms < ?{}", bounds.len()));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!("SELECT {SPEND_COLUMNS} FROM spend_log {filter} ORDER BY time_ms, id");
    let read = || -> rusqlite::Result<Vec<SpendRecord>> {
        let mut select = conn.prepare_cached(&sql)?;
        let rows = select.query_map(rusqlite::params_from_iter(&bounds), spend_record)?;
        rows.collect()
    };
    read().map_err(|e| row_error(path, "cannot read the spend log", e))
}

fn spend_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<SpendRecord> {
    let unsigned = |index: usize| -> rusqlite::Result<u64> {
        let value: i64 = row.get(index)?;
        u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
    };
    let outcome: String = row.get(14)?;
    let outcome = parse_outcome(&outcome).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            14,
            rusqlite::types::Type::Text,
            format!("unknown outcome {outcome:?}").into(),
        )
    })?;
    Ok(SpendRecord {
        time_ms: row.get(0)?,
        request_id: row.get(1)?,
        subject: row.get(2)?,
        user: row.get(3)?,
        team: row.get(4)?,
        api_key: row.get(5)?,
        model: row.get(6)?,
        upstream_model: row.get(7)?,
        provider: row.get(8)?,
        input_tokens: unsigned(9)?,
        cached_input_tokens: unsigned(10)?,
        output_tokens: unsigned(11)?,
        cost_nanos: row.get(12)?,
        status: row.get(13)?,
        outcome,
        latency_ms: unsigned(15)?,
        stream: row.get(16)?,
    })
}

fn parse_outcome(text: &str) -> Option<SpendOutcome> {
    [
        SpendOutcome::Ok,
        SpendOutcome::UpstreamError,
        SpendOutcome::Aborted,
        SpendOutcome::BudgetExceeded,
        SpendOutcome::RateLimited,
    ]
    .into_iter()
    .find(|outcome| outcome.as_str() == text)
}

// ---------------------------------------------------------------------------------------------
// Errors

fn sqlite_message(path: &Path, what: &str, error: &rusqlite::Error) -> String {
    format!("{}: {what}: {error}", path.display())
}

/// Locks `<path>.lock` exclusively (an advisory `flock`, released when the process exits, even
/// by `kill -9`), so that a second Gantry process cannot own the same file and overwrite the
/// first one's counters.
fn take_owner_lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: cannot open the lock file {}: {e}",
                path.display(),
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "{}: another Gantry process owns this store (it holds {}); use kind: redis to share limits between processes",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "{}: cannot lock {}: {e}",
            path.display(),
            lock_path.display()
        ))),
    }
}

/// An SQLite error: `Corrupt` when the file is not a (readable) database, else `Unavailable`.
fn sqlite_error(path: &Path, what: &str, error: rusqlite::Error) -> StoreError {
    let message = sqlite_message(path, what, &error);
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt(message)
        }
        _ => StoreError::Unavailable(message),
    }
}

/// Like [`sqlite_error`], and `Corrupt` for a value of the wrong type or range in a row.
fn row_error(path: &Path, what: &str, error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(sqlite_message(path, what, &error))
        }
        error => sqlite_error(path, what, error),
    }
}

fn writer_stopped(path: &Path) -> StoreError {
    StoreError::Unavailable(format!("{}: the writer thread has stopped", path.display()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gantry_policy::governance::ledger::{
        BudgetCharge, BudgetSettle, RateCharge, ReservationId,
    };

    use super::*;
    use crate::conformance;

    fn open_in(dir: &tempfile::TempDir) -> EmbeddedStore {
        open_at(&dir.path().join("state").join("gantry.db"))
    }

    fn open_at(path: &Path) -> EmbeddedStore {
        match EmbeddedStore::open(path, StoreDurability::Normal) {
            Ok(store) => store,
            Err(e) => panic!("open failed: {e}"),
        }
    }

    fn fresh() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_in(&dir);
        (dir, store)
    }

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64
    }

    fn charge(key: &str, limit_nanos: i64, nanos: i64, window_end_ms: Option<i64>) -> BudgetCharge {
        BudgetCharge {
            key: key.to_string(),
            limit_nanos: Some(limit_nanos),
            limit_tokens: None,
            nanos,
            tokens: 0,
            enforced: true,
            window_end_ms,
        }
    }

    fn admission(now_ms: i64, budgets: Vec<BudgetCharge>, rates: Vec<RateCharge>) -> Admission {
        Admission {
            reservation: ReservationId::random(),
            now_ms,
            lease_ms: 3_600_000,
            budgets,
            rates,
        }
    }

    fn settlement(admission: &Admission, now_ms: i64, actual: &[(i64, i64)]) -> Settlement {
        Settlement {
            reservation: admission.reservation.clone(),
            now_ms,
            budgets: admission
                .budgets
                .iter()
                .zip(actual)
                .map(|(charge, &(actual_nanos, actual_tokens))| BudgetSettle {
                    key: charge.key.clone(),
                    reserved_nanos: charge.nanos,
                    reserved_tokens: charge.tokens,
                    actual_nanos,
                    actual_tokens,
                    window_end_ms: charge.window_end_ms,
                })
                .collect(),
            rates: Vec::new(),
        }
    }

    fn spend_record(time_ms: i64, request_id: &str, cost_nanos: i64) -> SpendRecord {
        SpendRecord {
            time_ms,
            request_id: request_id.to_string(),
            subject: "subject".to_string(),
            user: "ada".to_string(),
            team: "research".to_string(),
            api_key: "ci".to_string(),
            model: "gpt-4o-mini".to_string(),
            upstream_model: "gpt-4o-mini-2024-07-18".to_string(),
            provider: "openai".to_string(),
            input_tokens: 12,
            cached_input_tokens: 2,
            output_tokens: 34,
            cost_nanos,
            status: 200,
            outcome: SpendOutcome::Ok,
            latency_ms: 56,
            stream: true,
        }
    }

    async fn admit_ok(store: &EmbeddedStore, admission: &Admission) -> AdmissionOutcome {
        let outcome = store.admit(admission).await.expect("admit");
        assert_eq!(outcome.refused, None, "{outcome:?}");
        outcome
    }

    async fn counters(store: &EmbeddedStore, keys: &[&str]) -> Vec<CounterState> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        store.counters(&keys).await.expect("counters")
    }

    fn state(spent_nanos: i64, reserved_nanos: i64) -> CounterState {
        CounterState {
            spent_nanos,
            reserved_nanos,
            ..CounterState::default()
        }
    }

    fn unavailable_message(result: Result<impl std::fmt::Debug, StoreError>) -> String {
        match result {
            Err(StoreError::Unavailable(message)) => message,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    fn corrupt_message(result: Result<impl std::fmt::Debug, StoreError>) -> String {
        match result {
            Err(StoreError::Corrupt(message)) => message,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // The conformance checks, one test each.

    #[tokio::test]
    async fn conformance_admit_within_limits_reserves() {
        let (_dir, store) = fresh();
        conformance::admit_within_limits_reserves(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_enforced_refusal_is_all_or_nothing() {
        let (_dir, store) = fresh();
        conformance::enforced_refusal_is_all_or_nothing(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_audit_charge_over_limit_is_admitted() {
        let (_dir, store) = fresh();
        conformance::audit_charge_over_limit_is_admitted(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_settle_moves_reservation_to_spent() {
        let (_dir, store) = fresh();
        conformance::settle_moves_reservation_to_spent(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_release_frees_reservation() {
        let (_dir, store) = fresh();
        conformance::release_frees_reservation(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_expired_lease_is_dropped() {
        let (_dir, store) = fresh();
        conformance::expired_lease_is_dropped(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_concurrent_admissions_respect_limit() {
        let (_dir, store) = fresh();
        conformance::concurrent_admissions_respect_limit(&store, "t:").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_concurrent_admissions_across_tasks() {
        let (_dir, store) = fresh();
        let store: Arc<dyn Store> = Arc::new(store);
        conformance::concurrent_admissions_across_tasks(store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_rate_buckets_follow_gcra() {
        let (_dir, store) = fresh();
        conformance::rate_buckets_follow_gcra(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_spend_log_round_trips() {
        let (_dir, store) = fresh();
        conformance::spend_log_round_trips(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_spend_log_prunes_old_records() {
        let (_dir, store) = fresh();
        conformance::spend_log_prunes_old_records(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_unknown_counters_read_zero() {
        let (_dir, store) = fresh();
        conformance::unknown_counters_read_zero(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_settling_twice_charges_once() {
        let (_dir, store) = fresh();
        conformance::settling_twice_charges_once(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_admin_fresh_store_starts_at_zero() {
        let (_dir, store) = fresh();
        conformance::admin_fresh_store_starts_at_zero(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_admin_write_creates_a_record() {
        let (_dir, store) = fresh();
        conformance::admin_write_creates_a_record(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_admin_writes_compare_and_set() {
        let (_dir, store) = fresh();
        conformance::admin_writes_compare_and_set(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_admin_audit_log_keeps_every_event() {
        let (_dir, store) = fresh();
        conformance::admin_audit_log_keeps_every_event(&store, "t:").await;
    }

    #[tokio::test]
    async fn conformance_admin_concurrent_writes_one_wins() {
        let (_dir, store) = fresh();
        conformance::admin_concurrent_writes_one_wins(&store, "t:").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_admin_concurrent_writes_across_tasks() {
        let (_dir, store) = fresh();
        let store: Arc<dyn Store> = Arc::new(store);
        conformance::admin_concurrent_writes_across_tasks(store, "t:").await;
    }

    /// All checks in one store, with `durability: full`, then again after a restart under a
    /// new prefix (the loaded counters must not disturb new keys).
    #[tokio::test]
    async fn conformance_run_all_with_full_durability_and_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("full.db");
        let store = EmbeddedStore::open(&path, StoreDurability::Full).expect("open");
        conformance::run_all(&store, "first:").await;
        drop(store);
        let store = EmbeddedStore::open(&path, StoreDurability::Full).expect("reopen");
        conformance::run_all(&store, "second:").await;
    }

    // -----------------------------------------------------------------------------------------
    // Durability

    #[tokio::test]
    async fn restart_keeps_spent_and_spend_log_and_forgets_reservations() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = now_ms();
        let window_end = Some(now + 86_400_000);
        let store = open_in(&dir);
        assert_eq!(store.kind(), "embedded");
        assert!(store.path().ends_with("state/gantry.db"));
        assert!(store.path().is_file(), "the file and its directory exist");

        let mut both = charge("team:research:day", 1_000, 300, window_end);
        both.limit_tokens = Some(10_000);
        both.tokens = 500;
        let settled = admission(now, vec![charge("total", 1_000, 100, None), both], vec![]);
        admit_ok(&store, &settled).await;
        store
            .settle(&settlement(&settled, now + 1, &[(120, 0), (250, 420)]))
            .await
            .expect("settle");
        // A second settlement on the same counter: the file holds the sum.
        let again = admission(now + 2, vec![charge("total", 1_000, 10, None)], vec![]);
        admit_ok(&store, &again).await;
        store
            .settle(&settlement(&again, now + 3, &[(7, 0)]))
            .await
            .expect("settle");
        // Reserved but never settled: the request dies with the process.
        let pending = admission(now + 4, vec![charge("total", 1_000, 500, None)], vec![]);
        admit_ok(&store, &pending).await;
        // A full rate bucket, still full after the restart.
        let rate = RateCharge {
            key: "rate".to_string(),
            cost_us: 60_000_000,
            period_us: 60_000_000,
        };
        admit_ok(&store, &admission(now, vec![], vec![rate.clone()])).await;
        let refused = store
            .admit(&admission(now, vec![], vec![rate.clone()]))
            .await
            .expect("admit");
        assert_eq!(refused.refused, Some(Refusal::Rate(0)));

        let records = vec![spend_record(now, "r1", 120), spend_record(now + 3, "r2", 7)];
        store.record_spend(&records).await.expect("record spend");
        assert_eq!(
            counters(&store, &["total"]).await,
            vec![state(127, 500)],
            "before the restart"
        );
        drop(store);

        let store = open_in(&dir);
        assert_eq!(
            counters(&store, &["total", "team:research:day", "unknown"]).await,
            vec![
                state(127, 0),
                CounterState {
                    spent_nanos: 250,
                    spent_tokens: 420,
                    ..CounterState::default()
                },
                CounterState::default(),
            ],
            "spent survives, reservations do not"
        );
        assert_eq!(
            store.spend(&SpendQuery::default()).await.expect("spend"),
            records
        );
        // The rate bucket was kept: a minute's allowance is not handed out again.
        let refused = store
            .admit(&admission(now + 5, vec![], vec![rate.clone()]))
            .await
            .expect("admit");
        assert_eq!(
            refused.refused,
            Some(Refusal::Rate(0)),
            "the bucket survived"
        );
        assert_eq!(
            refused.rates,
            vec![RateState {
                backlog_us: 60_000_000 - 5_000
            }]
        );
        // The pending reservation's 500 is gone: 127 + 873 fits the limit of 1000 exactly.
        let outcome = admit_ok(
            &store,
            &admission(now + 5, vec![charge("total", 1_000, 873, None)], vec![]),
        )
        .await;
        assert_eq!(outcome.budgets, vec![state(127, 873)]);
        drop(store);
        // A bucket that has drained by the next start is not kept.
        let store = open_in(&dir);
        let later = admission(now + 61_000, vec![], vec![rate]);
        let outcome = admit_ok(&store, &later).await;
        assert_eq!(
            outcome.rates,
            vec![RateState {
                backlog_us: 60_000_000
            }],
            "the drained bucket starts empty"
        );
    }

    /// Settlements of one counter from many tasks at once: the file ends with their sum, so
    /// the writes reached the disk in the order memory changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_settlements_persist_the_total() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = now_ms();
        let store = Arc::new(open_in(&dir));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 1..=200i64 {
            let store = store.clone();
            tasks.spawn(async move {
                let admission = admission(now, vec![charge("shared", i64::MAX, n, None)], vec![]);
                store.admit(&admission).await.expect("admit");
                store
                    .settle(&settlement(&admission, now, &[(n, 0)]))
                    .await
                    .expect("settle");
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task");
        }
        let total = 200 * 201 / 2;
        assert_eq!(counters(&store, &["shared"]).await, vec![state(total, 0)]);
        drop(store);
        let store = open_in(&dir);
        assert_eq!(counters(&store, &["shared"]).await, vec![state(total, 0)]);
    }

    /// Counters of a window that ended more than the grace period ago are forgotten, in memory
    /// and in the file; total counters and current windows are kept.
    #[tokio::test]
    async fn ended_windows_are_forgotten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = now_ms();
        let store = open_in(&dir);
        let charges = vec![
            charge("ended", 1_000, 10, Some(now + 1_000)),
            charge("current", 1_000, 10, Some(now + 10 * WINDOW_GRACE_MS)),
            charge("total", 1_000, 10, None),
        ];
        let first = admission(now, charges, vec![]);
        admit_ok(&store, &first).await;
        store
            .settle(&settlement(&first, now, &[(10, 0), (10, 0), (10, 0)]))
            .await
            .expect("settle");

        // Within the grace period: kept.
        let soon = now + 1_000 + WINDOW_GRACE_MS;
        admit_ok(&store, &admission(soon, vec![], vec![])).await;
        assert_eq!(
            counters(&store, &["ended", "current", "total"]).await,
            vec![state(10, 0); 3]
        );

        // After it (and a sweep interval later): gone.
        let later = soon + SWEEP_INTERVAL_MS + 1;
        admit_ok(&store, &admission(later, vec![], vec![])).await;
        assert_eq!(
            counters(&store, &["ended", "current", "total"]).await,
            vec![state(0, 0), state(10, 0), state(10, 0)]
        );
        drop(store);
        let store = open_in(&dir);
        assert_eq!(
            counters(&store, &["ended", "current", "total"]).await,
            vec![state(0, 0), state(10, 0), state(10, 0)],
            "deleted from the file too"
        );
    }

    /// Two charges on one counter in one admission add up against its limit.
    #[tokio::test]
    async fn charges_on_one_counter_add_up() {
        let (_dir, store) = fresh();
        let now = now_ms();
        let twice = admission(
            now,
            vec![charge("a", 100, 60, None), charge("a", 100, 60, None)],
            vec![],
        );
        let outcome = store.admit(&twice).await.expect("admit");
        assert_eq!(outcome.refused, Some(Refusal::Budget(1)));
        assert_eq!(counters(&store, &["a"]).await, vec![state(0, 0)]);

        let fits = admission(
            now,
            vec![charge("a", 100, 60, None), charge("a", 100, 40, None)],
            vec![],
        );
        let outcome = admit_ok(&store, &fits).await;
        assert_eq!(outcome.budgets, vec![state(0, 100); 2]);
        store
            .settle(&settlement(&fits, now, &[(30, 0), (20, 0)]))
            .await
            .expect("settle");
        assert_eq!(counters(&store, &["a"]).await, vec![state(50, 0)]);
    }

    // -----------------------------------------------------------------------------------------
    // Reading while another process owns the file

    #[tokio::test]
    async fn read_only_reads_while_the_owner_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = now_ms();
        let owner = open_in(&dir);
        let reader = EmbeddedStore::open_read_only(owner.path()).expect("open read-only");
        assert!(reader.is_read_only());
        assert!(!owner.is_read_only());
        assert_eq!(
            reader.spend(&SpendQuery::default()).await.expect("spend"),
            vec![]
        );

        let first = admission(now, vec![charge("total", 1_000, 100, None)], vec![]);
        admit_ok(&owner, &first).await;
        owner
            .settle(&settlement(&first, now, &[(40, 0)]))
            .await
            .expect("settle");
        let record = spend_record(now, "r1", 40);
        owner
            .record_spend(std::slice::from_ref(&record))
            .await
            .expect("record spend");

        // The reader sees what the owner committed after the reader opened.
        assert_eq!(
            reader.spend(&SpendQuery::default()).await.expect("spend"),
            vec![record.clone()]
        );
        assert_eq!(
            counters(&reader, &["total", "unknown"]).await,
            vec![state(40, 0), state(0, 0)]
        );

        // It refuses to write, naming the file.
        let message = unavailable_message(reader.admit(&first).await);
        assert!(
            message.contains(&owner.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("read-only"), "{message}");
        unavailable_message(reader.settle(&settlement(&first, now, &[(1, 0)])).await);
        unavailable_message(reader.record_spend(std::slice::from_ref(&record)).await);
        unavailable_message(reader.record_spend(&[]).await);

        // The owner keeps writing while the reader is open.
        let second = admission(now, vec![charge("total", 1_000, 10, None)], vec![]);
        admit_ok(&owner, &second).await;
        owner
            .settle(&settlement(&second, now, &[(5, 0)]))
            .await
            .expect("settle while a reader is open");
        assert_eq!(counters(&reader, &["total"]).await, vec![state(45, 0)]);

        // And after the owner has closed the file.
        let path = owner.path().to_path_buf();
        drop(owner);
        drop(reader);
        let reader = EmbeddedStore::open_read_only(&path).expect("open read-only");
        assert_eq!(
            reader.spend(&SpendQuery::default()).await.expect("spend"),
            vec![record]
        );
    }

    #[tokio::test]
    async fn read_only_needs_an_existing_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.db");
        let message = unavailable_message(EmbeddedStore::open_read_only(&missing));
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        assert!(!missing.exists(), "nothing created");
    }

    // -----------------------------------------------------------------------------------------
    // Errors

    #[tokio::test]
    async fn path_under_a_regular_file_is_unavailable_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "not a directory").expect("write");
        let path = file.join("sub").join("gantry.db");
        let message = unavailable_message(EmbeddedStore::open(&path, StoreDurability::Normal));
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("cannot create directory"), "{message}");
    }

    #[tokio::test]
    async fn a_directory_is_unavailable_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a-directory");
        std::fs::create_dir(&path).expect("mkdir");
        let message = unavailable_message(EmbeddedStore::open(&path, StoreDurability::Normal));
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("unable to open database file"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).expect("write");
        let message = corrupt_message(EmbeddedStore::open(&path, StoreDurability::Normal));
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a database"), "{message}");
    }

    #[tokio::test]
    async fn a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("newer.db");
        drop(open_at(&path));
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("set version");
        drop(conn);
        let message = corrupt_message(EmbeddedStore::open(&path, StoreDurability::Normal));
        assert!(message.contains("newer"), "{message}");
        corrupt_message(EmbeddedStore::open_read_only(&path));
    }

    #[tokio::test]
    async fn unreadable_rows_are_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rows.db");
        let store = open_at(&path);
        store
            .record_spend(&[spend_record(1, "good", 1)])
            .await
            .expect("record spend");
        let conn = Connection::open(&path).expect("open");
        conn.execute("UPDATE spend_log SET outcome = 'teleported'", [])
            .expect("update");
        let message = corrupt_message(store.spend(&SpendQuery::default()).await);
        assert!(message.contains("teleported"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        conn.execute("UPDATE spend_log SET outcome = 'ok', input_tokens = -1", [])
            .expect("update");
        corrupt_message(store.spend(&SpendQuery::default()).await);
        drop(store);

        conn.execute(
            "INSERT INTO counters (key, spent_nanos, spent_tokens) VALUES ('k', 'lots', 0)",
            [],
        )
        .expect("insert");
        // The dropped store's lock is released at once, unless a process another test forks
        // at that moment still shares the lock file's descriptor until it execs: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let reopened = loop {
            match EmbeddedStore::open(&path, StoreDurability::Normal) {
                Err(StoreError::Unavailable(message))
                    if message.contains("another Gantry process")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        let message = corrupt_message(reopened);
        assert!(message.contains("cannot load counters"), "{message}");
    }

    /// A write the file refuses fails the settlement with the file's name and SQLite's error;
    /// memory keeps the spend, and the next write stores the full value.
    #[tokio::test]
    async fn a_failed_write_is_unavailable_and_catches_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fail.db");
        let now = now_ms();
        let store = open_at(&path);
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("ALTER TABLE counters RENAME TO counters_away")
            .expect("rename");

        let first = admission(now, vec![charge("total", 1_000, 100, None)], vec![]);
        admit_ok(&store, &first).await;
        let message = unavailable_message(store.settle(&settlement(&first, now, &[(40, 0)])).await);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("no such table"), "{message}");
        assert_eq!(counters(&store, &["total"]).await, vec![state(40, 0)]);
        // The spend log is another work in the same kind of transaction: unaffected.
        store
            .record_spend(&[spend_record(now, "r", 40)])
            .await
            .expect("record spend");

        conn.execute_batch("ALTER TABLE counters_away RENAME TO counters")
            .expect("rename back");
        let second = admission(now, vec![charge("total", 1_000, 10, None)], vec![]);
        admit_ok(&store, &second).await;
        store
            .settle(&settlement(&second, now, &[(2, 0)]))
            .await
            .expect("settle");
        drop(store);
        let store = open_at(&path);
        assert_eq!(counters(&store, &["total"]).await, vec![state(42, 0)]);
    }

    /// A settlement whose write failed, settled again by the caller's retries: memory counts it
    /// once, each retry writes again until one is committed, and the file ends with the spend
    /// counted once. A repeat after that touches no file.
    #[tokio::test]
    async fn a_failed_settlement_retried_is_written_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("retry.db");
        let now = now_ms();
        let store = open_at(&path);
        let conn = Connection::open(&path).expect("open");
        let first = admission(
            now,
            vec![
                charge("total", 1_000, 100, None),
                charge("day", 1_000, 100, Some(now + 86_400_000)),
            ],
            vec![],
        );
        admit_ok(&store, &first).await;
        let settled = settlement(&first, now, &[(40, 0), (30, 0)]);

        conn.execute_batch("ALTER TABLE counters RENAME TO counters_away")
            .expect("rename");
        let message = unavailable_message(store.settle(&settled).await);
        assert!(message.contains("no such table"), "{message}");
        // A retry while the file still refuses: it tries the write again, and fails again.
        let message = unavailable_message(store.settle(&settled).await);
        assert!(message.contains("no such table"), "{message}");
        assert_eq!(
            counters(&store, &["total", "day"]).await,
            vec![state(40, 0), state(30, 0)],
            "memory counts the settlement once"
        );

        conn.execute_batch("ALTER TABLE counters_away RENAME TO counters")
            .expect("rename back");
        store.settle(&settled).await.expect("the retry is written");
        assert_eq!(
            counters(&store, &["total", "day"]).await,
            vec![state(40, 0), state(30, 0)]
        );

        // Written: another repeat returns at once, without writing (it would fail here).
        conn.execute_batch("ALTER TABLE counters RENAME TO counters_away")
            .expect("rename");
        store
            .settle(&settled)
            .await
            .expect("a repeat of a written settlement writes nothing");
        conn.execute_batch("ALTER TABLE counters_away RENAME TO counters")
            .expect("rename back");
        drop(store);

        let store = open_at(&path);
        assert_eq!(
            counters(&store, &["total", "day"]).await,
            vec![state(40, 0), state(30, 0)],
            "the file holds the spend, once"
        );
    }

    /// Settled reservation ids are forgotten by the sweep once [`SETTLED_MEMORY_MS`] has passed
    /// since the settlement (by the policy's clock).
    #[tokio::test]
    async fn settled_ids_are_forgotten_after_a_while() {
        let (_dir, store) = fresh();
        let now = now_ms();
        let first = admission(now, vec![charge("total", 1_000, 10, None)], vec![]);
        admit_ok(&store, &first).await;
        store
            .settle(&settlement(&first, now, &[(5, 0)]))
            .await
            .expect("settle");
        let settled_ids = |store: &EmbeddedStore| match &store.mode {
            Mode::Owner { state, .. } => lock(state).settled.len(),
            Mode::ReadOnly { .. } => unreachable!("an owner"),
        };
        assert_eq!(settled_ids(&store), 1);
        admit_ok(
            &store,
            &admission(now + SETTLED_MEMORY_MS - 1, vec![], vec![]),
        )
        .await;
        assert_eq!(settled_ids(&store), 1, "kept until the time is up");
        admit_ok(
            &store,
            &admission(now + SETTLED_MEMORY_MS + SWEEP_INTERVAL_MS, vec![], vec![]),
        )
        .await;
        assert_eq!(settled_ids(&store), 0, "forgotten by the next sweep");
    }

    #[tokio::test]
    async fn oversized_spend_fields_are_refused() {
        let (_dir, store) = fresh();
        let mut record = spend_record(1, "huge", 1);
        record.output_tokens = u64::MAX;
        let message = unavailable_message(store.record_spend(&[record]).await);
        assert!(message.contains("output_tokens"), "{message}");
        assert_eq!(
            store.spend(&SpendQuery::default()).await.expect("spend"),
            vec![]
        );
    }

    #[tokio::test]
    async fn a_second_owner_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owned.db");
        let first = EmbeddedStore::open(&path, StoreDurability::Normal).unwrap();
        match EmbeddedStore::open(&path, StoreDurability::Normal) {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("another Gantry process owns"), "{message}")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("two owners of one file"),
        }
        assert!(
            EmbeddedStore::open_read_only(&path).is_ok(),
            "readers are welcome"
        );
        drop(first);
        EmbeddedStore::open(&path, StoreDurability::Normal).expect("free again");
    }

    /// A settlement's rate adjustment, not yet written by an admission's periodic flush, is
    /// written when the store is dropped and comes back at the next open.
    #[tokio::test]
    async fn dropping_the_store_writes_the_last_bucket_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir);
        let now = now_ms();
        let full_minute = gantry_policy::governance::ledger::RateCharge {
            key: "drop-flush".to_string(),
            cost_us: 60_000_000,
            period_us: 60_000_000,
        };
        // Written at once: the first flush is due immediately.
        let first = admission(now, vec![], vec![full_minute.clone()]);
        admit_ok(&store, &first).await;
        // Half of it given back; no admission follows to flush it.
        let give_back = Settlement {
            reservation: first.reservation.clone(),
            now_ms: now,
            budgets: vec![],
            rates: vec![gantry_policy::governance::ledger::RateSettle {
                key: "drop-flush".to_string(),
                adjust_us: -30_000_000,
                period_us: 60_000_000,
            }],
        };
        store.settle(&give_back).await.expect("settle");
        drop(store);

        let store = open_in(&dir);
        let half_minute = gantry_policy::governance::ledger::RateCharge {
            cost_us: 30_000_000,
            ..full_minute
        };
        // Fits only if the given-back half reached the disk.
        admit_ok(&store, &admission(now, vec![], vec![half_minute])).await;
    }

    // -----------------------------------------------------------------------------------------
    // Admin records

    fn audit_event(action: &str, target: &str) -> AuditEvent {
        AuditEvent {
            time_ms: now_ms(),
            actor: "root".to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail: "{}".to_string(),
            peer: "127.0.0.1:1".to_string(),
            replica: "r1".to_string(),
        }
    }

    fn admin_put(kind: RecordKind, id: &str, json: &str, expect: Expect) -> AdminWrite {
        AdminWrite {
            kind,
            id: id.to_string(),
            json: Some(json.to_string()),
            expect,
            audit: audit_event("set", id),
        }
    }

    async fn written(store: &EmbeddedStore, write: &AdminWrite) -> u64 {
        match store.admin_write(write).await.expect("admin write") {
            WriteOutcome::Written { version } => version,
            other => panic!("{write:?}: {other:?}"),
        }
    }

    /// Everything a reader of the admin API sees.
    async fn admin_state(store: &EmbeddedStore) -> (u64, AdminRecords, Vec<AuditEvent>) {
        (
            store.admin_version().await.expect("admin version"),
            store.admin_records().await.expect("admin records"),
            store.audit_events(usize::MAX).await.expect("audit events"),
        )
    }

    /// Records, version and audit log are in the file: a restart (and a read-only store) reads
    /// them back as they were, and the next write continues the version.
    #[tokio::test]
    async fn admin_records_and_audit_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_in(&dir);
        written(
            &store,
            &admin_put(RecordKind::Key, "alice", r#"{"a":1}"#, Expect::Absent),
        )
        .await;
        written(
            &store,
            &admin_put(RecordKind::Key, "bob", r#"{"b":1}"#, Expect::Absent),
        )
        .await;
        written(
            &store,
            &admin_put(RecordKind::Budget, "team", r#"{"usd":5}"#, Expect::Absent),
        )
        .await;
        written(
            &store,
            &admin_put(RecordKind::Key, "alice", r#"{"a":2}"#, Expect::Revision(1)),
        )
        .await;
        let removed = AdminWrite {
            json: None,
            ..admin_put(RecordKind::Key, "bob", "", Expect::Revision(2))
        };
        assert_eq!(written(&store, &removed).await, 5);
        store
            .record_audit(&audit_event("config.reload", "config"))
            .await
            .expect("record audit");
        let before = admin_state(&store).await;
        assert_eq!(before.0, 5);
        assert_eq!(before.1.version, 5);
        assert_eq!(
            before
                .1
                .records
                .iter()
                .map(|r| (r.kind, r.id.as_str(), r.revision, r.json.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (RecordKind::Key, "alice", 4, r#"{"a":2}"#),
                (RecordKind::Budget, "team", 3, r#"{"usd":5}"#),
            ]
        );
        assert_eq!(before.2.len(), 6);
        let path = store.path().to_path_buf();
        drop(store);

        let store = open_at(&path);
        assert_eq!(admin_state(&store).await, before, "after reopening");
        let reader = EmbeddedStore::open_read_only(&path).expect("open read-only");
        assert_eq!(admin_state(&reader).await, before, "read-only");
        assert_eq!(
            store
                .admin_write(&admin_put(
                    RecordKind::Key,
                    "alice",
                    "{}",
                    Expect::Revision(1)
                ))
                .await
                .expect("admin write"),
            WriteOutcome::Conflict { current: Some(4) },
            "revisions survive too"
        );
        assert_eq!(
            written(
                &store,
                &admin_put(RecordKind::Key, "alice", "{}", Expect::Revision(4))
            )
            .await,
            6,
            "the version continues"
        );
        assert_eq!(reader.admin_version().await.expect("admin version"), 6);
    }

    /// A file made before the admin tables existed (same layout number, without them): a
    /// read-only store reads version 0 and nothing else; the owner adds the tables and writes.
    #[tokio::test]
    async fn a_file_without_admin_tables_reads_version_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("older.db");
        let store = open_at(&path);
        store
            .record_spend(&[spend_record(1, "kept", 3)])
            .await
            .expect("record spend");
        drop(store);
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "DROP TABLE admin_records; DROP TABLE admin_version; DROP TABLE audit_log;",
        )
        .expect("drop the admin tables");
        drop(conn);

        let reader = EmbeddedStore::open_read_only(&path).expect("open read-only");
        assert_eq!(
            admin_state(&reader).await,
            (0, AdminRecords::default(), vec![])
        );

        let store = open_at(&path);
        assert_eq!(
            admin_state(&store).await,
            (0, AdminRecords::default(), vec![])
        );
        assert_eq!(
            store
                .spend(&SpendQuery::default())
                .await
                .expect("spend")
                .len(),
            1,
            "the rest of the file is as it was"
        );
        assert_eq!(
            written(
                &store,
                &admin_put(RecordKind::Key, "k", "{}", Expect::Absent)
            )
            .await,
            1
        );
        // The reader opened before the tables existed sees them now.
        assert_eq!(reader.admin_version().await.expect("admin version"), 1);
        assert_eq!(
            reader.audit_events(10).await.expect("audit events").len(),
            1
        );
    }

    /// A read-only store reads the owner's admin records as committed and refuses to write them.
    #[tokio::test]
    async fn read_only_reads_admin_records_and_refuses_writes() {
        let (_dir, owner) = fresh();
        written(
            &owner,
            &admin_put(RecordKind::Key, "k", "{}", Expect::Absent),
        )
        .await;
        let reader = EmbeddedStore::open_read_only(owner.path()).expect("open read-only");
        assert_eq!(admin_state(&reader).await, admin_state(&owner).await);

        let path = owner.path().display().to_string();
        let write = admin_put(RecordKind::Key, "k", "{}", Expect::Revision(1));
        let message = unavailable_message(reader.admin_write(&write).await);
        assert!(message.contains("read-only"), "{message}");
        assert!(message.contains(&path), "{message}");
        let message = unavailable_message(
            reader
                .record_audit(&audit_event("config.reload", "c"))
                .await,
        );
        assert!(message.contains("read-only"), "{message}");

        written(&owner, &write).await;
        assert_eq!(admin_state(&reader).await, admin_state(&owner).await);
        assert_eq!(reader.admin_version().await.expect("admin version"), 2);
    }

    /// An admin write the file refuses fails with the file's name and SQLite's error and writes
    /// nothing: no record, no version bump (in memory or on disk), no audit event.
    #[tokio::test]
    async fn a_failed_admin_write_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("admin-fail.db");
        let store = open_at(&path);
        written(
            &store,
            &admin_put(RecordKind::Key, "k", "{}", Expect::Absent),
        )
        .await;
        let before = admin_state(&store).await;

        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("ALTER TABLE audit_log RENAME TO audit_away")
            .expect("rename");
        let update = admin_put(RecordKind::Key, "k", r#"{"new":1}"#, Expect::Revision(1));
        let message = unavailable_message(store.admin_write(&update).await);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("no such table"), "{message}");
        let create = admin_put(RecordKind::Budget, "b", "{}", Expect::Absent);
        unavailable_message(store.admin_write(&create).await);
        unavailable_message(store.record_audit(&audit_event("config.reload", "c")).await);
        conn.execute_batch("ALTER TABLE audit_away RENAME TO audit_log")
            .expect("rename back");
        assert_eq!(admin_state(&store).await, before, "nothing was written");

        assert_eq!(written(&store, &update).await, 2, "the next version is 2");
        drop(store);
        let store = open_at(&path);
        let (version, records, events) = admin_state(&store).await;
        assert_eq!(version, 2);
        assert_eq!(records.records.len(), 1);
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn unreadable_admin_rows_are_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("admin-rows.db");
        let store = open_at(&path);
        written(
            &store,
            &admin_put(RecordKind::Key, "k", "{}", Expect::Absent),
        )
        .await;
        let conn = Connection::open(&path).expect("open");
        conn.execute("UPDATE admin_records SET kind = 'teleported'", [])
            .expect("update");
        let message = corrupt_message(store.admin_records().await);
        assert!(message.contains("teleported"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        conn.execute("UPDATE admin_records SET kind = 'key', revision = -1", [])
            .expect("update");
        corrupt_message(store.admin_records().await);
        conn.execute("UPDATE audit_log SET json = 'not json'", [])
            .expect("update");
        let message = corrupt_message(store.audit_events(10).await);
        assert!(message.contains("not json"), "{message}");
    }
}
