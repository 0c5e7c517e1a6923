//! `podguard showconf NODE` and `podguard graph`: what the planner makes of
//! the API's Nodes, for people. `showconf` prints the WireGuard
//! configuration one node should have, in `wg setconf` syntax without the
//! private key (which never leaves the node), to diff against
//! `wg showconf podguard0` there. `graph` draws every node and, for each
//! pair, whether the two are peers of each other or why not, as Graphviz DOT.

use std::collections::BTreeMap;
use std::fmt::Write;

use keys::PublicKey;

use crate::node::{NodeInfo, Rejection};
use crate::plan::{Local, MeshConfig, Plan, PlanError, plan};

/// Why a node has no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPlan {
    /// Its agent has not published a key.
    #[error("no podguard.dev/public-key: its agent has not published")]
    NoKey,
    /// Its key annotation does not decode.
    #[error("its key is unusable: {0}")]
    BadKey(String),
    /// The planner refused it.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl NoPlan {
    /// Its own podCIDR lies outside every cluster CIDR given: most often
    /// those are not the agents' cluster CIDRs.
    pub fn outside_cluster_cidrs(&self) -> bool {
        matches!(
            self,
            Self::Plan(PlanError::LocalNotReady {
                reason: Rejection::OutsideClusterCidr { .. },
                ..
            })
        )
    }
}

/// The plan of every node that has a usable key (others: why not).
pub fn plans(nodes: &[NodeInfo], config: &MeshConfig) -> BTreeMap<String, Result<Plan, NoPlan>> {
    nodes
        .iter()
        .map(|n| {
            let key =
                n.public_key.as_deref().ok_or(NoPlan::NoKey).and_then(|k| {
                    PublicKey::from_base64(k).map_err(|e| NoPlan::BadKey(e.to_string()))
                });
            let p = key.and_then(|public_key| {
                plan(
                    &Local {
                        name: n.name.clone(),
                        public_key,
                    },
                    nodes,
                    config,
                )
                .map_err(NoPlan::Plan)
            });
            (n.name.clone(), p)
        })
        .collect()
}

