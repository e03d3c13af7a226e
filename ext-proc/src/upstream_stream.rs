//! The upstream side: ext_proc streams from the filter Envoy runs in an alias's own cluster,
//! once per attempt, after it has picked the target (an endpoint of that cluster). The request
//! arrives in canonical form (the downstream stream has resolved, guarded and metered it);
//! this stream turns it into the target provider's call (path, host, credentials, translated
//! body, SigV4) and the provider's reply back into canonical form (JSON or SSE), so that a
//! retry on another target is translated for that target. It holds no policy: what to send
//! where comes from the snapshot, how to say it from `gantry_policy::translate`.
//!
//! Envoy names the target in the endpoint's metadata (`gantry.target`, its index in the alias's
//! targets), read through the `xds.upstream_host_metadata` attribute of the request headers
//! message; the alias is in the cluster's name (`xds.cluster_name`, see
//! [`target_cluster_name`]).

use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    processing_mode::BodySendMode, ProcessingMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request, processing_response::Response,
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use gantry_policy::openai_api::ROUTING_HEADER;
use gantry_policy::snapshot::{Credential, ModelRoute, Target, TargetMask};
use gantry_policy::translate::provider::ProviderFormat;
use gantry_policy::translate::StreamTranslator;
use gantry_policy::{LlmApi, LocalReply, Snapshot};

use crate::http_stream::{header, immediate, respond, set_header, UPSTREAM_MODEL_HEADER};

/// Names of the clusters that serve an alias through the upstream filter: this, then the alias.
pub const TARGET_CLUSTER_PREFIX: &str = "model_";
/// Names of the clusters that serve an alias with only some of its targets (those a request's
/// `when` conditions leave): this, the hex [`TargetMask`], `_`, then the alias.
pub const SUBSET_CLUSTER_PREFIX: &str = "model~";

/// The name of the cluster serving `alias` with all its targets (`subset: None`) or only
/// those in `subset`. Names of the two kinds never collide, whatever the alias.
pub fn target_cluster_name(alias: &str, subset: Option<TargetMask>) -> String {
    match subset {
        None => format!("{TARGET_CLUSTER_PREFIX}{alias}"),
        Some(mask) => format!("{SUBSET_CLUSTER_PREFIX}{}_{alias}", mask.to_hex()),
    }
}

/// The alias (and target subset) a [`target_cluster_name`] names.
pub fn parse_target_cluster_name(name: &str) -> Option<(&str, Option<TargetMask>)> {
    if let Some(alias) = name.strip_prefix(TARGET_CLUSTER_PREFIX) {
        return Some((alias, None));
    }
    let (hex, alias) = name.strip_prefix(SUBSET_CLUSTER_PREFIX)?.split_once('_')?;
    Some((alias, Some(TargetMask::parse_hex(hex)?)))
}
/// The gRPC metadata key, and value, the upstream filter's ext_proc streams carry.
pub const CHAIN_METADATA: (&str, &str) = ("x-gantry-chain", "upstream");
/// The response header naming the target that answered: `<provider>/<model>`.
pub const TARGET_HEADER: &str = "x-gantry-target";
/// The endpoint metadata key (namespace `gantry`) that holds the target's index.
pub const TARGET_METADATA_KEY: &str = "target";

/// How the provider's reply is being read.
enum ReplyReading {
    /// Passed on as it is (OpenAI format, or nothing to read).
    AsIs,
    /// A whole reply, translated once it has all arrived.
    Whole {
        status: u16,
        error_type: Option<String>,
        body: Vec<u8>,
    },
    /// A stream, translated event by event.
    Stream(Box<dyn StreamTranslator>),
}

/// One attempt through the upstream filter.
pub struct UpstreamStream {
    snapshot: Arc<Snapshot>,
    target: Option<(Arc<ModelRoute>, usize)>,
    /// The client's path (the API), as the downstream stream left it.
    path: String,
    reply: ReplyReading,
}

impl UpstreamStream {
    pub fn new(snapshot: Arc<Snapshot>) -> UpstreamStream {
        UpstreamStream {
            snapshot,
            target: None,
            path: String::new(),
            reply: ReplyReading::AsIs,
        }
    }

