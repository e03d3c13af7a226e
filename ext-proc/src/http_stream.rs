//! One HTTP request as ext_proc sees it: a state machine fed one `ProcessingRequest` at a time,
//! answering each with exactly one `ProcessingResponse`.
//!
//! Holds only that request's state. All decisions come from the policy core; this module only
//! translates them into Envoy's header and body mutations.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    processing_mode::BodySendMode, ProcessingMode,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request, processing_response::Response,
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use gantry_policy::admin::RuntimeDirectory;
use gantry_policy::front_door::{FrontDoor, CANONICAL_CHAT_PATH};
use gantry_policy::governance::ledger::{Nanos, SpendOutcome, NANOS_PER_USD};
use gantry_policy::governance::metering::format_usd;
use gantry_policy::governance::prices::TokenCounts;
use gantry_policy::governance::{Caller, GovernancePolicy, Judgement, Metering, ScopeFacts};
use gantry_policy::guard::response::ResponseVerdict;
use gantry_policy::openai_api::{MODELS_LIST_DETAILS, ROUTING_HEADER, TARGETS_HEADER};
use gantry_policy::response_stream::ResponseStream;
use gantry_policy::routing::RequestContext;
use gantry_policy::usage::usage_from_json;
use gantry_policy::{
    decide_on_head, plan_forward_in, ChunkOutput, ForwardPlan, HeadDecision, LlmApi, LocalReply,
    Snapshot, Usage,
};

use crate::governance::{now_ms, GovernanceRuntime};

/// The dynamic metadata namespace Gantry writes (Envoy must list it in `receiving_namespaces`).
pub const METADATA_NAMESPACE: &str = "gantry";

/// Response headers carrying usage on non-streamed replies.
pub const PROMPT_TOKENS_HEADER: &str = "x-gantry-prompt-tokens";
pub const COMPLETION_TOKENS_HEADER: &str = "x-gantry-completion-tokens";
pub const TOTAL_TOKENS_HEADER: &str = "x-gantry-total-tokens";
pub const MODEL_HEADER: &str = "x-gantry-model";
pub const UPSTREAM_MODEL_HEADER: &str = "x-gantry-upstream-model";
/// What a non-streamed reply cost, in USD (when the model has a price).
pub const COST_HEADER: &str = "x-gantry-cost-usd";

enum Phase {
    /// No LLM request in flight (not started, answered locally, or a local reply passing by).
    Idle,
    /// An LLM call whose buffered body is awaited.
    AwaitingBody(LlmApi),
    /// Forwarded to a provider; the response is being followed.
    Forwarded(Box<Exchange>),
}

struct Exchange {
    plan: ForwardPlan,
    response: ResponseBody,
    /// The metering of this request, until it is settled.
    metered: Option<MeteredRequest>,
    /// The provider's status, once the response headers arrived.
    status: Option<u16>,
}

enum ResponseBody {
    /// Not inspected (error statuses, no body, unknown content type).
    Ignored,
    /// JSON read whole for its usage.
    Buffered,
    /// SSE passed on chunk by chunk (usage read, response guards applied).
    Streamed(Box<ResponseStream>),
}

/// A request under a governance policy, from admission to its one settlement.
struct MeteredRequest {
    metering: Metering,
    governance: Arc<GovernanceRuntime>,
    policy: Arc<GovernancePolicy>,
    /// The store holds a reservation for it (false when no budget or rate limit applies, or
    /// when the store was down and the failure mode let the request through).
    reserved: bool,
    request_id: String,
    stream: bool,
}

impl MeteredRequest {
    /// Settles the reservation (if any) with `billed` tokens (`None`: released) and logs the
    /// request. Consumes the metering: a request is settled once.
    fn finish(self, billed: Option<TokenCounts>, status: u16, outcome: SpendOutcome) {
        let now = now_ms();
        let settlement = self
            .reserved
            .then(|| self.metering.settlement(billed.as_ref(), now));
        let record = self.policy.spend_log.then(|| {
            self.metering.spend_record(
                &self.request_id,
                &billed.unwrap_or_default(),
                status,
                outcome,
                self.stream,
                now,
            )
        });
        tracing::debug!(
            reservation = %self.metering.reservation.0,
            outcome = outcome.as_str(),
            status,
            billed = ?billed,
            "request settled"
        );
        self.governance.finish(settlement, record);
    }
}

/// Bodies above this size are estimated (tokenized) on a blocking thread, off the runtime.
const BLOCKING_ESTIMATE_BYTES: usize = 64 * 1024;

/// The dynamic metadata namespace of Envoy's ext_authz filter, where Gantry's ext_authz server
/// leaves the admitted principal (Envoy forwards it with `forwarding_namespaces`).
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// The caller ext_authz admitted, read from its dynamic metadata: what every request needs
/// (subject, team, model allow-list), and with `for_scopes` the rest that governance scopes
/// read (user, key, method, issuer, labels, JWT claims).
fn caller_from_metadata(metadata: Option<&Metadata>, for_scopes: bool) -> Caller {
    let Some(fields) = metadata
        .and_then(|m| m.filter_metadata.get(EXT_AUTHZ_NAMESPACE))
        .map(|s| &s.fields)
    else {
        return Caller::default();
    };
    let text = |key: &str| match fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let allowed_models = match fields.get("allowed_models").and_then(|v| v.kind.as_ref()) {
        Some(Kind::ListValue(list)) => Some(
            list.values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    };
    if !for_scopes {
        return Caller {
            subject: text("subject"),
            team: text("team"),
            allowed_models,
            ..Caller::default()
        };
    }
    let labels = match fields.get("labels").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(labels)) => labels
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
        _ => Default::default(),
    };
    let claims = match fields.get("claims").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(claims)) => Some(
            claims
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), protobuf_to_json(v)))
                .collect(),
        ),
        _ => None,
    };
    Caller {
        method: text("auth_method"),
        subject: text("subject"),
        user: text("user"),
        team: text("team"),
        key: text("key"),
        issuer: text("issuer"),
        labels,
        claims,
        allowed_models,
    }
}

fn protobuf_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), protobuf_to_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(protobuf_to_json).collect())
        }
    }
}

/// What the request head told the metering (filled only under a governance policy).
#[derive(Default)]
struct RequestHead {
    method: String,
    path: String,
    /// Envoy's `x-request-id`.
    request_id: String,
    /// All headers, kept only when a governance scope reads `request.headers`.
    headers: Vec<(String, String)>,
}

