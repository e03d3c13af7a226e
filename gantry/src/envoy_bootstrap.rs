//! Renders a complete Envoy bootstrap from a Gantry config.
//!
//! The bootstrap has one listener whose HTTP connection manager runs Gantry's ext_proc filter and
//! the router; a route per provider, selected by the routing header ext_proc sets (plus a
//! catch-all that only answers when ext_proc could not); a cluster per provider (TLS with SNI
//! for https endpoints); the ext_proc gRPC cluster (HTTP/2); admin on loopback; a JSON access
//! log carrying Gantry's usage metadata.
//!
//! With [`FilterMode::Module`] the same listener, routes and clusters run Gantry's dynamic
//! module (`libgantry.so`) in place of ext_authz and ext_proc: no gRPC hop, no ext_proc or
//! ext_authz cluster. The module's `filter_config` is the Gantry config itself, as JSON.
//!
//! Processing phases are chosen for speed: request headers and the buffered request body (the
//! model is in the body), response headers (to pick the response body mode per request), and no
//! response body unless ext_proc asks for it with `mode_override`: BUFFERED for JSON replies,
//! STREAMED for `text/event-stream`.

use serde_json::{json, Value};

use gantry_ext_proc::http_stream::METADATA_NAMESPACE;
use gantry_ext_proc::upstream_stream::{
    parse_target_cluster_name, target_cluster_name, CHAIN_METADATA, TARGET_METADATA_KEY,
};
use gantry_policy::auth::IDENTITY_HEADERS;
use gantry_policy::config::{
    AuthSection, ConfigFile, CorsSection, DEFAULT_CORS_HEADERS, DEFAULT_CORS_METHODS,
};
use gantry_policy::config::{RetrySection, TargetRef};
use gantry_policy::endpoint::ProviderEndpoint;
use gantry_policy::openai_api::{ROUTING_HEADER, TARGETS_HEADER, TARGETS_ROUTE_PREFIX};
use gantry_policy::snapshot::TargetMask;
use gantry_policy::FailureMode;

/// The CA bundle Envoy verifies https providers against unless a provider names its own.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The ext_proc gRPC cluster's name.
pub const EXT_PROC_CLUSTER: &str = "gantry_ext_proc";
/// The route that matches until ext_proc picks a provider, and its endpoint-less cluster.
const CATCH_ALL_ROUTE: &str = "gantry_catch_all";
const NO_PROVIDER_CLUSTER: &str = "gantry_no_provider";
/// The ext_authz gRPC cluster's name.
pub const EXT_AUTHZ_CLUSTER: &str = "gantry_ext_authz";
/// The MCP bridge's cluster (plain HTTP/1.1 on loopback).
pub const MCP_BRIDGE_CLUSTER: &str = "gantry_mcp_bridge";
/// The namespace Envoy's ext_authz filter writes the principal's dynamic metadata under.
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";
/// Per-connection buffer (at least 32 MiB): bounds request bodies and the JSON replies that
/// ext_proc reads whole.
const CONNECTION_BUFFER_BYTES: u64 = 32 * 1024 * 1024;
/// Envoy refuses connections beyond this many, instead of running out of file descriptors.
const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;
/// How much longer than the slowest provider the ext_proc stream may live.
const STREAM_DEADLINE_MARGIN_SECS: u64 = 30;

/// The cluster name for a provider.
pub fn provider_cluster(name: &str) -> String {
    format!("provider_{name}")
}

/// Which Envoy filters carry Gantry's policy.
#[derive(Debug, Clone, Default)]
pub enum FilterMode {
    /// Gantry's ext_authz (when the config has `auth`) and ext_proc gRPC servers.
    #[default]
    ExtProc,
    /// Gantry's dynamic module inside Envoy.
    Module(ModuleFilter),
}

/// How the module filter is configured.
#[derive(Debug, Clone)]
pub struct ModuleFilter {
    /// The Gantry config as JSON text (see [`config_as_json`]): the module's `filter_config`.
    pub config_json: String,
    /// Where `libgantry.so` is. `None`: Envoy looks for `libgantry.so` in
    /// `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (else its working directory), then the library path.
    pub library: Option<std::path::PathBuf>,
}

/// The module's name: Envoy loads `lib<name>.so`; also the filter name it is configured under.
pub const MODULE_NAME: &str = "gantry";

/// A Gantry config's text (YAML or JSON) as compact JSON, for the module's `filter_config`.
pub fn config_as_json(text: &str) -> Result<String, RenderError> {
    let value: Value =
        serde_saphyr::from_str(text).map_err(|e| RenderError::Yaml(e.to_string()))?;
    Ok(value.to_string())
}

/// What the module cannot do; the message says which mode can.
fn module_unsupported(config: &ConfigFile) -> Option<&'static str> {
    if config.auth.as_ref().is_some_and(|a| !a.jwt.is_empty()) {
        return Some("auth.jwt (JWKS fetching needs the ext_authz server)");
    }
    let client_certificates = config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    if client_certificates && config.auth.as_ref().is_some_and(|a| a.mtls_identity) {
        return Some(
            "auth.mtls_identity with client certificates (the module does not read them yet)",
        );
    }
    if config.governance.is_some() {
        return Some("governance (budgets and rate limits need the store)");
    }
    if config.a2a.is_some() {
        return Some("a2a (agent cards, A2A policy and the registry run in ext_proc)");
    }
    if config.mcp_direct.is_some() {
        return Some("mcp_direct (inline MCP policy runs in ext_proc)");
    }
    if config.models.iter().any(|m| via_upstream_filter(config, m)) {
        return Some(
            "models with several targets or a translated provider kind (anthropic, gemini, bedrock: they need Gantry's upstream filter)",
        );
    }
    let webhook_guards = config
        .guards
        .as_ref()
        .is_some_and(|g| g.request.iter().any(|guard| guard.webhook.is_some()));
    if webhook_guards {
        return Some("webhook guards (the module makes no HTTP calls of its own)");
    }
    None
}

/// Renders the bootstrap as YAML. `source` names the config file in the header comment.
pub fn render_yaml(config: &ConfigFile, source: &str) -> Result<String, RenderError> {
    render_yaml_with(config, source, &FilterMode::ExtProc)
}

