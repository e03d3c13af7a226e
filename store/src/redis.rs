//! The Redis store: any number of Gantry replicas sharing one Redis enforce one set of limits.
//!
//! Every admission is one Lua script (`redis/admit.lua`) and every settlement another
//! (`redis/settle.lua`), sent as `EVALSHA` (loaded again when Redis answers `NOSCRIPT`, e.g.
//! after a restart). Redis runs a script alone, so the all-or-nothing check-and-reserve of
//! [`gantry_policy::governance::ledger`] holds across replicas.
//!
//! # Key layout
//!
//! All keys start with `<key_prefix>:` (written `P:` below); `K` is a key from the ledger
//! ([`BudgetCharge::key`](gantry_policy::governance::ledger::BudgetCharge::key),
//! [`RateCharge::key`](gantry_policy::governance::ledger::RateCharge::key)). The word after the
//! prefix names the structure, so keys of different kinds never collide whatever `K` holds.
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:budget:K` | hash | `spent_n`, `spent_t`, `reserved_n`, `reserved_t` (nanos, tokens) | 1 day after `window_end_ms` (at least 1 hour from the write); never for `total` windows |
//! | `P:lease:K` | sorted set | reservation ids held on `K`, scored by lease end (ms) | 1 hour after its last lease ends |
//! | `P:held:K` | hash | `n:<id>`, `t:<id>`: the amounts reservation `<id>` holds on `K` | with `P:lease:K` |
//! | `P:rate:K` | string | the GCRA bucket's TAT, µs since the epoch | once idle, after one more period |
//! | `P:settled:R` | string | `1`: reservation `R` ([`Settlement::reservation`]) was settled | 1 hour after its settlement (`SETTLED_TTL_MS`) |
//! | `P:spend` | list | the spend log: one JSON [`SpendRecord`] per element, in write order | never; [`Store::prune_spend`] deletes old records near its head |
//! | `P:admin:version` | string | the admin records' version, a decimal integer (missing: 0) | never |
//! | `P:admin:records` | hash | `<kind>/<id>` ([`RecordKind::as_str`], the record's id) → the record's JSON | never |
//! | `P:admin:revisions` | hash | `<kind>/<id>` → the record's revision (the version that last wrote it) | never |
//! | `P:admin:audit` | list | the audit log: one JSON [`AuditEvent`] per element, in write order | never (not trimmed) |
//!
//! `reserved_*` is always the sum of the amounts in `P:held:K` of the ids in `P:lease:K`. An
//! admission first drops the reservations of its counters whose lease ended (score ≤ now) and
//! subtracts their amounts; when no lease set is left at all (it expired with nothing touching
//! the counter), nothing can be reserved and `reserved_*` reads as zero. TTLs are derived from
//! differences of the policy's clock (`window_end_ms - now_ms`), so a Redis server clock that
//! differs from the replicas' does not shorten them.
//!
//! A settlement first sets `P:settled:R` (`SET NX`, kept for a fixed hour): when that marker
//! was already there, the settlement repeats one already applied (a retry after a reply that
//! timed out) and the script changes nothing, so a settlement counts once per reservation id.
//! Whether the reservation was still held or had expired and been dropped makes no
//! difference: the first settlement of `R` adds its actual amounts, a repeat adds nothing.
//!
//! Amounts are added with `HINCRBY` (exact 64-bit integers on the server) and read back as
//! strings. Comparisons against limits and GCRA arithmetic happen in Lua, whose numbers are
//! doubles: exact below 2^53 (9e15 nano-dollars is 9 million dollars; µs timestamps are near
//! 1.8e15), which the configuration's caps stay well below.
//!
//! All keys of one admission are passed as `KEYS`, but they are not in one hash slot: this store
//! needs a single Redis (or a primary with replicas), not Redis Cluster. Redis must not evict
//! (`maxmemory-policy noeviction`): an evicted counter forgets spend.
//!
//! # Spend log
//!
//! [`Store::record_spend`] appends with one `RPUSH`. [`Store::spend`] reads the whole list in
//! pages of 1,000 and filters and sorts (stably, by `time_ms`) on the client: its cost
//! grows with the log, which only [`Store::prune_spend`] trims (near its head); a log big enough
//! to take longer than the timeout to read cannot be queried.
//!
//! # Admin records
//!
//! The admin records, their version and the audit log live under `P:admin:`: one version per
//! key prefix, so replicas with the same prefix share them. [`Store::admin_write`] is one Lua
//! script (`redis/admin_write.lua`): it compares the record's revision in `P:admin:revisions`
//! with the write's [`Expect`] (as strings, exactly), and only when they match `INCR`s
//! `P:admin:version`, sets (or deletes) the record in both hashes at the new version and
//! appends the audit event to `P:admin:audit`; a conflict changes nothing. A field's kind holds
//! no `/`, so the first `/` of `<kind>/<id>` ends it whatever the id holds.
//! [`Store::admin_version`] is one `GET` (replicas poll it); [`Store::admin_records`] reads the
//! version and both hashes in one `MULTI`/`EXEC`, so it sees the state between two writes.
//! [`Store::record_audit`] is one `RPUSH`; [`Store::audit_events`] one `LRANGE` of the list's
//! tail.
//!
//! An admin write that timed out may have been applied (see below): its retry with the same
//! [`Expect`] then finds the record at the new revision and gets a
//! [`WriteOutcome::Conflict`], and the caller reads the records again.
//!
//! # Connection
//!
//! [`RedisStore::new`] only parses the URL: Gantry starts while Redis is down. The connection
//! (one multiplexed connection shared by all calls) is made by the first call that needs it,
//! under a lock held only for the connect step; a call that waited for another's failed
//! attempt shares its error instead of trying again. A connection that fails with an I/O error
//! or does not answer in time is dropped, so the next call connects afresh: a Redis that went
//! away and came back is used again without restarting Gantry. Every call, connect included,
//! is bounded by the timeout and fails with [`StoreError::Timeout`] or
//! [`StoreError::Unavailable`] (`redis at <host:port>: <error>`); the password from the URL is
//! never part of a message.
//!
//! A call that timed out or lost its connection may still have been applied by Redis: an
//! admission's reservation then holds until its lease ends. A settlement is not retried here,
//! but its caller may retry it: a repeat within `SETTLED_TTL_MS` (an hour) finds the settled
//! marker and changes nothing, so its spend is counted once whether or not the first attempt
//! was applied.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use gantry_policy::admin::stored::{
    AdminRecords, AdminWrite, AuditEvent, Expect, RecordKind, StoredRecord, WriteOutcome,
};
use gantry_policy::governance::ledger::{
    Admission, AdmissionOutcome, CounterState, RateState, Refusal, Settlement, SpendQuery,
    SpendRecord,
};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script, Value};

use crate::{Store, StoreError};

/// How long a counter outlives the end of its window (ms).
const WINDOW_GRACE_MS: i64 = 24 * 3_600_000;

/// The shortest TTL a windowed counter gets from a write (ms): a late settlement of a window
/// that ended long ago does not delete the counter on the spot.
const MIN_COUNTER_TTL_MS: i64 = 3_600_000;

/// How long a counter's lease structures outlive its last lease (ms).
const LEASE_GRACE_MS: i64 = 3_600_000;

/// How long a settled marker (`P:settled:R`) is kept, by the Redis server's clock (ms): a
/// repeat of the settlement within this time changes nothing. Far longer than a caller's
/// retries of a failed settlement take (seconds), and short enough that the markers (about
/// 100 bytes each, one per settled request) stay a small part of Redis's memory.
const SETTLED_TTL_MS: i64 = 3_600_000;

/// Spend log entries read per `LRANGE`.
const SPEND_PAGE: isize = 1_000;

const ADMIT_LUA: &str = include_str!("redis/admit.lua");
const SETTLE_LUA: &str = include_str!("redis/settle.lua");
const COUNTERS_LUA: &str = include_str!("redis/counters.lua");
const PRUNE_LUA: &str = include_str!("redis/prune.lua");
const ADMIN_WRITE_LUA: &str = include_str!("redis/admin_write.lua");
/// Spend records one pruning script looks at (so Redis is never blocked for long): old records
/// are found among the first this many of the list, repeatedly while it finds some.
const PRUNE_BATCH: i64 = 1_000;

/// Budget counters, rate buckets and the spend log in a Redis shared by every replica.
pub struct RedisStore {
    client: Client,
    config: AsyncConnectionConfig,
    /// `host:port` (or the socket path), for error messages.
    address: String,
    /// Passwords from the URL, removed from every error message.
    secrets: Vec<String>,
    /// `<key_prefix>:`, or empty.
    prefix: String,
    timeout: Duration,
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Held only while connecting; remembers the last failed attempt.
    connect: tokio::sync::Mutex<Option<ConnectFailure>>,
    admit_script: Script,
    settle_script: Script,
    counters_script: Script,
    prune_script: Script,
    admin_write_script: Script,
}

/// A failed connection attempt, shared with the calls that waited for it.
struct ConnectFailure {
    at: Instant,
    timed_out: bool,
    message: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[user[:password]@]host[:port][/db]`, `rediss://`
    /// when built with TLS, or `unix:///path`), with every key under `<key_prefix>:` and every
    /// call bounded by `timeout`.
    ///
    /// Only checks the URL: the connection is made by the first call, and again after Redis
    /// goes away, so this succeeds while Redis is down. Needs no async runtime.
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let invalid =
            |reason: String| StoreError::Unavailable(format!("invalid Redis URL: {reason}"));
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let mut secrets = Vec::new();
        if let Some(password) = parsed.password() {
            secrets.push(password.to_string());
        }
        for (name, value) in parsed.query_pairs() {
            if name == "pass" {
                secrets.push(value.into_owned());
            }
        }
        let scheme = parsed.scheme();
        if !matches!(
            scheme,
            "redis" | "rediss" | "valkey" | "valkeys" | "unix" | "redis+unix" | "valkey+unix"
        ) {
            return Err(invalid(format!(
                "the scheme is `{scheme}:`, not `redis:`, `rediss:` or `unix:`"
            )));
        }
        if timeout.is_zero() {
            return Err(StoreError::Unavailable(
                "the Redis timeout must be above zero".to_string(),
            ));
        }
        let client = Client::open(parsed).map_err(|e| invalid(scrub(&secrets, e.to_string())))?;
        let info = client.get_connection_info();
        if let Some(password) = info.redis_settings().password() {
            secrets.push(password.to_string());
        }
        secrets.retain(|s| !s.is_empty());
        let address = info.addr().to_string();
        let prefix = key_prefix.trim_end_matches(':');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Ok(RedisStore {
            client,
            config,
            address,
            secrets,
            prefix,
            timeout,
            connection: ArcSwapOption::empty(),
            connect: tokio::sync::Mutex::new(None),
            admit_script: Script::new(ADMIT_LUA),
            settle_script: Script::new(SETTLE_LUA),
            counters_script: Script::new(COUNTERS_LUA),
            prune_script: Script::new(PRUNE_LUA),
            admin_write_script: Script::new(ADMIN_WRITE_LUA),
        })
    }

    fn counter_key(&self, key: &str) -> String {
        format!("{}budget:{key}", self.prefix)
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}lease:{key}", self.prefix)
    }

    fn held_key(&self, key: &str) -> String {
        format!("{}held:{key}", self.prefix)
    }

    fn rate_key(&self, key: &str) -> String {
        format!("{}rate:{key}", self.prefix)
    }

    fn settled_key(&self, reservation: &str) -> String {
        format!("{}settled:{reservation}", self.prefix)
    }

    fn spend_key(&self) -> String {
        format!("{}spend", self.prefix)
    }

    fn admin_version_key(&self) -> String {
        format!("{}admin:version", self.prefix)
    }

    fn admin_records_key(&self) -> String {
        format!("{}admin:records", self.prefix)
    }

    fn admin_revisions_key(&self) -> String {
        format!("{}admin:revisions", self.prefix)
    }

    fn audit_key(&self) -> String {
        format!("{}admin:audit", self.prefix)
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// The store error for a Redis error, without secrets.
    fn failure(&self, error: &RedisError) -> StoreError {
        if error.is_timeout() {
            return StoreError::Timeout(self.timeout_ms());
        }
        StoreError::Unavailable(scrub(
            &self.secrets,
            format!("redis at {}: {error}", self.address),
        ))
    }

    /// The current connection, or a new one.
    async fn connection(&self) -> Result<Arc<MultiplexedConnection>, StoreError> {
        if let Some(connection) = self.connection.load_full() {
            return Ok(connection);
        }
        let asked = Instant::now();
        let mut last_failure = self.connect.lock().await;
        if let Some(connection) = self.connection.load_full() {
            return Ok(connection);
        }
        if let Some(failure) = last_failure.as_ref().filter(|f| f.at >= asked) {
            return Err(if failure.timed_out {
                StoreError::Timeout(self.timeout_ms())
            } else {
                StoreError::Unavailable(failure.message.clone())
            });
        }
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(connection) => {
                let connection = Arc::new(connection);
                self.connection.store(Some(connection.clone()));
                if last_failure.take().is_some() {
                    tracing::info!(address = %self.address, "connected to redis again");
                }
                Ok(connection)
            }
            Err(e) => {
                let error = self.failure(&e);
                tracing::debug!(%error, "cannot connect to redis");
                *last_failure = Some(ConnectFailure {
                    at: Instant::now(),
                    timed_out: matches!(error, StoreError::Timeout(_)),
                    message: match &error {
                        StoreError::Unavailable(message) => message.clone(),
                        other => other.to_string(),
                    },
                });
                Err(error)
            }
        }
    }

    /// Drops `used` if it is still the current connection, so the next call connects again.
    fn forget(&self, used: &Arc<MultiplexedConnection>) {
        let current = Some(used.clone());
        let previous = self.connection.compare_and_swap(&current, None);
        if previous
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, used))
        {
            tracing::warn!(address = %self.address, "dropped the redis connection");
        }
    }

    /// Runs `op` on a connection, the whole (connect included) bounded by the timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut + Send,
        Fut: Future<Output = redis::RedisResult<T>> + Send,
        T: Send,
    {
        let mut used: Option<Arc<MultiplexedConnection>> = None;
        let attempt = async {
            let connection = self.connection().await?;
            used = Some(connection.clone());
            op((*connection).clone()).await.map_err(|e| {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    self.forget(&connection);
                }
                self.failure(&e)
            })
        };
        let outcome = tokio::time::timeout(self.timeout, attempt).await;
        match outcome {
            Ok(result) => result,
            Err(_elapsed) => {
                // A connection that does not answer in time may be half-open: use a new one.
                if let Some(connection) = &used {
                    self.forget(connection);
                }
                Err(StoreError::Timeout(self.timeout_ms()))
            }
        }
    }
}

