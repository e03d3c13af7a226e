//! The rules every admin change follows, as pure functions from what exists and what is asked
//! to the record to write: names, the config's precedence, expiries, rotation grace periods,
//! budget limits. The admin server calls them, then writes the result with a compare-and-set.

use std::collections::BTreeMap;

use super::{BudgetRecord, KeyRecord, MetadataRecord, PreviousSecret, Subject, SubjectKind};
use crate::auth::api_keys::KeyHash;
use crate::config::{parse_rfc3339, BudgetWindow, MAX_BUDGET_USD};

/// Longest name, label, metadata key or value accepted, in bytes.
pub const MAX_TEXT: usize = 256;
/// Most labels or metadata entries on one record.
pub const MAX_ENTRIES: usize = 64;

/// Why a change is refused; each maps onto one gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    /// The config file declares it: the config wins, and this API cannot change it.
    #[error("{0}")]
    ConfigOwned(String),
    /// The thing is in a state that does not allow the change (a revoked key).
    #[error("{0}")]
    FailedPrecondition(String),
}

/// Names end up in headers, metadata and store keys: the config's alphabet.
pub fn check_name(what: &str, name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TEXT
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::InvalidArgument(format!(
            "'{name}' is not a valid {what} name (use letters, digits, '-', '_' and '.', at most {MAX_TEXT})"
        )))
    }
}

fn check_entries(what: &str, entries: &BTreeMap<String, String>) -> Result<(), AdminError> {
    if entries.len() > MAX_ENTRIES {
        return Err(AdminError::InvalidArgument(format!(
            "at most {MAX_ENTRIES} {what} (got {})",
            entries.len()
        )));
    }
    for (key, value) in entries {
        if key.is_empty() || key.len() > MAX_TEXT || value.len() > MAX_TEXT {
            return Err(AdminError::InvalidArgument(format!(
                "{what} '{key}': keys must be 1 to {MAX_TEXT} bytes, values at most {MAX_TEXT}"
            )));
        }
    }
    Ok(())
}

/// A user or team id: any text a principal can carry, within limits.
fn check_id(what: &str, id: &str) -> Result<(), AdminError> {
    if id.is_empty() || id.len() > MAX_TEXT || id.chars().any(char::is_control) {
        return Err(AdminError::InvalidArgument(format!(
            "{what} must be 1 to {MAX_TEXT} bytes without control characters"
        )));
    }
    Ok(())
}

/// An RFC 3339 time in the future, as ms; empty means none.
fn future_time(field: &str, text: &str, now_ms: i64) -> Result<Option<i64>, AdminError> {
    if text.is_empty() {
        return Ok(None);
    }
    let secs =
        parse_rfc3339(text).map_err(|e| AdminError::InvalidArgument(format!("{field}: {e}")))?;
    let ms = secs.saturating_mul(1000);
    if ms <= now_ms {
        return Err(AdminError::InvalidArgument(format!(
            "{field}: {text} is in the past"
        )));
    }
    Ok(Some(ms))
}

/// What the config declares, for the checks (the config wins on names).
pub trait Names {
    /// Whether the config declares a key of this name.
    fn config_key(&self, name: &str) -> bool;
    /// Whether the config declares a budget of this name.
    fn config_budget(&self, name: &str) -> bool;
    /// Whether clients can use a model of this name (for allow-lists).
    fn model(&self, name: &str) -> bool;
}

impl Names for crate::Snapshot {
    fn config_key(&self, name: &str) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|a| a.api_keys.has_name(name))
    }

    fn config_budget(&self, name: &str) -> bool {
        self.governance.as_ref().is_some_and(|g| g.has_budget(name))
    }

    fn model(&self, name: &str) -> bool {
        self.model(name).is_some()
    }
}

/// A key to create.
#[derive(Debug, Clone, Default)]
pub struct KeyDraft {
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    pub models: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, empty for never.
    pub expires_at: String,
}

fn optional_id(what: &str, value: Option<&String>) -> Result<Option<String>, AdminError> {
    match value.map(String::as_str) {
        None | Some("") => Ok(None),
        Some(id) => {
            check_id(what, id)?;
            Ok(Some(id.to_string()))
        }
    }
}

