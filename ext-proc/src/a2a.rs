//! A2A traffic as ext_proc sees it: requests under `<a2a.path>/<agent>/` and the registry at
//! `<a2a.path>`. The decisions are [`A2aPolicy`]'s; this module maps them onto Envoy's
//! messages, makes the lookups the policy asks for (webhook hosts' addresses, the registry's
//! card fetches), and counts requests per agent, method and outcome for `/metrics`.
//!
//! Streams (`SendStreamingMessage`, `SubscribeToTask`) are never read: their response body
//! stays in Envoy's pass-through mode, so each event reaches the client when the agent sends it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    processing_mode::BodySendMode, ProcessingMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_response::Response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, HttpBody, HttpHeaders, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::Struct;
use gantry_policy::a2a::tasks::{created_task, TaskOwners};
use gantry_policy::a2a::{
    A2aMethod, A2aPolicy, A2aRoute, Admitted, Agent, AgentHead, CallFacts, FetchedCard,
    PendingBody, PublicOrigin, CARD_SIGNATURES_HEADER,
};
use gantry_policy::governance::Caller;
use gantry_policy::mcp::authz::McpCaller;
use gantry_policy::openai_api::{ROUTING_HEADER, TARGETS_HEADER};
use gantry_policy::sse::{single_data_payload, SseFramer};

use crate::http_stream::{
    add_gantry_field, gantry_metadata, header, immediate, respond, set_header, string_value,
};

/// How long a webhook host's lookup may take (the body's answer waits for it).
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(700);
/// How long the registry waits for one agent's card.
const CARD_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest card the registry reads.
const MAX_CARD_BYTES: usize = 1024 * 1024;

/// What one A2A request is, from its head to its reply.
pub(crate) struct AgentExchange {
    policy: Arc<A2aPolicy>,
    agent: Arc<Agent>,
    caller: McpCaller,
    /// Request headers, kept only when rules read them.
    headers: Vec<(String, String)>,
    public_base: String,
    state: AgentState,
    /// The operation, once known (for metrics and the access log).
    method: Option<A2aMethod>,
}

enum AgentState {
    AwaitingBody(PendingBody),
    /// Forwarded; `card` says the reply is a card to rewrite (`Result` one for a JSON-RPC
    /// `GetExtendedAgentCard`).
    Forwarded {
        card: CardReply,
    },
    /// The reply's body is being rewritten.
    RewritingBody {
        card: CardReply,
    },
    /// A send's answer is read (not changed) for the task it creates: whole (`None`) or, for
    /// a stream, until its first event names the task.
    LearningTask(Option<SseFramer>),
}

fn task_owners() -> &'static Mutex<TaskOwners> {
    static OWNERS: OnceLock<Mutex<TaskOwners>> = OnceLock::new();
    OWNERS.get_or_init(Default::default)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CardReply {
    None,
    Whole,
    InJsonRpcResult,
}

/// The principal A2A rules see, from what ext_authz admitted.
pub(crate) fn principal(caller: &Caller) -> McpCaller {
    McpCaller {
        method: caller.method.clone().unwrap_or_else(|| "none".into()),
        subject: caller.subject.clone().unwrap_or_default(),
        user: caller.user.clone().unwrap_or_default(),
        team: caller.team.clone().unwrap_or_default(),
        key: caller.key.clone().unwrap_or_default(),
    }
}

fn origin(map: Option<&HeaderMap>) -> PublicOrigin<'_> {
    PublicOrigin {
        forwarded_proto: header(map, "x-forwarded-proto"),
        forwarded_host: header(map, "x-forwarded-host"),
        authority: header(map, ":authority"),
    }
}

