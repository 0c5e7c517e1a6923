//! `podguard audit`: which policy-allowed traffic podguard protects.
//!
//! For every pair of pods, NetworkPolicy decides whether the flow is
//! allowed ([`crate::policy`]); the nodes' published state decides how it
//! travels ([`Transport`]). Findings carry a severity: high when allowed
//! traffic is dropped or unmaintained (a node without a valid key, an agent
//! down), warning for host-network pods (plaintext by design: outside the
//! pod network), reported once per node; the CLI's `--fail-on` picks the
//! severity that fails. Each allowed pair carries the ports and protocols
//! policy opens (`80/TCP`, `all`), so "only UDP is allowed" is visible.
//! Pure: the CLI reads the API; [`render`] writes the text.

mod render;

pub use render::{Probe, render};

use std::collections::{BTreeMap, BTreeSet};

use keys::PublicKey;
use serde::Serialize;

use crate::policy::{Cluster, Pod, Ports};
use crate::publish::ANN_PUBLIC_KEY;
use crate::status::{Agreement, NodeView};

/// How an allowed flow travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Transport {
    /// Both pods on one node: never on the wire.
    Local,
    /// Cross-node through the mesh, valid keys on both ends: encrypted.
    Encrypted,
    /// Cross-node, but a node has not applied the current mesh (its
    /// digest differs or is missing): encrypted if it flows at all.
    Stale,
    /// A host-network pod is involved: outside the pod network, plaintext
    /// on the underlay. Not covered by podguard.
    NotCovered,
    /// A node whose agent is not alive (heartbeat expired): nobody keeps
    /// its peers, keys and routes; traffic may stop at any time.
    AgentDown,
    /// A node without a valid, unique key: podguard drops the traffic
    /// (fail closed) — the flow is broken.
    Broken,
}

impl Transport {
    /// Short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Encrypted => "encrypted",
            Self::Stale => "stale",
            Self::NotCovered => "PLAINTEXT",
            Self::AgentDown => "AGENT-DOWN",
            Self::Broken => "BROKEN",
        }
    }
}

/// Finding severity (`--fail-on` names: low, medium, high).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// May break or degrade traffic.
    Warning,
    /// Allowed traffic is unencrypted or dropped.
    High,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Info => "INFO",
            Self::Warning => "WARNING",
            Self::High => "HIGH",
        })
    }
}

/// One thing the audit found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What it is about (a node, or `ns/pod -> ns/pod`).
    pub subject: String,
    /// What is wrong.
    pub message: String,
}

/// One pod pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairVerdict {
    /// `namespace/name` of the source.
    pub from: String,
    /// `namespace/name` of the destination.
    pub to: String,
    /// Whether NetworkPolicy allows some port.
    pub allowed: bool,
    /// The ports and protocols policy allows, as [`Ports::labels`] writes
    /// them (`["all"]`, `["53/UDP", "8000-8080/TCP"]`; empty: denied).
    pub ports: Vec<String>,
    /// How it travels (only when allowed).
    pub transport: Option<Transport>,
}

/// One cell of the namespace matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    /// Source namespace.
    pub from: String,
    /// Destination namespace.
    pub to: String,
    /// Pod pairs.
    pub pairs: usize,
    /// Pairs policy allows.
    pub allowed: usize,
    /// The worst transport among allowed pairs.
    pub worst: Option<Transport>,
    /// Every port and protocol some pair of the cell may use (labels as
    /// in [`PairVerdict::ports`]).
    pub ports: Vec<String>,
}

/// How a finding about a node that has not converged ends.
pub(crate) const NOT_CONVERGED: &str = ": not converged";

/// The audit result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Namespace matrix, sorted.
    pub namespaces: Vec<Cell>,
    /// Per pod pair (sorted).
    pub pods: Vec<PairVerdict>,
    /// Findings, worst first.
    pub findings: Vec<Finding>,
    /// False when there is a high finding (allowed traffic dropped or
    /// unmaintained).
    pub ok: bool,
}