/// `wg setconf` text for `plan` (the node's own public key as a comment).
pub fn render(plan: &Plan, own_key: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# The WireGuard configuration node {} should have, planned from the API\n\
         # (mesh digest {}). Compare on the node: wg showconf podguard0\n\
         # (the private key never leaves the node and is not shown).",
        plan.node, plan.digest
    );
    let _ = writeln!(
        s,
        "[Interface]\n# PublicKey = {own_key}\nListenPort = {}",
        plan.listen_port
    );
    for p in plan.peers.values() {
        let ips: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            s,
            "\n[Peer]\n# {}\nPublicKey = {}\nAllowedIPs = {}\nEndpoint = {}",
            p.node,
            p.public_key.to_base64(),
            ips.join(", "),
            p.endpoint
        );
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(s, "PersistentKeepalive = {k}");
        }
        if let Some(next) = &p.next_public_key {
            let _ = writeln!(
                s,
                "# rotating to {} (pre-staged as a second peer)",
                next.to_base64()
            );
        }
    }
    for (node, why) in &plan.rejections {
        let why: Vec<String> = why.iter().map(|r| r.to_string()).collect();
        let _ = writeln!(s, "\n# not a peer: {node}: {}", why.join("; "));
    }
    s
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz DOT of the mesh: one vertex per node (name, endpoint, key
/// fingerprint), one edge per pair: solid green where each plans the other
/// as a peer, dashed red with the reason where either rejects the other,
/// grey dotted where a node has no plan at all.
pub fn dot(nodes: &[NodeInfo], plans: &BTreeMap<String, Result<Plan, NoPlan>>) -> String {
    let mut s = String::from("graph podguard {\n  node [shape=box, fontname=\"monospace\"];\n");
    for n in nodes {
        let key = n
            .public_key
            .as_deref()
            .and_then(|k| PublicKey::from_base64(k).ok())
            .map(|k| k.fingerprint())
            .unwrap_or_else(|| "no key".into());
        let endpoint = n.endpoint.clone().unwrap_or_else(|| "no endpoint".into());
        let mut label = format!("{}\\n{endpoint}\\nkey {key}", n.name);
        if let Some(Err(e)) = plans.get(&n.name) {
            label.push_str(&format!("\\nno plan: {e}"));
        }
        let _ = writeln!(s, "  {} [label={}];", quote(&n.name), quote(&label));
    }
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            let view = |x: &str, y: &str| -> Result<bool, String> {
                match plans.get(x) {
                    Some(Ok(p)) => match p.rejections.get(y) {
                        Some(r) => Err(r
                            .iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")),
                        None => Ok(p.peers.values().any(|peer| peer.node == y)),
                    },
                    _ => Ok(false),
                }
            };
            let attrs = match (view(&a.name, &b.name), view(&b.name, &a.name)) {
                (Ok(true), Ok(true)) => "color=darkgreen".to_string(),
                (Err(e), _) => format!(
                    "color=red, style=dashed, label={}",
                    quote(&format!("{} rejects: {e}", a.name))
                ),
                (_, Err(e)) => format!(
                    "color=red, style=dashed, label={}",
                    quote(&format!("{} rejects: {e}", b.name))
                ),
                _ => "color=grey, style=dotted".to_string(),
            };
            let _ = writeln!(s, "  {} -- {} [{attrs}];", quote(&a.name), quote(&b.name));
        }
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, i: u8, key: Option<&PublicKey>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidrs: vec![format!("10.244.{i}.0/24")],
            endpoint: Some(format!("192.0.2.{i}:51820")),
            public_key: key.map(|k| k.to_base64()),
            next_public_key: None,
            internal_ips: vec![],
            underlay_mtu: None,
        }
    }

    fn config() -> MeshConfig {
        MeshConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        }
    }

    #[test]
    fn showconf_lists_every_peer_and_no_private_key() {
        let (ka, kb) = (
            keys::PrivateKey::generate().public_key(),
            keys::PrivateKey::generate().public_key(),
        );
        let nodes = vec![
            node("a", 1, Some(&ka)),
            node("b", 2, Some(&kb)),
            node("c", 3, None),
        ];
        let plans = plans(&nodes, &config());
        let a = plans["a"].as_ref().unwrap();
        let text = render(a, &ka.to_base64());
        assert!(text.contains(&format!("[Peer]\n# b\nPublicKey = {}\nAllowedIPs = 10.244.2.0/24\nEndpoint = 192.0.2.2:51820\n", kb.to_base64())), "{text}");
        assert!(text.contains("ListenPort = 51820"));
        assert!(!text.contains("PrivateKey ="), "{text}");
        assert!(text.contains("# not a peer: c:"), "{text}");
        assert_eq!(plans["c"].as_ref().unwrap_err(), &NoPlan::NoKey);
        assert!(!NoPlan::NoKey.outside_cluster_cidrs());
    }

    #[test]
    fn a_podcidr_outside_the_cluster_cidrs_is_told_apart() {
        let k = keys::PrivateKey::generate().public_key();
        let mut far = node("far", 1, Some(&k));
        far.pod_cidrs = vec!["10.42.1.0/24".into()];
        let plans = plans(&[far], &config());
        let e = plans["far"].as_ref().unwrap_err();
        assert!(e.outside_cluster_cidrs(), "{e}");
        assert!(e.to_string().contains("10.42.1.0/24"), "{e}");
    }

    #[test]
    fn dot_marks_peers_and_rejections() {
        let (ka, kb) = (
            keys::PrivateKey::generate().public_key(),
            keys::PrivateKey::generate().public_key(),
        );
        // d copies b's key: both rejected by a.
        let nodes = vec![
            node("a", 1, Some(&ka)),
            node("b", 2, Some(&kb)),
            node("d", 4, Some(&kb)),
            node("e\"x", 5, Some(&keys::PrivateKey::generate().public_key())),
        ];
        let g = dot(&nodes, &plans(&nodes, &config()));
        assert!(g.starts_with("graph podguard {"), "{g}");
        assert!(g.contains("\"a\" -- \"e\\\"x\" [color=darkgreen]"), "{g}");
        assert!(
            g.contains("\"a\" -- \"b\" [color=red, style=dashed, label=\"a rejects:"),
            "{g}"
        );
        assert_eq!(g.matches(" -- ").count(), 6);
    }
}
