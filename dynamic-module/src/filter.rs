//! Gantry's HTTP filter logic inside Envoy: the same decisions as the ext_proc server, taken
//! from the same policy core, applied through the module's callbacks.
//!
//! Per request:
//! 1. **Authentication** (when the config has `auth`): API keys by hash; the principal's
//!    identity headers overwrite the client's, credentials are not forwarded, a refusal is a
//!    local reply in the client's protocol. When the auth rules need the body (model
//!    allow-lists, rules over `llm.model`) it runs once the body is buffered.
//! 2. **The head decision** (`decide_on_head`): `GET /v1/models` answered here, unknown paths
//!    and methods refused, LLM calls wait for their body. The MCP bridge's path passes through.
//! 3. **The body** (`plan_forward`): alias resolved, model rewritten, request guards applied
//!    (a reject is a 400 naming the guard; masks rewrite the prompt; hits go to metadata),
//!    `stream_options.include_usage` added to streams; the body is replaced, `content-length`
//!    fixed, the provider's routing header and key set, and the route cache cleared so Envoy
//!    picks the provider's route.
//! 4. **The response**: routing headers added; JSON replies buffered to read their usage into
//!    headers and dynamic metadata; SSE passed on chunk by chunk (usage Gantry asked for is
//!    stripped again), with the usage written to metadata at the end.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_policy::auth::jwt::KeySet;
use gantry_policy::auth::{AuthRequest, Decision, JwksSource};
use gantry_policy::governance::scope::Caller;
use gantry_policy::guard::response::ResponseVerdict;
use gantry_policy::openai_api::{MODELS_LIST_DETAILS, ROUTING_HEADER};
use gantry_policy::response_stream::ResponseStream;
use gantry_policy::routing::RequestContext;
use gantry_policy::usage::usage_from_json;
use gantry_policy::{
    decide_on_head, plan_forward_in, ChunkOutput, ConfigFile, ForwardPlan, HeadDecision, LlmApi,
    LocalReply, Snapshot, Usage,
};

use crate::abi;
use crate::envoy::{Side, Stream};

/// Gantry's dynamic metadata namespace (the access log reads it), as in ext_proc.
pub const METADATA_NAMESPACE: &str = "gantry";
/// Where the principal's facts go, under the name Envoy's ext_authz filter uses, so the access
/// log reads the same keys whichever path authenticated the request.
pub const AUTH_METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";

const PROMPT_TOKENS_HEADER: &str = "x-gantry-prompt-tokens";
const COMPLETION_TOKENS_HEADER: &str = "x-gantry-completion-tokens";
const TOTAL_TOKENS_HEADER: &str = "x-gantry-total-tokens";
const MODEL_HEADER: &str = "x-gantry-model";
const UPSTREAM_MODEL_HEADER: &str = "x-gantry-upstream-model";

/// The filter's compiled config, shared read-only by every worker thread.
pub struct FilterConfig {
    snapshot: Snapshot,
    /// The auth section's decisions read the request body.
    auth_needs_body: bool,
    /// The MCP bridge's path: passed through (authenticated, not processed).
    mcp_path: Option<String>,
    /// `ext_proc.failure_mode: open`: a request whose hook failed (panicked) goes on
    /// unprocessed instead of being answered 500.
    fails_open: bool,
    /// Fault injection for tests: a request carrying this header panics in its request hook
    /// (set through `GANTRY_MODULE_FAULT_HEADER` in Envoy's environment; off otherwise).
    fault_header: Option<String>,
}

/// The environment variable that turns on [`FilterConfig::fault_header`].
pub const FAULT_HEADER_ENV: &str = "GANTRY_MODULE_FAULT_HEADER";

