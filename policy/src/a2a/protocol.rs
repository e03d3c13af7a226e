//! A2A on the wire: the operations in both naming styles (1.0 `SendMessage`, 0.3
//! `message/send`) and their REST paths, the facts policy reads from a request, and the errors
//! the gateway answers with in each binding.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::openai_api::LocalReply;

/// The header carrying the A2A version a client speaks (empty or absent: 0.3).
pub const VERSION_HEADER: &str = "a2a-version";
/// JSON-RPC code of a call the gateway's rules deny (implementation-defined server range;
/// A2A's own codes are -32001 to -32009).
pub const PERMISSION_DENIED: i64 = -32050;
/// JSON-RPC code of a request whose params are not acceptable (a refused webhook URL).
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC code of a body that is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC code of JSON that is not one JSON-RPC request.
pub const INVALID_REQUEST: i64 = -32600;

/// An A2A operation, named as in A2A 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum A2aMethod {
    /// The public agent card (`GET /.well-known/agent-card.json`), not a JSON-RPC method.
    GetAgentCard,
    SendMessage,
    SendStreamingMessage,
    GetTask,
    ListTasks,
    CancelTask,
    SubscribeToTask,
    CreateTaskPushNotificationConfig,
    GetTaskPushNotificationConfig,
    ListTaskPushNotificationConfigs,
    DeleteTaskPushNotificationConfig,
    GetExtendedAgentCard,
}

/// Which A2A version a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum A2aVersion {
    V1,
    V03,
}

impl A2aVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            A2aVersion::V1 => "1.0",
            A2aVersion::V03 => "0.3",
        }
    }

    /// From the `A2A-Version` header: empty or absent is 0.3.
    pub fn of_header(value: Option<&str>) -> A2aVersion {
        match value.map(str::trim) {
            None | Some("") => A2aVersion::V03,
            Some(v) if v.starts_with("0.") => A2aVersion::V03,
            Some(_) => A2aVersion::V1,
        }
    }
}

/// How a request reached the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// A card fetch.
    Card,
    JsonRpc,
    /// HTTP+JSON (REST).
    Rest,
}

impl Binding {
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Card => "card",
            Binding::JsonRpc => "jsonrpc",
            Binding::Rest => "rest",
        }
    }
}

const METHODS: &[(A2aMethod, &str, &str)] = &[
    (A2aMethod::SendMessage, "SendMessage", "message/send"),
    (
        A2aMethod::SendStreamingMessage,
        "SendStreamingMessage",
        "message/stream",
    ),
    (A2aMethod::GetTask, "GetTask", "tasks/get"),
    (A2aMethod::ListTasks, "ListTasks", "tasks/list"),
    (A2aMethod::CancelTask, "CancelTask", "tasks/cancel"),
    (
        A2aMethod::SubscribeToTask,
        "SubscribeToTask",
        "tasks/resubscribe",
    ),
    (
        A2aMethod::CreateTaskPushNotificationConfig,
        "CreateTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/set",
    ),
    (
        A2aMethod::GetTaskPushNotificationConfig,
        "GetTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/get",
    ),
    (
        A2aMethod::ListTaskPushNotificationConfigs,
        "ListTaskPushNotificationConfigs",
        "tasks/pushNotificationConfig/list",
    ),
    (
        A2aMethod::DeleteTaskPushNotificationConfig,
        "DeleteTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/delete",
    ),
    (
        A2aMethod::GetExtendedAgentCard,
        "GetExtendedAgentCard",
        "agent/getAuthenticatedExtendedCard",
    ),
];

impl A2aMethod {
    /// The 1.0 name (what rules and metrics see, whichever style the client used).
    pub fn as_str(self) -> &'static str {
        match self {
            A2aMethod::GetAgentCard => "GetAgentCard",
            other => METHODS
                .iter()
                .find(|(m, _, _)| *m == other)
                .map_or("", |(_, name, _)| name),
        }
    }

    /// A JSON-RPC method name in either style, with the version its style implies.
    pub fn from_jsonrpc(name: &str) -> Option<(A2aMethod, A2aVersion)> {
        METHODS.iter().find_map(|(m, v1, v03)| {
            if *v1 == name {
                Some((*m, A2aVersion::V1))
            } else if *v03 == name {
                Some((*m, A2aVersion::V03))
            } else {
                None
            }
        })
    }

    /// Whether the agent answers it with an SSE stream.
    pub fn streams(self) -> bool {
        matches!(
            self,
            A2aMethod::SendStreamingMessage | A2aMethod::SubscribeToTask
        )
    }

    /// Whether its request may carry a push-notification webhook URL.
    pub fn may_carry_webhook(self) -> bool {
        matches!(
            self,
            A2aMethod::SendMessage
                | A2aMethod::SendStreamingMessage
                | A2aMethod::CreateTaskPushNotificationConfig
        )
    }
}

