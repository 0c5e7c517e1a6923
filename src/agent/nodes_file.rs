//! The `--nodes-file` source: the node list as JSON or YAML, for running
//! the data plane without Kubernetes.
//!
//! Accepted shapes: a list of nodes, or `{ nodes: [...] }`. Each node is a
//! `mesh::NodeInfo` (`name`, `podCIDRs`, `endpoint`, `publicKey`,
//! `internalIPs`). Unknown fields are errors, so a typo is not ignored.
//! [`run_nodes_file`] is the agent's loop over this source.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh::NodeInfo;
use serde::Deserialize;

use super::{Agent, metrics};

/// Why the nodes file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NodesFileError {
    /// Reading failed.
    #[error("reading nodes file {path}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The content is neither a node list nor `{nodes: [...]}`.
    #[error("parsing nodes file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (line and column).
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shape {
    List(Vec<NodeInfo>),
    Wrapped { nodes: Vec<NodeInfo> },
}

/// Parse file content (YAML, which includes JSON).
pub fn parse(path: &str, text: &str) -> Result<Vec<NodeInfo>, NodesFileError> {
    // Try the strict shapes one by one for a precise error message.
    match yaml_serde::from_str::<Shape>(text) {
        Ok(Shape::List(n)) | Ok(Shape::Wrapped { nodes: n }) => Ok(n),
        Err(_) => {
            let message = match yaml_serde::from_str::<Vec<NodeInfo>>(text) {
                Err(e) => e.to_string(),
                Ok(_) => "unrecognized shape".into(),
            };
            Err(NodesFileError::Parse {
                path: path.into(),
                message,
            })
        }
    }
}

/// Read and parse the file.
pub fn load(path: &Path) -> Result<Vec<NodeInfo>, NodesFileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| NodesFileError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&p, &text)
}

/// Run from a nodes file: reconcile when the file changes and every
/// `resync` (which repairs drift, e.g. a route removed by hand). A file
/// that cannot be read or parsed keeps the last state: nothing is removed
/// because of a bad read.
pub async fn run_nodes_file(
    mut agent: Agent,
    path: PathBuf,
    resync: Duration,
    metrics: std::sync::Arc<metrics::Metrics>,
) -> anyhow::Result<()> {
    let mut last_mtime: Option<SystemTime> = None;
    let mut last_sync = tokio::time::Instant::now() - resync;
    let mut nodes: Option<Vec<NodeInfo>> = None;
    let mut backoff = Duration::from_millis(200);
    let mut repair_now = false;
    loop {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let changed = mtime != last_mtime;
        if changed {
            match load(&path) {
                Ok(n) => {
                    tracing::info!(path = %path.display(), nodes = n.len(), "nodes file loaded");
                    nodes = Some(n);
                    last_mtime = mtime;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "nodes file unusable; keeping the current data plane");
                    last_mtime = mtime;
                }
            }
        }
        // A rotation's companion moves routes on handshakes: poll.
        if let Some(n) = &nodes
            && (changed || repair_now || agent.companions_active || last_sync.elapsed() >= resync)
        {
            match agent.reconcile(n).await {
                Ok(report) => {
                    metrics.record(Ok(&report));
                    last_sync = tokio::time::Instant::now();
                    backoff = Duration::from_millis(200);
                    if !report.actions.is_empty() {
                        tracing::info!(
                            actions = report.actions.len(),
                            peers = report.peers,
                            rejected = report.rejections.len(),
                            "reconciled"
                        );
                    }
                }
                Err(e) => {
                    metrics.record(Err(&e));
                    tracing::error!(error = %anyhow::Error::from(e).chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "), "reconcile failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    last_mtime = None;
                    continue;
                }
            }
        }
        if nodes.is_some() && agent.last_plan.is_some() {
            agent.peer_health(&metrics);
        }
        let repair = agent.repair_trigger();
        repair_now = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => false,
            _ = repair.notified() => {
                // Coalesce the burst a single `ip route flush` makes.
                tokio::time::sleep(Duration::from_millis(10)).await;
                true
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_and_wrapped() {
        let json = r#"[{"name":"a","podCIDRs":["10.244.1.0/24"],"endpoint":"192.0.2.1:51820"}]"#;
        assert_eq!(parse("f", json).unwrap()[0].name, "a");
        let yaml = "nodes:\n  - name: b\n    podCIDRs: [10.244.2.0/24]\n    publicKey: null\n";
        let n = parse("f", yaml).unwrap();
        assert_eq!(n[0].pod_cidrs, vec!["10.244.2.0/24"]);
    }

    #[test]
    fn underlay_mtu_as_a_number_or_a_string_in_either_casing() {
        let yaml =
            "- name: a\n  underlayMTU: 1460\n- name: b\n  underlayMtu: \"9001\"\n- name: c\n";
        let n = parse("nodes.yaml", yaml).unwrap();
        assert_eq!(n[0].underlay_mtu.as_deref(), Some("1460"));
        assert_eq!(n[1].underlay_mtu.as_deref(), Some("9001"));
        assert_eq!(n[2].underlay_mtu, None);
        let json = r#"[{"name":"a","underlayMTU":1460.5}]"#;
        // Kept as text; the planner refuses it (counts as 1500).
        assert_eq!(
            parse("f", json).unwrap()[0].underlay_mtu.as_deref(),
            Some("1460.5")
        );
    }

    #[test]
    fn typo_is_an_error_naming_the_file_and_field() {
        let e = parse("nodes.yaml", "- name: a\n  podCIDR: [10.0.0.0/24]\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("nodes.yaml") && s.contains("podCIDR"), "{s}");
    }
}