/// Handles request headers on an A2A path. `None`: not an A2A path.
pub(crate) async fn on_request_headers(
    policy: &Arc<A2aPolicy>,
    headers: &HttpHeaders,
    caller: &Caller,
) -> Option<(ProcessingResponse, Option<Box<AgentExchange>>)> {
    let map = headers.headers.as_ref();
    let method = header(map, ":method").unwrap_or("");
    let path = header(map, ":path").unwrap_or("");
    let route = policy.route(method, path)?;
    let principal = principal(caller);
    let kept = if policy.rules_read_headers() {
        crate::http_stream::all_headers(map)
    } else {
        Vec::new()
    };
    let (agent, rest) = match route {
        A2aRoute::Registry => {
            let reply = registry(policy, &origin(map), &principal, &kept).await;
            return Some((immediate(&reply), None));
        }
        A2aRoute::Agent { agent, rest } => (agent.clone(), rest),
    };
    let head = policy.on_head(
        &agent,
        method,
        rest,
        header(map, gantry_policy::a2a::protocol::VERSION_HEADER),
        &principal,
        &kept,
    );
    let public_base = policy.public_base(&agent, &origin(map));
    let mut exchange = Box::new(AgentExchange {
        policy: policy.clone(),
        agent,
        caller: principal,
        headers: kept,
        public_base,
        state: AgentState::Forwarded {
            card: CardReply::None,
        },
        method: None,
    });
    let mut set = exchange.upstream_headers();
    // Gantry's own routing headers mean nothing here; a client's copy does not travel on.
    let mut remove = vec![ROUTING_HEADER.to_string(), TARGETS_HEADER.to_string()];
    let mut clear_route_cache = false;
    let response = match head {
        AgentHead::Reply(refused) => {
            return Some((
                exchange.refuse(refused.facts.as_deref(), &refused.reply),
                None,
            ))
        }
        AgentHead::Card { upstream_path } => {
            exchange.method = Some(A2aMethod::GetAgentCard);
            exchange.state = AgentState::Forwarded {
                card: CardReply::Whole,
            };
            // The card is rewritten, so a cached copy of the agent's is no answer.
            remove.extend(["if-none-match".to_string(), "if-modified-since".to_string()]);
            if let Some(path) = upstream_path {
                set.push(set_header(":path", &path));
                clear_route_cache = true;
            }
            None
        }
        AgentHead::Forward(facts) => {
            if let Err(reply) = exchange.check_task_owner(&facts, &serde_json::Value::Null) {
                return Some((exchange.refuse(Some(&facts), &reply), None));
            }
            exchange.method = Some(facts.method);
            if facts.method == A2aMethod::GetExtendedAgentCard {
                exchange.state = AgentState::Forwarded {
                    card: CardReply::Whole,
                };
            }
            Some(call_metadata(&exchange.agent.name, &facts))
        }
        AgentHead::ReadBody(pending) => {
            exchange.state = AgentState::AwaitingBody(pending);
            None
        }
    };
    let processing = ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers: set,
                    remove_headers: remove,
                }),
                clear_route_cache,
                ..Default::default()
            }),
        })),
        dynamic_metadata: response,
        ..Default::default()
    };
    Some((processing, Some(exchange)))
}

impl AgentExchange {
    fn upstream_headers(&self) -> Vec<envoy_types::pb::envoy::config::core::v3::HeaderValueOption> {
        self.agent
            .upstream_headers()
            .iter()
            .map(|(name, value)| set_header(name, value))
            .collect()
    }

