//! Prometheus metrics over plain HTTP: `GET /metrics` in the text format,
//! on a listener of its own (the coordinator's `metrics` and the agent's
//! `metrics` settings; off unless set). It serves only metrics: nothing
//! on it can change anything.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

/// The content type of the text format prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics listener; it stops when this is dropped.
pub struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listen on `address` and serve `registry` at `/metrics` until the
/// returned `Server` is dropped; the error says which address could not be
/// taken.
pub async fn serve(address: SocketAddr, registry: Arc<Registry>) -> Result<Server, String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot encode the metrics: {e}"),
                    )
                        .into_response(),
                }
            }
        }),
    );
    Ok(Server(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener stopped: {e}");
        }
    })))
}

use axum::response::IntoResponse;

/// The address of a `metrics` setting: `host:port`, or a bare port on
/// 127.0.0.1 (loopback unless an address is given).
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!(
            "metrics: `{text}` is not an address such as 127.0.0.1:9464 (or a port, on 127.0.0.1)"
        )
    })
}

/// Buckets for durations from 1 ms to about 4.5 minutes.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 19)
}
