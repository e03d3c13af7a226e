//! The runtime directory: the admin records compiled once into what requests are checked
//! against, swapped whole when the records change (as the config snapshot is on reload).
//!
//! Requests never read records: ext_authz looks a presented key up by digest in
//! [`RuntimeDirectory::keys`] after the config's own table, and metering adds the
//! [`RuntimeDirectory::budgets_for`] the caller's key, user and team to the config's budgets.
//! Both skip entries whose name the config declares (the config wins).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::stored::{AdminRecords, RecordKind};
use super::{BudgetRecord, KeyRecord, MetadataRecord, Subject};
use crate::auth::api_keys::{ApiKey, ApiKeyTable, KeyHash};
use crate::config::BudgetWindow;
use crate::governance::ledger::Nanos;
use crate::governance::metering::usd_to_nanos;
use crate::governance::windows::rfc3339_utc;

/// A runtime budget as metering applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeBudget {
    pub name: String,
    /// The counter's scope value: the subject, e.g. `team:research`.
    pub scope: String,
    pub limit_nanos: Option<Nanos>,
    pub limit_tokens: Option<i64>,
    pub window: BudgetWindow,
    /// `false` for an audit-only budget.
    pub enforced: bool,
}

/// One record with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Revised<T> {
    pub revision: u64,
    pub record: T,
}

/// Every admin record, compiled.
#[derive(Debug, Default)]
pub struct RuntimeDirectory {
    /// The store version the records were read at.
    pub version: u64,
    keys: ApiKeyTable,
    key_records: BTreeMap<String, Revised<KeyRecord>>,
    budget_records: BTreeMap<String, Revised<BudgetRecord>>,
    metadata_records: BTreeMap<Subject, Revised<MetadataRecord>>,
    budgets_by_subject: HashMap<Subject, Vec<RuntimeBudget>>,
    metadata_by_subject: HashMap<Subject, Arc<BTreeMap<String, String>>>,
    /// Records that could not be read (written by a newer version, or damaged), described.
    pub unreadable: Vec<String>,
}

impl RuntimeDirectory {
    /// The directory of no records.
    pub fn empty() -> RuntimeDirectory {
        RuntimeDirectory::default()
    }

    /// Compiles what the store returned. A record that cannot be read is left out and
    /// described in [`RuntimeDirectory::unreadable`]; the others still apply.
    pub fn compile(records: &AdminRecords) -> RuntimeDirectory {
        let mut directory = RuntimeDirectory {
            version: records.version,
            ..RuntimeDirectory::default()
        };
        let mut keys = Vec::new();
        for stored in &records.records {
            let unreadable = |e: &dyn std::fmt::Display| {
                format!("{} '{}': {e}", stored.kind.as_str(), stored.id)
            };
            match stored.kind {
                RecordKind::Key => match serde_json::from_str::<KeyRecord>(&stored.json) {
                    Ok(record) => match api_keys_of(&record) {
                        Ok(mut of_record) => {
                            keys.append(&mut of_record);
                            directory.key_records.insert(
                                record.name.clone(),
                                Revised {
                                    revision: stored.revision,
                                    record,
                                },
                            );
                        }
                        Err(e) => directory.unreadable.push(unreadable(&e)),
                    },
                    Err(e) => directory.unreadable.push(unreadable(&e)),
                },
                RecordKind::Budget => match serde_json::from_str::<BudgetRecord>(&stored.json) {
                    Ok(record) => {
                        directory
                            .budgets_by_subject
                            .entry(record.subject.clone())
                            .or_default()
                            .push(RuntimeBudget {
                                name: record.name.clone(),
                                scope: record.scope(),
                                limit_nanos: record.usd.map(usd_to_nanos),
                                limit_tokens: record.tokens.map(|t| t.min(i64::MAX as u64) as i64),
                                window: record.window,
                                enforced: !record.audit_only,
                            });
                        directory.budget_records.insert(
                            record.name.clone(),
                            Revised {
                                revision: stored.revision,
                                record,
                            },
                        );
                    }
                    Err(e) => directory.unreadable.push(unreadable(&e)),
                },
                RecordKind::Metadata => {
                    match serde_json::from_str::<MetadataRecord>(&stored.json) {
                        Ok(record) => {
                            directory
                                .metadata_by_subject
                                .insert(record.subject.clone(), Arc::new(record.metadata.clone()));
                            directory.metadata_records.insert(
                                record.subject.clone(),
                                Revised {
                                    revision: stored.revision,
                                    record,
                                },
                            );
                        }
                        Err(e) => directory.unreadable.push(unreadable(&e)),
                    }
                }
            }
        }
        for budgets in directory.budgets_by_subject.values_mut() {
            budgets.sort_by(|a, b| a.name.cmp(&b.name));
        }
        directory.keys = ApiKeyTable::from_keys(keys);
        directory
    }

