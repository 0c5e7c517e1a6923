//! What `podguard status` and `podguard rotate` conclude from the Nodes'
//! annotations: per-node key, rotation state and digest agreement, whether
//! a rotation may start, and whether one has finished. Pure: the CLI reads
//! the Nodes and prints.

use std::collections::BTreeMap;

use keys::PublicKey;
use serde::Serialize;

use crate::NodeInfo;
use crate::health::PeerProblems;
use crate::publish::{
    ANN_KEY_CREATED, ANN_MESH_DIGEST, ANN_NEXT_PUBLIC_KEY, ANN_PEER_HEALTH, ANN_PUBLIC_KEY,
    ANN_ROTATE_DONE, ANN_ROTATE_REQUESTED, ANN_ROTATION_STATE,
};

/// A Node as the CLI sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    /// What the planner reads.
    pub info: NodeInfo,
    /// All annotations (podguard's are read from here).
    pub annotations: BTreeMap<String, String>,
    /// The agent's heartbeat (its Lease).
    pub heartbeat: Heartbeat,
}

/// What a node's heartbeat Lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Heartbeat {
    /// Leases could not be read (not judged).
    #[default]
    Unknown,
    /// No Lease for this node: its agent never reported.
    Missing,
    /// Last renewed `age_secs` ago; alive while that is within
    /// `duration_secs`.
    Renewed {
        /// Seconds since the last renewal.
        age_secs: u64,
        /// The Lease's duration.
        duration_secs: u64,
    },
}

impl Heartbeat {
    /// Whether this says the agent is not alive.
    pub fn down(&self) -> bool {
        match self {
            Self::Unknown => false,
            Self::Missing => true,
            Self::Renewed {
                age_secs,
                duration_secs,
            } => age_secs > duration_secs,
        }
    }
}

impl NodeView {
    fn ann(&self, k: &str) -> Option<&str> {
        self.annotations.get(k).map(String::as_str)
    }

    fn key(&self) -> Option<PublicKey> {
        self.ann(ANN_PUBLIC_KEY)
            .and_then(|s| PublicKey::from_base64(s).ok())
    }
}

/// Whether a node's applied mesh matches what the annotations say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Agreement {
    /// Its digest equals the one computed from every Node.
    Agrees,
    /// It publishes another digest: it has not applied the current state
    /// (or rejects a node the annotations make valid).
    Differs,
    /// It publishes none (no agent, or an old one).
    Missing,
    /// Its agent's heartbeat expired (or never came): whatever its digest
    /// says, nobody maintains its peers, keys and routes.
    AgentDown,
}

/// One line of `podguard status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Node name.
    pub node: String,
    /// Fingerprint of its public key (`None`: no valid key published).
    pub key: Option<String>,
    /// Age of its current key in seconds, if published.
    pub key_age_secs: Option<u64>,
    /// `idle`, `staged`, `switched`, or `unknown`.
    pub rotation: String,
    /// Fingerprint of the next key during a rotation.
    pub next_key: Option<String>,
    /// A rotation was requested and not yet taken on.
    pub rotation_requested: bool,
    /// Digest agreement (or `agentDown`).
    pub digest: Agreement,
    /// Seconds since the agent's heartbeat, when known.
    pub heartbeat_age_secs: Option<u64>,
    /// Peers its agent finds without a handshake or in a handshake storm
    /// (`podguard.dev/peer-health`; empty when none, or not published).
    pub peer_problems: PeerProblems,
}

impl Row {
    /// Whether this node needs a look: not converged, agent down, or a
    /// peer problem.
    pub fn finding(&self) -> bool {
        self.digest != Agreement::Agrees || !self.peer_problems.is_empty()
    }
}