/// [`render_yaml`] for a filter mode.
pub fn render_yaml_with(
    config: &ConfigFile,
    source: &str,
    mode: &FilterMode,
) -> Result<String, RenderError> {
    let bootstrap = render_with(config, mode)?;
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    let body = serde_saphyr::to_string_with_options(&bootstrap, options)
        .map_err(|e| RenderError::Yaml(e.to_string()))?;
    let module_note = match mode {
        FilterMode::Module(ModuleFilter { library: None, .. }) => format!(
            "# Gantry's policy runs in the dynamic module: set ENVOY_DYNAMIC_MODULES_SEARCH_PATH\n\
             # to the directory holding lib{MODULE_NAME}.so (cargo build -p gantry-dynamic-module).\n"
        ),
        _ => String::new(),
    };
    Ok(format!(
        "# Envoy bootstrap rendered by `gantry envoy-config` from {source}.\n\
         # Do not edit: change the Gantry config and render again.\n{module_note}{body}"
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("provider '{provider}': {source}")]
    Endpoint {
        provider: String,
        #[source]
        source: gantry_policy::endpoint::EndpointError,
    },
    #[error("{upstream}: {source}")]
    UpstreamUrl {
        upstream: String,
        #[source]
        source: gantry_policy::endpoint::EndpointError,
    },
    #[error("cannot write YAML: {0}")]
    Yaml(String),
    #[error("the dynamic module does not support {0}: use the ext_proc mode for this config")]
    ModuleUnsupported(&'static str),
}

/// Renders the bootstrap as a JSON value (YAML's data model).
pub fn render(config: &ConfigFile) -> Result<Value, RenderError> {
    render_with(config, &FilterMode::ExtProc)
}

/// [`render`] for a filter mode.
pub fn render_with(config: &ConfigFile, mode: &FilterMode) -> Result<Value, RenderError> {
    let listen = config.listen_addr();
    let admin = config.admin_addr();
    let ext_proc = config.ext_proc_addr();

    let mut routes = Vec::new();
    let mut clusters = vec![no_provider_cluster()];
    match mode {
        FilterMode::ExtProc => {
            clusters.insert(0, grpc_cluster(EXT_PROC_CLUSTER, ext_proc));
            if config.auth.is_some() {
                clusters.push(grpc_cluster(EXT_AUTHZ_CLUSTER, config.auth_addr()));
            }
        }
        FilterMode::Module(_) => {
            if let Some(feature) = module_unsupported(config) {
                return Err(RenderError::ModuleUnsupported(feature));
            }
        }
    }
    if let Some(mcp) = &config.mcp {
        routes.extend(mcp_routes(mcp.path(), mode));
        clusters.push(mcp_bridge_cluster(mcp.listen_addr()));
    }
    // Direct MCP servers' and agents' routes come before the providers': they match by path,
    // so no routing header a client sends can move such a request onto a provider.
    if let Some(direct) = &config.mcp_direct {
        for server in &direct.servers {
            let endpoint = server
                .endpoint()
                .map_err(|source| RenderError::UpstreamUrl {
                    upstream: format!("mcp_direct server '{}'", server.name.value),
                    source,
                })?;
            let cluster = format!("mcp_direct_{}", server.name.value);
            routes.push(json!({
                "name": cluster,
                "match": { "path": format!("{}/{}", direct.path(), server.name.value) },
                "route": {
                    "cluster": cluster,
                    "timeout": format!("{}s", server.timeout_secs()),
                    "host_rewrite_literal": endpoint.authority(),
                    "prefix_rewrite": if endpoint.base_path.is_empty() { "/".to_string() } else { endpoint.base_path.clone() },
                },
            }));
            let ca_file = server
                .ca_file
                .as_ref()
                .map_or(SYSTEM_CA_BUNDLE, |f| f.value.as_str());
            clusters.push(upstream_cluster_config(&cluster, &endpoint, ca_file));
        }
    }
    // Agents' routes come before the providers': they match by path, so no routing header a
    // client sends can move an A2A request onto a provider.
    if let Some(a2a) = &config.a2a {
        for agent in &a2a.agents {
            let endpoint = agent
                .endpoint()
                .map_err(|source| RenderError::UpstreamUrl {
                    upstream: format!("a2a agent '{}'", agent.name.value),
                    source,
                })?;
            routes.extend(agent_routes(a2a.path(), agent, &endpoint));
            let ca_file = agent
                .ca_file
                .as_ref()
                .map_or(SYSTEM_CA_BUNDLE, |f| f.value.as_str());
            clusters.push(upstream_cluster_config(
                &agent_cluster(&agent.name.value),
                &endpoint,
                ca_file,
            ));
        }
    }
    for provider in &config.providers {
        let name = &provider.name.value;
        let endpoint = provider
            .endpoint()
            .map_err(|source| RenderError::Endpoint {
                provider: name.clone(),
                source,
            })?;
        routes.push(provider_route(name, &endpoint, provider.timeout_secs()));
        let ca_file = provider
            .ca_file
            .as_ref()
            .map_or(SYSTEM_CA_BUNDLE, |f| f.value.as_str());
        clusters.push(provider_cluster_config(name, &endpoint, ca_file));
    }
    let slowest = config
        .providers
        .iter()
        .map(|p| p.timeout_secs())
        .chain(
            config
                .a2a
                .iter()
                .flat_map(|a| a.agents.iter().map(|agent| agent.timeout_secs())),
        )
        .chain(
            config
                .mcp_direct
                .iter()
                .flat_map(|d| d.servers.iter().map(|server| server.timeout_secs())),
        )
        .max()
        .unwrap_or(60);
    if let FilterMode::ExtProc = mode {
        for model in &config.models {
            for (route, cluster) in target_routes_and_clusters(config, model, slowest)? {
                routes.push(route);
                clusters.push(cluster);
            }
        }
    }
    routes.push(catch_all_route());

    Ok(json!({
        "node": { "id": "gantry", "cluster": "gantry" },
        "admin": { "address": socket_address(admin) },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }],
        },
        "static_resources": {
            "listeners": [{
                "name": "gantry_listener",
                "address": socket_address(listen),
                // Envoy's own cap on what it buffers for ext_proc: above it, Envoy answers 413
                // before Gantry sees the body. It must not be below Gantry's limit.
                "per_connection_buffer_limit_bytes": CONNECTION_BUFFER_BYTES
                    .max(config.max_request_body_bytes() + 64 * 1024),
                "filter_chains": [filter_chain(config, routes, slowest, mode)],
            }],
            "clusters": clusters,
        },
    }))
}

fn filter_chain(
    config: &ConfigFile,
    routes: Vec<Value>,
    slowest_secs: u64,
    mode: &FilterMode,
) -> Value {
    let mut chain = json!({
        "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": http_connection_manager(config, routes, slowest_secs, mode),
        }],
    });
    if let Some(tls) = &config.tls {
        let mut context = json!({
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{
                    "certificate_chain": { "filename": tls.cert_file.value },
                    "private_key": { "filename": tls.key_file.value },
                }],
            },
        });
        if let Some(ca) = &tls.client_ca_file {
            context["common_tls_context"]["validation_context"] =
                json!({ "trusted_ca": { "filename": ca.value } });
            context["require_client_certificate"] = json!(tls.requires_client_certificate());
        }
        context["@type"] = json!(
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
        );
        chain["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": context,
        });
    }
    chain
}

fn http_connection_manager(
    config: &ConfigFile,
    routes: Vec<Value>,
    slowest_secs: u64,
    mode: &FilterMode,
) -> Value {
    let mut filters = Vec::new();
    match mode {
        FilterMode::ExtProc => {
            // Order matters: identity headers are stripped before anything reads them, and
            // CORS preflights are answered before authorization (browsers send them without
            // credentials).
            if config.auth.is_some() {
                filters.push(strip_identity_headers_filter());
            }
            if config.cors.is_some() {
                filters.push(cors_filter());
            }
            if let Some(auth) = &config.auth {
                filters.push(ext_authz_filter(config, auth));
            }
            filters.push(ext_proc_filter(config, slowest_secs));
        }
        FilterMode::Module(module) => {
            // The module authenticates, overwriting identity headers itself.
            if config.cors.is_some() {
                filters.push(cors_filter());
            }
            filters.push(module_filter(module));
        }
    }
    filters.push(json!({
                "name": "envoy.filters.http.router",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
            }));
    let mut virtual_host = json!({
        "name": "gantry",
        "domains": ["*"],
        "routes": routes,
    });
    if let Some(cors) = &config.cors {
        virtual_host["typed_per_filter_config"] =
            json!({ "envoy.filters.http.cors": cors_policy(cors) });
    }
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gantry",
        "codec_type": "AUTO",
        "normalize_path": true,
        "merge_slashes": true,
        "access_log": [access_log(config.a2a.is_some(), config.mcp_direct.is_some())],
        "local_reply_config": local_reply_config(
            config.max_request_body_bytes(),
            mode,
            config.a2a.is_some() || config.mcp_direct.is_some(),
        ),
        "route_config": {
            "name": "gantry_routes",
            "virtual_hosts": [virtual_host],
        },
        "http_filters": filters,
    })
}

