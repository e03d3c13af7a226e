//! What a store keeps for the admin API: versioned records, written one at a time with a
//! compare-and-set, and the audit log.
//!
//! The store treats a record as an opaque JSON document under `(kind, id)`. Every write bumps
//! one global version, which becomes the written record's revision; replicas poll the version
//! to learn that something changed (see [`super::directory`]). A write says what it expects
//! to find ([`Expect`]): two admins changing the same key at once cannot overwrite each other,
//! one of them gets [`WriteOutcome::Conflict`] and tries again on fresh data. The audit event
//! of a write is appended in the same atomic step, so the log never misses a change.

use serde::{Deserialize, Serialize};

/// The kinds of admin records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// An API key ([`super::KeyRecord`]), by name.
    Key,
    /// A budget ([`super::BudgetRecord`]), by name.
    Budget,
    /// A user's or team's metadata ([`super::MetadataRecord`]), by subject (`user:<id>`).
    Metadata,
}

impl RecordKind {
    pub const ALL: [RecordKind; 3] = [RecordKind::Key, RecordKind::Budget, RecordKind::Metadata];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Key => "key",
            RecordKind::Budget => "budget",
            RecordKind::Metadata => "metadata",
        }
    }

    pub fn parse(text: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub kind: RecordKind,
    pub id: String,
    /// The store version at which it was last written.
    pub revision: u64,
    /// The record, as JSON.
    pub json: String,
}

/// Every admin record, and the version they are at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminRecords {
    /// 0 before the first write.
    pub version: u64,
    pub records: Vec<StoredRecord>,
}

/// What a write expects to find under its `(kind, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No record (creating).
    Absent,
    /// The record at exactly this revision (changing what was read).
    Revision(u64),
}

/// One change to one record, with its audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminWrite {
    pub kind: RecordKind,
    pub id: String,
    /// The new record as JSON; `None` deletes it.
    pub json: Option<String>,
    pub expect: Expect,
    pub audit: AuditEvent,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written (and audited) at this version, which is also the record's new revision.
    Written { version: u64 },
    /// The record was not as expected; nothing was written. `current` is its revision
    /// (`None`: there is no such record).
    Conflict { current: Option<u64> },
}

/// One entry of the audit log: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// The admin credential's name.
    pub actor: String,
    /// e.g. `key.create`, `key.revoke`, `budget.set`, `config.reload`.
    pub action: String,
    /// e.g. `key:alice`.
    pub target: String,
    /// What changed, as JSON; never a secret.
    #[serde(default)]
    pub detail: String,
    /// The caller's address.
    #[serde(default)]
    pub peer: String,
    /// The replica that made the change.
    #[serde(default)]
    pub replica: String,
}
