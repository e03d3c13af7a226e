//! The `gantry.admin.v1.AdminService` implementation.
//!
//! Every call first checks the admin credential (`authorization: Bearer <token>`, a token of
//! `admin_api.tokens` in the config snapshot serving now). A change is computed by the
//! policy's rules from the record this replica last read, written with a compare-and-set on
//! that record's revision (a conflict rereads and tries again), audited in the same store
//! step, logged under the `gantry::audit` target, and followed by a refresh of this replica's
//! directory before the answer goes out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gantry_policy::admin::changes::{self, BudgetDraft};
use gantry_policy::admin::stored::{AdminWrite, AuditEvent, Expect, RecordKind, WriteOutcome};
use gantry_policy::admin::{
    AdminError, KeyDraft, KeyRecord, KeyUpdate, RuntimeDirectory, Subject, SubjectKind,
};
use gantry_policy::auth::api_keys::{generate_key, KeyHash};
use gantry_policy::governance::ledger::SpendQuery;
use gantry_policy::governance::scope::{Caller, ScopeFacts};
use gantry_policy::governance::spend_report::{aggregate, parse_groups, parse_instant, GroupBy};
use gantry_policy::governance::windows::rfc3339_utc;
use gantry_policy::Snapshot;
use gantry_proto::admin::v1 as pb;
use gantry_proto::admin::v1::admin_service_server::AdminService;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::convert::{self, status, store_status};
use crate::sync::DirectorySync;

/// How often a change is retried when another admin changed the same record meanwhile.
const WRITE_ATTEMPTS: usize = 5;
/// Audit events returned unless the request says how many.
const DEFAULT_AUDIT_LIMIT: usize = 100;
const MAX_AUDIT_LIMIT: usize = 10_000;
/// How long a config reload may take before the call gives up waiting (it goes on).
const RELOAD_DEADLINE: Duration = Duration::from_secs(60);

/// A config reload asked for through the API; the process that owns the config file answers.
pub type ReloadRequest = oneshot::Sender<Result<ReloadOutcome, String>>;

/// What a reload did.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// False when the file had not changed.
    pub changed: bool,
    pub message: String,
}

/// The admin API of one replica.
#[derive(Clone)]
pub struct AdminApi {
    inner: Arc<Inner>,
}

struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    sync: Arc<DirectorySync>,
    /// Names the replica in audit events.
    replica: String,
    reload: Option<mpsc::Sender<ReloadRequest>>,
}

/// Who is calling.
struct Actor {
    name: String,
    peer: String,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn json_of<T: serde::Serialize>(value: &T) -> Result<String, Status> {
    serde_json::to_string(value).map_err(|e| Status::internal(format!("cannot encode: {e}")))
}

impl AdminApi {
    /// The API over the config `snapshot` (for its keys, budgets and admin tokens) and the
    /// runtime directory `sync` maintains. `reload`, when given, is how a ReloadConfig call
    /// reaches the process that owns the config file.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        sync: Arc<DirectorySync>,
        reload: Option<mpsc::Sender<ReloadRequest>>,
    ) -> AdminApi {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        AdminApi {
            inner: Arc::new(Inner {
                snapshot,
                sync,
                replica: format!("{host}:{}", std::process::id()),
                reload,
            }),
        }
    }

    fn actor<T>(&self, request: &Request<T>) -> Result<(Actor, Arc<Snapshot>), Status> {
        let snapshot = self.inner.snapshot.load_full();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(policy) = snapshot.admin.as_ref() else {
            return Err(Status::unavailable(
                "the admin API is off in the config now serving (no admin_api section)",
            ));
        };
        let Some(presented) = presented.filter(|p| !p.is_empty()) else {
            tracing::warn!(target: "gantry::audit", %peer, "admin call without credentials refused");
            return Err(Status::unauthenticated(
                "the admin API needs an admin token: send 'authorization: Bearer <token>' with a token listed in admin_api.tokens",
            ));
        };
        let Some(name) = policy.actor(presented) else {
            tracing::warn!(target: "gantry::audit", %peer, "admin call with an unknown token refused");
            return Err(Status::unauthenticated("invalid admin token"));
        };
        let actor = Actor {
            name: name.to_string(),
            peer,
        };
        Ok((actor, snapshot))
    }

    fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            time_ms: now_ms(),
            actor: actor.name.clone(),
            action: action.into(),
            target: target.into(),
            detail: detail.to_string(),
            peer: actor.peer.clone(),
            replica: self.inner.replica.clone(),
        }
    }

    /// Writes one record; `Ok(None)` is a conflict (nothing written). On success the change
    /// is logged and this replica's directory refreshed.
    async fn write(
        &self,
        kind: RecordKind,
        id: &str,
        json: Option<String>,
        expect: Expect,
        audit: AuditEvent,
    ) -> Result<Option<u64>, Status> {
        let write = AdminWrite {
            kind,
            id: id.to_string(),
            json,
            expect,
            audit: audit.clone(),
        };
        let store = self.inner.sync.store();
        match store.admin_write(&write).await.map_err(store_status)? {
            WriteOutcome::Written { version } => {
                tracing::info!(
                    target: "gantry::audit",
                    actor = %audit.actor,
                    action = %audit.action,
                    target = %audit.target,
                    detail = %audit.detail,
                    peer = %audit.peer,
                    version,
                    "admin change"
                );
                if let Err(e) = self.inner.sync.refresh().await {
                    tracing::warn!(error = %e, "change written, but this replica could not reread the records; the next poll will");
                }
                Ok(Some(version))
            }
            WriteOutcome::Conflict { .. } => {
                // Someone else changed it: reread before the caller tries again.
                let _ = self.inner.sync.refresh().await;
                Ok(None)
            }
        }
    }

    /// Changes a runtime key with `change`, retrying on concurrent changes.
    async fn change_key(
        &self,
        actor: &Actor,
        snapshot: &Snapshot,
        name: &str,
        action: &str,
        detail: serde_json::Value,
        change: impl Fn(&KeyRecord, i64) -> Result<KeyRecord, AdminError>,
    ) -> Result<KeyRecord, Status> {
        let config_has = config_has_key(snapshot, name);
        for _ in 0..WRITE_ATTEMPTS {
            let directory = self.inner.sync.current();
            let Some(current) = directory.key(name) else {
                return Err(status(if config_has {
                    changes::config_owned_key(name)
                } else {
                    changes::no_such_key(name)
                }));
            };
            if config_has && action != "key.revoke" {
                return Err(status(changes::config_owned_key(name)));
            }
            let next = change(&current.record, now_ms()).map_err(status)?;
            let audit = self.audit(actor, action, &format!("key:{name}"), detail.clone());
            let written = self
                .write(
                    RecordKind::Key,
                    name,
                    Some(json_of(&next)?),
                    Expect::Revision(current.revision),
                    audit,
                )
                .await?;
            if written.is_some() {
                return Ok(next);
            }
        }
        Err(Status::aborted(format!(
            "key '{name}' kept changing under this call ({WRITE_ATTEMPTS} attempts); try again"
        )))
    }

    /// Creates or replaces a budget.
    async fn put_budget(
        &self,
        actor: &Actor,
        snapshot: &Snapshot,
        draft: &BudgetDraft,
    ) -> Result<pb::Budget, Status> {
        for _ in 0..WRITE_ATTEMPTS {
            let record = changes::budget(draft, snapshot, now_ms(), &actor.name).map_err(status)?;
            let directory = self.inner.sync.current();
            let expect = match directory.budget(&record.name) {
                Some(existing) => Expect::Revision(existing.revision),
                None => Expect::Absent,
            };
            let detail = json!({
                "subject": record.subject.to_string(),
                "usd": record.usd,
                "tokens": record.tokens,
                "window": record.window.as_str(),
                "audit_only": record.audit_only,
            });
            let audit = self.audit(
                actor,
                "budget.set",
                &format!("budget:{}", record.name),
                detail,
            );
            if self
                .write(
                    RecordKind::Budget,
                    &record.name,
                    Some(json_of(&record)?),
                    expect,
                    audit,
                )
                .await?
                .is_some()
            {
                return Ok(convert::runtime_budget(&record, false));
            }
        }
        Err(Status::aborted(
            "the budget kept changing under this call; try again",
        ))
    }
}

