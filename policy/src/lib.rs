//! Gantry's policy core: the config model and its validation, the compiled [`Snapshot`] that
//! requests are served from, the OpenAI-compatible front door (alias resolution, body rewrite,
//! error objects), SSE framing and token usage accounting.
//!
//! This crate is pure logic. It must not know about gRPC, Envoy or any transport: the ext_proc
//! server, the ext_authz server, the MCP bridge and the dynamic module are adapters that call it,
//! so a rule written here behaves the same in each of them and is tested without Envoy.

pub mod a2a;
pub mod admin;
pub mod auth;
pub mod config;
pub mod endpoint;
pub mod front_door;
pub mod governance;
pub mod guard;
pub mod json_object;
pub mod mcp;
pub mod openai_api;
pub mod response_stream;
pub mod routing;
pub mod snapshot;
pub mod sse;
pub mod translate;
pub mod usage;

pub use config::{ConfigError, ConfigFile, FailureMode};
pub use guard::{GuardHit, GuardPolicy, GuardVerdict};
pub use openai_api::{
    decide_on_head, plan_forward, plan_forward_in, ForwardPlan, HeadDecision, LlmApi, LocalReply,
};
pub use snapshot::Snapshot;
pub use usage::{ChunkOutput, StreamAccountant, Usage};
