//! A2A policy, pure: which agent a request is for, what A2A operation it is
//! ([`protocol`]), whether the caller may make it ([`authz`]), whether its push-notification
//! webhooks are safe ([`webhook`]), and how agent cards are rewritten ([`card`]) one by one and
//! in the registry that lists them all.
//!
//! The adapter (ext_proc) feeds it the request's head, then its body when asked, then the
//! card's body; it makes the calls this module cannot (DNS lookups for webhook hosts, card
//! fetches for the registry) and hands the answers back.

pub mod authz;
pub mod card;
pub mod protocol;
pub mod tasks;
pub mod webhook;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::auth::rules::RuleVerdict;
use crate::config::{A2aSection, ConfigFile, SignedCards};
use crate::endpoint::ProviderEndpoint;
use crate::mcp::authz::McpCaller;
use crate::openai_api::LocalReply;
use authz::{A2aQuestion, A2aRules};
use card::{CardChanges, CardContext, CardError, CardSecurity};
pub use protocol::{A2aMethod, A2aVersion, Binding, CallFacts, RefusalKind};
use webhook::{WebhookCheck, WebhookPolicy};

/// The legacy (0.2) card location, served from the agent's configured card path.
pub const LEGACY_CARD_PATH: &str = "/.well-known/agent.json";
/// The response header that says the gateway removed a card's signatures.
pub const CARD_SIGNATURES_HEADER: &str = "x-gantry-card-signatures";

/// One agent behind the gateway.
pub struct Agent {
    pub name: String,
    /// `<a2a.path>/<name>`: the public path prefix.
    pub prefix: String,
    pub endpoint: ProviderEndpoint,
    /// The card's path at the agent, relative to its URL.
    pub card_path: String,
    /// Headers Gantry sets on every request to the agent (its credentials).
    headers: Vec<(String, String)>,
    /// Why the agent cannot be reached: a header's environment variable is unset.
    pub unavailable: Option<String>,
    pub timeout_secs: u64,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("card_path", &self.card_path)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl Agent {
    /// Headers to set on the request to the agent (values are secrets: never log them).
    pub fn upstream_headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The card's URL at the agent (for the registry's fetches).
    pub fn card_url(&self) -> String {
        format!(
            "{}://{}{}{}",
            if self.endpoint.tls { "https" } else { "http" },
            self.endpoint.authority(),
            self.endpoint.base_path,
            self.card_path
        )
    }
}

/// The compiled `a2a` section.
#[derive(Debug)]
pub struct A2aPolicy {
    /// The public prefix; `GET <path>` is the registry.
    pub path: String,
    public_url: Option<String>,
    signed_cards: SignedCards,
    security: CardSecurity,
    webhooks: WebhookPolicy,
    rules: A2aRules,
    bind_tasks: bool,
    pub agents: Vec<Arc<Agent>>,
}

/// Where a request goes.
#[derive(Debug)]
pub enum A2aRoute<'a> {
    /// `GET <a2a.path>`: the list of agents.
    Registry,
    /// Under an agent's prefix; `rest` is the path after it (`""` or `/…`, query kept).
    Agent {
        agent: &'a Arc<Agent>,
        rest: &'a str,
    },
}

/// What the request head decides.
#[derive(Debug)]
pub enum AgentHead {
    /// Answered by the gateway.
    Reply(Refused),
    /// A card fetch, allowed: forward it (to `upstream_path`, a public path under the agent's
    /// prefix, when the client used another card location), then rewrite the reply.
    Card { upstream_path: Option<String> },
    /// Decided on the head: forward.
    Forward(CallFacts),
    /// The body decides (JSON-RPC, or a REST call with a body).
    ReadBody(PendingBody),
}

/// A request whose body is awaited.
#[derive(Debug, Clone)]
pub enum PendingBody {
    JsonRpc { version_header: A2aVersion },
    Rest(CallFacts),
}

/// A request the rules admitted, possibly waiting for its webhook hosts to be resolved.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub facts: CallFacts,
    /// The JSON-RPC id (null for REST).
    pub id: Value,
    /// Webhook hosts to resolve and check with [`A2aPolicy::check_resolved`].
    pub resolve: Vec<(String, u16)>,
}

