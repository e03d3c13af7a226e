//! MCP traffic to servers Envoy routes to directly (`mcp_direct`), as ext_proc sees it. The
//! decisions are [`DirectMcpPolicy`]'s; this module maps them onto Envoy's messages and keeps
//! the process's [`DefinitionBook`] (the latest verdict on each tool), locked only while the
//! policy reads or updates it, never across an `.await`.
//!
//! Answers are read only when a check needs them (`tools/list`, and `tools/call` results when
//! guards run): JSON whole, SSE event by event as it streams. Everything else passes untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    processing_mode::BodySendMode, ProcessingMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_response::Response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, HttpBody, HttpHeaders, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::Struct;
use gantry_policy::governance::Caller;
use gantry_policy::mcp::authz::McpCaller;
use gantry_policy::mcp::direct::{
    AnswerStream, DefinitionBook, DirectCall, DirectHead, DirectMcpPolicy, DirectServer,
};
use gantry_policy::mcp::protocol::header as mcp_header;
use gantry_policy::openai_api::{ROUTING_HEADER, TARGETS_HEADER};
use gantry_policy::{GuardPolicy, LocalReply, Snapshot};

use crate::http_stream::{
    add_gantry_field, gantry_metadata, header, immediate, respond, set_header, string_value,
};

fn book() -> &'static Mutex<DefinitionBook> {
    static BOOK: OnceLock<Mutex<DefinitionBook>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

/// One MCP request to a direct server.
pub(crate) struct McpExchange {
    policy: Arc<DirectMcpPolicy>,
    snapshot: Arc<Snapshot>,
    server: Arc<DirectServer>,
    caller: McpCaller,
    /// The request's headers by lower-case name (for the 2026 header checks and rules).
    headers: HashMap<String, String>,
    call: Option<DirectCall>,
    answer: Answer,
}

enum Answer {
    Untouched,
    Buffered,
    Streamed(AnswerStream),
}

/// Handles request headers on a direct MCP server's path. `None`: not one.
pub(crate) fn on_request_headers(
    snapshot: &Arc<Snapshot>,
    headers: &HttpHeaders,
    caller: &Caller,
) -> Option<(ProcessingResponse, Option<Box<McpExchange>>)> {
    let policy = snapshot.mcp_direct.as_ref()?;
    let map = headers.headers.as_ref();
    let server = policy.route(header(map, ":path").unwrap_or(""))?.clone();
    let method = header(map, ":method").unwrap_or("");
    // The 2026 routing headers are always checked against the body; the rest only for rules.
    let kept: HashMap<String, String> = if policy.rules_read_headers() {
        crate::http_stream::all_headers(map).into_iter().collect()
    } else {
        [
            mcp_header::PROTOCOL_VERSION,
            mcp_header::METHOD,
            mcp_header::NAME,
        ]
        .into_iter()
        .filter_map(|name| Some((name.to_string(), header(map, name)?.to_string())))
        .collect()
    };
    let exchange = Box::new(McpExchange {
        policy: policy.clone(),
        snapshot: snapshot.clone(),
        server,
        caller: crate::a2a::principal(caller),
        headers: kept,
        call: None,
        answer: Answer::Untouched,
    });
    match policy.on_head(&exchange.server, method) {
        DirectHead::Reply(reply) => Some((exchange.refuse(None, &reply), None)),
        DirectHead::PassThrough | DirectHead::ReadBody => {
            let set: Vec<HeaderValueOption> = exchange
                .server
                .upstream_headers()
                .iter()
                .map(|(name, value)| set_header(name, value))
                .collect();
            let response = ProcessingResponse {
                response: Some(Response::RequestHeaders(HeadersResponse {
                    response: Some(CommonResponse {
                        header_mutation: Some(HeaderMutation {
                            set_headers: set,
                            remove_headers: vec![
                                ROUTING_HEADER.to_string(),
                                TARGETS_HEADER.to_string(),
                            ],
                        }),
                        ..Default::default()
                    }),
                })),
                ..Default::default()
            };
            Some((response, Some(exchange)))
        }
    }
}

impl McpExchange {
    fn guards(&self) -> &GuardPolicy {
        &self.snapshot.guards
    }

    fn refuse(&self, call: Option<&DirectCall>, reply: &LocalReply) -> ProcessingResponse {
        let mut response = immediate(reply);
        let mut metadata = self.metadata(call);
        add_gantry_field(&mut metadata, "mcp_refused", reply.details);
        response.dynamic_metadata = Some(metadata);
        response
    }

