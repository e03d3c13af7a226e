//! The tonic `Authorization` service: turns Envoy's check request into an
//! [`AuthRequest`], asks the policy, and turns the [`Decision`] back into a check response.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc;
use gantry_policy::admin::RuntimeDirectory;
use gantry_policy::auth::{AuthRequest, Decision};
use gantry_policy::Snapshot;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::jwks::JwksStore;

/// The config snapshot decisions are made from; swapped whole on reload.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Largest check request accepted: it can carry the whole request body.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// gRPC status codes used in check responses.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;
const GRPC_UNAVAILABLE: i32 = 14;

/// Gantry's ext_authz service.
#[derive(Clone)]
pub struct AuthzService {
    snapshot: SharedSnapshot,
    jwks: Arc<JwksStore>,
    /// Keys made through the admin API, compiled (empty without it).
    runtime: Arc<ArcSwap<RuntimeDirectory>>,
}

impl AuthzService {
    pub fn new(snapshot: SharedSnapshot, jwks: Arc<JwksStore>) -> AuthzService {
        AuthzService {
            snapshot,
            jwks,
            runtime: Arc::new(ArcSwap::from_pointee(RuntimeDirectory::empty())),
        }
    }

    /// Also checks keys against the admin API's directory (which its sync keeps current).
    pub fn with_runtime_directory(
        mut self,
        runtime: Arc<ArcSwap<RuntimeDirectory>>,
    ) -> AuthzService {
        self.runtime = runtime;
        self
    }

    /// The service wrapped for tonic, with message limits suitable for bodies.
    pub fn into_server(self) -> AuthorizationServer<AuthzService> {
        AuthorizationServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Decides on one check request.
    pub async fn decide(&self, request: &CheckRequest) -> CheckResponse {
        let snapshot = self.snapshot.load_full();
        let Some(policy) = snapshot.auth.as_ref() else {
            // No auth section: everything is allowed (Envoy is normally not wired to call us).
            return ok_response(Vec::new(), Vec::new(), None);
        };
        let empty_headers = HashMap::new();
        let attributes = request.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let source = attributes.and_then(|a| a.source.as_ref());
        let source_address = source
            .and_then(|s| s.address.as_ref())
            .and_then(socket_ip)
            .unwrap_or_default();
        let body: &[u8] = match http {
            Some(h) if !h.raw_body.is_empty() => &h.raw_body,
            Some(h) => h.body.as_bytes(),
            None => &[],
        };
        let auth_request = AuthRequest {
            method: http.map_or("", |h| h.method.as_str()),
            path: http.map_or("", |h| h.path.as_str()),
            host: http.map_or("", |h| h.host.as_str()),
            scheme: http.map_or("", |h| h.scheme.as_str()),
            headers: http.map_or(&empty_headers, |h| &h.headers),
            source_address: &source_address,
            peer_principal: source.map_or("", |s| s.principal.as_str()),
            peer_certificate: source.map_or("", |s| s.certificate.as_str()),
            body,
            now: unix_now(),
        };
        let runtime = self.runtime.load();
        match policy
            .check_with(&auth_request, &*self.jwks, &runtime)
            .await
        {
            Decision::Allow(allowed) => {
                tracing::debug!(
                    subject = allowed.principal.as_ref().map(|p| p.subject.as_str()),
                    path = auth_request.path,
                    "request allowed"
                );
                let set = allowed
                    .set_headers
                    .into_iter()
                    .map(|(name, value)| header(name, &value))
                    .collect();
                let remove = allowed
                    .remove_headers
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                ok_response(set, remove, Some(to_struct(allowed.metadata)))
            }
            Decision::Deny(denial) => {
                let mut headers = vec![header("content-type", "application/json")];
                if let Some(challenge) = &denial.www_authenticate {
                    headers.push(header("www-authenticate", challenge));
                }
                let grpc_code = match denial.status {
                    401 => GRPC_UNAUTHENTICATED,
                    403 => GRPC_PERMISSION_DENIED,
                    _ => GRPC_UNAVAILABLE,
                };
                CheckResponse {
                    status: Some(rpc::Status {
                        code: grpc_code,
                        message: denial.message.clone(),
                        details: Vec::new(),
                    }),
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: i32::from(denial.status),
                        }),
                        headers,
                        body: String::from_utf8_lossy(&denial.body).into_owned(),
                    })),
                    dynamic_metadata: Some(to_struct(serde_json::Map::from_iter([(
                        "denied".to_string(),
                        serde_json::Value::String(denial.code.to_string()),
                    )]))),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref()).await))
    }
}

fn ok_response(
    headers: Vec<HeaderValueOption>,
    headers_to_remove: Vec<String>,
    metadata: Option<Struct>,
) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: GRPC_OK,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: metadata,
    }
}

/// A header that replaces any value the client sent.
fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: value.to_string(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn socket_ip(address: &envoy_types::pb::envoy::config::core::v3::Address) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
    match address.address.as_ref()? {
        Kind::SocketAddress(socket) => Some(socket.address.clone()),
        _ => None,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// Serves ext_authz on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: AuthzService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Each decision is one small message on the request's critical path: no Nagle delay.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};
    use gantry_policy::auth::api_keys::KeyHash;
    use gantry_policy::ConfigFile;

    fn service() -> AuthzService {
        let text = format!(
            "listen: 127.0.0.1:10000\nauth:\n  api_keys: [{{ name: k1, hash: '{}', user: ann }}]\n",
            KeyHash::of("secret-1")
        );
        let config = ConfigFile::parse(&text).unwrap();
        let snapshot = Snapshot::compile(&config, &|_| None);
        let jwks = Arc::new(JwksStore::new(snapshot.auth.as_ref().unwrap()).unwrap());
        AuthzService::new(Arc::new(ArcSwap::from_pointee(snapshot)), jwks)
    }

    fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: "/v1/models".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn allow_overwrites_identity_headers_and_removes_credentials() {
        let response = service()
            .decide(&check_request(&[("x-api-key", "secret-1")]))
            .await;
        assert_eq!(response.status.unwrap().code, GRPC_OK);
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not an OK response");
        };
        let subject = ok
            .headers
            .iter()
            .find(|h| h.header.as_ref().unwrap().key == "x-gantry-subject")
            .expect("subject header");
        assert_eq!(subject.header.as_ref().unwrap().value, "ann");
        assert_eq!(
            subject.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        for removed in ["x-gantry-team", "authorization", "x-api-key"] {
            assert!(
                ok.headers_to_remove.iter().any(|h| h == removed),
                "{removed}"
            );
        }
        let metadata = response.dynamic_metadata.unwrap();
        assert_eq!(
            metadata.fields["subject"].kind,
            Some(Kind::StringValue("ann".into()))
        );
    }

    #[tokio::test]
    async fn denial_carries_status_challenge_and_json_body() {
        let response = service()
            .decide(&check_request(&[("x-api-key", "wrong")]))
            .await;
        assert_eq!(response.status.unwrap().code, GRPC_UNAUTHENTICATED);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not a denial");
        };
        assert_eq!(denied.status.unwrap().code, 401);
        let keys: Vec<&str> = denied
            .headers
            .iter()
            .map(|h| h.header.as_ref().unwrap().key.as_str())
            .collect();
        assert!(keys.contains(&"www-authenticate") && keys.contains(&"content-type"));
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
}