    pub(crate) async fn on_request_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let AgentState::AwaitingBody(pending) = &self.state else {
            return respond(Response::RequestBody(BodyResponse::default()));
        };
        let admitted = match self.policy.on_body(
            &self.agent,
            pending,
            &body.body,
            &self.caller,
            &self.headers,
        ) {
            Ok(admitted) => admitted,
            Err(refused) => return self.refuse(refused.facts.as_deref(), &refused.reply),
        };
        self.method = Some(admitted.facts.method);
        if let Err(reply) = self.check_task_owner(&admitted.facts, &admitted.id) {
            return self.refuse(Some(&admitted.facts), &reply);
        }
        if let Err(reply) = self.check_webhook_hosts(&admitted).await {
            return self.refuse(Some(&admitted.facts), &reply);
        }
        let card = if admitted.facts.method == A2aMethod::GetExtendedAgentCard {
            match admitted.facts.binding {
                gantry_policy::a2a::Binding::JsonRpc => CardReply::InJsonRpcResult,
                _ => CardReply::Whole,
            }
        } else {
            CardReply::None
        };
        self.state = AgentState::Forwarded { card };
        ProcessingResponse {
            response: Some(Response::RequestBody(BodyResponse::default())),
            dynamic_metadata: Some(call_metadata(&self.agent.name, &admitted.facts)),
            ..Default::default()
        }
    }

    fn check_task_owner(
        &self,
        facts: &CallFacts,
        id: &serde_json::Value,
    ) -> Result<(), gantry_policy::LocalReply> {
        let owners = task_owners().lock().unwrap_or_else(|e| e.into_inner());
        self.policy
            .check_task_owner(&self.agent, facts, id, &self.caller, &owners)
    }

    fn learn_task(&self, answer: &[u8]) -> bool {
        let Some(task) = serde_json::from_slice::<serde_json::Value>(answer)
            .ok()
            .and_then(|v| created_task(&v))
        else {
            return false;
        };
        let mut owners = task_owners().lock().unwrap_or_else(|e| e.into_inner());
        owners.record(&self.agent.name, &task, &self.caller.binding());
        true
    }

    /// Answers for the agent: counted, and in the access log with what is known of the call.
    fn refuse(
        &self,
        facts: Option<&CallFacts>,
        reply: &gantry_policy::LocalReply,
    ) -> ProcessingResponse {
        let method = facts.map(|f| f.method).or(self.method);
        record(&self.agent.name, method, outcome_of_reply(reply));
        let mut response = immediate(reply);
        let mut metadata = match facts {
            Some(facts) => call_metadata(&self.agent.name, facts),
            None => agent_metadata(&self.agent.name),
        };
        add_gantry_field(&mut metadata, "a2a_refused", reply.details);
        response.dynamic_metadata = Some(metadata);
        response
    }

    async fn check_webhook_hosts(
        &self,
        admitted: &Admitted,
    ) -> Result<(), gantry_policy::LocalReply> {
        for (host, port) in &admitted.resolve {
            let lookup = tokio::time::timeout(
                LOOKUP_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await;
            let addresses: Result<Vec<IpAddr>, String> = match lookup {
                Ok(Ok(addrs)) => Ok(addrs.map(|a| a.ip()).collect()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    LOOKUP_TIMEOUT.as_millis()
                )),
            };
            let addresses = addresses.as_deref().map_err(String::as_str);
            self.policy.check_resolved(admitted, host, addresses)?;
        }
        Ok(())
    }

    pub(crate) fn on_response_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let map = headers.headers.as_ref();
        let status: u16 = header(map, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        record(&self.agent.name, self.method, outcome_of_status(status));
        let card = match &self.state {
            AgentState::Forwarded { card } => *card,
            _ => CardReply::None,
        };
        let json = header(map, "content-type").is_some_and(|t| {
            t.starts_with("application/json") || t.starts_with("application/a2a+json")
        });
        let rewrite = card != CardReply::None
            && (200..300).contains(&status)
            && json
            && !headers.end_of_stream;
        let mut remove_headers = Vec::new();
        let sends = matches!(
            self.method,
            Some(A2aMethod::SendMessage | A2aMethod::SendStreamingMessage)
        );
        let learn = self.policy.binds_tasks()
            && sends
            && (200..300).contains(&status)
            && !headers.end_of_stream;
        let stream =
            header(map, "content-type").is_some_and(|t| t.starts_with("text/event-stream"));
        let mode = if rewrite {
            self.state = AgentState::RewritingBody { card };
            // The rewritten card has another size and another validator.
            remove_headers.extend(["content-length".to_string(), "etag".to_string()]);
            Some(ProcessingMode {
                response_body_mode: BodySendMode::Buffered as i32,
                ..Default::default()
            })
        } else if learn && (json || stream) {
            // Read, never changed: a stream still reaches the client chunk by chunk.
            self.state = AgentState::LearningTask(stream.then(SseFramer::new));
            Some(ProcessingMode {
                response_body_mode: if stream {
                    BodySendMode::Streamed
                } else {
                    BodySendMode::Buffered
                } as i32,
                ..Default::default()
            })
        } else {
            None
        };
        ProcessingResponse {
            response: Some(Response::ResponseHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: vec![set_header("x-gantry-agent", &self.agent.name)],
                        remove_headers,
                    }),
                    ..Default::default()
                }),
            })),
            mode_override: mode,
            ..Default::default()
        }
    }

    pub(crate) fn on_response_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        if let AgentState::LearningTask(framer) = &mut self.state {
            let learned = match framer {
                None => body.end_of_stream && self.learn_task(&body.body),
                Some(framer) => {
                    let events = framer.push(&body.body);
                    events.iter().any(|event| {
                        single_data_payload(event).is_some_and(|data| self.learn_task(data))
                    })
                }
            };
            if learned || body.end_of_stream {
                self.state = AgentState::Forwarded {
                    card: CardReply::None,
                };
            }
            return respond(Response::ResponseBody(BodyResponse::default()));
        }
        let AgentState::RewritingBody { card } = self.state else {
            return respond(Response::ResponseBody(BodyResponse::default()));
        };
        if !body.end_of_stream {
            return respond(Response::ResponseBody(BodyResponse::default()));
        }
        let (bytes, signatures_removed) = match card {
            CardReply::InJsonRpcResult => {
                match self.policy.rewrite_card_in_result(
                    &self.agent,
                    &body.body,
                    &self.public_base,
                    &self.caller,
                    &self.headers,
                ) {
                    Some(bytes) => (bytes, false),
                    None => return respond(Response::ResponseBody(BodyResponse::default())),
                }
            }
            _ => match self.policy.rewrite_card(
                &self.agent,
                &body.body,
                &self.public_base,
                &self.caller,
                &self.headers,
            ) {
                Ok((bytes, changes)) => (bytes, changes.signatures_removed),
                Err(reply) => {
                    tracing::warn!(agent = %self.agent.name, details = reply.details, "agent card not served");
                    record(&self.agent.name, self.method, "card_refused");
                    return immediate(&reply);
                }
            },
        };
        let set_headers = if signatures_removed {
            vec![set_header(CARD_SIGNATURES_HEADER, "removed")]
        } else {
            Vec::new()
        };
        respond(Response::ResponseBody(BodyResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers,
                    remove_headers: Vec::new(),
                }),
                body_mutation: Some(BodyMutation {
                    mutation: Some(Mutation::Body(bytes)),
                }),
                ..Default::default()
            }),
        }))
    }
}

