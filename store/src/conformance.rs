//! Conformance tests every store passes: the semantics of
//! [`gantry_policy::governance::ledger`], checked with exact numbers.
//!
//! Each check is an `async fn(store: &dyn Store, prefix: &str)` that panics on a violation. All
//! the keys a check touches start with `prefix` (and a name of its own), so several runs can share
//! one Redis database as long as each run uses a fresh prefix. The spend log is not keyed, so the
//! spend log check tags its records with the prefix (in `request_id`) and only looks at its own.
//!
//! Times are based on the real clock (the policy's clock is a parameter, but a store may derive
//! expiries such as Redis TTLs from `window_end_ms`), then moved by the checks as they need.
//!
//! Beyond the ledger's module doc, these checks pin down:
//! - an [`AdmissionOutcome`] always holds one entry per charge, in the admission's order, whether
//!   admitted or refused; on a refusal the refusing entry is the state found before it;
//! - a settlement whose reservation is no longer held (its lease expired and an admission
//!   dropped it) still adds its actual amounts to `spent`, and subtracts nothing;
//! - settling the same settlement again (a caller's retry) changes nothing, whether or not its
//!   reservation was still held the first time: spend, reservations and rate buckets all count
//!   it once.
//!
//! Admin records and the audit log are not keyed by the prefix: one version counts every admin
//! write of the store (for Redis, of its key prefix). The admin checks therefore name their
//! records with the prefix and reason from the version and the log's length they find when
//! they start, so they hold on a store other checks use too, provided nothing else writes
//! admin records while they run; only [`admin_fresh_store_starts_at_zero`] needs a store that
//! never had an admin write or audit event.
//!
//! Usage from a store's tests: `conformance::run_all(&store, "prefix:").await`, or one
//! `#[tokio::test]` per check.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use gantry_policy::admin::stored::{
    AdminRecords, AdminWrite, AuditEvent, Expect, RecordKind, StoredRecord, WriteOutcome,
};
use gantry_policy::governance::ledger::{
    Admission, AdmissionOutcome, BudgetCharge, BudgetSettle, CounterState, RateCharge, RateSettle,
    RateState, Refusal, ReservationId, Settlement, SpendOutcome, SpendQuery, SpendRecord,
};

use crate::Store;

/// A minute of a one-per-`LIMIT` GCRA bucket, in microseconds.
const PERIOD_US: i64 = 60_000_000;

/// One hour, in ms: the lease of admissions that must not expire during a check.
const LONG_LEASE_MS: i64 = 3_600_000;

/// Runs every check that takes a `&dyn Store`, each under its own keys below `prefix`, except
/// [`admin_fresh_store_starts_at_zero`] (it needs a store that never had an admin write).
pub(crate) async fn run_all(store: &dyn Store, prefix: &str) {
    admit_within_limits_reserves(store, prefix).await;
    enforced_refusal_is_all_or_nothing(store, prefix).await;
    audit_charge_over_limit_is_admitted(store, prefix).await;
    settle_moves_reservation_to_spent(store, prefix).await;
    release_frees_reservation(store, prefix).await;
    expired_lease_is_dropped(store, prefix).await;
    concurrent_admissions_respect_limit(store, prefix).await;
    rate_buckets_follow_gcra(store, prefix).await;
    spend_log_round_trips(store, prefix).await;
    spend_log_prunes_old_records(store, prefix).await;
    unknown_counters_read_zero(store, prefix).await;
    settling_twice_charges_once(store, prefix).await;
    admin_write_creates_a_record(store, prefix).await;
    admin_writes_compare_and_set(store, prefix).await;
    admin_audit_log_keeps_every_event(store, prefix).await;
    admin_concurrent_writes_one_wins(store, prefix).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The current time in ms since the epoch, rounded down to a whole second.
fn now_ms() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(1_750_000_000_000);
    ms - ms % 1000
}

fn key(prefix: &str, check: &str, name: &str) -> String {
    format!("{prefix}{check}:{name}")
}

/// An enforced charge of `nanos` against a dollar limit.
fn dollars(key: &str, limit_nanos: i64, nanos: i64, now: i64) -> BudgetCharge {
    BudgetCharge {
        key: key.to_string(),
        limit_nanos: Some(limit_nanos),
        limit_tokens: None,
        nanos,
        tokens: 0,
        enforced: true,
        window_end_ms: Some(now + LONG_LEASE_MS * 24),
    }
}

/// An enforced charge of `tokens` against a token limit.
fn tokens(key: &str, limit_tokens: i64, tokens: i64) -> BudgetCharge {
    BudgetCharge {
        key: key.to_string(),
        limit_nanos: None,
        limit_tokens: Some(limit_tokens),
        nanos: 0,
        tokens,
        enforced: true,
        window_end_ms: None,
    }
}

fn admission(
    now: i64,
    lease_ms: i64,
    budgets: Vec<BudgetCharge>,
    rates: Vec<RateCharge>,
) -> Admission {
    Admission {
        reservation: ReservationId::random(),
        now_ms: now,
        lease_ms,
        budgets,
        rates,
    }
}

fn rate(key: &str, limit: i64) -> RateCharge {
    RateCharge {
        key: key.to_string(),
        cost_us: PERIOD_US / limit,
        period_us: PERIOD_US,
    }
}

fn state(
    spent_nanos: i64,
    spent_tokens: i64,
    reserved_nanos: i64,
    reserved_tokens: i64,
) -> CounterState {
    CounterState {
        spent_nanos,
        spent_tokens,
        reserved_nanos,
        reserved_tokens,
    }
}

/// Settles `admission` with the given actual amounts for each of its budgets (same order).
fn settlement(admission: &Admission, now: i64, actual: &[(i64, i64)]) -> Settlement {
    assert_eq!(
        admission.budgets.len(),
        actual.len(),
        "test bug: one actual per budget"
    );
    Settlement {
        reservation: admission.reservation.clone(),
        now_ms: now,
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

async fn admit(store: &dyn Store, admission: &Admission) -> AdmissionOutcome {
    let outcome = match store.admit(admission).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("admit failed: {e}"),
    };
    assert_eq!(
        outcome.budgets.len(),
        admission.budgets.len(),
        "one CounterState per budget charge: {outcome:?}"
    );
    assert_eq!(
        outcome.rates.len(),
        admission.rates.len(),
        "one RateState per rate charge: {outcome:?}"
    );
    outcome
}

async fn admit_ok(store: &dyn Store, admission: &Admission) -> AdmissionOutcome {
    let outcome = admit(store, admission).await;
    assert_eq!(
        outcome.refused, None,
        "expected admitted: {admission:?} -> {outcome:?}"
    );
    outcome
}

async fn settle(store: &dyn Store, settlement: &Settlement) {
    if let Err(e) = store.settle(settlement).await {
        panic!("settle failed: {e}");
    }
}

async fn counters(store: &dyn Store, keys: &[&str]) -> Vec<CounterState> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    match store.counters(&keys).await {
        Ok(states) => {
            assert_eq!(states.len(), keys.len(), "one CounterState per key");
            states
        }
        Err(e) => panic!("counters failed: {e}"),
    }
}