    /// Runtime keys by digest: current secrets, revoked keys (refused with a message that
    /// says so) and rotated-out secrets within their grace period.
    pub fn keys(&self) -> &ApiKeyTable {
        &self.keys
    }

    pub fn key(&self, name: &str) -> Option<&Revised<KeyRecord>> {
        self.key_records.get(name)
    }

    pub fn key_records(&self) -> impl Iterator<Item = &Revised<KeyRecord>> {
        self.key_records.values()
    }

    pub fn budget(&self, name: &str) -> Option<&Revised<BudgetRecord>> {
        self.budget_records.get(name)
    }

    pub fn budget_records(&self) -> impl Iterator<Item = &Revised<BudgetRecord>> {
        self.budget_records.values()
    }

    /// The runtime budgets on a subject, by name.
    pub fn budgets_for(&self, subject: &Subject) -> &[RuntimeBudget] {
        self.budgets_by_subject
            .get(subject)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether any runtime budget exists (metering then looks the caller up).
    pub fn has_budgets(&self) -> bool {
        !self.budgets_by_subject.is_empty()
    }

    pub fn metadata(&self, subject: &Subject) -> Option<&Revised<MetadataRecord>> {
        self.metadata_records.get(subject)
    }

    pub fn metadata_records(&self) -> impl Iterator<Item = &Revised<MetadataRecord>> {
        self.metadata_records.values()
    }

    /// The metadata of a principal's team, then of its user (the user's values win).
    pub fn principal_metadata(
        &self,
        user: Option<&str>,
        team: Option<&str>,
    ) -> Option<Arc<BTreeMap<String, String>>> {
        let of = |kind, id: Option<&str>| {
            id.and_then(|id| self.metadata_by_subject.get(&Subject::new(kind, id)))
        };
        let team = of(super::SubjectKind::Team, team);
        let user = of(super::SubjectKind::User, user);
        match (team, user) {
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (Some(team), Some(user)) => {
                let mut merged = (**team).clone();
                merged.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
                Some(Arc::new(merged))
            }
        }
    }
}

/// The table entries of one key record: its current secret, and each previous secret still
/// within its grace period (refused, with a message, once it has passed).
fn api_keys_of(record: &KeyRecord) -> Result<Vec<Arc<ApiKey>>, String> {
    let base = |hash: KeyHash, expires_ms: Option<i64>, superseded: bool| ApiKey {
        name: record.name.clone(),
        user: record.user.clone(),
        team: record.team.clone(),
        models: record.models.clone(),
        labels: record.labels.clone(),
        expires_at: expires_ms.map(|ms| ms.div_euclid(1000)),
        expires_at_text: expires_ms.map(rfc3339_utc),
        enabled: !record.is_revoked(),
        revoked_at: record.revoked_ms.map(rfc3339_utc),
        superseded,
        hash,
    };
    let current = KeyHash::parse(&record.hash).map_err(|e| e.to_string())?;
    let mut keys = vec![Arc::new(base(current, record.expires_at_ms, false))];
    for previous in &record.previous {
        let hash = KeyHash::parse(&previous.hash).map_err(|e| e.to_string())?;
        let until = match record.expires_at_ms {
            Some(expiry) => expiry.min(previous.valid_until_ms),
            None => previous.valid_until_ms,
        };
        keys.push(Arc::new(base(hash, Some(until), true)));
    }
    Ok(keys)
}
