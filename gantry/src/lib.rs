//! The `gantry` command: run the local stack, render Envoy config, validate config.
//!
//! This crate wires the others together. It owns process supervision (Envoy as a child in its
//! own process group), the Envoy bootstrap renderer and the CLI; it must not hold policy (that is
//! `gantry-policy`) or protocol handling (that is `gantry-ext-proc`).

pub mod admin_client;
pub mod config_reload;
pub mod envoy_binary;
pub mod envoy_bootstrap;
pub mod governance_store;
pub mod import_litellm;
pub mod local_stack;
pub mod metrics_endpoint;
pub mod spend;

/// The quickstart config bundled into the binary; `gantry run` uses it when `--config` is not
/// given.
pub const QUICKSTART_CONFIG: &str = include_str!("../../examples/quickstart.yaml");
/// How the bundled quickstart is named in messages and rendered files.
pub const QUICKSTART_SOURCE: &str = "examples/quickstart.yaml";