    fn metadata(&self, call: Option<&DirectCall>) -> Struct {
        let mut fields = vec![("mcp_server", string_value(&self.server.name))];
        if let Some(call) = call {
            if !call.method.is_empty() {
                fields.push(("mcp_method", string_value(&call.method)));
            }
            if let Some(tool) = &call.tool {
                fields.push(("mcp_tool", string_value(tool)));
            }
        }
        gantry_metadata(fields)
    }

    pub(crate) fn on_request_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let headers = &self.headers;
        let lookup = |name: &str| headers.get(name).cloned();
        let decided = {
            let book = book().lock().unwrap_or_else(|e| e.into_inner());
            self.policy.on_body(
                &self.server,
                &body.body,
                &lookup,
                &self.caller,
                headers,
                self.guards(),
                &book,
            )
        };
        let mut call = match decided {
            Ok(call) => call,
            Err(reply) => {
                // What the body said, for the access log, when it can be read.
                let call = serde_json::from_slice::<serde_json::Value>(&body.body)
                    .ok()
                    .map(|m| DirectCall {
                        method: m["method"].as_str().unwrap_or("").to_string(),
                        tool: m["params"]["name"].as_str().map(str::to_string),
                        ..DirectCall::default()
                    });
                return self.refuse(call.as_ref(), &reply);
            }
        };
        let new_body = call.body.take();
        let mut common = CommonResponse::default();
        if let Some(bytes) = new_body {
            common.header_mutation = Some(HeaderMutation {
                set_headers: vec![set_header("content-length", &bytes.len().to_string())],
                remove_headers: Vec::new(),
            });
            common.body_mutation = Some(BodyMutation {
                mutation: Some(Mutation::Body(bytes)),
            });
        }
        let metadata = self.metadata(Some(&call));
        self.call = Some(call);
        ProcessingResponse {
            response: Some(Response::RequestBody(BodyResponse {
                response: Some(common),
            })),
            dynamic_metadata: Some(metadata),
            ..Default::default()
        }
    }

    pub(crate) fn on_response_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let map = headers.headers.as_ref();
        let status: u16 = header(map, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_type = header(map, "content-type").unwrap_or("");
        let reads = self
            .call
            .as_ref()
            .is_some_and(|c| c.reads_answer(&self.policy, self.guards()))
            && (200..300).contains(&status)
            && !headers.end_of_stream;
        let mode = if !reads {
            None
        } else if content_type.starts_with("text/event-stream") {
            self.answer = Answer::Streamed(AnswerStream::default());
            Some(BodySendMode::Streamed)
        } else if content_type.starts_with("application/json") {
            self.answer = Answer::Buffered;
            Some(BodySendMode::Buffered)
        } else {
            None
        };
        let remove_headers = if mode.is_some() {
            vec!["content-length".to_string()]
        } else {
            Vec::new()
        };
        ProcessingResponse {
            response: Some(Response::ResponseHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: Vec::new(),
                        remove_headers,
                    }),
                    ..Default::default()
                }),
            })),
            mode_override: mode.map(|mode| ProcessingMode {
                response_body_mode: mode as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn on_response_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let Some(call) = &self.call else {
            return respond(Response::ResponseBody(BodyResponse::default()));
        };
        let policy = &self.policy;
        let server = &self.server;
        let caller = &self.caller;
        let headers = &self.headers;
        let guards = &self.snapshot.guards;
        let mut check = |message: &mut serde_json::Value| {
            let mut book = book().lock().unwrap_or_else(|e| e.into_inner());
            policy.check_answer(server, call, message, caller, headers, guards, &mut book)
        };
        let bytes = match &mut self.answer {
            Answer::Untouched => None,
            Answer::Buffered if body.end_of_stream => {
                serde_json::from_slice::<serde_json::Value>(&body.body)
                    .ok()
                    .and_then(|mut message| {
                        check(&mut message).then(|| serde_json::to_vec(&message).ok())?
                    })
            }
            Answer::Buffered => None,
            Answer::Streamed(stream) => {
                Some(stream.push(&body.body, body.end_of_stream, &mut check))
            }
        };
        let common = bytes.map(|bytes| CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(Mutation::Body(bytes)),
            }),
            ..Default::default()
        });
        respond(Response::ResponseBody(BodyResponse { response: common }))
    }
}