/// Removes every secret from `message`.
fn scrub(secrets: &[String], mut message: String) -> String {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        message = message.replace(secret.as_str(), "***");
    }
    message
}

/// A windowed counter's TTL from a write at `now_ms` (ms), or -1 for one that never expires.
fn counter_ttl_ms(window_end_ms: Option<i64>, now_ms: i64) -> i64 {
    match window_end_ms {
        None => -1,
        Some(end) => end
            .saturating_add(WINDOW_GRACE_MS)
            .saturating_sub(now_ms)
            .max(MIN_COUNTER_TTL_MS),
    }
}

/// A limit as a script argument: empty for none.
fn limit_arg(limit: Option<i64>) -> String {
    limit.map(|v| v.to_string()).unwrap_or_default()
}

/// The integers a script returned as strings.
fn integers(reply: Value, what: &str) -> Result<Vec<i64>, StoreError> {
    let strings: Vec<String> =
        redis::from_redis_value(reply).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    strings
        .iter()
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| StoreError::Corrupt(format!("{what}: `{s}` is not an integer")))
        })
        .collect()
}

fn counter_state(values: &[i64]) -> CounterState {
    CounterState {
        spent_nanos: values[0],
        spent_tokens: values[1],
        reserved_nanos: values[2],
        reserved_tokens: values[3],
    }
}

