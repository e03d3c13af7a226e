//! The tonic `ExternalProcessor` service: each ext_proc stream (one HTTP request) is answered
//! message by message from its own [`HttpStream`] state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    ProcessingRequest, ProcessingResponse,
};
use futures::Stream;
use gantry_policy::Snapshot;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use crate::governance::GovernanceRuntime;
use crate::http_stream::HttpStream;

/// The config snapshot requests are served from; swapped whole on reload.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Largest gRPC message accepted from Envoy. Buffered bodies travel in one message, and tonic's
/// 4 MiB default is below what Envoy can send.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Gantry's ext_proc service.
#[derive(Clone)]
pub struct ExtProcService {
    snapshot: SharedSnapshot,
    governance: Option<Arc<GovernanceRuntime>>,
}

impl ExtProcService {
    /// `governance` is the store runtime; it must be given when snapshots have a
    /// `governance` section (requests under budgets are refused without it).
    pub fn new(
        snapshot: SharedSnapshot,
        governance: Option<Arc<GovernanceRuntime>>,
    ) -> ExtProcService {
        ExtProcService {
            snapshot,
            governance,
        }
    }

    /// The service wrapped for tonic, with message limits suitable for Envoy.
    pub fn into_server(self) -> ExternalProcessorServer<ExtProcService> {
        ExternalProcessorServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let upstream = request
            .metadata()
            .get(crate::upstream_stream::CHAIN_METADATA.0)
            .is_some_and(|v| v.as_bytes() == crate::upstream_stream::CHAIN_METADATA.1.as_bytes());
        if upstream {
            // One attempt from the upstream filter of an alias's cluster.
            let state = crate::upstream_stream::UpstreamStream::new(self.snapshot.load_full());
            let responses = futures::stream::unfold(
                (request.into_inner(), state),
                |(mut inbound, mut state)| async move {
                    match inbound.message().await {
                        Ok(Some(message)) => {
                            let response = state.handle(message);
                            Some((Ok(response), (inbound, state)))
                        }
                        _ => None,
                    }
                },
            );
            return Ok(Response::new(Box::pin(responses)));
        }
        // One snapshot for the whole HTTP request, even if config is swapped meanwhile.
        let state = HttpStream::new(self.snapshot.load_full(), self.governance.clone());
        // Each response is computed when tonic pulls the next one, straight from the inbound
        // message: no task or channel per request.
        let responses = futures::stream::unfold(
            (request.into_inner(), state),
            |(mut inbound, mut state)| async move {
                // A request body that waited for webhook guards is answered first.
                if let Some(response) = state.resume().await {
                    return Some((Ok(response), (inbound, state)));
                }
                match inbound.message().await {
                    Ok(Some(message)) => {
                        let response = state.handle(message).await;
                        Some((Ok(response), (inbound, state)))
                    }
                    Ok(None) => None,
                    // Envoy resets the side stream at the end of every HTTP request: normal.
                    Err(status) => {
                        tracing::trace!(%status, "ext_proc stream ended by Envoy");
                        None
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(responses)))
    }
}

/// The responses of one ext_proc stream.
pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send + 'static>>;

/// Serves ext_proc on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    snapshot: SharedSnapshot,
    governance: Option<Arc<GovernanceRuntime>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Every ext_proc message is small and on the request's critical path: without TCP_NODELAY
    // each one waits for a delayed ACK. (`Server::tcp_nodelay` does not apply to an incoming
    // stream we build ourselves, so it is set here.)
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ExtProcService::new(snapshot, governance).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