/// A request the gateway answers itself, with what it knew of the call by then.
#[derive(Debug)]
pub struct Refused {
    /// The call's facts, when the body was read far enough to know them.
    pub facts: Option<Box<CallFacts>>,
    pub reply: LocalReply,
}

/// One agent's card as the registry fetched it.
#[derive(Debug)]
pub struct FetchedCard<'a> {
    pub agent: &'a Arc<Agent>,
    /// The card's bytes, or why it could not be fetched.
    pub card: Result<Bytes, String>,
}

/// Headers of the request that card URLs are built from.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOrigin<'a> {
    pub forwarded_proto: Option<&'a str>,
    pub forwarded_host: Option<&'a str>,
    pub authority: Option<&'a str>,
}

impl A2aPolicy {
    /// Compiles `section`; `config` is the whole config (its `auth` and `tls` say what security
    /// cards advertise).
    pub fn compile(
        section: &A2aSection,
        config: &ConfigFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> A2aPolicy {
        let path = section.path().to_string();
        let agents = section
            .agents
            .iter()
            .filter_map(|a| {
                let endpoint = a.endpoint().ok()?;
                let resolved = crate::config::resolve_upstream_headers(
                    &a.headers,
                    &format!("agent '{}'", a.name.value),
                    env,
                );
                Some(Arc::new(Agent {
                    name: a.name.value.clone(),
                    prefix: format!("{path}/{}", a.name.value),
                    endpoint,
                    card_path: a.card_path().to_string(),
                    headers: resolved.pairs,
                    unavailable: resolved.unavailable,
                    timeout_secs: a.timeout_secs(),
                }))
            })
            .collect();
        A2aPolicy {
            public_url: section
                .public_url
                .as_ref()
                .and_then(|u| crate::config::parse_public_url(&u.value).ok()),
            signed_cards: section.signed_cards,
            security: CardSecurity::compile(
                section.security.as_ref(),
                config.auth.as_ref(),
                config
                    .tls
                    .as_ref()
                    .is_some_and(|tls| tls.client_ca_file.is_some()),
            ),
            webhooks: WebhookPolicy::compile(&section.push_notifications),
            rules: A2aRules::compile(&section.rules),
            bind_tasks: section.bind_tasks_to_caller,
            agents,
            path,
        }
    }

    /// Whether rules read request headers (the adapter keeps them for [`A2aQuestion`]).
    pub fn rules_read_headers(&self) -> bool {
        self.rules.uses_request()
    }

    /// Which agent (or the registry) a path is for; `None`: not an A2A path.
    pub fn route<'a>(&'a self, method: &str, path: &'a str) -> Option<A2aRoute<'a>> {
        let bare = path.split('?').next().unwrap_or("");
        let rest = bare.strip_prefix(self.path.as_str())?;
        if rest.is_empty() || rest == "/" {
            return (method == "GET").then_some(A2aRoute::Registry);
        }
        let rest = rest.strip_prefix('/')?;
        let (name, _) = rest.split_once('/').unwrap_or((rest, ""));
        let agent = self.agents.iter().find(|a| a.name == name)?;
        let tail = &path[agent.prefix.len()..];
        Some(A2aRoute::Agent { agent, rest: tail })
    }

    /// The agent's public base URL (no trailing `/`).
    pub fn public_base(&self, agent: &Agent, origin: &PublicOrigin<'_>) -> String {
        let gateway = match &self.public_url {
            Some(url) => url.clone(),
            None => {
                let scheme = origin
                    .forwarded_proto
                    .and_then(|p| p.split(',').next())
                    .map(str::trim)
                    .filter(|p| *p == "https" || *p == "http")
                    .unwrap_or("http");
                let host = origin
                    .forwarded_host
                    .and_then(|h| h.split(',').next())
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .or(origin.authority)
                    .unwrap_or("localhost");
                format!("{scheme}://{host}")
            }
        };
        format!("{gateway}{}", agent.prefix)
    }

    fn ask(
        &self,
        agent: &Agent,
        caller: &McpCaller,
        facts: &CallFacts,
        headers: &[(String, String)],
    ) -> RuleVerdict {
        self.rules.evaluate(&A2aQuestion {
            caller,
            agent: &agent.name,
            facts,
            headers,
        })
    }

    /// `Err` with the refusal when the rules deny the call.
    fn authorize(
        &self,
        agent: &Agent,
        caller: &McpCaller,
        facts: &CallFacts,
        id: &Value,
        headers: &[(String, String)],
    ) -> Result<(), LocalReply> {
        let what = if facts.skill.is_empty() {
            format!("{} on agent '{}'", facts.method.as_str(), agent.name)
        } else {
            format!(
                "{} with skill '{}' on agent '{}'",
                facts.method.as_str(),
                facts.skill,
                agent.name
            )
        };
        let message = match self.ask(agent, caller, facts, headers) {
            RuleVerdict::NoRules | RuleVerdict::Allowed { .. } => return Ok(()),
            RuleVerdict::Denied { rule } => {
                tracing::info!(agent = %agent.name, method = facts.method.as_str(), skill = %facts.skill, %rule, "A2A call denied");
                format!("{what} is denied (rule '{rule}')")
            }
            RuleVerdict::NoneAllowed => {
                tracing::info!(agent = %agent.name, method = facts.method.as_str(), skill = %facts.skill, "A2A call denied: no rule allows it");
                format!("{what} is denied (no rule allows it)")
            }
        };
        Err(protocol::refusal(
            facts.binding,
            id,
            RefusalKind::Denied,
            &message,
        ))
    }

    fn unavailable(agent: &Agent, binding: Binding, id: &Value) -> Option<LocalReply> {
        let why = agent.unavailable.as_ref()?;
        let message = format!("agent '{}' is not available: {why}", agent.name);
        Some(match binding {
            Binding::JsonRpc => {
                protocol::jsonrpc_error(id, -32603, &message, "a2a_agent_unavailable")
            }
            _ => protocol::rest_error(
                503,
                "UNAVAILABLE",
                "AGENT_UNAVAILABLE",
                &message,
                "a2a_agent_unavailable",
            ),
        })
    }

    /// Decides on a request's head.
    pub fn on_head(
        &self,
        agent: &Agent,
        http_method: &str,
        rest: &str,
        version_header: Option<&str>,
        caller: &McpCaller,
        headers: &[(String, String)],
    ) -> AgentHead {
        let version = A2aVersion::of_header(version_header);
        let bare = rest.split('?').next().unwrap_or("");
        let refused = |facts: Option<CallFacts>, reply| {
            AgentHead::Reply(Refused {
                facts: facts.map(Box::new),
                reply,
            })
        };
        if let Some(reply) = Self::unavailable(agent, Binding::Rest, &Value::Null) {
            return refused(None, reply);
        }
        let is_card = bare == card::WELL_KNOWN_CARD_PATH
            || bare == LEGACY_CARD_PATH
            || bare == agent.card_path;
        if is_card {
            if http_method != "GET" && http_method != "HEAD" {
                return refused(
                    None,
                    protocol::rest_error(
                        405,
                        "UNIMPLEMENTED",
                        "METHOD_NOT_ALLOWED",
                        "the agent card is read with GET",
                        "a2a_method_not_allowed",
                    ),
                );
            }
            let facts = CallFacts::new(A2aMethod::GetAgentCard, Binding::Card, version);
            if let Err(reply) = self.authorize(agent, caller, &facts, &Value::Null, headers) {
                return refused(Some(facts), reply);
            }
            let upstream_path =
                (bare != agent.card_path).then(|| format!("{}{}", agent.prefix, agent.card_path));
            return AgentHead::Card { upstream_path };
        }
        if let Some(call) = protocol::classify_rest(http_method, bare) {
            let version = if call.v1_prefix {
                A2aVersion::V03
            } else {
                version
            };
            let mut facts = CallFacts::new(call.method, Binding::Rest, version);
            facts.task = call.task;
            if http_method == "POST" {
                return AgentHead::ReadBody(PendingBody::Rest(facts));
            }
            return match self.authorize(agent, caller, &facts, &Value::Null, headers) {
                Ok(()) => AgentHead::Forward(facts),
                Err(reply) => refused(Some(facts), reply),
            };
        }
        if http_method == "POST" {
            return AgentHead::ReadBody(PendingBody::JsonRpc {
                version_header: version,
            });
        }
        refused(None, protocol::rest_error(
            404,
            "NOT_FOUND",
            "NOT_AN_A2A_OPERATION",
            &format!(
                "{http_method} {rest} is not an A2A operation of agent '{}' (the gateway carries the agent card, JSON-RPC and the HTTP+JSON binding)",
                agent.name
            ),
            "a2a_not_an_operation",
        ))
    }

    /// Decides on a request's body: classifies a JSON-RPC call, reads the facts, applies the
    /// rules and the webhook checks that need no lookup.
    pub fn on_body(
        &self,
        agent: &Agent,
        pending: &PendingBody,
        body: &[u8],
        caller: &McpCaller,
        headers: &[(String, String)],
    ) -> Result<Admitted, Refused> {
        let early = |reply: LocalReply| Refused { facts: None, reply };
        let (binding, id) = match pending {
            PendingBody::JsonRpc { .. } => (Binding::JsonRpc, Value::Null),
            PendingBody::Rest(_) => (Binding::Rest, Value::Null),
        };
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) if body.is_empty() && binding == Binding::Rest => Value::Object(Map::new()),
            Err(e) => {
                return Err(early(protocol::refusal(
                    binding,
                    &id,
                    RefusalKind::ParseError,
                    &format!("the request body is not JSON: {e}"),
                )))
            }
        };
        let (facts, id) = match pending {
            PendingBody::Rest(facts) => {
                let mut facts = facts.clone();
                if let Some(params) = parsed.as_object() {
                    facts.read_params(params);
                }
                (facts, Value::Null)
            }
            PendingBody::JsonRpc { version_header } => {
                let bad = |message: &str, id: &Value| {
                    protocol::refusal(Binding::JsonRpc, id, RefusalKind::BadRequest, message)
                };
                let Some(request) = parsed.as_object() else {
                    return Err(early(bad(
                        if parsed.is_array() {
                            "JSON-RPC batches are not supported: send one request per POST"
                        } else {
                            "the body is not a JSON-RPC request object"
                        },
                        &Value::Null,
                    )));
                };
                let id = request.get("id").cloned().unwrap_or(Value::Null);
                let Some(name) = request.get("method").and_then(Value::as_str) else {
                    return Err(early(bad("the JSON-RPC request has no method", &id)));
                };
                let Some((method, style)) = A2aMethod::from_jsonrpc(name) else {
                    return Err(early(protocol::jsonrpc_error(
                        &id,
                        -32601,
                        &format!("'{name}' is not an A2A method (the gateway carries A2A 1.0 and 0.3 methods)"),
                        "a2a_unknown_method",
                    )));
                };
                // A 0.3-style name is 0.3 whatever the header; a 1.0 name follows the header
                // (the agent answers a missing one with VersionNotSupported).
                let version = match style {
                    A2aVersion::V03 => A2aVersion::V03,
                    A2aVersion::V1 => *version_header,
                };
                let mut facts = CallFacts::new(method, Binding::JsonRpc, version);
                if let Some(params) = request.get("params").and_then(Value::as_object) {
                    facts.read_params(params);
                }
                (facts, id)
            }
        };
        if let Err(reply) = self.authorize(agent, caller, &facts, &id, headers) {
            return Err(Refused {
                facts: Some(Box::new(facts)),
                reply,
            });
        }
        let mut resolve = Vec::new();
        for url in &facts.webhooks {
            match self.webhooks.check_url(url) {
                WebhookCheck::Allowed => {}
                WebhookCheck::Refused(why) => {
                    tracing::info!(agent = %agent.name, method = facts.method.as_str(), %why, "A2A push-notification URL refused");
                    let reply = protocol::refusal(
                        facts.binding,
                        &id,
                        RefusalKind::WebhookRefused,
                        &format!("push-notification URL '{url}' is refused: {why}"),
                    );
                    return Err(Refused {
                        facts: Some(Box::new(facts)),
                        reply,
                    });
                }
                WebhookCheck::Resolve { host, port } => resolve.push((host, port)),
            }
        }
        Ok(Admitted { facts, id, resolve })
    }

    /// Whether the answers to sends are read to learn which caller created each task.
    pub fn binds_tasks(&self) -> bool {
        self.bind_tasks
    }

    /// Refuses a request about a task another caller created, as the agent refuses an unknown
    /// task (the task's existence is not revealed). A task the gateway did not see created
    /// (another replica, before a restart) is left to the rules.
    pub fn check_task_owner(
        &self,
        agent: &Agent,
        facts: &CallFacts,
        id: &Value,
        caller: &McpCaller,
        owners: &tasks::TaskOwners,
    ) -> Result<(), LocalReply> {
        if !self.bind_tasks || facts.task.is_empty() {
            return Ok(());
        }
        match owners.owner(&agent.name, &facts.task) {
            Some(owner) if owner != caller.binding() => {
                tracing::info!(agent = %agent.name, task = %facts.task, method = facts.method.as_str(), "A2A request about another caller's task refused");
                Err(match facts.binding {
                    Binding::JsonRpc => {
                        protocol::jsonrpc_error(id, -32001, "Task not found", "a2a_task_not_owned")
                    }
                    _ => protocol::rest_error(
                        404,
                        "NOT_FOUND",
                        "TASK_NOT_FOUND",
                        "Task not found",
                        "a2a_task_not_owned",
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks what a webhook host resolved to (`Err(message)` from the lookup itself refuses
    /// too: an agent must not be given a URL the gateway cannot vet).
    pub fn check_resolved(
        &self,
        admitted: &Admitted,
        host: &str,
        addresses: Result<&[IpAddr], &str>,
    ) -> Result<(), LocalReply> {
        let verdict = match addresses {
            Ok(addresses) => self.webhooks.check_addresses(host, addresses),
            Err(e) => Err(format!("'{host}' could not be resolved ({e})")),
        };
        verdict.map_err(|why| {
            tracing::info!(method = admitted.facts.method.as_str(), %why, "A2A push-notification URL refused");
            protocol::refusal(
                admitted.facts.binding,
                &admitted.id,
                RefusalKind::WebhookRefused,
                &format!("push-notification URL refused: {why}"),
            )
        })
    }

    /// Rewrites a card for this caller. `Err` is the reply instead (502 naming the agent).
    pub fn rewrite_card(
        &self,
        agent: &Agent,
        body: &[u8],
        public_base: &str,
        caller: &McpCaller,
        headers: &[(String, String)],
    ) -> Result<(Vec<u8>, CardChanges), LocalReply> {
        self.rewrite_card_value(agent, body, public_base, caller, headers)
            .map(|(card, changes)| (serde_json::to_vec(&card).unwrap_or_default(), changes))
            .map_err(|e| {
                protocol::rest_error(
                    502,
                    "UNAVAILABLE",
                    "AGENT_CARD_REFUSED",
                    &format!("agent '{}': {e}", agent.name),
                    "a2a_card_refused",
                )
            })
    }

    /// Rewrites the card inside a JSON-RPC `GetExtendedAgentCard` answer (its `result`);
    /// an error answer is left as it is.
    pub fn rewrite_card_in_result(
        &self,
        agent: &Agent,
        body: &[u8],
        public_base: &str,
        caller: &McpCaller,
        headers: &[(String, String)],
    ) -> Option<Vec<u8>> {
        let mut response: Map<String, Value> = serde_json::from_slice(body).ok()?;
        let result = response.get("result")?;
        let bytes = serde_json::to_vec(result).ok()?;
        let id = response.get("id").cloned().unwrap_or(Value::Null);
        match self.rewrite_card_value(agent, &bytes, public_base, caller, headers) {
            Ok((card, _)) => {
                response.insert("result".into(), Value::Object(card));
            }
            Err(e) => {
                let reply = protocol::jsonrpc_error(
                    &id,
                    -32603,
                    &format!("agent '{}': {e}", agent.name),
                    "a2a_card_refused",
                );
                return Some(reply.body.to_vec());
            }
        }
        serde_json::to_vec(&response).ok()
    }

    fn rewrite_card_value(
        &self,
        agent: &Agent,
        body: &[u8],
        public_base: &str,
        caller: &McpCaller,
        headers: &[(String, String)],
    ) -> Result<(Map<String, Value>, CardChanges), CardError> {
        let mut card: Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| CardError::NotJson(e.to_string()))?;
        let skill_allowed = |skill: &str| {
            let mut facts =
                CallFacts::new(A2aMethod::SendMessage, Binding::JsonRpc, A2aVersion::V1);
            facts.skill = skill.to_string();
            matches!(
                self.ask(agent, caller, &facts, headers),
                RuleVerdict::NoRules | RuleVerdict::Allowed { .. }
            )
        };
        let ctx = CardContext {
            public_base,
            agent_base_path: &agent.endpoint.base_path,
            signed_cards: self.signed_cards,
            security: &self.security,
            skill_allowed: &skill_allowed,
        };
        let changes = card::rewrite_card(&mut card, &ctx)?;
        if !changes.interfaces_dropped.is_empty() {
            tracing::debug!(agent = %agent.name, dropped = ?changes.interfaces_dropped, "card interfaces the gateway cannot carry were left out");
        }
        Ok((card, changes))
    }

    /// The agents this caller may see, for the registry to fetch.
    pub fn registry_agents(
        &self,
        caller: &McpCaller,
        headers: &[(String, String)],
    ) -> Vec<&Arc<Agent>> {
        let facts = CallFacts::new(A2aMethod::GetAgentCard, Binding::Card, A2aVersion::V1);
        self.agents
            .iter()
            .filter(|a| {
                a.unavailable.is_none()
                    && matches!(
                        self.ask(a, caller, &facts, headers),
                        RuleVerdict::NoRules | RuleVerdict::Allowed { .. }
                    )
            })
            .collect()
    }

    /// The registry's answer: every agent the caller may see, with its rewritten card (or
    /// why it is missing), as `{"agents": [{name, url, cardUrl, card | error}]}`.
    pub fn registry_reply(
        &self,
        fetched: &[FetchedCard<'_>],
        origin: &PublicOrigin<'_>,
        caller: &McpCaller,
        headers: &[(String, String)],
    ) -> LocalReply {
        let agents: Vec<Value> = fetched
            .iter()
            .map(|f| {
                let base = self.public_base(f.agent, origin);
                let mut entry = json!({
                    "name": f.agent.name,
                    "url": format!("{base}/"),
                    "cardUrl": format!("{base}{}", card::WELL_KNOWN_CARD_PATH),
                });
                let card = f.card.as_ref().map_err(Clone::clone).and_then(|bytes| {
                    self.rewrite_card_value(f.agent, bytes, &base, caller, headers)
                        .map_err(|e| e.to_string())
                });
                match card {
                    Ok((card, _)) => entry["card"] = Value::Object(card),
                    Err(e) => entry["error"] = Value::String(e),
                }
                entry
            })
            .collect();
        LocalReply {
            status: 200,
            body: Bytes::from(json!({ "agents": agents }).to_string()),
            details: "a2a_registry",
            headers: vec![("cache-control", "no-store".to_string())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    fn policy(extra: &str) -> A2aPolicy {
        let config = ConfigFile::parse(&format!(
            "listen: 127.0.0.1:10000\na2a:\n{extra}  agents:\n    - {{ name: echo, url: 'http://127.0.0.1:18010/base' }}\n    - {{ name: keyed, url: 'https://agent.example.com', headers: [{{ name: Authorization, value_env: AGENT_TOKEN, prefix: 'Bearer ' }}] }}\n"
        ))
        .expect("valid config");
        A2aPolicy::compile(config.a2a.as_ref().unwrap(), &config, &|_| None)
    }

    fn body_error(result: Result<Admitted, Refused>) -> (i64, String) {
        let refused = result.expect_err("refused");
        let body: Value = serde_json::from_slice(&refused.reply.body).unwrap();
        (
            body["error"]["code"].as_i64().unwrap(),
            body["error"]["message"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn paths_route_to_the_registry_an_agent_or_nothing() {
        let p = policy("");
        assert!(matches!(p.route("GET", "/a2a"), Some(A2aRoute::Registry)));
        assert!(matches!(
            p.route("GET", "/a2a/?x=1"),
            Some(A2aRoute::Registry)
        ));
        assert!(p.route("POST", "/a2a").is_none());
        match p.route("POST", "/a2a/echo/rest/message:send?x") {
            Some(A2aRoute::Agent { agent, rest }) => {
                assert_eq!(agent.name, "echo");
                assert_eq!(rest, "/rest/message:send?x");
                assert_eq!(
                    agent.card_url(),
                    "http://127.0.0.1:18010/base/.well-known/agent-card.json"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.route("GET", "/a2a/echo"),
            Some(A2aRoute::Agent { rest: "", .. })
        ));
        assert!(p.route("GET", "/a2a/nobody/x").is_none());
        assert!(p.route("GET", "/a2ab/echo").is_none());
        assert!(p.route("GET", "/v1/models").is_none());
    }

    #[test]
    fn heads_and_bodies_are_classified_and_refused_in_the_clients_binding() {
        let p = policy("");
        let echo = p.agents[0].clone();
        let caller = McpCaller::anonymous();
        // The legacy card path is sent to the configured one.
        match p.on_head(&echo, "GET", "/.well-known/agent.json", None, &caller, &[]) {
            AgentHead::Card { upstream_path } => {
                assert_eq!(
                    upstream_path.as_deref(),
                    Some("/a2a/echo/.well-known/agent-card.json")
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.on_head(&echo, "GET", "/rest/tasks/t1", Some("1.0"), &caller, &[]),
            AgentHead::Forward(CallFacts {
                method: A2aMethod::GetTask,
                ..
            })
        ));
        assert!(matches!(
            p.on_head(&echo, "GET", "/debug", None, &caller, &[]),
            AgentHead::Reply(Refused {
                reply: LocalReply { status: 404, .. },
                ..
            })
        ));
        let jsonrpc = PendingBody::JsonRpc {
            version_header: A2aVersion::V03,
        };
        let admitted = p
            .on_body(
                &echo,
                &jsonrpc,
                br#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"t-7"}}"#,
                &caller,
                &[],
            )
            .unwrap();
        assert_eq!(admitted.facts.method, A2aMethod::GetTask);
        assert_eq!(admitted.facts.version, A2aVersion::V03);
        assert_eq!(admitted.facts.task, "t-7");
        assert_eq!(
            body_error(p.on_body(&echo, &jsonrpc, b"[{}]", &caller, &[])),
            (
                -32600,
                "JSON-RPC batches are not supported: send one request per POST".into()
            )
        );
        assert_eq!(
            body_error(p.on_body(
                &echo,
                &jsonrpc,
                br#"{"id":2,"method":"tools/call"}"#,
                &caller,
                &[]
            ))
            .0,
            -32601
        );
        assert_eq!(
            body_error(p.on_body(&echo, &jsonrpc, b"{oops", &caller, &[])).0,
            -32700
        );
        let (code, message) = body_error(p.on_body(
            &echo,
            &jsonrpc,
            br#"{"id":3,"method":"CreateTaskPushNotificationConfig","params":{"taskId":"t","url":"http://10.0.0.8/h"}}"#,
            &caller,
            &[],
        ));
        assert_eq!(code, -32602);
        assert!(
            message.contains("10.0.0.8 is a private address"),
            "{message}"
        );
        // A host name is left to the adapter to resolve.
        let admitted = p
            .on_body(
                &echo,
                &jsonrpc,
                br#"{"id":4,"method":"SendMessage","params":{"message":{},"configuration":{"taskPushNotificationConfig":{"url":"https://hooks.example.com/h"}}}}"#,
                &caller,
                &[],
            )
            .unwrap();
        assert_eq!(admitted.resolve, [("hooks.example.com".to_string(), 443)]);
        let private: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p
            .check_resolved(&admitted, "hooks.example.com", Ok(&[private]))
            .is_err());
        assert!(p
            .check_resolved(&admitted, "hooks.example.com", Err("timed out"))
            .is_err());
    }

    #[test]
    fn an_agent_missing_its_credentials_answers_503_naming_the_variable() {
        let p = policy("");
        let keyed = p.agents[1].clone();
        match p.on_head(
            &keyed,
            "POST",
            "/",
            Some("1.0"),
            &McpCaller::anonymous(),
            &[],
        ) {
            AgentHead::Reply(Refused { reply, .. }) => {
                assert_eq!(reply.status, 503);
                assert!(String::from_utf8_lossy(&reply.body).contains("AGENT_TOKEN is not set"));
            }
            other => panic!("{other:?}"),
        }
        let p = {
            let config = ConfigFile::parse("listen: 127.0.0.1:10000\na2a:\n  agents:\n    - { name: keyed, url: 'https://agent.example.com', headers: [{ name: Authorization, value_env: AGENT_TOKEN, prefix: 'Bearer ' }] }\n").unwrap();
            A2aPolicy::compile(config.a2a.as_ref().unwrap(), &config, &|v| {
                (v == "AGENT_TOKEN").then(|| "s3cret".to_string())
            })
        };
        assert_eq!(
            p.agents[0].upstream_headers(),
            [("authorization".to_string(), "Bearer s3cret".to_string())]
        );
        assert!(!format!("{:?}", p.agents[0]).contains("s3cret"));
    }

    #[test]
    fn card_urls_follow_the_public_url_or_the_forwarded_headers() {
        let p = policy("");
        let echo = p.agents[0].clone();
        let forwarded = PublicOrigin {
            forwarded_proto: Some("https, http"),
            forwarded_host: Some("gw.example.com"),
            authority: Some("10.0.0.5:10000"),
        };
        assert_eq!(
            p.public_base(&echo, &forwarded),
            "https://gw.example.com/a2a/echo"
        );
        let direct = PublicOrigin {
            authority: Some("127.0.0.1:10000"),
            ..PublicOrigin::default()
        };
        assert_eq!(
            p.public_base(&echo, &direct),
            "http://127.0.0.1:10000/a2a/echo"
        );
        let fixed = policy("  public_url: https://agents.example.com/\n");
        assert_eq!(
            fixed.public_base(&fixed.agents[0], &forwarded),
            "https://agents.example.com/a2a/echo"
        );
    }

    #[test]
    fn an_extended_card_in_a_jsonrpc_result_is_rewritten_too() {
        let p = policy("");
        let echo = p.agents[0].clone();
        let caller = McpCaller::anonymous();
        let answer = br#"{"jsonrpc":"2.0","id":5,"result":{"name":"echo","supportedInterfaces":[{"url":"http://127.0.0.1:18010/base/rpc","protocolBinding":"JSONRPC"}]}}"#;
        let rewritten = p
            .rewrite_card_in_result(&echo, answer, "https://gw/a2a/echo", &caller, &[])
            .unwrap();
        let value: Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(value["id"], 5);
        assert_eq!(
            value["result"]["supportedInterfaces"][0]["url"],
            "https://gw/a2a/echo/rpc"
        );
        // An error answer stays as it is.
        let error =
            br#"{"jsonrpc":"2.0","id":6,"error":{"code":-32007,"message":"no extended card"}}"#;
        assert!(p
            .rewrite_card_in_result(&echo, error, "https://gw/a2a/echo", &caller, &[])
            .is_none());
    }

    #[test]
    fn bad_sections_are_named() {
        let err = ConfigFile::parse(
            "listen: 127.0.0.1:10000\na2a:\n  path: a2a/\n  public_url: gw.example.com\n  push_notifications: { allowed_hosts: ['bad host'] }\n  security: { schemes: { x: { basic: {} } }, requirements: [[y]] }\n  agents:\n    - { name: 'a b', url: 'ftp://x' }\n    - { name: dup, url: 'http://a', timeout_secs: 0 }\n    - { name: dup, url: 'http://a', card_path: card.json }\n",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "a2a.path",
            "a2a.public_url",
            "a2a.push_notifications.allowed_hosts[0]",
            "a2a.security.schemes.x",
            "a2a.security.requirements[0]",
            "a2a.agents[0].name",
            "a2a.agents[0].url",
            "a2a.agents[1].timeout_secs",
            "a2a.agents[2].name",
            "a2a.agents[2].card_path",
        ] {
            assert!(err.contains(expected), "{expected} not in:\n{err}");
        }
    }
}
