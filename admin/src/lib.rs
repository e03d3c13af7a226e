//! Gantry's admin API: the tonic server of `gantry.admin.v1.AdminService` (`service`), and the
//! sync that keeps every replica's runtime directory current (`sync`).
//!
//! What the API creates (API keys, budgets, user and team metadata) is written to the
//! governance store as versioned records with a compare-and-set, with an audit event in the
//! same atomic step. Each replica polls the store's version every `admin_api.sync_interval_ms`
//! and, when it moved, reads the records and swaps in a freshly compiled
//! [`RuntimeDirectory`](gantry_policy::admin::RuntimeDirectory), which ext_authz (keys) and
//! ext_proc (budgets) read next to the config snapshot. The replica that made a change
//! refreshes before it answers, so a key works there as soon as the call returns.
//!
//! This crate maps protobuf messages onto the policy's admin rules
//! ([`gantry_policy::admin::changes`]) and does the store I/O; it holds no policy of its own
//! and knows nothing of Envoy.

pub mod convert;
pub mod service;
pub mod sync;

pub use service::{AdminApi, ReloadOutcome, ReloadRequest};
pub use sync::DirectorySync;

use std::future::Future;

use gantry_proto::admin::v1::admin_service_server::AdminServiceServer;
use tokio::net::TcpListener;

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    api: AdminApi,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(AdminServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
