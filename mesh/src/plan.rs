//! From a node snapshot to the desired state of this node's data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use keys::PublicKey;
use serde::Serialize;

use crate::ipam::gateway;
use crate::mtu::{Outer, tunnel_mtu};
use crate::node::{NodeInfo, Parsed, Rejection, parse_node};
use crate::{BACKSTOP_METRIC, BRIDGE_IFNAME, ROUTE_METRIC, WG_IFNAME};

/// Cluster-wide settings the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshConfig {
    /// The cluster CIDRs (one per family at most, usually): everything in
    /// them is routed into `podguard0` and backstopped by `unreachable`.
    pub cluster_cidrs: Vec<IpNet>,
    /// WireGuard UDP port; also the port used when a node's endpoint is
    /// derived from its InternalIP.
    pub listen_port: u16,
    /// MTU of this node's underlay interface (found by the agent, or set).
    pub underlay_mtu: u32,
    /// Keepalive sent to each peer, in seconds (`None`: off).
    pub persistent_keepalive: Option<u16>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            cluster_cidrs: Vec::new(),
            listen_port: crate::DEFAULT_LISTEN_PORT,
            underlay_mtu: 1500,
            persistent_keepalive: Some(25),
        }
    }
}

/// Who "we" are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// This node's name (must appear in the node list).
    pub name: String,
    /// The public half of the key this node's device uses.
    pub public_key: PublicKey,
}

/// Why no plan can be made at all (as opposed to rejecting one peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The configuration has no cluster CIDR.
    #[error("no cluster CIDR configured")]
    NoClusterCidr,
    /// A cluster CIDR has host bits set.
    #[error("cluster CIDR {0} has host bits set")]
    ClusterCidrHostBits(IpNet),
    /// The local node is not in the snapshot.
    #[error("local node {0:?} is not in the node list")]
    LocalNodeMissing(String),
    /// The local node's own podCIDRs are not usable.
    #[error("local node {name:?} is not ready: {reason}")]
    LocalNotReady {
        /// The local node's name.
        name: String,
        /// The first problem found.
        reason: Rejection,
    },
}

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RouteTarget {
    /// Out of an interface, with a preferred source address.
    Device {
        /// Interface name.
        dev: String,
        /// Preferred source (`src`), if any.
        src: Option<IpAddr>,
    },
    /// An `unreachable` route: the kernel answers with an ICMP error.
    Unreachable,
}

impl std::fmt::Display for RouteTarget {
    /// As `ip route` writes it: `dev podguard0 src 10.244.1.1`, `unreachable`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Device { dev, src: None } => write!(f, "dev {dev}"),
            Self::Device { dev, src: Some(s) } => write!(f, "dev {dev} src {s}"),
            Self::Unreachable => f.write_str("unreachable"),
        }
    }
}

/// One route in the main table that podguard owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Where it goes.
    pub target: RouteTarget,
    /// Route priority (lower wins).
    pub metric: u32,
}

/// One WireGuard peer: another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// The node's name.
    pub node: String,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where to send its encrypted packets.
    pub endpoint: SocketAddr,
    /// Exactly the node's podCIDRs.
    pub allowed_ips: BTreeSet<IpNet>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
    /// The key the node is rotating to, when valid: the device accepts it
    /// next to `public_key` and prefers it once a handshake with it works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<PublicKey>,
}

/// Why a node's `podguard.dev/next-public-key` is not used. The node stays
/// a peer under its current key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum NextKeyIgnored {
    /// The value is not a valid key.
    Invalid {
        /// What is wrong with it.
        problem: String,
    },
    /// It is this node's own key.
    LocalKey,
    /// It equals the node's current public key.
    SameAsCurrent,
    /// Another node publishes it as its public or next key.
    Duplicate {
        /// The other node(s).
        other_nodes: Vec<String>,
    },
}