impl FilterConfig {
    /// Compiles a Gantry config (JSON or YAML text); the error names the problem.
    pub fn parse(text: &str) -> Result<FilterConfig, String> {
        let config = ConfigFile::parse(text).map_err(|e| e.to_string())?;
        if let Some(auth) = &config.auth {
            if !auth.jwt.is_empty() {
                return Err(
                    "auth.jwt is not supported by the dynamic module (JWKS fetching needs the ext_authz server): run Gantry in ext_proc mode for JWTs"
                        .into(),
                );
            }
            let client_certificates = config
                .tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca_file.is_some());
            if auth.mtls_identity && client_certificates {
                return Err(
                    "auth.mtls_identity with client certificates (tls.client_ca_file) is not supported by the dynamic module (it does not read them): run Gantry in ext_proc mode for it"
                        .into(),
                );
            }
        }
        let webhook_guards = config
            .guards
            .as_ref()
            .is_some_and(|g| g.request.iter().any(|guard| guard.webhook.is_some()));
        if webhook_guards {
            return Err(
                "webhook guards (guards.request[].webhook) are not supported by the dynamic module (it makes no HTTP calls of its own): run Gantry in ext_proc mode for them"
                    .into(),
            );
        }
        if config.governance.is_some() {
            return Err(
                "governance (budgets, rate limits, spend) is not supported by the dynamic module (it needs the store): run Gantry in ext_proc mode for it"
                    .into(),
            );
        }
        let auth_needs_body = config
            .auth
            .as_ref()
            .is_some_and(|auth| auth.needs_request_body());
        let mcp_path = config.mcp.as_ref().map(|m| m.path().to_string());
        // Provider keys come from Envoy's environment, as `gantry run` passes it on.
        let snapshot = Snapshot::compile(&config, &|name| std::env::var(name).ok());
        let needs_upstream_filter = snapshot.upstream_filter_models();
        if !needs_upstream_filter.is_empty() {
            return Err(format!(
                "models with several targets or a translated provider kind ({}) are not supported by the dynamic module (they need Gantry's upstream filter): run Gantry in ext_proc mode for them",
                needs_upstream_filter.join(", ")
            ));
        }
        Ok(FilterConfig {
            snapshot,
            auth_needs_body,
            mcp_path,
            fails_open: config.ext_proc.failure_mode == gantry_policy::FailureMode::Open,
            fault_header: std::env::var(FAULT_HEADER_ENV)
                .ok()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase()),
        })
    }

    fn is_mcp_path(&self, path: &str) -> bool {
        let Some(prefix) = &self.mcp_path else {
            return false;
        };
        let path = path.split('?').next().unwrap_or("");
        path == prefix
            || path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// No JWT issuers in the module: the key set is always empty, and nothing waits.
struct NoJwks;

impl JwksSource for NoJwks {
    fn current(&self, _issuer: usize) -> Arc<KeySet> {
        Arc::new(KeySet::default())
    }

    fn refetch(&self, _issuer: usize) -> impl std::future::Future<Output = Arc<KeySet>> + Send {
        std::future::ready(Arc::new(KeySet::default()))
    }
}

/// The request line and headers, as the decisions read them.
struct Head {
    method: String,
    path: String,
    host: String,
    scheme: String,
    content_length: Option<u64>,
    headers: HashMap<String, String>,
}

impl Head {
    /// Reads the request head; every header only when authentication needs them (rules and
    /// credentials read any header), else just the four the decisions use.
    fn read(stream: &Stream, all_headers: bool) -> Head {
        if !all_headers {
            let get = |name: &str| stream.header(Side::Request, name);
            return Head {
                method: get(":method").unwrap_or_default(),
                path: get(":path").unwrap_or_default(),
                host: String::new(),
                scheme: String::new(),
                content_length: get("content-length").and_then(|v| v.parse().ok()),
                headers: HashMap::new(),
            };
        }
        let mut headers: HashMap<String, String> = HashMap::new();
        for (name, value) in stream.headers(Side::Request) {
            // Repeated headers are joined, as Envoy's ext_authz request does.
            headers
                .entry(name)
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let take = |name: &str| headers.get(name).cloned().unwrap_or_default();
        Head {
            method: take(":method"),
            path: take(":path"),
            host: take(":authority"),
            scheme: headers
                .get(":scheme")
                .cloned()
                .unwrap_or_else(|| "http".into()),
            content_length: headers.get("content-length").and_then(|v| v.parse().ok()),
            headers,
        }
    }
}

/// Where a request stands.
enum Phase {
    /// Nothing more to do (answered locally, not Gantry's, or a reply passing by).
    Passing,
    /// The body is being buffered: for authentication, for the LLM plan, or both.
    AwaitingBody {
        head: Box<Head>,
        authenticate: bool,
        /// Known when the head decision was already taken.
        api: Option<LlmApi>,
    },
    /// Forwarded to a provider; the response is being followed.
    Forwarded(Box<Exchange>),
}

struct Exchange {
    plan: ForwardPlan,
    response: ResponseBody,
}

enum ResponseBody {
    /// Not inspected (error statuses, no body, other content types).
    Ignored,
    /// JSON, buffered whole for its usage.
    Buffered,
    /// SSE, passed on chunk by chunk.
    Streamed(Box<ResponseStream>),
}

/// The outcome of a step: go on, or a local reply was sent.
enum Step {
    Continue,
    Answered,
}

/// One request's state, from `on_http_filter_new` to `on_http_filter_destroy`.
pub struct StreamFilter {
    config: Arc<FilterConfig>,
    phase: Phase,
    caller: Caller,
}

impl StreamFilter {
    pub fn new(config: Arc<FilterConfig>) -> StreamFilter {
        StreamFilter {
            config,
            phase: Phase::Passing,
            caller: Caller::default(),
        }
    }

    /// Whether a failed request hook lets the request go on.
    pub fn fails_open(&self) -> bool {
        self.config.fails_open
    }

    pub fn on_request_headers(&mut self, stream: &Stream, end_of_stream: bool) -> u32 {
        let config = self.config.clone();
        let all_headers =
            config.snapshot.auth.is_some() || config.snapshot.condition_uses().reads_request();
        let head = Head::read(stream, all_headers);
        if let Some(fault) = &config.fault_header {
            if stream.header(Side::Request, fault).is_some() {
                panic!("fault injected by the {fault} request header");
            }
        }
        if config.snapshot.auth.is_some() {
            if config.auth_needs_body && !end_of_stream {
                self.phase = Phase::AwaitingBody {
                    head: Box::new(head),
                    authenticate: true,
                    api: None,
                };
                return abi::HEADERS_STOP_ITERATION;
            }
            if let Step::Answered = self.authenticate(stream, &head, &[]) {
                return abi::HEADERS_STOP_ITERATION;
            }
        }
        if config.is_mcp_path(&head.path) {
            return abi::HEADERS_CONTINUE;
        }
        match self.decide(stream, &head, end_of_stream) {
            Some(api) => {
                self.phase = Phase::AwaitingBody {
                    head: Box::new(head),
                    authenticate: false,
                    api: Some(api),
                };
                abi::HEADERS_STOP_ITERATION
            }
            None => abi::HEADERS_STOP_ITERATION,
        }
    }

    pub fn on_request_body(&mut self, stream: &Stream, end_of_stream: bool) -> u32 {
        if !matches!(self.phase, Phase::AwaitingBody { .. }) {
            return abi::BODY_CONTINUE;
        }
        if !end_of_stream {
            // Envoy buffers up to the listener's buffer limit, then answers 413 itself.
            return abi::BODY_STOP_ITERATION_AND_BUFFER;
        }
        let Phase::AwaitingBody {
            head,
            authenticate,
            api,
        } = std::mem::replace(&mut self.phase, Phase::Passing)
        else {
            return abi::BODY_CONTINUE;
        };
        let body = stream.body(Side::Request);
        if authenticate {
            if let Step::Answered = self.authenticate(stream, &head, &body) {
                return abi::BODY_STOP_ITERATION_NO_BUFFER;
            }
            if self.config.is_mcp_path(&head.path) {
                return abi::BODY_CONTINUE;
            }
        }
        let api = match api {
            Some(api) => api,
            None => match self.decide(stream, &head, false) {
                Some(api) => api,
                None => return abi::BODY_STOP_ITERATION_NO_BUFFER,
            },
        };
        match self.forward(stream, api, &head, &body) {
            Step::Continue => abi::BODY_CONTINUE,
            Step::Answered => abi::BODY_STOP_ITERATION_NO_BUFFER,
        }
    }

    pub fn on_response_headers(&mut self, stream: &Stream, end_of_stream: bool) -> u32 {
        let Phase::Forwarded(exchange) = &mut self.phase else {
            return abi::HEADERS_CONTINUE;
        };
        let status: u16 = stream
            .header(Side::Response, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let route = &exchange.plan.route;
        stream.set_header(Side::Response, ROUTING_HEADER, Some(&route.provider.name));
        stream.set_header(Side::Response, MODEL_HEADER, Some(&route.alias));
        stream.set_header(
            Side::Response,
            UPSTREAM_MODEL_HEADER,
            Some(&route.upstream_model),
        );
        if !(200..300).contains(&status) || end_of_stream {
            return abi::HEADERS_CONTINUE;
        }
        let content_type = stream
            .header(Side::Response, "content-type")
            .unwrap_or_default();
        if content_type.starts_with("text/event-stream") {
            if exchange.plan.usage_injected
                || !self.config.snapshot.guards.response_guards().is_empty()
            {
                // Chunks may shrink when the usage is stripped.
                stream.set_header(Side::Response, "content-length", None);
            }
            exchange.response = ResponseBody::Streamed(Box::new(ResponseStream::selected(
                exchange.plan.api,
                exchange.plan.usage_injected,
                self.config.snapshot.guards.response_guards(),
                &exchange.plan.guard_selection,
            )));
            abi::HEADERS_CONTINUE
        } else if content_type.starts_with("application/json") {
            // Held until the body is read, so the usage headers can still be added.
            exchange.response = ResponseBody::Buffered;
            abi::HEADERS_STOP_ITERATION
        } else {
            abi::HEADERS_CONTINUE
        }
    }

    pub fn on_response_body(&mut self, stream: &Stream, end_of_stream: bool) -> u32 {
        let Phase::Forwarded(exchange) = &mut self.phase else {
            return abi::BODY_CONTINUE;
        };
        match &mut exchange.response {
            ResponseBody::Ignored => abi::BODY_CONTINUE,
            ResponseBody::Buffered => {
                if !end_of_stream {
                    return abi::BODY_STOP_ITERATION_AND_BUFFER;
                }
                let body = stream.body(Side::Response);
                let guards = self.config.snapshot.guards.response_guards();
                if !guards.is_empty() {
                    let verdict = guards.check_json_selected(
                        exchange.plan.api,
                        &body,
                        &exchange.plan.guard_selection,
                    );
                    if !verdict.hits().is_empty() {
                        let summary = gantry_policy::guard::hits_summary(verdict.hits());
                        stream.set_metadata_string(
                            METADATA_NAMESPACE,
                            "response_guard_hits",
                            &summary,
                        );
                    }
                    match verdict {
                        ResponseVerdict::Unchanged { .. } => {}
                        ResponseVerdict::Masked { body: masked, .. } => {
                            stream.replace_body(Side::Response, &masked);
                            stream.set_header(
                                Side::Response,
                                "content-length",
                                Some(&masked.len().to_string()),
                            );
                        }
                        ResponseVerdict::Rejected { reply, .. } => {
                            if let Some(usage) = usage_from_json(&body) {
                                write_usage(stream, usage);
                            }
                            exchange.response = ResponseBody::Ignored;
                            send_local_reply(stream, &reply);
                            return abi::BODY_STOP_ITERATION_NO_BUFFER;
                        }
                    }
                }
                if let Some(usage) = usage_from_json(&body) {
                    for (name, value) in [
                        (PROMPT_TOKENS_HEADER, usage.prompt_tokens),
                        (COMPLETION_TOKENS_HEADER, usage.completion_tokens),
                        (TOTAL_TOKENS_HEADER, usage.total_tokens),
                    ] {
                        stream.set_header(Side::Response, name, Some(&value.to_string()));
                    }
                    write_usage(stream, usage);
                }
                exchange.response = ResponseBody::Ignored;
                abi::BODY_CONTINUE
            }
            ResponseBody::Streamed(accountant) => {
                let chunk = stream.received_chunk(Side::Response);
                if let ChunkOutput::Replace(bytes) = accountant.on_chunk(&chunk, end_of_stream) {
                    stream.replace_received_chunk(Side::Response, &bytes);
                }
                if end_of_stream {
                    if let Some(usage) = accountant.usage() {
                        write_usage(stream, usage);
                    }
                    let hits = accountant.guard_hits();
                    if !hits.is_empty() {
                        let summary = gantry_policy::guard::hits_summary(&hits);
                        stream.set_metadata_string(
                            METADATA_NAMESPACE,
                            "response_guard_hits",
                            &summary,
                        );
                    }
                }
                abi::BODY_CONTINUE
            }
        }
    }

    /// Authenticates the caller; a refusal is answered here.
    fn authenticate(&mut self, stream: &Stream, head: &Head, body: &[u8]) -> Step {
        let Some(auth) = self.config.snapshot.auth.clone() else {
            return Step::Continue;
        };
        let source_address = stream.source_ip();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let request = AuthRequest {
            method: &head.method,
            path: &head.path,
            host: &head.host,
            scheme: &head.scheme,
            headers: &head.headers,
            source_address: &source_address,
            peer_principal: "",
            peer_certificate: "",
            body,
            now,
        };
        // Without JWT issuers the check never waits: polling it once completes it.
        match futures::executor::block_on(auth.check(&request, &NoJwks)) {
            Decision::Allow(allowed) => {
                for name in &allowed.remove_headers {
                    stream.set_header(Side::Request, name, None);
                }
                for (name, value) in &allowed.set_headers {
                    stream.set_header(Side::Request, name, Some(value));
                }
                for (key, value) in &allowed.metadata {
                    if let Some(text) = value.as_str() {
                        stream.set_metadata_string(AUTH_METADATA_NAMESPACE, key, text);
                    }
                }
                if let Some(principal) = &allowed.principal {
                    let key = principal.api_key.as_ref();
                    self.caller = Caller {
                        method: Some(principal.method.as_str().to_string()),
                        subject: Some(principal.subject.clone()),
                        user: principal.user.clone(),
                        team: principal.team.clone(),
                        key: principal.key.clone(),
                        issuer: principal.issuer.clone(),
                        labels: key
                            .map(|k| {
                                k.labels
                                    .iter()
                                    .map(|(n, v)| (n.clone(), v.clone()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        claims: principal.claims.as_ref().map(|c| (**c).clone()),
                        allowed_models: key.and_then(|k| k.models.clone()),
                    };
                }
                Step::Continue
            }
            Decision::Deny(denial) => {
                stream.set_metadata_string(AUTH_METADATA_NAMESPACE, "denied", denial.code);
                let mut headers = vec![("content-type", "application/json")];
                if let Some(challenge) = &denial.www_authenticate {
                    headers.push(("www-authenticate", challenge.as_str()));
                }
                stream.send_response(
                    denial.status,
                    &headers,
                    &denial.body,
                    &format!("gantry_{}", denial.code),
                );
                Step::Answered
            }
        }
    }

    /// The head decision: `Some(api)` when the body is needed, `None` when answered here.
    fn decide(&mut self, stream: &Stream, head: &Head, end_of_stream: bool) -> Option<LlmApi> {
        let snapshot = &self.config.snapshot;
        let path = head.path.split('?').next().unwrap_or("");
        if let Some(door) = gantry_policy::front_door::FrontDoor::for_path(path) {
            // Said in the client's own API, so its SDK shows why.
            let reply = door.reply(LocalReply::openai_error(
                404,
                "invalid_request_error",
                "unsupported_api",
                None,
                format!(
                    "{path} is served when Gantry runs in ext_proc mode; this gateway runs Gantry's dynamic module, which serves the OpenAI API only"
                ),
            ));
            send_local_reply(stream, &reply);
            return None;
        }
        match decide_on_head(
            snapshot,
            &head.method,
            &head.path,
            head.content_length,
            end_of_stream,
        ) {
            HeadDecision::ReadBody(api) => Some(api),
            HeadDecision::Reply(mut reply) => {
                if let (Some(allowed), MODELS_LIST_DETAILS) =
                    (&self.caller.allowed_models, reply.details)
                {
                    // A key limited to some models sees only those.
                    reply.body = snapshot.models_list_body_for(allowed);
                }
                send_local_reply(stream, &reply);
                None
            }
        }
    }

    /// Plans the upstream request and rewrites this one into it, or answers why not.
    fn forward(&mut self, stream: &Stream, api: LlmApi, head: &Head, body: &[u8]) -> Step {
        let headers: Vec<(String, String)> =
            if self.config.snapshot.condition_uses().reads_request() {
                head.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            };
        let path = head.path.split('?').next().unwrap_or("");
        let request = RequestContext {
            caller: &self.caller,
            method: &head.method,
            path,
            headers: &headers,
        };
        let mut plan = match plan_forward_in(&self.config.snapshot, api, body, &request) {
            Ok(plan) => plan,
            Err(reply) => {
                send_local_reply(stream, &reply);
                return Step::Answered;
            }
        };
        let upstream_body = std::mem::take(&mut plan.body);
        stream.replace_body(Side::Request, &upstream_body);
        stream.set_header(
            Side::Request,
            "content-length",
            Some(&upstream_body.len().to_string()),
        );
        let route = &plan.route;
        stream.set_header(Side::Request, ROUTING_HEADER, Some(&route.provider.name));
        for name in ForwardPlan::CLIENT_CREDENTIAL_HEADERS {
            stream.set_header(Side::Request, name, None);
        }
        if let Some((name, value)) = plan.credential() {
            stream.set_header(Side::Request, name, Some(value));
        }
        if let Some(path) = &plan.upstream_path {
            stream.set_header(Side::Request, ":path", Some(path));
        }
        stream.clear_route_cache();

        let ns = METADATA_NAMESPACE;
        let caller = |value: &Option<String>| value.clone().unwrap_or_default();
        stream.set_metadata_string(ns, "subject", &caller(&self.caller.subject));
        stream.set_metadata_string(ns, "team", &caller(&self.caller.team));
        stream.set_metadata_string(ns, "provider", &route.provider.name);
        stream.set_metadata_string(ns, "model", &route.alias);
        stream.set_metadata_string(ns, "upstream_model", &route.upstream_model);
        stream.set_metadata_bool(ns, "stream", plan.stream);
        if let Some(rule) = &plan.routed_by {
            stream.set_metadata_string(ns, "route_rule", rule);
        }
        if !plan.guard_hits.is_empty() {
            let summary = gantry_policy::guard::hits_summary(&plan.guard_hits);
            stream.set_metadata_string(ns, "guard_hits", &summary);
        }
        self.phase = Phase::Forwarded(Box::new(Exchange {
            plan,
            response: ResponseBody::Ignored,
        }));
        Step::Continue
    }
}

fn write_usage(stream: &Stream, usage: Usage) {
    let ns = METADATA_NAMESPACE;
    stream.set_metadata_number(ns, "prompt_tokens", usage.prompt_tokens as f64);
    stream.set_metadata_number(ns, "completion_tokens", usage.completion_tokens as f64);
    stream.set_metadata_number(ns, "total_tokens", usage.total_tokens as f64);
    stream.set_metadata_number(ns, "cached_prompt_tokens", usage.cached_tokens as f64);
}

pub fn send_local_reply(stream: &Stream, reply: &LocalReply) {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(reply.headers.iter().map(|(k, v)| (*k, v.as_str())));
    stream.send_response(reply.status, &headers, &reply.body, reply.details);
}