/// An age as kubectl prints one (`95s`, `60m`, `5h`, `3d`): the same
/// words wherever the CLI tells how long ago something happened.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The status of every node, sorted by name.
pub fn rows(nodes: &[NodeView], now: u64) -> Vec<Row> {
    let infos: Vec<NodeInfo> = nodes.iter().map(|n| n.info.clone()).collect();
    let expected = crate::digest::expected(&infos);
    let mut out: Vec<Row> = nodes
        .iter()
        .map(|n| Row {
            node: n.info.name.clone(),
            key: n.key().map(|k| k.fingerprint()),
            key_age_secs: n
                .ann(ANN_KEY_CREATED)
                .and_then(|s| s.parse::<u64>().ok())
                .map(|t| now.saturating_sub(t)),
            rotation: n.ann(ANN_ROTATION_STATE).unwrap_or("unknown").to_string(),
            next_key: n
                .ann(ANN_NEXT_PUBLIC_KEY)
                .and_then(|s| PublicKey::from_base64(s).ok())
                .map(|k| k.fingerprint()),
            rotation_requested: requested_pending(n),
            digest: match n.ann(ANN_MESH_DIGEST) {
                _ if n.heartbeat.down() => Agreement::AgentDown,
                None => Agreement::Missing,
                Some(d) if d == expected => Agreement::Agrees,
                Some(_) => Agreement::Differs,
            },
            heartbeat_age_secs: match n.heartbeat {
                Heartbeat::Renewed { age_secs, .. } => Some(age_secs),
                _ => None,
            },
            peer_problems: n
                .ann(ANN_PEER_HEALTH)
                .map(|v| {
                    PeerProblems::parse(v).unwrap_or_else(|_| PeerProblems {
                        // Unreadable (an old agent, or tampered): say so.
                        no_handshake: vec![format!("(unreadable {ANN_PEER_HEALTH})")],
                        ..PeerProblems::default()
                    })
                })
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

fn requested_pending(n: &NodeView) -> bool {
    match n.ann(ANN_ROTATE_REQUESTED) {
        Some(r) => n.ann(ANN_ROTATE_DONE) != Some(r),
        None => false,
    }
}

/// Why `podguard rotate` refuses a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No Node by that name.
    #[error("node {name:?} not found (nodes: {known})")]
    UnknownNode {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// The node has no valid public key: no agent runs there.
    #[error(
        "node {0:?} publishes no valid podguard.dev/public-key: is podguard-agent running there?"
    )]
    NoAgent(String),
    /// The node's agent is not alive (its heartbeat Lease ran out, or
    /// there is none): the rotation would only wait for it.
    #[error(
        "node {name:?}'s agent is not alive ({why}): a rotation would wait for it; see `podguard status`"
    )]
    AgentDown {
        /// The node.
        name: String,
        /// What its heartbeat says.
        why: String,
    },
    /// A rotation is already under way.
    #[error("node {name:?} is already rotating ({what}); wait for it to finish")]
    InProgress {
        /// The node.
        name: String,
        /// What shows it.
        what: String,
    },
}

/// May a rotation of `name` start now?
pub fn may_rotate(nodes: &[NodeView], name: &str) -> Result<(), Refused> {
    let Some(n) = nodes.iter().find(|n| n.info.name == name) else {
        let mut known: Vec<&str> = nodes.iter().map(|n| n.info.name.as_str()).collect();
        known.sort();
        return Err(Refused::UnknownNode {
            name: name.to_string(),
            known: known.join(", "),
        });
    };
    if n.key().is_none() {
        return Err(Refused::NoAgent(name.to_string()));
    }
    if n.heartbeat.down() {
        let why = match n.heartbeat {
            Heartbeat::Renewed {
                age_secs,
                duration_secs,
            } => format!(
                "last heartbeat {} ago, its Lease lasts {duration_secs}s",
                age(age_secs)
            ),
            _ => "no heartbeat Lease".into(),
        };
        return Err(Refused::AgentDown {
            name: name.to_string(),
            why,
        });
    }
    if requested_pending(n) {
        return Err(Refused::InProgress {
            name: name.to_string(),
            what: format!(
                "a request is pending; if no agent will take it on, withdraw it with podguard rotate --cancel --node {name}"
            ),
        });
    }
    match n.ann(ANN_ROTATION_STATE) {
        Some("staged") | Some("switched") => Err(Refused::InProgress {
            name: name.to_string(),
            what: format!("state {}", n.ann(ANN_ROTATION_STATE).unwrap_or_default()),
        }),
        _ => Ok(()),
    }
}

