//! `/metrics` (Prometheus text format) and `/healthz` (200 while every stage beats its
//! heartbeat, else 503 naming the stale stages and their age), on loopback by default.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use super::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("serving metrics on {addr}: {source}")]
pub struct HttpError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let stale = m.stale();
    let body = if stale.is_empty() {
        "{\"status\":\"ok\"}\n".to_string()
    } else {
        let items: Vec<String> = stale
            .iter()
            .map(|(stage, age)| format!("{{\"stage\":\"{stage}\",\"age_ms\":{age}}}"))
            .collect();
        format!("{{\"status\":\"stale\",\"stale\":[{}]}}\n", items.join(","))
    };
    let code = if stale.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Binds `addr` now (so a taken port is an error at start) and serves until `shutdown`.
/// Returns the bound address (port 0 picks one) and the server task.
pub async fn serve(
    addr: SocketAddr,
    m: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(m);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("metrics server: {e}");
        }
    });
    Ok((bound, task))
}
