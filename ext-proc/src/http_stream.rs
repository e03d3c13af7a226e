//! One HTTP request as ext_proc sees it: a state machine fed one `ProcessingRequest` at a time,
//! answering each with exactly one `ProcessingResponse`.
//!
//! Holds only that request's state. All decisions come from the policy core; this module only
//! translates them into Envoy's header and body mutations.

use std::sync::Arc;

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
use gantry_policy::openai_api::{MODELS_LIST_DETAILS, ROUTING_HEADER};
use gantry_policy::usage::usage_from_json;
use gantry_policy::{
    decide_on_head, plan_forward, ChunkOutput, ForwardPlan, HeadDecision, LlmApi, LocalReply,
    Snapshot, StreamAccountant, Usage,
};

/// The dynamic metadata namespace Gantry writes (Envoy must list it in `receiving_namespaces`).
pub const METADATA_NAMESPACE: &str = "gantry";

/// Response headers carrying usage on non-streamed replies.
pub const PROMPT_TOKENS_HEADER: &str = "x-gantry-prompt-tokens";
pub const COMPLETION_TOKENS_HEADER: &str = "x-gantry-completion-tokens";
pub const TOTAL_TOKENS_HEADER: &str = "x-gantry-total-tokens";
pub const MODEL_HEADER: &str = "x-gantry-model";
pub const UPSTREAM_MODEL_HEADER: &str = "x-gantry-upstream-model";

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
}

enum ResponseBody {
    /// Not inspected (error statuses, no body, unknown content type).
    Ignored,
    /// JSON read whole for its usage.
    Buffered,
    /// SSE passed on chunk by chunk.
    Streamed(StreamAccountant),
}

/// The dynamic metadata namespace of Envoy's ext_authz filter, where Gantry's ext_authz server
/// leaves the admitted principal (Envoy forwards it with `forwarding_namespaces`).
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// The caller ext_authz admitted, as far as ext_proc needs to know.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: Option<String>,
    pub team: Option<String>,
    /// The API key's model allow-list, when it has one.
    pub allowed_models: Option<Vec<String>>,
}

impl Caller {
    fn from_metadata(metadata: Option<&Metadata>) -> Caller {
        let Some(fields) = metadata
            .and_then(|m| m.filter_metadata.get(EXT_AUTHZ_NAMESPACE))
            .map(|s| &s.fields)
        else {
            return Caller::default();
        };
        let text = |key: &str| match fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => Some(s.clone()),
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
        Caller {
            subject: text("subject"),
            team: text("team"),
            allowed_models,
        }
    }
}

/// The state of one ext_proc stream (one HTTP request).
pub struct HttpStream {
    snapshot: Arc<Snapshot>,
    phase: Phase,
    caller: Caller,
}

impl HttpStream {
    pub fn new(snapshot: Arc<Snapshot>) -> HttpStream {
        HttpStream {
            snapshot,
            phase: Phase::Idle,
            caller: Caller::default(),
        }
    }

    /// Answers one message. Every message gets exactly one response.
    pub fn handle(&mut self, message: ProcessingRequest) -> ProcessingResponse {
        match message.request {
            Some(Request::RequestHeaders(headers)) => {
                self.caller = Caller::from_metadata(message.metadata_context.as_ref());
                self.on_request_headers(&headers)
            }
            Some(Request::RequestBody(body)) => self.on_request_body(&body),
            Some(Request::ResponseHeaders(headers)) => self.on_response_headers(&headers),
            Some(Request::ResponseBody(body)) => self.on_response_body(&body),
            Some(Request::RequestTrailers(_)) => {
                respond(Response::RequestTrailers(TrailersResponse::default()))
            }
            Some(Request::ResponseTrailers(_)) => {
                respond(Response::ResponseTrailers(TrailersResponse::default()))
            }
            None => ProcessingResponse::default(),
        }
    }