/// The state of one ext_proc stream (one HTTP request).
pub struct HttpStream {
    snapshot: Arc<Snapshot>,
    governance: Option<Arc<GovernanceRuntime>>,
    phase: Phase,
    caller: Caller,
    head: RequestHead,
    /// A planned request waiting for its webhook guards ([`HttpStream::resume`]).
    deferred: Option<Box<Deferred>>,
    /// The API the client speaks; not OpenAI's, every reply is converted back to it.
    front_door: FrontDoor,
    /// The model the client asked for (what a converted reply names).
    client_model: String,
    /// A streamed reply being converted for the front door.
    front_stream: Option<Box<dyn gantry_policy::translate::StreamTranslator + Sync>>,
    /// An A2A request (to an agent under `a2a.path`), when this is one.
    agent: Option<Box<crate::a2a::AgentExchange>>,
    /// An MCP request to a server under `mcp_direct.path`, when this is one.
    mcp: Option<Box<crate::mcp_direct::McpExchange>>,
}

/// A request body whose answer waits for webhook guards.
struct Deferred {
    plan: ForwardPlan,
    /// The body as the client sent it (for metering).
    client_body: Vec<u8>,
}

/// How long Envoy may wait for the request body's answer beyond the webhooks' own timeouts.
const WEBHOOK_MARGIN: Duration = Duration::from_millis(500);
/// The longest wait Gantry asks of Envoy: the `max_message_timeout` it renders.
const MAX_OVERRIDE: Duration = Duration::from_secs(30);

impl HttpStream {
    pub fn new(snapshot: Arc<Snapshot>, governance: Option<Arc<GovernanceRuntime>>) -> HttpStream {
        HttpStream {
            snapshot,
            governance,
            phase: Phase::Idle,
            caller: Caller::default(),
            head: RequestHead::default(),
            deferred: None,
            front_door: FrontDoor::OpenAi,
            client_model: String::new(),
            front_stream: None,
            agent: None,
            mcp: None,
        }
    }

    /// Finishes a request body that waited for webhook guards, if one did: the serving loop
    /// calls it before reading the next message. The answer to that body comes from here.
    pub async fn resume(&mut self) -> Option<ProcessingResponse> {
        let Deferred {
            mut plan,
            client_body,
        } = *self.deferred.take()?;
        let snapshot = self.snapshot.clone();
        let run = snapshot.guards.webhook_run(
            plan.api,
            &plan.route.alias,
            &self.caller,
            &plan.body,
            &plan.guard_selection,
        );
        if let Some(mut run) = run {
            loop {
                let call = match run.next_call() {
                    Ok(Some(call)) => call,
                    Ok(None) => break,
                    Err(reply) => return Some(immediate(&reply)),
                };
                let answer = crate::guard_webhook::call(&call).await;
                if let Err(reply) = run.answer(answer) {
                    tracing::debug!(
                        status = reply.status,
                        details = reply.details,
                        "request refused by a webhook guard"
                    );
                    return Some(immediate(&reply));
                }
            }
            let outcome = run.finish();
            if let Some(body) = outcome.body {
                plan.body = body;
            }
            plan.guard_hits.extend(outcome.hits);
        }
        Some(self.forward(plan, &client_body).await)
    }

    /// Answers one message. Every message gets exactly one response, except a request body
    /// that waits for webhook guards: it first gets an `override_message_timeout`, then its
    /// answer from [`HttpStream::resume`].
    pub async fn handle(&mut self, message: ProcessingRequest) -> ProcessingResponse {
        // Only a client of another API needs the chunk again, to convert it.
        let body_chunk = match &message.request {
            Some(Request::ResponseBody(body)) if self.front_door != FrontDoor::OpenAi => {
                Some((body.body.clone(), body.end_of_stream))
            }
            _ => None,
        };
        let response = self.handle_canonical(message).await;
        if self.front_door == FrontDoor::OpenAi {
            return response;
        }
        self.convert_for_front_door(response, body_chunk)
    }

    /// Converts what [`HttpStream::handle_canonical`] answered for a client of another API:
    /// Gantry's own replies, and the provider's reply body (whole or streamed).
    fn convert_for_front_door(
        &mut self,
        mut response: ProcessingResponse,
        body_chunk: Option<(Vec<u8>, bool)>,
    ) -> ProcessingResponse {
        let door = self.front_door;
        match &mut response.response {
            Some(Response::ImmediateResponse(immediate)) => {
                let status = immediate.status.as_ref().map_or(500, |s| s.code as u16);
                let body = std::mem::take(&mut immediate.body);
                let reply = LocalReply {
                    status,
                    body: body.into(),
                    details: "",
                    headers: Vec::new(),
                };
                immediate.body = door.reply(reply).body.to_vec();
            }
            Some(Response::ResponseBody(body_response)) => {
                let Some((original, end_of_stream)) = body_chunk else {
                    return response;
                };
                let Phase::Forwarded(exchange) = &self.phase else {
                    return response;
                };
                let status = exchange.status.unwrap_or(200);
                let common = body_response.response.get_or_insert_with(Default::default);
                let canonical = match common
                    .body_mutation
                    .as_ref()
                    .and_then(|m| m.mutation.as_ref())
                {
                    Some(Mutation::Body(bytes)) => bytes.clone(),
                    _ => original,
                };
                let converted = match &mut self.front_stream {
                    Some(stream) => {
                        let mut out = stream.push(&canonical);
                        if end_of_stream {
                            out.extend(stream.finish());
                        }
                        Some(out)
                    }
                    None if end_of_stream => {
                        door.whole_reply(status, &canonical, &self.client_model)
                    }
                    // A whole reply arrives in one piece (BUFFERED).
                    None => None,
                };
                if let Some(bytes) = converted {
                    common.body_mutation = Some(BodyMutation {
                        mutation: Some(Mutation::Body(bytes)),
                    });
                }
            }
            _ => {}
        }
        response
    }