/// Polls every future to completion concurrently (within the calling task).
async fn join_all<'a, T>(futures: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>) -> Vec<T> {
    let mut pending: Vec<Option<Pin<Box<dyn Future<Output = T> + Send + 'a>>>> =
        futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *result = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// Checks

/// 1. An admission within limits is admitted; its outcome includes its own reservation, and the
///    counter shows it as reserved, not spent.
pub(crate) async fn admit_within_limits_reserves(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "admit", "a");
    let b = key(prefix, "admit", "b");
    let mut both = dollars(&b, 1_000, 300, now);
    both.limit_tokens = Some(500);
    both.tokens = 40;

    let first = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 1_000, 250, now), both.clone()],
        vec![],
    );
    let outcome = admit_ok(store, &first).await;
    assert_eq!(
        outcome.budgets,
        vec![state(0, 0, 250, 0), state(0, 0, 300, 40)]
    );
    assert_eq!(
        counters(store, &[&a, &b]).await,
        vec![state(0, 0, 250, 0), state(0, 0, 300, 40)]
    );

    // A second admission sees the first one's reservation and adds its own.
    let second = admission(
        now + 1,
        LONG_LEASE_MS,
        vec![dollars(&a, 1_000, 700, now)],
        vec![],
    );
    let outcome = admit_ok(store, &second).await;
    assert_eq!(outcome.budgets, vec![state(0, 0, 950, 0)]);
    assert_eq!(
        counters(store, &[&a, &b]).await,
        vec![state(0, 0, 950, 0), state(0, 0, 300, 40)]
    );

    // An admission with no charges at all is admitted.
    let empty = admission(now, LONG_LEASE_MS, vec![], vec![]);
    let outcome = admit_ok(store, &empty).await;
    assert_eq!(outcome.budgets, vec![]);
    assert_eq!(outcome.rates, vec![]);
}

/// 2. An enforced charge over a dollar or token limit refuses the whole admission, naming its
///    index; nothing is reserved in any counter, no rate bucket moves. `spent + reserved +
///    charge == limit` still fits.
pub(crate) async fn enforced_refusal_is_all_or_nothing(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "refuse", "a");
    let b = key(prefix, "refuse", "b");
    let c = key(prefix, "refuse", "c");
    let r = key(prefix, "refuse", "rate");

    // b already holds 400 of its 500.
    admit_ok(
        store,
        &admission(now, LONG_LEASE_MS, vec![dollars(&b, 500, 400, now)], vec![]),
    )
    .await;

    let mut audit = dollars(&c, 10, 50, now);
    audit.enforced = false;
    let refused = admission(
        now,
        LONG_LEASE_MS,
        vec![
            dollars(&a, 1_000, 100, now),
            dollars(&b, 500, 101, now),
            audit,
        ],
        vec![rate(&r, 5)],
    );
    let outcome = admit(store, &refused).await;
    assert_eq!(outcome.refused, Some(Refusal::Budget(1)), "{outcome:?}");
    assert_eq!(
        outcome.budgets[1],
        state(0, 0, 400, 0),
        "the refusing counter as found"
    );
    assert_eq!(
        counters(store, &[&a, &b, &c]).await,
        vec![state(0, 0, 0, 0), state(0, 0, 400, 0), state(0, 0, 0, 0)],
        "a refused admission reserves nothing"
    );

    // The rate bucket did not move: a first request in it has one cost of backlog.
    let outcome = admit_ok(
        store,
        &admission(now, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
    )
    .await;
    assert_eq!(
        outcome.rates,
        vec![RateState {
            backlog_us: 12_000_000
        }]
    );

    // Exactly at the limit fits; one more nano-dollar does not.
    let outcome = admit_ok(
        store,
        &admission(now, LONG_LEASE_MS, vec![dollars(&b, 500, 100, now)], vec![]),
    )
    .await;
    assert_eq!(outcome.budgets, vec![state(0, 0, 500, 0)]);
    let outcome = admit(
        store,
        &admission(now, LONG_LEASE_MS, vec![dollars(&b, 500, 1, now)], vec![]),
    )
    .await;
    assert_eq!(outcome.refused, Some(Refusal::Budget(0)));
    assert_eq!(outcome.budgets, vec![state(0, 0, 500, 0)]);

    // Token limits refuse the same way.
    let d = key(prefix, "refuse", "d");
    let e = key(prefix, "refuse", "e");
    let over_tokens = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&e, 10, 5, now), tokens(&d, 1_000, 1_001)],
        vec![],
    );
    let outcome = admit(store, &over_tokens).await;
    assert_eq!(outcome.refused, Some(Refusal::Budget(1)));
    assert_eq!(
        counters(store, &[&d, &e]).await,
        vec![state(0, 0, 0, 0), state(0, 0, 0, 0)]
    );
    let outcome = admit_ok(
        store,
        &admission(now, LONG_LEASE_MS, vec![tokens(&d, 1_000, 1_000)], vec![]),
    )
    .await;
    assert_eq!(outcome.budgets, vec![state(0, 0, 0, 1_000)]);

    // A budget with both limits refuses on whichever is exceeded.
    let f = key(prefix, "refuse", "f");
    let mut both = dollars(&f, 1_000, 10, now);
    both.limit_tokens = Some(100);
    both.tokens = 101;
    let outcome = admit(store, &admission(now, LONG_LEASE_MS, vec![both], vec![])).await;
    assert_eq!(outcome.refused, Some(Refusal::Budget(0)));

    // Spent counts too: spent 70 + reserved 30 fills a limit of 100.
    let g = key(prefix, "refuse", "g");
    let first = admission(now, LONG_LEASE_MS, vec![dollars(&g, 100, 60, now)], vec![]);
    admit_ok(store, &first).await;
    settle(store, &settlement(&first, now, &[(70, 0)])).await;
    let outcome = admit_ok(
        store,
        &admission(now, LONG_LEASE_MS, vec![dollars(&g, 100, 30, now)], vec![]),
    )
    .await;
    assert_eq!(outcome.budgets, vec![state(70, 0, 30, 0)]);
    let outcome = admit(
        store,
        &admission(now, LONG_LEASE_MS, vec![dollars(&g, 100, 1, now)], vec![]),
    )
    .await;
    assert_eq!(outcome.refused, Some(Refusal::Budget(0)));
    assert_eq!(outcome.budgets, vec![state(70, 0, 30, 0)]);
    assert_eq!(counters(store, &[&g]).await, vec![state(70, 0, 30, 0)]);
}

