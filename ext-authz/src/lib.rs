//! Gantry's ext_authz server: the tonic `envoy.service.auth.v3.Authorization` service that plain
//! Envoy and Istio (an `envoyExtAuthzGrpc` extension provider) call to decide who is calling and
//! whether they may. The decisions themselves are `gantry_policy::auth`; this crate adapts
//! Envoy's messages (`server`) and keeps JWT issuers' keys (`jwks`).

pub mod jwks;
pub mod server;

pub use jwks::{JwksError, JwksStore};
pub use server::{serve, AuthzService, SharedSnapshot};
