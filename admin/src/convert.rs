//! Between protobuf messages and the policy's admin types (both ways: the server and the
//! CLI use the same conversions), and errors onto gRPC statuses.

use gantry_policy::admin::{
    AdminError, BudgetRecord, KeyRecord, MetadataRecord, Subject, SubjectKind,
};
use gantry_policy::auth::api_keys::{ApiKey, ApiKeyTable};
use gantry_policy::config::BudgetWindow;
use gantry_policy::governance::ledger::{Nanos, SpendRecord, NANOS_PER_USD};
use gantry_policy::governance::windows::rfc3339_utc;
use gantry_proto::admin::v1 as pb;
use gantry_store::StoreError;
use tonic::Status;

pub fn status(error: AdminError) -> Status {
    match error {
        AdminError::InvalidArgument(m) => Status::invalid_argument(m),
        AdminError::AlreadyExists(m) => Status::already_exists(m),
        AdminError::NotFound(m) => Status::not_found(m),
        AdminError::ConfigOwned(m) | AdminError::FailedPrecondition(m) => {
            Status::failed_precondition(m)
        }
    }
}

pub fn store_status(error: StoreError) -> Status {
    Status::unavailable(format!("the governance store cannot be used: {error}"))
}

pub fn time(ms: Option<i64>) -> String {
    ms.map(rfc3339_utc).unwrap_or_default()
}

pub fn usd(nanos: Nanos) -> f64 {
    nanos as f64 / NANOS_PER_USD as f64
}

pub fn window_to_proto(window: BudgetWindow) -> i32 {
    (match window {
        BudgetWindow::Minute => pb::Window::Minute,
        BudgetWindow::Hour => pb::Window::Hour,
        BudgetWindow::Day => pb::Window::Day,
        BudgetWindow::Week => pb::Window::Week,
        BudgetWindow::Month => pb::Window::Month,
        BudgetWindow::Total => pb::Window::Total,
    }) as i32
}

pub fn window_from_proto(value: i32) -> Result<BudgetWindow, Status> {
    Ok(match pb::Window::try_from(value) {
        Ok(pb::Window::Minute) => BudgetWindow::Minute,
        Ok(pb::Window::Hour) => BudgetWindow::Hour,
        Ok(pb::Window::Day) => BudgetWindow::Day,
        Ok(pb::Window::Week) => BudgetWindow::Week,
        Ok(pb::Window::Month) => BudgetWindow::Month,
        Ok(pb::Window::Total) => BudgetWindow::Total,
        _ => {
            return Err(Status::invalid_argument(
                "window: set one of minute, hour, day, week, month, total",
            ))
        }
    })
}

pub fn subject_to_proto(subject: &Subject) -> pb::Subject {
    pb::Subject {
        kind: (match subject.kind {
            SubjectKind::Key => pb::SubjectKind::Key,
            SubjectKind::User => pb::SubjectKind::User,
            SubjectKind::Team => pb::SubjectKind::Team,
        }) as i32,
        id: subject.id.clone(),
    }
}

pub fn subject_from_proto(subject: Option<&pb::Subject>) -> Result<Subject, Status> {
    let Some(subject) = subject else {
        return Err(Status::invalid_argument(
            "subject: name a key, a user or a team",
        ));
    };
    let kind = match pb::SubjectKind::try_from(subject.kind) {
        Ok(pb::SubjectKind::Key) => SubjectKind::Key,
        Ok(pb::SubjectKind::User) => SubjectKind::User,
        Ok(pb::SubjectKind::Team) => SubjectKind::Team,
        _ => {
            return Err(Status::invalid_argument(
                "subject.kind: set key, user or team",
            ))
        }
    };
    if subject.id.is_empty() {
        return Err(Status::invalid_argument("subject.id is empty"));
    }
    Ok(Subject::new(kind, subject.id.clone()))
}

/// A runtime key as the API shows it.
pub fn runtime_key(record: &KeyRecord, shadowed: bool, now_ms: i64) -> pb::Key {
    let state = if shadowed {
        pb::KeyState::Shadowed
    } else if record.is_revoked() {
        pb::KeyState::Revoked
    } else if record.is_expired(now_ms) {
        pb::KeyState::Expired
    } else {
        pb::KeyState::Active
    };
    pb::Key {
        name: record.name.clone(),
        source: pb::Source::Runtime as i32,
        state: state as i32,
        hash: record.hash.clone(),
        user: record.user.clone(),
        team: record.team.clone(),
        models: record.models.clone().unwrap_or_default(),
        labels: record.labels.clone().into_iter().collect(),
        expires_at: time(record.expires_at_ms),
        created_at: time(Some(record.created_ms)),
        created_by: record.created_by.clone(),
        revoked_at: time(record.revoked_ms),
        revoked_by: record.revoked_by.clone().unwrap_or_default(),
        previous_secrets: record
            .previous
            .iter()
            .filter(|p| p.valid_until_ms > now_ms)
            .map(|p| pb::PreviousSecret {
                hash: p.hash.clone(),
                valid_until: time(Some(p.valid_until_ms)),
            })
            .collect(),
    }
}

