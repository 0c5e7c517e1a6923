//! Prometheus metrics and health endpoints of the agent
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! Served on 127.0.0.1 unless the operator chooses another address: the
//! agent runs on the host network of nodes whose underlay is untrusted,
//! and the page lists every peer's key and counters. Every series carries
//! a `node` label; device counters are read from the device at scrape time
//! (a collector), so removed peers and retired keys leave no series behind.
//!
//! Health: `/readyz` answers 200 while the last reconcile succeeded and is
//! recent; `/healthz` fails once the data plane has been broken (netlink,
//! WireGuard, nftables errors, not "waiting for podCIDRs") for longer than
//! a grace period, so the liveness probe restarts the agent.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::peer_health::NamedHealth;
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
    /// The userspace device, when that is the backend (read at scrape time).
    pub device: Arc<std::sync::OnceLock<Arc<Device>>>,
    health: parking_lot::Mutex<Health>,
    /// Each peer's health, as last judged (`Agent::peer_health`).
    peer_health: Arc<parking_lot::Mutex<Vec<NamedHealth>>>,
}

/// What the health endpoints judge from.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// When a reconcile last succeeded.
    pub last_ok: Option<Instant>,
    /// When a reconcile last finished, whatever its outcome.
    pub last_done: Option<Instant>,
    /// Since when the data plane has failed to reconcile (netlink,
    /// WireGuard, nftables), and the last such error.
    pub failing: Option<(Instant, String)>,
}

/// Limits of the health endpoints.
#[derive(Debug, Clone, Copy)]
pub struct HealthLimits {
    /// `/readyz` fails when the last good reconcile is older than this.
    pub stale_after: Duration,
    /// `/healthz` fails when the data plane has been failing this long.
    pub grace: Duration,
}

impl Health {
    /// `/readyz`: Ok, or why not.
    pub fn ready(&self, now: Instant, lim: HealthLimits) -> Result<(), String> {
        if let Some((_, e)) = &self.failing {
            return Err(format!(
                "not ready: the data plane failed to reconcile: {e}"
            ));
        }
        match self.last_ok {
            None => Err("not ready: not reconciled yet".into()),
            Some(t) if now.duration_since(t) > lim.stale_after => Err(format!(
                "not ready: last good reconcile {}s ago",
                now.duration_since(t).as_secs()
            )),
            Some(_) => Ok(()),
        }
    }

    /// `/healthz`: Ok, or why the agent should be restarted: the data plane
    /// failing for longer than the grace, or no reconcile finishing at all
    /// (a hung loop) for the staleness limit plus the grace.
    pub fn healthy(&self, now: Instant, lim: HealthLimits) -> Result<(), String> {
        match (&self.failing, self.last_done) {
            (Some((since, e)), _) if now.duration_since(*since) > lim.grace => Err(format!(
                "unhealthy: the data plane has failed to reconcile for {}s (grace {}s): {e}",
                now.duration_since(*since).as_secs(),
                lim.grace.as_secs()
            )),
            (None, Some(t)) if now.duration_since(t) > lim.stale_after + lim.grace => Err(format!(
                "unhealthy: no reconcile has finished for {}s (the loop is stuck)",
                now.duration_since(t).as_secs()
            )),
            _ => Ok(()),
        }
    }
}

/// The device's counters, read at scrape time.
#[derive(Debug)]
struct DeviceCollector(Arc<std::sync::OnceLock<Arc<Device>>>);

