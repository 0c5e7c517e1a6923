//! Per-peer health: which peers have gone without a handshake for longer
//! than WireGuard keeps trying (a dead pair), and which handshake far more
//! often than WireGuard's pacing allows (a storm), from what the device
//! reports each time the agent looks. Pure: the agent samples its device
//! and hands the samples in with `now`; it publishes the result on its
//! Node (`podguard.dev/peer-health`, read by `podguard status`) and on
//! /metrics.
//!
//! Two kinds of device:
//! - podguard's own knows its attempts: how long its initiations to a peer
//!   have gone without a completed handshake, and how many it sent and
//!   answered. A peer is without a handshake once that stretch exceeds
//!   the limit (REKEY_ATTEMPT_TIME by default, after which WireGuard gives
//!   up); a storm is a handshake rate above [`STORM_PER_MINUTE`].
//! - kernel WireGuard reports only the last handshake. With a persistent
//!   keepalive every working session rekeys every REKEY_AFTER_TIME, so a
//!   last handshake older than that plus the limit (or none, for longer
//!   than the limit since the peer appeared) means its attempts failed.
//!   Without a keepalive an idle peer has no handshake and is not judged.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use keys::PublicKey;
use serde::{Deserialize, Serialize};

/// WireGuard's REKEY_AFTER_TIME: a session is renewed after this long.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// WireGuard's REKEY_ATTEMPT_TIME: how long it keeps trying a handshake.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Handshakes (sent and answered) per minute with one peer above which it
/// is a storm. Pacing allows one initiation per REKEY_TIMEOUT (5 s) and
/// link, 12 a minute; a working pair needs one per two minutes.
pub const STORM_PER_MINUTE: f64 = 30.0;
/// The window the handshake rate is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Names listed in the annotation; the rest are counted.
pub const MAX_LISTED: usize = 16;

/// What a device says of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// podguard's userspace device: its own attempts.
    Attempts {
        /// How long initiations have gone without a completed handshake.
        unanswered_for: Option<Duration>,
        /// Initiations sent so far (a counter).
        initiations: u64,
        /// The peer's initiations answered so far (a counter).
        answered: u64,
    },
    /// A device that reports only the last handshake (kernel WireGuard).
    LastHandshake {
        /// Time since it (`None`: never).
        age: Option<Duration>,
        /// Whether a persistent keepalive is configured.
        keepalive: bool,
    },
}

/// One peer, as sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The peer's key on the device.
    pub key: PublicKey,
    /// What the device says.
    pub evidence: Evidence,
}

/// What is wrong with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Problem {
    /// No handshake for longer than the limit: traffic to it is dropped.
    NoHandshake,
    /// Handshakes far above the paced rate.
    Storm,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoHandshake => "no handshake",
            Self::Storm => "handshake storm",
        })
    }
}

/// One peer's health.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerHealth {
    /// The peer's key.
    pub key: PublicKey,
    /// What is wrong, if anything.
    pub problem: Option<Problem>,
    /// Seconds without a completed handshake while trying (own device),
    /// or since the last handshake (kernel), when known.
    pub without_handshake_secs: Option<u64>,
    /// Handshakes per minute over the last [`RATE_WINDOW`] (own device,
    /// once half a window has been seen).
    pub handshakes_per_minute: Option<f64>,
}

#[derive(Debug)]
struct Seen {
    first: Duration,
    /// (time, initiations + answered), oldest first.
    history: VecDeque<(Duration, u64)>,
}

/// Keeps what rates and "since it appeared" need between samples.
#[derive(Debug)]
pub struct Tracker {
    limit: Duration,
    seen: BTreeMap<PublicKey, Seen>,
}