/// 3. An audit charge (enforced: false) over its limit is admitted and reserved.
pub(crate) async fn audit_charge_over_limit_is_admitted(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "audit", "a");
    let b = key(prefix, "audit", "b");
    let mut audit = dollars(&a, 100, 150, now);
    audit.enforced = false;
    let mut audit_tokens = tokens(&b, 10, 25);
    audit_tokens.enforced = false;

    let outcome = admit_ok(
        store,
        &admission(
            now,
            LONG_LEASE_MS,
            vec![audit.clone(), audit_tokens],
            vec![],
        ),
    )
    .await;
    assert_eq!(
        outcome.budgets,
        vec![state(0, 0, 150, 0), state(0, 0, 0, 25)]
    );
    let outcome = admit_ok(store, &admission(now, LONG_LEASE_MS, vec![audit], vec![])).await;
    assert_eq!(outcome.budgets, vec![state(0, 0, 300, 0)]);
    assert_eq!(
        counters(store, &[&a, &b]).await,
        vec![state(0, 0, 300, 0), state(0, 0, 0, 25)]
    );

    // An enforced charge on the same (over-full) counter is refused.
    let outcome = admit(
        store,
        &admission(now, LONG_LEASE_MS, vec![dollars(&a, 100, 1, now)], vec![]),
    )
    .await;
    assert_eq!(outcome.refused, Some(Refusal::Budget(0)));
    assert_eq!(counters(store, &[&a]).await, vec![state(0, 0, 300, 0)]);
}

/// 4. A settlement moves its reservation to spent at the actual amounts, above or below what was
///    reserved, and leaves other reservations of the counter alone.
pub(crate) async fn settle_moves_reservation_to_spent(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "settle", "a");
    let b = key(prefix, "settle", "b");
    let mut charge_b = tokens(&b, 10_000, 100);
    charge_b.nanos = 1_000;

    let first = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 10_000, 500, now), charge_b.clone()],
        vec![],
    );
    admit_ok(store, &first).await;
    let second = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 10_000, 200, now)],
        vec![],
    );
    admit_ok(store, &second).await;
    assert_eq!(
        counters(store, &[&a, &b]).await,
        vec![state(0, 0, 700, 0), state(0, 0, 1_000, 100)]
    );

    // Actual above the reservation on a, below it on b.
    settle(store, &settlement(&first, now + 10, &[(650, 0), (300, 40)])).await;
    assert_eq!(
        counters(store, &[&a, &b]).await,
        vec![state(650, 0, 200, 0), state(300, 40, 0, 0)],
        "first's reservation moved to spent; second's still reserved"
    );

    settle(store, &settlement(&second, now + 20, &[(150, 0)])).await;
    assert_eq!(
        counters(store, &[&a, &b]).await,
        vec![state(800, 0, 0, 0), state(300, 40, 0, 0)]
    );

    // The next admission sees the spent amounts.
    let outcome = admit_ok(
        store,
        &admission(
            now + 30,
            LONG_LEASE_MS,
            vec![dollars(&a, 10_000, 5, now)],
            vec![],
        ),
    )
    .await;
    assert_eq!(outcome.budgets, vec![state(800, 0, 5, 0)]);
}

/// 5. A release (actual amounts 0) frees the reservation so a later admission fits.
pub(crate) async fn release_frees_reservation(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "release", "a");
    let t = key(prefix, "release", "t");

    let first = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 100, 80, now), tokens(&t, 50, 50)],
        vec![],
    );
    admit_ok(store, &first).await;
    let blocked = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 100, 80, now), tokens(&t, 50, 1)],
        vec![],
    );
    assert_eq!(
        admit(store, &blocked).await.refused,
        Some(Refusal::Budget(0))
    );

    settle(store, &settlement(&first, now, &[(0, 0), (0, 0)])).await;
    assert_eq!(
        counters(store, &[&a, &t]).await,
        vec![state(0, 0, 0, 0), state(0, 0, 0, 0)]
    );

    let again = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 100, 80, now), tokens(&t, 50, 50)],
        vec![],
    );
    let outcome = admit_ok(store, &again).await;
    assert_eq!(
        outcome.budgets,
        vec![state(0, 0, 80, 0), state(0, 0, 0, 50)]
    );
}

/// 6. A reservation admitted at `T` with lease `L` still holds at `T + L - 1` and is dropped by an
///    admission at `T + L` touching its counter; settling it later adds its actual amounts to
///    spent and subtracts nothing.
pub(crate) async fn expired_lease_is_dropped(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let lease = 30_000;
    let a = key(prefix, "lease", "a");

    let first = admission(now, lease, vec![dollars(&a, 100, 80, now)], vec![]);
    admit_ok(store, &first).await;

    let early = admission(
        now + lease - 1,
        lease,
        vec![dollars(&a, 100, 80, now)],
        vec![],
    );
    let outcome = admit(store, &early).await;
    assert_eq!(
        outcome.refused,
        Some(Refusal::Budget(0)),
        "the lease still holds at T + L - 1"
    );
    assert_eq!(outcome.budgets, vec![state(0, 0, 80, 0)]);

    let second = admission(now + lease, lease, vec![dollars(&a, 100, 80, now)], vec![]);
    let outcome = admit_ok(store, &second).await;
    assert_eq!(
        outcome.budgets,
        vec![state(0, 0, 80, 0)],
        "first's reservation was dropped"
    );
    assert_eq!(counters(store, &[&a]).await, vec![state(0, 0, 80, 0)]);

    // The expired reservation settles late: its actual is spent, second's reservation stays.
    settle(store, &settlement(&first, now + lease + 5, &[(30, 0)])).await;
    assert_eq!(counters(store, &[&a]).await, vec![state(30, 0, 80, 0)]);

    settle(store, &settlement(&second, now + lease + 6, &[(50, 0)])).await;
    assert_eq!(counters(store, &[&a]).await, vec![state(80, 0, 0, 0)]);

    // A short lease does not drop a reservation that has not yet expired, even when it is
    // another admission's lease that is shorter.
    let b = key(prefix, "lease", "b");
    let long = admission(now, LONG_LEASE_MS, vec![dollars(&b, 100, 60, now)], vec![]);
    admit_ok(store, &long).await;
    let short = admission(now + lease, 1, vec![dollars(&b, 100, 41, now)], vec![]);
    assert_eq!(admit(store, &short).await.refused, Some(Refusal::Budget(0)));
    assert_eq!(counters(store, &[&b]).await, vec![state(0, 0, 60, 0)]);
}

/// 7. 100 concurrent admissions of one unit each against a limit of 37 admit exactly 37.
pub(crate) async fn concurrent_admissions_respect_limit(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "concurrent", "a");
    let admissions: Vec<Admission> = (0..100)
        .map(|_| admission(now, LONG_LEASE_MS, vec![dollars(&a, 37, 1, now)], vec![]))
        .collect();
    let futures = admissions
        .iter()
        .map(|admission| {
            Box::pin(store.admit(admission)) as Pin<Box<dyn Future<Output = _> + Send + '_>>
        })
        .collect();
    let outcomes: Vec<Result<AdmissionOutcome, crate::StoreError>> = join_all(futures).await;
    let mut admitted = 0;
    for outcome in outcomes {
        match outcome {
            Ok(outcome) => match outcome.refused {
                None => admitted += 1,
                Some(refusal) => assert_eq!(refusal, Refusal::Budget(0)),
            },
            Err(e) => panic!("admit failed: {e}"),
        }
    }
    assert_eq!(admitted, 37);
    assert_eq!(counters(store, &[&a]).await, vec![state(0, 0, 37, 0)]);
}