    async fn handle_canonical(&mut self, message: ProcessingRequest) -> ProcessingResponse {
        match message.request {
            Some(Request::RequestHeaders(headers)) => {
                self.caller = caller_from_metadata(
                    message.metadata_context.as_ref(),
                    self.snapshot.governance.is_some()
                        || self.snapshot.condition_uses().reads_caller()
                        || !self.snapshot.guards.webhook_guards().is_empty()
                        || self.reads_protocol_path(&headers),
                );
                if let Some((response, exchange)) =
                    crate::mcp_direct::on_request_headers(&self.snapshot, &headers, &self.caller)
                {
                    self.mcp = exchange;
                    return response;
                }
                if let Some(policy) = &self.snapshot.a2a {
                    if let Some((response, exchange)) =
                        crate::a2a::on_request_headers(policy, &headers, &self.caller).await
                    {
                        self.agent = exchange;
                        return response;
                    }
                }
                self.on_request_headers(&headers)
            }
            Some(Request::RequestBody(body)) => match (&mut self.agent, &mut self.mcp) {
                (Some(agent), _) => agent.on_request_body(&body).await,
                (_, Some(mcp)) => mcp.on_request_body(&body),
                _ => self.on_request_body(&body).await,
            },
            Some(Request::ResponseHeaders(headers)) => match (&mut self.agent, &mut self.mcp) {
                (Some(agent), _) => agent.on_response_headers(&headers),
                (_, Some(mcp)) => mcp.on_response_headers(&headers),
                _ => self.on_response_headers(&headers),
            },
            Some(Request::ResponseBody(body)) => match (&mut self.agent, &mut self.mcp) {
                (Some(agent), _) => agent.on_response_body(&body),
                (_, Some(mcp)) => mcp.on_response_body(&body),
                _ => self.on_response_body(&body),
            },
            Some(Request::RequestTrailers(_)) => {
                respond(Response::RequestTrailers(TrailersResponse::default()))
            }
            Some(Request::ResponseTrailers(_)) => {
                respond(Response::ResponseTrailers(TrailersResponse::default()))
            }
            None => ProcessingResponse::default(),
        }
    }

    /// Whether the request is under `a2a.path` or `mcp_direct.path`, whose rules read the
    /// whole caller.
    fn reads_protocol_path(&self, headers: &HttpHeaders) -> bool {
        let path = header(headers.headers.as_ref(), ":path").unwrap_or("");
        self.snapshot
            .a2a
            .as_ref()
            .is_some_and(|p| path.starts_with(p.path.as_str()))
            || self
                .snapshot
                .mcp_direct
                .as_ref()
                .is_some_and(|p| path.starts_with(p.path.as_str()))
    }