/// Gantry's dynamic module as an HTTP filter, configured with the Gantry config.
fn module_filter(module: &ModuleFilter) -> Value {
    let mut dynamic_module_config = json!({
        "name": MODULE_NAME,
        // Keep the library and its globals loaded across config reloads.
        "do_not_close": true,
        "metrics_namespace": "gantry",
    });
    if let Some(library) = &module.library {
        dynamic_module_config["module"] =
            json!({ "local": { "filename": library.display().to_string() } });
    }
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": dynamic_module_config,
            "filter_name": MODULE_NAME,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": module.config_json,
            },
        },
    })
}

fn ext_proc_filter(config: &ConfigFile, slowest_secs: u64) -> Value {
    let fail_open = config.ext_proc.failure_mode == FailureMode::Open;
    let message_timeout_ms = config.message_timeout_ms();
    json!({
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": EXT_PROC_CLUSTER },
                // The whole-stream deadline: it must outlive the longest SSE reply.
                "timeout": format!("{}s", slowest_secs + STREAM_DEADLINE_MARGIN_SECS),
            },
            "failure_mode_allow": fail_open,
            "status_on_error": { "code": "ServiceUnavailable" },
            "message_timeout": millis(message_timeout_ms),
            "max_message_timeout": millis(message_timeout_ms.max(30_000)),
            "allow_mode_override": true,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            "metadata_options": {
                // The principal ext_authz admitted, for per-caller accounting.
                "forwarding_namespaces": { "untyped": [EXT_AUTHZ_NAMESPACE] },
                "receiving_namespaces": { "untyped": [METADATA_NAMESPACE] },
            },
        },
    })
}

/// Removes identity headers a client may have sent, before anything reads them: ext_authz
/// sets them again for the admitted principal; if ext_authz is skipped they stay absent.
fn strip_identity_headers_filter() -> Value {
    let removals: Vec<Value> = IDENTITY_HEADERS
        .iter()
        .map(|h| json!({ "remove": h }))
        .collect();
    json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": { "request_mutations": removals },
        },
    })
}

fn cors_filter() -> Value {
    json!({
        "name": "envoy.filters.http.cors",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" },
    })
}

fn cors_policy(cors: &CorsSection) -> Value {
    let origins: Vec<Value> = cors
        .allow_origins
        .iter()
        .map(|o| match o.value.strip_prefix("regex:") {
            Some(re) => json!({ "safe_regex": { "regex": re } }),
            None if o.value == "*" => json!({ "safe_regex": { "regex": ".*" } }),
            None => json!({ "exact": o.value }),
        })
        .collect();
    let list = |configured: &[String], default: &[&str]| {
        if configured.is_empty() {
            default.join(",")
        } else {
            configured.join(",")
        }
    };
    let mut policy = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": origins,
        "allow_methods": list(&cors.allow_methods, DEFAULT_CORS_METHODS),
        "allow_headers": list(&cors.allow_headers, DEFAULT_CORS_HEADERS),
        "allow_credentials": cors.allow_credentials,
        // A preflight from an origin that is not allowed is answered by Envoy too, without
        // CORS headers, instead of reaching authorization and the providers.
        "forward_not_matching_preflights": false,
    });
    if !cors.expose_headers.is_empty() {
        policy["expose_headers"] = json!(cors.expose_headers.join(","));
    }
    if let Some(max_age) = cors.max_age_secs {
        policy["max_age"] = json!(max_age.to_string());
    }
    policy
}

fn ext_authz_filter(config: &ConfigFile, auth: &AuthSection) -> Value {
    let mut filter = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {
            "envoy_grpc": { "cluster_name": EXT_AUTHZ_CLUSTER },
            "timeout": millis(auth.timeout_ms()),
        },
        "transport_api_version": "V3",
        "failure_mode_allow": auth.failure_mode == FailureMode::Open,
        "status_on_error": { "code": "ServiceUnavailable" },
        "include_peer_certificate": true,
        "include_tls_session": true,
    });
    // With the admin API, a key created at runtime may carry a model allow-list: ext_authz
    // then needs the body too.
    if auth.needs_request_body() || config.admin_api.is_some() {
        // The whole body (never a prefix: the model may come after a long prompt), as bytes.
        filter["with_request_body"] = json!({
            "max_request_bytes": config.max_request_body_bytes(),
            "allow_partial_message": false,
            "pack_as_bytes": true,
        });
    }
    json!({ "name": "envoy.filters.http.ext_authz", "typed_config": filter })
}

fn millis(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// One JSON line per request, with Gantry's routing decision and token usage.
fn access_log(a2a: bool, mcp_direct: bool) -> Value {
    let meta = |key: &str| format!("%DYNAMIC_METADATA({METADATA_NAMESPACE}:{key})%");
    let authz = |key: &str| format!("%DYNAMIC_METADATA({EXT_AUTHZ_NAMESPACE}:{key})%");
    let mut log = json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "duration_ms": "%DURATION%",
                    "upstream_cluster": "%UPSTREAM_CLUSTER%",
                    "provider": meta("provider"),
                    "model": meta("model"),
                    "upstream_model": meta("upstream_model"),
                    "stream": meta("stream"),
                    "prompt_tokens": meta("prompt_tokens"),
                    "completion_tokens": meta("completion_tokens"),
                    "total_tokens": meta("total_tokens"),
                    "cost_usd": meta("cost_usd"),
                    "guard_hits": meta("guard_hits"),
                    "response_guard_hits": meta("response_guard_hits"),
                    "route_rule": meta("route_rule"),
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "subject": authz("subject"),
                    "auth_method": authz("auth_method"),
                    "api_key": authz("key"),
                    "denied": authz("denied"),
                },
            },
        },
    });
    if a2a {
        let format = &mut log["typed_config"]["log_format"]["json_format"];
        for key in [
            "a2a_agent",
            "a2a_method",
            "a2a_skill",
            "a2a_task",
            "a2a_refused",
        ] {
            format[key] = json!(meta(key));
        }
    }
    if mcp_direct {
        let format = &mut log["typed_config"]["log_format"]["json_format"];
        for key in ["mcp_server", "mcp_method", "mcp_tool", "mcp_refused"] {
            format[key] = json!(meta(key));
        }
    }
    log
}