/// 7b. The same as 7 from 100 tokio tasks, which a multi-threaded runtime runs in parallel.
pub(crate) async fn concurrent_admissions_across_tasks(store: Arc<dyn Store>, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "tasks", "a");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let store = store.clone();
        let admission = admission(now, LONG_LEASE_MS, vec![dollars(&a, 37, 1, now)], vec![]);
        tasks.spawn(async move { store.admit(&admission).await });
    }
    let mut admitted = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(outcome)) => match outcome.refused {
                None => admitted += 1,
                Some(refusal) => assert_eq!(refusal, Refusal::Budget(0)),
            },
            Ok(Err(e)) => panic!("admit failed: {e}"),
            Err(e) => panic!("admission task failed: {e}"),
        }
    }
    assert_eq!(admitted, 37);
    assert_eq!(
        counters(store.as_ref(), &[&a]).await,
        vec![state(0, 0, 37, 0)]
    );
}

/// 8. Rate buckets are GCRA: with a limit of 5 per minute, five admissions at the same instant
///    fit (backlog 12 s, 24 s, … 60 s), the sixth is refused with the backlog found; 12 s later
///    one more fits; a negative adjustment gives capacity back; a rate refusal reserves no budget.
pub(crate) async fn rate_buckets_follow_gcra(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let r = key(prefix, "rate", "r");
    let other = key(prefix, "rate", "other");
    let budget = key(prefix, "rate", "budget");

    for n in 1..=5 {
        let outcome = admit_ok(
            store,
            &admission(now, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
        )
        .await;
        assert_eq!(
            outcome.rates,
            vec![RateState {
                backlog_us: n * 12_000_000
            }]
        );
    }

    // The sixth is refused by the full bucket (index 1), reserving no budget and leaving the
    // other bucket (index 0) as it was.
    let sixth = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&budget, 1_000, 10, now)],
        vec![rate(&other, 5), rate(&r, 5)],
    );
    let outcome = admit(store, &sixth).await;
    assert_eq!(outcome.refused, Some(Refusal::Rate(1)), "{outcome:?}");
    assert_eq!(
        outcome.rates[1],
        RateState {
            backlog_us: 60_000_000
        },
        "the state before"
    );
    assert_eq!(counters(store, &[&budget]).await, vec![state(0, 0, 0, 0)]);
    let outcome = admit_ok(
        store,
        &admission(now, LONG_LEASE_MS, vec![], vec![rate(&other, 5)]),
    )
    .await;
    assert_eq!(
        outcome.rates,
        vec![RateState {
            backlog_us: 12_000_000
        }],
        "other did not move"
    );

    // 12 s later, exactly one more fits.
    let later = now + 12_000;
    let outcome = admit_ok(
        store,
        &admission(later, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
    )
    .await;
    assert_eq!(
        outcome.rates,
        vec![RateState {
            backlog_us: 60_000_000
        }]
    );
    let outcome = admit(
        store,
        &admission(later, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
    )
    .await;
    assert_eq!(outcome.refused, Some(Refusal::Rate(0)));
    assert_eq!(
        outcome.rates,
        vec![RateState {
            backlog_us: 60_000_000
        }]
    );

    // A settlement gives back two requests' worth: two more fit, the third does not.
    let give_back = Settlement {
        reservation: ReservationId::random(),
        now_ms: later,
        budgets: vec![],
        rates: vec![RateSettle {
            key: r.clone(),
            adjust_us: -24_000_000,
            period_us: PERIOD_US,
        }],
    };
    settle(store, &give_back).await;
    for backlog in [48_000_000, 60_000_000] {
        let outcome = admit_ok(
            store,
            &admission(later, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
        )
        .await;
        assert_eq!(
            outcome.rates,
            vec![RateState {
                backlog_us: backlog
            }]
        );
    }
    let outcome = admit(
        store,
        &admission(later, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
    )
    .await;
    assert_eq!(outcome.refused, Some(Refusal::Rate(0)));

    // A positive adjustment charges more: after a full minute the bucket is empty, a request
    // costs 12 s and a settlement adds 24 s, so the next request finds 36 s of backlog.
    let idle = later + 60_000;
    let outcome = admit_ok(
        store,
        &admission(idle, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
    )
    .await;
    assert_eq!(
        outcome.rates,
        vec![RateState {
            backlog_us: 12_000_000
        }]
    );
    let charge_more = Settlement {
        reservation: ReservationId::random(),
        now_ms: idle,
        budgets: vec![],
        rates: vec![RateSettle {
            key: r.clone(),
            adjust_us: 24_000_000,
            period_us: PERIOD_US,
        }],
    };
    settle(store, &charge_more).await;
    let outcome = admit_ok(
        store,
        &admission(idle, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
    )
    .await;
    assert_eq!(
        outcome.rates,
        vec![RateState {
            backlog_us: 48_000_000
        }]
    );
}

/// 9. The spend log returns records oldest first, filtered by `since` (inclusive) and `until`
///    (exclusive), every field as written.
pub(crate) async fn spend_log_round_trips(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let tag = format!("{prefix}spend:");
    let record = |offset: i64, n: u64, outcome: SpendOutcome| SpendRecord {
        time_ms: now + offset,
        request_id: format!("{tag}{n}"),
        subject: format!("subject-{n}"),
        user: format!("user-{n} \"quoted\" ünïcode"),
        team: format!("team-{n}"),
        api_key: format!("key-{n}"),
        model: "gpt-4o-mini".to_string(),
        upstream_model: "gpt-4o-mini-2024-07-18".to_string(),
        provider: "openai".to_string(),
        input_tokens: 1_000 + n,
        cached_input_tokens: 100 + n,
        output_tokens: 200 + n,
        cost_nanos: 1_234_567 * n as i64,
        status: 200 + n as u16,
        outcome,
        latency_ms: 10 * n,
        stream: n.is_multiple_of(2),
    };
    let r0 = record(0, 0, SpendOutcome::Ok);
    let r1 = record(10, 1, SpendOutcome::UpstreamError);
    let r2 = record(20, 2, SpendOutcome::Aborted);
    let r3 = record(30, 3, SpendOutcome::BudgetExceeded);
    let r4 = record(40, 4, SpendOutcome::RateLimited);

    // Written out of order, over several calls.
    for batch in [
        vec![r2.clone(), r0.clone()],
        vec![],
        vec![r4.clone(), r1.clone()],
        vec![r3.clone()],
    ] {
        if let Err(e) = store.record_spend(&batch).await {
            panic!("record_spend failed: {e}");
        }
    }

    let read = |since_ms: Option<i64>, until_ms: Option<i64>| {
        let tag = tag.clone();
        async move {
            match store.spend(&SpendQuery { since_ms, until_ms }).await {
                Ok(records) => records
                    .into_iter()
                    .filter(|r| r.request_id.starts_with(&tag))
                    .collect::<Vec<_>>(),
                Err(e) => panic!("spend failed: {e}"),
            }
        }
    };
    let all = vec![r0.clone(), r1.clone(), r2.clone(), r3.clone(), r4.clone()];
    assert_eq!(read(None, None).await, all);
    assert_eq!(
        read(Some(now + 10), None).await,
        vec![r1.clone(), r2.clone(), r3.clone(), r4.clone()]
    );
    assert_eq!(read(None, Some(now + 10)).await, vec![r0.clone()]);
    assert_eq!(
        read(Some(now + 10), Some(now + 30)).await,
        vec![r1.clone(), r2.clone()]
    );
    assert_eq!(read(Some(now + 41), None).await, vec![]);
    assert_eq!(read(Some(now + 20), Some(now + 20)).await, vec![]);
}

/// 10. Counters never written read as zeros, one per key, in order.
pub(crate) async fn unknown_counters_read_zero(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "unknown", "a");
    let b = key(prefix, "unknown", "b");
    let known = key(prefix, "unknown", "known");
    assert_eq!(counters(store, &[]).await, vec![]);
    assert_eq!(
        counters(store, &[&a, &b]).await,
        vec![CounterState::default(); 2]
    );

    admit_ok(
        store,
        &admission(
            now,
            LONG_LEASE_MS,
            vec![dollars(&known, 100, 7, now)],
            vec![],
        ),
    )
    .await;
    assert_eq!(
        counters(store, &[&a, &known, &b]).await,
        vec![state(0, 0, 0, 0), state(0, 0, 7, 0), state(0, 0, 0, 0)]
    );
}

/// 11. Settling the same settlement again (the caller retries one that failed, though the store
///     may have applied it) changes nothing: spent counts the actual amounts once, the
///     reservation leaves `reserved` once (other reservations stay), and rate adjustments move
///     the bucket once. The same holds for a settlement whose reservation had expired and was
///     dropped: its actual amounts are added once. Another reservation's settlement on the same
///     counters still counts.
pub(crate) async fn settling_twice_charges_once(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let a = key(prefix, "twice", "a");
    let t = key(prefix, "twice", "t");
    let r = key(prefix, "twice", "rate");

    let first = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 1_000, 100, now), tokens(&t, 1_000, 50)],
        vec![rate(&r, 5)],
    );
    admit_ok(store, &first).await;
    let other = admission(
        now,
        LONG_LEASE_MS,
        vec![dollars(&a, 1_000, 200, now)],
        vec![],
    );
    admit_ok(store, &other).await;
    assert_eq!(
        counters(store, &[&a, &t]).await,
        vec![state(0, 0, 300, 0), state(0, 0, 0, 50)]
    );

    let mut settled = settlement(&first, now, &[(120, 0), (0, 40)]);
    settled.rates.push(RateSettle {
        key: r.clone(),
        adjust_us: 12_000_000,
        period_us: PERIOD_US,
    });
    for attempt in 1..=3 {
        settle(store, &settled).await;
        assert_eq!(
            counters(store, &[&a, &t]).await,
            vec![state(120, 0, 200, 0), state(0, 40, 0, 0)],
            "after settling {attempt} time(s): charged once, other's reservation held"
        );
    }
    // The bucket moved once: 12 s for the admission and 12 s for the adjustment, so the next
    // request finds 36 s of backlog (48 s or more if the adjustment counted again).
    let outcome = admit_ok(
        store,
        &admission(now, LONG_LEASE_MS, vec![], vec![rate(&r, 5)]),
    )
    .await;
    assert_eq!(
        outcome.rates,
        vec![RateState {
            backlog_us: 36_000_000
        }]
    );

    // Another reservation on the same counter is its own settlement, and counts.
    settle(store, &settlement(&other, now, &[(150, 0)])).await;
    settle(store, &settlement(&other, now, &[(150, 0)])).await;
    assert_eq!(
        counters(store, &[&a, &t]).await,
        vec![state(270, 0, 0, 0), state(0, 40, 0, 0)]
    );

    // A reservation whose lease expired and was dropped by an admission, settled twice: its
    // actual amounts are added once, and the newer reservation stays.
    let lease = 30_000;
    let b = key(prefix, "twice", "b");
    let expired = admission(now, lease, vec![dollars(&b, 100, 80, now)], vec![]);
    admit_ok(store, &expired).await;
    let newer = admission(now + lease, lease, vec![dollars(&b, 100, 80, now)], vec![]);
    let outcome = admit_ok(store, &newer).await;
    assert_eq!(
        outcome.budgets,
        vec![state(0, 0, 80, 0)],
        "the expired reservation was dropped"
    );
    let late = settlement(&expired, now + lease + 5, &[(30, 0)]);
    settle(store, &late).await;
    settle(store, &late).await;
    assert_eq!(counters(store, &[&b]).await, vec![state(30, 0, 80, 0)]);

    let last = settlement(&newer, now + lease + 6, &[(50, 0)]);
    settle(store, &last).await;
    settle(store, &last).await;
    assert_eq!(counters(store, &[&b]).await, vec![state(80, 0, 0, 0)]);
}

/// 9b. Pruning deletes the records from before a time and keeps the others, every field intact.
pub(crate) async fn spend_log_prunes_old_records(store: &dyn Store, prefix: &str) {
    let now = now_ms();
    let day = 86_400_000;
    let tag = format!("{prefix}prune:");
    let record = |time_ms: i64, n: u64| SpendRecord {
        time_ms,
        request_id: format!("{tag}{n}"),
        subject: String::new(),
        user: String::new(),
        team: String::new(),
        api_key: String::new(),
        model: "m".to_string(),
        upstream_model: String::new(),
        provider: String::new(),
        input_tokens: n,
        cached_input_tokens: 0,
        output_tokens: n,
        cost_nanos: n as i64,
        status: 200,
        outcome: SpendOutcome::Ok,
        latency_ms: 1,
        stream: false,
    };
    let old = [record(now - 30 * day, 1), record(now - 8 * day, 2)];
    let recent = [record(now - day, 3), record(now, 4)];
    for batch in [&old[..], &recent[..]] {
        if let Err(e) = store.record_spend(batch).await {
            panic!("record_spend failed: {e}");
        }
    }
    if let Err(e) = store.prune_spend(now - 7 * day).await {
        panic!("prune_spend failed: {e}");
    }
    let left: Vec<SpendRecord> = match store.spend(&SpendQuery::default()).await {
        Ok(records) => records
            .into_iter()
            .filter(|r| r.request_id.starts_with(&tag))
            .collect(),
        Err(e) => panic!("spend failed: {e}"),
    };
    assert_eq!(
        left,
        recent.to_vec(),
        "only the records of the last 7 days stay"
    );
}

// ---------------------------------------------------------------------------------------------
// Admin records and the audit log (see `gantry_policy::admin::stored`)

/// An audit event with every field set, tagged with the check's prefix.
fn audit(prefix: &str, action: &str, target: &str, n: i64) -> AuditEvent {
    AuditEvent {
        time_ms: now_ms() + n,
        actor: format!("{prefix}admin \"ops\" ✓"),
        action: action.to_string(),
        target: target.to_string(),
        detail: format!(r#"{{"n":{n},"note":"line\nbreak \\ tab\t"}}"#),
        peer: "192.0.2.7:51234".to_string(),
        replica: format!("{prefix}replica-{n}"),
    }
}

fn put(
    kind: RecordKind,
    id: &str,
    json: &str,
    expect: Expect,
    audit_event: AuditEvent,
) -> AdminWrite {
    AdminWrite {
        kind,
        id: id.to_string(),
        json: Some(json.to_string()),
        expect,
        audit: audit_event,
    }
}

fn delete(kind: RecordKind, id: &str, expect: Expect, audit_event: AuditEvent) -> AdminWrite {
    AdminWrite {
        kind,
        id: id.to_string(),
        json: None,
        expect,
        audit: audit_event,
    }
}

async fn admin_version(store: &dyn Store) -> u64 {
    match store.admin_version().await {
        Ok(version) => version,
        Err(e) => panic!("admin_version failed: {e}"),
    }
}

/// Every record; checks they are sorted by kind then id, once each, and at the version that
/// `admin_version` reads.
async fn admin_records(store: &dyn Store) -> AdminRecords {
    let records = match store.admin_records().await {
        Ok(records) => records,
        Err(e) => panic!("admin_records failed: {e}"),
    };
    for pair in records.records.windows(2) {
        assert!(
            (pair[0].kind, &pair[0].id) < (pair[1].kind, &pair[1].id),
            "records sorted by kind then id, once each: {:?}",
            records.records
        );
    }
    for record in &records.records {
        assert!(
            (1..=records.version).contains(&record.revision),
            "a revision is a version that was written: {record:?} at {}",
            records.version
        );
    }
    if records.version == 0 {
        assert!(records.records.is_empty(), "version 0 has no record");
    }
    assert_eq!(
        admin_version(store).await,
        records.version,
        "admin_version and admin_records agree (nothing writes meanwhile)"
    );
    records
}

async fn admin_write(store: &dyn Store, write: &AdminWrite) -> WriteOutcome {
    match store.admin_write(write).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("admin_write failed: {e}"),
    }
}

/// `write` must be written at `version`.
async fn written_at(store: &dyn Store, write: &AdminWrite, version: u64) {
    assert_eq!(
        admin_write(store, write).await,
        WriteOutcome::Written { version },
        "{write:?}"
    );
}

async fn record_audit(store: &dyn Store, event: &AuditEvent) {
    if let Err(e) = store.record_audit(event).await {
        panic!("record_audit failed: {e}");
    }
}

async fn audit_events(store: &dyn Store, limit: usize) -> Vec<AuditEvent> {
    match store.audit_events(limit).await {
        Ok(events) => {
            assert!(events.len() <= limit, "at most {limit} events");
            events
        }
        Err(e) => panic!("audit_events failed: {e}"),
    }
}

fn find<'a>(records: &'a AdminRecords, kind: RecordKind, id: &str) -> Option<&'a StoredRecord> {
    records
        .records
        .iter()
        .find(|record| record.kind == kind && record.id == id)
}