    fn on_request_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let map = headers.headers.as_ref();
        let method = header(map, ":method").unwrap_or("");
        let path = header(map, ":path").unwrap_or("");
        let content_length = header(map, "content-length").and_then(|v| v.parse().ok());
        // Another API's call is decided on as the canonical one it becomes.
        let path = match FrontDoor::for_path(path.split('?').next().unwrap_or("")) {
            Some(door) => {
                self.front_door = door;
                CANONICAL_CHAT_PATH
            }
            _ => path,
        };
        match decide_on_head(
            &self.snapshot,
            method,
            path,
            content_length,
            headers.end_of_stream,
        ) {
            HeadDecision::Reply(mut reply) => {
                if let (Some(allowed), MODELS_LIST_DETAILS) =
                    (&self.caller.allowed_models, reply.details)
                {
                    // A key limited to some models sees only those.
                    reply.body = self.snapshot.models_list_body_for(allowed);
                }
                tracing::debug!(method, path, status = reply.status, "answered locally");
                immediate(&reply)
            }
            HeadDecision::ReadBody(api) => {
                // Kept for the metering of the request and for conditions (routing rules,
                // guards' `when`) only.
                let governance = self.snapshot.governance.as_ref();
                let conditions = self.snapshot.condition_uses();
                if governance.is_some() || conditions != Default::default() {
                    let keep_headers =
                        governance.is_some_and(|p| p.uses_request()) || conditions.reads_request();
                    self.head = RequestHead {
                        method: method.to_string(),
                        path: path.split('?').next().unwrap_or("").to_string(),
                        request_id: header(map, "x-request-id").unwrap_or("").to_string(),
                        headers: if keep_headers {
                            all_headers(map)
                        } else {
                            Vec::new()
                        },
                    };
                }
                self.phase = Phase::AwaitingBody(api);
                respond(Response::RequestHeaders(HeadersResponse::default()))
            }
        }
    }

    async fn on_request_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let Phase::AwaitingBody(api) = self.phase else {
            return respond(Response::RequestBody(BodyResponse::default()));
        };
        if !body.end_of_stream {
            // Envoy is configured for BUFFERED request bodies: a partial body means the
            // filter config and this server disagree.
            return immediate(&LocalReply::openai_error(
                500,
                "server_error",
                "gantry_misconfigured",
                None,
                "gantry needs whole request bodies (ext_proc request_body_mode: BUFFERED)",
            ));
        }
        self.phase = Phase::Idle;
        let converted;
        let client_body: &[u8] = if self.front_door == FrontDoor::OpenAi {
            &body.body
        } else {
            match self.front_door.canonical_request(&body.body) {
                Ok((canonical, model)) => {
                    self.client_model = model;
                    converted = canonical;
                    &converted
                }
                Err(reply) => return immediate(&reply),
            }
        };
        let request = RequestContext {
            caller: &self.caller,
            method: &self.head.method,
            path: &self.head.path,
            headers: &self.head.headers,
        };
        let plan = match plan_forward_in(&self.snapshot, api, client_body, &request) {
            Ok(plan) => plan,
            Err(reply) => {
                tracing::debug!(
                    status = reply.status,
                    details = reply.details,
                    "request refused"
                );
                return immediate(&reply);
            }
        };
        if let Some(budget) = self.snapshot.guards.webhook_budget(&plan.guard_selection) {
            // Envoy's message_timeout would cut the webhooks short: ask it to wait for them.
            let wait = (budget + WEBHOOK_MARGIN).min(MAX_OVERRIDE);
            self.deferred = Some(Box::new(Deferred {
                plan,
                client_body: client_body.to_vec(),
            }));
            return ProcessingResponse {
                override_message_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: wait.as_secs() as i64,
                    nanos: wait.subsec_nanos() as i32,
                }),
                ..Default::default()
            };
        }
        self.forward(plan, client_body).await
    }

    /// Sends a planned request on: meters it, then rewrites it into the upstream request.
    async fn forward(&mut self, mut plan: ForwardPlan, client_body: &[u8]) -> ProcessingResponse {
        let metered = match self.meter(&plan, client_body).await {
            Ok(metered) => metered,
            Err(reply) => return immediate(&reply),
        };
        let upstream_body = std::mem::take(&mut plan.body);
        let route = &plan.route;
        tracing::debug!(
            model = %route.alias,
            provider = %route.provider.name,
            upstream_model = %route.upstream_model,
            stream = plan.stream,
            "forwarding"
        );
        let mut set_headers = vec![
            set_header(ROUTING_HEADER, &plan.routing_value()),
            set_header("content-length", &upstream_body.len().to_string()),
        ];
        let credential = plan.credential();
        let mut remove_headers: Vec<String> = ForwardPlan::CLIENT_CREDENTIAL_HEADERS
            .iter()
            .filter(|name| credential.is_none_or(|(set, _)| set != **name))
            .map(|name| name.to_string())
            .collect();
        // Which targets may serve is Gantry's to say, never the client's.
        match plan.targets_value() {
            Some(mask) => set_headers.push(set_header(TARGETS_HEADER, &mask)),
            None => remove_headers.push(TARGETS_HEADER.to_string()),
        }
        if let Some((name, value)) = credential {
            set_headers.push(set_header(name, value));
        }
        match (&plan.upstream_path, self.front_door) {
            (Some(path), _) => set_headers.push(set_header(":path", path)),
            // Another API's call goes on as the canonical one.
            (None, FrontDoor::Anthropic) => {
                set_headers.push(set_header(":path", CANONICAL_CHAT_PATH))
            }
            (None, FrontDoor::OpenAi) => {}
        }
        let caller = |value: &Option<String>| string_value(value.as_deref().unwrap_or(""));
        let mut fields = vec![
            ("subject", caller(&self.caller.subject)),
            ("team", caller(&self.caller.team)),
            ("provider", string_value(&route.provider.name)),
            ("model", string_value(&route.alias)),
            ("upstream_model", string_value(&route.upstream_model)),
            (
                "stream",
                Value {
                    kind: Some(Kind::BoolValue(plan.stream)),
                },
            ),
        ];
        if let Some(rule) = &plan.routed_by {
            fields.push(("route_rule", string_value(rule)));
        }
        if !plan.guard_hits.is_empty() {
            fields.push((
                "guard_hits",
                string_value(&gantry_policy::guard::hits_summary(&plan.guard_hits)),
            ));
        }
        if let Some(metered) = &metered {
            let metering = &metered.metering;
            fields.push((
                "estimated_input_tokens",
                number_value(metering.estimate.input_tokens),
            ));
            if !metering.audit_over.is_empty() {
                fields.push((
                    "budgets_over_audit",
                    string_value(&metering.audit_over.join(",")),
                ));
            }
        }
        let metadata = gantry_metadata(fields);
        let common = CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers,
                remove_headers,
            }),
            body_mutation: Some(BodyMutation {
                mutation: Some(Mutation::Body(upstream_body)),
            }),
            clear_route_cache: true,
            ..Default::default()
        };
        self.phase = Phase::Forwarded(Box::new(Exchange {
            plan,
            response: ResponseBody::Ignored,
            metered,
            status: None,
        }));
        ProcessingResponse {
            response: Some(Response::RequestBody(BodyResponse {
                response: Some(common),
            })),
            dynamic_metadata: Some(metadata),
            ..Default::default()
        }
    }

    /// Plans the metering of a request under the snapshot's governance policy and asks the
    /// store to admit it. `Err` is the reply the client gets instead (429, 503, 400).
    async fn meter(
        &self,
        plan: &ForwardPlan,
        body: &[u8],
    ) -> Result<Option<MeteredRequest>, LocalReply> {
        let Some(policy) = self.snapshot.governance.clone() else {
            return Ok(None);
        };
        let Some(governance) = self.governance.clone() else {
            // A snapshot with governance served without a store: refuse rather than let
            // requests go unmetered.
            return Err(LocalReply::openai_error(
                503,
                "server_error",
                "gantry_store_unavailable",
                None,
                "the gateway has budgets configured but no store to keep them; the request was not sent",
            ));
        };
        let now = now_ms();
        let api = plan.api;
        let head = (self.head.method.as_str(), self.head.path.as_str());
        let directory = governance.directory().load_full();
        let planned = if body.len() > BLOCKING_ESTIMATE_BYTES {
            // Tokenizing a large prompt takes milliseconds: not on the runtime's threads.
            let policy = policy.clone();
            let route = plan.route.clone();
            let caller = self.caller.clone();
            let method = self.head.method.clone();
            let path = self.head.path.clone();
            let headers = self.head.headers.clone();
            let body = body.to_vec();
            tokio::task::spawn_blocking(move || {
                plan_metering(
                    &policy,
                    &directory,
                    &caller,
                    &route,
                    (&method, &path),
                    &headers,
                    api,
                    &body,
                    now,
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err(Box::new(LocalReply::openai_error(
                    500,
                    "server_error",
                    "gantry_internal_error",
                    None,
                    format!("estimating the request failed: {e}"),
                )))
            })
        } else {
            plan_metering(
                &policy,
                &directory,
                &self.caller,
                &plan.route,
                head,
                &self.head.headers,
                api,
                body,
                now,
            )
        };
        let mut metering = planned.map_err(|reply| *reply)?;
        let request_id = self.head.request_id.clone();
        let mut reserved = false;
        if metering.needs_admission() {
            match governance.admit(&metering.admission()).await {
                Ok(outcome) => match metering.judge(&outcome) {
                    Judgement::Admitted => reserved = true,
                    Judgement::Refused(reply, outcome) => {
                        let counter = match outcome {
                            SpendOutcome::RateLimited => &governance.stats.rate_limit_refusals,
                            _ => &governance.stats.budget_refusals,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            status = reply.status,
                            outcome = outcome.as_str(),
                            applied = ?metering.applied(),
                            "request refused by governance"
                        );
                        if policy.spend_log {
                            governance.log_spend(metering.spend_record(
                                &request_id,
                                &TokenCounts::default(),
                                reply.status,
                                outcome,
                                plan.stream,
                                now_ms(),
                            ));
                        }
                        return Err(*reply);
                    }
                },
                Err(error) => match metering.store_unavailable(&error.to_string()) {
                    Some(reply) => {
                        governance
                            .stats
                            .store_unavailable_refusals
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, store = governance.store().kind(), "store unreachable: request refused (failure mode closed)");
                        return Err(reply);
                    }
                    None => {
                        governance
                            .stats
                            .store_unavailable_passes
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, store = governance.store().kind(), "store unreachable: request passes unmetered (failure mode open)");
                    }
                },
            }
        }
        if !metering.audit_over.is_empty() {
            governance
                .stats
                .audit_budget_overruns
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(budgets = ?metering.audit_over, "request admitted over audit budgets");
        }
        Ok(Some(MeteredRequest {
            metering,
            governance,
            policy,
            reserved,
            request_id,
            stream: plan.stream,
        }))
    }

    fn on_response_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let Phase::Forwarded(exchange) = &mut self.phase else {
            return respond(Response::ResponseHeaders(HeadersResponse::default()));
        };
        let map = headers.headers.as_ref();
        let status: u16 = header(map, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        exchange.status = Some(status);
        let content_type = header(map, "content-type").unwrap_or("");
        let route = &exchange.plan.route;
        // Through the upstream filter, it has said which target answered.
        let mut set_headers = if route.via_upstream_filter {
            vec![set_header(MODEL_HEADER, &route.alias)]
        } else {
            vec![
                set_header(ROUTING_HEADER, &route.provider.name),
                set_header(MODEL_HEADER, &route.alias),
                set_header(UPSTREAM_MODEL_HEADER, &route.upstream_model),
            ]
        };
        if let Some(metered) = &exchange.metered {
            set_headers.extend(
                metered
                    .metering
                    .headers
                    .iter()
                    .map(|(name, value)| set_header(name, value)),
            );
        }
        let success = (200..300).contains(&status);
        let front_door = self.front_door != FrontDoor::OpenAi;
        let mut remove_headers = Vec::new();
        if front_door {
            // Converted replies change size.
            remove_headers.push("content-length".to_string());
        }
        let mode = if front_door && !success && !headers.end_of_stream {
            // Read only to convert the error for the client's API.
            exchange.response = ResponseBody::Ignored;
            Some(BodySendMode::Buffered)
        } else if !success || headers.end_of_stream {
            None
        } else if content_type.starts_with("text/event-stream") {
            if front_door {
                self.front_stream = self.front_door.stream(&self.client_model);
            }
            exchange.response = ResponseBody::Streamed(Box::new(ResponseStream::selected(
                exchange.plan.api,
                exchange.plan.usage_injected,
                self.snapshot.guards.response_guards(),
                &exchange.plan.guard_selection,
            )));
            Some(BodySendMode::Streamed)
        } else if content_type.starts_with("application/json") {
            exchange.response = ResponseBody::Buffered;
            Some(BodySendMode::Buffered)
        } else {
            None
        };
        // Through the upstream filter, the target that answered (after any failover) is
        // the one the access log names and the spend log bills.
        let served = route
            .via_upstream_filter
            .then(|| {
                Some((
                    header(map, ROUTING_HEADER)?,
                    header(map, UPSTREAM_MODEL_HEADER)?,
                ))
            })
            .flatten();
        if let (Some((provider, model)), Some(metered)) = (served, exchange.metered.as_mut()) {
            metered
                .policy
                .served_by(&mut metered.metering, provider, model);
        }
        let served_by = served.map(|(provider, model)| {
            gantry_metadata([
                ("provider", string_value(provider)),
                ("upstream_model", string_value(model)),
            ])
        });
        if mode.is_none() || !success {
            // No body will be read for its usage: settle now.
            if let Some(metered) = exchange.metered.take() {
                if success {
                    // Success without a readable usage: bill the estimate.
                    let billed = metered.metering.billed_tokens(None, None);
                    metered.finish(Some(billed), status, SpendOutcome::Ok);
                } else {
                    // Providers do not bill refused or failed requests.
                    metered.finish(None, status, SpendOutcome::UpstreamError);
                }
            }
        }
        ProcessingResponse {
            response: Some(Response::ResponseHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers,
                        remove_headers,
                    }),
                    ..Default::default()
                }),
            })),
            mode_override: mode.map(|mode| ProcessingMode {
                response_body_mode: mode as i32,
                ..Default::default()
            }),
            dynamic_metadata: served_by,
            ..Default::default()
        }
    }

    fn on_response_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let Phase::Forwarded(exchange) = &mut self.phase else {
            return respond(Response::ResponseBody(BodyResponse::default()));
        };
        let status = exchange.status.unwrap_or(200);
        match &mut exchange.response {
            ResponseBody::Ignored => respond(Response::ResponseBody(BodyResponse::default())),
            ResponseBody::Buffered => {
                let usage = usage_from_json(&body.body);
                let mut set_headers = Vec::new();
                let mut fields = Vec::new();
                let mut body_mutation = None;
                let guards = self.snapshot.guards.response_guards();
                if !guards.is_empty() {
                    let verdict = guards.check_json_selected(
                        exchange.plan.api,
                        &body.body,
                        &exchange.plan.guard_selection,
                    );
                    if !verdict.hits().is_empty() {
                        fields.push((
                            "response_guard_hits",
                            string_value(&gantry_policy::guard::hits_summary(verdict.hits())),
                        ));
                    }
                    match verdict {
                        ResponseVerdict::Unchanged { .. } => {}
                        ResponseVerdict::Masked { body: masked, .. } => {
                            set_headers
                                .push(set_header("content-length", &masked.len().to_string()));
                            body_mutation = Some(BodyMutation {
                                mutation: Some(Mutation::Body(masked)),
                            });
                        }
                        ResponseVerdict::Rejected { reply, .. } => {
                            // The provider answered (and bills it): settle with its usage.
                            if let Some(metered) = exchange.metered.take() {
                                let tokens = metered.metering.billed_tokens(usage, None);
                                metered.finish(Some(tokens), status, SpendOutcome::Ok);
                            }
                            let mut response = immediate(&reply);
                            response.dynamic_metadata = Some(gantry_metadata(fields));
                            return response;
                        }
                    }
                }
                if let Some(u) = usage {
                    set_headers.extend([
                        set_header(PROMPT_TOKENS_HEADER, &u.prompt_tokens.to_string()),
                        set_header(COMPLETION_TOKENS_HEADER, &u.completion_tokens.to_string()),
                        set_header(TOTAL_TOKENS_HEADER, &u.total_tokens.to_string()),
                    ]);
                    fields.extend(usage_fields(u));
                }
                if let Some(metered) = exchange.metered.take() {
                    let tokens = metered.metering.billed_tokens(usage, None);
                    let cost = metered.metering.cost(&tokens);
                    if metered.metering.price.is_some() {
                        set_headers.push(set_header(COST_HEADER, &format_usd(cost)));
                    }
                    fields.extend(cost_fields(&metered, cost));
                    metered.finish(Some(tokens), status, SpendOutcome::Ok);
                }
                let header_mutation = (!set_headers.is_empty()).then(|| HeaderMutation {
                    set_headers,
                    remove_headers: vec![],
                });
                ProcessingResponse {
                    response: Some(Response::ResponseBody(BodyResponse {
                        response: Some(CommonResponse {
                            header_mutation,
                            body_mutation,
                            ..Default::default()
                        }),
                    })),
                    dynamic_metadata: (!fields.is_empty()).then(|| gantry_metadata(fields)),
                    ..Default::default()
                }
            }
            ResponseBody::Streamed(accountant) => {
                let output = accountant.on_chunk(&body.body, body.end_of_stream);
                let body_mutation = match output {
                    ChunkOutput::Unchanged => None,
                    ChunkOutput::Replace(bytes) => Some(BodyMutation {
                        mutation: Some(Mutation::Body(bytes)),
                    }),
                };
                let mut metadata = None;
                if body.end_of_stream {
                    let usage = accountant.usage();
                    let observed = accountant.text_events();
                    let mut fields: Vec<(&str, Value)> =
                        usage.map(usage_fields).into_iter().flatten().collect();
                    let hits = accountant.guard_hits();
                    if !hits.is_empty() {
                        fields.push((
                            "response_guard_hits",
                            string_value(&gantry_policy::guard::hits_summary(&hits)),
                        ));
                    }
                    if let Some(metered) = exchange.metered.take() {
                        let tokens = metered.metering.billed_tokens(usage, Some(observed));
                        let cost = metered.metering.cost(&tokens);
                        fields.extend(cost_fields(&metered, cost));
                        metered.finish(Some(tokens), status, SpendOutcome::Ok);
                    }
                    metadata = (!fields.is_empty()).then(|| gantry_metadata(fields));
                }
                ProcessingResponse {
                    response: Some(Response::ResponseBody(BodyResponse {
                        response: Some(CommonResponse {
                            body_mutation,
                            ..Default::default()
                        }),
                    })),
                    dynamic_metadata: metadata,
                    ..Default::default()
                }
            }
        }
    }
}

