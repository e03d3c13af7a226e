//! What the admin API manages at runtime, pure: API keys, budgets on keys, users and teams,
//! and user and team metadata, as records a store keeps ([`stored`]); the rules every change
//! follows ([`changes`]); and the [`RuntimeDirectory`] compiled from the records, which
//! requests are checked against next to the config's own keys and budgets.
//!
//! The config file wins on name conflicts: a runtime key or budget whose name the config
//! declares is never used (the config's may have been added after it), and the admin API
//! refuses to create one.
//!
//! No I/O here: the admin server (`gantry-admin`) reads and writes the records through the
//! store and swaps the compiled directory.

pub mod changes;
pub mod directory;
pub mod stored;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::BudgetWindow;

pub use changes::{AdminError, KeyDraft, KeyUpdate};
pub use directory::{RuntimeBudget, RuntimeDirectory};

/// Whom a budget or metadata is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// An API key, by name.
    Key,
    /// A principal's user (a key's `user`, a JWT's user claim).
    User,
    /// A principal's team.
    Team,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Key => "key",
            SubjectKind::User => "user",
            SubjectKind::Team => "team",
        }
    }
}

/// A key, user or team, written `key:<name>`, `user:<id>` or `team:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subject {
    pub kind: SubjectKind,
    pub id: String,
}

impl Subject {
    pub fn new(kind: SubjectKind, id: impl Into<String>) -> Subject {
        Subject {
            kind,
            id: id.into(),
        }
    }

    /// Parses `key:alice`, `user:bob`, `team:research`.
    pub fn parse(text: &str) -> Result<Subject, AdminError> {
        let bad = || {
            AdminError::InvalidArgument(format!(
                "'{text}' is not a subject: write key:<name>, user:<id> or team:<id>"
            ))
        };
        let (kind, id) = text.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "key" => SubjectKind::Key,
            "user" => SubjectKind::User,
            "team" => SubjectKind::Team,
            _ => return Err(bad()),
        };
        if id.is_empty() {
            return Err(bad());
        }
        Ok(Subject::new(kind, id))
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// A secret replaced by a rotation, still accepted until `valid_until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// `sha256:<hex>`.
    pub hash: String,
    pub valid_until_ms: i64,
}

/// An API key created through the admin API. Only its digest is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    /// `sha256:<hex>` of the current secret.
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Models the key may use; `None`: every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Milliseconds since the epoch after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    pub created_ms: i64,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<PreviousSecret>,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_ms.is_some()
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// A budget on one key, user or team, created through the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetRecord {
    pub name: String,
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    pub window: BudgetWindow,
    /// Counts and reports but never refuses.
    #[serde(default)]
    pub audit_only: bool,
    pub updated_ms: i64,
    pub updated_by: String,
}

impl BudgetRecord {
    /// The scope value its counter is kept under: the subject, e.g. `team:research`.
    pub fn scope(&self) -> String {
        self.subject.to_string()
    }
}

/// The metadata of a user or a team, given to authorization rules as `principal.metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRecord {
    pub subject: Subject,
    pub metadata: BTreeMap<String, String>,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// The compiled `admin_api` section: who may call the admin API, and its settings.
#[derive(Debug)]
pub struct AdminApiPolicy {
    /// Admin token digests → the token's name (the audit log's actor).
    tokens: std::collections::HashMap<crate::auth::api_keys::KeyHash, String>,
    pub sync_interval: std::time::Duration,
    pub rotation_grace_secs: u64,
    pub listen: std::net::SocketAddr,
}

impl AdminApiPolicy {
    pub fn compile(section: &crate::config::AdminApiSection) -> AdminApiPolicy {
        let tokens = section
            .tokens
            .iter()
            .filter_map(|t| {
                crate::auth::api_keys::KeyHash::parse(&t.hash.value)
                    .ok()
                    .map(|hash| (hash, t.name.value.clone()))
            })
            .collect();
        AdminApiPolicy {
            tokens,
            sync_interval: section.sync_interval(),
            rotation_grace_secs: section.rotation_grace_secs(),
            listen: section.listen_addr(),
        }
    }

    /// The name of the admin token presented, if it is one. The lookup is by digest, so its
    /// time says nothing about the tokens (as for API keys).
    pub fn actor(&self, presented: &str) -> Option<&str> {
        self.tokens
            .get(&crate::auth::api_keys::KeyHash::of(presented))
            .map(String::as_str)
    }
}