/// Envoy's own local replies, rewritten as OpenAI error objects: a provider that cannot be
/// reached, a body over the buffer limit (Envoy answers before ext_proc sees it), and ext_proc
/// being unreachable (fail closed).
fn local_reply_config(
    max_request_body_bytes: u64,
    mode: &FilterMode,
    json_rpc_routes: bool,
) -> Value {
    let unprocessed = match mode {
        FilterMode::ExtProc => {
            "no provider was chosen for this request: gantry's policy service (ext_proc) did not process it"
        }
        FilterMode::Module(_) => {
            "no provider was chosen for this request: gantry's dynamic module did not process it"
        }
    };
    let cel_filter = |expression: &str| {
        json!({
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": expression,
                },
            },
        })
    };
    let error_body = |message: &str, error_type: &str, code: &str| {
        json!({
            "json_format": {
                "error": { "message": message, "type": error_type, "param": null, "code": code },
            },
            "content_type": "application/json",
        })
    };
    // A2A agents' and direct MCP servers' clients speak JSON-RPC: Envoy's own replies on their
    // routes are JSON-RPC errors (first match wins, so these come first).
    let mut mappers = Vec::new();
    if json_rpc_routes {
        let on_json_rpc_route =
            "(xds.route_name.startsWith('agent_') || xds.route_name.startsWith('mcp_direct_'))";
        let json_rpc_body = |message: &str| {
            json!({
                "json_format": {
                    "jsonrpc": "2.0",
                    "id": null,
                    "error": { "code": -32603, "message": message },
                },
                "content_type": "application/json",
            })
        };
        let unreachable = json!({ "response_flag_filter": { "flags": ["UF", "UH", "UO", "URX", "UC", "UT", "UMSDR"] } });
        for (condition, status, message) in [
            (
                unreachable,
                None,
                "the agent or MCP server behind this route could not be reached or did not answer in time (%RESPONSE_CODE_DETAILS%)",
            ),
            (
                cel_filter("response.code == 413 && response.code_details != 'request_too_large'"),
                None,
                "the request body exceeds this gateway's limit",
            ),
            (
                cel_filter("response.code_details.startsWith('ext_authz_error')"),
                Some(503),
                "gantry's authorization service (ext_authz) is unavailable, so the request was not forwarded",
            ),
            (
                cel_filter("response.code_details.startsWith('ext_proc_error')"),
                Some(503),
                "gantry's policy service (ext_proc) is unavailable, so the request was not forwarded",
            ),
        ] {
            let mut mapper = json!({
                "filter": { "and_filter": { "filters": [cel_filter(on_json_rpc_route), condition] } },
                "body_format_override": json_rpc_body(message),
            });
            if let Some(status) = status {
                mapper["status_code"] = json!(status);
            }
            mappers.push(mapper);
        }
    }
    let mut config = json!({
        "mappers": [
            {
                "filter": cel_filter(&format!("xds.route_name == '{CATCH_ALL_ROUTE}' && response.code_details == 'no_healthy_upstream'")),
                "status_code": 503,
                "body_format_override": error_body(
                    unprocessed,
                    "service_unavailable",
                    "gantry_unavailable",
                ),
            },
            {
                // The provider refused the connection, reset it, or timed out before answering.
                "filter": { "response_flag_filter": { "flags": ["UF", "UH", "UO", "URX", "UC", "UT", "UMSDR"] } },
                "body_format_override": error_body(
                    "provider '%DYNAMIC_METADATA(gantry:provider)%' could not be reached or did not answer in time (%RESPONSE_CODE_DETAILS%)",
                    "upstream_error",
                    "provider_unreachable",
                ),
            },
            {
                "filter": cel_filter("response.code == 413 && response.code_details != 'request_too_large'"),
                "body_format_override": error_body(
                    &format!("request body exceeds this gateway's limit of {max_request_body_bytes} bytes"),
                    "invalid_request_error",
                    "request_too_large",
                ),
            },
            {
                "filter": cel_filter("response.code_details.startsWith('ext_authz_error')"),
                "status_code": 503,
                "body_format_override": error_body(
                    "gantry's authorization service (ext_authz) is unavailable, so the request was not forwarded (%RESPONSE_CODE_DETAILS%)",
                    "service_unavailable",
                    "gantry_unavailable",
                ),
            },
            {
                "filter": cel_filter("response.code_details.startsWith('ext_proc_error')"),
                "status_code": 503,
                "body_format_override": error_body(
                    "gantry's policy service (ext_proc) is unavailable, so the request was not forwarded (%RESPONSE_CODE_DETAILS%)",
                    "service_unavailable",
                    "gantry_unavailable",
                ),
            },
        ],
    });
    if let Some(list) = config["mappers"].as_array_mut() {
        list.splice(0..0, mappers);
    }
    config
}

fn provider_route(name: &str, endpoint: &ProviderEndpoint, timeout_secs: u64) -> Value {
    let mut route = json!({
        "cluster": provider_cluster(name),
        "timeout": format!("{timeout_secs}s"),
        "host_rewrite_literal": endpoint.authority(),
    });
    if !endpoint.base_path.is_empty() {
        route["prefix_rewrite"] = json!(format!("{}/", endpoint.base_path));
    }
    json!({
        "name": format!("provider_{name}"),
        "match": {
            "prefix": "/",
            "headers": [{ "name": ROUTING_HEADER, "string_match": { "exact": name } }],
        },
        "route": route,
        "request_headers_to_remove": [ROUTING_HEADER],
    })
}

/// The MCP path (and its virtual servers under `<path>/`) goes to the MCP bridge. ext_proc
/// stays out of it (the bridge reads MCP itself); ext_authz still decides who may call. No
/// route timeout: MCP answers may stream for as long as a tool runs (the bridge bounds each
/// upstream call with the upstream's own timeout).
fn mcp_routes(path: &str, mode: &FilterMode) -> Vec<Value> {
    // ext_proc stays out of the bridge's traffic; the module passes it through by itself
    // (after authenticating it).
    let per_route = match mode {
        FilterMode::ExtProc => json!({
            "envoy.filters.http.ext_proc": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": true,
            },
        }),
        FilterMode::Module(_) => json!({}),
    };
    let route = json!({ "cluster": MCP_BRIDGE_CLUSTER, "timeout": "0s" });
    vec![
        json!({
            "name": "mcp_bridge",
            "match": { "path": path },
            "route": route,
            "typed_per_filter_config": per_route,
        }),
        json!({
            "name": "mcp_bridge_virtual_servers",
            "match": { "prefix": format!("{path}/") },
            "route": route,
            "typed_per_filter_config": per_route,
        }),
    ]
}

fn mcp_bridge_cluster(addr: std::net::SocketAddr) -> Value {
    json!({
        "name": MCP_BRIDGE_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": load_assignment(MCP_BRIDGE_CLUSTER, &addr.ip().to_string(), addr.port()),
    })
}

/// Matches every request until ext_proc picks a provider; answered by Envoy (503, rewritten by
/// a local reply mapper) only when ext_proc did not: it was down and the filter is open. It is a
/// routed route to a cluster without endpoints, not a direct response, because filters such as
/// CORS act only on routed routes.
fn catch_all_route() -> Value {
    json!({
        "name": CATCH_ALL_ROUTE,
        "match": { "prefix": "/" },
        "route": { "cluster": NO_PROVIDER_CLUSTER, "timeout": "5s" },
    })
}

fn no_provider_cluster() -> Value {
    json!({
        "name": NO_PROVIDER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": NO_PROVIDER_CLUSTER, "endpoints": [] },
    })
}

fn grpc_cluster(name: &str, addr: std::net::SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
        "load_assignment": load_assignment(name, &addr.ip().to_string(), addr.port()),
    })
}