impl Report {
    /// Whether a finding is at least `threshold` (`None`: never fail).
    pub fn fails(&self, threshold: Option<Severity>) -> bool {
        threshold.is_some_and(|t| self.findings.iter().any(|f| f.severity >= t))
    }
}

/// Why a node cannot carry encrypted traffic, if it cannot.
fn node_problems(nodes: &[NodeView]) -> BTreeMap<String, String> {
    let mut by_key: BTreeMap<PublicKey, Vec<&str>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for n in nodes {
        match n.annotations.get(ANN_PUBLIC_KEY) {
            None => {
                out.insert(
                    n.info.name.clone(),
                    "publishes no podguard.dev/public-key (no agent?)".to_string(),
                );
            }
            Some(s) => match PublicKey::from_base64(s) {
                Ok(k) => by_key.entry(k).or_default().push(&n.info.name),
                Err(e) => {
                    out.insert(
                        n.info.name.clone(),
                        format!("podguard.dev/public-key is invalid: {e}"),
                    );
                }
            },
        }
    }
    for names in by_key.values().filter(|v| v.len() > 1) {
        for n in names {
            out.insert(
                n.to_string(),
                format!("shares its public key with {}", names.join(", ")),
            );
        }
    }
    out
}

fn id(p: &Pod) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// Run the audit.
pub fn audit(nodes: &[NodeView], pods: &[Pod], cluster: &Cluster, now: u64) -> Report {
    let problems = node_problems(nodes);
    let status: BTreeMap<String, Agreement> = crate::status::rows(nodes, now)
        .into_iter()
        .map(|r| (r.node, r.digest))
        .collect();
    let mut findings: BTreeSet<Finding> = BTreeSet::new();
    // Node problems are high where policy-allowed pod traffic meets them
    // (decided below, once the flows are known), else warnings.
    let mut node_findings: Vec<(String, String)> = Vec::new();
    for (node, why) in &problems {
        node_findings.push((
            node.clone(),
            format!("{why}: pod traffic to and from it is dropped (fail closed)"),
        ));
    }
    for (node, a) in &status {
        if *a == Agreement::AgentDown && !problems.contains_key(node) {
            node_findings.push((
                node.clone(),
                "its agent is not alive (heartbeat Lease expired): its peers, keys and routes are not maintained".into(),
            ));
        } else if *a != Agreement::Agrees && !problems.contains_key(node) {
            let what = if *a == Agreement::Missing {
                "it publishes no applied mesh (podguard.dev/mesh-digest: no agent, or it has not reconciled yet)"
            } else {
                "its applied mesh (podguard.dev/mesh-digest) differs from the cluster's"
            };
            findings.insert(Finding {
                severity: Severity::Warning,
                subject: format!("node {node}"),
                message: format!("{what}{NOT_CONVERGED}"),
            });
        }
    }
    let scheduled: Vec<&Pod> = pods.iter().filter(|p| p.node.is_some()).collect();
    // Host-network pods in plaintext flows, per node: (pods, pairs).
    let mut host_network: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    // Nodes where allowed flows are dropped or unmaintained.
    let mut hit: BTreeSet<String> = BTreeSet::new();
    let mut verdicts = Vec::new();
    let mut cells: BTreeMap<(String, String), (Cell, Ports)> = BTreeMap::new();
    for src in &scheduled {
        for dst in &scheduled {
            if std::ptr::eq(*src, *dst) {
                continue;
            }
            let ports = cluster.allowed_ports(src, dst);
            let allowed = !ports.is_empty();
            let transport = allowed.then(|| transport(src, dst, &problems, &status));
            let (cell, cell_ports) = cells
                .entry((src.namespace.clone(), dst.namespace.clone()))
                .or_insert_with(|| {
                    let cell = Cell {
                        from: src.namespace.clone(),
                        to: dst.namespace.clone(),
                        pairs: 0,
                        allowed: 0,
                        worst: None,
                        ports: Vec::new(),
                    };
                    (cell, Ports::Some(Vec::new()))
                });
            cell.pairs += 1;
            let labels = ports.labels();
            if allowed {
                *cell_ports = std::mem::replace(cell_ports, Ports::All).union(ports);
            }
            if let Some(t) = transport {
                cell.allowed += 1;
                cell.worst = cell.worst.max(Some(t));
                let subject = format!("{} -> {}", id(src), id(dst));
                match t {
                    Transport::NotCovered => {
                        for p in [src, dst].into_iter().filter(|p| p.host_network) {
                            let e = host_network
                                .entry(p.node.clone().unwrap_or_default())
                                .or_default();
                            e.0.insert(id(p));
                            e.1 += 1;
                        }
                    }
                    Transport::AgentDown => {
                        hit.extend([src, dst].iter().filter_map(|p| p.node.clone()));
                        findings.insert(Finding {
                            severity: Severity::High,
                            subject,
                            message: "allowed by policy, but a node's agent is not alive: not maintained, may stop at any time".into(),
                        });
                    }
                    Transport::Broken => {
                        hit.extend([src, dst].iter().filter_map(|p| p.node.clone()));
                        findings.insert(Finding {
                            severity: Severity::High,
                            subject,
                            message: "allowed by policy, but a node has no valid key: podguard drops it (fail closed)".into(),
                        });
                    }
                    _ => {}
                }
            }
            verdicts.push(PairVerdict {
                from: id(src),
                to: id(dst),
                allowed,
                ports: if allowed { labels } else { Vec::new() },
                transport,
            });
        }
    }
    for (node, message) in node_findings {
        findings.insert(Finding {
            severity: if hit.contains(&node) {
                Severity::High
            } else {
                Severity::Warning
            },
            subject: format!("node {node}"),
            message,
        });
    }
    for (node, (hn_pods, pairs)) in &host_network {
        let list: Vec<&str> = hn_pods.iter().map(String::as_str).collect();
        findings.insert(Finding {
            severity: Severity::Warning,
            subject: format!("node {node} (host network)"),
            message: format!(
                "{} host-network pod(s) ({}) in {pairs} policy-allowed pod pair(s) with other nodes: plaintext on the underlay, outside the pod network podguard encrypts",
                list.len(),
                list.join(", ")
            ),
        });
    }
    verdicts.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    let mut findings: Vec<Finding> = findings.into_iter().collect();
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.cmp(b)));
    let ok = !findings.iter().any(|f| f.severity == Severity::High);
    Report {
        namespaces: cells
            .into_values()
            .map(|(mut c, ports)| {
                if c.allowed > 0 {
                    c.ports = ports.labels();
                }
                c
            })
            .collect(),
        pods: verdicts,
        findings,
        ok,
    }
}

fn transport(
    src: &Pod,
    dst: &Pod,
    problems: &BTreeMap<String, String>,
    status: &BTreeMap<String, Agreement>,
) -> Transport {
    // Same node first: traffic between two pods of one node never reaches
    // the underlay, host network or not (it was reported as plaintext).
    if src.node.is_some() && src.node == dst.node {
        return Transport::Local;
    }
    if src.host_network || dst.host_network {
        return Transport::NotCovered;
    }
    if src.node == dst.node {
        return Transport::Local;
    }
    let nodes = [src.node.as_deref(), dst.node.as_deref()];
    if nodes
        .iter()
        .flatten()
        .any(|n| problems.contains_key(*n) || !status.contains_key(*n))
    {
        return Transport::Broken;
    }
    if nodes
        .iter()
        .flatten()
        .any(|n| status.get(*n) == Some(&Agreement::AgentDown))
    {
        return Transport::AgentDown;
    }
    if nodes
        .iter()
        .flatten()
        .any(|n| status.get(*n) != Some(&Agreement::Agrees))
    {
        return Transport::Stale;
    }
    Transport::Encrypted
}

#[cfg(test)]
mod tests;