fn allow_list(models: &[String], names: &dyn Names) -> Result<Option<Vec<String>>, AdminError> {
    if models.is_empty() {
        return Ok(None);
    }
    if let Some(unknown) = models.iter().find(|m| !names.model(m)) {
        return Err(AdminError::InvalidArgument(format!(
            "unknown model '{unknown}' (not in the config's models)"
        )));
    }
    let mut models = models.to_vec();
    models.sort();
    models.dedup();
    Ok(Some(models))
}

/// The record of a new key whose secret hashes to `hash`. The name must be free in the config
/// (the runtime side is checked by the store's compare-and-set).
pub fn create_key(
    draft: &KeyDraft,
    hash: KeyHash,
    names: &dyn Names,
    now_ms: i64,
    actor: &str,
) -> Result<KeyRecord, AdminError> {
    check_name("key", &draft.name)?;
    if names.config_key(&draft.name) {
        return Err(AdminError::AlreadyExists(format!(
            "key '{}' is declared in the config file (auth.api_keys), which wins: pick another name",
            draft.name
        )));
    }
    check_entries("labels", &draft.labels)?;
    Ok(KeyRecord {
        name: draft.name.clone(),
        hash: hash.to_string(),
        user: optional_id("user", draft.user.as_ref())?,
        team: optional_id("team", draft.team.as_ref())?,
        models: allow_list(&draft.models, names)?,
        labels: draft.labels.clone(),
        expires_at_ms: future_time("expires_at", &draft.expires_at, now_ms)?,
        created_ms: now_ms,
        created_by: actor.to_string(),
        revoked_ms: None,
        revoked_by: None,
        previous: Vec::new(),
    })
}

/// Changes to a runtime key; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    /// An empty string removes the user.
    pub user: Option<String>,
    pub team: Option<String>,
    /// An empty list allows every model.
    pub models: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    /// An empty string removes the expiry.
    pub expires_at: Option<String>,
}

/// The config's keys cannot be changed here; say so the same way everywhere.
pub fn config_owned_key(name: &str) -> AdminError {
    AdminError::ConfigOwned(format!(
        "key '{name}' is declared in the config file (auth.api_keys): change it there"
    ))
}

pub fn no_such_key(name: &str) -> AdminError {
    AdminError::NotFound(format!("no runtime key named '{name}'"))
}

fn usable(record: &KeyRecord, what: &str) -> Result<(), AdminError> {
    if record.is_revoked() {
        return Err(AdminError::FailedPrecondition(format!(
            "key '{}' is revoked: it cannot be {what}",
            record.name
        )));
    }
    Ok(())
}

pub fn update_key(
    record: &KeyRecord,
    update: &KeyUpdate,
    names: &dyn Names,
    now_ms: i64,
) -> Result<KeyRecord, AdminError> {
    usable(record, "changed")?;
    let mut next = record.clone();
    if let Some(user) = &update.user {
        next.user = optional_id("user", Some(user))?;
    }
    if let Some(team) = &update.team {
        next.team = optional_id("team", Some(team))?;
    }
    if let Some(models) = &update.models {
        next.models = allow_list(models, names)?;
    }
    if let Some(labels) = &update.labels {
        check_entries("labels", labels)?;
        next.labels = labels.clone();
    }
    if let Some(expiry) = &update.expires_at {
        next.expires_at_ms = future_time("expires_at", expiry, now_ms)?;
    }
    Ok(next)
}

pub fn revoke_key(record: &KeyRecord, now_ms: i64, actor: &str) -> Result<KeyRecord, AdminError> {
    usable(record, "revoked again")?;
    let mut next = record.clone();
    next.revoked_ms = Some(now_ms);
    next.revoked_by = Some(actor.to_string());
    // A revoked key accepts no secret at all.
    next.previous.clear();
    Ok(next)
}

