//! Gantry's Envoy ext_proc server (`envoy.service.ext_proc.v3.ExternalProcessor`).
//!
//! A thin adapter: it reads Envoy's processing messages, asks the policy core what to do, and
//! answers with header/body mutations, immediate responses and dynamic metadata. It owns the
//! per-request state ([`http_stream::HttpStream`]) and nothing else; it must not contain policy
//! (alias resolution, error wording, usage parsing live in `gantry-policy`).
//!
//! What Envoy must be configured with for this server is rendered by `gantry envoy-config`:
//! request headers SEND, request body BUFFERED, response headers SEND, response body NONE
//! (switched per request with `mode_override`: BUFFERED for JSON, STREAMED for SSE), and
//! `receiving_namespaces` containing [`http_stream::METADATA_NAMESPACE`].

pub mod a2a;
pub mod governance;
pub mod guard_webhook;
pub mod http_stream;
pub mod mcp_direct;
pub mod server;
pub mod upstream_stream;

pub use governance::{GovernanceRuntime, GovernanceStats, SharedDirectory};
pub use server::{serve, ExtProcService, SharedSnapshot};
