//! The HTTP port: `/livez` (the process answers; never asks for a leader), `/readyz` (a
//! linearizable read would be served now), `/metrics` (Prometheus text) and `/status` (JSON).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::etcd::Api;

/// `/status` body.
#[derive(Serialize)]
struct StatusBody {
    id: u64,
    name: String,
    cluster: String,
    cluster_id: String,
    version: String,
    client_addr: String,
    peer_addr: String,
    #[serde(flatten)]
    group: crate::group::GroupStatus,
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(api): State<Api>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), api.group().read_barrier()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader confirmed within 2 s\n".to_string(),
        ),
    }
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let body = api.metrics().render(api.config().id, env!("CARGO_PKG_VERSION"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn status(State(api): State<Api>) -> impl IntoResponse {
    let cfg = api.config();
    axum::Json(StatusBody {
        id: cfg.id,
        name: cfg.name.clone(),
        cluster: cfg.cluster.clone(),
        cluster_id: format!("{:016x}", api.cluster_id()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        client_addr: cfg.advertised_client_addr(),
        peer_addr: cfg.advertised_peer_addr(),
        group: api.group().status(),
    })
}

/// Serves the HTTP port until the listener fails.
pub async fn serve(listener: TcpListener, api: Api) {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(api);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP port stopped");
    }
}
