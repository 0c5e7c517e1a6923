//! `podguard showconf` and `podguard graph`: the planner's view of the
//! API's Nodes (mesh::showconf), fetched and printed.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use podguard::k8s::ops::{self, Target};

fn infos(target: Target) -> anyhow::Result<Vec<mesh::node::NodeInfo>> {
    let views = ops::with_client(target, |client| async move {
        ops::node_views(&client, None).await
    })?;
    Ok(views.into_iter().map(|v| v.info).collect())
}

/// What to say after a node's planning error: a podCIDR outside every
/// cluster CIDR usually means `--cluster-cidr` is not the agents' (its
/// default is the shipped manifests' dual-stack pair).
fn cidr_hint(e: &mesh::showconf::NoPlan, config: &mesh::plan::MeshConfig) -> String {
    if !e.outside_cluster_cidrs() {
        return String::new();
    }
    let given: Vec<String> = config.cluster_cidrs.iter().map(|c| c.to_string()).collect();
    format!(
        " (cluster CIDRs used here: {}; give the agents' with --cluster-cidr or PODGUARD_CLUSTER_CIDRS)",
        given.join(",")
    )
}

/// Print the WireGuard configuration `node` should have.
pub fn showconf(target: Target, node: &str, config: &mesh::plan::MeshConfig) -> anyhow::Result<()> {
    let nodes = infos(target)?;
    let Some(me) = nodes.iter().find(|n| n.name == node) else {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        bail!("no Node {node:?} (the cluster has: {})", names.join(", "));
    };
    let key = me.public_key.clone().unwrap_or_default();
    let plans = mesh::showconf::plans(&nodes, config);
    match &plans[node] {
        Ok(p) => {
            print!("{}", mesh::showconf::render(p, &key));
            Ok(())
        }
        Err(e) => bail!("node {node} has no plan: {e}{}", cidr_hint(e, config)),
    }
}

/// Print the mesh as DOT, or as SVG through Graphviz's `dot`.
pub fn graph(target: Target, svg: bool, config: &mesh::plan::MeshConfig) -> anyhow::Result<()> {
    let nodes = infos(target)?;
    let plans = mesh::showconf::plans(&nodes, config);
    // The drawing labels them; say it where a terminal shows it too.
    for (name, plan) in &plans {
        if let Err(e) = plan {
            eprintln!(
                "warning: node {name} has no plan: {e}{}",
                cidr_hint(e, config)
            );
        }
    }
    let text = mesh::showconf::dot(&nodes, &plans);
    if !svg {
        print!("{text}");
        return Ok(());
    }
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .spawn()
        .context("running Graphviz `dot` for --format svg (apt-get install graphviz, or use --format dot)")?;
    child
        .stdin
        .take()
        .context("dot's stdin")?
        .write_all(text.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("dot -Tsvg failed ({status})");
    }
    Ok(())
}