    fn on_request_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let map = headers.headers.as_ref();
        let method = header(map, ":method").unwrap_or("");
        let path = header(map, ":path").unwrap_or("");
        let content_length = header(map, "content-length").and_then(|v| v.parse().ok());
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
                self.phase = Phase::AwaitingBody(api);
                respond(Response::RequestHeaders(HeadersResponse::default()))
            }
        }
    }

    fn on_request_body(&mut self, body: &HttpBody) -> ProcessingResponse {
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
        let mut plan = match plan_forward(&self.snapshot, api, &body.body) {
            Ok(plan) => plan,
            Err(reply) => {
                self.phase = Phase::Idle;
                tracing::debug!(
                    status = reply.status,
                    details = reply.details,
                    "request refused"
                );
                return immediate(&reply);
            }
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
            set_header(ROUTING_HEADER, &route.provider.name),
            set_header("content-length", &upstream_body.len().to_string()),
        ];
        let mut remove_headers = vec!["x-api-key".to_string()];
        match plan.authorization() {
            Some(value) => set_headers.push(set_header("authorization", value)),
            None => remove_headers.push("authorization".to_string()),
        }
        let caller = |value: &Option<String>| string_value(value.as_deref().unwrap_or(""));
        let metadata = gantry_metadata([
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
        ]);
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
        }));
        ProcessingResponse {
            response: Some(Response::RequestBody(BodyResponse {
                response: Some(common),
            })),
            dynamic_metadata: Some(metadata),
            ..Default::default()
        }
    }

    fn on_response_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let Phase::Forwarded(exchange) = &mut self.phase else {
            return respond(Response::ResponseHeaders(HeadersResponse::default()));
        };
        let map = headers.headers.as_ref();
        let status: u16 = header(map, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_type = header(map, "content-type").unwrap_or("");
        let route = &exchange.plan.route;
        let set_headers = vec![
            set_header(ROUTING_HEADER, &route.provider.name),
            set_header(MODEL_HEADER, &route.alias),
            set_header(UPSTREAM_MODEL_HEADER, &route.upstream_model),
        ];
        let success = (200..300).contains(&status);
        let mode = if !success || headers.end_of_stream {
            None
        } else if content_type.starts_with("text/event-stream") {
            exchange.response =
                ResponseBody::Streamed(StreamAccountant::new(exchange.plan.usage_injected));
            Some(BodySendMode::Streamed)
        } else if content_type.starts_with("application/json") {
            exchange.response = ResponseBody::Buffered;
            Some(BodySendMode::Buffered)
        } else {
            None
        };
        ProcessingResponse {
            response: Some(Response::ResponseHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers,
                        remove_headers: vec![],
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

    fn on_response_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let Phase::Forwarded(exchange) = &mut self.phase else {
            return respond(Response::ResponseBody(BodyResponse::default()));
        };
        match &mut exchange.response {
            ResponseBody::Ignored => respond(Response::ResponseBody(BodyResponse::default())),
            ResponseBody::Buffered => {
                let usage = usage_from_json(&body.body);
                let header_mutation = usage.map(|u| HeaderMutation {
                    set_headers: vec![
                        set_header(PROMPT_TOKENS_HEADER, &u.prompt_tokens.to_string()),
                        set_header(COMPLETION_TOKENS_HEADER, &u.completion_tokens.to_string()),
                        set_header(TOTAL_TOKENS_HEADER, &u.total_tokens.to_string()),
                    ],
                    remove_headers: vec![],
                });
                ProcessingResponse {
                    response: Some(Response::ResponseBody(BodyResponse {
                        response: Some(CommonResponse {
                            header_mutation,
                            ..Default::default()
                        }),
                    })),
                    dynamic_metadata: usage.map(usage_metadata),
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
                let metadata = if body.end_of_stream {
                    accountant.usage().map(usage_metadata)
                } else {
                    None
                };
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

fn respond(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

fn immediate(reply: &LocalReply) -> ProcessingResponse {
    respond(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(reply.status),
        }),
        headers: Some(HeaderMutation {
            set_headers: vec![set_header("content-type", "application/json")],
            remove_headers: vec![],
        }),
        body: reply.body.to_vec(),
        grpc_status: None,
        details: reply.details.to_string(),
    }))
}

/// A header value as Envoy sent it (`raw_value` on current Envoy, `value` on old ones).
fn header<'a>(map: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let found = map?.headers.iter().find(|h| h.key == name)?;
    if found.raw_value.is_empty() {
        Some(found.value.as_str())
    } else {
        std::str::from_utf8(&found.raw_value).ok()
    }
}

/// A header to set, overwriting any value the client sent. Uses `raw_value`: Envoy applies a
/// value sent in `value` as empty.
fn set_header(name: &str, value: &str) -> HeaderValueOption {
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

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn number_value(n: u64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n as f64)),
    }
}

fn gantry_metadata<const N: usize>(fields: [(&str, Value); N]) -> Struct {
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

fn usage_metadata(usage: Usage) -> Struct {
    gantry_metadata([
        ("prompt_tokens", number_value(usage.prompt_tokens)),
        ("completion_tokens", number_value(usage.completion_tokens)),
        ("total_tokens", number_value(usage.total_tokens)),
    ])
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
        HttpStream::new(Arc::new(snapshot))
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

    fn forward(stream: &mut HttpStream, body: &str) -> ProcessingResponse {
        let head = stream.handle(message(Request::RequestHeaders(headers(
            &[(":method", "POST"), (":path", "/v1/chat/completions")],
            false,
        ))));
        assert!(matches!(head.response, Some(Response::RequestHeaders(_))));
        stream.handle(message(Request::RequestBody(HttpBody {
            body: body.as_bytes().to_vec(),
            end_of_stream: true,
            ..Default::default()
        })))
    }

    #[test]
    fn body_response_reroutes_rewrites_and_fixes_content_length() {
        let mut stream = stream();
        let response = forward(&mut stream, r#"{"model":"fast","messages":[]}"#);
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

    #[test]
    fn response_mode_follows_content_type_and_status() {
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
            forward(&mut stream, r#"{"model":"fast","stream":true}"#);
            let response = stream.handle(message(Request::ResponseHeaders(headers(
                &[(":status", status), ("content-type", content_type)],
                false,
            ))));
            let mode = response
                .mode_override
                .map(|m| BodySendMode::try_from(m.response_body_mode).unwrap());
            assert_eq!(mode, expected, "{status} {content_type}");
        }
    }

    #[test]
    fn buffered_json_reply_yields_usage_headers_and_metadata() {
        let mut stream = stream();
        forward(&mut stream, r#"{"model":"fast"}"#);
        stream.handle(message(Request::ResponseHeaders(headers(
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        ))));
        let response = stream.handle(message(Request::ResponseBody(HttpBody {
            body: br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#
                .to_vec(),
            end_of_stream: true,
            ..Default::default()
        })));
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

    #[test]
    fn local_replies_and_unknown_messages_pass_untouched() {
        let mut stream = stream();
        // A local reply from another filter: response headers arrive first.
        let response = stream.handle(message(Request::ResponseHeaders(headers(
            &[(":status", "401")],
            true,
        ))));
        assert!(matches!(
            response.response,
            Some(Response::ResponseHeaders(_))
        ));
        assert!(response.mode_override.is_none());
        let unknown = stream.handle(ProcessingRequest::default());
        assert_eq!(unknown, ProcessingResponse::default());
    }

    #[test]
    fn refused_requests_become_immediate_json_responses() {
        let mut stream = stream();
        let response = forward(&mut stream, r#"{"model":"nope"}"#);
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
}
