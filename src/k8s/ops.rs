//! Operator commands on the Kubernetes API: `podguard status` and
//! `podguard audit` (`podguard rotate` is in [`super::rotate`]). Decisions
//! come from `mesh::status` and `mesh::audit`; this module reads the API.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use mesh::status::NodeView;

use super::convert::node_info;

pub use super::rotate::{RotateResult, cancel, render_rotate, rotate};

/// Where the API is: the default kubeconfig, one named on the command
/// line, or one whose API server is reachable only from inside a network
/// namespace (the local lab's, which the CLI names: this module knows
/// nothing of the lab).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `$KUBECONFIG`, else the in-cluster config inside a Pod, else
    /// `~/.kube/config`: the agent's order ([`super::connect::client`]).
    Default,
    /// A kubeconfig file and/or context named on the command line.
    Kubeconfig {
        /// The file (else `$KUBECONFIG` / `~/.kube/config`).
        path: Option<std::path::PathBuf>,
        /// The context (else the file's current context).
        context: Option<String>,
    },
    /// A kubeconfig whose API server listens inside network namespace
    /// `netns` (`/run/netns/<netns>`): the work runs on a thread there.
    InNetns {
        /// The kubeconfig file.
        kubeconfig: std::path::PathBuf,
        /// The namespace.
        netns: String,
        /// What to tell the operator when the namespace or the file is
        /// missing (e.g. which command creates them).
        missing: String,
    },
}

/// Run `f` with a client for `target`. For [`Target::InNetns`] the work
/// runs on a thread inside that namespace, with that kubeconfig.
pub fn with_client<T, F, Fut>(target: Target, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce(Client) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let netns = match &target {
        Target::InNetns { netns, missing, .. } => Some((netns.clone(), missing.clone())),
        _ => None,
    };
    let body = move || -> anyhow::Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = match target {
                Target::Default => super::connect::client(super::connect::CLI_FIX).await?,
                Target::Kubeconfig { path, context } => {
                    let kc = match &path {
                        Some(p) => kube::config::Kubeconfig::read_from(p)
                            .with_context(|| format!("reading --kubeconfig {}", p.display()))?,
                        None => kube::config::Kubeconfig::read()
                            .context("reading $KUBECONFIG or ~/.kube/config")?,
                    };
                    let opts = kube::config::KubeConfigOptions {
                        context: context.clone(),
                        ..Default::default()
                    };
                    let cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
                        .await
                        .with_context(|| match &context {
                            Some(c) => format!("using context {c:?} of the kubeconfig"),
                            None => "using the kubeconfig's current context".into(),
                        })?;
                    Client::try_from(cfg)?
                }
                Target::InNetns {
                    kubeconfig,
                    missing,
                    ..
                } => {
                    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
                        .with_context(|| format!("reading {} ({missing})", kubeconfig.display()))?;
                    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                    Client::try_from(cfg)?
                }
            };
            f(client).await
        })
    };
    let Some((ns, missing)) = netns else {
        return body();
    };
    if !std::path::Path::new("/run/netns").join(&ns).exists() {
        bail!("network namespace {ns} is missing: {missing}");
    }
    crate::sys::in_netns(&ns, body)?
}

/// Every Node as the status logic sees it, with its agent's heartbeat
/// from the Leases in `agents`, the agents' namespace (Leases that cannot
/// be read leave the heartbeat unjudged, with a warning on stderr; `None`:
/// not read, for commands that judge no agent).
pub async fn node_views(client: &Client, agents: Option<&str>) -> anyhow::Result<Vec<NodeView>> {
    let (views, warning) = node_views_and_warning(client, agents).await?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    Ok(views)
}

/// [`node_views`], returning the warning (why no heartbeat is judged)
/// instead of printing it, for reports that carry their warnings.
pub async fn node_views_and_warning(
    client: &Client,
    agents: Option<&str>,
) -> anyhow::Result<(Vec<NodeView>, Option<String>)> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .context("listing Nodes")?;
    let mut warning = None;
    let leases = match agents {
        None => None,
        Some(ns) => match super::lease::table(client, ns).await {
            Ok(l) => Some(l),
            Err(e) => {
                warning = Some(crate::errors::chain_line(&e));
                None
            }
        },
    };
    let now = crate::agent::rotation::unix_now();
    let views = list
        .items
        .iter()
        .map(|n| {
            let info = node_info(n);
            let heartbeat = super::lease::heartbeat(leases.as_ref(), &info.name, now);
            NodeView {
                info,
                annotations: n.metadata.annotations.clone().unwrap_or_default(),
                heartbeat,
            }
        })
        .collect();
    Ok((views, warning))
}

/// A plain table, kubectl style (see [`mesh::table::plain`]).
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    mesh::table::plain(header, rows)
}

