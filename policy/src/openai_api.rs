//! Gantry's OpenAI-compatible front door: which requests it serves, how a request is planned
//! (alias resolved, body rewritten for the provider), and the error objects clients receive.
//!
//! Nothing here knows about Envoy: the ext_proc adapter turns a [`HeadDecision`] or
//! [`ForwardPlan`] into header mutations, and a [`LocalReply`] into an immediate response.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::guard::{GuardHit, GuardSelection, GuardVerdict};
use crate::json_object::RawObject;
use crate::routing::RequestContext;
use crate::snapshot::{Credential, ModelRoute, Snapshot, TargetMask};

/// `LocalReply::details` of the `GET /v1/models` answer.
pub const MODELS_LIST_DETAILS: &str = "gantry_models_list";

/// The request header Envoy's provider routes match on.
pub const ROUTING_HEADER: &str = "x-gantry-provider";

/// An OpenAI API operation Gantry forwards to providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmApi {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl LlmApi {
    /// The API's name in conditions and webhook calls: `chat_completions`, `completions`,
    /// `embeddings`.
    pub fn name(self) -> &'static str {
        match self {
            LlmApi::ChatCompletions => "chat_completions",
            LlmApi::Completions => "completions",
            LlmApi::Embeddings => "embeddings",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            LlmApi::ChatCompletions => "/v1/chat/completions",
            LlmApi::Completions => "/v1/completions",
            LlmApi::Embeddings => "/v1/embeddings",
        }
    }

    fn from_path(path: &str) -> Option<LlmApi> {
        [
            LlmApi::ChatCompletions,
            LlmApi::Completions,
            LlmApi::Embeddings,
        ]
        .into_iter()
        .find(|api| api.path() == path)
    }

    fn can_stream(self) -> bool {
        !matches!(self, LlmApi::Embeddings)
    }
}

/// A reply Gantry gives itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// JSON body.
    pub body: Bytes,
    /// Short machine-readable reason, e.g. for Envoy's `%RESPONSE_CODE_DETAILS%`.
    pub details: &'static str,
    /// Headers besides `content-type` (e.g. `retry-after`, `x-ratelimit-*`).
    pub headers: Vec<(&'static str, String)>,
}

impl LocalReply {
    /// A reply with an OpenAI-style error object:
    /// `{"error":{"message","type","param","code"}}`.
    pub fn openai_error(
        status: u16,
        error_type: &str,
        code: &'static str,
        param: Option<&str>,
        message: impl Into<String>,
    ) -> LocalReply {
        let body = serde_json::json!({
            "error": {
                "message": message.into(),
                "type": error_type,
                "param": param,
                "code": code,
            }
        });
        LocalReply {
            status,
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            details: code,
            headers: Vec::new(),
        }
    }

    fn invalid_request(
        status: u16,
        code: &'static str,
        param: Option<&str>,
        message: impl Into<String>,
    ) -> LocalReply {
        LocalReply::openai_error(status, "invalid_request_error", code, param, message)
    }

    fn json(status: u16, body: Bytes, details: &'static str) -> LocalReply {
        LocalReply {
            status,
            body,
            details,
            headers: Vec::new(),
        }
    }
}

/// What to do once the request line and headers are known.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadDecision {
    /// An LLM call: wait for the whole body, then [`plan_forward`].
    ReadBody(LlmApi),
    /// Answer now.
    Reply(LocalReply),
}

/// Decides on a request from its head alone.
pub fn decide_on_head(
    snapshot: &Snapshot,
    method: &str,
    path_and_query: &str,
    content_length: Option<u64>,
    end_of_stream: bool,
) -> HeadDecision {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path);
    if path == "/v1/models" {
        return match method {
            "GET" | "HEAD" => HeadDecision::Reply(LocalReply::json(
                200,
                snapshot.models_list_body.clone(),
                MODELS_LIST_DETAILS,
            )),
            _ => HeadDecision::Reply(method_not_allowed(method, path, "GET")),
        };
    }
    let Some(api) = LlmApi::from_path(path) else {
        return HeadDecision::Reply(LocalReply::invalid_request(
            404,
            "unknown_url",
            None,
            format!(
                "Invalid URL ({method} {path}): this gateway serves POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings and GET /v1/models"
            ),
        ));
    };
    if method != "POST" {
        return HeadDecision::Reply(method_not_allowed(method, path, "POST"));
    }
    if let Some(length) = content_length {
        if length > snapshot.max_request_body_bytes {
            return HeadDecision::Reply(too_large(length, snapshot.max_request_body_bytes));
        }
    }
    if end_of_stream {
        return HeadDecision::Reply(LocalReply::invalid_request(
            400,
            "missing_body",
            None,
            format!("{} needs a JSON request body", api.path()),
        ));
    }
    HeadDecision::ReadBody(api)
}