/// A REST (HTTP+JSON) call recognised from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCall {
    pub method: A2aMethod,
    /// The task the path names (empty when none).
    pub task: String,
    /// Whether the path has the 0.3 `/v1` prefix.
    pub v1_prefix: bool,
}

/// Recognises a REST binding call by the end of its path (`…/message:send`,
/// `…/tasks/{id}:cancel`, …), whatever comes before it (the interface's own path, a tenant,
/// the 0.3 `/v1`). `None`: not a REST call (a JSON-RPC POST, or something else).
pub fn classify_rest(http_method: &str, path: &str) -> Option<RestCall> {
    let path = path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segments.len();
    let call = |method, task: &str, before: usize| RestCall {
        method,
        task: task.to_string(),
        v1_prefix: before > 0 && segments[before - 1] == "v1",
    };
    let last = *segments.last()?;
    match (http_method, last) {
        ("POST", "message:send") => return Some(call(A2aMethod::SendMessage, "", n - 1)),
        ("POST", "message:stream") => {
            return Some(call(A2aMethod::SendStreamingMessage, "", n - 1))
        }
        ("GET", "extendedAgentCard") => {
            return Some(call(A2aMethod::GetExtendedAgentCard, "", n - 1))
        }
        ("GET", "card") if n >= 2 && segments[n - 2] == "v1" => {
            return Some(call(A2aMethod::GetExtendedAgentCard, "", n - 1))
        }
        _ => {}
    }
    // The last `tasks` segment anchors the task operations.
    let t = segments.iter().rposition(|s| *s == "tasks")?;
    let after = &segments[t + 1..];
    match (http_method, after) {
        ("GET", []) => Some(call(A2aMethod::ListTasks, "", t)),
        (_, [id]) => {
            if let Some(task) = id.strip_suffix(":cancel") {
                (http_method == "POST").then(|| call(A2aMethod::CancelTask, task, t))
            } else if let Some(task) = id.strip_suffix(":subscribe") {
                matches!(http_method, "GET" | "POST")
                    .then(|| call(A2aMethod::SubscribeToTask, task, t))
            } else {
                (http_method == "GET").then(|| call(A2aMethod::GetTask, id, t))
            }
        }
        (_, [id, configs]) if *configs == "pushNotificationConfigs" => match http_method {
            "POST" => Some(call(A2aMethod::CreateTaskPushNotificationConfig, id, t)),
            "GET" => Some(call(A2aMethod::ListTaskPushNotificationConfigs, id, t)),
            _ => None,
        },
        (_, [id, configs, _config]) if *configs == "pushNotificationConfigs" => match http_method {
            "GET" => Some(call(A2aMethod::GetTaskPushNotificationConfig, id, t)),
            "DELETE" => Some(call(A2aMethod::DeleteTaskPushNotificationConfig, id, t)),
            _ => None,
        },
        _ => None,
    }
}

/// What policy reads from one A2A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFacts {
    pub method: A2aMethod,
    pub binding: Binding,
    pub version: A2aVersion,
    /// The skill the request asks for: `metadata.skill` of the message or of the request
    /// (A2A has no skill field of its own); empty when none.
    pub skill: String,
    /// The task it is about (`id`, `taskId` or the message's `taskId`); empty when none.
    pub task: String,
    pub context: String,
    pub tenant: String,
    /// Every push-notification webhook URL the request names.
    pub webhooks: Vec<String>,
}

impl CallFacts {
    pub fn new(method: A2aMethod, binding: Binding, version: A2aVersion) -> CallFacts {
        CallFacts {
            method,
            binding,
            version,
            skill: String::new(),
            task: String::new(),
            context: String::new(),
            tenant: String::new(),
            webhooks: Vec::new(),
        }
    }

