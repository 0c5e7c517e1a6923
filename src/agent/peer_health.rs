//! The agent's side of per-peer health: sample the device's peers, let
//! `mesh::health` judge them, keep the result for /metrics, and hand back
//! what goes on the Node (`podguard.dev/peer-health`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use keys::PublicKey;
use mesh::health::{Evidence, PeerHealth, PeerProblems, Sample, Tracker};

use super::Agent;

/// How often the device is sampled (the rate window is a minute).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// A judged peer with the node it belongs to.
#[derive(Debug, Clone)]
pub struct NamedHealth {
    /// The judgement.
    pub health: PeerHealth,
    /// The peer's node, when the plan names it.
    pub node: Option<String>,
}

/// The tracker and when it last ran.
#[derive(Debug)]
pub struct PeerWatch {
    tracker: Tracker,
    started: Instant,
    last: Option<(Instant, PeerProblems)>,
}

impl PeerWatch {
    /// Peers count as without a handshake after `limit`.
    pub fn new(limit: Duration) -> Self {
        Self {
            tracker: Tracker::new(limit),
            started: Instant::now(),
            last: None,
        }
    }
}

impl Agent {
    /// Sample the peers (at most every [`SAMPLE_EVERY`]; in between the
    /// last result) and return the problems to publish. A device that
    /// cannot be read leaves the last result: it says nothing new.
    pub fn peer_health(&mut self, metrics: &super::metrics::Metrics) -> PeerProblems {
        let now = Instant::now();
        if let Some((t, p)) = &self.peers.last
            && now.duration_since(*t) < SAMPLE_EVERY
        {
            return p.clone();
        }
        let samples = match self.sample() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading peers for their health failed");
                return self
                    .peers
                    .last
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
            }
        };
        let judged = self
            .peers
            .tracker
            .observe(now.duration_since(self.peers.started), &samples);
        let names = self.peer_names();
        let problems = PeerProblems::from_health(&judged, |k| names.get(k).cloned());
        let before = self
            .peers
            .last
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        if problems != before {
            if problems.is_empty() {
                tracing::info!("every peer has a working handshake again");
            } else {
                tracing::warn!(problems = %problems, "peer problems: traffic to these nodes is dropped or costly");
            }
        }
        metrics.set_peer_health(
            judged
                .into_iter()
                .map(|h| NamedHealth {
                    node: names.get(&h.key).cloned(),
                    health: h,
                })
                .collect(),
        );
        self.peers.last = Some((now, problems.clone()));
        problems
    }

    /// The planned peers' keys (current and next) by node.
    fn peer_names(&self) -> BTreeMap<PublicKey, String> {
        let mut m = BTreeMap::new();
        if let Some(plan) = &self.last_plan {
            for p in plan.peers.values() {
                m.insert(p.public_key, p.node.clone());
                if let Some(n) = p.next_public_key {
                    m.insert(n, p.node.clone());
                }
            }
        }
        m
    }

    fn sample(&self) -> Result<Vec<Sample>, super::WgError> {
        if let Some(dev) = &self.device {
            return Ok(dev
                .peer_status()
                .into_iter()
                .map(|p| Sample {
                    key: p.public_key,
                    evidence: Evidence::Attempts {
                        unanswered_for: p.unanswered_for,
                        initiations: p.handshake_initiations,
                        answered: p.handshakes_answered,
                    },
                })
                .collect());
        }
        let wall = SystemTime::now();
        Ok(self
            .wg
            .peer_handshakes()?
            .into_iter()
            .map(|(key, last, keepalive)| Sample {
                key,
                evidence: Evidence::LastHandshake {
                    age: last.map(|t| wall.duration_since(t).unwrap_or_default()),
                    keepalive,
                },
            })
            .collect())
    }
}