fn method_not_allowed(method: &str, path: &str, allowed: &str) -> LocalReply {
    LocalReply::invalid_request(
        405,
        "method_not_allowed",
        None,
        format!("{method} is not allowed on {path}; use {allowed}"),
    )
}

fn too_large(length: u64, limit: u64) -> LocalReply {
    LocalReply::invalid_request(
        413,
        "request_too_large",
        None,
        format!("request body is {length} bytes; this gateway accepts at most {limit} bytes"),
    )
}

/// What [`ForwardPlan::routing_value`] puts before an alias served through its own cluster
/// (provider names cannot contain it).
pub const TARGETS_ROUTE_PREFIX: char = '@';

/// The request header that, beside [`ROUTING_HEADER`], names which of an alias's targets a
/// request may use (see [`ForwardPlan::targets_value`]); Envoy removes it before the provider.
pub const TARGETS_HEADER: &str = "x-gantry-targets";

/// How to forward one LLM request.
#[derive(Debug)]
pub struct ForwardPlan {
    pub api: LlmApi,
    pub route: Arc<ModelRoute>,
    /// The body to send upstream (the model renamed, `include_usage` added when needed).
    pub body: Vec<u8>,
    /// The client asked for a streamed reply.
    pub stream: bool,
    /// Gantry added `stream_options.include_usage`; strip the usage before the client sees it.
    pub usage_injected: bool,
    /// What the request guards found (already applied to `body` when masked); for logs and
    /// metadata. Never holds the matched text.
    pub guard_hits: Vec<GuardHit>,
    /// The routing rule that picked `route` instead of the model the client asked for.
    pub routed_by: Option<Arc<str>>,
    /// The path to send the request to instead of the client's (Azure's deployment path), if
    /// the provider needs one.
    pub upstream_path: Option<String>,
    /// The request guards this request's `when` conditions left on; the adapter runs the
    /// selected webhook guards ([`GuardPolicy::webhook_run`](crate::guard::GuardPolicy::webhook_run)).
    pub guard_selection: GuardSelection,
    /// The targets this request may use, when their `when` conditions left some out (`None`:
    /// all of them).
    pub eligible_targets: Option<TargetMask>,
}

impl ForwardPlan {
    /// The value of [`ROUTING_HEADER`] that sends the request on: the provider's name, or
    /// `@<alias>` for an alias served through its own cluster (several targets, or a
    /// translated provider), where Gantry's upstream filter adapts each attempt.
    pub fn routing_value(&self) -> std::borrow::Cow<'_, str> {
        if self.route.via_upstream_filter {
            std::borrow::Cow::Owned(format!("{TARGETS_ROUTE_PREFIX}{}", self.route.alias))
        } else {
            std::borrow::Cow::Borrowed(&self.route.provider.name)
        }
    }

    /// The value of [`TARGETS_HEADER`], when the request may use only some of the alias's
    /// targets (their `when` conditions left others out): the hex [`TargetMask`] of those it
    /// may use, which picks the Envoy route to a cluster of just those.
    pub fn targets_value(&self) -> Option<String> {
        self.eligible_targets
            .filter(|_| self.route.via_upstream_filter)
            .map(TargetMask::to_hex)
    }

    /// The header (name, value) that authenticates Gantry to the provider, if it needs one
    /// (never for an alias served through the upstream filter, which sets it per attempt).
    pub fn credential(&self) -> Option<(&'static str, &str)> {
        if self.route.via_upstream_filter {
            return None;
        }
        match &self.route.provider.credential {
            Credential::Header { name, value } => Some((name, value.expose())),
            _ => None,
        }
    }

    /// Headers that may carry the client's own credentials: removed before the request goes
    /// upstream (the provider's credential, if any, is set after).
    pub const CLIENT_CREDENTIAL_HEADERS: [&'static str; 3] =
        ["authorization", "x-api-key", "api-key"];
}