    pub fn handle(&mut self, message: ProcessingRequest) -> ProcessingResponse {
        match message.request {
            Some(Request::RequestHeaders(headers)) => {
                self.on_request_headers(&message.attributes, &headers)
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

    fn target(&self) -> Option<&Target> {
        let (route, index) = self.target.as_ref()?;
        route.targets.get(*index)
    }

    fn on_request_headers(
        &mut self,
        attributes: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Struct>,
        headers: &HttpHeaders,
    ) -> ProcessingResponse {
        let found = attributes.values().find_map(|fields| {
            let text = |key: &str| match fields.fields.get(key).and_then(|v| v.kind.as_ref()) {
                Some(Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            };
            let (alias, _) = parse_target_cluster_name(text("xds.cluster_name")?)?;
            let index = target_index(text("xds.upstream_host_metadata")?)?;
            Some((alias.to_string(), index))
        });
        let route = found.as_ref().and_then(|(alias, index)| {
            let route = self.snapshot.model(alias)?;
            (*index < route.targets.len()).then(|| (route.clone(), *index))
        });
        let Some(route) = route else {
            tracing::error!(?found, "upstream filter: the attempt names no known target");
            return immediate(&LocalReply::openai_error(
                500,
                "server_error",
                "gantry_misconfigured",
                None,
                "gantry's upstream filter cannot tell which target this attempt goes to (its Envoy config and its gantry config disagree)",
            ));
        };
        self.target = Some(route);
        self.path = header(headers.headers.as_ref(), ":path")
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        respond(Response::RequestHeaders(HeadersResponse::default()))
    }

    fn on_request_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let Some((route, index)) = self.target.clone() else {
            return respond(Response::RequestBody(BodyResponse::default()));
        };
        let target = &route.targets[index];
        let provider = &target.provider;
        if !provider.is_available() {
            // Normally left out of the cluster when its key is unset: refuse, naming it.
            return immediate(&LocalReply::openai_error(
                503,
                "service_unavailable",
                "provider_unavailable",
                Some("model"),
                format!(
                    "target '{}' of model '{}' has no credentials set",
                    provider.name, route.alias
                ),
            ));
        }
        let chat: serde_json::Value = match serde_json::from_slice(&body.body) {
            Ok(value) => value,
            Err(e) => {
                return immediate(&LocalReply::openai_error(
                    400,
                    "invalid_request_error",
                    "invalid_json",
                    None,
                    format!("request body is not a valid JSON object: {e}"),
                ))
            }
        };
        let authority = provider.endpoint.authority();
        let (path, mut headers, upstream_body) = match provider.format {
            ProviderFormat::OpenAi => {
                let mut chat = chat;
                if let Some(object) = chat.as_object_mut() {
                    object.insert("model".into(), target.upstream_model.clone().into());
                }
                // The client's API (an Anthropic front door's call arrives as chat).
                let api = api_of(&self.path).unwrap_or(LlmApi::ChatCompletions);
                let path = provider
                    .upstream_path(api, &target.upstream_model)
                    .unwrap_or_else(|| api.path().to_string());
                let mut headers = Vec::new();
                if let Credential::Header { name, value } = &provider.credential {
                    headers.push((name.to_string(), value.expose().to_string()));
                }
                (path, headers, chat.to_string().into_bytes())
            }
            format => {
                let call = match format.call(
                    &chat,
                    &target.upstream_model,
                    &provider.upstream_credential,
                    &authority,
                    SystemTime::now(),
                ) {
                    Ok(call) => call,
                    Err(e) => {
                        return immediate(&LocalReply::openai_error(
                            400,
                            "invalid_request_error",
                            "unsupported_for_provider",
                            e.param.as_deref(),
                            format!(
                                "model '{}' is served by '{}' ({}), which cannot take this request: {e}",
                                route.alias,
                                provider.name,
                                provider.kind.as_str()
                            ),
                        ))
                    }
                };
                (call.path, call.headers, call.body)
            }
        };
        headers.push(("content-length".into(), upstream_body.len().to_string()));
        // `Host` is the target's, by the route's auto_host_rewrite (Envoy does not apply an
        // upstream filter's `:authority` mutation [1.40]); the signature above covers it.
        let set: Vec<HeaderValueOption> = std::iter::once((
            ":path".to_string(),
            format!("{}{path}", provider.endpoint.base_path),
        ))
        .chain(headers.drain(..))
        .map(|(name, value)| set_header(&name, &value))
        .collect();
        let set_names: Vec<String> = set
            .iter()
            .filter_map(|h| h.header.as_ref().map(|h| h.key.clone()))
            .collect();
        let remove: Vec<String> = ["authorization", "x-api-key", "api-key", "x-goog-api-key"]
            .into_iter()
            .filter(|name| !set_names.iter().any(|s| s == name))
            .map(str::to_string)
            .collect();
        tracing::debug!(
            model = %route.alias,
            provider = %provider.name,
            upstream_model = %target.upstream_model,
            "upstream attempt"
        );
        respond(Response::RequestBody(BodyResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers: set,
                    remove_headers: remove,
                }),
                body_mutation: Some(BodyMutation {
                    mutation: Some(Mutation::Body(upstream_body)),
                }),
                ..Default::default()
            }),
        }))
    }

    fn on_response_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let Some(target) = self.target() else {
            return respond(Response::ResponseHeaders(HeadersResponse::default()));
        };
        let map = headers.headers.as_ref();
        let status: u16 = header(map, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_type = header(map, "content-type").unwrap_or("");
        let mut set = vec![
            set_header(ROUTING_HEADER, &target.provider.name),
            set_header(UPSTREAM_MODEL_HEADER, &target.upstream_model),
            set_header(
                TARGET_HEADER,
                &format!("{}/{}", target.provider.name, target.upstream_model),
            ),
        ];
        let format = target.provider.format;
        let alias = self.target.as_ref().map_or("", |(r, _)| r.alias.as_str());
        let mut remove = Vec::new();
        let mut mode = None;
        if format != ProviderFormat::OpenAi && !headers.end_of_stream {
            let streamed = content_type.starts_with("text/event-stream")
                || content_type.starts_with("application/vnd.amazon.eventstream");
            self.reply = match format.stream(alias, true) {
                Some(translator) if (200..300).contains(&status) && streamed => {
                    set.push(set_header("content-type", "text/event-stream"));
                    ReplyReading::Stream(translator)
                }
                _ => {
                    set.push(set_header("content-type", "application/json"));
                    ReplyReading::Whole {
                        status,
                        error_type: header(map, "x-amzn-errortype").map(str::to_string),
                        body: Vec::new(),
                    }
                }
            };
            remove.push("content-length".to_string());
            mode = Some(ProcessingMode {
                response_body_mode: BodySendMode::Streamed as i32,
                ..Default::default()
            });
        }
        ProcessingResponse {
            response: Some(Response::ResponseHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: set,
                        remove_headers: remove,
                    }),
                    ..Default::default()
                }),
            })),
            mode_override: mode,
            ..Default::default()
        }
    }

    fn on_response_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        let alias = self
            .target
            .as_ref()
            .map_or(String::new(), |(r, _)| r.alias.clone());
        let format = self.target().map(|t| t.provider.format);
        let out = match (&mut self.reply, format) {
            (ReplyReading::AsIs, _) | (_, None) => {
                return respond(Response::ResponseBody(BodyResponse::default()))
            }
            (ReplyReading::Stream(translator), _) => {
                let mut out = translator.push(&body.body);
                if body.end_of_stream {
                    out.extend(translator.finish());
                }
                out
            }
            (
                ReplyReading::Whole {
                    status,
                    error_type,
                    body: held,
                },
                Some(format),
            ) => {
                held.extend_from_slice(&body.body);
                if !body.end_of_stream {
                    Vec::new()
                } else {
                    format
                        .reply(*status, held, error_type.as_deref(), &alias)
                        .body
                }
            }
        };
        respond(Response::ResponseBody(BodyResponse {
            response: Some(CommonResponse {
                body_mutation: Some(BodyMutation {
                    mutation: Some(Mutation::Body(out)),
                }),
                ..Default::default()
            }),
        }))
    }
}