fn config_has_key(snapshot: &Snapshot, name: &str) -> bool {
    snapshot
        .auth
        .as_ref()
        .is_some_and(|auth| auth.api_keys.has_name(name))
}

fn config_has_budget(snapshot: &Snapshot, name: &str) -> bool {
    snapshot
        .governance
        .as_ref()
        .is_some_and(|g| g.has_budget(name))
}

fn require_auth(snapshot: &Snapshot) -> Result<(), Status> {
    if snapshot.auth.is_none() {
        return Err(Status::failed_precondition(
            "the config has no auth section: Envoy does not check API keys, so a key would grant nothing; add `auth:` to the config",
        ));
    }
    Ok(())
}

fn budget_draft(
    name: String,
    subject: Subject,
    limit: Option<&pb::BudgetLimit>,
) -> Result<BudgetDraft, Status> {
    let Some(limit) = limit else {
        return Err(Status::invalid_argument(
            "limit: set usd, tokens and a window",
        ));
    };
    Ok(BudgetDraft {
        name,
        subject,
        usd: limit.usd,
        tokens: limit.tokens,
        window: convert::window_from_proto(limit.window)?,
        audit_only: limit.audit_only,
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let (actor, snapshot) = self.actor(&request)?;
        require_auth(&snapshot)?;
        let request = request.into_inner();
        let secret = generate_key().map_err(|e| Status::internal(format!("no randomness: {e}")))?;
        let now = now_ms();
        let draft = KeyDraft {
            name: request.name.clone(),
            user: request.user.clone(),
            team: request.team.clone(),
            models: request.models.clone(),
            labels: request.labels.clone().into_iter().collect(),
            expires_at: request.expires_at.clone(),
        };
        let record =
            changes::create_key(&draft, KeyHash::of(&secret), &*snapshot, now, &actor.name)
                .map_err(status)?;
        // Check the budgets before anything is written.
        let mut budgets = Vec::new();
        for limit in &request.budgets {
            let draft = budget_draft(
                String::new(),
                Subject::new(SubjectKind::Key, record.name.clone()),
                Some(limit),
            )?;
            changes::budget(&draft, &*snapshot, now, &actor.name).map_err(status)?;
            budgets.push(draft);
        }
        let detail = json!({
            "user": record.user,
            "team": record.team,
            "models": record.models,
            "labels": record.labels,
            "expires_at": convert::time(record.expires_at_ms),
            "hash": record.hash,
        });
        let audit = self.audit(
            &actor,
            "key.create",
            &format!("key:{}", record.name),
            detail,
        );
        let written = self
            .write(
                RecordKind::Key,
                &record.name,
                Some(json_of(&record)?),
                Expect::Absent,
                audit,
            )
            .await?;
        if written.is_none() {
            return Err(Status::already_exists(format!(
                "a runtime key named '{}' already exists",
                record.name
            )));
        }
        let mut made = Vec::new();
        for draft in &budgets {
            made.push(self.put_budget(&actor, &snapshot, draft).await?);
        }
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(convert::runtime_key(&record, false, now)),
            secret,
            budgets: made,
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let (_, snapshot) = self.actor(&request)?;
        let include_revoked = request.get_ref().include_revoked;
        let now = now_ms();
        let mut keys: BTreeMap<(String, i32), pb::Key> = BTreeMap::new();
        if let Some(auth) = &snapshot.auth {
            for key in auth.api_keys.keys() {
                let shown = convert::config_key(key, now);
                keys.insert((shown.name.clone(), shown.source), shown);
            }
        }
        for key in self.inner.sync.current().key_records() {
            if key.record.is_revoked() && !include_revoked {
                continue;
            }
            let shown = convert::runtime_key(
                &key.record,
                config_has_key(&snapshot, &key.record.name),
                now,
            );
            keys.insert((shown.name.clone(), shown.source), shown);
        }
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.into_values().collect(),
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let (_, snapshot) = self.actor(&request)?;
        let name = &request.get_ref().name;
        let now = now_ms();
        if let Some(key) = snapshot
            .auth
            .as_ref()
            .and_then(|a| a.api_keys.keys().find(|k| &k.name == name))
        {
            return Ok(Response::new(convert::config_key(key, now)));
        }
        match self.inner.sync.current().key(name) {
            Some(key) => Ok(Response::new(convert::runtime_key(&key.record, false, now))),
            None => Err(Status::not_found(format!("no key named '{name}'"))),
        }
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let (actor, snapshot) = self.actor(&request)?;
        let request = request.into_inner();
        let update = KeyUpdate {
            user: request.user.clone(),
            team: request.team.clone(),
            models: request.models.as_ref().map(|m| m.values.clone()),
            labels: request
                .labels
                .as_ref()
                .map(|l| l.values.clone().into_iter().collect()),
            expires_at: request.expires_at.clone(),
        };
        let detail = json!({
            "user": update.user,
            "team": update.team,
            "models": update.models,
            "labels": update.labels,
            "expires_at": update.expires_at,
        });
        let names: &Snapshot = &snapshot;
        let record = self
            .change_key(
                &actor,
                &snapshot,
                &request.name,
                "key.update",
                detail,
                |record, now| changes::update_key(record, &update, names, now),
            )
            .await?;
        Ok(Response::new(convert::runtime_key(
            &record,
            false,
            now_ms(),
        )))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let (actor, snapshot) = self.actor(&request)?;
        let request = request.into_inner();
        let detail = json!({ "reason": request.reason });
        let record = self
            .change_key(
                &actor,
                &snapshot,
                &request.name,
                "key.revoke",
                detail,
                |record, now| changes::revoke_key(record, now, &actor.name),
            )
            .await?;
        Ok(Response::new(convert::runtime_key(
            &record,
            config_has_key(&snapshot, &record.name),
            now_ms(),
        )))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let (actor, snapshot) = self.actor(&request)?;
        let request = request.into_inner();
        let grace_secs = request.grace_seconds.unwrap_or_else(|| {
            snapshot
                .admin
                .as_ref()
                .map_or(gantry_policy::config::DEFAULT_ROTATION_GRACE_SECS, |a| {
                    a.rotation_grace_secs
                })
        });
        let grace_ms = i64::try_from(grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let secret = generate_key().map_err(|e| Status::internal(format!("no randomness: {e}")))?;
        let hash = KeyHash::of(&secret);
        let detail = json!({ "grace_seconds": grace_secs, "hash": hash.to_string() });
        let record = self
            .change_key(
                &actor,
                &snapshot,
                &request.name,
                "key.rotate",
                detail,
                |record, now| changes::rotate_key(record, hash, grace_ms, now),
            )
            .await?;
        let previous_valid_until = record
            .previous
            .last()
            .filter(|_| grace_ms > 0)
            .map(|p| rfc3339_utc(p.valid_until_ms))
            .unwrap_or_default();
        Ok(Response::new(pb::RotateKeyResponse {
            key: Some(convert::runtime_key(&record, false, now_ms())),
            secret,
            previous_valid_until,
        }))
    }

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::Budget>, Status> {
        let (actor, snapshot) = self.actor(&request)?;
        let request = request.into_inner();
        let subject = convert::subject_from_proto(request.subject.as_ref())?;
        let draft = budget_draft(request.name, subject, request.limit.as_ref())?;
        Ok(Response::new(
            self.put_budget(&actor, &snapshot, &draft).await?,
        ))
    }

    async fn delete_budget(
        &self,
        request: Request<pb::DeleteBudgetRequest>,
    ) -> Result<Response<pb::Budget>, Status> {
        let (actor, snapshot) = self.actor(&request)?;
        let name = request.into_inner().name;
        for _ in 0..WRITE_ATTEMPTS {
            let directory = self.inner.sync.current();
            let Some(existing) = directory.budget(&name) else {
                return Err(if config_has_budget(&snapshot, &name) {
                    Status::failed_precondition(format!(
                        "budget '{name}' is declared in the config file (governance.budgets): change it there"
                    ))
                } else {
                    Status::not_found(format!("no runtime budget named '{name}'"))
                });
            };
            let audit = self.audit(
                &actor,
                "budget.delete",
                &format!("budget:{name}"),
                json!({ "subject": existing.record.subject.to_string() }),
            );
            if self
                .write(
                    RecordKind::Budget,
                    &name,
                    None,
                    Expect::Revision(existing.revision),
                    audit,
                )
                .await?
                .is_some()
            {
                return Ok(Response::new(convert::runtime_budget(
                    &existing.record,
                    false,
                )));
            }
        }
        Err(Status::aborted(
            "the budget kept changing under this call; try again",
        ))
    }

    async fn list_budgets(
        &self,
        request: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        let (_, snapshot) = self.actor(&request)?;
        let filter = match request.get_ref().subject.as_ref() {
            Some(subject) => Some(convert::subject_from_proto(Some(subject))?),
            None => None,
        };
        let mut budgets = Vec::new();
        if filter.is_none() {
            if let Some(governance) = &snapshot.governance {
                for b in governance.configured_budgets() {
                    budgets.push(pb::Budget {
                        name: b.name.to_string(),
                        source: pb::Source::Config as i32,
                        subject: None,
                        scope: b.scope.to_string(),
                        limit: Some(convert::limit(
                            b.limit_nanos.map(convert::usd),
                            b.limit_tokens.map(|t| t.max(0) as u64),
                            b.window,
                            !b.enforced,
                        )),
                        ..pb::Budget::default()
                    });
                }
            }
        }
        for budget in self.inner.sync.current().budget_records() {
            if filter.as_ref().is_some_and(|f| f != &budget.record.subject) {
                continue;
            }
            budgets.push(convert::runtime_budget(
                &budget.record,
                config_has_budget(&snapshot, &budget.record.name),
            ));
        }
        Ok(Response::new(pb::ListBudgetsResponse { budgets }))
    }

    async fn set_metadata(
        &self,
        request: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SubjectMetadata>, Status> {
        let (actor, _) = self.actor(&request)?;
        let request = request.into_inner();
        let subject = convert::subject_from_proto(request.subject.as_ref())?;
        let entries: BTreeMap<String, String> = request.metadata.into_iter().collect();
        let id = subject.to_string();
        for _ in 0..WRITE_ATTEMPTS {
            let record =
                changes::metadata(&subject, &entries, now_ms(), &actor.name).map_err(status)?;
            let directory = self.inner.sync.current();
            let expect = match directory.metadata(&subject) {
                Some(existing) => Expect::Revision(existing.revision),
                None => Expect::Absent,
            };
            let audit = self.audit(&actor, "metadata.set", &id, json!({ "metadata": entries }));
            // Empty metadata removes the record.
            let json = if entries.is_empty() {
                None
            } else {
                Some(json_of(&record)?)
            };
            if json.is_none() && expect == Expect::Absent {
                return Ok(Response::new(convert::metadata(&record)));
            }
            if self
                .write(RecordKind::Metadata, &id, json, expect, audit)
                .await?
                .is_some()
            {
                return Ok(Response::new(convert::metadata(&record)));
            }
        }
        Err(Status::aborted(
            "the metadata kept changing under this call; try again",
        ))
    }

    async fn list_metadata(
        &self,
        request: Request<pb::ListMetadataRequest>,
    ) -> Result<Response<pb::ListMetadataResponse>, Status> {
        self.actor(&request)?;
        let subjects = self
            .inner
            .sync
            .current()
            .metadata_records()
            .map(|m| convert::metadata(&m.record))
            .collect();
        Ok(Response::new(pb::ListMetadataResponse { subjects }))
    }

    async fn get_limits(
        &self,
        request: Request<pb::GetLimitsRequest>,
    ) -> Result<Response<pb::GetLimitsResponse>, Status> {
        let (_, snapshot) = self.actor(&request)?;
        let request = request.into_inner();
        let subject = convert::subject_from_proto(request.subject.as_ref())?;
        let Some(governance) = snapshot.governance.clone() else {
            return Err(Status::failed_precondition(
                "the config has no governance section: there are no budgets",
            ));
        };
        let directory = self.inner.sync.current();
        let caller = caller_of(&subject, &snapshot, &directory)?;
        let (provider, upstream) = match request.model.as_str() {
            "" => (String::new(), String::new()),
            model => match snapshot.model(model) {
                Some(route) => (route.provider.name.clone(), route.upstream_model.clone()),
                None => return Err(Status::invalid_argument(format!("unknown model '{model}'"))),
            },
        };
        let facts = ScopeFacts {
            caller: &caller,
            model: &request.model,
            provider: &provider,
            upstream_model: &upstream,
            end_user: None,
            method: "POST",
            path: "",
            headers: &[],
        };
        let now = now_ms();
        let applying = governance.budgets_applying(&facts, now, &directory);
        let keys: Vec<String> = applying.iter().map(|b| b.counter_key.clone()).collect();
        let counters = self
            .inner
            .sync
            .store()
            .counters(&keys)
            .await
            .map_err(store_status)?;
        let budgets = applying
            .iter()
            .zip(counters)
            .map(|(b, state)| {
                let used_nanos = state.spent_nanos.saturating_add(state.reserved_nanos);
                let used_tokens = state.spent_tokens.saturating_add(state.reserved_tokens);
                pb::BudgetState {
                    budget: b.name.clone(),
                    source: if b.runtime {
                        pb::Source::Runtime
                    } else {
                        pb::Source::Config
                    } as i32,
                    scope: b.scope.clone(),
                    window: convert::window_to_proto(b.window),
                    audit_only: !b.enforced,
                    limit_usd: b.limit_nanos.map(convert::usd),
                    spent_usd: convert::usd(state.spent_nanos),
                    reserved_usd: convert::usd(state.reserved_nanos),
                    remaining_usd: b
                        .limit_nanos
                        .map(|l| convert::usd(l.saturating_sub(used_nanos).max(0))),
                    limit_tokens: b.limit_tokens.map(|t| t.max(0) as u64),
                    spent_tokens: state.spent_tokens.max(0) as u64,
                    reserved_tokens: state.reserved_tokens.max(0) as u64,
                    remaining_tokens: b
                        .limit_tokens
                        .map(|l| l.saturating_sub(used_tokens).max(0) as u64),
                    resets_at: convert::time(b.resets_at_ms),
                }
            })
            .collect();
        let rate_limits = governance
            .rate_limits_applying(&facts)
            .into_iter()
            .map(|(name, scope, rpm, tpm)| pb::RateLimitState {
                name,
                scope,
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
            })
            .collect();
        Ok(Response::new(pb::GetLimitsResponse {
            subject: Some(convert::subject_to_proto(&subject)),
            budgets,
            rate_limits,
        }))
    }

    async fn query_spend(
        &self,
        request: Request<pb::QuerySpendRequest>,
    ) -> Result<Response<pb::QuerySpendResponse>, Status> {
        let (_, snapshot) = self.actor(&request)?;
        let request = request.into_inner();
        let Some(governance) = snapshot.governance.clone() else {
            return Err(Status::failed_precondition(
                "the config has no governance section: nothing is metered or logged",
            ));
        };
        let zone = governance.time_zone();
        let by: Vec<GroupBy> = if request.group_by.is_empty() {
            vec![GroupBy::Key]
        } else {
            parse_groups(&request.group_by.join(","))
                .map_err(|e| Status::invalid_argument(format!("group_by: {e}")))?
        };
        let instant = |field: &str, text: &str| match text {
            "" => Ok(None),
            text => parse_instant(text, zone)
                .map(Some)
                .map_err(|e| Status::invalid_argument(format!("{field}: {e}"))),
        };
        let query = SpendQuery {
            since_ms: instant("since", &request.since)?,
            until_ms: instant("until", &request.until)?,
        };
        let records = self
            .inner
            .sync
            .store()
            .spend(&query)
            .await
            .map_err(store_status)?;
        let group_by = by.iter().map(|g| g.as_str().to_string()).collect();
        if request.records {
            return Ok(Response::new(pb::QuerySpendResponse {
                group_by,
                groups: Vec::new(),
                records: records.iter().map(convert::spend_record_to_proto).collect(),
            }));
        }
        let groups = aggregate(&records, &by, zone)
            .into_iter()
            .map(|row| pb::SpendGroup {
                values: row.group,
                requests: row.requests,
                refused: row.refused,
                input_tokens: row.input_tokens,
                cached_input_tokens: row.cached_input_tokens,
                output_tokens: row.output_tokens,
                cost_nanos: row.cost_nanos,
            })
            .collect();
        Ok(Response::new(pb::QuerySpendResponse {
            group_by,
            groups,
            records: Vec::new(),
        }))
    }

    async fn reload_config(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let (actor, _) = self.actor(&request)?;
        let Some(reload) = &self.inner.reload else {
            return Err(Status::failed_precondition(
                "this Gantry has no config file to reload (it serves the bundled quickstart)",
            ));
        };
        let (reply, answer) = oneshot::channel();
        reload
            .send(reply)
            .await
            .map_err(|_| Status::unavailable("the config reloader has stopped"))?;
        let outcome = tokio::time::timeout(RELOAD_DEADLINE, answer)
            .await
            .map_err(|_| {
                Status::deadline_exceeded("the reload is still running; see Gantry's log")
            })?
            .map_err(|_| Status::unavailable("the config reloader has stopped"))?;
        let (detail, result) = match outcome {
            Ok(done) => (
                json!({ "changed": done.changed, "message": done.message }),
                Ok(pb::ReloadConfigResponse {
                    changed: done.changed,
                    message: done.message,
                }),
            ),
            Err(reason) => (
                json!({ "refused": reason }),
                Err(Status::failed_precondition(format!(
                    "config reload refused: {reason}; the previous config keeps serving"
                ))),
            ),
        };
        let event = self.audit(&actor, "config.reload", "config", detail);
        tracing::info!(target: "gantry::audit", actor = %event.actor, action = %event.action, detail = %event.detail, "admin change");
        if let Err(e) = self.inner.sync.store().record_audit(&event).await {
            tracing::warn!(error = %e, "the config reload could not be written to the audit log");
        }
        result.map(Response::new)
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.actor(&request)?;
        let limit = match request.get_ref().limit {
            0 => DEFAULT_AUDIT_LIMIT,
            n => (n as usize).min(MAX_AUDIT_LIMIT),
        };
        let events = self
            .inner
            .sync
            .store()
            .audit_events(limit)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|e| pb::AuditEvent {
                time: rfc3339_utc(e.time_ms),
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
                peer: e.peer,
                replica: e.replica,
            })
            .collect();
        Ok(Response::new(pb::ListAuditEventsResponse { events }))
    }
}

/// The caller a subject stands for, as ext_authz would admit it.
fn caller_of(
    subject: &Subject,
    snapshot: &Snapshot,
    directory: &RuntimeDirectory,
) -> Result<Caller, Status> {
    Ok(match subject.kind {
        SubjectKind::Key => {
            let config = snapshot
                .auth
                .as_ref()
                .and_then(|a| a.api_keys.keys().find(|k| k.name == subject.id).cloned());
            let (user, team, labels, models) = match (&config, directory.key(&subject.id)) {
                (Some(key), _) => (
                    key.user.clone(),
                    key.team.clone(),
                    key.labels.clone(),
                    key.models.clone(),
                ),
                (None, Some(key)) => (
                    key.record.user.clone(),
                    key.record.team.clone(),
                    key.record.labels.clone(),
                    key.record.models.clone(),
                ),
                (None, None) => {
                    return Err(Status::not_found(format!("no key named '{}'", subject.id)))
                }
            };
            Caller {
                method: Some("api_key".into()),
                subject: Some(user.clone().unwrap_or_else(|| subject.id.clone())),
                user,
                team,
                key: Some(subject.id.clone()),
                labels,
                allowed_models: models,
                ..Caller::default()
            }
        }
        SubjectKind::User => Caller {
            subject: Some(subject.id.clone()),
            user: Some(subject.id.clone()),
            ..Caller::default()
        },
        SubjectKind::Team => Caller {
            team: Some(subject.id.clone()),
            ..Caller::default()
        },
    })
}