impl std::fmt::Display for NextKeyIgnored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("podguard.dev/next-public-key ignored: ")?;
        match self {
            Self::Invalid { problem } => write!(f, "not a valid key: {problem}"),
            Self::LocalKey => f.write_str("it is this node's own key"),
            Self::SameAsCurrent => f.write_str("it equals the node's current public key"),
            Self::Duplicate { other_nodes } => write!(
                f,
                "node(s) {} already publish this key",
                other_nodes.join(", ")
            ),
        }
    }
}

/// Desired state of this node's data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// This node's name.
    pub node: String,
    /// This node's podCIDRs.
    pub pod_cidrs: BTreeSet<IpNet>,
    /// Addresses of `cbr0`: the gateway of each podCIDR, with its prefix.
    pub bridge_addresses: BTreeSet<IpNet>,
    /// MTU of `podguard0`, `cbr0` and pod veths.
    pub mtu: u32,
    /// The underlay MTU `mtu` comes from: this node's own, lowered to the
    /// smallest its peers published (`podguard.dev/underlay-mtu`).
    pub underlay_mtu: u32,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Peers, by public key.
    pub peers: BTreeMap<PublicKey, Peer>,
    /// Routes podguard owns.
    pub routes: BTreeSet<Route>,
    /// Nodes that are not peers, with every reason.
    pub rejections: BTreeMap<String, Vec<Rejection>>,
    /// Peers whose next key is not used, and why.
    pub ignored_next_keys: BTreeMap<String, NextKeyIgnored>,
    /// Digest of the mesh this plan describes (see [`crate::digest`]):
    /// the value of `podguard.dev/mesh-digest` once applied.
    pub digest: String,
}