impl Drop for HttpStream {
    /// A stream that ends before its response did (the client went away, Envoy reset the
    /// stream, the upstream broke mid-body) still settles: the reservation is released and the
    /// request is billed its estimated input plus the output seen so far.
    fn drop(&mut self) {
        let Phase::Forwarded(exchange) = &mut self.phase else {
            return;
        };
        let Some(metered) = exchange.metered.take() else {
            return;
        };
        let observed = match &exchange.response {
            ResponseBody::Streamed(accountant) => accountant.text_events(),
            _ => 0,
        };
        let tokens = metered.metering.billed_tokens(None, Some(observed));
        // 499: nginx's "client closed request", the usual code for it in access logs.
        let status = exchange.status.unwrap_or(499);
        tracing::info!(
            reservation = %metered.metering.reservation.0,
            observed_output_tokens = observed,
            "request ended before its response: reservation released"
        );
        metered.finish(Some(tokens), status, SpendOutcome::Aborted);
    }
}

/// Plans the metering of one request (pure; may tokenize a large body).
#[allow(clippy::too_many_arguments)]
fn plan_metering(
    policy: &GovernancePolicy,
    directory: &RuntimeDirectory,
    caller: &Caller,
    route: &gantry_policy::snapshot::ModelRoute,
    (method, path): (&str, &str),
    headers: &[(String, String)],
    api: LlmApi,
    body: &[u8],
    now: i64,
) -> Result<Metering, Box<LocalReply>> {
    let facts = ScopeFacts {
        caller,
        model: &route.alias,
        provider: &route.provider.name,
        upstream_model: &route.upstream_model,
        // Read from the body by the policy, which parses it once.
        end_user: None,
        method,
        path,
        headers,
    };
    policy.plan_with(&facts, api, body, now, directory)
}

