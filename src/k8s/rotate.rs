//! `podguard rotate`: request a node's key rotation through its
//! annotations and follow it until every node agrees. Whether a node may
//! rotate, and how far it has come, are `mesh::status` decisions; this
//! module patches and polls.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use keys::PublicKey;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use mesh::publish::{ANN_PUBLIC_KEY, ANN_ROTATE_REQUESTED};
use mesh::status::{NodeView, Progress, Refused, may_rotate, progress};
use serde::Serialize;

use super::ops::{node_views, node_views_and_warning, table};
use super::source::FIELD_MANAGER;

/// What `podguard rotate` reports per node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateResult {
    /// The node.
    pub node: String,
    /// Fingerprint of the key before.
    pub old_key: String,
    /// Fingerprint of the key after (when waited for).
    pub new_key: Option<String>,
    /// `requested`, `done`, `withdrawn` (`--cancel`), `skipped: agent down`
    /// (`--all`), `not started` (an earlier one timed out), or
    /// `timeout: <what is missing>`.
    pub result: String,
    /// Seconds from request to done (when waited for).
    pub seconds: Option<f64>,
    /// Nodes not waited for because their agents are down: each takes
    /// the new key when it is back (when waited for).
    pub agents_down: Vec<String>,
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Request a rotation of each node in `names`, one at a time. With `wait`
/// (always for more than one node), block until each has finished. Every
/// node is checked first, its agent's heartbeat included (Leases in
/// `agents`, the agents' namespace): a node whose agent is down is refused
/// before any node is touched, or with `skip_down` (`--all`) reported as
/// skipped while the others rotate. A node whose agent is down is not
/// waited for either: it takes the new key when it is back.
pub async fn rotate(
    client: &Client,
    agents: &str,
    names: &[String],
    skip_down: bool,
    wait: bool,
    timeout: Duration,
    progress_out: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<RotateResult>> {
    let api: Api<Node> = Api::all(client.clone());
    let views = node_views(client, Some(agents)).await?;
    // Refuse up front, before any node is touched.
    let mut skipped = std::collections::BTreeMap::new();
    for n in names {
        match may_rotate(&views, n) {
            Err(e @ Refused::AgentDown { .. }) if skip_down => {
                progress_out(&format!("{n}: skipped: {e}"));
                skipped.insert(
                    n.clone(),
                    untouched_result(&views, n, "skipped: agent down"),
                );
            }
            r => r?,
        }
    }
    let wait = wait || names.len() > 1;
    let mut results = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(r) = skipped.remove(name) {
            results.push(r);
            continue;
        }
        // Heartbeats again: an agent may have died since the start.
        let (views, _) = node_views_and_warning(client, Some(agents)).await?;
        match may_rotate(&views, name) {
            Err(e @ Refused::AgentDown { .. }) if skip_down => {
                progress_out(&format!("{name}: skipped: {e}"));
                results.push(untouched_result(&views, name, "skipped: agent down"));
                continue;
            }
            r => r?,
        }
        let old: PublicKey = views
            .iter()
            .find(|v| v.info.name == *name)
            .and_then(|v| v.annotations.get(ANN_PUBLIC_KEY))
            .and_then(|s| PublicKey::from_base64(s).ok())
            .with_context(|| format!("node {name} has no valid key"))?;
        let n = nonce();
        let body = serde_json::json!({"metadata": {"annotations": {ANN_ROTATE_REQUESTED: n}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(name, &params, &Patch::Merge(&body))
            .await
            .with_context(|| format!("requesting a rotation of {name}"))?;
        progress_out(&format!("{name}: rotation requested"));
        let start = Instant::now();
        let mut res = RotateResult {
            node: name.clone(),
            old_key: old.fingerprint(),
            new_key: None,
            result: "requested".into(),
            seconds: None,
            agents_down: Vec::new(),
        };
        if wait {
            let mut last = String::new();
            loop {
                // With heartbeats: a node whose agent is down is not
                // waited for. (Why none are judged was said up front.)
                let (views, _) = node_views_and_warning(client, Some(agents)).await?;
                match progress(&views, name, &n, &old) {
                    Progress::Done {
                        new_key,
                        agents_down,
                    } => {
                        res.new_key = Some(new_key);
                        res.result = "done".into();
                        res.seconds = Some(start.elapsed().as_secs_f64());
                        let mut line =
                            format!("{name}: done in {:.1}s", start.elapsed().as_secs_f64());
                        if !agents_down.is_empty() {
                            line.push_str(&format!(
                                "; not waited for {} (agent down): {} the new key when back",
                                agents_down.join(", "),
                                if agents_down.len() == 1 {
                                    "takes"
                                } else {
                                    "each takes"
                                }
                            ));
                        }
                        progress_out(&line);
                        res.agents_down = agents_down;
                        break;
                    }
                    Progress::Pending { waiting_for } => {
                        if start.elapsed() > timeout {
                            res.result = format!("timeout: waiting for {waiting_for}");
                            if waiting_for.contains("to take the request on") {
                                progress_out(&format!(
                                    "{name}: the request is still pending; withdraw it with podguard rotate --cancel --node {name}"
                                ));
                            }
                            results.push(res);
                            // The rest stay in the result, untouched.
                            for rest in &names[i + 1..] {
                                results.push(untouched_result(
                                    &views,
                                    rest,
                                    "not started (an earlier rotation timed out)",
                                ));
                            }
                            return Ok(results);
                        }
                        if waiting_for != last {
                            progress_out(&format!("{name}: waiting for {waiting_for}"));
                            last = waiting_for;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        results.push(res);
    }
    Ok(results)
}

/// Withdraw the rotation request on `name`, if no agent has taken it on
/// (a request for a node whose agent never comes blocks every later
/// rotation of it). Judged and patched on one read of the Node: the patch
/// carries that read's resourceVersion, so an agent that takes the request
/// on meanwhile wins (409), and the Node is read again. An agent that has
/// begun (its next key made) but not yet said so goes on with the rotation.
pub async fn cancel(client: &Client, name: &str) -> anyhow::Result<RotateResult> {
    let api: Api<Node> = Api::all(client.clone());
    for _ in 0..5 {
        let node = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading Node {name}"))?
            .ok_or_else(|| mesh::status::NotCancelled::UnknownNode(name.to_string()))?;
        let view = NodeView {
            info: super::convert::node_info(&node),
            annotations: node.metadata.annotations.clone().unwrap_or_default(),
            heartbeat: mesh::status::Heartbeat::Unknown,
        };
        let views = std::slice::from_ref(&view);
        mesh::status::may_cancel(views, name)?;
        // Without a resourceVersion the patch would hold no condition.
        let rv = node.metadata.resource_version.as_deref().with_context(|| {
            format!("Node {name} came without a resourceVersion; not withdrawn")
        })?;
        let body = withdrawal_patch(rv);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(name, &params, &Patch::Merge(&body)).await {
            Ok(_) => return Ok(untouched_result(views, name, "withdrawn")),
            Err(kube::Error::Api(st)) if st.code == 409 => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("withdrawing the rotation request on {name}")));
            }
        }
    }
    anyhow::bail!("node {name} kept changing while the request was withdrawn; try again")
}

/// The merge patch [`cancel`] sends: the request removed, on condition
/// that the Node is still at `resource_version`, the one judged. The API
/// server refuses it (409 Conflict) once anything changed the Node since,
/// such as its agent taking the request on.
pub fn withdrawal_patch(resource_version: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {
        "resourceVersion": resource_version,
        "annotations": {ANN_ROTATE_REQUESTED: null},
    }})
}

/// The result for a node whose key this run left alone, and why (`result`).
fn untouched_result(views: &[NodeView], name: &str, result: &str) -> RotateResult {
    let old_key = views
        .iter()
        .find(|v| v.info.name == name)
        .and_then(|v| v.annotations.get(ANN_PUBLIC_KEY))
        .and_then(|s| PublicKey::from_base64(s).ok())
        .map(|k| k.fingerprint())
        .unwrap_or_default();
    RotateResult {
        node: name.to_string(),
        old_key,
        new_key: None,
        result: result.into(),
        seconds: None,
        agents_down: Vec::new(),
    }
}

/// The table `podguard rotate` prints.
pub fn render_rotate(rs: &[RotateResult]) -> String {
    table(
        &["NODE", "OLD KEY", "NEW KEY", "SECONDS", "RESULT"],
        rs.iter()
            .map(|r| {
                vec![
                    r.node.clone(),
                    r.old_key.clone(),
                    r.new_key.clone().unwrap_or_else(|| "-".into()),
                    r.seconds
                        .map(|s| format!("{s:.1}"))
                        .unwrap_or_else(|| "-".into()),
                    if r.agents_down.is_empty() {
                        r.result.clone()
                    } else {
                        format!(
                            "{} (agent down, not waited for: {})",
                            r.result,
                            r.agents_down.join(", ")
                        )
                    },
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_withdrawal_holds_the_version_judged_and_removes_only_the_request() {
        let p = withdrawal_patch("4711");
        assert_eq!(p["metadata"]["resourceVersion"], "4711");
        let ann = p["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(ann.len(), 1);
        assert!(ann[ANN_ROTATE_REQUESTED].is_null());
    }
}