/// A new current secret; the old one is accepted for `grace_ms` more (none with 0), and
/// earlier secrets whose grace has passed are forgotten.
pub fn rotate_key(
    record: &KeyRecord,
    new_hash: KeyHash,
    grace_ms: i64,
    now_ms: i64,
) -> Result<KeyRecord, AdminError> {
    usable(record, "rotated")?;
    let mut next = record.clone();
    next.previous.retain(|p| p.valid_until_ms > now_ms);
    if grace_ms > 0 {
        next.previous.push(PreviousSecret {
            hash: record.hash.clone(),
            valid_until_ms: now_ms.saturating_add(grace_ms),
        });
    }
    next.hash = new_hash.to_string();
    Ok(next)
}

/// A budget to create or replace.
#[derive(Debug, Clone)]
pub struct BudgetDraft {
    /// Empty: `<kind>-<id>-<window>` when the id is a valid name.
    pub name: String,
    pub subject: Subject,
    pub usd: Option<f64>,
    pub tokens: Option<u64>,
    pub window: BudgetWindow,
    pub audit_only: bool,
}

/// The name a budget gets when none is given.
pub fn default_budget_name(subject: &Subject, window: BudgetWindow) -> String {
    format!(
        "{}-{}-{}",
        subject.kind.as_str(),
        subject.id,
        window.as_str()
    )
}

pub fn budget(
    draft: &BudgetDraft,
    names: &dyn Names,
    now_ms: i64,
    actor: &str,
) -> Result<BudgetRecord, AdminError> {
    let name = if draft.name.is_empty() {
        default_budget_name(&draft.subject, draft.window)
    } else {
        draft.name.clone()
    };
    check_name("budget", &name)?;
    if names.config_budget(&name) {
        return Err(AdminError::ConfigOwned(format!(
            "budget '{name}' is declared in the config file (governance.budgets), which wins: pick another name"
        )));
    }
    match draft.subject.kind {
        SubjectKind::Key => check_name("key", &draft.subject.id)?,
        SubjectKind::User => check_id("user", &draft.subject.id)?,
        SubjectKind::Team => check_id("team", &draft.subject.id)?,
    }
    if draft.usd.is_none() && draft.tokens.is_none() {
        return Err(AdminError::InvalidArgument(format!(
            "budget '{name}': set usd, tokens or both"
        )));
    }
    if let Some(usd) = draft.usd {
        if !(usd.is_finite() && usd > 0.0 && usd <= MAX_BUDGET_USD) {
            return Err(AdminError::InvalidArgument(format!(
                "budget '{name}': usd must be above 0 and at most {MAX_BUDGET_USD}"
            )));
        }
    }
    if draft.tokens == Some(0) {
        return Err(AdminError::InvalidArgument(format!(
            "budget '{name}': tokens must be at least 1"
        )));
    }
    Ok(BudgetRecord {
        name,
        subject: draft.subject.clone(),
        usd: draft.usd,
        tokens: draft.tokens,
        window: draft.window,
        audit_only: draft.audit_only,
        updated_ms: now_ms,
        updated_by: actor.to_string(),
    })
}