/// A record's field in `P:admin:records` and `P:admin:revisions`: `<kind>/<id>` (a kind has no
/// `/`, so the first one ends it whatever the id holds).
fn record_field(kind: RecordKind, id: &str) -> String {
    format!("{}/{id}", kind.as_str())
}

/// A stored version or revision.
fn version_number(text: &str, what: &str) -> Result<u64, StoreError> {
    text.parse::<u64>()
        .map_err(|_| StoreError::Corrupt(format!("{what}: `{text}` is not a version")))
}

/// The version key's value: 0 when it is missing (no admin write yet).
fn admin_version_value(value: Value) -> Result<u64, StoreError> {
    let text: Option<String> = redis::from_redis_value(value)
        .map_err(|e| StoreError::Corrupt(format!("admin version: {e}")))?;
    text.map_or(Ok(0), |text| version_number(&text, "admin version"))
}

/// Reads the records and revisions hashes into records sorted by kind, then id.
fn stored_records(records: Value, revisions: Value) -> Result<Vec<StoredRecord>, StoreError> {
    let hash = |value: Value, what: &str| {
        redis::from_redis_value::<std::collections::HashMap<String, String>>(value)
            .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    };
    let records = hash(records, "admin records")?;
    let mut revisions = hash(revisions, "admin revisions")?;
    let mut stored = Vec::with_capacity(records.len());
    for (field, json) in records {
        let parsed = field
            .split_once('/')
            .and_then(|(kind, id)| RecordKind::parse(kind).map(|kind| (kind, id.to_string())));
        let Some((kind, id)) = parsed else {
            return Err(StoreError::Corrupt(format!(
                "admin records: field `{field}` is not `<kind>/<id>`"
            )));
        };
        let Some(revision) = revisions.remove(&field) else {
            return Err(StoreError::Corrupt(format!(
                "admin records: `{field}` has no revision"
            )));
        };
        stored.push(StoredRecord {
            kind,
            id,
            revision: version_number(&revision, "admin revisions")?,
            json,
        });
    }
    if let Some(field) = revisions.keys().next() {
        return Err(StoreError::Corrupt(format!(
            "admin revisions: `{field}` has no record"
        )));
    }
    stored.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    Ok(stored)
}

/// Reads the admin write script's reply.
fn write_outcome(reply: Value) -> Result<WriteOutcome, StoreError> {
    let strings: Vec<String> = redis::from_redis_value(reply)
        .map_err(|e| StoreError::Corrupt(format!("admin write reply: {e}")))?;
    match strings.as_slice() {
        [status, version] if status == "written" => Ok(WriteOutcome::Written {
            version: version_number(version, "admin write reply")?,
        }),
        [status, current] if status == "conflict" => Ok(WriteOutcome::Conflict {
            current: match current.as_str() {
                "" => None,
                revision => Some(version_number(revision, "admin write reply")?),
            },
        }),
        [status, why] if status == "corrupt" => Err(StoreError::Corrupt(why.clone())),
        other => Err(StoreError::Corrupt(format!(
            "admin write reply: unexpected {other:?}"
        ))),
    }
}

fn audit_json(event: &AuditEvent) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| StoreError::Corrupt(format!("audit event: {e}")))
}