/// Plans the upstream request from the buffered client body, or says why it cannot be sent.
/// Routing rules see no caller and no headers: adapters call [`plan_forward_in`].
pub fn plan_forward(
    snapshot: &Snapshot,
    api: LlmApi,
    body: &[u8],
) -> Result<ForwardPlan, LocalReply> {
    plan_forward_in(snapshot, api, body, &RequestContext::empty())
}

/// [`plan_forward`] with what the adapter knows of the request (caller, method, path,
/// headers), which content-based routing rules may read.
pub fn plan_forward_in(
    snapshot: &Snapshot,
    api: LlmApi,
    body: &[u8],
    request: &RequestContext<'_>,
) -> Result<ForwardPlan, LocalReply> {
    let limit = snapshot.max_request_body_bytes;
    if body.len() as u64 > limit {
        return Err(too_large(body.len() as u64, limit));
    }
    let mut object = RawObject::parse(body).map_err(|e| {
        LocalReply::invalid_request(
            400,
            "invalid_json",
            None,
            format!("request body is not a valid JSON object: {e}"),
        )
    })?;
    let alias = match object.get("model") {
        None => {
            return Err(LocalReply::invalid_request(
                400,
                "missing_model",
                Some("model"),
                "you must provide a model parameter",
            ))
        }
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| {
            LocalReply::invalid_request(
                400,
                "invalid_model",
                Some("model"),
                format!("'model' must be a string, got {}", raw.get()),
            )
        })?,
    };
    // Content-based routing, before the alias is resolved: a rule may also route a name that
    // is no model (e.g. `auto`); without a matching rule, such a name is unknown.
    let mut routed_by = None;
    let alias = match snapshot.routing.pick(api, &alias, &object, request) {
        Some(routed) => {
            routed_by = Some(routed.rule);
            routed.model
        }
        None => alias,
    };
    let Some(route) = snapshot.model(&alias) else {
        return Err(unknown_model(snapshot, &alias));
    };
    if api != LlmApi::ChatCompletions {
        if let Some(target) = route
            .targets
            .iter()
            .find(|t| t.provider.kind.is_translated())
        {
            return Err(LocalReply::invalid_request(
                400,
                "unsupported_for_provider",
                Some("model"),
                format!(
                    "model '{alias}' is served by provider '{}' ({}), which serves chat completions only",
                    target.provider.name,
                    target.provider.kind.as_str()
                ),
            ));
        }
    }
    let eligible = route.eligible_targets(api, &object, request);
    if eligible.is_empty() {
        return Err(LocalReply::openai_error(
            403,
            "permission_error",
            "no_eligible_target",
            Some("model"),
            format!("model '{alias}' has no target that may serve this request (the targets' conditions leave every one out)"),
        ));
    }
    // Every target this request may use lacks its key: say which variable to set.
    let mut usable = (0..route.targets.len())
        .filter(|i| eligible.contains(*i))
        .map(|i| &route.targets[i]);
    let first = usable.next();
    let none_available = first
        .into_iter()
        .chain(usable)
        .all(|t| !t.provider.is_available());
    if let (true, Some(target)) = (none_available, first) {
        if let Credential::Missing { env } = &target.provider.credential {
            return Err(LocalReply::openai_error(
                503,
                "service_unavailable",
                "provider_unavailable",
                Some("model"),
                format!(
                    "model '{alias}' is served by provider '{}', which has no API key: set {env} and restart the gateway",
                    target.provider.name
                ),
            ));
        }
    }

    let stream = if api.can_stream() {
        match object.get("stream") {
            None => false,
            Some(raw) => parse_bool(raw).ok_or_else(|| {
                LocalReply::invalid_request(
                    400,
                    "invalid_stream",
                    Some("stream"),
                    format!("'stream' must be a boolean, got {}", raw.get()),
                )
            })?,
        }
    } else {
        false
    };

    let mut usage_injected = false;
    if stream {
        let mut options = match object.get("stream_options") {
            None => serde_json::Map::new(),
            Some(raw) if raw.get().trim() == "null" => serde_json::Map::new(),
            Some(raw) => {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
                    .map_err(|_| {
                        LocalReply::invalid_request(
                            400,
                            "invalid_stream_options",
                            Some("stream_options"),
                            format!("'stream_options' must be an object, got {}", raw.get()),
                        )
                    })?
            }
        };
        if options.get("include_usage") != Some(&serde_json::Value::Bool(true)) {
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            set(&mut object, "stream_options", &options)?;
            usage_injected = true;
        }
    }
    let guard_selection = snapshot.guards.select(api, &alias, &object, request);
    let guard_hits = if snapshot.guards.has_request_guards() {
        match snapshot
            .guards
            .check_request(api, &mut object, &guard_selection)
        {
            GuardVerdict::Forward { hits } => hits,
            GuardVerdict::Reject { reply, .. } => return Err(reply),
        }
    } else {
        Vec::new()
    };
    // Through the upstream filter, each attempt gets its target's model there.
    if route.upstream_model != alias && !route.via_upstream_filter {
        set(&mut object, "model", &route.upstream_model)?;
    }
    Ok(ForwardPlan {
        api,
        route: route.clone(),
        body: object.to_vec(),
        stream,
        usage_injected,
        guard_hits,
        routed_by,
        guard_selection,
        eligible_targets: (eligible != TargetMask::all(route.targets.len())).then_some(eligible),
        upstream_path: if route.via_upstream_filter {
            None
        } else {
            route.provider.upstream_path(api, &route.upstream_model)
        },
    })
}