fn provider_cluster_config(name: &str, endpoint: &ProviderEndpoint, ca_file: &str) -> Value {
    upstream_cluster_config(&provider_cluster(name), endpoint, ca_file)
}

/// The cluster of an agent.
pub fn agent_cluster(name: &str) -> String {
    format!("agent_{name}")
}

/// An agent's routes: its public prefix (`<a2a.path>/<name>`, exactly or followed by `/`)
/// goes to the same path under the agent's URL. ext_proc stays on (it reads and rewrites the
/// traffic); the route timeout is the agent's and covers whole streams.
fn agent_routes(
    a2a_path: &str,
    agent: &gantry_policy::config::AgentSection,
    endpoint: &ProviderEndpoint,
) -> Vec<Value> {
    let name = &agent.name.value;
    let prefix = format!("{a2a_path}/{name}");
    let route = |rewrite: String| {
        json!({
            "cluster": agent_cluster(name),
            "timeout": format!("{}s", agent.timeout_secs()),
            "host_rewrite_literal": endpoint.authority(),
            "prefix_rewrite": rewrite,
        })
    };
    let base = if endpoint.base_path.is_empty() {
        "/".to_string()
    } else {
        endpoint.base_path.clone()
    };
    vec![
        json!({
            "name": format!("agent_{name}"),
            "match": { "path": prefix },
            "route": route(base),
        }),
        json!({
            "name": format!("agent_{name}_paths"),
            "match": { "prefix": format!("{prefix}/") },
            "route": route(format!("{}/", endpoint.base_path)),
        }),
    ]
}

/// A cluster of one upstream host (provider or agent): static for an IP, DNS otherwise, TLS
/// with SNI and SAN checks for https.
fn upstream_cluster_config(
    cluster_name: &str,
    endpoint: &ProviderEndpoint,
    ca_file: &str,
) -> Value {
    let cluster_name = cluster_name.to_string();
    let discovery = if endpoint.ip().is_some() {
        "STATIC"
    } else {
        "LOGICAL_DNS"
    };
    let mut cluster = json!({
        "name": cluster_name,
        "type": discovery,
        "connect_timeout": "5s",
        "load_assignment": load_assignment(&cluster_name, &endpoint.host, endpoint.port),
    });
    if discovery == "LOGICAL_DNS" {
        cluster["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    if endpoint.tls {
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": endpoint.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": { "filename": ca_file },
                        "match_typed_subject_alt_names": [{
                            "san_type": "DNS",
                            "matcher": { "exact": endpoint.host },
                        }],
                    },
                },
            },
        });
    }
    cluster
}

/// Whether `model` is served through its own cluster and Gantry's upstream filter (the same
/// rule as the snapshot's `ModelRoute::via_upstream_filter`).
pub fn via_upstream_filter(
    config: &ConfigFile,
    model: &gantry_policy::config::ModelSection,
) -> bool {
    let targets = model.targets_or_single();
    targets.len() > 1
        || targets.iter().any(|t| {
            config
                .providers
                .iter()
                .find(|p| p.name.value == t.provider.value)
                .is_some_and(|p| p.kind.is_translated())
        })
}

/// The clusters (and the routes to them) of a model served through Gantry's upstream filter:
/// one with all its targets and, when some targets have a `when` condition, one per subset of
/// targets those conditions can leave (routes to subsets first: they also match
/// [`TARGETS_HEADER`]).
fn target_routes_and_clusters(
    config: &ConfigFile,
    model: &gantry_policy::config::ModelSection,
    slowest_secs: u64,
) -> Result<Vec<(Value, Value)>, RenderError> {
    if !via_upstream_filter(config, model) {
        return Ok(Vec::new());
    }
    let targets = model.targets_or_single();
    let all = TargetMask::all(targets.len());
    let mut subsets = Vec::new();
    let conditional: Vec<usize> = (0..targets.len())
        .filter(|i| targets[*i].when.is_some())
        .collect();
    // Every combination of the conditional targets left in, but all of them (the full
    // cluster) and none at all when every target is conditional (refused downstream).
    for combination in 0u32..(1 << conditional.len()) {
        let mut mask = all;
        for (bit, index) in conditional.iter().enumerate() {
            if combination & (1 << bit) == 0 {
                mask.remove(*index);
            }
        }
        if mask != all && !mask.is_empty() {
            subsets.push(Some(mask));
        }
    }
    subsets.push(None);
    subsets
        .into_iter()
        .map(|subset| target_route_and_cluster(config, model, subset, slowest_secs))
        .collect()
}

