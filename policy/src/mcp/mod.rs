//! MCP policy, pure: the pieces of the MCP bridge (and of ext_proc's inline MCP policy) that need
//! no transport. Protocol facts (revisions, eras, header trust, JSON-RPC error codes:
//! `protocol`), malicious-definition scanning (`scan`), definition digests for pinning and
//! rug-pull detection (`pin`).
//!
//! Nothing here does I/O or knows about HTTP, Envoy or gRPC.

pub mod authz;
pub mod direct;
pub mod names;
pub mod pin;
pub mod protocol;
pub mod scan;