fn usage_fields(usage: Usage) -> [(&'static str, Value); 4] {
    [
        ("prompt_tokens", number_value(usage.prompt_tokens)),
        ("completion_tokens", number_value(usage.completion_tokens)),
        ("total_tokens", number_value(usage.total_tokens)),
        ("cached_prompt_tokens", number_value(usage.cached_tokens)),
    ]
}

fn cost_fields(metered: &MeteredRequest, cost: Nanos) -> Vec<(&'static str, Value)> {
    let mut fields = vec![("cost_nanos", number_value(cost.max(0) as u64))];
    if let Some(price) = &metered.metering.price {
        fields.push((
            "cost_usd",
            Value {
                kind: Some(Kind::NumberValue(cost as f64 / NANOS_PER_USD as f64)),
            },
        ));
        fields.push(("price_source", string_value(price.source.as_str())));
    }
    fields
}

/// Every header of a request head, names lower-case as Envoy sends them.
pub(crate) fn all_headers(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    map.map(|m| {
        m.headers
            .iter()
            .filter(|h| !h.key.starts_with(':'))
            .map(|h| {
                let value = if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                };
                (h.key.clone(), value)
            })
            .collect()
    })
    .unwrap_or_default()
}

pub(crate) fn respond(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

pub(crate) fn immediate(reply: &LocalReply) -> ProcessingResponse {
    respond(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(reply.status),
        }),
        headers: Some(HeaderMutation {
            set_headers: std::iter::once(set_header("content-type", "application/json"))
                .chain(
                    reply
                        .headers
                        .iter()
                        .map(|(name, value)| set_header(name, value)),
                )
                .collect(),
            remove_headers: vec![],
        }),
        body: reply.body.to_vec(),
        grpc_status: None,
        details: reply.details.to_string(),
    }))
}

/// A header value as Envoy sent it (`raw_value` on current Envoy, `value` on old ones).
pub(crate) fn header<'a>(map: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let found = map?.headers.iter().find(|h| h.key == name)?;
    if found.raw_value.is_empty() {
        Some(found.value.as_str())
    } else {
        std::str::from_utf8(&found.raw_value).ok()
    }
}

/// A header to set, overwriting any value the client sent. Uses `raw_value`: Envoy applies a
/// value sent in `value` as empty.
pub(crate) fn set_header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

pub(crate) fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn number_value(n: u64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n as f64)),
    }
}

