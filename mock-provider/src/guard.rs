//! The guard services the mock stands in for: the OpenAI moderation API (a paid provider's
//! endpoint) and a Gantry-format guard webhook, both steered by words in the texts.
//!
//! - `POST /v1/moderations`: a text is flagged for `violence` when it contains `kill` or
//!   `attack`, for `harassment` when it contains `idiot` (case-insensitive).
//! - `POST /gantry/guard` (Gantry's webhook format): `WEBHOOK-REJECT` in a text rejects it,
//!   `WEBHOOK-SLOW` makes the answer wait [`SLOW_GUARD`], `WEBHOOK-GARBAGE` answers a body
//!   that is no verdict, `WEBHOOK-500` answers HTTP 500, `mask-me` is masked as
//!   `[masked-by-webhook]`; anything else passes.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::handler::ApiError;
// The moderation categories the mock reports: the OpenAI API's, as the policy knows them.
use gantry_policy::config::MODERATION_CATEGORIES as CATEGORIES;

/// How long `WEBHOOK-SLOW` keeps the guard webhook from answering.
pub const SLOW_GUARD: Duration = Duration::from_secs(5);

/// Whether a guard webhook request should be answered late.
pub(crate) fn is_slow(body: &[u8]) -> bool {
    body.windows(b"WEBHOOK-SLOW".len())
        .any(|w| w == b"WEBHOOK-SLOW")
}

pub(crate) fn moderations(body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the body is not JSON: {e}")))?;
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => {
            return Err(
                ApiError::invalid_request("input must be a string or an array of strings")
                    .with_param("input"),
            )
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    let results: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let lower = text.to_lowercase();
            let violence = lower.contains("kill") || lower.contains("attack");
            let harassment = lower.contains("idiot");
            let mut categories = Map::new();
            let mut scores = Map::new();
            for name in CATEGORIES {
                let flagged = match *name {
                    "violence" => violence,
                    "harassment" => harassment,
                    _ => false,
                };
                categories.insert(name.to_string(), Value::Bool(flagged));
                scores.insert(name.to_string(), json!(if flagged { 0.93 } else { 0.0001 }));
            }
            json!({
                "flagged": violence || harassment,
                "categories": categories,
                "category_scores": scores,
            })
        })
        .collect();
    Ok(Json(json!({"id": "modr-mock", "model": model, "results": results})).into_response())
}

pub(crate) fn gantry_guard(body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the body is not JSON: {e}")))?;
    let texts: Vec<&str> = request
        .get("texts")
        .and_then(Value::as_array)
        .map(|texts| {
            texts
                .iter()
                .filter_map(|t| t.get("text").and_then(Value::as_str))
                .collect()
        })
        .ok_or_else(|| ApiError::invalid_request("texts must be a list").with_param("texts"))?;
    if texts.iter().any(|t| t.contains("WEBHOOK-500")) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "mock_error",
            "the guard webhook was asked to fail",
        ));
    }
    if texts.iter().any(|t| t.contains("WEBHOOK-GARBAGE")) {
        return Ok((StatusCode::OK, "this is no verdict").into_response());
    }
    if let Some(index) = texts.iter().position(|t| t.contains("WEBHOOK-REJECT")) {
        return Ok(Json(json!({
            "verdict": "reject",
            "reason": "the text asks to be rejected",
            "index": index,
        }))
        .into_response());
    }
    if texts.iter().any(|t| t.contains("mask-me")) {
        let masked: Vec<Value> = texts
            .iter()
            .map(|t| {
                if t.contains("mask-me") {
                    Value::String(t.replace("mask-me", "[masked-by-webhook]"))
                } else {
                    Value::Null
                }
            })
            .collect();
        return Ok(Json(json!({"verdict": "mask", "texts": masked})).into_response());
    }
    Ok(Json(json!({"verdict": "pass"})).into_response())
}
