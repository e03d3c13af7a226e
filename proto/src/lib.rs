//! Gantry's own gRPC API, generated from the `.proto` files beside this crate.
//!
//! `admin::v1` is the admin API (`gantry.admin.v1.AdminService`): API keys, budgets, user and
//! team metadata, spend, limits and config reload. The server is `gantry-admin`; the `gantry`
//! CLI is a client. This crate holds only generated code.

pub mod admin {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("gantry.admin.v1");
    }
}
