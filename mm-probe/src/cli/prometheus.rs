//! The `/metrics` endpoint.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result};
use axum::{Router, http::header, routing::get};
use tokio::task::JoinHandle;

/// Content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serve the latest exposition text at `http://addr/metrics`.
pub async fn serve(addr: SocketAddr, text: Arc<RwLock<String>>) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--prometheus: cannot listen on {addr}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let body = text.read().map(|t| t.clone()).unwrap_or_default();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], body) }
        }),
    );
    eprintln!("mm-probe: serving Prometheus metrics at http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("mm-probe: the Prometheus endpoint stopped: {e}");
        }
    }))
}