/// Compute the plan. The node list normally includes the local node; the
/// result does not depend on the order of `nodes`.
pub fn plan(local: &Local, nodes: &[NodeInfo], config: &MeshConfig) -> Result<Plan, PlanError> {
    if config.cluster_cidrs.is_empty() {
        return Err(PlanError::NoClusterCidr);
    }
    if let Some(c) = config.cluster_cidrs.iter().find(|c| c.trunc() != **c) {
        return Err(PlanError::ClusterCidrHostBits(*c));
    }

    // Sort by name so everything below is order-independent.
    let mut sorted: Vec<&NodeInfo> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut name_count: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &sorted {
        *name_count.entry(n.name.as_str()).or_default() += 1;
    }

    // The local node: its podCIDRs must be valid; its key is ours.
    let local_nodes: Vec<&&NodeInfo> = sorted.iter().filter(|n| n.name == local.name).collect();
    let local_node = match local_nodes.as_slice() {
        [] => return Err(PlanError::LocalNodeMissing(local.name.clone())),
        [one] => *one,
        _ => {
            return Err(PlanError::LocalNotReady {
                name: local.name.clone(),
                reason: Rejection::DuplicateName,
            });
        }
    };
    let (local_parsed, local_rej) =
        parse_node(local_node, config.listen_port, &config.cluster_cidrs);
    if let Some(reason) = local_rej.into_iter().find(|r| {
        matches!(
            r,
            Rejection::NoPodCidrs
                | Rejection::InvalidPodCidr { .. }
                | Rejection::TwoPodCidrsOfOneFamily { .. }
                | Rejection::OutsideClusterCidr { .. }
        )
    }) {
        return Err(PlanError::LocalNotReady {
            name: local.name.clone(),
            reason,
        });
    }

    // Per-node validation.
    let mut rejections: BTreeMap<String, Vec<Rejection>> = BTreeMap::new();
    let mut parsed: Vec<(&NodeInfo, Parsed)> = Vec::new();
    for n in sorted.iter().filter(|n| n.name != local.name) {
        let (p, mut rej) = parse_node(n, config.listen_port, &config.cluster_cidrs);
        if name_count[n.name.as_str()] > 1 {
            rej.push(Rejection::DuplicateName);
        }
        if p.key == Some(local.public_key) {
            rej.push(Rejection::LocalKey);
        }
        if !rej.is_empty() {
            rejections.entry(n.name.clone()).or_default().extend(rej);
        }
        parsed.push((n, p));
    }

    // Duplicate keys: every node that shares a key is rejected.
    let mut by_key: BTreeMap<PublicKey, BTreeSet<&str>> = BTreeMap::new();
    for (n, p) in &parsed {
        if let Some(k) = p.key {
            by_key.entry(k).or_default().insert(n.name.as_str());
        }
    }
    for names in by_key.values().filter(|names| names.len() > 1) {
        for name in names {
            let other_nodes = names
                .iter()
                .filter(|o| *o != name)
                .map(|o| o.to_string())
                .collect();
            rejections
                .entry(name.to_string())
                .or_default()
                .push(Rejection::DuplicateKey { other_nodes });
        }
    }

    // Overlapping podCIDRs, among remote nodes and against the local node.
    let mut intervals: Vec<(u128, u128, u8, &str, IpNet)> = Vec::new();
    for c in &local_parsed.pod_cidrs {
        intervals.push(interval(c, &local.name));
    }
    for (n, p) in &parsed {
        for c in &p.pod_cidrs {
            intervals.push(interval(c, &n.name));
        }
    }
    for (a, b) in overlaps(intervals) {
        for (me, other) in [(&a, &b), (&b, &a)] {
            if me.0 != local.name {
                let r = Rejection::OverlappingPodCidr {
                    cidr: me.1,
                    other_node: other.0.to_string(),
                    other_cidr: other.1,
                };
                let v = rejections.entry(me.0.to_string()).or_default();
                if !v.contains(&r) {
                    v.push(r);
                }
            }
        }
    }

    // Peers: every node without a rejection.
    let mut peers = BTreeMap::new();
    for (n, p) in &parsed {
        if rejections.contains_key(&n.name) {
            continue;
        }
        let (Some(public_key), Some(endpoint)) = (p.key, p.endpoint) else {
            continue; // unreachable: a missing key or endpoint is a rejection
        };
        peers.insert(
            public_key,
            Peer {
                node: n.name.clone(),
                public_key,
                endpoint,
                allowed_ips: p.pod_cidrs.iter().copied().collect(),
                persistent_keepalive: config.persistent_keepalive,
                next_public_key: None,
            },
        );
    }

    // Next keys: used only when valid and unique; otherwise ignored with a
    // reason, and the peer keeps its current key.
    let mut ignored_next_keys = BTreeMap::new();
    let mut next_of: BTreeMap<String, PublicKey> = BTreeMap::new();
    for (n, _) in &parsed {
        let Some(raw) = &n.next_public_key else {
            continue;
        };
        match PublicKey::from_base64(raw) {
            Ok(k) => {
                next_of.insert(n.name.clone(), k);
            }
            Err(e) => {
                ignored_next_keys.insert(
                    n.name.clone(),
                    NextKeyIgnored::Invalid {
                        problem: e.to_string(),
                    },
                );
            }
        }
    }
    // Who publishes which key: the public keys (`by_key`), plus next keys.
    let mut users = by_key;
    for (name, k) in &next_of {
        users.entry(*k).or_default().insert(name.as_str());
    }
    if let Some(k) = local_node
        .next_public_key
        .as_deref()
        .and_then(|s| PublicKey::from_base64(s).ok())
    {
        users.entry(k).or_default().insert(local.name.as_str());
    }
    for peer in peers.values_mut() {
        let Some(k) = next_of.get(&peer.node).copied() else {
            continue;
        };
        let why = if k == local.public_key {
            Some(NextKeyIgnored::LocalKey)
        } else if k == peer.public_key {
            Some(NextKeyIgnored::SameAsCurrent)
        } else {
            let others: Vec<String> = users
                .get(&k)
                .into_iter()
                .flatten()
                .filter(|o| **o != peer.node)
                .map(|o| o.to_string())
                .collect();
            (!others.is_empty()).then_some(NextKeyIgnored::Duplicate {
                other_nodes: others,
            })
        };
        match why {
            Some(w) => {
                ignored_next_keys.insert(peer.node.clone(), w);
            }
            None => peer.next_public_key = Some(k),
        }
    }
    // Reasons only for nodes that are peers (a rejected node is reported
    // as rejected).
    ignored_next_keys.retain(|name, _| peers.values().any(|p| p.node == *name));
    for v in rejections.values_mut() {
        v.sort();
        v.dedup();
    }

    // Routes.
    let pod_cidrs: BTreeSet<IpNet> = local_parsed.pod_cidrs.iter().copied().collect();
    let gw_for = |family_of: &IpNet| -> Option<IpAddr> {
        pod_cidrs
            .iter()
            .find(|c| crate::node::same_family(c, family_of))
            .and_then(|c| gateway(c).ok())
    };
    let mut routes = BTreeSet::new();
    for c in &config.cluster_cidrs {
        routes.insert(Route {
            dst: *c,
            target: RouteTarget::Device {
                dev: WG_IFNAME.into(),
                src: gw_for(c),
            },
            metric: ROUTE_METRIC,
        });
        routes.insert(Route {
            dst: *c,
            target: RouteTarget::Unreachable,
            metric: BACKSTOP_METRIC,
        });
    }
    let mut bridge_addresses = BTreeSet::new();
    for c in &pod_cidrs {
        let gw = gateway(c).ok();
        routes.insert(Route {
            dst: *c,
            target: RouteTarget::Device {
                dev: BRIDGE_IFNAME.into(),
                src: gw,
            },
            metric: ROUTE_METRIC,
        });
        if let Some(net) = gw.and_then(|gw| IpNet::new(gw, c.prefix_len()).ok()) {
            bridge_addresses.insert(net);
        }
    }

    let outer = match local_parsed.endpoint {
        Some(SocketAddr::V4(_)) => Outer::V4,
        _ => Outer::V6,
    };
    let underlay_mtu =
        crate::mtu::mesh_underlay_mtu(config.underlay_mtu, parsed.iter().map(|(n, _)| *n));
    let local_next = local_node
        .next_public_key
        .as_deref()
        .and_then(|s| PublicKey::from_base64(s).ok())
        .filter(|k| *k != local.public_key);
    let digest = crate::digest::digest(
        peers
            .values()
            .map(|p| crate::digest::Entry {
                node: &p.node,
                public_key: p.public_key,
                next_public_key: p.next_public_key,
                pod_cidrs: p.allowed_ips.iter().copied().collect(),
            })
            .chain(std::iter::once(crate::digest::Entry {
                node: &local.name,
                public_key: local.public_key,
                next_public_key: local_next,
                pod_cidrs: pod_cidrs.iter().copied().collect(),
            })),
    );
    Ok(Plan {
        node: local.name.clone(),
        pod_cidrs,
        bridge_addresses,
        mtu: tunnel_mtu(underlay_mtu, outer),
        underlay_mtu,
        listen_port: config.listen_port,
        peers,
        routes,
        rejections,
        ignored_next_keys,
        digest,
    })
}

type Interval<'a> = (u128, u128, u8, &'a str, IpNet);

fn interval<'a>(c: &IpNet, name: &'a str) -> Interval<'a> {
    let (lo, hi, fam) = match c {
        IpNet::V4(n) => (
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
            4,
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), 6),
    };
    (lo, hi, fam, name, *c)
}

/// A podCIDR and the node that owns it.
type Owned<'a> = (&'a str, IpNet);

/// Pairs of (node, cidr) whose ranges overlap, found by a sweep.
fn overlaps(mut iv: Vec<Interval<'_>>) -> Vec<(Owned<'_>, Owned<'_>)> {
    iv.sort_by(|a, b| (a.2, a.0, b.1, a.3).cmp(&(b.2, b.0, a.1, b.3)));
    let mut out = Vec::new();
    // Open intervals of the current family whose end is >= current start.
    let mut open: Vec<Interval<'_>> = Vec::new();
    for cur in iv {
        open.retain(|o| o.2 == cur.2 && o.1 >= cur.0);
        for o in &open {
            out.push(((o.3, o.4), (cur.3, cur.4)));
        }
        open.push(cur);
    }
    out
}

#[cfg(test)]
mod tests;