/// The cluster (and the route to it) of a model served through Gantry's upstream filter with
/// all its targets (`subset: None`) or those in `subset`: one endpoint per target, by priority
/// and weight, named to the filter in its metadata; Envoy retries a failed attempt on the next
/// target, and ejects one that keeps failing.
fn target_route_and_cluster(
    config: &ConfigFile,
    model: &gantry_policy::config::ModelSection,
    subset: Option<TargetMask>,
    slowest_secs: u64,
) -> Result<(Value, Value), RenderError> {
    let alias = &model.name.value;
    let cluster_name = target_cluster_name(alias, subset);
    let all_targets = model.targets_or_single();
    let targets: Vec<(usize, &TargetRef<'_>)> = all_targets
        .iter()
        .enumerate()
        .filter(|(index, _)| subset.is_none_or(|mask| mask.contains(*index)))
        .collect();
    let mut priorities: Vec<u32> = targets.iter().map(|(_, t)| t.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut by_rank: Vec<Vec<Value>> = vec![Vec::new(); priorities.len()];
    let mut tls_matches = Vec::new();
    let mut any_hostname = false;
    for &(index, target) in &targets {
        let Some(provider) = config
            .providers
            .iter()
            .find(|p| p.name.value == target.provider.value)
        else {
            continue; // unreachable on a validated config
        };
        let endpoint = provider
            .endpoint()
            .map_err(|source| RenderError::Endpoint {
                provider: provider.name.value.clone(),
                source,
            })?;
        any_hostname |= endpoint.ip().is_none();
        let id = index.to_string();
        let rank = priorities
            .iter()
            .position(|p| *p == target.priority)
            .unwrap_or(0);
        by_rank[rank].push(json!({
            "endpoint": {
                "address": { "socket_address": { "address": endpoint.host, "port_value": endpoint.port } },
                // What `auto_host_rewrite` puts in `Host` for this target (and what Bedrock's
                // signature covers): an upstream filter's `:authority` mutation is not applied.
                "hostname": endpoint.authority(),
            },
            "load_balancing_weight": target.weight,
            "metadata": { "filter_metadata": {
                "gantry": { TARGET_METADATA_KEY: id },
                "envoy.transport_socket_match": { "gantry_target": id },
            } },
        }));
        if endpoint.tls {
            let ca_file = provider
                .ca_file
                .as_ref()
                .map_or(SYSTEM_CA_BUNDLE, |f| f.value.as_str());
            tls_matches.push(json!({
                "name": format!("target_{index}"),
                "match": { "gantry_target": id },
                "transport_socket": tls_socket(&endpoint.host, ca_file),
            }));
        }
    }
    let endpoints: Vec<Value> = by_rank
        .into_iter()
        .enumerate()
        .map(|(rank, lb_endpoints)| json!({ "priority": rank, "lb_endpoints": lb_endpoints }))
        .collect();
    let message_timeout_ms = config.message_timeout_ms();
    let upstream_ext_proc = json!({
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": EXT_PROC_CLUSTER },
                "timeout": format!("{}s", slowest_secs + STREAM_DEADLINE_MARGIN_SECS),
                "initial_metadata": [{ "key": CHAIN_METADATA.0, "value": CHAIN_METADATA.1 }],
            },
            "message_timeout": millis(message_timeout_ms),
            "allow_mode_override": true,
            "request_attributes": ["xds.upstream_host_metadata", "xds.cluster_name"],
            // Response bodies only by mode_override, STREAMED: a BUFFERED response in an
            // upstream filter turns into a local reply that Envoy never retries [1.40].
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
        },
    });
    let mut cluster = json!({
        "name": cluster_name,
        "type": if any_hostname { "STRICT_DNS" } else { "STATIC" },
        "connect_timeout": "5s",
        "load_assignment": { "cluster_name": cluster_name, "endpoints": endpoints },
        "outlier_detection": {
            "consecutive_5xx": 5,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_percent": 100,
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http_protocol_options": {} },
                "http_filters": [
                    upstream_ext_proc,
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec" },
                    },
                ],
            },
        },
    });
    if any_hostname {
        cluster["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    if !tls_matches.is_empty() {
        cluster["transport_socket_matches"] = json!(tls_matches);
    }
    // By default one try per target this cluster has.
    let attempts = match &model.retry {
        Some(RetrySection {
            attempts: Some(attempts),
            ..
        }) => attempts.value,
        _ => model.attempts().min(targets.len() as u32),
    };
    let mut retry = json!({
        "retry_on": "5xx,reset,connect-failure,refused-stream,retriable-status-codes",
        "retriable_status_codes": [429],
        "num_retries": attempts.saturating_sub(1),
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" },
        }],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": { "base_interval": "0.01s", "max_interval": "0.1s" },
    });
    if priorities.len() > 1 {
        retry["retry_priority"] = json!({
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        });
    }
    if let Some(secs) = model
        .retry
        .as_ref()
        .and_then(|r| r.per_try_timeout_secs.as_ref())
    {
        retry["per_try_timeout"] = json!(format!("{}s", secs.value));
    }
    let mut headers = vec![json!({
        "name": ROUTING_HEADER,
        "string_match": { "exact": format!("{TARGETS_ROUTE_PREFIX}{alias}") },
    })];
    if let Some(mask) = subset {
        headers.push(json!({
            "name": TARGETS_HEADER,
            "string_match": { "exact": mask.to_hex() },
        }));
    }
    let route = json!({
        "name": cluster_name,
        "match": { "prefix": "/", "headers": headers },
        "route": {
            "cluster": cluster_name,
            "timeout": format!("{slowest_secs}s"),
            "auto_host_rewrite": true,
            "retry_policy": retry,
        },
        "request_headers_to_remove": [ROUTING_HEADER, TARGETS_HEADER],
    });
    Ok((route, cluster))
}

/// Removes, from the alias clusters in `clusters`, the endpoints of targets whose provider has
/// no credentials in `env` (unless that would leave the cluster no target at all: its requests
/// are then refused by the downstream filter, naming the missing variable).
pub fn drop_unavailable_targets(
    clusters: &mut Value,
    config: &ConfigFile,
    env: &dyn Fn(&str) -> Option<String>,
) {
    let snapshot = gantry_policy::Snapshot::compile(config, env);
    let Some(clusters) = clusters.as_array_mut() else {
        return;
    };
    for cluster in clusters {
        let Some((alias, subset)) = cluster["name"]
            .as_str()
            .and_then(parse_target_cluster_name)
            .map(|(alias, subset)| (alias.to_string(), subset))
        else {
            continue;
        };
        let Some(route) = snapshot.model(&alias) else {
            continue;
        };
        let in_cluster = |index: usize| subset.is_none_or(|mask| mask.contains(index));
        if !route
            .targets
            .iter()
            .enumerate()
            .any(|(i, t)| in_cluster(i) && t.provider.is_available())
        {
            continue;
        }
        let available = |endpoint: &Value| {
            endpoint["metadata"]["filter_metadata"]["gantry"][TARGET_METADATA_KEY]
                .as_str()
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| route.targets.get(i))
                .is_none_or(|t| t.provider.is_available())
        };
        if let Some(levels) = cluster["load_assignment"]["endpoints"].as_array_mut() {
            for level in levels.iter_mut() {
                if let Some(endpoints) = level["lb_endpoints"].as_array_mut() {
                    endpoints.retain(|e| available(e));
                }
            }
            levels.retain(|level| {
                level["lb_endpoints"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty())
            });
            for (rank, level) in levels.iter_mut().enumerate() {
                level["priority"] = json!(rank);
            }
        }
    }
}

fn tls_socket(host: &str, ca_file: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": host,
            "common_tls_context": {
                "validation_context": {
                    "trusted_ca": { "filename": ca_file },
                    "match_typed_subject_alt_names": [{
                        "san_type": "DNS",
                        "matcher": { "exact": host },
                    }],
                },
            },
        },
    })
}

fn load_assignment(cluster_name: &str, host: &str, port: u16) -> Value {
    json!({
        "cluster_name": cluster_name,
        "endpoints": [{
            "lb_endpoints": [{
                "endpoint": { "address": { "socket_address": { "address": host, "port_value": port } } },
            }],
        }],
    })
}

fn socket_address(addr: std::net::SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// A bootstrap whose listeners and clusters Envoy reads from two files it watches (file-based
/// LDS and CDS), so `gantry run` can change them while Envoy serves: a reload rewrites the
/// files, and Envoy applies them without dropping a request (a changed listener drains its
/// connections; requests in flight finish on the old one).
pub struct DynamicBootstrap {
    /// The bootstrap proper: node, admin, overload manager, `dynamic_resources`.
    pub bootstrap: Value,
    /// The LDS file's content (a `DiscoveryResponse` of listeners).
    pub listeners: Value,
    /// The CDS file's content (a `DiscoveryResponse` of clusters).
    pub clusters: Value,
}

/// The LDS and CDS file names inside the watched directory.
pub const LDS_FILE: &str = "lds.json";
pub const CDS_FILE: &str = "cds.json";

/// Renders `config` as a [`DynamicBootstrap`] whose LDS/CDS files live in `dir`. `version`
/// labels the resources (Envoy reports it in `/config_dump`).
pub fn render_dynamic(
    config: &ConfigFile,
    mode: &FilterMode,
    dir: &std::path::Path,
    version: u64,
) -> Result<DynamicBootstrap, RenderError> {
    let mut full = render_with(config, mode)?;
    let mut static_resources = full
        .as_object_mut()
        .and_then(|o| o.remove("static_resources"))
        .unwrap_or_default();
    // `gantry run` hands its own environment to Envoy and Gantry: targets without their
    // credentials there are left out, so that Envoy never picks them (the upstream filter could
    // only refuse such an attempt, and Envoy does not retry a filter's refusal).
    drop_unavailable_targets(&mut static_resources["clusters"], config, &|name| {
        std::env::var(name).ok()
    });
    let resources = |key: &str, type_url: &str| -> Value {
        let items: Vec<Value> = static_resources[key]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut item| {
                item["@type"] = json!(type_url);
                item
            })
            .collect();
        json!({ "version_info": version.to_string(), "resources": items })
    };
    let listeners = resources(
        "listeners",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
    );
    let clusters = resources(
        "clusters",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    );
    let source = |file: &str| {
        json!({
            "path_config_source": {
                "path": dir.join(file).display().to_string(),
                "watched_directory": { "path": dir.display().to_string() },
            },
            "resource_api_version": "V3",
        })
    };
    full["dynamic_resources"] = json!({
        "lds_config": source(LDS_FILE),
        "cds_config": source(CDS_FILE),
    });
    Ok(DynamicBootstrap {
        bootstrap: full,
        listeners,
        clusters,
    })
}