impl Tracker {
    /// A tracker that calls a peer without a handshake after `limit`
    /// (normally [`REKEY_ATTEMPT_TIME`]).
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            seen: BTreeMap::new(),
        }
    }

    /// Judge `samples` taken at `now` (any monotonic time, the same base
    /// on every call). Peers no longer sampled are forgotten.
    pub fn observe(&mut self, now: Duration, samples: &[Sample]) -> Vec<PeerHealth> {
        self.seen.retain(|k, _| samples.iter().any(|s| s.key == *k));
        samples.iter().map(|s| self.judge(now, s)).collect()
    }

    fn judge(&mut self, now: Duration, s: &Sample) -> PeerHealth {
        let seen = self.seen.entry(s.key).or_insert_with(|| Seen {
            first: now,
            history: VecDeque::new(),
        });
        match s.evidence {
            Evidence::Attempts {
                unanswered_for,
                initiations,
                answered,
            } => {
                let total = initiations.saturating_add(answered);
                seen.history.push_back((now, total));
                while seen
                    .history
                    .front()
                    .is_some_and(|(t, _)| now.saturating_sub(*t) > RATE_WINDOW)
                {
                    seen.history.pop_front();
                }
                let rate = seen.history.front().and_then(|&(t, n)| {
                    let span = now.saturating_sub(t);
                    (span >= RATE_WINDOW / 2)
                        .then(|| total.saturating_sub(n) as f64 * 60.0 / span.as_secs_f64())
                });
                let problem = if unanswered_for.is_some_and(|d| d > self.limit) {
                    Some(Problem::NoHandshake)
                } else if rate.is_some_and(|r| r > STORM_PER_MINUTE) {
                    Some(Problem::Storm)
                } else {
                    None
                };
                PeerHealth {
                    key: s.key,
                    problem,
                    without_handshake_secs: unanswered_for.map(|d| d.as_secs()),
                    handshakes_per_minute: rate,
                }
            }
            Evidence::LastHandshake { age, keepalive } => {
                let dead = keepalive
                    && match age {
                        Some(a) => a > REKEY_AFTER_TIME + self.limit,
                        None => now.saturating_sub(seen.first) > self.limit,
                    };
                PeerHealth {
                    key: s.key,
                    problem: dead.then_some(Problem::NoHandshake),
                    without_handshake_secs: age.map(|a| a.as_secs()),
                    handshakes_per_minute: None,
                }
            }
        }
    }
}

/// The value of `podguard.dev/peer-health`: the peers (by node name) with
/// a problem. Absent when every peer is fine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerProblems {
    /// Peers without a handshake for longer than the limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_handshake: Vec<String>,
    /// Peers in a handshake storm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storm: Vec<String>,
    /// Peers with a problem that are not listed (beyond [`MAX_LISTED`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl PeerProblems {
    /// From the judged peers; `name` gives a peer's node (unknown keys are
    /// named by fingerprint). Names are sorted, so the value changes only
    /// when the set does.
    pub fn from_health(health: &[PeerHealth], name: impl Fn(&PublicKey) -> Option<String>) -> Self {
        let mut all: Vec<(Problem, String)> = health
            .iter()
            .filter_map(|h| {
                let p = h.problem?;
                Some((p, name(&h.key).unwrap_or_else(|| h.key.fingerprint())))
            })
            .collect();
        all.sort();
        let more = all.len().saturating_sub(MAX_LISTED);
        let mut out = Self {
            more,
            ..Self::default()
        };
        for (p, n) in all.into_iter().take(MAX_LISTED) {
            match p {
                Problem::NoHandshake => out.no_handshake.push(n),
                Problem::Storm => out.storm.push(n),
            }
        }
        out
    }

    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.no_handshake.is_empty() && self.storm.is_empty() && self.more == 0
    }

    /// How many peers have a problem.
    pub fn count(&self) -> usize {
        self.no_handshake.len() + self.storm.len() + self.more
    }

    /// The annotation value (`None`: remove it).
    pub fn to_annotation(&self) -> Option<String> {
        (!self.is_empty()).then(|| serde_json::to_string(self).unwrap_or_default())
    }

    /// Parse an annotation value.
    pub fn parse(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

impl std::fmt::Display for PeerProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.no_handshake.is_empty() {
            parts.push(format!("NO HANDSHAKE: {}", self.no_handshake.join(",")));
        }
        if !self.storm.is_empty() {
            parts.push(format!("STORM: {}", self.storm.join(",")));
        }
        if self.more > 0 {
            parts.push(format!("+{} more", self.more));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests;