/// 12. Admin records of a store that never had one (run on a fresh store only: not part of
///     [`run_all`]): version 0, no record, no audit event; the first write is version 1, and its
///     record reads back at revision 1 with its exact JSON.
pub(crate) async fn admin_fresh_store_starts_at_zero(store: &dyn Store, prefix: &str) {
    assert_eq!(admin_version(store).await, 0);
    assert_eq!(admin_records(store).await, AdminRecords::default());
    assert_eq!(audit_events(store, 100).await, vec![]);

    let id = key(prefix, "fresh", "alice");
    let json = r#"{"name":"alice","budget":null}"#;
    let event = audit(prefix, "key.create", &format!("key:{id}"), 1);
    written_at(
        store,
        &put(RecordKind::Key, &id, json, Expect::Absent, event.clone()),
        1,
    )
    .await;
    assert_eq!(admin_version(store).await, 1);
    assert_eq!(
        admin_records(store).await,
        AdminRecords {
            version: 1,
            records: vec![StoredRecord {
                kind: RecordKind::Key,
                id,
                revision: 1,
                json: json.to_string(),
            }],
        }
    );
    assert_eq!(audit_events(store, 100).await, vec![event]);
}

/// 13. Creating records: each write is the next version and its record's revision; the JSON
///     reads back byte for byte; `(kind, id)` is the key (the same id under two kinds is two
///     records), and an id may hold any character. Records already there are untouched.
pub(crate) async fn admin_write_creates_a_record(store: &dyn Store, prefix: &str) {
    let before = admin_records(store).await;
    let v0 = before.version;

    let id = key(prefix, "create", "alice");
    // Not in the form a JSON library would write it back: the store keeps the text as given.
    let json = "{ \"name\": \"alice\",  \"note\": \"caf\\u00e9 ☕ \\\"q\\\"\\n\", \"n\": 1.50 }";
    written_at(
        store,
        &put(
            RecordKind::Key,
            &id,
            json,
            Expect::Absent,
            audit(prefix, "key.create", &id, 1),
        ),
        v0 + 1,
    )
    .await;
    assert_eq!(admin_version(store).await, v0 + 1);
    let after = admin_records(store).await;
    assert_eq!(after.version, v0 + 1);
    assert_eq!(
        find(&after, RecordKind::Key, &id),
        Some(&StoredRecord {
            kind: RecordKind::Key,
            id: id.clone(),
            revision: v0 + 1,
            json: json.to_string(),
        })
    );
    assert_eq!(after.records.len(), before.records.len() + 1);

    // The same id as a budget is another record.
    let budget = r#"{"limit_usd":"12.5"}"#;
    written_at(
        store,
        &put(
            RecordKind::Budget,
            &id,
            budget,
            Expect::Absent,
            audit(prefix, "budget.set", &id, 2),
        ),
        v0 + 2,
    )
    .await;
    // An id with the separators a store might use.
    let subject = format!("user:{prefix}a/b:c d/é");
    let metadata = r#"{"team":"research"}"#;
    written_at(
        store,
        &put(
            RecordKind::Metadata,
            &subject,
            metadata,
            Expect::Absent,
            audit(prefix, "metadata.set", &subject, 3),
        ),
        v0 + 3,
    )
    .await;

    let after = admin_records(store).await;
    assert_eq!(after.version, v0 + 3);
    assert_eq!(after.records.len(), before.records.len() + 3);
    let found = |kind, id: &str| find(&after, kind, id).map(|r| (r.revision, r.json.as_str()));
    assert_eq!(found(RecordKind::Key, &id), Some((v0 + 1, json)));
    assert_eq!(found(RecordKind::Budget, &id), Some((v0 + 2, budget)));
    assert_eq!(
        found(RecordKind::Metadata, &subject),
        Some((v0 + 3, metadata))
    );
    for record in &before.records {
        assert_eq!(
            find(&after, record.kind, &record.id),
            Some(record),
            "untouched"
        );
    }
}