/// A key of the config as the API shows it.
pub fn config_key(key: &ApiKey, now_ms: i64) -> pb::Key {
    let state = if !key.enabled {
        pb::KeyState::Disabled
    } else if key.expires_at.is_some_and(|at| now_ms / 1000 >= at) {
        pb::KeyState::Expired
    } else {
        pb::KeyState::Active
    };
    pb::Key {
        name: key.name.clone(),
        source: pb::Source::Config as i32,
        state: state as i32,
        hash: ApiKeyTable::hash_of(key).to_string(),
        user: key.user.clone(),
        team: key.team.clone(),
        models: key.models.clone().unwrap_or_default(),
        labels: key.labels.clone().into_iter().collect(),
        expires_at: key
            .expires_at
            .map(|s| rfc3339_utc(s.saturating_mul(1000)))
            .unwrap_or_default(),
        ..pb::Key::default()
    }
}

pub fn limit(
    usd: Option<f64>,
    tokens: Option<u64>,
    window: BudgetWindow,
    audit_only: bool,
) -> pb::BudgetLimit {
    pb::BudgetLimit {
        usd,
        tokens,
        window: window_to_proto(window),
        audit_only,
    }
}

pub fn runtime_budget(record: &BudgetRecord, shadowed: bool) -> pb::Budget {
    pb::Budget {
        name: record.name.clone(),
        source: pb::Source::Runtime as i32,
        subject: Some(subject_to_proto(&record.subject)),
        scope: record.scope(),
        limit: Some(limit(
            record.usd,
            record.tokens,
            record.window,
            record.audit_only,
        )),
        shadowed_by_config: shadowed,
        updated_at: time(Some(record.updated_ms)),
        updated_by: record.updated_by.clone(),
    }
}

pub fn metadata(record: &MetadataRecord) -> pb::SubjectMetadata {
    pb::SubjectMetadata {
        subject: Some(subject_to_proto(&record.subject)),
        metadata: record.metadata.clone().into_iter().collect(),
        updated_at: time(Some(record.updated_ms)),
        updated_by: record.updated_by.clone(),
    }
}

pub fn spend_record_to_proto(r: &SpendRecord) -> pb::SpendRecord {
    pb::SpendRecord {
        time: rfc3339_utc(r.time_ms),
        time_ms: r.time_ms,
        request_id: r.request_id.clone(),
        subject: r.subject.clone(),
        user: r.user.clone(),
        team: r.team.clone(),
        api_key: r.api_key.clone(),
        model: r.model.clone(),
        upstream_model: r.upstream_model.clone(),
        provider: r.provider.clone(),
        input_tokens: r.input_tokens,
        cached_input_tokens: r.cached_input_tokens,
        output_tokens: r.output_tokens,
        cost_nanos: r.cost_nanos,
        status: u32::from(r.status),
        outcome: r.outcome.as_str().to_string(),
        latency_ms: r.latency_ms,
        stream: r.stream,
    }
}

/// The record a [`spend_record_to_proto`] message came from; the error names what is wrong.
pub fn spend_record_from_proto(r: &pb::SpendRecord) -> Result<SpendRecord, String> {
    let status = u16::try_from(r.status).map_err(|_| {
        format!(
            "spend record {}: status {} is out of range",
            r.request_id, r.status
        )
    })?;
    let outcome =
        serde_json::from_value(serde_json::Value::String(r.outcome.clone())).map_err(|e| {
            format!(
                "spend record {}: outcome '{}': {e}",
                r.request_id, r.outcome
            )
        })?;
    Ok(SpendRecord {
        time_ms: r.time_ms,
        request_id: r.request_id.clone(),
        subject: r.subject.clone(),
        user: r.user.clone(),
        team: r.team.clone(),
        api_key: r.api_key.clone(),
        model: r.model.clone(),
        upstream_model: r.upstream_model.clone(),
        provider: r.provider.clone(),
        input_tokens: r.input_tokens,
        cached_input_tokens: r.cached_input_tokens,
        output_tokens: r.output_tokens,
        cost_nanos: r.cost_nanos,
        status,
        outcome,
        latency_ms: r.latency_ms,
        stream: r.stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_policy::governance::ledger::SpendOutcome;

    #[test]
    fn a_spend_record_survives_the_wire_and_bad_ones_are_named() {
        let record = SpendRecord {
            time_ms: 1_800_000_000_123,
            request_id: "r1".into(),
            subject: "alice".into(),
            user: "alice".into(),
            team: "t".into(),
            api_key: "k".into(),
            model: "m".into(),
            upstream_model: "u".into(),
            provider: "p".into(),
            input_tokens: 3,
            cached_input_tokens: 1,
            output_tokens: 5,
            cost_nanos: 42,
            status: 429,
            outcome: SpendOutcome::BudgetExceeded,
            latency_ms: 7,
            stream: true,
        };
        let wire = spend_record_to_proto(&record);
        assert_eq!(spend_record_from_proto(&wire).unwrap(), record);
        let bad_status = pb::SpendRecord {
            status: 70_000,
            ..wire.clone()
        };
        assert!(spend_record_from_proto(&bad_status)
            .unwrap_err()
            .contains("status 70000"));
        let bad_outcome = pb::SpendRecord {
            outcome: "weird".into(),
            ..wire
        };
        assert!(spend_record_from_proto(&bad_outcome)
            .unwrap_err()
            .contains("outcome 'weird'"));
    }
}