/// The table `podguard status` prints.
pub fn render_status(rows: &[mesh::status::Row]) -> String {
    let mut out = table(
        &[
            "NODE",
            "KEY",
            "KEY AGE",
            "ROTATION",
            "NEXT KEY",
            "MESH DIGEST",
            "PEERS",
        ],
        rows.iter()
            .map(|r| {
                let rotation = if r.rotation_requested {
                    format!("{}*", r.rotation)
                } else {
                    r.rotation.clone()
                };
                vec![
                    r.node.clone(),
                    r.key.clone().unwrap_or_else(|| "(none)".into()),
                    r.key_age_secs
                        .map(mesh::status::age)
                        .unwrap_or_else(|| "-".into()),
                    rotation,
                    r.next_key.clone().unwrap_or_else(|| "-".into()),
                    match r.digest {
                        mesh::status::Agreement::Agrees => "agrees".to_string(),
                        mesh::status::Agreement::Differs => "DIFFERS (not converged)".to_string(),
                        mesh::status::Agreement::Missing => "missing (no agent?)".to_string(),
                        mesh::status::Agreement::AgentDown => match r.heartbeat_age_secs {
                            Some(a) => {
                                format!("AGENT DOWN (heartbeat {} ago)", mesh::status::age(a))
                            }
                            None => "AGENT DOWN (no heartbeat)".to_string(),
                        },
                    },
                    if r.peer_problems.is_empty() {
                        "ok".to_string()
                    } else {
                        r.peer_problems.to_string()
                    },
                ]
            })
            .collect(),
    );
    if rows.iter().any(|r| r.rotation_requested) {
        out.push_str("* a rotation was requested and not yet taken on\n");
    }
    out
}

/// All node names, sorted (for `rotate --all`).
pub async fn all_nodes(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = node_views(client, None)
        .await?
        .into_iter()
        .map(|v| v.info.name)
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("the cluster has no Nodes");
    }
    Ok(names)
}

/// Annotations of one node (for tests and diagnostics).
pub async fn annotations(client: &Client, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let api: Api<Node> = Api::all(client.clone());
    let n = api.get(name).await?;
    Ok(n.metadata.annotations.unwrap_or_default())
}

/// Read what `podguard audit` needs and run it (`agents`: the agents'
/// namespace, for their heartbeats).
pub async fn audit(
    client: &Client,
    agents: &str,
) -> anyhow::Result<(mesh::audit::Report, Vec<String>)> {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let (nodes, lease_warning) = node_views_and_warning(client, Some(agents)).await?;
    let lp = ListParams::default();
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .context("listing Pods")?;
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .context("listing Namespaces")?;
    let policies = Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await
        .context("listing NetworkPolicies (networking.k8s.io/v1)")?;
    let mut warnings: Vec<String> = lease_warning.into_iter().collect();
    let pods: Vec<mesh::policy::Pod> = pods
        .items
        .iter()
        .map(|p| {
            let spec = p.spec.as_ref();
            let status = p.status.as_ref();
            let mut ips: Vec<std::net::IpAddr> = status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
                .unwrap_or_default();
            if ips.is_empty()
                && let Some(ip) = status
                    .and_then(|s| s.pod_ip.as_ref())
                    .and_then(|i| i.parse().ok())
            {
                ips.push(ip);
            }
            mesh::policy::Pod {
                namespace: p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: p.metadata.name.clone().unwrap_or_default(),
                labels: p.metadata.labels.clone().unwrap_or_default(),
                ips,
                node: spec.and_then(|s| s.node_name.clone()),
                host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                ports: spec
                    .map(|s| {
                        s.containers
                            .iter()
                            .flat_map(|c| c.ports.iter().flatten())
                            .filter_map(|cp| {
                                Some(mesh::policy::NamedPort {
                                    name: cp.name.clone()?,
                                    port: u16::try_from(cp.container_port).ok()?,
                                    protocol: cp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    let mut cluster = mesh::policy::Cluster::default();
    for ns in &namespaces.items {
        if let Some(name) = &ns.metadata.name {
            cluster
                .namespaces
                .insert(name.clone(), ns.metadata.labels.clone().unwrap_or_default());
        }
    }
    for np in &policies.items {
        let ns = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = np.metadata.name.clone().unwrap_or_default();
        let spec = serde_json::to_value(&np.spec).unwrap_or_default();
        match serde_json::from_value::<mesh::policy::PolicySpec>(spec) {
            Ok(spec) => cluster.policies.push(mesh::policy::Policy {
                namespace: ns,
                name,
                spec,
            }),
            Err(e) => warnings.push(format!(
                "NetworkPolicy {ns}/{name} could not be read and is left out: {e}"
            )),
        }
    }
    let now = crate::agent::rotation::unix_now();
    Ok((mesh::audit::audit(&nodes, &pods, &cluster, now), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_long_node_names() {
        let row = |node: &str, digest| mesh::status::Row {
            node: node.into(),
            key: Some("ab12cd34".into()),
            key_age_secs: Some(90),
            rotation: "idle".into(),
            next_key: None,
            rotation_requested: false,
            digest,
            heartbeat_age_secs: Some(3),
            peer_problems: mesh::health::PeerProblems::default(),
        };
        let mut n2 = row("n2", mesh::status::Agreement::Differs);
        n2.peer_problems.no_handshake = vec!["node-3".into(), "node-4".into()];
        let out = render_status(&[
            row(
                "ip-10-0-12-34.eu-west-1.compute.internal",
                mesh::status::Agreement::Agrees,
            ),
            n2,
        ]);
        assert_eq!(
            out,
            "NODE                                      KEY       KEY AGE  ROTATION  NEXT KEY  MESH DIGEST              PEERS\n\
             ip-10-0-12-34.eu-west-1.compute.internal  ab12cd34  90s      idle      -         agrees                   ok\n\
             n2                                        ab12cd34  90s      idle      -         DIFFERS (not converged)  NO HANDSHAKE: node-3,node-4\n"
        );
    }
}
