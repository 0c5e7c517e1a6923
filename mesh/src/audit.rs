//! `podguard audit`: which policy-allowed traffic podguard protects.
//!
//! For every pair of pods, NetworkPolicy decides whether the flow is
//! allowed ([`crate::policy`]); the nodes' published state decides how it
//! travels ([`Transport`]). Findings carry a severity: high when allowed
//! traffic is dropped or unmaintained (a node without a valid key, an agent
//! down), warning for host-network pods (plaintext by design: outside the
//! pod network), reported once per node; the CLI's `--fail-on` picks the
//! severity that fails. Pure: the CLI reads the API.

use std::collections::{BTreeMap, BTreeSet};

use keys::PublicKey;
use serde::Serialize;

use crate::policy::{Cluster, Pod};
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
}

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
            findings.insert(Finding {
                severity: Severity::Warning,
                subject: format!("node {node}"),
                message: "its applied mesh (podguard.dev/mesh-digest) differs from the cluster's: not converged".into(),
            });
        }
    }
    let scheduled: Vec<&Pod> = pods.iter().filter(|p| p.node.is_some()).collect();
    // Host-network pods in plaintext flows, per node: (pods, pairs).
    let mut host_network: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    // Nodes where allowed flows are dropped or unmaintained.
    let mut hit: BTreeSet<String> = BTreeSet::new();
    let mut verdicts = Vec::new();
    let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
    for src in &scheduled {
        for dst in &scheduled {
            if std::ptr::eq(*src, *dst) {
                continue;
            }
            let allowed = cluster.allowed_any(src, dst);
            let transport = allowed.then(|| transport(src, dst, &problems, &status));
            let cell = cells
                .entry((src.namespace.clone(), dst.namespace.clone()))
                .or_insert_with(|| Cell {
                    from: src.namespace.clone(),
                    to: dst.namespace.clone(),
                    pairs: 0,
                    allowed: 0,
                    worst: None,
                });
            cell.pairs += 1;
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
        namespaces: cells.into_values().collect(),
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

/// The namespace matrix as text: rows are sources, columns destinations.
pub fn render(r: &Report, with_pods: bool) -> String {
    let mut names: Vec<&str> = r
        .namespaces
        .iter()
        .flat_map(|c| [c.from.as_str(), c.to.as_str()])
        .collect();
    names.sort();
    names.dedup();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(14) + 2;
    let mut out = String::from(
        "traffic allowed by NetworkPolicy, and how it travels (rows: from, columns: to)\n\n",
    );
    out.push_str(&format!("{:<w$}", "FROM \\ TO"));
    for n in &names {
        out.push_str(&format!("{n:<w$}"));
    }
    out.push('\n');
    for from in &names {
        out.push_str(&format!("{from:<w$}"));
        for to in &names {
            let cell = r.namespaces.iter().find(|c| c.from == *from && c.to == *to);
            let text = match cell {
                None => "-".to_string(),
                Some(c) if c.allowed == 0 => "denied".to_string(),
                Some(c) => format!(
                    "{} {}/{}",
                    c.worst.map(|t| t.label()).unwrap_or("?"),
                    c.allowed,
                    c.pairs
                ),
            };
            out.push_str(&format!("{text:<w$}"));
        }
        out.push('\n');
    }
    out.push_str("\nlocal = same node, never on the wire; encrypted = WireGuard between nodes; stale = a node has not converged; PLAINTEXT = host network, not covered; BROKEN = dropped (fail closed)\n");
    if with_pods {
        out.push('\n');
        for v in &r.pods {
            out.push_str(&format!(
                "{:<40} -> {:<40} {}\n",
                v.from,
                v.to,
                match v.transport {
                    Some(t) => t.label(),
                    None => "denied",
                }
            ));
        }
    }
    out.push('\n');
    if r.findings.is_empty() {
        out.push_str("no findings\n");
    }
    for f in &r.findings {
        out.push_str(&format!(
            "{:<8} {}: {}\n",
            format!("{:?}", f.severity).to_uppercase(),
            f.subject,
            f.message
        ));
    }
    let plaintext = r
        .findings
        .iter()
        .any(|f| f.severity == Severity::Warning && f.subject.ends_with("(host network)"));
    out.push_str(match (r.ok, plaintext) {
        (true, false) => "\nOK: every policy-allowed cross-node pod flow is encrypted\n",
        (true, true) => "\nOK: every policy-allowed flow between pods on the pod network is encrypted (host-network pods are not: see the warnings)\n",
        (false, _) => "\nFAIL: some policy-allowed traffic is dropped or unmaintained\n",
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeInfo;
    use keys::PrivateKey;

    fn node(name: &str, i: u8, key: Option<PublicKey>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidrs: vec![format!("10.244.{i}.0/24")],
            public_key: key.map(|k| k.to_base64()),
            ..Default::default()
        }
    }

    fn views(infos: Vec<NodeInfo>) -> Vec<NodeView> {
        let d = crate::digest::expected(&infos);
        infos
            .into_iter()
            .map(|info| {
                let mut annotations = BTreeMap::new();
                if let Some(k) = &info.public_key {
                    annotations.insert(ANN_PUBLIC_KEY.to_string(), k.clone());
                    annotations.insert(crate::publish::ANN_MESH_DIGEST.to_string(), d.clone());
                }
                NodeView {
                    info,
                    annotations,
                    heartbeat: crate::status::Heartbeat::Unknown,
                }
            })
            .collect()
    }

    fn pod(ns: &str, name: &str, node: &str, host: bool) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            ips: vec!["10.244.1.5".parse().unwrap()],
            node: Some(node.into()),
            host_network: host,
            ports: vec![],
        }
    }

    #[test]
    fn classifies_every_kind_of_flow() {
        let k = || Some(PrivateKey::generate().public_key());
        let nodes = views(vec![
            node("n1", 1, k()),
            node("n2", 2, k()),
            node("n3", 3, None),
        ]);
        let pods = vec![
            pod("a", "p1", "n1", false),
            pod("a", "p1b", "n1", false),
            pod("b", "p2", "n2", false),
            pod("b", "p3", "n3", false),
            pod("kube-system", "exporter", "n2", true),
        ];
        let r = audit(&nodes, &pods, &Cluster::default(), 0);
        let t = |from: &str, to: &str| {
            r.pods
                .iter()
                .find(|v| v.from == from && v.to == to)
                .unwrap()
                .transport
        };
        assert_eq!(t("a/p1", "a/p1b"), Some(Transport::Local));
        assert_eq!(t("a/p1", "b/p2"), Some(Transport::Encrypted));
        assert_eq!(t("a/p1", "b/p3"), Some(Transport::Broken));
        assert_eq!(
            t("a/p1", "kube-system/exporter"),
            Some(Transport::NotCovered)
        );
        // A host-network pod and a pod of the same node: never on the wire.
        assert_eq!(t("b/p2", "kube-system/exporter"), Some(Transport::Local));
        assert_eq!(t("kube-system/exporter", "b/p2"), Some(Transport::Local));
        assert!(!r.ok);
        assert_eq!(r.findings[0].severity, Severity::High);
        assert!(r.findings.iter().any(|f| f.subject == "node n3"));
        // The host-network pod: one warning for its node, not one per pair.
        let hn: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.subject.contains("host network"))
            .collect();
        assert_eq!(hn.len(), 1, "{:#?}", r.findings);
        assert_eq!(hn[0].subject, "node n2 (host network)");
        assert_eq!(hn[0].severity, Severity::Warning);
        assert!(
            hn[0].message.contains("kube-system/exporter"),
            "{}",
            hn[0].message
        );
        assert!(r.fails(Some(Severity::High)) && r.fails(Some(Severity::Warning)));
        assert!(!r.fails(None));
        let text = render(&r, true);
        assert!(text.contains("FAIL") && text.contains("BROKEN") && text.contains("PLAINTEXT"));
    }

    #[test]
    fn host_network_alone_warns_once_per_node_and_passes_the_default_gate() {
        let nodes = views(vec![
            node("n1", 1, Some(PrivateKey::generate().public_key())),
            node("n2", 2, Some(PrivateKey::generate().public_key())),
        ]);
        let pods = vec![
            pod("a", "p1", "n1", false),
            pod("a", "p2", "n2", false),
            pod("podguard", "agent-1", "n1", true),
            pod("podguard", "agent-2", "n2", true),
            pod("monitoring", "exporter-2", "n2", true),
        ];
        let r = audit(&nodes, &pods, &Cluster::default(), 0);
        assert!(r.ok, "{r:#?}");
        let subjects: Vec<&str> = r.findings.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(
            subjects,
            ["node n1 (host network)", "node n2 (host network)"]
        );
        assert!(
            r.findings[1]
                .message
                .starts_with("2 host-network pod(s) (monitoring/exporter-2, podguard/agent-2)")
        );
        assert!(!r.fails(Some(Severity::High)));
        assert!(r.fails(Some(Severity::Warning)) && r.fails(Some(Severity::Info)));
        assert!(
            render(&r, false)
                .contains("OK: every policy-allowed flow between pods on the pod network")
        );
    }

    #[test]
    fn a_node_whose_agent_is_down_is_reported_and_fails_the_audit() {
        let k = || Some(PrivateKey::generate().public_key());
        let mut nodes = views(vec![node("n1", 1, k()), node("n2", 2, k())]);
        let pods = vec![pod("a", "p1", "n1", false), pod("a", "p2", "n2", false)];
        let alive = crate::status::Heartbeat::Renewed {
            age_secs: 3,
            duration_secs: 40,
        };
        nodes[0].heartbeat = alive;
        nodes[1].heartbeat = alive;
        let r = audit(&nodes, &pods, &Cluster::default(), 0);
        assert!(r.ok, "{r:#?}");
        nodes[1].heartbeat = crate::status::Heartbeat::Renewed {
            age_secs: 41,
            duration_secs: 40,
        };
        let r = audit(&nodes, &pods, &Cluster::default(), 0);
        assert!(!r.ok);
        assert!(
            r.pods
                .iter()
                .all(|v| v.transport == Some(Transport::AgentDown))
        );
        assert!(
            r.findings
                .iter()
                .any(|f| f.subject == "node n2" && f.message.contains("agent is not alive")),
            "{:?}",
            r.findings
        );
        let rows = crate::status::rows(&nodes, 0);
        assert_eq!(rows[1].digest, Agreement::AgentDown);
        assert_eq!(rows[1].heartbeat_age_secs, Some(41));
        assert_eq!(rows[0].digest, Agreement::Agrees);
        nodes[1].heartbeat = crate::status::Heartbeat::Missing;
        assert_eq!(
            crate::status::rows(&nodes, 0)[1].digest,
            Agreement::AgentDown
        );
    }

    #[test]
    fn denied_flows_are_not_findings_and_a_clean_mesh_is_ok() {
        let k = || Some(PrivateKey::generate().public_key());
        let nodes = views(vec![
            node("n1", 1, k()),
            node("n2", 2, k()),
            node("n3", 3, None),
        ]);
        let pods = vec![pod("a", "p1", "n1", false), pod("b", "p3", "n3", false)];
        // Deny everything in both namespaces: the broken node carries no
        // allowed flow, so the audit passes (with the node finding).
        let deny = |ns: &str| crate::policy::Policy {
            namespace: ns.into(),
            name: "deny".into(),
            spec: serde_json::from_value(
                serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )
            .unwrap(),
        };
        let c = Cluster {
            namespaces: BTreeMap::new(),
            policies: vec![deny("a"), deny("b")],
        };
        let r = audit(&nodes, &pods, &c, 0);
        assert!(r.ok, "{r:#?}");
        assert!(r.pods.iter().all(|v| !v.allowed));
        assert!(render(&r, false).contains("denied"));
        // Duplicate keys are a node problem on both.
        let key = PrivateKey::generate().public_key();
        let dup = views(vec![node("n1", 1, Some(key)), node("n2", 2, Some(key))]);
        let r = audit(
            &dup,
            &[pod("a", "x", "n1", false), pod("a", "y", "n2", false)],
            &Cluster::default(),
            0,
        );
        assert!(!r.ok);
        assert!(
            r.findings
                .iter()
                .filter(|f| f.message.contains("shares its public key"))
                .count()
                == 2
        );
    }
}