pub fn metadata(
    subject: &Subject,
    entries: &BTreeMap<String, String>,
    now_ms: i64,
    actor: &str,
) -> Result<MetadataRecord, AdminError> {
    if subject.kind == SubjectKind::Key {
        return Err(AdminError::InvalidArgument(
            "metadata is for users and teams; a key has labels (UpdateKey)".into(),
        ));
    }
    check_id(subject.kind.as_str(), &subject.id)?;
    check_entries("metadata entries", entries)?;
    Ok(MetadataRecord {
        subject: subject.clone(),
        metadata: entries.clone(),
        updated_ms: now_ms,
        updated_by: actor.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    struct Declared;

    impl Names for Declared {
        fn config_key(&self, name: &str) -> bool {
            name == "from-config"
        }
        fn config_budget(&self, name: &str) -> bool {
            name == "monthly"
        }
        fn model(&self, name: &str) -> bool {
            name == "gpt-4o" || name == "claude"
        }
    }

    fn names() -> Declared {
        Declared
    }

    fn draft(name: &str) -> KeyDraft {
        KeyDraft {
            name: name.into(),
            ..KeyDraft::default()
        }
    }

    #[test]
    fn a_new_key_keeps_only_the_digest_and_checks_every_field() {
        let hash = KeyHash::of("gk_secret");
        let record = create_key(
            &KeyDraft {
                name: "alice".into(),
                user: Some("alice".into()),
                team: Some(String::new()),
                models: vec!["gpt-4o".into(), "claude".into(), "gpt-4o".into()],
                labels: BTreeMap::from([("env".into(), "prod".into())]),
                expires_at: "2030-01-01T00:00:00Z".into(),
            },
            hash,
            &names(),
            NOW,
            "ops",
        )
        .unwrap();
        assert_eq!(record.hash, hash.to_string());
        assert!(!serde_json::to_string(&record)
            .unwrap()
            .contains("gk_secret"));
        assert_eq!(record.user.as_deref(), Some("alice"));
        assert_eq!(record.team, None, "an empty team is no team");
        assert_eq!(
            record.models,
            Some(vec!["claude".to_string(), "gpt-4o".to_string()])
        );
        assert_eq!(record.expires_at_ms, Some(1_893_456_000_000));
        assert_eq!(record.created_by, "ops");

        let refused = |d: KeyDraft| create_key(&d, hash, &names(), NOW, "ops").unwrap_err();
        assert!(
            matches!(refused(draft("from-config")), AdminError::AlreadyExists(m) if m.contains("config file"))
        );
        assert!(matches!(
            refused(draft("has space")),
            AdminError::InvalidArgument(_)
        ));
        assert!(matches!(refused(draft("")), AdminError::InvalidArgument(_)));
        let unknown = refused(KeyDraft {
            models: vec!["gpt-5".into()],
            ..draft("bob")
        });
        assert_eq!(
            unknown,
            AdminError::InvalidArgument(
                "unknown model 'gpt-5' (not in the config's models)".into()
            )
        );
        let past = refused(KeyDraft {
            expires_at: "2020-01-01T00:00:00Z".into(),
            ..draft("bob")
        });
        assert!(past.to_string().contains("in the past"), "{past}");
        let garbage = refused(KeyDraft {
            expires_at: "tomorrow".into(),
            ..draft("bob")
        });
        assert!(garbage.to_string().contains("RFC 3339"), "{garbage}");
    }

    #[test]
    fn rotation_keeps_the_old_secret_for_the_grace_period_and_forgets_older_ones() {
        let first = KeyHash::of("one");
        let record = create_key(&draft("k"), first, &names(), NOW, "ops").unwrap();
        let second = KeyHash::of("two");
        let rotated = rotate_key(&record, second, 60_000, NOW).unwrap();
        assert_eq!(rotated.hash, second.to_string());
        assert_eq!(
            rotated.previous,
            vec![PreviousSecret {
                hash: first.to_string(),
                valid_until_ms: NOW + 60_000
            }]
        );
        // Rotating again after the grace: the first secret is dropped, the second kept.
        let third = KeyHash::of("three");
        let again = rotate_key(&rotated, third, 60_000, NOW + 120_000).unwrap();
        assert_eq!(
            again.previous,
            vec![PreviousSecret {
                hash: second.to_string(),
                valid_until_ms: NOW + 180_000
            }]
        );
        // No grace: the old secret stops at once.
        assert!(rotate_key(&record, second, 0, NOW)
            .unwrap()
            .previous
            .is_empty());
    }

    #[test]
    fn a_revoked_key_accepts_nothing_and_cannot_change() {
        let record = create_key(&draft("k"), KeyHash::of("one"), &names(), NOW, "ops").unwrap();
        let rotated = rotate_key(&record, KeyHash::of("two"), 60_000, NOW).unwrap();
        let revoked = revoke_key(&rotated, NOW + 1, "sec").unwrap();
        assert_eq!(revoked.revoked_ms, Some(NOW + 1));
        assert_eq!(revoked.revoked_by.as_deref(), Some("sec"));
        assert!(revoked.previous.is_empty());
        for error in [
            revoke_key(&revoked, NOW, "sec").unwrap_err(),
            rotate_key(&revoked, KeyHash::of("x"), 0, NOW).unwrap_err(),
            update_key(&revoked, &KeyUpdate::default(), &names(), NOW).unwrap_err(),
        ] {
            assert!(
                matches!(error, AdminError::FailedPrecondition(_)),
                "{error:?}"
            );
        }
    }

    #[test]
    fn updates_change_only_what_they_name() {
        let record = create_key(
            &KeyDraft {
                user: Some("alice".into()),
                team: Some("red".into()),
                models: vec!["claude".into()],
                ..draft("k")
            },
            KeyHash::of("one"),
            &names(),
            NOW,
            "ops",
        )
        .unwrap();
        let next = update_key(
            &record,
            &KeyUpdate {
                team: Some(String::new()),
                models: Some(Vec::new()),
                ..KeyUpdate::default()
            },
            &names(),
            NOW,
        )
        .unwrap();
        assert_eq!(next.user.as_deref(), Some("alice"));
        assert_eq!(next.team, None);
        assert_eq!(next.models, None);
        assert_eq!(next.hash, record.hash);
    }

    #[test]
    fn budgets_get_a_default_name_and_respect_the_config() {
        let subject = Subject::new(SubjectKind::Team, "research");
        let draft = BudgetDraft {
            name: String::new(),
            subject: subject.clone(),
            usd: Some(100.0),
            tokens: None,
            window: BudgetWindow::Month,
            audit_only: false,
        };
        let record = budget(&draft, &names(), NOW, "ops").unwrap();
        assert_eq!(record.name, "team-research-month");
        assert_eq!(record.scope(), "team:research");
        let refuse = |d: BudgetDraft| budget(&d, &names(), NOW, "ops").unwrap_err();
        assert!(matches!(
            refuse(BudgetDraft {
                name: "monthly".into(),
                ..draft.clone()
            }),
            AdminError::ConfigOwned(_)
        ));
        assert!(refuse(BudgetDraft {
            usd: None,
            ..draft.clone()
        })
        .to_string()
        .contains("set usd, tokens or both"));
        for usd in [0.0, -1.0, f64::NAN, 1e12] {
            assert!(matches!(
                refuse(BudgetDraft {
                    usd: Some(usd),
                    ..draft.clone()
                }),
                AdminError::InvalidArgument(_)
            ));
        }
        // A team id with a space is fine as a subject, but needs an explicit budget name.
        let spaced = BudgetDraft {
            subject: Subject::new(SubjectKind::Team, "R and D"),
            ..draft.clone()
        };
        assert!(matches!(
            refuse(spaced.clone()),
            AdminError::InvalidArgument(_)
        ));
        let named = budget(
            &BudgetDraft {
                name: "rnd".into(),
                ..spaced
            },
            &names(),
            NOW,
            "ops",
        )
        .unwrap();
        assert_eq!(named.scope(), "team:R and D");
    }

    #[test]
    fn metadata_is_for_users_and_teams() {
        let entries = BTreeMap::from([("cost_center".into(), "42".into())]);
        let record = metadata(
            &Subject::new(SubjectKind::User, "bob"),
            &entries,
            NOW,
            "ops",
        )
        .unwrap();
        assert_eq!(record.metadata, entries);
        assert!(metadata(&Subject::new(SubjectKind::Key, "k"), &entries, NOW, "ops").is_err());
        let too_many: BTreeMap<String, String> = (0..=MAX_ENTRIES)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(metadata(&Subject::new(SubjectKind::Team, "t"), &too_many, NOW, "ops").is_err());
    }

    #[test]
    fn subjects_parse_and_print() {
        let subject = Subject::parse("team:research").unwrap();
        assert_eq!(subject, Subject::new(SubjectKind::Team, "research"));
        assert_eq!(subject.to_string(), "team:research");
        assert_eq!(Subject::parse("user:a:b").unwrap().id, "a:b");
        for bad in ["team", "team:", "group:x", ""] {
            assert!(Subject::parse(bad).is_err(), "{bad}");
        }
    }
}
