//! Gantry's state: budget counters, rate-limit buckets and the spend log.
//!
//! [`Store`] is the one interface the request path uses; its semantics (all-or-nothing
//! admissions, reservations with leases, settlements, GCRA rate buckets) are specified in
//! [`gantry_policy::governance::ledger`]. Two implementations:
//! - [`EmbeddedStore`]: one process, nothing to install. Counters live in memory and every
//!   change to spent amounts is committed to a SQLite file (WAL) before the settlement returns,
//!   so spend survives a restart; rate buckets are written at most a second late. Reservations
//!   are in memory only: they belong to requests of the running process.
//! - [`RedisStore`]: any number of Gantry replicas share one set of limits; each admission and
//!   settlement is one Lua script, atomic on the Redis server.
//!
//! This crate knows nothing of Envoy or gRPC, and holds no policy: it adds, compares and
//! remembers what the policy computed.

use async_trait::async_trait;
use gantry_policy::admin::stored::{AdminRecords, AdminWrite, AuditEvent, WriteOutcome};
use gantry_policy::governance::ledger::{
    Admission, AdmissionOutcome, Settlement, SpendQuery, SpendRecord,
};

pub mod embedded;
pub mod redis;

#[cfg(test)]
mod conformance;

pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// Why a store operation failed. Every variant is reported to the operator as-is and counted.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the operation (Redis down, disk full).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within the configured time.
    #[error("store did not answer within {0} ms")]
    Timeout(u64),
    /// The store answered with something this version cannot read.
    #[error("store returned unreadable data: {0}")]
    Corrupt(String),
}

/// Budget counters, rate buckets and the spend log.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `redis`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Checks and reserves every charge at once (see the ledger's semantics).
    async fn admit(&self, admission: &Admission) -> Result<AdmissionOutcome, StoreError>;

    /// Ends a reservation: removes it and adds the actual amounts. Returns once the change is
    /// durable (embedded: committed to disk; Redis: acknowledged by the server). Idempotent per
    /// reservation id (for an hour): a caller may retry a settlement that failed or timed out.
    async fn settle(&self, settlement: &Settlement) -> Result<(), StoreError>;

    /// Appends records to the spend log.
    async fn record_spend(&self, records: &[SpendRecord]) -> Result<(), StoreError>;

    /// Deletes spend-log records whose `time_ms` is before `before_ms` (retention). Redis looks
    /// for them near the head of its list (records are appended in about time order): one
    /// written after a thousand newer ones waits for a later prune.
    async fn prune_spend(&self, before_ms: i64) -> Result<(), StoreError>;

    /// Reads the spend log, oldest first.
    async fn spend(&self, query: &SpendQuery) -> Result<Vec<SpendRecord>, StoreError>;

    /// Current state of budget counters (missing keys read as zero), for status queries.
    async fn counters(
        &self,
        keys: &[String],
    ) -> Result<Vec<gantry_policy::governance::ledger::CounterState>, StoreError>;

    /// The admin records' version: 0 before the first write, then one more per write. Cheap:
    /// every replica polls it.
    async fn admin_version(&self) -> Result<u64, StoreError>;

    /// Every admin record, with the version they were read at (one consistent read).
    async fn admin_records(&self) -> Result<AdminRecords, StoreError>;

    /// Writes (or deletes) one admin record if it is as `write.expect` says, bumping the
    /// version and appending the audit event, all in one atomic step; durable when it returns
    /// (as settlements are). A conflict writes nothing.
    async fn admin_write(&self, write: &AdminWrite) -> Result<WriteOutcome, StoreError>;

    /// Appends an audit event that changes no record (a config reload).
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// The newest `limit` audit events, oldest first.
    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;
}