    /// Reads the facts of a request's params (a JSON-RPC `params`, or a REST body, which has
    /// the same shape). Unknown fields are ignored; absent ones stay empty.
    pub fn read_params(&mut self, params: &Map<String, Value>) {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
        let message = params.get("message").and_then(Value::as_object);
        if self.tenant.is_empty() {
            self.tenant = text(params.get("tenant"));
        }
        let skill_of = |o: Option<&Map<String, Value>>| {
            o.and_then(|o| o.get("metadata"))
                .and_then(Value::as_object)
                .and_then(|m| m.get("skill").or_else(|| m.get("skillId")))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        self.skill = skill_of(message)
            .or_else(|| skill_of(Some(params)))
            .unwrap_or_default();
        if let Some(message) = message {
            self.context = text(message.get("contextId"));
            if self.task.is_empty() {
                self.task = text(message.get("taskId"));
            }
        }
        if self.task.is_empty() {
            self.task = match self.method {
                A2aMethod::GetTask | A2aMethod::CancelTask | A2aMethod::SubscribeToTask => {
                    text(params.get("id"))
                }
                A2aMethod::CreateTaskPushNotificationConfig
                | A2aMethod::GetTaskPushNotificationConfig
                | A2aMethod::ListTaskPushNotificationConfigs
                | A2aMethod::DeleteTaskPushNotificationConfig => {
                    let task_id = text(params.get("taskId"));
                    if task_id.is_empty() {
                        // 0.3 names the task `id` in get/list/delete.
                        text(params.get("id"))
                    } else {
                        task_id
                    }
                }
                _ => String::new(),
            };
        }
        if self.method.may_carry_webhook() {
            self.webhooks = webhook_urls(params);
        }
    }
}

fn config_url(config: Option<&Value>) -> Option<&Value> {
    config.and_then(|c| c.get("url"))
}

/// Every webhook URL in a request's params, in any of the places A2A 1.0 and 0.3 put one:
/// a push config itself (`url`), a 0.3 `pushNotificationConfig`, or a send's
/// `configuration.taskPushNotificationConfig` / `configuration.pushNotificationConfig`.
fn webhook_urls(params: &Map<String, Value>) -> Vec<String> {
    let mut urls = Vec::new();
    let mut take = |url: Option<&Value>| {
        if let Some(url) = url {
            urls.push(url.as_str().map_or_else(|| url.to_string(), str::to_string));
        }
    };
    take(params.get("url"));
    take(config_url(params.get("pushNotificationConfig")));
    if let Some(configuration) = params.get("configuration") {
        take(config_url(configuration.get("taskPushNotificationConfig")));
        take(config_url(configuration.get("pushNotificationConfig")));
    }
    urls
}

/// A JSON-RPC error answer. A2A SDKs send these with HTTP 200, and clients read the code
/// and message only from such a body, so the gateway does the same.
pub fn jsonrpc_error(id: &Value, code: i64, message: &str, details: &'static str) -> LocalReply {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    });
    LocalReply {
        status: 200,
        body: Bytes::from(body.to_string()),
        details,
        headers: Vec::new(),
    }
}

/// A REST error answer: a `google.rpc.Status` under `error`, with an `ErrorInfo` naming the
/// reason (what A2A's REST binding and its SDKs read).
pub fn rest_error(
    status: u16,
    grpc_status: &str,
    reason: &str,
    message: &str,
    details: &'static str,
) -> LocalReply {
    let body = json!({
        "error": {
            "code": status,
            "status": grpc_status,
            "message": message,
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "gantry",
            }],
        },
    });
    LocalReply {
        status,
        body: Bytes::from(body.to_string()),
        details,
        headers: Vec::new(),
    }
}

/// A refusal in the binding the client used: JSON-RPC error (id echoed) or REST status.
pub fn refusal(binding: Binding, id: &Value, kind: RefusalKind, message: &str) -> LocalReply {
    let (code, status, grpc, reason, details) = match kind {
        RefusalKind::Denied => (
            PERMISSION_DENIED,
            403,
            "PERMISSION_DENIED",
            "GATEWAY_POLICY_DENIED",
            "a2a_denied",
        ),
        RefusalKind::WebhookRefused => (
            INVALID_PARAMS,
            400,
            "INVALID_ARGUMENT",
            "PUSH_NOTIFICATION_URL_REFUSED",
            "a2a_webhook_refused",
        ),
        RefusalKind::BadRequest => (
            INVALID_REQUEST,
            400,
            "INVALID_ARGUMENT",
            "INVALID_REQUEST",
            "a2a_bad_request",
        ),
        RefusalKind::ParseError => (
            PARSE_ERROR,
            400,
            "INVALID_ARGUMENT",
            "PARSE_ERROR",
            "a2a_bad_request",
        ),
    };
    match binding {
        Binding::JsonRpc => jsonrpc_error(id, code, message, details),
        Binding::Rest | Binding::Card => rest_error(status, grpc, reason, message, details),
    }
}