/// 14. A write happens only when the record is as it expects (compare-and-set): `Absent` on a
///     record, or a revision that is not the record's, is a conflict naming the record's
///     revision (`None`: no record) and changes nothing, neither version, records nor audit
///     log. Updating at the right revision and deleting bump the version; a deleted record can
///     be created again.
pub(crate) async fn admin_writes_compare_and_set(store: &dyn Store, prefix: &str) {
    let id = key(prefix, "cas", "budget");
    let bystander = key(prefix, "cas", "bystander");
    let kind = RecordKind::Budget;
    let event = |action: &str, n: i64| audit(prefix, action, &id, n);

    let v0 = admin_version(store).await;
    written_at(
        store,
        &put(
            kind,
            &bystander,
            "{}",
            Expect::Absent,
            event("budget.set", 0),
        ),
        v0 + 1,
    )
    .await;
    let v1 = v0 + 2;
    written_at(
        store,
        &put(
            kind,
            &id,
            r#"{"v":1}"#,
            Expect::Absent,
            event("budget.set", 1),
        ),
        v1,
    )
    .await;

    // Conflicts, each writing nothing.
    let unchanged = || async move {
        (
            admin_records(store).await,
            audit_events(store, usize::MAX).await.len(),
        )
    };
    let snapshot = unchanged().await;
    let conflicts = [
        (Expect::Absent, Some(v1)),
        (Expect::Revision(v1 + 1), Some(v1)),
        (Expect::Revision(v1 - 1), Some(v1)),
        (Expect::Revision(0), Some(v1)),
        (Expect::Revision(u64::MAX), Some(v1)),
    ];
    for (expect, current) in conflicts {
        let write = put(kind, &id, r#"{"v":"lost"}"#, expect, event("budget.set", 9));
        assert_eq!(
            admin_write(store, &write).await,
            WriteOutcome::Conflict { current },
            "{expect:?}"
        );
        let write = delete(kind, &id, expect, event("budget.delete", 9));
        assert_eq!(
            admin_write(store, &write).await,
            WriteOutcome::Conflict { current },
            "delete {expect:?}"
        );
    }
    assert_eq!(unchanged().await, snapshot, "conflicts change nothing");

    // At the right revision: written at the next version.
    let v2 = v1 + 1;
    written_at(
        store,
        &put(
            kind,
            &id,
            r#"{"v":2}"#,
            Expect::Revision(v1),
            event("budget.set", 2),
        ),
        v2,
    )
    .await;
    let records = admin_records(store).await;
    assert_eq!(records.version, v2);
    assert_eq!(
        find(&records, kind, &id).map(|r| (r.revision, r.json.as_str())),
        Some((v2, r#"{"v":2}"#))
    );
    // The revision that was read before is stale now.
    let stale = put(
        kind,
        &id,
        r#"{"v":"stale"}"#,
        Expect::Revision(v1),
        event("budget.set", 9),
    );
    assert_eq!(
        admin_write(store, &stale).await,
        WriteOutcome::Conflict { current: Some(v2) }
    );

    // Deleted: gone, and the version moved on.
    let v3 = v2 + 1;
    written_at(
        store,
        &delete(kind, &id, Expect::Revision(v2), event("budget.delete", 3)),
        v3,
    )
    .await;
    let records = admin_records(store).await;
    assert_eq!(records.version, v3);
    assert_eq!(find(&records, kind, &id), None, "deleted");

    // A missing record: any revision conflicts, naming no revision.
    let snapshot = unchanged().await;
    for expect in [
        Expect::Revision(v3),
        Expect::Revision(v2),
        Expect::Revision(1),
    ] {
        let write = put(kind, &id, r#"{"v":"lost"}"#, expect, event("budget.set", 9));
        assert_eq!(
            admin_write(store, &write).await,
            WriteOutcome::Conflict { current: None },
            "{expect:?}"
        );
        let write = delete(kind, &id, expect, event("budget.delete", 9));
        assert_eq!(
            admin_write(store, &write).await,
            WriteOutcome::Conflict { current: None },
            "delete {expect:?}"
        );
    }
    assert_eq!(unchanged().await, snapshot, "conflicts change nothing");

    // Created again, at a new revision.
    let v4 = v3 + 1;
    written_at(
        store,
        &put(
            kind,
            &id,
            r#"{"v":4}"#,
            Expect::Absent,
            event("budget.set", 4),
        ),
        v4,
    )
    .await;
    let records = admin_records(store).await;
    assert_eq!(
        find(&records, kind, &id).map(|r| (r.revision, r.json.as_str())),
        Some((v4, r#"{"v":4}"#))
    );
    assert_eq!(
        find(&records, kind, &bystander).map(|r| r.revision),
        Some(v0 + 1),
        "a record nobody wrote keeps its revision"
    );
}

/// 15. The audit log holds one event per successful admin write and one per `record_audit`, in
///     order, every field exact; a conflict logs nothing, and `record_audit` changes neither
///     version nor records. `audit_events(limit)` is the newest `limit` events, oldest first.
pub(crate) async fn admin_audit_log_keeps_every_event(store: &dyn Store, prefix: &str) {
    let before = audit_events(store, usize::MAX).await.len();
    let id = key(prefix, "audit", "bob");
    let target = format!("key:{id}");
    let kind = RecordKind::Key;

    let created = audit(prefix, "key.create", &target, 1);
    let v1 = match admin_write(
        store,
        &put(kind, &id, r#"{"n":1}"#, Expect::Absent, created.clone()),
    )
    .await
    {
        WriteOutcome::Written { version } => version,
        other => panic!("create: {other:?}"),
    };
    // An event with only the required fields: the others read back empty.
    let reload = AuditEvent {
        time_ms: now_ms(),
        actor: format!("{prefix}config"),
        action: "config.reload".to_string(),
        target: "config".to_string(),
        detail: String::new(),
        peer: String::new(),
        replica: String::new(),
    };
    let records_before = admin_records(store).await;
    record_audit(store, &reload).await;
    assert_eq!(
        admin_records(store).await,
        records_before,
        "record_audit changes no record and no version"
    );
    let conflict = audit(prefix, "key.create", &target, 9);
    assert_eq!(
        admin_write(
            store,
            &put(kind, &id, r#"{"n":9}"#, Expect::Absent, conflict)
        )
        .await,
        WriteOutcome::Conflict { current: Some(v1) }
    );
    let revoked = audit(prefix, "key.revoke", &target, 2);
    written_at(
        store,
        &put(
            kind,
            &id,
            r#"{"n":2}"#,
            Expect::Revision(v1),
            revoked.clone(),
        ),
        v1 + 1,
    )
    .await;
    let second_reload = AuditEvent {
        time_ms: reload.time_ms + 1,
        ..reload.clone()
    };
    record_audit(store, &second_reload).await;
    let deleted = audit(prefix, "key.delete", &target, 3);
    written_at(
        store,
        &delete(kind, &id, Expect::Revision(v1 + 1), deleted.clone()),
        v1 + 2,
    )
    .await;

    let ours = vec![created, reload, revoked, second_reload, deleted];
    let all = audit_events(store, usize::MAX).await;
    assert_eq!(
        all.len(),
        before + ours.len(),
        "one event per change, no more"
    );
    assert_eq!(all[before..], ours[..], "in order, every field exact");
    assert_eq!(audit_events(store, ours.len()).await, ours);
    assert_eq!(audit_events(store, 2).await, ours[3..]);
    assert_eq!(audit_events(store, 1).await, ours[4..]);
    assert_eq!(audit_events(store, 0).await, vec![]);
    assert_eq!(
        audit_events(store, all.len() + 10).await,
        all,
        "a limit above the log's length reads all of it"
    );
}

/// 16. Concurrent admin writes (futures polled together, so the store sees them at once): 20
///     creations of one record write exactly one, the others conflict on its revision; 20
///     updates at that revision write exactly one; 20 creations of different records are all
///     written, each at a version of its own, one after the other.
pub(crate) async fn admin_concurrent_writes_one_wins(store: &dyn Store, prefix: &str) {
    let id = key(prefix, "race", "key");
    let kind = RecordKind::Key;
    let v0 = admin_version(store).await;
    let audit_before = audit_events(store, usize::MAX).await.len();

    let race = |writes: Vec<AdminWrite>| async move {
        let futures = writes
            .iter()
            .map(|write| {
                Box::pin(store.admin_write(write)) as Pin<Box<dyn Future<Output = _> + Send + '_>>
            })
            .collect();
        let outcomes: Vec<Result<WriteOutcome, crate::StoreError>> = join_all(futures).await;
        let outcomes: Vec<WriteOutcome> = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(outcome) => outcome,
                Err(e) => panic!("admin_write failed: {e}"),
            })
            .collect();
        (writes, outcomes)
    };
    // The one written, and its index; every other one must conflict on its revision.
    let winner = |outcomes: &[WriteOutcome]| {
        let written: Vec<(usize, u64)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, outcome)| match outcome {
                WriteOutcome::Written { version } => Some((i, *version)),
                WriteOutcome::Conflict { .. } => None,
            })
            .collect();
        assert_eq!(written.len(), 1, "exactly one written: {outcomes:?}");
        let (index, version) = written[0];
        for outcome in outcomes {
            if let WriteOutcome::Conflict { current } = outcome {
                assert_eq!(*current, Some(version), "{outcomes:?}");
            }
        }
        (index, version)
    };

    let creations = (0..20)
        .map(|n| {
            put(
                kind,
                &id,
                &format!(r#"{{"writer":{n}}}"#),
                Expect::Absent,
                audit(prefix, "key.create", &id, n),
            )
        })
        .collect();
    let (writes, outcomes) = race(creations).await;
    let (index, v1) = winner(&outcomes);
    assert_eq!(v1, v0 + 1);
    let records = admin_records(store).await;
    assert_eq!(
        find(&records, kind, &id).map(|r| (r.revision, r.json.as_str())),
        Some((v1, writes[index].json.as_deref().unwrap_or_default()))
    );
    let events = audit_events(store, usize::MAX).await;
    assert_eq!(
        events.len(),
        audit_before + 1,
        "only the written one is logged"
    );
    assert_eq!(events.last(), Some(&writes[index].audit));

    let updates = (0..20)
        .map(|n| {
            put(
                kind,
                &id,
                &format!(r#"{{"updater":{n}}}"#),
                Expect::Revision(v1),
                audit(prefix, "key.update", &id, n),
            )
        })
        .collect();
    let (writes, outcomes) = race(updates).await;
    let (index, v2) = winner(&outcomes);
    assert_eq!(v2, v1 + 1);
    let records = admin_records(store).await;
    assert_eq!(
        find(&records, kind, &id).map(|r| (r.revision, r.json.as_str())),
        Some((v2, writes[index].json.as_deref().unwrap_or_default()))
    );

    let many = (0..20)
        .map(|n| {
            let id = key(prefix, "race", &format!("many-{n}"));
            put(
                kind,
                &id,
                "{}",
                Expect::Absent,
                audit(prefix, "key.create", &id, n),
            )
        })
        .collect();
    let (writes, outcomes) = race(many).await;
    let mut versions: Vec<u64> = outcomes
        .iter()
        .map(|outcome| match outcome {
            WriteOutcome::Written { version } => *version,
            other => panic!("different records do not conflict: {other:?}"),
        })
        .collect();
    let records = admin_records(store).await;
    for (write, version) in writes.iter().zip(&versions) {
        assert_eq!(
            find(&records, kind, &write.id).map(|r| r.revision),
            Some(*version)
        );
    }
    versions.sort_unstable();
    assert_eq!(versions, (v2 + 1..=v2 + 20).collect::<Vec<_>>());
    assert_eq!(records.version, v2 + 20);
    assert_eq!(
        audit_events(store, usize::MAX).await.len(),
        audit_before + 22
    );
}

/// 16b. 20 tokio tasks (a multi-threaded runtime runs them in parallel) create the same record:
///      exactly one is written.
pub(crate) async fn admin_concurrent_writes_across_tasks(store: Arc<dyn Store>, prefix: &str) {
    let id = key(prefix, "tasks", "key");
    let v0 = admin_version(store.as_ref()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..20 {
        let store = store.clone();
        let write = put(
            RecordKind::Key,
            &id,
            &format!(r#"{{"task":{n}}}"#),
            Expect::Absent,
            audit(prefix, "key.create", &id, n),
        );
        tasks.spawn(async move { (store.admin_write(&write).await, write) });
    }
    let mut written = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((Ok(WriteOutcome::Written { version }), write)) => written.push((version, write)),
            Ok((Ok(WriteOutcome::Conflict { current }), _)) => {
                assert_eq!(current, Some(v0 + 1))
            }
            Ok((Err(e), _)) => panic!("admin_write failed: {e}"),
            Err(e) => panic!("admin write task failed: {e}"),
        }
    }
    assert_eq!(written.len(), 1, "exactly one written");
    let (version, write) = &written[0];
    assert_eq!(*version, v0 + 1);
    let records = admin_records(store.as_ref()).await;
    assert_eq!(
        find(&records, RecordKind::Key, &id).map(|r| r.json.as_str()),
        write.json.as_deref()
    );
}