pub(crate) fn gantry_metadata<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Struct {
    let inner = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    Struct {
        fields: [(
            METADATA_NAMESPACE.to_string(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// Adds a string field to metadata made by [`gantry_metadata`].
pub(crate) fn add_gantry_field(metadata: &mut Struct, key: &str, value: &str) {
    if let Some(Value {
        kind: Some(Kind::StructValue(inner)),
    }) = metadata.fields.get_mut(METADATA_NAMESPACE)
    {
        inner.fields.insert(key.to_string(), string_value(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_policy::ConfigFile;

    fn stream() -> HttpStream {
        let config = ConfigFile::parse(
            "\
listen: 127.0.0.1:10000
providers:
  - { name: p, kind: openai, endpoint: 'http://127.0.0.1:18080', api_key_env: P_KEY }
models:
  - { name: fast, provider: p, model: small-1 }
",
        )
        .unwrap();
        let snapshot = Snapshot::compile(&config, &|_| Some("sk-p".into()));
        HttpStream::new(Arc::new(snapshot), None)
    }

    fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
        HttpHeaders {
            headers: Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        value: String::new(),
                        raw_value: v.as_bytes().to_vec(),
                    })
                    .collect(),
            }),
            end_of_stream,
            ..Default::default()
        }
    }

    fn message(request: Request) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(request),
            ..Default::default()
        }
    }

    fn set_headers(response: &CommonResponse) -> Vec<(String, String)> {
        response
            .header_mutation
            .iter()
            .flat_map(|m| &m.set_headers)
            .filter_map(|h| h.header.as_ref())
            .map(|h| {
                (
                    h.key.clone(),
                    String::from_utf8_lossy(&h.raw_value).into_owned(),
                )
            })
            .collect()
    }

    async fn forward(stream: &mut HttpStream, body: &str) -> ProcessingResponse {
        let head = stream
            .handle(message(Request::RequestHeaders(headers(
                &[(":method", "POST"), (":path", "/v1/chat/completions")],
                false,
            ))))
            .await;
        assert!(matches!(head.response, Some(Response::RequestHeaders(_))));
        stream
            .handle(message(Request::RequestBody(HttpBody {
                body: body.as_bytes().to_vec(),
                end_of_stream: true,
                ..Default::default()
            })))
            .await
    }

    #[tokio::test]
    async fn body_response_reroutes_rewrites_and_fixes_content_length() {
        let mut stream = stream();
        let response = forward(&mut stream, r#"{"model":"fast","messages":[]}"#).await;
        let Some(Response::RequestBody(BodyResponse {
            response: Some(common),
        })) = &response.response
        else {
            panic!("unexpected {response:?}");
        };
        assert!(common.clear_route_cache, "the route must be re-picked");
        let new_body = br#"{"model":"small-1","messages":[]}"#.to_vec();
        assert_eq!(
            common.body_mutation,
            Some(BodyMutation {
                mutation: Some(Mutation::Body(new_body.clone()))
            })
        );
        let set = set_headers(common);
        assert!(set.contains(&(ROUTING_HEADER.into(), "p".into())));
        assert!(set.contains(&("content-length".into(), new_body.len().to_string())));
        assert!(set.contains(&("authorization".into(), "Bearer sk-p".into())));
        let removed = &common.header_mutation.as_ref().unwrap().remove_headers;
        assert!(removed.contains(&"x-api-key".to_string()));
        let meta = response.dynamic_metadata.expect("routing metadata");
        assert!(meta.fields.contains_key(METADATA_NAMESPACE));
    }

    #[tokio::test]
    async fn response_mode_follows_content_type_and_status() {
        for (status, content_type, expected) in [
            (
                "200",
                "text/event-stream; charset=utf-8",
                Some(BodySendMode::Streamed),
            ),
            ("200", "application/json", Some(BodySendMode::Buffered)),
            ("500", "application/json", None),
            ("200", "text/plain", None),
        ] {
            let mut stream = stream();
            forward(&mut stream, r#"{"model":"fast","stream":true}"#).await;
            let response = stream
                .handle(message(Request::ResponseHeaders(headers(
                    &[(":status", status), ("content-type", content_type)],
                    false,
                ))))
                .await;
            let mode = response
                .mode_override
                .map(|m| BodySendMode::try_from(m.response_body_mode).unwrap());
            assert_eq!(mode, expected, "{status} {content_type}");
        }
    }

    #[tokio::test]
    async fn buffered_json_reply_yields_usage_headers_and_metadata() {
        let mut stream = stream();
        forward(&mut stream, r#"{"model":"fast"}"#).await;
        stream
            .handle(message(Request::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "application/json")],
                false,
            ))))
            .await;
        let response = stream
            .handle(message(Request::ResponseBody(HttpBody {
                body: br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#
                    .to_vec(),
                end_of_stream: true,
                ..Default::default()
            })))
            .await;
        let Some(Response::ResponseBody(BodyResponse {
            response: Some(common),
        })) = &response.response
        else {
            panic!("unexpected {response:?}");
        };
        assert!(set_headers(common).contains(&(TOTAL_TOKENS_HEADER.into(), "7".into())));
        let meta = response.dynamic_metadata.expect("usage metadata");
        let Some(Kind::StructValue(gantry)) = &meta.fields[METADATA_NAMESPACE].kind else {
            panic!("namespace is not a struct");
        };
        assert_eq!(
            gantry.fields["total_tokens"].kind,
            Some(Kind::NumberValue(7.0))
        );
    }

    #[tokio::test]
    async fn local_replies_and_unknown_messages_pass_untouched() {
        let mut stream = stream();
        // A local reply from another filter: response headers arrive first.
        let response = stream
            .handle(message(Request::ResponseHeaders(headers(
                &[(":status", "401")],
                true,
            ))))
            .await;
        assert!(matches!(
            response.response,
            Some(Response::ResponseHeaders(_))
        ));
        assert!(response.mode_override.is_none());
        let unknown = stream.handle(ProcessingRequest::default()).await;
        assert_eq!(unknown, ProcessingResponse::default());
    }

    #[tokio::test]
    async fn refused_requests_become_immediate_json_responses() {
        let mut stream = stream();
        let response = forward(&mut stream, r#"{"model":"nope"}"#).await;
        let Some(Response::ImmediateResponse(reply)) = response.response else {
            panic!("expected an immediate response");
        };
        assert_eq!(reply.status.map(|s| s.code), Some(404));
        assert_eq!(reply.details, "model_not_found");
        let content_type = &reply.headers.unwrap().set_headers[0];
        assert_eq!(
            content_type.header.as_ref().unwrap().raw_value,
            b"application/json"
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "model_not_found");
    }

    /// A stream under a governance section (`budgets` given), with an embedded store in `dir`.
    fn governed_stream(
        budgets: &str,
        dir: &tempfile::TempDir,
    ) -> (HttpStream, Arc<GovernanceRuntime>, Arc<Snapshot>) {
        let config = ConfigFile::parse(&format!(
            "\
listen: 127.0.0.1:10000
providers:
  - {{ name: p, kind: openai, endpoint: 'http://127.0.0.1:18080' }}
models:
  - {{ name: fast, provider: p, model: small-1 }}
governance:
  store: {{ kind: embedded, path: '{}' }}
  pricing:
    models:
      fast: {{ input: 1000, output: 2000 }}
  budgets:
{budgets}",
            dir.path().join("g.db").display()
        ))
        .unwrap();
        let snapshot = Arc::new(Snapshot::compile(&config, &|_| None));
        let store = gantry_store::EmbeddedStore::open(
            &dir.path().join("g.db"),
            gantry_policy::config::StoreDurability::Normal,
        )
        .unwrap();
        let runtime = GovernanceRuntime::start(Arc::new(store), None);
        let stream = HttpStream::new(snapshot.clone(), Some(runtime.clone()));
        (stream, runtime, snapshot)
    }

    const ROOMY: &str = "    - { name: roomy, scope: '\"global\"', tokens: 100000, window: day }\n";
    /// "hi" from "user" is estimated at 9 input tokens; with max_tokens 10 a request reserves 19.
    const CHAT: &str =
        r#"{"model":"fast","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;

    async fn spend_log(
        runtime: &GovernanceRuntime,
    ) -> Vec<gantry_policy::governance::ledger::SpendRecord> {
        runtime.drain(std::time::Duration::from_secs(5)).await;
        runtime
            .store()
            .spend(&Default::default())
            .await
            .expect("spend log")
    }

    fn response_headers_of(response: &ProcessingResponse) -> Vec<(String, String)> {
        let Some(Response::ResponseHeaders(HeadersResponse {
            response: Some(common),
        })) = &response.response
        else {
            panic!("unexpected {response:?}");
        };
        set_headers(common)
    }

    #[tokio::test]
    async fn admitted_requests_carry_budget_headers_and_settle_with_the_real_usage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut stream, runtime, _) = governed_stream(ROOMY, &dir);
        let response = forward(&mut stream, CHAT).await;
        assert!(matches!(response.response, Some(Response::RequestBody(_))));
        let head = stream
            .handle(message(Request::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "application/json")],
                false,
            ))))
            .await;
        let set = response_headers_of(&head);
        assert!(
            set.contains(&("x-gantry-budget".into(), "roomy".into())),
            "{set:?}"
        );
        assert!(set.contains(&(
            "x-gantry-budget-remaining-tokens".into(),
            (100_000 - 19).to_string()
        )));
        let body = stream
            .handle(message(Request::ResponseBody(HttpBody {
                body: br#"{"usage":{"prompt_tokens":2,"completion_tokens":5,"total_tokens":7}}"#
                    .to_vec(),
                end_of_stream: true,
                ..Default::default()
            })))
            .await;
        let Some(Response::ResponseBody(BodyResponse {
            response: Some(common),
        })) = &body.response
        else {
            panic!("unexpected {body:?}");
        };
        // 2 × $0.001 + 5 × $0.002
        assert!(set_headers(common).contains(&(COST_HEADER.into(), "0.012000".into())));
        drop(stream);
        let records = spend_log(&runtime).await;
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].outcome, SpendOutcome::Ok);
        assert_eq!((records[0].input_tokens, records[0].output_tokens), (2, 5));
        assert_eq!(records[0].cost_nanos, 12_000_000);
    }

    #[tokio::test]
    async fn a_request_over_budget_gets_an_immediate_429_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one reservation of 19 tokens, not two.
        let small = "    - { name: small, scope: '\"global\"', tokens: 30, window: hour }\n";
        let (mut first, runtime, snapshot) = governed_stream(small, &dir);
        let admitted = forward(&mut first, CHAT).await;
        assert!(matches!(admitted.response, Some(Response::RequestBody(_))));
        let mut stream = HttpStream::new(snapshot, Some(runtime.clone()));
        let response = forward(&mut stream, CHAT).await;
        let Some(Response::ImmediateResponse(reply)) = response.response else {
            panic!("expected a refusal: {response:?}");
        };
        assert_eq!(reply.status.map(|s| s.code), Some(429));
        let headers: Vec<String> = reply
            .headers
            .unwrap()
            .set_headers
            .iter()
            .filter_map(|h| h.header.as_ref().map(|h| h.key.clone()))
            .collect();
        assert!(headers.contains(&"retry-after".to_string()), "{headers:?}");
        assert!(
            headers.contains(&"x-gantry-budget".to_string()),
            "{headers:?}"
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "budget_exceeded");
        drop(stream);
        drop(first);
        let records = spend_log(&runtime).await;
        assert!(
            records
                .iter()
                .any(|r| r.outcome == SpendOutcome::BudgetExceeded),
            "{records:?}"
        );
    }

    #[tokio::test]
    async fn upstream_errors_release_and_aborted_streams_bill_what_was_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut failed, runtime, snapshot) = governed_stream(ROOMY, &dir);
        forward(&mut failed, CHAT).await;
        failed
            .handle(message(Request::ResponseHeaders(headers(
                &[(":status", "503"), ("content-type", "application/json")],
                false,
            ))))
            .await;

        let mut aborted = HttpStream::new(snapshot.clone(), Some(runtime.clone()));
        let stream_chat = r#"{"model":"fast","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
        forward(&mut aborted, stream_chat).await;
        aborted
            .handle(message(Request::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "text/event-stream")],
                false,
            ))))
            .await;
        aborted
            .handle(message(Request::ResponseBody(HttpBody {
                body: b"data: {\"choices\":[{\"delta\":{\"content\":\"one\"}}]}\n\n".to_vec(),
                end_of_stream: false,
                ..Default::default()
            })))
            .await;
        // Envoy resets the stream: the client went away.
        drop(aborted);
        drop(failed);

        let records = spend_log(&runtime).await;
        let outcome = |o| records.iter().find(|r| r.outcome == o).expect("record");
        let failed = outcome(SpendOutcome::UpstreamError);
        assert_eq!(
            (failed.status, failed.cost_nanos, failed.output_tokens),
            (503, 0, 0)
        );
        let aborted = outcome(SpendOutcome::Aborted);
        assert_eq!((aborted.input_tokens, aborted.output_tokens), (9, 1));

        // Nothing stays reserved: the next request sees only the aborted one's 10 tokens spent.
        let mut next = HttpStream::new(snapshot, Some(runtime.clone()));
        forward(&mut next, CHAT).await;
        let head = next
            .handle(message(Request::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "application/json")],
                false,
            ))))
            .await;
        assert!(response_headers_of(&head).contains(&(
            "x-gantry-budget-remaining-tokens".into(),
            (100_000 - 10 - 19).to_string()
        )));
    }

    #[tokio::test]
    async fn governance_without_a_store_refuses_rather_than_going_unmetered() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, snapshot) = governed_stream(ROOMY, &dir);
        let mut stream = HttpStream::new(snapshot, None);
        let response = forward(&mut stream, CHAT).await;
        let Some(Response::ImmediateResponse(reply)) = response.response else {
            panic!("expected a refusal: {response:?}");
        };
        assert_eq!(reply.status.map(|s| s.code), Some(503));
        assert_eq!(reply.details, "gantry_store_unavailable");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_prompt_is_estimated_off_the_runtime_and_still_metered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut stream, _runtime, _) = governed_stream(ROOMY, &dir);
        let prompt = "a".repeat(2 * BLOCKING_ESTIMATE_BYTES);
        let body = format!(
            r#"{{"model":"fast","max_tokens":10,"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
        );
        let response = forward(&mut stream, &body).await;
        assert!(matches!(response.response, Some(Response::RequestBody(_))));
        let head = stream
            .handle(message(Request::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "application/json")],
                false,
            ))))
            .await;
        // One token per 3 characters, "user" 2, framing 6, output 10.
        let reserved = (2 * BLOCKING_ESTIMATE_BYTES as i64).div_euclid(3) + 1 + 2 + 6 + 10;
        let remaining = (100_000 - reserved).to_string();
        assert!(response_headers_of(&head)
            .contains(&("x-gantry-budget-remaining-tokens".into(), remaining)));
    }
}