/// Why the gateway refuses an A2A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Denied,
    WebhookRefused,
    BadRequest,
    ParseError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_naming_styles_map_to_one_method() {
        for (m, v1, v03) in METHODS {
            assert_eq!(A2aMethod::from_jsonrpc(v1), Some((*m, A2aVersion::V1)));
            assert_eq!(A2aMethod::from_jsonrpc(v03), Some((*m, A2aVersion::V03)));
            assert_eq!(m.as_str(), *v1);
        }
        assert_eq!(A2aMethod::from_jsonrpc("tools/call"), None);
        assert_eq!(A2aMethod::GetAgentCard.as_str(), "GetAgentCard");
    }

    #[test]
    fn rest_paths_are_recognised_after_any_prefix() {
        let c = |m, p| classify_rest(m, p).map(|c| (c.method, c.task, c.v1_prefix));
        assert_eq!(
            c("POST", "/rest/message:send"),
            Some((A2aMethod::SendMessage, String::new(), false))
        );
        assert_eq!(
            c("POST", "/acme/message:stream"),
            Some((A2aMethod::SendStreamingMessage, String::new(), false))
        );
        assert_eq!(
            c("GET", "/rest/tasks/t-1?historyLength=2"),
            Some((A2aMethod::GetTask, "t-1".into(), false))
        );
        assert_eq!(
            c("GET", "/tasks"),
            Some((A2aMethod::ListTasks, String::new(), false))
        );
        assert_eq!(
            c("POST", "/v1/tasks/t-2:cancel"),
            Some((A2aMethod::CancelTask, "t-2".into(), true))
        );
        assert_eq!(
            c("GET", "/tasks/t-3:subscribe"),
            Some((A2aMethod::SubscribeToTask, "t-3".into(), false))
        );
        assert_eq!(
            c("POST", "/tasks/t-4/pushNotificationConfigs"),
            Some((
                A2aMethod::CreateTaskPushNotificationConfig,
                "t-4".into(),
                false
            ))
        );
        assert_eq!(
            c("DELETE", "/tasks/t-4/pushNotificationConfigs/c1"),
            Some((
                A2aMethod::DeleteTaskPushNotificationConfig,
                "t-4".into(),
                false
            ))
        );
        assert_eq!(
            c("GET", "/rest/extendedAgentCard"),
            Some((A2aMethod::GetExtendedAgentCard, String::new(), false))
        );
        assert_eq!(
            c("GET", "/v1/card"),
            Some((A2aMethod::GetExtendedAgentCard, String::new(), true))
        );
        // JSON-RPC posts and wrong methods are not REST calls.
        assert_eq!(c("POST", "/"), None);
        assert_eq!(c("POST", "/tasks/t-1"), None);
        assert_eq!(c("DELETE", "/tasks"), None);
    }

    #[test]
    fn facts_come_from_either_versions_params() {
        let params: Map<String, Value> = serde_json::from_str(
            r#"{"message":{"messageId":"m","taskId":"t-9","contextId":"c-1","metadata":{"skill":"admin"},
                "parts":[{"text":"hi"}]},
                "configuration":{"taskPushNotificationConfig":{"url":"http://10.0.0.1/hook"}},
                "tenant":"acme"}"#,
        )
        .unwrap();
        let mut facts = CallFacts::new(A2aMethod::SendMessage, Binding::JsonRpc, A2aVersion::V1);
        facts.read_params(&params);
        assert_eq!(facts.skill, "admin");
        assert_eq!(facts.task, "t-9");
        assert_eq!(facts.context, "c-1");
        assert_eq!(facts.tenant, "acme");
        assert_eq!(facts.webhooks, vec!["http://10.0.0.1/hook".to_string()]);

        let set_03: Map<String, Value> = serde_json::from_str(
            r#"{"taskId":"t-1","pushNotificationConfig":{"url":"http://169.254.169.254/"}}"#,
        )
        .unwrap();
        let mut facts = CallFacts::new(
            A2aMethod::CreateTaskPushNotificationConfig,
            Binding::JsonRpc,
            A2aVersion::V03,
        );
        facts.read_params(&set_03);
        assert_eq!(facts.task, "t-1");
        assert_eq!(facts.webhooks, vec!["http://169.254.169.254/".to_string()]);

        let create_1: Map<String, Value> =
            serde_json::from_str(r#"{"taskId":"t-2","url":"https://hooks.example.com/x"}"#)
                .unwrap();
        let mut facts = CallFacts::new(
            A2aMethod::CreateTaskPushNotificationConfig,
            Binding::Rest,
            A2aVersion::V1,
        );
        facts.read_params(&create_1);
        assert_eq!(
            facts.webhooks,
            vec!["https://hooks.example.com/x".to_string()]
        );

        let get: Map<String, Value> = serde_json::from_str(r#"{"id":"t-3"}"#).unwrap();
        let mut facts = CallFacts::new(A2aMethod::GetTask, Binding::JsonRpc, A2aVersion::V1);
        facts.read_params(&get);
        assert_eq!(facts.task, "t-3");
        assert!(facts.webhooks.is_empty());
    }

    #[test]
    fn refusals_speak_the_clients_binding() {
        let r = refusal(Binding::JsonRpc, &json!(7), RefusalKind::Denied, "no");
        assert_eq!(r.status, 200);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], PERMISSION_DENIED);
        let r = refusal(
            Binding::Rest,
            &Value::Null,
            RefusalKind::WebhookRefused,
            "no",
        );
        assert_eq!(r.status, 400);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body["error"]["details"][0]["reason"],
            "PUSH_NOTIFICATION_URL_REFUSED"
        );
    }
}