/// Why a rotation request cannot be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCancelled {
    /// No Node by that name.
    #[error("node {0:?} not found")]
    UnknownNode(String),
    /// Nothing was requested, or the agent already took the request on.
    #[error("node {name:?} has no pending rotation request{what}")]
    NothingPending {
        /// The node.
        name: String,
        /// What is there instead (a rotation under way, say).
        what: String,
    },
}

/// May the rotation request on `name` be withdrawn? Only while no agent
/// has taken it on: a rotation under way finishes (or rolls back) by
/// itself, and is never cut short from outside.
pub fn may_cancel(nodes: &[NodeView], name: &str) -> Result<(), NotCancelled> {
    let Some(n) = nodes.iter().find(|n| n.info.name == name) else {
        return Err(NotCancelled::UnknownNode(name.to_string()));
    };
    if requested_pending(n) {
        return Ok(());
    }
    let what = match n.ann(ANN_ROTATION_STATE) {
        Some(s @ ("staged" | "switched")) => format!(
            ": its agent took it on and the rotation is under way (state {s}); it finishes by itself"
        ),
        _ => String::new(),
    };
    Err(NotCancelled::NothingPending {
        name: name.to_string(),
        what,
    })
}

/// How far a requested rotation has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Progress {
    /// Not finished: what is still missing.
    Pending {
        /// The first thing still missing.
        waiting_for: String,
    },
    /// Finished: new key in place, old key gone, every node whose agent
    /// is alive agrees.
    Done {
        /// Fingerprint of the new key.
        new_key: String,
        /// Nodes not waited for: their agents are down (heartbeat Lease
        /// run out or missing). Each takes the new key when it is back.
        agents_down: Vec<String>,
    },
}

/// Has the rotation of `name` requested with `nonce` (old key `old`)
/// finished everywhere? A node whose agent is down is not waited for (it
/// could only time the rotation out: it applies the new key when it
/// returns), and is named in [`Progress::Done`]; heartbeats not read
/// ([`Heartbeat::Unknown`]) are not judged, so such nodes are waited for.
pub fn progress(nodes: &[NodeView], name: &str, nonce: &str, old: &PublicKey) -> Progress {
    let pending = |w: String| Progress::Pending { waiting_for: w };
    let Some(n) = nodes.iter().find(|n| n.info.name == name) else {
        return pending(format!("node {name} to exist"));
    };
    if n.ann(ANN_ROTATE_DONE) != Some(nonce) {
        return pending(format!("the agent on {name} to take the request on"));
    }
    let Some(key) = n.key() else {
        return pending(format!("{name} to publish a valid key"));
    };
    if key == *old {
        return pending(format!(
            "{name} to switch keys (state {})",
            n.ann(ANN_ROTATION_STATE).unwrap_or("unknown")
        ));
    }
    if n.ann(ANN_ROTATION_STATE) != Some("idle") || n.ann(ANN_NEXT_PUBLIC_KEY).is_some() {
        return pending(format!(
            "{name} to retire its old key (state {})",
            n.ann(ANN_ROTATION_STATE).unwrap_or("unknown")
        ));
    }
    let infos: Vec<NodeInfo> = nodes.iter().map(|n| n.info.clone()).collect();
    let expected = crate::digest::expected(&infos);
    let stale = |m: &&NodeView| m.key().is_some() && m.ann(ANN_MESH_DIGEST) != Some(&expected);
    let mut behind: Vec<&str> = nodes
        .iter()
        .filter(stale)
        .filter(|m| !m.heartbeat.down())
        .map(|m| m.info.name.as_str())
        .collect();
    behind.sort();
    if !behind.is_empty() {
        return pending(format!(
            "node(s) {} to apply the new key",
            behind.join(", ")
        ));
    }
    let mut agents_down: Vec<String> = nodes
        .iter()
        .filter(stale)
        .filter(|m| m.heartbeat.down())
        .map(|m| m.info.name.clone())
        .collect();
    agents_down.sort();
    Progress::Done {
        new_key: key.fingerprint(),
        agents_down,
    }
}

#[cfg(test)]
mod tests;