fn set<T: serde::Serialize>(
    object: &mut RawObject,
    key: &str,
    value: &T,
) -> Result<(), LocalReply> {
    object.set(key, value).map_err(|e| {
        LocalReply::openai_error(500, "server_error", "internal_error", None, e.to_string())
    })
}

fn parse_bool(raw: &RawValue) -> Option<bool> {
    serde_json::from_str(raw.get()).ok()
}

fn unknown_model(snapshot: &Snapshot, alias: &str) -> LocalReply {
    let names = &snapshot.available_models;
    let available = if names.is_empty() {
        "none".to_string()
    } else if names.len() > 20 {
        format!(
            "{}, ... ({} in all; GET /v1/models lists them)",
            names[..20].join(", "),
            names.len()
        )
    } else {
        names.join(", ")
    };
    LocalReply::invalid_request(
        404,
        "model_not_found",
        Some("model"),
        format!(
            "The model '{alias}' does not exist on this gateway. Available models: {available}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    fn snapshot() -> Snapshot {
        let config = ConfigFile::parse(
            "\
listen: 127.0.0.1:10000
limits: { max_request_body_bytes: 200 }
providers:
  - { name: a, kind: openai, endpoint: 'http://127.0.0.1:18080' }
  - { name: b, kind: openai, endpoint: 'https://api.example.com', api_key_env: B_KEY }
  - { name: c, kind: openai, endpoint: 'https://api.example.org', api_key_env: C_KEY }
models:
  - { name: fast, provider: a, model: mock-small }
  - { name: smart, provider: b, model: big-1 }
  - { name: same, provider: a, model: same }
  - { name: nokey, provider: c, model: x }
",
        )
        .unwrap();
        Snapshot::compile(&config, &|v| (v == "B_KEY").then(|| "sk-b".to_string()))
    }

    fn reply(result: Result<ForwardPlan, LocalReply>) -> (u16, serde_json::Value) {
        let reply = result.expect_err("expected an error reply");
        (reply.status, serde_json::from_slice(&reply.body).unwrap())
    }

    #[test]
    fn head_routes_models_list_llm_calls_and_unknown_paths() {
        let s = snapshot();
        match decide_on_head(&s, "GET", "/v1/models?x=1", None, true) {
            HeadDecision::Reply(r) => {
                assert_eq!(r.status, 200);
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let ids: Vec<_> = v["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["id"].as_str().unwrap())
                    .collect();
                assert_eq!(ids, ["fast", "smart", "same"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide_on_head(&s, "POST", "/v1/chat/completions", Some(10), false),
            HeadDecision::ReadBody(LlmApi::ChatCompletions)
        );
        let status = |d: HeadDecision| match d {
            HeadDecision::Reply(r) => r.status,
            HeadDecision::ReadBody(_) => 0,
        };
        assert_eq!(
            status(decide_on_head(&s, "POST", "/v1/nope", None, false)),
            404
        );
        assert_eq!(
            status(decide_on_head(&s, "GET", "/v1/embeddings", None, true)),
            405
        );
        assert_eq!(
            status(decide_on_head(
                &s,
                "POST",
                "/v1/completions",
                Some(201),
                false
            )),
            413
        );
        assert_eq!(
            status(decide_on_head(&s, "POST", "/v1/completions", None, true)),
            400
        );
    }

    #[test]
    fn rewrites_model_and_injects_key() {
        let s = snapshot();
        let plan = plan_forward(
            &s,
            LlmApi::ChatCompletions,
            br#"{"model":"smart","messages":[]}"#,
        )
        .unwrap();
        assert_eq!(plan.body, br#"{"model":"big-1","messages":[]}"#);
        assert_eq!(plan.route.provider.name, "b");
        assert_eq!(plan.credential(), Some(("authorization", "Bearer sk-b")));
        assert!(!plan.stream && !plan.usage_injected);
        let plan =
            plan_forward(&s, LlmApi::Embeddings, br#"{"model":"same","input":"x"}"#).unwrap();
        assert_eq!(plan.body, br#"{"model":"same","input":"x"}"#);
        assert_eq!(plan.credential(), None);
    }

    #[test]
    fn streaming_gets_include_usage_unless_the_client_asked() {
        let s = snapshot();
        let plan = plan_forward(
            &s,
            LlmApi::ChatCompletions,
            br#"{"model":"fast","stream":true}"#,
        )
        .unwrap();
        assert!(plan.stream && plan.usage_injected);
        assert_eq!(
            plan.body,
            br#"{"model":"mock-small","stream":true,"stream_options":{"include_usage":true}}"#
        );
        let plan = plan_forward(
            &s,
            LlmApi::ChatCompletions,
            br#"{"model":"fast","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(plan.stream && !plan.usage_injected);
        let plan = plan_forward(
            &s,
            LlmApi::Completions,
            br#"{"model":"fast","stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
        )
        .unwrap();
        assert!(plan.usage_injected);
        assert!(String::from_utf8(plan.body)
            .unwrap()
            .contains(r#""stream_options":{"include_usage":true,"x":1}"#));
    }

    #[test]
    fn bad_requests_get_openai_errors_that_name_the_problem() {
        let s = snapshot();
        let (status, body) = reply(plan_forward(&s, LlmApi::ChatCompletions, b"{not json"));
        assert_eq!(status, 400);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_json");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid JSON object"));

        let (status, body) = reply(plan_forward(
            &s,
            LlmApi::ChatCompletions,
            br#"{"model":"gpt-9"}"#,
        ));
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("'gpt-9'") && message.contains("fast, same, smart"),
            "{message}"
        );

        let (status, body) = reply(plan_forward(
            &s,
            LlmApi::ChatCompletions,
            br#"{"messages":[]}"#,
        ));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("missing_model"))
        );
        let (status, _) = reply(plan_forward(&s, LlmApi::ChatCompletions, br#"{"model":7}"#));
        assert_eq!(status, 400);
        let (status, body) = reply(plan_forward(
            &s,
            LlmApi::ChatCompletions,
            br#"{"model":"fast","stream":"yes"}"#,
        ));
        assert_eq!(
            (status, body["error"]["param"].as_str()),
            (400, Some("stream"))
        );
        let (status, body) = reply(plan_forward(
            &s,
            LlmApi::ChatCompletions,
            br#"{"model":"nokey"}"#,
        ));
        assert_eq!(status, 503);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("set C_KEY"));
        let big = format!(r#"{{"model":"fast","input":"{}"}}"#, "x".repeat(300));
        let (status, body) = reply(plan_forward(&s, LlmApi::Embeddings, big.as_bytes()));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (413, Some("request_too_large"))
        );
    }

    #[test]
    fn routing_rules_pick_the_model_before_the_alias_is_resolved() {
        let config = ConfigFile::parse(
            "\
listen: 127.0.0.1:10000
providers:
  - { name: a, kind: openai, endpoint: 'http://127.0.0.1:18080' }
models:
  - { name: fast, provider: a, model: small-1 }
  - { name: smart, provider: a, model: big-1 }
routing:
  - { name: long-chats, when: 'llm.message_count > 2', model: smart }
  - { name: auto, when: \"llm.model == 'auto'\", model: fast }
",
        )
        .unwrap();
        let s = Snapshot::compile(&config, &|_| None);
        let api = LlmApi::ChatCompletions;
        let plan = plan_forward(&s, api, br#"{"model":"fast","messages":[1,2,3]}"#).unwrap();
        assert_eq!(plan.route.alias, "smart");
        assert_eq!(plan.routed_by.as_deref(), Some("long-chats"));
        assert_eq!(plan.body, br#"{"model":"big-1","messages":[1,2,3]}"#);
        let plan = plan_forward(&s, api, br#"{"model":"fast","messages":[1]}"#).unwrap();
        assert_eq!((plan.route.alias.as_str(), plan.routed_by), ("fast", None));
        // A name that is no model, routed by a rule; unrouted, it is unknown.
        let plan = plan_forward(&s, api, br#"{"model":"auto","messages":[]}"#).unwrap();
        assert_eq!(plan.route.alias, "fast");
        let (status, body) = reply(plan_forward(&s, api, br#"{"model":"gpt-9"}"#));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("model_not_found"))
        );

        let bad = ConfigFile::parse(
            "listen: 127.0.0.1:10000\nrouting:\n  - { name: r, when: 'body.x', model: nope }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("routing[0].when") && bad.contains("routing[0].model"),
            "{bad}"
        );
    }

    #[test]
    fn target_conditions_leave_targets_out_or_refuse_the_request() {
        let config = ConfigFile::parse(
            "\
listen: 127.0.0.1:10000
providers:
  - { name: a, kind: openai, endpoint: 'http://127.0.0.1:18080' }
  - { name: b, kind: openai, endpoint: 'http://127.0.0.1:18081', api_key_env: B_KEY }
models:
  - name: split
    targets:
      - { provider: a, model: m, when: \"request.headers['x-tier'] == 'gold'\" }
      - { provider: b, model: m }
  - name: gold-only
    targets:
      - { provider: a, model: m, when: \"'x-tier' in request.headers\" }
",
        )
        .unwrap();
        let s = Snapshot::compile(&config, &|name| (name == "B_KEY").then(|| "k".into()));
        assert!(s.condition_uses().reads_request());
        let api = LlmApi::ChatCompletions;
        let gold_headers = [("x-tier".to_string(), "gold".to_string())];
        let gold = RequestContext {
            headers: &gold_headers,
            ..RequestContext::empty()
        };
        let body = br#"{"model":"split","messages":[]}"#;
        // Every target may serve: no targets header, the full cluster.
        let plan = plan_forward_in(&s, api, body, &gold).unwrap();
        assert_eq!((plan.eligible_targets, plan.targets_value()), (None, None));
        // Target 0 left out (a header that is missing fails the condition): mask 2.
        let plan = plan_forward(&s, api, body).unwrap();
        assert_eq!(plan.targets_value().as_deref(), Some("2"));
        assert_eq!(plan.routing_value(), "@split");

        // Only target 1 may serve, and its provider has no key: 503 naming the variable.
        let keyless = Snapshot::compile(&config, &|_| None);
        let (status, reply_body) = reply(plan_forward(&keyless, api, body));
        assert_eq!(status, 503, "{reply_body}");
        let message = reply_body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("'b'") && message.contains("B_KEY"),
            "{message}"
        );
        let (status, body) = reply(plan_forward(
            &s,
            api,
            br#"{"model":"gold-only","messages":[]}"#,
        ));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("no_eligible_target")),
            "{body}"
        );
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'gold-only'"));
        // A single-target alias that is served needs no targets header.
        let plan =
            plan_forward_in(&s, api, br#"{"model":"gold-only","messages":[]}"#, &gold).unwrap();
        assert_eq!(plan.targets_value(), None);

        let bad = ConfigFile::parse(
            "\
listen: 127.0.0.1:10000
providers:
  - { name: a, kind: openai, endpoint: 'http://127.0.0.1:18080' }
models:
  - name: x
    targets:
      - { provider: a, model: m1, when: 'body.x' }
      - { provider: a, model: m2, when: 'llm.stream' }
      - { provider: a, model: m3, when: 'llm.stream' }
      - { provider: a, model: m4, when: 'llm.stream' }
      - { provider: a, model: m5, when: 'llm.stream' }
",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("models[0].targets[0].when"), "{bad}");
        assert!(
            bad.contains("at most 4 targets may have a `when` condition (got 5)"),
            "{bad}"
        );
    }
}