/// The registry: fetches the cards of the agents this caller may see, at once, and lists
/// them rewritten.
async fn registry(
    policy: &A2aPolicy,
    origin: &PublicOrigin<'_>,
    caller: &McpCaller,
    headers: &[(String, String)],
) -> gantry_policy::LocalReply {
    let agents = policy.registry_agents(caller, headers);
    let fetches = agents.iter().map(|agent| fetch_card(agent));
    let cards = futures::future::join_all(fetches).await;
    let fetched: Vec<FetchedCard<'_>> = agents
        .into_iter()
        .zip(cards)
        .map(|(agent, card)| FetchedCard { agent, card })
        .collect();
    record("*", Some(A2aMethod::GetAgentCard), "registry");
    policy.registry_reply(&fetched, origin, caller, headers)
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CARD_FETCH_TIMEOUT)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "card client not built with its settings; using defaults");
                reqwest::Client::new()
            })
    })
}

async fn fetch_card(agent: &Agent) -> Result<Bytes, String> {
    let mut request = client().get(agent.card_url());
    for (name, value) in agent.upstream_headers() {
        request = request.header(name.as_str(), value.as_str());
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| format!("the card could not be fetched: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the agent answered {status} for its card"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the card could not be read: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_CARD_BYTES {
            return Err(format!("the card is larger than {MAX_CARD_BYTES} bytes"));
        }
    }
    Ok(Bytes::from(body))
}

/// `gantry` metadata naming only the agent.
fn agent_metadata(agent: &str) -> Struct {
    gantry_metadata([("a2a_agent", string_value(agent))])
}

fn call_metadata(agent: &str, facts: &CallFacts) -> Struct {
    let mut fields = vec![
        ("a2a_agent", string_value(agent)),
        ("a2a_method", string_value(facts.method.as_str())),
        ("a2a_binding", string_value(facts.binding.as_str())),
        ("a2a_version", string_value(facts.version.as_str())),
    ];
    for (key, value) in [
        ("a2a_skill", &facts.skill),
        ("a2a_task", &facts.task),
        ("a2a_context", &facts.context),
    ] {
        if !value.is_empty() {
            fields.push((key, string_value(value)));
        }
    }
    gantry_metadata(fields)
}

fn outcome_of_status(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

fn outcome_of_reply(reply: &gantry_policy::LocalReply) -> &'static str {
    match reply.details {
        "a2a_denied" => "denied",
        "a2a_webhook_refused" => "webhook_refused",
        "a2a_agent_unavailable" => "unavailable",
        "a2a_task_not_owned" => "task_not_owned",
        _ => "bad_request",
    }
}

/// Requests by (agent, method, outcome).
type Counters = BTreeMap<(String, &'static str, &'static str), u64>;

fn counters() -> &'static Mutex<Counters> {
    static COUNTERS: OnceLock<Mutex<Counters>> = OnceLock::new();
    COUNTERS.get_or_init(Default::default)
}

fn record(agent: &str, method: Option<A2aMethod>, outcome: &'static str) {
    let method = method.map_or("unknown", A2aMethod::as_str);
    if let Ok(mut counters) = counters().lock() {
        *counters
            .entry((agent.to_string(), method, outcome))
            .or_default() += 1;
    }
}

/// The A2A counters in the Prometheus text format (empty before the first A2A request).
pub fn render_prometheus() -> String {
    let Ok(counters) = counters().lock() else {
        return String::new();
    };
    if counters.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "# HELP gantry_a2a_requests_total A2A requests by agent, method (A2A 1.0 name) and outcome (ok, client_error, server_error from the agent's status; denied, webhook_refused, task_not_owned, bad_request, unavailable, card_refused by the gateway; registry).\n# TYPE gantry_a2a_requests_total counter\n",
    );
    for ((agent, method, outcome), count) in counters.iter() {
        out.push_str(&format!(
            "gantry_a2a_requests_total{{agent=\"{agent}\",method=\"{method}\",outcome=\"{outcome}\"}} {count}\n"
        ));
    }
    out
}
