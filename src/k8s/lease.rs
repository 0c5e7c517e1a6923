//! The agent's heartbeat: a `coordination.k8s.io` Lease per node,
//! `podguard-<node>` in the agent's namespace, renewed while the node's
//! data plane reconciles. `podguard status` and `audit` read them: a node
//! whose Lease expired (or never existed) has no live agent, whatever its
//! annotations still say.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

/// Lease name prefix (`podguard-<node>`).
pub const PREFIX: &str = "podguard-";
/// The agents' namespace (of their Leases) unless the agent's
/// `POD_NAMESPACE` or the CLI's `--agent-namespace` (`PODGUARD_NAMESPACE`)
/// says otherwise: the one the shipped manifests create.
pub const DEFAULT_NAMESPACE: &str = "podguard";

fn lease(node: &str, duration_secs: i32, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("{PREFIX}{node}")),
            labels: Some([("app.kubernetes.io/name".to_string(), "podguard".to_string())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(duration_secs),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// Renew (or create) this node's Lease.
pub async fn renew(client: &Client, ns: &str, node: &str, duration_secs: i32) -> kube::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let name = format!("{PREFIX}{node}");
    let mut want = lease(node, duration_secs, Timestamp::now());
    match api.get_opt(&name).await? {
        Some(have) => {
            want.metadata.resource_version = have.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &want).await?;
        }
        None => {
            api.create(&PostParams::default(), &want).await?;
        }
    }
    Ok(())
}

/// Every node's last renewal (unix seconds) and duration, from the Leases
/// in `ns`.
pub async fn all(client: &Client, ns: &str) -> kube::Result<BTreeMap<String, (i64, u64)>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|l| {
            let node = l
                .metadata
                .name
                .as_deref()?
                .strip_prefix(PREFIX)?
                .to_string();
            let spec = l.spec?;
            let renewed = spec.renew_time?.0.as_second();
            let duration = u64::try_from(spec.lease_duration_seconds?).ok()?;
            Some((node, (renewed, duration)))
        })
        .collect())
}

/// Why the agents' Leases cannot judge any agent (a warning for the
/// operator: liveness is then not judged).
#[derive(Debug, thiserror::Error)]
pub enum NoHeartbeats {
    /// The namespace holds no podguard Lease.
    #[error(
        "no heartbeat Leases in namespace {ns} (the agents run in another namespace: give it with --agent-namespace; or they are older than this CLI); agent liveness is not judged"
    )]
    None {
        /// The namespace read.
        ns: String,
    },
    /// Listing the Leases failed.
    #[error(
        "cannot read the agents' heartbeat Leases in namespace {ns}; agent liveness is not judged"
    )]
    Unreadable {
        /// The namespace read.
        ns: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
}

/// The agents' Leases in `ns` ([`all`]), or why they cannot judge any
/// agent.
pub async fn table(
    client: &Client,
    ns: &str,
) -> Result<BTreeMap<String, (i64, u64)>, NoHeartbeats> {
    match all(client, ns).await {
        Ok(l) if l.is_empty() => Err(NoHeartbeats::None { ns: ns.to_string() }),
        Ok(l) => Ok(l),
        Err(source) => Err(NoHeartbeats::Unreadable {
            ns: ns.to_string(),
            source,
        }),
    }
}

/// The heartbeat of `node` at `now` (unix seconds), given the Leases
/// (`None`: they could not be read).
pub fn heartbeat(
    leases: Option<&BTreeMap<String, (i64, u64)>>,
    node: &str,
    now: u64,
) -> mesh::status::Heartbeat {
    use mesh::status::Heartbeat;
    match leases {
        None => Heartbeat::Unknown,
        Some(l) => match l.get(node) {
            None => Heartbeat::Missing,
            Some((renewed, duration)) => Heartbeat::Renewed {
                age_secs: now.saturating_sub(u64::try_from(*renewed).unwrap_or(0)),
                duration_secs: *duration,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_shape_and_heartbeats() {
        let l = lease(
            "node-a",
            40,
            Timestamp::from_second(1000).unwrap_or_default(),
        );
        let v = serde_json::to_value(&l).unwrap_or_default();
        assert_eq!(v["metadata"]["name"], "podguard-node-a");
        assert_eq!(v["spec"]["holderIdentity"], "node-a");
        assert_eq!(v["spec"]["leaseDurationSeconds"], 40);
        assert!(
            v["spec"]["renewTime"]
                .as_str()
                .is_some_and(|t| t.starts_with("1970-01-01T00:16:40"))
        );
        let leases: BTreeMap<String, (i64, u64)> = [("a".to_string(), (1000, 40))].into();
        assert!(!heartbeat(Some(&leases), "a", 1030).down());
        assert!(heartbeat(Some(&leases), "a", 1041).down());
        assert!(heartbeat(Some(&leases), "b", 1000).down(), "no Lease: down");
        assert!(!heartbeat(None, "a", 9999).down(), "unreadable: not judged");
    }
}
