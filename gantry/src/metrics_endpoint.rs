//! `GET /metrics`: Gantry's counters in the Prometheus text format, on `metrics.listen`.
//!
//! Today it exports the governance runtime's counters (admissions, refusals, store errors, what
//! the failure modes did, spend records), the MCP bridge's definition verdicts, A2A requests by agent, method and outcome, and
//! `gantry_build_info`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use gantry_ext_proc::GovernanceRuntime;
use tokio::net::TcpListener;

/// Binds `addr` and returns the listener with the router that answers `/metrics`.
pub async fn bind(
    addr: SocketAddr,
    governance: Option<Arc<GovernanceRuntime>>,
    bridge: Option<Arc<gantry_mcp_bridge::Bridge>>,
    admin: Option<Arc<gantry_admin::DirectorySync>>,
) -> anyhow::Result<(TcpListener, axum::Router)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let governance = governance.clone();
            let bridge = bridge.clone();
            let admin = admin.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    render(governance.as_deref(), bridge.as_deref(), admin.as_deref()),
                )
            }
        }),
    );
    Ok((listener, router))
}

fn render(
    governance: Option<&GovernanceRuntime>,
    bridge: Option<&gantry_mcp_bridge::Bridge>,
    admin: Option<&gantry_admin::DirectorySync>,
) -> String {
    let mut out = format!(
        "# HELP gantry_build_info Gantry's version.\n# TYPE gantry_build_info gauge\ngantry_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(governance) = governance {
        out.push_str(
            &governance
                .stats
                .render_prometheus(governance.store().kind()),
        );
    }
    if let Some(bridge) = bridge {
        out.push_str(&bridge.defences.render_prometheus());
    }
    out.push_str(&gantry_ext_proc::a2a::render_prometheus());
    if let Some(admin) = admin {
        out.push_str(&admin.render_prometheus());
    }
    out
}