/// Reads the admission script's reply.
fn admission_outcome(
    reply: Value,
    budgets: usize,
    rates: usize,
) -> Result<AdmissionOutcome, StoreError> {
    let values = integers(reply, "admission reply")?;
    if values.len() != 2 + 4 * budgets + rates {
        return Err(StoreError::Corrupt(format!(
            "admission reply has {} values for {budgets} budgets and {rates} rates",
            values.len()
        )));
    }
    let index = usize::try_from(values[1]).ok();
    let refused = match (values[0], index) {
        (0, _) => None,
        (1, Some(i)) if i < budgets => Some(Refusal::Budget(i)),
        (2, Some(i)) if i < rates => Some(Refusal::Rate(i)),
        (kind, _) => {
            return Err(StoreError::Corrupt(format!(
                "admission reply refuses with kind {kind} at index {}",
                values[1]
            )))
        }
    };
    let (states, backlogs) = values[2..].split_at(4 * budgets);
    Ok(AdmissionOutcome {
        refused,
        budgets: states.chunks_exact(4).map(counter_state).collect(),
        rates: backlogs
            .iter()
            .map(|&backlog_us| RateState {
                backlog_us: backlog_us.max(0),
            })
            .collect(),
    })
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn admit(&self, admission: &Admission) -> Result<AdmissionOutcome, StoreError> {
        let mut invocation = self.admit_script.prepare_invoke();
        for charge in &admission.budgets {
            invocation
                .key(self.counter_key(&charge.key))
                .key(self.lease_key(&charge.key))
                .key(self.held_key(&charge.key));
        }
        for charge in &admission.rates {
            invocation.key(self.rate_key(&charge.key));
        }
        invocation
            .arg(admission.budgets.len())
            .arg(admission.rates.len())
            .arg(admission.now_ms)
            .arg(admission.lease_ms)
            .arg(&admission.reservation.0)
            .arg(LEASE_GRACE_MS);
        for charge in &admission.budgets {
            invocation
                .arg(limit_arg(charge.limit_nanos))
                .arg(limit_arg(charge.limit_tokens))
                .arg(charge.nanos)
                .arg(charge.tokens)
                .arg(u8::from(charge.enforced))
                .arg(counter_ttl_ms(charge.window_end_ms, admission.now_ms));
        }
        for charge in &admission.rates {
            invocation.arg(charge.cost_us).arg(charge.period_us);
        }
        let reply: Value = self
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        admission_outcome(reply, admission.budgets.len(), admission.rates.len())
    }

    async fn settle(&self, settlement: &Settlement) -> Result<(), StoreError> {
        let mut invocation = self.settle_script.prepare_invoke();
        for budget in &settlement.budgets {
            invocation
                .key(self.counter_key(&budget.key))
                .key(self.lease_key(&budget.key))
                .key(self.held_key(&budget.key));
        }
        for rate in &settlement.rates {
            invocation.key(self.rate_key(&rate.key));
        }
        invocation.key(self.settled_key(&settlement.reservation.0));
        invocation
            .arg(settlement.budgets.len())
            .arg(settlement.rates.len())
            .arg(settlement.now_ms)
            .arg(&settlement.reservation.0)
            .arg(SETTLED_TTL_MS);
        for budget in &settlement.budgets {
            invocation
                .arg(budget.actual_nanos)
                .arg(budget.actual_tokens)
                .arg(counter_ttl_ms(budget.window_end_ms, settlement.now_ms));
        }
        for rate in &settlement.rates {
            invocation.arg(rate.adjust_us).arg(rate.period_us);
        }
        let _: Value = self
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        Ok(())
    }

    async fn record_spend(&self, records: &[SpendRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let lines = records
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("spend record: {e}")))?;
        let mut command = redis::cmd("RPUSH");
        command.arg(self.spend_key()).arg(lines);
        self.run(
            |mut connection| async move { command.query_async::<Value>(&mut connection).await },
        )
        .await?;
        Ok(())
    }

    async fn prune_spend(&self, before_ms: i64) -> Result<(), StoreError> {
        loop {
            let mut invocation = self.prune_script.prepare_invoke();
            invocation
                .key(self.spend_key())
                .arg(before_ms)
                .arg(PRUNE_BATCH);
            let (removed, looked_at): (i64, i64) = self
                .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
                .await?;
            // Done when the window held nothing old, or was the whole list.
            if removed == 0 || looked_at < PRUNE_BATCH {
                return Ok(());
            }
        }
    }

    async fn spend(&self, query: &SpendQuery) -> Result<Vec<SpendRecord>, StoreError> {
        let key = self.spend_key();
        let lines: Vec<Vec<u8>> = self
            .run(|mut connection| async move {
                let mut lines = Vec::new();
                let mut start: isize = 0;
                loop {
                    let page: Vec<Vec<u8>> = redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(start)
                        .arg(start + SPEND_PAGE - 1)
                        .query_async(&mut connection)
                        .await?;
                    let full = page.len() == SPEND_PAGE.unsigned_abs();
                    lines.extend(page);
                    if !full {
                        return Ok(lines);
                    }
                    start += SPEND_PAGE;
                }
            })
            .await?;
        let mut records = Vec::new();
        for line in lines {
            let record: SpendRecord = serde_json::from_slice(&line)
                .map_err(|e| StoreError::Corrupt(format!("spend log entry: {e}")))?;
            if query.matches(&record) {
                records.push(record);
            }
        }
        records.sort_by_key(|record| record.time_ms);
        Ok(records)
    }

    async fn counters(&self, keys: &[String]) -> Result<Vec<CounterState>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.counters_script.prepare_invoke();
        for key in keys {
            invocation
                .key(self.counter_key(key))
                .key(self.lease_key(key));
        }
        let reply: Value = self
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let values = integers(reply, "counters reply")?;
        if values.len() != 4 * keys.len() {
            return Err(StoreError::Corrupt(format!(
                "counters reply has {} values for {} keys",
                values.len(),
                keys.len()
            )));
        }
        Ok(values.chunks_exact(4).map(counter_state).collect())
    }

    async fn admin_version(&self) -> Result<u64, StoreError> {
        let mut command = redis::cmd("GET");
        command.arg(self.admin_version_key());
        let value: Value = self
            .run(|mut connection| async move { command.query_async(&mut connection).await })
            .await?;
        admin_version_value(value)
    }

    async fn admin_records(&self) -> Result<AdminRecords, StoreError> {
        // MULTI/EXEC: the three reads see one state, between two admin writes.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(self.admin_version_key())
            .cmd("HGETALL")
            .arg(self.admin_records_key())
            .cmd("HGETALL")
            .arg(self.admin_revisions_key());
        let (version, records, revisions): (Value, Value, Value) = self
            .run(|mut connection| async move { pipe.query_async(&mut connection).await })
            .await?;
        Ok(AdminRecords {
            version: admin_version_value(version)?,
            records: stored_records(records, revisions)?,
        })
    }

    async fn admin_write(&self, write: &AdminWrite) -> Result<WriteOutcome, StoreError> {
        let audit = audit_json(&write.audit)?;
        let mut invocation = self.admin_write_script.prepare_invoke();
        invocation
            .key(self.admin_version_key())
            .key(self.admin_records_key())
            .key(self.admin_revisions_key())
            .key(self.audit_key())
            .arg(record_field(write.kind, &write.id))
            .arg(match write.expect {
                Expect::Absent => "absent".to_string(),
                Expect::Revision(revision) => revision.to_string(),
            })
            .arg(audit);
        if let Some(json) = &write.json {
            invocation.arg(json);
        }
        let reply: Value = self
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        write_outcome(reply)
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut command = redis::cmd("RPUSH");
        command.arg(self.audit_key()).arg(audit_json(event)?);
        self.run(
            |mut connection| async move { command.query_async::<Value>(&mut connection).await },
        )
        .await?;
        Ok(())
    }

    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let newest = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut command = redis::cmd("LRANGE");
        command.arg(self.audit_key()).arg(-newest).arg(-1);
        let lines: Vec<Vec<u8>> = self
            .run(|mut connection| async move { command.query_async(&mut connection).await })
            .await?;
        lines
            .iter()
            .map(|line| {
                serde_json::from_slice(line)
                    .map_err(|e| StoreError::Corrupt(format!("audit log entry: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use gantry_policy::admin::stored::{
        AdminWrite, AuditEvent, Expect, RecordKind, StoredRecord, WriteOutcome,
    };
    use gantry_policy::governance::ledger::{
        Admission, BudgetCharge, BudgetSettle, CounterState, RateCharge, Refusal, ReservationId,
        Settlement, SpendQuery,
    };
    use gantry_testkit::RedisServer;

    use super::RedisStore;
    use crate::{conformance, Store, StoreError};

    /// Each call's bound in the tests of failures (Redis down, silent, paused).
    const TIMEOUT: Duration = Duration::from_millis(500);

    /// Each call's bound where Redis is up: generous, so a loaded machine does not fail them.
    const UP_TIMEOUT: Duration = Duration::from_secs(5);

    /// How long a test waits for a call to return at all (far above [`TIMEOUT`]).
    const RETURNS_WITHIN: Duration = Duration::from_secs(5);

    /// A store on `redis` for tests where Redis stays up.
    fn store(redis: &RedisServer) -> RedisStore {
        store_with(&redis.url(), UP_TIMEOUT)
    }

    /// A store on `url` for tests of failures: calls time out after [`TIMEOUT`].
    fn store_on(url: &str) -> RedisStore {
        store_with(url, TIMEOUT)
    }

    fn store_with(url: &str, timeout: Duration) -> RedisStore {
        prefixed(url, "gantry-test", timeout)
    }

    /// A store on `redis` whose keys are all under `key_prefix:`: admin records and their
    /// version are per key prefix, so each admin check gets a prefix of its own.
    fn store_under(redis: &RedisServer, key_prefix: &str) -> RedisStore {
        prefixed(&redis.url(), key_prefix, UP_TIMEOUT)
    }

    fn prefixed(url: &str, key_prefix: &str, timeout: Duration) -> RedisStore {
        match RedisStore::new(url, key_prefix, timeout) {
            Ok(store) => store,
            Err(e) => panic!("RedisStore::new({url}, {key_prefix}): {e}"),
        }
    }

    fn now_ms() -> i64 {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(1_750_000_000_000);
        ms - ms % 1000
    }

    /// An admission of one enforced charge of `nanos` against `limit_nanos` on `key`.
    fn charge(key: &str, limit_nanos: i64, nanos: i64, window_end_ms: Option<i64>) -> Admission {
        Admission {
            reservation: ReservationId::random(),
            now_ms: now_ms(),
            lease_ms: 3_600_000,
            budgets: vec![BudgetCharge {
                key: key.to_string(),
                limit_nanos: Some(limit_nanos),
                limit_tokens: None,
                nanos,
                tokens: 0,
                enforced: true,
                window_end_ms,
            }],
            rates: vec![],
        }
    }

    /// Settles every budget of `admission` at `actual_nanos` each.
    fn settle_at(admission: &Admission, actual_nanos: i64) -> Settlement {
        Settlement {
            reservation: admission.reservation.clone(),
            now_ms: admission.now_ms,
            budgets: admission
                .budgets
                .iter()
                .map(|b| BudgetSettle {
                    key: b.key.clone(),
                    reserved_nanos: b.nanos,
                    reserved_tokens: b.tokens,
                    actual_nanos,
                    actual_tokens: 0,
                    window_end_ms: b.window_end_ms,
                })
                .collect(),
            rates: vec![],
        }
    }

    /// Runs `call`, failing the test if it does not return within [`RETURNS_WITHIN`].
    async fn returns<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(RETURNS_WITHIN, call).await {
            Ok(result) => result,
            Err(_) => panic!("{what} did not return within {RETURNS_WITHIN:?}"),
        }
    }

    /// Asserts a call to a Redis that is down failed as the store promises.
    fn assert_down<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>, port: u16) {
        match result {
            Err(StoreError::Unavailable(message)) => assert!(
                message.starts_with(&format!("redis at 127.0.0.1:{port}: ")),
                "{what}: {message}"
            ),
            Err(StoreError::Timeout(ms)) => assert_eq!(ms, 500, "{what}"),
            other => panic!("{what} with Redis down: {other:?}"),
        }
    }

    /// Polls `admit` until Redis answers again, within 10 s.
    async fn wait_until_admitted(store: &RedisStore, key: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let result = returns("admit", store.admit(&charge(key, 100, 1, None))).await;
            match result {
                Ok(outcome) => {
                    assert_eq!(outcome.refused, None);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("admit still fails 10 s after Redis came back: {e}"),
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Conformance: one test per check, each on its own Redis.

    #[tokio::test]
    async fn conformance_admit_within_limits_reserves() {
        let redis = RedisServer::start();
        conformance::admit_within_limits_reserves(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_enforced_refusal_is_all_or_nothing() {
        let redis = RedisServer::start();
        conformance::enforced_refusal_is_all_or_nothing(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_audit_charge_over_limit_is_admitted() {
        let redis = RedisServer::start();
        conformance::audit_charge_over_limit_is_admitted(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_settle_moves_reservation_to_spent() {
        let redis = RedisServer::start();
        conformance::settle_moves_reservation_to_spent(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_release_frees_reservation() {
        let redis = RedisServer::start();
        conformance::release_frees_reservation(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_expired_lease_is_dropped() {
        let redis = RedisServer::start();
        conformance::expired_lease_is_dropped(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_concurrent_admissions_respect_limit() {
        let redis = RedisServer::start();
        conformance::concurrent_admissions_respect_limit(&store(&redis), "c:").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_concurrent_admissions_across_tasks() {
        let redis = RedisServer::start();
        conformance::concurrent_admissions_across_tasks(Arc::new(store(&redis)), "c:").await;
    }

    #[tokio::test]
    async fn conformance_rate_buckets_follow_gcra() {
        let redis = RedisServer::start();
        conformance::rate_buckets_follow_gcra(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_spend_log_round_trips() {
        let redis = RedisServer::start();
        conformance::spend_log_round_trips(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_spend_log_prunes_old_records() {
        let redis = RedisServer::start();
        conformance::spend_log_prunes_old_records(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_unknown_counters_read_zero() {
        let redis = RedisServer::start();
        conformance::unknown_counters_read_zero(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_settling_twice_charges_once() {
        let redis = RedisServer::start();
        conformance::settling_twice_charges_once(&store(&redis), "c:").await;
    }

    #[tokio::test]
    async fn conformance_admin_fresh_store_starts_at_zero() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "admin-fresh");
        conformance::admin_fresh_store_starts_at_zero(&store, "c:").await;
    }

    #[tokio::test]
    async fn conformance_admin_write_creates_a_record() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "admin-create");
        conformance::admin_write_creates_a_record(&store, "c:").await;
    }

    #[tokio::test]
    async fn conformance_admin_writes_compare_and_set() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "admin-cas");
        conformance::admin_writes_compare_and_set(&store, "c:").await;
    }

    #[tokio::test]
    async fn conformance_admin_audit_log_keeps_every_event() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "admin-audit");
        conformance::admin_audit_log_keeps_every_event(&store, "c:").await;
    }

    #[tokio::test]
    async fn conformance_admin_concurrent_writes_one_wins() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "admin-race");
        conformance::admin_concurrent_writes_one_wins(&store, "c:").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_admin_concurrent_writes_across_tasks() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "admin-tasks");
        conformance::admin_concurrent_writes_across_tasks(Arc::new(store), "c:").await;
    }

    /// Every admin check on one Redis, each through a store of its own key prefix, all at
    /// once: each prefix has its own version, records and audit log (each starts fresh), and a
    /// prefix nobody wrote still reads version 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_admin_key_prefixes_are_independent() {
        let redis = RedisServer::start();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..3 {
            let store = Arc::new(store_under(&redis, &format!("shared-{n}")));
            tasks.spawn(async move {
                conformance::admin_fresh_store_starts_at_zero(store.as_ref(), "c:").await;
                conformance::admin_write_creates_a_record(store.as_ref(), "c:").await;
                conformance::admin_writes_compare_and_set(store.as_ref(), "c:").await;
                conformance::admin_audit_log_keeps_every_event(store.as_ref(), "c:").await;
                conformance::admin_concurrent_writes_one_wins(store.as_ref(), "c:").await;
                conformance::admin_concurrent_writes_across_tasks(store, "c:").await;
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                panic!("admin checks failed: {e}");
            }
        }
        let untouched = store_under(&redis, "shared-untouched");
        conformance::admin_fresh_store_starts_at_zero(&untouched, "c:").await;
    }

    /// The whole suite in one run on one database, every check under the same prefix: checks
    /// do not disturb each other's keys.
    #[tokio::test]
    async fn conformance_run_all_on_one_database() {
        let redis = RedisServer::start();
        let store = store(&redis);
        assert_eq!(store.kind(), "redis");
        conformance::run_all(&store, "all:").await;
    }

    // -----------------------------------------------------------------------------------------
    // Replicas, failures, configuration

    /// Two replicas on one Redis, 100 concurrent unit admissions against a limit of 37: exactly
    /// 37 are admitted in total, and both replicas see the same counter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_replicas_enforce_one_limit() {
        let redis = RedisServer::start();
        let replicas = [Arc::new(store(&redis)), Arc::new(store(&redis))];
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..100 {
            let replica = replicas[n % 2].clone();
            tasks.spawn(async move {
                let admission = charge("shared", 37, 1, None);
                (n % 2, replica.admit(&admission).await)
            });
        }
        let mut admitted = [0; 2];
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((replica, Ok(outcome))) => match outcome.refused {
                    None => admitted[replica] += 1,
                    Some(refusal) => assert_eq!(refusal, Refusal::Budget(0)),
                },
                Ok((_, Err(e))) => panic!("admit failed: {e}"),
                Err(e) => panic!("admission task failed: {e}"),
            }
        }
        assert_eq!(admitted[0] + admitted[1], 37, "{admitted:?}");
        let expected = vec![CounterState {
            reserved_nanos: 37,
            ..CounterState::default()
        }];
        for replica in &replicas {
            let states = replica.counters(&["shared".to_string()]).await;
            assert_eq!(states.ok(), Some(expected.clone()));
        }
    }

    /// With Redis stopped, every call fails (Unavailable or Timeout) and returns, also many at
    /// once; once Redis is back, the same store works again.
    #[tokio::test]
    async fn redis_down_fails_cleanly_then_recovers() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        let store = store_on(&redis.url());
        let first = charge("down", 100, 10, None);
        let outcome = returns("admit", store.admit(&first)).await;
        assert_eq!(outcome.ok().map(|o| o.refused), Some(None));

        redis.stop();
        for round in 0..3 {
            let result = returns("admit", store.admit(&charge("down", 100, 1, None))).await;
            assert_down(&format!("admit #{round}"), result, port);
            let result = returns("settle", store.settle(&settle_at(&first, 7))).await;
            assert_down(&format!("settle #{round}"), result, port);
        }
        let result = returns("counters", store.counters(&["down".to_string()])).await;
        assert_down("counters", result, port);
        let result = returns("spend", store.spend(&SpendQuery::default())).await;
        assert_down("spend", result, port);
        let result = returns("admin_version", store.admin_version()).await;
        assert_down("admin_version", result, port);
        let result = returns("admin_records", store.admin_records()).await;
        assert_down("admin_records", result, port);
        let result = returns("admin_write", store.admin_write(&admin_create("down"))).await;
        assert_down("admin_write", result, port);
        let result = returns("record_audit", store.record_audit(&audit_event("down"))).await;
        assert_down("record_audit", result, port);
        let result = returns("audit_events", store.audit_events(10)).await;
        assert_down("audit_events", result, port);

        // Many calls at once share failed connection attempts and all return.
        let admissions: Vec<Admission> = (0..50).map(|_| charge("down", 100, 1, None)).collect();
        let calls = admissions.iter().map(|a| store.admit(a));
        let results = returns("50 admits", futures_join(calls)).await;
        for result in results {
            assert_down("concurrent admit", result, port);
        }

        redis.start_again();
        wait_until_admitted(&store, "down").await;
        // Redis restarted empty (no persistence): the scripts were loaded again, and the data
        // is the new server's.
        let result = returns("settle", store.settle(&settle_at(&first, 7))).await;
        assert!(result.is_ok(), "{result:?}");
        let states = returns("counters", store.counters(&["down".to_string()])).await;
        assert_eq!(
            states.ok(),
            Some(vec![CounterState {
                spent_nanos: 7,
                reserved_nanos: 1,
                ..CounterState::default()
            }])
        );
    }

    /// Polls all `calls` concurrently in this task.
    async fn futures_join<F: std::future::Future>(
        calls: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let mut set = Vec::new();
        for call in calls {
            set.push(Box::pin(call));
        }
        let mut results: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (call, result) in set.iter_mut().zip(results.iter_mut()) {
                if result.is_none() {
                    match call.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => *result = Some(value),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        results.into_iter().flatten().collect()
    }

    /// A store made while Redis is down: `new` succeeds, calls fail cleanly, and the first call
    /// after Redis comes up connects.
    #[tokio::test]
    async fn new_while_redis_is_down_connects_later() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        redis.stop();
        let store = store_on(&redis.url());
        let result = returns("admit", store.admit(&charge("later", 100, 1, None))).await;
        match result {
            Err(StoreError::Unavailable(message)) => assert!(
                message.starts_with(&format!("redis at 127.0.0.1:{port}: ")),
                "{message}"
            ),
            other => panic!("admit with Redis down: {other:?}"),
        }
        let result = returns("record_spend", store.record_spend(&[spend_record()])).await;
        assert_down("record_spend", result, port);

        redis.start_again();
        wait_until_admitted(&store, "later").await;
        let result = returns("record_spend", store.record_spend(&[spend_record()])).await;
        assert!(result.is_ok(), "{result:?}");
    }

    /// A "Redis" that accepts connections and never answers: every call ends with Timeout
    /// instead of hanging.
    #[tokio::test]
    async fn unresponsive_redis_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                // Keep every connection open, read nothing, answer nothing.
                held.push(stream);
            }
        });
        let store = match RedisStore::new(&format!("redis://127.0.0.1:{port}/"), "p", TIMEOUT) {
            Ok(store) => store,
            Err(e) => panic!("{e}"),
        };
        for _ in 0..2 {
            let result = returns("admit", store.admit(&charge("silent", 100, 1, None))).await;
            assert!(
                matches!(result, Err(StoreError::Timeout(500))),
                "{result:?}"
            );
            let result = returns("counters", store.counters(&["silent".to_string()])).await;
            assert!(
                matches!(result, Err(StoreError::Timeout(500))),
                "{result:?}"
            );
            let result = returns("admin_version", store.admin_version()).await;
            assert!(
                matches!(result, Err(StoreError::Timeout(500))),
                "{result:?}"
            );
            let result = returns("admin_write", store.admin_write(&admin_create("silent"))).await;
            assert!(
                matches!(result, Err(StoreError::Timeout(500))),
                "{result:?}"
            );
        }
    }

    /// A Redis that stops answering (paused) makes calls end with Timeout; once it answers
    /// again, so does the store.
    #[tokio::test]
    async fn paused_redis_times_out_then_recovers() {
        let redis = RedisServer::start();
        let store = store_on(&redis.url());
        wait_until_admitted(&store, "paused").await;
        let client = redis::Client::open(redis.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1_500)
            .arg("ALL")
            .query_async(&mut raw)
            .await
            .unwrap();
        let result = returns("admit", store.admit(&charge("paused", 100, 1, None))).await;
        assert!(
            matches!(result, Err(StoreError::Timeout(500))),
            "{result:?}"
        );
        wait_until_admitted(&store, "paused").await;
    }

    /// A settlement that Redis applies after the call timed out (the reply is lost), then
    /// retried as the caller does: the spend counts once.
    #[tokio::test]
    async fn a_settlement_applied_after_its_timeout_is_not_counted_twice() {
        let redis = RedisServer::start();
        let store = store_on(&redis.url());
        // Loads the script, so the timed-out call below is one EVALSHA that Redis can run.
        let warm_up = charge("late", 1_000, 1, None);
        assert!(returns("admit", store.admit(&warm_up)).await.is_ok());
        assert!(returns("settle", store.settle(&settle_at(&warm_up, 1)))
            .await
            .is_ok());

        let first = charge("late", 1_000, 100, None);
        assert!(returns("admit", store.admit(&first)).await.is_ok());
        // Another client keeps Redis busy for 2 s (a script that spins, below the 5 s after
        // which Redis answers BUSY): the settlement waits its turn, past the store's timeout.
        let client = redis::Client::open(redis.url()).unwrap();
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        let mut raw = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let mut busy_connection = raw.clone();
        let busy = tokio::spawn(async move {
            redis::cmd("EVAL")
                .arg(
                    "local t0 = redis.call('TIME') \
                     repeat local t = redis.call('TIME') \
                     until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 2000000 \
                     return 1",
                )
                .arg(0)
                .query_async::<i64>(&mut busy_connection)
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let settlement = settle_at(&first, 60);
        let result = returns("settle", store.settle(&settlement)).await;
        assert!(
            matches!(result, Err(StoreError::Timeout(500))),
            "{result:?}"
        );
        assert_eq!(busy.await.unwrap().unwrap(), 1);

        let spent = |raw: &mut redis::aio::MultiplexedConnection| {
            let mut raw = raw.clone();
            async move {
                redis::cmd("HGET")
                    .arg("gantry-test:budget:late")
                    .arg("spent_n")
                    .query_async::<i64>(&mut raw)
                    .await
                    .unwrap()
            }
        };
        // Redis runs the queued settlement once the busy script has ended (perhaps after this
        // connection's next command): it is applied, though its caller saw a timeout.
        let deadline = Instant::now() + RETURNS_WITHIN;
        while spent(&mut raw).await != 61 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            spent(&mut raw).await,
            61,
            "the timed-out settlement was applied"
        );

        // The caller's retry succeeds and changes nothing.
        let result = returns("settle", store.settle(&settlement)).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(spent(&mut raw).await, 61);
        let states = returns("counters", store.counters(&["late".to_string()])).await;
        assert_eq!(
            states.ok(),
            Some(vec![CounterState {
                spent_nanos: 61,
                ..CounterState::default()
            }])
        );
    }

    fn audit_event(target: &str) -> AuditEvent {
        AuditEvent {
            time_ms: now_ms(),
            actor: "root".to_string(),
            action: "key.create".to_string(),
            target: target.to_string(),
            detail: String::new(),
            peer: String::new(),
            replica: String::new(),
        }
    }

    /// Creates the key `id` (`{}`).
    fn admin_create(id: &str) -> AdminWrite {
        AdminWrite {
            kind: RecordKind::Key,
            id: id.to_string(),
            json: Some("{}".to_string()),
            expect: Expect::Absent,
            audit: audit_event(id),
        }
    }

    fn spend_record() -> gantry_policy::governance::ledger::SpendRecord {
        gantry_policy::governance::ledger::SpendRecord {
            time_ms: now_ms(),
            request_id: "r".to_string(),
            subject: String::new(),
            user: String::new(),
            team: String::new(),
            api_key: String::new(),
            model: "m".to_string(),
            upstream_model: String::new(),
            provider: String::new(),
            input_tokens: 1,
            cached_input_tokens: 0,
            output_tokens: 1,
            cost_nanos: 1,
            status: 200,
            outcome: gantry_policy::governance::ledger::SpendOutcome::Ok,
            latency_ms: 1,
            stream: false,
        }
    }

    /// A bad URL is refused by `new`, naming the problem; `new` needs no async runtime.
    #[test]
    fn bad_urls_are_refused_by_name() {
        let refused = |url: &str| match RedisStore::new(url, "p", TIMEOUT) {
            Err(StoreError::Unavailable(message)) => message,
            Err(e) => panic!("{url}: unexpected error {e:?}"),
            Ok(_) => panic!("{url} was accepted"),
        };
        assert_eq!(
            refused("localhost:6379"),
            "invalid Redis URL: the scheme is `localhost:`, not `redis:`, `rediss:` or `unix:`"
        );
        assert_eq!(
            refused("127.0.0.1:6379"),
            "invalid Redis URL: relative URL without a base"
        );
        assert_eq!(
            refused("http://127.0.0.1:6379/"),
            "invalid Redis URL: the scheme is `http:`, not `redis:`, `rediss:` or `unix:`"
        );
        assert_eq!(
            refused("redis://127.0.0.1:99999/"),
            "invalid Redis URL: invalid port number"
        );
        assert!(
            refused("redis://127.0.0.1:6379/not-a-db").contains("Invalid database number"),
            "names the database"
        );
        assert!(refused("redis://0.0.0.0:6379/").contains("wildcard"));
        assert_eq!(
            match RedisStore::new("redis://127.0.0.1:6379/", "p", Duration::ZERO) {
                Err(e) => e.to_string(),
                Ok(_) => "accepted".to_string(),
            },
            "store unavailable: the Redis timeout must be above zero"
        );

        // Valid URLs, no runtime, no server.
        for url in [
            "redis://127.0.0.1:1/",
            "redis://user:password@redis.example:6380/2",
            "redis://:password@[::1]:6379",
            "unix:///run/redis.sock",
        ] {
            assert!(RedisStore::new(url, "p", TIMEOUT).is_ok(), "{url}");
        }
    }

    /// The URL's password appears in no error: not from `new`, not from a refused connection,
    /// not from a server that rejects it.
    #[tokio::test]
    async fn password_is_never_in_an_error() {
        const PASSWORD: &str = "hunter2-Sekr1t";
        let bad = format!("redis://:{PASSWORD}@127.0.0.1:99999/");
        match RedisStore::new(&bad, "p", TIMEOUT) {
            Err(e) => assert!(!format!("{e} {e:?}").contains(PASSWORD), "{e}"),
            Ok(_) => panic!("{bad} was accepted"),
        }
        let bad_db = format!("redis://user:{PASSWORD}@127.0.0.1:6379/{PASSWORD}");
        match RedisStore::new(&bad_db, "p", TIMEOUT) {
            Err(e) => assert!(!format!("{e} {e:?}").contains(PASSWORD), "{e}"),
            Ok(_) => panic!("{bad_db} was accepted"),
        }

        let mut redis = RedisServer::start();
        let port = redis.port();
        // This Redis has no password: it refuses a password for the default user, and knows
        // no user `nobody`.
        for url in [
            format!("redis://:{PASSWORD}@127.0.0.1:{port}/"),
            format!("redis://nobody:{PASSWORD}@127.0.0.1:{port}/"),
        ] {
            let store = store_on(&url);
            assert!(!format!("{store:?}").contains(PASSWORD));
            let result = returns("admit", store.admit(&charge("pw", 100, 1, None))).await;
            match result {
                Err(e) => {
                    let message = e.to_string();
                    assert!(!message.contains(PASSWORD), "{message}");
                    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
                }
                Ok(outcome) => panic!("{url}: admitted with a wrong password: {outcome:?}"),
            }
        }

        let store = store_on(&format!("redis://nobody:{PASSWORD}@127.0.0.1:{port}/"));
        redis.stop();
        let result = returns("admit", store.admit(&charge("pw", 100, 1, None))).await;
        match result {
            Err(e) => assert!(!e.to_string().contains(PASSWORD), "{e}"),
            Ok(outcome) => panic!("admitted with Redis down: {outcome:?}"),
        }
    }

    /// Amounts above what a double prints exactly (`tostring` gives 15 digits) stay exact.
    #[tokio::test]
    async fn large_amounts_stay_exact() {
        let redis = RedisServer::start();
        let store = store(&redis);
        let big = 4_503_599_627_370_497; // 2^52 + 1
        let limit = 9_007_199_254_740_991; // 2^53 - 1
        let first = charge("big", limit, big, None);
        let outcome = store.admit(&first).await.ok();
        assert_eq!(
            outcome.map(|o| o.budgets),
            Some(vec![CounterState {
                reserved_nanos: big,
                ..CounterState::default()
            }])
        );
        // big + (big - 2) = 2^53 > limit: refused by one nano-dollar; big + (big - 3) fits.
        let outcome = store.admit(&charge("big", limit, big - 2, None)).await.ok();
        assert_eq!(outcome.and_then(|o| o.refused), Some(Refusal::Budget(0)));
        let outcome = store.admit(&charge("big", limit, big - 3, None)).await.ok();
        assert_eq!(
            outcome.map(|o| (o.refused, o.budgets)),
            Some((
                None,
                vec![CounterState {
                    reserved_nanos: limit,
                    ..CounterState::default()
                }]
            ))
        );

        assert!(store.settle(&settle_at(&first, big + 2)).await.is_ok());
        let states = store.counters(&["big".to_string()]).await.ok();
        assert_eq!(
            states,
            Some(vec![CounterState {
                spent_nanos: big + 2,
                reserved_nanos: big - 3,
                ..CounterState::default()
            }])
        );
    }

    /// A TAT that is not a round number of seconds (16 significant digits) stays exact.
    #[tokio::test]
    async fn rate_buckets_keep_exact_microseconds() {
        let redis = RedisServer::start();
        let store = store(&redis);
        let mut admission = charge("unused", 1, 0, None);
        admission.budgets.clear();
        admission.now_ms = now_ms() + 345;
        admission.rates.push(RateCharge {
            key: "odd".to_string(),
            cost_us: 1_234_567,
            period_us: 60_000_000,
        });
        for n in 1..=3 {
            let outcome = store.admit(&admission).await.ok();
            assert_eq!(
                outcome.map(|o| o.rates[0].backlog_us),
                Some(n * 1_234_567),
                "admission {n}"
            );
        }
        let settlement = Settlement {
            reservation: admission.reservation.clone(),
            now_ms: admission.now_ms,
            budgets: vec![],
            rates: vec![gantry_policy::governance::ledger::RateSettle {
                key: "odd".to_string(),
                adjust_us: -1_000_001,
                period_us: 60_000_000,
            }],
        };
        assert!(store.settle(&settlement).await.is_ok());
        let outcome = store.admit(&admission).await.ok();
        assert_eq!(
            outcome.map(|o| o.rates[0].backlog_us),
            Some(4 * 1_234_567 - 1_000_001)
        );
    }

    /// The documented key layout, and the TTLs that keep Redis from growing forever.
    #[tokio::test]
    async fn keys_follow_the_layout_and_expire() {
        let redis = RedisServer::start();
        let store = match RedisStore::new(&redis.url(), "layout:", UP_TIMEOUT) {
            Ok(store) => store,
            Err(e) => panic!("{e}"),
        };
        let client = redis::Client::open(redis.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let raw_pttl = raw.clone();
        let pttl = |key: &'static str| {
            let mut raw = raw_pttl.clone();
            async move {
                redis::cmd("PTTL")
                    .arg(key)
                    .query_async::<i64>(&mut raw)
                    .await
                    .unwrap()
            }
        };

        let now = now_ms();
        let day = 86_400_000;
        let mut admission = charge("w", 1_000, 5, Some(now + 2 * day));
        admission.lease_ms = 60_000;
        admission.budgets.push(BudgetCharge {
            key: "total".to_string(),
            limit_nanos: None,
            limit_tokens: Some(1_000),
            nanos: 0,
            tokens: 9,
            enforced: true,
            window_end_ms: None,
        });
        admission.rates.push(RateCharge {
            key: "r".to_string(),
            cost_us: 12_000_000,
            period_us: 60_000_000,
        });
        assert_eq!(
            store.admit(&admission).await.ok().map(|o| o.refused),
            Some(None)
        );

        let counter: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg("layout:budget:w")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(
            counter,
            [("reserved_n", 5), ("reserved_t", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        );
        let id = &admission.reservation.0;
        let held: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg("layout:held:w")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(held.get(&format!("n:{id}")), Some(&5));
        let lease: Option<i64> = redis::cmd("ZSCORE")
            .arg("layout:lease:w")
            .arg(id)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(lease, Some(now + 60_000));
        let tat: i64 = redis::cmd("GET")
            .arg("layout:rate:r")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(tat, now * 1000 + 12_000_000);

        // Window end + 1 day from now: 3 days; the total never expires.
        let ttl = pttl("layout:budget:w").await;
        assert!((3 * day - 10_000..=3 * day).contains(&ttl), "{ttl}");
        assert_eq!(pttl("layout:budget:total").await, -1);
        // Lease (1 min) + 1 hour.
        let ttl = pttl("layout:lease:w").await;
        assert!((3_650_000..=3_660_000).contains(&ttl), "{ttl}");
        let ttl = pttl("layout:held:w").await;
        assert!((3_650_000..=3_660_000).contains(&ttl), "{ttl}");
        // Backlog (12 s) + the period (60 s).
        let ttl = pttl("layout:rate:r").await;
        assert!((62_000..=72_000).contains(&ttl), "{ttl}");

        // Settled: the reservation structures are gone, the counters hold the spend.
        let mut settlement = settle_at(&admission, 4);
        settlement.budgets[1].actual_nanos = 0;
        settlement.budgets[1].actual_tokens = 8;
        assert!(store.settle(&settlement).await.is_ok());
        for key in ["layout:lease:w", "layout:held:w", "layout:lease:total"] {
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap();
            assert!(!exists, "{key} is left after settlement");
        }
        assert_eq!(
            store
                .counters(&["w".to_string(), "total".to_string()])
                .await
                .ok(),
            Some(vec![
                CounterState {
                    spent_nanos: 4,
                    ..CounterState::default()
                },
                CounterState {
                    spent_tokens: 8,
                    ..CounterState::default()
                },
            ])
        );
        assert_eq!(pttl("layout:budget:total").await, -1);
        // The settled marker: `1`, for an hour.
        let marker = format!("layout:settled:{id}");
        let value: Option<String> = redis::cmd("GET")
            .arg(&marker)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some("1"));
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&marker)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            (super::SETTLED_TTL_MS - 10_000..=super::SETTLED_TTL_MS).contains(&ttl),
            "{ttl}"
        );

        // The spend log is a list of JSON records.
        assert!(store.record_spend(&[spend_record()]).await.is_ok());
        let kind: String = redis::cmd("TYPE")
            .arg("layout:spend")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(kind, "list");
    }

    /// A reservation whose lease structures expired (nothing touched the counter for an hour
    /// past its lease) no longer counts as reserved.
    #[tokio::test]
    async fn reserved_amounts_go_with_expired_lease_structures() {
        let redis = RedisServer::start();
        let store = store(&redis);
        let client = redis::Client::open(redis.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();

        assert!(store.admit(&charge("gone", 100, 60, None)).await.is_ok());
        // What the TTLs do an hour later.
        let _: () = redis::cmd("DEL")
            .arg("gantry-test:lease:gone")
            .arg("gantry-test:held:gone")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(
            store.counters(&["gone".to_string()]).await.ok(),
            Some(vec![CounterState::default()])
        );
        let outcome = store.admit(&charge("gone", 100, 100, None)).await.ok();
        assert_eq!(
            outcome.map(|o| (o.refused, o.budgets)),
            Some((
                None,
                vec![CounterState {
                    reserved_nanos: 100,
                    ..CounterState::default()
                }]
            ))
        );
    }

    /// The documented layout of the admin keys: the version a decimal string, both hashes by
    /// `<kind>/<id>` (an id may hold `/`), the audit log a list of JSON events; none expires.
    #[tokio::test]
    async fn admin_keys_follow_the_layout() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "layout");
        let client = redis::Client::open(redis.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let write = AdminWrite {
            kind: RecordKind::Metadata,
            id: "user:a/b".to_string(),
            json: Some(r#"{"team":"x"}"#.to_string()),
            expect: Expect::Absent,
            audit: audit_event("metadata:user:a/b"),
        };
        assert_eq!(
            store.admin_write(&write).await.ok(),
            Some(WriteOutcome::Written { version: 1 })
        );

        let version: String = redis::cmd("GET")
            .arg("layout:admin:version")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(version, "1");
        let raw_hash = raw.clone();
        let hash = |key: &'static str| {
            let mut raw = raw_hash.clone();
            async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<Vec<(String, String)>>(&mut raw)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            hash("layout:admin:records").await,
            vec![(
                "metadata/user:a/b".to_string(),
                r#"{"team":"x"}"#.to_string()
            )]
        );
        assert_eq!(
            hash("layout:admin:revisions").await,
            vec![("metadata/user:a/b".to_string(), "1".to_string())]
        );
        let audit: Vec<String> = redis::cmd("LRANGE")
            .arg("layout:admin:audit")
            .arg(0)
            .arg(-1)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(audit.len(), 1);
        let event: AuditEvent = serde_json::from_str(&audit[0]).unwrap();
        assert_eq!(event, write.audit);
        for (key, kind) in [
            ("layout:admin:version", "string"),
            ("layout:admin:records", "hash"),
            ("layout:admin:revisions", "hash"),
            ("layout:admin:audit", "list"),
        ] {
            let found: String = redis::cmd("TYPE")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(found, kind, "{key}");
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(ttl, -1, "{key} never expires");
        }
        assert_eq!(
            store.admin_records().await.ok().map(|r| r.records),
            Some(vec![StoredRecord {
                kind: RecordKind::Metadata,
                id: "user:a/b".to_string(),
                revision: 1,
                json: r#"{"team":"x"}"#.to_string(),
            }])
        );

        // Deleted: gone from both hashes; the version stays.
        let delete = AdminWrite {
            json: None,
            expect: Expect::Revision(1),
            ..write
        };
        assert_eq!(
            store.admin_write(&delete).await.ok(),
            Some(WriteOutcome::Written { version: 2 })
        );
        assert_eq!(hash("layout:admin:records").await, vec![]);
        assert_eq!(hash("layout:admin:revisions").await, vec![]);
        assert_eq!(store.admin_version().await.ok(), Some(2));
    }

    /// Admin keys holding what this store did not write read as Corrupt, and a write that
    /// finds them changes nothing.
    #[tokio::test]
    async fn unreadable_admin_keys_are_corrupt() {
        let redis = RedisServer::start();
        let store = store_under(&redis, "bad");
        let client = redis::Client::open(redis.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        fn corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
            match result {
                Err(StoreError::Corrupt(message)) => message,
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        let raw_run = raw.clone();
        let run = |args: &'static [&'static str]| {
            let mut raw = raw_run.clone();
            async move {
                let mut command = redis::cmd(args[0]);
                for arg in &args[1..] {
                    command.arg(*arg);
                }
                command.query_async::<redis::Value>(&mut raw).await.unwrap();
            }
        };

        run(&["SET", "bad:admin:version", "many"]).await;
        let message = corrupt(store.admin_version().await);
        assert!(message.contains("many"), "{message}");
        corrupt(store.admin_records().await);
        let message = corrupt(store.admin_write(&admin_create("k")).await);
        assert!(message.contains("bad:admin:version"), "{message}");
        let length: i64 = redis::cmd("LLEN")
            .arg("bad:admin:audit")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(length, 0, "a refused write appends no audit event");

        run(&["DEL", "bad:admin:version"]).await;
        run(&["HSET", "bad:admin:records", "key", "1"]).await;
        run(&["SET", "bad:admin:revisions", "1"]).await;
        let message = corrupt(store.admin_write(&admin_create("k")).await);
        assert!(message.contains("bad:admin:revisions"), "{message}");
        assert_eq!(store.admin_version().await.ok(), Some(0), "nothing changed");

        run(&["DEL", "bad:admin:revisions"]).await;
        let message = corrupt(store.admin_records().await);
        assert!(message.contains("`key`"), "{message}");
        run(&["DEL", "bad:admin:records"]).await;
        run(&["HSET", "bad:admin:records", "key/k", "{}"]).await;
        let message = corrupt(store.admin_records().await);
        assert!(message.contains("no revision"), "{message}");
        run(&[
            "HSET",
            "bad:admin:revisions",
            "key/k",
            "1",
            "key/other",
            "2",
        ])
        .await;
        let message = corrupt(store.admin_records().await);
        assert!(message.contains("no record"), "{message}");

        run(&["RPUSH", "bad:admin:audit", "not json"]).await;
        corrupt(store.audit_events(10).await);
    }
}