impl Collector for DeviceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(dev) = self.0.get() else {
            return Ok(());
        };
        let peers = dev.peer_status();
        type Get = fn(&crate::wireguard::uapi::PeerStatus) -> u64;
        let counters: [(&str, &str, Get); 4] = [
            (
                "peer_rx_bytes",
                "Bytes received from a peer (userspace device)",
                |p| p.rx_bytes,
            ),
            (
                "peer_tx_bytes",
                "Bytes sent to a peer (userspace device)",
                |p| p.tx_bytes,
            ),
            (
                "peer_rx_packets",
                "Datagrams received from a peer (userspace device)",
                |p| p.rx_packets,
            ),
            (
                "peer_tx_packets",
                "Datagrams sent to a peer (userspace device)",
                |p| p.tx_packets,
            ),
        ];
        for (name, help, get) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &peers {
                let l: Labels = vec![("peer".into(), p.public_key.to_base64().to_string())];
                ConstCounter::new(get(p)).encode(m.encode_family(&l)?)?;
            }
        }
        type Count = fn(&crate::wireguard::uapi::PeerStatus) -> u64;
        let handshakes: [(&str, &str, Count); 2] = [
            (
                "peer_handshake_initiations",
                "Handshake initiations sent to a peer, retransmits included (userspace device)",
                |p| p.handshake_initiations,
            ),
            (
                "peer_handshakes_answered",
                "A peer's handshake initiations answered (userspace device)",
                |p| p.handshakes_answered,
            ),
        ];
        for (name, help, get) in handshakes {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &peers {
                let l: Labels = vec![("peer".into(), p.public_key.to_base64().to_string())];
                ConstCounter::new(get(p)).encode(m.encode_family(&l)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "peer_last_handshake_seconds",
            "Unix time of the last handshake with a peer (0 = never)",
            None,
            MetricType::Gauge,
        )?;
        for p in &peers {
            let l: Labels = vec![("peer".into(), p.public_key.to_base64().to_string())];
            ConstGauge::new(p.last_handshake.0 as i64).encode(m.encode_family(&l)?)?;
        }
        let mut m = enc.encode_descriptor(
            "device_dropped_packets",
            "Packets the userspace device dropped, by reason (no_peer, no_endpoint, bad_source, invalid, under_load, source_limited, queue_full, pending_overflow)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in dev.drop_counts() {
            let l: Labels = vec![("reason".into(), reason.to_string())];
            ConstCounter::new(n).encode(m.encode_family(&l)?)?;
        }
        let m = enc.encode_descriptor(
            "device_handshake_initiations_read",
            "Handshake initiations the userspace device read: past mac1 (and under load mac2 and the source's limit), each costing the handshake's X25519 computations",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(dev.initiations_read()).encode(m)?;
        Ok(())
    }
}

/// Per-peer health as last judged, read at scrape time.
#[derive(Debug)]
struct PeerHealthCollector(Arc<parking_lot::Mutex<Vec<NamedHealth>>>);

impl Collector for PeerHealthCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let peers = self.0.lock().clone();
        let labels = |h: &NamedHealth, extra: Option<(&str, &str)>| -> Labels {
            let mut l: Labels = vec![
                ("peer".into(), h.health.key.to_base64().to_string()),
                ("peer_node".into(), h.node.clone().unwrap_or_default()),
            ];
            if let Some((k, v)) = extra {
                l.push((k.into(), v.into()));
            }
            l
        };
        let mut m = enc.encode_descriptor(
            "peer_problem",
            "1 while a peer has a problem: no_handshake (none for longer than REKEY_ATTEMPT_TIME, traffic to it is dropped) or storm (handshakes far above the paced rate)",
            None,
            MetricType::Gauge,
        )?;
        for h in &peers {
            for (p, name) in [
                (mesh::health::Problem::NoHandshake, "no_handshake"),
                (mesh::health::Problem::Storm, "storm"),
            ] {
                let v = i64::from(h.health.problem == Some(p));
                ConstGauge::new(v).encode(m.encode_family(&labels(h, Some(("problem", name))))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "peer_handshake_attempts_per_second",
            "Handshakes sent and answered per second with a peer over the last minute (userspace device)",
            None,
            MetricType::Gauge,
        )?;
        for h in &peers {
            if let Some(r) = h.health.handshakes_per_minute {
                ConstGauge::new(r / 60.0).encode(m.encode_family(&labels(h, None))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "peer_seconds_without_handshake",
            "Userspace device: how long initiations to a peer have gone unanswered; kernel: time since the last handshake",
            None,
            MetricType::Gauge,
        )?;
        for h in &peers {
            if let Some(s) = h.health.without_handshake_secs {
                ConstGauge::new(s as i64).encode(m.encode_family(&labels(h, None))?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Keep the peers' health for the next scrape.
    pub fn set_peer_health(&self, peers: Vec<NamedHealth>) {
        *self.peer_health.lock() = peers;
    }

    fn registry(self: &Arc<Self>, node: &str) -> Registry {
        let mut r = Registry::with_prefix_and_labels(
            "podguard",
            [(Cow::Borrowed("node"), Cow::Owned(node.to_string()))].into_iter(),
        );
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
        r.register_collector(Box::new(DeviceCollector(self.device.clone())));
        r.register_collector(Box::new(PeerHealthCollector(self.peer_health.clone())));
        r
    }

    /// The state the health endpoints judge.
    pub fn health(&self) -> Health {
        self.health.lock().clone()
    }

    /// Record a reconcile outcome. A plan error (e.g. no podCIDRs yet) is
    /// waiting, not a broken data plane: it does not count against health.
    pub fn record(&self, outcome: Result<&super::Report, &super::ReconcileError>) {
        let now = Instant::now();
        let mut h = self.health.lock();
        h.last_done = Some(now);
        match outcome {
            Ok(r) => {
                self.reconciles.inc();
                self.peers.set(r.peers as i64);
                self.rejected_nodes.set(r.rejections.len() as i64);
                h.last_ok = Some(now);
                h.failing = None;
            }
            Err(super::ReconcileError::Plan(_)) => {
                // Waiting (e.g. for podCIDRs) touches no data plane: an
                // earlier data-plane failure is no longer current.
                self.reconcile_errors.inc();
                h.failing = None;
            }
            Err(e) => {
                self.reconcile_errors.inc();
                let msg = std::iter::successors(Some(e as &dyn std::error::Error), |c| c.source())
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(": ");
                let since = h.failing.as_ref().map_or(now, |(t, _)| *t);
                h.failing = Some((since, msg));
            }
        }
    }

    /// Serve the endpoints on `addr` (spawned on the current runtime).
    pub async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        node: &str,
        limits: HealthLimits,
    ) -> std::io::Result<()> {
        let registry = Arc::new(self.registry(node));
        let (ready, healthy) = (self.clone(), self.clone());
        let answer = |r: Result<(), String>, ok: &'static str| match r {
            Ok(()) => (StatusCode::OK, ok.to_string()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
        };
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let registry = registry.clone();
                    async move {
                        let mut out = String::new();
                        match prometheus_client::encoding::text::encode(&mut out, &registry) {
                            Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], out),
                            Err(_) => (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                [(header::CONTENT_TYPE, "text/plain")],
                                String::new(),
                            ),
                        }
                    }
                }),
            )
            .route(
                "/healthz",
                get(move || {
                    let h = healthy.health();
                    async move { answer(h.healthy(Instant::now(), limits), "ok") }
                }),
            )
            .route(
                "/readyz",
                get(move || {
                    let h = ready.health();
                    async move { answer(h.ready(Instant::now(), limits), "ready") }
                }),
            );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(())
    }
}

/// The content type of the OpenMetrics text format `/metrics` serves.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: HealthLimits = HealthLimits {
        stale_after: Duration::from_secs(30),
        grace: Duration::from_secs(60),
    };

    #[test]
    fn ready_follows_the_current_state_and_health_waits_out_the_grace() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(h.ready(t0, LIM).unwrap_err().contains("not reconciled yet"));
        assert!(h.healthy(t0, LIM).is_ok(), "starting up is not unhealthy");
        h.last_ok = Some(t0);
        assert!(h.ready(t0, LIM).is_ok());
        assert!(
            h.ready(t0 + Duration::from_secs(31), LIM)
                .unwrap_err()
                .contains("31s ago")
        );
        h.failing = Some((t0, "creating podguard0: gone".into()));
        assert!(h.ready(t0, LIM).unwrap_err().contains("podguard0"));
        assert!(h.healthy(t0 + Duration::from_secs(59), LIM).is_ok());
        let e = h.healthy(t0 + Duration::from_secs(61), LIM).unwrap_err();
        assert!(e.contains("61s") && e.contains("podguard0"), "{e}");
        h.failing = None;
        h.last_ok = Some(t0 + Duration::from_secs(61));
        h.last_done = h.last_ok;
        assert!(h.healthy(t0 + Duration::from_secs(62), LIM).is_ok());
        assert!(h.ready(t0 + Duration::from_secs(62), LIM).is_ok());
        // A loop that stops finishing reconciles is restarted too.
        let stuck = t0 + Duration::from_secs(61 + 30 + 60 + 1);
        assert!(h.healthy(stuck, LIM).unwrap_err().contains("stuck"));
    }
}