/// The API a client path names.
fn api_of(path: &str) -> Option<LlmApi> {
    [
        LlmApi::ChatCompletions,
        LlmApi::Completions,
        LlmApi::Embeddings,
    ]
    .into_iter()
    .find(|api| api.path() == path)
}

/// The target index in `xds.upstream_host_metadata` (a text-format `Metadata`, e.g.
/// `filter_metadata { key: "gantry" value { fields { key: "target" value { string_value: "1" } } } }`).
fn target_index(metadata: &str) -> Option<usize> {
    let after_key = &metadata[metadata.find(&format!("key: \"{TARGET_METADATA_KEY}\""))?..];
    let value = &after_key[after_key.find("string_value: \"")? + "string_value: \"".len()..];
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_say_the_alias_and_subset_whatever_the_alias() {
        for alias in ["smart", "a_b", "model~1_x", "x/y", ""] {
            for subset in [None, Some(TargetMask::from_bits(0x5))] {
                let name = target_cluster_name(alias, subset);
                assert_eq!(parse_target_cluster_name(&name), Some((alias, subset)));
            }
        }
        assert_ne!(
            target_cluster_name("~1_a", None),
            target_cluster_name("a", Some(TargetMask::from_bits(1)))
        );
        assert_eq!(parse_target_cluster_name("ext_proc"), None);
        assert_eq!(parse_target_cluster_name("model~zz_a"), None);
    }

    #[test]
    fn the_target_index_is_read_from_envoys_text_metadata() {
        let text = "filter_metadata { key: \"gantry\" value { fields { key: \"target\" value { string_value: \"12\" } } } } ";
        assert_eq!(target_index(text), Some(12));
        assert_eq!(target_index("filter_metadata { }"), None);
        assert_eq!(
            target_index("fields { key: \"target\" value { string_value: \"x\" } }"),
            None
        );
    }
}
