//! The `--nodes-file` source: the node list as JSON or YAML, for running
//! the data plane without Kubernetes. The format and its parser are
//! `mesh::nodes_file` (pure, fuzzed); here the file is read, and
//! [`run_nodes_file`] is the agent's loop over it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh::NodeInfo;
use mesh::nodes_file::{ParseError, parse};

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
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Read and parse the file.
pub fn load(path: &Path) -> Result<Vec<NodeInfo>, NodesFileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| NodesFileError::Read {
        path: p.clone(),
        source,
    })?;
    Ok(parse(&p, &text)?)
}

/// Run from a nodes file: reconcile when the file changes and every
/// `resync` (which repairs drift, e.g. a route removed by hand). A change
/// is seen by its modification time at once, and by its content at every
/// resync: a rewrite that keeps the time (`cp -p`, `touch -r`, within one
/// tick of a coarse clock) is not missed. A file that cannot be read or
/// parsed keeps the last state: nothing is removed because of a bad read.
pub async fn run_nodes_file(
    mut agent: Agent,
    path: PathBuf,
    resync: Duration,
    metrics: std::sync::Arc<metrics::Metrics>,
) -> anyhow::Result<()> {
    // None until the first look: a file missing from the start is then a
    // change (and an error said), not "no file" seen again.
    let mut last_mtime: Option<Option<SystemTime>> = None;
    let mut last_sync = tokio::time::Instant::now() - resync;
    let mut nodes: Option<Vec<NodeInfo>> = None;
    let mut backoff = Duration::from_millis(200);
    let mut repair_now = false;
    loop {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let changed = last_mtime != Some(mtime) || last_sync.elapsed() >= resync;
        if changed {
            match load(&path) {
                Ok(n) => {
                    if nodes.as_ref() != Some(&n) {
                        tracing::info!(path = %path.display(), nodes = n.len(), "nodes file loaded");
                    }
                    nodes = Some(n);
                    last_mtime = Some(mtime);
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "nodes file unusable; keeping the current data plane");
                    last_mtime = Some(mtime);
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
