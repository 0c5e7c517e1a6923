//! Prometheus metrics and health endpoints of the agent
//! (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::wireguard::device::Device;

type Labels = Vec<(String, String)>;

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
    /// The userspace device, when that is the backend (read at scrape time).
    pub device: std::sync::OnceLock<Arc<Device>>,
    peer_rx_bytes: Family<Labels, Gauge>,
    peer_tx_bytes: Family<Labels, Gauge>,
    peer_rx_packets: Family<Labels, Gauge>,
    peer_tx_packets: Family<Labels, Gauge>,
    peer_last_handshake: Family<Labels, Gauge>,
    dropped: Family<Labels, Gauge>,
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
        r.register(
            "peer_rx_bytes",
            "Bytes received from a peer (userspace device)",
            self.peer_rx_bytes.clone(),
        );
        r.register(
            "peer_tx_bytes",
            "Bytes sent to a peer (userspace device)",
            self.peer_tx_bytes.clone(),
        );
        r.register(
            "peer_rx_packets",
            "Datagrams received from a peer (userspace device)",
            self.peer_rx_packets.clone(),
        );
        r.register(
            "peer_tx_packets",
            "Datagrams sent to a peer (userspace device)",
            self.peer_tx_packets.clone(),
        );
        r.register(
            "peer_last_handshake_seconds",
            "Unix time of the last handshake with a peer (0 = never)",
            self.peer_last_handshake.clone(),
        );
        r.register(
            "device_dropped_packets",
            "Packets the userspace device dropped, by reason (no_peer, no_endpoint, bad_source, invalid)",
            self.dropped.clone(),
        );
        r
    }

    /// Copy the device's counters into the metric families.
    fn refresh(&self) {
        let Some(dev) = self.device.get() else { return };
        for p in dev.peer_status() {
            let l = vec![("peer".to_string(), p.public_key.to_base64())];
            self.peer_rx_bytes.get_or_create(&l).set(p.rx_bytes as i64);
            self.peer_tx_bytes.get_or_create(&l).set(p.tx_bytes as i64);
            self.peer_rx_packets
                .get_or_create(&l)
                .set(p.rx_packets as i64);
            self.peer_tx_packets
                .get_or_create(&l)
                .set(p.tx_packets as i64);
            self.peer_last_handshake
                .get_or_create(&l)
                .set(p.last_handshake.0 as i64);
        }
        for (reason, n) in dev.drop_counts() {
            self.dropped
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .set(n as i64);
        }
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
        let me = self.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let registry = registry.clone();
                    me.refresh();
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
