//! Prometheus metrics and health endpoints of the agent
//! (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Peers configured from the last plan.
    pub peers: Gauge,
    /// Nodes rejected by the last plan.
    pub rejected_nodes: Gauge,
    /// Reconciles that completed.
    pub reconciles: Counter,
    /// Reconciles that failed.
    pub reconcile_errors: Counter,
    /// Set once a reconcile has succeeded.
    pub ready: AtomicBool,
}

impl Metrics {
    fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("podguard");
        r.register("peers", "WireGuard peers configured", self.peers.clone());
        r.register(
            "rejected_nodes",
            "Nodes rejected by the planner (no peer: fail closed)",
            self.rejected_nodes.clone(),
        );
        r.register(
            "reconciles",
            "Completed reconciles",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles",
            self.reconcile_errors.clone(),
        );
        r
    }

    /// Record a reconcile outcome.
    pub fn record(&self, report: Option<&super::Report>) {
        match report {
            Some(r) => {
                self.reconciles.inc();
                self.peers.set(r.peers as i64);
                self.rejected_nodes.set(r.rejections.len() as i64);
                self.ready.store(true, Ordering::Relaxed);
            }
            None => {
                self.reconcile_errors.inc();
            }
        }
    }

    /// Serve the endpoints on `addr` (spawned on the current runtime).
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let registry = Arc::new(self.registry());
        let ready = self.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let registry = registry.clone();
                    async move {
                        let mut out = String::new();
                        match prometheus_client::encoding::text::encode(&mut out, &registry) {
                            Ok(()) => (StatusCode::OK, out),
                            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                        }
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move {
                        if ready.ready.load(Ordering::Relaxed) {
                            (StatusCode::OK, "ready")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not reconciled yet")
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(())
    }
}