/// The config Envoy runs while moving from `previous` to `next`: `next`, plus the providers
/// only `previous` has, so that a request routed by the previous policy (still in flight, or
/// on a connection the old listener is draining) finds its route and cluster. The next
/// reload drops them.
pub fn transition_config(next: &ConfigFile, previous: &ConfigFile) -> ConfigFile {
    let mut merged = next.clone();
    for provider in &previous.providers {
        if !merged
            .providers
            .iter()
            .any(|p| p.name.value == provider.name.value)
        {
            merged.providers.push(provider.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
listen: 127.0.0.1:10000
providers:
  - { name: mock, kind: openai, endpoint: 'http://127.0.0.1:18080', mock: true }
  - { name: groq, kind: openai, endpoint: 'https://api.groq.com/openai', api_key_env: GROQ_API_KEY, timeout_secs: 600 }
models:
  - { name: fast, provider: mock, model: mock-small }
";

    fn module_mode(text: &str) -> FilterMode {
        FilterMode::Module(ModuleFilter {
            config_json: config_as_json(text).unwrap(),
            library: Some("/opt/gantry/libgantry.so".into()),
        })
    }

    fn filter_names(bootstrap: &Value) -> Vec<String> {
        bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn an_alias_with_targets_gets_its_cluster_route_and_upstream_filter() {
        let config = ConfigFile::parse(
            "listen: 127.0.0.1:10000
providers:
  - { name: local, kind: openai, endpoint: 'http://127.0.0.1:18080' }
  - { name: claude, kind: anthropic, endpoint: 'https://api.anthropic.com', api_key_env: K }
models:
  - { name: plain, provider: local, model: m }
  - name: smart
    retry: { per_try_timeout_secs: 20 }
    targets:
      - { provider: claude, model: c, weight: 3 }
      - { provider: local, model: m, priority: 4 }
",
        )
        .unwrap();
        let bootstrap = render(&config).unwrap();
        let clusters = &bootstrap["static_resources"]["clusters"];
        let cluster = clusters
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "model_smart")
            .expect("the alias's cluster");
        assert!(!cluster_names(&bootstrap).contains(&"model_plain".to_string()));
        assert_eq!(cluster["type"], "STRICT_DNS");
        let endpoints = cluster["load_assignment"]["endpoints"].as_array().unwrap();
        // Priorities 0 and 4 become levels 0 and 1.
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[1]["priority"], 1);
        let claude = &endpoints[0]["lb_endpoints"][0];
        assert_eq!(claude["load_balancing_weight"], 3);
        assert_eq!(claude["endpoint"]["hostname"], "api.anthropic.com");
        assert_eq!(
            claude["metadata"]["filter_metadata"]["gantry"]["target"],
            "0"
        );
        let tls = &cluster["transport_socket_matches"][0];
        assert_eq!(tls["match"]["gantry_target"], "0");
        assert_eq!(
            tls["transport_socket"]["typed_config"]["sni"],
            "api.anthropic.com"
        );
        let filters = &cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        assert_eq!(filters[0]["name"], "envoy.filters.http.ext_proc");
        assert_eq!(
            filters[0]["typed_config"]["grpc_service"]["initial_metadata"][0]["value"],
            "upstream"
        );
        assert_eq!(
            filters[0]["typed_config"]["processing_mode"]["response_body_mode"],
            "NONE"
        );
        assert_eq!(filters[1]["name"], "envoy.filters.http.upstream_codec");

        let routes = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        let route = routes.iter().find(|r| r["name"] == "model_smart").unwrap();
        assert_eq!(
            route["match"]["headers"][0]["string_match"]["exact"],
            "@smart"
        );
        let retry = &route["route"]["retry_policy"];
        assert_eq!(retry["num_retries"], 1);
        assert_eq!(retry["per_try_timeout"], "20s");
        assert_eq!(retry["retriable_status_codes"][0], 429);
        assert!(retry["retry_priority"].is_object());
        assert_eq!(route["route"]["auto_host_rewrite"], true);
        // The catch-all stays last.
        assert_eq!(routes.last().unwrap()["name"], CATCH_ALL_ROUTE);

        match render_with(
            &config,
            &FilterMode::Module(ModuleFilter {
                config_json: String::new(),
                library: None,
            }),
        ) {
            Err(RenderError::ModuleUnsupported(feature)) => {
                assert!(feature.contains("several targets"), "{feature}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn conditional_targets_get_a_cluster_per_subset_routed_by_the_targets_header() {
        let config = ConfigFile::parse(
            "listen: 127.0.0.1:10000
providers:
  - { name: a, kind: openai, endpoint: 'http://127.0.0.1:18080' }
  - { name: b, kind: openai, endpoint: 'http://127.0.0.1:18081' }
  - { name: c, kind: openai, endpoint: 'http://127.0.0.1:18082' }
models:
  - name: smart
    targets:
      - { provider: a, model: m, when: 'llm.stream' }
      - { provider: b, model: m, priority: 3 }
      - { provider: c, model: m, priority: 5, when: 'llm.max_tokens > 10' }
",
        )
        .unwrap();
        let bootstrap = render(&config).unwrap();
        let names = cluster_names(&bootstrap);
        // Target 1 is always in: subsets {1} (mask 2), {0,1} (3), {1,2} (6), and all of them.
        for name in [
            "model~2_smart",
            "model~3_smart",
            "model~6_smart",
            "model_smart",
        ] {
            assert!(names.contains(&name.to_string()), "{name} in {names:?}");
        }
        assert_eq!(names.iter().filter(|n| n.ends_with("_smart")).count(), 4);
        let cluster = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "model~6_smart")
            .unwrap();
        // Targets 1 and 2 only, their priorities compacted, their indices kept.
        let levels = cluster["load_assignment"]["endpoints"].as_array().unwrap();
        assert_eq!(levels.len(), 2);
        let target = |level: usize| {
            levels[level]["lb_endpoints"][0]["metadata"]["filter_metadata"]["gantry"]["target"]
                .clone()
        };
        assert_eq!((target(0), target(1)), (json!("1"), json!("2")));

        let routes = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        let position = |name: &str| routes.iter().position(|r| r["name"] == name).unwrap();
        // Subset routes come before the full one, which does not look at the targets header.
        assert!(position("model~6_smart") < position("model_smart"));
        let subset = &routes[position("model~6_smart")];
        assert_eq!(subset["match"]["headers"][1]["name"], TARGETS_HEADER);
        assert_eq!(subset["match"]["headers"][1]["string_match"]["exact"], "6");
        assert_eq!(subset["route"]["retry_policy"]["num_retries"], 1);
        assert_eq!(
            subset["request_headers_to_remove"],
            json!([ROUTING_HEADER, TARGETS_HEADER])
        );
        let full = &routes[position("model_smart")];
        assert_eq!(full["match"]["headers"].as_array().unwrap().len(), 1);
        assert_eq!(full["route"]["retry_policy"]["num_retries"], 2);
    }

    fn cluster_names(bootstrap: &Value) -> Vec<String> {
        bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn module_mode_replaces_ext_authz_and_ext_proc_with_the_module() {
        let text = format!(
            "{CONFIG}auth:\n  api_keys:\n    - {{ name: k, hash: 'sha256:{}' }}\n",
            "ab".repeat(32)
        );
        let config = ConfigFile::parse(&text).unwrap();
        let bootstrap = render_with(&config, &module_mode(&text)).unwrap();
        assert_eq!(
            filter_names(&bootstrap),
            [
                "envoy.filters.http.dynamic_modules",
                "envoy.filters.http.router"
            ]
        );
        let clusters = cluster_names(&bootstrap);
        assert!(
            !clusters.contains(&EXT_PROC_CLUSTER.to_string())
                && !clusters.contains(&EXT_AUTHZ_CLUSTER.to_string()),
            "{clusters:?}"
        );
        let module = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"][0]["typed_config"];
        assert_eq!(
            module["dynamic_module_config"]["module"]["local"]["filename"],
            "/opt/gantry/libgantry.so"
        );
        // The filter config is the Gantry config itself, as JSON the module parses back.
        let embedded = module["filter_config"]["value"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(embedded).unwrap();
        assert_eq!(parsed["models"][0]["name"], "fast");
        assert!(ConfigFile::parse(embedded).is_ok());
        // The provider routes are the same as in ext_proc mode.
        let ext_proc = render(&config).unwrap();
        let routes = |b: &Value| {
            b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
                ["route_config"]
                .clone()
        };
        assert_eq!(routes(&bootstrap), routes(&ext_proc));
        assert!(filter_names(&ext_proc).contains(&"envoy.filters.http.ext_proc".to_string()));
    }

    #[test]
    fn module_mode_refuses_what_the_module_cannot_do() {
        let jwt = format!(
            "{CONFIG}auth:\n  jwt:\n    - {{ issuer: 'https://idp.example/', audiences: [gantry], jwks_url: 'https://idp.example/jwks' }}\n"
        );
        let governed = format!("{CONFIG}governance:\n  store: {{ kind: embedded, path: g.db }}\n");
        for (text, feature) in [(jwt, "auth.jwt"), (governed, "governance")] {
            let Ok(config) = ConfigFile::parse(&text) else {
                panic!("test config does not parse: {text}");
            };
            let error = render_with(&config, &module_mode(&text)).unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(feature) && message.contains("ext_proc mode"),
                "{message}"
            );
        }
    }

    #[test]
    fn envoy_buffers_at_least_the_configured_body_limit() {
        let limit = 40 * 1024 * 1024;
        let text = format!("{CONFIG}limits: {{ max_request_body_bytes: {limit} }}\n");
        let bootstrap = render(&ConfigFile::parse(&text).unwrap()).unwrap();
        let buffer = bootstrap["static_resources"]["listeners"][0]
            ["per_connection_buffer_limit_bytes"]
            .as_u64()
            .unwrap();
        assert!(
            buffer > limit,
            "Envoy would answer 413 below Gantry's limit: {buffer}"
        );
        let default = render(&ConfigFile::parse(CONFIG).unwrap()).unwrap();
        assert_eq!(
            default["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"],
            CONNECTION_BUFFER_BYTES
        );
    }

    #[test]
    fn renders_routes_clusters_and_filter() {
        let config = ConfigFile::parse(CONFIG).unwrap();
        let bootstrap = render(&config).unwrap();
        let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[1]["route"]["prefix_rewrite"], "/openai/");
        assert_eq!(routes[1]["route"]["host_rewrite_literal"], "api.groq.com");
        assert_eq!(routes[1]["route"]["timeout"], "600s");
        assert_eq!(routes[2]["route"]["cluster"], NO_PROVIDER_CLUSTER);
        let ext_proc = &hcm["http_filters"][0]["typed_config"];
        assert_eq!(ext_proc["grpc_service"]["timeout"], "630s");
        assert_eq!(ext_proc["failure_mode_allow"], false);
        assert_eq!(ext_proc["message_timeout"], "1.000s");
        let clusters = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap();
        assert_eq!(clusters[1]["name"], NO_PROVIDER_CLUSTER);
        assert_eq!(clusters[2]["type"], "STATIC");
        assert_eq!(clusters[3]["type"], "LOGICAL_DNS");
        assert_eq!(
            clusters[3]["transport_socket"]["typed_config"]["sni"],
            "api.groq.com"
        );
        assert_eq!(
            hcm["http_filters"].as_array().unwrap().len(),
            2,
            "no auth, no cors"
        );
        let yaml = render_yaml(&config, "test.yaml").unwrap();
        assert!(
            yaml.starts_with("# Envoy bootstrap rendered by `gantry envoy-config` from test.yaml.")
        );
    }

    #[test]
    fn auth_tls_and_cors_render_in_the_right_order() {
        let text = format!(
            "{CONFIG}auth:\n  listen: 127.0.0.1:10002\n  api_keys: [{{ name: k, hash: 'sha256:{}', models: [fast] }}]\n\
             tls: {{ cert_file: s.crt, key_file: s.key, client_ca_file: ca.crt }}\n\
             cors: {{ allow_origins: ['https://a.example', 'regex:^https://.*\\.b\\.example$'] }}\n",
            "ab".repeat(32)
        );
        let config = ConfigFile::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let bootstrap = render(&config).unwrap();
        let chain = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0];
        let tls = &chain["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], true);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "ca.crt"
        );
        let hcm = &chain["filters"][0]["typed_config"];
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.header_mutation",
                "envoy.filters.http.cors",
                "envoy.filters.http.ext_authz",
                "envoy.filters.http.ext_proc",
                "envoy.filters.http.router"
            ]
        );
        let strip = &hcm["http_filters"][0]["typed_config"]["mutations"]["request_mutations"];
        assert_eq!(strip.as_array().unwrap().len(), IDENTITY_HEADERS.len());
        let authz = &hcm["http_filters"][2]["typed_config"];
        assert_eq!(authz["with_request_body"]["allow_partial_message"], false);
        assert_eq!(
            authz["with_request_body"]["max_request_bytes"],
            4 * 1024 * 1024
        );
        assert_eq!(authz["include_peer_certificate"], true);
        assert_eq!(authz["failure_mode_allow"], false);
        let ext_proc = &hcm["http_filters"][3]["typed_config"];
        assert_eq!(
            ext_proc["metadata_options"]["forwarding_namespaces"]["untyped"][0],
            EXT_AUTHZ_NAMESPACE
        );
        let cors = &hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]
            ["envoy.filters.http.cors"];
        assert_eq!(
            cors["allow_origin_string_match"][0]["exact"],
            "https://a.example"
        );
        assert_eq!(
            cors["allow_origin_string_match"][1]["safe_regex"]["regex"],
            "^https://.*\\.b\\.example$"
        );
        let clusters = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap();
        assert!(clusters.iter().any(|c| c["name"] == EXT_AUTHZ_CLUSTER));
    }
}
