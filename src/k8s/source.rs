//! The agent's controller loop on the Kubernetes API.
//!
//! watcher → reflector store; every change (and every resync period) the
//! loop takes the whole snapshot, publishes this node's annotations if they
//! differ (JSON merge patch, field manager `podguard`), and reconciles.
//! When the API is unreachable the watcher backs off and the store keeps
//! its last state, so the data plane keeps its last state too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use keys::rotation::{Decision, Phase};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use mesh::{PlanError, Rejection};

use super::convert::{internal_ips, node_info};
use crate::agent::metrics::Metrics;
use crate::agent::rotation::{Rotator, unix_now};
use crate::agent::{Agent, ReconcileError};

/// Field manager for everything the agent writes.
pub const FIELD_MANAGER: &str = "podguard";

/// Settings of the Kubernetes loop.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// This node's name.
    pub node_name: String,
    /// WireGuard port (for the published endpoint).
    pub listen_port: u16,
    /// Full resync period.
    pub resync: Duration,
    /// Namespace of the heartbeat Lease.
    pub namespace: String,
    /// Duration of the heartbeat Lease (renewed every quarter of it while
    /// the data plane reconciles).
    pub lease_duration: Duration,
}

/// Run until the process ends.
pub async fn run(
    mut agent: Agent,
    mut rotator: Rotator,
    client: Client,
    cfg: SourceConfig,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    // Retry at most every 10 s (client-go's default waits up to 30 s and
    // keeps growing across a long outage; a node should catch up sooner).
    let backoff = watcher::ExponentialBackoff::from(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times(),
    );
    let stream = watcher(api.clone(), watcher::Config::default())
        .backoff(backoff)
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "watching Nodes failed; retrying with backoff, keeping the current data plane")
                }
            }
        }
    });
    tracing::info!("waiting for the first list of Nodes");
    reader.wait_until_ready().await?;
    let lease_client = client.clone();
    let lease_ns = cfg.namespace.clone();
    let lease_secs = i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let mut last_renew: Option<tokio::time::Instant> = None;
    let mut lease_failing = false;
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "podguard-agent".into(),
            instance: Some(cfg.node_name.clone()),
        },
    );
    let mut announced: BTreeMap<String, Vec<Rejection>> = BTreeMap::new();
    let mut waiting_logged = false;
    let mut decision: Option<Decision> = None;
    let mut reconciled = false;
    loop {
        let snapshot: Vec<Arc<Node>> = reader.state();
        let own = snapshot
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()));
        let ann = |k: &str| {
            own.and_then(|n| n.metadata.annotations.as_ref())
                .and_then(|a| a.get(k))
                .filter(|v| v.len() <= mesh::publish::MAX_VALUE_LEN)
                .cloned()
        };
        // Rotation first: the device must hold every key before it is
        // published, and the plan must know our current key.
        let mut stepped = false;
        rotator.set_kernel_acks(agent.kernel_acks());
        match rotator.tick(
            unix_now(),
            ann(mesh::publish::ANN_ROTATE_REQUESTED),
            ann(mesh::publish::ANN_ROTATE_DONE),
            reconciled,
        ) {
            Ok((d, s)) => {
                stepped = s;
                if let Some(k) = d.publish.public_key {
                    agent.set_local_key(k);
                }
                decision = Some(d);
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::chain_line(&e), "key rotation step failed; retrying");
            }
        }
        agent.set_kernel_before(rotator.kernel_before());
        let infos: Vec<mesh::NodeInfo> = snapshot.iter().map(|n| node_info(n)).collect();
        let mut digest = None;
        let mut peer_health = None;
        let result = agent.reconcile(&infos).await;
        // Found before planning: published with the key from the start.
        let underlay_mtu = Some(agent.underlay_mtu());
        match result {
            Ok(report) => {
                reconciled = true;
                digest = Some(report.digest.clone());
                peer_health = Some(agent.peer_health(&metrics));
                waiting_logged = false;
                metrics.record(Ok(&report));
                if last_renew.is_none_or(|t| t.elapsed() >= cfg.lease_duration / 4) {
                    // Bounded: an unreachable API must not hold up repairs.
                    let renewal = tokio::time::timeout(
                        cfg.lease_duration / 4,
                        super::lease::renew(&lease_client, &lease_ns, &cfg.node_name, lease_secs),
                    )
                    .await;
                    match renewal.unwrap_or(Err(kube::Error::Service(Box::new(
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "Lease renewal timed out",
                        ),
                    )))) {
                        Ok(()) => {
                            last_renew = Some(tokio::time::Instant::now());
                            if std::mem::take(&mut lease_failing) {
                                tracing::info!(namespace = %lease_ns, "heartbeat Lease renewed again");
                            }
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut lease_failing, true) {
                                tracing::warn!(error = %e, namespace = %lease_ns, "renewing the heartbeat Lease failed: `podguard status` will report this node's agent as down");
                            }
                        }
                    }
                }
                for (name, reasons) in &report.rejections {
                    if announced.get(name) == Some(reasons) {
                        continue;
                    }
                    if let Some(node) = snapshot
                        .iter()
                        .find(|n| n.metadata.name.as_deref() == Some(name))
                    {
                        let note = reasons
                            .iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join("; ");
                        let ev = Event {
                            type_: EventType::Warning,
                            reason: "PeerRejected".into(),
                            note: Some(format!(
                                "podguard on {} has no peer for this node: {note}",
                                cfg.node_name
                            )),
                            action: "PlanMesh".into(),
                            secondary: None,
                        };
                        if let Err(e) = recorder.publish(&ev, &node.object_ref(&())).await {
                            tracing::warn!(node = %name, error = %e, "could not record an Event");
                        }
                    }
                }
                announced = report.rejections;
            }
            Err(ReconcileError::Plan(PlanError::LocalNotReady {
                reason: Rejection::NoPodCidrs,
                ..
            }))
            | Err(ReconcileError::Plan(PlanError::LocalNodeMissing(_))) => {
                if !waiting_logged {
                    tracing::info!(node = %cfg.node_name, "waiting for this Node to exist and have spec.podCIDRs");
                    waiting_logged = true;
                }
            }
            Err(e) => {
                metrics.record(Err(&e));
                tracing::error!(error = %anyhow::Error::from(e).chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "), "reconcile failed; the data plane keeps its last state");
            }
        }
        if let Some(d) = &decision {
            publish_own(&api, &snapshot, &cfg, d, digest, peer_health, underlay_mtu).await;
        }
        // While a rotation runs, come back soon; otherwise at the next
        // change, resync, or rotation deadline.
        let mut wait = cfg.resync.min(cfg.lease_duration / 4);
        if agent.companions_active() {
            // A rotation's companion: its routes move on handshakes.
            wait = wait.min(Duration::from_millis(500));
        }
        if let Some(d) = &decision {
            if stepped || d.phase != Phase::Idle || d.step.is_some() {
                wait = wait.min(Duration::from_millis(500));
            }
            if let Some(at) = d.wake_at {
                wait = wait.min(Duration::from_secs(at.saturating_sub(unix_now()).max(1)));
            }
        }
        let repair = agent.repair_trigger();
        tokio::select! {
            _ = changed.notified() => {
                // Coalesce a burst of changes.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = repair.notified() => {
                // Something of ours was removed: repair within milliseconds.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Patch this node's annotations if they are missing or were changed.
async fn publish_own(
    api: &Api<Node>,
    snapshot: &[Arc<Node>],
    cfg: &SourceConfig,
    decision: &Decision,
    mesh_digest: Option<String>,
    peer_health: Option<mesh::health::PeerProblems>,
    underlay_mtu: Option<u32>,
) {
    let Some(me) = snapshot
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()))
    else {
        return;
    };
    let current: BTreeMap<String, String> = me.metadata.annotations.clone().unwrap_or_default();
    let force = current
        .get(mesh::publish::ANN_FORCE_ENDPOINT)
        .map(String::as_str);
    let endpoint = mesh::publish::endpoint(&internal_ips(me), force, cfg.listen_port);
    if endpoint.is_none() {
        tracing::warn!(node = %cfg.node_name, "this Node has no InternalIP and no podguard.dev/force-endpoint: peers cannot reach it");
    }
    let Some(public_key) = decision.publish.public_key else {
        return;
    };
    let own = mesh::publish::Own {
        public_key,
        endpoint,
        next_public_key: decision.publish.next_public_key,
        rotation_state: Some(decision.publish.state),
        rotate_done: decision.publish.done.clone(),
        key_created: decision.publish.key_created,
        mesh_digest,
        peer_health,
        underlay_mtu,
    };
    let desired = mesh::publish::desired(&own);
    let Some(patch) = mesh::publish::patch(&current, &desired) else {
        return;
    };
    let body = serde_json::json!({"metadata": {"annotations": patch}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api
        .patch(&cfg.node_name, &params, &Patch::Merge(&body))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %cfg.node_name, annotations = %patch.keys().map(String::as_str).collect::<Vec<_>>().join(","), "published")
        }
        Err(e) => {
            tracing::warn!(node = %cfg.node_name, error = %e, "publishing annotations failed; will retry")
        }
    }
}
