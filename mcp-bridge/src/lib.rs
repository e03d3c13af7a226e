//! Gantry's MCP bridge: an HTTP service (behind Envoy, which routes the MCP path to it) that
//! shows clients one MCP server made of many.
//!
//! - `settings`: the `mcp` config section compiled once (credentials resolved, curation,
//!   rules and pins compiled).
//! - `upstream`: reaching each upstream (streamable HTTP in either era, or one shared stdio /
//!   HTTP+SSE connection), era probing, concurrency caps, upstream sessions.
//! - `bridge`: federation independent of HTTP: merged lists, routing by prefix, the answer
//!   translated back (ids, URIs, 2026 result stamps).
//! - `session`: downstream session ids sealed with an AEAD, bound to the caller.
//! - `defences`: scanning, pinning and rug-pull checks at run time.
//! - `http_server`: the streamable-HTTP front (Host/Origin, era, 2026 header checks).
//!
//! Policy (what a name is, which rules apply, what a poisoned definition looks like) lives in
//! `gantry_policy::mcp`; this crate must not grow policy of its own. It speaks MCP as raw
//! JSON-RPC (`serde_json::Value`) so that fields it does not know travel unchanged.

pub mod bridge;
pub mod defences;
pub mod http_server;
pub mod session;
pub mod settings;
pub mod upstream;

pub use bridge::Bridge;
pub use http_server::{router, serve};
pub use settings::BridgeSettings;
